// rotary (RoPE of q and k, angles computed in the kernel; inverse=True is its backward): schema,
// parsing, the implementation on every backend, autograd and the C++ API.
#include "posenc/rotary.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "api/call.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/checks.h"
#include "core/operator.h"
#include "ops/rope_frequencies/rope_frequencies.h"
#include "rotary.h"

#ifdef POSENC_WITH_CUDA
#include "cuda/rotary_launch.h"
#endif

namespace posenc {
namespace {

using core::Arguments, core::Backend, core::Precision;

// q, k: [B, S, H, D] (layout "bshd"), [B, H, S, D] ("bhsd"), [S, B, H, D] ("sbhd") or
// [tokens, H, D] ("thd" with cu_seqlens [sequences + 1]); heads may differ between q and k.
// positions: [S], [B, S] or [tokens]; offsets: [B] (or [sequences]); inv_freq: [rotary_dim / 2].
// Returns [q] or [q, k]. inverse=True rotates by the negative angle: the backward.
// precision="transformers" computes the default frequencies and the angles pos * inv_freq in
// float32, as transformers does.
const core::OperatorDefinition kDefinition{
    R"(rotary(Tensor q, Tensor? k=None, Tensor? positions=None, Tensor? offsets=None,
    Tensor? inv_freq=None, Tensor? cu_seqlens=None, *, float base=10000.0, int offset=0,
    int? rotary_dim=None, bool interleaved=False, str layout="bshd",
    float attention_factor=1.0, bool inverse=False, str precision="exact",
    int[]? mrope_section=None, bool mrope_interleaved=False) -> Tensor[])",
    {"q", "k", "positions", "offsets", "inv_freq", "cu_seqlens", "base", "offset", "rotary_dim",
     "interleaved", "layout", "attention_factor", "inverse", "precision", "mrope_section",
     "mrope_interleaved"}};

enum class Layout { kBSHD, kBHSD, kSBHD, kTHD };

Layout parse_layout(const char* op, std::string_view layout) {
  if (layout == "bshd") return Layout::kBSHD;
  if (layout == "bhsd") return Layout::kBHSD;
  if (layout == "sbhd") return Layout::kSBHD;
  if (layout == "thd") return Layout::kTHD;
  TORCH_CHECK_VALUE(false, op, ": layout must be 'bshd', 'bhsd', 'sbhd' or 'thd', got '", layout,
                    "'");
}

// t as the logical [B, S, H, D] view of `layout` (a permutation; "thd" adds B = 1).
at::Tensor as_bshd(const at::Tensor& t, Layout layout) {
  switch (layout) {
    case Layout::kBSHD:
      return t;
    case Layout::kBHSD:
      return t.permute({0, 2, 1, 3});
    case Layout::kSBHD:
      return t.permute({1, 0, 2, 3});
    case Layout::kTHD:
      break;
  }
  return t.unsqueeze(0);
}

struct RotaryCall {
  const char* name = "";
  at::Tensor q;                 // layout's shape
  std::optional<at::Tensor> k;  // layout's shape, q's batch, sequence and head_dim
  at::Tensor q4;                // q as the [B, S, H, D] view
  std::optional<at::Tensor> k4;
  std::optional<at::Tensor> positions;  // [S], [B, S] or [tokens]; M-RoPE: [3, ...] of those
  std::vector<int64_t> mrope_section;   // empty, or 3 pair counts summing to rotary_dim / 2
  bool mrope_interleaved = false;
  std::optional<at::Tensor> offsets;     // [B] or [sequences]
  std::optional<at::Tensor> inv_freq;    // [rotary_dim / 2]
  std::optional<at::Tensor> cu_seqlens;  // [sequences + 1]
  Layout layout = Layout::kBSHD;
  double base = 10000.0;
  int64_t offset = 0;
  int64_t rotary_dim = 0;
  bool interleaved = false;
  double attention_factor = 1.0;
  bool inverse = false;
  Precision precision = Precision::kExact;
};

