/* SPDX-License-Identifier: Apache-2.0 */
/* test_nvfp4_quant: block quantization by hand-computed vectors and edge cases
 * (zero blocks, scale underflow, saturation above the calibrated amax, -0,
 * Inf/NaN rows) and a round-trip error bound on Gaussian data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/nvfp4.h"
#include "testutil.h"

/* Quantize one f32 block of 16 with G, linear layout. */
static uint8_t quant16(const float x[16], float g, uint8_t packed[8]) {
  uint8_t sf = 0xEE;
  assert_int_equal(epm_nvfp4_quantize_f32(x, 1, 16, g, EPM_SF_LINEAR, packed, &sf), EPM_OK);
  return sf;
}

static unsigned nib(const uint8_t *packed, int i) { return (unsigned)(packed[i / 2] >> (4 * (i & 1))) & 0xFu; }

/* G = 1 and block amax 6: the scale is exactly 1.0 (E4M3 0x38), so the codes
 * are the plain E2M1 roundings of x, including every tie. */
static void test_hand_unit_scale(void **state) {
  (void)state;
  const float x[16] = {6.0f, 3.0f, -1.5f, 0.5f, 0.25f, 0.75f, 1.25f, 1.75f,
                       2.5f, 3.5f, 5.0f,  -0.1f, 4.0f, 2.0f,  1.0f,  -6.0f};
  /* by the table 0,.5,1,1.5,2,3,4,6 and ties to even mantissa */
  const uint8_t codes[16] = {0x7, 0x5, 0xB, 0x1, 0x0, 0x2, 0x2, 0x4, 0x4, 0x6, 0x6, 0x0, 0x6, 0x4, 0x2, 0xF};
  uint8_t p[8];
  uint8_t sf = quant16(x, 1.0f, p);
  assert_int_equal(sf, 0x38); /* 1.0 = 2^0: exponent field 7, mantissa 0 */
  for (int i = 0; i < 16; i++) assert_int_equal(nib(p, i), codes[i]);
  assert_int_equal(p[0], 0x57); /* element 0 in the low nibble */
  assert_int_equal(p[7], 0xF2);
  float out[16];
  assert_int_equal(epm_nvfp4_dequantize(p, &sf, 1, 16, 1.0f, EPM_SF_LINEAR, out), EPM_OK);
  const float deq[16] = {6, 3, -1.5f, 0.5f, 0, 1, 1, 2, 2, 4, 4, 0, 4, 2, 1, -6};
  for (int i = 0; i < 16; i++) assert_true(out[i] == deq[i]);
}

/* G = 0.125 (amax 21504, as in the reference bundle), block amax 10:
 *   sf_f32 = 0.125 * fp32(10 * fp32(1/6)) = 0.2083333  -> E4M3 1.625*2^-3 = 0.203125
 *            (1.6667 is nearer 1.625 than 1.75), byte = exp 4, mant 5 = 0x25
 *   s = 1 / (0.203125 * fp32(1/0.125) = 1.625) = 0.61538464
 *   10*s = 6.15 -> 6 (0x7);  5*s = 3.08 -> 3 (0x5);  2*s = 1.23 -> 1 (0x2);
 *   2.1*s = 1.29 -> 1.5 (0x3);  -0.4*s = -0.246 -> 0 (0x0);  -0.41*s = -0.2523 -> -0.5 (0x9)
 * dequant: e2m1 * fp32(0.203125 * 8) = e2m1 * 1.625. */
static void test_hand_scaled(void **state) {
  (void)state;
  float x[16] = {10.0f, 5.0f, 2.0f, 2.1f, -0.4f, -0.41f};
  uint8_t p[8];
  uint8_t sf = quant16(x, 0.125f, p);
  assert_int_equal(sf, 0x25);
  const uint8_t codes[6] = {0x7, 0x5, 0x2, 0x3, 0x0, 0x9};
  for (int i = 0; i < 6; i++) assert_int_equal(nib(p, i), codes[i]);
  for (int i = 6; i < 16; i++) assert_int_equal(nib(p, i), 0);
  float out[16];
  assert_int_equal(epm_nvfp4_dequantize(p, &sf, 1, 16, 8.0f, EPM_SF_LINEAR, out), EPM_OK);
  assert_true(out[0] == 9.75f && out[1] == 4.875f && out[2] == 1.625f && out[3] == 2.4375f);
  assert_true(out[5] == -0.8125f);
}

