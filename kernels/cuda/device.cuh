// Device code shared by the CUDA kernels of every family (kernels/cuda/*.cu): launch constants,
// 16-byte vector memory operations, device-side value checks, the channel table of the computed
// codes, and host helpers that plan launches. No torch headers: the binding validates,
// allocates and calls the launchers declared in kernels/cuda/<family>_launch.h on its current
// stream. The math (exact angle reduction, channel codes, Philox dropout, indexing) is the CPU
// kernels' shared host/device code, so both backends compute the same values and the same masks.
//
// The same sources also compile as host C++ and run under the CUDA emulation of
// cuda/emulation.h (the CudaEmulated* GoogleTests). So the kernels keep to this subset:
// blockIdx/threadIdx/blockDim/gridDim; dynamic shared memory through POSENC_DYNAMIC_SHARED
// (no static __shared__ arrays); __syncthreads reached by every thread that has not returned, in
// kernels launched with POSENC_LAUNCH_SYNC; atomicAdd on float and double; launches through
// POSENC_LAUNCH; grids planned with max_grid_x()/max_grid_yz() and walked with grid-stride loops;
// device-only intrinsics (16-byte vector memory operations, hardware fp16/bf16 conversion) behind
// __CUDA_ARCH__ with a host twin (the twin of a vector access checks its 16-byte alignment);
// register caps through POSENC_LAUNCH_BOUNDS; values the kernels index with checked by
// POSENC_DEVICE_CHECK. No warp intrinsics, no cooperative groups, no static __shared__ arrays.
//
// Bandwidth by design: per-channel codes are computed once per code into a device table (kept by
// the binding), laid out so that a warp reads it coalesced, and rotary frequency splits once per
// thread (no double-precision transcendentals per element); a thread owns 8 consecutive
// channels, moves them with 16-byte loads and stores when the row allows it, keeps several rows'
// loads in flight, and walks many steps and batch rows with them; no 64-bit division in the
// per-element loops. The hot kernels' machine code is checked by tests/sass/check_sass.py.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "angle.h"
#include "common.h"
#include "cuda/cuda_compat.h"
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
constexpr int kVectorBytes = 16;

int launch_status() { return static_cast<int>(cudaGetLastError()); }

// Workspace layout: consecutive regions, each aligned to 16 bytes.
int64_t aligned_bytes(int64_t bytes) { return (bytes + 15) / 16 * 16; }

