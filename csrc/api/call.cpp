// Named arguments to boxed operator calls (see call.h), and the dropout seed of the C++ API.
#include "api/call.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randint.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

// The schema slot of each given argument, kept per thread for the last argument lists seen:
// an API function passes the same name literals in the same order at every call, so a list is
// recognised by its schema and its names' addresses, compared one by one, instead of finding
// each name in the schema.
const std::vector<int>& argument_slots(const c10::FunctionSchema& schema, const char* op,
                                       const NamedArguments& arguments) {
  struct Kept {
    const c10::FunctionSchema* schema = nullptr;
    std::vector<const char*> names;
    std::vector<int> slots;
  };
  constexpr size_t kKept = 32;
  thread_local std::array<Kept, kKept> kept;
  thread_local size_t next = 0;
  for (const Kept& entry : kept) {
    if (entry.schema != &schema || entry.names.size() != arguments.size()) continue;
    bool same = true;
    for (size_t i = 0; i < arguments.size() && same; ++i) {
      same = entry.names[i] == arguments[i].first;
    }
    if (same) return entry.slots;
  }
  // Made whole before it is kept: a list that fails a check leaves no entry behind.
  Kept made{&schema, {}, {}};
  for (const auto& [name, value] : arguments) {
    const int index = core::argument_index(schema, name);
    TORCH_INTERNAL_ASSERT(index >= 0, "posenc::", op, " has no argument ", name);
    TORCH_INTERNAL_ASSERT(
        std::find(made.slots.begin(), made.slots.end(), index) == made.slots.end(), "posenc::", op,
        ": argument ", name, " given twice");
    made.names.push_back(name);
    made.slots.push_back(index);
  }
  Kept& entry = kept[next];
  next = (next + 1) % kKept;
  entry = std::move(made);
  return entry.slots;
}

}  // namespace

torch::jit::Stack call_operator(const char* op, NamedArguments arguments) {
  const c10::OperatorHandle& handle = operator_handle(op);
  const c10::FunctionSchema& schema = handle.schema();
  const auto& schema_arguments = schema.arguments();
  // Each given argument into its slot, then the defaults.
  constexpr size_t kMostArguments = 64;
  TORCH_INTERNAL_ASSERT(schema_arguments.size() <= kMostArguments, "posenc::", op,
                        " has more arguments than call_operator holds");
  std::array<c10::IValue*, kMostArguments> given{};
  const std::vector<int>& slots = argument_slots(schema, op, arguments);
  for (size_t i = 0; i < arguments.size(); ++i) {
    given[static_cast<size_t>(slots[i])] = &arguments[i].second;
  }
  torch::jit::Stack stack;
  stack.reserve(schema_arguments.size());
  for (size_t i = 0; i < schema_arguments.size(); ++i) {
    if (given[i] != nullptr) {
      stack.push_back(std::move(*given[i]));
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

c10::IValue string_value(const std::string& text) {
  constexpr size_t kKept = 16;
  thread_local std::array<c10::IValue, kKept> kept;
  thread_local size_t next = 0;
  for (const c10::IValue& value : kept) {
    if (value.isString() && value.toStringRef() == text) return value;
  }
  c10::IValue made(text);
  kept[next] = made;
  next = (next + 1) % kKept;
  return made;
}

void add_grid_arguments(NamedArguments& arguments, const std::optional<GridOptions>& grid) {
  if (!grid.has_value()) return;
  arguments.emplace_back("grid", grid->sizes());
  arguments.emplace_back("extra_tokens", grid->extra_tokens());
  arguments.emplace_back("grid_dims", grid->dims());
  arguments.emplace_back("grid_axes", grid->axes());
  arguments.emplace_back("grid_origin", grid->origin());
  arguments.emplace_back("grid_scale", grid->scale());
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
