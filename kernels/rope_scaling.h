// Frequencies of the rotary embedding under Hugging Face's rope_scaling types, following
// transformers' modeling_rope_utils (5.x). The same formulas are evaluated either in double
// (exact frequencies, the default) or in float32 where transformers computes in float32, so that
// the float32 results equal transformers' inv_freq bit for bit.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace posenc {
namespace kernels {

enum class RopeType : int {
  kDefault,
  kLinear,
  kDynamic,
  kYarn,
  kLongrope,
  kLlama3,
  kProportional,
  kAxial,
  kAxialShared
};

constexpr const char* kRopeTypeNames =
    "'default', 'linear', 'dynamic', 'yarn', 'longrope', 'llama3', 'proportional', 'axial' or "
    "'axial_shared'";

std::optional<RopeType> parse_rope_type(const std::string& name);

// Rotary dims above this are refused before anything is allocated.
constexpr int64_t kMaxRopeDim = int64_t{1} << 20;

// out[i] = base^exponents[i] in float32 for i < n. transformers evaluates these powers with
// torch's vectorised pow, whose last bit can differ from std::pow, so the torch binding passes
// one built on torch; std::pow is the default.
using Float32Powers =
    std::function<void(double base, const float* exponents, float* out, int64_t n)>;

struct RopeScaling {
  RopeType rope_type = RopeType::kDefault;
  bool float32_arithmetic = false;  // transformers' float32 formulas, else the same in double
  Float32Powers float32_powers;     // for float32_arithmetic; empty: std::pow
  double base = 10000.0;
  // Unset: linear, dynamic and llama3 need it; yarn and longrope use max_position_embeddings /
  // original_max_position_embeddings; proportional uses 1.
  bool has_factor = false;
  double factor = 1.0;
  // The rotated share of the head dim: the other types rotate int(dim * partial_rotary_factor)
  // channels; proportional returns dim / 2 frequencies, the first
  // floor(partial_rotary_factor * dim / 2) with the exponents of the whole dim, the rest 0.
  double partial_rotary_factor = 1.0;
  int64_t max_position_embeddings = 0;           // 0: unset
  int64_t original_max_position_embeddings = 0;  // 0: unset
  int64_t seq_len = 0;                           // 0: unset (dynamic, longrope)
  bool has_attention_factor = false;
  double attention_factor = 1.0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0: unset
  double mscale_all_dim = 0.0;  // 0: unset
  bool truncate = true;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::vector<double> short_factor;
  std::vector<double> long_factor;
};

// The rotary dimension of a head dimension `dim` under `scaling` (see partial_rotary_factor).
int64_t rope_rotary_dim(int64_t dim, const RopeScaling& scaling);

struct RopeFrequencies {
  std::vector<double> inv_freq;  // [rotary dim / 2]; float32 values when float32_arithmetic
  double attention_factor = 1.0;
};

// Every check of dim and the scaling values: an empty string when valid, else a message that
// names the bad argument. Nothing is allocated.
std::string check_rope_scaling(int64_t dim, const RopeScaling& scaling);

// Returns an empty string on success (after check_rope_scaling), else the message.
std::string compute_rope_frequencies(int64_t dim, const RopeScaling& scaling,
                                     RopeFrequencies& result);

}  // namespace kernels
}  // namespace posenc
