/* SPDX-License-Identifier: Apache-2.0 */
/* test_rendezvous_coord.c — the rendezvous coordinator (comm/rendezvous_coord.c)
 * driven input by input with made-up clocks: every rule of
 * comm/rendezvous_coord.h (several open keys per rank, cancel, limits,
 * liveness and stalls), the races a real group only hits sometimes, and a
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

static epm__rdv_coord_t *make_opts(int P, uint64_t live, uint64_t stall, int max_open) {
  epm__rdv_coord_t *c = NULL;
  epm__rdv_coord_opts_t o = {.size = P, .timeout_ns = T, .live_ns = live, .stall_ns = stall, .max_open = max_open,
                             .self = -1};
  assert_int_equal(epm__rdv_coord_create(&o, 0, &c), EPM_OK);
  return c;
}

static epm__rdv_coord_t *make(int P) { return make_opts(P, 0, 0, 0); }

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
  join_ok(c, 0, 0, 8, 9, 20); /* another key while one is open: fine */
  expect_none(c);
  assert_int_equal(epm__rdv_coord_open(c), 2);
  assert_int_equal(epm__rdv_coord_open_keys(c), 2);
  join_ok(c, 1, 0, 7, 1, 30);
  expect_go_all(m, outbox(c, &m), 2, 0, 7, 6); /* the first join (5 tokens) stood */
  assert_int_equal(epm__rdv_coord_open(c), 1);
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

/* Two clients reach the ranks in opposite orders: rank 1 joins B before A,
 * ranks 0 and 2 join A before B. With one open join per rank this deadlocked
 * until both timed out; now both keys GO, each to every rank, in the order
 * they completed, so every rank runs A and B in the same order. */
static void test_out_of_order_joins(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  join_ok(c, 0, 0, 10, 1, 0);  /* A */
  join_ok(c, 1, 0, 11, 2, 20); /* B */
  join_ok(c, 2, 0, 10, 3, 40); /* A */
  expect_none(c);
  join_ok(c, 2, 0, 11, 4, 50); /* B */
  expect_none(c);
  join_ok(c, 1, 0, 10, 5, 60); /* A completes first */
  expect_go_all(m, outbox(c, &m), 3, 0, 10, 9);
  join_ok(c, 0, 0, 11, 6, 70); /* then B */
  expect_go_all(m, outbox(c, &m), 3, 0, 11, 12);
  assert_int_equal(epm__rdv_coord_open(c), 0);
  /* a key one rank never joins times out alone; the others are unaffected */
  const int miss_b[] = {0, 2};
  join_ok(c, 1, 0, 21, 1, 2 * T);
  join_ok(c, 0, 0, 20, 1, 2 * T + 1);
  join_ok(c, 2, 0, 20, 1, 2 * T + 1);
  join_ok(c, 1, 0, 20, 1, 2 * T + 2);
  expect_go_all(m, outbox(c, &m), 3, 0, 20, 3);
  assert_int_equal(epm__rdv_coord_tick(c, 3 * T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 1, EPM_RDV_ABORT_TIMEOUT, 0, 21, miss_b, 2);
  epm__rdv_coord_destroy(c);
}

/* Many keys complete in one burst: every rank sees the same GO order. */
static void test_go_order_is_completion_order(void **s) {
  (void)s;
  enum { P = 4, K = 6 };
  epm__rdv_coord_t *c = make(P);
  const epm__rdv_msg_t *m;
  uint64_t order[K];
  int n_order = 0;
  /* rank r joins the keys rotated by r; the last rank to join a key completes it */
  for (int r = 0; r < P; r++)
    for (int k = 0; k < K; k++) {
      uint64_t id = (uint64_t)((k + r) % K);
      join_ok(c, r, 1, id, 1, (uint64_t)(r * K + k));
      int n = outbox(c, &m);
      if (n) {
        expect_go_all(m, n, P, 1, id, P);
        order[n_order++] = id;
      }
    }
  assert_int_equal(n_order, K);
  for (int k = 0; k < K; k++) assert_int_equal(order[k], (uint64_t)((k + P - 1) % K));
  epm__rdv_coord_destroy(c);
}

/* A rank may hold at most max_open joins; the next is refused (LIMIT) without
 * touching the open ones, and a slot frees when a key closes. */
static void test_open_limit(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make_opts(2, 0, 0, 3);
  const epm__rdv_msg_t *m;
  for (uint64_t k = 0; k < 3; k++) {
    join_ok(c, 0, 0, k, 1, k);
    expect_none(c);
  }
  join_ok(c, 0, 0, 9, 1, 5);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_LIMIT, 0, 9, NULL, 0);
  assert_int_equal(epm__rdv_coord_open(c), 3);
  join_ok(c, 1, 0, 1, 1, 6);
  expect_go_all(m, outbox(c, &m), 2, 0, 1, 2);
  join_ok(c, 0, 0, 9, 1, 7);
  expect_none(c);
  assert_int_equal(epm__rdv_coord_open(c), 3);
  epm__rdv_coord_destroy(c);
}

