/* SPDX-License-Identifier: Apache-2.0 */
/* test_bootstrap_mpi.c — epm_bootstrap_init under mpirun: the rank layout,
 * a refused launch returns (never exits) on every rank, and one rank's
 * failure is reported on all ranks. */
#include "comm_check.h"
#include "epmoe/bootstrap.h"

int main(int argc, char **argv) {
  /* MPI is started here, so bootstrap_init takes the "already initialised"
   * path and the test can change the launcher environment it reads. */
  MPI_Init(&argc, &argv);
  int wr, ws;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &ws);

  epm_bootstrap_t b;
  epm_bootstrap_opts_t off = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &off, &b));
  CHECK(b.world_rank == wr && b.world_size == ws, "world %d/%d vs MPI %d/%d", b.world_rank, b.world_size, wr, ws);
  CHECK(b.ep_rank == wr && b.ep_size == ws, "EP group is the world");
  CHECK(b.local_size >= 1 && b.local_size <= ws && b.local_rank < b.local_size, "local %d/%d", b.local_rank,
        b.local_size);
  CHECK(b.gpu == -1 && b.owns_mpi == 0, "gpu %d owns_mpi %d", b.gpu, b.owns_mpi);
  CHECK(b.thread_level >= MPI_THREAD_SINGLE, "thread level %d", b.thread_level);
  /* All ranks of one test run share a node: local == world here. */
  int lsum = 0;
  MPI_Allreduce(&b.local_size, &lsum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  CHECK(lsum == ws * ws, "local sizes sum %d", lsum);
  epm_bootstrap_finalize(&b);

  if (ws == 1) {
    /* A world of 1 while the launcher claims 4 tasks. */
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMI_SIZE");
    unsetenv("SLURM_STEP_NUM_TASKS");
    setenv("SLURM_NTASKS", "4", 1);
    epm_status_t st = epm_bootstrap_init(&argc, &argv, &off, &b);
    CHECK(st == EPM_ERR_INVALID_ARG, "mis-launch gave %s", epm_status_name(st));
    CHECK(strstr(epm_last_error(), "SLURM_NTASKS=4") != NULL, "message: %s", epm_last_error());
    printf("refused as expected: %s\n", epm_last_error());
    unsetenv("SLURM_NTASKS");
  } else {
    int ngpu = 0;
    CHECK_OK(epm_gpu_count(&ngpu));
    int any_gpu = 0;
    MPI_Allreduce(&ngpu, &any_gpu, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any_gpu == 0) {
      /* Only the last rank demands a GPU: it fails with its own reason, the
       * others learn of it instead of waiting in a later collective. */
      epm_bootstrap_opts_t o = {.gpu_mode = wr == ws - 1 ? EPM_GPU_REQUIRE : EPM_GPU_OFF};
      epm_status_t st = epm_bootstrap_init(&argc, &argv, &o, &b);
      if (wr == ws - 1)
        CHECK(st == EPM_ERR_NOT_SUPPORTED && strstr(epm_last_error(), "no CUDA device"), "%s: %s",
              epm_status_name(st), epm_last_error());
      else
        CHECK(st == EPM_ERR_ABORTED && strstr(epm_last_error(), "another rank"), "%s: %s",
              epm_status_name(st), epm_last_error());
    }
  }
  /* Still usable afterwards. */
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &off, &b));
  epm_bootstrap_finalize(&b);
  MPI_Finalize();
  return 0;
}
