/* SPDX-License-Identifier: Apache-2.0 */
/* test_comm_large.c — a real allgather-v past INT_MAX bytes (label large).
 *
 * No test hook: rank 0 contributes 2^28 + 1 rows of 8 bytes (2 GiB + 8), the
 * other ranks a few rows, so the receive buffer passes 2^31 bytes and the
 * chunked path runs with MPI's real int limit. About 4.3 GB on rank 0 and
 * 2.2 GB on each other rank. Every 8-byte word is checked.
 */
#include "comm_check.h"
#include "epmoe/comm.h"

static uint64_t word(int rank, int64_t j) { return cc_mix(((uint64_t)rank << 56) ^ (uint64_t)j); }

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  const int P = boot.ep_size, me = boot.ep_rank;
  CHECK(P <= 16, "up to 16 ranks");
  epm_comm_t *c;
  CHECK_OK(epm_comm_create(&boot, NULL, &c));

  int64_t counts[16], total = 0;
  for (int r = 0; r < P; r++) total += counts[r] = r == 0 ? ((int64_t)1 << 28) + 1 : 3 + r;
  CHECK(total * 8 > (int64_t)INT32_MAX, "total %lld bytes", (long long)(total * 8));
  uint64_t *send = NULL, *recv = NULL;
  CHECK_OK(epm_comm_alloc(c, (size_t)counts[me] * 8, (void **)&send));
  CHECK_OK(epm_comm_alloc(c, (size_t)total * 8, (void **)&recv));
  for (int64_t j = 0; j < counts[me]; j++) send[j] = word(me, j);
  memset(recv, 0xA5, (size_t)total * 8);
  double t0 = MPI_Wtime();
  CHECK_OK(epm_comm_allgatherv(c, send, recv, counts, 8));
  double t1 = MPI_Wtime();
  int64_t pos = 0;
  for (int r = 0; r < P; r++)
    for (int64_t j = 0; j < counts[r]; j++, pos++)
      CHECK(recv[pos] == word(r, j), "word %lld (rank %d's %lld) wrong", (long long)pos, r, (long long)j);
  if (me == 0)
    printf("allgatherv of %lld bytes over %d ranks: %.2f s\n", (long long)(total * 8), P, t1 - t0);
  epm_comm_free(c, send);
  epm_comm_free(c, recv);
  epm_comm_destroy(c);
  epm_bootstrap_finalize(&boot);
  return 0;
}
