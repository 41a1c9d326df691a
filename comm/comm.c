/* SPDX-License-Identifier: Apache-2.0 */
/* comm.c — the public comm entry points: argument checks, then the backend.
 *
 * Checks live here once so both backends see the same contract and a bad
 * call fails the same way on MPI (CI) and NCCL (GPU nodes). Every check is
 * local and identical on all ranks given identical counts, so a rank never
 * returns early from a collective that its peers entered, unless the caller
 * passed rank-dependent garbage (a NULL buffer with a non-zero size).
 */
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "epmoe/checked.h"

epm_status_t epm_comm_create(const epm_bootstrap_t *boot, const epm_comm_opts_t *opts,
                             epm_comm_t **out) {
  if (!boot || !out) return epm_error(EPM_ERR_INVALID_ARG, "comm_create: boot and out are required");
  *out = NULL;
  epm_comm_opts_t def = {.backend = EPM_COMM_MPI};
  if (!opts) opts = &def;
  epm_comm_t *c = calloc(1, sizeof(*c));
  if (!c) return epm_error(EPM_ERR_NOMEM, "comm_create: %zu bytes", sizeof(*c));
  c->backend = opts->backend;
  epm_status_t st;
  switch (opts->backend) {
    case EPM_COMM_MPI: st = epm__comm_mpi_open(c, boot); break;
    case EPM_COMM_NCCL: st = epm__comm_nccl_open(c, boot, opts); break;
    default: st = epm_error(EPM_ERR_INVALID_ARG, "comm_create: unknown backend %d", (int)opts->backend);
  }
  if (st != EPM_OK) {
    free(c);
    return st;
  }
  *out = c;
  return EPM_OK;
}

void epm_comm_destroy(epm_comm_t *c) {
  if (!c) return;
  if (c->ops && c->ops->destroy) c->ops->destroy(c);
  free(c);
}

int epm_comm_rank(const epm_comm_t *c) { return c->rank; }
int epm_comm_size(const epm_comm_t *c) { return c->size; }
epm_comm_backend_t epm_comm_backend(const epm_comm_t *c) { return c->backend; }
const char *epm_comm_backend_name(const epm_comm_t *c) { return c->ops->name; }
epm_mem_kind_t epm_comm_mem_kind(const epm_comm_t *c) { return c->ops->mem_kind; }

epm_status_t epm__comm_abort_point(epm_comm_t *c, const char *what) {
  if (atomic_load(&c->abort_requested) && !atomic_load(&c->aborted)) {
    if (c->ops->abort_is_local) c->ops->abort(c);
    atomic_store(&c->aborted, 1);
  }
  if (atomic_load(&c->aborted))
    return epm_error(EPM_ERR_ABORTED, "%s: %s comm was aborted; destroy it", what, c->ops->name);
  return EPM_OK;
}

static epm_status_t comm_live(epm_comm_t *c, const char *what) {
  if (!c) return epm_error(EPM_ERR_INVALID_ARG, "%s: comm is NULL", what);
  return epm__comm_abort_point(c, what);
}

void epm_comm_request_abort(epm_comm_t *c) {
  if (c) atomic_store(&c->abort_requested, 1);
}

epm_status_t epm_comm_alloc(epm_comm_t *c, size_t bytes, void **out) {
  if (!c || !out) return epm_error(EPM_ERR_INVALID_ARG, "comm_alloc: comm and out are required");
  *out = NULL;
  if (bytes == 0) return EPM_OK;
  return c->ops->alloc(c, bytes, out);
}

void epm_comm_free(epm_comm_t *c, void *p) {
  if (c && p) c->ops->free(c, p);
}

epm_status_t epm_comm_exchange_sizes(epm_comm_t *c, int64_t mine, int64_t *all) {
  EPM_TRY(comm_live(c, "exchange_sizes"));
  if (!all) return epm_error(EPM_ERR_INVALID_ARG, "exchange_sizes: all[] is NULL");
  /* Any value travels (no local check that could make one rank skip the
   * collective): callers use it as an agreement channel, e.g. a sentinel
   * for "this rank failed", and validate what they receive. */
  return c->ops->exchange_sizes(c, mine, all);
}

