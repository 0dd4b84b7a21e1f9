// Training in C++ with posenc's modules: a token-and-position model learns to tell, at every
// step, which token sits one position to its left (it needs the position code to do so).
// Prints the loss and fails (exit 1) unless it falls.
#include <posenc/nn.h>
#include <torch/torch.h>

#include <cstdio>

struct ShiftModelImpl : torch::nn::Module {
  ShiftModelImpl(int64_t vocab, int64_t dim)
      : embed(posenc::nn::PositionalEmbeddingOptions(vocab, dim).dropout(0.1)),
        rope(posenc::nn::RotaryEmbeddingOptions(dim)),
        query(dim, dim),
        key(dim, dim),
        value(dim, dim),
        head(dim, vocab) {
    register_module("embed", embed);
    register_module("rope", rope);
    register_module("query", query);
    register_module("key", key);
    register_module("value", value);
    register_module("head", head);
  }

  // ids: (B, T) -> logits (B, T, vocab): one attention head with rotary queries and keys.
  torch::Tensor forward(const torch::Tensor& ids) {
    auto h = embed(ids);                                      // (B, T, D)
    auto q = query(h).unsqueeze(2), k = key(h).unsqueeze(2);  // (B, T, 1, D)
    auto rotated = rope(q, k);
    auto scores = torch::matmul(rotated[0].squeeze(2), rotated[1].squeeze(2).transpose(1, 2)) /
                  std::sqrt(static_cast<double>(h.size(-1)));
    return head(torch::matmul(torch::softmax(scores, -1), value(h)) + h);
  }

  posenc::nn::PositionalEmbedding embed;
  posenc::nn::RotaryEmbedding rope;
  torch::nn::Linear query, key, value, head;
};
TORCH_MODULE(ShiftModel);

int main() {
  torch::manual_seed(0);
  const int64_t vocab = 16, dim = 32, batch = 32, length = 12, steps = 150;
  ShiftModel model(vocab, dim);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0.0, last = 0.0;
  for (int64_t step = 0; step < steps; ++step) {
    auto ids = torch::randint(0, vocab, {batch, length});
    auto target = torch::roll(ids, 1, 1);  // the token one step to the left (wrapping)
    auto loss = torch::nn::functional::cross_entropy(model(ids).flatten(0, 1), target.flatten());
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    const double value = loss.item<double>();
    if (step < 10) first += value / 10;
    if (step >= steps - 10) last += value / 10;
    if (step % 25 == 0 || step == steps - 1) std::printf("step %3ld  loss %.4f\n", step, value);
  }
  std::printf("mean loss of the first 10 steps %.4f, of the last 10 steps %.4f\n", first, last);
  if (!(last < 0.7 * first)) {
    std::printf("FAILED: the loss did not fall\n");
    return 1;
  }
  std::printf("ok: the loss fell\n");
  return 0;
}
