// The CUDA kernels (kernels/cuda/posenc_kernels.cu, built as host C++ by emulated.cpp) run under
// the CUDA emulation and compared with the CPU kernels: forward, input/table/weight gradients
// (atomic and deterministic), fairseq positions, rotary and rotary_tables, in every dtype, with
// dropout on and off, odd and large widths, batches past the grid's batch blocks, strided
// operands, and grids larger than a (lowered) grid limit. Outputs are poisoned first, so an
// element a kernel leaves unwritten shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <string>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common.h"
#include "cuda/emulation.h"
#define POSENC_CUDA_NAMESPACE cuda_emulated  // the launchers of kernels/cuda/emulated.cpp
#include "cuda_launch.h"
#include "positional.h"
#include "rotary.h"
#include "grid_case.h"
#include "rows.h"

namespace pk = posenc::kernels;
namespace emu = posenc::kernels::cuda_emulated;
namespace ce = posenc::cuda_emulation;

namespace {

// A dense buffer of one kernel dtype, read and written through doubles.
struct Buffer {
  pk::DType dtype;
  std::vector<unsigned char> bytes;

  Buffer(pk::DType type, size_t count) : dtype(type), bytes(count * element_size(type)) {}

  static size_t element_size(pk::DType type) {
    return type == pk::DType::kFloat64 ? 8 : (type == pk::DType::kFloat32 ? 4 : 2);
  }
  size_t size() const { return bytes.size() / element_size(dtype); }
  void* data() { return bytes.data(); }

  double get(size_t i) const {
    return pk::dispatch_dtype(dtype, [&](auto tag) -> double {
      using T = decltype(tag);
      return static_cast<double>(pk::load_as_acc(reinterpret_cast<const T*>(bytes.data()) + i));
    });
  }
  void set(size_t i, double value) {
    pk::dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      pk::store_from_acc(reinterpret_cast<T*>(bytes.data()) + i,
                         static_cast<pk::acc_t<T>>(value));
      return 0;
    });
  }
  void fill_random(std::mt19937_64& rng) {
    std::normal_distribution<double> normal;
    for (size_t i = 0; i < size(); ++i) set(i, normal(rng));
  }
  void poison() { std::fill(bytes.begin(), bytes.end(), 0x7f); }  // NaN/huge in every dtype
};

// The 16-byte aligned start of a byte buffer (the binding's allocator aligns workspaces so).
void* aligned(std::vector<unsigned char>& bytes) {
  const auto address = reinterpret_cast<uintptr_t>(bytes.data());
  return bytes.data() + (16 - address % 16) % 16;
}

double tolerance(pk::DType dtype) {
  switch (dtype) {
    case pk::DType::kFloat64:
      return 1e-12;
    case pk::DType::kFloat32:
      return 2e-6;
    default:
      return 1e-2;  // 16-bit storage: one rounding step of the output
  }
}

void expect_same(const Buffer& cpu, const Buffer& emulated, double atol, const char* what) {
  ASSERT_EQ(cpu.size(), emulated.size());
  int64_t reported = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double a = cpu.get(i), b = emulated.get(i);
    const bool same = (std::isnan(a) && std::isnan(b)) ||
                      std::abs(a - b) <= atol * std::max(1.0, std::abs(a));
    if (!same && reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " cpu " << a << " emulated cuda " << b;
    }
  }
}

const pk::DType kDTypes[] = {pk::DType::kFloat32, pk::DType::kFloat64, pk::DType::kBFloat16,
                             pk::DType::kFloat16};

struct RowsCase {
  int64_t batch, seq_len, dim;
  pk::PositionKind kind;
  pk::Combine combine;
  double dropout;
  bool explicit_positions;
  bool embedding;  // rows gathered from a weight by ids (with padding)
  bool fairseq;
  bool strided;  // x, out and a learned table with padded rows (non-contiguous)
  bool lowered_limits;
  bool grid = false;  // positions are token indices of test_grid() (D = 38)
  bool contiguous_out = false;  // with `strided`: x and the table padded, out not
  bool contiguous_x = false;    // with `strided`: out and the table padded, x not
};

std::string name_of(const RowsCase& c) {
  return "B" + std::to_string(c.batch) + "_T" + std::to_string(c.seq_len) + "_D" +
         std::to_string(c.dim);
}

class CudaEmulatedRows : public ::testing::TestWithParam<RowsCase> {};

// Parameters of a [batch, T, D] call of `dtype` whose rows (x, or grad) start at `rows` with
// `row_stride` elements between steps.
pk::AddPositionalParams rows_params(const RowsCase& c, pk::DType dtype, void* rows,
                                    int64_t row_stride) {
  pk::AddPositionalParams params;
  params.dtype = dtype;
  params.shape.batch_ndim = 1;
  params.shape.batch_sizes[0] = c.batch;
  params.shape.seq_len = c.seq_len;
  params.shape.dim = c.dim;
  params.x = {rows, {c.seq_len * row_stride}, row_stride, 1};
  params.combine = c.combine;
  return params;
}

