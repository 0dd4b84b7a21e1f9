// CPU loops that vectorize across independent lanes (Philox counters, code channels), built for
// the baseline and for AVX2 and chosen once at run time (__builtin_cpu_supports, not ifunc
// resolvers, which run before the sanitizers' runtimes), so one binary serves every x86-64 CPU
// and uses the wider units where they exist.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#if defined(__x86_64__)
// GCC 12 warns inside its own AVX-512 headers about the undefined vectors they start from
// (GCC bug 105593); the diagnostics are located in the header, so they are silenced there.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "cpu/row_kernels.h"
#include "philox.h"

namespace posenc {
namespace kernels {
namespace cpu {

CpuCapability cpu_capability() {
  static const CpuCapability capability = [] {
    CpuCapability supported = CpuCapability::kDefault;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) supported = CpuCapability::kAvx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      supported = CpuCapability::kAvx512;
    }
#endif
    const char* cap = std::getenv("POSENC_CPU_CAPABILITY");
    if (cap == nullptr) return supported;
    const std::string name(cap);
    const CpuCapability wanted = name == "default" ? CpuCapability::kDefault
                                 : name == "avx2"  ? CpuCapability::kAvx2
                                                   : CpuCapability::kAvx512;  // or unknown
    return std::min(wanted, supported);
  }();
  return capability;
}

namespace {

// The build of a loop for the widest instruction set cpu_capability() allows (AVX2 and
// AVX-512 builds exist on x86-64 only; elsewhere their names alias the baseline).
template <typename Function>
Function choose_build(Function baseline, [[maybe_unused]] Function avx2) {
  return cpu_capability() >= CpuCapability::kAvx2 ? avx2 : baseline;
}

template <typename Function>
Function choose_build(Function baseline, [[maybe_unused]] Function avx2,
                      [[maybe_unused]] Function avx512) {
  return cpu_capability() >= CpuCapability::kAvx512 ? avx512 : choose_build(baseline, avx2);
}

// Calls write_group(counter, destination) for each group of kCounters Philox counters that the
// elements [first, first + count) touch, counter being the group's first: a whole group is
// written straight to out, a cut one to a buffer whose part in the range is then copied.
template <int64_t kCounters, typename acc_t, typename WriteGroup>
inline __attribute__((always_inline)) void for_dropout_groups(uint64_t first, int64_t count,
                                                              acc_t* out,
                                                              WriteGroup&& write_group) {
  constexpr uint64_t kGroup = kCounters * kDropoutElementsPerCounter;
  const uint64_t end = first + static_cast<uint64_t>(count);
  alignas(64) acc_t cut_group[kGroup];
  for (uint64_t group_first = first - first % kDropoutElementsPerCounter; group_first < end;
       group_first += kGroup) {
    const uint64_t counter = group_first / kDropoutElementsPerCounter;
    if (group_first >= first && group_first + kGroup <= end) {
      write_group(counter, out + (group_first - first));
      continue;
    }
    write_group(counter, cut_group);
    const uint64_t begin = std::max(first, group_first);
    const uint64_t stop = std::min(end, group_first + kGroup);
    std::copy(cut_group + (begin - group_first), cut_group + (stop - group_first),
              out + (begin - first));
  }
}

template <typename acc_t>
void dropout_multipliers_scalar(const Dropout& dropout, uint64_t first, int64_t count, acc_t* out) {
  const acc_t keep_scale = static_cast<acc_t>(dropout.keep_scale);
  int64_t k = 0;
  while (k < count) {
    const uint64_t element = first + static_cast<uint64_t>(k);
    const Philox4 four = philox4x32_10(element / kDropoutElementsPerCounter, dropout.seed);
    for (int slot = static_cast<int>(element % kDropoutElementsPerCounter);
         slot < kDropoutElementsPerCounter && k < count; ++slot, ++k) {
      out[k] = dropout_draw(four, slot) < dropout.keep_threshold ? keep_scale : acc_t(0);
    }
  }
}

#if defined(__x86_64__)
// The drop masks of the 32 elements of counters first_counter .. first_counter + 3: 16-bit
// lanes, all ones where the element is dropped, elements 0-15 in drop[0] and 16-31 in drop[1].
// Philox4x32-10 runs on the 4 counters at once in the 64-bit lanes of AVX2 registers (each
// round's two 32 x 32 -> 64-bit products are one vpmuludq each): the same rounds as
// philox4x32_10.
// The Philox keys of each round, in every 64-bit lane: the same for every counter of a call.
struct PhiloxRoundKeys {
  __m256i key0[10];
  __m256i key1[10];
};

__attribute__((target("avx2"))) inline PhiloxRoundKeys philox_round_keys(uint64_t seed) {
  PhiloxRoundKeys keys;
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    keys.key0[round] = _mm256_set1_epi64x(key0);
    keys.key1[round] = _mm256_set1_epi64x(key1);
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  return keys;
}

__attribute__((target("avx2"))) inline void drop_masks_avx2(uint64_t first_counter,
                                                            const Dropout& dropout,
                                                            const PhiloxRoundKeys& keys,
                                                            __m256i drop[2]) {
  const __m256i multiplier0 = _mm256_set1_epi64x(0xD2511F53);
  const __m256i multiplier1 = _mm256_set1_epi64x(0xCD9E8D57);
  const __m256i low32 = _mm256_set1_epi64x(0xffffffff);
  const __m256i counter = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(first_counter)),
                                           _mm256_set_epi64x(3, 2, 1, 0));
  __m256i x0 = _mm256_and_si256(counter, low32);
  __m256i x1 = _mm256_srli_epi64(counter, 32);
  __m256i x2 = _mm256_setzero_si256();
  __m256i x3 = _mm256_setzero_si256();
  for (int round = 0; round < 10; ++round) {
    const __m256i product0 = _mm256_mul_epu32(x0, multiplier0);
    const __m256i product1 = _mm256_mul_epu32(x2, multiplier1);
    x0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product1, 32), x1), keys.key0[round]);
    x1 = _mm256_and_si256(product1, low32);
    x2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product0, 32), x3), keys.key1[round]);
    x3 = _mm256_and_si256(product0, low32);
  }
  // Counter l's draws, slots 0-3 (words 0, 1) and 4-7 (words 2, 3), as 64-bit lanes l; then
  // counters 0 and 2 (unpacklo) and 1 and 3 (unpackhi) per 128-bit half, put in order.
  const __m256i slots0to3 = _mm256_or_si256(x0, _mm256_slli_epi64(x1, 32));
  const __m256i slots4to7 = _mm256_or_si256(x2, _mm256_slli_epi64(x3, 32));
  const __m256i counters02 = _mm256_unpacklo_epi64(slots0to3, slots4to7);
  const __m256i counters13 = _mm256_unpackhi_epi64(slots0to3, slots4to7);
  const __m256i draws[2] = {_mm256_permute2x128_si256(counters02, counters13, 0x20),
                            _mm256_permute2x128_si256(counters02, counters13, 0x31)};
  // Kept when draw < keep_threshold: (threshold - draw) saturates to 0 exactly when dropped.
  // A threshold of 2^16 keeps every draw.
  for (int h = 0; h < 2; ++h) {
    if (dropout.keep_threshold > 0xffffu) {
      drop[h] = _mm256_setzero_si256();
    } else {
      const __m256i threshold = _mm256_set1_epi16(static_cast<int16_t>(dropout.keep_threshold));
      drop[h] = _mm256_cmpeq_epi16(_mm256_subs_epu16(threshold, draws[h]), _mm256_setzero_si256());
    }
  }
}

