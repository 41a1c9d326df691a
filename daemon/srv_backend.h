/* srv_backend.h — what the worker thread calls to run one collective step.
 *
 * One implementation today, srv_step_engine.c: the step engine
 * (include/epmoe/engine.h) over the comm layer, cpu or cuda backend; every
 * preset and --model DIR. The table keeps the worker independent of how the
 * step is assembled. step() is COLLECTIVE: every rank calls it for the same
 * step, with its own m (0 allowed), and it returns an error on every rank or
 * on none.
 */
#ifndef EPMOE_SRV_BACKEND_H
#define EPMOE_SRV_BACKEND_H

#include <stdint.h>

#include "srv.h"

typedef struct {
  const char *name;
  /* Load weights / build state over the daemon's EP group (boot outlives
   * ctx). Called on the worker thread. Fills *info. Collective. */
  epm_status_t (*create)(const srv_config_t *cfg, const epm_bootstrap_t *boot, srv_model_info_t *info, void **ctx);
  /* x bf16 [m, H], logits fp32 [m, E] -> y bf16 [m, H]; host memory, aligned. */
  epm_status_t (*step)(void *ctx, uint32_t layer, const uint16_t *x, const float *logits, int64_t m,
                       uint16_t *y);
  /* Optional: stage names and last-step seconds; returns the stage count. */
  int (*stages)(void *ctx, const char **names, double *last_s, int max);
  void (*destroy)(void *ctx);
  /* Optional: 1 when `layer` is served. Checked before the rendezvous, so a
   * FORWARD for an unknown layer fails alone instead of entering a step. */
  int (*has_layer)(void *ctx, uint32_t layer);
} srv_backend_ops_t;

const srv_backend_ops_t *srv_backend_engine(void);

#endif
