/* SPDX-License-Identifier: Apache-2.0 */
/* moe_ref.c — routed experts of the CPU reference MoE (include/epmoe/moe_ref.h).
 *
 * Structure: (token, slot) pairs whose expert is local are grouped by expert
 * (ascending expert, then token, then slot). Each expert runs on its rows:
 * GEMM1 over tiles of weight rows (a tile of gate and up rows is decoded once
 * to exact fp32 and reused for every token of the expert), SwiGLU fused into
 * the tile, NVFP4 re-quantization per row, GEMM2 over tiles of down rows.
 * Threads split weight-row tiles (GEMMs) or rows (requant, finalize); every
 * output element is produced by one thread in a fixed order, so results do
 * not depend on the thread count. */
#include "epmoe/moe_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "epmoe/checked.h"
#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "moe_ref_math.h"

#define GEMM1_TILE 8  /* gate rows (and as many up rows) decoded per tile */
#define GEMM2_TILE 16 /* down rows decoded per tile */

int epm_moe_ref_threads(int requested) {
  if (requested > 0) return requested;
  const char *env = getenv("EPMOE_THREADS");
  if (env && *env) {
    char *end = NULL;
    long v = strtol(env, &end, 10);
    if (end && *end == '\0' && v > 0 && v <= 4096) return (int)v;
    EPM_LOG(EPM_LOG_WARN, "ref", "ignoring EPMOE_THREADS='%s' (want an integer in [1, 4096])", env);
  }
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

static float silu(float g) { return g / (1.0f + expf(-g)); }
static float bf16_round(float x) { return epm_bf16_to_f32(epm_bf16_from_f32(x)); }

epm_status_t epm__expert_forward(const epm_expert_bank_t *b, int64_t e, const float *a, int64_t n, float a1,
                                 float g_mid, float d_mid, int y_bf16, int nthreads, float *y,
                                 epm_moe_ref_timing_t *tm) {
  const int64_t H = b->hidden, I = b->intermediate;
  if (n == 0) return EPM_OK;
  const float alpha1 = a1 * b->gate_up_scale_2[e];
  const float alpha2 = d_mid * b->down_scale_2[e];
  const uint8_t *gw = b->gate_w + e * I * (H / 2), *gs = b->gate_sf + e * I * (H / 16);
  const uint8_t *uw = b->up_w + e * I * (H / 2), *us = b->up_sf + e * I * (H / 16);
  const uint8_t *dw = b->down_w + e * H * (I / 2), *ds = b->down_sf + e * H * (I / 16);
  float *act = malloc((size_t)(n * I) * sizeof(float));
  float *hd = malloc((size_t)(n * I) * sizeof(float));
  int failed = 0;
  epm_status_t st = EPM_OK;
  if (!act || !hd) {
    st = epm_error(EPM_ERR_NOMEM, "expert %lld: intermediate buffers for %lld rows x %lld", (long long)e,
                   (long long)n, (long long)I);
    goto out;
  }

  double t0 = epm_clock_s();
#pragma omp parallel num_threads(nthreads)
  {
    float *wt = malloc((size_t)(2 * GEMM1_TILE * H) * sizeof(float));
    float dots[2 * GEMM1_TILE];
    if (!wt) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t i0 = 0; i0 < I; i0 += GEMM1_TILE) {
      if (!wt) continue;
      const int64_t r = I - i0 < GEMM1_TILE ? I - i0 : GEMM1_TILE;
      float *wg = wt, *wu = wt + GEMM1_TILE * H;
      epm__nvfp4_decode_exact(gw + i0 * (H / 2), gs + i0 * (H / 16), r, H, wg);
      epm__nvfp4_decode_exact(uw + i0 * (H / 2), us + i0 * (H / 16), r, H, wu);
      for (int64_t p = 0; p < n; p++) {
        epm__dot_rows(a + p * H, wg, H, r, H, dots);
        epm__dot_rows(a + p * H, wu, H, r, H, dots + GEMM1_TILE);
        for (int64_t q = 0; q < r; q++) {
          const float gate = dots[q] * alpha1, up = dots[GEMM1_TILE + q] * alpha1;
          act[p * I + i0 + q] = silu(gate) * up;
        }
      }
    }
    free(wt);
  }
  double t1 = epm_clock_s();
  if (failed) {
    st = epm_error(EPM_ERR_NOMEM, "expert %lld: weight tile of %d x %lld floats", (long long)e,
                   2 * GEMM1_TILE, (long long)H);
    goto out;
  }

#pragma omp parallel num_threads(nthreads)
  {
    epm_bf16_t *row = malloc((size_t)I * sizeof(epm_bf16_t));
    uint8_t *pk = malloc((size_t)(I / 2 + I / 16));
    if (!row || !pk) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n; p++) {
      if (!row || !pk) continue;
      for (int64_t i = 0; i < I; i++) row[i] = epm_bf16_from_f32(act[p * I + i]);
      if (epm_nvfp4_quantize_bf16(row, 1, I, g_mid, EPM_SF_LINEAR, pk, pk + I / 2) != EPM_OK) {
#pragma omp atomic write
        failed = 2;
        continue;
      }
      epm__nvfp4_decode_exact(pk, pk + I / 2, 1, I, hd + p * I);
    }
    free(row);
    free(pk);
  }
  double t2 = epm_clock_s();
  if (failed) {
    st = failed == 1 ? epm_error(EPM_ERR_NOMEM, "expert %lld: requant row buffers", (long long)e)
                     : epm_error_wrap(EPM_ERR_INTERNAL, "expert %lld: re-quantizing the intermediate",
                                      (long long)e);
    goto out;
  }

