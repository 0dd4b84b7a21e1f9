// The operators' implementations for any backend: validate, allocate, describe the tensors to
// kernels/ and call the backend's kernels. A Backend (CpuBackend in ops_cpu.cpp, CudaBackend in
// ops_cuda.cpp) supplies the kernel calls:
//   host_seed(seed)                    the seed for params.dropout.seed (CPU reads it)
//   run_rows(params, seed, out)        add_positional / embedding rows
//   scatter(params, input, target, seed, grad, indices)   table / weight gradients
//   rotary(params, inv_freq, base, q)  rotary_tables(params, q)
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros.h>

#include "common.h"
#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace posenc {
namespace impl {

using detail::PositionalOptions;

enum class ScatterTarget { kTable, kWeight };

// What a deterministic scatter needs to know about each row's target.
struct ScatterIndices {
  std::optional<at::Tensor> ids;        // [..., T] (weight target, and fairseq positions)
  std::optional<at::Tensor> positions;  // expanded to [..., T], or none: offset + t
  int64_t offset = 0;
};

constexpr const char* kAddPositional = "posenc.add_positional";

// Runs the add_positional kernel writing `out` ([..., T, D]) from `in` (same shape, or undefined
// for kPositionOnly) with `combine`.
template <typename Backend>
void run_add_positional(const at::Tensor& in, const at::Tensor& out,
                        const std::optional<at::Tensor>& positions,
                        const std::optional<at::Tensor>& table,
                        const std::optional<at::Tensor>& seed, const PositionalOptions& options,
                        kernels::Combine combine) {
  detail::KernelCall call;
  detail::prepare_call(call, out, positions, table, Backend::host_seed(seed), options, combine);
  if (in.defined()) call.params.x = detail::strided_rows(in);
  Backend::run_rows(call.params, seed, out);
}

// A zero [rows, D] accumulation buffer: float for half types, else like `like`.
inline at::Tensor zeros_in_compute_type(at::IntArrayRef size, const at::Tensor& like) {
  const at::ScalarType type = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros(size, like.options().dtype(type));
}

inline std::optional<int64_t> table_rows_of(const PositionalOptions& options,
                                     const std::optional<at::Tensor>& table) {
  if (options.code.kind != kernels::PositionKind::kLearned) return std::nullopt;
  return table->size(0);
}

// x: [..., T, D], positions: broadcastable to [..., T], table: [P, D] -> [..., T, D]
template <typename Backend>
at::Tensor add_positional_impl(const at::Tensor& x, const std::optional<at::Tensor>& positions,
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
  run_add_positional<Backend>(x, out, expanded, table, seed, options, options.combine);
  return out;
}

// grad: [..., T, D] -> grad_x: [..., T, D]
template <typename Backend>
at::Tensor add_positional_backward_impl(const at::Tensor& grad,
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
  run_add_positional<Backend>(grad, grad_x, expanded, table, seed, options, combine_for_grad);
  return grad_x;
}

// grad: [..., T, D], x: [..., T, D] (combine="mul") -> grad_table: [table_rows, D]
template <typename Backend>
at::Tensor add_positional_table_backward_impl(const at::Tensor& grad,
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
  detail::prepare_call(call, grad, expanded, std::nullopt, Backend::host_seed(seed), options,
                       options.combine);
  call.params.x = detail::strided_rows(grad);
  call.params.source.kind = kernels::PositionKind::kLearned;
  call.params.source.table_rows = table_rows;
  kernels::StridedRows input;
  if (options.combine == kernels::Combine::kMul) input = detail::strided_rows(*x);
  Backend::scatter(call.params, input, ScatterTarget::kTable, seed, grad_table,
                   ScatterIndices{std::nullopt, expanded, offset});
  return grad_table.to(grad.scalar_type());
}

constexpr const char* kEmbedding = "posenc.embedding";

// ids: [..., T], weight: [V, D] -> [..., T, D]
template <typename Backend>
at::Tensor embedding_impl(const at::Tensor& ids, const at::Tensor& weight,
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
  detail::prepare_call(call, out, expanded, table, Backend::host_seed(seed), options.positional,
                       options.positional.combine);
  detail::set_gather(call.params, ids, weight, options);
  Backend::run_rows(call.params, seed, out);
  return out;
}

inline void check_embedding_grad(const char* op, const at::Tensor& grad, const at::Tensor& ids,
                          const at::Tensor& weight) {
  TORCH_CHECK_VALUE(grad.dim() == ids.dim() + 1 &&
                        grad.sizes().slice(0, ids.dim()) == ids.sizes() &&
                        grad.size(-1) == weight.size(1),
                    op, ": grad must have shape ids.shape + (D,), got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == weight.scalar_type(), op,
                   ": grad must have weight's dtype, got ", grad.scalar_type());
}

// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_weight: [V, D]
template <typename Backend>
at::Tensor embedding_backward_impl(const at::Tensor& grad, const at::Tensor& ids,
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
  detail::prepare_call(call, grad, expanded, table, Backend::host_seed(seed), options.positional,
                       options.positional.combine);
  call.params.x = detail::strided_rows(grad);
  detail::set_gather(call.params, ids, weight, options);
  Backend::scatter(call.params, kernels::StridedRows{}, ScatterTarget::kWeight, seed, grad_weight,
                   ScatterIndices{ids, expanded, options.positional.offset});
  return grad_weight.to(grad.scalar_type());
}

// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_table: [table_rows, D]
template <typename Backend>
at::Tensor embedding_table_backward_impl(const at::Tensor& grad, const at::Tensor& ids,
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
  detail::prepare_call(call, grad, expanded, std::nullopt, Backend::host_seed(seed),
                       options.positional, options.positional.combine);
  call.params.x = detail::strided_rows(grad);
  detail::set_gather(call.params, ids, weight, options);
  call.params.source.kind = kernels::PositionKind::kLearned;
  call.params.source.table_rows = table_rows;
  Backend::scatter(call.params, kernels::StridedRows{}, ScatterTarget::kTable, seed, grad_table,
                   ScatterIndices{ids, expanded, options.positional.offset});
  return grad_table.to(grad.scalar_type());
}

// positions: any shape of integers -> [*positions.shape, dim]
template <typename Backend>
at::Tensor positional_encoding_impl(const at::Tensor& positions, int64_t dim,
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
  TORCH_CHECK_TYPE(detail::is_supported_float(out_type), op, ": dtype must be float32, float64, bfloat16 or float16, got ", out_type);
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
                   op, ": positions must be an int64 or int32 tensor, got ",
                   positions.scalar_type());
  std::vector<int64_t> out_sizes(positions.sizes().begin(), positions.sizes().end());
  out_sizes.push_back(dim);
  const at::Tensor flat_positions = positions.reshape({-1});
  detail::check_position_values(op, flat_positions, 0, flat_positions.numel(), std::nullopt);
  at::Tensor out = at::empty({flat_positions.numel(), dim}, positions.options().dtype(out_type));
  run_add_positional<Backend>(at::Tensor(), out, flat_positions, std::nullopt, std::nullopt,
                              options, kernels::Combine::kPositionOnly);
  return out.view(out_sizes);
}

