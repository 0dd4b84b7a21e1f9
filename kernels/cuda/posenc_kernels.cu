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
// intrinsics (16-byte vector memory operations, hardware fp16/bf16 conversion) behind
// __CUDA_ARCH__ with a host twin; values the kernels index with checked by POSENC_DEVICE_CHECK.
// No warp intrinsics, no cooperative groups, no static __shared__ arrays.
//
// Bandwidth by design: per-channel codes and rotary frequency splits are computed once per launch
// into a device table (no double-precision transcendentals per element); a thread owns 8
// consecutive channels, moves them with 16-byte loads and stores when the row allows it, and
// walks many steps and batch rows with them; no 64-bit division in the per-element loops.
#include "cuda/cuda_compat.h"

#include <cstdint>
#include <cstring>

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
constexpr unsigned int kMaxStepBlocks = 1024;  // threads walk the remaining steps
constexpr int64_t kScatterChunk = 64;  // sorted rows a thread sums in the deterministic scatter
constexpr int kScanThreads = 128;      // steps of T a block scans at a time (fairseq positions)
constexpr int64_t kRotaryChunkPairs = 1024;  // cos/sin of this many pairs in shared memory
constexpr int kVectorBytes = 16;

int launch_status() { return static_cast<int>(cudaGetLastError()); }

// Workspace layout: consecutive regions, each aligned to 16 bytes.
int64_t aligned_bytes(int64_t bytes) { return (bytes + 15) / 16 * 16; }

__device__ Dropout device_dropout(const Dropout& dropout, const int64_t* seed) {
  Dropout d = dropout;
  if (d.active) d.seed = static_cast<uint64_t>(*seed);
  return d;
}

__device__ StridedIndex resolved_positions(const AddPositionalParams& p,
                                           const int64_t* fairseq_positions) {
  return p.gather.fairseq_positions ? dense_index(p.shape, fairseq_positions) : p.positions;
}

// ---- 16-byte vector memory operations --------------------------------------------------------

__device__ void copy_vectors(void* destination, const void* source, int bytes) {
#if defined(__CUDA_ARCH__)
  for (int i = 0; i < bytes / kVectorBytes; ++i) {
    reinterpret_cast<uint4*>(destination)[i] = reinterpret_cast<const uint4*>(source)[i];
  }
#else
  std::memcpy(destination, source, static_cast<size_t>(bytes));
#endif
}

