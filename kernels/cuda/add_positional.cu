// CUDA kernels of add_positional, embedding and positional_encoding (the row forward and the
// input gradient), and fairseq's positions.
#include "cuda/add_positional_launch.h"
#include "cuda/device.cuh"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

constexpr int kMaxBatchBlocks = 64;
constexpr int64_t kTargetThreads = 1 << 20;  // enough resident work for a large GPU
constexpr int kScanThreads = 128;            // steps of T a block scans at a time (fairseq)

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
  const int64_t fairseq =
      params.gather.fairseq_positions ? params.shape.batch_count() * params.shape.seq_len * 8 : 0;
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

int fairseq_positions(const AddPositionalParams& params, int64_t* fairseq_workspace, void* stream) {
  const int64_t batch = params.shape.batch_count();
  if (batch == 0 || params.shape.seq_len == 0) return 0;
  POSENC_LAUNCH_SYNC(fairseq_positions_kernel, blocks_for(batch, 1, max_grid_x()), kScanThreads,
                     kScanThreads * sizeof(int64_t), stream, params, fairseq_workspace);
  return launch_status();
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