// ---- rotary ----------------------------------------------------------------------------------

constexpr const char* kRotary = "posenc.rotary";

inline void check_rotary_values(const std::optional<at::Tensor>& positions,
                         const std::optional<at::Tensor>& offsets,
                         const std::optional<at::Tensor>& cu_seqlens, int64_t tokens) {
  if (positions.has_value() && positions->numel() > 0) {
    const int64_t lowest = positions->min().item<int64_t>();
    TORCH_CHECK_INDEX(lowest >= 0, kRotary, ": positions must be >= 0, got ", lowest);
  }
  if (offsets.has_value() && offsets->numel() > 0) {
    const int64_t lowest = offsets->min().item<int64_t>();
    TORCH_CHECK_INDEX(lowest >= 0, kRotary, ": offsets must be >= 0, got ", lowest);
  }
  if (cu_seqlens.has_value()) {
    const at::Tensor cu = cu_seqlens->to(at::kCPU, at::kLong).contiguous();
    const int64_t* values = cu.data_ptr<int64_t>();
    const int64_t n = cu.numel();
    TORCH_CHECK_VALUE(values[0] == 0, kRotary, ": cu_seqlens must start at 0, got ", values[0]);
    for (int64_t i = 1; i < n; ++i) {
      TORCH_CHECK_VALUE(values[i] >= values[i - 1], kRotary,
                        ": cu_seqlens must be non-decreasing, got ", values[i - 1], " then ",
                        values[i], " at index ", i);
    }
    TORCH_CHECK_VALUE(values[n - 1] == tokens, kRotary,
                      ": cu_seqlens must end at the token count ", tokens, ", got ",
                      values[n - 1]);
  }
}

inline kernels::RotaryOperand rotary_operand(const at::Tensor& in4, const at::Tensor& out4) {
  kernels::RotaryOperand op;
  op.in = in4.data_ptr();
  op.out = out4.data_ptr();
  op.heads = in4.size(2);
  for (int i = 0; i < 4; ++i) {
    op.in_strides[i] = in4.stride(i);
    op.out_strides[i] = out4.stride(i);
  }
  return op;
}

