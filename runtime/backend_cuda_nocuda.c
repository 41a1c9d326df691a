/* SPDX-License-Identifier: Apache-2.0 */
/* backend_cuda_nocuda.c — the cuda backend in a build without CUDA. */
#include "backend_impl.h"

epm_status_t epm__backend_cuda_init(epm_backend_t *be) {
  (void)be;
  return epm_error(EPM_ERR_NOT_SUPPORTED, "backend 'cuda': this epmoe was built without CUDA (EPMOE_CUDA=OFF or no nvcc)");
}
