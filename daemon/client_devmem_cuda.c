/* SPDX-License-Identifier: Apache-2.0 */
/* client_devmem_cuda.c — cuMemCreate + POSIX-fd export/import, and the
 * legacy cudaMalloc + cudaIpcMemHandle_t fallback (see devmem.h).
 * Driver entry points come from cudaGetDriverEntryPointByVersion, so the
 * binaries link cudart only and still start on machines without a driver. */
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/cuda_status.h"
#include "devmem.h"

struct epm_devmem {
  int device;
  size_t size;
  CUmemGenericAllocationHandle handle;
  CUdeviceptr ptr;
  int mapped;
  int ipc; /* 0: VMM (fd path); 1: cudaMalloc'd here; 2: opened from a peer's IPC handle */
};

_Static_assert(sizeof(cudaIpcMemHandle_t) == 64, "cudaIpcMemHandle_t is 64 bytes on the wire");

static struct {
  CUresult (*create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
  CUresult (*release)(CUmemGenericAllocationHandle);
  CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
  CUresult (*addr_free)(CUdeviceptr, size_t);
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  CUresult (*unmap)(CUdeviceptr, size_t);
  CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
  CUresult (*export_h)(void *, CUmemGenericAllocationHandle, CUmemAllocationHandleType, unsigned long long);
  CUresult (*import_h)(CUmemGenericAllocationHandle *, void *, CUmemAllocationHandleType);
  CUresult (*granularity)(size_t *, const CUmemAllocationProp *, CUmemAllocationGranularity_flags);
  CUresult (*range)(CUdeviceptr *, size_t *, CUdeviceptr); /* IPC size check; not part of drv_ok */
} drv;
static pthread_once_t drv_once = PTHREAD_ONCE_INIT;
static int drv_ok;

static void load_driver(void) {
  enum cudaDriverEntryPointQueryResult rq;
  if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", (void **)&drv.range, 12000, cudaEnableDefault, &rq) !=
          cudaSuccess ||
      rq != cudaDriverEntryPointSuccess)
    drv.range = NULL;
  struct {
    const char *name;
    void **fn;
  } t[] = {{"cuMemCreate", (void **)&drv.create},         {"cuMemRelease", (void **)&drv.release},
           {"cuMemAddressReserve", (void **)&drv.reserve}, {"cuMemAddressFree", (void **)&drv.addr_free},
           {"cuMemMap", (void **)&drv.map},                {"cuMemUnmap", (void **)&drv.unmap},
           {"cuMemSetAccess", (void **)&drv.set_access},   {"cuMemExportToShareableHandle", (void **)&drv.export_h},
           {"cuMemImportFromShareableHandle", (void **)&drv.import_h},
           {"cuMemGetAllocationGranularity", (void **)&drv.granularity}};
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    enum cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(t[i].name, t[i].fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !*t[i].fn)
      return;
  }
  drv_ok = 1;
}

/* vmm: the fd path needs the driver's VMM entry points; the IPC path only
 * the runtime (and cuMemGetAddressRange, checked where used). */
static epm_status_t ready(int device, int vmm) {
  cudaError_t e;
  pthread_once(&drv_once, load_driver);
  if (vmm && !drv_ok) return epm_error(EPM_ERR_CUDA, "the CUDA driver's VMM entry points are unavailable (no driver?)");
  if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaFree(NULL)) != cudaSuccess)
    return epm_cuda_status(e, "cudaSetDevice(%d)", device);
  return EPM_OK;
}

#define CU_TRY(call, what)                                                                   \
  do {                                                                                       \
    CUresult r_ = (call);                                                                    \
    if (r_ != CUDA_SUCCESS) {                                                                \
      st = epm_error(EPM_ERR_CUDA, "%s failed (CUresult %d) on device %d", what, (int)r_, m->device); \
      goto fail;                                                                             \
    }                                                                                        \
  } while (0)

static void prop_for(int device, CUmemAllocationProp *p) {
  memset(p, 0, sizeof *p);
  p->type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p->location.id = device;
  p->requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
}

