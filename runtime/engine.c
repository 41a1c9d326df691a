/* SPDX-License-Identifier: Apache-2.0 */
/* engine.c — the EP step (epmoe/engine.h): stages on the backend, collectives
 * on the comm, all buffers allocated once at create time. The allgather mode
 * is here; the alltoall mode and the per-step choice are in engine_a2a.c.
 *
 * Failure agreement: the sizes exchange is the first collective of a step.
 * A rank whose arguments or local stages (route, quantize) failed sends
 * STEP_FAILED instead of its token count, so every rank learns of it in the
 * same collective and returns an error; nobody is left waiting in the
 * allgather. A failure after the dispatch (the experts, a collective) cannot
 * be agreed on without another collective per step, so it aborts the comm. */
#include "engine_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "epmoe/plan.h"

#define STEP_FAILED EPM__STEP_FAILED

static const char *const stage_names[EPM_STAGE_COUNT] = {
#define EPM__STAGE_NAME(id, name) [EPM_STAGE_##id] = name,
    EPM_ENGINE_STAGES(EPM__STAGE_NAME)
#undef EPM__STAGE_NAME
};

const char *epm_engine_stage_name(epm_engine_stage_t s) {
  if ((int)s < 0 || s >= EPM_STAGE_COUNT) return "invalid";
  return stage_names[s];
}

/* One buffer of the plan (capacity case), as `elem`-byte elements: the plan
 * did the overflow-checked size math; partials may be wider than its bf16. */
static epm_status_t alloc_buf(epm_engine_t *e, const epm_plan_buf_t *b, size_t elem, const char *what,
                              void **out) {
  size_t bytes = 0;
  if (epm_mul_size((size_t)b->elements, elem, &bytes))
    return epm_error(EPM_ERR_OVERFLOW, "engine buffer %s: %lld elements x %zu bytes overflows", what,
                     (long long)b->elements, elem);
  epm_status_t st = epm_backend_alloc(e->be, bytes, out);
  if (st != EPM_OK) return epm_error_wrap(st, "engine buffer %s (%zu bytes)", what, bytes);
  e->buffer_bytes += bytes;
  return EPM_OK;
}

static void free_buffers(epm_engine_t *e) {
  if (!e->owns_buffers) return;
  epm__a2a_free(e);
  epm__fixed_free(e);
  epm_backend_free(e->be, e->pk_loc);
  epm_backend_free(e->be, e->pk_all);
  void *bufs[] = {e->x_dev,   e->x_woi, e->logits_dev, e->y_dev,      e->ids_loc, e->ids_all,     e->wts_loc,
                  e->wts_all, e->packed_loc, e->packed_all, e->sf_loc,  e->sf_all,      e->partial_all,
                  e->y_red,   e->amax_buf};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) epm_backend_free(e->be, bufs[i]);
  if (e->y32 != e->y_red) epm_backend_free(e->be, e->y32);
}

/* The step buffers of another engine of the same shape (a model's layers
 * step one after another). Everything checked names both values. */
static epm_status_t borrow_buffers(epm_engine_t *e, const epm_engine_t *o) {
  const char *what = NULL;
  long long mine = 0, theirs = 0;
#define SAME(field, name)                        \
  if (!what && (e->field) != (o->field)) {       \
    what = name;                                 \
    mine = (long long)(e->field);                \
    theirs = (long long)(o->field);              \
  }
  SAME(H, "hidden")
  SAME(E, "experts")
  SAME(k, "top_k")
  SAME(max_m, "max_tokens_per_rank")
  SAME(cfg.partial_dtype, "partial dtype")
  SAME(weight_on_input, "weight on input")
  SAME(rank, "rank")
  SAME(size, "EP size")
  SAME(cfg.dispatch, "dispatch mode")
  SAME(recv_cap, "alltoall receive capacity")
  SAME(fixed, "fixed capacity")
#undef SAME
  if (!what && (o->comm != e->comm || o->be != e->be)) return epm_error(EPM_ERR_INVALID_ARG,
      "share_buffers: the other engine uses another comm or backend");
  if (what)
    return epm_error(EPM_ERR_INVALID_ARG, "share_buffers: %s is %lld here and %lld in the other engine", what, mine,
                     theirs);
  e->x_dev = o->x_dev;
  e->x_woi = o->x_woi;
  e->logits_dev = o->logits_dev;
  e->y_dev = o->y_dev;
  e->ids_loc = o->ids_loc;
  e->ids_all = o->ids_all;
  e->wts_loc = o->wts_loc;
  e->wts_all = o->wts_all;
  e->packed_loc = o->packed_loc;
  e->packed_all = o->packed_all;
  e->sf_loc = o->sf_loc;
  e->sf_all = o->sf_all;
  e->partial_all = o->partial_all;
  e->y_red = o->y_red;
  e->y32 = o->y32;
  e->amax_buf = o->amax_buf;
  e->pk_loc = o->pk_loc;
  e->pk_all = o->pk_all;
  epm__a2a_borrow(e, o);
  epm__fixed_borrow(e, o);
  e->owns_buffers = 0;
  return EPM_OK;
}

