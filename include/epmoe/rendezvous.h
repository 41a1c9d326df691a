/* epmoe/rendezvous.h — the control plane of an EP group: agree on the next
 * step before any rank enters its collective.
 *
 * Why: a collective entered by some ranks only hangs them, and neither MPI nor
 * NCCL can cancel it. So before a step every rank JOINs a key (layer, step
 * id) and waits, polling, for the group's answer:
 *   GO        every rank joined the same key: all run the step now;
 *   ABORT     the key will not run here: its first join is older than the
 *             timeout (the event names the ranks that never joined), or the
 *             key was already aborted (this join came too late), or the group
 *             is shutting down;
 *   SHUTDOWN  some rank LEFT (asked the group to drain): open joins are
 *             aborted, later joins are refused, and every rank drains.
 * One rank (0) runs the coordinator, a pure state machine (no MPI, no clock
 * reads), over a private duplicate of the bootstrap's EP communicator; every
 * message is a small point-to-point one that is polled, never blocked on.
 *
 *   epm_rendezvous_t *rdv;
 *   epm_rendezvous_opts_t o = {.timeout_s = 30};
 *   EPM_TRY(epm_rendezvous_create(&boot, &o, &rdv));        // collective
 *   EPM_TRY(epm_rendezvous_join(rdv, layer, step_id, m));
 *   for (;;) { EPM_TRY(epm_rendezvous_poll(rdv, &ev)); if (ev.kind == EPM_RDV_GO) ...; }
 *   ...
 *   EPM_TRY(epm_rendezvous_leave(rdv));                     // ask the group to drain
 *   do EPM_TRY(epm_rendezvous_drain(rdv, &done)); while (!done);
 *   epm_rendezvous_destroy(rdv);                            // collective
 *
 * What it does NOT cover: a rank that dies or hangs after GO, inside the
 * collective. That is the step's own watchdog (fail-stop).
 *
 * Threads: one thread at a time per rendezvous. When that thread is not the
 * one that started MPI, MPI must provide MPI_THREAD_SERIALIZED or better
 * (checked by create). Every MPI error is returned as EPM_ERR_MPI with a
 * message naming the MPI call and MPI's own text for the code.
 */
#ifndef EPMOE_RENDEZVOUS_H
#define EPMOE_RENDEZVOUS_H

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
  EPM_RDV_ABORT_DUPLICATE = 4, /* this rank already had an open join (a caller bug) */
} epm_rendezvous_abort_t;

typedef struct {
  epm_rendezvous_event_kind_t kind;
  uint32_t layer;                /* GO, ABORT: the key */
  uint64_t step_id;
  int64_t total_tokens;          /* GO: sum of the tokens every rank joined with */
  epm_rendezvous_abort_t reason; /* ABORT */
  int nmissing;                  /* ABORT (TIMEOUT): ranks that never joined the key */
  const int *missing;            /* ascending; valid until the next call on this rendezvous */
} epm_rendezvous_event_t;

typedef struct {
  /* Seconds from the first join of a key until the key is aborted when not
   * every rank joined it. Must be > 0. A late join of an aborted key is
   * refused for 2 x timeout afterwards; later the key may be joined afresh. */
  double timeout_s;
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
 * joins too). At most one open join per rank: the next is allowed after its
 * GO or ABORT. After SHUTDOWN or leave, returns EPM_ERR_ABORTED, sends nothing. */
epm_status_t epm_rendezvous_join(epm_rendezvous_t *r, uint32_t layer, uint64_t step_id, int64_t tokens);
/* Never blocks. Runs the coordinator's inputs on the rank that hosts it, then
 * reports at most one event addressed to this rank (ev->kind NONE if none). */
epm_status_t epm_rendezvous_poll(epm_rendezvous_t *r, epm_rendezvous_event_t *ev);
/* 1 while a join waits for its GO or ABORT. */
int epm_rendezvous_joined(const epm_rendezvous_t *r);
/* Ask the group to drain (sends LEAVE once; later calls do nothing). Every
 * rank then sees SHUTDOWN from poll, including this one. */
epm_status_t epm_rendezvous_leave(epm_rendezvous_t *r);
/* Never blocks; call until *done. Leaves first when this rank has not, then
 * waits (non-blocking) until every rank of the group has left and drained.
 * Requires no open join (poll until its GO/ABORT first: EPM_ERR_INVALID_ARG
 * otherwise). Consumes this rank's SHUTDOWN if poll has not reported it. */
epm_status_t epm_rendezvous_drain(epm_rendezvous_t *r, int *done);

const char *epm_rendezvous_abort_name(epm_rendezvous_abort_t reason); /* "timeout", ...; never NULL */

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_RENDEZVOUS_H */
