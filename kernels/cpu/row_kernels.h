// CPU building blocks shared by the row-wise operators (add_positional, embedding): strided
// offsets, the cached PE row of the current position, the dropout multipliers of a row, and the
// combine loop. Internal to kernels/cpu.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>
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

// The widest instruction set that the vectorized CPU loops (vectorized.cpp) use: the CPU's,
// capped by the environment variable POSENC_CPU_CAPABILITY ("default", "avx2" or "avx512", as
// ATen's ATEN_CPU_CAPABILITY; other values cap nothing), read once per process. The tests run
// each build this way.
enum class CpuCapability { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
CpuCapability cpu_capability();

// (s[d], c[d]) <- rotation of (from_s[d], from_c[d]) by the angle with sine step_sin[d] and
// cosine step_cos[d], for d < n (vectorized, built for AVX2 and AVX-512 too, with the same
// bits); in place when from is (s, c).
void rotate_channels(const double* step_sin, const double* step_cos, const double* from_s,
                     const double* from_c, double* s, double* c, int64_t n);

// An anchor's code row from its angles: code_sin[d] = amplitude[d] * s[d] and code_cos[d] =
// amplitude[d] * c[d], rounded once to acc, for d < n (vectorized, built for AVX2 and AVX-512
// too, with the same bits).
void anchor_code(const double* amplitude, const double* s, const double* c, float* code_sin,
                 float* code_cos, int64_t n);
void anchor_code(const double* amplitude, const double* s, const double* c, double* code_sin,
                 double* code_cos, int64_t n);

// A code value from its anchor (amplitude * sin and amplitude * cos of the channel's angle
// there) and the rotation from the anchor to its row: the one formula of rotate_from_anchor and
// of the fused combine (combine_row_impl), so that both give the same bits.
template <typename acc_t>
inline __attribute__((always_inline)) acc_t rotated_code(acc_t anchor_sin, acc_t anchor_cos,
                                                         acc_t turn_cos, acc_t turn_sin) {
  return anchor_sin * turn_cos + anchor_cos * turn_sin;
}

// row[d] = anchor_sin[d] * turn_cos[d] + anchor_cos[d] * turn_sin[d] for d < n: a code row from
// its anchor row (amplitude * sin and amplitude * cos of each channel's angle there) and the
// rotation from the anchor to the row (vectorized, built for AVX2 too).
void rotate_from_anchor(const float* anchor_sin, const float* anchor_cos, const float* turn_cos,
                        const float* turn_sin, float* row, int64_t n);
void rotate_from_anchor(const double* anchor_sin, const double* anchor_cos, const double* turn_cos,
                        const double* turn_sin, double* row, int64_t n);

// Makes the not yet resident pages of [data, data + bytes) writable in one system call
// (madvise MADV_POPULATE_WRITE) when its first whole page is not resident, as in a fresh
// allocation; otherwise, or off Linux, does nothing. The row loops call it on the rows that they
// are about to write, up to 1 MiB at a time (PopulateAhead): a fresh 64 MiB output otherwise
// takes 16384 page faults, one per 4 KiB page, which cost more than the loop's own work. Contents
// are unchanged, and every error is ignored (the stores then fault the pages in as before).
void populate_fresh_pages(void* data, int64_t bytes);

// Populates one run of output rows that lie back to back, ahead of the writes and at most kBytes
// at a time: the row loop calls at_row before writing each row (or group of rows), with the
// bytes from that row to the end of the run. 1 MiB at a time is as fast as 256 KiB, with a
// quarter of the system calls. Less than kMinBytes left are not worth the system calls: a
// decoding step's 16 KiB rows got slower with them (docs/performance.md).
class PopulateAhead {
 public:
  static constexpr int64_t kBytes = 1024 * 1024;
  static constexpr int64_t kMinBytes = 64 * 1024;

  void at_row(void* row, int64_t bytes_to_run_end) {
    char* first = static_cast<char*>(row);
    if (first >= begin_ && first < end_) return;
    const int64_t bytes = std::min(kBytes, bytes_to_run_end);
    if (bytes >= kMinBytes) populate_fresh_pages(first, bytes);
    begin_ = first;
    end_ = first + bytes;
  }

