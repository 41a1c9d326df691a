/* SPDX-License-Identifier: Apache-2.0 */
/* test_moe_ref: the CPU reference MoE against FlashInfer's moe_* vectors (dims,
 * EP slices and routing method from the bundle's manifest), against a
 * separate float64 evaluation (tests/unit/moe_naive.h), and its invariants
 * (token permutation, EP halves, non-local zeros, empty experts, zero tokens,
 * thread-count independence); plus the layer generator. */
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
#include "moe_ref_math.h"
#include "testutil.h"

/* ---- FlashInfer moe_* vectors ---------------------------------------------- */

/* Every dim, dtype, EP slice and the routing method come from the bundle's
 * computations.moe.params; each array is checked against them on load. */
typedef struct {
  epm_bundle_moe_t p;
  epm_ref_array_t hid, hsf, ids, w, gw, gs, uw, us, dw, ds, ws13, ws2;
  float input_scale, down_input_scale, c_global;
} fi_moe_t;

static void fi_load(fi_moe_t *f) {
  assert_int_equal(epm_bundle_moe(&f->p), 0);
  const int64_t T = f->p.tokens, H = f->p.hidden, I = f->p.intermediate, E = f->p.num_experts, k = f->p.top_k;
  assert_int_equal(epm_ref_load_as("moe_hidden_fp4", "uint8", 2, (int64_t[]){T, H / 2}, &f->hid), 0);
  assert_int_equal(epm_ref_load_as("moe_hidden_sf_linear", "uint8", 2, (int64_t[]){T, H / 16}, &f->hsf), 0);
  assert_int_equal(epm_ref_load_as("moe_topk_ids", "int32", 2, (int64_t[]){T, k}, &f->ids), 0);
  assert_int_equal(epm_ref_load_f32("moe_topk_weights", 2, (int64_t[]){T, k}, &f->w), 0);
  assert_int_equal(epm_ref_load_as("moe_gate_weight", "uint8", 3, (int64_t[]){E, I, H / 2}, &f->gw), 0);
  assert_int_equal(epm_ref_load_as("moe_gate_weight_scale", "uint8", 3, (int64_t[]){E, I, H / 16}, &f->gs), 0);
  assert_int_equal(epm_ref_load_as("moe_up_weight", "uint8", 3, (int64_t[]){E, I, H / 2}, &f->uw), 0);
  assert_int_equal(epm_ref_load_as("moe_up_weight_scale", "uint8", 3, (int64_t[]){E, I, H / 16}, &f->us), 0);
  assert_int_equal(epm_ref_load_as("moe_down_weight", "uint8", 3, (int64_t[]){E, H, I / 2}, &f->dw), 0);
  assert_int_equal(epm_ref_load_as("moe_down_weight_scale", "uint8", 3, (int64_t[]){E, H, I / 16}, &f->ds), 0);
  assert_int_equal(epm_ref_load_f32("moe_gate_up_weight_scale_2", 1, (int64_t[]){E}, &f->ws13), 0);
  assert_int_equal(epm_ref_load_f32("moe_down_weight_scale_2", 1, (int64_t[]){E}, &f->ws2), 0);
  assert_int_equal(epm_ref_scalar_f32("moe_input_scale", &f->input_scale), 0);
  assert_int_equal(epm_ref_scalar_f32("moe_down_input_scale", &f->down_input_scale), 0);
  assert_int_equal(epm_ref_scalar_f32("moe_c_global_sf", &f->c_global), 0);
}

static void fi_free(fi_moe_t *f) {
  epm_ref_array_t *all[] = {&f->hid, &f->hsf, &f->ids, &f->w, &f->gw, &f->gs, &f->uw, &f->us, &f->dw, &f->ds,
                            &f->ws13, &f->ws2};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) epm_ref_free(all[i]);
}

static epm_model_dims_t fi_dims(const epm_bundle_moe_t *p) {
  epm_model_dims_t d = {"fi-moe", p->hidden, p->intermediate, p->num_experts, p->top_k, p->routing.n_group,
                        p->routing.topk_group, p->routing.routed_scaling_factor, p->routing.method, 0, 0, 1};
  return d;
}

/* A layer holding experts [off, off + cnt) of the FlashInfer MoE. */
static void fi_layer(const fi_moe_t *f, int64_t off, int64_t cnt, epm_layer_t *l) {
  epm_model_dims_t d = fi_dims(&f->p);
  const int64_t H = d.hidden, I = d.intermediate;
  assert_int_equal(epm_layer_alloc(&d, off, cnt, l), EPM_OK);
  /* per expert: gate/up [I, H] and down [H, I], NVFP4 (H*I/2 code bytes, H*I/16 scales) */
  const size_t w = (size_t)(I * H / 2), sf = (size_t)(I * H / 16), o = (size_t)off, n = (size_t)cnt;
  memcpy(l->experts.gate_w, (uint8_t *)f->gw.data + o * w, n * w);
  memcpy(l->experts.up_w, (uint8_t *)f->uw.data + o * w, n * w);
  memcpy(l->experts.down_w, (uint8_t *)f->dw.data + o * w, n * w);
  memcpy(l->experts.gate_sf, (uint8_t *)f->gs.data + o * sf, n * sf);
  memcpy(l->experts.up_sf, (uint8_t *)f->us.data + o * sf, n * sf);
  memcpy(l->experts.down_sf, (uint8_t *)f->ds.data + o * sf, n * sf);
  memcpy(l->experts.gate_up_scale_2, (float *)f->ws13.data + off, n * sizeof(float));
  memcpy(l->experts.down_scale_2, (float *)f->ws2.data + off, n * sizeof(float));
  l->input_scale = f->input_scale;
  l->down_input_scale = f->down_input_scale;
}

