/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/nvfp4.h — the NVFP4 number format on the host (spec/nvfp4-moe.md §1–§2).
 *
 * An NVFP4 tensor [rows, cols] (cols % 16 == 0) is
 *   packed  uint8 [rows, cols/2]   E2M1 codes, element 2j in the LOW nibble of byte j
 *   sf      uint8 [rows, cols/16]  one E4M3 (fn) block scale per 16 elements, linear
 *                                  layout, or the 128x4 swizzled layout (padded)
 *   one fp32 global scale: the encode scale G = 448*6/amax used to quantize,
 *   whose inverse (the "decode scale", ModelOpt input_scale/weight_scale_2) dequantizes.
 * Quantization follows the exact-division reference (FlashInfer ref_fp4_quant),
 * so results are bit-identical to FlashInfer's reference vectors.
 *
 * All element counts are int64_t, byte sizes size_t. Functions are pure and
 * thread-safe.
 */
#ifndef EPMOE_NVFP4_H
#define EPMOE_NVFP4_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/bf16.h" /* epm_bf16_t, epm_bf16_from_f32 / epm_bf16_to_f32 */
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_NVFP4_BLOCK 16      /* elements per E4M3 block scale */
#define EPM_E2M1_MAX 6.0f
#define EPM_E4M3_MAX 448.0f

/* ---- scalars ---------------------------------------------------------- */
/* bf16 <-> fp32 are the inline ones of epmoe/bf16.h (round to nearest even;
 * NaN stays a quiet NaN). */

/* E2M1: round to nearest even, saturating to +-6 (+-Inf -> 0x7/0xF). Equal to
 * __nv_cvt_float2_to_fp4x2(..., __NV_E2M1, cudaRoundNearest) on every float
 * except two documented choices (asserted exactly by test_nvfp4_nvidia):
 *   -0 and negatives that round to zero, [-0.25, -0]: 0x0 here, NVIDIA 0x8;
 *   NaN: 0x0 here (contributes nothing), NVIDIA 0x7 (= +6).
 * Both are equal to FlashInfer's reference (which compares decoded values). */
uint8_t epm_e2m1_from_f32(float x);
float epm_e2m1_to_f32(uint8_t code); /* low 4 bits used; 0x8 decodes to -0 */

/* E4M3 (fn): round to nearest even, saturating to +-448 (+-Inf -> 0x7E/0xFE);
 * NaN of either sign -> 0x7F; a finite input never gives NaN; the sign of zero
 * is kept (-0 -> 0x80). Identical to __nv_cvt_float_to_fp8(x, __NV_SATFINITE,
 * __NV_E4M3) on all 2^32 floats. Decode: 0x7F/0xFF -> NaN, subnormals m*2^-9. */
uint8_t epm_e4m3_from_f32(float x);
float epm_e4m3_to_f32(uint8_t b);

/* Global scale: encode G = 448*6/amax (amax <= 0 or not finite -> 1.0f), and
 * the decode scale 1/G that ModelOpt stores. */
float epm_nvfp4_global_scale(float amax);
float epm_nvfp4_decode_scale(float global_scale);

/* ---- layouts ---------------------------------------------------------- */
typedef enum {
  EPM_SF_LINEAR = 0,      /* [rows, cols/16] row-major, no padding */
  EPM_SF_SWIZZLED_128X4 = 1 /* 512-byte tiles, rows padded to 128, sf cols to 4, padding 0 */
} epm_sf_layout_t;

/* Byte offset of scale (m, k) in the 128x4 layout with n_sf_cols = cols/16. */
int64_t epm_sf_offset_128x4(int64_t m, int64_t k, int64_t n_sf_cols);

/* Sizes in bytes (overflow-checked; EPM_ERR_OVERFLOW / EPM_ERR_INVALID_ARG name the dims). */
epm_status_t epm_nvfp4_packed_bytes(int64_t rows, int64_t cols, size_t *out);
epm_status_t epm_nvfp4_sf_bytes(int64_t rows, int64_t cols, epm_sf_layout_t layout, size_t *out);

/* ---- matrices --------------------------------------------------------- */
/* Quantize x [rows, cols] (cols % 16 == 0) with encode scale G (finite, > 0)
 * into packed [rows, cols/2] and sf (layout as given; swizzled padding written
 * as 0). Per block of 16: vmax = max|x|; sf = e4m3(G * fp32(vmax * fp32(1/6)));
 * s = sf ? 1/(sf * fp32(1/G)) : 0; code = e2m1(x * s). A block whose scale
 * underflows to 0 has an all-zero payload. NaN elements are ignored for vmax
 * and encode as 0x0; +-Inf makes vmax Inf, so the block scale saturates to 448
 * (0x7E), Inf encodes as +-6 and the block's finite values mostly to 0.
 * Rows run in parallel with OpenMP when it is built in. */
epm_status_t epm_nvfp4_quantize_bf16(const epm_bf16_t *x, int64_t rows, int64_t cols,
                                     float global_scale, epm_sf_layout_t layout,
                                     uint8_t *packed, uint8_t *sf);
epm_status_t epm_nvfp4_quantize_f32(const float *x, int64_t rows, int64_t cols,
                                    float global_scale, epm_sf_layout_t layout,
                                    uint8_t *packed, uint8_t *sf);
/* Dequantize: out[r,c] = e2m1(code) * fp32(e4m3(sf) * decode_scale). */
epm_status_t epm_nvfp4_dequantize(const uint8_t *packed, const uint8_t *sf, int64_t rows,
                                  int64_t cols, float decode_scale, epm_sf_layout_t layout,
                                  float *out);
/* Linear [rows, n_sf_cols] <-> 128x4 swizzled (padding zeroed / ignored). */
epm_status_t epm_nvfp4_sf_swizzle(const uint8_t *linear, int64_t rows, int64_t n_sf_cols,
                                  uint8_t *swizzled);
epm_status_t epm_nvfp4_sf_unswizzle(const uint8_t *swizzled, int64_t rows, int64_t n_sf_cols,
                                    uint8_t *linear);

/* amax = max |x| over n elements, NaN ignored. */
float epm_amax_bf16(const epm_bf16_t *x, int64_t n);
float epm_amax_f32(const float *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_NVFP4_H */
