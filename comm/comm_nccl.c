/* SPDX-License-Identifier: Apache-2.0 */
/* comm_nccl.c — the device-memory NCCL backend of epmoe/comm.h (CUDA builds).
 *
 * The communicator is non-blocking (config.blocking = 0) so that no call can
 * hang inside NCCL: every call returns at once, possibly ncclInProgress, and
 * this file polls ncclCommGetAsyncError with a deadline. On an NCCL error or
 * timeout the communicator is aborted (NCCL: a failed communicator must be
 * aborted and re-created) and the comm reports EPM_ERR_ABORTED from then on.
 *
 * NCCL has no v-collectives. As in vLLM's pynccl: allgather-v is one
 * ncclAllGather when every rank has the same count, else one ncclBroadcast per
 * root with rows, all inside one group; reduce-scatter-v is ncclReduceScatter
 * when equal, else one ncclReduce per root. Roots with 0 rows are skipped; the
 * counts are the same on every rank, so every rank skips the same roots.
 * All-to-all-v is one group of ncclSend/ncclRecv (NCCL's own alltoall has
 * no v-form either). Sizes and rows exchanges and the host side of the
 * barrier go over MPI.
 */
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <time.h>

#include "comm_impl.h"
#include "epmoe/clock.h"
#include "epmoe/cuda_status.h"
#include "epmoe/log.h"
#include "mpi_status.h"

typedef struct {
  ncclComm_t nc;
  MPI_Comm mpi;        /* dup of the EP group: sizes exchange, barrier */
  cudaStream_t stream; /* every operation goes here */
  int device;
  double timeout_s;
  void *dummy; /* small device buffer standing in for NULL (0-byte) pointers */
} nccl_impl_t;

static nccl_impl_t *impl_of(epm_comm_t *c) { return (nccl_impl_t *)c->impl; }

enum { SPIN_US = 2000 };
#define SPIN_S (SPIN_US * 1e-6)

static void nap(void) {
  struct timespec ts = {0, 50 * 1000}; /* 50 us: cheap next to a collective */
  nanosleep(&ts, NULL);
}

static void nccl_abort_now(epm_comm_t *c) {
  nccl_impl_t *n = impl_of(c);
  if (n->nc) {
    ncclCommAbort(n->nc); /* frees the communicator */
    n->nc = NULL;
  }
  c->aborted = 1;
}

/* A fatal NCCL result: abort and describe. */
static epm_status_t nccl_fail(epm_comm_t *c, ncclResult_t rc, const char *what) {
  nccl_impl_t *n = impl_of(c);
  const char *detail = n->nc ? ncclGetLastError(n->nc) : "";
  epm_status_t st = epm_error(EPM_ERR_NCCL, "%s: %s (ncclResult %d)%s%s; communicator aborted", what,
                              ncclGetErrorString(rc), (int)rc, detail && *detail ? ": " : "",
                              detail ? detail : "");
  nccl_abort_now(c);
  return st;
}

/* Wait until the last call is enqueued (state leaves ncclInProgress). */
static epm_status_t settle(epm_comm_t *c, ncclResult_t rc, const char *what) {
  nccl_impl_t *n = impl_of(c);
  if (rc != ncclSuccess && rc != ncclInProgress) return nccl_fail(c, rc, what);
  double t0 = epm_clock_s();
  for (;;) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(n->nc, &state);
    if (q != ncclSuccess) return nccl_fail(c, q, what);
    if (state == ncclSuccess) return EPM_OK;
    if (state != ncclInProgress) return nccl_fail(c, state, what);
    EPM_TRY(epm__comm_abort_point(c, what));
    if (epm_clock_s() - t0 > n->timeout_s) {
      nccl_abort_now(c);
      return epm_error(EPM_ERR_TIMEOUT, "%s: still in progress after %.1f s; communicator aborted", what,
                       n->timeout_s);
    }
    nap();
  }
}

static epm_status_t nccl_alloc(epm_comm_t *c, size_t bytes, void **out) {
  const int dev = impl_of(c)->device;
  *out = NULL;
  /* Set the device each time: the caller may be another thread. */
  EPM_TRY(epm_cuda_status(cudaSetDevice(dev), "comm_alloc: cudaSetDevice(%d)", dev));
  epm_status_t st = epm_cuda_status(cudaMalloc(out, bytes), "comm_alloc: cudaMalloc(%zu bytes) on GPU %d", bytes, dev);
  if (st != EPM_OK) *out = NULL;
  return st;
}

