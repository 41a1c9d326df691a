/* SPDX-License-Identifier: Apache-2.0 */
/* doorbell_gpu_nocuda.c — device-mode doorbells in a build without CUDA. */
#include "doorbell_gpu.h"

static epm_status_t no(void) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "device-mode doorbell (CUDA stream memory operations): this build has no CUDA");
}
epm_status_t epm_dbgpu_register(epm_db_ctl_t *ctl, int device, epm_dbgpu_t **out) {
  (void)ctl, (void)device, (void)out;
  return no();
}
void epm_dbgpu_free(epm_dbgpu_t *g) { (void)g; }
epm_status_t epm_dbgpu_ring(epm_dbgpu_t *g, void *stream, uint32_t layer, int64_t m, uint32_t flags,
                            uint32_t partial_dtype) {
  (void)g, (void)stream, (void)layer, (void)m, (void)flags, (void)partial_dtype;
  return no();
}
epm_status_t epm_dbgpu_wait(epm_dbgpu_t *g, void *stream) {
  (void)g, (void)stream;
  return no();
}
epm_status_t epm_dbgpu_answer(epm_dbgpu_t *g, void *stream, uint64_t seq) {
  (void)g, (void)stream, (void)seq;
  return no();
}
