/* SPDX-License-Identifier: Apache-2.0 */
/* daemon_probe — hostile and odd clients against a running epmoed, for
 * tests/daemon/daemon_it.sh. Exit 0 = the daemon behaved, 1 = it did not,
 * 77 = skipped.
 *   daemon_probe SOCKET badmagic   garbage header -> one ERROR (PROTOCOL), then EOF
 *   daemon_probe SOCKET oversize   header announcing 2^40 bytes -> ERROR (OVERFLOW), EOF,
 *                                  without the daemon waiting for (or allocating) the payload
 *   daemon_probe SOCKET partial    half a frame held open: another connection's HEALTH still answers
 *   daemon_probe SOCKET trailing   HEALTH and SHUTDOWN with a trailing byte -> ERROR (PROTOCOL)
 *                                  each, the connection stays open (a clean HEALTH answers)
 *                                  and the group keeps running (the script checks health)
 *   daemon_probe SOCKET peercred   (root only) with the dir/socket modes opened up, a
 *                                  uid-65534 peer is refused by SO_PEERCRED; modes restored
 *   daemon_probe SOCKET typecap    a HEALTH header announcing 1 MiB: ERROR (PROTOCOL) at once,
 *                                  before any payload; the payload is skipped unread and a
 *                                  clean HEALTH on the same connection answers
 *   daemon_probe SOCKET flood N    N idle connections (the --max-connections of the daemon):
 *                                  HEALTH and STATUS still answer on a new one (a reserved
 *                                  slot), a FORWARD there is refused (OVERFLOW)
 *   daemon_probe SOCKET noread     20000 pipelined STATUS requests, replies unread: the daemon
 *                                  stops reading (at most a few hundred handled, per STATS)
 *                                  instead of queueing 20000 replies; then every reply arrives
 *   daemon_probe SOCKET idle S     a silent connection and one holding half a header are both
 *                                  closed by the daemon after S seconds (--idle-timeout), not before
 *   daemon_probe SOCKET unixflood N S  one connection, then N more held for S seconds
 *                                  (past the daemon's descriptors): the first still gets
 *                                  STATUS answered every 0.5 s, each within 1 s
 *   daemon_probe HOST:PORT tcpflood N S  N idle TCP connections to the metrics port, held
 *                                  up to S seconds: prints how many the server closed
 *   daemon_probe PATH fakeserver F a fake daemon on PATH that answers HEALTH "ok" to anything;
 *                                  the bytes it received go to file F (for the client's check
 *                                  of who serves a socket); runs until killed */
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <arpa/inet.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "epmoe/client.h"
#include "epmoe/protocol.h"

static int dial(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

/* Read until EOF or 3 s; returns bytes read into buf. */
static size_t read_all(int fd, uint8_t *buf, size_t cap, int *eof) {
  size_t n = 0;
  *eof = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 3000) <= 0) return n;
    ssize_t k = read(fd, buf + n, cap - n);
    if (k <= 0) {
      *eof = 1;
      return n;
    }
    n += (size_t)k;
    if (n == cap) return n;
  }
}

static int expect_error_then_eof(int fd, epm_status_t want) {
  uint8_t buf[4096];
  int eof;
  size_t n = read_all(fd, buf, sizeof buf, &eof), used;
  epm_frame_t f;
  epm_error_resp_t e;
  if (epm_frame_decode(buf, n, NULL, &f, &used) != EPM_OK || epm_error_resp_decode(&f, &e) != EPM_OK) {
    fprintf(stderr, "no ERROR frame (%zu bytes)\n", n);
    return 1;
  }
  printf("daemon answered %s: %.*s\n", epm_status_name((epm_status_t)e.code), (int)e.message.len, e.message.ptr);
  if (e.code != (uint32_t)want) return 1;
  if (!eof) {
    fprintf(stderr, "connection still open after a malformed frame\n");
    return 1;
  }
  return 0;
}

/* Read exactly one frame (3 s per read); 0 if none came. */
static size_t read_frame(int fd, uint8_t *buf, size_t cap, epm_frame_t *f) {
  size_t n = 0, need = EPM_FRAME_HEADER_SIZE;
  for (;;) {
    epm_status_t st = epm_frame_decode(buf, n, NULL, f, &need);
    if (st == EPM_OK) return n;
    if (st != EPM_ERR_NOT_READY || need > cap) return 0;
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 3000) <= 0) return 0;
    ssize_t k = read(fd, buf + n, need - n);
    if (k <= 0) return 0;
    n += (size_t)k;
  }
}


