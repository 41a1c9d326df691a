/* SPDX-License-Identifier: Apache-2.0 */
/* srv_net.c — the Unix-socket side of epmoed, on the libuv loop: accepting,
 * reading and checking frames, answering, and the limits that keep one
 * client from starving the others.
 *
 * Where things are: the socket and its directory come from srv_sockdir.c
 * (policy there); accepting with back-off from srv_listen.c; this file has
 * the connections. Sections below: connections and their lifetime, the
 * output queue, request handlers, reading, limits and timers, accepting,
 * fail-stop, start and stop.
 *
 * Security: every accepted peer is checked with SO_PEERCRED: our uid, root,
 * or a member (primary or supplementary) of --allowed-group, else refused.
 * Connections use uv_poll_t with our own recvmsg/sendmsg rather than
 * uv_read_start, because SHM_ATTACH brings a memfd over SCM_RIGHTS and
 * libuv's stream IPC only accepts sockets as passed handles.
 *
 * Bounds (docs/RELIABILITY.md "Connections"):
 *  - a frame's size is checked from its header against --max-frame and
 *    against what its message type can carry (epm_msg_max_payload) before
 *    the read buffer grows; a frame too big for its type is answered with
 *    ERROR and its payload skipped unread, so the connection stays usable;
 *  - --max-connections clients, plus a few reserved slots past it that may
 *    only ask HEALTH/STATUS/STATS/HELLO for a short while, so a liveness
 *    probe answers even when idle clients fill every slot;
 *  - a connection with nothing in flight for --idle-timeout is closed;
 *  - at most CONN_MAX_INFLIGHT FORWARDs in flight and CONN_MAX_OUT_BYTES of
 *    unread replies per connection: past either, the connection is not read
 *    until it drains (back-pressure, nothing dropped);
 *  - one fd in flight per connection.
 * Lifetime: a connection is reference counted; each FORWARD handed to the
 * worker holds a reference (and so keeps the shm mapping alive). A client
 * that disconnects before its step's GO has the step cancelled on every rank
 * (srv_worker_cancel); after GO the step runs and the result is dropped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devmem.h"
#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "srv.h"

enum {
  CONN_MAX_INFLIGHT = 64,             /* FORWARDs in flight per connection */
  CONN_MAX_OUT_FRAMES = 64,           /* replies queued, unread by the client */
  PROBE_SLOTS = 4,                    /* reserved connections past --max-connections */
  PROBE_DEADLINE_MS = 2000,           /* how long a reserved connection may stay */
  SWEEP_MS = 500,                     /* idle/probe deadlines are checked this often */
};
static const size_t CONN_MAX_OUT_BYTES = (size_t)8 << 20;

typedef struct outbuf {
  struct outbuf *next;
  size_t off;
  epm_buf_t b;
} outbuf_t;

struct srv_conn {
  srv_t *s;
  srv_conn_t *next, *prev;
  int fd;
  uv_poll_t poll;
  int refs;
  int closing;     /* no more reads; close once writes are flushed */
  int handle_gone; /* poll handle closed */
  int probe;       /* a reserved slot: HEALTH/STATUS/STATS/HELLO only, short-lived */
  uint64_t id;
  pid_t pid;
  uid_t uid;
  uint64_t t_open_ns, t_active_ns; /* accepted; last byte in or out */
  uint64_t discard;                /* payload bytes of a refused frame still to skip */
  uint8_t *rbuf;
  size_t rlen, rcap;
  outbuf_t *out_head, *out_tail;
  size_t out_bytes;
  int out_frames;
  int pending_fd;
  int inflight;
  int worked;      /* sent more than probes (HELLO/HEALTH/STATUS/STATS): its close is worth an info line */
  srv_req_t *reqs[CONN_MAX_INFLIGHT]; /* FORWARDs with the worker */
  uint8_t *shm;
  size_t shm_size;
  epm_devmem_t *dev; /* DEV_ATTACH region, mapped on dev_device */
  srv_doorbell_t *db; /* DOORBELL_ATTACH (srv_doorbell.c) */
};

static uint64_t next_conn_id = 1;

static void process_frames(srv_conn_t *c);
static void update_poll(srv_conn_t *c);

/* ---- connections and their lifetime ----------------------------------------------- */

static int conn_gone(const srv_conn_t *c) { return c->handle_gone || uv_is_closing((uv_handle_t *)&c->poll); }

static void conn_unref(srv_conn_t *c) {
  if (--c->refs > 0) return;
  srv_t *s = c->s;
  if (c->prev) c->prev->next = c->next;
  else if (s->conns == c) s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  while (c->out_head) {
    outbuf_t *o = c->out_head;
    c->out_head = o->next;
    epm_buf_free(&o->b);
    free(o);
  }
  if (c->pending_fd >= 0) close(c->pending_fd);
  if (c->shm) munmap(c->shm, c->shm_size);
  epm_devmem_free(c->dev);
  free(c->rbuf);
  free(c);
}

static void on_poll_closed(uv_handle_t *h) {
  srv_conn_t *c = h->data;
  if (!c) return;
  close(c->fd);
  c->fd = -1;
  c->handle_gone = 1;
  srv_doorbell_close(c->db); /* its step in flight still completes */
  c->db = NULL;
  if (c->probe) c->s->nprobes--;
  else c->s->nconns--;
  pthread_mutex_lock(&c->s->stats.mu);
  c->s->stats.connections_open--;
  pthread_mutex_unlock(&c->s->stats.mu);
  conn_unref(c);
}

