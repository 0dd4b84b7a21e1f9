#include "common.h"

#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

namespace posenc {
namespace detail {

kernels::PositionKind parse_kind(std::string_view kind) {
  if (kind == "sinusoidal") return kernels::PositionKind::kSinusoidal;
  if (kind == "linear") return kernels::PositionKind::kLinear;
  if (kind == "damped") return kernels::PositionKind::kDamped;
  if (kind == "cosine") return kernels::PositionKind::kCosine;
  if (kind == "learned") return kernels::PositionKind::kLearned;
  TORCH_CHECK_VALUE(false, "posenc: kind must be one of 'sinusoidal', 'linear', 'damped', ",
                    "'cosine', 'learned', got '", kind, "'");
}

kernels::Combine parse_combine(std::string_view combine) {
  if (combine == "add") return kernels::Combine::kAdd;
  if (combine == "mul") return kernels::Combine::kMul;
  TORCH_CHECK_VALUE(false, "posenc: combine must be 'add' or 'mul', got '", combine, "'");
}

kernels::Convention parse_convention(std::string_view convention) {
  if (convention == "vaswani") return kernels::Convention::kVaswani;
  if (convention == "tensor2tensor") return kernels::Convention::kTensor2Tensor;
  TORCH_CHECK_VALUE(false, "posenc: convention must be 'vaswani' or 'tensor2tensor', got '",
                    convention, "'");
}

kernels::Layout parse_layout(std::string_view layout) {
  if (layout == "interleaved") return kernels::Layout::kInterleaved;
  if (layout == "concat") return kernels::Layout::kConcat;
  TORCH_CHECK_VALUE(false, "posenc: layout must be 'interleaved' or 'concat', got '", layout,
                    "'");
}

PositionalOptions parse_positional_options(std::string_view kind, std::string_view combine,
                                           double scale, int64_t offset, double base,
                                           std::string_view convention, std::string_view layout,
                                           double dropout, bool training) {
  PositionalOptions options;
  options.code.kind = parse_kind(kind);
  options.code.convention = parse_convention(convention);
  options.code.layout = parse_layout(layout);
  TORCH_CHECK_VALUE(std::isfinite(base) && base > 0.0,
                    "posenc: base must be a finite number > 0, got ", base);
  options.code.base = base;
  options.combine = parse_combine(combine);
  TORCH_CHECK_VALUE(std::isfinite(scale), "posenc: scale must be finite, got ", scale);
  options.scale = scale;
  TORCH_CHECK_VALUE(offset >= 0, "posenc: offset must be >= 0, got ", offset);
  options.offset = offset;
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout < 1.0, "posenc: dropout must be in [0, 1), got ",
                    dropout);
  options.dropout = dropout;
  options.training = training;
  return options;
}

kernels::DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return kernels::DType::kFloat32;
    case at::kDouble:
      return kernels::DType::kFloat64;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    case at::kHalf:
      return kernels::DType::kFloat16;
    default:
      TORCH_INTERNAL_ASSERT(false, "posenc: unchecked dtype ", type);
  }
}

kernels::IndexType kernel_index_type(at::ScalarType type) {
  TORCH_INTERNAL_ASSERT(type == at::kLong || type == at::kInt, "posenc: unchecked index dtype");
  return type == at::kLong ? kernels::IndexType::kInt64 : kernels::IndexType::kInt32;
}

bool is_supported_float(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kBFloat16 || type == at::kHalf;
}

namespace {

void check_same_device(const char* op, const at::Tensor& x, const at::Tensor& other,
                       const char* name) {
  TORCH_CHECK(other.device() == x.device(), op, ": ", name, " must be on the same device as x (",
              x.device(), "), got ", other.device());
}

}  // namespace

