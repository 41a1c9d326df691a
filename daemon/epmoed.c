/* SPDX-License-Identifier: Apache-2.0 */
/* epmoed — the per-rank daemon. main() decides policy (daemon/README.md):
 * configuration and start-up errors are fatal with one precise line; errors
 * of one request fail that request; a failed group — a rank dead or stopped,
 * the coordinator silent, a step with no progress anywhere (heartbeats,
 * srv_step.c), or without heartbeats a step stuck beyond --step-timeout —
 * answers every FORWARD in flight with the reason, marks the daemon failed
 * and exits 3, so the launcher tears the group down (fail-stop).
 * SIGTERM/SIGINT or a SHUTDOWN frame drain the whole group and exit 0.
 *
 * Threads: this file's libuv loop on the main thread, which also starts and
 * ends MPI (epm_bootstrap_init / _finalize); the worker (srv_step.c) makes
 * every MPI call in between. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/clock.h"
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

static void fatal_exit(srv_t *s, int code) {
  srv_sockdir_remove(&s->sockdir); /* only what this daemon made */
  fflush(NULL);
  /* No epm_bootstrap_finalize: peers may be inside a collective with us. A
   * non-zero exit makes mpirun/srun end the job (fail-stop). */
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

/* The group cannot step any more: say why to every client waiting on this
 * rank, then exit non-zero so the launcher ends the group. */
static void group_failed(srv_t *s, const char *why) {
  char msg[512];
  srv_set_state(s, SRV_ST_FAILED, "%s", why);
  EPM_LOG(EPM_LOG_ERROR, "daemon", "the group failed: %s; exiting 3 so the launcher ends the group", why);
  snprintf(msg, sizeof msg, "rank %d: the group failed: %s", s->rank, why);
  srv_net_fail_inflight(s, EPM_ERR_ABORTED, msg, 500);
  fatal_exit(s, 3);
}

static void on_watchdog(uv_timer_t *h) {
  srv_t *s = h->data;
  char why[400];
  if (srv_worker_liveness_on(s)) {
    if (srv_worker_group_failed(s, why, sizeof why)) group_failed(s, why);
    /* Fed only while the group is alive: a failed group stops the pings. */
    notify_warn(srv_notify_watchdog(&g_notify, epm_clock_ns()));
    return;
  }
  uint64_t id = 0;
  uint32_t layer = 0;
  uint64_t ns = srv_worker_in_step_ns(s, &id, &layer);
  if (ns > (uint64_t)s->cfg.step_timeout_s * 1000000000ull) {
    snprintf(why, sizeof why,
             "step (layer %u, id %llu) has been inside the collective for %.1f s (> --step-timeout %llds, no "
             "heartbeats): a peer died or hangs", layer, (unsigned long long)id, (double)ns * 1e-9,
             (long long)s->cfg.step_timeout_s);
    group_failed(s, why);
  }
  /* The watchdog is fed only from here, where a stuck step is detected. */
  notify_warn(srv_notify_watchdog(&g_notify, epm_clock_ns()));
}

int main(int argc, char **argv) {
  srv_t *s = &g_srv;
  srv_config_action_t act;
  epm_log_level_t lvl;
  epm_log_format_t fmt;
  epm_log_prefix_t prefix;

  if (srv_config_load(&s->cfg, argc, argv, &act) != EPM_OK) {
    fprintf(stderr, "epmoed: %s\n", epm_last_error());
    srv_config_usage(stderr, 0);
    return 64; /* EX_USAGE: bad command line or EPMOE_* value */
  }
  if (act == SRV_CONFIG_HELP) {
    srv_config_usage(stdout, 1);
    return 0;
  }
  if (act == SRV_CONFIG_VERSION) {
    printf("epmoed %s\n", EPMOE_VERSION_STRING);
    return 0;
  }
  if (epm_log_level_parse(s->cfg.log_level, &lvl) == 0) epm_log_set_level(lvl);
  if (epm_log_format_parse(s->cfg.log_format, &fmt) == 0) epm_log_set_format(fmt);
  if (epm_log_prefix_parse(s->cfg.log_prefix, &prefix) == 0) epm_log_set_prefix(prefix);
  pthread_mutex_init(&s->state_mu, NULL);
  srv_stats_init(&s->stats);
  s->start_ns = epm_clock_ns();
  srv_set_state(s, SRV_ST_STARTING, "loading weights");

  {
    /* GPU mode from --backend, so the group agrees on it at start-up. */
    epm_bootstrap_opts_t bo = {.gpu_mode = !strcmp(s->cfg.backend, "cpu")    ? EPM_GPU_OFF
                                           : !strcmp(s->cfg.backend, "cuda") ? EPM_GPU_REQUIRE
                                                                             : EPM_GPU_AUTO};
    epm_status_t bst = epm_bootstrap_init(&argc, &argv, &bo, &s->boot);
    if (bst != EPM_OK) {
      /* Every rank fails the launch check alike, so all finalize together. */
      EPM_LOG(EPM_LOG_ERROR, "daemon", "fatal: %s", epm_last_error());
      epm_bootstrap_finalize(&s->boot);
      return 1;
    }
  }
  s->rank = s->boot.ep_rank;
  s->size = s->boot.ep_size;
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
  epm_bootstrap_finalize(&s->boot);
  EPM_LOG(EPM_LOG_INFO, "daemon", "exit %d", s->exit_code);
  return s->exit_code;
}
