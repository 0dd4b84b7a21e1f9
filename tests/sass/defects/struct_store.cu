// rule: wide_stores
// The defect: rows stored as a struct of eight 16-bit elements (2-byte aligned) or as a plain
// uint4 assignment: the compiler splits them into 2-byte or 4-byte stores. The fix: one 16-byte
// word through __stcs (STG.E.EF.128).
#include <cstdint>

struct Half8 {
  uint16_t v[8];
};

__global__ void bad_struct_store(const uint4* in, Half8* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint4 word = __ldcs(in + i);
    Half8 h;
    __builtin_memcpy(&h, &word, sizeof(h));
    for (int k = 0; k < 8; ++k) h.v[k] = static_cast<uint16_t>(h.v[k] + 1);
    out[i] = h;
  }
}

__global__ void good_vector_store(const uint4* in, uint4* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint4 word = __ldcs(in + i);
    word.x += 1;
    word.w += 1;
    __stcs(out + i, word);
  }
}
