// What the emulated CUDA kernel tests share: dense buffers of every kernel dtype, compared
// element by element with the CPU kernels' results. Outputs are poisoned first, so an element a
// kernel leaves unwritten shows.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "cuda/emulation.h"
#define POSENC_CUDA_NAMESPACE cuda_emulated  // the launchers built as host C++
#include "cuda/add_positional_launch.h"
#include "cuda/attention_bias_launch.h"
#include "cuda/rotary_launch.h"
#include "cuda/rotary_tables_launch.h"
#include "cuda/scatter_launch.h"
#include "grid_case.h"
#include "positional.h"
#include "rotary.h"
#include "rows.h"

namespace pk = posenc::kernels;
namespace emu = posenc::kernels::cuda_emulated;
namespace ce = posenc::cuda_emulation;

namespace emulated_test {

// The alignment of the caching allocator's blocks, which the kernels' sector counts assume.
constexpr size_t kAllocationAlignment = 256;

// A dense, 256-byte aligned buffer of one kernel dtype, read and written through doubles.
struct Buffer {
  pk::DType dtype;
  size_t byte_count;
  std::vector<unsigned char> storage;
  unsigned char* base;

  Buffer(pk::DType type, size_t count)
      : dtype(type),
        byte_count(count * element_size(type)),
        storage(byte_count + kAllocationAlignment) {
    const auto address = reinterpret_cast<uintptr_t>(storage.data());
    base = storage.data() + (kAllocationAlignment - address % kAllocationAlignment);
  }
  Buffer(Buffer&&) = default;  // the storage moves, so `base` stays valid
  Buffer& operator=(Buffer&&) = default;

  static size_t element_size(pk::DType type) {
    return type == pk::DType::kFloat64 ? 8 : (type == pk::DType::kFloat32 ? 4 : 2);
  }
  size_t size() const { return byte_count / element_size(dtype); }
  void* data() { return base; }

  double get(size_t i) const {
    return pk::dispatch_dtype(dtype, [&](auto tag) -> double {
      using T = decltype(tag);
      return static_cast<double>(pk::load_as_acc(reinterpret_cast<const T*>(base) + i));
    });
  }
  void set(size_t i, double value) {
    pk::dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      pk::store_from_acc(reinterpret_cast<T*>(base) + i, static_cast<pk::acc_t<T>>(value));
      return 0;
    });
  }
  void fill_random(std::mt19937_64& rng) {
    std::normal_distribution<double> normal;
    for (size_t i = 0; i < size(); ++i) set(i, normal(rng));
  }
  void poison() { std::fill(base, base + byte_count, 0x7f); }  // NaN/huge in every dtype
};

// The kAllocationAlignment-aligned start of a byte buffer of kAllocationAlignment bytes more than
// it needs (workspaces: the binding's allocator aligns them so, and the sector counts see whole
// sectors only where the GPU would).
inline void* aligned(std::vector<unsigned char>& bytes) {
  const auto address = reinterpret_cast<uintptr_t>(bytes.data());
  return bytes.data() +
         (kAllocationAlignment - address % kAllocationAlignment) % kAllocationAlignment;
}

// The device channel table of `params`' computed codes, as the binding fills it before a launch
// (no bytes when the launch reads none). Poisoned first: an entry the fill leaves unwritten
// shows.
struct ChannelTableBuffer {
  Buffer buffer;
  explicit ChannelTableBuffer(const pk::AddPositionalParams& params)
      : buffer(pk::DType::kFloat64,
               static_cast<size_t>(emu::channel_table_bytes(params)) / sizeof(double)) {
    for (size_t i = 0; i < buffer.size(); ++i) {
      buffer.set(i, std::numeric_limits<double>::quiet_NaN());
    }
    if (buffer.size() > 0) {
      EXPECT_EQ(emu::fill_channel_table(params, data_mutable(), nullptr), 0);
    }
  }
  double* data_mutable() { return static_cast<double*>(buffer.data()); }
  const double* data() { return data_mutable(); }
};

inline std::unique_ptr<ChannelTableBuffer> channel_table(const pk::AddPositionalParams& params) {
  return std::make_unique<ChannelTableBuffer>(params);
}

inline double tolerance(pk::DType dtype) {
  switch (dtype) {
    case pk::DType::kFloat64:
      return 1e-12;
    case pk::DType::kFloat32:
      return 2e-6;
    default:
      return 1e-2;  // 16-bit storage: one rounding step of the output
  }
}

inline void expect_same(const Buffer& cpu, const Buffer& emulated, double atol, const char* what) {
  ASSERT_EQ(cpu.size(), emulated.size());
  int64_t reported = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double a = cpu.get(i), b = emulated.get(i);
    const bool same =
        (std::isnan(a) && std::isnan(b)) || std::abs(a - b) <= atol * std::max(1.0, std::abs(a));
    if (!same && reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " cpu " << a << " emulated cuda " << b;
    }
  }
}

inline const pk::DType kDTypes[] = {pk::DType::kFloat32, pk::DType::kFloat64, pk::DType::kBFloat16,
                                    pk::DType::kFloat16};

}  // namespace emulated_test
