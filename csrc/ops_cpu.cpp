// CPU backend: the operators of ops_impl.h with the CPU kernels, threaded by at::parallel_for.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common.h"
#include "ops_impl.h"
#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace posenc {
namespace {

struct CpuBackend {
  static uint64_t host_seed(const std::optional<at::Tensor>& seed) {
    return detail::read_seed(seed);
  }

  static void run_rows(const kernels::AddPositionalParams& params,
                       const std::optional<at::Tensor>& /*seed*/, const at::Tensor& /*out*/) {
    kernels::add_positional_cpu(params, detail::torch_parallel_for());
  }

  // The CPU kernels are deterministic for any thread count: channel blocks per thread, rows in
  // a fixed order.
  static void scatter(const kernels::AddPositionalParams& params, const kernels::StridedRows& input,
                      impl::ScatterTarget target, const std::optional<at::Tensor>& /*seed*/,
                      const at::Tensor& grad, const impl::ScatterIndices& /*indices*/) {
    if (target == impl::ScatterTarget::kTable) {
      kernels::add_positional_table_backward_cpu(params, input, grad.data_ptr(),
                                                 detail::torch_parallel_for());
    } else {
      kernels::embedding_weight_backward_cpu(params, grad.data_ptr(), detail::torch_parallel_for());
    }
  }

  static void rotary(kernels::RotaryParams& params, const std::optional<at::Tensor>& inv_freq,
                     double base, const at::Tensor& /*like*/) {
    std::vector<double> radians;
    if (inv_freq.has_value()) {
      const at::Tensor host = inv_freq->to(at::kDouble).contiguous();
      radians.assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
    } else {
      radians = kernels::default_inv_freq(params.rotary_dim, base);
    }
    const auto frequencies = kernels::rotary_turn_frequencies(radians);
    params.frequencies = frequencies.data();
    kernels::rotary_cpu(params, detail::torch_parallel_for());
  }

  static void rotary_tables(const kernels::RotaryTableParams& params,
                            const at::Tensor& /*like*/) {
    kernels::rotary_tables_cpu(params, detail::torch_parallel_for());
  }
};

std::tuple<at::Tensor, double> rope_frequencies_impl(
    int64_t dim, double base, std::string_view rope_type, double factor,
    std::optional<int64_t> max_position_embeddings,
    std::optional<int64_t> original_max_position_embeddings, std::optional<int64_t> seq_len,
    std::optional<double> attention_factor, double beta_fast, double beta_slow,
    std::optional<double> mscale, std::optional<double> mscale_all_dim, bool truncate,
    double low_freq_factor, double high_freq_factor,
    std::optional<c10::ArrayRef<double>> short_factor,
    std::optional<c10::ArrayRef<double>> long_factor) {
  kernels::RopeScaling scaling;
  scaling.rope_type = std::string(rope_type);
  scaling.base = base;
  scaling.factor = factor;
  scaling.max_position_embeddings = max_position_embeddings.value_or(0);
  scaling.original_max_position_embeddings = original_max_position_embeddings.value_or(0);
  scaling.seq_len = seq_len.value_or(0);
  scaling.has_attention_factor = attention_factor.has_value();
  scaling.attention_factor = attention_factor.value_or(1.0);
  scaling.beta_fast = beta_fast;
  scaling.beta_slow = beta_slow;
  scaling.mscale = mscale.value_or(0.0);
  scaling.mscale_all_dim = mscale_all_dim.value_or(0.0);
  scaling.truncate = truncate;
  scaling.low_freq_factor = low_freq_factor;
  scaling.high_freq_factor = high_freq_factor;
  if (short_factor.has_value()) scaling.short_factor.assign(short_factor->begin(), short_factor->end());
  if (long_factor.has_value()) scaling.long_factor.assign(long_factor->begin(), long_factor->end());
  kernels::RopeFrequencies result;
  const std::string error = kernels::compute_rope_frequencies(dim, scaling, result);
  TORCH_CHECK_VALUE(error.empty(), "posenc.rope_frequencies: ", error);
  at::Tensor inv_freq = at::empty({static_cast<int64_t>(result.inv_freq.size())}, at::kFloat);
  std::copy(result.inv_freq.begin(), result.inv_freq.end(), inv_freq.data_ptr<float>());
  return {inv_freq, result.attention_factor};
}

}  // namespace

TORCH_LIBRARY_IMPL(posenc, CompositeExplicitAutograd, m) {
  m.impl("rope_frequencies", &rope_frequencies_impl);
}

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  m.impl("add_positional", &impl::add_positional_impl<CpuBackend>);
  m.impl("add_positional_backward", &impl::add_positional_backward_impl<CpuBackend>);
  m.impl("add_positional_table_backward", &impl::add_positional_table_backward_impl<CpuBackend>);
  m.impl("embedding", &impl::embedding_impl<CpuBackend>);
  m.impl("embedding_backward", &impl::embedding_backward_impl<CpuBackend>);
  m.impl("embedding_table_backward", &impl::embedding_table_backward_impl<CpuBackend>);
  m.impl("positional_encoding", &impl::positional_encoding_impl<CpuBackend>);
  m.impl("rotary", &impl::rotary_impl<CpuBackend>);
  m.impl("rotary_tables", &impl::rotary_tables_impl<CpuBackend>);
}

}  // namespace posenc