// The multipliers (0 or keep_scale) of 8 elements from their 16-bit drop masks.
__attribute__((target("avx2"))) inline void store_eight_multipliers(__m128i drop, double keep_scale,
                                                                    float* out) {
  const __m256 dropped = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(drop));
  _mm256_storeu_ps(out, _mm256_andnot_ps(dropped, _mm256_set1_ps(static_cast<float>(keep_scale))));
}

__attribute__((target("avx2"))) inline void store_eight_multipliers(__m128i drop, double keep_scale,
                                                                    double* out) {
  for (int e = 0; e < 2; ++e) {
    const __m128i four = e == 0 ? drop : _mm_srli_si128(drop, 8);
    const __m256d dropped = _mm256_castsi256_pd(_mm256_cvtepi16_epi64(four));
    _mm256_storeu_pd(out + 4 * e, _mm256_andnot_pd(dropped, _mm256_set1_pd(keep_scale)));
  }
}

// The 32 multipliers of counters first_counter .. + 3 into out.
template <typename acc_t>
__attribute__((target("avx2"))) inline void multipliers_avx2(uint64_t first_counter,
                                                             const Dropout& dropout,
                                                             const PhiloxRoundKeys& keys,
                                                             acc_t* out) {
  __m256i drop[2];
  drop_masks_avx2(first_counter, dropout, keys, drop);
  for (int h = 0; h < 2; ++h) {
    store_eight_multipliers(_mm256_castsi256_si128(drop[h]), dropout.keep_scale, out + 16 * h);
    store_eight_multipliers(_mm256_extracti128_si256(drop[h], 1), dropout.keep_scale,
                            out + 16 * h + 8);
  }
}

template <typename acc_t>
__attribute__((target("avx2"))) void dropout_multipliers_avx2(const Dropout& dropout,
                                                              uint64_t first, int64_t count,
                                                              acc_t* out) {
  const PhiloxRoundKeys keys = philox_round_keys(dropout.seed);
  for_dropout_groups<4>(first, count, out,
                        [&](uint64_t counter, acc_t* group) __attribute__((target("avx2"))) {
                          multipliers_avx2(counter, dropout, keys, group);
                        });
}