static void conn_close(srv_conn_t *c, const char *why) {
  if (conn_gone(c)) return;
  /* Kubernetes and systemd probe every few seconds on every rank: connections
   * that only probed (HELLO/HEALTH/STATUS/STATS) log their close at debug. */
  EPM_LOG(c->worked ? EPM_LOG_INFO : EPM_LOG_DEBUG, "net", "connection %llu (pid %d) closed: %s",
          (unsigned long long)c->id, (int)c->pid, why);
  c->closing = 1;
  /* Steps of this client that have not started are withdrawn from the group. */
  for (int i = 0; i < CONN_MAX_INFLIGHT; i++)
    if (c->reqs[i]) srv_worker_cancel(c->s, c->reqs[i]);
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, on_poll_closed);
}

static void track(srv_conn_t *c, srv_req_t *r) {
  for (int i = 0; i < CONN_MAX_INFLIGHT; i++)
    if (!c->reqs[i]) {
      c->reqs[i] = r;
      return;
    }
}

static void untrack(srv_conn_t *c, srv_req_t *r) {
  for (int i = 0; i < CONN_MAX_INFLIGHT; i++)
    if (c->reqs[i] == r) c->reqs[i] = NULL;
}

/* ---- the output queue -------------------------------------------------------------- */

static void on_conn_event(uv_poll_t *h, int status, int events);

/* Reading pauses while the client has this much to read or in flight. */
static int backpressured(const srv_conn_t *c) {
  return c->inflight >= CONN_MAX_INFLIGHT || c->out_frames >= CONN_MAX_OUT_FRAMES || c->out_bytes > CONN_MAX_OUT_BYTES;
}

static void update_poll(srv_conn_t *c) {
  if (conn_gone(c)) return;
  int ev = (c->closing || backpressured(c) ? 0 : UV_READABLE) | (c->out_head ? UV_WRITABLE : 0);
  if (ev) uv_poll_start(&c->poll, ev, on_conn_event);
  else uv_poll_stop(&c->poll);
}

/* Write what we can without blocking; returns -1 on a dead peer. */
static int flush_out(srv_conn_t *c) {
  while (c->out_head) {
    outbuf_t *o = c->out_head;
    ssize_t n = send(c->fd, o->b.data + o->off, o->b.len - o->off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return -1;
    }
    pthread_mutex_lock(&c->s->stats.mu);
    c->s->stats.bytes_out += (uint64_t)n;
    pthread_mutex_unlock(&c->s->stats.mu);
    c->t_active_ns = epm_clock_ns();
    o->off += (size_t)n;
    c->out_bytes -= (size_t)n;
    if (o->off == o->b.len) {
      c->out_head = o->next;
      if (!c->out_head) c->out_tail = NULL;
      c->out_frames--;
      epm_buf_free(&o->b);
      free(o);
    }
  }
  return 0;
}

/* After output drained: close a connection marked for it, else read again
 * (frames already buffered first). */
static void after_flush(srv_conn_t *c, int was_backpressured) {
  if (c->closing && !c->out_head) {
    c->closing = 0; /* let conn_close run its course */
    conn_close(c, "response sent after a protocol error");
    return;
  }
  update_poll(c);
  if (was_backpressured && !backpressured(c)) process_frames(c);
}

/* Queue an encoded frame (takes ownership of b's memory) and try to send it. */
static void send_buf(srv_conn_t *c, epm_buf_t *b) {
  outbuf_t *o;
  if (conn_gone(c)) {
    epm_buf_free(b);
    return;
  }
  o = calloc(1, sizeof *o);
  if (!o) {
    epm_buf_free(b);
    conn_close(c, "out of memory queueing a response");
    return;
  }
  o->b = *b;
  memset(b, 0, sizeof *b);
  if (c->out_tail) c->out_tail->next = o;
  else c->out_head = o;
  c->out_tail = o;
  c->out_bytes += o->b.len;
  c->out_frames++;
  if (flush_out(c) < 0) {
    conn_close(c, "peer went away while we were writing");
    return;
  }
  after_flush(c, 0);
}

static void send_error(srv_conn_t *c, uint64_t rid, epm_status_t st, const char *msg) {
  epm_buf_t b = {0};
  srv_stats_error(&c->s->stats, st);
  epm_error_resp_t e = {(uint32_t)st, epm_str_of(msg, msg ? strlen(msg) : 0)};
  if (epm_error_resp_encode(&b, EPM_MSG_ERROR, rid, &e) == EPM_OK) send_buf(c, &b);
  else epm_buf_free(&b);
}

/* ---- request handlers ------------------------------------------------------------ */

