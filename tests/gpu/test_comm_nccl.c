/* SPDX-License-Identifier: Apache-2.0 */
/* test_comm_nccl.c — NCCL backend against the MPI backend on the same inputs.
 *
 * Run under mpirun with one GPU per rank (NP 2 in CI). Without a GPU on any
 * rank every rank exits 77 (skip), decided together so none is left waiting.
 * Allgather-v must match byte for byte; reduce-scatter-v may differ from MPI's
 * rank-order sum only by NCCL's reduction order (bounded below); the max
 * all-reduce must match exactly. Counts: unequal, zeros, all zero, one rank
 * holding everything, equal (the ncclAllGather / ncclReduceScatter path).
 * All-to-all-v (grouped ncclSend/ncclRecv) must match MPI byte for byte.
 */
#include <cuda_runtime_api.h>
#include <math.h>

#include "../mpi/comm_check.h"
#include "epmoe/comm.h"
#include "epmoe/cuda_status.h"

#define CUDA_OK(expr) CHECK_OK(epm_cuda_status((expr), "%s", #expr))

static int P, me;
static epm_comm_t *cm, *cn; /* MPI (host) and NCCL (device) */

static int64_t pat_count(int pat, int r) {
  switch (pat) {
    case 0: return (r * 7 + 3) % 11;       /* unequal */
    case 1: return r % 2 ? 0 : r + 5;      /* zeros on odd ranks */
    case 2: return 0;                      /* all zero */
    case 3: return r == P - 1 ? 37 : 0;    /* last rank holds all */
    case 4: return r == 0 ? 29 : 0;        /* first rank holds all */
    default: return 6;                     /* equal */
  }
}
enum { NPAT = 6 };

static void *dev_copy(const void *h, size_t n) {
  void *d = NULL;
  if (!n) return NULL;
  CHECK_OK(epm_comm_alloc(cn, n, &d));
  CUDA_OK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
  return d;
}

static void gather_case(int pat, const size_t *esz, int nbufs) {
  int64_t counts[64] = {0}, total = 0;
  for (int r = 0; r < P; r++) total += counts[r] = pat_count(pat, r);
  epm_comm_gather_buf_t hb[4], db[4];
  for (int b = 0; b < nbufs; b++) {
    size_t sn = (size_t)counts[me] * esz[b], rn = (size_t)total * esz[b];
    uint8_t *s = sn ? malloc(sn) : NULL;
    for (size_t i = 0; i < sn; i++) s[i] = cc_byte(me, b, (int64_t)i);
    hb[b] = (epm_comm_gather_buf_t){.send = s, .recv = rn ? malloc(rn) : NULL, .elem_size = esz[b]};
    void *dr = NULL;
    CHECK_OK(epm_comm_alloc(cn, rn, &dr));
    if (rn) CUDA_OK(cudaMemset(dr, 0xA5, rn)); /* poison */
    db[b] = (epm_comm_gather_buf_t){.send = dev_copy(s, sn), .recv = dr, .elem_size = esz[b]};
  }
  CUDA_OK(cudaDeviceSynchronize()); /* inputs and poison are in place before NCCL runs */
  CHECK_OK(epm_comm_allgatherv_multi(cm, hb, nbufs, counts));
  CHECK_OK(epm_comm_allgatherv_multi(cn, db, nbufs, counts));
  CHECK_OK(epm_comm_wait(cn, 60));
  for (int b = 0; b < nbufs; b++) {
    size_t rn = (size_t)total * esz[b];
    uint8_t *got = rn ? malloc(rn) : NULL;
    if (rn) CUDA_OK(cudaMemcpy(got, db[b].recv, rn, cudaMemcpyDeviceToHost));
    const uint8_t *want = hb[b].recv;
    for (size_t i = 0; i < rn; i++)
      CHECK(got[i] == want[i], "allgatherv pattern %d buf %d elem %zu: byte %zu is %u, MPI has %u", pat, b,
            esz[b], i, got[i], want[i]);
    free(got);
    free((void *)hb[b].send);
    free(hb[b].recv);
    epm_comm_free(cn, (void *)db[b].send);
    epm_comm_free(cn, db[b].recv);
  }
}

