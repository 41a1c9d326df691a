/* rendezvous.c — the MPI driver of epmoe/rendezvous.h: carries joins and
 * leaves to the coordinator (rendezvous_coord.c, on rank 0) and its answers
 * back, with point-to-point messages that are only ever probed and sent
 * non-blocking, so no call here waits on a peer.
 *
 * Two private duplicates of the EP communicator: `up` (ranks -> coordinator:
 * JOIN, LEAVE) and `down` (coordinator -> ranks: GO, ABORT, SHUTDOWN). The
 * coordinator receives `up` with MPI_ANY_TAG so one sender's JOIN and LEAVE
 * are matched in the order they were sent (MPI's non-overtaking rule holds
 * per receive that could match both), and nothing of the step's own traffic
 * can ever match a control receive.
 *
 * Drain ends only when nothing is in flight: every rank has sent its LEAVE
 * and seen SHUTDOWN, its sends completed, and the coordinator received all P
 * LEAVEs (so every JOIN before them too); then one MPI_Ibarrier.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_impl.h"
#include "epmoe/checked.h"
#include "epmoe/log.h"
#include "epmoe/rendezvous.h"
#include "rendezvous_coord.h"

enum { TAG_JOIN = 1, TAG_LEAVE = 2, TAG_CTRL = 3 };
/* CTRL message: kind, reason, layer, step_id, total_tokens, nmissing, missing... */
enum { CTRL_HDR = 6, JOIN_LEN = 3 };

typedef struct {
  MPI_Request req;
  int64_t *buf;
} send_t;

struct epm_rendezvous {
  MPI_Comm up, down;
  int rank, size, coord_rank;
  epm__rdv_coord_t *coord; /* on coord_rank only */
  int joined;              /* an open join of (layer, step_id) */
  uint32_t layer;
  uint64_t step_id;
  int left;          /* LEAVE sent */
  int shutdown_seen; /* SHUTDOWN received */
  int barrier_started, drained;
  MPI_Request barrier;
  send_t *sends; /* in flight */
  int nsends, sends_cap;
  int64_t *rbuf;   /* [CTRL_HDR + size] */
  int *ev_missing; /* [size] */
};

static epm_status_t rdv_mpi_err(int rc, const char *call) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "unknown MPI error");
  return epm_error(EPM_ERR_MPI, "rendezvous: %s: %s (MPI error code %d)", call, msg, rc);
}

#define RDV_MPI(call, name)                                   \
  do {                                                        \
    int rdv_rc_ = (call);                                     \
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

/* ---- sends in flight -------------------------------------------------------- */

/* Takes ownership of buf (freed once MPI is done with it, or on error). */
static epm_status_t send_async(epm_rendezvous_t *r, int64_t *buf, int n, int dst, int tag, MPI_Comm comm,
                               const char *what) {
  if (r->nsends == r->sends_cap) {
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
    for (int k = 0; k < m[i].nmissing; k++) b[CTRL_HDR + k] = m[i].missing[k];
    EPM_TRY(send_async(r, b, CTRL_HDR + m[i].nmissing, m[i].to, TAG_CTRL, r->down, "MPI_Isend(control)"));
  }
  return EPM_OK;
}

/* Feed every JOIN/LEAVE that arrived into the coordinator, then its clock. */
static epm_status_t pump_coordinator(epm_rendezvous_t *r) {
  for (;;) {
    int flag = 0, count = 0;
    MPI_Status st;
    int64_t msg[JOIN_LEN];
    RDV_MPI(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, r->up, &flag, &st), "MPI_Iprobe(join/leave)");
    if (!flag) break;
    RDV_MPI(MPI_Get_count(&st, MPI_INT64_T, &count), "MPI_Get_count(join/leave)");
    const int want = st.MPI_TAG == TAG_JOIN ? JOIN_LEN : 1;
    if ((st.MPI_TAG != TAG_JOIN && st.MPI_TAG != TAG_LEAVE) || count != want)
      return epm_error(EPM_ERR_PROTOCOL, "rendezvous: message with tag %d and %d values from rank %d (want tag %d/%d)",
                       st.MPI_TAG, count, st.MPI_SOURCE, TAG_JOIN, TAG_LEAVE);
    RDV_MPI(MPI_Recv(msg, count, MPI_INT64_T, st.MPI_SOURCE, st.MPI_TAG, r->up, MPI_STATUS_IGNORE),
            "MPI_Recv(join/leave)");
    if (st.MPI_TAG == TAG_JOIN) {
      if (msg[0] < 0 || msg[0] > UINT32_MAX)
        return epm_error(EPM_ERR_PROTOCOL, "rendezvous: join from rank %d names layer %lld", st.MPI_SOURCE,
                         (long long)msg[0]);
      EPM_TRY(epm__rdv_coord_join(r->coord, st.MPI_SOURCE, (uint32_t)msg[0], (uint64_t)msg[1], msg[2], now_ns()));
    } else {
      if (!epm__rdv_coord_shutdown(r->coord))
        EPM_LOG(EPM_LOG_INFO, "rdv", "rank %d asked the group to shut down", st.MPI_SOURCE);
      EPM_TRY(epm__rdv_coord_leave(r->coord, st.MPI_SOURCE, now_ns()));
    }
    EPM_TRY(send_outbox(r));
  }
  EPM_TRY(epm__rdv_coord_tick(r->coord, now_ns()));
  return send_outbox(r);
}