std::optional<at::Tensor> check_add_positional(const char* op, const at::Tensor& x,
                                               const std::optional<at::Tensor>& positions,
                                               const std::optional<at::Tensor>& table,
                                               const std::optional<at::Tensor>& seed,
                                               const PositionalOptions& options,
                                               const char* rows_name, const char* dim_name) {
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), op,
                   ": x must be a floating tensor (float32, float64, bfloat16 or float16), got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.dim() <= kernels::kMaxBatchDims + 2, op,
                    ": x must have shape (..., T, D) with 2 to ", kernels::kMaxBatchDims + 2,
                    " dimensions, got ", x.dim(), " dimension(s)");
  const c10::SymInt dim = x.sym_size(-1);
  if (options.code.kind == kernels::PositionKind::kLearned) {
    TORCH_CHECK_VALUE(table.has_value(), op, ": kind='learned' needs table, a (P, D) tensor");
    TORCH_CHECK_VALUE(table->dim() == 2 && table->sym_size(1) == dim, op,
                      ": table must have shape (P, D) with D = ", dim_name, " = ", dim, ", got ",
                      table->sym_sizes());
    TORCH_CHECK_TYPE(table->scalar_type() == x.scalar_type(), op,
                     ": table must have the dtype of x (", x.scalar_type(), "), got ",
                     table->scalar_type());
    check_same_device(op, x, *table, "table");
  }
  if (options.training && options.dropout > 0.0) {
    TORCH_CHECK_VALUE(seed.has_value(), op,
                      ": dropout > 0 in training needs seed, an int64 tensor with one element");
  }
  if (seed.has_value()) {
    TORCH_CHECK_TYPE(seed->scalar_type() == at::kLong && seed->sym_numel() == 1, op,
                     ": seed must be an int64 tensor with one element, got ",
                     seed->scalar_type(), " of shape ", seed->sym_sizes());
    TORCH_CHECK(seed->device() == x.device() || seed->device().is_cpu(), op,
                ": seed must be on x's device or the CPU, got ", seed->device());
  }
  if (!positions.has_value()) return std::nullopt;
  TORCH_CHECK_TYPE(positions->scalar_type() == at::kLong || positions->scalar_type() == at::kInt,
                   op, ": positions must be an int64 or int32 tensor, got ",
                   positions->scalar_type());
  check_same_device(op, x, *positions, "positions");
  const auto row_sizes = x.sym_sizes().slice(0, x.dim() - 1);
  TORCH_CHECK_VALUE(at::is_expandable_to(positions->sym_sizes(), row_sizes), op,
                    ": positions of shape ", positions->sym_sizes(),
                    " must be broadcastable to ", rows_name, " = ", row_sizes);
  return positions->expand_symint(row_sizes);
}

void check_position_values(const char* op, const std::optional<at::Tensor>& positions,
                           int64_t offset, int64_t seq_len, std::optional<int64_t> table_rows) {
  if (!positions.has_value()) {
    if (table_rows.has_value() && seq_len > 0) {
      TORCH_CHECK_INDEX(offset + seq_len <= *table_rows, op, ": positions offset + arange(T) up to ",
                        offset + seq_len - 1, " are outside the table of ", *table_rows,
                        " rows");
    }
    return;
  }
  if (positions->numel() == 0) return;
  const auto [min_value, max_value] = at::aminmax(*positions);
  const int64_t lowest = min_value.item<int64_t>();
  const int64_t highest = max_value.item<int64_t>();
  TORCH_CHECK_INDEX(lowest >= 0, op, ": positions must be >= 0, got ", lowest);
  if (table_rows.has_value()) {
    TORCH_CHECK_INDEX(highest < *table_rows, op, ": positions must be < the table's ",
                      *table_rows, " rows, got ", highest);
  }
}

uint64_t read_seed(const std::optional<at::Tensor>& seed) {
  if (!seed.has_value()) return 0;
  return static_cast<uint64_t>(seed->item<int64_t>());
}

kernels::RowShape row_shape(const at::Tensor& x) {
  kernels::RowShape shape;
  shape.batch_ndim = static_cast<int>(x.dim()) - 2;
  TORCH_INTERNAL_ASSERT(shape.batch_ndim >= 0 && shape.batch_ndim <= kernels::kMaxBatchDims);
  for (int i = 0; i < shape.batch_ndim; ++i) shape.batch_sizes[i] = x.size(i);
  shape.seq_len = x.size(-2);
  shape.dim = x.size(-1);
  return shape;
}

kernels::StridedRows strided_rows(const at::Tensor& x) {
  kernels::StridedRows rows;
  rows.data = x.data_ptr();
  for (int64_t i = 0; i + 2 < x.dim(); ++i) rows.batch_strides[i] = x.stride(i);
  rows.seq_stride = x.stride(-2);
  rows.dim_stride = x.stride(-1);
  return rows;
}

