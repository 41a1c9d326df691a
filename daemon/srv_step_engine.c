/* srv_step_engine.c — the worker's step backend on the real step engine
 * (include/epmoe/engine.h): comm over the daemon's EP group, one engine
 * per served MoE layer, weights generated from --preset/--seed or loaded
 * from --model DIR (this rank's expert slice only).
 *
 * Backend choice follows the daemon's bootstrap, whose GPU mode epmoed.c
 * takes from --backend: cpu -> cpu + MPI comm; cuda -> cuda + NCCL (a GPU per
 * rank required); auto -> cuda when this rank sees a GPU.
 * Served layers: presets serve layers 0..--layers-1; a checkpoint serves its
 * first --layers MoE layers (0 = all), under their checkpoint layer numbers.
 * A FORWARD for a layer not served is refused before the rendezvous, on every
 * rank alike (the check is local and the same everywhere).
 * Engine errors that abort the comm (EPM_ERR_ABORTED, MPI/NCCL/CUDA) make the
 * daemon fail-stop (srv_step.c); argument errors fail only the request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/backend.h"
#include "epmoe/bootstrap.h"
#include "epmoe/engine.h"
#include "epmoe/log.h"
#include "epmoe/model_dir.h"
#include "epmoe/moe_ref.h"
#include "epmoe/weights.h"
#include "srv_backend.h"

typedef struct {
  const epm_bootstrap_t *boot; /* the daemon's (srv_t), not owned */
  epm_backend_t *be;
  epm_comm_t *comm;
  int64_t nlayers;
  int64_t *layer_id;
  epm_layer_t *layers;
  epm_engine_t **eng;
  int last; /* index of the engine of the last step */
} eng_t;

static void eng_destroy(void *ctx) {
  eng_t *e = ctx;
  if (!e) return;
  for (int64_t i = 0; i < e->nlayers; i++) {
    if (e->eng) epm_engine_destroy(e->eng[i]);
    if (e->layers) epm_layer_free(&e->layers[i]);
  }
  free(e->eng);
  free(e->layers);
  free(e->layer_id);
  epm_comm_destroy(e->comm);
  epm_backend_destroy(e->be);
  free(e);
}

static epm_status_t load_layers(eng_t *e, const srv_config_t *cfg, epm_model_dims_t *dims) {
  int P = e->boot->ep_size, r = e->boot->ep_rank;
  epm_model_dir_t *md = NULL;
  if (cfg->model[0]) {
    EPM_TRY(epm_model_dir_open(cfg->model, &md));
    *dims = *epm_model_dir_dims(md);
    int64_t n = epm_model_dir_moe_layer_count(md);
    e->nlayers = cfg->layers > 0 && cfg->layers < n ? cfg->layers : n;
  } else {
    EPM_TRY(epm_model_preset(cfg->preset, dims));
    e->nlayers = cfg->layers > 0 ? cfg->layers : 1;
  }
  epm_status_t st = EPM_OK;
  if (dims->num_experts % P) {
    st = epm_error(EPM_ERR_INVALID_ARG, "%lld experts do not split over %d ranks (E %% ranks must be 0)",
                   (long long)dims->num_experts, P);
    goto out;
  }
  e->layer_id = calloc((size_t)e->nlayers, sizeof *e->layer_id);
  e->layers = calloc((size_t)e->nlayers, sizeof *e->layers);
  e->eng = calloc((size_t)e->nlayers, sizeof *e->eng);
  if (!e->layer_id || !e->layers || !e->eng) {
    st = epm_error(EPM_ERR_NOMEM, "state for %lld layers", (long long)e->nlayers);
    goto out;
  }
  const int64_t El = dims->num_experts / P;
  for (int64_t i = 0; i < e->nlayers; i++) {
    if (md) {
      e->layer_id[i] = epm_model_dir_moe_layer(md, i);
      EPM_TRY_GOTO(epm_weights_load_layer(md, e->layer_id[i], r, P, &e->layers[i], NULL), st, out);
    } else {
      e->layer_id[i] = i;
      EPM_TRY_GOTO(epm_layer_generate(dims, i, (uint64_t)cfg->seed, r * El, El, &e->layers[i]), st, out);
    }
    epm_engine_config_t ec = EPM_ENGINE_CONFIG_INIT;
    ec.max_tokens_per_rank = cfg->max_tokens_per_rank;
    EPM_TRY_GOTO(epm_engine_create(&ec, &e->layers[i], e->comm, e->be, &e->eng[i]), st, out);
  }
out:
  epm_model_dir_close(md);
  return st;
}

