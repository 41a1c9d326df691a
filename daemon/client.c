/* SPDX-License-Identifier: Apache-2.0 */
/* client.c — libepmoe_client: blocking request/response over one Unix
 * socket, every wait bounded by poll() against a deadline, one mutex per
 * connection. Responses are decoded with the same codec as the server, with a
 * payload cap derived from what we asked for. */
#define _GNU_SOURCE
#include "epmoe/client.h"
#include "client_impl.h"
#include "epmoe/clock.h"
#include "devmem.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static epm_status_t wait_fd(epm_client_t *c, short ev, int64_t deadline, const char *what) {
  for (;;) {
    int64_t left = deadline - (int64_t)(epm_clock_ns() / 1000000u);
    struct pollfd p = {c->fd, ev, 0};
    if (left <= 0)
      return epm_error(EPM_ERR_TIMEOUT, "%s: no progress within %d ms on %s", what, c->timeout_ms, c->path);
    int n = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
    if (n > 0) return EPM_OK;
    if (n < 0 && errno != EINTR) return epm_error(EPM_ERR_SYSTEM, "poll: %s", strerror(errno));
  }
}

/* Send iov fully (optionally with one fd on the first sendmsg). */
static epm_status_t send_all(epm_client_t *c, struct iovec *iov, int n, int pass_fd, int64_t deadline) {
  int i = 0;
  while (i < n) {
    union {
      struct cmsghdr h;
      char b[CMSG_SPACE(sizeof(int))];
    } cm;
    struct msghdr mh = {.msg_iov = iov + i, .msg_iovlen = (size_t)(n - i)};
    if (pass_fd >= 0) {
      memset(&cm, 0, sizeof cm);
      mh.msg_control = cm.b;
      mh.msg_controllen = sizeof cm.b;
      struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
      h->cmsg_level = SOL_SOCKET;
      h->cmsg_type = SCM_RIGHTS;
      h->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(h), &pass_fd, sizeof(int));
    }
    ssize_t k = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        EPM_TRY(wait_fd(c, POLLOUT, deadline, "sending a request"));
        continue;
      }
      return epm_error(EPM_ERR_IO, "send to %s: %s", c->path, strerror(errno));
    }
    pass_fd = -1;
    size_t left = (size_t)k;
    while (i < n && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (i < n) {
      iov[i].iov_base = (char *)iov[i].iov_base + left;
      iov[i].iov_len -= left;
    }
    while (i < n && iov[i].iov_len == 0) i++;
  }
  return EPM_OK;
}

static epm_status_t recv_all(epm_client_t *c, void *buf, size_t n, int64_t deadline) {
  size_t got = 0;
  while (got < n) {
    ssize_t k = recv(c->fd, (char *)buf + got, n - got, MSG_DONTWAIT);
    if (k > 0) {
      got += (size_t)k;
      continue;
    }
    if (k == 0) return epm_error(EPM_ERR_IO, "daemon at %s closed the connection", c->path);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return epm_error(EPM_ERR_IO, "recv from %s: %s", c->path, strerror(errno));
    EPM_TRY(wait_fd(c, POLLIN, deadline, "waiting for the daemon's answer"));
  }
  return EPM_OK;
}

/* Read one response frame for rid into *raw (malloc'd); ERROR frames are
 * turned into their status with the daemon's message. */
static epm_status_t read_response(epm_client_t *c, uint64_t rid, uint64_t max_payload, uint16_t want_type,
                                  uint8_t **raw, epm_frame_t *f, int64_t deadline) {
  uint8_t hdr[EPM_FRAME_HEADER_SIZE];
  /* An ERROR frame may come instead of a tiny answer: leave room for it. */
  epm_proto_limits_t lim = {max_payload > 65536 ? max_payload : 65536};
  size_t need = 0;
  epm_status_t st;
  *raw = NULL;
  EPM_TRY(recv_all(c, hdr, sizeof hdr, deadline));
  st = epm_frame_decode(hdr, sizeof hdr, &lim, f, &need);
  if (st != EPM_OK && st != EPM_ERR_NOT_READY) return epm_error_wrap(st, "response from %s", c->path);
  uint8_t *buf = malloc(need ? need : sizeof hdr);
  if (!buf) return epm_error(EPM_ERR_NOMEM, "response buffer of %zu bytes", need);
  memcpy(buf, hdr, sizeof hdr);
  if (need > sizeof hdr && (st = recv_all(c, buf + sizeof hdr, need - sizeof hdr, deadline)) != EPM_OK) {
    free(buf);
    return st;
  }
  st = epm_frame_decode(buf, need ? need : sizeof hdr, &lim, f, &need);
  if (st != EPM_OK) {
    free(buf);
    return epm_error_wrap(st, "response from %s", c->path);
  }
  *raw = buf;
  if (f->type == EPM_MSG_ERROR) {
    epm_error_resp_t e;
    if (epm_error_resp_decode(f, &e) != EPM_OK) return EPM_ERR_PROTOCOL;
    epm_status_t code = e.code > 0 && e.code < EPM_STATUS_COUNT ? (epm_status_t)e.code : EPM_ERR_INTERNAL;
    if (c->have_info) return epm_error(code, "rank %d: %.*s", c->info.rank, (int)e.message.len, e.message.ptr);
    return epm_error(code, "%s: %.*s", c->path, (int)e.message.len, e.message.ptr);
  }
  if (f->request_id != rid || f->type != want_type)
    return epm_error(EPM_ERR_PROTOCOL, "expected the %s response to request %llu, got %s for %llu",
                     epm_msg_type_name(want_type), (unsigned long long)rid, epm_msg_type_name(f->type),
                     (unsigned long long)f->request_id);
  return EPM_OK;
}

