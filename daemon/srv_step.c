/* srv_step.c — the worker thread: it owns every MPI call after MPI_Init, runs
 * the warm-up and every collective step, and agrees with the other ranks on
 * which step to run next.
 *
 * Rendezvous (why: a collective entered by some ranks only would hang them,
 * and MPI collectives cannot be cancelled). Before a step, each rank's worker
 * sends JOIN(layer, step_id, m) for the FORWARD at the head of its queue to
 * rank 0's coordinator over a private control communicator, using only
 * point-to-point messages that never block for long. The coordinator answers
 *   GO(key)             once every rank joined the same key: all run the step;
 *   ABORT(key, missing) when the first join of a key is older than
 *                       --step-timeout: the joined ranks fail their FORWARD with
 *                       EPM_ERR_TIMEOUT naming the ranks that never joined; a
 *                       late join of an aborted key is refused the same way;
 *   SHUTDOWN            when any rank asked to drain (SIGTERM, SHUTDOWN frame):
 *                       open joins are aborted, queues fail with EPM_ERR_ABORTED,
 *                       and all workers meet in an MPI_Ibarrier before exiting.
 * What this does NOT cover: a rank that dies or hangs after GO, inside the
 * collective itself. The main thread's watchdog sees a step running longer
 * than --step-timeout, fails it, marks the daemon failed and exits non-zero so
 * the launcher tears the group down (fail-stop; docs/ARCHITECTURE.md "Daemon").
 */
#include <errno.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "devmem.h"
#include "epmoe/log.h"
#include "srv_backend.h"

enum { TAG_JOIN = 101, TAG_CTRL = 102, TAG_LEAVE = 103 };
enum { CTRL_GO = 1, CTRL_ABORT = 2, CTRL_SHUTDOWN = 3 };
enum { ABORTED_RING = 32 };

typedef struct {
  int joined;
  uint32_t layer;
  uint64_t step_id;
  uint64_t t_ns;
} join_t;

typedef struct {
  int used;
  uint32_t layer;
  uint64_t step_id;
  uint64_t t_ns;
  char why[200];
} aborted_t;

struct srv_worker {
  srv_t *s;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t wake; /* signalled on submit / shutdown so an idle worker reacts at once */
  srv_req_t *q_head, *q_tail;       /* submitted, not started */
  srv_req_t *d_head, *d_tail;       /* done, for the loop */
  int shutdown_asked;               /* set by the loop */
  char shutdown_why[128];
  int finished;
  uint64_t in_step_since;           /* ns; 0 when not inside a collective */
  uint64_t in_step_id;
  uint32_t in_step_layer;
  MPI_Comm ctl, data;
  const srv_backend_ops_t *ops;
  void *ctx;
  /* coordinator state (rank 0) */
  join_t *joins;
  aborted_t aborted[ABORTED_RING];
  int ab_next;
  int shutdown_sent;
  int64_t *ctrl_msg; /* [4 + size] */
};

uint64_t srv_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void srv_req_free(srv_req_t *r) {
  if (!r) return;
  free(r->frame);
  if (r->data_mode != EPM_DATA_SHM) free(r->y);
  free(r);
}

/* Device mode: the engine takes host memory, so x and logits are staged
 * through host buffers (one D2H copy in, one H2D copy of y out). */
static epm_status_t stage_in(srv_req_t *r, int64_t hidden, int64_t experts) {
  size_t xb = (size_t)(r->m * hidden) * 2, lb = (size_t)(r->m * experts) * 4;
  r->frame = malloc(xb + lb + 4);
  r->y = malloc(xb + 2);
  if (!r->frame || !r->y) return epm_error(EPM_ERR_NOMEM, "host staging of %zu bytes", xb + lb);
  EPM_TRY(epm_devmem_to_host(r->dev, r->x_off, r->frame, xb));
  EPM_TRY(epm_devmem_to_host(r->dev, r->logits_off, r->frame + xb + (xb % 4), lb));
  r->x = (const uint16_t *)r->frame;
  r->logits = (const float *)(r->frame + xb + (xb % 4));
  return EPM_OK;
}

static void push_done(srv_worker_t *w, srv_req_t *r) {
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
  r->t_done_ns = srv_now_ns();
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
  return since ? srv_now_ns() - since : 0;
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
  int n;
  if (!w->ops->stages) return;
  n = w->ops->stages(w->ctx, names, last, 16);
  pthread_mutex_lock(&st->mu);
  st->nstages = n;
  for (int i = 0; i < n; i++) {
    st->stage_name[i] = names[i];
    st->stage_last[i] = last[i];
    st->stage_sum[i] += last[i];
  }
  pthread_mutex_unlock(&st->mu);
}

