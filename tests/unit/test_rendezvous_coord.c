/* test_rendezvous_coord.c — the rendezvous coordinator (comm/rendezvous_coord.c)
 * driven input by input with made-up clocks: every rule of
 * comm/rendezvous_coord.h, the races a real group only hits sometimes, and a
 * randomised run checked against a plain model of the group. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rendezvous_coord.h"

typedef struct {
  uint64_t s;
} rng_t;
static void rng_seed(rng_t *g, uint64_t seed) { g->s = seed; }
static uint64_t rng_next(rng_t *g) { /* splitmix64 */
  uint64_t z = (g->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

enum { T = 1000 }; /* timeout in ns: small numbers keep the clocks readable */

static epm__rdv_coord_t *make(int P) {
  epm__rdv_coord_t *c = NULL;
  assert_int_equal(epm__rdv_coord_create(P, T, &c), EPM_OK);
  return c;
}

static int outbox(epm__rdv_coord_t *c, const epm__rdv_msg_t **m) { return epm__rdv_coord_outbox(c, m); }

static void join_ok(epm__rdv_coord_t *c, int r, uint32_t layer, uint64_t id, int64_t tokens, uint64_t now) {
  assert_int_equal(epm__rdv_coord_join(c, r, layer, id, tokens, now), EPM_OK);
}

static void expect_none(epm__rdv_coord_t *c) {
  const epm__rdv_msg_t *m;
  assert_int_equal(outbox(c, &m), 0);
}

/* m is GO(layer, id, total) to every rank 0..P-1, in rank order. */
static void expect_go_all(const epm__rdv_msg_t *m, int n, int P, uint32_t layer, uint64_t id, int64_t total) {
  assert_int_equal(n, P);
  for (int r = 0; r < P; r++) {
    assert_int_equal(m[r].to, r);
    assert_int_equal(m[r].kind, EPM_RDV_GO);
    assert_int_equal(m[r].layer, layer);
    assert_int_equal(m[r].step_id, id);
    assert_int_equal(m[r].total_tokens, total);
  }
}

static void expect_abort(const epm__rdv_msg_t *m, int to, epm_rendezvous_abort_t reason, uint32_t layer, uint64_t id,
                         const int *missing, int nmissing) {
  assert_int_equal(m->to, to);
  assert_int_equal(m->kind, EPM_RDV_ABORT);
  assert_int_equal(m->reason, reason);
  assert_int_equal(m->layer, layer);
  assert_int_equal(m->step_id, id);
  assert_int_equal(m->nmissing, nmissing);
  for (int i = 0; i < nmissing; i++) assert_int_equal(m->missing[i], missing[i]);
}

/* ---- everyone joins ------------------------------------------------------------ */

static void all_join(int P) {
  epm__rdv_coord_t *c = make(P);
  const epm__rdv_msg_t *m;
  for (uint64_t step = 0; step < 3; step++) { /* consecutive steps reuse the state */
    int64_t total = 0;
    for (int r = 0; r < P; r++) {
      int64_t tok = (int64_t)(r * 10) + (int64_t)step; /* rank 0 of step 0 joins with 0 tokens */
      total += tok;
      join_ok(c, r, 2, 100 + step, tok, step * 10 + (uint64_t)r);
      if (r < P - 1) {
        expect_none(c);
        assert_int_equal(epm__rdv_coord_open(c), r + 1);
      }
    }
    int n = outbox(c, &m);
    expect_go_all(m, n, P, 2, 100 + step, total);
    assert_int_equal(epm__rdv_coord_open(c), 0);
  }
  epm__rdv_coord_destroy(c);
}

static void test_all_join_p1(void **s) { (void)s, all_join(1); }
static void test_all_join_p2(void **s) { (void)s, all_join(2); }
static void test_all_join_p3(void **s) { (void)s, all_join(3); }
static void test_all_join_p8(void **s) { (void)s, all_join(8); }

/* Joins in reverse rank order: the GO still goes out in rank order. */
static void test_reverse_order_join(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(8);
  const epm__rdv_msg_t *m;
  for (int r = 7; r >= 0; r--) {
    if (r < 7) expect_none(c);
    join_ok(c, r, 0, 9, 1, 0);
  }
  expect_go_all(m, outbox(c, &m), 8, 0, 9, 8);
  epm__rdv_coord_destroy(c);
}

/* ---- timeouts ------------------------------------------------------------------- */

/* The deadline is first join + T, exclusive: a join at exactly T still makes it. */
static void test_late_join_within_timeout(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  join_ok(c, 0, 1, 5, 4, 0);
  join_ok(c, 1, 1, 5, 4, 500);
  assert_int_equal(epm__rdv_coord_tick(c, T), EPM_OK);
  expect_none(c);
  join_ok(c, 2, 1, 5, 4, T);
  expect_go_all(m, outbox(c, &m), 3, 1, 5, 12);
  epm__rdv_coord_destroy(c);
}

static void test_late_join_past_timeout(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  const int miss1[] = {1};
  join_ok(c, 0, 1, 5, 4, 0);
  join_ok(c, 2, 1, 5, 4, 400);
  assert_int_equal(epm__rdv_coord_tick(c, T), EPM_OK);
  expect_none(c);
  assert_int_equal(epm__rdv_coord_tick(c, T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 2);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_TIMEOUT, 1, 5, miss1, 1);
  expect_abort(&m[1], 2, EPM_RDV_ABORT_TIMEOUT, 1, 5, miss1, 1);
  assert_int_equal(epm__rdv_coord_open(c), 0);
  /* Rank 1 arrives: refused while the abort is remembered (< 2 T after it). */
  join_ok(c, 1, 1, 5, 4, T + 1 + 2 * T - 1);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 1, EPM_RDV_ABORT_LATE, 1, 5, NULL, 0);
  assert_int_equal(epm__rdv_coord_open(c), 0);
  /* Another key is not affected, and after 2 T the same key is joinable again. */
  join_ok(c, 1, 1, 6, 4, T + 2);
  expect_none(c);
  epm__rdv_coord_destroy(c);
  c = make(2);
  join_ok(c, 0, 0, 1, 0, 0);
  assert_int_equal(epm__rdv_coord_tick(c, T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 1);
  join_ok(c, 1, 0, 1, 0, T + 1 + 2 * T);
  expect_none(c);
  join_ok(c, 0, 0, 1, 0, T + 1 + 2 * T);
  expect_go_all(m, outbox(c, &m), 2, 0, 1, 0);
  epm__rdv_coord_destroy(c);
}

/* The completing join arrives after the deadline with no tick in between:
 * the deadline wins (the joined ranks are aborted, the latecomer refused). */
static void test_deadline_without_tick(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  const int miss2[] = {2};
  join_ok(c, 0, 3, 8, 1, 0);
  join_ok(c, 1, 3, 8, 1, 10);
  join_ok(c, 2, 3, 8, 1, T + 1);
  assert_int_equal(outbox(c, &m), 3);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_TIMEOUT, 3, 8, miss2, 1);
  expect_abort(&m[1], 1, EPM_RDV_ABORT_TIMEOUT, 3, 8, miss2, 1);
  expect_abort(&m[2], 2, EPM_RDV_ABORT_LATE, 3, 8, NULL, 0);
  assert_int_equal(epm__rdv_coord_open(c), 0);
  epm__rdv_coord_destroy(c);
}

