// The absolute position codes PE(pos)[j]. Every computed kind is written as
//   PE(pos)[j] = amplitude_j * sin(2*pi*(pos * f_j + phase_j))
// with a per-channel frequency f_j (turns per position), a phase of 0 (sin) or 1/4 (cos) and an
// amplitude, so one exact-angle evaluation serves all kinds. `learned` reads a table instead.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "angle.h"
#include "common.h"

namespace posenc {
namespace kernels {

enum class PositionKind : int { kSinusoidal, kLinear, kDamped, kCosine, kLearned };
enum class Convention : int { kVaswani, kTensor2Tensor };
// kInterleaved: PE[2i] = sin, PE[2i+1] = cos; kConcat: PE[i] = sin, PE[D/2+i] = cos;
// kConcatCosFirst: PE[i] = cos, PE[D/2+i] = sin (MusicGen's halves).
enum class Layout : int { kInterleaved, kConcat, kConcatCosFirst };

struct ChannelCode {
  TurnFrequency frequency;
  double phase;      // 0 for sin, 0.25 for cos
  double amplitude;  // 0 for the unused last channel of an odd-width sinusoidal code
};

struct PositionCodeOptions {
  PositionKind kind = PositionKind::kSinusoidal;
  double base = 10000.0;
  Convention convention = Convention::kVaswani;
  Layout layout = Layout::kInterleaved;
};

// Caches of codes are keyed by these options: a new field must be compared here (the size check
// fails when a field is added, as a reminder).
inline bool operator==(const PositionCodeOptions& a, const PositionCodeOptions& b) {
  static_assert(sizeof(PositionCodeOptions) == 24, "compare the new field of PositionCodeOptions");
  return a.kind == b.kind && a.base == b.base && a.convention == b.convention &&
         a.layout == b.layout;
}
inline bool operator!=(const PositionCodeOptions& a, const PositionCodeOptions& b) {
  return !(a == b);
}

// Angular frequency (radians per position) of sinusoidal pair `pair`.
POSENC_HOST_DEVICE double sinusoidal_frequency(const PositionCodeOptions& options, int64_t dim,
                                               int64_t pair) {
  const int64_t half = dim / 2;
  if (options.convention == Convention::kVaswani) {
    return ::pow(options.base, -2.0 * static_cast<double>(pair) / static_cast<double>(dim));
  }
  // tensor2tensor's get_timing_signal_1d: log-spaced timescales over half - 1 steps.
  const double steps = static_cast<double>(half - 1 > 1 ? half - 1 : 1);
  return ::pow(options.base, -static_cast<double>(pair) / steps);
}

// The code of channel `channel` of a `dim`-wide computed kind, for positions multiplied by
// `position_scale` (folded into the frequency, so integer positions keep the exact reduction);
// host and device.
POSENC_HOST_DEVICE ChannelCode channel_code(const PositionCodeOptions& options, int64_t dim,
                                            int64_t channel, double position_scale = 1.0) {
  const int64_t half = dim / 2;
  const int64_t pair = channel / 2;
  const bool odd_channel = (channel & 1) != 0;
  double radians = 0.0, amplitude = 0.0;
  bool is_cos = false;
  switch (options.kind) {
    case PositionKind::kSinusoidal:
      if (channel >= 2 * half) break;  // the last channel of an odd width stays 0
      amplitude = 1.0;
      if (options.layout == Layout::kInterleaved) {
        radians = sinusoidal_frequency(options, dim, pair);
        is_cos = odd_channel;
      } else {
        const bool second_half = channel >= half;
        is_cos = second_half != (options.layout == Layout::kConcatCosFirst);
        radians = sinusoidal_frequency(options, dim, second_half ? channel - half : channel);
      }
      break;
    case PositionKind::kLinear:  // PE[2i] = b^-i cos(pos pi/b), PE[2i+1] = b^-i sin(pos pi/b)
      radians = M_PI / options.base;
      is_cos = !odd_channel;
      amplitude = ::pow(options.base, -static_cast<double>(pair));
      break;
    case PositionKind::kDamped:  // PE[2i] = cos(pos/b) / sqrt(2^(i+1)), PE[2i+1] = sin(...)
      radians = 1.0 / options.base;
      is_cos = !odd_channel;
      amplitude = ::pow(2.0, -0.5 * static_cast<double>(pair + 1));
      break;
    case PositionKind::kCosine:  // PE[j] = cos(pos b^(-2j/D))
      radians = ::pow(options.base, -2.0 * static_cast<double>(channel) / static_cast<double>(dim));
      is_cos = true;
      amplitude = 1.0;
      break;
    case PositionKind::kLearned:
      break;
  }
  return ChannelCode{turn_frequency_from_radians(radians * position_scale), is_cos ? 0.25 : 0.0,
                     amplitude};
}

// ---- codes on a token grid (2D/3D sin-cos codes of vision and video transformers) -----------

constexpr int kMaxGridAxes = 3;

// A position is a token index into a grid of patches. Indices [0, extra_tokens) (cls and
// register tokens) have PE = 0. Index extra_tokens + g, with g the row-major index of
// (i_0, ..., i_{n-1}) in `sizes` (the last axis varies fastest), has coordinate
// c_a = i_a + origins[a] along axis a. The channels are split into segments, one per axis, in
// channel order: segment s holds channels [segment_ends[s - 1], segment_ends[s]) and is the 1-D
// code of that width of axis segment_axes[s] at position c_a * scales[a].
// MAE and DiT: sizes (H, W), segments (w: D/2, h: D/2), concat sinusoidal. SD3: scales
// base_size / (grid * interpolation_scale), origins the centre crop of pos_embed_max_size.
struct GridCode {
  int axis_count = 0;  // 0: positions are 1-D (no grid)
  int64_t extra_tokens = 0;
  int64_t sizes[kMaxGridAxes] = {};
  int64_t origins[kMaxGridAxes] = {};
  double scales[kMaxGridAxes] = {1.0, 1.0, 1.0};
  int segment_axes[kMaxGridAxes] = {};
  int64_t segment_ends[kMaxGridAxes] = {};
};

// As for PositionCodeOptions: every field compared, the size check a reminder for new ones.
inline bool operator==(const GridCode& a, const GridCode& b) {
  static_assert(sizeof(GridCode) == 128, "compare the new field of GridCode");
  if (a.axis_count != b.axis_count || a.extra_tokens != b.extra_tokens) return false;
  for (int i = 0; i < kMaxGridAxes; ++i) {
    if (a.sizes[i] != b.sizes[i] || a.origins[i] != b.origins[i] || a.scales[i] != b.scales[i] ||
        a.segment_axes[i] != b.segment_axes[i] || a.segment_ends[i] != b.segment_ends[i]) {
      return false;
    }
  }
  return true;
}
inline bool operator!=(const GridCode& a, const GridCode& b) { return !(a == b); }

// The CPU kernels factorise a grid's codes into rows per axis (kernels/cpu/row_kernels.h) when
// those hold at most this many values; beyond it each row is evaluated where it is used, so a
// few positions on a huge grid cost little.
constexpr int64_t kMaxGridRowValues = int64_t{1} << 21;

// extra_tokens + the grid's patches: the token indices with a code are below this.
POSENC_HOST_DEVICE int64_t grid_token_count(const GridCode& grid) {
  int64_t count = 1;
  for (int a = 0; a < grid.axis_count; ++a) count *= grid.sizes[a];
  return grid.extra_tokens + count;
}

// The segment of `channel`.
POSENC_HOST_DEVICE int grid_segment(const GridCode& grid, int64_t channel) {
  int segment = 0;
  while (segment + 1 < grid.axis_count && channel >= grid.segment_ends[segment]) ++segment;
  return segment;
}

// The coordinates of a token (scalars, not an array: they stay in registers on the device).
struct GridPoint {
  bool coded;  // false for the extra tokens
  int64_t c0, c1, c2;

