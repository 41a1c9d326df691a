/* SPDX-License-Identifier: Apache-2.0 */
/* rendezvous_coord.c — the coordinator state machine (rules in
 * rendezvous_coord.h). Pure: inputs in, messages out, time passed in. */
#include "rendezvous_coord.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/checked.h"

/* Aborted keys remembered to refuse late joins. A ring: 64 keys aborted
 * within 2 x timeout is far beyond any real group (one key per step). */
enum { ABORTED_RING = 64 };

/* One key with at least one open join. tokens[r] < 0: rank r has not joined. */
typedef struct {
  uint32_t layer;
  uint64_t step_id;
  uint64_t t_first; /* when its first join arrived */
  int njoined;
  int64_t *tokens; /* [size]; the buffer stays with the slot when the key closes */
} okey_t;

typedef struct {
  int used;
  uint32_t layer;
  uint64_t step_id;
  uint64_t t_ns;    /* when it was aborted */
  int cancelled_by; /* -1: timed out */
} aborted_t;

struct epm__rdv_coord {
  epm__rdv_coord_opts_t o;
  okey_t *keys; /* [0, nkeys) open, in the order they were opened; [nkeys, keys_cap) spare */
  int nkeys, keys_cap;
  int *open_of;  /* [size]: open joins per rank */
  int *left;     /* [size] */
  int nleft;
  int shutdown;
  int failed;
  aborted_t aborted[ABORTED_RING];
  int ab_next;
  /* liveness */
  uint64_t *heard;    /* [size]: last input from the rank */
  uint64_t *progress; /* [size]: last progress counter reported */
  int *phase;         /* [size]: epm_rendezvous_phase_t last reported */
  uint64_t t_progress; /* last time any counter moved */
  uint64_t t_hb;       /* last coordinator heartbeat */
  /* outbox of the current input: messages keep an offset into miss[] until
   * epm__rdv_coord_outbox turns it into a pointer (miss may grow meanwhile) */
  epm__rdv_msg_t *out;
  size_t *out_miss_off;
  int nout, out_cap;
  int *miss;
  size_t nmiss, miss_cap;
};

