// CUDA kernels of add_positional, embedding and positional_encoding (the row forward and the
// input gradient), and fairseq's positions. Launches whose rows all move as 16-byte vectors take
// the dense kernel (add_positional_dense.cu); every other launch the general kernel here.
#include "cuda/add_positional_dense.cuh"
#include "cuda/add_positional_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

constexpr int kMaxBatchBlocks = 64;
constexpr int64_t kTargetThreads = 1 << 20;  // enough resident work for a large GPU
constexpr int kScanThreads = 128;            // steps of T a block scans at a time (fairseq)
// Waves of resident blocks the dense grid holds: a few, so that blocks finishing early take
// more of the steps and the last wave's tail stays short.
constexpr int kDenseWaves = 4;

// ---- the general kernel -------------------------------------------------------------------------
// grid: (step blocks, channel-group blocks, batch blocks), block: (group lanes, steps). A thread
// owns a group of 8 consecutive channels at one step t and walks the batch rows b with it, two
// rows at a time: per-row or fairseq positions, grids, strided or unaligned rows, D % 8 != 0,
// float64. The 8 codes are evaluated once per (t, group) into the thread's column of shared
// memory (so that their registers never add to the rows') and reused for every row whose
// position is the same; each row moves as 16-byte vectors where it allows it, else element by
// element. The combine is a select per element, not a branch.
constexpr int kGeneralRows = 2;  // rows the general kernel loads before it stores any

// The codes of channels d0 .. d0 + count - 1 at `position`, into the thread's column of `pe`
// (slot k at pe[k * pe_stride]). Unrolled by 2, so that table loads and evaluations overlap (a
// rolled loop waits for each load in turn).
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
      const scalar_t value = load_element(row + (d0 + k) * p.source.table_dim_stride);
      pe[k * pe_stride] = load_as_acc(&value);
    }
  } else {
#pragma unroll 2
    for (int k = 0; k < count; ++k) {
      pe[k * pe_stride] = evaluate_channel<acc_t<scalar_t>>(channel_at(channels, d0 + k), position);
    }
  }
}

