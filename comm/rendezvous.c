/* SPDX-License-Identifier: Apache-2.0 */
/* rendezvous.c — the MPI driver of epmoe/rendezvous.h: carries joins, cancels,
 * leaves and heartbeats to the coordinator (rendezvous_coord.c, on rank 0) and
 * its answers back, with point-to-point messages that are only ever probed
 * and sent non-blocking, so no call here waits on a peer.
 *
 * Two private duplicates of the EP communicator: `up` (ranks -> coordinator:
 * JOIN, CANCEL, LEAVE, HEARTBEAT) and `down` (coordinator -> ranks: GO, ABORT,
 * SHUTDOWN, HEARTBEAT, FAILED). The coordinator receives `up` with
 * MPI_ANY_TAG so one sender's messages are matched in the order they were
 * sent (MPI's non-overtaking rule holds per receive that could match them
 * all), and nothing of the step's own traffic can ever match a control
 * receive. Every control message of the coordinator to one rank goes over
 * one (communicator, tag), so each rank sees its GOs in the order the
 * coordinator issued them: the step order the group agrees on.
 *
 * With liveness a control thread runs pump() every few milliseconds, so the
 * coordinator keeps answering and heartbeats keep flowing while the caller's
 * thread sits inside a step's collective (MPI_THREAD_MULTIPLE). One mutex
 * guards the state and every MPI call on the two communicators; the caller's
 * join/poll/... take it briefly. Answers for the caller wait in a queue.
 *
 * Drain ends only when nothing is in flight: every rank has sent its LEAVE
 * and seen SHUTDOWN, its sends completed, and the coordinator received all P
 * LEAVEs (so every JOIN before them too); then one MPI_Ibarrier. Heartbeats
 * stop when this rank starts that barrier; what arrived after is discarded by
 * destroy.
 */
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_impl.h"
#include "epmoe/checked.h"
#include "epmoe/log.h"
#include "epmoe/rendezvous.h"
#include "rendezvous_coord.h"

enum { TAG_JOIN = 1, TAG_LEAVE = 2, TAG_CTRL = 3, TAG_CANCEL = 4, TAG_HB = 5 };
/* CTRL message: kind, reason, layer, step_id, total_tokens, nmissing,
 * cancelled_by, fail, failed_rank, silent_ns, missing... */
enum { CTRL_HDR = 10, JOIN_LEN = 3, CANCEL_LEN = 2, HB_LEN = 2, UP_MAX = 3 };

typedef struct {
  MPI_Request req;
  int64_t *buf;
} send_t;

typedef struct {
  uint32_t layer;
  uint64_t step_id;
  int cancel_sent;
} open_t;

typedef struct {
  epm_rendezvous_event_t ev;
  int *missing; /* malloc'd copy, or NULL */
} queued_t;

struct epm_rendezvous {
  MPI_Comm up, down;
  int rank, size, coord_rank;
  pthread_mutex_t mu; /* everything below but the atomics, and MPI on up/down */
  epm__rdv_coord_t *coord; /* on coord_rank only */
  open_t *open;            /* joins waiting for GO/ABORT */
  int nopen, max_open;
  int left;          /* LEAVE sent */
  int shutdown_seen; /* SHUTDOWN received */
  int barrier_started, drained;
  MPI_Request barrier;
  send_t *sends; /* in flight */
  int nsends, sends_cap;
  int64_t *rbuf;   /* [CTRL_HDR + size] */
  int *ev_missing; /* [size] */
  queued_t *q;     /* events for the caller, oldest first */
  int nq, q_cap;
  /* liveness */
  uint64_t live_ns, stall_ns, hb_period_ns;
  uint64_t t_hb_sent, t_coord_heard;
  _Atomic uint64_t progress;
  _Atomic int phase;
  _Atomic int failed;
  pthread_mutex_t fail_mu;
  char fail_why[320];
  /* control thread */
  int thread_on;
  _Atomic int stop;
  pthread_t thread;
};

static epm_status_t rdv_mpi_err(int rc, const char *call) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "unknown MPI error");
  return epm_error(EPM_ERR_MPI, "rendezvous: %s: %s (MPI error code %d)", call, msg, rc);
}

#define RDV_MPI(call, name)                                          \
  do {                                                               \
    int rdv_rc_ = (call);                                            \
    if (rdv_rc_ != MPI_SUCCESS) return rdv_mpi_err(rdv_rc_, (name)); \
  } while (0)