static void nccl_free(epm_comm_t *c, void *p) { cudaFree(p); }

static epm_status_t nccl_exchange_sizes(epm_comm_t *c, int64_t mine, int64_t *all) {
  int rc = MPI_Allgather(&mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, impl_of(c)->mpi);
  return epm__mpi_status(rc, "exchange_sizes: MPI_Allgather");
}

static int all_equal(const int64_t *counts, int p) {
  for (int r = 1; r < p; r++)
    if (counts[r] != counts[0]) return 0;
  return 1;
}

/* One array of the gather, issued inside the caller's group. Equal counts:
 * one ncclAllGather. Unequal: one grouped gather, each rank sending its
 * block once to every peer and receiving every peer's block (2(P-1)
 * point-to-point calls in the group) plus a device copy of its own block,
 * instead of P broadcasts. All of it is capturable in a CUDA graph. */
static ncclResult_t agv_issue(epm_comm_t *c, const epm_comm_gather_buf_t *b, const int64_t *counts) {
  nccl_impl_t *n = impl_of(c);
  if (all_equal(counts, c->size)) {
    size_t each = (size_t)counts[0] * b->elem_size;
    if (each == 0) return ncclSuccess;
    return ncclAllGather(b->send, b->recv, each, ncclUint8, n->nc, n->stream);
  }
  char *recv = b->recv;
  size_t off = 0;
  const size_t mine = (size_t)counts[c->rank] * b->elem_size;
  for (int r = 0; r < c->size; r++) {
    size_t nb = (size_t)counts[r] * b->elem_size;
    ncclResult_t rc = ncclSuccess;
    if (r == c->rank) {
      if (nb > 0 && cudaMemcpyAsync(recv + off, b->send, nb, cudaMemcpyDeviceToDevice, n->stream) != cudaSuccess)
        return ncclUnhandledCudaError;
    } else {
      if (mine > 0) rc = ncclSend(b->send, mine, ncclUint8, r, n->nc, n->stream);
      if ((rc == ncclSuccess || rc == ncclInProgress) && nb > 0)
        rc = ncclRecv(recv + off, nb, ncclUint8, r, n->nc, n->stream);
    }
    if (rc != ncclSuccess && rc != ncclInProgress) return rc;
    off += nb;
  }
  return ncclSuccess;
}

/* NCCL documents at most 2048 operations between ncclGroupStart and End. */
enum { NCCL_GROUP_MAX_OPS = 2048 };

static epm_status_t nccl_allgatherv(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                    const int64_t *counts, int64_t total) {
  if (total == 0) return EPM_OK;
  if ((int64_t)nbufs * 2 * c->size > NCCL_GROUP_MAX_OPS)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "allgatherv: %d arrays x 2 x %d peers = %lld grouped NCCL calls > %d",
                     nbufs, c->size, (long long)nbufs * 2 * c->size, NCCL_GROUP_MAX_OPS);
  ncclResult_t rc = ncclGroupStart();
  if (rc != ncclSuccess) return nccl_fail(c, rc, "allgatherv: ncclGroupStart");
  ncclResult_t first = ncclSuccess;
  for (int i = 0; i < nbufs && (first == ncclSuccess || first == ncclInProgress); i++)
    first = agv_issue(c, &bufs[i], counts);
  rc = ncclGroupEnd(); /* always close the group, even after a failed call */
  if (first != ncclSuccess && first != ncclInProgress) return nccl_fail(c, first, "allgatherv: enqueue");
  return settle(c, rc, "allgatherv: ncclGroupEnd");
}

