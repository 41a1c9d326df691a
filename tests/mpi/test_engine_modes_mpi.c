/* SPDX-License-Identifier: Apache-2.0 */
/* test_engine_modes_mpi.c — engine variants that must not change a bit:
 * the expert stage in chunks under a workspace budget, in both dispatch
 * modes, against the same engine without a budget (any P dividing 16).
 *
 * Oracle: the unbudgeted allgather engine's output for the same tokens
 * (test_engine_mpi checks that one against the EP = 1 reference). Token
 * counts per rank are unequal with zeros: m_r = (3r + 4) % 9, and the same
 * step runs twice (the second must repeat the bits).
 *   - budgets chosen from the plan so one call takes exactly n rows, for
 *     n = every row (1 chunk), half of them (2 chunks), 3 and 1 (many):
 *     epm_engine_chunk_rows is n, the stats count ceil(rows / n) expert
 *     calls (rows = M in allgather mode, the rows received in alltoall
 *     mode), and y is bit-identical; f32 and bf16 partials
 *   - a budget below one row's workspace fails create, naming the numbers
 *   - fixed capacity (packed records, one equal-size allgather, no sizes
 *     exchange): bit-identical to the variable-size step, f32 and bf16
 *     partials, also with chunks of 1 row; expert rows = P x (capacity + 1),
 *     the step's M = the sum of the counts; capacities above every count
 *     (pad rows) and equal to the largest; a rank with a bad count makes
 *     every rank fail the same step (with its own message on that rank,
 *     "rank R failed" on the others) and the next step works; configs it
 *     cannot serve (alltoall, dynamic scale) fail create
 */
#include <math.h>

#include "comm_check.h"
#include "epmoe/backend.h"
#include "epmoe/engine.h"
#include "epmoe/group.h"
#include "epmoe/plan.h"
#include "epmoe/tokens.h"

static int P, me;
static epm_model_dims_t dims;

typedef struct {
  int64_t m, M, off, max_m;
  epm_bf16_t *x, *y_ref, *y;
  float *logits;
} tok_t;

static void make_tokens(tok_t *t, uint64_t seed) {
  const int64_t H = dims.hidden, E = dims.num_experts;
  t->M = t->off = t->m = 0;
  t->max_m = 1;
  for (int r = 0; r < P; r++) {
    const int64_t c = (3 * r + 4) % 9;
    if (r == me) {
      t->off = t->M;
      t->m = c;
    }
    t->M += c;
    if (c > t->max_m) t->max_m = c;
  }
  epm_bf16_t *x_all = malloc((size_t)(t->M * H + 1) * sizeof *x_all);
  float *l_all = malloc((size_t)(t->M * E + 1) * sizeof *l_all);
  t->x = malloc((size_t)(t->m * H + 1) * sizeof *t->x);
  t->logits = malloc((size_t)(t->m * E + 1) * sizeof *t->logits);
  t->y_ref = malloc((size_t)(t->m * H + 1) * sizeof *t->y_ref);
  t->y = malloc((size_t)(t->m * H + 1) * sizeof *t->y);
  CHECK(x_all && l_all && t->x && t->logits && t->y_ref && t->y, "oom");
  CHECK_OK(epm_tokens_generate(&dims, seed, 0, t->M, x_all, l_all));
  memcpy(t->x, x_all + t->off * H, (size_t)(t->m * H) * sizeof *t->x);
  memcpy(t->logits, l_all + t->off * E, (size_t)(t->m * E) * sizeof *t->logits);
  free(x_all);
  free(l_all);
}

static void free_tokens(tok_t *t) {
  free(t->x);
  free(t->logits);
  free(t->y_ref);
  free(t->y);
}

/* Bytes of the expert workspace for one call over n rows on this rank. */
static size_t ws_bytes(const epm_engine_config_t *cfg, int64_t n) {
  epm_plan_t *p = malloc(sizeof *p);
  CHECK(p != NULL, "oom");
  epm_plan_config_t pc = {.dims = dims, .ep_size = P, .rank = me, .max_tokens_per_rank = cfg->max_tokens_per_rank,
                          .recv_capacity = cfg->recv_capacity};
  CHECK_OK(epm_plan_compute(&pc, p));
  size_t b = 0;
  CHECK_OK(epm_plan_expert_ws_bytes(p, n, &b));
  free(p);
  return b;
}

