// Backend-independent pieces of the torch binding: parsing the string options, validating
// arguments (with messages that name the argument), and describing tensors to kernels/.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "positional.h"
#include "rotary.h"

namespace posenc {
namespace detail {

// The non-tensor arguments of add_positional and its backward, parsed once.
struct PositionalOptions {
  kernels::PositionCodeOptions code;
  kernels::Combine combine = kernels::Combine::kAdd;
  double scale = 1.0;
  int64_t offset = 0;
  double dropout = 0.0;
  bool training = true;
};

kernels::PositionKind parse_kind(std::string_view kind);
kernels::Combine parse_combine(std::string_view combine);
kernels::Convention parse_convention(std::string_view convention);
kernels::Layout parse_layout(std::string_view layout);

PositionalOptions parse_positional_options(std::string_view kind, std::string_view combine,
                                           double scale, int64_t offset, double base,
                                           std::string_view convention, std::string_view layout,
                                           double dropout, bool training);

// float32, float64, bfloat16 or float16: the dtypes the kernels compute.
bool is_supported_float(at::ScalarType type);
kernels::DType kernel_dtype(at::ScalarType type);
kernels::IndexType kernel_index_type(at::ScalarType type);

// Checks the tensors of add_positional (and its backward, with `x` the incoming gradient) and
// returns positions expanded to x.shape[:-1] (or nullopt). Shape/dtype/device checks only: safe
// on Meta tensors.
//   x: [..., T, D]   positions: broadcastable to [..., T]   table: [P, D]   seed: int64 scalar
// rows_name and dim_name say, in messages, what x.shape[:-1] and x.size(-1) are to the user.
std::optional<at::Tensor> check_add_positional(const char* op, const at::Tensor& x,
                                               const std::optional<at::Tensor>& positions,
                                               const std::optional<at::Tensor>& table,
                                               const std::optional<at::Tensor>& seed,
                                               const PositionalOptions& options,
                                               const char* rows_name = "x.shape[:-1]",
                                               const char* dim_name = "x.size(-1)");

// Value checks that read data: positions non-negative and inside the table. Syncs on CUDA.
void check_position_values(const char* op, const std::optional<at::Tensor>& positions,
                           int64_t offset, int64_t seq_len, std::optional<int64_t> table_rows);

// The dropout seed as an integer (CPU tensors, or a copy to the host).
uint64_t read_seed(const std::optional<at::Tensor>& seed);

// Describes x: [..., T, D] (or an index [..., T]) to kernels/.
kernels::RowShape row_shape(const at::Tensor& x);
kernels::StridedRows strided_rows(const at::Tensor& x);
kernels::StridedIndex strided_index(const std::optional<at::Tensor>& index);

kernels::ParallelFor torch_parallel_for();

// Kernel parameters plus the per-channel codes they point into. Not copyable: params points
// into channels.
struct KernelCall {
  kernels::AddPositionalParams params;
  std::vector<kernels::ChannelCode> channels;

  KernelCall() = default;
  KernelCall(const KernelCall&) = delete;
  KernelCall& operator=(const KernelCall&) = delete;
};

// Fills everything but the input rows (params.x or params.gather).
//   out: [..., T, D]   positions: expanded to [..., T] or none   table: [P, D] (learned)
void prepare_call(KernelCall& call, const at::Tensor& out,
                  const std::optional<at::Tensor>& positions,
                  const std::optional<at::Tensor>& table, uint64_t seed,
                  const PositionalOptions& options, kernels::Combine combine);

// The embedding's extra arguments after validation.
struct EmbeddingOptions {
  PositionalOptions positional;   // scale resolved (None -> sqrt(D))
  int64_t padding_idx = -1;       // normalized to [0, V), or -1
  bool fairseq_positions = false;
};

EmbeddingOptions parse_embedding_options(std::string_view kind, std::string_view combine,
                                         std::optional<double> scale, int64_t offset,
                                         std::optional<int64_t> padding_idx,
                                         bool fairseq_positions, double base,
                                         std::string_view convention, std::string_view layout,
                                         double dropout, bool training);

// Checks ids: [..., T] and weight: [V, D] (plus positions, table, seed as for add_positional),
// resolves scale and padding_idx in `options`, and returns positions expanded to ids.shape.
// Shape/dtype/device checks only: safe on Meta tensors.
std::optional<at::Tensor> check_embedding(const char* op, const at::Tensor& ids,
                                          const at::Tensor& weight,
                                          const std::optional<at::Tensor>& positions,
                                          const std::optional<at::Tensor>& table,
                                          const std::optional<at::Tensor>& seed,
                                          EmbeddingOptions& options);

// Value checks: ids in [0, V), positions in range (including fairseq positions vs the table).
void check_embedding_values(const char* op, const at::Tensor& ids, int64_t vocab,
                            const std::optional<at::Tensor>& positions,
                            const EmbeddingOptions& options, std::optional<int64_t> table_rows);

// Points params.gather at weight[ids].  ids: [..., T]   weight: [V, D]
void set_gather(kernels::AddPositionalParams& params, const at::Tensor& ids,
                const at::Tensor& weight, const EmbeddingOptions& options);

// The shape [..., T, D] that an embedding output of ids: [..., T] has.
std::vector<c10::SymInt> embedding_output_size(const at::Tensor& ids, const c10::SymInt& dim);

// ---- rotary ---------------------------------------------------------------------------------

// The validated options of a rotary call.
struct RotaryOptions {
  int64_t rotary_dim = 0;
  bool thd = false;
};

// q or k as the logical [B, S, H, D] view of `layout` (a permutation; "thd" adds B = 1).
at::Tensor rotary_bshd(const at::Tensor& t, std::string_view layout);

// Checks every rotary argument that can be checked without reading data (safe on Meta).
//   q, k: see the schema   positions: [S], [B, S] or [tokens]   offsets: [B] or [sequences]
//   inv_freq: [rotary_dim / 2]   cu_seqlens: [sequences + 1]
RotaryOptions check_rotary(const char* op, const at::Tensor& q, const std::optional<at::Tensor>& k,
                           const std::optional<at::Tensor>& positions,
                           const std::optional<at::Tensor>& offsets,
                           const std::optional<at::Tensor>& inv_freq,
                           const std::optional<at::Tensor>& cu_seqlens, double base,
                           int64_t offset, std::optional<int64_t> rotary_dim,
                           std::string_view layout, double attention_factor);

// apply_rotary_pos_emb: q, k: [..., D] (D even); cos, sin: broadcastable to q after
// unsqueeze(unsqueeze_dim).
void check_rotary_tables(const char* op, const at::Tensor& q, const std::optional<at::Tensor>& k,
                         const at::Tensor& cos, const at::Tensor& sin, int64_t unsqueeze_dim);

}  // namespace detail
}  // namespace posenc
