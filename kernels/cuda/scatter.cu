// CUDA kernels of the learned-table and embedding-weight gradients: scatter-adds with atomics,
// or in a fixed order (sorted rows summed in chunks joined in order) when deterministic. Rows
// that move as 16-byte vectors take the dense kernels (8 channels a thread, rows' loads in
// flight together, one Philox call per 8 draws, 128-bit reductions); the rest the general ones.
#include "cuda/add_positional_dense.cuh"
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

// ---- dense scatters -------------------------------------------------------------------------
// Launches whose grad rows move as 16-byte vectors, without a multiply (scatter_dense_rows): a
// thread owns a group of 8 channels and walks rows with it; each row's contribution is
// grad * dropout mask (* scale for the weight), summed into float. Templates on the target and
// dropout: no branch per element.

// The rows of the dense scatters: flat row indices (b * T + t) in 32 bits, below 2^30.
constexpr int64_t kScatterDenseRowLimit = int64_t{1} << 30;

bool scatter_dense_rows(const AddPositionalParams& params, const void* grad) {
  const RowShape& shape = params.shape;
  if (params.dtype == DType::kFloat64 || params.combine == Combine::kMul || shape.batch_ndim > 1 ||
      shape.dim % kElementsPerThread != 0 ||
      shape.batch_count() * shape.seq_len >= kScatterDenseRowLimit ||
      reinterpret_cast<uintptr_t>(grad) % kVectorBytes != 0) {
    return false;
  }
  const StridedRows& x = params.x;
  return x.dim_stride == 1 && aligned_rows(x.data, shape.batch_ndim == 1 ? x.batch_strides[0] : 0,
                                           x.seq_stride, element_bytes(params.dtype));
}

// The row indices of a dense scatter: ids and positions (or fairseq's, from their [batch * T]
// workspace) with at most one batch dimension, so that an index's offset needs no division.
struct ScatterIndices {
  const int64_t* fairseq;  // nullptr unless fairseq positions
  int64_t ids_batch, positions_batch;

  __device__ ScatterIndices(const AddPositionalParams& p, const int64_t* fairseq_positions)
      : fairseq(p.gather.fairseq_positions ? fairseq_positions : nullptr),
        ids_batch(p.shape.batch_ndim == 1 ? p.gather.ids.batch_strides[0] : 0),
        positions_batch(p.shape.batch_ndim == 1 ? p.positions.batch_strides[0] : 0) {}

  __device__ int64_t position(const AddPositionalParams& p, int64_t b, int64_t t) const {
    if (fairseq != nullptr) return load_int64_readonly(fairseq + b * p.shape.seq_len + t);
    return p.positions.data == nullptr
               ? p.offset + t
               : load_index_readonly(p.positions, b * positions_batch + t * p.positions.seq_stride);
  }
};

// Values out of range met by a thread's rows.
struct ScatterChecks {
  bool id = false, position = false;

  // After the loop (an assert is a call, kept out of it).
  __device__ void assert_clean() const {
    POSENC_DEVICE_CHECK(!id, "posenc: ids must be in [0, V)");
    POSENC_DEVICE_CHECK(!position,
                        "posenc: positions must be in [0, the table's rows) for kind 'learned'");
  }
};

// Where one row adds: its target row (id or position) and whether it adds nothing (a padding
// token, or a value out of range). Out-of-range values also set `bad`, asserted by the caller
// after its loop (an assert is a call, kept out of the loop); until then such a row adds nothing,
// so that no write leaves its tensor.
template <ScatterTarget kTarget>
__device__ __forceinline__ int64_t scatter_target(const AddPositionalParams& p,
                                                  const ScatterIndices& indices, int64_t b,
                                                  int64_t t, bool& skip, ScatterChecks& bad) {
  const bool gather = p.gather.weight != nullptr;
  int64_t id = 0;
  bool bad_id = false;
  if (gather) {
    id = load_index_readonly(p.gather.ids, b * indices.ids_batch + t * p.gather.ids.seq_stride);
    bad_id = id < 0 || id >= p.gather.vocab;
  }
  // Positions are checked for the weight too, as the general kernel does.
  const int64_t position = indices.position(p, b, t);
  const bool table_target = kTarget == ScatterTarget::kTable;
  const bool bad_position = !position_has_code(p, position) ||
                            (table_target && (position < 0 || position >= p.source.table_rows));
  bad.id = bad.id || bad_id;
  bad.position = bad.position || bad_position;
  skip = bad_id || bad_position || (gather && id == p.gather.padding_idx);
  return table_target ? position : id;
}

