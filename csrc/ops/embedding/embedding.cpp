// embedding (y = dropout_p(combine(scale * weight[ids], PE(pos)))), its weight gradient and its
// learned-table gradient: schemas, parsing, the implementation on every backend, autograd and the
// C++ API.
#include "posenc/embedding.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "api/call.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checks.h"
#include "core/operator.h"
#include "core/rows.h"

namespace posenc {
namespace {

using core::Arguments, core::Backend, core::RowCall;

// ids: [..., T], weight: [V, D] -> [..., T, D]. scale=None means sqrt(D). Tokens equal to
// padding_idx get no position code. fairseq_positions: positions from fairseq's make_positions
// (needs padding_idx).
const core::OperatorDefinition kForward{
    R"(embedding(Tensor ids, Tensor weight, Tensor? positions=None, Tensor? table=None,
    Tensor? seed=None, *, str kind="sinusoidal", str combine="add", float? scale=None,
    int offset=0, int? padding_idx=None, bool fairseq_positions=False,
    float base=10000.0, str convention="vaswani", str? layout=None, float dropout=0.0,
    bool training=True) -> Tensor)",
    {"ids", "weight", "positions", "table", "seed", "kind", "combine", "scale", "offset",
     "padding_idx", "fairseq_positions", "base", "convention", "layout", "dropout", "training"}};

// The gradient with respect to weight: [V, D] (weight gives the shape); grad: [..., T, D].
const core::OperatorDefinition kWeightGradient{
    R"(embedding_backward(Tensor grad, Tensor ids, Tensor weight, Tensor? positions,
    Tensor? table, Tensor? seed, *, str kind="sinusoidal", str combine="add",
    float? scale=None, int offset=0, int? padding_idx=None,
    bool fairseq_positions=False, float base=10000.0, str convention="vaswani",
    str? layout=None, float dropout=0.0, bool training=True) -> Tensor)",
    {"grad", "ids", "weight", "positions", "table", "seed", "kind", "combine", "scale", "offset",
     "padding_idx", "fairseq_positions", "base", "convention", "layout", "dropout", "training"}};

// The gradient with respect to the learned table: [table_rows, D].
const core::OperatorDefinition kTableGradient{
    R"(embedding_table_backward(Tensor grad, Tensor ids, Tensor weight, Tensor? positions,
    Tensor? seed, SymInt table_rows, *, str combine="add", float? scale=None,
    int offset=0, int? padding_idx=None, bool fairseq_positions=False,
    float dropout=0.0, bool training=True) -> Tensor)",
    {"grad", "ids", "weight", "positions", "seed", "table_rows", "combine", "scale", "offset",
     "padding_idx", "fairseq_positions", "dropout", "training"}};

enum class Pass { kForward, kWeightGradient, kTableGradient };

RowCall parse(const Arguments& args, Pass pass) {
  RowCall call;
  call.name = args.op_name();
  const char* op = call.name;
  const bool computed_code = pass != Pass::kTableGradient;
  if (computed_code) call.options.code = core::parse_code_options(args, /*on_grid=*/false);
  core::parse_combine_options(args, call.options);

  call.ids = args.tensor("ids");
  call.weight = args.tensor("weight");
  core::check_index_tensor(op, call.ids, "ids");
  TORCH_CHECK_VALUE(call.ids.dim() >= 1 && call.ids.dim() <= kernels::kMaxBatchDims + 1, op,
                    ": ids must have shape (..., T) with 1 to ", kernels::kMaxBatchDims + 1,
                    " dimensions, got ", call.ids.dim(), " dimension(s)");
  core::check_float_tensor(op, call.weight, "weight");
  TORCH_CHECK_VALUE(call.weight.dim() == 2, op, ": weight must have shape (V, D), got ",
                    call.weight.sym_sizes());
  core::check_same_device(op, call.weight, "weight", call.ids, "ids");
  const at::Tensor& main = call.weight;
  const c10::SymInt dim = call.weight.sym_size(1);
  const std::vector<c10::SymInt> index_sizes(call.ids.sym_sizes().begin(),
                                             call.ids.sym_sizes().end());
  call.row_sizes = core::with_last(call.ids.sym_sizes(), dim);
  // As in nn.Embedding: within [-V, V), negative counts from the end.
  const std::optional<int64_t> padding_idx = args.optional_integer("padding_idx");
  if (padding_idx.has_value()) {
    const int64_t vocab = call.weight.sym_size(0).guard_int(__FILE__, __LINE__);
    TORCH_CHECK_VALUE(*padding_idx >= -vocab && *padding_idx < vocab, op,
                      ": padding_idx must be within [-V, V) = [", -vocab, ", ", vocab, "), got ",
                      *padding_idx);
    call.padding_idx = *padding_idx < 0 ? *padding_idx + vocab : *padding_idx;
  }
  if (std::isnan(call.options.scale)) {
    call.options.scale = std::sqrt(static_cast<double>(dim.guard_int(__FILE__, __LINE__)));
  }
  call.fairseq_positions = args.boolean("fairseq_positions");

  if (pass != Pass::kForward) {
    call.rows = args.tensor("grad");
    core::check_rows_tensor(op, call.rows, "grad");
    TORCH_CHECK_VALUE(call.rows.dim() == call.ids.dim() + 1 &&
                          call.rows.sym_sizes().slice(0, call.ids.dim()) == call.ids.sym_sizes() &&
                          call.rows.sym_size(-1) == dim,
                      op, ": grad must have shape ids.shape + (D,) = ", call.row_sizes, ", got ",
                      call.rows.sym_sizes());
    TORCH_CHECK_TYPE(call.rows.scalar_type() == call.weight.scalar_type(), op,
                     ": grad must have weight's dtype (", call.weight.scalar_type(), "), got ",
                     call.rows.scalar_type());
    core::check_same_device(op, call.weight, "weight", call.rows, "grad");
  }
  call.dtype = main.scalar_type();
  switch (pass) {
    case Pass::kForward:
      call.out_sizes = call.row_sizes;
      break;
    case Pass::kWeightGradient:
      call.out_sizes.assign(call.weight.sym_sizes().begin(), call.weight.sym_sizes().end());
      break;
    case Pass::kTableGradient:
      core::parse_table_rows(args, call, dim);
      break;
  }
  if (computed_code) {
    core::parse_table(args, call, call.options.code.kind == kernels::PositionKind::kLearned, main,
                      "weight", dim, "weight.size(1)");
  }
  core::parse_seed(args, call, main, "weight");
  core::parse_positions(args, call, main, "weight", index_sizes, "ids.shape");
  return call;
}