// Whether 8 elements from `p` with unit stride can move as 16-byte vectors.
template <typename scalar_t>
__device__ bool vector_row(const scalar_t* p, int64_t stride) {
  return stride == 1 && reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

template <typename scalar_t>
__device__ void load8(const scalar_t* p, acc_t<scalar_t>* out) {
  alignas(kVectorBytes) scalar_t raw[kElementsPerThread];
  copy_vectors(raw, p, sizeof(raw));
  for (int k = 0; k < kElementsPerThread; ++k) out[k] = load_as_acc(raw + k);
}

template <typename scalar_t>
__device__ void store8(scalar_t* p, const acc_t<scalar_t>* values) {
  alignas(kVectorBytes) scalar_t raw[kElementsPerThread];
  for (int k = 0; k < kElementsPerThread; ++k) store_from_acc(raw + k, values[k]);
  copy_vectors(p, raw, sizeof(raw));
}

// ---- device-side value checks -----------------------------------------------------------------
// The binding checks shapes and host values; reading ids or positions on the host would
// synchronise, so the kernels check them where they use them.

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

// PE(position)[d] from the channel table (computed kinds) or the learned table.
template <typename scalar_t>
__device__ acc_t<scalar_t> code_value(const PositionSource& source, const ChannelCode* channels,
                                      int64_t position, int64_t d) {
  using acc = acc_t<scalar_t>;
  if (source.kind == PositionKind::kLearned) {
    return load_as_acc(static_cast<const scalar_t*>(source.table) +
                       position * source.table_row_stride + d * source.table_dim_stride);
  }
  return evaluate_channel<acc>(channels[d], position);
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

// The per-channel codes of a computed kind, once per launch: out[d] for d < dim.
__global__ void channel_codes_kernel(PositionCodeOptions code, int64_t dim, ChannelCode* out) {
  for (int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; d < dim;
       d += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[d] = channel_code(code, dim, d);
  }
}

// ---- add_positional / embedding forward ---------------------------------------------------------
// grid: (step blocks, channel blocks, batch blocks), block: kThreads. A thread owns 8 consecutive
// channels and walks steps t and batch rows b with them: their codes are read once from the
// channel table, PE values are reused across batch rows when positions do not depend on the
// batch index, the 8 dropout draws come from at most two Philox calls, and rows move as 16-byte
// vectors when contiguous and aligned.
template <typename scalar_t>
__global__ void add_positional_kernel(AddPositionalParams p, const int64_t* seed,
                                      const ChannelCode* channels, const int64_t* fairseq) {
  using acc = acc_t<scalar_t>;
  const int64_t seq_len = p.shape.seq_len;
  const int64_t dim = p.shape.dim;
  const int64_t batch = p.shape.batch_count();
  const bool needs_code = p.combine != Combine::kScaleOnly;
  const StridedIndex positions = resolved_positions(p, fairseq);
  const bool shared = shared_across_batch(p.shape, positions);
  const Dropout dropout = device_dropout(p.dropout, seed);
  const acc scale = static_cast<acc>(p.scale);
  const acc keep_scale = static_cast<acc>(dropout.keep_scale);
  const int64_t channel_step = static_cast<int64_t>(gridDim.y) * blockDim.x * kElementsPerThread;
  for (int64_t d0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) *
                    kElementsPerThread;
       d0 < dim; d0 += channel_step) {
    const int count =
        static_cast<int>(dim - d0 < kElementsPerThread ? dim - d0 : kElementsPerThread);
    ChannelCode codes[kElementsPerThread];
    if (needs_code && p.source.kind != PositionKind::kLearned) {
      for (int k = 0; k < count; ++k) codes[k] = channels[d0 + k];
    }
    for (int64_t t = blockIdx.x; t < seq_len; t += gridDim.x) {
      acc pe[kElementsPerThread] = {};
      int64_t pe_position = -1;
      for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
        const InputRow<scalar_t> in = checked_input_row<scalar_t>(p, p.x, b, t);
        const bool with_code = needs_code && !in.padding;
        if (with_code) {
          const int64_t position = checked_position(p, positions, shared ? 0 : b, t);
          if (position != pe_position) {
            for (int k = 0; k < count; ++k) {
              pe[k] = p.source.kind == PositionKind::kLearned
                          ? code_value<scalar_t>(p.source, nullptr, position, d0 + k)
                          : evaluate_channel<acc>(codes[k], position);
            }
            pe_position = position;
          }
        }
        acc values[kElementsPerThread] = {};
        if (in.data != nullptr) {
          if (count == kElementsPerThread && vector_row(in.data + d0, in.stride)) {
            load8(in.data + d0, values);
          } else {
            for (int k = 0; k < count; ++k) values[k] = load_as_acc(in.data + (d0 + k) * in.stride);
          }
        }
        const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim + d0);
        Philox4 draws_low, draws_high;
        if (dropout.active) {
          draws_low = philox4x32_10(first / kDropoutElementsPerCounter, dropout.seed);
          draws_high =
              philox4x32_10((first + count - 1) / kDropoutElementsPerCounter, dropout.seed);
        }
        const Combine combine = with_code ? p.combine : Combine::kScaleOnly;
        for (int k = 0; k < count; ++k) {
          acc y = combine_value(combine, scale, values[k], with_code ? pe[k] : acc(0));
          if (dropout.active) {
            const uint64_t index = first + k;
            const bool low =
                index / kDropoutElementsPerCounter == first / kDropoutElementsPerCounter;
            const uint32_t draw = dropout_draw(
                low ? draws_low : draws_high, static_cast<int>(index % kDropoutElementsPerCounter));
            y = draw < dropout.keep_threshold ? y * keep_scale : acc(0);
          }
          values[k] = y;
        }
        scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(p.out.data)) +
                        batch_offset(p.shape, p.out.batch_strides, b) + t * p.out.seq_stride;
        if (count == kElementsPerThread && vector_row(out + d0, p.out.dim_stride)) {
          store8(out + d0, values);
        } else {
          for (int k = 0; k < count; ++k) store_from_acc(out + (d0 + k) * p.out.dim_stride, values[k]);
        }
      }
    }
  }
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
      const bool pad =
          t >= seq_len || index_at(p.shape, p.gather.ids, b, t) == p.gather.padding_idx;
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
                             const StridedIndex& positions, const ChannelCode* channels,
                             int64_t b, int64_t t, int64_t d, int64_t* target_row,
                             acc_t<scalar_t>* value) {
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
__global__ void scatter_atomic_kernel(AddPositionalParams p, StridedRows input,
                                      ScatterTarget target, const int64_t* seed,
                                      const int64_t* fairseq, const ChannelCode* channels,
                                      acc_t<scalar_t>* grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = p.shape.batch_count() * p.shape.seq_len;
  const Dropout dropout = device_dropout(p.dropout, seed);
  const StridedIndex positions = resolved_positions(p, fairseq);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / p.shape.seq_len;
    const int64_t t = row - b * p.shape.seq_len;
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
         d < p.shape.dim; d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      int64_t target_row;
      acc value;
      if (contribution<scalar_t>(p, input, target, dropout, positions, channels, b, t, d,
                                 &target_row, &value)) {
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
                                      const int64_t* fairseq, const ChannelCode* channels,
                                      const int64_t* sorted_rows, const int64_t* sorted_targets,
                                      int64_t rows, acc_t<scalar_t>* head, acc_t<scalar_t>* tail,
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
        const int64_t b = row / p.shape.seq_len;
        int64_t target_row;
        acc value;
        if (contribution<scalar_t>(p, input, target, dropout, positions, channels, b,
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

// ---- rotary -------------------------------------------------------------------------------------

// The frequency splits of the launch, once: out[i] for i < rotary_dim / 2.
__global__ void rotary_frequencies_kernel(RotaryParams p, const double* inv_freq, double base,
                                          TurnFrequency* out) {
  const int64_t half = p.rotary_dim / 2;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < half;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double w =
        inv_freq != nullptr ? inv_freq[i] : default_rotary_frequency(i, p.rotary_dim, base);
    out[i] = turn_frequency_from_radians(w);
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

// Token (b, s) of an operand: [heads, head_dim] with the operand's strides.
template <typename scalar_t>
__device__ const scalar_t* token_input(const RotaryOperand& op, int64_t b, int64_t s) {
  return static_cast<const scalar_t*>(op.in) + b * op.in_strides[0] + s * op.in_strides[1];
}
template <typename scalar_t>
__device__ scalar_t* token_output(const RotaryOperand& op, int64_t b, int64_t s) {
  return static_cast<scalar_t*>(op.out) + b * op.out_strides[0] + s * op.out_strides[1];
}

// grid: token blocks, block: (pairs, heads). For each token the block evaluates cos/sin of up to
// kRotaryChunkPairs angles into shared memory from the launch's frequency table, then rotates
// those pairs of every head of every operand; channels past rotary_dim are copied.
template <typename scalar_t>
__global__ void rotary_kernel(RotaryParams p, const TurnFrequency* frequencies) {
  using acc = acc_t<scalar_t>;
  POSENC_DYNAMIC_SHARED(acc, cosines);
  const int64_t half = p.rotary_dim / 2;
  const int64_t chunk = half < kRotaryChunkPairs ? half : kRotaryChunkPairs;
  acc* sines = cosines + chunk;
  const acc factor = static_cast<acc>(p.attention_factor);
  const acc sign = p.inverse ? acc(-1) : acc(1);
  const int64_t tokens = p.batch * p.seq_len;
  const int64_t flat_thread = static_cast<int64_t>(threadIdx.y) * blockDim.x + threadIdx.x;
  const int64_t block_threads = static_cast<int64_t>(blockDim.x) * blockDim.y;
  const int64_t first_step = p.interleaved ? 2 : 1;
  const int64_t second_offset = p.interleaved ? 1 : half;
  for (int64_t token = blockIdx.x; token < tokens; token += gridDim.x) {
    const int64_t b = token / p.seq_len;
    const int64_t s = token - b * p.seq_len;
    const int64_t position = rotary_token_position(p, b, s);
    POSENC_DEVICE_CHECK(position >= 0, "posenc.rotary: positions must be >= 0");
    for (int64_t start = 0; start < half; start += chunk) {
      const int64_t count = half - start < chunk ? half - start : chunk;
      for (int64_t i = flat_thread; i < count; i += block_threads) {
        const SinCos<acc> sc = rotary_sincos<acc>(frequencies[start + i], p.float32_frequencies,
                                                  start + i, position);
        cosines[i] = factor * sc.cos;
        sines[i] = sign * factor * sc.sin;
      }
      __syncthreads();
      for (int k = 0; k < p.operand_count; ++k) {
        const RotaryOperand& op = p.operands[k];
        const scalar_t* in = token_input<scalar_t>(op, b, s);
        scalar_t* out = token_output<scalar_t>(op, b, s);
        for (int64_t h = threadIdx.y; h < op.heads; h += blockDim.y) {
          const scalar_t* x = in + h * op.in_strides[2];
          scalar_t* y = out + h * op.out_strides[2];
          for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
            const int64_t first = (start + i) * first_step;
            const int64_t second = first + second_offset;
            const acc x1 = load_as_acc(x + first * op.in_strides[3]);
            const acc x2 = load_as_acc(x + second * op.in_strides[3]);
            store_from_acc(y + first * op.out_strides[3], x1 * cosines[i] - x2 * sines[i]);
            store_from_acc(y + second * op.out_strides[3], x2 * cosines[i] + x1 * sines[i]);
          }
        }
      }
      __syncthreads();  // the next chunk or token overwrites cosines and sines
    }
    for (int k = 0; k < p.operand_count; ++k) {  // channels past rotary_dim pass through
      const RotaryOperand& op = p.operands[k];
      const scalar_t* in = token_input<scalar_t>(op, b, s);
      scalar_t* out = token_output<scalar_t>(op, b, s);
      for (int64_t h = threadIdx.y; h < op.heads; h += blockDim.y) {
        for (int64_t d = p.rotary_dim + threadIdx.x; d < p.head_dim; d += blockDim.x) {
          out[h * op.out_strides[2] + d * op.out_strides[3]] =
              in[h * op.in_strides[2] + d * op.in_strides[3]];
        }
      }
    }
  }
}

// grid: row blocks, block: (pairs, rows) over one operand with given cos/sin tables; the row's
// offsets are found once per row, not per element.
template <typename scalar_t>
__global__ void rotary_tables_kernel(RotaryTableParams p, int operand_index, int64_t rows) {
  using acc = acc_t<scalar_t>;
  const RotaryTableOperand& op = p.operands[operand_index];
  const int last = op.ndim - 1;
  const int64_t half = op.sizes[last] / 2;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const RotaryTableRow offsets = rotary_table_row(op, row);
    const scalar_t* cos_row = static_cast<const scalar_t*>(p.cos) + offsets.cos;
    const scalar_t* sin_row = static_cast<const scalar_t*>(p.sin) + offsets.sin;
    const scalar_t* x = static_cast<const scalar_t*>(op.in) + offsets.in;
    scalar_t* y = static_cast<scalar_t*>(op.out) + offsets.out;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      const acc cos_lo = load_as_acc(cos_row + i * op.cos_strides[last]);
      const acc cos_hi = load_as_acc(cos_row + (i + half) * op.cos_strides[last]);
      const acc s_lo = load_as_acc(sin_row + i * op.sin_strides[last]);
      const acc s_hi = load_as_acc(sin_row + (i + half) * op.sin_strides[last]);
      // The transpose maps (sin_lo, sin_hi) to (-sin_hi, -sin_lo), as on the CPU.
      const acc sin_lo = p.transpose ? -s_hi : s_lo;
      const acc sin_hi = p.transpose ? -s_lo : s_hi;
      const acc x1 = load_as_acc(x + i * op.in_strides[last]);
      const acc x2 = load_as_acc(x + (i + half) * op.in_strides[last]);
      store_from_acc(y + i * op.out_strides[last], x1 * cos_lo - x2 * sin_lo);
      store_from_acc(y + (i + half) * op.out_strides[last], x2 * cos_hi + x1 * sin_hi);
    }
  }
}

// Blocks for `work` items at `per_block` a block, at most `limit`: kernels walk the rest with
// grid-stride loops.
unsigned int blocks_for(int64_t work, int64_t per_block, unsigned int limit) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > limit ? limit : blocks));
}

