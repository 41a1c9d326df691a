/* SPDX-License-Identifier: Apache-2.0 */
/* ckpt_write.c — synthetic ModelOpt NVFP4 checkpoint directories.
 *
 * The weights come from epm_layer_generate (expert e depends only on seed,
 * layer and e), generated a chunk of experts at a time and streamed to the
 * files, so a DeepSeek-size layer (6.3 GB) never sits in memory whole. The
 * tensor list, its split into files and every header are fixed before the
 * first byte is written.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epmoe/bf16.h"
#include "epmoe/checked.h"
#include "epmoe/log.h"
#include "epmoe/weights.h"

#define CHUNK_BYTES (512u << 20) /* experts generated per step: about this many bytes */

typedef enum { SRC_ROUTER, SRC_BIAS, SRC_EXPERT } src_kind_t;

typedef struct {
  epm_st_spec_t spec;
  char *name;
  src_kind_t kind;
  int64_t layer, expert; /* expert: EPM_EXPERT_SHARED for the shared one */
  epm_proj_t proj;
  epm_field_t field;
  size_t nbytes, shard;
} entry_t;

typedef struct {
  const epm_ckpt_make_opts_t *o;
  epm_model_dims_t d;
  epm_model_family_t fam;
  entry_t *ents;
  size_t n, cap;
  size_t nshards;
  int64_t chunk; /* experts per generated chunk */
  epm_layer_t cur;
  int have_cur;
} mk_t;

static epm_status_t push(mk_t *m, src_kind_t kind, int64_t layer, int64_t expert, epm_proj_t proj,
                         epm_field_t field, epm_st_dtype_t dt, int ndim, int64_t d0, int64_t d1) {
  char name[256];
  if (m->n == m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 1024;
    entry_t *e = realloc(m->ents, cap * sizeof *e);
    if (!e) return epm_error(EPM_ERR_NOMEM, "tensor list of %zu", cap);
    m->ents = e;
    m->cap = cap;
  }
  if (kind == SRC_EXPERT)
    epm_weight_name(m->fam, layer, expert, proj, field, name, sizeof name);
  else
    epm_router_name(m->fam, layer, kind == SRC_BIAS, name, sizeof name);
  entry_t *e = &m->ents[m->n];
  memset(e, 0, sizeof *e);
  if (!(e->name = strdup(name))) return epm_error(EPM_ERR_NOMEM, "tensor name");
  m->n++;
  e->spec = (epm_st_spec_t){.name = e->name, .dtype = dt, .ndim = ndim, .shape = {d0, d1}};
  e->kind = kind;
  e->layer = layer;
  e->expert = expert;
  e->proj = proj;
  e->field = field;
  return epm_st_spec_nbytes(&e->spec, &e->nbytes);
}

static epm_status_t push_expert(mk_t *m, int64_t layer, int64_t expert, int64_t I) {
  const int64_t H = m->d.hidden;
  for (int p = 0; p < 3; p++) {
    int64_t rows = p == EPM_PROJ_DOWN ? H : I, cols = p == EPM_PROJ_DOWN ? I : H;
    EPM_TRY(push(m, SRC_EXPERT, layer, expert, (epm_proj_t)p, EPM_FIELD_WEIGHT, EPM_ST_U8, 2, rows, cols / 2));
    EPM_TRY(push(m, SRC_EXPERT, layer, expert, (epm_proj_t)p, EPM_FIELD_WEIGHT_SCALE, EPM_ST_F8_E4M3, 2, rows,
                 cols / 16));
    EPM_TRY(push(m, SRC_EXPERT, layer, expert, (epm_proj_t)p, EPM_FIELD_WEIGHT_SCALE_2, EPM_ST_F32, 0, 0, 0));
    EPM_TRY(push(m, SRC_EXPERT, layer, expert, (epm_proj_t)p, EPM_FIELD_INPUT_SCALE, EPM_ST_F32, 0, 0, 0));
  }
  return EPM_OK;
}

