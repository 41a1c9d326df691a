/* SPDX-License-Identifier: Apache-2.0 */
/* engine_graph.c — the fixed-capacity step on a device backend as ONE CUDA
 * graph: route, quantize (static scale, from device memory), pack, the one
 * NCCL allgather, unpack, experts, the equal-segment reduce-scatter, the
 * shared expert and the bf16 output, captured once per local token count m
 * and replayed. Per step the host does: stage x and logits in, set the
 * header's count, launch, one wait for the stream (the comm's bounded wait,
 * which the watchdog can abort), read the P headers, copy y out.
 *
 * Why one graph per m: the kernels take their row counts from the host at
 * launch, so m is baked into a capture; the other ranks' counts are not
 * (every segment has max_tokens_per_rank rows, pad rows inert), so the
 * graph does not depend on them. Decode steps repeat a few m values.
 *
 * A rank whose arguments are bad still launches the m = 0 graph with the
 * STEP_FAILED count in its header, so its peers are never left inside the
 * collective, and every rank returns an error after reading the headers. */
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#include "epmoe/clock.h"
#include "epmoe/log.h"

typedef struct {
  int64_t m;
  void *exec;
} graph_ent_t;

typedef struct {
  graph_ent_t *v;
  size_t n, cap;
} graph_set_t;

void epm__graph_free(epm_engine_t *e) {
  graph_set_t *gs = e->graphs;
  if (!gs) return;
  for (size_t i = 0; i < gs->n; i++) epm_backend_graph_destroy(e->be, gs->v[i].exec);
  free(gs->v);
  free(gs);
  e->graphs = NULL;
}

size_t epm__graph_count(const epm_engine_t *e) { return e->graphs ? ((const graph_set_t *)e->graphs)->n : 0; }

/* The step body on backend memory, no host waits (captured). */
static epm_status_t body(epm_engine_t *e, epm__step_timer_t *tm, int64_t m, float a1) {
  EPM_TRY(epm_backend_route(e->be, e->w, e->logits_dev, m, e->ids_loc, e->wts_loc));
  EPM_TRY(epm_backend_quantize_static(e->be, e->w, e->x_dev, m, e->packed_loc, e->sf_loc));
  EPM_TRY(epm__fixed_dispatch(e, m));
  EPM_TRY(epm__fixed_combine(e, tm, m, a1));
  if (e->use_shared) EPM_TRY(epm_backend_shared_add(e->be, e->w, e->x_dev, m, e->y32));
  return epm_backend_f32_to_bf16(e->be, e->y32, m * e->H, e->y_dev);
}

static epm_status_t graph_for(epm_engine_t *e, epm__step_timer_t *tm, int64_t m, float a1, void **exec) {
  graph_set_t *gs = e->graphs;
  if (!gs) {
    gs = calloc(1, sizeof *gs);
    if (!gs) return epm_error(EPM_ERR_NOMEM, "graph set");
    e->graphs = gs;
  }
  for (size_t i = 0; i < gs->n; i++)
    if (gs->v[i].m == m) {
      *exec = gs->v[i].exec;
      return EPM_OK;
    }
  if (gs->n == gs->cap) {
    size_t cap = gs->cap ? 2 * gs->cap : 8;
    graph_ent_t *v = realloc(gs->v, cap * sizeof *v);
    if (!v) return epm_error(EPM_ERR_NOMEM, "graph set of %zu entries", cap);
    gs->v = v;
    gs->cap = cap;
  }
  const double t0 = epm_clock_s();
  EPM_TRY(epm_backend_capture_begin(e->be));
  e->capturing = 1;
  epm_status_t st = body(e, tm, m, a1);
  e->capturing = 0;
  void *x = NULL;
  epm_status_t end = epm_backend_capture_end(e->be, st == EPM_OK, &x);
  if (st != EPM_OK) return st;
  EPM_TRY(end);
  gs->v[gs->n++] = (graph_ent_t){m, x};
  *exec = x;
  EPM_LOG(EPM_LOG_INFO, "engine", "layer %lld: captured the step of %lld tokens as a CUDA graph in %.1f ms (%zu graphs)",
          (long long)e->layer->layer_index, (long long)m, 1e3 * (epm_clock_s() - t0), gs->n);
  return EPM_OK;
}

epm_status_t epm__graph_step(epm_engine_t *e, epm__step_timer_t *tm, const epm_bf16_t *x, const float *logits,
                             int64_t m, epm_bf16_t *y, int in_backend_mem, int64_t *M) {
  const int64_t H = e->H, E = e->E;
  epm_status_t bad = EPM_OK;
  if (m < 0 || m > e->max_m)
    bad = epm_error(EPM_ERR_INVALID_ARG, "rank %d: %lld tokens is outside [0, %lld] (max_tokens_per_rank)", e->rank,
                    (long long)m, (long long)e->max_m);
  else if (m > 0 && (!x || !logits || !y))
    bad = epm_error(EPM_ERR_INVALID_ARG, "rank %d: %lld tokens but x, logits or y is NULL", e->rank, (long long)m);
  const int64_t mg = bad == EPM_OK ? m : 0;
  /* Inputs into the engine's own buffers: the graph reads fixed addresses. */
  if (mg > 0) {
    const size_t xb = (size_t)(mg * H) * sizeof *x, lb = (size_t)(mg * E) * sizeof *logits;
    if (in_backend_mem) {
      EPM_TRY(epm_backend_copy_2d(e->be, e->x_dev, xb, x, xb, xb, 1));
      EPM_TRY(epm_backend_copy_2d(e->be, e->logits_dev, lb, logits, lb, lb, 1));
    } else {
      EPM_TRY(epm_backend_copy_h2d(e->be, e->x_dev, x, xb));
      EPM_TRY(epm_backend_copy_h2d(e->be, e->logits_dev, logits, lb));
    }
  }
  void *exec = NULL;
  EPM_TRY(graph_for(e, tm, mg, e->layer->input_scale, &exec));
  epm__fixed_header(e, m, bad != EPM_OK);
  epm_comm_traffic(e->comm, &tm->tr[0]);
  EPM_TRY(epm_backend_graph_launch(e->be, exec));
  EPM_TRY(epm_comm_wait(e->comm, 0)); /* the step's one host wait */
  epm_comm_traffic(e->comm, &tm->tr[1]);
  tm->tr[2] = tm->tr[1];
  if (bad != EPM_OK) return bad; /* its message stays this rank's last error */
  EPM_TRY(epm__fixed_counts(e, M));
  if (mg > 0) {
    const size_t yb = (size_t)(mg * H) * sizeof *y;
    if (in_backend_mem)
      EPM_TRY(epm_backend_copy_2d(e->be, y, yb, e->y_dev, yb, yb, 1));
    else
      EPM_TRY(epm_backend_copy_d2h(e->be, y, e->y_dev, yb));
  }
  return EPM_OK;
}
