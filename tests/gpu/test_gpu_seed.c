/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_seed: the seed's size on one GPU. M = 327,680 gathered tokens
 * (EP32 x 10,240), H = 7168, DeepSeek-R1 routing (E = 256, top-8, groups
 * 8/4, routed scaling 2.5) with this rank's slice of 8 experts: the full
 * pipeline quantize -> routing -> permute -> GEMM1 -> GEMM2 -> finalize on the
 * device with 64-bit sizes (M*H = 2,348,810,240 > 2^31). Checks: no CUDA
 * error, every output element written (poisoned NaN before) and finite, and
 * for sampled rows (first, last, middle, random): NVFP4 bytes equal the host
 * codec, ids/weights equal the CPU routing, and the output rows equal the
 * CPU reference experts run on just those rows. Prints per-stage times.
 *
 * The same program runs the whole pipeline past M*H = 2^32 (ctest
 * test_gpu_pipeline_4g: 600,000 tokens, a small expert so it stays cheap);
 * then the rows around element 2^32 are among the sampled ones.
 *
 * Usage: test_gpu_seed [--tokens M] [--experts E --local L --top-k K
 *                       --inter I --routing NAME]   (defaults: the seed) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/layer.h"
#include "epmoe/moe_ref.h"
#include "epmoe/nvfp4.h"
#include "epmoe/routing.h"
#include "gpu_fill.h"
#include "gpu_util.h"
#include "testutil.h"

#define NSAMPLE 24
static const uint64_t SEED = 20261126;