static epm_status_t nccl_reduce_scatterv(epm_comm_t *c, const void *send, void *recv,
                                         const int64_t *counts, int64_t total, int64_t row_elems,
                                         epm_dtype_t dt) {
  nccl_impl_t *n = impl_of(c);
  if (total == 0) return EPM_OK;
  ncclDataType_t type = dt == EPM_DTYPE_F32 ? ncclFloat32 : ncclBfloat16;
  size_t esz = epm_dtype_size(dt);
  if (!recv) recv = n->dummy; /* this rank has 0 rows; NCCL still wants a pointer */
  if (all_equal(counts, c->size)) {
    ncclResult_t rc = ncclReduceScatter(send, recv, (size_t)counts[0] * (size_t)row_elems, type, ncclSum,
                                        n->nc, n->stream);
    return settle(c, rc, "reduce_scatterv: ncclReduceScatter");
  }
  ncclResult_t rc = ncclGroupStart();
  if (rc != ncclSuccess) return nccl_fail(c, rc, "reduce_scatterv: ncclGroupStart");
  ncclResult_t first = ncclSuccess;
  const char *sbytes = send;
  size_t off = 0; /* elements */
  for (int root = 0; root < c->size; root++) {
    size_t cnt = (size_t)counts[root] * (size_t)row_elems;
    if (cnt == 0) continue;
    first = ncclReduce(sbytes + off * esz, recv, cnt, type, ncclSum, root, n->nc, n->stream);
    if (first != ncclSuccess && first != ncclInProgress) break;
    off += cnt;
  }
  rc = ncclGroupEnd();
  if (first != ncclSuccess && first != ncclInProgress) return nccl_fail(c, first, "reduce_scatterv: ncclReduce");
  return settle(c, rc, "reduce_scatterv: ncclGroupEnd");
}

static epm_status_t nccl_exchange_rows(epm_comm_t *c, const int64_t *mine, int n, int64_t *all) {
  int rc = MPI_Allgather(mine, n, MPI_INT64_T, all, n, MPI_INT64_T, impl_of(c)->mpi);
  return rc == MPI_SUCCESS ? EPM_OK : epm__mpi_status(rc, "exchange_rows: MPI_Allgather");
}

/* All-to-all-v: one group of point-to-point calls. Every pair's send and
 * receive are in the same group on both sides, so NCCL matches them whatever
 * order the peers are listed in; a pair with 0 rows issues nothing on either
 * side (both read the same matrix). The local block is a device copy on the
 * stream, ordered with the group. */
static epm_status_t nccl_alltoallv(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                   const int64_t *counts, int64_t send_total, int64_t recv_total) {
  nccl_impl_t *n = impl_of(c);
  const int P = c->size, me = c->rank;
  int64_t calls = 0;
  for (int r = 0; r < P; r++) {
    if (r == me) continue;
    calls += (counts[(size_t)me * (size_t)P + (size_t)r] > 0) + (counts[(size_t)r * (size_t)P + (size_t)me] > 0);
  }
  calls *= nbufs;
  if (calls > NCCL_GROUP_MAX_OPS)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "alltoallv: %lld grouped NCCL send/recv calls (%d arrays) > %d",
                     (long long)calls, nbufs, NCCL_GROUP_MAX_OPS);
  (void)send_total;
  (void)recv_total;
  for (int i = 0; i < nbufs; i++) {
    const size_t row = bufs[i].elem_size;
    size_t so = 0, ro = 0;
    for (int r = 0; r < me; r++) {
      so += (size_t)counts[(size_t)me * (size_t)P + (size_t)r] * row;
      ro += (size_t)counts[(size_t)r * (size_t)P + (size_t)me] * row;
    }
    const size_t self = (size_t)counts[(size_t)me * (size_t)P + (size_t)me] * row;
    if (self) {
      cudaError_t e = cudaMemcpyAsync((char *)bufs[i].recv + ro, (const char *)bufs[i].send + so, self,
                                      cudaMemcpyDeviceToDevice, n->stream);
      if (e != cudaSuccess) return epm_cuda_status(e, "alltoallv: cudaMemcpyAsync (local block)");
    }
  }
  if (calls == 0) return EPM_OK;
  ncclResult_t rc = ncclGroupStart();
  if (rc != ncclSuccess) return nccl_fail(c, rc, "alltoallv: ncclGroupStart");
  ncclResult_t first = ncclSuccess;
  for (int i = 0; i < nbufs && (first == ncclSuccess || first == ncclInProgress); i++) {
    const size_t row = bufs[i].elem_size;
    size_t so = 0, ro = 0;
    for (int r = 0; r < P && (first == ncclSuccess || first == ncclInProgress); r++) {
      const size_t sb = (size_t)counts[(size_t)me * (size_t)P + (size_t)r] * row;
      const size_t rb = (size_t)counts[(size_t)r * (size_t)P + (size_t)me] * row;
      if (r != me && sb) first = ncclSend((const char *)bufs[i].send + so, sb, ncclUint8, r, n->nc, n->stream);
      if (r != me && rb && (first == ncclSuccess || first == ncclInProgress))
        first = ncclRecv((char *)bufs[i].recv + ro, rb, ncclUint8, r, n->nc, n->stream);
      so += sb;
      ro += rb;
    }
  }
  rc = ncclGroupEnd(); /* always close the group, even after a failed call */
  if (first != ncclSuccess && first != ncclInProgress) return nccl_fail(c, first, "alltoallv: ncclSend/ncclRecv");
  return settle(c, rc, "alltoallv: ncclGroupEnd");
}