 private:
  const char* begin_ = nullptr;
  const char* end_ = nullptr;
};

// out[d] = amplitude[d] * sin(2 pi * reduced_turns(position, high[d], middle[d], low[d],
// phase[d])) for d < n: channels evaluated exactly (vectorized, built for AVX2 too, with the same
// bits).
void evaluate_codes(double position, const double* high, const double* middle, const double* low,
                    const double* phase, const float* amplitude, float* out, int64_t n);
void evaluate_codes(double position, const double* high, const double* middle, const double* low,
                    const double* phase, const double* amplitude, double* out, int64_t n);

// sin_out[d], cos_out[d] = sin, cos of 2 pi * reduced_turns(position, high[d], middle[d], low[d],
// phase[d]) for d < n, in double: the exact evaluation of the walks' anchors and steps
// (vectorized, built for AVX2 and AVX-512 too, with the same bits).
void exact_sin_cos(double position, const double* high, const double* middle, const double* low,
                   const double* phase, double* sin_out, double* cos_out, int64_t n);

// Where a row's position code comes from: a row of values, or its anchor row and the rotation
// from the anchor (see PositionCodeRows::anchored_row). None of them set: no code.
template <typename acc_t>
struct RowCode {
  const acc_t* row = nullptr;         // [dim] the code
  const acc_t* anchor_sin = nullptr;  // [dim] amplitude * sin of each channel's angle at the anchor
  const acc_t* anchor_cos = nullptr;  // [dim] amplitude * cos of the same
  const acc_t* turn_cos = nullptr;    // [dim] cos of each channel's angle from anchor to row
  const acc_t* turn_sin = nullptr;    // [dim] sin of the same
  // Whether turn_cos and turn_sin hold one value per channel pair (2i, 2i + 1), whose channels
  // share their frequency: [ceil(dim / 2)], channel d's at d / 2.
  bool pairs = false;
  // Values from the turns of this row to those of the next position's, from the same anchor.
  int64_t turn_row_stride = 0;

  bool rotated() const { return row == nullptr && anchor_sin != nullptr; }

  // The same code from channel d0 on (even, where the turns are per pair).
  RowCode from_channel(int64_t d0) const {
    if (row != nullptr) return RowCode{row + d0};
    if (anchor_sin == nullptr) return RowCode{};
    const int64_t turn = pairs ? d0 / 2 : d0;
    return RowCode{nullptr,         anchor_sin + d0, anchor_cos + d0, turn_cos + turn,
                   turn_sin + turn, pairs,           turn_row_stride};
  }

  // The code of the position r further on, from the same anchor (a code row stands for one
  // position only).
  RowCode span_row(int64_t r) const {
    if (r == 0 || !rotated()) return *this;
    RowCode code = *this;
    code.turn_cos += r * turn_row_stride;
    code.turn_sin += r * turn_row_stride;
    return code;
  }
};

// The rows that one combine call writes: row r < count reads its input at in + r *
// in_row_stride, its dropout multipliers at mask + r * dim and its code at RowCode::span_row(r)
// (consecutive positions from one anchor), and writes out + r * out_row_stride. A walk's rows
// go to the combine an anchor's span at a time, so that the row loop's own work is paid once per
// span: at D = 256 it cost as much as the combine (docs/performance.md). The default: one row.
struct RowSpan {
  int64_t count = 1;
  int64_t in_row_stride = 0;
  int64_t out_row_stride = 0;
};

// Row r of a span: its input (null for kPositionOnly), code, dropout multipliers (null
// without) and output.
template <typename scalar_t, typename acc_t>
struct SpanRow {
  const scalar_t* in;
  RowCode<acc_t> pe;
  const acc_t* mask;
  scalar_t* out;
};

template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) SpanRow<scalar_t, acc_t> span_row(
    const RowSpan& span, int64_t r, int64_t dim, const scalar_t* in, const RowCode<acc_t>& pe,
    const acc_t* mask, scalar_t* out) {
  return {in == nullptr ? nullptr : in + r * span.in_row_stride, pe.span_row(r),
          mask == nullptr ? nullptr : mask + r * dim, out + r * span.out_row_stride};
}

// The tables of a walk over consecutive positions (PositionCodeRows::evaluate_consecutive), per
// channel: turn_cos[k * dim + d], turn_sin[k * dim + d] = cos, sin of channel d's angle over k
// positions, for k < turn_rows (by the one-position rotation, in double); and the exact rotation
// over turn_rows positions that moves the anchors. They depend on the code alone, so they are
// made once per code and kept with its arrays (ChannelArrays::walks): making them costs an exact
// sin and cos per channel, twice, and turn_rows rows of rotations (docs/performance.md).
template <typename acc>
struct WalkTables {
  int64_t turn_rows = 1;
  std::vector<acc> turn_cos, turn_sin;                   // [turn_rows, dim]
  std::vector<double> anchor_step_sin, anchor_step_cos;  // [dim]
  // Where every channel pair (2i, 2i + 1) shares its frequency (the interleaved codes), the same
  // turns with one column per pair, [turn_rows, ceil(dim / 2)]; otherwise empty. Half the
  // footprint: a single batch row's fused loop reads its turns from L1 instead of L2
  // (docs/performance.md).
  std::vector<acc> pair_turn_cos, pair_turn_sin;
};

// The most rows a turn table holds, and the most bytes its two tables take.
constexpr int64_t kMaxTurnRows = 64;
constexpr int64_t kMaxTurnTableBytes = 256 * 1024;
static_assert((kMaxTurnRows & (kMaxTurnRows - 1)) == 0, "turn rows are halved: a power of two");

