/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_drive.h — driving collective steps through every rank's socket at once
 * (epmoectl forward and bench): one client connection and one thread per
 * rank, the global token set split over the ranks in rank order. */
#ifndef EPMOE_CTL_DRIVE_H
#define EPMOE_CTL_DRIVE_H

#include <pthread.h>
#include <stdint.h>

#include "ctl_common.h"
#include "epmoe/model.h"

typedef struct {
  int nranks;
  ctl_sock_t *socks;
  epm_client_t **cl;
  epm_client_info_t info;
  int64_t *m;     /* tokens per rank */
  int64_t *off;   /* first global token of each rank */
  int64_t total;  /* M */
  int shm;        /* 1: memfd region per connection, 2: CUDA device region (device = rank),
                     3: the same via a legacy cudaIpcMemHandle_t */
  uint16_t *x;    /* global bf16 [M, H] */
  float *logits;  /* global fp32 [M, E] */
  uint16_t *y;    /* global bf16 [M, H] results */
  void **region;  /* shm: per rank base; layout x | logits | y */
  uint32_t step_flags;       /* FORWARD options (ctl_drive_set_options); default: shared expert */
  epm_dtype_t partial_dtype; /* default f32 */
  uint64_t *step_ns; /* per rank, last step */
  char **err;     /* per rank, last error (malloc'd) */
  epm_status_t *st;
  /* what rank 0's STATUS says the model is (for inputs and --check) */
  int have_dims;
  epm_model_dims_t dims;
  char preset[32], model_dir[512];
  uint64_t weight_seed;
} ctl_drive_t;

/* Connect + HELLO every rank, check they agree, allocate the global set.
 * counts: n values, n must equal the number of sockets. Returns 0 or prints
 * and returns 1. */
/* How --shm/--devmem/--devipc pass data, for the summary lines. */
const char *ctl_drive_mode_name(int shm);
int ctl_drive_open(ctl_drive_t *d, const ctl_target_opts_t *o, const int64_t *counts, int n, int shm,
                   const char *cmd);
/* Fill x/logits from a file (x then logits), or the seeded global token set
 * (epm_tokens_generate for a real model, so `epmoectl step --seed S` sends the
 * same tokens; a simple generator when the model is not readable here). */
int ctl_drive_fill(ctl_drive_t *d, uint64_t seed, const char *input_file, const char *cmd);
/* The step options every rank's FORWARDs carry from now on (and that
 * ctl_reference follows: the shared expert or not). 0 or prints and 1. */
int ctl_drive_set_options(ctl_drive_t *d, uint32_t flags, epm_dtype_t partial_dtype, const char *cmd);
/* One collective step: every rank's thread sends its share at once. Returns
 * the number of ranks that failed (messages in d->err). */
int ctl_drive_step(ctl_drive_t *d, uint32_t layer, uint64_t step_id);
void ctl_drive_close(ctl_drive_t *d);

/* Reference output for the global set (the MoE layer's CPU reference), when
 * the served model (preset or checkpoint) is readable here.
 * Returns 0, or -1 with a reason in why. */
int ctl_reference(const ctl_drive_t *d, uint32_t layer, uint16_t *y_ref, char *why, size_t n);

#endif
