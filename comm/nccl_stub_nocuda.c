/* SPDX-License-Identifier: Apache-2.0 */
/* nccl_stub_nocuda.c — the NCCL backend in a build without CUDA. */
#include "comm_impl.h"

epm_status_t epm__comm_nccl_open(epm_comm_t *c, const epm_bootstrap_t *boot,
                                 const epm_comm_opts_t *opts) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "comm backend nccl: epmoe was built without CUDA");
}
