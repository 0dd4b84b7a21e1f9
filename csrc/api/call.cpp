// Named arguments to boxed operator calls (see call.h), and the dropout seed of the C++ API.
#include "api/call.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randint.h>

#include <algorithm>
#include <limits>
#include <string>

namespace posenc {
namespace api {

torch::jit::Stack call_operator(const char* op, const NamedArguments& arguments) {
  const c10::OperatorHandle handle =
      c10::Dispatcher::singleton().findSchemaOrThrow((std::string("posenc::") + op).c_str(), "");
  const auto& schema_arguments = handle.schema().arguments();
  for (const auto& [name, value] : arguments) {
    const bool known = std::any_of(schema_arguments.begin(), schema_arguments.end(),
                                   [&](const c10::Argument& a) { return a.name() == name; });
    TORCH_INTERNAL_ASSERT(known, "posenc::", op, " has no argument ", name);
  }
  torch::jit::Stack stack;
  for (const c10::Argument& argument : schema_arguments) {
    const auto given = std::find_if(arguments.begin(), arguments.end(), [&](const auto& entry) {
      return argument.name() == entry.first;
    });
    if (given != arguments.end()) {
      stack.push_back(given->second);
    } else {
      TORCH_INTERNAL_ASSERT(argument.default_value().has_value(), "posenc::", op, ": no value for ",
                            argument.name());
      stack.push_back(*argument.default_value());
    }
  }
  handle.callBoxed(stack);
  return stack;
}

NamedArguments joined(NamedArguments first, const NamedArguments& rest) {
  first.insert(first.end(), rest.begin(), rest.end());
  return first;
}

NamedArguments grid_arguments(const std::optional<GridOptions>& grid) {
  if (!grid.has_value()) return {};
  return {{"grid", grid->sizes()},         {"extra_tokens", grid->extra_tokens()},
          {"grid_dims", grid->dims()},     {"grid_axes", grid->axes()},
          {"grid_origin", grid->origin()}, {"grid_scale", grid->scale()}};
}

}  // namespace api

std::optional<at::Tensor> draw_seed(const at::Device& device, double dropout, bool training,
                                    const std::optional<at::Generator>& generator) {
  if (!training || dropout == 0.0) return std::nullopt;
  return at::randint(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), {},
                     generator, at::TensorOptions().dtype(at::kLong).device(device));
}

}  // namespace posenc

// Referenced by posenc._C and by programs that reach the operators only through a saved model,
// so that the linker keeps this library, whose loading registers the operators.
extern "C" int posenc_library_abi_version() { return 1; }
