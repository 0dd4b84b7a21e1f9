// The public C++ API (posenc/posenc.h): each options struct is turned into the operator's
// arguments by name once, and every function calls its operator boxed through the dispatcher.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randint.h>

#include <limits>
#include <utility>

#include "posenc/posenc.h"

namespace posenc {
namespace {

using NamedArguments = std::vector<std::pair<const char*, c10::IValue>>;

// Calls posenc::<op> with `arguments` by schema name; arguments the schema does not have are
// ignored (an options struct serves a forward and its backward ops), absent ones take their
// schema defaults. Returns the results.
torch::jit::Stack call_operator(const char* op, const NamedArguments& arguments) {
  const c10::OperatorHandle handle =
      c10::Dispatcher::singleton().findSchemaOrThrow((std::string("posenc::") + op).c_str(), "");
  torch::jit::Stack stack;
  for (const c10::Argument& argument : handle.schema().arguments()) {
    const auto given = std::find_if(arguments.begin(), arguments.end(),
                                    [&](const auto& entry) { return argument.name() == entry.first; });
    if (given != arguments.end()) {
      stack.push_back(given->second);
    } else {
      TORCH_INTERNAL_ASSERT(argument.default_value().has_value(), "posenc::", op,
                            ": no value for ", argument.name());
      stack.push_back(*argument.default_value());
    }
  }
  handle.callBoxed(stack);
  return stack;
}

c10::IValue optional_value(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? c10::IValue(*tensor) : c10::IValue();
}

// `arguments` with the given tensors (and the forward's drawn seed) in front.
NamedArguments with(NamedArguments arguments, NamedArguments tensors) {
  tensors.insert(tensors.end(), std::make_move_iterator(arguments.begin()),
                 std::make_move_iterator(arguments.end()));
  return tensors;
}

// The options add_positional and embedding share (the code, the combine, dropout).
template <typename Options>
NamedArguments named_row_options(const Options& o) {
  return {{"positions", optional_value(o.positions())},
          {"table", optional_value(o.table())},
          {"seed", optional_value(o.seed())},
          {"kind", o.kind()},
          {"combine", o.combine()},
          {"scale", o.scale()},
          {"offset", o.offset()},
          {"base", o.base()},
          {"convention", o.convention()},
          {"layout", o.layout()},
          {"dropout", o.dropout()},
          {"training", o.training()}};
}

// The grid arguments of add_positional and positional_encoding (none: their defaults).
NamedArguments named(const std::optional<GridOptions>& grid) {
  if (!grid.has_value()) return {};
  return {{"grid", grid->sizes()},
          {"extra_tokens", grid->extra_tokens()},
          {"grid_dims", grid->dims()},
          {"grid_axes", grid->axes()},
          {"grid_origin", grid->origin()},
          {"grid_scale", grid->scale()}};
}

NamedArguments named(const AddPositionalOptions& o) {
  return with(named_row_options(o), named(o.grid()));
}

NamedArguments named(const EmbeddingOptions& o) {
  NamedArguments arguments = named_row_options(o);
  arguments.emplace_back("padding_idx", o.padding_idx());
  arguments.emplace_back("fairseq_positions", o.fairseq_positions());
  return arguments;
}

NamedArguments named(const RotaryOptions& o) {
  return {{"positions", optional_value(o.positions())},
          {"offsets", optional_value(o.offsets())},
          {"inv_freq", optional_value(o.inv_freq())},
          {"cu_seqlens", optional_value(o.cu_seqlens())},
          {"base", o.base()},
          {"offset", o.offset()},
          {"rotary_dim", o.rotary_dim()},
          {"interleaved", o.interleaved()},
          {"layout", o.layout()},
          {"attention_factor", o.attention_factor()},
          {"inverse", o.inverse()},
          {"precision", o.precision()},
          {"mrope_section", o.mrope_section()},
          {"mrope_interleaved", o.mrope_interleaved()}};
}

NamedArguments named(const RopeFrequenciesOptions& o) {
  return {{"base", o.base()},
          {"rope_type", o.rope_type()},
          {"factor", o.factor()},
          {"max_position_embeddings", o.max_position_embeddings()},
          {"original_max_position_embeddings", o.original_max_position_embeddings()},
          {"seq_len", o.seq_len()},
          {"attention_factor", o.attention_factor()},
          {"beta_fast", o.beta_fast()},
          {"beta_slow", o.beta_slow()},
          {"mscale", o.mscale()},
          {"mscale_all_dim", o.mscale_all_dim()},
          {"truncate", o.truncate()},
          {"low_freq_factor", o.low_freq_factor()},
          {"high_freq_factor", o.high_freq_factor()},
          {"short_factor", o.short_factor()},
          {"long_factor", o.long_factor()},
          {"precision", o.precision()},
          {"partial_rotary_factor", o.partial_rotary_factor()}};
}


template <typename Options>
NamedArguments forward_arguments(const Options& o, const at::Device& device) {
  NamedArguments arguments = named(o);
  if (!o.seed().has_value()) {
    arguments.emplace_back("seed",
                           optional_value(draw_seed(device, o.dropout(), o.training(),
                                                    o.generator())));
    // The entry named first wins; move the drawn seed ahead of the unset one.
    std::rotate(arguments.begin(), arguments.end() - 1, arguments.end());
  }
  return arguments;
}

}  // namespace

std::optional<at::Tensor> draw_seed(const at::Device& device, double dropout, bool training,
                                    const std::optional<at::Generator>& generator) {
  if (!training || dropout == 0.0) return std::nullopt;
  return at::randint(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                     {}, generator, at::TensorOptions().dtype(at::kLong).device(device));
}

at::Tensor add_positional(const at::Tensor& x, const AddPositionalOptions& o) {
  return call_operator("add_positional", with(forward_arguments(o, x.device()), {{"x", x}}))[0]
      .toTensor();
}

at::Tensor add_positional_backward(const at::Tensor& grad, const AddPositionalOptions& o) {
  return call_operator("add_positional_backward", with(named(o), {{"grad", grad}}))[0].toTensor();
}

at::Tensor add_positional_table_backward(const at::Tensor& grad,
                                         const std::optional<at::Tensor>& x,
                                         c10::SymInt table_rows, const AddPositionalOptions& o) {
  return call_operator("add_positional_table_backward",
                       with(named(o), {{"grad", grad},
                                       {"x", optional_value(x)},
                                       {"table_rows", std::move(table_rows)}}))[0]
      .toTensor();
}

at::Tensor embedding(const at::Tensor& ids, const at::Tensor& weight, const EmbeddingOptions& o) {
  return call_operator("embedding",
                       with(forward_arguments(o, weight.device()),
                            {{"ids", ids}, {"weight", weight}}))[0]
      .toTensor();
}

at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& ids,
                              const at::Tensor& weight, const EmbeddingOptions& o) {
  return call_operator("embedding_backward",
                       with(named(o), {{"grad", grad}, {"ids", ids}, {"weight", weight}}))[0]
      .toTensor();
}

