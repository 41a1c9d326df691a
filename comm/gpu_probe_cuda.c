/* SPDX-License-Identifier: Apache-2.0 */
/* gpu_probe_cuda.c — GPU count and pick for the bootstrap (CUDA builds). */
#include <cuda_runtime_api.h>

#include "epmoe/bootstrap.h"
#include "epmoe/cuda_status.h"

epm_status_t epm_gpu_count(int *count) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    /* No driver (CI) or no device: a CPU machine, not a failure. Clear the
     * recorded error so a later CUDA call does not report it as its own. */
    (void)cudaGetLastError();
    n = 0;
  }
  *count = n;
  return EPM_OK;
}

epm_status_t epm_gpu_select(int dev) {
  return epm_cuda_status(cudaSetDevice(dev), "cudaSetDevice(%d)", dev);
}
