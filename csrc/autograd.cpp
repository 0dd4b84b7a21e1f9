// Autograd for the posenc operators, in C++ so that gradients work from LibTorch as well as
// Python. One boxed autograd kernel serves every differentiable operator: it runs the operator
// below the Autograd key and saves the call (its tensor arguments through save_for_backward,
// the others as one list). The backward calls each backward operator through the dispatcher
// with arguments taken by name from the saved call, so no argument list is spelled out here.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <cstring>

#include "call.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One backward operator: which differentiable inputs it gives the gradient of. When it is the
// forward operator itself (rotary), those inputs take the incoming gradients and `flip` names
// the bool argument that turns the map into its transpose.
struct BackwardCall {
  const char* op;
  std::array<const char*, 2> computes;
  const char* flip;
};

// The differentiable inputs of a forward operator (at most two) and the backward calls.
struct Derivative {
  const char* forward;
  std::array<const char*, 2> inputs;
  std::array<BackwardCall, 2> calls;
};

constexpr Derivative kDerivatives[] = {
    {"posenc::add_positional",
     {"x", "table"},
     {{{"posenc::add_positional_backward", {"x", nullptr}, nullptr},
       {"posenc::add_positional_table_backward", {"table", nullptr}, nullptr}}}},
    {"posenc::embedding",
     {"weight", "table"},
     {{{"posenc::embedding_backward", {"weight", nullptr}, nullptr},
       {"posenc::embedding_table_backward", {"table", nullptr}, nullptr}}}},
    {"posenc::rotary", {"q", "k"}, {{{"posenc::rotary", {"q", "k"}, "inverse"}, {}}}},
    {"posenc::rotary_tables",
     {"q", "k"},
     {{{"posenc::rotary_tables", {"q", "k"}, "transpose"}, {}}}},
};

const Derivative& derivative_of(const c10::OperatorHandle& op) {
  for (const Derivative& d : kDerivatives) {
    if (op.schema().name() == d.forward) return d;
  }
  TORCH_INTERNAL_ASSERT(false, "posenc: no derivative for ", op.schema().name());
}

c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

int argument_index(const c10::FunctionSchema& schema, std::string_view name) {
  const auto& arguments = schema.arguments();
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (arguments[i].name() == name) return static_cast<int>(i);
  }
  return -1;
}

int slot_of(const std::array<const char*, 2>& names, std::string_view name) {
  for (int i = 0; i < 2; ++i) {
    if (names[i] != nullptr && name == names[i]) return i;
  }
  return -1;
}

// The forward call that apply() receives besides the differentiable tensors.
struct ForwardCall {
  const c10::OperatorHandle* op;
  torch::jit::Stack* stack;
  const Derivative* derivative;
};

