/* SPDX-License-Identifier: Apache-2.0 */
/* bench_gpu_cuda.c — epmoe-bench's GPU rows (CUDA builds).
 *
 *   copy          cudaMemcpyAsync device to device of max(weight bytes, 256 MiB):
 *                 bytes copied / time = the copy bandwidth B
 *   floor         the NVFP4 weight bytes of the local experts / B: the time a
 *                 MoE layer that reads every local expert's weights once
 *                 cannot beat (decode)
 *   bf16_grouped  the baseline: for every local expert, GEMM1 [n_e, H] x
 *                 [H, 2I] and GEMM2 [n_e, I] x [I, H] with cuBLAS in bf16
 *                 (fp32 accumulate), n_e = this rank's pairs split evenly
 *                 (at least 1 row each), every expert with its own weights,
 *                 so it reads every local expert's bf16 weights as a grouped
 *                 problem must (not one expert's, which reads 1/E_l of them)
 *   route, quantize, moe_layer  epmoe's cuda backend (the same ops the
 *                 engine calls), moe_layer over the M gathered rows
 * Timing: CUDA events on the backend's stream around each run; medians.
 * Rotating inputs: the runs cycle through 4 copies of the activations so a
 * run does not find its inputs in L2 from the previous one. The check: the
 * moe_layer partials of up to 64 sampled rows against the CPU backend. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "epmoe/backend.h"
#include "epmoe/plan.h"

#define ROT 4

typedef struct {
  cudaStream_t s;
  cudaEvent_t a, b;
  double *t;
  int n, w;
} timer_t_;

static int cu(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  fprintf(stderr, "epmoe-bench: %s: %s\n", what, cudaGetErrorString(e));
  return 1;
}

static int ep(epm_status_t st, const char *what) {
  if (st == EPM_OK) return 0;
  fprintf(stderr, "epmoe-bench: %s: %s\n", what, epm_last_error());
  return 1;
}

/* One timed run (i >= 0) or warm-up (i < 0) closes with this. */
static int lap(timer_t_ *tm, int i) {
  float ms = 0;
  if (cu(cudaEventRecord(tm->b, tm->s), "cudaEventRecord") || cu(cudaEventSynchronize(tm->b), "cudaEventSynchronize") ||
      cu(cudaEventElapsedTime(&ms, tm->a, tm->b), "cudaEventElapsedTime"))
    return 1;
  if (i >= 0) tm->t[i] = 1e3 * ms;
  return 0;
}

static size_t weight_bytes(const bench_problem_t *p) {
  epm_plan_config_t pc = {.dims = p->dims, .ep_size = p->ep, .rank = 0, .max_tokens_per_rank = p->m};
  epm_plan_t *pl = malloc(sizeof *pl);
  size_t b = 0;
  if (pl && epm_plan_compute(&pc, pl) == EPM_OK)
    b = pl->w13_q.bytes + pl->w13_sf.bytes + pl->w2_q.bytes + pl->w2_sf.bytes;
  free(pl);
  return b;
}

