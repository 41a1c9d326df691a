/* SPDX-License-Identifier: Apache-2.0 */
/* rendezvous_coord.h — private: the rendezvous coordinator as a pure state
 * machine (comm/rendezvous_coord.c), driven by comm/rendezvous.c over MPI and
 * by tests/unit/test_rendezvous_coord.c directly.
 *
 * No MPI, no clock, no threads: time comes in as now_ns with every input, and
 * every input returns the messages to send in its outbox. So the rules can be
 * tested step by step, including the races a real group only hits sometimes.
 *
 * Rules (a key is (layer, step_id); a rank may have up to max_open joins of
 * different keys open at once):
 *  - join: refused with ABORT(SHUTDOWN) once the group shuts down; with
 *    ABORT(DUPLICATE) when the rank already has this key open (the first
 *    join stays); with ABORT(LIMIT) when the rank already has max_open joins
 *    open; with ABORT(LATE) when the key was aborted (timeout or cancel) less
 *    than 2 x timeout ago (cancelled_by then names the cancelling rank, else
 *    -1). Otherwise recorded; when every rank has joined the key, GO(key,
 *    total tokens) goes to every rank and the key closes. Keys complete in
 *    the order of the inputs that complete them, and each rank receives its
 *    GOs in that order: this is the one step order the whole group agrees on,
 *    whatever order the requests reached the ranks in.
 *  - cancel(rank, key): the rank's client left before the step ran. An open
 *    key the rank joined is aborted on every rank that joined it
 *    (ABORT(CANCELLED), cancelled_by = rank) and remembered like a timeout;
 *    a key no longer open (its GO is on its way) is left alone.
 *  - tick(now): a key whose first join is older than the timeout
 *    (now - t > timeout) is aborted: ABORT(TIMEOUT, ranks missing from the
 *    key) to each rank that joined it, oldest key first, and remembered.
 *    Every input runs tick(now) first, so a deadline holds even when the
 *    completing join and the deadline fall between two ticks.
 *  - leave(rank): the first one aborts every open join (ABORT(SHUTDOWN)) and
 *    sends SHUTDOWN to every rank, once. Leaves are counted: the driver's
 *    drain on the coordinator's rank waits for all of them, so no message to
 *    the coordinator is left unreceived.
 * Liveness (live_ns > 0), judged by tick only (the driver ticks after
 * feeding every message that arrived, so a coordinator that was itself
 * descheduled reads the queued heartbeats before it calls anyone silent):
 *  - every input from a rank (join, cancel, leave, heartbeat) counts as
 *    hearing from it; a rank other than `self` (the coordinator's own, which
 *    is alive whenever it ticks) not heard from for more than live_ns fails
 *    the group: FAILED(SILENT, rank, silent ns) to every other rank, once.
 *  - heartbeats carry the rank's progress counter and phase (idle, compute,
 *    comm). With stall_ns > 0: when some rank waits in a collective (comm),
 *    none computes, and no rank's counter moved for more than stall_ns, the
 *    group is stuck although every process answers: FAILED(STALL) to every
 *    rank, once. A rank that computes (a long legal step) is never a stall.
 *  - every hb_period_ns the coordinator sends HEARTBEAT to every rank, so the
 *    ranks can tell a dead coordinator from a quiet one (the driver's rule).
 *  After FAILED nothing else is sent but refusals: joins get ABORT(SHUTDOWN).
 * Every join is answered by exactly one GO or ABORT to the rank that sent it
 * (until the group fails).
 */
#ifndef EPMOE_RENDEZVOUS_COORD_H
#define EPMOE_RENDEZVOUS_COORD_H

#include <stdint.h>

#include "epmoe/rendezvous.h"

typedef struct epm__rdv_coord epm__rdv_coord_t;

/* Messages from the coordinator: the public event kinds, plus two that only
 * the driver sees. */
enum { EPM__RDV_HEARTBEAT = 100, EPM__RDV_FAILED = 101 };

/* One message to send. missing points into the coordinator and is valid until
 * its next input. */
typedef struct {
  int to;
  int kind;                         /* epm_rendezvous_event_kind_t GO | ABORT | SHUTDOWN, or EPM__RDV_* */
  epm_rendezvous_abort_t reason;    /* ABORT */
  uint32_t layer;                   /* GO, ABORT */
  uint64_t step_id;
  int64_t total_tokens;             /* GO */
  int nmissing;                     /* ABORT(TIMEOUT) */
  const int *missing;
  int cancelled_by;                 /* ABORT(CANCELLED), ABORT(LATE) of a cancelled key; else -1 */
  epm_rendezvous_fail_t fail;       /* FAILED: why */
  int failed_rank;                  /* FAILED(SILENT): the silent rank; else -1 */
  uint64_t silent_ns;               /* FAILED: how long the rank was silent / nothing progressed */
} epm__rdv_msg_t;

typedef struct {
  int size;              /* ranks, >= 1 */
  uint64_t timeout_ns;   /* join timeout, >= 1 */
  uint64_t live_ns;      /* 0: no liveness checks */
  uint64_t stall_ns;     /* 0: no stall check (needs live_ns) */
  uint64_t hb_period_ns; /* coordinator heartbeat period (with live_ns; 0 -> live_ns / 5) */
  int max_open;          /* open joins per rank; 0 -> EPM_RDV_DEFAULT_MAX_OPEN */
  int self;              /* the coordinator's own rank, never judged silent; -1: none */
} epm__rdv_coord_opts_t;

/* now_ns: the liveness clock starts here (every rank counts as heard). */
epm_status_t epm__rdv_coord_create(const epm__rdv_coord_opts_t *o, uint64_t now_ns, epm__rdv_coord_t **out);
void epm__rdv_coord_destroy(epm__rdv_coord_t *c);

/* Inputs. Each clears the outbox first. EPM_ERR_INVALID_ARG (and no state
 * change) for a rank outside [0, size), tokens outside [0, INT64_MAX / size]
 * or a phase outside the enum. */
epm_status_t epm__rdv_coord_join(epm__rdv_coord_t *c, int rank, uint32_t layer, uint64_t step_id,
                                 int64_t tokens, uint64_t now_ns);
epm_status_t epm__rdv_coord_cancel(epm__rdv_coord_t *c, int rank, uint32_t layer, uint64_t step_id,
                                   uint64_t now_ns);
epm_status_t epm__rdv_coord_leave(epm__rdv_coord_t *c, int rank, uint64_t now_ns);
epm_status_t epm__rdv_coord_heartbeat(epm__rdv_coord_t *c, int rank, uint64_t progress,
                                      epm_rendezvous_phase_t phase, uint64_t now_ns);
epm_status_t epm__rdv_coord_tick(epm__rdv_coord_t *c, uint64_t now_ns);

/* The messages of the last input, in the order to send them. */
int epm__rdv_coord_outbox(epm__rdv_coord_t *c, const epm__rdv_msg_t **msgs);

int epm__rdv_coord_shutdown(const epm__rdv_coord_t *c); /* 1 once SHUTDOWN went out */
int epm__rdv_coord_failed(const epm__rdv_coord_t *c);   /* 1 once FAILED went out */
int epm__rdv_coord_left(const epm__rdv_coord_t *c);     /* ranks that sent leave */
int epm__rdv_coord_open(const epm__rdv_coord_t *c);     /* open joins, summed over the ranks */
int epm__rdv_coord_open_keys(const epm__rdv_coord_t *c); /* keys with at least one open join */

#endif /* EPMOE_RENDEZVOUS_COORD_H */
