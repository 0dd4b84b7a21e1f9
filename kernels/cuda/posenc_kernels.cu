// CUDA kernels of every posenc operator. No torch headers: the binding (csrc/ops_cuda.cpp)
// validates, allocates and calls the launchers declared in cuda_launch.h on its current stream.
// The math (exact angle reduction, channel codes, Philox dropout, indexing) is the CPU kernels'
// shared host/device code, so both backends compute the same values and the same masks.
//
// The same source also compiles as host C++ and runs under the CUDA emulation of cuda/emulation.h
// (kernels/cuda/emulated.cpp; the CudaEmulated* GoogleTests). So the kernels keep to this subset:
// blockIdx/threadIdx/blockDim/gridDim; dynamic shared memory through POSENC_DYNAMIC_SHARED (no
// static __shared__ arrays); __syncthreads reached by every thread that has not returned, in
// kernels launched with POSENC_LAUNCH_SYNC; atomicAdd on float and double; launches through
// POSENC_LAUNCH; grids planned with max_grid_x()/max_grid_yz() and walked with grid-stride loops;
// device-only intrinsics (16-byte vector memory operations, hardware fp16/bf16 conversion) behind
// __CUDA_ARCH__ with a host twin (the twin of a vector access checks its 16-byte alignment);
// register caps through POSENC_LAUNCH_BOUNDS; values the kernels index with checked by
// POSENC_DEVICE_CHECK. No warp intrinsics, no cooperative groups, no static __shared__ arrays.
//
// Bandwidth by design: per-channel codes and rotary frequency splits are computed once per launch
// into a device table (no double-precision transcendentals per element), laid out so that a warp
// reads it coalesced; a thread owns 8 consecutive channels, moves them with 16-byte loads and
// stores when the row allows it, keeps several rows' loads in flight, and walks many steps and
// batch rows with them; no 64-bit division in the per-element loops.
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
constexpr int64_t kTargetThreads = 1 << 20;    // enough resident work for a large GPU
constexpr int64_t kScatterChunk = 64;  // sorted rows a thread sums in the deterministic scatter
constexpr int kScanThreads = 128;      // steps of T a block scans at a time (fairseq positions)
constexpr int64_t kRotaryChunkPairs = 1024;  // cos/sin of this many pairs in shared memory
constexpr int64_t kRotaryMaxTile = 16;        // tokens a rotary block takes at a time
constexpr int kVectorBytes = 16;

int launch_status() { return static_cast<int>(cudaGetLastError()); }

// Workspace layout: consecutive regions, each aligned to 16 bytes.
int64_t aligned_bytes(int64_t bytes) { return (bytes + 15) / 16 * 16; }

__device__ Dropout device_dropout(const Dropout& dropout, const int64_t* seed) {
  Dropout d = dropout;
  if (d.active) d.seed = static_cast<uint64_t>(*seed);
  return d;
}

// The position of (b, t): fairseq positions from their dense [batch, T] workspace, else the
// positions tensor or offset + t. Reads p.positions in place: a local copy of the index, whose
// stride array is indexed with loop variables, would live in local memory.
__device__ int64_t position_of(const AddPositionalParams& p, const int64_t* fairseq_positions,
                               int64_t b, int64_t t) {
  if (p.gather.fairseq_positions) return fairseq_positions[b * p.shape.seq_len + t];
  return position_at(p.shape, p.positions, p.offset, b, t);
}

// ---- 16-byte vector memory operations --------------------------------------------------------

