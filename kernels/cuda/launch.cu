// The error string of a CUDA launcher's status (kernels/cuda_launch.h).
#include "cuda/cuda_compat.h"
#include "cuda_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

const char* error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
