/* SPDX-License-Identifier: Apache-2.0 */
/* test_nvfp4_layout: the 128x4 swizzled scale layout against a brute-force
 * construction, padding, odd row counts, byte sizes and argument errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/nvfp4.h"
#include "testutil.h"

/* Brute force from the spec's inverse (vLLM/FlashInfer recover_swizzled_scales):
 *   swizzled.reshape(Mt, Kt, 32, 4, 4).permute(0, 1, 4, 3, 2, 5 minus the batch)
 *            .reshape(Mpad, Kpad)
 * i.e. the swizzled buffer is a 5-d tensor of dims (Mt, Kt, 32, 4, 4) and the
 * linear matrix is its permutation to axes (0, 3, 2, 1, 4). Walk every
 * swizzled byte, compute its multi-index, permute, and flatten row-major.
 * Returns for every swizzled byte the linear index into [Mpad, Kpad]. */
static int64_t *brute_force_map(int64_t rows, int64_t n_sf, int64_t *mpad, int64_t *kpad) {
  const int64_t mt = (rows + 127) / 128, kt = (n_sf + 3) / 4;
  const int64_t dims[5] = {mt, kt, 32, 4, 4};
  const int perm[5] = {0, 3, 2, 1, 4};
  int64_t total = mt * kt * 512;
  int64_t *map = malloc(sizeof(int64_t) * (size_t)(total ? total : 1));
  for (int64_t s = 0; s < total; s++) {
    int64_t idx[5], rem = s;
    for (int d = 4; d >= 0; d--) {
      idx[d] = rem % dims[d];
      rem /= dims[d];
    }
    int64_t lin = 0;
    for (int d = 0; d < 5; d++) lin = lin * dims[perm[d]] + idx[perm[d]];
    map[s] = lin;
  }
  *mpad = mt * 128;
  *kpad = kt * 4;
  return map;
}

static void check_offsets(int64_t rows, int64_t n_sf) {
  int64_t mpad, kpad;
  int64_t *map = brute_force_map(rows, n_sf, &mpad, &kpad);
  size_t bytes;
  assert_int_equal(epm_nvfp4_sf_bytes(rows, n_sf * 16, EPM_SF_SWIZZLED_128X4, &bytes), EPM_OK);
  assert_int_equal((int64_t)bytes, mpad * kpad);
  for (int64_t s = 0; s < mpad * kpad; s++) {
    int64_t m = map[s] / kpad, k = map[s] % kpad;
    assert_int_equal(epm_sf_offset_128x4(m, k, n_sf), s);
  }
  free(map);
}

static void test_offsets_brute_force(void **state) {
  (void)state;
  const int64_t rows[] = {1, 31, 32, 127, 128, 129, 200, 300};
  const int64_t nsf[] = {1, 2, 3, 4, 5, 8, 32, 33};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    for (size_t j = 0; j < sizeof nsf / sizeof nsf[0]; j++) check_offsets(rows[i], nsf[j]);
  /* Large coordinates stay in 64 bits (no 32-bit wrap past 2^31 bytes):
   * the last scale of 327680 x 7168 (448 sf cols, 112 k tiles). */
  assert_int_equal(epm_sf_offset_128x4(327679, 447, 448), 146800640 - 1);
  assert_int_equal(epm_sf_offset_128x4((int64_t)1 << 31, 0, 448), ((int64_t)1 << 31) / 128 * 112 * 512);
}

/* Naive row-by-row reference for the layout tests: one block at a time with
 * the scalar codecs (themselves checked against NVIDIA), linear scales. */
static void naive_quant(const float *x, int64_t rows, int64_t cols, float g, uint8_t *packed, uint8_t *sf) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t b = 0; b < cols / 16; b++) {
      const float *v = x + r * cols + b * 16;
      float vmax = 0;
      for (int i = 0; i < 16; i++) vmax = fabsf(v[i]) > vmax ? fabsf(v[i]) : vmax;
      uint8_t s = epm_e4m3_from_f32(g * (vmax * (1.0f / 6.0f)));
      float back = epm_e4m3_to_f32(s);
      float scale = back == 0.0f ? 0.0f : 1.0f / (back * (1.0f / g));
      sf[r * (cols / 16) + b] = s;
      for (int i = 0; i < 16; i += 2)
        packed[r * (cols / 2) + b * 8 + i / 2] =
            (uint8_t)(epm_e2m1_from_f32(v[i] * scale) | (epm_e2m1_from_f32(v[i + 1] * scale) << 4));
    }
}