static void test_zero_block_and_negative_zero(void **state) {
  (void)state;
  float x[32] = {0};
  for (int i = 16; i < 32; i++) x[i] = -0.0f;
  uint8_t p[16], sf[2];
  memset(p, 0xFF, sizeof p);
  assert_int_equal(epm_nvfp4_quantize_f32(x, 1, 32, 0.125f, EPM_SF_LINEAR, p, sf), EPM_OK);
  assert_int_equal(sf[0], 0x00);
  assert_int_equal(sf[1], 0x00); /* |-0| = 0: a +0 scale, not 0x80 */
  for (int i = 0; i < 16; i++) assert_int_equal(p[i], 0x00); /* never 0x8 */
  float out[32];
  assert_int_equal(epm_nvfp4_dequantize(p, sf, 1, 32, 8.0f, EPM_SF_LINEAR, out), EPM_OK);
  for (int i = 0; i < 32; i++) assert_true(out[i] == 0.0f);
  /* A negative value that rounds to 0 next to a large one: code 0x0. */
  float y[16] = {6.0f, -0.2f, -1e-30f};
  uint8_t q[8];
  quant16(y, 1.0f, q);
  assert_int_equal(nib(q, 1), 0x0);
  assert_int_equal(nib(q, 2), 0x0);
}

/* Block scale below half the smallest E4M3 subnormal (2^-10) rounds to 0 and
 * the whole block's payload is 0, even for non-zero inputs. */
static void test_scale_underflow(void **state) {
  (void)state;
  const float g = 0.125f;
  uint8_t p[8];
  float x[16] = {1e-5f, -1e-5f, 3e-6f};
  assert_int_equal(quant16(x, g, p), 0x00);
  for (int i = 0; i < 8; i++) assert_int_equal(p[i], 0);
  /* Exactly 2^-10 is a tie between 0 and 2^-9: even -> 0. vmax = 2^-10*6/G. */
  float t[16] = {0x1p-10f * 6.0f / g};
  /* 0.046875 * fp32(1/6) is 2^-7 after fp32 rounding, so the scale input is
   * exactly the tie 2^-10. */
  assert_true(g * (t[0] * (1.0f / 6.0f)) == 0x1p-10f);
  assert_int_equal(quant16(t, g, p), 0x00);
  /* Just above the tie: the smallest subnormal scale 2^-9 (0x01). */
  float u[16] = {0x1.2p-10f * 6.0f / g};
  assert_int_equal(quant16(u, g, p), 0x01);
  /* Subnormal scale m*2^-9: 3 quanta. */
  float w[16] = {3 * 0x1p-9f * 6.0f / g, 0.0f};
  assert_int_equal(quant16(w, g, p), 0x03);
  assert_int_equal(nib(p, 0), 0x7);
}

/* Runtime amax above the calibrated amax: the scale saturates to 448 and the
 * codes saturate to +-6; nothing becomes NaN. */
static void test_above_amax_saturation(void **state) {
  (void)state;
  const float g = epm_nvfp4_global_scale(1.0f); /* calibrated for amax 1 */
  float x[16] = {100.0f, -100.0f, 1.0f, 0.5f, 0.1f};
  uint8_t p[8];
  assert_int_equal(quant16(x, g, p), 0x7E);
  /* s = 1/(448 * fp32(1/2688)) ~= 6: 100 -> 600 -> 6, 1 -> 6 -> 6, 0.5 -> 3, 0.1 -> 0.6 -> 0.5 */
  assert_int_equal(nib(p, 0), 0x7);
  assert_int_equal(nib(p, 1), 0xF);
  assert_int_equal(nib(p, 2), 0x7);
  assert_int_equal(nib(p, 3), 0x5);
  assert_int_equal(nib(p, 4), 0x1);
}

/* Inf and NaN inputs (documented in nvfp4.h):
 *   NaN elements are ignored for the block scale and encode as 0x0;
 *   +-Inf makes the block amax Inf, the scale saturates to 448 (0x7E) and
 *   Inf encodes as +-6; a block of NaNs only has scale 0 and code 0. */
