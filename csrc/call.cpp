// Parsing and validation of every posenc operator call (see call.h): one function per operator
// family, shared by all backends, Meta, autograd and the C++ API.
#include "call.h"

#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/pow.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

namespace posenc {
namespace detail {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

OpId op_id(const c10::OperatorHandle& op) {
  const std::string& name = op.schema().name();
  static const std::pair<const char*, OpId> kNames[] = {
      {"posenc::add_positional", OpId::kAddPositional},
      {"posenc::add_positional_backward", OpId::kAddPositionalBackward},
      {"posenc::add_positional_table_backward", OpId::kAddPositionalTableBackward},
      {"posenc::embedding", OpId::kEmbedding},
      {"posenc::embedding_backward", OpId::kEmbeddingBackward},
      {"posenc::embedding_table_backward", OpId::kEmbeddingTableBackward},
      {"posenc::positional_encoding", OpId::kPositionalEncoding},
      {"posenc::rotary", OpId::kRotary},
      {"posenc::rotary_tables", OpId::kRotaryTables},
      {"posenc::rope_frequencies", OpId::kRopeFrequencies},
  };
  for (const auto& [known, id] : kNames) {
    if (name == known) return id;
  }
  TORCH_INTERNAL_ASSERT(false, "posenc: no implementation for ", name);
}

// ---- Arguments ------------------------------------------------------------------------------

Arguments::Arguments(const c10::OperatorHandle& op, const torch::jit::Stack& stack)
    : schema_(op.schema()) {
  const size_t count = schema_.arguments().size();
  TORCH_INTERNAL_ASSERT(stack.size() >= count);
  first_ = stack.data() + (stack.size() - count);
  // "posenc::rotary" -> "posenc.rotary", as torch.ops spells it.
  const std::string& qualified = schema_.name();
  const size_t separator = qualified.find("::");
  TORCH_INTERNAL_ASSERT(separator != std::string::npos,
                        "an operator without a namespace: ", qualified);
  op_name_ = qualified.substr(0, separator) + "." + qualified.substr(separator + 2);
}

int Arguments::index_of(std::string_view name) const {
  const auto& arguments = schema_.arguments();
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (arguments[i].name() == name) return static_cast<int>(i);
  }
  return -1;
}

const c10::IValue& Arguments::operator[](std::string_view name) const {
  const int index = index_of(name);
  TORCH_INTERNAL_ASSERT(index >= 0, op_name_, " has no argument ", name);
  return first_[index];
}

at::Tensor Arguments::tensor(std::string_view name) const { return (*this)[name].toTensor(); }

std::optional<at::Tensor> Arguments::optional_tensor(std::string_view name) const {
  if (!has(name)) return std::nullopt;
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  at::Tensor tensor = value.toTensor();
  if (!tensor.defined()) return std::nullopt;
  return tensor;
}

std::string_view Arguments::string(std::string_view name) const {
  return (*this)[name].toStringView();
}

double Arguments::real(std::string_view name) const { return (*this)[name].toDouble(); }

std::optional<double> Arguments::optional_real(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toDouble();
}

int64_t Arguments::integer(std::string_view name) const { return (*this)[name].toInt(); }

std::optional<int64_t> Arguments::optional_integer(std::string_view name) const {
  const c10::IValue& value = (*this)[name];
  if (value.isNone()) return std::nullopt;
  return value.toInt();
}

bool Arguments::boolean(std::string_view name) const { return (*this)[name].toBool(); }

// ---- dtypes ---------------------------------------------------------------------------------

bool is_supported_float(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kBFloat16 || type == at::kHalf;
}

kernels::DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return kernels::DType::kFloat32;
    case at::kDouble:
      return kernels::DType::kFloat64;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    case at::kHalf:
      return kernels::DType::kFloat16;
    default:
      TORCH_INTERNAL_ASSERT(false, "posenc: unchecked dtype ", type);
  }
}

