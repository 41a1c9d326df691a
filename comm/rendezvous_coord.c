/* rendezvous_coord.c — the coordinator state machine (rules in
 * rendezvous_coord.h). Pure: inputs in, messages out, time passed in. */
#include "rendezvous_coord.h"

#include <stdlib.h>
#include <string.h>

#include "epmoe/checked.h"

/* Aborted keys remembered to refuse late joins. A ring: 64 keys aborted
 * within 2 x timeout is far beyond any real group (one key per step). */
enum { ABORTED_RING = 64 };

typedef struct {
  int open;
  uint32_t layer;
  uint64_t step_id;
  int64_t tokens;
  uint64_t t_ns; /* when the join arrived */
} join_t;

typedef struct {
  int used;
  uint32_t layer;
  uint64_t step_id;
  uint64_t t_ns; /* when it was aborted */
} aborted_t;

struct epm__rdv_coord {
  int size;
  uint64_t timeout_ns;
  join_t *joins;  /* [size] */
  int *left;      /* [size] */
  int nleft;
  int shutdown;
  aborted_t aborted[ABORTED_RING];
  int ab_next;
  /* outbox of the current input: messages keep an offset into miss[] until
   * epm__rdv_coord_outbox turns it into a pointer (miss may grow meanwhile) */
  epm__rdv_msg_t *out;
  size_t *out_miss_off;
  int nout, out_cap;
  int *miss;
  size_t nmiss, miss_cap;
};

epm_status_t epm__rdv_coord_create(int size, uint64_t timeout_ns, epm__rdv_coord_t **out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: out is NULL");
  *out = NULL;
  if (size < 1) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: group of %d ranks (need >= 1)", size);
  if (timeout_ns < 1) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: timeout of 0 ns (need >= 1)");
  epm__rdv_coord_t *c = calloc(1, sizeof *c);
  if (!c) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator state");
  c->size = size;
  c->timeout_ns = timeout_ns;
  /* One input sends at most: one ABORT per open join (tick, leave), P
   * SHUTDOWNs or P GOs, and one refusal. */
  c->out_cap = 2 * size + 2;
  c->miss_cap = (size_t)size;
  c->joins = calloc((size_t)size, sizeof *c->joins);
  c->left = calloc((size_t)size, sizeof *c->left);
  c->out = calloc((size_t)c->out_cap, sizeof *c->out);
  c->out_miss_off = calloc((size_t)c->out_cap, sizeof *c->out_miss_off);
  c->miss = calloc(c->miss_cap, sizeof *c->miss);
  if (!c->joins || !c->left || !c->out || !c->out_miss_off || !c->miss) {
    epm__rdv_coord_destroy(c);
    return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator state for %d ranks", size);
  }
  *out = c;
  return EPM_OK;
}

void epm__rdv_coord_destroy(epm__rdv_coord_t *c) {
  if (!c) return;
  free(c->joins);
  free(c->left);
  free(c->out);
  free(c->out_miss_off);
  free(c->miss);
  free(c);
}

static int same_key(const join_t *j, uint32_t layer, uint64_t step_id) {
  return j->open && j->layer == layer && j->step_id == step_id;
}

static uint64_t elapsed(uint64_t now, uint64_t then) { return now > then ? now - then : 0; }

static epm_status_t push(epm__rdv_coord_t *c, int to, epm_rendezvous_event_kind_t kind, epm_rendezvous_abort_t reason,
                         uint32_t layer, uint64_t step_id) {
  if (c->nout >= c->out_cap)
    return epm_error(EPM_ERR_INTERNAL, "rendezvous coordinator: outbox of %d messages is full", c->out_cap);
  epm__rdv_msg_t *m = &c->out[c->nout];
  memset(m, 0, sizeof *m);
  m->to = to;
  m->kind = kind;
  m->reason = reason;
  m->layer = layer;
  m->step_id = step_id;
  c->out_miss_off[c->nout] = c->nmiss;
  c->nout++;
  return EPM_OK;
}

/* Close every open join of the key with ABORT(reason). For a timeout the
 * ranks missing from the key are listed once in miss[] and shared by its
 * messages. */
static epm_status_t abort_key(epm__rdv_coord_t *c, uint32_t layer, uint64_t step_id, epm_rendezvous_abort_t reason,
                              uint64_t now) {
  size_t off = c->nmiss;
  int nmissing = 0;
  if (reason == EPM_RDV_ABORT_TIMEOUT) {
    size_t need = c->nmiss + (size_t)c->size;
    if (need > c->miss_cap) {
      size_t cap = c->miss_cap * 2 > need ? c->miss_cap * 2 : need, bytes;
      if (epm_mul_size(cap, sizeof(int), &bytes))
        return epm_error(EPM_ERR_OVERFLOW, "rendezvous coordinator: %zu missing-rank entries", cap);
      int *p = realloc(c->miss, bytes);
      if (!p) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator: %zu missing-rank entries", cap);
      c->miss = p;
      c->miss_cap = cap;
    }
    for (int r = 0; r < c->size; r++)
      if (!same_key(&c->joins[r], layer, step_id)) c->miss[c->nmiss + (size_t)nmissing++] = r;
    c->nmiss += (size_t)nmissing;
    aborted_t *a = &c->aborted[c->ab_next];
    c->ab_next = (c->ab_next + 1) % ABORTED_RING;
    a->used = 1;
    a->layer = layer;
    a->step_id = step_id;
    a->t_ns = now;
  }
  for (int r = 0; r < c->size; r++) {
    if (!same_key(&c->joins[r], layer, step_id)) continue;
    EPM_TRY(push(c, r, EPM_RDV_ABORT, reason, layer, step_id));
    c->out[c->nout - 1].nmissing = nmissing;
    c->out_miss_off[c->nout - 1] = off;
    c->joins[r].open = 0;
  }
  return EPM_OK;
}

