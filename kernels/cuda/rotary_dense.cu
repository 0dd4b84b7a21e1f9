// The dense rotary kernel: launches whose head rows all move as 16-byte vectors (rotary_dense in
// rotary_dense.cuh). Built to run at the memory floor:
// - no barrier: a thread owns 8 pairs for the whole launch, splits their frequencies once (from
//   inv_freq or the base, the same functions as the CPU kernel) into its own shared-memory
//   slots, and per token computes their exact cos/sin in registers once and applies them to
//   every q and k head of the token it is given;
// - per round, the two 128-bit packs of kRotaryHeads heads are loaded (streaming, issued
//   together, before any is used), rotated and stored (128-bit streaming stores);
// - the lanes of a token read whole, consecutive packs: half-split pairs (i, i + r/2) are the
//   low pack 8g and the high pack r/2 + 8g; interleaved pairs are within a pack, and lane g
//   takes packs g and G + g (G lanes a token), so both instructions of a warp are coalesced;
// - one instantiation per dtype and pairing; a grid sized to the GPU, walked with a grid-stride
//   loop over tokens; when the tokens alone cannot fill the GPU (a decoding step) the heads of a
//   token are split over blocks.
#include "cuda/rotary_dense.cuh"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

// Heads whose packs a thread loads before it rotates any: 64 bytes of 16-bit types (4 heads of
// two 16-byte packs) or of float32 (2 heads of two 32-byte packs) in flight a thread.
template <typename scalar_t>
constexpr int kRotaryHeads = 64 / static_cast<int>(2 * sizeof(Pack8<scalar_t>));

// Waves of resident blocks the grid holds (as the dense add_positional grid).
constexpr int kRotaryDenseWaves = 4;

// Pair j (0..7) of a thread, as a pair index below rotary_dim / 2; `lane` is the thread's index
// among the `lanes` of its token. Half-split: pairs 8 lane + j, whose partners sit r/2 later.
// Interleaved: pairs 4 lane + j in the first pack and 4 (lanes + lane) + j - 4 in the second.
template <bool kInterleaved>
__device__ __forceinline__ int64_t pack_pair(int64_t lane, int64_t lanes, int j) {
  if constexpr (kInterleaved) {
    return j < 4 ? 4 * lane + j : 4 * (lanes + lane) + (j - 4);
  } else {
    return 8 * lane + j;
  }
}

// The frequency splits of a thread's 8 pairs, computed once when the thread starts (a pow and a
// split each: a call and a long fp64 chain, kept out of the token loop) and kept in the
// thread's own slots of shared memory ([3 * 8][threads]: conflict-free, no barrier), which
// leaves the registers to the rows in flight.
constexpr size_t kRotarySlotBytes = 3 * kRotaryPairsPerThread * sizeof(double);

struct FrequencySlots {
  double* values;
  int64_t thread;
  int64_t threads;

  __device__ double& at(int piece, int j) {
    return values[(piece * kRotaryPairsPerThread + j) * threads + thread];
  }
};

template <bool kInterleaved>
__device__ __forceinline__ FrequencySlots frequency_slots(const RotaryParams& p,
                                                          const double* inv_freq, double base,
                                                          int64_t lane, int64_t lanes) {
  POSENC_DYNAMIC_SHARED(double, shared);
  FrequencySlots slots{shared, static_cast<int64_t>(threadIdx.y) * lanes + lane,
                       static_cast<int64_t>(blockDim.x) * blockDim.y};
  if (p.float32_frequencies != nullptr) return slots;  // transformers' float32 angles instead
  for (int j = 0; j < kRotaryPairsPerThread; ++j) {
    const int64_t pair = pack_pair<kInterleaved>(lane, lanes, j);
    const TurnFrequency f = turn_frequency_from_radians(
        inv_freq != nullptr ? load_table(inv_freq + pair)
                            : default_rotary_frequency(pair, p.rotary_dim, base));
    slots.at(0, j) = f.high;
    slots.at(1, j) = f.middle;
    slots.at(2, j) = f.low;
  }
  return slots;
}

