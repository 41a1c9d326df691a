/* epmoed — the per-rank daemon. main() decides policy (daemon/README.md):
 * configuration and start-up errors are fatal with one precise line; errors
 * of one request fail that request; a step stuck beyond --step-timeout inside
 * the collective marks the daemon failed and exits 3, so the launcher tears
 * the group down (fail-stop). SIGTERM/SIGINT or a SHUTDOWN frame drain the
 * whole group and exit 0.
 *
 * Threads: this file's libuv loop on the main thread; the worker (srv_step.c)
 * owns MPI after MPI_Init_thread. */
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/log.h"
#include "srv.h"
#include "srv_notify.h"

static srv_t g_srv; /* one daemon per process */
static srv_notify_t g_notify; /* systemd readiness (srv_notify.h); off unless rank 0 under systemd */

/* A failed notification is worth one warning, not one per watchdog tick. */
static void notify_warn(epm_status_t st) {
  static int warned;
  if (st != EPM_OK && !warned++) EPM_LOG(EPM_LOG_WARN, "daemon", "%s", epm_last_error());
}

/* Tell systemd what the state machine says: READY=1 once, STOPPING=1 once. */
static void notify_sync(srv_t *s) {
  char reason[256], status[320];
  srv_model_info_t info;
  srv_state_t state = srv_get_state(s, reason, sizeof reason);
  if (state == SRV_ST_READY && srv_get_info(s, &info)) {
    snprintf(status, sizeof status, "ready: %d ranks, model %s, backend %s", s->size, info.model, info.backend);
    notify_warn(srv_notify_ready(&g_notify, status));
  } else if (state == SRV_ST_DRAINING) {
    snprintf(status, sizeof status, "draining: %s", reason);
    notify_warn(srv_notify_stopping(&g_notify, status));
  }
}

void srv_set_state(srv_t *s, srv_state_t st, const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&s->state_mu);
  /* failed is final; draining only moves to failed */
  if (!(s->state == SRV_ST_FAILED || (s->state == SRV_ST_DRAINING && st != SRV_ST_FAILED))) {
    s->state = st;
    va_start(ap, fmt);
    vsnprintf(s->state_reason, sizeof s->state_reason, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&s->state_mu);
}

srv_state_t srv_get_state(srv_t *s, char *reason, size_t n) {
  srv_state_t st;
  pthread_mutex_lock(&s->state_mu);
  st = s->state;
  if (reason && n) snprintf(reason, n, "%s", s->state_reason);
  pthread_mutex_unlock(&s->state_mu);
  return st;
}

void srv_set_info(srv_t *s, const srv_model_info_t *info) {
  pthread_mutex_lock(&s->state_mu);
  s->info = *info;
  s->info_ready = 1;
  pthread_mutex_unlock(&s->state_mu);
}

int srv_get_info(srv_t *s, srv_model_info_t *out) {
  int ok;
  pthread_mutex_lock(&s->state_mu);
  ok = s->info_ready;
  if (ok) *out = s->info;
  pthread_mutex_unlock(&s->state_mu);
  return ok;
}

static void fatal_exit(srv_t *s, int code) {
  if (s->sock_path[0]) unlink(s->sock_path);
  fflush(NULL);
  /* No MPI_Finalize: peers may be inside a collective with us. A non-zero
   * exit makes mpirun/srun end the job (fail-stop). */
  _exit(code);
}

static void close_cb_noop(uv_handle_t *h) { (void)h; }

static void begin_close(srv_t *s) {
  if (s->closing) return;
  s->closing = 1;
  srv_net_close_all(s);
  srv_metrics_close(s);
  uv_close((uv_handle_t *)&s->sigterm, close_cb_noop);
  uv_close((uv_handle_t *)&s->sigint, close_cb_noop);
  uv_close((uv_handle_t *)&s->watchdog, close_cb_noop);
  uv_close((uv_handle_t *)&s->wake, close_cb_noop);
}

