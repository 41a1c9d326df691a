/* SPDX-License-Identifier: Apache-2.0 */
/* srv_metrics.c — the HTTP listener of --metrics-port: GET /metrics
 * (Prometheus text), /health (liveness), /ready (readiness).
 *
 * It listens on --metrics-bind (default 127.0.0.1) at --metrics-port + the
 * rank's local rank, and is built to survive whoever can reach it: at most
 * METRICS_MAX_CONNS connections (more are accepted and closed at once, so
 * they never pile up as descriptors), each with HEADER_TIMEOUT_MS to send
 * its request line and headers and the same again to read the answer
 * (HTTP/1.0, one request per connection), and accepts go through
 * srv_listen.c, which backs off and rate-limits its log when the process is
 * out of descriptors. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "srv.h"

enum { METRICS_MAX_CONNS = 16, HEADER_TIMEOUT_MS = 5000, REQ_MAX = 2048 };

typedef struct {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wr;
  srv_t *s;
  int open_handles;
  int answered;
  char req[REQ_MAX];
  size_t len;
  epm_buf_t out;
} http_conn_t;

static const char *const state_name[] = {"starting", "ready", "draining", "failed"};

static void putf(epm_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(epm_buf_t *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) epm_buf_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void http_handle_closed(uv_handle_t *h) {
  http_conn_t *hc = h->data;
  if (--hc->open_handles > 0) return;
  hc->s->metrics_conns--;
  epm_buf_free(&hc->out);
  free(hc);
}

static void http_close(http_conn_t *hc) {
  if (uv_is_closing((uv_handle_t *)&hc->tcp)) return;
  uv_timer_stop(&hc->timer);
  uv_close((uv_handle_t *)&hc->tcp, http_handle_closed);
  uv_close((uv_handle_t *)&hc->timer, http_handle_closed);
}

/* Request not complete, or answer not taken, in time. */
static void http_timeout(uv_timer_t *t) { http_close(t->data); }

static void http_written(uv_write_t *w, int status) {
  (void)status;
  http_close(w->data);
}

static void http_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  http_conn_t *hc = h->data;
  (void)hint;
  *buf = uv_buf_init(hc->req + hc->len, (unsigned)(sizeof hc->req - 1 - hc->len));
}

static void http_answer(http_conn_t *hc) {
  epm_buf_t body = {0};
  const char *code = "200 OK";
  srv_state_t state = srv_get_state(hc->s, NULL, 0);
  if (strncmp(hc->req, "GET /metrics", 12) == 0) {
    srv_render_stats(hc->s, &body, EPM_FMT_PROMETHEUS);
  } else if (strncmp(hc->req, "GET /health", 11) == 0 || strncmp(hc->req, "GET /ready", 10) == 0) {
    int live = strncmp(hc->req, "GET /health", 11) == 0;
    int ok = live ? state != SRV_ST_FAILED : state == SRV_ST_READY;
    code = ok ? "200 OK" : "503 Service Unavailable";
    putf(&body, "%s\n", state_name[state]);
  } else {
    code = "404 Not Found";
    putf(&body, "GET /metrics, /health (liveness) or /ready (readiness)\n");
  }
  putf(&hc->out, "HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n", code, body.len);
  epm_buf_put(&hc->out, body.data, body.len);
  epm_buf_free(&body);
  pthread_mutex_lock(&hc->s->stats.mu);
  hc->s->stats.metrics_requests++;
  pthread_mutex_unlock(&hc->s->stats.mu);
  hc->answered = 1;
  uv_timer_start(&hc->timer, http_timeout, HEADER_TIMEOUT_MS, 0); /* the client must read it in time too */
  uv_buf_t ub = uv_buf_init((char *)hc->out.data, (unsigned)hc->out.len);
  hc->wr.data = hc;
  if (uv_write(&hc->wr, (uv_stream_t *)&hc->tcp, &ub, 1, http_written) != 0) http_close(hc);
}

