// The one parsed, validated description of each operator call. Every implementation (CPU, CUDA,
// Meta), autograd and the C++ API reach the operators through the dispatcher's boxed calling
// convention; `parse_*` turns a call's boxed arguments into a typed description (strings into
// enums, defaults resolved) and checks every shape, dtype, device and option in one place.
// `check_*_values` adds the checks that read tensor data (ids, positions, offsets, cu_seqlens).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace posenc {
namespace detail {

// The posenc operators, from the schema names in registration.cpp.
enum class OpId {
  kAddPositional,
  kAddPositionalBackward,
  kAddPositionalTableBackward,
  kEmbedding,
  kEmbeddingBackward,
  kEmbeddingTableBackward,
  kPositionalEncoding,
  kRotary,
  kRotaryTables,
  kRopeFrequencies,
};

OpId op_id(const c10::OperatorHandle& op);

// The operators with tensor inputs (every one but rope_frequencies): what each backend registers.
inline constexpr const char* kTensorOperators[] = {
    "add_positional",     "add_positional_backward",  "add_positional_table_backward",
    "embedding",          "embedding_backward",       "embedding_table_backward",
    "positional_encoding", "rotary",                  "rotary_tables"};

// The boxed arguments of one call (the last schema().arguments().size() entries of a stack),
// looked up by their schema names, so no argument list is spelled out again in C++.
class Arguments {
 public:
  Arguments(const c10::OperatorHandle& op, const torch::jit::Stack& stack);

  const char* op_name() const { return op_name_.c_str(); }  // "posenc.add_positional"
  bool has(std::string_view name) const { return index_of(name) >= 0; }
  const c10::IValue& operator[](std::string_view name) const;

  at::Tensor tensor(std::string_view name) const;
  std::optional<at::Tensor> optional_tensor(std::string_view name) const;
  std::string_view string(std::string_view name) const;
  double real(std::string_view name) const;
  std::optional<double> optional_real(std::string_view name) const;
  int64_t integer(std::string_view name) const;
  std::optional<int64_t> optional_integer(std::string_view name) const;
  bool boolean(std::string_view name) const;

 private:
  int index_of(std::string_view name) const;

  const c10::FunctionSchema& schema_;
  const c10::IValue* first_;
  std::string op_name_;
};

// float32, float64, bfloat16 or float16: the dtypes the kernels compute.
bool is_supported_float(at::ScalarType type);
kernels::DType kernel_dtype(at::ScalarType type);

// ---- add_positional, embedding, positional_encoding and their backward ops ------------------

// The parsed options shared by the row operators.
struct PositionalOptions {
  kernels::PositionCodeOptions code;
  kernels::Combine combine = kernels::Combine::kAdd;
  double scale = 1.0;  // embedding: None resolved to sqrt(D)
  int64_t offset = 0;
  double dropout = 0.0;
  bool training = true;
  kernels::GridCode grid;  // axis_count 0: 1-D positions

  bool dropout_active() const { return training && dropout > 0.0; }
};

// One call of add_positional(_backward, _table_backward), embedding(_backward,
// _table_backward) or positional_encoding, validated.
struct RowCall {
  OpId op = OpId::kAddPositional;
  const char* name = "";  // for messages
  // The [..., T, D] rows the kernel reads: x (add_positional) or grad (backward ops); undefined
  // for embedding (rows gathered from weight) and positional_encoding.
  at::Tensor rows;
  std::optional<at::Tensor> x;          // [..., T, D]: the forward's x (table backward, mul)
  at::Tensor ids;                       // [..., T] (embedding ops)
  at::Tensor weight;                    // [V, D] (embedding ops)
  std::optional<at::Tensor> positions;  // expanded to [..., T] (positional_encoding: [N])
  std::optional<at::Tensor> table;      // [P, D] (kind "learned")
  std::optional<at::Tensor> seed;       // int64, one element
  std::optional<c10::SymInt> table_rows;  // P, for kind "learned" and the table backward ops
  PositionalOptions options;
  std::optional<int64_t> padding_idx;   // normalised to [0, V)
  bool fairseq_positions = false;
  at::ScalarType dtype = at::kFloat;    // of the output
  std::vector<c10::SymInt> out_sizes;   // the output's shape
  std::vector<c10::SymInt> row_sizes;   // [..., T, D]: the logical rows of the kernel
  const char* size_argument = nullptr;  // the argument that sizes the output (table_rows, dim)
  int64_t size_value = 0;               // and its value
};

RowCall parse_row_call(OpId op, const Arguments& args);

// offset + T without int64 overflow and inside the table (host values), and, when read_data,
// ids in [0, V) and positions >= 0 and inside the table. The CUDA backend checks the data on
// the device instead (reading it here would synchronise).
void check_row_values(const RowCall& call, bool read_data);

// Kernel parameters plus the per-channel codes they point into (host codes: CPU calls of a
// computed kind only). Not copyable: params points into channels.
struct KernelCall {
  kernels::AddPositionalParams params;
  std::shared_ptr<const std::vector<kernels::ChannelCode>> channels;

