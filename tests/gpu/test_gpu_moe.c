/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_moe: the expert pipeline on the GPU (permute -> GEMM1 + SwiGLU +
 * NVFP4 re-quantization -> GEMM2 -> finalize) against the CPU reference
 * epm_moe_ref_experts on the same NVFP4 tokens, ids and weights: random
 * layers, local slices at both ends of the expert range and the full range,
 * k = 1, an expert with no tokens, tokens whose experts are all non-local
 * (must be exactly 0), zero tokens, dims that are not multiples of the tile,
 * bf16 output and the fp32 EP-partial output, placed banks (every rank of
 * the default split with redundant slots and of a balanced map: ids through
 * the rank's replica table), and the step captured in a
 * CUDA graph (bit-identical replay). Outputs are poisoned (NaN) before each
 * run. Also FlashInfer's MoE vectors: the full layer and both EP slices of
 * the bundle, dims and slices from its manifest. Prints the max error per
 * case. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/layer.h"
#include "epmoe/moe_ref.h"
#include "epmoe/nvfp4.h"
#include "epmoe/placement.h"
#include "epmoe/routing.h"
#include "gpu_util.h"
#include "testutil.h"

static int failures;
static double worst_rel = 0, worst_abs_rel = 0; /* vs the CPU reference only */

/* Run the pipeline; returns bf16 out (as fp32) and fp32 out, host. */
static void gpu_moe(const epm_moe_weights_dev_t *w, int64_t m, int64_t H, int64_t I, int64_t E, int64_t k,
                    int64_t off, int64_t el, const epm_slot_map_t *slots, const uint8_t *xq, const uint8_t *xsf,
                    const int32_t *ids, const float *wts, float *out_bf16_as_f32, float *out_f32) {
  epm_moe_plan_t p;
  epm_moe_inputs_dev_t in = {0};
  if (slots) { /* a placed bank: ids go through the rank's replica table */
    EPM_CHECK(epm_moe_plan_placed(m, H, I, E, k, el, &p));
    in.rep_start = gpu_upload(slots->rep_start, (size_t)(E + 1) * sizeof(int32_t));
    in.rep_local = gpu_upload(slots->rep_local, (size_t)slots->num_slots * sizeof(int32_t));
  } else {
    EPM_CHECK(epm_moe_plan(m, H, I, E, k, off, el, &p));
  }
  in.hidden_fp4 = gpu_upload(xq, (size_t)(m * H / 2));
  in.hidden_sf = gpu_upload(xsf, (size_t)(m * H / 16));
  in.ids = gpu_upload(ids, (size_t)(m * k) * sizeof(int32_t));
  in.weights = gpu_upload(wts, (size_t)(m * k) * sizeof(float));
  void *wsb = gpu_alloc_poisoned(p.workspace_bytes, 0xFF);
  epm_moe_workspace_t ws;
  EPM_CHECK(epm_moe_workspace_carve(&p, wsb, &ws));
  void *ob = gpu_alloc_poisoned(p.out_bf16_bytes, 0xFF);
  void *of = gpu_alloc_poisoned(p.out_f32_bytes, 0xFF);
  EPM_CHECK(epm_kernel_moe_forward(&p, w, &in, &ws, 0, ob, NULL));
  EPM_CHECK(epm_kernel_moe_forward(&p, w, &in, &ws, 1, of, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  uint16_t *hb = malloc(p.out_bf16_bytes + 2);
  gpu_download(hb, ob, p.out_bf16_bytes);
  /* The whole step captured in a CUDA graph (no host reads inside) and
   * replayed twice into a fresh poisoned output: identical bits. */
  {
    cudaStream_t st;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    void *og = gpu_alloc_poisoned(p.out_bf16_bytes, 0xFF);
    GPU_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    GPU_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    EPM_CHECK(epm_kernel_moe_forward(&p, w, &in, &ws, 0, og, st));
    GPU_CHECK(cudaStreamEndCapture(st, &graph));
    GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    GPU_CHECK(cudaGraphLaunch(exec, st));
    GPU_CHECK(cudaGraphLaunch(exec, st));
    GPU_CHECK(cudaStreamSynchronize(st));
    uint16_t *hg = malloc(p.out_bf16_bytes + 2);
    gpu_download(hg, og, p.out_bf16_bytes);
    if (memcmp(hg, hb, p.out_bf16_bytes) != 0) {
      fprintf(stderr, "FAIL: CUDA-graph replay differs from the direct launch (m=%lld)\n", (long long)m);
      failures++;
    }
    free(hg);
    GPU_CHECK(cudaGraphExecDestroy(exec));
    GPU_CHECK(cudaGraphDestroy(graph));
    GPU_CHECK(cudaStreamDestroy(st));
    GPU_CHECK(cudaFree(og));
  }
  gpu_download(out_f32, of, p.out_f32_bytes);
  for (int64_t i = 0; i < m * H; i++) out_bf16_as_f32[i] = epm_bf16_to_f32(hb[i]);
  free(hb);
  GPU_CHECK(cudaFree((void *)in.hidden_fp4));
  GPU_CHECK(cudaFree((void *)in.hidden_sf));
  GPU_CHECK(cudaFree((void *)in.ids));
  GPU_CHECK(cudaFree((void *)in.weights));
  GPU_CHECK(cudaFree((void *)in.rep_start)); /* NULL ok */
  GPU_CHECK(cudaFree((void *)in.rep_local));
  GPU_CHECK(cudaFree(wsb));
  GPU_CHECK(cudaFree(ob));
  GPU_CHECK(cudaFree(of));
}

static void judge(const char *name, gpu_cmp_t c, double tol_rel_l2, double tol_max_rel, int vs_ref) {
  double mr = c.ref_absmax > 0 ? c.max_abs / c.ref_absmax : c.max_abs;
  if (vs_ref && c.rel_l2 > worst_rel) worst_rel = c.rel_l2;
  if (vs_ref && mr > worst_abs_rel) worst_abs_rel = mr;
  if (c.nonfinite || c.rel_l2 > tol_rel_l2 || mr > tol_max_rel) {
    fprintf(stderr, "FAIL %s: rel-L2 %.3e (tol %.1e), max|diff|/max|ref| %.3e (tol %.1e), %lld non-finite\n",
            name, c.rel_l2, tol_rel_l2, mr, tol_max_rel, (long long)c.nonfinite);
    failures++;
  }
}

typedef enum { IDS_ROUTED, IDS_CRAFTED } ids_mode_t;

static void moe_case_in(const char *name, epm_model_dims_t d, int64_t m, int64_t off, int64_t el, ids_mode_t mode,
                        uint64_t seed, const epm_placement_t *pl, int64_t rank) {
  const int64_t H = d.hidden, I = d.intermediate, E = d.num_experts, k = d.top_k;
  epm_layer_t layer;
  if (pl) {
    EPM_CHECK(epm_layer_generate_placed(&d, 0, seed, pl, rank, &layer));
    el = layer.experts.count;
  } else {
    EPM_CHECK(epm_layer_generate(&d, 0, seed, off, el, &layer));
  }
  epm_test_rng_t rng = {seed * 7 + 1};
  size_t mh = (size_t)(m * H);
  epm_bf16_t *x = malloc(mh * 2 + 2);
  for (int64_t t = 0; t < m; t++) {
    float mag = t % 9 == 0 ? 0.01f : 1.0f;
    for (int64_t h = 0; h < H; h++) x[t * H + h] = epm_bf16_from_f32(epm_test_rng_normal(&rng) * mag);
    if (t % 4 == 1) memset(x + t * H + 16, 0, 32); /* a zero block */
  }
  uint8_t *xq = malloc(mh / 2 + 1), *xsf = malloc(mh / 16 + 1);
  EPM_CHECK(epm_nvfp4_quantize_bf16(x, m, H, 1.0f / layer.input_scale, EPM_SF_LINEAR, xq, xsf));
  int32_t *ids = malloc((size_t)(m * k) * sizeof(int32_t) + 4);
  float *wts = malloc((size_t)(m * k) * sizeof(float) + 4);
  if (mode == IDS_ROUTED) {
    float *l = malloc((size_t)(m * E) * sizeof(float) + 4);
    for (int64_t i = 0; i < m * E; i++) l[i] = epm_test_rng_normal(&rng);
    epm_routing_config_t cfg;
    EPM_CHECK(epm_routing_config_from_dims(&d, &cfg));
    EPM_CHECK(epm_route_f32(&cfg, l, layer.router_bias, m, ids, wts, NULL));
    free(l);
  } else {
    /* local expert off+1 gets no token; every 5th token has only non-local
     * experts; the others mix local and non-local, distinct per token */
    for (int64_t t = 0; t < m; t++) {
      for (int64_t j = 0; j < k; j++) {
        int64_t e;
        int dup;
        do {
          e = (int64_t)(epm_test_rng_u64(&rng) % (uint64_t)E);
          int local = e >= off && e < off + el;
          dup = (t % 5 == 0 && local) || e == off + 1;
          for (int64_t q = 0; q < j; q++) dup |= ids[t * k + q] == e;
        } while (dup);
        ids[t * k + j] = (int32_t)e;
        wts[t * k + j] = epm_test_rng_uniform(&rng);
      }
    }
  }
  float *ref_f = malloc(mh * 4 + 4), *out_b = malloc(mh * 4 + 4), *out_f = malloc(mh * 4 + 4);
  epm_bf16_t *ref_b = malloc(mh * 2 + 2);
  EPM_CHECK(epm_moe_ref_experts(&layer, xq, xsf, layer.input_scale, m, k, ids, wts, NULL, ref_f, ref_b, NULL));
  epm_moe_weights_dev_t w;
  gpu_upload_experts(&layer, &w);
  gpu_moe(&w, m, H, I, E, k, off, el, pl ? &layer.slots : NULL, xq, xsf, ids, wts, out_b, out_f);
  gpu_free_experts(&w);
  float *ref_bf = malloc(mh * 4 + 4);
  for (size_t i = 0; i < mh; i++) ref_bf[i] = epm_bf16_to_f32(ref_b[i]);
  printf("moe %s: m=%lld H=%lld I=%lld E=%lld k=%lld local [%lld, %lld)\n", name, (long long)m, (long long)H,
         (long long)I, (long long)E, (long long)k, (long long)off, (long long)(off + el));
  judge(name, gpu_compare("bf16 out vs reference bf16", out_b, ref_bf, (int64_t)mh), 5e-3, 5e-2, 1);
  judge(name, gpu_compare("fp32 partial vs reference fp32", out_f, ref_f, (int64_t)mh), 5e-3, 5e-2, 1);
  /* tokens with no local expert: exactly +0 in both outputs */
  int64_t nonzero = 0;
  for (int64_t t = 0; t < m; t++) {
    int any = 0;
    for (int64_t j = 0; j < k; j++) any |= epm_layer_local_slot(&layer, ids[t * k + j], t) >= 0;
    if (!any)
      for (int64_t h = 0; h < H; h++) nonzero += out_b[t * H + h] != 0.0f || out_f[t * H + h] != 0.0f;
  }
  if (nonzero) {
    fprintf(stderr, "FAIL %s: %lld outputs of all-non-local tokens are not 0\n", name, (long long)nonzero);
    failures++;
  }
  free(x);
  free(xq);
  free(xsf);
  free(ids);
  free(wts);
  free(ref_f);
  free(ref_b);
  free(ref_bf);
  free(out_b);
  free(out_f);
  epm_layer_free(&layer);
}

static void moe_case(const char *name, epm_model_dims_t d, int64_t m, int64_t off, int64_t el, ids_mode_t mode,
                     uint64_t seed) {
  moe_case_in(name, d, m, off, el, mode, seed, NULL, 0);
}

/* Every rank of a placement: the kernels map ids through the rank's replica
 * table (non-contiguous experts, replicas) like the reference. */
static void placed_cases(const char *name, epm_model_dims_t d, int64_t m, const epm_placement_t *pl, uint64_t seed) {
  for (int64_t r = 0; r < pl->ep_size; r++) {
    char n[160];
    snprintf(n, sizeof n, "%s, rank %lld of %lld (%lld slots)", name, (long long)r, (long long)pl->ep_size,
             (long long)epm_placement_rank_slots(pl, r));
    moe_case_in(n, d, m, 0, 0, IDS_ROUTED, seed, pl, r);
  }
}

static epm_model_dims_t tiny(void) {
  epm_model_dims_t d;
  EPM_CHECK(epm_model_preset("tiny", &d));
  return d;
}

/* FlashInfer's MoE vectors: experts [s.off, s.off + s.count) of the bundle's
 * layer (dims from its manifest), compared with the given [tokens, hidden]
 * output (fp32 sums of fp32 expert outputs; we round y to bf16). */
static void flashinfer_case(const epm_bundle_moe_t *p, epm_bundle_slice_t s, const char *want_name,
                            int bf16_weights) {
  const int64_t m = p->tokens, H = p->hidden, I = p->intermediate, E = p->num_experts, k = p->top_k;
  epm_ref_array_t a[13];
  memset(a, 0, sizeof a); /* epm_ref_free is safe on the ones never loaded */
  epm_ref_array_t *hf = &a[0], *hsf = &a[1], *ids = &a[2], *tw = &a[3], *gw = &a[4], *gs = &a[5], *uw = &a[6],
                  *us = &a[7], *dw = &a[8], *ds = &a[9], *g2 = &a[10], *d2 = &a[11], *want = &a[12];
  float in_scale, down_in_scale;
  if (epm_ref_load_as("moe_hidden_fp4", "uint8", 2, (int64_t[]){m, H / 2}, hf) ||
      epm_ref_load_as("moe_hidden_sf_linear", "uint8", 2, (int64_t[]){m, H / 16}, hsf) ||
      epm_ref_load_as("moe_topk_ids", "int32", 2, (int64_t[]){m, k}, ids) ||
      epm_ref_load_f32("moe_topk_weights", 2, (int64_t[]){m, k}, tw) ||
      epm_ref_load_as("moe_gate_weight", "uint8", 3, (int64_t[]){E, I, H / 2}, gw) ||
      epm_ref_load_as("moe_gate_weight_scale", "uint8", 3, (int64_t[]){E, I, H / 16}, gs) ||
      epm_ref_load_as("moe_up_weight", "uint8", 3, (int64_t[]){E, I, H / 2}, uw) ||
      epm_ref_load_as("moe_up_weight_scale", "uint8", 3, (int64_t[]){E, I, H / 16}, us) ||
      epm_ref_load_as("moe_down_weight", "uint8", 3, (int64_t[]){E, H, I / 2}, dw) ||
      epm_ref_load_as("moe_down_weight_scale", "uint8", 3, (int64_t[]){E, H, I / 16}, ds) ||
      epm_ref_load_f32("moe_gate_up_weight_scale_2", 1, (int64_t[]){E}, g2) ||
      epm_ref_load_f32("moe_down_weight_scale_2", 1, (int64_t[]){E}, d2) ||
      epm_ref_load_f32(want_name, 2, (int64_t[]){m, H}, want) || epm_ref_scalar_f32("moe_input_scale", &in_scale) ||
      epm_ref_scalar_f32("moe_down_input_scale", &down_in_scale)) {
    fprintf(stderr, "FAIL: cannot load FlashInfer moe_* vectors\n");
    failures++;
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) epm_ref_free(&a[i]);
    return;
  }
  /* per expert: gate/up [I, H] and down [H, I], NVFP4 */
  const size_t wi = (size_t)(I * H / 2), si = (size_t)(I * H / 16), off = (size_t)s.off, el = (size_t)s.count;
  epm_moe_weights_dev_t w;
  w.gate_w = gpu_upload((uint8_t *)gw->data + off * wi, el * wi);
  w.gate_sf = gpu_upload((uint8_t *)gs->data + off * si, el * si);
  w.up_w = gpu_upload((uint8_t *)uw->data + off * wi, el * wi);
  w.up_sf = gpu_upload((uint8_t *)us->data + off * si, el * si);
  w.down_w = gpu_upload((uint8_t *)dw->data + off * wi, el * wi);
  w.down_sf = gpu_upload((uint8_t *)ds->data + off * si, el * si);
  w.gate_up_scale_2 = gpu_upload((float *)g2->data + off, el * 4);
  w.down_scale_2 = gpu_upload((float *)d2->data + off, el * 4);
  w.input_scale = in_scale;
  w.down_input_scale = down_in_scale;
  float *ob = malloc((size_t)(m * H) * 4 + 4), *of = malloc((size_t)(m * H) * 4 + 4);
  gpu_moe(&w, m, H, I, E, k, s.off, s.count, NULL, hf->data, hsf->data, ids->data, tw->data, ob, of);
  gpu_free_experts(&w);
  char name[128];
  snprintf(name, sizeof name, "flashinfer %s experts [%lld, %lld) of %lld, %lld tokens (fp32 partial)", want_name,
           (long long)s.off, (long long)(s.off + s.count), (long long)E, (long long)m);
  /* FlashInfer keeps y in fp32 and (unless _wbf16) fp32 weights: a looser bound */
  judge(name, gpu_compare(name, of, want->data, m * H), bf16_weights ? 1e-2 : 2e-2, 1e-1, 0);
  free(ob);
  free(of);
  for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) epm_ref_free(&a[i]);
}

int main(void) {
  gpu_require_device("test_gpu_moe");
  epm_model_dims_t d = tiny(); /* H 256, I 128, E 16, k 4, deepseek-v3 4/2 */
  moe_case("tiny low slice", d, 300, 0, 4, IDS_ROUTED, 1);
  moe_case("tiny high slice", d, 300, 12, 4, IDS_ROUTED, 2);
  moe_case("tiny all experts", d, 200, 0, 16, IDS_ROUTED, 3);
  moe_case("tiny crafted (empty expert, non-local tokens)", d, 200, 4, 4, IDS_CRAFTED, 4);
  moe_case("tiny zero tokens", d, 0, 0, 4, IDS_ROUTED, 5);
  {
    epm_placement_t pl = EPM_PLACEMENT_INIT;
    double load[16];
    for (int e = 0; e < 16; e++) load[e] = e % 6 == 1 ? 40.0 : 3.0;
    EPM_CHECK(epm_placement_default(16, 3, 2, &pl)); /* 6 slots each; experts 0, 1 twice */
    placed_cases("tiny default split + 2 redundant", d, 300, &pl, 7);
    epm_placement_free(&pl);
    EPM_CHECK(epm_placement_balance(16, 5, 4, load, &pl)); /* scattered experts, replicas */
    placed_cases("tiny balanced map", d, 300, &pl, 8);
    epm_placement_free(&pl);
  }
  epm_model_dims_t k1 = d;
  k1.routing = EPM_ROUTING_RENORMALIZE;
  k1.top_k = 1;
  k1.n_group = 1;
  k1.topk_group = 1;
  k1.routed_scaling_factor = 1.0f;
  moe_case("k=1 renormalize", k1, 257, 4, 4, IDS_ROUTED, 6);
  epm_model_dims_t odd = k1; /* H, I multiples of 16 but not of the 64/128 tiles */
  odd.hidden = 144;
  odd.intermediate = 80;
  odd.shared_intermediate = 80;
  odd.num_experts = 8;
  odd.top_k = 2;
  moe_case("odd dims H144 I80", odd, 100, 0, 8, IDS_ROUTED, 7);
  epm_model_dims_t mid = d;
  mid.hidden = 1024;
  mid.intermediate = 512;
  mid.shared_intermediate = 512;
  mid.num_experts = 32;
  mid.top_k = 8;
  mid.n_group = 4;
  mid.topk_group = 2;
  moe_case("mid H1024 I512 E32 k8", mid, 700, 8, 8, IDS_ROUTED, 8);

  epm_bundle_moe_t fp;
  if (epm_bundle_moe(&fp)) {
    failures++;
  } else {
    flashinfer_case(&fp, (epm_bundle_slice_t){0, fp.num_experts}, "moe_out_wbf16_fp32", 1);
    flashinfer_case(&fp, fp.hi, "moe_out_local_hi_fp32", 0);
    flashinfer_case(&fp, fp.lo, "moe_out_local_lo_fp32", 0);
  }
  if (failures) {
    fprintf(stderr, "test_gpu_moe: %d failures\n", failures);
    return 1;
  }
  printf("test_gpu_moe: worst rel-L2 %.3e, worst max|diff|/max|ref| %.3e vs the CPU reference\n", worst_rel,
         worst_abs_rel);
  return 0;
}
