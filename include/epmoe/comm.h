/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/comm.h — the collectives of one EP step, behind one small interface.
 *
 * A comm (opaque epm_comm_t) spans the EP group of a bootstrap. Two backends:
 *   EPM_COMM_MPI   host memory, MPI collectives, deterministic sums. Runs any EP
 *                  size on CPUs (the step's reference and CI path).
 *   EPM_COMM_NCCL  device memory, NCCL on a CUDA stream given at creation
 *                  (CUDA builds only; EPM_ERR_NOT_SUPPORTED otherwise).
 * epm_comm_mem_kind() says where data buffers must live; epm_comm_alloc()
 * allocates that kind. Counts, sizes and scalars passed as int64_t* arrays are
 * always HOST memory, whatever the backend.
 *
 * Rules shared by every collective:
 *  - Every rank of the group calls every collective, in the same order, with the
 *    same counts[] (from epm_comm_exchange_sizes) and the same elem_size /
 *    row_elems / dtype. A rank with 0 rows still calls (m_r = 0 is legal, and
 *    so is all zero); it may pass NULL for a buffer of 0 bytes.
 *  - One thread at a time per comm.
 *  - Counts are int64 rows; byte sizes are size_t and overflow-checked. There
 *    is no 2^31 limit: the MPI backend splits calls above INT_MAX (Open MPI 4.1
 *    has no large-count API), NCCL counts are size_t.
 *  - "Rank order": in a gathered array, rank r's rows start at row
 *    off_r = counts[0] + ... + counts[r-1]; M = counts[0] + ... + counts[P-1].
 *  - MPI operations are complete on return. NCCL operations are enqueued on the
 *    comm's stream and complete when the stream does: the caller orders its own
 *    kernels on that stream, or calls epm_comm_wait() (bounded wait + abort).
 *  - After an error on an NCCL comm, or after epm_comm_abort(), the comm only
 *    returns EPM_ERR_ABORTED; destroy it.
 */
#ifndef EPMOE_COMM_H
#define EPMOE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/bootstrap.h"
#include "epmoe/dtype.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_comm epm_comm_t;

typedef enum { EPM_COMM_MPI = 0, EPM_COMM_NCCL = 1 } epm_comm_backend_t;
typedef enum { EPM_MEM_HOST = 0, EPM_MEM_DEVICE = 1 } epm_mem_kind_t;

typedef struct {
  epm_comm_backend_t backend;
  /* NCCL: the cudaStream_t every operation is enqueued on (NULL = default stream). */
  void *stream;
  /* NCCL: limit for communicator init and for epm_comm_wait(); <= 0 -> 300 s. */
  double timeout_s;
} epm_comm_opts_t;

/* Collective over the bootstrap's EP group. */
epm_status_t epm_comm_create(const epm_bootstrap_t *boot, const epm_comm_opts_t *opts,
                             epm_comm_t **out);
/* Collective for a healthy comm; local (no communication) for an aborted one. NULL ok. */
void epm_comm_destroy(epm_comm_t *c);

int epm_comm_rank(const epm_comm_t *c);
int epm_comm_size(const epm_comm_t *c);
epm_comm_backend_t epm_comm_backend(const epm_comm_t *c);
const char *epm_comm_backend_name(const epm_comm_t *c); /* "mpi" | "nccl" */
/* Where data buffers of this comm live: HOST for mpi, DEVICE for nccl. */
epm_mem_kind_t epm_comm_mem_kind(const epm_comm_t *c);

/* Memory of the comm's kind (host: 64-byte aligned; device: cudaMalloc on
 * the bootstrap's GPU). bytes == 0 gives *out = NULL and OK. */
epm_status_t epm_comm_alloc(epm_comm_t *c, size_t bytes, void **out);
void epm_comm_free(epm_comm_t *c, void *p);

/* Sizes exchange: every rank contributes `mine`; all[P] (host) gets every
 * rank's value in rank order. Any int64 is carried unchecked, so a rank can
 * send a sentinel (e.g. "I failed") and every rank learns it in the same
 * step; the receiver validates. Always completes before return (host result),
 * for both backends. */
epm_status_t epm_comm_exchange_sizes(epm_comm_t *c, int64_t mine, int64_t *all);

/* Allgather-v: rank r contributes counts[r] rows of elem_size bytes from send;
 * recv (M * elem_size bytes) receives every rank's rows in rank order. send
 * must not overlap recv. */
epm_status_t epm_comm_allgatherv(epm_comm_t *c, const void *send, void *recv,
                                 const int64_t *counts, size_t elem_size);

/* Several arrays with the same row counts (e.g. fp4 rows, scales, top-k ids,
 * top-k weights) in one call: as epm_comm_allgatherv for each buffer. NCCL
 * issues them as one fused group (at most 2048 calls: nbufs x P); MPI packs
 * each rank's rows of all arrays into one block and runs one collective. */
typedef struct {
  const void *send;
  void *recv;
  size_t elem_size; /* bytes per row of this array */
} epm_comm_gather_buf_t;
epm_status_t epm_comm_allgatherv_multi(epm_comm_t *c, const epm_comm_gather_buf_t *bufs,
                                       int nbufs, const int64_t *counts);

/* Reduce-scatter-v with sum: send holds M * row_elems elements of dtype (every
 * rank's full partial result, rows in rank order); recv (counts[me] *
 * row_elems elements) receives rows [off_me, off_me + counts[me]) summed over
 * all ranks. send must not overlap recv.
 * MPI: the sum is exactly ((x_0 + x_1) + x_2) + ... + x_{P-1} in fp32 (rank
 *   order), bit-identical on every run; bf16 inputs are widened, summed in
 *   fp32 in rank order and rounded once to bf16 (nearest even).
 * NCCL: NCCL's own reduction order (for bf16, per-step bf16 rounding). */
epm_status_t epm_comm_reduce_scatterv(epm_comm_t *c, const void *send, void *recv,
                                      const int64_t *counts, int64_t row_elems,
                                      epm_dtype_t dtype);

/* Rows exchange: the sizes exchange with n values per rank. Rank r's
 * mine[0..n) lands in all[r*n .. r*n+n) (host, P*n values) on every rank.
 * Any value travels unchecked (sentinels, as for epm_comm_exchange_sizes);
 * n is the same on every rank, 1 <= n <= 2^20. Host result, complete on
 * return, both backends. The all-to-all step exchanges each rank's
 * per-destination row counts this way, so that every rank sees the whole
 * count matrix (every rank's receive total, for a capacity check that fails
 * on all ranks alike, and the bytes of both dispatch modes). */
epm_status_t epm_comm_exchange_rows(epm_comm_t *c, const int64_t *mine, int n, int64_t *all);

/* All-to-all-v of byte rows. counts is the P x P count matrix, the same on
 * every rank (as the counts of the other collectives; build it with
 * epm_comm_exchange_rows): counts[s*P + d] = rows of elem_size bytes that
 * rank s sends to rank d. This rank sends row `me` of it: send holds its rows
 * for rank 0, then for rank 1, ..., contiguous; and receives column `me`:
 * recv gets the rows from rank 0, then rank 1, ... (rank order of the
 * source). Counts may be 0 anywhere, also all of them; every rank still
 * calls. send must not overlap recv. There is no 2^31 limit.
 * MPI: one MPI_Alltoallv when every rank's send and receive bytes fit the
 *   MPI count limit (decided from the matrix, so alike on every rank), else
 *   point-to-point pieces of at most that limit (the local block a memcpy).
 * NCCL: one group of ncclSend/ncclRecv per peer with rows (the local block
 *   a device copy), on the comm's stream. */
epm_status_t epm_comm_alltoallv(epm_comm_t *c, const void *send, void *recv, const int64_t *counts,
                                size_t elem_size);
/* Several arrays with the same counts in one exchange (fp4 rows, scales,
 * ids, weights), as epm_comm_alltoallv for each. MPI packs each
 * destination's rows of all arrays into one block (one exchange); NCCL
 * issues all of them in one group (at most 2048 calls: nbufs x 2 x peers). */
epm_status_t epm_comm_alltoallv_multi(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                      const int64_t *counts);

/* Payload bytes this comm moved to and from OTHER ranks in its data
 * collectives since creation (allgather-v, reduce-scatter-v, all-to-all-v;
 * not the sizes/rows exchange, the all-reduce max or the barrier), counted
 * from the arguments of each successful call as the algorithm's logical
 * bytes (what the anchors call logical bandwidth, not wire bytes):
 *   allgather-v       sent (P-1) x own rows, received the other ranks' rows
 *   reduce-scatter-v  sent the rows of the other ranks' segments, received
 *                     (P-1) x own segment
 *   all-to-all-v      rows to / from every rank but itself
 * Read it on the thread that calls the collectives (no lock). */
typedef struct {
  uint64_t bytes_sent;
  uint64_t bytes_recv;
  uint64_t calls; /* data collectives counted */
} epm_comm_traffic_t;
void epm_comm_traffic(const epm_comm_t *c, epm_comm_traffic_t *out);

/* In-place all-reduce max of n floats in the comm's memory kind (the dynamic
 * global scale: every rank's amax -> the group's amax). */
epm_status_t epm_comm_allreduce_max_f32(epm_comm_t *c, float *buf, int64_t n);

epm_status_t epm_comm_barrier(epm_comm_t *c);

/* NCCL: wait until the comm's stream has finished, polling the stream and the
 * communicator's async error; on an error or after timeout_s (<= 0: the
 * comm's timeout) the communicator is aborted and EPM_ERR_NCCL /
 * EPM_ERR_TIMEOUT returned. MPI: returns OK at once (operations are done). */
epm_status_t epm_comm_wait(epm_comm_t *c, double timeout_s);

/* Watchdog poll, cheap, callable from another thread: OK, EPM_ERR_NCCL (async
 * error reported by NCCL), EPM_ERR_ABORTED (already aborted). MPI: OK unless
 * aborted. */
epm_status_t epm_comm_check_async(epm_comm_t *c);

/* Make operations fail instead of hang. NCCL: ncclCommAbort now (from a
 * watchdog thread only while no other thread is inside a call of this comm;
 * otherwise use epm_comm_request_abort); peers must abort their comms too. MPI: without ULFM a blocked
 * collective cannot be cancelled, so this calls MPI_Abort on the EP group,
 * which ends the job's processes: the one place the library ends a process,
 * and only when asked to. */
void epm_comm_abort(epm_comm_t *c);

/* Watchdog-safe abort request: only sets a flag, so it is safe from any
 * thread at any time. The thread inside (or next entering) a comm call acts
 * on it: NCCL polls the flag while it waits (epm_comm_wait and every
 * enqueue), runs ncclCommAbort itself and returns EPM_ERR_ABORTED within
 * about 50 us. MPI marks the comm aborted at the next call boundary without
 * ending the job; a peer blocked inside an MPI collective stays blocked
 * (use epm_comm_abort to end the job). */
void epm_comm_request_abort(epm_comm_t *c);

/* Test hook, MPI backend: the largest count passed to one MPI call (default
 * INT_MAX; independently every message stays <= 1 GiB). Setting e.g. 7 makes
 * every transfer above 7 bytes or elements take the chunked paths, so tests
 * exercise them without 8 GB buffers. Process-wide; n <= 0 restores the
 * default. Must be the same on all ranks. */
void epm_comm_mpi_set_max_count(int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_COMM_H */
