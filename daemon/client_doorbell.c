/* SPDX-License-Identifier: Apache-2.0 */
/* client_doorbell.c — the client side of the doorbell (epmoe/client.h,
 * docs/PROTOCOL.md "Doorbell"): one sealed memfd with the control block
 * (and, in host mode, x / logits / y), registered once with
 * DOORBELL_ATTACH; then a step is stores into that page and a futex wake
 * (host mode) or stream memory operations (device mode, doorbell_gpu.h).
 * A doorbell is used by one thread at a time. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client_impl.h"
#include "doorbell_gpu.h"
#include "epmoe/clock.h"
#include "futex.h"

struct epm_doorbell {
  epm_client_t *c;
  int device_mode;
  uint8_t *map; /* the memfd: control block first */
  size_t size;
  epm_db_ctl_t *ctl;
  int64_t capacity;
  uint64_t x_off, logits_off, y_off; /* into map (host) or the device region (device) */
  uint64_t dev_base;                 /* device mode: the region's device address */
  epm_dbgpu_t *gpu;                  /* device mode */
  uint64_t seq;                      /* host mode: the last sequence number rung */
};

void epm__doorbell_free(epm_doorbell_t *db) {
  if (!db) return;
  epm_dbgpu_free(db->gpu);
  if (db->map) munmap(db->map, db->size);
  free(db);
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* A sealed memfd of `bytes`, mapped here, its first page a fresh control
 * block. [out] *fd (caller closes it). */
static epm_status_t make_region(epm_doorbell_t *db, size_t bytes, int *fd) {
  *fd = memfd_create("epmoe-doorbell", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (*fd < 0) return epm_error(EPM_ERR_SYSTEM, "memfd_create: %s", strerror(errno));
  if (ftruncate(*fd, (off_t)bytes) != 0 || fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return epm_error(EPM_ERR_SYSTEM, "sizing/sealing a %zu-byte doorbell memfd: %s", bytes, strerror(errno));
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  if (p == MAP_FAILED) return epm_error(EPM_ERR_SYSTEM, "mmap of the %zu-byte doorbell memfd: %s", bytes, strerror(errno));
  db->map = p;
  db->size = bytes;
  db->ctl = p;
  db->ctl->magic = EPM_DB_MAGIC;
  db->ctl->layout = EPM_DB_LAYOUT;
  return EPM_OK;
}

/* Send DOORBELL_ATTACH with the memfd; on success the connection owns db. */
static epm_status_t attach(epm_client_t *c, epm_doorbell_t *db, int fd, uint32_t mode, uint64_t step_base) {
  epm_buf_t b = {0};
  uint8_t *raw = NULL;
  epm_frame_t f;
  epm_status_t st;
  epm_db_attach_t a = {.size = db->size, .mode = mode, .capacity = db->capacity, .x_offset = db->x_off,
                       .logits_offset = db->logits_off, .y_offset = db->y_off, .step_base = step_base};
  pthread_mutex_lock(&c->mu);
  uint64_t rid = c->next_rid++;
  if (c->db) {
    st = epm_error(EPM_ERR_INVALID_ARG, "the connection to %s already has a doorbell", c->path);
    goto out;
  }
  EPM_TRY_GOTO(epm_db_attach_encode(&b, EPM_MSG_DOORBELL_ATTACH, rid, &a), st, out);
  EPM_TRY_GOTO(epm__client_roundtrip(c, &b, NULL, 0, fd, rid, EPM_MSG_DOORBELL_ATTACH, 0, &raw, &f), st, out);
  EPM_TRY_GOTO(epm_empty_resp_decode(&f, NULL), st, out);
  db->c = c;
  c->db = db;
out:
  pthread_mutex_unlock(&c->mu);
  free(raw);
  epm_buf_free(&b);
  return st;
}

/* Byte sizes of x / logits for `capacity` tokens of the connection's model. */
static epm_status_t sizes(epm_client_t *c, int64_t capacity, size_t *xb, size_t *lb) {
  if (!c->have_info) return epm_error(EPM_ERR_INVALID_ARG, "doorbell before epm_client_hello on %s", c->path);
  if (capacity <= 0 || capacity > c->info.max_tokens_per_rank)
    return epm_error(EPM_ERR_INVALID_ARG, "doorbell capacity %lld tokens is outside [1, %lld] (--max-tokens-per-rank)",
                     (long long)capacity, (long long)c->info.max_tokens_per_rank);
  return epm_fwd_data_bytes(capacity, c->info.hidden, c->info.num_experts, xb, lb);
}

epm_status_t epm_client_doorbell_create(epm_client_t *c, int64_t capacity, uint64_t step_base,
                                        epm_doorbell_t **out) {
  size_t xb, lb;
  int fd = -1;
  epm_status_t st;
  EPM_TRY(sizes(c, capacity, &xb, &lb));
  epm_doorbell_t *db = calloc(1, sizeof *db);
  if (!db) return epm_error(EPM_ERR_NOMEM, "doorbell");
  db->capacity = capacity;
  db->x_off = EPM_DB_CTL_BYTES;
  db->logits_off = db->x_off + round_up(xb, 64);
  db->y_off = db->logits_off + round_up(lb, 64);
  EPM_TRY_GOTO(make_region(db, round_up((size_t)db->y_off + xb, 4096), &fd), st, fail);
  EPM_TRY_GOTO(attach(c, db, fd, EPM_DB_MODE_HOST, step_base), st, fail);
  close(fd);
  *out = db;
  return EPM_OK;
fail:
  if (fd >= 0) close(fd);
  epm__doorbell_free(db);
  return st;
}

epm_status_t epm_client_doorbell_create_dev(epm_client_t *c, int device, int64_t capacity, uint64_t step_base,
                                            epm_doorbell_t **out) {
  size_t xb, lb;
  int fd = -1;
  epm_status_t st;
  EPM_TRY(sizes(c, capacity, &xb, &lb));
  epm_doorbell_t *db = calloc(1, sizeof *db);
  if (!db) return epm_error(EPM_ERR_NOMEM, "doorbell");
  db->device_mode = 1;
  db->capacity = capacity;
  db->x_off = 0;
  db->logits_off = round_up(xb, 256);
  db->y_off = db->logits_off + round_up(lb, 256);
  EPM_TRY_GOTO(epm_client_devmem_create(c, (size_t)db->y_off + xb, device, &db->dev_base), st, fail);
  EPM_TRY_GOTO(make_region(db, EPM_DB_CTL_BYTES, &fd), st, fail);
  EPM_TRY_GOTO(epm_dbgpu_register(db->ctl, device, &db->gpu), st, fail);
  EPM_TRY_GOTO(attach(c, db, fd, EPM_DB_MODE_DEVICE, step_base), st, fail);
  close(fd);
  *out = db;
  return EPM_OK;
fail:
  if (fd >= 0) close(fd);
  epm__doorbell_free(db);
  return st;
}

epm_bf16_t *epm_doorbell_x(epm_doorbell_t *db) { return db->device_mode ? NULL : (epm_bf16_t *)(db->map + db->x_off); }
float *epm_doorbell_logits(epm_doorbell_t *db) {
  return db->device_mode ? NULL : (float *)(void *)(db->map + db->logits_off);
}
epm_bf16_t *epm_doorbell_y(epm_doorbell_t *db) { return db->device_mode ? NULL : (epm_bf16_t *)(db->map + db->y_off); }
int64_t epm_doorbell_capacity(const epm_doorbell_t *db) { return db->capacity; }
uint64_t epm_doorbell_dev_x(const epm_doorbell_t *db) { return db->device_mode ? db->dev_base + db->x_off : 0; }
uint64_t epm_doorbell_dev_logits(const epm_doorbell_t *db) {
  return db->device_mode ? db->dev_base + db->logits_off : 0;
}
uint64_t epm_doorbell_dev_y(const epm_doorbell_t *db) { return db->device_mode ? db->dev_base + db->y_off : 0; }

static epm_status_t check_request(const epm_doorbell_t *db, int64_t m, uint32_t flags, epm_dtype_t dt, int device) {
  if (db->device_mode != device)
    return epm_error(EPM_ERR_INVALID_ARG, "a %s-mode doorbell rung with the %s-mode call", db->device_mode ? "device" : "host",
                     device ? "device" : "host");
  if (m < 0 || m > db->capacity)
    return epm_error(EPM_ERR_INVALID_ARG, "doorbell step of %lld tokens is outside [0, %lld] (its capacity)", (long long)m,
                     (long long)db->capacity);
  if (flags & ~EPM_FWD_F_KNOWN)
    return epm_error(EPM_ERR_INVALID_ARG, "step flags 0x%x have unknown bits (known 0x%x)", flags, EPM_FWD_F_KNOWN);
  if (epm_dtype_size(dt) == 0) return epm_error(EPM_ERR_INVALID_ARG, "partial dtype %d is not a dtype", (int)dt);
  return EPM_OK;
}

epm_status_t epm_doorbell_ring_seq(epm_doorbell_t *db, uint64_t seq, uint32_t layer, int64_t m, uint32_t flags,
                                   epm_dtype_t partial_dtype) {
  EPM_TRY(check_request(db, m, flags, partial_dtype, 0));
  epm_db_ctl_t *ctl = db->ctl;
  ctl->m = m;
  ctl->layer = layer;
  ctl->flags = flags;
  ctl->partial_dtype = (uint32_t)partial_dtype;
  /* The release store orders the fields (and x / logits) before seq. */
  __atomic_store_n(&ctl->seq, seq, __ATOMIC_RELEASE);
  epm__futex_wake(epm__futex_word(&ctl->seq));
  db->seq = seq;
  return EPM_OK;
}

epm_status_t epm_doorbell_ring(epm_doorbell_t *db, uint32_t layer, int64_t m, uint32_t flags,
                               epm_dtype_t partial_dtype) {
  return epm_doorbell_ring_seq(db, db->seq + 1, layer, m, flags, partial_dtype);
}

/* The answer in the control block, as a status with the daemon's message. */
static epm_status_t answer(const epm_doorbell_t *db, uint64_t *step_ns) {
  const epm_db_ctl_t *ctl = db->ctl;
  uint32_t code = __atomic_load_n(&ctl->status, __ATOMIC_RELAXED);
  if (code != EPM_OK) {
    char msg[EPM_DB_ERROR_BYTES];
    memcpy(msg, ctl->error, sizeof msg);
    msg[sizeof msg - 1] = '\0';
    epm_status_t st = code < EPM_STATUS_COUNT ? (epm_status_t)code : EPM_ERR_INTERNAL;
    return epm_error(st, "rank %d: %s", db->c->info.rank, msg);
  }
  if (step_ns) *step_ns = ctl->step_ns;
  return EPM_OK;
}

/* 1 when the daemon's end of the connection is gone. */
static int peer_gone(const epm_client_t *c) {
  struct pollfd p = {c->fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

epm_status_t epm_doorbell_wait(epm_doorbell_t *db, int timeout_ms, uint64_t *step_ns) {
  epm_db_ctl_t *ctl = db->ctl;
  const int ms = timeout_ms > 0 ? timeout_ms : db->c->timeout_ms;
  const uint64_t t0 = epm_clock_ns(), limit = (uint64_t)ms * 1000000u;
  if (db->device_mode) return epm_error(EPM_ERR_INVALID_ARG, "epm_doorbell_wait on a device-mode doorbell");
  for (int spins = 0;; spins++) {
    uint64_t done = __atomic_load_n(&ctl->done_seq, __ATOMIC_ACQUIRE);
    if (done == db->seq) return answer(db, step_ns);
    uint64_t waited = epm_clock_ns() - t0;
    if (waited >= limit)
      return epm_error(EPM_ERR_TIMEOUT, "doorbell step %llu on %s: no answer within %d ms (last answered %llu)",
                       (unsigned long long)db->seq, db->c->path, ms, (unsigned long long)done);
    /* A short yield-spin first: the answer of a small step is often a few
     * microseconds away, and a futex sleep costs more than that to leave. */
    if (spins < 64) {
      sched_yield();
      continue;
    }
    if (peer_gone(db->c))
      return epm_error(EPM_ERR_IO, "daemon at %s closed the connection while doorbell step %llu was waiting", db->c->path,
                       (unsigned long long)db->seq);
    uint64_t slice = limit - waited < 50000000u ? limit - waited : 50000000u; /* re-check the peer every 50 ms */
    epm__futex_wait(epm__futex_word(&ctl->done_seq), (uint32_t)done, (int64_t)slice);
  }
}

epm_status_t epm_doorbell_step(epm_doorbell_t *db, uint32_t layer, int64_t m, uint32_t flags,
                               epm_dtype_t partial_dtype, uint64_t *step_ns) {
  EPM_TRY(epm_doorbell_ring(db, layer, m, flags, partial_dtype));
  return epm_doorbell_wait(db, 0, step_ns);
}

epm_status_t epm_doorbell_ring_stream(epm_doorbell_t *db, void *stream, uint32_t layer, int64_t m, uint32_t flags,
                                      epm_dtype_t partial_dtype) {
  EPM_TRY(check_request(db, m, flags, partial_dtype, 1));
  return epm_dbgpu_ring(db->gpu, stream, layer, m, flags, (uint32_t)partial_dtype);
}

epm_status_t epm_doorbell_wait_stream(epm_doorbell_t *db, void *stream) {
  if (!db->device_mode) return epm_error(EPM_ERR_INVALID_ARG, "epm_doorbell_wait_stream on a host-mode doorbell");
  return epm_dbgpu_wait(db->gpu, stream);
}

epm_status_t epm_doorbell_status(epm_doorbell_t *db, uint64_t *steps, uint64_t *step_ns) {
  if (steps) *steps = __atomic_load_n(&db->ctl->done_seq, __ATOMIC_ACQUIRE);
  return answer(db, step_ns);
}
