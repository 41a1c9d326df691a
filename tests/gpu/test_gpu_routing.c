/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_routing: the routing kernel against the CPU reference
 * (epm_route_f32) for every method, with grouped and ungrouped deepseek-v3,
 * k = 1, k at the device limit, and heavy ties (coarsely rounded logits):
 * ids identical in order, weights within 1 ulp fp32. Also every routing case
 * of the FlashInfer bundle (parameters and shapes from its manifest). Outputs are poisoned before each run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/routing.h"
#include "gpu_fill.h"
#include "gpu_util.h"
#include "testutil.h"

static int failures;
static int worst_ulp;

static int ulps(float a, float b) {
  if (a == b) return 0;
  int32_t ia, ib;
  memcpy(&ia, &a, 4);
  memcpy(&ib, &b, 4);
  if (a != a || b != b || (ia < 0) != (ib < 0)) return 1 << 30;
  int64_t d = (int64_t)ia - ib;
  return (int)(d < 0 ? -d : d);
}

static void gpu_route(const epm_model_dims_t *d, const float *logits, const float *bias, int64_t m,
                      int32_t *ids, float *w) {
  epm_routing_plan_t p;
  EPM_CHECK(epm_routing_plan(d, m, &p));
  float *dl = gpu_upload(logits, p.logits_bytes);
  float *db = bias ? gpu_upload(bias, (size_t)d->num_experts * sizeof(float)) : NULL;
  int32_t *di = gpu_alloc_poisoned(p.ids_bytes, 0xFF);
  float *dw = gpu_alloc_poisoned(p.weights_bytes, 0xFF);
  EPM_CHECK(epm_kernel_routing(&p, dl, db, di, dw, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  gpu_download(ids, di, p.ids_bytes);
  gpu_download(w, dw, p.weights_bytes);
  GPU_CHECK(cudaFree(dl));
  if (db) GPU_CHECK(cudaFree(db));
  GPU_CHECK(cudaFree(di));
  GPU_CHECK(cudaFree(dw));
}

static void compare(const char *name, const int32_t *gi, const float *gw, const int32_t *ri,
                    const float *rw, int64_t m, int64_t k) {
  int64_t bad_ids = 0, bad_w = 0;
  int mx = 0;
  for (int64_t i = 0; i < m * k; i++) {
    if (gi[i] != ri[i]) {
      if (bad_ids++ < 3)
        fprintf(stderr, "%s: token %lld slot %lld id %d, reference %d\n", name, (long long)(i / k),
                (long long)(i % k), gi[i], ri[i]);
      continue;
    }
    int u = ulps(gw[i], rw[i]);
    if (u > mx) mx = u;
    if (u > 1 && bad_w++ < 3)
      fprintf(stderr, "%s: token %lld slot %lld weight %a, reference %a\n", name, (long long)(i / k),
              (long long)(i % k), (double)gw[i], (double)rw[i]);
  }
  printf("routing %-28s m=%-6lld k=%-2lld: %lld ids differ, max weight error %d ulp\n", name,
         (long long)m, (long long)k, (long long)bad_ids, mx);
  if (mx > worst_ulp) worst_ulp = mx;
  if (bad_ids || bad_w) failures++;
}

static void case_dims(const char *name, epm_model_dims_t d, int64_t m, uint64_t seed, int ties,
                      int with_bias) {
  int64_t e = d.num_experts, k = d.top_k;
  float *l = malloc((size_t)(m * e) * sizeof(float));
  float *bias = NULL;
  for (int64_t t = 0; t < m; t++)
    for (int64_t j = 0; j < e; j++) {
      float v = epm_fill_logit(seed, t, j, e);
      l[t * e + j] = ties ? roundf(v * 4.0f) / 4.0f : v;
    }
  if (with_bias) {
    bias = malloc((size_t)e * sizeof(float));
    for (int64_t j = 0; j < e; j++) /* bf16-exact, like checkpoints; ties keep a coarse grid */
      bias[j] = ties ? (float)(j % 3) * 0.125f : epm_bf16_to_f32(epm_bf16_from_f32(epm_fill_unit(seed + 9, j) * 0.5f));
  }
  epm_routing_config_t cfg;
  EPM_CHECK(epm_routing_config_from_dims(&d, &cfg));
  int32_t *ri = malloc((size_t)(m * k) * sizeof(int32_t)), *gi = malloc((size_t)(m * k) * sizeof(int32_t));
  float *rw = malloc((size_t)(m * k) * sizeof(float)), *gw = malloc((size_t)(m * k) * sizeof(float));
  EPM_CHECK(epm_route_f32(&cfg, l, bias, m, ri, rw, NULL));
  gpu_route(&d, l, bias, m, gi, gw);
  compare(name, gi, gw, ri, rw, m, k);
  free(l);
  free(bias);
  free(ri);
  free(gi);
  free(rw);
  free(gw);
}

static epm_model_dims_t dims_of(const char *preset) {
  epm_model_dims_t d;
  EPM_CHECK(epm_model_preset(preset, &d));
  return d;
}

static epm_model_dims_t plain(epm_routing_method_t m, int64_t e, int64_t k) {
  epm_model_dims_t d = dims_of("qwen3-235b");
  d.routing = m;
  d.num_experts = e;
  d.top_k = k;
  d.n_group = 1;
  d.topk_group = 1;
  d.routed_scaling_factor = 1.0f;
  return d;
}

/* One routing case of the bundle: method, k, groups and shapes from its
 * manifest; FlashInfer sums in fp32 where we use double: ids exact, weights
 * within 4 ulp. */
static void flashinfer_case(const epm_bundle_routing_t *r, const epm_bundle_route_case_t *rc) {
  char nm[64], wn[64];
  const int64_t m = r->tokens, e = r->num_experts, k = rc->cfg.top_k;
  epm_model_dims_t d = plain(rc->cfg.method, e, k);
  d.n_group = rc->cfg.n_group;
  d.topk_group = rc->cfg.topk_group;
  d.routed_scaling_factor = rc->cfg.routed_scaling_factor;
  epm_ref_array_t logits = {0}, bias = {0}, ids = {0}, w = {0};
  snprintf(nm, sizeof nm, "routing_%s_ids", rc->name);
  snprintf(wn, sizeof wn, "routing_%s_weights", rc->name);
  if (epm_ref_load_f32("routing_logits", 2, (int64_t[]){m, e}, &logits) ||
      epm_ref_load_f32("routing_bias", 1, (int64_t[]){e}, &bias) ||
      epm_ref_load_as(nm, "int32", 2, (int64_t[]){m, k}, &ids) || epm_ref_load_f32(wn, 2, (int64_t[]){m, k}, &w)) {
    fprintf(stderr, "FAIL: cannot load FlashInfer routing case %s\n", rc->name);
    failures++;
    epm_ref_free(&logits);
    epm_ref_free(&bias);
    epm_ref_free(&ids);
    epm_ref_free(&w);
    return;
  }
  int32_t *gi = malloc((size_t)(m * k) * sizeof(int32_t));
  float *gw = malloc((size_t)(m * k) * sizeof(float));
  gpu_route(&d, logits.data, d.routing == EPM_ROUTING_DEEPSEEK_V3 ? bias.data : NULL, m, gi, gw);
  const int32_t *wi = ids.data;
  const float *ww = w.data;
  int64_t bad = 0;
  int mx = 0;
  for (int64_t i = 0; i < m * k; i++) {
    if (gi[i] != wi[i]) bad++;
    else if (ulps(gw[i], ww[i]) > mx) mx = ulps(gw[i], ww[i]);
  }
  printf("routing flashinfer %-18s: %lld tokens x %lld experts, k=%lld: %lld ids differ, max weight difference "
         "%d ulp\n",
         rc->name, (long long)m, (long long)e, (long long)k, (long long)bad, mx);
  if (bad || mx > 4) failures++;
  free(gi);
  free(gw);
  epm_ref_free(&logits);
  epm_ref_free(&bias);
  epm_ref_free(&ids);
  epm_ref_free(&w);
}

int main(void) {
  gpu_require_device("test_gpu_routing");
  epm_model_dims_t ds = dims_of("deepseek-r1");
  case_dims("deepseek-v3 r1 (E256 k8 g8/4)", ds, 20000, 1, 0, 1);
  case_dims("deepseek-v3 r1 ties", ds, 4000, 2, 1, 1);
  case_dims("deepseek-v3 tiny (E16 k4 g4/2)", dims_of("tiny"), 5000, 3, 0, 1);
  epm_model_dims_t d1 = ds;
  d1.n_group = 1;
  d1.topk_group = 1;
  d1.top_k = 1;
  case_dims("deepseek-v3 ungrouped k1", d1, 3000, 4, 0, 1);
  d1.top_k = 64;
  case_dims("deepseek-v3 ungrouped k64", d1, 500, 5, 0, 0);
  case_dims("renormalize E128 k8", plain(EPM_ROUTING_RENORMALIZE, 128, 8), 10000, 6, 0, 0);
  case_dims("renormalize ties", plain(EPM_ROUTING_RENORMALIZE, 128, 8), 3000, 7, 1, 0);
  case_dims("renormalize-naive E64 k6", plain(EPM_ROUTING_RENORMALIZE_NAIVE, 64, 6), 5000, 8, 0, 0);
  case_dims("default E256 k8", plain(EPM_ROUTING_DEFAULT, 256, 8), 5000, 9, 0, 0);
  case_dims("default ties E8 k8 (k = E)", plain(EPM_ROUTING_DEFAULT, 8, 8), 2000, 10, 1, 0);
  case_dims("llama4 E128 k1", plain(EPM_ROUTING_LLAMA4, 128, 1), 5000, 11, 0, 0);
  case_dims("topk E32 k4", plain(EPM_ROUTING_TOPK, 32, 4), 5000, 12, 0, 0);
  case_dims("topk E1 k1", plain(EPM_ROUTING_TOPK, 1, 1), 100, 13, 0, 0);

  epm_bundle_routing_t fr;
  if (epm_bundle_routing(&fr)) failures++;
  else
    for (int i = 0; i < fr.ncases; i++) flashinfer_case(&fr, &fr.cases[i]);
  if (failures) {
    fprintf(stderr, "test_gpu_routing: %d failing cases\n", failures);
    return 1;
  }
  printf("test_gpu_routing: ids identical, max weight error vs CPU reference %d ulp\n", worst_ulp);
  return 0;
}
