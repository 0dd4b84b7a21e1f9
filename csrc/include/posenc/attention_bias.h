// attention_bias: attention-level position codes (ALiBi, T5 relative buckets) as an additive
// bias for scaled_dot_product_attention, with gradients for the slopes or the table.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <vector>

namespace posenc {

struct AttentionBiasOptions {
  TORCH_ARG(std::string, kind) = "alibi";  // "alibi", "t5" or "swin"
  TORCH_ARG(int64_t, offset) = 0;          // position of query 0 (a decoding step's cache)
  TORCH_ARG(bool, causal) = false;         // ALiBi: -inf for keys after the query
  TORCH_ARG(bool, bidirectional) = true;   // T5: buckets for both directions
  TORCH_ARG(int64_t, num_buckets) = 32;    // T5
  TORCH_ARG(int64_t, max_distance) = 128;  // T5
  TORCH_ARG(std::optional<std::vector<int64_t>>, window) = std::nullopt;  // swin: (Wh, Ww)
  TORCH_ARG(std::optional<at::ScalarType>, dtype) = std::nullopt;         // default: weight's
};

// weight: [H] ALiBi slopes, [num_buckets, H] T5 table or [(2 Wh - 1) (2 Ww - 1), H] Swin table
// -> [1, H, query_length, key_length]. bias[0, h, i, j] for r = j - (offset + i):
// -slope[h] * |r| (ALiBi; -inf for r > 0 when causal), weight[bucket(r), h] (T5), or the Swin
// table's row of the 2D offset of tokens i and j in the window. Differentiable in weight.
at::Tensor attention_bias(const at::Tensor& weight, int64_t query_length, int64_t key_length,
                          const AttentionBiasOptions& options = {});

// The gradient of weight from the bias' gradient grad ([1, H, Tq, Tk]).
at::Tensor attention_bias_backward(const at::Tensor& grad, const at::Tensor& weight,
                                   int64_t query_length, int64_t key_length,
                                   const AttentionBiasOptions& options = {});

// ALiBi's slopes for num_heads heads, as fairseq and BLOOM compute them: [num_heads] float32 on
// the CPU.
at::Tensor alibi_slopes(int64_t num_heads);

}  // namespace posenc