/* ---- cancel ------------------------------------------------------------------------ */

static void test_cancel(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make(3);
  const epm__rdv_msg_t *m;
  join_ok(c, 0, 2, 40, 1, 0);
  join_ok(c, 1, 2, 40, 1, 1);
  join_ok(c, 1, 2, 41, 1, 2);
  /* rank 1's client left: key 40 is aborted on every rank that joined it,
   * naming rank 1; key 41 stays open */
  assert_int_equal(epm__rdv_coord_cancel(c, 1, 2, 40, 3), EPM_OK);
  assert_int_equal(outbox(c, &m), 2);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_CANCELLED, 2, 40, NULL, 0);
  expect_abort(&m[1], 1, EPM_RDV_ABORT_CANCELLED, 2, 40, NULL, 0);
  assert_int_equal(m[0].cancelled_by, 1);
  assert_int_equal(m[1].cancelled_by, 1);
  assert_int_equal(epm__rdv_coord_open(c), 1);
  /* rank 2's FORWARD of key 40 arrives after: refused at once, naming the canceller */
  join_ok(c, 2, 2, 40, 1, 4);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 2, EPM_RDV_ABORT_LATE, 2, 40, NULL, 0);
  assert_int_equal(m[0].cancelled_by, 1);
  /* a timed-out key's late join names no canceller */
  assert_int_equal(epm__rdv_coord_tick(c, 2 + T + 1), EPM_OK);
  assert_int_equal(outbox(c, &m), 1);
  join_ok(c, 0, 2, 41, 1, 2 + T + 2);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_LATE, 2, 41, NULL, 0);
  assert_int_equal(m[0].cancelled_by, -1);
  /* cancelling a key that already went (GO on its way), or that this rank
   * never joined, changes nothing */
  join_ok(c, 0, 0, 50, 1, 3 * T);
  join_ok(c, 1, 0, 50, 1, 3 * T);
  join_ok(c, 2, 0, 50, 1, 3 * T);
  assert_int_equal(outbox(c, &m), 3);
  assert_int_equal(epm__rdv_coord_cancel(c, 0, 0, 50, 3 * T + 1), EPM_OK);
  expect_none(c);
  join_ok(c, 0, 0, 51, 1, 3 * T + 2);
  assert_int_equal(epm__rdv_coord_cancel(c, 1, 0, 51, 3 * T + 3), EPM_OK);
  expect_none(c);
  assert_int_equal(epm__rdv_coord_open(c), 1);
  assert_int_equal(epm__rdv_coord_cancel(c, 3, 0, 51, 0), EPM_ERR_INVALID_ARG);
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
  epm__rdv_coord_opts_t o0 = {.size = 0, .timeout_ns = T}, o1 = {.size = 2, .timeout_ns = 0},
                        o2 = {.size = 2, .timeout_ns = T, .max_open = -1}, o3 = {.size = 2, .timeout_ns = T, .self = 2};
  assert_int_equal(epm__rdv_coord_create(&o3, 0, &bad), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_create(&o0, 0, &bad), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_create(&o1, 0, &bad), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_create(&o2, 0, &bad), EPM_ERR_INVALID_ARG);
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

/* ---- liveness ------------------------------------------------------------------------ */

enum { LIVE = 5000, STALL = 20000 };

static int count_kind(const epm__rdv_msg_t *m, int n, int kind) {
  int k = 0;
  for (int i = 0; i < n; i++) k += m[i].kind == kind;
  return k;
}

static void hb(epm__rdv_coord_t *c, int r, uint64_t progress, epm_rendezvous_phase_t ph, uint64_t now) {
  assert_int_equal(epm__rdv_coord_heartbeat(c, r, progress, ph, now), EPM_OK);
}

