// Launchers of kernels/cuda/add_positional.cu (plain C++: the binding includes it without nvcc).
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "positional.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

// add_positional / embedding forward and the input-gradient (see add_positional_cpu).
int64_t add_positional_workspace_bytes(const AddPositionalParams& params);
int add_positional(const AddPositionalParams& params, const int64_t* seed, void* workspace,
                   void* stream);

// Fills fairseq_workspace ([batch * T] int64) with fairseq's positions of params.gather.ids.
int fairseq_positions(const AddPositionalParams& params, int64_t* fairseq_workspace, void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
