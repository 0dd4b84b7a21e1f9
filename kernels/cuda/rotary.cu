// CUDA kernels of rotary: device-side checks of offsets and cu_seqlens, and the rotation of q
// and k. Launches whose head rows all move as 16-byte vectors take the dense kernel
// (rotary_dense.cu); every other launch the general kernel here, with frequency splits computed
// once per launch.
#include "cuda/rotary_dense.cuh"
#include "cuda/rotary_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

constexpr int64_t kRotaryChunkPairs = 1024;  // cos/sin of this many pairs in shared memory
constexpr int64_t kRotaryMaxTile = 16;       // tokens a rotary block takes at a time

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
    const scalar_t e1 = load_element(item.x + first * in_step);
    const scalar_t e2 = load_element(item.x + second * in_step);
    const acc x1 = load_as_acc(&e1), x2 = load_as_acc(&e2);
    scalar_t y1, y2;
    store_from_acc(&y1, x1 * c - x2 * s);
    store_from_acc(&y2, x2 * c + x1 * s);
    store_element(item.y + first * out_step, y1);
    store_element(item.y + second * out_step, y2);
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
  int64_t* in_rows = positions + kMropeAxes * tile;                       // [2, tile]
  int64_t* out_rows = in_rows + 2 * tile;                                 // [2, tile]
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
        store_element(
            static_cast<scalar_t*>(op.out) + out_rows[k * tile + item.token] +
                item.head * op.out_strides[2] + d * op.out_strides[3],
            load_element(static_cast<const scalar_t*>(op.in) + in_rows[k * tile + item.token] +
                         item.head * op.in_strides[2] + d * op.in_strides[3]));
      }
    }
    __syncthreads();  // the next tile overwrites positions and row offsets
  }
}

}  // namespace

int64_t rotary_workspace_bytes(const RotaryParams& params) {
  if (rotary_dense(params)) return 0;  // it computes each thread's frequencies itself
  return aligned_bytes(params.rotary_dim / 2 * static_cast<int64_t>(sizeof(TurnFrequency)));
}

int rotary(const RotaryParams& params, const double* inv_freq, double base, void* workspace,
           void* stream) {
  const int64_t tokens = params.batch * params.seq_len;
  if (tokens == 0 || params.head_dim == 0) return 0;
  if (params.cu_seqlens != nullptr || params.offsets != nullptr) {
    const int64_t sequences = params.cu_seqlens != nullptr ? params.sequences : params.batch;
    POSENC_LAUNCH(rotary_check_kernel, blocks_for(sequences, kThreads, max_grid_x()), kThreads, 0,
                  stream, params);
    const int status = launch_status();
    if (status != 0) return status;
  }
  if (rotary_dense(params)) return launch_rotary_dense(params, inv_freq, base, stream);
  auto* frequencies = static_cast<TurnFrequency*>(workspace);
  const int64_t half = params.rotary_dim / 2;
  if (half > 0) {
    POSENC_LAUNCH(rotary_frequencies_kernel, blocks_for(half, kThreads, max_grid_x()), kThreads, 0,
                  stream, params, inv_freq, base, frequencies);
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
    const size_t shared_bytes = 2 * sizeof(acc_t<scalar_t>) * static_cast<size_t>(tile * chunk) +
                                (kMropeAxes + 4) * sizeof(int64_t) * static_cast<size_t>(tile);
    POSENC_LAUNCH_SYNC(rotary_kernel<scalar_t>, blocks_for(tokens, tile, max_grid_x()), kThreads,
                       shared_bytes, stream, params, frequencies, tile);
    return launch_status();
  });
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
