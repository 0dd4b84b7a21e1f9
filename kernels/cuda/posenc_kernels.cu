// CUDA kernels of every posenc operator. No torch headers: the binding (csrc/ops_cuda.cpp)
// validates, allocates and calls the launchers declared in cuda_launch.h on its current stream.
// The math (exact angle reduction, channel codes, Philox dropout, indexing) is the CPU kernels'
// shared host/device code, so both backends compute the same values and the same masks.
//
// The same source also compiles as host C++ and runs under the CUDA emulation of
// cuda/emulation.h (kernels/cuda/emulated.cpp; the CudaEmulated* GoogleTests). So the kernels
// keep to this subset: blockIdx/threadIdx/blockDim/gridDim; dynamic shared memory through
// POSENC_DYNAMIC_SHARED (no static __shared__ arrays); __syncthreads reached by every thread
// that has not returned, in kernels launched with POSENC_LAUNCH_SYNC; atomicAdd on float and double; launches through POSENC_LAUNCH; grids
// planned with max_grid_x()/max_grid_yz() and walked with grid-stride loops; device-only
// intrinsics behind __CUDA_ARCH__ with a host twin. No warp intrinsics, no cooperative groups.
#include "cuda/cuda_compat.h"

#include <cstdint>

#include "angle.h"
#include "common.h"
#include "cuda_launch.h"
#include "philox.h"
#include "position_code.h"
#include "positional.h"
#include "rotary.h"
#include "rows.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

constexpr int kThreads = 256;
constexpr int kElementsPerThread = 8;  // one Philox counter covers 8 dropout draws
constexpr int kMaxBatchBlocks = 64;
constexpr int64_t kScatterChunk = 64;
constexpr int kScanThreads = 128;  // steps of T a block scans at a time (fairseq positions)  // sorted rows a thread sums in the deterministic scatter

int launch_status() { return static_cast<int>(cudaGetLastError()); }

__device__ Dropout device_dropout(const Dropout& dropout, const int64_t* seed) {
  Dropout d = dropout;
  if (d.active) d.seed = static_cast<uint64_t>(*seed);
  return d;
}

__device__ StridedIndex resolved_positions(const AddPositionalParams& p,
                                           const int64_t* fairseq_positions) {
  return p.gather.fairseq_positions ? dense_index(p.shape, fairseq_positions) : p.positions;
}

// PE(position)[d] for a computed kind (code precomputed) or the learned table.
template <typename scalar_t>
__device__ acc_t<scalar_t> code_value(const PositionSource& source, const ChannelCode& code,
                                      int64_t position, int64_t d) {
  using acc = acc_t<scalar_t>;
  if (source.kind == PositionKind::kLearned) {
    return load_as_acc(static_cast<const scalar_t*>(source.table) +
                       position * source.table_row_stride + d * source.table_dim_stride);
  }
  return evaluate_channel<acc>(code, position);
}

// Device-side checks of the values the kernels index with (the binding checks shapes and host
// values; reading ids or positions on the host would synchronise).

// The input row of (b, t), with a gathered id checked against the vocabulary.
template <typename scalar_t>
__device__ InputRow<scalar_t> checked_input_row(const AddPositionalParams& p, const StridedRows& x,
                                                int64_t b, int64_t t) {
  if (p.gather.weight != nullptr) {
    const int64_t id = index_at(p.shape, p.gather.ids, b, t);
    POSENC_DEVICE_CHECK(id >= 0 && id < p.gather.vocab, "posenc: ids must be in [0, V)");
  }
  return input_row<scalar_t>(p, x, b, t);
}

// The position of (b, t), checked: >= 0, and inside the table for kind "learned".
__device__ int64_t checked_position(const AddPositionalParams& p, const StridedIndex& positions,
                                    int64_t b, int64_t t) {
  const int64_t position = position_at(p.shape, positions, p.offset, b, t);
  POSENC_DEVICE_CHECK(position >= 0, "posenc: positions must be >= 0");
  POSENC_DEVICE_CHECK(p.source.kind != PositionKind::kLearned || position < p.source.table_rows,
                      "posenc: positions must be < the table's rows");
  return position;
}