  KernelCall() = default;
  KernelCall(const KernelCall&) = delete;
  KernelCall& operator=(const KernelCall&) = delete;
};

// Describes `call` to the row kernels writing `out` (laid out as call.row_sizes), reading
// `rows` when defined, with `combine`, and the host value of the dropout seed.
//   out, rows: [..., T, D]
void prepare_kernel_call(KernelCall& kernel, const RowCall& call, const at::Tensor& out,
                         const at::Tensor& rows, kernels::Combine combine, uint64_t seed);

kernels::StridedRows strided_rows(const at::Tensor& x);
kernels::ParallelFor torch_parallel_for();

// The dropout seed as an integer (CPU tensors, or a copy to the host).
uint64_t read_seed(const std::optional<at::Tensor>& seed);

// ---- rotary ---------------------------------------------------------------------------------

enum class RotaryLayout { kBSHD, kBHSD, kSBHD, kTHD };

// "exact": angles reduced exactly in double (within 2e-6 of float64 below 2^24).
// "transformers": transformers' float32 frequencies and float32 angles pos * inv_freq.
enum class Precision { kExact, kTransformers };

Precision parse_precision(const char* op, std::string_view precision);

struct RotaryCall {
  const char* name = "";
  at::Tensor q;                          // layout's shape
  std::optional<at::Tensor> k;           // layout's shape, q's batch, sequence and head_dim
  at::Tensor q4;                         // q as the [B, S, H, D] view
  std::optional<at::Tensor> k4;
  std::optional<at::Tensor> positions;   // [S], [B, S] or [tokens]; M-RoPE: [3, ...] of those
  std::vector<int64_t> mrope_section;    // empty, or 3 pair counts summing to rotary_dim / 2
  bool mrope_interleaved = false;
  std::optional<at::Tensor> offsets;     // [B] or [sequences]
  std::optional<at::Tensor> inv_freq;    // [rotary_dim / 2]
  std::optional<at::Tensor> cu_seqlens;  // [sequences + 1]
  RotaryLayout layout = RotaryLayout::kBSHD;
  double base = 10000.0;
  int64_t offset = 0;
  int64_t rotary_dim = 0;
  bool interleaved = false;
  double attention_factor = 1.0;
  bool inverse = false;
  Precision precision = Precision::kExact;
};

RotaryCall parse_rotary_call(const Arguments& args);

// The call's frequencies (radians per position) on the host: inv_freq, or the default
// base^(-2i/r) (exact, or transformers' float32 values for precision "transformers").
std::vector<double> rotary_frequencies(const RotaryCall& call);

// positions and offsets >= 0, offset + offsets + S without overflow, cu_seqlens from 0,
// non-decreasing, ending at the token count.
// (read_data: as for check_row_values.)
void check_rotary_values(const RotaryCall& call, bool read_data);

// t as the logical [B, S, H, D] view of `layout` (a permutation; "thd" adds B = 1).
at::Tensor rotary_bshd(const at::Tensor& t, RotaryLayout layout);

// apply_rotary_pos_emb: q, k: [..., D] (D even); cos, sin: broadcastable to q after
// unsqueeze(unsqueeze_dim).
struct RotaryTablesCall {
  const char* name = "";
  at::Tensor q;
  std::optional<at::Tensor> k;
  at::Tensor cos, sin;
  int64_t unsqueeze_dim = 1;
  bool transpose = false;
};

RotaryTablesCall parse_rotary_tables_call(const Arguments& args);

// ---- rope_frequencies -----------------------------------------------------------------------

struct RopeFrequenciesCall {
  int64_t dim = 0;
  kernels::RopeScaling scaling;
};

RopeFrequenciesCall parse_rope_frequencies_call(const Arguments& args);

// base^exponents with torch's float32 pow on a tensor of the same length, as transformers forms
// its frequencies, so that precision="transformers" matches them to the last bit.
kernels::Float32Powers torch_float32_powers();

}  // namespace detail
}  // namespace posenc