/* Nobody but rank 0 joins a group of 8: every other rank is named. */
static void test_timeout_names_all_missing_p8(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(8);
  const epm__rdv_msg_t *m;
  const int miss[] = {1, 2, 3, 4, 5, 6, 7};
  join_ok(c, 0, 0, 0, 3, 50);
  assert_int_equal(epm__rdv_coord_tick(c, 50 + T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_TIMEOUT, 0, 0, miss, 7);
  epm__rdv_coord_destroy(c);
}

/* A clock that steps back (a caller bug) is not a timeout. */
static void test_clock_backwards(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(2);
  join_ok(c, 0, 0, 0, 0, 5000);
  assert_int_equal(epm__rdv_coord_tick(c, 10), EPM_OK);
  expect_none(c);
  epm__rdv_coord_destroy(c);
}

/* ---- protocol misuse ------------------------------------------------------------- */

static void test_duplicate_join(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(2);
  const epm__rdv_msg_t *m;
  join_ok(c, 0, 0, 7, 5, 0);
  join_ok(c, 0, 0, 7, 9, 10); /* same key again */
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_DUPLICATE, 0, 7, NULL, 0);
  join_ok(c, 0, 0, 8, 9, 20); /* another key while one is open */
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_DUPLICATE, 0, 8, NULL, 0);
  assert_int_equal(epm__rdv_coord_open(c), 1);
  join_ok(c, 1, 0, 7, 1, 30);
  expect_go_all(m, outbox(c, &m), 2, 0, 7, 6); /* the first join (5 tokens) stood */
  epm__rdv_coord_destroy(c);

  /* nor does a duplicate restart the first join's clock */
  c = make(3);
  join_ok(c, 0, 0, 7, 5, 0);
  join_ok(c, 0, 0, 7, 5, 900);
  assert_int_equal(epm__rdv_coord_tick(c, T + 1), EPM_OK);
  const int miss[] = {1, 2};
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_TIMEOUT, 0, 7, miss, 2);
  epm__rdv_coord_destroy(c);
}