// Whether 8 elements from `p` with unit stride can move as 16-byte vectors.
template <typename scalar_t>
__device__ bool vector_row(const scalar_t* p, int64_t stride) {
  return stride == 1 && reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

// 8 elements as one aligned value, so that a copy is one to four 16-byte vector operations and
// the elements stay in registers.
template <typename scalar_t>
struct alignas(kVectorBytes) Pack8 {
  scalar_t v[kElementsPerThread];
};

// The 8 elements from `p` as stored (16-byte aligned, unit stride).
template <typename scalar_t>
__device__ Pack8<scalar_t> load_pack(const scalar_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Pack8<scalar_t>*>(p);
#else
  POSENC_CHECK_VECTOR_ACCESS(p);
  Pack8<scalar_t> pack;
  std::memcpy(&pack, p, sizeof(pack));
  return pack;
#endif
}

template <typename scalar_t>
__device__ void store8(scalar_t* p, const acc_t<scalar_t>* values) {
  Pack8<scalar_t> pack;
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) store_from_acc(&pack.v[k], values[k]);
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Pack8<scalar_t>*>(p) = pack;
#else
  POSENC_CHECK_VECTOR_ACCESS(p);
  std::memcpy(p, &pack, sizeof(pack));
#endif
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
__device__ int64_t checked_position(const AddPositionalParams& p, const int64_t* fairseq,
                                    int64_t b, int64_t t) {
  const int64_t position = position_of(p, fairseq, b, t);
  POSENC_DEVICE_CHECK(position >= 0, "posenc: positions must be >= 0");
  POSENC_DEVICE_CHECK(p.source.kind != PositionKind::kLearned || position < p.source.table_rows,
                      "posenc: positions must be < the table's rows");
  return position;
}

// ---- the channel table -------------------------------------------------------------------------
// The per-channel codes of a computed kind, once per launch, laid out so that a warp reads them
// coalesced. A thread owns a group of 8 channels, so in a [D] array of 40-byte ChannelCode
// structs the 32 lanes of a warp would read 320 bytes apart: 32 cache lines per load, 40 loads
// per thread. Here field f of channel d = 8 g + k sits at values[(f * 8 + k) * groups + g], so
// lanes with consecutive groups read consecutive doubles (two lines per load).
constexpr int kChannelFields = 5;  // frequency high, middle and low; phase; amplitude
static_assert(kElementsPerThread == 8, "channel_at splits d with a shift and a mask");

struct ChannelTable {
  const double* values;  // [kChannelFields, 8, groups]
  int64_t groups;        // ceil(D / 8)
};

// The groups of 8 channels a thread owns in a D-wide row (the last one may be partial).
__host__ __device__ int64_t channel_groups(int64_t dim) {
  return (dim + kElementsPerThread - 1) / kElementsPerThread;
}

// The entries of one field of the table: 8 per group. Field f starts at f times this.
__host__ __device__ int64_t channel_field_entries(int64_t groups) {
  return kElementsPerThread * groups;
}

// The entry of channel d within each field.
__host__ __device__ int64_t channel_entry(int64_t groups, int64_t d) {
  return (d & 7) * groups + (d >> 3);
}

__device__ ChannelCode channel_at(const ChannelTable& table, int64_t d) {
  const int64_t field = channel_field_entries(table.groups);
  const double* v = table.values + channel_entry(table.groups, d);
  return ChannelCode{{v[0], v[field], v[2 * field]}, v[3 * field], v[4 * field]};
}

// PE(position)[d] from the channel table (computed kinds) or the learned table.
template <typename scalar_t>
__device__ acc_t<scalar_t> code_value(const PositionSource& source, const ChannelTable& channels,
                                      int64_t position, int64_t d) {
  using acc = acc_t<scalar_t>;
  if (source.kind == PositionKind::kLearned) {
    return load_as_acc(static_cast<const scalar_t*>(source.table) +
                       position * source.table_row_stride + d * source.table_dim_stride);
  }
  if (source.grid.axis_count == 0) return evaluate_channel<acc>(channel_at(channels, d), position);
  const GridPoint point = grid_point(source.grid, position);
  if (!point.coded) return acc(0);
  return evaluate_channel<acc>(channel_at(channels, d),
                               point.along(source.grid.segment_axes[grid_segment(source.grid, d)]));
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

// The channel table of a launch (see ChannelTable); channels past dim in the last group get a
// zero code, so that every entry is written.
__global__ void channel_codes_kernel(PositionCodeOptions code,
                                     const POSENC_GRID_CONSTANT GridCode grid, int64_t dim,
                                     double* out) {
  const int64_t groups = channel_groups(dim);
  const int64_t field = channel_field_entries(groups);
  for (int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; d < field;
       d += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const ChannelCode c = d < dim ? grid_channel_code(code, grid, dim, d) : ChannelCode{};
    double* v = out + channel_entry(groups, d);
    v[0] = c.frequency.high;
    v[field] = c.frequency.middle;
    v[2 * field] = c.frequency.low;
    v[3 * field] = c.phase;
    v[4 * field] = c.amplitude;
  }
}

// ---- add_positional / embedding forward ---------------------------------------------------------
// grid: (step blocks, channel-group blocks, batch blocks), block: (group lanes, steps). A thread
// owns a group of 8 consecutive channels at one step t and walks the batch rows b with it. The
// 8 codes are evaluated once per (t, group) from the channel table, before any row is loaded
// (so that their registers never add to the rows'), into the thread's column of shared memory,
// and reused for every row whose position is the same. The 8 dropout draws come from at most
// two Philox calls. Loops over the 8 channels are unrolled with predication, so the per-thread
// arrays stay in registers (no local memory).
//
// Two kernels share that math:
// - add_positional_dense_kernel, for launches whose rows all move as 16-byte vectors (see
//   dense_rows): rows are held as stored (a bf16 group is 4 registers) and kDenseRows of them
//   are loaded before any is stored, so that 64 bytes of loads per thread are in flight (4 rows
//   of 16-bit types, 2 of float, 1 of double). ptxas, sm_90: 125 registers for bf16 and 96 for
//   float, no spills: 2 blocks of 256 threads per SM, 32 KiB of loads in flight per SM. (A cap
//   of 80 registers for 3 blocks spilled.)
// - add_positional_kernel, for every other launch (per-row or fairseq positions, grids, strided
//   or unaligned rows, D % 8 != 0): two rows at a time, each as 16-byte vectors where the row
//   allows it, else element by element.
constexpr int kDenseBlocksPerSm = 2;
constexpr int kGeneralRows = 2;  // rows add_positional_kernel loads before it stores any

template <typename scalar_t>
constexpr int kDenseRows = 64 / static_cast<int>(sizeof(Pack8<scalar_t>));  // 4, 2 or 1

// The codes of channels d0 .. d0 + count - 1 at `position`, into the thread's column of `pe`
// (slot k at pe[k * pe_stride]). Unrolled by 2, so that table loads and evaluations overlap (a
// rolled loop waits for each load in turn) within the dense kernel's registers.
// kGrid: positions index a patch grid (a separate instantiation, so that the 1-D kernels keep
// their register counts).
template <typename scalar_t, bool kGrid>
__device__ void group_codes(const AddPositionalParams& p, const ChannelTable& channels,
                            int64_t position, int64_t d0, int count, acc_t<scalar_t>* pe,
                            int pe_stride) {
  if constexpr (kGrid) {
    // On a grid: the token's coordinates once, then each channel at its segment's axis.
    const GridCode& grid = p.source.grid;
    POSENC_DEVICE_CHECK(position < grid_token_count(grid),
                        "posenc: positions must be < extra_tokens + the grid's patches");
    const GridPoint point = grid_point(grid, position);
#pragma unroll 2
    for (int k = 0; k < count; ++k) {
      const int axis = grid.segment_axes[grid_segment(grid, d0 + k)];
      pe[k * pe_stride] = point.coded ? evaluate_channel<acc_t<scalar_t>>(
                                            channel_at(channels, d0 + k), point.along(axis))
                                      : acc_t<scalar_t>(0);
    }
  } else if (p.source.kind == PositionKind::kLearned) {
    const scalar_t* row =
        static_cast<const scalar_t*>(p.source.table) + position * p.source.table_row_stride;
    if (count == kElementsPerThread && vector_row(row + d0, p.source.table_dim_stride)) {
      const Pack8<scalar_t> pack = load_pack(row + d0);
#pragma unroll
      for (int k = 0; k < kElementsPerThread; ++k) pe[k * pe_stride] = load_as_acc(&pack.v[k]);
      return;
    }
#pragma unroll 2
    for (int k = 0; k < count; ++k) {
      pe[k * pe_stride] = load_as_acc(row + (d0 + k) * p.source.table_dim_stride);
    }
  } else {
#pragma unroll 2
    for (int k = 0; k < count; ++k) {
      pe[k * pe_stride] = evaluate_channel<acc_t<scalar_t>>(channel_at(channels, d0 + k), position);
    }
  }
}

// Combines, drops out and stores the group of batch row b at step t, from its elements as
// stored (`raw`, 0 past the row's end), into `out` (the output row of (b, t)). kDense: a
// dense_rows launch, where the group starts at a multiple of 8 (one Philox counter) and the
// output moves as a 16-byte vector.
template <typename scalar_t, bool kDense>
__device__ __forceinline__ void finish_group(const AddPositionalParams& p, const Dropout& dropout,
                                             const Pack8<scalar_t>& raw, int64_t b, bool with_code,
                                             const acc_t<scalar_t>* pe, int pe_stride, int64_t t,
                                             int64_t d0, int count, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const acc scale = static_cast<acc>(p.scale);
  const Combine combine = with_code ? p.combine : Combine::kScaleOnly;
  const uint64_t first = static_cast<uint64_t>((b * p.shape.seq_len + t) * p.shape.dim + d0);
  // One counter covers the group when it starts at a multiple of 8 (D % 8 == 0): one call.
  const bool one_counter = kDense || first % kDropoutElementsPerCounter == 0;
  Philox4 draws_low, draws_high;
  if (dropout.active) {
    const uint64_t low_counter = first / kDropoutElementsPerCounter;
    const uint64_t high_counter = (first + count - 1) / kDropoutElementsPerCounter;
    draws_low = philox4x32_10(low_counter, dropout.seed);
    draws_high = one_counter || high_counter == low_counter
                     ? draws_low
                     : philox4x32_10(high_counter, dropout.seed);
  }
  const acc keep_scale = static_cast<acc>(dropout.keep_scale);
  const int low_slots =
      one_counter
          ? kElementsPerThread
          : static_cast<int>(kDropoutElementsPerCounter - first % kDropoutElementsPerCounter);
  acc values[kElementsPerThread];
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) {
    const acc code = with_code && k < count ? pe[k * pe_stride] : acc(0);
    acc y = combine_value(combine, scale, load_as_acc(&raw.v[k]), code);
    if (dropout.active) {
      const int slot = one_counter ? k : static_cast<int>((first + k) % kDropoutElementsPerCounter);
      // Both draws, then a select: selecting the struct would put both in local memory.
      const uint32_t low_draw = dropout_draw(draws_low, slot);
      const uint32_t high_draw = dropout_draw(draws_high, slot);
      const uint32_t draw = k < low_slots ? low_draw : high_draw;
      y = draw < dropout.keep_threshold ? y * keep_scale : acc(0);
    }
    values[k] = y;
  }
  if constexpr (kDense) {
    store8(out + d0, values);
  } else if (count == kElementsPerThread && vector_row(out + d0, p.out.dim_stride)) {
    store8(out + d0, values);
  } else {
#pragma unroll
    for (int k = 0; k < kElementsPerThread; ++k) {
      if (k < count) store_from_acc(out + (d0 + k) * p.out.dim_stride, values[k]);
    }
  }
}

// The thread's column of the block's code slots, and its stride (see the kernels below).
template <typename acc>
__device__ acc* code_column(int* pe_stride) {
  // Conflict-free: consecutive threads, consecutive words; written and read by one thread only.
  POSENC_DYNAMIC_SHARED(acc, codes);
  *pe_stride = static_cast<int>(blockDim.x * blockDim.y);
  return codes + threadIdx.y * blockDim.x + threadIdx.x;
}

// Launches where every row, in and out, moves as 16-byte vectors and the codes are the same for
// every batch row: rows of x, rows of a weight gathered by ids (padding rows get no code), or
// none; positions offset + t or broadcast over the batch (not fairseq's); a 1-D code; at most
// one batch dimension (no division); D % 8 == 0; unit channel strides; 16-byte aligned bases and
// row strides. Checked on the host by the launcher (dense_rows).
template <typename scalar_t>
__global__ void POSENC_LAUNCH_BOUNDS(kThreads, kDenseBlocksPerSm)
    add_positional_dense_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                const int64_t* seed, ChannelTable channels) {
  using acc = acc_t<scalar_t>;
  constexpr int kRows = kDenseRows<scalar_t>;
  const int64_t seq_len = p.shape.seq_len;
  const int64_t groups = p.shape.dim / kElementsPerThread;
  const int64_t batch = p.shape.batch_count();
  const int64_t x_batch_stride = p.shape.batch_ndim == 1 ? p.x.batch_strides[0] : 0;
  const int64_t out_batch_stride = p.shape.batch_ndim == 1 ? p.out.batch_strides[0] : 0;
  const bool gather = p.gather.weight != nullptr;
  const int64_t ids_batch_stride = p.shape.batch_ndim == 1 ? p.gather.ids.batch_strides[0] : 0;
  const bool needs_code = p.combine != Combine::kScaleOnly;
  const Dropout dropout = device_dropout(p.dropout, seed);
  int pe_stride;
  acc* pe = code_column<acc>(&pe_stride);
  const int64_t row_step = gridDim.z;
  for (int64_t g = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t d0 = g * kElementsPerThread;
    for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < seq_len;
         t += static_cast<int64_t>(gridDim.x) * blockDim.y) {
      // The codes once per (t, group), with the first rows that take them (gathered padding
      // rows do not), after their sources and before their loads.
      bool codes_ready = !needs_code;
      const scalar_t* x = p.x.data == nullptr
                              ? nullptr
                              : static_cast<const scalar_t*>(p.x.data) + t * p.x.seq_stride + d0;
      scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(p.out.data)) + t * p.out.seq_stride;
      for (int64_t b = blockIdx.z; b < batch; b += kRows * row_step) {
        const scalar_t* source[kRows];
        bool padding[kRows];
        bool any_coded = false;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int64_t row = b + r * row_step;
          source[r] = row < batch && x != nullptr ? x + row * x_batch_stride : nullptr;
          padding[r] = false;
          if (gather && row < batch) {
            const int64_t id = load_index(p.gather.ids.data, p.gather.ids.type,
                                          row * ids_batch_stride + t * p.gather.ids.seq_stride);
            POSENC_DEVICE_CHECK(id >= 0 && id < p.gather.vocab, "posenc: ids must be in [0, V)");
            source[r] =
                static_cast<const scalar_t*>(p.gather.weight) + id * p.gather.row_stride + d0;
            padding[r] = id == p.gather.padding_idx;
          }
          any_coded = any_coded || (row < batch && !padding[r]);
        }
        if (!codes_ready && any_coded) {
          group_codes<scalar_t, false>(p, channels, checked_position(p, nullptr, 0, t), d0,
                                       kElementsPerThread, pe, pe_stride);
          codes_ready = true;
        }
        Pack8<scalar_t> raw[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (source[r] != nullptr) {
            raw[r] = load_pack(source[r]);
          } else {
#pragma unroll
            for (int k = 0; k < kElementsPerThread; ++k) raw[r].v[k] = scalar_t{};
          }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int64_t row = b + r * row_step;
          if (row < batch) {
            finish_group<scalar_t, true>(p, dropout, raw[r], row, needs_code && !padding[r], pe,
                                         pe_stride, t, d0, kElementsPerThread,
                                         out + row * out_batch_stride);
          }
        }
      }
    }
  }
}

