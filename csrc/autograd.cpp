// Autograd for the posenc operators, in C++ so that gradients work from LibTorch as well as
// Python. Each forward calls the operator below the Autograd key; each backward calls the
// matching backward operator, which regenerates the dropout mask from the saved seed.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "posenc/ops.h"

namespace posenc {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> optional_of(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

// The string and scalar arguments that add_positional and embedding share, kept in the
// context for the backward. `scale` is an IValue: a double, or None (embedding: sqrt(D)).
struct CodeArguments {
  std::string kind, combine, convention, layout;
  c10::IValue scale;
  int64_t offset;
  double base, dropout;
  bool training;

  void save(AutogradContext* ctx) const {
    auto& data = ctx->saved_data;
    data["kind"] = kind;
    data["combine"] = combine;
    data["convention"] = convention;
    data["layout"] = layout;
    data["scale"] = scale;
    data["offset"] = offset;
    data["base"] = base;
    data["dropout"] = dropout;
    data["training"] = training;
  }

  static CodeArguments load(AutogradContext* ctx) {
    auto& data = ctx->saved_data;
    return {data["kind"].toStringRef(),    data["combine"].toStringRef(),
            data["convention"].toStringRef(), data["layout"].toStringRef(),
            data["scale"],                 data["offset"].toInt(),
            data["base"].toDouble(),       data["dropout"].toDouble(),
            data["training"].toBool()};
  }
};

class AddPositionalFunction : public torch::autograd::Function<AddPositionalFunction> {
 public:
  // x: [..., T, D], positions: broadcastable to [..., T], table: [P, D] -> [..., T, D]
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& positions,
                            const std::optional<at::Tensor>& table,
                            const std::optional<at::Tensor>& seed, std::string_view kind,
                            std::string_view combine, double scale, int64_t offset, double base,
                            std::string_view convention, std::string_view layout, double dropout,
                            bool training) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool table_needs_x =
        combine == "mul" && table.has_value() && table->requires_grad() && kind == "learned";
    ctx->save_for_backward({positions.value_or(at::Tensor()), table.value_or(at::Tensor()),
                            seed.value_or(at::Tensor()), table_needs_x ? x : at::Tensor()});
    CodeArguments{std::string(kind), std::string(combine), std::string(convention),
                  std::string(layout), scale, offset, base, dropout, training}
        .save(ctx);
    if (table.has_value()) {
      ctx->saved_data["table_rows"] = table->sym_size(0);
      // Autograd edges exist only for the tensors present: x, [positions], table, ...
      ctx->saved_data["table_edge"] = static_cast<int64_t>(positions.has_value() ? 2 : 1);
    }
    return ops::add_positional(x, positions, table, seed, kind, combine, scale, offset, base,
                               convention, layout, dropout, training);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto positions = optional_of(saved[0]);
    const auto table = optional_of(saved[1]);
    const auto seed = optional_of(saved[2]);
    const auto x = optional_of(saved[3]);
    const CodeArguments a = CodeArguments::load(ctx);
    const double scale = a.scale.toDouble();
    const at::Tensor& grad = grad_outputs[0];

    at::Tensor grad_x, grad_table;
    if (ctx->needs_input_grad(0)) {
      grad_x = ops::add_positional_backward(grad, positions, table, seed, a.kind, a.combine,
                                            scale, a.offset, a.base, a.convention, a.layout,
                                            a.dropout, a.training);
    }
    if (table.has_value() && ctx->needs_input_grad(ctx->saved_data["table_edge"].toInt())) {
      grad_table = ops::add_positional_table_backward(
          grad, x, positions, seed, ctx->saved_data["table_rows"].toSymInt(), a.combine, scale,
          a.offset, a.dropout, a.training);
    }
    variable_list grads(13);  // one per forward input after ctx
    grads[0] = grad_x;
    grads[2] = grad_table;
    return grads;
  }
};

