// The C++ modules of posenc/nn.h, each a thin layer over the posenc functions.
#include "posenc/nn.h"

#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

namespace posenc {
namespace nn {
namespace {

// `value` >= `minimum`, named as the module's option `name`.
void check_at_least(const char* owner, const char* name, int64_t value, int64_t minimum) {
  TORCH_CHECK_VALUE(value >= minimum, owner, ": ", name, " must be >= ", minimum, ", got ", value);
}

// t: [..., size], the module's `size_name` channels last.
void check_last_dim(const char* owner, const char* name, const at::Tensor& t, int64_t size,
                    const char* size_name) {
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) == size, owner, ": ", name, " must have ", size_name,
                    " = ", size, " channels in its last dimension, got shape ", t.sizes());
}

// A grid of `axes` sizes >= 1.
void check_grid(const char* owner, const std::vector<int64_t>& grid, std::vector<size_t> axes) {
  const bool shaped = std::find(axes.begin(), axes.end(), grid.size()) != axes.end();
  TORCH_CHECK_VALUE(
      shaped && std::all_of(grid.begin(), grid.end(), [](int64_t n) { return n >= 1; }), owner,
      ": grid must be ", axes.size() == 2 ? "(H, W) or (T, H, W)" : "(H, W)",
      " with sizes >= 1, got ", grid);
}

}  // namespace

