// Launchers of kernels/cuda/rotary_tables.cu (plain C++: the binding includes it without nvcc).
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "rotary.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

// apply_rotary_pos_emb with given cos/sin tables (see rotary_tables_cpu).
int rotary_tables(const RotaryTableParams& params, void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