/* Odd row counts and scale-column counts not a multiple of 4: both layouts,
 * padding bytes zero, swizzle/unswizzle round trip. */
static void test_odd_rows_and_padding(void **state) {
  (void)state;
  const int64_t rows_list[] = {1, 127, 128, 129, 255};
  const int64_t cols_list[] = {16, 48, 80, 512};
  epm_test_rng_t rng = {7};
  for (size_t a = 0; a < 5; a++)
    for (size_t b = 0; b < 4; b++) {
      const int64_t rows = rows_list[a], cols = cols_list[b], n_sf = cols / 16;
      float *x = malloc(sizeof(float) * (size_t)(rows * cols));
      for (int64_t i = 0; i < rows * cols; i++) x[i] = epm_test_rng_normal(&rng) * (float)(1 + i % 7);
      float g = epm_nvfp4_global_scale(epm_amax_f32(x, rows * cols));
      size_t pb, lb, sb;
      assert_int_equal(epm_nvfp4_packed_bytes(rows, cols, &pb), EPM_OK);
      assert_int_equal(epm_nvfp4_sf_bytes(rows, cols, EPM_SF_LINEAR, &lb), EPM_OK);
      assert_int_equal(epm_nvfp4_sf_bytes(rows, cols, EPM_SF_SWIZZLED_128X4, &sb), EPM_OK);
      assert_int_equal(pb, (size_t)(rows * cols / 2));
      assert_int_equal(lb, (size_t)(rows * n_sf));
      assert_int_equal(sb, (size_t)(((rows + 127) / 128 * 128) * ((n_sf + 3) / 4 * 4)));
      uint8_t *p = malloc(pb), *p_ref = malloc(pb), *l = malloc(lb), *l_ref = malloc(lb), *s = malloc(sb),
              *s2 = malloc(sb), *back = malloc(lb);
      naive_quant(x, rows, cols, g, p_ref, l_ref);
      assert_int_equal(epm_nvfp4_quantize_f32(x, rows, cols, g, EPM_SF_LINEAR, p, l), EPM_OK);
      assert_memory_equal(p, p_ref, pb);
      assert_memory_equal(l, l_ref, lb);
      memset(s, 0xFF, sb);
      assert_int_equal(epm_nvfp4_quantize_f32(x, rows, cols, g, EPM_SF_SWIZZLED_128X4, p, s), EPM_OK);
      assert_memory_equal(p, p_ref, pb);
      /* Every swizzled byte: the scale of (m, k) if inside, 0 if padding. */
      int64_t mpad, kpad;
      int64_t *map = brute_force_map(rows, n_sf, &mpad, &kpad);
      for (int64_t i = 0; i < (int64_t)sb; i++) {
        int64_t m = map[i] / kpad, k = map[i] % kpad;
        uint8_t want = (m < rows && k < n_sf) ? l_ref[m * n_sf + k] : 0;
        assert_int_equal(s[i], want);
      }
      free(map);
      memset(s2, 0x5A, sb);
      assert_int_equal(epm_nvfp4_sf_swizzle(l, rows, n_sf, s2), EPM_OK);
      assert_memory_equal(s2, s, sb);
      assert_int_equal(epm_nvfp4_sf_unswizzle(s, rows, n_sf, back), EPM_OK);
      assert_memory_equal(back, l, lb);
      /* Dequantize from either layout gives the same values. */
      float *o1 = malloc(sizeof(float) * (size_t)(rows * cols)), *o2 = malloc(sizeof(float) * (size_t)(rows * cols));
      float d = epm_nvfp4_decode_scale(g);
      assert_int_equal(epm_nvfp4_dequantize(p, l, rows, cols, d, EPM_SF_LINEAR, o1), EPM_OK);
      assert_int_equal(epm_nvfp4_dequantize(p, s, rows, cols, d, EPM_SF_SWIZZLED_128X4, o2), EPM_OK);
      assert_memory_equal(o1, o2, sizeof(float) * (size_t)(rows * cols));
      free(o1), free(o2), free(x), free(p), free(p_ref), free(l), free(l_ref), free(s), free(s2), free(back);
    }
}

static void assert_error(epm_status_t got, epm_status_t want, const char *needle1, const char *needle2) {
  assert_int_equal(got, want);
  const char *msg = epm_last_error();
  if (!strstr(msg, needle1) || (needle2 && !strstr(msg, needle2)))
    fail_msg("error text \"%s\" lacks \"%s\"/\"%s\"", msg, needle1, needle2 ? needle2 : "");
}

