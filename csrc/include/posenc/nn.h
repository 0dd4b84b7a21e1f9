// C++ modules, the counterparts of posenc.nn in Python (same parameters, buffers and
// initialisation):
//   posenc::nn::PositionalEncoding enc(posenc::nn::PositionalEncodingOptions(512).dropout(0.1));
//   posenc::nn::PositionalEmbedding emb(posenc::nn::PositionalEmbeddingOptions(32000, 512));
//   posenc::nn::RotaryEmbedding rope(posenc::nn::RotaryEmbeddingOptions(128));
//   posenc::nn::PatchPositionalEncoding pe(
//       posenc::nn::PatchPositionalEncodingOptions(768, {14, 14}).extra_tokens(1));
//   posenc::nn::AxialRotaryEmbedding rope2d(
//       posenc::nn::AxialRotaryEmbeddingOptions(64, {16, 16}).style("llama4").extra_tokens(1));
//   posenc::nn::ALiBi alibi(posenc::nn::ALiBiOptions(16).causal(true));
//   posenc::nn::T5RelativePositionBias t5(posenc::nn::T5RelativePositionBiasOptions(12));
//   posenc::nn::SwinRelativePositionBias swin(posenc::nn::SwinRelativePositionBiasOptions(3, {7,
//   7}));
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/serialize/input-archive.h>

#include "posenc/posenc.h"

namespace posenc {
namespace nn {

struct PositionalEncodingOptions {
  explicit PositionalEncodingOptions(int64_t d_model) : d_model_(d_model) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(double, dropout) = 0.1;
  TORCH_ARG(int64_t, max_len) = 5000;    // rows of the learned table
  TORCH_ARG(bool, batch_first) = false;  // x: (B, T, D) if true, else (T, B, D)
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(std::string, combine) = "add";
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::string, layout) = "interleaved";
};

// dropout(x + PE[:T]) like the PyTorch tutorial's class; "learned" holds a table Parameter.
class PositionalEncodingImpl : public torch::nn::Cloneable<PositionalEncodingImpl> {
 public:
  explicit PositionalEncodingImpl(PositionalEncodingOptions options);
  void reset() override;
  // x: (T, B, D) or (B, T, D) -> like x
  at::Tensor forward(const at::Tensor& x, const std::optional<at::Tensor>& positions = std::nullopt,
                     int64_t offset = 0);

  PositionalEncodingOptions options;
  at::Tensor table;  // [max_len, d_model] for kind "learned", else undefined

 private:
  at::Tensor forward_with(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                          int64_t offset, const std::optional<at::Tensor>& table, bool training);
};
TORCH_MODULE(PositionalEncoding);

struct PositionalEmbeddingOptions {
  PositionalEmbeddingOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}
  TORCH_ARG(int64_t, num_embeddings);
  TORCH_ARG(int64_t, embedding_dim);
  TORCH_ARG(std::optional<int64_t>, padding_idx) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, max_positions) = std::nullopt;  // learned table rows
  TORCH_ARG(bool, fairseq_positions) = false;
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(std::string, combine) = "add";
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;  // none: sqrt(D)
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::string, layout) = "interleaved";
};

// nn.Embedding fused with a position code; `weight` initialised like torch::nn::Embedding.
class PositionalEmbeddingImpl : public torch::nn::Cloneable<PositionalEmbeddingImpl> {
 public:
  explicit PositionalEmbeddingImpl(PositionalEmbeddingOptions options);
  void reset() override;
  // ids: (..., T) -> (..., T, D)
  at::Tensor forward(const at::Tensor& ids,
                     const std::optional<at::Tensor>& positions = std::nullopt, int64_t offset = 0);

  PositionalEmbeddingOptions options;
  at::Tensor weight;  // [num_embeddings, embedding_dim]
  at::Tensor table;   // [max_positions, embedding_dim] for kind "learned"

 private:
  // ids: (..., T), weight: [V, D] -> (..., T, D)
  at::Tensor forward_with(const at::Tensor& ids, const at::Tensor& weight,
                          const std::optional<at::Tensor>& positions, int64_t offset,
                          const std::optional<at::Tensor>& table, bool training);
};
TORCH_MODULE(PositionalEmbedding);