static epm_status_t run_step(srv_worker_t *w, uint32_t layer, uint64_t step_id, const uint16_t *x,
                             const float *logits, int64_t m, uint16_t *y) {
  epm_status_t st;
  pthread_mutex_lock(&w->mu);
  w->in_step_since = srv_now_ns();
  w->in_step_id = step_id;
  w->in_step_layer = layer;
  pthread_mutex_unlock(&w->mu);
  if (w->s->cfg.step_delay_ms > 0) {
    struct timespec d = {w->s->cfg.step_delay_ms / 1000, (w->s->cfg.step_delay_ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
  }
  st = w->ops->step(w->ctx, layer, x, logits, m, y);
  pthread_mutex_lock(&w->mu);
  w->in_step_since = 0;
  pthread_mutex_unlock(&w->mu);
  if (st == EPM_OK) record_stages(w);
  return st;
}

/* ---- coordinator (rank 0) --------------------------------------------------- */

static void send_ctrl(srv_worker_t *w, int dst, int64_t kind, uint32_t layer, uint64_t step_id,
                      const int *missing, int nmissing) {
  int64_t *m = w->ctrl_msg;
  m[0] = kind;
  m[1] = layer;
  m[2] = (int64_t)step_id;
  m[3] = nmissing;
  for (int i = 0; i < nmissing; i++) m[4 + i] = missing[i];
  MPI_Send(m, 4 + w->s->size, MPI_INT64_T, dst, TAG_CTRL, w->ctl);
}

static void fmt_ranks(char *out, size_t n, const int *r, int k) {
  size_t off = 0;
  out[0] = '\0';
  for (int i = 0; i < k && off + 12 < n; i++) off += (size_t)snprintf(out + off, n - off, "%s%d", i ? "," : "", r[i]);
}

static void coord_abort_key(srv_worker_t *w, uint32_t layer, uint64_t step_id, const char *why_prefix) {
  int size = w->s->size, nmiss = 0;
  int *missing = calloc((size_t)size, sizeof(int));
  char ranks[160];
  aborted_t *a;
  if (!missing) return;
  for (int r = 0; r < size; r++)
    if (!(w->joins[r].joined && w->joins[r].layer == layer && w->joins[r].step_id == step_id)) missing[nmiss++] = r;
  fmt_ranks(ranks, sizeof ranks, missing, nmiss);
  a = &w->aborted[w->ab_next];
  w->ab_next = (w->ab_next + 1) % ABORTED_RING;
  a->used = 1;
  a->layer = layer;
  a->step_id = step_id;
  a->t_ns = srv_now_ns();
  snprintf(a->why, sizeof a->why, "%s; missing ranks %s", why_prefix, nmiss ? ranks : "none");
  EPM_LOG(EPM_LOG_WARN, "step", "step (layer %u, id %llu) aborted: %s", layer, (unsigned long long)step_id, a->why);
  for (int r = 0; r < size; r++) {
    if (w->joins[r].joined && w->joins[r].layer == layer && w->joins[r].step_id == step_id) {
      send_ctrl(w, r, CTRL_ABORT, layer, step_id, missing, nmiss);
      w->joins[r].joined = 0;
    }
  }
  free(missing);
}

static const aborted_t *find_aborted(srv_worker_t *w, uint32_t layer, uint64_t step_id) {
  uint64_t horizon = 2ull * (uint64_t)w->s->cfg.step_timeout_s * 1000000000ull;
  for (int i = 0; i < ABORTED_RING; i++) {
    const aborted_t *a = &w->aborted[i];
    if (a->used && a->layer == layer && a->step_id == step_id && srv_now_ns() - a->t_ns < horizon) return a;
  }
  return NULL;
}

static int coord_poll(srv_worker_t *w) {
  int size = w->s->size, progress = 0, flag;
  MPI_Status mst;
  uint64_t timeout_ns = (uint64_t)w->s->cfg.step_timeout_s * 1000000000ull;

  for (;;) { /* joins */
    int64_t j[3];
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_JOIN, w->ctl, &flag, &mst);
    if (!flag) break;
    MPI_Recv(j, 3, MPI_INT64_T, mst.MPI_SOURCE, TAG_JOIN, w->ctl, MPI_STATUS_IGNORE);
    progress = 1;
    int src = mst.MPI_SOURCE;
    uint32_t layer = (uint32_t)j[0];
    uint64_t step_id = (uint64_t)j[1];
    const aborted_t *a = find_aborted(w, layer, step_id);
    if (w->shutdown_sent) {
      send_ctrl(w, src, CTRL_ABORT, layer, step_id, NULL, -1);
      continue;
    }
    if (a) {
      send_ctrl(w, src, CTRL_ABORT, layer, step_id, NULL, -2);
      continue;
    }
    w->joins[src].joined = 1;
    w->joins[src].layer = layer;
    w->joins[src].step_id = step_id;
    w->joins[src].t_ns = srv_now_ns();
    int all = 1;
    for (int r = 0; r < size; r++)
      if (!(w->joins[r].joined && w->joins[r].layer == layer && w->joins[r].step_id == step_id)) all = 0;
    if (all) {
      for (int r = 0; r < size; r++) {
        send_ctrl(w, r, CTRL_GO, layer, step_id, NULL, 0);
        w->joins[r].joined = 0;
      }
    }
  }
  for (;;) { /* leave = someone wants the group to drain */
    int64_t why;
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_LEAVE, w->ctl, &flag, &mst);
    if (!flag) break;
    MPI_Recv(&why, 1, MPI_INT64_T, mst.MPI_SOURCE, TAG_LEAVE, w->ctl, MPI_STATUS_IGNORE);
    progress = 1;
    if (!w->shutdown_sent) {
      EPM_LOG(EPM_LOG_INFO, "step", "rank %d asked the group to shut down", mst.MPI_SOURCE);
      for (int r = 0; r < size; r++)
        if (w->joins[r].joined) coord_abort_key(w, w->joins[r].layer, w->joins[r].step_id, "the group is shutting down");
      for (int r = 0; r < size; r++) send_ctrl(w, r, CTRL_SHUTDOWN, 0, 0, NULL, 0);
      w->shutdown_sent = 1;
    }
  }
  /* timeouts: the oldest join of a key decides */
  uint64_t now = srv_now_ns();
  for (int r = 0; r < size; r++) {
    if (w->joins[r].joined && now - w->joins[r].t_ns > timeout_ns) {
      char why[96];
      snprintf(why, sizeof why, "not all ranks joined within --step-timeout %llds",
               (long long)w->s->cfg.step_timeout_s);
      coord_abort_key(w, w->joins[r].layer, w->joins[r].step_id, why);
      progress = 1;
    }
  }
  return progress;
}