/* destroy cannot return a status: an MPI failure there is logged. 1 = ok. */
static int warn_mpi(int rc, const char *call) {
  if (rc == MPI_SUCCESS) return 1;
  rdv_mpi_err(rc, call);
  EPM_LOG(EPM_LOG_WARN, "rdv", "%s", epm_last_error());
  return 0;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void set_failed(epm_rendezvous_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_failed(epm_rendezvous_t *r, const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&r->fail_mu);
  if (!atomic_load(&r->failed)) { /* the first cause is the one reported */
    va_start(ap, fmt);
    vsnprintf(r->fail_why, sizeof r->fail_why, fmt, ap);
    va_end(ap);
    atomic_store(&r->failed, 1);
    EPM_LOG(EPM_LOG_ERROR, "rdv", "group failed: %s", r->fail_why);
  }
  pthread_mutex_unlock(&r->fail_mu);
}

/* ---- sends in flight -------------------------------------------------------- */

/* Takes ownership of buf (freed once MPI is done with it, or on error). */
static epm_status_t send_async(epm_rendezvous_t *r, int64_t *buf, int n, int dst, int tag, MPI_Comm comm,
                               const char *what) {
  if (r->nsends == r->sends_cap) {
    if (r->sends_cap > INT_MAX / 2) {
      free(buf);
      return epm_error(EPM_ERR_OVERFLOW, "rendezvous: %d sends in flight cannot double", r->sends_cap);
    }
    int cap = r->sends_cap ? 2 * r->sends_cap : 8;
    send_t *p = realloc(r->sends, (size_t)cap * sizeof *p);
    if (!p) {
      free(buf);
      return epm_error(EPM_ERR_NOMEM, "rendezvous: %d sends in flight", cap);
    }
    r->sends = p;
    r->sends_cap = cap;
  }
  int rc = MPI_Isend(buf, n, MPI_INT64_T, dst, tag, comm, &r->sends[r->nsends].req);
  if (rc != MPI_SUCCESS) {
    free(buf);
    return rdv_mpi_err(rc, what);
  }
  r->sends[r->nsends++].buf = buf;
  return EPM_OK;
}

/* A small message up to the coordinator. */
static epm_status_t send_up(epm_rendezvous_t *r, int tag, const int64_t *v, int n, const char *what) {
  int64_t *b = malloc(sizeof(int64_t) * (size_t)n);
  if (!b) return epm_error(EPM_ERR_NOMEM, "rendezvous: %s message", what);
  memcpy(b, v, sizeof(int64_t) * (size_t)n);
  return send_async(r, b, n, r->coord_rank, tag, r->up, what);
}

static epm_status_t progress_sends(epm_rendezvous_t *r) {
  int i = 0;
  while (i < r->nsends) {
    int flag = 0;
    RDV_MPI(MPI_Test(&r->sends[i].req, &flag, MPI_STATUS_IGNORE), "MPI_Test(control send)");
    if (flag) {
      free(r->sends[i].buf);
      r->sends[i] = r->sends[--r->nsends];
    } else {
      i++;
    }
  }
  return EPM_OK;
}

/* ---- coordinator side ---------------------------------------------------------- */

static epm_status_t send_outbox(epm_rendezvous_t *r) {
  const epm__rdv_msg_t *m;
  int n = epm__rdv_coord_outbox(r->coord, &m);
  for (int i = 0; i < n; i++) {
    int64_t *b = malloc(sizeof(int64_t) * (size_t)(CTRL_HDR + m[i].nmissing));
    if (!b) return epm_error(EPM_ERR_NOMEM, "rendezvous: control message to rank %d", m[i].to);
    b[0] = m[i].kind;
    b[1] = m[i].reason;
    b[2] = m[i].layer;
    b[3] = (int64_t)m[i].step_id;
    b[4] = m[i].total_tokens;
    b[5] = m[i].nmissing;
    b[6] = m[i].cancelled_by;
    b[7] = m[i].fail;
    b[8] = m[i].failed_rank;
    b[9] = m[i].silent_ns > INT64_MAX ? INT64_MAX : (int64_t)m[i].silent_ns;
    for (int k = 0; k < m[i].nmissing; k++) b[CTRL_HDR + k] = m[i].missing[k];
    EPM_TRY(send_async(r, b, CTRL_HDR + m[i].nmissing, m[i].to, TAG_CTRL, r->down, "MPI_Isend(control)"));
  }
  return EPM_OK;
}

static epm_status_t check_layer(int64_t v, int from) {
  if (v < 0 || v > UINT32_MAX)
    return epm_error(EPM_ERR_PROTOCOL, "rendezvous: message from rank %d names layer %lld", from, (long long)v);
  return EPM_OK;
}

/* Feed every message that arrived into the coordinator, then its clock. */
static epm_status_t pump_coordinator(epm_rendezvous_t *r) {
  for (;;) {
    int flag = 0, count = 0, want = 0;
    MPI_Status st;
    int64_t msg[UP_MAX];
    RDV_MPI(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, r->up, &flag, &st), "MPI_Iprobe(up)");
    if (!flag) break;
    RDV_MPI(MPI_Get_count(&st, MPI_INT64_T, &count), "MPI_Get_count(up)");
    switch (st.MPI_TAG) {
      case TAG_JOIN: want = JOIN_LEN; break;
      case TAG_LEAVE: want = 1; break;
      case TAG_CANCEL: want = CANCEL_LEN; break;
      case TAG_HB: want = HB_LEN; break;
      default: want = -1; break;
    }
    if (want < 0 || count != want)
      return epm_error(EPM_ERR_PROTOCOL, "rendezvous: message with tag %d and %d values from rank %d", st.MPI_TAG,
                       count, st.MPI_SOURCE);
    RDV_MPI(MPI_Recv(msg, count, MPI_INT64_T, st.MPI_SOURCE, st.MPI_TAG, r->up, MPI_STATUS_IGNORE), "MPI_Recv(up)");
    const uint64_t t = now_ns();
    if (st.MPI_TAG == TAG_JOIN) {
      EPM_TRY(check_layer(msg[0], st.MPI_SOURCE));
      EPM_TRY(epm__rdv_coord_join(r->coord, st.MPI_SOURCE, (uint32_t)msg[0], (uint64_t)msg[1], msg[2], t));
    } else if (st.MPI_TAG == TAG_CANCEL) {
      EPM_TRY(check_layer(msg[0], st.MPI_SOURCE));
      EPM_TRY(epm__rdv_coord_cancel(r->coord, st.MPI_SOURCE, (uint32_t)msg[0], (uint64_t)msg[1], t));
    } else if (st.MPI_TAG == TAG_HB) {
      EPM_TRY(epm__rdv_coord_heartbeat(r->coord, st.MPI_SOURCE, (uint64_t)msg[0], (epm_rendezvous_phase_t)msg[1], t));
    } else {
      if (!epm__rdv_coord_shutdown(r->coord))
        EPM_LOG(EPM_LOG_INFO, "rdv", "rank %d asked the group to shut down", st.MPI_SOURCE);
      EPM_TRY(epm__rdv_coord_leave(r->coord, st.MPI_SOURCE, t));
    }
    EPM_TRY(send_outbox(r));
  }
  EPM_TRY(epm__rdv_coord_tick(r->coord, now_ns()));
  return send_outbox(r);
}