static epm_status_t eng_create(const srv_config_t *cfg, const epm_bootstrap_t *boot, srv_model_info_t *info,
                               void **ctx) {
  eng_t *e = calloc(1, sizeof *e);
  epm_model_dims_t dims;
  epm_status_t st;
  if (!e) return epm_error(EPM_ERR_NOMEM, "engine state");
  e->boot = boot; /* its gpu follows --backend (epmoed.c) */
  epm_backend_config_t bc = EPM_BACKEND_CONFIG_INIT;
  bc.kind = boot->gpu >= 0 ? EPM_BACKEND_CUDA : EPM_BACKEND_CPU;
  bc.device = boot->gpu >= 0 ? boot->gpu : 0;
  {
    int cores = epm_moe_ref_threads(0), local = boot->local_size > 0 ? boot->local_size : 1;
    bc.threads = cores / local > 0 ? cores / local : 1;
  }
  EPM_TRY_GOTO(epm_backend_create(&bc, &e->be), st, fail);
  epm_comm_opts_t co = {.backend = bc.kind == EPM_BACKEND_CUDA ? EPM_COMM_NCCL : EPM_COMM_MPI,
                        .stream = epm_backend_stream(e->be),
                        .timeout_s = (double)cfg->step_timeout_s};
  EPM_TRY_GOTO(epm_comm_create(boot, &co, &e->comm), st, fail);
  EPM_TRY_GOTO(load_layers(e, cfg, &dims), st, fail);
  info->hidden = dims.hidden;
  info->num_experts = dims.num_experts;
  info->top_k = dims.top_k;
  info->num_layers = e->nlayers;
  for (int64_t i = 0; i < e->nlayers; i++) {
    const epm_layer_t *l = &e->layers[i];
    info->weight_bytes += epm_expert_bank_bytes(&l->experts) + epm_expert_bank_bytes(&l->shared) +
                          (uint64_t)(dims.num_experts * dims.hidden) * sizeof(float);
    info->buffer_bytes += epm_engine_buffer_bytes(e->eng[i]);
  }
  snprintf(info->model, sizeof info->model, "%s", cfg->model[0] ? dims.name : cfg->preset);
  snprintf(info->backend, sizeof info->backend, "%s", epm_backend_name(e->be));
  *ctx = e;
  return EPM_OK;
fail:
  eng_destroy(e);
  return st;
}

static int eng_has_layer(void *ctx, uint32_t layer) {
  eng_t *e = ctx;
  for (int64_t i = 0; i < e->nlayers; i++)
    if (e->layer_id[i] == (int64_t)layer) return 1;
  return 0;
}

static epm_status_t eng_step(void *ctx, uint32_t layer, const uint16_t *x, const float *logits, int64_t m,
                             uint16_t *y) {
  eng_t *e = ctx;
  for (int64_t i = 0; i < e->nlayers; i++) {
    if (e->layer_id[i] == (int64_t)layer) {
      e->last = (int)i;
      return epm_engine_step(e->eng[i], x, logits, m, y);
    }
  }
  /* the warm-up uses layer 0 when served, else the first served layer */
  e->last = 0;
  return epm_engine_step(e->eng[0], x, logits, m, y);
}

static int eng_stages(void *ctx, const char **names, double *last_s, int max) {
  eng_t *e = ctx;
  epm_engine_stats_t st;
  int n = EPM_STAGE_COUNT < max ? EPM_STAGE_COUNT : max;
  epm_engine_stats(e->eng[e->last], &st);
  for (int i = 0; i < n; i++) {
    names[i] = epm_engine_stage_name((epm_engine_stage_t)i);
    last_s[i] = st.last_s[i];
  }
  return n;
}

static const srv_backend_ops_t engine_ops = {"engine", eng_create, eng_step, eng_stages, eng_destroy, eng_has_layer};

const srv_backend_ops_t *srv_backend_engine(void) { return &engine_ops; }