static epm_status_t build_list(mk_t *m) {
  for (int64_t L = 0; L < m->o->layers; L++) {
    EPM_TRY(push(m, SRC_ROUTER, L, 0, 0, 0, EPM_ST_BF16, 2, m->d.num_experts, m->d.hidden));
    if (m->d.routing == EPM_ROUTING_DEEPSEEK_V3)
      EPM_TRY(push(m, SRC_BIAS, L, 0, 0, 0, EPM_ST_F32, 1, m->d.num_experts, 0));
    if (m->d.shared_experts) EPM_TRY(push_expert(m, L, EPM_EXPERT_SHARED, m->d.shared_intermediate));
    for (int64_t e = 0; e < m->d.num_experts; e++) EPM_TRY(push_expert(m, L, e, m->d.intermediate));
  }
  /* Split into files in order, like HF's max_shard_size. */
  size_t shard = 0, used = 0;
  for (size_t i = 0; i < m->n; i++) {
    if (m->o->shard_bytes && used > 0 && used + m->ents[i].nbytes > m->o->shard_bytes) {
      shard++;
      used = 0;
    }
    m->ents[i].shard = shard;
    used += m->ents[i].nbytes;
  }
  m->nshards = shard + 1;
  return EPM_OK;
}

/* Per-expert calibration scale in [0.5, 1] x the layer's; the anchor expert
 * (layer mod E) holds the layer's value exactly so the max over experts —
 * what the loader computes — reproduces the generator's scale bit for bit. */
static float expert_input_scale(const mk_t *m, int64_t layer, int64_t expert, int down, float layer_scale) {
  if (expert == layer % m->d.num_experts) return layer_scale;
  uint64_t h = epm_fnv1a64(&expert, sizeof expert, m->o->seed ^ ((uint64_t)layer << 20) ^ (uint64_t)down);
  float f = 0.5f + 0.5f * (float)(h >> 40) / (float)(1ULL << 24); /* < 1 */
  float v = layer_scale * f;
  return v < layer_scale ? v : layer_scale;
}

static epm_status_t ensure_chunk(mk_t *m, int64_t layer, int64_t expert) {
  int64_t e = expert < 0 ? 0 : expert;
  if (m->have_cur && m->cur.layer_index == layer && e >= m->cur.expert_offset &&
      e < m->cur.expert_offset + m->cur.experts.count)
    return EPM_OK;
  if (m->have_cur) epm_layer_free(&m->cur);
  m->have_cur = 0;
  int64_t off = e / m->chunk * m->chunk, cnt = m->d.num_experts - off;
  if (cnt > m->chunk) cnt = m->chunk;
  EPM_TRY(epm_layer_generate(&m->d, layer, m->o->seed, off, cnt, &m->cur));
  m->cur.layer_index = layer; /* the generator sets these; be explicit for the cache test above */
  m->cur.expert_offset = off;
  m->have_cur = 1;
  return EPM_OK;
}