// The 64 multipliers of counters first_counter .. + 7 with AVX-512: Philox on 8 counters in the
// 64-bit lanes (each round's XORs of three terms one vpternlogq), and the keep test of 32 draws
// at once into a mask register.
template <typename acc_t>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void multipliers_avx512(
    uint64_t first_counter, const Dropout& dropout, const __m512i (&round_keys)[2][10],
    acc_t* out) {
  const __m512i multiplier0 = _mm512_set1_epi64(0xD2511F53);
  const __m512i multiplier1 = _mm512_set1_epi64(0xCD9E8D57);
  const __m512i low32 = _mm512_set1_epi64(0xffffffff);
  const __m512i counter = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(first_counter)),
                                           _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  __m512i x0 = _mm512_and_si512(counter, low32);
  __m512i x1 = _mm512_srli_epi64(counter, 32);
  __m512i x2 = _mm512_setzero_si512();
  __m512i x3 = _mm512_setzero_si512();
  constexpr int kXor3 = 0x96;  // a ^ b ^ c
  for (int round = 0; round < 10; ++round) {
    const __m512i product0 = _mm512_mul_epu32(x0, multiplier0);
    const __m512i product1 = _mm512_mul_epu32(x2, multiplier1);
    x0 =
        _mm512_ternarylogic_epi64(_mm512_srli_epi64(product1, 32), x1, round_keys[0][round], kXor3);
    x1 = _mm512_and_si512(product1, low32);
    x2 =
        _mm512_ternarylogic_epi64(_mm512_srli_epi64(product0, 32), x3, round_keys[1][round], kXor3);
    x3 = _mm512_and_si512(product0, low32);
  }
  // Counter l's draws, slots 0-3 and 4-7, as 64-bit lanes l; unpacklo gives counters 0, 2, 4, 6
  // and unpackhi 1, 3, 5, 7 (one per 128-bit lane), which the permutes put in order.
  const __m512i slots0to3 = _mm512_or_si512(x0, _mm512_slli_epi64(x1, 32));
  const __m512i slots4to7 = _mm512_or_si512(x2, _mm512_slli_epi64(x3, 32));
  const __m512i even = _mm512_unpacklo_epi64(slots0to3, slots4to7);
  const __m512i odd = _mm512_unpackhi_epi64(slots0to3, slots4to7);
  const __m512i draws[2] = {
      _mm512_permutex2var_epi64(even, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), odd),
      _mm512_permutex2var_epi64(even, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), odd)};
  const bool keep_all = dropout.keep_threshold > 0xffffu;
  const __m512i threshold = _mm512_set1_epi16(static_cast<int16_t>(dropout.keep_threshold));
  for (int h = 0; h < 2; ++h) {
    const __mmask32 keep = keep_all ? ~__mmask32{0} : _mm512_cmplt_epu16_mask(draws[h], threshold);
    if constexpr (sizeof(acc_t) == 4) {
      const __m512 keep_scale = _mm512_set1_ps(static_cast<float>(dropout.keep_scale));
      for (int q = 0; q < 2; ++q) {
        _mm512_storeu_ps(out + 32 * h + 16 * q,
                         _mm512_maskz_mov_ps(static_cast<__mmask16>(keep >> (16 * q)), keep_scale));
      }
    } else {
      const __m512d keep_scale = _mm512_set1_pd(dropout.keep_scale);
      for (int q = 0; q < 4; ++q) {
        _mm512_storeu_pd(out + 32 * h + 8 * q,
                         _mm512_maskz_mov_pd(static_cast<__mmask8>(keep >> (8 * q)), keep_scale));
      }
    }
  }
}

template <typename acc_t>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dropout_multipliers_avx512(
    const Dropout& dropout, uint64_t first, int64_t count, acc_t* out) {
  __m512i round_keys[2][10];
  uint32_t key0 = static_cast<uint32_t>(dropout.seed),
           key1 = static_cast<uint32_t>(dropout.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    round_keys[0][round] = _mm512_set1_epi64(key0);
    round_keys[1][round] = _mm512_set1_epi64(key1);
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  for_dropout_groups<8>(first, count, out,
                        [&](uint64_t counter, acc_t* group)
                            __attribute__((target("avx512f,avx512bw,avx512vl"))) {
                              multipliers_avx512(counter, dropout, round_keys, group);
                            });
}
#else
template <typename acc_t>
constexpr auto dropout_multipliers_avx2 = dropout_multipliers_scalar<acc_t>;
template <typename acc_t>
constexpr auto dropout_multipliers_avx512 = dropout_multipliers_scalar<acc_t>;
#endif

}  // namespace

template <typename acc_t>
void dropout_multipliers(const Dropout& dropout, uint64_t first, int64_t count, acc_t* out) {
  static const auto chosen =
      choose_build(dropout_multipliers_scalar<acc_t>, dropout_multipliers_avx2<acc_t>,
                   dropout_multipliers_avx512<acc_t>);
  chosen(dropout, first, count, out);
}

template void dropout_multipliers<float>(const Dropout&, uint64_t, int64_t, float*);
template void dropout_multipliers<double>(const Dropout&, uint64_t, int64_t, double*);

