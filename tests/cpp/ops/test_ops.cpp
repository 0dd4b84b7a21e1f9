// The operators through LibTorch and the dispatcher: results, autograd and errors from C++.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

#include "posenc/posenc.h"

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
  auto y = posenc::add_positional(x, posenc::AddPositionalOptions().scale(2.0).offset(3));
  auto want = 2.0 * x + reference_sinusoidal(7, 10, 3);
  EXPECT_TRUE(torch::allclose(y, want, 0, 1e-12));
}

TEST(Ops, BackwardFromCpp) {
  torch::manual_seed(0);
  auto x = torch::randn({3, 4, 6}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto table = torch::randn({8, 6}, torch::dtype(torch::kFloat64).requires_grad(true));
  auto positions = torch::tensor({0, 2, 7, 2}, torch::kLong);
  auto seed = torch::tensor(1234, torch::kLong);
  auto y = posenc::add_positional(x, posenc::AddPositionalOptions()
                                         .positions(positions)
                                         .table(table)
                                         .seed(seed)
                                         .kind("learned")
                                         .combine("mul")
                                         .scale(0.5)
                                         .dropout(0.25));
  auto upstream = torch::randn_like(y);
  y.backward(upstream);
  // Reference: the dropout mask is where y is zero (x and table are nonzero almost surely).
  auto keep = (y != 0).to(torch::kFloat64);
  auto gathered = table.detach().index_select(0, positions);
  auto want_x = upstream * keep / 0.75 * 0.5 * gathered;
  EXPECT_TRUE(torch::allclose(x.grad(), want_x, 1e-10, 1e-12));
  auto contribution = upstream * keep / 0.75 * 0.5 * x.detach();  // [3, 4, 6]
  auto want_table =
      torch::zeros({8, 6}, torch::kFloat64).index_add_(0, positions, contribution.sum(0));
  EXPECT_TRUE(torch::allclose(table.grad(), want_table, 1e-10, 1e-12));
  const auto kept = keep.mean().item<double>();
  EXPECT_GT(kept, 0.5);
  EXPECT_LT(kept, 0.95);
}

TEST(Ops, PositionalEncodingShape) {
  auto positions = torch::arange(6, torch::kLong).view({2, 3});
  auto pe = posenc::positional_encoding(positions, 10,
                                        posenc::PositionCodeOptions().dtype(torch::kFloat64));
  EXPECT_EQ(pe.sizes(), torch::IntArrayRef({2, 3, 10}));
  EXPECT_TRUE(torch::allclose(pe.view({6, 10}), reference_sinusoidal(6, 10, 0), 0, 1e-12));
}

TEST(Ops, ErrorsNameTheArgument) {
  auto x = torch::randn({2, 5, 8});
  try {
    posenc::add_positional(x, posenc::AddPositionalOptions()
                                  .positions(torch::tensor({0, 1, 2, 3, 99}))
                                  .table(torch::randn({10, 8}))
                                  .kind("learned"));
    FAIL() << "expected an IndexError";
  } catch (const c10::IndexError& e) {
    EXPECT_NE(std::string(e.what()).find("positions must be <"), std::string::npos) << e.what();
  }
  EXPECT_THROW(posenc::add_positional(x, posenc::AddPositionalOptions().kind("nope")),
               c10::ValueError);
}

// ---- the public C++ API and modules
// --------------------------------------------------------------

#include "posenc/nn.h"
#include "posenc/posenc.h"

TEST(Api, DefaultsMatchTheOperator) {
  torch::manual_seed(1);
  auto x = torch::randn({2, 6, 8});
  auto via_api = posenc::add_positional(x);
  // torch.ops.posenc.add_positional(x) with every schema default, as Python calls it.
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("posenc::add_positional", "");
  torch::jit::Stack stack{x};
  for (size_t i = 1; i < op.schema().arguments().size(); ++i) {
    stack.push_back(*op.schema().arguments()[i].default_value());
  }
  op.callBoxed(stack);
  auto via_op = stack[0].toTensor();
  EXPECT_TRUE(torch::equal(via_api, via_op));
  auto pe = posenc::positional_encoding(torch::arange(6), 8);
  EXPECT_TRUE(torch::allclose(via_api - x, pe.unsqueeze(0).expand_as(x), 1e-6, 1e-6));
}

TEST(Api, EveryOptionReachesTheKernel) {
  torch::manual_seed(2);
  auto x = torch::randn({2, 5, 8});
  auto opts = posenc::AddPositionalOptions().kind("cosine").combine("mul").scale(2.0).offset(3);
  auto y = posenc::add_positional(x, opts);
  auto pe = posenc::positional_encoding(torch::arange(3, 8), 8,
                                        posenc::PositionCodeOptions().kind("cosine"));
  EXPECT_TRUE(torch::allclose(y, 2.0 * x * pe, 1e-5, 1e-6));
  // Dropout from a generator: reproducible, and training=false is the identity mask.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  auto a = posenc::add_positional(x, posenc::AddPositionalOptions().dropout(0.5).generator(gen));
  gen.set_current_seed(7);
  auto b = posenc::add_positional(x, posenc::AddPositionalOptions().dropout(0.5).generator(gen));
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT((a == 0).sum().item<int64_t>(), 0);
  auto eval =
      posenc::add_positional(x, posenc::AddPositionalOptions().dropout(0.5).training(false));
  EXPECT_TRUE(torch::equal(eval, posenc::add_positional(x)));
  // Embedding with fairseq positions; rotary with offsets.
  auto ids = torch::tensor({{1, 1, 3, 4}, {5, 6, 1, 2}});
  auto weight = torch::randn({8, 6});
  auto e = posenc::embedding(ids, weight,
                             posenc::EmbeddingOptions().padding_idx(1).fairseq_positions(true));
  EXPECT_TRUE(torch::allclose(e[0][0], std::sqrt(6.0) * weight[1]));
  auto q = torch::randn({2, 4, 3, 8});
  auto rotated =
      posenc::rotary(q, std::nullopt, posenc::RotaryOptions().offsets(torch::tensor({0, 10})));
  EXPECT_EQ(rotated.size(), 1u);
  EXPECT_TRUE(torch::allclose(
      rotated[0][1][0],
      posenc::rotary(q[1].unsqueeze(0), std::nullopt, posenc::RotaryOptions().offset(10))[0][0][0],
      1e-6, 1e-6));
}

// The API keeps each call site's argument slots and its string values per thread: calls that
// alternate between argument lists (a grid or none) and string values (kind, combine) must each
// get their own, every round.
TEST(Api, AlternatingOptionsKeepTheirArguments) {
  torch::manual_seed(4);
  auto x = torch::randn({2, 5, 8}, torch::kFloat64);
  auto grid_x = torch::randn({1, 5, 8}, torch::kFloat64);
  const auto grid = posenc::GridOptions({2, 2}).extra_tokens(1);
  const auto cosine = posenc::PositionCodeOptions().kind("cosine");
  for (int round = 0; round < 3; ++round) {
    auto plain = posenc::add_positional(x, posenc::AddPositionalOptions().offset(3));
    EXPECT_TRUE(torch::allclose(plain, x + reference_sinusoidal(5, 8, 3), 0, 1e-12)) << round;
    auto mul = posenc::add_positional(
        x, posenc::AddPositionalOptions().kind("cosine").combine("mul").scale(2.0));
    auto cosine_pe = posenc::positional_encoding(torch::arange(5), 8, cosine).to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(mul, 2.0 * x * cosine_pe, 1e-6, 1e-6)) << round;
    auto on_grid = posenc::add_positional(grid_x, posenc::AddPositionalOptions().grid(grid));
    auto grid_pe =
        posenc::positional_encoding(torch::arange(5), 8, posenc::PositionCodeOptions().grid(grid))
            .to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(on_grid, grid_x + grid_pe, 1e-6, 1e-6)) << round;
    EXPECT_FALSE(torch::allclose(on_grid, grid_x + reference_sinusoidal(5, 8, 0), 1e-3, 1e-3));
  }
}

