#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/row_kernels.h"
#include "rotary.h"

namespace posenc {
namespace kernels {

std::vector<double> default_inv_freq(int64_t rotary_dim, double base) {
  std::vector<double> inv_freq(static_cast<size_t>(rotary_dim / 2));
  for (int64_t i = 0; i < rotary_dim / 2; ++i) {
    inv_freq[i] = default_rotary_frequency(i, rotary_dim, base);
  }
  return inv_freq;
}

std::vector<TurnFrequency> rotary_turn_frequencies(const std::vector<double>& inv_freq) {
  std::vector<TurnFrequency> frequencies(inv_freq.size());
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    frequencies[i] = turn_frequency_from_radians(inv_freq[i]);
  }
  return frequencies;
}

namespace {

// Rotates one row of head_dim channels: pairs (i, i + half) or (2i, 2i + 1) for i < half, by
// (cos_lo[i], sin_lo[i]) for the first member and (cos_hi[i], sin_hi[i]) for the second:
//   y_first = x_first cos_lo - x_second sin_lo,  y_second = x_second cos_hi + x_first sin_hi.
// Channels from 2 * half on are copied.
template <typename scalar_t, typename acc>
void rotate_row(const scalar_t* in, int64_t in_stride, scalar_t* out, int64_t out_stride,
                const acc* cos_lo, const acc* sin_lo, const acc* cos_hi, const acc* sin_hi,
                int64_t half, bool interleaved, int64_t head_dim) {
  const int64_t first_step = interleaved ? 2 : 1;
  const int64_t second_offset = interleaved ? 1 : half;
  if (in_stride == 1 && out_stride == 1 && !interleaved) {
    for (int64_t i = 0; i < half; ++i) {
      const acc x1 = load_as_acc(in + i);
      const acc x2 = load_as_acc(in + i + half);
      store_from_acc(out + i, x1 * cos_lo[i] - x2 * sin_lo[i]);
      store_from_acc(out + i + half, x2 * cos_hi[i] + x1 * sin_hi[i]);
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const int64_t first = i * first_step;
      const int64_t second = first + second_offset;
      const acc x1 = load_as_acc(in + first * in_stride);
      const acc x2 = load_as_acc(in + second * in_stride);
      store_from_acc(out + first * out_stride, x1 * cos_lo[i] - x2 * sin_lo[i]);
      store_from_acc(out + second * out_stride, x2 * cos_hi[i] + x1 * sin_hi[i]);
    }
  }
  for (int64_t d = 2 * half; d < head_dim; ++d) out[d * out_stride] = in[d * in_stride];
}

}  // namespace

void rotary_cpu(const RotaryParams& params, const ParallelFor& parallel_for) {
  const int64_t tokens = params.batch * params.seq_len;
  if (tokens == 0 || params.head_dim == 0) return;
  const int64_t half = params.rotary_dim / 2;
  int64_t heads = 0;
  for (int k = 0; k < params.operand_count; ++k) heads += params.operands[k].heads;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, heads * params.head_dim));
  // Tokens are rotated kTile at a time: their cos/sin rows first, then the heads. Where a head's
  // rows follow each other across tokens ([B, H, S, D], transformers' layout), each head's tile
  // is one stream; token-major order would interleave a stream per head, more than the
  // hardware prefetchers follow.
  constexpr int64_t kTile = 32;

  // M-RoPE: each pair's axis, once per call (the angle loops below then vectorize).
  std::vector<int> pair_axes(static_cast<size_t>(params.mrope ? half : 0));
  for (size_t i = 0; i < pair_axes.size(); ++i) {
    pair_axes[i] = rotary_pair_axis(params, static_cast<int64_t>(i));
  }

  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const acc factor = static_cast<acc>(params.attention_factor);
    const acc sin_sign = params.inverse ? acc(-1) : acc(1);
    parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
      // [kTile, half] cos and sin rows of the tile's tokens.
      std::vector<acc> cos_values(static_cast<size_t>(kTile * half));
      std::vector<acc> sin_values(cos_values.size());
      std::vector<int64_t> pair_position_values(pair_axes.size());
      int64_t* __restrict pair_positions = pair_position_values.data();
      // The last computed row and its positions: consecutive tokens at the same positions
      // (decoding a batch one step at a time) reuse it.
      const acc* last_cos = nullptr;
      const acc* last_sin = nullptr;
      int64_t last_axes[kMropeAxes] = {0, 0, 0};

      // cosines/sines[i] for token (b, s).
      auto angles = [&](int64_t b, int64_t s, acc* __restrict cosines, acc* __restrict sines) {
        int64_t axes[kMropeAxes] = {0, 0, 0};
        const int axis_count = params.mrope ? kMropeAxes : 1;
        for (int a = 0; a < axis_count; ++a) axes[a] = rotary_token_position(params, b, s, a);
        if (last_cos != nullptr && std::equal(axes, axes + kMropeAxes, last_axes)) {
          std::copy(last_cos, last_cos + half, cosines);
          std::copy(last_sin, last_sin + half, sines);
        } else {
          const TurnFrequency* f = params.frequencies;
          // Each pair's position: its axis' under M-RoPE.
          for (int64_t i = 0; i < static_cast<int64_t>(pair_axes.size()); ++i) {
            pair_positions[i] = axes[pair_axes[i]];
          }
          // Two loops rather than a branch inside one, so the exact one vectorizes.
          if (params.float32_frequencies == nullptr) {
            for (int64_t i = 0; i < half; ++i) {
              const SinCos<acc> sc =
                  rotary_sincos<acc>(f[i], nullptr, i, params.mrope ? pair_positions[i] : axes[0]);
              cosines[i] = factor * sc.cos;
              sines[i] = sin_sign * factor * sc.sin;
            }
          } else {
            for (int64_t i = 0; i < half; ++i) {
              const SinCos<acc> sc = rotary_sincos<acc>(f[i], params.float32_frequencies, i,
                                                        params.mrope ? pair_positions[i] : axes[0]);
              cosines[i] = factor * sc.cos;
              sines[i] = sin_sign * factor * sc.sin;
            }
          }
          std::copy(axes, axes + kMropeAxes, last_axes);
        }
        last_cos = cosines;
        last_sin = sines;
      };

      // Runs of output rows that lie back to back (see PopulateAhead): a token's heads form one
      // row when they do, else each head's rows form its own run. Runs end at batch ends.
      struct OperandRuns {
        std::vector<cpu::PopulateAhead> runs;  // one, or one per head; none: not populated
        int64_t row_elements = 0;              // of a run's row
      };
      std::vector<OperandRuns> populate(static_cast<size_t>(params.operand_count));
      for (int k = 0; k < params.operand_count; ++k) {
        const RotaryOperand& op = params.operands[k];
        const bool rows_dense = op.out_strides[3] == 1 || params.head_dim == 1;
        const bool token_rows = rows_dense &&
                                (op.heads == 1 || op.out_strides[2] == params.head_dim) &&
                                op.out_strides[1] == op.heads * params.head_dim;
        const bool head_rows = rows_dense && op.out_strides[1] == params.head_dim;
        if (token_rows) {
          populate[k].runs.resize(1);
          populate[k].row_elements = op.heads * params.head_dim;
        } else if (head_rows) {
          populate[k].runs.resize(static_cast<size_t>(op.heads));
          populate[k].row_elements = params.head_dim;
        }
      }
      auto populate_tile = [&](int k, int64_t first_token) {
        const RotaryOperand& op = params.operands[k];
        OperandRuns& operand = populate[k];
        const int64_t b = first_token / params.seq_len;
        const int64_t run_bytes = (std::min(end, (b + 1) * params.seq_len) - first_token) *
                                  operand.row_elements * static_cast<int64_t>(sizeof(scalar_t));
        scalar_t* row = static_cast<scalar_t*>(op.out) + b * op.out_strides[0] +
                        (first_token - b * params.seq_len) * op.out_strides[1];
        for (size_t h = 0; h < operand.runs.size(); ++h) {
          operand.runs[h].at_row(row + static_cast<int64_t>(h) * op.out_strides[2], run_bytes);
        }
      };

      for (int64_t tile_start = begin; tile_start < end; tile_start += kTile) {
        const int64_t count = std::min(kTile, end - tile_start);
        for (int64_t j = 0; j < count; ++j) {
          const int64_t token = tile_start + j;
          // Tiles before the chunk's last are full, so the row reused at j = 0 (the last
          // tile's row kTile - 1) is not overwritten before it is read.
          angles(token / params.seq_len, token % params.seq_len, cos_values.data() + j * half,
                 sin_values.data() + j * half);
        }
        for (int k = 0; k < params.operand_count; ++k) {
          const RotaryOperand& op = params.operands[k];
          populate_tile(k, tile_start);
          auto rotate = [&](int64_t j, int64_t h) {
            const int64_t token = tile_start + j;
            const int64_t b = token / params.seq_len, s = token % params.seq_len;
            const scalar_t* in = static_cast<const scalar_t*>(op.in) + b * op.in_strides[0] +
                                 s * op.in_strides[1] + h * op.in_strides[2];
            scalar_t* out = static_cast<scalar_t*>(op.out) + b * op.out_strides[0] +
                            s * op.out_strides[1] + h * op.out_strides[2];
            const acc* cosines = cos_values.data() + j * half;
            const acc* sines = sin_values.data() + j * half;
            rotate_row(in, op.in_strides[3], out, op.out_strides[3], cosines, sines, cosines, sines,
                       half, params.interleaved, params.head_dim);
          };
          if (std::abs(op.in_strides[1]) < std::abs(op.in_strides[2])) {
            for (int64_t h = 0; h < op.heads; ++h) {
              for (int64_t j = 0; j < count; ++j) rotate(j, h);
            }
          } else {
            for (int64_t j = 0; j < count; ++j) {
              for (int64_t h = 0; h < op.heads; ++h) rotate(j, h);
            }
          }
        }
      }
    });
  });
}

