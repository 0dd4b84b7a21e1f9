// The operators' implementations for any backend: one boxed kernel serves every posenc schema.
// It parses the call (call.h), checks values, allocates the outputs and hands the kernels a
// description of the tensors. A Backend (CpuBackend in ops_cpu.cpp, CudaBackend in ops_cuda.cpp,
// MetaBackend in ops_meta.cpp) supplies:
//   kRunsKernels                        false for Meta: shapes only
//   kChecksValuesOnDevice               ids/positions/offsets/cu_seqlens checked by the kernels
//                                       (device-side asserts), not read on the host
//   host_seed(seed)                     the seed for params.dropout.seed (CPU reads it)
//   run_rows(params, seed, out)         add_positional / embedding / positional_encoding rows
//   scatter(params, input, target, seed, grad, call)   table / weight gradients
//   rotary(params, call)  rotary_tables(params, like)
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <unistd.h>

#include <cstdint>
#include <vector>

#include "call.h"
#include "positional.h"
#include "rope_scaling.h"
#include "rotary.h"

namespace posenc {
namespace impl {

using detail::OpId;
using detail::RowCall;

enum class ScatterTarget { kTable, kWeight };

// A zero [rows, D] accumulation buffer: float for half types, else double.
inline at::Tensor zeros_in_compute_type(c10::SymIntArrayRef size, const at::Tensor& like) {
  const at::ScalarType type = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::zeros_symint(size, like.options().dtype(type));
}

inline bool is_scatter(const RowCall& call) {
  return call.op == OpId::kAddPositionalTableBackward || call.op == OpId::kEmbeddingBackward ||
         call.op == OpId::kEmbeddingTableBackward;
}

// An output on the CPU sized by an argument (table_rows, dim) is refused before allocation when
// it exceeds the machine's physical memory: where the kernel overcommits memory, the allocation
// would succeed and the process be killed when the pages are touched, not raise.
inline void check_fits_in_memory(const RowCall& call, const at::Device& device) {
  if (call.size_argument == nullptr || !device.is_cpu()) return;
  const long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_bytes <= 0) return;
  const bool scatter = is_scatter(call);
  uint64_t bytes = scatter ? (call.rows.scalar_type() == at::kDouble ? 8 : 4)
                           : c10::elementSize(call.dtype);
  bool overflow = false;
  for (const c10::SymInt& size : call.out_sizes) {
    overflow |= __builtin_mul_overflow(bytes, static_cast<uint64_t>(size.expect_int()), &bytes);
  }
  const uint64_t memory = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_bytes);
  TORCH_CHECK_VALUE(!overflow && bytes <= memory, call.name, ": ", call.size_argument, " = ",
                    call.size_value, " is too large: an output of shape ",
                    c10::SymIntArrayRef(call.out_sizes), " needs ",
                    overflow ? std::string("more than 2^64") : std::to_string(bytes),
                    " bytes, more than this machine's memory (", memory, " bytes)");
}

// The output of a row operator (uninitialised; zero for the scatter targets).
inline at::Tensor allocate_row_output(const RowCall& call, bool runs_kernels) {
  const bool scatter = is_scatter(call);
  if (scatter && runs_kernels) return zeros_in_compute_type(call.out_sizes, call.rows);
  if ((call.op == OpId::kAddPositional || call.op == OpId::kAddPositionalBackward)) {
    return at::empty_like(call.rows);
  }
  const at::TensorOptions options =
      call.op == OpId::kPositionalEncoding
          ? call.positions->options().dtype(call.dtype)
          : (call.weight.defined() ? call.weight : call.rows).options().dtype(call.dtype);
  return at::empty_symint(call.out_sizes, options);
}