/* All step buffers, once, for max_tokens_per_rank on every rank. */
static epm_status_t alloc_buffers(epm_engine_t *e) {
  e->owns_buffers = 1;
  epm_plan_t *p = malloc(sizeof *p);
  if (!p) return epm_error(EPM_ERR_NOMEM, "step plan (%zu bytes)", sizeof *p);
  epm_plan_config_t pc = {.dims = e->layer->dims, .ep_size = e->size, .rank = e->rank,
                          .placement = e->cfg.placement, /* valid during create */
                          .tokens_per_rank = NULL, .max_tokens_per_rank = e->max_m,
                          .recv_capacity = e->cfg.recv_capacity};
  epm_status_t st = epm_plan_compute(&pc, p);
  if (st != EPM_OK) {
    free(p);
    return st;
  }
  const epm_plan_buf_t one = {1, 1, 1, sizeof(float)};
  if (epm_backend_is_device(e->be)) {
    EPM_TRY_GOTO(alloc_buf(e, &p->x_local, sizeof(epm_bf16_t), "x", (void **)&e->x_dev), st, out);
    EPM_TRY_GOTO(alloc_buf(e, &p->logits_local, sizeof(float), "logits", (void **)&e->logits_dev), st, out);
    EPM_TRY_GOTO(alloc_buf(e, &p->y_local, sizeof(epm_bf16_t), "y", (void **)&e->y_dev), st, out);
  }
  if (e->weight_on_input)
    EPM_TRY_GOTO(alloc_buf(e, &p->x_local, sizeof(epm_bf16_t), "weighted x", (void **)&e->x_woi), st, out);
  EPM_TRY_GOTO(alloc_buf(e, &p->topk_ids_local, sizeof(int32_t), "topk_ids", (void **)&e->ids_loc), st, out);
  EPM_TRY_GOTO(alloc_buf(e, &p->topk_w_local, sizeof(float), "topk_weights", (void **)&e->wts_loc), st, out);
  EPM_TRY_GOTO(epm_backend_alloc(e->be, p->xq_local.bytes, (void **)&e->packed_loc), st, out);
  EPM_TRY_GOTO(epm_backend_alloc(e->be, p->xsf_local.bytes, (void **)&e->sf_loc), st, out);
  e->buffer_bytes += p->xq_local.bytes + p->xsf_local.bytes;
  if (e->ag_bufs) { /* the gathered rows exist only where the allgather mode can run */
    EPM_TRY_GOTO(alloc_buf(e, &p->topk_ids_gathered, sizeof(int32_t), "gathered topk_ids", (void **)&e->ids_all), st,
                 out);
    EPM_TRY_GOTO(alloc_buf(e, &p->topk_w_gathered, sizeof(float), "gathered topk_weights", (void **)&e->wts_all), st,
                 out);
    EPM_TRY_GOTO(epm_backend_alloc(e->be, p->xq_gathered.bytes, (void **)&e->packed_all), st, out);
    EPM_TRY_GOTO(epm_backend_alloc(e->be, p->xsf_gathered.bytes, (void **)&e->sf_all), st, out);
    e->buffer_bytes += p->xq_gathered.bytes + p->xsf_gathered.bytes;
    EPM_TRY_GOTO(alloc_buf(e, &p->partial_y, e->partial_elem, "partial y", &e->partial_all), st, out);
    epm_plan_buf_t rl = {e->max_m, (int64_t)e->fx_rec, 0, 0}, ra = {e->max_M, (int64_t)e->fx_rec, 0, 0};
    if (epm_mul_i64(rl.rows, rl.cols, &rl.elements) || epm_mul_i64(ra.rows, ra.cols, &ra.elements)) {
      st = epm_error(EPM_ERR_OVERFLOW, "token records: %lld rows x %zu bytes overflows", (long long)e->max_M,
                     e->fx_rec);
      goto out;
    }
    EPM_TRY_GOTO(alloc_buf(e, &rl, 1, "token records", (void **)&e->pk_loc), st, out);
    EPM_TRY_GOTO(alloc_buf(e, &ra, 1, "gathered token records", (void **)&e->pk_all), st, out);
  }
  EPM_TRY_GOTO(alloc_buf(e, &p->y_local, e->partial_elem, "reduced y", &e->y_red), st, out);
  if (e->cfg.partial_dtype == EPM_DTYPE_F32)
    e->y32 = e->y_red;
  else
    EPM_TRY_GOTO(alloc_buf(e, &p->y_local, sizeof(float), "y fp32", (void **)&e->y32), st, out);
  EPM_TRY_GOTO(alloc_buf(e, &one, sizeof(float), "amax", (void **)&e->amax_buf), st, out);
  /* Last: on the cpu backend its host views alias the buffers above. */
  if (e->a2a_bufs) EPM_TRY_GOTO(epm__a2a_alloc(e, p->a2a_send_rows, p->a2a_recv_rows), st, out);
  if (e->fixed) EPM_TRY_GOTO(epm__fixed_alloc(e), st, out);
out:
  free(p);
  return st;
}

/* Rows per expert call from the workspace budget (and the CUDA grid limits),
 * by the plan's worst case for this rank's slots. The backend's expert
 * scratch is sized for this many rows. */
static epm_status_t plan_chunk_rows(epm_engine_t *e) {
  epm_plan_t *p = malloc(sizeof *p);
  if (!p) return epm_error(EPM_ERR_NOMEM, "step plan (%zu bytes)", sizeof *p);
  /* fixed capacity: every call covers all ranks' header and pad rows too */
  epm_plan_config_t pc = {.dims = e->layer->dims, .ep_size = e->size, .rank = e->rank,
                          .placement = e->cfg.placement, .max_tokens_per_rank = e->max_m + (e->fixed ? 1 : 0),
                          .recv_capacity = e->cfg.recv_capacity, .workspace_bytes = e->cfg.workspace_bytes};
  epm_status_t st = epm_plan_compute(&pc, p);
  if (st == EPM_OK) e->chunk_rows = p->ws_chunk_tokens;
  free(p);
  return st;
}

