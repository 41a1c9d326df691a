/* test_engine_mpi.c — the step engine under mpirun (any P dividing 16).
 *
 * Oracle: epm_moe_ref_layer (the CPU reference full layer, EP = 1) on the
 * global token set, which every rank recomputes itself for the tiny preset.
 * Token counts per rank are unequal with zeros: m_r = (5r + 3) % 7.
 *   - output rows of every rank vs the reference: max|y-ref|/max|ref| <= 2^-6,
 *     and bit-identical at P = 1 (same sums in the same order)
 *   - a second step gives the same bits (determinism)
 *   - dynamic scale: the decode scale is amax(global x)/2688, computed here
 *     from the global x, and the output matches the reference run with it
 *   - bf16 partials stay within the tolerance
 *   - failure agreement: one rank with bad arguments -> every rank returns an
 *     error in the same step (none hangs), the next step works
 *   - stats: counters and stage times; readable from another thread mid-step
 *   - two layers on one set of step buffers (share_buffers), stepped in turn
 *   - create-time validation: wrong expert slice, zero capacity
 *   - backend seam: names, a weights handle of another backend refused
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "comm_check.h"
#include "epmoe/backend.h"
#include "epmoe/engine.h"
#include "epmoe/group.h"
#include "epmoe/moe_ref.h"
#include "epmoe/tokens.h"

#define TOL 0.015625

static int P, me;
static epm_model_dims_t dims;

typedef struct {
  int64_t counts[64], off, m, M, max_m;
  epm_bf16_t *x_all, *x, *y;
  float *logits_all, *logits;
} tokens_t;

static void make_tokens(tokens_t *t, uint64_t seed) {
  t->M = 0;
  t->max_m = 1;
  for (int r = 0; r < P; r++) {
    t->counts[r] = (5 * r + 3) % 7;
    if (r == me) t->off = t->M;
    t->M += t->counts[r];
    if (t->counts[r] > t->max_m) t->max_m = t->counts[r];
  }
  t->m = t->counts[me];
  const int64_t H = dims.hidden, E = dims.num_experts;
  t->x_all = malloc((size_t)(t->M * H + 1) * sizeof *t->x_all);
  t->logits_all = malloc((size_t)(t->M * E + 1) * sizeof *t->logits_all);
  t->y = malloc((size_t)(t->m * H + 1) * sizeof *t->y);
  CHECK(t->x_all && t->logits_all && t->y, "oom");
  CHECK_OK(epm_tokens_generate(&dims, seed, 0, t->M, t->x_all, t->logits_all));
  t->x = t->x_all + t->off * H;
  t->logits = t->logits_all + t->off * E;
}

static void free_tokens(tokens_t *t) {
  free(t->x_all);
  free(t->logits_all);
  free(t->y);
}

/* max|y - ref| / max|ref| over this rank's rows of the global reference. */
static double rank_error(const tokens_t *t, const epm_bf16_t *ref_all, int64_t *diffs) {
  const int64_t H = dims.hidden;
  double dmax = 0, rmax = 0;
  *diffs = 0;
  for (int64_t i = 0; i < t->M * H; i++) rmax = fmax(rmax, fabs(epm_bf16_to_f32(ref_all[i])));
  for (int64_t i = 0; i < t->m * H; i++) {
    const epm_bf16_t r = ref_all[t->off * H + i];
    dmax = fmax(dmax, fabs((double)epm_bf16_to_f32(t->y[i]) - epm_bf16_to_f32(r)));
    *diffs += t->y[i] != r;
  }
  return rmax > 0 ? dmax / rmax : dmax;
}

static void reference_layer(const tokens_t *t, int64_t layer_index, float input_scale, int shared,
                            epm_bf16_t *ref) {
  epm_layer_t full = {0};
  CHECK_OK(epm_layer_generate(&dims, layer_index, 5, 0, dims.num_experts, &full));
  if (input_scale > 0) full.input_scale = input_scale;
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.threads = 1;
  o.include_shared = shared;
  CHECK_OK(epm_moe_ref_layer(&full, t->x_all, t->logits_all, t->M, &o, NULL, NULL, NULL, ref, NULL));
  epm_layer_free(&full);
}

static void reference(const tokens_t *t, float input_scale, int shared, epm_bf16_t *ref) {
  reference_layer(t, 0, input_scale, shared, ref);
}

typedef struct {
  epm_engine_t *eng;
  atomic_int stop;
  long reads;
} reader_t;

