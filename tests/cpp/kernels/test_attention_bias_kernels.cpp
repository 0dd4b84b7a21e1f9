// The attention_bias kernels without torch: the CPU kernel against the definitions (ALiBi,
// T5's buckets as transformers writes them), and the emulated CUDA kernels against the CPU's bits,
// forward and weight gradient.
#include "attention_bias.h"
#include "cuda_emulated_util.h"
#include "kernel_test_util.h"

using kernel_test::four_threads;

namespace {

// transformers' T5Attention._relative_position_bucket for one relative position, in the same
// float32 arithmetic.
int64_t reference_bucket(int64_t r, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  if (bidirectional) {
    num_buckets /= 2;
    bucket += r > 0 ? num_buckets : 0;
    r = r < 0 ? -r : r;
  } else {
    r = r < 0 ? -r : 0;
  }
  const int64_t max_exact = num_buckets / 2;
  if (r < max_exact) return bucket + r;
  const float ratio = static_cast<float>(std::log(static_cast<double>(max_distance) / max_exact));
  const float v = std::log(static_cast<float>(r) / static_cast<float>(max_exact)) / ratio *
                  static_cast<float>(num_buckets - max_exact);
  return bucket + std::min<int64_t>(max_exact + static_cast<int64_t>(v), num_buckets - 1);
}

pk::AttentionBiasParams t5_params(bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  pk::AttentionBiasParams p;
  p.kind = pk::BiasKind::kT5;
  p.bidirectional = bidirectional;
  p.num_buckets = num_buckets;
  pk::t5_thresholds(p, max_distance);
  return p;
}

}  // namespace

TEST(AttentionBiasKernel, T5BucketsMatchTheFormula) {
  for (const bool bidirectional : {true, false}) {
    for (const auto& [buckets, distance] : std::vector<std::pair<int64_t, int64_t>>{
             {32, 128}, {320, 800}, {8, 20}, {33, 50}, {512, 100000}}) {
      const pk::AttentionBiasParams p = t5_params(bidirectional, buckets, distance);
      for (int64_t r = -300000; r <= 300000; r += (r > -2000 && r < 2000) ? 1 : 97) {
        ASSERT_EQ(pk::t5_bucket(p, r), reference_bucket(r, bidirectional, buckets, distance))
            << bidirectional << " " << buckets << " " << distance << " r " << r;
      }
    }
  }
}

TEST(AttentionBiasKernel, AlibiSlopesAreTheReferenceSequence) {
  // 12 heads: 2^-1 .. 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
  const double want[12] = {
      0.5,       0.25,       0.125,           0.0625,          0.03125,         0.015625,
      0.0078125, 0.00390625, std::exp2(-0.5), std::exp2(-1.5), std::exp2(-2.5), std::exp2(-3.5)};
  for (int h = 0; h < 12; ++h) EXPECT_DOUBLE_EQ(pk::alibi_slope(h, 12), want[h]) << h;
  EXPECT_DOUBLE_EQ(pk::alibi_slope(0, 1), std::exp2(-8.0));
}

