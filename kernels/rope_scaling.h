// Frequencies of the rotary embedding under Hugging Face's rope_scaling types, following
// transformers' modeling_rope_utils (4.57): the same formulas, in float32 where it computes in
// float32, so that posenc.rope_frequencies returns the same inv_freq and attention factor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace posenc {
namespace kernels {

struct RopeScaling {
  std::string rope_type = "default";  // default, linear, dynamic, yarn, longrope, llama3
  double base = 10000.0;
  double factor = 1.0;
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

struct RopeFrequencies {
  std::vector<float> inv_freq;  // [dim / 2]
  double attention_factor = 1.0;
};

// Returns an empty string on success, else a message naming the bad argument.
std::string compute_rope_frequencies(int64_t dim, const RopeScaling& scaling,
                                     RopeFrequencies& result);

}  // namespace kernels
}  // namespace posenc
