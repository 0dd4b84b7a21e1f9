// CPU implementations: validate, allocate, describe the tensors to kernels/ and call them.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common.h"
#include "positional.h"

namespace posenc {
namespace {

using detail::PositionalOptions;

constexpr const char* kAddPositional = "posenc.add_positional";

// Runs the add_positional kernel writing `out` ([..., T, D]) from `in` (same shape, or undefined
// for kPositionOnly) with `combine`.
void run_add_positional(const at::Tensor& in, const at::Tensor& out,
                        const std::optional<at::Tensor>& positions,
                        const std::optional<at::Tensor>& table, uint64_t seed,
                        const PositionalOptions& options, kernels::Combine combine) {
  kernels::AddPositionalParams params;
  params.dtype = detail::kernel_dtype(out.scalar_type());
  params.shape = detail::row_shape(out);
  if (in.defined()) params.x = detail::strided_rows(in);
  params.out = detail::strided_rows(out);
  params.positions = detail::strided_index(positions);
  params.offset = options.offset;
  params.combine = combine;
  params.scale = options.scale;
  params.dropout = kernels::make_dropout(options.dropout, options.training, seed);
  params.source.kind = options.code.kind;
  std::vector<kernels::ChannelCode> channels;
  if (options.code.kind == kernels::PositionKind::kLearned) {
    params.source.table = table->data_ptr();
    params.source.table_rows = table->size(0);
    params.source.table_row_stride = table->stride(0);
    params.source.table_dim_stride = table->stride(1);
  } else {
    channels = kernels::make_channel_codes(options.code, params.shape.dim);
    params.source.channels = channels.data();
  }
  kernels::add_positional_cpu(params, detail::torch_parallel_for());
}

std::optional<int64_t> table_rows_of(const PositionalOptions& options,
                                     const std::optional<at::Tensor>& table) {
  if (options.code.kind != kernels::PositionKind::kLearned) return std::nullopt;
  return table->size(0);
}

// x: [..., T, D], positions: broadcastable to [..., T], table: [P, D] -> [..., T, D]
at::Tensor add_positional_cpu(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                              const std::optional<at::Tensor>& table,
                              const std::optional<at::Tensor>& seed, std::string_view kind,
                              std::string_view combine, double scale, int64_t offset, double base,
                              std::string_view convention, std::string_view layout,
                              double dropout, bool training) {
  const PositionalOptions options = detail::parse_positional_options(
      kind, combine, scale, offset, base, convention, layout, dropout, training);
  const auto expanded =
      detail::check_add_positional(kAddPositional, x, positions, table, seed, options);
  detail::check_position_values(kAddPositional, positions, offset, x.size(-2),
                                table_rows_of(options, table));
  at::Tensor out = at::empty_like(x);
  run_add_positional(x, out, expanded, table, detail::read_seed(seed), options, options.combine);
  return out;
}

// grad: [..., T, D] -> grad_x: [..., T, D]
at::Tensor add_positional_backward_cpu(const at::Tensor& grad,
                                       const std::optional<at::Tensor>& positions,
                                       const std::optional<at::Tensor>& table,
                                       const std::optional<at::Tensor>& seed,
                                       std::string_view kind, std::string_view combine,
                                       double scale, int64_t offset, double base,
                                       std::string_view convention, std::string_view layout,
                                       double dropout, bool training) {
  const char* op = "posenc.add_positional_backward";
  const PositionalOptions options = detail::parse_positional_options(
      kind, combine, scale, offset, base, convention, layout, dropout, training);
  const auto expanded = detail::check_add_positional(op, grad, positions, table, seed, options);
  at::Tensor grad_x = at::empty_like(grad);
  // d/dx of scale*x + PE is scale; of (scale*x)*PE it is scale*PE: the forward kernel with the
  // code dropped (add) or kept (mul), under the same dropout mask.
  const kernels::Combine combine_for_grad = options.combine == kernels::Combine::kAdd
                                                ? kernels::Combine::kScaleOnly
                                                : kernels::Combine::kMul;
  run_add_positional(grad, grad_x, expanded, table, detail::read_seed(seed), options,
                     combine_for_grad);
  return grad_x;
}

// grad: [..., T, D], x: [..., T, D] (combine="mul") -> grad_table: [table_rows, D]
at::Tensor add_positional_table_backward_cpu(const at::Tensor& grad,
                                             const std::optional<at::Tensor>& x,
                                             const std::optional<at::Tensor>& positions,
                                             const std::optional<at::Tensor>& seed,
                                             int64_t table_rows, std::string_view combine,
                                             double scale, int64_t offset, double dropout,
                                             bool training) {
  const char* op = "posenc.add_positional_table_backward";
  // The table itself is not an input here; checking as a computed kind covers grad, positions
  // and seed.
  const PositionalOptions options = detail::parse_positional_options(
      "sinusoidal", combine, scale, offset, 10000.0, "vaswani", "interleaved", dropout, training);
  TORCH_CHECK_VALUE(table_rows >= 0, op, ": table_rows must be >= 0, got ", table_rows);
  const auto expanded = detail::check_add_positional(op, grad, positions, std::nullopt, seed,
                                                     options);
  detail::check_position_values(op, positions, offset, grad.size(-2), table_rows);
  if (options.combine == kernels::Combine::kMul) {
    TORCH_CHECK_VALUE(x.has_value() && x->sizes() == grad.sizes(), op,
                      ": combine='mul' needs x with the shape of grad");
  }
  const at::ScalarType acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_table = at::zeros({table_rows, grad.size(-1)}, grad.options().dtype(acc_type));
  kernels::AddPositionalParams params;
  params.dtype = detail::kernel_dtype(grad.scalar_type());
  params.shape = detail::row_shape(grad);
  params.x = detail::strided_rows(grad);
  params.positions = detail::strided_index(expanded);
  params.offset = offset;
  params.combine = options.combine;
  params.scale = scale;
  params.dropout = kernels::make_dropout(dropout, training, detail::read_seed(seed));
  params.source.kind = kernels::PositionKind::kLearned;
  params.source.table_rows = table_rows;
  kernels::StridedRows input;
  if (options.combine == kernels::Combine::kMul) input = detail::strided_rows(*x);
  kernels::add_positional_table_backward_cpu(params, input, grad_table.data_ptr(),
                                             detail::torch_parallel_for());
  return grad_table.to(grad.scalar_type());
}

// positions: any shape of integers -> [*positions.shape, dim]
at::Tensor positional_encoding_cpu(const at::Tensor& positions, int64_t dim,
                                   std::string_view kind, double base,
                                   std::string_view convention, std::string_view layout,
                                   std::optional<at::ScalarType> dtype) {
  const char* op = "posenc.positional_encoding";
  const PositionalOptions options = detail::parse_positional_options(
      kind, "add", 1.0, 0, base, convention, layout, 0.0, false);
  TORCH_CHECK_VALUE(options.code.kind != kernels::PositionKind::kLearned, op,
                    ": kind='learned' has no computed code; index the table instead");
  TORCH_CHECK_VALUE(dim >= 0, op, ": dim must be >= 0, got ", dim);
  const at::ScalarType out_type = dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(out_type == at::kFloat || out_type == at::kDouble ||
                       out_type == at::kBFloat16 || out_type == at::kHalf,
                   op, ": dtype must be float32, float64, bfloat16 or float16, got ", out_type);
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
                   op, ": positions must be an int64 or int32 tensor, got ",
                   positions.scalar_type());
  std::vector<int64_t> out_sizes(positions.sizes().begin(), positions.sizes().end());
  out_sizes.push_back(dim);
  const at::Tensor flat_positions = positions.reshape({-1});
  detail::check_position_values(op, flat_positions, 0, flat_positions.numel(), std::nullopt);
  at::Tensor out = at::empty({flat_positions.numel(), dim}, positions.options().dtype(out_type));
  run_add_positional(at::Tensor(), out, flat_positions, std::nullopt, 0, options,
                     kernels::Combine::kPositionOnly);
  return out.view(out_sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("add_positional", &add_positional_cpu);
  m.impl("add_positional_backward", &add_positional_backward_cpu);
  m.impl("add_positional_table_backward", &add_positional_table_backward_cpu);
  m.impl("positional_encoding", &positional_encoding_cpu);
}

}  // namespace posenc
