// Indexing of [batch..., T, D] operands, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

#include "common.h"
#include "positional.h"

namespace posenc {
namespace kernels {

// Offset (in elements) of flattened batch index `batch` under per-dimension strides.
POSENC_HOST_DEVICE int64_t batch_offset(const RowShape& shape, const int64_t* strides,
                                        int64_t batch) {
  if (shape.batch_ndim == 1) return batch * strides[0];  // the common case: no division
  int64_t offset = 0;
  for (int i = shape.batch_ndim - 1; i >= 0; --i) {
    const int64_t size = shape.batch_sizes[i];
    offset += (batch % size) * strides[i];
    batch /= size;
  }
  return offset;
}

POSENC_HOST_DEVICE int64_t index_at(const RowShape& shape, const StridedIndex& index, int64_t batch,
                                    int64_t t) {
  return load_index(index.data, index.type,
                    batch_offset(shape, index.batch_strides, batch) + t * index.seq_stride);
}

POSENC_HOST_DEVICE int64_t position_at(const RowShape& shape, const StridedIndex& positions,
                                       int64_t offset, int64_t batch, int64_t t) {
  if (positions.data == nullptr) return offset + t;
  return index_at(shape, positions, batch, t);
}

// Whether `position` has a code: any integer for a computed code (a negative one is a relative
// position, PE(-p) with sin(-x) = -sin(x), as Transformer-XL's and Conformer's rows need), a row
// of the table for kind "learned", a token of the patch grid.
POSENC_HOST_DEVICE bool position_has_code(const AddPositionalParams& params, int64_t position) {
  if (params.source.kind == PositionKind::kLearned) {
    return position >= 0 && position < params.source.table_rows;
  }
  if (params.source.grid.axis_count > 0) {
    return position >= 0 && position < grid_token_count(params.source.grid);
  }
  return true;
}

// Whether the positions are the same for every batch index (stride 0 or size 1).
POSENC_HOST_DEVICE bool shared_across_batch(const RowShape& shape, const StridedIndex& positions) {
  if (positions.data == nullptr) return true;
  for (int i = 0; i < shape.batch_ndim; ++i) {
    if (positions.batch_strides[i] != 0 && shape.batch_sizes[i] != 1) return false;
  }
  return true;
}

// The contiguous [batch..., T] description of a dense buffer of positions (fairseq positions).
POSENC_HOST_DEVICE StridedIndex dense_index(const RowShape& shape, const int64_t* data) {
  StridedIndex index;
  index.data = data;
  index.type = IndexType::kInt64;
  index.seq_stride = 1;
  int64_t stride = shape.seq_len;
  for (int i = shape.batch_ndim - 1; i >= 0; --i) {
    index.batch_strides[i] = stride;
    stride *= shape.batch_sizes[i];
  }
  return index;
}

// fairseq's make_positions for batch row b: out[t] = padding_idx (pads) or padding_idx plus the
// running count of non-pad tokens up to t.
POSENC_HOST_DEVICE void fairseq_positions_row(const RowShape& shape, const EmbeddingGather& gather,
                                              int64_t b, int64_t* out) {
  int64_t count = 0;
  for (int64_t t = 0; t < shape.seq_len; ++t) {
    const bool pad = index_at(shape, gather.ids, b, t) == gather.padding_idx;
    count += pad ? 0 : 1;
    out[t] = pad ? gather.padding_idx : gather.padding_idx + count;
  }
}

template <typename scalar_t>
struct InputRow {
  const scalar_t* data;  // nullptr for kPositionOnly
  int64_t stride;
  bool padding;  // a padding token: no position code
};

// The input row of (b, t): a row of `x`, or weight[ids[b, t]] for the embedding gather.
template <typename scalar_t>
POSENC_HOST_DEVICE InputRow<scalar_t> input_row(const AddPositionalParams& params,
                                                const StridedRows& x, int64_t b, int64_t t) {
  const EmbeddingGather& gather = params.gather;
  if (gather.weight != nullptr) {
    const int64_t id = index_at(params.shape, gather.ids, b, t);
    return {static_cast<const scalar_t*>(gather.weight) + id * gather.row_stride, gather.dim_stride,
            id == gather.padding_idx};
  }
  const scalar_t* data = static_cast<const scalar_t*>(x.data);
  if (data != nullptr) data += batch_offset(params.shape, x.batch_strides, b) + t * x.seq_stride;
  return {data, x.dim_stride, false};
}

}  // namespace kernels
}  // namespace posenc
