/* SPDX-License-Identifier: Apache-2.0 */
/* group.c — the composition root (include/epmoe/group.h): one rank's backend,
 * the comm paired with it, its layers and one engine per served layer.
 *
 * The pairing rule lives here and nowhere else: a cuda backend talks NCCL on
 * the backend's own stream (so collectives are ordered with the kernels
 * without host syncs); a cpu backend talks MPI on host memory.
 *
 * Step options (shared expert, partial dtype) are engine config, so a step
 * with options other than the group's runs on a variant engine of its layer,
 * made on first use and kept; variants of one partial dtype share the step
 * buffers of the first engine of that dtype. */
#include "epmoe/group.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/log.h"
#include "epmoe/model_dir.h"
#include "epmoe/moe_ref.h"
#include "epmoe/placement.h"
#include "epmoe/weights.h"

/* An engine of a layer with options other than the config's. */
typedef struct variant {
  struct variant *next; /* newest first, so borrowers go before their owner */
  int64_t idx;          /* index of the layer */
  int shared_expert;
  epm_dtype_t partial_dtype;
  epm_engine_t *eng;
} variant_t;

struct epm_group {
  const epm_bootstrap_t *boot;
  epm_backend_t *be;
  epm_comm_t *comm;
  epm_model_dims_t dims;
  char model[64];
  int64_t nlayers;
  int64_t *layer_id;
  epm_layer_t *layers;
  epm_engine_t **eng;
  epm_placement_t placement;
  epm_engine_config_t ec; /* the config's engine options (variants change two) */
  variant_t *variants;
  const epm_engine_t *last; /* the engine of the last step */
};

void epm_group_destroy(epm_group_t *g) {
  if (!g) return;
  while (g->variants) {
    variant_t *v = g->variants;
    g->variants = v->next;
    epm_engine_destroy(v->eng);
    free(v);
  }
  /* Engines that borrow buffers go before the one that owns them (index 0). */
  for (int64_t i = g->nlayers - 1; i >= 0; i--) {
    if (g->eng) epm_engine_destroy(g->eng[i]);
    if (g->layers) epm_layer_free(&g->layers[i]);
  }
  free(g->eng);
  free(g->layers);
  free(g->layer_id);
  epm_placement_free(&g->placement);
  epm_comm_destroy(g->comm);
  epm_backend_destroy(g->be);
  free(g);
}

static epm_status_t make_backend_and_comm(epm_group_t *g, const epm_group_config_t *cfg) {
  const epm_bootstrap_t *b = g->boot;
  epm_backend_config_t bc = EPM_BACKEND_CONFIG_INIT;
  bc.kind = b->gpu >= 0 ? EPM_BACKEND_CUDA : EPM_BACKEND_CPU;
  bc.device = b->gpu >= 0 ? b->gpu : 0;
  bc.threads = cfg->threads;
  bc.kernels = cfg->kernels;
  if (bc.threads <= 0) {
    /* The node's cores split over the ranks on it, so co-located CPU ranks
     * do not oversubscribe the machine. */
    int cores = epm_moe_ref_threads(0), local = b->local_size > 0 ? b->local_size : 1;
    bc.threads = cores / local > 0 ? cores / local : 1;
  }
  EPM_TRY(epm_backend_create(&bc, &g->be));
  epm_comm_opts_t co = {.backend = bc.kind == EPM_BACKEND_CUDA ? EPM_COMM_NCCL : EPM_COMM_MPI,
                        .stream = epm_backend_stream(g->be),
                        .timeout_s = cfg->comm_timeout_s};
  return epm_comm_create(b, &co, &g->comm);
}