/* ---- rank side ----------------------------------------------------------------- */

/* One control message addressed to this rank, as an event (NONE if none). */
static epm_status_t receive_ctrl(epm_rendezvous_t *r, epm_rendezvous_event_t *ev) {
  int flag = 0, n = 0;
  MPI_Status st;
  memset(ev, 0, sizeof *ev);
  RDV_MPI(MPI_Iprobe(r->coord_rank, TAG_CTRL, r->down, &flag, &st), "MPI_Iprobe(control)");
  if (!flag) return EPM_OK;
  RDV_MPI(MPI_Get_count(&st, MPI_INT64_T, &n), "MPI_Get_count(control)");
  if (n < CTRL_HDR || n > CTRL_HDR + r->size)
    return epm_error(EPM_ERR_PROTOCOL, "rendezvous: control message of %d values (want %d..%d)", n, CTRL_HDR,
                     CTRL_HDR + r->size);
  RDV_MPI(MPI_Recv(r->rbuf, n, MPI_INT64_T, r->coord_rank, TAG_CTRL, r->down, MPI_STATUS_IGNORE),
          "MPI_Recv(control)");
  const int64_t *b = r->rbuf;
  if (b[5] != n - CTRL_HDR)
    return epm_error(EPM_ERR_PROTOCOL, "rendezvous: control message says %lld missing ranks but carries %d",
                     (long long)b[5], n - CTRL_HDR);
  if (b[0] == EPM_RDV_SHUTDOWN) {
    if (r->shutdown_seen) return epm_error(EPM_ERR_PROTOCOL, "rendezvous: second SHUTDOWN on rank %d", r->rank);
    r->shutdown_seen = 1;
    ev->kind = EPM_RDV_SHUTDOWN;
    return EPM_OK;
  }
  if (b[0] != EPM_RDV_GO && b[0] != EPM_RDV_ABORT)
    return epm_error(EPM_ERR_PROTOCOL, "rendezvous: control message of kind %lld", (long long)b[0]);
  if (!r->joined || (uint64_t)b[2] != r->layer || (uint64_t)b[3] != r->step_id)
    return epm_error(EPM_ERR_PROTOCOL, "rendezvous: %s for (layer %lld, id %llu) matches no open join on rank %d",
                     b[0] == EPM_RDV_GO ? "GO" : "ABORT", (long long)b[2], (unsigned long long)b[3], r->rank);
  r->joined = 0;
  ev->kind = (epm_rendezvous_event_kind_t)b[0];
  ev->layer = r->layer;
  ev->step_id = r->step_id;
  ev->total_tokens = b[4];
  ev->reason = (epm_rendezvous_abort_t)b[1];
  ev->nmissing = (int)b[5];
  for (int i = 0; i < ev->nmissing; i++) r->ev_missing[i] = (int)b[CTRL_HDR + i];
  ev->missing = ev->nmissing ? r->ev_missing : NULL;
  return EPM_OK;
}

/* ---- public API ------------------------------------------------------------------ */

epm_status_t epm_rendezvous_create(const epm_bootstrap_t *boot, const epm_rendezvous_opts_t *opts,
                                   epm_rendezvous_t **out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: out is NULL");
  *out = NULL;
  MPI_Comm *ep = epm__bootstrap_ep_mpi_comm(boot);
  if (!ep || *ep == MPI_COMM_NULL)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: the bootstrap has no EP communicator (not initialised?)");
  const double t = opts ? opts->timeout_s : 0;
  if (!(t > 0) || !isfinite(t) || t > 1e9)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: timeout of %g s (want > 0 and <= 1e9)", t);
  /* The caller's thread makes every MPI call of this rendezvous; unless it is
   * the thread that started MPI, MPI must allow calls from other threads. */
  int is_main = 0;
  RDV_MPI(MPI_Is_thread_main(&is_main), "MPI_Is_thread_main");
  if (!is_main && boot->thread_level < MPI_THREAD_SERIALIZED)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "rendezvous: used from a thread other than MPI's main thread, which needs thread level "
                     "MPI_THREAD_SERIALIZED (%d) or better; MPI provides %d",
                     MPI_THREAD_SERIALIZED, boot->thread_level);

  epm_rendezvous_t *r = calloc(1, sizeof *r);
  if (!r) return epm_error(EPM_ERR_NOMEM, "rendezvous state");
  r->up = r->down = MPI_COMM_NULL;
  r->barrier = MPI_REQUEST_NULL;
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
  if (!r->rbuf || !r->ev_missing) {
    st = epm_error(EPM_ERR_NOMEM, "rendezvous buffers for %d ranks", r->size);
    goto fail;
  }
  if (r->rank == r->coord_rank) {
    uint64_t tns = (uint64_t)(t * 1e9);
    EPM_TRY_GOTO(epm__rdv_coord_create(r->size, tns > 0 ? tns : 1, &r->coord), st, fail);
  }
  *out = r;
  return EPM_OK;