// A row's contribution: grad * mask * keep_scale (* scale for the weight), as the CPU computes
// it, in float.
template <typename scalar_t, ScatterTarget kTarget, bool kDropout>
__device__ __forceinline__ Pack8<float> scatter_value(const Pack8<scalar_t>& grad,
                                                      const Dropout& dropout, float scale,
                                                      uint64_t first_element) {
  uint32_t kept = 0xffu;
  if constexpr (kDropout) {
    const Philox4 draws = philox4x32_10(first_element / kDropoutElementsPerCounter, dropout.seed);
    kept = 0;
#pragma unroll
    for (int k = 0; k < kElementsPerThread; ++k) {
      kept |= static_cast<uint32_t>(dropout_draw(draws, k) < dropout.keep_threshold) << k;
    }
  }
  const float keep_scale = static_cast<float>(dropout.keep_scale);
  Pack8<float> value;
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) {
    float g = load_as_acc(&grad.v[k]);
    if constexpr (kDropout) g = (kept >> k) & 1u ? g * keep_scale : 0.0f;
    if constexpr (kTarget == ScatterTarget::kWeight) g *= scale;
    value.v[k] = g;
  }
  return value;
}

// The chunk's grad rows (channels d0 .. d0 + 7 of rows (row_b[r], row_t[r])), their 128-bit
// loads issued together before any is used.
template <int kRows, typename scalar_t>
__device__ __forceinline__ void load_grad_rows(const AddPositionalParams& p, int64_t x_batch,
                                               int64_t d0, const int32_t (&row_b)[kRows],
                                               const int32_t (&row_t)[kRows],
                                               Pack8<scalar_t> (&raw)[kRows]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    raw[r] = load_row(static_cast<const scalar_t*>(p.x.data) + row_b[r] * x_batch +
                      row_t[r] * p.x.seq_stride + d0);
  }
}

// The logical index of element d0 of row (b, t): where its dropout draws start.
__device__ __forceinline__ uint64_t grad_element(int32_t b, int32_t t, int32_t seq_len, int64_t dim,
                                                 int64_t d0) {
  return static_cast<uint64_t>((static_cast<int64_t>(b) * seq_len + t) * dim + d0);
}

// The (b, t) of flat row `row`, and a walk over rows `stride` apart without a division per row.
struct RowWalk {
  int32_t row, b, t;
  int32_t stride, stride_b, stride_t, seq_len;

  __device__ RowWalk(int32_t first, int32_t step, int32_t seq)
      : row(first),
        b(first / seq),
        t(first - (first / seq) * seq),
        stride(step),
        stride_b(step / seq),
        stride_t(step - (step / seq) * seq),
        seq_len(seq) {}

  __device__ void advance() {
    row += stride;
    t += stride_t;
    b += stride_b;
    const bool carry = t >= seq_len;
    t = carry ? t - seq_len : t;
    b = carry ? b + 1 : b;
  }
};

// grid: (row blocks, channel-group blocks); block: (channel groups, rows).
template <typename scalar_t, ScatterTarget kTarget, bool kDropout>
__global__ void POSENC_LAUNCH_BOUNDS(kDenseThreads, kDenseBlocksPerSm)
    scatter_dense_atomic_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                const int64_t* seed, const int64_t* fairseq, float* grad) {
  constexpr int kRows = kDenseRows<scalar_t>;
  const int64_t dim = p.shape.dim;
  const int64_t groups = dim / kElementsPerThread;
  const int32_t seq_len = static_cast<int32_t>(p.shape.seq_len);
  const int32_t rows = static_cast<int32_t>(p.shape.batch_count() * p.shape.seq_len);
  const int64_t x_batch = p.shape.batch_ndim == 1 ? p.x.batch_strides[0] : 0;
  const ScatterIndices indices(p, fairseq);
  Dropout dropout;
  if constexpr (kDropout) dropout = device_dropout(p.dropout, seed);
  const float scale = static_cast<float>(p.scale);
  const int32_t first = static_cast<int32_t>(blockIdx.x * blockDim.y + threadIdx.y);
  const int32_t step = static_cast<int32_t>(gridDim.x * blockDim.y);
  ScatterChecks bad;
  for (int64_t g = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t d0 = g * kElementsPerThread;
    if (first >= rows) break;
    RowWalk walk(first, step, seq_len);
    while (walk.row < rows) {
      int32_t row_b[kRows], row_t[kRows];
      int64_t target[kRows];
      bool skip[kRows];  // past the thread's rows (a repeat of the chunk's first), or padding
      // The chunk's rows; those past the thread's last row repeat its first (loaded, a cache
      // hit, and not added), so that the loads need no branch.
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const bool valid = walk.row < rows;
        row_b[r] = valid ? walk.b : row_b[0];
        row_t[r] = valid ? walk.t : row_t[0];
        walk.advance();
        bool skip_row = false;
        target[r] = scatter_target<kTarget>(p, indices, row_b[r], row_t[r], skip_row, bad);
        skip[r] = !valid || skip_row;
      }
      Pack8<scalar_t> raw[kRows];
      load_grad_rows(p, x_batch, d0, row_b, row_t, raw);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const Pack8<float> value = scatter_value<scalar_t, kTarget, kDropout>(
            raw[r], dropout, scale, grad_element(row_b[r], row_t[r], seq_len, dim, d0));
        if (!skip[r]) atomic_add_row(grad + target[r] * dim + d0, value);
      }
    }
  }
  bad.assert_clean();
}

