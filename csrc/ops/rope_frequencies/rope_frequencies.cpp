// rope_frequencies ((inv_freq, attention_factor) of a Hugging Face rope type): schema, parsing,
// the implementation (host arithmetic, for every device) and the C++ API.
#include "ops/rope_frequencies/rope_frequencies.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/pow.h>
#include <torch/library.h>

#include <algorithm>

#include "api/call.h"
#include "core/checks.h"
#include "core/operator.h"
#include "posenc/rope_frequencies.h"

namespace posenc {
namespace rope {

kernels::Float32Powers torch_float32_powers() {
  return [](double base, const float* exponents, float* out, int64_t n) {
    const at::Tensor e = at::from_blob(const_cast<float*>(exponents), {n}, at::kFloat);
    const at::Tensor powers = at::pow(at::Scalar(base), e).contiguous();
    std::copy(powers.data_ptr<float>(), powers.data_ptr<float>() + n, out);
  };
}

std::vector<double> default_frequencies(int64_t rotary_dim, double base, bool float32) {
  kernels::RopeScaling scaling;
  scaling.base = base;
  scaling.float32_arithmetic = float32;
  scaling.float32_powers = torch_float32_powers();
  kernels::RopeFrequencies frequencies;
  const std::string error = kernels::compute_rope_frequencies(rotary_dim, scaling, frequencies);
  TORCH_INTERNAL_ASSERT(error.empty(), error);
  return std::move(frequencies.inv_freq);
}

}  // namespace rope

namespace {

using core::Arguments;

// (inv_freq [dim / 2], attention_factor) for a Hugging Face rope type: float64 from the formulas
// in double (precision="exact"), or float32 from transformers' float32 arithmetic.
const core::OperatorDefinition kDefinition{
    R"(rope_frequencies(int dim, *, float base=10000.0, str rope_type="default",
    float? factor=None, int? max_position_embeddings=None,
    int? original_max_position_embeddings=None, int? seq_len=None,
    float? attention_factor=None, float beta_fast=32.0, float beta_slow=1.0,
    float? mscale=None, float? mscale_all_dim=None, bool truncate=True,
    float low_freq_factor=1.0, float high_freq_factor=4.0, float[]? short_factor=None,
    float[]? long_factor=None, str precision="exact",
    float partial_rotary_factor=1.0) -> (Tensor, float))",
    {"dim", "base", "rope_type", "factor", "max_position_embeddings",
     "original_max_position_embeddings", "seq_len", "attention_factor", "beta_fast", "beta_slow",
     "mscale", "mscale_all_dim", "truncate", "low_freq_factor", "high_freq_factor", "short_factor",
     "long_factor", "precision", "partial_rotary_factor"}};

struct Call {
  int64_t dim = 0;
  kernels::RopeScaling scaling;
};

Call parse(const Arguments& args) {
  Call call;
  const char* op = args.op_name();
  call.dim = args.integer("dim");
  kernels::RopeScaling& s = call.scaling;
  const std::string_view rope_type = args.string("rope_type");
  const std::optional<kernels::RopeType> type = kernels::parse_rope_type(std::string(rope_type));
  TORCH_CHECK_VALUE(type.has_value(), op, ": unknown rope_type '", rope_type, "'; expected ",
                    kernels::kRopeTypeNames);
  s.rope_type = *type;
  s.float32_arithmetic =
      core::parse_precision(op, args.string("precision")) == core::Precision::kTransformers;
  s.base = args.real("base");
  const std::optional<double> factor = args.optional_real("factor");
  s.has_factor = factor.has_value();
  s.factor = factor.value_or(1.0);
  s.partial_rotary_factor = args.real("partial_rotary_factor");
  s.max_position_embeddings = args.optional_integer("max_position_embeddings").value_or(0);
  s.original_max_position_embeddings =
      args.optional_integer("original_max_position_embeddings").value_or(0);
  s.seq_len = args.optional_integer("seq_len").value_or(0);
  const std::optional<double> attention_factor = args.optional_real("attention_factor");
  s.has_attention_factor = attention_factor.has_value();
  s.attention_factor = attention_factor.value_or(1.0);
  s.beta_fast = args.real("beta_fast");
  s.beta_slow = args.real("beta_slow");
  s.mscale = args.optional_real("mscale").value_or(0.0);
  s.mscale_all_dim = args.optional_real("mscale_all_dim").value_or(0.0);
  s.truncate = args.boolean("truncate");
  s.low_freq_factor = args.real("low_freq_factor");
  s.high_freq_factor = args.real("high_freq_factor");
  s.short_factor = args.optional_reals("short_factor").value_or(std::vector<double>{});
  s.long_factor = args.optional_reals("long_factor").value_or(std::vector<double>{});
  s.float32_powers = rope::torch_float32_powers();
  const std::string error = kernels::check_rope_scaling(call.dim, s);
  TORCH_CHECK_VALUE(error.empty(), op, ": ", error);
  return call;
}

// On the CPU whatever the device of the caller: the frequencies are a few host values.
std::vector<c10::IValue> run(const Arguments& args) {
  const Call call = parse(args);
  kernels::RopeFrequencies result;
  const std::string error = kernels::compute_rope_frequencies(call.dim, call.scaling, result);
  TORCH_CHECK_VALUE(error.empty(), args.op_name(), ": ", error);
  const int64_t count = static_cast<int64_t>(result.inv_freq.size());
  at::Tensor inv_freq = at::empty({count}, at::kDouble);
  std::copy(result.inv_freq.begin(), result.inv_freq.end(), inv_freq.data_ptr<double>());
  // float32 arithmetic gives float values: the cast is exact.
  if (call.scaling.float32_arithmetic) inv_freq = inv_freq.to(at::kFloat);
  return {inv_freq, result.attention_factor};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) { core::define_composite<&run>(m, kDefinition); }

std::tuple<at::Tensor, double> rope_frequencies(int64_t dim, const RopeFrequenciesOptions& o) {
  const torch::jit::Stack results = api::call_operator(
      "rope_frequencies",
      {{"dim", dim},
       {"base", o.base()},
       {"rope_type", o.rope_type()},
       {"factor", o.factor()},
       {"max_position_embeddings", o.max_position_embeddings()},
       {"original_max_position_embeddings", o.original_max_position_embeddings()},
       {"seq_len", o.seq_len()},
       {"attention_factor", o.attention_factor()},
       {"beta_fast", o.beta_fast()},
       {"beta_slow", o.beta_slow()},
       {"mscale", o.mscale()},
       {"mscale_all_dim", o.mscale_all_dim()},
       {"truncate", o.truncate()},
       {"low_freq_factor", o.low_freq_factor()},
       {"high_freq_factor", o.high_freq_factor()},
       {"short_factor", o.short_factor()},
       {"long_factor", o.long_factor()},
       {"precision", o.precision()},
       {"partial_rotary_factor", o.partial_rotary_factor()}});
  return {results[0].toTensor(), results[1].toDouble()};
}

}  // namespace posenc
