// The CPU kernels of embedding (gather, padding, fairseq positions, weight gradient), without
// torch, against references written here.
#include "kernel_test_util.h"

using namespace kernel_test;

// ---- embedding gather ---------------------------------------------------------------------------

TEST(EmbeddingKernel, GatherPaddingFairseqAndWeightGradient) {
  const int64_t B = 2, T = 6, V = 7, D = 5, pad = 1;
  std::vector<int64_t> ids = {1, 1, 4, 5, 6, 2, 3, 1, 0, 2, 1, 6};
  std::vector<float> weight(V * D), out(B * T * D, std::nanf(""));
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  for (auto& v : weight) v = normal(rng);
  const auto codes = pk::make_channel_codes(pk::PositionCodeOptions{}, D);
  // x is the gradient of the backward below; the forward gathers its rows from the weight.
  std::vector<float> grad(B * T * D);
  pk::AddPositionalParams params = contiguous_params(grad, out, B, T, D, codes);
  params.gather.weight = weight.data();
  params.gather.vocab = V;
  params.gather.row_stride = D;
  params.gather.ids.data = ids.data();
  params.gather.ids.batch_strides[0] = T;
  params.gather.ids.seq_stride = 1;
  params.gather.padding_idx = pad;
  params.gather.fairseq_positions = true;
  params.scale = 2.0;
  pk::add_positional_cpu(params, serial_chunks_of_one);
  for (int64_t b = 0; b < B; ++b) {
    int64_t count = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t id = ids[b * T + t];
      const bool is_pad = id == pad;
      if (!is_pad) ++count;
      for (int64_t d = 0; d < D; ++d) {
        double want = 2.0 * weight[id * D + d];
        if (!is_pad) {
          want += reference_code(pk::PositionKind::kSinusoidal, pk::Convention::kVaswani,
                                 pk::Layout::kInterleaved, 10000.0, D, pad + count, d);
        }
        ASSERT_NEAR(out[(b * T + t) * D + d], want, 2e-6) << b << "," << t << "," << d;
      }
    }
  }
  // Weight gradient (add mode): scale * grad summed per id, nothing for the padding row.
  // Poisoned: the kernel writes every element, zeros included.
  std::vector<float> grad_weight(V * D, std::nanf("")), want(V * D, 0.0f);
  for (auto& v : grad) v = normal(rng);
  pk::embedding_weight_backward_cpu(params, grad_weight.data(), V, four_threads);
  for (int64_t i = 0; i < B * T; ++i) {
    if (ids[i] == pad) continue;
    for (int64_t d = 0; d < D; ++d) want[ids[i] * D + d] += 2.0f * grad[i * D + d];
  }
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(grad_weight[i], want[i], 1e-5) << i;
}

// A bfloat16 weight gradient is the float gradient of the same (exactly widened) values, rounded
// once: the same sums in the same order, and rows that no id reaches are zero. Many ids repeat,
// so each reached row sums several terms; the padding id gets nothing.
TEST(EmbeddingKernel, HalfWeightGradientIsTheFloatSumRoundedOnce) {
  const int64_t B = 3, T = 40, V = 50, D = 70, pad = 4;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<int64_t> ids(B * T);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % 20);  // rows 20..49 are never reached
  std::vector<pk::BFloat16> grad16(B * T * D), out16(B * T * D);
  std::vector<float> grad32(B * T * D), out32(B * T * D);
  for (size_t i = 0; i < grad16.size(); ++i) {
    grad16[i] = pk::float_to_bfloat16(normal(rng));
    grad32[i] = pk::bfloat16_to_float(grad16[i]);
  }
  for (const bool multiply : {false, true}) {
    SCOPED_TRACE(multiply ? "multiply" : "add");
    const auto codes = pk::make_channel_codes(pk::PositionCodeOptions{}, D);
    pk::AddPositionalParams params = contiguous_params(grad32, out32, B, T, D, codes);
    params.source.kind = pk::PositionKind::kSinusoidal;
    params.gather.vocab = V;
    params.gather.ids.data = ids.data();
    params.gather.ids.batch_strides[0] = T;
    params.gather.ids.seq_stride = 1;
    params.gather.padding_idx = pad;
    params.combine = multiply ? pk::Combine::kMul : pk::Combine::kAdd;
    params.scale = 1.5;
    params.dropout = pk::make_dropout(0.2, true, 8);
    std::vector<float> want(V * D, std::nanf(""));
    pk::embedding_weight_backward_cpu(params, want.data(), V, four_threads);
    params.dtype = pk::DType::kBFloat16;
    params.x.data = grad16.data();
    params.out.data = out16.data();
    std::vector<pk::BFloat16> got(V * D);
    for (auto& v : got) v.bits = 0x7fc1;  // poison: a NaN the kernel never writes
    pk::embedding_weight_backward_cpu(params, got.data(), V, four_threads);
    for (int64_t i = 0; i < V * D; ++i) {
      const int64_t row = i / D;
      if (row >= 20 || row == pad) ASSERT_EQ(want[i], 0.0f) << i;  // no term: zero in float too
      ASSERT_EQ(got[i].bits, pk::float_to_bfloat16(want[i]).bits) << i;
    }
  }
}
