// The dense kernel of add_positional and embedding: launches whose rows all move as 16-byte
// vectors (dense_rows in add_positional.cu). Built to run at the memory floor:
// - one instantiation per dtype, combine, dropout and gather, so that no element branches;
// - a thread owns a group of 8 channels for the whole launch and keeps their codes (frequency
//   splits, phases, amplitudes) in registers: the channel table is read once per thread, not per
//   row or step;
// - per step t, the rows of kDenseRows batch indices are loaded (128-bit streaming loads, issued
//   together, before the codes are evaluated and before any is used), then combined, dropped
//   out with one Philox call per 8 draws (the CPU's mask bits) and stored (128-bit streaming
//   stores);
// - the grid is sized to the GPU (dense_grid in add_positional.cu) and walked with grid-stride
//   loops.
#include <type_traits>

#include "cuda/add_positional_dense.cuh"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

// Where a launch's codes come from: none (the add's input gradient), channels of a computed kind
// whose (2k, 2k + 1) are the sine and cosine of one angle (sinusoidal, linear and damped codes,
// interleaved: one sincos serves both), channels of any computed kind, or a learned table.
enum class Source : int { kNone, kPaired, kChannels, kTable };

// A paired thread's codes, read from the table once and kept for every step it walks: per angle
// (channels 2k and 2k + 1) its frequency, its amplitude and whether channel 2k is the cosine
// (linear, damped) or the sine (sinusoidal). They live in the thread's own slots of shared
// memory ([slot][thread]: conflict-free, no barrier), which leaves the registers to the rows in
// flight. (Unpaired channels read their codes from the table per step instead, and evaluate
// them one at a time into the same slots.)
constexpr int kPairs = kElementsPerThread / 2;
constexpr size_t kDenseCodeBytes = kPairs * (3 * sizeof(double) + sizeof(float)) + sizeof(uint32_t);

struct CodeSlots {
  double* frequency;       // [3 * kPairs][threads]: high, middle and low of each angle
  float* amplitude;        // [kPairs][threads]
  uint32_t* cosine_first;  // [threads]: bit k, channel 2k is the cosine
  int thread;
  int threads;

  __device__ double& f(int piece, int k) {
    return frequency[(piece * kPairs + k) * threads + thread];
  }
  // Unpaired channels: the same memory as [8][threads] floats, their codes at one step.
  __device__ float* evaluated() { return reinterpret_cast<float*>(frequency); }
};

// The thread's slots in the block's dynamic shared memory (kDenseCodeBytes a thread).
__device__ __forceinline__ CodeSlots code_slots() {
  POSENC_DYNAMIC_SHARED(double, shared);
  CodeSlots codes;
  codes.threads = static_cast<int>(blockDim.x * blockDim.y);
  codes.thread = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  codes.frequency = shared;
  codes.amplitude = reinterpret_cast<float*>(shared + 3 * kPairs * codes.threads);
  codes.cosine_first = reinterpret_cast<uint32_t*>(codes.amplitude + kPairs * codes.threads);
  return codes;
}

__device__ __forceinline__ void load_paired_codes(const ChannelTable& table, int64_t g,
                                                  CodeSlots& codes) {
  const int64_t field = channel_field_entries(table.groups);
  uint32_t cosine_first = 0;
#pragma unroll
  for (int k = 0; k < kPairs; ++k) {
    const double* v = table.values + channel_entry(table.groups, g * kElementsPerThread + 2 * k);
    codes.f(0, k) = load_table(v);
    codes.f(1, k) = load_table(v + field);
    codes.f(2, k) = load_table(v + 2 * field);
    cosine_first |= static_cast<uint32_t>(load_table(v + 3 * field) != 0.0) << k;
    codes.amplitude[k * codes.threads + codes.thread] =
        static_cast<float>(load_table(v + 4 * field));
  }
  codes.cosine_first[codes.thread] = cosine_first;
}

