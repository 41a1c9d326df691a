/* srv_net.c — the Unix-socket side of epmoed, on the libuv loop.
 *
 * Security: the socket lives in a 0750 directory, is created 0660 (umask
 * around bind, never chmod-after), and every accepted peer is checked with
 * SO_PEERCRED: our uid, root, or the --allowed-group gid, else refused.
 * Connections use uv_poll_t with our own recvmsg/sendmsg rather than
 * uv_read_start, because SHM_ATTACH brings a memfd over SCM_RIGHTS and
 * libuv's stream IPC only accepts sockets as passed handles.
 *
 * Bounds: a frame's size is checked from its header before the read buffer
 * grows (--max-frame), connections are capped (--max-connections), and one
 * connection holds at most one fd in flight.
 * Lifetime: a connection is reference counted; each FORWARD handed to the
 * worker holds a reference (and so keeps the shm mapping alive), so a client
 * that disconnects mid-step is simply not answered.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "epmoe/clock.h"
#include "devmem.h"
#include "epmoe/log.h"
#include "srv.h"

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
  uint64_t id;
  pid_t pid;
  uid_t uid;
  uint8_t *rbuf;
  size_t rlen, rcap;
  outbuf_t *out_head, *out_tail;
  int pending_fd;
  int inflight;
  int worked;      /* sent more than probes (HELLO/HEALTH/STATUS/STATS): its close is worth an info line */
  uint8_t *shm;
  size_t shm_size;
  epm_devmem_t *dev; /* DEV_ATTACH region, mapped on dev_device */
  srv_doorbell_t *db; /* DOORBELL_ATTACH (srv_doorbell.c) */
};

static uint64_t next_conn_id = 1;

static void conn_unref(srv_conn_t *c) {
  if (--c->refs > 0) return;
  srv_t *s = c->s;
  if (c->prev) c->prev->next = c->next;
  else if (s->conns == c) s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
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
  pthread_mutex_lock(&c->s->stats.mu);
  c->s->stats.connections_open--;
  pthread_mutex_unlock(&c->s->stats.mu);
  conn_unref(c);
}

static void conn_close(srv_conn_t *c, const char *why) {
  if (c->handle_gone || uv_is_closing((uv_handle_t *)&c->poll)) return;
  /* Kubernetes and systemd probe every few seconds on every rank: their
   * connections log at debug, like their accept. */
  EPM_LOG(c->worked ? EPM_LOG_INFO : EPM_LOG_DEBUG, "net", "connection %llu (pid %d) closed: %s",
          (unsigned long long)c->id, (int)c->pid, why);
  c->closing = 1;
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, on_poll_closed);
}

static void on_conn_event(uv_poll_t *h, int status, int events);

static void update_poll(srv_conn_t *c) {
  if (c->handle_gone || uv_is_closing((uv_handle_t *)&c->poll)) return;
  int ev = (c->closing ? 0 : UV_READABLE) | (c->out_head ? UV_WRITABLE : 0);
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
    o->off += (size_t)n;
    if (o->off == o->b.len) {
      c->out_head = o->next;
      if (!c->out_head) c->out_tail = NULL;
      epm_buf_free(&o->b);
      free(o);
    }
  }
  return 0;
}

