// The floor of the CPU fused loop against a stored table, without posenc: one thread, a
// standalone copy of the loop that makes each code value from an anchor row and a turn row per
// channel pair (x, anchor sin and cos, turn cos and sin: 5 loads, 2 permutes and 5 arithmetic
// operations per 16 lanes) against the plain loop `out = x + pe` that eager PyTorch runs over a
// stored table, over the same rows in cache. Both take turns round by round; prints each one's
// median and plain / fused (above 1: the fused loop is faster). Not a test (make bench-cpp).
//   fused_loop_floor [T] [D] [rounds]        (defaults 2048 256 3000)
// GCC 12 warns inside its own AVX-512 headers (GCC bug 105593), as in kernels/cpu/vectorized.cpp.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kTurnRows = 64;  // positions per anchor, as posenc's walks at D <= 512

// out[d] = scale * x[d] + (anchor_sin[d] * turn_cos[d / 2] + anchor_cos[d] * turn_sin[d / 2]).
__attribute__((target("avx512f"), noinline)) void fused_row_avx512(
    const float* x, const float* anchor_sin, const float* anchor_cos, const float* turn_cos,
    const float* turn_sin, float scale, float* out, int64_t dim) {
  const __m512i widen = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512 scale_lanes = _mm512_set1_ps(scale);
  for (int64_t d = 0; d + 16 <= dim; d += 16) {
    const __m512 c =
        _mm512_permutexvar_ps(widen, _mm512_castps256_ps512(_mm256_loadu_ps(turn_cos + d / 2)));
    const __m512 s =
        _mm512_permutexvar_ps(widen, _mm512_castps256_ps512(_mm256_loadu_ps(turn_sin + d / 2)));
    const __m512 code = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(anchor_sin + d), c),
                                      _mm512_mul_ps(_mm512_loadu_ps(anchor_cos + d), s));
    _mm512_storeu_ps(out + d,
                     _mm512_add_ps(_mm512_mul_ps(scale_lanes, _mm512_loadu_ps(x + d)), code));
  }
}

__attribute__((target("avx2"), noinline)) void fused_row_avx2(
    const float* x, const float* anchor_sin, const float* anchor_cos, const float* turn_cos,
    const float* turn_sin, float scale, float* out, int64_t dim) {
  const __m256i widen = _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0);
  const __m256 scale_lanes = _mm256_set1_ps(scale);
  for (int64_t d = 0; d + 8 <= dim; d += 8) {
    const __m256 c =
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(turn_cos + d / 2)), widen);
    const __m256 s =
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(turn_sin + d / 2)), widen);
    const __m256 code = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(anchor_sin + d), c),
                                      _mm256_mul_ps(_mm256_loadu_ps(anchor_cos + d), s));
    _mm256_storeu_ps(out + d,
                     _mm256_add_ps(_mm256_mul_ps(scale_lanes, _mm256_loadu_ps(x + d)), code));
  }
}

// out[i] = x[i] + pe[i], the stored table's add.
__attribute__((target("avx512f"), noinline)) void add_avx512(const float* x, const float* pe,
                                                             float* out, int64_t n) {
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(pe + i)));
  }
}

__attribute__((target("avx2"), noinline)) void add_avx2(const float* x, const float* pe, float* out,
                                                        int64_t n) {
  for (int64_t i = 0; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(pe + i)));
  }
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t seq = argc > 1 ? std::atoll(argv[1]) : 2048;
  const int64_t dim = argc > 2 ? std::atoll(argv[2]) : 256;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 3000;
  if (seq <= 0 || dim <= 0 || dim % 16 != 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: fused_loop_floor [T > 0] [D, a multiple of 16] [rounds > 0]\n");
    return 2;
  }
  const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512 && !__builtin_cpu_supports("avx2")) {
    std::fprintf(stderr, "needs AVX2\n");
    return 2;
  }
  std::vector<float> x(seq * dim), pe(seq * dim), out(seq * dim);               // [T, D]
  std::vector<float> anchor_sin(dim, 0.6f), anchor_cos(dim, 0.8f);              // [D]
  std::vector<float> turn_cos(kTurnRows * dim / 2), turn_sin(turn_cos.size());  // [64, D / 2]
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>(i % 7) - 3.0f;
    pe[i] = static_cast<float>(i % 5) * 0.25f;
  }
  for (size_t i = 0; i < turn_cos.size(); ++i) {
    turn_cos[i] = 0.9f - static_cast<float>(i % 3) * 0.1f;
    turn_sin[i] = 0.1f + static_cast<float>(i % 3) * 0.1f;
  }
  auto plain = [&] {
    (avx512 ? add_avx512 : add_avx2)(x.data(), pe.data(), out.data(), seq * dim);
  };
  auto fused = [&] {
    const auto row = avx512 ? fused_row_avx512 : fused_row_avx2;
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t k = t % kTurnRows;
      row(x.data() + t * dim, anchor_sin.data(), anchor_cos.data(), turn_cos.data() + k * dim / 2,
          turn_sin.data() + k * dim / 2, 1.0f, out.data() + t * dim, dim);
    }
  };
  auto time_us = [](auto&& loop) {
    const auto start = Clock::now();
    loop();
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  };
  std::vector<double> plain_us, fused_us, ratios;
  for (int r = 0; r < rounds; ++r) {
    plain_us.push_back(time_us(plain));
    fused_us.push_back(time_us(fused));
    ratios.push_back(plain_us.back() / fused_us.back());
  }
  std::printf("T=%lld D=%lld %s: plain x + pe %.1f us, fused %.1f us, plain / fused %.2f\n",
              static_cast<long long>(seq), static_cast<long long>(dim), avx512 ? "AVX-512" : "AVX2",
              median(plain_us), median(fused_us), median(ratios));
  return 0;
}