int main(int argc, char **argv) {
  gpu_require_device("test_gpu_seed");
  epm_model_dims_t d;
  EPM_CHECK(epm_model_preset("deepseek-r1", &d));
  int64_t M = 327680, el = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *f = argv[i], *v = argv[i + 1];
    if (!strcmp(f, "--tokens")) M = atoll(v);
    else if (!strcmp(f, "--experts")) d.num_experts = atoll(v);
    else if (!strcmp(f, "--local")) el = atoll(v);
    else if (!strcmp(f, "--top-k")) d.top_k = atoll(v);
    else if (!strcmp(f, "--inter")) d.intermediate = d.shared_intermediate = atoll(v);
    else if (!strcmp(f, "--routing")) {
      EPM_CHECK(epm_routing_method_parse(v, &d.routing));
      d.n_group = d.topk_group = 1;
      d.routed_scaling_factor = 1.0f;
    } else {
      fprintf(stderr, "test_gpu_seed: unknown option '%s'\n", f);
      return 2;
    }
  }
  const int64_t H = d.hidden, I = d.intermediate, E = d.num_experts, k = d.top_k, off = 0;
  int failures = 0;

  epm_layer_t layer;
  EPM_CHECK(epm_layer_generate(&d, 0, SEED, off, el, &layer));
  epm_moe_weights_dev_t w;
  gpu_upload_experts(&layer, &w);

  epm_quantize_plan_t qp;
  epm_routing_plan_t rp;
  epm_moe_plan_t mp;
  EPM_CHECK(epm_quantize_plan(M, H, EPM_SF_LINEAR, &qp));
  EPM_CHECK(epm_routing_plan(&d, M, &rp));
  EPM_CHECK(epm_moe_plan(M, H, I, E, k, off, el, &mp));
  printf("M=%lld H=%lld: x %.2f GB, fp4 %.2f GB, workspace %.2f GB (max rows %lld), out %.2f GB\n",
         (long long)M, (long long)H, (double)qp.x_bytes / 1e9, (double)qp.packed_bytes / 1e9, (double)mp.workspace_bytes / 1e9,
         (long long)mp.max_rows, (double)mp.out_bf16_bytes / 1e9);

  {
    size_t free_b = 0, total_b = 0;
    GPU_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const double need = (double)(qp.x_bytes + qp.packed_bytes + qp.sf_bytes + rp.logits_bytes + 2 * rp.ids_bytes +
                                 mp.workspace_bytes + mp.out_bf16_bytes);
    if ((double)free_b < need * 1.02) {
      printf("test_gpu_seed: needs %.1f GB of GPU memory, %.1f GB free; skipping\n", need / 1e9, (double)free_b / 1e9);
      return 77;
    }
  }
  uint16_t *dx = gpu_alloc_poisoned(qp.x_bytes, 0);
  gpu_fill_act_bf16(dx, M, H, SEED);
  float *dl = gpu_alloc_poisoned(rp.logits_bytes, 0);
  gpu_fill_logits(dl, M, E, SEED + 1);
  float *dbias = layer.router_bias ? gpu_upload(layer.router_bias, (size_t)E * sizeof(float)) : NULL;
  const float g_in = 1.0f / layer.input_scale;
  float *dg = gpu_upload(&g_in, sizeof g_in);
  uint8_t *dq = gpu_alloc_poisoned(qp.packed_bytes, 0xFF), *dsf = gpu_alloc_poisoned(qp.sf_bytes, 0xFF);
  int32_t *dids = gpu_alloc_poisoned(rp.ids_bytes, 0xFF);
  float *dw = gpu_alloc_poisoned(rp.weights_bytes, 0xFF);
  void *wsb = gpu_alloc_poisoned(mp.workspace_bytes, 0xFF);
  epm_moe_workspace_t ws;
  EPM_CHECK(epm_moe_workspace_carve(&mp, wsb, &ws));
  uint16_t *dout = gpu_alloc_poisoned(mp.out_bf16_bytes, 0xFF);

  gpu_step_t step = {qp, rp, mp, dx, dg, dl, dbias, w, {dq, dsf, dids, dw, NULL, NULL}, ws, 0, dout};
  float ms[GPU_STEP_STAGES], total = 0;
  gpu_step_run(&step, NULL); /* warm-up */
  gpu_step_run(&step, ms);
  int64_t rows_used = 0;
  gpu_download(&rows_used, ws.offsets + el, sizeof rows_used);
  const double flop = 2.0 * (double)rows_used * (double)(2 * I * H + H * I);
  printf("permuted rows (padded) %lld; stage times (ms):", (long long)rows_used);
  for (int i = 0; i < GPU_STEP_STAGES; i++) {
    printf(" %s %.3f ", gpu_step_stage_names[i], ms[i]);
    total += ms[i];
  }
  printf(" total %.3f  (GEMMs %.1f TFLOP/s on padded rows)\n", total, flop / ((ms[3] + ms[4]) * 1e-3) / 1e12);

  /* every output written and finite (poison was 0xFFFF = NaN) */
  {
    const int64_t chunk = 64LL << 20;
    uint16_t *buf = malloc((size_t)chunk * 2);
    int64_t bad = 0, nz = 0;
    for (int64_t s = 0; s < M * H; s += chunk) {
      int64_t n = M * H - s < chunk ? M * H - s : chunk;
      gpu_download(buf, dout + s, (size_t)n * 2);
      for (int64_t i = 0; i < n; i++) {
        bad += (buf[i] & 0x7F80) == 0x7F80;
        nz += (buf[i] & 0x7FFF) != 0;
      }
    }
    printf("output: %lld of %lld elements non-finite or unwritten, %lld non-zero\n", (long long)bad,
           (long long)(M * H), (long long)nz);
    if (bad) failures++;
    free(buf);
  }

  /* sampled rows */
  /* first, middle and last rows, then random rows that have a local expert
   * (with 8 of 256 experts most tokens have none) */
  const int64_t b32 = (1LL << 32) / H; /* the row holding element 2^32 */
  int64_t rows[NSAMPLE] = {0, 1, M / 2, M - 2, M - 1, b32 < M ? b32 : 2, b32 + 1 < M ? b32 + 1 : 3};
  {
    int32_t *all_ids = malloc(rp.ids_bytes);
    gpu_download(all_ids, dids, rp.ids_bytes);
    epm_test_rng_t rng = {SEED};
    int n = 7;
    for (int tries = 0; n < NSAMPLE && tries < 1000000; tries++) {
      int64_t r = (int64_t)(epm_test_rng_u64(&rng) % (uint64_t)M);
      int local = 0;
      for (int64_t j = 0; j < k; j++) local |= all_ids[r * k + j] >= off && all_ids[r * k + j] < off + el;
      if (local) rows[n++] = r;
    }
    free(all_ids);
  }
  epm_bf16_t *hx = malloc((size_t)(NSAMPLE * H) * 2);
  float *hl = malloc((size_t)(NSAMPLE * E) * 4);
  uint8_t *hq = malloc((size_t)(NSAMPLE * H / 2)), *hsf = malloc((size_t)(NSAMPLE * H / 16));
  uint8_t *gq = malloc((size_t)(NSAMPLE * H / 2)), *gsf = malloc((size_t)(NSAMPLE * H / 16));
  int32_t *rids = malloc((size_t)(NSAMPLE * k) * 4), *gids = malloc((size_t)(NSAMPLE * k) * 4);
  float *rw = malloc((size_t)(NSAMPLE * k) * 4), *gw = malloc((size_t)(NSAMPLE * k) * 4);
  uint16_t *gout = malloc((size_t)(NSAMPLE * H) * 2);
  for (int s = 0; s < NSAMPLE; s++) {
    const int64_t r = rows[s];
    for (int64_t h = 0; h < H; h++) hx[s * H + h] = epm_fill_act_bf16(SEED, r, h, H);
    for (int64_t e = 0; e < E; e++) hl[s * E + e] = epm_fill_logit(SEED + 1, r, e, E);
    gpu_download(gq + s * H / 2, dq + r * (H / 2), (size_t)(H / 2));
    gpu_download(gsf + s * H / 16, dsf + r * (H / 16), (size_t)(H / 16));
    gpu_download(gids + s * k, dids + r * k, (size_t)k * 4);
    gpu_download(gw + s * k, dw + r * k, (size_t)k * 4);
    gpu_download(gout + s * H, dout + r * H, (size_t)H * 2);
  }
  EPM_CHECK(epm_nvfp4_quantize_bf16(hx, NSAMPLE, H, g_in, EPM_SF_LINEAR, hq, hsf));
  int64_t qbad = 0;
  for (int64_t i = 0; i < NSAMPLE * H / 2; i++) qbad += hq[i] != gq[i];
  for (int64_t i = 0; i < NSAMPLE * H / 16; i++) qbad += hsf[i] != gsf[i];
  printf("quantize: %lld bytes of %d sampled rows differ from the codec\n", (long long)qbad, NSAMPLE);
  if (qbad) failures++;

  epm_routing_config_t cfg;
  EPM_CHECK(epm_routing_config_from_dims(&d, &cfg));
  EPM_CHECK(epm_route_f32(&cfg, hl, layer.router_bias, NSAMPLE, rids, rw, NULL));
  int64_t idbad = 0, wbad = 0, local_slots = 0;
  for (int64_t i = 0; i < NSAMPLE * k; i++) {
    idbad += rids[i] != gids[i];
    int32_t a, b;
    memcpy(&a, &rw[i], 4);
    memcpy(&b, &gw[i], 4);
    wbad += abs(a - b) > 1;
    local_slots += rids[i] >= off && rids[i] < off + el;
  }
  printf("routing: %lld ids and %lld weights (> 1 ulp) of %d sampled rows differ; %lld local slots\n",
         (long long)idbad, (long long)wbad, NSAMPLE, (long long)local_slots);
  if (idbad || wbad) failures++;

  /* the reference experts on the sampled rows only, from the reference's own
   * quantization and routing */
  float *ref_f = malloc((size_t)(NSAMPLE * H) * 4), *outf = malloc((size_t)(NSAMPLE * H) * 4),
        *refb = malloc((size_t)(NSAMPLE * H) * 4);
  epm_bf16_t *ref_b = malloc((size_t)(NSAMPLE * H) * 2);
  EPM_CHECK(epm_moe_ref_experts(&layer, hq, hsf, layer.input_scale, NSAMPLE, k, rids, rw, NULL, ref_f, ref_b, NULL));
  for (int64_t i = 0; i < NSAMPLE * H; i++) {
    outf[i] = epm_bf16_to_f32(gout[i]);
    refb[i] = epm_bf16_to_f32(ref_b[i]);
  }
  gpu_cmp_t c = gpu_compare("sampled output rows vs CPU reference (bf16)", outf, refb, NSAMPLE * H);
  double mr = c.ref_absmax > 0 ? c.max_abs / c.ref_absmax : c.max_abs;
  if (c.nonfinite || c.rel_l2 > 5e-3 || mr > 5e-2) failures++;

  GPU_CHECK(cudaGetLastError());
  if (failures) {
    fprintf(stderr, "test_gpu_seed: %d failures\n", failures);
    return 1;
  }
  printf("test_gpu_seed: OK (M=%lld, rel-L2 %.3e, max|diff|/max|ref| %.3e)\n", (long long)M, c.rel_l2, mr);
  return 0;
}
