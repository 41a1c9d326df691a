/* SPDX-License-Identifier: Apache-2.0 */
/* comm_mpi_a2a.c — the MPI backend's rows exchange and all-to-all-v.
 *
 * The path is chosen from the whole count matrix, which every rank holds, so
 * every rank takes the same one (a collective entered by some ranks and not
 * by others would hang):
 *   - one MPI_Alltoallv of bytes when every rank's send and receive bytes
 *     fit the MPI count limit (epm__mpi_limit(1): INT_MAX and 1 GiB per
 *     message, or the test hook's lower value), so every count and
 *     displacement is an int;
 *   - otherwise point-to-point: each peer's block in pieces of at most the
 *     limit, every receive and send posted, then one wait. The pieces of one
 *     pair travel on one tag of the private communicator, and MPI messages
 *     between two ranks on one tag do not overtake, so piece j lands at
 *     offset j x limit. The local block is a memcpy.
 * Several arrays are packed per destination into one block first (one
 * exchange instead of four, as the allgather-v does), then unpacked per
 * source.
 */
#include <mpi.h>
#include <string.h>

#include "comm_impl.h"
#include "epmoe/checked.h"
#include "mpi_chunk.h"
#include "mpi_status.h"

enum { A2A_TAG = 0x4541 }; /* "EA": all-to-all pieces; the reduce-scatter uses its own tag */

static MPI_Comm comm_of(epm_comm_t *c) { return *(MPI_Comm *)epm__comm_mpi_handle(c); }

static int64_t at(const int64_t *counts, int P, int s, int d) {
  return counts[(size_t)s * (size_t)P + (size_t)d];
}

epm_status_t epm__mpi_exchange_rows(epm_comm_t *c, const int64_t *mine, int n, int64_t *all) {
  int rc = MPI_Allgather(mine, n, MPI_INT64_T, all, n, MPI_INT64_T, comm_of(c));
  return rc == MPI_SUCCESS ? EPM_OK : epm__mpi_status(rc, "exchange_rows: MPI_Allgather");
}

/* 1 when every rank's total send and receive bytes fit `lim` (then every
 * count and displacement of MPI_Alltoallv fits too). comm.c checked that the
 * row sums fit int64; bytes are checked here. */
static int fits_one_call(const int64_t *counts, int P, size_t row, int64_t lim) {
  for (int a = 0; a < P; a++) {
    int64_t snd = 0, rcv = 0;
    for (int b = 0; b < P; b++) {
      snd += at(counts, P, a, b);
      rcv += at(counts, P, b, a);
    }
    int64_t sb, rb;
    if (epm_mul_i64(snd, (int64_t)row, &sb) || epm_mul_i64(rcv, (int64_t)row, &rb)) return 0;
    if (sb > lim || rb > lim) return 0;
  }
  return 1;
}

/* ints: 4 x P ints of scratch that does not overlap send or recv. */
static epm_status_t a2a_collective(epm_comm_t *c, const char *send, char *recv, const int64_t *counts,
                                   size_t row, int *ints) {
  const int P = c->size, me = c->rank;
  int *scnt = ints, *sdsp = ints + (size_t)P, *rcnt = ints + 2 * (size_t)P, *rdsp = ints + 3 * (size_t)P;
  int64_t so = 0, ro = 0; /* fit the limit (fits_one_call), hence int */
  for (int r = 0; r < P; r++) {
    int64_t sb = at(counts, P, me, r) * (int64_t)row, rb = at(counts, P, r, me) * (int64_t)row;
    scnt[r] = (int)sb;
    sdsp[r] = (int)so;
    rcnt[r] = (int)rb;
    rdsp[r] = (int)ro;
    so += sb;
    ro += rb;
  }
  static char dummy; /* MPI wants valid pointers even for 0 bytes */
  int rc = MPI_Alltoallv(send ? send : &dummy, scnt, sdsp, MPI_BYTE, recv ? recv : &dummy, rcnt, rdsp, MPI_BYTE,
                         comm_of(c));
  return rc == MPI_SUCCESS ? EPM_OK : epm__mpi_status(rc, "alltoallv: MPI_Alltoallv");
}

static size_t pieces(int64_t bytes, int64_t lim) { return (size_t)((bytes + lim - 1) / lim); }

