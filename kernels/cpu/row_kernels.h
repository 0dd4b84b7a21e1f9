// CPU building blocks shared by the row-wise operators (add_positional, embedding): strided
// offsets, the cached PE row of the current position, the dropout multipliers of a row, and the
// combine loop. Internal to kernels/cpu.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"
#include "philox.h"
#include "positional.h"
#include "rows.h"

namespace posenc {
namespace kernels {
namespace cpu {

using kernels::batch_offset;
using kernels::index_at;
using kernels::position_at;

// Evaluates PE(pos) rows. Computed kinds keep their channel codes as separate arrays so the
// loop over channels vectorizes; learned reads the table row. Built once per call; evaluate()
// is const and safe to call from several threads.
template <typename scalar_t>
class PositionCodeRows {
 public:
  using acc = acc_t<scalar_t>;

  PositionCodeRows(const PositionSource& source, int64_t dim) : source_(source), dim_(dim) {
    if (source.kind == PositionKind::kLearned || source.channels == nullptr) return;
    const size_t n = static_cast<size_t>(dim);
    high_.resize(n);
    middle_.resize(n);
    low_.resize(n);
    phase_.resize(n);
    amplitude_.resize(n);
    for (size_t d = 0; d < n; ++d) {
      const ChannelCode& code = source.channels[d];
      high_[d] = code.frequency.high;
      middle_[d] = code.frequency.middle;
      low_[d] = code.frequency.low;
      phase_[d] = code.phase;
      amplitude_[d] = static_cast<acc>(code.amplitude);
    }
  }

  // out[d - first] = PE(position)[d] for first <= d < end (default: the whole row).
  void evaluate(int64_t position, acc* __restrict out, int64_t first = 0,
                int64_t end = -1) const {
    if (end < 0) end = dim_;
    const int64_t count = end - first;
    if (source_.kind == PositionKind::kLearned) {
      const scalar_t* row = static_cast<const scalar_t*>(source_.table) +
                            position * source_.table_row_stride + first * source_.table_dim_stride;
      for (int64_t d = 0; d < count; ++d) out[d] = load_as_acc(row + d * source_.table_dim_stride);
      return;
    }
    const double p = static_cast<double>(position);
    const double* __restrict high = high_.data() + first;
    const double* __restrict middle = middle_.data() + first;
    const double* __restrict low = low_.data() + first;
    const double* __restrict phase = phase_.data() + first;
    const acc* __restrict amplitude = amplitude_.data() + first;
    for (int64_t d = 0; d < count; ++d) {
      out[d] = amplitude[d] * sin_turns<acc>(reduced_turns(p, high[d], middle[d], low[d], phase[d]));
    }
  }

 private:
  const PositionSource& source_;
  int64_t dim_;
  std::vector<double> high_, middle_, low_, phase_;
  std::vector<acc> amplitude_;
};

// multipliers[k] = dropout multiplier of logical element first + k, for k < count.
template <typename acc_t>
void fill_dropout_multipliers(const Dropout& dropout, uint64_t first, int64_t count,
                              std::vector<uint16_t>& draws, acc_t* multipliers) {
  constexpr uint64_t kPer = kDropoutElementsPerCounter;
  const uint64_t first_counter = first / kPer;
  const uint64_t end_counter = (first + static_cast<uint64_t>(count) + kPer - 1) / kPer;
  const int64_t counters = static_cast<int64_t>(end_counter - first_counter);
  draws.resize(static_cast<size_t>(counters) * kPer);
  uint16_t* out = draws.data();
  for (int64_t c = 0; c < counters; ++c) {
    const Philox4 four = philox4x32_10(first_counter + static_cast<uint64_t>(c), dropout.seed);
    for (int slot = 0; slot < static_cast<int>(kPer); ++slot) {
      out[c * kPer + slot] = static_cast<uint16_t>(dropout_draw(four, slot));
    }
  }
  const uint16_t* row_draws = out + (first % kPer);
  const acc_t keep_scale = static_cast<acc_t>(dropout.keep_scale);
  const uint32_t threshold = dropout.keep_threshold;
  for (int64_t k = 0; k < count; ++k) {
    multipliers[k] = static_cast<uint32_t>(row_draws[k]) < threshold ? keep_scale : acc_t(0);
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

using kernels::dispatch_dtype;

// Rows per parallel chunk so that each chunk moves at least ~32k elements.
inline int64_t row_grain(int64_t dim) { return dim >= 32768 ? 1 : 32768 / (dim > 0 ? dim : 1); }

}  // namespace cpu
}  // namespace kernels
}  // namespace posenc
