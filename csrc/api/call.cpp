// Named arguments to boxed operator calls (see call.h), and the dropout seed of the C++ API.
#include "api/call.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randint.h>

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "core/operator.h"

namespace posenc {
namespace api {

namespace {

// The handle of posenc::<op>. Found once per operator name and kept per thread, keyed by the
// name's address (the API passes literals) and checked against the schema's name: a lookup in
// the dispatcher's table, with its string, cost a decoding step through the C++ API more than
// the step's row.
const c10::OperatorHandle& operator_handle(const char* op) {
  struct Kept {
    const char* op = nullptr;
    std::optional<c10::OperatorHandle> handle;
  };
  constexpr size_t kSlots = 64;
  thread_local std::array<Kept, kSlots> kept;
  constexpr std::string_view kNamespace = "posenc::";
  Kept& entry = kept[(reinterpret_cast<uintptr_t>(op) >> 3) % kSlots];
  if (entry.op == op && entry.handle.has_value()) {
    const std::string& name = entry.handle->schema().name();
    if (name.size() > kNamespace.size() &&
        name.compare(kNamespace.size(), std::string::npos, op) == 0) {
      return *entry.handle;
    }
  }
  entry.handle =
      c10::Dispatcher::singleton().findSchemaOrThrow((std::string(kNamespace) + op).c_str(), "");
  entry.op = op;
  return *entry.handle;
}

}  // namespace

torch::jit::Stack call_operator(const char* op, const NamedArguments& arguments) {
  const c10::OperatorHandle& handle = operator_handle(op);
  const c10::FunctionSchema& schema = handle.schema();
  const auto& schema_arguments = schema.arguments();
  // Each given argument into its slot (one lookup each), then the defaults.
  std::vector<const c10::IValue*> given(schema_arguments.size(), nullptr);
  for (const auto& [name, value] : arguments) {
    const int index = core::argument_index(schema, name);
    TORCH_INTERNAL_ASSERT(index >= 0, "posenc::", op, " has no argument ", name);
    given[static_cast<size_t>(index)] = &value;
  }
  torch::jit::Stack stack;
  stack.reserve(schema_arguments.size());
  for (size_t i = 0; i < schema_arguments.size(); ++i) {
    if (given[i] != nullptr) {
      stack.push_back(*given[i]);
    } else {
      const c10::Argument& argument = schema_arguments[i];
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