static epm_status_t a2a_pointwise(epm_comm_t *c, const char *send, char *recv, const int64_t *counts,
                                  size_t row) {
  const int P = c->size, me = c->rank;
  const int64_t lim = epm__mpi_limit(1);
  size_t nreq = 0;
  for (int r = 0; r < P; r++) {
    if (r == me) continue;
    nreq += pieces(at(counts, P, me, r) * (int64_t)row, lim) + pieces(at(counts, P, r, me) * (int64_t)row, lim);
  }
  MPI_Request *req = NULL;
  EPM_TRY(epm__comm_mpi_requests(c, nreq > 0 ? nreq : 1, (void **)&req));
  MPI_Comm comm = comm_of(c);
  size_t k = 0, so = 0, ro = 0;
  epm_status_t st = EPM_OK;
  for (int r = 0; r < P && st == EPM_OK; r++) {
    const size_t sb = (size_t)at(counts, P, me, r) * row, rb = (size_t)at(counts, P, r, me) * row;
    if (r == me) {
      if (sb) memcpy(recv + ro, send + so, sb);
    } else {
      for (size_t done = 0; done < rb && st == EPM_OK;) {
        int len = epm__mpi_chunk_len((int64_t)(rb - done), 1);
        int rc = MPI_Irecv(recv + ro + done, len, MPI_BYTE, r, A2A_TAG, comm, &req[k]);
        if (rc != MPI_SUCCESS) st = epm__mpi_status(rc, "alltoallv: MPI_Irecv");
        else k++;
        done += (size_t)len;
      }
      for (size_t done = 0; done < sb && st == EPM_OK;) {
        int len = epm__mpi_chunk_len((int64_t)(sb - done), 1);
        int rc = MPI_Isend(send + so + done, len, MPI_BYTE, r, A2A_TAG, comm, &req[k]);
        if (rc != MPI_SUCCESS) st = epm__mpi_status(rc, "alltoallv: MPI_Isend");
        else k++;
        done += (size_t)len;
      }
    }
    so += sb;
    ro += rb;
  }
  /* Posted requests are completed even after a failed post: buffers must
   * not be released under a pending transfer. */
  if (k > 0) {
    int rc = MPI_Waitall((int)k, req, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS && st == EPM_OK) st = epm__mpi_status(rc, "alltoallv: MPI_Waitall");
  }
  return st;
}

static epm_status_t a2a_bytes(epm_comm_t *c, const char *send, char *recv, const int64_t *counts, size_t row,
                              int *ints) {
  if (fits_one_call(counts, c->size, row, epm__mpi_limit(1)))
    return a2a_collective(c, send, recv, counts, row, ints);
  return a2a_pointwise(c, send, recv, counts, row);
}

epm_status_t epm__mpi_alltoallv(epm_comm_t *c, const epm_comm_gather_buf_t *bufs, int nbufs,
                                const int64_t *counts, int64_t send_total, int64_t recv_total) {
  const int P = c->size, me = c->rank;
  const size_t ints_bytes = 4 * (size_t)P * sizeof(int);
  char *scratch = NULL;
  if (nbufs == 1) {
    EPM_TRY(epm__comm_mpi_scratch(c, ints_bytes, (void **)&scratch));
    return a2a_bytes(c, bufs[0].send, bufs[0].recv, counts, bufs[0].elem_size, (int *)(void *)scratch);
  }
  /* scratch: [packed send | packed recv | pad to 8 | 4P ints] */
  size_t row = 0, sbytes, rbytes, ints_at, all;
  for (int i = 0; i < nbufs; i++)
    if (epm_add_size(row, bufs[i].elem_size, &row))
      return epm_error(EPM_ERR_OVERFLOW, "alltoallv: packed row of %d arrays overflows size_t", nbufs);
  if (epm_mul_size((size_t)send_total, row, &sbytes) || epm_mul_size((size_t)recv_total, row, &rbytes) ||
      epm_add_size(sbytes, rbytes, &ints_at) || epm_add_size(ints_at, 7, &ints_at) ||
      epm_add_size(ints_at & ~(size_t)7, ints_bytes, &all))
    return epm_error(EPM_ERR_OVERFLOW, "alltoallv: %lld + %lld rows of %zu packed bytes overflow size_t",
                     (long long)send_total, (long long)recv_total, row);
  ints_at &= ~(size_t)7;
  EPM_TRY(epm__comm_mpi_scratch(c, all, (void **)&scratch));
  char *psend = scratch, *precv = scratch + sbytes;
  size_t pos = 0;
  int64_t off = 0; /* row offset of destination d's rows in each array */
  for (int d = 0; d < P; d++) {
    const int64_t n = at(counts, P, me, d);
    for (int i = 0; i < nbufs; i++) {
      const size_t nb = (size_t)n * bufs[i].elem_size;
      if (nb) memcpy(psend + pos, (const char *)bufs[i].send + (size_t)off * bufs[i].elem_size, nb);
      pos += nb;
    }
    off += n;
  }
  EPM_TRY(a2a_bytes(c, psend, precv, counts, row, (int *)(void *)(scratch + ints_at)));
  pos = 0;
  off = 0; /* row offset of source s's rows in each array */
  for (int s = 0; s < P; s++) {
    const int64_t n = at(counts, P, s, me);
    for (int i = 0; i < nbufs; i++) {
      const size_t nb = (size_t)n * bufs[i].elem_size;
      if (nb) memcpy((char *)bufs[i].recv + (size_t)off * bufs[i].elem_size, precv + pos, nb);
      pos += nb;
    }
    off += n;
  }
  return EPM_OK;
}
