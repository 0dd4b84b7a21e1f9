// CUDA kernels of the learned-table and embedding-weight gradients: scatter-adds with atomics,
// or in a fixed order (sorted rows summed in chunks joined in order) when deterministic.
#include "cuda/add_positional_launch.h"
#include "cuda/device.cuh"
#include "cuda/scatter_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

constexpr int64_t kScatterChunk = 64;  // sorted rows a thread sums in the deterministic scatter

// ---- backward scatter ---------------------------------------------------------------------------
// The contribution of grad[b, t, d] to its target row, or false when it contributes nothing.
template <typename scalar_t>
__device__ bool contribution(const AddPositionalParams& p, const StridedRows& input,
                             ScatterTarget target, const Dropout& dropout, const int64_t* fairseq,
                             const ChannelTable& channels, int64_t b, int64_t t, int64_t d,
                             int64_t* target_row, acc_t<scalar_t>* value) {
  using acc = acc_t<scalar_t>;
  const bool multiply = p.combine == Combine::kMul;
  const acc scale = static_cast<acc>(p.scale);
  const scalar_t* grad = static_cast<const scalar_t*>(p.x.data) +
                         batch_offset(p.shape, p.x.batch_strides, b) + t * p.x.seq_stride;
  acc g = load_as_acc(grad + d * p.x.dim_stride);
  const uint64_t index = static_cast<uint64_t>((b * p.shape.seq_len + t) * p.shape.dim + d);
  g *= dropout_multiplier<acc>(dropout, index);
  const int64_t position = checked_position(p, fairseq, b, t);
  if (target == ScatterTarget::kTable) {
    const InputRow<scalar_t> in = checked_input_row<scalar_t>(p, input, b, t);
    if (in.padding) return false;  // padding tokens get no position code
    if (multiply) g *= scale * load_as_acc(in.data + d * in.stride);
    *target_row = position;
  } else {
    const int64_t id = index_at(p.shape, p.gather.ids, b, t);
    POSENC_DEVICE_CHECK(id >= 0 && id < p.gather.vocab, "posenc: ids must be in [0, V)");
    if (id == p.gather.padding_idx) return false;  // as nn.Embedding
    g *= scale;
    if (multiply) g *= code_value<scalar_t>(p.source, channels, position, d);
    *target_row = id;
  }
  *value = g;
  return true;
}

__device__ void atomic_add(float* address, float value) { atomicAdd(address, value); }
__device__ void atomic_add(double* address, double value) { atomicAdd(address, value); }

// grid: (row blocks, channel blocks); rows = batch * T.
template <typename scalar_t>
__global__ void scatter_atomic_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                      const POSENC_GRID_CONSTANT StridedRows input,
                                      ScatterTarget target, const int64_t* seed,
                                      const int64_t* fairseq, ChannelTable channels,
                                      acc_t<scalar_t>* grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = p.shape.batch_count() * p.shape.seq_len;
  const Dropout dropout = device_dropout(p.dropout, seed);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / p.shape.seq_len;
    const int64_t t = row - b * p.shape.seq_len;
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; d < p.shape.dim;
         d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      int64_t target_row;
      acc value;
      if (contribution<scalar_t>(p, input, target, dropout, fairseq, channels, b, t, d, &target_row,
                                 &value)) {
        atomic_add(grad + target_row * p.shape.dim + d, value);
      }
    }
  }
}

// The deterministic sums, in two passes over the rows sorted by target (a segment: the rows of
// one target). Pass 1, grid (chunks, channel blocks): chunk k holds sorted rows [k L, (k+1) L)
// and sums each piece of a segment inside it in sorted order. A segment within one chunk goes
// to grad directly; a longer one leaves its first piece in tail[k] (the chunk where it starts)
// and one piece in head[j] for each later chunk j it covers, which pass 2 adds in chunk order.
// Long segments (frequent tokens, padding) are so split over chunks; no atomics, no host sync,
// the same order on every run.
template <typename scalar_t>
__global__ void scatter_chunks_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                      const POSENC_GRID_CONSTANT StridedRows input,
                                      ScatterTarget target, const int64_t* seed,
                                      const int64_t* fairseq, ChannelTable channels,
                                      const int64_t* sorted_rows, const int64_t* sorted_targets,
                                      int64_t rows, acc_t<scalar_t>* head, acc_t<scalar_t>* tail,
                                      acc_t<scalar_t>* grad) {
  using acc = acc_t<scalar_t>;
  const Dropout dropout = device_dropout(p.dropout, seed);
  const int64_t dim = p.shape.dim;
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  for (int64_t k = blockIdx.x; k < chunks; k += gridDim.x) {
    const int64_t begin = k * kScatterChunk;
    const int64_t end = begin + kScatterChunk < rows ? begin + kScatterChunk : rows;
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; d < dim;
         d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      acc sum = 0;
      int64_t piece_start = begin;
      for (int64_t i = begin; i <= end; ++i) {
        if (i == end || (i > piece_start && sorted_targets[i] != sorted_targets[i - 1])) {
          // The piece [piece_start, i) of the segment of sorted_targets[piece_start].
          const bool continues_before = piece_start == begin && begin > 0 &&
                                        sorted_targets[begin] == sorted_targets[begin - 1];
          const bool continues_after =
              i == end && end < rows && sorted_targets[end] == sorted_targets[end - 1];
          if (continues_before) {
            head[k * dim + d] = sum;
          } else if (continues_after) {
            tail[k * dim + d] = sum;
          } else {
            grad[sorted_targets[piece_start] * dim + d] += sum;
          }
          if (i == end) break;
          sum = 0;
          piece_start = i;
        }
        const int64_t row = sorted_rows[i];
        const int64_t b = row / p.shape.seq_len;
        int64_t target_row;
        acc value;
        if (contribution<scalar_t>(p, input, target, dropout, fairseq, channels, b,
                                   row - b * p.shape.seq_len, d, &target_row, &value)) {
          sum += value;
        }
      }
    }
  }
}

