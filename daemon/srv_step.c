/* SPDX-License-Identifier: Apache-2.0 */
/* srv_step.c — the worker thread: it makes every MPI call after start-up
 * (through the step backend and the rendezvous), runs the warm-up and every
 * collective step, and agrees with the other ranks on which step to run next.
 *
 * The agreement is epm_rendezvous (include/epmoe/rendezvous.h, comm/): every
 * FORWARD the worker takes is JOINed at once with its key (layer, step_id) —
 * the client's step tag — and waits, joined, until the group answers. GO runs
 * that request's step on every rank, in the one order the coordinator issues
 * GOs, so clients that reach the ranks in different orders never deadlock
 * each other; ABORT fails it (TIMEOUT: EPM_ERR_TIMEOUT naming the ranks that
 * never joined; CANCELLED: a rank's client left; a late join of an aborted
 * step likewise; SHUTDOWN: EPM_ERR_ABORTED); SHUTDOWN (some rank was asked to
 * drain: SIGTERM, SHUTDOWN frame) fails what waits here and drains the group.
 * A request whose client left before its GO is withdrawn (cancel).
 *
 * Liveness (--liveness-timeout > 0): the rendezvous' control thread beats for
 * this rank, with the progress the engine reports at every stage boundary
 * (on_stage below), so a dead or stopped peer, or a step where nothing moves
 * anywhere, fails the group within the bound while a long step that computes
 * is never cut short. The main thread's watchdog reads the verdict
 * (srv_worker_group_failed) and fail-stops. Without liveness (or without
 * MPI_THREAD_MULTIPLE) the watchdog falls back to a wall-clock bound on the
 * collective (--step-timeout). Any error of the rendezvous itself (MPI,
 * protocol) is fail-stop too.
 *
 * Test hook: EPMOE_TEST_FAULT="RANK:PHASE:ACTION" makes rank RANK kill
 * (SIGKILL), stop (SIGSTOP), exit (_exit 0) or abort itself when it reaches
 * PHASE of its first served step: idle (0.5 s after ready), rendezvous (just
 * joined), dispatch, experts or combine. tests/daemon/fault_matrix.sh uses it.
 *
 * The rendezvous key is (layer + 2^24 x partial dtype, step id): ranks that
 * disagree on a step's partial dtype must not meet (their reduce-scatters
 * would differ in size), so the dtype is part of what they agree on.
 */
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "epmoe/clock.h"
#include "devmem.h"
#include "epmoe/log.h"
#include "epmoe/group.h"
#include "epmoe/placement.h"
#include "epmoe/rendezvous.h"
#include "srv.h"

#define SRV_KEY_LAYERS (1u << 24) /* layers below this; the dtype above (see top) */
#define SRV_SPIN_NS 2000000u       /* yield-poll this long after a join before sleeping */

struct srv_worker {
  srv_t *s;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t wake; /* signalled on submit / shutdown so an idle worker reacts at once */
  srv_req_t *q_head, *q_tail;       /* submitted, not joined */
  srv_req_t *d_head, *d_tail;       /* done, for the loop */
  int cancels;                      /* cancel requests not yet looked at (under mu) */
  int shutdown_asked;               /* set by the loop */
  char shutdown_why[128];
  int finished;
  uint64_t in_step_since;           /* ns; 0 when not inside a collective */
  uint64_t in_step_id;
  uint32_t in_step_layer;
  epm_group_t *group; /* backend, comm, layers, engines (epmoe/group.h) */
  uint64_t *load;     /* [E] scratch: the last step's per-expert load */
  epm_rendezvous_t *rdv; /* set/cleared under mu (the watchdog reads its verdict) */
  int liveness;      /* heartbeats on */
  srv_req_t *joined; /* joined, waiting for GO/ABORT (worker only) */
  uint64_t joined_ns; /* when the last request was joined */
  int shutdown_seen; /* the group's SHUTDOWN arrived */
  uint64_t t_ready;  /* when serving began */
  struct {           /* EPMOE_TEST_FAULT */
    int on, rank, phase, action, fired;
  } fault;
};

/* ---- the fault hook (tests only) ------------------------------------------ */

enum { F_IDLE, F_RENDEZVOUS, F_DISPATCH, F_EXPERTS, F_COMBINE };
static const char *const fault_phase[] = {"idle", "rendezvous", "dispatch", "experts", "combine", NULL};
static const char *const fault_action[] = {"kill", "stop", "exit", "abort", NULL};

static int lookup(const char *const *names, const char *v) {
  for (int i = 0; names[i]; i++)
    if (!strcmp(names[i], v)) return i;
  return -1;
}