static epm_status_t nccl_allreduce_max_f32(epm_comm_t *c, float *buf, int64_t n) {
  nccl_impl_t *ni = impl_of(c);
  ncclResult_t rc = ncclAllReduce(buf, buf, (size_t)n, ncclFloat32, ncclMax, ni->nc, ni->stream);
  return settle(c, rc, "allreduce_max: ncclAllReduce");
}

static epm_status_t nccl_wait(epm_comm_t *c, double timeout_s) {
  nccl_impl_t *n = impl_of(c);
  if (timeout_s <= 0) timeout_s = n->timeout_s;
  double t0 = epm_clock_s();
  for (;;) {
    cudaError_t e = cudaStreamQuery(n->stream);
    if (e == cudaSuccess) return EPM_OK;
    if (e != cudaErrorNotReady) {
      epm_status_t st = epm_cuda_status(e, "comm wait: cudaStreamQuery");
      nccl_abort_now(c);
      return st;
    }
    ncclResult_t state = ncclSuccess;
    ncclResult_t q = ncclCommGetAsyncError(n->nc, &state);
    if (q != ncclSuccess) return nccl_fail(c, q, "comm wait: ncclCommGetAsyncError");
    if (state != ncclSuccess && state != ncclInProgress) return nccl_fail(c, state, "comm wait: async error");
    EPM_TRY(epm__comm_abort_point(c, "comm wait"));
    const double waited = epm_clock_s() - t0;
    if (waited > timeout_s) {
      nccl_abort_now(c);
      return epm_error(EPM_ERR_TIMEOUT, "comm wait: stream not done after %.1f s; communicator aborted", timeout_s);
    }
    /* A step's collectives finish in microseconds to a few ms: yield
     * instead of sleeping for the first SPIN_S (a nanosleep costs 50-134 us
     * of timer slack per call, more than a whole decode collective), then
     * nap so that a hung peer does not burn a core until the timeout or the
     * watchdog's abort. */
    if (waited < SPIN_S)
      sched_yield();
    else
      nap();
  }
}

static epm_status_t nccl_barrier(epm_comm_t *c) {
  EPM_TRY(nccl_wait(c, 0));
  int rc = MPI_Barrier(impl_of(c)->mpi);
  return epm__mpi_status(rc, "barrier: MPI_Barrier");
}

static epm_status_t nccl_check_async(epm_comm_t *c) {
  nccl_impl_t *n = impl_of(c);
  ncclResult_t state = ncclSuccess;
  ncclResult_t q = ncclCommGetAsyncError(n->nc, &state);
  if (q != ncclSuccess) state = q;
  if (state == ncclSuccess || state == ncclInProgress) return EPM_OK;
  return epm_error(EPM_ERR_NCCL, "NCCL async error: %s (ncclResult %d)", ncclGetErrorString(state), (int)state);
}

static void nccl_abort(epm_comm_t *c) {
  EPM_LOG(EPM_LOG_ERROR, "comm", "abort requested: ncclCommAbort");
  nccl_abort_now(c);
}

static void nccl_destroy(epm_comm_t *c) {
  nccl_impl_t *n = impl_of(c);
  if (!n) return;
  if (n->nc && !c->aborted) {
    /* Finalize flushes and waits for peers (polled, bounded); Destroy frees. */
    ncclResult_t rc = ncclCommFinalize(n->nc);
    if (settle(c, rc, "comm destroy: ncclCommFinalize") == EPM_OK && n->nc) ncclCommDestroy(n->nc);
    n->nc = NULL;
  } else if (n->nc) {
    ncclCommAbort(n->nc);
    n->nc = NULL;
  }
  if (n->dummy) cudaFree(n->dummy);
  if (n->mpi != MPI_COMM_NULL) MPI_Comm_free(&n->mpi);
  free(n);
  c->impl = NULL;
}

static const epm_comm_ops_t nccl_ops = {
    .name = "nccl",
    .mem_kind = EPM_MEM_DEVICE,
    .alloc = nccl_alloc,
    .free = nccl_free,
    .exchange_sizes = nccl_exchange_sizes,
    .allgatherv = nccl_allgatherv,
    .reduce_scatterv = nccl_reduce_scatterv,
    .exchange_rows = nccl_exchange_rows,
    .alltoallv = nccl_alltoallv,
    .allreduce_max_f32 = nccl_allreduce_max_f32,
    .barrier = nccl_barrier,
    .wait = nccl_wait,
    .check_async = nccl_check_async,
    .abort = nccl_abort,
    .destroy = nccl_destroy,
    .abort_is_local = 1,
};