TEST(Api, ErrorsNameTheArgument) {
  auto x = torch::randn({2, 5, 8});
  try {
    posenc::add_positional(x, posenc::AddPositionalOptions().dropout(1.5));
    FAIL() << "expected a ValueError";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("dropout must be in [0, 1]"), std::string::npos);
  }
  EXPECT_THROW(posenc::embedding(torch::tensor({{0, 9}}), torch::randn({5, 4})), c10::IndexError);
  EXPECT_THROW(posenc::rotary(torch::randn({1, 2, 1, 5})), c10::ValueError);
}

TEST(Modules, InitialisationParametersAndBackward) {
  torch::manual_seed(3);
  posenc::nn::PositionalEmbedding emb(
      posenc::nn::PositionalEmbeddingOptions(20, 8).padding_idx(0).kind("learned").max_positions(
          16));
  auto params = emb->named_parameters();
  EXPECT_TRUE(params.contains("weight"));
  EXPECT_TRUE(params.contains("table"));
  EXPECT_EQ(emb->weight[0].abs().sum().item<float>(), 0.0f);
  auto ids = torch::randint(0, 20, {3, 7});
  auto y = emb(ids);
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({3, 7, 8}));
  y.sum().backward();
  EXPECT_TRUE(emb->weight.grad().defined());
  EXPECT_EQ(emb->weight.grad()[0].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(emb->table.grad().abs().sum().item<float>(), 0.0f);

  posenc::nn::PositionalEncoding enc(posenc::nn::PositionalEncodingOptions(8).dropout(0.0));
  auto x = torch::randn({7, 2, 8});  // (T, B, D)
  auto pe = posenc::positional_encoding(torch::arange(7), 8).unsqueeze(1);
  EXPECT_TRUE(torch::allclose(enc(x), x + pe, 1e-6, 1e-6));
  EXPECT_TRUE(enc->named_parameters().is_empty());

  posenc::nn::RotaryEmbedding rope(posenc::nn::RotaryEmbeddingOptions(8).base(500.0));
  auto q = torch::randn({2, 5, 3, 8}, torch::requires_grad());
  auto out = rope(q);
  auto direct = posenc::rotary(q.detach(), std::nullopt, posenc::RotaryOptions().base(500.0));
  EXPECT_TRUE(torch::equal(out[0], direct[0]));  // the same bits as the function
  out[0].pow(2).sum().backward();
  // A rotation keeps norms: d/dq sum(rot(q)^2) = 2 q.
  EXPECT_TRUE(torch::allclose(q.grad(), 2 * q.detach(), 1e-5, 1e-5));
}