RotaryCall parse(const Arguments& args) {
  RotaryCall call;
  call.name = args.op_name();
  const char* op = call.name;
  const std::string_view layout = args.string("layout");
  call.layout = parse_layout(op, layout);
  const bool thd = call.layout == Layout::kTHD;
  const int64_t ndim = thd ? 3 : 4;
  call.q = args.tensor("q");
  core::check_float_tensor(op, call.q, "q");
  TORCH_CHECK_VALUE(call.q.dim() == ndim, op, ": q must have ", ndim, " dimensions for layout '",
                    layout, "', got shape ", call.q.sym_sizes());
  call.q4 = as_bshd(call.q, call.layout);
  call.k = args.optional_tensor("k");
  if (call.k.has_value()) {
    const at::Tensor& k = *call.k;
    TORCH_CHECK_TYPE(k.scalar_type() == call.q.scalar_type(), op, ": k must have q's dtype (",
                     call.q.scalar_type(), "), got ", k.scalar_type());
    TORCH_CHECK_VALUE(k.dim() == ndim, op, ": k must have ", ndim, " dimensions for layout '",
                      layout, "', got shape ", k.sym_sizes());
    core::check_same_device(op, call.q, "q", k, "k");
    call.k4 = as_bshd(k, call.layout);
    TORCH_CHECK_VALUE(
        call.k4->sym_size(0) == call.q4.sym_size(0) && call.k4->sym_size(1) == call.q4.sym_size(1),
        op, ": q and k must agree on batch and sequence, got q ", call.q.sym_sizes(), " and k ",
        k.sym_sizes());
    TORCH_CHECK_VALUE(call.k4->sym_size(3) == call.q4.sym_size(3), op,
                      ": q and k must have the same head_dim, got ", call.q4.sym_size(3), " and ",
                      call.k4->sym_size(3));
  }
  const int64_t head_dim = call.q4.sym_size(3).guard_int(__FILE__, __LINE__);
  const std::optional<int64_t> rotary_dim = args.optional_integer("rotary_dim");
  call.rotary_dim = rotary_dim.value_or(head_dim);
  TORCH_CHECK_VALUE(call.rotary_dim % 2 == 0 && call.rotary_dim >= 0 && call.rotary_dim <= head_dim,
                    op, ": rotary_dim must be even and within [0, head_dim = ", head_dim, "], got ",
                    call.rotary_dim,
                    rotary_dim.has_value() ? "" : " (the head_dim, which must be even)");
  call.base = args.real("base");
  core::check_base(op, call.base);
  call.attention_factor = args.real("attention_factor");
  TORCH_CHECK_VALUE(std::isfinite(call.attention_factor), op,
                    ": attention_factor must be finite, got ", call.attention_factor);
  call.offset = args.integer("offset");
  TORCH_CHECK_VALUE(call.offset >= 0, op, ": offset must be >= 0, got ", call.offset);
  call.interleaved = args.boolean("interleaved");
  call.inverse = args.boolean("inverse");
  call.precision = core::parse_precision(op, args.string("precision"));

  auto index_argument = [&](const char* name) {
    std::optional<at::Tensor> t = args.optional_tensor(name);
    if (t.has_value()) {
      core::check_index_tensor(op, *t, name);
      core::check_same_device(op, call.q, "q", *t, name);
    }
    return t;
  };
  call.positions = index_argument("positions");
  call.offsets = index_argument("offsets");
  call.cu_seqlens = index_argument("cu_seqlens");
  const c10::SymInt batch = call.q4.sym_size(0);
  const c10::SymInt seq_len = call.q4.sym_size(1);
  const std::optional<std::vector<int64_t>> section = args.optional_integers("mrope_section");
  call.mrope_interleaved = args.boolean("mrope_interleaved");
  TORCH_CHECK_VALUE(section.has_value() || !call.mrope_interleaved, op,
                    ": mrope_interleaved needs mrope_section");
  if (section.has_value()) {
    call.mrope_section = *section;
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
    TORCH_CHECK_VALUE(call.offset == 0, op,
                      ": give positions or offset, not both (offset = ", call.offset, ")");
    if (!call.mrope_section.empty()) {
      // One row of positions per axis: [3, tokens] (thd), [3, S], [3, 1, S] or [3, B, S].
      const bool rows = positions.dim() >= 2 && positions.sym_size(0) == kernels::kMropeAxes &&
                        positions.sym_size(positions.dim() - 1) == seq_len;
      const bool shaped =
          thd ? positions.dim() == 2
              : positions.dim() == 2 || (positions.dim() == 3 && (positions.sym_size(1) == batch ||
                                                                  positions.sym_size(1) == 1));
      TORCH_CHECK_VALUE(rows && shaped, op, ": positions with mrope_section must have shape ",
                        thd ? "(3, tokens)" : "(3, S), (3, 1, S) or (3, B, S)",
                        " with S = ", seq_len, " and B = ", batch, ", got ", positions.sym_sizes());
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
                      "got ",
                      call.cu_seqlens->sym_sizes());
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
    TORCH_CHECK_TYPE(core::is_supported_float(inv_freq.scalar_type()), op,
                     ": inv_freq must be a floating tensor, got ", inv_freq.scalar_type());
    core::check_same_device(op, call.q, "q", inv_freq, "inv_freq");
    TORCH_CHECK_VALUE(inv_freq.dim() == 1 && inv_freq.sym_size(0) == call.rotary_dim / 2, op,
                      ": inv_freq must have shape (rotary_dim / 2,) = (", call.rotary_dim / 2,
                      ",), got ", inv_freq.sym_sizes());
  }
  return call;
}