// The forward (and the input-gradient, which is the same kernel) on both backends.
TEST_P(CudaEmulatedRows, ForwardMatchesCpu) {
  const RowsCase c = GetParam();
  for (pk::DType dtype : kDTypes) {
    SCOPED_TRACE(static_cast<int>(dtype));
    std::mt19937_64 rng(static_cast<uint64_t>(c.batch * 1000 + c.dim));
    const int64_t row_stride = c.strided ? c.dim + 3 : c.dim;
    const int64_t x_row_stride = c.contiguous_x ? c.dim : row_stride;
    const int64_t rows = c.batch * c.seq_len;
    const int64_t vocab = 11, padding = 2, table_rows = c.seq_len + 40;
    Buffer x(dtype, static_cast<size_t>(rows * x_row_stride));
    x.fill_random(rng);
    Buffer weight(dtype, static_cast<size_t>(vocab * c.dim));
    weight.fill_random(rng);
    Buffer table(dtype, static_cast<size_t>(table_rows * row_stride));
    table.fill_random(rng);
    std::vector<int64_t> ids(static_cast<size_t>(rows)), positions(static_cast<size_t>(rows));
    for (auto& id : ids) id = static_cast<int64_t>(rng() % vocab);
    for (auto& p : positions) p = static_cast<int64_t>(rng() % (table_rows - 1));
    const pk::GridCode grid = c.grid ? test_grid() : pk::GridCode();
    if (c.grid) {
      for (auto& p : positions) p = static_cast<int64_t>(rng() % pk::grid_token_count(grid));
    }

    pk::AddPositionalParams params = rows_params(c, dtype, x.data(), x_row_stride);
    // Codes alone read no x (as the binding passes them: no data, strides left as they are).
    if (c.combine == pk::Combine::kPositionOnly) params.x.data = nullptr;
    const int64_t out_row_stride = c.contiguous_out ? c.dim : row_stride;
    params.out = {nullptr, {c.seq_len * out_row_stride}, out_row_stride, 1};
    params.offset = c.explicit_positions || c.fairseq || c.grid ? 0 : 5;
    params.scale = 1.5;
    params.dropout = pk::make_dropout(c.dropout, true, 1234567);
    if (c.explicit_positions) {
      params.positions = {positions.data(), pk::IndexType::kInt64, {c.seq_len}, 1};
    }
    std::vector<pk::ChannelCode> channels;
    params.source.kind = c.kind;
    params.source.code.kind = c.kind;
    params.source.code.base = 100.0;
    if (c.kind == pk::PositionKind::kLearned) {
      params.source.table = table.data();
      params.source.table_rows = table_rows;
      params.source.table_row_stride = row_stride;
    } else {
      params.source.grid = grid;
      params.source.code.layout = c.grid ? pk::Layout::kConcat : pk::Layout::kInterleaved;
      channels = pk::make_channel_codes(params.source.code, c.dim, grid);
      params.source.channels = channels.data();
    }
    if (c.embedding) {
      params.gather.weight = weight.data();
      params.gather.vocab = vocab;
      params.gather.row_stride = c.dim;
      params.gather.ids = {ids.data(), pk::IndexType::kInt64, {c.seq_len}, 1};
      params.gather.padding_idx = padding;
      params.gather.fairseq_positions = c.fairseq;
    }
    Buffer cpu_out(dtype, static_cast<size_t>(rows * out_row_stride));
    Buffer emulated_out(dtype, static_cast<size_t>(rows * out_row_stride));
    cpu_out.poison();
    emulated_out.poison();
    params.out.data = cpu_out.data();
    pk::add_positional_cpu(params, pk::serial_for);
    params.out.data = emulated_out.data();
    const int64_t seed = 1234567;
    std::vector<unsigned char> workspace(
        static_cast<size_t>(emu::add_positional_workspace_bytes(params)) + 16, 0x7f);
    {
      ce::ScopedLimits restore;
      if (c.lowered_limits) {
        ce::limits().max_grid_x = 3;
        ce::limits().max_grid_yz = 2;
      }
      ASSERT_EQ(emu::add_positional(params, &seed, aligned(workspace), nullptr), 0);
    }
    expect_same(cpu_out, emulated_out, tolerance(dtype), "add_positional");
  }
}

