// The token grid the kernel tests share: 3 axes with cls tokens, uneven channel segments in a
// permuted axis order, crop origins and coordinate scales.
#pragma once

#include "position_code.h"

inline posenc::kernels::GridCode test_grid() {
  posenc::kernels::GridCode grid;
  grid.axis_count = 3;
  grid.extra_tokens = 2;
  const int64_t sizes[] = {2, 3, 5}, origins[] = {1, 4, 0};
  const double scales[] = {0.5, 1.25, 1.0};
  const int axes[] = {0, 2, 1};
  const int64_t ends[] = {6, 22, 38};  // D = 38
  for (int a = 0; a < 3; ++a) {
    grid.sizes[a] = sizes[a];
    grid.origins[a] = origins[a];
    grid.scales[a] = scales[a];
    grid.segment_axes[a] = axes[a];
    grid.segment_ends[a] = ends[a];
  }
  return grid;
}
