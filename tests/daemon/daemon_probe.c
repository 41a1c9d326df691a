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
 *                                  uid-65534 peer is refused by SO_PEERCRED; modes restored */
#include <errno.h>
#include <libgen.h>
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

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: daemon_probe SOCKET badmagic|oversize|partial|trailing|peercred\n");
    return 2;
  }
  const char *sock = argv[1], *mode = argv[2];
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