template <typename acc>
__device__ acc combine_value(Combine combine, acc scale, acc x, acc pe) {
  switch (combine) {
    case Combine::kAdd:
      return scale * x + pe;
    case Combine::kMul:
      return (scale * x) * pe;
    case Combine::kScaleOnly:
      return scale * x;
    case Combine::kPositionOnly:
      return pe;
  }
  return x;
}

// ---- add_positional / embedding forward ---------------------------------------------------------
// grid: (T, channel blocks, batch blocks). Each thread owns 8 consecutive channels of one step t:
// it evaluates their codes once and reuses them for every batch row when positions do not depend
// on the batch index, and draws their dropout masks with at most two Philox calls.
template <typename scalar_t>
__global__ void add_positional_kernel(AddPositionalParams p, const int64_t* seed,
                                      const int64_t* fairseq) {
  using acc = acc_t<scalar_t>;
  const int64_t seq_len = p.shape.seq_len;
  const int64_t dim = p.shape.dim;
  const int64_t batch = p.shape.batch_count();
  const bool needs_code = p.combine != Combine::kScaleOnly;
  const StridedIndex positions = resolved_positions(p, fairseq);
  const bool shared = shared_across_batch(p.shape, positions);
  const Dropout dropout = device_dropout(p.dropout, seed);
  const acc scale = static_cast<acc>(p.scale);
  const int64_t channel_step = static_cast<int64_t>(gridDim.y) * blockDim.x * kElementsPerThread;
  for (int64_t d0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) *
                    kElementsPerThread;
       d0 < dim; d0 += channel_step) {
  const int count = static_cast<int>(dim - d0 < kElementsPerThread ? dim - d0 : kElementsPerThread);
  ChannelCode codes[kElementsPerThread];
  if (needs_code && p.source.kind != PositionKind::kLearned) {
    for (int k = 0; k < count; ++k) codes[k] = channel_code(p.source.code, dim, d0 + k);
  }
  for (int64_t t = blockIdx.x; t < seq_len; t += gridDim.x) {
  acc pe[kElementsPerThread];
  int64_t pe_position = -1;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const InputRow<scalar_t> in = checked_input_row<scalar_t>(p, p.x, b, t);
    const bool with_code = needs_code && !in.padding;
    if (with_code) {
      const int64_t position = checked_position(p, positions, shared ? 0 : b, t);
      if (position != pe_position) {
        for (int k = 0; k < count; ++k) {
          pe[k] = code_value<scalar_t>(p.source, codes[k], position, d0 + k);
        }
        pe_position = position;
      }
    }
    const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim + d0);
    Philox4 draws_low, draws_high;
    if (dropout.active) {
      draws_low = philox4x32_10(first / kDropoutElementsPerCounter, dropout.seed);
      draws_high = philox4x32_10((first + count - 1) / kDropoutElementsPerCounter, dropout.seed);
    }
    scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(p.out.data)) +
                    batch_offset(p.shape, p.out.batch_strides, b) + t * p.out.seq_stride;
    const Combine combine = with_code ? p.combine : Combine::kScaleOnly;
    for (int k = 0; k < count; ++k) {
      const int64_t d = d0 + k;
      const acc x = in.data != nullptr ? load_as_acc(in.data + d * in.stride) : acc(0);
      acc y = combine_value(combine, scale, x, with_code ? pe[k] : acc(0));
      if (dropout.active) {
        const uint64_t index = first + k;
        const bool low = index / kDropoutElementsPerCounter == first / kDropoutElementsPerCounter;
        const uint32_t draw = dropout_draw(low ? draws_low : draws_high,
                                           static_cast<int>(index % kDropoutElementsPerCounter));
        y = draw < dropout.keep_threshold ? y * static_cast<acc>(dropout.keep_scale) : acc(0);
      }
      store_from_acc(out + d * p.out.dim_stride, y);
    }
  }
  }  // t
  }  // d0
}

