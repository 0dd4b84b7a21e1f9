// CPU backend: the operators of ops_impl.h with the CPU kernels, threaded by at::parallel_for.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "call.h"
#include "ops_impl.h"
#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace posenc {
namespace {

struct CpuBackend {
  static constexpr bool kRunsKernels = true;
  static constexpr bool kChecksValuesOnDevice = false;

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
                      const at::Tensor& grad, const detail::RowCall& /*call*/) {
    if (target == impl::ScatterTarget::kTable) {
      kernels::add_positional_table_backward_cpu(params, input, grad.data_ptr(),
                                                 detail::torch_parallel_for());
    } else {
      kernels::embedding_weight_backward_cpu(params, grad.data_ptr(), detail::torch_parallel_for());
    }
  }

  static void rotary(kernels::RotaryParams& params, const detail::RotaryCall& call) {
    const std::vector<double> radians = detail::rotary_frequencies(call);
    const auto frequencies = kernels::rotary_turn_frequencies(radians);
    params.frequencies = frequencies.data();
    std::vector<float> float32_frequencies;
    if (call.precision == detail::Precision::kTransformers) {
      float32_frequencies.assign(radians.begin(), radians.end());
      params.float32_frequencies = float32_frequencies.data();
    }
    kernels::rotary_cpu(params, detail::torch_parallel_for());
  }

  static void rotary_tables(const kernels::RotaryTableParams& params,
                            const at::Tensor& /*like*/) {
    kernels::rotary_tables_cpu(params, detail::torch_parallel_for());
  }
};

}  // namespace

namespace impl {

std::tuple<at::Tensor, double> run_rope_frequencies_call(const detail::RopeFrequenciesCall& call) {
  kernels::RopeFrequencies result;
  const std::string error = kernels::compute_rope_frequencies(call.dim, call.scaling, result);
  TORCH_CHECK_VALUE(error.empty(), "posenc.rope_frequencies: ", error);
  const int64_t count = static_cast<int64_t>(result.inv_freq.size());
  at::Tensor inv_freq = at::empty({count}, at::kDouble);
  std::copy(result.inv_freq.begin(), result.inv_freq.end(), inv_freq.data_ptr<double>());
  if (call.scaling.float32_arithmetic) inv_freq = inv_freq.to(at::kFloat);  // exact: float values
  return {inv_freq, result.attention_factor};
}

}  // namespace impl

TORCH_LIBRARY_IMPL(posenc, CompositeExplicitAutograd, m) {
  m.impl("rope_frequencies",
         torch::CppFunction::makeFromBoxedFunction<&impl::boxed_kernel<CpuBackend>>());
}

TORCH_LIBRARY_IMPL(posenc, CPU, m) {
  for (const char* name : detail::kTensorOperators) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&impl::boxed_kernel<CpuBackend>>());
  }
}

}  // namespace posenc