namespace {

// The same loop built twice: for the baseline and for AVX2 (4 doubles a vector).
// (from_s, from_c) may be (s, c): each element is read before it is written.
inline __attribute__((always_inline)) void rotate_loop(const double* __restrict step_sin,
                                                       const double* __restrict step_cos,
                                                       const double* from_s, const double* from_c,
                                                       double* s, double* c, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    const double sin_next = from_s[d] * step_cos[d] + from_c[d] * step_sin[d];
    const double cos_next = from_c[d] * step_cos[d] - from_s[d] * step_sin[d];
    s[d] = sin_next;
    c[d] = cos_next;
  }
}

void rotate_baseline(const double* step_sin, const double* step_cos, const double* from_s,
                     const double* from_c, double* s, double* c, int64_t n) {
  rotate_loop(step_sin, step_cos, from_s, from_c, s, c, n);
}

template <typename acc_t>
inline __attribute__((always_inline)) void anchor_code_loop(const double* __restrict amplitude,
                                                            const double* __restrict s,
                                                            const double* __restrict c,
                                                            acc_t* __restrict code_sin,
                                                            acc_t* __restrict code_cos, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    code_sin[d] = static_cast<acc_t>(amplitude[d] * s[d]);
    code_cos[d] = static_cast<acc_t>(amplitude[d] * c[d]);
  }
}

template <typename acc_t>
void anchor_code_baseline(const double* amplitude, const double* s, const double* c,
                          acc_t* code_sin, acc_t* code_cos, int64_t n) {
  anchor_code_loop(amplitude, s, c, code_sin, code_cos, n);
}

#if defined(__x86_64__)
// AVX2 and AVX-512 without FMA: the same roundings as the baseline, so all give the same bits.
__attribute__((target("avx2"))) void rotate_avx2(const double* step_sin, const double* step_cos,
                                                 const double* from_s, const double* from_c,
                                                 double* s, double* c, int64_t n) {
  rotate_loop(step_sin, step_cos, from_s, from_c, s, c, n);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void rotate_avx512(
    const double* step_sin, const double* step_cos, const double* from_s, const double* from_c,
    double* s, double* c, int64_t n) {
  rotate_loop(step_sin, step_cos, from_s, from_c, s, c, n);
}

template <typename acc_t>
__attribute__((target("avx2"))) void anchor_code_avx2(const double* amplitude, const double* s,
                                                      const double* c, acc_t* code_sin,
                                                      acc_t* code_cos, int64_t n) {
  anchor_code_loop(amplitude, s, c, code_sin, code_cos, n);
}

template <typename acc_t>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void anchor_code_avx512(
    const double* amplitude, const double* s, const double* c, acc_t* code_sin, acc_t* code_cos,
    int64_t n) {
  anchor_code_loop(amplitude, s, c, code_sin, code_cos, n);
}
#else
constexpr auto rotate_avx2 = rotate_baseline;
constexpr auto rotate_avx512 = rotate_baseline;
template <typename acc_t>
constexpr auto anchor_code_avx2 = anchor_code_baseline<acc_t>;
template <typename acc_t>
constexpr auto anchor_code_avx512 = anchor_code_baseline<acc_t>;
#endif

}  // namespace

void rotate_channels(const double* step_sin, const double* step_cos, const double* from_s,
                     const double* from_c, double* s, double* c, int64_t n) {
  static const auto chosen = choose_build(rotate_baseline, rotate_avx2, rotate_avx512);
  chosen(step_sin, step_cos, from_s, from_c, s, c, n);
}

void anchor_code(const double* amplitude, const double* s, const double* c, float* code_sin,
                 float* code_cos, int64_t n) {
  static const auto chosen =
      choose_build(anchor_code_baseline<float>, anchor_code_avx2<float>, anchor_code_avx512<float>);
  chosen(amplitude, s, c, code_sin, code_cos, n);
}

void anchor_code(const double* amplitude, const double* s, const double* c, double* code_sin,
                 double* code_cos, int64_t n) {
  static const auto chosen = choose_build(anchor_code_baseline<double>, anchor_code_avx2<double>,
                                          anchor_code_avx512<double>);
  chosen(amplitude, s, c, code_sin, code_cos, n);
}

namespace {

template <typename acc_t>
inline __attribute__((always_inline)) void rotate_from_anchor_loop(
    const acc_t* __restrict anchor_sin, const acc_t* __restrict anchor_cos,
    const acc_t* __restrict turn_cos, const acc_t* __restrict turn_sin, acc_t* __restrict row,
    int64_t n) {
  for (int64_t d = 0; d < n; ++d)
    row[d] = rotated_code(anchor_sin[d], anchor_cos[d], turn_cos[d], turn_sin[d]);
}

template <typename acc_t>
void rotate_from_anchor_baseline(const acc_t* anchor_sin, const acc_t* anchor_cos,
                                 const acc_t* turn_cos, const acc_t* turn_sin, acc_t* row,
                                 int64_t n) {
  rotate_from_anchor_loop(anchor_sin, anchor_cos, turn_cos, turn_sin, row, n);
}

#if defined(__x86_64__)
template <typename acc_t>
__attribute__((target("avx2"))) void rotate_from_anchor_avx2(const acc_t* anchor_sin,
                                                             const acc_t* anchor_cos,
                                                             const acc_t* turn_cos,
                                                             const acc_t* turn_sin, acc_t* row,
                                                             int64_t n) {
  rotate_from_anchor_loop(anchor_sin, anchor_cos, turn_cos, turn_sin, row, n);
}
#else
template <typename acc_t>
constexpr auto rotate_from_anchor_avx2 = rotate_from_anchor_baseline<acc_t>;
#endif

}  // namespace