// The walk tables of `arrays`' code: the turn tables built row by row with the vectorized
// rotate_channels, and one exact step per channel.
template <typename acc>
WalkTables<acc> make_walk_tables(const ChannelArrays& arrays) {
  WalkTables<acc> walk;
  const int64_t dim = static_cast<int64_t>(arrays.high.size());
  walk.turn_rows = kMaxTurnRows;
  while (walk.turn_rows > 1 &&
         2 * walk.turn_rows * dim * static_cast<int64_t>(sizeof(acc)) > kMaxTurnTableBytes) {
    walk.turn_rows /= 2;
  }
  const size_t n = static_cast<size_t>(dim);
  // The rotations by one position's angle and by turn_rows positions', reduced exactly like
  // any other angle.
  const std::vector<double> no_phase(n, 0.0);
  std::vector<double> step_sin(n), step_cos(n);
  exact_sin_cos(1.0, arrays.high.data(), arrays.middle.data(), arrays.low.data(), no_phase.data(),
                step_sin.data(), step_cos.data(), dim);
  walk.turn_cos.resize(static_cast<size_t>(walk.turn_rows) * n);
  walk.turn_sin.resize(walk.turn_cos.size());
  std::vector<double> s(n, 0.0), c(n, 1.0);
  for (int64_t k = 0; k < walk.turn_rows; ++k) {
    std::transform(c.begin(), c.end(), walk.turn_cos.begin() + k * dim,
                   [](double v) { return static_cast<acc>(v); });
    std::transform(s.begin(), s.end(), walk.turn_sin.begin() + k * dim,
                   [](double v) { return static_cast<acc>(v); });
    rotate_channels(step_sin.data(), step_cos.data(), s.data(), c.data(), s.data(), c.data(), dim);
  }
  walk.anchor_step_sin.resize(n);
  walk.anchor_step_cos.resize(n);
  exact_sin_cos(static_cast<double>(walk.turn_rows), arrays.high.data(), arrays.middle.data(),
                arrays.low.data(), no_phase.data(), walk.anchor_step_sin.data(),
                walk.anchor_step_cos.data(), dim);
  bool paired = dim >= 2;
  for (int64_t i = 0; 2 * i + 1 < dim && paired; ++i) {
    paired = arrays.high[2 * i] == arrays.high[2 * i + 1] &&
             arrays.middle[2 * i] == arrays.middle[2 * i + 1] &&
             arrays.low[2 * i] == arrays.low[2 * i + 1];
  }
  if (paired) {
    // A pair's channels have one frequency, so the same turns: channel 2i's stand for both.
    const int64_t columns = (dim + 1) / 2;
    walk.pair_turn_cos.resize(static_cast<size_t>(walk.turn_rows * columns));
    walk.pair_turn_sin.resize(walk.pair_turn_cos.size());
    for (int64_t k = 0; k < walk.turn_rows; ++k) {
      for (int64_t i = 0; i < columns; ++i) {
        walk.pair_turn_cos[k * columns + i] = walk.turn_cos[k * dim + 2 * i];
        walk.pair_turn_sin[k * columns + i] = walk.turn_sin[k * dim + 2 * i];
      }
    }
  }
  return walk;
}

// A grid code's rows per segment: [segment][size of its axis, width] (PositionCodeRows).
template <typename acc>
using GridRows = std::vector<std::vector<acc>>;

// The code at one anchor of a walk (PositionCodeRows::anchored_row). Once kept between calls
// (WalkTablesCache::keep_anchor) or seen by more than its walk, it is only read, so that calls
// and threads can share it; a walk alone with its anchor moves it in place.
// Its arrays are left uninitialised when made (every element is written before it is read):
// zero-filling them cost a call of (1, 16, 4096) as much as its exact anchor.
template <typename acc>
struct Anchor {
  explicit Anchor(int64_t dim)
      : sin_cos(new double[static_cast<size_t>(2 * dim)]),
        row(new acc[static_cast<size_t>(2 * dim)]) {}
  int64_t position = -1;
  std::unique_ptr<double[]> sin_cos;  // [2 * dim]: sin, then cos, of each channel's angle
  std::unique_ptr<acc[]> row;         // [2 * dim]: amplitude * sin, then amplitude * cos
};

template <typename acc>
using SharedAnchor = std::shared_ptr<const Anchor<acc>>;

// The walk tables kept with a code's arrays (ChannelArrays::walks), in float and in double,
// each made by the first call that walks in that type; and, for a code on a grid, its grid rows,
// made by the first call that reads them (the arrays are kept per code, width and grid). Safe to
// share between threads.
struct WalkTablesCache {
  template <typename acc>
  const WalkTables<acc>& get(const ChannelArrays& arrays) {
    if constexpr (std::is_same_v<acc, double>) {
      std::call_once(double_once, [&] { double_tables = make_walk_tables<double>(arrays); });
      return double_tables;
    } else {
      std::call_once(float_once, [&] { float_tables = make_walk_tables<float>(arrays); });
      return float_tables;
    }
  }

