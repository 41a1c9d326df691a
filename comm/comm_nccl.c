/* comm_nccl.c — NCCL backend (placeholder until the implementation lands). */
#include "comm_impl.h"

epm_status_t epm__comm_nccl_open(epm_comm_t *c, const epm_bootstrap_t *boot,
                                 const epm_comm_opts_t *opts) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "comm backend nccl: not implemented yet");
}