// The deterministic pass 1 of the dense rows (as scatter_chunks_kernel): grid (chunk blocks,
// channel-group blocks); block (channel groups, chunks). A thread sums its chunk's sorted rows
// for 8 channels, loading kRows rows together.
template <typename scalar_t, ScatterTarget kTarget, bool kDropout>
__global__ void POSENC_LAUNCH_BOUNDS(kDenseThreads, kDenseBlocksPerSm)
    scatter_dense_chunks_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                const int64_t* seed, const int64_t* fairseq,
                                const int64_t* sorted_rows, const int64_t* sorted_targets,
                                float* head, float* tail, float* grad) {
  constexpr int kRows = kDenseRows<scalar_t>;
  const int64_t dim = p.shape.dim;
  const int64_t groups = dim / kElementsPerThread;
  const int32_t seq_len = static_cast<int32_t>(p.shape.seq_len);
  const int32_t rows = static_cast<int32_t>(p.shape.batch_count() * p.shape.seq_len);
  const int32_t chunks = static_cast<int32_t>((rows + kScatterChunk - 1) / kScatterChunk);
  const int64_t x_batch = p.shape.batch_ndim == 1 ? p.x.batch_strides[0] : 0;
  const ScatterIndices indices(p, fairseq);
  Dropout dropout;
  if constexpr (kDropout) dropout = device_dropout(p.dropout, seed);
  const float scale = static_cast<float>(p.scale);
  const int64_t target_rows =
      kTarget == ScatterTarget::kWeight ? p.gather.vocab : p.source.table_rows;
  ScatterChecks bad;
  for (int64_t g = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t d0 = g * kElementsPerThread;
    for (int32_t k = static_cast<int32_t>(blockIdx.x * blockDim.y + threadIdx.y); k < chunks;
         k += static_cast<int32_t>(gridDim.x * blockDim.y)) {
      const int32_t begin = k * static_cast<int32_t>(kScatterChunk);
      const int32_t chunk_end = begin + static_cast<int32_t>(kScatterChunk);
      const int32_t end = chunk_end < rows ? chunk_end : rows;
      // The piece of a segment being summed: its first sorted row and its target.
      int32_t piece_start = begin;
      int64_t piece_target = load_int64_readonly(sorted_targets + begin);
      Pack8<float> sum = {};
      // Writes the piece [piece_start, piece_end): to head[k] if its segment began in an
      // earlier chunk, to tail[k] if it runs past this one, else to grad. (A segment within one
      // chunk is summed by one thread alone, and grad is zero on entry: a store, not an add.)
      auto flush = [&](int32_t piece_end) {
        const bool continues_before =
            piece_start == begin && begin > 0 &&
            load_int64_readonly(sorted_targets + begin - 1) == piece_target;
        const bool continues_after = piece_end == end && end < rows &&
                                     load_int64_readonly(sorted_targets + end) == piece_target;
        if (continues_before) {
          store_row(head + k * dim + d0, sum);
        } else if (continues_after) {
          store_row(tail + k * dim + d0, sum);
        } else if (piece_target >= 0 && piece_target < target_rows) {  // else asserted below
          store_row(grad + piece_target * dim + d0, sum);
        }
      };
      for (int32_t i0 = begin; i0 < end; i0 += kRows) {
        int32_t row_b[kRows], row_t[kRows];
        int64_t row_target[kRows];
        bool skip[kRows];  // padding, or out of range
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int32_t i = i0 + r < end ? i0 + r : i0;
          const int64_t row = load_int64_readonly(sorted_rows + i);
          row_target[r] = load_int64_readonly(sorted_targets + i);
          // The sorted rows come from the binding, in range; a bad one is clamped.
          const int32_t row32 = row >= 0 && row < rows ? static_cast<int32_t>(row) : 0;
          row_b[r] = row32 / seq_len;
          row_t[r] = row32 - row_b[r] * seq_len;
          scatter_target<kTarget>(p, indices, row_b[r], row_t[r], skip[r], bad);
        }
        Pack8<scalar_t> raw[kRows];
        load_grad_rows(p, x_batch, d0, row_b, row_t, raw);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const Pack8<float> value = scatter_value<scalar_t, kTarget, kDropout>(
              raw[r], dropout, scale, grad_element(row_b[r], row_t[r], seq_len, dim, d0));
          if (i0 + r < end) {
            if (row_target[r] != piece_target) {
              flush(i0 + r);
              sum = Pack8<float>{};
              piece_start = i0 + r;
              piece_target = row_target[r];
            }
            if (!skip[r]) {
#pragma unroll
              for (int c = 0; c < kElementsPerThread; ++c) sum.v[c] += value.v[c];
            }
          }
        }
      }
      flush(end);
    }
  }
  bad.assert_clean();
}

