/* SPDX-License-Identifier: Apache-2.0 */
/* test_nvfp4_flashinfer: quantize / dequantize / swizzle against FlashInfer's
 * reference vectors in the bundle (tests/data/README.md §1 and §3), shapes from
 * its manifest. Exact: codes bit-for-bit (0x0 == 0x8), scale bytes,
 * dequantized fp32 bits. */
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

static float load_scalar(const char *name) {
  float v;
  assert_int_equal(epm_ref_scalar_f32(name, &v), 0);
  return v;
}

/* Codes equal, with -0 (0x8) equal to +0 (0x0) in either nibble. */
static int64_t count_code_mismatches(const uint8_t *a, const uint8_t *b, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    for (int sh = 0; sh < 8; sh += 4) {
      unsigned ca = (a[i] >> sh) & 0xFu, cb = (b[i] >> sh) & 0xFu;
      if (ca == 0x8) ca = 0;
      if (cb == 0x8) cb = 0;
      if (ca != cb) {
        if (!bad) print_message("first code mismatch at byte %lld nibble %d: ours 0x%x, ref 0x%x\n",
                                (long long)i, sh / 4, ca, cb);
        bad++;
      }
    }
  }
  return bad;
}

static int64_t count_byte_mismatches(const uint8_t *a, const uint8_t *b, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++)
    if (a[i] != b[i]) {
      if (!bad) print_message("first byte mismatch at %lld: ours 0x%02x, ref 0x%02x\n", (long long)i, a[i], b[i]);
      bad++;
    }
  return bad;
}

/* Quantize a bf16 [rows, cols] reference matrix both ways and compare every
 * output. The swizzled scales are one flat array of the padded 128x4 size. */
static void check_quantize(int64_t rows, int64_t cols, const char *x_name, const char *g_name,
                           const char *packed_name, const char *lin_name, const char *swz_name) {
  epm_ref_array_t x, packed, lin, swz;
  assert_int_equal(epm_ref_load_as(x_name, "bfloat16", 2, (int64_t[]){rows, cols}, &x), 0);
  assert_int_equal(epm_ref_load_as(packed_name, "uint8", 2, (int64_t[]){rows, cols / 2}, &packed), 0);
  assert_int_equal(epm_ref_load_as(lin_name, "uint8", 2, (int64_t[]){rows, cols / 16}, &lin), 0);
  assert_int_equal(epm_ref_load_as(swz_name, "uint8", 1, (int64_t[]){EPM_REF_ANY}, &swz), 0);
  print_message("%s [%lld, %lld] -> %s, %s, %s (%zu bytes)\n", x_name, (long long)rows, (long long)cols,
                packed_name, lin_name, swz_name, swz.nbytes);
  float g = load_scalar(g_name);
  /* The stored global scale is the reference's formula applied to amax. */
  assert_true(epm_nvfp4_global_scale(epm_amax_bf16(x.data, x.numel)) == g);

  size_t pb, lb, sb;
  assert_int_equal(epm_nvfp4_packed_bytes(rows, cols, &pb), EPM_OK);
  assert_int_equal(epm_nvfp4_sf_bytes(rows, cols, EPM_SF_LINEAR, &lb), EPM_OK);
  assert_int_equal(epm_nvfp4_sf_bytes(rows, cols, EPM_SF_SWIZZLED_128X4, &sb), EPM_OK);
  assert_int_equal(pb, packed.nbytes);
  assert_int_equal(lb, lin.nbytes);
  assert_int_equal(sb, swz.nbytes);

  uint8_t *p = malloc(pb), *p2 = malloc(pb), *l = malloc(lb), *s = malloc(sb), *back = malloc(lb);
  memset(s, 0xA5, sb); /* padding must be overwritten with 0 */
  assert_int_equal(epm_nvfp4_quantize_bf16(x.data, rows, cols, g, EPM_SF_LINEAR, p, l), EPM_OK);
  assert_int_equal(epm_nvfp4_quantize_bf16(x.data, rows, cols, g, EPM_SF_SWIZZLED_128X4, p2, s), EPM_OK);
  assert_int_equal(count_code_mismatches(p, packed.data, (int64_t)pb), 0);
  assert_memory_equal(p, p2, pb); /* payload does not depend on the scale layout */
  assert_int_equal(count_byte_mismatches(l, lin.data, (int64_t)lb), 0);
  assert_int_equal(count_byte_mismatches(s, swz.data, (int64_t)sb), 0);

  /* Layout conversions agree with the reference in both directions. */
  memset(s, 0xA5, sb);
  assert_int_equal(epm_nvfp4_sf_swizzle(lin.data, rows, cols / 16, s), EPM_OK);
  assert_int_equal(count_byte_mismatches(s, swz.data, (int64_t)sb), 0);
  assert_int_equal(epm_nvfp4_sf_unswizzle(swz.data, rows, cols / 16, back), EPM_OK);
  assert_int_equal(count_byte_mismatches(back, lin.data, (int64_t)lb), 0);

  /* Our encoder never emits -0. */
  for (size_t i = 0; i < pb; i++) {
    assert_int_not_equal(p[i] & 0xF, 0x8);
    assert_int_not_equal(p[i] >> 4, 0x8);
  }
  free(p), free(p2), free(l), free(s), free(back);
  epm_ref_free(&x), epm_ref_free(&packed), epm_ref_free(&lin), epm_ref_free(&swz);
}

