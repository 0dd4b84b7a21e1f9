// The CPU row kernels of add_positional and positional_encoding, without torch, against float64
// references written from the published formulas.
#include <algorithm>
#include <limits>
#include <numeric>

#include "grid_case.h"
#include "kernel_test_util.h"

using namespace kernel_test;

class AddPositionalKernel : public ::testing::TestWithParam<Case> {};

// x: [B=3, T=5, D] stored transposed as [T, B, D'] with D' > D (strided rows, padded channels),
// positions int32 [B, T] or none, poisoned output.
TEST_P(AddPositionalKernel, MatchesReference) {
  const Case c = GetParam();
  for (int64_t dim : {1, 2, 7, 8, 33}) {
    for (bool with_positions : {false, true}) {
      for (double p_drop : {0.0, 0.25}) {
        const int64_t batch = 3, seq = 5, padded = dim + 3, offset = 11, table_rows = 40;
        std::mt19937 rng(static_cast<unsigned>(dim * 7 + with_positions));
        std::normal_distribution<double> normal;
        std::vector<double> x_storage(seq * batch * padded);
        for (auto& v : x_storage) v = normal(rng);
        std::vector<double> table(table_rows * dim);
        for (auto& v : table) v = normal(rng);
        std::vector<int32_t> positions(batch * seq);
        for (auto& v : positions) v = static_cast<int32_t>(rng() % table_rows);
        std::vector<double> out(batch * seq * dim, kNaN);

        pk::AddPositionalParams params;
        params.dtype = pk::DType::kFloat64;
        params.shape.batch_ndim = 1;
        params.shape.batch_sizes[0] = batch;
        params.shape.seq_len = seq;
        params.shape.dim = dim;
        params.x.data = x_storage.data();
        params.x.batch_strides[0] = padded;
        params.x.seq_stride = batch * padded;
        params.x.dim_stride = 1;
        params.out.data = out.data();
        params.out.batch_strides[0] = seq * dim;
        params.out.seq_stride = dim;
        params.out.dim_stride = 1;
        if (with_positions) {
          params.positions.data = positions.data();
          params.positions.type = pk::IndexType::kInt32;
          params.positions.batch_strides[0] = seq;
          params.positions.seq_stride = 1;
        }
        params.offset = offset;
        params.combine = c.combine;
        params.scale = 1.75;
        params.dropout = pk::make_dropout(p_drop, true, 0x1234abcdULL);
        pk::PositionCodeOptions options{c.kind, 100.0, c.convention, c.layout};
        const auto codes = pk::make_channel_codes(options, dim);
        params.source.kind = c.kind;
        params.source.channels = codes.data();
        params.source.table = table.data();
        params.source.table_rows = table_rows;
        params.source.table_row_stride = dim;
        params.source.table_dim_stride = 1;
        if (c.kind == pk::PositionKind::kLearned && !with_positions) {
          params.offset = table_rows - seq;
        }

        pk::add_positional_cpu(params, serial_chunks_of_one);

        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t t = 0; t < seq; ++t) {
            const int64_t pos = with_positions ? positions[b * seq + t] : params.offset + t;
            for (int64_t d = 0; d < dim; ++d) {
              const double x = x_storage[t * batch * padded + b * padded + d];
              const double pe =
                  c.kind == pk::PositionKind::kLearned
                      ? table[pos * dim + d]
                      : reference_code(c.kind, c.convention, c.layout, 100.0, dim, pos, d);
              double want = c.combine == pk::Combine::kAdd ? 1.75 * x + pe : 1.75 * x * pe;
              const uint64_t index = static_cast<uint64_t>((b * seq + t) * dim + d);
              if (p_drop > 0) want *= reference_dropout_multiplier(0x1234abcdULL, index, p_drop);
              ASSERT_NEAR(out[index], want, 1e-12)
                  << "dim=" << dim << " b=" << b << " t=" << t << " d=" << d
                  << " positions=" << with_positions << " p=" << p_drop;
            }
          }
        }
      }
    }
  }
}

using K = pk::PositionKind;
using C = pk::Convention;
using L = pk::Layout;
using M = pk::Combine;