/* Two steps of `cfg` into t->y; returns the stats of the last. */
static void run(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer, const epm_engine_config_t *cfg,
                tok_t *t, epm_engine_stats_t *st) {
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(cfg, layer, comm, be, &eng));
  for (int rep = 0; rep < 2; rep++) {
    memset(t->y, 0xA5, (size_t)(t->m * dims.hidden) * sizeof *t->y);
    CHECK_OK(epm_engine_step(eng, t->x, t->logits, t->m, t->y));
  }
  epm_engine_stats(eng, st);
  epm_engine_destroy(eng);
}

static int64_t same_bits(const tok_t *t) {
  int64_t diff = 0;
  for (int64_t i = 0; i < t->m * dims.hidden; i++) diff += t->y[i] != t->y_ref[i];
  return diff;
}

static void chunked(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer, epm_dispatch_mode_t mode,
                    epm_dtype_t partial) {
  tok_t t;
  make_tokens(&t, 41);
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  cfg.partial_dtype = partial;
  cfg.dispatch = EPM_DISPATCH_ALLGATHER;
  epm_engine_stats_t st;
  /* The reference: allgather, no budget (one expert call). */
  run(comm, be, layer, &cfg, &t, &st);
  CHECK(st.last_expert_chunks == 1, "unbudgeted step took %lld expert calls", (long long)st.last_expert_chunks);
  memcpy(t.y_ref, t.y, (size_t)(t.m * dims.hidden) * sizeof *t.y);

  cfg.dispatch = mode;
  const int64_t half = (t.M + 1) / 2;
  const int64_t ns[] = {t.M, half > 0 ? half : 1, 3, 1};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
    const int64_t n = ns[i];
    cfg.workspace_bytes = ws_bytes(&cfg, n);
    epm_engine_t *eng = NULL;
    CHECK_OK(epm_engine_create(&cfg, layer, comm, be, &eng));
    CHECK(epm_engine_chunk_rows(eng) == n, "budget %zu bytes: %lld rows per call, expected %lld",
          cfg.workspace_bytes, (long long)epm_engine_chunk_rows(eng), (long long)n);
    epm_engine_destroy(eng);
    run(comm, be, layer, &cfg, &t, &st);
    const int64_t rows = st.last_expert_rows;
    CHECK(mode != EPM_DISPATCH_ALLGATHER || rows == t.M, "allgather expert rows %lld, M %lld", (long long)rows,
          (long long)t.M);
    const int64_t want = rows == 0 ? 1 : (rows + n - 1) / n;
    CHECK(st.last_expert_chunks == want, "%s, %lld rows per call: %lld expert calls over %lld rows, expected %lld",
          epm_dispatch_mode_name(mode), (long long)n, (long long)st.last_expert_chunks, (long long)rows,
          (long long)want);
    const int64_t d = same_bits(&t);
    CHECK(d == 0, "%s %s partials, chunks of %lld rows: %lld elements differ from the unchunked step",
          epm_dispatch_mode_name(mode), epm_dtype_name(partial), (long long)n, (long long)d);
  }

  /* Below one row: create fails with the numbers, on every rank alike. */
  cfg.workspace_bytes = ws_bytes(&cfg, 1) - 1;
  epm_engine_t *eng = NULL;
  epm_status_t s = epm_engine_create(&cfg, layer, comm, be, &eng);
  CHECK(s == EPM_ERR_INVALID_ARG && eng == NULL, "a budget below one row: %s", epm_status_name(s));
  char want[64];
  snprintf(want, sizeof want, "budget %zu bytes", cfg.workspace_bytes);
  CHECK(strstr(epm_last_error(), want) != NULL, "message does not name the budget: %s", epm_last_error());
  free_tokens(&t);
}

