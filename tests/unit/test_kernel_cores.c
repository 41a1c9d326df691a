/* SPDX-License-Identifier: Apache-2.0 */
/* test_kernel_cores: the scalar NVFP4 and routing code that the CUDA kernels
 * run (kernels/nvfp4_core.h, kernels/routing_core.h), compiled for the host
 * and compared with the independent host codec (runtime/nvfp4*.c) and the
 * FlashInfer reference vectors (shapes and routing cases from the bundle). Proving these bit-identical on the CPU is
 * what lets the GPU quantize kernel be bit-identical to the codec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/model.h"
#include "epmoe/nvfp4.h"
#include "nvfp4_core.h"
#include "routing_core.h"
#include "testutil.h"

static int same_f32(float a, float b) {
  return (a != a && b != b) || epm_core_f32_bits(a) == epm_core_f32_bits(b);
}

/* Every bf16 pattern as a float, plus a spread of random float patterns. */
static void test_scalars_match_codec(void **state) {
  (void)state;
  epm_test_rng_t rng = {42};
  for (uint64_t n = 0; n < (1u << 16) + (1u << 20); n++) {
    uint32_t u = n < (1u << 16) ? (uint32_t)n << 16 : (uint32_t)epm_test_rng_u64(&rng);
    float x = epm_core_bits_f32(u);
    if (epm_core_e2m1_from_f32(x) != epm_e2m1_from_f32(x)) fail_msg("e2m1(%a) bits %08x", (double)x, u);
    if (epm_core_e4m3_from_f32(x) != epm_e4m3_from_f32(x)) fail_msg("e4m3(%a) bits %08x", (double)x, u);
    /* scaled small values stress the E4M3 subnormal path */
    float s = x * 0x1p-100f;
    if (epm_core_e4m3_from_f32(s) != epm_e4m3_from_f32(s)) fail_msg("e4m3(%a)", (double)s);
  }
  for (int b = 0; b < 256; b++)
    assert_true(same_f32(epm_core_e4m3_to_f32((uint8_t)b), epm_e4m3_to_f32((uint8_t)b)));
  for (uint32_t c = 0; c < 16; c++)
    assert_true(same_f32(epm_core_e2m1_to_f32(c), epm_e2m1_to_f32((uint8_t)c)));
  for (int64_t m = 0; m < 300; m++)
    for (int64_t k = 0; k < 11; k++)
      assert_int_equal(epm_core_sf_offset_128x4(m, k, 11), epm_sf_offset_128x4(m, k, 11));
}

/* Quantize a bf16 matrix block by block with the core; compare with the codec
 * in both layouts: every byte equal (the core never emits 0x8 either). */
static void quantize_core(const epm_bf16_t *x, int64_t rows, int64_t cols, float g, int swz,
                          uint8_t *packed, uint8_t *sf) {
  int64_t nsf = cols / 16;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < nsf; k++) {
      float v[16];
      for (int i = 0; i < 16; i++) v[i] = epm_bf16_to_f32(x[r * cols + k * 16 + i]);
      uint8_t s = epm_core_quantize_block(v, g, packed + r * (cols / 2) + k * 8);
      sf[swz ? epm_core_sf_offset_128x4(r, k, nsf) : r * nsf + k] = s;
    }
}

