// The memory traffic of the emulated CUDA kernels, from the emulation's trace of every global
// access: the dense add_positional, rotary and scatter (weight and table gradient) kernels move
// each byte of their rows once, in whole 32-byte sectors, and read their codes or frequencies
// once per thread and token rather than once per row or head.
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
                                         kAllocationAlignment);
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

// rotary_tables on a bhsd q of [batch, heads, S, D] with cos/sin of [batch, S, D] broadcast over
// heads, traced: each byte of q is loaded and stored once in whole sectors, and the tables' rows
// are read once per token, not per head (2 / heads of the output bytes).
TEST(CudaEmulatedTraffic, DenseRotaryTablesReadTablesOncePerToken) {
  for (const pk::DType dtype : {pk::DType::kBFloat16, pk::DType::kFloat32}) {
    SCOPED_TRACE(static_cast<int>(dtype));
    const int64_t batch = 2, heads = 8, seq_len = 256, dim = 128;
    std::mt19937_64 rng(9);
    Buffer q(dtype, static_cast<size_t>(batch * heads * seq_len * dim)), out(dtype, q.size());
    Buffer cos(dtype, static_cast<size_t>(batch * seq_len * dim)), sin(dtype, cos.size());
    q.fill_random(rng);
    cos.fill_random(rng);
    sin.fill_random(rng);
    out.poison();
    pk::RotaryTableParams params;
    params.dtype = dtype;
    params.cos = cos.data();
    params.sin = sin.data();
    params.operand_count = 1;
    pk::RotaryTableOperand& op = params.operands[0];
    op.ndim = 4;
    op.in = q.data();
    op.out = out.data();
    const int64_t sizes[4] = {batch, heads, seq_len, dim};
    const int64_t strides[4] = {heads * seq_len * dim, seq_len * dim, dim, 1};
    const int64_t table_strides[4] = {seq_len * dim, 0, dim, 1};
    for (int d = 0; d < 4; ++d) {
      op.sizes[d] = sizes[d];
      op.in_strides[d] = op.out_strides[d] = strides[d];
      op.cos_strides[d] = op.sin_strides[d] = table_strides[d];
    }
    ce::SectorCount loads, stores, tables;
    {
      ce::ScopedMemoryTrace trace;
      ASSERT_EQ(emu::rotary_tables(params, nullptr), 0);
      const uint32_t words = static_cast<uint32_t>(Buffer::element_size(dtype) * 8 / 16);
      loads = ce::count_sectors(ce::Access::kRowLoad, words);
      stores = ce::count_sectors(ce::Access::kRowStore, words);
      tables = ce::count_sectors(ce::Access::kTableLoad, words);
    }
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_FALSE(std::isnan(out.get(i)) || std::abs(out.get(i)) > 1e6) << "element " << i;
    }
    const uint64_t bytes = q.size() * bytes_of(dtype);
    EXPECT_EQ(loads.bytes, bytes);
    EXPECT_EQ(loads.unique_bytes, bytes);
    EXPECT_EQ(loads.sectors * 32, bytes);
    EXPECT_EQ(stores.bytes, bytes);
    EXPECT_EQ(stores.sectors * 32, bytes);
    EXPECT_EQ(tables.bytes, 2 * cos.size() * bytes_of(dtype));
    EXPECT_EQ(tables.bytes * heads, 2 * bytes);
    EXPECT_EQ(tables.sectors * 32, tables.bytes);
  }
}