// positions and offsets >= 0, offset + offsets + S without overflow, cu_seqlens from 0,
// non-decreasing, ending at the token count. Without read_data (CUDA: checked on the device),
// only what the host knows.
void check_values(const RotaryCall& call, bool read_data) {
  const char* op = call.name;
  const int64_t tokens = call.q4.size(1);
  if (!read_data) {
    // Without offsets or cu_seqlens, the last position offset + S - 1 is a host value.
    if (!call.positions.has_value() && !call.offsets.has_value() && !call.cu_seqlens.has_value() &&
        tokens > 0) {
      TORCH_CHECK_VALUE(call.offset <= core::kInt64Max - (tokens - 1), op,
                        ": the last position, offset + sequence length - 1 = ", call.offset, " + ",
                        tokens - 1, ", overflows int64");
    }
    return;
  }
  // M-RoPE position rows are coordinates and may be negative (DINOv3 centres its grid).
  if (call.positions.has_value() && call.positions->numel() > 0 && call.mrope_section.empty()) {
    const int64_t lowest = core::value_range(*call.positions).first;
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
      TORCH_CHECK_VALUE(values[i] >= values[i - 1], op, ": cu_seqlens must be non-decreasing, got ",
                        values[i - 1], " then ", values[i], " at index ", i);
      longest = std::max(longest, values[i] - values[i - 1]);
    }
    TORCH_CHECK_VALUE(values[n - 1] == tokens, op, ": cu_seqlens must end at the token count ",
                      tokens, ", got ", values[n - 1]);
  }
  if (call.positions.has_value() || longest == 0) return;
  int64_t start = call.offset;
  if (call.offsets.has_value() && call.offsets->numel() > 0) {
    const auto [lowest, highest] = core::value_range(*call.offsets);
    TORCH_CHECK_INDEX(lowest >= 0, op, ": offsets must be >= 0, got ", lowest);
    TORCH_CHECK_VALUE(highest <= core::kInt64Max - call.offset, op,
                      ": offset + offsets = ", call.offset, " + ", highest, " overflows int64");
    start += highest;
  }
  TORCH_CHECK_VALUE(start <= core::kInt64Max - (longest - 1), op,
                    ": the last position, offset + offsets + sequence length - 1 = ", start, " + ",
                    longest - 1, ", overflows int64");
}

kernels::IndexType index_type(const at::Tensor& t) {
  return core::kernel_index_type(t.scalar_type());
}

