// How the C++ API reaches the operators: named arguments turned into a boxed call through the
// dispatcher, so that autograd, every backend and the argument checks apply as from Python.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>
#include <c10/util/SmallVector.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "posenc/options.h"

namespace posenc {
namespace api {

// Held in place up to 24 arguments (every operator's list fits): a decoding step through the C++
// API allocated a vector per group of arguments.
using NamedArguments = c10::SmallVector<std::pair<const char*, c10::IValue>, 24>;

// Calls posenc::<op> with `arguments` by schema name and returns its results. Every name must be
// an argument of the schema (an internal error otherwise: nothing is ignored in silence);
// arguments not given take their schema defaults. The values are moved onto the stack.
torch::jit::Stack call_operator(const char* op, NamedArguments arguments);

inline c10::IValue optional_value(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? c10::IValue(*tensor) : c10::IValue();
}

// `text` as an IValue, shared with earlier calls of this thread that passed the same text: a
// string IValue is a heap object, and the code's and the combine's names are a handful of
// values that a call passes every time.
c10::IValue string_value(const std::string& text);

// Appends grid, extra_tokens, grid_dims, grid_axes, grid_origin and grid_scale (none: nothing,
// the defaults).
void add_grid_arguments(NamedArguments& arguments, const std::optional<GridOptions>& grid);

// Appends the code's arguments: kind, base, convention and layout.
template <typename Options>
void add_code_arguments(NamedArguments& arguments, const Options& o) {
  arguments.emplace_back("kind", string_value(o.kind()));
  arguments.emplace_back("base", o.base());
  arguments.emplace_back("convention", string_value(o.convention()));
  arguments.emplace_back("layout",
                         o.layout().has_value() ? string_value(*o.layout()) : c10::IValue());
}

// Appends the combine's arguments: combine, scale, offset, dropout and training.
template <typename Options>
void add_combine_arguments(NamedArguments& arguments, const Options& o) {
  arguments.emplace_back("combine", string_value(o.combine()));
  arguments.emplace_back("scale", o.scale());
  arguments.emplace_back("offset", o.offset());
  arguments.emplace_back("dropout", o.dropout());
  arguments.emplace_back("training", o.training());
}

// The forward's dropout seed: the options' own, else one drawn from their generator.
template <typename Options>
c10::IValue forward_seed(const Options& o, const at::Device& device) {
  if (o.seed().has_value()) return *o.seed();
  return optional_value(draw_seed(device, o.dropout(), o.training(), o.generator()));
}

}  // namespace api
}  // namespace posenc
