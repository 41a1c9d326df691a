/* SPDX-License-Identifier: Apache-2.0 */
/* moe_ref_layer.c — the whole-layer convenience path of the CPU reference
 * (router logits, routing, input quantization, routed experts, shared expert)
 * and the output checksum. See include/epmoe/moe_ref.h for the numerics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/clock.h"
#include "epmoe/moe_ref.h"
#include "moe_ref_math.h"

epm_status_t epm_moe_ref_router_logits(const epm_layer_t *l, const epm_bf16_t *hidden, int64_t m, int threads,
                                       float *logits) {
  if (!l) return epm_error(EPM_ERR_INVALID_ARG, "epm_moe_ref_router_logits: layer is NULL");
  const int64_t H = l->dims.hidden, E = l->dims.num_experts;
  if (m < 0) return epm_error(EPM_ERR_INVALID_ARG, "token count m %lld is negative", (long long)m);
  if (H <= 0 || H % 16 != 0 || E < 1)
    return epm_error(EPM_ERR_INVALID_ARG, "router: hidden %lld (multiple of 16) and num_experts %lld (>= 1)",
                     (long long)H, (long long)E);
  if (m == 0) return EPM_OK;
  if (!hidden || !logits || !l->router_w)
    return epm_error(EPM_ERR_INVALID_ARG, "router: hidden, logits and router_w must not be NULL");
  const int nt = epm_moe_ref_threads(threads);
  int failed = 0;
#pragma omp parallel num_threads(nt)
  {
    float *row = malloc((size_t)H * sizeof(float));
    if (!row) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < m; t++) {
      if (!row) continue;
      for (int64_t h = 0; h < H; h++) row[h] = epm_bf16_to_f32(hidden[t * H + h]);
      epm__dot_rows(row, l->router_w, H, E, H, logits + t * E);
    }
    free(row);
  }
  if (failed) return epm_error(EPM_ERR_NOMEM, "router row of hidden %lld floats", (long long)H);
  return EPM_OK;
}

static float bf16_round(float x) { return epm_bf16_to_f32(epm_bf16_from_f32(x)); }

static void *alloc_n(int64_t n, size_t elem, int *fail) {
  size_t bytes;
  if (*fail || n < 0 || epm_mul_size((size_t)(n > 0 ? n : 1), elem, &bytes)) {
    *fail = 1;
    return NULL;
  }
  void *p = malloc(bytes);
  if (!p) *fail = 1;
  return p;
}

/* Shared expert on all m tokens: s [m, H] (steps 1-9, weight 1). */
static epm_status_t shared_expert(const epm_layer_t *l, const epm_bf16_t *hidden, int64_t m,
                                  const epm_moe_ref_opts_t *opts, float *s) {
  const int64_t H = l->dims.hidden;
  float g_mid, d_mid;
  EPM_TRY(epm__bank_check("shared expert", &l->shared, H));
  if (!isfinite(l->shared_input_scale) || !(l->shared_input_scale > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "shared_input_scale %g must be finite and > 0",
                     (double)l->shared_input_scale);
  EPM_TRY(epm__mid_scales(l->shared_down_input_scale, 0.0f, &g_mid, &d_mid));
  int fail = 0;
  uint8_t *q = alloc_n(m, (size_t)(H / 2 + H / 16), &fail);
  float *a = alloc_n(m, (size_t)H * sizeof(float), &fail);
  epm_status_t st = EPM_OK;
  if (fail) {
    st = epm_error(EPM_ERR_NOMEM, "shared expert buffers for %lld tokens x hidden %lld", (long long)m,
                   (long long)H);
    goto out;
  }
  uint8_t *qs = q + m * (H / 2);
  EPM_TRY_GOTO(epm_nvfp4_quantize_bf16(hidden, m, H, 1.0f / l->shared_input_scale, EPM_SF_LINEAR, q, qs), st,
               out);
  epm__nvfp4_decode_exact(q, qs, m, H, a);
  st = epm__expert_forward(&l->shared, 0, a, m, l->shared_input_scale, g_mid, d_mid, !opts->expert_out_fp32,
                           epm_moe_ref_threads(opts->threads), s, NULL);
out:
  free(q);
  free(a);
  return st;
}

epm_status_t epm_moe_ref_layer(const epm_layer_t *l, const epm_bf16_t *hidden, const float *logits, int64_t m,
                               const epm_moe_ref_opts_t *opts, int32_t *ids_out, float *w_out, float *out_f32,
                               epm_bf16_t *out_bf16, epm_moe_ref_timing_t *tm) {
  const epm_moe_ref_opts_t dflt = EPM_MOE_REF_OPTS_INIT;
  if (!opts) opts = &dflt;
  if (!l) return epm_error(EPM_ERR_INVALID_ARG, "epm_moe_ref_layer: layer is NULL");
  epm_routing_config_t rc;
  EPM_TRY(epm_routing_config_from_dims(&l->dims, &rc));
  const int64_t H = l->dims.hidden, E = l->dims.num_experts, k = rc.top_k;
  const int woi = opts->weight_on_input < 0 ? rc.method == EPM_ROUTING_LLAMA4 : opts->weight_on_input != 0;
  if (woi && k != 1)
    return epm_error(EPM_ERR_INVALID_ARG, "weight_on_input needs top_k 1; the layer routes top_k %lld",
                     (long long)k);
  if (!isfinite(l->input_scale) || !(l->input_scale > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "input_scale %g must be finite and > 0", (double)l->input_scale);
  if (m < 0) return epm_error(EPM_ERR_INVALID_ARG, "token count m %lld is negative", (long long)m);
  if (m == 0) return EPM_OK;
  if (!hidden) return epm_error(EPM_ERR_INVALID_ARG, "epm_moe_ref_layer: hidden is NULL for %lld tokens", (long long)m);
  const int with_shared = opts->include_shared && l->shared.count > 0;
  const int nt = epm_moe_ref_threads(opts->threads);
  double t0 = epm_clock_s(), t;
  epm_moe_ref_timing_t sub;
  memset(&sub, 0, sizeof sub);

  int fail = 0;
  float *lg = logits ? NULL : alloc_n(m, (size_t)E * sizeof(float), &fail);
  int32_t *ids = alloc_n(m, (size_t)k * sizeof(int32_t), &fail);
  float *w = alloc_n(m, (size_t)k * sizeof(float), &fail);
  float *wexp = woi ? alloc_n(m, sizeof(float), &fail) : NULL;
  uint8_t *xq = alloc_n(m, (size_t)(H / 2 + H / 16), &fail);
  epm_bf16_t *hw = woi ? alloc_n(m, (size_t)H * sizeof(epm_bf16_t), &fail) : NULL;
  float *r = alloc_n(m, (size_t)H * sizeof(float), &fail);
  float *s = with_shared ? alloc_n(m, (size_t)H * sizeof(float), &fail) : NULL;
  epm_status_t st = EPM_OK;
  if (fail) {
    st = epm_error(EPM_ERR_NOMEM, "layer buffers for %lld tokens x hidden %lld", (long long)m, (long long)H);
    goto out;
  }

  t = epm_clock_s();
  if (!logits) {
    EPM_TRY_GOTO(epm_moe_ref_router_logits(l, hidden, m, opts->threads, lg), st, out);
    logits = lg;
  }
  sub.router_s = epm_clock_s() - t;
  t = epm_clock_s();
  EPM_TRY_GOTO(epm_route_f32(&rc, logits, l->router_bias, m, ids, w, NULL), st, out);
  sub.route_s = epm_clock_s() - t;

  t = epm_clock_s();
  const epm_bf16_t *src = hidden;
  if (woi) {
    /* vLLM apply_router_weight_on_input: bf16 x bf16 rounded to bf16, then
     * the experts' output is summed with weight 1. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < m; i++) {
      const float wi = bf16_round(w[i]);
      for (int64_t h = 0; h < H; h++) hw[i * H + h] = epm_bf16_from_f32(epm_bf16_to_f32(hidden[i * H + h]) * wi);
      wexp[i] = 1.0f;
    }
    src = hw;
  }
  EPM_TRY_GOTO(epm_nvfp4_quantize_bf16(src, m, H, 1.0f / l->input_scale, EPM_SF_LINEAR, xq, xq + m * (H / 2)),
               st, out);
  sub.quantize_s = epm_clock_s() - t;

  EPM_TRY_GOTO(epm_moe_ref_experts(l, xq, xq + m * (H / 2), l->input_scale, m, k, ids, woi ? wexp : w, opts, r,
                                   NULL, &sub),
               st, out);

  if (with_shared) {
    t = epm_clock_s();
    st = shared_expert(l, hidden, m, opts, s);
    if (st != EPM_OK) goto out;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < m * H; i++) r[i] = bf16_round(r[i]) + s[i];
    sub.shared_s = epm_clock_s() - t;
  }
  if (out_f32) memcpy(out_f32, r, (size_t)(m * H) * sizeof(float));
  if (out_bf16)
    for (int64_t i = 0; i < m * H; i++) out_bf16[i] = epm_bf16_from_f32(r[i]);
  if (ids_out) memcpy(ids_out, ids, (size_t)(m * k) * sizeof(int32_t));
  if (w_out) memcpy(w_out, w, (size_t)(m * k) * sizeof(float));
  sub.total_s = epm_clock_s() - t0;
  if (tm) *tm = sub;
out:
  free(lg);
  free(ids);
  free(w);
  free(wexp);
  free(xq);
  free(hw);
  free(r);
  free(s);
  return st;
}

void epm_moe_checksum_bf16(const epm_bf16_t *x, int64_t n, epm_moe_checksum_t *out) {
  uint64_t hsh = 0xcbf29ce484222325ULL;
  double sum = 0.0, amax = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const uint8_t lo = (uint8_t)(x[i] & 0xFF), hi = (uint8_t)(x[i] >> 8);
    hsh = (hsh ^ lo) * 0x100000001b3ULL;
    hsh = (hsh ^ hi) * 0x100000001b3ULL;
    const double v = epm_bf16_to_f32(x[i]);
    sum += v;
    if (isnan(v))
      amax = v;
    else if (!isnan(amax) && fabs(v) > amax)
      amax = fabs(v);
  }
  out->fnv1a64 = hsh;
  out->sum = sum;
  out->absmax = amax;
}
