// The CUDA kernels built as host C++ from the same source nvcc compiles, run by the emulation
// of cuda/emulation.h: the launchers of cuda_launch.h in namespace posenc::kernels::cuda_emulated.
#define POSENC_CUDA_NAMESPACE cuda_emulated
#include "cuda/posenc_kernels.cu"  // NOLINT(bugprone-suspicious-include): the same source, on purpose
