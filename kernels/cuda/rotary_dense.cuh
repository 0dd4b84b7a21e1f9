// What rotary.cu's launcher and the dense rotary kernel (rotary_dense.cu) share: which launches
// the dense kernel takes, and its launch.
#pragma once

#include "cuda/device.cuh"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

constexpr int kRotaryDenseThreads = 256;
// Blocks per SM the register cap leaves room for (__launch_bounds__): 128 registers a thread.
constexpr int kRotaryDenseBlocksPerSm = 2;
// Pairs a thread rotates: two 16-byte-aligned packs of 8 elements per head.
constexpr int kRotaryPairsPerThread = 8;

// Whether the dense kernel takes `params`: bfloat16, float16 or float32; rotary_dim a multiple
// of 16 (whole packs), at most 16 * kRotaryDenseThreads; the channels past it a multiple of 8;
// unit channel strides and 16-byte aligned bases and batch, token and head strides.
bool rotary_dense(const RotaryParams& params);

// The dense kernel: angles from inv_freq ([rotary_dim / 2] float64 on the device) or, when it is
// nullptr, base^(-2i/r).
int launch_rotary_dense(const RotaryParams& params, const double* inv_freq, double base,
                        void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
