// Launchers of kernels/cuda/add_positional.cu (plain C++: the binding includes it without nvcc).
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "positional.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

// The channel table of a launch's computed codes: channel_table_bytes(params) bytes of device
// memory (0 when the launch reads none: a learned table, or the add's input gradient), filled
// by fill_channel_table for params' code, width and grid. It depends on nothing else, so the
// caller may keep it for later launches with the same code on the same stream.
int64_t channel_table_bytes(const AddPositionalParams& params);
int fill_channel_table(const AddPositionalParams& params, double* table, void* stream);

// add_positional / embedding forward and the input-gradient (see add_positional_cpu), reading
// `table` (filled as above; unused when channel_table_bytes is 0) and a workspace of
// add_positional_workspace_bytes(params) bytes (fairseq positions).
int64_t add_positional_workspace_bytes(const AddPositionalParams& params);
int add_positional(const AddPositionalParams& params, const int64_t* seed, const double* table,
                   void* workspace, void* stream);

// Fills fairseq_workspace ([batch * T] int64) with fairseq's positions of params.gather.ids.
int fairseq_positions(const AddPositionalParams& params, int64_t* fairseq_workspace, void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
