#include "posenc/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randint.h>

#include <limits>

#include "posenc/posenc.h"

namespace posenc {
namespace ops {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

at::Tensor add_positional(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                          const std::optional<at::Tensor>& table,
                          const std::optional<at::Tensor>& seed, std::string_view kind,
                          std::string_view combine, double scale, int64_t offset, double base,
                          std::string_view convention, std::string_view layout, double dropout,
                          bool training) {
  static const auto op = find_op<decltype(add_positional)>("posenc::add_positional");
  return op.call(x, positions, table, seed, kind, combine, scale, offset, base, convention, layout,
                 dropout, training);
}

at::Tensor add_positional_backward(const at::Tensor& grad,
                                   const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& table,
                                   const std::optional<at::Tensor>& seed, std::string_view kind,
                                   std::string_view combine, double scale, int64_t offset,
                                   double base, std::string_view convention,
                                   std::string_view layout, double dropout, bool training) {
  static const auto op =
      find_op<decltype(add_positional_backward)>("posenc::add_positional_backward");
  return op.call(grad, positions, table, seed, kind, combine, scale, offset, base, convention,
                 layout, dropout, training);
}

at::Tensor add_positional_table_backward(const at::Tensor& grad,
                                         const std::optional<at::Tensor>& x,
                                         const std::optional<at::Tensor>& positions,
                                         const std::optional<at::Tensor>& seed,
                                         c10::SymInt table_rows, std::string_view combine,
                                         double scale, int64_t offset, double dropout,
                                         bool training) {
  static const auto op = find_op<decltype(add_positional_table_backward)>(
      "posenc::add_positional_table_backward");
  return op.call(grad, x, positions, seed, std::move(table_rows), combine, scale, offset, dropout,
                 training);
}

at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight,
                     const std::optional<at::Tensor>& positions,
                     const std::optional<at::Tensor>& table, const std::optional<at::Tensor>& seed,
                     std::string_view kind, std::string_view combine, std::optional<double> scale,
                     int64_t offset, std::optional<int64_t> padding_idx, bool fairseq_positions,
                     double base, std::string_view convention, std::string_view layout,
                     double dropout, bool training) {
  static const auto op = find_op<decltype(embedding)>("posenc::embedding");
  return op.call(ids, weight, positions, table, seed, kind, combine, scale, offset, padding_idx,
                 fairseq_positions, base, convention, layout, dropout, training);
}

at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids,
                              const at::Tensor& weight, const std::optional<at::Tensor>& positions,
                              const std::optional<at::Tensor>& table,
                              const std::optional<at::Tensor>& seed, std::string_view kind,
                              std::string_view combine, std::optional<double> scale,
                              int64_t offset, std::optional<int64_t> padding_idx,
                              bool fairseq_positions, double base, std::string_view convention,
                              std::string_view layout, double dropout, bool training) {
  static const auto op = find_op<decltype(embedding_backward)>("posenc::embedding_backward");
  return op.call(grad, ids, weight, positions, table, seed, kind, combine, scale, offset,
                 padding_idx, fairseq_positions, base, convention, layout, dropout, training);
}

at::Tensor embedding_table_backward(const at::Tensor& grad, const at::Tensor& ids,
                                    const at::Tensor& weight,
                                    const std::optional<at::Tensor>& positions,
                                    const std::optional<at::Tensor>& seed,
                                    c10::SymInt table_rows, std::string_view combine,
                                    std::optional<double> scale, int64_t offset,
                                    std::optional<int64_t> padding_idx, bool fairseq_positions,
                                    double dropout, bool training) {
  static const auto op =
      find_op<decltype(embedding_table_backward)>("posenc::embedding_table_backward");
  return op.call(grad, ids, weight, positions, seed, std::move(table_rows), combine, scale, offset,
                 padding_idx, fairseq_positions, dropout, training);
}

