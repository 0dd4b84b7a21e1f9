// Attention-level position codes: an additive bias [heads, Tq, Tk] for query i and key j, a
// function of their relative position r = j - (offset + i) only:
//   ALiBi (Press et al.):  -slope[h] * |r|  (bidirectional), or -slope[h] * (-r) for r <= 0
//                          and -inf for r > 0 (causal: the bias carries the causal mask);
//   T5 relative buckets:   table[bucket(r), h], with T5's logarithmic buckets;
// or of their 2D offset in a window of Wh x Wh patches (Swin):
//   window:                table[(hi - hj + Wh - 1) * (2 Ww - 1) + (wi - wj + Ww - 1), h]
//                          for tokens i = hi * Ww + wi and j = hj * Ww + wj.
// The backward sums the output gradient along each diagonal (fixed r), then per slope or
// bucket in increasing r; a window's per table row, over its token pairs in increasing order.
// The same order on the CPU and on CUDA, for any thread count.
#pragma once

#include <cstdint>

#include "common.h"

namespace posenc {
namespace kernels {

enum class BiasKind : int { kAlibi = 0, kT5 = 1, kWindow = 2 };

// T5's logarithmic buckets past max_exact (per direction), as the smallest relative distance of
// each: bucket max_exact + k starts at thresholds[k - 1]. Made on the host from T5's float32
// formula (see t5_thresholds), so that every device buckets alike.
constexpr int kMaxBucketThresholds = 256;

struct AttentionBiasParams {
  BiasKind kind = BiasKind::kAlibi;
  DType dtype = DType::kFloat32;  // the output's
  int64_t heads = 0;
  int64_t query_length = 0;
  int64_t key_length = 0;
  int64_t offset = 0;   // position of query 0 (a decoding step's cache length)
  bool causal = false;  // ALiBi: -inf above the diagonal (r > 0)
  // ALiBi: [heads] slopes; T5: [num_buckets, heads] table; in the compute type of dtype (float,
  // or double for float64). Element strides.
  const void* weight = nullptr;
  int64_t weight_row_stride = 0;   // T5: between buckets
  int64_t weight_head_stride = 0;  // between heads
  // T5's buckets (T5 only).
  bool bidirectional = true;
  int64_t num_buckets = 32;
  int64_t max_exact = 0;  // exact buckets per direction: (num_buckets / (2 if bidirectional)) / 2
  int64_t threshold_count = 0;  // logarithmic buckets per direction, less the last (clamped) one
  int64_t thresholds[kMaxBucketThresholds] = {};
  // The window's patches (kWindow only): Tq = Tk = window_height * window_width.
  int64_t window_height = 0;
  int64_t window_width = 0;
};

// The table row of tokens i and j of a window (Swin's relative_position_index).
POSENC_HOST_DEVICE int64_t window_index(const AttentionBiasParams& p, int64_t i, int64_t j) {
  const int64_t w = p.window_width;
  const int64_t hi = i / w, wi = i - hi * w, hj = j / w, wj = j - hj * w;
  return (hi - hj + p.window_height - 1) * (2 * w - 1) + (wi - wj + w - 1);
}

// The relative positions r = j - (offset + i) of the diagonals, in increasing order:
// r = first_relative() + index for index < diagonal_count().
POSENC_HOST_DEVICE int64_t first_relative(const AttentionBiasParams& p) {
  return -(p.offset + p.query_length - 1);
}
POSENC_HOST_DEVICE int64_t diagonal_count(const AttentionBiasParams& p) {
  return p.query_length + p.key_length - 1;
}

// T5's bucket of relative position r (transformers' _relative_position_bucket).
POSENC_HOST_DEVICE int64_t t5_bucket(const AttentionBiasParams& p, int64_t r) {
  int64_t bucket = 0;
  int64_t distance;
  if (p.bidirectional) {
    bucket = r > 0 ? p.num_buckets / 2 : 0;
    distance = r < 0 ? -r : r;
  } else {
    distance = r < 0 ? -r : 0;
  }
  if (distance < p.max_exact) return bucket + distance;
  int64_t k = 0;
  while (k < p.threshold_count && p.thresholds[k] <= distance) ++k;
  return bucket + p.max_exact + k;
}

// Head h's slope (ALiBi) or bucket b's value (T5), row = b.
template <typename acc_t>
POSENC_HOST_DEVICE acc_t weight_at(const AttentionBiasParams& p, int64_t row, int64_t head) {
  return static_cast<const acc_t*>(
      p.weight)[row * p.weight_row_stride + head * p.weight_head_stride];
}

// Whether the bias at relative position r is -inf (a masked future key: causal ALiBi).
POSENC_HOST_DEVICE bool bias_masked(const AttentionBiasParams& p, int64_t r) {
  return p.kind == BiasKind::kAlibi && p.causal && r > 0;
}

template <typename acc_t>
POSENC_HOST_DEVICE acc_t negative_infinity() {
  if constexpr (sizeof(acc_t) == 4) {
    return bits_float(0xff800000u);
  } else {
    const uint64_t bits = 0xfff0000000000000ull;
    double value;
    memcpy(&value, &bits, sizeof(value));
    return value;
  }
}

// The distance ALiBi's slope multiplies at relative position r (not masked).
POSENC_HOST_DEVICE int64_t alibi_distance(int64_t r) { return r < 0 ? -r : r; }

// ALiBi's bias of a head at relative position r, from its slope: -distance * slope, negated as
// an integer so that the diagonal is +0.
template <typename acc_t>
POSENC_HOST_DEVICE acc_t bias_value(const AttentionBiasParams& p, int64_t r, acc_t slope) {
  if (bias_masked(p, r)) return negative_infinity<acc_t>();
  return static_cast<acc_t>(-alibi_distance(r)) * slope;
}

// The slope of head h of `heads` (ALiBi's reference code, as fairseq and BLOOM compute it):
// the geometric sequence 2^(-8 (h + 1) / n) for n the largest power of two <= heads, then the
// odd terms of the sequence for 2n for the remaining heads.
double alibi_slope(int64_t head, int64_t heads);

// Fills params.max_exact, threshold_count and thresholds from bidirectional, num_buckets and
// max_distance with T5's float32 formula: a distance d >= max_exact falls in bucket
//   max_exact + min(int(log(d / max_exact) / log(max_distance / max_exact) * (n - max_exact)),
//                   n - 1 - max_exact)
// with n the buckets per direction. Requires 2 <= n <= 2 * kMaxBucketThresholds.
void t5_thresholds(AttentionBiasParams& params, int64_t max_distance);

// out: [heads, Tq, Tk], contiguous, of params.dtype.
void attention_bias_cpu(const AttentionBiasParams& params, void* out,
                        const ParallelFor& parallel_for);

// The gradient of the weight from the output's gradient `grad` ([heads, Tq, Tk] of params.dtype
// with element strides grad_strides): diagonal sums into `diagonals` ([heads, diagonal_count],
// the compute type of params.dtype: float, or double for float64), then grad_weight (dense
// [heads] slopes or [num_buckets, heads] table, the same compute type; every element written).
void attention_bias_backward_cpu(const AttentionBiasParams& params, const void* grad,
                                 const int64_t grad_strides[3], void* diagonals, void* grad_weight,
                                 const ParallelFor& parallel_for);

// grad_weight's element for (table row, head) of a window, from the output's gradient: the sum
// over the token pairs of that row's 2D offset, in increasing query order.
template <typename scalar_t, typename acc_t>
POSENC_HOST_DEVICE acc_t window_gradient(const AttentionBiasParams& p, const scalar_t* grad,
                                         const int64_t grad_strides[3], int64_t row, int64_t head) {
  const int64_t w = p.window_width, h = p.window_height;
  const int64_t dh = row / (2 * w - 1) - (h - 1), dw = row % (2 * w - 1) - (w - 1);
  acc_t sum = acc_t(0);
  for (int64_t hi = dh > 0 ? dh : 0; hi < (dh < 0 ? h + dh : h); ++hi) {
    for (int64_t wi = dw > 0 ? dw : 0; wi < (dw < 0 ? w + dw : w); ++wi) {
      const int64_t i = hi * w + wi, j = (hi - dh) * w + (wi - dw);
      sum += load_as_acc(grad + head * grad_strides[0] + i * grad_strides[1] + j * grad_strides[2]);
    }
  }
  return sum;
}

// grad_weight's element for (target, head) from head's diagonal sums, in increasing r: the
// bucket `target` of T5, or (target 0) ALiBi's slope, -sum of distance * diagonal sum.
template <typename acc_t>
POSENC_HOST_DEVICE acc_t weight_gradient(const AttentionBiasParams& p, const acc_t* diagonals,
                                         int64_t target) {
  const int64_t count = diagonal_count(p);
  const int64_t first = first_relative(p);
  acc_t sum = acc_t(0);
  for (int64_t index = 0; index < count; ++index) {
    const int64_t r = first + index;
    if (p.kind == BiasKind::kT5) {
      if (t5_bucket(p, r) == target) sum += diagonals[index];
    } else if (!bias_masked(p, r)) {
      sum -= static_cast<acc_t>(alibi_distance(r)) * diagonals[index];
    }
  }
  return sum;
}

}  // namespace kernels
}  // namespace posenc
