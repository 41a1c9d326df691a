/* test_rendezvous_mpi.c — the rendezvous' MPI driver (comm/rendezvous.c) on a
 * real group (np >= 2): steps agreed with GO and the right token total; a
 * rank that never joins makes the others ABORT naming it, within the timeout;
 * its late join is refused; leave/drain ends on every rank, aborting a join
 * that was open. Every wait is bounded (a hang fails the test). */
#include <time.h>

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
    CHECK(epm_rendezvous_joined(r), "join not open");
    CHECK(epm_rendezvous_join(r, 1, 2000, 1) == EPM_ERR_INVALID_ARG, "second open join accepted");
    epm_rendezvous_event_t ev = wait_event(r);
    CHECK(ev.kind == EPM_RDV_GO, "step %llu: event %d (reason %s)", (unsigned long long)step, (int)ev.kind,
          epm_rendezvous_abort_name(ev.reason));
    CHECK(ev.layer == 1 && ev.step_id == 1000 + step, "GO for (%u, %llu)", ev.layer, (unsigned long long)ev.step_id);
    CHECK(ev.total_tokens == total, "GO total %lld, want %lld", (long long)ev.total_tokens, (long long)total);
    CHECK(!epm_rendezvous_joined(r), "join still open after GO");
  }
  if (me == 0) printf("ok: 25 steps agreed (GO with the token total) on %d ranks\n", P);

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
  epm_bootstrap_finalize(&boot);
  return 0;
}
