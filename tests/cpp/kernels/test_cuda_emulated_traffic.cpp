// The memory traffic of the emulated CUDA kernels, from the emulation's trace of every global
// access: the dense add_positional and rotary kernels move each byte of their rows once, in whole
// 32-byte sectors, and read their codes or frequencies once per thread and token rather than
// once per row or head.
#include "cuda_emulated_util.h"

using namespace emulated_test;

namespace {

struct Traffic {
  ce::SectorCount row_loads, row_stores, table_loads;
  ce::SectorCount row_loads_per_group, row_stores_per_group;  // a group's words together
};

// A [batch, T, D] add_positional launch on contiguous rows of `dtype`, traced.
struct DenseLaunch {
  pk::DType dtype;
  int64_t batch, seq_len, dim;
  pk::PositionKind kind;
  double dropout;

  Traffic run() const {
    std::mt19937_64 rng(static_cast<uint64_t>(batch * 131 + seq_len + dim));
    Buffer x(dtype, static_cast<size_t>(batch * seq_len * dim));
    Buffer out(dtype, x.size());
    Buffer table(dtype, static_cast<size_t>((seq_len + 3) * dim));
    x.fill_random(rng);
    table.fill_random(rng);
    out.poison();
    pk::AddPositionalParams params;
    params.dtype = dtype;
    params.shape.batch_ndim = 1;
    params.shape.batch_sizes[0] = batch;
    params.shape.seq_len = seq_len;
    params.shape.dim = dim;
    params.x = {x.data(), {seq_len * dim}, dim, 1};
    params.out = {out.data(), {seq_len * dim}, dim, 1};
    params.combine = pk::Combine::kAdd;
    params.offset = 2;
    params.dropout = pk::make_dropout(dropout, true, 7);
    params.source.kind = kind;
    params.source.code.kind = kind;
    std::vector<pk::ChannelCode> channels;
    if (kind == pk::PositionKind::kLearned) {
      params.source.table = table.data();
      params.source.table_rows = seq_len + 3;
      params.source.table_row_stride = dim;
    } else {
      channels = pk::make_channel_codes(params.source.code, dim);
      params.source.channels = channels.data();
    }
    ChannelTableBuffer code_table(params);
    const int64_t seed = 7;
    Traffic traffic;
    {
      ce::ScopedMemoryTrace trace;
      EXPECT_EQ(emu::add_positional(params, &seed, code_table.data(), nullptr, nullptr), 0);
      // 16-byte words per group of 8 elements: 2 for float32, else 1.
      const uint32_t words = static_cast<uint32_t>(Buffer::element_size(dtype) * 8 / 16);
      traffic = {ce::count_sectors(ce::Access::kRowLoad), ce::count_sectors(ce::Access::kRowStore),
                 ce::count_sectors(ce::Access::kTableLoad),
                 ce::count_sectors(ce::Access::kRowLoad, words),
                 ce::count_sectors(ce::Access::kRowStore, words)};
    }
    // Every element written (the poison is gone): the trace saw the whole launch.
    for (size_t i = 0; i < out.size(); ++i) {
      if (std::isnan(out.get(i)) || std::abs(out.get(i)) > 1e6) {
        ADD_FAILURE() << "element " << i << " unwritten";
        break;
      }
    }
    return traffic;
  }
};

size_t bytes_of(pk::DType dtype) { return Buffer::element_size(dtype); }

// Every row byte is loaded and stored, none twice from memory, and every sector a warp's access
// touches is used whole: 32 bytes moved per 32 bytes asked for. A float32 group is two 128-bit
// words, so each of its two instructions uses half of every sector it touches and the other takes
// the rest (an L1 hit): whole per group, half per instruction. A thread's last chunk of rows is
// padded with loads of its first row (L1 hits, not stored) so that the loads need no branch: at
// most kRows - 1 extra loads a thread, under 60% more requests on this small shape (5 rows a
// thread).
TEST(CudaEmulatedTraffic, DenseRowsMoveEachByteOnceInWholeSectors) {
  for (const pk::DType dtype : {pk::DType::kBFloat16, pk::DType::kFloat16, pk::DType::kFloat32}) {
    for (const pk::PositionKind kind :
         {pk::PositionKind::kSinusoidal, pk::PositionKind::kCosine, pk::PositionKind::kLearned}) {
      // T = 67: enough steps to fill the (emulated) GPU, so batch rows are not split over
      // blocks (a split reads a learned table's rows once per block).
      const DenseLaunch launch{dtype, 5, 67, 256, kind, 0.1};
      SCOPED_TRACE(static_cast<int>(dtype) * 10 + static_cast<int>(kind));
      const Traffic traffic = launch.run();
      const uint64_t rows_bytes = launch.batch * launch.seq_len * launch.dim * bytes_of(dtype);
      // A learned table's row of step t is read from memory once for the whole batch.
      const uint64_t table_row_bytes =
          kind == pk::PositionKind::kLearned ? launch.seq_len * launch.dim * bytes_of(dtype) : 0;
      EXPECT_EQ(traffic.row_loads.unique_bytes, rows_bytes + table_row_bytes);
      // A learned table's row is requested with each row (from L1 after the batch's first).
      const uint64_t requested = kind == pk::PositionKind::kLearned ? 2 * rows_bytes : rows_bytes;
      EXPECT_GE(traffic.row_loads.bytes, requested);
      EXPECT_LE(traffic.row_loads.bytes * 10, requested * 16);
      EXPECT_EQ(traffic.row_stores.bytes, rows_bytes);
      EXPECT_EQ(traffic.row_stores.unique_bytes, rows_bytes);
      EXPECT_EQ(traffic.row_loads_per_group.sectors * 32, traffic.row_loads.bytes);
      EXPECT_EQ(traffic.row_stores_per_group.sectors * 32, traffic.row_stores.bytes);
      // 4 rows a thread in chunks of 4 (bfloat16): no padding loads at all.
      if (dtype == pk::DType::kBFloat16 && kind == pk::PositionKind::kSinusoidal) {
        const DenseLaunch whole{dtype, 4, 64, 256, kind, 0.1};
        EXPECT_EQ(whole.run().row_loads.bytes, 4u * 64 * 256 * 2);
      }
      const uint64_t per_instruction = dtype == pk::DType::kFloat32 ? 2 : 1;
      EXPECT_EQ(traffic.row_loads.sectors * 32, per_instruction * traffic.row_loads.bytes);
      EXPECT_EQ(traffic.row_stores.sectors * 32, per_instruction * traffic.row_stores.bytes);
      if (kind == pk::PositionKind::kLearned) EXPECT_EQ(traffic.table_loads.bytes, 0u);
    }
  }
}

// Paired codes are read from the channel table once per thread, so a longer sequence on the same
// grid reads no more of it; the rows' traffic grows with T.
TEST(CudaEmulatedTraffic, PairedCodesAreReadOncePerThread) {
  const DenseLaunch short_launch{pk::DType::kBFloat16,          2,  512, 256,
                                 pk::PositionKind::kSinusoidal, 0.0};
  DenseLaunch long_launch = short_launch;
  long_launch.seq_len = 2048;
  const Traffic short_traffic = short_launch.run();
  const Traffic long_traffic = long_launch.run();
  EXPECT_GT(short_traffic.table_loads.bytes, 0u);
  EXPECT_EQ(long_traffic.table_loads.bytes, short_traffic.table_loads.bytes);
  EXPECT_EQ(long_traffic.row_stores.bytes, 4 * short_traffic.row_stores.bytes);
  // Whole sectors: lanes with consecutive groups read consecutive doubles.
  EXPECT_EQ(long_traffic.table_loads.sectors * 32, long_traffic.table_loads.bytes);
}

// A [batch, S, heads, head_dim] rotary of q (4 heads) and k (2 heads) into new tensors, traced.
struct RotaryLaunch {
  pk::DType dtype;
  int64_t batch, seq_len, head_dim, rotary_dim;
  bool interleaved;