static void reduce_case(int pat, int64_t row, epm_dtype_t dt) {
  int64_t counts[64] = {0}, total = 0, my_off = 0;
  for (int r = 0; r < P; r++) {
    if (r == me) my_off = total;
    total += counts[r] = pat_count(pat, r);
  }
  const size_t esz = dt == EPM_DTYPE_F32 ? 4 : 2;
  const int64_t ne = total * row, mine = counts[me] * row;
  char *hs = ne ? malloc((size_t)ne * esz) : NULL;
  for (int64_t i = 0; i < ne; i++) {
    float v = cc_f32(me, 7, i);
    if (dt == EPM_DTYPE_F32) ((float *)hs)[i] = v;
    else ((uint16_t *)hs)[i] = epm_bf16_from_f32(v);
  }
  char *hm = mine ? malloc((size_t)mine * esz) : NULL, *hn = mine ? malloc((size_t)mine * esz) : NULL;
  void *ds = dev_copy(hs, (size_t)ne * esz), *dr = NULL;
  CHECK_OK(epm_comm_alloc(cn, (size_t)mine * esz, &dr));
  if (mine) CUDA_OK(cudaMemset(dr, 0xFF, (size_t)mine * esz)); /* NaN poison */
  CUDA_OK(cudaDeviceSynchronize());
  CHECK_OK(epm_comm_reduce_scatterv(cm, hs, hm, counts, row, dt));
  CHECK_OK(epm_comm_reduce_scatterv(cn, ds, dr, counts, row, dt));
  CHECK_OK(epm_comm_wait(cn, 60));
  if (mine) CUDA_OK(cudaMemcpy(hn, dr, (size_t)mine * esz, cudaMemcpyDeviceToHost));
  /* Any summation order of P terms is within (P-1) u sum|x| of the exact sum
   * (u = 2^-24 fp32; NCCL's bf16 path may round every step, u = 2^-8). */
  const double u = dt == EPM_DTYPE_F32 ? 0x1p-24 : 0x1p-8;
  double worst = 0;
  for (int64_t j = 0; j < mine; j++) {
    int64_t g = my_off * row + j;
    double sabs = 0;
    for (int r = 0; r < P; r++) {
      float x = cc_f32(r, 7, g);
      sabs += fabs(dt == EPM_DTYPE_F32 ? x : epm_bf16_to_f32(epm_bf16_from_f32(x)));
    }
    double a = dt == EPM_DTYPE_F32 ? ((float *)hm)[j] : epm_bf16_to_f32(((uint16_t *)hm)[j]);
    double b = dt == EPM_DTYPE_F32 ? ((float *)hn)[j] : epm_bf16_to_f32(((uint16_t *)hn)[j]);
    double tol = 2.0 * P * u * sabs + 1e-30;
    CHECK(isfinite(b) && fabs(a - b) <= tol, "reduce_scatterv %s pattern %d row %lld element %lld: nccl %.9g mpi %.9g tol %.3g",
          epm_dtype_name(dt), pat, (long long)row, (long long)j, b, a, tol);
    if (sabs > 0 && fabs(a - b) / sabs > worst) worst = fabs(a - b) / sabs;
  }
  if (me == 0 && pat == 0)
    printf("reduce_scatterv %s row %lld: max |nccl-mpi|/sum|x| = %.3g\n", epm_dtype_name(dt),
           (long long)row, worst);
  free(hs);
  free(hm);
  free(hn);
  epm_comm_free(cn, ds);
  epm_comm_free(cn, dr);
}

/* All-to-all-v: rank s sends count(s, d) rows to d; NCCL must deliver the
 * bytes MPI delivers (both checked against the source pattern). */
static int64_t a2a_count(int pat, int s, int d) {
  switch (pat) {
    case 0: return (s * 5 + d * 3 + 1) % 7;      /* unequal, some zero */
    case 1: return d == P - 1 ? 9 + s : 0;       /* everything to the last rank */
    case 2: return 0;                            /* nothing at all */
    case 3: return s == d ? 4 : 0;               /* local block only */
    default: return 3;                           /* equal */
  }
}