/* Rank 2 stops (SIGSTOP, death) while idle: after live_ns of silence the
 * group fails, once, naming rank 2, and the others are told; ranks that keep
 * beating are never failed however long the group idles. */
static void test_silent_rank_fails_group(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make_opts(3, LIVE, 0, 0);
  const epm__rdv_msg_t *m;
  for (uint64_t t = 1000; t <= 50 * LIVE; t += 1000) { /* a long, healthy idle period */
    for (int r = 0; r < 3; r++) hb(c, r, 0, EPM_RDV_PHASE_IDLE, t + (uint64_t)r);
    assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  }
  assert_int_equal(epm__rdv_coord_failed(c), 0);
  const uint64_t t_last = 50 * LIVE + 2; /* rank 2's last beat */
  uint64_t t = 50 * LIVE;
  for (; t <= t_last + LIVE; t += 1000) {
    hb(c, 0, 0, EPM_RDV_PHASE_IDLE, t);
    hb(c, 1, 0, EPM_RDV_PHASE_IDLE, t);
    assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  }
  assert_int_equal(epm__rdv_coord_tick(c, t_last + LIVE + 1), EPM_OK);
  int n = outbox(c, &m);
  assert_int_equal(count_kind(m, n, EPM__RDV_FAILED), 2);
  for (int i = 0; i < n; i++) {
    if (m[i].kind != EPM__RDV_FAILED) continue;
    assert_int_not_equal(m[i].to, 2);
    assert_int_equal(m[i].fail, EPM_RDV_FAIL_SILENT);
    assert_int_equal(m[i].failed_rank, 2);
    assert_true(m[i].silent_ns > LIVE);
  }
  assert_int_equal(epm__rdv_coord_failed(c), 1);
  assert_int_equal(epm__rdv_coord_tick(c, t_last + 10 * LIVE), EPM_OK); /* once */
  assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  /* a failed group runs nothing more */
  join_ok(c, 0, 0, 1, 1, t_last + 10 * LIVE);
  assert_int_equal(outbox(c, &m), 1);
  expect_abort(&m[0], 0, EPM_RDV_ABORT_SHUTDOWN, 0, 1, NULL, 0);
  epm__rdv_coord_destroy(c);
}

/* Any input counts as hearing from its rank, and the first input may come
 * only after create: the clock starts at create, not at 0. */
static void test_any_input_is_a_heartbeat(void **s) {
  (void)s;
  epm__rdv_coord_t *c = NULL;
  const epm__rdv_msg_t *m;
  epm__rdv_coord_opts_t o = {.size = 2, .timeout_ns = 100 * LIVE, .live_ns = LIVE, .self = -1};
  assert_int_equal(epm__rdv_coord_create(&o, 1000000, &c), EPM_OK);
  assert_int_equal(epm__rdv_coord_tick(c, 1000000 + LIVE), EPM_OK);
  assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  join_ok(c, 0, 0, 1, 1, 1000000 + LIVE);
  assert_int_equal(epm__rdv_coord_cancel(c, 1, 0, 9, 1000000 + LIVE), EPM_OK);
  assert_int_equal(epm__rdv_coord_tick(c, 1000000 + 2 * LIVE), EPM_OK);
  assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  assert_int_equal(epm__rdv_coord_tick(c, 1000000 + 2 * LIVE + 1), EPM_OK);
  /* both silent as long: the first is named, and told to the other */
  int n = outbox(c, &m);
  assert_int_equal(count_kind(m, n, EPM__RDV_FAILED), 1);
  for (int i = 0; i < n; i++)
    if (m[i].kind == EPM__RDV_FAILED) assert_true(m[i].to == 1 && m[i].failed_rank == 0);
  epm__rdv_coord_destroy(c);
}

/* A coordinator that was itself paused (SIGSTOP, starved) resumes: it reads
 * the queued heartbeats first, and its own rank is never called silent. */
