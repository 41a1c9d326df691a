/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/plan_util.h — helpers shared by the kernels' pure-C plans. */
#ifndef EPMOE_KERNELS_PLAN_UTIL_H
#define EPMOE_KERNELS_PLAN_UTIL_H

#include <stdint.h>

#include "epmoe/kernels.h"

#define EPM__PLAN_BLOCK 256u
/* Grid-strided kernels need no more blocks than keep every SM busy many
 * times over; capping keeps grid.x far below its 2^31-1 limit. */
#define EPM__PLAN_GRID_CAP 65536

/* Blocks of EPM__PLAN_BLOCK threads for `work` items (>= 1, capped). */
static inline uint32_t epm__plan_grid(int64_t work) {
  int64_t g = (work + (int64_t)EPM__PLAN_BLOCK - 1) / (int64_t)EPM__PLAN_BLOCK;
  if (g < 1) g = 1;
  if (g > EPM__PLAN_GRID_CAP) g = EPM__PLAN_GRID_CAP;
  return (uint32_t)g;
}

#endif