/* ---- rank side ----------------------------------------------------------------- */

static int find_open(const epm_rendezvous_t *r, uint32_t layer, uint64_t step_id) {
  for (int i = 0; i < r->nopen; i++)
    if (r->open[i].layer == layer && r->open[i].step_id == step_id) return i;
  return -1;
}

static epm_status_t enqueue(epm_rendezvous_t *r, const epm_rendezvous_event_t *ev) {
  if (r->nq == r->q_cap) {
    if (r->q_cap > INT_MAX / 2) return epm_error(EPM_ERR_OVERFLOW, "rendezvous: %d queued events cannot double", r->q_cap);
    int cap = r->q_cap ? 2 * r->q_cap : 16;
    queued_t *p = realloc(r->q, (size_t)cap * sizeof *p);
    if (!p) return epm_error(EPM_ERR_NOMEM, "rendezvous: %d queued events", cap);
    r->q = p;
    r->q_cap = cap;
  }
  queued_t *e = &r->q[r->nq];
  e->ev = *ev;
  e->missing = NULL;
  if (ev->nmissing) {
    if (!(e->missing = malloc((size_t)ev->nmissing * sizeof(int))))
      return epm_error(EPM_ERR_NOMEM, "rendezvous: %d missing ranks", ev->nmissing);
    memcpy(e->missing, ev->missing, (size_t)ev->nmissing * sizeof(int));
  }
  r->nq++;
  return EPM_OK;
}