// cos and sin of the thread's 8 pairs at token (b, s), times the attention factor (sin also
// times -1 for the inverse rotation). Returns whether a (non-M-RoPE) position was negative.
template <bool kInterleaved, typename acc>
__device__ __forceinline__ bool pair_angles(const RotaryParams& p, FrequencySlots& slots,
                                            int64_t lane, int64_t lanes, int64_t b, int64_t s,
                                            acc* cosines, acc* sines) {
  const int64_t position0 = rotary_token_position(p, b, s, 0);
  const int64_t position1 = p.mrope ? rotary_token_position(p, b, s, 1) : position0;
  const int64_t position2 = p.mrope ? rotary_token_position(p, b, s, 2) : position0;
  const acc factor = static_cast<acc>(p.attention_factor);
  const acc sign = p.inverse ? acc(-1) : acc(1);
#pragma unroll
  for (int j = 0; j < kRotaryPairsPerThread; ++j) {
    const int64_t pair = pack_pair<kInterleaved>(lane, lanes, j);
    const int axis = rotary_pair_axis(p, pair);
    const int64_t position = axis == 0 ? position0 : (axis == 1 ? position1 : position2);
    const TurnFrequency frequency{slots.at(0, j), slots.at(1, j), slots.at(2, j)};
    const SinCos<acc> sc = rotary_sincos<acc>(frequency, p.float32_frequencies, pair, position);
    cosines[j] = factor * sc.cos;
    sines[j] = sign * factor * sc.sin;
  }
  return !p.mrope && position0 < 0;  // M-RoPE coordinates may be negative
}

// Rotates x1 (the first of a pair) and x2 in place: (x1 c - x2 s, x2 c + x1 s).
template <typename acc>
__device__ __forceinline__ void rotate(acc& x1, acc& x2, acc c, acc s) {
  const acc y1 = x1 * c - x2 * s;
  const acc y2 = x2 * c + x1 * s;
  x1 = y1;
  x2 = y2;
}