fail:
  epm_rendezvous_destroy(r);
  return st;
}

void epm_rendezvous_destroy(epm_rendezvous_t *r) {
  if (!r) return;
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
  if (r->up != MPI_COMM_NULL) warn_mpi(MPI_Comm_free(&r->up), "MPI_Comm_free(up)");
  if (r->down != MPI_COMM_NULL) warn_mpi(MPI_Comm_free(&r->down), "MPI_Comm_free(down)");
  epm__rdv_coord_destroy(r->coord);
  free(r->sends);
  free(r->rbuf);
  free(r->ev_missing);
  free(r);
}

int epm_rendezvous_rank(const epm_rendezvous_t *r) { return r->rank; }
int epm_rendezvous_size(const epm_rendezvous_t *r) { return r->size; }
int epm_rendezvous_joined(const epm_rendezvous_t *r) { return r->joined; }

epm_status_t epm_rendezvous_join(epm_rendezvous_t *r, uint32_t layer, uint64_t step_id, int64_t tokens) {
  if (r->joined)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "rendezvous: rank %d joins (layer %u, id %llu) while its join of (layer %u, id %llu) is open",
                     r->rank, layer, (unsigned long long)step_id, r->layer, (unsigned long long)r->step_id);
  if (r->left || r->shutdown_seen)
    return epm_error(EPM_ERR_ABORTED, "rendezvous: step (layer %u, id %llu) not joined: the group is shutting down",
                     layer, (unsigned long long)step_id);
  if (tokens < 0 || tokens > INT64_MAX / r->size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: %lld tokens (0..%lld)", (long long)tokens,
                     (long long)(INT64_MAX / r->size));
  int64_t *b = malloc(sizeof(int64_t) * JOIN_LEN);
  if (!b) return epm_error(EPM_ERR_NOMEM, "rendezvous: join message");
  b[0] = layer;
  b[1] = (int64_t)step_id;
  b[2] = tokens;
  EPM_TRY(send_async(r, b, JOIN_LEN, r->coord_rank, TAG_JOIN, r->up, "MPI_Isend(join)"));
  r->joined = 1;
  r->layer = layer;
  r->step_id = step_id;
  return EPM_OK;
}

epm_status_t epm_rendezvous_poll(epm_rendezvous_t *r, epm_rendezvous_event_t *ev) {
  memset(ev, 0, sizeof *ev);
  EPM_TRY(progress_sends(r));
  if (r->coord) EPM_TRY(pump_coordinator(r));
  return receive_ctrl(r, ev);
}

epm_status_t epm_rendezvous_leave(epm_rendezvous_t *r) {
  if (r->left) return EPM_OK;
  int64_t *b = malloc(sizeof(int64_t));
  if (!b) return epm_error(EPM_ERR_NOMEM, "rendezvous: leave message");
  b[0] = 0;
  EPM_TRY(send_async(r, b, 1, r->coord_rank, TAG_LEAVE, r->up, "MPI_Isend(leave)"));
  r->left = 1;
  return EPM_OK;
}

epm_status_t epm_rendezvous_drain(epm_rendezvous_t *r, int *done) {
  *done = 0;
  if (r->drained) {
    *done = 1;
    return EPM_OK;
  }
  if (r->joined)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "rendezvous: drain on rank %d with its join of (layer %u, id %llu) open; "
                     "poll for its GO/ABORT first",
                     r->rank, r->layer, (unsigned long long)r->step_id);
  EPM_TRY(epm_rendezvous_leave(r));
  EPM_TRY(progress_sends(r));
  if (r->coord) EPM_TRY(pump_coordinator(r));
  if (!r->shutdown_seen) {
    epm_rendezvous_event_t ev;
    EPM_TRY(receive_ctrl(r, &ev)); /* with no open join, only SHUTDOWN can come */
  }
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
