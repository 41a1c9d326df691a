/* SPDX-License-Identifier: Apache-2.0 */
/* doorbell_gpu.h — the CUDA side of a doorbell in device mode
 * (docs/PROTOCOL.md "Doorbell"): the control page, registered for device
 * access, and the stream operations that ring it and wait for the answer.
 * Used by libepmoe_client (ring, wait) and the daemon (answer).
 * doorbell_gpu_cuda.c implements it with cudart (host registration) and the
 * driver's stream memory operations looked up through
 * cudaGetDriverEntryPointByVersion (nothing links libcuda);
 * doorbell_gpu_nocuda.c answers EPM_ERR_NOT_SUPPORTED.
 *
 * Every value written by ring and wait is a constant (ring = 1, ack = 0, the
 * step's m / layer / options), so a stream that rings and waits can be
 * captured in a CUDA graph and the graph replayed once per step. */
#ifndef EPMOE_DOORBELL_GPU_H
#define EPMOE_DOORBELL_GPU_H

#include <stdint.h>

#include "epmoe/doorbell.h"
#include "epmoe/status.h"

typedef struct epm_dbgpu epm_dbgpu_t;

/* Register the control page ctl (EPM_DB_CTL_BYTES of host memory, mapped
 * from the doorbell's memfd) for access from `device`'s streams. */
epm_status_t epm_dbgpu_register(epm_db_ctl_t *ctl, int device, epm_dbgpu_t **out);
void epm_dbgpu_free(epm_dbgpu_t *g); /* NULL ok; unregisters */

/* Client, on `stream` (a cudaStream_t / CUstream; NULL = the legacy default
 * stream): write m, layer, flags, partial_dtype, then ring = 1, ordered
 * after the work queued before it (x and logits written). */
epm_status_t epm_dbgpu_ring(epm_dbgpu_t *g, void *stream, uint32_t layer, int64_t m, uint32_t flags,
                            uint32_t partial_dtype);
/* Client, on `stream`: wait until ack == 1, then write ack = 0; work queued
 * after it sees y. */
epm_status_t epm_dbgpu_wait(epm_dbgpu_t *g, void *stream);
/* Daemon, on its `stream` after the step's work: done_seq = seq, then
 * ack = 1. */
epm_status_t epm_dbgpu_answer(epm_dbgpu_t *g, void *stream, uint64_t seq);

#endif