epm_status_t epm__comm_nccl_open(epm_comm_t *c, const epm_bootstrap_t *boot,
                                 const epm_comm_opts_t *opts) {
  MPI_Comm *ep = epm__bootstrap_ep_mpi_comm(boot);
  if (!ep) return epm_error(EPM_ERR_INVALID_ARG, "comm_create(nccl): bootstrap is not initialised");
  /* Agree first: a rank without a GPU must not leave its peers in NCCL init. */
  int bad = boot->gpu < 0, any_bad = bad;
  int rc = MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, *ep);
  if (rc != MPI_SUCCESS) return epm__mpi_status(rc, "comm_create(nccl): MPI_Allreduce");
  if (any_bad)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "comm_create(nccl): %s has no GPU (bootstrap gpu = %d)",
                     bad ? "this rank" : "another rank", boot->gpu);

  nccl_impl_t *n = calloc(1, sizeof *n);
  if (!n) return epm_error(EPM_ERR_NOMEM, "comm_create(nccl): state");
  n->mpi = MPI_COMM_NULL;
  n->stream = (cudaStream_t)opts->stream;
  n->device = boot->gpu;
  n->timeout_s = opts->timeout_s > 0 ? opts->timeout_s : 300.0;
  c->impl = n;
  c->ops = &nccl_ops;
  epm_status_t st = EPM_OK;

  rc = MPI_Comm_dup(*ep, &n->mpi);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "comm_create(nccl): MPI_Comm_dup");
    goto fail;
  }
  MPI_Comm_set_errhandler(n->mpi, MPI_ERRORS_RETURN);
  MPI_Comm_rank(n->mpi, &c->rank);
  MPI_Comm_size(n->mpi, &c->size);

  cudaError_t ce = cudaSetDevice(n->device);
  if (ce == cudaSuccess) ce = cudaMalloc(&n->dummy, 256);
  /* The unique id travels even when this rank failed, so nobody waits in
   * MPI_Bcast; the failure is then agreed on before NCCL init. */
  ncclUniqueId id;
  ncclResult_t nr = ncclSuccess;
  if (c->rank == 0) nr = ncclGetUniqueId(&id);
  rc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, n->mpi);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "comm_create(nccl): MPI_Bcast(unique id)");
    goto fail;
  }
  bad = ce != cudaSuccess || nr != ncclSuccess;
  rc = MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, n->mpi);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "comm_create(nccl): MPI_Allreduce");
    goto fail;
  }
  if (ce != cudaSuccess) {
    st = epm_cuda_status(ce, "comm_create(nccl): cudaSetDevice(%d)/cudaMalloc(256 bytes)", n->device);
    goto fail;
  }
  if (nr != ncclSuccess) {
    st = epm_error(EPM_ERR_NCCL, "comm_create(nccl): ncclGetUniqueId: %s", ncclGetErrorString(nr));
    goto fail;
  }
  if (any_bad) {
    st = epm_error(EPM_ERR_ABORTED, "comm_create(nccl): another rank failed to prepare (see its message)");
    goto fail;
  }

  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  nr = ncclCommInitRankConfig(&n->nc, c->size, id, c->rank, &cfg);
  if (nr != ncclSuccess && nr != ncclInProgress) {
    st = epm_error(EPM_ERR_NCCL, "comm_create(nccl): ncclCommInitRankConfig(rank %d of %d, GPU %d): %s", c->rank,
                   c->size, n->device, ncclGetErrorString(nr));
    if (n->nc) ncclCommAbort(n->nc);
    n->nc = NULL;
    goto fail;
  }
  st = settle(c, nr, "comm_create(nccl): ncclCommInitRankConfig");
  if (st != EPM_OK) goto fail;
  c->aborted = 0;
  EPM_LOG(EPM_LOG_DEBUG, "comm", "nccl comm: rank %d/%d on GPU %d, timeout %.0f s", c->rank, c->size, n->device,
          n->timeout_s);
  return EPM_OK;
fail:
  c->aborted = 1; /* destroy must not finalize a communicator that never formed */
  nccl_destroy(c);
  c->ops = NULL;
  return st;
}