// in4, out4: [B, S, H, D] views
kernels::RotaryOperand operand(const at::Tensor& in4, const at::Tensor& out4) {
  kernels::RotaryOperand op;
  op.in = in4.data_ptr();
  op.out = out4.data_ptr();
  op.heads = in4.size(2);
  for (int i = 0; i < 4; ++i) {
    op.in_strides[i] = in4.stride(i);
    op.out_strides[i] = out4.stride(i);
  }
  return op;
}

// The kernel parameters of `call` writing `outputs`; offsets and cu_seqlens made contiguous into
// `dense` (which keeps them alive). Frequencies are the backend's to set.
kernels::RotaryParams kernel_params(const RotaryCall& call, const std::vector<at::Tensor>& outputs,
                                    std::vector<at::Tensor>& dense) {
  kernels::RotaryParams params;
  params.dtype = core::kernel_dtype(call.q.scalar_type());
  params.batch = call.q4.size(0);
  params.seq_len = call.q4.size(1);
  params.head_dim = call.q4.size(3);
  params.rotary_dim = call.rotary_dim;
  params.interleaved = call.interleaved;
  params.inverse = call.inverse;
  params.attention_factor = call.attention_factor;
  params.offset = call.offset;
  // The kernel indexes positions by (b, s) strides, offsets and cu_seqlens with unit stride.
  if (call.positions.has_value()) {
    const at::Tensor& positions = *call.positions;
    params.positions = positions.data_ptr();
    params.positions_type = index_type(positions);
    // M-RoPE: a leading axis of 3 position rows, then the usual (B, S) / (S,) / (tokens,).
    const int axis_dims = call.mrope_section.empty() ? 0 : 1;
    const bool per_row = positions.dim() - axis_dims == 2;
    params.positions_strides[0] =
        per_row && positions.size(axis_dims) != 1 ? positions.stride(axis_dims) : 0;
    params.positions_strides[1] = positions.stride(positions.dim() - 1);
    if (axis_dims == 1) {
      params.mrope = true;
      params.mrope_interleaved = call.mrope_interleaved;
      for (int a = 0; a < kernels::kMropeAxes; ++a) params.mrope_section[a] = call.mrope_section[a];
      params.positions_axis_stride = positions.stride(0);
    }
  }
  if (call.offsets.has_value()) {
    const at::Tensor& offsets = dense.emplace_back(call.offsets->contiguous());
    params.offsets = offsets.data_ptr();
    params.offsets_type = index_type(offsets);
  }
  if (call.cu_seqlens.has_value()) {
    const at::Tensor& cu_seqlens = dense.emplace_back(call.cu_seqlens->contiguous());
    params.cu_seqlens = cu_seqlens.data_ptr();
    params.cu_seqlens_type = index_type(cu_seqlens);
    params.sequences = cu_seqlens.numel() - 1;
  }
  params.operands[0] = operand(call.q4, as_bshd(outputs[0], call.layout));
  params.operand_count = 1;
  if (call.k.has_value()) {
    params.operands[1] = operand(*call.k4, as_bshd(outputs[1], call.layout));
    params.operand_count = 2;
  }
  return params;
}

void launch_cpu(kernels::RotaryParams& params, const RotaryCall& call) {
  std::vector<double> radians;
  if (call.inv_freq.has_value()) {
    const at::Tensor host = call.inv_freq->to(at::kCPU, at::kDouble).contiguous();
    radians.assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  } else {
    radians = rope::default_frequencies(call.rotary_dim, call.base,
                                        call.precision == Precision::kTransformers);
  }
  const std::vector<kernels::TurnFrequency> frequencies = kernels::rotary_turn_frequencies(radians);
  params.frequencies = frequencies.data();
  std::vector<float> float32_frequencies;
  if (call.precision == Precision::kTransformers) {
    float32_frequencies.assign(radians.begin(), radians.end());
    params.float32_frequencies = float32_frequencies.data();
  }
  kernels::rotary_cpu(params, core::parallel_for());
}

