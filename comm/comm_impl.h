/* SPDX-License-Identifier: Apache-2.0 */
/* comm_impl.h — private: the backend vtable behind epmoe/comm.h.
 *
 * comm/comm.c validates arguments once (counts non-negative, byte sizes that
 * fit size_t, NULL only for empty buffers) and then calls the backend, so
 * backends may assume sane arguments and precomputed totals.
 */
#ifndef EPMOE_COMM_IMPL_H
#define EPMOE_COMM_IMPL_H

#include <stdatomic.h>

#include "epmoe/comm.h"

typedef struct epm_comm_ops {
  const char *name;
  epm_mem_kind_t mem_kind;
  epm_status_t (*alloc)(epm_comm_t *c, size_t bytes, void **out);
  void (*free)(epm_comm_t *c, void *p);
  epm_status_t (*exchange_sizes)(epm_comm_t *c, int64_t mine, int64_t *all);
  /* total = sum(counts); nbufs >= 1. */
  epm_status_t (*allgatherv)(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                             const int64_t *counts, int64_t total);
  epm_status_t (*reduce_scatterv)(epm_comm_t *c, const void *send, void *recv,
                                  const int64_t *counts, int64_t total, int64_t row_elems,
                                  epm_dtype_t dtype);
  /* all[P * n]; 1 <= n <= 2^20. */
  epm_status_t (*exchange_rows)(epm_comm_t *c, const int64_t *mine, int n, int64_t *all);
  /* counts[P * P] (row s: rank s's sends); send_total = sum of row me,
   * recv_total = sum of column me; nbufs >= 1. */
  epm_status_t (*alltoallv)(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs, const int64_t *counts,
                            int64_t send_total, int64_t recv_total);
  epm_status_t (*allreduce_max_f32)(epm_comm_t *c, float *buf, int64_t n);
  epm_status_t (*barrier)(epm_comm_t *c);
  epm_status_t (*wait)(epm_comm_t *c, double timeout_s);
  epm_status_t (*check_async)(epm_comm_t *c);
  void (*abort)(epm_comm_t *c);
  /* 1 when abort only affects this process (ncclCommAbort), so a requested
   * abort may run it at a call boundary; 0 for MPI_Abort (ends the job). */
  int abort_is_local;
  void (*destroy)(epm_comm_t *c); /* frees backend state, not the epm_comm_t */
} epm_comm_ops_t;

struct epm_comm {
  const epm_comm_ops_t *ops;
  epm_comm_backend_t backend;
  int rank, size;
  atomic_int aborted;         /* set by abort or a fatal backend error; read by a watchdog thread */
  atomic_int abort_requested; /* set by epm_comm_request_abort from any thread */
  void *impl;  /* backend state */
  epm_comm_traffic_t traffic; /* comm.c counts successful data collectives */
};

/* Honour a requested abort (call at every poll and call boundary): returns
 * EPM_ERR_ABORTED once the comm is aborted, else EPM_OK. */
epm_status_t epm__comm_abort_point(epm_comm_t *c, const char *what);

/* Backend constructors (fill c->ops, c->impl, rank, size). */
epm_status_t epm__comm_mpi_open(epm_comm_t *c, const epm_bootstrap_t *boot);
epm_status_t epm__comm_nccl_open(epm_comm_t *c, const epm_bootstrap_t *boot,
                                 const epm_comm_opts_t *opts);

/* The MPI backend's all-to-all (comm_mpi_a2a.c) and what it borrows from
 * comm_mpi.c: the private communicator (an MPI_Comm*, as void*), the
 * backend's grow-only scratch and request array (an MPI_Request*). MPI
 * errors go through comm/mpi_status.h like everywhere in comm/. */
epm_status_t epm__mpi_exchange_rows(epm_comm_t *c, const int64_t *mine, int n, int64_t *all);
epm_status_t epm__mpi_alltoallv(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                const int64_t *counts, int64_t send_total, int64_t recv_total);
void *epm__comm_mpi_handle(epm_comm_t *c);
epm_status_t epm__comm_mpi_scratch(epm_comm_t *c, size_t bytes, void **out);
epm_status_t epm__comm_mpi_requests(epm_comm_t *c, size_t n, void **out);

/* The EP group's MPI communicator of a bootstrap (an MPI_Comm*, as void* so
 * this header stays free of mpi.h). */
void *epm__bootstrap_ep_mpi_comm(const epm_bootstrap_t *boot);

#endif /* EPMOE_COMM_IMPL_H */