void rotary_tables_cpu(const RotaryTableParams& params, const ParallelFor& parallel_for) {
  cpu::dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    for (int k = 0; k < params.operand_count; ++k) {
      const RotaryTableOperand& op = params.operands[k];
      const int rows_ndim = op.ndim - 1;
      const int64_t dim = op.sizes[rows_ndim];
      const int64_t half = dim / 2;
      int64_t rows = 1;
      for (int i = 0; i < rows_ndim; ++i) rows *= op.sizes[i];
      if (rows == 0 || dim == 0) continue;
      const int64_t grain = std::max<int64_t>(1, 16384 / dim);
      parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        std::vector<acc> table(static_cast<size_t>(4 * half));
        acc* cos_lo = table.data();
        acc* cos_hi = cos_lo + half;
        acc* sin_lo = cos_hi + half;
        acc* sin_hi = sin_lo + half;
        for (int64_t row = begin; row < end; ++row) {
          const RotaryTableRow offsets = rotary_table_row(op, row);
          const scalar_t* cos_row = static_cast<const scalar_t*>(params.cos) + offsets.cos;
          const scalar_t* sin_row = static_cast<const scalar_t*>(params.sin) + offsets.sin;
          const int64_t cs = op.cos_strides[rows_ndim];
          const int64_t ss = op.sin_strides[rows_ndim];
          for (int64_t i = 0; i < half; ++i) {
            cos_lo[i] = load_as_acc(cos_row + i * cs);
            cos_hi[i] = load_as_acc(cos_row + (i + half) * cs);
            const acc s_lo = load_as_acc(sin_row + i * ss);
            const acc s_hi = load_as_acc(sin_row + (i + half) * ss);
            // The transpose maps (sin_lo, sin_hi) to (-sin_hi, -sin_lo).
            sin_lo[i] = params.transpose ? -s_hi : s_lo;
            sin_hi[i] = params.transpose ? -s_lo : s_hi;
          }
          rotate_row(static_cast<const scalar_t*>(op.in) + offsets.in, op.in_strides[rows_ndim],
                     static_cast<scalar_t*>(op.out) + offsets.out, op.out_strides[rows_ndim],
                     cos_lo, sin_lo, cos_hi, sin_hi, half, false, dim);
        }
      });
    }
  });
}

}  // namespace kernels
}  // namespace posenc
