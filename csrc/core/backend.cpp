// The CPU kernels' threads (at::parallel_for: this target is built with OpenMP, and a test checks
// that two threads run when two are set), the dropout seed read, and CUDA launch plumbing.
#include "core/backend.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#ifdef POSENC_WITH_CUDA
#include "cuda_launch.h"
#endif

namespace posenc {
namespace core {

kernels::ParallelFor parallel_for() {
  return [](int64_t begin, int64_t end, int64_t grain,
            const std::function<void(int64_t, int64_t)>& body) {
    at::parallel_for(begin, end, grain, body);
  };
}

uint64_t read_seed(const std::optional<at::Tensor>& seed) {
  if (!seed.has_value()) return 0;
  return static_cast<uint64_t>(seed->item<int64_t>());
}

void* current_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
}

void check_launch(int status, const char* what) {
#ifdef POSENC_WITH_CUDA
  TORCH_CHECK(status == 0, "posenc: CUDA launch of ", what,
              " failed: ", kernels::cuda::error_string(status));
#else
  TORCH_INTERNAL_ASSERT(false, "posenc: built without CUDA, yet ", what, " was launched");
#endif
}

}  // namespace core
}  // namespace posenc
