// Launchers of kernels/cuda/attention_bias.cu (plain C++: the binding includes it without nvcc).
#pragma once

#include <cstdint>

#include "attention_bias.h"
#include "cuda_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

// out: [heads, Tq, Tk], contiguous (see attention_bias_cpu).
int attention_bias(const AttentionBiasParams& params, void* out, void* stream);

// See attention_bias_backward_cpu: the same sums in the same order.
int attention_bias_backward(const AttentionBiasParams& params, const void* grad,
                            const int64_t grad_strides[3], void* diagonals, void* grad_weight,
                            void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
