// CPU loops that vectorize across independent lanes (Philox counters, code channels), built for
// the baseline and for AVX2 and chosen once at run time (__builtin_cpu_supports, not ifunc
// resolvers, which run before the sanitizers' runtimes), so one binary serves every x86-64 CPU
// and uses the wider units where they exist.
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/row_kernels.h"
#include "philox.h"

namespace posenc {
namespace kernels {
namespace cpu {
namespace {

// The AVX2 build of a loop where the CPU has AVX2, else the baseline build (the same function
// off x86-64, where the AVX2 names alias the baseline).
template <typename Function>
Function choose_build(Function baseline, [[maybe_unused]] Function avx2) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return avx2;
#endif
  return baseline;
}

void philox_draws_scalar(uint64_t first_counter, int64_t counters, uint64_t seed,
                         uint16_t* out) {
  for (int64_t c = 0; c < counters; ++c) {
    const Philox4 four = philox4x32_10(first_counter + static_cast<uint64_t>(c), seed);
    for (int slot = 0; slot < 8; ++slot) {
      out[c * 8 + slot] = static_cast<uint16_t>(dropout_draw(four, slot));
    }
  }
}

#if defined(__x86_64__)
// Philox4x32-10 of 4 counters at once in the 64-bit lanes of AVX2 registers: each round's two
// 32 x 32 -> 64-bit products are one vpmuludq each. The same rounds as philox4x32_10.
__attribute__((target("avx2"))) void philox_draws_avx2(uint64_t first_counter, int64_t counters,
                                                       uint64_t seed, uint16_t* out) {
  const __m256i multiplier0 = _mm256_set1_epi64x(0xD2511F53);
  const __m256i multiplier1 = _mm256_set1_epi64x(0xCD9E8D57);
  const __m256i low32 = _mm256_set1_epi64x(0xffffffff);
  int64_t c = 0;
  for (; c + 4 <= counters; c += 4) {
    const uint64_t base = first_counter + static_cast<uint64_t>(c);
    const __m256i counter = _mm256_set_epi64x(static_cast<int64_t>(base + 3),
                                              static_cast<int64_t>(base + 2),
                                              static_cast<int64_t>(base + 1),
                                              static_cast<int64_t>(base));
    __m256i x0 = _mm256_and_si256(counter, low32);
    __m256i x1 = _mm256_srli_epi64(counter, 32);
    __m256i x2 = _mm256_setzero_si256();
    __m256i x3 = _mm256_setzero_si256();
    uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m256i product0 = _mm256_mul_epu32(x0, multiplier0);
      const __m256i product1 = _mm256_mul_epu32(x2, multiplier1);
      const __m256i k0 = _mm256_set1_epi64x(key0), k1 = _mm256_set1_epi64x(key1);
      x0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product1, 32), x1), k0);
      x1 = _mm256_and_si256(product1, low32);
      x2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product0, 32), x3), k1);
      x3 = _mm256_and_si256(product0, low32);
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    // Counter l's words (x0[l], x1[l], x2[l], x3[l]) hold its 8 little-endian 16-bit draws.
    alignas(32) uint64_t words[4][4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(words[0]), x0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words[1]), x1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words[2]), x2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words[3]), x3);
    for (int l = 0; l < 4; ++l) {
      const uint32_t lane[4] = {static_cast<uint32_t>(words[0][l]), static_cast<uint32_t>(words[1][l]),
                                static_cast<uint32_t>(words[2][l]), static_cast<uint32_t>(words[3][l])};
      std::memcpy(out + (c + l) * 8, lane, sizeof(lane));
    }
  }
  philox_draws_scalar(first_counter + static_cast<uint64_t>(c), counters - c, seed, out + c * 8);
}
#else
constexpr auto philox_draws_avx2 = philox_draws_scalar;
#endif

}  // namespace

void philox_draws(uint64_t first_counter, int64_t counters, uint64_t seed, uint16_t* out) {
  static const auto chosen = choose_build(philox_draws_scalar, philox_draws_avx2);
  chosen(first_counter, counters, seed, out);
}

namespace {

// The same loop built twice: for the baseline and for AVX2 (4 doubles a vector).
inline __attribute__((always_inline)) void rotate_loop(const double* __restrict step_sin,
                                                      const double* __restrict step_cos,
                                                      double* __restrict s, double* __restrict c,
                                                      int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    const double sin_next = s[d] * step_cos[d] + c[d] * step_sin[d];
    const double cos_next = c[d] * step_cos[d] - s[d] * step_sin[d];
    s[d] = sin_next;
    c[d] = cos_next;
  }
}

void rotate_baseline(const double* step_sin, const double* step_cos, double* s, double* c,
                     int64_t n) {
  rotate_loop(step_sin, step_cos, s, c, n);
}

#if defined(__x86_64__)
// AVX2 without FMA: the same roundings as the baseline, so both give the same bits.
__attribute__((target("avx2"))) void rotate_avx2(const double* step_sin, const double* step_cos,
                                                 double* s, double* c, int64_t n) {
  rotate_loop(step_sin, step_cos, s, c, n);
}
#else
constexpr auto rotate_avx2 = rotate_baseline;
#endif

}  // namespace

void rotate_channels(const double* step_sin, const double* step_cos, double* s, double* c,
                     int64_t n) {
  static const auto chosen = choose_build(rotate_baseline, rotate_avx2);
  chosen(step_sin, step_cos, s, c, n);
}

}  // namespace cpu
}  // namespace kernels
}  // namespace posenc