/* The layer's bank must be exactly this rank's slots of the placement, and a
 * placed bank must route with that placement's replica table (a bank of the
 * same experts cut from another map would serve other pairs). */
static epm_status_t check_bank_in(const epm_layer_t *l, int rank, int size, const epm_placement_t *p) {
  const int64_t E = l->dims.num_experts;
  if (p->num_experts != E || p->ep_size != size)
    return epm_error(EPM_ERR_INVALID_ARG, "the placement maps %lld experts over %lld ranks; the layer has %lld "
                     "experts and the comm %d ranks", (long long)p->num_experts, (long long)p->ep_size,
                     (long long)E, size);
  EPM_TRY(epm_layer_check_bank(l));
  const int64_t first = p->rank_start[rank], n = epm_placement_rank_slots(p, rank);
  if (l->experts.count != n)
    return epm_error(EPM_ERR_INVALID_ARG, "rank %d of %d must hold experts in %lld slots (global slots [%lld, %lld)); "
                     "the layer holds %lld", rank, size, (long long)n, (long long)first, (long long)(first + n),
                     (long long)l->experts.count);
  for (int64_t i = 0; i < n; i++)
    if (epm_layer_slot_expert(l, i) != p->slot_expert[first + i])
      return epm_error(EPM_ERR_INVALID_ARG, "rank %d of %d must hold experts as the placement puts them: bank slot "
                       "%lld holds expert %lld, the placement expert %d", rank, size, (long long)i,
                       (long long)epm_layer_slot_expert(l, i), p->slot_expert[first + i]);
  if (l->slots.num_slots == 0) {
    if (p->num_slots != E)
      return epm_error(EPM_ERR_INVALID_ARG, "an unplaced expert slice cannot serve a placement with %lld redundant "
                       "slots; load the layer for the placement", (long long)(p->num_slots - E));
    return EPM_OK;
  }
  int32_t *want = malloc((size_t)p->num_slots * sizeof *want);
  if (!want) return epm_error(EPM_ERR_NOMEM, "replica table of %lld slots", (long long)p->num_slots);
  epm_status_t st = epm_placement_local_map(p, rank, want);
  if (st == EPM_OK && (l->slots.num_slots != p->num_slots || l->slots.first_slot != first ||
                       memcmp(l->slots.rep_start, p->replica_start, (size_t)(E + 1) * sizeof *want) != 0 ||
                       memcmp(l->slots.rep_local, want, (size_t)p->num_slots * sizeof *want) != 0))
    st = epm_error(EPM_ERR_INVALID_ARG, "rank %d of %d: the layer was placed with another map (its replica table "
                   "differs from the engine's placement)", rank, size);
  free(want);
  return st;
}

static epm_status_t check_bank(const epm_layer_t *l, int rank, int size, const epm_placement_t *given) {
  if (given) return check_bank_in(l, rank, size, given);
  epm_placement_t dflt = EPM_PLACEMENT_INIT;
  EPM_TRY(epm_placement_default(l->dims.num_experts, size, 0, &dflt));
  epm_status_t st = check_bank_in(l, rank, size, &dflt);
  epm_placement_free(&dflt);
  return st;
}