// clang-format off: one case per line.
INSTANTIATE_TEST_SUITE_P(AllKinds, AddPositionalKernel, ::testing::Values(
    Case{K::kSinusoidal, C::kVaswani, L::kInterleaved, M::kAdd},
    Case{K::kSinusoidal, C::kVaswani, L::kConcat, M::kMul},
    Case{K::kSinusoidal, C::kTensor2Tensor, L::kInterleaved, M::kMul},
    Case{K::kSinusoidal, C::kTensor2Tensor, L::kConcat, M::kAdd},
    Case{K::kLinear, C::kVaswani, L::kInterleaved, M::kAdd},
    Case{K::kDamped, C::kVaswani, L::kInterleaved, M::kMul},
    Case{K::kCosine, C::kVaswani, L::kInterleaved, M::kAdd},
    Case{K::kLearned, C::kVaswani, L::kInterleaved, M::kAdd},
    Case{K::kLearned, C::kVaswani, L::kInterleaved, M::kMul}));
// clang-format on

// float32 storage, positions shared across the batch: same bits with 1 chunk per row, one
// serial chunk, and 4 threads; bfloat16 within its rounding of the float result.
class AddPositionalKernelThreads : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

// (batch, T): with one batch row and T past the recurrence's anchors, the work splits inside
// runs of consecutive positions.
INSTANTIATE_TEST_SUITE_P(Shapes, AddPositionalKernelThreads,
                         ::testing::Values(std::make_pair(int64_t{4}, int64_t{37}),
                                           std::make_pair(int64_t{1}, int64_t{700})));

TEST_P(AddPositionalKernelThreads, SameBitsForAnySplit) {
  const int64_t batch = GetParam().first, seq = GetParam().second, dim = 96;
  std::vector<float> x(batch * seq * dim);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  const auto codes = pk::make_channel_codes(pk::PositionCodeOptions{}, dim);
  auto run = [&](const pk::ParallelFor& pf) {
    std::vector<float> out(x.size(), std::nanf(""));
    pk::AddPositionalParams params = contiguous_params(x, out, batch, seq, dim, codes);
    params.offset = 1000;
    params.dropout = pk::make_dropout(0.1, true, 99);
    pk::add_positional_cpu(params, pf);
    return out;
  };
  const auto serial = run(pk::serial_for);
  const auto ones = run(serial_chunks_of_one);
  const auto threads = run(four_threads);
  ASSERT_EQ(0, std::memcmp(serial.data(), ones.data(), serial.size() * sizeof(float)));
  ASSERT_EQ(0, std::memcmp(serial.data(), threads.data(), serial.size() * sizeof(float)));
  int64_t dropped = 0;
  for (float v : serial) dropped += v == 0.0f;
  EXPECT_GT(dropped, 0);
  EXPECT_LT(dropped, static_cast<int64_t>(serial.size()) / 5);
}

TEST(AddPositionalKernel, PositionOnlyBFloat16) {
  const int64_t seq = 9, dim = 16;
  std::vector<pk::BFloat16> out(seq * dim, pk::BFloat16{0x7fc0});
  std::vector<int64_t> positions = {0, 1, 2, 100, 5000, 65535, 1 << 20, 3, 7};
  const auto codes = pk::make_channel_codes(pk::PositionCodeOptions{}, dim);
  pk::AddPositionalParams params;
  params.dtype = pk::DType::kBFloat16;
  params.shape.seq_len = seq;
  params.shape.dim = dim;
  params.out.data = out.data();
  params.out.seq_stride = dim;
  params.positions.data = positions.data();
  params.positions.seq_stride = 1;
  params.combine = pk::Combine::kPositionOnly;
  params.source.channels = codes.data();
  pk::add_positional_cpu(params, pk::serial_for);
  for (int64_t t = 0; t < seq; ++t) {
    for (int64_t d = 0; d < dim; ++d) {
      const double want = reference_code(pk::PositionKind::kSinusoidal, pk::Convention::kVaswani,
                                         pk::Layout::kInterleaved, 10000.0, dim, positions[t], d);
      EXPECT_NEAR(pk::bfloat16_to_float(out[t * dim + d]), want, 4e-3) << t << "," << d;
    }
  }
}