// Table and weight gradients, atomic and deterministic, against the CPU's fixed-order sums.
TEST_P(CudaEmulatedRows, ScatterMatchesCpu) {
  const RowsCase c = GetParam();
  if (c.combine == pk::Combine::kPositionOnly || c.combine == pk::Combine::kScaleOnly ||
      c.grid) {
    return;
  }
  for (pk::DType dtype : {pk::DType::kFloat32, pk::DType::kFloat64, pk::DType::kBFloat16}) {
    SCOPED_TRACE(static_cast<int>(dtype));
    std::mt19937_64 rng(static_cast<uint64_t>(c.batch * 7 + c.dim));
    const int64_t rows = c.batch * c.seq_len;
    const int64_t vocab = 11, padding = 2, table_rows = c.seq_len + 40;
    const pk::DType accumulate = dtype == pk::DType::kFloat64 ? pk::DType::kFloat64
                                                              : pk::DType::kFloat32;
    Buffer grad(dtype, static_cast<size_t>(rows * c.dim)), input(dtype, grad.size());
    grad.fill_random(rng);
    input.fill_random(rng);
    Buffer weight(dtype, static_cast<size_t>(vocab * c.dim));
    weight.fill_random(rng);
    std::vector<int64_t> ids(static_cast<size_t>(rows)), positions(static_cast<size_t>(rows));
    for (auto& id : ids) id = static_cast<int64_t>(rng() % vocab);
    for (auto& p : positions) p = static_cast<int64_t>(rng() % 7);  // many rows per target

    pk::AddPositionalParams params = rows_params(c, dtype, grad.data(), c.dim);
    params.scale = 0.75;
    params.dropout = pk::make_dropout(c.dropout, true, 99);
    params.positions = {positions.data(), pk::IndexType::kInt64, {c.seq_len}, 1};
    std::vector<pk::ChannelCode> channels = pk::make_channel_codes(params.source.code, c.dim);
    params.source.channels = channels.data();
    params.source.kind = pk::PositionKind::kSinusoidal;
    const int64_t seed = 99;
    for (const bool weight_target : {false, true}) {
      SCOPED_TRACE(weight_target ? "weight" : "table");
      pk::StridedRows input_rows;
      if (weight_target || c.embedding) {
        params.gather.weight = weight.data();
        params.gather.vocab = vocab;
        params.gather.row_stride = c.dim;
        params.gather.ids = {ids.data(), pk::IndexType::kInt64, {c.seq_len}, 1};
        params.gather.padding_idx = padding;
      } else {
        params.gather = pk::EmbeddingGather{};
        input_rows = {input.data(), {c.seq_len * c.dim}, c.dim, 1};
      }
      const int64_t targets = weight_target ? vocab : 7;
      if (!weight_target) {
        params.source.kind = pk::PositionKind::kLearned;
        params.source.table_rows = targets;
      } else {
        params.source.kind = pk::PositionKind::kSinusoidal;
      }
      Buffer cpu(accumulate, static_cast<size_t>(targets * c.dim));
      for (size_t i = 0; i < cpu.size(); ++i) cpu.set(i, 0.0);
      if (weight_target) {
        pk::embedding_weight_backward_cpu(params, cpu.data(), pk::serial_for);
      } else {
        pk::add_positional_table_backward_cpu(params, input_rows, cpu.data(), pk::serial_for);
      }
      // Rows sorted by target (stable), as the binding sorts them for the deterministic sum.
      std::vector<int64_t> row_target(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        row_target[r] = weight_target ? ids[r] : positions[r];
      }
      std::vector<int64_t> sorted(static_cast<size_t>(rows));
      std::iota(sorted.begin(), sorted.end(), 0);
      std::stable_sort(sorted.begin(), sorted.end(),
                       [&](int64_t a, int64_t b) { return row_target[a] < row_target[b]; });
      std::vector<int64_t> sorted_targets(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) sorted_targets[i] = row_target[sorted[i]];
      const pk::cuda_emulated::ScatterTarget target =
          weight_target ? emu::ScatterTarget::kWeight : emu::ScatterTarget::kTable;
      ce::ScopedLimits restore;
      if (c.lowered_limits) {
        ce::limits().max_grid_x = 3;
        ce::limits().max_grid_yz = 2;
      }
      for (const bool deterministic : {false, true}) {
        Buffer emulated(accumulate, cpu.size());
        for (size_t i = 0; i < emulated.size(); ++i) emulated.set(i, 0.0);
        // Poisoned: every workspace element read is written first.
        std::vector<unsigned char> workspace(
            static_cast<size_t>(emu::scatter_workspace_bytes(params, deterministic)) + 16, 0x7f);
        const int status =
            deterministic
                ? emu::scatter_backward_deterministic(params, input_rows, target, &seed, nullptr,
                                                      sorted.data(), sorted_targets.data(),
                                                      aligned(workspace), emulated.data(), nullptr)
                : emu::scatter_backward_atomic(params, input_rows, target, &seed, nullptr,
                                               aligned(workspace), emulated.data(), nullptr);
        ASSERT_EQ(status, 0);
        // Sums in another order: float rounding, relative to the number of terms.
        expect_same(cpu, emulated, accumulate == pk::DType::kFloat64 ? 1e-11 : 1e-5,
                    deterministic ? "deterministic scatter" : "atomic scatter");
      }
    }
  }
}