struct Forward {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    const RowCall call = parse(args, Pass::kForward);
    const at::Tensor out = at::empty_symint(call.out_sizes, call.weight.options());
    core::run_rows<kBackend>(call, out, at::Tensor(), call.options.combine);
    return out;
  }
};

template <Pass kPass>
struct Gradient {
  template <Backend kBackend>
  static at::Tensor run(const Arguments& args) {
    return core::run_scatter<kBackend>(parse(args, kPass), kPass == Pass::kWeightGradient
                                                               ? core::ScatterTarget::kWeight
                                                               : core::ScatterTarget::kTable);
  }
};

const core::Derivative kDerivative{
    "posenc::embedding",
    {"weight", "table"},
    {{{"posenc::embedding_backward", {"weight", nullptr}, nullptr},
      {"posenc::embedding_table_backward", {"table", nullptr}, nullptr}}}};

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  core::define<Forward>(m, kForward);
  core::define<Gradient<Pass::kWeightGradient>>(m, kWeightGradient);
  core::define<Gradient<Pass::kTableGradient>>(m, kTableGradient);
  core::register_derivative(m, kDerivative);
  core::register_not_differentiable(m, "embedding_backward");
  core::register_not_differentiable(m, "embedding_table_backward");
}

// ---- the C++ API ----------------------------------------------------------------------------

namespace {

// The arguments of every embedding op; `code`: with the code's (not the table gradient).
api::NamedArguments named(const EmbeddingOptions& o, const at::Tensor& ids,
                          const at::Tensor& weight, bool code) {
  api::NamedArguments arguments = {{"ids", ids},
                                   {"weight", weight},
                                   {"positions", api::optional_value(o.positions())},
                                   {"padding_idx", o.padding_idx()},
                                   {"fairseq_positions", o.fairseq_positions()}};
  api::add_combine_arguments(arguments, o);
  if (code) api::add_code_arguments(arguments, o);
  return arguments;
}

}  // namespace

at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight, const EmbeddingOptions& o) {
  api::NamedArguments arguments = named(o, ids, weight, true);
  arguments.emplace_back("table", api::optional_value(o.table()));
  arguments.emplace_back("seed", api::forward_seed(o, weight.device()));
  return api::call_operator("embedding", std::move(arguments))[0].toTensor();
}

at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids,
                              const at::Tensor& weight, const EmbeddingOptions& o) {
  api::NamedArguments arguments = named(o, ids, weight, true);
  arguments.emplace_back("grad", grad);
  arguments.emplace_back("table", api::optional_value(o.table()));
  arguments.emplace_back("seed", api::optional_value(o.seed()));
  return api::call_operator("embedding_backward", std::move(arguments))[0].toTensor();
}

at::Tensor embedding_table_backward(const at::Tensor& grad, const at::Tensor& ids,
                                    const at::Tensor& weight, c10::SymInt table_rows,
                                    const EmbeddingOptions& o) {
  api::NamedArguments arguments = named(o, ids, weight, false);
  arguments.emplace_back("grad", grad);
  arguments.emplace_back("seed", api::optional_value(o.seed()));
  arguments.emplace_back("table_rows", std::move(table_rows));
  return api::call_operator("embedding_table_backward", std::move(arguments))[0].toTensor();
}

}  // namespace posenc