static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int write_all(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t k = write(fd, b, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

static long long status_requests(const char *sock) {
  epm_client_t *c = NULL;
  char *text = NULL;
  long long v = -1;
  if (epm_client_connect(sock, 3000, &c) == EPM_OK && epm_client_stats(c, EPM_FMT_PROMETHEUS, &text) == EPM_OK) {
    const char *p = strstr(text, "type=\"STATUS\"} ");
    if (p) v = atoll(p + strlen("type=\"STATUS\"} "));
  }
  free(text);
  epm_client_close(c);
  return v;
}

static int mode_typecap(const char *sock) {
  uint8_t h[EPM_FRAME_HEADER_SIZE], buf[4096];
  epm_frame_t f;
  epm_error_resp_t e;
  int fd = dial(sock);
  if (fd < 0) return 1;
  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 41, (uint64_t)1 << 20);
  double t0 = now_s();
  if (write_all(fd, h, sizeof h) || !read_frame(fd, buf, sizeof buf, &f) || epm_error_resp_decode(&f, &e) != EPM_OK ||
      e.code != EPM_ERR_PROTOCOL || f.request_id != 41) {
    fprintf(stderr, "a HEALTH header announcing 1 MiB got no ERROR (PROTOCOL) before its payload\n");
    return 1;
  }
  printf("refused from the header in %.0f ms: %.*s; ", (now_s() - t0) * 1e3, (int)e.message.len, e.message.ptr);
  static uint8_t junk[1 << 20];
  memset(junk, 0x5a, sizeof junk);
  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 42, 0);
  if (write_all(fd, junk, sizeof junk) || write_all(fd, h, sizeof h) || !read_frame(fd, buf, sizeof buf, &f) ||
      f.request_id != 42 || epm_health_resp_decode(&f, NULL) != EPM_OK) {
    fprintf(stderr, "after the skipped payload a clean HEALTH did not answer\n");
    return 1;
  }
  printf("1 MiB skipped unread, a clean HEALTH answers on the same connection\n");
  close(fd);
  return 0;
}

static int mode_flood(const char *sock, int n) {
  int *fds = calloc((size_t)n, sizeof *fds), rc = 1;
  epm_client_t *c = NULL;
  epm_health_t st;
  char *text = NULL;
  for (int i = 0; i < n; i++)
    if ((fds[i] = dial(sock)) < 0) {
      fprintf(stderr, "connection %d of %d failed\n", i, n);
      goto out;
    }
  usleep(200000);
  if (epm_client_connect(sock, 3000, &c) != EPM_OK || epm_client_health(c, &st, NULL, 0) != EPM_OK ||
      st != EPM_HEALTH_OK || epm_client_status(c, 0, &text) != EPM_OK) {
    fprintf(stderr, "with %d idle connections HEALTH/STATUS failed: %s\n", n, epm_last_error());
    goto out;
  }
  printf("%d idle connections: HEALTH ok and STATUS answer on a reserved slot; ", n);
  /* a FORWARD there is refused: HELLO works, the FORWARD gets OVERFLOW */
  epm_client_info_t info;
  if (epm_client_hello(c, "flood", &info) != EPM_OK) {
    fprintf(stderr, "HELLO on a reserved slot failed: %s\n", epm_last_error());
    goto out;
  }
  uint16_t y[1];
  epm_status_t fst = epm_client_forward(c, 0, 77, NULL, NULL, 0, y, NULL);
  if (fst != EPM_ERR_OVERFLOW) {
    fprintf(stderr, "a FORWARD on a reserved slot was not refused with OVERFLOW (%s: %s)\n", epm_status_name(fst),
            epm_last_error());
    goto out;
  }
  printf("a FORWARD there is refused: %s\n", epm_last_error());
  rc = 0;
out:
  free(text);
  epm_client_close(c);
  for (int i = 0; i < n; i++)
    if (fds[i] > 0) close(fds[i]);
  free(fds);
  return rc;
}

