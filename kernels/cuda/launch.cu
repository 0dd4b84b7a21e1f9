// What every launcher shares (kernels/cuda_launch.h): the error string of a status, and whether
// a stream is being captured into a CUDA graph.
#include "cuda/cuda_compat.h"
#include "cuda_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

const char* error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

bool stream_capturing(void* stream) {
#if defined(__CUDACC__)
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status) == cudaSuccess &&
         status != cudaStreamCaptureStatusNone;
#else
  static_cast<void>(stream);
  return false;  // the emulation runs launches at once: nothing is captured
#endif
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