  Traffic run() const {
    std::mt19937_64 rng(5);
    const int64_t heads[2] = {4, 2};
    std::vector<Buffer> inputs, outputs;
    pk::RotaryParams params;
    params.dtype = dtype;
    params.batch = batch;
    params.seq_len = seq_len;
    params.head_dim = head_dim;
    params.rotary_dim = rotary_dim;
    params.interleaved = interleaved;
    params.offset = 11;
    params.operand_count = 2;
    for (int k = 0; k < 2; ++k) {
      inputs.emplace_back(dtype, static_cast<size_t>(batch * seq_len * heads[k] * head_dim));
      inputs.back().fill_random(rng);
      outputs.emplace_back(dtype, inputs.back().size());
      outputs.back().poison();
    }
    for (int k = 0; k < 2; ++k) {
      const int64_t strides[4] = {seq_len * heads[k] * head_dim, heads[k] * head_dim, head_dim, 1};
      params.operands[k].heads = heads[k];
      params.operands[k].in = inputs[k].data();
      params.operands[k].out = outputs[k].data();
      for (int i = 0; i < 4; ++i) {
        params.operands[k].in_strides[i] = params.operands[k].out_strides[i] = strides[i];
      }
    }
    Buffer inv_freq(pk::DType::kFloat64, static_cast<size_t>(rotary_dim / 2));
    const std::vector<double> frequencies = pk::default_inv_freq(rotary_dim, 10000.0);
    for (size_t i = 0; i < frequencies.size(); ++i) inv_freq.set(i, frequencies[i]);
    std::vector<unsigned char> workspace(static_cast<size_t>(emu::rotary_workspace_bytes(params)) +
                                         16);
    Traffic traffic;
    {
      ce::ScopedMemoryTrace trace;
      EXPECT_EQ(emu::rotary(params, static_cast<const double*>(inv_freq.data()), 10000.0,
                            aligned(workspace), nullptr),
                0);
      const uint32_t words = static_cast<uint32_t>(Buffer::element_size(dtype) * 8 / 16);
      traffic = {ce::count_sectors(ce::Access::kRowLoad), ce::count_sectors(ce::Access::kRowStore),
                 ce::count_sectors(ce::Access::kTableLoad),
                 ce::count_sectors(ce::Access::kRowLoad, words),
                 ce::count_sectors(ce::Access::kRowStore, words)};
    }
    for (const Buffer& out : outputs) {
      for (size_t i = 0; i < out.size(); ++i) {
        if (std::isnan(out.get(i)) || std::abs(out.get(i)) > 1e6) {
          ADD_FAILURE() << "element " << i << " unwritten";
          return traffic;
        }
      }
    }
    return traffic;
  }
};

// Each byte of q and k is loaded and stored once in whole sectors (float32: per group, as
// above), channels past rotary_dim included; the frequencies are read once per token and pair,
// not per head: 8 bytes per pair and token, a 1 / (2 heads) of the output bytes of a 16-bit type.
TEST(CudaEmulatedTraffic, DenseRotaryMovesEachByteOnceInWholeSectors) {
  for (const pk::DType dtype : {pk::DType::kBFloat16, pk::DType::kFloat32}) {
    for (const bool interleaved : {false, true}) {
      for (const int64_t rotary_dim : {int64_t{128}, int64_t{64}}) {
        SCOPED_TRACE(std::to_string(static_cast<int>(dtype)) +
                     (interleaved ? " interleaved " : " ") + std::to_string(rotary_dim));
        // 512 tokens: enough to fill the emulated GPU, so heads are not split over blocks.
        const RotaryLaunch launch{dtype, 2, 256, 128, rotary_dim, interleaved};
        const Traffic traffic = launch.run();
        const uint64_t tokens = launch.batch * launch.seq_len;
        const uint64_t bytes = tokens * 6 * launch.head_dim * bytes_of(dtype);
        EXPECT_EQ(traffic.row_loads.bytes, bytes);
        EXPECT_EQ(traffic.row_stores.bytes, bytes);
        EXPECT_EQ(traffic.row_loads_per_group.sectors * 32, bytes);
        EXPECT_EQ(traffic.row_stores_per_group.sectors * 32, bytes);
        const uint64_t per_instruction = dtype == pk::DType::kFloat32 ? 2 : 1;
        EXPECT_EQ(traffic.row_loads.sectors * 32, per_instruction * bytes);
        EXPECT_EQ(traffic.row_stores.sectors * 32, per_instruction * bytes);
        EXPECT_EQ(traffic.table_loads.bytes, tokens * (rotary_dim / 2) * 8);
      }
    }
  }
}

}  // namespace
