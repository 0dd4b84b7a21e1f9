// rule: wide_loads
// The defect: part of a row read element by element (2-byte loads, LDG.E.U16) beside its
// vector loads. The fix: every row element through the 16-byte loads.
#include <cstdint>

__global__ void bad_element_loads(const uint4* in, const uint16_t* tail, uint4* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint4 word = __ldcs(in + i);
    word.x += tail[i];
    __stcs(out + i, word);
  }
}

__global__ void good_vector_loads(const uint4* in, const uint4* more, uint4* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint4 word = __ldcs(in + i);
    const uint4 extra = __ldcs(more + i);
    word.x += extra.x;
    word.y += extra.y;
    word.z += extra.z;
    word.w += extra.w;
    __stcs(out + i, word);
  }
}
