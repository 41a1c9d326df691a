/* SPDX-License-Identifier: Apache-2.0 */
/* srv_doorbell.c — the daemon side of the doorbell (docs/PROTOCOL.md
 * "Doorbell"): steps asked for through a page of shared memory instead of
 * FORWARD frames.
 *
 * Each doorbell has one thread. In host mode it sleeps on the futex of the
 * control block's seq word; in device mode (the client's GPU stream writes
 * the words, which wakes no futex) it polls the ring word, spinning briefly
 * after a step and backing off to 1 ms when idle. Either way it turns the
 * request into an srv_req_t and hands it to the worker queue, so a doorbell
 * step obeys exactly the FORWARD rules: the same rendezvous, the same order,
 * --step-timeout and the watchdog. The worker answers it (on_done, on the
 * worker thread: no hop through the loop) by writing the control block and
 * waking the client.
 *
 * Lifetime: the doorbell is reference counted: one reference for the
 * connection (dropped by srv_doorbell_close when it closes, after the thread
 * is joined) and one per step in flight, so a client that dies mid-step
 * leaves a step that still runs for the other ranks and whose answer lands
 * in a mapping nobody reads any more. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "devmem.h"
#include "doorbell_gpu.h"
#include "epmoe/clock.h"
#include "epmoe/doorbell.h"
#include "epmoe/log.h"
#include "futex.h"
#include "srv.h"

struct srv_doorbell {
  srv_t *s;
  int refs; /* atomic */
  int stop; /* atomic: the connection closed */
  uint64_t conn_id;
  uint32_t mode;
  uint8_t *map;
  size_t size;
  epm_db_ctl_t *ctl;
  int64_t capacity, hidden, num_experts;
  uint64_t x_off, logits_off, y_off, step_base;
  epm_devmem_t *dev; /* device mode: the connection's region, now ours */
  epm_dbgpu_t *gpu;  /* device mode: the control page registered for our stream */
  pthread_t thread;
  uint64_t last;        /* the last sequence number taken (the thread's own) */
  uint64_t answered_ns; /* atomic: when the last answer was published */
};

/* After an answer the host thread yield-polls this long before it sleeps on
 * the futex: a client stepping in a loop rings again within microseconds,
 * and catching that ring awake saves a futex wake-up on every step. */
#define DB_SPIN_NS 300000u