class EmbeddingFunction : public torch::autograd::Function<EmbeddingFunction> {
 public:
  // ids: [..., T], weight: [V, D], positions: broadcastable to [..., T], table: [P, D]
  // -> [..., T, D]
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& ids, const at::Tensor& weight,
                            const std::optional<at::Tensor>& positions,
                            const std::optional<at::Tensor>& table,
                            const std::optional<at::Tensor>& seed, std::string_view kind,
                            std::string_view combine, std::optional<double> scale,
                            int64_t offset, std::optional<int64_t> padding_idx,
                            bool fairseq_positions, double base, std::string_view convention,
                            std::string_view layout, double dropout, bool training) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({ids, weight, positions.value_or(at::Tensor()),
                            table.value_or(at::Tensor()), seed.value_or(at::Tensor())});
    CodeArguments{std::string(kind), std::string(combine), std::string(convention),
                  std::string(layout), scale, offset, base, dropout, training}
        .save(ctx);
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["fairseq_positions"] = fairseq_positions;
    if (table.has_value()) {
      ctx->saved_data["table_rows"] = table->sym_size(0);
      // Edges: ids, weight, [positions], table, ...
      ctx->saved_data["table_edge"] = static_cast<int64_t>(positions.has_value() ? 3 : 2);
    }
    return ops::embedding(ids, weight, positions, table, seed, kind, combine, scale, offset,
                          padding_idx, fairseq_positions, base, convention, layout, dropout,
                          training);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& ids = saved[0];
    const at::Tensor& weight = saved[1];
    const auto positions = optional_of(saved[2]);
    const auto table = optional_of(saved[3]);
    const auto seed = optional_of(saved[4]);
    auto& data = ctx->saved_data;
    const CodeArguments a = CodeArguments::load(ctx);
    const auto scale = a.scale.toOptional<double>();
    const auto padding_idx = data["padding_idx"].toOptional<int64_t>();
    const bool fairseq_positions = data["fairseq_positions"].toBool();
    const at::Tensor& grad = grad_outputs[0];

    at::Tensor grad_weight, grad_table;
    if (ctx->needs_input_grad(1)) {
      grad_weight = ops::embedding_backward(grad, ids, weight, positions, table, seed, a.kind,
                                            a.combine, scale, a.offset, padding_idx,
                                            fairseq_positions, a.base, a.convention, a.layout,
                                            a.dropout, a.training);
    }
    if (table.has_value() && ctx->needs_input_grad(data["table_edge"].toInt())) {
      grad_table = ops::embedding_table_backward(grad, ids, weight, positions, seed,
                                                 data["table_rows"].toSymInt(), a.combine, scale,
                                                 a.offset, padding_idx, fairseq_positions,
                                                 a.dropout, a.training);
    }
    variable_list grads(16);  // one per forward input after ctx
    grads[1] = grad_weight;
    grads[3] = grad_table;
    return grads;
  }
};

at::Tensor embedding_autograd(const at::Tensor& ids, const at::Tensor& weight,
                              const std::optional<at::Tensor>& positions,
                              const std::optional<at::Tensor>& table,
                              const std::optional<at::Tensor>& seed, std::string_view kind,
                              std::string_view combine, std::optional<double> scale,
                              int64_t offset, std::optional<int64_t> padding_idx,
                              bool fairseq_positions, double base, std::string_view convention,
                              std::string_view layout, double dropout, bool training) {
  return EmbeddingFunction::apply(ids, weight, positions, table, seed, kind, combine, scale,
                                  offset, padding_idx, fairseq_positions, base, convention,
                                  layout, dropout, training);
}

// The backward of a rotation is the rotation by the negative angle: rotary with inverse
// flipped, itself differentiable, so double backward works too.
class RotaryFunction : public torch::autograd::Function<RotaryFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q,
                               const std::optional<at::Tensor>& k,
                               const std::optional<at::Tensor>& positions,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& inv_freq,
                               const std::optional<at::Tensor>& cu_seqlens, double base,
                               int64_t offset, std::optional<int64_t> rotary_dim,
                               bool interleaved, std::string_view layout,
                               double attention_factor, bool inverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({positions.value_or(at::Tensor()), offsets.value_or(at::Tensor()),
                            inv_freq.value_or(at::Tensor()), cu_seqlens.value_or(at::Tensor())});
    ctx->saved_data["has_k"] = k.has_value();
    ctx->saved_data["base"] = base;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["rotary_dim"] = rotary_dim;
    ctx->saved_data["interleaved"] = interleaved;
    ctx->saved_data["layout"] = std::string(layout);
    ctx->saved_data["attention_factor"] = attention_factor;
    ctx->saved_data["inverse"] = inverse;
    return ops::rotary(q, k, positions, offsets, inv_freq, cu_seqlens, base, offset, rotary_dim,
                       interleaved, layout, attention_factor, inverse);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const bool has_k = data["has_k"].toBool();
    const auto grads = ops::rotary(
        grad_outputs[0], has_k ? std::optional<at::Tensor>(grad_outputs[1]) : std::nullopt,
        optional_of(saved[0]), optional_of(saved[1]), optional_of(saved[2]),
        optional_of(saved[3]), data["base"].toDouble(), data["offset"].toInt(),
        data["rotary_dim"].toOptional<int64_t>(), data["interleaved"].toBool(),
        data["layout"].toStringRef(), data["attention_factor"].toDouble(),
        !data["inverse"].toBool());
    variable_list result(13);  // one per forward input after ctx
    result[0] = grads[0];
    if (has_k) result[1] = grads[1];
    return result;
  }
};

