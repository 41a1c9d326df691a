/* SPDX-License-Identifier: Apache-2.0 */
/* test_srv_notify: daemon/srv_notify.c against a datagram socket standing in
 * for systemd's notification socket. What systemd needs, checked from the
 * receiving side: the exact datagram text, one datagram per notification,
 * the sender's pid in SCM_CREDENTIALS (systemd attributes a message to a unit
 * by it), path and abstract ("@") addresses, READY/STOPPING sent once, the
 * watchdog rate, and errors that name the bad value. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "srv_notify.h"

typedef struct {
  int fd;
  char path[108]; /* "" for an abstract socket */
} receiver_t;

/* A receiver bound at `name` ("/path" or "@abstract"), with SO_PASSCRED on
 * as systemd sets it. */
static void receiver_open(receiver_t *r, const char *name) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  size_t len = strlen(name);
  socklen_t alen;
  int one = 1;
  r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  assert_true(r->fd >= 0);
  assert_int_equal(setsockopt(r->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one), 0);
  memcpy(a.sun_path, name, len);
  if (name[0] == '@') {
    a.sun_path[0] = '\0';
    alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    r->path[0] = '\0';
  } else {
    alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    snprintf(r->path, sizeof r->path, "%s", name);
    unlink(name);
  }
  assert_int_equal(bind(r->fd, (struct sockaddr *)&a, alen), 0);
}

static void receiver_close(receiver_t *r) {
  close(r->fd);
  if (r->path[0]) unlink(r->path);
}

/* Next datagram into buf (NUL-terminated); returns its length, or -1 when
 * nothing is queued. *pid: the sender pid from SCM_CREDENTIALS (0 if none). */
static ssize_t receive(receiver_t *r, char *buf, size_t n, pid_t *pid) {
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(struct ucred))];
  } ctl;
  struct iovec iov = {.iov_base = buf, .iov_len = n - 1};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
  ssize_t k = recvmsg(r->fd, &m, MSG_DONTWAIT);
  if (k < 0) {
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    return -1;
  }
  buf[k] = '\0';
  if (pid) {
    *pid = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        struct ucred cr;
        memcpy(&cr, CMSG_DATA(c), sizeof cr);
        *pid = cr.pid;
      }
  }
  return k;
}

static void temp_socket_path(char *out, size_t n, const char *tag) {
  snprintf(out, n, "/tmp/epmoe-notify-%s-%d.sock", tag, (int)getpid());
}

static void test_off_without_socket(void **state) {
  (void)state;
  srv_notify_t n;
  assert_int_equal(srv_notify_open(&n, NULL, NULL), EPM_OK);
  assert_false(srv_notify_enabled(&n));
  assert_int_equal(srv_notify_send(&n, "READY=1"), EPM_OK);
  assert_int_equal(srv_notify_ready(&n, "x"), EPM_OK);
  assert_int_equal(srv_notify_watchdog(&n, 123), EPM_OK);
  srv_notify_close(&n);
  assert_int_equal(srv_notify_open(&n, "", ""), EPM_OK);
  assert_false(srv_notify_enabled(&n));
  srv_notify_close(&n);
}

static void test_path_socket_messages(void **state) {
  (void)state;
  char path[108], buf[600];
  receiver_t r;
  srv_notify_t n;
  pid_t pid = 0;
  temp_socket_path(path, sizeof path, "path");
  receiver_open(&r, path);
  assert_int_equal(srv_notify_open(&n, path, NULL), EPM_OK);
  assert_true(srv_notify_enabled(&n));

  assert_int_equal(srv_notify_send(&n, "STATUS=loading weights"), EPM_OK);
  assert_int_equal(receive(&r, buf, sizeof buf, &pid), 22);
  assert_string_equal(buf, "STATUS=loading weights");
  assert_int_equal(pid, getpid());

  assert_int_equal(srv_notify_ready(&n, "ready: 2 ranks"), EPM_OK);
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);
  assert_string_equal(buf, "READY=1\nSTATUS=ready: 2 ranks");
  assert_int_equal(srv_notify_ready(&n, "again"), EPM_OK); /* once only */
  assert_int_equal(receive(&r, buf, sizeof buf, NULL), -1);

  assert_int_equal(srv_notify_stopping(&n, ""), EPM_OK); /* empty status: no STATUS line */
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);
  assert_string_equal(buf, "STOPPING=1");
  assert_int_equal(srv_notify_stopping(&n, "again"), EPM_OK);
  assert_int_equal(receive(&r, buf, sizeof buf, NULL), -1);

  srv_notify_close(&n);
  assert_false(srv_notify_enabled(&n));
  receiver_close(&r);
}

static void test_abstract_socket(void **state) {
  (void)state;
  char name[64], buf[64];
  receiver_t r;
  srv_notify_t n;
  snprintf(name, sizeof name, "@epmoe-notify-test-%d", (int)getpid());
  receiver_open(&r, name);
  assert_int_equal(srv_notify_open(&n, name, NULL), EPM_OK);
  assert_int_equal(srv_notify_ready(&n, NULL), EPM_OK);
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);
  assert_string_equal(buf, "READY=1");
  srv_notify_close(&n);
  receiver_close(&r);
}

