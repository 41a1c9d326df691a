/* SPDX-License-Identifier: Apache-2.0 */
/* weights_check.c — value checks on checkpoint tensors (epmoe/weights.h):
 * E4M3 block scales, decode scales, finite router weights. One place, so the
 * loader and `epmoectl ckpt inspect` agree on what a good checkpoint is. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "epmoe/nvfp4.h"
#include "epmoe/weights.h"

static const char *e4m3_why(uint8_t b) {
  if ((b & 0x7f) == 0x7f) return "NaN";
  return "negative";
}

epm_status_t epm_check_block_scales(const char *file, const char *tensor, const uint8_t *sf, int64_t rows,
                                    int64_t cols) {
  if (rows <= 0 || cols <= 0) return EPM_OK;
  const size_t n = (size_t)rows * (size_t)cols; /* the caller's tensor holds exactly this many */
  size_t first = n, bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (sf[i] > EPM_E4M3_SCALE_MAX_BYTE) {
      if (first == n) first = i;
      bad++;
    }
  }
  if (!bad) return EPM_OK;
  const uint8_t b = sf[first];
  return epm_error(EPM_ERR_FORMAT,
                   "%s: tensor '%s': block scale [%lld, %lld] is 0x%02x (%s, %g); E4M3 block scales must be "
                   "0x00..0x%02x (finite, >= 0); %zu of %zu are bad",
                   file, tensor, (long long)(first / (size_t)cols), (long long)(first % (size_t)cols), b,
                   e4m3_why(b), (double)epm_e4m3_to_f32(b), EPM_E4M3_SCALE_MAX_BYTE, bad, n);
}

epm_status_t epm_check_decode_scale(const char *file, const char *tensor, float v) {
  if (isfinite(v) && v >= EPM_DECODE_SCALE_MIN && v <= EPM_DECODE_SCALE_MAX) return EPM_OK;
  return epm_error(EPM_ERR_FORMAT,
                   "%s: tensor '%s' = %g; a decode scale must be finite and in [%g, %g] (1/s and 6 x 448 x s "
                   "must be finite in fp32)",
                   file, tensor, (double)v, (double)EPM_DECODE_SCALE_MIN, (double)EPM_DECODE_SCALE_MAX);
}

/* "[2, 7]" for flat index i of t's shape. */
static const char *index_str(const epm_st_tensor_t *t, int64_t i, char *buf, size_t len) {
  int64_t idx[EPM_ST_MAX_RANK];
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = t->shape[d] ? i % t->shape[d] : 0;
    i = t->shape[d] ? i / t->shape[d] : 0;
  }
  return epm_st_shape_str(t->ndim, idx, buf, len);
}

epm_status_t epm_check_finite(const char *file, const epm_st_tensor_t *t) {
  if (t->dtype != EPM_ST_F32 && t->dtype != EPM_ST_BF16)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: tensor '%s' is %s; the finite check reads F32 or BF16", file,
                     t->name, epm_st_dtype_name(t->dtype));
  int64_t bad = 0, first = -1;
  float fv = 0.0f;
  for (int64_t i = 0; i < t->numel; i++) {
    uint32_t u = 0;
    if (t->dtype == EPM_ST_F32)
      memcpy(&u, t->data + 4 * i, 4); /* the file is little-endian, like every host we build for */
    else
      u = (uint32_t)(t->data[2 * i] | (t->data[2 * i + 1] << 8)) << 16;
    float v;
    memcpy(&v, &u, sizeof v);
    if (!isfinite(v)) {
      if (first < 0) {
        first = i;
        fv = v;
      }
      bad++;
    }
  }
  if (!bad) return EPM_OK;
  char ix[160];
  return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': element %s is %g; %lld of %lld elements are not finite", file,
                   t->name, index_str(t, first, ix, sizeof ix), (double)fv, (long long)bad, (long long)t->numel);
}
