/* srv_step_builtin.c — the "mix" stand-in step (formula in mixstep.h): one
 * MPI_Allreduce of the column sums and the token count per step, so it is a
 * real collective with the same join rules as the engine (m = 0 joins). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/log.h"
#include "mixstep.h"
#include "srv_backend.h"

typedef struct {
  MPI_Comm comm;
  int64_t hidden, experts;
  double *buf; /* [H + 1]: column sums, then the token count */
  double last_s;
} mix_t;

static epm_status_t mix_create(const srv_config_t *cfg, MPI_Comm comm, srv_model_info_t *info, void **ctx) {
  mix_t *m = calloc(1, sizeof *m);
  (void)cfg;
  if (!m) return epm_error(EPM_ERR_NOMEM, "mix step state");
  m->comm = comm;
  m->hidden = 256;
  m->experts = 16;
  m->buf = calloc((size_t)m->hidden + 1, sizeof(double));
  if (!m->buf) {
    free(m);
    return epm_error(EPM_ERR_NOMEM, "mix step buffer");
  }
  info->hidden = m->hidden;
  info->num_experts = m->experts;
  info->top_k = 1;
  info->num_layers = 1;
  snprintf(info->model, sizeof info->model, "mix");
  snprintf(info->backend, sizeof info->backend, "builtin");
  *ctx = m;
  return EPM_OK;
}

static epm_status_t mix_step(void *ctx, uint32_t layer, const uint16_t *x, const float *logits,
                             int64_t mtok, uint16_t *y) {
  mix_t *m = ctx;
  double t0 = MPI_Wtime();
  int rc;
  (void)layer;
  memset(m->buf, 0, ((size_t)m->hidden + 1) * sizeof(double));
  epm_mix_colsum(x, mtok, m->hidden, m->buf);
  m->buf[m->hidden] = (double)mtok;
  rc = MPI_Allreduce(MPI_IN_PLACE, m->buf, (int)m->hidden + 1, MPI_DOUBLE, MPI_SUM, m->comm);
  if (rc != MPI_SUCCESS) return epm_error(EPM_ERR_MPI, "mix step: MPI_Allreduce failed (%d)", rc);
  epm_mix_apply(x, logits, mtok, m->hidden, m->experts, m->buf, (int64_t)m->buf[m->hidden], y);
  m->last_s = MPI_Wtime() - t0;
  return EPM_OK;
}

static int mix_stages(void *ctx, const char **names, double *last_s, int max) {
  mix_t *m = ctx;
  if (max < 1) return 0;
  names[0] = "total";
  last_s[0] = m->last_s;
  return 1;
}

static void mix_destroy(void *ctx) {
  mix_t *m = ctx;
  if (!m) return;
  free(m->buf);
  free(m);
}

const srv_backend_ops_t srv_backend_builtin = {"mix", mix_create, mix_step, mix_stages, mix_destroy, NULL};