static void test_quantize_matches_codec(void **state) {
  (void)state;
  const int64_t rows = 150, cols = 80;
  epm_test_rng_t rng = {7};
  epm_bf16_t *x = malloc((size_t)(rows * cols) * sizeof *x);
  for (int64_t r = 0; r < rows; r++) {
    float mag = powf(10.0f, -4.0f + 8.0f * (float)r / (float)rows);
    for (int64_t c = 0; c < cols; c++) x[r * cols + c] = epm_bf16_from_f32(epm_test_rng_normal(&rng) * mag);
  }
  for (int64_t c = 0; c < cols; c++) x[3 * cols + c] = 0;          /* zero row */
  for (int64_t c = 16; c < 32; c++) x[9 * cols + c] = 0x8000;       /* -0 block */
  x[11 * cols + 5] = 0x7FC0;                                        /* NaN */
  x[12 * cols + 7] = 0xFF80;                                        /* -Inf */
  x[13 * cols + 0] = epm_bf16_from_f32(-30000.0f);                  /* saturates past amax */
  float amax = epm_amax_bf16(x, rows * cols);
  for (int pass = 0; pass < 2; pass++) {
    float g = pass == 0 ? epm_nvfp4_global_scale(amax) : 1.0f; /* 1.0: many SF underflows */
    for (int swz = 0; swz < 2; swz++) {
      epm_sf_layout_t lay = swz ? EPM_SF_SWIZZLED_128X4 : EPM_SF_LINEAR;
      size_t sfb = 0;
      assert_int_equal(epm_nvfp4_sf_bytes(rows, cols, lay, &sfb), EPM_OK);
      uint8_t *p1 = malloc((size_t)(rows * cols / 2)), *p2 = malloc((size_t)(rows * cols / 2));
      uint8_t *s1 = calloc(sfb, 1), *s2 = malloc(sfb);
      memset(s2, 0xAB, sfb);
      assert_int_equal(epm_nvfp4_quantize_bf16(x, rows, cols, g, lay, p2, s2), EPM_OK);
      quantize_core(x, rows, cols, g, swz, p1, s1);
      assert_memory_equal(p1, p2, (size_t)(rows * cols / 2));
      assert_memory_equal(s1, s2, sfb);
      free(p1);
      free(p2);
      free(s1);
      free(s2);
    }
  }
  free(x);
}

/* FlashInfer's quantization vectors (shapes from the bundle's manifest):
 * packed codes and scales exact. */
static void test_quantize_flashinfer(void **state) {
  (void)state;
  epm_bundle_quant_t q;
  epm_ref_array_t x, packed, sfl;
  float g;
  assert_int_equal(epm_bundle_quant(&q), 0);
  const int64_t rows = q.rows, cols = q.cols;
  assert_int_equal(epm_ref_load_as("quant_x", "bfloat16", 2, (int64_t[]){rows, cols}, &x), 0);
  assert_int_equal(epm_ref_load_as("quant_packed", "uint8", 2, (int64_t[]){rows, cols / 2}, &packed), 0);
  assert_int_equal(epm_ref_load_as("quant_sf_linear", "uint8", 2, (int64_t[]){rows, cols / 16}, &sfl), 0);
  assert_int_equal(epm_ref_scalar_f32("quant_global_scale", &g), 0);
  uint8_t *p = malloc((size_t)(rows * cols / 2)), *s = malloc((size_t)(rows * cols / 16));
  quantize_core(x.data, rows, cols, g, 0, p, s);
  const uint8_t *wp = packed.data, *ws = sfl.data;
  for (int64_t i = 0; i < rows * cols / 16; i++) assert_int_equal(s[i], ws[i]);
  for (int64_t i = 0; i < rows * cols / 2; i++) {
    /* 0x0 and 0x8 are both zero; payload of SF==0 blocks is don't-care */
    if (ws[i / 8] == 0) continue;
    for (int h = 0; h < 2; h++) {
      uint8_t a = (uint8_t)((p[i] >> (4 * h)) & 0xF), b = (uint8_t)((wp[i] >> (4 * h)) & 0xF);
      if (a == 8) a = 0;
      if (b == 8) b = 0;
      if (a != b) fail_msg("quant_packed byte %lld nibble %d: core %x, FlashInfer %x", (long long)i, h, a, b);
    }
  }
  free(p);
  free(s);
  epm_ref_free(&x);
  epm_ref_free(&packed);
  epm_ref_free(&sfl);
}

static int ulp_diff(float a, float b) {
  int32_t ia = (int32_t)epm_core_f32_bits(a), ib = (int32_t)epm_core_f32_bits(b);
  int32_t d = ia - ib;
  return d < 0 ? -d : d;
}

/* FlashInfer routing vectors: ids in the reference order; weights within
 * 1 ulp, except deepseek-v3 and renormalize where FlashInfer sums in fp32 and
 * we (like the CPU reference) in double: a few ulp. The tolerance is per
 * method; the cases, their parameters and shapes come from the bundle. */
