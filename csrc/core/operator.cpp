// Boxed arguments by schema name, and the registration-time check of each operator's definition.
#include "core/operator.h"

#include <torch/csrc/jit/frontend/function_schema_parser.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace posenc {
namespace core {

// An operator's argument names, found by their text: a hash of the length and three characters
// into open slots (more than twice the most arguments a schema has), then one comparison. Made
// once per schema, with its dotted name, and never changed: scanning the schema for each of a
// call's ~20 names cost a decoding step about 0.4 us.
class SchemaNames {
 public:
  explicit SchemaNames(const c10::FunctionSchema& schema) {
    // "posenc::rotary" -> "posenc.rotary", as torch.ops spells it.
    const std::string& qualified = schema.name();
    const size_t separator = qualified.find("::");
    TORCH_INTERNAL_ASSERT(separator != std::string::npos,
                          "an operator without a namespace: ", qualified);
    dotted_ = qualified.substr(0, separator) + "." + qualified.substr(separator + 2);
    const auto& arguments = schema.arguments();
    TORCH_INTERNAL_ASSERT(arguments.size() <= kSlots / 2, qualified, " has too many arguments");
    for (size_t i = 0; i < arguments.size(); ++i) {
      const std::string& name = arguments[i].name();
      size_t slot = hash(name);
      while (slots_[slot].index >= 0) slot = (slot + 1) % kSlots;
      slots_[slot] = {name, static_cast<int>(i)};
    }
  }

  const char* dotted() const { return dotted_.c_str(); }

  int find(std::string_view name) const {
    for (size_t slot = hash(name);; slot = (slot + 1) % kSlots) {
      const Slot& entry = slots_[slot];
      if (entry.index < 0 || entry.name == name) return entry.index;
    }
  }

 private:
  static constexpr size_t kSlots = 128;
  struct Slot {
    std::string_view name;
    int index = -1;
  };

  static size_t hash(std::string_view name) {
    uint64_t h = name.size();
    if (!name.empty()) {
      h = (h << 8 | static_cast<uint8_t>(name.front())) << 8 | static_cast<uint8_t>(name.back());
      h = h << 8 | static_cast<uint8_t>(name[name.size() / 2]);
    }
    return static_cast<size_t>((h * 0x9E3779B97F4A7C15ull) >> 57);  // top 7 bits: kSlots
  }

  std::string dotted_;
  std::array<Slot, kSlots> slots_{};
};

namespace {

// The names of `schema`, made once under a lock and kept for the thread's recent schemas (one
// lookup per call; a thread_local in a shared library is reached through __tls_get_addr). The
// schemas live as long as their registrations, which outlive every call.
const SchemaNames& schema_names(const c10::FunctionSchema& schema) {
  struct Kept {
    const c10::FunctionSchema* schema = nullptr;
    const SchemaNames* names = nullptr;
  };
  constexpr size_t kKept = 16;
  thread_local std::array<Kept, kKept> kept;
  Kept& entry = kept[(reinterpret_cast<uintptr_t>(&schema) >> 4) % kKept];
  if (entry.schema == &schema) return *entry.names;
  static std::mutex mutex;
  static auto* made = new std::unordered_map<const c10::FunctionSchema*, SchemaNames>();
  const std::lock_guard<std::mutex> lock(mutex);
  const SchemaNames& names = made->try_emplace(&schema, schema).first->second;
  entry = {&schema, &names};
  return names;
}

[[noreturn]] C10_NOINLINE void missing_argument(const char* op, std::string_view name) {
  TORCH_INTERNAL_ASSERT(false, op, " has no argument ", name);
}

}  // namespace

int argument_index(const c10::FunctionSchema& schema, std::string_view name) {
  return schema_names(schema).find(name);
}

std::string definition_mismatch(const OperatorDefinition& definition) {
  const c10::FunctionSchema schema = torch::jit::parseSchema(definition.schema);
  // Scanned here: the schema is a temporary, so not one for schema_names().
  const auto& arguments = schema.arguments();
  for (const char* name : definition.parsed) {
    const bool found =
        std::any_of(arguments.begin(), arguments.end(),
                    [&](const c10::Argument& argument) { return argument.name() == name; });
    if (!found) {
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
    : schema_(op.schema()), names_(&schema_names(schema_)) {
  const size_t count = schema_.arguments().size();
  TORCH_INTERNAL_ASSERT(stack.size() >= count);
  first_ = stack.data() + (stack.size() - count);
  op_name_ = names_->dotted();
}

const c10::IValue& Arguments::operator[](std::string_view name) const {
  const int index = names_->find(name);
  if (index < 0) missing_argument(op_name_, name);
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
