// The absolute position codes PE(pos)[j]. Every computed kind is written as
//   PE(pos)[j] = amplitude_j * sin(2*pi*(pos * f_j + phase_j))
// with a per-channel frequency f_j (turns per position), a phase of 0 (sin) or 1/4 (cos) and an
// amplitude, so one exact-angle evaluation serves all kinds. `learned` reads a table instead.
#pragma once

#include <cstdint>
#include <vector>

#include "angle.h"
#include "common.h"

namespace posenc {
namespace kernels {

enum class PositionKind : int { kSinusoidal, kLinear, kDamped, kCosine, kLearned };
enum class Convention : int { kVaswani, kTensor2Tensor };
enum class Layout : int { kInterleaved, kConcat };

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

// The code of channel `channel` of a `dim`-wide computed kind; host and device.
POSENC_HOST_DEVICE ChannelCode channel_code(const PositionCodeOptions& options, int64_t dim,
                                            int64_t channel) {
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
        is_cos = channel >= half;
        radians = sinusoidal_frequency(options, dim, is_cos ? channel - half : channel);
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
  return ChannelCode{turn_frequency_from_radians(radians), is_cos ? 0.25 : 0.0, amplitude};
}

// Per-channel codes for a computed kind; host only, `dim` entries.
std::vector<ChannelCode> make_channel_codes(const PositionCodeOptions& options, int64_t dim);

template <typename acc_t>
POSENC_HOST_DEVICE acc_t evaluate_channel(const ChannelCode& code, int64_t position) {
  const double turns = reduced_turns(position, code.frequency, code.phase);
  return static_cast<acc_t>(code.amplitude) * sin_turns<acc_t>(turns);
}

}  // namespace kernels
}  // namespace posenc