__device__ Dropout device_dropout(const Dropout& dropout, const int64_t* seed) {
  Dropout d = dropout;
#if defined(__CUDA_ARCH__)
  if (d.active) d.seed = static_cast<uint64_t>(__ldg(seed));
#else
  if (d.active) d.seed = static_cast<uint64_t>(*seed);
#endif
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

// ---- global memory: row streams, tables ------------------------------------------------------
// The kernels move rows and read tables through these helpers: on the GPU each 16-byte access is
// one 128-bit instruction (the machine-code tests check it, tests/sass); in the emulation each
// access checks its alignment as the GPU would and records itself for the sector counts
// (emulation.h's memory trace).

// Whether 8 elements from `p` with unit stride can move as 16-byte vectors.
template <typename scalar_t>
__device__ bool vector_row(const scalar_t* p, int64_t stride) {
  return stride == 1 && reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

// 8 elements as stored, in 16-byte words, so that a copy is one to four 128-bit operations and
// the elements stay in registers.
template <typename scalar_t>
struct alignas(kVectorBytes) Pack8 {
  scalar_t v[kElementsPerThread];
};

template <typename scalar_t>
constexpr int kPackWords = static_cast<int>(sizeof(Pack8<scalar_t>) / kVectorBytes);

enum class Cache : int {
  kStream,  // read or written once (rows): evict first
  kKeep,    // read again by other rows (learned tables, weight rows): the default policy
};

// The 8 elements from `p` (16-byte aligned, unit stride). (kTableBytes: traced as table bytes,
// for the sector counts: rows of given tables, such as rotary_tables' cos and sin.)
template <Cache kCache = Cache::kStream, bool kTableBytes = false, typename scalar_t>
__device__ __forceinline__ Pack8<scalar_t> load_row(const scalar_t* p) {
  Pack8<scalar_t> pack;
#if defined(__CUDA_ARCH__)
  const uint4* words = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int w = 0; w < kPackWords<scalar_t>; ++w) {
    const uint4 word = kCache == Cache::kStream ? __ldcs(words + w) : __ldg(words + w);
    std::memcpy(reinterpret_cast<unsigned char*>(&pack) + w * kVectorBytes, &word, kVectorBytes);
  }
#else
  POSENC_CHECK_VECTOR_ACCESS(p);
  for (int w = 0; w < kPackWords<scalar_t>; ++w) {
    const unsigned char* word = reinterpret_cast<const unsigned char*>(p) + w * kVectorBytes;
    if constexpr (kTableBytes) {
      POSENC_TRACE_ACCESS(kTableLoad, word, kVectorBytes);
    } else {
      POSENC_TRACE_ACCESS(kRowLoad, word, kVectorBytes);
    }
  }
  std::memcpy(&pack, p, sizeof(pack));
#endif
  return pack;
}

// Writes the 8 elements of `pack` to `p` (16-byte aligned, unit stride), streamed.
template <typename scalar_t>
__device__ __forceinline__ void store_row(scalar_t* p, const Pack8<scalar_t>& pack) {
#if defined(__CUDA_ARCH__)
  uint4* words = reinterpret_cast<uint4*>(p);
#pragma unroll
  for (int w = 0; w < kPackWords<scalar_t>; ++w) {
    uint4 word;
    std::memcpy(&word, reinterpret_cast<const unsigned char*>(&pack) + w * kVectorBytes,
                kVectorBytes);
    __stcs(words + w, word);
  }
#else
  POSENC_CHECK_VECTOR_ACCESS(p);
  for (int w = 0; w < kPackWords<scalar_t>; ++w) {
    POSENC_TRACE_ACCESS(kRowStore, reinterpret_cast<unsigned char*>(p) + w * kVectorBytes,
                        kVectorBytes);
  }
  std::memcpy(p, &pack, sizeof(pack));
#endif
}

// Adds the 8 floats of `sums` to `p` (16-byte aligned) atomically: on sm_90 two 128-bit
// reductions (REDG.E.ADD.F32x4), else eight 32-bit ones.
__device__ __forceinline__ void atomic_add_row(float* p, const Pack8<float>& sums) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  float4* words = reinterpret_cast<float4*>(p);
  atomicAdd(words, make_float4(sums.v[0], sums.v[1], sums.v[2], sums.v[3]));
  atomicAdd(words + 1, make_float4(sums.v[4], sums.v[5], sums.v[6], sums.v[7]));
#else
#if !defined(__CUDA_ARCH__)
  POSENC_CHECK_VECTOR_ACCESS(p);
  POSENC_TRACE_ACCESS(kReduction, p, kVectorBytes);
  POSENC_TRACE_ACCESS(kReduction, p + 4, kVectorBytes);
#endif
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) atomicAdd(p + k, sums.v[k]);
#endif
}

// One element of a row that does not move as vectors.
template <typename scalar_t>
__device__ __forceinline__ scalar_t load_element(const scalar_t* p) {
  POSENC_TRACE_ACCESS(kRowLoad, p, sizeof(scalar_t));
  return *p;
}

template <typename scalar_t>
__device__ __forceinline__ void store_element(scalar_t* p, scalar_t value) {
  POSENC_TRACE_ACCESS(kRowStore, p, sizeof(scalar_t));
  *p = value;
}

// The 8 elements from `p`, kept in cache (learned table rows).
template <typename scalar_t>
__device__ __forceinline__ Pack8<scalar_t> load_pack(const scalar_t* p) {
  return load_row<Cache::kKeep>(p);
}

// `values` rounded to the storage type and written to `p` as one row group.
template <typename scalar_t>
__device__ __forceinline__ void store8(scalar_t* p, const acc_t<scalar_t>* values) {
  Pack8<scalar_t> pack;
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) store_from_acc(&pack.v[k], values[k]);
  store_row(p, pack);
}