void rotate_from_anchor(const float* anchor_sin, const float* anchor_cos, const float* turn_cos,
                        const float* turn_sin, float* row, int64_t n) {
  static const auto chosen =
      choose_build(rotate_from_anchor_baseline<float>, rotate_from_anchor_avx2<float>);
  chosen(anchor_sin, anchor_cos, turn_cos, turn_sin, row, n);
}

void rotate_from_anchor(const double* anchor_sin, const double* anchor_cos, const double* turn_cos,
                        const double* turn_sin, double* row, int64_t n) {
  static const auto chosen =
      choose_build(rotate_from_anchor_baseline<double>, rotate_from_anchor_avx2<double>);
  chosen(anchor_sin, anchor_cos, turn_cos, turn_sin, row, n);
}

namespace {

template <typename acc_t>
inline __attribute__((always_inline)) void evaluate_codes_loop(
    double position, const double* __restrict high, const double* __restrict middle,
    const double* __restrict low, const double* __restrict phase, const acc_t* __restrict amplitude,
    acc_t* __restrict out, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    out[d] = amplitude[d] *
             sin_turns<acc_t>(reduced_turns(position, high[d], middle[d], low[d], phase[d]));
  }
}

template <typename acc_t>
void evaluate_codes_baseline(double position, const double* high, const double* middle,
                             const double* low, const double* phase, const acc_t* amplitude,
                             acc_t* out, int64_t n) {
  evaluate_codes_loop(position, high, middle, low, phase, amplitude, out, n);
}

#if defined(__x86_64__)
// AVX2 without FMA, as rotate_avx2: the same roundings as the baseline, so the same bits.
template <typename acc_t>
__attribute__((target("avx2"))) void evaluate_codes_avx2(double position, const double* high,
                                                         const double* middle, const double* low,
                                                         const double* phase,
                                                         const acc_t* amplitude, acc_t* out,
                                                         int64_t n) {
  evaluate_codes_loop(position, high, middle, low, phase, amplitude, out, n);
}
#else
template <typename acc_t>
constexpr auto evaluate_codes_avx2 = evaluate_codes_baseline<acc_t>;
#endif

}  // namespace

void evaluate_codes(double position, const double* high, const double* middle, const double* low,
                    const double* phase, const float* amplitude, float* out, int64_t n) {
  static const auto chosen =
      choose_build(evaluate_codes_baseline<float>, evaluate_codes_avx2<float>);
  chosen(position, high, middle, low, phase, amplitude, out, n);
}

void evaluate_codes(double position, const double* high, const double* middle, const double* low,
                    const double* phase, const double* amplitude, double* out, int64_t n) {
  static const auto chosen =
      choose_build(evaluate_codes_baseline<double>, evaluate_codes_avx2<double>);
  chosen(position, high, middle, low, phase, amplitude, out, n);
}