// ---- the C++ API rejects bad input with the operator's own errors, backward functions too ----

TEST(Api, BadInputThrowsNamingTheArgument) {
  const auto x = torch::randn({2, 5, 8});
  const auto grad = torch::randn({2, 5, 8});
  const auto ids = torch::tensor({{0, 3, 4, 9, 2}, {1, 1, 5, 6, 7}});
  const auto weight = torch::randn({10, 8});
  const auto table = torch::randn({12, 8});
  const auto learned = posenc::AddPositionalOptions().kind("learned").table(table);
  const auto expect_error = [](const std::function<void()>& call, const std::string& fragment) {
    try {
      call();
      ADD_FAILURE() << "expected an error containing '" << fragment << "'";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  // Forward.
  expect_error(
      [&] { posenc::add_positional(x, posenc::AddPositionalOptions().dropout(std::nan(""))); },
      "dropout must be in [0, 1]");
  expect_error([&] { posenc::add_positional(x, posenc::AddPositionalOptions().base(-1.0)); },
               "base must be a finite number > 0");
  expect_error([&] { posenc::add_positional(x, posenc::AddPositionalOptions(learned).offset(8)); },
               "outside the table");
  expect_error(
      [&] {
        posenc::add_positional(
            x, posenc::AddPositionalOptions().positions(torch::arange(5)).offset(1));
      },
      "give positions or offset, not both");
  expect_error(
      [&] {
        posenc::add_positional(
            x, posenc::AddPositionalOptions().offset(std::numeric_limits<int64_t>::max()));
      },
      "overflows int64");
  expect_error([&] { posenc::embedding(ids, weight, posenc::EmbeddingOptions().padding_idx(10)); },
               "padding_idx must be within");
  expect_error(
      [&] {
        posenc::embedding(
            ids, weight,
            posenc::EmbeddingOptions().padding_idx(std::numeric_limits<int64_t>::min()));
      },
      "padding_idx must be within");
  // Backward functions: the same checks as the forward, on grad and on the values.
  expect_error(
      [&] {
        posenc::add_positional_backward(
            grad, posenc::AddPositionalOptions(learned).combine("mul").positions(
                      torch::tensor({0, 1, 99, 2, 3})));
      },
      "positions must be <");
  expect_error(
      [&] { posenc::add_positional_backward(grad, posenc::AddPositionalOptions().dropout(0.5)); },
      "needs seed");
  expect_error(
      [&] {
        posenc::add_positional_table_backward(grad, std::nullopt, 12,
                                              posenc::AddPositionalOptions().combine("mul"));
      },
      "needs x");
  expect_error(
      [&] { posenc::add_positional_table_backward(grad, x, -1, posenc::AddPositionalOptions()); },
      "table_rows must be >= 0");
  expect_error(
      [&] {
        posenc::embedding_backward(grad, torch::tensor({{0, 3, 4, 10, 2}, {1, 1, 5, 6, 7}}), weight,
                                   posenc::EmbeddingOptions());
      },
      "ids must be in [0, V)");
  expect_error(
      [&] {
        posenc::embedding_backward(torch::randn({2, 4, 8}), ids, weight,
                                   posenc::EmbeddingOptions());
      },
      "grad must have shape ids.shape");
  expect_error(
      [&] {
        posenc::embedding_table_backward(
            grad, ids, weight, 12,
            posenc::EmbeddingOptions().positions(torch::tensor({0, 1, -1, 2, 3})));
      },
      "positions must be >= 0");
  // Rotary, including its inverse (the backward), tables and frequencies.
  const auto q = torch::randn({2, 5, 4, 8});
  expect_error(
      [&] { posenc::rotary(q, std::nullopt, posenc::RotaryOptions().inverse(true).rotary_dim(3)); },
      "rotary_dim must be even");
  expect_error(
      [&] {
        posenc::rotary(q, std::nullopt,
                       posenc::RotaryOptions().offsets(torch::tensor({0, -4})).inverse(true));
      },
      "offsets must be >= 0");
  expect_error(
      [&] {
        posenc::rotary(
            torch::randn({6, 2, 8}), std::nullopt,
            posenc::RotaryOptions().layout("thd").cu_seqlens(torch::tensor({0, 4, 3, 6})));
      },
      "cu_seqlens must be non-decreasing");
  expect_error([&] { posenc::rotary(q, std::nullopt, posenc::RotaryOptions().precision("fast")); },
               "precision must be");
  expect_error(
      [&] {
        posenc::rotary_tables(q, std::nullopt, torch::randn({2, 5, 8}), torch::randn({2, 4, 8}));
      },
      "cos and sin must have the same shape");
  // Negative positions are relative ones for a computed code: PE(-p) = (-sin, cos) of PE(p).
  {
    const auto rows = posenc::positional_encoding(torch::tensor({3, 0, -3}), 8);
    const auto even = torch::arange(0, 8, 2), odd = torch::arange(1, 8, 2);
    EXPECT_TRUE(
        torch::allclose(rows[2].index_select(0, even), -rows[0].index_select(0, even), 0.0, 1e-6));
    EXPECT_TRUE(
        torch::allclose(rows[2].index_select(0, odd), rows[0].index_select(0, odd), 0.0, 1e-6));
    EXPECT_GT(rows[0].abs().sum().item<double>(), 1.0);  // not all zero
  }
  expect_error([&] { posenc::rope_frequencies(int64_t{1} << 40); }, "dim must be an even number");
  expect_error(
      [&] { posenc::rope_frequencies(16, posenc::RopeFrequenciesOptions().rope_type("linear")); },
      "needs scaling['factor']");
  expect_error(
      [&] {
        posenc::rope_frequencies(
            16,
            posenc::RopeFrequenciesOptions().rope_type("proportional").partial_rotary_factor(2.0));
      },
      "partial_rotary_factor'] must be in [0, 1]");
  expect_error(
      [&] {
        posenc::rope_frequencies(16, posenc::RopeFrequenciesOptions()
                                         .rope_type("yarn")
                                         .factor(2.0)
                                         .max_position_embeddings(64)
                                         .beta_fast(std::nan("")));
      },
      "beta_fast");
  // The C++ modules check their options at construction, through the operator.
  expect_error(
      [&] {
        posenc::nn::PositionalEncoding(posenc::nn::PositionalEncodingOptions(8).dropout(2.0));
      },
      "dropout must be in [0, 1]");
  expect_error(
      [&] {
        posenc::nn::PositionalEncoding(posenc::nn::PositionalEncodingOptions(8).kind("rope"));
      },
      "kind must be one of");
  expect_error(
      [&] {
        posenc::nn::PositionalEmbedding(
            posenc::nn::PositionalEmbeddingOptions(10, 8).layout("halves"));
      },
      "layout must be");
  expect_error(
      [&] {
        posenc::nn::PositionalEmbedding(
            posenc::nn::PositionalEmbeddingOptions(10, 8).fairseq_positions(true));
      },
      "needs padding_idx");
}

TEST(Api, BackwardFunctionsMatchAutograd) {
  torch::manual_seed(5);
  auto x = torch::randn({2, 4, 6}, torch::requires_grad());
  auto table = torch::randn({9, 6}, torch::requires_grad());
  const auto seed = torch::tensor(99, torch::kLong);
  const auto options = posenc::AddPositionalOptions()
                           .kind("learned")
                           .combine("mul")
                           .table(table)
                           .offset(2)
                           .dropout(0.3)
                           .seed(seed);
  auto y = posenc::add_positional(x, options);
  auto upstream = torch::randn_like(y);
  y.backward(upstream);
  const auto detached = posenc::AddPositionalOptions(options).table(table.detach());
  EXPECT_TRUE(torch::equal(x.grad(), posenc::add_positional_backward(upstream, detached)));
  EXPECT_TRUE(torch::equal(
      table.grad(), posenc::add_positional_table_backward(upstream, x.detach(), 9, detached)));
}

TEST(Modules, RotaryKeepsExactFrequenciesThroughDtypeMoves) {
  posenc::nn::RotaryEmbedding rope(posenc::nn::RotaryEmbeddingOptions(16).base(500000.0));
  EXPECT_EQ(rope->inv_freq.scalar_type(), torch::kFloat64);
  auto q = torch::randn({1, 4, 2, 16}).to(torch::kBFloat16);
  auto positions = torch::tensor({0, 1000, 1000000, (1 << 24) - 1});
  auto want =
      posenc::rotary(q, std::nullopt, posenc::RotaryOptions().base(500000.0).positions(positions));
  rope->to(torch::kBFloat16);
  EXPECT_EQ(rope->inv_freq.scalar_type(), torch::kFloat64);
  auto got = rope(q, std::nullopt, posenc::RotaryOptions().positions(positions));
  EXPECT_TRUE(torch::equal(got[0], want[0]));
  // An archive of an older version holds float32 frequencies: loading restores the exact ones.
  posenc::nn::RotaryEmbedding old(posenc::nn::RotaryEmbeddingOptions(16).base(500000.0));
  old->inv_freq.set_data(old->inv_freq.to(torch::kFloat32));
  std::stringstream archive;
  torch::save(old, archive);
  posenc::nn::RotaryEmbedding loaded(posenc::nn::RotaryEmbeddingOptions(16).base(500000.0));
  torch::load(loaded, archive);
  EXPECT_EQ(loaded->inv_freq.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(loaded(q, std::nullopt, posenc::RotaryOptions().positions(positions))[0],
                           want[0]));
  // transformers' float32 rounding is an explicit option of the module.
  posenc::nn::RotaryEmbedding hf(posenc::nn::RotaryEmbeddingOptions(16).scaling(
      posenc::RopeFrequenciesOptions().precision("transformers")));
  EXPECT_EQ(hf->inv_freq.scalar_type(), torch::kFloat32);
}

// rope_frequencies through the C++ API: proportional keeps dim / 2 entries with zeros past the
// rotated share; the other types rotate int(dim * partial_rotary_factor) channels.
TEST(PosencApi, RopeFrequenciesPartialRotary) {
  const auto [proportional, attention] = posenc::rope_frequencies(
      16, posenc::RopeFrequenciesOptions().rope_type("proportional").partial_rotary_factor(0.5));
  ASSERT_EQ(proportional.numel(), 8);
  EXPECT_EQ(attention, 1.0);
  EXPECT_TRUE(proportional.slice(0, 4).eq(0).all().item<bool>());
  EXPECT_TRUE(proportional.slice(0, 0, 4).gt(0).all().item<bool>());
  const auto [partial, unused] =
      posenc::rope_frequencies(16, posenc::RopeFrequenciesOptions().partial_rotary_factor(0.25));
  ASSERT_EQ(partial.numel(), 2);
  EXPECT_NEAR(partial[1].item<double>(), std::pow(10000.0, -0.5), 1e-15);
}

// M-RoPE through the C++ API: equal to plain rotary when the three position rows agree, an
// error naming mrope_section when the sections do not sum to rotary_dim / 2.
TEST(PosencApi, MropeSections) {
  const torch::Tensor q = torch::randn({2, 5, 3, 16}, torch::kFloat64);
  const torch::Tensor row = torch::randint(0, 100, {2, 5});
  const torch::Tensor rows = row.unsqueeze(0).expand({3, 2, 5});
  const auto mrope = posenc::rotary(
      q, std::nullopt,
      posenc::RotaryOptions().positions(rows).mrope_section(std::vector<int64_t>{2, 3, 3}));
  const auto plain = posenc::rotary(q, std::nullopt, posenc::RotaryOptions().positions(row));
  EXPECT_TRUE(torch::equal(mrope[0], plain[0]));
  const torch::Tensor distinct = torch::randint(0, 100, {3, 2, 5});
  const auto interleaved = posenc::rotary(q, std::nullopt,
                                          posenc::RotaryOptions()
                                              .positions(distinct)
                                              .mrope_section(std::vector<int64_t>{2, 3, 3})
                                              .mrope_interleaved(true));
  EXPECT_FALSE(torch::equal(interleaved[0], plain[0]));
  try {
    posenc::rotary(
        q, std::nullopt,
        posenc::RotaryOptions().positions(rows).mrope_section(std::vector<int64_t>{2, 2, 2}));
    ADD_FAILURE() << "expected an error for mrope_section {2, 2, 2}";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mrope_section must sum to rotary_dim / 2 = 8"),
              std::string::npos)
        << e.what();
  }
}

// MAE's 2D table (concat [sin | cos] of w, then of h, a zero cls row) from the C++ API, and
// the C++ module's SD3 centre crop and backward.
TEST(PosencApi, GridCodesAndPatchModule) {
  const int64_t dim = 16, height = 3, width = 4;
  const torch::Tensor table =
      posenc::positional_encoding(torch::arange(1 + height * width), dim,
                                  posenc::PositionCodeOptions()
                                      .layout("concat")
                                      .grid(posenc::GridOptions({height, width}).extra_tokens(1))
                                      .dtype(torch::kFloat64));
  auto want = torch::zeros({1 + height * width, dim}, torch::kFloat64);
  auto w = want.accessor<double, 2>();
  for (int64_t t = 1; t <= height * width; ++t) {
    const double coordinate[2] = {static_cast<double>((t - 1) % width),
                                  static_cast<double>((t - 1) / width)};
    for (int a = 0; a < 2; ++a) {
      for (int64_t k = 0; k < dim / 4; ++k) {
        const double angle = coordinate[a] * std::pow(10000.0, -static_cast<double>(k) / (dim / 4));
        w[t][a * dim / 2 + k] = std::sin(angle);
        w[t][a * dim / 2 + dim / 4 + k] = std::cos(angle);
      }
    }
  }
  EXPECT_TRUE(torch::allclose(table, want, 0.0, 1e-12));

  // SD3 with pos_embed_max_size 6 and base_size 3: the (2, 5) crop of the 6 x 6 table.
  posenc::nn::PatchPositionalEncoding module(
      posenc::nn::PatchPositionalEncodingOptions(dim, {2, 5}).base_size(3).pos_embed_max_size(6));
  const torch::Tensor full = posenc::positional_encoding(
      torch::arange(36), dim,
      posenc::PositionCodeOptions()
          .layout("concat")
          .grid(posenc::GridOptions({6, 6}).scale(std::vector<double>{0.5, 0.5}))
          .dtype(torch::kFloat64));
  const torch::Tensor crop =
      full.view({6, 6, dim}).slice(0, 2, 4).slice(1, 0, 5).reshape({10, dim});
  const torch::Tensor x = torch::randn({2, 10, dim}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor y = module->forward(x);
  EXPECT_TRUE(torch::allclose(y - x, crop.expand({2, 10, dim}), 0.0, 1e-12));
  y.sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones_like(x)));
  try {
    module->forward(torch::randn({2, 11, dim}));
    ADD_FAILURE() << "expected an error for 11 tokens on a (2, 5) grid";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("has T = 11 tokens, but grid"), std::string::npos)
        << e.what();
  }
}

