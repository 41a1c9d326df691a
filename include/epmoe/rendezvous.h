/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/rendezvous.h — the control plane of an EP group: agree on the next
 * step before any rank enters its collective, and tell a slow group from a
 * dead one.
 *
 * Why: a collective entered by some ranks only hangs them, and neither MPI nor
 * NCCL can cancel it. So before a step every rank JOINs a key (layer, step
 * id) and waits, polling, for the group's answer:
 *   GO        every rank joined the same key: all run the step now;
 *   ABORT     the key will not run here: its first join is older than the
 *             timeout (the event names the ranks that never joined), or a
 *             rank cancelled it (its client left), or the key was already
 *             aborted (this join came too late), or the group is shutting down;
 *   SHUTDOWN  some rank LEFT (asked the group to drain): open joins are
 *             aborted, later joins are refused, and every rank drains.
 * A rank may have several keys open at once (requests of several clients):
 * keys GO in the order they complete, and every rank receives its GOs in that
 * one order, so clients that reach the ranks in different orders never
 * deadlock each other or cross-match.
 * One rank (0) runs the coordinator, a pure state machine (no MPI, no clock
 * reads), over two private duplicates of the bootstrap's EP communicator;
 * every message is a small point-to-point one that is polled, never blocked on.
 *
 * Liveness (opts.liveness_s > 0): a control thread per rank keeps the
 * rendezvous' MPI traffic moving while the caller's thread sits in a step,
 * sends a heartbeat (with the rank's progress counter and phase) every
 * liveness_s / 5, and watches the coordinator's heartbeats. A rank the
 * coordinator has not heard from for liveness_s (dead, SIGSTOPped, its host
 * gone) fails the group; so does a silent coordinator, seen by every rank;
 * so does a step in which some rank waits in a collective, none computes and
 * no rank's counter moved for stall_s (a hang with every process alive). A
 * long step in which ranks keep computing is never failed for its length.
 * Failure is reported by epm_rendezvous_failed (any thread), for the caller's
 * fail-stop. This needs MPI_THREAD_MULTIPLE (create says so otherwise).
 *
 *   epm_rendezvous_t *rdv;
 *   epm_rendezvous_opts_t o = {.timeout_s = 30, .liveness_s = 5, .stall_s = 30};
 *   EPM_TRY(epm_rendezvous_create(&boot, &o, &rdv));        // collective
 *   EPM_TRY(epm_rendezvous_join(rdv, layer, step_id, m));
 *   for (;;) { EPM_TRY(epm_rendezvous_poll(rdv, &ev)); if (ev.kind == EPM_RDV_GO) ...; }
 *   ...                          // inside the step: epm_rendezvous_progress(rdv, phase)
 *   EPM_TRY(epm_rendezvous_leave(rdv));                     // ask the group to drain
 *   do EPM_TRY(epm_rendezvous_drain(rdv, &done)); while (!done);
 *   epm_rendezvous_destroy(rdv);                            // collective
 *
 * Threads: join, cancel, poll, leave and drain from one thread at a time;
 * progress and failed from any thread. Without liveness, every MPI call is
 * made by that caller's thread: unless it is the thread that started MPI,
 * MPI must provide MPI_THREAD_SERIALIZED or better (checked by create). Every
 * MPI error is returned as EPM_ERR_MPI with a message naming the MPI call and
 * MPI's own text for the code.
 */
#ifndef EPMOE_RENDEZVOUS_H
#define EPMOE_RENDEZVOUS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/bootstrap.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_rendezvous epm_rendezvous_t;

typedef enum {
  EPM_RDV_NONE = 0,     /* nothing happened (poll only) */
  EPM_RDV_GO = 1,       /* run the joined step */
  EPM_RDV_ABORT = 2,    /* the joined step will not run; see reason */
  EPM_RDV_SHUTDOWN = 3, /* the group drains: join no more, call drain */
} epm_rendezvous_event_kind_t;

typedef enum {
  EPM_RDV_ABORT_NONE = 0,      /* not an abort (GO, SHUTDOWN) */
  EPM_RDV_ABORT_TIMEOUT = 1,   /* not every rank joined within the timeout; missing[] names them */
  EPM_RDV_ABORT_LATE = 2,      /* the key was aborted (timeout) before this rank joined */
  EPM_RDV_ABORT_SHUTDOWN = 3,  /* the group is shutting down */
  EPM_RDV_ABORT_DUPLICATE = 4, /* this rank already had this key open (a caller bug) */
  EPM_RDV_ABORT_CANCELLED = 5, /* rank cancelled_by cancelled the key (its client left) */
  EPM_RDV_ABORT_LIMIT = 6,     /* this rank already had the most open joins allowed */
} epm_rendezvous_abort_t;

/* What a rank is doing, as its heartbeats report it (epm_rendezvous_progress). */
typedef enum {
  EPM_RDV_PHASE_IDLE = 0,    /* between steps */
  EPM_RDV_PHASE_COMPUTE = 1, /* local work of a step (routing, experts, ...) */
  EPM_RDV_PHASE_COMM = 2,    /* inside a collective, waiting on the others */
} epm_rendezvous_phase_t;

/* Why the group failed (epm_rendezvous_failed). */
typedef enum {
  EPM_RDV_FAIL_NONE = 0,
  EPM_RDV_FAIL_SILENT = 1,      /* a rank sent nothing for liveness_s: dead or stopped */
  EPM_RDV_FAIL_STALL = 2,       /* a step made no progress on any rank for stall_s */
  EPM_RDV_FAIL_COORDINATOR = 3, /* the coordinator (rank 0) sent nothing for liveness_s */
  EPM_RDV_FAIL_MPI = 4,         /* the control thread's MPI traffic failed */
} epm_rendezvous_fail_t;

#define EPM_RDV_DEFAULT_MAX_OPEN 256 /* open joins per rank when opts.max_open is 0 */

typedef struct {
  epm_rendezvous_event_kind_t kind;
  uint32_t layer;                /* GO, ABORT: the key */
  uint64_t step_id;
  int64_t total_tokens;          /* GO: sum of the tokens every rank joined with */
  epm_rendezvous_abort_t reason; /* ABORT */
  int nmissing;                  /* ABORT (TIMEOUT): ranks that never joined the key */
  const int *missing;            /* ascending; valid until the next call on this rendezvous */
  int cancelled_by;              /* ABORT (CANCELLED, or LATE of a cancelled key): that rank; else -1 */
} epm_rendezvous_event_t;

typedef struct {
  /* Seconds from the first join of a key until the key is aborted when not
   * every rank joined it. Must be > 0. A late join of an aborted key is
   * refused for 2 x timeout afterwards; later the key may be joined afresh. */
  double timeout_s;
  /* > 0: heartbeats and a control thread (see the top); a rank or the
   * coordinator silent this long fails the group. 0: none (no thread). */
  double liveness_s;
  /* > 0 (with liveness): a step in which no rank progressed for this long
   * while some rank waits in a collective and none computes fails the group. */
  double stall_s;
  int max_open; /* open joins per rank; 0 -> EPM_RDV_DEFAULT_MAX_OPEN */
} epm_rendezvous_opts_t;

/* Collective over the bootstrap's EP group (duplicates its communicator). */
epm_status_t epm_rendezvous_create(const epm_bootstrap_t *boot, const epm_rendezvous_opts_t *opts,
                                   epm_rendezvous_t **out);
/* Collective (frees the communicator); call after drain reported done, or on
 * a fail-stop path not at all. NULL ok. */
void epm_rendezvous_destroy(epm_rendezvous_t *r);

int epm_rendezvous_rank(const epm_rendezvous_t *r);
int epm_rendezvous_size(const epm_rendezvous_t *r);

/* Join the step (layer, step_id) with this rank's token count (>= 0; m = 0
 * joins too). Several keys may be open; a key already open on this rank, or
 * more than max_open, is EPM_ERR_INVALID_ARG (nothing sent). After SHUTDOWN or
 * leave, returns EPM_ERR_ABORTED, sends nothing. */
epm_status_t epm_rendezvous_join(epm_rendezvous_t *r, uint32_t layer, uint64_t step_id, int64_t tokens);
/* Withdraw this rank's open join of the key (its client left): the key is
 * aborted on every rank (ABORT(CANCELLED)), this one included, unless its GO
 * is already on its way, in which case poll still reports that GO and the
 * step must run. EPM_ERR_INVALID_ARG when the key is not open here. */
epm_status_t epm_rendezvous_cancel(epm_rendezvous_t *r, uint32_t layer, uint64_t step_id);
/* Never blocks. Runs the coordinator's inputs on the rank that hosts it, then
 * reports at most one event addressed to this rank (ev->kind NONE if none). */
epm_status_t epm_rendezvous_poll(epm_rendezvous_t *r, epm_rendezvous_event_t *ev);
/* The number of joins waiting for their GO or ABORT. */
int epm_rendezvous_joined(const epm_rendezvous_t *r);
/* Ask the group to drain (sends LEAVE once; later calls do nothing). Every
 * rank then sees SHUTDOWN from poll, including this one. */
epm_status_t epm_rendezvous_leave(epm_rendezvous_t *r);
/* Never blocks; call until *done. Leaves first when this rank has not, then
 * waits (non-blocking) until every rank of the group has left and drained.
 * Requires no open join (poll until its GO/ABORT first: EPM_ERR_INVALID_ARG
 * otherwise). Consumes this rank's SHUTDOWN if poll has not reported it. */
epm_status_t epm_rendezvous_drain(epm_rendezvous_t *r, int *done);

/* This rank's progress for its heartbeats: the phase it enters now; every
 * call counts as progress. Any thread; lock-free; no-op without liveness. */
void epm_rendezvous_progress(epm_rendezvous_t *r, epm_rendezvous_phase_t phase);
/* 1 once the group failed (liveness): why names the rank and the silence or
 * stall ("rank 1 sent no heartbeat for 5.2 s: dead or stopped"). Any thread.
 * The failure is final; the caller should fail-stop (the group cannot step). */
int epm_rendezvous_failed(epm_rendezvous_t *r, char *why, size_t n);

const char *epm_rendezvous_abort_name(epm_rendezvous_abort_t reason); /* "timeout", ...; never NULL */

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_RENDEZVOUS_H */
