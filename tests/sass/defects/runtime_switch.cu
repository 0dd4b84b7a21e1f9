// rule: no_calls
// The defect: the combine chosen by a runtime switch inside the row loop (an indirect branch,
// BRX), or a helper the compiler does not inline (CALL). The fix: the combine as a template
// argument, resolved at compile time.
#include <cstdint>

__device__ __noinline__ float slow_combine(float x, float y) { return x * y + 1.0f; }

__device__ __forceinline__ float combine(int op, float x, float y) {
  switch (op) {
    case 0: return x + y;
    case 1: return x * y;
    case 2: return x - y;
    case 3: return y;
    case 4: return x * 2.0f + y;
    case 5: return x * 3.0f - y;
    default: return x;
  }
}

__global__ void bad_runtime_switch(const float4* in, float4* out, const int* ops, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float4 v = __ldcs(in + i);
    const int op = ops[i];
    v.x = combine(op, v.x, v.y);
    v.z = combine(op, v.z, v.w);
    __stcs(out + i, v);
  }
}

__global__ void bad_call(const float4* in, float4* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float4 v = __ldcs(in + i);
    v.x = slow_combine(v.x, v.y);
    __stcs(out + i, v);
  }
}

template <int kOp>
__global__ void good_template(const float4* in, float4* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float4 v = __ldcs(in + i);
    v.x = combine(kOp, v.x, v.y);
    v.z = combine(kOp, v.z, v.w);
    __stcs(out + i, v);
  }
}

template __global__ void good_template<1>(const float4*, float4*, int);