static void handle_forward(srv_conn_t *c, const epm_frame_t *f) {
  srv_t *s = c->s;
  epm_fwd_req_t rq;
  srv_model_info_t info;
  size_t xb, lb;
  char why[256];
  srv_state_t st = srv_get_state(s, why, sizeof why);
  if (st != SRV_ST_READY) {
    char msg[320];
    snprintf(msg, sizeof msg, "rank %d is not ready (%s%s%s)", s->rank,
             st == SRV_ST_DRAINING ? "draining" : st == SRV_ST_FAILED ? "failed" : "starting", why[0] ? ": " : "", why);
    send_error(c, f->request_id, EPM_ERR_NOT_READY, msg);
    return;
  }
  if (epm_fwd_req_decode(f, &rq) != EPM_OK) {
    send_error(c, f->request_id, EPM_ERR_PROTOCOL, epm_last_error());
    return;
  }
  srv_get_info(s, &info);
  if (rq.hidden != info.hidden || rq.num_experts != info.num_experts) {
    snprintf(why, sizeof why, "FORWARD shape hidden=%lld experts=%lld does not match the model %s (hidden=%lld experts=%lld)",
             (long long)rq.hidden, (long long)rq.num_experts, info.model, (long long)info.hidden,
             (long long)info.num_experts);
    send_error(c, f->request_id, EPM_ERR_INVALID_ARG, why);
    return;
  }
  if (rq.m > s->cfg.max_tokens_per_rank) {
    snprintf(why, sizeof why, "FORWARD m=%lld tokens exceeds --max-tokens-per-rank %lld", (long long)rq.m,
             (long long)s->cfg.max_tokens_per_rank);
    send_error(c, f->request_id, EPM_ERR_INVALID_ARG, why);
    return;
  }
  if (c->inflight >= CONN_MAX_INFLIGHT) { /* reading pauses first; kept as a guard */
    snprintf(why, sizeof why, "%d FORWARDs already in flight on this connection (the most allowed)", c->inflight);
    send_error(c, f->request_id, EPM_ERR_OVERFLOW, why);
    return;
  }
  epm_fwd_data_bytes(rq.m, rq.hidden, rq.num_experts, &xb, &lb); /* checked by the decoder */
  srv_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    send_error(c, f->request_id, EPM_ERR_NOMEM, "no memory for a FORWARD request");
    return;
  }
  r->rid = f->request_id;
  r->layer = rq.layer;
  r->step_id = rq.step_id;
  r->m = rq.m;
  r->data_mode = rq.data_mode;
  r->flags = rq.flags;
  r->partial_dtype = rq.partial_dtype;
  r->t_recv_ns = epm_clock_ns();
  if (rq.data_mode == EPM_DATA_INLINE) {
    /* One aligned copy of x and logits: the frame buffer is reused for the
     * next frame while the step runs. */
    r->frame = malloc(xb + lb + 16);
    r->y = malloc(xb + 2);
    if (!r->frame || !r->y) {
      srv_req_free(r);
      send_error(c, f->request_id, EPM_ERR_NOMEM, "no memory for FORWARD data");
      return;
    }
    if (xb) memcpy(r->frame, rq.x, xb);
    if (lb) memcpy(r->frame + xb, rq.logits, lb);
    r->x = (const uint16_t *)r->frame;
    r->logits = (const float *)(r->frame + xb); /* xb = m*H*2 with H % 16 == 0 or m == 0 */
    if (xb % 4) {
      memmove(r->frame + xb + 2, r->frame + xb, lb);
      r->logits = (const float *)(r->frame + xb + 2);
    }
  } else {
    const char *bad = NULL;
    int dev = rq.data_mode == EPM_DATA_DEVICE;
    size_t region = dev ? (c->dev ? epm_devmem_size(c->dev) : 0) : c->shm_size;
    if (dev ? !c->dev : !c->shm)
      bad = dev ? "FORWARD in device mode but no DEV_ATTACH on this connection"
                : "FORWARD in shm mode but no SHM_ATTACH on this connection";
    else if (rq.x_offset + xb > region || rq.logits_offset + lb > region || rq.y_offset + xb > region)
      bad = "FORWARD offsets plus sizes exceed the attached region";
    else if (rq.x_offset % 2 || rq.y_offset % 2 || rq.logits_offset % 4)
      bad = "FORWARD shm offsets are misaligned (x and y need 2, logits 4)";
    if (bad) {
      snprintf(why, sizeof why, "%s (x=%llu logits=%llu y=%llu, %zu+%zu bytes, region %zu bytes)", bad,
               (unsigned long long)rq.x_offset, (unsigned long long)rq.logits_offset,
               (unsigned long long)rq.y_offset, xb, lb, region);
      free(r);
      send_error(c, f->request_id, EPM_ERR_INVALID_ARG, why);
      return;
    }
    if (dev) {
      r->dev = c->dev;
      r->x_off = rq.x_offset;
      r->logits_off = rq.logits_offset;
      r->y_off = rq.y_offset;
    } else {
      r->x = (const uint16_t *)(c->shm + rq.x_offset);
      r->logits = (const float *)(c->shm + rq.logits_offset);
      r->y = (uint16_t *)(c->shm + rq.y_offset);
    }
    pthread_mutex_lock(&s->stats.mu);
    s->stats.bytes_shm += xb + lb + xb;
    pthread_mutex_unlock(&s->stats.mu);
  }
  r->conn = c;
  c->refs++;
  c->inflight++;
  track(c, r);
  pthread_mutex_lock(&s->stats.mu);
  s->stats.forwards_total++;
  pthread_mutex_unlock(&s->stats.mu);
  EPM_LOG(EPM_LOG_DEBUG, "net", "FORWARD layer %u step %llu m=%lld from connection %llu", r->layer,
          (unsigned long long)r->step_id, (long long)r->m, (unsigned long long)c->id);
  srv_worker_submit(s, r);
}

