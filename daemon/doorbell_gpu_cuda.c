/* SPDX-License-Identifier: Apache-2.0 */
/* doorbell_gpu_cuda.c — device-mode doorbells (see doorbell_gpu.h): the
 * control page registered with cudaHostRegister (mapped, portable), and the
 * stream memory operations cuStreamWriteValue32/64 and cuStreamWaitValue32,
 * which have no runtime API: their driver entry points come from
 * cudaGetDriverEntryPointByVersion, so nothing links libcuda. The writes use
 * the default flags, which put a memory fence before the write: the kernels
 * queued before a ring (x and logits) or an answer (y) are visible before
 * the word that announces them. */
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

#include "doorbell_gpu.h"
#include "epmoe/cuda_status.h"

struct epm_dbgpu {
  epm_db_ctl_t *ctl;
  int device;
  CUdeviceptr base; /* the page's device address */
};

static struct {
  CUresult (*write32)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  CUresult (*write64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);
  CUresult (*wait32)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
} drv;
static pthread_once_t drv_once = PTHREAD_ONCE_INIT;
static int drv_ok;

static void load_driver(void) {
  struct {
    const char *name;
    void **fn;
  } t[] = {{"cuStreamWriteValue32", (void **)&drv.write32},
           {"cuStreamWriteValue64", (void **)&drv.write64},
           {"cuStreamWaitValue32", (void **)&drv.wait32}};
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    enum cudaDriverEntryPointQueryResult q;
    /* 12000: the _v2 memory operations (CUDA 11.7+), which graphs capture. */
    if (cudaGetDriverEntryPointByVersion(t[i].name, t[i].fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !*t[i].fn)
      return;
  }
  drv_ok = 1;
}

epm_status_t epm_dbgpu_register(epm_db_ctl_t *ctl, int device, epm_dbgpu_t **out) {
  cudaError_t e;
  void *dptr = NULL;
  pthread_once(&drv_once, load_driver);
  if (!drv_ok)
    return epm_error(EPM_ERR_CUDA, "the CUDA driver's stream memory operations (cuStreamWriteValue32/64, "
                                   "cuStreamWaitValue32) are unavailable (no driver, or older than CUDA 11.7?)");
  if ((e = cudaSetDevice(device)) != cudaSuccess) return epm_cuda_status(e, "cudaSetDevice(%d)", device);
  epm_dbgpu_t *g = calloc(1, sizeof *g);
  if (!g) return epm_error(EPM_ERR_NOMEM, "doorbell registration");
  g->device = device;
  e = cudaHostRegister(ctl, EPM_DB_CTL_BYTES, cudaHostRegisterMapped | cudaHostRegisterPortable);
  if (e != cudaSuccess) {
    free(g);
    return epm_cuda_status(e, "cudaHostRegister of the doorbell's %u-byte control page on device %d",
                           EPM_DB_CTL_BYTES, device);
  }
  g->ctl = ctl;
  if ((e = cudaHostGetDevicePointer(&dptr, ctl, 0)) != cudaSuccess) {
    epm_dbgpu_free(g);
    return epm_cuda_status(e, "cudaHostGetDevicePointer of the doorbell's control page");
  }
  g->base = (CUdeviceptr)(uintptr_t)dptr;
  *out = g;
  return EPM_OK;
}

void epm_dbgpu_free(epm_dbgpu_t *g) {
  if (!g) return;
  if (g->ctl) (void)cudaHostUnregister(g->ctl);
  free(g);
}

#define FIELD(g, f) ((g)->base + (CUdeviceptr)offsetof(epm_db_ctl_t, f))

static epm_status_t cu_check(CUresult r, const char *what, const epm_dbgpu_t *g) {
  if (r == CUDA_SUCCESS) return EPM_OK;
  return epm_error(EPM_ERR_CUDA, "%s on the doorbell's control page failed (CUresult %d) on device %d", what, (int)r,
                   g->device);
}

epm_status_t epm_dbgpu_ring(epm_dbgpu_t *g, void *stream, uint32_t layer, int64_t m, uint32_t flags,
                            uint32_t partial_dtype) {
  CUstream s = (CUstream)stream;
  EPM_TRY(cu_check(drv.write64(s, FIELD(g, m), (cuuint64_t)m, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue64(m)", g));
  EPM_TRY(cu_check(drv.write32(s, FIELD(g, layer), layer, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32(layer)", g));
  EPM_TRY(cu_check(drv.write32(s, FIELD(g, flags), flags, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32(flags)", g));
  EPM_TRY(cu_check(drv.write32(s, FIELD(g, partial_dtype), partial_dtype, CU_STREAM_WRITE_VALUE_DEFAULT),
                   "cuStreamWriteValue32(partial_dtype)", g));
  return cu_check(drv.write32(s, FIELD(g, ring), 1, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32(ring)", g);
}

epm_status_t epm_dbgpu_wait(epm_dbgpu_t *g, void *stream) {
  CUstream s = (CUstream)stream;
  EPM_TRY(cu_check(drv.wait32(s, FIELD(g, ack), 1, CU_STREAM_WAIT_VALUE_EQ), "cuStreamWaitValue32(ack == 1)", g));
  return cu_check(drv.write32(s, FIELD(g, ack), 0, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32(ack = 0)", g);
}

epm_status_t epm_dbgpu_answer(epm_dbgpu_t *g, void *stream, uint64_t seq) {
  CUstream s = (CUstream)stream;
  EPM_TRY(cu_check(drv.write64(s, FIELD(g, done_seq), seq, CU_STREAM_WRITE_VALUE_DEFAULT),
                   "cuStreamWriteValue64(done_seq)", g));
  return cu_check(drv.write32(s, FIELD(g, ack), 1, CU_STREAM_WRITE_VALUE_DEFAULT), "cuStreamWriteValue32(ack = 1)", g);
}
