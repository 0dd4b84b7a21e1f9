// Exact-angle sin/cos for position codes: sin(2*pi*(pos * f + phase)) where f is a frequency
// in turns per position. A float32 product pos * w has an absolute error of about pos * 6e-8
// radians, which at pos ~ 1e6 is already 0.06 rad. Here the frequency is split into three
// pieces of at most 21 significant bits, so pos * piece is exact in double for pos < 2^31, the
// whole number of turns is dropped exactly, and only the fractional turn is evaluated.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace posenc {
namespace kernels {

// A frequency in turns per position, split so that products with integers below 2^31 are exact.
struct TurnFrequency {
  double high;
  double middle;
  double low;
};

// Keeps the leading `bits` significant bits of `value` (round to nearest). Exact scaling by
// powers of two, so host and device give the same bits. The scaling goes through ldexp both
// ways: 2^(bits - exponent) itself overflows for values below about 2^-1000 (a subnormal
// frequency), where scale and unscale as one product gave inf * 0 = NaN.
POSENC_HOST_DEVICE double leading_bits(double value, int bits) {
  if (value == 0.0 || !(value - value == 0.0)) return value;  // zero, inf or nan
  int exponent = 0;
  ::frexp(value, &exponent);  // value = m * 2^exponent, 0.5 <= |m| < 1
  return ::ldexp(::rint(::ldexp(value, bits - exponent)), exponent - bits);
}

// Splits w / (2 pi), for w in radians per position, into three pieces of at most 21
// significant bits. The quotient is formed in double-double (an fma gives the exact remainder),
// so the pieces carry about 63 bits of w / (2 pi), not 53. Host and device give the same bits.
POSENC_HOST_DEVICE TurnFrequency turn_frequency_from_radians(double radians_per_position) {
  const double two_pi_high = 6.283185307179586;      // nearest double to 2 pi
  const double two_pi_low = 2.4492935982947064e-16;  // 2 pi - two_pi_high
  const double w = radians_per_position;
  const double quotient = w / two_pi_high;
  const double remainder = ::fma(-quotient, two_pi_high, w);  // exact
  const double correction = (remainder - quotient * two_pi_low) / two_pi_high;
  TurnFrequency f;
  f.high = leading_bits(quotient, 21);
  const double rest = (quotient - f.high) + correction;  // quotient - high is exact
  f.middle = leading_bits(rest, 21);
  f.low = rest - f.middle;  // exact
  return f;
}

// Round to nearest (ties to even) for |v| < 2^51, as rint does, with two additions: loops
// vectorize on the CPU, and on the GPU they are plain fp64 adds rather than a rounding
// instruction. Built without fast-math, so the two roundings stay as written.
POSENC_HOST_DEVICE double round_to_integer(double v) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  return (v + magic) - magic;
}

// Fraction of a turn of pos * f + phase, in [-0.5, 0.5], with f = high + middle + low split as
// above. Exact up to the rounding of the low piece's product (relative 2^-53 of a value below
// 2^-21 turns per position). `position` is an integer below 2^31 held in a double.
POSENC_HOST_DEVICE double reduced_turns(double position, double high, double middle, double low,
                                        double phase) {
  double high_turns = position * high;
  high_turns -= round_to_integer(high_turns);
  double middle_turns = position * middle;
  middle_turns -= round_to_integer(middle_turns);
  const double turns = high_turns + middle_turns + position * low + phase;
  return turns - round_to_integer(turns);
}

POSENC_HOST_DEVICE double reduced_turns(int64_t position, const TurnFrequency& f, double phase) {
  return reduced_turns(static_cast<double>(position), f.high, f.middle, f.low, phase);
}

template <typename acc_t>
struct SinCos {
  acc_t sin;
  acc_t cos;
};

