// CUDA kernel of rotary_tables (apply_rotary_pos_emb with given cos/sin tables).
#include "cuda/device.cuh"
#include "cuda/rotary_tables_launch.h"

namespace posenc {
namespace kernels {
namespace POSENC_CUDA_NAMESPACE {
namespace {

// grid: row blocks, block: (pairs, rows) over one operand with given cos/sin tables; the row's
// offsets are found once per row, not per element.
template <typename scalar_t>
__global__ void rotary_tables_kernel(const POSENC_GRID_CONSTANT RotaryTableParams p,
                                     int operand_index, int64_t rows) {
  using acc = acc_t<scalar_t>;
  const RotaryTableOperand& op = p.operands[operand_index];
  const int last = op.ndim - 1;
  const int64_t half = op.sizes[last] / 2;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const RotaryTableRow offsets = rotary_table_row(op, row);
    const scalar_t* cos_row = static_cast<const scalar_t*>(p.cos) + offsets.cos;
    const scalar_t* sin_row = static_cast<const scalar_t*>(p.sin) + offsets.sin;
    const scalar_t* x = static_cast<const scalar_t*>(op.in) + offsets.in;
    scalar_t* y = static_cast<scalar_t*>(op.out) + offsets.out;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      const acc cos_lo = load_as_acc(cos_row + i * op.cos_strides[last]);
      const acc cos_hi = load_as_acc(cos_row + (i + half) * op.cos_strides[last]);
      const acc s_lo = load_as_acc(sin_row + i * op.sin_strides[last]);
      const acc s_hi = load_as_acc(sin_row + (i + half) * op.sin_strides[last]);
      // The transpose maps (sin_lo, sin_hi) to (-sin_hi, -sin_lo), as on the CPU.
      const acc sin_lo = p.transpose ? -s_hi : s_lo;
      const acc sin_hi = p.transpose ? -s_lo : s_hi;
      const acc x1 = load_as_acc(x + i * op.in_strides[last]);
      const acc x2 = load_as_acc(x + (i + half) * op.in_strides[last]);
      store_from_acc(y + i * op.out_strides[last], x1 * cos_lo - x2 * sin_lo);
      store_from_acc(y + (i + half) * op.out_strides[last], x2 * cos_hi + x1 * sin_hi);
    }
  }
}

}  // namespace

int rotary_tables(const RotaryTableParams& params, void* stream) {
  for (int k = 0; k < params.operand_count; ++k) {
    const RotaryTableOperand& op = params.operands[k];
    int64_t rows = 1;
    for (int axis = 0; axis + 1 < op.ndim; ++axis) rows *= op.sizes[axis];
    if (rows == 0 || op.sizes[op.ndim - 1] == 0) continue;
    const int status = dispatch_dtype(params.dtype, [&](auto tag) {
      POSENC_LAUNCH(rotary_tables_kernel<decltype(tag)>, blocks_for(rows, 8, max_grid_x()),
                    dim3(32, 8), 0, stream, params, k, rows);
      return launch_status();
    });
    if (status != 0) return status;
  }
  return 0;
}

}  // namespace POSENC_CUDA_NAMESPACE
}  // namespace kernels
}  // namespace posenc