/* Compare to a FlashInfer [tokens, hidden] output (float32, or bfloat16
 * widened): report rel-L2 and max abs error. */
static void fi_compare(const fi_moe_t *f, const char *what, const float *got, const char *ref_name,
                       double max_rel_l2, double max_abs_frac) {
  epm_ref_array_t r;
  assert_int_equal(epm_ref_load_f32(ref_name, 2, (int64_t[]){f->p.tokens, f->p.hidden}, &r), 0);
  const float *ref = r.data;
  double num = 0, den = 0, maxabs = 0, refmax = 0;
  int64_t exact = 0;
  for (int64_t i = 0; i < r.numel; i++) {
    double d = (double)got[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
    maxabs = fmax(maxabs, fabs(d));
    refmax = fmax(refmax, fabs(ref[i]));
    exact += got[i] == ref[i];
  }
  double rel = sqrt(num / (den > 0 ? den : 1));
  print_message("%s vs %s [%lld, %lld]: rel-L2 %.3g, max abs %.3g (max |ref| %.3g), %lld/%lld elements bit-equal\n",
                what, ref_name, (long long)f->p.tokens, (long long)f->p.hidden, rel, maxabs, refmax,
                (long long)exact, (long long)r.numel);
  assert_true(rel <= max_rel_l2);
  assert_true(maxabs <= max_abs_frac * refmax);
  epm_ref_free(&r);
}

/* Tolerance vs FlashInfer: the same math with another fp32 summation order
 * (measured: rel-L2 1.1e-7, max abs 1.5e-7 of max |ref|). A re-quantized
 * intermediate code that moved by one step would cost ~1e-2 in that token's
 * rel-L2, so these bounds also say no code moved on this data. */
#define FI_REL_L2 1e-5
#define FI_MAX_ABS 1e-5

static void run_fi(const fi_moe_t *f, epm_bundle_slice_t s, int weights_fp32, float *out, epm_bf16_t *ob) {
  epm_layer_t l;
  fi_layer(f, s.off, s.count, &l);
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.weights_fp32 = weights_fp32;
  o.expert_out_fp32 = 1; /* the FlashInfer reference keeps y in fp32 */
  o.mid_global_scale = f->c_global;
  epm_status_t st = epm_moe_ref_experts(&l, f->hid.data, f->hsf.data, f->input_scale, f->p.tokens, f->p.top_k,
                                        f->ids.data, f->w.data, &o, out, ob, NULL);
  if (st != EPM_OK) fail_msg("experts: %s", epm_last_error());
  epm_layer_free(&l);
}

static void test_flashinfer_moe(void **state) {
  (void)state;
  fi_moe_t f;
  fi_load(&f);
  const int64_t T = f.p.tokens, H = f.p.hidden;
  const epm_bundle_slice_t all = {0, f.p.num_experts};
  float *out = calloc((size_t)(T * H), sizeof(float)), *lo = calloc((size_t)(T * H), sizeof(float));
  float *hi = calloc((size_t)(T * H), sizeof(float));
  epm_bf16_t *ob = calloc((size_t)(T * H), sizeof(epm_bf16_t));
  char what[64];
  run_fi(&f, all, 1, out, ob);
  fi_compare(&f, "full, fp32 weights", out, "moe_out_fp32", FI_REL_L2, FI_MAX_ABS);
  { /* bf16 output: every element within one bf16 ulp of FlashInfer's */
    epm_ref_array_t rb;
    int64_t same = 0;
    assert_int_equal(epm_ref_load_as("moe_out_bf16", "bfloat16", 2, (int64_t[]){T, H}, &rb), 0);
    const epm_bf16_t *r = rb.data;
    for (int64_t i = 0; i < T * H; i++) {
      float a = epm_bf16_to_f32(ob[i]), b = epm_bf16_to_f32(r[i]);
      same += ob[i] == r[i];
      assert_true(fabsf(a - b) <= 0x1p-7f * fabsf(b));
    }
    print_message("full bf16 out vs moe_out_bf16: %lld/%lld identical, rest 1 ulp\n", (long long)same,
                  (long long)(T * H));
    epm_ref_free(&rb);
  }
  run_fi(&f, all, 0, out, NULL);
  fi_compare(&f, "full, bf16 weights", out, "moe_out_wbf16_fp32", FI_REL_L2, FI_MAX_ABS);
  run_fi(&f, f.p.hi, 1, hi, NULL);
  snprintf(what, sizeof what, "experts [%lld, %lld)", (long long)f.p.hi.off, (long long)(f.p.hi.off + f.p.hi.count));
  fi_compare(&f, what, hi, "moe_out_local_hi_fp32", FI_REL_L2, FI_MAX_ABS);
  run_fi(&f, f.p.lo, 1, lo, NULL);
  snprintf(what, sizeof what, "experts [%lld, %lld)", (long long)f.p.lo.off, (long long)(f.p.lo.off + f.p.lo.count));
  fi_compare(&f, what, lo, "moe_out_local_lo_fp32", FI_REL_L2, FI_MAX_ABS);
  /* two slices that split [0, E) add up to the full layer within fp32
   * rounding of one add */
  if (f.p.lo.off == 0 && f.p.lo.count == f.p.hi.off && f.p.hi.off + f.p.hi.count == f.p.num_experts) {
    run_fi(&f, all, 1, out, NULL);
    for (int64_t i = 0; i < T * H; i++)
      assert_true(fabsf(lo[i] + hi[i] - out[i]) <= 1e-6f * (fabsf(lo[i]) + fabsf(hi[i])) + 1e-30f);
    print_message("lo + hi slices = full layer\n");
  } else {
    print_message("slices lo and hi do not split [0, %lld): no sum check\n", (long long)f.p.num_experts);
  }
  free(out);
  free(lo);
  free(hi);
  free(ob);
  fi_free(&f);
}

/* The bundle's routing method reproduces moe_topk_ids from moe_logits. */
static void test_flashinfer_moe_routing(void **state) {
  (void)state;
  epm_bundle_moe_t p;
  epm_ref_array_t lg, ids, w;
  assert_int_equal(epm_bundle_moe(&p), 0);
  const int64_t T = p.tokens, E = p.num_experts, k = p.top_k;
  assert_int_equal(epm_ref_load_f32("moe_logits", 2, (int64_t[]){T, E}, &lg), 0);
  assert_int_equal(epm_ref_load_as("moe_topk_ids", "int32", 2, (int64_t[]){T, k}, &ids), 0);
  assert_int_equal(epm_ref_load_f32("moe_topk_weights", 2, (int64_t[]){T, k}, &w), 0);
  int32_t *gi = malloc((size_t)(T * k) * sizeof(int32_t));
  float *gw = malloc((size_t)(T * k) * sizeof(float));
  /* no bias array in the moe_* section: a deepseek-v3 bundle would route without it */
  assert_int_equal(epm_route_f32(&p.routing, lg.data, NULL, T, gi, gw, NULL), EPM_OK);
  const int32_t *ri = ids.data;
  const float *rw = w.data;
  double maxrel = 0;
  for (int64_t i = 0; i < T * k; i++) {
    if (gi[i] != ri[i])
      fail_msg("moe routing (%s) token %lld slot %lld: id %d, FlashInfer %d", p.routing_name, (long long)(i / k),
               (long long)(i % k), gi[i], ri[i]);
    maxrel = fmax(maxrel, fabs((double)gw[i] - rw[i]) / fmax(fabs((double)rw[i]), 1e-30));
  }
  print_message("moe routing %s over [%lld, %lld] logits: ids identical, weights within %.3g relative\n",
                p.routing_name, (long long)T, (long long)E, maxrel);
  assert_true(maxrel <= 1e-6); /* a few fp32 ulp: the reference sums in fp32, we in double */
  free(gi);
  free(gw);
  epm_ref_free(&lg);
  epm_ref_free(&ids);
  epm_ref_free(&w);
}

/* ---- generated tiny layer ------------------------------------------------- */

typedef struct {
  epm_model_dims_t d;
  int64_t m, k, H;
  epm_bf16_t *x;
  uint8_t *xq, *xs;
  int32_t *ids;
  float *w;
} batch_t;

/* m random unit-RMS tokens quantized with input_scale; k distinct experts per
 * token, never `avoid` (-1: none); weights in [0.1, 1.1). */
static void batch_make(const epm_model_dims_t *d, int64_t m, uint64_t seed, float input_scale, int32_t avoid,
                       batch_t *b) {
  epm_test_rng_t rng = {seed};
  b->d = *d;
  b->m = m;
  b->k = d->top_k;
  b->H = d->hidden;
  const int64_t H = d->hidden, E = d->num_experts, k = d->top_k;
  b->x = malloc((size_t)(m * H + 1) * sizeof(epm_bf16_t));
  b->xq = malloc((size_t)(m * H / 2 + 1));
  b->xs = malloc((size_t)(m * H / 16 + 1));
  b->ids = malloc((size_t)(m * k + 1) * sizeof(int32_t));
  b->w = malloc((size_t)(m * k + 1) * sizeof(float));
  for (int64_t i = 0; i < m * H; i++) b->x[i] = epm_bf16_from_f32(epm_test_rng_normal(&rng));
  assert_int_equal(epm_nvfp4_quantize_bf16(b->x, m, H, 1.0f / input_scale, EPM_SF_LINEAR, b->xq, b->xs), EPM_OK);
  for (int64_t t = 0; t < m; t++) { /* k distinct random experts, random positive weights */
    for (int64_t j = 0; j < k; j++) {
      int32_t e;
      int dup;
      do {
        e = (int32_t)(epm_test_rng_u64(&rng) % (uint64_t)E);
        dup = e == avoid;
        for (int64_t q = 0; q < j; q++) dup |= b->ids[t * k + q] == e;
      } while (dup);
      b->ids[t * k + j] = e;
      b->w[t * k + j] = 0.1f + epm_test_rng_uniform(&rng);
    }
  }
}

static void batch_free(batch_t *b) {
  free(b->x);
  free(b->xq);
  free(b->xs);
  free(b->ids);
  free(b->w);
}

static void experts(const epm_layer_t *l, const batch_t *b, const epm_moe_ref_opts_t *o, float *out,
                    epm_bf16_t *ob) {
  epm_status_t st =
      epm_moe_ref_experts(l, b->xq, b->xs, l->input_scale, b->m, b->k, b->ids, b->w, o, out, ob, NULL);
  if (st != EPM_OK) fail_msg("experts: %s", epm_last_error());
}

static epm_model_dims_t tiny(void) {
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("tiny", &d), EPM_OK);
  return d;
}

