// positional_encoding (the code PE(positions) itself): schema, parsing, the implementation on
// every backend and the C++ API.
#include "posenc/positional_encoding.h"

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

// positions: any shape of integers -> [*positions.shape, dim].
const core::OperatorDefinition kDefinition{
    R"(positional_encoding(Tensor positions, int dim, *, str kind="sinusoidal",
    float base=10000.0, str convention="vaswani", str? layout=None, int[]? grid=None,
    int extra_tokens=0, int[]? grid_dims=None, int[]? grid_axes=None,
    int[]? grid_origin=None, float[]? grid_scale=None, ScalarType? dtype=None) -> Tensor)",
    {"positions", "dim", "kind", "base", "convention", "layout", "grid", "extra_tokens",
     "grid_dims", "grid_axes", "grid_origin", "grid_scale", "dtype"}};

RowCall parse(const Arguments& args) {
  RowCall call;
  call.name = args.op_name();
  const char* op = call.name;
  call.options.code = core::parse_code_options(args, core::grid_given(args));
  const at::Tensor positions = args.tensor("positions");
  core::check_index_tensor(op, positions, "positions");
  TORCH_CHECK_VALUE(call.options.code.kind != kernels::PositionKind::kLearned, op,
                    ": kind='learned' has no computed code; index the table instead");
  const int64_t dim = args.integer("dim");
  call.dtype = args["dtype"].toOptional<at::ScalarType>().value_or(at::kFloat);
  TORCH_CHECK_TYPE(core::is_supported_float(call.dtype), op, ": dtype must be ", core::kFloatTypes,
                   ", got ", call.dtype);
  const c10::SymInt count = positions.sym_numel();
  core::check_buffer_size(op, "dim", dim, count.maybe_as_int().value_or(1));
  call.options.grid = core::parse_grid(args, dim, call.options.code.kind);
  call.positions = positions.reshape({-1});
  call.size_argument = "dim";
  call.size_value = dim;
  call.out_sizes = core::with_last(positions.sym_sizes(), c10::SymInt(dim));
  call.row_sizes = {count, c10::SymInt(dim)};
  return call;
}

struct Code {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    const RowCall call = parse(args);
    at::Tensor out = core::allocate_sized(call, call.positions->options().dtype(call.dtype),
                                          /*zero=*/false, core::runs_kernels(kBackend));
    core::run_rows<kBackend>(call, out, at::Tensor(), kernels::Combine::kPositionOnly);
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  core::define<Code>(m, kDefinition);
  // No differentiable input: an error, not silence, if a gradient reaches it.
  core::register_not_differentiable(m, "positional_encoding");
}

at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim,
                               const PositionCodeOptions& o) {
  api::NamedArguments arguments = {{"positions", positions}, {"dim", dim}, {"dtype", o.dtype()}};
  api::add_code_arguments(arguments, o);
  api::add_grid_arguments(arguments, o.grid());
  return api::call_operator("positional_encoding", std::move(arguments))[0].toTensor();
}

}  // namespace posenc
