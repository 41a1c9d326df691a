/* SPDX-License-Identifier: Apache-2.0 */
/* bench_comm.c — time the step's collectives on the MPI or the NCCL backend.
 *
 *   mpirun -np P bench_comm [--nccl] [tokens_per_rank [hidden [top_k [iters]]]]
 *
 * --nccl: one GPU per rank, device buffers (contents left unset: only the
 * timing matters), each collective waited for with epm_comm_wait(). Rank 0
 * also prints nccl-tests-style sizes and bus bandwidths (busbw = algbw *
 * (P-1)/P for allgather and reduce-scatter), so rows can be set beside
 * all_gather_perf / reduce_scatter_perf at the same byte counts.
 *
 * Per iteration: the NVFP4 dispatch gather (H/2 packed bytes + H/16 scales +
 * k ids + k weights per token, one allgatherv_multi) and the combine
 * reduce-scatter of [M, H] partials in bf16 and in fp32. Prints the median
 * over iterations of the slowest rank. Registered as a tiny smoke test so it
 * keeps building and running.
 */
#include <stdlib.h>

#include "comm_check.h"
#include "epmoe/comm.h"

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_max(double *t, int n, MPI_Comm comm) {
  MPI_Allreduce(MPI_IN_PLACE, t, n, MPI_DOUBLE, MPI_MAX, comm);
  qsort(t, (size_t)n, sizeof *t, cmp_d);
  return t[n / 2];
}

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  const int nccl = argc > 1 && strcmp(argv[1], "--nccl") == 0;
  if (nccl) { /* drop the flag so positional arguments keep their places */
    argv[1] = argv[0];
    argv++;
    argc--;
  }
  epm_bootstrap_opts_t bo = {.gpu_mode = nccl ? EPM_GPU_REQUIRE : EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  const int64_t m = argc > 1 ? atoll(argv[1]) : 16, H = argc > 2 ? atoll(argv[2]) : 256;
  const int64_t k = argc > 3 ? atoll(argv[3]) : 8;
  const int iters = argc > 4 ? atoi(argv[4]) : 3;
  CHECK(m >= 0 && H > 0 && H % 16 == 0 && k > 0 && iters > 0 && iters <= 1000, "bad arguments");
  const int P = boot.ep_size;
  epm_comm_t *c;
  epm_comm_opts_t co = {.backend = nccl ? EPM_COMM_NCCL : EPM_COMM_MPI, .timeout_s = 120};
  CHECK_OK(epm_comm_create(&boot, &co, &c));
  int64_t *counts = calloc((size_t)P, sizeof *counts);
  CHECK_OK(epm_comm_exchange_sizes(c, m, counts));
  int64_t M = 0;
  for (int r = 0; r < P; r++) M += counts[r];
  const size_t row[4] = {(size_t)H / 2, (size_t)H / 16, (size_t)k * 4, (size_t)k * 4};
  epm_comm_gather_buf_t bufs[4];
  for (int b = 0; b < 4; b++) {
    bufs[b].elem_size = row[b];
    CHECK_OK(epm_comm_alloc(c, (size_t)m * row[b], (void **)&bufs[b].send));
    CHECK_OK(epm_comm_alloc(c, (size_t)M * row[b], &bufs[b].recv));
    if (m && !nccl) memset((void *)bufs[b].send, 1, (size_t)m * row[b]);
  }
  float *part, *out;
  CHECK_OK(epm_comm_alloc(c, (size_t)(M * H) * 4, (void **)&part));
  CHECK_OK(epm_comm_alloc(c, (size_t)(m * H) * 4, (void **)&out));
  if (!nccl)
    for (int64_t i = 0; i < M * H; i++) part[i] = 0.5f;
  double *tg = calloc((size_t)iters, sizeof(double)), *tb = calloc((size_t)iters, sizeof(double)),
         *tf = calloc((size_t)iters, sizeof(double));
  for (int it = -1; it < iters; it++) { /* -1: warm-up (NCCL connects lazily) */
    CHECK_OK(epm_comm_barrier(c));
    double t0 = MPI_Wtime();
    CHECK_OK(epm_comm_allgatherv_multi(c, bufs, 4, counts));
    CHECK_OK(epm_comm_wait(c, 120));
    double t1 = MPI_Wtime();
    CHECK_OK(epm_comm_reduce_scatterv(c, part, out, counts, H, EPM_DTYPE_BF16));
    CHECK_OK(epm_comm_wait(c, 120));
    double t2 = MPI_Wtime();
    CHECK_OK(epm_comm_reduce_scatterv(c, part, out, counts, H, EPM_DTYPE_F32));
    CHECK_OK(epm_comm_wait(c, 120));
    double t3 = MPI_Wtime();
    if (it < 0) continue;
    tg[it] = t1 - t0;
    tb[it] = t2 - t1;
    tf[it] = t3 - t2;
  }
  MPI_Comm w = MPI_COMM_WORLD;
  double g = median_max(tg, iters, w), b = median_max(tb, iters, w), f = median_max(tf, iters, w);
  if (boot.ep_rank == 0)
    printf("%s P=%d m=%lld H=%lld k=%lld M=%lld: allgatherv(4 arrays, %.1f KB/token) %.3f ms, "
           "reduce_scatterv bf16 %.3f ms, fp32 %.3f ms (median of %d, slowest rank)\n",
           epm_comm_backend_name(c), P, (long long)m, (long long)H, (long long)k, (long long)M,
           (double)(row[0] + row[1] + row[2] + row[3]) / 1024.0, g * 1e3, b * 1e3, f * 1e3, iters);
  if (boot.ep_rank == 0) {
    const double ag = (double)M * (double)(row[0] + row[1] + row[2] + row[3]);
    const double rs = (double)M * (double)H * 2.0, frac = P > 1 ? (double)(P - 1) / P : 1.0;
    printf("  nccl-tests terms: allgather size %.0f B busbw %.2f GB/s; reduce_scatter bf16 size %.0f B busbw %.2f GB/s\n",
           ag, ag / g * frac / 1e9, rs, rs / b * frac / 1e9);
  }
  for (int bb = 0; bb < 4; bb++) {
    epm_comm_free(c, (void *)bufs[bb].send);
    epm_comm_free(c, bufs[bb].recv);
  }
  epm_comm_free(c, part);
  epm_comm_free(c, out);
  free(counts);
  free(tg);
  free(tb);
  free(tf);
  epm_comm_destroy(c);
  epm_bootstrap_finalize(&boot);
  return 0;
}