static void *read_stats(void *arg) {
  reader_t *r = arg;
  epm_engine_stats_t s;
  while (!atomic_load(&r->stop)) {
    epm_engine_stats(r->eng, &s);
    CHECK(s.failed_steps == 0 && s.last_s[EPM_STAGE_TOTAL] >= 0, "torn stats");
    r->reads++;
  }
  return NULL;
}

static void run_engine(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer, epm_scale_mode_t scale,
                       epm_dtype_t partial, int shared) {
  tokens_t t;
  make_tokens(&t, 1000 + (uint64_t)scale * 10 + (uint64_t)partial);
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  cfg.scale_mode = scale;
  cfg.partial_dtype = partial;
  cfg.shared_expert = shared;
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(&cfg, layer, comm, be, &eng));
  CHECK(epm_engine_buffer_bytes(eng) > 0, "no buffers");

  reader_t rd = {.eng = eng};
  pthread_t th;
  CHECK(pthread_create(&th, NULL, read_stats, &rd) == 0, "thread");
  CHECK_OK(epm_engine_step(eng, t.x, t.logits, t.m, t.y));
  atomic_store(&rd.stop, 1);
  pthread_join(th, NULL);

  epm_engine_stats_t s;
  epm_engine_stats(eng, &s);
  CHECK(s.steps == 1 && s.failed_steps == 0, "steps %llu failed %llu", (unsigned long long)s.steps,
        (unsigned long long)s.failed_steps);
  CHECK(s.last_m == t.m && s.last_M == t.M && s.tokens_local == (uint64_t)t.m, "token counters");
  double parts = 0;
  for (int i = 0; i < EPM_STAGE_COUNT; i++) {
    CHECK(s.last_s[i] >= 0 && s.max_s[i] >= s.last_s[i], "stage %s time %g", epm_engine_stage_name(i), s.last_s[i]);
    if (i != EPM_STAGE_TOTAL) parts += s.last_s[i];
  }
  CHECK(parts <= s.last_s[EPM_STAGE_TOTAL] * 1.0001 + 1e-6, "stages %g > total %g", parts, s.last_s[EPM_STAGE_TOTAL]);

  float a1 = layer->input_scale;
  if (scale == EPM_SCALE_DYNAMIC) {
    float amax = 0;
    for (int64_t i = 0; i < t.M * dims.hidden; i++) amax = fmaxf(amax, fabsf(epm_bf16_to_f32(t.x_all[i])));
    a1 = amax / (6.0f * 448.0f);
    CHECK(s.last_input_scale == a1, "dynamic decode scale %.9g, expected amax %.9g / 2688 = %.9g",
          (double)s.last_input_scale, (double)amax, (double)a1);
  } else {
    CHECK(s.last_input_scale == layer->input_scale, "static decode scale changed");
  }

  epm_bf16_t *ref = malloc((size_t)(t.M * dims.hidden + 1) * sizeof *ref);
  CHECK(ref, "oom");
  reference(&t, a1, shared, ref);
  int64_t diffs;
  double err = rank_error(&t, ref, &diffs);
  if (P == 1)
    CHECK(diffs == 0, "EP=1 must equal the reference bit for bit; %lld elements differ (max_err %g)",
          (long long)diffs, err);
  CHECK(err <= TOL, "max_err %g > %g (scale %d partial %d shared %d)", err, TOL, scale, partial, shared);

  /* The same step again: the same bits. */
  epm_bf16_t *y1 = malloc((size_t)(t.m * dims.hidden + 1) * sizeof *y1);
  CHECK(y1, "oom");
  memcpy(y1, t.y, (size_t)(t.m * dims.hidden) * sizeof *y1);
  CHECK_OK(epm_engine_step(eng, t.x, t.logits, t.m, t.y));
  CHECK(memcmp(y1, t.y, (size_t)(t.m * dims.hidden) * sizeof *y1) == 0, "second step differs");
  /* Inputs already in backend memory (host on cpu): the same bits. */
  memset(t.y, 0xff, (size_t)(t.m * dims.hidden) * sizeof *t.y);
  CHECK_OK(epm_engine_step_backend_mem(eng, t.x, t.logits, t.m, t.y));
  CHECK(memcmp(y1, t.y, (size_t)(t.m * dims.hidden) * sizeof *y1) == 0, "backend-memory step differs");
  epm_engine_stats(eng, &s);
  CHECK(s.steps == 3 && s.tokens_gathered == 3 * (uint64_t)t.M, "counters after 3 steps");
  if (me == 0)
    printf("scale %s partial %s shared %d: M %lld, max_err %.3g (%lld elements of rank 0 differ), %ld stats reads\n",
           scale == EPM_SCALE_STATIC ? "static" : "dynamic", epm_dtype_name(partial), shared,
           (long long)t.M, err, (long long)diffs, rd.reads);
  free(y1);
  free(ref);
  epm_engine_destroy(eng);
  free_tokens(&t);
}