// Combines, drops out and stores the group of batch row b at step t, from its elements as
// stored (`raw`, 0 past the row's end), into `out` (the output row of (b, t)).
template <typename scalar_t>
__device__ __forceinline__ void finish_group(const AddPositionalParams& p, const Dropout& dropout,
                                             const Pack8<scalar_t>& raw, int64_t b, bool with_code,
                                             const acc_t<scalar_t>* pe, int pe_stride, int64_t t,
                                             int64_t d0, int count, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const acc scale = static_cast<acc>(p.scale);
  const Combine combine = with_code ? p.combine : Combine::kScaleOnly;
  const uint64_t first = static_cast<uint64_t>((b * p.shape.seq_len + t) * p.shape.dim + d0);
  // One counter covers the group when it starts at a multiple of 8: one call.
  const bool one_counter = first % kDropoutElementsPerCounter == 0;
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
  if (count == kElementsPerThread && vector_row(out + d0, p.out.dim_stride)) {
    store8(out + d0, values);
  } else {
#pragma unroll
    for (int k = 0; k < kElementsPerThread; ++k) {
      if (k < count) {
        scalar_t value;
        store_from_acc(&value, values[k]);
        store_element(out + (d0 + k) * p.out.dim_stride, value);
      }
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

// The group's elements of a row as stored, 0 past the row's end (none for kPositionOnly).
template <typename scalar_t>
__device__ Pack8<scalar_t> load_group(const InputRow<scalar_t>& in, int64_t d0, int count) {
  if (in.data != nullptr && count == kElementsPerThread && vector_row(in.data + d0, in.stride)) {
    return load_row(in.data + d0);
  }
  Pack8<scalar_t> raw;
#pragma unroll
  for (int k = 0; k < kElementsPerThread; ++k) {
    raw.v[k] =
        in.data != nullptr && k < count ? load_element(in.data + (d0 + k) * in.stride) : scalar_t{};
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
      int64_t pe_position = 0;  // the position whose codes pe holds, if pe_valid
      bool pe_valid = false;
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
            if (!pe_valid || position != pe_position) {
              group_codes<scalar_t, kGrid>(p, channels, position, d0, count, pe, pe_stride);
              pe_position = position;
              pe_valid = true;
            }
          }
          scalar_t* out = static_cast<scalar_t*>(const_cast<void*>(p.out.data)) +
                          batch_offset(p.shape, p.out.batch_strides, row) + t * p.out.seq_stride;
          finish_group<scalar_t>(p, dropout, raw[r], row, with_code, pe, pe_stride, t, d0, count,
                                 out);
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

// Whether channels 2k and 2k + 1 are the sine and cosine of one angle with one amplitude: the
// sinusoidal, linear and damped codes, interleaved, on 1-D positions.
bool paired_codes(const AddPositionalParams& params) {
  const PositionCodeOptions& code = params.source.code;
  const bool pairs = code.kind == PositionKind::kSinusoidal || code.kind == PositionKind::kLinear ||
                     code.kind == PositionKind::kDamped;
  return pairs && code.layout == Layout::kInterleaved && params.source.grid.axis_count == 0 &&
         params.shape.dim % 2 == 0;
}

// Whether a launch takes the dense kernel: every row, in and out, moves as 16-byte vectors. Rows
// of x, rows of a weight gathered by ids (padding rows get no code), or none; positions offset +
// t or a tensor (not fairseq's; broadcast over the batch for unpaired computed codes, which are
// evaluated once per step); a 1-D code; at most one batch dimension (no division); T and the
// batch below 2^30 (the kernel counts rows in 32 bits); D % 8 == 0; unit channel strides;
// 16-byte aligned bases and row strides; float32, bfloat16 or float16.
bool dense_rows(const AddPositionalParams& params) {
  const RowShape& shape = params.shape;
  const int64_t bytes = element_bytes(params.dtype);
  const bool one_batch_dim = shape.batch_ndim == 1;
  const bool unpaired_codes = needs_channel_table(params) && !paired_codes(params);
  constexpr int64_t kRowLimit = int64_t{1} << 30;
  if (params.dtype == DType::kFloat64 || params.gather.fairseq_positions ||
      params.source.grid.axis_count > 0 || shape.batch_ndim > 1 ||
      shape.dim % kElementsPerThread != 0 || shape.seq_len >= kRowLimit ||
      shape.batch_count() >= kRowLimit ||
      (unpaired_codes && !shared_across_batch(shape, params.positions))) {
    return false;
  }
  const StridedRows& out = params.out;
  if (out.dim_stride != 1 ||
      !aligned_rows(out.data, one_batch_dim ? out.batch_strides[0] : 0, out.seq_stride, bytes)) {
    return false;
  }
  if (params.source.kind == PositionKind::kLearned &&
      (params.source.table_dim_stride != 1 ||
       !aligned_rows(params.source.table, 0, params.source.table_row_stride, bytes))) {
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

// The dense kernel's grid: lanes over channel groups, a block's rows over steps; a few waves of
// the GPU's resident blocks. Batch rows are split over blocks only when the steps alone cannot
// fill the GPU (a decoding step): every split evaluates the codes again.
DenseGrid dense_grid(const AddPositionalParams& params) {
  const int64_t groups = params.shape.dim / kElementsPerThread;
  const int64_t lanes = groups >= kDenseThreads ? kDenseThreads : (groups + 31) / 32 * 32;
  DenseGrid grid;
  grid.threads =
      dim3(static_cast<unsigned int>(lanes), static_cast<unsigned int>(kDenseThreads / lanes));
  const int64_t group_blocks = blocks_for(groups, lanes, max_grid_yz());
  const int64_t step_blocks = (params.shape.seq_len + grid.threads.y - 1) / grid.threads.y;
  const int64_t resident = static_cast<int64_t>(multiprocessors()) * kDenseBlocksPerSm;
  int64_t row_blocks = 1;
  if (group_blocks * step_blocks < resident) {
    row_blocks = (resident + group_blocks * step_blocks - 1) / (group_blocks * step_blocks);
    const int64_t batch = params.shape.batch_count();
    if (row_blocks > batch) row_blocks = batch;
    if (row_blocks > max_grid_yz()) row_blocks = max_grid_yz();
  }
  const int64_t waves = kDenseWaves * resident / (group_blocks * row_blocks);
  const int64_t step_grid = step_blocks < waves ? step_blocks : (waves > 0 ? waves : 1);
  grid.blocks =
      dim3(blocks_for(step_grid, 1, max_grid_x()), static_cast<unsigned int>(group_blocks),
           static_cast<unsigned int>(row_blocks));
  return grid;
}

}  // namespace

int64_t channel_table_bytes(const AddPositionalParams& params) {
  if (!needs_channel_table(params)) return 0;
  const int64_t entries = channel_field_entries(channel_groups(params.shape.dim));
  return aligned_bytes(kChannelFields * entries * static_cast<int64_t>(sizeof(double)));
}

int fill_channel_table(const AddPositionalParams& params, double* table, void* stream) {
  if (!needs_channel_table(params) || params.shape.dim == 0) return 0;
  const int64_t entries = channel_field_entries(channel_groups(params.shape.dim));
  POSENC_LAUNCH(channel_codes_kernel, blocks_for(entries, kThreads, max_grid_x()), kThreads, 0,
                stream, params.source.code, params.source.grid, params.shape.dim, table);
  return launch_status();
}

int64_t add_positional_workspace_bytes(const AddPositionalParams& params) {
  return params.gather.fairseq_positions
             ? aligned_bytes(params.shape.batch_count() * params.shape.seq_len * 8)
             : 0;
}

int add_positional(const AddPositionalParams& params, const int64_t* seed, const double* table,
                   void* workspace, void* stream) {
  const int64_t batch = params.shape.batch_count();
  if (batch == 0 || params.shape.seq_len == 0 || params.shape.dim == 0) return 0;
  if (dense_rows(params)) {
    return launch_dense(params, seed, table, paired_codes(params), dense_grid(params), stream);
  }
  const ChannelTable channels{table, channel_groups(params.shape.dim)};
  int64_t* fairseq = nullptr;
  if (params.gather.fairseq_positions) {
    fairseq = static_cast<int64_t*>(workspace);
    const int status = fairseq_positions(params, fairseq, stream);
    if (status != 0) return status;
  }
  // A block's lanes cover channel groups of 8, its rows steps t. Batch rows are split over
  // blocks only when the (t, group) items alone cannot fill the GPU: every split evaluates the
  // codes again.
  const int64_t groups = channel_groups(params.shape.dim);
  const unsigned int lanes =
      groups >= kThreads ? kThreads : static_cast<unsigned int>((groups + 31) / 32 * 32);
  const dim3 block(lanes, kThreads / lanes);
  const int64_t items = params.shape.seq_len * groups;
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    int64_t row_blocks = (kTargetThreads + items - 1) / items;
    if (row_blocks > batch) row_blocks = batch;
    if (row_blocks > kMaxBatchBlocks) row_blocks = kMaxBatchBlocks;
    if (row_blocks > max_grid_yz()) row_blocks = max_grid_yz();
    const dim3 grid(blocks_for(params.shape.seq_len, block.y, max_grid_x()),
                    blocks_for(groups, lanes, max_grid_yz()),
                    static_cast<unsigned int>(row_blocks));
    const size_t code_bytes = sizeof(acc_t<scalar_t>) * kElementsPerThread * kThreads;
    const auto kernel = params.source.grid.axis_count > 0 ? add_positional_kernel<scalar_t, true>
                                                          : add_positional_kernel<scalar_t, false>;
    POSENC_LAUNCH(kernel, grid, block, code_bytes, stream, params, seed, channels, fairseq);
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