epm_status_t epm_engine_create(const epm_engine_config_t *cfg, const epm_layer_t *layer, epm_comm_t *comm,
                               epm_backend_t *be, epm_engine_t **out) {
  if (!cfg || !layer || !comm || !be || !out)
    return epm_error(EPM_ERR_INVALID_ARG, "engine_create: NULL argument");
  if (cfg->max_tokens_per_rank <= 0)
    return epm_error(EPM_ERR_INVALID_ARG, "max_tokens_per_rank = %lld must be > 0",
                     (long long)cfg->max_tokens_per_rank);
  if (cfg->scale_mode != EPM_SCALE_STATIC && cfg->scale_mode != EPM_SCALE_DYNAMIC)
    return epm_error(EPM_ERR_INVALID_ARG, "scale mode %d is not static (0) or dynamic (1)",
                     (int)cfg->scale_mode);
  if (epm_dtype_size(cfg->partial_dtype) == 0)
    return epm_error(EPM_ERR_INVALID_ARG, "partial dtype %d is not f32 (0) or bf16 (1)",
                     (int)cfg->partial_dtype);
  if (cfg->dispatch != EPM_DISPATCH_ALLGATHER && cfg->dispatch != EPM_DISPATCH_ALLTOALL &&
      cfg->dispatch != EPM_DISPATCH_AUTO)
    return epm_error(EPM_ERR_INVALID_ARG, "dispatch mode %d is not allgather (0), alltoall (1) or auto (2)",
                     (int)cfg->dispatch);
  if (cfg->recv_capacity < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "recv_capacity = %lld must be >= 0 (0 = EP x max_tokens_per_rank)",
                     (long long)cfg->recv_capacity);
  if (cfg->fixed_capacity && (cfg->dispatch != EPM_DISPATCH_ALLGATHER || cfg->scale_mode != EPM_SCALE_STATIC))
    return epm_error(EPM_ERR_INVALID_ARG, "fixed capacity needs allgather dispatch and the static scale (got %s "
                     "dispatch, %s scale)", epm_dispatch_mode_name(cfg->dispatch),
                     cfg->scale_mode == EPM_SCALE_STATIC ? "static" : "dynamic");
  if (cfg->fixed_capacity && epm_backend_is_device(be) && layer->dims.routing == EPM_ROUTING_LLAMA4)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "fixed capacity on %s: the router weight on the input (llama4) has no "
                     "kernel yet, so the step cannot be one graph", epm_backend_name(be));
  epm_dispatch_cost_t cost = cfg->dispatch_cost;
  {
    const epm_dispatch_cost_t zero = {{0, 0}, {0, 0}};
    if (!memcmp(&cost, &zero, sizeof cost)) epm_dispatch_cost_default(&cost);
    EPM_TRY(epm_dispatch_cost_validate(&cost));
  }
  EPM_TRY(epm_model_dims_validate(&layer->dims));
  const int rank = epm_comm_rank(comm), size = epm_comm_size(comm);
  EPM_TRY(check_bank(layer, rank, size, cfg->placement));
  const int dev_be = epm_backend_is_device(be), dev_comm = epm_comm_mem_kind(comm) == EPM_MEM_DEVICE;
  if (dev_be != dev_comm)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "backend '%s' keeps buffers in %s memory but comm '%s' moves %s memory",
                     epm_backend_name(be), dev_be ? "device" : "host", epm_comm_backend_name(comm),
                     dev_comm ? "device" : "host");
  if (cfg->scale_mode == EPM_SCALE_STATIC && !(layer->input_scale > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "static global scale needs input_scale > 0; layer %lld has %g",
                     (long long)layer->layer_index, (double)layer->input_scale);

  epm_engine_t *e = calloc(1, sizeof *e);
  if (!e) return epm_error(EPM_ERR_NOMEM, "engine object (%zu bytes)", sizeof *e);
  epm_status_t st = EPM_OK;
  e->cfg = *cfg;
  e->layer = layer;
  e->comm = comm;
  e->be = be;
  e->rank = rank;
  e->size = size;
  e->H = layer->dims.hidden;
  e->E = layer->dims.num_experts;
  e->k = layer->dims.top_k;
  e->max_m = cfg->max_tokens_per_rank;
  e->use_shared = cfg->shared_expert && layer->dims.shared_experts > 0 && layer->shared.count > 0;
  /* As the reference layer (and vLLM) does for llama4: the top-1 weight is
   * applied to the input before quantization, the experts sum with weight 1. */
  e->weight_on_input = layer->dims.routing == EPM_ROUTING_LLAMA4;
  e->partial_elem = epm_dtype_size(cfg->partial_dtype);
  e->fixed = cfg->fixed_capacity != 0;
  e->ag_bufs = cfg->dispatch != EPM_DISPATCH_ALLTOALL && !e->fixed;
  e->a2a_bufs = cfg->dispatch != EPM_DISPATCH_ALLGATHER;
  e->cost = cost;
  pthread_mutex_init(&e->stats_mu, NULL);
  EPM_TRY_GOTO(epm_dispatch_row_bytes(e->H, e->k, cfg->partial_dtype, &e->drow, &e->crow), st, fail);
  if (epm_mul_i64(e->max_m, size, &e->max_M)) {
    st = epm_error(EPM_ERR_OVERFLOW, "max tokens %lld x EP %d overflows", (long long)e->max_m, size);
    goto fail;
  }
  /* alltoall rows, as the plan computes them (alloc_buffers checks they
   * agree): a token reaches at most min(k, P) ranks, once each. */
  e->send_cap = e->max_m * (e->k < size ? e->k : size);
  e->recv_cap = cfg->recv_capacity > 0 && cfg->recv_capacity < e->max_M ? cfg->recv_capacity : e->max_M;
  e->counts = calloc((size_t)size, sizeof *e->counts);
  e->load_total = calloc((size_t)e->E, sizeof *e->load_total);
  e->load_last = calloc((size_t)e->E, sizeof *e->load_last);
  if (epm_backend_is_device(be)) e->ids_host = malloc((size_t)(e->max_m * e->k) * sizeof *e->ids_host);
  if (!e->counts || !e->load_total || !e->load_last || (epm_backend_is_device(be) && !e->ids_host)) {
    st = epm_error(EPM_ERR_NOMEM, "sizes array for %d ranks and load counters for %lld experts", size,
                   (long long)e->E);
    goto fail;
  }
  EPM_TRY_GOTO(epm__a2a_host_init(e, cfg->placement), st, fail);
  EPM_TRY_GOTO(epm__fixed_layout(e), st, fail); /* the record layout, both allgather forms */
  if (e->fixed) {
    e->fx_ones = malloc((size_t)size * sizeof *e->fx_ones);
    e->fx_rows_each = malloc((size_t)size * sizeof *e->fx_rows_each);
    if (!e->fx_ones || !e->fx_rows_each) {
      st = epm_error(EPM_ERR_NOMEM, "fixed capacity counts for %d ranks", size);
      goto fail;
    }
    for (int r = 0; r < size; r++) {
      e->fx_ones[r] = 1;
      e->fx_rows_each[r] = e->fx_rows;
    }
  }
  if (epm_backend_is_device(be) && !cfg->fixed_capacity)
    for (int i = 0; i < EPM__MARKS; i++)
      if (epm_backend_mark_create(be, &e->marks[i]) != EPM_OK) { /* then sync + clock per stage */
        for (int j = 0; j < i; j++) epm_backend_mark_destroy(be, e->marks[j]);
        memset(e->marks, 0, sizeof e->marks);
        break;
      }
  EPM_TRY_GOTO(plan_chunk_rows(e), st, fail);
  EPM_TRY_GOTO(epm_backend_weights_load(be, layer, e->max_m, e->chunk_rows, &e->w), st, fail);
  if (cfg->share_buffers)
    EPM_TRY_GOTO(borrow_buffers(e, cfg->share_buffers), st, fail);
  else
    EPM_TRY_GOTO(alloc_buffers(e), st, fail);
  EPM_LOG(EPM_LOG_INFO, "engine",
          "layer %lld: %lld expert slots (first: expert %lld) of %lld experts, max %lld tokens/rank (%lld gathered), "
          "%s scale, shared %s, %s partials, %s dispatch (receive capacity %lld rows), %zu buffer bytes%s on %s",
          (long long)layer->layer_index, (long long)layer->experts.count,
          (long long)epm_layer_slot_expert(layer, 0), (long long)e->E,
          (long long)e->max_m, (long long)e->max_M,
          cfg->scale_mode == EPM_SCALE_STATIC ? "static" : "dynamic", e->use_shared ? "on" : "off",
          epm_dtype_name(cfg->partial_dtype), epm_dispatch_mode_name(cfg->dispatch),
          (long long)epm_engine_recv_capacity(e), e->buffer_bytes,
          e->owns_buffers ? "" : " (buffers shared with another engine)", epm_backend_name(be));
  e->cfg.placement = NULL; /* read during create only */
  *out = e;
  return EPM_OK;
fail:
  epm_engine_destroy(e);
  return st;
}

