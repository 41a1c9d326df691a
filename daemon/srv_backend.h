/* srv_backend.h — what the worker thread calls to run one collective step.
 *
 * Two implementations:
 *  - srv_step_engine.c: the real step engine (include/epmoe/engine.h) over the
 *    comm layer, cpu or cuda backend; every preset and --model DIR.
 *  - srv_step_builtin.c: "mix", a small collective stand-in with a closed-form
 *    reference (daemon/mixstep.h), so the daemon, protocol and rendezvous are
 *    testable without the engine. Selected with --preset mix.
 * Both are COLLECTIVE: every rank calls step() for the same step, with its own
 * m (0 allowed), and step() returns an error on every rank or on none.
 */
#ifndef EPMOE_SRV_BACKEND_H
#define EPMOE_SRV_BACKEND_H

#include <mpi.h>
#include <stdint.h>

#include "srv.h"

typedef struct {
  const char *name;
  /* Load weights / build state. Called on the worker thread after MPI init.
   * Fills *info. Not collective unless the implementation documents it. */
  epm_status_t (*create)(const srv_config_t *cfg, MPI_Comm comm, srv_model_info_t *info, void **ctx);
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

extern const srv_backend_ops_t srv_backend_builtin;
const srv_backend_ops_t *srv_backend_engine(void);

#endif