static void test_paused_coordinator(void **s) {
  (void)s;
  epm__rdv_coord_t *c = NULL;
  const epm__rdv_msg_t *m;
  epm__rdv_coord_opts_t o = {.size = 3, .timeout_ns = T, .live_ns = LIVE, .self = 0};
  assert_int_equal(epm__rdv_coord_create(&o, 0, &c), EPM_OK);
  /* nothing for 10 live periods, then the queued beats, then the tick */
  hb(c, 1, 0, EPM_RDV_PHASE_IDLE, 10 * LIVE);
  hb(c, 2, 0, EPM_RDV_PHASE_IDLE, 10 * LIVE);
  assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  assert_int_equal(epm__rdv_coord_tick(c, 10 * LIVE), EPM_OK);
  assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  assert_int_equal(epm__rdv_coord_failed(c), 0);
  epm__rdv_coord_destroy(c);
}

/* The coordinator beats to every rank once per period (live / 5 by default). */
static void test_coordinator_heartbeat_period(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make_opts(3, LIVE, 0, 0);
  const epm__rdv_msg_t *m;
  int beats = 0;
  for (uint64_t t = 100; t <= 10 * LIVE; t += 100) {
    for (int r = 0; r <= 3; r++) { /* three heartbeats and a tick: whichever comes first beats */
      if (r < 3) hb(c, r, 0, EPM_RDV_PHASE_IDLE, t);
      else assert_int_equal(epm__rdv_coord_tick(c, t), EPM_OK);
      int n = outbox(c, &m), k = count_kind(m, n, EPM__RDV_HEARTBEAT);
      assert_true(k == 0 || k == 3);
      beats += k / 3;
    }
  }
  assert_int_equal(beats, 50); /* 10 live periods x 5 */
  epm__rdv_coord_destroy(c);
}

/* A step whose ranks keep computing is never a stall, however long it runs;
 * ranks waiting in a collective while nothing moves anywhere are. */
static void test_stall(void **s) {
  (void)s;
  epm__rdv_coord_t *c = make_opts(2, LIVE, STALL, 0);
  const epm__rdv_msg_t *m;
  uint64_t t = 0;
  /* rank 1 computes a 20-stall-periods step; rank 0 waits in the collective */
  hb(c, 0, 5, EPM_RDV_PHASE_COMM, t);
  for (; t < 20 * STALL; t += 1000) {
    hb(c, 0, 5, EPM_RDV_PHASE_COMM, t);
    hb(c, 1, 7, EPM_RDV_PHASE_COMPUTE, t);
    assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  }
  /* rank 1 enters the collective too and nothing moves: fails after STALL */
  const uint64_t t_still = t;
  hb(c, 1, 8, EPM_RDV_PHASE_COMM, t_still);
  for (; t <= t_still + STALL; t += 1000) {
    hb(c, 0, 5, EPM_RDV_PHASE_COMM, t);
    hb(c, 1, 8, EPM_RDV_PHASE_COMM, t);
    assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  }
  hb(c, 0, 5, EPM_RDV_PHASE_COMM, t_still + STALL + 1);
  assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0); /* judged by tick only */
  assert_int_equal(epm__rdv_coord_tick(c, t_still + STALL + 1), EPM_OK);
  int n = outbox(c, &m);
  assert_int_equal(count_kind(m, n, EPM__RDV_FAILED), 2);
  for (int i = 0; i < n; i++)
    if (m[i].kind == EPM__RDV_FAILED) {
      assert_int_equal(m[i].fail, EPM_RDV_FAIL_STALL);
      assert_int_equal(m[i].failed_rank, -1);
    }
  epm__rdv_coord_destroy(c);

  /* progress anywhere resets the clock; an idle group is never a stall */
  c = make_opts(2, LIVE, STALL, 0);
  for (t = 0; t < 10 * STALL; t += 1000) {
    hb(c, 0, t / 1000, EPM_RDV_PHASE_COMM, t); /* rank 0 moves */
    hb(c, 1, 1, EPM_RDV_PHASE_COMM, t);
    assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  }
  for (; t < 20 * STALL; t += 1000) {
    hb(c, 0, 1, EPM_RDV_PHASE_IDLE, t);
    hb(c, 1, 1, EPM_RDV_PHASE_IDLE, t);
    assert_int_equal(count_kind(m, outbox(c, &m), EPM__RDV_FAILED), 0);
  }
  assert_int_equal(epm__rdv_coord_heartbeat(c, 0, 1, (epm_rendezvous_phase_t)3, t), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm__rdv_coord_heartbeat(c, 2, 1, EPM_RDV_PHASE_IDLE, t), EPM_ERR_INVALID_ARG);
  epm__rdv_coord_destroy(c);
}