// The general kernels (rows that do not move as 16-byte vectors: here rows 3 elements longer
// than D, so unaligned) still read and write each row byte once: element by element, a thread's
// 8 elements in consecutive instructions, so a warp's 8 instructions touch each sector they
// use once (two rows' partial sectors where a row starts unaligned).
TEST(CudaEmulatedTraffic, GeneralKernelsMoveEachByteOnce) {
  const pk::DType dtype = pk::DType::kBFloat16;
  const int64_t batch = 4, seq_len = 33, dim = 64, row = dim + 3;
  std::mt19937_64 rng(21);
  // add_positional, sinusoidal codes at offset + t.
  {
    Buffer x(dtype, static_cast<size_t>(batch * seq_len * row)), out(dtype, x.size());
    x.fill_random(rng);
    out.poison();
    pk::AddPositionalParams params;
    params.dtype = dtype;
    params.shape.batch_ndim = 1;
    params.shape.batch_sizes[0] = batch;
    params.shape.seq_len = seq_len;
    params.shape.dim = dim;
    params.x = {x.data(), {seq_len * row}, row, 1};
    params.out = {out.data(), {seq_len * row}, row, 1};
    params.combine = pk::Combine::kAdd;
    params.offset = 3;
    params.source.kind = params.source.code.kind = pk::PositionKind::kSinusoidal;
    const std::vector<pk::ChannelCode> channels = pk::make_channel_codes(params.source.code, dim);
    params.source.channels = channels.data();
    ChannelTableBuffer code_table(params);
    ce::SectorCount loads, stores, tables;
    {
      ce::ScopedMemoryTrace trace;
      ASSERT_EQ(emu::add_positional(params, nullptr, code_table.data(), nullptr, nullptr), 0);
      loads = ce::count_sectors(ce::Access::kRowLoad, 8);
      stores = ce::count_sectors(ce::Access::kRowStore, 8);
      tables = ce::count_sectors(ce::Access::kTableLoad);
    }
    const uint64_t bytes = batch * seq_len * dim * bytes_of(dtype);
    EXPECT_EQ(loads.bytes, bytes);
    EXPECT_EQ(loads.unique_bytes, bytes);
    EXPECT_EQ(stores.bytes, bytes);
    EXPECT_EQ(stores.unique_bytes, bytes);
    // Rows of 128 bytes starting 6 bytes apart from alignment: at most 5 sectors a row.
    EXPECT_LE(loads.sectors * 32, bytes * 5 / 4);
    EXPECT_LE(stores.sectors * 32, bytes * 5 / 4);
    // The codes of a step are evaluated once per (step, batch block) for all the block's rows:
    // 5 doubles a channel. This small launch splits the batch over 4 blocks (to fill the GPU),
    // so once per row: 40 bytes per channel and row, a 20th of a bfloat16 row's bytes moved.
    EXPECT_GT(tables.bytes, 0u);
    EXPECT_LE(tables.bytes, static_cast<uint64_t>(batch * seq_len * dim * 5 * 8));
  }
  // rotary on q of [batch, S, 4 heads, 64] with head rows 3 elements apart from alignment, and
  // k of 2 heads: every byte of both, the channels past rotary_dim included, moved once.
  {
    const int64_t heads[2] = {4, 2}, head_dim = 64, rotary_dim = 48;
    pk::RotaryParams params;
    params.dtype = dtype;
    params.batch = batch;
    params.seq_len = seq_len;
    params.head_dim = head_dim;
    params.rotary_dim = rotary_dim;
    params.offset = 5;
    params.operand_count = 2;
    std::vector<Buffer> inputs, outputs;
    uint64_t bytes = 0;
    for (int k = 0; k < 2; ++k) {
      const int64_t head_row = head_dim + 3;
      inputs.emplace_back(dtype, static_cast<size_t>(batch * seq_len * heads[k] * head_row));
      inputs.back().fill_random(rng);
      outputs.emplace_back(dtype, inputs.back().size());
      outputs.back().poison();
      const int64_t strides[4] = {seq_len * heads[k] * head_row, heads[k] * head_row, head_row, 1};
      params.operands[k].heads = heads[k];
      params.operands[k].in = inputs[k].data();
      params.operands[k].out = outputs[k].data();
      for (int i = 0; i < 4; ++i) {
        params.operands[k].in_strides[i] = params.operands[k].out_strides[i] = strides[i];
      }
      bytes += batch * seq_len * heads[k] * head_dim * bytes_of(dtype);
    }
    std::vector<unsigned char> workspace(static_cast<size_t>(emu::rotary_workspace_bytes(params)) +
                                         kAllocationAlignment);
    ce::SectorCount loads, stores;
    {
      ce::ScopedMemoryTrace trace;
      ASSERT_EQ(emu::rotary(params, nullptr, 10000.0, aligned(workspace), nullptr), 0);
      loads = ce::count_sectors(ce::Access::kRowLoad);
      stores = ce::count_sectors(ce::Access::kRowStore);
    }
    EXPECT_EQ(loads.bytes, bytes);
    EXPECT_EQ(loads.unique_bytes, bytes);
    EXPECT_EQ(stores.bytes, bytes);
    EXPECT_EQ(stores.unique_bytes, bytes);
  }
}

