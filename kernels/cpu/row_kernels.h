// CPU building blocks shared by the row-wise operators (add_positional, embedding): strided
// offsets, the cached PE row of the current position, the dropout multipliers of a row, and the
// combine loop. Internal to kernels/cpu.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
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

// (s[d], c[d]) <- rotation of (s[d], c[d]) by the angle with sine step_sin[d] and cosine
// step_cos[d], for d < n (vectorized, built for AVX2 too).
void rotate_channels(const double* step_sin, const double* step_cos, double* s, double* c,
                     int64_t n);

// Evaluates PE(pos) rows. Computed kinds keep their channel codes as separate arrays so the
// loop over channels vectorizes; learned reads the table row. Built once per call; evaluate()
// is const and safe to call from several threads.
template <typename scalar_t>
class PositionCodeRows {
 public:
  using acc = acc_t<scalar_t>;

  // evaluated: whether rows will be evaluated (a kScaleOnly call needs none, so a grid's axis
  // rows are not built for it).
  PositionCodeRows(const PositionSource& source, int64_t dim, bool evaluated = true)
      : source_(source), dim_(dim) {
    if (source.kind == PositionKind::kLearned || source.channels == nullptr) return;
    const size_t n = static_cast<size_t>(dim);
    high_.resize(n);
    middle_.resize(n);
    low_.resize(n);
    phase_.resize(n);
    amplitude_.resize(n);
    amplitude64_.resize(n);
    step_sin_.resize(n);
    step_cos_.resize(n);
    for (size_t d = 0; d < n; ++d) {
      const ChannelCode& code = source.channels[d];
      high_[d] = code.frequency.high;
      middle_[d] = code.frequency.middle;
      low_[d] = code.frequency.low;
      phase_[d] = code.phase;
      amplitude_[d] = static_cast<acc>(code.amplitude);
      amplitude64_[d] = code.amplitude;
      // The rotation by one position's angle, reduced exactly like any other angle.
      const SinCos<double> step = sincos_turns<double>(reduced_turns(int64_t{1}, code.frequency, 0.0));
      step_sin_[d] = step.sin;
      step_cos_[d] = step.cos;
    }
    detect_pairs();
    if (evaluated && source.grid.axis_count > 0) build_grid_tables();
  }

  bool computed() const { return source_.kind != PositionKind::kLearned && !high_.empty(); }

  // The recurrence's state between calls: sin and cos of every channel at `next_position`.
  struct Recurrence {
    std::vector<double> sin_cos;   // [2 * dim]
    int64_t next_position = -1;    // the position after the state's (-1: none)
  };

