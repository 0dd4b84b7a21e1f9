// posenc's public C++ API: every operator, forward and backward, with an options struct whose
// defaults match Python's (builder style, like torch::nn::functional options), and the modules
// of posenc/nn.h. Every call goes through the dispatcher, so autograd, CPU, CUDA and Meta all
// apply exactly as from torch.ops.posenc in Python, with the same argument checks.
//
//   #include <posenc/posenc.h>
//   auto y = posenc::add_positional(x, posenc::AddPositionalOptions().dropout(0.1));
//   auto h = posenc::embedding(ids, weight, posenc::EmbeddingOptions().padding_idx(0));
//   auto qk = posenc::rotary(q, k, posenc::RotaryOptions().offset(128));
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

// The library's ABI version. A program that uses the operators only through the dispatcher
// (a TorchScript or AOTInductor model) calls it once, so that the linker keeps libposenc, whose
// loading registers the operators.
extern "C" int posenc_library_abi_version();

namespace posenc {

// A patch grid of a vision or video transformer, for add_positional and positional_encoding:
// positions become token indices, the first extra_tokens get no code, and channel segment s
// (dims[s] wide, default D / axes) codes axis axes[s] (default: the last axis first, as MAE)
// at (index + origin) * scale. See the Python docstring of posenc.add_positional.
struct GridOptions {
  /* implicit */ GridOptions(std::vector<int64_t> sizes) : sizes_(std::move(sizes)) {}
  TORCH_ARG(std::vector<int64_t>, sizes);  // (H, W) or (T, H, W), the last axis fastest
  TORCH_ARG(int64_t, extra_tokens) = 0;
  TORCH_ARG(std::optional<std::vector<int64_t>>, dims) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<int64_t>>, axes) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<int64_t>>, origin) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<double>>, scale) = std::nullopt;
};

// Options of add_positional: y = dropout_p(combine(scale * x, PE(pos))).
struct AddPositionalOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";  // sinusoidal, linear, damped, cosine, learned
  TORCH_ARG(std::string, combine) = "add";      // add, mul
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;  // broadcastable to [..., T]
  TORCH_ARG(int64_t, offset) = 0;  // first position when positions is none
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";  // vaswani, tensor2tensor
  TORCH_ARG(std::string, layout) = "interleaved";  // interleaved, concat
  TORCH_ARG(std::optional<at::Tensor>, table) = std::nullopt;  // [P, D] for kind "learned"
  TORCH_ARG(std::optional<GridOptions>, grid) = std::nullopt;  // codes on a patch grid
  TORCH_ARG(double, dropout) = 0.0;                            // in [0, 1]
  TORCH_ARG(bool, training) = true;
  TORCH_ARG(std::optional<at::Generator>, generator) = std::nullopt;  // for a drawn seed
  // The dropout seed (int64, one element). The forward draws one from `generator` when unset;
  // the backward functions need the forward's.
  TORCH_ARG(std::optional<at::Tensor>, seed) = std::nullopt;
};

// x: [..., T, D] -> [..., T, D]
at::Tensor add_positional(const at::Tensor& x, const AddPositionalOptions& options = {});
// grad: [..., T, D] -> grad_x: [..., T, D]
at::Tensor add_positional_backward(const at::Tensor& grad, const AddPositionalOptions& options);
// grad: [..., T, D], x: [..., T, D] (combine "mul") -> grad_table: [table_rows, D]
at::Tensor add_positional_table_backward(const at::Tensor& grad,
                                         const std::optional<at::Tensor>& x,
                                         c10::SymInt table_rows,
                                         const AddPositionalOptions& options);

// Options of embedding: y = dropout_p(combine(scale * weight[ids], PE(pos))).
struct EmbeddingOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(std::string, combine) = "add";
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;  // none: sqrt(D)
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;  // broadcastable to ids
  TORCH_ARG(bool, fairseq_positions) = false;  // fairseq's make_positions (needs padding_idx)
  TORCH_ARG(int64_t, offset) = 0;
  TORCH_ARG(std::optional<int64_t>, padding_idx) = std::nullopt;
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::string, layout) = "interleaved";
  TORCH_ARG(std::optional<at::Tensor>, table) = std::nullopt;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, training) = true;
  TORCH_ARG(std::optional<at::Generator>, generator) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, seed) = std::nullopt;  // as in AddPositionalOptions
};

// ids: [..., T], weight: [V, D] -> [..., T, D]
at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight,
                     const EmbeddingOptions& options = {});
// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_weight: [V, D]
at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids,
                              const at::Tensor& weight, const EmbeddingOptions& options);
// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_table: [table_rows, D]
at::Tensor embedding_table_backward(const at::Tensor& grad, const at::Tensor& ids,
                                    const at::Tensor& weight, c10::SymInt table_rows,
                                    const EmbeddingOptions& options);

// Options of rotary (see the Python docstring of posenc.rotary).
struct RotaryOptions {
  // [S], [1, S], [B, S] or [tokens]; with mrope_section one row per axis: [3, ...] of those
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;
  TORCH_ARG(int64_t, offset) = 0;
  TORCH_ARG(std::optional<at::Tensor>, offsets) = std::nullopt;  // [B] or [sequences]
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::optional<at::Tensor>, inv_freq) = std::nullopt;  // [rotary_dim / 2]
  TORCH_ARG(std::optional<int64_t>, rotary_dim) = std::nullopt;
  TORCH_ARG(bool, interleaved) = false;
  TORCH_ARG(std::string, layout) = "bshd";  // bshd, bhsd, sbhd, thd
  TORCH_ARG(std::optional<at::Tensor>, cu_seqlens) = std::nullopt;
  TORCH_ARG(double, attention_factor) = 1.0;
  TORCH_ARG(bool, inverse) = false;  // rotate by the negative angle (the backward)
  // "exact", or "transformers": float32 frequencies and angles as transformers computes them.
  TORCH_ARG(std::string, precision) = "exact";
  // M-RoPE (Qwen2/2.5-VL; Qwen3-VL with mrope_interleaved): pairs per axis (temporal, height,
  // width), summing to rotary_dim / 2.
  TORCH_ARG(std::optional<std::vector<int64_t>>, mrope_section) = std::nullopt;
  TORCH_ARG(bool, mrope_interleaved) = false;
};

// q, k: [B, S, H, D] in options.layout -> {q_out} or {q_out, k_out}
std::vector<at::Tensor> rotary(const at::Tensor& q,
                               const std::optional<at::Tensor>& k = std::nullopt,
                               const RotaryOptions& options = {});

// transformers' apply_rotary_pos_emb with given tables. q, k: [..., D]; cos, sin: broadcastable
// to q after unsqueeze(unsqueeze_dim). transpose: the transposed map (the backward).
std::vector<at::Tensor> rotary_tables(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      int64_t unsqueeze_dim = 1, bool transpose = false);

// Options of positional_encoding.
struct PositionCodeOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::string, layout) = "interleaved";
  TORCH_ARG(std::optional<GridOptions>, grid) = std::nullopt;  // codes on a patch grid
  TORCH_ARG(at::ScalarType, dtype) = at::kFloat;
};

// positions: any shape of integers -> [*positions.shape, dim]
at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim,
                               const PositionCodeOptions& options = {});

// Options of rope_frequencies: a Hugging Face rope_scaling type and its keys.
struct RopeFrequenciesOptions {
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, rope_type) = "default";  // default, linear, dynamic, yarn, longrope,
                                                  // llama3, proportional
  // Unset: yarn and longrope use max_position_embeddings / original_max_position_embeddings.
  TORCH_ARG(std::optional<double>, factor) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, max_position_embeddings) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, original_max_position_embeddings) = std::nullopt;
  TORCH_ARG(std::optional<int64_t>, seq_len) = std::nullopt;
  TORCH_ARG(std::optional<double>, attention_factor) = std::nullopt;
  TORCH_ARG(double, beta_fast) = 32.0;
  TORCH_ARG(double, beta_slow) = 1.0;
  TORCH_ARG(std::optional<double>, mscale) = std::nullopt;
  TORCH_ARG(std::optional<double>, mscale_all_dim) = std::nullopt;
  TORCH_ARG(bool, truncate) = true;
  TORCH_ARG(double, low_freq_factor) = 1.0;
  TORCH_ARG(double, high_freq_factor) = 4.0;
  TORCH_ARG(std::optional<std::vector<double>>, short_factor) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<double>>, long_factor) = std::nullopt;
  // "exact": float64 from the formulas in double; "transformers": float32, bit-identical to
  // transformers' inv_freq.
  TORCH_ARG(std::string, precision) = "exact";
  // proportional: the rotated share of the pairs (the rest get frequency 0).
  TORCH_ARG(double, partial_rotary_factor) = 1.0;
};

// (inv_freq [dim / 2], attention_factor)
std::tuple<at::Tensor, double> rope_frequencies(int64_t dim,
                                                const RopeFrequenciesOptions& options = {});

// The int64 scalar seed a dropout call uses, drawn from `generator` (or the device's default
// generator) on `device`; nullopt when no mask is drawn.
std::optional<at::Tensor> draw_seed(const at::Device& device, double dropout, bool training,
                                    const std::optional<at::Generator>& generator);

}  // namespace posenc