static epm_status_t expire(epm__rdv_coord_t *c, uint64_t now) {
  /* The first join of a key is its oldest, so "some join of the key is older
   * than the timeout" is the same test. */
  for (int r = 0; r < c->size; r++) {
    const join_t *j = &c->joins[r];
    if (j->open && elapsed(now, j->t_ns) > c->timeout_ns)
      EPM_TRY(abort_key(c, j->layer, j->step_id, EPM_RDV_ABORT_TIMEOUT, now));
  }
  return EPM_OK;
}

static int recently_aborted(const epm__rdv_coord_t *c, uint32_t layer, uint64_t step_id, uint64_t now) {
  const uint64_t horizon = c->timeout_ns > UINT64_MAX / 2 ? UINT64_MAX : 2 * c->timeout_ns;
  for (int i = 0; i < ABORTED_RING; i++) {
    const aborted_t *a = &c->aborted[i];
    if (a->used && a->layer == layer && a->step_id == step_id && elapsed(now, a->t_ns) < horizon) return 1;
  }
  return 0;
}

static void begin_input(epm__rdv_coord_t *c) {
  c->nout = 0;
  c->nmiss = 0;
}

epm_status_t epm__rdv_coord_tick(epm__rdv_coord_t *c, uint64_t now_ns) {
  begin_input(c);
  return expire(c, now_ns);
}

epm_status_t epm__rdv_coord_join(epm__rdv_coord_t *c, int rank, uint32_t layer, uint64_t step_id, int64_t tokens,
                                 uint64_t now_ns) {
  begin_input(c);
  if (rank < 0 || rank >= c->size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: join from rank %d of a group of %d", rank, c->size);
  /* Bounded so the GO's total of P counts cannot overflow. */
  if (tokens < 0 || tokens > INT64_MAX / c->size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: rank %d joined (layer %u, id %llu) with %lld tokens (0..%lld)",
                     rank, layer, (unsigned long long)step_id, (long long)tokens, (long long)(INT64_MAX / c->size));
  EPM_TRY(expire(c, now_ns));
  join_t *j = &c->joins[rank];
  if (c->shutdown) return push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_SHUTDOWN, layer, step_id);
  if (j->open) return push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_DUPLICATE, layer, step_id);
  if (recently_aborted(c, layer, step_id, now_ns))
    return push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_LATE, layer, step_id);
  j->open = 1;
  j->layer = layer;
  j->step_id = step_id;
  j->tokens = tokens;
  j->t_ns = now_ns;
  int64_t total = 0;
  for (int r = 0; r < c->size; r++) {
    if (!same_key(&c->joins[r], layer, step_id)) return EPM_OK; /* still waiting for rank r */
    total += c->joins[r].tokens;
  }
  for (int r = 0; r < c->size; r++) {
    EPM_TRY(push(c, r, EPM_RDV_GO, EPM_RDV_ABORT_NONE, layer, step_id));
    c->out[c->nout - 1].total_tokens = total;
    c->joins[r].open = 0;
  }
  return EPM_OK;
}

epm_status_t epm__rdv_coord_leave(epm__rdv_coord_t *c, int rank, uint64_t now_ns) {
  begin_input(c);
  if (rank < 0 || rank >= c->size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: leave from rank %d of a group of %d", rank, c->size);
  EPM_TRY(expire(c, now_ns));
  if (!c->left[rank]) {
    c->left[rank] = 1;
    c->nleft++;
  }
  if (c->shutdown) return EPM_OK;
  c->shutdown = 1;
  for (int r = 0; r < c->size; r++)
    if (c->joins[r].open) EPM_TRY(abort_key(c, c->joins[r].layer, c->joins[r].step_id, EPM_RDV_ABORT_SHUTDOWN, now_ns));
  for (int r = 0; r < c->size; r++) EPM_TRY(push(c, r, EPM_RDV_SHUTDOWN, EPM_RDV_ABORT_NONE, 0, 0));
  return EPM_OK;
}

int epm__rdv_coord_outbox(epm__rdv_coord_t *c, const epm__rdv_msg_t **msgs) {
  for (int i = 0; i < c->nout; i++) c->out[i].missing = c->out[i].nmissing ? c->miss + c->out_miss_off[i] : NULL;
  *msgs = c->out;
  return c->nout;
}

int epm__rdv_coord_shutdown(const epm__rdv_coord_t *c) { return c->shutdown; }
int epm__rdv_coord_left(const epm__rdv_coord_t *c) { return c->nleft; }

int epm__rdv_coord_open(const epm__rdv_coord_t *c) {
  int n = 0;
  for (int r = 0; r < c->size; r++) n += c->joins[r].open;
  return n;
}

const char *epm_rendezvous_abort_name(epm_rendezvous_abort_t reason) {
  switch (reason) {
    case EPM_RDV_ABORT_NONE: return "none";
    case EPM_RDV_ABORT_TIMEOUT: return "timeout";
    case EPM_RDV_ABORT_LATE: return "late";
    case EPM_RDV_ABORT_SHUTDOWN: return "shutdown";
    case EPM_RDV_ABORT_DUPLICATE: return "duplicate";
  }
  return "unknown";
}