static void fail_from_ctrl(epm_rendezvous_t *r, const int64_t *b) {
  const double s = (double)b[9] * 1e-9;
  if (b[7] == EPM_RDV_FAIL_SILENT)
    set_failed(r, "rank %lld sent no heartbeat for %.1f s (dead, stopped or unreachable); detected by the "
                  "coordinator (rank %d)", (long long)b[8], s, r->coord_rank);
  else if (b[7] == EPM_RDV_FAIL_STALL)
    set_failed(r, "no rank made progress for %.1f s while ranks waited inside a collective and none computed "
                  "(a hang with every process alive)", s);
  else
    set_failed(r, "the coordinator reported failure %lld", (long long)b[7]);
}

/* Every control message addressed to this rank: answers are queued for the
 * caller, heartbeats and failures handled here. */
static epm_status_t receive_ctrl(epm_rendezvous_t *r) {
  for (;;) {
    int flag = 0, n = 0;
    MPI_Status st;
    RDV_MPI(MPI_Iprobe(r->coord_rank, TAG_CTRL, r->down, &flag, &st), "MPI_Iprobe(control)");
    if (!flag) return EPM_OK;
    RDV_MPI(MPI_Get_count(&st, MPI_INT64_T, &n), "MPI_Get_count(control)");
    if (n < CTRL_HDR || n > CTRL_HDR + r->size)
      return epm_error(EPM_ERR_PROTOCOL, "rendezvous: control message of %d values (want %d..%d)", n, CTRL_HDR,
                       CTRL_HDR + r->size);
    RDV_MPI(MPI_Recv(r->rbuf, n, MPI_INT64_T, r->coord_rank, TAG_CTRL, r->down, MPI_STATUS_IGNORE),
            "MPI_Recv(control)");
    const int64_t *b = r->rbuf;
    r->t_coord_heard = now_ns();
    if (b[5] != n - CTRL_HDR)
      return epm_error(EPM_ERR_PROTOCOL, "rendezvous: control message says %lld missing ranks but carries %d",
                       (long long)b[5], n - CTRL_HDR);
    if (b[0] == EPM__RDV_HEARTBEAT) continue;
    if (b[0] == EPM__RDV_FAILED) {
      fail_from_ctrl(r, b);
      continue;
    }
    epm_rendezvous_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.cancelled_by = -1;
    if (b[0] == EPM_RDV_SHUTDOWN) {
      if (r->shutdown_seen) return epm_error(EPM_ERR_PROTOCOL, "rendezvous: second SHUTDOWN on rank %d", r->rank);
      r->shutdown_seen = 1;
      ev.kind = EPM_RDV_SHUTDOWN;
      EPM_TRY(enqueue(r, &ev));
      continue;
    }
    if (b[0] != EPM_RDV_GO && b[0] != EPM_RDV_ABORT)
      return epm_error(EPM_ERR_PROTOCOL, "rendezvous: control message of kind %lld", (long long)b[0]);
    int i = b[2] < 0 || b[2] > UINT32_MAX ? -1 : find_open(r, (uint32_t)b[2], (uint64_t)b[3]);
    if (i < 0)
      return epm_error(EPM_ERR_PROTOCOL, "rendezvous: %s for (layer %lld, id %llu) matches no open join on rank %d",
                       b[0] == EPM_RDV_GO ? "GO" : "ABORT", (long long)b[2], (unsigned long long)b[3], r->rank);
    r->open[i] = r->open[--r->nopen];
    ev.kind = (epm_rendezvous_event_kind_t)b[0];
    ev.layer = (uint32_t)b[2];
    ev.step_id = (uint64_t)b[3];
    ev.total_tokens = b[4];
    ev.reason = (epm_rendezvous_abort_t)b[1];
    ev.cancelled_by = (int)b[6];
    ev.nmissing = (int)b[5];
    for (int k = 0; k < ev.nmissing; k++) r->ev_missing[k] = (int)b[CTRL_HDR + k];
    ev.missing = ev.nmissing ? r->ev_missing : NULL;
    EPM_TRY(enqueue(r, &ev));
  }
}

/* Heartbeats up; the coordinator's own rank reports straight into it,
 * before its tick. */
