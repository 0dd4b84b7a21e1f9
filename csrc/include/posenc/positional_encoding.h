// positional_encoding: the position code PE(positions) itself.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>

#include "posenc/options.h"

namespace posenc {

// Options of positional_encoding.
struct PositionCodeOptions {
  TORCH_ARG(std::string, kind) = "sinusoidal";
  TORCH_ARG(double, base) = 10000.0;
  TORCH_ARG(std::string, convention) = "vaswani";
  // interleaved, concat; none: concat on a grid, else interleaved
  TORCH_ARG(std::optional<std::string>, layout) = std::nullopt;
  TORCH_ARG(std::optional<GridOptions>, grid) = std::nullopt;  // codes on a patch grid
  TORCH_ARG(at::ScalarType, dtype) = at::kFloat;
};

// positions: any shape of integers -> [*positions.shape, dim]
at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim,
                               const PositionCodeOptions& options = {});

}  // namespace posenc
