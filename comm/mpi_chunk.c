/* SPDX-License-Identifier: Apache-2.0 */
/* mpi_chunk.c — chunk limits and the allgather-v path choice for MPI.
 * Compiled with -Wconversion: every narrowing to int is explicit and checked
 * against the limit first.
 */
#include "mpi_chunk.h"

#include <limits.h>
#include <stdatomic.h>

#include "epmoe/checked.h"
#include "epmoe/comm.h"

static _Atomic int64_t g_max_count = INT_MAX;

void epm_comm_mpi_set_max_count(int64_t n) {
  atomic_store(&g_max_count, (n <= 0 || n > INT_MAX) ? (int64_t)INT_MAX : n);
}

enum { MAX_MSG_SHIFT = 30 }; /* 1 GiB per MPI message */

int64_t epm__mpi_limit(size_t elem_size) {
  int64_t lim = atomic_load(&g_max_count);
  int64_t by_bytes = elem_size == 0 ? lim : (int64_t)(((size_t)1 << MAX_MSG_SHIFT) / elem_size);
  if (by_bytes < 1) by_bytes = 1;
  return lim < by_bytes ? lim : by_bytes;
}

int epm__mpi_chunk_len(int64_t left, size_t elem_size) {
  int64_t lim = epm__mpi_limit(elem_size);
  return (int)(left < lim ? left : lim);
}

int epm__mpi_agv_plan(const int64_t *counts, int nranks, size_t elem_size,
                      epm__agv_path_t *path, int *bytes_each, int *displs) {
  int64_t lim = epm__mpi_limit(1); /* the plan counts bytes */
  if (elem_size > (size_t)INT64_MAX) return 1;
  int64_t esz = (int64_t)elem_size;
  int64_t total = 0;
  int equal = 1;
  for (int r = 0; r < nranks; r++) {
    int64_t b;
    if (epm_mul_i64(counts[r], esz, &b) || epm_add_i64(total, b, &total)) return 1;
    if (counts[r] != counts[0]) equal = 0;
  }
  if (total == 0) {
    *path = EPM__AGV_NONE;
    return 0;
  }
  /* The whole receive buffer must be addressable by int displacements, so
   * total <= lim covers every count and displacement at once. */
  if (total > lim) {
    *path = EPM__AGV_CHUNKED;
    return 0;
  }
  if (equal) {
    *path = EPM__AGV_EQUAL;
    bytes_each[0] = (int)(counts[0] * esz);
    return 0;
  }
  *path = EPM__AGV_VARIABLE;
  int64_t off = 0;
  for (int r = 0; r < nranks; r++) {
    int64_t b = counts[r] * esz;
    bytes_each[r] = (int)b;
    displs[r] = (int)off;
    off += b;
  }
  return 0;
}