/* Rank 1 is a step ahead (key B) while ranks 0 and 2 wait on key A: neither
 * key can complete; each times out on its own clock, naming its own missing. */
static void test_out_of_order_joins(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  const int miss_a[] = {1}, miss_b[] = {0, 2};
  join_ok(c, 0, 0, 10, 1, 0);  /* A */
  join_ok(c, 1, 0, 11, 1, 20); /* B */
  join_ok(c, 2, 0, 10, 1, 40); /* A */
  expect_none(c);
  assert_int_equal(epm__rdv_coord_tick(c, T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 2);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_TIMEOUT, 0, 10, miss_a, 1);
  expect_abort(&m[1], 2, EPM_RDV_ABORT_TIMEOUT, 0, 10, miss_a, 1);
  assert_int_equal(epm__rdv_coord_open(c), 1);
  /* ranks 0 and 2 move on to B before B's deadline: B completes */
  join_ok(c, 0, 0, 11, 2, T + 5);
  expect_none(c);
  join_ok(c, 2, 0, 11, 3, T + 10);
  expect_go_all(m, outbox(c, &m), 3, 0, 11, 6);
  /* the other way round: B's deadline first */
  join_ok(c, 1, 0, 21, 1, 2 * T);
  join_ok(c, 0, 0, 20, 1, 2 * T + 1);
  join_ok(c, 2, 0, 20, 1, 2 * T + 1);
  assert_int_equal(epm__rdv_coord_tick(c, 3 * T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 1, EPM_RDV_ABORT_TIMEOUT, 0, 21, miss_b, 2);
  epm__rdv_coord_destroy(c);
}

/* Keys differ in the layer only, or in the step id only: never one step. */
static void test_mismatched_keys(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(2);
  const epm__rdv_msg_t *m;
  const int miss0[] = {0}, miss1[] = {1};
  join_ok(c, 0, 0, 5, 1, 0);
  join_ok(c, 1, 1, 5, 1, 0); /* same id, other layer */
  expect_none(c);
  assert_int_equal(epm__rdv_coord_tick(c, T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 2);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_TIMEOUT, 0, 5, miss1, 1);
  expect_abort(&m[1], 1, EPM_RDV_ABORT_TIMEOUT, 1, 5, miss0, 1);
  join_ok(c, 0, 4, 6, 1, 5 * T);
  join_ok(c, 1, 4, 7, 1, 5 * T); /* same layer, other id */
  expect_none(c);
  assert_int_equal(epm__rdv_coord_open(c), 2);
  epm__rdv_coord_destroy(c);
}

static void test_invalid_inputs(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  join_ok(c, 0, 0, 1, 1, 0);
  assert_int_equal(epm__rdv_coord_join(c, 3, 0, 1, 1, 0), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "rank 3 of a group of 3"));
  assert_int_equal(epm__rdv_coord_join(c, -1, 0, 1, 1, 0), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_join(c, 1, 0, 1, -1, 0), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "-1 tokens"));
  assert_int_equal(epm__rdv_coord_join(c, 1, 0, 1, INT64_MAX / 3 + 1, 0), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_leave(c, 7, 0), EPM_ERR_INVALID_ARG);
  assert_int_equal(outbox(c, &m), 0);
  assert_int_equal(epm__rdv_coord_open(c), 1);
  assert_int_equal(epm__rdv_coord_shutdown(c), 0);
  /* the largest token counts allowed still add up */
  join_ok(c, 1, 0, 1, INT64_MAX / 3, 0);
  join_ok(c, 2, 0, 1, INT64_MAX / 3, 0);
  expect_go_all(m, outbox(c, &m), 3, 0, 1, 1 + 2 * (INT64_MAX / 3));
  epm__rdv_coord_destroy(c);
  epm__rdv_coord_t *bad = NULL;
  assert_int_equal(epm__rdv_coord_create(0, T, &bad), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_create(2, 0, &bad), EPM_ERR_INVALID_ARG);
  assert_null(bad);
}