namespace {

constexpr const char* kFloatTypes = "float32, float64, bfloat16 or float16";

kernels::IndexType kernel_index_type(at::ScalarType type) {
  TORCH_INTERNAL_ASSERT(type == at::kLong || type == at::kInt, "posenc: unchecked index dtype");
  return type == at::kLong ? kernels::IndexType::kInt64 : kernels::IndexType::kInt32;
}

// ---- option strings, parsed once ----------------------------------------------------------

kernels::PositionKind parse_kind(const char* op, std::string_view kind) {
  if (kind == "sinusoidal") return kernels::PositionKind::kSinusoidal;
  if (kind == "linear") return kernels::PositionKind::kLinear;
  if (kind == "damped") return kernels::PositionKind::kDamped;
  if (kind == "cosine") return kernels::PositionKind::kCosine;
  if (kind == "learned") return kernels::PositionKind::kLearned;
  TORCH_CHECK_VALUE(false, op, ": kind must be one of 'sinusoidal', 'linear', 'damped', ",
                    "'cosine', 'learned', got '", kind, "'");
}

kernels::Combine parse_combine(const char* op, std::string_view combine) {
  if (combine == "add") return kernels::Combine::kAdd;
  if (combine == "mul") return kernels::Combine::kMul;
  TORCH_CHECK_VALUE(false, op, ": combine must be 'add' or 'mul', got '", combine, "'");
}

kernels::Convention parse_convention(const char* op, std::string_view convention) {
  if (convention == "vaswani") return kernels::Convention::kVaswani;
  if (convention == "tensor2tensor") return kernels::Convention::kTensor2Tensor;
  TORCH_CHECK_VALUE(false, op, ": convention must be 'vaswani' or 'tensor2tensor', got '",
                    convention, "'");
}

kernels::Layout parse_layout(const char* op, std::string_view layout) {
  if (layout == "interleaved") return kernels::Layout::kInterleaved;
  if (layout == "concat") return kernels::Layout::kConcat;
  TORCH_CHECK_VALUE(false, op, ": layout must be 'interleaved' or 'concat', got '", layout, "'");
}

void check_base(const char* op, double base) {
  TORCH_CHECK_VALUE(std::isfinite(base) && base > 0.0, op,
                    ": base must be a finite number > 0, got ", base);
}

// The options of the row operators; arguments a schema lacks keep their defaults.
PositionalOptions parse_positional_options(const char* op, const Arguments& args) {
  PositionalOptions options;
  if (args.has("kind")) options.code.kind = parse_kind(op, args.string("kind"));
  if (args.has("convention")) {
    options.code.convention = parse_convention(op, args.string("convention"));
  }
  if (args.has("layout")) options.code.layout = parse_layout(op, args.string("layout"));
  if (args.has("base")) {
    options.code.base = args.real("base");
    check_base(op, options.code.base);
  }
  if (args.has("combine")) options.combine = parse_combine(op, args.string("combine"));
  if (args.has("scale")) {
    // None (embedding) is resolved to sqrt(D) once D is known.
    const std::optional<double> scale = args.optional_real("scale");
    TORCH_CHECK_VALUE(!scale.has_value() || std::isfinite(*scale), op,
                      ": scale must be a finite number, got ", scale.value_or(0.0));
    options.scale = scale.value_or(std::numeric_limits<double>::quiet_NaN());
  }
  if (args.has("offset")) {
    options.offset = args.integer("offset");
    TORCH_CHECK_VALUE(options.offset >= 0, op, ": offset must be >= 0, got ", options.offset);
  }
  if (args.has("dropout")) {
    options.dropout = args.real("dropout");
    TORCH_CHECK_VALUE(options.dropout >= 0.0 && options.dropout <= 1.0, op,
                      ": dropout must be in [0, 1], got ", options.dropout);
  }
  if (args.has("training")) options.training = args.boolean("training");
  return options;
}

// The token grid of the 2D/3D codes (kernels::GridCode) from grid, extra_tokens, grid_dims,
// grid_axes, grid_origin and grid_scale, for rows of `dim` channels of a computed kind.
kernels::GridCode parse_grid(const char* op, const Arguments& args, int64_t dim,
                             kernels::PositionKind kind) {
  kernels::GridCode grid;
  if (!args.has("grid")) return grid;
  const c10::IValue& sizes = args["grid"];
  const int64_t extra_tokens = args.integer("extra_tokens");
  if (sizes.isNone()) {
    for (const char* name : {"grid_dims", "grid_axes", "grid_origin", "grid_scale"}) {
      TORCH_CHECK_VALUE(args[name].isNone(), op, ": ", name, " needs grid, the patch grid's sizes");
    }
    TORCH_CHECK_VALUE(extra_tokens == 0, op, ": extra_tokens needs grid, the patch grid's sizes");
    return grid;
  }
  const std::vector<int64_t> size_list = sizes.toIntVector();
  const int axes = static_cast<int>(size_list.size());
  TORCH_CHECK_VALUE(axes >= 1 && axes <= kernels::kMaxGridAxes, op,
                    ": grid must have 1 to 3 sizes ((H, W) or (T, H, W)), got ", size_list);
  TORCH_CHECK_VALUE(kind != kernels::PositionKind::kLearned, op,
                    ": grid needs a computed kind; kind='learned' indexes its table instead");
  TORCH_CHECK_VALUE(extra_tokens >= 0, op, ": extra_tokens must be >= 0, got ", extra_tokens);
  constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(extra_tokens < kMaxTokens, op, ": extra_tokens must be < 2^31, got ",
                    extra_tokens);
  int64_t patches = 1;
  for (const int64_t size : size_list) {
    TORCH_CHECK_VALUE(size >= 1, op, ": grid sizes must be >= 1, got ", size_list);
    TORCH_CHECK_VALUE(patches <= (kMaxTokens - extra_tokens) / size, op,
                      ": extra_tokens + the grid's patches must be < 2^31, got grid ", size_list,
                      " and extra_tokens ", extra_tokens);
    patches *= size;
  }
  grid.axis_count = axes;
  grid.extra_tokens = extra_tokens;
  for (int a = 0; a < axes; ++a) grid.sizes[a] = size_list[a];

  auto list_or = [&](const char* name, auto default_list) {
    const c10::IValue& value = args[name];
    using List = decltype(default_list);
    List list = default_list;
    if (!value.isNone()) {
      if constexpr (std::is_same_v<typename List::value_type, double>) {
        list = value.toDoubleVector();
      } else {
        list = value.toIntVector();
      }
    }
    TORCH_CHECK_VALUE(static_cast<int>(list.size()) == axes, op, ": ", name,
                      " must have one entry per grid axis (", axes, "), got ", list);
    return list;
  };
  // Default: the last axis first, as MAE's meshgrid(w, h) orders the channels.
  std::vector<int64_t> default_axes(axes);
  for (int a = 0; a < axes; ++a) default_axes[a] = axes - 1 - a;
  const std::vector<int64_t> segment_axes = list_or("grid_axes", default_axes);
  std::vector<bool> seen(axes, false);
  for (const int64_t axis : segment_axes) {
    TORCH_CHECK_VALUE(axis >= 0 && axis < axes && !seen[axis], op,
                      ": grid_axes must be a permutation of range(", axes, "), got ",
                      segment_axes);
    seen[axis] = true;
  }
  std::vector<int64_t> default_dims;
  if (args["grid_dims"].isNone()) {
    TORCH_CHECK_VALUE(dim % axes == 0, op, ": D = ", dim, " does not split evenly over ", axes,
                      " grid axes; give grid_dims, the channels of each axis");
    default_dims.assign(axes, dim / axes);
  }
  const std::vector<int64_t> dims = list_or("grid_dims", default_dims);
  int64_t end = 0;
  for (int s = 0; s < axes; ++s) {
    TORCH_CHECK_VALUE(dims[s] >= 1 && dims[s] <= dim - end, op,
                      ": grid_dims must be >= 1 and sum to D = ", dim, ", got ", dims);
    end += dims[s];
    grid.segment_ends[s] = end;
    grid.segment_axes[s] = static_cast<int>(segment_axes[s]);
  }
  TORCH_CHECK_VALUE(end == dim, op, ": grid_dims must sum to D = ", dim, ", got ", dims);
  const std::vector<int64_t> origins = list_or("grid_origin", std::vector<int64_t>(axes, 0));
  const std::vector<double> scales = list_or("grid_scale", std::vector<double>(axes, 1.0));
  constexpr int64_t kMaxOrigin = int64_t{1} << 40;
  for (int a = 0; a < axes; ++a) {
    TORCH_CHECK_VALUE(origins[a] >= 0 && origins[a] <= kMaxOrigin, op,
                      ": grid_origin must be in [0, 2^40], got ", origins);
    TORCH_CHECK_VALUE(std::isfinite(scales[a]) && scales[a] > 0.0, op,
                      ": grid_scale must be finite numbers > 0, got ", scales);
    grid.origins[a] = origins[a];
    grid.scales[a] = scales[a];
  }
  return grid;
}

void check_same_device(const char* op, const at::Tensor& main, const char* main_name,
                       const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.device() == main.device(), op, ": ", name, " must be on the device of ",
              main_name, " (", main.device(), "), got ", other.device());
}