void srv_net_deliver(srv_t *s, srv_req_t *r) {
  srv_conn_t *c = r->conn;
  double wait = r->t_go_ns ? (double)(r->t_go_ns - r->t_recv_ns) * 1e-9 : 0;
  double step = r->t_go_ns ? (double)(r->t_done_ns - r->t_go_ns) * 1e-9 : 0;
  srv_hist_add(&s->stats, SRV_H_REQUEST, (double)(r->t_done_ns - r->t_recv_ns) * 1e-9);
  if (r->st == EPM_OK) {
    srv_hist_add(&s->stats, SRV_H_WAIT, wait);
    srv_hist_add(&s->stats, SRV_H_STEP, step);
    pthread_mutex_lock(&s->stats.mu);
    s->stats.steps_total++;
    s->stats.tokens_total += (uint64_t)r->m;
    s->stats.last_step_tokens = r->m;
    pthread_mutex_unlock(&s->stats.mu);
  } else {
    pthread_mutex_lock(&s->stats.mu);
    s->stats.steps_failed++;
    pthread_mutex_unlock(&s->stats.mu);
    EPM_LOG(EPM_LOG_WARN, "step", "FORWARD layer %u step %llu failed: %s", r->layer,
            (unsigned long long)r->step_id, r->err);
  }
  if (c) {
    int was = backpressured(c);
    c->inflight--;
    untrack(c, r);
    if (conn_gone(c)) {
      EPM_LOG(EPM_LOG_INFO, "net", "result of step %llu dropped: client of connection %llu left",
              (unsigned long long)r->step_id, (unsigned long long)c->id);
    } else if (r->st != EPM_OK) {
      send_error(c, r->rid, r->st, r->err);
    } else {
      epm_buf_t b = {0};
      epm_fwd_resp_t rs = {r->step_id, r->m, 0, r->data_mode, r->t_done_ns - r->t_go_ns, r->y};
      srv_model_info_t info;
      srv_get_info(s, &info);
      rs.hidden = info.hidden;
      if (epm_fwd_resp_encode(&b, EPM_MSG_FORWARD, r->rid, &rs) == EPM_OK) send_buf(c, &b);
      else {
        epm_buf_free(&b);
        send_error(c, r->rid, EPM_ERR_NOMEM, epm_last_error());
      }
    }
    if (!conn_gone(c)) after_flush(c, was);
    conn_unref(c);
  }
  srv_req_free(r);
}

static void handle_shm_attach(srv_conn_t *c, const epm_frame_t *f) {
  epm_shm_attach_t a;
  struct stat sb;
  char msg[256];
  int fd = c->pending_fd;
  c->pending_fd = -1;
  if (epm_shm_attach_decode(f, &a) != EPM_OK) {
    if (fd >= 0) close(fd);
    send_error(c, f->request_id, EPM_ERR_PROTOCOL, epm_last_error());
    return;
  }
  if (fd < 0) {
    send_error(c, f->request_id, EPM_ERR_PROTOCOL, "SHM_ATTACH arrived without a file descriptor (SCM_RIGHTS)");
    return;
  }
  if (c->inflight) {
    close(fd);
    send_error(c, f->request_id, EPM_ERR_INVALID_ARG, "SHM_ATTACH while a FORWARD on this connection is in flight");
    return;
  }
  /* A region that can shrink under us would SIGBUS the worker: insist on seals. */
  int seals = fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || seals < 0 || !(seals & F_SEAL_SHRINK) ||
      (uint64_t)sb.st_size < a.size || a.size > SIZE_MAX) {
    snprintf(msg, sizeof msg,
             "SHM_ATTACH needs a memfd of at least %llu bytes sealed with F_SEAL_SHRINK (got size %lld, seals 0x%x)",
             (unsigned long long)a.size, (long long)sb.st_size, seals < 0 ? 0 : seals);
    close(fd);
    send_error(c, f->request_id, EPM_ERR_INVALID_ARG, msg);
    return;
  }
  void *p = mmap(NULL, (size_t)a.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    snprintf(msg, sizeof msg, "mmap of the %llu-byte region failed: %s", (unsigned long long)a.size, strerror(errno));
    send_error(c, f->request_id, EPM_ERR_SYSTEM, msg);
    return;
  }
  if (c->shm) munmap(c->shm, c->shm_size);
  c->shm = p;
  c->shm_size = (size_t)a.size;
  EPM_LOG(EPM_LOG_INFO, "net", "connection %llu attached a %llu-byte shared region", (unsigned long long)c->id,
          (unsigned long long)a.size);
  epm_buf_t b = {0};
  epm_empty_resp_encode(&b, EPM_MSG_SHM_ATTACH, f->request_id, NULL);
  send_buf(c, &b);
}

static void handle_dev_attach(srv_conn_t *c, const epm_frame_t *f) {
  epm_dev_attach_t a;
  epm_devmem_t *m = NULL;
  int fd = c->pending_fd;
  c->pending_fd = -1;
  int bad = epm_dev_attach_decode(f, &a) != EPM_OK;
  if (bad || (a.kind == EPM_DEV_ATTACH_FD && fd < 0)) {
    if (fd >= 0) close(fd);
    send_error(c, f->request_id, EPM_ERR_PROTOCOL, bad ? epm_last_error() : "DEV_ATTACH arrived without a file descriptor");
    return;
  }
  if (c->inflight || a.size > SIZE_MAX) {
    if (fd >= 0) close(fd);
    send_error(c, f->request_id, EPM_ERR_INVALID_ARG, "DEV_ATTACH while a FORWARD on this connection is in flight");
    return;
  }
  /* FD: import the cuMemCreate allocation; IPC (legacy fallback): open the
   * peer's cudaMalloc allocation, checking its claimed size against the
   * driver's view of the allocation. */
  epm_status_t st = a.kind == EPM_DEV_ATTACH_IPC
                        ? epm_devmem_open_ipc(a.ipc_handle, (size_t)a.size, (int)a.device, &m)
                        : epm_devmem_import(fd, (size_t)a.size, (int)a.device, &m);
  if (fd >= 0) close(fd);
  if (st != EPM_OK) {
    send_error(c, f->request_id, st, epm_last_error());
    return;
  }
  epm_devmem_free(c->dev);
  c->dev = m;
  EPM_LOG(EPM_LOG_INFO, "net", "connection %llu attached a %llu-byte device region on GPU %u (%s)",
          (unsigned long long)c->id, (unsigned long long)a.size, a.device,
          a.kind == EPM_DEV_ATTACH_IPC ? "CUDA IPC handle" : "cuMemCreate fd");
  epm_buf_t b = {0};
  epm_empty_resp_encode(&b, EPM_MSG_DEV_ATTACH, f->request_id, NULL);
  send_buf(c, &b);
}

