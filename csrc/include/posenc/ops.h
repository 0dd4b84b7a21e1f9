// Calls into the posenc operators through the dispatcher, one function per schema in
// csrc/registration.cpp. Going through the dispatcher means autograd, CPU, CUDA and Meta all
// apply from C++ exactly as from torch.ops.posenc in Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <string_view>
#include <vector>

namespace posenc {
namespace ops {

// x: [..., T, D], positions: broadcastable to [..., T], table: [P, D], seed: int64 scalar
// -> [..., T, D]
at::Tensor add_positional(const at::Tensor& x, const std::optional<at::Tensor>& positions,
                          const std::optional<at::Tensor>& table,
                          const std::optional<at::Tensor>& seed, std::string_view kind,
                          std::string_view combine, double scale, int64_t offset, double base,
                          std::string_view convention, std::string_view layout, double dropout,
                          bool training);

// grad: [..., T, D] -> grad_x: [..., T, D]
at::Tensor add_positional_backward(const at::Tensor& grad,
                                   const std::optional<at::Tensor>& positions,
                                   const std::optional<at::Tensor>& table,
                                   const std::optional<at::Tensor>& seed, std::string_view kind,
                                   std::string_view combine, double scale, int64_t offset,
                                   double base, std::string_view convention,
                                   std::string_view layout, double dropout, bool training);

// grad: [..., T, D], x: [..., T, D] or none -> grad_table: [table_rows, D]
at::Tensor add_positional_table_backward(const at::Tensor& grad,
                                         const std::optional<at::Tensor>& x,
                                         const std::optional<at::Tensor>& positions,
                                         const std::optional<at::Tensor>& seed,
                                         c10::SymInt table_rows, std::string_view combine,
                                         double scale, int64_t offset, double dropout,
                                         bool training);

// ids: [..., T], weight: [V, D], positions: broadcastable to [..., T], table: [P, D]
// -> [..., T, D]
at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight,
                     const std::optional<at::Tensor>& positions,
                     const std::optional<at::Tensor>& table, const std::optional<at::Tensor>& seed,
                     std::string_view kind, std::string_view combine, std::optional<double> scale,
                     int64_t offset, std::optional<int64_t> padding_idx, bool fairseq_positions,
                     double base, std::string_view convention, std::string_view layout,
                     double dropout, bool training);

// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_weight: [V, D]
at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids,
                              const at::Tensor& weight, const std::optional<at::Tensor>& positions,
                              const std::optional<at::Tensor>& table,
                              const std::optional<at::Tensor>& seed, std::string_view kind,
                              std::string_view combine, std::optional<double> scale,
                              int64_t offset, std::optional<int64_t> padding_idx,
                              bool fairseq_positions, double base, std::string_view convention,
                              std::string_view layout, double dropout, bool training);

// grad: [..., T, D], ids: [..., T], weight: [V, D] -> grad_table: [table_rows, D]
at::Tensor embedding_table_backward(const at::Tensor& grad, const at::Tensor& ids,
                                    const at::Tensor& weight,
                                    const std::optional<at::Tensor>& positions,
                                    const std::optional<at::Tensor>& seed,
                                    c10::SymInt table_rows, std::string_view combine,
                                    std::optional<double> scale, int64_t offset,
                                    std::optional<int64_t> padding_idx, bool fairseq_positions,
                                    double dropout, bool training);

// q, k: [B, S, H, D] in `layout` ("bshd", "bhsd", "sbhd") or [tokens, H, D] ("thd")
// -> [q_out] or [q_out, k_out]
std::vector<at::Tensor> rotary(const at::Tensor& q, const std::optional<at::Tensor>& k,
                               const std::optional<at::Tensor>& positions,
                               const std::optional<at::Tensor>& offsets,
                               const std::optional<at::Tensor>& inv_freq,
                               const std::optional<at::Tensor>& cu_seqlens, double base,
                               int64_t offset, std::optional<int64_t> rotary_dim, bool interleaved,
                               std::string_view layout, double attention_factor, bool inverse);

// q, k: [..., D]; cos, sin: broadcastable after unsqueeze(unsqueeze_dim) -> [q_out(, k_out)]
std::vector<at::Tensor> rotary_tables(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      int64_t unsqueeze_dim, bool transpose);

// positions: any shape -> [*positions.shape, dim]
at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim, std::string_view kind,
                               double base, std::string_view convention, std::string_view layout,
                               std::optional<at::ScalarType> dtype);

}  // namespace ops
}  // namespace posenc