class PosencFunction : public torch::autograd::Function<PosencFunction> {
 public:
  // first, second: the derivative's inputs (second may be absent).
  static variable_list forward(AutogradContext* ctx, const ForwardCall& call,
                               const std::optional<at::Tensor>& first,
                               const std::optional<at::Tensor>& second) {
    const c10::FunctionSchema& schema = call.op->schema();
    const detail::Arguments args(*call.op, *call.stack);
    const Derivative& derivative = *call.derivative;
    const std::array<bool, 2> present{first.has_value(), second.has_value()};
    // Which backward calls may run, and so which saved arguments they read.
    std::array<bool, 2> may_run{};
    for (int c = 0; c < 2; ++c) {
      const BackwardCall& backward = derivative.calls[c];
      if (backward.op == nullptr) continue;
      for (const char* input : backward.computes) {
        const int slot = input ? slot_of(derivative.inputs, input) : -1;
        if (slot >= 0 && present[slot]) {
          const at::Tensor& t = slot == 0 ? *first : *second;
          may_run[c] = may_run[c] || t.requires_grad();
        }
      }
    }
    // Tensors go through save_for_backward (saved-tensor hooks see them); tensor_slots[i] is
    // argument i's index among them, or -1 for the values kept in `others`.
    std::vector<at::Tensor> saved;
    std::vector<int64_t> tensor_slots;
    c10::impl::GenericList others(c10::AnyType::get());
    for (const c10::Argument& argument : schema.arguments()) {
      const c10::IValue& value = args[argument.name()];
      const bool is_tensor = argument.type()->kind() == c10::TypeKind::TensorType ||
                             (argument.type()->kind() == c10::TypeKind::OptionalType &&
                              argument.type()->containedType(0)->kind() ==
                                  c10::TypeKind::TensorType);
      if (!is_tensor) {
        tensor_slots.push_back(-1);
        others.push_back(value);
        continue;
      }
      tensor_slots.push_back(static_cast<int64_t>(saved.size()));
      others.push_back(c10::IValue());
      const at::Tensor tensor = value.isNone() ? at::Tensor() : value.toTensor();
      const bool differentiable = slot_of(derivative.inputs, argument.name()) >= 0;
      TORCH_CHECK(differentiable || !tensor.defined() || !tensor.requires_grad(), args.op_name(),
                  ": gradients with respect to ", argument.name(),
                  " are not supported; pass it without requires_grad (detach it)");
      bool needed = false;
      for (int c = 0; c < 2; ++c) {
        if (!may_run[c]) continue;
        const BackwardCall& backward = derivative.calls[c];
        const bool is_self = schema.name() == backward.op;
        if (is_self && slot_of(backward.computes, argument.name()) >= 0) continue;  // a grad
        needed = needed || argument_index(find_op(backward.op).schema(), argument.name()) >= 0;
      }
      // The table gradient reads x only for combine="mul" (the scaled input multiplies it).
      if (needed && argument.name() == "x" && args.has("combine")) {
        needed = args.string("combine") == "mul";
      }
      saved.push_back(needed ? tensor : at::Tensor());
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["arguments"] = others;
    ctx->saved_data["tensor_slots"] = tensor_slots;
    ctx->saved_data["op"] = schema.name();
    ctx->saved_data["second_given"] = second.has_value();
    if (args.has("table") && args.optional_tensor("table").has_value()) {
      ctx->saved_data["table_rows"] = args.tensor("table").sym_size(0);
    }
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      call.op->callBoxed(call.stack);
    }
    const c10::IValue& result = call.stack->back();
    if (result.isTensorList()) return result.toTensorVector();
    return {result.toTensor()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const c10::OperatorHandle forward_op = find_op(ctx->saved_data["op"].toStringRef().c_str());
    const c10::FunctionSchema& forward_schema = forward_op.schema();
    const Derivative& derivative = derivative_of(forward_op);
    const variable_list saved = ctx->get_saved_variables();
    const c10::impl::GenericList others = ctx->saved_data["arguments"].toList();
    const std::vector<int64_t> tensor_slots = ctx->saved_data["tensor_slots"].toIntVector();
    // The forward's argument `name`: a saved tensor (None if absent), or the saved value.
    auto forward_argument = [&](std::string_view name) -> c10::IValue {
      const int index = argument_index(forward_schema, name);
      TORCH_INTERNAL_ASSERT(index >= 0, "posenc: ", forward_schema.name(), " has no ", name);
      const int64_t slot = tensor_slots[index];
      if (slot < 0) return others.get(index);
      const at::Tensor& tensor = saved[slot];
      return tensor.defined() ? c10::IValue(tensor) : c10::IValue();
    };
    variable_list grads(3);  // the ForwardCall, first, second
    for (const BackwardCall& backward : derivative.calls) {
      if (backward.op == nullptr) continue;
      bool wanted = false;
      for (const char* input : backward.computes) {
        const int slot = input ? slot_of(derivative.inputs, input) : -1;
        // Autograd edges exist only for the inputs given: first, then second.
        const bool given = slot == 0 || ctx->saved_data["second_given"].toBool();
        if (slot >= 0 && given && ctx->needs_input_grad(slot)) wanted = true;
      }
      if (!wanted) continue;
      const c10::OperatorHandle op = find_op(backward.op);
      const bool is_self = op.schema().name() == forward_schema.name();
      torch::jit::Stack stack;
      for (const c10::Argument& argument : op.schema().arguments()) {
        const std::string& name = argument.name();
        const int grad_slot = is_self ? slot_of(backward.computes, name) : -1;
        if (name == "grad") {
          stack.emplace_back(grad_outputs[0]);
        } else if (grad_slot >= 0) {
          // One output (and so one incoming gradient) per operand given to the forward.
          const bool given = grad_slot < static_cast<int>(grad_outputs.size());
          stack.emplace_back(given ? c10::IValue(grad_outputs[grad_slot]) : c10::IValue());
        } else if (backward.flip != nullptr && name == backward.flip) {
          stack.emplace_back(!forward_argument(name).toBool());
        } else if (name == "table_rows") {
          stack.emplace_back(ctx->saved_data["table_rows"]);
        } else {
          stack.emplace_back(forward_argument(name));
        }
      }
      op.callBoxed(stack);
      const c10::IValue& result = stack.back();
      const variable_list results =
          result.isTensorList() ? result.toTensorVector() : variable_list{result.toTensor()};
      for (size_t i = 0; i < results.size(); ++i) {
        const int slot = slot_of(derivative.inputs, backward.computes[i]);
        grads[1 + slot] = results[i];
      }
    }
    return grads;
  }
};

void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/,
                     torch::jit::Stack* stack) {
  const Derivative& derivative = derivative_of(op);
  const detail::Arguments args(op, *stack);
  const std::optional<at::Tensor> first = args.optional_tensor(derivative.inputs[0]);
  const std::optional<at::Tensor> second = args.optional_tensor(derivative.inputs[1]);
  const c10::FunctionSchema& schema = op.schema();
  const size_t argument_count = schema.arguments().size();
  // The forward runs on a copy of the arguments; the results replace them on `stack`.
  torch::jit::Stack call_stack(stack->end() - argument_count, stack->end());
  variable_list outputs =
      PosencFunction::apply(ForwardCall{&op, &call_stack, &derivative}, first, second);
  torch::jit::drop(*stack, argument_count);
  if (schema.returns()[0].type()->kind() == c10::TypeKind::ListType) {
    stack->emplace_back(std::move(outputs));
  } else {
    stack->emplace_back(std::move(outputs[0]));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  for (const Derivative& derivative : kDerivatives) {
    const std::string name = std::string(derivative.forward).substr(std::strlen("posenc::"));
    m.impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>());
  }
  // Backward operators are not differentiable again: a clear error if double backward reaches
  // them, instead of silently wrong second derivatives. positional_encoding has no
  // differentiable input.
  for (const char* name : {"add_positional_backward", "add_positional_table_backward",
                           "embedding_backward", "embedding_table_backward",
                           "positional_encoding"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}

}  // namespace posenc
