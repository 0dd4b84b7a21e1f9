// attention_bias (ALiBi, T5 relative buckets), its weight gradient and alibi_slopes: schemas,
// parsing, the implementation on every backend, autograd and the C++ API.
#include "posenc/attention_bias.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <sstream>

#include "api/call.h"
#include "attention_bias.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checks.h"
#include "core/operator.h"

#ifdef POSENC_WITH_CUDA
#include "cuda/attention_bias_launch.h"
#endif

namespace posenc {
namespace {

using core::Arguments, core::Backend;

// weight: [H] (alibi), [num_buckets, H] (t5) or [(2 Wh - 1) (2 Ww - 1), H] (swin)
// -> [1, H, query_length, key_length].
const core::OperatorDefinition kForward{
    R"(attention_bias(Tensor weight, SymInt query_length, SymInt key_length, *, str kind,
    int offset=0, bool causal=False, bool bidirectional=True, int num_buckets=32,
    int max_distance=128, int[]? window=None, ScalarType? dtype=None) -> Tensor)",
    {"weight", "query_length", "key_length", "kind", "offset", "causal", "bidirectional",
     "num_buckets", "max_distance", "window", "dtype"}};

// grad: [1, H, query_length, key_length] of the bias' dtype -> like weight.
const core::OperatorDefinition kBackward{
    R"(attention_bias_backward(Tensor grad, Tensor weight, SymInt query_length,
    SymInt key_length, *, str kind, int offset=0, bool causal=False, bool bidirectional=True,
    int num_buckets=32, int max_distance=128, int[]? window=None) -> Tensor)",
    {"grad", "weight", "query_length", "key_length", "kind", "offset", "causal", "bidirectional",
     "num_buckets", "max_distance", "window"}};

const core::OperatorDefinition kSlopes{R"(alibi_slopes(int num_heads) -> Tensor)", {"num_heads"}};

kernels::BiasKind parse_bias_kind(const char* op, std::string_view kind) {
  if (kind == "alibi") return kernels::BiasKind::kAlibi;
  if (kind == "t5") return kernels::BiasKind::kT5;
  if (kind == "swin") return kernels::BiasKind::kWindow;
  TORCH_CHECK_VALUE(false, op, ": kind must be 'alibi', 't5' or 'swin', got '", kind, "'");
}

struct BiasCall {
  const char* name = "";
  at::Tensor weight;  // [H] slopes or [num_buckets, H] table
  at::ScalarType dtype = at::kFloat;
  std::vector<c10::SymInt> out_sizes;   // [1, H, Tq, Tk]
  kernels::AttentionBiasParams params;  // everything but the pointers and lengths
  c10::SymInt query_length, key_length;
};

