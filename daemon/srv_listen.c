/* SPDX-License-Identifier: Apache-2.0 */
/* srv_listen.c — a listening socket on the loop that accepts in a loop and
 * survives running out of descriptors.
 *
 * Why its own file: when accept() fails with EMFILE the pending connection
 * stays in the backlog, so the socket stays readable and a naive loop spins,
 * logging one line per turn (hundreds of MB in seconds) while the daemon
 * starves. Here a failed accept pauses this listener for a back-off (100 ms,
 * doubling to 2 s, reset by the next success) and is logged at most once per
 * 5 s with the number of failures since the last line. Both the Unix socket
 * (srv_net.c) and the metrics port (srv_metrics.c) listen through it. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "srv.h"

enum { BACKOFF_MIN_MS = 100, BACKOFF_MAX_MS = 2000 };
static const uint64_t LOG_EVERY_NS = 5000000000ull;

static void on_readable(uv_poll_t *h, int status, int events);

static void resume(uv_timer_t *t) {
  srv_listener_t *l = t->data;
  if (l->closing) return;
  l->paused = 0;
  uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

static void accept_failed(srv_listener_t *l, int err) {
  srv_t *s = l->s;
  uint64_t now = epm_clock_ns();
  pthread_mutex_lock(&s->stats.mu);
  s->stats.accept_errors++;
  pthread_mutex_unlock(&s->stats.mu);
  if (!l->last_log_ns || now - l->last_log_ns >= LOG_EVERY_NS) {
    EPM_LOG(EPM_LOG_WARN, "net", "accept on %s failed: %s (%llu more failures since the last report); pausing "
            "accepts for %u ms", l->what, strerror(err), (unsigned long long)l->suppressed, l->backoff_ms);
    l->last_log_ns = now;
    l->suppressed = 0;
  } else {
    l->suppressed++;
  }
  l->paused = 1;
  uv_poll_stop(&l->poll);
  uv_timer_start(&l->timer, resume, l->backoff_ms, 0);
  l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  srv_listener_t *l = h->data;
  (void)events;
  if (status < 0 || l->closing) return;
  for (int n = 0; n < 256 && !l->closing && !l->paused; n++) { /* a flood cannot hold the loop */
    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) accept_failed(l, errno);
      return;
    }
    l->backoff_ms = BACKOFF_MIN_MS;
    l->on_accept(l, fd);
  }
}

epm_status_t srv_listener_start(srv_t *s, srv_listener_t *l, int fd, const char *what,
                                void (*on_accept)(srv_listener_t *l, int fd)) {
  l->s = s;
  l->fd = fd;
  l->what = what;
  l->on_accept = on_accept;
  l->backoff_ms = BACKOFF_MIN_MS;
  l->closing = 0;
  l->paused = 0;
  int rc = uv_poll_init(s->loop, &l->poll, fd);
  if (rc != 0) return epm_error(EPM_ERR_SYSTEM, "listening on %s: %s", what, uv_strerror(rc));
  uv_timer_init(s->loop, &l->timer);
  l->poll.data = l->timer.data = l;
  l->active = 1;
  uv_poll_start(&l->poll, UV_READABLE, on_readable);
  return EPM_OK;
}

static void handle_closed(uv_handle_t *h) {
  srv_listener_t *l = h->data;
  if (--l->handles_open > 0) return;
  close(l->fd);
  l->fd = -1;
  l->active = 0;
}

void srv_listener_close(srv_listener_t *l) {
  if (!l->active || l->closing) return;
  l->closing = 1;
  l->handles_open = 2;
  uv_poll_stop(&l->poll);
  uv_timer_stop(&l->timer);
  uv_close((uv_handle_t *)&l->poll, handle_closed);
  uv_close((uv_handle_t *)&l->timer, handle_closed);
}