static nv_expert_t nv_of(const epm_expert_bank_t *bk, int64_t e) {
  const int64_t H = bk->hidden, I = bk->intermediate;
  nv_expert_t x = {H, I, bk->gate_w + e * I * H / 2, bk->gate_sf + e * I * H / 16, bk->up_w + e * I * H / 2,
                   bk->up_sf + e * I * H / 16, bk->down_w + e * H * I / 2, bk->down_sf + e * H * I / 16,
                   bk->gate_up_scale_2[e], bk->down_scale_2[e]};
  return x;
}

/* The naive float64 layer: out[t] = bf16(sum_j bf16(w) * bf16(y_j)) over
 * local slots; with `plain`, no bf16 rounding of w, y or out. */
static void naive_experts(const epm_layer_t *l, const batch_t *b, int plain, double *out) {
  const int64_t H = b->H, I = l->experts.intermediate, k = b->k;
  double *y = malloc((size_t)H * sizeof(double)), *scr = malloc((size_t)(H + 2 * I) * sizeof(double));
  const double g_mid = (float)(1.0f / l->down_input_scale);
  for (int64_t t = 0; t < b->m; t++) {
    for (int64_t h = 0; h < H; h++) out[t * H + h] = 0;
    for (int64_t j = 0; j < k; j++) {
      int64_t e = b->ids[t * k + j] - l->expert_offset;
      if (e < 0 || e >= l->experts.count) continue;
      nv_expert_t ex = nv_of(&l->experts, e);
      nv_expert(&ex, b->xq + t * H / 2, b->xs + t * H / 16, l->input_scale, g_mid, !plain, y, scr);
      double wk = plain ? b->w[t * k + j] : nv_bf16(b->w[t * k + j]);
      for (int64_t h = 0; h < H; h++) out[t * H + h] += wk * y[h];
    }
    if (!plain)
      for (int64_t h = 0; h < H; h++) out[t * H + h] = nv_bf16(out[t * H + h]);
  }
  free(y);
  free(scr);
}