// Forward and gradient, CPU (against the definitions) and emulated CUDA (against the CPU).
TEST(AttentionBiasKernel, ForwardAndGradientMatchDefinitionAndEmulatedCuda) {
  const int64_t heads = 3, Tq = 7, Tk = 300, offset = 293;
  std::mt19937_64 rng(4);
  std::normal_distribution<double> normal;
  for (const pk::BiasKind kind : {pk::BiasKind::kAlibi, pk::BiasKind::kT5}) {
    for (const bool causal : {false, true}) {
      if (kind == pk::BiasKind::kT5 && causal) continue;
      SCOPED_TRACE(testing::Message() << "kind " << static_cast<int>(kind) << " causal " << causal);
      pk::AttentionBiasParams p =
          kind == pk::BiasKind::kT5 ? t5_params(true, 32, 128) : pk::AttentionBiasParams{};
      p.kind = kind;
      p.causal = causal;
      p.heads = heads;
      p.query_length = Tq;
      p.key_length = Tk;
      p.offset = offset;
      const int64_t rows = kind == pk::BiasKind::kT5 ? 32 : 1;
      std::vector<float> weight(rows * heads);
      for (auto& w : weight) w = static_cast<float>(normal(rng));
      p.weight = weight.data();
      p.weight_head_stride = 1;
      p.weight_row_stride = heads;
      const size_t count = static_cast<size_t>(heads * Tq * Tk);
      std::vector<float> cpu(count, std::nanf("")), emulated(count, std::nanf(""));
      pk::attention_bias_cpu(p, cpu.data(), four_threads);
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < Tq; ++i) {
          for (int64_t j = 0; j < Tk; ++j) {
            const int64_t r = j - (offset + i);
            const float got = cpu[(h * Tq + i) * Tk + j];
            if (kind == pk::BiasKind::kT5) {
              ASSERT_EQ(got, weight[reference_bucket(r, true, 32, 128) * heads + h]);
            } else if (causal && r > 0) {
              ASSERT_TRUE(std::isinf(got) && got < 0);
            } else {
              ASSERT_NEAR(got, -static_cast<double>(weight[h]) * std::abs(r),
                          1.2e-7 * std::abs(weight[h] * r));
            }
          }
        }
      }
      ASSERT_EQ(emu::attention_bias(p, emulated.data(), nullptr), 0);
      ASSERT_EQ(0, std::memcmp(cpu.data(), emulated.data(), count * sizeof(float)));

      // The gradient from a strided grad ([heads, Tq, Tk] inside a wider buffer).
      const int64_t strides[3] = {Tq * (Tk + 5), Tk + 5, 1};
      std::vector<float> grad(heads * Tq * (Tk + 5));
      for (auto& g : grad) g = static_cast<float>(normal(rng));
      const int64_t diagonals = pk::diagonal_count(p);
      std::vector<float> cpu_sums(heads * diagonals), emulated_sums(heads * diagonals);
      std::vector<float> cpu_grad(rows * heads, std::nanf("")), emulated_grad(cpu_grad);
      pk::attention_bias_backward_cpu(p, grad.data(), strides, cpu_sums.data(), cpu_grad.data(),
                                      four_threads);
      std::vector<double> want(rows * heads, 0.0);
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t i = 0; i < Tq; ++i) {
          for (int64_t j = 0; j < Tk; ++j) {
            const int64_t r = j - (offset + i);
            const double g = grad[h * strides[0] + i * strides[1] + j];
            if (kind == pk::BiasKind::kT5) {
              want[reference_bucket(r, true, 32, 128) * heads + h] += g;
            } else if (!(causal && r > 0)) {
              want[h] -= std::abs(static_cast<double>(r)) * g;
            }
          }
        }
      }
      for (size_t k = 0; k < want.size(); ++k) {
        ASSERT_NEAR(cpu_grad[k], want[k], 1e-4 * (1.0 + std::abs(want[k]))) << k;
      }
      ASSERT_EQ(emu::attention_bias_backward(p, grad.data(), strides, emulated_sums.data(),
                                             emulated_grad.data(), nullptr),
                0);
      ASSERT_EQ(
          0, std::memcmp(cpu_grad.data(), emulated_grad.data(), cpu_grad.size() * sizeof(float)));
    }
  }
}

// A Swin window: each token pair reads the table row of its 2D offset (Swin's
// relative_position_index written out here); the gradient sums each row's pairs. The emulated
// CUDA kernels give the CPU's bits.
TEST(AttentionBiasKernel, WindowMatchesDefinitionAndEmulatedCuda) {
  const int64_t heads = 2, wh = 3, ww = 5, tokens = wh * ww, rows = (2 * wh - 1) * (2 * ww - 1);
  pk::AttentionBiasParams p;
  p.kind = pk::BiasKind::kWindow;
  p.heads = heads;
  p.query_length = p.key_length = tokens;
  p.window_height = wh;
  p.window_width = ww;
  std::mt19937_64 rng(8);
  std::normal_distribution<double> normal;
  std::vector<float> table(rows * heads);
  for (auto& w : table) w = static_cast<float>(normal(rng));
  p.weight = table.data();
  p.weight_row_stride = heads;
  p.weight_head_stride = 1;
  const size_t count = static_cast<size_t>(heads * tokens * tokens);
  std::vector<float> cpu(count, std::nanf("")), emulated(count, std::nanf(""));
  pk::attention_bias_cpu(p, cpu.data(), four_threads);
  auto index = [&](int64_t i, int64_t j) {
    return (i / ww - j / ww + wh - 1) * (2 * ww - 1) + (i % ww - j % ww + ww - 1);
  };
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < tokens; ++i) {
      for (int64_t j = 0; j < tokens; ++j) {
        ASSERT_EQ(cpu[(h * tokens + i) * tokens + j], table[index(i, j) * heads + h]);
      }
    }
  }
  ASSERT_EQ(emu::attention_bias(p, emulated.data(), nullptr), 0);
  ASSERT_EQ(0, std::memcmp(cpu.data(), emulated.data(), count * sizeof(float)));
  // The gradient from a grad with transposed strides (j slowest within a head).
  const int64_t strides[3] = {tokens * tokens, 1, tokens};
  std::vector<float> grad(count);
  for (auto& g : grad) g = static_cast<float>(normal(rng));
  std::vector<double> want(rows * heads, 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < tokens; ++i) {
      for (int64_t j = 0; j < tokens; ++j) {
        want[index(i, j) * heads + h] += grad[h * strides[0] + i * strides[1] + j * strides[2]];
      }
    }
  }
  std::vector<float> cpu_grad(rows * heads, std::nanf("")), emulated_grad(cpu_grad);
  pk::attention_bias_backward_cpu(p, grad.data(), strides, nullptr, cpu_grad.data(), four_threads);
  for (size_t k = 0; k < want.size(); ++k) ASSERT_NEAR(cpu_grad[k], want[k], 1e-5) << k;
  ASSERT_EQ(
      emu::attention_bias_backward(p, grad.data(), strides, nullptr, emulated_grad.data(), nullptr),
      0);
  ASSERT_EQ(0, std::memcmp(cpu_grad.data(), emulated_grad.data(), cpu_grad.size() * sizeof(float)));
}