/* One rank passes bad arguments: every rank must return an error from the
 * same step (nobody waits in the allgather), and the next step works. */
static void failure_agreement(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer) {
  tokens_t t;
  make_tokens(&t, 77);
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(&cfg, layer, comm, be, &eng));
  const int bad = P - 1;
  for (int kind = 0; kind < 2; kind++) {
    int64_t m = t.m;
    const epm_bf16_t *x = t.x;
    if (me == bad && kind == 0) m = t.max_m + 1; /* above capacity */
    if (me == bad && kind == 1) {               /* tokens but no input */
      m = 1;
      x = NULL;
    }
    epm_status_t st = epm_engine_step(eng, x, t.logits, m, t.y);
    if (me == bad) {
      CHECK(st == EPM_ERR_INVALID_ARG, "bad rank got %s: %s", epm_status_name(st), epm_last_error());
    } else {
      CHECK(st == EPM_ERR_ABORTED, "rank %d got %s: %s", me, epm_status_name(st), epm_last_error());
      char want[64];
      snprintf(want, sizeof want, "rank %d failed", bad);
      CHECK(strstr(epm_last_error(), want), "message '%s' lacks '%s'", epm_last_error(), want);
    }
    CHECK_OK(epm_engine_step(eng, t.x, t.logits, t.m, t.y));
  }
  epm_engine_stats_t s;
  epm_engine_stats(eng, &s);
  CHECK(s.steps == 2 && s.failed_steps == 2, "steps %llu failed %llu", (unsigned long long)s.steps,
        (unsigned long long)s.failed_steps);
  epm_engine_destroy(eng);
  free_tokens(&t);
}

/* Two layers of one model on one set of step buffers, stepped alternately:
 * each must still match its own reference. */
static void shared_buffers(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer0) {
  tokens_t t;
  make_tokens(&t, 4242);
  epm_layer_t layer1 = {0};
  const int64_t El = dims.num_experts / P;
  CHECK_OK(epm_layer_generate(&dims, 1, 5, me * El, El, &layer1));
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  epm_engine_t *a = NULL, *b = NULL, *bad = NULL;
  CHECK_OK(epm_engine_create(&cfg, layer0, comm, be, &a));
  cfg.share_buffers = a;
  CHECK_OK(epm_engine_create(&cfg, &layer1, comm, be, &b));
  CHECK(epm_engine_buffer_bytes(b) == 0 && epm_engine_buffer_bytes(a) > 0, "b must borrow a's buffers");
  cfg.max_tokens_per_rank = t.max_m + 1;
  CHECK(epm_engine_create(&cfg, &layer1, comm, be, &bad) == EPM_ERR_INVALID_ARG, "capacity mismatch accepted");
  CHECK(strstr(epm_last_error(), "max_tokens_per_rank"), "%s", epm_last_error());

  const int64_t n = t.m * dims.hidden;
  epm_bf16_t *ya = malloc((size_t)(n + 1) * sizeof *ya), *ref = malloc((size_t)(t.M * dims.hidden + 1) * sizeof *ref);
  CHECK(ya && ref, "oom");
  CHECK_OK(epm_engine_step(a, t.x, t.logits, t.m, t.y));
  memcpy(ya, t.y, (size_t)n * sizeof *ya);
  CHECK_OK(epm_engine_step(b, t.x, t.logits, t.m, t.y));
  int64_t diffs;
  reference_layer(&t, 1, 0, 1, ref);
  CHECK(rank_error(&t, ref, &diffs) <= TOL, "layer 1 on shared buffers: max_err %g", rank_error(&t, ref, &diffs));
  CHECK(P > 1 || diffs == 0, "layer 1 at P = 1 must equal the reference");
  memcpy(t.y, ya, (size_t)n * sizeof *ya);
  reference_layer(&t, 0, 0, 1, ref);
  CHECK(rank_error(&t, ref, &diffs) <= TOL && (P > 1 || diffs == 0), "layer 0 after layer 1 stepped");
  CHECK_OK(epm_engine_step(a, t.x, t.logits, t.m, t.y));
  CHECK(memcmp(ya, t.y, (size_t)n * sizeof *ya) == 0, "layer 0 changed after layer 1 used the buffers");
  epm_engine_destroy(b);
  epm_engine_destroy(a);
  epm_layer_free(&layer1);
  free(ya);
  free(ref);
  free_tokens(&t);
}