bool needs_channel_table(const AddPositionalParams& params) {
  return params.source.kind != PositionKind::kLearned && params.combine != Combine::kScaleOnly;
}

// Fills the channel table at the start of `workspace` when the launch needs one.
int fill_channel_table(const AddPositionalParams& params, void* workspace, void* stream) {
  if (!needs_channel_table(params)) return 0;
  POSENC_LAUNCH(channel_codes_kernel, blocks_for(params.shape.dim, kThreads, max_grid_x()),
                kThreads, 0, stream, params.source.code, params.shape.dim,
                static_cast<ChannelCode*>(workspace));
  return launch_status();
}

int64_t channel_table_bytes(const AddPositionalParams& params) {
  return needs_channel_table(params)
             ? aligned_bytes(params.shape.dim * static_cast<int64_t>(sizeof(ChannelCode)))
             : 0;
}

}  // namespace

int64_t add_positional_workspace_bytes(const AddPositionalParams& params) {
  const int64_t fairseq = params.gather.fairseq_positions
                              ? params.shape.batch_count() * params.shape.seq_len * 8
                              : 0;
  return channel_table_bytes(params) + aligned_bytes(fairseq);
}

int add_positional(const AddPositionalParams& params, const int64_t* seed, void* workspace,
                   void* stream) {
  const int64_t batch = params.shape.batch_count();
  if (batch == 0 || params.shape.seq_len == 0 || params.shape.dim == 0) return 0;
  int status = fill_channel_table(params, workspace, stream);
  if (status != 0) return status;
  const ChannelCode* channels =
      needs_channel_table(params) ? static_cast<const ChannelCode*>(workspace) : nullptr;
  int64_t* fairseq = nullptr;
  if (params.gather.fairseq_positions) {
    fairseq = reinterpret_cast<int64_t*>(static_cast<unsigned char*>(workspace) +
                                         channel_table_bytes(params));
    status = fairseq_positions(params, fairseq, stream);
    if (status != 0) return status;
  }
  const unsigned int batch_blocks = blocks_for(batch, 1, kMaxBatchBlocks);
  const unsigned int step_limit = kMaxStepBlocks < max_grid_x() ? kMaxStepBlocks : max_grid_x();
  const dim3 grid(blocks_for(params.shape.seq_len, 1, step_limit),
                  blocks_for(params.shape.dim, kThreads * kElementsPerThread, max_grid_yz()),
                  batch_blocks < max_grid_yz() ? batch_blocks : max_grid_yz());
  return dispatch_dtype(params.dtype, [&](auto tag) {
    POSENC_LAUNCH(add_positional_kernel<decltype(tag)>, grid, kThreads, 0, stream, params, seed,
                  channels, fairseq);
    return launch_status();
  });
}

