// The row operators' shared parsing, value checks and launches (see rows.h).
#include "core/rows.h"

#include <ATen/Context.h>
#include <ATen/ExpandUtils.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "core/checks.h"

#ifdef POSENC_WITH_CUDA
#include "cuda/add_positional_launch.h"
#include "cuda/scatter_launch.h"
#endif

namespace posenc {
namespace core {

// ---- parsers ----------------------------------------------------------------------------------

void parse_combine_options(const Arguments& args, RowOptions& options) {
  const char* op = args.op_name();
  options.combine = parse_combine(op, args.string("combine"));
  // None (embedding) is resolved to sqrt(D) once D is known.
  const std::optional<double> scale = args.optional_real("scale");
  TORCH_CHECK_VALUE(!scale.has_value() || std::isfinite(*scale), op,
                    ": scale must be a finite number, got ", scale.value_or(0.0));
  options.scale = scale.value_or(std::numeric_limits<double>::quiet_NaN());
  options.offset = args.integer("offset");
  TORCH_CHECK_VALUE(options.offset >= 0, op, ": offset must be >= 0, got ", options.offset);
  options.dropout = args.real("dropout");
  TORCH_CHECK_VALUE(options.dropout >= 0.0 && options.dropout <= 1.0, op,
                    ": dropout must be in [0, 1], got ", options.dropout);
  options.training = args.boolean("training");
}

kernels::PositionCodeOptions parse_code_options(const Arguments& args, bool on_grid) {
  const char* op = args.op_name();
  kernels::PositionCodeOptions code;
  code.kind = parse_kind(op, args.string("kind"));
  code.base = args.real("base");
  check_base(op, code.base);
  code.convention = parse_convention(op, args.string("convention"));
  const std::optional<std::string_view> layout = args.optional_string("layout");
  code.layout = layout.has_value()
                    ? parse_layout(op, *layout)
                    : (on_grid ? kernels::Layout::kConcat : kernels::Layout::kInterleaved);
  return code;
}

bool grid_given(const Arguments& args) { return !args["grid"].isNone(); }

kernels::GridCode parse_grid(const Arguments& args, int64_t dim, kernels::PositionKind kind) {
  const char* op = args.op_name();
  kernels::GridCode grid;
  const std::optional<std::vector<int64_t>> sizes = args.optional_integers("grid");
  const int64_t extra_tokens = args.integer("extra_tokens");
  if (!sizes.has_value()) {
    for (const char* name : {"grid_dims", "grid_axes", "grid_origin", "grid_scale"}) {
      TORCH_CHECK_VALUE(args[name].isNone(), op, ": ", name, " needs grid, the patch grid's sizes");
    }
    TORCH_CHECK_VALUE(extra_tokens == 0, op, ": extra_tokens needs grid, the patch grid's sizes");
    return grid;
  }
  const std::vector<int64_t>& size_list = *sizes;
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

  auto per_axis = [&](const char* name, auto given, auto default_list) {
    auto list = given.value_or(default_list);
    TORCH_CHECK_VALUE(static_cast<int>(list.size()) == axes, op, ": ", name,
                      " must have one entry per grid axis (", axes, "), got ", list);
    return list;
  };
  // Default: the last axis first, as MAE's meshgrid(w, h) orders the channels.
  std::vector<int64_t> default_axes(axes);
  for (int a = 0; a < axes; ++a) default_axes[a] = axes - 1 - a;
  const std::vector<int64_t> segment_axes =
      per_axis("grid_axes", args.optional_integers("grid_axes"), default_axes);
  std::vector<bool> seen(axes, false);
  for (const int64_t axis : segment_axes) {
    TORCH_CHECK_VALUE(axis >= 0 && axis < axes && !seen[axis], op,
                      ": grid_axes must be a permutation of range(", axes, "), got ", segment_axes);
    seen[axis] = true;
  }
  const std::optional<std::vector<int64_t>> given_dims = args.optional_integers("grid_dims");
  std::vector<int64_t> default_dims;
  if (!given_dims.has_value()) {
    TORCH_CHECK_VALUE(dim % axes == 0, op, ": D = ", dim, " does not split evenly over ", axes,
                      " grid axes; give grid_dims, the channels of each axis");
    default_dims.assign(axes, dim / axes);
  }
  const std::vector<int64_t> dims = per_axis("grid_dims", given_dims, default_dims);
  int64_t end = 0;
  for (int s = 0; s < axes; ++s) {
    TORCH_CHECK_VALUE(dims[s] >= 1 && dims[s] <= dim - end, op,
                      ": grid_dims must be >= 1 and sum to D = ", dim, ", got ", dims);
    end += dims[s];
    grid.segment_ends[s] = end;
    grid.segment_axes[s] = static_cast<int>(segment_axes[s]);
  }
  TORCH_CHECK_VALUE(end == dim, op, ": grid_dims must sum to D = ", dim, ", got ", dims);
  const std::vector<int64_t> origins =
      per_axis("grid_origin", args.optional_integers("grid_origin"), std::vector<int64_t>(axes, 0));
  const std::vector<double> scales =
      per_axis("grid_scale", args.optional_reals("grid_scale"), std::vector<double>(axes, 1.0));
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

void parse_table(const Arguments& args, RowCall& call, bool learned, const at::Tensor& main,
                 const char* main_name, const c10::SymInt& dim, const char* dim_name) {
  const char* op = call.name;
  call.table = args.optional_tensor("table");
  if (!call.table.has_value()) {
    TORCH_CHECK_VALUE(!learned, op, ": kind='learned' needs table, a (P, D) tensor");
    return;
  }
  TORCH_CHECK_VALUE(learned, op, ": table is used only with kind='learned', got kind='",
                    args.string("kind"), "'");
  const at::Tensor& table = *call.table;
  TORCH_CHECK_VALUE(table.dim() == 2 && table.sym_size(1) == dim, op,
                    ": table must have shape (P, D) with D = ", dim_name, " = ", dim, ", got ",
                    table.sym_sizes());
  TORCH_CHECK_TYPE(table.scalar_type() == call.dtype, op, ": table must have the dtype of ",
                   main_name, " (", call.dtype, "), got ", table.scalar_type());
  check_same_device(op, main, main_name, table, "table");
  call.table_rows = table.sym_size(0);
}

void parse_table_rows(const Arguments& args, RowCall& call, const c10::SymInt& dim) {
  const c10::SymInt rows = args["table_rows"].toSymInt();
  if (const auto concrete = rows.maybe_as_int()) {
    check_buffer_size(call.name, "table_rows", *concrete, dim.maybe_as_int().value_or(1));
  }
  call.table_rows = rows;
  call.size_argument = "table_rows";
  call.size_value = rows.maybe_as_int().value_or(-1);
  call.out_sizes = {rows, dim};
}

void parse_seed(const Arguments& args, RowCall& call, const at::Tensor& main,
                const char* main_name) {
  const char* op = call.name;
  call.seed = args.optional_tensor("seed");
  const std::optional<at::Tensor>& seed = call.seed;
  if (call.options.dropout_active()) {
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

void parse_positions(const Arguments& args, RowCall& call, const at::Tensor& main,
                     const char* main_name, const std::vector<c10::SymInt>& index_sizes,
                     const char* index_name) {
  const char* op = call.name;
  const RowOptions& options = call.options;
  const std::optional<at::Tensor> positions = args.optional_tensor("positions");
  // On a grid, positions are token indices: explicit, or 0 .. T - 1 covering the whole grid.
  if (options.grid.axis_count > 0) {
    TORCH_CHECK_VALUE(options.offset == 0, op,
                      ": with grid, give positions (token indices) rather than offset, got offset ",
                      options.offset);
    const int64_t tokens = kernels::grid_token_count(options.grid);
    if (!positions.has_value()) {
      const int64_t seq_len = index_sizes.back().guard_int(__FILE__, __LINE__);
      TORCH_CHECK_VALUE(seq_len == tokens, op, ": ", main_name, " has T = ", seq_len,
                        " tokens, but grid ",
                        c10::IntArrayRef(options.grid.sizes, options.grid.axis_count),
                        " with extra_tokens = ", options.grid.extra_tokens, " has ", tokens,
                        "; pass positions (token indices) for a subset of the grid");
    }
  }
  if (call.fairseq_positions) {
    TORCH_CHECK_VALUE(call.padding_idx.has_value(), op,
                      ": positions='fairseq' needs padding_idx (fairseq numbers positions from "
                      "padding_idx + 1)");
    TORCH_CHECK_VALUE(!positions.has_value(), op,
                      ": positions='fairseq' computes positions; do not pass a positions tensor");
    TORCH_CHECK_VALUE(options.offset == 0, op,
                      ": positions='fairseq' computes positions; offset must be 0, got ",
                      options.offset);
  }
  if (!positions.has_value()) return;
  TORCH_CHECK_VALUE(options.offset == 0, op,
                    ": give positions or offset, not both (offset = ", options.offset, ")");
  check_index_tensor(op, *positions, "positions");
  check_same_device(op, main, main_name, *positions, "positions");
  TORCH_CHECK_VALUE(at::is_expandable_to(positions->sym_sizes(), index_sizes), op,
                    ": positions of shape ", positions->sym_sizes(), " must be broadcastable to ",
                    index_name, " = ", index_sizes);
  call.positions = positions->expand_symint(index_sizes);
}

// ---- values -------------------------------------------------------------------------------

void check_row_values(const RowCall& call, bool read_data) {
  const char* name = call.name;
  const int64_t seq_len =
      call.row_sizes.size() >= 2 ? call.row_sizes[call.row_sizes.size() - 2].expect_int() : 0;
  int64_t rows_count = 1;
  for (size_t i = 0; i + 1 < call.row_sizes.size(); ++i) {
    rows_count *= call.row_sizes[i].expect_int();
  }
  if (read_data && call.ids.defined() && call.ids.numel() > 0) {
    const int64_t vocab = call.weight.size(0);
    const auto [lowest, highest] = value_range(call.ids);
    TORCH_CHECK_INDEX(lowest >= 0 && highest < vocab, name, ": ids must be in [0, V) = [0, ", vocab,
                      "), got values in [", lowest, ", ", highest, "]");
  }
  if (rows_count == 0) return;
  const std::optional<int64_t> table_rows =
      call.table_rows.has_value() ? std::optional<int64_t>(call.table_rows->expect_int())
                                  : std::nullopt;
  if (call.fairseq_positions) {
    // Positions reach padding_idx + T when a row has no padding.
    if (table_rows.has_value()) {
      TORCH_CHECK_INDEX(
          *call.padding_idx + seq_len < *table_rows, name,
          ": positions='fairseq' reach padding_idx + T = ", *call.padding_idx + seq_len,
          ", outside the table of ", *table_rows, " rows");
    }
    return;
  }
  if (call.positions.has_value()) {
    if (!read_data) return;
    const auto [lowest, highest] = value_range(*call.positions);
    const kernels::GridCode& grid = call.options.grid;
    // A computed code takes any position (negative ones are relative positions); a table row
    // or a grid token index must be >= 0.
    if (grid.axis_count > 0 || table_rows.has_value()) {
      TORCH_CHECK_INDEX(lowest >= 0, name, ": positions must be >= 0 ",
                        grid.axis_count > 0 ? "(token indices of the grid)" : "(rows of the table)",
                        ", got ", lowest);
    }
    if (grid.axis_count > 0) {
      TORCH_CHECK_INDEX(highest < kernels::grid_token_count(grid), name,
                        ": positions are token indices and must be < extra_tokens + the grid's "
                        "patches = ",
                        kernels::grid_token_count(grid), ", got ", highest);
    }
    if (table_rows.has_value()) {
      TORCH_CHECK_INDEX(highest < *table_rows, name, ": positions must be < the table's ",
                        *table_rows, " rows, got ", highest);
    }
    return;
  }
  const int64_t offset = call.options.offset;
  // The last position, offset + T - 1, must fit in int64.
  TORCH_CHECK_VALUE(offset <= kInt64Max - (seq_len - 1), name,
                    ": the last position offset + T - 1 = ", offset, " + ", seq_len - 1,
                    " overflows int64");
  if (table_rows.has_value()) {
    TORCH_CHECK_INDEX(offset + seq_len <= *table_rows, name,
                      ": positions offset + arange(T) up to ", offset + seq_len - 1,
                      " are outside the table of ", *table_rows, " rows");
  }
}

// ---- allocation ---------------------------------------------------------------------------

namespace {

// Refuses, before allocation, a CPU output sized by an argument that exceeds physical memory.
void check_fits_in_memory(const RowCall& call, const at::TensorOptions& options) {
  if (call.size_argument == nullptr) return;
  check_output_fits(call.name,
                    std::string(call.size_argument) + " = " + std::to_string(call.size_value),
                    call.out_sizes, options);
}

}  // namespace

at::Tensor allocate_sized(const RowCall& call, const at::TensorOptions& options, bool zero,
                          bool runs_kernels) {
  if (runs_kernels) check_fits_in_memory(call, options);
  try {
    return zero ? at::zeros_symint(call.out_sizes, options)
                : at::empty_symint(call.out_sizes, options);
  } catch (const c10::Error& error) {
    // A size argument too large for memory: say which one.
    if (call.size_argument == nullptr) throw;
    TORCH_CHECK_VALUE(false, call.name, ": ", call.size_argument, " = ", call.size_value,
                      " is too large: an output of shape ", c10::SymIntArrayRef(call.out_sizes),
                      " cannot be allocated (", error.what_without_backtrace(), ")");
  }
}

// ---- describing tensors to kernels/ -------------------------------------------------------

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

// x: [..., T, D]
kernels::StridedRows strided_rows(const at::Tensor& x) {
  kernels::StridedRows rows;
  rows.data = x.data_ptr();
  for (int64_t i = 0; i + 2 < x.dim(); ++i) rows.batch_strides[i] = x.stride(i);
  rows.seq_stride = x.stride(-2);
  rows.dim_stride = x.stride(-1);
  return rows;
}

// The host channel codes of a computed kind, and the same as arrays (what the CPU row loops read).
struct HostChannels {
  std::vector<kernels::ChannelCode> codes;
  kernels::ChannelArrays arrays;
};
using ChannelCodes = std::shared_ptr<const HostChannels>;

// The host channel codes of (code, dim, grid), kept for the next calls that ask for the same:
// making them costs a pow and an exact split per channel, and laying them out as arrays
// allocates and fills five [D] arrays, both more than a decoding step's row, and a model asks
// for the same few codes at every step (figures: docs/performance.md). The few most recent are
// kept, keyed through the options' operator==.
ChannelCodes channel_codes(const kernels::PositionCodeOptions& code, int64_t dim,
                           const kernels::GridCode& grid) {
  struct Entry {
    kernels::PositionCodeOptions code;
    int64_t dim;
    kernels::GridCode grid;
    ChannelCodes channels;
  };
  constexpr size_t kKept = 8;
  static std::mutex mutex;
  static std::vector<Entry> recent;  // most recently used first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = recent.begin(); it != recent.end(); ++it) {
      if (it->dim == dim && it->code == code && it->grid == grid) {
        std::rotate(recent.begin(), it, it + 1);
        return recent.front().channels;
      }
    }
  }
  auto made = std::make_shared<HostChannels>();
  made->codes = kernels::make_channel_codes(code, dim, grid);
  made->arrays = kernels::make_channel_arrays(made->codes);
  ChannelCodes channels = std::move(made);
  std::lock_guard<std::mutex> lock(mutex);
  recent.insert(recent.begin(), Entry{code, dim, grid, channels});
  if (recent.size() > kKept) recent.pop_back();
  return channels;
}

// Kernel parameters for `call` writing `out` (laid out as call.row_sizes), reading `rows` when
// defined, with `combine` and the host value of the dropout seed. `channels` keeps the host codes
// that params points into (CPU calls of a computed kind only).
//   out, rows: [..., T, D]
kernels::AddPositionalParams kernel_params(const RowCall& call, const at::Tensor& out,
                                           const at::Tensor& rows, kernels::Combine combine,
                                           uint64_t seed, ChannelCodes& channels) {
  kernels::AddPositionalParams params;
  const RowOptions& options = call.options;
  params.dtype = kernel_dtype(out.scalar_type());
  params.shape = row_shape(call.row_sizes);
  // A view costs a dispatch, which a decoding step notices: only where the sizes differ.
  params.out = strided_rows(out.sym_sizes() == c10::SymIntArrayRef(call.row_sizes)
                                ? out
                                : out.view_symint(call.row_sizes));
  if (rows.defined()) params.x = strided_rows(rows);
  params.positions = strided_index(call.positions);
  params.offset = options.offset;
  params.combine = combine;
  params.scale = options.scale;
  params.dropout = kernels::make_dropout(options.dropout, options.training, seed);
  params.source.kind =
      call.table_rows.has_value() ? kernels::PositionKind::kLearned : options.code.kind;
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
      channels = channel_codes(options.code, params.shape.dim, options.grid);
      params.source.channels = channels->codes.data();
      params.source.arrays = &channels->arrays;
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
  return params;
}

#ifdef POSENC_WITH_CUDA
namespace kc = kernels::cuda;

// The seed as an int64 scalar on `device` (the wrapper draws it there; a CPU seed is copied).
at::Tensor device_seed(const std::optional<at::Tensor>& seed, const at::Device& device) {
  if (!seed.has_value()) return at::Tensor();
  return seed->to(device).reshape({});
}

const int64_t* seed_pointer(const at::Tensor& seed) {
  return seed.defined() ? seed.data_ptr<int64_t>() : nullptr;
}

// A device workspace of `bytes` from the caching allocator (none when 0).
at::Tensor workspace_of(int64_t bytes, const at::Tensor& like) {
  return bytes > 0 ? at::empty({bytes}, like.options().dtype(at::kByte)) : at::Tensor();
}

void* pointer_of(const at::Tensor& workspace) {
  return workspace.defined() ? workspace.data_ptr() : nullptr;
}

// The device channel table of `params`' computed code (undefined when the launch reads none),
// filled on `stream` once and kept for the later launches with the same code, width and grid on
// that device and stream: a model asks for the same few codes at every step, and a kept table
// leaves one launch per call. The kept tables are never freed, as a CUDA graph that captured a
// launch reading one may replay at any time; at most kKept are kept, later ones are made per
// call. A table made while the stream is being captured is not kept: it is filled only when the
// graph replays.
at::Tensor cuda_channel_table(const kernels::AddPositionalParams& params, const at::Device& device,
                              void* stream) {
  const int64_t bytes = kc::channel_table_bytes(params);
  if (bytes == 0) return at::Tensor();
  struct Entry {
    c10::DeviceIndex device;
    void* stream;
    kernels::PositionCodeOptions code;
    int64_t dim;
    kernels::GridCode grid;
    at::Tensor table;
  };
  constexpr size_t kKept = 64;
  static std::mutex mutex;
  static auto* kept = new std::vector<Entry>();  // never destroyed: see above
  const kernels::PositionSource& source = params.source;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    for (const Entry& entry : *kept) {
      if (entry.device == device.index() && entry.stream == stream && entry.code == source.code &&
          entry.dim == params.shape.dim && entry.grid == source.grid) {
        return entry.table;
      }
    }
  }
  at::Tensor table = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  check_launch(kc::fill_channel_table(params, static_cast<double*>(table.data_ptr()), stream),
               "fill_channel_table");
  if (!kc::stream_capturing(stream)) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (kept->size() < kKept) {
      kept->push_back({device.index(), stream, source.code, params.shape.dim, source.grid, table});
    }
  }
  return table;
}

const double* table_pointer(const at::Tensor& table) {
  return table.defined() ? static_cast<const double*>(table.data_ptr()) : nullptr;
}
#endif

}  // namespace

