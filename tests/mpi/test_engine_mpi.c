/* SPDX-License-Identifier: Apache-2.0 */
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
 * Every engine check runs in both dispatch modes (allgather, alltoall), one
 * in auto; alltoall and allgather outputs must be bit-identical. Dispatch:
 *   - crafted routings (topk method, chosen ids): all tokens to one rank's
 *     experts, a spread routing, every token's top-k spanning every rank;
 *     the bytes each rank sent and received (engine stats, counted by the
 *     comm) equal the formula of each mode computed here from the routing,
 *     and the output equals the reference
 *   - auto picks the mode the cost terms say (forced both ways, and with
 *     equal terms: the fewer bytes on the busiest rank)
 *   - a receive capacity below a rank's rows fails the step on every rank
 *     with EPM_ERR_OVERFLOW naming that rank and the numbers; the engine
 *     keeps working; a capacity of exactly the rows passes
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

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
    /* A pause between reads: P spinning readers on 2 cores would starve
     * the steps they watch. */
    struct timespec pause = {0, 20000};
    nanosleep(&pause, NULL);
  }
  return NULL;
}

static const char *mode_name(epm_dispatch_mode_t d) { return epm_dispatch_mode_name(d); }

/* The output of the allgather mode for the same tokens and config: the
 * alltoall mode must reproduce it bit for bit. */
static void allgather_output(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer,
                             const epm_engine_config_t *cfg, const tokens_t *t, epm_bf16_t *y) {
  epm_engine_config_t c = *cfg;
  c.dispatch = EPM_DISPATCH_ALLGATHER;
  c.share_buffers = NULL;
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(&c, layer, comm, be, &eng));
  CHECK_OK(epm_engine_step(eng, t->x, t->logits, t->m, y));
  epm_engine_destroy(eng);
}

static void run_engine(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer, epm_scale_mode_t scale,
                       epm_dtype_t partial, int shared, epm_dispatch_mode_t dispatch) {
  tokens_t t;
  make_tokens(&t, 1000 + (uint64_t)scale * 10 + (uint64_t)partial);
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  cfg.scale_mode = scale;
  cfg.partial_dtype = partial;
  cfg.shared_expert = shared;
  cfg.dispatch = dispatch;
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
  CHECK(dispatch == EPM_DISPATCH_AUTO || s.last_mode == dispatch, "ran %s, configured %s", mode_name(s.last_mode),
        mode_name(dispatch));
  CHECK(s.steps_mode[0] + s.steps_mode[1] == 1, "steps per mode");
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
  CHECK(err <= TOL, "max_err %g > %g (scale %d partial %d shared %d %s)", err, TOL, scale, partial, shared,
        mode_name(dispatch));
  if (dispatch != EPM_DISPATCH_ALLGATHER) {
    epm_bf16_t *yag = malloc((size_t)(t.m * dims.hidden + 1) * sizeof *yag);
    CHECK(yag, "oom");
    allgather_output(comm, be, layer, &cfg, &t, yag);
    CHECK(memcmp(yag, t.y, (size_t)(t.m * dims.hidden) * sizeof *yag) == 0, "%s output differs from allgather's",
          mode_name(dispatch));
    free(yag);
  }

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
    printf("%s scale %s partial %s shared %d: M %lld, max_err %.3g (%lld elements of rank 0 differ), %ld stats "
           "reads\n",
           mode_name(dispatch), scale == EPM_SCALE_STATIC ? "static" : "dynamic",
           epm_dtype_name(partial), shared, (long long)t.M, err, (long long)diffs, rd.reads);
  free(y1);
  free(ref);
  epm_engine_destroy(eng);
  free_tokens(&t);
}

/* One rank passes bad arguments: every rank must return an error from the
 * same step (nobody waits in the allgather), and the next step works. */