epm_status_t epm__client_roundtrip(epm_client_t *c, epm_buf_t *b, struct iovec *extra, int nextra, int pass_fd,
                              uint64_t rid, uint16_t type, uint64_t max_payload, uint8_t **raw, epm_frame_t *f) {
  struct iovec iov[4];
  int64_t deadline = (int64_t)(epm_clock_ns() / 1000000u) + c->timeout_ms;
  iov[0].iov_base = b->data;
  iov[0].iov_len = b->len;
  for (int i = 0; i < nextra; i++) iov[1 + i] = extra[i];
  EPM_TRY(send_all(c, iov, 1 + nextra, pass_fd, deadline));
  return read_response(c, rid, max_payload, type, raw, f, deadline);
}

/* Who may serve path: expect_uid, or (expect_uid < 0) the owner of the
 * directory that holds the socket — the only user, besides root, who can put
 * a socket there when the directory is the daemon's (docs/RELIABILITY.md). */
static epm_status_t expected_uid(const char *path, long expect_uid, uid_t *uid) {
  if (expect_uid >= 0) {
    *uid = (uid_t)expect_uid;
    return EPM_OK;
  }
  char dir[108];
  struct stat st;
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return epm_error(EPM_ERR_IO, "cannot check who owns the socket directory %s: %s", dir, strerror(errno));
  *uid = st.st_uid;
  return EPM_OK;
}

/* SO_PEERCRED before any byte goes out: a socket served by another user (a
 * fake daemon in a directory someone else can write) is refused. */
static epm_status_t check_server(int fd, const char *path, long expect_uid) {
  struct ucred cr;
  socklen_t len = sizeof cr;
  uid_t want = 0;
  EPM_TRY(expected_uid(path, expect_uid, &want));
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
    return epm_error(EPM_ERR_SYSTEM, "SO_PEERCRED on %s: %s", path, strerror(errno));
  if (cr.uid != want)
    return epm_error(EPM_ERR_IO,
                     "%s is served by uid %u (pid %d), not by uid %u (%s); refusing to talk to it", path,
                     (unsigned)cr.uid, (int)cr.pid, (unsigned)want,
                     expect_uid >= 0 ? "the expected uid" : "the owner of its directory");
  return EPM_OK;
}

epm_status_t epm_client_connect(const char *path, int timeout_ms, epm_client_t **out) {
  return epm_client_connect_as(path, timeout_ms, -1, out);
}

epm_status_t epm_client_connect_as(const char *path, int timeout_ms, long expect_uid, epm_client_t **out) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  epm_client_t *c;
  if (!path || strlen(path) >= sizeof a.sun_path)
    return epm_error(EPM_ERR_INVALID_ARG, "socket path '%s' is empty or longer than %zu bytes", path ? path : "",
                     sizeof a.sun_path - 1);
  c = calloc(1, sizeof *c);
  if (!c) return epm_error(EPM_ERR_NOMEM, "client");
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
  c->next_rid = 1;
  c->fwd_flags = EPM_FWD_F_SHARED_EXPERT; /* the whole layer, as the CPU reference computes it */
  c->fwd_dtype = EPM_DTYPE_F32;
  snprintf(c->path, sizeof c->path, "%s", path);
  memcpy(a.sun_path, path, strlen(path) + 1);
  c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
    epm_status_t st = epm_error(errno == ENOENT || errno == ECONNREFUSED ? EPM_ERR_IO : EPM_ERR_SYSTEM,
                                "cannot connect to %s: %s", path, strerror(errno));
    if (c->fd >= 0) close(c->fd);
    free(c);
    return st;
  }
  epm_status_t st = check_server(c->fd, path, expect_uid);
  if (st != EPM_OK) {
    close(c->fd);
    free(c);
    return st;
  }
  pthread_mutex_init(&c->mu, NULL);
  *out = c;
  return EPM_OK;
}