kernels::StridedIndex strided_index(const std::optional<at::Tensor>& index) {
  kernels::StridedIndex result;
  if (!index.has_value()) return result;
  result.data = index->data_ptr();
  result.type = kernel_index_type(index->scalar_type());
  for (int64_t i = 0; i + 1 < index->dim(); ++i) result.batch_strides[i] = index->stride(i);
  result.seq_stride = index->dim() > 0 ? index->stride(-1) : 0;
  return result;
}

kernels::ParallelFor torch_parallel_for() {
  return [](int64_t begin, int64_t end, int64_t grain,
            const std::function<void(int64_t, int64_t)>& body) {
    at::parallel_for(begin, end, grain, body);
  };
}

void prepare_call(KernelCall& call, const at::Tensor& out,
                  const std::optional<at::Tensor>& positions,
                  const std::optional<at::Tensor>& table, uint64_t seed,
                  const PositionalOptions& options, kernels::Combine combine) {
  kernels::AddPositionalParams& params = call.params;
  params.dtype = kernel_dtype(out.scalar_type());
  params.shape = row_shape(out);
  params.out = strided_rows(out);
  params.positions = strided_index(positions);
  params.offset = options.offset;
  params.combine = combine;
  params.scale = options.scale;
  params.dropout = kernels::make_dropout(options.dropout, options.training, seed);
  params.source.kind = options.code.kind;
  params.source.code = options.code;
  if (options.code.kind == kernels::PositionKind::kLearned) {
    if (table.has_value()) {
      params.source.table = table->data_ptr();
      params.source.table_rows = table->size(0);
      params.source.table_row_stride = table->stride(0);
      params.source.table_dim_stride = table->stride(1);
    }
  } else {
    call.channels = kernels::make_channel_codes(options.code, params.shape.dim);
    params.source.channels = call.channels.data();
  }
}

EmbeddingOptions parse_embedding_options(std::string_view kind, std::string_view combine,
                                         std::optional<double> scale, int64_t offset,
                                         std::optional<int64_t> padding_idx,
                                         bool fairseq_positions, double base,
                                         std::string_view convention, std::string_view layout,
                                         double dropout, bool training) {
  EmbeddingOptions options;
  options.positional = parse_positional_options(kind, combine, scale.value_or(1.0), offset, base,
                                                convention, layout, dropout, training);
  options.positional.scale = scale.value_or(std::numeric_limits<double>::quiet_NaN());
  options.padding_idx = padding_idx.value_or(std::numeric_limits<int64_t>::min());
  options.fairseq_positions = fairseq_positions;
  return options;
}

std::optional<at::Tensor> check_embedding(const char* op, const at::Tensor& ids,
                                          const at::Tensor& weight,
                                          const std::optional<at::Tensor>& positions,
                                          const std::optional<at::Tensor>& table,
                                          const std::optional<at::Tensor>& seed,
                                          EmbeddingOptions& options) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, op,
                   ": ids must be an int64 or int32 tensor, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() >= 1 && ids.dim() <= kernels::kMaxBatchDims + 1, op,
                    ": ids must have shape (..., T) with 1 to ", kernels::kMaxBatchDims + 1,
                    " dimensions, got ", ids.dim(), " dimension(s)");
  TORCH_CHECK_TYPE(is_supported_float(weight.scalar_type()), op,
                   ": weight must be a floating tensor (float32, float64, bfloat16 or float16), "
                   "got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must have shape (V, D), got ",
                    weight.sym_sizes());
  TORCH_CHECK(ids.device() == weight.device(), op,
              ": ids must be on the same device as weight (", weight.device(), "), got ",
              ids.device());
  const c10::SymInt vocab = weight.sym_size(0);
  // padding_idx as in nn.Embedding: in [-V, V), negative counts from the end.
  if (options.padding_idx != std::numeric_limits<int64_t>::min()) {
    const int64_t v = vocab.guard_int(__FILE__, __LINE__);
    TORCH_CHECK_VALUE(options.padding_idx >= -v && options.padding_idx < v, op,
                      ": padding_idx must be within [-V, V) = [", -v, ", ", v, "), got ",
                      options.padding_idx);
    if (options.padding_idx < 0) options.padding_idx += v;
  } else {
    options.padding_idx = -1;
  }
  if (options.fairseq_positions) {
    TORCH_CHECK_VALUE(options.padding_idx >= 0, op,
                      ": positions='fairseq' needs padding_idx (fairseq numbers positions from "
                      "padding_idx + 1)");
    TORCH_CHECK_VALUE(!positions.has_value(), op,
                      ": positions='fairseq' computes positions; do not pass a positions tensor");
  }
  if (std::isnan(options.positional.scale)) {
    options.positional.scale = std::sqrt(static_cast<double>(
        weight.sym_size(1).guard_int(__FILE__, __LINE__)));
  }
  // The position checks of add_positional, on a [..., T, D] view of the output's shape.
  const auto out_sizes = embedding_output_size(ids, weight.sym_size(1));
  const at::Tensor shape_probe = at::empty_symint(out_sizes, weight.options().device(c10::kMeta));
  if (table.has_value()) check_same_device(op, weight, *table, "table");
  if (positions.has_value()) check_same_device(op, weight, *positions, "positions");
  if (seed.has_value()) {
    TORCH_CHECK(seed->device() == weight.device() || seed->device().is_cpu(), op,
                ": seed must be on weight's device or the CPU, got ", seed->device());
  }
  auto on_meta = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value()) return std::nullopt;
    return at::empty_symint(t->sym_sizes(), t->options().device(c10::kMeta));
  };
  check_add_positional(op, shape_probe, on_meta(positions), on_meta(table), on_meta(seed),
                       options.positional, "ids.shape", "weight.size(1)");
  if (!positions.has_value()) return std::nullopt;
  return positions->expand_symint(ids.sym_sizes());
}

