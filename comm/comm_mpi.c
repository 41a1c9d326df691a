/* SPDX-License-Identifier: Apache-2.0 */
/* comm_mpi.c — the host-memory MPI backend of epmoe/comm.h.
 *
 * Sizes above INT_MAX are split (mpi_chunk.c decides how). The reduce-scatter
 * is written by hand instead of MPI_Reduce_scatter(_block): MPI leaves the
 * order of a predefined MPI_SUM unspecified (Open MPI picks recursive halving
 * or a ring by message size), so its float result depends on P and size. Here
 * every rank receives its own segment from each peer (point-to-point,
 * double-buffered so the next piece is in flight while one is summed) and
 * adds the pieces in rank order 0..P-1 in fp32. That makes the result equal,
 * bit for bit, to a plain left-to-right sum, on every run and EP size.
 */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "epmoe/bf16.h"
#include "epmoe/checked.h"
#include "epmoe/log.h"
#include "mpi_chunk.h"
#include "mpi_status.h"

enum { RS_TAG = 0x4550 }; /* "EP": reduce-scatter pieces on the private dup'd comm */

typedef struct {
  MPI_Comm comm;   /* dup of the EP group, MPI_ERRORS_RETURN */
  int *bytes_each; /* [P] allgather-v plan */
  int *displs;     /* [P] */
  void *scratch;   /* grow-only: reduce-scatter receive buffers, fp32 accumulator */
  size_t scratch_bytes;
  MPI_Request *reqs; /* grow-only */
  size_t nreqs_cap;
} mpi_impl_t;

static mpi_impl_t *impl_of(epm_comm_t *c) { return (mpi_impl_t *)c->impl; }

static epm_status_t grow_scratch(mpi_impl_t *m, size_t bytes) {
  if (bytes <= m->scratch_bytes) return EPM_OK;
  void *p = realloc(m->scratch, bytes);
  if (!p) return epm_error(EPM_ERR_NOMEM, "mpi comm: scratch of %zu bytes", bytes);
  m->scratch = p;
  m->scratch_bytes = bytes;
  return EPM_OK;
}

static epm_status_t grow_reqs(mpi_impl_t *m, size_t n) {
  if (n <= m->nreqs_cap) return EPM_OK;
  size_t bytes;
  if (epm_mul_size(n, sizeof(MPI_Request), &bytes))
    return epm_error(EPM_ERR_OVERFLOW, "mpi comm: %zu requests", n);
  MPI_Request *p = realloc(m->reqs, bytes);
  if (!p) return epm_error(EPM_ERR_NOMEM, "mpi comm: %zu requests", n);
  m->reqs = p;
  m->nreqs_cap = n;
  return EPM_OK;
}

static epm_status_t mpi_alloc(epm_comm_t *c, size_t bytes, void **out) {
  size_t rounded;
  if (epm_add_size(bytes, 63, &rounded))
    return epm_error(EPM_ERR_OVERFLOW, "comm_alloc: %zu bytes", bytes);
  rounded &= ~(size_t)63;
  void *p = aligned_alloc(64, rounded);
  if (!p) return epm_error(EPM_ERR_NOMEM, "comm_alloc: %zu bytes of host memory", bytes);
  *out = p;
  return EPM_OK;
}

static void mpi_free(epm_comm_t *c, void *p) { free(p); }

static epm_status_t mpi_exchange_sizes(epm_comm_t *c, int64_t mine, int64_t *all) {
  EPM__MPI_TRY(MPI_Allgather(&mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, impl_of(c)->comm),
               "exchange_sizes: MPI_Allgather");
  return EPM_OK;
}

/* Root by root, each root's rows in pieces of at most the limit. */
static epm_status_t agv_chunked(epm_comm_t *c, const epm_comm_gather_buf_t *b,
                                const int64_t *counts) {
  MPI_Comm comm = impl_of(c)->comm;
  char *recv = b->recv;
  size_t off = 0;
  for (int root = 0; root < c->size; root++) {
    size_t nbytes = (size_t)counts[root] * b->elem_size; /* checked by comm.c */
    char *dst = recv + off;
    if (root == c->rank && nbytes > 0) memcpy(dst, b->send, nbytes);
    for (size_t done = 0; done < nbytes;) {
      int len = epm__mpi_chunk_len((int64_t)(nbytes - done), 1);
      EPM__MPI_TRY(MPI_Bcast(dst + done, len, MPI_BYTE, root, comm), "allgatherv: MPI_Bcast");
      done += (size_t)len;
    }
    off += nbytes;
  }
  return EPM_OK;
}