// Grid codes (test_grid(): 3 axes, cls tokens, uneven segments, origins, scales): every
// token's row equals the 1-D codes of its coordinates, in double. Explicit token indices
// (unordered, some of them extra tokens), and the run-time evaluation used when the factorised
// axis rows would be too large.
// The double reference of token `token`'s channel d on `grid` (concat sinusoidal).
double reference_grid_code(const pk::GridCode& grid, int64_t dim, int64_t token, int64_t d) {
  if (token < grid.extra_tokens) return 0.0;
  int64_t index = token - grid.extra_tokens, coordinates[3] = {0, 0, 0};
  for (int a = grid.axis_count - 1; a >= 0; --a) {
    coordinates[a] = index % grid.sizes[a] + grid.origins[a];
    index /= grid.sizes[a];
  }
  int s = 0;
  while (d >= grid.segment_ends[s]) ++s;
  const int64_t begin = s == 0 ? 0 : grid.segment_ends[s - 1];
  const int axis = grid.segment_axes[s];
  return reference_code(pk::PositionKind::kSinusoidal, pk::Convention::kVaswani,
                        pk::Layout::kConcat, 10000.0, grid.segment_ends[s] - begin,
                        static_cast<double>(coordinates[axis]) * grid.scales[axis], d - begin);
}

TEST(AddPositionalKernel, GridCodesMatchReference) {
  pk::PositionCodeOptions options;
  options.layout = pk::Layout::kConcat;
  for (const bool explicit_positions : {false, true}) {
    SCOPED_TRACE(explicit_positions);
    const pk::GridCode grid = test_grid();
    const int64_t dim = 38, tokens = pk::grid_token_count(grid);  // 2 + 30
    const int64_t seq = explicit_positions ? 9 : tokens;
    std::vector<int64_t> positions = {31, 0, 7, 1, 2, 30, 16, 5, 0};
    std::vector<double> x(static_cast<size_t>(seq * dim)), out(x.size(), kNaN);
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> uniform(-2.0, 2.0);
    for (double& v : x) v = uniform(rng);
    const auto codes = pk::make_channel_codes(options, dim, grid);
    pk::AddPositionalParams params;
    params.dtype = pk::DType::kFloat64;
    params.shape.seq_len = seq;
    params.shape.dim = dim;
    params.x = {x.data(), {}, dim, 1};
    params.out = {out.data(), {}, dim, 1};
    if (explicit_positions) params.positions = {positions.data(), pk::IndexType::kInt64, {}, 1};
    params.combine = pk::Combine::kAdd;
    params.scale = 0.5;
    params.source.code = options;
    params.source.channels = codes.data();
    params.source.grid = grid;
    pk::add_positional_cpu(params, pk::serial_for);
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t token = explicit_positions ? positions[t] : t;
      for (int64_t d = 0; d < dim; ++d) {
        const double want = 0.5 * x[t * dim + d] + reference_grid_code(grid, dim, token, d);
        ASSERT_NEAR(out[t * dim + d], want, 1e-13) << token << "," << d;
      }
    }
  }
}

TEST(AddPositionalKernel, GridCodesOfAHugeGridAreEvaluatedInPlace) {
  // Axis rows of 2 * 3,000,000 values exceed the factorised tables' limit.
  pk::GridCode grid;
  grid.axis_count = 2;
  grid.extra_tokens = 1;
  grid.sizes[0] = 2;
  grid.sizes[1] = 3000000;
  grid.segment_axes[0] = 1;
  grid.segment_axes[1] = 0;
  grid.segment_ends[0] = 2;
  grid.segment_ends[1] = 4;
  ASSERT_GT(2 * grid.sizes[1], pk::kMaxGridRowValues);
  pk::PositionCodeOptions options;
  options.layout = pk::Layout::kConcat;
  const int64_t dim = 4;
  std::vector<int64_t> positions = {0, 1, 2999999, 3000001, 5999999, 6000000, 123457};
  const int64_t seq = static_cast<int64_t>(positions.size());
  std::vector<float> out(static_cast<size_t>(seq * dim), NAN);
  const auto codes = pk::make_channel_codes(options, dim, grid);
  pk::AddPositionalParams params;
  params.shape.seq_len = seq;
  params.shape.dim = dim;
  params.out = {out.data(), {}, dim, 1};
  params.positions = {positions.data(), pk::IndexType::kInt64, {}, 1};
  params.combine = pk::Combine::kPositionOnly;
  params.source.code = options;
  params.source.channels = codes.data();
  params.source.grid = grid;
  pk::add_positional_cpu(params, pk::serial_for);
  for (int64_t t = 0; t < seq; ++t) {
    for (int64_t d = 0; d < dim; ++d) {
      EXPECT_NEAR(out[t * dim + d], reference_grid_code(grid, dim, positions[t], d), 2e-6)
          << positions[t] << "," << d;
    }
  }
}

