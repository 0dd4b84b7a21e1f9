// What every launcher of the CUDA kernels shares (each family declares its own launchers in
// kernels/cuda/<family>_launch.h): plain C++, no torch and no CUDA headers, so the binding includes
// these headers without nvcc. Every launcher enqueues on `stream` (a cudaStream_t) and returns the
// cudaError_t of the launch as an int (0: success). Device pointers only; the parameter structs
// are the CPU kernels' structs.
#pragma once

// The launchers live in namespace posenc::kernels::cuda; the host-emulated build of the same
// sources (the GoogleTest harness) puts them in posenc::kernels::cuda_emulated.
#ifndef POSENC_CUDA_NAMESPACE
#define POSENC_CUDA_NAMESPACE cuda
#endif

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

// The seed of an active dropout is read on the device from `seed` (an int64 scalar), so CUDA
// graph replays that redraw it get fresh masks. params.dropout.seed is ignored. Each launcher
// that needs scratch memory takes a device `workspace` of *_workspace_bytes(params) bytes
// (16-byte aligned), which the caller allocates (the torch binding with its caching allocator).
// Ids, positions, offsets and cu_seqlens are checked on the device: a bad value stops the kernel
// with a device-side assert naming it, as PyTorch's own kernels do; nothing synchronises.

// The message of a launcher's status.
const char* error_string(int error);

// Whether `stream` is being captured into a CUDA graph: what is enqueued then runs at replay.
bool stream_capturing(void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