struct RotaryEmbeddingOptions {
  explicit RotaryEmbeddingOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(bool, interleaved) = false;
  TORCH_ARG(std::optional<int64_t>, rotary_dim) = std::nullopt;
  // The scaling (rope_type and its keys) and the precision; base is taken from above.
  TORCH_ARG(RopeFrequenciesOptions, scaling) = {};
};

// Rotary embedding of q (and k); inv_freq is a buffer, no cos/sin cache. The frequencies keep
// their precision (float64 for "exact") whatever dtype the module is moved to, so the module
// gives the same bits as posenc::rotary with the same arguments.
class RotaryEmbeddingImpl : public torch::nn::Cloneable<RotaryEmbeddingImpl> {
 public:
  explicit RotaryEmbeddingImpl(RotaryEmbeddingOptions options);
  void reset() override;
  // q, k: layout of RotaryOptions -> {q_out} or {q_out, k_out}
  std::vector<at::Tensor> forward(const at::Tensor& q,
                                  const std::optional<at::Tensor>& k = std::nullopt,
                                  RotaryOptions rotary = {});
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void load(torch::serialize::InputArchive& archive) override;

  RotaryEmbeddingOptions options;
  at::Tensor inv_freq;  // [rotary_dim / 2]: float64 ("exact") or float32 ("transformers")
  double attention_factor = 1.0;

 private:
  void restore_frequencies();
  at::Tensor frequencies_;  // the computed inv_freq on the CPU
};
TORCH_MODULE(RotaryEmbedding);

struct PatchPositionalEncodingOptions {
  PatchPositionalEncodingOptions(int64_t embed_dim, std::vector<int64_t> grid)
      : embed_dim_(embed_dim), grid_(std::move(grid)) {}
  TORCH_ARG(int64_t, embed_dim);
  TORCH_ARG(std::vector<int64_t>, grid);  // (H, W) or (T, H, W)
  TORCH_ARG(int64_t, extra_tokens) = 0;   // leading tokens with no code (cls)
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::optional<int64_t>, base_size) = std::nullopt;           // SD3 (2D)
  TORCH_ARG(double, interpolation_scale) = 1.0;                          // SD3, CogVideoX
  TORCH_ARG(std::optional<int64_t>, pos_embed_max_size) = std::nullopt;  // SD3 crop (2D)
  TORCH_ARG(double, temporal_interpolation_scale) = 1.0;                 // CogVideoX (3D)
  TORCH_ARG(double, dropout) = 0.0;
};

// dropout(x + pos_embed) for the fixed 2D/3D sin-cos codes of MAE, DiT, SD3 and CogVideoX
// (posenc.nn.PatchPositionalEncoding): no buffer, the code is computed from the patch grid.
class PatchPositionalEncodingImpl : public torch::nn::Cloneable<PatchPositionalEncodingImpl> {
 public:
  explicit PatchPositionalEncodingImpl(PatchPositionalEncodingOptions options);
  void reset() override;
  // x: (..., extra_tokens + prod(grid), embed_dim), or (..., N, embed_dim) with positions (token
  // indices) -> like x. grid: the input's grid (default: the options'), of as many axes.
  at::Tensor forward(const at::Tensor& x,
                     const std::optional<std::vector<int64_t>>& grid = std::nullopt,
                     const std::optional<at::Tensor>& positions = std::nullopt);
  // The add_positional options of the published conventions for `grid`.
  AddPositionalOptions grid_options(const std::vector<int64_t>& grid) const;

  PatchPositionalEncodingOptions options;
};
TORCH_MODULE(PatchPositionalEncoding);

struct AxialRotaryEmbeddingOptions {
  AxialRotaryEmbeddingOptions(int64_t head_dim, std::vector<int64_t> grid)
      : head_dim_(head_dim), grid_(std::move(grid)) {}
  TORCH_ARG(int64_t, head_dim);               // divisible by 4
  TORCH_ARG(std::vector<int64_t>, grid);      // (H, W)
  TORCH_ARG(std::string, style) = "pixtral";  // pixtral, llama4, dinov3
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(int64_t, extra_tokens) = 0;  // unrotated: after the patches (llama4), else before
  TORCH_ARG(std::string, precision) = "exact";
};