  POSENC_HOST_DEVICE int64_t along(int axis) const { return axis == 0 ? c0 : axis == 1 ? c1 : c2; }
};

// The coordinates of token index `token` (validated below grid_token_count, which is below
// 2^31, so the divisions are 32-bit).
POSENC_HOST_DEVICE GridPoint grid_point(const GridCode& grid, int64_t token) {
  GridPoint point{token >= grid.extra_tokens, 0, 0, 0};
  if (!point.coded) return point;
  uint32_t index = static_cast<uint32_t>(token - grid.extra_tokens);
  int64_t c[kMaxGridAxes] = {0, 0, 0};
  for (int a = kMaxGridAxes - 1; a >= 0; --a) {
    if (a < grid.axis_count) {
      const uint32_t size = static_cast<uint32_t>(grid.sizes[a]);
      c[a] = static_cast<int64_t>(index % size) + grid.origins[a];
      index /= size;
    }
  }
  point.c0 = c[0];
  point.c1 = c[1];
  point.c2 = c[2];
  return point;
}

// The code of `channel` of a `dim`-wide row: 1-D, or the channel of its grid segment.
POSENC_HOST_DEVICE ChannelCode grid_channel_code(const PositionCodeOptions& options,
                                                 const GridCode& grid, int64_t dim,
                                                 int64_t channel) {
  if (grid.axis_count == 0) return channel_code(options, dim, channel);
  const int segment = grid_segment(grid, channel);
  const int64_t begin = segment == 0 ? 0 : grid.segment_ends[segment - 1];
  return channel_code(options, grid.segment_ends[segment] - begin, channel - begin,
                      grid.scales[grid.segment_axes[segment]]);
}

// Per-channel codes for a computed kind; host only, `dim` entries.
std::vector<ChannelCode> make_channel_codes(const PositionCodeOptions& options, int64_t dim,
                                            const GridCode& grid = GridCode());

// The same codes as one array per field, the layout the CPU row loops read ([D] each). Made
// once per code and kept with it by the binding, so that a call (a decoding step) neither copies
// nor allocates them; host only.
namespace cpu {
struct WalkTablesCache;  // kernels/cpu/row_kernels.h
}

struct ChannelArrays {
  std::vector<double> high, middle, low, phase, amplitude;
  std::vector<float> amplitude_float;
  // The CPU row loops' tables of this code (turn tables; on a grid, its rows per axis), made by
  // the first call that needs them and kept for the next: what a kept ChannelArrays saves
  // beyond the arrays. Arrays made for one grid serve only that grid (the binding keeps them per
  // code, width and grid).
  std::shared_ptr<cpu::WalkTablesCache> walks;
};

ChannelArrays make_channel_arrays(const std::vector<ChannelCode>& channels);
ChannelArrays make_channel_arrays(const ChannelCode* channels, int64_t dim);

template <typename acc_t>
POSENC_HOST_DEVICE acc_t evaluate_channel(const ChannelCode& code, int64_t position) {
  const double turns = reduced_turns(position, code.frequency, code.phase);
  return static_cast<acc_t>(code.amplitude) * sin_turns<acc_t>(turns);
}

}  // namespace kernels
}  // namespace posenc