static void test_vs_naive_float64(void **state) {
  (void)state;
  epm_model_dims_t d = tiny();
  epm_layer_t l;
  assert_int_equal(epm_layer_generate(&d, 3, 7, 0, d.num_experts, &l), EPM_OK);
  batch_t b;
  batch_make(&d, 64, 11, l.input_scale, 5, &b); /* expert 5 gets no tokens */
  const int64_t n = b.m * d.hidden;
  float *out = malloc((size_t)n * sizeof(float));
  epm_bf16_t *ob = malloc((size_t)n * sizeof(epm_bf16_t));
  double *ref = malloc((size_t)n * sizeof(double));
  experts(&l, &b, NULL, out, ob);
  naive_experts(&l, &b, 0, ref);
  for (int64_t i = 0; i < n; i++) out[i] = epm_bf16_to_f32(ob[i]);
  double rel = nv_rel_l2(ref, out, n);
  print_message("tiny layer vs float64 naive: rel-L2 %.3g on bf16 outputs\n", rel);
  assert_true(rel <= 1e-2);
  /* without the bf16 roundings the two agree to fp32 summation error */
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.weights_fp32 = o.expert_out_fp32 = 1;
  experts(&l, &b, &o, out, NULL);
  naive_experts(&l, &b, 1, ref);
  double rel32 = nv_rel_l2(ref, out, n);
  print_message("tiny layer vs float64 naive, fp32 mode: rel-L2 %.3g\n", rel32);
  assert_true(rel32 <= 1e-5);
  double rms = 0;
  for (int64_t i = 0; i < n; i++) rms += ref[i] * ref[i];
  rms = sqrt(rms / (double)n);
  print_message("output RMS %.3g\n", rms);
  assert_true(rms > 0.05 && rms < 20); /* realistic magnitudes from the generator */
  free(out);
  free(ob);
  free(ref);
  batch_free(&b);
  epm_layer_free(&l);
}

