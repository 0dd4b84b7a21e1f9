// Fresh output pages made writable ahead of the row loops that fill them (Linux; elsewhere a
// no-op).
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "cpu/row_kernels.h"

// Linux 5.14; an older kernel answers EINVAL, and the loop then takes its faults as before.
#if defined(__linux__) && !defined(MADV_POPULATE_WRITE)
#define MADV_POPULATE_WRITE 23
#endif

namespace posenc {
namespace kernels {
namespace cpu {

void populate_fresh_pages(void* data, int64_t bytes) {
#if defined(__linux__)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (bytes <= 0 || page == 0) return;
  // Whole pages only, so that no memory outside the range is touched.
  const uintptr_t first = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(page - 1);
  if (end <= first) return;
  // Resident already (a reused allocation): populating would only walk present pages, which
  // costs more than it saves (docs/performance.md).
  unsigned char resident = 1;
  if (mincore(reinterpret_cast<void*>(first), page, &resident) != 0 || (resident & 1) != 0) return;
  // A hint: on failure the stores fault the pages in one by one, as they would without it.
  (void)madvise(reinterpret_cast<void*>(first), end - first, MADV_POPULATE_WRITE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace cpu
}  // namespace kernels
}  // namespace posenc