// clang-format off: one case per line.
const RowsCase kRowsCases[] = {
    // batch, T, D, kind, combine, dropout, explicit, embedding, fairseq, strided, lowered
    {3, 5, 6, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.0, false, false, false, false, false},
    {2, 4, 5, pk::PositionKind::kCosine, pk::Combine::kMul, 0.3, true, false, false, true, false},
    {70, 2, 6, pk::PositionKind::kDamped, pk::Combine::kAdd, 0.2, false, false, false, false, false},
    {2, 3, 70, pk::PositionKind::kLinear, pk::Combine::kScaleOnly, 0.5, false, false, false, false, false},
    {1, 2, 2050, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, false, false, true, false},
    {2, 6, 7, pk::PositionKind::kLearned, pk::Combine::kMul, 0.25, true, false, false, false, false},
    {3, 7, 6, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, true, true, false, false},
    {2, 5, 8, pk::PositionKind::kLearned, pk::Combine::kAdd, 0.0, true, true, false, false, false},
    {4, 9, 2100, pk::PositionKind::kCosine, pk::Combine::kMul, 0.4, false, true, false, false, true},
    {5, 8, 6, pk::PositionKind::kSinusoidal, pk::Combine::kPositionOnly, 0.0, true, false, false, false, true},
    // 1024 rows over 7 positions: segments of the deterministic sum span several chunks.
    {64, 16, 3, pk::PositionKind::kCosine, pk::Combine::kMul, 0.1, true, false, false, false, true},
    // Rows that all move as 16-byte vectors (D % 8 == 0, contiguous, positions offset + t): the
    // dense kernel, with batches that end inside its groups of rows in flight, batch blocks,
    // two channel-group blocks (D = 2064) and lowered grid limits.
    {5, 7, 16, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, false, false, false, false},
    {70, 3, 24, pk::PositionKind::kLearned, pk::Combine::kMul, 0.25, false, false, false, false, false},
    {3, 4, 2064, pk::PositionKind::kCosine, pk::Combine::kPositionOnly, 0.0, false, false, false, false, false},
    {9, 13, 32, pk::PositionKind::kDamped, pk::Combine::kScaleOnly, 0.5, false, false, false, false, true},
    {6, 5, 8, pk::PositionKind::kLinear, pk::Combine::kAdd, 0.0, false, false, false, false, true},
    // The dense kernel with rows gathered from a weight by ids, padding ids among them.
    {5, 6, 16, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, true, false, false, false},
    {70, 4, 24, pk::PositionKind::kLearned, pk::Combine::kMul, 0.0, false, true, false, false, true},
    // D % 8 == 0 but rows of x (and of the table) 19 elements apart: not 16-byte aligned, so
    // the general kernel, also when the output is contiguous; the table element by element.
    {4, 6, 16, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, false, false, true, false},
    {3, 5, 16, pk::PositionKind::kLearned, pk::Combine::kAdd, 0.0, false, false, false, true, false, false, true},
    {2, 5, 24, pk::PositionKind::kCosine, pk::Combine::kMul, 0.2, false, false, false, true, false, false, false, true},
    // 2D/3D codes on test_grid(): every token of the grid (2 cls + 2 x 3 x 5), and token indices.
    {3, 32, 38, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, false, false, true, false, true},
    {70, 9, 38, pk::PositionKind::kSinusoidal, pk::Combine::kMul, 0.0, true, false, false, false, true, true},
    {2, 11, 38, pk::PositionKind::kCosine, pk::Combine::kPositionOnly, 0.0, true, false, false, false, false, true},
};
// clang-format on

INSTANTIATE_TEST_SUITE_P(CudaEmulated, CudaEmulatedRows, ::testing::ValuesIn(kRowsCases),
                         [](const auto& info) {
                           return name_of(info.param) + "_" + std::to_string(info.index);
                         });

