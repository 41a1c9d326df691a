/* SPDX-License-Identifier: Apache-2.0 */
/* client_impl.h — what the files of libepmoe_client share: the connection
 * and its one request/response helper (client.c), used by the doorbell
 * (client_doorbell.c). Private header of the daemon folder. */
#ifndef EPMOE_CLIENT_IMPL_H
#define EPMOE_CLIENT_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "devmem.h"
#include "epmoe/client.h"

struct epm_client {
  int fd;
  int timeout_ms;
  pthread_mutex_t mu;
  uint64_t next_rid;
  int have_info;
  epm_client_info_t info;
  char path[108];
  void *shm;
  size_t shm_size;
  epm_devmem_t *dev;
  uint32_t fwd_flags;     /* FORWARD step options (epm_client_set_step_options) */
  epm_dtype_t fwd_dtype;
  epm_doorbell_t *db;     /* DOORBELL_ATTACH, at most one */
};

/* Send b (+ extra iovecs, + pass_fd when >= 0) and read the response to rid
 * of `type` into *raw / *f (ERROR frames become their status with the
 * daemon's message). The caller holds c->mu. */
epm_status_t epm__client_roundtrip(epm_client_t *c, epm_buf_t *b, struct iovec *extra, int nextra, int pass_fd,
                                   uint64_t rid, uint16_t type, uint64_t max_payload, uint8_t **raw, epm_frame_t *f);

void epm__doorbell_free(epm_doorbell_t *db); /* NULL ok; client_doorbell.c */

#endif
