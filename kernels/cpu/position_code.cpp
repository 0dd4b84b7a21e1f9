// Host construction of the per-channel codes of a computed kind (1-D or on a token grid).
#include "position_code.h"

#include "cpu/row_kernels.h"

namespace posenc {
namespace kernels {

std::vector<ChannelCode> make_channel_codes(const PositionCodeOptions& options, int64_t dim,
                                            const GridCode& grid) {
  std::vector<ChannelCode> codes(static_cast<size_t>(dim > 0 ? dim : 0));
  for (int64_t channel = 0; channel < dim; ++channel) {
    codes[channel] = grid_channel_code(options, grid, dim, channel);
  }
  return codes;
}

ChannelArrays make_channel_arrays(const ChannelCode* channels, int64_t dim) {
  ChannelArrays arrays;
  const size_t n = static_cast<size_t>(dim > 0 ? dim : 0);
  arrays.high.resize(n);
  arrays.middle.resize(n);
  arrays.low.resize(n);
  arrays.phase.resize(n);
  arrays.amplitude.resize(n);
  arrays.amplitude_float.resize(n);
  for (size_t d = 0; d < n; ++d) {
    arrays.high[d] = channels[d].frequency.high;
    arrays.middle[d] = channels[d].frequency.middle;
    arrays.low[d] = channels[d].frequency.low;
    arrays.phase[d] = channels[d].phase;
    arrays.amplitude[d] = channels[d].amplitude;
    arrays.amplitude_float[d] = static_cast<float>(channels[d].amplitude);
  }
  arrays.walks = std::make_shared<cpu::WalkTablesCache>();
  return arrays;
}

ChannelArrays make_channel_arrays(const std::vector<ChannelCode>& channels) {
  return make_channel_arrays(channels.data(), static_cast<int64_t>(channels.size()));
}

}  // namespace kernels
}  // namespace posenc