/* What a reserved (over --max-connections) connection may ask. */
static int probe_may(uint16_t type) {
  return type == EPM_MSG_HEALTH || type == EPM_MSG_STATUS || type == EPM_MSG_STATS || type == EPM_MSG_HELLO;
}

static void handle_frame(srv_conn_t *c, const epm_frame_t *f) {
  srv_t *s = c->s;
  epm_buf_t b = {0};
  char reason[256];
  pthread_mutex_lock(&s->stats.mu);
  s->stats.requests_total[f->type]++;
  pthread_mutex_unlock(&s->stats.mu);
  if (f->type != EPM_MSG_HELLO && f->type != EPM_MSG_HEALTH && f->type != EPM_MSG_STATUS && f->type != EPM_MSG_STATS)
    c->worked = 1;
  if (f->flags & EPM_FRAME_F_RESPONSE) {
    send_error(c, f->request_id, EPM_ERR_PROTOCOL, "clients send requests; this frame has the RESPONSE flag");
    return;
  }
  int takes_fd =
      f->type == EPM_MSG_SHM_ATTACH || f->type == EPM_MSG_DEV_ATTACH || f->type == EPM_MSG_DOORBELL_ATTACH;
  if ((f->flags & EPM_FRAME_F_HAS_FD) && !takes_fd) {
    send_error(c, f->request_id, EPM_ERR_PROTOCOL,
               "only SHM_ATTACH, DEV_ATTACH and DOORBELL_ATTACH may carry a file descriptor");
    return;
  }
  if (c->pending_fd >= 0 && !takes_fd) {
    close(c->pending_fd);
    c->pending_fd = -1;
    send_error(c, f->request_id, EPM_ERR_PROTOCOL, "a file descriptor arrived with a frame that takes none");
    return;
  }
  if (c->probe && !probe_may(f->type)) {
    snprintf(reason, sizeof reason, "too many connections (--max-connections %lld): a connection past the limit may "
             "only ask HEALTH, STATUS, STATS or HELLO", (long long)s->cfg.max_connections);
    c->closing = 1;
    send_error(c, f->request_id, EPM_ERR_OVERFLOW, reason);
    return;
  }
  switch (f->type) {
    case EPM_MSG_HELLO: {
      epm_hello_req_t rq;
      srv_model_info_t info;
      uint16_t v;
      if (epm_hello_req_decode(f, &rq) != EPM_OK || epm_proto_negotiate(rq.min_version, rq.max_version, &v) != EPM_OK) {
        send_error(c, f->request_id, EPM_ERR_PROTOCOL, epm_last_error());
        return;
      }
      if (!srv_get_info(s, &info)) {
        srv_get_state(s, reason, sizeof reason);
        send_error(c, f->request_id, EPM_ERR_NOT_READY, reason[0] ? reason : "model not loaded yet");
        return;
      }
      epm_hello_resp_t rs = {v, (uint32_t)s->rank, (uint32_t)s->size, info.hidden, info.num_experts, info.top_k,
                             s->cfg.max_tokens_per_rank, (uint64_t)s->cfg.max_frame,
                             {EPMOE_VERSION_STRING, (uint32_t)strlen(EPMOE_VERSION_STRING)},
                             {info.model, (uint32_t)strlen(info.model)},
                             {info.backend, (uint32_t)strlen(info.backend)}};
      epm_hello_resp_encode(&b, EPM_MSG_HELLO, f->request_id, &rs);
      break;
    }
    case EPM_MSG_STATUS:
    case EPM_MSG_STATS: {
      epm_fmt_req_t rq;
      epm_buf_t text = {0};
      if (epm_fmt_req_decode(f, &rq) != EPM_OK) {
        send_error(c, f->request_id, EPM_ERR_PROTOCOL, epm_last_error());
        return;
      }
      if (f->type == EPM_MSG_STATUS) srv_render_status(s, &text, rq.format == EPM_FMT_JSON);
      else srv_render_stats(s, &text, (int)rq.format);
      epm_text_resp_t rs = {epm_str_of((const char *)text.data, text.len)};
      epm_text_resp_encode(&b, f->type, f->request_id, &rs);
      epm_buf_free(&text);
      break;
    }
    case EPM_MSG_HEALTH: {
      if (epm_empty_req_decode(f, NULL) != EPM_OK) {
        send_error(c, f->request_id, EPM_ERR_PROTOCOL, epm_last_error());
        return;
      }
      srv_state_t st = srv_get_state(s, reason, sizeof reason);
      epm_health_resp_t h;
      h.state = st == SRV_ST_READY ? EPM_HEALTH_OK : st == SRV_ST_FAILED ? EPM_HEALTH_FAILED : EPM_HEALTH_NOT_READY;
      if (st == SRV_ST_DRAINING && !reason[0]) snprintf(reason, sizeof reason, "draining");
      h.reason.ptr = reason;
      h.reason.len = (uint32_t)strlen(reason);
      epm_health_resp_encode(&b, EPM_MSG_HEALTH, f->request_id, &h);
      break;
    }
    case EPM_MSG_FORWARD:
      handle_forward(c, f);
      return;
    case EPM_MSG_SHM_ATTACH:
      handle_shm_attach(c, f);
      return;
    case EPM_MSG_DEV_ATTACH:
      handle_dev_attach(c, f);
      return;
    case EPM_MSG_DOORBELL_ATTACH: {
      char err[384];
      int fd = c->pending_fd;
      c->pending_fd = -1;
      epm_status_t st = srv_doorbell_attach(s, f, fd, c->id, &c->dev, &c->db, err, sizeof err);
      if (st != EPM_OK) {
        send_error(c, f->request_id, st, err);
        return;
      }
      epm_empty_resp_encode(&b, EPM_MSG_DOORBELL_ATTACH, f->request_id, NULL);
      break;
    }
    case EPM_MSG_SHUTDOWN:
      if (epm_empty_req_decode(f, NULL) != EPM_OK) { /* a malformed SHUTDOWN must not stop the group */
        send_error(c, f->request_id, EPM_ERR_PROTOCOL, epm_last_error());
        return;
      }
      EPM_LOG(EPM_LOG_INFO, "net", "SHUTDOWN requested by pid %d", (int)c->pid);
      epm_empty_resp_encode(&b, EPM_MSG_SHUTDOWN, f->request_id, NULL);
      send_buf(c, &b);
      srv_net_stop_accepting(s);
      srv_worker_request_shutdown(s, "SHUTDOWN request");
      return;
    default:
      send_error(c, f->request_id, EPM_ERR_PROTOCOL, "clients may not send this frame type");
      return;
  }
  send_buf(c, &b);
}