  // out[r * dim + d] = PE(first + r)[d] for r < rows: consecutive positions. Anchors are
  // evaluated exactly (sin and cos of the reduced angle, in double) at multiples of kAnchorRows;
  // the positions between follow by the angle-addition recurrence in double, a rotation by the
  // exact one-position angle per step: a few multiply-adds a channel instead of a reduction and a
  // polynomial. `state` carries over to a following call that continues the positions. Each
  // step adds at most ~1e-16 to values of magnitude <= 1, so the rows stay within ~1e-13 of the
  // exact evaluation whatever the position, far below the exact-angle contract's 2e-6.
  void evaluate_consecutive(int64_t first, int64_t rows, acc* __restrict out,
                            Recurrence& state) const {
    if (!computed() || source_.grid.axis_count > 0) {  // a grid: consecutive tokens are not
      for (int64_t r = 0; r < rows; ++r) evaluate(first + r, out + r * dim_);
      return;
    }
    // The rotating channels: every channel, or one per (sin, cos) pair (see Pairing).
    const bool paired = pairing_ != Pairing::kNone;
    const int64_t n = paired ? dim_ / 2 : dim_;
    const double* __restrict high = paired ? pair_high_.data() : high_.data();
    const double* __restrict middle = paired ? pair_middle_.data() : middle_.data();
    const double* __restrict low = paired ? pair_low_.data() : low_.data();
    const double* __restrict phase = paired ? pair_phase_.data() : phase_.data();
    const double* step_sin = paired ? pair_step_sin_.data() : step_sin_.data();
    const double* step_cos = paired ? pair_step_cos_.data() : step_cos_.data();
    state.sin_cos.resize(static_cast<size_t>(2 * n));
    double* __restrict s = state.sin_cos.data();
    double* __restrict c = s + n;
    bool continuing = state.next_position == first;  // s, c hold PE(first - 1)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t position = first + r;
      if (!continuing || position % kAnchorRows == 0) {
        // Anchors sit at multiples of kAnchorRows, and a start between two anchors rotates
        // forward from the one before it: every value is the same function of its position,
        // whichever rows a thread starts at, so any thread count gives the same bits.
        const int64_t anchor = position - position % kAnchorRows;
        const double p = static_cast<double>(anchor);
        for (int64_t d = 0; d < n; ++d) {
          const SinCos<double> sc =
              sincos_turns<double>(reduced_turns(p, high[d], middle[d], low[d], phase[d]));
          s[d] = sc.sin;
          c[d] = sc.cos;
        }
        for (int64_t q = anchor; q < position; ++q) rotate_channels(step_sin, step_cos, s, c, n);
        continuing = true;
      } else {
        rotate_channels(step_sin, step_cos, s, c, n);
      }
      write_row(s, c, out + r * dim_);
    }
    state.next_position = first + rows;
  }

  static constexpr int64_t kAnchorRows = 256;

 private:
  // Channels that come in (sin, cos) pairs of one frequency, as every computed kind but cosine
  // has them: the sin and cos of a pair are the s and c of one rotation, so the recurrence
  // runs over half the channels. kAdjacent: channels (2i, 2i + 1) (interleaved sinusoidal,
  // linear, damped; an odd last channel of amplitude 0); kHalves: channels (i, D/2 + i)
  // (concat sinusoidal).
  enum class Pairing { kNone, kAdjacent, kHalves };

  bool same_frequency(int64_t a, int64_t b) const {
    return high_[a] == high_[b] && middle_[a] == middle_[b] && low_[a] == low_[b];
  }

  void detect_pairs() {
    const int64_t pairs = dim_ / 2;
    if (pairs == 0) return;
    auto pairs_match = [&](auto partner, int64_t& sin_first) -> bool {
      sin_first = -1;
      for (int64_t i = 0; i < pairs; ++i) {
        const auto [a, b] = partner(i);
        if (!same_frequency(a, b)) return false;
        const bool a_sin = phase_[a] == 0.0 && phase_[b] == 0.25;
        const bool b_sin = phase_[b] == 0.0 && phase_[a] == 0.25;
        if (!a_sin && !b_sin) return false;
        if (sin_first == -1) sin_first = a_sin ? 1 : 0;
        if ((sin_first == 1) != a_sin) return false;
      }
      return true;
    };
    int64_t sin_first = -1;
    const bool odd_tail_zero = dim_ % 2 == 0 || amplitude64_[dim_ - 1] == 0.0;
    if (odd_tail_zero &&
        pairs_match([](int64_t i) { return std::pair<int64_t, int64_t>{2 * i, 2 * i + 1}; },
                    sin_first)) {
      pairing_ = Pairing::kAdjacent;
    } else if (dim_ % 2 == 0 &&
               pairs_match([&](int64_t i) { return std::pair<int64_t, int64_t>{i, pairs + i}; },
                           sin_first) &&
               sin_first == 1) {
      pairing_ = Pairing::kHalves;
    } else {
      return;
    }
    sin_first_ = sin_first == 1;
    pair_high_.resize(static_cast<size_t>(pairs));
    pair_middle_.resize(pair_high_.size());
    pair_low_.resize(pair_high_.size());
    pair_phase_.assign(pair_high_.size(), 0.0);
    pair_step_sin_.resize(pair_high_.size());
    pair_step_cos_.resize(pair_high_.size());
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t a = pairing_ == Pairing::kAdjacent ? 2 * i : i;
      pair_high_[i] = high_[a];
      pair_middle_[i] = middle_[a];
      pair_low_[i] = low_[a];
      pair_step_sin_[i] = step_sin_[a];
      pair_step_cos_[i] = step_cos_[a];
    }
  }

  // A row of the code from the recurrence's state: amplitude * s per channel, or per pair
  // the sin channel from s and the cos channel from c (sin(x + 1/4 turn) = cos x).
  void write_row(const double* __restrict s, const double* __restrict c,
                 acc* __restrict row) const {
    const double* __restrict amplitude = amplitude64_.data();
    const int64_t pairs = dim_ / 2;
    switch (pairing_) {
      case Pairing::kNone:
        for (int64_t d = 0; d < dim_; ++d) row[d] = static_cast<acc>(amplitude[d] * s[d]);
        return;
      case Pairing::kHalves:
        for (int64_t i = 0; i < pairs; ++i) row[i] = static_cast<acc>(amplitude[i] * s[i]);
        for (int64_t i = 0; i < pairs; ++i) {
          row[pairs + i] = static_cast<acc>(amplitude[pairs + i] * c[i]);
        }
        return;
      case Pairing::kAdjacent: {
        const double* __restrict even = sin_first_ ? s : c;
        const double* __restrict odd = sin_first_ ? c : s;
        for (int64_t i = 0; i < pairs; ++i) {
          row[2 * i] = static_cast<acc>(amplitude[2 * i] * even[i]);
          row[2 * i + 1] = static_cast<acc>(amplitude[2 * i + 1] * odd[i]);
        }
        if (dim_ % 2 != 0) row[dim_ - 1] = acc(0);  // the unused channel of an odd width
        return;
      }
    }
  }

  Pairing pairing_ = Pairing::kNone;
  bool sin_first_ = true;
  // The sin channel of each pair (phase 0), for the recurrence.
  std::vector<double> pair_high_, pair_middle_, pair_low_, pair_phase_, pair_step_sin_,
      pair_step_cos_;

 public:

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
    const GridCode& grid = source_.grid;
    if (grid.axis_count == 0) {
      evaluate_channels(position, first, end, out);
      return;
    }
    // On a grid, each segment of channels is evaluated at its axis' coordinate, or read from
    // that axis' rows when they were built.
    const GridPoint point = grid_point(grid, position);
    for (int s = 0; s < grid.axis_count; ++s) {
      const int64_t begin = std::max(first, s == 0 ? int64_t{0} : grid.segment_ends[s - 1]);
      const int64_t stop = std::min(end, grid.segment_ends[s]);
      if (begin >= stop) continue;
      acc* segment_out = out + (begin - first);
      if (!point.coded) {
        std::fill(segment_out, segment_out + (stop - begin), acc(0));
      } else if (!grid_rows_.empty()) {
        const int axis = grid.segment_axes[s];
        const int64_t segment_begin = s == 0 ? 0 : grid.segment_ends[s - 1];
        const int64_t width = grid.segment_ends[s] - segment_begin;
        const acc* row = grid_rows_[s].data() +
                         (point.along(axis) - grid.origins[axis]) * width + (begin - segment_begin);
        std::copy(row, row + (stop - begin), segment_out);
      } else {
        evaluate_channels(point.along(grid.segment_axes[s]), begin, stop, segment_out);
      }
    }
  }

 private:
  // out[d - first] = the code of channel d at `position`, for first <= d < end.
  void evaluate_channels(int64_t position, int64_t first, int64_t end, acc* __restrict out) const {
    const double p = static_cast<double>(position);
    const double* __restrict high = high_.data() + first;
    const double* __restrict middle = middle_.data() + first;
    const double* __restrict low = low_.data() + first;
    const double* __restrict phase = phase_.data() + first;
    const acc* __restrict amplitude = amplitude_.data() + first;
    for (int64_t d = 0; d < end - first; ++d) {
      out[d] = amplitude[d] * sin_turns<acc>(reduced_turns(p, high[d], middle[d], low[d], phase[d]));
    }
  }

  // Factorised grid codes: segment s's channels at every coordinate of its axis, [size, width],
  // exact like any evaluation. A grid row is then copied from one row per axis, so a [H, W]
  // grid costs (H + W) * D / 2 evaluations instead of H * W * D.
  void build_grid_tables() {
    const GridCode& grid = source_.grid;
    int64_t values = 0;
    for (int s = 0; s < grid.axis_count; ++s) {
      const int64_t width = grid.segment_ends[s] - (s == 0 ? 0 : grid.segment_ends[s - 1]);
      const int64_t size = grid.sizes[grid.segment_axes[s]];
      if (width > 0 && size > (kMaxGridRowValues - values) / width) return;  // too many
      values += size * width;
    }
    grid_rows_.resize(static_cast<size_t>(grid.axis_count));
    for (int s = 0; s < grid.axis_count; ++s) {
      const int axis = grid.segment_axes[s];
      const int64_t begin = s == 0 ? 0 : grid.segment_ends[s - 1];
      const int64_t width = grid.segment_ends[s] - begin;
      grid_rows_[s].resize(static_cast<size_t>(grid.sizes[axis] * width));
      for (int64_t i = 0; i < grid.sizes[axis]; ++i) {
        evaluate_channels(i + grid.origins[axis], begin, begin + width,
                          grid_rows_[s].data() + i * width);
      }
    }
  }

  const PositionSource& source_;
  int64_t dim_;
  std::vector<std::vector<acc>> grid_rows_;  // [segment][size of its axis, width]
  std::vector<double> high_, middle_, low_, phase_, amplitude64_, step_sin_, step_cos_;
  std::vector<acc> amplitude_;
};

// The 16-bit draws of counters first_counter .. first_counter + counters - 1 (8 a counter, in
// the order of dropout_draw), the same bits as philox4x32_10 per counter. Lanes of counters run
// side by side so the rounds vectorize (built for AVX2 too, chosen at run time).
void philox_draws(uint64_t first_counter, int64_t counters, uint64_t seed, uint16_t* out);

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
  philox_draws(first_counter, counters, dropout.seed, out);
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