void check_embedding_values(const char* op, const at::Tensor& ids, int64_t vocab,
                            const std::optional<at::Tensor>& positions,
                            const EmbeddingOptions& options, std::optional<int64_t> table_rows) {
  if (ids.numel() > 0) {
    const auto [min_id, max_id] = at::aminmax(ids);
    const int64_t lowest = min_id.item<int64_t>();
    const int64_t highest = max_id.item<int64_t>();
    TORCH_CHECK_INDEX(lowest >= 0 && highest < vocab, op, ": ids must be in [0, ", vocab,
                      "), got values in [", lowest, ", ", highest, "]");
  }
  const int64_t seq_len = ids.size(-1);
  if (options.fairseq_positions) {
    // Positions reach padding_idx + T when a row has no padding.
    if (table_rows.has_value() && seq_len > 0) {
      TORCH_CHECK_INDEX(options.padding_idx + seq_len < *table_rows, op,
                        ": positions='fairseq' reach padding_idx + T = ",
                        options.padding_idx + seq_len, ", outside the table of ", *table_rows,
                        " rows");
    }
    return;
  }
  check_position_values(op, positions, options.positional.offset, seq_len, table_rows);
}

void set_gather(kernels::AddPositionalParams& params, const at::Tensor& ids,
                const at::Tensor& weight, const EmbeddingOptions& options) {
  kernels::EmbeddingGather& gather = params.gather;
  gather.weight = weight.data_ptr();
  gather.vocab = weight.size(0);
  gather.row_stride = weight.stride(0);
  gather.dim_stride = weight.stride(1);
  gather.ids = strided_index(ids);
  gather.padding_idx = options.padding_idx;
  gather.fairseq_positions = options.fairseq_positions;
}

std::vector<c10::SymInt> embedding_output_size(const at::Tensor& ids, const c10::SymInt& dim) {
  std::vector<c10::SymInt> sizes(ids.sym_sizes().begin(), ids.sym_sizes().end());
  sizes.push_back(dim);
  return sizes;
}

at::Tensor rotary_bshd(const at::Tensor& t, std::string_view layout) {
  if (layout == "bshd") return t;
  if (layout == "bhsd") return t.permute({0, 2, 1, 3});
  if (layout == "sbhd") return t.permute({1, 0, 2, 3});
  TORCH_INTERNAL_ASSERT(layout == "thd");
  return t.unsqueeze(0);
}