void check_index_tensor(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                   " must be an int64 or int32 tensor, got ", t.scalar_type());
}

// x: [..., T, D] with 2 to kMaxBatchDims + 2 dimensions, a supported float dtype.
void check_rows_tensor(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), op, ": ", name,
                   " must be a floating tensor (", kFloatTypes, "), got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.dim() <= kernels::kMaxBatchDims + 2, op, ": ", name,
                    " must have shape (..., T, D) with 2 to ", kernels::kMaxBatchDims + 2,
                    " dimensions, got ", x.dim(), " dimension(s)");
}

void check_seed(const char* op, const std::optional<at::Tensor>& seed,
                const PositionalOptions& options, const at::Tensor& main, const char* main_name) {
  if (options.dropout_active()) {
    TORCH_CHECK_VALUE(seed.has_value(), op,
                      ": dropout > 0 in training needs seed, an int64 tensor with one element");
  }
  if (!seed.has_value()) return;
  TORCH_CHECK_TYPE(seed->scalar_type() == at::kLong && seed->sym_numel() == 1, op,
                   ": seed must be an int64 tensor with one element, got ", seed->scalar_type(),
                   " of shape ", seed->sym_sizes());
  TORCH_CHECK(seed->device() == main.device() || seed->device().is_cpu(), op,
              ": seed must be on the device of ", main_name, " (", main.device(),
              ") or the CPU, got ", seed->device());
}

std::vector<c10::SymInt> with_last(c10::SymIntArrayRef sizes, const c10::SymInt& last) {
  std::vector<c10::SymInt> result(sizes.begin(), sizes.end());
  result.push_back(last);
  return result;
}

// The largest table_rows (or dim) accepted: a [rows, D] buffer must be addressable in int64
// bytes; anything larger cannot be allocated anyway.
void check_buffer_size(const char* op, const char* name, int64_t count, int64_t width) {
  TORCH_CHECK_VALUE(count >= 0, op, ": ", name, " must be >= 0, got ", count);
  const int64_t limit = kInt64Max / 8 / std::max<int64_t>(width, 1);
  TORCH_CHECK_VALUE(count <= limit, op, ": ", name, " = ", count,
                    " is too large: the output would have more than 2^60 bytes");
}

}  // namespace

// ---- the row operators --------------------------------------------------------------------

