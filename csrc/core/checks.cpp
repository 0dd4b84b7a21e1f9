// Checks shared by every operator family (see checks.h).
#include "core/checks.h"

#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace posenc {
namespace core {

bool is_supported_float(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kBFloat16 || type == at::kHalf;
}

kernels::DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return kernels::DType::kFloat32;
    case at::kDouble:
      return kernels::DType::kFloat64;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    case at::kHalf:
      return kernels::DType::kFloat16;
    default:
      TORCH_INTERNAL_ASSERT(false, "posenc: unchecked dtype ", type);
  }
}

kernels::IndexType kernel_index_type(at::ScalarType type) {
  TORCH_INTERNAL_ASSERT(type == at::kLong || type == at::kInt, "posenc: unchecked index dtype");
  return type == at::kLong ? kernels::IndexType::kInt64 : kernels::IndexType::kInt32;
}

void check_same_device(const char* op, const at::Tensor& main, const char* main_name,
                       const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.device() == main.device(), op, ": ", name, " must be on the device of ",
              main_name, " (", main.device(), "), got ", other.device());
}

void check_index_tensor(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                   " must be an int64 or int32 tensor, got ", t.scalar_type());
}

void check_float_tensor(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name,
                   " must be a floating tensor (", kFloatTypes, "), got ", t.scalar_type());
}

void check_rows_tensor(const char* op, const at::Tensor& x, const char* name) {
  check_float_tensor(op, x, name);
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.dim() <= kernels::kMaxBatchDims + 2, op, ": ", name,
                    " must have shape (..., T, D) with 2 to ", kernels::kMaxBatchDims + 2,
                    " dimensions, got ", x.dim(), " dimension(s)");
}

void check_buffer_size(const char* op, const char* name, int64_t count, int64_t width) {
  TORCH_CHECK_VALUE(count >= 0, op, ": ", name, " must be >= 0, got ", count);
  const int64_t limit = kInt64Max / 8 / std::max<int64_t>(width, 1);
  TORCH_CHECK_VALUE(count <= limit, op, ": ", name, " = ", count,
                    " is too large: the output would have more than 2^60 bytes");
}

void check_output_fits(const char* op, const std::string& what, c10::SymIntArrayRef sizes,
                       const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return;
  const long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_bytes <= 0) return;
  uint64_t bytes = c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  bool overflow = false;
  for (const c10::SymInt& size : sizes) {
    const std::optional<int64_t> value = size.maybe_as_int();
    if (!value.has_value()) return;  // symbolic: the allocation checks it
    overflow |= __builtin_mul_overflow(bytes, static_cast<uint64_t>(*value), &bytes);
  }
  const uint64_t memory = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_bytes);
  TORCH_CHECK_VALUE(!overflow && bytes <= memory, op, ": ", what,
                    " is too large: an output of shape ", sizes, " needs ",
                    overflow ? std::string("more than 2^64") : std::to_string(bytes),
                    " bytes, more than this machine's memory (", memory, " bytes)");
}

std::pair<int64_t, int64_t> value_range(const at::Tensor& t) {
  const auto [low, high] = at::aminmax(t);
  return {low.item<int64_t>(), high.item<int64_t>()};
}

std::vector<c10::SymInt> with_last(c10::SymIntArrayRef sizes, const c10::SymInt& last) {
  std::vector<c10::SymInt> result(sizes.begin(), sizes.end());
  result.push_back(last);
  return result;
}

kernels::PositionKind parse_kind(const char* op, std::string_view kind) {
  if (kind == "sinusoidal") return kernels::PositionKind::kSinusoidal;
  if (kind == "linear") return kernels::PositionKind::kLinear;
  if (kind == "damped") return kernels::PositionKind::kDamped;
  if (kind == "cosine") return kernels::PositionKind::kCosine;
  if (kind == "learned") return kernels::PositionKind::kLearned;
  TORCH_CHECK_VALUE(false, op, ": kind must be one of 'sinusoidal', 'linear', 'damped', ",
                    "'cosine', 'learned', got '", kind, "'");
}

kernels::Combine parse_combine(const char* op, std::string_view combine) {
  if (combine == "add") return kernels::Combine::kAdd;
  if (combine == "mul") return kernels::Combine::kMul;
  TORCH_CHECK_VALUE(false, op, ": combine must be 'add' or 'mul', got '", combine, "'");
}

kernels::Convention parse_convention(const char* op, std::string_view convention) {
  if (convention == "vaswani") return kernels::Convention::kVaswani;
  if (convention == "tensor2tensor") return kernels::Convention::kTensor2Tensor;
  TORCH_CHECK_VALUE(false, op, ": convention must be 'vaswani' or 'tensor2tensor', got '",
                    convention, "'");
}

kernels::Layout parse_layout(const char* op, std::string_view layout) {
  if (layout == "interleaved") return kernels::Layout::kInterleaved;
  if (layout == "concat") return kernels::Layout::kConcat;
  if (layout == "concat_cos_first") return kernels::Layout::kConcatCosFirst;
  TORCH_CHECK_VALUE(false, op,
                    ": layout must be 'interleaved', 'concat' or 'concat_cos_first', got '", layout,
                    "'");
}

void check_base(const char* op, double base) {
  TORCH_CHECK_VALUE(std::isfinite(base) && base > 0.0, op,
                    ": base must be a finite number > 0, got ", base);
}

Precision parse_precision(const char* op, std::string_view precision) {
  if (precision == "exact") return Precision::kExact;
  if (precision == "transformers") return Precision::kTransformers;
  TORCH_CHECK_VALUE(false, op, ": precision must be 'exact' or 'transformers', got '", precision,
                    "'");
}

}  // namespace core
}  // namespace posenc
