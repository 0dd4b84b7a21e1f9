// The backends an operator family registers (CPU, CUDA, Meta) and what each does with a call:
// Meta computes output shapes only; CUDA checks index values on the device, where the kernels read
// them (reading them on the host would synchronise); the CPU reads them on the host. Also the
// thread pool the CPU kernels get and the stream the CUDA kernels launch on.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>

#include "common.h"

namespace posenc {
namespace core {

enum class Backend { kCpu, kCuda, kMeta };

constexpr bool runs_kernels(Backend backend) { return backend != Backend::kMeta; }
constexpr bool checks_values_on_device(Backend backend) { return backend == Backend::kCuda; }

// at::parallel_for as the kernels' ParallelFor: the one place the binding hands out threads
// (parallel.cpp, built with OpenMP as the whole library is).
kernels::ParallelFor parallel_for();

// The dropout seed's value on the host (CPU calls; 0 when absent).
uint64_t read_seed(const std::optional<at::Tensor>& seed);

// The current stream of `device` as its native handle (a cudaStream_t for CUDA), through c10's
// device-generic interface, so that no file of the binding needs CUDA headers.
void* current_stream(const at::Device& device);

// Raises when a CUDA launcher (kernels/cuda/<family>_launch.h) returned an error.
void check_launch(int status, const char* what);

}  // namespace core
}  // namespace posenc