RowCall parse_row_call(OpId op, const Arguments& args) {
  RowCall call;
  call.op = op;
  call.name = args.op_name();
  const char* name = call.name;
  call.options = parse_positional_options(name, args);
  PositionalOptions& options = call.options;
  const bool embedding = op == OpId::kEmbedding || op == OpId::kEmbeddingBackward ||
                         op == OpId::kEmbeddingTableBackward;
  const bool table_backward =
      op == OpId::kAddPositionalTableBackward || op == OpId::kEmbeddingTableBackward;
  const bool backward = op == OpId::kAddPositionalBackward || table_backward ||
                        op == OpId::kEmbeddingBackward;
  const bool learned = options.code.kind == kernels::PositionKind::kLearned || table_backward;

  // The tensor that fixes device, dtype and shape of the call, and its name in messages.
  at::Tensor main;
  const char* main_name = "";
  c10::SymInt dim;
  const char* rows_name = "x.shape[:-1]";
  const char* dim_name = "x.size(-1)";
  std::vector<c10::SymInt> index_sizes;  // [..., T]: what positions broadcast to

  if (op == OpId::kPositionalEncoding) {
    const at::Tensor positions = args.tensor("positions");
    check_index_tensor(name, positions, "positions");
    TORCH_CHECK_VALUE(options.code.kind != kernels::PositionKind::kLearned, name,
                      ": kind='learned' has no computed code; index the table instead");
    const int64_t dim_value = args.integer("dim");
    const std::optional<at::ScalarType> dtype = args["dtype"].toOptional<at::ScalarType>();
    call.dtype = dtype.value_or(at::kFloat);
    TORCH_CHECK_TYPE(is_supported_float(call.dtype), name, ": dtype must be ", kFloatTypes,
                     ", got ", call.dtype);
    const c10::SymInt count = positions.sym_numel();
    check_buffer_size(name, "dim", dim_value,
                      count.maybe_as_int().value_or(1));  // numel * dim elements
    options.grid = parse_grid(name, args, dim_value, options.code.kind);
    call.positions = positions.reshape({-1});
    call.size_argument = "dim";
    call.size_value = dim_value;
    call.out_sizes = with_last(positions.sym_sizes(), c10::SymInt(dim_value));
    call.row_sizes = {count, c10::SymInt(dim_value)};
    return call;
  }

  if (embedding) {
    call.ids = args.tensor("ids");
    call.weight = args.tensor("weight");
    check_index_tensor(name, call.ids, "ids");
    TORCH_CHECK_VALUE(call.ids.dim() >= 1 && call.ids.dim() <= kernels::kMaxBatchDims + 1, name,
                      ": ids must have shape (..., T) with 1 to ", kernels::kMaxBatchDims + 1,
                      " dimensions, got ", call.ids.dim(), " dimension(s)");
    TORCH_CHECK_TYPE(is_supported_float(call.weight.scalar_type()), name,
                     ": weight must be a floating tensor (", kFloatTypes, "), got ",
                     call.weight.scalar_type());
    TORCH_CHECK_VALUE(call.weight.dim() == 2, name, ": weight must have shape (V, D), got ",
                      call.weight.sym_sizes());
    check_same_device(name, call.weight, "weight", call.ids, "ids");
    main = call.weight;
    main_name = "weight";
    dim = call.weight.sym_size(1);
    rows_name = "ids.shape";
    dim_name = "weight.size(1)";
    index_sizes.assign(call.ids.sym_sizes().begin(), call.ids.sym_sizes().end());
    call.row_sizes = with_last(call.ids.sym_sizes(), dim);
    if (args.has("padding_idx")) {
      // As in nn.Embedding: within [-V, V), negative counts from the end.
      const std::optional<int64_t> padding_idx = args.optional_integer("padding_idx");
      if (padding_idx.has_value()) {
        const int64_t vocab = call.weight.sym_size(0).guard_int(__FILE__, __LINE__);
        TORCH_CHECK_VALUE(*padding_idx >= -vocab && *padding_idx < vocab, name,
                          ": padding_idx must be within [-V, V) = [", -vocab, ", ", vocab,
                          "), got ", *padding_idx);
        call.padding_idx = *padding_idx < 0 ? *padding_idx + vocab : *padding_idx;
      }
    }
    if (std::isnan(options.scale)) {
      options.scale = std::sqrt(static_cast<double>(dim.guard_int(__FILE__, __LINE__)));
    }
    call.fairseq_positions = args.boolean("fairseq_positions");
  }

  if (backward) {
    call.rows = args.tensor("grad");
    check_rows_tensor(name, call.rows, "grad");
    if (embedding) {
      TORCH_CHECK_VALUE(call.rows.dim() == call.ids.dim() + 1 &&
                            call.rows.sym_sizes().slice(0, call.ids.dim()) ==
                                call.ids.sym_sizes() &&
                            call.rows.sym_size(-1) == dim,
                        name, ": grad must have shape ids.shape + (D,) = ", call.row_sizes,
                        ", got ", call.rows.sym_sizes());
      TORCH_CHECK_TYPE(call.rows.scalar_type() == call.weight.scalar_type(), name,
                       ": grad must have weight's dtype (", call.weight.scalar_type(), "), got ",
                       call.rows.scalar_type());
      check_same_device(name, call.weight, "weight", call.rows, "grad");
    } else {
      main = call.rows;
      main_name = "grad";
      rows_name = "grad.shape[:-1]";
      dim_name = "grad.size(-1)";
    }
  } else if (!embedding) {
    call.rows = args.tensor("x");
    check_rows_tensor(name, call.rows, "x");
    main = call.rows;
    main_name = "x";
  }
  if (!embedding) {
    dim = main.sym_size(-1);
    const auto sizes = main.sym_sizes();
    call.row_sizes.assign(sizes.begin(), sizes.end());
    index_sizes.assign(sizes.begin(), sizes.end() - 1);
  }
  call.dtype = main.scalar_type();

  // The output.
  if (table_backward) {
    const c10::SymInt rows = args["table_rows"].toSymInt();
    if (const auto concrete = rows.maybe_as_int()) {
      check_buffer_size(name, "table_rows", *concrete,
                        dim.maybe_as_int().value_or(1));
    }
    call.table_rows = rows;
    call.size_argument = "table_rows";
    call.size_value = rows.maybe_as_int().value_or(-1);
    call.out_sizes = {rows, dim};
  } else if (op == OpId::kEmbeddingBackward) {
    const auto sizes = call.weight.sym_sizes();
    call.out_sizes.assign(sizes.begin(), sizes.end());
  } else {
    call.out_sizes = call.row_sizes;
  }

  // The forward's x, which the table gradient of combine="mul" multiplies by.
  if (op == OpId::kAddPositionalTableBackward) {
    call.x = args.optional_tensor("x");
    if (options.combine == kernels::Combine::kMul) {
      TORCH_CHECK_VALUE(call.x.has_value(), name,
                        ": combine='mul' needs x, the forward's input of grad's shape");
    }
    if (call.x.has_value()) {
      TORCH_CHECK_VALUE(call.x->sym_sizes() == call.rows.sym_sizes(), name,
                        ": x must have grad's shape ", call.rows.sym_sizes(), ", got ",
                        call.x->sym_sizes());
      TORCH_CHECK_TYPE(call.x->scalar_type() == call.rows.scalar_type(), name,
                       ": x must have grad's dtype (", call.rows.scalar_type(), "), got ",
                       call.x->scalar_type());
      check_same_device(name, main, main_name, *call.x, "x");
    }
  }

  // The learned table.
  call.table = args.optional_tensor("table");
  if (call.table.has_value()) {
    TORCH_CHECK_VALUE(learned, name, ": table is used only with kind='learned', got kind='",
                      args.string("kind"), "'");
    const at::Tensor& table = *call.table;
    TORCH_CHECK_VALUE(table.dim() == 2 && table.sym_size(1) == dim, name,
                      ": table must have shape (P, D) with D = ", dim_name, " = ", dim, ", got ",
                      table.sym_sizes());
    TORCH_CHECK_TYPE(table.scalar_type() == call.dtype, name, ": table must have the dtype of ",
                     main_name, " (", call.dtype, "), got ", table.scalar_type());
    check_same_device(name, main, main_name, table, "table");
    call.table_rows = table.sym_size(0);
  } else if (learned && !table_backward) {
    TORCH_CHECK_VALUE(false, name, ": kind='learned' needs table, a (P, D) tensor");
  }

  call.seed = args.optional_tensor("seed");
  check_seed(name, call.seed, options, main, main_name);

  // Positions: explicit, offset + t, or fairseq's; one source at a time.
  const std::optional<at::Tensor> positions = args.optional_tensor("positions");
  // On a grid, positions are token indices: explicit, or 0 .. T - 1 covering the whole grid.
  options.grid = parse_grid(name, args, dim.guard_int(__FILE__, __LINE__), options.code.kind);
  if (options.grid.axis_count > 0) {
    TORCH_CHECK_VALUE(options.offset == 0, name,
                      ": with grid, give positions (token indices) rather than offset, got offset ",
                      options.offset);
    const int64_t tokens = kernels::grid_token_count(options.grid);
    if (!positions.has_value()) {
      const int64_t seq_len = index_sizes.back().guard_int(__FILE__, __LINE__);
      TORCH_CHECK_VALUE(seq_len == tokens, name, ": ", main_name, " has T = ", seq_len,
                        " tokens, but grid ", c10::IntArrayRef(options.grid.sizes,
                                                                options.grid.axis_count),
                        " with extra_tokens = ", options.grid.extra_tokens, " has ", tokens,
                        "; pass positions (token indices) for a subset of the grid");
    }
  }
  if (call.fairseq_positions) {
    TORCH_CHECK_VALUE(call.padding_idx.has_value(), name,
                      ": positions='fairseq' needs padding_idx (fairseq numbers positions from "
                      "padding_idx + 1)");
    TORCH_CHECK_VALUE(!positions.has_value(), name,
                      ": positions='fairseq' computes positions; do not pass a positions tensor");
    TORCH_CHECK_VALUE(options.offset == 0, name,
                      ": positions='fairseq' computes positions; offset must be 0, got ",
                      options.offset);
  }
  if (positions.has_value()) {
    TORCH_CHECK_VALUE(options.offset == 0, name,
                      ": give positions or offset, not both (offset = ", options.offset, ")");
    check_index_tensor(name, *positions, "positions");
    check_same_device(name, main, main_name, *positions, "positions");
    TORCH_CHECK_VALUE(at::is_expandable_to(positions->sym_sizes(), index_sizes), name,
                      ": positions of shape ", positions->sym_sizes(),
                      " must be broadcastable to ", rows_name, " = ", index_sizes);
    call.positions = positions->expand_symint(index_sizes);
  }
  return call;
}