static epm_status_t agv_one(epm_comm_t *c, const epm_comm_gather_buf_t *b, const int64_t *counts) {
  mpi_impl_t *m = impl_of(c);
  epm__agv_path_t path;
  if (epm__mpi_agv_plan(counts, c->size, b->elem_size, &path, m->bytes_each, m->displs))
    return epm_error(EPM_ERR_OVERFLOW, "allgatherv: byte size of %zu-byte rows overflows int64", b->elem_size);
  static char dummy; /* MPI wants a valid pointer even for 0 bytes */
  const void *send = b->send ? b->send : &dummy;
  switch (path) {
    case EPM__AGV_NONE: return EPM_OK;
    case EPM__AGV_EQUAL:
      EPM__MPI_TRY(MPI_Allgather(send, m->bytes_each[0], MPI_BYTE, b->recv, m->bytes_each[0], MPI_BYTE, m->comm),
                   "allgatherv: MPI_Allgather");
      return EPM_OK;
    case EPM__AGV_VARIABLE:
      EPM__MPI_TRY(MPI_Allgatherv(send, m->bytes_each[c->rank], MPI_BYTE, b->recv, m->bytes_each, m->displs,
                                  MPI_BYTE, m->comm),
                   "allgatherv: MPI_Allgatherv");
      return EPM_OK;
    case EPM__AGV_CHUNKED: return agv_chunked(c, b, counts);
  }
  return epm_error(EPM_ERR_INTERNAL, "allgatherv: path %d", (int)path);
}

/* Several arrays in one collective: pack this rank's rows of every array
 * (array after array) into one block, gather the blocks, unpack. Latency, not
 * bytes, dominates a host step at small token counts, so one collective
 * instead of four is worth two memcpy passes. */
static epm_status_t mpi_allgatherv(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                   const int64_t *counts, int64_t total) {
  if (nbufs == 1) return agv_one(c, &bufs[0], counts);
  mpi_impl_t *m = impl_of(c);
  size_t row = 0, send_bytes, recv_bytes, all_bytes;
  for (int i = 0; i < nbufs; i++)
    if (epm_add_size(row, bufs[i].elem_size, &row))
      return epm_error(EPM_ERR_OVERFLOW, "allgatherv: packed row of %d arrays overflows size_t", nbufs);
  if (epm_mul_size((size_t)counts[c->rank], row, &send_bytes) || epm_mul_size((size_t)total, row, &recv_bytes) ||
      epm_add_size(send_bytes, recv_bytes, &all_bytes))
    return epm_error(EPM_ERR_OVERFLOW, "allgatherv: %lld rows of %zu packed bytes overflow size_t",
                     (long long)total, row);
  EPM_TRY(grow_scratch(m, all_bytes));
  char *packed_recv = m->scratch, *packed_send = (char *)m->scratch + recv_bytes;
  size_t pos = 0;
  for (int i = 0; i < nbufs; i++) {
    size_t nb = (size_t)counts[c->rank] * bufs[i].elem_size;
    if (nb) memcpy(packed_send + pos, bufs[i].send, nb);
    pos += nb;
  }
  epm_comm_gather_buf_t packed = {.send = packed_send, .recv = packed_recv, .elem_size = row};
  EPM_TRY(agv_one(c, &packed, counts));
  size_t block = 0; /* byte offset of rank r's packed block */
  int64_t off = 0;  /* row offset of rank r */
  for (int r = 0; r < c->size; r++) {
    size_t in = block;
    for (int i = 0; i < nbufs; i++) {
      size_t nb = (size_t)counts[r] * bufs[i].elem_size;
      if (nb) memcpy((char *)bufs[i].recv + (size_t)off * bufs[i].elem_size, packed_recv + in, nb);
      in += nb;
    }
    block += (size_t)counts[r] * row;
    off += counts[r];
  }
  return EPM_OK;
}

/* ---- reduce-scatter-v ---- */

/* acc[i] = first ? x[i] : acc[i] + x[i], in fp32, for one piece. */
static void accumulate(float *acc, const void *x, int64_t n, epm_dtype_t dt, int first) {
  if (dt == EPM_DTYPE_F32) {
    const float *xf = x;
    if (first) memcpy(acc, xf, (size_t)n * sizeof(float));
    else for (int64_t i = 0; i < n; i++) acc[i] += xf[i];
  } else {
    const epm_bf16_t *xb = x;
    if (first) for (int64_t i = 0; i < n; i++) acc[i] = epm_bf16_to_f32(xb[i]);
    else for (int64_t i = 0; i < n; i++) acc[i] += epm_bf16_to_f32(xb[i]);
  }
}

