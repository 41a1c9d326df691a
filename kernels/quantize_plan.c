/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/quantize_plan.c — sizes and grid of the NVFP4 quantize kernel. */
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/kernels.h"
#include "plan_util.h"

epm_status_t epm_quantize_plan(int64_t rows, int64_t cols, epm_sf_layout_t layout,
                               epm_quantize_plan_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "quantize plan: out is NULL");
  memset(out, 0, sizeof *out);
  if (rows < 0) return epm_error(EPM_ERR_INVALID_ARG, "quantize: rows = %lld < 0", (long long)rows);
  if (cols <= 0 || cols % EPM_NVFP4_BLOCK != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "quantize: cols = %lld must be a positive multiple of 16",
                     (long long)cols);
  if (layout != EPM_SF_LINEAR && layout != EPM_SF_SWIZZLED_128X4)
    return epm_error(EPM_ERR_INVALID_ARG, "quantize: unknown scale layout %d", (int)layout);
  int64_t elems = 0, x_bytes = 0;
  if (epm_mul_i64(rows, cols, &elems) || epm_mul_i64(elems, 2, &x_bytes))
    return epm_error(EPM_ERR_OVERFLOW, "quantize: %lld rows x %lld cols x 2 bytes overflows int64",
                     (long long)rows, (long long)cols);
  /* Swizzled scales: rows padded to 128, scale columns to 4 (spec §2.2). */
  int64_t sf = elems / EPM_NVFP4_BLOCK;
  if (layout == EPM_SF_SWIZZLED_128X4) {
    int64_t prow = 0, pcol = 0;
    if (epm_round_up_i64(rows, 128, &prow) || epm_round_up_i64(cols / EPM_NVFP4_BLOCK, 4, &pcol) ||
        epm_mul_i64(prow, pcol, &sf))
      return epm_error(EPM_ERR_OVERFLOW, "quantize: swizzled scales of %lld x %lld overflow int64",
                       (long long)rows, (long long)cols);
  }
  out->rows = rows;
  out->cols = cols;
  out->layout = layout;
  out->blocks = elems / EPM_NVFP4_BLOCK;
  out->x_bytes = (size_t)x_bytes;
  out->packed_bytes = (size_t)(elems / 2);
  out->sf_bytes = (size_t)sf;
  out->block = EPM__PLAN_BLOCK;
  out->grid = epm__plan_grid(out->blocks);
  return EPM_OK;
}
