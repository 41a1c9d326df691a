/* SPDX-License-Identifier: Apache-2.0 */
/* bootstrap_ctl.c — host control collectives on the bootstrap's EP
 * communicator (include/epmoe/bootstrap.h): set-up agreement and the small
 * gathers tools need, so nothing outside comm/ calls MPI. Sizes are size_t;
 * every message is cut to what one MPI call may carry (mpi_chunk.h). */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "epmoe/bootstrap.h"
#include "mpi_chunk.h"
#include "mpi_status.h"

enum { TAG_GATHER = 7301 };


static epm_status_t ep_comm(const epm_bootstrap_t *b, MPI_Comm *out) {
  MPI_Comm *c = epm__bootstrap_ep_mpi_comm(b);
  if (!c) return epm_error(EPM_ERR_INVALID_ARG, "bootstrap control collective: the bootstrap is not initialised");
  *out = *c;
  return EPM_OK;
}

epm_status_t epm_bootstrap_agree(const epm_bootstrap_t *b, int ok, int *n_failed, int *first_failed) {
  MPI_Comm c = MPI_COMM_NULL;
  EPM_TRY(ep_comm(b, &c));
  /* Two small all-reduces: how many failed (sum), and the lowest that did (min). */
  int mine[2] = {ok ? 0 : 1, ok ? INT_MAX : b->ep_rank}, sum = 0, lowest = INT_MAX;
  int rc = MPI_Allreduce(&mine[0], &sum, 1, MPI_INT, MPI_SUM, c);
  if (rc != MPI_SUCCESS) return epm__mpi_status(rc, "MPI_Allreduce (set-up agreement)");
  rc = MPI_Allreduce(&mine[1], &lowest, 1, MPI_INT, MPI_MIN, c);
  if (rc != MPI_SUCCESS) return epm__mpi_status(rc, "MPI_Allreduce (set-up agreement)");
  *n_failed = sum;
  *first_failed = sum ? lowest : -1;
  return EPM_OK;
}

epm_status_t epm_bootstrap_allreduce_i64(const epm_bootstrap_t *b, int64_t *vals, int n, epm_boot_op_t op) {
  MPI_Comm c = MPI_COMM_NULL;
  EPM_TRY(ep_comm(b, &c));
  if (n < 0) return epm_error(EPM_ERR_INVALID_ARG, "allreduce of %d values", n);
  if (n == 0) return EPM_OK;
  int rc = MPI_Allreduce(MPI_IN_PLACE, vals, n, MPI_INT64_T, op == EPM_BOOT_MAX ? MPI_MAX : MPI_SUM, c);
  return rc == MPI_SUCCESS ? EPM_OK : epm__mpi_status(rc, "MPI_Allreduce (control)");
}

epm_status_t epm_bootstrap_gather_bytes(const epm_bootstrap_t *b, int root, const void *send, size_t bytes,
                                        void *recv, size_t recv_cap, size_t *total_out) {
  MPI_Comm c = MPI_COMM_NULL;
  EPM_TRY(ep_comm(b, &c));
  const int P = b->ep_size, me = b->ep_rank;
  if (root < 0 || root >= P) return epm_error(EPM_ERR_INVALID_ARG, "gather root %d outside [0, %d)", root, P);
  uint64_t mine = (uint64_t)bytes, *sizes = NULL;
  epm_status_t st = EPM_OK;
  if (me == root) {
    sizes = calloc((size_t)P, sizeof *sizes);
    if (!sizes) return epm_error(EPM_ERR_NOMEM, "gather sizes of %d ranks", P);
  }
  /* Sizes first, so the root can check its buffer before any data moves;
   * the verdict goes back to every rank so none blocks in a send the root
   * will never receive. */
  int rc = MPI_Gather(&mine, 1, MPI_UINT64_T, sizes, 1, MPI_UINT64_T, root, c);
  if (rc != MPI_SUCCESS) {
    free(sizes);
    return epm__mpi_status(rc, "MPI_Gather (gather sizes)");
  }
  int64_t verdict = 0; /* 0 ok, else the total that did not fit */
  size_t total = 0;
  if (me == root) {
    for (int r = 0; r < P; r++) {
      if (sizes[r] > SIZE_MAX - total) {
        verdict = -1;
        break;
      }
      total += (size_t)sizes[r];
    }
    if (!verdict && total > recv_cap) verdict = total > (size_t)INT64_MAX ? -1 : (int64_t)total;
  }
  rc = MPI_Bcast(&verdict, 1, MPI_INT64_T, root, c);
  if (rc != MPI_SUCCESS) {
    free(sizes);
    return epm__mpi_status(rc, "MPI_Bcast (gather verdict)");
  }
  if (verdict) {
    free(sizes);
    if (verdict < 0) return epm_error(EPM_ERR_OVERFLOW, "gather to rank %d: the ranks' byte counts overflow size_t", root);
    return epm_error(EPM_ERR_INVALID_ARG, "gather to rank %d: %lld bytes do not fit its buffer of %zu bytes", root,
                     (long long)verdict, recv_cap);
  }
  if (me != root) {
    const char *p = send;
    for (size_t done = 0; done < bytes && st == EPM_OK;) {
      int len = epm__mpi_chunk_len((int64_t)(bytes - done), 1);
      rc = MPI_Send(p + done, len, MPI_BYTE, root, TAG_GATHER, c);
      if (rc != MPI_SUCCESS) st = epm__mpi_status(rc, "MPI_Send (gather)");
      done += (size_t)len;
    }
    return st;
  }
  char *out = recv;
  size_t off = 0;
  for (int r = 0; r < P && st == EPM_OK; r++) {
    size_t n = (size_t)sizes[r];
    if (r == me) {
      if (n) memcpy(out + off, send, n);
    } else {
      for (size_t done = 0; done < n && st == EPM_OK;) {
        int len = epm__mpi_chunk_len((int64_t)(n - done), 1);
        rc = MPI_Recv(out + off + done, len, MPI_BYTE, r, TAG_GATHER, c, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) st = epm__mpi_status(rc, "MPI_Recv (gather)");
        done += (size_t)len;
      }
    }
    off += n;
  }
  free(sizes);
  if (total_out) *total_out = total;
  return st;
}

epm_status_t epm_bootstrap_bcast_bytes(const epm_bootstrap_t *b, int root, void *buf, size_t bytes) {
  MPI_Comm c = MPI_COMM_NULL;
  EPM_TRY(ep_comm(b, &c));
  if (root < 0 || root >= b->ep_size)
    return epm_error(EPM_ERR_INVALID_ARG, "broadcast root %d outside [0, %d)", root, b->ep_size);
  char *p = buf;
  for (size_t done = 0; done < bytes;) {
    int len = epm__mpi_chunk_len((int64_t)(bytes - done), 1);
    int rc = MPI_Bcast(p + done, len, MPI_BYTE, root, c);
    if (rc != MPI_SUCCESS) return epm__mpi_status(rc, "MPI_Bcast (control)");
    done += (size_t)len;
  }
  return EPM_OK;
}