/* ---- shutdown ------------------------------------------------------------------- */

static void expect_shutdown_all(const epm__rdv_msg_t *m, int P) {
  for (int r = 0; r < P; r++) {
    assert_int_equal(m[r].to, r);
    assert_int_equal(m[r].kind, EPM_RDV_SHUTDOWN);
  }
}

/* Rank 2 leaves while 0 and 1 wait on a key, and its own join of that key is
 * still on the wire: the open joins are aborted, everyone is told once, and
 * the join that arrives afterwards is refused. */
static void test_shutdown_racing_join(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  join_ok(c, 0, 0, 3, 1, 0);
  join_ok(c, 1, 0, 3, 1, 1);
  assert_int_equal(epm__rdv_coord_leave(c, 2, 5), EPM_OK);
  assert_int_equal(outbox(c, &m), 5);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_SHUTDOWN, 0, 3, NULL, 0);
  expect_abort(&m[1], 1, EPM_RDV_ABORT_SHUTDOWN, 0, 3, NULL, 0);
  expect_shutdown_all(&m[2], 3);
  assert_int_equal(epm__rdv_coord_shutdown(c), 1);
  join_ok(c, 2, 0, 3, 1, 6);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 2, EPM_RDV_ABORT_SHUTDOWN, 0, 3, NULL, 0);
  assert_int_equal(epm__rdv_coord_open(c), 0);
  epm__rdv_coord_destroy(c);

  /* the other order: the join completes the key first, then the leave */
  c = make(3);
  join_ok(c, 0, 0, 3, 1, 0);
  join_ok(c, 1, 0, 3, 1, 1);
  join_ok(c, 2, 0, 3, 1, 4);
  expect_go_all(m, outbox(c, &m), 3, 0, 3, 3);
  assert_int_equal(epm__rdv_coord_leave(c, 2, 5), EPM_OK);
  assert_int_equal(outbox(c, &m), 3);
  expect_shutdown_all(m, 3);
  epm__rdv_coord_destroy(c);
}

static void test_join_after_shutdown(void **s) {
  (void)s;
  for (int P = 1; P <= 8; P *= 2) {
    epm__rdv_coord_t *c = make(P);
    const epm__rdv_msg_t *m;
    assert_int_equal(epm__rdv_coord_leave(c, P - 1, 0), EPM_OK);
    assert_int_equal(outbox(c, &m), P);
    expect_shutdown_all(m, P);
    for (int r = 0; r < P; r++) {
      join_ok(c, r, 1, 2, 3, 10);
      assert_int_equal(outbox(c, &m), 1);
      expect_abort(&m[0], r, EPM_RDV_ABORT_SHUTDOWN, 1, 2, NULL, 0);
    }
    /* more leaves (one per rank, one twice): no second SHUTDOWN; all counted once */
    for (int r = 0; r < P; r++) {
      assert_int_equal(epm__rdv_coord_leave(c, r, 20), EPM_OK);
      expect_none(c);
    }
    assert_int_equal(epm__rdv_coord_leave(c, 0, 30), EPM_OK);
    expect_none(c);
    assert_int_equal(epm__rdv_coord_left(c), P);
    epm__rdv_coord_destroy(c);
  }
}