namespace {

inline __attribute__((always_inline)) void exact_sin_cos_loop(
    double position, const double* __restrict high, const double* __restrict middle,
    const double* __restrict low, const double* __restrict phase, double* __restrict sin_out,
    double* __restrict cos_out, int64_t n) {
  for (int64_t d = 0; d < n; ++d) {
    const SinCos<double> angle =
        sincos_turns<double>(reduced_turns(position, high[d], middle[d], low[d], phase[d]));
    sin_out[d] = angle.sin;
    cos_out[d] = angle.cos;
  }
}

void exact_sin_cos_baseline(double position, const double* high, const double* middle,
                            const double* low, const double* phase, double* sin_out,
                            double* cos_out, int64_t n) {
  exact_sin_cos_loop(position, high, middle, low, phase, sin_out, cos_out, n);
}

#if defined(__x86_64__)
// Without FMA, as rotate_avx2: the same roundings as the baseline, so the same bits.
__attribute__((target("avx2"))) void exact_sin_cos_avx2(double position, const double* high,
                                                        const double* middle, const double* low,
                                                        const double* phase, double* sin_out,
                                                        double* cos_out, int64_t n) {
  exact_sin_cos_loop(position, high, middle, low, phase, sin_out, cos_out, n);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void exact_sin_cos_avx512(
    double position, const double* high, const double* middle, const double* low,
    const double* phase, double* sin_out, double* cos_out, int64_t n) {
  exact_sin_cos_loop(position, high, middle, low, phase, sin_out, cos_out, n);
}
#else
constexpr auto exact_sin_cos_avx2 = exact_sin_cos_baseline;
constexpr auto exact_sin_cos_avx512 = exact_sin_cos_baseline;
#endif

}  // namespace

void exact_sin_cos(double position, const double* high, const double* middle, const double* low,
                   const double* phase, double* sin_out, double* cos_out, int64_t n) {
  static const auto chosen =
      choose_build(exact_sin_cos_baseline, exact_sin_cos_avx2, exact_sin_cos_avx512);
  chosen(position, high, middle, low, phase, sin_out, cos_out, n);
}

namespace {

template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
void combine_contiguous_baseline(const scalar_t* in, const RowCode<float>& pe, const float* mask,
                                 float scale, scalar_t* out, int64_t dim, const RowSpan& span) {
  combine_span_loop<kCombine, kMasked, kRotated>(in, 1, pe, mask, scale, out, 1, dim, span);
}

#if defined(__x86_64__)
template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
__attribute__((target("avx2"))) void combine_contiguous_avx2(const scalar_t* in,
                                                             const RowCode<float>& pe,
                                                             const float* mask, float scale,
                                                             scalar_t* out, int64_t dim,
                                                             const RowSpan& span) {
  combine_span_loop<kCombine, kMasked, kRotated>(in, 1, pe, mask, scale, out, 1, dim, span);
}

template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void combine_contiguous_avx512(
    const scalar_t* in, const RowCode<float>& pe, const float* mask, float scale, scalar_t* out,
    int64_t dim, const RowSpan& span) {
  combine_span_loop<kCombine, kMasked, kRotated>(in, 1, pe, mask, scale, out, 1, dim, span);
}

// float16 through F16C, eight lanes an instruction, instead of the bit arithmetic of
// float16_to_float and float_to_float16 (about 15 operations an element): exact widening, and
// rounding to nearest even, as those do. A NaN is written as their quiet NaN (sign | 0x7e00),
// where F16C would keep its payload, so that every build gives the same bits.
__attribute__((target("avx2,f16c"))) void halves_to_floats(const Float16* in, float* out,
                                                           int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(halves));
  }
  for (; i < n; ++i) out[i] = float16_to_float(in[i]);
}

__attribute__((target("avx2,f16c"))) void floats_to_halves(const float* in, Float16* out,
                                                           int64_t n) {
  const __m128i quiet_nan = _mm_set1_epi16(0x7e00);
  const __m128i sign = _mm_set1_epi16(static_cast<int16_t>(0x8000));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 floats = _mm256_loadu_ps(in + i);
    const __m128i halves = _mm256_cvtps_ph(floats, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(floats, floats, _CMP_UNORD_Q));
    const __m128i nan_lanes =
        _mm_packs_epi32(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1));
    const __m128i canonical = _mm_or_si128(_mm_and_si128(halves, sign), quiet_nan);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_blendv_epi8(halves, canonical, nan_lanes));
  }
  for (; i < n; ++i) out[i] = float_to_float16(in[i]);
}

// Float16 rows: chunks widened to float, the float loop, then narrowed; the same float
// arithmetic in the same order as the float16 loop, so the same bits.
template <Combine kCombine, bool kMasked, bool kRotated>
__attribute__((target("avx2,f16c"))) void combine_halves_f16c(const Float16* in,
                                                              const RowCode<float>& pe,
                                                              const float* mask, float scale,
                                                              Float16* out, int64_t dim,
                                                              const RowSpan& span) {
  constexpr int64_t kChunk = 256;
  alignas(32) float in_floats[kChunk];
  alignas(32) float out_floats[kChunk];
  for (int64_t r = 0; r < span.count; ++r) {
    const SpanRow<Float16, float> row = span_row(span, r, dim, in, pe, mask, out);
    for (int64_t d0 = 0; d0 < dim; d0 += kChunk) {
      const int64_t count = std::min(kChunk, dim - d0);
      halves_to_floats(row.in + d0, in_floats, count);
      combine_row_loop<kCombine, kMasked, kRotated>(in_floats, 1, row.pe.from_channel(d0),
                                                    kMasked ? row.mask + d0 : nullptr, scale,
                                                    out_floats, 1, count);
      floats_to_halves(out_floats, row.out + d0, count);
    }
  }
}
#else
template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
constexpr auto combine_contiguous_avx2 =
    combine_contiguous_baseline<kCombine, kMasked, kRotated, scalar_t>;
template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
constexpr auto combine_contiguous_avx512 =
    combine_contiguous_baseline<kCombine, kMasked, kRotated, scalar_t>;
#endif

}  // namespace

template <Combine kCombine, bool kMasked, bool kRotated, typename scalar_t>
void combine_contiguous(const scalar_t* in, const RowCode<float>& pe, const float* mask,
                        float scale, scalar_t* out, int64_t dim, const RowSpan& span) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, Float16>) {
    static const bool f16c =
        cpu_capability() >= CpuCapability::kAvx2 && __builtin_cpu_supports("f16c");
    if (f16c) {
      combine_halves_f16c<kCombine, kMasked, kRotated>(in, pe, mask, scale, out, dim, span);
      return;
    }
  }