static epm_status_t pick_layers(epm_group_t *g, const epm_group_config_t *cfg, epm_model_dir_t **md) {
  if (cfg->model_dir && cfg->model_dir[0]) {
    EPM_TRY(epm_model_dir_open(cfg->model_dir, md));
    g->dims = *epm_model_dir_dims(*md);
    int64_t n = epm_model_dir_moe_layer_count(*md);
    g->nlayers = cfg->num_layers > 0 && cfg->num_layers < n ? cfg->num_layers : n;
    snprintf(g->model, sizeof g->model, "%s", g->dims.name);
  } else {
    if (!cfg->preset || !cfg->preset[0]) return epm_error(EPM_ERR_INVALID_ARG, "group: neither a model directory nor a preset given");
    if (cfg->dims) g->dims = *cfg->dims;
    else EPM_TRY(epm_model_preset(cfg->preset, &g->dims));
    g->nlayers = cfg->num_layers > 0 ? cfg->num_layers : 1;
    snprintf(g->model, sizeof g->model, "%s", cfg->preset);
  }
  if (g->nlayers < 1) return epm_error(EPM_ERR_INVALID_ARG, "group: the model has no MoE layer to serve");
  g->layer_id = calloc((size_t)g->nlayers, sizeof *g->layer_id);
  g->layers = calloc((size_t)g->nlayers, sizeof *g->layers);
  g->eng = calloc((size_t)g->nlayers, sizeof *g->eng);
  if (!g->layer_id || !g->layers || !g->eng)
    return epm_error(EPM_ERR_NOMEM, "group state for %lld layers", (long long)g->nlayers);
  for (int64_t i = 0; i < g->nlayers; i++) {
    if (*md) g->layer_id[i] = epm_model_dir_moe_layer(*md, i);
    else g->layer_id[i] = cfg->layer_ids ? cfg->layer_ids[i] : i;
    if (g->layer_id[i] < 0)
      return epm_error(EPM_ERR_INVALID_ARG, "group: layer number %lld at position %lld is negative",
                       (long long)g->layer_id[i], (long long)i);
  }
  return EPM_OK;
}

/* The map: the caller's (checked against the model and the group) or the
 * default split with the redundant slots. */
static epm_status_t make_placement(epm_group_t *g, const epm_group_config_t *cfg) {
  const int64_t E = g->dims.num_experts, P = g->boot->ep_size;
  if (!cfg->placement) {
    epm_status_t st = epm_placement_default(E, P, cfg->redundant_experts, &g->placement);
    if (st != EPM_OK) return epm_error_wrap(st, "model %s", g->model);
    return EPM_OK;
  }
  if (cfg->placement->num_experts != E || cfg->placement->ep_size != P)
    return epm_error(EPM_ERR_INVALID_ARG, "the placement maps %lld experts over %lld ranks, but model %s has %lld "
                     "experts and the group %lld ranks", (long long)cfg->placement->num_experts,
                     (long long)cfg->placement->ep_size, g->model, (long long)E, (long long)P);
  return epm_placement_copy(cfg->placement, &g->placement);
}

static epm_status_t build_local(epm_group_t *g, const epm_group_config_t *cfg) {
  epm_model_dir_t *md = NULL;
  epm_status_t st = EPM_OK;
  const int r = g->boot->ep_rank;
  epm_engine_config_t base = EPM_ENGINE_CONFIG_INIT;
  base.placement = &g->placement;
  base.max_tokens_per_rank = cfg->max_tokens_per_rank;
  base.scale_mode = cfg->scale_mode;
  base.shared_expert = cfg->shared_expert != 0;
  base.partial_dtype = cfg->partial_dtype;
  base.dispatch = cfg->dispatch;
  base.recv_capacity = cfg->recv_capacity;
  base.dispatch_cost = cfg->dispatch_cost;
  base.on_stage = cfg->on_stage;
  base.on_stage_arg = cfg->on_stage_arg;
  base.workspace_bytes = cfg->workspace_bytes;
  base.fixed_capacity = cfg->fixed_capacity;
  g->ec = base;
  EPM_TRY_GOTO(make_backend_and_comm(g, cfg), st, out);
  EPM_TRY_GOTO(pick_layers(g, cfg, &md), st, out);
  EPM_TRY_GOTO(make_placement(g, cfg), st, out);
  /* A checkpoint load takes minutes at full size: log lines as it goes
   * (one log stream per rank, so never a redrawn terminal line). */
  epm_load_progress_t prog;
  size_t per_layer = 0;
  if (md) {
    char what[128];
    EPM_TRY_GOTO(epm_weights_layer_bytes(&g->dims, g->boot->ep_size, &per_layer), st, out);
    snprintf(what, sizeof what, "loading %lld layers of %s", (long long)g->nlayers, g->model);
    epm_load_progress_begin(&prog, what, per_layer * (size_t)g->nlayers, EPM_PROGRESS_LINES);
  }
  for (int64_t i = 0; i < g->nlayers; i++) {
    if (md)
      EPM_TRY_GOTO(epm_weights_load_layer_placed(md, g->layer_id[i], &g->placement, r, &g->layers[i], &prog), st,
                   out);
    else
      EPM_TRY_GOTO(epm_layer_generate_placed(&g->dims, g->layer_id[i], cfg->seed, &g->placement, r, &g->layers[i]),
                   st, out);
    epm_engine_config_t ec = g->ec;
    /* Layers step one after another, so one set of step buffers serves all. */
    ec.share_buffers = i > 0 ? g->eng[0] : NULL;
    EPM_TRY_GOTO(epm_engine_create(&ec, &g->layers[i], g->comm, g->be, &g->eng[i]), st, out);
  }
  if (md) epm_load_progress_end(&prog);
out:
  epm_model_dir_close(md);
  return st;
}

