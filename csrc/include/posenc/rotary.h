// rotary: rotary position embedding (RoPE) of q and k, angles computed in the kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <vector>

namespace posenc {

// Options of rotary (see docs/python-api.md).
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

}  // namespace posenc
