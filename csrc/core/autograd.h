// Autograd for the posenc operators, in C++ so that gradients work from LibTorch as well as
// Python. A family describes each differentiable operator by a Derivative (which inputs get
// gradients, from which backward operators) and registers it; one boxed autograd kernel serves
// them all: it runs the operator below the Autograd key, saves its arguments, and its backward
// calls each backward operator through the dispatcher with arguments taken by name from them.
#pragma once

#include <torch/library.h>

#include <array>
#include <string_view>

#include "core/operator.h"

namespace posenc {
namespace core {

// One backward operator: which differentiable inputs it gives the gradient of. When it is the
// forward operator itself (rotary), those inputs take the incoming gradients and `flip` names the
// bool argument that turns the map into its transpose.
struct BackwardCall {
  const char* op = nullptr;  // "posenc::add_positional_backward"
  std::array<const char*, 2> computes = {};
  const char* flip = nullptr;
};

struct Derivative {
  const char* forward;                // "posenc::add_positional"
  std::array<const char*, 2> inputs;  // the differentiable inputs (at most two)
  std::array<BackwardCall, 2> calls;
  // Whether the backward calls need the saved tensor argument `name` of this call, beyond taking
  // it by name (nullptr: always). add_positional's table gradient reads x only for combine="mul".
  bool (*needs)(std::string_view name, const Arguments& args) = nullptr;
};

// In the family's TORCH_LIBRARY_FRAGMENT(posenc, m) block, after define(): the autograd kernel
// of derivative.forward. `derivative` must outlive the library (a namespace-scope constant).
void register_derivative(torch::Library& library, const Derivative& derivative);

// A backward operator (or one without differentiable inputs): double backward through it raises
// a clear error instead of giving silently wrong second derivatives.
void register_not_differentiable(torch::Library& library, const char* name);

}  // namespace core
}  // namespace posenc