/* Every rank must route with the same map (a file per node may differ): the
 * max and the min of the hash over the ranks must both be this rank's. Unless
 * all are equal no rank is both, so a mismatch fails every rank. Returns the
 * collective's own status. */
static epm_status_t agree_placement(epm_group_t *g, epm_status_t *st, char *why, size_t n) {
  const uint64_t h = epm_placement_hash(&g->placement);
  /* max of h and of its complement: both equal on every rank iff all equal;
   * the top bit is dropped so the values stay non-negative int64. */
  int64_t v[2] = {(int64_t)(h >> 1), (int64_t)(~h >> 1)};
  EPM_TRY(epm_bootstrap_allreduce_i64(g->boot, v, 2, EPM_BOOT_MAX));
  if (v[0] != (int64_t)(h >> 1) || v[1] != (int64_t)(~h >> 1)) {
    *st = epm_error(EPM_ERR_INVALID_ARG, "the ranks were given different expert placements (rank %d has map hash "
                    "%016llx); pass every rank the same map", g->boot->ep_rank, (unsigned long long)h);
    snprintf(why, n, "%s", epm_last_error());
  }
  return EPM_OK;
}

epm_status_t epm_group_create(const epm_group_config_t *cfg, const epm_bootstrap_t *boot, epm_group_t **out) {
  if (!cfg || !boot || !out) return epm_error(EPM_ERR_INVALID_ARG, "epm_group_create: NULL argument");
  *out = NULL;
  epm_group_t *g = calloc(1, sizeof *g);
  epm_status_t st = g ? EPM_OK : epm_error(EPM_ERR_NOMEM, "group state");
  char why[512] = "";
  if (g) {
    g->boot = boot;
    st = build_local(g, cfg);
  }
  if (st != EPM_OK) snprintf(why, sizeof why, "%s", epm_last_error());
  /* Agree before anyone steps: a rank that failed alone (memory, a file)
   * must not leave the others waiting in the first collective. */
  int n_failed = 0, first_failed = -1;
  epm_status_t ast = epm_bootstrap_agree(boot, st == EPM_OK, &n_failed, &first_failed);
  /* Every rank built its part: all take the placement check together (it
   * fails on every rank or none). */
  if (ast == EPM_OK && st == EPM_OK && !n_failed) ast = agree_placement(g, &st, why, sizeof why);
  if (ast != EPM_OK) {
    epm_group_destroy(g);
    return ast;
  }
  if (st != EPM_OK) {
    epm_group_destroy(g);
    return epm_error(st, "%s", why); /* this rank's own reason, unchanged */
  }
  if (n_failed) {
    epm_group_destroy(g);
    return epm_error(EPM_ERR_ABORTED, "group set-up failed on %d of %d ranks (first: rank %d); see its log", n_failed,
                     boot->ep_size, first_failed);
  }
  *out = g;
  return EPM_OK;
}

static int64_t index_of(const epm_group_t *g, int64_t layer) {
  for (int64_t i = 0; i < g->nlayers; i++)
    if (g->layer_id[i] == layer) return i;
  return -1;
}

int epm_group_has_layer(const epm_group_t *g, int64_t layer) { return g && index_of(g, layer) >= 0; }