TEST(AddPositionalKernel, TableBackwardMatchesReference) {
  for (pk::Combine combine : {pk::Combine::kAdd, pk::Combine::kMul}) {
    const int64_t batch = 3, seq = 6, dim = 70, rows = 5;
    std::mt19937 rng(11);
    std::normal_distribution<double> normal;
    std::vector<double> grad(batch * seq * dim), x(batch * seq * dim);
    for (auto& v : grad) v = normal(rng);
    for (auto& v : x) v = normal(rng);
    std::vector<int64_t> positions(batch * seq);
    for (auto& v : positions) v = static_cast<int64_t>(rng() % rows);
    // The backward reads the gradient as x and writes no rows.
    pk::AddPositionalParams params = contiguous_params(grad, grad, batch, seq, dim);
    pk::StridedRows input = params.x;
    input.data = x.data();
    params.positions.data = positions.data();
    params.positions.batch_strides[0] = seq;
    params.positions.seq_stride = 1;
    params.combine = combine;
    params.scale = 0.5;
    params.dropout = pk::make_dropout(0.3, true, 5);
    params.source.kind = pk::PositionKind::kLearned;
    params.source.table_rows = rows;
    std::vector<double> got(rows * dim, std::nan("")), want(rows * dim, 0.0);
    pk::add_positional_table_backward_cpu(params, input, got.data(), rows, four_threads);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < seq; ++t) {
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t i = (b * seq + t) * dim + d;
          double g = grad[i] * reference_dropout_multiplier(5, i, 0.3);
          if (combine == pk::Combine::kMul) g *= 0.5 * x[i];
          want[positions[b * seq + t] * dim + d] += g;
        }
      }
    }
    for (size_t k = 0; k < got.size(); ++k) ASSERT_NEAR(got[k], want[k], 1e-12) << k;
  }
}

// One batch row and two, combined an anchor's span at a time (no dropout): the same bits, and
// within the exact-angle contract of the float64 reference (AnchorSpansGiveTheRowPathsBits
// compares the spans with the row paths of a dropout call). D = 600 ends in a partial 256-channel
// chunk; odd D = 71 has a spare channel.
TEST(AddPositionalKernel, OneBatchRowMatchesTheBatchedPathAndTheReference) {
  for (const int64_t dim : {int64_t{600}, int64_t{71}}) {
    for (const pk::Layout layout : {pk::Layout::kInterleaved, pk::Layout::kConcat}) {
      const int64_t seq = 300, offset = (int64_t{1} << 24) - 150;
      std::vector<float> x(2 * seq * dim);
      std::mt19937 rng(static_cast<unsigned>(dim));
      std::normal_distribution<float> normal;
      for (auto& v : x) v = normal(rng);
      pk::PositionCodeOptions options;
      options.layout = layout;
      const auto codes = pk::make_channel_codes(options, dim);
      auto run = [&](int64_t batch) {
        std::vector<float> out(batch * seq * dim, std::nanf(""));
        pk::AddPositionalParams params = contiguous_params(x, out, batch, seq, dim, codes);
        params.offset = offset;
        params.scale = 1.75;
        params.source.code = options;
        pk::add_positional_cpu(params, four_threads);
        return out;
      };
      const std::vector<float> one = run(1), two = run(2);
      ASSERT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)))
          << "dim " << dim;
      for (int64_t t = 0; t < seq; ++t) {
        for (int64_t d = 0; d < dim; ++d) {
          const double want =
              1.75 * x[t * dim + d] + reference_code(pk::PositionKind::kSinusoidal,
                                                     pk::Convention::kVaswani, layout, 10000.0, dim,
                                                     static_cast<double>(offset + t), d);
          // The code within 2e-6, plus float's rounding of the sum.
          ASSERT_NEAR(one[t * dim + d], want, 2e-6 + 1.2e-7 * std::fabs(want))
              << "dim " << dim << " t " << t << " d " << d;
        }
      }
    }
  }
}

