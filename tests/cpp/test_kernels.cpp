// kernels/ alone, without torch: the CPU kernels against scalar double references written here
// from the published formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#endif

#include "angle.h"
#include "common.h"
#include "grid_case.h"
#include "philox.h"
#include "position_code.h"
#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace pk = posenc::kernels;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// PE(pos)[j] from the definitions, in double.
double reference_code(pk::PositionKind kind, pk::Convention convention, pk::Layout layout,
                      double base, int64_t dim, double pos, int64_t j) {
  const double p = pos;
  const int64_t half = dim / 2;
  switch (kind) {
    case pk::PositionKind::kSinusoidal: {
      if (j >= 2 * half) return 0.0;
      const int64_t i = layout == pk::Layout::kInterleaved ? j / 2 : (j < half ? j : j - half);
      const bool is_cos = layout == pk::Layout::kInterleaved ? (j % 2 == 1) : (j >= half);
      const double w = convention == pk::Convention::kVaswani
                           ? std::pow(base, -2.0 * i / dim)
                           : std::exp(-std::log(base) * i / std::max<int64_t>(half - 1, 1));
      return is_cos ? std::cos(p * w) : std::sin(p * w);
    }
    case pk::PositionKind::kLinear: {
      const int64_t i = j / 2;
      const double a = std::pow(base, -static_cast<double>(i));
      return j % 2 == 0 ? a * std::cos(p * M_PI / base) : a * std::sin(p * M_PI / base);
    }
    case pk::PositionKind::kDamped: {
      const int64_t i = j / 2;
      const double a = 1.0 / std::sqrt(std::pow(2.0, i + 1));
      return j % 2 == 0 ? a * std::cos(p / base) : a * std::sin(p / base);
    }
    case pk::PositionKind::kCosine:
      return std::cos(p * std::pow(base, -2.0 * j / dim));
    case pk::PositionKind::kLearned:
      break;
  }
  return kNaN;
}

// The documented mask: 16-bit draw (e % 2 half of word (e % 8) / 2 of Philox(e / 8)) below
// round((1 - p) * 2^16); kept values scaled by 2^16 / threshold. Returns the multiplier.
double reference_dropout_multiplier(uint64_t seed, uint64_t index, double p) {
  const uint32_t word = pk::philox4x32_10(index / 8, seed).v[(index % 8) / 2];
  const uint32_t draw = (index % 2 == 0) ? (word & 0xffffu) : (word >> 16);
  const double threshold = std::floor((1.0 - p) * 65536.0 + 0.5);
  return draw < threshold ? 65536.0 / threshold : 0.0;
}

void serial_chunks_of_one(int64_t begin, int64_t end, int64_t,
                          const std::function<void(int64_t, int64_t)>& body) {
  for (int64_t i = begin; i < end; ++i) body(i, i + 1);
}

// Splits the range over 4 real threads.
void four_threads(int64_t begin, int64_t end, int64_t,
                  const std::function<void(int64_t, int64_t)>& body) {
  std::vector<std::thread> threads;
  const int64_t n = end - begin;
  for (int k = 0; k < 4; ++k) {
    const int64_t b = begin + n * k / 4, e = begin + n * (k + 1) / 4;
    if (b < e) threads.emplace_back([&body, b, e] { body(b, e); });
  }
  for (auto& t : threads) t.join();
}

// add_positional's parameters for contiguous float32 or float64 x and out of [batch, seq, dim]
// and the default sinusoidal code (channels from make_channel_codes; none for a learned table).
template <typename scalar_t>
pk::AddPositionalParams contiguous_params(const std::vector<scalar_t>& x,
                                          std::vector<scalar_t>& out, int64_t batch, int64_t seq,
                                          int64_t dim,
                                          const std::vector<pk::ChannelCode>& channels = {}) {
  static_assert(std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>);
  pk::AddPositionalParams params;
  params.dtype = std::is_same_v<scalar_t, double> ? pk::DType::kFloat64 : pk::DType::kFloat32;
  params.shape.batch_ndim = 1;
  params.shape.batch_sizes[0] = batch;
  params.shape.seq_len = seq;
  params.shape.dim = dim;
  params.x.data = x.data();
  params.x.batch_strides[0] = seq * dim;
  params.x.seq_stride = dim;
  params.out = params.x;
  params.out.data = out.data();
  params.source.channels = channels.data();
  return params;
}

// rotary's parameters for one operand of `heads` heads of `head_dim` channels, the first
// `rotary_dim` rotated at `frequencies`, attention factor 1; its pointers and strides are the
// caller's.
pk::RotaryParams one_operand_rotary(pk::DType dtype, int64_t batch, int64_t seq, int64_t heads,
                                    int64_t head_dim, int64_t rotary_dim,
                                    const std::vector<pk::TurnFrequency>& frequencies) {
  pk::RotaryParams params;
  params.dtype = dtype;
  params.batch = batch;
  params.seq_len = seq;
  params.head_dim = head_dim;
  params.rotary_dim = rotary_dim;
  params.attention_factor = 1.0;
  params.frequencies = frequencies.data();
  params.operand_count = 1;
  params.operands[0].heads = heads;
  return params;
}

