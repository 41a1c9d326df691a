/* rendezvous_coord.h — private: the rendezvous coordinator as a pure state
 * machine (comm/rendezvous_coord.c), driven by comm/rendezvous.c over MPI and
 * by tests/unit/test_rendezvous_coord.c directly.
 *
 * No MPI, no clock, no threads: time comes in as now_ns with every input, and
 * every input returns the messages to send in its outbox. So the rules can be
 * tested step by step, including the races a real group only hits sometimes.
 *
 * Rules (a key is (layer, step_id); each rank has at most one open join):
 *  - join: refused with ABORT(SHUTDOWN) once the group shuts down; with
 *    ABORT(DUPLICATE) when the rank already has an open join (the first one
 *    stays); with ABORT(LATE) when the key was aborted less than 2 x timeout
 *    ago. Otherwise recorded; when every rank has an open join of this key,
 *    GO(key, total tokens) goes to every rank and the joins close.
 *  - tick(now): a key whose first open join is older than the timeout
 *    (now - t > timeout) is aborted: ABORT(TIMEOUT, ranks missing from the
 *    key) to each rank that joined it, and the key is remembered as aborted.
 *    Every input runs tick(now) first, so a deadline holds even when the
 *    completing join and the deadline fall between two ticks.
 *  - leave(rank): the first one aborts every open join (ABORT(SHUTDOWN)) and
 *    sends SHUTDOWN to every rank, once. Leaves are counted: the driver's
 *    drain on the coordinator's rank waits for all of them, so no message to
 *    the coordinator is left unreceived.
 * Every join is answered by exactly one GO or ABORT to the rank that sent it.
 */
#ifndef EPMOE_RENDEZVOUS_COORD_H
#define EPMOE_RENDEZVOUS_COORD_H

#include <stdint.h>

#include "epmoe/rendezvous.h"

typedef struct epm__rdv_coord epm__rdv_coord_t;

/* One message to send. missing points into the coordinator and is valid until
 * its next input. */
typedef struct {
  int to;
  epm_rendezvous_event_kind_t kind; /* GO | ABORT | SHUTDOWN */
  epm_rendezvous_abort_t reason;    /* ABORT */
  uint32_t layer;                   /* GO, ABORT */
  uint64_t step_id;
  int64_t total_tokens;             /* GO */
  int nmissing;                     /* ABORT(TIMEOUT) */
  const int *missing;
} epm__rdv_msg_t;

/* size >= 1 ranks; timeout_ns >= 1. */
epm_status_t epm__rdv_coord_create(int size, uint64_t timeout_ns, epm__rdv_coord_t **out);
void epm__rdv_coord_destroy(epm__rdv_coord_t *c);

/* Inputs. Each clears the outbox first. EPM_ERR_INVALID_ARG (and no state
 * change) for a rank outside [0, size) or tokens outside [0, INT64_MAX / size]. */
epm_status_t epm__rdv_coord_join(epm__rdv_coord_t *c, int rank, uint32_t layer, uint64_t step_id,
                                 int64_t tokens, uint64_t now_ns);
epm_status_t epm__rdv_coord_leave(epm__rdv_coord_t *c, int rank, uint64_t now_ns);
epm_status_t epm__rdv_coord_tick(epm__rdv_coord_t *c, uint64_t now_ns);

/* The messages of the last input, in the order to send them. */
int epm__rdv_coord_outbox(epm__rdv_coord_t *c, const epm__rdv_msg_t **msgs);

int epm__rdv_coord_shutdown(const epm__rdv_coord_t *c); /* 1 once SHUTDOWN went out */
int epm__rdv_coord_left(const epm__rdv_coord_t *c);     /* ranks that sent leave */
int epm__rdv_coord_open(const epm__rdv_coord_t *c);     /* ranks with an open join */

#endif /* EPMOE_RENDEZVOUS_COORD_H */
