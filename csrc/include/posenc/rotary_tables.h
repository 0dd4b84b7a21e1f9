// rotary_tables: transformers' apply_rotary_pos_emb with given cos/sin tables, fused.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace posenc {

// q, k: [..., D]; cos, sin: broadcastable to q after unsqueeze(unsqueeze_dim). transpose: the
// transposed map (the backward). -> {q_out} or {q_out, k_out}
std::vector<at::Tensor> rotary_tables(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      int64_t unsqueeze_dim = 1, bool transpose = false);

}  // namespace posenc
