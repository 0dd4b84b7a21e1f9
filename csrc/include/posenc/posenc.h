// posenc's public C++ API: every operator, forward and backward, with an options struct whose
// defaults match Python's (builder style, like torch::nn::functional options); the modules are in
// posenc/nn.h. Every call goes through the dispatcher, so autograd, CPU, CUDA and Meta all apply
// exactly as from torch.ops.posenc in Python, with the same argument checks.
//
//   #include <posenc/posenc.h>
//   auto y = posenc::add_positional(x, posenc::AddPositionalOptions().dropout(0.1));
//   auto h = posenc::embedding(ids, weight, posenc::EmbeddingOptions().padding_idx(0));
//   auto qk = posenc::rotary(q, k, posenc::RotaryOptions().offset(128));
#pragma once

#include "posenc/add_positional.h"
#include "posenc/attention_bias.h"
#include "posenc/embedding.h"
#include "posenc/options.h"
#include "posenc/positional_encoding.h"
#include "posenc/rope_frequencies.h"
#include "posenc/rotary.h"
#include "posenc/rotary_tables.h"

// The library's ABI version. A program that uses the operators only through the dispatcher
// (a TorchScript or AOTInductor model) calls it once, so that the linker keeps libposenc, whose
// loading registers the operators.
extern "C" int posenc_library_abi_version();
