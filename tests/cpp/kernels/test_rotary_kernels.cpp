// The CPU kernels of rotary and the rope frequencies, without torch, against float64
// references written from the published formulas.
#include "kernel_test_util.h"

using namespace kernel_test;

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
  EXPECT_NE(pk::check_rope_scaling(16, ratio).find("without scaling['factor']"), std::string::npos);
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

#if defined(__linux__)

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