// fairseq's make_positions (see fairseq_positions_row) as a parallel scan: a block per batch row
// counts the non-pad tokens of blockDim steps at a time with a scan in shared memory
// (blockDim int64 counts), carrying the running total from tile to tile.
__global__ void fairseq_positions_kernel(AddPositionalParams p, int64_t* out) {
  POSENC_DYNAMIC_SHARED(int64_t, counts);
  const int64_t batch = p.shape.batch_count();
  const int64_t seq_len = p.shape.seq_len;
  const int64_t threads = blockDim.x;
  const int64_t tid = threadIdx.x;
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    int64_t carry = 0;
    for (int64_t tile = 0; tile < seq_len; tile += threads) {
      const int64_t t = tile + tid;
      const bool pad = t >= seq_len || index_at(p.shape, p.gather.ids, b, t) == p.gather.padding_idx;
      counts[tid] = pad ? 0 : 1;
      __syncthreads();
      for (int64_t step = 1; step < threads; step *= 2) {  // inclusive scan (Hillis-Steele)
        const int64_t add = tid >= step ? counts[tid - step] : 0;
        __syncthreads();
        counts[tid] += add;
        __syncthreads();
      }
      if (t < seq_len) {
        out[b * seq_len + t] =
            pad ? p.gather.padding_idx : p.gather.padding_idx + carry + counts[tid];
      }
      carry += counts[threads - 1];
      __syncthreads();  // the next tile overwrites counts
    }
  }
}

// ---- backward scatter ---------------------------------------------------------------------------
// The contribution of grad[b, t, d] to its target row, or false when it contributes nothing.
template <typename scalar_t>
__device__ bool contribution(const AddPositionalParams& p, const StridedRows& input,
                             ScatterTarget target, const Dropout& dropout,
                             const StridedIndex& positions, int64_t b, int64_t t, int64_t d,
                             int64_t* target_row, acc_t<scalar_t>* value) {
  using acc = acc_t<scalar_t>;
  const bool multiply = p.combine == Combine::kMul;
  const acc scale = static_cast<acc>(p.scale);
  const scalar_t* grad = static_cast<const scalar_t*>(p.x.data) +
                         batch_offset(p.shape, p.x.batch_strides, b) + t * p.x.seq_stride;
  acc g = load_as_acc(grad + d * p.x.dim_stride);
  const uint64_t index = static_cast<uint64_t>((b * p.shape.seq_len + t) * p.shape.dim + d);
  g *= dropout_multiplier<acc>(dropout, index);
  const int64_t position = checked_position(p, positions, b, t);
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
    if (multiply) {
      g *= code_value<scalar_t>(p.source, channel_code(p.source.code, p.shape.dim, d), position, d);
    }
    *target_row = id;
  }
  *value = g;
  return true;
}

__device__ void atomic_add(float* address, float value) { atomicAdd(address, value); }
__device__ void atomic_add(double* address, double value) { atomicAdd(address, value); }