  // The last few anchors that calls walked to, so that the next call, a decoding step one
  // position further, starts from one instead of evaluating its row exactly: its row then costs
  // a rotation of the anchor per turn_rows positions and an exact evaluation of half the
  // channels per kAnchorRows, not an exact evaluation of every channel (docs/performance.md).
  // Every anchor is the same function of its position, so the bits do not depend on what is
  // kept. find_anchor returns null when `position`'s anchor is not kept.
  template <typename acc>
  SharedAnchor<acc> find_anchor(int64_t position) {
    const std::lock_guard<std::mutex> lock(anchors_mutex_);
    for (const SharedAnchor<acc>& kept : anchors<acc>()) {
      if (kept != nullptr && kept->position == position) return kept;
    }
    return nullptr;
  }

  template <typename acc>
  void keep_anchor(const SharedAnchor<acc>& anchor) {
    const std::lock_guard<std::mutex> lock(anchors_mutex_);
    auto& kept = anchors<acc>();
    for (const SharedAnchor<acc>& entry : kept) {
      if (entry == anchor) return;
    }
    int& next = std::is_same_v<acc, double> ? next_double_anchor_ : next_float_anchor_;
    kept[static_cast<size_t>(next)] = anchor;
    next = (next + 1) % kKeptAnchors;
  }

  template <typename acc, typename Make>
  const GridRows<acc>& grid_rows(Make&& make) {
    if constexpr (std::is_same_v<acc, double>) {
      std::call_once(double_grid_once, [&] { double_grid = make(); });
      return double_grid;
    } else {
      std::call_once(float_grid_once, [&] { float_grid = make(); });
      return float_grid;
    }
  }

 private:
  std::once_flag float_once, double_once, float_grid_once, double_grid_once;
  WalkTables<float> float_tables;
  WalkTables<double> double_tables;
  GridRows<float> float_grid;
  GridRows<double> double_grid;

  // A few anchors per type: where walks start and end (see PositionCodeRows::move_anchor), for a
  // few sequences decoded side by side.
  static constexpr int kKeptAnchors = 8;
  template <typename acc>
  std::array<SharedAnchor<acc>, kKeptAnchors>& anchors() {
    if constexpr (std::is_same_v<acc, double>) {
      return double_anchors_;
    } else {
      return float_anchors_;
    }
  }
  std::mutex anchors_mutex_;
  std::array<SharedAnchor<float>, kKeptAnchors> float_anchors_;
  std::array<SharedAnchor<double>, kKeptAnchors> double_anchors_;
  int next_float_anchor_ = 0;
  int next_double_anchor_ = 0;
};

// Evaluates PE(pos) rows. Computed kinds keep their channel codes as separate arrays so the
// loop over channels vectorizes; learned reads the table row. Built once per call; evaluate()
// is const and safe to call from several threads.
template <typename scalar_t>
class PositionCodeRows {
 public:
  using acc = acc_t<scalar_t>;

  // walk_rows: the most consecutive positions that one call walks through (evaluate_consecutive,
  // anchored_row), 1 for single rows; 0 when it evaluates no rows (a kScaleOnly call, for which
  // not even a grid's axis rows are built). Turn tables made for one call are made only for
  // walks of at least kMinWalkRows positions: their setup costs as much as evaluating tens of
  // rows directly (docs/performance.md), which a decoding step of one row should not pay.
  PositionCodeRows(const PositionSource& source, int64_t dim, int64_t walk_rows)
      : source_(source), dim_(dim) {
    if (source.kind == PositionKind::kLearned || source.channels == nullptr) return;
    // The channel pairs and the double amplitudes serve only the walks' anchors and turn
    // tables, so a short call (a decoding step) makes neither: its setup is then about half.
    // Kept tables cost nothing to reuse, so any walk takes them, a decoding step's row included:
    // it starts from a kept anchor (WalkTablesCache::find_anchor).
    const bool kept_walks = source.arrays != nullptr && source.arrays->walks != nullptr;
    const bool walks = walk_rows >= (kept_walks ? 1 : kMinWalkRows) && source.grid.axis_count == 0;
    // The codes as arrays: the binding's kept ones, or made here.
    if (source.arrays == nullptr) owned_arrays_ = make_channel_arrays(source.channels, dim);
    const ChannelArrays& arrays = source.arrays != nullptr ? *source.arrays : owned_arrays_;
    high_ = arrays.high.data();
    middle_ = arrays.middle.data();
    low_ = arrays.low.data();
    phase_ = arrays.phase.data();
    amplitude64_ = arrays.amplitude.data();
    if constexpr (std::is_same_v<acc, double>) {
      amplitude_ = arrays.amplitude.data();
    } else {
      amplitude_ = arrays.amplitude_float.data();
    }
    if (walks) {
      if (arrays.walks != nullptr) {
        // Made once per code (the first call to walk it) and kept with its arrays.
        walk_ =
            std::shared_ptr<const WalkTables<acc>>(arrays.walks, &arrays.walks->get<acc>(arrays));
        kept_ = arrays.walks.get();
      } else {
        walk_ = std::make_shared<const WalkTables<acc>>(make_walk_tables<acc>(arrays));
      }
    }
    if (walk_rows > 0 && source.grid.axis_count > 0) {
      // Kept with the arrays, which the binding keeps per code, width and grid.
      if (arrays.walks != nullptr) {
        grid_rows_ = std::shared_ptr<const GridRows<acc>>(
            arrays.walks, &arrays.walks->grid_rows<acc>([&] { return make_grid_rows(); }));
      } else {
        grid_rows_ = std::make_shared<const GridRows<acc>>(make_grid_rows());
      }
    }
  }