static void test_invariants(void **state) {
  (void)state;
  epm_model_dims_t d = tiny();
  const int64_t E = d.num_experts, H = d.hidden;
  epm_layer_t full, lo, hi;
  assert_int_equal(epm_layer_generate(&d, 1, 99, 0, E, &full), EPM_OK);
  assert_int_equal(epm_layer_generate(&d, 1, 99, 0, E / 2, &lo), EPM_OK);
  assert_int_equal(epm_layer_generate(&d, 1, 99, E / 2, E / 2, &hi), EPM_OK);
  /* EP slices of the generator are slices of the full model */
  const size_t w = (size_t)(d.intermediate * H / 2);
  assert_memory_equal(hi.experts.gate_w, full.experts.gate_w + (size_t)(E / 2) * w, (size_t)(E / 2) * w);
  assert_memory_equal(hi.experts.down_w, full.experts.down_w + (size_t)(E / 2) * w, (size_t)(E / 2) * w);
  assert_memory_equal(lo.experts.up_sf, full.experts.up_sf, (size_t)(E / 2) * w / 8);
  assert_memory_equal(hi.router_w, full.router_w, (size_t)(E * H) * sizeof(float));
  assert_memory_equal(hi.shared.gate_w, full.shared.gate_w, (size_t)(d.shared_intermediate * H / 2));

  batch_t b;
  batch_make(&d, 40, 5, full.input_scale, -1, &b);
  /* token 0: every slot outside [0, E/2) */
  for (int64_t j = 0; j < b.k; j++) b.ids[j] = (int32_t)(E / 2 + j);
  const int64_t n = b.m * H;
  float *of = malloc((size_t)n * 4), *ol = malloc((size_t)n * 4), *oh = malloc((size_t)n * 4);
  epm_bf16_t *bf = malloc((size_t)n * 2), *bl = malloc((size_t)n * 2), *bh = malloc((size_t)n * 2);
  experts(&full, &b, NULL, of, bf);
  experts(&lo, &b, NULL, ol, bl);
  experts(&hi, &b, NULL, oh, bh);
  for (int64_t h = 0; h < H; h++) { /* non-local: exactly +0 */
    assert_true(ol[h] == 0.0f && !signbit(ol[h]));
    assert_int_equal(bl[h], 0);
  }
  double maxd = 0;
  for (int64_t i = 0; i < n; i++) {
    float sum = epm_bf16_to_f32(bl[i]) + epm_bf16_to_f32(bh[i]), ref = epm_bf16_to_f32(bf[i]);
    /* each of the three bf16 roundings moves a value by at most 2^-8 of it */
    float tol = 0x1p-8f * (fabsf(epm_bf16_to_f32(bl[i])) + fabsf(epm_bf16_to_f32(bh[i])) + fabsf(ref)) * 1.01f;
    maxd = fmax(maxd, fabsf(sum - ref));
    if (fabsf(sum - ref) > tol) fail_msg("element %lld: lo+hi %g, full %g", (long long)i, sum, ref);
  }
  print_message("halves vs full: max |bf16(lo)+bf16(hi) - bf16(full)| = %.3g\n", maxd);

  /* permuting tokens permutes outputs, bit for bit */
  batch_t p = b;
  p.xq = malloc((size_t)(n / 2));
  p.xs = malloc((size_t)(n / 16));
  p.ids = malloc((size_t)(b.m * b.k) * sizeof(int32_t));
  p.w = malloc((size_t)(b.m * b.k) * sizeof(float));
  for (int64_t t = 0; t < b.m; t++) {
    int64_t s = (t * 17 + 3) % b.m; /* 17 is coprime with 40 */
    memcpy(p.xq + t * H / 2, b.xq + s * H / 2, (size_t)H / 2);
    memcpy(p.xs + t * H / 16, b.xs + s * H / 16, (size_t)H / 16);
    memcpy(p.ids + t * b.k, b.ids + s * b.k, (size_t)b.k * sizeof(int32_t));
    memcpy(p.w + t * b.k, b.w + s * b.k, (size_t)b.k * sizeof(float));
  }
  epm_moe_ref_opts_t o1 = EPM_MOE_REF_OPTS_INIT;
  o1.threads = 3; /* also: the thread count does not change a bit */
  experts(&full, &p, &o1, oh, bh);
  for (int64_t t = 0; t < b.m; t++) {
    int64_t s = (t * 17 + 3) % b.m;
    assert_memory_equal(oh + t * H, of + s * H, (size_t)H * sizeof(float));
    assert_memory_equal(bh + t * H, bf + s * H, (size_t)H * sizeof(epm_bf16_t));
  }
  free(p.xq);
  free(p.xs);
  free(p.ids);
  free(p.w);

  /* zero tokens: success, nothing touched */
  assert_int_equal(epm_moe_ref_experts(&full, NULL, NULL, full.input_scale, 0, b.k, NULL, NULL, NULL, NULL, NULL,
                                       NULL),
                   EPM_OK);
  /* a slice with no experts at all gives zeros */
  epm_layer_t none;
  assert_int_equal(epm_layer_alloc(&d, 3, 0, &none), EPM_OK);
  none.input_scale = full.input_scale;
  none.down_input_scale = full.down_input_scale;
  experts(&none, &b, NULL, ol, bl);
  for (int64_t i = 0; i < n; i++) assert_true(ol[i] == 0.0f && bl[i] == 0);
  epm_layer_free(&none);

  free(of);
  free(ol);
  free(oh);
  free(bf);
  free(bl);
  free(bh);
  batch_free(&b);
  epm_layer_free(&full);
  epm_layer_free(&lo);
  epm_layer_free(&hi);
}