epm_status_t epm__rdv_coord_create(const epm__rdv_coord_opts_t *o, uint64_t now_ns, epm__rdv_coord_t **out) {
  if (!out || !o) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: NULL argument");
  *out = NULL;
  if (o->size < 1)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: group of %d ranks (need >= 1)", o->size);
  if (o->timeout_ns < 1) return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: timeout of 0 ns (need >= 1)");
  if (o->max_open < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: max_open %d (need >= 0)", o->max_open);
  if (o->self < -1 || o->self >= o->size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous coordinator: self rank %d of %d", o->self, o->size);
  epm__rdv_coord_t *c = calloc(1, sizeof *c);
  if (!c) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator state");
  c->o = *o;
  if (!c->o.max_open) c->o.max_open = EPM_RDV_DEFAULT_MAX_OPEN;
  if (c->o.live_ns && !c->o.hb_period_ns) c->o.hb_period_ns = c->o.live_ns / 5 ? c->o.live_ns / 5 : 1;
  const size_t P = (size_t)o->size;
  c->out_cap = 2 * o->size + 2;
  c->miss_cap = P;
  c->open_of = calloc(P, sizeof *c->open_of);
  c->left = calloc(P, sizeof *c->left);
  c->heard = calloc(P, sizeof *c->heard);
  c->progress = calloc(P, sizeof *c->progress);
  c->phase = calloc(P, sizeof *c->phase);
  c->out = calloc((size_t)c->out_cap, sizeof *c->out);
  c->out_miss_off = calloc((size_t)c->out_cap, sizeof *c->out_miss_off);
  c->miss = calloc(c->miss_cap, sizeof *c->miss);
  if (!c->open_of || !c->left || !c->heard || !c->progress || !c->phase || !c->out || !c->out_miss_off || !c->miss) {
    epm__rdv_coord_destroy(c);
    return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator state for %d ranks", o->size);
  }
  for (size_t r = 0; r < P; r++) c->heard[r] = now_ns;
  c->t_progress = now_ns;
  c->t_hb = now_ns;
  *out = c;
  return EPM_OK;
}

void epm__rdv_coord_destroy(epm__rdv_coord_t *c) {
  if (!c) return;
  for (int i = 0; i < c->keys_cap; i++) free(c->keys[i].tokens);
  free(c->keys);
  free(c->open_of);
  free(c->left);
  free(c->heard);
  free(c->progress);
  free(c->phase);
  free(c->out);
  free(c->out_miss_off);
  free(c->miss);
  free(c);
}

static uint64_t elapsed(uint64_t now, uint64_t then) { return now > then ? now - then : 0; }

/* ---- the outbox -------------------------------------------------------------- */

static epm_status_t push(epm__rdv_coord_t *c, int to, int kind, epm_rendezvous_abort_t reason, uint32_t layer,
                         uint64_t step_id) {
  if (c->nout == c->out_cap) {
    if (c->out_cap > INT_MAX / 2)
      return epm_error(EPM_ERR_OVERFLOW, "rendezvous coordinator: outbox of %d messages cannot double", c->out_cap);
    int cap = 2 * c->out_cap;
    size_t b1, b2;
    if (epm_mul_size((size_t)cap, sizeof *c->out, &b1) || epm_mul_size((size_t)cap, sizeof *c->out_miss_off, &b2))
      return epm_error(EPM_ERR_OVERFLOW, "rendezvous coordinator: outbox of %d messages", cap);
    epm__rdv_msg_t *o = realloc(c->out, b1);
    if (!o) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator: outbox of %d messages", cap);
    c->out = o;
    size_t *off = realloc(c->out_miss_off, b2);
    if (!off) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator: outbox of %d messages", cap);
    c->out_miss_off = off;
    c->out_cap = cap;
  }
  epm__rdv_msg_t *m = &c->out[c->nout];
  memset(m, 0, sizeof *m);
  m->to = to;
  m->kind = kind;
  m->reason = reason;
  m->layer = layer;
  m->step_id = step_id;
  m->cancelled_by = -1;
  m->failed_rank = -1;
  c->out_miss_off[c->nout] = c->nmiss;
  c->nout++;
  return EPM_OK;
}

/* ---- keys ---------------------------------------------------------------------- */

static int find_key(const epm__rdv_coord_t *c, uint32_t layer, uint64_t step_id) {
  for (int i = 0; i < c->nkeys; i++)
    if (c->keys[i].layer == layer && c->keys[i].step_id == step_id) return i;
  return -1;
}

static epm_status_t open_key(epm__rdv_coord_t *c, uint32_t layer, uint64_t step_id, uint64_t now, int *idx) {
  if (c->nkeys == c->keys_cap) {
    if (c->keys_cap > INT_MAX / 2)
      return epm_error(EPM_ERR_OVERFLOW, "rendezvous coordinator: %d open keys cannot double", c->keys_cap);
    int cap = c->keys_cap ? 2 * c->keys_cap : 8;
    size_t bytes;
    if (epm_mul_size((size_t)cap, sizeof *c->keys, &bytes))
      return epm_error(EPM_ERR_OVERFLOW, "rendezvous coordinator: %d open keys", cap);
    okey_t *k = realloc(c->keys, bytes);
    if (!k) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator: %d open keys", cap);
    memset(k + c->keys_cap, 0, (size_t)(cap - c->keys_cap) * sizeof *k);
    c->keys = k;
    c->keys_cap = cap;
  }
  okey_t *k = &c->keys[c->nkeys];
  if (!k->tokens && !(k->tokens = malloc((size_t)c->o.size * sizeof *k->tokens)))
    return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator: a key of %d ranks", c->o.size);
  for (int r = 0; r < c->o.size; r++) k->tokens[r] = -1;
  k->layer = layer;
  k->step_id = step_id;
  k->t_first = now;
  k->njoined = 0;
  *idx = c->nkeys++;
  return EPM_OK;
}

/* Close key i: its joins stop counting, its slot (and buffer) moves to the
 * spare end so the open keys keep their order. */
static void close_key(epm__rdv_coord_t *c, int i) {
  okey_t k = c->keys[i];
  for (int r = 0; r < c->o.size; r++)
    if (k.tokens[r] >= 0) c->open_of[r]--;
  memmove(&c->keys[i], &c->keys[i + 1], (size_t)(c->nkeys - i - 1) * sizeof k);
  c->keys[--c->nkeys] = k;
}

static void remember_abort(epm__rdv_coord_t *c, uint32_t layer, uint64_t step_id, uint64_t now, int cancelled_by) {
  aborted_t *a = &c->aborted[c->ab_next];
  c->ab_next = (c->ab_next + 1) % ABORTED_RING;
  *a = (aborted_t){1, layer, step_id, now, cancelled_by};
}

/* Abort key i on every rank that joined it. A timeout lists the ranks missing
 * from the key once in miss[], shared by its messages. */
static epm_status_t abort_key(epm__rdv_coord_t *c, int i, epm_rendezvous_abort_t reason, int cancelled_by,
                              uint64_t now) {
  okey_t *k = &c->keys[i];
  size_t off = c->nmiss;
  int nmissing = 0;
  if (reason == EPM_RDV_ABORT_TIMEOUT) {
    size_t need = c->nmiss + (size_t)c->o.size;
    if (need > c->miss_cap) {
      size_t cap = c->miss_cap * 2 > need ? c->miss_cap * 2 : need, bytes;
      if (epm_mul_size(cap, sizeof(int), &bytes))
        return epm_error(EPM_ERR_OVERFLOW, "rendezvous coordinator: %zu missing-rank entries", cap);
      int *p = realloc(c->miss, bytes);
      if (!p) return epm_error(EPM_ERR_NOMEM, "rendezvous coordinator: %zu missing-rank entries", cap);
      c->miss = p;
      c->miss_cap = cap;
    }
    for (int r = 0; r < c->o.size; r++)
      if (k->tokens[r] < 0) c->miss[c->nmiss + (size_t)nmissing++] = r;
    c->nmiss += (size_t)nmissing;
  }
  if (reason == EPM_RDV_ABORT_TIMEOUT || reason == EPM_RDV_ABORT_CANCELLED)
    remember_abort(c, k->layer, k->step_id, now, cancelled_by);
  for (int r = 0; r < c->o.size; r++) {
    if (k->tokens[r] < 0) continue;
    EPM_TRY(push(c, r, EPM_RDV_ABORT, reason, k->layer, k->step_id));
    c->out[c->nout - 1].nmissing = nmissing;
    c->out[c->nout - 1].cancelled_by = cancelled_by;
    c->out_miss_off[c->nout - 1] = off;
  }
  close_key(c, i);
  return EPM_OK;
}

static const aborted_t *recently_aborted(const epm__rdv_coord_t *c, uint32_t layer, uint64_t step_id, uint64_t now) {
  const uint64_t horizon = c->o.timeout_ns > UINT64_MAX / 2 ? UINT64_MAX : 2 * c->o.timeout_ns;
  for (int i = 0; i < ABORTED_RING; i++) {
    const aborted_t *a = &c->aborted[i];
    if (a->used && a->layer == layer && a->step_id == step_id && elapsed(now, a->t_ns) < horizon) return a;
  }
  return NULL;
}

/* ---- liveness -------------------------------------------------------------------- */

static epm_status_t fail_group(epm__rdv_coord_t *c, epm_rendezvous_fail_t why, int rank, uint64_t for_ns) {
  c->failed = 1;
  for (int r = 0; r < c->o.size; r++) {
    if (r == rank) continue; /* a silent rank would not read it */
    EPM_TRY(push(c, r, EPM__RDV_FAILED, EPM_RDV_ABORT_NONE, 0, 0));
    c->out[c->nout - 1].fail = why;
    c->out[c->nout - 1].failed_rank = rank;
    c->out[c->nout - 1].silent_ns = for_ns;
  }
  return EPM_OK;
}

static epm_status_t check_liveness(epm__rdv_coord_t *c, uint64_t now) {
  if (!c->o.live_ns || c->failed) return EPM_OK;
  /* The longest-silent rank is named: with several gone, it went first. */
  int worst = -1;
  uint64_t worst_ns = 0;
  for (int r = 0; r < c->o.size; r++) {
    uint64_t s = r == c->o.self ? 0 : elapsed(now, c->heard[r]);
    if (s > c->o.live_ns && s > worst_ns) worst = r, worst_ns = s;
  }
  if (worst >= 0) return fail_group(c, EPM_RDV_FAIL_SILENT, worst, worst_ns);
  if (c->o.stall_ns) {
    int comm = 0, compute = 0;
    for (int r = 0; r < c->o.size; r++) {
      comm += c->phase[r] == EPM_RDV_PHASE_COMM;
      compute += c->phase[r] == EPM_RDV_PHASE_COMPUTE;
    }
    uint64_t still = elapsed(now, c->t_progress);
    if (comm && !compute && still > c->o.stall_ns) return fail_group(c, EPM_RDV_FAIL_STALL, -1, still);
  }
  if (elapsed(now, c->t_hb) >= c->o.hb_period_ns) {
    c->t_hb = now;
    for (int r = 0; r < c->o.size; r++) EPM_TRY(push(c, r, EPM__RDV_HEARTBEAT, EPM_RDV_ABORT_NONE, 0, 0));
  }
  return EPM_OK;
}

/* Every input: the sender is alive; then deadlines. Liveness is judged by
 * tick alone, which the driver runs after feeding every message that
 * arrived: a coordinator that was itself descheduled must read the queued
 * heartbeats before it calls anyone silent. */
static epm_status_t begin_input(epm__rdv_coord_t *c, int rank, uint64_t now) {
  c->nout = 0;
  c->nmiss = 0;
  if (rank >= 0 && now > c->heard[rank]) c->heard[rank] = now;
  /* The first join of a key is its oldest, and keys are kept in the order
   * they opened, so expiring front to back aborts the oldest first. */
  for (int i = 0; i < c->nkeys;) {
    if (elapsed(now, c->keys[i].t_first) > c->o.timeout_ns) EPM_TRY(abort_key(c, i, EPM_RDV_ABORT_TIMEOUT, -1, now));
    else i++;
  }
  return EPM_OK;
}

static epm_status_t check_rank(const epm__rdv_coord_t *c, int rank, const char *what) {
  if (rank < 0 || rank >= c->o.size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: %s from rank %d of a group of %d", what, rank, c->o.size);
  return EPM_OK;
}

/* ---- inputs ---------------------------------------------------------------------- */

epm_status_t epm__rdv_coord_tick(epm__rdv_coord_t *c, uint64_t now_ns) {
  EPM_TRY(begin_input(c, -1, now_ns));
  return check_liveness(c, now_ns);
}

epm_status_t epm__rdv_coord_join(epm__rdv_coord_t *c, int rank, uint32_t layer, uint64_t step_id, int64_t tokens,
                                 uint64_t now_ns) {
  c->nout = 0;
  EPM_TRY(check_rank(c, rank, "join"));
  /* Bounded so the GO's total of P counts cannot overflow. */
  if (tokens < 0 || tokens > INT64_MAX / c->o.size)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: rank %d joined (layer %u, id %llu) with %lld tokens (0..%lld)",
                     rank, layer, (unsigned long long)step_id, (long long)tokens,
                     (long long)(INT64_MAX / c->o.size));
  EPM_TRY(begin_input(c, rank, now_ns));
  if (c->shutdown || c->failed) return push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_SHUTDOWN, layer, step_id);
  int i = find_key(c, layer, step_id);
  if (i >= 0 && c->keys[i].tokens[rank] >= 0)
    return push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_DUPLICATE, layer, step_id);
  if (c->open_of[rank] >= c->o.max_open) return push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_LIMIT, layer, step_id);
  const aborted_t *a = i < 0 ? recently_aborted(c, layer, step_id, now_ns) : NULL;
  if (a) {
    int by = a->cancelled_by;
    EPM_TRY(push(c, rank, EPM_RDV_ABORT, EPM_RDV_ABORT_LATE, layer, step_id));
    c->out[c->nout - 1].cancelled_by = by;
    return EPM_OK;
  }
  if (i < 0) EPM_TRY(open_key(c, layer, step_id, now_ns, &i));
  okey_t *k = &c->keys[i];
  k->tokens[rank] = tokens;
  k->njoined++;
  c->open_of[rank]++;
  if (k->njoined < c->o.size) return EPM_OK; /* still waiting for someone */
  int64_t total = 0;
  for (int r = 0; r < c->o.size; r++) total += k->tokens[r];
  for (int r = 0; r < c->o.size; r++) {
    EPM_TRY(push(c, r, EPM_RDV_GO, EPM_RDV_ABORT_NONE, layer, step_id));
    c->out[c->nout - 1].total_tokens = total;
  }
  close_key(c, i);
  return EPM_OK;
}