// The dense scatters' grid: lanes over channel groups, a block's rows over `row_items` (rows
// for the atomic scatter, chunks for the deterministic one) with at least `per_thread` items a
// thread (a chunk of rows in flight), at most a few waves of the GPU's resident blocks.
struct ScatterDenseGrid {
  dim3 blocks, threads;
};

ScatterDenseGrid scatter_dense_grid(int64_t dim, int64_t row_items, int64_t per_thread) {
  const int64_t groups = dim / kElementsPerThread;
  const int64_t lanes = groups >= kDenseThreads ? kDenseThreads : (groups + 31) / 32 * 32;
  ScatterDenseGrid grid;
  grid.threads =
      dim3(static_cast<unsigned int>(lanes), static_cast<unsigned int>(kDenseThreads / lanes));
  const int64_t group_blocks = blocks_for(groups, lanes, max_grid_yz());
  const int64_t resident = static_cast<int64_t>(multiprocessors()) * kDenseBlocksPerSm;
  const int64_t waves = 4 * resident / group_blocks;
  const int64_t per_block = grid.threads.y * per_thread;
  const int64_t row_blocks = (row_items + per_block - 1) / per_block;
  grid.blocks =
      dim3(blocks_for(row_blocks < waves ? row_blocks : (waves > 0 ? waves : 1), 1, max_grid_x()),
           static_cast<unsigned int>(group_blocks));
  return grid;
}

// f(scalar tag, target tag, dropout tag) for the dense instantiations.
template <typename F>
int dispatch_scatter_dense(const AddPositionalParams& params, ScatterTarget target, F&& f) {
  return dispatch_dense_dtype(params.dtype, [&](auto tag) {
    auto with_target = [&](auto target_tag) {
      return params.dropout.active ? f(tag, target_tag, std::true_type())
                                   : f(tag, target_tag, std::false_type());
    };
    return target == ScatterTarget::kWeight
               ? with_target(std::integral_constant<ScatterTarget, ScatterTarget::kWeight>())
               : with_target(std::integral_constant<ScatterTarget, ScatterTarget::kTable>());
  });
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
  if (scatter_dense_rows(params, grad)) {
    const int64_t chunk_rows =
        dispatch_dense_dtype(params.dtype, [](auto tag) { return kDenseRows<decltype(tag)>; });
    const ScatterDenseGrid grid = scatter_dense_grid(params.shape.dim, rows, chunk_rows);
    return dispatch_scatter_dense(params, target, [&](auto tag, auto target_tag, auto dropout) {
      POSENC_LAUNCH((scatter_dense_atomic_kernel<decltype(tag), decltype(target_tag)::value,
                                                 decltype(dropout)::value>),
                    grid.blocks, grid.threads, 0, stream, params, seed, fairseq_positions,
                    static_cast<float*>(grad));
      return launch_status();
    });
  }
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
  const bool dense = scatter_dense_rows(params, grad);
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc = acc_t<scalar_t>;
    acc* head = static_cast<acc*>(workspace);
    acc* tail = head + chunks * params.shape.dim;
    if (dense) {
      const ScatterDenseGrid dense_grid = scatter_dense_grid(params.shape.dim, chunks, 1);
      const int status = dispatch_scatter_dense(
          params, target, [&](auto dense_tag, auto target_tag, auto dropout) {
            POSENC_LAUNCH(
                (scatter_dense_chunks_kernel<decltype(dense_tag), decltype(target_tag)::value,
                                             decltype(dropout)::value>),
                dense_grid.blocks, dense_grid.threads, 0, stream, params, seed, fairseq_positions,
                sorted_rows, sorted_targets, reinterpret_cast<float*>(head),
                reinterpret_cast<float*>(tail), static_cast<float*>(grad));
            return launch_status();
          });
      if (status != 0) return status;
    } else {
      POSENC_LAUNCH(scatter_chunks_kernel<scalar_t>, grid, kThreads, 0, stream, params, input,
                    target, seed, fairseq_positions, channels, sorted_rows, sorted_targets, rows,
                    head, tail, static_cast<acc*>(grad));
    }
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
