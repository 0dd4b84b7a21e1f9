// Rotary position embedding (RoPE). Pairs of channels (i, i + r/2) (half-split, GPT-NeoX/Llama)
// or (2i, 2i+1) (interleaved, GPT-J) rotate by the angle pos * inv_freq_i:
//   y1 = x1 * cos - x2 * sin,   y2 = x2 * cos + x1 * sin,
// with cos and sin multiplied by an attention factor. Channels past rotary_dim pass through.
// The backward is the rotation by the negative angle (the transpose), the same kernel.
#pragma once

#include <cstdint>
#include <vector>

#include "angle.h"
#include "common.h"

namespace posenc {
namespace kernels {

// One rotated operand (q or k) viewed as [batch, seq, heads, head_dim] with element strides;
// every layout (bshd, bhsd, sbhd, thd as batch 1) is a permutation of strides.
struct RotaryOperand {
  const void* in = nullptr;
  void* out = nullptr;
  int64_t heads = 0;
  int64_t in_strides[4] = {};  // batch, seq, head, dim
  int64_t out_strides[4] = {};
};

struct RotaryParams {
  DType dtype = DType::kFloat32;
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t head_dim = 0;
  int64_t rotary_dim = 0;  // even, <= head_dim
  bool interleaved = false;
  bool inverse = false;  // rotate by -angle (the backward)
  double attention_factor = 1.0;
  const TurnFrequency* frequencies = nullptr;  // [rotary_dim / 2], inv_freq / (2 pi) split
  // [rotary_dim / 2] or nullptr. Given: transformers' float32 angles, float(pos) * inv_freq
  // rounded to float32 (their cos/sin tables), instead of the exact angles.
  const float* float32_frequencies = nullptr;
  // Position of token (b, s): positions[b, s] if given; else offset (+ offsets[b]) + s, with s
  // counted from the start of its sequence when cu_seqlens packs several (thd).
  const void* positions = nullptr;
  IndexType positions_type = IndexType::kInt64;
  int64_t positions_strides[2] = {};  // batch, seq (0 where broadcast)
  int64_t offset = 0;
  const void* offsets = nullptr;  // [batch], or [sequences] with cu_seqlens
  IndexType offsets_type = IndexType::kInt64;
  const void* cu_seqlens = nullptr;  // [sequences + 1], validated increasing from 0 to seq_len
  IndexType cu_seqlens_type = IndexType::kInt64;
  int64_t sequences = 0;
  // M-RoPE (Qwen2-VL, Qwen3-VL): positions are [3, batch, seq] (temporal, height, width) and
  // pair i rotates by the position of axis rotary_pair_axis(i); mrope_section[a] pairs belong
  // to axis a (they sum to rotary_dim / 2). Contiguous sections (Qwen2/2.5-VL: t t .. h h .. w
  // w ..) or interleaved (Qwen3-VL: t h w t h w .., each axis up to its section's count).
  bool mrope = false;
  bool mrope_interleaved = false;
  int64_t mrope_section[3] = {};
  int64_t positions_axis_stride = 0;  // between the 3 position rows
  RotaryOperand operands[2];
  int operand_count = 0;
};

constexpr int kMropeAxes = 3;

// The position axis (0 temporal, 1 height, 2 width) of pair `pair` under M-RoPE; 0 otherwise.
POSENC_HOST_DEVICE int rotary_pair_axis(const RotaryParams& p, int64_t pair) {
  if (!p.mrope) return 0;
  if (p.mrope_interleaved) {
    // transformers' apply_interleaved_mrope: height on pairs 1, 4, .. below 3 * section[1],
    // width on pairs 2, 5, .. below 3 * section[2], temporal everywhere else.
    const int64_t lane = pair % 3;
    if (lane == 1 && pair < 3 * p.mrope_section[1]) return 1;
    if (lane == 2 && pair < 3 * p.mrope_section[2]) return 2;
    return 0;
  }
  if (pair < p.mrope_section[0]) return 0;
  return pair < p.mrope_section[0] + p.mrope_section[1] ? 1 : 2;
}

// inv_freq_i = base^(-2i/r), the default rotary frequency of pair i.
POSENC_HOST_DEVICE double default_rotary_frequency(int64_t pair, int64_t rotary_dim, double base) {
  return ::pow(base, -2.0 * static_cast<double>(pair) / static_cast<double>(rotary_dim));
}

// Position of token (b, s) (see RotaryParams); `axis` selects the M-RoPE position row.
POSENC_HOST_DEVICE int64_t rotary_token_position(const RotaryParams& p, int64_t b, int64_t s,
                                                 int axis = 0) {
  if (p.positions != nullptr) {
    return load_index(
        p.positions, p.positions_type,
        axis * p.positions_axis_stride + b * p.positions_strides[0] + s * p.positions_strides[1]);
  }
  int64_t sequence = b;
  int64_t local = s;
  if (p.cu_seqlens != nullptr) {
    // The sequence j with cu_seqlens[j] <= s < cu_seqlens[j + 1].
    int64_t low = 0, high = p.sequences;
    while (high - low > 1) {
      const int64_t mid = (low + high) / 2;
      if (load_index(p.cu_seqlens, p.cu_seqlens_type, mid) <= s) {
        low = mid;
      } else {
        high = mid;
      }
    }
    sequence = low;
    local = s - load_index(p.cu_seqlens, p.cu_seqlens_type, low);
  }
  int64_t start = p.offset;
  if (p.offsets != nullptr) start += load_index(p.offsets, p.offsets_type, sequence);
  return start + local;
}

// cos and sin (in acc) of the angle of pair `pair` at `position`: exact, from the split
// frequency, or transformers' float32 angle when float32_frequencies is given.
template <typename acc>
POSENC_HOST_DEVICE SinCos<acc> rotary_sincos(const TurnFrequency& frequency,
                                             const float* float32_frequencies, int64_t pair,
                                             int64_t position) {
  if (float32_frequencies != nullptr) {
    const float angle = static_cast<float>(position) * float32_frequencies[pair];
    const TurnFrequency turns = turn_frequency_from_radians(static_cast<double>(angle));
    return sincos_turns<acc>(reduced_turns(1.0, turns.high, turns.middle, turns.low, 0.0));
  }
  return sincos_turns<acc>(reduced_turns(static_cast<double>(position), frequency.high,
                                         frequency.middle, frequency.low, 0.0));
}

// The default frequencies base^(-2i/r), i < r/2, in double; host only.
std::vector<double> default_inv_freq(int64_t rotary_dim, double base);

// Splits inv_freq (radians per position) for the kernel; host only.
std::vector<TurnFrequency> rotary_turn_frequencies(const std::vector<double>& inv_freq);

void rotary_cpu(const RotaryParams& params, const ParallelFor& parallel_for);

// apply_rotary_pos_emb with given cos/sin tables (half-split pairing over the whole last dim):
//   y[i] = x[i] cos[i] - x[i+h] sin[i],  y[i+h] = x[i+h] cos[i+h] + x[i] sin[i+h],  h = D/2.
// Operands and tables are [rows..., D] with per-dimension strides (tables broadcast with stride
// 0). transpose: apply the transposed map (the backward).
constexpr int kMaxTableDims = 6;
struct RotaryTableOperand {
  const void* in = nullptr;
  void* out = nullptr;
  int64_t in_strides[kMaxTableDims + 1] = {};
  int64_t out_strides[kMaxTableDims + 1] = {};
  int64_t cos_strides[kMaxTableDims + 1] = {};
  int64_t sin_strides[kMaxTableDims + 1] = {};
  int ndim = 0;  // including the last (D) dimension
  int64_t sizes[kMaxTableDims + 1] = {};
};

struct RotaryTableParams {
  DType dtype = DType::kFloat32;  // of operands, cos and sin
  const void* cos = nullptr;
  const void* sin = nullptr;
  bool transpose = false;
  RotaryTableOperand operands[2];
  int operand_count = 0;
};

// Element offsets of row `row` (row-major over all but the last dimension) of an operand, its
// output and its cos/sin tables.
struct RotaryTableRow {
  int64_t in = 0, out = 0, cos = 0, sin = 0;
};

POSENC_HOST_DEVICE RotaryTableRow rotary_table_row(const RotaryTableOperand& op, int64_t row) {
  RotaryTableRow offsets;
  for (int axis = op.ndim - 2; axis >= 0; --axis) {
    const int64_t index = row % op.sizes[axis];
    row /= op.sizes[axis];
    offsets.in += index * op.in_strides[axis];
    offsets.out += index * op.out_strides[axis];
    offsets.cos += index * op.cos_strides[axis];
    offsets.sin += index * op.sin_strides[axis];
  }
  return offsets;
}

void rotary_tables_cpu(const RotaryTableParams& params, const ParallelFor& parallel_for);

}  // namespace kernels
}  // namespace posenc
