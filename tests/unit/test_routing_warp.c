/* SPDX-License-Identifier: Apache-2.0 */
/* test_routing_warp: the warp-per-token routing kernel's body
 * (kernels/routing_warp_body.h) run by its CPU emulation — the 32 lanes one
 * after another, every shuffle, ballot and reduction step as on the GPU —
 * against the CPU reference (runtime/routing.c). Ids AND weights must be
 * bit-identical (both sides use the host's exp here; the GPU's own double exp
 * is the one thing the GPU test adds). Covers every method, grouped and
 * ungrouped deepseek-v3 with bias, k = 1 up to the warp limit of 64, E up to
 * 512 and not a multiple of 32, heavy ties (coarsely rounded logits, equal
 * logits, +-0), bf16 logits, the bundle's routing cases, and the per-expert
 * and per-rank counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/bf16.h"
#include "epmoe/kernels.h"
#include "epmoe/routing.h"
#include "routing_warp_core.h"
#include "testutil.h"

typedef enum { LOGITS_NORMAL, LOGITS_TIES, LOGITS_FLAT } logits_kind_t;

static int64_t cases_run;

/* Route m tokens both ways and demand identical bits; check the counts. */
static void compare(const char *name, const epm_model_dims_t *d, const float *lf, const epm_bf16_t *lb,
                    const float *bias, int64_t m, int64_t ep_size) {
  const int64_t E = d->num_experts, k = d->top_k;
  epm_routing_config_t cfg;
  assert_int_equal(epm_routing_config_from_dims(d, &cfg), EPM_OK);
  epm_routing_plan_t p;
  assert_int_equal(epm_routing_plan(d, m, &p), EPM_OK);
  assert_true(p.warp_ok);
  int32_t *ri = malloc((size_t)(m * k + 1) * 4), *gi = malloc((size_t)(m * k + 1) * 4);
  float *rw = malloc((size_t)(m * k + 1) * 4), *gw = malloc((size_t)(m * k + 1) * 4);
  int32_t *ec = malloc((size_t)E * 4), *rt = malloc((size_t)ep_size * 4);
  memset(gi, 0xFF, (size_t)(m * k + 1) * 4);
  memset(gw, 0xFF, (size_t)(m * k + 1) * 4);
  if (lf) assert_int_equal(epm_route_f32(&cfg, lf, bias, m, ri, rw, NULL), EPM_OK);
  else assert_int_equal(epm_route_bf16(&cfg, lb, bias, m, ri, rw, NULL), EPM_OK);
  epm_routing_counts_t counts = {ec, rt, ep_size};
  epm_status_t st = epm_routing_warp_emulate(&p, lf ? (const void *)lf : (const void *)lb,
                                             lf ? EPM_DTYPE_F32 : EPM_DTYPE_BF16, bias, gi, gw, &counts);
  if (st != EPM_OK) fail_msg("%s: %s", name, epm_last_error());
  for (int64_t i = 0; i < m * k; i++)
    if (gi[i] != ri[i] || memcmp(&gw[i], &rw[i], 4) != 0)
      fail_msg("%s (E %lld, k %lld): token %lld slot %lld: warp (%d, %a), reference (%d, %a)", name, (long long)E,
               (long long)k, (long long)(i / k), (long long)(i % k), gi[i], (double)gw[i], ri[i], (double)rw[i]);
  /* counts from the reference ids */
  const int64_t per = E / ep_size;
  for (int64_t e = 0; e < E; e++) {
    int32_t c = 0;
    for (int64_t i = 0; i < m * k; i++) c += ri[i] == e;
    if (ec[e] != c) fail_msg("%s: expert %lld counted %d, reference ids give %d", name, (long long)e, ec[e], c);
  }
  for (int64_t r = 0; r < ep_size; r++) {
    int32_t c = 0;
    for (int64_t t = 0; t < m; t++) {
      int any = 0;
      for (int64_t j = 0; j < k; j++) any |= ri[t * k + j] / per == r;
      c += any;
    }
    if (rt[r] != c) fail_msg("%s: rank %lld counted %d tokens, reference ids give %d", name, (long long)r, rt[r], c);
  }
  cases_run++;
  free(ri);
  free(gi);
  free(rw);
  free(gw);
  free(ec);
  free(rt);
}

static float logit(epm_test_rng_t *r, logits_kind_t kind) {
  float v = epm_test_rng_normal(r) * 2.0f;
  switch (kind) {
    case LOGITS_TIES: { /* a coarse grid: many equal scores, and +-0 */
      v = roundf(v * 2.0f) / 2.0f;
      if (v == 0.0f && (epm_test_rng_u64(r) & 1)) v = -0.0f;
      return v;
    }
    case LOGITS_FLAT: return (epm_test_rng_u64(r) % 3 == 0) ? 0.5f : 0.25f;
    default: return v;
  }
}

