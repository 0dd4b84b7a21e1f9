// What the kernel tests share: float64 references written from the published formulas, the
// documented dropout mask, thread splits, parameter builders and fresh memory pages.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#endif

#include "angle.h"
#include "common.h"
#include "cpu/row_kernels.h"
#include "grid_case.h"
#include "philox.h"
#include "position_code.h"
#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace pk = posenc::kernels;

namespace kernel_test {

inline const double kNaN = std::numeric_limits<double>::quiet_NaN();

// PE(pos)[j] from the definitions, in double.
inline double reference_code(pk::PositionKind kind, pk::Convention convention, pk::Layout layout,
                             double base, int64_t dim, double pos, int64_t j) {
  const double p = pos;
  const int64_t half = dim / 2;
  switch (kind) {
    case pk::PositionKind::kSinusoidal: {
      if (j >= 2 * half) return 0.0;
      const int64_t i = layout == pk::Layout::kInterleaved ? j / 2 : (j < half ? j : j - half);
      const bool is_cos = layout == pk::Layout::kInterleaved ? (j % 2 == 1) : (j >= half);
      const double w = convention == pk::Convention::kVaswani
                           ? std::pow(base, -2.0 * i / dim)
                           : std::exp(-std::log(base) * i / std::max<int64_t>(half - 1, 1));
      return is_cos ? std::cos(p * w) : std::sin(p * w);
    }
    case pk::PositionKind::kLinear: {
      const int64_t i = j / 2;
      const double a = std::pow(base, -static_cast<double>(i));
      return j % 2 == 0 ? a * std::cos(p * M_PI / base) : a * std::sin(p * M_PI / base);
    }
    case pk::PositionKind::kDamped: {
      const int64_t i = j / 2;
      const double a = 1.0 / std::sqrt(std::pow(2.0, i + 1));
      return j % 2 == 0 ? a * std::cos(p / base) : a * std::sin(p / base);
    }
    case pk::PositionKind::kCosine:
      return std::cos(p * std::pow(base, -2.0 * j / dim));
    case pk::PositionKind::kLearned:
      break;
  }
  return kNaN;
}

// The documented mask: 16-bit draw (e % 2 half of word (e % 8) / 2 of Philox(e / 8)) below
// round((1 - p) * 2^16); kept values scaled by 2^16 / threshold. Returns the multiplier.
inline double reference_dropout_multiplier(uint64_t seed, uint64_t index, double p) {
  const uint32_t word = pk::philox4x32_10(index / 8, seed).v[(index % 8) / 2];
  const uint32_t draw = (index % 2 == 0) ? (word & 0xffffu) : (word >> 16);
  const double threshold = std::floor((1.0 - p) * 65536.0 + 0.5);
  return draw < threshold ? 65536.0 / threshold : 0.0;
}

inline void serial_chunks_of_one(int64_t begin, int64_t end, int64_t,
                                 const std::function<void(int64_t, int64_t)>& body) {
  for (int64_t i = begin; i < end; ++i) body(i, i + 1);
}

// Splits the range over 4 real threads.
inline void four_threads(int64_t begin, int64_t end, int64_t,
                         const std::function<void(int64_t, int64_t)>& body) {
  std::vector<std::thread> threads;
  const int64_t n = end - begin;
  for (int k = 0; k < 4; ++k) {
    const int64_t b = begin + n * k / 4, e = begin + n * (k + 1) / 4;
    if (b < e) threads.emplace_back([&body, b, e] { body(b, e); });
  }
  for (auto& t : threads) t.join();
}

// add_positional's parameters for contiguous x and out of [batch, seq, dim] (float32, float64,
// bfloat16 or float16) and the default sinusoidal code (channels from make_channel_codes; none
// for a learned table).
template <typename scalar_t>
pk::AddPositionalParams contiguous_params(const std::vector<scalar_t>& x,
                                          std::vector<scalar_t>& out, int64_t batch, int64_t seq,
                                          int64_t dim,
                                          const std::vector<pk::ChannelCode>& channels = {}) {
  pk::AddPositionalParams params;
  if constexpr (std::is_same_v<scalar_t, double>) {
    params.dtype = pk::DType::kFloat64;
  } else if constexpr (std::is_same_v<scalar_t, pk::BFloat16>) {
    params.dtype = pk::DType::kBFloat16;
  } else if constexpr (std::is_same_v<scalar_t, pk::Float16>) {
    params.dtype = pk::DType::kFloat16;
  } else {
    static_assert(std::is_same_v<scalar_t, float>);
    params.dtype = pk::DType::kFloat32;
  }
  params.shape.batch_ndim = 1;
  params.shape.batch_sizes[0] = batch;
  params.shape.seq_len = seq;
  params.shape.dim = dim;
  params.x.data = x.data();
  params.x.batch_strides[0] = seq * dim;
  params.x.seq_stride = dim;
  params.out = params.x;
  params.out.data = out.data();
  params.source.channels = channels.data();
  return params;
}

// rotary's parameters for one operand of `heads` heads of `head_dim` channels, the first
// `rotary_dim` rotated at `frequencies`, attention factor 1; its pointers and strides are the
// caller's.
inline pk::RotaryParams one_operand_rotary(pk::DType dtype, int64_t batch, int64_t seq,
                                           int64_t heads, int64_t head_dim, int64_t rotary_dim,
                                           const std::vector<pk::TurnFrequency>& frequencies) {
  pk::RotaryParams params;
  params.dtype = dtype;
  params.batch = batch;
  params.seq_len = seq;
  params.head_dim = head_dim;
  params.rotary_dim = rotary_dim;
  params.attention_factor = 1.0;
  params.frequencies = frequencies.data();
  params.operand_count = 1;
  params.operands[0].heads = heads;
  return params;
}

struct Case {
  pk::PositionKind kind;
  pk::Convention convention;
  pk::Layout layout;
  pk::Combine combine;
};

}  // namespace kernel_test