/* ---- reading ------------------------------------------------------------------------ */

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint64_t le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* A malformed header: one ERROR (request id 0), then close. A peer of
 * another protocol version gets the ERROR in its own version, so it can read
 * why (docs/PROTOCOL.md "Versions"). */
static void protocol_error(srv_conn_t *c, epm_status_t st, const uint8_t *p, size_t avail) {
  char msg[300];
  snprintf(msg, sizeof msg, "%s", epm_last_error());
  EPM_LOG(EPM_LOG_WARN, "net", "connection %llu: %s; closing", (unsigned long long)c->id, msg);
  c->closing = 1;
  const uint16_t pv = epm_frame_refused_version(p, avail);
  epm_buf_t b = {0};
  epm_error_resp_t e = {(uint32_t)st, epm_str_of(msg, strlen(msg))};
  srv_stats_error(&c->s->stats, st);
  if (epm_error_resp_encode(&b, EPM_MSG_ERROR, 0, &e) == EPM_OK) {
    if (pv) epm_frame_set_version(b.data, pv);
    send_buf(c, &b);
  } else {
    epm_buf_free(&b);
  }
}

/* A well-formed header announcing more than its type can carry: answer it
 * now and skip the payload as it arrives, never holding it. */
static void refuse_size(srv_conn_t *c, const uint8_t *h, uint64_t payload, uint64_t cap, size_t avail) {
  char msg[300];
  const uint16_t type = le16(h + 6);
  snprintf(msg, sizeof msg, "%s request of %llu payload bytes refused: it carries at most %llu", epm_msg_type_name(type),
           (unsigned long long)payload, (unsigned long long)cap);
  pthread_mutex_lock(&c->s->stats.mu);
  c->s->stats.frames_refused++;
  pthread_mutex_unlock(&c->s->stats.mu);
  const size_t have = avail - EPM_FRAME_HEADER_SIZE;
  c->discard = payload - (have < payload ? have : payload);
  send_error(c, le64(h + 16), EPM_ERR_PROTOCOL, msg);
}

/* Decode and handle every complete frame in the buffer, until the
 * connection is paused by its limits or goes away. */
static void process_frames(srv_conn_t *c) {
  srv_t *s = c->s;
  epm_proto_limits_t lim = {(uint64_t)s->cfg.max_frame};
  size_t off = 0;
  while (!conn_gone(c) && !c->closing && !backpressured(c) && c->rlen > off) {
    const uint8_t *p = c->rbuf + off;
    const size_t avail = c->rlen - off;
    epm_frame_t f;
    size_t used = 0;
    /* The header alone first (a bad magic shows in its first bytes). */
    epm_status_t st = epm_frame_decode(p, avail < EPM_FRAME_HEADER_SIZE ? avail : EPM_FRAME_HEADER_SIZE, &lim, &f,
                                       &used);
    if (st != EPM_OK && st != EPM_ERR_NOT_READY) {
      protocol_error(c, st, p, avail);
      return;
    }
    if (avail < EPM_FRAME_HEADER_SIZE) break;
    const uint64_t payload = used - EPM_FRAME_HEADER_SIZE;
    const uint64_t cap = epm_msg_max_payload(le16(p + 6), 0, lim.max_payload);
    if (payload > cap) {
      refuse_size(c, p, payload, cap, avail);
      off += avail < used ? avail : used;
      continue;
    }
    if (avail < used) {
      if (used > c->rcap) { /* grow to the announced (already limit-checked) size */
        uint8_t *q = realloc(c->rbuf, used);
        if (!q) {
          conn_close(c, "out of memory for a large frame");
          return;
        }
        c->rbuf = q;
        c->rcap = used;
      }
      break;
    }
    st = epm_frame_decode(p, avail, &lim, &f, &used);
    if (st != EPM_OK) {
      protocol_error(c, st, p, avail);
      return;
    }
    handle_frame(c, &f);
    off += used;
    c->t_active_ns = epm_clock_ns();
  }
  if (off && !conn_gone(c)) {
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
  }
}