// bfloat16 and float16 rows of one batch row against two, bit for bit: add with dropout (one
// row's fused walk from anchors against code rows written first), mul and the code alone (anchor
// spans in both); widths
// with a 256-channel chunk's tail and an odd spare channel; and the code within 2e-6 plus the
// type's rounding of the reference.
template <typename scalar_t>
void check_16bit_one_row_against_batched(double rounding) {
  for (const int64_t dim : {int64_t{600}, int64_t{71}}) {
    for (const pk::Combine combine :
         {pk::Combine::kAdd, pk::Combine::kMul, pk::Combine::kPositionOnly}) {
      const int64_t seq = 300, offset = 5000 - 37;
      std::vector<scalar_t> x(2 * seq * dim);
      std::mt19937 rng(static_cast<unsigned>(dim + static_cast<int>(combine)));
      std::normal_distribution<float> normal;
      for (auto& v : x) pk::store_from_acc(&v, normal(rng));
      const auto codes = pk::make_channel_codes({}, dim);
      auto run = [&](int64_t batch) {
        std::vector<scalar_t> out(batch * seq * dim, scalar_t{0x7fc0});  // NaN in both types
        pk::AddPositionalParams params = contiguous_params(x, out, batch, seq, dim, codes);
        if (combine == pk::Combine::kPositionOnly) params.x = {};  // as positional_encoding
        params.offset = offset;
        params.scale = 1.75;
        params.combine = combine;
        if (combine == pk::Combine::kAdd) params.dropout = pk::make_dropout(0.2, true, 11);
        pk::add_positional_cpu(params, four_threads);
        return out;
      };
      const std::vector<scalar_t> one = run(1), two = run(2);
      ASSERT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(scalar_t)))
          << "dim " << dim << " combine " << static_cast<int>(combine);
      if (combine != pk::Combine::kPositionOnly) continue;
      for (int64_t t = 0; t < seq; ++t) {
        for (int64_t d = 0; d < dim; ++d) {
          const double want = reference_code(pk::PositionKind::kSinusoidal,
                                             pk::Convention::kVaswani, pk::Layout::kInterleaved,
                                             10000.0, dim, static_cast<double>(offset + t), d);
          ASSERT_NEAR(pk::load_as_acc(&one[t * dim + d]), want, 2e-6 + rounding)
              << "dim " << dim << " t " << t << " d " << d;
        }
      }
    }
  }
}

TEST(AddPositionalKernel, OneBatchRowOf16BitTypesMatchesTheBatchedPath) {
  check_16bit_one_row_against_batched<pk::BFloat16>(4e-3);
  check_16bit_one_row_against_batched<pk::Float16>(5e-4);
}

