// The operators through LibTorch and the dispatcher: results, autograd and errors from C++.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "posenc/ops.h"

namespace {

// PE for vaswani/interleaved in float64, from the definition.
torch::Tensor reference_sinusoidal(int64_t seq, int64_t dim, int64_t offset) {
  auto out = torch::zeros({seq, dim}, torch::kFloat64);
  auto accessor = out.accessor<double, 2>();
  for (int64_t t = 0; t < seq; ++t) {
    for (int64_t i = 0; i < dim / 2; ++i) {
      const double w = std::pow(10000.0, -2.0 * i / dim);
      accessor[t][2 * i] = std::sin((t + offset) * w);
      accessor[t][2 * i + 1] = std::cos((t + offset) * w);
    }
  }
  return out;
}

}  // namespace

TEST(Ops, AddPositionalForwardMatchesReference) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 7, 10}, torch::kFloat64);
  auto y = posenc::ops::add_positional(x, std::nullopt, std::nullopt, std::nullopt, "sinusoidal",
                                       "add", 2.0, 3, 10000.0, "vaswani", "interleaved", 0.0,
                                       true);
  auto want = 2.0 * x + reference_sinusoidal(7, 10, 3);
  EXPECT_TRUE(torch::allclose(y, want, 0, 1e-12));
}

TEST(Ops, BackwardFromCpp) {
  torch::manual_seed(0);
  auto x = torch::randn({3, 4, 6}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto table = torch::randn({8, 6}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto positions = torch::tensor({0, 2, 7, 2}, torch::kLong);
  auto seed = torch::tensor(1234, torch::kLong);
  auto y = posenc::ops::add_positional(x, positions, table, seed, "learned", "mul", 0.5, 0,
                                       10000.0, "vaswani", "interleaved", 0.25, true);
  auto upstream = torch::randn_like(y);
  y.backward(upstream);
  // Reference: the dropout mask is where y is zero (x and table are nonzero almost surely).
  auto keep = (y != 0).to(torch::kFloat64);
  auto gathered = table.detach().index_select(0, positions);
  auto want_x = upstream * keep / 0.75 * 0.5 * gathered;
  EXPECT_TRUE(torch::allclose(x.grad(), want_x, 1e-10, 1e-12));
  auto contribution = upstream * keep / 0.75 * 0.5 * x.detach();  // [3, 4, 6]
  auto want_table = torch::zeros({8, 6}, torch::kFloat64)
                        .index_add_(0, positions, contribution.sum(0));
  EXPECT_TRUE(torch::allclose(table.grad(), want_table, 1e-10, 1e-12));
  const auto kept = keep.mean().item<double>();
  EXPECT_GT(kept, 0.5);
  EXPECT_LT(kept, 0.95);
}

TEST(Ops, PositionalEncodingShape) {
  auto positions = torch::arange(6, torch::kLong).view({2, 3});
  auto pe = posenc::ops::positional_encoding(positions, 10, "sinusoidal", 10000.0, "vaswani",
                                             "interleaved", torch::kFloat64);
  EXPECT_EQ(pe.sizes(), torch::IntArrayRef({2, 3, 10}));
  EXPECT_TRUE(torch::allclose(pe.view({6, 10}), reference_sinusoidal(6, 10, 0), 0, 1e-12));
}

TEST(Ops, ErrorsNameTheArgument) {
  auto x = torch::randn({2, 5, 8});
  try {
    posenc::ops::add_positional(x, torch::tensor({0, 1, 2, 3, 99}), torch::randn({10, 8}),
                                std::nullopt, "learned", "add", 1.0, 0, 10000.0, "vaswani",
                                "interleaved", 0.0, true);
    FAIL() << "expected an IndexError";
  } catch (const c10::IndexError& e) {
    EXPECT_NE(std::string(e.what()).find("positions must be <"), std::string::npos) << e.what();
  }
  EXPECT_THROW(posenc::ops::add_positional(x, std::nullopt, std::nullopt, std::nullopt, "nope",
                                           "add", 1.0, 0, 10000.0, "vaswani", "interleaved", 0.0,
                                           true),
               c10::ValueError);
}