// The group's elements of a row as stored, 0 past the row's end (none for kPositionOnly).
template <typename scalar_t>
__device__ Pack8<scalar_t> load_group(const InputRow<scalar_t>& in, int64_t d0, int count) {
  if (in.data != nullptr && count == kElementsPerThread && vector_row(in.data + d0, in.stride)) {
    return load_pack(in.data + d0);
  }
  Pack8<scalar_t> raw;
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) {
    raw.v[k] = in.data != nullptr && k < count ? in.data[(d0 + k) * in.stride] : scalar_t{};
  }
  return raw;
}

template <typename scalar_t, bool kGrid>
__global__ void add_positional_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                      const int64_t* seed, ChannelTable channels,
                                      const int64_t* fairseq) {
  using acc = acc_t<scalar_t>;
  const int64_t seq_len = p.shape.seq_len;
  const int64_t dim = p.shape.dim;
  const int64_t batch = p.shape.batch_count();
  const int64_t groups = channel_groups(dim);
  const bool needs_code = p.combine != Combine::kScaleOnly;
  const bool shared = !p.gather.fairseq_positions && shared_across_batch(p.shape, p.positions);
  const Dropout dropout = device_dropout(p.dropout, seed);
  int pe_stride;
  acc* pe = code_column<acc>(&pe_stride);
  for (int64_t g = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t d0 = g * kElementsPerThread;
    const int count =
        static_cast<int>(dim - d0 < kElementsPerThread ? dim - d0 : kElementsPerThread);
    for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < seq_len;
         t += static_cast<int64_t>(gridDim.x) * blockDim.y) {
      int64_t pe_position = -1;  // positions are >= 0
      for (int64_t b = blockIdx.z; b < batch; b += kGeneralRows * gridDim.z) {
        InputRow<scalar_t> in[kGeneralRows];
        Pack8<scalar_t> raw[kGeneralRows];
#pragma unroll
        for (int r = 0; r < kGeneralRows; ++r) {
          const int64_t row = b + r * gridDim.z;
          if (row < batch) {
            in[r] = checked_input_row<scalar_t>(p, p.x, row, t);
            raw[r] = load_group(in[r], d0, count);
          }
        }
#pragma unroll
        for (int r = 0; r < kGeneralRows; ++r) {
          const int64_t row = b + r * gridDim.z;
          if (row >= batch) continue;
          const bool with_code = needs_code && !in[r].padding;
          if (with_code) {
            const int64_t position = checked_position(p, fairseq, shared ? 0 : row, t);
            if (position != pe_position) {
              group_codes<scalar_t, kGrid>(p, channels, position, d0, count, pe, pe_stride);
              pe_position = position;
            }
          }
          scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(p.out.data)) +
                          batch_offset(p.shape, p.out.batch_strides, row) + t * p.out.seq_stride;
          finish_group<scalar_t, false>(p, dropout, raw[r], row, with_code, pe, pe_stride, t, d0,
                                        count, out);
        }
      }
    }
  }
}