epm_status_t epm__rdv_coord_cancel(epm__rdv_coord_t *c, int rank, uint32_t layer, uint64_t step_id, uint64_t now_ns) {
  c->nout = 0;
  EPM_TRY(check_rank(c, rank, "cancel"));
  EPM_TRY(begin_input(c, rank, now_ns));
  int i = find_key(c, layer, step_id);
  if (i < 0 || c->keys[i].tokens[rank] < 0) return EPM_OK; /* GO'd or aborted already: that answer stands */
  return abort_key(c, i, EPM_RDV_ABORT_CANCELLED, rank, now_ns);
}

epm_status_t epm__rdv_coord_leave(epm__rdv_coord_t *c, int rank, uint64_t now_ns) {
  c->nout = 0;
  EPM_TRY(check_rank(c, rank, "leave"));
  EPM_TRY(begin_input(c, rank, now_ns));
  if (!c->left[rank]) {
    c->left[rank] = 1;
    c->nleft++;
  }
  if (c->shutdown) return EPM_OK;
  c->shutdown = 1;
  while (c->nkeys) EPM_TRY(abort_key(c, 0, EPM_RDV_ABORT_SHUTDOWN, -1, now_ns));
  for (int r = 0; r < c->o.size; r++) EPM_TRY(push(c, r, EPM_RDV_SHUTDOWN, EPM_RDV_ABORT_NONE, 0, 0));
  return EPM_OK;
}