PositionalEncodingImpl::PositionalEncodingImpl(PositionalEncodingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void PositionalEncodingImpl::reset() {
  check_at_least("PositionalEncoding", "d_model", options.d_model(), 1);
  check_at_least("PositionalEncoding", "max_len", options.max_len(), 1);
  if (options.kind() == "learned") {
    table = register_parameter("table", torch::empty({options.max_len(), options.d_model()}));
    torch::nn::init::normal_(table, 0.0, 1.0 / std::sqrt(static_cast<double>(options.d_model())));
  }
  // The operator checks the options (one place for every check); on Meta tensors, so that bad
  // options fail here rather than at the first forward.
  const auto meta = torch::TensorOptions().device(torch::kMeta);
  forward_with(torch::empty({1, 1, options.d_model()}, meta), std::nullopt, 0,
               table.defined() ? std::optional<at::Tensor>(table.to(torch::kMeta)) : std::nullopt,
               /*training=*/false);
}

at::Tensor PositionalEncodingImpl::forward(const at::Tensor& x,
                                           const std::optional<at::Tensor>& positions,
                                           int64_t offset) {
  check_last_dim("PositionalEncoding", "x", x, options.d_model(), "d_model");
  return forward_with(x, positions, offset,
                      table.defined() ? std::optional<at::Tensor>(table) : std::nullopt,
                      is_training());
}

at::Tensor PositionalEncodingImpl::forward_with(const at::Tensor& x,
                                                const std::optional<at::Tensor>& positions,
                                                int64_t offset,
                                                const std::optional<at::Tensor>& table_,
                                                bool training) {
  at::Tensor input = options.batch_first() ? x : x.movedim(0, -2);
  std::optional<at::Tensor> rows = positions;
  if (!options.batch_first() && positions.has_value() && positions->dim() >= 2) {
    rows = positions->movedim(0, -1);
  }
  auto call = AddPositionalOptions()
                  .kind(options.kind())
                  .combine(options.combine())
                  .scale(options.scale())
                  .positions(rows)
                  .offset(offset)
                  .base(options.base())
                  .convention(options.convention())
                  .layout(options.layout())
                  .dropout(options.dropout())
                  .training(training)
                  .table(table_);
  at::Tensor y = add_positional(input, call);
  return options.batch_first() ? y : y.movedim(-2, 0);
}

PositionalEmbeddingImpl::PositionalEmbeddingImpl(PositionalEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void PositionalEmbeddingImpl::reset() {
  check_at_least("PositionalEmbedding", "num_embeddings", options.num_embeddings(), 1);
  check_at_least("PositionalEmbedding", "embedding_dim", options.embedding_dim(), 1);
  if (options.max_positions().has_value()) {
    check_at_least("PositionalEmbedding", "max_positions", *options.max_positions(), 1);
  }
  const int64_t vocab = options.num_embeddings();
  if (options.padding_idx().has_value()) {
    const int64_t pad = *options.padding_idx();
    TORCH_CHECK_VALUE(pad >= -vocab && pad < vocab, "PositionalEmbedding: padding_idx must be ",
                      "within [-", vocab, ", ", vocab, "), got ", pad);
    options.padding_idx(pad < 0 ? pad + vocab : pad);
  }
  weight = register_parameter("weight", torch::empty({vocab, options.embedding_dim()}));
  torch::nn::init::normal_(weight);
  if (options.padding_idx().has_value()) {
    torch::NoGradGuard no_grad;
    weight[*options.padding_idx()].fill_(0);
  }
  if (options.kind() == "learned") {
    TORCH_CHECK_VALUE(options.max_positions().has_value(),
                      "PositionalEmbedding: kind='learned' needs max_positions");
    table = register_parameter("table",
                               torch::empty({*options.max_positions(), options.embedding_dim()}));
    torch::nn::init::normal_(table, 0.0,
                             1.0 / std::sqrt(static_cast<double>(options.embedding_dim())));
  }
  // The operator checks the options, on Meta tensors (see PositionalEncodingImpl::reset).
  forward_with(
      torch::zeros({1, 1}, torch::TensorOptions().dtype(torch::kLong).device(torch::kMeta)),
      weight.to(torch::kMeta), std::nullopt, 0,
      table.defined() ? std::optional<at::Tensor>(table.to(torch::kMeta)) : std::nullopt,
      /*training=*/false);
}

at::Tensor PositionalEmbeddingImpl::forward(const at::Tensor& ids,
                                            const std::optional<at::Tensor>& positions,
                                            int64_t offset) {
  return forward_with(ids, weight, positions, offset,
                      table.defined() ? std::optional<at::Tensor>(table) : std::nullopt,
                      is_training());
}

at::Tensor PositionalEmbeddingImpl::forward_with(const at::Tensor& ids, const at::Tensor& weight_,
                                                 const std::optional<at::Tensor>& positions,
                                                 int64_t offset,
                                                 const std::optional<at::Tensor>& table_,
                                                 bool training) {
  auto call = EmbeddingOptions()
                  .kind(options.kind())
                  .combine(options.combine())
                  .scale(options.scale())
                  .positions(positions)
                  .fairseq_positions(options.fairseq_positions() && !positions.has_value())
                  .offset(offset)
                  .padding_idx(options.padding_idx())
                  .base(options.base())
                  .convention(options.convention())
                  .layout(options.layout())
                  .dropout(options.dropout())
                  .training(training)
                  .table(table_);
  return embedding(ids, weight_, call);
}

RotaryEmbeddingImpl::RotaryEmbeddingImpl(RotaryEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void RotaryEmbeddingImpl::reset() {
  check_at_least("RotaryEmbedding", "dim", options.dim(), 1);
  const int64_t rotary_dim = options.rotary_dim().value_or(options.dim());
  TORCH_CHECK_VALUE(rotary_dim % 2 == 0 && rotary_dim >= 0 && rotary_dim <= options.dim(),
                    "RotaryEmbedding: rotary_dim must be even and within [0, dim = ", options.dim(),
                    "], got ", rotary_dim);
  auto [frequencies, factor] =
      rope_frequencies(rotary_dim, RopeFrequenciesOptions(options.scaling()).base(options.base()));
  frequencies_ = frequencies;
  inv_freq = register_buffer("inv_freq", frequencies.clone());
  attention_factor = factor;
}

void RotaryEmbeddingImpl::restore_frequencies() {
  // Casting to the module's dtype would round the frequencies: recompute the buffer from them.
  inv_freq.set_data(frequencies_.to(inv_freq.device()));
}

void RotaryEmbeddingImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  restore_frequencies();
}

void RotaryEmbeddingImpl::to(torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(dtype, non_blocking);
  restore_frequencies();
}

void RotaryEmbeddingImpl::load(torch::serialize::InputArchive& archive) {
  // Archives of older versions hold float32 frequencies: match the stored dtype so that the
  // base class can read into the buffer, then restore the computed frequencies.
  at::Tensor stored;
  if (archive.try_read("inv_freq", stored, /*is_buffer=*/true)) {
    inv_freq.set_data(inv_freq.to(stored.scalar_type()));
  }
  torch::nn::Module::load(archive);
  restore_frequencies();
}

std::vector<at::Tensor> RotaryEmbeddingImpl::forward(const at::Tensor& q,
                                                     const std::optional<at::Tensor>& k,
                                                     RotaryOptions rotary_options) {
  // Every layout has the head dimension last.
  check_last_dim("RotaryEmbedding", "q", q, options.dim(), "dim");
  if (k.has_value()) check_last_dim("RotaryEmbedding", "k", *k, options.dim(), "dim");
  rotary_options.inv_freq(inv_freq)
      .rotary_dim(options.rotary_dim().value_or(options.dim()))
      .interleaved(options.interleaved())
      .attention_factor(attention_factor)
      .precision(options.scaling().precision());
  return rotary(q, k, rotary_options);
}

PatchPositionalEncodingImpl::PatchPositionalEncodingImpl(PatchPositionalEncodingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void PatchPositionalEncodingImpl::reset() {
  const char* name = "PatchPositionalEncoding";
  const int64_t dim = options.embed_dim();
  const std::vector<int64_t>& grid = options.grid();
  check_at_least(name, "embed_dim", dim, 1);
  check_grid(name, grid, {2, 3});
  check_at_least(name, "extra_tokens", options.extra_tokens(), 0);
  for (const auto& [field, value] :
       {std::pair<const char*, double>{"interpolation_scale", options.interpolation_scale()},
        {"temporal_interpolation_scale", options.temporal_interpolation_scale()},
        {"base_size", options.base_size().value_or(1)}}) {
    TORCH_CHECK_VALUE(std::isfinite(value) && value > 0.0, name, ": ", field,
                      " must be a finite number > 0, got ", value);
  }
  if (grid.size() == 3) {  // CogVideoX: [time D/4 | w 3D/8 | h 3D/8]
    TORCH_CHECK_VALUE(!options.base_size().has_value() && !options.pos_embed_max_size(), name,
                      ": base_size and pos_embed_max_size apply to 2D grids");
    TORCH_CHECK_VALUE(dim % 16 == 0, name,
                      ": a 3D grid needs embed_dim divisible by 16 (D/4 time channels, 3D/8 for "
                      "each spatial axis), got ",
                      dim);
  } else {
    TORCH_CHECK_VALUE(dim % 4 == 0, name, ": a 2D grid needs embed_dim divisible by 4, got ", dim);
  }
  if (options.pos_embed_max_size().has_value()) {
    check_at_least(name, "pos_embed_max_size", *options.pos_embed_max_size(), 1);
  }
  const int64_t patches =
      std::accumulate(grid.begin(), grid.end(), int64_t{1}, std::multiplies<int64_t>());
  // The operator checks base, convention and dropout, on Meta tensors (see
  // PositionalEncodingImpl::reset).
  add_positional(torch::empty({1, options.extra_tokens() + patches, dim},
                              torch::TensorOptions().device(torch::kMeta)),
                 grid_options(grid).training(false));
}

AddPositionalOptions PatchPositionalEncodingImpl::grid_options(
    const std::vector<int64_t>& grid) const {
  const char* name = "PatchPositionalEncoding";
  const int64_t dim = options.embed_dim();
  check_grid(name, grid, {options.grid().size()});
  AddPositionalOptions call = AddPositionalOptions()
                                  .layout("concat")
                                  .base(options.base())
                                  .convention(options.convention())
                                  .dropout(options.dropout());
  GridOptions grid_options = GridOptions(grid).extra_tokens(options.extra_tokens());
  if (grid.size() == 3) {  // CogVideoX: [time D/4 | w 3D/8 | h 3D/8]
    const double spatial = 1.0 / options.interpolation_scale();
    return call.grid(grid_options.dims(std::vector<int64_t>{dim / 4, 3 * dim / 8, 3 * dim / 8})
                         .axes(std::vector<int64_t>{0, 2, 1})
                         .scale(std::vector<double>{1.0 / options.temporal_interpolation_scale(),
                                                    spatial, spatial}));
  }
  std::vector<int64_t> sizes = grid, origin = {0, 0};
  if (options.pos_embed_max_size().has_value()) {
    const int64_t size = *options.pos_embed_max_size();
    TORCH_CHECK_VALUE(grid[0] <= size && grid[1] <= size, name, ": grid ", grid,
                      " exceeds pos_embed_max_size=", size);
    origin = {(size - grid[0]) / 2, (size - grid[1]) / 2};
    sizes = {size, size};
  }
  // SD3: arange(size) / (size / base_size) / interpolation_scale along each axis.
  std::vector<double> scale(2);
  for (int a = 0; a < 2; ++a) {
    const double base_size =
        options.base_size().has_value()
            ? static_cast<double>(*options.base_size()) / static_cast<double>(sizes[a])
            : 1.0;
    scale[a] = base_size / options.interpolation_scale();
  }
  return call.grid(grid_options.origin(origin).scale(scale));
}

at::Tensor PatchPositionalEncodingImpl::forward(const at::Tensor& x,
                                                const std::optional<std::vector<int64_t>>& grid,
                                                const std::optional<at::Tensor>& positions) {
  check_last_dim("PatchPositionalEncoding", "x", x, options.embed_dim(), "embed_dim");
  return add_positional(
      x, grid_options(grid.value_or(options.grid())).positions(positions).training(is_training()));
}

AxialRotaryEmbeddingImpl::AxialRotaryEmbeddingImpl(AxialRotaryEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void AxialRotaryEmbeddingImpl::reset() {
  const char* name = "AxialRotaryEmbedding";
  const std::string& style = options.style();
  TORCH_CHECK_VALUE(style == "pixtral" || style == "llama4" || style == "dinov3", name,
                    ": style must be one of 'dinov3', 'llama4', 'pixtral', got '", style, "'");
  TORCH_CHECK_VALUE(style != "dinov3" || options.precision() == "exact", name,
                    ": style 'dinov3' supports precision='exact' only (its float32 coordinates "
                    "are not integer positions)");
  check_at_least(name, "head_dim", options.head_dim(), 4);
  TORCH_CHECK_VALUE(options.head_dim() % 4 == 0, name,
                    ": head_dim must be a multiple of 4 (a quarter of the pairs per axis), got ",
                    options.head_dim());
  check_grid(name, options.grid(), {2});
  check_at_least(name, "extra_tokens", options.extra_tokens(), 0);
  TORCH_CHECK_VALUE(std::isfinite(options.base()) && options.base() > 0.0, name,
                    ": base must be a finite number > 0, got ", options.base());
  rope = register_module(
      "rope",
      RotaryEmbedding(RotaryEmbeddingOptions(options.head_dim())
                          .base(options.base())
                          .interleaved(style == "llama4")
                          .scaling(RopeFrequenciesOptions()
                                       .rope_type(style == "pixtral" ? "axial" : "axial_shared")
                                       .precision(options.precision()))));
}

std::pair<at::Tensor, at::Tensor> AxialRotaryEmbeddingImpl::position_ids(
    const std::vector<int64_t>& grid, const at::Device& device) const {
  check_grid("AxialRotaryEmbedding", grid, {2});
  const int64_t height = grid[0], width = grid[1];
  const auto longs = torch::TensorOptions().dtype(torch::kLong).device(device);
  const at::Tensor rows = torch::arange(height, longs).repeat_interleave(width);
  const at::Tensor columns = torch::arange(width, longs).repeat({height});
  at::Tensor inv_freq = rope->inv_freq;
  at::Tensor first, second;
  if (options.style() == "pixtral") {
    first = rows, second = columns;
  } else if (options.style() == "llama4") {
    first = columns + 1, second = rows + 1;
  } else {  // dinov3: 2 pi ((2i + 1)/n - 1) f = (2i + 1 - n) * (2 pi f / n)
    first = 2 * rows + 1 - height, second = 2 * columns + 1 - width;
    const int64_t quarter = options.head_dim() / 4;
    const at::Tensor per_axis = torch::cat(
        {torch::full({quarter}, 2 * M_PI / static_cast<double>(height), inv_freq.options()),
         torch::full({quarter}, 2 * M_PI / static_cast<double>(width), inv_freq.options())});
    inv_freq = inv_freq * per_axis;
  }
  const at::Tensor patches = torch::stack({torch::zeros_like(rows), first, second});
  const at::Tensor extra = torch::zeros({3, options.extra_tokens()}, longs);
  at::Tensor positions = options.style() == "llama4" ? torch::cat({patches, extra}, 1)
                                                     : torch::cat({extra, patches}, 1);
  return {positions, inv_freq};
}

std::vector<at::Tensor> AxialRotaryEmbeddingImpl::forward(
    const at::Tensor& q, const std::optional<at::Tensor>& k,
    const std::optional<std::vector<int64_t>>& grid, const std::string& layout) {
  const char* name = "AxialRotaryEmbedding";
  const std::vector<int64_t>& sizes = grid.value_or(options.grid());
  check_grid(name, sizes, {2});
  const std::vector<std::pair<const char*, int64_t>> token_axes = {
      {"bshd", 1}, {"bhsd", 2}, {"sbhd", 0}, {"thd", 0}};
  const auto axis = std::find_if(token_axes.begin(), token_axes.end(),
                                 [&](const auto& entry) { return layout == entry.first; });
  TORCH_CHECK_VALUE(axis != token_axes.end(), name,
                    ": layout must be one of 'bhsd', 'bshd', 'sbhd', 'thd', got '", layout, "'");
  const int64_t tokens = options.extra_tokens() + sizes[0] * sizes[1];
  for (const auto& [operand, t] :
       {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", k.has_value() ? &*k : nullptr}}) {
    if (t == nullptr) continue;
    check_last_dim(name, operand, *t, options.head_dim(), "head_dim");
    TORCH_CHECK_VALUE(t->dim() > axis->second && t->size(axis->second) == tokens, name, ": ",
                      operand, " must have extra_tokens + H * W = ", tokens,
                      " tokens in dimension ", axis->second, " (layout '", layout, "'), got shape ",
                      t->sizes());
  }
  auto [positions, inv_freq] = position_ids(sizes, q.device());
  const int64_t quarter = options.head_dim() / 4;
  return rotary(q, k,
                RotaryOptions()
                    .positions(positions)
                    .inv_freq(inv_freq)
                    .layout(layout)
                    .interleaved(rope->options.interleaved())
                    .mrope_section(std::vector<int64_t>{0, quarter, quarter})
                    .precision(options.precision()));
}

// ---- attention biases ------------------------------------------------------------------------

ALiBiImpl::ALiBiImpl(ALiBiOptions options_) : options(std::move(options_)) { reset(); }

void ALiBiImpl::reset() {
  check_at_least("ALiBi", "num_heads", options.num_heads(), 1);
  slopes = options.learnable() ? register_parameter("slopes", alibi_slopes(options.num_heads()))
                               : register_buffer("slopes", alibi_slopes(options.num_heads()));
}

at::Tensor ALiBiImpl::forward(int64_t query_length, int64_t key_length, int64_t offset) {
  return attention_bias(
      slopes, query_length, key_length,
      AttentionBiasOptions().kind("alibi").causal(options.causal()).offset(offset));
}

T5RelativePositionBiasImpl::T5RelativePositionBiasImpl(T5RelativePositionBiasOptions options_)
    : options(std::move(options_)) {
  reset();
}

namespace {

AttentionBiasOptions t5_options(const T5RelativePositionBiasOptions& o) {
  return AttentionBiasOptions()
      .kind("t5")
      .num_buckets(o.num_buckets())
      .max_distance(o.max_distance())
      .bidirectional(o.bidirectional());
}

}  // namespace

void T5RelativePositionBiasImpl::reset() {
  check_at_least("T5RelativePositionBias", "num_heads", options.num_heads(), 1);
  check_at_least("T5RelativePositionBias", "num_buckets", options.num_buckets(), 2);
  weight = register_parameter("weight", torch::empty({options.num_buckets(), options.num_heads()}));
  torch::nn::init::normal_(weight);
  // The bucket arguments are the operator's to check: once here, on a meta copy.
  torch::NoGradGuard no_grad;
  attention_bias(weight.to(at::kMeta), 1, 1, t5_options(options));
}

at::Tensor T5RelativePositionBiasImpl::forward(int64_t query_length, int64_t key_length,
                                               int64_t offset) {
  return attention_bias(weight, query_length, key_length, t5_options(options).offset(offset));
}

SwinRelativePositionBiasImpl::SwinRelativePositionBiasImpl(SwinRelativePositionBiasOptions options_)
    : options(std::move(options_)) {
  reset();
}

void SwinRelativePositionBiasImpl::reset() {
  check_at_least("SwinRelativePositionBias", "num_heads", options.num_heads(), 1);
  const std::vector<int64_t>& window = options.window_size();
  TORCH_CHECK_VALUE(window.size() == 2,
                    "SwinRelativePositionBias: window_size must be (Wh, Ww), got ",
                    c10::IntArrayRef(window));
  check_at_least("SwinRelativePositionBias", "window_size", window[0], 1);
  check_at_least("SwinRelativePositionBias", "window_size", window[1], 1);
  relative_position_bias_table = register_parameter(
      "relative_position_bias_table",
      torch::empty({(2 * window[0] - 1) * (2 * window[1] - 1), options.num_heads()}));
  // Swin's trunc_normal_(std=0.02) truncates at +-2, which a std of 0.02 never reaches.
  torch::nn::init::normal_(relative_position_bias_table, 0.0, 0.02);
}

at::Tensor SwinRelativePositionBiasImpl::forward() {
  const int64_t tokens = options.window_size()[0] * options.window_size()[1];
  return attention_bias(relative_position_bias_table, tokens, tokens,
                        AttentionBiasOptions().kind("swin").window(options.window_size()));
}

}  // namespace nn
}  // namespace posenc
