/* SPDX-License-Identifier: Apache-2.0 */
/* test_rendezvous_mpi.c — the rendezvous' MPI driver (comm/rendezvous.c) on a
 * real group (np >= 2): steps agreed with GO and the right token total; keys
 * joined in a different order on every rank all GO, in one order everywhere;
 * a cancel aborts the key on every rank; a rank that never joins makes the
 * others ABORT naming it, within the timeout; its late join is refused;
 * leave/drain ends on every rank, aborting a join that was open. With
 * liveness: a group idle without polling stays up; a SIGSTOPped rank, a
 * SIGSTOPped coordinator and a stall (every rank in a collective, nothing
 * moving) each fail the group within the bound, named. Every wait is bounded
 * (a hang fails the test). */
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "comm_check.h"
#include "epmoe/rendezvous.h"

static const double TIMEOUT_S = 0.4;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Poll until an event (10 s at most). */
static epm_rendezvous_event_t wait_event(epm_rendezvous_t *r) {
  epm_rendezvous_event_t ev;
  double t0 = now_s();
  for (;;) {
    CHECK_OK(epm_rendezvous_poll(r, &ev));
    if (ev.kind != EPM_RDV_NONE) return ev;
    CHECK(now_s() - t0 < 10, "no rendezvous event within 10 s");
  }
}

/* Keep the coordinator running (it lives on rank 0) until every rank reached
 * this point; the world barrier is non-blocking so rank 0 keeps polling. */
static void pump_until_all_here(epm_rendezvous_t *r) {
  MPI_Request req;
  int done = 0;
  double t0 = now_s();
  CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &req) == MPI_SUCCESS, "MPI_Ibarrier");
  while (!done) {
    epm_rendezvous_event_t ev;
    CHECK_OK(epm_rendezvous_poll(r, &ev));
    CHECK(ev.kind == EPM_RDV_NONE, "unexpected event %d while idle", (int)ev.kind);
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    CHECK(now_s() - t0 < 10, "ranks did not meet within 10 s");
  }
}


static const double LIVE_S = 2.0;

/* Wait until the rendezvous reports the group failed (limit s); returns the time. */
static double wait_failed(epm_rendezvous_t *r, char *why, size_t n, double limit) {
  double t0 = now_s();
  while (!epm_rendezvous_failed(r, why, n)) {
    CHECK(now_s() - t0 < limit, "no failure within %.1f s", limit);
    struct timespec d = {0, 5000000};
    nanosleep(&d, NULL);
  }
  return now_s() - t0;
}

