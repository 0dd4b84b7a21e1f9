// The emulated CUDA row kernels against the CPU kernels: add_positional, embedding and
// positional_encoding forward, input/table/weight gradients (atomic and deterministic) and
// fairseq positions, in every dtype, with dropout on and off, odd and large widths, batches past
// the grid's batch blocks, strided operands and grids larger than a (lowered) grid limit.
#include "cuda_emulated_util.h"

using namespace emulated_test;

namespace {

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
  bool grid = false;                // positions are token indices of test_grid() (D = 38)
  bool contiguous_out = false;      // with `strided`: x and the table padded, out not
  bool contiguous_x = false;        // with `strided`: out and the table padded, x not
  bool shared_positions = false;    // with explicit_positions: one [T] row for every batch row
  bool negative_positions = false;  // with explicit_positions: relative ones, about half < 0
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
    if (c.negative_positions) {
      for (auto& p : positions) p -= table_rows / 2;
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
      params.positions = {
          positions.data(), pk::IndexType::kInt64, {c.shared_positions ? 0 : c.seq_len}, 1};
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
        static_cast<size_t>(emu::add_positional_workspace_bytes(params)) + kAllocationAlignment,
        0x7f);
    ChannelTableBuffer code_table(params);
    {
      ce::ScopedLimits restore;
      if (c.lowered_limits) {
        ce::limits().max_grid_x = 3;
        ce::limits().max_grid_yz = 2;
      }
      ASSERT_EQ(emu::add_positional(params, &seed, code_table.data(), aligned(workspace), nullptr),
                0);
    }
    expect_same(cpu_out, emulated_out, tolerance(dtype), "add_positional");
  }
}

// Table and weight gradients, atomic and deterministic, against the CPU's fixed-order sums.
TEST_P(CudaEmulatedRows, ScatterMatchesCpu) {
  const RowsCase c = GetParam();
  if (c.combine == pk::Combine::kPositionOnly || c.combine == pk::Combine::kScaleOnly || c.grid) {
    return;
  }
  for (pk::DType dtype : {pk::DType::kFloat32, pk::DType::kFloat64, pk::DType::kBFloat16}) {
    SCOPED_TRACE(static_cast<int>(dtype));
    std::mt19937_64 rng(static_cast<uint64_t>(c.batch * 7 + c.dim));
    const int64_t rows = c.batch * c.seq_len;
    const int64_t vocab = 11, padding = 2, table_rows = c.seq_len + 40;
    const pk::DType accumulate =
        dtype == pk::DType::kFloat64 ? pk::DType::kFloat64 : pk::DType::kFloat32;
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
      // The CPU writes every element in the gradient's dtype; CUDA sums into a zeroed buffer
      // in the compute type.
      Buffer cpu(dtype, static_cast<size_t>(targets * c.dim));
      cpu.poison();
      if (weight_target) {
        pk::embedding_weight_backward_cpu(params, cpu.data(), targets, pk::serial_for);
      } else {
        pk::add_positional_table_backward_cpu(params, input_rows, cpu.data(), targets,
                                              pk::serial_for);
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
            static_cast<size_t>(emu::scatter_workspace_bytes(params, deterministic)) +
                kAllocationAlignment,
            0x7f);
        ChannelTableBuffer code_table(params);
        const int status =
            deterministic
                ? emu::scatter_backward_deterministic(params, input_rows, target, &seed, nullptr,
                                                      sorted.data(), sorted_targets.data(),
                                                      code_table.data(), aligned(workspace),
                                                      emulated.data(), nullptr)
                : emu::scatter_backward_atomic(params, input_rows, target, &seed, nullptr,
                                               code_table.data(), emulated.data(), nullptr);
        ASSERT_EQ(status, 0);
        // Sums in another order: float rounding, relative to the number of terms; a half type's
        // CPU sums are rounded to it once.
        expect_same(cpu, emulated,
                    accumulate == pk::DType::kFloat64 ? 1e-11 : std::max(1e-5, tolerance(dtype)),
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
    // The dense kernel on explicit positions shared by the batch: paired codes with dropout and
    // a gather, and decoding steps (T = 1) whose batch rows are split over blocks.
    {6, 9, 16, pk::PositionKind::kLinear, pk::Combine::kAdd, 0.3, true, true, false, false, false, false, false, false, true},
    {40, 1, 64, pk::PositionKind::kDamped, pk::Combine::kMul, 0.0, true, false, false, false, false, false, false, false, true},
    {40, 1, 64, pk::PositionKind::kCosine, pk::Combine::kAdd, 0.2, true, true, false, false, false, false, false, false, true},
    {3, 7, 16, pk::PositionKind::kLearned, pk::Combine::kAdd, 0.1, true, false, false, false, true, false, false, false, true},
    // The dense kernel on positions per row (paired codes and learned tables; unpaired codes
    // take the general kernel).
    {4, 9, 16, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.2, true, true, false, false, false},
    {3, 11, 24, pk::PositionKind::kLearned, pk::Combine::kMul, 0.1, true, false, false, false, false},
    {8, 1, 64, pk::PositionKind::kDamped, pk::Combine::kAdd, 0.0, true, false, false, false, false},
    {8, 1, 64, pk::PositionKind::kCosine, pk::Combine::kAdd, 0.0, true, false, false, false, false},
    // D % 8 == 0 but rows of x (and of the table) 19 elements apart: not 16-byte aligned, so
    // the general kernel, also when the output is contiguous; the table element by element.
    {4, 6, 16, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, false, false, true, false},
    {3, 5, 16, pk::PositionKind::kLearned, pk::Combine::kAdd, 0.0, false, false, false, true, false, false, true},
    {2, 5, 24, pk::PositionKind::kCosine, pk::Combine::kMul, 0.2, false, false, false, true, false, false, false, true},
    // The dense scatters with segments over several chunks: 1024 rows over 7 positions and 11
    // ids, explicit positions, padding ids, lowered grid limits (grid-stride loops).
    {64, 16, 16, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, true, true, false, false, true},
    {32, 32, 8, pk::PositionKind::kLearned, pk::Combine::kAdd, 0.0, true, false, false, false, false},
    // 2D/3D codes on test_grid(): every token of the grid (2 cls + 2 x 3 x 5), and token indices.
    {3, 32, 38, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, false, false, false, true, false, true},
    {70, 9, 38, pk::PositionKind::kSinusoidal, pk::Combine::kMul, 0.0, true, false, false, false, true, true},
    {2, 11, 38, pk::PositionKind::kCosine, pk::Combine::kPositionOnly, 0.0, true, false, false, false, false, true},
    // Negative (relative) positions: the general kernel, the dense kernel's paired codes per
    // row, its unpaired codes shared by the batch, and a decoding step.
    {3, 5, 6, pk::PositionKind::kSinusoidal, pk::Combine::kAdd, 0.1, true, false, false, false, false, false, false, false, false, true},
    {4, 9, 16, pk::PositionKind::kSinusoidal, pk::Combine::kMul, 0.2, true, true, false, false, false, false, false, false, false, true},
    {6, 9, 16, pk::PositionKind::kCosine, pk::Combine::kPositionOnly, 0.0, true, false, false, false, false, false, false, false, true, true},
    {40, 1, 64, pk::PositionKind::kDamped, pk::Combine::kAdd, 0.3, true, false, false, false, true, false, false, false, true, true},
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

}  // namespace