// grid: (rows = batch * T, channel blocks)
template <typename scalar_t>
__global__ void scatter_atomic_kernel(AddPositionalParams p, StridedRows input,
                                      ScatterTarget target, const int64_t* seed,
                                      const int64_t* fairseq, acc_t<scalar_t>* grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = p.shape.batch_count() * p.shape.seq_len;
  const Dropout dropout = device_dropout(p.dropout, seed);
  const StridedIndex positions = resolved_positions(p, fairseq);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / p.shape.seq_len;
    const int64_t t = row % p.shape.seq_len;
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
         d < p.shape.dim; d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      int64_t target_row;
      acc value;
      if (contribution<scalar_t>(p, input, target, dropout, positions, b, t, d, &target_row,
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
__global__ void scatter_chunks_kernel(AddPositionalParams p, StridedRows input,
                                      ScatterTarget target, const int64_t* seed,
                                      const int64_t* fairseq, const int64_t* sorted_rows,
                                      const int64_t* sorted_targets, int64_t rows,
                                      acc_t<scalar_t>* head, acc_t<scalar_t>* tail,
                                      acc_t<scalar_t>* grad) {
  using acc = acc_t<scalar_t>;
  const Dropout dropout = device_dropout(p.dropout, seed);
  const StridedIndex positions = resolved_positions(p, fairseq);
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
        int64_t target_row;
        acc value;
        if (contribution<scalar_t>(p, input, target, dropout, positions, row / p.shape.seq_len,
                                   row % p.shape.seq_len, d, &target_row, &value)) {
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

// ---- rotary -------------------------------------------------------------------------------------
// grid: tokens. The block evaluates cos/sin of the token's r/2 angles once into shared memory,
// then rotates every head of every operand.
template <typename scalar_t>
__global__ void rotary_kernel(RotaryParams p, const double* inv_freq, double base) {
  using acc = acc_t<scalar_t>;
  POSENC_DYNAMIC_SHARED(acc, cosines);
  const int64_t half = p.rotary_dim / 2;
  acc* sines = cosines + half;
  const acc factor = static_cast<acc>(p.attention_factor);
  const acc sign = p.inverse ? acc(-1) : acc(1);
  const int64_t pass = p.head_dim - p.rotary_dim;
  const int64_t tokens = p.batch * p.seq_len;
  for (int64_t token = blockIdx.x; token < tokens; token += gridDim.x) {
    const int64_t b = token / p.seq_len;
    const int64_t s = token % p.seq_len;
    const int64_t position = rotary_token_position(p, b, s);
    POSENC_DEVICE_CHECK(position >= 0, "posenc.rotary: positions must be >= 0");
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      const double w =
          inv_freq != nullptr ? inv_freq[i] : default_rotary_frequency(i, p.rotary_dim, base);
      const SinCos<acc> sc =
          rotary_sincos<acc>(turn_frequency_from_radians(w), p.float32_frequencies, i, position);
      cosines[i] = factor * sc.cos;
      sines[i] = sign * factor * sc.sin;
    }
    __syncthreads();
    for (int k = 0; k < p.operand_count; ++k) {
      const RotaryOperand& op = p.operands[k];
      const scalar_t* in = static_cast<const scalar_t*>(op.in) + b * op.in_strides[0] +
                           s * op.in_strides[1];
      scalar_t* out =
          static_cast<scalar_t*>(op.out) + b * op.out_strides[0] + s * op.out_strides[1];
      const int64_t per_head = half + pass;
      for (int64_t item = threadIdx.x; item < op.heads * per_head; item += blockDim.x) {
        const int64_t h = item / per_head;
        const int64_t j = item % per_head;
        const scalar_t* x = in + h * op.in_strides[2];
        scalar_t* y = out + h * op.out_strides[2];
        if (j < half) {
          const int64_t first = p.interleaved ? 2 * j : j;
          const int64_t second = p.interleaved ? 2 * j + 1 : j + half;
          const acc x1 = load_as_acc(x + first * op.in_strides[3]);
          const acc x2 = load_as_acc(x + second * op.in_strides[3]);
          store_from_acc(y + first * op.out_strides[3], x1 * cosines[j] - x2 * sines[j]);
          store_from_acc(y + second * op.out_strides[3], x2 * cosines[j] + x1 * sines[j]);
        } else {
          const int64_t d = p.rotary_dim + (j - half);
          y[d * op.out_strides[3]] = x[d * op.in_strides[3]];
        }
      }
    }
    __syncthreads();  // the next token overwrites cosines and sines
  }
}

// Checks cu_seqlens (from 0, non-decreasing, ending at the token count) and offsets (>= 0, and
// offset + offsets + the sequence's length - 1 within int64) on the device.
__global__ void rotary_check_kernel(RotaryParams p) {
  const int64_t sequences = p.cu_seqlens != nullptr ? p.sequences : p.batch;
  const int64_t int64_max = 9223372036854775807LL;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < sequences;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t length = p.seq_len;
    if (p.cu_seqlens != nullptr) {
      const int64_t start = load_index(p.cu_seqlens, p.cu_seqlens_type, j);
      const int64_t end = load_index(p.cu_seqlens, p.cu_seqlens_type, j + 1);
      POSENC_DEVICE_CHECK(j != 0 || start == 0, "posenc.rotary: cu_seqlens must start at 0");
      POSENC_DEVICE_CHECK(end >= start, "posenc.rotary: cu_seqlens must be non-decreasing");
      POSENC_DEVICE_CHECK(j != sequences - 1 || end == p.seq_len,
                          "posenc.rotary: cu_seqlens must end at the token count");
      length = end - start;
    }
    if (p.offsets != nullptr && p.positions == nullptr) {
      const int64_t offset = load_index(p.offsets, p.offsets_type, j);
      POSENC_DEVICE_CHECK(offset >= 0, "posenc.rotary: offsets must be >= 0");
      POSENC_DEVICE_CHECK(length == 0 || offset <= int64_max - p.offset - (length - 1),
                          "posenc.rotary: offset + offsets + sequence length overflows int64");
    }
  }
}

// grid-stride over (row, pair) of one operand with given cos/sin tables.
template <typename scalar_t>
__global__ void rotary_tables_kernel(RotaryTableParams p, int operand_index, int64_t rows) {
  using acc = acc_t<scalar_t>;
  const RotaryTableOperand& op = p.operands[operand_index];
  const int last = op.ndim - 1;
  const int64_t dim = op.sizes[last];
  const int64_t half = dim / 2;
  const int64_t total = rows * half;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = item % half;
    const RotaryTableRow offsets = rotary_table_row(op, item / half);
    const scalar_t* cos_row = static_cast<const scalar_t*>(p.cos) + offsets.cos;
    const scalar_t* sin_row = static_cast<const scalar_t*>(p.sin) + offsets.sin;
    const acc cos_lo = load_as_acc(cos_row + i * op.cos_strides[last]);
    const acc cos_hi = load_as_acc(cos_row + (i + half) * op.cos_strides[last]);
    const acc s_lo = load_as_acc(sin_row + i * op.sin_strides[last]);
    const acc s_hi = load_as_acc(sin_row + (i + half) * op.sin_strides[last]);
    // The transpose maps (sin_lo, sin_hi) to (-sin_hi, -sin_lo), as on the CPU.
    const acc sin_lo = p.transpose ? -s_hi : s_lo;
    const acc sin_hi = p.transpose ? -s_lo : s_hi;
    const scalar_t* x = static_cast<const scalar_t*>(op.in) + offsets.in;
    scalar_t* y = static_cast<scalar_t*>(op.out) + offsets.out;
    const acc x1 = load_as_acc(x + i * op.in_strides[last]);
    const acc x2 = load_as_acc(x + (i + half) * op.in_strides[last]);
    store_from_acc(y + i * op.out_strides[last], x1 * cos_lo - x2 * sin_lo);
    store_from_acc(y + (i + half) * op.out_strides[last], x2 * cos_hi + x1 * sin_hi);
  }
}

// Blocks for `work` items (or `threads` items a block), at most `limit`: kernels walk the rest
// with grid-stride loops.
unsigned int blocks_for(int64_t work, int64_t per_block, unsigned int limit) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > limit ? limit : blocks));
}

}  // namespace

