// Counter-based dropout: Philox4x32-10 keyed by a 64-bit seed, counted by the logical element
// index / 4. Any element's keep bit is a pure function of (seed, index), so the backward pass
// regenerates the mask instead of storing it, and the CPU and CUDA kernels agree bit for bit.
#pragma once

#include <cstdint>

#include "common.h"

namespace posenc {
namespace kernels {

struct Philox4 {
  uint32_t v[4];
};

// The Philox4x32-10 bijection of Salmon et al. (SC'11) on a 128-bit counter and 64-bit key.
POSENC_HOST_DEVICE Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  uint32_t c0 = counter.v[0], c1 = counter.v[1], c2 = counter.v[2], c3 = counter.v[3];
  for (int round = 0; round < 10; ++round) {
    const uint64_t product0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t product1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(product1 >> 32) ^ c1 ^ key0;
    const uint32_t n1 = static_cast<uint32_t>(product1);
    const uint32_t n2 = static_cast<uint32_t>(product0 >> 32) ^ c3 ^ key1;
    const uint32_t n3 = static_cast<uint32_t>(product0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Four draws for counter `counter` (the upper 64 counter bits are zero) under `seed`.
POSENC_HOST_DEVICE Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  return philox4x32_10(
      Philox4{{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Inverted dropout. Each element gets a 16-bit draw: element e uses half (e % 2, low half first)
// of word (e % 8) / 2 of Philox(counter = e / 8). It is kept when its draw is below
// keep_threshold = round((1 - p) * 2^16), so the drop probability is p rounded to a multiple of
// 2^-16, and kept values are scaled by 2^16 / keep_threshold, which keeps E[y] = x exactly.
// (16-bit draws halve the generator's cost against 32-bit ones.)
struct Dropout {
  bool active = false;  // false: identity (eval mode or p == 0)
  uint64_t seed = 0;
  uint32_t keep_threshold = 0;
  double keep_scale = 1.0;
};

inline Dropout make_dropout(double p, bool training, uint64_t seed) {
  Dropout d;
  d.active = training && p > 0.0;
  if (!d.active) return d;
  d.seed = seed;
  // p rounds to a multiple of 2^-16; p = 1 (or within 2^-17 of it) keeps nothing and gives
  // zeros, as torch.nn.functional.dropout does.
  const double threshold = (1.0 - p) * 65536.0 + 0.5;
  d.keep_threshold = threshold < 1.0 ? 0u : static_cast<uint32_t>(threshold);
  d.keep_scale = d.keep_threshold == 0 ? 0.0 : 65536.0 / static_cast<double>(d.keep_threshold);
  return d;
}

constexpr int kDropoutElementsPerCounter = 8;

// The 16-bit draw of draw-slot `slot` (0..7) of one Philox output.
// Selects rather than indexes the word: a GPU indexes a register array with a run-time index
// through local memory.
POSENC_HOST_DEVICE uint32_t dropout_draw(const Philox4& draws, int slot) {
  const int word = slot >> 1;
  const uint32_t bits = word == 0   ? draws.v[0]
                        : word == 1 ? draws.v[1]
                        : word == 2 ? draws.v[2]
                                    : draws.v[3];
  return (bits >> ((slot & 1) * 16)) & 0xffffu;
}

// The multiplier (0 or keep_scale) of the element at logical index `index`.
template <typename acc_t>
POSENC_HOST_DEVICE acc_t dropout_multiplier(const Dropout& d, uint64_t index) {
  if (!d.active) return acc_t(1);
  const Philox4 draws = philox4x32_10(index / kDropoutElementsPerCounter, d.seed);
  const uint32_t draw = dropout_draw(draws, static_cast<int>(index % kDropoutElementsPerCounter));
  return draw < d.keep_threshold ? static_cast<acc_t>(d.keep_scale) : acc_t(0);
}

}  // namespace kernels
}  // namespace posenc