namespace {

std::pair<int64_t, int64_t> value_range(const at::Tensor& t) {
  const auto [low, high] = at::aminmax(t);
  return {low.item<int64_t>(), high.item<int64_t>()};
}

}  // namespace

void check_row_values(const RowCall& call, bool read_data) {
  const char* name = call.name;
  const int64_t seq_len = call.row_sizes.size() >= 2
                              ? call.row_sizes[call.row_sizes.size() - 2].expect_int()
                              : 0;
  int64_t rows_count = 1;
  for (size_t i = 0; i + 1 < call.row_sizes.size(); ++i) {
    rows_count *= call.row_sizes[i].expect_int();
  }
  if (read_data && call.ids.defined() && call.ids.numel() > 0) {
    const int64_t vocab = call.weight.size(0);
    const auto [lowest, highest] = value_range(call.ids);
    TORCH_CHECK_INDEX(lowest >= 0 && highest < vocab, name, ": ids must be in [0, V) = [0, ",
                      vocab, "), got values in [", lowest, ", ", highest, "]");
  }
  if (rows_count == 0) return;
  const std::optional<int64_t> table_rows =
      call.table_rows.has_value() ? std::optional<int64_t>(call.table_rows->expect_int())
                                  : std::nullopt;
  if (call.fairseq_positions) {
    // Positions reach padding_idx + T when a row has no padding.
    if (table_rows.has_value()) {
      TORCH_CHECK_INDEX(*call.padding_idx + seq_len < *table_rows, name,
                        ": positions='fairseq' reach padding_idx + T = ",
                        *call.padding_idx + seq_len, ", outside the table of ", *table_rows,
                        " rows");
    }
    return;
  }
  if (call.positions.has_value()) {
    if (!read_data) return;
    const auto [lowest, highest] = value_range(*call.positions);
    TORCH_CHECK_INDEX(lowest >= 0, name, ": positions must be >= 0, got ", lowest);
    const kernels::GridCode& grid = call.options.grid;
    if (grid.axis_count > 0) {
      TORCH_CHECK_INDEX(highest < kernels::grid_token_count(grid), name,
                        ": positions are token indices and must be < extra_tokens + the grid's "
                        "patches = ", kernels::grid_token_count(grid), ", got ", highest);
    }
    if (table_rows.has_value()) {
      TORCH_CHECK_INDEX(highest < *table_rows, name, ": positions must be < the table's ",
                        *table_rows, " rows, got ", highest);
    }
    return;
  }
  const int64_t offset = call.options.offset;
  // The last position, offset + T - 1, must fit in int64.
  TORCH_CHECK_VALUE(offset <= kInt64Max - (seq_len - 1), name, ": the last position offset + T - 1 = ",
                    offset, " + ", seq_len - 1, " overflows int64");
  if (table_rows.has_value()) {
    TORCH_CHECK_INDEX(offset + seq_len <= *table_rows, name,
                      ": positions offset + arange(T) up to ", offset + seq_len - 1,
                      " are outside the table of ", *table_rows, " rows");
  }
}

// ---- describing tensors to kernels/ --------------------------------------------------------

namespace {

kernels::RowShape row_shape(c10::ArrayRef<c10::SymInt> sizes) {
  kernels::RowShape shape;
  shape.batch_ndim = static_cast<int>(sizes.size()) - 2;
  TORCH_INTERNAL_ASSERT(shape.batch_ndim >= 0 && shape.batch_ndim <= kernels::kMaxBatchDims);
  for (int i = 0; i < shape.batch_ndim; ++i) shape.batch_sizes[i] = sizes[i].expect_int();
  shape.seq_len = sizes[sizes.size() - 2].expect_int();
  shape.dim = sizes[sizes.size() - 1].expect_int();
  return shape;
}

kernels::StridedIndex strided_index(const std::optional<at::Tensor>& index) {
  kernels::StridedIndex result;
  if (!index.has_value()) return result;
  result.data = index->data_ptr();
  result.type = kernel_index_type(index->scalar_type());
  for (int64_t i = 0; i + 1 < index->dim(); ++i) result.batch_strides[i] = index->stride(i);
  result.seq_stride = index->dim() > 0 ? index->stride(-1) : 0;
  return result;
}

}  // namespace

kernels::StridedRows strided_rows(const at::Tensor& x) {
  kernels::StridedRows rows;
  rows.data = x.data_ptr();
  for (int64_t i = 0; i + 2 < x.dim(); ++i) rows.batch_strides[i] = x.stride(i);
  rows.seq_stride = x.stride(-2);
  rows.dim_stride = x.stride(-1);
  return rows;
}

kernels::ParallelFor torch_parallel_for() {
  return [](int64_t begin, int64_t end, int64_t grain,
            const std::function<void(int64_t, int64_t)>& body) {
    at::parallel_for(begin, end, grain, body);
  };
}

uint64_t read_seed(const std::optional<at::Tensor>& seed) {
  if (!seed.has_value()) return 0;
  return static_cast<uint64_t>(seed->item<int64_t>());
}

namespace {

bool same_code(const kernels::PositionCodeOptions& a, const kernels::PositionCodeOptions& b) {
  return a.kind == b.kind && a.base == b.base && a.convention == b.convention &&
         a.layout == b.layout;
}

bool same_grid(const kernels::GridCode& a, const kernels::GridCode& b) {
  if (a.axis_count != b.axis_count || a.extra_tokens != b.extra_tokens) return false;
  for (int i = 0; i < kernels::kMaxGridAxes; ++i) {
    if (a.sizes[i] != b.sizes[i] || a.origins[i] != b.origins[i] || a.scales[i] != b.scales[i] ||
        a.segment_axes[i] != b.segment_axes[i] || a.segment_ends[i] != b.segment_ends[i]) {
      return false;
    }
  }
  return true;
}

// The host channel codes of (code, dim, grid), kept for the next calls that ask for the same:
// making them costs about 40 ns a channel (a pow and the exact split of each frequency),
// measured 163 us at D = 4096, more than the kernel's own work on a decoding step's row, and a
// model asks for the same few codes at every step. The few most recent are kept.
std::shared_ptr<const std::vector<kernels::ChannelCode>> channel_codes(
    const kernels::PositionCodeOptions& code, int64_t dim, const kernels::GridCode& grid) {
  struct Entry {
    kernels::PositionCodeOptions code;
    int64_t dim;
    kernels::GridCode grid;
    std::shared_ptr<const std::vector<kernels::ChannelCode>> channels;
  };
  constexpr size_t kKept = 8;
  static std::mutex mutex;
  static std::vector<Entry> recent;  // most recently used first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = recent.begin(); it != recent.end(); ++it) {
      if (it->dim == dim && same_code(it->code, code) && same_grid(it->grid, grid)) {
        std::rotate(recent.begin(), it, it + 1);
        return recent.front().channels;
      }
    }
  }
  auto channels = std::make_shared<const std::vector<kernels::ChannelCode>>(
      kernels::make_channel_codes(code, dim, grid));
  std::lock_guard<std::mutex> lock(mutex);
  recent.insert(recent.begin(), Entry{code, dim, grid, channels});
  if (recent.size() > kKept) recent.pop_back();
  return channels;
}

}  // namespace