int add_positional(const AddPositionalParams& params, const int64_t* seed,
                   int64_t* fairseq_workspace, void* stream) {
  const int64_t batch = params.shape.batch_count();
  if (batch == 0 || params.shape.seq_len == 0 || params.shape.dim == 0) return 0;
  if (params.gather.fairseq_positions) {
    const int status = fairseq_positions(params, fairseq_workspace, stream);
    if (status != 0) return status;
  }
  const unsigned int batch_blocks = blocks_for(batch, 1, kMaxBatchBlocks);
  const dim3 grid(blocks_for(params.shape.seq_len, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads * kElementsPerThread, max_grid_yz()),
                  batch_blocks < max_grid_yz() ? batch_blocks : max_grid_yz());
  return dispatch_dtype(params.dtype, [&](auto tag) {
    POSENC_LAUNCH(add_positional_kernel<decltype(tag)>, grid, kThreads, 0, stream, params, seed,
                  fairseq_workspace);
    return launch_status();
  });
}

int fairseq_positions(const AddPositionalParams& params, int64_t* fairseq_workspace,
                      void* stream) {
  const int64_t batch = params.shape.batch_count();
  if (batch == 0) return 0;
  POSENC_LAUNCH_SYNC(fairseq_positions_kernel, blocks_for(batch, 1, max_grid_x()), kScanThreads,
                     kScanThreads * sizeof(int64_t), stream, params, fairseq_workspace);
  return launch_status();
}