// PE(position) of a paired thread's 8 channels: one sincos per angle.
__device__ __forceinline__ void evaluate_paired(CodeSlots& codes, int64_t position, float* pe) {
  const double p = static_cast<double>(position);
  const uint32_t cosine_first = codes.cosine_first[codes.thread];
#pragma unroll
  for (int k = 0; k < kPairs; ++k) {
    const SinCos<float> sc =
        sincos_turns<float>(reduced_turns(p, codes.f(0, k), codes.f(1, k), codes.f(2, k), 0.0));
    const float amplitude = codes.amplitude[k * codes.threads + codes.thread];
    const bool cosine = (cosine_first >> k) & 1u;
    pe[2 * k] = amplitude * (cosine ? sc.cos : sc.sin);
    pe[2 * k + 1] = amplitude * (cosine ? sc.sin : sc.cos);
  }
}

// Marks "no position yet": no row's position after the clamp at the paired codes' use.
constexpr int64_t kNoPosition = INT64_MIN;

// The position of row (b, t): offset + t, or positions[b, t] (`positions_batch`: the stride of b,
// 0 where the batch shares one row of positions).
__device__ __forceinline__ int64_t row_position(const AddPositionalParams& p,
                                                int64_t positions_batch, int64_t b, int64_t t) {
  return p.positions.data == nullptr
             ? p.offset + t
             : load_index_readonly(p.positions, b * positions_batch + t * p.positions.seq_stride);
}

