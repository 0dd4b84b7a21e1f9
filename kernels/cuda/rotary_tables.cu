// CUDA kernels of rotary_tables (apply_rotary_pos_emb with given cos/sin tables). Operands whose
// rows move as 16-byte vectors take the dense kernel: a thread owns 8 pairs of a row, loads the
// tables' packs once per row of cos/sin and applies them to every head that shares them (the
// axis over which the tables broadcast), two heads' packs loaded before any is used, 128-bit
// stores; a grid sized to the GPU, heads split over blocks when the rows alone cannot fill it.
// Every other operand takes the general kernel, element by element.
#include "cuda/device.cuh"
#include "cuda/rotary_dense.cuh"
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

// ---- the dense kernel ---------------------------------------------------------------------------

// An operand as the dense kernel walks it: its rows split into `heads` (the row axis over which
// cos and sin broadcast, stride 0 in both; 1 when there is none) and the other row axes, merged
// where their strides allow and listed innermost first, indexed in 32 bits.
constexpr int kTableAxes = kMaxTableDims;

struct DenseTableOperand {
  const void* in = nullptr;
  void* out = nullptr;
  const void* cos = nullptr;
  const void* sin = nullptr;
  int axes = 0;
  int32_t sizes[kTableAxes] = {};  // innermost first
  int64_t in_strides[kTableAxes] = {}, out_strides[kTableAxes] = {};
  int64_t cos_strides[kTableAxes] = {}, sin_strides[kTableAxes] = {};
  int32_t rows = 1;  // the product of sizes
  int32_t heads = 1;
  int64_t in_head_stride = 0, out_head_stride = 0;
  int32_t packs = 0;  // packs of 8 pairs in half a row (D / 16)
};

// Element offsets of row `row` of the other axes in the operand, its output and the tables.
struct DenseTableRow {
  int64_t in = 0, out = 0, cos = 0, sin = 0;
};

__device__ __forceinline__ DenseTableRow dense_table_row(const DenseTableOperand& op, int32_t row) {
  DenseTableRow offsets;
  // Unrolled with a uniform guard: the arrays stay in registers (no local memory), and each
  // axis but the outermost costs one 32-bit division.
#pragma unroll
  for (int a = 0; a < kTableAxes; ++a) {
    if (a < op.axes) {
      const int32_t next = a + 1 < op.axes ? row / op.sizes[a] : 0;
      const int64_t index = row - next * op.sizes[a];
      offsets.in += index * op.in_strides[a];
      offsets.out += index * op.out_strides[a];
      offsets.cos += index * op.cos_strides[a];
      offsets.sin += index * op.sin_strides[a];
      row = next;
    }
  }
  return offsets;
}

