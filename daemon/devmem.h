/* SPDX-License-Identifier: Apache-2.0 */
/* devmem.h — CUDA device memory shared between a client and epmoed as a
 * cuMemCreate allocation exported to a POSIX file descriptor (passed over
 * SCM_RIGHTS: the fd is the capability, only the connected peer receives it),
 * or, as the legacy fallback, a cudaMalloc allocation named by a
 * cudaIpcMemHandle_t (64 bytes in the DEV_ATTACH frame).
 * client_devmem_cuda.c implements it with the driver's VMM API (looked up
 * through cudart, so nothing links libcuda); client_devmem_nocuda.c answers
 * EPM_ERR_NOT_SUPPORTED. Used by libepmoe_client (export side) and by the
 * daemon (import side). Not thread-safe per object; copies set the device. */
#ifndef EPMOE_DEVMEM_H
#define EPMOE_DEVMEM_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

typedef struct epm_devmem epm_devmem_t;

/* Allocate >= bytes on `device` (rounded up to the allocation granularity),
 * exportable as a POSIX fd, mapped read/write here. */
epm_status_t epm_devmem_create(int device, size_t bytes, epm_devmem_t **out);
/* Import an exported allocation (fd not closed) and map it on `device`;
 * `bytes` is what the peer claims; the driver rejects a size that does not
 * match the exported allocation. */
epm_status_t epm_devmem_import(int fd, size_t bytes, int device, epm_devmem_t **out);
/* Legacy IPC fallback. create_ipc: cudaMalloc >= bytes on `device`.
 * ipc_handle: its cudaIpcMemHandle_t (EPM_DEV_IPC_HANDLE_BYTES bytes).
 * open_ipc: cudaIpcOpenMemHandle on `device`; fails when `bytes` exceeds the
 * allocation the handle names; free closes it (cudaIpcCloseMemHandle). */
epm_status_t epm_devmem_create_ipc(int device, size_t bytes, epm_devmem_t **out);
epm_status_t epm_devmem_ipc_handle(epm_devmem_t *m, uint8_t handle[64]);
epm_status_t epm_devmem_open_ipc(const uint8_t handle[64], size_t bytes, int device, epm_devmem_t **out);
/* A new fd for the allocation (caller closes it). */
epm_status_t epm_devmem_export_fd(epm_devmem_t *m, int *fd);
uint64_t epm_devmem_ptr(const epm_devmem_t *m); /* device address (CUdeviceptr) */
size_t epm_devmem_size(const epm_devmem_t *m);
epm_status_t epm_devmem_to_host(epm_devmem_t *m, size_t off, void *dst, size_t n);
epm_status_t epm_devmem_from_host(epm_devmem_t *m, size_t off, const void *src, size_t n);
void epm_devmem_free(epm_devmem_t *m); /* NULL ok */

#endif