#ifdef POSENC_WITH_CUDA
void launch_cuda(kernels::RotaryParams& params, const RotaryCall& call) {
  namespace kc = kernels::cuda;
  const at::Device device = call.q.device();
  const c10::DeviceGuard guard(device);
  at::Tensor frequencies, float32_frequencies;
  if (call.inv_freq.has_value()) frequencies = call.inv_freq->to(at::kDouble).contiguous();
  if (call.precision == Precision::kTransformers) {
    // transformers' float32 frequencies, formed on the device as transformers forms them there
    // (no host copy, so no synchronisation).
    float32_frequencies =
        call.inv_freq.has_value()
            ? call.inv_freq->to(at::kFloat).contiguous()
            : at::reciprocal(at::pow(
                  call.base, at::arange(0, call.rotary_dim, 2, call.q.options().dtype(at::kLong))
                                 .to(at::kFloat)
                                 .div(static_cast<double>(call.rotary_dim))));
    params.float32_frequencies = float32_frequencies.data_ptr<float>();
  }
  const int64_t workspace_bytes = kc::rotary_workspace_bytes(params);
  const at::Tensor workspace = workspace_bytes > 0
                                   ? at::empty({workspace_bytes}, call.q.options().dtype(at::kByte))
                                   : at::Tensor();
  core::check_launch(
      kc::rotary(params, frequencies.defined() ? frequencies.data_ptr<double>() : nullptr,
                 call.base, workspace.defined() ? workspace.data_ptr() : nullptr,
                 core::current_stream(device)),
      "rotary");
}
#endif

// q, k: [B, S, H, D] in the call's layout (or [tokens, H, D]) -> [q_out] or [q_out, k_out]
struct Rotary {
  template <Backend kBackend>
  static std::vector<at::Tensor> run(const Arguments& args) {
    const RotaryCall call = parse(args);
    std::vector<at::Tensor> outputs{at::empty_like(call.q)};
    if (call.k.has_value()) outputs.push_back(at::empty_like(*call.k));
    if constexpr (core::runs_kernels(kBackend)) {
      check_values(call, !core::checks_values_on_device(kBackend));
      std::vector<at::Tensor> dense;
      kernels::RotaryParams params = kernel_params(call, outputs, dense);
      if constexpr (kBackend == Backend::kCpu) {
        launch_cpu(params, call);
      } else {
#ifdef POSENC_WITH_CUDA
        launch_cuda(params, call);
#endif
      }
    }
    return outputs;
  }
};

// The backward is the forward with inverse flipped: the rotation by the negative angle.
const core::Derivative kDerivative{
    "posenc::rotary", {"q", "k"}, {{{"posenc::rotary", {"q", "k"}, "inverse"}, {}}}};

}  // namespace

TORCH_LIBRARY_FRAGMENT(posenc, m) {
  core::define<Rotary>(m, kDefinition);
  core::register_derivative(m, kDerivative);
}

std::vector<at::Tensor> rotary(const at::Tensor& q, const std::optional<at::Tensor>& k,
                               const RotaryOptions& o) {
  return api::call_operator("rotary", {{"q", q},
                                       {"k", api::optional_value(k)},
                                       {"positions", api::optional_value(o.positions())},
                                       {"offsets", api::optional_value(o.offsets())},
                                       {"inv_freq", api::optional_value(o.inv_freq())},
                                       {"cu_seqlens", api::optional_value(o.cu_seqlens())},
                                       {"base", o.base()},
                                       {"offset", o.offset()},
                                       {"rotary_dim", o.rotary_dim()},
                                       {"interleaved", o.interleaved()},
                                       {"layout", o.layout()},
                                       {"attention_factor", o.attention_factor()},
                                       {"inverse", o.inverse()},
                                       {"precision", o.precision()},
                                       {"mrope_section", o.mrope_section()},
                                       {"mrope_interleaved", o.mrope_interleaved()}})[0]
      .toTensorVector();
}

}  // namespace posenc
