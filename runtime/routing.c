/* SPDX-License-Identifier: Apache-2.0 */
/* routing.c — reference top-k routing (see include/epmoe/routing.h for the
 * math, the tie rule and the output order). One token at a time, in a fixed
 * order, with per-call scratch; no global state. */
#include "epmoe/routing.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/checked.h"

epm_status_t epm_routing_config_from_dims(const epm_model_dims_t *dims, epm_routing_config_t *out) {
  if (!dims || !out) return epm_error(EPM_ERR_INVALID_ARG, "epm_routing_config_from_dims: NULL argument");
  epm_routing_config_t c;
  memset(&c, 0, sizeof c);
  c.method = dims->routing;
  c.num_experts = dims->num_experts;
  c.top_k = dims->top_k;
  c.n_group = dims->n_group;
  c.topk_group = dims->topk_group;
  c.routed_scaling_factor = dims->routed_scaling_factor;
  EPM_TRY(epm_routing_validate(&c));
  *out = c;
  return EPM_OK;
}

static int grouped(const epm_routing_config_t *c) {
  return c->method == EPM_ROUTING_DEEPSEEK_V3 && c->n_group > 1;
}

epm_status_t epm_routing_validate(const epm_routing_config_t *c) {
  if (!c) return epm_error(EPM_ERR_INVALID_ARG, "routing config is NULL");
  if ((int)c->method < 0 || c->method >= EPM_ROUTING_COUNT)
    return epm_error(EPM_ERR_INVALID_ARG, "routing method %d is not one of the %d known methods",
                     (int)c->method, (int)EPM_ROUTING_COUNT);
  const char *name = epm_routing_method_name(c->method);
  int64_t e = c->num_experts;
  if (e < 1 || e > EPM_ROUTING_MAX_EXPERTS)
    return epm_error(EPM_ERR_INVALID_ARG, "num_experts %lld is outside [1, %d]", (long long)e,
                     EPM_ROUTING_MAX_EXPERTS);
  if (c->top_k < 1 || c->top_k > e)
    return epm_error(EPM_ERR_INVALID_ARG, "top_k %lld must be between 1 and num_experts %lld (routing %s)",
                     (long long)c->top_k, (long long)e, name);
  if (c->method == EPM_ROUTING_LLAMA4 && c->top_k != 1)
    return epm_error(EPM_ERR_INVALID_ARG, "top_k %lld: routing llama4 requires top_k == 1",
                     (long long)c->top_k);
  if (c->method != EPM_ROUTING_DEEPSEEK_V3) return EPM_OK;

  if (!isfinite(c->routed_scaling_factor) || !(c->routed_scaling_factor > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG,
                     "routed_scaling_factor %g must be finite and > 0 (1.0 when the model has none)",
                     (double)c->routed_scaling_factor);
  if (c->n_group < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "n_group %lld must be >= 0 (0 or 1 = no expert groups)",
                     (long long)c->n_group);
  if (!grouped(c)) return EPM_OK;
  if (e % c->n_group != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "num_experts %lld is not a multiple of n_group %lld",
                     (long long)e, (long long)c->n_group);
  int64_t per = e / c->n_group;
  if (per < 2)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "num_experts %lld / n_group %lld = %lld experts per group; the top-2 group score needs >= 2",
                     (long long)e, (long long)c->n_group, (long long)per);
  if (c->topk_group < 1 || c->topk_group > c->n_group)
    return epm_error(EPM_ERR_INVALID_ARG, "topk_group %lld must be between 1 and n_group %lld",
                     (long long)c->topk_group, (long long)c->n_group);
  if (c->top_k > c->topk_group * per)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "top_k %lld exceeds the %lld experts of the kept groups (topk_group %lld x %lld per group)",
                     (long long)c->top_k, (long long)(c->topk_group * per), (long long)c->topk_group,
                     (long long)per);
  return EPM_OK;
}

epm_status_t epm_routing_validate_flashinfer(const epm_routing_config_t *c) {
  EPM_TRY(epm_routing_validate(c));
  if (c->method == EPM_ROUTING_DEFAULT)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "routing default is not implemented by FlashInfer's trtllm routing kernel (FI@2853)");
  if (c->method != EPM_ROUTING_DEEPSEEK_V3) return EPM_OK;
  int64_t e = c->num_experts;
  if (e < 32 || e > 512)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "deepseek-v3 kernel routing: num_experts %lld outside [32, 512]",
                     (long long)e);
  if (e % 4 != 0)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "deepseek-v3 kernel routing: num_experts %lld is not a multiple of 4",
                     (long long)e);
  if (c->top_k > 22)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "deepseek-v3 kernel routing: top_k %lld > 22", (long long)c->top_k);
  if (c->n_group > 8)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "deepseek-v3 kernel routing: n_group %lld > 8",
                     (long long)c->n_group);
  if (grouped(c) && e / c->n_group > 32)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "deepseek-v3 kernel routing: num_experts %lld / n_group %lld = %lld experts per group > 32",
                     (long long)e, (long long)c->n_group, (long long)(e / c->n_group));
  if (grouped(c) && c->topk_group > 4)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "deepseek-v3 kernel routing: topk_group %lld > 4",
                     (long long)c->topk_group);
  return EPM_OK;
}