// grid: (row blocks, pack blocks, head blocks); block: (packs, rows). A thread owns pack g of a
// row's low half (pairs 8g..8g+7, partners D/2 later) and walks its rows; per row it loads the
// tables' four packs once, then rotates its heads (h = blockIdx.z + k gridDim.z) two at a time,
// both heads' packs loaded before either is used (an odd last head reloads the first and skips
// its store, so that the loads need no branch).
template <typename scalar_t>
__global__ void POSENC_LAUNCH_BOUNDS(kRotaryDenseThreads, kRotaryDenseBlocksPerSm)
    rotary_tables_dense_kernel(const POSENC_GRID_CONSTANT DenseTableOperand op, bool transpose) {
  using acc = acc_t<scalar_t>;
  constexpr int kHeads = 2;
  const int32_t g = static_cast<int32_t>(blockIdx.y * blockDim.x + threadIdx.x);
  if (g >= op.packs) return;
  const int64_t d0 = static_cast<int64_t>(g) * kElementsPerThread;
  const int64_t half = static_cast<int64_t>(op.packs) * kElementsPerThread;
  const int32_t head_step = static_cast<int32_t>(gridDim.z);
  const scalar_t* in = static_cast<const scalar_t*>(op.in);
  scalar_t* out = static_cast<scalar_t*>(op.out);
  for (int32_t row = static_cast<int32_t>(blockIdx.x * blockDim.y + threadIdx.y); row < op.rows;
       row += static_cast<int32_t>(gridDim.x * blockDim.y)) {
    const DenseTableRow offsets = dense_table_row(op, row);
    const scalar_t* cos_row = static_cast<const scalar_t*>(op.cos) + offsets.cos + d0;
    const scalar_t* sin_row = static_cast<const scalar_t*>(op.sin) + offsets.sin + d0;
    const Pack8<scalar_t> cos_lo = load_row<Cache::kKeep, true>(cos_row);
    const Pack8<scalar_t> cos_hi = load_row<Cache::kKeep, true>(cos_row + half);
    const Pack8<scalar_t> sin_lo = load_row<Cache::kKeep, true>(sin_row);
    const Pack8<scalar_t> sin_hi = load_row<Cache::kKeep, true>(sin_row + half);
    acc c_lo[kElementsPerThread], c_hi[kElementsPerThread], s_lo[kElementsPerThread],
        s_hi[kElementsPerThread];
#pragma unroll
    for (int j = 0; j < kElementsPerThread; ++j) {
      c_lo[j] = load_as_acc(&cos_lo.v[j]);
      c_hi[j] = load_as_acc(&cos_hi.v[j]);
      // The transpose maps (sin_lo, sin_hi) to (-sin_hi, -sin_lo), as on the CPU.
      const acc lo = load_as_acc(&sin_lo.v[j]), hi = load_as_acc(&sin_hi.v[j]);
      s_lo[j] = transpose ? -hi : lo;
      s_hi[j] = transpose ? -lo : hi;
    }
    const scalar_t* x_row = in + offsets.in + d0;
    scalar_t* y_row = out + offsets.out + d0;
    for (int32_t h = static_cast<int32_t>(blockIdx.z); h < op.heads; h += kHeads * head_step) {
      int32_t head[kHeads];
      bool valid[kHeads];
#pragma unroll
      for (int i = 0; i < kHeads; ++i) {
        const int32_t next = h + i * head_step;
        valid[i] = next < op.heads;
        head[i] = valid[i] ? next : h;
      }
      Pack8<scalar_t> x_lo[kHeads], x_hi[kHeads];
#pragma unroll
      for (int i = 0; i < kHeads; ++i) {
        const scalar_t* x = x_row + head[i] * op.in_head_stride;
        x_lo[i] = load_row(x);
        x_hi[i] = load_row(x + half);
      }
#pragma unroll
      for (int i = 0; i < kHeads; ++i) {
        Pack8<scalar_t> y_lo, y_hi;
#pragma unroll
        for (int j = 0; j < kElementsPerThread; ++j) {
          const acc x1 = load_as_acc(&x_lo[i].v[j]), x2 = load_as_acc(&x_hi[i].v[j]);
          store_from_acc(&y_lo.v[j], x1 * c_lo[j] - x2 * s_lo[j]);
          store_from_acc(&y_hi.v[j], x2 * c_hi[j] + x1 * s_hi[j]);
        }
        if (valid[i]) {
          scalar_t* y = y_row + head[i] * op.out_head_stride;
          store_row(y, y_lo);
          store_row(y + half, y_hi);
        }
      }
    }
  }
}

// Whether every row of a dense operand's axis starts 16-byte aligned.
bool aligned_stride(int64_t stride, int64_t bytes) { return stride * bytes % kVectorBytes == 0; }