template <typename scalar_t, Combine kCombine, Source kSource, bool kDropout, bool kGather>
__global__ void POSENC_LAUNCH_BOUNDS(kDenseThreads, kDenseBlocksPerSm)
    add_positional_dense_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                const int64_t* seed, ChannelTable table) {
  using acc = acc_t<scalar_t>;
  static_assert(sizeof(acc) == sizeof(float), "the dense kernel computes in float");
  constexpr bool kCode = kSource != Source::kNone;
  constexpr bool kInput = kCombine != Combine::kPositionOnly;
  // Gathers with dropout take more registers: their 16-bit rows keep 3 rows (48 bytes) in flight
  // rather than 4, so that two blocks still fit an SM without spills (24 KiB per SM).
  constexpr bool kHeavy = kDropout && kGather;
  constexpr int kRows =
      kHeavy && sizeof(scalar_t) == 2 ? kDenseRows<scalar_t> - 1 : kDenseRows<scalar_t>;
  const int64_t seq_len = p.shape.seq_len;
  const int64_t dim = p.shape.dim;
  const int64_t groups = dim / kElementsPerThread;
  const int64_t batch = p.shape.batch_count();
  // At most one batch dimension (dense_rows): row b is b * batch_stride.
  const int64_t x_batch = p.shape.batch_ndim == 1 ? p.x.batch_strides[0] : 0;
  const int64_t out_batch = p.shape.batch_ndim == 1 ? p.out.batch_strides[0] : 0;
  const int64_t ids_batch = p.shape.batch_ndim == 1 ? p.gather.ids.batch_strides[0] : 0;
  // Unpaired codes need positions shared by the batch (dense_rows); the others take any.
  const int64_t positions_batch = p.shape.batch_ndim == 1 ? p.positions.batch_strides[0] : 0;
  const acc scale = static_cast<acc>(p.scale);
  Dropout dropout;
  if constexpr (kDropout) dropout = device_dropout(p.dropout, seed);
  const acc keep_scale = static_cast<acc>(dropout.keep_scale);
  const int64_t row_step = gridDim.z;
  for (int64_t g = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t d0 = g * kElementsPerThread;
    CodeSlots codes = code_slots();
    if constexpr (kSource == Source::kPaired) load_paired_codes(table, g, codes);
    // The thread's rows (t, b): its steps t = t_first + i * step_stride and its batch rows
    // b = b_first + k * row_step, walked step by step in chunks of kRows rows. A chunk may span
    // steps, so a small batch (1 in inference) still keeps kRows rows in flight; unpaired codes
    // (8 evaluations a step) keep a chunk within one step, so that their evaluation is inlined
    // once, not once per row.
    constexpr bool kSpanSteps = kSource != Source::kChannels;
    // (T and the batch are below 2^30 here, dense_rows: steps and rows count in 32 bits.)
    const int32_t seq_len32 = static_cast<int32_t>(seq_len);
    const int32_t batch32 = static_cast<int32_t>(batch);
    const int32_t step_stride = static_cast<int32_t>(gridDim.x * blockDim.y);
    const int32_t t_first = static_cast<int32_t>(blockIdx.x * blockDim.y + threadIdx.y);
    const int32_t b_first = static_cast<int32_t>(blockIdx.z);
    const int32_t row_step32 = static_cast<int32_t>(row_step);
    if (t_first >= seq_len32 || b_first >= batch32) continue;
    int32_t next_t = t_first, next_b = b_first;  // the next row to load
    // Values the kernel indexes with are checked where they are read, but asserted after the
    // loop (a device-side assert is a call, kept out of it); until then a bad one is clamped,
    // so that no read leaves its tensor.
    bool bad_id = false;
    bool bad_position = false;
    acc pe[kElementsPerThread] = {};
    int64_t code_t = -1;  // the step whose codes pe holds (unpaired codes)
    // The position whose codes pe holds (paired codes); kNoPosition before the first. A flag
    // beside it made the compiler issue the row loads fewer at a time (machine-code rules).
    int64_t code_position = kNoPosition;
    while (next_t < seq_len32) {
      const int32_t chunk_t = next_t;
      if constexpr (kSource == Source::kChannels) {
        // The codes of the chunk's step (shared by the batch), before its loads: 8 evaluations'
        // registers are not live beside the rows in flight; other warps hide the wait.
        if (chunk_t != code_t) {
          const int64_t position = row_position(p, 0, 0, chunk_t);
          // One channel at a time (a loop, not unrolled: one evaluation's registers) into the
          // thread's own shared slots ([8][threads]: conflict-free, no barrier), then into pe.
          float* slots = codes.evaluated();
#pragma unroll 1
          for (int k = 0; k < kElementsPerThread; ++k) {
            slots[k * codes.threads + codes.thread] =
                evaluate_channel<float>(channel_at(table, d0 + k), position);
          }
#pragma unroll
          for (int k = 0; k < kElementsPerThread; ++k)
            pe[k] = slots[k * codes.threads + codes.thread];
          code_t = chunk_t;
        }
      }
      int32_t row_t[kRows], row_b[kRows];
      bool valid[kRows];
      const scalar_t* source[kRows];
      const scalar_t* table_row[kRows];
      uint32_t padding = 0;  // bit r: row r is a padding token
      Pack8<scalar_t> raw[kRows], table_raw[kRows];
      // The chunk's rows; those past the thread's last row repeat its first (loaded, a cache
      // hit, and not stored), so that the loads need no branch.
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        valid[r] = next_t < seq_len32 && (kSpanSteps || next_t == chunk_t);
        row_t[r] = valid[r] ? next_t : row_t[0];
        row_b[r] = valid[r] ? next_b : row_b[0];
        next_b += row_step32;  // below 2^31 + 2^16: no overflow in 32 bits
        const bool next_step = next_b >= batch32;
        if (kSpanSteps || valid[r]) {  // (a chunk within one step stops at its end)
          next_b = next_step ? b_first : next_b;
          next_t = next_step ? next_t + step_stride : next_t;  // T + stride < 2^31
        }
        const int64_t t = row_t[r], b = row_b[r];
        if constexpr (kGather) {
          int64_t id =
              load_index_readonly(p.gather.ids, b * ids_batch + t * p.gather.ids.seq_stride);
          bad_id = bad_id || id < 0 || id >= p.gather.vocab;
          id = id < 0 ? 0 : (id >= p.gather.vocab ? p.gather.vocab - 1 : id);
          source[r] = static_cast<const scalar_t*>(p.gather.weight) + id * p.gather.row_stride;
          padding |= static_cast<uint32_t>(id == p.gather.padding_idx) << r;
        } else if constexpr (kInput) {
          source[r] = static_cast<const scalar_t*>(p.x.data) + b * x_batch + t * p.x.seq_stride;
        }
        if constexpr (kSource == Source::kTable) {
          int64_t row = row_position(p, positions_batch, b, t);
          const bool bad = row < 0 || row >= p.source.table_rows;  // a learned table's rows
          bad_position = bad_position || bad;
          row = bad ? 0 : row;
          table_row[r] =
              static_cast<const scalar_t*>(p.source.table) + row * p.source.table_row_stride + d0;
        }
      }
      // Issued together, with no branch and no use between them.
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if constexpr (kInput) {
          raw[r] = kGather ? load_row<Cache::kKeep>(source[r] + d0) : load_row(source[r] + d0);
        }
        if constexpr (kSource == Source::kTable) table_raw[r] = load_pack(table_row[r]);
      }
      // Combine, drop out and store the chunk's rows. Padding rows are combined too and only
      // their store is skipped: a branch around their work would let the compiler sink their
      // loads into it, one at a time.
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t t = row_t[r], b = row_b[r];
        if constexpr (kSource == Source::kPaired) {
          // Read here rather than with the chunk's loads: held for the chunk, the positions'
          // registers made the compiler issue the row loads one at a time.
          // Any position has a computed code (negative ones are relative positions). A given
          // INT64_MIN is taken as INT64_MIN + 1, never kNoPosition: both convert to the same
          // double, so the code is the same.
          const int64_t given = row_position(p, positions_batch, b, t);
          const int64_t position = given == kNoPosition ? kNoPosition + 1 : given;
          if (position != code_position) {  // a new step, or another row's
            evaluate_paired(codes, position, pe);
            code_position = position;
          }
        } else if constexpr (kSource == Source::kTable) {
#pragma unroll
          for (int k = 0; k < kElementsPerThread; ++k) pe[k] = load_as_acc(&table_raw[r].v[k]);
        }
        uint32_t kept = 0;  // bit k: element k is kept
        if constexpr (kDropout) {
          // D % 8 == 0, so the group's 8 draws are one counter's (the CPU's mask bits).
          const uint64_t first = static_cast<uint64_t>((b * seq_len + t) * dim + d0);
          const Philox4 draws = philox4x32_10(first / kDropoutElementsPerCounter, dropout.seed);
#pragma unroll
          for (int k = 0; k < kElementsPerThread; ++k) {
            kept |= static_cast<uint32_t>(dropout_draw(draws, k) < dropout.keep_threshold) << k;
          }
        }
        Pack8<scalar_t> result;
#pragma unroll
        for (int k = 0; k < kElementsPerThread; ++k) {
          acc x = acc(0);
          if constexpr (kInput) x = load_as_acc(&raw[r].v[k]);
          // A padding token gets no code: add 0, or multiply by 1.
          acc code = acc(0);
          if constexpr (kCode) {
            const bool pad = (padding >> r) & 1u;
            code = kCombine == Combine::kMul ? (pad ? acc(1) : pe[k]) : (pad ? acc(0) : pe[k]);
          }
          acc y = combine_value<kCombine>(scale, x, code);
          if constexpr (kDropout) y = (kept >> k) & 1u ? y * keep_scale : acc(0);
          store_from_acc(&result.v[k], y);
        }
        if (valid[r]) {
          store_row(static_cast<scalar_t*>(const_cast<void*>(p.out.data)) + b * out_batch +
                        t * p.out.seq_stride + d0,
                    result);
        }
      }
    }
    POSENC_DEVICE_CHECK(!bad_id, "posenc: ids must be in [0, V)");
    POSENC_DEVICE_CHECK(!bad_position,
                        "posenc: positions must be in [0, the table's rows) for kind 'learned'");
  }
}