// Element `offset` of an int64 or int32 index tensor (ids, positions), through the read-only
// path.
__device__ __forceinline__ int64_t load_int64_readonly(const int64_t* p) {
  POSENC_TRACE_ACCESS(kIndexLoad, p, sizeof(int64_t));
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

__device__ __forceinline__ int64_t load_index_readonly(const StridedIndex& index, int64_t offset) {
  if (index.type == IndexType::kInt64) {
    return load_int64_readonly(static_cast<const int64_t*>(index.data) + offset);
  }
  const int32_t* p = static_cast<const int32_t*>(index.data) + offset;
  POSENC_TRACE_ACCESS(kIndexLoad, p, sizeof(int32_t));
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// One double of a per-launch table (channel codes, frequency splits).
__device__ __forceinline__ double load_table(const double* p) {
  POSENC_TRACE_ACCESS(kTableLoad, p, sizeof(double));
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
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

// The position of (b, t), checked: a row of the table for kind "learned", a token of a grid.
__device__ int64_t checked_position(const AddPositionalParams& p, const int64_t* fairseq, int64_t b,
                                    int64_t t) {
  const int64_t position = position_of(p, fairseq, b, t);
  POSENC_DEVICE_CHECK(position_has_code(p, position),
                      "posenc: positions must be in [0, the table's rows) for kind 'learned' and "
                      "in [0, extra_tokens + the grid's patches) on a grid");
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
  return ChannelCode{{load_table(v), load_table(v + field), load_table(v + 2 * field)},
                     load_table(v + 3 * field),
                     load_table(v + 4 * field)};
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

// combine(scale * x, pe) for a combine known at compile time.
template <Combine kCombine, typename acc>
__device__ __forceinline__ acc combine_value(acc scale, acc x, acc pe) {
  if constexpr (kCombine == Combine::kAdd) return scale * x + pe;
  if constexpr (kCombine == Combine::kMul) return (scale * x) * pe;
  if constexpr (kCombine == Combine::kScaleOnly) return scale * x;
  return pe;
}

// combine(scale * x, pe) for a combine known at run time, without a branch (a switch per element
// is an indirect branch): (scale * x) * m + a, with (m, a) = (1, pe) for add, (pe, 0) for mul,
// (1, 0) for scale only; position only has no input (x = 0) and adds pe.
template <typename acc>
__device__ __forceinline__ acc combine_value(Combine combine, acc scale, acc x, acc pe) {
  const bool multiply = combine == Combine::kMul;
  const bool add = combine == Combine::kAdd || combine == Combine::kPositionOnly;
  return (scale * x) * (multiply ? pe : acc(1)) + (add ? pe : acc(0));
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

// ---- launch planning (host) ---------------------------------------------------------------------

// Blocks for `work` items at `per_block` a block, at most `limit`: kernels walk the rest with
// grid-stride loops.
unsigned int blocks_for(int64_t work, int64_t per_block, unsigned int limit) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > limit ? limit : blocks));
}

// Whether a launch evaluates computed codes, and so reads a channel table.
bool needs_channel_table(const AddPositionalParams& params) {
  return params.source.kind != PositionKind::kLearned && params.combine != Combine::kScaleOnly;
}

// The streaming multiprocessors of the current device (asked once per device).
unsigned int multiprocessors() {
#if defined(__CUDACC__)
  constexpr int kMaxDevices = 64;
  static int counts[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 132;
  if (counts[device] == 0) {
    int count = 0;
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    counts[device] = count > 0 ? count : 132;
  }
  return static_cast<unsigned int>(counts[device]);
#else
  return cuda_emulation::limits().multiprocessors;
#endif
}

// f(tag) for the dtypes of the dense kernels (bfloat16, float16, float32) as a launch status;
// float64, which only the general kernels take, is cudaErrorInvalidValue.
template <typename F>
int dispatch_dense_dtype(DType dtype, F&& f) {
  return dispatch_dtype(dtype, [&](auto tag) -> int {
    if constexpr (std::is_same_v<decltype(tag), double>) {
      return static_cast<int>(cudaErrorInvalidValue);
    } else {
      return f(tag);
    }
  });
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

}  // namespace
}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
