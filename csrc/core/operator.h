// One operator: its definition (the schema and the names its parser reads, checked against each
// other when the library registers it), the boxed arguments of a call read by schema name, and
// its registration on every backend of the build.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/backend.h"

namespace posenc {
namespace core {

// One operator: its schema (without the namespace) and every argument name its parser reads.
// define() refuses a definition whose two lists differ, when the library is loaded, so a name
// misspelled in the schema or in the parser never falls back to a default in silence.
struct OperatorDefinition {
  const char* schema;                         // "add_positional(Tensor x, ...) -> Tensor"
  std::initializer_list<const char*> parsed;  // "x", "positions", ...
};

// The empty string when every name in definition.parsed is an argument of the schema and every
// argument is parsed; else a message naming the first difference.
std::string definition_mismatch(const OperatorDefinition& definition);

// Checks the definition (a mismatch is an internal error) and defines the operator's schema;
// returns the operator's name ("add_positional").
std::string define_schema(torch::Library& library, const OperatorDefinition& definition);

// The boxed arguments of one call (the last schema().arguments().size() entries of a stack),
// looked up by schema name. Reading a name the schema lacks is an internal error.
class Arguments {
 public:
  Arguments(const c10::OperatorHandle& op, const torch::jit::Stack& stack);

  const char* op_name() const { return op_name_; }  // "posenc.add_positional"
  const c10::IValue& operator[](std::string_view name) const;

  at::Tensor tensor(std::string_view name) const;
  std::optional<at::Tensor> optional_tensor(std::string_view name) const;
  std::string_view string(std::string_view name) const;
  std::optional<std::string_view> optional_string(std::string_view name) const;
  double real(std::string_view name) const;
  std::optional<double> optional_real(std::string_view name) const;
  int64_t integer(std::string_view name) const;
  std::optional<int64_t> optional_integer(std::string_view name) const;
  std::optional<std::vector<int64_t>> optional_integers(std::string_view name) const;
  std::optional<std::vector<double>> optional_reals(std::string_view name) const;
  bool boolean(std::string_view name) const;

 private:
  const c10::FunctionSchema& schema_;
  const c10::IValue* first_;
  const char* op_name_;
  const class SchemaNames* names_;  // the schema's names by text (operator.cpp)
};

// The index of argument `name` in `schema`, or -1. `schema` is a registered operator's: its names
// are kept for the life of the process, by its address.
int argument_index(const c10::FunctionSchema& schema, std::string_view name);

// The boxed kernel of `kRun(args)`, which returns the operator's result (an IValue-convertible
// value, or a vector of IValues for several results): the arguments are dropped from the stack
// and the results pushed.
template <auto kRun>
void boxed(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/, torch::jit::Stack* stack) {
  auto results = [&] {
    const Arguments args(op, *stack);
    return kRun(args);
  }();
  torch::jit::drop(*stack, op.schema().arguments().size());
  if constexpr (std::is_same_v<decltype(results), std::vector<c10::IValue>>) {
    for (c10::IValue& result : results) stack->push_back(std::move(result));
  } else {
    stack->emplace_back(std::move(results));
  }
}

template <auto kRun>
torch::CppFunction boxed_function() {
  return torch::CppFunction::makeFromBoxedFunction<&boxed<kRun>>();
}

// In a family's TORCH_LIBRARY_FRAGMENT(posenc, m) block: defines the operator and registers
// Kernel::run<backend>(args) on the CPU, Meta and, in CUDA builds, CUDA.
template <typename Kernel>
void define(torch::Library& library, const OperatorDefinition& definition) {
  const std::string name = define_schema(library, definition);
  library.impl(name.c_str(),
               torch::dispatch(c10::DispatchKey::CPU,
                               boxed_function<&Kernel::template run<Backend::kCpu>>()));
  library.impl(name.c_str(),
               torch::dispatch(c10::DispatchKey::Meta,
                               boxed_function<&Kernel::template run<Backend::kMeta>>()));
#ifdef POSENC_WITH_CUDA
  library.impl(name.c_str(),
               torch::dispatch(c10::DispatchKey::CUDA,
                               boxed_function<&Kernel::template run<Backend::kCuda>>()));
#endif
}

// The same for an operator whose one kernel serves every device (kRun(args), host arithmetic).
template <auto kRun>
void define_composite(torch::Library& library, const OperatorDefinition& definition) {
  const std::string name = define_schema(library, definition);
  library.impl(name.c_str(), torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd,
                                             boxed_function<kRun>()));
}

}  // namespace core
}  // namespace posenc
