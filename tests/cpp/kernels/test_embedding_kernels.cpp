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
  std::vector<float> grad_weight(V * D, 0.0f), want(V * D, 0.0f);
  for (auto& v : grad) v = normal(rng);
  pk::embedding_weight_backward_cpu(params, grad_weight.data(), four_threads);
  for (int64_t i = 0; i < B * T; ++i) {
    if (ids[i] == pad) continue;
    for (int64_t d = 0; d < D; ++d) want[ids[i] * D + d] += 2.0f * grad[i * D + d];
  }
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(grad_weight[i], want[i], 1e-5) << i;
}