  bool computed() const { return source_.kind != PositionKind::kLearned && high_ != nullptr; }

  // The state of evaluate_consecutive between rows and calls: the code at the last anchor.
  struct Recurrence {
    SharedAnchor<acc> anchor;  // null: none yet
    // Whether this walk made `anchor` and gave it to no one (see keep_last_anchor), so that it
    // may move it in place.
    bool owns_anchor = false;
    // Whether `anchor` is the first this walk reached (see move_anchor).
    bool at_first_anchor = true;
  };

  // out[r * dim + d] = PE(first + r)[d] for r < rows: consecutive positions, in three tiers.
  //  - Every kAnchorRows positions the angles are evaluated exactly (sin and cos of the reduced
  //    angle, in double).
  //  - Every turn_rows_ positions between (the anchors) they follow by the angle-addition
  //    recurrence in double: a rotation by the exact angle of turn_rows_ positions. Each step
  //    adds at most ~1e-16 to values of magnitude <= 1.
  //  - A row k < turn_rows_ positions past its anchor is A cos(k w) + B sin(k w) per channel,
  //    with A, B the amplitude times sin and cos at the anchor, from tables of cos(k w) and
  //    sin(k w) made once per call: two products and a sum in acc, which vectorize, instead of a
  //    reduction and a polynomial. In float this adds at most ~4 float roundings of values <= 1
  //    (about 2.4e-7), and in double ~1e-15: far below the exact-angle contract's 2e-6.
  // `state` carries over to a following call. Every value is the same function of its position,
  // whichever rows a thread starts at, so any thread count gives the same bits.
  void evaluate_consecutive(int64_t first, int64_t rows, acc* __restrict out,
                            Recurrence& state) const {
    // A grid (consecutive tokens are not consecutive positions there), no tables built, or
    // negative positions (the walks' anchors are multiples of turn_rows_ from 0).
    if (!anchored() || first < 0) {
      for (int64_t r = 0; r < rows; ++r) evaluate(first + r, out + r * dim_);
      return;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const RowCode<acc> code = anchored_row(first + r, state, /*pair_turns=*/false);
      rotate_from_anchor(code.anchor_sin, code.anchor_cos, code.turn_cos, code.turn_sin,
                         out + r * dim_, dim_);
    }
  }

  // Whether anchored_row can be used (a computed code off a grid, with its tables built).
  bool anchored() const { return computed() && walk_ != nullptr && !walk_->turn_cos.empty(); }

  // The positions from one anchor to the next (a power of two); requires anchored().
  int64_t anchor_span() const { return walk_->turn_rows; }

  // The code of `position` as its anchor row and the rotation from it, moving `state` to that
  // anchor: cheap for a caller that walks consecutive positions (at most one rotation per
  // turn_rows_ positions), as evaluate_consecutive does. Requires anchored() and position >= 0.
  // The turns come one per channel pair where the tables have them and pair_turns allows it;
  // only float32 rows take them (combine_pairs), so every other type reads the same tables as
  // before, and the values are the same either way.
  RowCode<acc> anchored_row(int64_t position, Recurrence& state, bool pair_turns = true) const {
    const int64_t k = position & (walk_->turn_rows - 1);  // turn_rows: a power of two
    if (state.anchor == nullptr || state.anchor->position != position - k) {
      move_anchor(position - k, state);
    }
    RowCode<acc> code;
    code.anchor_sin = state.anchor->row.get();
    code.anchor_cos = code.anchor_sin + dim_;
    if (std::is_same_v<scalar_t, float> && pair_turns && !walk_->pair_turn_cos.empty()) {
      const int64_t columns = (dim_ + 1) / 2;
      code.turn_cos = walk_->pair_turn_cos.data() + k * columns;
      code.turn_sin = walk_->pair_turn_sin.data() + k * columns;
      code.pairs = true;
      code.turn_row_stride = columns;
    } else {
      code.turn_cos = walk_->turn_cos.data() + k * dim_;
      code.turn_sin = walk_->turn_sin.data() + k * dim_;
      code.turn_row_stride = dim_;
    }
    return code;
  }