// Heads [first, last) of operand `op` at token (b, s): rotated through the thread's two packs,
// kRotaryHeads heads at a time, then the channels past rotary_dim copied when out is not in.
template <typename scalar_t, bool kInterleaved>
__device__ __forceinline__ void rotate_heads(const RotaryOperand& op, const RotaryParams& p,
                                             int64_t b, int64_t s, int64_t first, int64_t last,
                                             int64_t lane, int64_t lanes, const acc_t<scalar_t>* c,
                                             const acc_t<scalar_t>* sn) {
  using acc = acc_t<scalar_t>;
  constexpr int kHeads = kRotaryHeads<scalar_t>;
  const int64_t half = p.rotary_dim / 2;
  // The element offsets of the thread's two packs in a head row.
  const int64_t first_pack = 8 * lane;
  const int64_t second_pack = kInterleaved ? 8 * (lanes + lane) : half + 8 * lane;
  const scalar_t* in = static_cast<const scalar_t*>(op.in) + b * op.in_strides[0] +
                       s * op.in_strides[1];  // [heads, head_dim]
  scalar_t* out = static_cast<scalar_t*>(op.out) + b * op.out_strides[0] +
                  s * op.out_strides[1];  // [heads, head_dim]
  for (int64_t h0 = first; h0 < last; h0 += kHeads) {
    Pack8<scalar_t> low[kHeads], high[kHeads];
    // Issued together, with no branch and no use between them: heads past `last` load the last
    // head again (a cache hit) rather than branch around their loads.
#pragma unroll
    for (int i = 0; i < kHeads; ++i) {
      const int64_t head = h0 + i < last ? h0 + i : last - 1;
      const scalar_t* row = in + head * op.in_strides[2];
      low[i] = load_row(row + first_pack);
      high[i] = load_row(row + second_pack);
    }
#pragma unroll
    for (int i = 0; i < kHeads; ++i) {
      if (h0 + i >= last) break;
      acc a[kElementsPerThread], z[kElementsPerThread];
#pragma unroll
      for (int k = 0; k < kElementsPerThread; ++k) {
        a[k] = load_as_acc(&low[i].v[k]);
        z[k] = load_as_acc(&high[i].v[k]);
      }
      if constexpr (kInterleaved) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          rotate(a[2 * j], a[2 * j + 1], c[j], sn[j]);
          rotate(z[2 * j], z[2 * j + 1], c[4 + j], sn[4 + j]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < kElementsPerThread; ++j) rotate(a[j], z[j], c[j], sn[j]);
      }
      Pack8<scalar_t> y_low, y_high;
#pragma unroll
      for (int k = 0; k < kElementsPerThread; ++k) {
        store_from_acc(&y_low.v[k], a[k]);
        store_from_acc(&y_high.v[k], z[k]);
      }
      scalar_t* row = out + (h0 + i) * op.out_strides[2];
      store_row(row + first_pack, y_low);
      store_row(row + second_pack, y_high);
    }
  }
  // Channels past rotary_dim (partial rotary), unless the rotation is in place.
  const int64_t tail_packs = (p.head_dim - p.rotary_dim) / kElementsPerThread;
  const bool in_place = op.in == op.out && op.in_strides[0] == op.out_strides[0] &&
                        op.in_strides[1] == op.out_strides[1] &&
                        op.in_strides[2] == op.out_strides[2];
  if (tail_packs == 0 || in_place) return;
  // The (head, pack) items of the tail, 4 a thread loaded before it stores any (items past the
  // last repeat the thread's first: loaded, a cache hit, and not stored). Below 2^31 items.
  constexpr int kTailItems = 4;
  const int32_t packs = static_cast<int32_t>(tail_packs);
  const int32_t items = static_cast<int32_t>(last - first) * packs;
  for (int32_t j0 = static_cast<int32_t>(lane); j0 < items;
       j0 += kTailItems * static_cast<int32_t>(lanes)) {
    Pack8<scalar_t> values[kTailItems];
    int64_t offsets[kTailItems][2];  // input and output element offsets
#pragma unroll
    for (int i = 0; i < kTailItems; ++i) {
      const int32_t candidate = j0 + i * static_cast<int32_t>(lanes);
      const int32_t j = candidate < items ? candidate : j0;
      const int32_t head = j / packs;
      const int64_t d = p.rotary_dim + static_cast<int64_t>(j - head * packs) * kElementsPerThread;
      offsets[i][0] = (first + head) * op.in_strides[2] + d;
      offsets[i][1] = (first + head) * op.out_strides[2] + d;
      values[i] = load_row(in + offsets[i][0]);
    }
#pragma unroll
    for (int i = 0; i < kTailItems; ++i) {
      if (j0 + i * static_cast<int32_t>(lanes) < items) store_row(out + offsets[i][1], values[i]);
    }
  }
}

// grid: (token blocks, head splits), block: (lanes of a token, tokens). The heads of a token are
// numbered across q then k; split y takes [y * heads_per_split, (y + 1) * heads_per_split).
template <typename scalar_t, bool kInterleaved>
__global__ void POSENC_LAUNCH_BOUNDS(kRotaryDenseThreads, kRotaryDenseBlocksPerSm)
    rotary_dense_kernel(const POSENC_GRID_CONSTANT RotaryParams p, const double* inv_freq,
                        double base, int64_t heads_per_split) {
  using acc = acc_t<scalar_t>;
  const int64_t lanes = blockDim.x;
  const int64_t lane = threadIdx.x;
  const int64_t tokens = p.batch * p.seq_len;
  const int64_t split_first = static_cast<int64_t>(blockIdx.y) * heads_per_split;
  const int64_t split_last = split_first + heads_per_split;
  FrequencySlots slots = frequency_slots<kInterleaved>(p, inv_freq, base, lane, lanes);
  bool bad_position = false;
  for (int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; token < tokens;
       token += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = token / p.seq_len;
    const int64_t s = token - b * p.seq_len;
    acc cosines[kRotaryPairsPerThread], sines[kRotaryPairsPerThread];
    bad_position =
        pair_angles<kInterleaved>(p, slots, lane, lanes, b, s, cosines, sines) || bad_position;
    int64_t operand_first = 0;  // the first head number of operand k
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (k < p.operand_count) {
        const RotaryOperand& op = p.operands[k];
        const int64_t first = split_first > operand_first ? split_first - operand_first : 0;
        const int64_t last_number =
            split_last < operand_first + op.heads ? split_last - operand_first : op.heads;
        if (first < last_number) {
          rotate_heads<scalar_t, kInterleaved>(op, p, b, s, first, last_number, lane, lanes,
                                               cosines, sines);
        }
        operand_first += op.heads;
      }
    }
  }
  POSENC_DEVICE_CHECK(!bad_position, "posenc.rotary: positions must be >= 0");
}