static int grouped_bf16(const bench_problem_t *p, timer_t_ *tm, int64_t pairs, double *us) {
  const int64_t H = p->dims.hidden, I = p->dims.intermediate, El = p->local_experts;
  const int64_t n_e = pairs / El > 0 ? pairs / El : 1;
  cublasHandle_t hb = NULL;
  void *A = NULL, *W1 = NULL, *W2 = NULL, *C1 = NULL, *C2 = NULL;
  int rc = 1;
  const size_t a_b = (size_t)(n_e * H) * 2, w1_b = (size_t)(2 * I * H) * 2, w2_b = (size_t)(H * I) * 2;
  if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS || cublasSetStream(hb, tm->s) != CUBLAS_STATUS_SUCCESS) goto out;
  if (cu(cudaMalloc(&A, a_b * (size_t)El * ROT), "cudaMalloc") || cu(cudaMalloc(&W1, w1_b * (size_t)El), "cudaMalloc") ||
      cu(cudaMalloc(&W2, w2_b * (size_t)El), "cudaMalloc") ||
      cu(cudaMalloc(&C1, (size_t)(n_e * 2 * I) * 2 * (size_t)El), "cudaMalloc") ||
      cu(cudaMalloc(&C2, (size_t)(n_e * H) * 2 * (size_t)El), "cudaMalloc"))
    goto out;
  /* Small finite bf16 values (0x3c00 = 0.0078125) everywhere. */
  if (cu(cudaMemset(A, 0x3c, a_b * (size_t)El * ROT), "memset") || cu(cudaMemset(W1, 0x3c, w1_b * (size_t)El), "memset") ||
      cu(cudaMemset(W2, 0x3c, w2_b * (size_t)El), "memset"))
    goto out;
  const float one = 1.0f, zero = 0.0f;
  for (int i = -tm->w; i < tm->n; i++) {
    const char *a = (const char *)A + a_b * (size_t)El * (size_t)((i + tm->w) % ROT);
    if (cu(cudaEventRecord(tm->a, tm->s), "cudaEventRecord")) goto out;
    for (int64_t e = 0; e < El; e++) {
      char *c1 = (char *)C1 + (size_t)(e * n_e * 2 * I) * 2, *c2 = (char *)C2 + (size_t)(e * n_e * H) * 2;
      cublasStatus_t s1 = cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)(2 * I), (int)n_e, (int)H, &one,
                                       (const char *)W1 + w1_b * (size_t)e, CUDA_R_16BF, (int)H, a + a_b * (size_t)e,
                                       CUDA_R_16BF, (int)H, &zero, c1, CUDA_R_16BF, (int)(2 * I), CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
      cublasStatus_t s2 = cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)H, (int)n_e, (int)I, &one,
                                       (const char *)W2 + w2_b * (size_t)e, CUDA_R_16BF, (int)I, c1, CUDA_R_16BF,
                                       (int)(2 * I), &zero, c2, CUDA_R_16BF, (int)H, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
      if (s1 != CUBLAS_STATUS_SUCCESS || s2 != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "epmoe-bench: cublasGemmEx failed (%d, %d)\n", (int)s1, (int)s2);
        goto out;
      }
    }
    if (lap(tm, i)) goto out;
  }
  *us = bench_median(tm->t, tm->n);
  rc = 0;
out:
  if (hb) cublasDestroy(hb);
  cudaFree(A);
  cudaFree(W1);
  cudaFree(W2);
  cudaFree(C1);
  cudaFree(C2);
  return rc;
}