  static constexpr int64_t kMinWalkRows = 32;
  static constexpr int64_t kAnchorRows = 256;

 private:
  // Moves `state` to the anchor `position` (a multiple of turn_rows_): rotated from the state's
  // anchor when that is the one before it, else a kept one (see WalkTablesCache::find_anchor),
  // else made: exact at multiples of kAnchorRows, else rotated from the anchor before it (kept,
  // or recomputed from the last exact one). A walk moves an anchor that it alone holds in place:
  // allocating two rows every turn_rows_ positions, and looking up kept anchors under a lock,
  // cost a single batch row a quarter of its time (docs/performance.md). Its first anchor it
  // keeps instead (with the arrays' cache): a call that walks the same positions again, as
  // every training step from position 0 does, then starts from it, not from an exact anchor.
  void move_anchor(int64_t position, Recurrence& state) const {
    if (state.anchor != nullptr && state.owns_anchor && state.at_first_anchor) {
      keep_last_anchor(state);  // shared from now on: read, never moved
    }
    state.at_first_anchor = state.anchor == nullptr;
    const WalkTables<acc>& walk = *walk_;
    const int64_t before = position - walk.turn_rows;
    const bool rotate_state =
        position % kAnchorRows != 0 && state.anchor != nullptr && state.anchor->position == before;
    SharedAnchor<acc> previous;
    if (!rotate_state && kept_ != nullptr) {
      if (SharedAnchor<acc> found = kept_->find_anchor<acc>(position)) {
        state.anchor = std::move(found);
        state.owns_anchor = false;
        return;
      }
      if (position % kAnchorRows != 0) previous = kept_->find_anchor<acc>(before);
    }
    // The state's own anchor (no one else can reach it), else a new one.
    std::shared_ptr<Anchor<acc>> made;
    if (state.anchor != nullptr && state.owns_anchor) {
      made = std::const_pointer_cast<Anchor<acc>>(std::move(state.anchor));
    } else {
      made = std::make_shared<Anchor<acc>>(dim_);
      if (rotate_state) previous = std::move(state.anchor);
    }
    state.anchor = nullptr;
    made->position = position;
    double* __restrict s = made->sin_cos.get();
    double* __restrict c = s + dim_;
    if (rotate_state || previous != nullptr) {
      // From the anchor before: its own arrays when the walk moves it in place, else read
      // (kept or shared, it is not written) straight into the new anchor's.
      const double* from = previous != nullptr ? previous->sin_cos.get() : s;
      rotate_channels(walk.anchor_step_sin.data(), walk.anchor_step_cos.data(), from, from + dim_,
                      s, c, dim_);
    } else {
      const int64_t exact = position - position % kAnchorRows;
      exact_sin_cos(static_cast<double>(exact), high_, middle_, low_, phase_, s, c, dim_);
      for (int64_t q = exact; q < position; q += walk.turn_rows) {
        rotate_channels(walk.anchor_step_sin.data(), walk.anchor_step_cos.data(), s, c, s, c, dim_);
      }
    }
    anchor_code(amplitude64_, s, c, made->row.get(), made->row.get() + dim_, dim_);
    state.anchor = std::move(made);
    state.owns_anchor = true;
  }

 public:
  // Keeps `state`'s anchor for later calls (see WalkTablesCache::find_anchor): a caller calls it
  // once it has walked to its last row. Kept, it is only read from then on.
  void keep_last_anchor(Recurrence& state) const {
    if (kept_ == nullptr || state.anchor == nullptr) return;
    kept_->keep_anchor<acc>(state.anchor);
    state.owns_anchor = false;
  }

 private:
  // The walk's tables: kept with the code's arrays, or made for this call; null without walks.
  std::shared_ptr<const WalkTables<acc>> walk_;
  // Where anchors are kept between calls: the code's arrays' cache; null when they have none.
  WalkTablesCache* kept_ = nullptr;

 public:
  // out[d - first] = PE(position)[d] for first <= d < end (default: the whole row).
  void evaluate(int64_t position, acc* __restrict out, int64_t first = 0, int64_t end = -1) const {
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
      } else if (grid_rows_ != nullptr && !grid_rows_->empty()) {
        const int axis = grid.segment_axes[s];
        const int64_t segment_begin = s == 0 ? 0 : grid.segment_ends[s - 1];
        const int64_t width = grid.segment_ends[s] - segment_begin;
        const acc* row = (*grid_rows_)[s].data() +
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
    evaluate_codes(static_cast<double>(position), high_ + first, middle_ + first, low_ + first,
                   phase_ + first, amplitude_ + first, out, end - first);
  }