static void test_errors(void **state) {
  (void)state;
  epm_model_dims_t d = tiny();
  epm_layer_t l;
  assert_int_equal(epm_layer_generate(&d, 0, 1, 4, 4, &l), EPM_OK);
  batch_t b;
  batch_make(&d, 4, 2, l.input_scale, -1, &b);
  float out[4 * 256];
  b.ids[6] = 16;
  assert_int_equal(epm_moe_ref_experts(&l, b.xq, b.xs, l.input_scale, 4, b.k, b.ids, b.w, NULL, out, NULL, NULL),
                   EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "topk_ids[token 1, slot 2] = 16 is outside [0, num_experts 16)"));
  b.ids[6] = 0;
  b.w[3] = NAN;
  assert_int_equal(epm_moe_ref_experts(&l, b.xq, b.xs, l.input_scale, 4, b.k, b.ids, b.w, NULL, out, NULL, NULL),
                   EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "topk_weights[token 0, slot 3] = nan"));
  b.w[3] = 1.0f;
  assert_int_equal(epm_moe_ref_experts(&l, b.xq, b.xs, 0.0f, 4, b.k, b.ids, b.w, NULL, out, NULL, NULL),
                   EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "input decode scale 0"));
  assert_int_equal(epm_moe_ref_experts(&l, b.xq, b.xs, 1.0f, 4, 17, b.ids, b.w, NULL, out, NULL, NULL),
                   EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "top_k 17"));
  l.expert_offset = 13;
  assert_int_equal(epm_moe_ref_experts(&l, b.xq, b.xs, 1.0f, 4, b.k, b.ids, b.w, NULL, out, NULL, NULL),
                   EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "local experts [13, 13 + 4)"));
  l.expert_offset = 4;
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.mid_global_scale = -1.0f;
  assert_int_equal(epm_moe_ref_experts(&l, b.xq, b.xs, 1.0f, 4, b.k, b.ids, b.w, &o, out, NULL, NULL),
                   EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "mid_global_scale -1"));
  epm_layer_t bad;
  assert_int_equal(epm_layer_alloc(&d, 10, 8, &bad), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "[10, 10 + 8)"));
  batch_free(&b);
  epm_layer_free(&l);
  epm_layer_free(&l); /* idempotent */
}

/* The fast decoder equals the codec's dequantize with decode scale 1. */
static void test_decode_matches_codec(void **state) {
  (void)state;
  enum { R = 3, C = 64 };
  uint8_t pk[R * C / 2], sf[R * C / 16];
  epm_test_rng_t rng = {3};
  for (size_t i = 0; i < sizeof pk; i++) pk[i] = (uint8_t)epm_test_rng_u64(&rng);
  for (size_t i = 0; i < sizeof sf; i++) sf[i] = (uint8_t)(epm_test_rng_u64(&rng) % 0x7F); /* no NaN */
  float a[R * C], b[R * C];
  epm__nvfp4_decode_exact(pk, sf, R, C, a);
  assert_int_equal(epm_nvfp4_dequantize(pk, sf, R, C, 1.0f, EPM_SF_LINEAR, b), EPM_OK);
  assert_memory_equal(a, b, sizeof a);
}

/* Generator: ModelOpt conventions hold and magnitudes are realistic. */
static void test_generator(void **state) {
  (void)state;
  epm_model_dims_t d = tiny();
  epm_layer_t l, l2;
  assert_int_equal(epm_layer_generate(&d, 2, 5, 0, d.num_experts, &l), EPM_OK);
  assert_int_equal(epm_layer_generate(&d, 2, 6, 0, d.num_experts, &l2), EPM_OK);
  const int64_t H = d.hidden, I = d.intermediate, E = d.num_experts;
  assert_memory_not_equal(l.experts.gate_w, l2.experts.gate_w, (size_t)(I * H / 2)); /* seed matters */
  /* bank bytes: three [I, H] NVFP4 tensors (H*I/2 + H*I/16 each) + two fp32 scales, per expert */
  assert_true(epm_expert_bank_bytes(&l.experts) == (size_t)(E * (3 * (H * I / 2 + H * I / 16) + 8)));
  assert_true(epm_expert_bank_bytes(&l.shared) == (size_t)(3 * (H * d.shared_intermediate / 2 + H * d.shared_intermediate / 16) + 8));
  /* seeded tokens: row t depends only on (seed, global token) */
  epm_bf16_t *xa = malloc((size_t)(10 * H) * 2), *xb = malloc((size_t)(4 * H) * 2);
  assert_int_equal(epm_layer_random_hidden(H, 77, 0, 10, xa), EPM_OK);
  assert_int_equal(epm_layer_random_hidden(H, 77, 6, 4, xb), EPM_OK);
  assert_memory_equal(xa + 6 * H, xb, (size_t)(4 * H) * 2);
  double xs = 0;
  for (int64_t i = 0; i < 10 * H; i++) xs += (double)epm_bf16_to_f32(xa[i]) * epm_bf16_to_f32(xa[i]);
  assert_true(fabs(sqrt(xs / (double)(10 * H)) - 1.0) < 0.05); /* unit RMS */
  free(xa);
  free(xb);
  for (int64_t e = 0; e < E; e++) {
    /* weight_scale_2 = amax/2688, so the block holding amax (gate or up) has scale 448 */
    int max13 = 0, max2 = 0, zero = 0;
    for (int64_t i = 0; i < I * H / 16; i++) {
      max13 = l.experts.gate_sf[e * I * H / 16 + i] > max13 ? l.experts.gate_sf[e * I * H / 16 + i] : max13;
      max13 = l.experts.up_sf[e * I * H / 16 + i] > max13 ? l.experts.up_sf[e * I * H / 16 + i] : max13;
      max2 = l.experts.down_sf[e * I * H / 16 + i] > max2 ? l.experts.down_sf[e * I * H / 16 + i] : max2;
      zero += l.experts.gate_sf[e * I * H / 16 + i] == 0;
    }
    assert_int_equal(max13, 0x7E);
    assert_int_equal(max2, 0x7E);
    assert_int_equal(zero, 0);
    /* dequantized gate weights have std ~ 1/sqrt(H) */
    double s2 = 0;
    for (int64_t i = 0; i < I * H; i++) {
      int64_t o = e * I * H + i;
      uint8_t c = (uint8_t)((o % 2) ? l.experts.gate_w[o / 2] >> 4 : l.experts.gate_w[o / 2] & 15);
      double v = nv_e2m1(c) * nv_e4m3(l.experts.gate_sf[o / 16]) * l.experts.gate_up_scale_2[e];
      s2 += v * v;
    }
    double sd = sqrt(s2 / (double)(I * H)) * sqrt((double)H);
    assert_true(sd > 0.9 && sd < 1.1);
  }
  /* the router spreads tokens: most experts receive some */
  batch_t b;
  batch_make(&d, 128, 9, l.input_scale, -1, &b);
  float *lg = malloc((size_t)(b.m * E) * sizeof(float));
  assert_int_equal(epm_moe_ref_router_logits(&l, b.x, b.m, 0, lg), EPM_OK);
  epm_routing_config_t rc;
  assert_int_equal(epm_routing_config_from_dims(&d, &rc), EPM_OK);
  assert_int_equal(epm_route_f32(&rc, lg, l.router_bias, b.m, b.ids, b.w, NULL), EPM_OK);
  int used[64] = {0}, nused = 0;
  for (int64_t i = 0; i < b.m * b.k; i++) used[b.ids[i]] = 1;
  for (int64_t e = 0; e < E; e++) nused += used[e];
  assert_true(nused >= E * 3 / 4);
  /* logits: hand-computed dot for one entry */
  double dot = 0;
  for (int64_t h = 0; h < H; h++) dot += (double)epm_bf16_to_f32(b.x[5 * H + h]) * l.router_w[7 * H + h];
  assert_true(fabs(dot - lg[5 * E + 7]) <= 1e-5 * (1 + fabs(dot)));
  free(lg);
  batch_free(&b);
  epm_layer_free(&l);
  epm_layer_free(&l2);
}