TEST(CudaEmulatedFairseq, PositionsMatchCpu) {
  const int64_t batch = 5, seq_len = 300, padding = 1;  // tiles of the block scan: 128 steps
  std::mt19937_64 rng(3);
  std::vector<int64_t> ids(batch * seq_len);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % 3);  // many padding tokens
  pk::AddPositionalParams params;
  params.shape.batch_ndim = 1;
  params.shape.batch_sizes[0] = batch;
  params.shape.seq_len = seq_len;
  params.shape.dim = 4;
  params.gather.ids = {ids.data(), pk::IndexType::kInt64, {seq_len}, 1};
  params.gather.padding_idx = padding;
  params.gather.fairseq_positions = true;
  std::vector<int64_t> emulated(ids.size(), -7), cpu(ids.size(), -7);
  ce::ScopedLimits restore;
  ce::limits().max_grid_x = 1;  // one block walks every row
  ASSERT_EQ(emu::fairseq_positions(params, emulated.data(), nullptr), 0);
  for (int64_t b = 0; b < batch; ++b) {
    pk::fairseq_positions_row(params.shape, params.gather, b, cpu.data() + b * seq_len);
  }
  EXPECT_EQ(emulated, cpu);
}

// Rotary on [B, S, H, D] views with strides of every layout, partial and interleaved pairs,
// offsets, positions and packed sequences.
struct RotaryCase {
  int layout;  // 0 bshd, 1 bhsd, 2 sbhd, 3 thd (batch 1 with cu_seqlens)
  int64_t rotary_dim;
  bool interleaved, inverse, with_positions, with_offsets, float32_frequencies, lowered;
  int64_t head_dim = 10;  // 128: whole 8-element groups, the 16-byte vector paths
  int mrope = 0;          // 1: M-RoPE, contiguous sections; 2: interleaved (needs positions)
};

class CudaEmulatedRotary : public ::testing::TestWithParam<RotaryCase> {};

TEST_P(CudaEmulatedRotary, MatchesCpu) {
  const RotaryCase c = GetParam();
  // Wide heads get more tokens than one block's tile of 16, so that tiles repeat.
  const int64_t head_dim = c.head_dim;
  const int64_t batch = c.layout == 3 ? 1 : 3;
  const int64_t seq_len = (c.layout == 3 ? 9 : 5) + (head_dim > 10 ? 14 : 0);
  const int64_t heads[2] = {4, 2};
  std::vector<int64_t> cu{0, 4, 4, seq_len}, offsets{7, 0, 1000000},
      positions((c.mrope ? 3 : 1) * batch * seq_len);  // M-RoPE: [3, B, S]
  std::mt19937_64 rng(11);
  for (auto& p : positions) p = static_cast<int64_t>(rng() % (1 << 24));
  // M-RoPE rows are coordinates and may be negative (DINOv3's centred grid).
  if (c.mrope) {
    for (size_t i = 0; i < positions.size(); i += 3) positions[i] -= 1 << 23;
  }
  for (pk::DType dtype : kDTypes) {
    SCOPED_TRACE(static_cast<int>(dtype));
    pk::RotaryParams params;
    params.dtype = dtype;
    params.batch = batch;
    params.seq_len = seq_len;
    params.head_dim = head_dim;
    params.rotary_dim = c.rotary_dim;
    params.interleaved = c.interleaved;
    params.inverse = c.inverse;
    params.attention_factor = 0.9;
    params.offset = 3;
    if (c.with_positions) {
      params.offset = 0;
      params.positions = positions.data();
      params.positions_strides[0] = seq_len;
      params.positions_strides[1] = 1;
      if (c.mrope) {
        const int64_t half = c.rotary_dim / 2;
        params.mrope = true;
        params.mrope_interleaved = c.mrope == 2;
        params.mrope_section[1] = params.mrope_section[2] = half / 3;
        params.mrope_section[0] = half - 2 * (half / 3);
        params.positions_axis_stride = batch * seq_len;
      }
    } else if (c.with_offsets) {
      params.offsets = offsets.data();
    }
    if (c.layout == 3) {
      params.cu_seqlens = cu.data();
      params.sequences = 3;
    }
    std::vector<Buffer> inputs, cpu_out, emulated_out;
    for (int k = 0; k < 2; ++k) {
      const size_t count = static_cast<size_t>(batch * seq_len * heads[k] * head_dim);
      inputs.emplace_back(dtype, count);
      inputs.back().fill_random(rng);
      cpu_out.emplace_back(dtype, count);
      emulated_out.emplace_back(dtype, count);
      cpu_out.back().poison();
      emulated_out.back().poison();
    }
    // Strides (batch, seq, head, dim) of the layout's memory order.
    auto strides = [&](int64_t h) -> std::array<int64_t, 4> {
      switch (c.layout) {
        case 1:  // [B, H, S, D]
          return {h * seq_len * head_dim, head_dim, seq_len * head_dim, 1};
        case 2:  // [S, B, H, D]
          return {h * head_dim, batch * h * head_dim, head_dim, 1};
        default:  // [B, S, H, D] (thd: B = 1)
          return {seq_len * h * head_dim, h * head_dim, head_dim, 1};
      }
    };
    params.operand_count = 2;
    for (int k = 0; k < 2; ++k) {
      const auto s = strides(heads[k]);
      params.operands[k].heads = heads[k];
      params.operands[k].in = inputs[k].data();
      for (int i = 0; i < 4; ++i) {
        params.operands[k].in_strides[i] = s[i];
        params.operands[k].out_strides[i] = s[i];
      }
    }
    const std::vector<double> inv_freq = pk::default_inv_freq(c.rotary_dim, 10000.0);
    const auto turn = pk::rotary_turn_frequencies(inv_freq);
    std::vector<float> float32(inv_freq.begin(), inv_freq.end());
    params.frequencies = turn.data();
    if (c.float32_frequencies) params.float32_frequencies = float32.data();
    for (int k = 0; k < 2; ++k) params.operands[k].out = cpu_out[k].data();
    pk::rotary_cpu(params, pk::serial_for);
    for (int k = 0; k < 2; ++k) params.operands[k].out = emulated_out[k].data();
    {
      ce::ScopedLimits restore;
      if (c.lowered) ce::limits().max_grid_x = 2;
      std::vector<unsigned char> workspace(
          static_cast<size_t>(emu::rotary_workspace_bytes(params)) + 16, 0x7f);
      ASSERT_EQ(emu::rotary(params, c.with_positions ? inv_freq.data() : nullptr, 10000.0,
                            aligned(workspace), nullptr),
                0);
    }
    for (int k = 0; k < 2; ++k) {
      expect_same(cpu_out[k], emulated_out[k], tolerance(dtype), k == 0 ? "q" : "k");
    }
  }
}