#pragma omp parallel num_threads(nthreads)
  {
    float *wt = malloc((size_t)(GEMM2_TILE * I) * sizeof(float));
    float dots[GEMM2_TILE];
    if (!wt) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t n0 = 0; n0 < H; n0 += GEMM2_TILE) {
      if (!wt) continue;
      const int64_t r = H - n0 < GEMM2_TILE ? H - n0 : GEMM2_TILE;
      epm__nvfp4_decode_exact(dw + n0 * (I / 2), ds + n0 * (I / 16), r, I, wt);
      for (int64_t p = 0; p < n; p++) {
        epm__dot_rows(hd + p * I, wt, I, r, I, dots);
        for (int64_t q = 0; q < r; q++) {
          float v = dots[q] * alpha2;
          y[p * H + n0 + q] = y_bf16 ? bf16_round(v) : v;
        }
      }
    }
    free(wt);
  }
  double t3 = epm_clock_s();
  if (failed) {
    st = epm_error(EPM_ERR_NOMEM, "expert %lld: down tile of %d x %lld floats", (long long)e, GEMM2_TILE,
                   (long long)I);
    goto out;
  }
  if (tm) {
    tm->gemm1_s += t1 - t0;
    tm->requant_s += t2 - t1;
    tm->gemm2_s += t3 - t2;
  }
out:
  free(act);
  free(hd);
  return st;
}

epm_status_t epm__bank_check(const char *what, const epm_expert_bank_t *b, int64_t H) {
  if (b->count < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: expert count %lld is negative", what, (long long)b->count);
  if (b->count == 0) return EPM_OK;
  if (b->hidden != H)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: bank hidden %lld != layer hidden %lld", what,
                     (long long)b->hidden, (long long)H);
  if (b->intermediate <= 0 || b->intermediate % 16 != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: intermediate %lld must be a positive multiple of 16", what,
                     (long long)b->intermediate);
  if (!b->gate_w || !b->gate_sf || !b->up_w || !b->up_sf || !b->down_w || !b->down_sf ||
      !b->gate_up_scale_2 || !b->down_scale_2)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: %lld experts but a weight pointer is NULL", what,
                     (long long)b->count);
  for (int64_t e = 0; e < b->count; e++)
    if (!isfinite(b->gate_up_scale_2[e]) || !isfinite(b->down_scale_2[e]))
      return epm_error(EPM_ERR_INVALID_ARG, "%s: expert %lld has weight_scale_2 gate/up %g, down %g (not finite)",
                       what, (long long)e, (double)b->gate_up_scale_2[e], (double)b->down_scale_2[e]);
  return EPM_OK;
}