int fairseq_positions(const AddPositionalParams& params, int64_t* fairseq_workspace,
                      void* stream) {
  const int64_t batch = params.shape.batch_count();
  if (batch == 0 || params.shape.seq_len == 0) return 0;
  POSENC_LAUNCH_SYNC(fairseq_positions_kernel, blocks_for(batch, 1, max_grid_x()), kScanThreads,
                     kScanThreads * sizeof(int64_t), stream, params, fairseq_workspace);
  return launch_status();
}

int64_t scatter_workspace_bytes(const AddPositionalParams& params, bool deterministic) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  const int64_t accumulate = params.dtype == DType::kFloat64 ? 8 : 4;
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  return channel_table_bytes(params) +
         (deterministic ? aligned_bytes(2 * chunks * params.shape.dim * accumulate) : 0);
}

int scatter_backward_atomic(const AddPositionalParams& params, const StridedRows& input,
                            ScatterTarget target, const int64_t* seed,
                            const int64_t* fairseq_positions, void* workspace, void* grad,
                            void* stream) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  if (rows == 0 || params.shape.dim == 0) return 0;
  const int status = fill_channel_table(params, workspace, stream);
  if (status != 0) return status;
  const auto* channels = static_cast<const ChannelCode*>(workspace);
  const dim3 grid(blocks_for(rows, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads, max_grid_yz()));
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    POSENC_LAUNCH(scatter_atomic_kernel<scalar_t>, grid, kThreads, 0, stream, params, input,
                  target, seed, fairseq_positions, channels, static_cast<acc_t<scalar_t>*>(grad));
    return launch_status();
  });
}

