/* SPDX-License-Identifier: Apache-2.0 */
/* srv_notify.c — sd_notify(3) over $NOTIFY_SOCKET (see srv_notify.h). */
#include "srv_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void notify_off(srv_notify_t *n) {
  memset(n, 0, sizeof *n);
  n->fd = -1;
}

static epm_status_t parse_usec(const char *s, uint64_t *ns) {
  char *end = NULL;
  unsigned long long v;
  errno = 0;
  /* strtoull accepts "-5" (wrapping it); systemd never writes a sign. */
  if (s[0] < '0' || s[0] > '9') goto bad;
  v = strtoull(s, &end, 10);
  if (errno || *end != '\0' || v == 0) goto bad;
  /* a usec count past 2^64 ns is not a watchdog anyone configured */
  if (v > UINT64_MAX / 1000u)
    return epm_error(EPM_ERR_INVALID_ARG, "WATCHDOG_USEC=%s is more than %llu microseconds", s,
                     (unsigned long long)(UINT64_MAX / 1000u));
  *ns = (uint64_t)v * 1000u;
  return EPM_OK;
bad:
  return epm_error(EPM_ERR_INVALID_ARG, "WATCHDOG_USEC='%s' is not a positive number of microseconds", s);
}

epm_status_t srv_notify_open(srv_notify_t *n, const char *sock, const char *watchdog_usec) {
  size_t len, cap = sizeof n->addr.sun_path;
  epm_status_t st;
  uint64_t wd_ns = 0;

  notify_off(n);
  if (watchdog_usec && *watchdog_usec && (st = parse_usec(watchdog_usec, &wd_ns)) != EPM_OK) return st;
  if (!sock || !*sock) {
    n->watchdog_ns = wd_ns; /* nobody to ping; kept for status only */
    return EPM_OK;
  }
  if (strncmp(sock, "vsock:", 6) == 0)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "NOTIFY_SOCKET '%s': AF_VSOCK notification is not supported", sock);
  if (sock[0] != '/' && sock[0] != '@')
    return epm_error(EPM_ERR_INVALID_ARG, "NOTIFY_SOCKET '%s' is neither an absolute path nor '@abstract-name'",
                     sock);
  len = strlen(sock);
  /* A path needs its NUL inside sun_path; an abstract name replaces '@' by
   * the leading NUL and is not terminated, so it may use every byte. */
  if ((sock[0] == '/' && len >= cap) || (sock[0] == '@' && len > cap))
    return epm_error(EPM_ERR_INVALID_ARG, "NOTIFY_SOCKET '%.40s...' is %zu bytes; a Unix socket address allows %zu",
                     sock, len, sock[0] == '/' ? cap - 1 : cap);
  n->addr.sun_family = AF_UNIX;
  memcpy(n->addr.sun_path, sock, len);
  if (sock[0] == '@') {
    n->addr.sun_path[0] = '\0';
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  } else {
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  memcpy(n->name, sock, len + 1);
  n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (n->fd < 0) {
    int e = errno;
    notify_off(n);
    return epm_error(EPM_ERR_SYSTEM, "NOTIFY_SOCKET %s: socket(AF_UNIX, SOCK_DGRAM): %s", sock, strerror(e));
  }
  n->watchdog_ns = wd_ns;
  return EPM_OK;
}

void srv_notify_close(srv_notify_t *n) {
  if (n->fd >= 0) close(n->fd);
  notify_off(n);
}

int srv_notify_enabled(const srv_notify_t *n) { return n->fd >= 0; }

epm_status_t srv_notify_send(srv_notify_t *n, const char *msg) {
  size_t len = strlen(msg);
  ssize_t k;
  if (n->fd < 0) return EPM_OK;
  do {
    k = sendto(n->fd, msg, len, MSG_NOSIGNAL, (const struct sockaddr *)&n->addr, n->addr_len);
  } while (k < 0 && errno == EINTR);
  if (k < 0 || (size_t)k != len) {
    int e = k < 0 ? errno : EMSGSIZE;
    return epm_error(EPM_ERR_SYSTEM, "notifying the service manager on %s: %s", n->name, strerror(e));
  }
  return EPM_OK;
}

/* "HEAD\nSTATUS=status" (STATUS line only when status is non-empty). */
static epm_status_t send_with_status(srv_notify_t *n, const char *head, const char *status) {
  char msg[512];
  int k = snprintf(msg, sizeof msg, "%s%s%s", head, status && *status ? "\nSTATUS=" : "", status ? status : "");
  if (k < 0 || (size_t)k >= sizeof msg) msg[sizeof msg - 1] = '\0'; /* a cut STATUS is still a valid line */
  return srv_notify_send(n, msg);
}

epm_status_t srv_notify_ready(srv_notify_t *n, const char *status) {
  if (n->fd < 0 || n->ready_sent) return EPM_OK;
  n->ready_sent = 1;
  return send_with_status(n, "READY=1", status);
}

epm_status_t srv_notify_stopping(srv_notify_t *n, const char *status) {
  if (n->fd < 0 || n->stopping_sent) return EPM_OK;
  n->stopping_sent = 1;
  return send_with_status(n, "STOPPING=1", status);
}

epm_status_t srv_notify_watchdog(srv_notify_t *n, uint64_t now_ns) {
  if (n->fd < 0 || !n->watchdog_ns || !n->ready_sent) return EPM_OK;
  if (n->pinged && now_ns - n->last_ping_ns < n->watchdog_ns / 2) return EPM_OK;
  n->pinged = 1;
  n->last_ping_ns = now_ns;
  return srv_notify_send(n, "WATCHDOG=1");
}
