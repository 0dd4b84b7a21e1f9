// The emulated CUDA kernels' device-side value checks, and the emulation itself refusing what a
// GPU refuses.
#include "cuda_emulated_util.h"

using namespace emulated_test;

namespace {

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
    expect_device_assert(emu::add_positional(params, nullptr, channel_table(params)->data(),
                                             aligned(workspace), nullptr),
                         "ids must be in [0, V)");
    ids[5] = 4;
    EXPECT_EQ(emu::add_positional(params, nullptr, channel_table(params)->data(),
                                  aligned(workspace), nullptr),
              0);
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
    expect_device_assert(
        emu::add_positional(grid_params, nullptr, channel_table(grid_params)->data(),
                            aligned(workspace), nullptr),
        "extra_tokens + the grid's patches");
    tokens[2] = 1;
    EXPECT_EQ(emu::add_positional(grid_params, nullptr, channel_table(grid_params)->data(),
                                  aligned(workspace), nullptr),
              0);
  }
  // A negative position: a relative one for a computed code, out of a learned table's rows in
  // the forward; a position past the table in the scatter.
  std::vector<int64_t> positions{0, -1, 2};
  params.positions = {positions.data(), pk::IndexType::kInt64, {0}, 1};
  EXPECT_EQ(emu::add_positional(params, nullptr, channel_table(params)->data(), aligned(workspace),
                                nullptr),
            0);
  params.source.kind = pk::PositionKind::kLearned;
  params.source.table_rows = 4;
  std::vector<float> table(4 * dim, 0.5f);
  params.source.table = table.data();
  params.source.table_row_stride = dim;
  expect_device_assert(emu::add_positional(params, nullptr, nullptr, aligned(workspace), nullptr),
                       "positions must be in [0, the table's rows)");
  positions[1] = 7;
  std::vector<float> grad_table(4 * dim, 0.0f);
  params.x = {out.data(), {seq_len * dim}, dim, 1};
  expect_device_assert(emu::scatter_backward_atomic(params, {}, emu::ScatterTarget::kTable, nullptr,
                                                    nullptr, nullptr, grad_table.data(), nullptr),
                       "positions must be in [0, the table's rows)");
  // The dense scatters (D = 8, aligned rows), atomic and deterministic: a bad id for the weight,
  // a position past the table; no row of the sums is written out of range.
  {
    const int64_t dense_dim = widest, rows = batch * seq_len;
    std::vector<float> grad(rows * dense_dim, 1.0f);
    std::vector<int64_t> sorted(rows);
    std::iota(sorted.begin(), sorted.end(), 0);
    pk::AddPositionalParams dense = params;
    dense.shape.dim = dense_dim;
    dense.gather.row_stride = dense_dim;
    dense.positions = {};
    dense.source.kind = pk::PositionKind::kSinusoidal;
    dense.x = {grad.data(), {seq_len * dense_dim}, dense_dim, 1};
    // The sums, with one guard row past the vocabulary; rows out of range hold 7 (a write of
    // their zero sums would show).
    Buffer aligned_sums(pk::DType::kFloat32, static_cast<size_t>((vocab + 1) * dense_dim));
    auto reset_sums = [&](int64_t first_bad_row) {
      for (size_t i = 0; i < aligned_sums.size(); ++i) {
        aligned_sums.set(i, static_cast<int64_t>(i) >= first_bad_row * dense_dim ? 7.0 : 0.0);
      }
    };
    reset_sums(vocab);
    ids = {0, 1, 2, 3, 4, 5};  // 5 is out of range (sorted)
    for (const bool deterministic : {false, true}) {
      SCOPED_TRACE(deterministic);
      expect_device_assert(
          deterministic
              ? emu::scatter_backward_deterministic(
                    dense, {}, emu::ScatterTarget::kWeight, nullptr, nullptr, sorted.data(),
                    ids.data(), nullptr, aligned(workspace), aligned_sums.data(), nullptr)
              : emu::scatter_backward_atomic(dense, {}, emu::ScatterTarget::kWeight, nullptr,
                                             nullptr, nullptr, aligned_sums.data(), nullptr),
          "ids must be in [0, V)");
      for (int64_t d = 0; d < dense_dim; ++d) {
        EXPECT_EQ(aligned_sums.get(static_cast<size_t>(vocab * dense_dim + d)), 7.0);
      }
    }
    ids[5] = 4;
    dense.source.kind = pk::PositionKind::kLearned;
    dense.source.table_rows = seq_len - 1;  // positions 0, 1, 2: the last is past the table
    reset_sums(seq_len - 1);
    std::vector<int64_t> by_target{0, 3, 1, 4, 2, 5}, sorted_targets{0, 0, 1, 1, 2, 2};
    for (const bool deterministic : {false, true}) {
      SCOPED_TRACE(deterministic);
      expect_device_assert(
          deterministic
              ? emu::scatter_backward_deterministic(
                    dense, {}, emu::ScatterTarget::kTable, nullptr, nullptr, by_target.data(),
                    sorted_targets.data(), nullptr, aligned(workspace), aligned_sums.data(),
                    nullptr)
              : emu::scatter_backward_atomic(dense, {}, emu::ScatterTarget::kTable, nullptr,
                                             nullptr, nullptr, aligned_sums.data(), nullptr),
          "positions must be in [0, the table's rows)");
      for (int64_t d = 0; d < dense_dim; ++d) {
        EXPECT_EQ(aligned_sums.get(static_cast<size_t>((seq_len - 1) * dense_dim + d)), 7.0);
      }
    }
  }
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
  ce::launch(
      ce::dim3(2), ce::dim3(32), 32 * sizeof(int),
      [&] {
        int* shared = reinterpret_cast<int*>(ce::dynamic_shared());
        const unsigned t = ce::state().thread_idx.x, b = ce::state().block_idx.x;
        shared[t] = static_cast<int>(100 * b + t);
        ce::__syncthreads();
        out[b * 32 + t] = shared[31 - t];
      },
      /*barriers=*/true);
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 32; ++t) EXPECT_EQ(out[b * 32 + t], 100 * b + 31 - t);
  }
}

}  // namespace
