// Launchers of kernels/cuda/scatter.cu (plain C++: the binding includes it without nvcc).
#pragma once

#include <cstdint>

#include "cuda_launch.h"
#include "positional.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {

enum class ScatterTarget : int {
  kTable,   // grad_table[position(b, t)]: learned-table gradient (input rows in `input` or gather)
  kWeight,  // grad_weight[ids(b, t)]: embedding weight gradient
};

// Workspace of the scatters below (the chunk sums when deterministic). Both read the launch's
// channel table (add_positional_launch.h) for computed codes.
int64_t scatter_workspace_bytes(const AddPositionalParams& params, bool deterministic);

// Scatter-add of the backward contributions (params.x holds grad) into `grad` ([rows, D] in the
// compute type, zero on entry) with atomics: fast, order not deterministic. fairseq_positions:
// [batch * T] from fairseq_positions() when params.gather.fairseq_positions.
int scatter_backward_atomic(const AddPositionalParams& params, const StridedRows& input,
                            ScatterTarget target, const int64_t* seed,
                            const int64_t* fairseq_positions, const double* table, void* grad,
                            void* stream);

// The same sums in a fixed order, bit-identical from run to run and without atomics: rows sorted
// by target (`sorted_rows`: flat row indices b * T + t, stable order; `sorted_targets`: their
// targets), summed in chunks of sorted rows and joined in chunk order.
int scatter_backward_deterministic(const AddPositionalParams& params, const StridedRows& input,
                                   ScatterTarget target, const int64_t* seed,
                                   const int64_t* fairseq_positions, const int64_t* sorted_rows,
                                   const int64_t* sorted_targets, const double* table,
                                   void* workspace, void* grad, void* stream);

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
