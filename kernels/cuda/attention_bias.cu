// CUDA kernels of attention_bias: the bias element by element (a grid-stride walk over
// [heads, Tq, Tk], consecutive threads on consecutive keys), and the backward's diagonal sums
// (a thread per diagonal, over queries in increasing order: the CPU's order, so the same bits)
// and per-slope or per-bucket sums; a window's table gradient a thread per (table row, head).
#include "attention_bias.h"
#include "cuda/attention_bias_launch.h"
#include "cuda/device.cuh"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

// grid-stride over rows (h, i) in blockIdx.x and keys in threads.
template <typename scalar_t>
__global__ void attention_bias_kernel(const POSENC_GRID_CONSTANT AttentionBiasParams p,
                                      scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = p.heads * p.query_length;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t h = row / p.query_length, i = row - h * p.query_length;
    const acc slope = p.kind == BiasKind::kAlibi ? weight_at<acc>(p, 0, h) : acc(0);
    for (int64_t j = threadIdx.x; j < p.key_length; j += blockDim.x) {
      const int64_t r = j - (p.offset + i);
      acc value;
      if (p.kind == BiasKind::kWindow) {
        value = weight_at<acc>(p, window_index(p, i, j), h);
      } else if (p.kind == BiasKind::kT5) {
        value = weight_at<acc>(p, t5_bucket(p, r), h);
      } else {
        value = bias_value(p, r, slope);
      }
      store_from_acc(out + row * p.key_length + j, value);
    }
  }
}

// A thread per (head, diagonal): sums grad[h, i, j] over i for j - (offset + i) fixed.
template <typename scalar_t>
__global__ void diagonal_sums_kernel(const POSENC_GRID_CONSTANT AttentionBiasParams p,
                                     const scalar_t* grad, int64_t stride_h, int64_t stride_i,
                                     int64_t stride_j, acc_t<scalar_t>* diagonals) {
  using acc = acc_t<scalar_t>;
  const int64_t count = diagonal_count(p);
  const int64_t items = p.heads * count;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = item / count, index = item - h * count;
    // Row i meets this diagonal at key j = index - (Tq - 1 - i).
    acc sum = acc(0);
    for (int64_t i = 0; i < p.query_length; ++i) {
      const int64_t j = index - (p.query_length - 1 - i);
      if (j >= 0 && j < p.key_length) {
        sum += load_as_acc(grad + h * stride_h + i * stride_i + j * stride_j);
      }
    }
    diagonals[item] = sum;
  }
}

// A thread per (target, head) of grad_weight.
template <typename acc>
__global__ void weight_gradient_kernel(const POSENC_GRID_CONSTANT AttentionBiasParams p,
                                       const acc* diagonals, acc* grad_weight, int64_t items) {
  const int64_t count = diagonal_count(p);
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t target = item / p.heads, h = item - target * p.heads;
    grad_weight[item] = weight_gradient(p, diagonals + h * count, target);
  }
}

// A thread per (table row, head) of a window's table gradient.
template <typename scalar_t>
__global__ void window_gradient_kernel(const POSENC_GRID_CONSTANT AttentionBiasParams p,
                                       const scalar_t* grad, int64_t stride_h, int64_t stride_i,
                                       int64_t stride_j, acc_t<scalar_t>* grad_weight,
                                       int64_t items) {
  const int64_t strides[3] = {stride_h, stride_i, stride_j};
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    grad_weight[item] = window_gradient<scalar_t, acc_t<scalar_t>>(p, grad, strides, item / p.heads,
                                                                   item % p.heads);
  }
}

}  // namespace

int attention_bias(const AttentionBiasParams& params, void* out, void* stream) {
  const int64_t rows = params.heads * params.query_length;
  if (rows == 0 || params.key_length == 0) return 0;
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    POSENC_LAUNCH(attention_bias_kernel<scalar_t>, blocks_for(rows, 1, max_grid_x()), kThreads, 0,
                  stream, params, static_cast<scalar_t*>(out));
    return launch_status();
  });
}

int attention_bias_backward(const AttentionBiasParams& params, const void* grad,
                            const int64_t grad_strides[3], void* diagonals, void* grad_weight,
                            void* stream) {
  return dispatch_dtype(params.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc = acc_t<scalar_t>;
    if (params.kind == BiasKind::kWindow) {
      const int64_t items =
          (2 * params.window_height - 1) * (2 * params.window_width - 1) * params.heads;
      if (items == 0) return 0;
      POSENC_LAUNCH(window_gradient_kernel<scalar_t>, blocks_for(items, kThreads, max_grid_x()),
                    kThreads, 0, stream, params, static_cast<const scalar_t*>(grad),
                    grad_strides[0], grad_strides[1], grad_strides[2],
                    static_cast<acc*>(grad_weight), items);
      return launch_status();
    }
    const int64_t diagonal_items = params.heads * diagonal_count(params);
    if (diagonal_items > 0) {
      POSENC_LAUNCH(diagonal_sums_kernel<scalar_t>,
                    blocks_for(diagonal_items, kThreads, max_grid_x()), kThreads, 0, stream, params,
                    static_cast<const scalar_t*>(grad), grad_strides[0], grad_strides[1],
                    grad_strides[2], static_cast<acc*>(diagonals));
      const int status = launch_status();
      if (status != 0) return status;
    }
    const int64_t weight_items =
        params.heads * (params.kind == BiasKind::kT5 ? params.num_buckets : 1);
    if (weight_items == 0) return 0;
    POSENC_LAUNCH(weight_gradient_kernel<acc>, blocks_for(weight_items, kThreads, max_grid_x()),
                  kThreads, 0, stream, params, static_cast<const acc*>(diagonals),
                  static_cast<acc*>(grad_weight), weight_items);
    return launch_status();
  });
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