static void fault_parse(srv_worker_t *w) {
  const char *v = getenv("EPMOE_TEST_FAULT");
  char ph[32], ac[32];
  int rank;
  if (!v || !*v) return;
  if (sscanf(v, "%d:%31[a-z]:%31[a-z]", &rank, ph, ac) != 3 || lookup(fault_phase, ph) < 0 ||
      lookup(fault_action, ac) < 0) {
    EPM_LOG(EPM_LOG_WARN, "step", "EPMOE_TEST_FAULT='%s' ignored (want RANK:idle|rendezvous|dispatch|experts|combine:"
            "kill|stop|exit|abort)", v);
    return;
  }
  w->fault.on = rank == w->s->rank;
  w->fault.rank = rank;
  w->fault.phase = lookup(fault_phase, ph);
  w->fault.action = lookup(fault_action, ac);
}

/* Act when this rank reaches `phase` of a served step (never the warm-up). */
static void fault_point(srv_worker_t *w, int phase) {
  if (!w->fault.on || w->fault.fired || w->fault.phase != phase || !w->t_ready) return;
  w->fault.fired = 1;
  EPM_LOG(EPM_LOG_WARN, "step", "test hook: rank %d at %s: %s", w->s->rank, fault_phase[phase],
          fault_action[w->fault.action]);
  fflush(NULL);
  switch (w->fault.action) {
    case 0: raise(SIGKILL); break;
    case 1: raise(SIGSTOP); break;
    case 2: _exit(0);
    default: abort();
  }
}

void srv_req_free(srv_req_t *r) {
  if (!r) return;
  free(r->frame);
  if (r->data_mode != EPM_DATA_SHM) free(r->y);
  free(r);
}

static void push_done(srv_worker_t *w, srv_req_t *r) {
  if (r->on_done) { /* a doorbell step answers through shared memory, from here */
    r->on_done(w->s, r);
    return;
  }
  pthread_mutex_lock(&w->mu);
  r->next = NULL;
  if (w->d_tail) w->d_tail->next = r;
  else w->d_head = r;
  w->d_tail = r;
  pthread_mutex_unlock(&w->mu);
  uv_async_send(&w->s->wake);
}

static void fail_req(srv_worker_t *w, srv_req_t *r, epm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_req(srv_worker_t *w, srv_req_t *r, epm_status_t st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->err, sizeof r->err, fmt, ap);
  va_end(ap);
  r->st = st;
  r->t_done_ns = epm_clock_ns();
  push_done(w, r);
}

srv_req_t *srv_worker_take_done(srv_t *s) {
  srv_worker_t *w = s->worker;
  srv_req_t *r;
  pthread_mutex_lock(&w->mu);
  r = w->d_head;
  w->d_head = w->d_tail = NULL;
  pthread_mutex_unlock(&w->mu);
  return r;
}

void srv_worker_submit(srv_t *s, srv_req_t *r) {
  srv_worker_t *w = s->worker;
  pthread_mutex_lock(&w->mu);
  r->next = NULL;
  if (w->q_tail) w->q_tail->next = r;
  else w->q_head = r;
  w->q_tail = r;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->mu);
}

void srv_worker_cancel(srv_t *s, srv_req_t *r) {
  srv_worker_t *w = s->worker;
  atomic_store(&r->cancelled, 1);
  pthread_mutex_lock(&w->mu);
  w->cancels++;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->mu);
}

int srv_worker_liveness_on(srv_t *s) {
  srv_worker_t *w = s->worker;
  pthread_mutex_lock(&w->mu);
  int on = w->liveness && w->rdv;
  pthread_mutex_unlock(&w->mu);
  return on;
}

int srv_worker_group_failed(srv_t *s, char *why, size_t n) {
  srv_worker_t *w = s->worker;
  pthread_mutex_lock(&w->mu);
  int f = w->rdv && epm_rendezvous_failed(w->rdv, why, n);
  pthread_mutex_unlock(&w->mu);
  return f;
}

void srv_worker_request_shutdown(srv_t *s, const char *why) {
  srv_worker_t *w = s->worker;
  pthread_mutex_lock(&w->mu);
  if (!w->shutdown_asked) snprintf(w->shutdown_why, sizeof w->shutdown_why, "%s", why);
  w->shutdown_asked = 1;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->mu);
}

int srv_worker_finished(srv_t *s) {
  int f;
  pthread_mutex_lock(&s->worker->mu);
  f = s->worker->finished;
  pthread_mutex_unlock(&s->worker->mu);
  return f;
}

uint64_t srv_worker_in_step_ns(srv_t *s, uint64_t *step_id, uint32_t *layer) {
  srv_worker_t *w = s->worker;
  uint64_t since;
  pthread_mutex_lock(&w->mu);
  since = w->in_step_since;
  if (step_id) *step_id = w->in_step_id;
  if (layer) *layer = w->in_step_layer;
  pthread_mutex_unlock(&w->mu);
  return since ? epm_clock_ns() - since : 0;
}

