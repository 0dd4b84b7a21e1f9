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

// Per-channel codes for a computed kind; host only, `dim` entries.
std::vector<ChannelCode> make_channel_codes(const PositionCodeOptions& options, int64_t dim);

template <typename acc_t>
POSENC_HOST_DEVICE acc_t evaluate_channel(const ChannelCode& code, int64_t position) {
  const double turns = reduced_turns(position, code.frequency, code.phase);
  return static_cast<acc_t>(code.amplitude) * sin_turns<acc_t>(turns);
}

}  // namespace kernels
}  // namespace posenc