static epm_status_t heartbeat(epm_rendezvous_t *r) {
  if (!r->live_ns || r->barrier_started) return EPM_OK;
  const uint64_t t = now_ns();
  if (t - r->t_hb_sent >= r->hb_period_ns) {
    r->t_hb_sent = t;
    const int64_t hb[HB_LEN] = {(int64_t)atomic_load(&r->progress), atomic_load(&r->phase)};
    if (r->coord) {
      EPM_TRY(epm__rdv_coord_heartbeat(r->coord, r->rank, (uint64_t)hb[0], (epm_rendezvous_phase_t)hb[1], t));
      EPM_TRY(send_outbox(r));
    } else {
      EPM_TRY(send_up(r, TAG_HB, hb, HB_LEN, "MPI_Isend(heartbeat)"));
    }
  }
  return EPM_OK;
}

/* The rank's watch on the coordinator, after reading what arrived (a rank
 * that was itself paused finds the coordinator's queued heartbeats first). */
static void watch_coordinator(epm_rendezvous_t *r) {
  if (!r->live_ns || r->barrier_started || r->coord) return;
  const uint64_t t = now_ns();
  if (t > r->t_coord_heard && t - r->t_coord_heard > r->live_ns)
    set_failed(r, "rank %d (the rendezvous coordinator) sent nothing for %.1f s (dead, stopped or unreachable)",
               r->coord_rank, (double)(t - r->t_coord_heard) * 1e-9);
}

/* Everything that moves without the caller: sends, the coordinator, answers,
 * heartbeats. Under r->mu. */
static epm_status_t pump(epm_rendezvous_t *r) {
  EPM_TRY(progress_sends(r));
  EPM_TRY(heartbeat(r));
  if (r->coord && !r->barrier_started) EPM_TRY(pump_coordinator(r));
  EPM_TRY(receive_ctrl(r));
  watch_coordinator(r);
  return EPM_OK;
}

static void *control_main(void *arg) {
  epm_rendezvous_t *r = arg;
  /* A few ms between turns: the caller's own polls carry the latency of GO;
   * this thread only has to beat the liveness period by a wide margin. */
  uint64_t nap = r->hb_period_ns / 8;
  if (nap > 5000000) nap = 5000000;
  if (nap < 200000) nap = 200000;
  const struct timespec d = {0, (long)nap};
  while (!atomic_load(&r->stop)) {
    pthread_mutex_lock(&r->mu);
    epm_status_t st = pump(r);
    pthread_mutex_unlock(&r->mu);
    if (st != EPM_OK) {
      set_failed(r, "control thread on rank %d: %s", r->rank, epm_last_error());
      break;
    }
    nanosleep(&d, NULL);
  }
  return NULL;
}

/* ---- public API ------------------------------------------------------------------ */