void epm_engine_destroy(epm_engine_t *e) {
  if (!e) return;
  free_buffers(e);
  epm_backend_weights_free(e->be, e->w);
  epm__a2a_host_free(e);
  free(e->counts);
  free(e->load_total);
  free(e->load_last);
  free(e->ids_host);
  free(e->fx_ones);
  free(e->fx_rows_each);
  for (int i = 0; i < EPM__MARKS; i++) epm_backend_mark_destroy(e->be, e->marks[i]);
  epm__graph_free(e);
  pthread_mutex_destroy(&e->stats_mu);
  free(e);
}

size_t epm_engine_buffer_bytes(const epm_engine_t *e) { return e ? e->buffer_bytes : 0; }
int64_t epm_engine_chunk_rows(const epm_engine_t *e) { return e ? e->chunk_rows : 0; }
int64_t epm_engine_recv_capacity(const epm_engine_t *e) { return e && e->a2a_bufs ? e->recv_cap : 0; }

void epm_engine_stats(const epm_engine_t *e, epm_engine_stats_t *out) {
  pthread_mutex_lock((pthread_mutex_t *)&e->stats_mu);
  *out = e->stats;
  pthread_mutex_unlock((pthread_mutex_t *)&e->stats_mu);
}

void epm_engine_stats_reset(epm_engine_t *e) {
  pthread_mutex_lock(&e->stats_mu);
  memset(&e->stats, 0, sizeof e->stats);
  memset(e->load_total, 0, (size_t)e->E * sizeof *e->load_total);
  memset(e->load_last, 0, (size_t)e->E * sizeof *e->load_last);
  pthread_mutex_unlock(&e->stats_mu);
}

epm_status_t epm_engine_expert_load(const epm_engine_t *e, uint64_t *total, uint64_t *last, int64_t n) {
  if (!e) return epm_error(EPM_ERR_INVALID_ARG, "engine_expert_load: NULL engine");
  if (n != e->E)
    return epm_error(EPM_ERR_INVALID_ARG, "engine_expert_load: %lld counters asked; the layer has %lld experts",
                     (long long)n, (long long)e->E);
  pthread_mutex_lock((pthread_mutex_t *)&e->stats_mu);
  if (total) memcpy(total, e->load_total, (size_t)n * sizeof *total);
  if (last) memcpy(last, e->load_last, (size_t)n * sizeof *last);
  pthread_mutex_unlock((pthread_mutex_t *)&e->stats_mu);
  return EPM_OK;
}

/* After a successful step: count the routed ids of this rank's own tokens
 * per expert (copied out first on a device backend). */
static epm_status_t count_load(epm_engine_t *e, int64_t m) {
  const int64_t n = m * e->k;
  const int32_t *ids = e->ids_loc;
  if (n > 0 && e->ids_host) {
    EPM_TRY(epm_backend_copy_d2h(e->be, e->ids_host, e->ids_loc, (size_t)n * sizeof *e->ids_host));
    ids = e->ids_host;
  }
  pthread_mutex_lock(&e->stats_mu);
  memset(e->load_last, 0, (size_t)e->E * sizeof *e->load_last);
  for (int64_t i = 0; i < n; i++)
    if (ids[i] >= 0 && ids[i] < e->E) e->load_last[ids[i]]++;
  for (int64_t x = 0; x < e->E; x++) e->load_total[x] += e->load_last[x];
  pthread_mutex_unlock(&e->stats_mu);
  return EPM_OK;
}

/* Stage timing: on a device backend the stage's work is queued, so wait for
 * it before reading the clock (otherwise the time lands on a later stage). */
typedef epm__step_timer_t step_timer_t;

static void mark_start(step_timer_t *tm) {
  epm_engine_t *e = tm->e;
  tm->nmarks = 0;
  if (e->marks[0] && epm_backend_mark_record(e->be, e->marks[0]) == EPM_OK) tm->mark_stage[tm->nmarks++] = -1;
}

epm_status_t epm__engine_marks_read(step_timer_t *tm) {
  epm_engine_t *e = tm->e;
  for (int i = 1; i < tm->nmarks; i++) {
    double sec = 0;
    EPM_TRY(epm_backend_mark_elapsed(e->be, e->marks[i - 1], e->marks[i], &sec));
    tm->s[tm->mark_stage[i]] += sec;
  }
  tm->nmarks = 0;
  return EPM_OK;
}

