// Rotary frequencies under Hugging Face's rope_scaling types (see rope_scaling.h): each formula is
// written once, templated on the arithmetic type (float as transformers, or double).
#include "rope_scaling.h"

#include <algorithm>
#include <cmath>

#include "rotary.h"

namespace posenc {
namespace kernels {

std::optional<RopeType> parse_rope_type(const std::string& name) {
  if (name == "default") return RopeType::kDefault;
  if (name == "linear") return RopeType::kLinear;
  if (name == "dynamic") return RopeType::kDynamic;
  if (name == "yarn") return RopeType::kYarn;
  if (name == "longrope") return RopeType::kLongrope;
  if (name == "llama3") return RopeType::kLlama3;
  if (name == "proportional") return RopeType::kProportional;
  if (name == "axial") return RopeType::kAxial;
  if (name == "axial_shared") return RopeType::kAxialShared;
  return std::nullopt;
}

namespace {

bool finite_positive(double value) { return std::isfinite(value) && value > 0.0; }

// base^(2i / dim) for i < count (float32 exponents 2i / dim, as transformers forms them). torch's
// pow is vectorised, so the last bit of an element depends on the tensor's length: `count` is
// the length of transformers' tensor.
std::vector<float> float32_powers(int64_t dim, double base, const RopeScaling& s, int64_t count) {
  std::vector<float> exponents(static_cast<size_t>(count)), powers(exponents.size());
  for (int64_t i = 0; i < count; ++i) {
    exponents[i] = static_cast<float>(2 * i) / static_cast<float>(dim);
  }
  if (s.float32_powers) {
    s.float32_powers(base, exponents.data(), powers.data(), count);
  } else {
    for (int64_t i = 0; i < count; ++i) {
      powers[i] = std::pow(static_cast<float>(base), exponents[i]);
    }
  }
  return powers;
}

// base^(2i / dim) for i < dim / 2: in float32 as transformers computes it, or in double.
template <typename real>
std::vector<real> position_powers(int64_t dim, double base, const RopeScaling& s) {
  if constexpr (sizeof(real) == sizeof(float)) {
    return float32_powers(dim, base, s, dim / 2);
  } else {
    std::vector<double> powers(static_cast<size_t>(dim / 2));
    for (int64_t i = 0; i < dim / 2; ++i) {
      powers[i] = std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
    }
    return powers;
  }
}

// inv_freq_i = 1 / base^(2i / dim) for i < count (default dim / 2): in float32 as transformers
// computes it; in double the exact default frequencies of the rotary kernel (the same
// expression, so the same bits).
template <typename real>
std::vector<real> default_frequencies(int64_t dim, double base, const RopeScaling& s,
                                      int64_t count = -1) {
  if (count < 0) count = dim / 2;
  if constexpr (sizeof(real) == sizeof(float)) {
    std::vector<float> inv_freq = float32_powers(dim, base, s, count);
    for (float& f : inv_freq) f = 1.0f / f;
    return inv_freq;
  } else {
    std::vector<double> inv_freq(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) inv_freq[i] = default_rotary_frequency(i, dim, base);
    return inv_freq;
  }
}

// scalar / t as torch evaluates a Python number over a tensor (Tensor.__rtruediv__: the
// reciprocal, then a product) in float32; a plain division in double.
template <typename real>
real number_over(double scalar, real t) {
  if constexpr (sizeof(real) == sizeof(float)) {
    return (1.0f / t) * static_cast<float>(scalar);
  } else {
    return scalar / t;
  }
}

// transformers' int(partial_rotary_factor * head_dim // 2).
int64_t proportional_rotated_pairs(int64_t dim, double partial_rotary_factor) {
  return static_cast<int64_t>(std::floor(partial_rotary_factor * static_cast<double>(dim) / 2.0));
}

// The pretraining context of yarn and longrope: original_max_position_embeddings, else
// max_position_embeddings.
int64_t original_context(const RopeScaling& s) {
  return s.original_max_position_embeddings > 0 ? s.original_max_position_embeddings
                                                : s.max_position_embeddings;
}

// yarn's and longrope's factor: as given, else (DeepSeek-V3, Phi-3 leave it out) the ratio of
// the context lengths, as transformers 5.x.
double context_factor(const RopeScaling& s) {
  return s.has_factor ? s.factor
                      : static_cast<double>(s.max_position_embeddings) /
                            static_cast<double>(original_context(s));
}

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

template <typename real>
std::vector<real> scaled_frequencies(int64_t dim, const RopeScaling& s, double& attention) {
  attention = 1.0;
  switch (s.rope_type) {
    case RopeType::kDefault:
      return default_frequencies<real>(dim, s.base, s);
    case RopeType::kLinear: {
      std::vector<real> inv_freq = default_frequencies<real>(dim, s.base, s);
      for (real& f : inv_freq) f /= static_cast<real>(s.factor);
      return inv_freq;
    }
    case RopeType::kDynamic: {
      const double m = static_cast<double>(s.max_position_embeddings);
      const double seq_len = std::max(static_cast<double>(s.seq_len), m);
      const double base = s.base * std::pow((s.factor * seq_len / m) - (s.factor - 1.0),
                                            static_cast<double>(dim) / (dim - 2));
      return default_frequencies<real>(dim, base, s);
    }
    case RopeType::kYarn: {
      const int64_t original = original_context(s);
      const double factor = context_factor(s);
      if (s.has_attention_factor) {
        attention = s.attention_factor;
      } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
        attention = yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim);
      } else {
        attention = yarn_mscale(factor, 1.0);
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
      const std::vector<real> pos_freqs = position_powers<real>(dim, s.base, s);
      std::vector<real> inv_freq(static_cast<size_t>(dim / 2));
      for (int64_t i = 0; i < dim / 2; ++i) {
        const real ramp = std::clamp(
            (static_cast<real>(i) - static_cast<real>(low)) / static_cast<real>(high - low),
            real(0), real(1));
        const real extrapolation_factor = real(1) - ramp;
        const real pos_freq = pos_freqs[i];
        const real extrapolation = real(1) / pos_freq;
        const real interpolation = real(1) / (static_cast<real>(factor) * pos_freq);
        inv_freq[i] =
            interpolation * (real(1) - extrapolation_factor) + extrapolation * extrapolation_factor;
      }
      return inv_freq;
    }
    case RopeType::kLongrope: {
      const int64_t original = original_context(s);
      const double factor = context_factor(s);
      if (s.has_attention_factor) {
        attention = s.attention_factor;
      } else {
        attention =
            factor <= 1.0
                ? 1.0
                : std::sqrt(1.0 + std::log(factor) / std::log(static_cast<double>(original)));
      }
      const std::vector<double>& ext = s.seq_len > original ? s.long_factor : s.short_factor;
      const std::vector<real> powers = position_powers<real>(dim, s.base, s);
      std::vector<real> inv_freq(static_cast<size_t>(dim / 2));
      for (int64_t i = 0; i < dim / 2; ++i) {
        inv_freq[i] = real(1) / (static_cast<real>(ext[i]) * powers[i]);
      }
      return inv_freq;
    }
    case RopeType::kLlama3: {
      std::vector<real> inv_freq = default_frequencies<real>(dim, s.base, s);
      // transformers' Python numbers (double) meet its float32 tensors as float32 scalars.
      const double old_context = static_cast<double>(s.original_max_position_embeddings);
      const real low_freq_wavelen = static_cast<real>(old_context / s.low_freq_factor);
      const real high_freq_wavelen = static_cast<real>(old_context / s.high_freq_factor);
      const real low_freq_factor = static_cast<real>(s.low_freq_factor);
      const real factor_span = static_cast<real>(s.high_freq_factor - s.low_freq_factor);
      const real factor = static_cast<real>(s.factor);
      for (real& f : inv_freq) {
        const real wavelen = number_over<real>(2.0 * M_PI, f);
        const real scaled = wavelen > low_freq_wavelen ? f / factor : f;
        const real smooth =
            (number_over<real>(old_context, wavelen) - low_freq_factor) / factor_span;
        const real smoothed = (real(1) - smooth) * scaled / factor + smooth * scaled;
        const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        f = medium ? smoothed : scaled;
      }
      return inv_freq;
    }
    case RopeType::kAxial: {
      // Pixtral's 2D RoPE: the default frequencies reordered, even pairs first (the height
      // axis), odd pairs after (the width axis); rotary's mrope_section {0, dim/4, dim/4}
      // with position rows (0, row, column) then rotates each half by its axis.
      const std::vector<real> inv_freq = default_frequencies<real>(dim, s.base, s);
      std::vector<real> reordered;
      reordered.reserve(inv_freq.size());
      for (size_t i = 0; i < inv_freq.size(); i += 2) reordered.push_back(inv_freq[i]);
      for (size_t i = 1; i < inv_freq.size(); i += 2) reordered.push_back(inv_freq[i]);
      return reordered;
    }
    case RopeType::kAxialShared: {
      // Llama 4's vision rope and DINOv3's: the default frequencies of a dim/2-wide rope,
      // base^(-4k/dim) for k < dim/4, once for each of the two axes (mrope_section
      // {0, dim/4, dim/4}).
      std::vector<real> inv_freq = default_frequencies<real>(dim / 2, s.base, s);
      const size_t quarter = inv_freq.size();
      for (size_t k = 0; k < quarter; ++k) inv_freq.push_back(inv_freq[k]);
      return inv_freq;
    }
    case RopeType::kProportional: {
      // Gemma's proportional RoPE: exponents over the whole dim, the pairs past the rotated
      // proportion at frequency 0 (they pass through), all divided by factor.
      const int64_t rotated = proportional_rotated_pairs(dim, s.partial_rotary_factor);
      std::vector<real> inv_freq = default_frequencies<real>(dim, s.base, s, rotated);
      const real factor = static_cast<real>(s.has_factor ? s.factor : 1.0);
      for (real& f : inv_freq) f /= factor;
      inv_freq.resize(static_cast<size_t>(dim / 2), real(0));
      return inv_freq;
    }
  }
  return {};
}

}  // namespace

int64_t rope_rotary_dim(int64_t dim, const RopeScaling& s) {
  if (s.rope_type == RopeType::kProportional) return dim;
  return static_cast<int64_t>(static_cast<double>(dim) * s.partial_rotary_factor);
}

std::string check_rope_scaling(int64_t head_dim, const RopeScaling& s) {
  if (!(s.partial_rotary_factor >= 0.0 && s.partial_rotary_factor <= 1.0)) {
    return "scaling['partial_rotary_factor'] must be in [0, 1]";
  }
  if (head_dim < 0 || head_dim > kMaxRopeDim) {
    return "dim must be an even number in [0, 2^20], got " + std::to_string(head_dim);
  }
  const int64_t dim = rope_rotary_dim(head_dim, s);
  if (dim % 2 != 0) {
    return dim == head_dim
               ? "dim must be an even number in [0, 2^20], got " + std::to_string(dim)
               : "int(dim * partial_rotary_factor) must be even, got " + std::to_string(dim);
  }
  if (!finite_positive(s.base)) return "base must be a finite number > 0";
  if (s.has_attention_factor && !std::isfinite(s.attention_factor)) {
    return "scaling['attention_factor'] must be finite";
  }
  if (s.max_position_embeddings < 0 || s.original_max_position_embeddings < 0 || s.seq_len < 0) {
    return "max_position_embeddings, original_max_position_embeddings and seq_len must be >= 0";
  }
  switch (s.rope_type) {
    case RopeType::kDefault:
      return "";
    case RopeType::kLinear:
      if (!s.has_factor) return "rope_type 'linear' needs scaling['factor']";
      if (!finite_positive(s.factor)) return "scaling['factor'] must be finite and > 0";
      return "";
    case RopeType::kDynamic:
      if (!s.has_factor) return "rope_type 'dynamic' needs scaling['factor']";
      if (!finite_positive(s.factor)) return "scaling['factor'] must be finite and > 0";
      if (s.max_position_embeddings <= 0) {
        return "rope_type 'dynamic' needs max_position_embeddings";
      }
      if (dim <= 2) return "rope_type 'dynamic' needs dim > 2";
      return "";
    case RopeType::kYarn:
      if (s.has_factor && !finite_positive(s.factor)) {
        return "scaling['factor'] must be finite and > 0";
      }
      if (s.original_max_position_embeddings <= 0 && s.max_position_embeddings <= 0) {
        return "rope_type 'yarn' needs max_position_embeddings or "
               "scaling['original_max_position_embeddings']";
      }
      if (!s.has_factor &&
          (s.max_position_embeddings <= 0 || s.original_max_position_embeddings <= 0)) {
        return "rope_type 'yarn' without scaling['factor'] needs max_position_embeddings and "
               "scaling['original_max_position_embeddings'] (factor is their ratio)";
      }
      if (!finite_positive(s.beta_fast) || !finite_positive(s.beta_slow)) {
        return "scaling['beta_fast'] and scaling['beta_slow'] must be finite and > 0";
      }
      if (!std::isfinite(s.mscale) || !std::isfinite(s.mscale_all_dim)) {
        return "scaling['mscale'] and scaling['mscale_all_dim'] must be finite";
      }
      if (!(s.base > 1.0)) return "rope_type 'yarn' needs base > 1";
      return "";
    case RopeType::kLongrope: {
      if (static_cast<int64_t>(s.short_factor.size()) != dim / 2 ||
          static_cast<int64_t>(s.long_factor.size()) != dim / 2) {
        return "rope_type 'longrope' needs scaling['short_factor'] and scaling['long_factor'] "
               "with dim / 2 entries each";
      }
      for (const std::vector<double>* factors : {&s.short_factor, &s.long_factor}) {
        for (double f : *factors) {
          if (!finite_positive(f)) {
            return "scaling['short_factor'] and scaling['long_factor'] entries must be finite "
                   "and > 0";
          }
        }
      }
      if (s.max_position_embeddings <= 0) {
        return "rope_type 'longrope' needs max_position_embeddings";
      }
      if (s.has_factor && !std::isfinite(s.factor)) return "scaling['factor'] must be finite";
      return "";
    }
    case RopeType::kAxial:
      if (dim % 4 != 0) return "rope_type 'axial' needs a rotary dim divisible by 4";
      return "";
    case RopeType::kAxialShared:
      if (dim % 4 != 0) return "rope_type 'axial_shared' needs a rotary dim divisible by 4";
      return "";
    case RopeType::kProportional:
      if (s.has_factor && !finite_positive(s.factor)) {
        return "scaling['factor'] must be finite and > 0";
      }
      return "";
    case RopeType::kLlama3:
      if (!s.has_factor) return "rope_type 'llama3' needs scaling['factor']";
      if (s.original_max_position_embeddings <= 0) {
        return "rope_type 'llama3' needs scaling['original_max_position_embeddings']";
      }
      if (!finite_positive(s.factor) || !finite_positive(s.low_freq_factor) ||
          !finite_positive(s.high_freq_factor) || s.high_freq_factor == s.low_freq_factor) {
        return "rope_type 'llama3' needs finite factor, low_freq_factor and high_freq_factor > 0 "
               "with high_freq_factor != low_freq_factor";
      }
      return "";
  }
  return "unknown rope_type";
}

std::string compute_rope_frequencies(int64_t head_dim, const RopeScaling& s, RopeFrequencies& out) {
  std::string error = check_rope_scaling(head_dim, s);
  if (!error.empty()) return error;
  const int64_t dim = rope_rotary_dim(head_dim, s);
  if (s.float32_arithmetic) {
    const std::vector<float> inv_freq = scaled_frequencies<float>(dim, s, out.attention_factor);
    out.inv_freq.assign(inv_freq.begin(), inv_freq.end());
  } else {
    out.inv_freq = scaled_frequencies<double>(dim, s, out.attention_factor);
  }
  return "";
}

}  // namespace kernels
}  // namespace posenc