static int mode_noread(const char *sock) {
  enum { N = 20000 };
  uint8_t fr[EPM_FRAME_HEADER_SIZE + 4];
  long long before = status_requests(sock);
  int fd = dial(sock);
  if (fd < 0 || before < 0) return 1;
  fcntl(fd, F_SETFL, O_NONBLOCK);
  int sent = 0;
  double t0 = now_s();
  while (sent < N && now_s() - t0 < 10) {
    epm_frame_header_encode(fr, EPM_MSG_STATUS, 0, (uint64_t)sent + 1, 4);
    memset(fr + EPM_FRAME_HEADER_SIZE, 0, 4);
    ssize_t k = send(fd, fr, sizeof fr, MSG_NOSIGNAL);
    if (k == (ssize_t)sizeof fr) {
      sent++;
      continue;
    }
    if (k >= 0) { /* a partial frame: finish it blocking-ish */
      fcntl(fd, F_SETFL, 0);
      if (write_all(fd, fr + k, sizeof fr - (size_t)k)) return 1;
      fcntl(fd, F_SETFL, O_NONBLOCK);
      sent++;
      continue;
    }
    if (errno == EAGAIN) {
      usleep(20000);
      if (now_s() - t0 > 1.5) break; /* the daemon stopped reading: as it should */
      continue;
    }
    return 1;
  }
  usleep(300000);
  long long handled = status_requests(sock) - before;
  printf("sent %d STATUS requests without reading; the daemon handled %lld and then stopped reading; ", sent, handled);
  if (handled < 0 || handled > 1000 || sent < 200) {
    fprintf(stderr, "\nexpected the daemon to stop after a bounded number of unread replies\n");
    return 1;
  }
  /* now read: every request gets its reply, in order */
  fcntl(fd, F_SETFL, 0);
  static uint8_t buf[1 << 16];
  for (int i = 0; i < sent; i++) {
    epm_frame_t f;
    if (!read_frame(fd, buf, sizeof buf, &f) || f.type != EPM_MSG_STATUS || f.request_id != (uint64_t)i + 1) {
      fprintf(stderr, "\nreply %d of %d missing or out of order\n", i + 1, sent);
      return 1;
    }
  }
  printf("all %d replies then arrived in order\n", sent);
  close(fd);
  return 0;
}

/* Seconds from t0 until the daemon closes fd (reads and drops anything), or
 * -1 when it is still open at t0 + limit. */
static double seconds_to_eof(int fd, double t0, double limit) {
  uint8_t b[256];
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    double left = limit - (now_s() - t0);
    if (left <= 0) return -1;
    if (poll(&p, 1, (int)(left * 1000) + 1) > 0) {
      ssize_t k = read(fd, b, sizeof b);
      if (k <= 0) return now_s() - t0;
    }
  }
}

static int mode_idle(const char *sock, double s) {
  uint8_t h[EPM_FRAME_HEADER_SIZE];
  int quiet = dial(sock), half = dial(sock);
  if (quiet < 0 || half < 0) return 1;
  const double t0 = now_s();
  epm_frame_header_encode(h, EPM_MSG_STATUS, 0, 1, 4);
  if (write_all(half, h, 20)) return 1;
  double t_quiet = seconds_to_eof(quiet, t0, s + 5), t_half = seconds_to_eof(half, t0, s + 5);
  printf("silent connection closed after %.1f s, one holding half a header after %.1f s (idle timeout %.0f s)\n",
         t_quiet, t_half, s);
  if (t_quiet < s - 0.6 || t_half < s - 0.6) return 1;
  return 0;
}

static int mode_fakeserver(const char *path, const char *record) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int l = socket(AF_UNIX, SOCK_STREAM, 0);
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  unlink(path);
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) {
    perror("fakeserver");
    return 1;
  }
  chmod(path, 0666);
  printf("fake daemon on %s\n", path);
  fflush(stdout);
  for (;;) {
    int fd = accept(l, NULL, NULL);
    if (fd < 0) continue;
    uint8_t buf[65536];
    epm_frame_t f;
    size_t n = read_frame(fd, buf, sizeof buf, &f);
    FILE *rf = n ? fopen(record, "a") : NULL; /* a frame received: what the client check must prevent */
    if (rf) {
      fprintf(rf, "%s frame of %zu bytes\n", epm_msg_type_name(f.type), n);
      fclose(rf);
    }
    if (n) { /* "ok" to whatever it was: a HEALTH answer */
      epm_buf_t b = {0};
      epm_health_resp_t hr = {EPM_HEALTH_OK, {"", 0}};
      epm_health_resp_encode(&b, EPM_MSG_HEALTH, f.request_id, &hr);
      (void)!write(fd, b.data, b.len);
      epm_buf_free(&b);
    }
    close(fd);
  }
}

