#include "posenc/nn.h"

#include <torch/nn/init.h>

#include <cmath>

namespace posenc {
namespace nn {

PositionalEncodingImpl::PositionalEncodingImpl(PositionalEncodingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void PositionalEncodingImpl::reset() {
  TORCH_CHECK_VALUE(options.dropout() >= 0.0 && options.dropout() < 1.0,
                    "PositionalEncoding: dropout must be in [0, 1), got ", options.dropout());
  if (options.kind() == "learned") {
    table = register_parameter("table", torch::empty({options.max_len(), options.d_model()}));
    torch::nn::init::normal_(table, 0.0, 1.0 / std::sqrt(static_cast<double>(options.d_model())));
  }
}

at::Tensor PositionalEncodingImpl::forward(const at::Tensor& x,
                                           const std::optional<at::Tensor>& positions,
                                           int64_t offset) {
  at::Tensor input = options.batch_first() ? x : x.movedim(0, -2);
  std::optional<at::Tensor> rows = positions;
  if (!options.batch_first() && positions.has_value() && positions->dim() >= 2) {
    rows = positions->movedim(0, -1);
  }
  auto call = AddPositionalOptions()
                  .kind(options.kind())
                  .combine(options.combine())
                  .scale(options.scale())
                  .positions(rows)
                  .offset(offset)
                  .base(options.base())
                  .convention(options.convention())
                  .layout(options.layout())
                  .dropout(options.dropout())
                  .training(is_training());
  if (table.defined()) call.table(table);
  at::Tensor y = add_positional(input, call);
  return options.batch_first() ? y : y.movedim(-2, 0);
}

PositionalEmbeddingImpl::PositionalEmbeddingImpl(PositionalEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void PositionalEmbeddingImpl::reset() {
  const int64_t vocab = options.num_embeddings();
  if (options.padding_idx().has_value()) {
    const int64_t pad = *options.padding_idx();
    TORCH_CHECK_VALUE(pad >= -vocab && pad < vocab, "PositionalEmbedding: padding_idx must be ",
                      "within [-", vocab, ", ", vocab, "), got ", pad);
    options.padding_idx(pad < 0 ? pad + vocab : pad);
  }
  weight = register_parameter("weight", torch::empty({vocab, options.embedding_dim()}));
  torch::nn::init::normal_(weight);
  if (options.padding_idx().has_value()) {
    torch::NoGradGuard no_grad;
    weight[*options.padding_idx()].fill_(0);
  }
  if (options.kind() == "learned") {
    TORCH_CHECK_VALUE(options.max_positions().has_value(),
                      "PositionalEmbedding: kind='learned' needs max_positions");
    table = register_parameter("table",
                               torch::empty({*options.max_positions(), options.embedding_dim()}));
    torch::nn::init::normal_(table, 0.0,
                             1.0 / std::sqrt(static_cast<double>(options.embedding_dim())));
  }
}

at::Tensor PositionalEmbeddingImpl::forward(const at::Tensor& ids,
                                            const std::optional<at::Tensor>& positions,
                                            int64_t offset) {
  auto call = EmbeddingOptions()
                  .kind(options.kind())
                  .combine(options.combine())
                  .scale(options.scale())
                  .positions(positions)
                  .fairseq_positions(options.fairseq_positions() && !positions.has_value())
                  .offset(offset)
                  .padding_idx(options.padding_idx())
                  .base(options.base())
                  .convention(options.convention())
                  .layout(options.layout())
                  .dropout(options.dropout())
                  .training(is_training());
  if (table.defined()) call.table(table);
  return embedding(ids, weight, call);
}

RotaryEmbeddingImpl::RotaryEmbeddingImpl(RotaryEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void RotaryEmbeddingImpl::reset() {
  const int64_t rotary_dim = options.rotary_dim().value_or(options.dim());
  auto [frequencies, factor] = rope_frequencies(rotary_dim, options.base(), options.rope_type(),
                                                options.factor(),
                                                options.max_position_embeddings());
  inv_freq = register_buffer("inv_freq", frequencies);
  attention_factor = factor;
}

std::vector<at::Tensor> RotaryEmbeddingImpl::forward(const at::Tensor& q,
                                                     const std::optional<at::Tensor>& k,
                                                     RotaryOptions rotary_options) {
  rotary_options.inv_freq(inv_freq)
      .rotary_dim(options.rotary_dim().value_or(options.dim()))
      .interleaved(options.interleaved())
      .attention_factor(attention_factor);
  return rotary(q, k, rotary_options);
}

}  // namespace nn
}  // namespace posenc
