#include "rope_scaling.h"

#include <algorithm>
#include <cmath>

namespace posenc {
namespace kernels {
namespace {

// inv_freq_i = 1 / base^(float(2i) / dim) in float32, as transformers computes it.
std::vector<float> default_frequencies(int64_t dim, double base) {
  std::vector<float> inv_freq(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(base), exponent);
  }
  return inv_freq;
}

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

std::string compute_rope_frequencies(int64_t dim, const RopeScaling& s, RopeFrequencies& out) {
  if (dim <= 0 || dim % 2 != 0) return "dim must be a positive even number";
  if (!(s.base > 0.0)) return "base must be > 0";
  out.attention_factor = 1.0;
  const std::string& type = s.rope_type;
  if (type == "default") {
    out.inv_freq = default_frequencies(dim, s.base);
  } else if (type == "linear") {
    if (!(s.factor > 0.0)) return "scaling['factor'] must be > 0 for rope_type 'linear'";
    out.inv_freq = default_frequencies(dim, s.base);
    for (float& f : out.inv_freq) f /= static_cast<float>(s.factor);
  } else if (type == "dynamic") {
    if (s.max_position_embeddings <= 0) {
      return "rope_type 'dynamic' needs max_position_embeddings";
    }
    const double m = static_cast<double>(s.max_position_embeddings);
    const double seq_len = std::max(static_cast<double>(s.seq_len), m);
    const double base = s.base * std::pow((s.factor * seq_len / m) - (s.factor - 1.0),
                                          static_cast<double>(dim) / (dim - 2));
    out.inv_freq = default_frequencies(dim, base);
  } else if (type == "yarn") {
    if (!(s.factor > 0.0)) return "scaling['factor'] must be > 0 for rope_type 'yarn'";
    const int64_t original = s.original_max_position_embeddings > 0
                                 ? s.original_max_position_embeddings
                                 : s.max_position_embeddings;
    if (original <= 0) {
      return "rope_type 'yarn' needs max_position_embeddings or "
             "scaling['original_max_position_embeddings']";
    }
    if (s.has_attention_factor) {
      out.attention_factor = s.attention_factor;
    } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
      out.attention_factor =
          yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim);
    } else {
      out.attention_factor = yarn_mscale(s.factor, 1.0);
    }
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(static_cast<double>(original) / (rotations * 2.0 * M_PI))) /
             (2.0 * std::log(s.base));
    };
    double low = correction_dim(s.beta_fast);
    double high = correction_dim(s.beta_slow);
    if (s.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    out.inv_freq.resize(static_cast<size_t>(dim / 2));
    for (int64_t i = 0; i < dim / 2; ++i) {
      const float ramp = std::clamp(
          (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low),
          0.0f, 1.0f);
      const float extrapolation_factor = 1.0f - ramp;
      const float pos_freq = std::pow(static_cast<float>(s.base),
                                      static_cast<float>(2 * i) / static_cast<float>(dim));
      const float extrapolation = 1.0f / pos_freq;
      const float interpolation = 1.0f / (static_cast<float>(s.factor) * pos_freq);
      out.inv_freq[i] = interpolation * (1.0f - extrapolation_factor) +
                        extrapolation * extrapolation_factor;
    }
  } else if (type == "longrope") {
    if (static_cast<int64_t>(s.short_factor.size()) != dim / 2 ||
        static_cast<int64_t>(s.long_factor.size()) != dim / 2) {
      return "rope_type 'longrope' needs scaling['short_factor'] and scaling['long_factor'] "
             "with dim / 2 entries each";
    }
    double factor = s.factor;
    int64_t original = s.max_position_embeddings;
    if (s.original_max_position_embeddings > 0) {
      original = s.original_max_position_embeddings;
      if (s.max_position_embeddings <= 0) {
        return "rope_type 'longrope' with original_max_position_embeddings needs "
               "max_position_embeddings";
      }
      factor = static_cast<double>(s.max_position_embeddings) / original;
    }
    if (original <= 0) return "rope_type 'longrope' needs max_position_embeddings";
    if (s.has_attention_factor) {
      out.attention_factor = s.attention_factor;
    } else {
      out.attention_factor =
          factor <= 1.0 ? 1.0
                        : std::sqrt(1.0 + std::log(factor) / std::log(static_cast<double>(original)));
    }
    const std::vector<double>& ext =
        s.seq_len > original ? s.long_factor : s.short_factor;
    out.inv_freq.resize(static_cast<size_t>(dim / 2));
    for (int64_t i = 0; i < dim / 2; ++i) {
      const float shape = static_cast<float>(2 * i) / static_cast<float>(dim);
      out.inv_freq[i] =
          1.0f / (static_cast<float>(ext[i]) * std::pow(static_cast<float>(s.base), shape));
    }
  } else if (type == "llama3") {
    if (s.original_max_position_embeddings <= 0) {
      return "rope_type 'llama3' needs scaling['original_max_position_embeddings']";
    }
    if (!(s.factor > 0.0) || s.high_freq_factor == s.low_freq_factor) {
      return "rope_type 'llama3' needs factor > 0 and high_freq_factor != low_freq_factor";
    }
    out.inv_freq = default_frequencies(dim, s.base);
    const float old_context = static_cast<float>(s.original_max_position_embeddings);
    const float low_freq_factor = static_cast<float>(s.low_freq_factor);
    const float high_freq_factor = static_cast<float>(s.high_freq_factor);
    const float factor = static_cast<float>(s.factor);
    const float low_freq_wavelen = old_context / low_freq_factor;
    const float high_freq_wavelen = old_context / high_freq_factor;
    for (float& f : out.inv_freq) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      const float scaled = wavelen > low_freq_wavelen ? f / factor : f;
      const float smooth =
          (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      f = medium ? smoothed : scaled;
    }
  } else {
    return "unknown rope_type '" + type +
           "'; expected default, linear, dynamic, yarn, longrope or llama3";
  }
  return "";
}

}  // namespace kernels
}  // namespace posenc