epm_status_t epm_rendezvous_create(const epm_bootstrap_t *boot, const epm_rendezvous_opts_t *opts,
                                   epm_rendezvous_t **out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: out is NULL");
  *out = NULL;
  MPI_Comm *ep = epm__bootstrap_ep_mpi_comm(boot);
  if (!ep || *ep == MPI_COMM_NULL)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: the bootstrap has no EP communicator (not initialised?)");
  const double t = opts ? opts->timeout_s : 0, live = opts ? opts->liveness_s : 0, stall = opts ? opts->stall_s : 0;
  if (!(t > 0) || !isfinite(t) || t > 1e9)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: timeout of %g s (want > 0 and <= 1e9)", t);
  if (!(live >= 0) || !isfinite(live) || live > 1e6 || (live > 0 && live < 0.01))
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: liveness of %g s (want 0 = off, or 0.01..1e6)", live);
  if (!(stall >= 0) || !isfinite(stall) || stall > 1e9 || (stall > 0 && !(live > 0)))
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: stall of %g s (want 0 = off, or <= 1e9 with liveness on)",
                     stall);
  if (opts->max_open < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: max_open %d (want >= 0)", opts->max_open);
  /* The caller's thread makes the MPI calls of this rendezvous; unless it is
   * the thread that started MPI, MPI must allow calls from other threads, and
   * the control thread of liveness runs beside the step's own MPI calls. */
  int is_main = 0;
  RDV_MPI(MPI_Is_thread_main(&is_main), "MPI_Is_thread_main");
  if (live > 0 && boot->thread_level < MPI_THREAD_MULTIPLE)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "rendezvous: liveness runs a control thread beside the steps, which needs thread level "
                     "MPI_THREAD_MULTIPLE (%d); MPI provides %d",
                     MPI_THREAD_MULTIPLE, boot->thread_level);
  if (!is_main && boot->thread_level < MPI_THREAD_SERIALIZED)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "rendezvous: used from a thread other than MPI's main thread, which needs thread level "
                     "MPI_THREAD_SERIALIZED (%d) or better; MPI provides %d",
                     MPI_THREAD_SERIALIZED, boot->thread_level);

  epm_rendezvous_t *r = calloc(1, sizeof *r);
  if (!r) return epm_error(EPM_ERR_NOMEM, "rendezvous state");
  pthread_mutex_init(&r->mu, NULL);
  pthread_mutex_init(&r->fail_mu, NULL);
  r->up = r->down = MPI_COMM_NULL;
  r->barrier = MPI_REQUEST_NULL;
  r->max_open = opts->max_open ? opts->max_open : EPM_RDV_DEFAULT_MAX_OPEN;
  r->live_ns = (uint64_t)(live * 1e9);
  r->stall_ns = (uint64_t)(stall * 1e9);
  r->hb_period_ns = r->live_ns / 5 ? r->live_ns / 5 : 1;
  epm_status_t st = EPM_OK;
  int rc;
  if ((rc = MPI_Comm_dup(*ep, &r->up)) != MPI_SUCCESS) {
    st = rdv_mpi_err(rc, "MPI_Comm_dup(up)");
    goto fail;
  }
  if ((rc = MPI_Comm_dup(*ep, &r->down)) != MPI_SUCCESS) {
    st = rdv_mpi_err(rc, "MPI_Comm_dup(down)");
    goto fail;
  }
  if ((rc = MPI_Comm_set_errhandler(r->up, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
      (rc = MPI_Comm_set_errhandler(r->down, MPI_ERRORS_RETURN)) != MPI_SUCCESS) {
    st = rdv_mpi_err(rc, "MPI_Comm_set_errhandler");
    goto fail;
  }
  if ((rc = MPI_Comm_rank(r->up, &r->rank)) != MPI_SUCCESS || (rc = MPI_Comm_size(r->up, &r->size)) != MPI_SUCCESS) {
    st = rdv_mpi_err(rc, "MPI_Comm_rank/size");
    goto fail;
  }
  r->coord_rank = 0;
  r->rbuf = calloc((size_t)r->size + CTRL_HDR, sizeof *r->rbuf);
  r->ev_missing = calloc((size_t)r->size, sizeof *r->ev_missing);
  r->open = calloc((size_t)r->max_open, sizeof *r->open);
  if (!r->rbuf || !r->ev_missing || !r->open) {
    st = epm_error(EPM_ERR_NOMEM, "rendezvous buffers for %d ranks", r->size);
    goto fail;
  }
  const uint64_t t0 = now_ns();
  r->t_hb_sent = r->t_coord_heard = t0;
  if (r->rank == r->coord_rank) {
    uint64_t tns = (uint64_t)(t * 1e9);
    epm__rdv_coord_opts_t co = {.size = r->size, .timeout_ns = tns > 0 ? tns : 1, .live_ns = r->live_ns,
                                .stall_ns = r->stall_ns, .hb_period_ns = r->hb_period_ns, .max_open = r->max_open,
                                .self = r->coord_rank};
    EPM_TRY_GOTO(epm__rdv_coord_create(&co, t0, &r->coord), st, fail);
  }
  if (r->live_ns) {
    if ((rc = pthread_create(&r->thread, NULL, control_main, r)) != 0) {
      st = epm_error(EPM_ERR_SYSTEM, "rendezvous: control thread: %s", strerror(rc));
      goto fail;
    }
    r->thread_on = 1;
  }
  *out = r;
  return EPM_OK;
fail:
  epm_rendezvous_destroy(r);
  return st;
}

void epm_rendezvous_destroy(epm_rendezvous_t *r) {
  if (!r) return;
  if (r->thread_on) {
    atomic_store(&r->stop, 1);
    pthread_join(r->thread, NULL);
  }
  /* Sends still in flight (no finished drain): cancelled; a buffer MPI may
   * still read is left allocated rather than freed under it. An unfinished
   * barrier request may not be freed (MPI forbids it for collectives). */
  for (int i = 0; i < r->nsends; i++) {
    int flag = 0;
    warn_mpi(MPI_Cancel(&r->sends[i].req), "MPI_Cancel(control send)");
    if (warn_mpi(MPI_Test(&r->sends[i].req, &flag, MPI_STATUS_IGNORE), "MPI_Test(cancelled send)") && flag)
      free(r->sends[i].buf);
    else
      warn_mpi(MPI_Request_free(&r->sends[i].req), "MPI_Request_free(control send)");
  }
  /* Heartbeats sent before the drain barrier may still sit unreceived. */
  MPI_Comm comms[2] = {r->up, r->down};
  for (int c = 0; c < 2 && r->drained; c++) {
    for (int k = 0; k < 100000; k++) {
      int flag = 0, n = 0;
      MPI_Status st;
      if (!warn_mpi(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comms[c], &flag, &st), "MPI_Iprobe(leftover)") || !flag)
        break;
      MPI_Get_count(&st, MPI_INT64_T, &n);
      int64_t *b = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
      if (!b) break;
      warn_mpi(MPI_Recv(b, n, MPI_INT64_T, st.MPI_SOURCE, st.MPI_TAG, comms[c], MPI_STATUS_IGNORE),
               "MPI_Recv(leftover)");
      free(b);
    }
  }
  if (r->up != MPI_COMM_NULL) warn_mpi(MPI_Comm_free(&r->up), "MPI_Comm_free(up)");
  if (r->down != MPI_COMM_NULL) warn_mpi(MPI_Comm_free(&r->down), "MPI_Comm_free(down)");
  epm__rdv_coord_destroy(r->coord);
  for (int i = 0; i < r->nq; i++) free(r->q[i].missing);
  free(r->q);
  free(r->sends);
  free(r->rbuf);
  free(r->ev_missing);
  free(r->open);
  pthread_mutex_destroy(&r->mu);
  pthread_mutex_destroy(&r->fail_mu);
  free(r);
}