/* Next piece this rank receives, in (source rank, offset) order, skipping
 * itself. *src = -1 before the first; returns 0 when there is none. */
static int rs_next(int size, int me, int64_t n, size_t esz, int *src, int64_t *start) {
  if (n == 0) return 0;
  if (*src >= 0) {
    *start += epm__mpi_chunk_len(n - *start, esz);
    if (*start < n) return 1;
  }
  do (*src)++;
  while (*src == me);
  *start = 0;
  return *src < size;
}

static epm_status_t mpi_reduce_scatterv(epm_comm_t *c, const void *send, void *recv,
                                        const int64_t *counts, int64_t total, int64_t row_elems,
                                        epm_dtype_t dt) {
  mpi_impl_t *m = impl_of(c);
  const int P = c->size, me = c->rank;
  const size_t esz = epm_dtype_size(dt);
  MPI_Datatype type = dt == EPM_DTYPE_F32 ? MPI_FLOAT : MPI_UINT16_T;
  const char *sbytes = send;

  /* Sends: my rows of every other rank's segment, in pieces. */
  size_t nsend = 0;
  for (int d = 0; d < P; d++) {
    int64_t n = counts[d] * row_elems, lim = epm__mpi_limit(esz);
    if (d != me) nsend += (size_t)((n + lim - 1) / lim);
  }
  EPM_TRY(grow_reqs(m, nsend + 2));
  MPI_Request *sreq = m->reqs, *rreq = m->reqs + nsend;
  size_t k = 0;
  int64_t off = 0; /* element offset of segment d in send */
  for (int d = 0; d < P; d++) {
    int64_t n = counts[d] * row_elems;
    if (d != me) {
      for (int64_t s = 0; s < n;) {
        int len = epm__mpi_chunk_len(n - s, esz);
        EPM__MPI_TRY(MPI_Isend(sbytes + (size_t)(off + s) * esz, len, type, d, RS_TAG, m->comm, &sreq[k++]),
                     "reduce_scatterv: MPI_Isend");
        s += len;
      }
    }
    off += n;
  }

  /* Receives: my segment from each peer, summed in rank order. */
  const int64_t n = counts[me] * row_elems;
  int64_t my_off = 0;
  for (int r = 0; r < me; r++) my_off += counts[r] * row_elems;
  if (n > 0) {
    const int64_t piece = epm__mpi_chunk_len(n, esz);
    size_t buf_bytes = (size_t)piece * esz, acc_bytes = dt == EPM_DTYPE_F32 ? 0 : (size_t)n * sizeof(float);
    EPM_TRY(grow_scratch(m, 2 * buf_bytes + acc_bytes + 64));
    char *buf[2] = {(char *)m->scratch, (char *)m->scratch + buf_bytes};
    float *acc = dt == EPM_DTYPE_F32 ? (float *)recv : (float *)((char *)m->scratch + 2 * buf_bytes);
    int nsrc = -1, cur = 0;
    int64_t nstart = 0;
    int have = rs_next(P, me, n, esz, &nsrc, &nstart);
    if (have)
      EPM__MPI_TRY(MPI_Irecv(buf[0], epm__mpi_chunk_len(n - nstart, esz), type, nsrc, RS_TAG, m->comm, &rreq[0]),
                   "reduce_scatterv: MPI_Irecv");
    for (int s = 0; s < P; s++) {
      if (s == me) {
        accumulate(acc, sbytes + (size_t)my_off * esz, n, dt, s == 0);
        continue;
      }
      for (int64_t st = 0; st < n;) {
        int len = epm__mpi_chunk_len(n - st, esz);
        EPM__MPI_TRY(MPI_Wait(&rreq[cur], MPI_STATUS_IGNORE), "reduce_scatterv: MPI_Wait (receive)");
        /* Post the next piece before summing this one. */
        if (rs_next(P, me, n, esz, &nsrc, &nstart))
          EPM__MPI_TRY(MPI_Irecv(buf[cur ^ 1], epm__mpi_chunk_len(n - nstart, esz), type, nsrc, RS_TAG, m->comm,
                                 &rreq[cur ^ 1]),
                       "reduce_scatterv: MPI_Irecv");
        accumulate(acc + st, buf[cur], len, dt, s == 0);
        cur ^= 1;
        st += len;
      }
    }
    if (dt == EPM_DTYPE_BF16) {
      epm_bf16_t *out = recv;
      for (int64_t i = 0; i < n; i++) out[i] = epm_bf16_from_f32(acc[i]);
    }
  }
  if (nsend > 0)
    EPM__MPI_TRY(MPI_Waitall((int)nsend, sreq, MPI_STATUSES_IGNORE), "reduce_scatterv: MPI_Waitall (sends)");
  (void)total;
  return EPM_OK;
}

