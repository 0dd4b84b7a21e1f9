// add_positional (y = dropout_p(combine(scale * x, PE(pos)))), its input gradient and its
// learned-table gradient: schemas, parsing, the implementation on every backend, autograd and the
// C++ API.
#include "posenc/add_positional.h"

#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "api/call.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checks.h"
#include "core/operator.h"
#include "core/rows.h"

namespace posenc {
namespace {

using core::Arguments, core::Backend, core::RowCall;

// grid: the 2D/3D codes of patch tokens ((H, W) or (T, H, W), kernels::GridCode): positions are
// then token indices, the first extra_tokens (cls) without a code, and channel segment s
// (grid_dims[s] wide) codes axis grid_axes[s] at (index + grid_origin) * grid_scale.
const core::OperatorDefinition kForward{
    R"(add_positional(Tensor x, Tensor? positions=None, Tensor? table=None, Tensor? seed=None,
    *, str kind="sinusoidal", str combine="add", float scale=1.0, int offset=0,
    float base=10000.0, str convention="vaswani", str? layout=None, int[]? grid=None,
    int extra_tokens=0, int[]? grid_dims=None, int[]? grid_axes=None,
    int[]? grid_origin=None, float[]? grid_scale=None, float dropout=0.0,
    bool training=True) -> Tensor)",
    {"x", "positions", "table", "seed", "kind", "combine", "scale", "offset", "base", "convention",
     "layout", "grid", "extra_tokens", "grid_dims", "grid_axes", "grid_origin", "grid_scale",
     "dropout", "training"}};

// The gradient with respect to x; grad: [..., T, D].
const core::OperatorDefinition kInputGradient{
    R"(add_positional_backward(Tensor grad, Tensor? positions=None, Tensor? table=None,
    Tensor? seed=None, *, str kind="sinusoidal", str combine="add", float scale=1.0,
    int offset=0, float base=10000.0, str convention="vaswani", str? layout=None,
    int[]? grid=None, int extra_tokens=0, int[]? grid_dims=None, int[]? grid_axes=None,
    int[]? grid_origin=None, float[]? grid_scale=None, float dropout=0.0,
    bool training=True) -> Tensor)",
    {"grad", "positions", "table", "seed", "kind", "combine", "scale", "offset", "base",
     "convention", "layout", "grid", "extra_tokens", "grid_dims", "grid_axes", "grid_origin",
     "grid_scale", "dropout", "training"}};

// The gradient with respect to the learned table: [table_rows, D]. x is needed for combine="mul".
const core::OperatorDefinition kTableGradient{
    R"(add_positional_table_backward(Tensor grad, Tensor? x, Tensor? positions, Tensor? seed,
    SymInt table_rows, *, str combine="add", float scale=1.0, int offset=0,
    float dropout=0.0, bool training=True) -> Tensor)",
    {"grad", "x", "positions", "seed", "table_rows", "combine", "scale", "offset", "dropout",
     "training"}};

enum class Pass { kForward, kInputGradient, kTableGradient };

RowCall parse(const Arguments& args, Pass pass) {
  RowCall call;
  call.name = args.op_name();
  const char* op = call.name;
  const bool computed_code = pass != Pass::kTableGradient;
  if (computed_code) call.options.code = core::parse_code_options(args, core::grid_given(args));
  core::parse_combine_options(args, call.options);

  const char* main_name = pass == Pass::kForward ? "x" : "grad";
  call.rows = args.tensor(main_name);
  core::check_rows_tensor(op, call.rows, main_name);
  const at::Tensor& main = call.rows;
  const c10::SymInt dim = main.sym_size(-1);
  const auto sizes = main.sym_sizes();
  call.row_sizes.assign(sizes.begin(), sizes.end());
  const std::vector<c10::SymInt> index_sizes(sizes.begin(), sizes.end() - 1);
  call.dtype = main.scalar_type();

  if (pass == Pass::kTableGradient) {
    core::parse_table_rows(args, call, dim);
    // The forward's x, which the table gradient of combine="mul" multiplies by.
    call.x = args.optional_tensor("x");
    if (call.options.combine == kernels::Combine::kMul) {
      TORCH_CHECK_VALUE(call.x.has_value(), op,
                        ": combine='mul' needs x, the forward's input of grad's shape");
    }
    if (call.x.has_value()) {
      TORCH_CHECK_VALUE(call.x->sym_sizes() == call.rows.sym_sizes(), op,
                        ": x must have grad's shape ", call.rows.sym_sizes(), ", got ",
                        call.x->sym_sizes());
      TORCH_CHECK_TYPE(call.x->scalar_type() == call.rows.scalar_type(), op,
                       ": x must have grad's dtype (", call.rows.scalar_type(), "), got ",
                       call.x->scalar_type());
      core::check_same_device(op, main, main_name, *call.x, "x");
    }
  } else {
    call.out_sizes = call.row_sizes;
    core::parse_table(args, call, call.options.code.kind == kernels::PositionKind::kLearned, main,
                      main_name, dim, pass == Pass::kForward ? "x.size(-1)" : "grad.size(-1)");
  }
  core::parse_seed(args, call, main, main_name);
  if (computed_code) {
    call.options.grid =
        core::parse_grid(args, dim.guard_int(__FILE__, __LINE__), call.options.code.kind);
  }
  core::parse_positions(args, call, main, main_name, index_sizes,
                        pass == Pass::kForward ? "x.shape[:-1]" : "grad.shape[:-1]");
  return call;
}

