// CPU kernels of attention_bias (ALiBi, T5 buckets), the slopes and T5's bucket thresholds.
#include "attention_bias.h"

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/row_kernels.h"

namespace posenc {
namespace kernels {

double alibi_slope(int64_t head, int64_t heads) {
  int64_t power = 1;
  while (power * 2 <= heads) power *= 2;
  // 2^(-8 / n) to the power k, for n = power or 2 * power.
  auto term = [](int64_t n, int64_t k) {
    return std::exp2(-8.0 * static_cast<double>(k) / static_cast<double>(n));
  };
  if (head < power) return term(power, head + 1);
  return term(2 * power, 2 * (head - power) + 1);
}

void t5_thresholds(AttentionBiasParams& params, int64_t max_distance) {
  const int64_t n = params.bidirectional ? params.num_buckets / 2 : params.num_buckets;
  const int64_t max_exact = n / 2;
  params.max_exact = max_exact;
  params.threshold_count = n - 1 - max_exact;
  // T5's formula in float32, as transformers evaluates it (torch.log of a float32 tensor, then
  // float32 products with the Python double log(max_distance / max_exact) rounded to float).
  const float log_ratio = static_cast<float>(
      std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)));
  const float scale = static_cast<float>(n - max_exact);
  auto bucket_offset = [&](int64_t distance) {
    const float v =
        std::log(static_cast<float>(distance) / static_cast<float>(max_exact)) / log_ratio * scale;
    return v >= static_cast<float>(n) ? n : static_cast<int64_t>(v);
  };
  // thresholds[k - 1]: the smallest distance whose offset is >= k (offsets grow with distance:
  // every step of the formula rounds monotonically). A binary search per k.
  const int64_t kFar = std::numeric_limits<int64_t>::max() / 4;
  for (int64_t k = 1; k <= params.threshold_count; ++k) {
    int64_t low = max_exact, high = kFar;  // offset(high) >= k holds for a far enough distance
    while (low < high) {
      const int64_t middle = low + (high - low) / 2;
      if (bucket_offset(middle) >= k) {
        high = middle;
      } else {
        low = middle + 1;
      }
    }
    params.thresholds[k - 1] = low;
  }
}

void attention_bias_cpu(const AttentionBiasParams& params, void* out,
                        const ParallelFor& parallel_for) {
  const int64_t rows = params.heads * params.query_length;
  const int64_t keys = params.key_length;
  if (rows == 0 || keys == 0) return;
  dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    scalar_t* output = static_cast<scalar_t*>(out);
    if (params.kind == BiasKind::kWindow) {
      parallel_for(0, rows, std::max<int64_t>(1, 16384 / keys), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t h = row / params.query_length, i = row % params.query_length;
          for (int64_t j = 0; j < keys; ++j) {
            store_from_acc(output + row * keys + j,
                           weight_at<acc>(params, window_index(params, i, j), h));
          }
        }
      });
      return;
    }
    // Each head's value per diagonal, made once: [heads, diagonal_count].
    const int64_t count = diagonal_count(params);
    const int64_t first = first_relative(params);
    std::vector<scalar_t> values(static_cast<size_t>(params.heads * count));
    parallel_for(0, params.heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h) {
        const acc slope = params.kind == BiasKind::kAlibi ? weight_at<acc>(params, 0, h) : acc(0);
        for (int64_t index = 0; index < count; ++index) {
          const int64_t r = first + index;
          acc value;
          if (params.kind == BiasKind::kT5) {
            value = weight_at<acc>(params, t5_bucket(params, r), h);
          } else {
            value = bias_value(params, r, slope);
          }
          store_from_acc(&values[static_cast<size_t>(h * count + index)], value);
        }
      }
    });
    // Row (h, i) is the run of diagonals from r = -(offset + i): a copy. A fresh output's pages
    // are made writable ahead, as the row kernels do (a page fault per 4 KiB otherwise).
    parallel_for(0, rows, std::max<int64_t>(1, 16384 / keys), [&](int64_t begin, int64_t end) {
      cpu::populate_fresh_pages(output + begin * keys,
                                static_cast<int64_t>(sizeof(scalar_t)) * (end - begin) * keys);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t h = row / params.query_length, i = row % params.query_length;
        const scalar_t* source = values.data() + h * count + (-(params.offset + i) - first);
        std::copy(source, source + keys, output + row * keys);
      }
    });
  });
}

void attention_bias_backward_cpu(const AttentionBiasParams& params, const void* grad,
                                 const int64_t grad_strides[3], void* diagonals, void* grad_weight,
                                 const ParallelFor& parallel_for) {
  const int64_t count = diagonal_count(params);
  const int64_t first = first_relative(params);
  dispatch_dtype(params.dtype, [&](auto scalar_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc = acc_t<scalar_t>;
    const scalar_t* g = static_cast<const scalar_t*>(grad);
    acc* out = static_cast<acc*>(grad_weight);
    if (params.kind == BiasKind::kWindow) {
      const int64_t table_rows = (2 * params.window_height - 1) * (2 * params.window_width - 1);
      parallel_for(0, table_rows * params.heads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          out[item] = window_gradient<scalar_t, acc>(params, g, grad_strides, item / params.heads,
                                                     item % params.heads);
        }
      });
      return;
    }
    acc* sums = static_cast<acc*>(diagonals);
    // Diagonal sums, each over i in increasing order (as on CUDA): one head per task.
    parallel_for(0, params.heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h) {
        acc* head_sums = sums + h * count;
        for (int64_t index = 0; index < count; ++index) head_sums[index] = acc(0);
        for (int64_t i = 0; i < params.query_length; ++i) {
          const scalar_t* row = g + h * grad_strides[0] + i * grad_strides[1];
          acc* row_sums = head_sums + (-(params.offset + i) - first);
          for (int64_t j = 0; j < params.key_length; ++j) {
            row_sums[j] += load_as_acc(row + j * grad_strides[2]);
          }
        }
      }
    });
    const int64_t targets = params.kind == BiasKind::kT5 ? params.num_buckets : 1;
    parallel_for(0, params.heads * targets, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t target = item / params.heads, h = item % params.heads;
        out[target * params.heads + h] = weight_gradient(params, sums + h * count, target);
      }
    });
  });
}

}  // namespace kernels
}  // namespace posenc
