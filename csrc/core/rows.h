// What add_positional, embedding and positional_encoding share: the parsed description of a call
// over rows [..., T, D] (RowCall), the parsers of the arguments they have in common (the code,
// the combine, the patch grid, the learned table, positions, the seed), the checks that read
// index values, and the launch of the row kernels and of the gradient scatters on each backend.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <vector>

#include "core/backend.h"
#include "core/operator.h"
#include "position_code.h"
#include "positional.h"

namespace posenc {
namespace core {

// The options of the row operators.
struct RowOptions {
  kernels::PositionCodeOptions code;
  kernels::Combine combine = kernels::Combine::kAdd;
  double scale = 1.0;
  int64_t offset = 0;
  double dropout = 0.0;
  bool training = true;
  kernels::GridCode grid;  // axis_count 0: 1-D positions

  bool dropout_active() const { return training && dropout > 0.0; }
};

// One validated call of a row operator.
struct RowCall {
  const char* name = "";  // for messages: "posenc.add_positional"
  // The [..., T, D] rows the kernel reads: x (add_positional) or grad (backward ops); undefined
  // for embedding's forward (rows gathered from weight) and positional_encoding.
  at::Tensor rows;
  std::optional<at::Tensor> x;            // [..., T, D]: the forward's x (table backward, mul)
  at::Tensor ids;                         // [..., T] (embedding ops)
  at::Tensor weight;                      // [V, D] (embedding ops)
  std::optional<at::Tensor> positions;    // expanded to [..., T] (positional_encoding: [N])
  std::optional<at::Tensor> table;        // [P, D] (kind "learned")
  std::optional<at::Tensor> seed;         // int64, one element
  std::optional<c10::SymInt> table_rows;  // P, for kind "learned" and the table backward ops
  RowOptions options;
  std::optional<int64_t> padding_idx;  // normalised to [0, V)
  bool fairseq_positions = false;
  at::ScalarType dtype = at::kFloat;    // of the output
  std::vector<c10::SymInt> out_sizes;   // the output's shape
  std::vector<c10::SymInt> row_sizes;   // [..., T, D]: the logical rows of the kernel
  const char* size_argument = nullptr;  // the argument that sizes the output (table_rows, dim)
  int64_t size_value = 0;               // and its value
};

// ---- parsers of the shared arguments ----------------------------------------------------------

// combine, scale (None: NaN, resolved by the caller), offset, dropout and training.
void parse_combine_options(const Arguments& args, RowOptions& options);

// kind, base, convention and layout. layout None means "concat" on a patch grid (the layout of
// MAE's, DiT's and big_vision's grid codes) and "interleaved" otherwise.
kernels::PositionCodeOptions parse_code_options(const Arguments& args, bool on_grid);

// Whether the call's grid argument is given (operators with a grid only).
bool grid_given(const Arguments& args);

// The token grid from grid, extra_tokens, grid_dims, grid_axes, grid_origin and grid_scale, for
// rows of `dim` channels of a computed kind.
kernels::GridCode parse_grid(const Arguments& args, int64_t dim, kernels::PositionKind kind);

// table: [P, D] of the dtype and device of `main`; needed by kind "learned", refused otherwise.
void parse_table(const Arguments& args, RowCall& call, bool learned, const at::Tensor& main,
                 const char* main_name, const c10::SymInt& dim, const char* dim_name);

// table_rows of the table backward ops; the output is [table_rows, dim].
void parse_table_rows(const Arguments& args, RowCall& call, const c10::SymInt& dim);

// seed: needed by an active dropout; an int64 with one element on main's device or the CPU.
void parse_seed(const Arguments& args, RowCall& call, const at::Tensor& main,
                const char* main_name);

// positions (broadcastable to index_sizes = [..., T]), checked against offset, the grid and
// fairseq positions; sets call.positions expanded.
void parse_positions(const Arguments& args, RowCall& call, const at::Tensor& main,
                     const char* main_name, const std::vector<c10::SymInt>& index_sizes,
                     const char* index_name);

// ---- values, allocation and launch ------------------------------------------------------------

// offset + T without int64 overflow and inside the table (host values), and, when read_data,
// ids in [0, V) and positions >= 0, on the grid and inside the table.
void check_row_values(const RowCall& call, bool read_data);

// The output of call.out_sizes with `options`, refused (naming call.size_argument) when it
// cannot be allocated or, on the CPU, exceeds physical memory: where the kernel overcommits, the
// allocation would succeed and the process be killed when the pages are touched.
at::Tensor allocate_sized(const RowCall& call, const at::TensorOptions& options, bool zero,
                          bool runs_kernels);

// out = the row kernel over `rows` (undefined: gathered or none) with `combine`, after the
// checks of the index values; nothing on Meta.
//   out, rows: [..., T, D] (out laid out as call.row_sizes)
template <Backend kBackend>
void run_rows(const RowCall& call, const at::Tensor& out, const at::Tensor& rows,
              kernels::Combine combine);

enum class ScatterTarget { kTable, kWeight };

// The gradient of a learned table (kTable) or of the embedding weight (kWeight), from call.rows
// (grad) and, for combine "mul" of add_positional, call.x: [call.out_sizes] in call.dtype (on
// Meta, its shape only).
template <Backend kBackend>
at::Tensor run_scatter(const RowCall& call, ScatterTarget target);

}  // namespace core
}  // namespace posenc