void epm_client_close(epm_client_t *c) {
  if (!c) return;
  if (c->fd >= 0) close(c->fd);
  if (c->shm) munmap(c->shm, c->shm_size);
  epm__doorbell_free(c->db);
  epm_devmem_free(c->dev);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

void epm_client_set_timeout(epm_client_t *c, int timeout_ms) { c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000; }

epm_status_t epm_client_set_step_options(epm_client_t *c, uint32_t flags, epm_dtype_t partial_dtype) {
  if (flags & ~EPM_FWD_F_KNOWN)
    return epm_error(EPM_ERR_INVALID_ARG, "step flags 0x%x have unknown bits (known 0x%x)", flags, EPM_FWD_F_KNOWN);
  if (epm_dtype_size(partial_dtype) == 0)
    return epm_error(EPM_ERR_INVALID_ARG, "partial dtype %d is not a dtype (0 f32, 1 bf16)", (int)partial_dtype);
  pthread_mutex_lock(&c->mu);
  c->fwd_flags = flags;
  c->fwd_dtype = partial_dtype;
  pthread_mutex_unlock(&c->mu);
  return EPM_OK;
}

static void copy_str(char *dst, size_t n, epm_str_t s) {
  size_t k = s.len < n - 1 ? s.len : n - 1;
  memcpy(dst, s.ptr, k);
  dst[k] = '\0';
}

epm_status_t epm_client_hello(epm_client_t *c, const char *client_name, epm_client_info_t *out) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_hello_resp_t rs;
  epm_status_t st;
  const char *nm = client_name ? client_name : "libepmoe_client";
  epm_hello_req_t rq = {EPM_PROTO_MIN_VERSION, EPM_PROTO_VERSION, {nm, (uint32_t)strlen(nm)}};
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  EPM_TRY_GOTO(epm_hello_req_encode(&b, EPM_MSG_HELLO, rid, &rq), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, -1, rid, EPM_MSG_HELLO, 1 << 20, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_hello_resp_decode(&f, &rs), st, out);
  memset(&c->info, 0, sizeof c->info);
  c->info.version = rs.version;
  c->info.rank = (int)rs.rank;
  c->info.world_size = (int)rs.world_size;
  c->info.hidden = rs.hidden;
  c->info.num_experts = rs.num_experts;
  c->info.top_k = rs.top_k;
  c->info.max_tokens_per_rank = rs.max_tokens_per_rank;
  c->info.max_payload = rs.max_payload;
  copy_str(c->info.server_version, sizeof c->info.server_version, rs.server_version);
  copy_str(c->info.model, sizeof c->info.model, rs.model);
  copy_str(c->info.backend, sizeof c->info.backend, rs.backend);
  c->have_info = 1;
  if (out) *out = c->info;
out:
  pthread_mutex_unlock(&c->mu);
  free(raw);
  epm_buf_free(&b);
  return st;
}

static epm_status_t text_call(epm_client_t *c, uint16_t type, uint32_t fmt, char **text) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_fmt_req_t rq = {fmt};
  epm_text_resp_t rs;
  epm_status_t st;
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  EPM_TRY_GOTO(epm_fmt_req_encode(&b, type, rid, &rq), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, -1, rid, type, EPM_PROTO_MAX_TEXT, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_text_resp_decode(&f, &rs), st, out);
  epm_str_t s = rs.text;
  *text = malloc((size_t)s.len + 1);
  if (!*text) {
    st = epm_error(EPM_ERR_NOMEM, "status text");
    goto out;
  }
  memcpy(*text, s.ptr, s.len);
  (*text)[s.len] = '\0';
out:
  pthread_mutex_unlock(&c->mu);
  free(raw);
  epm_buf_free(&b);
  return st;
}

epm_status_t epm_client_status(epm_client_t *c, int json, char **text) {
  return text_call(c, EPM_MSG_STATUS, json ? EPM_FMT_JSON : EPM_FMT_TEXT, text);
}