/* Point at (or convert into scratch) the bytes of entry e. */
static epm_status_t entry_bytes(mk_t *m, const entry_t *e, void *scratch, size_t scratch_len,
                                const void **out) {
  EPM_TRY(ensure_chunk(m, e->layer, e->kind == SRC_EXPERT ? e->expert : 0));
  const epm_layer_t *l = &m->cur;
  if (e->kind == SRC_ROUTER) {
    const size_t n = e->nbytes / 2;
    uint16_t *bf = scratch;
    if (scratch_len < e->nbytes) return epm_error(EPM_ERR_INTERNAL, "router scratch too small");
    for (size_t i = 0; i < n; i++) {
      bf[i] = epm_bf16_from_f32(l->router_w[i]);
      const float back = epm_bf16_to_f32(bf[i]);
      if (memcmp(&back, &l->router_w[i], sizeof back) != 0) /* bit compare: NaN too */
        return epm_error(EPM_ERR_INTERNAL, "layer %lld router weight %zu (%g) is not bf16-exact",
                         (long long)e->layer, i, (double)l->router_w[i]);
    }
    *out = bf;
    return EPM_OK;
  }
  if (e->kind == SRC_BIAS) {
    if (!l->router_bias) return epm_error(EPM_ERR_INTERNAL, "generator made no router bias");
    *out = l->router_bias;
    return EPM_OK;
  }
  const int shared = e->expert == EPM_EXPERT_SHARED;
  const epm_expert_bank_t *b = shared ? &l->shared : &l->experts;
  const size_t slot = shared ? 0 : (size_t)(e->expert - l->expert_offset);
  const size_t wi = (size_t)(b->intermediate * b->hidden / 2), si = wi / 8;
  float *f = scratch;
  switch (e->field) {
    case EPM_FIELD_WEIGHT:
      *out = (e->proj == EPM_PROJ_GATE ? b->gate_w : e->proj == EPM_PROJ_UP ? b->up_w : b->down_w) + slot * wi;
      return EPM_OK;
    case EPM_FIELD_WEIGHT_SCALE:
      *out = (e->proj == EPM_PROJ_GATE ? b->gate_sf : e->proj == EPM_PROJ_UP ? b->up_sf : b->down_sf) + slot * si;
      return EPM_OK;
    case EPM_FIELD_WEIGHT_SCALE_2:
      *f = e->proj == EPM_PROJ_DOWN ? b->down_scale_2[slot] : b->gate_up_scale_2[slot];
      break;
    case EPM_FIELD_INPUT_SCALE:
      if (shared)
        *f = e->proj == EPM_PROJ_DOWN ? l->shared_down_input_scale : l->shared_input_scale;
      else
        *f = expert_input_scale(m, e->layer, e->expert, e->proj == EPM_PROJ_DOWN,
                                e->proj == EPM_PROJ_DOWN ? l->down_input_scale : l->input_scale);
      break;
  }
  *out = f;
  return EPM_OK;
}

static epm_status_t write_json(const char *dir, const char *file, json_t *j) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  int rc = json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(j);
  return rc == 0 ? EPM_OK : epm_error(EPM_ERR_IO, "%s: write failed: %s", path, strerror(errno));
}