static void test_quant_vectors(void **state) {
  (void)state;
  epm_bundle_quant_t q;
  assert_int_equal(epm_bundle_quant(&q), 0);
  check_quantize(q.rows, q.cols, "quant_x", "quant_global_scale", "quant_packed", "quant_sf_linear",
                 "quant_sf_swizzled");
}

static void test_moe_hidden_vectors(void **state) {
  (void)state;
  epm_bundle_moe_t m;
  assert_int_equal(epm_bundle_moe(&m), 0);
  check_quantize(m.tokens, m.hidden, "moe_hidden", "moe_hidden_global_scale", "moe_hidden_fp4", "moe_hidden_sf_linear",
                 "moe_hidden_sf_swizzled");
  /* The stored input scale is the decode scale of the global scale. */
  float g = load_scalar("moe_hidden_global_scale");
  assert_true(epm_nvfp4_decode_scale(g) == load_scalar("moe_input_scale"));
}

/* Dequantize the reference codes/scales; fp32 results must be bit-identical. */
static void test_quant_dequant(void **state) {
  (void)state;
  epm_bundle_quant_t q;
  epm_ref_array_t packed, lin, swz, deq;
  assert_int_equal(epm_bundle_quant(&q), 0);
  const int64_t rows = q.rows, cols = q.cols;
  assert_int_equal(epm_ref_load_as("quant_packed", "uint8", 2, (int64_t[]){rows, cols / 2}, &packed), 0);
  assert_int_equal(epm_ref_load_as("quant_sf_linear", "uint8", 2, (int64_t[]){rows, cols / 16}, &lin), 0);
  assert_int_equal(epm_ref_load_as("quant_sf_swizzled", "uint8", 1, (int64_t[]){EPM_REF_ANY}, &swz), 0);
  /* exact fp32 bits are compared: no widening from another dtype */
  assert_int_equal(epm_ref_load_as("quant_dequant", "float32", 2, (int64_t[]){rows, cols}, &deq), 0);
  float g = load_scalar("quant_global_scale"), ginv = load_scalar("quant_global_scale_inv");
  assert_true(epm_nvfp4_decode_scale(g) == ginv);
  float *out = malloc(deq.nbytes), *out2 = malloc(deq.nbytes);
  assert_int_equal(epm_nvfp4_dequantize(packed.data, lin.data, rows, cols, ginv, EPM_SF_LINEAR, out), EPM_OK);
  assert_int_equal(
      epm_nvfp4_dequantize(packed.data, swz.data, rows, cols, ginv, EPM_SF_SWIZZLED_128X4, out2), EPM_OK);
  const float *ref = deq.data;
  int64_t bad = 0;
  for (int64_t i = 0; i < rows * cols; i++) {
    /* -0 and 0 equal (codes 0x8 vs 0x0); otherwise exact. */
    if (!(out[i] == ref[i]) || !(out2[i] == ref[i])) {
      if (!bad) print_message("dequant mismatch at %lld: ours %a / %a, ref %a\n", (long long)i, (double)out[i],
                              (double)out2[i], (double)ref[i]);
      bad++;
    }
  }
  assert_int_equal(bad, 0);
  free(out), free(out2);
  epm_ref_free(&packed), epm_ref_free(&lin), epm_ref_free(&swz), epm_ref_free(&deq);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_quant_vectors),
      cmocka_unit_test(test_moe_hidden_vectors),
      cmocka_unit_test(test_quant_dequant),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