static srv_req_t *pop_queue(srv_worker_t *w) {
  srv_req_t *r;
  pthread_mutex_lock(&w->mu);
  r = w->q_head;
  if (r) {
    w->q_head = r->next;
    if (!w->q_head) w->q_tail = NULL;
    r->next = NULL;
  }
  pthread_mutex_unlock(&w->mu);
  return r;
}

/* ---- the step itself ------------------------------------------------------ */

static void record_stages(srv_worker_t *w) {
  srv_stats_t *st = &w->s->stats;
  const char *names[16];
  double last[16];
  epm_engine_stats_t es;
  int n = EPM_STAGE_COUNT < 16 ? EPM_STAGE_COUNT : 16;
  const epm_engine_t *eng = epm_group_last_engine(w->group);
  epm_engine_stats(eng, &es);
  /* The step's per-expert load (the counters exist once the model loaded). */
  if (st->n_experts > 0 && epm_engine_expert_load(eng, NULL, w->load, st->n_experts) == EPM_OK) {
    pthread_mutex_lock(&st->mu);
    for (int64_t e = 0; e < st->n_experts; e++) {
      st->expert_tokens_last[e] = w->load[e];
      st->expert_tokens[e] += w->load[e];
    }
    pthread_mutex_unlock(&st->mu);
  }
  for (int i = 0; i < n; i++) {
    names[i] = epm_engine_stage_name((epm_engine_stage_t)i);
    last[i] = es.last_s[i];
  }
  pthread_mutex_lock(&st->mu);
  st->nstages = n;
  for (int i = 0; i < n; i++) {
    st->stage_name[i] = names[i];
    st->stage_last[i] = last[i];
    st->stage_sum[i] += last[i];
  }
  st->dispatch_last = epm_dispatch_mode_name(es.last_mode);
  st->dispatch_steps[es.last_mode == EPM_DISPATCH_ALLTOALL]++;
  st->dispatch_sent_last = es.last_dispatch_sent;
  st->dispatch_recv_last = es.last_dispatch_recv;
  st->combine_sent_last = es.last_combine_sent;
  st->combine_recv_last = es.last_combine_recv;
  st->comm_sent_total += es.last_dispatch_sent + es.last_combine_sent;
  st->comm_recv_total += es.last_dispatch_recv + es.last_combine_recv;
  pthread_mutex_unlock(&st->mu);
}

/* The engine's stage boundaries are this rank's progress; the stage that
 * starts next decides whether the rank computes or waits on the others. */
static void on_stage(void *arg, int ended) {
  srv_worker_t *w = arg;
  epm_rendezvous_phase_t next = EPM_RDV_PHASE_COMPUTE;
  switch ((epm_engine_stage_t)ended) {
    case EPM_STAGE_QUANTIZE: /* -> sizes exchange, dispatch */
    case EPM_STAGE_SIZES:
    case EPM_STAGE_EXPERTS: /* -> combine */
      next = EPM_RDV_PHASE_COMM;
      break;
    default:
      break;
  }
  epm_rendezvous_progress(w->rdv, next);
  if (w->in_step_id == UINT64_MAX) return; /* the warm-up */
  if (ended == EPM_STAGE_QUANTIZE) fault_point(w, F_DISPATCH);
  else if (ended == EPM_STAGE_ALLGATHER) fault_point(w, F_EXPERTS);
  else if (ended == EPM_STAGE_EXPERTS) fault_point(w, F_COMBINE);
}

void *srv_worker_stream(srv_t *s) {
  srv_worker_t *w = s->worker;
  return w && w->group ? epm_backend_stream(epm_group_backend(w->group)) : NULL;
}

/* The rendezvous key's layer part: the layer, and the partial dtype above. */
static uint32_t key_layer(const srv_req_t *r) { return r->layer + (uint32_t)r->partial_dtype * SRV_KEY_LAYERS; }

