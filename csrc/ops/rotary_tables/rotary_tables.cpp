// rotary_tables (transformers' apply_rotary_pos_emb with given cos/sin; transpose=True is its
// backward): schema, parsing, the implementation on every backend, autograd and the C++ API.
#include "posenc/rotary_tables.h"

#include <ATen/ExpandUtils.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "api/call.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checks.h"
#include "core/operator.h"
#include "rotary.h"

#ifdef POSENC_WITH_CUDA
#include "cuda/rotary_tables_launch.h"
#endif

namespace posenc {
namespace {

using core::Arguments, core::Backend;

// q, k: [..., D]; cos, sin: [B, S, D] (or broadcastable to q after unsqueeze(unsqueeze_dim)).
// transpose=True applies the transposed map: the backward.
const core::OperatorDefinition kDefinition{
    R"(rotary_tables(Tensor q, Tensor? k, Tensor cos, Tensor sin, *, int unsqueeze_dim=1,
    bool transpose=False) -> Tensor[])",
    {"q", "k", "cos", "sin", "unsqueeze_dim", "transpose"}};

struct TablesCall {
  const char* name = "";
  at::Tensor q;                 // [..., D]
  std::optional<at::Tensor> k;  // [..., D]
  at::Tensor cos, sin;          // broadcastable to q after unsqueeze(unsqueeze_dim)
  int64_t unsqueeze_dim = 1;
  bool transpose = false;
};

TablesCall parse(const Arguments& args) {
  TablesCall call;
  // Named as the Python function users call.
  call.name = "posenc.apply_rotary_pos_emb";
  const char* op = call.name;
  call.q = args.tensor("q");
  call.k = args.optional_tensor("k");
  call.cos = args.tensor("cos");
  call.sin = args.tensor("sin");
  call.unsqueeze_dim = args.integer("unsqueeze_dim");
  call.transpose = args.boolean("transpose");
  const at::Tensor& q = call.q;
  core::check_float_tensor(op, q, "q");
  TORCH_CHECK_VALUE(q.dim() >= 1 && q.dim() <= kernels::kMaxTableDims + 1, op,
                    ": q must have 1 to ", kernels::kMaxTableDims + 1, " dimensions, got ",
                    q.dim());
  TORCH_CHECK_VALUE(q.sym_size(-1) % 2 == 0, op, ": the last dimension of q must be even, got ",
                    q.sym_size(-1));
  TORCH_CHECK_TYPE(core::is_supported_float(call.cos.scalar_type()) &&
                       core::is_supported_float(call.sin.scalar_type()),
                   op, ": cos and sin must be floating tensors (", core::kFloatTypes, "), got ",
                   call.cos.scalar_type(), " and ", call.sin.scalar_type());
  TORCH_CHECK_VALUE(call.cos.sym_sizes() == call.sin.sym_sizes(), op,
                    ": cos and sin must have the same shape, got ", call.cos.sym_sizes(), " and ",
                    call.sin.sym_sizes());
  const int64_t cos_dim = call.cos.dim();
  TORCH_CHECK_VALUE(call.unsqueeze_dim >= -(cos_dim + 1) && call.unsqueeze_dim <= cos_dim, op,
                    ": unsqueeze_dim must be within [", -(cos_dim + 1), ", ", cos_dim, "], got ",
                    call.unsqueeze_dim);
  std::vector<at::Tensor> operands{q};
  if (call.k.has_value()) {
    const at::Tensor& k = *call.k;
    TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type(), op, ": k must have q's dtype (",
                     q.scalar_type(), "), got ", k.scalar_type());
    TORCH_CHECK_VALUE(k.dim() == q.dim() && k.sym_size(-1) == q.sym_size(-1), op,
                      ": k must have q's number of dimensions and last dimension, got ",
                      k.sym_sizes(), " for q of shape ", q.sym_sizes());
    core::check_same_device(op, q, "q", k, "k");
    operands.push_back(k);
  }
  core::check_same_device(op, q, "q", call.cos, "cos");
  core::check_same_device(op, q, "q", call.sin, "sin");
  const at::Tensor unsqueezed = call.cos.unsqueeze(call.unsqueeze_dim);
  for (const at::Tensor& x : operands) {
    TORCH_CHECK_VALUE(at::is_expandable_to(unsqueezed.sym_sizes(), x.sym_sizes()), op,
                      ": cos.unsqueeze(", call.unsqueeze_dim, ") of shape ", unsqueezed.sym_sizes(),
                      " must broadcast to ", x.sym_sizes());
  }
  return call;
}

// q, k: [..., D] -> [q_out] or [q_out, k_out]
struct Tables {
  template <Backend kBackend>
  static std::vector<at::Tensor> run(const Arguments& args) {
    const TablesCall call = parse(args);
    std::vector<at::Tensor> inputs{call.q};
    if (call.k.has_value()) inputs.push_back(*call.k);
    std::vector<at::Tensor> outputs;
    for (const at::Tensor& x : inputs) outputs.push_back(at::empty_like(x));
    if constexpr (core::runs_kernels(kBackend)) {
      kernels::RotaryTableParams params;
      params.dtype = core::kernel_dtype(call.q.scalar_type());
      params.transpose = call.transpose;
      // cos/sin are [B, S, D]-sized: converting their dtype once is cheap next to q and k.
      const at::Tensor cos = call.cos.to(call.q.scalar_type());
      const at::Tensor sin = call.sin.to(call.q.scalar_type());
      params.cos = cos.data_ptr();
      params.sin = sin.data_ptr();
      for (size_t i = 0; i < inputs.size(); ++i) {
        const at::Tensor& x = inputs[i];
        const at::Tensor& out = outputs[i];
        const at::Tensor cos_b = cos.unsqueeze(call.unsqueeze_dim).expand(x.sizes());
        const at::Tensor sin_b = sin.unsqueeze(call.unsqueeze_dim).expand(x.sizes());
        kernels::RotaryTableOperand& operand = params.operands[i];
        operand.in = x.data_ptr();
        operand.out = out.data_ptr();
        operand.ndim = static_cast<int>(x.dim());
        for (int64_t d = 0; d < x.dim(); ++d) {
          operand.sizes[d] = x.size(d);
          operand.in_strides[d] = x.stride(d);
          operand.out_strides[d] = out.stride(d);
          operand.cos_strides[d] = cos_b.stride(d);
          operand.sin_strides[d] = sin_b.stride(d);
        }
      }
      params.operand_count = static_cast<int>(inputs.size());
      if constexpr (kBackend == Backend::kCpu) {
        kernels::rotary_tables_cpu(params, core::parallel_for());
      } else {
#ifdef POSENC_WITH_CUDA
        const c10::DeviceGuard guard(call.q.device());
        core::check_launch(
            kernels::cuda::rotary_tables(params, core::current_stream(call.q.device())),
            "rotary_tables");
#endif
      }
    }
    return outputs;
  }
};

// The backward is the transposed map.
const core::Derivative kDerivative{"posenc::rotary_tables",
                                   {"q", "k"},
                                   {{{"posenc::rotary_tables", {"q", "k"}, "transpose"}, {}}}};

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  core::define<Tables>(m, kDefinition);
  core::register_derivative(m, kDerivative);
}

std::vector<at::Tensor> rotary_tables(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      int64_t unsqueeze_dim, bool transpose) {
  return api::call_operator("rotary_tables", {{"q", q},
                                              {"k", api::optional_value(k)},
                                              {"cos", cos},
                                              {"sin", sin},
                                              {"unsqueeze_dim", unsqueeze_dim},
                                              {"transpose", transpose}})[0]
      .toTensorVector();
}

}  // namespace posenc