at::Tensor embedding_table_backward(const at::Tensor& grad, const at::Tensor& ids,
                                    const at::Tensor& weight, c10::SymInt table_rows,
                                    const EmbeddingOptions& o) {
  return call_operator("embedding_table_backward",
                       with(named(o), {{"grad", grad},
                                       {"ids", ids},
                                       {"weight", weight},
                                       {"table_rows", std::move(table_rows)}}))[0]
      .toTensor();
}

std::vector<at::Tensor> rotary(const at::Tensor& q, const std::optional<at::Tensor>& k,
                               const RotaryOptions& o) {
  return call_operator("rotary", with(named(o), {{"q", q}, {"k", optional_value(k)}}))[0]
      .toTensorVector();
}

std::vector<at::Tensor> rotary_tables(const at::Tensor& q, const std::optional<at::Tensor>& k,
                                      const at::Tensor& cos, const at::Tensor& sin,
                                      int64_t unsqueeze_dim, bool transpose) {
  return call_operator("rotary_tables", {{"q", q},
                                         {"k", optional_value(k)},
                                         {"cos", cos},
                                         {"sin", sin},
                                         {"unsqueeze_dim", unsqueeze_dim},
                                         {"transpose", transpose}})[0]
      .toTensorVector();
}

at::Tensor positional_encoding(const at::Tensor& positions, int64_t dim,
                               const PositionCodeOptions& o) {
  return call_operator("positional_encoding", with(named(o.grid()),
                                                    {{"positions", positions},
                                                     {"dim", dim},
                                                     {"kind", o.kind()},
                                                     {"base", o.base()},
                                                     {"convention", o.convention()},
                                                     {"layout", o.layout()},
                                                     {"dtype", o.dtype()}}))[0]
      .toTensor();
}

std::tuple<at::Tensor, double> rope_frequencies(int64_t dim, const RopeFrequenciesOptions& o) {
  const torch::jit::Stack results = call_operator("rope_frequencies", with(named(o), {{"dim", dim}}));
  return {results[0].toTensor(), results[1].toDouble()};
}

}  // namespace posenc
