/* SPDX-License-Identifier: Apache-2.0 */
/* nvfp4_matrix.c — row-block quantize/dequantize of [rows, cols] matrices and
 * the linear <-> 128x4 swizzled scale layouts (spec/nvfp4-moe.md §1.4, §2).
 *
 * Quantization is the exact-division reference (FlashInfer ref_fp4_quant),
 * step by step in fp32 so that results are bit-identical to the reference
 * vectors in tests/data. No step has a multiply-add shape, so FMA contraction
 * cannot change a result.
 */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/nvfp4.h"

/* Rows x cols below which the OpenMP team is not worth starting. */
#define EPM__NVFP4_PAR_MIN ((int64_t)1 << 16)

/* ---- sizes and offsets --------------------------------------------------- */

static epm_status_t check_dims(const char *what, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: negative dims rows %lld, cols %lld", what,
                     (long long)rows, (long long)cols);
  if (cols % EPM_NVFP4_BLOCK != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: cols %lld is not a multiple of %d (rows %lld)", what,
                     (long long)cols, EPM_NVFP4_BLOCK, (long long)rows);
  int64_t n;
  if (epm_mul_i64(rows, cols, &n))
    return epm_error(EPM_ERR_OVERFLOW, "%s: rows %lld x cols %lld overflows int64", what,
                     (long long)rows, (long long)cols);
  return EPM_OK;
}

static epm_status_t to_size(const char *what, int64_t n, size_t *out) {
  if (n < 0 || (uint64_t)n > (uint64_t)SIZE_MAX)
    return epm_error(EPM_ERR_OVERFLOW, "%s: %lld bytes does not fit size_t", what, (long long)n);
  *out = (size_t)n;
  return EPM_OK;
}

int64_t epm_sf_offset_128x4(int64_t m, int64_t k, int64_t n_sf_cols) {
  int64_t k_tiles = (n_sf_cols + 3) / 4;
  return (m / 128) * (k_tiles * 512) + (k / 4) * 512 + (m % 32) * 16 + ((m % 128) / 32) * 4 + k % 4;
}

epm_status_t epm_nvfp4_packed_bytes(int64_t rows, int64_t cols, size_t *out) {
  EPM_TRY(check_dims("nvfp4 packed size", rows, cols));
  return to_size("nvfp4 packed size", rows * (cols / 2), out);
}

/* Swizzled scale bytes for a [rows, n_sf] scale matrix: pad128(rows) x pad4(n_sf). */
static epm_status_t swizzled_bytes(const char *what, int64_t rows, int64_t n_sf, size_t *out) {
  int64_t rp, kp, n;
  if (epm_round_up_i64(rows, 128, &rp) || epm_round_up_i64(n_sf, 4, &kp) || epm_mul_i64(rp, kp, &n))
    return epm_error(EPM_ERR_OVERFLOW, "%s: 128x4 scales of rows %lld x sf cols %lld overflow int64",
                     what, (long long)rows, (long long)n_sf);
  return to_size(what, n, out);
}

epm_status_t epm_nvfp4_sf_bytes(int64_t rows, int64_t cols, epm_sf_layout_t layout, size_t *out) {
  EPM_TRY(check_dims("nvfp4 scale size", rows, cols));
  int64_t n_sf = cols / EPM_NVFP4_BLOCK;
  switch (layout) {
    case EPM_SF_LINEAR:
      return to_size("nvfp4 scale size", rows * n_sf, out);
    case EPM_SF_SWIZZLED_128X4:
      return swizzled_bytes("nvfp4 scale size", rows, n_sf, out);
    default:
      return epm_error(EPM_ERR_INVALID_ARG, "nvfp4 scale size: unknown layout %d", (int)layout);
  }
}

/* ---- quantize ------------------------------------------------------------ */