epm_status_t epm__engine_stage_end(step_timer_t *tm, epm_engine_stage_t stage) {
  epm_engine_t *e = tm->e;
  if (e->capturing) return EPM_OK; /* a graph step is timed as a whole */
  if (tm->nmarks > 0 && tm->nmarks < EPM__MARKS) { /* a mark, no wait */
    EPM_TRY(epm_backend_mark_record(e->be, e->marks[tm->nmarks]));
    tm->mark_stage[tm->nmarks++] = (int)stage;
    return EPM_OK;
  }
  if (epm_backend_is_device(e->be)) EPM_TRY(epm_backend_sync(e->be));
  double t = epm_clock_s();
  tm->s[stage] += t - tm->t;
  tm->t = t;
  if (tm->e->cfg.on_stage) tm->e->cfg.on_stage(tm->e->cfg.on_stage_arg, (int)stage);
  return EPM_OK;
}

static void record(epm_engine_t *e, const step_timer_t *tm, int64_t m, const epm__step_plan_t *sp, float a1,
                   int ok) {
  pthread_mutex_lock(&e->stats_mu);
  epm_engine_stats_t *s = &e->stats;
  if (ok) {
    const epm_comm_traffic_t *tr = tm->tr;
    s->steps++;
    s->tokens_local += (uint64_t)m;
    s->tokens_gathered += (uint64_t)sp->M;
    s->last_m = m;
    s->last_M = sp->M;
    s->last_input_scale = a1;
    s->last_mode = sp->mode;
    s->steps_mode[sp->mode == EPM_DISPATCH_ALLTOALL]++;
    s->last_expert_rows = e->fixed ? e->fx_rows * e->size : sp->mode == EPM_DISPATCH_ALLTOALL ? sp->rows_in : sp->M;
    s->last_expert_chunks = e->last_chunks;
    s->last_dispatch_sent = tr[1].bytes_sent - tr[0].bytes_sent;
    s->last_dispatch_recv = tr[1].bytes_recv - tr[0].bytes_recv;
    s->last_combine_sent = tr[2].bytes_sent - tr[1].bytes_sent;
    s->last_combine_recv = tr[2].bytes_recv - tr[1].bytes_recv;
    s->bytes_sent += tr[2].bytes_sent - tr[0].bytes_sent;
    s->bytes_recv += tr[2].bytes_recv - tr[0].bytes_recv;
    for (int i = 0; i < EPM_DISPATCH_MODES; i++) {
      s->last_model_s[i] = sp->model_s[i];
      s->last_model_bytes[i] = sp->model_bytes[i];
    }
    for (int i = 0; i < EPM_STAGE_COUNT; i++) {
      s->last_s[i] = tm->s[i];
      s->sum_s[i] += tm->s[i];
      if (tm->s[i] > s->max_s[i]) s->max_s[i] = tm->s[i];
    }
  } else {
    s->failed_steps++;
  }
  pthread_mutex_unlock(&e->stats_mu);
}

/* Local part before the dispatch: inputs in, route, and (static scale)
 * quantize. Any error here is reported to the peers by the sizes exchange. */
static epm_status_t local_stages(epm_engine_t *e, step_timer_t *tm, const epm_bf16_t *x, const float *logits,
                                 int64_t m, float G, const epm_bf16_t **x_be, const epm_bf16_t **x_q,
                                 float *amax) {
  if (m < 0 || m > e->max_m)
    return epm_error(EPM_ERR_INVALID_ARG, "rank %d: %lld tokens is outside [0, %lld] (max_tokens_per_rank)",
                     e->rank, (long long)m, (long long)e->max_m);
  if (m > 0 && (!x || !logits))
    return epm_error(EPM_ERR_INVALID_ARG, "rank %d: %lld tokens but x or logits is NULL", e->rank, (long long)m);
  const float *logits_be = logits;
  *x_be = x;
  if (e->stage_io) {
    EPM_TRY(epm_backend_copy_h2d(e->be, e->x_dev, x, (size_t)(m * e->H) * sizeof *x));
    EPM_TRY(epm_backend_copy_h2d(e->be, e->logits_dev, logits, (size_t)(m * e->E) * sizeof *logits));
    *x_be = e->x_dev;
    logits_be = e->logits_dev;
  }
  EPM_TRY(epm_backend_route(e->be, e->w, logits_be, m, e->ids_loc, e->wts_loc));
  EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_ROUTE));
  *x_q = *x_be; /* what the routed experts see; the shared expert reads x_be */
  if (e->weight_on_input) {
    EPM_TRY(epm_backend_weight_on_input(e->be, *x_be, m, e->H, e->wts_loc, e->x_woi));
    *x_q = e->x_woi;
  }
  if (e->cfg.scale_mode == EPM_SCALE_DYNAMIC) {
    EPM_TRY(epm_backend_amax(e->be, *x_q, m, e->H, amax));
  } else {
    (void)G; /* the layer's static scale: in backend memory since load */
    EPM_TRY(epm_backend_quantize_static(e->be, e->w, *x_q, m, e->packed_loc, e->sf_loc));
  }
  return epm__engine_stage_end(tm, EPM_STAGE_QUANTIZE);
}

