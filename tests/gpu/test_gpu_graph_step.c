/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_graph_step.c — the fixed-capacity step as one CUDA graph on the
 * cuda backend with the NCCL comm (label gpu; every rank exits 77 without a
 * GPU). Oracle: the variable-size step of a second cuda group over the same
 * weights and tokens (and through it test_engine_mpi's EP = 1 reference).
 *   - y of the graph step equals y of the variable-size step bit for bit at
 *     P <= 2 (fp32 partials: a sum of two partials does not depend on the
 *     order NCCL adds them in), within 2^-6 of max|y| otherwise
 *   - replays: the same m three times (one capture, two replays) give the
 *     same bits; a second m captures a second graph and is also right; m = 0
 *   - device-memory io (EPM_MEM_DEVICE) gives the same bits as host io
 *   - a rank with a bad count fails the step on every rank, the next works
 * Token counts per rank: m_r = (2r + 3) % 6, then (3r + 1) % 5. */
#include <cuda_runtime_api.h>
#include <math.h>

#include "../mpi/comm_check.h"
#include "epmoe/engine.h"
#include "epmoe/group.h"
#include "epmoe/tokens.h"

static int P, me;
static epm_model_dims_t dims;

typedef struct {
  int64_t m, M, off;
  epm_bf16_t *x, *y;
  float *logits;
} tok_t;

static void make(tok_t *t, int pattern, uint64_t seed) {
  const int64_t H = dims.hidden, E = dims.num_experts;
  t->M = t->off = t->m = 0;
  for (int r = 0; r < P; r++) {
    const int64_t c = pattern ? (3 * r + 1) % 5 : (2 * r + 3) % 6;
    if (r == me) {
      t->off = t->M;
      t->m = c;
    }
    t->M += c;
  }
  epm_bf16_t *xa = malloc((size_t)(t->M * H + 1) * sizeof *xa);
  float *la = malloc((size_t)(t->M * E + 1) * sizeof *la);
  t->x = malloc((size_t)(t->m * H + 1) * sizeof *t->x);
  t->logits = malloc((size_t)(t->m * E + 1) * sizeof *t->logits);
  t->y = calloc((size_t)(t->m * H + 1), sizeof *t->y);
  CHECK(xa && la && t->x && t->logits && t->y, "oom");
  CHECK_OK(epm_tokens_generate(&dims, seed, 0, t->M, xa, la));
  memcpy(t->x, xa + t->off * H, (size_t)(t->m * H) * sizeof *t->x);
  memcpy(t->logits, la + t->off * E, (size_t)(t->m * E) * sizeof *t->logits);
  free(xa);
  free(la);
}

static void unmake(tok_t *t) {
  free(t->x);
  free(t->logits);
  free(t->y);
}

static epm_status_t step(epm_group_t *g, const tok_t *t, epm_bf16_t *y) {
  epm_group_io_t io = {.mem = EPM_MEM_HOST, .x = t->x, .logits = t->logits, .y = y, .m = t->m};
  return epm_group_step(g, 0, &io);
}

static void compare(const tok_t *t, const epm_bf16_t *y, const epm_bf16_t *ref, const char *what) {
  const int64_t n = t->m * dims.hidden;
  double dmax = 0, rmax = 0;
  int64_t diff = 0;
  for (int64_t i = 0; i < n; i++) {
    dmax = fmax(dmax, fabs((double)epm_bf16_to_f32(y[i]) - epm_bf16_to_f32(ref[i])));
    rmax = fmax(rmax, fabs(epm_bf16_to_f32(ref[i])));
    diff += y[i] != ref[i];
  }
  if (P <= 2)
    CHECK(diff == 0, "%s: %lld of %lld elements differ from the variable-size step", what, (long long)diff,
          (long long)n);
  else
    CHECK(dmax <= rmax / 64, "%s: max|y-ref| %g > max|ref|/64 (%g)", what, dmax, rmax / 64);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  cc_skip_without_gpu();
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_REQUIRE};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  CHECK_OK(epm_model_preset("tiny", &dims));
  CHECK(dims.num_experts % P == 0, "P must divide %lld", (long long)dims.num_experts);

  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = "tiny";
  gc.seed = 9;
  gc.max_tokens_per_rank = 8;
  epm_group_t *var = NULL, *fix = NULL;
  CHECK_OK(epm_group_create(&gc, &boot, &var));
  gc.fixed_capacity = 1;
  CHECK_OK(epm_group_create(&gc, &boot, &fix));
  CHECK(strcmp(epm_backend_name(epm_group_backend(fix)), "cuda") == 0, "backend %s",
        epm_backend_name(epm_group_backend(fix)));

  for (int pat = 0; pat < 2; pat++) {
    tok_t t;
    make(&t, pat, 100 + (uint64_t)pat);
    epm_bf16_t *ref = calloc((size_t)(t.m * dims.hidden + 1), sizeof *ref);
    CHECK(ref != NULL, "oom");
    CHECK_OK(step(var, &t, ref));
    for (int rep = 0; rep < 3; rep++) { /* capture, then replays */
      memset(t.y, 0x5A, (size_t)(t.m * dims.hidden) * sizeof *t.y);
      CHECK_OK(step(fix, &t, t.y));
      compare(&t, t.y, ref, rep ? "graph replay" : "graph capture");
    }
    /* Device io: the same graph, inputs copied from device memory. */
    const size_t xb = (size_t)(t.m * dims.hidden) * sizeof(epm_bf16_t), lb = (size_t)(t.m * dims.num_experts) * 4;
    void *dx = NULL, *dl = NULL, *dy = NULL;
    CHECK(cudaMalloc(&dx, xb + 1) == cudaSuccess && cudaMalloc(&dl, lb + 1) == cudaSuccess &&
              cudaMalloc(&dy, xb + 1) == cudaSuccess, "cudaMalloc");
    CHECK(cudaMemcpy(dx, t.x, xb, cudaMemcpyHostToDevice) == cudaSuccess, "copy x");
    CHECK(cudaMemcpy(dl, t.logits, lb, cudaMemcpyHostToDevice) == cudaSuccess, "copy logits");
    epm_group_io_t io = {.mem = EPM_MEM_DEVICE, .x = dx, .logits = dl, .y = dy, .m = t.m};
    CHECK_OK(epm_group_step(fix, 0, &io));
    CHECK(cudaMemcpy(t.y, dy, xb, cudaMemcpyDeviceToHost) == cudaSuccess, "copy y");
    compare(&t, t.y, ref, "graph, device io");
    cudaFree(dx);
    cudaFree(dl);
    cudaFree(dy);
    free(ref);
    unmake(&t);
  }

  /* Failure agreement inside the graph path: the last rank asks for 9 > 8. */
  {
    tok_t t;
    make(&t, 0, 7);
    epm_bf16_t big[1];
    epm_group_io_t io = {.mem = EPM_MEM_HOST, .x = t.x, .logits = t.logits, .y = t.y, .m = t.m};
    if (me == P - 1) {
      io.m = 9;
      io.y = big;
    }
    epm_status_t s = epm_group_step(fix, 0, &io);
    CHECK(s != EPM_OK, "a step with a bad count succeeded on rank %d", me);
    CHECK_OK(step(fix, &t, t.y));
    unmake(&t);
  }
  epm_group_destroy(fix);
  epm_group_destroy(var);
  if (me == 0) printf("test_gpu_graph_step: P = %d passed\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