// Pass 2, grid (chunks, channel blocks): for each segment that starts in chunk k and runs past
// its end, tail[k] plus the heads of the following chunks it covers, in chunk order.
template <typename acc>
__global__ void scatter_join_kernel(const int64_t* sorted_targets, int64_t rows, int64_t dim,
                                    const acc* head, const acc* tail, acc* grad) {
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  for (int64_t k = blockIdx.x; k < chunks; k += gridDim.x) {
    const int64_t begin = k * kScatterChunk;
    const int64_t end = begin + kScatterChunk < rows ? begin + kScatterChunk : rows;
    const int64_t last = sorted_targets[end - 1];
    const bool continues_after = end < rows && sorted_targets[end] == last;
    const bool whole_chunk_continues =
        begin > 0 && sorted_targets[begin] == last && sorted_targets[begin - 1] == last;
    if (!continues_after || whole_chunk_continues) continue;
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; d < dim;
         d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      acc sum = tail[k * dim + d];
      for (int64_t j = k + 1; j < chunks; ++j) {
        sum += head[j * dim + d];
        const int64_t j_end = (j + 1) * kScatterChunk;
        if (!(j_end < rows && sorted_targets[j_end] == last)) break;
      }
      grad[last * dim + d] += sum;
    }
  }
}

}  // namespace

int64_t scatter_workspace_bytes(const AddPositionalParams& params, bool deterministic) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  const int64_t accumulate = params.dtype == DType::kFloat64 ? 8 : 4;
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  return deterministic ? aligned_bytes(2 * chunks * params.shape.dim * accumulate) : 0;
}

int scatter_backward_atomic(const AddPositionalParams& params, const StridedRows& input,
                            ScatterTarget target, const int64_t* seed,
                            const int64_t* fairseq_positions, const double* table, void* grad,
                            void* stream) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  if (rows == 0 || params.shape.dim == 0) return 0;
  const ChannelTable channels{table, channel_groups(params.shape.dim)};
  const dim3 grid(blocks_for(rows, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads, max_grid_yz()));
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    POSENC_LAUNCH(scatter_atomic_kernel<scalar_t>, grid, kThreads, 0, stream, params, input, target,
                  seed, fairseq_positions, channels, static_cast<acc_t<scalar_t>*>(grad));
    return launch_status();
  });
}

int scatter_backward_deterministic(const AddPositionalParams& params, const StridedRows& input,
                                   ScatterTarget target, const int64_t* seed,
                                   const int64_t* fairseq_positions, const int64_t* sorted_rows,
                                   const int64_t* sorted_targets, const double* table,
                                   void* workspace, void* grad, void* stream) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  if (rows == 0 || params.shape.dim == 0) return 0;
  const ChannelTable channels{table, channel_groups(params.shape.dim)};
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  const dim3 grid(blocks_for(chunks, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads, max_grid_yz()));
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc = acc_t<scalar_t>;
    acc* head = static_cast<acc*>(workspace);
    acc* tail = head + chunks * params.shape.dim;
    POSENC_LAUNCH(scatter_chunks_kernel<scalar_t>, grid, kThreads, 0, stream, params, input, target,
                  seed, fairseq_positions, channels, sorted_rows, sorted_targets, rows, head, tail,
                  static_cast<acc*>(grad));
    const int chunk_status = launch_status();
    if (chunk_status != 0) return chunk_status;
    POSENC_LAUNCH(scatter_join_kernel<acc>, grid, kThreads, 0, stream, sorted_targets, rows,
                  params.shape.dim, head, tail, static_cast<acc*>(grad));
    return launch_status();
  });
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
