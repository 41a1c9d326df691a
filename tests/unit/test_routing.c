/* SPDX-License-Identifier: Apache-2.0 */
/* test_routing: reference routing against FlashInfer's vectors (every routing_*
 * case of the bundle, with the shapes and parameters of its manifest) and
 * hand-written cases per method: ties, negative biased scores, sigmoid
 * underflow, group limits, k = 1 and k = E, invalid configurations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/routing.h"
#include "testutil.h"

static epm_routing_config_t cfg(epm_routing_method_t m, int64_t e, int64_t k) {
  epm_routing_config_t c = {m, e, k, 1, 1, 1.0f};
  return c;
}

static void route_ok(const epm_routing_config_t *c, const float *l, const float *bias, int64_t m, int32_t *ids,
                     float *w) {
  epm_status_t st = epm_route_f32(c, l, bias, m, ids, w, NULL);
  if (st != EPM_OK) fail_msg("route: %s", epm_last_error());
}

/* |a - b| within n ulps of b (fp32). */
static int near_ulps(float a, float b, int n) {
  if (a == b) return 1;
  return fabsf(a - b) <= (float)n * (nextafterf(fabsf(b), INFINITY) - fabsf(b));
}

/* ---- FlashInfer vectors ---------------------------------------------------- */

/* One routing case of the bundle: ids identical in order, weights within a
 * few ulp (the reference sums/exps in fp32, we in double). Every shape comes
 * from the manifest's routing parameters. */
static void check_case(const epm_bundle_routing_t *r, const epm_bundle_route_case_t *rc, epm_routing_config_t c) {
  char name[64];
  const int64_t m = r->tokens, e = r->num_experts, k = c.top_k;
  epm_ref_array_t lg, bias, rid, rw;
  assert_int_equal(epm_ref_load_f32("routing_logits", 2, (int64_t[]){m, e}, &lg), 0);
  snprintf(name, sizeof name, "routing_%s_ids", rc->name);
  assert_int_equal(epm_ref_load_as(name, "int32", 2, (int64_t[]){m, k}, &rid), 0);
  snprintf(name, sizeof name, "routing_%s_weights", rc->name);
  assert_int_equal(epm_ref_load_f32(name, 2, (int64_t[]){m, k}, &rw), 0);
  /* the bias is part of the deepseek-v3 selection only */
  const int with_bias = c.method == EPM_ROUTING_DEEPSEEK_V3;
  bias.data = NULL;
  if (with_bias) assert_int_equal(epm_ref_load_f32("routing_bias", 1, (int64_t[]){e}, &bias), 0);
  int32_t *ids = malloc((size_t)(m * k) * sizeof(int32_t));
  float *w = malloc((size_t)(m * k) * sizeof(float));
  epm_bf16_t *wb = malloc((size_t)(m * k) * sizeof(epm_bf16_t));
  assert_int_equal(epm_route_f32(&c, lg.data, bias.data, m, ids, w, wb), EPM_OK);
  const int32_t *eid = rid.data;
  const float *ew = rw.data;
  int max_ulps = 0;
  for (int64_t i = 0; i < m * k; i++) {
    if (ids[i] != eid[i])
      fail_msg("%s (%s) token %lld slot %lld: id %d, FlashInfer %d", rc->name, epm_routing_method_name(c.method),
               (long long)(i / k), (long long)(i % k), ids[i], eid[i]);
    int u = 0;
    while (!near_ulps(w[i], ew[i], u) && u < 1000) u++;
    if (u > max_ulps) max_ulps = u;
    assert_int_equal(wb[i], epm_bf16_from_f32(w[i]));
  }
  if (max_ulps > 6) fail_msg("%s: weights differ from FlashInfer by %d ulps", rc->name, max_ulps);
  print_message("routing %s as %s: %lld tokens x %lld experts, k=%lld: ids identical, weights within %d ulp\n",
                rc->name, epm_routing_method_name(c.method), (long long)m, (long long)e, (long long)k, max_ulps);
  free(ids);
  free(w);
  free(wb);
  epm_ref_free(&lg);
  if (with_bias) epm_ref_free(&bias);
  epm_ref_free(&rid);
  epm_ref_free(&rw);
}