#endif
  static const auto chosen =
      choose_build(combine_contiguous_baseline<kCombine, kMasked, kRotated, scalar_t>,
                   combine_contiguous_avx2<kCombine, kMasked, kRotated, scalar_t>,
                   combine_contiguous_avx512<kCombine, kMasked, kRotated, scalar_t>);
  chosen(in, pe, mask, scale, out, dim, span);
}

namespace {

// combine_row_loop's value of one element, from a code with turns per channel pair.
template <Combine kCombine, bool kMasked>
inline __attribute__((always_inline)) void combine_pairs_scalar(
    const float* __restrict in, int64_t in_stride, const RowCode<float>& pe,
    const float* __restrict mask, float scale, float* __restrict out, int64_t out_stride,
    int64_t begin, int64_t dim) {
  for (int64_t d = begin; d < dim; ++d) {
    const float code =
        rotated_code(pe.anchor_sin[d], pe.anchor_cos[d], pe.turn_cos[d / 2], pe.turn_sin[d / 2]);
    const float x = kCombine == Combine::kPositionOnly ? 0.0f : in[d * in_stride];
    out[d * out_stride] = combined_value<kCombine, kMasked>(scale, x, code, mask, d);
  }
}

template <Combine kCombine, bool kMasked>
void combine_pairs_baseline(const float* in, const RowCode<float>& pe, const float* mask,
                            float scale, float* out, int64_t dim, const RowSpan& span) {
  for (int64_t r = 0; r < span.count; ++r) {
    const SpanRow<float, float> row = span_row(span, r, dim, in, pe, mask, out);
    combine_pairs_scalar<kCombine, kMasked>(row.in, 1, row.pe, row.mask, scale, row.out, 1, 0, dim);
  }
}

#if defined(__x86_64__)
// As combined_value, operation for operation (no FMA), 8 or 16 lanes at a time: each
// pair's turn is loaded once and widened to its two channels' lanes by a permute.
template <Combine kCombine, bool kMasked>
__attribute__((target("avx2"))) void combine_pair_row_avx2(const float* in,
                                                           const RowCode<float>& pe,
                                                           const float* mask, float scale,
                                                           float* out, int64_t dim) {
  const __m256i widen = _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0);  // pair i to lanes 2i, 2i + 1
  const __m256 scale_lanes = _mm256_set1_ps(scale);
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    const __m256 turn_cos =
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(pe.turn_cos + d / 2)), widen);
    const __m256 turn_sin =
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(pe.turn_sin + d / 2)), widen);
    const __m256 code = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(pe.anchor_sin + d), turn_cos),
                                      _mm256_mul_ps(_mm256_loadu_ps(pe.anchor_cos + d), turn_sin));
    __m256 y = code;
    if constexpr (kCombine == Combine::kAdd) {
      y = _mm256_add_ps(_mm256_mul_ps(scale_lanes, _mm256_loadu_ps(in + d)), code);
    } else if constexpr (kCombine == Combine::kMul) {
      y = _mm256_mul_ps(_mm256_mul_ps(scale_lanes, _mm256_loadu_ps(in + d)), code);
    }
    if constexpr (kMasked) y = _mm256_mul_ps(y, _mm256_loadu_ps(mask + d));
    _mm256_storeu_ps(out + d, y);
  }
  combine_pairs_scalar<kCombine, kMasked>(in, 1, pe, mask, scale, out, 1, d, dim);
}

template <Combine kCombine, bool kMasked>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void combine_pair_row_avx512(
    const float* in, const RowCode<float>& pe, const float* mask, float scale, float* out,
    int64_t dim) {
  const __m512i widen = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512 scale_lanes = _mm512_set1_ps(scale);
  int64_t d = 0;
  for (; d + 16 <= dim; d += 16) {
    // The permute reads lanes 0-7 only, so lanes 8-15 of the cast may hold anything.
    const __m512 turn_cos =
        _mm512_permutexvar_ps(widen, _mm512_castps256_ps512(_mm256_loadu_ps(pe.turn_cos + d / 2)));
    const __m512 turn_sin =
        _mm512_permutexvar_ps(widen, _mm512_castps256_ps512(_mm256_loadu_ps(pe.turn_sin + d / 2)));
    const __m512 code = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(pe.anchor_sin + d), turn_cos),
                                      _mm512_mul_ps(_mm512_loadu_ps(pe.anchor_cos + d), turn_sin));
    __m512 y = code;
    if constexpr (kCombine == Combine::kAdd) {
      y = _mm512_add_ps(_mm512_mul_ps(scale_lanes, _mm512_loadu_ps(in + d)), code);
    } else if constexpr (kCombine == Combine::kMul) {
      y = _mm512_mul_ps(_mm512_mul_ps(scale_lanes, _mm512_loadu_ps(in + d)), code);
    }
    if constexpr (kMasked) y = _mm512_mul_ps(y, _mm512_loadu_ps(mask + d));
    _mm512_storeu_ps(out + d, y);
  }
  combine_pairs_scalar<kCombine, kMasked>(in, 1, pe, mask, scale, out, 1, d, dim);
}