// sin and cos of x for |x| <= pi/4 in float: Cody-Waite style minimax polynomials, below 1 ulp.
POSENC_HOST_DEVICE SinCos<float> sincos_small(float x) {
  const float x2 = x * x;
  const float s =
      x + x * x2 * (-1.6666654611e-1f + x2 * (8.3321608736e-3f + x2 * -1.9515295891e-4f));
  const float c =
      1.0f - 0.5f * x2 +
      x2 * x2 *
          (4.166664568298827e-2f + x2 * (-1.388731625493765e-3f + x2 * 2.443315711809948e-5f));
  return {s, c};
}

// In double on the host: the Taylor series through x^17 and x^18, whose first omitted terms are
// below 1e-19 for |x| <= pi/4, so the error is the roundings' (about an ulp, as libm's); and
// branch-free, so that the CPU loops over channels vectorize (libm's sin and cos do not).
POSENC_HOST_DEVICE SinCos<double> sincos_small(double x) {
#if defined(__CUDA_ARCH__)
  double s, c;
  sincos(x, &s, &c);
  return {s, c};
#else
  // (-1)^k / (2k + 1)! and (-1)^k / (2k)!, from k = 1 and k = 2.
  constexpr double kSin[] = {
      -1.0 / 6.0,        1.0 / 120.0,        -1.0 / 5040.0,          1.0 / 362880.0,
      -1.0 / 39916800.0, 1.0 / 6227020800.0, -1.0 / 1307674368000.0, 1.0 / 355687428096000.0};
  constexpr double kCos[] = {
      1.0 / 24.0,        -1.0 / 720.0,         1.0 / 40320.0,          -1.0 / 3628800.0,
      1.0 / 479001600.0, -1.0 / 87178291200.0, 1.0 / 20922789888000.0, -1.0 / 6402373705728000.0};
  constexpr int kTerms = 8;
  const double x2 = x * x;
  double sin_tail = kSin[kTerms - 1];
  double cos_tail = kCos[kTerms - 1];
  for (int k = kTerms - 2; k >= 0; --k) {  // Horner
    sin_tail = kSin[k] + x2 * sin_tail;
    cos_tail = kCos[k] + x2 * cos_tail;
  }
  return {x + x * x2 * sin_tail, 1.0 - 0.5 * x2 + x2 * x2 * cos_tail};
#endif
}

// sin and cos of 2*pi*turns for turns in [-0.5, 0.5], computed in acc_t after an exact
// quadrant split in double. Branch-free, so loops over channels vectorize: the quadrant
// q = round(4 * turns) in {-2, ..., 2} picks +-sin or +-cos of the small angle through
// coefficients that are exactly 0 or +-1 at those five integers:
//   a(q) = (6 - 7q^2 + q^4) / 6  (1, 0, -1 at q = 0, +-1, +-2),  b(q) = q (4 - q^2) / 3.
//   sin(x + q pi/2) = a sin x + b cos x,   cos(x + q pi/2) = a cos x - b sin x.
// The divisions are products with the rounded reciprocals: the numerators are 0 or +-6 (a) and
// 0 or +-3 (b), whose products with fl(1/6) and fl(1/3) round to exactly 0 or +-1 in float and
// double (tested), without a division instruction (a subroutine on the GPU).
template <typename acc_t>
POSENC_HOST_DEVICE SinCos<acc_t> sincos_turns(double turns) {
  const double quadrant = round_to_integer(4.0 * turns);
  const double within = turns - 0.25 * quadrant;  // exact, in [-1/8, 1/8]
  const SinCos<acc_t> small = sincos_small(static_cast<acc_t>(within * (2.0 * M_PI)));
  const acc_t q = static_cast<acc_t>(quadrant);
  const acc_t q2 = q * q;
  const acc_t a = (acc_t(6) - acc_t(7) * q2 + q2 * q2) * (acc_t(1) / acc_t(6));
  const acc_t b = q * (acc_t(4) - q2) * (acc_t(1) / acc_t(3));
  return {a * small.sin + b * small.cos, a * small.cos - b * small.sin};
}

template <typename acc_t>
POSENC_HOST_DEVICE acc_t sin_turns(double turns) {
  return sincos_turns<acc_t>(turns).sin;
}

}  // namespace kernels
}  // namespace posenc