template <typename Backend>
at::Tensor run_row_call(const RowCall& call) {
  at::Tensor out;
  if constexpr (Backend::kRunsKernels) {
    check_fits_in_memory(call, call.rows.defined()     ? call.rows.device()
                               : call.weight.defined() ? call.weight.device()
                                                       : call.positions->device());
  }
  try {
    out = allocate_row_output(call, Backend::kRunsKernels);
  } catch (const c10::Error& error) {
    // A size argument too large for memory: say which one.
    if (call.size_argument == nullptr) throw;
    TORCH_CHECK_VALUE(false, call.name, ": ", call.size_argument, " = ", call.size_value,
                      " is too large: an output of shape ", c10::SymIntArrayRef(call.out_sizes),
                      " cannot be allocated (", error.what_without_backtrace(), ")");
  }
  if constexpr (!Backend::kRunsKernels) {
    return out;
  } else {
    detail::check_row_values(call, !Backend::kChecksValuesOnDevice);
    const uint64_t seed = Backend::host_seed(call.seed);
    detail::KernelCall kernel;
    switch (call.op) {
      case OpId::kAddPositional:
      case OpId::kEmbedding:
        detail::prepare_kernel_call(kernel, call, out, call.rows, call.options.combine, seed);
        Backend::run_rows(kernel.params, call.seed, out);
        return out;
      case OpId::kPositionalEncoding:
        detail::prepare_kernel_call(kernel, call, out, at::Tensor(),
                                    kernels::Combine::kPositionOnly, seed);
        Backend::run_rows(kernel.params, call.seed, out);
        return out;
      case OpId::kAddPositionalBackward: {
        // d/dx of scale*x + PE is scale; of (scale*x)*PE it is scale*PE: the forward kernel with
        // the code dropped (add) or kept (mul), under the same dropout mask.
        const kernels::Combine combine = call.options.combine == kernels::Combine::kAdd
                                             ? kernels::Combine::kScaleOnly
                                             : kernels::Combine::kMul;
        detail::prepare_kernel_call(kernel, call, out, call.rows, combine, seed);
        Backend::run_rows(kernel.params, call.seed, out);
        return out;
      }
      case OpId::kAddPositionalTableBackward:
      case OpId::kEmbeddingBackward:
      case OpId::kEmbeddingTableBackward: {
        detail::prepare_kernel_call(kernel, call, call.rows, call.rows, call.options.combine,
                                    seed);
        kernels::StridedRows input;
        if (call.x.has_value() && call.options.combine == kernels::Combine::kMul) {
          input = detail::strided_rows(*call.x);
        }
        const ScatterTarget target = call.op == OpId::kEmbeddingBackward
                                         ? ScatterTarget::kWeight
                                         : ScatterTarget::kTable;
        Backend::scatter(kernel.params, input, target, call.seed, out, call);
        return out.to(call.dtype);
      }
      default:
        TORCH_INTERNAL_ASSERT(false);
    }
  }
}

inline kernels::RotaryOperand rotary_operand(const at::Tensor& in4, const at::Tensor& out4) {
  kernels::RotaryOperand op;
  op.in = in4.data_ptr();
  op.out = out4.data_ptr();
  op.heads = in4.size(2);
  for (int i = 0; i < 4; ++i) {
    op.in_strides[i] = in4.stride(i);
    op.out_strides[i] = out4.stride(i);
  }
  return op;
}

// q, k: [B, S, H, D] in the call's layout (or [tokens, H, D]) -> [q_out] or [q_out, k_out]
template <typename Backend>
std::vector<at::Tensor> run_rotary_call(const detail::RotaryCall& call) {
  std::vector<at::Tensor> outputs{at::empty_like(call.q)};
  if (call.k.has_value()) outputs.push_back(at::empty_like(*call.k));
  if constexpr (Backend::kRunsKernels) {
    detail::check_rotary_values(call, !Backend::kChecksValuesOnDevice);
    kernels::RotaryParams params;
    params.dtype = detail::kernel_dtype(call.q.scalar_type());
    params.batch = call.q4.size(0);
    params.seq_len = call.q4.size(1);
    params.head_dim = call.q4.size(3);
    params.rotary_dim = call.rotary_dim;
    params.interleaved = call.interleaved;
    params.inverse = call.inverse;
    params.attention_factor = call.attention_factor;
    params.offset = call.offset;
    // The kernel indexes positions by (b, s) strides, offsets and cu_seqlens with unit stride.
    if (call.positions.has_value()) {
      const at::Tensor& positions = *call.positions;
      params.positions = positions.data_ptr();
      params.positions_type = positions.scalar_type() == at::kLong ? kernels::IndexType::kInt64
                                                                   : kernels::IndexType::kInt32;
      // M-RoPE: a leading axis of 3 position rows, then the usual (B, S) / (S,) / (tokens,).
      const int axis_dims = call.mrope_section.empty() ? 0 : 1;
      const bool per_row = positions.dim() - axis_dims == 2;
      params.positions_strides[0] =
          per_row && positions.size(axis_dims) != 1 ? positions.stride(axis_dims) : 0;
      params.positions_strides[1] = positions.stride(positions.dim() - 1);
      if (axis_dims == 1) {
        params.mrope = true;
        params.mrope_interleaved = call.mrope_interleaved;
        for (int a = 0; a < kernels::kMropeAxes; ++a) {
          params.mrope_section[a] = call.mrope_section[a];
        }
        params.positions_axis_stride = positions.stride(0);
      }
    }
    at::Tensor offsets_dense, cu_dense;
    if (call.offsets.has_value()) {
      offsets_dense = call.offsets->contiguous();
      params.offsets = offsets_dense.data_ptr();
      params.offsets_type = offsets_dense.scalar_type() == at::kLong
                                ? kernels::IndexType::kInt64
                                : kernels::IndexType::kInt32;
    }
    if (call.cu_seqlens.has_value()) {
      cu_dense = call.cu_seqlens->contiguous();
      params.cu_seqlens = cu_dense.data_ptr();
      params.cu_seqlens_type = cu_dense.scalar_type() == at::kLong ? kernels::IndexType::kInt64
                                                                   : kernels::IndexType::kInt32;
      params.sequences = cu_dense.numel() - 1;
    }
    params.operands[0] =
        rotary_operand(call.q4, detail::rotary_bshd(outputs[0], call.layout));
    params.operand_count = 1;
    if (call.k.has_value()) {
      params.operands[1] =
          rotary_operand(*call.k4, detail::rotary_bshd(outputs[1], call.layout));
      params.operand_count = 2;
    }
    Backend::rotary(params, call);
  }
  return outputs;
}