// The dense form of `op`, or false when it does not move as 16-byte vectors: bfloat16, float16
// or float32; D a multiple of 16; unit last strides; 16-byte aligned bases and row strides;
// fewer than 2^31 rows.
bool dense_table_operand(const RotaryTableParams& params, const RotaryTableOperand& op,
                         DenseTableOperand* dense) {
  if (params.dtype == DType::kFloat64 || op.ndim < 1) return false;
  const int last = op.ndim - 1;
  const int64_t dim = op.sizes[last];
  const int64_t bytes = element_bytes(params.dtype);
  if (dim % (2 * kElementsPerThread) != 0 || op.in_strides[last] != 1 ||
      op.out_strides[last] != 1 || op.cos_strides[last] != 1 || op.sin_strides[last] != 1) {
    return false;
  }
  for (const void* base : {op.in, static_cast<const void*>(op.out), params.cos, params.sin}) {
    if (reinterpret_cast<uintptr_t>(base) % kVectorBytes != 0) return false;
  }
  constexpr int64_t kRowLimit = int64_t{1} << 31;
  int64_t rows = 1;
  int shared = -1;  // the largest row axis over which both tables broadcast
  for (int axis = 0; axis < last; ++axis) {
    if (op.sizes[axis] == 1) continue;
    rows *= op.sizes[axis];
    if (rows >= kRowLimit) return false;
    if (!aligned_stride(op.in_strides[axis], bytes) ||
        !aligned_stride(op.out_strides[axis], bytes) ||
        !aligned_stride(op.cos_strides[axis], bytes) ||
        !aligned_stride(op.sin_strides[axis], bytes)) {
      return false;
    }
    if (op.cos_strides[axis] == 0 && op.sin_strides[axis] == 0 &&
        (shared < 0 || op.sizes[axis] > op.sizes[shared])) {
      shared = axis;
    }
  }
  *dense = DenseTableOperand{};
  dense->in = op.in;
  dense->out = op.out;
  dense->cos = params.cos;
  dense->sin = params.sin;
  dense->packs = static_cast<int32_t>(dim / (2 * kElementsPerThread));
  if (shared >= 0) {
    dense->heads = static_cast<int32_t>(op.sizes[shared]);
    dense->in_head_stride = op.in_strides[shared];
    dense->out_head_stride = op.out_strides[shared];
  }
  // The other axes, innermost first, an axis merged into the one inside it when its strides
  // are that axis's strides times its size in all four tensors.
  for (int axis = last - 1; axis >= 0; --axis) {
    if (op.sizes[axis] == 1 || axis == shared) continue;
    const int64_t size = op.sizes[axis];
    if (dense->axes > 0) {
      const int inner = dense->axes - 1;
      const int64_t inner_size = dense->sizes[inner];
      if (op.in_strides[axis] == dense->in_strides[inner] * inner_size &&
          op.out_strides[axis] == dense->out_strides[inner] * inner_size &&
          op.cos_strides[axis] == dense->cos_strides[inner] * inner_size &&
          op.sin_strides[axis] == dense->sin_strides[inner] * inner_size) {
        dense->sizes[inner] = static_cast<int32_t>(inner_size * size);
        continue;
      }
    }
    const int a = dense->axes++;
    dense->sizes[a] = static_cast<int32_t>(size);
    dense->in_strides[a] = op.in_strides[axis];
    dense->out_strides[a] = op.out_strides[axis];
    dense->cos_strides[a] = op.cos_strides[axis];
    dense->sin_strides[a] = op.sin_strides[axis];
  }
  dense->rows = static_cast<int32_t>(rows / dense->heads);
  return true;
}

// The dense grid: lanes over packs, a block's rows over the rest; a few waves of the GPU's
// resident blocks, heads split over blocks only when the rows alone cannot fill the GPU (a
// decoding step: each split reads the tables again).
struct DenseTableGrid {
  dim3 blocks, threads;
};

DenseTableGrid dense_table_grid(const DenseTableOperand& op) {
  const int64_t lanes = op.packs < kRotaryDenseThreads ? op.packs : kRotaryDenseThreads;
  DenseTableGrid grid;
  grid.threads = dim3(static_cast<unsigned int>(lanes),
                      static_cast<unsigned int>(kRotaryDenseThreads / lanes));
  const int64_t pack_blocks = blocks_for(op.packs, lanes, max_grid_yz());
  const int64_t row_blocks = (op.rows + grid.threads.y - 1) / grid.threads.y;
  const int64_t resident = static_cast<int64_t>(multiprocessors()) * kRotaryDenseBlocksPerSm;
  int64_t head_blocks = 1;
  if (row_blocks * pack_blocks < resident) {
    head_blocks = (resident + row_blocks * pack_blocks - 1) / (row_blocks * pack_blocks);
    if (head_blocks > op.heads) head_blocks = op.heads;
    if (head_blocks > max_grid_yz()) head_blocks = max_grid_yz();
  }
  constexpr int64_t kWaves = 4;
  const int64_t most = kWaves * resident / (pack_blocks * head_blocks);
  grid.blocks =
      dim3(blocks_for(row_blocks < most ? row_blocks : (most > 0 ? most : 1), 1, max_grid_x()),
           static_cast<unsigned int>(pack_blocks), static_cast<unsigned int>(head_blocks));
  return grid;
}

}  // namespace

int rotary_tables(const RotaryTableParams& params, void* stream) {
  for (int k = 0; k < params.operand_count; ++k) {
    const RotaryTableOperand& op = params.operands[k];
    int64_t rows = 1;
    for (int axis = 0; axis + 1 < op.ndim; ++axis) rows *= op.sizes[axis];
    if (rows == 0 || op.sizes[op.ndim - 1] == 0) continue;
    DenseTableOperand dense;
    if (dense_table_operand(params, op, &dense)) {
      const DenseTableGrid grid = dense_table_grid(dense);
      const int status = dispatch_dense_dtype(params.dtype, [&](auto tag) {
        POSENC_LAUNCH(rotary_tables_dense_kernel<decltype(tag)>, grid.blocks, grid.threads, 0,
                      stream, dense, params.transpose);
        return launch_status();
      });
      if (status != 0) return status;
      continue;
    }
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