  // Factorised grid codes: segment s's channels at every coordinate of its axis, [size, width],
  // exact like any evaluation. A grid row is then copied from one row per axis, so a [H, W]
  // grid costs (H + W) * D / 2 evaluations instead of H * W * D. Empty when too many.
  GridRows<acc> make_grid_rows() const {
    const GridCode& grid = source_.grid;
    GridRows<acc> rows;
    int64_t values = 0;
    for (int s = 0; s < grid.axis_count; ++s) {
      const int64_t width = grid.segment_ends[s] - (s == 0 ? 0 : grid.segment_ends[s - 1]);
      const int64_t size = grid.sizes[grid.segment_axes[s]];
      if (width > 0 && size > (kMaxGridRowValues - values) / width) return rows;  // too many
      values += size * width;
    }
    rows.resize(static_cast<size_t>(grid.axis_count));
    for (int s = 0; s < grid.axis_count; ++s) {
      const int axis = grid.segment_axes[s];
      const int64_t begin = s == 0 ? 0 : grid.segment_ends[s - 1];
      const int64_t width = grid.segment_ends[s] - begin;
      rows[s].resize(static_cast<size_t>(grid.sizes[axis] * width));
      for (int64_t i = 0; i < grid.sizes[axis]; ++i) {
        evaluate_channels(i + grid.origins[axis], begin, begin + width, rows[s].data() + i * width);
      }
    }
    return rows;
  }

  const PositionSource& source_;
  int64_t dim_;
  std::shared_ptr<const GridRows<acc>> grid_rows_;  // kept or made for this call; null: none
  ChannelArrays owned_arrays_;                      // when the source brings none
  // [D] each: the codes' fields (amplitude64_ in double, amplitude_ in acc); nullptr for a
  // learned table.
  const double* high_ = nullptr;
  const double* middle_ = nullptr;
  const double* low_ = nullptr;
  const double* phase_ = nullptr;
  const double* amplitude64_ = nullptr;
  const acc* amplitude_ = nullptr;
};

// out[k] = the dropout multiplier (0 or keep_scale) of logical element first + k, for k < count:
// the same bits as dropout_multiplier, with counters side by side so the Philox rounds
// vectorize (built for AVX2 too, chosen at run time).
template <typename acc_t>
void dropout_multipliers(const Dropout& dropout, uint64_t first, int64_t count, acc_t* out);

// One element of a combine: mask[d] * combine(scale * x, code), in the one order of operations
// that every loop of it (combine_row_loop, combine_pairs, each build) uses, so that all give the
// same bits. kScaleOnly ignores `code`, kPositionOnly `x`.
template <Combine kCombine, bool kMasked, typename acc_t>
inline __attribute__((always_inline)) acc_t combined_value(acc_t scale, acc_t x, acc_t code,
                                                           const acc_t* mask, int64_t d) {
  acc_t y;
  if constexpr (kCombine == Combine::kAdd) {
    y = scale * x + code;
  } else if constexpr (kCombine == Combine::kMul) {
    y = (scale * x) * code;
  } else if constexpr (kCombine == Combine::kScaleOnly) {
    y = scale * x;
  } else {
    y = code;
  }
  return kMasked ? y * mask[d] : y;
}