int epm_rendezvous_rank(const epm_rendezvous_t *r) { return r->rank; }
int epm_rendezvous_size(const epm_rendezvous_t *r) { return r->size; }

/* Open joins plus answers received but not yet polled: both still owe the
 * caller an event. Under r->mu. */
static int owed(const epm_rendezvous_t *r) {
  int n = r->nopen;
  for (int i = 0; i < r->nq; i++) n += r->q[i].ev.kind != EPM_RDV_SHUTDOWN;
  return n;
}

int epm_rendezvous_joined(const epm_rendezvous_t *r) {
  pthread_mutex_lock((pthread_mutex_t *)&r->mu);
  int n = owed(r);
  pthread_mutex_unlock((pthread_mutex_t *)&r->mu);
  return n;
}

void epm_rendezvous_progress(epm_rendezvous_t *r, epm_rendezvous_phase_t phase) {
  if (!r) return;
  atomic_fetch_add(&r->progress, 1);
  atomic_store(&r->phase, (int)phase);
}

int epm_rendezvous_failed(epm_rendezvous_t *r, char *why, size_t n) {
  if (!r || !atomic_load(&r->failed)) return 0;
  if (why && n) {
    pthread_mutex_lock(&r->fail_mu);
    snprintf(why, n, "%s", r->fail_why);
    pthread_mutex_unlock(&r->fail_mu);
  }
  return 1;
}

epm_status_t epm_rendezvous_join(epm_rendezvous_t *r, uint32_t layer, uint64_t step_id, int64_t tokens) {
  epm_status_t st = EPM_OK;
  pthread_mutex_lock(&r->mu);
  if (find_open(r, layer, step_id) >= 0)
    st = epm_error(EPM_ERR_INVALID_ARG, "rendezvous: rank %d joins (layer %u, id %llu) a second time", r->rank, layer,
                   (unsigned long long)step_id);
  else if (r->nopen >= r->max_open)
    st = epm_error(EPM_ERR_INVALID_ARG, "rendezvous: rank %d already has %d joins open (the most allowed)", r->rank,
                   r->nopen);
  else if (r->left || r->shutdown_seen)
    st = epm_error(EPM_ERR_ABORTED, "rendezvous: step (layer %u, id %llu) not joined: the group is shutting down",
                   layer, (unsigned long long)step_id);
  else if (tokens < 0 || tokens > INT64_MAX / r->size)
    st = epm_error(EPM_ERR_INVALID_ARG, "rendezvous: %lld tokens (0..%lld)", (long long)tokens,
                   (long long)(INT64_MAX / r->size));
  if (st == EPM_OK) {
    const int64_t b[JOIN_LEN] = {layer, (int64_t)step_id, tokens};
    st = send_up(r, TAG_JOIN, b, JOIN_LEN, "MPI_Isend(join)");
    if (st == EPM_OK) r->open[r->nopen++] = (open_t){layer, step_id, 0};
  }
  pthread_mutex_unlock(&r->mu);
  return st;
}

