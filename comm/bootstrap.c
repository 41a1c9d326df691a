/* SPDX-License-Identifier: Apache-2.0 */
/* bootstrap.c — MPI start-up, rank layout, launch check and GPU pick. */
#include "epmoe/bootstrap.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "epmoe/log.h"
#include "mpi_status.h"

struct epm__boot_mpi {
  MPI_Comm local; /* ranks of this node */
  MPI_Comm ep;    /* the EP group (a dup of the world today) */
};

void *epm__bootstrap_ep_mpi_comm(const epm_bootstrap_t *boot) {
  return (boot && boot->mpi) ? &boot->mpi->ep : NULL;
}

/* Positive task count from a launcher variable, 0 when unset or not a number. */
static long env_tasks(const char *name) {
  const char *v = getenv(name);
  if (!v || !*v) return 0;
  char *end;
  long n = strtol(v, &end, 10);
  return (*end == '\0' && n > 0) ? n : 0;
}

epm_status_t epm_bootstrap_check_launch(int world_size, int local_size, int gpu_count,
                                        int gpu_mode_on) {
  /* The launcher that started this process knows the task count best: mpirun
   * sets OMPI_COMM_WORLD_SIZE (even under a Slurm allocation of more tasks),
   * PMI launchers PMI_SIZE; Slurm's own count is the fallback. */
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS",
                                     "SLURM_NTASKS"};
  const char *allow = getenv("EPMOE_ALLOW_SINGLETON");
  if (world_size == 1 && !(allow && strcmp(allow, "1") == 0)) {
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
      long n = env_tasks(vars[i]);
      if (n == 0) continue;
      if (n > 1)
        return epm_error(EPM_ERR_INVALID_ARG,
                         "mis-launch: %s=%ld tasks but MPI sees a world of 1 (launcher without MPI "
                         "wiring, e.g. srun without --mpi=pmix, or an MPI library mismatch; "
                         "EPMOE_ALLOW_SINGLETON=1 to run alone on purpose)",
                         vars[i], n);
      break;
    }
  }
  if (gpu_mode_on && local_size > gpu_count)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "mis-launch: %d ranks on this node but %d visible GPU(s); one GPU per rank "
                     "needed (check -np / --ntasks-per-node and CUDA_VISIBLE_DEVICES)",
                     local_size, gpu_count);
  return EPM_OK;
}

static void boot_free_comms(epm_bootstrap_t *b) {
  if (!b->mpi) return;
  if (b->mpi->local != MPI_COMM_NULL) MPI_Comm_free(&b->mpi->local);
  if (b->mpi->ep != MPI_COMM_NULL) MPI_Comm_free(&b->mpi->ep);
  free(b->mpi);
  b->mpi = NULL;
}

epm_status_t epm_bootstrap_init(int *argc, char ***argv, const epm_bootstrap_opts_t *opts,
                                epm_bootstrap_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "bootstrap: out is NULL");
  memset(out, 0, sizeof *out);
  out->gpu = -1;
  epm_gpu_mode_t mode = opts ? opts->gpu_mode : EPM_GPU_AUTO;

  int inited = 0, rc;
  MPI_Initialized(&inited);
  if (!inited) {
    rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &out->thread_level);
    if (rc != MPI_SUCCESS) return epm__mpi_status(rc, "bootstrap: MPI_Init_thread");
    out->owns_mpi = 1;
  } else {
    MPI_Query_thread(&out->thread_level);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &out->world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &out->world_size);
  epm_log_set_rank(out->world_rank, out->world_size);

  out->mpi = calloc(1, sizeof *out->mpi);
  if (!out->mpi) return epm_error(EPM_ERR_NOMEM, "bootstrap: communicator state");
  out->mpi->local = MPI_COMM_NULL;
  out->mpi->ep = MPI_COMM_NULL;
  epm_status_t st = EPM_OK;
  rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, out->world_rank, MPI_INFO_NULL,
                           &out->mpi->local);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "bootstrap: MPI_Comm_split_type(SHARED)");
    goto fail;
  }
  MPI_Comm_rank(out->mpi->local, &out->local_rank);
  MPI_Comm_size(out->mpi->local, &out->local_size);
  /* EP group = world. A later EP subset replaces this dup with a split. */
  rc = MPI_Comm_dup(MPI_COMM_WORLD, &out->mpi->ep);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "bootstrap: MPI_Comm_dup(world)");
    goto fail;
  }
  MPI_Comm_set_errhandler(out->mpi->ep, MPI_ERRORS_RETURN);
  MPI_Comm_rank(out->mpi->ep, &out->ep_rank);
  MPI_Comm_size(out->mpi->ep, &out->ep_size);

  /* Local checks, then one agreement so every rank fails or none does. */
  epm_status_t mine = EPM_OK;
  if (mode != EPM_GPU_OFF) mine = epm_gpu_count(&out->gpu_count);
  int gpu_on = mode == EPM_GPU_REQUIRE || (mode == EPM_GPU_AUTO && out->gpu_count > 0);
  if (mine == EPM_OK && mode == EPM_GPU_REQUIRE && out->gpu_count == 0)
    mine = epm_error(EPM_ERR_NOT_SUPPORTED, "bootstrap: GPU mode required but no CUDA device is visible");
  if (mine == EPM_OK) mine = epm_bootstrap_check_launch(out->world_size, out->local_size, out->gpu_count, gpu_on);
  if (mine == EPM_OK && gpu_on) {
    out->gpu = out->local_rank;
    mine = epm_gpu_select(out->gpu);
  }
  int bad = mine != EPM_OK, any_bad = bad;
  rc = MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, out->mpi->ep);
  if (rc != MPI_SUCCESS) {
    st = epm__mpi_status(rc, "bootstrap: MPI_Allreduce(launch check)");
    goto fail;
  }
  if (bad) {
    st = epm_error_wrap(mine, "rank %d/%d", out->world_rank, out->world_size);
    goto fail;
  }
  if (any_bad) {
    st = epm_error(EPM_ERR_ABORTED, "bootstrap: another rank failed its launch check (see its message)");
    goto fail;
  }
  if (out->thread_level < MPI_THREAD_MULTIPLE && out->world_rank == 0)
    EPM_LOG(EPM_LOG_INFO, "comm", "MPI provides thread level %d, not MPI_THREAD_MULTIPLE (%d): "
            "one thread at a time may call MPI", out->thread_level, MPI_THREAD_MULTIPLE);
  EPM_LOG(EPM_LOG_DEBUG, "comm", "bootstrap: world %d/%d local %d/%d ep %d/%d gpu %d of %d thread level %d",
          out->world_rank, out->world_size, out->local_rank, out->local_size, out->ep_rank, out->ep_size,
          out->gpu, out->gpu_count, out->thread_level);
  return EPM_OK;
fail:
  boot_free_comms(out);
  out->gpu = -1;
  return st;
}

void epm_bootstrap_finalize(epm_bootstrap_t *b) {
  if (!b) return;
  boot_free_comms(b);
  if (b->owns_mpi) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
    b->owns_mpi = 0;
  }
}
