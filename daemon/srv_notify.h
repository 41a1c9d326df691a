/* SPDX-License-Identifier: Apache-2.0 */
/* srv_notify.h — systemd's readiness protocol (sd_notify(3)) without
 * libsystemd: one AF_UNIX datagram of "KEY=VALUE\n" lines sent to the socket
 * named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
 * Linking libsystemd for this is not worth a dependency on every cluster node;
 * the protocol is a single sendto().
 *
 * epmoed uses it from the libuv loop only (not thread-safe): STATUS= while
 * loading, READY=1 once the warm-up step passed, STOPPING=1 when a drain
 * starts, WATCHDOG=1 from the step watchdog timer when $WATCHDOG_USEC is set.
 * Only world rank 0 talks to systemd: under `mpirun` in a unit every rank
 * inherits $NOTIFY_SOCKET, and the warm-up step is collective, so rank 0
 * passing it means every rank loaded its weights. $WATCHDOG_PID is not
 * checked: under a launcher it names the launcher (the unit's main process),
 * and the unit says NotifyAccess=all for exactly this reason. */
#ifndef EPMOE_SRV_NOTIFY_H
#define EPMOE_SRV_NOTIFY_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "epmoe/status.h"

typedef struct {
  int fd;                   /* -1: off (no $NOTIFY_SOCKET) */
  struct sockaddr_un addr;
  socklen_t addr_len;
  char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1]; /* as given, for messages */
  uint64_t watchdog_ns;     /* 0: no watchdog */
  uint64_t last_ping_ns;
  int pinged;               /* a WATCHDOG=1 went out (last_ping_ns valid) */
  int ready_sent, stopping_sent;
} srv_notify_t;

/* Set n up from the values of $NOTIFY_SOCKET and $WATCHDOG_USEC (each may be
 * NULL or "": that feature off). EPM_ERR_INVALID_ARG names a socket that is
 * neither an absolute path nor "@name", a path longer than sun_path allows, or
 * a WATCHDOG_USEC that is not a positive integer; EPM_ERR_NOT_SUPPORTED a
 * "vsock:" address. On error n is off (fd -1) and needs no close. */
epm_status_t srv_notify_open(srv_notify_t *n, const char *notify_socket, const char *watchdog_usec);
void srv_notify_close(srv_notify_t *n);
int srv_notify_enabled(const srv_notify_t *n);

/* Send msg ("READY=1\nSTATUS=..."); EPM_OK without sending when off.
 * EPM_ERR_SYSTEM names the socket and errno text (manager gone, ...). */
epm_status_t srv_notify_send(srv_notify_t *n, const char *msg);
/* READY=1 / STOPPING=1 with a STATUS= line, each sent at most once. */
epm_status_t srv_notify_ready(srv_notify_t *n, const char *status);
epm_status_t srv_notify_stopping(srv_notify_t *n, const char *status);
/* WATCHDOG=1 if the watchdog is on and half its interval has passed since
 * the last ping (the margin sd_watchdog_enabled(3) recommends). now_ns is a
 * monotonic clock. Sends nothing before READY: systemd starts the watchdog
 * only once the unit is up. */
epm_status_t srv_notify_watchdog(srv_notify_t *n, uint64_t now_ns);

#endif /* EPMOE_SRV_NOTIFY_H */
