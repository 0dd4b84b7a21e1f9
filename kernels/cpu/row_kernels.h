// CPU building blocks shared by the row-wise operators (add_positional, embedding): strided
// offsets, the cached PE row of the current position, the dropout multipliers of a row, and the
// combine loop. Internal to kernels/cpu.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "philox.h"
#include "positional.h"

namespace posenc {
namespace kernels {
namespace cpu {

// Offset (in elements) of flattened batch index `batch` under per-dimension strides.
inline int64_t batch_offset(const RowShape& shape, const int64_t* strides, int64_t batch) {
  int64_t offset = 0;
  for (int i = shape.batch_ndim - 1; i >= 0; --i) {
    const int64_t size = shape.batch_sizes[i];
    offset += (batch % size) * strides[i];
    batch /= size;
  }
  return offset;
}

inline int64_t index_at(const RowShape& shape, const StridedIndex& index, int64_t batch,
                        int64_t t) {
  return load_index(index.data, index.type,
                    batch_offset(shape, index.batch_strides, batch) + t * index.seq_stride);
}

inline int64_t position_at(const RowShape& shape, const StridedIndex& positions, int64_t offset,
                           int64_t batch, int64_t t) {
  if (positions.data == nullptr) return offset + t;
  return index_at(shape, positions, batch, t);
}

// PE(pos) for the most recent position, recomputed only when the position changes, so rows that
// share a position (every batch element at step t) evaluate the code once.
template <typename scalar_t>
class PositionRowCache {
 public:
  using acc = acc_t<scalar_t>;

  PositionRowCache(const PositionSource& source, int64_t dim)
      : source_(source), dim_(dim), values_(static_cast<size_t>(dim)) {}

  const acc* get(int64_t position) {
    if (position == cached_position_) return values_.data();
    cached_position_ = position;
    acc* values = values_.data();
    if (source_.kind == PositionKind::kLearned) {
      const scalar_t* row =
          static_cast<const scalar_t*>(source_.table) + position * source_.table_row_stride;
      for (int64_t d = 0; d < dim_; ++d) values[d] = load_as_acc(row + d * source_.table_dim_stride);
    } else {
      const ChannelCode* channels = source_.channels;
      for (int64_t d = 0; d < dim_; ++d) values[d] = evaluate_channel<acc>(channels[d], position);
    }
    return values;
  }

 private:
  const PositionSource& source_;
  int64_t dim_;
  std::vector<acc> values_;
  int64_t cached_position_ = -1;  // positions are validated non-negative
};

// multipliers[k] = dropout multiplier of logical element first + k, for k < count.
template <typename acc_t>
void fill_dropout_multipliers(const Dropout& dropout, uint64_t first, int64_t count,
                              std::vector<uint32_t>& draws, acc_t* multipliers) {
  const uint64_t first_group = first >> 2;
  const uint64_t end_group = (first + static_cast<uint64_t>(count) + 3) >> 2;
  const int64_t group_count = static_cast<int64_t>(end_group - first_group);
  draws.resize(static_cast<size_t>(group_count) * 4);
  uint32_t* out = draws.data();
  for (int64_t g = 0; g < group_count; ++g) {
    const Philox4 four = philox4x32_10(first_group + static_cast<uint64_t>(g), dropout.seed);
    out[4 * g + 0] = four.v[0];
    out[4 * g + 1] = four.v[1];
    out[4 * g + 2] = four.v[2];
    out[4 * g + 3] = four.v[3];
  }
  const uint32_t* row_draws = out + (first & 3);
  const acc_t keep_scale = static_cast<acc_t>(dropout.keep_scale);
  const uint64_t threshold = dropout.keep_threshold;
  for (int64_t k = 0; k < count; ++k) {
    multipliers[k] = static_cast<uint64_t>(row_draws[k]) < threshold ? keep_scale : acc_t(0);
  }
}

// out[d] = mask[d] * combine(scale * in[d], pe[d]) over one row of `dim` elements.
template <Combine kCombine, bool kMasked, typename scalar_t, typename acc_t>
void combine_row_impl(const scalar_t* in, int64_t in_stride, const acc_t* pe, const acc_t* mask,
                      acc_t scale, scalar_t* out, int64_t out_stride, int64_t dim) {
  auto value = [&](int64_t d, acc_t x) {
    acc_t y;
    if (kCombine == Combine::kAdd) {
      y = scale * x + pe[d];
    } else if (kCombine == Combine::kMul) {
      y = (scale * x) * pe[d];
    } else if (kCombine == Combine::kScaleOnly) {
      y = scale * x;
    } else {
      y = pe[d];
    }
    return kMasked ? y * mask[d] : y;
  };
  if (kCombine == Combine::kPositionOnly) {
    for (int64_t d = 0; d < dim; ++d) store_from_acc(out + d * out_stride, value(d, acc_t(0)));
  } else if (in_stride == 1 && out_stride == 1) {
    for (int64_t d = 0; d < dim; ++d) store_from_acc(out + d, value(d, load_as_acc(in + d)));
  } else {
    for (int64_t d = 0; d < dim; ++d) {
      store_from_acc(out + d * out_stride, value(d, load_as_acc(in + d * in_stride)));
    }
  }
}

template <typename scalar_t, typename acc_t>
void combine_row(Combine combine, const scalar_t* in, int64_t in_stride, const acc_t* pe,
                 const acc_t* mask, acc_t scale, scalar_t* out, int64_t out_stride, int64_t dim) {
  auto run = [&](auto combine_tag) {
    constexpr Combine kCombine = decltype(combine_tag)::value;
    if (mask != nullptr) {
      combine_row_impl<kCombine, true>(in, in_stride, pe, mask, scale, out, out_stride, dim);
    } else {
      combine_row_impl<kCombine, false>(in, in_stride, pe, mask, scale, out, out_stride, dim);
    }
  };
  switch (combine) {
    case Combine::kAdd:
      return run(std::integral_constant<Combine, Combine::kAdd>{});
    case Combine::kMul:
      return run(std::integral_constant<Combine, Combine::kMul>{});
    case Combine::kScaleOnly:
      return run(std::integral_constant<Combine, Combine::kScaleOnly>{});
    case Combine::kPositionOnly:
      return run(std::integral_constant<Combine, Combine::kPositionOnly>{});
  }
}

// Calls fn(tag) with tag's ::type the storage type of `dtype`.
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32:
      return fn(float{});
    case DType::kFloat64:
      return fn(double{});
    case DType::kBFloat16:
      return fn(BFloat16{});
    case DType::kFloat16:
      return fn(Float16{});
  }
}

// Rows per parallel chunk so that each chunk moves at least ~32k elements.
inline int64_t row_grain(int64_t dim) { return dim >= 32768 ? 1 : 32768 / (dim > 0 ? dim : 1); }

}  // namespace cpu
}  // namespace kernels
}  // namespace posenc
