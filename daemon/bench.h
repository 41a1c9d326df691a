/* SPDX-License-Identifier: Apache-2.0 */
/* bench.h — private to epmoe-bench: one rank's MoE layer problem and the
 * result rows, shared by bench.c (flags, CPU rows, printing) and
 * bench_gpu_cuda.c / bench_gpu_nocuda.c (the GPU rows). */
#ifndef EPMOE_BENCH_H
#define EPMOE_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/layer.h"
#include "epmoe/model.h"

/* One rank's share: E_l = E / ep local experts, m tokens of its own, M = ep
 * x m gathered rows through its expert stage (allgather dispatch). */
typedef struct {
  epm_model_dims_t dims;
  int64_t ep, m, M, local_experts;
  int iters, warmup;
  uint64_t seed;
  epm_layer_t layer;       /* experts [0, E_l) of layer 0 */
  epm_bf16_t *x;           /* [M, H] host */
  float *logits;           /* [M, E] host */
  int64_t local_pairs;     /* (token, expert) pairs of the M rows on the local experts */
} bench_problem_t;

#define BENCH_MAX_ROWS 16
typedef struct {
  const char *name;   /* "moe_layer", ... */
  const char *device; /* "cpu" | "gpu" */
  double us;          /* median, microseconds */
  double rate;        /* TB/s or TFLOP/s (unit below), 0 = none */
  const char *unit;
  double ratio;       /* speed-up against the row named in `vs` (0 = none) */
  const char *vs;
  double pct_floor;   /* floor / time x 100, 0 = none */
} bench_row_t;

typedef struct {
  bench_row_t row[BENCH_MAX_ROWS];
  int n;
  char gpu_note[256];  /* why GPU rows are absent, or the card's name */
  int gpu_ran;
  double check_err;    /* GPU vs CPU reference on sampled rows (max|d|/max|ref|), -1 = not checked */
} bench_result_t;

/* Median of n doubles (sorts them). */
double bench_median(double *v, int n);
bench_row_t *bench_add(bench_result_t *r, const char *name, const char *device, double us);

/* The GPU rows: copy bandwidth and the weight-read floor, the bf16 grouped
 * baseline (per-expert cuBLAS GEMMs over every local expert's weights),
 * epmoe's routing, quantize and MoE layer on the cuda backend, timed with
 * CUDA events; sets gpu_note and gpu_ran. Returns 0, or 1 after a failure
 * (message on stderr). Without CUDA or a device: no rows, gpu_ran 0. */
int bench_gpu(bench_problem_t *p, bench_result_t *r);

#endif