static void on_wake(uv_async_t *h) {
  srv_t *s = h->data;
  char reason[256];
  srv_req_t *r = srv_worker_take_done(s);
  while (r) {
    srv_req_t *nx = r->next;
    srv_net_deliver(s, r);
    r = nx;
  }
  srv_state_t st = srv_get_state(s, reason, sizeof reason);
  if (st == SRV_ST_FAILED) {
    EPM_LOG(EPM_LOG_ERROR, "daemon", "fatal: %s", reason);
    fatal_exit(s, 1);
  }
  if (st == SRV_ST_DRAINING) srv_net_stop_accepting(s);
  notify_sync(s);
  if (srv_worker_finished(s) && !s->closing) {
    /* deliver anything the worker failed on its way out, then close */
    for (r = srv_worker_take_done(s); r;) {
      srv_req_t *nx = r->next;
      srv_net_deliver(s, r);
      r = nx;
    }
    EPM_LOG(EPM_LOG_INFO, "daemon", "worker stopped; closing connections");
    begin_close(s);
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  srv_t *s = h->data;
  static int count;
  if (++count > 1) {
    EPM_LOG(EPM_LOG_WARN, "daemon", "second signal %d: exiting now without draining", signum);
    fatal_exit(s, 1);
  }
  EPM_LOG(EPM_LOG_INFO, "daemon", "%s: draining (stop accepting, finish or fail in-flight steps)",
          signum == SIGTERM ? "SIGTERM" : "SIGINT");
  srv_set_state(s, SRV_ST_DRAINING, "%s received", signum == SIGTERM ? "SIGTERM" : "SIGINT");
  srv_net_stop_accepting(s);
  notify_sync(s);
  srv_worker_request_shutdown(s, "signal");
}

static void on_watchdog(uv_timer_t *h) {
  srv_t *s = h->data;
  uint64_t id = 0;
  uint32_t layer = 0;
  uint64_t ns = srv_worker_in_step_ns(s, &id, &layer);
  if (ns > (uint64_t)s->cfg.step_timeout_s * 1000000000ull) {
    srv_set_state(s, SRV_ST_FAILED, "step (layer %u, id %llu) stuck inside the collective for %.1f s",
                  layer, (unsigned long long)id, (double)ns * 1e-9);
    EPM_LOG(EPM_LOG_ERROR, "daemon",
            "step (layer %u, id %llu) has been inside the collective for %.1f s (> --step-timeout %llds): "
            "a peer died or hangs; exiting 3 so the launcher ends the group",
            layer, (unsigned long long)id, (double)ns * 1e-9, (long long)s->cfg.step_timeout_s);
    fatal_exit(s, 3);
  }
  /* The watchdog is fed only from here, where a stuck step is detected. */
  notify_warn(srv_notify_watchdog(&g_notify, srv_now_ns()));
}

int main(int argc, char **argv) {
  srv_t *s = &g_srv;
  int rc, provided = 0;
  epm_log_level_t lvl;

  rc = srv_config_load(&s->cfg, argc, argv);
  if (rc) return rc == 1 ? 0 : 2;
  if (epm_log_level_parse(s->cfg.log_level, &lvl) == 0) epm_log_set_level(lvl);
  pthread_mutex_init(&s->state_mu, NULL);
  srv_stats_init(&s->stats);
  s->listen_fd = -1;
  s->start_ns = srv_now_ns();
  srv_set_state(s, SRV_ST_STARTING, "loading weights");

  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
    fprintf(stderr, "epmoed: MPI_Init_thread failed\n");
    return 1;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &s->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &s->size);
  epm_log_set_rank(s->rank, s->size);
  if (provided < MPI_THREAD_SERIALIZED) {
    /* The worker, not main, makes every MPI call after this point. */
    EPM_LOG(EPM_LOG_ERROR, "daemon", "MPI gives thread level %d; epmoed needs MPI_THREAD_SERIALIZED (%d) or better",
            provided, MPI_THREAD_SERIALIZED);
    fatal_exit(s, 1);
  }
  EPM_LOG(EPM_LOG_INFO, "daemon", "epmoed %s starting: rank %d of %d, pid %d, preset %s, backend %s",
          EPMOE_VERSION_STRING, s->rank, s->size, (int)getpid(), s->cfg.model[0] ? s->cfg.model : s->cfg.preset,
          s->cfg.backend);
  srv_config_log(&s->cfg);
  if (srv_notify_open(&g_notify, s->rank == 0 ? getenv("NOTIFY_SOCKET") : NULL,
                      s->rank == 0 ? getenv("WATCHDOG_USEC") : NULL) != EPM_OK) {
    EPM_LOG(EPM_LOG_ERROR, "daemon", "fatal: %s", epm_last_error());
    fatal_exit(s, 1);
  }
  notify_warn(srv_notify_send(&g_notify, "STATUS=loading weights"));

  s->loop = uv_default_loop();
  uv_async_init(s->loop, &s->wake, on_wake);
  s->wake.data = s;
  epm_status_t st = srv_net_listen(s);
  if (st == EPM_OK) st = srv_metrics_listen(s);
  if (st != EPM_OK) {
    EPM_LOG(EPM_LOG_ERROR, "daemon", "fatal: %s", epm_last_error());
    if (strstr(epm_last_error(), "another daemon")) s->sock_path[0] = '\0'; /* not ours to remove */
    fatal_exit(s, 1);
  }
  uv_signal_init(s->loop, &s->sigterm);
  uv_signal_init(s->loop, &s->sigint);
  s->sigterm.data = s->sigint.data = s;
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_timer_init(s->loop, &s->watchdog);
  s->watchdog.data = s;
  uv_timer_start(&s->watchdog, on_watchdog, 200, 200);

  st = srv_worker_start(s);
  if (st != EPM_OK) {
    EPM_LOG(EPM_LOG_ERROR, "daemon", "fatal: %s", epm_last_error());
    fatal_exit(s, 1);
  }
  uv_run(s->loop, UV_RUN_DEFAULT);
  srv_worker_join(s);
  uv_loop_close(s->loop);
  MPI_Finalize();
  EPM_LOG(EPM_LOG_INFO, "daemon", "exit %d", s->exit_code);
  return s->exit_code;
}
