// The one boxed autograd kernel of every differentiable posenc operator (see autograd.h).
#include "core/autograd.h"

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstddef>
#include <cstring>
#include <map>
#include <string>

namespace posenc {
namespace core {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The registered derivatives by forward operator name ("posenc::add_positional").
std::map<std::string, const Derivative*, std::less<>>& derivatives() {
  static std::map<std::string, const Derivative*, std::less<>> registered;
  return registered;
}

const Derivative& derivative_of(std::string_view op_name) {
  const auto found = derivatives().find(op_name);
  TORCH_INTERNAL_ASSERT(found != derivatives().end(), "posenc: no derivative for ", op_name);
  return *found->second;
}

c10::OperatorHandle find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

int slot_of(const std::array<const char*, 2>& names, std::string_view name) {
  for (int i = 0; i < 2; ++i) {
    if (names[i] != nullptr && name == names[i]) return i;
  }
  return -1;
}

bool is_tensor_argument(const c10::Argument& argument) {
  const c10::TypePtr& type = argument.type();
  return type->kind() == c10::TypeKind::TensorType ||
         (type->kind() == c10::TypeKind::OptionalType &&
          type->containedType(0)->kind() == c10::TypeKind::TensorType);
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
    const Arguments args(*call.op, *call.stack);
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
      if (!is_tensor_argument(argument)) {
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
      if (needed && derivative.needs != nullptr) {
        needed = derivative.needs(argument.name(), args);
      }
      saved.push_back(needed ? tensor : at::Tensor());
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["arguments"] = others;
    ctx->saved_data["tensor_slots"] = tensor_slots;
    ctx->saved_data["op"] = schema.name();
    ctx->saved_data["second_given"] = second.has_value();
    const int table = argument_index(schema, "table");
    if (table >= 0 && args.optional_tensor("table").has_value()) {
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
    const std::string forward_name = ctx->saved_data["op"].toStringRef();
    const c10::OperatorHandle forward_op = find_op(forward_name.c_str());
    const c10::FunctionSchema& forward_schema = forward_op.schema();
    const Derivative& derivative = derivative_of(forward_name);
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

// Whether a tensor argument of the call takes part in autograd: requires grad, or carries a
// forward-mode tangent (which PosencFunction::apply refuses with its message).
bool any_autograd_input(const torch::jit::Stack& stack, size_t argument_count) {
  const auto takes_part = [](const at::Tensor& tensor) {
    return tensor.defined() && (tensor.requires_grad() || tensor._fw_grad(/*level=*/0).defined());
  };
  for (auto value = stack.end() - static_cast<std::ptrdiff_t>(argument_count); value != stack.end();
       ++value) {
    if (value->isTensor() && takes_part(value->toTensor())) return true;
    if (value->isTensorList()) {
      for (const at::Tensor& tensor : value->toTensorVector()) {
        if (takes_part(tensor)) return true;
      }
    }
  }
  return false;
}

void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/,
                     torch::jit::Stack* stack) {
  // A call that no gradient can flow through needs no graph node: it runs below autograd at
  // once, with the same result. Building the node (its saved arguments and their names) cost a
  // decoding step more than the operator itself.
  if (!any_autograd_input(*stack, op.schema().arguments().size())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(stack);
    return;
  }
  const Derivative& derivative = derivative_of(op.schema().name());
  const Arguments args(op, *stack);
  // A derivative with one differentiable input names no second.
  auto input = [&](const char* name) {
    return name == nullptr ? std::nullopt : args.optional_tensor(name);
  };
  const std::optional<at::Tensor> first = input(derivative.inputs[0]);
  const std::optional<at::Tensor> second = input(derivative.inputs[1]);
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

constexpr const char* kNamespace = "posenc::";

}  // namespace

void register_derivative(torch::Library& library, const Derivative& derivative) {
  const std::string_view forward = derivative.forward;
  TORCH_INTERNAL_ASSERT(forward.rfind(kNamespace, 0) == 0, "posenc: ", forward);
  TORCH_INTERNAL_ASSERT(derivatives().emplace(std::string(forward), &derivative).second,
                        "posenc: two derivatives of ", forward);
  const std::string name(forward.substr(std::strlen(kNamespace)));
  library.impl(name.c_str(),
               torch::dispatch(c10::DispatchKey::Autograd,
                               torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>()));
}

void register_not_differentiable(torch::Library& library, const char* name) {
  library.impl(name, torch::dispatch(c10::DispatchKey::Autograd,
                                     torch::autograd::autogradNotImplementedFallback()));
}

}  // namespace core
}  // namespace posenc