// fairseq's make_positions (see fairseq_positions_row) as a parallel scan: a block per batch row
// counts the non-pad tokens of blockDim steps at a time with a scan in shared memory
// (blockDim int64 counts), carrying the running total from tile to tile.
__global__ void fairseq_positions_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                         int64_t* out) {
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
    for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
         d < p.shape.dim; d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
      int64_t target_row;
      acc value;
      if (contribution<scalar_t>(p, input, target, dropout, fairseq, channels, b, t, d,
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

// ---- rotary -------------------------------------------------------------------------------------

// The frequency splits of the launch, once: out[i] for i < rotary_dim / 2.
__global__ void rotary_frequencies_kernel(const POSENC_GRID_CONSTANT RotaryParams p,
                                          const double* inv_freq, double base, TurnFrequency* out) {
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
__global__ void rotary_check_kernel(const POSENC_GRID_CONSTANT RotaryParams p) {
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
// grid: token-tile blocks, block: kThreads. A block takes `tile` consecutive tokens at a time:
// their positions, then cos/sin of up to kRotaryChunkPairs pairs per token into shared memory
// (the launch's frequency table, no per-element setup), then every (token, operand, head,
// group) item of the tile, where a group is 8 consecutive elements moved as one 16-byte-aligned
// pack when the rows allow it (8 half-split pairs: two packs, the low and the high half; or 4
// interleaved pairs: one pack), else element by element. A thread of 16-bit types loads two
// items before it rotates and stores either, so that 64 bytes of loads per thread (half-split)
// are in flight (ptxas: 72 registers for bf16, 3 blocks per SM). Channels past rotary_dim are
// copied.
template <typename scalar_t>
constexpr int kRotaryItemsInFlight = sizeof(scalar_t) == 2 ? 2 : 1;

// One item: where its group comes from and goes, and its packs when it moves as vectors.
template <typename scalar_t>
struct RotaryItem {
  const scalar_t* x;    // the head's input row
  scalar_t* y;          // the head's output row
  uint32_t token;       // within the tile: the row of cosines and sines
  uint32_t first_pair;  // within the chunk
  bool vector;
  Pack8<scalar_t> first, second;  // half-split: the low and the high half; interleaved: first
};

// The item's group: its packs when every pack of it is a whole, aligned, unit-stride group.
template <typename scalar_t>
__device__ void load_item(const RotaryParams& p, const RotaryOperand& op,
                          RotaryItem<scalar_t>& item, int64_t pairs_in_chunk, int64_t half,
                          int64_t chunk_start) {
  const int pairs_per_group = p.interleaved ? kElementsPerThread / 2 : kElementsPerThread;
  const int64_t pair = chunk_start + item.first_pair;  // pair index within rotary_dim / 2
  item.vector = false;
  if (pairs_in_chunk - item.first_pair < pairs_per_group || op.in_strides[3] != 1 ||
      op.out_strides[3] != 1) {
    return;
  }
  if (p.interleaved) {
    const scalar_t* source = item.x + 2 * pair;
    item.vector = vector_row(source, 1) && vector_row(item.y + 2 * pair, 1);
    if (item.vector) item.first = load_pack(source);
  } else {
    const scalar_t *low = item.x + pair, *high = item.x + pair + half;
    item.vector = vector_row(low, 1) && vector_row(high, 1) && vector_row(item.y + pair, 1) &&
                  vector_row(item.y + pair + half, 1);
    if (item.vector) {
      item.first = load_pack(low);
      item.second = load_pack(high);
    }
  }
}

// Rotates and stores the item's group (from its packs, or element by element).
template <typename scalar_t>
__device__ void rotate_item(const RotaryParams& p, const RotaryOperand& op,
                            const RotaryItem<scalar_t>& item, int64_t pairs_in_chunk, int64_t half,
                            const acc_t<scalar_t>* cosines, const acc_t<scalar_t>* sines,
                            int64_t chunk_start) {
  using acc = acc_t<scalar_t>;
  const int pairs_per_group = p.interleaved ? kElementsPerThread / 2 : kElementsPerThread;
  const uint32_t first_pair = item.first_pair;
  const int64_t pair = chunk_start + first_pair;  // pair index within rotary_dim / 2
  if (item.vector) {
    acc v1[kElementsPerThread], v2[kElementsPerThread];
#pragma unroll
    for (int j = 0; j < kElementsPerThread; ++j) v1[j] = load_as_acc(&item.first.v[j]);
    if (p.interleaved) {
#pragma unroll
      for (int j = 0; j < kElementsPerThread / 2; ++j) {
        const acc c = cosines[first_pair + j], s = sines[first_pair + j];
        const acc x1 = v1[2 * j], x2 = v1[2 * j + 1];
        v1[2 * j] = x1 * c - x2 * s;
        v1[2 * j + 1] = x2 * c + x1 * s;
      }
      store8(item.y + 2 * pair, v1);
    } else {
#pragma unroll
      for (int j = 0; j < kElementsPerThread; ++j) v2[j] = load_as_acc(&item.second.v[j]);
#pragma unroll
      for (int j = 0; j < kElementsPerThread; ++j) {
        const acc c = cosines[first_pair + j], s = sines[first_pair + j];
        const acc x1 = v1[j], x2 = v2[j];
        v1[j] = x1 * c - x2 * s;
        v2[j] = x2 * c + x1 * s;
      }
      store8(item.y + pair, v1);
      store8(item.y + pair + half, v2);
    }
    return;
  }
  const int64_t remaining = pairs_in_chunk - first_pair;
  const int count = static_cast<int>(remaining < pairs_per_group ? remaining : pairs_per_group);
  const int64_t in_step = op.in_strides[3], out_step = op.out_strides[3];
  const int64_t first_step = p.interleaved ? 2 : 1;
  const int64_t second_offset = p.interleaved ? 1 : half;
  for (int j = 0; j < count; ++j) {
    const int64_t first = (pair + j) * first_step;
    const int64_t second = first + second_offset;
    const acc c = cosines[first_pair + j], s = sines[first_pair + j];
    const acc x1 = load_as_acc(item.x + first * in_step);
    const acc x2 = load_as_acc(item.x + second * in_step);
    store_from_acc(item.y + first * out_step, x1 * c - x2 * s);
    store_from_acc(item.y + second * out_step, x2 * c + x1 * s);
  }
}

// Item e of a tile, items ordered by token, then head, then an index below per_head; 32-bit
// (the launcher keeps a tile's items below 2^31).
struct TileItem {
  uint32_t token, head, index;
};

__device__ TileItem tile_item(uint32_t e, uint32_t heads, uint32_t per_head) {
  const uint32_t per_token = heads * per_head;
  const uint32_t token = e / per_token;
  const uint32_t rest = e - token * per_token;
  const uint32_t head = rest / per_head;
  return {token, head, rest - head * per_head};
}

template <typename scalar_t>
__global__ void rotary_kernel(const POSENC_GRID_CONSTANT RotaryParams p,
                              const TurnFrequency* frequencies, int64_t tile) {
  using acc = acc_t<scalar_t>;
  POSENC_DYNAMIC_SHARED(acc, cosines);
  const int64_t half = p.rotary_dim / 2;
  const int64_t chunk = half < kRotaryChunkPairs ? half : kRotaryChunkPairs;
  acc* sines = cosines + tile * chunk;
  // Per tile token: its position, and each operand's input and output row offsets (found once
  // per token, so that no item divides 64-bit numbers).
  int64_t* positions = reinterpret_cast<int64_t*>(sines + tile * chunk);  // [tile, 3]
  int64_t* in_rows = positions + kMropeAxes * tile;  // [2, tile]
  int64_t* out_rows = in_rows + 2 * tile;            // [2, tile]
  const acc factor = static_cast<acc>(p.attention_factor);
  const acc sign = p.inverse ? acc(-1) : acc(1);
  const int64_t tokens = p.batch * p.seq_len;
  const uint32_t tid = threadIdx.x;
  const uint32_t threads = blockDim.x;
  const uint32_t pairs_per_group = p.interleaved ? kElementsPerThread / 2 : kElementsPerThread;
  for (int64_t tile_start = static_cast<int64_t>(blockIdx.x) * tile; tile_start < tokens;
       tile_start += static_cast<int64_t>(gridDim.x) * tile) {
    const uint32_t tile_tokens =
        static_cast<uint32_t>(tokens - tile_start < tile ? tokens - tile_start : tile);
    for (uint32_t j = tid; j < tile_tokens; j += threads) {
      const int64_t token = tile_start + j;
      const int64_t b = token / p.seq_len;
      const int64_t s = token - b * p.seq_len;
      for (int a = 0; a < (p.mrope ? kMropeAxes : 1); ++a) {
        const int64_t position = rotary_token_position(p, b, s, a);
        POSENC_DEVICE_CHECK(position >= 0 || p.mrope,  // M-RoPE coordinates may be negative
                            "posenc.rotary: positions must be >= 0");
        positions[j * kMropeAxes + a] = position;
      }
      for (int k = 0; k < p.operand_count; ++k) {
        const RotaryOperand& op = p.operands[k];
        in_rows[k * tile + j] = b * op.in_strides[0] + s * op.in_strides[1];
        out_rows[k * tile + j] = b * op.out_strides[0] + s * op.out_strides[1];
      }
    }
    __syncthreads();
    for (int64_t start = 0; start < half; start += chunk) {
      const uint32_t count = static_cast<uint32_t>(half - start < chunk ? half - start : chunk);
      for (uint32_t e = tid; e < tile_tokens * count; e += threads) {
        const uint32_t j = e / count;
        const uint32_t i = e - j * count;
        const SinCos<acc> sc =
            rotary_sincos<acc>(frequencies[start + i], p.float32_frequencies, start + i,
                               positions[j * kMropeAxes + rotary_pair_axis(p, start + i)]);
        cosines[j * chunk + i] = factor * sc.cos;
        sines[j * chunk + i] = sign * factor * sc.sin;
      }
      __syncthreads();
      const uint32_t groups = (count + pairs_per_group - 1) / pairs_per_group;
      for (int k = 0; k < p.operand_count; ++k) {
        const RotaryOperand& op = p.operands[k];
        const uint32_t heads = static_cast<uint32_t>(op.heads);
        const uint32_t items = tile_tokens * heads * groups;
        for (uint32_t e = tid; e < items; e += kRotaryItemsInFlight<scalar_t> * threads) {
          RotaryItem<scalar_t> batch[kRotaryItemsInFlight<scalar_t>];
#pragma unroll
          for (int i = 0; i < kRotaryItemsInFlight<scalar_t>; ++i) {
            if (e + i * threads < items) {
              const TileItem where = tile_item(e + i * threads, heads, groups);  // index: group
              RotaryItem<scalar_t>& item = batch[i];
              item.x = static_cast<const scalar_t*>(op.in) + in_rows[k * tile + where.token] +
                       where.head * op.in_strides[2];
              item.y = static_cast<scalar_t*>(op.out) + out_rows[k * tile + where.token] +
                       where.head * op.out_strides[2];
              item.token = where.token;
              item.first_pair = where.index * pairs_per_group;
              load_item(p, op, item, count, half, start);
            }
          }
#pragma unroll
          for (int i = 0; i < kRotaryItemsInFlight<scalar_t>; ++i) {
            if (e + i * threads < items) {
              rotate_item(p, op, batch[i], count, half, cosines + batch[i].token * chunk,
                          sines + batch[i].token * chunk, start);
            }
          }
        }
      }
      __syncthreads();  // the next chunk overwrites cosines and sines
    }
    const uint32_t tail = static_cast<uint32_t>(p.head_dim - p.rotary_dim);
    for (int k = 0; k < p.operand_count && tail > 0; ++k) {  // channels past rotary_dim
      const RotaryOperand& op = p.operands[k];
      const uint32_t heads = static_cast<uint32_t>(op.heads);
      for (uint32_t e = tid; e < tile_tokens * heads * tail; e += threads) {
        const TileItem item = tile_item(e, heads, tail);  // index: the channel past rotary_dim
        const int64_t d = p.rotary_dim + item.index;
        static_cast<scalar_t*>(op.out)[out_rows[k * tile + item.token] +
                                       item.head * op.out_strides[2] + d * op.out_strides[3]] =
            static_cast<const scalar_t*>(op.in)[in_rows[k * tile + item.token] +
                                                item.head * op.in_strides[2] +
                                                d * op.in_strides[3]];
      }
    }
    __syncthreads();  // the next tile overwrites positions and row offsets
  }
}

// grid: row blocks, block: (pairs, rows) over one operand with given cos/sin tables; the row's
// offsets are found once per row, not per element.
template <typename scalar_t>
__global__ void rotary_tables_kernel(const POSENC_GRID_CONSTANT RotaryTableParams p,
                                     int operand_index, int64_t rows) {
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
  const int64_t entries = channel_field_entries(channel_groups(params.shape.dim));
  POSENC_LAUNCH(channel_codes_kernel, blocks_for(entries, kThreads, max_grid_x()), kThreads, 0,
                stream, params.source.code, params.source.grid, params.shape.dim,
                static_cast<double*>(workspace));
  return launch_status();
}

int64_t channel_table_bytes(const AddPositionalParams& params) {
  const int64_t entries = channel_field_entries(channel_groups(params.shape.dim));
  return needs_channel_table(params)
             ? aligned_bytes(kChannelFields * entries * static_cast<int64_t>(sizeof(double)))
             : 0;
}

// The channel table at the start of `workspace` (unused when the launch needs none).
ChannelTable channel_table(const AddPositionalParams& params, void* workspace) {
  return ChannelTable{static_cast<const double*>(workspace), channel_groups(params.shape.dim)};
}

int64_t element_bytes(DType dtype) {
  return dispatch_dtype(dtype, [](auto tag) { return static_cast<int64_t>(sizeof(tag)); });
}

// Whether rows at `data` + batch * batch_stride + t * seq_stride + d (d < D, unit stride) are
// 16-byte aligned for every d that is a multiple of 8.
bool aligned_rows(const void* data, int64_t batch_stride, int64_t seq_stride, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(data) % kVectorBytes == 0 &&
         batch_stride * bytes % kVectorBytes == 0 && seq_stride * bytes % kVectorBytes == 0;
}

// Whether a launch takes add_positional_dense_kernel (see its comment).
bool dense_rows(const AddPositionalParams& params) {
  const RowShape& shape = params.shape;
  const int64_t bytes = element_bytes(params.dtype);
  const bool one_batch_dim = shape.batch_ndim == 1;
  if (params.gather.fairseq_positions || params.source.grid.axis_count > 0 ||
      shape.batch_ndim > 1 || shape.dim % kElementsPerThread != 0 ||
      !shared_across_batch(shape, params.positions)) {
    return false;
  }
  const StridedRows& out = params.out;
  if (out.dim_stride != 1 ||
      !aligned_rows(out.data, one_batch_dim ? out.batch_strides[0] : 0, out.seq_stride, bytes)) {
    return false;
  }
  const EmbeddingGather& gather = params.gather;
  if (gather.weight != nullptr) {
    return gather.dim_stride == 1 && aligned_rows(gather.weight, 0, gather.row_stride, bytes);
  }
  const StridedRows& x = params.x;
  return x.data == nullptr ||
         (x.dim_stride == 1 &&
          aligned_rows(x.data, one_batch_dim ? x.batch_strides[0] : 0, x.seq_stride, bytes));
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
  const ChannelTable channels = channel_table(params, workspace);
  int64_t* fairseq = nullptr;
  if (params.gather.fairseq_positions) {
    fairseq = reinterpret_cast<int64_t*>(static_cast<unsigned char*>(workspace) +
                                         channel_table_bytes(params));
    status = fairseq_positions(params, fairseq, stream);
    if (status != 0) return status;
  }
  const bool dense = dense_rows(params);
  // A block's lanes cover channel groups of 8, its rows steps t. Batch rows are split over
  // blocks only when the (t, group) items alone cannot fill the GPU: every split evaluates the
  // codes again, and a dense thread should keep its kDenseRows rows in flight.
  const int64_t groups = channel_groups(params.shape.dim);
  const unsigned int lanes =
      groups >= kThreads ? kThreads : static_cast<unsigned int>((groups + 31) / 32 * 32);
  const dim3 block(lanes, kThreads / lanes);
  const int64_t items = params.shape.seq_len * groups;
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const int64_t rows_per_thread = dense ? kDenseRows<scalar_t> : 1;
    int64_t row_blocks = (kTargetThreads + items - 1) / items;
    const int64_t row_groups = (batch + rows_per_thread - 1) / rows_per_thread;
    if (row_blocks > row_groups) row_blocks = row_groups;
    if (row_blocks > kMaxBatchBlocks) row_blocks = kMaxBatchBlocks;
    if (row_blocks > max_grid_yz()) row_blocks = max_grid_yz();
    const dim3 grid(blocks_for(params.shape.seq_len, block.y, max_grid_x()),
                    blocks_for(groups, lanes, max_grid_yz()),
                    static_cast<unsigned int>(row_blocks));
    const size_t code_bytes = sizeof(acc_t<scalar_t>) * kElementsPerThread * kThreads;
    if (dense) {
      POSENC_LAUNCH(add_positional_dense_kernel<scalar_t>, grid, block, code_bytes, stream, params,
                    seed, channels);
    } else {
      const auto kernel = params.source.grid.axis_count > 0
                              ? add_positional_kernel<scalar_t, true>
                              : add_positional_kernel<scalar_t, false>;
      POSENC_LAUNCH(kernel, grid, block, code_bytes, stream, params, seed, channels, fairseq);
    }
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
  const ChannelTable channels = channel_table(params, workspace);
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
  const ChannelTable channels = channel_table(params, workspace);
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
    // Tiles of tokens share a block, so that short heads still give each block enough pairs
    // and the barriers are paid once per tile; cos/sin of a tile fill at most 1024 pairs.
    const int64_t chunk = half < kRotaryChunkPairs ? half : kRotaryChunkPairs;
    const int64_t tile_limit = chunk > 0 ? kRotaryChunkPairs / chunk : kRotaryMaxTile;
    int64_t tile = tile_limit < kRotaryMaxTile ? tile_limit : kRotaryMaxTile;
    // Items of a tile are counted in 32 bits.
    int64_t heads = params.operands[0].heads;
    if (params.operand_count > 1 && params.operands[1].heads > heads) {
      heads = params.operands[1].heads;
    }
    const int64_t token_items = heads * (params.head_dim > 1 ? params.head_dim : 1);
    while (tile > 1 && tile * token_items >= (int64_t{1} << 31)) tile /= 2;
    if (token_items >= (int64_t{1} << 31)) return static_cast<int>(cudaErrorInvalidValue);
    const size_t shared_bytes =
        2 * sizeof(acc_t<scalar_t>) * static_cast<size_t>(tile * chunk) +
        (kMropeAxes + 4) * sizeof(int64_t) * static_cast<size_t>(tile);
    POSENC_LAUNCH_SYNC(rotary_kernel<scalar_t>, blocks_for(tokens, tile, max_grid_x()), kThreads,
                       shared_bytes, stream, params, frequencies, tile);
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
