// Launchers of the CUDA kernels (kernels/cuda/*.cu). Plain C++ declarations: no torch and no
// CUDA headers, so the binding includes this header without nvcc. Every launcher enqueues on
// `stream` (a cudaStream_t) and returns the cudaError_t of the launch as an int (0: success).
// Device pointers only; the parameter structs are the CPU kernels' structs.
#pragma once

#include <cstdint>

#include "positional.h"
#include "rotary.h"

// The launchers live in namespace posenc::kernels::cuda; the host-emulated build of the same
// source (kernels/cuda/emulated.cpp) puts them in posenc::kernels::cuda_emulated.
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

// add_positional / embedding forward and the input-gradient (see add_positional_cpu).
int64_t add_positional_workspace_bytes(const AddPositionalParams& params);
int add_positional(const AddPositionalParams& params, const int64_t* seed, void* workspace,
                   void* stream);

// Fills fairseq_workspace ([batch * T] int64) with fairseq's positions of params.gather.ids.
int fairseq_positions(const AddPositionalParams& params, int64_t* fairseq_workspace, void* stream);

enum class ScatterTarget : int {
  kTable,   // grad_table[position(b, t)]: learned-table gradient (input rows in `input` or gather)
  kWeight,  // grad_weight[ids(b, t)]: embedding weight gradient
};

// Workspace of the scatters below (the channel table, and the chunk sums when deterministic).
int64_t scatter_workspace_bytes(const AddPositionalParams& params, bool deterministic);

// Scatter-add of the backward contributions (params.x holds grad) into `grad` ([rows, D] in the
// compute type, zero on entry) with atomics: fast, order not deterministic. fairseq_positions:
// [batch * T] from fairseq_positions() when params.gather.fairseq_positions.
int scatter_backward_atomic(const AddPositionalParams& params, const StridedRows& input,
                            ScatterTarget target, const int64_t* seed,
                            const int64_t* fairseq_positions, void* workspace, void* grad,
                            void* stream);

// The same sums in a fixed order, bit-identical from run to run and without atomics: rows sorted
// by target (`sorted_rows`: flat row indices b * T + t, stable order; `sorted_targets`: their
// targets), summed in chunks of sorted rows and joined in chunk order.
int scatter_backward_deterministic(const AddPositionalParams& params, const StridedRows& input,
                                   ScatterTarget target, const int64_t* seed,
                                   const int64_t* fairseq_positions, const int64_t* sorted_rows,
                                   const int64_t* sorted_targets, void* workspace, void* grad,
                                   void* stream);

// Rotary with angles computed on the device. inv_freq: [rotary_dim / 2] float64 on the device,
// or nullptr for base^(-2i/r); their splits go to the workspace once per launch.
// params.frequencies is ignored; offsets, cu_seqlens and positions are device pointers.
int64_t rotary_workspace_bytes(const RotaryParams& params);
int rotary(const RotaryParams& params, const double* inv_freq, double base, void* workspace,
           void* stream);

int rotary_tables(const RotaryTableParams& params, void* stream);

const char* error_string(int error);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