template <Combine kCombine, bool kMasked>
__attribute__((target("avx2"))) void combine_pairs_avx2(const float* in, const RowCode<float>& pe,
                                                        const float* mask, float scale, float* out,
                                                        int64_t dim, const RowSpan& span) {
  for (int64_t r = 0; r < span.count; ++r) {
    const SpanRow<float, float> row = span_row(span, r, dim, in, pe, mask, out);
    combine_pair_row_avx2<kCombine, kMasked>(row.in, row.pe, row.mask, scale, row.out, dim);
  }
}

template <Combine kCombine, bool kMasked>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void combine_pairs_avx512(
    const float* in, const RowCode<float>& pe, const float* mask, float scale, float* out,
    int64_t dim, const RowSpan& span) {
  for (int64_t r = 0; r < span.count; ++r) {
    const SpanRow<float, float> row = span_row(span, r, dim, in, pe, mask, out);
    combine_pair_row_avx512<kCombine, kMasked>(row.in, row.pe, row.mask, scale, row.out, dim);
  }
}
#else
template <Combine kCombine, bool kMasked>
constexpr auto combine_pairs_avx2 = combine_pairs_baseline<kCombine, kMasked>;
template <Combine kCombine, bool kMasked>
constexpr auto combine_pairs_avx512 = combine_pairs_baseline<kCombine, kMasked>;
#endif

}  // namespace

template <Combine kCombine, bool kMasked>
void combine_pairs(const float* in, int64_t in_stride, const RowCode<float>& pe, const float* mask,
                   float scale, float* out, int64_t out_stride, int64_t dim, const RowSpan& span) {
  if ((in_stride != 1 && kCombine != Combine::kPositionOnly) || out_stride != 1) {
    for (int64_t r = 0; r < span.count; ++r) {
      const SpanRow<float, float> row = span_row(span, r, dim, in, pe, mask, out);
      combine_pairs_scalar<kCombine, kMasked>(row.in, in_stride, row.pe, row.mask, scale, row.out,
                                              out_stride, 0, dim);
    }
    return;
  }
  static const auto chosen =
      choose_build(combine_pairs_baseline<kCombine, kMasked>, combine_pairs_avx2<kCombine, kMasked>,
                   combine_pairs_avx512<kCombine, kMasked>);
  chosen(in, pe, mask, scale, out, dim, span);
}

template void combine_pairs<Combine::kAdd, false>(const float*, int64_t, const RowCode<float>&,
                                                  const float*, float, float*, int64_t, int64_t,
                                                  const RowSpan&);
template void combine_pairs<Combine::kAdd, true>(const float*, int64_t, const RowCode<float>&,
                                                 const float*, float, float*, int64_t, int64_t,
                                                 const RowSpan&);
template void combine_pairs<Combine::kMul, false>(const float*, int64_t, const RowCode<float>&,
                                                  const float*, float, float*, int64_t, int64_t,
                                                  const RowSpan&);
template void combine_pairs<Combine::kMul, true>(const float*, int64_t, const RowCode<float>&,
                                                 const float*, float, float*, int64_t, int64_t,
                                                 const RowSpan&);
template void combine_pairs<Combine::kPositionOnly, false>(const float*, int64_t,
                                                           const RowCode<float>&, const float*,
                                                           float, float*, int64_t, int64_t,
                                                           const RowSpan&);
template void combine_pairs<Combine::kPositionOnly, true>(const float*, int64_t,
                                                          const RowCode<float>&, const float*,
                                                          float, float*, int64_t, int64_t,
                                                          const RowSpan&);

// Every combine with an input, masked or not, from a code row or rotated, for float32 and both
// 16-bit types.
#define POSENC_COMBINE_CONTIGUOUS(combine, masked, rotated)                            \
  template void combine_contiguous<Combine::combine, masked, rotated, BFloat16>(       \
      const BFloat16*, const RowCode<float>&, const float*, float, BFloat16*, int64_t, \
      const RowSpan&);                                                                 \
  template void combine_contiguous<Combine::combine, masked, rotated, Float16>(        \
      const Float16*, const RowCode<float>&, const float*, float, Float16*, int64_t,   \
      const RowSpan&);                                                                 \
  template void combine_contiguous<Combine::combine, masked, rotated, float>(          \
      const float*, const RowCode<float>&, const float*, float, float*, int64_t, const RowSpan&);
#define POSENC_COMBINE_CONTIGUOUS_CODES(combine)   \
  POSENC_COMBINE_CONTIGUOUS(combine, false, false) \
  POSENC_COMBINE_CONTIGUOUS(combine, false, true)  \
  POSENC_COMBINE_CONTIGUOUS(combine, true, false)  \
  POSENC_COMBINE_CONTIGUOUS(combine, true, true)
POSENC_COMBINE_CONTIGUOUS_CODES(kAdd)
POSENC_COMBINE_CONTIGUOUS_CODES(kMul)
POSENC_COMBINE_CONTIGUOUS_CODES(kScaleOnly)
#undef POSENC_COMBINE_CONTIGUOUS_CODES
#undef POSENC_COMBINE_CONTIGUOUS

}  // namespace cpu
}  // namespace kernels
}  // namespace posenc