void prepare_kernel_call(KernelCall& kernel, const RowCall& call, const at::Tensor& out,
                         const at::Tensor& rows, kernels::Combine combine, uint64_t seed) {
  kernels::AddPositionalParams& params = kernel.params;
  const PositionalOptions& options = call.options;
  params.dtype = kernel_dtype(out.scalar_type());
  params.shape = row_shape(call.row_sizes);
  params.out = strided_rows(out.view_symint(call.row_sizes));
  if (rows.defined()) params.x = strided_rows(rows);
  params.positions = strided_index(call.positions);
  params.offset = options.offset;
  params.combine = combine;
  params.scale = options.scale;
  params.dropout = kernels::make_dropout(options.dropout, options.training, seed);
  params.source.kind = call.table_rows.has_value() ? kernels::PositionKind::kLearned
                                                   : options.code.kind;
  params.source.code = options.code;
  if (call.table_rows.has_value()) {
    params.source.table_rows = call.table_rows->expect_int();
    if (call.table.has_value()) {
      params.source.table = call.table->data_ptr();
      params.source.table_row_stride = call.table->stride(0);
      params.source.table_dim_stride = call.table->stride(1);
    }
  } else {
    params.source.grid = options.grid;
    // The CUDA kernels make their own on the device.
    if (out.is_cpu()) {
      kernel.channels = channel_codes(options.code, params.shape.dim, options.grid);
      params.source.channels = kernel.channels->data();
    }
  }
  if (call.weight.defined()) {
    kernels::EmbeddingGather& gather = params.gather;
    gather.weight = call.weight.data_ptr();
    gather.vocab = call.weight.size(0);
    gather.row_stride = call.weight.stride(0);
    gather.dim_stride = call.weight.stride(1);
    gather.ids = strided_index(call.ids);
    gather.padding_idx = call.padding_idx.value_or(-1);
    gather.fairseq_positions = call.fairseq_positions;
  }
}

// ---- rotary ---------------------------------------------------------------------------------

Precision parse_precision(const char* op, std::string_view precision) {
  if (precision == "exact") return Precision::kExact;
  if (precision == "transformers") return Precision::kTransformers;
  TORCH_CHECK_VALUE(false, op, ": precision must be 'exact' or 'transformers', got '", precision,
                    "'");
}

namespace {

RotaryLayout parse_rotary_layout(const char* op, std::string_view layout) {
  if (layout == "bshd") return RotaryLayout::kBSHD;
  if (layout == "bhsd") return RotaryLayout::kBHSD;
  if (layout == "sbhd") return RotaryLayout::kSBHD;
  if (layout == "thd") return RotaryLayout::kTHD;
  TORCH_CHECK_VALUE(false, op, ": layout must be 'bshd', 'bhsd', 'sbhd' or 'thd', got '", layout,
                    "'");
}

}  // namespace

at::Tensor rotary_bshd(const at::Tensor& t, RotaryLayout layout) {
  switch (layout) {
    case RotaryLayout::kBSHD:
      return t;
    case RotaryLayout::kBHSD:
      return t.permute({0, 2, 1, 3});
    case RotaryLayout::kSBHD:
      return t.permute({1, 0, 2, 3});
    case RotaryLayout::kTHD:
      break;
  }
  return t.unsqueeze(0);
}