static void test_long_status_is_cut_not_dropped(void **state) {
  (void)state;
  char path[108], buf[1024], status[900];
  receiver_t r;
  srv_notify_t n;
  memset(status, 'x', sizeof status - 1);
  status[sizeof status - 1] = '\0';
  temp_socket_path(path, sizeof path, "long");
  receiver_open(&r, path);
  assert_int_equal(srv_notify_open(&n, path, NULL), EPM_OK);
  assert_int_equal(srv_notify_ready(&n, status), EPM_OK);
  ssize_t k = receive(&r, buf, sizeof buf, NULL);
  assert_true(k > 100 && k < 600);
  assert_memory_equal(buf, "READY=1\nSTATUS=xxx", 18);
  srv_notify_close(&n);
  receiver_close(&r);
}

static void test_watchdog_rate(void **state) {
  (void)state;
  char path[108], buf[64];
  receiver_t r;
  srv_notify_t n;
  const uint64_t s = 1000000000ull, t0 = 50 * s;
  temp_socket_path(path, sizeof path, "wd");
  receiver_open(&r, path);
  assert_int_equal(srv_notify_open(&n, path, "1000000"), EPM_OK); /* 1 s */
  /* nothing before READY: systemd arms the watchdog only once the unit is up */
  assert_int_equal(srv_notify_watchdog(&n, t0), EPM_OK);
  assert_int_equal(receive(&r, buf, sizeof buf, NULL), -1);
  assert_int_equal(srv_notify_ready(&n, NULL), EPM_OK);
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);

  assert_int_equal(srv_notify_watchdog(&n, t0), EPM_OK); /* first tick pings */
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);
  assert_string_equal(buf, "WATCHDOG=1");
  assert_int_equal(srv_notify_watchdog(&n, t0 + s / 2 - 1), EPM_OK); /* under half the interval */
  assert_int_equal(receive(&r, buf, sizeof buf, NULL), -1);
  assert_int_equal(srv_notify_watchdog(&n, t0 + s / 2), EPM_OK); /* half: ping */
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);
  assert_string_equal(buf, "WATCHDOG=1");
  int pings = 0; /* 200 ms ticks over 3 s: one ping per 500 ms -> every third tick (600 ms) */
  for (uint64_t t = t0 + s / 2 + s / 5; t <= t0 + s / 2 + 3 * s; t += s / 5) {
    assert_int_equal(srv_notify_watchdog(&n, t), EPM_OK);
    while (receive(&r, buf, sizeof buf, NULL) > 0) pings++;
  }
  assert_int_equal(pings, 5);
  srv_notify_close(&n);
  receiver_close(&r);

  /* no WATCHDOG_USEC: never pings */
  receiver_open(&r, path);
  assert_int_equal(srv_notify_open(&n, path, NULL), EPM_OK);
  assert_int_equal(srv_notify_ready(&n, NULL), EPM_OK);
  assert_true(receive(&r, buf, sizeof buf, NULL) > 0);
  for (uint64_t t = t0; t < t0 + 10 * s; t += s) assert_int_equal(srv_notify_watchdog(&n, t), EPM_OK);
  assert_int_equal(receive(&r, buf, sizeof buf, NULL), -1);
  srv_notify_close(&n);
  receiver_close(&r);
}

static void expect_open_error(const char *sock, const char *usec, epm_status_t want, const char *needle) {
  srv_notify_t n;
  assert_int_equal(srv_notify_open(&n, sock, usec), want);
  assert_false(srv_notify_enabled(&n));
  if (!strstr(epm_last_error(), needle)) fail_msg("error '%s' does not contain '%s'", epm_last_error(), needle);
}

static void test_bad_values_are_named(void **state) {
  (void)state;
  char longpath[200];
  memset(longpath, 'a', sizeof longpath - 1);
  longpath[0] = '/';
  longpath[sizeof longpath - 1] = '\0';
  expect_open_error("relative/notify", NULL, EPM_ERR_INVALID_ARG, "'relative/notify' is neither an absolute path");
  expect_open_error(longpath, NULL, EPM_ERR_INVALID_ARG, "is 199 bytes; a Unix socket address allows 107");
  expect_open_error("vsock:2:1234", NULL, EPM_ERR_NOT_SUPPORTED, "vsock:2:1234");
  expect_open_error("/run/systemd/notify", "abc", EPM_ERR_INVALID_ARG, "WATCHDOG_USEC='abc'");
  expect_open_error("/run/systemd/notify", "0", EPM_ERR_INVALID_ARG, "WATCHDOG_USEC='0'");
  expect_open_error("/run/systemd/notify", "-5", EPM_ERR_INVALID_ARG, "WATCHDOG_USEC='-5'");
  expect_open_error("/run/systemd/notify", "10s", EPM_ERR_INVALID_ARG, "WATCHDOG_USEC='10s'");
  expect_open_error("/run/systemd/notify", "99999999999999999999", EPM_ERR_INVALID_ARG, "WATCHDOG_USEC=");
}

static void test_manager_gone_is_an_error_naming_the_socket(void **state) {
  (void)state;
  char path[108];
  receiver_t r;
  srv_notify_t n;
  temp_socket_path(path, sizeof path, "gone");
  receiver_open(&r, path);
  assert_int_equal(srv_notify_open(&n, path, NULL), EPM_OK);
  receiver_close(&r); /* unlinks it */
  assert_int_equal(srv_notify_ready(&n, "x"), EPM_ERR_SYSTEM);
  assert_non_null(strstr(epm_last_error(), path));
  srv_notify_close(&n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_off_without_socket),
      cmocka_unit_test(test_path_socket_messages),
      cmocka_unit_test(test_abstract_socket),
      cmocka_unit_test(test_long_status_is_cut_not_dropped),
      cmocka_unit_test(test_watchdog_rate),
      cmocka_unit_test(test_bad_values_are_named),
      cmocka_unit_test(test_manager_gone_is_an_error_naming_the_socket),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