static void take_fds(srv_conn_t *c, struct msghdr *mh) {
  for (struct cmsghdr *h = CMSG_FIRSTHDR(mh); h; h = CMSG_NXTHDR(mh, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    size_t nfd = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfd; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
      if (c->pending_fd < 0 && i == 0 && !c->discard) c->pending_fd = fd;
      else close(fd); /* one fd per frame; extras (and a refused frame's) are dropped */
    }
  }
}

static void on_readable(srv_conn_t *c) {
  srv_t *s = c->s;
  uint8_t scratch[65536];
  for (;;) {
    if (conn_gone(c) || c->closing || backpressured(c)) return;
    uint8_t *dst;
    size_t room;
    if (c->discard) { /* a refused frame's payload: read and drop */
      dst = scratch;
      room = c->discard < sizeof scratch ? (size_t)c->discard : sizeof scratch;
    } else {
      if (c->rcap - c->rlen < 65536 && c->rcap < (size_t)s->cfg.max_frame + EPM_FRAME_HEADER_SIZE) {
        size_t ncap = c->rcap ? c->rcap * 2 : 65536;
        uint8_t *p = realloc(c->rbuf, ncap);
        if (!p) {
          conn_close(c, "out of memory for the read buffer");
          return;
        }
        c->rbuf = p;
        c->rcap = ncap;
      }
      if (c->rlen == c->rcap) return; /* full: a frame must be decodable now */
      dst = c->rbuf + c->rlen;
      room = c->rcap - c->rlen;
    }
    struct iovec iov = {dst, room};
    union {
      struct cmsghdr h;
      char b[CMSG_SPACE(sizeof(int) * 4)];
    } cm;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof cm.b};
    ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      conn_close(c, strerror(errno));
      return;
    }
    take_fds(c, &mh);
    if (n == 0) {
      conn_close(c, "client closed the connection");
      return;
    }
    c->t_active_ns = epm_clock_ns();
    pthread_mutex_lock(&s->stats.mu);
    s->stats.bytes_in += (uint64_t)n;
    pthread_mutex_unlock(&s->stats.mu);
    if (dst == scratch) {
      c->discard -= (uint64_t)n;
      continue;
    }
    c->rlen += (size_t)n;
    process_frames(c);
  }
}

static void on_conn_event(uv_poll_t *h, int status, int events) {
  srv_conn_t *c = h->data;
  if (!c || c->handle_gone) return;
  if (status < 0) {
    conn_close(c, uv_strerror(status));
    return;
  }
  if (events & UV_WRITABLE) {
    int was = backpressured(c);
    if (flush_out(c) < 0) {
      conn_close(c, "peer went away while we were writing");
      return;
    }
    after_flush(c, was);
    if (conn_gone(c)) return;
  }
  if ((events & UV_READABLE) && !c->closing) on_readable(c);
  update_poll(c);
}

/* ---- deadlines --------------------------------------------------------------------- */

static void on_sweep(uv_timer_t *t) {
  srv_t *s = t->data;
  const uint64_t now = epm_clock_ns();
  const uint64_t idle_ns = (uint64_t)s->cfg.idle_timeout_s * 1000000000ull;
  char why[96];
  for (srv_conn_t *c = s->conns, *nx; c; c = nx) {
    nx = c->next;
    if (conn_gone(c)) continue;
    if (c->probe && now - c->t_open_ns > (uint64_t)PROBE_DEADLINE_MS * 1000000ull) {
      conn_close(c, "reserved connection past its deadline");
    } else if (!c->probe && idle_ns && !c->inflight && now - c->t_active_ns > idle_ns) {
      snprintf(why, sizeof why, "idle for %llds (--idle-timeout)", (long long)s->cfg.idle_timeout_s);
      pthread_mutex_lock(&s->stats.mu);
      s->stats.connections_idle_closed++;
      pthread_mutex_unlock(&s->stats.mu);
      conn_close(c, why);
    }
  }
}

/* ---- accepting ---------------------------------------------------------------------- */

static int peer_allowed(srv_t *s, const struct ucred *cr) {
  if (cr->uid == geteuid() || cr->uid == 0) return 1;
  return srv_sockdir_in_group(&s->sockdir, cr->uid, cr->gid, cr->pid);
}