int bench_gpu(bench_problem_t *p, bench_result_t *r) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
    snprintf(r->gpu_note, sizeof r->gpu_note, "skipped: no CUDA device visible (the GPU rows did not run)");
    return 0;
  }
  struct cudaDeviceProp prop;
  if (cu(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties")) return 1;
  snprintf(r->gpu_note, sizeof r->gpu_note, "%s (sm_%d%d)", prop.name, prop.major, prop.minor);
  const int64_t H = p->dims.hidden, E = p->dims.num_experts, k = p->dims.top_k, M = p->M, m = p->m;
  epm_backend_config_t bc = EPM_BACKEND_CONFIG_INIT;
  bc.kind = EPM_BACKEND_CUDA;
  epm_backend_t *be = NULL, *cpu = NULL;
  epm_backend_weights_t *w = NULL, *wc = NULL;
  timer_t_ tm = {.n = p->iters, .w = p->warmup};
  tm.t = malloc((size_t)p->iters * sizeof *tm.t);
  void *x = NULL, *lg = NULL, *ids = NULL, *wts = NULL, *q = NULL, *sf = NULL, *part = NULL, *cp_src = NULL,
       *cp_dst = NULL;
  int rc = 1;
  if (!tm.t || ep(epm_backend_create(&bc, &be), "cuda backend") ||
      ep(epm_backend_weights_load(be, &p->layer, m, M, &w), "cuda weights"))
    goto out;
  tm.s = (cudaStream_t)epm_backend_stream(be);
  if (cu(cudaEventCreate(&tm.a), "cudaEventCreate") || cu(cudaEventCreate(&tm.b), "cudaEventCreate")) goto out;
  const size_t xb = (size_t)(M * H) * 2, lb = (size_t)(M * E) * 4, ib = (size_t)(M * k) * 4;
  if (ep(epm_backend_alloc(be, xb * ROT, &x), "alloc") || ep(epm_backend_alloc(be, lb * ROT, &lg), "alloc") ||
      ep(epm_backend_alloc(be, ib, &ids), "alloc") || ep(epm_backend_alloc(be, ib, &wts), "alloc") ||
      ep(epm_backend_alloc(be, (size_t)(M * H / 2), &q), "alloc") ||
      ep(epm_backend_alloc(be, (size_t)(M * H / 16), &sf), "alloc") ||
      ep(epm_backend_alloc(be, (size_t)(M * H) * 4, &part), "alloc"))
    goto out;
  for (int c = 0; c < ROT; c++)
    if (ep(epm_backend_copy_h2d(be, (char *)x + xb * (size_t)c, p->x, xb), "h2d") ||
        ep(epm_backend_copy_h2d(be, (char *)lg + lb * (size_t)c, p->logits, lb), "h2d"))
      goto out;
  const float a1 = p->layer.input_scale;
  if (ep(epm_backend_route(be, w, lg, M, ids, wts), "route") ||
      ep(epm_backend_quantize_static(be, w, x, M, q, sf), "quantize"))
    goto out;

  /* copy bandwidth and the floor */
  const size_t wbytes = weight_bytes(p);
  const size_t cb = wbytes > ((size_t)256 << 20) ? wbytes : (size_t)256 << 20;
  if (cu(cudaMalloc(&cp_src, cb), "cudaMalloc") || cu(cudaMalloc(&cp_dst, cb), "cudaMalloc")) goto out;
  for (int i = -tm.w; i < tm.n; i++) {
    if (cu(cudaEventRecord(tm.a, tm.s), "cudaEventRecord") ||
        cu(cudaMemcpyAsync(cp_dst, cp_src, cb, cudaMemcpyDeviceToDevice, tm.s), "copy") || lap(&tm, i))
      goto out;
  }
  const double copy_us = bench_median(tm.t, tm.n), bw = (double)cb / (copy_us * 1e-6);
  bench_row_t *row = bench_add(r, "copy", "gpu", copy_us);
  row->rate = bw * 1e-12;
  row->unit = "TB/s";
  const double floor_us = (double)wbytes / bw * 1e6;
  row = bench_add(r, "floor", "gpu", floor_us);
  row->rate = (double)wbytes * 1e-9;
  row->unit = "GB_read";

  /* the baseline: pairs on the local experts under uniform routing */
  const int64_t pairs = (M * k * p->local_experts + E - 1) / E;
  double base_us = 0;
  if (grouped_bf16(p, &tm, pairs, &base_us)) goto out;
  const double flops = 2.0 * (double)pairs * (double)H * (double)p->dims.intermediate * 3.0;
  row = bench_add(r, "bf16_grouped", "gpu", base_us);
  row->rate = flops / (base_us * 1e-6) * 1e-12;
  row->unit = "TFLOP/s";
  row->pct_floor = 100.0 * floor_us / base_us;

  /* epmoe */
  const char *names[3] = {"route", "quantize", "moe_layer"};
  for (int s = 0; s < 3; s++) {
    for (int i = -tm.w; i < tm.n; i++) {
      const int c = (i + tm.w) % ROT;
      if (cu(cudaEventRecord(tm.a, tm.s), "cudaEventRecord")) goto out;
      epm_status_t st =
          s == 0   ? epm_backend_route(be, w, (const float *)((char *)lg + lb * (size_t)c), m, ids, wts)
          : s == 1 ? epm_backend_quantize_static(be, w, (const epm_bf16_t *)((char *)x + xb * (size_t)c), m, q, sf)
                   : epm_backend_experts(be, w, q, sf, a1, ids, wts, M, EPM_DTYPE_F32, part);
      if (ep(st, names[s]) || lap(&tm, i)) goto out;
    }
    row = bench_add(r, names[s], "gpu", bench_median(tm.t, tm.n));
    if (s == 2) {
      row->rate = flops / (row->us * 1e-6) * 1e-12;
      row->unit = "TFLOP/s";
      row->pct_floor = 100.0 * floor_us / row->us;
      row->ratio = base_us / row->us;
      row->vs = "bf16_grouped";
    }
  }

  /* The check: sampled rows' partials against the CPU backend. */
  {
    const int64_t n = M < 64 ? M : 64, stride = M / n;
    int32_t *hid = malloc((size_t)(M * k) * 4);
    float *hw = malloc((size_t)(M * k) * 4), *hp = malloc((size_t)(M * H) * 4), *sid_w = malloc((size_t)(n * k) * 4);
    int32_t *sid = malloc((size_t)(n * k) * 4);
    uint8_t *hq = malloc((size_t)(M * H / 2)), *hsf = malloc((size_t)(M * H / 16)), *sq = malloc((size_t)(n * H / 2)),
            *ssf = malloc((size_t)(n * H / 16));
    float *ref = malloc((size_t)(n * H) * 4);
    int ok = hid && hw && hp && sid_w && sid && hq && hsf && sq && ssf && ref;
    epm_backend_config_t cc = EPM_BACKEND_CONFIG_INIT;
    ok = ok && !ep(epm_backend_copy_d2h(be, hid, ids, (size_t)(M * k) * 4), "d2h") &&
         !ep(epm_backend_copy_d2h(be, hw, wts, (size_t)(M * k) * 4), "d2h") &&
         !ep(epm_backend_copy_d2h(be, hp, part, (size_t)(M * H) * 4), "d2h") &&
         !ep(epm_backend_copy_d2h(be, hq, q, (size_t)(M * H / 2)), "d2h") &&
         !ep(epm_backend_copy_d2h(be, hsf, sf, (size_t)(M * H / 16)), "d2h") &&
         !ep(epm_backend_create(&cc, &cpu), "cpu backend") &&
         !ep(epm_backend_weights_load(cpu, &p->layer, n, n, &wc), "cpu weights");
    double dmax = 0, rmax = 0;
    if (ok) {
      for (int64_t i = 0; i < n; i++) {
        const int64_t t = i * stride;
        memcpy(sid + i * k, hid + t * k, (size_t)k * 4);
        memcpy(sid_w + i * k, hw + t * k, (size_t)k * 4);
        memcpy(sq + i * H / 2, hq + t * H / 2, (size_t)H / 2);
        memcpy(ssf + i * H / 16, hsf + t * H / 16, (size_t)H / 16);
      }
      ok = !ep(epm_backend_experts(cpu, wc, sq, ssf, a1, sid, sid_w, n, EPM_DTYPE_F32, ref), "cpu experts");
    }
    if (ok) {
      for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < H; j++) {
          const double g = hp[i * stride * H + j], c = ref[i * H + j];
          dmax = fmax(dmax, fabs(g - c));
          rmax = fmax(rmax, fabs(c));
        }
      r->check_err = rmax > 0 ? dmax / rmax : dmax;
    }
    free(hid);
    free(hw);
    free(hp);
    free(sid_w);
    free(sid);
    free(hq);
    free(hsf);
    free(sq);
    free(ssf);
    free(ref);
    if (!ok) goto out;
    if (r->check_err > 1.0 / 64) {
      fprintf(stderr, "epmoe-bench: gpu moe_layer differs from the cpu reference: max_err %.3g > 2^-6\n",
              r->check_err);
      goto out;
    }
  }
  r->gpu_ran = 1;
  rc = 0;
out:
  if (tm.a) cudaEventDestroy(tm.a);
  if (tm.b) cudaEventDestroy(tm.b);
  cudaFree(cp_src);
  cudaFree(cp_dst);
  void *bufs[] = {x, lg, ids, wts, q, sf, part};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) epm_backend_free(be, bufs[i]);
  epm_backend_weights_free(be, w);
  epm_backend_weights_free(cpu, wc);
  epm_backend_destroy(be);
  epm_backend_destroy(cpu);
  free(tm.t);
  return rc;
}