/* ---- randomised, against a model ------------------------------------------------- */

typedef struct {
  int open;
  uint32_t layer;
  uint64_t id;
  int64_t tokens;
} model_join_t;

/* Random joins (keys from a small set, so some collide), ticks and, rarely, a
 * leave. After each input the outbox must follow from the model state:
 *  - every GO/ABORT answers the recipient's open join (same key), once;
 *  - GOs come P at a time, one per rank, all of one key, total = sum of tokens;
 *  - an ABORT(TIMEOUT)'s recipients and its missing ranks partition the group;
 *  - SHUTDOWN goes to every rank exactly once over the run;
 *  - after any input no open join is older than the timeout. */
static void random_run(int P, uint64_t seed) {
  rng_t rng;
  rng_seed(&rng, seed);
  epm__rdv_coord_t *c = make(P);
  model_join_t *mj = calloc((size_t)P, sizeof *mj);
  uint64_t *t_join = calloc((size_t)P, sizeof *t_join);
  int *seen = calloc((size_t)P, sizeof *seen);
  int shutdown_msgs = 0, gos = 0, aborts = 0;
  uint64_t now = 1;
  assert_non_null(mj);
  for (int it = 0; it < 4000; it++) {
    uint32_t u = (uint32_t)(rng_next(&rng) % 1000);
    int r = (int)(rng_next(&rng) % (uint64_t)P);
    now += rng_next(&rng) % (T / 20);
    int joined_now = -1;
    if (u < 600) {
      if (mj[r].open) continue; /* the driver never sends a second join */
      /* Mostly the current key (it drifts, so late joins of old keys happen),
       * sometimes a neighbour: out-of-order and mismatched joins. */
      int odd = rng_next(&rng) % 8 == 0;
      uint32_t layer = odd ? (uint32_t)(rng_next(&rng) % 2) : 0;
      uint64_t id = (uint64_t)it / 100 + (odd ? rng_next(&rng) % 2 : 0);
      int64_t tok = (int64_t)(rng_next(&rng) % 50);
      join_ok(c, r, layer, id, tok, now);
      mj[r] = (model_join_t){1, layer, id, tok};
      t_join[r] = now;
      joined_now = r;
    } else if (u < 999 || it < 3500) { /* leaves only near the end: the rest would be refusals */
      assert_int_equal(epm__rdv_coord_tick(c, now), EPM_OK);
    } else {
      assert_int_equal(epm__rdv_coord_leave(c, r, now), EPM_OK);
    }
    const epm__rdv_msg_t *m;
    int n = outbox(c, &m);
    for (int i = 0; i < n; i++) {
      const epm__rdv_msg_t *x = &m[i];
      assert_true(x->to >= 0 && x->to < P);
      if (x->kind == EPM_RDV_SHUTDOWN) {
        shutdown_msgs++;
        continue;
      }
      /* answers the recipient's open join */
      assert_true(mj[x->to].open);
      assert_int_equal(x->layer, mj[x->to].layer);
      assert_int_equal(x->step_id, mj[x->to].id);
      if (x->kind == EPM_RDV_GO) {
        assert_true(i + P <= n);
        int64_t total = 0;
        for (int k = 0; k < P; k++) {
          assert_int_equal(m[i + k].kind, EPM_RDV_GO);
          assert_int_equal(m[i + k].to, k);
          assert_true(mj[k].open && mj[k].layer == x->layer && mj[k].id == x->step_id);
          total += mj[k].tokens;
        }
        for (int k = 0; k < P; k++) {
          assert_int_equal(m[i + k].total_tokens, total);
          mj[k].open = 0;
        }
        gos++;
        i += P - 1;
        continue;
      }
      assert_int_equal(x->kind, EPM_RDV_ABORT);
      aborts++;
      if (x->reason == EPM_RDV_ABORT_TIMEOUT) {
        memset(seen, 0, (size_t)P * sizeof *seen);
        for (int k = 0; k < x->nmissing; k++) {
          assert_true(x->missing[k] >= 0 && x->missing[k] < P);
          if (k) assert_true(x->missing[k] > x->missing[k - 1]);
          seen[x->missing[k]] = 1;
        }
        int recipients = 0;
        uint64_t oldest = 0; /* the key's first join decides */
        for (int k = 0; k < n; k++)
          if (m[k].kind == EPM_RDV_ABORT && m[k].reason == EPM_RDV_ABORT_TIMEOUT && m[k].layer == x->layer &&
              m[k].step_id == x->step_id) {
            assert_int_equal(seen[m[k].to], 0);
            assert_int_not_equal(m[k].to, joined_now); /* its join came after the tick */
            if (now - t_join[m[k].to] > oldest) oldest = now - t_join[m[k].to];
            recipients++;
          }
        assert_int_equal(recipients + x->nmissing, P);
        assert_true(oldest > T);
      } else if (x->reason == EPM_RDV_ABORT_LATE || x->reason == EPM_RDV_ABORT_SHUTDOWN) {
        if (x->reason == EPM_RDV_ABORT_SHUTDOWN) assert_int_equal(epm__rdv_coord_shutdown(c), 1);
        else assert_int_equal(x->to, joined_now);
      } else {
        fail_msg("unexpected abort reason %d", (int)x->reason);
      }
      mj[x->to].open = 0;
    }
    int open = 0;
    for (int k = 0; k < P; k++) {
      open += mj[k].open;
      if (mj[k].open) assert_true(now - t_join[k] <= T);
    }
    assert_int_equal(epm__rdv_coord_open(c), open);
    if (epm__rdv_coord_shutdown(c)) assert_int_equal(open, 0);
  }
  assert_int_equal(epm__rdv_coord_leave(c, 0, now), EPM_OK);
  const epm__rdv_msg_t *m;
  int n = outbox(c, &m);
  for (int i = 0; i < n; i++) shutdown_msgs += m[i].kind == EPM_RDV_SHUTDOWN;
  assert_int_equal(shutdown_msgs, P);
  assert_int_equal(epm__rdv_coord_open(c), 0);
  /* the run exercised both outcomes (P = 1: every join is a GO) */
  assert_true(gos > 0);
  if (P > 1) assert_true(aborts > 0);
  free(mj);
  free(t_join);
  free(seen);
  epm__rdv_coord_destroy(c);
}