// A weight or table gradient of [batch, T, D] grad rows of `dtype`, atomic or deterministic,
// traced: ids in [0, 40) with padding id 2 (weight), positions offset + t (table).
struct ScatterLaunch {
  pk::DType dtype;
  int64_t batch, seq_len, dim;
  bool weight_target, deterministic;

  struct Result {
    ce::SectorCount row_loads, row_loads_per_group, row_stores, row_stores_per_group, reductions,
        reductions_per_group, table_loads;
    uint64_t added_rows = 0;  // rows that are not padding
    uint64_t targets = 0;     // distinct targets
  };

  Result run() const {
    std::mt19937_64 rng(static_cast<uint64_t>(batch * 17 + dim));
    const int64_t rows = batch * seq_len, vocab = 40, padding = 2, offset = 1;
    Buffer grad(dtype, static_cast<size_t>(rows * dim));
    grad.fill_random(rng);
    Buffer weight(dtype, static_cast<size_t>(vocab * dim));
    std::vector<int64_t> ids(static_cast<size_t>(rows));
    for (auto& id : ids) id = static_cast<int64_t>(rng() % vocab);
    pk::AddPositionalParams params;
    params.dtype = dtype;
    params.shape.batch_ndim = 1;
    params.shape.batch_sizes[0] = batch;
    params.shape.seq_len = seq_len;
    params.shape.dim = dim;
    params.x = {grad.data(), {seq_len * dim}, dim, 1};
    params.combine = pk::Combine::kAdd;
    params.offset = offset;
    params.scale = 0.5;
    params.dropout = pk::make_dropout(0.1, true, 3);
    params.source.kind = pk::PositionKind::kLearned;
    params.source.table_rows = seq_len + offset;
    if (weight_target) {
      params.source.kind = pk::PositionKind::kSinusoidal;
      params.gather.weight = weight.data();
      params.gather.vocab = vocab;
      params.gather.row_stride = dim;
      params.gather.ids = {ids.data(), pk::IndexType::kInt64, {seq_len}, 1};
      params.gather.padding_idx = padding;
    }
    std::vector<int64_t> row_target(static_cast<size_t>(rows));
    Result result;
    for (int64_t r = 0; r < rows; ++r) {
      row_target[r] = weight_target ? ids[r] : offset + r % seq_len;
      result.added_rows += weight_target && ids[r] == padding ? 0 : 1;
    }
    std::vector<int64_t> sorted(static_cast<size_t>(rows)), sorted_targets(sorted.size());
    std::iota(sorted.begin(), sorted.end(), 0);
    std::stable_sort(sorted.begin(), sorted.end(),
                     [&](int64_t a, int64_t b) { return row_target[a] < row_target[b]; });
    for (int64_t i = 0; i < rows; ++i) sorted_targets[i] = row_target[sorted[i]];
    std::vector<int64_t> distinct = sorted_targets;
    result.targets =
        static_cast<uint64_t>(std::unique(distinct.begin(), distinct.end()) - distinct.begin());
    const int64_t target_rows = weight_target ? vocab : seq_len + offset;
    Buffer sums(pk::DType::kFloat32, static_cast<size_t>(target_rows * dim));
    for (size_t i = 0; i < sums.size(); ++i) sums.set(i, 0.0);
    std::vector<unsigned char> workspace(
        static_cast<size_t>(emu::scatter_workspace_bytes(params, deterministic)) +
            kAllocationAlignment,
        0x7f);
    ChannelTableBuffer code_table(params);
    const emu::ScatterTarget target =
        weight_target ? emu::ScatterTarget::kWeight : emu::ScatterTarget::kTable;
    const int64_t seed = 3;
    ce::ScopedMemoryTrace trace;
    const int status =
        deterministic
            ? emu::scatter_backward_deterministic(params, {}, target, &seed, nullptr, sorted.data(),
                                                  sorted_targets.data(), code_table.data(),
                                                  aligned(workspace), sums.data(), nullptr)
            : emu::scatter_backward_atomic(params, {}, target, &seed, nullptr, code_table.data(),
                                           sums.data(), nullptr);
    EXPECT_EQ(status, 0);
    const uint32_t words = static_cast<uint32_t>(Buffer::element_size(dtype) * 8 / 16);
    result.row_loads = ce::count_sectors(ce::Access::kRowLoad);
    result.row_loads_per_group = ce::count_sectors(ce::Access::kRowLoad, words);
    result.row_stores = ce::count_sectors(ce::Access::kRowStore);
    result.row_stores_per_group = ce::count_sectors(ce::Access::kRowStore, 2);  // 8 floats
    result.reductions = ce::count_sectors(ce::Access::kReduction);
    result.reductions_per_group = ce::count_sectors(ce::Access::kReduction, 2);
    result.table_loads = ce::count_sectors(ce::Access::kTableLoad);
    return result;
  }
};