std::vector<at::Tensor> rotary(const at::Tensor& q, const std::optional<at::Tensor>& k,
                               const std::optional<at::Tensor>& positions,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& inv_freq,
                               const std::optional<at::Tensor>& cu_seqlens, double base,
                               int64_t offset, std::optional<int64_t> rotary_dim, bool interleaved,
                               std::string_view layout, double attention_factor, bool inverse) {
  static const auto op = find_op<decltype(rotary)>("posenc::rotary");
  return op.call(q, k, positions, offsets, inv_freq, cu_seqlens, base, offset, rotary_dim,
                 interleaved, layout, attention_factor, inverse);
}

std::vector<at::Tensor> rotary_tables(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      int64_t unsqueeze_dim, bool transpose) {
  static const auto op = find_op<decltype(rotary_tables)>("posenc::rotary_tables");
  return op.call(q, k, cos, sin, unsqueeze_dim, transpose);
}

at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim, std::string_view kind,
                               double base, std::string_view convention, std::string_view layout,
                               std::optional<at::ScalarType> dtype) {
  static const auto op = find_op<decltype(positional_encoding)>("posenc::positional_encoding");
  return op.call(positions, dim, kind, base, convention, layout, dtype);
}

}  // namespace ops
}  // namespace posenc

// ---- the public C++ API (posenc/posenc.h): options structs onto the calls above --------------

namespace posenc {

std::optional<at::Tensor> draw_seed(const at::Device& device, double dropout, bool training,
                                    const std::optional<at::Generator>& generator) {
  if (!training || dropout == 0.0) return std::nullopt;
  return at::randint(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                     {}, generator, at::TensorOptions().dtype(at::kLong).device(device));
}

at::Tensor add_positional(const at::Tensor& x, const AddPositionalOptions& o) {
  return ops::add_positional(x, o.positions(), o.table(),
                             draw_seed(x.device(), o.dropout(), o.training(), o.generator()),
                             o.kind(), o.combine(), o.scale(), o.offset(), o.base(),
                             o.convention(), o.layout(), o.dropout(), o.training());
}

at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight, const EmbeddingOptions& o) {
  return ops::embedding(ids, weight, o.positions(), o.table(),
                        draw_seed(weight.device(), o.dropout(), o.training(), o.generator()),
                        o.kind(), o.combine(), o.scale(), o.offset(), o.padding_idx(),
                        o.fairseq_positions(), o.base(), o.convention(), o.layout(), o.dropout(),
                        o.training());
}

std::vector<at::Tensor> rotary(const at::Tensor& q, const std::optional<at::Tensor>& k,
                               const RotaryOptions& o) {
  return ops::rotary(q, k, o.positions(), o.offsets(), o.inv_freq(), o.cu_seqlens(), o.base(),
                     o.offset(), o.rotary_dim(), o.interleaved(), o.layout(),
                     o.attention_factor(), /*inverse=*/false);
}

at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim,
                               const PositionCodeOptions& o) {
  return ops::positional_encoding(positions, dim, o.kind(), o.base(), o.convention(), o.layout(),
                                  o.dtype());
}

std::tuple<at::Tensor, double> rope_frequencies(int64_t dim, double base,
                                                const std::string& rope_type, double factor,
                                                std::optional<int64_t> max_position_embeddings) {
  using Signature = std::tuple<at::Tensor, double>(
      int64_t, double, std::string_view, double, std::optional<int64_t>, std::optional<int64_t>,
      std::optional<int64_t>, std::optional<double>, double, double, std::optional<double>,
      std::optional<double>, bool, double, double, std::optional<c10::ArrayRef<double>>,
      std::optional<c10::ArrayRef<double>>);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("posenc::rope_frequencies", "")
                             .typed<Signature>();
  return op.call(dim, base, rope_type, factor, max_position_embeddings, std::nullopt, std::nullopt,
                 std::nullopt, 32.0, 1.0, std::nullopt, std::nullopt, true, 1.0, 4.0, std::nullopt,
                 std::nullopt);
}

}  // namespace posenc