template <typename scalar_t>
int launch_rotary_dense_typed(const RotaryParams& params, const double* inv_freq, double base,
                              void* stream) {
  const int64_t lanes = params.rotary_dim / (2 * kRotaryPairsPerThread);
  const dim3 threads(static_cast<unsigned int>(lanes),
                     static_cast<unsigned int>(kRotaryDenseThreads / lanes));
  const int64_t tokens = params.batch * params.seq_len;
  const int64_t heads =
      params.operands[0].heads + (params.operand_count > 1 ? params.operands[1].heads : 0);
  const int64_t token_blocks = (tokens + threads.y - 1) / threads.y;
  const int64_t resident = static_cast<int64_t>(multiprocessors()) * kRotaryDenseBlocksPerSm;
  // Heads split over blocks only when the tokens cannot fill the GPU: every split computes the
  // token's angles again.
  int64_t splits = 1;
  if (token_blocks < resident) {
    const int64_t rounds = (heads + kRotaryHeads<scalar_t> - 1) / kRotaryHeads<scalar_t>;
    splits = (resident + token_blocks - 1) / token_blocks;
    if (splits > rounds) splits = rounds;
    if (splits > max_grid_yz()) splits = max_grid_yz();
    if (splits < 1) splits = 1;
  }
  const int64_t heads_per_split = (heads + splits - 1) / splits;
  splits = (heads + heads_per_split - 1) / heads_per_split;  // no empty split
  const int64_t waves = kRotaryDenseWaves * resident / splits;
  const int64_t token_grid = token_blocks < waves ? token_blocks : (waves > 0 ? waves : 1);
  const dim3 blocks(blocks_for(token_grid, 1, max_grid_x()), static_cast<unsigned int>(splits));
  const size_t slot_bytes = kRotarySlotBytes * threads.x * threads.y;
  if (params.interleaved) {
    POSENC_LAUNCH((rotary_dense_kernel<scalar_t, true>), blocks, threads, slot_bytes, stream,
                  params, inv_freq, base, heads_per_split);
  } else {
    POSENC_LAUNCH((rotary_dense_kernel<scalar_t, false>), blocks, threads, slot_bytes, stream,
                  params, inv_freq, base, heads_per_split);
  }
  return launch_status();
}

}  // namespace

bool rotary_dense(const RotaryParams& params) {
  if (params.dtype == DType::kFloat64 || params.rotary_dim <= 0 ||
      params.rotary_dim % (2 * kRotaryPairsPerThread) != 0 ||
      params.rotary_dim / (2 * kRotaryPairsPerThread) > kRotaryDenseThreads ||
      (params.head_dim - params.rotary_dim) % kElementsPerThread != 0 || params.operand_count < 1 ||
      params.operand_count > 2) {
    return false;
  }
  const int64_t bytes = element_bytes(params.dtype);
  for (int k = 0; k < params.operand_count; ++k) {
    const RotaryOperand& op = params.operands[k];
    if (op.in_strides[3] != 1 || op.out_strides[3] != 1 ||
        !aligned_rows(op.in, op.in_strides[0], op.in_strides[1], bytes) ||
        !aligned_rows(op.out, op.out_strides[0], op.out_strides[1], bytes) ||
        op.in_strides[2] * bytes % kVectorBytes != 0 ||
        op.out_strides[2] * bytes % kVectorBytes != 0) {
      return false;
    }
  }
  return true;
}

int launch_rotary_dense(const RotaryParams& params, const double* inv_freq, double base,
                        void* stream) {
  return dispatch_dense_dtype(params.dtype, [&](auto tag) {
    return launch_rotary_dense_typed<decltype(tag)>(params, inv_freq, base, stream);
  });
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
