#include "position_code.h"

#include <algorithm>
#include <cmath>

namespace posenc {
namespace kernels {
namespace {

constexpr double kQuarterTurn = 0.25;

// Angular frequency (radians per position) of sinusoidal pair i.
double sinusoidal_frequency(const PositionCodeOptions& options, int64_t dim, int64_t pair) {
  const int64_t half = dim / 2;
  if (options.convention == Convention::kVaswani) {
    return std::pow(options.base, -2.0 * static_cast<double>(pair) / static_cast<double>(dim));
  }
  // tensor2tensor's get_timing_signal_1d: log-spaced timescales over half - 1 steps.
  const double steps = static_cast<double>(std::max<int64_t>(half - 1, 1));
  return std::pow(options.base, -static_cast<double>(pair) / steps);
}

struct ChannelFormula {
  double radians_per_position;
  bool is_cos;
  double amplitude;
};

ChannelFormula channel_formula(const PositionCodeOptions& options, int64_t dim, int64_t channel) {
  const int64_t half = dim / 2;
  const int64_t pair = channel / 2;
  const bool odd_channel = (channel & 1) != 0;
  switch (options.kind) {
    case PositionKind::kSinusoidal: {
      if (channel >= 2 * half) return {0.0, false, 0.0};  // last channel of an odd width
      if (options.layout == Layout::kInterleaved) {
        return {sinusoidal_frequency(options, dim, pair), odd_channel, 1.0};
      }
      const bool second_half = channel >= half;
      return {sinusoidal_frequency(options, dim, second_half ? channel - half : channel),
              second_half, 1.0};
    }
    case PositionKind::kLinear:
      // PE[2i] = b^-i cos(pos*pi/b), PE[2i+1] = b^-i sin(pos*pi/b)
      return {M_PI / options.base, !odd_channel,
              std::pow(options.base, -static_cast<double>(pair))};
    case PositionKind::kDamped:
      // PE[2i] = cos(pos/b) / sqrt(2^(i+1)), PE[2i+1] = sin(pos/b) / sqrt(2^(i+1))
      return {1.0 / options.base, !odd_channel,
              std::pow(2.0, -0.5 * static_cast<double>(pair + 1))};
    case PositionKind::kCosine:
      // PE[j] = cos(pos * b^(-2j/D))
      return {std::pow(options.base, -2.0 * static_cast<double>(channel) / static_cast<double>(dim)),
              true, 1.0};
    case PositionKind::kLearned:
      break;
  }
  return {0.0, false, 0.0};
}

}  // namespace

std::vector<ChannelCode> make_channel_codes(const PositionCodeOptions& options, int64_t dim) {
  std::vector<ChannelCode> codes(static_cast<size_t>(std::max<int64_t>(dim, 0)));
  for (int64_t channel = 0; channel < dim; ++channel) {
    const ChannelFormula formula = channel_formula(options, dim, channel);
    codes[channel] = ChannelCode{turn_frequency_from_radians(formula.radians_per_position),
                                 formula.is_cos ? kQuarterTurn : 0.0, formula.amplitude};
  }
  return codes;
}

}  // namespace kernels
}  // namespace posenc