std::vector<at::Tensor> rotary_autograd(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                        const std::optional<at::Tensor>& positions,
                                        const std::optional<at::Tensor>& offsets,
                                        const std::optional<at::Tensor>& inv_freq,
                                        const std::optional<at::Tensor>& cu_seqlens, double base,
                                        int64_t offset, std::optional<int64_t> rotary_dim,
                                        bool interleaved, std::string_view layout,
                                        double attention_factor, bool inverse) {
  return RotaryFunction::apply(q, k, positions, offsets, inv_freq, cu_seqlens, base, offset,
                               rotary_dim, interleaved, layout, attention_factor, inverse);
}

// apply_rotary_pos_emb with given cos/sin: the backward is the transposed map.
class RotaryTablesFunction : public torch::autograd::Function<RotaryTablesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q,
                               const std::optional<at::Tensor>& k, const at::Tensor& cos,
                               const at::Tensor& sin, int64_t unsqueeze_dim, bool transpose) {
    TORCH_CHECK(!cos.requires_grad() && !sin.requires_grad(),
                "posenc.apply_rotary_pos_emb: gradients with respect to cos and sin are not "
                "supported; build them without grad (transformers does, under torch.no_grad)");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["has_k"] = k.has_value();
    ctx->saved_data["unsqueeze_dim"] = unsqueeze_dim;
    ctx->saved_data["transpose"] = transpose;
    return ops::rotary_tables(q, k, cos, sin, unsqueeze_dim, transpose);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const bool has_k = data["has_k"].toBool();
    const auto grads = ops::rotary_tables(
        grad_outputs[0], has_k ? std::optional<at::Tensor>(grad_outputs[1]) : std::nullopt,
        saved[0], saved[1], data["unsqueeze_dim"].toInt(), !data["transpose"].toBool());
    variable_list result(6);
    result[0] = grads[0];
    if (has_k) result[1] = grads[1];
    return result;
  }
};

std::vector<at::Tensor> rotary_tables_autograd(const at::Tensor& q,
                                               const std::optional<at::Tensor>& k,
                                               const at::Tensor& cos, const at::Tensor& sin,
                                               int64_t unsqueeze_dim, bool transpose) {
  return RotaryTablesFunction::apply(q, k, cos, sin, unsqueeze_dim, transpose);
}

at::Tensor add_positional_autograd(const at::Tensor& x,
                                   const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& table,
                                   const std::optional<at::Tensor>& seed, std::string_view kind,
                                   std::string_view combine, double scale, int64_t offset,
                                   double base, std::string_view convention,
                                   std::string_view layout, double dropout, bool training) {
  return AddPositionalFunction::apply(x, positions, table, seed, kind, combine, scale, offset,
                                      base, convention, layout, dropout, training);
}

}  // namespace

TORCH_LIBRARY_IMPL(posenc, Autograd, m) {
  m.impl("add_positional", &add_positional_autograd);
  // Backward operators are not differentiable again: a clear error if double backward reaches
  // them, instead of silently wrong second derivatives.
  m.impl("add_positional_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("add_positional_table_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("embedding", &embedding_autograd);
  m.impl("rotary", &rotary_autograd);
  m.impl("rotary_tables", &rotary_tables_autograd);
  m.impl("embedding_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("embedding_table_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace posenc
