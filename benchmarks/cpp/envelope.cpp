// The performance envelope through the C++ API (LibTorch inference): posenc::add_positional and
// posenc::rotary against the same eager computation in LibTorch ops, over a grid of shapes,
// variants taking turns call by call. Prints one Markdown row per cell: posenc's median time and
// eager time / posenc time (above 1: posenc is faster) with the interquartile range of the
// per-round ratios. Built against an installed posenc (make bench-cpp).
#include <ATen/ATen.h>
#include <posenc/posenc.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace {

constexpr int64_t kDecodeOffset = 1000;  // the position of a decoding step (T = 1)
constexpr int64_t kHeadDim = 128;

using Clock = std::chrono::steady_clock;

struct Ratio {
  double posenc_us, median, low, high;
};

double quantile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const double index = q * static_cast<double>(values.size() - 1);
  const size_t below = static_cast<size_t>(index);
  const size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (index - static_cast<double>(below)) * (values[above] - values[below]);
}

// Rounds of (posenc, eager) calls in turns, as many as fit in budget_s (5 to 2000).
Ratio time_pair(const std::function<void()>& posenc_call, const std::function<void()>& eager,
                double budget_s) {
  for (int i = 0; i < 2; ++i) {
    posenc_call();
    eager();
  }
  const auto start = Clock::now();
  posenc_call();
  eager();
  const double per_round = std::chrono::duration<double>(Clock::now() - start).count();
  const int rounds =
      static_cast<int>(std::clamp(budget_s / std::max(per_round, 1e-7), 5.0, 2000.0));
  std::vector<double> ours, ratios;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = Clock::now();
    posenc_call();
    const auto t1 = Clock::now();
    eager();
    const auto t2 = Clock::now();
    const double a = std::chrono::duration<double>(t1 - t0).count();
    const double b = std::chrono::duration<double>(t2 - t1).count();
    ours.push_back(a);
    ratios.push_back(b / a);
  }
  return {quantile(ours, 0.5) * 1e6, quantile(ratios, 0.5), quantile(ratios, 0.25),
          quantile(ratios, 0.75)};
}

// The Transformer's stored table (float32 sin/cos, cast to the model dtype).
at::Tensor sinusoidal_table(int64_t rows, int64_t dim, at::ScalarType dtype) {
  const at::Tensor position = at::arange(rows, at::kFloat).unsqueeze(1);
  const at::Tensor div_term =
      at::exp(at::arange(0, dim, 2, at::kFloat) * (-std::log(10000.0) / static_cast<double>(dim)));
  at::Tensor pe = at::zeros({rows, dim});
  pe.slice(1, 0, dim, 2).copy_(at::sin(position * div_term));
  pe.slice(1, 1, dim, 2).copy_(at::cos(position * div_term));
  return pe.to(dtype);
}

void print_row(const char* op, const char* dtype, int64_t B, int64_t T, int64_t D,
               const char* memory, const Ratio& r) {
  const char* verdict = r.low <= 1.0 && 1.0 <= r.high ? "tie" : (r.median > 1.0 ? "win" : "LOSS");
  std::printf("| %s | %s | %s | %lld | %lld | %lld | %.1f | %.2fx [%.2f, %.2f] %s |\n", op, dtype,
              memory, static_cast<long long>(B), static_cast<long long>(T),
              static_cast<long long>(D), r.posenc_us, r.median, r.low, r.high, verdict);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const double budget = argc > 1 ? std::atof(argv[1]) : 0.3;
  const int64_t max_elements = argc > 2 ? std::atoll(argv[2]) : int64_t{1} << 25;
  const char* memory = std::getenv("MALLOC_MMAP_MAX_") != nullptr ? "reused" : "fresh";
  at::InferenceMode inference;
  std::printf("| op | dtype | memory | B | T | D | posenc us | vs eager LibTorch [IQR] |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  const std::vector<std::pair<const char*, at::ScalarType>> dtypes = {{"float32", at::kFloat},
                                                                      {"bfloat16", at::kBFloat16}};
  for (const auto& [dtype_name, dtype] : dtypes) {
    for (const int64_t B : {1, 8, 32}) {
      for (const int64_t T : {1, 16, 128, 512, 2048, 16384}) {
        for (const int64_t D : {256, 768, 1024, 4096}) {
          if (B * T * D > max_elements) continue;
          const int64_t offset = T == 1 ? kDecodeOffset : 0;
          // add_positional: x + pe[offset:offset + T].
          {
            const at::Tensor x = at::randn({B, T, D}).to(dtype);
            const at::Tensor pe = sinusoidal_table(offset + T, D, dtype);
            const auto options = posenc::AddPositionalOptions().offset(offset).training(false);
            print_row("add_positional", dtype_name, B, T, D, memory,
                      time_pair([&] { posenc::add_positional(x, options); },
                                [&] { (x + pe.slice(0, offset, offset + T)); }, budget));
          }
          // rotary, bshd and bhsd: transformers' cos/sin per call and rotate_half.
          const int64_t heads = std::max<int64_t>(1, D / kHeadDim);
          const int64_t k_heads = std::max<int64_t>(1, heads / 4);
          const at::Tensor inv_freq =
              1.0 / at::pow(10000.0, at::arange(0, kHeadDim, 2, at::kFloat) / kHeadDim);
          const at::Tensor positions = (at::arange(T, at::kFloat) + offset).expand({B, T});
          for (const bool bhsd : {false, true}) {
            const auto shape = [&](int64_t h) {
              return bhsd ? std::vector<int64_t>{B, h, T, kHeadDim}
                          : std::vector<int64_t>{B, T, h, kHeadDim};
            };
            const at::Tensor q = at::randn(shape(heads)).to(dtype);
            const at::Tensor k = at::randn(shape(k_heads)).to(dtype);
            const int64_t unsqueeze = bhsd ? 1 : 2;
            const auto rotate_half = [](const at::Tensor& t) {
              const int64_t half = kHeadDim / 2;
              return at::cat({-t.slice(-1, half, kHeadDim), t.slice(-1, 0, half)}, -1);
            };
            const auto eager = [&] {
              const at::Tensor freqs = positions.unsqueeze(-1) * inv_freq;  // [B, T, D/2]
              const at::Tensor emb = at::cat({freqs, freqs}, -1);
              const at::Tensor cos = emb.cos().to(dtype).unsqueeze(unsqueeze);
              const at::Tensor sin = emb.sin().to(dtype).unsqueeze(unsqueeze);
              q* cos + rotate_half(q) * sin;
              k* cos + rotate_half(k) * sin;
            };
            const auto options =
                posenc::RotaryOptions().offset(offset).layout(bhsd ? "bhsd" : "bshd");
            print_row(bhsd ? "rotary_bhsd" : "rotary_bshd", dtype_name, B, T, D, memory,
                      time_pair([&] { posenc::rotary(q, k, options); }, eager, budget));
          }
        }
      }
    }
  }
  return 0;
}
