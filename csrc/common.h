// Backend-independent pieces of the torch binding: parsing the string options, validating
// arguments (with messages that name the argument), and describing tensors to kernels/.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "positional.h"

namespace posenc {
namespace detail {

// The non-tensor arguments of add_positional and its backward, parsed once.
struct PositionalOptions {
  kernels::PositionCodeOptions code;
  kernels::Combine combine = kernels::Combine::kAdd;
  double scale = 1.0;
  int64_t offset = 0;
  double dropout = 0.0;
  bool training = true;
};

kernels::PositionKind parse_kind(std::string_view kind);
kernels::Combine parse_combine(std::string_view combine);
kernels::Convention parse_convention(std::string_view convention);
kernels::Layout parse_layout(std::string_view layout);

PositionalOptions parse_positional_options(std::string_view kind, std::string_view combine,
                                           double scale, int64_t offset, double base,
                                           std::string_view convention, std::string_view layout,
                                           double dropout, bool training);

kernels::DType kernel_dtype(at::ScalarType type);
kernels::IndexType kernel_index_type(at::ScalarType type);

// Checks the tensors of add_positional (and its backward, with `x` the incoming gradient) and
// returns positions expanded to x.shape[:-1] (or nullopt). Shape/dtype/device checks only: safe
// on Meta tensors.
//   x: [..., T, D]   positions: broadcastable to [..., T]   table: [P, D]   seed: int64 scalar
std::optional<at::Tensor> check_add_positional(const char* op, const at::Tensor& x,
                                               const std::optional<at::Tensor>& positions,
                                               const std::optional<at::Tensor>& table,
                                               const std::optional<at::Tensor>& seed,
                                               const PositionalOptions& options);

// Value checks that read data: positions non-negative and inside the table. Syncs on CUDA.
void check_position_values(const char* op, const std::optional<at::Tensor>& positions,
                           int64_t offset, int64_t seq_len, std::optional<int64_t> table_rows);

// The dropout seed as an integer (CPU tensors, or a copy to the host).
uint64_t read_seed(const std::optional<at::Tensor>& seed);

// Describes x: [..., T, D] (or an index [..., T]) to kernels/.
kernels::RowShape row_shape(const at::Tensor& x);
kernels::StridedRows strided_rows(const at::Tensor& x);
kernels::StridedIndex strided_index(const std::optional<at::Tensor>& index);

kernels::ParallelFor torch_parallel_for();

}  // namespace detail
}  // namespace posenc