static void failure_agreement(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer,
                              epm_dispatch_mode_t dispatch) {
  tokens_t t;
  make_tokens(&t, 77);
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  cfg.dispatch = dispatch;
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
static void shared_buffers(epm_comm_t *comm, epm_backend_t *be, const epm_layer_t *layer0,
                           epm_dispatch_mode_t dispatch) {
  tokens_t t;
  make_tokens(&t, 4242);
  epm_layer_t layer1 = {0};
  const int64_t El = dims.num_experts / P;
  CHECK_OK(epm_layer_generate(&dims, 1, 5, me * El, El, &layer1));
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = t.max_m;
  cfg.dispatch = dispatch;
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

/* ---- dispatch: crafted routings, bytes, auto, capacity ---- */

enum { ROUTE_ONE_RANK, ROUTE_SPREAD, ROUTE_SPAN, NROUTE };
static const char *const route_names[NROUTE] = {"all tokens to one rank", "spread", "top-k spans every rank"};

/* tiny with plain top-k over logits the test writes, so the ids are chosen. */
static epm_model_dims_t route_dims(int pat) {
  epm_model_dims_t d = dims;
  d.routing = EPM_ROUTING_TOPK;
  d.n_group = d.topk_group = 1;
  d.routed_scaling_factor = 1.0f;
  d.top_k = pat == ROUTE_SPAN ? (P > 1 ? P : 1) : 2;
  return d;
}

/* Expert of slot j of global token g (distinct per token). */
static int64_t route_expert(int pat, int64_t g, int64_t j, const epm_model_dims_t *d) {
  const int64_t E = d->num_experts, El = E / P;
  if (pat == ROUTE_ONE_RANK) return (P - 1) * El + j;  /* the last rank's first experts (El >= 2) */
  if (pat == ROUTE_SPREAD) return (g * 5 + j * 9) % E; /* 9 is odd: the two slots differ */
  return j * El + g % El;                              /* slot j on rank j */
}

typedef struct {
  epm_model_dims_t d;
  tokens_t t;
  epm_layer_t slice;
  int64_t C[64 * 64]; /* token rows rank s -> rank d, from the crafted ids */
  int64_t bd, bc;     /* bytes of a dispatch row and a combine row (fp32) */
  epm_bf16_t *ref;    /* [M, H] EP=1 reference */
} crafted_t;

static void crafted_make(crafted_t *c, int pat, uint64_t seed) {
  memset(c, 0, sizeof *c);
  c->d = route_dims(pat);
  const epm_model_dims_t saved = dims;
  dims = c->d; /* make_tokens generates with the global dims */
  make_tokens(&c->t, seed);
  dims = saved;
  const int64_t H = c->d.hidden, E = c->d.num_experts, k = c->d.top_k, El = E / P;
  for (int64_t g = 0; g < c->t.M; g++) {
    for (int64_t e = 0; e < E; e++) c->t.logits_all[g * E + e] = -4.0f;
    for (int64_t j = 0; j < k; j++) c->t.logits_all[g * E + route_expert(pat, g, j, &c->d)] = 2.0f - 0.25f * (float)j;
  }
  int64_t first = 0;
  for (int s = 0; s < P; s++) {
    for (int64_t g = first; g < first + c->t.counts[s]; g++) {
      uint64_t mask = 0;
      for (int64_t j = 0; j < k; j++) mask |= 1ull << (route_expert(pat, g, j, &c->d) / El);
      for (int r = 0; r < P; r++) c->C[s * P + r] += (int64_t)((mask >> r) & 1u);
    }
    first += c->t.counts[s];
  }
  c->bd = H / 2 + H / 16 + 8 * k;
  c->bc = 4 * H;
  CHECK_OK(epm_layer_generate(&c->d, 0, 5, me * El, El, &c->slice));
  epm_layer_t full = {0};
  CHECK_OK(epm_layer_generate(&c->d, 0, 5, 0, E, &full));
  c->ref = malloc((size_t)(c->t.M * H + 1) * sizeof *c->ref);
  CHECK(c->ref, "oom");
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.threads = 1;
  CHECK_OK(epm_moe_ref_layer(&full, c->t.x_all, c->t.logits_all, c->t.M, &o, NULL, NULL, NULL, c->ref, NULL));
  epm_layer_free(&full);
}

static void crafted_free(crafted_t *c) {
  epm_layer_free(&c->slice);
  free(c->ref);
  free_tokens(&c->t);
}

/* The formula of ep-comm-anchors.md section 4.2 (what each rank sends and
 * receives to / from the other ranks), written out for rank r. */
static void formula(const crafted_t *c, epm_dispatch_mode_t mode, int r, uint64_t out[4]) {
  const uint64_t bd = (uint64_t)c->bd, bc = (uint64_t)c->bc, m = (uint64_t)c->t.counts[r], M = (uint64_t)c->t.M;
  if (mode == EPM_DISPATCH_ALLGATHER) {
    out[0] = (uint64_t)(P - 1) * m * bd; /* dispatch sent: own rows to every other rank */
    out[1] = (M - m) * bd;               /* dispatch received: every other rank's rows */
    out[2] = (M - m) * bc;               /* combine sent: partials of the others' rows */
    out[3] = (uint64_t)(P - 1) * m * bc; /* combine received: own rows' partials from each */
    return;
  }
  memset(out, 0, 4 * sizeof *out);
  for (int o = 0; o < P; o++) {
    if (o == r) continue;
    out[0] += (uint64_t)c->C[r * P + o] * bd;
    out[1] += (uint64_t)c->C[o * P + r] * bd;
    out[2] += (uint64_t)c->C[o * P + r] * bc;
    out[3] += (uint64_t)c->C[r * P + o] * bc;
  }
}

static uint64_t busiest(const crafted_t *c, epm_dispatch_mode_t mode) {
  uint64_t top = 0, f[4];
  for (int r = 0; r < P; r++) {
    formula(c, mode, r, f);
    const uint64_t sent = f[0] + f[2], recv = f[1] + f[3];
    if (sent > top) top = sent;
    if (recv > top) top = recv;
  }
  return top;
}

/* One step of an engine of this config on the crafted tokens: stats, and the
 * output checked against the reference (bit for bit at P = 1). */
static epm_engine_stats_t crafted_step(epm_comm_t *comm, epm_backend_t *be, crafted_t *c,
                                       const epm_engine_config_t *cfg, epm_bf16_t *y) {
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(cfg, &c->slice, comm, be, &eng));
  CHECK_OK(epm_engine_step(eng, c->t.x, c->t.logits, c->t.m, y));
  epm_engine_stats_t s;
  epm_engine_stats(eng, &s);
  epm_engine_destroy(eng);
  const int64_t H = c->d.hidden;
  double dmax = 0, rmax = 0;
  for (int64_t i = 0; i < c->t.M * H; i++) rmax = fmax(rmax, fabs(epm_bf16_to_f32(c->ref[i])));
  for (int64_t i = 0; i < c->t.m * H; i++) {
    const double d = fabs((double)epm_bf16_to_f32(y[i]) - epm_bf16_to_f32(c->ref[c->t.off * H + i]));
    dmax = fmax(dmax, d);
    CHECK(P > 1 || d == 0, "EP=1 %s: element %lld differs from the reference", mode_name(s.last_mode), (long long)i);
  }
  CHECK((rmax > 0 ? dmax / rmax : dmax) <= TOL, "%s: max_err %g", mode_name(s.last_mode), dmax / rmax);
  return s;
}

static void crafted_routing(epm_comm_t *comm, epm_backend_t *be, int pat) {
  crafted_t c;
  crafted_make(&c, pat, 900 + (uint64_t)pat);
  const int64_t n = c.t.m * c.d.hidden;
  epm_bf16_t *y[2] = {malloc((size_t)(n + 1) * sizeof(epm_bf16_t)), malloc((size_t)(n + 1) * sizeof(epm_bf16_t))};
  CHECK(y[0] && y[1], "oom");
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = c.t.max_m;
  uint64_t got[2][4], want[2][4];
  for (int mode = 0; mode < 2; mode++) {
    cfg.dispatch = (epm_dispatch_mode_t)mode;
    epm_engine_stats_t s = crafted_step(comm, be, &c, &cfg, y[mode]);
    CHECK(s.last_mode == (epm_dispatch_mode_t)mode, "ran %s", mode_name(s.last_mode));
    const uint64_t g[4] = {s.last_dispatch_sent, s.last_dispatch_recv, s.last_combine_sent, s.last_combine_recv};
    memcpy(got[mode], g, sizeof g);
    formula(&c, (epm_dispatch_mode_t)mode, me, want[mode]);
    for (int i = 0; i < 4; i++)
      CHECK(got[mode][i] == want[mode][i], "%s, %s: %s %s = %llu bytes, formula %llu", route_names[pat],
            mode_name(cfg.dispatch), i < 2 ? "dispatch" : "combine", i % 2 ? "received" : "sent",
            (unsigned long long)got[mode][i], (unsigned long long)want[mode][i]);
    CHECK(s.bytes_sent == got[mode][0] + got[mode][2] && s.bytes_recv == got[mode][1] + got[mode][3], "byte sums");
    int64_t rows = c.t.M;
    if (mode == EPM_DISPATCH_ALLTOALL) {
      rows = 0;
      for (int r = 0; r < P; r++) rows += c.C[r * P + me];
    }
    CHECK(s.last_expert_rows == rows, "%s: expert rows %lld, want %lld", mode_name(cfg.dispatch),
          (long long)s.last_expert_rows, (long long)rows);
  }
  CHECK(memcmp(y[0], y[1], (size_t)n * sizeof(epm_bf16_t)) == 0, "%s: alltoall output differs from allgather's",
        route_names[pat]);
  if (pat == ROUTE_ONE_RANK) /* only the last rank computes; nothing comes back elsewhere */
    CHECK(me == P - 1 || got[1][1] == 0, "rank %d received rows", me);
  if (pat == ROUTE_SPAN) /* every token on every rank: the dispatch moves what the allgather moves */
    CHECK(got[1][0] == got[0][0] && got[1][1] == got[0][1], "spanning routing: alltoall dispatch %llu/%llu, "
          "allgather %llu/%llu", (unsigned long long)got[1][0], (unsigned long long)got[1][1],
          (unsigned long long)got[0][0], (unsigned long long)got[0][1]);
  if (me == 0)
    printf("%s: rank 0 sent/received %llu/%llu bytes in allgather, %llu/%llu in alltoall mode (= formula)\n",
           route_names[pat], (unsigned long long)(got[0][0] + got[0][2]), (unsigned long long)(got[0][1] + got[0][3]),
           (unsigned long long)(got[1][0] + got[1][2]), (unsigned long long)(got[1][1] + got[1][3]));
  free(y[0]);
  free(y[1]);
  crafted_free(&c);
}

/* auto: terms that force each mode, then equal terms (fewer bytes wins). */
static void auto_choice(epm_comm_t *comm, epm_backend_t *be) {
  crafted_t c;
  crafted_make(&c, ROUTE_ONE_RANK, 4711);
  epm_bf16_t *y = malloc((size_t)(c.t.m * c.d.hidden + 1) * sizeof *y);
  CHECK(y, "oom");
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = c.t.max_m;
  cfg.dispatch = EPM_DISPATCH_AUTO;
  const uint64_t b_ag = busiest(&c, EPM_DISPATCH_ALLGATHER), b_a2a = busiest(&c, EPM_DISPATCH_ALLTOALL);
  const struct {
    double lat[2], gbps[2];
    epm_dispatch_mode_t want;
  } cases[] = {
      {{0, 1e6}, {1, 1}, EPM_DISPATCH_ALLGATHER},
      {{1e6, 0}, {1, 1}, EPM_DISPATCH_ALLTOALL},
      {{0, 0}, {1, 1}, b_a2a < b_ag ? EPM_DISPATCH_ALLTOALL : EPM_DISPATCH_ALLGATHER},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memcpy(cfg.dispatch_cost.latency_us, cases[i].lat, sizeof cases[i].lat);
    memcpy(cfg.dispatch_cost.gbps, cases[i].gbps, sizeof cases[i].gbps);
    epm_engine_stats_t s = crafted_step(comm, be, &c, &cfg, y);
    CHECK(s.last_mode == cases[i].want, "auto case %zu ran %s, want %s", i, mode_name(s.last_mode),
          mode_name(cases[i].want));
    CHECK(s.last_model_bytes[0] == b_ag && s.last_model_bytes[1] == b_a2a,
          "model bytes %llu/%llu, busiest rank by the formula %llu/%llu", (unsigned long long)s.last_model_bytes[0],
          (unsigned long long)s.last_model_bytes[1], (unsigned long long)b_ag, (unsigned long long)b_a2a);
    const double want_s = cases[i].lat[1] * 1e-6 + (double)b_a2a / 1e9;
    CHECK(fabs(s.last_model_s[1] - want_s) <= 1e-12 * fmax(1.0, want_s), "alltoall model %g s, want %g",
          s.last_model_s[1], want_s);
  }
  CHECK(P == 1 || b_a2a < b_ag, "all-to-one routing must move fewer bytes in alltoall mode (%llu vs %llu)",
        (unsigned long long)b_a2a, (unsigned long long)b_ag);
  free(y);
  crafted_free(&c);
}

/* The last rank receives every token (M rows). Capacity M - 1: every rank
 * fails the step with the same error; auto falls back to allgather;
 * capacity M passes. */
static void capacity_overflow(epm_comm_t *comm, epm_backend_t *be) {
  crafted_t c;
  crafted_make(&c, ROUTE_ONE_RANK, 31337);
  CHECK(c.t.M >= 2, "need 2+ tokens");
  epm_bf16_t *y = malloc((size_t)(c.t.m * c.d.hidden + 1) * sizeof *y);
  CHECK(y, "oom");
  epm_engine_config_t cfg = EPM_ENGINE_CONFIG_INIT;
  cfg.max_tokens_per_rank = c.t.max_m;
  cfg.dispatch = EPM_DISPATCH_ALLTOALL;
  cfg.recv_capacity = c.t.M - 1;
  epm_engine_t *eng = NULL;
  CHECK_OK(epm_engine_create(&cfg, &c.slice, comm, be, &eng));
  CHECK(epm_engine_recv_capacity(eng) == c.t.M - 1, "capacity %lld", (long long)epm_engine_recv_capacity(eng));
  epm_status_t st = epm_engine_step(eng, c.t.x, c.t.logits, c.t.m, y);
  CHECK(st == EPM_ERR_OVERFLOW, "rank %d got %s: %s", me, epm_status_name(st), epm_last_error());
  char want[160];
  snprintf(want, sizeof want, "rank %d would receive %lld token rows", P - 1, (long long)c.t.M);
  CHECK(strstr(epm_last_error(), want), "message '%s' lacks '%s'", epm_last_error(), want);
  snprintf(want, sizeof want, "receive capacity of %lld rows", (long long)(c.t.M - 1));
  CHECK(strstr(epm_last_error(), want), "message '%s' lacks '%s'", epm_last_error(), want);
  CHECK_OK(epm_engine_step(eng, c.t.x, c.t.logits, 0, y)); /* still usable: no rows, no overflow */
  epm_engine_stats_t s;
  epm_engine_stats(eng, &s);
  CHECK(s.failed_steps == 1 && s.steps == 1, "steps %llu failed %llu", (unsigned long long)s.steps,
        (unsigned long long)s.failed_steps);
  epm_engine_destroy(eng);
  cfg.dispatch = EPM_DISPATCH_AUTO; /* terms that prefer alltoall, which does not fit */
  cfg.dispatch_cost = (epm_dispatch_cost_t){{1e6, 0}, {1, 1}};
  s = crafted_step(comm, be, &c, &cfg, y);
  CHECK(s.last_mode == EPM_DISPATCH_ALLGATHER, "auto over capacity ran %s", mode_name(s.last_mode));
  cfg.dispatch = EPM_DISPATCH_ALLTOALL;
  cfg.recv_capacity = c.t.M;
  s = crafted_step(comm, be, &c, &cfg, y);
  CHECK(s.last_mode == EPM_DISPATCH_ALLTOALL && s.last_expert_rows == (me == P - 1 ? c.t.M : 0), "at capacity");
  if (me == 0) printf("capacity: %lld rows into rank %d over a capacity of %lld refused on every rank\n",
                      (long long)c.t.M, P - 1, (long long)(c.t.M - 1));
  free(y);
  crafted_free(&c);
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
  const epm_dispatch_mode_t modes[] = {EPM_DISPATCH_ALLGATHER, EPM_DISPATCH_ALLTOALL};
  run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_F32, 1, EPM_DISPATCH_AUTO);
  for (int i = 0; i < 2; i++) {
    run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_F32, 1, modes[i]);
    run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_F32, 0, modes[i]);
    run_engine(comm, be, &layer, EPM_SCALE_DYNAMIC, EPM_DTYPE_F32, 1, modes[i]);
    run_engine(comm, be, &layer, EPM_SCALE_STATIC, EPM_DTYPE_BF16, 1, modes[i]);
    failure_agreement(comm, be, &layer, modes[i]);
    shared_buffers(comm, be, &layer, modes[i]);
  }
  for (int pat = 0; pat < NROUTE; pat++) crafted_routing(comm, be, pat);
  auto_choice(comm, be);
  capacity_overflow(comm, be);

  epm_group_destroy(g);
  if (me == 0) printf("test_engine_mpi: P = %d passed\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
