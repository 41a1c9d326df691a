/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/bootstrap.h — process start-up for an EP job: MPI, ranks, GPU pick.
 *
 * One call per process, before any comm is created:
 *
 *   epm_bootstrap_t boot;
 *   epm_bootstrap_opts_t o = {.gpu_mode = EPM_GPU_AUTO};
 *   EPM_TRY(epm_bootstrap_init(&argc, &argv, &o, &boot));
 *   ... epm_comm_create(&boot, ...) ...
 *   epm_bootstrap_finalize(&boot);
 *
 * What it does, in order:
 *  1. MPI_Init_thread asking for MPI_THREAD_MULTIPLE (skipped when MPI is already
 *     initialised); the level MPI granted is in thread_level (not an error when
 *     lower: the comm layer itself is used from one thread at a time).
 *  2. World rank/size; node-local rank/size from MPI_Comm_split_type(SHARED).
 *  3. EP group: the whole world today. The struct carries ep_rank/ep_size and a
 *     private EP communicator so an EP subset of the world can come later
 *     without changing callers.
 *  4. Launch check (epm_bootstrap_check_launch): a world of 1 while the launcher
 *     says more tasks, or more local ranks than GPUs in GPU mode, is refused with
 *     one line naming both numbers.
 *  5. GPU choice: gpu = local_rank when GPU mode is on (cudaSetDevice).
 * The launch-check outcome is agreed on by all ranks (an all-reduce), so either
 * every rank returns OK or every rank returns an error: no rank is left waiting
 * in a later collective.
 */
#ifndef EPMOE_BOOTSTRAP_H
#define EPMOE_BOOTSTRAP_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_GPU_AUTO = 0,    /* use GPUs when this process sees any, else CPU */
  EPM_GPU_OFF = 1,     /* never touch CUDA (gpu = -1) */
  EPM_GPU_REQUIRE = 2, /* error when no GPU is visible */
} epm_gpu_mode_t;

typedef struct {
  epm_gpu_mode_t gpu_mode;
} epm_bootstrap_opts_t;

struct epm__boot_mpi; /* private: the MPI communicators (comm/bootstrap.c) */

typedef struct {
  int thread_level;    /* MPI_THREAD_* that MPI provided */
  int world_rank, world_size;
  int local_rank, local_size; /* within this node (shared-memory domain) */
  int ep_rank, ep_size;       /* rank within the EP group (= world for now) */
  int gpu_count;              /* CUDA devices visible to this process (0 without CUDA) */
  int gpu;                    /* device ordinal in use, -1 = CPU mode */
  int owns_mpi;               /* 1 when init called MPI_Init_thread (finalize ends MPI) */
  struct epm__boot_mpi *mpi;
} epm_bootstrap_t;

/* argc/argv may be NULL. On error the communicators are already freed and
 * MPI is left initialised: print epm_last_error(), then call
 * epm_bootstrap_finalize(out) (it ends MPI when init started it) and exit. */
epm_status_t epm_bootstrap_init(int *argc, char ***argv, const epm_bootstrap_opts_t *opts,
                                epm_bootstrap_t *out);
/* Frees the communicators; calls MPI_Finalize when init started MPI. */
void epm_bootstrap_finalize(epm_bootstrap_t *b);

/* The launch check on its own (pure apart from getenv), for tests and tools.
 * world_size: MPI's; local_size: ranks on this node; gpu_count: visible GPUs;
 * gpu_mode_on: whether ranks will each take a GPU.
 * Refuses: world_size == 1 while OMPI_COMM_WORLD_SIZE, PMI_SIZE,
 * SLURM_STEP_NUM_TASKS or SLURM_NTASKS (first one set, in that order: the
 * launcher that actually started us wins) says more than 1 task; and
 * local_size > gpu_count when gpu_mode_on. EPMOE_ALLOW_SINGLETON=1 skips the
 * first check (a deliberate single process inside a multi-task allocation). */
epm_status_t epm_bootstrap_check_launch(int world_size, int local_size, int gpu_count,
                                        int gpu_mode_on);

/* ---- host control collectives ------------------------------------------
 * Blocking MPI on the bootstrap's EP communicator, host memory, for set-up
 * agreement and tools (output gathers, checks), never on a step's data path.
 * Every rank of the EP group calls each of them, in the same order. */

/* Agree on a local outcome: *n_failed = ranks that passed ok == 0, and
 * *first_failed = the lowest of them (-1 when none). Identical on all ranks. */
epm_status_t epm_bootstrap_agree(const epm_bootstrap_t *b, int ok, int *n_failed, int *first_failed);
/* Sum (op 0) or max (op 1) of n int64 values, in place, on every rank. */
typedef enum { EPM_BOOT_SUM = 0, EPM_BOOT_MAX = 1 } epm_boot_op_t;
epm_status_t epm_bootstrap_allreduce_i64(const epm_bootstrap_t *b, int64_t *vals, int n, epm_boot_op_t op);
/* Gather `bytes` from every rank (sizes may differ, 0 is legal) to `root`,
 * concatenated in rank order into `recv` (root only; it must hold the sum).
 * Any size: messages are cut to MPI's int counts. *total_out (may be NULL)
 * gets the sum of all ranks' bytes on the root. */
epm_status_t epm_bootstrap_gather_bytes(const epm_bootstrap_t *b, int root, const void *send, size_t bytes,
                                        void *recv, size_t recv_cap, size_t *total_out);
/* Broadcast `bytes` from root (any size). */
epm_status_t epm_bootstrap_bcast_bytes(const epm_bootstrap_t *b, int root, void *buf, size_t bytes);

/* GPU probing (comm/gpu_probe_cuda.c; the *_nocuda.c build reports 0 devices).
 * A missing driver or no device is 0 devices, not an error. */
epm_status_t epm_gpu_count(int *count);
/* cudaSetDevice(dev); EPM_ERR_NOT_SUPPORTED without CUDA. */
epm_status_t epm_gpu_select(int dev);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_BOOTSTRAP_H */
