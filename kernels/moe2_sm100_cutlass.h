/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_sm100_cutlass.h — the C face of the one translation unit that
 * includes CUTLASS (moe2_sm100_cutlass.cu, built only with EPMOE_CUTLASS=ON,
 * only for sm_100a): a grouped block-scaled NVFP4 x NVFP4 GEMM, one group per
 * local expert, problem sizes read on the device (capturable).
 *
 *   d[rows of group g, N] (fp32, row-major) = alpha0 * scale2[g] *
 *       a_g [counts[g], K] (NVFP4, K-major, 128x4 scales) .
 *       b_g [N, K]^T      (NVFP4, K-major, 128x4 scales)
 * Group g's rows start at row_offsets[g] (a multiple of 128: its scales start
 * a 128-row tile); its weights at b + g * b_expert_bytes, scales at
 * + b_sf_offset. The argument arrays and CUTLASS's workspace live in scratch
 * (EPM_MOE2_SM100_GROUP_BYTES per group + EPM_MOE2_SM100_CUTLASS_WS). */
#ifndef EPMOE_KERNELS_MOE2_SM100_CUTLASS_H
#define EPMOE_KERNELS_MOE2_SM100_CUTLASS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t groups, n, k;
  const int32_t *counts;      /* device [groups] */
  const int64_t *row_offsets; /* device [groups + 1] */
  const uint8_t *a, *a_sf;    /* tokens: [rows, K/2], 128x4 scales over [rows, round4(K/16)] */
  const uint8_t *b;           /* weights of group 0 */
  int64_t b_expert_bytes, b_sf_offset;
  const float *scale2; /* device [groups] */
  float alpha0;
  float *d;            /* [rows, N] */
  uint8_t *scratch;
  size_t scratch_bytes;
  int device, sm_count;
} epm_sm100_gemm_t;

epm_status_t epm__sm100_nvfp4_grouped(const epm_sm100_gemm_t *g, void *stream);

#ifdef __cplusplus
}
#endif
#endif