static epm_status_t map_here(epm_devmem_t *m) {
  epm_status_t st = EPM_OK;
  CUmemAccessDesc acc;
  memset(&acc, 0, sizeof acc);
  acc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  acc.location.id = m->device;
  acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  CU_TRY(drv.reserve(&m->ptr, m->size, 0, 0, 0), "cuMemAddressReserve");
  CU_TRY(drv.map(m->ptr, m->size, 0, m->handle, 0), "cuMemMap");
  m->mapped = 1;
  CU_TRY(drv.set_access(m->ptr, m->size, &acc, 1), "cuMemSetAccess");
  return EPM_OK;
fail:
  return st;
}

epm_status_t epm_devmem_create(int device, size_t bytes, epm_devmem_t **out) {
  epm_status_t st;
  size_t gran = 0;
  CUmemAllocationProp prop;
  EPM_TRY(ready(device, 1));
  epm_devmem_t *m = calloc(1, sizeof *m);
  if (!m) return epm_error(EPM_ERR_NOMEM, "devmem");
  m->device = device;
  prop_for(device, &prop);
  CU_TRY(drv.granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "cuMemGetAllocationGranularity");
  if (gran == 0 || bytes > SIZE_MAX - gran) {
    st = epm_error(EPM_ERR_OVERFLOW, "device region of %zu bytes (granularity %zu)", bytes, gran);
    goto fail;
  }
  m->size = (bytes + gran - 1) / gran * gran;
  CU_TRY(drv.create(&m->handle, m->size, &prop, 0), "cuMemCreate");
  if ((st = map_here(m)) != EPM_OK) goto fail;
  *out = m;
  return EPM_OK;
fail:
  epm_devmem_free(m);
  return st;
}

epm_status_t epm_devmem_import(int fd, size_t bytes, int device, epm_devmem_t **out) {
  epm_status_t st;
  EPM_TRY(ready(device, 1));
  epm_devmem_t *m = calloc(1, sizeof *m);
  if (!m) return epm_error(EPM_ERR_NOMEM, "devmem");
  m->device = device;
  m->size = bytes;
  CU_TRY(drv.import_h(&m->handle, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
         "cuMemImportFromShareableHandle");
  if ((st = map_here(m)) != EPM_OK) goto fail;
  *out = m;
  return EPM_OK;
fail:
  epm_devmem_free(m);
  return st;
}

epm_status_t epm_devmem_create_ipc(int device, size_t bytes, epm_devmem_t **out) {
  cudaError_t e;
  void *p = NULL;
  EPM_TRY(ready(device, 0));
  if (bytes == 0) return epm_error(EPM_ERR_INVALID_ARG, "device region of 0 bytes");
  epm_devmem_t *m = calloc(1, sizeof *m);
  if (!m) return epm_error(EPM_ERR_NOMEM, "devmem");
  if ((e = cudaMalloc(&p, bytes)) != cudaSuccess) {
    free(m);
    return epm_cuda_status(e, "cudaMalloc(%zu) on device %d", bytes, device);
  }
  m->device = device;
  m->size = bytes;
  m->ptr = (CUdeviceptr)(uintptr_t)p;
  m->ipc = 1;
  *out = m;
  return EPM_OK;
}

epm_status_t epm_devmem_ipc_handle(epm_devmem_t *m, uint8_t handle[64]) {
  cudaIpcMemHandle_t h;
  cudaError_t e;
  if (m->ipc != 1) return epm_error(EPM_ERR_INVALID_ARG, "only a region allocated with cudaMalloc here has an IPC handle");
  if ((e = cudaSetDevice(m->device)) != cudaSuccess || (e = cudaIpcGetMemHandle(&h, (void *)(uintptr_t)m->ptr)) != cudaSuccess)
    return epm_cuda_status(e, "cudaIpcGetMemHandle on device %d", m->device);
  memcpy(handle, &h, sizeof h);
  return EPM_OK;
}

epm_status_t epm_devmem_open_ipc(const uint8_t handle[64], size_t bytes, int device, epm_devmem_t **out) {
  epm_status_t st;
  cudaIpcMemHandle_t h;
  cudaError_t e;
  void *p = NULL;
  CUdeviceptr base = 0;
  size_t len = 0;
  EPM_TRY(ready(device, 0));
  if (!drv.range) return epm_error(EPM_ERR_CUDA, "cuMemGetAddressRange is unavailable; cannot check a CUDA IPC region");
  memcpy(&h, handle, sizeof h);
  if ((e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess)) != cudaSuccess) {
    /* epm_cuda_status also resets the last error: a peer's bad handle must not
     * look like a later kernel's error. */
    return epm_cuda_status(e, "cudaIpcOpenMemHandle on device %d", device);
  }
  epm_devmem_t *m = calloc(1, sizeof *m);
  if (!m) {
    cudaIpcCloseMemHandle(p);
    return epm_error(EPM_ERR_NOMEM, "devmem");
  }
  m->device = device;
  m->ptr = (CUdeviceptr)(uintptr_t)p;
  m->ipc = 2;
  /* The handle carries no size: every FORWARD offset is checked against
   * m->size, so the claim must lie inside the allocation the driver sees. */
  CU_TRY(drv.range(&base, &len, m->ptr), "cuMemGetAddressRange");
  if (base > m->ptr || m->ptr - base > len || bytes > len - (size_t)(m->ptr - base)) {
    st = epm_error(EPM_ERR_INVALID_ARG, "DEV_ATTACH claims %zu bytes but the CUDA IPC allocation has %zu", bytes,
                   len);
    goto fail;
  }
  m->size = bytes;
  *out = m;
  return EPM_OK;
fail:
  epm_devmem_free(m);
  return st;
}

