/* SPDX-License-Identifier: Apache-2.0 */
/* mpi_chunk.h — private: how the MPI backend fits 64-bit sizes into MPI's int
 * counts and displacements (Open MPI 4.1 has no MPI_*_c large-count calls).
 *
 * The limit is INT_MAX by default; epm_comm_mpi_set_max_count() lowers it so
 * tests drive the chunked paths with small buffers.
 */
#ifndef EPMOE_MPI_CHUNK_H
#define EPMOE_MPI_CHUNK_H

#include <stddef.h>
#include <stdint.h>

/* The largest count (or displacement) of elem_size-byte elements one MPI
 * call may take now: the test-hook/INT_MAX count limit, and at most 1 GiB
 * per message (some transports compute message bytes as int, so count x
 * type size has to stay below 2^31 as well). */
int64_t epm__mpi_limit(size_t elem_size);

/* min(left, epm__mpi_limit(elem_size)) as an int (left >= 0). */
int epm__mpi_chunk_len(int64_t left, size_t elem_size);

/* How one allgather-v of byte rows goes over MPI. */
typedef enum {
  EPM__AGV_NONE = 0,  /* nothing to move (total is 0 bytes) */
  EPM__AGV_EQUAL,     /* MPI_Allgather: equal byte counts, total fits */
  EPM__AGV_VARIABLE,  /* MPI_Allgatherv: every count and displacement fits */
  EPM__AGV_CHUNKED,   /* per-root MPI_Bcast of pieces <= the limit */
} epm__agv_path_t;

/* Chooses the path for counts[P] rows of elem_size bytes. For EQUAL sets
 * bytes_each[0]; for VARIABLE fills bytes_each[P] and displs[P] (bytes).
 * Returns non-zero when a byte size overflows int64 (callers checked size_t
 * before, so this is a guard). */
int epm__mpi_agv_plan(const int64_t *counts, int nranks, size_t elem_size,
                      epm__agv_path_t *path, int *bytes_each, int *displs);

#endif /* EPMOE_MPI_CHUNK_H */
