// The CUDA kernels built as host C++ from the same sources nvcc compiles, run by the emulation of
// cuda/emulation.h: the launchers of cuda_launch.h in namespace posenc::kernels::cuda_emulated.
#define POSENC_CUDA_NAMESPACE cuda_emulated
// NOLINTBEGIN(bugprone-suspicious-include): the same sources, on purpose
#include "cuda/add_positional.cu"
#include "cuda/launch.cu"
#include "cuda/rotary.cu"
#include "cuda/rotary_tables.cu"
#include "cuda/scatter.cu"
// NOLINTEND(bugprone-suspicious-include)
