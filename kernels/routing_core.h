/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing_core.h — routing of one token, shared by the CUDA routing
 * kernel and its host test (private to kernels/ and tests/).
 *
 * The same math, tie rule and output order as the CPU reference
 * (include/epmoe/routing.h, runtime/routing.c), restated with fixed-size
 * scratch so it runs as one GPU thread per token: scores are recomputed from
 * the logits instead of stored per expert, and kept groups are a 64-bit mask.
 * Sigmoid and softmax are evaluated in double (exp of double) and rounded
 * once to fp32 exactly where the reference rounds, so results agree with it
 * up to the last-bit accuracy of the device's double exp. No expression here
 * has a multiply feeding an add, so FMA contraction cannot change results.
 *
 * Device limits (checked by epm_routing_plan): top_k <= EPM_CORE_ROUTE_MAX_K,
 * n_group <= 64.
 */
#ifndef EPMOE_KERNELS_ROUTING_CORE_H
#define EPMOE_KERNELS_ROUTING_CORE_H

#include <math.h>
#include <stdint.h>

#include "nvfp4_core.h"

#define EPM_CORE_ROUTE_MAX_K 64
#define EPM_CORE_ROUTE_MAX_GROUPS 64

typedef struct {
  int method; /* epm_routing_method_t */
  int64_t num_experts, top_k, n_group, topk_group;
  float routed_scaling_factor;
} epm_core_route_cfg_t;

/* Values of epm_routing_method_t (include/epmoe/model.h), repeated so the
 * device code needs no host header. A host test checks they agree. */
#define EPM_CORE_ROUTE_DEFAULT 0
#define EPM_CORE_ROUTE_RENORMALIZE 1
#define EPM_CORE_ROUTE_RENORMALIZE_NAIVE 2
#define EPM_CORE_ROUTE_DEEPSEEK_V3 3
#define EPM_CORE_ROUTE_LLAMA4 4
#define EPM_CORE_ROUTE_TOPK 5

EPM_HD int epm_core_beats(float s, int64_t i, float t, int64_t j) {
  return s > t || (s == t && i < j);
}

/* Insert (s, i) into the best-first list of capacity k holding *n entries. */
EPM_HD void epm_core_topk_push(float *ts, int64_t *ti, int64_t *n, int64_t k, float s, int64_t i) {
  int64_t p = *n;
  if (p == k) {
    if (!epm_core_beats(s, i, ts[k - 1], ti[k - 1])) return;
    p = k - 1;
  } else {
    (*n)++;
  }
  while (p > 0 && epm_core_beats(s, i, ts[p - 1], ti[p - 1])) {
    ts[p] = ts[p - 1];
    ti[p] = ti[p - 1];
    p--;
  }
  ts[p] = s;
  ti[p] = i;
}

EPM_HD float epm_core_sigmoid(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }

EPM_HD float epm_core_ds_score(const float *l, const float *bias, int64_t i) {
  return epm_core_sigmoid(l[i]) + (bias ? bias[i] : 0.0f);
}

/* Route one token: l [E] logits, bias [E] or NULL; writes ids[k], w[k]. */
EPM_HD void epm_core_route_token(const epm_core_route_cfg_t *c, const float *l, const float *bias,
                                 int32_t *ids, float *w) {
  const int64_t e = c->num_experts, k = c->top_k;
  float ts[EPM_CORE_ROUTE_MAX_K];
  int64_t sel[EPM_CORE_ROUTE_MAX_K];
  float wv[EPM_CORE_ROUTE_MAX_K];
  int64_t n = 0;
  sel[0] = 0; /* k >= 1 always fills it; keeps the compiler's flow analysis quiet */
  const int ds = c->method == EPM_CORE_ROUTE_DEEPSEEK_V3;

  /* ---- selection (best first by selection score) ---- */
  if (!ds) {
    for (int64_t i = 0; i < e; i++) epm_core_topk_push(ts, sel, &n, k, l[i], i);
  } else if (c->n_group <= 1) {
    for (int64_t i = 0; i < e; i++) epm_core_topk_push(ts, sel, &n, k, epm_core_ds_score(l, bias, i), i);
  } else {
    const int64_t g = c->n_group, per = e / g;
    float gts[EPM_CORE_ROUTE_MAX_GROUPS];
    int64_t gti[EPM_CORE_ROUTE_MAX_GROUPS];
    int64_t ng = 0;
    for (int64_t gi = 0; gi < g; gi++) {
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int64_t i = gi * per; i < (gi + 1) * per; i++) {
        float v = epm_core_ds_score(l, bias, i);
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      epm_core_topk_push(gts, gti, &ng, c->topk_group, b1 + b2, gi);
    }
    uint64_t keep = 0;
    for (int64_t j = 0; j < ng; j++) keep |= (uint64_t)1 << gti[j];
    for (int64_t i = 0; i < e; i++)
      if ((keep >> (i / per)) & 1u) epm_core_topk_push(ts, sel, &n, k, epm_core_ds_score(l, bias, i), i);
  }

  /* ---- weights ---- */
  switch (c->method) {
    case EPM_CORE_ROUTE_DEFAULT:
    case EPM_CORE_ROUTE_RENORMALIZE_NAIVE: {
      double mx = l[0], den = 0.0;
      for (int64_t i = 1; i < e; i++) mx = l[i] > mx ? l[i] : mx;
      for (int64_t i = 0; i < e; i++) den += exp((double)l[i] - mx);
      double psum = 0.0;
      for (int64_t j = 0; j < k; j++) {
        wv[j] = (float)(exp((double)l[sel[j]] - mx) / den);
        psum += wv[j];
      }
      if (c->method == EPM_CORE_ROUTE_RENORMALIZE_NAIVE)
        for (int64_t j = 0; j < k; j++) wv[j] = (float)(wv[j] / psum);
      break;
    }
    case EPM_CORE_ROUTE_RENORMALIZE: {
      double mx = l[sel[0]], den = 0.0;
      for (int64_t j = 0; j < k; j++) den += exp((double)l[sel[j]] - mx);
      for (int64_t j = 0; j < k; j++) wv[j] = (float)(exp((double)l[sel[j]] - mx) / den);
      break;
    }
    case EPM_CORE_ROUTE_DEEPSEEK_V3: {
      double sum = 0.0;
      for (int64_t j = 0; j < k; j++) sum += epm_core_sigmoid(l[sel[j]]);
      float den = (float)sum + 1e-20f;
      for (int64_t j = 0; j < k; j++) wv[j] = (epm_core_sigmoid(l[sel[j]]) / den) * c->routed_scaling_factor;
      break;
    }
    case EPM_CORE_ROUTE_LLAMA4:
      wv[0] = epm_core_sigmoid(l[sel[0]]);
      break;
    default:
      for (int64_t j = 0; j < k; j++) wv[j] = l[sel[j]];
      break;
  }

  /* ---- order: descending weight, equal weights by ascending id ---- */
  for (int64_t a = 1; a < k; a++) {
    int64_t id = sel[a];
    float x = wv[a];
    int64_t p = a;
    while (p > 0 && epm_core_beats(x, id, wv[p - 1], sel[p - 1])) {
      sel[p] = sel[p - 1];
      wv[p] = wv[p - 1];
      p--;
    }
    sel[p] = id;
    wv[p] = x;
  }
  for (int64_t j = 0; j < k; j++) {
    ids[j] = (int32_t)sel[j];
    w[j] = wv[j];
  }
}

#endif /* EPMOE_KERNELS_ROUTING_CORE_H */
