// The memory traffic of the emulated CUDA row kernels, from the emulation's trace of every global
// access: the dense kernel moves each byte of its rows once, in whole 32-byte sectors, and reads
// its channel codes once per thread rather than once per row.
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

// Each row byte is loaded once and stored once, and every sector a warp's access touches is
// used whole: 32 bytes moved per 32 bytes asked for. A float32 group is two 128-bit words, so
// each of its two instructions uses half of every sector it touches and the other takes the rest
// (an L1 hit): whole per group, half per instruction.
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
      // A learned table's row of step t is read once for the whole batch.
      const uint64_t table_row_bytes =
          kind == pk::PositionKind::kLearned ? launch.seq_len * launch.dim * bytes_of(dtype) : 0;
      EXPECT_EQ(traffic.row_loads.bytes, rows_bytes + table_row_bytes);
      EXPECT_EQ(traffic.row_stores.bytes, rows_bytes);
      EXPECT_EQ(traffic.row_loads_per_group.sectors * 32, traffic.row_loads.bytes);
      EXPECT_EQ(traffic.row_stores_per_group.sectors * 32, traffic.row_stores.bytes);
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

}  // namespace