static void on_accept(srv_listener_t *l, int fd) {
  srv_t *s = l->s;
  struct ucred cr = {0, (uid_t)-1, (gid_t)-1};
  socklen_t len = sizeof cr;
  if (s->closing) {
    close(fd);
    return;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || !peer_allowed(s, &cr)) {
    EPM_LOG(EPM_LOG_WARN, "net", "refused a peer: pid %d uid %d gid %d is neither uid %d nor in the allowed group '%s'",
            (int)cr.pid, (int)cr.uid, (int)cr.gid, (int)geteuid(), s->cfg.allowed_group);
    pthread_mutex_lock(&s->stats.mu);
    s->stats.connections_refused++;
    pthread_mutex_unlock(&s->stats.mu);
    close(fd);
    return;
  }
  const int full = s->nconns >= s->cfg.max_connections;
  if (full && s->nprobes >= PROBE_SLOTS) {
    /* Past the limit and the reserved slots: one ERROR, best effort, and close. */
    char msg[160];
    epm_buf_t b = {0};
    snprintf(msg, sizeof msg, "too many connections (--max-connections %lld, and %d reserved for probes)",
             (long long)s->cfg.max_connections, PROBE_SLOTS);
    epm_error_resp_t e = {(uint32_t)EPM_ERR_OVERFLOW, epm_str_of(msg, strlen(msg))};
    if (epm_error_resp_encode(&b, EPM_MSG_ERROR, 0, &e) == EPM_OK)
      (void)!send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    epm_buf_free(&b);
    close(fd);
    pthread_mutex_lock(&s->stats.mu);
    s->stats.connections_refused++;
    pthread_mutex_unlock(&s->stats.mu);
    return;
  }
  srv_conn_t *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    return;
  }
  c->s = s;
  c->fd = fd;
  c->refs = 1;
  c->pending_fd = -1;
  c->probe = full;
  c->id = next_conn_id++;
  c->pid = cr.pid;
  c->uid = cr.uid;
  c->t_open_ns = c->t_active_ns = epm_clock_ns();
  uv_poll_init(s->loop, &c->poll, fd);
  c->poll.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  if (c->probe) s->nprobes++;
  else s->nconns++;
  pthread_mutex_lock(&s->stats.mu);
  s->stats.connections_total++;
  s->stats.connections_open++;
  pthread_mutex_unlock(&s->stats.mu);
  EPM_LOG(EPM_LOG_DEBUG, "net", "connection %llu from pid %d uid %d%s", (unsigned long long)c->id, (int)cr.pid,
          (int)cr.uid, c->probe ? " (reserved slot: probes only)" : "");
  update_poll(c);
}

/* ---- fail-stop ---------------------------------------------------------------------- */

void srv_net_fail_inflight(srv_t *s, epm_status_t st, const char *msg, unsigned budget_ms) {
  int n = 0;
  for (srv_conn_t *c = s->conns; c; c = c->next) {
    if (conn_gone(c)) continue;
    for (int i = 0; i < CONN_MAX_INFLIGHT; i++)
      if (c->reqs[i]) {
        send_error(c, c->reqs[i]->rid, st, msg);
        n++;
      }
  }
  /* The loop will not run again: push the answers out here, bounded. */
  const uint64_t until = epm_clock_ns() + (uint64_t)budget_ms * 1000000ull;
  for (;;) {
    struct pollfd pf[64];
    srv_conn_t *who[64];
    int k = 0;
    for (srv_conn_t *c = s->conns; c && k < 64; c = c->next)
      if (!conn_gone(c) && c->out_head) pf[k] = (struct pollfd){c->fd, POLLOUT, 0}, who[k++] = c;
    uint64_t now = epm_clock_ns();
    if (!k || now >= until) break;
    if (poll(pf, (nfds_t)k, (int)((until - now) / 1000000u) + 1) <= 0) break;
    for (int i = 0; i < k; i++)
      if (pf[i].revents && flush_out(who[i]) < 0) who[i]->out_head = NULL, who[i]->out_tail = NULL;
  }
  if (n) EPM_LOG(EPM_LOG_INFO, "net", "answered %d FORWARD%s in flight with the failure", n, n == 1 ? "" : "s");
}

/* ---- start and stop ----------------------------------------------------------------- */

epm_status_t srv_net_listen(srv_t *s) {
  int fd = -1;
  EPM_TRY(srv_sockdir_open(&s->sockdir, s->cfg.socket_dir, s->cfg.allowed_group, s->rank, &fd));
  epm_status_t st = srv_listener_start(s, &s->listener, fd, s->sockdir.path, on_accept);
  if (st != EPM_OK) {
    close(fd);
    srv_sockdir_remove(&s->sockdir);
    return st;
  }
  uv_timer_init(s->loop, &s->sweep);
  s->sweep.data = s;
  s->sweep_on = 1;
  uv_timer_start(&s->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  struct stat ds;
  stat(s->sockdir.dir, &ds);
  EPM_LOG(EPM_LOG_INFO, "net", "listening on %s (mode 0660%s, dir %04o)", s->sockdir.path,
          s->sockdir.have_group ? ", group --allowed-group" : "", (unsigned)(ds.st_mode & 07777));
  return EPM_OK;
}

void srv_net_stop_accepting(srv_t *s) {
  if (!s->listener.active || s->listener.closing) return;
  srv_listener_close(&s->listener);
  srv_sockdir_remove(&s->sockdir);
  EPM_LOG(EPM_LOG_INFO, "net", "stopped accepting; removed %s", s->sockdir.path);
}

void srv_net_close_all(srv_t *s) {
  srv_net_stop_accepting(s);
  if (s->sweep_on) {
    s->sweep_on = 0;
    uv_close((uv_handle_t *)&s->sweep, NULL);
  }
  for (srv_conn_t *c = s->conns, *nx; c; c = nx) {
    nx = c->next;
    flush_out(c);
    conn_close(c, "daemon exiting");
  }
}