const RotaryCase kRotaryCases[] = {
    {0, 10, false, false, false, false, false, false},
    {1, 8, true, true, false, true, false, false},
    {2, 6, false, false, true, false, false, true},
    {3, 10, true, false, false, true, false, false},
    {3, 4, false, true, false, false, true, true},
    {0, 0, false, false, false, false, false, false},
    {0, 128, false, false, false, false, false, true, 128},
    {0, 64, true, true, true, false, false, true, 128},
    {2, 96, false, false, false, true, false, false, 128},
    {3, 128, false, true, false, true, true, false, 128},
    {0, 128, false, false, true, false, false, true, 128, 1},
    {1, 96, false, true, true, false, true, false, 128, 2},
    {2, 10, true, false, true, false, false, false, 10, 1},
};

INSTANTIATE_TEST_SUITE_P(CudaEmulated, CudaEmulatedRotary, ::testing::ValuesIn(kRotaryCases));

// More pairs than fit in shared memory at once (1024): cos/sin are evaluated in chunks, fp64.
TEST(CudaEmulatedRotary, WideHeadsInChunks) {
  const int64_t seq_len = 3, heads = 2, head_dim = 2206, rotary_dim = 2200;
  std::mt19937_64 rng(17);
  Buffer q(pk::DType::kFloat64, seq_len * heads * head_dim);
  q.fill_random(rng);
  Buffer cpu(pk::DType::kFloat64, q.size()), emulated(pk::DType::kFloat64, q.size());
  cpu.poison();
  emulated.poison();
  pk::RotaryParams params;
  params.dtype = pk::DType::kFloat64;
  params.batch = 1;
  params.seq_len = seq_len;
  params.head_dim = head_dim;
  params.rotary_dim = rotary_dim;
  params.offset = 123456;
  params.operand_count = 1;
  params.operands[0] = {q.data(), nullptr, heads,
                        {seq_len * heads * head_dim, heads * head_dim, head_dim, 1},
                        {seq_len * heads * head_dim, heads * head_dim, head_dim, 1}};
  const auto turn = pk::rotary_turn_frequencies(pk::default_inv_freq(rotary_dim, 10000.0));
  params.frequencies = turn.data();
  params.operands[0].out = cpu.data();
  pk::rotary_cpu(params, pk::serial_for);
  params.operands[0].out = emulated.data();
  std::vector<unsigned char> workspace(static_cast<size_t>(emu::rotary_workspace_bytes(params)) +
                                       16);
  ASSERT_EQ(emu::rotary(params, nullptr, 10000.0, aligned(workspace), nullptr), 0);
  expect_same(cpu, emulated, 1e-12, "wide rotary");
}