epm_status_t epm_rendezvous_cancel(epm_rendezvous_t *r, uint32_t layer, uint64_t step_id) {
  epm_status_t st = EPM_OK;
  pthread_mutex_lock(&r->mu);
  int i = find_open(r, layer, step_id);
  if (i < 0) {
    st = epm_error(EPM_ERR_INVALID_ARG, "rendezvous: rank %d cancels (layer %u, id %llu), which it has not open",
                   r->rank, layer, (unsigned long long)step_id);
  } else if (!r->open[i].cancel_sent) {
    const int64_t b[CANCEL_LEN] = {layer, (int64_t)step_id};
    st = send_up(r, TAG_CANCEL, b, CANCEL_LEN, "MPI_Isend(cancel)");
    if (st == EPM_OK) r->open[i].cancel_sent = 1;
  }
  pthread_mutex_unlock(&r->mu);
  return st;
}

epm_status_t epm_rendezvous_poll(epm_rendezvous_t *r, epm_rendezvous_event_t *ev) {
  memset(ev, 0, sizeof *ev);
  ev->cancelled_by = -1;
  pthread_mutex_lock(&r->mu);
  epm_status_t st = pump(r);
  if (st == EPM_OK && r->nq) {
    queued_t q = r->q[0];
    memmove(&r->q[0], &r->q[1], (size_t)(r->nq - 1) * sizeof q);
    r->nq--;
    *ev = q.ev;
    if (q.missing) {
      memcpy(r->ev_missing, q.missing, (size_t)ev->nmissing * sizeof(int));
      ev->missing = r->ev_missing;
      free(q.missing);
    }
  }
  pthread_mutex_unlock(&r->mu);
  return st;
}

epm_status_t epm_rendezvous_leave(epm_rendezvous_t *r) {
  epm_status_t st = EPM_OK;
  pthread_mutex_lock(&r->mu);
  if (!r->left) {
    const int64_t b = 0;
    st = send_up(r, TAG_LEAVE, &b, 1, "MPI_Isend(leave)");
    if (st == EPM_OK) r->left = 1;
  }
  pthread_mutex_unlock(&r->mu);
  return st;
}

static epm_status_t drain_locked(epm_rendezvous_t *r, int *done) {
  if (r->drained) {
    *done = 1;
    return EPM_OK;
  }
  if (owed(r))
    return epm_error(EPM_ERR_INVALID_ARG,
                     "rendezvous: drain on rank %d with %d joins open or answered but not polled; "
                     "poll for their GO/ABORT first",
                     r->rank, owed(r));
  if (!r->left) {
    const int64_t b = 0;
    EPM_TRY(send_up(r, TAG_LEAVE, &b, 1, "MPI_Isend(leave)"));
    r->left = 1;
  }
  EPM_TRY(pump(r));
  /* With no open join only SHUTDOWN can be queued: consume it here. */
  for (int i = 0; i < r->nq; i++) free(r->q[i].missing);
  r->nq = 0;
  if (!r->barrier_started) {
    if (!r->shutdown_seen || r->nsends > 0) return EPM_OK;
    if (r->coord && epm__rdv_coord_left(r->coord) < r->size) return EPM_OK;
    RDV_MPI(MPI_Ibarrier(r->down, &r->barrier), "MPI_Ibarrier(drain)");
    r->barrier_started = 1;
  }
  int flag = 0;
  RDV_MPI(MPI_Test(&r->barrier, &flag, MPI_STATUS_IGNORE), "MPI_Test(drain barrier)");
  if (flag) {
    r->drained = 1;
    *done = 1;
  }
  return EPM_OK;
}

epm_status_t epm_rendezvous_drain(epm_rendezvous_t *r, int *done) {
  *done = 0;
  pthread_mutex_lock(&r->mu);
  epm_status_t st = drain_locked(r, done);
  pthread_mutex_unlock(&r->mu);
  return st;
}