// The gradient rows are read once from memory in whole sectors; the atomic scatter adds each
// row that is not padding once (8 floats in two 128-bit reductions a thread, whole sectors a
// group); the deterministic one writes each target's sums once (plus chunk pieces of segments
// that span chunks) and reduces nothing. Neither reads a channel table.
TEST(CudaEmulatedTraffic, DenseScattersReadEachGradByteOnce) {
  for (const pk::DType dtype : {pk::DType::kBFloat16, pk::DType::kFloat32}) {
    for (const bool weight_target : {true, false}) {
      for (const bool deterministic : {false, true}) {
        SCOPED_TRACE(std::to_string(static_cast<int>(dtype)) +
                     (weight_target ? " weight" : " table") +
                     (deterministic ? " deterministic" : " atomic"));
        const ScatterLaunch launch{dtype, 6, 50, 256, weight_target, deterministic};
        const ScatterLaunch::Result result = launch.run();
        const uint64_t rows = launch.batch * launch.seq_len;
        const uint64_t grad_bytes = rows * launch.dim * bytes_of(dtype);
        EXPECT_EQ(result.row_loads.unique_bytes, grad_bytes);
        EXPECT_GE(result.row_loads.bytes, grad_bytes);
        // Chunks past a thread's rows repeat its first row (an L1 hit): at most 3 a chunk.
        EXPECT_LE(result.row_loads.bytes * 10, grad_bytes * 16);
        EXPECT_EQ(result.row_loads_per_group.sectors * 32, result.row_loads.bytes);
        EXPECT_EQ(result.table_loads.bytes, 0u);
        const uint64_t sum_row_bytes = launch.dim * sizeof(float);
        if (!deterministic) {
          EXPECT_GT(result.added_rows, 0u);
          EXPECT_EQ(result.reductions.bytes, result.added_rows * sum_row_bytes);
          EXPECT_EQ(result.reductions_per_group.sectors * 32, result.reductions.bytes);
          EXPECT_EQ(result.row_stores.bytes, 0u);
        } else {
          EXPECT_EQ(result.reductions.bytes, 0u);
          const uint64_t chunks = (rows + 63) / 64;
          EXPECT_GE(result.row_stores.bytes, result.targets * sum_row_bytes);
          EXPECT_LE(result.row_stores.bytes, (result.targets + 2 * chunks) * sum_row_bytes);
          EXPECT_EQ(result.row_stores_per_group.sectors * 32, result.row_stores.bytes);
        }
      }
    }
  }
}

}  // namespace
