/* kernels/cuda_check.h — CUDA error -> epm_status_t for the launchers. */
#ifndef EPMOE_KERNELS_CUDA_CHECK_H
#define EPMOE_KERNELS_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "epmoe/status.h"

/* Map a CUDA call's error, naming the call and CUDA's own text. */
#define EPM_CUDA_TRY(call)                                                            \
  do {                                                                                \
    cudaError_t epm__ce = (call);                                                     \
    if (epm__ce != cudaSuccess)                                                       \
      return epm_error(EPM_ERR_CUDA, "%s failed: %s (%s)", #call,                     \
                       cudaGetErrorString(epm__ce), cudaGetErrorName(epm__ce));       \
  } while (0)

/* After a <<<>>> launch: configuration errors show up here. */
#define EPM_CUDA_LAUNCHED(what)                                                       \
  do {                                                                                \
    cudaError_t epm__ce = cudaGetLastError();                                         \
    if (epm__ce != cudaSuccess)                                                       \
      return epm_error(EPM_ERR_CUDA, "launch of %s failed: %s (%s)", (what),          \
                       cudaGetErrorString(epm__ce), cudaGetErrorName(epm__ce));       \
  } while (0)

#define EPM_STREAM(s) ((cudaStream_t)(s))

/* Vector loads/stores need aligned device pointers; say which one is not. */
#define EPM_CHECK_ALIGNED(ptr, bytes)                                                 \
  do {                                                                                \
    if ((ptr) && ((uintptr_t)(const void *)(ptr) % (bytes)) != 0)                     \
      return epm_error(EPM_ERR_INVALID_ARG, "%s: device pointer %s = %p is not %d-byte aligned", \
                       __func__, #ptr, (const void *)(ptr), (int)(bytes));            \
  } while (0)

#endif