static void test_random_against_model(void **s) {
  (void)s;
  const int Ps[] = {1, 2, 3, 8};
  for (size_t i = 0; i < sizeof Ps / sizeof Ps[0]; i++)
    for (uint64_t seed = 1; seed <= 20; seed++) random_run(Ps[i], seed * 7919 + (uint64_t)Ps[i]);
}

static void test_abort_names(void **s) {
  (void)s;
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_TIMEOUT), "timeout");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_LATE), "late");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_SHUTDOWN), "shutdown");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_DUPLICATE), "duplicate");
  assert_string_equal(epm_rendezvous_abort_name((epm_rendezvous_abort_t)99), "unknown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_all_join_p1),
      cmocka_unit_test(test_all_join_p2),
      cmocka_unit_test(test_all_join_p3),
      cmocka_unit_test(test_all_join_p8),
      cmocka_unit_test(test_reverse_order_join),
      cmocka_unit_test(test_late_join_within_timeout),
      cmocka_unit_test(test_late_join_past_timeout),
      cmocka_unit_test(test_deadline_without_tick),
      cmocka_unit_test(test_timeout_names_all_missing_p8),
      cmocka_unit_test(test_clock_backwards),
      cmocka_unit_test(test_duplicate_join),
      cmocka_unit_test(test_out_of_order_joins),
      cmocka_unit_test(test_mismatched_keys),
      cmocka_unit_test(test_invalid_inputs),
      cmocka_unit_test(test_shutdown_racing_join),
      cmocka_unit_test(test_join_after_shutdown),
      cmocka_unit_test(test_random_against_model),
      cmocka_unit_test(test_abort_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