template <typename scalar_t, Combine kCombine, Source kSource, bool kDropout, bool kGather>
int launch(const AddPositionalParams& params, const int64_t* seed, const ChannelTable& table,
           const DenseGrid& grid, void* stream) {
  const size_t code_bytes = kSource == Source::kPaired ? kDenseCodeBytes * kDenseThreads
                            : kSource == Source::kChannels
                                ? kElementsPerThread * sizeof(float) * kDenseThreads
                                : 0;
  POSENC_LAUNCH((add_positional_dense_kernel<scalar_t, kCombine, kSource, kDropout, kGather>),
                grid.blocks, grid.threads, code_bytes, stream, params, seed, table);
  return launch_status();
}

// The instantiations of a combine with codes: each source, with and without dropout and gather.
template <typename scalar_t, Combine kCombine>
int launch_coded(const AddPositionalParams& params, const int64_t* seed, const ChannelTable& table,
                 Source source, const DenseGrid& grid, void* stream) {
  const int variant = (params.dropout.active ? 1 : 0) + (params.gather.weight != nullptr ? 2 : 0);
  auto with = [&](auto source_tag) {
    constexpr Source kSource = decltype(source_tag)::value;
    switch (variant) {
      case 0:
        return launch<scalar_t, kCombine, kSource, false, false>(params, seed, table, grid, stream);
      case 1:
        return launch<scalar_t, kCombine, kSource, true, false>(params, seed, table, grid, stream);
      case 2:
        return launch<scalar_t, kCombine, kSource, false, true>(params, seed, table, grid, stream);
      default:
        return launch<scalar_t, kCombine, kSource, true, true>(params, seed, table, grid, stream);
    }
  };
  switch (source) {
    case Source::kPaired:
      return with(std::integral_constant<Source, Source::kPaired>());
    case Source::kChannels:
      return with(std::integral_constant<Source, Source::kChannels>());
    default:
      return with(std::integral_constant<Source, Source::kTable>());
  }
}