/* The layer function = route + quantize + experts (bit-exact), plus the
 * shared expert, checked against the float64 naive expert. */
static void test_layer_function(void **state) {
  (void)state;
  epm_model_dims_t d = tiny();
  const int64_t H = d.hidden, E = d.num_experts, k = d.top_k, m = 24;
  epm_layer_t l;
  assert_int_equal(epm_layer_generate(&d, 0, 21, 0, E, &l), EPM_OK);
  batch_t b;
  batch_make(&d, m, 4, l.input_scale, -1, &b);
  float *lg = malloc((size_t)(m * E) * 4), *r0 = malloc((size_t)(m * H) * 4), *r1 = malloc((size_t)(m * H) * 4);
  epm_bf16_t *ob = malloc((size_t)(m * H) * 2);
  int32_t *ids = malloc((size_t)(m * k) * 4);
  float *w = malloc((size_t)(m * k) * 4);
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.include_shared = 0;
  epm_moe_ref_timing_t tm;
  assert_int_equal(epm_moe_ref_layer(&l, b.x, NULL, m, &o, ids, w, r0, ob, &tm), EPM_OK);
  assert_true(tm.total_s >= tm.gemm1_s);
  /* manual pipeline */
  epm_routing_config_t rc;
  assert_int_equal(epm_routing_config_from_dims(&d, &rc), EPM_OK);
  assert_int_equal(epm_moe_ref_router_logits(&l, b.x, m, 0, lg), EPM_OK);
  assert_int_equal(epm_route_f32(&rc, lg, l.router_bias, m, b.ids, b.w, NULL), EPM_OK);
  assert_memory_equal(ids, b.ids, (size_t)(m * k) * 4);
  assert_memory_equal(w, b.w, (size_t)(m * k) * 4);
  experts(&l, &b, NULL, r1, NULL);
  assert_memory_equal(r0, r1, (size_t)(m * H) * 4);
  for (int64_t i = 0; i < m * H; i++) assert_int_equal(ob[i], epm_bf16_from_f32(r1[i]));
  /* with the shared expert: out - bf16(routed) = shared output (bf16) */
  o.include_shared = 1;
  assert_int_equal(epm_moe_ref_layer(&l, b.x, lg, m, &o, NULL, NULL, r0, ob, NULL), EPM_OK);
  uint8_t *sq = malloc((size_t)(m * H / 2)), *ss = malloc((size_t)(m * H / 16));
  assert_int_equal(epm_nvfp4_quantize_bf16(b.x, m, H, 1.0f / l.shared_input_scale, EPM_SF_LINEAR, sq, ss), EPM_OK);
  double *y = malloc((size_t)H * 8), *scr = malloc((size_t)(H + 2 * d.shared_intermediate) * 8);
  double *ref = malloc((size_t)(m * H) * 8);
  float *got = malloc((size_t)(m * H) * 4);
  nv_expert_t sx = nv_of(&l.shared, 0);
  for (int64_t t = 0; t < m; t++) {
    nv_expert(&sx, sq + t * H / 2, ss + t * H / 16, l.shared_input_scale, (float)(1.0f / l.shared_down_input_scale),
              1, y, scr);
    for (int64_t h = 0; h < H; h++) {
      ref[t * H + h] = y[h];
      got[t * H + h] = r0[t * H + h] - epm_bf16_to_f32(epm_bf16_from_f32(r1[t * H + h]));
    }
  }
  double rel = nv_rel_l2(ref, got, m * H);
  print_message("shared expert vs float64 naive: rel-L2 %.3g\n", rel);
  assert_true(rel <= 1e-2);
  free(sq);
  free(ss);
  free(y);
  free(scr);
  free(ref);
  free(got);
  free(lg);
  free(r0);
  free(r1);
  free(ob);
  free(ids);
  free(w);
  batch_free(&b);
  epm_layer_free(&l);
}