int scatter_backward_deterministic(const AddPositionalParams& params, const StridedRows& input,
                                   ScatterTarget target, const int64_t* seed,
                                   const int64_t* fairseq_positions, const int64_t* sorted_rows,
                                   const int64_t* sorted_targets, void* workspace, void* grad,
                                   void* stream) {
  const int64_t rows = params.shape.batch_count() * params.shape.seq_len;
  if (rows == 0 || params.shape.dim == 0) return 0;
  int status = fill_channel_table(params, workspace, stream);
  if (status != 0) return status;
  const auto* channels = static_cast<const ChannelCode*>(workspace);
  const int64_t chunks = (rows + kScatterChunk - 1) / kScatterChunk;
  const dim3 grid(blocks_for(chunks, 1, max_grid_x()),
                  blocks_for(params.shape.dim, kThreads, max_grid_yz()));
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc = acc_t<scalar_t>;
    acc* head = reinterpret_cast<acc*>(static_cast<unsigned char*>(workspace) +
                                       channel_table_bytes(params));
    acc* tail = head + chunks * params.shape.dim;
    POSENC_LAUNCH(scatter_chunks_kernel<scalar_t>, grid, kThreads, 0, stream, params, input,
                  target, seed, fairseq_positions, channels, sorted_rows, sorted_targets, rows,
                  head, tail, static_cast<acc*>(grad));
    const int chunk_status = launch_status();
    if (chunk_status != 0) return chunk_status;
    POSENC_LAUNCH(scatter_join_kernel<acc>, grid, kThreads, 0, stream, sorted_targets, rows,
                  params.shape.dim, head, tail, static_cast<acc*>(grad));
    return launch_status();
  });
}

