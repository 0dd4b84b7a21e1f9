// rule: resources
// The defect: a per-thread array indexed with a runtime value lives in local memory (stack,
// LDL/STL). The fix: indices known at compile time (unrolled loops), so the array stays in
// registers.
#include <cstdint>

__global__ void bad_local_array(const float4* in, float4* out, const int* pick, int picks,
                                int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float codes[64];
    const float4 v = __ldcs(in + i);
#pragma unroll
    for (int k = 0; k < 64; ++k) codes[k] = v.y * static_cast<float>(k);
    for (int j = 0; j < picks; ++j) codes[pick[j] & 63] += v.x;  // runtime indices
    float4 y = v;
    for (int j = 0; j < picks; ++j) y.y += codes[pick[j] & 63];
    __stcs(out + i, y);
  }
}

__global__ void good_registers(const float4* in, float4* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float codes[16];
    const float4 v = __ldcs(in + i);
#pragma unroll
    for (int k = 0; k < 16; ++k) codes[k] = v.x * static_cast<float>(k);
    float4 y = v;
    y.y = codes[3] + codes[15];
    __stcs(out + i, y);
  }
}
