/* SPDX-License-Identifier: Apache-2.0 */
/* bench_moe: per-stage GPU times of one expert step (quantize, routing,
 * permute, GEMM1+SwiGLU+requant, GEMM2, finalize) at DeepSeek-R1 dims with a
 * local slice of experts, and, measured in the same run on the same GPU, a
 * baseline: cuBLAS bf16 GEMMs (fp32 accumulate) of the same total shape
 * (rows x 2I x H, rows x H x I over all permuted rows, as one dense GEMM, a
 * lower bound for a bf16 grouped GEMM). Not a test.
 *
 * Usage: bench_moe [--tokens M] [--local-experts E_l] [--iters N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "epmoe/kernels.h"
#include "gpu_util.h"

static void usage(void) {
  printf("usage: bench_moe [--tokens M] [--local-experts E_l] [--iters N]\n"
         "  --tokens M          gathered tokens (default 327680, the EP32 seed size)\n"
         "  --local-experts E   experts of this rank, from expert 0 (default 8)\n"
         "  --iters N           timed repetitions, median reported (default 10)\n");
}

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int64_t M = 327680, el = 8;
  int iters = 10;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage();
      return 0;
    } else if (i + 1 < argc && !strcmp(argv[i], "--tokens")) {
      M = atoll(argv[++i]);
    } else if (i + 1 < argc && !strcmp(argv[i], "--local-experts")) {
      el = atoll(argv[++i]);
    } else if (i + 1 < argc && !strcmp(argv[i], "--iters")) {
      iters = atoi(argv[++i]);
    } else {
      fprintf(stderr, "bench_moe: unknown or incomplete option '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  if (M < 1 || el < 1 || iters < 1 || iters > 1000) {
    fprintf(stderr, "bench_moe: --tokens, --local-experts and --iters (<= 1000) must be >= 1\n");
    return 2;
  }
  gpu_require_device("bench_moe");
  epm_model_dims_t d;
  EPM_CHECK(epm_model_preset("deepseek-r1", &d));
  const int64_t H = d.hidden, I = d.intermediate, E = d.num_experts, k = d.top_k;
  epm_quantize_plan_t qp;
  epm_routing_plan_t rp;
  epm_moe_plan_t mp;
  EPM_CHECK(epm_quantize_plan(M, H, EPM_SF_LINEAR, &qp));
  EPM_CHECK(epm_routing_plan(&d, M, &rp));
  EPM_CHECK(epm_moe_plan(M, H, I, E, k, 0, el, &mp));

  epm_moe_weights_dev_t w;
  const int64_t wn = el * I * H;
  uint8_t *gw = gpu_alloc_poisoned((size_t)wn / 2 * 3, 0), *gs = gpu_alloc_poisoned((size_t)wn / 16 * 3, 0);
  gpu_fill_bytes(gw, wn / 2 * 3, 1, 0xFF, 0);
  gpu_fill_bytes(gs, wn / 16 * 3, 2, 0x0F, 0x30);
  w.gate_w = gw;
  w.up_w = gw + wn / 2;
  w.down_w = gw + wn;
  w.gate_sf = gs;
  w.up_sf = gs + wn / 16;
  w.down_sf = gs + wn / 8;
  float ones[1024];
  for (int i = 0; i < 1024; i++) ones[i] = 1e-3f;
  w.gate_up_scale_2 = gpu_upload(ones, (size_t)el * 4);
  w.down_scale_2 = gpu_upload(ones, (size_t)el * 4);
  w.input_scale = 8.0f / 2688.0f;
  w.down_input_scale = 16.0f / 2688.0f;

  uint16_t *dx = gpu_alloc_poisoned(qp.x_bytes, 0);
  gpu_fill_act_bf16(dx, M, H, 3);
  float *dl = gpu_alloc_poisoned(rp.logits_bytes, 0);
  gpu_fill_logits(dl, M, E, 4);
  const float g = 2688.0f / 8.0f;
  float *dg = gpu_upload(&g, 4);
  uint8_t *dq = gpu_alloc_poisoned(qp.packed_bytes, 0), *dsf = gpu_alloc_poisoned(qp.sf_bytes, 0);
  int32_t *dids = gpu_alloc_poisoned(rp.ids_bytes, 0);
  float *dw = gpu_alloc_poisoned(rp.weights_bytes, 0);
  void *wsb = gpu_alloc_poisoned(mp.workspace_bytes, 0);
  epm_moe_workspace_t ws;
  EPM_CHECK(epm_moe_workspace_carve(&mp, wsb, &ws));
  uint16_t *dout = gpu_alloc_poisoned(mp.out_bf16_bytes, 0);
  gpu_step_t step = {qp, rp, mp, dx, dg, dl, NULL, w, {dq, dsf, dids, dw, NULL, NULL}, ws, 0, dout};
  enum { NST = GPU_STEP_STAGES };
  float *t[NST], ms[NST];
  for (int s = 0; s < NST; s++) t[s] = calloc((size_t)iters, sizeof(float));
  cudaEvent_t ev[3];
  for (int s = 0; s < 3; s++) GPU_CHECK(cudaEventCreate(&ev[s]));
  for (int it = -1; it < iters; it++) {
    gpu_step_run(&step, ms);
    if (it >= 0)
      for (int s = 0; s < NST; s++) t[s][it] = ms[s];
  }
  int64_t rows = 0;
  gpu_download(&rows, ws.offsets + el, sizeof rows);

  /* baseline: cuBLAS bf16 GEMMs of the same total shape */
  cublasHandle_t hb;
  if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS) {
    fprintf(stderr, "bench_moe: cublasCreate failed\n");
    return 1;
  }
  const int64_t r = rows > 0 ? rows : 64;
  uint16_t *A = gpu_alloc_poisoned((size_t)(r * H) * 2, 0), *B1 = gpu_alloc_poisoned((size_t)(2 * I * H) * 2, 0),
           *C1 = gpu_alloc_poisoned((size_t)(r * 2 * I) * 2, 0), *B2 = gpu_alloc_poisoned((size_t)(H * I) * 2, 0),
           *C2 = gpu_alloc_poisoned((size_t)(r * H) * 2, 0);
  gpu_fill_act_bf16(A, r, H, 5);
  gpu_fill_act_bf16(B1, 2 * I, H, 6);
  gpu_fill_act_bf16(B2, H, I, 7);
  const float one = 1.0f, zero = 0.0f;
  float *tb[2] = {calloc((size_t)iters, 4), calloc((size_t)iters, 4)};
  for (int it = -1; it < iters; it++) {
    GPU_CHECK(cudaEventRecord(ev[0], 0));
    /* column-major: C1^T [2I, r] = B1^T-as-stored [2I, H] x A^T [H, r] */
    cublasStatus_t s1 = cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)(2 * I), (int)r, (int)H, &one, B1,
                                     CUDA_R_16BF, (int)H, A, CUDA_R_16BF, (int)H, &zero, C1, CUDA_R_16BF,
                                     (int)(2 * I), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    GPU_CHECK(cudaEventRecord(ev[1], 0));
    cublasStatus_t s2 = cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)H, (int)r, (int)I, &one, B2, CUDA_R_16BF,
                                     (int)I, C1, CUDA_R_16BF, (int)(2 * I), &zero, C2, CUDA_R_16BF, (int)H,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    GPU_CHECK(cudaEventRecord(ev[2], 0));
    GPU_CHECK(cudaDeviceSynchronize());
    if (s1 != CUBLAS_STATUS_SUCCESS || s2 != CUBLAS_STATUS_SUCCESS) {
      fprintf(stderr, "bench_moe: cublasGemmEx failed (%d, %d)\n", (int)s1, (int)s2);
      return 1;
    }
    if (it >= 0) {
      GPU_CHECK(cudaEventElapsedTime(&tb[0][it], ev[0], ev[1]));
      GPU_CHECK(cudaEventElapsedTime(&tb[1][it], ev[1], ev[2]));
    }
  }
  float med[NST], bmed[2];
  for (int s = 0; s < NST; s++) {
    qsort(t[s], (size_t)iters, 4, cmp_f);
    med[s] = t[s][iters / 2];
  }
  for (int s = 0; s < 2; s++) {
    qsort(tb[s], (size_t)iters, 4, cmp_f);
    bmed[s] = tb[s][iters / 2];
  }
  const double f1 = 2.0 * (double)r * (double)(2 * I) * (double)H, f2 = 2.0 * (double)r * (double)H * (double)I;
  printf("bench_moe: deepseek-r1 H=%lld I=%lld E=%lld k=%lld, M=%lld tokens, local experts %lld, permuted rows %lld, "
         "median of %d\n",
         (long long)H, (long long)I, (long long)E, (long long)k, (long long)M, (long long)el, (long long)rows, iters);
  float total = 0;
  for (int s = 0; s < NST; s++) {
    total += med[s];
    printf("  %-22s %9.3f ms", gpu_step_stage_names[s], med[s]);
    if (s == 3) printf("  %6.1f TFLOP/s  vs cuBLAS bf16 %8.3f ms (%6.1f TFLOP/s): ratio %.2fx", f1 / med[s] / 1e9,
                       bmed[0], f1 / bmed[0] / 1e9, med[s] / bmed[0]);
    if (s == 4) printf("  %6.1f TFLOP/s  vs cuBLAS bf16 %8.3f ms (%6.1f TFLOP/s): ratio %.2fx", f2 / med[s] / 1e9,
                       bmed[1], f2 / bmed[1] / 1e9, med[s] / bmed[1]);
    printf("\n");
  }
  printf("  %-22s %9.3f ms (GEMMs %.3f ms vs cuBLAS bf16 %.3f ms: ratio %.2fx)\n", "total", total, med[3] + med[4],
         bmed[0] + bmed[1], (med[3] + med[4]) / (bmed[0] + bmed[1]));
  cublasDestroy(hb);
  return 0;
}