/* Every routing case of the bundle, in manifest order. */
static void test_flashinfer_vectors(void **state) {
  (void)state;
  epm_bundle_routing_t r;
  assert_int_equal(epm_bundle_routing(&r), 0);
  for (int i = 0; i < r.ncases; i++) {
    epm_routing_config_t c = r.cases[i].cfg;
    /* the vectors came from FlashInfer, so its kernel limits hold for them */
    if (c.method == EPM_ROUTING_DEEPSEEK_V3 && epm_routing_validate_flashinfer(&c) != EPM_OK)
      fail_msg("%s: %s", r.cases[i].name, epm_last_error());
    check_case(&r, &r.cases[i], c);
    if (c.method == EPM_ROUTING_RENORMALIZE) { /* renormalize-naive is the same math (FlashInfer HEAD comment) */
      c.method = EPM_ROUTING_RENORMALIZE_NAIVE;
      check_case(&r, &r.cases[i], c);
    }
  }
}

/* ---- hand-written ---------------------------------------------------------- */

static void test_ties_lower_index_wins(void **state) {
  (void)state;
  const float l[8] = {1, 3, 3, 0, 3, 2, 3, 1};
  int32_t ids[4];
  float w[4];
  epm_routing_config_t c = cfg(EPM_ROUTING_TOPK, 8, 3);
  route_ok(&c, l, NULL, 1, ids, w);
  assert_int_equal(ids[0], 1);
  assert_int_equal(ids[1], 2);
  assert_int_equal(ids[2], 4);
  /* renormalize: equal weights 1/3, ordered by id */
  c = cfg(EPM_ROUTING_RENORMALIZE, 8, 4);
  route_ok(&c, l, NULL, 1, ids, w);
  const int want[4] = {1, 2, 4, 6};
  for (int j = 0; j < 4; j++) {
    assert_int_equal(ids[j], want[j]);
    assert_true(fabsf(w[j] - 0.25f) < 1e-7f);
  }
  /* all equal: k = E gives 0..E-1 */
  const float z[8] = {0};
  int32_t all[8];
  float wa[8];
  c = cfg(EPM_ROUTING_RENORMALIZE, 8, 8);
  route_ok(&c, z, NULL, 1, all, wa);
  for (int j = 0; j < 8; j++) {
    assert_int_equal(all[j], j);
    assert_true(fabsf(wa[j] - 0.125f) < 1e-7f);
  }
}

static void test_default_and_naive(void **state) {
  (void)state;
  const float l[5] = {0.5f, -1.0f, 2.0f, 1.0f, 0.0f};
  double den = 0;
  for (int i = 0; i < 5; i++) den += exp(l[i]);
  int32_t ids[2];
  float w[2];
  epm_routing_config_t c = cfg(EPM_ROUTING_DEFAULT, 5, 2);
  route_ok(&c, l, NULL, 1, ids, w);
  assert_int_equal(ids[0], 2);
  assert_int_equal(ids[1], 3);
  assert_true(near_ulps(w[0], (float)(exp(2.0) / den), 1));
  assert_true(near_ulps(w[1], (float)(exp(1.0) / den), 1));
  c.method = EPM_ROUTING_RENORMALIZE_NAIVE;
  route_ok(&c, l, NULL, 1, ids, w);
  assert_true(near_ulps(w[0], (float)(exp(2.0) / (exp(2.0) + exp(1.0))), 2));
  assert_true(near_ulps(w[1], (float)(exp(1.0) / (exp(2.0) + exp(1.0))), 2));
  /* llama4: sigmoid of the max */
  c = cfg(EPM_ROUTING_LLAMA4, 5, 1);
  route_ok(&c, l, NULL, 1, ids, w);
  assert_int_equal(ids[0], 2);
  assert_true(near_ulps(w[0], (float)(1.0 / (1.0 + exp(-2.0))), 1));
}

static float sig(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }

/* deepseek-v3, E = 8 in 4 groups of 2, keep 2 groups, top 3.
 * Group scores (sum of both biased scores) decide; the single best expert
 * (7) sits in a group whose partner is very low, so its group is dropped. */