/* One block of 16 inputs (already fp32) -> 8 packed bytes, returns the scale byte. */
static uint8_t quantize_block(const float v[EPM_NVFP4_BLOCK], float g, float g_inv, uint8_t *packed) {
  float vmax = 0.0f;
  for (int i = 0; i < EPM_NVFP4_BLOCK; i++) {
    float a = fabsf(v[i]);
    if (a > vmax) vmax = a; /* NaN compares false: ignored, like __hmax2 */
  }
  const float sixth = 1.0f / 6.0f;
  float per = vmax * sixth;
  uint8_t sf = epm_e4m3_from_f32(g * per);
  float sf_back = epm_e4m3_to_f32(sf);
  float s = 0.0f;
  if (sf_back != 0.0f) {
    float denom = sf_back * g_inv;
    s = 1.0f / denom;
  }
  /* e2m1 saturates at +-6, so the reference's clamp to [-6, 6] changes nothing. */
  for (int i = 0; i < EPM_NVFP4_BLOCK; i += 2) {
    uint8_t lo = epm_e2m1_from_f32(v[i] * s);
    uint8_t hi = epm_e2m1_from_f32(v[i + 1] * s);
    packed[i / 2] = (uint8_t)(lo | (hi << 4));
  }
  return sf;
}

static epm_status_t check_quant_args(const char *what, const void *x, int64_t rows, int64_t cols,
                                     float g, epm_sf_layout_t layout, const uint8_t *packed,
                                     const uint8_t *sf) {
  EPM_TRY(check_dims(what, rows, cols));
  if (layout != EPM_SF_LINEAR && layout != EPM_SF_SWIZZLED_128X4)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: unknown layout %d", what, (int)layout);
  if (!(g > 0.0f) || !isfinite(g))
    return epm_error(EPM_ERR_INVALID_ARG, "%s: global scale %g is not finite and > 0", what, (double)g);
  if (rows > 0 && cols > 0 && (!x || !packed || !sf))
    return epm_error(EPM_ERR_INVALID_ARG, "%s: NULL buffer for rows %lld x cols %lld", what,
                     (long long)rows, (long long)cols);
  return EPM_OK;
}

/* Scale (r, k) index in the chosen layout. */
static inline int64_t sf_index(epm_sf_layout_t layout, int64_t r, int64_t k, int64_t n_sf) {
  return layout == EPM_SF_LINEAR ? r * n_sf + k : epm_sf_offset_128x4(r, k, n_sf);
}

/* Zero the swizzled padding (rows >= rows and sf cols >= n_sf); the payload
 * bytes are all written by the row loop. Zeroing everything is simplest. */
static void zero_swizzled(uint8_t *sf, int64_t rows, int64_t n_sf) {
  size_t n = 0;
  if (swizzled_bytes("nvfp4", rows, n_sf, &n) == EPM_OK) memset(sf, 0, n);
}

/* Shared body of the two quantize entry points; the input element type only
 * changes how a block is loaded. */
static epm_status_t quantize(const char *what, const void *x, bool is_bf16, int64_t rows, int64_t cols,
                             float global_scale, epm_sf_layout_t layout, uint8_t *packed, uint8_t *sf) {
  EPM_TRY(check_quant_args(what, x, rows, cols, global_scale, layout, packed, sf));
  if (rows == 0 || cols == 0) return EPM_OK;
  const int64_t n_sf = cols / EPM_NVFP4_BLOCK;
  const float g_inv = 1.0f / global_scale;
  if (layout == EPM_SF_SWIZZLED_128X4) zero_swizzled(sf, rows, n_sf);
#pragma omp parallel for schedule(static) if (rows * cols >= EPM__NVFP4_PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    uint8_t *pr = packed + r * (cols / 2);
    for (int64_t k = 0; k < n_sf; k++) {
      const int64_t base = r * cols + k * EPM_NVFP4_BLOCK;
      float v[EPM_NVFP4_BLOCK];
      for (int i = 0; i < EPM_NVFP4_BLOCK; i++)
        v[i] = is_bf16 ? epm_bf16_to_f32(((const epm_bf16_t *)x)[base + i]) : ((const float *)x)[base + i];
      sf[sf_index(layout, r, k, n_sf)] = quantize_block(v, global_scale, g_inv, pr + k * 8);
    }
  }
  return EPM_OK;
}

epm_status_t epm_nvfp4_quantize_bf16(const epm_bf16_t *x, int64_t rows, int64_t cols, float global_scale,
                                     epm_sf_layout_t layout, uint8_t *packed, uint8_t *sf) {
  return quantize("epm_nvfp4_quantize_bf16", x, true, rows, cols, global_scale, layout, packed, sf);
}

epm_status_t epm_nvfp4_quantize_f32(const float *x, int64_t rows, int64_t cols, float global_scale,
                                    epm_sf_layout_t layout, uint8_t *packed, uint8_t *sf) {
  return quantize("epm_nvfp4_quantize_f32", x, false, rows, cols, global_scale, layout, packed, sf);
}

