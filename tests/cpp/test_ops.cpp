// The operators through LibTorch and the dispatcher: results, autograd and errors from C++.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "posenc/ops.h"

TEST(Ops, Placeholder) { EXPECT_TRUE(true); }