/* ---- one token ----------------------------------------------------------- */

/* A candidate beats another when its score is larger, or equal with a lower
 * index. Scores are finite here. */
static int beats(float s, int64_t i, float t, int64_t j) { return s > t || (s == t && i < j); }

/* Insert (s, i) into the best-first list top[0..*n) of capacity k. */
static void topk_push(float *ts, int64_t *ti, int64_t *n, int64_t k, float s, int64_t i) {
  int64_t p = *n;
  if (p == k) {
    if (!beats(s, i, ts[k - 1], ti[k - 1])) return;
    p = k - 1;
  } else {
    (*n)++;
  }
  while (p > 0 && beats(s, i, ts[p - 1], ti[p - 1])) {
    ts[p] = ts[p - 1];
    ti[p] = ti[p - 1];
    p--;
  }
  ts[p] = s;
  ti[p] = i;
}

static float sigmoid_f32(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }

typedef struct {
  float *score;     /* [E] selection score (deepseek: biased) */
  float *sig;       /* [E] deepseek: fp32 sigmoid */
  unsigned char *keep; /* [E] deepseek grouped: expert is in a kept group */
  float *gscore;    /* [n_group] */
  float *ts;        /* [max(k, n_group)] */
  int64_t *ti;
} scratch_t;

/* Select the token's experts into ids_out (best first by selection score). */
static void select_experts(const epm_routing_config_t *c, const float *l, const float *bias, scratch_t *s,
                           int64_t *sel) {
  int64_t e = c->num_experts, k = c->top_k, n = 0;
  if (c->method != EPM_ROUTING_DEEPSEEK_V3) {
    for (int64_t i = 0; i < e; i++) topk_push(s->ts, sel, &n, k, l[i], i);
    return;
  }
  for (int64_t i = 0; i < e; i++) {
    s->sig[i] = sigmoid_f32(l[i]);
    s->score[i] = s->sig[i] + (bias ? bias[i] : 0.0f);
  }
  if (!grouped(c)) {
    for (int64_t i = 0; i < e; i++) topk_push(s->ts, sel, &n, k, s->score[i], i);
    return;
  }
  int64_t g = c->n_group, per = e / g, ng = 0;
  for (int64_t gi = 0; gi < g; gi++) {
    /* sum of the two largest biased scores of the group */
    float b1 = -INFINITY, b2 = -INFINITY;
    for (int64_t i = gi * per; i < (gi + 1) * per; i++) {
      float v = s->score[i];
      if (v > b1) {
        b2 = b1;
        b1 = v;
      } else if (v > b2) {
        b2 = v;
      }
    }
    s->gscore[gi] = b1 + b2;
  }
  for (int64_t gi = 0; gi < g; gi++) topk_push(s->ts, s->ti, &ng, c->topk_group, s->gscore[gi], gi);
  memset(s->keep, 0, (size_t)e);
  for (int64_t j = 0; j < ng; j++) memset(s->keep + s->ti[j] * per, 1, (size_t)per);
  for (int64_t i = 0; i < e; i++)
    if (s->keep[i]) topk_push(s->ts, sel, &n, k, s->score[i], i);
}

static void weigh(const epm_routing_config_t *c, const float *l, const scratch_t *s, const int64_t *sel,
                  float *w) {
  int64_t e = c->num_experts, k = c->top_k;
  switch (c->method) {
    case EPM_ROUTING_DEFAULT:
    case EPM_ROUTING_RENORMALIZE_NAIVE: {
      double mx = l[0], den = 0.0;
      for (int64_t i = 1; i < e; i++) mx = l[i] > mx ? l[i] : mx;
      for (int64_t i = 0; i < e; i++) den += exp((double)l[i] - mx);
      double psum = 0.0;
      for (int64_t j = 0; j < k; j++) {
        w[j] = (float)(exp((double)l[sel[j]] - mx) / den);
        psum += w[j];
      }
      if (c->method == EPM_ROUTING_RENORMALIZE_NAIVE)
        for (int64_t j = 0; j < k; j++) w[j] = (float)(w[j] / psum);
      break;
    }
    case EPM_ROUTING_RENORMALIZE: {
      double mx = l[sel[0]], den = 0.0; /* sel[0] holds the largest logit */
      for (int64_t j = 0; j < k; j++) den += exp((double)l[sel[j]] - mx);
      for (int64_t j = 0; j < k; j++) w[j] = (float)(exp((double)l[sel[j]] - mx) / den);
      break;
    }
    case EPM_ROUTING_DEEPSEEK_V3: {
      double sum = 0.0;
      for (int64_t j = 0; j < k; j++) sum += s->sig[sel[j]];
      float den = (float)sum + 1e-20f; /* FlashInfer's epsilon: all-underflow gives 0, not NaN */
      for (int64_t j = 0; j < k; j++) w[j] = (s->sig[sel[j]] / den) * c->routed_scaling_factor;
      break;
    }
    case EPM_ROUTING_LLAMA4:
      w[0] = sigmoid_f32(l[sel[0]]);
      break;
    case EPM_ROUTING_TOPK:
    default:
      for (int64_t j = 0; j < k; j++) w[j] = l[sel[j]];
      break;
  }
}

