// Option types shared by several posenc functions: the patch grid of the vision codes, and the
// dropout seed drawn for a training call.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <vector>

namespace posenc {

// A patch grid of a vision or video transformer, for add_positional and positional_encoding
// (posenc.Grid in Python): positions become token indices, the first extra_tokens get no code,
// and channel segment s (dims[s] wide, default D / axes) codes axis axes[s] (default: the last
// axis first, as MAE) at (index + origin) * scale. See docs/vision.md.
struct GridOptions {
  /* implicit */ GridOptions(std::vector<int64_t> sizes) : sizes_(std::move(sizes)) {}
  TORCH_ARG(std::vector<int64_t>, sizes);  // (H, W) or (T, H, W), the last axis fastest
  TORCH_ARG(int64_t, extra_tokens) = 0;
  TORCH_ARG(std::optional<std::vector<int64_t>>, dims) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<int64_t>>, axes) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<int64_t>>, origin) = std::nullopt;
  TORCH_ARG(std::optional<std::vector<double>>, scale) = std::nullopt;
};

// The int64 scalar seed a dropout call uses, drawn from `generator` (or the device's default
// generator) on `device`; nullopt when no mask is drawn.
std::optional<at::Tensor> draw_seed(const at::Device& device, double dropout, bool training,
                                    const std::optional<at::Generator>& generator);

}  // namespace posenc