RotaryOptions check_rotary(const char* op, const at::Tensor& q, const std::optional<at::Tensor>& k,
                           const std::optional<at::Tensor>& positions,
                           const std::optional<at::Tensor>& offsets,
                           const std::optional<at::Tensor>& inv_freq,
                           const std::optional<at::Tensor>& cu_seqlens, double base,
                           int64_t offset, std::optional<int64_t> rotary_dim,
                           std::string_view layout, double attention_factor) {
  TORCH_CHECK_VALUE(layout == "bshd" || layout == "bhsd" || layout == "sbhd" || layout == "thd",
                    op, ": layout must be 'bshd', 'bhsd', 'sbhd' or 'thd', got '", layout, "'");
  RotaryOptions options;
  options.thd = layout == "thd";
  const int64_t ndim = options.thd ? 3 : 4;
  TORCH_CHECK_TYPE(is_supported_float(q.scalar_type()), op,
                   ": q must be a floating tensor (float32, float64, bfloat16 or float16), got ",
                   q.scalar_type());
  TORCH_CHECK_VALUE(q.dim() == ndim, op, ": q must have ", ndim, " dimensions for layout '",
                    layout, "', got shape ", q.sym_sizes());
  const at::Tensor q4 = rotary_bshd(q, layout);
  if (k.has_value()) {
    TORCH_CHECK_TYPE(k->scalar_type() == q.scalar_type(), op, ": k must have q's dtype (",
                     q.scalar_type(), "), got ", k->scalar_type());
    TORCH_CHECK_VALUE(k->dim() == ndim, op, ": k must have ", ndim, " dimensions for layout '",
                      layout, "', got shape ", k->sym_sizes());
    TORCH_CHECK(k->device() == q.device(), op, ": k must be on q's device (", q.device(),
                "), got ", k->device());
    const at::Tensor k4 = rotary_bshd(*k, layout);
    TORCH_CHECK_VALUE(k4.sym_size(0) == q4.sym_size(0) && k4.sym_size(1) == q4.sym_size(1), op,
                      ": q and k must agree on batch and sequence, got q ", q.sym_sizes(),
                      " and k ", k->sym_sizes());
    TORCH_CHECK_VALUE(k4.sym_size(3) == q4.sym_size(3), op,
                      ": q and k must have the same head_dim, got ", q4.sym_size(3), " and ",
                      k4.sym_size(3));
  }
  const int64_t head_dim = q4.sym_size(3).guard_int(__FILE__, __LINE__);
  options.rotary_dim = rotary_dim.value_or(head_dim);
  TORCH_CHECK_VALUE(options.rotary_dim % 2 == 0 && options.rotary_dim >= 0 &&
                        options.rotary_dim <= head_dim,
                    op, ": rotary_dim must be even and within [0, head_dim = ", head_dim,
                    "], got ", options.rotary_dim,
                    rotary_dim.has_value() ? "" : " (the head_dim, which must be even)");
  TORCH_CHECK_VALUE(std::isfinite(base) && base > 0.0, op, ": base must be a finite number > 0, "
                    "got ", base);
  TORCH_CHECK_VALUE(std::isfinite(attention_factor), op, ": attention_factor must be finite");
  TORCH_CHECK_VALUE(offset >= 0, op, ": offset must be >= 0, got ", offset);
  auto check_index = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                     " must be an int64 or int32 tensor, got ", t.scalar_type());
    TORCH_CHECK(t.device() == q.device(), op, ": ", name, " must be on q's device (",
                q.device(), "), got ", t.device());
  };
  if (positions.has_value()) {
    check_index(*positions, "positions");
    TORCH_CHECK_VALUE(!offsets.has_value(), op, ": give positions or offsets, not both");
    if (options.thd) {
      TORCH_CHECK_VALUE(positions->dim() == 1 && positions->sym_size(0) == q4.sym_size(1), op,
                        ": positions must have shape (tokens,) = (", q4.sym_size(1),
                        ",) for layout 'thd', got ", positions->sym_sizes());
    } else {
      const bool per_step = positions->dim() == 1 && positions->sym_size(0) == q4.sym_size(1);
      const bool per_row = positions->dim() == 2 && positions->sym_size(0) == q4.sym_size(0) &&
                           positions->sym_size(1) == q4.sym_size(1);
      TORCH_CHECK_VALUE(per_step || per_row, op, ": positions must have shape (S,) = (",
                        q4.sym_size(1), ",) or (B, S) = (", q4.sym_size(0), ", ",
                        q4.sym_size(1), "), got ", positions->sym_sizes());
    }
  }
  if (cu_seqlens.has_value()) {
    TORCH_CHECK_VALUE(options.thd, op, ": cu_seqlens is for layout 'thd' only");
    check_index(*cu_seqlens, "cu_seqlens");
    TORCH_CHECK_VALUE(cu_seqlens->dim() == 1 && cu_seqlens->sym_size(0) >= 2, op,
                      ": cu_seqlens must have shape (sequences + 1,) with at least 2 entries, "
                      "got ", cu_seqlens->sym_sizes());
  }
  if (offsets.has_value()) {
    check_index(*offsets, "offsets");
    const c10::SymInt sequences =
        cu_seqlens.has_value() ? cu_seqlens->sym_size(0) - 1 : q4.sym_size(0);
    TORCH_CHECK_VALUE(offsets->dim() == 1 && offsets->sym_size(0) == sequences, op,
                      ": offsets must have shape (", sequences, ",) (one per sequence), got ",
                      offsets->sym_sizes());
  }
  if (inv_freq.has_value()) {
    TORCH_CHECK_TYPE(is_supported_float(inv_freq->scalar_type()), op,
                     ": inv_freq must be a floating tensor, got ", inv_freq->scalar_type());
    TORCH_CHECK(inv_freq->device() == q.device(), op, ": inv_freq must be on q's device (",
                q.device(), "), got ", inv_freq->device());
    TORCH_CHECK_VALUE(inv_freq->dim() == 1 && inv_freq->sym_size(0) == options.rotary_dim / 2,
                      op, ": inv_freq must have shape (rotary_dim / 2,) = (",
                      options.rotary_dim / 2, ",), got ", inv_freq->sym_sizes());
  }
  return options;
}