// The forward, and the input gradient: d/dx of scale*x + PE is scale; of (scale*x)*PE it is
// scale*PE: the forward kernel with the code dropped (add) or kept (mul), under the same dropout
// mask.
// The forward, and the input gradient: d/dx of scale*x + PE is scale; of (scale*x)*PE it is
// scale*PE: the forward kernel with the code dropped (add) or kept (mul), under the same dropout
// mask.
template <Pass kPass>
struct Rows {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    const RowCall call = parse(args, kPass);
    const kernels::Combine combine = call.options.combine;
    const bool add = combine == kernels::Combine::kAdd;
    const at::Tensor out = at::empty_like(call.rows);
    core::run_rows<kBackend>(call, out, call.rows,
                             kPass == Pass::kForward ? combine
                             : add                   ? kernels::Combine::kScaleOnly
                                                     : kernels::Combine::kMul);
    return out;
  }
};

struct TableGradient {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    return core::run_scatter<kBackend>(parse(args, Pass::kTableGradient),
                                       core::ScatterTarget::kTable);
  }
};

// The table gradient reads x only for combine="mul" (the scaled input multiplies it).
bool backward_needs(std::string_view name, const Arguments& args) {
  return name != "x" || args.string("combine") == "mul";
}

const core::Derivative kDerivative{
    "posenc::add_positional",
    {"x", "table"},
    {{{"posenc::add_positional_backward", {"x", nullptr}, nullptr},
      {"posenc::add_positional_table_backward", {"table", nullptr}, nullptr}}},
    &backward_needs};

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  core::define<Rows<Pass::kForward>>(m, kForward);
  core::define<Rows<Pass::kInputGradient>>(m, kInputGradient);
  core::define<TableGradient>(m, kTableGradient);
  core::register_derivative(m, kDerivative);
  core::register_not_differentiable(m, "add_positional_backward");
  core::register_not_differentiable(m, "add_positional_table_backward");
}

// ---- the C++ API ----------------------------------------------------------------------------

namespace {

// The arguments of the forward and of the input gradient, whose rows are `main` (x or grad).
api::NamedArguments named(const AddPositionalOptions& o, const char* main_name,
                          const at::Tensor& main, c10::IValue seed) {
  api::NamedArguments arguments = {{main_name, main},
                                   {"positions", api::optional_value(o.positions())},
                                   {"table", api::optional_value(o.table())},
                                   {"seed", std::move(seed)}};
  api::add_code_arguments(arguments, o);
  api::add_combine_arguments(arguments, o);
  api::add_grid_arguments(arguments, o.grid());
  return arguments;
}

}  // namespace

at::Tensor add_positional(const at::Tensor& x, const AddPositionalOptions& o) {
  return api::call_operator("add_positional", named(o, "x", x, api::forward_seed(o, x.device())))[0]
      .toTensor();
}

at::Tensor add_positional_backward(const at::Tensor& grad, const AddPositionalOptions& o) {
  return api::call_operator("add_positional_backward",
                            named(o, "grad", grad, api::optional_value(o.seed())))[0]
      .toTensor();
}

at::Tensor add_positional_table_backward(const at::Tensor& grad, const std::optional<at::Tensor>& x,
                                         c10::SymInt table_rows, const AddPositionalOptions& o) {
  api::NamedArguments arguments = {{"grad", grad},
                                   {"x", api::optional_value(x)},
                                   {"positions", api::optional_value(o.positions())},
                                   {"seed", api::optional_value(o.seed())},
                                   {"table_rows", std::move(table_rows)}};
  api::add_combine_arguments(arguments, o);
  return api::call_operator("add_positional_table_backward", std::move(arguments))[0].toTensor();
}

}  // namespace posenc