// The 2D rotary embedding of vision transformers (posenc.nn.AxialRotaryEmbedding): rotary's
// M-RoPE with one position row per grid axis and mrope_section {0, D/4, D/4}, in Pixtral's,
// Llama 4's or DINOv3's convention. `rope` holds the frequencies in their precision.
class AxialRotaryEmbeddingImpl : public torch::nn::Cloneable<AxialRotaryEmbeddingImpl> {
 public:
  explicit AxialRotaryEmbeddingImpl(AxialRotaryEmbeddingOptions options);
  void reset() override;
  // (positions [3, extra_tokens + H * W], inv_freq [D / 2]) of the style for a grid.
  std::pair<at::Tensor, at::Tensor> position_ids(const std::vector<int64_t>& grid,
                                                 const at::Device& device) const;
  // q, k: extra_tokens + H * W tokens in `layout` -> {q_out} or {q_out, k_out}
  std::vector<at::Tensor> forward(const at::Tensor& q,
                                  const std::optional<at::Tensor>& k = std::nullopt,
                                  const std::optional<std::vector<int64_t>>& grid = std::nullopt,
                                  const std::string& layout = "bshd");

  AxialRotaryEmbeddingOptions options;
  RotaryEmbedding rope{nullptr};
};
TORCH_MODULE(AxialRotaryEmbedding);

// ---- attention biases (posenc::attention_bias) -------------------------------------------------

struct ALiBiOptions {
  explicit ALiBiOptions(int64_t num_heads) : num_heads_(num_heads) {}
  TORCH_ARG(int64_t, num_heads);
  TORCH_ARG(bool, causal) = false;     // -inf for keys after the query
  TORCH_ARG(bool, learnable) = false;  // slopes as a parameter, else a buffer
};

// -slope[h] * |j - (offset + i)| with posenc::alibi_slopes(num_heads).
class ALiBiImpl : public torch::nn::Cloneable<ALiBiImpl> {
 public:
  explicit ALiBiImpl(ALiBiOptions options);
  void reset() override;
  // -> [1, H, query_length, key_length]
  at::Tensor forward(int64_t query_length, int64_t key_length, int64_t offset = 0);

  ALiBiOptions options;
  at::Tensor slopes;  // [H]
};
TORCH_MODULE(ALiBi);

struct T5RelativePositionBiasOptions {
  explicit T5RelativePositionBiasOptions(int64_t num_heads) : num_heads_(num_heads) {}
  TORCH_ARG(int64_t, num_heads);
  TORCH_ARG(int64_t, num_buckets) = 32;
  TORCH_ARG(int64_t, max_distance) = 128;
  TORCH_ARG(bool, bidirectional) = true;  // an encoder's; false for a decoder
};

// T5's compute_bias: weight[bucket(j - (offset + i)), h]; `weight` like torch::nn::Embedding's.
class T5RelativePositionBiasImpl : public torch::nn::Cloneable<T5RelativePositionBiasImpl> {
 public:
  explicit T5RelativePositionBiasImpl(T5RelativePositionBiasOptions options);
  void reset() override;
  // -> [1, H, query_length, key_length]
  at::Tensor forward(int64_t query_length, int64_t key_length, int64_t offset = 0);

  T5RelativePositionBiasOptions options;
  at::Tensor weight;  // [num_buckets, H]
};
TORCH_MODULE(T5RelativePositionBias);

struct SwinRelativePositionBiasOptions {
  SwinRelativePositionBiasOptions(int64_t num_heads, std::vector<int64_t> window_size)
      : num_heads_(num_heads), window_size_(std::move(window_size)) {}
  TORCH_ARG(int64_t, num_heads);
  TORCH_ARG(std::vector<int64_t>, window_size);  // (Wh, Ww)
};

// Swin's windowed 2D relative position bias, from relative_position_bias_table.
class SwinRelativePositionBiasImpl : public torch::nn::Cloneable<SwinRelativePositionBiasImpl> {
 public:
  explicit SwinRelativePositionBiasImpl(SwinRelativePositionBiasOptions options);
  void reset() override;
  // -> [1, H, Wh * Ww, Wh * Ww]
  at::Tensor forward();

  SwinRelativePositionBiasOptions options;
  at::Tensor relative_position_bias_table;  // [(2 Wh - 1) (2 Ww - 1), H]
};
TORCH_MODULE(SwinRelativePositionBias);

}  // namespace nn
}  // namespace posenc
