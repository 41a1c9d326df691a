/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/cuda_check.h — launcher helpers. CUDA errors go through the one
 * translation of epmoe/cuda_status.h (EPM_CUDA_TRY, epm_cuda_status). */
#ifndef EPMOE_KERNELS_CUDA_CHECK_H
#define EPMOE_KERNELS_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "epmoe/cuda_status.h"
#include "epmoe/status.h"

/* After a <<<>>> launch: configuration errors show up here. */
#define EPM_CUDA_LAUNCHED(what)                                                          \
  do {                                                                                   \
    cudaError_t epm__ce = cudaGetLastError();                                            \
    if (epm__ce != cudaSuccess) return epm_cuda_status(epm__ce, "launch of %s", (what)); \
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
