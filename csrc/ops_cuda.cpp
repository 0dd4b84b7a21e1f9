// CUDA backend: the operators of ops_impl.h with the kernels of kernels/cuda, launched on the
// current stream of the input's device, every launch checked.
#include <ATen/Context.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "call.h"
#include "cuda_launch.h"
#include "ops_impl.h"

namespace posenc {
namespace {

namespace kc = kernels::cuda;

void check_launch(int status, const char* what) {
  TORCH_CHECK(status == 0, "posenc: CUDA launch of ", what, " failed: ", kc::error_string(status));
}

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The seed as an int64 scalar on `device` (the wrapper draws it there; a CPU seed is copied).
at::Tensor device_seed(const std::optional<at::Tensor>& seed, const at::Device& device) {
  if (!seed.has_value()) return at::Tensor();
  return seed->to(device).reshape({});
}

const int64_t* seed_pointer(const at::Tensor& seed) {
  return seed.defined() ? seed.data_ptr<int64_t>() : nullptr;
}

// A device workspace of `bytes` from the caching allocator (no allocation when 0).
at::Tensor workspace_of(int64_t bytes, const at::Tensor& like) {
  return bytes > 0 ? at::empty({bytes}, like.options().dtype(at::kByte)) : at::Tensor();
}

void* pointer_of(const at::Tensor& workspace) {
  return workspace.defined() ? workspace.data_ptr() : nullptr;
}

struct CudaBackend {
  static constexpr bool kRunsKernels = true;
  static constexpr bool kChecksValuesOnDevice = true;

  static uint64_t host_seed(const std::optional<at::Tensor>& /*seed*/) { return 0; }

  static void run_rows(const kernels::AddPositionalParams& params,
                       const std::optional<at::Tensor>& seed, const at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(out.device());
    const at::Tensor seed_on_device = device_seed(seed, out.device());
    const at::Tensor workspace = workspace_of(kc::add_positional_workspace_bytes(params), out);
    check_launch(kc::add_positional(params, seed_pointer(seed_on_device), pointer_of(workspace),
                                    current_stream()),
                 "add_positional");
  }

  // Atomics by default; under torch.use_deterministic_algorithms(True), rows sorted by target
  // and summed in chunks joined in a fixed order, bit-identical from run to run.
  static void scatter(const kernels::AddPositionalParams& params, const kernels::StridedRows& input,
                      impl::ScatterTarget target, const std::optional<at::Tensor>& seed,
                      const at::Tensor& grad, const detail::RowCall& call) {
    const c10::cuda::CUDAGuard guard(grad.device());
    const at::Tensor seed_on_device = device_seed(seed, grad.device());
    const kc::ScatterTarget kernel_target = target == impl::ScatterTarget::kTable
                                                ? kc::ScatterTarget::kTable
                                                : kc::ScatterTarget::kWeight;
    const int64_t batch = params.shape.batch_count();
    const int64_t seq_len = params.shape.seq_len;
    at::Tensor fairseq;
    if (params.gather.fairseq_positions) {
      fairseq = at::empty({batch * seq_len}, grad.options().dtype(at::kLong));
      check_launch(kc::fairseq_positions(params, fairseq.data_ptr<int64_t>(), current_stream()),
                   "fairseq_positions");
    }
    const int64_t* fairseq_ptr = fairseq.defined() ? fairseq.data_ptr<int64_t>() : nullptr;
    const bool deterministic = at::globalContext().deterministicAlgorithms();
    const at::Tensor workspace =
        workspace_of(kc::scatter_workspace_bytes(params, deterministic), grad);
    if (!deterministic) {
      check_launch(kc::scatter_backward_atomic(params, input, kernel_target,
                                               seed_pointer(seed_on_device), fairseq_ptr,
                                               pointer_of(workspace), grad.data_ptr(),
                                               current_stream()),
                   "scatter_backward_atomic");
      return;
    }
    // Each row's target: its id (weight) or its position (table), in row order b * T + t.
    at::Tensor targets;
    if (target == impl::ScatterTarget::kWeight) {
      targets = call.ids.reshape({-1}).to(at::kLong);
    } else if (fairseq.defined()) {
      targets = fairseq;
    } else if (call.positions.has_value()) {
      targets = call.positions->reshape({-1}).to(at::kLong);
    } else {
      targets = at::arange(call.options.offset, call.options.offset + seq_len,
                           grad.options().dtype(at::kLong))
                    .expand({batch, seq_len})
                    .reshape({-1});
    }
    // Sorting and the chunked sums need no host synchronisation (unlike unique_consecutive).
    const auto [sorted_targets, sorted_rows] = at::sort(targets, /*stable=*/true, 0, false);
    const at::Tensor sorted_targets_dense = sorted_targets.contiguous();
    const at::Tensor sorted_rows_dense = sorted_rows.contiguous();
    check_launch(kc::scatter_backward_deterministic(
                     params, input, kernel_target, seed_pointer(seed_on_device), fairseq_ptr,
                     sorted_rows_dense.data_ptr<int64_t>(),
                     sorted_targets_dense.data_ptr<int64_t>(), pointer_of(workspace),
                     grad.data_ptr(), current_stream()),
                 "scatter_backward_deterministic");
  }

  static void rotary(kernels::RotaryParams& params, const detail::RotaryCall& call) {
    const c10::cuda::CUDAGuard guard(call.q.device());
    at::Tensor frequencies, float32_frequencies;
    if (call.inv_freq.has_value()) frequencies = call.inv_freq->to(at::kDouble).contiguous();
    if (call.precision == detail::Precision::kTransformers) {
      // transformers' float32 frequencies, formed on the device as transformers forms them
      // there (no host copy, so no synchronisation).
      float32_frequencies =
          call.inv_freq.has_value()
              ? call.inv_freq->to(at::kFloat).contiguous()
              : at::reciprocal(at::pow(call.base, at::arange(0, call.rotary_dim, 2,
                                                             call.q.options().dtype(at::kLong))
                                                      .to(at::kFloat)
                                                      .div(static_cast<double>(call.rotary_dim))));
      params.float32_frequencies = float32_frequencies.data_ptr<float>();
    }
    const at::Tensor workspace = workspace_of(kc::rotary_workspace_bytes(params), call.q);
    check_launch(kc::rotary(params,
                            frequencies.defined() ? frequencies.data_ptr<double>() : nullptr,
                            call.base, pointer_of(workspace), current_stream()),
                 "rotary");
  }

  static void rotary_tables(const kernels::RotaryTableParams& params, const at::Tensor& like) {
    const c10::cuda::CUDAGuard guard(like.device());
    check_launch(kc::rotary_tables(params, current_stream()), "rotary_tables");
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(posenc, CUDA, m) {
  for (const char* name : detail::kTensorOperators) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&impl::boxed_kernel<CudaBackend>>());
  }
}

}  // namespace posenc