// q, k: [B, S, H, D] in `layout` (or [tokens, H, D]) -> [q_out] or [q_out, k_out]
template <typename Backend>
std::vector<at::Tensor> rotary_impl(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                   const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& offsets,
                                   const std::optional<at::Tensor>& inv_freq,
                                   const std::optional<at::Tensor>& cu_seqlens, double base,
                                   int64_t offset, std::optional<int64_t> rotary_dim,
                                   bool interleaved, std::string_view layout,
                                   double attention_factor, bool inverse) {
  const auto options = detail::check_rotary(kRotary, q, k, positions, offsets, inv_freq,
                                            cu_seqlens, base, offset, rotary_dim, layout,
                                            attention_factor);
  const at::Tensor q4 = detail::rotary_bshd(q, layout);
  check_rotary_values(positions, offsets, cu_seqlens, q4.size(1));
  std::vector<at::Tensor> outputs{at::empty_like(q)};
  if (k.has_value()) outputs.push_back(at::empty_like(*k));

  kernels::RotaryParams params;
  params.dtype = detail::kernel_dtype(q.scalar_type());
  params.batch = q4.size(0);
  params.seq_len = q4.size(1);
  params.head_dim = q4.size(3);
  params.rotary_dim = options.rotary_dim;
  params.interleaved = interleaved;
  params.inverse = inverse;
  params.attention_factor = attention_factor;
  params.offset = offset;
  if (positions.has_value()) {
    params.positions = positions->data_ptr();
    params.positions_type = detail::kernel_index_type(positions->scalar_type());
    const bool per_row = positions->dim() == 2;
    params.positions_strides[0] = per_row ? positions->stride(0) : 0;
    params.positions_strides[1] = positions->stride(per_row ? 1 : 0);
  }
  // The kernel indexes offsets and cu_seqlens with unit stride.
  at::Tensor offsets_dense, cu_dense;
  if (offsets.has_value()) {
    offsets_dense = offsets->contiguous();
    params.offsets = offsets_dense.data_ptr();
    params.offsets_type = detail::kernel_index_type(offsets->scalar_type());
  }
  if (cu_seqlens.has_value()) {
    cu_dense = cu_seqlens->contiguous();
    params.cu_seqlens = cu_dense.data_ptr();
    params.cu_seqlens_type = detail::kernel_index_type(cu_seqlens->scalar_type());
    params.sequences = cu_seqlens->numel() - 1;
  }
  params.operands[0] = rotary_operand(q4, detail::rotary_bshd(outputs[0], layout));
  params.operand_count = 1;
  if (k.has_value()) {
    params.operands[1] = rotary_operand(detail::rotary_bshd(*k, layout),
                                        detail::rotary_bshd(outputs[1], layout));
    params.operand_count = 2;
  }
  Backend::rotary(params, inv_freq, base, q);
  return outputs;
}

// apply_rotary_pos_emb: q, k: [..., D]; cos, sin: broadcastable to q after unsqueeze.
template <typename Backend>
std::vector<at::Tensor> rotary_tables_impl(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                          const at::Tensor& cos, const at::Tensor& sin,
                                          int64_t unsqueeze_dim, bool transpose) {
  detail::check_rotary_tables("posenc.apply_rotary_pos_emb", q, k, cos, sin, unsqueeze_dim);
  std::vector<at::Tensor> inputs{q};
  if (k.has_value()) inputs.push_back(*k);
  kernels::RotaryTableParams params;
  params.dtype = detail::kernel_dtype(q.scalar_type());
  params.transpose = transpose;
  // cos/sin are [B, S, D]-sized: converting their dtype once is cheap next to q and k.
  const at::Tensor cos_t = cos.to(q.scalar_type());
  const at::Tensor sin_t = sin.to(q.scalar_type());
  params.cos = cos_t.data_ptr();
  params.sin = sin_t.data_ptr();
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& x = inputs[i];
    at::Tensor out = at::empty_like(x);
    const at::Tensor cos_b = cos_t.unsqueeze(unsqueeze_dim).expand(x.sizes());
    const at::Tensor sin_b = sin_t.unsqueeze(unsqueeze_dim).expand(x.sizes());
    kernels::RotaryTableOperand& operand = params.operands[i];
    operand.in = x.data_ptr();
    operand.out = out.data_ptr();
    operand.ndim = static_cast<int>(x.dim());
    for (int64_t d = 0; d < x.dim(); ++d) {
      operand.sizes[d] = x.size(d);
      operand.in_strides[d] = x.stride(d);
      operand.out_strides[d] = out.stride(d);
      operand.cos_strides[d] = cos_b.stride(d);
      operand.sin_strides[d] = sin_b.stride(d);
    }
    outputs.push_back(out);
  }
  params.operand_count = static_cast<int>(inputs.size());
  Backend::rotary_tables(params, q);
  return outputs;
}

}  // namespace impl
}  // namespace posenc