static void test_deepseek_groups(void **state) {
  (void)state;
  const float l[8] = {1.0f, 1.2f, 0.8f, 0.9f, -3.0f, -2.5f, -6.0f, 4.0f};
  int32_t ids[3];
  float w[3];
  epm_routing_config_t c = {EPM_ROUTING_DEEPSEEK_V3, 8, 3, 4, 2, 2.5f};
  route_ok(&c, l, NULL, 1, ids, w);
  /* group sums: g0 s(1)+s(1.2)=1.50, g1 s(.8)+s(.9)=1.40, g2 0.12, g3 ~0.98+0.0025 -> keep g0, g1 */
  assert_int_equal(ids[0], 1);
  assert_int_equal(ids[1], 0);
  assert_int_equal(ids[2], 3);
  double sum = (double)sig(1.2f) + sig(1.0f) + sig(0.9f);
  assert_true(near_ulps(w[0], (float)(sig(1.2f) / (float)sum) * 2.5f, 2));
  assert_true(near_ulps(w[2], (float)(sig(0.9f) / (float)sum) * 2.5f, 2));
  /* ungrouped the best expert comes back */
  c.n_group = 1;
  route_ok(&c, l, NULL, 1, ids, w);
  assert_int_equal(ids[0], 7);
}

/* Biased scores below zero still select by the largest (least negative) b,
 * and weights use the unbiased sigmoid: the order differs from selection. */
static void test_deepseek_negative_bias(void **state) {
  (void)state;
  const float l[4] = {0.0f, 2.0f, -1.0f, 1.0f};
  const float bias[4] = {-2.0f, -2.5f, -1.0f, -3.0f};
  /* b = s + bias: 0.5-2=-1.5, 0.881-2.5=-1.619, 0.269-1=-0.731, 0.731-3=-2.269 */
  int32_t ids[2];
  float w[2];
  epm_routing_config_t c = {EPM_ROUTING_DEEPSEEK_V3, 4, 2, 2, 2, 1.0f};
  route_ok(&c, l, bias, 1, ids, w);
  /* selected {2, 0}; weights by sigmoid: s(0)=0.5 > s(-1)=0.269 -> order 0, 2 */
  assert_int_equal(ids[0], 0);
  assert_int_equal(ids[1], 2);
  float den = sig(0.0f) + sig(-1.0f) + 1e-20f;
  assert_true(near_ulps(w[0], sig(0.0f) / den, 1));
  assert_true(near_ulps(w[1], sig(-1.0f) / den, 1));
  /* groups of 2 with every b negative: g0 = -3.119, g1 = -3.0 -> keep g1 only */
  c.topk_group = 1;
  route_ok(&c, l, bias, 1, ids, w);
  assert_int_equal(ids[0], 3);
  assert_int_equal(ids[1], 2);
}

static void test_deepseek_sigmoid_underflow(void **state) {
  (void)state;
  float l[16];
  for (int i = 0; i < 16; i++) l[i] = -200.0f - (float)i;
  int32_t ids[4];
  float w[4];
  epm_bf16_t wb[4];
  epm_routing_config_t c = {EPM_ROUTING_DEEPSEEK_V3, 16, 4, 4, 2, 2.5f};
  assert_int_equal(epm_route_f32(&c, l, NULL, 1, ids, w, wb), EPM_OK);
  for (int j = 0; j < 4; j++) {
    assert_true(w[j] == w[j]); /* not NaN */
    assert_true(w[j] == 0.0f);
    assert_int_equal(wb[j], 0);
  }
  /* all sigmoids are exactly 0: every score ties, groups 0 and 1 win by index */
  assert_int_equal(ids[0], 0);
  assert_int_equal(ids[3], 3);
  /* partial underflow: one expert finite, three at 0 -> weights rsf, 0, 0, 0 */
  l[5] = 0.0f;
  assert_int_equal(epm_route_f32(&c, l, NULL, 1, ids, w, wb), EPM_OK);
  assert_int_equal(ids[0], 5);
  assert_true(near_ulps(w[0], 2.5f, 1));
  for (int j = 1; j < 4; j++) assert_true(w[j] == 0.0f);
}