/* Payload of a successful data collective (epm_comm_traffic). The products
 * are byte sizes the checks below proved to fit size_t; uint64 wraps only
 * after 2^64 bytes in all. */
static void count_traffic(epm_comm_t *c, uint64_t sent, uint64_t recv) {
  c->traffic.bytes_sent += sent;
  c->traffic.bytes_recv += recv;
}

void epm_comm_traffic(const epm_comm_t *c, epm_comm_traffic_t *out) {
  if (!out) return;
  if (!c) {
    memset(out, 0, sizeof *out);
    return;
  }
  *out = c->traffic;
}

/* Sum of counts[0..P-1], each >= 0, without overflow; also bytes of the
 * total and of this rank's part for one row size. */
static epm_status_t counts_total(const epm_comm_t *c, const char *what, const int64_t *counts,
                                 int64_t *total) {
  if (!counts) return epm_error(EPM_ERR_INVALID_ARG, "%s: counts[] is NULL", what);
  int64_t t = 0;
  for (int r = 0; r < c->size; r++) {
    if (counts[r] < 0)
      return epm_error(EPM_ERR_INVALID_ARG, "%s: counts[%d] = %lld < 0", what, r, (long long)counts[r]);
    if (epm_add_i64(t, counts[r], &t))
      return epm_error(EPM_ERR_OVERFLOW, "%s: sum of counts passes INT64_MAX at rank %d", what, r);
  }
  *total = t;
  return EPM_OK;
}

static epm_status_t rows_bytes(const char *what, const char *name, int64_t rows, size_t row_bytes,
                               const void *p, size_t *bytes) {
  if (epm_mul_size((size_t)rows, row_bytes, bytes))
    return epm_error(EPM_ERR_OVERFLOW, "%s: %s of %lld rows x %zu bytes overflows size_t", what, name,
                     (long long)rows, row_bytes);
  if (*bytes > 0 && !p)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: %s is NULL but holds %zu bytes", what, name, *bytes);
  return EPM_OK;
}

epm_status_t epm_comm_allgatherv_multi(epm_comm_t *c, const epm_comm_gather_buf_t *bufs,
                                       int nbufs, const int64_t *counts) {
  const char *what = "allgatherv";
  EPM_TRY(comm_live(c, what));
  if (nbufs < 1 || !bufs) return epm_error(EPM_ERR_INVALID_ARG, "%s: %d buffers", what, nbufs);
  int64_t total = 0;
  EPM_TRY(counts_total(c, what, counts, &total));
  for (int i = 0; i < nbufs; i++) {
    size_t sb, rb;
    if (bufs[i].elem_size == 0)
      return epm_error(EPM_ERR_INVALID_ARG, "%s: buffer %d has elem_size 0", what, i);
    EPM_TRY(rows_bytes(what, "send", counts[c->rank], bufs[i].elem_size, bufs[i].send, &sb));
    EPM_TRY(rows_bytes(what, "recv", total, bufs[i].elem_size, bufs[i].recv, &rb));
    (void)sb;
    (void)rb;
  }
  EPM_TRY(c->ops->allgatherv(c, bufs, nbufs, counts, total));
  for (int i = 0; i < nbufs; i++) { /* sizes fit size_t (checked above) */
    const uint64_t row = bufs[i].elem_size, mine = (uint64_t)counts[c->rank];
    count_traffic(c, (uint64_t)(c->size - 1) * mine * row, ((uint64_t)total - mine) * row);
  }
  c->traffic.calls++;
  return EPM_OK;
}