static epm_status_t write_config(const mk_t *m) {
  const epm_model_dims_t *d = &m->d;
  json_t *c = NULL;
  int override = 0;
  if (m->fam == EPM_FAMILY_DEEPSEEK_V3) {
    int64_t nsh = 0;
    if (d->shared_experts) {
      if (d->shared_intermediate % d->intermediate)
        return epm_error(EPM_ERR_NOT_SUPPORTED,
                         "shared expert I %lld is not a multiple of the expert I %lld (n_shared_experts)",
                         (long long)d->shared_intermediate, (long long)d->intermediate);
      nsh = d->shared_intermediate / d->intermediate;
    }
    c = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:s, s:s, s:b, s:I, s:I, s:I, s:I}",
                  "architectures", "DeepseekV3ForCausalLM", "model_type", "deepseek_v3", "hidden_size",
                  (json_int_t)d->hidden, "moe_intermediate_size", (json_int_t)d->intermediate, "n_routed_experts",
                  (json_int_t)d->num_experts, "num_experts_per_tok", (json_int_t)d->top_k, "n_group",
                  (json_int_t)d->n_group, "topk_group", (json_int_t)d->topk_group, "routed_scaling_factor",
                  (double)d->routed_scaling_factor, "scoring_func", "sigmoid", "topk_method", "noaux_tc",
                  "norm_topk_prob", 1, "n_shared_experts", (json_int_t)nsh, "num_hidden_layers",
                  (json_int_t)m->o->layers, "first_k_dense_replace", (json_int_t)0, "moe_layer_freq",
                  (json_int_t)1);
    override = d->routing != EPM_ROUTING_DEEPSEEK_V3;
  } else if (m->fam == EPM_FAMILY_QWEN3_MOE) {
    c = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:b, s:I, s:[], s:I}", "architectures",
                  "Qwen3MoeForCausalLM", "model_type", "qwen3_moe", "hidden_size", (json_int_t)d->hidden,
                  "moe_intermediate_size", (json_int_t)d->intermediate, "num_experts", (json_int_t)d->num_experts,
                  "num_experts_per_tok", (json_int_t)d->top_k, "norm_topk_prob",
                  d->routing == EPM_ROUTING_RENORMALIZE, "decoder_sparse_step", (json_int_t)1, "mlp_only_layers",
                  "num_hidden_layers", (json_int_t)m->o->layers);
    override = d->routing != EPM_ROUTING_RENORMALIZE && d->routing != EPM_ROUTING_DEFAULT;
  } else {
    if (d->shared_intermediate != d->intermediate)
      return epm_error(EPM_ERR_NOT_SUPPORTED, "llama4 naming needs shared I (%lld) == expert I (%lld)",
                       (long long)d->shared_intermediate, (long long)d->intermediate);
    c = json_pack("{s:[s], s:s, s:{s:s, s:I, s:I, s:I, s:I, s:I, s:I}}", "architectures",
                  "Llama4ForConditionalGeneration", "model_type", "llama4", "text_config", "model_type",
                  "llama4_text", "hidden_size", (json_int_t)d->hidden, "intermediate_size",
                  (json_int_t)d->intermediate, "num_local_experts", (json_int_t)d->num_experts,
                  "num_experts_per_tok", (json_int_t)d->top_k, "interleave_moe_layer_step", (json_int_t)1,
                  "num_hidden_layers", (json_int_t)m->o->layers);
  }
  if (!c) return epm_error(EPM_ERR_NOMEM, "config.json");
  if (override) json_object_set_new(c, "epmoe_routing", json_string(epm_routing_method_name(d->routing)));
  json_object_set_new(c, "epmoe_preset", json_string(d->name));
  json_object_set_new(c, "epmoe_seed", json_integer((json_int_t)(m->o->seed & 0x7fffffffffffffffULL)));
  EPM_TRY(write_json(m->o->out_dir, "config.json", c));
  json_t *q = json_pack("{s:{s:s, s:s}, s:{s:s, s:n, s:i, s:[s]}}", "producer", "name", "modelopt", "version",
                        "epmoe-synthetic", "quantization", "quant_algo", "NVFP4", "kv_cache_quant_algo",
                        "group_size", 16, "exclude_modules", "lm_head");
  if (!q) return epm_error(EPM_ERR_NOMEM, "hf_quant_config.json");
  return write_json(m->o->out_dir, "hf_quant_config.json", q);
}

static void shard_name(const mk_t *m, size_t s, char *buf, size_t len) {
  if (m->nshards == 1)
    snprintf(buf, len, "model.safetensors");
  else
    snprintf(buf, len, "model-%05zu-of-%05zu.safetensors", s + 1, m->nshards);
}