// out[d] = mask[d] * combine(scale * in[d], pe[d]) over one row of `dim` elements, with pe[d]
// read from pe.row or, for a rotated code, made in the same loop by rotated_code, as
// rotate_from_anchor makes it, so that no code row is written and read back.
// Inlined into the caller's row loop: out of line, with the same loop, it is slower against
// freshly allocated outputs, for reasons not found. The inlining is forced: with the rotated
// variants GCC stopped inlining, which cost eight batch rows a tenth of their speed
// (docs/performance.md).
template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void combine_row_loop(const scalar_t* __restrict in,
                                                            int64_t in_stride,
                                                            const RowCode<acc_t>& pe,
                                                            const acc_t* __restrict mask,
                                                            acc_t scale, scalar_t* __restrict out,
                                                            int64_t out_stride, int64_t dim) {
  const acc_t* __restrict pe_row = pe.row;
  const acc_t* __restrict anchor_sin = pe.anchor_sin;
  const acc_t* __restrict anchor_cos = pe.anchor_cos;
  const acc_t* __restrict turn_cos = pe.turn_cos;
  const acc_t* __restrict turn_sin = pe.turn_sin;
  auto code = [&](int64_t d) {
    if constexpr (kRotated) {
      return rotated_code(anchor_sin[d], anchor_cos[d], turn_cos[d], turn_sin[d]);
    } else {
      return pe_row[d];
    }
  };
  auto value = [&](int64_t d, acc_t x) {
    if constexpr (kCombine == Combine::kScaleOnly) {
      return combined_value<kCombine, kMasked>(scale, x, acc_t(0), mask, d);  // no code read
    } else {
      return combined_value<kCombine, kMasked>(scale, x, code(d), mask, d);
    }
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

// combine_row_loop over each row of a span.
template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void combine_span_loop(const scalar_t* in, int64_t in_stride,
                                                             const RowCode<acc_t>& pe,
                                                             const acc_t* mask, acc_t scale,
                                                             scalar_t* out, int64_t out_stride,
                                                             int64_t dim, const RowSpan& span) {
  for (int64_t r = 0; r < span.count; ++r) {
    const SpanRow<scalar_t, acc_t> row = span_row(span, r, dim, in, pe, mask, out);
    combine_row_loop<kCombine, kMasked, kRotated>(row.in, in_stride, row.pe, row.mask, scale,
                                                  row.out, out_stride, dim);
  }
}

// combine_span_loop over contiguous rows of float32 or a 16-bit type (bfloat16, float16), built
// for the baseline, AVX2 and AVX-512 (vectorized.cpp) and chosen at run time: the conversions to
// and from float take most of a 16-bit loop's instructions, which the wider builds cut by 2 and
// 4. The same operations per element in every build (no FMA), so the same bits.
template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
void combine_contiguous(const scalar_t* in, const RowCode<float>& pe, const float* mask,
                        float scale, scalar_t* out, int64_t dim, const RowSpan& span);

// combine_span_loop of float32 rows whose code is rotated with turns per channel pair
// (RowCode::pairs): the same operations per element, so the same bits. Contiguous rows go to a
// build for AVX2 or AVX-512 chosen at run time, which widens each pair's turn to both its
// channels with one permute; strided rows, and the baseline, to a scalar loop.
template <Combine kCombine, bool kMasked>
void combine_pairs(const float* in, int64_t in_stride, const RowCode<float>& pe, const float* mask,
                   float scale, float* out, int64_t out_stride, int64_t dim, const RowSpan& span);

template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void combine_row_impl(const scalar_t* in, int64_t in_stride,
                                                            const RowCode<acc_t>& pe,
                                                            const acc_t* mask, acc_t scale,
                                                            scalar_t* out, int64_t out_stride,
                                                            int64_t dim, const RowSpan& span) {
  // float32 too: the wider builds' loops are the same operations per element.
  if constexpr ((sizeof(scalar_t) == 2 || std::is_same_v<scalar_t, float>) &&
                kCombine != Combine::kPositionOnly) {
    if (in_stride == 1 && out_stride == 1) {
      combine_contiguous<kCombine, kMasked, kRotated>(in, pe, mask, scale, out, dim, span);
      return;
    }
  }
  combine_span_loop<kCombine, kMasked, kRotated>(in, in_stride, pe, mask, scale, out, out_stride,
                                                 dim, span);
}

// combine_row_impl for run-time choices, over one row or a span of rows (RowSpan). A
// kScaleOnly combine needs no code.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void combine_row(Combine combine, const scalar_t* in,
                                                       int64_t in_stride, const RowCode<acc_t>& pe,
                                                       const acc_t* mask, acc_t scale,
                                                       scalar_t* out, int64_t out_stride,
                                                       int64_t dim, const RowSpan& span = {}) {
  auto run = [&](auto combine_tag, auto rotated_tag) __attribute__((always_inline)) {
    constexpr Combine kCombine = decltype(combine_tag)::value;
    constexpr bool kRotated = decltype(rotated_tag)::value;
    if (mask != nullptr) {
      combine_row_impl<kCombine, true, kRotated>(in, in_stride, pe, mask, scale, out, out_stride,
                                                 dim, span);
    } else {
      combine_row_impl<kCombine, false, kRotated>(in, in_stride, pe, mask, scale, out, out_stride,
                                                  dim, span);
    }
  };
  auto with_code = [&](auto combine_tag) __attribute__((always_inline)) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (pe.pairs) {
        constexpr Combine kCombine = decltype(combine_tag)::value;
        if (mask != nullptr) {
          return combine_pairs<kCombine, true>(in, in_stride, pe, mask, scale, out, out_stride, dim,
                                               span);
        }
        return combine_pairs<kCombine, false>(in, in_stride, pe, mask, scale, out, out_stride, dim,
                                              span);
      }
    }
    if (pe.rotated()) return run(combine_tag, std::true_type{});
    return run(combine_tag, std::false_type{});
  };
  switch (combine) {
    case Combine::kAdd:
      return with_code(std::integral_constant<Combine, Combine::kAdd>{});
    case Combine::kMul:
      return with_code(std::integral_constant<Combine, Combine::kMul>{});
    case Combine::kScaleOnly:
      return run(std::integral_constant<Combine, Combine::kScaleOnly>{}, std::false_type{});
    case Combine::kPositionOnly:
      return with_code(std::integral_constant<Combine, Combine::kPositionOnly>{});
  }
}

using kernels::dispatch_dtype;

// Rows per parallel chunk so that each chunk moves at least ~32k elements.
inline int64_t row_grain(int64_t dim) { return dim >= 32768 ? 1 : 32768 / (dim > 0 ? dim : 1); }

}  // namespace cpu
}  // namespace kernels
}  // namespace posenc