static epm_status_t mpi_allreduce_max_f32(epm_comm_t *c, float *buf, int64_t n) {
  for (int64_t s = 0; s < n;) {
    int len = epm__mpi_chunk_len(n - s, sizeof(float));
    EPM__MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, buf + s, len, MPI_FLOAT, MPI_MAX, impl_of(c)->comm),
                 "allreduce_max: MPI_Allreduce");
    s += len;
  }
  return EPM_OK;
}

static epm_status_t mpi_barrier(epm_comm_t *c) {
  EPM__MPI_TRY(MPI_Barrier(impl_of(c)->comm), "barrier: MPI_Barrier");
  return EPM_OK;
}

static epm_status_t mpi_wait(epm_comm_t *c, double timeout_s) { return EPM_OK; }
static epm_status_t mpi_check_async(epm_comm_t *c) { return EPM_OK; }

static void mpi_abort(epm_comm_t *c) {
  EPM_LOG(EPM_LOG_ERROR, "comm", "abort requested: MPI_Abort on the EP group");
  MPI_Abort(impl_of(c)->comm, 1);
}

static void mpi_destroy(epm_comm_t *c) {
  mpi_impl_t *m = impl_of(c);
  if (!m) return;
  if (!c->aborted && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
  free(m->bytes_each);
  free(m->displs);
  free(m->scratch);
  free(m->reqs);
  free(m);
  c->impl = NULL;
}

static const epm_comm_ops_t mpi_ops = {
    .name = "mpi",
    .mem_kind = EPM_MEM_HOST,
    .alloc = mpi_alloc,
    .free = mpi_free,
    .exchange_sizes = mpi_exchange_sizes,
    .allgatherv = mpi_allgatherv,
    .reduce_scatterv = mpi_reduce_scatterv,
    .exchange_rows = epm__mpi_exchange_rows, /* comm_mpi_a2a.c */
    .alltoallv = epm__mpi_alltoallv,
    .allreduce_max_f32 = mpi_allreduce_max_f32,
    .barrier = mpi_barrier,
    .wait = mpi_wait,
    .check_async = mpi_check_async,
    .abort = mpi_abort,
    .destroy = mpi_destroy,
    .abort_is_local = 0,
};

epm_status_t epm__comm_mpi_open(epm_comm_t *c, const epm_bootstrap_t *boot) {
  MPI_Comm *ep = epm__bootstrap_ep_mpi_comm(boot);
  if (!ep) return epm_error(EPM_ERR_INVALID_ARG, "comm_create(mpi): bootstrap is not initialised");
  mpi_impl_t *m = calloc(1, sizeof(*m));
  if (!m) return epm_error(EPM_ERR_NOMEM, "comm_create(mpi): state");
  m->comm = MPI_COMM_NULL;
  c->impl = m;
  c->ops = &mpi_ops;
  epm_status_t st = EPM_OK;
  int rc = MPI_Comm_dup(*ep, &m->comm);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "comm_create(mpi): MPI_Comm_dup");
    goto fail;
  }
  MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(m->comm, &c->rank);
  MPI_Comm_size(m->comm, &c->size);
  m->bytes_each = calloc((size_t)c->size, sizeof(int));
  m->displs = calloc((size_t)c->size, sizeof(int));
  if (!m->bytes_each || !m->displs) {
    st = epm_error(EPM_ERR_NOMEM, "comm_create(mpi): plan arrays for %d ranks", c->size);
    goto fail;
  }
  return EPM_OK;
fail:
  mpi_destroy(c);
  c->ops = NULL;
  return st;
}

/* ---- for comm_mpi_a2a.c: the all-to-all lives in its own file ---- */

void *epm__comm_mpi_handle(epm_comm_t *c) { return &impl_of(c)->comm; }

epm_status_t epm__comm_mpi_scratch(epm_comm_t *c, size_t bytes, void **out) {
  EPM_TRY(grow_scratch(impl_of(c), bytes));
  *out = impl_of(c)->scratch;
  return EPM_OK;
}

epm_status_t epm__comm_mpi_requests(epm_comm_t *c, size_t n, void **out) {
  EPM_TRY(grow_reqs(impl_of(c), n));
  *out = impl_of(c)->reqs;
  return EPM_OK;
}

