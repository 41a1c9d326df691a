/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/cuda_status.h — the one cudaError_t -> epm_status_t translation.
 *
 * For CUDA builds only (EPMOE_HAVE_CUDA: *_cuda.c, *_nccl.c, .cu files and
 * the GPU tests): it includes the CUDA runtime header. Header-only, so the
 * kernels, the comm and the runtime all use it without a link edge between
 * them (kernels/ and comm/ may not depend on runtime/).
 *
 *   return epm_cuda_status(cudaMalloc(&p, n), "cudaMalloc(%zu bytes)", n);
 *   EPM_CUDA_TRY(cudaStreamSynchronize(s));
 *
 * cudaErrorMemoryAllocation maps to EPM_ERR_NOMEM, so callers can tell "too
 * big for this GPU" from a broken device; everything else is EPM_ERR_CUDA.
 * The message names the call, then CUDA's error name and text:
 *   "cudaMalloc(1024 bytes): cudaErrorMemoryAllocation: out of memory"
 */
#ifndef EPMOE_CUDA_STATUS_H
#define EPMOE_CUDA_STATUS_H

#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdio.h>

#include "epmoe/status.h"

/* EPM_OK for cudaSuccess. Otherwise records the message for this thread
 * (fmt names the call) and returns the mapped status. It also reads and
 * resets CUDA's per-thread last error: a failed call leaves its error there,
 * and the next EPM_CUDA_LAUNCHED-style check (cudaGetLastError after a
 * launch) would otherwise report it again against an innocent kernel. A
 * sticky error (a faulted context) cannot be reset and keeps failing later
 * calls, as it should. */
static inline epm_status_t epm_cuda_status(cudaError_t e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline epm_status_t epm_cuda_status(cudaError_t e, const char *fmt, ...) {
  if (e == cudaSuccess) return EPM_OK;
  (void)cudaGetLastError();
  char call[256];
  va_list ap;
  va_start(ap, fmt);
  const int n = vsnprintf(call, sizeof call, fmt, ap);
  va_end(ap);
  if (n < 0) call[0] = '\0';
  return epm_error(e == cudaErrorMemoryAllocation ? EPM_ERR_NOMEM : EPM_ERR_CUDA, "%s: %s: %s",
                   call[0] ? call : "CUDA call", cudaGetErrorName(e), cudaGetErrorString(e));
}

/* Return the translated status from the enclosing function when `call`
 * (an expression of type cudaError_t) fails; the message names the call. */
#define EPM_CUDA_TRY(call)                                                    \
  do {                                                                        \
    cudaError_t epm__ce = (call);                                             \
    if (epm__ce != cudaSuccess) return epm_cuda_status(epm__ce, "%s", #call); \
  } while (0)

#endif /* EPMOE_CUDA_STATUS_H */