RotaryCall parse_rotary_call(const Arguments& args) {
  RotaryCall call;
  call.name = args.op_name();
  const char* op = call.name;
  call.layout = parse_rotary_layout(op, args.string("layout"));
  const std::string_view layout = args.string("layout");
  const bool thd = call.layout == RotaryLayout::kTHD;
  const int64_t ndim = thd ? 3 : 4;
  call.q = args.tensor("q");
  TORCH_CHECK_TYPE(is_supported_float(call.q.scalar_type()), op, ": q must be a floating tensor (",
                   kFloatTypes, "), got ", call.q.scalar_type());
  TORCH_CHECK_VALUE(call.q.dim() == ndim, op, ": q must have ", ndim, " dimensions for layout '",
                    layout, "', got shape ", call.q.sym_sizes());
  call.q4 = rotary_bshd(call.q, call.layout);
  call.k = args.optional_tensor("k");
  if (call.k.has_value()) {
    const at::Tensor& k = *call.k;
    TORCH_CHECK_TYPE(k.scalar_type() == call.q.scalar_type(), op, ": k must have q's dtype (",
                     call.q.scalar_type(), "), got ", k.scalar_type());
    TORCH_CHECK_VALUE(k.dim() == ndim, op, ": k must have ", ndim, " dimensions for layout '",
                      layout, "', got shape ", k.sym_sizes());
    check_same_device(op, call.q, "q", k, "k");
    call.k4 = rotary_bshd(k, call.layout);
    TORCH_CHECK_VALUE(call.k4->sym_size(0) == call.q4.sym_size(0) &&
                          call.k4->sym_size(1) == call.q4.sym_size(1),
                      op, ": q and k must agree on batch and sequence, got q ", call.q.sym_sizes(),
                      " and k ", k.sym_sizes());
    TORCH_CHECK_VALUE(call.k4->sym_size(3) == call.q4.sym_size(3), op,
                      ": q and k must have the same head_dim, got ", call.q4.sym_size(3), " and ",
                      call.k4->sym_size(3));
  }
  const int64_t head_dim = call.q4.sym_size(3).guard_int(__FILE__, __LINE__);
  const std::optional<int64_t> rotary_dim = args.optional_integer("rotary_dim");
  call.rotary_dim = rotary_dim.value_or(head_dim);
  TORCH_CHECK_VALUE(call.rotary_dim % 2 == 0 && call.rotary_dim >= 0 &&
                        call.rotary_dim <= head_dim,
                    op, ": rotary_dim must be even and within [0, head_dim = ", head_dim,
                    "], got ", call.rotary_dim,
                    rotary_dim.has_value() ? "" : " (the head_dim, which must be even)");
  call.base = args.real("base");
  check_base(op, call.base);
  call.attention_factor = args.real("attention_factor");
  TORCH_CHECK_VALUE(std::isfinite(call.attention_factor), op,
                    ": attention_factor must be finite, got ", call.attention_factor);
  call.offset = args.integer("offset");
  TORCH_CHECK_VALUE(call.offset >= 0, op, ": offset must be >= 0, got ", call.offset);
  call.interleaved = args.boolean("interleaved");
  call.inverse = args.boolean("inverse");
  call.precision = parse_precision(op, args.string("precision"));

  auto index_argument = [&](const char* name) {
    std::optional<at::Tensor> t = args.optional_tensor(name);
    if (t.has_value()) {
      check_index_tensor(op, *t, name);
      check_same_device(op, call.q, "q", *t, name);
    }
    return t;
  };
  call.positions = index_argument("positions");
  call.offsets = index_argument("offsets");
  call.cu_seqlens = index_argument("cu_seqlens");
  const c10::SymInt batch = call.q4.sym_size(0);
  const c10::SymInt seq_len = call.q4.sym_size(1);
  const c10::IValue& section = args["mrope_section"];
  call.mrope_interleaved = args.boolean("mrope_interleaved");
  TORCH_CHECK_VALUE(!section.isNone() || !call.mrope_interleaved, op,
                    ": mrope_interleaved needs mrope_section");
  if (!section.isNone()) {
    call.mrope_section = section.toIntVector();
    TORCH_CHECK_VALUE(call.mrope_section.size() == kernels::kMropeAxes, op,
                      ": mrope_section must have 3 entries (temporal, height, width), got ",
                      c10::IntArrayRef(call.mrope_section));
    int64_t pairs = 0;
    for (const int64_t count : call.mrope_section) {
      TORCH_CHECK_VALUE(count >= 0 && count <= kernels::kMaxRopeDim, op,
                        ": mrope_section entries must be in [0, 2^20], got ",
                        c10::IntArrayRef(call.mrope_section));
      pairs += count;
    }
    TORCH_CHECK_VALUE(pairs == call.rotary_dim / 2, op,
                      ": mrope_section must sum to rotary_dim / 2 = ", call.rotary_dim / 2,
                      ", got ", c10::IntArrayRef(call.mrope_section), " (sum ", pairs, ")");
    TORCH_CHECK_VALUE(call.positions.has_value(), op,
                      ": mrope_section needs positions of shape (3, B, S) (temporal, height, "
                      "width)");
  }
  if (call.positions.has_value()) {
    const at::Tensor& positions = *call.positions;
    TORCH_CHECK_VALUE(!call.offsets.has_value(), op, ": give positions or offsets, not both");
    TORCH_CHECK_VALUE(call.offset == 0, op, ": give positions or offset, not both (offset = ",
                      call.offset, ")");
    if (!call.mrope_section.empty()) {
      // One row of positions per axis: [3, tokens] (thd), [3, S], [3, 1, S] or [3, B, S].
      const bool rows = positions.dim() >= 2 && positions.sym_size(0) == kernels::kMropeAxes &&
                        positions.sym_size(positions.dim() - 1) == seq_len;
      const bool shaped = thd ? positions.dim() == 2
                              : positions.dim() == 2 ||
                                    (positions.dim() == 3 && (positions.sym_size(1) == batch ||
                                                              positions.sym_size(1) == 1));
      TORCH_CHECK_VALUE(rows && shaped, op, ": positions with mrope_section must have shape ",
                        thd ? "(3, tokens)" : "(3, S), (3, 1, S) or (3, B, S)", " with S = ",
                        seq_len, " and B = ", batch, ", got ", positions.sym_sizes());
    } else if (thd) {
      TORCH_CHECK_VALUE(positions.dim() == 1 && positions.sym_size(0) == seq_len, op,
                        ": positions must have shape (tokens,) = (", seq_len,
                        ",) for layout 'thd', got ", positions.sym_sizes());
    } else {
      const bool per_step = positions.dim() == 1 && positions.sym_size(0) == seq_len;
      // (1, S) broadcasts over the batch, as transformers' position_ids often do.
      const bool per_row = positions.dim() == 2 &&
                           (positions.sym_size(0) == batch || positions.sym_size(0) == 1) &&
                           positions.sym_size(1) == seq_len;
      TORCH_CHECK_VALUE(per_step || per_row, op, ": positions must have shape (S,) = (", seq_len,
                        ",), (1, S) or (B, S) = (", batch, ", ", seq_len, "), got ",
                        positions.sym_sizes());
    }
  }
  if (call.cu_seqlens.has_value()) {
    TORCH_CHECK_VALUE(thd, op, ": cu_seqlens is for layout 'thd' only");
    TORCH_CHECK_VALUE(call.cu_seqlens->dim() == 1 && call.cu_seqlens->sym_size(0) >= 2, op,
                      ": cu_seqlens must have shape (sequences + 1,) with at least 2 entries, "
                      "got ", call.cu_seqlens->sym_sizes());
  }
  if (call.offsets.has_value()) {
    const c10::SymInt sequences =
        call.cu_seqlens.has_value() ? call.cu_seqlens->sym_size(0) - 1 : batch;
    TORCH_CHECK_VALUE(call.offsets->dim() == 1 && call.offsets->sym_size(0) == sequences, op,
                      ": offsets must have shape (", sequences, ",) (one per sequence), got ",
                      call.offsets->sym_sizes());
  }
  call.inv_freq = args.optional_tensor("inv_freq");
  if (call.inv_freq.has_value()) {
    const at::Tensor& inv_freq = *call.inv_freq;
    TORCH_CHECK_TYPE(is_supported_float(inv_freq.scalar_type()), op,
                     ": inv_freq must be a floating tensor, got ", inv_freq.scalar_type());
    check_same_device(op, call.q, "q", inv_freq, "inv_freq");
    TORCH_CHECK_VALUE(inv_freq.dim() == 1 && inv_freq.sym_size(0) == call.rotary_dim / 2, op,
                      ": inv_freq must have shape (rotary_dim / 2,) = (", call.rotary_dim / 2,
                      ",), got ", inv_freq.sym_sizes());
  }
  return call;
}