/* ---- dequantize ---------------------------------------------------------- */

epm_status_t epm_nvfp4_dequantize(const uint8_t *packed, const uint8_t *sf, int64_t rows, int64_t cols,
                                  float decode_scale, epm_sf_layout_t layout, float *out) {
  EPM_TRY(check_dims("epm_nvfp4_dequantize", rows, cols));
  if (layout != EPM_SF_LINEAR && layout != EPM_SF_SWIZZLED_128X4)
    return epm_error(EPM_ERR_INVALID_ARG, "epm_nvfp4_dequantize: unknown layout %d", (int)layout);
  if (rows == 0 || cols == 0) return EPM_OK;
  if (!packed || !sf || !out)
    return epm_error(EPM_ERR_INVALID_ARG, "epm_nvfp4_dequantize: NULL buffer for rows %lld x cols %lld",
                     (long long)rows, (long long)cols);
  const int64_t n_sf = cols / EPM_NVFP4_BLOCK;
#pragma omp parallel for schedule(static) if (rows * cols >= EPM__NVFP4_PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *pr = packed + r * (cols / 2);
    float *orow = out + r * cols;
    for (int64_t k = 0; k < n_sf; k++) {
      /* Order matters: fp32(sf * decode) first, then times the E2M1 value. */
      float scale = epm_e4m3_to_f32(sf[sf_index(layout, r, k, n_sf)]) * decode_scale;
      for (int64_t j = 0; j < EPM_NVFP4_BLOCK / 2; j++) {
        uint8_t byte = pr[k * 8 + j];
        orow[k * EPM_NVFP4_BLOCK + 2 * j] = epm_e2m1_to_f32((uint8_t)(byte & 0xF)) * scale;
        orow[k * EPM_NVFP4_BLOCK + 2 * j + 1] = epm_e2m1_to_f32((uint8_t)(byte >> 4)) * scale;
      }
    }
  }
  return EPM_OK;
}

/* ---- swizzle ------------------------------------------------------------- */

static epm_status_t check_sf_args(const char *what, int64_t rows, int64_t n_sf, const void *a,
                                  const void *b, size_t *swz_bytes) {
  if (rows < 0 || n_sf < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: negative dims rows %lld, sf cols %lld", what,
                     (long long)rows, (long long)n_sf);
  int64_t n;
  if (epm_mul_i64(rows, n_sf, &n))
    return epm_error(EPM_ERR_OVERFLOW, "%s: rows %lld x sf cols %lld overflows int64", what,
                     (long long)rows, (long long)n_sf);
  EPM_TRY(swizzled_bytes(what, rows, n_sf, swz_bytes));
  if (*swz_bytes > 0 && (!a || !b))
    return epm_error(EPM_ERR_INVALID_ARG, "%s: NULL buffer for rows %lld x sf cols %lld", what,
                     (long long)rows, (long long)n_sf);
  return EPM_OK;
}

epm_status_t epm_nvfp4_sf_swizzle(const uint8_t *linear, int64_t rows, int64_t n_sf_cols,
                                  uint8_t *swizzled) {
  size_t bytes = 0;
  EPM_TRY(check_sf_args("epm_nvfp4_sf_swizzle", rows, n_sf_cols, linear, swizzled, &bytes));
  if (bytes == 0) return EPM_OK;
  memset(swizzled, 0, bytes);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < n_sf_cols; k++)
      swizzled[epm_sf_offset_128x4(r, k, n_sf_cols)] = linear[r * n_sf_cols + k];
  return EPM_OK;
}

epm_status_t epm_nvfp4_sf_unswizzle(const uint8_t *swizzled, int64_t rows, int64_t n_sf_cols,
                                    uint8_t *linear) {
  size_t bytes = 0;
  EPM_TRY(check_sf_args("epm_nvfp4_sf_unswizzle", rows, n_sf_cols, swizzled, linear, &bytes));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < n_sf_cols; k++)
      linear[r * n_sf_cols + k] = swizzled[epm_sf_offset_128x4(r, k, n_sf_cols)];
  return EPM_OK;
}

/* ---- amax ---------------------------------------------------------------- */

float epm_amax_bf16(const epm_bf16_t *x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    float a = fabsf(epm_bf16_to_f32(x[i]));
    if (a > m) m = a; /* NaN ignored */
  }
  return m;
}

float epm_amax_f32(const float *x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (a > m) m = a;
  }
  return m;
}
