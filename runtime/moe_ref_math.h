/* SPDX-License-Identifier: Apache-2.0 */
/* moe_ref_math.h — private building blocks of the CPU reference (moe_ref*.c):
 * exact NVFP4 row decode and the fixed-order fp32 dot products whose order
 * include/epmoe/moe_ref.h documents. Not a public header. */
#ifndef EPMOE_MOE_REF_MATH_H
#define EPMOE_MOE_REF_MATH_H

#include <stdint.h>

#include "epmoe/moe_ref.h"

/* Decode `rows` NVFP4 rows of `cols` elements (cols % 16 == 0) to the exact
 * values e2m1(code) * e4m3(sf) (no global scale), row stride cols in out.
 * packed/sf are the linear layout with row strides cols/2 and cols/16. */
void epm__nvfp4_decode_exact(const uint8_t *packed, const uint8_t *sf, int64_t rows, int64_t cols,
                             float *out);

/* out[r] = dot(a, w + r*ld) over n elements (n % 8 == 0) for r < nrows, each
 * with eight strided fp32 partial sums combined as
 * ((p0+p4)+(p2+p6)) + ((p1+p5)+(p3+p7)). */
void epm__dot_rows(const float *a, const float *w, int64_t ld, int64_t nrows, int64_t n, float *out);

/* One expert of bank b (local index e) on n exact-decoded input rows
 * a [n, H]: steps 3-9 of include/epmoe/moe_ref.h into y [n, H] (bf16-rounded
 * when y_bf16). Adds its stage times to tm (may be NULL). */
epm_status_t epm__expert_forward(const epm_expert_bank_t *b, int64_t e, const float *a, int64_t n, float a1,
                                 float g_mid, float d_mid, int y_bf16, int nthreads, float *y,
                                 epm_moe_ref_timing_t *tm);
/* Shape/pointer/scale checks of a bank whose rows are `hidden` wide. */
epm_status_t epm__bank_check(const char *what, const epm_expert_bank_t *b, int64_t hidden);
/* G_mid and its decode scale from down_input_scale or an override (> 0). */
epm_status_t epm__mid_scales(float down_input_scale, float override_g, float *g_mid, float *d_mid);

#endif
