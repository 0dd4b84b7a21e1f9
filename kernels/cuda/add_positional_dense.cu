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
// flight. (Unpaired channels read their codes from the table per step instead.)
constexpr int kPairs = kElementsPerThread / 2;
constexpr size_t kDenseCodeBytes = kPairs * (3 * sizeof(double) + sizeof(float)) + sizeof(uint32_t);

struct PairedCodes {
  double* frequency;       // [3 * kPairs][threads]: high, middle and low of each angle
  float* amplitude;        // [kPairs][threads]
  uint32_t* cosine_first;  // [threads]: bit k, channel 2k is the cosine
  int thread;
  int threads;

  __device__ double& f(int piece, int k) {
    return frequency[(piece * kPairs + k) * threads + thread];
  }
};

// The thread's slots in the block's dynamic shared memory (kDenseCodeBytes a thread).
__device__ __forceinline__ PairedCodes paired_codes_slots() {
  POSENC_DYNAMIC_SHARED(double, shared);
  PairedCodes codes;
  codes.threads = static_cast<int>(blockDim.x * blockDim.y);
  codes.thread = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  codes.frequency = shared;
  codes.amplitude = reinterpret_cast<float*>(shared + 3 * kPairs * codes.threads);
  codes.cosine_first = reinterpret_cast<uint32_t*>(codes.amplitude + kPairs * codes.threads);
  return codes;
}