// The one parser of both operators' shared arguments.
BiasCall parse(const Arguments& args) {
  BiasCall call;
  call.name = "posenc.attention_bias";
  const char* op = call.name;
  kernels::AttentionBiasParams& p = call.params;
  p.kind = parse_bias_kind(op, args.string("kind"));
  const bool t5 = p.kind == kernels::BiasKind::kT5;
  const bool window = p.kind == kernels::BiasKind::kWindow;
  call.weight = args.tensor("weight");
  const at::Tensor& weight = call.weight;
  core::check_float_tensor(op, weight, "weight");
  const std::optional<std::vector<int64_t>> window_sizes = args.optional_integers("window");
  TORCH_CHECK_VALUE(
      window == window_sizes.has_value(), op,
      window ? ": kind='swin' needs window=(Wh, Ww)" : ": window applies to kind='swin' only");
  if (window) {
    const std::vector<int64_t>& sizes = *window_sizes;
    TORCH_CHECK_VALUE(sizes.size() == 2 && sizes[0] >= 1 && sizes[1] >= 1 &&
                          sizes[0] <= (1 << 15) && sizes[1] <= (1 << 15),
                      op, ": window must be two sizes (Wh, Ww) in [1, 32768], got ",
                      c10::IntArrayRef(sizes));
    p.window_height = sizes[0];
    p.window_width = sizes[1];
    const int64_t rows = (2 * sizes[0] - 1) * (2 * sizes[1] - 1);
    TORCH_CHECK_VALUE(weight.dim() == 2 && weight.sym_size(0) == rows, op,
                      ": weight must have shape ((2 Wh - 1) (2 Ww - 1), H) = (", rows,
                      ", H) for kind='swin', got ", weight.sym_sizes());
    TORCH_CHECK_VALUE(!args.boolean("causal") && args.integer("offset") == 0, op,
                      ": kind='swin' takes no causal and no offset");
  } else if (t5) {
    p.num_buckets = args.integer("num_buckets");
    p.bidirectional = args.boolean("bidirectional");
    const int64_t per_direction = p.bidirectional ? p.num_buckets / 2 : p.num_buckets;
    TORCH_CHECK_VALUE(per_direction >= 2 && per_direction <= 2 * kernels::kMaxBucketThresholds, op,
                      ": num_buckets must give 2 to ", 2 * kernels::kMaxBucketThresholds,
                      " buckets per direction (",
                      p.bidirectional ? "num_buckets / 2" : "num_buckets",
                      "), got num_buckets = ", p.num_buckets);
    const int64_t max_distance = args.integer("max_distance");
    TORCH_CHECK_VALUE(max_distance > per_direction / 2, op,
                      ": max_distance must be > the exact buckets per direction (",
                      per_direction / 2, "), got ", max_distance);
    kernels::t5_thresholds(p, max_distance);
    TORCH_CHECK_VALUE(weight.dim() == 2 && weight.sym_size(0) == p.num_buckets, op,
                      ": weight must have shape (num_buckets, H) = (", p.num_buckets,
                      ", H) for kind='t5', got ", weight.sym_sizes());
    TORCH_CHECK_VALUE(!args.boolean("causal"), op,
                      ": causal applies to kind='alibi'; a T5 decoder takes bidirectional=False "
                      "and SDPA's causal mask");
  } else {
    TORCH_CHECK_VALUE(weight.dim() == 1, op,
                      ": weight must have shape (H,) (the slopes) for kind='alibi', got ",
                      weight.sym_sizes());
    p.causal = args.boolean("causal");
  }
  call.query_length = args["query_length"].toSymInt();
  call.key_length = args["key_length"].toSymInt();
  if (window) {
    const int64_t tokens = p.window_height * p.window_width;
    TORCH_CHECK_VALUE(call.query_length == tokens && call.key_length == tokens, op,
                      ": query_length and key_length must be the window's Wh * Ww = ", tokens,
                      " tokens for kind='swin', got ", call.query_length, " and ", call.key_length);
  }
  TORCH_CHECK_VALUE(call.query_length >= 0, op, ": query_length must be >= 0, got ",
                    call.query_length);
  TORCH_CHECK_VALUE(call.key_length >= 0, op, ": key_length must be >= 0, got ", call.key_length);
  p.offset = args.integer("offset");
  TORCH_CHECK_VALUE(p.offset >= 0 && p.offset <= (int64_t{1} << 53), op,
                    ": offset must be in [0, 2^53], got ", p.offset);
  const c10::SymInt heads = weight.sym_size(-1);
  call.out_sizes = {c10::SymInt(1), heads, call.query_length, call.key_length};
  return call;
}

// The compute type of a bias or gradient of `dtype`: float, or double for float64.
at::ScalarType compute_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The lengths, for a launch; and `weight` (the call's, in the compute type) as the kernel's.
void describe(BiasCall& call, const at::Tensor& weight) {
  kernels::AttentionBiasParams& p = call.params;
  p.query_length = call.query_length.expect_int();
  p.key_length = call.key_length.expect_int();
  p.heads = call.weight.size(-1);
  TORCH_CHECK_VALUE(p.query_length + p.key_length <= (int64_t{1} << 53), call.name,
                    ": query_length + key_length must be at most 2^53");
  p.weight = weight.data_ptr();
  p.weight_head_stride = weight.stride(-1);
  p.weight_row_stride = weight.dim() == 2 ? weight.stride(0) : 0;
}

at::Tensor allocate(const BiasCall& call, at::ScalarType dtype) {
  const at::TensorOptions options = call.weight.options().dtype(dtype);
  std::ostringstream what;
  what << "query_length x key_length = " << call.query_length << " x " << call.key_length;
  core::check_output_fits(call.name, what.str(), call.out_sizes, options);
  return at::empty_symint(call.out_sizes, options);
}

struct Forward {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    BiasCall call = parse(args);
    const at::ScalarType dtype =
        args["dtype"].toOptional<at::ScalarType>().value_or(call.weight.scalar_type());
    TORCH_CHECK_TYPE(core::is_supported_float(dtype), call.name, ": dtype must be ",
                     core::kFloatTypes, ", got ", dtype);
    const at::Tensor out = allocate(call, dtype);
    if constexpr (core::runs_kernels(kBackend)) {
      // The slopes or the table in the compute type: a few values, converted once.
      const at::Tensor weight = call.weight.to(compute_type(dtype));
      describe(call, weight);
      call.params.dtype = core::kernel_dtype(dtype);
      if constexpr (kBackend == Backend::kCpu) {
        kernels::attention_bias_cpu(call.params, out.data_ptr(), core::parallel_for());
      } else {
#ifdef POSENC_WITH_CUDA
        const c10::DeviceGuard guard(out.device());
        core::check_launch(kernels::cuda::attention_bias(call.params, out.data_ptr(),
                                                         core::current_stream(out.device())),
                           "attention_bias");
#endif
      }
    }
    return out;
  }
};