epm_status_t epm_client_stats(epm_client_t *c, epm_text_format_t fmt, char **text) {
  return text_call(c, EPM_MSG_STATS, (uint32_t)fmt, text);
}

epm_status_t epm_client_health(epm_client_t *c, epm_health_t *state, char *reason, size_t n) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_health_resp_t h;
  epm_status_t st;
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  EPM_TRY_GOTO(epm_empty_req_encode(&b, EPM_MSG_HEALTH, rid, NULL), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, -1, rid, EPM_MSG_HEALTH, 1 << 20, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_health_resp_decode(&f, &h), st, out);
  *state = (epm_health_t)h.state;
  if (reason && n) copy_str(reason, n, h.reason);
out:
  pthread_mutex_unlock(&c->mu);
  free(raw);
  epm_buf_free(&b);
  return st;
}

static epm_status_t forward_common(epm_client_t *c, epm_fwd_req_t *rq, uint16_t *y, uint64_t *step_ns) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_fwd_resp_t rs;
  epm_status_t st;
  size_t xb = 0, lb = 0;
  struct iovec extra[2];
  int nextra = 0;
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  rq->flags = c->fwd_flags;
  rq->partial_dtype = (uint32_t)c->fwd_dtype;
  if (!c->have_info) {
    st = epm_error(EPM_ERR_INVALID_ARG, "epm_client_forward before epm_client_hello on %s", c->path);
    goto out;
  }
  EPM_TRY_GOTO(epm_fwd_data_bytes(rq->m, rq->hidden, rq->num_experts, &xb, &lb), st, out);
  EPM_TRY_GOTO(epm_msg_encode_head(&b, EPM_MSG_FORWARD, 0, rid, rq), st, out); /* data goes by writev */
  if (rq->data_mode == EPM_DATA_INLINE) {
    extra[0] = (struct iovec){(void *)rq->x, xb};
    extra[1] = (struct iovec){(void *)rq->logits, lb};
    nextra = 2;
  }
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, extra, nextra, -1, rid, EPM_MSG_FORWARD, EPM_FWD_RESP_FIXED + xb, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_fwd_resp_decode(&f, &rs), st, out);
  if (rs.m != rq->m || rs.step_id != rq->step_id || rs.data_mode != rq->data_mode) {
    st = epm_error(EPM_ERR_PROTOCOL, "FORWARD response for step %llu m=%lld does not match request step %llu m=%lld",
                   (unsigned long long)rs.step_id, (long long)rs.m, (unsigned long long)rq->step_id, (long long)rq->m);
    goto out;
  }
  if (rq->data_mode == EPM_DATA_INLINE && xb) memcpy(y, rs.y, xb);
  if (step_ns) *step_ns = rs.step_ns;
out:
  pthread_mutex_unlock(&c->mu);
  free(raw);
  epm_buf_free(&b);
  return st;
}

epm_status_t epm_client_forward(epm_client_t *c, uint32_t layer, uint64_t step_id, const uint16_t *x,
                                const float *logits, int64_t m, uint16_t *y, uint64_t *step_ns) {
  epm_fwd_req_t rq = {.layer = layer, .data_mode = EPM_DATA_INLINE, .step_id = step_id, .m = m,
                      .hidden = c->info.hidden, .num_experts = c->info.num_experts, .x = x, .logits = logits};
  return forward_common(c, &rq, y, step_ns);
}

epm_status_t epm_client_forward_shm(epm_client_t *c, uint32_t layer, uint64_t step_id, int64_t m, uint64_t x_off,
                                    uint64_t logits_off, uint64_t y_off, uint64_t *step_ns) {
  epm_fwd_req_t rq = {.layer = layer, .data_mode = EPM_DATA_SHM, .step_id = step_id, .m = m,
                      .hidden = c->info.hidden, .num_experts = c->info.num_experts,
                      .x_offset = x_off, .logits_offset = logits_off, .y_offset = y_off};
  return forward_common(c, &rq, NULL, step_ns);
}

epm_status_t epm_client_shm_create(epm_client_t *c, size_t bytes, void **base) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_status_t st = EPM_OK;
  void *p = MAP_FAILED;
  int fd = memfd_create("epmoe-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return epm_error(EPM_ERR_SYSTEM, "memfd_create: %s", strerror(errno));
  if (bytes == 0 || ftruncate(fd, (off_t)bytes) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    st = epm_error(EPM_ERR_SYSTEM, "sizing/sealing a %zu-byte memfd: %s", bytes, strerror(errno));
    close(fd);
    return st;
  }
  p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    st = epm_error(EPM_ERR_SYSTEM, "mmap of %zu bytes: %s", bytes, strerror(errno));
    close(fd);
    return st;
  }
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  epm_shm_attach_t a = {bytes};
  EPM_TRY_GOTO(epm_shm_attach_encode(&b, EPM_MSG_SHM_ATTACH, rid, &a), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, fd, rid, EPM_MSG_SHM_ATTACH, 0, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_empty_resp_decode(&f, NULL), st, out);
  if (c->shm) munmap(c->shm, c->shm_size);
  c->shm = p;
  c->shm_size = bytes;
  *base = p;
  p = MAP_FAILED;