/* ---- randomised, against a model ------------------------------------------------- */

enum { MODEL_OPEN = 4 }; /* open joins a rank holds at most in the model */

typedef struct {
  int open;
  uint32_t layer;
  uint64_t id;
  int64_t tokens;
  uint64_t t;
} model_join_t;

static model_join_t *model_find(model_join_t *mj, uint32_t layer, uint64_t id) {
  for (int i = 0; i < MODEL_OPEN; i++)
    if (mj[i].open && mj[i].layer == layer && mj[i].id == id) return &mj[i];
  return NULL;
}

/* Random joins (keys from a small set, so some collide), cancels, ticks and,
 * rarely, a leave. Each rank holds up to MODEL_OPEN open joins (the coordinator
 * allows 3, so LIMIT happens). After each input the outbox must follow from
 * the model state:
 *  - every GO/ABORT answers an open join of the recipient (same key), once;
 *  - GOs come P at a time, one per rank in rank order, all of one key,
 *    total = sum of its tokens;
 *  - an ABORT(TIMEOUT)'s recipients and its missing ranks partition the group,
 *    and the key's first join is older than the timeout;
 *  - ABORT(CANCELLED) follows a cancel of a key the canceller had open;
 *  - LIMIT answers the join just made, by a rank that had 3 open;
 *  - SHUTDOWN goes to every rank exactly once over the run;
 *  - after any input no open join is older than the timeout. */
static int g_limits; /* LIMIT refusals over all runs */