// A code on a patch grid with kept arrays: its grid rows are made by the first call and reused
// by the next, with the same bits as rows made per call.
TEST(AddPositionalKernel, KeptGridRowsGiveTheSameBits) {
  const pk::GridCode grid = test_grid();
  const int64_t dim = 38, batch = 3, seq = pk::grid_token_count(grid);
  std::vector<float> x(batch * seq * dim);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  pk::PositionCodeOptions options;
  options.layout = pk::Layout::kConcat;
  const auto codes = pk::make_channel_codes(options, dim, grid);
  const pk::ChannelArrays arrays = pk::make_channel_arrays(codes);
  auto run = [&](const pk::ChannelArrays* kept) {
    std::vector<float> out(batch * seq * dim, std::nanf(""));
    pk::AddPositionalParams params = contiguous_params(x, out, batch, seq, dim, codes);
    params.source.code = options;
    params.source.grid = grid;
    params.source.arrays = kept;
    pk::add_positional_cpu(params, four_threads);
    return out;
  };
  const std::vector<float> per_call = run(nullptr), first = run(&arrays), again = run(&arrays);
  EXPECT_EQ(0, std::memcmp(per_call.data(), first.data(), first.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(per_call.data(), again.data(), again.size() * sizeof(float)));
  for (const float v : again) ASSERT_FALSE(std::isnan(v));
}

// Channel codes given as the binding's kept arrays give the same bits as codes laid out per
// call for a long call (anchors and turn tables), in every computed kind.
TEST(AddPositionalKernel, KeptChannelArraysGiveTheSameBits) {
  for (const pk::PositionKind kind : {pk::PositionKind::kSinusoidal, pk::PositionKind::kLinear,
                                      pk::PositionKind::kDamped, pk::PositionKind::kCosine}) {
    const int64_t dim = 70, batch = 2, seq = 300;
    std::vector<float> x(batch * seq * dim);
    std::mt19937 rng(static_cast<unsigned>(seq + static_cast<int>(kind)));
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
    pk::PositionCodeOptions options;
    options.kind = kind;
    const auto codes = pk::make_channel_codes(options, dim);
    const pk::ChannelArrays arrays = pk::make_channel_arrays(codes);
    auto run = [&](const pk::ChannelArrays* kept) {
      std::vector<float> out(batch * seq * dim, std::nanf(""));
      pk::AddPositionalParams params = contiguous_params(x, out, batch, seq, dim, codes);
      params.offset = 3000;
      params.source.kind = kind;
      params.source.code = options;
      params.source.arrays = kept;
      pk::add_positional_cpu(params, four_threads);
      return out;
    };
    const std::vector<float> per_call = run(nullptr), kept = run(&arrays);
    EXPECT_EQ(0, std::memcmp(per_call.data(), kept.data(), kept.size() * sizeof(float)))
        << "kind " << static_cast<int>(kind);
    EXPECT_FALSE(std::isnan(kept[0]));
  }
}

// With the binding's kept arrays, a decoding step (T = 1) starts from a kept anchor, and its row
// is the long call's row of the same position bit for bit, whichever steps ran before (in
// order, as decoding runs them, or shuffled, so that most find no kept anchor), for one batch
// row (the rotation fused into the combine) and several (code rows written first).
TEST(AddPositionalKernel, DecodingStepsGiveTheLongCallsRows) {
  for (const pk::PositionKind kind : {pk::PositionKind::kSinusoidal, pk::PositionKind::kLinear,
                                      pk::PositionKind::kDamped, pk::PositionKind::kCosine}) {
    for (const int64_t batch : {int64_t{1}, int64_t{3}}) {
      const int64_t dim = 70, seq = 300, first = 3000 - 37;
      std::vector<float> x(batch * seq * dim);
      std::mt19937 rng(static_cast<unsigned>(batch + static_cast<int>(kind)));
      std::normal_distribution<float> normal;
      for (auto& v : x) v = normal(rng);
      pk::PositionCodeOptions options;
      options.kind = kind;
      const auto codes = pk::make_channel_codes(options, dim);
      const pk::ChannelArrays long_arrays = pk::make_channel_arrays(codes);
      std::vector<float> long_out(batch * seq * dim, std::nanf(""));
      pk::AddPositionalParams params = contiguous_params(x, long_out, batch, seq, dim, codes);
      params.offset = first;
      params.source.kind = kind;
      params.source.code = options;
      params.source.arrays = &long_arrays;
      pk::add_positional_cpu(params, four_threads);
      std::vector<int64_t> steps(seq);
      std::iota(steps.begin(), steps.end(), 0);
      for (const bool shuffled : {false, true}) {
        if (shuffled) std::shuffle(steps.begin(), steps.end(), rng);
        const pk::ChannelArrays arrays = pk::make_channel_arrays(codes);  // nothing kept yet
        for (const int64_t t : steps) {
          std::vector<float> x_step(batch * dim), out(batch * dim, std::nanf(""));
          for (int64_t b = 0; b < batch; ++b) {
            std::copy_n(x.begin() + (b * seq + t) * dim, dim, x_step.begin() + b * dim);
          }
          pk::AddPositionalParams step = contiguous_params(x_step, out, batch, 1, dim, codes);
          step.offset = first + t;
          step.source.kind = kind;
          step.source.code = options;
          step.source.arrays = &arrays;
          pk::add_positional_cpu(step, four_threads);
          for (int64_t b = 0; b < batch; ++b) {
            ASSERT_EQ(0, std::memcmp(out.data() + b * dim, long_out.data() + (b * seq + t) * dim,
                                     dim * sizeof(float)))
                << "kind " << static_cast<int>(kind) << " batch " << batch << " position "
                << first + t << (shuffled ? " (shuffled)" : " (in order)");
          }
        }
      }
    }
  }
}

#if defined(__linux__)
// add_positional and rotary populate their fresh outputs as they go: the same values as into
// written memory, and no page past the output's last byte (or before its first) is touched.
// Outputs of 1.2 MiB and more take several PopulateAhead steps; 4 threads split them.
TEST(AddPositionalKernel, FreshOutputsArePopulatedOnlyWhereWritten) {
  const int64_t page = FreshPages::page_size();
  const int64_t seq = 300, dim = 1040;  // rows of 4160 bytes: not a whole number of pages
  for (const int64_t batch : {int64_t{1}, int64_t{3}}) {
    const int64_t count = batch * seq * dim;
    std::vector<float> x(static_cast<size_t>(count));
    std::mt19937 rng(static_cast<unsigned>(batch));
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
    const auto codes = pk::make_channel_codes({}, dim);
    std::vector<float> written(static_cast<size_t>(count), std::nanf(""));
    pk::AddPositionalParams params = contiguous_params(x, written, batch, seq, dim, codes);
    params.offset = 5;
    pk::add_positional_cpu(params, four_threads);
    // The output starts 64 bytes into page 1 and is followed by 4 spare pages.
    const int64_t bytes = count * static_cast<int64_t>(sizeof(float));
    FreshPages memory(1 + (64 + bytes + page - 1) / page + 4);
    ASSERT_TRUE(memory.ok());
    float* out = reinterpret_cast<float*>(memory.page(1) + 64);
    params.out.data = out;
    pk::add_positional_cpu(params, four_threads);
    ASSERT_EQ(0, std::memcmp(written.data(), out, static_cast<size_t>(bytes))) << "batch " << batch;
    EXPECT_EQ(page_range(1, (page + 64 + bytes + page - 1) / page), memory.resident_pages())
        << "batch " << batch;
  }
}
#endif  // __linux__

// Negative positions (relative ones, as Transformer-XL's and Conformer's rows): every computed
// kind against the float64 definitions, on runs that count down through 0 (Conformer's order),
// count up through 0 (a walk must not start at a negative anchor), start negative and turn
// positive inside a block of shared rows, and reach -(2^24 - 1); one batch row and several.
TEST(AddPositionalKernel, NegativePositionsMatchReference) {
  const int64_t seq = 600, dim = 70;
  std::vector<std::vector<int64_t>> runs(4, std::vector<int64_t>(seq));
  for (int64_t t = 0; t < seq; ++t) {
    runs[0][t] = 299 - t;                      // 299 .. -300
    runs[1][t] = t - 300;                      // -300 .. 299
    runs[2][t] = t - 5;                        // -5 .. 594: blocks start negative, then walk
    runs[3][t] = -(int64_t{1} << 24) + 1 + t;  // near -2^24
  }
  std::vector<float> x(2 * seq * dim);
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  for (const pk::PositionKind kind : {pk::PositionKind::kSinusoidal, pk::PositionKind::kLinear,
                                      pk::PositionKind::kDamped, pk::PositionKind::kCosine}) {
    pk::PositionCodeOptions options;
    options.kind = kind;
    options.base = kind == pk::PositionKind::kSinusoidal ? 10000.0 : 100.0;
    const auto codes = pk::make_channel_codes(options, dim);
    for (size_t r = 0; r < runs.size(); ++r) {
      for (const int64_t batch : {int64_t{1}, int64_t{2}}) {
        SCOPED_TRACE(testing::Message()
                     << "kind " << static_cast<int>(kind) << " run " << r << " batch " << batch);
        std::vector<float> out(batch * seq * dim, std::nanf(""));
        pk::AddPositionalParams params = contiguous_params(x, out, batch, seq, dim, codes);
        params.positions = {runs[r].data(), pk::IndexType::kInt64, {0}, 1};  // shared by rows
        params.scale = 0.5;
        params.source.kind = kind;
        params.source.code = options;
        pk::add_positional_cpu(params, four_threads);
        for (int64_t b = 0; b < batch; ++b) {
          for (int64_t t = 0; t < seq; ++t) {
            for (int64_t d = 0; d < dim; ++d) {
              const int64_t i = (b * seq + t) * dim + d;
              const double want =
                  0.5 * x[i] + reference_code(kind, pk::Convention::kVaswani,
                                              pk::Layout::kInterleaved, options.base, dim,
                                              static_cast<double>(runs[r][t]), d);
              ASSERT_NEAR(out[i], want, 2e-6 + 1.2e-7 * std::fabs(want)) << t << "," << d;
            }
          }
        }
      }
    }
  }
}

// Without dropout, rows whose codes walk from anchors go to the combine an anchor's span at a
// time (RowSpan); with dropout, row by row (one batch row) or from code rows written first
// (several). Dropout of p = 0.5 multiplies by exactly 2, so each element of a dropout call is 0
// or exactly twice the span path's (float16 subnormals aside): the same bits through either path,
// for float32 (channel-pair turns), float64, bfloat16 and float16, the interleaved and concatenated
// layouts (the latter without pair turns), add, mul and the code alone, x with strided rows,
// offsets whose first anchor span is partial, and any split into threads; and within the
// exact-angle contract.
template <typename scalar_t>
void check_spans_against_the_row_paths(double rounding) {
  const int64_t seq = 75, batch = 3;
  for (const int64_t dim : {int64_t{600}, int64_t{71}, int64_t{16}}) {
    for (const pk::Layout layout : {pk::Layout::kInterleaved, pk::Layout::kConcat}) {
      for (const pk::Combine combine :
           {pk::Combine::kAdd, pk::Combine::kMul, pk::Combine::kPositionOnly}) {
        const int64_t offset = combine == pk::Combine::kMul ? 0 : (int64_t{1} << 24) - 37;
        SCOPED_TRACE(testing::Message() << "dim " << dim << " layout " << static_cast<int>(layout)
                                        << " combine " << static_cast<int>(combine));
        // x stored [T, B, D + 3]: strided rows, padded channels.
        const int64_t padded = dim + 3;
        std::vector<scalar_t> x_storage(seq * batch * padded);
        std::mt19937 rng(static_cast<unsigned>(dim + 5 * static_cast<int>(combine)));
        std::normal_distribution<float> normal;
        for (auto& v : x_storage)
          pk::store_from_acc(&v, static_cast<pk::acc_t<scalar_t>>(normal(rng)));
        pk::PositionCodeOptions options;
        options.layout = layout;
        const auto codes = pk::make_channel_codes(options, dim);
        auto run = [&](int64_t rows_of_batch, double p_drop, const pk::ParallelFor& pf) {
          std::vector<scalar_t> out(rows_of_batch * seq * dim);  // poisoned: NaN
          for (auto& v : out)
            pk::store_from_acc(&v, std::numeric_limits<pk::acc_t<scalar_t>>::quiet_NaN());
          pk::AddPositionalParams params =
              contiguous_params(x_storage, out, rows_of_batch, seq, dim, codes);
          params.x.batch_strides[0] = padded;
          params.x.seq_stride = batch * padded;
          if (combine == pk::Combine::kPositionOnly) params.x = {};
          params.offset = offset;
          params.scale = 1.75;
          params.combine = combine;
          params.source.code = options;
          params.dropout = pk::make_dropout(p_drop, true, 77);
          pk::add_positional_cpu(params, pf);
          return out;
        };
        for (const int64_t rows_of_batch : {int64_t{1}, batch}) {
          const std::vector<scalar_t> spans = run(rows_of_batch, 0.0, serial_chunks_of_one);
          const std::vector<scalar_t> split = run(rows_of_batch, 0.0, four_threads);
          ASSERT_EQ(0, std::memcmp(spans.data(), split.data(), spans.size() * sizeof(scalar_t)));
          const std::vector<scalar_t> dropped = run(rows_of_batch, 0.5, four_threads);
          int64_t kept = 0;
          for (size_t i = 0; i < spans.size(); ++i) {
            const auto twice = static_cast<pk::acc_t<scalar_t>>(2) * pk::load_as_acc(&spans[i]);
            const auto got = pk::load_as_acc(&dropped[i]);
            // A float16 subnormal rounds by a fixed step, so doubling it is not exact.
            if (std::is_same_v<scalar_t, pk::Float16> && std::fabs(twice) < 0x1p-13) continue;
            ASSERT_TRUE(got == 0 || std::memcmp(&got, &twice, sizeof(got)) == 0)
                << "rows " << rows_of_batch << " element " << i << ": " << got << " vs 2 x "
                << pk::load_as_acc(&spans[i]);
            kept += got != 0;
          }
          EXPECT_GT(kept, static_cast<int64_t>(spans.size()) / 4);
          for (int64_t b = 0; b < rows_of_batch; ++b) {
            for (int64_t t = 0; t < seq; ++t) {
              for (int64_t d = 0; d < dim; ++d) {
                const double code =
                    reference_code(pk::PositionKind::kSinusoidal, pk::Convention::kVaswani, layout,
                                   10000.0, dim, static_cast<double>(offset + t), d);
                const double x = pk::load_as_acc(&x_storage[t * batch * padded + b * padded + d]);
                const double want = combine == pk::Combine::kAdd   ? 1.75 * x + code
                                    : combine == pk::Combine::kMul ? 1.75 * x * code
                                                                   : code;
                ASSERT_NEAR(pk::load_as_acc(&spans[(b * seq + t) * dim + d]), want,
                            2e-6 * (combine == pk::Combine::kMul ? 1.75 * std::fabs(x) : 1.0) +
                                rounding * std::max(1.0, std::fabs(want)))
                    << "b " << b << " t " << t << " d " << d;
              }
            }
          }
        }
      }
    }
  }
}

TEST(AddPositionalKernel, AnchorSpansGiveTheRowPathsBits) {
  check_spans_against_the_row_paths<float>(1.2e-7);
  check_spans_against_the_row_paths<double>(1e-15);
  check_spans_against_the_row_paths<pk::BFloat16>(8e-3);
  check_spans_against_the_row_paths<pk::Float16>(1e-3);
}