out:
  pthread_mutex_unlock(&c->mu);
  if (p != MAP_FAILED) munmap(p, bytes);
  close(fd);
  free(raw);
  epm_buf_free(&b);
  return st;
}

epm_status_t epm_client_forward_dev(epm_client_t *c, uint32_t layer, uint64_t step_id, int64_t m, uint64_t x_off,
                                    uint64_t logits_off, uint64_t y_off, uint64_t *step_ns) {
  epm_fwd_req_t rq = {.layer = layer, .data_mode = EPM_DATA_DEVICE, .step_id = step_id, .m = m,
                      .hidden = c->info.hidden, .num_experts = c->info.num_experts,
                      .x_offset = x_off, .logits_offset = logits_off, .y_offset = y_off};
  return forward_common(c, &rq, NULL, step_ns);
}

epm_status_t epm_client_devmem_write(epm_client_t *c, uint64_t off, const void *src, size_t n) {
  if (!c->dev) return epm_error(EPM_ERR_INVALID_ARG, "no device region on this connection");
  return epm_devmem_from_host(c->dev, (size_t)off, src, n);
}

epm_status_t epm_client_devmem_read(epm_client_t *c, uint64_t off, void *dst, size_t n) {
  if (!c->dev) return epm_error(EPM_ERR_INVALID_ARG, "no device region on this connection");
  return epm_devmem_to_host(c->dev, (size_t)off, dst, n);
}

/* Allocate, share and attach a device region: a cuMemCreate allocation
 * whose fd rides with DEV_ATTACH, or (ipc) a cudaMalloc allocation named by
 * its cudaIpcMemHandle_t in the frame. The connection keeps the region. */
static epm_status_t devmem_attach(epm_client_t *c, size_t bytes, int device, int ipc, uint64_t *dptr) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_devmem_t *m = NULL;
  int fd = -1;
  epm_status_t st;
  epm_dev_attach_t a;
  memset(&a, 0, sizeof a);
  a.device = (uint32_t)device;
  a.kind = ipc ? EPM_DEV_ATTACH_IPC : EPM_DEV_ATTACH_FD;
  EPM_TRY(ipc ? epm_devmem_create_ipc(device, bytes, &m) : epm_devmem_create(device, bytes, &m));
  if ((st = ipc ? epm_devmem_ipc_handle(m, a.ipc_handle) : epm_devmem_export_fd(m, &fd)) != EPM_OK) {
    epm_devmem_free(m);
    return st;
  }
  a.size = epm_devmem_size(m);
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  EPM_TRY_GOTO(epm_dev_attach_encode(&b, EPM_MSG_DEV_ATTACH, rid, &a), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, fd, rid, EPM_MSG_DEV_ATTACH, 0, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_empty_resp_decode(&f, NULL), st, out);
  epm_devmem_free(c->dev);
  c->dev = m;
  *dptr = epm_devmem_ptr(m);
  m = NULL;
out:
  pthread_mutex_unlock(&c->mu);
  epm_devmem_free(m);
  if (fd >= 0) close(fd);
  free(raw);
  epm_buf_free(&b);
  return st;
}

epm_status_t epm_client_devmem_create(epm_client_t *c, size_t bytes, int device, uint64_t *dptr) {
  return devmem_attach(c, bytes, device, 0, dptr);
}

epm_status_t epm_client_devipc_create(epm_client_t *c, size_t bytes, int device, uint64_t *dptr) {
  return devmem_attach(c, bytes, device, 1, dptr);
}

epm_status_t epm_client_shutdown(epm_client_t *c) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_status_t st;
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  EPM_TRY_GOTO(epm_empty_req_encode(&b, EPM_MSG_SHUTDOWN, rid, NULL), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, -1, rid, EPM_MSG_SHUTDOWN, 1 << 20, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_empty_resp_decode(&f, NULL), st, out);
out:
  pthread_mutex_unlock(&c->mu);
  free(raw);
  epm_buf_free(&b);
  return st;
}
