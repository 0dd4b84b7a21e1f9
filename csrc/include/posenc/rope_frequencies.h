// rope_frequencies: the rotary frequencies of a Hugging Face rope type.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace posenc {

// Options of rope_frequencies: a Hugging Face rope_scaling type and its keys.
struct RopeFrequenciesOptions {
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, rope_type) = "default";  // default, linear, dynamic, yarn, longrope,
                                                  // llama3, proportional, axial, axial_shared
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

}  // namespace posenc
