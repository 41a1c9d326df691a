/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_moe2: the fast (v2) expert pipeline on the GPU (permute + FP16
 * gather -> wgmma GEMM1 + SwiGLU + NVFP4 requant -> GEMM2 -> finalize)
 * against the CPU reference epm_moe_ref_experts and the v1 kernels, on the
 * same NVFP4 tokens, ids and weights. Exits 77 without a GPU or when the
 * device has no v2 kernels in this build (sm_90; sm_100 with EPMOE_CUTLASS).
 *
 * What is asserted, and why (the numerics contract of kernels.h):
 *  - exact: the gather pass (every FP16 token element equals
 *    epm_core_x16_value of its NVFP4 code and scale at epm_core_x16_offset of
 *    its row), the counts, offsets and schedule prefixes (recomputed on the
 *    host with epm_core_sched_scan), the zero outputs of tokens whose experts
 *    are all remote, and a CUDA-graph replay (bit-identical to the direct run);
 *  - bit-identical, because the accumulation order does not change: the
 *    2^-14 (FP16 subnormal) and the all-normal dequant variants (a difference
 *    means the tensor cores flush FP16 subnormal inputs: keep NORMAL), and the
 *    decode vs prefill tiles (each output sums the same k16 products in the
 *    same order; a difference is a tiling bug);
 *  - within fp32-accumulation noise: v2 vs the CPU reference and vs v1 (the
 *    same bounds test_gpu_moe uses for v1: rel-L2 5e-3, max|diff| 5e-2 of
 *    max|ref|; the products are exact, the fp32 sums run in a different order,
 *    and a sum that crosses an NVFP4 rounding boundary of the intermediate
 *    flips one code), and the NVFP4 intermediate vs v1's, block by block
 *    through the pair -> row maps (at most 1% of the 16-blocks differ).
 * This test has never run: it was written without a GPU (GPU runs issue). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/layer.h"
#include "epmoe/moe_ref.h"
#include "epmoe/nvfp4.h"
#include "epmoe/routing.h"
#include "gpu_util.h"
#include "moe2_core.h"
#include "testutil.h"

static int failures;
static int arch, sm_count;

#define FAIL(...)                 \
  do {                            \
    fprintf(stderr, "FAIL: ");    \
    fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, "\n");        \
    failures++;                   \
  } while (0)

typedef struct {
  epm_moe2_weights_dev_t w;
  int64_t el;
} dev_w2_t;

/* Prepack the layer's local experts on the host and upload them. */
static void upload_v2(const epm_layer_t *l, const epm_moe2_plan_t *p, dev_w2_t *o) {
  const epm_expert_bank_t *b = &l->experts;
  const int64_t n = b->count, H = b->hidden, I = b->intermediate;
  uint8_t *h13 = malloc(p->w13_expert_bytes * (size_t)n), *h2 = malloc(p->w2_expert_bytes * (size_t)n);
  for (int64_t e = 0; e < n; e++)
    EPM_CHECK(epm_moe2_prepack_expert(p, b->gate_w + e * I * H / 2, b->gate_sf + e * I * H / 16,
                                      b->up_w + e * I * H / 2, b->up_sf + e * I * H / 16, b->down_w + e * H * I / 2,
                                      b->down_sf + e * H * I / 16, h13 + (size_t)e * p->w13_expert_bytes,
                                      h2 + (size_t)e * p->w2_expert_bytes));
  o->w.w13 = gpu_upload(h13, p->w13_expert_bytes * (size_t)n);
  o->w.w2 = gpu_upload(h2, p->w2_expert_bytes * (size_t)n);
  o->w.gate_up_scale_2 = gpu_upload(b->gate_up_scale_2, (size_t)n * 4);
  o->w.down_scale_2 = gpu_upload(b->down_scale_2, (size_t)n * 4);
  o->w.input_scale = l->input_scale;
  o->w.down_input_scale = l->down_input_scale;
  o->el = n;
  free(h13);
  free(h2);
}