int64_t rotary_workspace_bytes(const RotaryParams& params) {
  return aligned_bytes(params.rotary_dim / 2 * static_cast<int64_t>(sizeof(TurnFrequency)));
}

int rotary(const RotaryParams& params, const double* inv_freq, double base, void* workspace,
           void* stream) {
  const int64_t tokens = params.batch * params.seq_len;
  if (tokens == 0 || params.head_dim == 0) return 0;
  auto* frequencies = static_cast<TurnFrequency*>(workspace);
  const int64_t half = params.rotary_dim / 2;
  if (half > 0) {
    POSENC_LAUNCH(rotary_frequencies_kernel, blocks_for(half, kThreads, max_grid_x()), kThreads,
                  0, stream, params, inv_freq, base, frequencies);
    const int status = launch_status();
    if (status != 0) return status;
  }
  if (params.cu_seqlens != nullptr || params.offsets != nullptr) {
    const int64_t sequences = params.cu_seqlens != nullptr ? params.sequences : params.batch;
    POSENC_LAUNCH(rotary_check_kernel, blocks_for(sequences, kThreads, max_grid_x()), kThreads,
                  0, stream, params);
    const int status = launch_status();
    if (status != 0) return status;
  }
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const int64_t chunk = half < kRotaryChunkPairs ? half : kRotaryChunkPairs;
    const size_t shared_bytes = 2 * sizeof(acc_t<scalar_t>) * static_cast<size_t>(chunk);
    POSENC_LAUNCH_SYNC(rotary_kernel<scalar_t>, blocks_for(tokens, 1, max_grid_x()), dim3(32, 4),
                       shared_bytes, stream, params, frequencies);
    return launch_status();
  });
}

int rotary_tables(const RotaryTableParams& params, void* stream) {
  for (int k = 0; k < params.operand_count; ++k) {
    const RotaryTableOperand& op = params.operands[k];
    int64_t rows = 1;
    for (int axis = 0; axis + 1 < op.ndim; ++axis) rows *= op.sizes[axis];
    if (rows == 0 || op.sizes[op.ndim - 1] == 0) continue;
    const int status = dispatch_dtype(params.dtype, [&](auto tag) {
      POSENC_LAUNCH(rotary_tables_kernel<decltype(tag)>, blocks_for(rows, 8, max_grid_x()),
                    dim3(32, 8), 0, stream, params, k, rows);
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