static void alltoall_case(int pat, const size_t *esz, int nbufs) {
  int64_t counts[64 * 64], stot = 0, rtot = 0;
  for (int s = 0; s < P; s++)
    for (int d = 0; d < P; d++) counts[s * P + d] = a2a_count(pat, s, d);
  for (int r = 0; r < P; r++) stot += counts[me * P + r], rtot += counts[r * P + me];
  epm_comm_gather_buf_t hb[4], db[4];
  for (int b = 0; b < nbufs; b++) {
    size_t sn = (size_t)stot * esz[b], rn = (size_t)rtot * esz[b], pos = 0;
    uint8_t *snd = sn ? malloc(sn) : NULL;
    for (int d = 0; d < P; d++)
      for (int64_t i = 0; i < counts[me * P + d] * (int64_t)esz[b]; i++) snd[pos++] = cc_byte(me, 30 + b, d * 100000 + i);
    hb[b] = (epm_comm_gather_buf_t){.send = snd, .recv = rn ? malloc(rn) : NULL, .elem_size = esz[b]};
    void *dr = NULL;
    CHECK_OK(epm_comm_alloc(cn, rn, &dr));
    if (rn) CUDA_OK(cudaMemset(dr, 0xA5, rn));
    db[b] = (epm_comm_gather_buf_t){.send = dev_copy(snd, sn), .recv = dr, .elem_size = esz[b]};
  }
  CUDA_OK(cudaDeviceSynchronize());
  CHECK_OK(epm_comm_alltoallv_multi(cm, hb, nbufs, counts));
  CHECK_OK(epm_comm_alltoallv_multi(cn, db, nbufs, counts));
  CHECK_OK(epm_comm_wait(cn, 60));
  for (int b = 0; b < nbufs; b++) {
    size_t rn = (size_t)rtot * esz[b], pos = 0;
    uint8_t *got = rn ? malloc(rn) : NULL;
    if (rn) CUDA_OK(cudaMemcpy(got, db[b].recv, rn, cudaMemcpyDeviceToHost));
    const uint8_t *want = hb[b].recv;
    for (int s = 0; s < P; s++)
      for (int64_t i = 0; i < counts[s * P + me] * (int64_t)esz[b]; i++, pos++)
        CHECK(got[pos] == want[pos] && want[pos] == cc_byte(s, 30 + b, me * 100000 + i),
              "alltoallv pattern %d buf %d: byte %zu is %u (nccl) / %u (mpi), want %u", pat, b, pos, got[pos],
              want[pos], cc_byte(s, 30 + b, me * 100000 + i));
    free(got);
    free((void *)hb[b].send);
    free(hb[b].recv);
    epm_comm_free(cn, (void *)db[b].send);
    epm_comm_free(cn, db[b].recv);
  }
}

static void scalars_case(void) {
  int64_t a[64], b[64];
  CHECK_OK(epm_comm_exchange_sizes(cn, 1000 + me, a));
  CHECK_OK(epm_comm_exchange_sizes(cm, 1000 + me, b));
  for (int r = 0; r < P; r++) CHECK(a[r] == 1000 + r && b[r] == a[r], "sizes[%d]", r);
  float h[5], want[5];
  for (int i = 0; i < 5; i++) {
    h[i] = cc_f32(me, 11, i);
    want[i] = -INFINITY;
    for (int r = 0; r < P; r++) want[i] = fmaxf(want[i], cc_f32(r, 11, i));
  }
  float *d = dev_copy(h, sizeof h);
  CUDA_OK(cudaDeviceSynchronize());
  CHECK_OK(epm_comm_allreduce_max_f32(cn, d, 5));
  CHECK_OK(epm_comm_wait(cn, 60));
  CUDA_OK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 5; i++) CHECK(h[i] == want[i], "max[%d] %g want %g", i, h[i], want[i]);
  epm_comm_free(cn, d);
  CHECK_OK(epm_comm_barrier(cn));
  CHECK_OK(epm_comm_check_async(cn));
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  cc_skip_without_gpu();
  CHECK(P <= 64, "up to 64 ranks");
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_REQUIRE};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  cudaStream_t stream;
  /* A blocking stream: it also orders against the legacy default stream used
   * by the plain cudaMemcpy/cudaMemset calls of this test. */
  CUDA_OK(cudaStreamCreate(&stream));
  epm_comm_opts_t om = {.backend = EPM_COMM_MPI}, on = {.backend = EPM_COMM_NCCL, .stream = stream, .timeout_s = 120};
  CHECK_OK(epm_comm_create(&boot, &om, &cm));
  CHECK_OK(epm_comm_create(&boot, &on, &cn));
  CHECK(epm_comm_mem_kind(cn) == EPM_MEM_DEVICE && strcmp(epm_comm_backend_name(cn), "nccl") == 0, "nccl kind");
  CHECK(epm_comm_rank(cn) == me && epm_comm_size(cn) == P, "rank/size");

  scalars_case();
  const size_t esz[] = {1, 7, 16};
  const size_t multi[] = {8, 1, 32, 16};
  for (int p = 0; p < NPAT; p++) {
    for (int e = 0; e < 3; e++) gather_case(p, &esz[e], 1);
    gather_case(p, multi, 4);
    const int64_t rows[] = {1, 8, 129};
    for (int k = 0; k < 3; k++) {
      reduce_case(p, rows[k], EPM_DTYPE_F32);
      reduce_case(p, rows[k], EPM_DTYPE_BF16);
    }
  }
  for (int p = 0; p < 5; p++) {
    for (int e = 0; e < 3; e++) alltoall_case(p, &esz[e], 1);
    alltoall_case(p, multi, 4);
  }
  epm_comm_destroy(cn);
  epm_comm_destroy(cm);
  CUDA_OK(cudaStreamDestroy(stream));
  if (me == 0) printf("comm nccl vs mpi: P=%d ok\n", P);
  epm_bootstrap_finalize(&boot);
  MPI_Finalize();
  return 0;
}