/* Queue an encoded frame (takes ownership of b's memory) and try to send it. */
static void send_buf(srv_conn_t *c, epm_buf_t *b) {
  outbuf_t *o;
  if (c->handle_gone || uv_is_closing((uv_handle_t *)&c->poll)) {
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
  if (flush_out(c) < 0) {
    conn_close(c, "peer went away while we were writing");
    return;
  }
  if (c->closing && !c->out_head) {
    c->closing = 0; /* let conn_close run its course */
    conn_close(c, "response sent after a protocol error");
    return;
  }
  update_poll(c);
}

static void send_error(srv_conn_t *c, uint64_t rid, epm_status_t st, const char *msg) {
  epm_buf_t b = {0};
  srv_stats_error(&c->s->stats, st);
  epm_error_resp_t e = {(uint32_t)st, epm_str_of(msg, msg ? strlen(msg) : 0)};
  if (epm_error_resp_encode(&b, EPM_MSG_ERROR, rid, &e) == EPM_OK) send_buf(c, &b);
  else epm_buf_free(&b);
}

/* ---- request handlers ------------------------------------------------------ */

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
    c->inflight--;
    if (c->handle_gone || uv_is_closing((uv_handle_t *)&c->poll)) {
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

/* ---- reading ---------------------------------------------------------------- */

static void on_readable(srv_conn_t *c) {
  srv_t *s = c->s;
  epm_proto_limits_t lim = {(uint64_t)s->cfg.max_frame};
  for (;;) {
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
    if (c->rlen == c->rcap) break; /* full: a frame must be decodable now */
    struct iovec iov = {c->rbuf + c->rlen, c->rcap - c->rlen};
    union {
      struct cmsghdr h;
      char b[CMSG_SPACE(sizeof(int) * 4)];
    } cm;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof cm.b};
    ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      conn_close(c, strerror(errno));
      return;
    }
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
      if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
      size_t nfd = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < nfd; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
        if (c->pending_fd < 0 && i == 0) c->pending_fd = fd;
        else close(fd); /* one fd per frame; extras are dropped */
      }
    }
    if (n == 0) {
      conn_close(c, "client closed the connection");
      return;
    }
    c->rlen += (size_t)n;
    pthread_mutex_lock(&s->stats.mu);
    s->stats.bytes_in += (uint64_t)n;
    pthread_mutex_unlock(&s->stats.mu);
    /* Decode every complete frame in the buffer. */
    size_t off = 0;
    for (;;) {
      epm_frame_t f;
      size_t used = 0;
      epm_status_t st = epm_frame_decode(c->rbuf + off, c->rlen - off, &lim, &f, &used);
      if (st == EPM_ERR_NOT_READY) {
        if (used > c->rcap) { /* grow to the announced (already limit-checked) size */
          uint8_t *p = realloc(c->rbuf, used);
          if (!p) {
            conn_close(c, "out of memory for a large frame");
            return;
          }
          c->rbuf = p;
          c->rcap = used;
        }
        break;
      }
      if (st != EPM_OK) {
        char msg[300];
        snprintf(msg, sizeof msg, "%s", epm_last_error());
        EPM_LOG(EPM_LOG_WARN, "net", "connection %llu: %s; closing", (unsigned long long)c->id, msg);
        c->closing = 1;
        /* A peer of another protocol version gets the ERROR in its own
         * version, so it can read why (docs/PROTOCOL.md "Versions"). */
        uint16_t pv = epm_frame_refused_version(c->rbuf + off, c->rlen - off);
        epm_buf_t eb = {0};
        epm_error_resp_t e = {(uint32_t)st, epm_str_of(msg, strlen(msg))};
        srv_stats_error(&s->stats, st);
        if (epm_error_resp_encode(&eb, EPM_MSG_ERROR, 0, &e) == EPM_OK) {
          if (pv) epm_frame_set_version(eb.data, pv);
          send_buf(c, &eb);
        }
        epm_buf_free(&eb);
        if (c->closing && !c->out_head) {
          c->closing = 0;
          conn_close(c, "protocol error");
        }
        return;
      }
      handle_frame(c, &f);
      off += used;
      if (c->handle_gone || uv_is_closing((uv_handle_t *)&c->poll)) return;
    }
    if (off) {
      memmove(c->rbuf, c->rbuf + off, c->rlen - off);
      c->rlen -= off;
    }
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
    if (flush_out(c) < 0) {
      conn_close(c, "peer went away while we were writing");
      return;
    }
    if (c->closing && !c->out_head) {
      c->closing = 0;
      conn_close(c, "response sent after a protocol error");
      return;
    }
  }
  if ((events & UV_READABLE) && !c->closing) on_readable(c);
  update_poll(c);
}

/* ---- accepting -------------------------------------------------------------- */

static int peer_allowed(srv_t *s, const struct ucred *cr) {
  if (cr->uid == geteuid() || cr->uid == 0) return 1;
  if (s->cfg.allowed_group[0]) {
    char *end;
    long g = strtol(s->cfg.allowed_group, &end, 10);
    gid_t gid;
    if (*end == '\0') gid = (gid_t)g;
    else {
      struct group *gr = getgrnam(s->cfg.allowed_group);
      if (!gr) return 0;
      gid = gr->gr_gid;
    }
    if (cr->gid == gid) return 1;
  }
  return 0;
}

static void on_listen(uv_poll_t *h, int status, int events) {
  srv_t *s = h->data;
  (void)events;
  if (status < 0 || s->closing) return;
  for (;;) {
    int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        EPM_LOG(EPM_LOG_WARN, "net", "accept: %s", strerror(errno));
      return;
    }
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || !peer_allowed(s, &cr)) {
      EPM_LOG(EPM_LOG_WARN, "net", "refused a peer: pid %d uid %d gid %d is neither uid %d nor in the allowed group '%s'",
              (int)cr.pid, (int)cr.uid, (int)cr.gid, (int)geteuid(), s->cfg.allowed_group);
      pthread_mutex_lock(&s->stats.mu);
      s->stats.connections_refused++;
      pthread_mutex_unlock(&s->stats.mu);
      close(fd);
      continue;
    }
    srv_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
      close(fd);
      continue;
    }
    c->s = s;
    c->fd = fd;
    c->refs = 1;
    c->pending_fd = -1;
    c->id = next_conn_id++;
    c->pid = cr.pid;
    c->uid = cr.uid;
    uv_poll_init(s->loop, &c->poll, fd);
    c->poll.data = c;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    pthread_mutex_lock(&s->stats.mu);
    s->stats.connections_total++;
    s->stats.connections_open++;
    pthread_mutex_unlock(&s->stats.mu);
    if (s->nconns > s->cfg.max_connections) {
      char msg[128];
      snprintf(msg, sizeof msg, "too many connections (--max-connections %lld)", (long long)s->cfg.max_connections);
      c->closing = 1;
      send_error(c, 0, EPM_ERR_OVERFLOW, msg);
      if (c->closing && !c->out_head) {
        c->closing = 0;
        conn_close(c, msg);
      }
      continue;
    }
    EPM_LOG(EPM_LOG_DEBUG, "net", "connection %llu from pid %d uid %d", (unsigned long long)c->id, (int)cr.pid,
            (int)cr.uid);
    update_poll(c);
  }
}