/* ---- the worker loop -------------------------------------------------------- */

static void *worker_main(void *arg) {
  srv_worker_t *w = arg;
  srv_t *s = w->s;
  srv_req_t *cur = NULL;
  int joined = 0, leave_sent = 0, shutdown_seen = 0, barrier_started = 0;
  long idle_ns = 50000;
  MPI_Request barrier = MPI_REQUEST_NULL;
  epm_status_t st;
  uint64_t t0 = srv_now_ns();

  {
    srv_model_info_t info;
    memset(&info, 0, sizeof info);
    st = w->ops->create(&s->cfg, w->data, &info, &w->ctx);
    if (st == EPM_OK) srv_set_info(s, &info);
  }
  if (st != EPM_OK) {
    srv_set_state(s, SRV_ST_FAILED, "loading the model failed: %s", epm_last_error());
    uv_async_send(&s->wake);
    goto out;
  }
  srv_set_state(s, SRV_ST_STARTING, "weights loaded; warm-up step pending");
  EPM_LOG(EPM_LOG_INFO, "step", "model %s (H %lld, E %lld) on %s loaded in %.2f s", s->info.model,
          (long long)s->info.hidden, (long long)s->info.num_experts, s->info.backend,
          (double)(srv_now_ns() - t0) * 1e-9);
  uv_async_send(&s->wake);
  {
    /* Warm-up: every rank, same point in its life, so a direct collective is safe. */
    int64_t m = s->cfg.warmup_tokens < s->cfg.max_tokens_per_rank ? s->cfg.warmup_tokens : s->cfg.max_tokens_per_rank;
    uint16_t *x = calloc((size_t)(m * s->info.hidden + 1), 2), *y = calloc((size_t)(m * s->info.hidden + 1), 2);
    float *lg = calloc((size_t)(m * s->info.num_experts + 1), 4);
    uint64_t seed = UINT64_C(0x2545F4914F6CDD1D) ^ (uint64_t)s->rank;
    for (int64_t i = 0; x && i < m * s->info.hidden; i++) {
      seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
      x[i] = (uint16_t)(0x3c00u + (seed & 0x7f)) ^ (uint16_t)((seed >> 8) & 0x8000u); /* |v| in [2^-7, 2^-6) */
    }
    st = x && y && lg ? run_step(w, 0, UINT64_MAX, x, lg, m, y) : epm_error(EPM_ERR_NOMEM, "warm-up buffers");
    free(x), free(y), free(lg);
    if (st != EPM_OK) {
      srv_set_state(s, SRV_ST_FAILED, "warm-up step failed: %s", epm_last_error());
      uv_async_send(&s->wake);
      goto out;
    }
  }
  srv_set_state(s, SRV_ST_READY, "%s", "");
  EPM_LOG(EPM_LOG_INFO, "step", "ready: warm-up step across %d ranks done", s->size);
  uv_async_send(&s->wake);

  for (;;) {
    int progress = 0, flag, asked;
    MPI_Status mst;
    pthread_mutex_lock(&w->mu);
    asked = w->shutdown_asked;
    pthread_mutex_unlock(&w->mu);

    if (asked && !leave_sent) {
      int64_t why = 0;
      MPI_Send(&why, 1, MPI_INT64_T, 0, TAG_LEAVE, w->ctl);
      leave_sent = 1;
      progress = 1;
    }
    if (shutdown_seen || asked) { /* no new joins; fail what waits locally */
      srv_req_t *r;
      while ((r = pop_queue(w)) != NULL)
        fail_req(w, r, EPM_ERR_ABORTED, "daemon on rank %d is shutting down; step (layer %u, id %llu) not run",
                 s->rank, r->layer, (unsigned long long)r->step_id);
      if (cur && !joined) {
        fail_req(w, cur, EPM_ERR_ABORTED, "daemon on rank %d is shutting down", s->rank);
        cur = NULL;
      }
    } else if (!cur) {
      cur = pop_queue(w);
      if (cur && w->ops->has_layer && !w->ops->has_layer(w->ctx, cur->layer)) {
        fail_req(w, cur, EPM_ERR_INVALID_ARG, "layer %u is not served by this daemon (model %s, %lld layers)",
                 cur->layer, s->info.model, (long long)s->info.num_layers);
        cur = NULL;
      }
    }
    if (cur && !joined) {
      int64_t j[3] = {cur->layer, (int64_t)cur->step_id, cur->m};
      MPI_Send(j, 3, MPI_INT64_T, 0, TAG_JOIN, w->ctl);
      joined = 1;
      progress = 1;
    }
    if (s->rank == 0) progress |= coord_poll(w);

    MPI_Iprobe(0, TAG_CTRL, w->ctl, &flag, &mst);
    if (flag) {
      int64_t *m = w->ctrl_msg;
      MPI_Recv(m, 4 + s->size, MPI_INT64_T, 0, TAG_CTRL, w->ctl, MPI_STATUS_IGNORE);
      progress = 1;
      if (m[0] == CTRL_SHUTDOWN) {
        if (!shutdown_seen) {
          shutdown_seen = 1;
          srv_set_state(s, SRV_ST_DRAINING, "group shutdown");
          uv_async_send(&s->wake);
        }
      } else if (!cur || !joined || (uint32_t)m[1] != cur->layer || (uint64_t)m[2] != cur->step_id) {
        EPM_LOG(EPM_LOG_ERROR, "step", "control message %lld for (layer %lld, id %lld) matches no joined step",
                (long long)m[0], (long long)m[1], (long long)m[2]);
      } else if (m[0] == CTRL_GO) {
        cur->t_go_ns = srv_now_ns();
        /* A staging failure still joins the step (with m = 0 and no data) so
         * the other ranks are not left inside a collective; this FORWARD then
         * reports the staging error. */
        epm_status_t sst = cur->data_mode == EPM_DATA_DEVICE ? stage_in(cur, s->info.hidden, s->info.num_experts) : EPM_OK;
        char serr[256] = "";
        if (sst != EPM_OK) snprintf(serr, sizeof serr, "%s", epm_last_error());
        st = run_step(w, cur->layer, cur->step_id, sst == EPM_OK ? cur->x : NULL, sst == EPM_OK ? cur->logits : NULL,
                      sst == EPM_OK ? cur->m : 0, cur->y);
        if (st == EPM_OK && sst == EPM_OK && cur->data_mode == EPM_DATA_DEVICE)
          sst = epm_devmem_from_host(cur->dev, cur->y_off, cur->y, (size_t)(cur->m * s->info.hidden) * 2);
        if (sst != EPM_OK && st == EPM_OK) {
          st = sst;
          epm_error(sst, "device data of step (layer %u, id %llu): %s", cur->layer, (unsigned long long)cur->step_id,
                    serr[0] ? serr : epm_last_error());
        }
        cur->t_done_ns = srv_now_ns();
        cur->st = st;
        if (st != EPM_OK) snprintf(cur->err, sizeof cur->err, "%s", epm_last_error());
        if (st == EPM_ERR_ABORTED || st == EPM_ERR_MPI || st == EPM_ERR_NCCL || st == EPM_ERR_CUDA) {
          /* The comm is gone: fail-stop (main exits non-zero; the launcher ends the group). */
          srv_set_state(s, SRV_ST_FAILED, "step (layer %u, id %llu) broke the communicator: %s", cur->layer,
                        (unsigned long long)cur->step_id, cur->err);
        }
        push_done(w, cur);
        cur = NULL;
        joined = 0;
      } else if (m[0] == CTRL_ABORT) {
        char ranks[160];
        int n = (int)m[3];
        if (n >= 0) {
          int *rk = malloc(sizeof(int) * (size_t)(n + 1));
          for (int i = 0; rk && i < n; i++) rk[i] = (int)m[4 + i];
          if (rk) fmt_ranks(ranks, sizeof ranks, rk, n);
          free(rk);
          fail_req(w, cur, EPM_ERR_TIMEOUT,
                   "step (layer %u, id %llu) failed on every rank: not all ranks joined within %llds; missing ranks %s",
                   cur->layer, (unsigned long long)cur->step_id, (long long)s->cfg.step_timeout_s, n ? ranks : "none");
        } else if (n == -1) {
          fail_req(w, cur, EPM_ERR_ABORTED, "step (layer %u, id %llu) not run: the group is shutting down",
                   cur->layer, (unsigned long long)cur->step_id);
        } else {
          fail_req(w, cur, EPM_ERR_TIMEOUT, "step (layer %u, id %llu) was already aborted after --step-timeout; rank %d joined too late",
                   cur->layer, (unsigned long long)cur->step_id, s->rank);
        }
        cur = NULL;
        joined = 0;
      }
    }
    if (shutdown_seen && !joined) {
      if (!barrier_started) {
        MPI_Ibarrier(w->ctl, &barrier);
        barrier_started = 1;
      }
      MPI_Test(&barrier, &flag, MPI_STATUS_IGNORE);
      if (flag) break;
    }
    if (progress) {
      idle_ns = 20000;
    } else {
      /* Back off while idle (to 2 ms) so an idle daemon costs ~no CPU; a
       * joined step polls at <= 0.2 ms so GO is seen quickly. */
      long cap = joined || cur ? 200000 : 2000000;
      idle_ns = idle_ns * 2 > cap ? cap : idle_ns * 2;
      struct timespec until;
      clock_gettime(CLOCK_MONOTONIC, &until);
      until.tv_nsec += idle_ns;
      if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
      pthread_mutex_lock(&w->mu);
      if (!w->q_head && !(w->shutdown_asked && !leave_sent)) pthread_cond_timedwait(&w->wake, &w->mu, &until);
      pthread_mutex_unlock(&w->mu);
    }
  }
  EPM_LOG(EPM_LOG_INFO, "step", "worker drained; leaving");
out:
  if (w->ops && w->ctx) w->ops->destroy(w->ctx);
  w->ctx = NULL;
  {
    srv_req_t *r;
    if (cur) fail_req(w, cur, EPM_ERR_ABORTED, "daemon on rank %d stopped", s->rank);
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
  if (strcmp(s->cfg.preset, "mix") == 0 && s->cfg.model[0] == '\0') w->ops = &srv_backend_builtin;
  else w->ops = srv_backend_engine();
  w->joins = calloc((size_t)s->size, sizeof *w->joins);
  w->ctrl_msg = calloc((size_t)s->size + 4, sizeof(int64_t));
  if (!w->joins || !w->ctrl_msg) return epm_error(EPM_ERR_NOMEM, "coordinator state for %d ranks", s->size);
  /* Two private communicators: control messages never mix with step traffic. */
  if (MPI_Comm_dup(MPI_COMM_WORLD, &w->ctl) != MPI_SUCCESS || MPI_Comm_dup(MPI_COMM_WORLD, &w->data) != MPI_SUCCESS)
    return epm_error(EPM_ERR_MPI, "MPI_Comm_dup failed");
  s->worker = w;
  rc = pthread_create(&w->thread, NULL, worker_main, w);
  if (rc) return epm_error(EPM_ERR_SYSTEM, "pthread_create: %s", strerror(rc));
  return EPM_OK;
}

void srv_worker_join(srv_t *s) {
  srv_worker_t *w = s->worker;
  if (!w) return;
  pthread_join(w->thread, NULL);
  MPI_Comm_free(&w->ctl);
  MPI_Comm_free(&w->data);
  free(w->joins);
  free(w->ctrl_msg);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->wake);
  free(w);
  s->worker = NULL;
}
