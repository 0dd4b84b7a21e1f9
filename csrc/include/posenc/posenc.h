// posenc's public C++ API: the operators with options structs whose defaults match Python's
// (builder style, like torch::nn::functional options), and the modules of posenc/nn.h. Every
// call goes through the dispatcher, so autograd, CPU and CUDA all work from C++.
//
//   #include <posenc/posenc.h>
//   auto y = posenc::add_positional(x, posenc::AddPositionalOptions().dropout(0.1));
//   auto h = posenc::embedding(ids, weight, posenc::EmbeddingOptions().padding_idx(0));
//   auto qk = posenc::rotary(q, k, posenc::RotaryOptions().offset(128));
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "posenc/ops.h"

// The library's ABI version. A program that uses the operators only through the dispatcher
// (a TorchScript or AOTInductor model) calls it once, so that the linker keeps libposenc, whose
// loading registers the operators.
extern "C" int posenc_library_abi_version();

namespace posenc {

// Options of add_positional: y = dropout_p(combine(scale * x, PE(pos))).
struct AddPositionalOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";  // sinusoidal, linear, damped, cosine, learned
  TORCH_ARG(std::string, combine) = "add";      // add, mul
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;  // broadcastable to [..., T]
  TORCH_ARG(int64_t, offset) = 0;
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";  // vaswani, tensor2tensor
  TORCH_ARG(std::string, layout) = "interleaved";  // interleaved, concat
  TORCH_ARG(std::optional<at::Tensor>, table) = std::nullopt;  // [P, D] for kind "learned"
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, training) = true;
  TORCH_ARG(std::optional<at::Generator>, generator) = std::nullopt;  // for the dropout seed
};

// x: [..., T, D] -> [..., T, D]
at::Tensor add_positional(const at::Tensor& x, const AddPositionalOptions& options = {});

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
};

// ids: [..., T], weight: [V, D] -> [..., T, D]
at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight,
                     const EmbeddingOptions& options = {});

// Options of rotary (see the Python docstring of posenc.rotary).
struct RotaryOptions {
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;  // [S], [B, S] or [tokens]
  TORCH_ARG(int64_t, offset) = 0;
  TORCH_ARG(std::optional<at::Tensor>, offsets) = std::nullopt;  // [B] or [sequences]
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::optional<at::Tensor>, inv_freq) = std::nullopt;  // [rotary_dim / 2]
  TORCH_ARG(std::optional<int64_t>, rotary_dim) = std::nullopt;
  TORCH_ARG(bool, interleaved) = false;
  TORCH_ARG(std::string, layout) = "bshd";  // bshd, bhsd, sbhd, thd
  TORCH_ARG(std::optional<at::Tensor>, cu_seqlens) = std::nullopt;
  TORCH_ARG(double, attention_factor) = 1.0;
};

// q, k: [B, S, H, D] in options.layout -> {q_out} or {q_out, k_out}
std::vector<at::Tensor> rotary(const at::Tensor& q, const std::optional<at::Tensor>& k = std::nullopt,
                               const RotaryOptions& options = {});

// Options of positional_encoding.
struct PositionCodeOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::string, layout) = "interleaved";
  TORCH_ARG(at::ScalarType, dtype) = at::kFloat;
};

// positions: any shape of integers -> [*positions.shape, dim]
at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim,
                               const PositionCodeOptions& options = {});

// (inv_freq [dim / 2], attention_factor) of the default rotary frequencies or a Hugging Face
// rope_type with one `factor` ("linear", "dynamic", "yarn" with defaults); for every key use
// the operator posenc::rope_frequencies through the dispatcher.
std::tuple<at::Tensor, double> rope_frequencies(int64_t dim, double base = 10000.0,
                                                const std::string& rope_type = "default",
                                                double factor = 1.0,
                                                std::optional<int64_t> max_position_embeddings =
                                                    std::nullopt);

// The int64 scalar seed a dropout call uses, drawn from `generator` (or the device's default
// generator) on `device`; nullopt when no mask is drawn.
std::optional<at::Tensor> draw_seed(const at::Device& device, double dropout, bool training,
                                    const std::optional<at::Generator>& generator);

}  // namespace posenc