/* Is something answering on path? 1 yes, 0 no (stale or absent). */
static int someone_answers(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
  if (fd < 0) return 0;
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

epm_status_t srv_net_listen(srv_t *s) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  struct stat sb;
  const char *dir = s->cfg.socket_dir;
  int n = snprintf(s->sock_path, sizeof s->sock_path, "%s/epmoe.%d.sock", dir, s->rank);
  if (n < 0 || (size_t)n >= sizeof a.sun_path)
    return epm_error(EPM_ERR_INVALID_ARG, "socket path '%s/epmoe.%d.sock' is %d bytes; Unix sockets allow %zu",
                     dir, s->rank, n, sizeof a.sun_path - 1);
  if (mkdir(dir, 0750) == 0) {
    chmod(dir, 0750); /* mkdir honours the umask; the mode is part of the contract */
  } else if (errno != EEXIST) {
    return epm_error(EPM_ERR_SYSTEM, "cannot create socket dir %s: %s", dir, strerror(errno));
  }
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s is not a directory", dir);
  if (sb.st_uid == geteuid() && (sb.st_mode & 07777) != 0750 && chmod(dir, 0750) != 0)
    EPM_LOG(EPM_LOG_WARN, "net", "cannot set mode 0750 on %s: %s", dir, strerror(errno));
  if (sb.st_mode & S_IWOTH)
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s is world-writable (mode %04o); refusing", dir, sb.st_mode & 07777);
  if (lstat(s->sock_path, &sb) == 0) {
    if (!S_ISSOCK(sb.st_mode))
      return epm_error(EPM_ERR_SYSTEM, "%s exists and is not a socket; refusing to replace it", s->sock_path);
    if (someone_answers(s->sock_path))
      return epm_error(EPM_ERR_SYSTEM, "another daemon answers on %s; refusing to start", s->sock_path);
    EPM_LOG(EPM_LOG_INFO, "net", "removing stale socket %s", s->sock_path);
    unlink(s->sock_path);
  }
  s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->listen_fd < 0) return epm_error(EPM_ERR_SYSTEM, "socket: %s", strerror(errno));
  memcpy(a.sun_path, s->sock_path, (size_t)n + 1);
  mode_t old = umask(0117); /* socket created 0660 atomically */
  int rc = bind(s->listen_fd, (struct sockaddr *)&a, sizeof a);
  umask(old);
  if (rc != 0 || listen(s->listen_fd, 128) != 0) {
    epm_status_t st = epm_error(EPM_ERR_SYSTEM, "bind/listen %s: %s", s->sock_path, strerror(errno));
    close(s->listen_fd);
    s->listen_fd = -1;
    return st;
  }
  uv_poll_init(s->loop, &s->listen_poll, s->listen_fd);
  s->listen_poll.data = s;
  uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
  EPM_LOG(EPM_LOG_INFO, "net", "listening on %s (mode 0660, dir 0750)", s->sock_path);
  return EPM_OK;
}

static void on_listen_closed(uv_handle_t *h) {
  srv_t *s = h->data;
  close(s->listen_fd);
  s->listen_fd = -1;
}

void srv_net_stop_accepting(srv_t *s) {
  if (s->listen_fd < 0 || uv_is_closing((uv_handle_t *)&s->listen_poll)) return;
  uv_poll_stop(&s->listen_poll);
  uv_close((uv_handle_t *)&s->listen_poll, on_listen_closed);
  unlink(s->sock_path);
  EPM_LOG(EPM_LOG_INFO, "net", "stopped accepting; removed %s", s->sock_path);
}

void srv_net_close_all(srv_t *s) {
  srv_net_stop_accepting(s);
  for (srv_conn_t *c = s->conns, *nx; c; c = nx) {
    nx = c->next;
    flush_out(c);
    conn_close(c, "daemon exiting");
  }
}
