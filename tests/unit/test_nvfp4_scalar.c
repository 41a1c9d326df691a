/* SPDX-License-Identifier: Apache-2.0 */
/* test_nvfp4_scalar: bf16 rounding against a nearest-value search in double,
 * the global/decode scale conventions and amax. (E2M1/E4M3 are checked
 * against NVIDIA's routines in test_nvfp4_nvidia.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "epmoe/nvfp4.h"

static float bits_f32(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* bf16 value as double; the pattern one past the largest finite (0x7F80,
 * Inf) stands for 2^128, which is where round-to-nearest overflows. */
static double bf16_value(uint16_t b) {
  if ((b & 0x7FFF) == 0x7F80) return (b & 0x8000) ? -0x1p128 : 0x1p128;
  return (double)bits_f32((uint32_t)b << 16);
}

/* Reference: of the two bf16 neighbours of x, the nearer; ties to the even pattern. */
static uint16_t ref_bf16(uint32_t u) {
  uint16_t lo = (uint16_t)(u >> 16);
  if ((u & 0xFFFF) == 0) return lo;
  uint16_t hi = (uint16_t)(lo + 1);
  double x = (double)bits_f32(u);
  double dlo = fabs(x - bf16_value(lo)), dhi = fabs(bf16_value(hi) - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

static void check_bf16(uint32_t u) {
  float x = bits_f32(u);
  epm_bf16_t b = epm_bf16_from_f32(x);
  if (isnan(x)) {
    assert_true(isnan(epm_bf16_to_f32(b)));
    assert_int_equal(b & 0x8000, (u >> 16) & 0x8000); /* sign kept */
    return;
  }
  if (b != ref_bf16(u)) fail_msg("bf16(0x%08x) = 0x%04x, want 0x%04x", u, b, ref_bf16(u));
}

static void test_bf16_rounding(void **state) {
  (void)state;
  /* Every bf16 pattern, its exact ties (low half 0x8000) and their neighbours. */
  for (uint32_t b = 0; b < 0x10000u; b++) {
    uint32_t u = b << 16;
    check_bf16(u);
    check_bf16(u | 0x8000u);
    check_bf16(u | 0x7FFFu);
    check_bf16(u | 0x8001u);
    check_bf16(u | 0xFFFFu);
    /* Round trip: every non-NaN bf16 is exact in fp32. */
    float f = epm_bf16_to_f32((epm_bf16_t)b);
    if (!isnan(f)) assert_int_equal(epm_bf16_from_f32(f), b);
  }
  /* A spread of arbitrary patterns. */
  for (uint64_t u = 0; u < ((uint64_t)1 << 32); u += 65521) check_bf16((uint32_t)u);
  /* Named cases: overflow to Inf, quiet NaN from a signalling one. */
  assert_int_equal(epm_bf16_from_f32(FLT_MAX), 0x7F80);
  assert_int_equal(epm_bf16_from_f32(-INFINITY), 0xFF80);
  assert_int_equal(epm_bf16_from_f32(1.00390625f), 0x3F80); /* 1 + 2^-8: tie, even -> 1 */
  assert_int_equal(epm_bf16_from_f32(1.01171875f), 0x3F82); /* 1 + 3*2^-8: tie, even -> up */
  epm_bf16_t snan = epm_bf16_from_f32(bits_f32(0x7F800001u));
  assert_true(isnan(epm_bf16_to_f32(snan)));
  assert_true(snan & 0x0040);
}

static void test_global_scale(void **state) {
  (void)state;
  assert_true(epm_nvfp4_global_scale(21504.0f) == 0.125f); /* the reference bundle's quant_x */
  assert_true(epm_nvfp4_global_scale(2688.0f) == 1.0f);
  assert_true(epm_nvfp4_global_scale(3.0f) == 896.0f);
  /* fp32 division, correctly rounded: 2688/7 */
  assert_true(epm_nvfp4_global_scale(7.0f) == (float)(2688.0 / 7.0));
  /* Degenerate amax: scale 1. */
  assert_true(epm_nvfp4_global_scale(0.0f) == 1.0f);
  assert_true(epm_nvfp4_global_scale(-5.0f) == 1.0f);
  assert_true(epm_nvfp4_global_scale(NAN) == 1.0f);
  assert_true(epm_nvfp4_global_scale(INFINITY) == 1.0f);
  /* A subnormal amax would overflow to Inf: clamp to FLT_MAX. */
  assert_true(epm_nvfp4_global_scale(bits_f32(1)) == FLT_MAX);
  /* Decode scale is the fp32 reciprocal (ModelOpt input_scale / weight_scale_2). */
  assert_true(epm_nvfp4_decode_scale(0.125f) == 8.0f);
  assert_true(epm_nvfp4_decode_scale(896.0f) == (float)(1.0 / 896.0));
  float g = epm_nvfp4_global_scale(123.456f);
  assert_true(epm_nvfp4_decode_scale(g) == 1.0f / g);
}

static void test_amax(void **state) {
  (void)state;
  const float f[6] = {1.0f, -7.5f, NAN, 2.0f, -0.0f, 7.0f};
  assert_true(epm_amax_f32(f, 6) == 7.5f);
  assert_true(epm_amax_f32(f, 1) == 1.0f);
  assert_true(epm_amax_f32(f, 0) == 0.0f);
  const float g[3] = {NAN, NAN, NAN};
  assert_true(epm_amax_f32(g, 3) == 0.0f);
  const float h[2] = {3.0f, -INFINITY};
  assert_true(epm_amax_f32(h, 2) == INFINITY);
  const epm_bf16_t b[4] = {0x3F80 /* 1 */, 0xC2C8 /* -100 */, 0x7FC0 /* NaN */, 0x4120 /* 10 */};
  assert_true(epm_amax_bf16(b, 4) == 100.0f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bf16_rounding),
      cmocka_unit_test(test_global_scale),
      cmocka_unit_test(test_amax),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