TEST(CudaEmulatedRotaryTables, MatchesCpuForwardAndTranspose) {
  const int64_t batch = 2, heads = 3, seq_len = 5, dim = 8;
  std::mt19937_64 rng(5);
  for (pk::DType dtype : kDTypes) {
    for (const bool transpose : {false, true}) {
      Buffer q(dtype, batch * heads * seq_len * dim), cos(dtype, batch * seq_len * dim),
          sin(dtype, batch * seq_len * dim);
      q.fill_random(rng);
      cos.fill_random(rng);
      sin.fill_random(rng);
      Buffer cpu(dtype, q.size()), emulated(dtype, q.size());
      cpu.poison();
      emulated.poison();
      pk::RotaryTableParams params;
      params.dtype = dtype;
      params.cos = cos.data();
      params.sin = sin.data();
      params.transpose = transpose;
      params.operand_count = 1;
      pk::RotaryTableOperand& op = params.operands[0];
      op.ndim = 4;
      const int64_t sizes[4] = {batch, heads, seq_len, dim};
      const int64_t strides[4] = {heads * seq_len * dim, seq_len * dim, dim, 1};
      const int64_t table_strides[4] = {seq_len * dim, 0, dim, 1};  // broadcast over heads
      for (int d = 0; d < 4; ++d) {
        op.sizes[d] = sizes[d];
        op.in_strides[d] = op.out_strides[d] = strides[d];
        op.cos_strides[d] = op.sin_strides[d] = table_strides[d];
      }
      op.in = q.data();
      op.out = cpu.data();
      pk::rotary_tables_cpu(params, pk::serial_for);
      op.out = emulated.data();
      ce::ScopedLimits restore;
      ce::limits().max_grid_x = 2;
      ASSERT_EQ(emu::rotary_tables(params, nullptr), 0);
      expect_same(cpu, emulated, tolerance(dtype), "rotary_tables");
    }
  }
}

// `status` is a launch stopped by a device-side assert whose message contains `what`.
void expect_device_assert(int status, const char* what) {
  EXPECT_EQ(status, ce::cudaErrorAssert);
  EXPECT_NE(std::string(ce::last_assert_message()).find(what), std::string::npos)
      << ce::last_assert_message();
}

// Values the kernels index with are checked on the device (no host synchronisation): a bad id,
// position, offset or cu_seqlens stops the launch with a device-side assert naming it.
TEST(CudaEmulatedDeviceChecks, BadValuesTriggerDeviceAsserts) {
  const int64_t batch = 2, seq_len = 3, vocab = 5, widest = 8;
  std::vector<float> weight(vocab * widest, 1.0f), out(batch * seq_len * widest);
  std::vector<int64_t> ids(batch * seq_len);
  pk::AddPositionalParams params;
  params.shape.batch_ndim = 1;
  params.shape.batch_sizes[0] = batch;
  params.shape.seq_len = seq_len;
  params.gather.weight = weight.data();
  params.gather.vocab = vocab;
  params.gather.ids = {ids.data(), pk::IndexType::kInt64, {seq_len}, 1};
  std::vector<pk::ChannelCode> channels = pk::make_channel_codes(params.source.code, widest);
  params.source.channels = channels.data();
  std::vector<unsigned char> workspace(4096);
  // A bad id through the dense kernel (D = 8: whole, aligned groups), then the general one.
  for (const int64_t dim : {widest, int64_t{4}}) {
    SCOPED_TRACE(dim);
    ids = {0, 1, 2, 3, 4, 5};  // 5 is out of range
    params.shape.dim = dim;
    params.out = {out.data(), {seq_len * dim}, dim, 1};
    params.gather.row_stride = dim;
    expect_device_assert(emu::add_positional(params, nullptr, aligned(workspace), nullptr),
                         "ids must be in [0, V)");
    ids[5] = 4;
    EXPECT_EQ(emu::add_positional(params, nullptr, aligned(workspace), nullptr), 0);
  }
  const int64_t dim = params.shape.dim;  // 4, with valid ids, for the cases below
  // A token index past a patch grid of 1 cls token and 1 x 1 patches.
  {
    std::vector<int64_t> tokens{0, 1, 2};
    pk::AddPositionalParams grid_params = params;
    grid_params.positions = {tokens.data(), pk::IndexType::kInt64, {0}, 1};
    grid_params.source.grid.axis_count = 2;
    grid_params.source.grid.extra_tokens = 1;
    grid_params.source.grid.sizes[0] = grid_params.source.grid.sizes[1] = 1;
    grid_params.source.grid.segment_axes[0] = 1;
    grid_params.source.grid.segment_ends[0] = 2;
    grid_params.source.grid.segment_ends[1] = 4;
    expect_device_assert(emu::add_positional(grid_params, nullptr, aligned(workspace), nullptr),
                         "extra_tokens + the grid's patches");
    tokens[2] = 1;
    EXPECT_EQ(emu::add_positional(grid_params, nullptr, aligned(workspace), nullptr), 0);
  }
  // A negative position, and a position past a learned table, in the forward and the scatter.
  std::vector<int64_t> positions{0, -1, 2};
  params.positions = {positions.data(), pk::IndexType::kInt64, {0}, 1};
  expect_device_assert(emu::add_positional(params, nullptr, aligned(workspace), nullptr),
                       "positions must be >= 0");
  positions[1] = 7;
  params.source.kind = pk::PositionKind::kLearned;
  params.source.table_rows = 4;
  std::vector<float> grad_table(4 * dim, 0.0f);
  params.x = {out.data(), {seq_len * dim}, dim, 1};
  expect_device_assert(
      emu::scatter_backward_atomic(params, {}, emu::ScatterTarget::kTable, nullptr, nullptr,
                                   aligned(workspace), grad_table.data(), nullptr),
      "positions must be < the table");
  // Rotary: cu_seqlens that decrease, and negative offsets.
  std::vector<float> q(6 * 2, 1.0f), q_out(q.size());
  std::vector<int64_t> cu{0, 4, 3, 6}, offsets{0, 0, -2};
  pk::RotaryParams rotary;
  rotary.batch = 1;
  rotary.seq_len = 6;
  rotary.head_dim = rotary.rotary_dim = 2;
  rotary.cu_seqlens = cu.data();
  rotary.sequences = 3;
  rotary.operand_count = 1;
  rotary.operands[0] = {q.data(), q_out.data(), 1, {12, 2, 2, 1}, {12, 2, 2, 1}};
  expect_device_assert(emu::rotary(rotary, nullptr, 10000.0, aligned(workspace), nullptr),
                       "cu_seqlens must be non-decreasing");
  cu = {0, 3, 4, 6};
  rotary.offsets = offsets.data();
  expect_device_assert(emu::rotary(rotary, nullptr, 10000.0, aligned(workspace), nullptr),
                       "offsets must be >= 0");
  offsets[2] = 5;
  EXPECT_EQ(emu::rotary(rotary, nullptr, 10000.0, aligned(workspace), nullptr), 0);
}

