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
  detail::KernelCall call;
  detail::prepare_call(call, out, positions, table, seed, options, combine);
  if (in.defined()) call.params.x = detail::strided_rows(in);
  kernels::add_positional_cpu(call.params, detail::torch_parallel_for());
}

// A zero [rows, D] accumulation buffer: float for half types, else like `like`.
at::Tensor zeros_in_compute_type(at::IntArrayRef size, const at::Tensor& like) {
  const at::ScalarType type = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros(size, like.options().dtype(type));
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
  at::Tensor grad_table = zeros_in_compute_type({table_rows, grad.size(-1)}, grad);
  detail::KernelCall call;
  detail::prepare_call(call, grad, expanded, std::nullopt, detail::read_seed(seed), options,
                       options.combine);
  call.params.x = detail::strided_rows(grad);
  call.params.source.kind = kernels::PositionKind::kLearned;
  call.params.source.table_rows = table_rows;
  kernels::StridedRows input;
  if (options.combine == kernels::Combine::kMul) input = detail::strided_rows(*x);
  kernels::add_positional_table_backward_cpu(call.params, input, grad_table.data_ptr(),
                                             detail::torch_parallel_for());
  return grad_table.to(grad.scalar_type());
}

constexpr const char* kEmbedding = "posenc.embedding";

// ids: [..., T], weight: [V, D] -> [..., T, D]
at::Tensor embedding_cpu(const at::Tensor& ids, const at::Tensor& weight,
                         const std::optional<at::Tensor>& positions,
                         const std::optional<at::Tensor>& table,
                         const std::optional<at::Tensor>& seed, std::string_view kind,
                         std::string_view combine, std::optional<double> scale, int64_t offset,
                         std::optional<int64_t> padding_idx, bool fairseq_positions, double base,
                         std::string_view convention, std::string_view layout, double dropout,
                         bool training) {
  auto options = detail::parse_embedding_options(kind, combine, scale, offset, padding_idx,
                                                 fairseq_positions, base, convention, layout,
                                                 dropout, training);
  const auto expanded =
      detail::check_embedding(kEmbedding, ids, weight, positions, table, seed, options);
  detail::check_embedding_values(kEmbedding, ids, weight.size(0), positions, options,
                                 table_rows_of(options.positional, table));
  std::vector<int64_t> out_size(ids.sizes().begin(), ids.sizes().end());
  out_size.push_back(weight.size(1));
  at::Tensor out = at::empty(out_size, weight.options());
  detail::KernelCall call;
  detail::prepare_call(call, out, expanded, table, detail::read_seed(seed), options.positional,
                       options.positional.combine);
  detail::set_gather(call.params, ids, weight, options);
  kernels::add_positional_cpu(call.params, detail::torch_parallel_for());
  return out;
}

void check_embedding_grad(const char* op, const at::Tensor& grad, const at::Tensor& ids,
                          const at::Tensor& weight) {
  TORCH_CHECK_VALUE(grad.dim() == ids.dim() + 1 &&
                        grad.sizes().slice(0, ids.dim()) == ids.sizes() &&
                        grad.size(-1) == weight.size(1),
                    op, ": grad must have shape ids.shape + (D,), got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == weight.scalar_type(), op,
                   ": grad must have weight's dtype, got ", grad.scalar_type());
}

// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_weight: [V, D]
at::Tensor embedding_backward_cpu(const at::Tensor& grad, const at::Tensor& ids,
                                  const at::Tensor& weight,
                                  const std::optional<at::Tensor>& positions,
                                  const std::optional<at::Tensor>& table,
                                  const std::optional<at::Tensor>& seed, std::string_view kind,
                                  std::string_view combine, std::optional<double> scale,
                                  int64_t offset, std::optional<int64_t> padding_idx,
                                  bool fairseq_positions, double base,
                                  std::string_view convention, std::string_view layout,
                                  double dropout, bool training) {
  const char* op = "posenc.embedding_backward";
  auto options = detail::parse_embedding_options(kind, combine, scale, offset, padding_idx,
                                                 fairseq_positions, base, convention, layout,
                                                 dropout, training);
  const auto expanded = detail::check_embedding(op, ids, weight, positions, table, seed, options);
  check_embedding_grad(op, grad, ids, weight);
  at::Tensor grad_weight = zeros_in_compute_type({weight.size(0), weight.size(1)}, grad);
  detail::KernelCall call;
  detail::prepare_call(call, grad, expanded, table, detail::read_seed(seed), options.positional,
                       options.positional.combine);
  call.params.x = detail::strided_rows(grad);
  detail::set_gather(call.params, ids, weight, options);
  kernels::embedding_weight_backward_cpu(call.params, grad_weight.data_ptr(),
                                         detail::torch_parallel_for());
  return grad_weight.to(grad.scalar_type());
}

// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_table: [table_rows, D]
at::Tensor embedding_table_backward_cpu(const at::Tensor& grad, const at::Tensor& ids,
                                        const at::Tensor& weight,
                                        const std::optional<at::Tensor>& positions,
                                        const std::optional<at::Tensor>& seed, int64_t table_rows,
                                        std::string_view combine, std::optional<double> scale,
                                        int64_t offset, std::optional<int64_t> padding_idx,
                                        bool fairseq_positions, double dropout, bool training) {
  const char* op = "posenc.embedding_table_backward";
  auto options = detail::parse_embedding_options("sinusoidal", combine, scale, offset,
                                                 padding_idx, fairseq_positions, 10000.0,
                                                 "vaswani", "interleaved", dropout, training);
  const auto expanded =
      detail::check_embedding(op, ids, weight, positions, std::nullopt, seed, options);
  check_embedding_grad(op, grad, ids, weight);
  at::Tensor grad_table = zeros_in_compute_type({table_rows, grad.size(-1)}, grad);
  detail::KernelCall call;
  detail::prepare_call(call, grad, expanded, std::nullopt, detail::read_seed(seed),
                       options.positional, options.positional.combine);
  call.params.x = detail::strided_rows(grad);
  detail::set_gather(call.params, ids, weight, options);
  call.params.source.kind = kernels::PositionKind::kLearned;
  call.params.source.table_rows = table_rows;
  kernels::add_positional_table_backward_cpu(call.params, kernels::StridedRows{},
                                             grad_table.data_ptr(), detail::torch_parallel_for());
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
  m.impl("embedding", &embedding_cpu);
  m.impl("embedding_backward", &embedding_backward_cpu);
  m.impl("embedding_table_backward", &embedding_table_backward_cpu);
  m.impl("positional_encoding", &positional_encoding_cpu);
}

}  // namespace posenc