static void test_group_limits(void **state) {
  (void)state;
  float l[8];
  for (int i = 0; i < 8; i++) l[i] = (float)((i * 5) % 8) * 0.25f; /* permutation of distinct values */
  int32_t a[8], b[8];
  float wa[8], wb[8];
  /* topk_group == n_group: same as no groups */
  epm_routing_config_t g = {EPM_ROUTING_DEEPSEEK_V3, 8, 3, 4, 4, 1.0f};
  epm_routing_config_t u = {EPM_ROUTING_DEEPSEEK_V3, 8, 3, 1, 1, 1.0f};
  route_ok(&g, l, NULL, 1, a, wa);
  route_ok(&u, l, NULL, 1, b, wb);
  assert_memory_equal(a, b, sizeof(int32_t) * 3);
  assert_memory_equal(wa, wb, sizeof(float) * 3);
  /* smallest groups (2 experts), top_k = every expert of the kept groups */
  epm_routing_config_t full = {EPM_ROUTING_DEEPSEEK_V3, 8, 4, 4, 2, 1.0f};
  route_ok(&full, l, NULL, 1, a, wa);
  /* l: [0, 1.25, 0.5, 1.75, 1.0, 0.25, 1.5, 0.75]; pairs sums by sigmoid: g1 (0.5,1.75) and g3 (1.5,0.75) win */
  int seen[8] = {0};
  for (int j = 0; j < 4; j++) seen[a[j]] = 1;
  assert_true(seen[2] && seen[3] && seen[6] && seen[7]);
  full.top_k = 5;
  assert_int_equal(epm_routing_validate(&full), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "top_k 5"));
  /* k = E for every method */
  for (int m = 0; m < EPM_ROUTING_COUNT; m++) {
    if (m == EPM_ROUTING_LLAMA4) continue;
    epm_routing_config_t c = {(epm_routing_method_t)m, 8, 8, 1, 1, 1.0f};
    route_ok(&c, l, NULL, 1, a, wa);
    int cnt[8] = {0};
    for (int j = 0; j < 8; j++) cnt[a[j]]++;
    for (int j = 0; j < 8; j++) assert_int_equal(cnt[j], 1);
    for (int j = 1; j < 8; j++) assert_true(wa[j - 1] >= wa[j]);
  }
}

