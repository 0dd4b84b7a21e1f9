// Boxed arguments by schema name, and the registration-time check of each operator's definition.
#include "core/operator.h"

#include <torch/csrc/jit/frontend/function_schema_parser.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

namespace posenc {
namespace core {

int argument_index(const c10::FunctionSchema& schema, std::string_view name) {
  const auto& arguments = schema.arguments();
  // A parser reads each name from the same literal at every call, so the index found last for
  // (schema, the name's address) is kept per thread and checked with one comparison: a call
  // reads about 20 names, and scanning the schema for each cost a decoding step about 0.4 us.
  struct Kept {
    const c10::FunctionSchema* schema;
    const char* name;
    int index;
  };
  constexpr size_t kSlots = 256;
  thread_local Kept kept[kSlots] = {};
  const size_t slot =
      (reinterpret_cast<uintptr_t>(name.data()) >> 3 ^ reinterpret_cast<uintptr_t>(&schema) >> 4) %
      kSlots;
  Kept& entry = kept[slot];
  if (entry.schema == &schema && entry.name == name.data() &&
      static_cast<size_t>(entry.index) < arguments.size() &&
      arguments[static_cast<size_t>(entry.index)].name() == name) {
    return entry.index;
  }
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (arguments[i].name() == name) {
      entry = {&schema, name.data(), static_cast<int>(i)};
      return static_cast<int>(i);
    }
  }
  return -1;
}

std::string definition_mismatch(const OperatorDefinition& definition) {
  const c10::FunctionSchema schema = torch::jit::parseSchema(definition.schema);
  for (const char* name : definition.parsed) {
    if (argument_index(schema, name) < 0) {
      return "posenc::" + schema.name() + ": the parser reads '" + name +
             "', which the schema does not have";
    }
  }
  for (const c10::Argument& argument : schema.arguments()) {
    const bool parsed = std::any_of(definition.parsed.begin(), definition.parsed.end(),
                                    [&](const char* name) { return argument.name() == name; });
    if (!parsed) {
      return "posenc::" + schema.name() + ": the schema's argument '" + argument.name() +
             "' is not read by the parser";
    }
  }
  return "";
}

std::string define_schema(torch::Library& library, const OperatorDefinition& definition) {
  const std::string mismatch = definition_mismatch(definition);
  TORCH_INTERNAL_ASSERT(mismatch.empty(), mismatch);
  library.def(definition.schema);
  const std::string_view schema = definition.schema;
  return std::string(schema.substr(0, schema.find('(')));
}

Arguments::Arguments(const c10::OperatorHandle& op, const torch::jit::Stack& stack)
    : schema_(op.schema()) {
  const size_t count = schema_.arguments().size();
  TORCH_INTERNAL_ASSERT(stack.size() >= count);
  first_ = stack.data() + (stack.size() - count);
  op_name_ = dotted_name(schema_);
}

const char* Arguments::dotted_name(const c10::FunctionSchema& schema) {
  // Made once per operator and kept: a string per call costs a decoding step an allocation.
  // The schemas live as long as their registrations, which outlive every call.
  static std::mutex mutex;
  static auto* names = new std::unordered_map<const c10::FunctionSchema*, std::string>();
  const std::lock_guard<std::mutex> lock(mutex);
  auto [entry, made] = names->try_emplace(&schema);
  if (made) {
    // "posenc::rotary" -> "posenc.rotary", as torch.ops spells it.
    const std::string& qualified = schema.name();
    const size_t separator = qualified.find("::");
    TORCH_INTERNAL_ASSERT(separator != std::string::npos,
                          "an operator without a namespace: ", qualified);
    entry->second = qualified.substr(0, separator) + "." + qualified.substr(separator + 2);
  }
  return entry->second.c_str();
}

const c10::IValue& Arguments::operator[](std::string_view name) const {
  const int index = argument_index(schema_, name);
  TORCH_INTERNAL_ASSERT(index >= 0, op_name_, " has no argument ", name);
  return first_[index];
}

at::Tensor Arguments::tensor(std::string_view name) const { return (*this)[name].toTensor(); }

std::optional<at::Tensor> Arguments::optional_tensor(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  at::Tensor tensor = value.toTensor();
  if (!tensor.defined()) return std::nullopt;
  return tensor;
}

std::string_view Arguments::string(std::string_view name) const {
  return (*this)[name].toStringView();
}

std::optional<std::string_view> Arguments::optional_string(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toStringView();
}

double Arguments::real(std::string_view name) const { return (*this)[name].toDouble(); }

std::optional<double> Arguments::optional_real(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toDouble();
}

int64_t Arguments::integer(std::string_view name) const { return (*this)[name].toInt(); }

std::optional<int64_t> Arguments::optional_integer(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toInt();
}

std::optional<std::vector<int64_t>> Arguments::optional_integers(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toIntVector();
}

std::optional<std::vector<double>> Arguments::optional_reals(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toDoubleVector();
}

bool Arguments::boolean(std::string_view name) const { return (*this)[name].toBool(); }

}  // namespace core
}  // namespace posenc
