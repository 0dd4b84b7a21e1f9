// rule: loads_before_use
// The defect: each row loaded, combined and stored before the next row's load issues (out may
// alias in, so the compiler cannot move the next load above the store): 16 bytes in flight a
// thread. The fix: the rows' loads issued together into registers, then combined and stored.
#include <cstdint>

__global__ void bad_serial_rows(const uint4* in, uint4* out, long stride, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      uint4 word = __ldcs(in + i + r * stride);
      word.x += 1;
      __stcs(out + i + r * stride, word);
    }
  }
}

__global__ void good_rows_in_flight(const uint4* in, uint4* out, long stride, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint4 words[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) words[r] = __ldcs(in + i + r * stride);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      words[r].x += 1;
      __stcs(out + i + r * stride, words[r]);
    }
  }
}
