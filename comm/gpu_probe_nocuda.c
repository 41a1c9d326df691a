/* SPDX-License-Identifier: Apache-2.0 */
/* gpu_probe_nocuda.c — builds without CUDA see no GPU. */
#include "epmoe/bootstrap.h"

epm_status_t epm_gpu_count(int *count) {
  *count = 0;
  return EPM_OK;
}

epm_status_t epm_gpu_select(int dev) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "GPU %d requested but epmoe was built without CUDA", dev);
}
