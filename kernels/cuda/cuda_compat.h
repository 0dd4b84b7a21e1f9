// What the CUDA kernels need from CUDA, for nvcc or for the host emulation (emulation.h): the
// launch and dynamic shared memory macros, and the grid limits the launchers plan with.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>

// kernel<<<grid, block, shared_bytes, stream>>>(arguments...). Kernels that call __syncthreads
// launch with POSENC_LAUNCH_SYNC (the emulation then runs a block's threads concurrently).
#define POSENC_LAUNCH(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#define POSENC_LAUNCH_SYNC POSENC_LAUNCH
// __launch_bounds__: caps the registers a kernel's threads use, so that `blocks` blocks of
// `threads` threads fit on an SM together.
#define POSENC_LAUNCH_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
#define POSENC_CHECK_VECTOR_ACCESS(address) static_cast<void>(address)
// Records a global access for the emulation's sector counts; nothing on the GPU.
#define POSENC_TRACE_ACCESS(kind, address, bytes) static_cast<void>(0)
// Kernel parameter structs read in place (their batch-stride arrays are indexed with loop
// variables, which would otherwise copy the whole struct to local memory).
#define POSENC_GRID_CONSTANT __grid_constant__
// The block's dynamic shared memory as `type* name`.
#define POSENC_DYNAMIC_SHARED(type, name)                \
  extern __shared__ unsigned char posenc_shared_bytes[]; \
  type* name = reinterpret_cast<type*>(posenc_shared_bytes)

// A device-side check with PyTorch's convention (CUDA_KERNEL_ASSERT): the kernel stops, the
// message is printed, and the next CUDA call reports "device-side assert triggered". Never a
// host synchronisation.
#if defined(__CUDA_ARCH__)
#define POSENC_DEVICE_CHECK(condition, message)                             \
  do {                                                                      \
    if (!(condition)) __assert_fail(message, __FILE__, __LINE__, __func__); \
  } while (0)
#else
#define POSENC_DEVICE_CHECK(condition, message) static_cast<void>(0)
#endif

namespace posenc {
namespace kernels {
inline unsigned int max_grid_x() { return 2147483647u; }
inline unsigned int max_grid_yz() { return 65535u; }
}  // namespace kernels
}  // namespace posenc

#else
#include "cuda/emulation.h"

using posenc::cuda_emulation::__syncthreads;
using posenc::cuda_emulation::atomicAdd;
using posenc::cuda_emulation::cudaError_t;
using posenc::cuda_emulation::cudaErrorInvalidValue;
using posenc::cuda_emulation::cudaGetErrorString;
using posenc::cuda_emulation::cudaGetLastError;
using posenc::cuda_emulation::cudaStream_t;
using posenc::cuda_emulation::dim3;

#define POSENC_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                        \
  ::posenc::cuda_emulation::launch(grid, block, shared_bytes, [&] { kernel(__VA_ARGS__); }); \
  static_cast<void>(stream)
#define POSENC_LAUNCH_SYNC(kernel, grid, block, shared_bytes, stream, ...)         \
  ::posenc::cuda_emulation::launch(                                                \
      grid, block, shared_bytes, [&] { kernel(__VA_ARGS__); }, /*barriers=*/true); \
  static_cast<void>(stream)
#define POSENC_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::posenc::cuda_emulation::dynamic_shared())
#define POSENC_GRID_CONSTANT
#define POSENC_LAUNCH_BOUNDS(threads, blocks)
// The host twin of a 16-byte vector access checks its alignment, as the GPU would.
#define POSENC_CHECK_VECTOR_ACCESS(address) ::posenc::cuda_emulation::check_vector_access(address)
#define POSENC_TRACE_ACCESS(kind, address, bytes) \
  ::posenc::cuda_emulation::trace_access(::posenc::cuda_emulation::Access::kind, address, bytes)
#define POSENC_DEVICE_CHECK(condition, message)                              \
  do {                                                                       \
    if (!(condition)) ::posenc::cuda_emulation::device_assert_fail(message); \
  } while (0)

namespace posenc {
namespace kernels {
inline unsigned int max_grid_x() { return cuda_emulation::limits().max_grid_x; }
inline unsigned int max_grid_yz() { return cuda_emulation::limits().max_grid_yz; }
}  // namespace kernels
}  // namespace posenc
#endif