// The C++ AxialRotaryEmbedding: DINOv3's centred patch coordinates (prefix tokens first and
// unrotated) against the definition in float64, half-split pairs.
TEST(Modules, AxialRotaryEmbeddingDinov3) {
  const int64_t head_dim = 16, height = 3, width = 5, extra = 2, quarter = head_dim / 4;
  posenc::nn::AxialRotaryEmbedding module(
      posenc::nn::AxialRotaryEmbeddingOptions(head_dim, {height, width})
          .style("dinov3")
          .base(100.0)
          .extra_tokens(extra));
  const int64_t tokens = extra + height * width;
  const torch::Tensor q = torch::randn({2, tokens, 3, head_dim}, torch::kFloat64);
  const torch::Tensor got = module->forward(q)[0];
  auto angles = torch::zeros({tokens, head_dim / 2}, torch::kFloat64);
  auto a = angles.accessor<double, 2>();
  for (int64_t t = extra; t < tokens; ++t) {
    const int64_t i = (t - extra) / width, j = (t - extra) % width;
    const double centre[2] = {(2.0 * i + 1) / height - 1, (2.0 * j + 1) / width - 1};
    for (int axis = 0; axis < 2; ++axis) {
      for (int64_t k = 0; k < quarter; ++k) {
        a[t][axis * quarter + k] =
            2 * M_PI * centre[axis] * std::pow(100.0, -4.0 * static_cast<double>(k) / head_dim);
      }
    }
  }
  const torch::Tensor cos = angles.cos().view({1, tokens, 1, head_dim / 2});
  const torch::Tensor sin = angles.sin().view({1, tokens, 1, head_dim / 2});
  const torch::Tensor x1 = q.slice(-1, 0, head_dim / 2), x2 = q.slice(-1, head_dim / 2);
  const torch::Tensor want = torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
  EXPECT_TRUE(torch::allclose(got, want, 0.0, 1e-12));
  EXPECT_TRUE(torch::equal(got.slice(1, 0, extra), q.slice(1, 0, extra)));
  try {
    posenc::nn::AxialRotaryEmbedding(
        posenc::nn::AxialRotaryEmbeddingOptions(head_dim, {3, 5}).style("vit"));
    ADD_FAILURE() << "expected an error for style 'vit'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("style must be one of"), std::string::npos) << e.what();
  }
}