epm_status_t epm_devmem_export_fd(epm_devmem_t *m, int *fd) {
  epm_status_t st = EPM_OK;
  int f = -1;
  if (m->ipc) return epm_error(EPM_ERR_INVALID_ARG, "a CUDA IPC region has no POSIX fd");
  CU_TRY(drv.export_h(&f, m->handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0), "cuMemExportToShareableHandle");
  *fd = f;
  return EPM_OK;
fail:
  return st;
}

uint64_t epm_devmem_ptr(const epm_devmem_t *m) { return (uint64_t)m->ptr; }
size_t epm_devmem_size(const epm_devmem_t *m) { return m->size; }

static epm_status_t copy(epm_devmem_t *m, size_t off, void *host, size_t n, int to_host) {
  cudaError_t e;
  if (off > m->size || n > m->size - off)
    return epm_error(EPM_ERR_INVALID_ARG, "device region copy [%zu, +%zu) outside %zu bytes", off, n, m->size);
  if (!n) return EPM_OK;
  if ((e = cudaSetDevice(m->device)) != cudaSuccess ||
      (e = cudaMemcpy(to_host ? host : (void *)(uintptr_t)(m->ptr + off),
                      to_host ? (const void *)(uintptr_t)(m->ptr + off) : host, n,
                      to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice)) != cudaSuccess)
    return epm_cuda_status(e, "copy of %zu bytes %s device region", n, to_host ? "from" : "to");
  return EPM_OK;
}

epm_status_t epm_devmem_to_host(epm_devmem_t *m, size_t off, void *dst, size_t n) { return copy(m, off, dst, n, 1); }
epm_status_t epm_devmem_from_host(epm_devmem_t *m, size_t off, const void *src, size_t n) {
  return copy(m, off, (void *)src, n, 0);
}

void epm_devmem_free(epm_devmem_t *m) {
  if (!m) return;
  if (m->ipc) {
    if (cudaSetDevice(m->device) == cudaSuccess) {
      if (m->ipc == 1) cudaFree((void *)(uintptr_t)m->ptr);
      else cudaIpcCloseMemHandle((void *)(uintptr_t)m->ptr);
    }
    free(m);
    return;
  }
  if (m->mapped) drv.unmap(m->ptr, m->size);
  if (m->ptr) drv.addr_free(m->ptr, m->size);
  if (m->handle) drv.release(m->handle);
  free(m);
}
