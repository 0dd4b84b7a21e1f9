// The math every kernel shares, without torch: Philox, half conversions, exact angles, the
// consecutive-row recurrence, dropout multipliers, CPU capabilities, fresh-page population and
// the equality of the code options.
#include "kernel_test_util.h"

using namespace kernel_test;

TEST(Philox, KnownAnswers) {
  // Random123's published known-answer vectors for philox4x32_10: counter, key, result.
  struct KnownAnswer {
    pk::Philox4 counter;
    uint32_t key[2];
    pk::Philox4 result;
  };
  const KnownAnswer answers[] = {
      {{{0, 0, 0, 0}}, {0, 0}, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       {0xffffffffu, 0xffffffffu},
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       {0xa4093822u, 0x299f31d0u},
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const KnownAnswer& answer : answers) {
    const pk::Philox4 got = pk::philox4x32_10(answer.counter, answer.key[0], answer.key[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(got.v[i], answer.result.v[i]) << i;
  }
}

TEST(HalfTypes, RoundTripAndRounding) {
  const float values[] = {0.0f,     -0.0f,          1.0f,           -2.5f, 3.140625f,
                          65504.0f, 6.1035156e-05f, 5.9604645e-08f, 1e-3f, -123.456f};
  for (float v : values) {
    const float h = pk::float16_to_float(pk::float_to_float16(v));
    EXPECT_NEAR(h, v, std::fabs(v) * 1e-3 + 1e-7) << v;
    const float b = pk::bfloat16_to_float(pk::float_to_bfloat16(v));
    EXPECT_NEAR(b, v, std::fabs(v) * 8e-3 + 1e-30) << v;
  }
  EXPECT_EQ(pk::float_to_float16(1.0f).bits, 0x3c00);
  EXPECT_EQ(pk::float_to_float16(65520.0f).bits, 0x7c00);               // rounds to infinity
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
    const double want =
        reference_code(options.kind, options.convention, options.layout, options.base, dim, pos, j);
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

// Frequencies far below 2^-1000, subnormal ones included, split into finite pieces whose turns
// are pos * w / (2 pi): an angle of about 0, not NaN.
TEST(Angle, TinyFrequenciesKeepTheirExactAngle) {
  const int64_t position = (int64_t{1} << 24) - 1;
  for (const double radians : {1e-290, 1e-300, 1e-307, 1e-310, 4.9e-324}) {
    const pk::TurnFrequency f = pk::turn_frequency_from_radians(radians);
    EXPECT_TRUE(std::isfinite(f.high) && std::isfinite(f.middle) && std::isfinite(f.low))
        << radians;
    const double turns = pk::reduced_turns(position, f, 0.0);
    EXPECT_NEAR(turns, static_cast<double>(position) * radians / (2.0 * M_PI), 1e-300) << radians;
    const pk::SinCos<float> angle = pk::sincos_turns<float>(pk::reduced_turns(position, f, 0.25));
    EXPECT_EQ(angle.sin, 1.0f) << radians;  // the cos channel: sin of a quarter turn
  }
}

// The host's double sin and cos of the small angle (a polynomial, so that loops vectorize)
// against long double sinl and cosl over [-pi/4, pi/4], tiny angles included: within 2 ulp of
// each result (libm's are within 1).
TEST(Angle, SmallAnglesInDoubleAreWithinTwoUlp) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> angle(-M_PI / 4, M_PI / 4);
  auto ulps = [](double got, long double want) {
    const double ulp = std::nextafter(std::fabs(static_cast<double>(want)), INFINITY) -
                       std::fabs(static_cast<double>(want));
    return static_cast<double>(std::fabs(static_cast<long double>(got) - want)) / ulp;
  };
  for (int i = 0; i < 200000; ++i) {
    const double x = i < 1000 ? std::ldexp(angle(rng), -(i % 64)) : angle(rng);
    const pk::SinCos<double> got = pk::sincos_small(x);
    if (x != 0.0) ASSERT_LE(ulps(got.sin, sinl(static_cast<long double>(x))), 2.0) << x;
    ASSERT_LE(ulps(got.cos, cosl(static_cast<long double>(x))), 2.0) << x;
  }
  EXPECT_EQ(pk::sincos_small(0.0).sin, 0.0);
  EXPECT_EQ(pk::sincos_small(0.0).cos, 1.0);
}

TEST(Angle, QuarterTurnsAreExact) {
  expect_exact_quadrants<float>();
  expect_exact_quadrants<double>();
}

// ---- the angle-addition recurrence for consecutive positions
// -------------------------------------

#include "cpu/row_kernels.h"

// Consecutive rows (exact anchors every 256 positions, a double rotation between anchors, then
// a rotation from the anchor in acc) against the exact evaluation in double, for every layout of
// channels (interleaved, concat halves, cosine's lone channels, an odd width's spare) and widths
// whose turn tables hold 16, 8 and 1 rows. Calls of 37 rows continue each other's state.
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

// Walk tables kept with a code's arrays (the binding keeps them per code) are made once, shared
// by every later call, and so taken by walks of any length, a single row's included: the same
// bits as the tables a call makes for itself.
TEST(PositionCodeRecurrence, KeptArraysWalkFromOneRowWithSharedTables) {
  const int64_t dim = 70;
  const std::vector<pk::ChannelCode> channels = pk::make_channel_codes({}, dim);
  const pk::ChannelArrays arrays = pk::make_channel_arrays(channels);
  pk::PositionSource kept_source, call_source;
  kept_source.channels = call_source.channels = channels.data();
  kept_source.arrays = &arrays;
  using Rows = pk::cpu::PositionCodeRows<float>;
  const Rows kept(kept_source, dim, 2), again(kept_source, dim, 5);
  ASSERT_TRUE(kept.anchored());
  ASSERT_TRUE(Rows(kept_source, dim, 1).anchored());
  ASSERT_FALSE(Rows(kept_source, dim, 0).anchored());
  ASSERT_FALSE(Rows(call_source, dim, 2).anchored());
  const Rows own(call_source, dim, Rows::kMinWalkRows);
  ASSERT_TRUE(own.anchored());
  Rows::Recurrence a, b;
  EXPECT_EQ(kept.anchored_row(40, a).turn_cos, again.anchored_row(40, b).turn_cos);
  EXPECT_NE(kept.anchored_row(40, a).turn_cos, own.anchored_row(40, b).turn_cos);
  const int64_t rows = 40, first = (int64_t{1} << 24) - 17;
  std::vector<float> walked(rows * dim, kNaN), own_walked(rows * dim, kNaN);
  Rows::Recurrence kept_state, own_state;
  kept.evaluate_consecutive(first, rows, walked.data(), kept_state);
  own.evaluate_consecutive(first, rows, own_walked.data(), own_state);
  ASSERT_EQ(0, std::memcmp(walked.data(), own_walked.data(), walked.size() * sizeof(float)));
}

// The default sinusoidal code of width `dim` with its arrays kept (walk tables and anchors), as
// the binding keeps them, and its float rows for walks of `rows` positions.
struct KeptCode {
  using Rows = pk::cpu::PositionCodeRows<float>;
  KeptCode(int64_t dim, int64_t rows)
      : channels(pk::make_channel_codes({}, dim)),
        arrays(pk::make_channel_arrays(channels)),
        source(kept_source(channels, arrays)),
        code(source, dim, rows) {}
  static pk::PositionSource kept_source(const std::vector<pk::ChannelCode>& channels,
                                        const pk::ChannelArrays& arrays) {
    pk::PositionSource source;
    source.channels = channels.data();
    source.arrays = &arrays;
    return source;
  }
  std::vector<pk::ChannelCode> channels;
  pk::ChannelArrays arrays;
  pk::PositionSource source;
  Rows code;
};

// A walk keeps the first anchor it made, not only its last: a call over the same positions
// again (every training step from position 0) starts from it instead of an exact anchor, and a
// kept anchor is never moved (find_anchor still finds it at its position after the walk).
TEST(PositionCodeRecurrence, AWalkKeepsItsFirstAnchor) {
  const int64_t dim = 70, rows = 100, first = 512;
  const KeptCode kept_code(dim, rows);
  using Rows = KeptCode::Rows;
  const Rows& code = kept_code.code;
  const pk::ChannelArrays& arrays = kept_code.arrays;
  ASSERT_TRUE(code.anchored());
  Rows::Recurrence state;
  std::vector<float> walked(rows * dim, kNaN);
  code.evaluate_consecutive(first, rows, walked.data(), state);
  ASSERT_GT(state.anchor->position, first);  // the walk went past its first anchor
  const pk::cpu::SharedAnchor<float> kept = arrays.walks->find_anchor<float>(first);
  ASSERT_NE(kept, nullptr);
  EXPECT_EQ(kept->position, first);
  // Walked again from the kept anchor: the same bits.
  Rows::Recurrence again_state;
  std::vector<float> again(rows * dim, kNaN);
  code.evaluate_consecutive(first, rows, again.data(), again_state);
  ASSERT_EQ(0, std::memcmp(walked.data(), again.data(), walked.size() * sizeof(float)));
  EXPECT_EQ(arrays.walks->find_anchor<float>(first), kept);
}

// A walk moves the anchor that it alone holds in place; one that it gave to the arrays' cache
// (keep_last_anchor) or found there stays as kept. Either way each row is the same function of
// its position: a walk continued from a kept anchor gives the bits of a walk started anew.
TEST(PositionCodeRecurrence, KeptAnchorsStayAsKeptWhileWalksGoOn) {
  const int64_t dim = 70, rows = 300, first = 1000;
  const KeptCode kept_code(dim, rows);
  using Rows = KeptCode::Rows;
  const Rows& code = kept_code.code;
  const pk::ChannelArrays& arrays = kept_code.arrays;
  const std::vector<pk::ChannelCode>& channels = kept_code.channels;
  ASSERT_TRUE(code.anchored());
  Rows::Recurrence state;
  std::vector<float> head(40 * dim, kNaN);
  code.evaluate_consecutive(first, 40, head.data(), state);
  code.keep_last_anchor(state);
  const int64_t kept_position = state.anchor->position;
  const pk::cpu::SharedAnchor<float> kept = arrays.walks->find_anchor<float>(kept_position);
  ASSERT_NE(kept, nullptr);
  const auto row_of = [&](const pk::cpu::SharedAnchor<float>& anchor) {
    return std::vector<float>(anchor->row.get(), anchor->row.get() + 2 * dim);
  };
  const auto angles_of = [&](const pk::cpu::SharedAnchor<float>& anchor) {
    return std::vector<double>(anchor->sin_cos.get(), anchor->sin_cos.get() + 2 * dim);
  };
  const std::vector<float> kept_row = row_of(kept);
  const std::vector<double> kept_angles = angles_of(kept);
  // The same state walks on, past several anchors and an exact one.
  std::vector<float> walked(rows * dim, kNaN);
  code.evaluate_consecutive(first + 40, rows, walked.data(), state);
  EXPECT_EQ(kept->position, kept_position);
  EXPECT_EQ(row_of(kept), kept_row);
  EXPECT_EQ(angles_of(kept), kept_angles);
  // A new walk from the kept anchor's next position, and walks started at every 23rd row.
  Rows::Recurrence from_kept;
  std::vector<float> again(rows * dim, kNaN);
  code.evaluate_consecutive(first + 40, rows, again.data(), from_kept);
  ASSERT_EQ(0, std::memcmp(walked.data(), again.data(), walked.size() * sizeof(float)));
  pk::PositionSource own_source;  // no kept arrays: tables made for the call, no kept anchors
  own_source.channels = channels.data();
  const Rows own(own_source, dim, rows);
  for (int64_t r = 0; r < rows; r += 23) {
    Rows::Recurrence fresh;
    std::vector<float> row(dim, kNaN);
    own.evaluate_consecutive(first + 40 + r, 1, row.data(), fresh);
    ASSERT_EQ(0, std::memcmp(row.data(), walked.data() + r * dim, dim * sizeof(float)))
        << "row " << r;
  }
}

// float16 <-> float32 against the IEEE definitions written case by case: every half, and floats
// across every exponent (a stride through all 2^32 bit patterns, plus each rounding boundary's
// neighbours), NaN canonical (0x7e00 with its sign).
float reference_half_to_float(uint16_t h) {
  const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0x1f) return mantissa == 0 ? sign * INFINITY : NAN;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  return sign * std::ldexp(static_cast<float>(1024 + mantissa), exponent - 25);
}

uint16_t reference_float_to_half(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  if (std::isnan(v)) return sign | 0x7e00u;
  const double magnitude = std::fabs(static_cast<double>(v));
  // The nearest half (ties to even), from the representable halves' spacing.
  if (magnitude >= 65520.0) return sign | 0x7c00u;
  const int exponent = magnitude < std::ldexp(1.0, -14) ? -14 : std::ilogb(magnitude);
  const double unit = std::ldexp(1.0, exponent - 10);
  const double units = std::nearbyint(magnitude / unit);  // FE_TONEAREST: ties to even
  const uint32_t count = static_cast<uint32_t>(units);    // up to 2048 (carries into exponent)
  const uint32_t biased =
      magnitude < std::ldexp(1.0, -14) ? 0 : static_cast<uint32_t>(exponent + 15);
  const uint32_t h = biased == 0 ? count : (((biased - 1) << 10) + count);
  return static_cast<uint16_t>(sign | h);
}

TEST(Float16Conversion, MatchesTheIeeeDefinitions) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = pk::float16_to_float(pk::Float16{static_cast<uint16_t>(h)});
    const float want = reference_half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(0, std::memcmp(&got, &want, 4)) << h;
    }
  }
  std::vector<uint32_t> patterns;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 65521) patterns.push_back(bits);
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // each half and its midpoints' neighbours
    const float v = reference_half_to_float(static_cast<uint16_t>(h));
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (uint32_t near : {bits, bits + 1, bits - 1, bits + 0x1000, bits + 0xfff, bits + 0x1001}) {
      patterns.push_back(near);
      patterns.push_back(near | 0x80000000u);
    }
  }
  for (const uint32_t bits : patterns) {
    float v;
    std::memcpy(&v, &bits, 4);
    ASSERT_EQ(pk::float_to_float16(v).bits, reference_float_to_half(v)) << std::hex << bits;
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

#if defined(__linux__)
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
  using posenc::kernels::GridCode;
  const GridCode base = test_grid();
  EXPECT_TRUE(base == test_grid());
  const std::vector<std::function<void(GridCode&)>> changes = {
      [](GridCode& g) { g.axis_count = 2; },      [](GridCode& g) { g.extra_tokens = 1; },
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