__device__ __forceinline__ void load_paired_codes(const ChannelTable& table, int64_t g,
                                                  PairedCodes& codes) {
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
__device__ __forceinline__ void evaluate_paired(PairedCodes& codes, int64_t position, float* pe) {
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

template <typename scalar_t, Combine kCombine, Source kSource, bool kDropout, bool kGather>
__global__ void POSENC_LAUNCH_BOUNDS(kDenseThreads,
                                     kSource == Source::kChannels ? 1 : kDenseBlocksPerSm)
    add_positional_dense_kernel(const POSENC_GRID_CONSTANT AddPositionalParams p,
                                const int64_t* seed, ChannelTable table) {
  using acc = acc_t<scalar_t>;
  static_assert(sizeof(acc) == sizeof(float), "the dense kernel computes in float");
  constexpr bool kCode = kSource != Source::kNone;
  constexpr bool kInput = kCombine != Combine::kPositionOnly;
  constexpr int kRows = kDenseRows<scalar_t>;
  const int64_t seq_len = p.shape.seq_len;
  const int64_t dim = p.shape.dim;
  const int64_t groups = dim / kElementsPerThread;
  const int64_t batch = p.shape.batch_count();
  // At most one batch dimension (dense_rows): row b is b * batch_stride.
  const int64_t x_batch = p.shape.batch_ndim == 1 ? p.x.batch_strides[0] : 0;
  const int64_t out_batch = p.shape.batch_ndim == 1 ? p.out.batch_strides[0] : 0;
  const int64_t ids_batch = p.shape.batch_ndim == 1 ? p.gather.ids.batch_strides[0] : 0;
  const acc scale = static_cast<acc>(p.scale);
  Dropout dropout;
  if constexpr (kDropout) dropout = device_dropout(p.dropout, seed);
  const acc keep_scale = static_cast<acc>(dropout.keep_scale);
  const int64_t row_step = gridDim.z;
  for (int64_t g = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t d0 = g * kElementsPerThread;
    PairedCodes codes = paired_codes_slots();
    if constexpr (kSource == Source::kPaired) load_paired_codes(table, g, codes);
    for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < seq_len;
         t += static_cast<int64_t>(gridDim.x) * blockDim.y) {
      scalar_t* out =
          static_cast<scalar_t*>(const_cast<void*>(p.out.data)) + t * p.out.seq_stride + d0;
      // Values the kernel indexes with are checked where they are read, but asserted after the
      // step (a device-side assert is a call, kept out of the row loop); until then a bad one
      // is clamped, so that no read leaves its tensor.
      bool bad_id = false;
      const scalar_t* source[kRows];
      bool padding[kRows];
      Pack8<scalar_t> raw[kRows];
      // The sources of the rows of batch indices b0, b0 + row_step, ...; those past the batch's
      // end are not loaded.
      auto load_rows = [&](int64_t b0) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int64_t row = b0 + r * row_step;
          const int64_t valid_row = row < batch ? row : b0;
          padding[r] = false;
          if constexpr (kGather) {
            int64_t id = load_index_readonly(p.gather.ids,
                                             valid_row * ids_batch + t * p.gather.ids.seq_stride);
            bad_id = bad_id || id < 0 || id >= p.gather.vocab;
            id = id < 0 ? 0 : (id >= p.gather.vocab ? p.gather.vocab - 1 : id);
            source[r] = static_cast<const scalar_t*>(p.gather.weight) + id * p.gather.row_stride;
            padding[r] = id == p.gather.padding_idx;
          } else if constexpr (kInput) {
            source[r] =
                static_cast<const scalar_t*>(p.x.data) + valid_row * x_batch + t * p.x.seq_stride;
          }
        }
        if constexpr (kInput) {
          // Issued together, with no branch and no use between them.
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (b0 + r * row_step < batch) {
              raw[r] = kGather ? load_row<Cache::kKeep>(source[r] + d0) : load_row(source[r] + d0);
            }
          }
        }
      };
      int64_t b0 = blockIdx.z;
      load_rows(b0);
      // The codes of step t, while the first rows' loads are in flight.
      acc pe[kElementsPerThread];
      bool bad_position = false;
      if constexpr (kCode) {
        // Shared by the batch (dense_rows): batch index 0's.
        int64_t position = p.positions.data == nullptr
                               ? p.offset + t
                               : load_index_readonly(p.positions, t * p.positions.seq_stride);
        bad_position = position < 0;
        if constexpr (kSource == Source::kTable) {
          bad_position = bad_position || position >= p.source.table_rows;
          position = bad_position ? 0 : position;
          const Pack8<scalar_t> row = load_pack(static_cast<const scalar_t*>(p.source.table) +
                                                position * p.source.table_row_stride + d0);
#pragma unroll
          for (int k = 0; k < kElementsPerThread; ++k) pe[k] = load_as_acc(&row.v[k]);
        } else if constexpr (kSource == Source::kPaired) {
          evaluate_paired(codes, position, pe);
        } else {
#pragma unroll
          for (int k = 0; k < kElementsPerThread; ++k) {
            pe[k] = evaluate_channel<float>(channel_at(table, d0 + k), position);
          }
        }
      }
      // The row loop: combine, drop out and store the loaded rows, then load the next ones.
      while (true) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int64_t row = b0 + r * row_step;
          if (row >= batch) break;
          uint32_t kept = 0;  // bit k: element k is kept
          if constexpr (kDropout) {
            // D % 8 == 0, so the group's 8 draws are one counter's (the CPU's mask bits).
            const uint64_t first = static_cast<uint64_t>((row * seq_len + t) * dim + d0);
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
              code = kCombine == Combine::kMul ? (padding[r] ? acc(1) : pe[k])
                                               : (padding[r] ? acc(0) : pe[k]);
            }
            acc y = combine_value<kCombine>(scale, x, code);
            if constexpr (kDropout) y = (kept >> k) & 1u ? y * keep_scale : acc(0);
            store_from_acc(&result.v[k], y);
          }
          store_row(out + row * out_batch, result);
        }
        b0 += kRows * row_step;
        if (b0 >= batch) break;
        load_rows(b0);
      }
      POSENC_DEVICE_CHECK(!bad_id, "posenc: ids must be in [0, V)");
      POSENC_DEVICE_CHECK(!bad_position,
                          "posenc: positions must be >= 0 (and < the table's rows for kind "
                          "'learned')");
    }
  }
}

template <typename scalar_t, Combine kCombine, Source kSource, bool kDropout, bool kGather>
int launch(const AddPositionalParams& params, const int64_t* seed, const ChannelTable& table,
           const DenseGrid& grid, void* stream) {
  const size_t code_bytes = kSource == Source::kPaired ? kDenseCodeBytes * kDenseThreads : 0;
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
  switch (params.dtype) {
    case DType::kBFloat16:
      return launch_variant<BFloat16>(params, seed, table, source, grid, stream);
    case DType::kFloat16:
      return launch_variant<Float16>(params, seed, table, source, grid, stream);
    case DType::kFloat32:
      return launch_variant<float>(params, seed, table, source, grid, stream);
    case DType::kFloat64:
      break;
  }
  return static_cast<int>(cudaErrorInvalidValue);  // float64 takes the general kernel
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