// The C++ modules check their options at construction and their inputs in forward, and each
// error names the module's option, as the Python modules do.
TEST(Modules, BadOptionsAndInputsNameTheArgument) {
  namespace pnn = posenc::nn;
  const std::vector<std::pair<std::function<void()>, std::string>> cases = {
      {[] { pnn::PositionalEncoding(pnn::PositionalEncodingOptions(0)); },
       "PositionalEncoding: d_model must be >= 1"},
      {[] { pnn::PositionalEncoding(pnn::PositionalEncodingOptions(8).max_len(0)); },
       "max_len must be >= 1"},
      {[] { pnn::PositionalEncoding(pnn::PositionalEncodingOptions(8))(torch::randn({3, 2, 12})); },
       "x must have d_model = 8 channels"},
      {[] { pnn::PositionalEmbedding(pnn::PositionalEmbeddingOptions(0, 4)); },
       "num_embeddings must be >= 1"},
      {[] { pnn::PositionalEmbedding(pnn::PositionalEmbeddingOptions(5, -1)); },
       "embedding_dim must be >= 1"},
      {[] { pnn::RotaryEmbedding(pnn::RotaryEmbeddingOptions(8).rotary_dim(10)); },
       "rotary_dim must be even and within [0, dim = 8]"},
      {[] { pnn::RotaryEmbedding(pnn::RotaryEmbeddingOptions(8))(torch::randn({2, 5, 2, 12})); },
       "q must have dim = 8 channels"},
      {[] { pnn::PatchPositionalEncoding(pnn::PatchPositionalEncodingOptions(0, {3, 4})); },
       "embed_dim must be >= 1"},
      {[] { pnn::PatchPositionalEncoding(pnn::PatchPositionalEncodingOptions(8, {-2, 3})); },
       "grid must be (H, W) or (T, H, W) with sizes >= 1"},
      {[] {
         pnn::PatchPositionalEncoding(pnn::PatchPositionalEncodingOptions(8, {3, 4}).extra_tokens(
             1))(torch::randn({2, 13, 12}));
       },
       "x must have embed_dim = 8 channels"},
      {[] {
         pnn::PatchPositionalEncoding(
             pnn::PatchPositionalEncodingOptions(8, {4, 4}).pos_embed_max_size(3));
       },
       "exceeds pos_embed_max_size=3"},
      {[] { pnn::AxialRotaryEmbedding(pnn::AxialRotaryEmbeddingOptions(0, {3, 4})); },
       "head_dim must be >= 4"},
      {[] { pnn::AxialRotaryEmbedding(pnn::AxialRotaryEmbeddingOptions(6, {3, 4})); },
       "head_dim must be a multiple of 4"},
      {[] { pnn::AxialRotaryEmbedding(pnn::AxialRotaryEmbeddingOptions(8, {-2, 3})); },
       "grid must be (H, W) with sizes >= 1"},
      {[] {
         pnn::AxialRotaryEmbedding(pnn::AxialRotaryEmbeddingOptions(8, {2, 3}).extra_tokens(1))(
             torch::randn({1, 6, 2, 8}));
       },
       "q must have extra_tokens + H * W = 7 tokens in dimension 1"},
  };
  for (const auto& [call, message] : cases) {
    try {
      call();
      ADD_FAILURE() << "expected an error containing: " << message;
    } catch (const c10::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
}

// attention_bias through the C++ API: T5 buckets with their table's gradient by autograd
// (equal to the backward function), causal ALiBi, and errors naming the argument.
TEST(PosencApi, AttentionBias) {
  const auto table = torch::randn({32, 4}, torch::requires_grad());
  const auto options = posenc::AttentionBiasOptions().kind("t5").offset(3);
  const auto bias = posenc::attention_bias(table, 5, 9, options);
  ASSERT_EQ(bias.sizes(), (std::vector<int64_t>{1, 4, 5, 9}));
  // Relative position j - (3 + i) = 0 is bucket 0 in both directions.
  EXPECT_TRUE(torch::equal(bias.index({0, torch::indexing::Slice(), 0, 3}), table[0]));
  const auto grad = torch::randn({1, 4, 5, 9});
  bias.backward(grad);
  EXPECT_TRUE(torch::equal(table.grad(),
                           posenc::attention_bias_backward(grad, table.detach(), 5, 9, options)));
  const auto slopes = posenc::alibi_slopes(8);
  const auto alibi =
      posenc::attention_bias(slopes, 4, 4, posenc::AttentionBiasOptions().causal(true));
  EXPECT_TRUE(std::isinf(alibi[0][0][0][1].item<float>()));
  EXPECT_FLOAT_EQ(alibi[0][1][3][0].item<float>(), -3.0f * slopes[1].item<float>());
  try {
    posenc::attention_bias(table, 5, 9, posenc::AttentionBiasOptions().kind("t5").causal(true));
    ADD_FAILURE() << "no error";
  } catch (const c10::Error& error) {
    EXPECT_NE(std::string(error.what()).find("causal applies to kind='alibi'"), std::string::npos);
  }
}

// The attention-bias modules: the operator's values, gradients into their parameters, and
// their own arguments checked.
TEST(Modules, AttentionBiasModules) {
  posenc::nn::ALiBi alibi(posenc::nn::ALiBiOptions(8).causal(true));
  EXPECT_TRUE(
      torch::equal(alibi(5, 9, 4),
                   posenc::attention_bias(posenc::alibi_slopes(8), 5, 9,
                                          posenc::AttentionBiasOptions().causal(true).offset(4))));
  EXPECT_EQ(alibi->buffers().size(), 1u);
  posenc::nn::T5RelativePositionBias t5(
      posenc::nn::T5RelativePositionBiasOptions(4).bidirectional(false));
  const auto bias = t5(3, 40, 37);
  ASSERT_EQ(bias.sizes(), (std::vector<int64_t>{1, 4, 3, 40}));
  bias.sum().backward();
  EXPECT_GT(t5->weight.grad().abs().sum().item<float>(), 0.0f);
  posenc::nn::SwinRelativePositionBias swin(posenc::nn::SwinRelativePositionBiasOptions(3, {7, 7}));
  ASSERT_EQ(swin->relative_position_bias_table.sizes(), (std::vector<int64_t>{169, 3}));
  EXPECT_EQ(swin().sizes(), (std::vector<int64_t>{1, 3, 49, 49}));
  EXPECT_THROW(posenc::nn::ALiBi(posenc::nn::ALiBiOptions(0)), c10::ValueError);
  EXPECT_THROW(posenc::nn::T5RelativePositionBias(
                   posenc::nn::T5RelativePositionBiasOptions(4).max_distance(4)),
               c10::ValueError);
  EXPECT_THROW(posenc::nn::SwinRelativePositionBias(
                   posenc::nn::SwinRelativePositionBiasOptions(3, {7, 7, 7})),
               c10::ValueError);
}