static void test_inf_nan_rows(void **state) {
  (void)state;
  float x[48] = {0};
  x[0] = NAN, x[1] = 3.0f, x[2] = -6.0f;             /* block 0: NaN ignored */
  x[16] = INFINITY, x[17] = -INFINITY, x[18] = 1e30f; /* block 1 */
  for (int i = 32; i < 48; i++) x[i] = NAN;           /* block 2 */
  uint8_t p[24], sf[3];
  assert_int_equal(epm_nvfp4_quantize_f32(x, 1, 48, 1.0f, EPM_SF_LINEAR, p, sf), EPM_OK);
  assert_int_equal(sf[0], 0x38); /* vmax 6 from the finite elements */
  assert_int_equal(nib(p, 0), 0x0);
  assert_int_equal(nib(p, 1), 0x5);
  assert_int_equal(nib(p, 2), 0xF);
  assert_int_equal(sf[1], 0x7E);
  assert_int_equal(nib(p, 16), 0x7);
  assert_int_equal(nib(p, 17), 0xF);
  assert_int_equal(nib(p, 18), 0x7);
  assert_int_equal(nib(p, 19), 0x0);
  assert_int_equal(sf[2], 0x00);
  for (int i = 32; i < 48; i++) assert_int_equal(nib(p, i), 0);
  float out[48];
  assert_int_equal(epm_nvfp4_dequantize(p, sf, 1, 48, 1.0f, EPM_SF_LINEAR, out), EPM_OK);
  for (int i = 0; i < 48; i++) assert_true(isfinite(out[i]));
}

/* Gaussian rows of very different magnitudes, bf16 and f32 paths:
 *   per element |x - x'| <= S (S = sf/G, the block's decoded step unit): the
 *   widest E2M1 gap is 2 (4..6) and saturation past 6 costs < 6/16;
 *   overall relative RMS error of NVFP4 on Gaussians is about 0.09-0.10. */
static void test_round_trip_bound(void **state) {
  (void)state;
  const int64_t rows = 64, cols = 1024;
  float *x = malloc(sizeof(float) * (size_t)(rows * cols)), *out = malloc(sizeof(float) * (size_t)(rows * cols));
  epm_bf16_t *xb = malloc(sizeof(epm_bf16_t) * (size_t)(rows * cols));
  uint8_t *p = malloc((size_t)(rows * cols / 2)), *sf = malloc((size_t)(rows * cols / 16));
  epm_test_rng_t rng = {12345};
  for (int64_t r = 0; r < rows; r++) {
    float mag = powf(10.0f, (float)(r % 9) - 4.0f);
    for (int64_t c = 0; c < cols; c++) {
      xb[r * cols + c] = epm_bf16_from_f32(epm_test_rng_normal(&rng) * mag);
      x[r * cols + c] = epm_bf16_to_f32(xb[r * cols + c]);
    }
  }
  double worst = 0;
  for (int pass = 0; pass < 2; pass++) {
    float amax = pass ? epm_amax_f32(x, rows * cols) : epm_amax_bf16(xb, rows * cols);
    float g = epm_nvfp4_global_scale(amax), d = epm_nvfp4_decode_scale(g);
    epm_status_t st = pass ? epm_nvfp4_quantize_f32(x, rows, cols, g, EPM_SF_LINEAR, p, sf)
                           : epm_nvfp4_quantize_bf16(xb, rows, cols, g, EPM_SF_LINEAR, p, sf);
    assert_int_equal(st, EPM_OK);
    assert_int_equal(epm_nvfp4_dequantize(p, sf, rows, cols, d, EPM_SF_LINEAR, out), EPM_OK);
    for (int64_t r = 0; r < rows; r++) {
      double num = 0, den = 0;
      for (int64_t c = 0; c < cols; c++) {
        int64_t i = r * cols + c;
        float step = epm_e4m3_to_f32(sf[i / 16]) * d;
        double e = fabs((double)x[i] - (double)out[i]);
        /* Normal E4M3 scales are within 2^-4 relative; subnormal ones are not. */
        if (sf[i / 16] >= 0x08) assert_true(e <= (double)step * 1.0001);
        num += e * e;
        den += (double)x[i] * x[i];
      }
      /* Rows below 1e0 have zero or subnormal scales against amax ~4e4. */
      if (r % 9 >= 4) worst = fmax(worst, sqrt(num / den));
    }
  }
  print_message("worst row relative RMS error %.4f\n", worst);
  assert_true(worst > 0.05 && worst < 0.12);
  free(x), free(out), free(xb), free(p), free(sf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand_unit_scale),     cmocka_unit_test(test_hand_scaled),
      cmocka_unit_test(test_zero_block_and_negative_zero), cmocka_unit_test(test_scale_underflow),
      cmocka_unit_test(test_above_amax_saturation), cmocka_unit_test(test_inf_nan_rows),
      cmocka_unit_test(test_round_trip_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
