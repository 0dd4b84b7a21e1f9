// How the C++ API reaches the operators: named arguments turned into a boxed call through the
// dispatcher, so that autograd, every backend and the argument checks apply as from Python.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "posenc/options.h"

namespace posenc {
namespace api {

using NamedArguments = std::vector<std::pair<const char*, c10::IValue>>;

// Calls posenc::<op> with `arguments` by schema name and returns its results. Every name must be
// an argument of the schema (an internal error otherwise: nothing is ignored in silence);
// arguments not given take their schema defaults.
torch::jit::Stack call_operator(const char* op, const NamedArguments& arguments);

inline c10::IValue optional_value(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? c10::IValue(*tensor) : c10::IValue();
}

// `first` followed by `rest` (moved: the callers pass temporaries).
NamedArguments joined(NamedArguments first, NamedArguments rest);

// `text` as an IValue, shared with earlier calls of this thread that passed the same text: a
// string IValue is a heap object, and the code's and the combine's names are a handful of
// values that a call passes every time.
c10::IValue string_value(const std::string& text);

// grid, extra_tokens, grid_dims, grid_axes, grid_origin and grid_scale (none: the defaults).
NamedArguments grid_arguments(const std::optional<GridOptions>& grid);

// The code's arguments: kind, base, convention and layout.
template <typename Options>
NamedArguments code_arguments(const Options& o) {
  return {{"kind", string_value(o.kind())},
          {"base", o.base()},
          {"convention", string_value(o.convention())},
          {"layout", o.layout().has_value() ? string_value(*o.layout()) : c10::IValue()}};
}

// The combine's arguments: combine, scale, offset, dropout and training.
template <typename Options>
NamedArguments combine_arguments(const Options& o) {
  return {{"combine", string_value(o.combine())},
          {"scale", o.scale()},
          {"offset", o.offset()},
          {"dropout", o.dropout()},
          {"training", o.training()}};
}

// The forward's dropout seed: the options' own, else one drawn from their generator.
template <typename Options>
c10::IValue forward_seed(const Options& o, const at::Device& device) {
  if (o.seed().has_value()) return *o.seed();
  return optional_value(draw_seed(device, o.dropout(), o.training(), o.generator()));
}

}  // namespace api
}  // namespace posenc