/* G_mid and the matching decode scale (header: "G_mid / d_mid"). */
epm_status_t epm__mid_scales(float down_input_scale, float override_g, float *g_mid, float *d_mid) {
  if (override_g > 0.0f && isfinite(override_g)) {
    *g_mid = override_g;
    *d_mid = 1.0f / override_g;
    return EPM_OK;
  }
  if (override_g != 0.0f)
    return epm_error(EPM_ERR_INVALID_ARG, "mid_global_scale %g must be 0 (use the layer's) or finite and > 0",
                     (double)override_g);
  if (!isfinite(down_input_scale) || !(down_input_scale > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "down_input_scale %g must be finite and > 0", (double)down_input_scale);
  *g_mid = 1.0f / down_input_scale;
  *d_mid = down_input_scale;
  return EPM_OK;
}

static epm_status_t check_experts_args(const epm_layer_t *l, const uint8_t *x_fp4, const uint8_t *x_sf,
                                       float a1, int64_t m, int64_t k, const int32_t *ids, const float *w) {
  if (!l) return epm_error(EPM_ERR_INVALID_ARG, "epm_moe_ref_experts: layer is NULL");
  const int64_t E = l->dims.num_experts, H = l->dims.hidden;
  if (H <= 0 || H % 16 != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "hidden %lld must be a positive multiple of 16", (long long)H);
  if (E < 1) return epm_error(EPM_ERR_INVALID_ARG, "num_experts %lld must be >= 1", (long long)E);
  EPM_TRY(epm_layer_check_bank(l));
  EPM_TRY(epm__bank_check("routed experts", &l->experts, H));
  if (m < 0) return epm_error(EPM_ERR_INVALID_ARG, "token count m %lld is negative", (long long)m);
  if (k < 1 || k > E)
    return epm_error(EPM_ERR_INVALID_ARG, "top_k %lld must be between 1 and num_experts %lld", (long long)k,
                     (long long)E);
  if (!isfinite(a1) || !(a1 > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "input decode scale %g must be finite and > 0", (double)a1);
  if (m == 0) return EPM_OK;
  if (!x_fp4 || !x_sf || !ids || !w)
    return epm_error(EPM_ERR_INVALID_ARG, "epm_moe_ref_experts: %lld tokens but an input pointer is NULL",
                     (long long)m);
  int64_t mk;
  if (epm_mul_i64(m, k, &mk))
    return epm_error(EPM_ERR_OVERFLOW, "%lld tokens x top_k %lld overflows int64", (long long)m, (long long)k);
  for (int64_t i = 0; i < mk; i++) {
    if (ids[i] < 0 || ids[i] >= E)
      return epm_error(EPM_ERR_INVALID_ARG, "topk_ids[token %lld, slot %lld] = %d is outside [0, num_experts %lld)",
                       (long long)(i / k), (long long)(i % k), ids[i], (long long)E);
    if (!isfinite(w[i]))
      return epm_error(EPM_ERR_INVALID_ARG, "topk_weights[token %lld, slot %lld] = %g is not finite",
                       (long long)(i / k), (long long)(i % k), (double)w[i]);
  }
  return EPM_OK;
}

epm_status_t epm_moe_ref_experts(const epm_layer_t *l, const uint8_t *x_fp4, const uint8_t *x_sf,
                                 float x_decode_scale, int64_t m, int64_t k, const int32_t *ids,
                                 const float *weights, const epm_moe_ref_opts_t *opts, float *out_f32,
                                 epm_bf16_t *out_bf16, epm_moe_ref_timing_t *tm) {
  const epm_moe_ref_opts_t dflt = EPM_MOE_REF_OPTS_INIT;
  if (!opts) opts = &dflt;
  EPM_TRY(check_experts_args(l, x_fp4, x_sf, x_decode_scale, m, k, ids, weights));
  float g_mid, d_mid;
  EPM_TRY(epm__mid_scales(l->down_input_scale, opts->mid_global_scale, &g_mid, &d_mid));
  if (m == 0) return EPM_OK;
  const int64_t H = l->dims.hidden, el = l->experts.count;
  const int nt = epm_moe_ref_threads(opts->threads);
  const int64_t mk = m * k; /* checked above */
  size_t ybytes, tbytes;
  double t0 = epm_clock_s();
  if (tm) tm->gather_s = tm->gemm1_s = tm->requant_s = tm->gemm2_s = tm->finalize_s = 0.0;
  if (epm_mul_size((size_t)mk, sizeof(int64_t), &tbytes))
    return epm_error(EPM_ERR_OVERFLOW, "%lld tokens x top_k %lld pair table overflows size_t", (long long)m,
                     (long long)k);

  /* Group local pairs by bank slot: cnt/start per slot, row of each pair.
   * row_of first holds each pair's bank slot (-1: served elsewhere; the
   * placement's replica rule with the pair's row as the token index). */
  int64_t *start = calloc((size_t)el + 1, sizeof(int64_t));
  int64_t *row_of = malloc(tbytes);
  int64_t *tok = malloc(tbytes);
  float *y = NULL, *a = NULL;
  epm_status_t st = EPM_OK;
  if (!start || !row_of || !tok) {
    st = epm_error(EPM_ERR_NOMEM, "pair tables for %lld tokens x top_k %lld", (long long)m, (long long)k);
    goto out;
  }
  for (int64_t i = 0; i < mk; i++) {
    row_of[i] = epm_layer_local_slot(l, ids[i], i / k);
    if (row_of[i] >= 0) start[row_of[i] + 1]++;
  }
  int64_t max_n = 0;
  for (int64_t e = 0; e < el; e++) {
    max_n = start[e + 1] > max_n ? start[e + 1] : max_n;
    start[e + 1] += start[e];
  }
  const int64_t npairs = start[el];
  {
    int64_t *fill = calloc((size_t)el + 1, sizeof(int64_t));
    if (!fill) {
      st = epm_error(EPM_ERR_NOMEM, "pair tables for %lld local experts", (long long)el);
      goto out;
    }
    for (int64_t i = 0; i < mk; i++) {
      const int64_t e = row_of[i];
      if (e < 0) continue;
      const int64_t r = start[e] + fill[e]++;
      row_of[i] = r;
      tok[r] = i / k;
    }
    free(fill);
  }
  if (epm_mul_size((size_t)(npairs > 0 ? npairs : 1), (size_t)H * sizeof(float), &ybytes)) {
    st = epm_error(EPM_ERR_OVERFLOW, "%lld local pairs x hidden %lld floats overflows size_t", (long long)npairs,
                   (long long)H);
    goto out;
  }
  y = malloc(ybytes);
  a = malloc((size_t)(max_n > 0 ? max_n : 1) * (size_t)H * sizeof(float));
  if (!y || !a) {
    st = epm_error(EPM_ERR_NOMEM, "expert buffers: %lld local pairs x hidden %lld", (long long)npairs,
                   (long long)H);
    goto out;
  }
  if (tm) tm->gather_s += epm_clock_s() - t0;

  for (int64_t e = 0; e < el; e++) {
    const int64_t n = start[e + 1] - start[e];
    if (n == 0) continue;
    double tg = epm_clock_s();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = 0; p < n; p++) {
      const int64_t t = tok[start[e] + p];
      epm__nvfp4_decode_exact(x_fp4 + t * (H / 2), x_sf + t * (H / 16), 1, H, a + p * H);
    }
    if (tm) tm->gather_s += epm_clock_s() - tg;
    st = epm__expert_forward(&l->experts, e, a, n, x_decode_scale, g_mid, d_mid, !opts->expert_out_fp32, nt,
                             y + start[e] * H, tm);
    if (st != EPM_OK) {
      epm_error_wrap(st, "local expert %lld (global %lld)", (long long)e, (long long)epm_layer_slot_expert(l, e));
      goto out;
    }
  }

  /* Finalize: slots in stored order, fp32 accumulation from +0. */
  double tf = epm_clock_s();
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    float *row = out_f32 ? NULL : malloc((size_t)H * sizeof(float));
    if (!out_f32 && !row) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < m; t++) {
      float *o = out_f32 ? out_f32 + t * H : row;
      if (!o) continue;
      for (int64_t h = 0; h < H; h++) o[h] = 0.0f;
      for (int64_t j = 0; j < k; j++) {
        const int64_t r = row_of[t * k + j];
        if (r < 0) continue; /* non-local: contributes exactly 0 */
        const float wk = opts->weights_fp32 ? weights[t * k + j] : bf16_round(weights[t * k + j]);
        const float *yr = y + r * H;
        for (int64_t h = 0; h < H; h++) o[h] += wk * yr[h];
      }
      if (out_bf16)
        for (int64_t h = 0; h < H; h++) out_bf16[t * H + h] = epm_bf16_from_f32(o[h]);
    }
    free(row);
  }
  if (failed) st = epm_error(EPM_ERR_NOMEM, "finalize row of hidden %lld floats", (long long)H);
  if (tm) tm->finalize_s = epm_clock_s() - tf;
out:
  free(start);
  free(row_of);
  free(tok);
  free(y);
  free(a);
  return st;
}