static void run(const char *name, epm_model_dims_t d, int64_t m, logits_kind_t kind, int with_bias, int bf16,
                int64_t ep_size, uint64_t seed) {
  const int64_t E = d.num_experts;
  epm_test_rng_t r = {seed};
  float *lf = malloc((size_t)(m * E + 1) * 4), *bias = NULL;
  epm_bf16_t *lb = malloc((size_t)(m * E + 1) * 2);
  for (int64_t i = 0; i < m * E; i++) {
    lb[i] = epm_bf16_from_f32(logit(&r, kind));
    lf[i] = epm_bf16_to_f32(lb[i]);
  }
  if (with_bias) {
    bias = malloc((size_t)E * 4);
    for (int64_t e = 0; e < E; e++)
      bias[e] = kind == LOGITS_NORMAL ? epm_bf16_round(epm_test_rng_normal(&r) * 0.1f) : (float)(e % 3) * 0.125f;
  }
  compare(name, &d, bf16 ? NULL : lf, bf16 ? lb : NULL, bias, m, ep_size);
  free(lf);
  free(lb);
  free(bias);
}

static epm_model_dims_t dims(epm_routing_method_t method, int64_t E, int64_t k, int64_t groups, int64_t keep) {
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("tiny", &d), EPM_OK);
  d.routing = method;
  d.num_experts = E;
  d.top_k = k;
  d.n_group = groups;
  d.topk_group = keep;
  d.routed_scaling_factor = method == EPM_ROUTING_DEEPSEEK_V3 ? 2.5f : 1.0f;
  return d;
}

static void test_every_method(void **state) {
  (void)state;
  static const epm_routing_method_t methods[] = {EPM_ROUTING_DEFAULT, EPM_ROUTING_RENORMALIZE,
                                                 EPM_ROUTING_RENORMALIZE_NAIVE, EPM_ROUTING_TOPK};
  static const int64_t experts[] = {1, 7, 32, 100, 128, 160, 256, 384, 512};
  uint64_t seed = 1;
  for (size_t mi = 0; mi < sizeof methods / sizeof methods[0]; mi++)
    for (size_t ei = 0; ei < sizeof experts / sizeof experts[0]; ei++) {
      const int64_t E = experts[ei];
      const int64_t ks[] = {1, E < 8 ? E : 8, E < 64 ? E : 64};
      for (int ki = 0; ki < 3; ki++)
        for (int kind = 0; kind < 3; kind++) {
          char nm[96];
          snprintf(nm, sizeof nm, "%s E%lld k%lld kind%d", epm_routing_method_name(methods[mi]), (long long)E,
                   (long long)ks[ki], kind);
          run(nm, dims(methods[mi], E, ks[ki], 1, 1), 40, (logits_kind_t)kind, 0, kind == 1, E % 4 == 0 ? 4 : 1,
              seed++);
        }
    }
  /* llama4: top-1, sigmoid weight */
  for (int kind = 0; kind < 3; kind++)
    run("llama4", dims(EPM_ROUTING_LLAMA4, 128, 1, 1, 1), 60, (logits_kind_t)kind, 0, kind == 2, 8, seed++);
}

static void test_deepseek_v3(void **state) {
  (void)state;
  uint64_t seed = 100;
  /* DeepSeek-V3/R1: 256 experts, 8 groups of 32 (4 lanes each), keep 4, top-8 */
  for (int kind = 0; kind < 3; kind++)
    for (int bias = 0; bias < 2; bias++) {
      run("deepseek-v3 256/8/4 k8", dims(EPM_ROUTING_DEEPSEEK_V3, 256, 8, 8, 4), 64, (logits_kind_t)kind, bias,
          kind == 1, 8, seed++);
      run("deepseek-v3 ungrouped k8", dims(EPM_ROUTING_DEEPSEEK_V3, 256, 8, 1, 1), 64, (logits_kind_t)kind, bias, 0,
          32, seed++);
    }
  /* groups that straddle lanes (E 96: 3 per lane; 12 groups of 8), 64
   * groups (two group-score slots per lane), keep one group, k = whole group */
  run("deepseek-v3 96/12/3 k6", dims(EPM_ROUTING_DEEPSEEK_V3, 96, 6, 12, 3), 50, LOGITS_TIES, 1, 0, 4, seed++);
  run("deepseek-v3 512/64/20 k64", dims(EPM_ROUTING_DEEPSEEK_V3, 512, 64, 64, 20), 20, LOGITS_NORMAL, 1, 0, 16,
      seed++);
  run("deepseek-v3 512/64/7 k8 ties", dims(EPM_ROUTING_DEEPSEEK_V3, 512, 8, 64, 7), 30, LOGITS_TIES, 1, 1, 2, seed++);
  run("deepseek-v3 64/16/1 k4", dims(EPM_ROUTING_DEEPSEEK_V3, 64, 4, 16, 1), 50, LOGITS_FLAT, 1, 0, 4, seed++);
  run("deepseek-v3 160/5/2 k1", dims(EPM_ROUTING_DEEPSEEK_V3, 160, 1, 5, 2), 50, LOGITS_NORMAL, 1, 0, 5, seed++);
  /* extreme logits: sigmoids that are exactly 0 or 1 in fp32 (the epsilon) */
  epm_model_dims_t d = dims(EPM_ROUTING_DEEPSEEK_V3, 256, 8, 8, 4);
  const int64_t m = 4, E = 256;
  float *l = malloc((size_t)(m * E) * 4);
  for (int64_t i = 0; i < m * E; i++) l[i] = (i / E) % 2 ? -200.0f : 120.0f - (float)(i % 5);
  compare("deepseek-v3 saturated", &d, l, NULL, NULL, m, 8);
  free(l);
}