static void free_v2(dev_w2_t *o) {
  GPU_CHECK(cudaFree((void *)o->w.w13));
  GPU_CHECK(cudaFree((void *)o->w.w2));
  GPU_CHECK(cudaFree((void *)o->w.gate_up_scale_2));
  GPU_CHECK(cudaFree((void *)o->w.down_scale_2));
}

typedef struct {
  float *out_bf16; /* bf16 output widened */
  float *out_f32;
  uint8_t *inter;  /* NVFP4 intermediate gathered per pair: [pairs][I/2 + I/16], 0xFF when not local */
} run_out_t;

static void alloc_out(run_out_t *r, int64_t m, int64_t H, int64_t pairs, int64_t I) {
  r->out_bf16 = malloc((size_t)(m * H + 1) * 4);
  r->out_f32 = malloc((size_t)(m * H + 1) * 4);
  r->inter = malloc((size_t)(pairs * (I / 2 + I / 16) + 1));
  memset(r->inter, 0xFF, (size_t)(pairs * (I / 2 + I / 16) + 1));
}
static void free_out(run_out_t *r) {
  free(r->out_bf16);
  free(r->out_f32);
  free(r->inter);
}

/* Copy each local pair's intermediate row (packed + scales) out of a row-
 * indexed device buffer via the pair -> row map. */
static void gather_inter(const int64_t *pair_row, int64_t pairs, int64_t I, const uint8_t *ip_dev,
                         const uint8_t *isf_dev, int64_t rows, uint8_t *out) {
  uint8_t *ip = malloc((size_t)(rows * I / 2 + 1)), *isf = malloc((size_t)(rows * I / 16 + 1));
  gpu_download(ip, ip_dev, (size_t)(rows * I / 2));
  gpu_download(isf, isf_dev, (size_t)(rows * I / 16));
  for (int64_t p = 0; p < pairs; p++) {
    if (pair_row[p] < 0) continue;
    memcpy(out + p * (I / 2 + I / 16), ip + pair_row[p] * (I / 2), (size_t)(I / 2));
    memcpy(out + p * (I / 2 + I / 16) + I / 2, isf + pair_row[p] * (I / 16), (size_t)(I / 16));
  }
  free(ip);
  free(isf);
}

typedef struct {
  const uint8_t *xq, *xsf;
  const int32_t *ids;
  const float *wts;
  int64_t m, H, I, E, k, off, el;
} case_in_t;