int scatter_backward_atomic(const AddPositionalParams& params, const StridedRows& input,
                            ScatterTarget target, const int64_t* seed,
                            const int64_t* fairseq_positions, void* grad, void* stream) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  if (rows == 0 || params.shape.dim == 0) return 0;
  const dim3 grid(blocks_for(rows, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads, max_grid_yz()));
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    POSENC_LAUNCH(scatter_atomic_kernel<scalar_t>, grid, kThreads, 0, stream, params, input,
                  target, seed, fairseq_positions, static_cast<acc_t<scalar_t>*>(grad));
    return launch_status();
  });
}

int64_t deterministic_workspace_elements(const AddPositionalParams& params) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  return 2 * ((rows + kScatterChunk - 1) / kScatterChunk) * params.shape.dim;
}

int scatter_backward_deterministic(const AddPositionalParams& params, const StridedRows& input,
                                   ScatterTarget target, const int64_t* seed,
                                   const int64_t* fairseq_positions, const int64_t* sorted_rows,
                                   const int64_t* sorted_targets, void* workspace, void* grad,
                                   void* stream) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  if (rows == 0 || params.shape.dim == 0) return 0;
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  const dim3 grid(blocks_for(chunks, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads, max_grid_yz()));
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc = acc_t<scalar_t>;
    acc* head = static_cast<acc*>(workspace);
    acc* tail = head + chunks * params.shape.dim;
    POSENC_LAUNCH(scatter_chunks_kernel<scalar_t>, grid, kThreads, 0, stream, params, input,
                  target, seed, fairseq_positions, sorted_rows, sorted_targets, rows, head, tail,
                  static_cast<acc*>(grad));
    const int status = launch_status();
    if (status != 0) return status;
    POSENC_LAUNCH(scatter_join_kernel<acc>, grid, kThreads, 0, stream, sorted_targets, rows,
                  params.shape.dim, head, tail, static_cast<acc*>(grad));
    return launch_status();
  });
}

int rotary(const RotaryParams& params, const double* inv_freq, double base, void* stream) {
  const int64_t tokens = params.batch * params.seq_len;
  if (tokens == 0 || params.head_dim == 0) return 0;
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const size_t shared_bytes = sizeof(acc_t<scalar_t>) * static_cast<size_t>(params.rotary_dim);
    if (params.cu_seqlens != nullptr || params.offsets != nullptr) {
      const int64_t sequences = params.cu_seqlens != nullptr ? params.sequences : params.batch;
      POSENC_LAUNCH(rotary_check_kernel, blocks_for(sequences, kThreads, max_grid_x()), kThreads,
                    0, stream, params);
      const int status = launch_status();
      if (status != 0) return status;
    }
    POSENC_LAUNCH_SYNC(rotary_kernel<scalar_t>, blocks_for(tokens, 1, max_grid_x()), 128,
                  shared_bytes, stream, params, inv_freq, base);
    return launch_status();
  });
}

int rotary_tables(const RotaryTableParams& params, void* stream) {
  for (int k = 0; k < params.operand_count; ++k) {
    const RotaryTableOperand& op = params.operands[k];
    int64_t rows = 1;
    for (int axis = 0; axis + 1 < op.ndim; ++axis) rows *= op.sizes[axis];
    const int64_t work = rows * (op.sizes[op.ndim - 1] / 2);
    if (work == 0) continue;
    const int status = dispatch_dtype(params.dtype, [&](auto tag) {
      POSENC_LAUNCH(rotary_tables_kernel<decltype(tag)>, blocks_for(work, kThreads, max_grid_x()),
                    kThreads, 0, stream, params, k, rows);
      return launch_status();
    });
    if (status != 0) return status;
  }
  return 0;
}

const char* error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