struct Case {
  pk::PositionKind kind;
  pk::Convention convention;
  pk::Layout layout;
  pk::Combine combine;
};

}  // namespace

TEST(Philox, KnownAnswers) {
  // Random123's published known-answer vectors for philox4x32_10.
  auto zero = pk::philox4x32_10(pk::Philox4{{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  auto ones = pk::philox4x32_10(
      pk::Philox4{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu,
      0xffffffffu);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  auto pi = pk::philox4x32_10(pk::Philox4{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                              0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(HalfTypes, RoundTripAndRounding) {
  const float values[] = {0.0f, -0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 6.1035156e-05f,
                          5.9604645e-08f, 1e-3f, -123.456f};
  for (float v : values) {
    const float h = pk::float16_to_float(pk::float_to_float16(v));
    EXPECT_NEAR(h, v, std::fabs(v) * 1e-3 + 1e-7) << v;
    const float b = pk::bfloat16_to_float(pk::float_to_bfloat16(v));
    EXPECT_NEAR(b, v, std::fabs(v) * 8e-3 + 1e-30) << v;
  }
  EXPECT_EQ(pk::float_to_float16(1.0f).bits, 0x3c00);
  EXPECT_EQ(pk::float_to_float16(65520.0f).bits, 0x7c00);  // rounds to infinity
  EXPECT_EQ(pk::float_to_float16(1.0f + 1.0f / 2048.0f).bits, 0x3c00);  // tie to even
  EXPECT_EQ(pk::float_to_bfloat16(1.0f).bits, 0x3f80);
  EXPECT_TRUE(std::isnan(pk::float16_to_float(pk::float_to_float16(NAN))));
  EXPECT_TRUE(std::isinf(pk::float16_to_float(pk::Float16{0x7c00})));
}

TEST(Angle, FloatSinCosWithin2e6UpTo2Pow24) {
  std::mt19937_64 rng(7);
  const int64_t dim = 512;
  const pk::PositionCodeOptions options;
  const auto codes = pk::make_channel_codes(options, dim);
  double worst = 0.0;
  for (int k = 0; k < 2000; ++k) {
    const int64_t pos = static_cast<int64_t>(rng() % (1u << 24));
    const int64_t j = static_cast<int64_t>(rng() % dim);
    const float got = pk::evaluate_channel<float>(codes[j], pos);
    const double want = reference_code(options.kind, options.convention, options.layout,
                                       options.base, dim, pos, j);
    worst = std::max(worst, std::fabs(got - want));
  }
  EXPECT_LT(worst, 2e-6);
  // The edge: the largest positions below 2^24, fastest channel.
  for (int64_t pos = (1 << 24) - 64; pos < (1 << 24); ++pos) {
    EXPECT_NEAR(pk::evaluate_channel<float>(codes[0], pos), std::sin(static_cast<double>(pos)),
                2e-6);
    EXPECT_NEAR(pk::evaluate_channel<float>(codes[1], pos), std::cos(static_cast<double>(pos)),
                2e-6);
  }
}

TEST(Angle, DoubleSinCosNearlyExact) {
  const auto codes = pk::make_channel_codes(pk::PositionCodeOptions{}, 64);
  for (int64_t pos : {0LL, 1LL, 1000LL, 123456789LL, (1LL << 30) + 3}) {
    // The reference's own rounding of pos * w is up to pos * 2^-53 radians.
    const double tolerance = 1e-15 + static_cast<double>(pos) * 2.3e-16;
    EXPECT_NEAR(pk::evaluate_channel<double>(codes[0], pos), std::sin(static_cast<double>(pos)),
                tolerance);
    EXPECT_NEAR(pk::evaluate_channel<double>(codes[1], pos), std::cos(static_cast<double>(pos)),
                tolerance);
  }
}

// At whole quarter turns the small angle is 0, so sin and cos are the quadrant coefficients
// themselves: they must be exactly 0 or +-1 (products with rounded reciprocals, not divisions).
template <typename acc_t>
void expect_exact_quadrants() {
  const acc_t expected_sin[] = {0, -1, 0, 1, 0};  // q = -2 .. 2
  const acc_t expected_cos[] = {-1, 0, 1, 0, -1};
  for (int q = -2; q <= 2; ++q) {
    const pk::SinCos<acc_t> sc = pk::sincos_turns<acc_t>(0.25 * q);
    EXPECT_EQ(sc.sin, expected_sin[q + 2]) << "q = " << q;
    EXPECT_EQ(sc.cos, expected_cos[q + 2]) << "q = " << q;
  }
}

TEST(Angle, QuarterTurnsAreExact) {
  expect_exact_quadrants<float>();
  expect_exact_quadrants<double>();
}

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
              const double pe = c.kind == pk::PositionKind::kLearned
                                    ? table[pos * dim + d]
                                    : reference_code(c.kind, c.convention, c.layout, 100.0, dim,
                                                     pos, d);
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

INSTANTIATE_TEST_SUITE_P(
    AllKinds, AddPositionalKernel,
    ::testing::Values(
        Case{pk::PositionKind::kSinusoidal, pk::Convention::kVaswani, pk::Layout::kInterleaved,
             pk::Combine::kAdd},
        Case{pk::PositionKind::kSinusoidal, pk::Convention::kVaswani, pk::Layout::kConcat,
             pk::Combine::kMul},
        Case{pk::PositionKind::kSinusoidal, pk::Convention::kTensor2Tensor,
             pk::Layout::kInterleaved, pk::Combine::kMul},
        Case{pk::PositionKind::kSinusoidal, pk::Convention::kTensor2Tensor, pk::Layout::kConcat,
             pk::Combine::kAdd},
        Case{pk::PositionKind::kLinear, pk::Convention::kVaswani, pk::Layout::kInterleaved,
             pk::Combine::kAdd},
        Case{pk::PositionKind::kDamped, pk::Convention::kVaswani, pk::Layout::kInterleaved,
             pk::Combine::kMul},
        Case{pk::PositionKind::kCosine, pk::Convention::kVaswani, pk::Layout::kInterleaved,
             pk::Combine::kAdd},
        Case{pk::PositionKind::kLearned, pk::Convention::kVaswani, pk::Layout::kInterleaved,
             pk::Combine::kAdd},
        Case{pk::PositionKind::kLearned, pk::Convention::kVaswani, pk::Layout::kInterleaved,
             pk::Combine::kMul}));

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
    std::vector<double> got(rows * dim, 0.0), want(rows * dim, 0.0);
    pk::add_positional_table_backward_cpu(params, input, got.data(), four_threads);
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

// ---- rotary -------------------------------------------------------------------------------------

TEST(RotaryKernel, MatchesReferenceForwardAndInverse) {
  // q: [B=2, S=5, H=3, D=10] stored as bhsd (strided), rotary_dim 6, offsets per batch.
  const int64_t B = 2, S = 5, H = 3, D = 10, r = 6;
  for (bool interleaved : {false, true}) {
    std::vector<double> q(B * H * S * D), out(B * S * H * D, kNaN), back(B * S * H * D, kNaN);
    std::mt19937 rng(5);
    std::normal_distribution<double> normal;
    for (auto& v : q) v = normal(rng);
    const std::vector<int64_t> offsets = {3, 1000};
    const auto inv_freq = pk::default_inv_freq(r, 10000.0);
    const auto frequencies = pk::rotary_turn_frequencies(inv_freq);
    pk::RotaryParams params = one_operand_rotary(pk::DType::kFloat64, B, S, H, D, r, frequencies);
    params.interleaved = interleaved;
    params.attention_factor = 1.25;
    params.offsets = offsets.data();
    pk::RotaryOperand& op = params.operands[0];
    op.in = q.data();
    op.out = out.data();
    const int64_t in_strides[4] = {H * S * D, D, S * D, 1};  // bhsd memory, bshd logical
    const int64_t out_strides[4] = {S * H * D, H * D, D, 1};
    for (int i = 0; i < 4; ++i) {
      op.in_strides[i] = in_strides[i];
      op.out_strides[i] = out_strides[i];
    }
    pk::rotary_cpu(params, four_threads);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t h = 0; h < H; ++h) {
          const double* x = q.data() + b * in_strides[0] + s * in_strides[1] + h * in_strides[2];
          const double* y = out.data() + b * out_strides[0] + s * out_strides[1] + h * D;
          for (int64_t i = 0; i < r / 2; ++i) {
            const int64_t first = interleaved ? 2 * i : i;
            const int64_t second = interleaved ? 2 * i + 1 : i + r / 2;
            const double angle = static_cast<double>(offsets[b] + s) * inv_freq[i];
            const double c = 1.25 * std::cos(angle), sn = 1.25 * std::sin(angle);
            ASSERT_NEAR(y[first], x[first] * c - x[second] * sn, 1e-12);
            ASSERT_NEAR(y[second], x[second] * c + x[first] * sn, 1e-12);
          }
          for (int64_t d = r; d < D; ++d) ASSERT_EQ(y[d], x[d]);
        }
      }
    }
    // The inverse rotation with factor 1/1.25 undoes the forward.
    pk::RotaryParams inverse = params;
    inverse.inverse = true;
    inverse.attention_factor = 1.0 / 1.25;
    inverse.operands[0].in = out.data();
    inverse.operands[0].out = back.data();
    for (int i = 0; i < 4; ++i) inverse.operands[0].in_strides[i] = out_strides[i];
    for (int i = 0; i < 4; ++i) inverse.operands[0].out_strides[i] = in_strides[i];
    pk::rotary_cpu(inverse, pk::serial_for);
    for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(back[i], q[i], 1e-12);
  }
}

// Gemma's proportional rope: exponents over the whole dim, the pairs past the rotated share at
// frequency 0; the other types rotate int(dim * partial_rotary_factor) channels.
TEST(RopeScaling, PartialRotaryFactor) {
  pk::RopeScaling scaling;
  scaling.rope_type = pk::RopeType::kProportional;
  scaling.partial_rotary_factor = 0.5;
  pk::RopeFrequencies result;
  ASSERT_EQ(pk::compute_rope_frequencies(8, scaling, result), "");
  ASSERT_EQ(result.inv_freq.size(), 4u);
  EXPECT_EQ(result.inv_freq[0], 1.0);
  EXPECT_EQ(result.inv_freq[1], pk::default_rotary_frequency(1, 8, 10000.0));
  EXPECT_EQ(result.inv_freq[2], 0.0);
  EXPECT_EQ(result.inv_freq[3], 0.0);
  scaling.rope_type = pk::RopeType::kDefault;
  scaling.partial_rotary_factor = 0.25;
  ASSERT_EQ(pk::compute_rope_frequencies(16, scaling, result), "");
  ASSERT_EQ(result.inv_freq.size(), 2u);
  EXPECT_EQ(result.inv_freq[1], pk::default_rotary_frequency(1, 4, 10000.0));
  scaling.partial_rotary_factor = 1.5;
  EXPECT_NE(pk::check_rope_scaling(16, scaling).find("partial_rotary_factor"), std::string::npos);
  scaling.partial_rotary_factor = 0.3;  // int(16 * 0.3) = 4
  EXPECT_EQ(pk::check_rope_scaling(16, scaling), "");
  scaling.partial_rotary_factor = 0.2;  // int(16 * 0.2) = 3: odd
  EXPECT_NE(pk::check_rope_scaling(16, scaling).find("must be even"), std::string::npos);
}

// Llama 4's and DINOv3's vision rope: the default frequencies of dim / 2, once per axis.
TEST(RopeScaling, AxialSharedRepeatsTheHalfWidthFrequencies) {
  pk::RopeScaling scaling;
  scaling.rope_type = pk::RopeType::kAxialShared;
  scaling.base = 100.0;
  pk::RopeFrequencies result;
  ASSERT_EQ(pk::compute_rope_frequencies(16, scaling, result), "");
  ASSERT_EQ(result.inv_freq.size(), 8u);
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(result.inv_freq[k], std::pow(100.0, -4.0 * k / 16), 1e-15) << k;
    EXPECT_EQ(result.inv_freq[k + 4], result.inv_freq[k]) << k;
  }
  EXPECT_NE(pk::check_rope_scaling(18, scaling).find("divisible by 4"), std::string::npos);
}

// yarn and longrope without a factor use max_position_embeddings / original (transformers 5.x).
TEST(RopeScaling, MissingFactorIsTheContextRatio) {
  pk::RopeScaling ratio;
  ratio.rope_type = pk::RopeType::kYarn;
  ratio.max_position_embeddings = 256;
  ratio.original_max_position_embeddings = 64;
  pk::RopeScaling given = ratio;
  given.has_factor = true;
  given.factor = 4.0;
  pk::RopeFrequencies from_ratio, from_factor;
  ASSERT_EQ(pk::compute_rope_frequencies(16, ratio, from_ratio), "");
  ASSERT_EQ(pk::compute_rope_frequencies(16, given, from_factor), "");
  EXPECT_EQ(from_ratio.inv_freq, from_factor.inv_freq);
  EXPECT_EQ(from_ratio.attention_factor, from_factor.attention_factor);
  EXPECT_GT(from_ratio.attention_factor, 1.0);
  ratio.original_max_position_embeddings = 0;
  EXPECT_NE(pk::check_rope_scaling(16, ratio).find("without scaling['factor']"),
            std::string::npos);
}

TEST(RopeScaling, LinearAndErrors) {
  pk::RopeScaling scaling;
  scaling.rope_type = pk::RopeType::kLinear;
  EXPECT_NE(pk::check_rope_scaling(8, scaling).find("needs scaling['factor']"), std::string::npos);
  scaling.has_factor = true;
  scaling.factor = 4.0;
  scaling.float32_arithmetic = true;
  pk::RopeFrequencies result;
  ASSERT_EQ(pk::compute_rope_frequencies(8, scaling, result), "");
  ASSERT_EQ(result.inv_freq.size(), 4u);
  EXPECT_EQ(result.inv_freq[0], 0.25);
  EXPECT_EQ(result.inv_freq[2], 1.0f / std::pow(10000.0f, 0.5f) / 4.0f);
  // In double: the exact default frequencies divided by the factor.
  scaling.float32_arithmetic = false;
  ASSERT_EQ(pk::compute_rope_frequencies(8, scaling, result), "");
  EXPECT_EQ(result.inv_freq[2], pk::default_rotary_frequency(2, 8, 10000.0) / 4.0);
  EXPECT_FALSE(pk::parse_rope_type("nope").has_value());
  EXPECT_NE(pk::compute_rope_frequencies(7, pk::RopeScaling{}, result), "");
  scaling.factor = std::nan("");
  EXPECT_NE(pk::check_rope_scaling(8, scaling).find("factor"), std::string::npos);
  scaling.factor = 2.0;
  scaling.rope_type = pk::RopeType::kYarn;
  scaling.max_position_embeddings = 64;
  scaling.beta_fast = std::nan("");
  EXPECT_NE(pk::check_rope_scaling(8, scaling).find("beta_fast"), std::string::npos);
  EXPECT_NE(pk::check_rope_scaling(int64_t{1} << 40, pk::RopeScaling{}).find("dim"),
            std::string::npos);
}

// ---- embedding gather ---------------------------------------------------------------------------

TEST(EmbeddingKernel, GatherPaddingFairseqAndWeightGradient) {
  const int64_t B = 2, T = 6, V = 7, D = 5, pad = 1;
  std::vector<int64_t> ids = {1, 1, 4, 5, 6, 2, 3, 1, 0, 2, 1, 6};
  std::vector<float> weight(V * D), out(B * T * D, std::nanf(""));
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  for (auto& v : weight) v = normal(rng);
  const auto codes = pk::make_channel_codes(pk::PositionCodeOptions{}, D);
  // x is the gradient of the backward below; the forward gathers its rows from the weight.
  std::vector<float> grad(B * T * D);
  pk::AddPositionalParams params = contiguous_params(grad, out, B, T, D, codes);
  params.gather.weight = weight.data();
  params.gather.vocab = V;
  params.gather.row_stride = D;
  params.gather.ids.data = ids.data();
  params.gather.ids.batch_strides[0] = T;
  params.gather.ids.seq_stride = 1;
  params.gather.padding_idx = pad;
  params.gather.fairseq_positions = true;
  params.scale = 2.0;
  pk::add_positional_cpu(params, serial_chunks_of_one);
  for (int64_t b = 0; b < B; ++b) {
    int64_t count = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t id = ids[b * T + t];
      const bool is_pad = id == pad;
      if (!is_pad) ++count;
      for (int64_t d = 0; d < D; ++d) {
        double want = 2.0 * weight[id * D + d];
        if (!is_pad) {
          want += reference_code(pk::PositionKind::kSinusoidal, pk::Convention::kVaswani,
                                 pk::Layout::kInterleaved, 10000.0, D, pad + count, d);
        }
        ASSERT_NEAR(out[(b * T + t) * D + d], want, 2e-6) << b << "," << t << "," << d;
      }
    }
  }
  // Weight gradient (add mode): scale * grad summed per id, nothing for the padding row.
  std::vector<float> grad_weight(V * D, 0.0f), want(V * D, 0.0f);
  for (auto& v : grad) v = normal(rng);
  pk::embedding_weight_backward_cpu(params, grad_weight.data(), four_threads);
  for (int64_t i = 0; i < B * T; ++i) {
    if (ids[i] == pad) continue;
    for (int64_t d = 0; d < D; ++d) want[ids[i] * D + d] += 2.0f * grad[i * D + d];
  }
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(grad_weight[i], want[i], 1e-5) << i;
}

// ---- the angle-addition recurrence for consecutive positions -------------------------------------

#include "cpu/row_kernels.h"

// Consecutive rows (exact anchors every 256 positions, a double rotation between anchors, then
// a rotation from the anchor in acc) against the exact evaluation in double, for every pairing
// of channels (interleaved, concat halves, none) and widths whose turn tables hold 16, 8 and 1
// rows. Calls of 37 rows continue each other's state.
template <typename scalar_t>
void check_consecutive_rows(double tolerance) {
  struct Layout {
    pk::PositionKind kind;
    pk::Layout layout;
    pk::Convention convention;
  };
  const Layout layouts[] = {
      {pk::PositionKind::kSinusoidal, pk::Layout::kInterleaved, pk::Convention::kVaswani},
      {pk::PositionKind::kSinusoidal, pk::Layout::kConcat, pk::Convention::kTensor2Tensor},
      {pk::PositionKind::kLinear, pk::Layout::kInterleaved, pk::Convention::kVaswani},
      {pk::PositionKind::kDamped, pk::Layout::kInterleaved, pk::Convention::kVaswani},
      {pk::PositionKind::kCosine, pk::Layout::kInterleaved, pk::Convention::kVaswani}};
  for (const Layout& layout : layouts) {
    for (const int64_t dim : {int64_t{70}, int64_t{71}, int64_t{3000}, int64_t{40000}}) {
      pk::PositionCodeOptions options;
      options.kind = layout.kind;
      options.layout = layout.layout;
      options.convention = layout.convention;
      options.base = layout.kind == pk::PositionKind::kSinusoidal ? 10000.0 : 37.0;
      const std::vector<pk::ChannelCode> channels = pk::make_channel_codes(options, dim);
      pk::PositionSource source;
      source.kind = layout.kind;
      source.code = options;
      source.channels = channels.data();
      const int64_t rows = dim > 1000 ? 40 : 600;
      const pk::cpu::PositionCodeRows<scalar_t> code(source, dim, rows);
      ASSERT_TRUE(code.anchored());
      const pk::cpu::PositionCodeRows<double> exact_code(source, dim, /*walk_rows=*/1);
      using acc = pk::acc_t<scalar_t>;
      typename pk::cpu::PositionCodeRows<scalar_t>::Recurrence state;
      for (const int64_t first :
           {int64_t{0}, int64_t{12345}, (int64_t{1} << 24) - 300, (int64_t{1} << 31) - 700}) {
        std::vector<acc> recurrence(rows * dim, static_cast<acc>(kNaN));
        std::vector<double> exact(dim);
        for (int64_t r = 0; r < rows; r += 37) {
          code.evaluate_consecutive(first + r, std::min<int64_t>(37, rows - r),
                                    recurrence.data() + r * dim, state);
        }
        for (int64_t r = 0; r < rows; ++r) {
          exact_code.evaluate(first + r, exact.data());
          for (int64_t d = 0; d < dim; ++d) {
            ASSERT_NEAR(recurrence[r * dim + d], exact[d], tolerance)
                << "kind " << static_cast<int>(layout.kind) << " layout "
                << static_cast<int>(layout.layout) << " dim " << dim << " position " << first + r
                << " channel " << d;
          }
        }
      }
    }
  }
}

TEST(PositionCodeRecurrence, MatchesExactEvaluationAtAnyPosition) {
  check_consecutive_rows<double>(1e-12);
  // A few float roundings of values <= 1 (the comment on evaluate_consecutive says 2.4e-7).
  check_consecutive_rows<float>(3e-7);
}

// A call of fewer rows than kMinWalkRows builds no turn tables (their setup would cost more
// than its rows): its consecutive rows are the exact evaluation's, bit for bit.
TEST(PositionCodeRecurrence, ShortWalksEvaluateExactly) {
  const int64_t dim = 70;
  const std::vector<pk::ChannelCode> channels = pk::make_channel_codes({}, dim);
  pk::PositionSource source;
  source.channels = channels.data();
  using Rows = pk::cpu::PositionCodeRows<float>;
  const Rows short_walk(source, dim, Rows::kMinWalkRows - 1);
  ASSERT_FALSE(short_walk.anchored());
  ASSERT_TRUE(Rows(source, dim, Rows::kMinWalkRows).anchored());
  const int64_t rows = 5, first = (int64_t{1} << 24) - 2;
  std::vector<float> walked(rows * dim, kNaN), exact(dim, kNaN);
  Rows::Recurrence state;
  short_walk.evaluate_consecutive(first, rows, walked.data(), state);
  for (int64_t r = 0; r < rows; ++r) {
    short_walk.evaluate(first + r, exact.data());
    ASSERT_EQ(0, std::memcmp(exact.data(), walked.data() + r * dim, dim * sizeof(float)))
        << "row " << r;
  }
}

// The vectorized multipliers against the documented mask, element by element: every start
// within a Philox counter, ranges that cut the 32-element groups at both ends, and thresholds
// of 2^16 (keep all, p < 2^-17), 0 (p = 1) and between.
template <typename acc_t>
void check_dropout_multipliers() {
  for (const double p : {1e-6, 0.1, 0.5, 0.97, 1.0}) {
    const pk::Dropout dropout = pk::make_dropout(p, true, 0x5eed5eedULL);
    for (const uint64_t first : {uint64_t{0}, uint64_t{1}, uint64_t{5}, uint64_t{7}, uint64_t{8},
                                 uint64_t{31}, uint64_t{1000003}, (uint64_t{1} << 40) + 3}) {
      for (const int64_t count : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{31}, int64_t{32},
                                  int64_t{33}, int64_t{100}, int64_t{257}}) {
        std::vector<acc_t> out(count + 1, static_cast<acc_t>(kNaN));
        pk::cpu::dropout_multipliers(dropout, first, count, out.data());
        for (int64_t k = 0; k < count; ++k) {
          const double want = reference_dropout_multiplier(0x5eed5eedULL, first + k, p);
          ASSERT_EQ(static_cast<double>(out[k]), static_cast<double>(static_cast<acc_t>(want)))
              << "p " << p << " first " << first << " count " << count << " k " << k;
        }
        ASSERT_TRUE(std::isnan(static_cast<double>(out[count]))) << "wrote past the range";
      }
    }
  }
}

// The build that runs is the one POSENC_CPU_CAPABILITY asks for where the CPU has it.
TEST(CpuCapability, FollowsTheEnvironment) {
  const char* cap = std::getenv("POSENC_CPU_CAPABILITY");
  const pk::cpu::CpuCapability capability = pk::cpu::cpu_capability();
  RecordProperty("cpu_capability", static_cast<int>(capability));
  if (cap == nullptr) return;
  if (std::string(cap) == "default") EXPECT_EQ(capability, pk::cpu::CpuCapability::kDefault);
#if defined(__x86_64__)
  if (std::string(cap) == "avx2" && __builtin_cpu_supports("avx2")) {
    EXPECT_EQ(capability, pk::cpu::CpuCapability::kAvx2);
  }
#endif
}

TEST(DropoutMultipliers, MatchTheDocumentedMask) {
  check_dropout_multipliers<float>();
  check_dropout_multipliers<double>();
}

// One batch row makes its rows' codes chunk by chunk from their anchors (kRowChunk = 256), and
// more batch rows make whole rows once for the batch: the same bits either way, and within the
// exact-angle contract of the float64 reference. D = 600 ends in a partial chunk; odd D = 71 has
// a spare channel.
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

#if defined(__linux__)
namespace {

// A fresh anonymous mapping of `pages` pages: none of them resident until written or populated.
class FreshPages {
 public:
  explicit FreshPages(int64_t pages)
      : bytes_(pages * page_size()),
        data_(static_cast<char*>(mmap(nullptr, static_cast<size_t>(bytes_), PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {}
  ~FreshPages() {
    if (data_ != MAP_FAILED) munmap(data_, static_cast<size_t>(bytes_));
  }
  FreshPages(const FreshPages&) = delete;
  FreshPages& operator=(const FreshPages&) = delete;

  static int64_t page_size() { return static_cast<int64_t>(sysconf(_SC_PAGESIZE)); }
  bool ok() const { return data_ != MAP_FAILED; }
  char* page(int64_t i) const { return data_ + i * page_size(); }
  int64_t pages() const { return bytes_ / page_size(); }
  bool resident(int64_t i) const {
    unsigned char flag = 0;
    EXPECT_EQ(0, mincore(page(i), static_cast<size_t>(page_size()), &flag));
    return (flag & 1) != 0;
  }
  // The indices of the resident pages.
  std::vector<int64_t> resident_pages() const {
    std::vector<int64_t> found;
    for (int64_t i = 0; i < pages(); ++i) {
      if (resident(i)) found.push_back(i);
    }
    return found;
  }

 private:
  int64_t bytes_;
  char* data_;
};

std::vector<int64_t> page_range(int64_t first, int64_t end) {
  std::vector<int64_t> pages;
  for (int64_t i = first; i < end; ++i) pages.push_back(i);
  return pages;
}

// Whether this kernel knows MADV_POPULATE_WRITE (Linux 5.14); the tests below need it.
bool kernel_populates() {
  FreshPages probe(1);
  return probe.ok() && madvise(probe.page(0), static_cast<size_t>(FreshPages::page_size()),
                               MADV_POPULATE_WRITE) == 0;
}

}  // namespace

// Only the whole pages inside the range are populated, and contents are kept.
TEST(PopulateFreshPages, PopulatesTheWholePagesOfAFreshRange) {
  if (!kernel_populates()) GTEST_SKIP() << "no MADV_POPULATE_WRITE in this kernel";
  const int64_t page = FreshPages::page_size();
  FreshPages memory(8);
  ASSERT_TRUE(memory.ok());
  ASSERT_TRUE(memory.resident_pages().empty());
  // From 100 bytes into page 0 to 100 bytes into page 6: pages 1 to 5 are whole.
  pk::cpu::populate_fresh_pages(memory.page(0) + 100, 6 * page);
  EXPECT_EQ(page_range(1, 6), memory.resident_pages());
  for (int64_t i = 0; i < 8 * page; ++i) ASSERT_EQ(0, memory.page(0)[i]);
  // A range shorter than a whole page populates nothing.
  FreshPages small(2);
  pk::cpu::populate_fresh_pages(small.page(0) + 8, page);
  EXPECT_TRUE(small.resident_pages().empty());
}

// A range whose first page is resident (a reused allocation) is left alone, and written values
// stay.
TEST(PopulateFreshPages, LeavesARangeWhoseFirstPageIsResident) {
  if (!kernel_populates()) GTEST_SKIP() << "no MADV_POPULATE_WRITE in this kernel";
  const int64_t page = FreshPages::page_size();
  FreshPages memory(6);
  ASSERT_TRUE(memory.ok());
  std::memset(memory.page(0), 0x5a, static_cast<size_t>(page));
  pk::cpu::populate_fresh_pages(memory.page(0), 6 * page);
  EXPECT_EQ(page_range(0, 1), memory.resident_pages());
  pk::cpu::populate_fresh_pages(memory.page(1), 5 * page);
  EXPECT_EQ(page_range(0, 6), memory.resident_pages());
  for (int64_t i = 0; i < page; ++i) ASSERT_EQ(0x5a, static_cast<unsigned char>(memory.page(0)[i]));
}

// PopulateAhead populates at most kBytes from a row, again only once the rows pass them, never
// past the run's end, and nothing when less than kMinBytes are left.
TEST(PopulateAhead, StepsThroughARunAtMostKBytesAtATime) {
  if (!kernel_populates()) GTEST_SKIP() << "no MADV_POPULATE_WRITE in this kernel";
  const int64_t page = FreshPages::page_size();
  const int64_t step = pk::cpu::PopulateAhead::kBytes / page;  // pages per call
  const int64_t tail = pk::cpu::PopulateAhead::kMinBytes / page + 3;
  FreshPages memory(3 * step);
  ASSERT_TRUE(memory.ok());
  const int64_t run_bytes = (2 * step + tail) * page;  // the run ends inside the third step
  pk::cpu::PopulateAhead populate;
  populate.at_row(memory.page(0), run_bytes);
  EXPECT_EQ(page_range(0, step), memory.resident_pages());
  // A row inside what was populated: nothing more.
  populate.at_row(memory.page(step - 1), run_bytes - (step - 1) * page);
  EXPECT_EQ(page_range(0, step), memory.resident_pages());
  populate.at_row(memory.page(step), run_bytes - step * page);
  EXPECT_EQ(page_range(0, 2 * step), memory.resident_pages());
  populate.at_row(memory.page(2 * step), run_bytes - 2 * step * page);
  EXPECT_EQ(page_range(0, 2 * step + tail), memory.resident_pages());
  // A run shorter than kMinBytes.
  FreshPages short_run(tail);
  ASSERT_TRUE(short_run.ok());
  pk::cpu::PopulateAhead().at_row(short_run.page(0), pk::cpu::PopulateAhead::kMinBytes - page);
  EXPECT_TRUE(short_run.resident_pages().empty());
}

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

TEST(RotaryKernel, FreshOutputsArePopulatedOnlyWhereWritten) {
  const int64_t page = FreshPages::page_size();
  const int64_t B = 2, S = 300, H = 4, D = 130;  // 520-byte head rows
  const int64_t count = B * S * H * D;
  std::vector<float> q(static_cast<size_t>(count));
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (auto& v : q) v = normal(rng);
  const auto frequencies = pk::rotary_turn_frequencies(pk::default_inv_freq(D, 10000.0));
  // bshd and bhsd, in and out alike: a token's heads as one run, or each head's rows as one.
  const int64_t bshd[4] = {S * H * D, H * D, D, 1};
  const int64_t bhsd[4] = {H * S * D, D, S * D, 1};
  for (const int64_t* strides : {bshd, bhsd}) {
    pk::RotaryParams params = one_operand_rotary(pk::DType::kFloat32, B, S, H, D, D, frequencies);
    pk::RotaryOperand& op = params.operands[0];
    op.in = q.data();
    for (int i = 0; i < 4; ++i) op.in_strides[i] = op.out_strides[i] = strides[i];
    std::vector<float> written(static_cast<size_t>(count), std::nanf(""));
    op.out = written.data();
    pk::rotary_cpu(params, four_threads);
    const int64_t bytes = count * static_cast<int64_t>(sizeof(float));
    FreshPages memory(1 + (64 + bytes + page - 1) / page + 4);
    ASSERT_TRUE(memory.ok());
    op.out = memory.page(1) + 64;
    pk::rotary_cpu(params, four_threads);
    ASSERT_EQ(0, std::memcmp(written.data(), op.out, static_cast<size_t>(bytes)))
        << "strides " << strides[1];
    EXPECT_EQ(page_range(1, (page + 64 + bytes + page - 1) / page), memory.resident_pages())
        << "strides " << strides[1];
  }
}
#endif  // __linux__

// The channel-code cache of the binding is keyed through these operators: each field must count.
TEST(PositionCodeOptions, EqualityComparesEveryField) {
  using namespace posenc::kernels;
  const PositionCodeOptions base;
  EXPECT_TRUE(base == PositionCodeOptions());
  PositionCodeOptions other = base;
  other.kind = PositionKind::kCosine;
  EXPECT_TRUE(base != other);
  other = base;
  other.base = 500.0;
  EXPECT_TRUE(base != other);
  other = base;
  other.convention = Convention::kTensor2Tensor;
  EXPECT_TRUE(base != other);
  other = base;
  other.layout = Layout::kConcat;
  EXPECT_TRUE(base != other);
}

TEST(GridCode, EqualityComparesEveryField) {
  using namespace posenc::kernels;
  GridCode base;
  base.axis_count = 2;
  base.sizes[0] = 3;
  base.sizes[1] = 4;
  base.segment_ends[0] = 4;
  base.segment_ends[1] = 8;
  base.segment_axes[0] = 1;
  EXPECT_TRUE(base == GridCode(base));
  const std::vector<std::function<void(GridCode&)>> changes = {
      [](GridCode& g) { g.axis_count = 3; },      [](GridCode& g) { g.extra_tokens = 1; },
      [](GridCode& g) { g.sizes[1] = 5; },        [](GridCode& g) { g.origins[0] = 2; },
      [](GridCode& g) { g.scales[1] = 0.5; },     [](GridCode& g) { g.segment_axes[1] = 1; },
      [](GridCode& g) { g.segment_ends[0] = 2; },
  };
  for (const auto& change : changes) {
    GridCode other = base;
    change(other);
    EXPECT_TRUE(base != other);
  }
}