static void db_unref(srv_doorbell_t *db) {
  if (__atomic_sub_fetch(&db->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
  epm_dbgpu_free(db->gpu);
  epm_devmem_free(db->dev);
  if (db->map) munmap(db->map, db->size);
  free(db);
}

/* Publish the answer to seq: status and message first, then done_seq (a
 * release store) and the wake; in device mode the ack the client's stream
 * waits for. When `stream` is given (a device-mode step that ran), done_seq
 * and ack are written by the daemon's stream, after the step's work. */
static void publish(srv_doorbell_t *db, uint64_t seq, epm_status_t st, const char *msg, uint64_t step_ns,
                    void *stream) {
  epm_db_ctl_t *ctl = db->ctl;
  if (st != EPM_OK) snprintf(ctl->error, sizeof ctl->error, "%s", msg ? msg : epm_status_name(st));
  else ctl->error[0] = '\0';
  ctl->step_ns = step_ns;
  ctl->step_id = db->step_base + seq;
  __atomic_store_n(&ctl->status, (uint32_t)st, __ATOMIC_RELAXED);
  __atomic_store_n(&db->answered_ns, epm_clock_ns(), __ATOMIC_RELEASE);
  if (stream && db->gpu && epm_dbgpu_answer(db->gpu, stream, seq) == EPM_OK) return;
  __atomic_store_n(&ctl->done_seq, seq, __ATOMIC_RELEASE);
  if (db->mode == EPM_DB_MODE_DEVICE) __atomic_store_n(&ctl->ack, 1u, __ATOMIC_RELEASE);
  epm__futex_wake(epm__futex_word(&ctl->done_seq));
  /* and our own thread, so it polls for the client's next ring (host mode) */
  if (db->mode == EPM_DB_MODE_HOST) epm__futex_wake(epm__futex_word(&ctl->seq));
}

/* A ring answered without a step (bad sequence, bad request, not ready). */
static void refuse(srv_doorbell_t *db, uint64_t seq, epm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse(srv_doorbell_t *db, uint64_t seq, epm_status_t st, const char *fmt, ...) {
  char msg[EPM_DB_ERROR_BYTES];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  srv_stats_error(&db->s->stats, st);
  EPM_LOG(EPM_LOG_WARN, "doorbell", "connection %llu, step %llu refused: %s", (unsigned long long)db->conn_id,
          (unsigned long long)seq, msg);
  publish(db, seq, st, msg, 0, NULL);
}

/* on_done of a doorbell step, on the worker thread; the counters as
 * srv_net_deliver keeps them for FORWARDs. */
static void step_done(srv_t *s, srv_req_t *r) {
  srv_doorbell_t *db = r->done_ctx;
  uint64_t step_ns = r->t_go_ns ? r->t_done_ns - r->t_go_ns : 0;
  srv_hist_add(&s->stats, SRV_H_REQUEST, (double)(r->t_done_ns - r->t_recv_ns) * 1e-9);
  if (r->st == EPM_OK) {
    srv_hist_add(&s->stats, SRV_H_WAIT, (double)(r->t_go_ns - r->t_recv_ns) * 1e-9);
    srv_hist_add(&s->stats, SRV_H_STEP, (double)step_ns * 1e-9);
    pthread_mutex_lock(&s->stats.mu);
    s->stats.steps_total++;
    s->stats.tokens_total += (uint64_t)r->m;
    s->stats.last_step_tokens = r->m;
    pthread_mutex_unlock(&s->stats.mu);
  } else {
    srv_stats_error(&s->stats, r->st);
    pthread_mutex_lock(&s->stats.mu);
    s->stats.steps_failed++;
    pthread_mutex_unlock(&s->stats.mu);
    EPM_LOG(EPM_LOG_WARN, "doorbell", "connection %llu, step %llu (layer %u, id %llu) failed: %s",
            (unsigned long long)db->conn_id, (unsigned long long)r->db_seq, r->layer, (unsigned long long)r->step_id,
            r->err);
  }
  publish(db, r->db_seq, r->st, r->err, step_ns,
          r->st == EPM_OK && r->data_mode == EPM_DATA_DEVICE ? srv_worker_stream(s) : NULL);
  srv_req_free(r);
  db_unref(db);
}

/* Take the request of sequence number seq: check it, queue it. */
static void take(srv_doorbell_t *db, uint64_t seq) {
  srv_t *s = db->s;
  epm_db_ctl_t *ctl = db->ctl;
  const uint64_t expected = db->last + 1, prev = db->last;
  char why[256];
  db->last = seq;
  const int64_t m = ctl->m;
  const uint32_t layer = ctl->layer, flags = ctl->flags, dtype = ctl->partial_dtype;
  if (seq != expected) {
    refuse(db, seq, EPM_ERR_INVALID_ARG,
           "doorbell sequence %llu is not the next one: expected %llu (the last one rung was %llu)",
           (unsigned long long)seq, (unsigned long long)expected, (unsigned long long)prev);
    return;
  }
  srv_state_t state = srv_get_state(s, why, sizeof why);
  if (state != SRV_ST_READY) {
    refuse(db, seq, EPM_ERR_NOT_READY, "rank %d is not ready (%s%s%s)", s->rank,
           state == SRV_ST_DRAINING ? "draining" : state == SRV_ST_FAILED ? "failed" : "starting", why[0] ? ": " : "",
           why);
    return;
  }
  if (m < 0 || m > db->capacity) {
    refuse(db, seq, EPM_ERR_INVALID_ARG, "doorbell step of m=%lld tokens is outside [0, %lld] (the attached capacity)",
           (long long)m, (long long)db->capacity);
    return;
  }
  if ((flags & ~EPM_FWD_F_KNOWN) || dtype >= EPM_DTYPE_COUNT) {
    refuse(db, seq, EPM_ERR_INVALID_ARG, "doorbell step flags 0x%x (known 0x%x) or partial dtype %u (0 f32, 1 bf16) unknown",
           flags, EPM_FWD_F_KNOWN, dtype);
    return;
  }
  srv_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    refuse(db, seq, EPM_ERR_NOMEM, "no memory for a doorbell step");
    return;
  }
  r->layer = layer;
  r->step_id = db->step_base + seq;
  r->m = m;
  r->flags = flags;
  r->partial_dtype = dtype;
  r->t_recv_ns = epm_clock_ns();
  r->on_done = step_done;
  r->done_ctx = db;
  r->db_seq = seq;
  if (db->mode == EPM_DB_MODE_DEVICE) {
    r->data_mode = EPM_DATA_DEVICE;
    r->dev = db->dev;
    r->x_off = db->x_off;
    r->logits_off = db->logits_off;
    r->y_off = db->y_off;
  } else {
    r->data_mode = EPM_DATA_SHM;
    r->x = (const uint16_t *)(db->map + db->x_off);
    r->logits = (const float *)(const void *)(db->map + db->logits_off);
    r->y = (uint16_t *)(db->map + db->y_off);
  }
  __atomic_add_fetch(&db->refs, 1, __ATOMIC_ACQ_REL);
  /* Counted like a FORWARD handed to the worker: in flight until step_done
   * adds its request time (forwards_in_flight = forwards - requests timed). */
  pthread_mutex_lock(&s->stats.mu);
  s->stats.forwards_total++;
  pthread_mutex_unlock(&s->stats.mu);
  srv_worker_submit(s, r);
}

static void *host_main(void *arg) {
  srv_doorbell_t *db = arg;
  epm_db_ctl_t *ctl = db->ctl;
  while (!__atomic_load_n(&db->stop, __ATOMIC_ACQUIRE)) {
    uint64_t seq = __atomic_load_n(&ctl->seq, __ATOMIC_ACQUIRE);
    if (seq == db->last) {
      if (epm_clock_ns() - __atomic_load_n(&db->answered_ns, __ATOMIC_ACQUIRE) < DB_SPIN_NS) {
        sched_yield();
        continue;
      }
      /* The wait re-checks the word in the kernel, so a ring between the
       * load above and the sleep is not lost; the timeout only bounds how
       * late a close is noticed. */
      epm__futex_wait(epm__futex_word(&ctl->seq), (uint32_t)db->last, 200000000);
      continue;
    }
    take(db, seq);
  }
  return NULL;
}

static void *device_main(void *arg) {
  srv_doorbell_t *db = arg;
  epm_db_ctl_t *ctl = db->ctl;
  uint64_t idle_since = epm_clock_ns();
  long nap_ns = 0;
  while (!__atomic_load_n(&db->stop, __ATOMIC_ACQUIRE)) {
    if (__atomic_load_n(&ctl->ring, __ATOMIC_ACQUIRE) == 0) {
      /* Spin (yielding) for 200 us after the last step, then nap, up to
       * 1 ms between looks when idle. */
      if (epm_clock_ns() - idle_since < 200000u) {
        sched_yield();
        continue;
      }
      nap_ns = nap_ns ? (nap_ns * 2 > 1000000 ? 1000000 : nap_ns * 2) : 20000;
      struct timespec d = {0, nap_ns};
      nanosleep(&d, NULL);
      continue;
    }
    __atomic_store_n(&ctl->ring, 0u, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* ring cleared before the answer can be seen */
    take(db, db->last + 1);
    idle_since = epm_clock_ns();
    nap_ns = 0;
  }
  return NULL;
}

static epm_status_t fail(char *err, size_t n, epm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static epm_status_t fail(char *err, size_t n, epm_status_t st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, n, fmt, ap);
  va_end(ap);
  return epm_error(st, "%s", err);
}

/* Offsets of x / logits / y for capacity tokens inside [lo, size). */
static int offsets_ok(const srv_doorbell_t *db, uint64_t lo, uint64_t size, size_t xb, size_t lb) {
  const uint64_t o[3] = {db->x_off, db->logits_off, db->y_off}, n[3] = {xb, lb, xb}, align[3] = {2, 4, 2};
  for (int i = 0; i < 3; i++)
    if (o[i] < lo || o[i] % align[i] || o[i] > size || n[i] > size - o[i]) return 0;
  return 1;
}

epm_status_t srv_doorbell_attach(srv_t *s, const epm_frame_t *f, int fd, uint64_t conn_id, epm_devmem_t **dev,
                                 srv_doorbell_t **out, char *err, size_t n) {
  epm_db_attach_t a;
  srv_model_info_t info;
  struct stat sb;
  size_t xb, lb;
  epm_status_t st;
  srv_doorbell_t *db = NULL;
  int seals;
  if (epm_db_attach_decode(f, &a) != EPM_OK) {
    st = fail(err, n, EPM_ERR_PROTOCOL, "%s", epm_last_error());
    goto out;
  }
  if (fd < 0) {
    st = fail(err, n, EPM_ERR_PROTOCOL, "DOORBELL_ATTACH arrived without a file descriptor (SCM_RIGHTS)");
    goto out;
  }
  if (*out) {
    st = fail(err, n, EPM_ERR_INVALID_ARG, "this connection already has a doorbell");
    goto out;
  }
  if (!srv_get_info(s, &info)) {
    st = fail(err, n, EPM_ERR_NOT_READY, "DOORBELL_ATTACH before the model is loaded");
    goto out;
  }
  if (a.capacity > s->cfg.max_tokens_per_rank) {
    st = fail(err, n, EPM_ERR_INVALID_ARG, "DOORBELL_ATTACH capacity %lld tokens exceeds --max-tokens-per-rank %lld",
              (long long)a.capacity, (long long)s->cfg.max_tokens_per_rank);
    goto out;
  }
  /* As SHM_ATTACH: a region that can shrink under us would SIGBUS the worker. */
  seals = fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || seals < 0 || !(seals & F_SEAL_SHRINK) ||
      (uint64_t)sb.st_size < a.size || a.size > SIZE_MAX) {
    st = fail(err, n, EPM_ERR_INVALID_ARG,
              "DOORBELL_ATTACH needs a memfd of at least %llu bytes sealed with F_SEAL_SHRINK (got size %lld, seals 0x%x)",
              (unsigned long long)a.size, (long long)sb.st_size, seals < 0 ? 0 : seals);
    goto out;
  }
  if (epm_fwd_data_bytes(a.capacity, info.hidden, info.num_experts, &xb, &lb) != EPM_OK) {
    st = fail(err, n, EPM_ERR_INVALID_ARG, "%s", epm_last_error());
    goto out;
  }
  db = calloc(1, sizeof *db);
  if (!db) {
    st = fail(err, n, EPM_ERR_NOMEM, "no memory for a doorbell");
    goto out;
  }
  db->s = s;
  db->refs = 1;
  db->conn_id = conn_id;
  db->mode = a.mode;
  db->capacity = a.capacity;
  db->hidden = info.hidden;
  db->num_experts = info.num_experts;
  db->x_off = a.x_offset;
  db->logits_off = a.logits_offset;
  db->y_off = a.y_offset;
  db->step_base = a.step_base;
  if (a.mode == EPM_DB_MODE_DEVICE) {
    if (!*dev) {
      st = fail(err, n, EPM_ERR_INVALID_ARG, "a device-mode DOORBELL_ATTACH needs the connection's DEV_ATTACH region first");
      goto out;
    }
    if (s->boot.gpu < 0) {
      st = fail(err, n, EPM_ERR_INVALID_ARG, "device-mode doorbell on rank %d, but this daemon runs the %s backend",
                s->rank, info.backend);
      goto out;
    }
    if (!offsets_ok(db, 0, epm_devmem_size(*dev), xb, lb)) {
      st = fail(err, n, EPM_ERR_INVALID_ARG,
                "DOORBELL_ATTACH offsets x=%llu logits=%llu y=%llu for %lld tokens (%zu+%zu+%zu bytes; x, y even, "
                "logits %% 4) do not fit the %zu-byte device region",
                (unsigned long long)a.x_offset, (unsigned long long)a.logits_offset, (unsigned long long)a.y_offset,
                (long long)a.capacity, xb, lb, xb, epm_devmem_size(*dev));
      goto out;
    }
  } else if (!offsets_ok(db, EPM_DB_CTL_BYTES, a.size, xb, lb)) {
    st = fail(err, n, EPM_ERR_INVALID_ARG,
              "DOORBELL_ATTACH offsets x=%llu logits=%llu y=%llu for %lld tokens (%zu+%zu+%zu bytes; x, y even, "
              "logits %% 4) do not fit the memfd between its %u-byte control block and %llu bytes",
              (unsigned long long)a.x_offset, (unsigned long long)a.logits_offset, (unsigned long long)a.y_offset,
              (long long)a.capacity, xb, lb, xb, EPM_DB_CTL_BYTES, (unsigned long long)a.size);
    goto out;
  }
  void *p = mmap(NULL, (size_t)a.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    st = fail(err, n, EPM_ERR_SYSTEM, "mmap of the %llu-byte doorbell region failed: %s", (unsigned long long)a.size,
              strerror(errno));
    goto out;
  }
  db->map = p;
  db->size = (size_t)a.size;
  db->ctl = p;
  if (db->ctl->magic != EPM_DB_MAGIC || db->ctl->layout != EPM_DB_LAYOUT) {
    st = fail(err, n, EPM_ERR_INVALID_ARG,
              "DOORBELL_ATTACH control block has magic 0x%08x layout %u (expected 0x%08x \"EPDB\", layout %u)",
              db->ctl->magic, db->ctl->layout, EPM_DB_MAGIC, EPM_DB_LAYOUT);
    goto out;
  }
  if (a.mode == EPM_DB_MODE_DEVICE && (st = epm_dbgpu_register(db->ctl, s->boot.gpu, &db->gpu)) != EPM_OK) {
    fail(err, n, st, "%s", epm_last_error());
    goto out;
  }
  /* Steps continue from whatever the client wrote before attaching (0). */
  db->last = __atomic_load_n(&db->ctl->seq, __ATOMIC_ACQUIRE);
  __atomic_store_n(&db->ctl->done_seq, db->last, __ATOMIC_RELEASE);
  int rc = pthread_create(&db->thread, NULL, a.mode == EPM_DB_MODE_DEVICE ? device_main : host_main, db);
  if (rc) {
    st = fail(err, n, EPM_ERR_SYSTEM, "pthread_create for the doorbell: %s", strerror(rc));
    goto out;
  }
  if (a.mode == EPM_DB_MODE_DEVICE) { /* the region is the doorbell's now */
    db->dev = *dev;
    *dev = NULL;
  }
  EPM_LOG(EPM_LOG_INFO, "doorbell", "connection %llu attached a %s doorbell: capacity %lld tokens, step ids from %llu",
          (unsigned long long)conn_id, a.mode == EPM_DB_MODE_DEVICE ? "device-mode" : "host-mode", (long long)a.capacity,
          (unsigned long long)a.step_base + db->last + 1);
  *out = db;
  db = NULL;
  st = EPM_OK;
out:
  if (fd >= 0) close(fd);
  if (db) db_unref(db);
  return st;
}

void srv_doorbell_close(srv_doorbell_t *db) {
  if (!db) return;
  __atomic_store_n(&db->stop, 1, __ATOMIC_RELEASE);
  epm__futex_wake(epm__futex_word(&db->ctl->seq)); /* a host-mode thread sleeps there */
  pthread_join(db->thread, NULL);
  EPM_LOG(EPM_LOG_INFO, "doorbell", "connection %llu: doorbell closed after step %llu", (unsigned long long)db->conn_id,
          (unsigned long long)db->last);
  db_unref(db);
}