void check_rotary_tables(const char* op, const at::Tensor& q, const std::optional<at::Tensor>& k,
                         const at::Tensor& cos, const at::Tensor& sin, int64_t unsqueeze_dim) {
  TORCH_CHECK_TYPE(is_supported_float(q.scalar_type()), op,
                   ": q must be a floating tensor (float32, float64, bfloat16 or float16), got ",
                   q.scalar_type());
  TORCH_CHECK_VALUE(q.dim() >= 1 && q.dim() <= kernels::kMaxTableDims + 1, op,
                    ": q must have 1 to ", kernels::kMaxTableDims + 1, " dimensions");
  TORCH_CHECK_VALUE(q.sym_size(-1) % 2 == 0, op, ": the last dimension of q must be even, got ",
                    q.sym_size(-1));
  TORCH_CHECK_TYPE(is_supported_float(cos.scalar_type()) && is_supported_float(sin.scalar_type()),
                   op, ": cos and sin must be floating tensors");
  TORCH_CHECK_VALUE(cos.sym_sizes() == sin.sym_sizes(), op,
                    ": cos and sin must have the same shape, got ", cos.sym_sizes(), " and ",
                    sin.sym_sizes());
  TORCH_CHECK_VALUE(unsqueeze_dim >= -(cos.dim() + 1) && unsqueeze_dim <= cos.dim(), op,
                    ": unsqueeze_dim must be within [", -(cos.dim() + 1), ", ", cos.dim(),
                    "], got ", unsqueeze_dim);
  std::vector<at::Tensor> operands{q};
  if (k.has_value()) {
    TORCH_CHECK_TYPE(k->scalar_type() == q.scalar_type(), op, ": k must have q's dtype (",
                     q.scalar_type(), "), got ", k->scalar_type());
    TORCH_CHECK_VALUE(k->dim() == q.dim() && k->sym_size(-1) == q.sym_size(-1), op,
                      ": k must have q's number of dimensions and last dimension");
    operands.push_back(*k);
  }
  for (const at::Tensor& x : operands) {
    TORCH_CHECK(cos.device() == x.device() && sin.device() == x.device(), op,
                ": cos and sin must be on q's device (", x.device(), ")");
    const at::Tensor unsqueezed = cos.unsqueeze(unsqueeze_dim);
    TORCH_CHECK_VALUE(at::is_expandable_to(unsqueezed.sym_sizes(), x.sym_sizes()), op,
                      ": cos.unsqueeze(", unsqueeze_dim, ") of shape ", unsqueezed.sym_sizes(),
                      " must broadcast to ", x.sym_sizes());
  }
}

}  // namespace detail
}  // namespace posenc
