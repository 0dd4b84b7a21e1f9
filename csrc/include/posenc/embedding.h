// embedding: y = dropout_p(combine(scale * weight[ids], PE(pos))) in one pass, and its backward
// ops.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <torch/arg.h>

#include <optional>
#include <string>

#include "posenc/options.h"

namespace posenc {

// Options of embedding, with Python's defaults (see docs/python-api.md).
struct EmbeddingOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(std::string, combine) = "add";
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;          // none: sqrt(D)
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;  // broadcastable to ids
  TORCH_ARG(bool, fairseq_positions) = false;  // fairseq's make_positions (needs padding_idx)
  TORCH_ARG(int64_t, offset) = 0;
  TORCH_ARG(std::optional<int64_t>, padding_idx) = std::nullopt;
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  TORCH_ARG(std::optional<std::string>, layout) = std::nullopt;  // none: interleaved
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

}  // namespace posenc
