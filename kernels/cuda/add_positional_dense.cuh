// What add_positional.cu's launcher and the dense kernel (add_positional_dense.cu) share: the
// dense kernel's shape and its launch.
#pragma once

#include "cuda/device.cuh"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

constexpr int kDenseThreads = 256;
// Blocks per SM the register cap leaves room for (__launch_bounds__): 128 registers a thread.
// (Unpaired computed codes, read from the table per step, take one block of up to 255.)
constexpr int kDenseBlocksPerSm = 2;

// Rows a thread loads before it uses any: 64 bytes of loads in flight a thread (4 rows of 16-bit
// types, 2 of float), 32 KiB an SM at 2 blocks of 256 threads.
template <typename scalar_t>
constexpr int kDenseRows = 64 / static_cast<int>(sizeof(Pack8<scalar_t>));

struct DenseGrid {
  dim3 blocks;   // (steps, channel groups, batch rows)
  dim3 threads;  // (channel groups, steps)
};

// The dense kernel for params (dense_rows; bfloat16, float16 or float32), with `channel_table`
// the launch's channel table (computed kinds) and `paired` whether its channels come in
// (sin, cos) pairs of one frequency. (A plain pointer: ChannelTable is local to each file.)
int launch_dense(const AddPositionalParams& params, const int64_t* seed,
                 const double* channel_table, bool paired, const DenseGrid& grid, void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
