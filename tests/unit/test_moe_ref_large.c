/* SPDX-License-Identifier: Apache-2.0 */
/* test_moe_ref_large: DeepSeek-R1 dims (H 7168, I 2048, E 256, top-8,
 * deepseek-v3 routing, one shared expert) with 8 local experts and 256 tokens:
 * the whole layer runs, stays finite and routes to the slice, and sampled
 * tokens agree with the float64 naive evaluation. Prints the stage times.
 * Label `large` (several seconds on 2 cores; skipped by the sanitizer CI). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/moe_ref.h"
#include "moe_naive.h"

static void test_deepseek_r1_dims(void **state) {
  (void)state;
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("deepseek-r1", &d), EPM_OK);
  const int64_t H = d.hidden, I = d.intermediate, k = d.top_k, m = 256, el = 8;
  epm_layer_t l;
  assert_int_equal(epm_layer_generate(&d, 3, 2026, 0, el, &l), EPM_OK);
  epm_bf16_t *x = malloc((size_t)(m * H) * 2), *ob = malloc((size_t)(m * H) * 2);
  float *out = malloc((size_t)(m * H) * 4);
  int32_t *ids = malloc((size_t)(m * k) * 4);
  float *w = malloc((size_t)(m * k) * 4);
  assert_int_equal(epm_layer_random_hidden(H, 2026, 0, m, x), EPM_OK);
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.include_shared = 0;
  epm_moe_ref_timing_t t;
  assert_int_equal(epm_moe_ref_layer(&l, x, NULL, m, &o, ids, w, out, ob, &t), EPM_OK);
  print_message("deepseek-r1 dims, 8 local experts, 256 tokens, %d threads: layer %.3f s (router %.3f, "
                "gemm1 %.3f, requant %.3f, gemm2 %.3f, finalize %.3f)\n",
                epm_moe_ref_threads(0), t.total_s, t.router_s, t.gemm1_s, t.requant_s, t.gemm2_s, t.finalize_s);
  int64_t slots = 0, used = 0;
  int hit[256] = {0};
  for (int64_t i = 0; i < m * k; i++) {
    hit[ids[i]] = 1;
    slots += ids[i] < el;
  }
  for (int e = 0; e < 256; e++) used += hit[e];
  print_message("local slots %lld, experts used %lld of 256\n", (long long)slots, (long long)used);
  assert_true(slots > 0);
  assert_true(used > 128); /* the generated router spreads tokens */
  for (int64_t i = 0; i < m * H; i++) assert_true(isfinite(out[i]));

  /* sampled tokens with local slots vs the float64 naive evaluation */
  double *y = malloc((size_t)H * 8), *scr = malloc((size_t)(H + 2 * I) * 8), *ref = malloc((size_t)H * 8);
  uint8_t *q = malloc((size_t)(m * H / 2)), *s = malloc((size_t)(m * H / 16));
  assert_int_equal(epm_nvfp4_quantize_bf16(x, m, H, 1.0f / l.input_scale, EPM_SF_LINEAR, q, s), EPM_OK);
  int checked = 0;
  for (int64_t tk = 0; tk < m && checked < 2; tk++) {
    int local = 0;
    for (int64_t j = 0; j < k; j++) local += ids[tk * k + j] < el;
    if (!local) continue;
    for (int64_t h = 0; h < H; h++) ref[h] = 0;
    for (int64_t j = 0; j < k; j++) {
      const int64_t e = ids[tk * k + j];
      if (e >= el) continue;
      const epm_expert_bank_t *b = &l.experts;
      nv_expert_t ex = {H, I, b->gate_w + e * I * H / 2, b->gate_sf + e * I * H / 16, b->up_w + e * I * H / 2,
                        b->up_sf + e * I * H / 16, b->down_w + e * H * I / 2, b->down_sf + e * H * I / 16,
                        b->gate_up_scale_2[e], b->down_scale_2[e]};
      nv_expert(&ex, q + tk * H / 2, s + tk * H / 16, l.input_scale, (float)(1.0f / l.down_input_scale), 1, y,
                scr);
      for (int64_t h = 0; h < H; h++) ref[h] += nv_bf16(w[tk * k + j]) * y[h];
    }
    double rel = nv_rel_l2(ref, out + tk * H, H);
    print_message("token %lld (%d local slots) vs float64 naive: rel-L2 %.3g\n", (long long)tk, local, rel);
    assert_true(rel <= 1e-2);
    checked++;
  }
  assert_int_equal(checked, 2);
  free(y);
  free(scr);
  free(ref);
  free(q);
  free(s);
  free(x);
  free(ob);
  free(out);
  free(ids);
  free(w);
  epm_layer_free(&l);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_deepseek_r1_dims)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