static int mode_unixflood(const char *sock, int n, double secs) {
  int ctl = dial(sock), opened = 0;
  int *fds = calloc((size_t)n, sizeof *fds);
  uint8_t fr[EPM_FRAME_HEADER_SIZE + 4], buf[1 << 16];
  if (ctl < 0 || !fds) return 1;
  for (int i = 0; i < n; i++) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", sock);
    fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&a, sizeof a) == 0) opened++;
  }
  int answered = 0, asked = 0;
  double worst = 0, t0 = now_s();
  while (now_s() - t0 < secs) {
    epm_frame_t f;
    epm_frame_header_encode(fr, EPM_MSG_STATUS, 0, (uint64_t)asked + 1, 4);
    memset(fr + EPM_FRAME_HEADER_SIZE, 0, 4);
    double t = now_s();
    asked++;
    if (write_all(ctl, fr, sizeof fr) == 0 && read_frame(ctl, buf, sizeof buf, &f) && f.type == EPM_MSG_STATUS &&
        now_s() - t < 1.0)
      answered++;
    if (now_s() - t > worst) worst = now_s() - t;
    usleep(500000);
  }
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]);
  free(fds);
  close(ctl);
  printf("%d of %d flood connections opened; an established connection had %d of %d STATUS answered "
         "(slowest %.0f ms)\n", opened, n, answered, asked, worst * 1e3);
  return answered == asked ? 0 : 1;
}

