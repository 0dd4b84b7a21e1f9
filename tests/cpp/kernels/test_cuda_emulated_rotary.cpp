// The emulated CUDA rotary and rotary_tables kernels against the CPU kernels, in every layout,
// pairing and dtype.
#include "cuda_emulated_util.h"

using namespace emulated_test;

namespace {

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
          static_cast<size_t>(emu::rotary_workspace_bytes(params)) + kAllocationAlignment, 0x7f);
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
  params.operands[0] = {q.data(),
                        nullptr,
                        heads,
                        {seq_len * heads * head_dim, heads * head_dim, head_dim, 1},
                        {seq_len * heads * head_dim, heads * head_dim, head_dim, 1}};
  const auto turn = pk::rotary_turn_frequencies(pk::default_inv_freq(rotary_dim, 10000.0));
  params.frequencies = turn.data();
  params.operands[0].out = cpu.data();
  pk::rotary_cpu(params, pk::serial_for);
  params.operands[0].out = emulated.data();
  std::vector<unsigned char> workspace(static_cast<size_t>(emu::rotary_workspace_bytes(params)) +
                                       kAllocationAlignment);
  ASSERT_EQ(emu::rotary(params, nullptr, 10000.0, aligned(workspace), nullptr), 0);
  expect_same(cpu, emulated, 1e-12, "wide rotary");
}

// A q of [batch, heads, S, D] (bhsd) or [batch, S, heads, D] (bshd) with cos/sin of [batch or 1,
// S, D] broadcast over heads (and over the batch when `shared_batch`); `padded` rows of q (and
// its output) D + 8 elements apart, or `offset` elements into its buffer (unaligned: the general
// kernel).
struct TablesCase {
  int64_t batch, heads, seq_len, dim;
  bool bshd, shared_batch;
  bool padded = false;
  int64_t offset = 0;
  bool lowered_limits = false;
};

TEST(CudaEmulatedRotaryTables, MatchesCpuForwardAndTranspose) {
  const TablesCase cases[] = {
      {2, 3, 5, 8, false, false},  // D / 2 = 4: the general kernel
      {2, 3, 5, 32, false, false},
      {2, 3, 5, 32, true, false},
      {3, 5, 7, 16, false, true, false, 0, true},  // odd heads, lowered grid limits
      {2, 4, 3, 48, true, true, true},             // padded rows
      {8, 32, 1, 128, true, false},                // a decoding step: heads split over blocks
      {2, 2, 3, 32, false, false, false, 3},       // unaligned: the general kernel
  };
  std::mt19937_64 rng(5);
  for (const TablesCase& c : cases) {
    for (pk::DType dtype : kDTypes) {
      for (const bool transpose : {false, true}) {
        SCOPED_TRACE(std::to_string(c.dim) + (c.bshd ? " bshd " : " bhsd ") +
                     std::to_string(static_cast<int>(dtype)) + (transpose ? " transpose" : ""));
        const int64_t row = c.padded ? c.dim + 8 : c.dim;
        const int64_t table_batch = c.shared_batch ? 1 : c.batch;
        const size_t q_size = static_cast<size_t>(c.offset + c.batch * c.heads * c.seq_len * row);
        Buffer q(dtype, q_size), cos(dtype, static_cast<size_t>(table_batch * c.seq_len * c.dim)),
            sin(dtype, cos.size());
        q.fill_random(rng);
        cos.fill_random(rng);
        sin.fill_random(rng);
        Buffer cpu(dtype, q_size), emulated(dtype, q_size);
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
        const int64_t batch_stride = c.heads * c.seq_len * row;
        const int64_t table_batch_stride = c.shared_batch ? 0 : c.seq_len * c.dim;
        // [batch, heads, S, D] or [batch, S, heads, D]; the tables broadcast over heads.
        const int64_t sizes[4] = {c.batch, c.bshd ? c.seq_len : c.heads,
                                  c.bshd ? c.heads : c.seq_len, c.dim};
        const int64_t strides[4] = {batch_stride, c.bshd ? c.heads * row : c.seq_len * row, row, 1};
        const int64_t table_strides[4] = {table_batch_stride, c.bshd ? c.dim : 0,
                                          c.bshd ? 0 : c.dim, 1};
        for (int d = 0; d < 4; ++d) {
          op.sizes[d] = sizes[d];
          op.in_strides[d] = op.out_strides[d] = strides[d];
          op.cos_strides[d] = op.sin_strides[d] = table_strides[d];
        }
        const size_t element = Buffer::element_size(dtype);
        op.in = static_cast<unsigned char*>(q.data()) + c.offset * element;
        op.out = static_cast<unsigned char*>(cpu.data()) + c.offset * element;
        pk::rotary_tables_cpu(params, pk::serial_for);
        op.out = static_cast<unsigned char*>(emulated.data()) + c.offset * element;
        ce::ScopedLimits restore;
        if (c.lowered_limits) {
          ce::limits().max_grid_x = 2;
          ce::limits().max_grid_yz = 2;
        }
        ASSERT_EQ(emu::rotary_tables(params, nullptr), 0);
        expect_same(cpu, emulated, tolerance(dtype), "rotary_tables");
      }
    }
  }
}

}  // namespace
