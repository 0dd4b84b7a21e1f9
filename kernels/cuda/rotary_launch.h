// Launchers of kernels/cuda/rotary.cu (plain C++: the binding includes it without nvcc).
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "rotary.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

// Rotary with angles computed on the device. inv_freq: [rotary_dim / 2] float64 on the device,
// or nullptr for base^(-2i/r); their splits go to the workspace once per launch.
// params.frequencies is ignored; offsets, cu_seqlens and positions are device pointers.
int64_t rotary_workspace_bytes(const RotaryParams& params);
int rotary(const RotaryParams& params, const double* inv_freq, double base, void* workspace,
           void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
