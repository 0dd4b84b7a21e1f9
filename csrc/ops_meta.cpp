// Meta implementations: output shapes, dtypes and strides without data, so FakeTensor,
// torch.compile and torch.export can trace the operators. The same boxed kernel as the real
// backends, with the same argument checks (shape, dtype and device only) and no kernel launch.
#include <torch/library.h>

#include "call.h"
#include "ops_impl.h"

namespace posenc {
namespace {

struct MetaBackend {
  static constexpr bool kRunsKernels = false;
};

}  // namespace

TORCH_LIBRARY_IMPL(posenc, Meta, m) {
  for (const char* name : detail::kTensorOperators) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&impl::boxed_kernel<MetaBackend>>());
  }
}

}  // namespace posenc