static epm_status_t write_shards(mk_t *m, void *scratch, size_t scratch_len) {
  static const char *const meta[2] = {"format", "pt"};
  epm_load_progress_t prog;
  size_t total = 0, i = 0;
  for (size_t k = 0; k < m->n; k++) total += m->ents[k].nbytes;
  epm_load_progress_begin(&prog, "ckpt make", total, m->o->quiet ? EPM_PROGRESS_QUIET : EPM_PROGRESS_AUTO);
  for (size_t s = 0; s < m->nshards; s++) {
    size_t first = i, cnt = 0;
    while (first + cnt < m->n && m->ents[first + cnt].shard == s) cnt++;
    epm_st_spec_t *specs = calloc(cnt + 1, sizeof *specs);
    if (!specs) return epm_error(EPM_ERR_NOMEM, "specs");
    for (size_t k = 0; k < cnt; k++) specs[k] = m->ents[first + k].spec;
    char name[64], path[4096];
    shard_name(m, s, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", m->o->out_dir, name);
    epm_st_writer_t *w;
    epm_status_t st = epm_st_writer_open(path, specs, cnt, meta, 1, &w);
    free(specs);
    EPM_TRY(st);
    for (size_t k = 0; k < cnt; k++, i++) {
      const void *data = NULL;
      st = entry_bytes(m, &m->ents[i], scratch, scratch_len, &data);
      if (st == EPM_OK) st = epm_st_writer_put(w, data, m->ents[i].nbytes);
      if (st != EPM_OK) {
        epm_st_writer_abort(w);
        return st;
      }
      epm_load_progress_add(&prog, m->ents[i].nbytes);
    }
    EPM_TRY(epm_st_writer_close(w));
  }
  epm_load_progress_end(&prog);
  return EPM_OK;
}

static epm_status_t write_index(const mk_t *m) {
  if (m->nshards == 1) return EPM_OK;
  json_t *wm = json_object();
  size_t total = 0;
  char name[64];
  for (size_t i = 0; i < m->n; i++) {
    shard_name(m, m->ents[i].shard, name, sizeof name);
    json_object_set_new(wm, m->ents[i].name, json_string(name));
    total += m->ents[i].nbytes;
  }
  json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", wm);
  if (!idx) return epm_error(EPM_ERR_NOMEM, "index");
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", m->o->out_dir);
  int rc = json_dump_file(idx, path, JSON_INDENT(2) | JSON_SORT_KEYS);
  json_decref(idx);
  return rc == 0 ? EPM_OK : epm_error(EPM_ERR_IO, "%s: write failed", path);
}

epm_status_t epm_ckpt_make(const epm_ckpt_make_opts_t *o) {
  mk_t m = {.o = o, .d = o->dims};
  epm_status_t st = EPM_OK;
  void *scratch = NULL;
  char probe[4096];
  EPM_TRY(epm_model_dims_validate(&o->dims));
  if (o->layers < 1 || o->layers > 100000)
    return epm_error(EPM_ERR_INVALID_ARG, "layers = %lld must be in [1, 100000]", (long long)o->layers);
  m.d.num_layers = o->layers;
  m.fam = epm_model_family_for_dims(&m.d);
  if (mkdir(o->out_dir, 0755) != 0 && errno != EEXIST)
    return epm_error(EPM_ERR_IO, "%s: mkdir: %s", o->out_dir, strerror(errno));
  snprintf(probe, sizeof probe, "%s/config.json", o->out_dir);
  if (access(probe, F_OK) == 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s already holds a checkpoint (config.json); remove it first", o->out_dir);
  int64_t per = 3 * m.d.hidden * m.d.intermediate * 9 / 16;
  m.chunk = per > 0 ? (int64_t)(CHUNK_BYTES / (uint64_t)per) : 1;
  if (m.chunk < 1) m.chunk = 1;
  if (m.chunk > m.d.num_experts) m.chunk = m.d.num_experts;
  size_t scratch_len;
  if (epm_mul_size((size_t)m.d.num_experts, (size_t)m.d.hidden * 2, &scratch_len))
    return epm_error(EPM_ERR_OVERFLOW, "router size");
  scratch = malloc(scratch_len + 16);
  if (!scratch) return epm_error(EPM_ERR_NOMEM, "router scratch of %zu bytes", scratch_len);
  EPM_TRY_GOTO(build_list(&m), st, out);
  EPM_TRY_GOTO(write_shards(&m, scratch, scratch_len + 16), st, out);
  EPM_TRY_GOTO(write_index(&m), st, out);
  EPM_TRY_GOTO(write_config(&m), st, out); /* last: a directory with config.json is complete */
  if (!o->quiet)
    EPM_LOG(EPM_LOG_INFO, "weights", "wrote %s: %s, %lld layers, %zu tensors in %zu files", o->out_dir,
          epm_model_family_name(m.fam), (long long)o->layers, m.n, m.nshards);
out:
  if (m.have_cur) epm_layer_free(&m.cur);
  for (size_t i = 0; i < m.n; i++) free(m.ents[i].name);
  free(m.ents);
  free(scratch);
  if (st != EPM_OK) epm_error_wrap(st, "ckpt make %s", o->out_dir);
  return st;
}