/* v1 on the GPU (the reference GPU path), with its intermediate. */
static void run_v1(const epm_layer_t *l, const case_in_t *c, run_out_t *r) {
  epm_moe_plan_t p;
  EPM_CHECK(epm_moe_plan(c->m, c->H, c->I, c->E, c->k, c->off, c->el, &p));
  epm_moe_weights_dev_t w;
  gpu_upload_experts(l, &w);
  epm_moe_inputs_dev_t in = {gpu_upload(c->xq, (size_t)(c->m * c->H / 2)),
                             gpu_upload(c->xsf, (size_t)(c->m * c->H / 16)),
                             gpu_upload(c->ids, (size_t)(c->m * c->k) * 4),
                             gpu_upload(c->wts, (size_t)(c->m * c->k) * 4), NULL, NULL};
  void *wsb = gpu_alloc_poisoned(p.workspace_bytes, 0xFF), *ob = gpu_alloc_poisoned(p.out_bf16_bytes + 4, 0xFF),
       *of = gpu_alloc_poisoned(p.out_f32_bytes + 4, 0xFF);
  epm_moe_workspace_t ws;
  EPM_CHECK(epm_moe_workspace_carve(&p, wsb, &ws));
  EPM_CHECK(epm_kernel_moe_forward(&p, &w, &in, &ws, 0, ob, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  int64_t *pr = malloc((size_t)(p.pairs + 1) * 8);
  gpu_download(pr, ws.pair_row, (size_t)p.pairs * 8);
  gather_inter(pr, p.pairs, c->I, ws.inter_packed, ws.inter_sf, p.max_rows, r->inter);
  EPM_CHECK(epm_kernel_moe_forward(&p, &w, &in, &ws, 1, of, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  uint16_t *hb = malloc(p.out_bf16_bytes + 2);
  gpu_download(hb, ob, p.out_bf16_bytes);
  for (int64_t i = 0; i < c->m * c->H; i++) r->out_bf16[i] = epm_bf16_to_f32(hb[i]);
  gpu_download(r->out_f32, of, p.out_f32_bytes);
  free(hb);
  free(pr);
  gpu_free_experts(&w);
  GPU_CHECK(cudaFree((void *)in.hidden_fp4));
  GPU_CHECK(cudaFree((void *)in.hidden_sf));
  GPU_CHECK(cudaFree((void *)in.ids));
  GPU_CHECK(cudaFree((void *)in.weights));
  GPU_CHECK(cudaFree(wsb));
  GPU_CHECK(cudaFree(ob));
  GPU_CHECK(cudaFree(of));
}

/* Exact host checks of the permute: counts, offsets, schedule, FP16 rows. */
static void check_permute(const char *name, const epm_moe2_plan_t *p, const epm_moe2_workspace_t *ws,
                          const case_in_t *c) {
  const int64_t el = p->local_experts, pairs = p->pairs;
  int32_t *cnt = calloc((size_t)el + 1, 4), *dcnt = malloc((size_t)el * 4 + 4);
  int64_t *off = malloc((size_t)(el + 1) * 8), *doff = malloc((size_t)(el + 1) * 8);
  int64_t *pr = malloc((size_t)(pairs + 1) * 8);
  for (int64_t i = 0; i < pairs; i++) {
    const int64_t e = (int64_t)c->ids[i] - c->off;
    if (e >= 0 && e < el) cnt[e]++;
  }
  off[0] = 0;
  for (int64_t e = 0; e < el; e++) off[e + 1] = off[e] + (cnt[e] + 7) / 8 * 8;
  gpu_download(dcnt, ws->counts, (size_t)el * 4);
  gpu_download(doff, ws->offsets, (size_t)(el + 1) * 8);
  if (memcmp(cnt, dcnt, (size_t)el * 4) || memcmp(off, doff, (size_t)(el + 1) * 8))
    FAIL("%s: device counts/offsets differ from the host histogram", name);
  for (int g = 1; g <= 2; g++) {
    epm_core_sched_t s = {g == 1 ? p->m_tiles1 : p->m_tiles2, g == 1 ? p->hidden_pad : p->inter_pad,
                          g == 1 ? p->w1_tile_bytes : p->w2_tile_bytes, p->bn_max, (int32_t)p->opts.tiles};
    int64_t *u = malloc((size_t)(el + 1) * 8), *co = malloc((size_t)(el + 1) * 8), *du = malloc((size_t)(el + 1) * 8),
            *dco = malloc((size_t)(el + 1) * 8);
    epm_core_sched_scan(&s, cnt, el, u, co);
    gpu_download(du, g == 1 ? ws->uoff1 : ws->uoff2, (size_t)(el + 1) * 8);
    gpu_download(dco, g == 1 ? ws->coff1 : ws->coff2, (size_t)(el + 1) * 8);
    if (memcmp(u, du, (size_t)(el + 1) * 8) || memcmp(co, dco, (size_t)(el + 1) * 8))
      FAIL("%s: GEMM%d schedule prefixes differ from the host scan", name, g);
    free(u);
    free(co);
    free(du);
    free(dco);
  }
  gpu_download(pr, ws->pair_row, (size_t)pairs * 8);
  uint8_t *x16 = malloc(p->x16_bytes + 1);
  gpu_download(x16, ws->x16, p->x16_bytes);
  int64_t bad = 0, badmap = 0;
  const int normal = p->opts.fp16 == EPM_MOE2_FP16_NORMAL;
  unsigned char *used = calloc((size_t)p->max_rows, 1);
  for (int64_t i = 0; i < pairs; i++) {
    const int64_t e = (int64_t)c->ids[i] - c->off;
    const int local = e >= 0 && e < el;
    if (!local) {
      badmap += pr[i] != -1;
      continue;
    }
    if (pr[i] < off[e] || pr[i] >= off[e] + cnt[e] || used[pr[i]]) {
      badmap++;
      continue;
    }
    used[pr[i]] = 1;
    const int64_t t = i / c->k;
    for (int64_t kk = 0; kk < p->hidden_pad; kk++) {
      uint16_t want = 0, got;
      if (kk < c->H) {
        const uint32_t code = (c->xq[t * c->H / 2 + kk / 2] >> ((kk % 2) * 4)) & 15u;
        want = epm_core_x16_value(code, c->xsf[t * c->H / 16 + kk / 16], normal);
      }
      memcpy(&got, x16 + epm_core_x16_offset(pr[i], kk, p->max_rows), 2);
      bad += got != want;
    }
  }
  if (badmap) FAIL("%s: %lld pairs map to a wrong or shared row", name, (long long)badmap);
  if (bad) FAIL("%s: %lld FP16 token elements differ from epm_core_x16_value", name, (long long)bad);
  free(used);
  free(x16);
  free(cnt);
  free(dcnt);
  free(off);
  free(doff);
  free(pr);
}

/* v2 on the GPU with the given options; also replays it from a CUDA graph. */
static void run_v2(const char *name, const dev_w2_t *w, const case_in_t *c, epm_moe2_opts_t o, int check, run_out_t *r) {
  epm_moe2_plan_t p;
  o.sm_count = sm_count;
  o.arch = arch;
  o.packed_intermediate = 1;
  EPM_CHECK(epm_moe2_plan(c->m, c->H, c->I, c->E, c->k, c->off, c->el, &o, &p));
  epm_moe_inputs_dev_t in = {gpu_upload(c->xq, (size_t)(c->m * c->H / 2)),
                             gpu_upload(c->xsf, (size_t)(c->m * c->H / 16)),
                             gpu_upload(c->ids, (size_t)(c->m * c->k) * 4),
                             gpu_upload(c->wts, (size_t)(c->m * c->k) * 4), NULL, NULL};
  void *wsb = gpu_alloc_poisoned(p.workspace_bytes, 0xFF), *ob = gpu_alloc_poisoned(p.out_bf16_bytes + 4, 0xFF),
       *of = gpu_alloc_poisoned(p.out_f32_bytes + 4, 0xFF), *og = gpu_alloc_poisoned(p.out_bf16_bytes + 4, 0xFF);
  epm_moe2_workspace_t ws;
  EPM_CHECK(epm_moe2_workspace_carve(&p, wsb, &ws));
  EPM_CHECK(epm_kernel_moe2_forward(&p, &w->w, &in, NULL, &ws, 0, ob, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  if (check && arch == 90) check_permute(name, &p, &ws, c);
  int64_t *pr = malloc((size_t)(p.pairs + 1) * 8);
  gpu_download(pr, ws.pair_row, (size_t)p.pairs * 8);
  if (arch == 90) /* the sm_100a path keeps its intermediate with 128x4 scales */
    gather_inter(pr, p.pairs, c->I, ws.inter_packed, ws.inter_sf, p.max_rows, r->inter);
  EPM_CHECK(epm_kernel_moe2_forward(&p, &w->w, &in, NULL, &ws, 1, of, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  uint16_t *hb = malloc(p.out_bf16_bytes + 2), *hg = malloc(p.out_bf16_bytes + 2);
  gpu_download(hb, ob, p.out_bf16_bytes);
  for (int64_t i = 0; i < c->m * c->H; i++) r->out_bf16[i] = epm_bf16_to_f32(hb[i]);
  gpu_download(r->out_f32, of, p.out_f32_bytes);
  if (check) {
    cudaStream_t st;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    GPU_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    GPU_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    EPM_CHECK(epm_kernel_moe2_forward(&p, &w->w, &in, NULL, &ws, 0, og, st));
    GPU_CHECK(cudaStreamEndCapture(st, &graph));
    GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    GPU_CHECK(cudaGraphLaunch(exec, st));
    GPU_CHECK(cudaGraphLaunch(exec, st));
    GPU_CHECK(cudaStreamSynchronize(st));
    gpu_download(hg, og, p.out_bf16_bytes);
    if (memcmp(hg, hb, p.out_bf16_bytes)) FAIL("%s: CUDA-graph replay differs from the direct launch", name);
    GPU_CHECK(cudaGraphExecDestroy(exec));
    GPU_CHECK(cudaGraphDestroy(graph));
    GPU_CHECK(cudaStreamDestroy(st));
  }
  free(hb);
  free(hg);
  free(pr);
  GPU_CHECK(cudaFree((void *)in.hidden_fp4));
  GPU_CHECK(cudaFree((void *)in.hidden_sf));
  GPU_CHECK(cudaFree((void *)in.ids));
  GPU_CHECK(cudaFree((void *)in.weights));
  GPU_CHECK(cudaFree(wsb));
  GPU_CHECK(cudaFree(ob));
  GPU_CHECK(cudaFree(of));
  GPU_CHECK(cudaFree(og));
}

static void judge(const char *name, const char *what, const float *out, const float *ref, int64_t n) {
  char label[160];
  snprintf(label, sizeof label, "%s: %s", name, what);
  gpu_cmp_t c = gpu_compare(label, out, ref, n);
  const double mr = c.ref_absmax > 0 ? c.max_abs / c.ref_absmax : c.max_abs;
  if (c.nonfinite || c.rel_l2 > 5e-3 || mr > 5e-2)
    FAIL("%s: rel-L2 %.3e (tol 5e-3), max|diff|/max|ref| %.3e (tol 5e-2), %lld non-finite", label, c.rel_l2, mr,
         (long long)c.nonfinite);
}

static void same_bits(const char *name, const char *what, const run_out_t *a, const run_out_t *b, int64_t n) {
  if (memcmp(a->out_bf16, b->out_bf16, (size_t)n * 4) || memcmp(a->out_f32, b->out_f32, (size_t)n * 4))
    FAIL("%s: %s are not bit-identical", name, what);
}

static void inter_flips(const char *name, const run_out_t *v2, const run_out_t *v1, const case_in_t *c) {
  int64_t blocks = 0, diff = 0;
  const int64_t I = c->I, row = I / 2 + I / 16;
  for (int64_t p = 0; p < c->m * c->k; p++) {
    const uint8_t *a = v2->inter + p * row, *b = v1->inter + p * row;
    if (c->ids[p] < c->off || c->ids[p] >= c->off + c->el) continue; /* not local */
    for (int64_t q = 0; q < I / 16; q++) {
      blocks++;
      diff += memcmp(a + q * 8, b + q * 8, 8) != 0 || a[I / 2 + q] != b[I / 2 + q];
    }
  }
  printf("  %s: NVFP4 intermediate vs v1: %lld of %lld 16-blocks differ\n", name, (long long)diff, (long long)blocks);
  if (diff * 100 > blocks) FAIL("%s: %lld of %lld intermediate blocks differ from v1 (> 1%%)", name, (long long)diff,
                                (long long)blocks);
}

typedef enum { IDS_ROUTED, IDS_CRAFTED } ids_mode_t;

static void moe_case(const char *name, epm_model_dims_t d, int64_t m, int64_t off, int64_t el, ids_mode_t mode,
                     uint64_t seed) {
  const int64_t H = d.hidden, I = d.intermediate, E = d.num_experts, k = d.top_k;
  epm_layer_t layer;
  EPM_CHECK(epm_layer_generate(&d, 0, seed, off, el, &layer));
  epm_test_rng_t rng = {seed * 7 + 1};
  const size_t mh = (size_t)(m * H);
  epm_bf16_t *x = malloc(mh * 2 + 2);
  for (int64_t t = 0; t < m; t++) {
    const float mag = t % 9 == 0 ? 0.01f : 1.0f;
    for (int64_t h = 0; h < H; h++) x[t * H + h] = epm_bf16_from_f32(epm_test_rng_normal(&rng) * mag);
    if (t % 4 == 1) memset(x + t * H + 16, 0, 32);
  }
  uint8_t *xq = malloc(mh / 2 + 1), *xsf = malloc(mh / 16 + 1);
  EPM_CHECK(epm_nvfp4_quantize_bf16(x, m, H, 1.0f / layer.input_scale, EPM_SF_LINEAR, xq, xsf));
  int32_t *ids = malloc((size_t)(m * k) * 4 + 4);
  float *wts = malloc((size_t)(m * k) * 4 + 4);
  if (mode == IDS_ROUTED) {
    float *l = malloc((size_t)(m * E) * 4 + 4);
    for (int64_t i = 0; i < m * E; i++) l[i] = epm_test_rng_normal(&rng);
    epm_routing_config_t cfg;
    EPM_CHECK(epm_routing_config_from_dims(&d, &cfg));
    EPM_CHECK(epm_route_f32(&cfg, l, layer.router_bias, m, ids, wts, NULL));
    free(l);
  } else {
    for (int64_t t = 0; t < m; t++)
      for (int64_t j = 0; j < k; j++) {
        int64_t e;
        int dup;
        do {
          e = (int64_t)(epm_test_rng_u64(&rng) % (uint64_t)E);
          const int local = e >= off && e < off + el;
          dup = (t % 5 == 0 && local) || e == off + 1;
          for (int64_t q = 0; q < j; q++) dup |= ids[t * k + q] == e;
        } while (dup);
        ids[t * k + j] = (int32_t)e;
        wts[t * k + j] = epm_test_rng_uniform(&rng);
      }
  }
  const case_in_t c = {xq, xsf, ids, wts, m, H, I, E, k, off, el};
  float *ref_f = malloc(mh * 4 + 4), *ref_bf = malloc(mh * 4 + 4);
  epm_bf16_t *ref_b = malloc(mh * 2 + 2);
  EPM_CHECK(epm_moe_ref_experts(&layer, xq, xsf, layer.input_scale, m, k, ids, wts, NULL, ref_f, ref_b, NULL));
  for (size_t i = 0; i < mh; i++) ref_bf[i] = epm_bf16_to_f32(ref_b[i]);
  printf("moe2 %s: m=%lld H=%lld I=%lld E=%lld k=%lld local [%lld, %lld)\n", name, (long long)m, (long long)H,
         (long long)I, (long long)E, (long long)k, (long long)off, (long long)(off + el));

  epm_moe2_plan_t p0;
  epm_moe2_opts_t o = EPM_MOE2_OPTS_INIT;
  o.arch = arch;
  o.sm_count = sm_count;
  EPM_CHECK(epm_moe2_plan(m, H, I, E, k, off, el, &o, &p0));
  dev_w2_t w;
  upload_v2(&layer, &p0, &w);
  run_out_t v1, dn, ds, pf;
  alloc_out(&v1, m, H, m * k, I);
  alloc_out(&dn, m, H, m * k, I);
  alloc_out(&ds, m, H, m * k, I);
  alloc_out(&pf, m, H, m * k, I);
  run_v1(&layer, &c, &v1);
  o.tiles = EPM_MOE2_TILES_DECODE;
  o.fp16 = EPM_MOE2_FP16_NORMAL;
  run_v2(name, &w, &c, o, 1, &dn);
  judge(name, "v2 bf16 out vs reference", dn.out_bf16, ref_bf, (int64_t)mh);
  judge(name, "v2 fp32 partial vs reference", dn.out_f32, ref_f, (int64_t)mh);
  judge(name, "v2 fp32 partial vs v1", dn.out_f32, v1.out_f32, (int64_t)mh);
  if (arch == 90) {
    inter_flips(name, &dn, &v1, &c);
    o.fp16 = EPM_MOE2_FP16_SUBNORMAL;
    run_v2(name, &w, &c, o, 0, &ds);
    same_bits(name, "2^-14 (subnormal) and all-normal dequant results (the tensor cores flush FP16 subnormals?)",
              &ds, &dn, (int64_t)mh);
    o.fp16 = EPM_MOE2_FP16_NORMAL;
    o.tiles = EPM_MOE2_TILES_PREFILL;
    run_v2(name, &w, &c, o, 1, &pf);
    same_bits(name, "decode-tile and prefill-tile results", &pf, &dn, (int64_t)mh);
  }
  /* tokens whose experts are all remote: exactly 0 */
  int64_t nonzero = 0;
  for (int64_t t = 0; t < m; t++) {
    int any = 0;
    for (int64_t j = 0; j < k; j++) any |= ids[t * k + j] >= off && ids[t * k + j] < off + el;
    if (!any)
      for (int64_t h = 0; h < H; h++) nonzero += dn.out_bf16[t * H + h] != 0.0f || dn.out_f32[t * H + h] != 0.0f;
  }
  if (nonzero) FAIL("%s: %lld outputs of all-non-local tokens are not 0", name, (long long)nonzero);
  free_v2(&w);
  free_out(&v1);
  free_out(&dn);
  free_out(&ds);
  free_out(&pf);
  free(x);
  free(xq);
  free(xsf);
  free(ids);
  free(wts);
  free(ref_f);
  free(ref_bf);
  free(ref_b);
  epm_layer_free(&layer);
}

int main(void) {
  gpu_require_device("test_gpu_moe2");
  int dev = 0, major = 0, minor = 0;
  GPU_CHECK(cudaGetDevice(&dev));
  GPU_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  GPU_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  GPU_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, dev));
  arch = major == 9 && minor == 0 ? 90 : (major == 10 && minor == 0 ? 100 : 0);
  if (!arch || !epm_moe2_arch_built(arch)) {
    printf("test_gpu_moe2: compute capability %d.%d has no v2 kernels in this build: skipped\n", major, minor);
    return 77;
  }
  epm_model_dims_t d;
  EPM_CHECK(epm_model_preset("tiny", &d)); /* H 256, I 128, E 16, k 4, deepseek-v3 4/2 */
  moe_case("tiny low slice", d, 300, 0, 4, IDS_ROUTED, 1);
  moe_case("tiny high slice", d, 300, 12, 4, IDS_ROUTED, 2);
  moe_case("tiny all experts", d, 200, 0, 16, IDS_ROUTED, 3);
  moe_case("tiny crafted (empty expert, non-local tokens)", d, 200, 4, 4, IDS_CRAFTED, 4);
  moe_case("tiny zero tokens", d, 0, 0, 4, IDS_ROUTED, 5);
  moe_case("tiny one token", d, 1, 0, 16, IDS_ROUTED, 6);
  epm_model_dims_t k1 = d;
  k1.routing = EPM_ROUTING_RENORMALIZE;
  k1.top_k = 1;
  k1.n_group = 1;
  k1.topk_group = 1;
  k1.routed_scaling_factor = 1.0f;
  moe_case("k=1 renormalize", k1, 257, 4, 4, IDS_ROUTED, 7);
  epm_model_dims_t odd = k1; /* H, I multiples of 16 but of no tile: row and K padding */
  odd.hidden = 144;
  odd.intermediate = 80;
  odd.shared_intermediate = 80;
  odd.num_experts = 8;
  odd.top_k = 2;
  if (arch == 90) moe_case("odd dims H144 I80", odd, 100, 0, 8, IDS_ROUTED, 8);
  epm_model_dims_t mid = d;
  mid.hidden = 1024;
  mid.intermediate = 512;
  mid.shared_intermediate = 512;
  mid.num_experts = 32;
  mid.top_k = 8;
  mid.n_group = 4;
  mid.topk_group = 2;
  moe_case("mid H1024 I512 E32 k8", mid, 700, 8, 8, IDS_ROUTED, 9);
  epm_model_dims_t ds = mid; /* DeepSeek-R1 dims, a few experts: K = 7168 and 2048, several m-tiles */
  ds.hidden = 7168;
  ds.intermediate = 2048;
  ds.shared_intermediate = 2048;
  ds.num_experts = 16;
  ds.n_group = 4;
  ds.topk_group = 2;
  moe_case("DeepSeek dims, 4 local experts, decode-sized", ds, 24, 4, 4, IDS_ROUTED, 10);
  moe_case("DeepSeek dims, 4 local experts, 600 tokens", ds, 600, 0, 4, IDS_ROUTED, 11);
  if (failures) {
    fprintf(stderr, "test_gpu_moe2: %d failures\n", failures);
    return 1;
  }
  printf("test_gpu_moe2: all cases passed (sm_%d, %d SMs)\n", arch, sm_count);
  return 0;
}