/* The FlashInfer bundle's routing cases (logits and bias as stored). */
static void test_bundle_cases(void **state) {
  (void)state;
  epm_bundle_routing_t r;
  assert_int_equal(epm_bundle_routing(&r), 0);
  epm_ref_array_t logits, bias;
  assert_int_equal(epm_ref_load_f32("routing_logits", 2, (int64_t[]){r.tokens, r.num_experts}, &logits), 0);
  assert_int_equal(epm_ref_load_f32("routing_bias", 1, (int64_t[]){r.num_experts}, &bias), 0);
  for (int i = 0; i < r.ncases; i++) {
    epm_model_dims_t d = dims(r.cases[i].cfg.method, r.cases[i].cfg.num_experts, r.cases[i].cfg.top_k,
                              r.cases[i].cfg.n_group, r.cases[i].cfg.topk_group);
    d.routed_scaling_factor = r.cases[i].cfg.routed_scaling_factor;
    compare(r.cases[i].name, &d, logits.data, NULL, bias.data, r.tokens, 1);
  }
  epm_ref_free(&logits);
  epm_ref_free(&bias);
}

static void test_limits_and_plan(void **state) {
  (void)state;
  epm_routing_plan_t p;
  epm_model_dims_t d = dims(EPM_ROUTING_RENORMALIZE, 513, 8, 1, 1);
  assert_int_equal(epm_routing_plan(&d, 10, &p), EPM_OK);
  assert_false(p.warp_ok);
  epm_rw_cfg_t c;
  assert_int_equal(epm__rw_cfg(&p, 0, &c), EPM_ERR_NOT_SUPPORTED);
  assert_non_null(strstr(epm_last_error(), "num_experts = 513"));
  d = dims(EPM_ROUTING_RENORMALIZE, 512, 64, 1, 1);
  assert_int_equal(epm_routing_plan(&d, 4096, &p), EPM_OK);
  assert_true(p.warp_ok);
  assert_int_equal(p.experts_per_lane, 16);
  assert_int_equal(p.warp_block, 128);
  assert_int_equal(p.warp_grid, 1024); /* 4 tokens per block */
  assert_int_equal(epm__rw_cfg(&p, 3, &c), EPM_ERR_INVALID_ARG); /* 3 does not divide 512 */
  assert_non_null(strstr(epm_last_error(), "ep_size = 3"));
  d = dims(EPM_ROUTING_RENORMALIZE, 256, 65, 1, 1);
  assert_int_equal(epm_routing_plan(&d, 4, &p), EPM_ERR_INVALID_ARG); /* v1 limit: k <= 64 as well */
  /* zero tokens: counts zeroed, nothing else touched */
  d = dims(EPM_ROUTING_TOPK, 64, 2, 1, 1);
  assert_int_equal(epm_routing_plan(&d, 0, &p), EPM_OK);
  int32_t ec[64], rt[2];
  memset(ec, 0x55, sizeof ec);
  memset(rt, 0x55, sizeof rt);
  epm_routing_counts_t counts = {ec, rt, 2};
  assert_int_equal(epm_routing_warp_emulate(&p, NULL, EPM_DTYPE_F32, NULL, NULL, NULL, &counts), EPM_OK);
  for (int i = 0; i < 64; i++) assert_int_equal(ec[i], 0);
  assert_int_equal(rt[0] | rt[1], 0);
  printf("warp routing emulation: %lld cases bit-identical to the reference\n", (long long)cases_run);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_method),
      cmocka_unit_test(test_deepseek_v3),
      cmocka_unit_test(test_bundle_cases),
      cmocka_unit_test(test_limits_and_plan),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