/* After the sizes exchange: validate every rank's count, total M. */
static epm_status_t check_counts(epm_engine_t *e, int64_t *M) {
  int64_t total = 0;
  for (int r = 0; r < e->size; r++) {
    if (e->counts[r] == STEP_FAILED)
      return epm_error(EPM_ERR_ABORTED, "step abandoned: rank %d failed before the dispatch (see its log)", r);
    if (e->counts[r] < 0 || e->counts[r] > e->max_m)
      return epm_error(EPM_ERR_INVALID_ARG, "rank %d sent %lld tokens; capacity is [0, %lld] per rank", r,
                       (long long)e->counts[r], (long long)e->max_m);
    total += e->counts[r];
  }
  *M = total;
  return EPM_OK;
}

/* The dynamic scale: the group's amax, then the decode scale a1 = amax/(6*448)
 * as ModelOpt calibrates input_scale, and G = fp32(1/a1) exactly as for a
 * static input_scale (same on all ranks). */
static epm_status_t dynamic_scale(epm_engine_t *e, float amax, float *a1) {
  if (epm_backend_is_device(e->be)) {
    EPM_TRY(epm_backend_copy_h2d(e->be, e->amax_buf, &amax, sizeof amax));
    EPM_TRY(epm_comm_allreduce_max_f32(e->comm, e->amax_buf, 1));
    EPM_TRY(epm_comm_wait(e->comm, 0));
    EPM_TRY(epm_backend_copy_d2h(e->be, &amax, e->amax_buf, sizeof amax));
  } else {
    *e->amax_buf = amax;
    EPM_TRY(epm_comm_allreduce_max_f32(e->comm, e->amax_buf, 1));
    amax = *e->amax_buf;
  }
  *a1 = (amax > 0.0f && amax <= 3.0e38f) ? amax / (EPM_E2M1_MAX * EPM_E4M3_MAX) : 1.0f;
  if (!(*a1 > 0.0f)) *a1 = 1.0f; /* amax so small that amax/2688 underflows */
  return EPM_OK;
}

epm_status_t epm__engine_experts(epm_engine_t *e, const uint8_t *packed, const uint8_t *sf, const int32_t *ids,
                                 const float *wts, int64_t rows, float a1, void *partial) {
  const int64_t H = e->H, k = e->k, step = e->chunk_rows;
  e->last_chunks = 0;
  for (int64_t c = 0; c < rows || (rows == 0 && c == 0); c += step) {
    const int64_t n = rows - c < step ? rows - c : step;
    EPM_TRY(epm_backend_experts(e->be, e->w, packed + c * (H / 2), sf + c * (H / EPM_NVFP4_BLOCK), a1, ids + c * k,
                                wts + c * k, n, e->cfg.partial_dtype,
                                (char *)partial + (size_t)(c * H) * e->partial_elem));
    e->last_chunks++;
    if (rows == 0) break;
  }
  return EPM_OK;
}

/* Everything from the dispatch on. Any error here leaves peers inside a
 * collective, so the caller aborts the comm. */
static epm_status_t dispatch_combine(epm_engine_t *e, step_timer_t *tm, const epm__step_plan_t *sp,
                                     const epm_bf16_t *x_be, const epm_bf16_t *x_q, int64_t m, float a1,
                                     epm_bf16_t *y_local) {
  const float G = 1.0f / a1;
  const int64_t H = e->H, k = e->k, M = sp->M;
  if (e->cfg.scale_mode == EPM_SCALE_DYNAMIC) {
    EPM_TRY(epm_backend_quantize(e->be, x_q, m, H, G, e->packed_loc, e->sf_loc));
    EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_QUANTIZE));
  }
  if (!e->fixed) epm_comm_traffic(e->comm, &tm->tr[0]);
  if (e->fixed) {
    EPM_TRY(epm__fixed_combine(e, tm, m, a1)); /* y32 = the routed sum */
  } else if (sp->mode == EPM_DISPATCH_ALLTOALL) {
    EPM_TRY(epm__a2a_run(e, tm, sp, m, a1)); /* y32 = the routed sum */
  } else {
    /* One record per token (codes, scales, ids, weights): one gather, not four. */
    (void)k;
    EPM_TRY(epm__records_pack(e, e->pk_loc, m));
    const epm_comm_gather_buf_t buf = {e->pk_loc, e->pk_all, e->fx_rec};
    EPM_TRY(epm_comm_allgatherv_multi(e->comm, &buf, 1, e->counts));
    EPM_TRY(epm_comm_wait(e->comm, 0));
    EPM_TRY(epm__records_unpack(e, e->pk_all, M, e->packed_all, e->sf_all, e->ids_all, e->wts_all));
    epm_comm_traffic(e->comm, &tm->tr[1]);
    EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_ALLGATHER));

    EPM_TRY(epm__engine_experts(e, e->packed_all, e->sf_all, e->ids_all, e->wts_all, M, a1, e->partial_all));
    EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_EXPERTS));

    EPM_TRY(epm_comm_reduce_scatterv(e->comm, e->partial_all, e->y_red, e->counts, H, e->cfg.partial_dtype));
    EPM_TRY(epm_comm_wait(e->comm, 0));
    epm_comm_traffic(e->comm, &tm->tr[2]);
    EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_REDUCE_SCATTER));
    if (e->cfg.partial_dtype == EPM_DTYPE_BF16) EPM_TRY(epm_backend_bf16_to_f32(e->be, e->y_red, m * H, e->y32));
  }

  /* Own tokens only from here: y = bf16(routed sum + shared(x)). */
  const int64_t n = m * H;
  if (e->use_shared) EPM_TRY(epm_backend_shared_add(e->be, e->w, x_be, m, e->y32));
  if (e->stage_io) {
    EPM_TRY(epm_backend_f32_to_bf16(e->be, e->y32, n, e->y_dev));
    EPM_TRY(epm_backend_copy_d2h(e->be, y_local, e->y_dev, (size_t)n * sizeof *y_local));
  } else {
    EPM_TRY(epm_backend_f32_to_bf16(e->be, e->y32, n, y_local));
  }
  return epm__engine_stage_end(tm, EPM_STAGE_SHARED);
}