static int mode_tcpflood(const char *hostport, int n, double secs) {
  char host[64];
  int port;
  if (sscanf(hostport, "%63[^:]:%d", host, &port) != 2) return 2;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return 2;
  int *fds = calloc((size_t)n, sizeof *fds), *closed_at = calloc((size_t)n, sizeof *closed_at);
  if (!fds || !closed_at) return 1;
  for (int i = 0; i < n; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    if (fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&a, sizeof a) != 0) {
      close(fds[i]);
      fds[i] = -1;
    }
  }
  int closed = 0, early = 0;
  double t0 = now_s();
  while (closed < n && now_s() - t0 < secs) {
    for (int i = 0; i < n; i++) {
      if (fds[i] < 0) {
        if (!closed_at[i]) closed_at[i] = 1, closed++, early++;
        continue;
      }
      struct pollfd p = {fds[i], POLLIN, 0};
      uint8_t b[64];
      if (poll(&p, 1, 0) > 0 && read(fds[i], b, sizeof b) <= 0) {
        close(fds[i]);
        fds[i] = -1;
        closed_at[i] = 1;
        closed++;
      }
    }
    usleep(50000);
  }
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]);
  free(fds);
  free(closed_at);
  printf("%d idle TCP connections: %d closed by the server within %.1f s\n", n, closed, now_s() - t0);
  (void)early;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: daemon_probe SOCKET badmagic|oversize|partial|trailing|peercred|typecap|noread|"
                    "flood N|idle S|fakeserver FILE\n");
    return 2;
  }
  const char *sock = argv[1], *mode = argv[2];
  signal(SIGPIPE, SIG_IGN);
  if (!strcmp(mode, "typecap")) return mode_typecap(sock);
  if (!strcmp(mode, "noread")) return mode_noread(sock);
  if (!strcmp(mode, "flood") && argc == 4) return mode_flood(sock, atoi(argv[3]));
  if (!strcmp(mode, "idle") && argc == 4) return mode_idle(sock, atof(argv[3]));
  if (!strcmp(mode, "fakeserver") && argc == 4) return mode_fakeserver(sock, argv[3]);
  if (!strcmp(mode, "unixflood") && argc == 5) return mode_unixflood(sock, atoi(argv[3]), atof(argv[4]));
  if (!strcmp(mode, "tcpflood") && argc == 5) return mode_tcpflood(sock, atoi(argv[3]), atof(argv[4]));
  uint8_t h[EPM_FRAME_HEADER_SIZE];
  if (!strcmp(mode, "badmagic")) {
    int fd = dial(sock);
    if (fd < 0) return 1;
    memset(h, 'G', sizeof h);
    if (write(fd, "GET / HTTP/1.1\r\n\r\n", 18) != 18) return 1;
    return expect_error_then_eof(fd, EPM_ERR_PROTOCOL);
  }
  if (!strcmp(mode, "oversize")) {
    int fd = dial(sock);
    if (fd < 0) return 1;
    epm_frame_header_encode(h, EPM_MSG_FORWARD, 0, 9, (uint64_t)1 << 40);
    if (write(fd, h, sizeof h) != (ssize_t)sizeof h) return 1;
    return expect_error_then_eof(fd, EPM_ERR_OVERFLOW);
  }
  if (!strcmp(mode, "partial")) {
    int fd = dial(sock);
    epm_client_t *c = NULL;
    epm_health_t st;
    if (fd < 0) return 1;
    epm_frame_header_encode(h, EPM_MSG_STATUS, 0, 1, 4);
    if (write(fd, h, 20) != 20) return 1; /* and never the rest */
    if (epm_client_connect(sock, 1000, &c) != EPM_OK || epm_client_health(c, &st, NULL, 0) != EPM_OK) {
      fprintf(stderr, "HEALTH on a second connection failed: %s\n", epm_last_error());
      return 1;
    }
    printf("HEALTH answered (%s) while another connection holds half a frame\n", epm_health_name(st));
    epm_client_close(c);
    close(fd);
    return 0;
  }
  if (!strcmp(mode, "trailing")) {
    uint8_t fr[EPM_FRAME_HEADER_SIZE + 1] = {0}, buf[4096];
    epm_frame_t f;
    epm_error_resp_t e;
    int fd = dial(sock);
    if (fd < 0) return 1;
    const uint16_t types[2] = {EPM_MSG_HEALTH, EPM_MSG_SHUTDOWN};
    for (int i = 0; i < 2; i++) {
      epm_frame_header_encode(fr, types[i], 0, 5, 1);
      if (write(fd, fr, sizeof fr) != (ssize_t)sizeof fr || !read_frame(fd, buf, sizeof buf, &f) ||
          epm_error_resp_decode(&f, &e) != EPM_OK || e.code != EPM_ERR_PROTOCOL || f.request_id != 5) {
        fprintf(stderr, "%s with a trailing byte was not refused with one ERROR (PROTOCOL)\n",
                epm_msg_type_name(types[i]));
        return 1;
      }
      printf("%s + 1 byte refused: %.*s; ", epm_msg_type_name(types[i]), (int)e.message.len, e.message.ptr);
    }
    epm_frame_header_encode(fr, EPM_MSG_HEALTH, 0, 6, 0);
    if (write(fd, fr, EPM_FRAME_HEADER_SIZE) != EPM_FRAME_HEADER_SIZE || !read_frame(fd, buf, sizeof buf, &f) ||
        epm_health_resp_decode(&f, NULL) != EPM_OK) {
      fprintf(stderr, "the connection did not answer a clean HEALTH afterwards\n");
      return 1;
    }
    printf("a clean HEALTH still answers\n");
    close(fd);
    return 0;
  }
  if (!strcmp(mode, "peercred")) {
    struct stat ds, ss;
    char dirbuf[512];
    if (geteuid() != 0) return 77;
    snprintf(dirbuf, sizeof dirbuf, "%s", sock);
    const char *dir = dirname(dirbuf);
    if (stat(dir, &ds) || stat(sock, &ss)) return 1;
    /* Open the file-system gate so only SO_PEERCRED stands in the way. */
    chmod(dir, 0755);
    chmod(sock, 0666);
    pid_t pid = fork();
    if (pid == 0) {
      uint8_t buf[256];
      int eof;
      signal(SIGPIPE, SIG_IGN); /* the daemon may close before our write lands */
      if (setgid(65534) || setuid(65534)) _exit(3);
      int fd = dial(sock);
      if (fd < 0) _exit(4); /* could not even connect */
      epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 1, 0);
      if (write(fd, h, sizeof h) < 0) _exit(0); /* refused already */
      size_t n = read_all(fd, buf, sizeof buf, &eof);
      _exit(n == 0 && eof ? 0 : 5); /* closed without an answer = refused */
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    chmod(dir, ds.st_mode & 07777);
    chmod(sock, ss.st_mode & 07777);
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
      fprintf(stderr, "uid 65534 peer was not refused (child status %d)\n", WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
      return 1;
    }
    printf("uid 65534 peer refused by SO_PEERCRED\n");
    return 0;
  }
  fprintf(stderr, "unknown mode %s\n", mode);
  return 2;
}