static epm_status_t run_step(srv_worker_t *w, uint32_t layer, uint64_t step_id, const epm_step_opts_t *opts,
                             const epm_group_io_t *io) {
  epm_status_t st;
  epm_rendezvous_progress(w->rdv, EPM_RDV_PHASE_COMPUTE);
  pthread_mutex_lock(&w->mu);
  w->in_step_since = epm_clock_ns();
  w->in_step_id = step_id;
  w->in_step_layer = layer;
  pthread_mutex_unlock(&w->mu);
  if (w->s->cfg.step_delay_ms > 0) {
    struct timespec d = {w->s->cfg.step_delay_ms / 1000, (w->s->cfg.step_delay_ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
  }
  st = opts ? epm_group_step_opts(w->group, layer, opts, io) : epm_group_step(w->group, layer, io);
  epm_rendezvous_progress(w->rdv, EPM_RDV_PHASE_IDLE);
  pthread_mutex_lock(&w->mu);
  w->in_step_since = 0;
  pthread_mutex_unlock(&w->mu);
  if (st == EPM_OK) record_stages(w);
  return st;
}

/* ---- start-up: model, warm-up ---------------------------------------------- */

/* The group from the daemon's options: a checkpoint directory or a preset,
 * the served layers, the capacity; the backend follows the bootstrap's GPU
 * choice (--backend). Collective and agreed across the ranks. */
static int load_model(srv_worker_t *w) {
  srv_t *s = w->s;
  srv_model_info_t info;
  epm_group_info_t gi;
  uint64_t t0 = epm_clock_ns();
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.model_dir = s->cfg.model[0] ? s->cfg.model : NULL;
  gc.preset = s->cfg.preset;
  gc.seed = (uint64_t)s->cfg.seed;
  gc.num_layers = s->cfg.layers;
  /* Under liveness a comm wait is bounded by the heartbeats (a dead peer, a
   * stall), not by its length: a long legal step must not be cut off. */
  gc.comm_timeout_s = w->liveness ? 1e9 : (double)s->cfg.step_timeout_s;
  gc.max_tokens_per_rank = s->cfg.max_tokens_per_rank;
  gc.kernels = strcmp(s->cfg.kernels, "v2") == 0 ? EPM_KERNELS_V2 : EPM_KERNELS_V1;
  /* The dispatch options were checked at start-up (srv_config.c). */
  (void)epm_dispatch_mode_parse(s->cfg.dispatch, &gc.dispatch);
  gc.recv_capacity = s->cfg.recv_capacity;
  gc.workspace_bytes = (size_t)s->cfg.workspace_mb << 20;
  epm_dispatch_cost_default(&gc.dispatch_cost);
  (void)epm_dispatch_cost_parse(s->cfg.dispatch_latency_us, s->cfg.dispatch_gbps, &gc.dispatch_cost);
  gc.redundant_experts = s->cfg.redundant_experts;
  /* Every rank reads the map itself (the group then compares their hashes);
   * the ranks agree on the outcome first so a file unreadable on one node
   * stops all of them before the collective set-up. */
  epm_placement_t pl = EPM_PLACEMENT_INIT;
  if (s->cfg.placement[0]) {
    char why[512] = "";
    int n_bad = 0, first_bad = -1;
    epm_status_t pst = epm_placement_load_file(s->cfg.placement, &pl);
    if (pst == EPM_OK && s->cfg.redundant_experts && s->cfg.redundant_experts != pl.num_slots - pl.num_experts)
      pst = epm_error(EPM_ERR_INVALID_ARG, "--redundant-experts %lld but the placement %s has %lld redundant slots",
                      (long long)s->cfg.redundant_experts, s->cfg.placement, (long long)(pl.num_slots - pl.num_experts));
    if (pst != EPM_OK) snprintf(why, sizeof why, "%s", epm_last_error());
    if (epm_bootstrap_agree(&s->boot, pst == EPM_OK, &n_bad, &first_bad) != EPM_OK || n_bad) {
      if (pst != EPM_OK)
        srv_set_state(s, SRV_ST_FAILED, "loading the model failed: %s", why);
      else
        srv_set_state(s, SRV_ST_FAILED, "loading the model failed: rank %d could not use the placement %s",
                      first_bad, s->cfg.placement);
      epm_placement_free(&pl);
      return 0;
    }
    gc.placement = &pl;
  }
  gc.on_stage = on_stage;
  gc.on_stage_arg = w;
  epm_status_t gst = epm_group_create(&gc, &s->boot, &w->group);
  epm_placement_free(&pl);
  if (gst != EPM_OK) {
    srv_set_state(s, SRV_ST_FAILED, "loading the model failed: %s", epm_last_error());
    return 0;
  }
  epm_group_info(w->group, &gi);
  w->load = calloc((size_t)gi.num_experts, sizeof *w->load);
  uint64_t *tot = calloc((size_t)gi.num_experts, sizeof *tot), *last = calloc((size_t)gi.num_experts, sizeof *last);
  if (!w->load || !tot || !last) {
    free(tot), free(last);
    srv_set_state(s, SRV_ST_FAILED, "no memory for the load counters of %lld experts", (long long)gi.num_experts);
    return 0;
  }
  pthread_mutex_lock(&s->stats.mu);
  s->stats.expert_tokens = tot;
  s->stats.expert_tokens_last = last;
  s->stats.n_experts = gi.num_experts;
  pthread_mutex_unlock(&s->stats.mu);
  memset(&info, 0, sizeof info);
  info.hidden = gi.hidden;
  info.num_experts = gi.num_experts;
  info.top_k = gi.top_k;
  info.num_layers = gi.num_layers;
  info.weight_bytes = gi.weight_bytes;
  info.buffer_bytes = gi.buffer_bytes;
  snprintf(info.model, sizeof info.model, "%s", gi.model);
  snprintf(info.backend, sizeof info.backend, "%s", gi.backend);
  srv_set_info(s, &info);
  srv_set_state(s, SRV_ST_STARTING, "weights loaded; warm-up step pending");
  EPM_LOG(EPM_LOG_INFO, "step", "model %s (H %lld, E %lld, slots [%lld, +%lld) of %lld here, placement %s) on %s loaded in %.2f s",
          s->info.model, (long long)s->info.hidden, (long long)s->info.num_experts, (long long)gi.first_expert,
          (long long)gi.local_experts, (long long)gi.num_slots, s->cfg.placement[0] ? s->cfg.placement : "default",
          s->info.backend, (double)(epm_clock_ns() - t0) * 1e-9);
  uv_async_send(&s->wake);
  return 1;
}

/* Every rank at the same point of its life, so a direct collective is safe. */
static int warm_up(srv_worker_t *w) {
  srv_t *s = w->s;
  int64_t m = s->cfg.warmup_tokens < s->cfg.max_tokens_per_rank ? s->cfg.warmup_tokens : s->cfg.max_tokens_per_rank;
  uint16_t *x = calloc((size_t)(m * s->info.hidden + 1), 2), *y = calloc((size_t)(m * s->info.hidden + 1), 2);
  float *lg = calloc((size_t)(m * s->info.num_experts + 1), 4);
  uint64_t seed = UINT64_C(0x2545F4914F6CDD1D) ^ (uint64_t)s->rank;
  epm_status_t st;
  for (int64_t i = 0; x && i < m * s->info.hidden; i++) {
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    x[i] = (uint16_t)(0x3c00u + (seed & 0x7f)) ^ (uint16_t)((seed >> 8) & 0x8000u); /* |v| in [2^-7, 2^-6) */
  }
  /* The first served layer (layer 0 of a preset; a checkpoint's first MoE layer). */
  const int64_t layer = epm_group_layer_id(w->group, 0);
  epm_group_io_t io = {EPM_MEM_HOST, x, lg, y, m};
  st = x && y && lg ? run_step(w, (uint32_t)layer, UINT64_MAX, NULL, &io) : epm_error(EPM_ERR_NOMEM, "warm-up buffers");
  free(x), free(y), free(lg);
  if (st != EPM_OK) {
    srv_set_state(s, SRV_ST_FAILED, "warm-up step failed: %s", epm_last_error());
    return 0;
  }
  srv_set_state(s, SRV_ST_READY, "%s", "");
  EPM_LOG(EPM_LOG_INFO, "step", "ready: warm-up step across %d ranks done", s->size);
  uv_async_send(&s->wake);
  return 1;
}

/* ---- one request ------------------------------------------------------------- */

/* Where the request's x / logits / y are. Device memory mapped from the
 * client (CUDA IPC / cuMem fd) goes to the engine in place: no staging copy.
 * On a backend without device memory it is refused, and the rank still joins
 * the step with no tokens so the others are not left inside a collective. */
static epm_status_t request_io(srv_worker_t *w, const srv_req_t *r, epm_group_io_t *io) {
  io->mem = EPM_MEM_HOST;
  io->x = r->x;
  io->logits = r->logits;
  io->y = r->y;
  io->m = r->m;
  if (r->data_mode != EPM_DATA_DEVICE) return EPM_OK;
  if (!epm_backend_is_device(epm_group_backend(w->group))) {
    io->x = NULL, io->logits = NULL, io->y = NULL, io->m = 0;
    return epm_error(EPM_ERR_INVALID_ARG, "device-memory FORWARD on rank %d, but this daemon runs the %s backend",
                     w->s->rank, w->s->info.backend);
  }
  const uint64_t base = epm_devmem_ptr(r->dev);
  io->mem = EPM_MEM_DEVICE;
  io->x = (const epm_bf16_t *)(uintptr_t)(base + r->x_off);
  io->logits = (const float *)(uintptr_t)(base + r->logits_off);
  io->y = (epm_bf16_t *)(uintptr_t)(base + r->y_off);
  return EPM_OK;
}

/* GO: run the head request's step and hand it back. */
static void run_request(srv_worker_t *w, srv_req_t *r) {
  srv_t *s = w->s;
  epm_group_io_t io;
  r->t_go_ns = epm_clock_ns();
  epm_status_t ist = request_io(w, r, &io);
  char ierr[256] = "";
  if (ist != EPM_OK) snprintf(ierr, sizeof ierr, "%s", epm_last_error());
  epm_step_opts_t opts = {(r->flags & EPM_FWD_F_SHARED_EXPERT) != 0, (epm_dtype_t)r->partial_dtype};
  epm_status_t st = run_step(w, r->layer, r->step_id, &opts, &io);
  if (st == EPM_OK && ist != EPM_OK) st = epm_error(ist, "%s", ierr);
  r->t_done_ns = epm_clock_ns();
  r->st = st;
  if (st != EPM_OK) snprintf(r->err, sizeof r->err, "%s", epm_last_error());
  if (st == EPM_ERR_ABORTED || st == EPM_ERR_MPI || st == EPM_ERR_NCCL || st == EPM_ERR_CUDA) {
    /* The comm is gone: fail-stop (main exits non-zero; the launcher ends the group). */
    srv_set_state(s, SRV_ST_FAILED, "step (layer %u, id %llu) broke the communicator: %s", r->layer,
                  (unsigned long long)r->step_id, r->err);
  }
  push_done(w, r);
}

static void fmt_ranks(char *out, size_t n, const int *r, int k) {
  size_t off = 0;
  out[0] = '\0';
  for (int i = 0; i < k && off + 12 < n; i++) off += (size_t)snprintf(out + off, n - off, "%s%d", i ? "," : "", r[i]);
}

/* ABORT: the request fails with the group's reason. */
static void abort_request(srv_worker_t *w, srv_req_t *r, const epm_rendezvous_event_t *ev) {
  srv_t *s = w->s;
  char ranks[160];
  switch (ev->reason) {
    case EPM_RDV_ABORT_TIMEOUT:
      fmt_ranks(ranks, sizeof ranks, ev->missing, ev->nmissing);
      EPM_LOG(EPM_LOG_WARN, "step",
              "step (layer %u, id %llu) aborted: not all ranks joined within --step-timeout %llds; missing ranks %s",
              r->layer, (unsigned long long)r->step_id, (long long)s->cfg.step_timeout_s,
              ev->nmissing ? ranks : "none");
      fail_req(w, r, EPM_ERR_TIMEOUT,
               "step (layer %u, id %llu) failed on every rank: not all ranks joined within %llds; missing ranks %s",
               r->layer, (unsigned long long)r->step_id, (long long)s->cfg.step_timeout_s,
               ev->nmissing ? ranks : "none");
      break;
    case EPM_RDV_ABORT_CANCELLED:
      EPM_LOG(EPM_LOG_INFO, "step", "step (layer %u, id %llu) cancelled: its client on rank %d disconnected", r->layer,
              (unsigned long long)r->step_id, ev->cancelled_by);
      fail_req(w, r, EPM_ERR_ABORTED,
               "step (layer %u, id %llu) cancelled on every rank: its client on rank %d disconnected before the "
               "step ran", r->layer, (unsigned long long)r->step_id, ev->cancelled_by);
      break;
    case EPM_RDV_ABORT_LATE:
      if (ev->cancelled_by >= 0)
        fail_req(w, r, EPM_ERR_ABORTED,
                 "step (layer %u, id %llu) was already cancelled (its client on rank %d disconnected); rank %d joined "
                 "after", r->layer, (unsigned long long)r->step_id, ev->cancelled_by, s->rank);
      else
        fail_req(w, r, EPM_ERR_TIMEOUT,
                 "step (layer %u, id %llu) was already aborted after --step-timeout; rank %d joined too late",
                 r->layer, (unsigned long long)r->step_id, s->rank);
      break;
    case EPM_RDV_ABORT_SHUTDOWN:
      fail_req(w, r, EPM_ERR_ABORTED, "step (layer %u, id %llu) not run: the group is shutting down", r->layer,
               (unsigned long long)r->step_id);
      break;
    case EPM_RDV_ABORT_LIMIT:
      fail_req(w, r, EPM_ERR_OVERFLOW, "step (layer %u, id %llu) refused: rank %d already has the most steps waiting "
               "that the group allows", r->layer, (unsigned long long)r->step_id, s->rank);
      break;
    default:
      fail_req(w, r, EPM_ERR_INTERNAL, "step (layer %u, id %llu) refused by the rendezvous (%s)", r->layer,
               (unsigned long long)r->step_id, epm_rendezvous_abort_name(ev->reason));
      break;
  }
}

/* ---- the worker loop -------------------------------------------------------- */

static int shutdown_asked(srv_worker_t *w) {
  int asked;
  pthread_mutex_lock(&w->mu);
  asked = w->shutdown_asked;
  pthread_mutex_unlock(&w->mu);
  return asked;
}

/* The joined request of a key; unlinked when take. */
static srv_req_t *find_joined(srv_worker_t *w, uint32_t layer, uint64_t step_id, int take) {
  for (srv_req_t **p = &w->joined; *p; p = &(*p)->next) {
    srv_req_t *r = *p;
    if (key_layer(r) != layer || r->step_id != step_id) continue;
    if (take) {
      *p = r->next;
      r->next = NULL;
    }
    return r;
  }
  return NULL;
}

/* What this rank does next, before the poll: fail what waits once the group
 * drains, else join every request that arrived and withdraw the joined ones
 * whose client left. */
static epm_status_t feed(srv_worker_t *w, int draining) {
  srv_t *s = w->s;
  srv_req_t *r;
  if (draining) {
    while ((r = pop_queue(w)) != NULL)
      fail_req(w, r, EPM_ERR_ABORTED, "daemon on rank %d is shutting down; step (layer %u, id %llu) not run", s->rank,
               r->layer, (unsigned long long)r->step_id);
    return EPM_OK; /* the joined ones get their ABORT(SHUTDOWN) from the group */
  }
  while ((r = pop_queue(w)) != NULL) {
    if (atomic_load(&r->cancelled)) {
      fail_req(w, r, EPM_ERR_ABORTED, "client left before step (layer %u, id %llu) was joined", r->layer,
               (unsigned long long)r->step_id);
      continue;
    }
    if (r->layer >= SRV_KEY_LAYERS || !epm_group_has_layer(w->group, r->layer)) {
      fail_req(w, r, EPM_ERR_INVALID_ARG, "layer %u is not served by this daemon (model %s, %lld layers)", r->layer,
               s->info.model, (long long)s->info.num_layers);
      continue;
    }
    if (find_joined(w, key_layer(r), r->step_id, 0)) {
      fail_req(w, r, EPM_ERR_INVALID_ARG,
               "another FORWARD of step (layer %u, id %llu) already waits on rank %d: step ids must be unique "
               "among the steps in flight", r->layer, (unsigned long long)r->step_id, s->rank);
      continue;
    }
    epm_status_t st = epm_rendezvous_join(w->rdv, key_layer(r), r->step_id, r->m);
    if (st == EPM_ERR_INVALID_ARG || st == EPM_ERR_ABORTED) { /* too many waiting here, or shutting down */
      fail_req(w, r, st == EPM_ERR_ABORTED ? EPM_ERR_ABORTED : EPM_ERR_OVERFLOW, "%s", epm_last_error());
      continue;
    }
    EPM_TRY(st);
    r->next = w->joined;
    w->joined = r;
    w->joined_ns = epm_clock_ns();
    fault_point(w, F_RENDEZVOUS);
  }
  pthread_mutex_lock(&w->mu);
  int cancels = w->cancels;
  w->cancels = 0;
  pthread_mutex_unlock(&w->mu);
  for (r = w->joined; cancels && r; r = r->next)
    if (atomic_load(&r->cancelled) && !r->cancel_sent) {
      EPM_TRY(epm_rendezvous_cancel(w->rdv, key_layer(r), r->step_id));
      r->cancel_sent = 1;
    }
  return EPM_OK;
}

/* Back off while idle (to 2 ms) so an idle daemon costs ~no CPU; a joined step
 * polls at <= 0.2 ms so GO is seen quickly. Submit, cancel and shutdown wake it. */
static void idle_wait(srv_worker_t *w, long *idle_ns, int left) {
  /* For the first SRV_SPIN_NS after a join it only yields: the other ranks'
   * joins of a step usually arrive within microseconds, and a sleep there
   * would add its whole length to every step (the doorbell path's budget). */
  if (w->joined && epm_clock_ns() - w->joined_ns < SRV_SPIN_NS) {
    sched_yield();
    return;
  }
  long cap = w->joined ? 200000 : 2000000;
  struct timespec until;
  *idle_ns = *idle_ns * 2 > cap ? cap : *idle_ns * 2;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_nsec += *idle_ns;
  if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
  pthread_mutex_lock(&w->mu);
  if (!w->q_head && !w->cancels && !(w->shutdown_asked && !left)) pthread_cond_timedwait(&w->wake, &w->mu, &until);
  pthread_mutex_unlock(&w->mu);
}

static epm_status_t serve(srv_worker_t *w) {
  srv_t *s = w->s;
  int left = 0, drained = 0;
  long idle_ns = 50000;
  w->t_ready = epm_clock_ns();
  while (!drained) {
    epm_rendezvous_event_t ev;
    int progress = 0;
    if (!left && shutdown_asked(w)) {
      EPM_TRY(epm_rendezvous_leave(w->rdv));
      left = progress = 1;
    }
    EPM_TRY(feed(w, left || w->shutdown_seen));
    EPM_TRY(epm_rendezvous_poll(w->rdv, &ev));
    if (ev.kind == EPM_RDV_SHUTDOWN) {
      w->shutdown_seen = 1;
      srv_set_state(s, SRV_ST_DRAINING, "group shutdown");
      uv_async_send(&s->wake);
    } else if (ev.kind == EPM_RDV_GO || ev.kind == EPM_RDV_ABORT) {
      srv_req_t *r = find_joined(w, ev.layer, ev.step_id, 1);
      if (!r)
        return epm_error(EPM_ERR_INTERNAL, "rendezvous answered step (layer %u, id %llu), which rank %d has not joined",
                         ev.layer, (unsigned long long)ev.step_id, s->rank);
      if (ev.kind == EPM_RDV_GO) run_request(w, r); /* even when its client left: the others are in it */
      else abort_request(w, r, &ev);
    }
    progress |= ev.kind != EPM_RDV_NONE;
    if (w->shutdown_seen && !w->joined && !epm_rendezvous_joined(w->rdv))
      EPM_TRY(epm_rendezvous_drain(w->rdv, &drained));
    if (!w->joined && epm_clock_ns() - w->t_ready > 500000000ull) fault_point(w, F_IDLE);
    if (progress) idle_ns = 20000;
    else idle_wait(w, &idle_ns, left);
  }
  EPM_LOG(EPM_LOG_INFO, "step", "worker drained; leaving");
  return EPM_OK;
}

/* The rendezvous with heartbeats when asked for and MPI allows a control
 * thread; otherwise without (the watchdog then bounds steps by wall time). */
static epm_status_t create_rendezvous(srv_worker_t *w) {
  srv_t *s = w->s;
  epm_rendezvous_t *r = NULL;
  epm_rendezvous_opts_t ro = {.timeout_s = (double)s->cfg.step_timeout_s,
                              .liveness_s = s->cfg.liveness_s,
                              .stall_s = s->cfg.liveness_s > 0 ? (double)s->cfg.step_timeout_s : 0};
  epm_status_t st = epm_rendezvous_create(&s->boot, &ro, &r);
  if (st == EPM_ERR_NOT_SUPPORTED && ro.liveness_s > 0) { /* every rank has the same MPI: all retry alike */
    EPM_LOG(EPM_LOG_WARN, "step", "no heartbeats (%s); steps are bounded by --step-timeout %llds of wall time instead",
            epm_last_error(), (long long)s->cfg.step_timeout_s);
    ro.liveness_s = ro.stall_s = 0;
    st = epm_rendezvous_create(&s->boot, &ro, &r);
  }
  EPM_TRY(st);
  pthread_mutex_lock(&w->mu);
  w->rdv = r;
  w->liveness = ro.liveness_s > 0;
  pthread_mutex_unlock(&w->mu);
  if (w->liveness && s->rank == 0)
    EPM_LOG(EPM_LOG_INFO, "step", "liveness: heartbeats every %.2f s; a rank silent for %.1f s or a step with no "
            "progress for %llds fails the group", ro.liveness_s / 5, ro.liveness_s, (long long)s->cfg.step_timeout_s);
  return EPM_OK;
}

static void *worker_main(void *arg) {
  srv_worker_t *w = arg;
  srv_t *s = w->s;
  fault_parse(w);
  /* The rendezvous first: it is collective like the backend's set-up, and
   * every rank creates both in the same order. */
  if (create_rendezvous(w) != EPM_OK)
    srv_set_state(s, SRV_ST_FAILED, "control plane: %s", epm_last_error());
  else if (load_model(w) && warm_up(w) && serve(w) != EPM_OK)
    srv_set_state(s, SRV_ST_FAILED, "control plane on rank %d: %s", s->rank, epm_last_error());
  epm_group_destroy(w->group);
  w->group = NULL;
  free(w->load);
  w->load = NULL;
  pthread_mutex_lock(&w->mu);
  epm_rendezvous_t *rdv = w->rdv;
  w->rdv = NULL;
  pthread_mutex_unlock(&w->mu);
  if (srv_get_state(s, NULL, 0) != SRV_ST_FAILED) epm_rendezvous_destroy(rdv); /* collective: drained ranks only */
  {
    srv_req_t *r;
    while ((r = w->joined) != NULL) {
      w->joined = r->next;
      fail_req(w, r, EPM_ERR_ABORTED, "daemon on rank %d stopped", s->rank);
    }
    while ((r = pop_queue(w)) != NULL) fail_req(w, r, EPM_ERR_ABORTED, "daemon on rank %d stopped", s->rank);
  }
  pthread_mutex_lock(&w->mu);
  w->finished = 1;
  pthread_mutex_unlock(&w->mu);
  uv_async_send(&s->wake);
  return NULL;
}

epm_status_t srv_worker_start(srv_t *s) {
  srv_worker_t *w = calloc(1, sizeof *w);
  int rc;
  if (!w) return epm_error(EPM_ERR_NOMEM, "worker state");
  w->s = s;
  pthread_mutex_init(&w->mu, NULL);
  {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_condattr_destroy(&ca);
  }
  s->worker = w;
  rc = pthread_create(&w->thread, NULL, worker_main, w);
  if (rc) return epm_error(EPM_ERR_SYSTEM, "pthread_create: %s", strerror(rc));
  return EPM_OK;
}

void srv_worker_join(srv_t *s) {
  srv_worker_t *w = s->worker;
  if (!w) return;
  pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->wake);
  free(w);
  s->worker = NULL;
}