static void test_errors_name_numbers(void **state) {
  (void)state;
  size_t n = 12345;
  uint8_t buf[64];
  float f[64] = {0};
  assert_error(epm_nvfp4_packed_bytes(4, 100, &n), EPM_ERR_INVALID_ARG, "cols 100", "16");
  assert_int_equal(n, 12345); /* untouched on failure */
  assert_error(epm_nvfp4_sf_bytes(-3, 32, EPM_SF_LINEAR, &n), EPM_ERR_INVALID_ARG, "rows -3", NULL);
  assert_error(epm_nvfp4_sf_bytes(4, -16, EPM_SF_SWIZZLED_128X4, &n), EPM_ERR_INVALID_ARG, "cols -16", NULL);
  assert_error(epm_nvfp4_quantize_f32(f, 1, 40, 1.0f, EPM_SF_LINEAR, buf, buf), EPM_ERR_INVALID_ARG, "cols 40",
               NULL);
  assert_error(epm_nvfp4_dequantize(buf, buf, 2, 24, 1.0f, EPM_SF_LINEAR, f), EPM_ERR_INVALID_ARG, "cols 24", NULL);
  /* rows x cols past int64. */
  char rows_s[32];
  snprintf(rows_s, sizeof rows_s, "rows %lld", (long long)(INT64_MAX / 8));
  assert_error(epm_nvfp4_packed_bytes(INT64_MAX / 8, 1 << 10, &n), EPM_ERR_OVERFLOW, rows_s, "cols 1024");
  assert_error(epm_nvfp4_sf_bytes(INT64_MAX / 8, 1 << 10, EPM_SF_LINEAR, &n), EPM_ERR_OVERFLOW, rows_s,
               "cols 1024");
  assert_error(epm_nvfp4_sf_bytes(INT64_MAX - 10, 16, EPM_SF_SWIZZLED_128X4, &n), EPM_ERR_OVERFLOW,
               "9223372036854775797", NULL);
  assert_error(epm_nvfp4_sf_swizzle(buf, INT64_MAX / 2, 16, buf), EPM_ERR_OVERFLOW, "4611686018427387903",
               "sf cols 16");
  /* rows x sf cols fits, but the padded 128x4 size (sf cols -> 4) does not. */
  assert_error(epm_nvfp4_sf_unswizzle(buf, INT64_MAX / 4, 1, buf), EPM_ERR_OVERFLOW, "2305843009213693951",
               "128x4");
  assert_error(epm_nvfp4_sf_unswizzle(buf, 5, -1, buf), EPM_ERR_INVALID_ARG, "sf cols -1", NULL);
  /* Bad scales, layout, buffers. */
  assert_error(epm_nvfp4_quantize_f32(f, 1, 16, 0.0f, EPM_SF_LINEAR, buf, buf), EPM_ERR_INVALID_ARG,
               "global scale 0", NULL);
  assert_error(epm_nvfp4_quantize_f32(f, 1, 16, INFINITY, EPM_SF_LINEAR, buf, buf), EPM_ERR_INVALID_ARG,
               "global scale inf", NULL);
  assert_error(epm_nvfp4_quantize_bf16(NULL, 2, 16, 1.0f, EPM_SF_LINEAR, buf, buf), EPM_ERR_INVALID_ARG, "NULL",
               "rows 2");
  assert_error(epm_nvfp4_quantize_f32(f, 1, 16, 1.0f, (epm_sf_layout_t)7, buf, buf), EPM_ERR_INVALID_ARG,
               "layout 7", NULL);
  /* Empty matrices are fine and touch nothing. */
  assert_int_equal(epm_nvfp4_quantize_f32(NULL, 0, 16, 1.0f, EPM_SF_SWIZZLED_128X4, NULL, NULL), EPM_OK);
  assert_int_equal(epm_nvfp4_sf_bytes(0, 16, EPM_SF_SWIZZLED_128X4, &n), EPM_OK);
  assert_int_equal(n, 0);
  /* The DeepSeek-R1 EP32 case that wrapped int32: exact, no error. */
  assert_int_equal(epm_nvfp4_sf_bytes(327680, 7168, EPM_SF_LINEAR, &n), EPM_OK);
  assert_int_equal(n, 146800640);
  assert_int_equal(epm_nvfp4_packed_bytes(327680, 7168, &n), EPM_OK);
  assert_int_equal(n, (size_t)327680 * 3584);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_offsets_brute_force),
      cmocka_unit_test(test_odd_rows_and_padding),
      cmocka_unit_test(test_errors_name_numbers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