static void test_k1_and_multi_token_bf16(void **state) {
  (void)state;
  epm_test_rng_t rng = {42};
  enum { M = 33, E = 32 };
  float l[M * E];
  epm_bf16_t lb[M * E];
  for (int i = 0; i < M * E; i++) {
    lb[i] = epm_bf16_from_f32(2.0f * epm_test_rng_normal(&rng));
    l[i] = epm_bf16_to_f32(lb[i]);
  }
  for (int m = 0; m < EPM_ROUTING_COUNT; m++) {
    epm_routing_config_t c = {(epm_routing_method_t)m, E, 1, 1, 1, 1.0f};
    int32_t a[M], b[M];
    float wa[M], wb[M];
    route_ok(&c, l, NULL, M, a, wa);
    assert_int_equal(epm_route_bf16(&c, lb, NULL, M, b, wb, NULL), EPM_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(wa, wb, sizeof wa);
    for (int t = 0; t < M; t++) { /* k = 1 always picks the argmax logit */
      int best = 0;
      for (int e = 1; e < E; e++)
        if (l[t * E + e] > l[t * E + best]) best = e;
      assert_int_equal(a[t], best);
    }
  }
  /* zero tokens: nothing written, success */
  epm_routing_config_t c = cfg(EPM_ROUTING_TOPK, E, 2);
  assert_int_equal(epm_route_f32(&c, NULL, NULL, 0, NULL, NULL, NULL), EPM_OK);
}

static void expect_invalid(epm_routing_config_t c, const char *needle) {
  epm_status_t st = epm_routing_validate(&c);
  assert_int_not_equal(st, EPM_OK);
  if (!strstr(epm_last_error(), needle)) fail_msg("error '%s' lacks '%s'", epm_last_error(), needle);
}

static void test_invalid_configs(void **state) {
  (void)state;
  expect_invalid(cfg(EPM_ROUTING_TOPK, 8, 0), "top_k 0 must be between 1 and num_experts 8");
  expect_invalid(cfg(EPM_ROUTING_TOPK, 8, 9), "top_k 9 must be between 1 and num_experts 8");
  expect_invalid(cfg(EPM_ROUTING_TOPK, 0, 1), "num_experts 0");
  expect_invalid(cfg(EPM_ROUTING_LLAMA4, 8, 2), "llama4 requires top_k == 1");
  expect_invalid(cfg((epm_routing_method_t)17, 8, 2), "routing method 17");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 10, 2, 4, 2, 1.0f},
                 "num_experts 10 is not a multiple of n_group 4");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 8, 2, 4, 5, 1.0f},
                 "topk_group 5 must be between 1 and n_group 4");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 8, 2, 4, 0, 1.0f}, "topk_group 0");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 8, 2, 8, 2, 1.0f}, "needs >= 2");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 8, 2, 1, 1, 0.0f}, "routed_scaling_factor 0");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 8, 2, 1, 1, NAN}, "routed_scaling_factor nan");
  expect_invalid((epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 8, 2, -1, 1, 1.0f}, "n_group -1");
  /* FlashInfer kernel limits */
  epm_routing_config_t c = {EPM_ROUTING_DEEPSEEK_V3, 16, 4, 4, 2, 1.0f};
  assert_int_equal(epm_routing_validate(&c), EPM_OK);
  assert_int_equal(epm_routing_validate_flashinfer(&c), EPM_ERR_NOT_SUPPORTED);
  assert_non_null(strstr(epm_last_error(), "num_experts 16 outside [32, 512]"));
  c = (epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 256, 23, 8, 4, 1.0f};
  assert_int_equal(epm_routing_validate_flashinfer(&c), EPM_ERR_NOT_SUPPORTED);
  assert_non_null(strstr(epm_last_error(), "top_k 23 > 22"));
  c = (epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 256, 8, 8, 5, 1.0f};
  assert_int_equal(epm_routing_validate_flashinfer(&c), EPM_ERR_NOT_SUPPORTED);
  assert_non_null(strstr(epm_last_error(), "topk_group 5 > 4"));
  c = (epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 256, 8, 4, 4, 1.0f};
  assert_int_equal(epm_routing_validate_flashinfer(&c), EPM_ERR_NOT_SUPPORTED);
  assert_non_null(strstr(epm_last_error(), "64 experts per group > 32"));
  c = cfg(EPM_ROUTING_DEFAULT, 256, 8);
  assert_int_equal(epm_routing_validate_flashinfer(&c), EPM_ERR_NOT_SUPPORTED);
  /* non-finite logits and bias name the element */
  float l[4] = {0, 1, NAN, 2};
  int32_t ids[1];
  float w[1];
  c = cfg(EPM_ROUTING_TOPK, 4, 1);
  assert_int_equal(epm_route_f32(&c, l, NULL, 1, ids, w, NULL), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "logits[token 0, expert 2] = nan"));
  l[2] = 0;
  const float bias[4] = {0, INFINITY, 0, 0};
  c = (epm_routing_config_t){EPM_ROUTING_DEEPSEEK_V3, 4, 1, 1, 1, 1.0f};
  assert_int_equal(epm_route_f32(&c, l, bias, 1, ids, w, NULL), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "bias[1] = inf"));
  /* dims of every preset give a valid config */
  for (const char *const *n = epm_model_preset_names(); *n; n++) {
    epm_model_dims_t d;
    epm_routing_config_t rc;
    assert_int_equal(epm_model_preset(*n, &d), EPM_OK);
    assert_int_equal(epm_routing_config_from_dims(&d, &rc), EPM_OK);
    assert_int_equal(rc.top_k, d.top_k);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flashinfer_vectors),
      cmocka_unit_test(test_ties_lower_index_wins),
      cmocka_unit_test(test_default_and_naive),
      cmocka_unit_test(test_deepseek_groups),
      cmocka_unit_test(test_deepseek_negative_bias),
      cmocka_unit_test(test_deepseek_sigmoid_underflow),
      cmocka_unit_test(test_group_limits),
      cmocka_unit_test(test_k1_and_multi_token_bf16),
      cmocka_unit_test(test_invalid_configs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
