// add_positional: y = dropout_p(combine(scale * x, PE(pos))) in one pass, and its backward ops.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <torch/arg.h>

#include <optional>
#include <string>

#include "posenc/options.h"

namespace posenc {

// Options of add_positional, with Python's defaults (see docs/python-api.md).
struct AddPositionalOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";  // sinusoidal, linear, damped, cosine, learned
  TORCH_ARG(std::string, combine) = "add";      // add, mul
  TORCH_ARG(double, scale) = 1.0;
  TORCH_ARG(std::optional<at::Tensor>, positions) = std::nullopt;  // broadcastable to [..., T]
  TORCH_ARG(int64_t, offset) = 0;  // first position when positions is none
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";  // vaswani, tensor2tensor
  // interleaved, concat; none: concat on a grid (MAE, DiT, big_vision), else interleaved
  TORCH_ARG(std::optional<std::string>, layout) = std::nullopt;
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
at::Tensor add_positional_table_backward(const at::Tensor& grad, const std::optional<at::Tensor>& x,
                                         c10::SymInt table_rows,
                                         const AddPositionalOptions& options);

}  // namespace posenc
