// Host construction of the per-channel codes of a computed kind (1-D or on a token grid).
#include "position_code.h"

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

}  // namespace kernels
}  // namespace posenc