static void http_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  http_conn_t *hc = st->data;
  (void)buf;
  if (n == 0) return; /* EAGAIN */
  if (n < 0) {        /* UV_EOF or an error: nothing to answer */
    http_close(hc);
    return;
  }
  hc->len += (size_t)n;
  hc->req[hc->len] = '\0';
  int complete = strstr(hc->req, "\r\n\r\n") || strstr(hc->req, "\n\n");
  if (!complete && hc->len < sizeof hc->req - 1) return;
  uv_read_stop(st);
  if (!complete) { /* a header section longer than we take */
    putf(&hc->out, "HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    uv_buf_t ub = uv_buf_init((char *)hc->out.data, (unsigned)hc->out.len);
    hc->wr.data = hc;
    if (uv_write(&hc->wr, st, &ub, 1, http_written) != 0) http_close(hc);
    return;
  }
  http_answer(hc);
}

static void metrics_accept(srv_listener_t *l, int fd) {
  srv_t *s = l->s;
  if (s->closing || s->metrics_conns >= METRICS_MAX_CONNS) {
    /* Closed at once: a flood of idle connections never holds descriptors. */
    close(fd);
    pthread_mutex_lock(&s->stats.mu);
    s->stats.metrics_refused++;
    pthread_mutex_unlock(&s->stats.mu);
    return;
  }
  http_conn_t *hc = calloc(1, sizeof *hc);
  if (!hc) {
    close(fd);
    return;
  }
  hc->s = s;
  if (uv_tcp_init(s->loop, &hc->tcp) != 0) {
    free(hc);
    close(fd);
    return;
  }
  uv_timer_init(s->loop, &hc->timer);
  hc->tcp.data = hc->timer.data = hc;
  hc->open_handles = 2;
  s->metrics_conns++;
  if (uv_tcp_open(&hc->tcp, fd) != 0) {
    close(fd);
    http_close(hc);
    return;
  }
  uv_timer_start(&hc->timer, http_timeout, HEADER_TIMEOUT_MS, 0);
  if (uv_read_start((uv_stream_t *)&hc->tcp, http_alloc, http_read) != 0) http_close(hc);
}

epm_status_t srv_metrics_listen(srv_t *s) {
  static char what[96];
  union {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
  } a;
  socklen_t alen;
  int port, family;
  if (!s->cfg.metrics_port) return EPM_OK;
  /* one port per rank on a node: --metrics-port + local rank (the bootstrap's,
   * from MPI itself rather than a launcher-specific variable) */
  port = (int)s->cfg.metrics_port + s->boot.local_rank;
  if (port > 65535) return epm_error(EPM_ERR_INVALID_ARG, "metrics port %d (base + local rank) exceeds 65535", port);
  memset(&a, 0, sizeof a);
  if (inet_pton(AF_INET, s->cfg.metrics_bind, &a.v4.sin_addr) == 1) {
    family = AF_INET;
    a.v4.sin_family = AF_INET;
    a.v4.sin_port = htons((uint16_t)port);
    alen = sizeof a.v4;
  } else if (inet_pton(AF_INET6, s->cfg.metrics_bind, &a.v6.sin6_addr) == 1) {
    family = AF_INET6;
    a.v6.sin6_family = AF_INET6;
    a.v6.sin6_port = htons((uint16_t)port);
    alen = sizeof a.v6;
  } else {
    return epm_error(EPM_ERR_INVALID_ARG, "--metrics-bind '%s' is not an IPv4 or IPv6 address", s->cfg.metrics_bind);
  }
  snprintf(what, sizeof what, family == AF_INET6 ? "[%s]:%d" : "%s:%d", s->cfg.metrics_bind, port);
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0) return epm_error(EPM_ERR_SYSTEM, "metrics socket: %s", strerror(errno));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&a, alen) != 0 || listen(fd, 64) != 0) {
    epm_status_t st = epm_error(EPM_ERR_SYSTEM, "metrics listener on %s: %s", what, strerror(errno));
    close(fd);
    return st;
  }
  epm_status_t st = srv_listener_start(s, &s->mlistener, fd, what, metrics_accept);
  if (st != EPM_OK) {
    close(fd);
    return st;
  }
  s->metrics_on = 1;
  EPM_LOG(EPM_LOG_INFO, "stats", "metrics on http://%s/metrics (at most %d connections, %d ms to send a request)", what,
          METRICS_MAX_CONNS, HEADER_TIMEOUT_MS);
  return EPM_OK;
}

void srv_metrics_close(srv_t *s) {
  if (s->metrics_on) srv_listener_close(&s->mlistener);
  s->metrics_on = 0;
}
