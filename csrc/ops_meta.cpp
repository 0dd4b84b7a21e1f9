// Meta implementations: output shapes, dtypes and strides without data, so FakeTensor,
// torch.compile and torch.export can trace the operators. They run the same argument checks as
// the real backends (shape, dtype and device only).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common.h"

namespace posenc {
namespace {

// x: [..., T, D] -> [..., T, D]
at::Tensor add_positional_meta(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                               const std::optional<at::Tensor>& table,
                               const std::optional<at::Tensor>& seed, std::string_view kind,
                               std::string_view combine, double scale, int64_t offset,
                               double base, std::string_view convention, std::string_view layout,
                               double dropout, bool training) {
  const auto options = detail::parse_positional_options(kind, combine, scale, offset, base,
                                                        convention, layout, dropout, training);
  detail::check_add_positional("posenc.add_positional", x, positions, table, seed, options);
  return at::empty_like(x);
}

// grad: [..., T, D] -> [..., T, D]
at::Tensor add_positional_backward_meta(const at::Tensor& grad,
                                        const std::optional<at::Tensor>& positions,
                                        const std::optional<at::Tensor>& table,
                                        const std::optional<at::Tensor>& seed,
                                        std::string_view kind, std::string_view combine,
                                        double scale, int64_t offset, double base,
                                        std::string_view convention, std::string_view layout,
                                        double dropout, bool training) {
  const auto options = detail::parse_positional_options(kind, combine, scale, offset, base,
                                                        convention, layout, dropout, training);
  detail::check_add_positional("posenc.add_positional_backward", grad, positions, table, seed,
                               options);
  return at::empty_like(grad);
}

// grad: [..., T, D] -> [table_rows, D]
at::Tensor add_positional_table_backward_meta(const at::Tensor& grad,
                                              const std::optional<at::Tensor>& /*x*/,
                                              const std::optional<at::Tensor>& positions,
                                              const std::optional<at::Tensor>& seed,
                                              c10::SymInt table_rows, std::string_view combine,
                                              double scale, int64_t offset, double dropout,
                                              bool training) {
  const auto options = detail::parse_positional_options(
      "sinusoidal", combine, scale, offset, 10000.0, "vaswani", "interleaved", dropout, training);
  detail::check_add_positional("posenc.add_positional_table_backward", grad, positions,
                               std::nullopt, seed, options);
  return at::empty_symint({std::move(table_rows), grad.sym_size(-1)}, grad.options());
}

// ids: [..., T], weight: [V, D] -> [..., T, D]
at::Tensor embedding_meta(const at::Tensor& ids, const at::Tensor& weight,
                          const std::optional<at::Tensor>& positions,
                          const std::optional<at::Tensor>& table,
                          const std::optional<at::Tensor>& seed, std::string_view kind,
                          std::string_view combine, std::optional<double> scale, int64_t offset,
                          std::optional<int64_t> padding_idx, bool fairseq_positions, double base,
                          std::string_view convention, std::string_view layout, double dropout,
                          bool training) {
  auto options = detail::parse_embedding_options(kind, combine, scale, offset, padding_idx,
                                                 fairseq_positions, base, convention, layout,
                                                 dropout, training);
  detail::check_embedding("posenc.embedding", ids, weight, positions, table, seed, options);
  return at::empty_symint(detail::embedding_output_size(ids, weight.sym_size(1)),
                          weight.options());
}

// grad: [..., T, D] -> [V, D]
at::Tensor embedding_backward_meta(const at::Tensor& grad, const at::Tensor& ids,
                                   const at::Tensor& weight,
                                   const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& table,
                                   const std::optional<at::Tensor>& seed, std::string_view kind,
                                   std::string_view combine, std::optional<double> scale,
                                   int64_t offset, std::optional<int64_t> padding_idx,
                                   bool fairseq_positions, double base,
                                   std::string_view convention, std::string_view layout,
                                   double dropout, bool training) {
  auto options = detail::parse_embedding_options(kind, combine, scale, offset, padding_idx,
                                                 fairseq_positions, base, convention, layout,
                                                 dropout, training);
  detail::check_embedding("posenc.embedding_backward", ids, weight, positions, table, seed,
                          options);
  return at::empty_symint(weight.sym_sizes(), grad.options());
}

// grad: [..., T, D] -> [table_rows, D]
at::Tensor embedding_table_backward_meta(const at::Tensor& grad, const at::Tensor& ids,
                                         const at::Tensor& weight,
                                         const std::optional<at::Tensor>& positions,
                                         const std::optional<at::Tensor>& seed,
                                         c10::SymInt table_rows, std::string_view combine,
                                         std::optional<double> scale, int64_t offset,
                                         std::optional<int64_t> padding_idx,
                                         bool fairseq_positions, double dropout, bool training) {
  auto options = detail::parse_embedding_options("sinusoidal", combine, scale, offset,
                                                 padding_idx, fairseq_positions, 10000.0,
                                                 "vaswani", "interleaved", dropout, training);
  detail::check_embedding("posenc.embedding_table_backward", ids, weight, positions,
                          std::nullopt, seed, options);
  return at::empty_symint({std::move(table_rows), grad.sym_size(-1)}, grad.options());
}

// q, k -> [q_out] or [q_out, k_out], like the inputs
std::vector<at::Tensor> rotary_meta(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                    const std::optional<at::Tensor>& positions,
                                    const std::optional<at::Tensor>& offsets,
                                    const std::optional<at::Tensor>& inv_freq,
                                    const std::optional<at::Tensor>& cu_seqlens, double base,
                                    int64_t offset, std::optional<int64_t> rotary_dim,
                                    bool interleaved, std::string_view layout,
                                    double attention_factor, bool inverse) {
  detail::check_rotary("posenc.rotary", q, k, positions, offsets, inv_freq, cu_seqlens, base,
                       offset, rotary_dim, layout, attention_factor);
  std::vector<at::Tensor> outputs{at::empty_like(q)};
  if (k.has_value()) outputs.push_back(at::empty_like(*k));
  return outputs;
}

std::vector<at::Tensor> rotary_tables_meta(const at::Tensor& q,
                                           const std::optional<at::Tensor>& k,
                                           const at::Tensor& cos, const at::Tensor& sin,
                                           int64_t unsqueeze_dim, bool transpose) {
  detail::check_rotary_tables("posenc.apply_rotary_pos_emb", q, k, cos, sin, unsqueeze_dim);
  std::vector<at::Tensor> outputs{at::empty_like(q)};
  if (k.has_value()) outputs.push_back(at::empty_like(*k));
  return outputs;
}

// positions: any shape -> [*positions.shape, dim]
at::Tensor positional_encoding_meta(const at::Tensor& positions, int64_t dim,
                                    std::string_view kind, double base,
                                    std::string_view convention, std::string_view layout,
                                    std::optional<at::ScalarType> dtype) {
  detail::parse_positional_options(kind, "add", 1.0, 0, base, convention, layout, 0.0, false);
  TORCH_CHECK_VALUE(dim >= 0, "posenc.positional_encoding: dim must be >= 0, got ", dim);
  std::vector<c10::SymInt> sizes(positions.sym_sizes().begin(), positions.sym_sizes().end());
  sizes.emplace_back(dim);
  return at::empty_symint(sizes, positions.options().dtype(dtype.value_or(at::kFloat)));
}

}  // namespace

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  m.impl("add_positional", &add_positional_meta);
  m.impl("add_positional_backward", &add_positional_backward_meta);
  m.impl("add_positional_table_backward", &add_positional_table_backward_meta);
  m.impl("embedding", &embedding_meta);
  m.impl("embedding_backward", &embedding_backward_meta);
  m.impl("embedding_table_backward", &embedding_table_backward_meta);
  m.impl("positional_encoding", &positional_encoding_meta);
  m.impl("rotary", &rotary_meta);
  m.impl("rotary_tables", &rotary_tables_meta);
}

}  // namespace posenc
