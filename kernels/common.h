// Framework-free building blocks shared by the CPU and CUDA kernels: host/device
// qualifiers, the element types the kernels understand, 16-bit float conversions and the
// parallel-for hook through which the caller (torch, a test, a thread pool) supplies threads.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>

#if defined(__CUDACC__)
#define POSENC_HOST_DEVICE __host__ __device__ __forceinline__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#define POSENC_HOST_DEVICE inline
#endif

namespace posenc {
namespace kernels {

// Element types of tensors handed to kernels. Half types are stored as raw 16-bit words and
// computed in float32; float64 is computed in double.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// Integer types accepted for ids and positions.
enum class IndexType : int { kInt64 = 0, kInt32 = 1 };

struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

POSENC_HOST_DEVICE uint32_t float_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}

POSENC_HOST_DEVICE float bits_float(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// Round-to-nearest-even, NaN kept quiet: the same rounding as torch's bfloat16 cast.
// Written as a select rather than an early return, so loops over it vectorize.
POSENC_HOST_DEVICE BFloat16 float_to_bfloat16(float value) {
#if defined(__CUDA_ARCH__)
  // The hardware conversion (sm_80+): round to nearest even, as below.
  const __nv_bfloat16_raw raw = __float2bfloat16_rn(value);
  return BFloat16{raw.x};
#endif
  const uint32_t bits = float_bits(value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return BFloat16{static_cast<uint16_t>(is_nan ? 0x7fc0u : rounded)};
}

POSENC_HOST_DEVICE float bfloat16_to_float(BFloat16 value) {
  return bits_float(static_cast<uint32_t>(value.bits) << 16);
}

// `a` where `condition`, else `b`, as bit arithmetic: GCC turns a chain of ternaries back into
// branches, which stop a loop from vectorizing.
POSENC_HOST_DEVICE uint32_t select_bits(bool condition, uint32_t a, uint32_t b) {
  return b ^ ((a ^ b) & (0u - static_cast<uint32_t>(condition)));
}

// IEEE binary16 <-> binary32 without F16C, so the baseline x86-64 build needs no extra ISA.
// Branch-free (every case computed, one selected), so that loops over them vectorize.
POSENC_HOST_DEVICE float float16_to_float(Float16 value) {
#if defined(__CUDA_ARCH__)
  __half_raw raw;
  raw.x = value.bits;
  return __half2float(__half(raw));
#endif
  const uint32_t sign = static_cast<uint32_t>(value.bits & 0x8000u) << 16;
  const uint32_t exponent = (value.bits >> 10) & 0x1fu;
  const uint32_t mantissa = value.bits & 0x3ffu;
  // Zero and subnormal halves: mantissa * 2^-24, exact in float.
  const float small = static_cast<float>(static_cast<int32_t>(mantissa)) * 5.9604644775390625e-8f;
  const uint32_t small_bits = sign | float_bits(small);
  const uint32_t special_bits = sign | 0x7f800000u | (mantissa << 13);  // infinity, NaN
  const uint32_t normal_bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  return bits_float(select_bits(exponent == 0, small_bits,
                                select_bits(exponent == 0x1f, special_bits, normal_bits)));
}

POSENC_HOST_DEVICE Float16 float_to_float16(float value) {
#if defined(__CUDA_ARCH__)
  const __half_raw raw = __float2half_rn(value);
  return Float16{raw.x};
#endif
  const uint32_t bits = float_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  const bool is_nan = magnitude > 0x7f800000u;
  const bool overflows = magnitude >= 0x477ff000u;
  const bool subnormal = magnitude < 0x38800000u;
  // Subnormal (or zero) in half: scale so the rounding to an integer count of 2^-24 units happens
  // in float arithmetic with round-to-nearest-even (only the subnormal range is scaled, so the
  // conversion to an integer stays in range: below 2^10).
  const float scaled = bits_float(select_bits(subnormal, magnitude, 0u)) * 16777216.0f;  // * 2^24
  const float rounded = (scaled + 12582912.0f) - 12582912.0f;  // rint, |x| < 2^22
  const uint32_t small = static_cast<uint32_t>(static_cast<int32_t>(rounded));
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even (only
  // meaningful for normal results; the others are selected away).
  const uint32_t rebased = magnitude - (112u << 23);
  const uint32_t normal = (rebased + 0x0fffu + ((rebased >> 13) & 1u)) >> 13;
  const uint32_t result = select_bits(
      is_nan, 0x7e00u, select_bits(overflows, 0x7c00u, select_bits(subnormal, small, normal)));
  return Float16{static_cast<uint16_t>(sign | result)};
}

// Load and store through the compute type of each storage type.
template <typename scalar_t>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename Accumulate<scalar_t>::type;

POSENC_HOST_DEVICE float load_as_acc(const float* p) { return *p; }
POSENC_HOST_DEVICE double load_as_acc(const double* p) { return *p; }
POSENC_HOST_DEVICE float load_as_acc(const BFloat16* p) { return bfloat16_to_float(*p); }
POSENC_HOST_DEVICE float load_as_acc(const Float16* p) { return float16_to_float(*p); }

POSENC_HOST_DEVICE void store_from_acc(float* p, float v) { *p = v; }
POSENC_HOST_DEVICE void store_from_acc(double* p, double v) { *p = v; }
POSENC_HOST_DEVICE void store_from_acc(BFloat16* p, float v) { *p = float_to_bfloat16(v); }
POSENC_HOST_DEVICE void store_from_acc(Float16* p, float v) { *p = float_to_float16(v); }

POSENC_HOST_DEVICE int64_t load_index(const void* data, IndexType type, int64_t offset) {
  return type == IndexType::kInt64
             ? static_cast<const int64_t*>(data)[offset]
             : static_cast<int64_t>(static_cast<const int32_t*>(data)[offset]);
}

// Calls fn(value) with a value of the storage type of `dtype` and returns fn's result.
template <typename Fn>
auto dispatch_dtype(DType dtype, Fn&& fn) -> decltype(fn(float{})) {
  switch (dtype) {
    case DType::kFloat64:
      return fn(double{});
    case DType::kBFloat16:
      return fn(BFloat16{});
    case DType::kFloat16:
      return fn(Float16{});
    case DType::kFloat32:
      break;
  }
  return fn(float{});
}

// Calls body(begin, end) over [begin, end) in chunks of at least `grain`, possibly on several
// threads. The torch binding passes at::parallel_for; tests may pass a serial loop. Kernels
// must give the same bits whichever split is used.
using ParallelFor = std::function<void(int64_t begin, int64_t end, int64_t grain,
                                       const std::function<void(int64_t, int64_t)>& body)>;

inline void serial_for(int64_t begin, int64_t end, int64_t /*grain*/,
                       const std::function<void(int64_t, int64_t)>& body) {
  if (begin < end) body(begin, end);
}

}  // namespace kernels
}  // namespace posenc