int64_t epm_group_layer_id(const epm_group_t *g, int64_t i) {
  return g && i >= 0 && i < g->nlayers ? g->layer_id[i] : -1;
}

epm_engine_t *epm_group_engine(epm_group_t *g, int64_t layer) {
  int64_t i = g ? index_of(g, layer) : -1;
  return i >= 0 ? g->eng[i] : NULL;
}

const epm_layer_t *epm_group_layer(const epm_group_t *g, int64_t layer) {
  int64_t i = g ? index_of(g, layer) : -1;
  return i >= 0 ? &g->layers[i] : NULL;
}

const epm_engine_t *epm_group_last_engine(const epm_group_t *g) {
  return !g ? NULL : g->last ? g->last : g->eng[0];
}
const epm_placement_t *epm_group_placement(const epm_group_t *g) { return g ? &g->placement : NULL; }

/* Add one engine's per-expert load (t, l: scratch of n) to the sums. */
static epm_status_t add_load(const epm_group_t *g, const epm_engine_t *e, uint64_t *t, uint64_t *l, int64_t n,
                             uint64_t *total, uint64_t *last) {
  EPM_TRY(epm_engine_expert_load(e, t, l, n));
  const int is_last = e == epm_group_last_engine(g);
  for (int64_t k = 0; k < n; k++) {
    if (total) total[k] += t[k];
    if (last && is_last) last[k] = l[k];
  }
  return EPM_OK;
}

epm_status_t epm_group_expert_load(const epm_group_t *g, uint64_t *total, uint64_t *last, int64_t n) {
  if (!g) return epm_error(EPM_ERR_INVALID_ARG, "group_expert_load: NULL group");
  if (n != g->dims.num_experts)
    return epm_error(EPM_ERR_INVALID_ARG, "group_expert_load: %lld counters asked; the model has %lld experts",
                     (long long)n, (long long)g->dims.num_experts);
  uint64_t *t = calloc((size_t)n, sizeof *t), *l = calloc((size_t)n, sizeof *l);
  epm_status_t st = t && l ? EPM_OK : epm_error(EPM_ERR_NOMEM, "load counters of %lld experts", (long long)n);
  if (total) memset(total, 0, (size_t)n * sizeof *total);
  if (last) memset(last, 0, (size_t)n * sizeof *last);
  /* every engine that stepped: each layer's, and its variants for other step options */
  for (int64_t i = 0; st == EPM_OK && i < g->nlayers; i++) st = add_load(g, g->eng[i], t, l, n, total, last);
  for (const variant_t *v = g->variants; st == EPM_OK && v; v = v->next) st = add_load(g, v->eng, t, l, n, total, last);
  free(t);
  free(l);
  return st;
}

epm_backend_t *epm_group_backend(epm_group_t *g) { return g ? g->be : NULL; }
epm_comm_t *epm_group_comm(epm_group_t *g) { return g ? g->comm : NULL; }

/* The engine of layer index i for these options: the layer's own when they
 * are the config's, else its variant, made now if it is new. */
static epm_status_t engine_for(epm_group_t *g, int64_t i, const epm_step_opts_t *o, epm_engine_t **out) {
  const int shared = o->shared_expert != 0;
  const epm_engine_t *owner = NULL;
  *out = NULL;
  if (o->partial_dtype == g->ec.partial_dtype && shared == g->ec.shared_expert) {
    *out = g->eng[i];
    return EPM_OK;
  }
  if (epm_dtype_size(o->partial_dtype) == 0)
    return epm_error(EPM_ERR_INVALID_ARG, "partial dtype %d is not a dtype", (int)o->partial_dtype);
  for (variant_t *v = g->variants; v; v = v->next) {
    if (v->idx == i && v->shared_expert == shared && v->partial_dtype == o->partial_dtype) {
      *out = v->eng;
      return EPM_OK;
    }
    if (v->partial_dtype == o->partial_dtype) owner = v->eng; /* ends at the oldest: the owner */
  }
  if (o->partial_dtype == g->ec.partial_dtype) owner = g->eng[0];
  variant_t *v = calloc(1, sizeof *v);
  if (!v) return epm_error(EPM_ERR_NOMEM, "engine variant of layer %lld", (long long)g->layer_id[i]);
  epm_engine_config_t ec = g->ec;
  ec.shared_expert = shared;
  ec.partial_dtype = o->partial_dtype;
  ec.share_buffers = owner;
  epm_status_t st = epm_engine_create(&ec, &g->layers[i], g->comm, g->be, &v->eng);
  if (st != EPM_OK) {
    free(v);
    return epm_error(st, "engine of layer %lld for shared expert %s, partial dtype %s: %s", (long long)g->layer_id[i],
                     shared ? "on" : "off", epm_dtype_name(o->partial_dtype), epm_last_error());
  }
  v->idx = i;
  v->shared_expert = shared;
  v->partial_dtype = o->partial_dtype;
  v->next = g->variants;
  g->variants = v;
  EPM_LOG(EPM_LOG_INFO, "group", "layer %lld: engine for shared expert %s, partial dtype %s made on first use",
          (long long)g->layer_id[i], shared ? "on" : "off", epm_dtype_name(o->partial_dtype));
  *out = v->eng;
  return EPM_OK;
}