static void random_run(int P, uint64_t seed) {
  rng_t rng;
  rng_seed(&rng, seed);
  epm__rdv_coord_t *c = make_opts(P, 0, 0, 3);
  model_join_t(*mj)[MODEL_OPEN] = calloc((size_t)P, sizeof *mj);
  int *seen = calloc((size_t)P, sizeof *seen);
  int shutdown_msgs = 0, gos = 0, aborts = 0, cancels = 0, limits = 0;
  uint64_t now = 1;
  assert_non_null(mj);
  for (int it = 0; it < 6000; it++) {
    uint32_t u = (uint32_t)(rng_next(&rng) % 1000);
    int r = (int)(rng_next(&rng) % (uint64_t)P);
    now += rng_next(&rng) % (T / 20);
    int joined_now = -1, cancelled_by = -1, open_before = 0;
    uint32_t jl = 0;
    uint64_t jid = 0;
    for (int k = 0; k < MODEL_OPEN; k++) open_before += mj[r][k].open;
    if (u < 600) {
      /* Mostly the current key (it drifts, so late joins of old keys happen),
       * sometimes a neighbour: out-of-order and mismatched joins. */
      int odd = rng_next(&rng) % 8 == 0;
      jl = odd ? (uint32_t)(rng_next(&rng) % 2) : 0;
      jid = (uint64_t)it / 150 + (odd ? rng_next(&rng) % 3 : 0);
      if (model_find(mj[r], jl, jid)) continue; /* the driver never joins a key twice */
      model_join_t *slot = NULL;
      for (int k = 0; k < MODEL_OPEN && !slot; k++)
        if (!mj[r][k].open) slot = &mj[r][k];
      if (!slot) continue;
      int64_t tok = (int64_t)(rng_next(&rng) % 50);
      join_ok(c, r, jl, jid, tok, now);
      *slot = (model_join_t){1, jl, jid, tok, now};
      joined_now = r;
    } else if (u < 640) {
      model_join_t *j = &mj[r][rng_next(&rng) % MODEL_OPEN];
      if (!j->open) continue;
      assert_int_equal(epm__rdv_coord_cancel(c, r, j->layer, j->id, now), EPM_OK);
      cancelled_by = r;
      jl = j->layer, jid = j->id;
    } else if (u < 999 || it < 5500) { /* leaves only near the end: the rest would be refusals */
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
      /* answers an open join of the recipient */
      model_join_t *j = model_find(mj[x->to], x->layer, x->step_id);
      assert_non_null(j);
      if (x->kind == EPM_RDV_GO) {
        assert_true(i + P <= n);
        int64_t total = 0;
        for (int k = 0; k < P; k++) {
          assert_int_equal(m[i + k].kind, EPM_RDV_GO);
          assert_int_equal(m[i + k].to, k);
          assert_int_equal(m[i + k].layer, x->layer);
          assert_int_equal(m[i + k].step_id, x->step_id);
          model_join_t *jk = model_find(mj[k], x->layer, x->step_id);
          assert_non_null(jk);
          total += jk->tokens;
        }
        for (int k = 0; k < P; k++) {
          assert_int_equal(m[i + k].total_tokens, total);
          model_find(mj[k], x->layer, x->step_id)->open = 0;
        }
        gos++;
        i += P - 1;
        continue;
      }
      assert_int_equal(x->kind, EPM_RDV_ABORT);
      aborts++;
      int first_of_key = 1; /* the key's recipients are checked at its first message, while all are open */
      for (int k = 0; k < i; k++)
        if (m[k].kind == EPM_RDV_ABORT && m[k].layer == x->layer && m[k].step_id == x->step_id) first_of_key = 0;
      if (x->reason == EPM_RDV_ABORT_TIMEOUT && first_of_key) {
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
            model_join_t *jk = model_find(mj[m[k].to], x->layer, x->step_id);
            assert_non_null(jk);
            if (now - jk->t > oldest) oldest = now - jk->t;
            recipients++;
          }
        assert_int_equal(recipients + x->nmissing, P);
        assert_true(oldest > T);
      } else if (x->reason == EPM_RDV_ABORT_TIMEOUT) {
        /* checked with the key's first message */
      } else if (x->reason == EPM_RDV_ABORT_CANCELLED) {
        assert_int_equal(x->cancelled_by, cancelled_by);
        assert_int_equal(x->layer, jl);
        assert_int_equal(x->step_id, jid);
        cancels++;
      } else if (x->reason == EPM_RDV_ABORT_LIMIT) {
        assert_int_equal(x->to, joined_now);
        assert_int_equal(open_before, 3);
        limits++;
      } else if (x->reason == EPM_RDV_ABORT_LATE || x->reason == EPM_RDV_ABORT_SHUTDOWN) {
        if (x->reason == EPM_RDV_ABORT_SHUTDOWN) assert_int_equal(epm__rdv_coord_shutdown(c), 1);
        else assert_int_equal(x->to, joined_now);
      } else {
        fail_msg("unexpected abort reason %d", (int)x->reason);
      }
      j->open = 0;
    }
    int open = 0;
    for (int q = 0; q < P; q++)
      for (int k = 0; k < MODEL_OPEN; k++) {
        open += mj[q][k].open;
        if (mj[q][k].open) assert_true(now - mj[q][k].t <= T);
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
  /* the run exercised every outcome (P = 1: every join is a GO) */
  assert_true(gos > 0);
  if (P > 1) assert_true(aborts > 0 && cancels > 0);
  g_limits += limits;
  free(mj);
  free(seen);
  epm__rdv_coord_destroy(c);
}

static void test_random_against_model(void **s) {
  (void)s;
  const int Ps[] = {1, 2, 3, 8};
  for (size_t i = 0; i < sizeof Ps / sizeof Ps[0]; i++)
    for (uint64_t seed = 1; seed <= 20; seed++) random_run(Ps[i], seed * 7919 + (uint64_t)Ps[i]);
  assert_true(g_limits > 0);
}

static void test_abort_names(void **s) {
  (void)s;
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_TIMEOUT), "timeout");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_LATE), "late");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_SHUTDOWN), "shutdown");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_DUPLICATE), "duplicate");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_CANCELLED), "cancelled");
  assert_string_equal(epm_rendezvous_abort_name(EPM_RDV_ABORT_LIMIT), "limit");
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
      cmocka_unit_test(test_go_order_is_completion_order),
      cmocka_unit_test(test_open_limit),
      cmocka_unit_test(test_cancel),
      cmocka_unit_test(test_silent_rank_fails_group),
      cmocka_unit_test(test_any_input_is_a_heartbeat),
      cmocka_unit_test(test_paused_coordinator),
      cmocka_unit_test(test_coordinator_heartbeat_period),
      cmocka_unit_test(test_stall),
      cmocka_unit_test(test_mismatched_keys),
      cmocka_unit_test(test_invalid_inputs),
      cmocka_unit_test(test_shutdown_racing_join),
      cmocka_unit_test(test_join_after_shutdown),
      cmocka_unit_test(test_random_against_model),
      cmocka_unit_test(test_abort_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