// The emulator refuses what a GPU refuses.
TEST(CudaEmulatedLaunch, RejectsWhatAGpuRejects) {
  int runs = 0;
  const auto count = [&] { __atomic_add_fetch(&runs, 1, __ATOMIC_RELAXED); };
  ce::launch(ce::dim3(1), ce::dim3(1025), 0, count);
  EXPECT_EQ(ce::cudaGetLastError(), ce::cudaErrorInvalidConfiguration);
  ce::launch(ce::dim3(1, 65536), ce::dim3(32), 0, count);
  EXPECT_EQ(ce::cudaGetLastError(), ce::cudaErrorInvalidConfiguration);
  ce::launch(ce::dim3(1, 1, 65536), ce::dim3(32), 0, count);
  EXPECT_EQ(ce::cudaGetLastError(), ce::cudaErrorInvalidConfiguration);
  ce::launch(ce::dim3(1), ce::dim3(32), 48 * 1024 + 1, count);
  EXPECT_EQ(ce::cudaGetLastError(), ce::cudaErrorInvalidConfiguration);
  EXPECT_EQ(runs, 0);
  ce::launch(ce::dim3(2, 3), ce::dim3(4, 2), 48 * 1024, count);
  EXPECT_EQ(ce::cudaGetLastError(), ce::cudaSuccess);
  EXPECT_EQ(runs, 2 * 3 * 4 * 2);
  ce::launch(ce::dim3(2, 3), ce::dim3(4, 2), 48 * 1024, count, /*barriers=*/true);
  EXPECT_EQ(ce::cudaGetLastError(), ce::cudaSuccess);
  EXPECT_EQ(runs, 2 * 2 * 3 * 4 * 2);
  // A 16-byte vector access must be aligned, as on a GPU (cudaErrorMisalignedAddress).
  alignas(16) unsigned char bytes[32] = {};
  for (const bool barriers : {false, true}) {
    ce::launch(ce::dim3(1), ce::dim3(2), 0, [&] { ce::check_vector_access(bytes + 8); }, barriers);
    EXPECT_EQ(ce::cudaGetLastError(), ce::cudaErrorMisalignedAddress);
    ce::launch(ce::dim3(1), ce::dim3(2), 0, [&] { ce::check_vector_access(bytes + 16); }, barriers);
    EXPECT_EQ(ce::cudaGetLastError(), ce::cudaSuccess);
  }
}

// __syncthreads orders shared-memory writes before reads, across the threads of a block.
TEST(CudaEmulatedLaunch, SyncthreadsAndSharedMemory) {
  std::vector<int> out(64, -1);
  ce::launch(ce::dim3(2), ce::dim3(32), 32 * sizeof(int), [&] {
    int* shared = reinterpret_cast<int*>(ce::dynamic_shared());
    const unsigned t = ce::state().thread_idx.x, b = ce::state().block_idx.x;
    shared[t] = static_cast<int>(100 * b + t);
    ce::__syncthreads();
    out[b * 32 + t] = shared[31 - t];
  }, /*barriers=*/true);
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 32; ++t) EXPECT_EQ(out[b * 32 + t], 100 * b + 31 - t);
  }
}

}  // namespace
