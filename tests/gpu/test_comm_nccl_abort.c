/* SPDX-License-Identifier: Apache-2.0 */
/* test_comm_nccl_abort.c — a collective that a peer never joins ends in
 * EPM_ERR_TIMEOUT (communicator aborted), not a hang; a requested abort ends
 * the next call with EPM_ERR_ABORTED. NP 2, one GPU per rank; exits 77 on
 * every rank without GPUs.
 */
#include <cuda_runtime_api.h>

#include "../mpi/comm_check.h"
#include "epmoe/comm.h"

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  cc_skip_without_gpu();
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_REQUIRE};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  const int me = boot.ep_rank, P = boot.ep_size;
  CHECK(P >= 2, "needs 2 ranks");
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream) == cudaSuccess, "stream");
  epm_comm_opts_t on = {.backend = EPM_COMM_NCCL, .stream = stream, .timeout_s = 60};
  epm_comm_t *c;
  CHECK_OK(epm_comm_create(&boot, &on, &c));

  int64_t counts[64];
  for (int r = 0; r < P; r++) counts[r] = 1024;
  void *send, *recv;
  CHECK_OK(epm_comm_alloc(c, 1024, &send));
  CHECK_OK(epm_comm_alloc(c, (size_t)P * 1024, &recv));
  /* Warm-up: connections are set up and a full collective completes. */
  CHECK_OK(epm_comm_allgatherv(c, send, recv, counts, 1));
  CHECK_OK(epm_comm_wait(c, 60));

  if (me == 0) {
    /* Rank 0 alone enters the next collective: it must give up in ~2 s. */
    epm_status_t st = epm_comm_allgatherv(c, send, recv, counts, 1);
    if (st == EPM_OK) st = epm_comm_wait(c, 2.0);
    CHECK(st == EPM_ERR_TIMEOUT, "lone collective gave %s: %s", epm_status_name(st), epm_last_error());
    printf("lone collective: %s\n", epm_last_error());
    CHECK(epm_comm_check_async(c) == EPM_ERR_ABORTED, "comm not marked aborted");
    CHECK(epm_comm_barrier(c) == EPM_ERR_ABORTED, "call after timeout");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (me != 0) {
    epm_comm_request_abort(c); /* what a watchdog would do */
    epm_status_t st = epm_comm_wait(c, 5);
    CHECK(st == EPM_ERR_ABORTED, "requested abort gave %s: %s", epm_status_name(st), epm_last_error());
  }
  epm_comm_free(c, send);
  epm_comm_free(c, recv);
  epm_comm_destroy(c); /* aborted: local only */
  cudaStreamDestroy(stream);
  MPI_Barrier(MPI_COMM_WORLD);
  if (me == 0) printf("comm nccl abort/timeout: ok\n");
  epm_bootstrap_finalize(&boot);
  MPI_Finalize();
  return 0;
}