#if defined(__linux__)
namespace kernel_test {

// A fresh anonymous mapping of `pages` pages: none of them resident until written or populated.
class FreshPages {
 public:
  explicit FreshPages(int64_t pages)
      : bytes_(pages * page_size()),
        data_(static_cast<char*>(mmap(nullptr, static_cast<size_t>(bytes_), PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))) {}
  ~FreshPages() {
    if (data_ != MAP_FAILED) munmap(data_, static_cast<size_t>(bytes_));
  }
  FreshPages(const FreshPages&) = delete;
  FreshPages& operator=(const FreshPages&) = delete;

  static int64_t page_size() { return static_cast<int64_t>(sysconf(_SC_PAGESIZE)); }
  bool ok() const { return data_ != MAP_FAILED; }
  char* page(int64_t i) const { return data_ + i * page_size(); }
  int64_t pages() const { return bytes_ / page_size(); }
  bool resident(int64_t i) const {
    unsigned char flag = 0;
    EXPECT_EQ(0, mincore(page(i), static_cast<size_t>(page_size()), &flag));
    return (flag & 1) != 0;
  }
  // The indices of the resident pages.
  std::vector<int64_t> resident_pages() const {
    std::vector<int64_t> found;
    for (int64_t i = 0; i < pages(); ++i) {
      if (resident(i)) found.push_back(i);
    }
    return found;
  }

 private:
  int64_t bytes_;
  char* data_;
};

inline std::vector<int64_t> page_range(int64_t first, int64_t end) {
  std::vector<int64_t> pages;
  for (int64_t i = first; i < end; ++i) pages.push_back(i);
  return pages;
}

// Whether this kernel knows MADV_POPULATE_WRITE (Linux 5.14); the tests below need it.
inline bool kernel_populates() {
  FreshPages probe(1);
  return probe.ok() && madvise(probe.page(0), static_cast<size_t>(FreshPages::page_size()),
                               MADV_POPULATE_WRITE) == 0;
}

}  // namespace kernel_test

#endif  // __linux__