/* llama4: the routing weight scales the bf16 input (vLLM
 * apply_router_weight_on_input), the finalize uses weight 1. */
static void test_llama4_weight_on_input(void **state) {
  (void)state;
  epm_model_dims_t d = {"l4", 256, 128, 8, 1, 1, 1, 1.0f, EPM_ROUTING_LLAMA4, 1, 128, 1};
  const int64_t H = d.hidden, m = 16;
  epm_layer_t l;
  assert_int_equal(epm_layer_generate(&d, 0, 8, 0, d.num_experts, &l), EPM_OK);
  batch_t b;
  batch_make(&d, m, 12, l.input_scale, -1, &b);
  float *r0 = malloc((size_t)(m * H) * 4), *r1 = malloc((size_t)(m * H) * 4);
  epm_bf16_t *hw = malloc((size_t)(m * H) * 2);
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.include_shared = 0;
  assert_int_equal(epm_moe_ref_layer(&l, b.x, NULL, m, &o, b.ids, b.w, r0, NULL, NULL), EPM_OK);
  for (int64_t t = 0; t < m; t++) {
    const float wt = epm_bf16_to_f32(epm_bf16_from_f32(b.w[t]));
    assert_true(wt > 0.0f && wt < 1.0f); /* sigmoid */
    for (int64_t h = 0; h < H; h++) hw[t * H + h] = epm_bf16_from_f32(epm_bf16_to_f32(b.x[t * H + h]) * wt);
    b.w[t] = 1.0f;
  }
  assert_int_equal(epm_nvfp4_quantize_bf16(hw, m, H, 1.0f / l.input_scale, EPM_SF_LINEAR, b.xq, b.xs), EPM_OK);
  experts(&l, &b, NULL, r1, NULL);
  assert_memory_equal(r0, r1, (size_t)(m * H) * 4);
  /* weights in the finalize instead: a different result */
  o.weight_on_input = 0;
  assert_int_equal(epm_moe_ref_layer(&l, b.x, NULL, m, &o, NULL, NULL, r1, NULL, NULL), EPM_OK);
  assert_memory_not_equal(r0, r1, (size_t)(m * H) * 4);
  /* top_k > 1 cannot take the weight on the input */
  epm_layer_t t4;
  epm_model_dims_t td = tiny();
  assert_int_equal(epm_layer_generate(&td, 0, 8, 0, 2, &t4), EPM_OK);
  o.weight_on_input = 1;
  assert_int_equal(epm_moe_ref_layer(&t4, b.x, NULL, m, &o, NULL, NULL, r1, NULL, NULL), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "top_k 4"));
  epm_layer_free(&t4);
  free(r0);
  free(r1);
  free(hw);
  batch_free(&b);
  epm_layer_free(&l);
}

static void test_thread_count(void **state) {
  (void)state;
  assert_int_equal(epm_moe_ref_threads(5), 5);
  setenv("EPMOE_THREADS", "3", 1);
  assert_int_equal(epm_moe_ref_threads(0), 3);
  assert_int_equal(epm_moe_ref_threads(2), 2);
  setenv("EPMOE_THREADS", "3x", 1); /* ignored with a warning */
  assert_true(epm_moe_ref_threads(0) >= 1);
  unsetenv("EPMOE_THREADS");
  assert_true(epm_moe_ref_threads(0) >= 1);
}

static void test_checksum(void **state) {
  (void)state;
  const epm_bf16_t x[2] = {0x3F80, 0xC000}; /* 1.0, -2.0 */
  epm_moe_checksum_t c;
  epm_moe_checksum_bf16(x, 2, &c);
  /* FNV-1a 64 of bytes 80 3F 00 C0, computed by hand from the definition */
  uint64_t h = 0xcbf29ce484222325ULL;
  const uint8_t bytes[4] = {0x80, 0x3F, 0x00, 0xC0};
  for (int i = 0; i < 4; i++) h = (h ^ bytes[i]) * 0x100000001b3ULL;
  assert_true(c.fnv1a64 == h);
  assert_true(c.sum == -1.0 && c.absmax == 2.0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_matches_codec),   cmocka_unit_test(test_flashinfer_moe),
      cmocka_unit_test(test_flashinfer_moe_routing), cmocka_unit_test(test_vs_naive_float64),
      cmocka_unit_test(test_invariants),             cmocka_unit_test(test_errors),
      cmocka_unit_test(test_generator),              cmocka_unit_test(test_layer_function),
      cmocka_unit_test(test_checksum),               cmocka_unit_test(test_llama4_weight_on_input),
      cmocka_unit_test(test_thread_count),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