template <Backend kBackend>
void run_rows(const RowCall& call, const at::Tensor& out, const at::Tensor& rows,
              kernels::Combine combine) {
  if constexpr (!runs_kernels(kBackend)) return;
  check_row_values(call, !checks_values_on_device(kBackend));
  ChannelCodes channels;
  if constexpr (kBackend == Backend::kCpu) {
    const kernels::AddPositionalParams params =
        kernel_params(call, out, rows, combine, read_seed(call.seed), channels);
    kernels::add_positional_cpu(params, parallel_for());
  } else if constexpr (kBackend == Backend::kCuda) {
#ifdef POSENC_WITH_CUDA
    const kernels::AddPositionalParams params =
        kernel_params(call, out, rows, combine, /*seed=*/0, channels);
    const c10::DeviceGuard guard(out.device());
    void* stream = current_stream(out.device());
    const at::Tensor seed = device_seed(call.seed, out.device());
    const at::Tensor table = cuda_channel_table(params, out.device(), stream);
    const at::Tensor workspace = workspace_of(kc::add_positional_workspace_bytes(params), out);
    check_launch(kc::add_positional(params, seed_pointer(seed), table_pointer(table),
                                    pointer_of(workspace), stream),
                 "add_positional");
#endif
  }
}

template <Backend kBackend>
at::Tensor run_scatter(const RowCall& call, ScatterTarget target) {
  if constexpr (!runs_kernels(kBackend)) {
    const at::Tensor& like = target == ScatterTarget::kWeight ? call.weight : call.rows;
    return allocate_sized(call, like.options().dtype(call.dtype), false, false);
  }
  // The CPU kernels write every element in the output's dtype (summing half types in float);
  // CUDA sums in float for half types, else double, into a zeroed buffer converted afterwards.
  constexpr bool kSumsInOutput = kBackend == Backend::kCpu;
  const at::ScalarType sum_type =
      kSumsInOutput ? call.dtype
                    : (call.rows.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const at::Tensor grad = allocate_sized(call, call.rows.options().dtype(sum_type),
                                         /*zero=*/!kSumsInOutput, /*runs_kernels=*/true);
  check_row_values(call, !checks_values_on_device(kBackend));
  ChannelCodes channels;
  kernels::StridedRows input;
  if (call.x.has_value() && call.options.combine == kernels::Combine::kMul) {
    input = strided_rows(*call.x);
  }
  if constexpr (kBackend == Backend::kCpu) {
    // Deterministic for any thread count: channel blocks per thread, rows in a fixed order.
    const kernels::AddPositionalParams params = kernel_params(
        call, call.rows, call.rows, call.options.combine, read_seed(call.seed), channels);
    const int64_t target_rows = grad.size(0);
    if (target == ScatterTarget::kTable) {
      kernels::add_positional_table_backward_cpu(params, input, grad.data_ptr(), target_rows,
                                                 parallel_for());
    } else {
      kernels::embedding_weight_backward_cpu(params, grad.data_ptr(), target_rows, parallel_for());
    }
  } else if constexpr (kBackend == Backend::kCuda) {
#ifdef POSENC_WITH_CUDA
    // Atomics by default; under torch.use_deterministic_algorithms(True), rows sorted by target
    // and summed in chunks joined in a fixed order, bit-identical from run to run.
    const kernels::AddPositionalParams params =
        kernel_params(call, call.rows, call.rows, call.options.combine, /*seed=*/0, channels);
    const at::Device device = grad.device();
    const c10::DeviceGuard guard(device);
    void* stream = current_stream(device);
    const at::Tensor seed = device_seed(call.seed, device);
    const kc::ScatterTarget kernel_target =
        target == ScatterTarget::kTable ? kc::ScatterTarget::kTable : kc::ScatterTarget::kWeight;
    const int64_t batch = params.shape.batch_count();
    const int64_t seq_len = params.shape.seq_len;
    at::Tensor fairseq;
    if (params.gather.fairseq_positions) {
      fairseq = at::empty({batch * seq_len}, grad.options().dtype(at::kLong));
      check_launch(kc::fairseq_positions(params, fairseq.data_ptr<int64_t>(), stream),
                   "fairseq_positions");
    }
    const int64_t* fairseq_ptr = fairseq.defined() ? fairseq.data_ptr<int64_t>() : nullptr;
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    const at::Tensor table = cuda_channel_table(params, device, stream);
    if (!deterministic) {
      check_launch(
          kc::scatter_backward_atomic(params, input, kernel_target, seed_pointer(seed), fairseq_ptr,
                                      table_pointer(table), grad.data_ptr(), stream),
          "scatter_backward_atomic");
    } else {
      // Each row's target: its id (weight) or its position (table), in row order b * T + t.
      at::Tensor targets;
      if (target == ScatterTarget::kWeight) {
        targets = call.ids.reshape({-1}).to(at::kLong);
      } else if (fairseq.defined()) {
        targets = fairseq;
      } else if (call.positions.has_value()) {
        targets = call.positions->reshape({-1}).to(at::kLong);
      } else {
        targets = at::arange(call.options.offset, call.options.offset + seq_len,
                             grad.options().dtype(at::kLong))
                      .expand({batch, seq_len})
                      .reshape({-1});
      }
      // Sorting and the chunked sums need no host synchronisation (unlike unique_consecutive).
      const auto [sorted_targets, sorted_rows] = at::sort(targets, /*stable=*/true, 0, false);
      const at::Tensor sorted_targets_dense = sorted_targets.contiguous();
      const at::Tensor sorted_rows_dense = sorted_rows.contiguous();
      const at::Tensor workspace =
          workspace_of(kc::scatter_workspace_bytes(params, /*deterministic=*/true), grad);
      check_launch(
          kc::scatter_backward_deterministic(
              params, input, kernel_target, seed_pointer(seed), fairseq_ptr,
              sorted_rows_dense.data_ptr<int64_t>(), sorted_targets_dense.data_ptr<int64_t>(),
              table_pointer(table), pointer_of(workspace), grad.data_ptr(), stream),
          "scatter_backward_deterministic");
    }
#endif
  }
  return grad.to(call.dtype);
}

template void run_rows<Backend::kCpu>(const RowCall&, const at::Tensor&, const at::Tensor&,
                                      kernels::Combine);
template void run_rows<Backend::kMeta>(const RowCall&, const at::Tensor&, const at::Tensor&,
                                       kernels::Combine);
template at::Tensor run_scatter<Backend::kCpu>(const RowCall&, ScatterTarget);
template at::Tensor run_scatter<Backend::kMeta>(const RowCall&, ScatterTarget);
#ifdef POSENC_WITH_CUDA
template void run_rows<Backend::kCuda>(const RowCall&, const at::Tensor&, const at::Tensor&,
                                       kernels::Combine);
template at::Tensor run_scatter<Backend::kCuda>(const RowCall&, ScatterTarget);
#endif

}  // namespace core
}  // namespace posenc
