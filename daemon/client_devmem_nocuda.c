/* SPDX-License-Identifier: Apache-2.0 */
/* client_devmem_nocuda.c — device-memory sharing in a build without CUDA. */
#include "devmem.h"

static epm_status_t no(void) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "CUDA device memory sharing (cuMemCreate fd or CUDA IPC handle): this build has no CUDA");
}
epm_status_t epm_devmem_create(int device, size_t bytes, epm_devmem_t **out) {
  (void)device, (void)bytes, (void)out;
  return no();
}
epm_status_t epm_devmem_import(int fd, size_t bytes, int device, epm_devmem_t **out) {
  (void)fd, (void)bytes, (void)device, (void)out;
  return no();
}
epm_status_t epm_devmem_create_ipc(int device, size_t bytes, epm_devmem_t **out) {
  (void)device, (void)bytes, (void)out;
  return no();
}
epm_status_t epm_devmem_ipc_handle(epm_devmem_t *m, uint8_t handle[64]) {
  (void)m, (void)handle;
  return no();
}
epm_status_t epm_devmem_open_ipc(const uint8_t handle[64], size_t bytes, int device, epm_devmem_t **out) {
  (void)handle, (void)bytes, (void)device, (void)out;
  return no();
}
epm_status_t epm_devmem_export_fd(epm_devmem_t *m, int *fd) {
  (void)m, (void)fd;
  return no();
}
uint64_t epm_devmem_ptr(const epm_devmem_t *m) {
  (void)m;
  return 0;
}
size_t epm_devmem_size(const epm_devmem_t *m) {
  (void)m;
  return 0;
}
epm_status_t epm_devmem_to_host(epm_devmem_t *m, size_t off, void *dst, size_t n) {
  (void)m, (void)off, (void)dst, (void)n;
  return no();
}
epm_status_t epm_devmem_from_host(epm_devmem_t *m, size_t off, const void *src, size_t n) {
  (void)m, (void)off, (void)src, (void)n;
  return no();
}
void epm_devmem_free(epm_devmem_t *m) { (void)m; }