epm_status_t epm_comm_allgatherv(epm_comm_t *c, const void *send, void *recv,
                                 const int64_t *counts, size_t elem_size) {
  epm_comm_gather_buf_t b = {.send = send, .recv = recv, .elem_size = elem_size};
  return epm_comm_allgatherv_multi(c, &b, 1, counts);
}

epm_status_t epm_comm_reduce_scatterv(epm_comm_t *c, const void *send, void *recv,
                                      const int64_t *counts, int64_t row_elems,
                                      epm_dtype_t dtype) {
  const char *what = "reduce_scatterv";
  EPM_TRY(comm_live(c, what));
  const size_t elem = epm_dtype_size(dtype);
  if (elem == 0) return epm_error(EPM_ERR_INVALID_ARG, "%s: unknown dtype %d", what, (int)dtype);
  if (row_elems <= 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: row_elems %lld <= 0", what, (long long)row_elems);
  int64_t total = 0;
  EPM_TRY(counts_total(c, what, counts, &total));
  size_t row_bytes, sb, rb;
  if (epm_mul_size((size_t)row_elems, elem, &row_bytes))
    return epm_error(EPM_ERR_OVERFLOW, "%s: row of %lld elements overflows size_t", what, (long long)row_elems);
  EPM_TRY(rows_bytes(what, "send", total, row_bytes, send, &sb));
  EPM_TRY(rows_bytes(what, "recv", counts[c->rank], row_bytes, recv, &rb));
  int64_t total_elems;
  if (epm_mul_i64(total, row_elems, &total_elems))
    return epm_error(EPM_ERR_OVERFLOW, "%s: %lld rows x %lld elements overflows int64", what,
                     (long long)total, (long long)row_elems);
  EPM_TRY(c->ops->reduce_scatterv(c, send, recv, counts, total, row_elems, dtype));
  const uint64_t mine = (uint64_t)counts[c->rank];
  count_traffic(c, ((uint64_t)total - mine) * row_bytes, (uint64_t)(c->size - 1) * mine * row_bytes);
  c->traffic.calls++;
  return EPM_OK;
}

enum { ROWS_MAX = 1 << 20 }; /* values per rank of one rows exchange */

epm_status_t epm_comm_exchange_rows(epm_comm_t *c, const int64_t *mine, int n, int64_t *all) {
  EPM_TRY(comm_live(c, "exchange_rows"));
  /* n is part of the contract (the same on every rank), so rejecting it
   * here rejects it on every rank. */
  if (n < 1 || n > ROWS_MAX)
    return epm_error(EPM_ERR_INVALID_ARG, "exchange_rows: %d values per rank is outside [1, %d]", n, ROWS_MAX);
  if ((int64_t)n * c->size > INT32_MAX)
    return epm_error(EPM_ERR_OVERFLOW, "exchange_rows: %d values x %d ranks passes 2^31-1", n, c->size);
  if (!mine || !all) return epm_error(EPM_ERR_INVALID_ARG, "exchange_rows: mine[] or all[] is NULL");
  return c->ops->exchange_rows(c, mine, n, all);
}

/* The P x P matrix of an all-to-all: every entry >= 0, and every rank's row
 * (sends) and column (receives) sum without overflow; this rank's sums out.
 * Whole-matrix checks, so every rank given the same matrix decides alike. */
static epm_status_t matrix_totals(const epm_comm_t *c, const char *what, const int64_t *counts,
                                  int64_t *send_total, int64_t *recv_total) {
  if (!counts) return epm_error(EPM_ERR_INVALID_ARG, "%s: counts[] is NULL", what);
  const int P = c->size;
  for (int a = 0; a < P; a++)
    for (int b = 0; b < P; b++) {
      const int64_t x = counts[(size_t)a * (size_t)P + (size_t)b];
      if (x < 0)
        return epm_error(EPM_ERR_INVALID_ARG, "%s: rank %d sends %lld rows to rank %d (< 0)", what, a, (long long)x, b);
    }
  for (int a = 0; a < P; a++) {
    int64_t row = 0, col = 0;
    for (int b = 0; b < P; b++) {
      const int64_t x = counts[(size_t)a * (size_t)P + (size_t)b], y = counts[(size_t)b * (size_t)P + (size_t)a];
      if (epm_add_i64(row, x, &row) || epm_add_i64(col, y, &col))
        return epm_error(EPM_ERR_OVERFLOW, "%s: the rows rank %d sends or receives pass INT64_MAX", what, a);
    }
    if (a == c->rank) {
      *send_total = row;
      *recv_total = col;
    }
  }
  return EPM_OK;
}

epm_status_t epm_comm_alltoallv_multi(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                      const int64_t *counts) {
  const char *what = "alltoallv";
  EPM_TRY(comm_live(c, what));
  if (nbufs < 1 || !bufs) return epm_error(EPM_ERR_INVALID_ARG, "%s: %d buffers", what, nbufs);
  int64_t stot = 0, rtot = 0;
  EPM_TRY(matrix_totals(c, what, counts, &stot, &rtot));
  for (int i = 0; i < nbufs; i++) {
    size_t sb, rb;
    if (bufs[i].elem_size == 0)
      return epm_error(EPM_ERR_INVALID_ARG, "%s: buffer %d has elem_size 0", what, i);
    EPM_TRY(rows_bytes(what, "send", stot, bufs[i].elem_size, bufs[i].send, &sb));
    EPM_TRY(rows_bytes(what, "recv", rtot, bufs[i].elem_size, bufs[i].recv, &rb));
  }
  EPM_TRY(c->ops->alltoallv(c, bufs, nbufs, counts, stot, rtot));
  const int P = c->size, me = c->rank;
  const uint64_t self = (uint64_t)counts[(size_t)me * (size_t)P + (size_t)me];
  for (int i = 0; i < nbufs; i++)
    count_traffic(c, ((uint64_t)stot - self) * bufs[i].elem_size, ((uint64_t)rtot - self) * bufs[i].elem_size);
  c->traffic.calls++;
  return EPM_OK;
}

epm_status_t epm_comm_alltoallv(epm_comm_t *c, const void *send, void *recv, const int64_t *counts,
                                size_t elem_size) {
  epm_comm_gather_buf_t b = {.send = send, .recv = recv, .elem_size = elem_size};
  return epm_comm_alltoallv_multi(c, &b, 1, counts);
}

epm_status_t epm_comm_allreduce_max_f32(epm_comm_t *c, float *buf, int64_t n) {
  EPM_TRY(comm_live(c, "allreduce_max"));
  if (n < 0 || (n > 0 && !buf))
    return epm_error(EPM_ERR_INVALID_ARG, "allreduce_max: n = %lld, buf %s", (long long)n, buf ? "set" : "NULL");
  if (n == 0) return EPM_OK; /* same decision on every rank: n is part of the contract */
  return c->ops->allreduce_max_f32(c, buf, n);
}

epm_status_t epm_comm_barrier(epm_comm_t *c) {
  EPM_TRY(comm_live(c, "barrier"));
  return c->ops->barrier(c);
}

epm_status_t epm_comm_wait(epm_comm_t *c, double timeout_s) {
  EPM_TRY(comm_live(c, "wait"));
  return c->ops->wait(c, timeout_s);
}

/* Runs on a watchdog thread: reads state only, never acts on an abort
 * request (that is the calling thread's job, see epm__comm_abort_point). */
epm_status_t epm_comm_check_async(epm_comm_t *c) {
  if (!c) return epm_error(EPM_ERR_INVALID_ARG, "check_async: comm is NULL");
  if (atomic_load(&c->aborted))
    return epm_error(EPM_ERR_ABORTED, "check_async: %s comm was aborted", c->ops->name);
  return c->ops->check_async(c);
}

void epm_comm_abort(epm_comm_t *c) {
  if (!c || c->aborted) return;
  c->ops->abort(c);
  c->aborted = 1;
}