static void live_cases(const epm_bootstrap_t *boot, const int *pids) {
  const int me = boot->ep_rank, last = boot->ep_size - 1;
  char why[400];
  epm_rendezvous_opts_t lo = {.timeout_s = 30, .liveness_s = LIVE_S, .stall_s = 3.0};
  /* a: idle for 3 liveness periods without a single poll: heartbeats and the
   *    coordinator run on the control thread; then a step still goes. */
  epm_rendezvous_t *r = NULL;
  CHECK_OK(epm_rendezvous_create(boot, &lo, &r));
  struct timespec idle = {4, 0};
  nanosleep(&idle, NULL);
  CHECK(!epm_rendezvous_failed(r, why, sizeof why), "an idle, healthy group failed: %s", why);
  /* ... and a long "compute" phase is not a stall */
  epm_rendezvous_progress(r, me == 0 ? EPM_RDV_PHASE_COMPUTE : EPM_RDV_PHASE_COMM);
  nanosleep(&idle, NULL);
  CHECK(!epm_rendezvous_failed(r, why, sizeof why), "a rank computing for 3 s failed the group: %s", why);
  epm_rendezvous_progress(r, EPM_RDV_PHASE_IDLE);
  CHECK_OK(epm_rendezvous_join(r, 0, 1, 1));
  epm_rendezvous_event_t ev = wait_event(r);
  CHECK(ev.kind == EPM_RDV_GO, "step after idling: event %d", (int)ev.kind);
  if (me == 0) printf("ok: liveness %.1f s: 8 s without polls (idle, then one rank computing) stay up\n", LIVE_S);

  double dt;
  /* d: every rank sits in a collective and nothing moves: a stall, reported
   *    after stall_s on every rank although every process beats. */
  epm_rendezvous_t *rd = NULL;
  CHECK_OK(epm_rendezvous_create(boot, &lo, &rd));
  epm_rendezvous_progress(rd, EPM_RDV_PHASE_COMM);
  dt = wait_failed(rd, why, sizeof why, lo.stall_s + LIVE_S + 3);
  CHECK(strstr(why, "no rank made progress"), "failure names another cause: %s", why);
  CHECK(dt >= lo.stall_s * 0.9, "stall reported after %.2f s (stall %.1f s)", dt, lo.stall_s);
  if (me == 0) printf("ok: stall (all ranks in a collective, no progress) reported after %.2f s\n", dt);
  epm_rendezvous_t *failed_d = rd;
  MPI_Barrier(MPI_COMM_WORLD);

  /* b: the last rank stops (SIGSTOP): every other rank sees the group failed,
   *    naming it, within liveness + 2 heartbeat periods + slack. */
  MPI_Barrier(MPI_COMM_WORLD);
  if (me == last) {
    raise(SIGSTOP); /* resumed by rank 0 below */
  } else {
    dt = wait_failed(r, why, sizeof why, LIVE_S + 3);
    char want[32];
    snprintf(want, sizeof want, "rank %d sent no heartbeat", last);
    CHECK(strstr(why, want), "failure names another cause: %s", why);
    CHECK(dt <= LIVE_S * 1.4 + 0.6, "detected after %.2f s (liveness %.1f s)", dt, LIVE_S);
    if (me == 0) {
      printf("ok: SIGSTOPped rank %d detected in %.2f s: %s\n", last, dt, why);
      kill(pids[last], SIGCONT);
    }
  }
  /* A failed rendezvous is destroyed only at the end: a resumed rank's
   * heartbeats may still be on the wire, and a freed communicator's context
   * could be reused by the next one. */
  epm_rendezvous_t *failed_b = r;
  MPI_Barrier(MPI_COMM_WORLD);

  /* c: the coordinator (rank 0) stops: every other rank sees it. */
  CHECK_OK(epm_rendezvous_create(boot, &lo, &r));
  MPI_Barrier(MPI_COMM_WORLD);
  if (me == 0) {
    raise(SIGSTOP);
  } else {
    dt = wait_failed(r, why, sizeof why, LIVE_S + 3);
    CHECK(strstr(why, "rank 0 (the rendezvous coordinator) sent nothing"), "failure names another cause: %s", why);
    CHECK(dt <= LIVE_S * 1.4 + 0.6, "detected after %.2f s (liveness %.1f s)", dt, LIVE_S);
    if (me == 1) {
      printf("ok: SIGSTOPped coordinator detected in %.2f s: %s\n", dt, why);
      kill(pids[0], SIGCONT);
    }
  }
  epm_rendezvous_t *failed_c = r;
  MPI_Barrier(MPI_COMM_WORLD);

  /* e: a clean drain with liveness on (heartbeats stop at the drain barrier). */
  CHECK_OK(epm_rendezvous_create(boot, &lo, &r));
  CHECK_OK(epm_rendezvous_join(r, 0, 2, 1));
  ev = wait_event(r);
  CHECK(ev.kind == EPM_RDV_GO, "event %d", (int)ev.kind);
  int done = 0;
  double t0 = now_s();
  while (!done) {
    CHECK_OK(epm_rendezvous_drain(r, &done));
    CHECK(now_s() - t0 < 10, "drain with liveness did not finish within 10 s");
  }
  CHECK(!epm_rendezvous_failed(r, why, sizeof why), "failed during a clean drain: %s", why);
  epm_rendezvous_destroy(r);
  if (me == 0) printf("ok: drain with liveness on ends cleanly\n");
  MPI_Barrier(MPI_COMM_WORLD);
  epm_rendezvous_destroy(failed_b);
  epm_rendezvous_destroy(failed_c);
  epm_rendezvous_destroy(failed_d);
}

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  const int P = boot.ep_size, me = boot.ep_rank, last = P - 1;
  CHECK(P >= 2, "run with np >= 2 (got %d)", P);

  /* Arguments are checked before anything collective. */
  epm_rendezvous_t *r = NULL;
  epm_rendezvous_opts_t bad = {.timeout_s = 0};
  CHECK(epm_rendezvous_create(&boot, &bad, &r) == EPM_ERR_INVALID_ARG && r == NULL, "timeout 0 accepted");
  CHECK(strstr(epm_last_error(), "timeout of 0 s") != NULL, "message: %s", epm_last_error());
  epm_rendezvous_opts_t o = {.timeout_s = TIMEOUT_S};
  CHECK(epm_rendezvous_create(NULL, &o, &r) == EPM_ERR_INVALID_ARG, "NULL bootstrap accepted");

  CHECK_OK(epm_rendezvous_create(&boot, &o, &r));
  CHECK(epm_rendezvous_rank(r) == me && epm_rendezvous_size(r) == P, "rank %d/%d", epm_rendezvous_rank(r),
        epm_rendezvous_size(r));

  /* 1. Steps: all join, all GO, total = sum of every rank's tokens. */
  for (uint64_t step = 0; step < 25; step++) {
    int64_t mine = (int64_t)((step * 7 + (uint64_t)me * 3) % 5); /* some ranks join with 0 */
    int64_t total = 0;
    for (int q = 0; q < P; q++) total += (int64_t)((step * 7 + (uint64_t)q * 3) % 5);
    CHECK_OK(epm_rendezvous_join(r, 1, 1000 + step, mine));
    CHECK(epm_rendezvous_joined(r) == 1, "join not open");
    CHECK(epm_rendezvous_join(r, 1, 1000 + step, 1) == EPM_ERR_INVALID_ARG, "second join of one key accepted");
    epm_rendezvous_event_t ev = wait_event(r);
    CHECK(ev.kind == EPM_RDV_GO, "step %llu: event %d (reason %s)", (unsigned long long)step, (int)ev.kind,
          epm_rendezvous_abort_name(ev.reason));
    CHECK(ev.layer == 1 && ev.step_id == 1000 + step, "GO for (%u, %llu)", ev.layer, (unsigned long long)ev.step_id);
    CHECK(ev.total_tokens == total, "GO total %lld, want %lld", (long long)ev.total_tokens, (long long)total);
    CHECK(!epm_rendezvous_joined(r), "join still open after GO");
  }
  if (me == 0) printf("ok: 25 steps agreed (GO with the token total) on %d ranks\n", P);

  /* 1b. Keys joined in a rotated order on every rank (as several clients
   *     reaching the ranks in different orders do): all GO, and every rank
   *     sees them in the same order (checked against rank 0's). */
  enum { K = 5 };
  int64_t order[K];
  for (int k = 0; k < K; k++) CHECK_OK(epm_rendezvous_join(r, 4, (uint64_t)(500 + (k + me) % K), 1));
  CHECK(epm_rendezvous_joined(r) == K, "%d joins open (want %d)", epm_rendezvous_joined(r), K);
  for (int k = 0; k < K; k++) {
    epm_rendezvous_event_t ev = wait_event(r);
    CHECK(ev.kind == EPM_RDV_GO && ev.total_tokens == P, "key %d: event %d total %lld", k, (int)ev.kind,
          (long long)ev.total_tokens);
    order[k] = (int64_t)ev.step_id;
  }
  int64_t order0[K];
  memcpy(order0, order, sizeof order);
  CHECK(MPI_Bcast(order0, K, MPI_INT64_T, 0, MPI_COMM_WORLD) == MPI_SUCCESS, "MPI_Bcast");
  CHECK(!memcmp(order0, order, sizeof order), "rank %d ran the keys in another order than rank 0", me);
  if (me == 0) printf("ok: %d keys joined in %d different orders: all GO, one order on every rank\n", K, P);

  /* 1c. Every rank but 0 joins (5, 1) of a rendezvous with a long timeout;
   *     the last rank cancels it (its client left): the joined ranks get
   *     ABORT(CANCELLED) naming it, at once. */
  {
    epm_rendezvous_t *rc = NULL;
    epm_rendezvous_opts_t oc = {.timeout_s = 30};
    CHECK_OK(epm_rendezvous_create(&boot, &oc, &rc));
    if (me != 0) CHECK_OK(epm_rendezvous_join(rc, 5, 1, 1));
    pump_until_all_here(rc);
    double t0 = now_s();
    if (me == last) CHECK_OK(epm_rendezvous_cancel(rc, 5, 1));
    if (me != 0) {
      epm_rendezvous_event_t ev = wait_event(rc);
      CHECK(ev.kind == EPM_RDV_ABORT && ev.reason == EPM_RDV_ABORT_CANCELLED, "cancel: event %d reason %s",
            (int)ev.kind, epm_rendezvous_abort_name(ev.reason));
      CHECK(ev.cancelled_by == last, "cancelled by %d (want %d)", ev.cancelled_by, last);
      CHECK(now_s() - t0 < 5, "cancel took %.1f s", now_s() - t0);
      CHECK(epm_rendezvous_cancel(rc, 5, 1) == EPM_ERR_INVALID_ARG, "cancel of a closed key accepted");
    }
    pump_until_all_here(rc);
    int done = 0;
    while (!done) CHECK_OK(epm_rendezvous_drain(rc, &done));
    epm_rendezvous_destroy(rc);
  }
  if (me == 0) printf("ok: a cancel by rank %d aborted the key on every rank that joined it\n", last);

  /* 2. The last rank never joins (2, 7): the others are aborted, naming it,
   *    after the timeout and well before a hang. */
  if (me != last) {
    double t0 = now_s();
    CHECK_OK(epm_rendezvous_join(r, 2, 7, 4));
    epm_rendezvous_event_t ev = wait_event(r);
    double dt = now_s() - t0;
    CHECK(ev.kind == EPM_RDV_ABORT && ev.reason == EPM_RDV_ABORT_TIMEOUT, "event %d reason %s", (int)ev.kind,
          epm_rendezvous_abort_name(ev.reason));
    CHECK(ev.layer == 2 && ev.step_id == 7, "ABORT for (%u, %llu)", ev.layer, (unsigned long long)ev.step_id);
    CHECK(ev.nmissing == 1 && ev.missing[0] == last, "missing %d ranks, first %d (want rank %d)", ev.nmissing,
          ev.nmissing ? ev.missing[0] : -1, last);
    CHECK(dt >= TIMEOUT_S * 0.99 && dt < TIMEOUT_S + 5, "aborted after %.3f s (timeout %.1f s)", dt, TIMEOUT_S);
  }
  pump_until_all_here(r);
  /* ... and its late join is refused, not left waiting. */
  if (me == last) {
    CHECK_OK(epm_rendezvous_join(r, 2, 7, 4));
    epm_rendezvous_event_t ev = wait_event(r);
    CHECK(ev.kind == EPM_RDV_ABORT && ev.reason == EPM_RDV_ABORT_LATE, "late join: event %d reason %s", (int)ev.kind,
          epm_rendezvous_abort_name(ev.reason));
  }
  pump_until_all_here(r);
  /* The group still works. */
  CHECK_OK(epm_rendezvous_join(r, 2, 8, 1));
  epm_rendezvous_event_t go = wait_event(r);
  CHECK(go.kind == EPM_RDV_GO && go.total_tokens == P, "after the abort: event %d total %lld", (int)go.kind,
        (long long)go.total_tokens);
  if (me == 0) printf("ok: rank %d never joined: ABORT(timeout) names it; its late join refused; next step GO\n", last);

  /* 3. Rank 0 has a join open when the last rank asks the group to drain:
   *    that join is aborted, every rank sees SHUTDOWN, and drain ends everywhere. */
  if (me == 0) {
    CHECK_OK(epm_rendezvous_join(r, 3, 1, 2));
    int done = 0;
    CHECK(epm_rendezvous_drain(r, &done) == EPM_ERR_INVALID_ARG && !done, "drain with an open join accepted");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (me == last) CHECK_OK(epm_rendezvous_leave(r));
  int got_shutdown = 0, got_abort = me != 0;
  while (!got_shutdown || !got_abort) {
    epm_rendezvous_event_t ev = wait_event(r);
    if (ev.kind == EPM_RDV_SHUTDOWN) {
      CHECK(!got_shutdown, "second SHUTDOWN");
      got_shutdown = 1;
    } else {
      CHECK(me == 0 && ev.kind == EPM_RDV_ABORT && ev.reason == EPM_RDV_ABORT_SHUTDOWN && ev.layer == 3,
            "event %d reason %s on rank %d", (int)ev.kind, epm_rendezvous_abort_name(ev.reason), me);
      got_abort = 1;
    }
  }
  CHECK(epm_rendezvous_join(r, 3, 2, 1) == EPM_ERR_ABORTED, "join after SHUTDOWN accepted");
  CHECK(strstr(epm_last_error(), "shutting down") != NULL, "message: %s", epm_last_error());
  double t0 = now_s();
  int done = 0;
  while (!done) {
    CHECK_OK(epm_rendezvous_drain(r, &done));
    CHECK(now_s() - t0 < 10, "drain did not finish within 10 s");
  }
  CHECK_OK(epm_rendezvous_drain(r, &done)); /* stays done */
  CHECK(done, "drain not done on a second call");
  epm_rendezvous_destroy(r);
  if (me == 0) printf("ok: leave from rank %d: open join aborted, SHUTDOWN everywhere, drain ended on all %d ranks\n",
                      last, P);

  /* 4. Liveness: heartbeats from the control thread. */
  if (boot.thread_level < MPI_THREAD_MULTIPLE) {
    if (me == 0) printf("skip: liveness needs MPI_THREAD_MULTIPLE (MPI provides %d)\n", boot.thread_level);
    epm_bootstrap_finalize(&boot);
    return 0;
  }
  int pids[64];
  int mypid = (int)getpid();
  CHECK(P <= 64, "np %d", P);
  CHECK(MPI_Allgather(&mypid, 1, MPI_INT, pids, 1, MPI_INT, MPI_COMM_WORLD) == MPI_SUCCESS, "MPI_Allgather");
  live_cases(&boot, pids);
  epm_bootstrap_finalize(&boot);
  return 0;
}