// The instantiation of the launch. The dense path never gathers for a backward (grads are rows
// of their own), never drops out position codes alone, and reads no codes for the add's input
// gradient.
template <typename scalar_t>
int launch_variant(const AddPositionalParams& params, const int64_t* seed,
                   const ChannelTable& table, Source source, const DenseGrid& grid, void* stream) {
  switch (params.combine) {
    case Combine::kAdd:
      return launch_coded<scalar_t, Combine::kAdd>(params, seed, table, source, grid, stream);
    case Combine::kMul:
      return launch_coded<scalar_t, Combine::kMul>(params, seed, table, source, grid, stream);
    case Combine::kScaleOnly:
      return params.dropout.active
                 ? launch<scalar_t, Combine::kScaleOnly, Source::kNone, true, false>(
                       params, seed, table, grid, stream)
                 : launch<scalar_t, Combine::kScaleOnly, Source::kNone, false, false>(
                       params, seed, table, grid, stream);
    case Combine::kPositionOnly:
      break;
  }
  return source == Source::kPaired
             ? launch<scalar_t, Combine::kPositionOnly, Source::kPaired, false, false>(
                   params, seed, table, grid, stream)
             : launch<scalar_t, Combine::kPositionOnly, Source::kChannels, false, false>(
                   params, seed, table, grid, stream);
}

}  // namespace

int launch_dense(const AddPositionalParams& params, const int64_t* seed,
                 const double* channel_table, bool paired, const DenseGrid& grid, void* stream) {
  const ChannelTable table{channel_table, channel_groups(params.shape.dim)};
  const Source source = params.source.kind == PositionKind::kLearned ? Source::kTable
                        : paired                                     ? Source::kPaired
                                                                     : Source::kChannels;
  return dispatch_dense_dtype(params.dtype, [&](auto tag) {
    return launch_variant<decltype(tag)>(params, seed, table, source, grid, stream);
  });
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