struct Backward {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    BiasCall call = parse(args);
    const char* op = call.name;
    const at::Tensor grad = args.tensor("grad");
    core::check_float_tensor(op, grad, "grad");
    core::check_same_device(op, call.weight, "weight", grad, "grad");
    TORCH_CHECK_VALUE(grad.sym_sizes() == c10::SymIntArrayRef(call.out_sizes), op,
                      ": grad must have the bias' shape ", c10::SymIntArrayRef(call.out_sizes),
                      ", got ", grad.sym_sizes());
    const at::Tensor weight_grad = at::empty_like(call.weight, at::MemoryFormat::Contiguous);
    if constexpr (!core::runs_kernels(kBackend)) return weight_grad;
    describe(call, call.weight);  // the sums read no weight
    call.params.dtype = core::kernel_dtype(grad.scalar_type());
    // Sums in float for half types, else in grad's dtype.
    const at::ScalarType sum_type = compute_type(grad.scalar_type());
    // A window's gradient reads grad directly; the others sum its diagonals first.
    const int64_t count = call.params.kind == kernels::BiasKind::kWindow
                              ? 0
                              : std::max<int64_t>(0, kernels::diagonal_count(call.params));
    const at::Tensor diagonals =
        at::empty({call.params.heads, count}, grad.options().dtype(sum_type));
    const at::Tensor sums = at::empty(call.weight.sizes(), grad.options().dtype(sum_type));
    const int64_t strides[3] = {grad.stride(1), grad.stride(2), grad.stride(3)};
    if constexpr (kBackend == Backend::kCpu) {
      kernels::attention_bias_backward_cpu(call.params, grad.data_ptr(), strides,
                                           diagonals.data_ptr(), sums.data_ptr(),
                                           core::parallel_for());
    } else {
#ifdef POSENC_WITH_CUDA
      const c10::DeviceGuard guard(grad.device());
      core::check_launch(kernels::cuda::attention_bias_backward(
                             call.params, grad.data_ptr(), strides, diagonals.data_ptr(),
                             sums.data_ptr(), core::current_stream(grad.device())),
                         "attention_bias_backward");
#endif
    }
    weight_grad.copy_(sums);
    return weight_grad;
  }
};

// On the CPU whatever the caller's device: a few host values.
at::Tensor slopes(const Arguments& args) {
  const int64_t heads = args.integer("num_heads");
  TORCH_CHECK_VALUE(heads >= 1 && heads <= (int64_t{1} << 20), "posenc.alibi_slopes",
                    ": num_heads must be in [1, 2^20], got ", heads);
  at::Tensor out = at::empty({heads}, at::kFloat);
  float* data = out.data_ptr<float>();
  for (int64_t h = 0; h < heads; ++h) data[h] = static_cast<float>(kernels::alibi_slope(h, heads));
  return out;
}

const core::Derivative kDerivative{
    "posenc::attention_bias",
    {"weight", nullptr},
    {{{"posenc::attention_bias_backward", {"weight", nullptr}, nullptr}, {}}}};

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  core::define<Forward>(m, kForward);
  core::define<Backward>(m, kBackward);
  core::define_composite<&slopes>(m, kSlopes);
  core::register_derivative(m, kDerivative);
  core::register_not_differentiable(m, "attention_bias_backward");
  core::register_not_differentiable(m, "alibi_slopes");
}

namespace {

api::NamedArguments named(const at::Tensor& weight, int64_t query_length, int64_t key_length,
                          const AttentionBiasOptions& o) {
  return {{"weight", weight},
          {"query_length", query_length},
          {"key_length", key_length},
          {"kind", o.kind()},
          {"offset", o.offset()},
          {"causal", o.causal()},
          {"bidirectional", o.bidirectional()},
          {"num_buckets", o.num_buckets()},
          {"max_distance", o.max_distance()},
          {"window", o.window()}};
}

}  // namespace

at::Tensor attention_bias(const at::Tensor& weight, int64_t query_length, int64_t key_length,
                          const AttentionBiasOptions& o) {
  api::NamedArguments arguments = named(weight, query_length, key_length, o);
  arguments.emplace_back("dtype", o.dtype());
  return api::call_operator("attention_bias", std::move(arguments))[0].toTensor();
}

at::Tensor attention_bias_backward(const at::Tensor& grad, const at::Tensor& weight,
                                   int64_t query_length, int64_t key_length,
                                   const AttentionBiasOptions& o) {
  api::NamedArguments arguments = named(weight, query_length, key_length, o);
  arguments.emplace_back("grad", grad);
  return api::call_operator("attention_bias_backward", std::move(arguments))[0].toTensor();
}

at::Tensor alibi_slopes(int64_t num_heads) {
  return api::call_operator("alibi_slopes", {{"num_heads", num_heads}})[0].toTensor();
}

}  // namespace posenc