epm_status_t epm_group_step_opts(epm_group_t *g, int64_t layer, const epm_step_opts_t *opts,
                                 const epm_group_io_t *io) {
  if (!g || !io) return epm_error(EPM_ERR_INVALID_ARG, "epm_group_step: NULL argument");
  int64_t i = index_of(g, layer);
  if (i < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "layer %lld is not served (model %s, %lld layers from layer %lld)",
                     (long long)layer, g->model, (long long)g->nlayers, (long long)g->layer_id[0]);
  epm_step_opts_t base = {g->ec.shared_expert, g->ec.partial_dtype};
  epm_engine_t *e = NULL;
  epm_status_t st = engine_for(g, i, opts ? opts : &base, &e);
  if (st != EPM_OK) {
    /* The other ranks are about to enter the step: join it with a token
     * count the engine refuses, so its sizes exchange fails the step on
     * every rank instead of leaving them in the collective. */
    char why[512];
    snprintf(why, sizeof why, "%s", epm_last_error());
    (void)epm_engine_step(g->eng[i], NULL, NULL, -1, NULL);
    return epm_error(st, "%s", why);
  }
  g->last = e;
  if (io->mem == EPM_MEM_DEVICE) {
    if (!epm_backend_is_device(g->be))
      return epm_error(EPM_ERR_INVALID_ARG, "device memory for layer %lld, but this rank runs the %s backend",
                       (long long)layer, epm_backend_name(g->be));
    return epm_engine_step_backend_mem(e, io->x, io->logits, io->m, io->y);
  }
  return epm_engine_step(e, io->x, io->logits, io->m, io->y);
}

epm_status_t epm_group_step(epm_group_t *g, int64_t layer, const epm_group_io_t *io) {
  return epm_group_step_opts(g, layer, NULL, io);
}

void epm_group_info(const epm_group_t *g, epm_group_info_t *o) {
  memset(o, 0, sizeof *o);
  if (!g) return;
  snprintf(o->model, sizeof o->model, "%s", g->model);
  snprintf(o->backend, sizeof o->backend, "%s", epm_backend_name(g->be));
  o->ep_rank = g->boot->ep_rank;
  o->ep_size = g->boot->ep_size;
  o->gpu = g->boot->gpu;
  o->hidden = g->dims.hidden;
  o->num_experts = g->dims.num_experts;
  o->top_k = g->dims.top_k;
  o->num_layers = g->nlayers;
  o->first_expert = g->placement.rank_start[g->boot->ep_rank];
  o->local_experts = epm_placement_rank_slots(&g->placement, g->boot->ep_rank);
  o->num_slots = g->placement.num_slots;
  for (int64_t i = 0; i < g->nlayers; i++) {
    const epm_layer_t *l = &g->layers[i];
    o->weight_bytes += epm_expert_bank_bytes(&l->experts) + epm_expert_bank_bytes(&l->shared) +
                       (uint64_t)(g->dims.num_experts * g->dims.hidden) * sizeof(float);
    o->buffer_bytes += epm_engine_buffer_bytes(g->eng[i]);
  }
  for (const variant_t *v = g->variants; v; v = v->next) o->buffer_bytes += epm_engine_buffer_bytes(v->eng);
}
