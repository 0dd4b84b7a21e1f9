// add_positional: y = dropout_p(combine(scale * x, PE(pos))) over a [..., T, D] tensor, and the
// pieces of its backward. Tensors arrive as raw pointers with element strides; the caller has
// validated shapes, dtypes and position ranges.
#pragma once

#include <cstdint>

#include "common.h"
#include "philox.h"
#include "position_code.h"

namespace posenc {
namespace kernels {

constexpr int kMaxBatchDims = 8;

enum class Combine : int {
  kAdd,           // scale * x + PE
  kMul,           // (scale * x) * PE
  kScaleOnly,     // scale * x (the add-mode backward with respect to x)
  kPositionOnly,  // PE (positional_encoding)
};

// Logical shape [batch..., T, D], shared by every operand of one call.
struct RowShape {
  int batch_ndim = 0;
  int64_t batch_sizes[kMaxBatchDims] = {};
  int64_t seq_len = 0;
  int64_t dim = 0;

  POSENC_HOST_DEVICE int64_t batch_count() const {
    int64_t count = 1;
    for (int i = 0; i < batch_ndim; ++i) count *= batch_sizes[i];
    return count;
  }
};

// A [batch..., T, D] operand: element (b..., t, d) lives at data + sum(b_i * batch_strides[i]) +
// t * seq_stride + d * dim_stride (in elements). Broadcast dimensions have stride 0.
struct StridedRows {
  const void* data = nullptr;
  int64_t batch_strides[kMaxBatchDims] = {};
  int64_t seq_stride = 0;
  int64_t dim_stride = 1;
};

// A [batch..., T] integer operand (positions, ids), stride 0 where broadcast.
struct StridedIndex {
  const void* data = nullptr;  // nullptr: position = offset + t
  IndexType type = IndexType::kInt64;
  int64_t batch_strides[kMaxBatchDims] = {};
  int64_t seq_stride = 0;
};

// Where PE(pos) comes from: per-channel codes for computed kinds, a [rows, D] table for learned.
struct PositionSource {
  PositionKind kind = PositionKind::kSinusoidal;
  PositionCodeOptions code;               // computed kinds (the CUDA kernels evaluate from it)
  const ChannelCode* channels = nullptr;  // [D], computed kinds
  // The same codes as arrays (CPU kernels); nullptr: the CPU kernels make them per call.
  const ChannelArrays* arrays = nullptr;
  GridCode grid;                // computed kinds: positions index a token grid
  const void* table = nullptr;  // [table_rows, D], learned
  int64_t table_rows = 0;
  int64_t table_row_stride = 0;
  int64_t table_dim_stride = 1;
};

// Token gather for the embedding operator: the input row of (b..., t) is weight[ids[b..., t]]
// instead of a row of x. Tokens equal to padding_idx get no position code (their row is
// combined as kScaleOnly).
struct EmbeddingGather {
  const void* weight = nullptr;  // [vocab, D]; nullptr: rows come from x
  int64_t vocab = 0;
  int64_t row_stride = 0;
  int64_t dim_stride = 1;
  StridedIndex ids;          // [batch..., T], validated in [0, vocab)
  int64_t padding_idx = -1;  // -1: none
  // fairseq's make_positions, computed here: a non-pad token's position is padding_idx plus
  // its running count of non-pad tokens along T. Replaces `positions`.
  bool fairseq_positions = false;
};

struct AddPositionalParams {
  DType dtype = DType::kFloat32;  // of x (or weight), out and table
  RowShape shape;
  StridedRows x;  // [batch..., T, D]; unused for kPositionOnly or a gather
  EmbeddingGather gather;
  StridedRows out;         // [batch..., T, D]; data is written
  StridedIndex positions;  // [batch..., T]
  int64_t offset = 0;
  PositionSource source;
  Combine combine = Combine::kAdd;
  double scale = 1.0;
  Dropout dropout;  // mask indexed by the row-major logical element index
};

// out = dropout(combine(scale * in, PE(pos))) with `in` the rows of x or of the gather. Also
// the input-gradient of the backward: x := grad, kAdd -> kScaleOnly, kMul unchanged, with the
// same seed.
void add_positional_cpu(const AddPositionalParams& params, const ParallelFor& parallel_for);

// Gradient of a learned table: grad_table[pos(b, t), d] = sum of mask * grad[b, t, d], times
// scale * in[b, t, d] in kMul mode (padding tokens contribute nothing). params.x holds grad;
// `input` holds x, or params.gather gives the rows. `grad_table` is a dense [table_rows, D]
// buffer of params.dtype, every element written (rows no token reaches are zero); half types
// are summed in float and rounded once. Race-free and bit-identical for any thread count.
void add_positional_table_backward_cpu(const AddPositionalParams& params, const StridedRows& input,
                                       void* grad_table, int64_t table_rows,
                                       const ParallelFor& parallel_for);

// Gradient of the embedding weight: grad_weight[ids(b, t), d] = sum of mask * scale *
// grad[b, t, d], times PE(pos)[d] in kMul mode; the padding row gets nothing. params.x holds
// grad. `grad_weight` is a dense [vocab, D] buffer of params.dtype, written as grad_table above.
void embedding_weight_backward_cpu(const AddPositionalParams& params, void* grad_weight,
                                   int64_t vocab, const ParallelFor& parallel_for);

}  // namespace kernels
}  // namespace posenc
