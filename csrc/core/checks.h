// Checks shared by every operator family: dtypes and their kernel enums, tensor kinds, devices,
// sizes, and the option strings parsed into enums once, at the boundary. Messages name the
// operator and the user's argument.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common.h"
#include "position_code.h"
#include "positional.h"

namespace posenc {
namespace core {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr const char* kFloatTypes = "float32, float64, bfloat16 or float16";

// float32, float64, bfloat16 or float16: the dtypes the kernels compute.
bool is_supported_float(at::ScalarType type);
kernels::DType kernel_dtype(at::ScalarType type);
kernels::IndexType kernel_index_type(at::ScalarType type);

void check_same_device(const char* op, const at::Tensor& main, const char* main_name,
                       const at::Tensor& other, const char* name);
// An int64 or int32 tensor.
void check_index_tensor(const char* op, const at::Tensor& t, const char* name);
// A tensor of a supported float dtype.
void check_float_tensor(const char* op, const at::Tensor& t, const char* name);
// x: [..., T, D] with 2 to kMaxBatchDims + 2 dimensions, a supported float dtype.
void check_rows_tensor(const char* op, const at::Tensor& x, const char* name);

// count >= 0 and a [count, width] buffer of 8-byte elements addressable in int64 bytes.
void check_buffer_size(const char* op, const char* name, int64_t count, int64_t width);

// Refuses, before allocation, a CPU output of `sizes` that exceeds physical memory (or 2^64
// bytes): a ValueError naming `what` ("dim = 5000000000"), the arguments that sized it.
void check_output_fits(const char* op, const std::string& what, c10::SymIntArrayRef sizes,
                       const at::TensorOptions& options);

// The smallest and largest value of an integer tensor with elements (reads its data).
std::pair<int64_t, int64_t> value_range(const at::Tensor& t);

std::vector<c10::SymInt> with_last(c10::SymIntArrayRef sizes, const c10::SymInt& last);

// ---- option strings -------------------------------------------------------------------------

kernels::PositionKind parse_kind(const char* op, std::string_view kind);
kernels::Combine parse_combine(const char* op, std::string_view combine);
kernels::Convention parse_convention(const char* op, std::string_view convention);
kernels::Layout parse_layout(const char* op, std::string_view layout);
void check_base(const char* op, double base);

// "exact": angles reduced exactly in double (within 2e-6 of float64 below 2^24).
// "transformers": transformers' float32 frequencies and float32 angles pos * inv_freq.
enum class Precision { kExact, kTransformers };
Precision parse_precision(const char* op, std::string_view precision);

}  // namespace core
}  // namespace posenc