void check_rotary_values(const RotaryCall& call, bool read_data) {
  const char* op = call.name;
  const int64_t tokens = call.q4.size(1);
  if (!read_data) {
    // Without offsets or cu_seqlens, the last position offset + S - 1 is a host value.
    if (!call.positions.has_value() && !call.offsets.has_value() &&
        !call.cu_seqlens.has_value() && tokens > 0) {
      TORCH_CHECK_VALUE(call.offset <= kInt64Max - (tokens - 1), op,
                        ": the last position, offset + sequence length - 1 = ", call.offset,
                        " + ", tokens - 1, ", overflows int64");
    }
    return;
  }
  // M-RoPE position rows are coordinates and may be negative (DINOv3 centres its grid).
  if (call.positions.has_value() && call.positions->numel() > 0 && call.mrope_section.empty()) {
    const int64_t lowest = value_range(*call.positions).first;
    TORCH_CHECK_INDEX(lowest >= 0, op, ": positions must be >= 0, got ", lowest);
  }
  int64_t longest = tokens;  // the longest sequence: positions reach offset + offsets + it - 1
  if (call.cu_seqlens.has_value()) {
    const at::Tensor cu = call.cu_seqlens->to(at::kCPU, at::kLong).contiguous();
    const int64_t* values = cu.data_ptr<int64_t>();
    const int64_t n = cu.numel();
    TORCH_CHECK_VALUE(values[0] == 0, op, ": cu_seqlens must start at 0, got ", values[0]);
    longest = 0;
    for (int64_t i = 1; i < n; ++i) {
      TORCH_CHECK_VALUE(values[i] >= values[i - 1], op,
                        ": cu_seqlens must be non-decreasing, got ", values[i - 1], " then ",
                        values[i], " at index ", i);
      longest = std::max(longest, values[i] - values[i - 1]);
    }
    TORCH_CHECK_VALUE(values[n - 1] == tokens, op, ": cu_seqlens must end at the token count ",
                      tokens, ", got ", values[n - 1]);
  }
  if (call.positions.has_value() || longest == 0) return;
  int64_t start = call.offset;
  if (call.offsets.has_value() && call.offsets->numel() > 0) {
    const auto [lowest, highest] = value_range(*call.offsets);
    TORCH_CHECK_INDEX(lowest >= 0, op, ": offsets must be >= 0, got ", lowest);
    TORCH_CHECK_VALUE(highest <= kInt64Max - call.offset, op, ": offset + offsets = ",
                      call.offset, " + ", highest, " overflows int64");
    start += highest;
  }
  TORCH_CHECK_VALUE(start <= kInt64Max - (longest - 1), op,
                    ": the last position, offset + offsets + sequence length - 1 = ", start,
                    " + ", longest - 1, ", overflows int64");
}

std::vector<double> rotary_frequencies(const RotaryCall& call) {
  if (call.inv_freq.has_value()) {
    const at::Tensor host = call.inv_freq->to(at::kCPU, at::kDouble).contiguous();
    return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
  }
  kernels::RopeScaling scaling;
  scaling.base = call.base;
  scaling.float32_arithmetic = call.precision == Precision::kTransformers;
  scaling.float32_powers = torch_float32_powers();
  kernels::RopeFrequencies frequencies;
  const std::string error = kernels::compute_rope_frequencies(call.rotary_dim, scaling, frequencies);
  TORCH_INTERNAL_ASSERT(error.empty(), error);
  return std::move(frequencies.inv_freq);
}

RotaryTablesCall parse_rotary_tables_call(const Arguments& args) {
  RotaryTablesCall call;
  call.name = "posenc.apply_rotary_pos_emb";
  const char* op = call.name;
  call.q = args.tensor("q");
  call.k = args.optional_tensor("k");
  call.cos = args.tensor("cos");
  call.sin = args.tensor("sin");
  call.unsqueeze_dim = args.integer("unsqueeze_dim");
  call.transpose = args.boolean("transpose");
  const at::Tensor& q = call.q;
  TORCH_CHECK_TYPE(is_supported_float(q.scalar_type()), op, ": q must be a floating tensor (",
                   kFloatTypes, "), got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.dim() >= 1 && q.dim() <= kernels::kMaxTableDims + 1, op,
                    ": q must have 1 to ", kernels::kMaxTableDims + 1, " dimensions, got ",
                    q.dim());
  TORCH_CHECK_VALUE(q.sym_size(-1) % 2 == 0, op, ": the last dimension of q must be even, got ",
                    q.sym_size(-1));
  TORCH_CHECK_TYPE(is_supported_float(call.cos.scalar_type()) &&
                       is_supported_float(call.sin.scalar_type()),
                   op, ": cos and sin must be floating tensors (", kFloatTypes, "), got ",
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
    check_same_device(op, q, "q", k, "k");
    operands.push_back(k);
  }
  check_same_device(op, q, "q", call.cos, "cos");
  check_same_device(op, q, "q", call.sin, "sin");
  const at::Tensor unsqueezed = call.cos.unsqueeze(call.unsqueeze_dim);
  for (const at::Tensor& x : operands) {
    TORCH_CHECK_VALUE(at::is_expandable_to(unsqueezed.sym_sizes(), x.sym_sizes()), op,
                      ": cos.unsqueeze(", call.unsqueeze_dim, ") of shape ",
                      unsqueezed.sym_sizes(), " must broadcast to ", x.sym_sizes());
  }
  return call;
}

// ---- rope_frequencies -----------------------------------------------------------------------

RopeFrequenciesCall parse_rope_frequencies_call(const Arguments& args) {
  RopeFrequenciesCall call;
  const char* op = args.op_name();
  call.dim = args.integer("dim");
  kernels::RopeScaling& s = call.scaling;
  const std::string_view rope_type = args.string("rope_type");
  const std::optional<kernels::RopeType> type = kernels::parse_rope_type(std::string(rope_type));
  TORCH_CHECK_VALUE(type.has_value(), op, ": unknown rope_type '", rope_type, "'; expected ",
                    kernels::kRopeTypeNames);
  s.rope_type = *type;
  s.float32_arithmetic = parse_precision(op, args.string("precision")) ==
                         Precision::kTransformers;
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
  for (const char* name : {"short_factor", "long_factor"}) {
    const c10::IValue& value = args[name];
    if (value.isNone()) continue;
    const auto list = value.toDoubleVector();
    (std::string_view(name) == "short_factor" ? s.short_factor : s.long_factor) = list;
  }
  s.float32_powers = torch_float32_powers();
  const std::string error = kernels::check_rope_scaling(call.dim, s);
  TORCH_CHECK_VALUE(error.empty(), op, ": ", error);
  return call;
}

kernels::Float32Powers torch_float32_powers() {
  return [](double base, const float* exponents, float* out, int64_t n) {
    const at::Tensor e = at::from_blob(const_cast<float*>(exponents), {n}, at::kFloat);
    const at::Tensor powers = at::pow(at::Scalar(base), e).contiguous();
    std::copy(powers.data_ptr<float>(), powers.data_ptr<float>() + n, out);
  };
}

}  // namespace detail
}  // namespace posenc