/* Order the k outputs by descending weight, equal weights by ascending id. */
static void order_by_weight(int64_t k, int64_t *sel, float *w) {
  for (int64_t a = 1; a < k; a++) {
    int64_t id = sel[a];
    float wv = w[a];
    int64_t p = a;
    while (p > 0 && beats(wv, id, w[p - 1], sel[p - 1])) {
      sel[p] = sel[p - 1];
      w[p] = w[p - 1];
      p--;
    }
    sel[p] = id;
    w[p] = wv;
  }
}

static epm_status_t route(const epm_routing_config_t *cfg, const float *logits_f32,
                          const epm_bf16_t *logits_bf16, const float *bias, int64_t m, int32_t *ids,
                          float *weights, epm_bf16_t *weights_bf16) {
  EPM_TRY(epm_routing_validate(cfg));
  if (m < 0) return epm_error(EPM_ERR_INVALID_ARG, "token count m %lld is negative", (long long)m);
  if (m == 0) return EPM_OK;
  if ((!logits_f32 && !logits_bf16) || !ids || !weights)
    return epm_error(EPM_ERR_INVALID_ARG, "routing %lld tokens: logits, ids and weights must not be NULL",
                     (long long)m);
  int64_t e = cfg->num_experts, k = cfg->top_k, n;
  if (epm_mul_i64(m, e, &n))
    return epm_error(EPM_ERR_OVERFLOW, "routing: %lld tokens x %lld experts overflows int64", (long long)m,
                     (long long)e);
  for (int64_t i = 0; i < n; i++) {
    float v = logits_f32 ? logits_f32[i] : epm_bf16_to_f32(logits_bf16[i]);
    if (!isfinite(v))
      return epm_error(EPM_ERR_INVALID_ARG, "routing logits[token %lld, expert %lld] = %g is not finite",
                       (long long)(i / e), (long long)(i % e), (double)v);
  }
  if (bias && cfg->method == EPM_ROUTING_DEEPSEEK_V3)
    for (int64_t i = 0; i < e; i++)
      if (!isfinite(bias[i]))
        return epm_error(EPM_ERR_INVALID_ARG, "routing bias[%lld] = %g is not finite", (long long)i,
                         (double)bias[i]);

  int64_t cap = k > cfg->n_group ? k : cfg->n_group;
  scratch_t s;
  float *lrow = malloc((size_t)e * sizeof(float));
  s.score = malloc((size_t)e * sizeof(float));
  s.sig = malloc((size_t)e * sizeof(float));
  s.keep = malloc((size_t)e);
  s.gscore = malloc((size_t)(cfg->n_group > 0 ? cfg->n_group : 1) * sizeof(float));
  s.ts = malloc((size_t)cap * sizeof(float));
  s.ti = malloc((size_t)cap * sizeof(int64_t));
  int64_t *sel = malloc((size_t)k * sizeof(int64_t));
  float *w = malloc((size_t)k * sizeof(float));
  epm_status_t st = EPM_OK;
  if (!lrow || !s.score || !s.sig || !s.keep || !s.gscore || !s.ts || !s.ti || !sel || !w) {
    st = epm_error(EPM_ERR_NOMEM, "routing scratch for %lld experts", (long long)e);
    goto out;
  }
  for (int64_t t = 0; t < m; t++) {
    const float *l;
    if (logits_f32) {
      l = logits_f32 + t * e;
    } else {
      for (int64_t i = 0; i < e; i++) lrow[i] = epm_bf16_to_f32(logits_bf16[t * e + i]);
      l = lrow;
    }
    select_experts(cfg, l, bias, &s, sel);
    weigh(cfg, l, &s, sel, w);
    order_by_weight(k, sel, w);
    for (int64_t j = 0; j < k; j++) {
      ids[t * k + j] = (int32_t)sel[j];
      weights[t * k + j] = w[j];
      if (weights_bf16) weights_bf16[t * k + j] = epm_bf16_from_f32(w[j]);
    }
  }
out:
  free(lrow);
  free(s.score);
  free(s.sig);
  free(s.keep);
  free(s.gscore);
  free(s.ts);
  free(s.ti);
  free(sel);
  free(w);
  return st;
}

epm_status_t epm_route_f32(const epm_routing_config_t *cfg, const float *logits, const float *bias,
                           int64_t m, int32_t *ids, float *weights, epm_bf16_t *weights_bf16) {
  return route(cfg, logits, NULL, bias, m, ids, weights, weights_bf16);
}

epm_status_t epm_route_bf16(const epm_routing_config_t *cfg, const epm_bf16_t *logits, const float *bias,
                            int64_t m, int32_t *ids, float *weights, epm_bf16_t *weights_bf16) {
  return route(cfg, NULL, logits, bias, m, ids, weights, weights_bf16);
}