static void fixed(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer, epm_dtype_t partial) {
  tok_t t;
  make_tokens(&t, 77);
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  cfg.partial_dtype = partial;
  epm_engine_stats_t st;
  run(comm, be, layer, &cfg, &t, &st);
  memcpy(t.y_ref, t.y, (size_t)(t.m * dims.hidden) * sizeof *t.y);

  cfg.fixed_capacity = 1;
  const int64_t caps[] = {t.max_m, t.max_m + 5};
  for (size_t c = 0; c < 2; c++) {
    cfg.max_tokens_per_rank = caps[c];
    for (int budget = 0; budget < 2; budget++) {
      cfg.workspace_bytes = budget ? ws_bytes(&cfg, 1) : 0;
      run(comm, be, layer, &cfg, &t, &st);
      const int64_t rows = (caps[c] + 1) * P;
      CHECK(st.last_expert_rows == rows, "fixed: expert rows %lld, expected %lld", (long long)st.last_expert_rows,
            (long long)rows);
      CHECK(st.last_M == t.M, "fixed: M %lld, expected %lld", (long long)st.last_M, (long long)t.M);
      CHECK(st.last_expert_chunks == (budget ? rows : 1), "fixed: %lld expert calls", (long long)st.last_expert_chunks);
      const int64_t d = same_bits(&t);
      CHECK(d == 0, "fixed capacity %lld, %s partials, budget %d: %lld elements differ from the variable-size step",
            (long long)caps[c], epm_dtype_name(partial), budget, (long long)d);
    }
  }

  /* Failure agreement: the last rank asks for one token too many. */
  cfg.max_tokens_per_rank = t.max_m;
  cfg.workspace_bytes = 0;
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(&cfg, layer, comm, be, &eng));
  const int bad = P - 1;
  epm_bf16_t *xbig = calloc((size_t)((t.max_m + 1) * dims.hidden), sizeof *xbig);
  float *lbig = calloc((size_t)((t.max_m + 1) * dims.num_experts), sizeof *lbig);
  epm_bf16_t *ybig = calloc((size_t)((t.max_m + 1) * dims.hidden), sizeof *ybig);
  CHECK(xbig && lbig && ybig, "oom");
  epm_status_t s = me == bad ? epm_engine_step(eng, xbig, lbig, t.max_m + 1, ybig)
                             : epm_engine_step(eng, t.x, t.logits, t.m, t.y);
  CHECK(s != EPM_OK, "a step with a bad count on rank %d succeeded here", bad);
  if (me == bad) {
    CHECK(s == EPM_ERR_INVALID_ARG && strstr(epm_last_error(), "outside") != NULL, "own error: %s: %s",
          epm_status_name(s), epm_last_error());
  } else {
    char want[48];
    snprintf(want, sizeof want, "rank %d failed", bad);
    CHECK(s == EPM_ERR_ABORTED && strstr(epm_last_error(), want) != NULL, "peer error: %s: %s", epm_status_name(s),
          epm_last_error());
  }
  memset(t.y, 0, (size_t)(t.m * dims.hidden) * sizeof *t.y);
  CHECK_OK(epm_engine_step(eng, t.x, t.logits, t.m, t.y));
  CHECK(same_bits(&t) == 0, "the step after a failed one differs");
  epm_engine_stats(eng, &st);
  CHECK(st.steps == 1 && st.failed_steps == 1, "stats: %llu steps, %llu failed", (unsigned long long)st.steps,
        (unsigned long long)st.failed_steps);
  epm_engine_destroy(eng);
  free(xbig);
  free(lbig);
  free(ybig);

  cfg.dispatch = EPM_DISPATCH_ALLTOALL;
  CHECK(epm_engine_create(&cfg, layer, comm, be, &eng) == EPM_ERR_INVALID_ARG, "fixed + alltoall accepted");
  cfg.dispatch = EPM_DISPATCH_ALLGATHER;
  cfg.scale_mode = EPM_SCALE_DYNAMIC;
  CHECK(epm_engine_create(&cfg, layer, comm, be, &eng) == EPM_ERR_INVALID_ARG, "fixed + dynamic scale accepted");
  free_tokens(&t);
}

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  P = boot.ep_size;
  me = boot.ep_rank;
  CHECK_OK(epm_model_preset("tiny", &dims));
  CHECK(dims.num_experts % P == 0, "run with P dividing %lld", (long long)dims.num_experts);
  epm_group_t *g = NULL;
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = "tiny";
  gc.seed = 5;
  gc.threads = 1;
  gc.max_tokens_per_rank = 1;
  CHECK_OK(epm_group_create(&gc, &boot, &g));
  epm_comm_t *comm = epm_group_comm(g);
  epm_backend_t *be = epm_group_backend(g);
  const epm_layer_t layer = *epm_group_layer(g, 0);

  const epm_dispatch_mode_t modes[] = {EPM_DISPATCH_ALLGATHER, EPM_DISPATCH_ALLTOALL};
  for (int i = 0; i < 2; i++) {
    chunked(comm, be, &layer, modes[i], EPM_DTYPE_F32);
    chunked(comm, be, &layer, modes[i], EPM_DTYPE_BF16);
  }
  fixed(comm, be, &layer, EPM_DTYPE_F32);
  fixed(comm, be, &layer, EPM_DTYPE_BF16);

  epm_group_destroy(g);
  if (me == 0) printf("test_engine_modes_mpi: P = %d passed\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
