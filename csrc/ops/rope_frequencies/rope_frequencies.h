// What the rotary family takes from rope_frequencies: transformers' float32 powers, built on
// torch, so that precision="transformers" matches transformers' frequencies to the last bit.
#pragma once

#include <vector>

#include "rope_scaling.h"

namespace posenc {
namespace rope {

// base^exponents with torch's float32 pow on a tensor of the same length, as transformers forms
// its frequencies.
kernels::Float32Powers torch_float32_powers();

// The default frequencies base^(-2i/r), i < r/2, in radians per position: in double, or
// transformers' float32 values (precision "transformers").
std::vector<double> default_frequencies(int64_t rotary_dim, double base, bool float32);

}  // namespace rope
}  // namespace posenc