static int max_ulp_of(epm_routing_method_t m) {
  switch (m) {
    case EPM_ROUTING_DEEPSEEK_V3:
    case EPM_ROUTING_RENORMALIZE:
    case EPM_ROUTING_RENORMALIZE_NAIVE:
    case EPM_ROUTING_DEFAULT: return 4;
    case EPM_ROUTING_TOPK: return 0; /* the weight is the logit itself */
    case EPM_ROUTING_LLAMA4: return 1;
    default: fail_msg("no tolerance for routing method %d", (int)m);
  }
  return -1;
}

static void route_vs_flashinfer(const epm_bundle_routing_t *r, const epm_bundle_route_case_t *rc) {
  char nm[64];
  const int64_t m = r->tokens, e = r->num_experts, k = rc->cfg.top_k;
  const int max_ulp = max_ulp_of(rc->cfg.method);
  epm_ref_array_t logits, bias, ids, w;
  assert_true(k <= EPM_CORE_ROUTE_MAX_K);
  assert_int_equal(epm_ref_load_f32("routing_logits", 2, (int64_t[]){m, e}, &logits), 0);
  assert_int_equal(epm_ref_load_f32("routing_bias", 1, (int64_t[]){e}, &bias), 0);
  snprintf(nm, sizeof nm, "routing_%s_ids", rc->name);
  assert_int_equal(epm_ref_load_as(nm, "int32", 2, (int64_t[]){m, k}, &ids), 0);
  snprintf(nm, sizeof nm, "routing_%s_weights", rc->name);
  assert_int_equal(epm_ref_load_f32(nm, 2, (int64_t[]){m, k}, &w), 0);
  epm_core_route_cfg_t c = {(int)rc->cfg.method, e, k, rc->cfg.n_group, rc->cfg.topk_group,
                            rc->cfg.routed_scaling_factor};
  const float *l = logits.data, *wb = w.data;
  const int32_t *wi = ids.data;
  int worst = 0;
  for (int64_t t = 0; t < m; t++) {
    int32_t gi[EPM_CORE_ROUTE_MAX_K];
    float gw[EPM_CORE_ROUTE_MAX_K];
    epm_core_route_token(&c, l + t * e, bias.data, gi, gw);
    for (int64_t j = 0; j < k; j++) {
      const int u = ulp_diff(gw[j], wb[t * k + j]);
      if (gi[j] != wi[t * k + j])
        fail_msg("%s token %lld slot %lld: id %d, FlashInfer %d", rc->name, (long long)t, (long long)j, gi[j],
                 wi[t * k + j]);
      if (u > worst) worst = u;
      if (u > max_ulp)
        fail_msg("%s token %lld slot %lld: w %a vs %a", rc->name, (long long)t, (long long)j, (double)gw[j],
                 (double)wb[t * k + j]);
    }
  }
  print_message("core routing %s: %lld tokens x %lld experts, k=%lld: ids identical, weights within %d ulp "
                "(tolerance %d)\n",
                rc->name, (long long)m, (long long)e, (long long)k, worst, max_ulp);
  epm_ref_free(&logits);
  epm_ref_free(&bias);
  epm_ref_free(&ids);
  epm_ref_free(&w);
}

static void test_routing_flashinfer(void **state) {
  (void)state;
  assert_int_equal(EPM_CORE_ROUTE_DEEPSEEK_V3, EPM_ROUTING_DEEPSEEK_V3);
  assert_int_equal(EPM_CORE_ROUTE_RENORMALIZE, EPM_ROUTING_RENORMALIZE);
  assert_int_equal(EPM_CORE_ROUTE_RENORMALIZE_NAIVE, EPM_ROUTING_RENORMALIZE_NAIVE);
  assert_int_equal(EPM_CORE_ROUTE_LLAMA4, EPM_ROUTING_LLAMA4);
  assert_int_equal(EPM_CORE_ROUTE_TOPK, EPM_ROUTING_TOPK);
  assert_int_equal(EPM_CORE_ROUTE_DEFAULT, EPM_ROUTING_DEFAULT);
  epm_bundle_routing_t r;
  assert_int_equal(epm_bundle_routing(&r), 0);
  for (int i = 0; i < r.ncases; i++) route_vs_flashinfer(&r, &r.cases[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_scalars_match_codec),
      cmocka_unit_test(test_quantize_matches_codec),
      cmocka_unit_test(test_quantize_flashinfer),
      cmocka_unit_test(test_routing_flashinfer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