static void create_errors(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer) {
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  epm_engine_t *eng = NULL;
  cfg.max_tokens_per_rank = 0;
  CHECK(epm_engine_create(&cfg, layer, comm, be, &eng) == EPM_ERR_INVALID_ARG, "capacity 0 accepted");
  CHECK(strstr(epm_last_error(), "max_tokens_per_rank = 0"), "%s", epm_last_error());
  cfg.max_tokens_per_rank = 4;
  /* A slice that is not this rank's: half of it (P = 1) or the next rank's. */
  epm_layer_t wrong = {0};
  const int64_t El = dims.num_experts / P;
  if (P == 1)
    CHECK_OK(epm_layer_generate(&dims, 0, 5, 0, El / 2, &wrong));
  else
    CHECK_OK(epm_layer_generate(&dims, 0, 5, ((me + 1) % P) * El, El, &wrong));
  CHECK(epm_engine_create(&cfg, &wrong, comm, be, &eng) == EPM_ERR_INVALID_ARG, "wrong slice accepted");
  CHECK(strstr(epm_last_error(), "must hold experts"), "%s", epm_last_error());
  CHECK(eng == NULL, "out written on error");
  epm_layer_free(&wrong);
}

static void backend_seam(epm_backend_t *be, const epm_layer_t *layer) {
  epm_backend_kind_t k;
  CHECK(epm_backend_kind_parse("gpu", &k) == EPM_ERR_INVALID_ARG, "gpu parsed");
  CHECK(strstr(epm_last_error(), "valid: cpu, cuda"), "%s", epm_last_error());
  CHECK_OK(epm_backend_kind_parse("cuda", &k));
  CHECK(k == EPM_BACKEND_CUDA && !strcmp(epm_backend_kind_name(k), "cuda"), "names");
  CHECK(!epm_backend_is_device(be) && epm_backend_stream(be) == NULL, "cpu is host memory");
  /* Weights of one backend object must not run on another. */
  epm_backend_config_t bc = EPM_BACKEND_CONFIG_INIT;
  epm_backend_t *other = NULL;
  epm_backend_weights_t *w = NULL;
  CHECK_OK(epm_backend_create(&bc, &other));
  CHECK_OK(epm_backend_weights_load(other, layer, 2, 2 * P, &w));
  int32_t ids[8];
  float wts[8], logits[64] = {0};
  CHECK(epm_backend_route(be, w, logits, 1, ids, wts) == EPM_ERR_INVALID_ARG, "foreign weights accepted");
  CHECK(epm_backend_route(other, w, logits, 3, ids, wts) == EPM_ERR_INVALID_ARG, "rows above max_local");
  CHECK_OK(epm_backend_route(other, w, logits, 1, ids, wts));
  epm_backend_weights_free(other, w);
  epm_backend_destroy(other);
}

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  P = boot.ep_size;
  me = boot.ep_rank;
  CHECK_OK(epm_model_preset("tiny", &dims));
  CHECK(dims.num_experts % P == 0 && P <= 64, "run with P dividing %lld", (long long)dims.num_experts);
  /* The rank's backend, comm and layer-0 slice come from the composition
   * root; the tests below build their own engines on them. */
  epm_group_t *g = NULL;
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = "tiny";
  gc.seed = 5;
  gc.threads = 1;
  gc.max_tokens_per_rank = 1;
  CHECK_OK(epm_group_create(&gc, &boot, &g));
  epm_comm_t *comm = epm_group_comm(g);
  epm_backend_t *be = epm_group_backend(g);
  const epm_layer_t *lp = epm_group_layer(g, 0);
  CHECK(lp != NULL, "group serves no layer 0");
  const epm_layer_t layer = *lp;

  backend_seam(be, &layer);
  create_errors(comm, be, &layer);
  run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_F32, 1);
  run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_F32, 0);
  run_engine(comm, be, &layer, EPM_SCALE_DYNAMIC, EPM_DTYPE_F32, 1);
  run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_BF16, 1);
  failure_agreement(comm, be, &layer);
  shared_buffers(comm, be, &layer);

  epm_group_destroy(g);
  if (me == 0) printf("test_engine_mpi: P = %d passed\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
