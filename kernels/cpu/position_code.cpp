#include "position_code.h"

namespace posenc {
namespace kernels {

std::vector<ChannelCode> make_channel_codes(const PositionCodeOptions& options, int64_t dim) {
  std::vector<ChannelCode> codes(static_cast<size_t>(dim > 0 ? dim : 0));
  for (int64_t channel = 0; channel < dim; ++channel) {
    codes[channel] = channel_code(options, dim, channel);
  }
  return codes;
}

}  // namespace kernels
}  // namespace posenc