// apply_rotary_pos_emb: q, k: [..., D]; cos, sin: broadcastable to q after unsqueeze.
template <typename Backend>
std::vector<at::Tensor> run_rotary_tables_call(const detail::RotaryTablesCall& call) {
  std::vector<at::Tensor> inputs{call.q};
  if (call.k.has_value()) inputs.push_back(*call.k);
  std::vector<at::Tensor> outputs;
  for (const at::Tensor& x : inputs) outputs.push_back(at::empty_like(x));
  if constexpr (Backend::kRunsKernels) {
    kernels::RotaryTableParams params;
    params.dtype = detail::kernel_dtype(call.q.scalar_type());
    params.transpose = call.transpose;
    // cos/sin are [B, S, D]-sized: converting their dtype once is cheap next to q and k.
    const at::Tensor cos_t = call.cos.to(call.q.scalar_type());
    const at::Tensor sin_t = call.sin.to(call.q.scalar_type());
    params.cos = cos_t.data_ptr();
    params.sin = sin_t.data_ptr();
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor& x = inputs[i];
      const at::Tensor& out = outputs[i];
      const at::Tensor cos_b = cos_t.unsqueeze(call.unsqueeze_dim).expand(x.sizes());
      const at::Tensor sin_b = sin_t.unsqueeze(call.unsqueeze_dim).expand(x.sizes());
      kernels::RotaryTableOperand& operand = params.operands[i];
      operand.in = x.data_ptr();
      operand.out = out.data_ptr();
      operand.ndim = static_cast<int>(x.dim());
      for (int64_t d = 0; d < x.dim(); ++d) {
        operand.sizes[d] = x.size(d);
        operand.in_strides[d] = x.stride(d);
        operand.out_strides[d] = out.stride(d);
        operand.cos_strides[d] = cos_b.stride(d);
        operand.sin_strides[d] = sin_b.stride(d);
      }
    }
    params.operand_count = static_cast<int>(inputs.size());
    Backend::rotary_tables(params, call.q);
  }
  return outputs;
}

// (inv_freq [dim / 2], attention_factor) on the CPU: float64, or float32 in transformers'
// precision.
std::tuple<at::Tensor, double> run_rope_frequencies_call(const detail::RopeFrequenciesCall& call);

// The boxed kernel of every posenc operator on `Backend`.
template <typename Backend>
void boxed_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/,
                  torch::jit::Stack* stack) {
  const detail::Arguments args(op, *stack);
  std::vector<c10::IValue> results;
  const OpId id = detail::op_id(op);
  switch (id) {
    case OpId::kRotary:
      results.emplace_back(run_rotary_call<Backend>(detail::parse_rotary_call(args)));
      break;
    case OpId::kRotaryTables:
      results.emplace_back(
          run_rotary_tables_call<Backend>(detail::parse_rotary_tables_call(args)));
      break;
    case OpId::kRopeFrequencies: {
      auto [inv_freq, attention_factor] =
          run_rope_frequencies_call(detail::parse_rope_frequencies_call(args));
      results.emplace_back(std::move(inv_freq));
      results.emplace_back(attention_factor);
      break;
    }
    default:
      results.emplace_back(run_row_call<Backend>(detail::parse_row_call(id, args)));
  }
  torch::jit::drop(*stack, op.schema().arguments().size());
  for (c10::IValue& result : results) stack->push_back(std::move(result));
}

}  // namespace impl
}  // namespace posenc