epm_status_t epm__rdv_coord_heartbeat(epm__rdv_coord_t *c, int rank, uint64_t progress, epm_rendezvous_phase_t phase,
                                      uint64_t now_ns) {
  c->nout = 0;
  EPM_TRY(check_rank(c, rank, "heartbeat"));
  if ((int)phase < EPM_RDV_PHASE_IDLE || (int)phase > EPM_RDV_PHASE_COMM)
    return epm_error(EPM_ERR_INVALID_ARG, "rendezvous: heartbeat from rank %d with phase %d (0..2)", rank, (int)phase);
  /* Record before the checks: this very heartbeat is the progress they see. */
  if (progress != c->progress[rank]) {
    c->progress[rank] = progress;
    if (now_ns > c->t_progress) c->t_progress = now_ns;
  }
  c->phase[rank] = (int)phase;
  return begin_input(c, rank, now_ns);
}

int epm__rdv_coord_outbox(epm__rdv_coord_t *c, const epm__rdv_msg_t **msgs) {
  for (int i = 0; i < c->nout; i++) c->out[i].missing = c->out[i].nmissing ? c->miss + c->out_miss_off[i] : NULL;
  *msgs = c->out;
  return c->nout;
}

int epm__rdv_coord_shutdown(const epm__rdv_coord_t *c) { return c->shutdown; }
int epm__rdv_coord_failed(const epm__rdv_coord_t *c) { return c->failed; }
int epm__rdv_coord_left(const epm__rdv_coord_t *c) { return c->nleft; }
int epm__rdv_coord_open_keys(const epm__rdv_coord_t *c) { return c->nkeys; }

int epm__rdv_coord_open(const epm__rdv_coord_t *c) {
  int n = 0;
  for (int r = 0; r < c->o.size; r++) n += c->open_of[r];
  return n;
}

const char *epm_rendezvous_abort_name(epm_rendezvous_abort_t reason) {
  switch (reason) {
    case EPM_RDV_ABORT_NONE: return "none";
    case EPM_RDV_ABORT_TIMEOUT: return "timeout";
    case EPM_RDV_ABORT_LATE: return "late";
    case EPM_RDV_ABORT_SHUTDOWN: return "shutdown";
    case EPM_RDV_ABORT_DUPLICATE: return "duplicate";
    case EPM_RDV_ABORT_CANCELLED: return "cancelled";
    case EPM_RDV_ABORT_LIMIT: return "limit";
  }
  return "unknown";
}