static epm_status_t step(epm_engine_t *e, const epm_bf16_t *x_local, const float *logits, int64_t m_r,
                         epm_bf16_t *y_local, int in_backend_mem) {
  if (!e) return epm_error(EPM_ERR_INVALID_ARG, "engine_step: NULL engine");
  e->stage_io = epm_backend_is_device(e->be) && !in_backend_mem;
  step_timer_t tm = {.e = e, .t = epm_clock_s()};
  if (!e->fixed) mark_start(&tm);
  const double t0 = tm.t;
  /* Decode scale a1 of the dispatched activations; encode scale G = fp32(1/a1). */
  float a1 = e->layer->input_scale, amax = 0.0f;
  const epm_bf16_t *x_be = NULL, *x_q = NULL;
  epm__step_plan_t sp = {.mode = EPM_DISPATCH_ALLGATHER};

  if (e->fixed && epm_backend_is_device(e->be)) {
    epm_status_t gst = epm__graph_step(e, &tm, x_local, logits, m_r, y_local, in_backend_mem, &sp.M);
    if (gst == EPM_OK) {
      tm.s[EPM_STAGE_TOTAL] = epm_clock_s() - t0;
      gst = count_load(e, m_r);
    }
    record(e, &tm, m_r, &sp, a1, gst == EPM_OK);
    return gst;
  }
  epm_status_t local = local_stages(e, &tm, x_local, logits, m_r, 1.0f / a1, &x_be, &x_q, &amax);
  if (local == EPM_OK && m_r > 0 && !y_local)
    local = epm_error(EPM_ERR_INVALID_ARG, "rank %d: %lld tokens but y is NULL", e->rank, (long long)m_r);
  epm_status_t st;
  if (e->fixed) {
    /* No sizes exchange: the count travels in the segment header. */
    epm_comm_traffic(e->comm, &tm.tr[0]);
    epm__fixed_header(e, m_r, local != EPM_OK);
    st = epm__fixed_dispatch(e, local == EPM_OK ? m_r : 0);
    if (st == EPM_OK) st = epm_comm_wait(e->comm, 0);
    if (st != EPM_OK) { /* peers may be inside the gather */
      epm_comm_abort(e->comm);
      record(e, &tm, m_r, &sp, a1, 0);
      return st;
    }
    epm_comm_traffic(e->comm, &tm.tr[1]);
    st = epm__engine_stage_end(&tm, EPM_STAGE_ALLGATHER);
    if (local != EPM_OK)
      st = local; /* keep this rank's own message (the peers read its STEP_FAILED) */
    else if (st == EPM_OK)
      st = epm__fixed_counts(e, &sp.M);
  } else if (e->cfg.dispatch == EPM_DISPATCH_ALLGATHER) {
    st = epm_comm_exchange_sizes(e->comm, local == EPM_OK ? m_r : STEP_FAILED, e->counts);
    if (st == EPM_OK && local != EPM_OK) st = local; /* keep this rank's own message */
    if (st == EPM_OK) st = check_counts(e, &sp.M);
  } else {
    /* The rows exchange carries the per-destination counts; a local failure
     * (also in the routing plan) still joins it, as a sentinel. */
    if (local == EPM_OK) local = epm__a2a_route_plan(e, m_r);
    st = epm__a2a_exchange(e, local == EPM_OK ? m_r : STEP_FAILED, local, &sp);
  }
  if (st == EPM_OK && e->cfg.scale_mode == EPM_SCALE_DYNAMIC) st = dynamic_scale(e, amax, &a1);
  if (st == EPM_OK) st = epm__engine_stage_end(&tm, EPM_STAGE_SIZES);
  if (st != EPM_OK) {
    record(e, &tm, m_r, &sp, a1, 0);
    return st;
  }

  st = dispatch_combine(e, &tm, &sp, x_be, x_q, m_r, a1, y_local);
  if (st != EPM_OK) {
    EPM_LOG(EPM_LOG_ERROR, "engine", "step failed after the dispatch (%s: %s); aborting the comm",
            epm_status_name(st), epm_last_error());
    epm_comm_abort(e->comm);
    record(e, &tm, m_r, &sp, a1, 0);
    return st;
  }
  st = epm__engine_marks_read(&tm); /* also: y is complete on return */
  tm.s[EPM_STAGE_TOTAL] = epm_clock_s() - t0;
  if (st == EPM_OK) st = count_load(e, m_r);
  record(e, &tm, m_r, &sp, a1, st == EPM_OK);
  return st;
}

epm_status_t epm_engine_step(epm_engine_t *e, const epm_bf16_t *x_local, const float *logits, int64_t m_r,
                             epm_bf16_t *y_local) {
  return step(e, x_local, logits, m_r, y_local, 0);
}

epm_status_t epm_engine_step_backend_mem(epm_engine_t *e, const epm_bf16_t *x_local, const float *logits,
                                         int64_t m_r, epm_bf16_t *y_local) {
  return step(e, x_local, logits, m_r, y_local, 1);
}
