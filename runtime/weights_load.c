/* SPDX-License-Identifier: Apache-2.0 */
/* weights_load.c — one MoE layer's EP slice from a ModelOpt NVFP4
 * checkpoint into an epm_layer_t (host memory), every tensor checked. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "epmoe/bf16.h"
#include "epmoe/checked.h"
#include "epmoe/clock.h"

/* Copy threads per load: enough to overlap page faults and storage queues;
 * more only contends on a shared host. */
#define EPM__LOAD_THREADS 4
#include "epmoe/log.h"
#include "epmoe/weights.h"

static const char *const proj_names[3] = {"gate_proj", "up_proj", "down_proj"};
static const char *const field_names[4] = {"weight", "weight_scale", "weight_scale_2", "input_scale"};

static int prefix(epm_model_family_t fam, int64_t layer, char *buf, size_t len) {
  int n = fam == EPM_FAMILY_LLAMA4
              ? snprintf(buf, len, "language_model.model.layers.%lld.feed_forward", (long long)layer)
              : snprintf(buf, len, "model.layers.%lld.mlp", (long long)layer);
  return n < 0 || (size_t)n >= len;
}

int epm_weight_name(epm_model_family_t fam, int64_t layer, int64_t expert, epm_proj_t proj,
                    epm_field_t field, char *buf, size_t len) {
  char p[128];
  int n;
  if (prefix(fam, layer, p, sizeof p) || (int)proj < 0 || proj > EPM_PROJ_DOWN || (int)field < 0 ||
      field > EPM_FIELD_INPUT_SCALE)
    return 1;
  if (expert == EPM_EXPERT_SHARED)
    n = snprintf(buf, len, "%s.%s.%s.%s", p, fam == EPM_FAMILY_LLAMA4 ? "shared_expert" : "shared_experts",
                 proj_names[proj], field_names[field]);
  else
    n = snprintf(buf, len, "%s.experts.%lld.%s.%s", p, (long long)expert, proj_names[proj], field_names[field]);
  return n < 0 || (size_t)n >= len;
}

int epm_router_name(epm_model_family_t fam, int64_t layer, int bias, char *buf, size_t len) {
  char p[128];
  if (prefix(fam, layer, p, sizeof p)) return 1;
  int n = bias ? snprintf(buf, len, "%s.gate.e_score_correction_bias", p)
               : snprintf(buf, len, "%s.%s.weight", p, fam == EPM_FAMILY_LLAMA4 ? "router" : "gate");
  return n < 0 || (size_t)n >= len;
}

/* ---- loading ---- */
typedef struct {
  epm_model_dir_t *md;
  epm_model_family_t fam;
  int64_t layer;
  epm_load_progress_t *prog;
  int warned;
  struct job *jobs;
  size_t njobs, capjobs;
} ctx_t;

static epm_status_t scalar_f32(ctx_t *c, int64_t expert, epm_proj_t proj, epm_field_t field, float *out) {
  char name[256];
  const epm_st_tensor_t *t;
  const epm_st_file_t *f;
  epm_weight_name(c->fam, c->layer, expert, proj, field, name, sizeof name);
  EPM_TRY(epm_model_dir_tensor(c->md, name, &t, &f));
  int scalar = t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1);
  if (t->dtype != EPM_ST_F32 || !scalar) {
    char s[64];
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s' is %s %s, expected F32 [] (a scalar)", epm_st_path(f), name,
                     epm_st_dtype_name(t->dtype), epm_st_shape_str(t->ndim, t->shape, s, sizeof s));
  }
  memcpy(out, t->data, sizeof *out);
  return epm_check_decode_scale(epm_st_path(f), name, *out);
}

/* A bulk copy planned during validation, run later in parallel. */
typedef struct job {
  const epm_st_file_t *f;
  const epm_st_tensor_t *t;
  void *dst;
  epm_status_t st;
} job_t;

static epm_status_t add_job(ctx_t *c, const char *name, epm_st_dtype_t dt, const int64_t *shape, void *dst) {
  const epm_st_tensor_t *t;
  const epm_st_file_t *f;
  EPM_TRY(epm_model_dir_tensor(c->md, name, &t, &f));
  EPM_TRY(epm_st_expect(f, name, dt, 2, shape, &t));
  if (!dst) return EPM_OK; /* the checking pass before allocation */
  if (c->njobs == c->capjobs) {
    size_t cap = c->capjobs ? 2 * c->capjobs : 64;
    job_t *j = realloc(c->jobs, cap * sizeof *j);
    if (!j) return epm_error(EPM_ERR_NOMEM, "copy list of %zu", cap);
    c->jobs = j;
    c->capjobs = cap;
  }
  c->jobs[c->njobs++] = (job_t){f, t, dst, EPM_OK};
  return EPM_OK;
}

/* weight U8 [rows, cols/2] and weight_scale E4M3 [rows, cols/16] into dst
 * (NULL: only check they are there with that dtype and shape). */
static epm_status_t plan_proj(ctx_t *c, int64_t expert, epm_proj_t proj, int64_t rows, int64_t cols,
                              uint8_t *w_dst, uint8_t *sf_dst) {
  char name[256];
  int64_t shape[2] = {rows, cols / 2};
  epm_weight_name(c->fam, c->layer, expert, proj, EPM_FIELD_WEIGHT, name, sizeof name);
  EPM_TRY(add_job(c, name, EPM_ST_U8, shape, w_dst));
  shape[1] = cols / 16;
  epm_weight_name(c->fam, c->layer, expert, proj, EPM_FIELD_WEIGHT_SCALE, name, sizeof name);
  return add_job(c, name, EPM_ST_F8_E4M3, shape, sf_dst);
}

/* Copy one tensor; block scales are checked in the copy (a NaN or negative
 * E4M3 scale would load silently and change the outputs). */
static epm_status_t run_job(const job_t *j) {
  EPM_TRY(epm_st_read(j->f, j->t, j->dst));
  if (j->t->dtype != EPM_ST_F8_E4M3) return EPM_OK;
  return epm_check_block_scales(epm_st_path(j->f), j->t->name, j->dst, j->t->shape[0], j->t->shape[1]);
}

/* pread every planned tensor; threads overlap page faults and I/O. Errors
 * are re-raised on the calling thread (the message is thread-local). */
static epm_status_t run_jobs(ctx_t *c) {
  const int64_t n = (int64_t)c->njobs;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(EPM__LOAD_THREADS)
#endif
  for (int64_t i = 0; i < n; i++) {
    job_t *j = &c->jobs[i];
    j->st = run_job(j);
    if (c->prog) {
#ifdef _OPENMP
#pragma omp critical(epm_load_progress)
#endif
      epm_load_progress_add(c->prog, j->t->nbytes);
    }
  }
  for (size_t i = 0; i < c->njobs; i++)
    if (c->jobs[i].st != EPM_OK) return run_job(&c->jobs[i]);
  return EPM_OK;
}

/* Expert `expert` (global id, or shared) into slot `slot` of bank b; with
 * b NULL, check its tensors (presence, dtype, shape, scalar values) only. */
static epm_status_t load_expert(ctx_t *c, int64_t expert, int64_t H, int64_t I, epm_expert_bank_t *b,
                                int64_t slot) {
  int64_t wi = 0, si = 0; /* bytes of one packed [I, H/2] matrix and of its [I, H/16] scales */
  if (epm_mul_i64(I, H / 2, &wi) || epm_mul_i64(I, H / 16, &si) || epm_mul_i64(wi, slot, &wi) ||
      epm_mul_i64(si, slot, &si))
    return epm_error(EPM_ERR_OVERFLOW, "expert slot %lld of I %lld x H %lld overflows int64", (long long)slot,
                     (long long)I, (long long)H);
  const size_t wo = (size_t)wi, so = (size_t)si;
  EPM_TRY(plan_proj(c, expert, EPM_PROJ_GATE, I, H, b ? b->gate_w + wo : NULL, b ? b->gate_sf + so : NULL));
  EPM_TRY(plan_proj(c, expert, EPM_PROJ_UP, I, H, b ? b->up_w + wo : NULL, b ? b->up_sf + so : NULL));
  EPM_TRY(plan_proj(c, expert, EPM_PROJ_DOWN, H, I, b ? b->down_w + wo : NULL, b ? b->down_sf + so : NULL));
  float g2, u2, d2;
  EPM_TRY(scalar_f32(c, expert, EPM_PROJ_GATE, EPM_FIELD_WEIGHT_SCALE_2, &g2));
  EPM_TRY(scalar_f32(c, expert, EPM_PROJ_UP, EPM_FIELD_WEIGHT_SCALE_2, &u2));
  EPM_TRY(scalar_f32(c, expert, EPM_PROJ_DOWN, EPM_FIELD_WEIGHT_SCALE_2, &d2));
  if (!b) return EPM_OK;
  b->down_scale_2[slot] = d2;
  if (g2 != u2) {
    /* Log a few per layer, not thousands. */
    if (c->warned++ < 4)
      EPM_LOG(EPM_LOG_WARN, "weights",
              "layer %lld expert %lld: gate weight_scale_2 %.9g != up weight_scale_2 %.9g; using the "
              "larger (accuracy of the other projection may suffer)",
              (long long)c->layer, (long long)expert, (double)g2, (double)u2);
  }
  b->gate_up_scale_2[slot] = g2 > u2 ? g2 : u2;
  return EPM_OK;
}

/* Max over all E experts (not only ours) so every rank quantizes the layer
 * input with the same global scale. */
static epm_status_t global_input_scales(ctx_t *c, int64_t E, float *in, float *down) {
  *in = *down = 0.0f;
  for (int64_t e = 0; e < E; e++) {
    float g, u, d;
    EPM_TRY(scalar_f32(c, e, EPM_PROJ_GATE, EPM_FIELD_INPUT_SCALE, &g));
    EPM_TRY(scalar_f32(c, e, EPM_PROJ_UP, EPM_FIELD_INPUT_SCALE, &u));
    EPM_TRY(scalar_f32(c, e, EPM_PROJ_DOWN, EPM_FIELD_INPUT_SCALE, &d));
    *in = fmaxf(*in, fmaxf(g, u));
    *down = fmaxf(*down, d);
  }
  return EPM_OK;
}

/* Router weight [E, H] and bias [E]: BF16 or F32 in the file, fp32 in memory
 * (dst NULL: check dtype and shape only). */
static epm_status_t load_router_tensor(ctx_t *c, int bias, int64_t E, int64_t H, float *dst) {
  char name[256];
  const epm_st_tensor_t *t;
  const epm_st_file_t *f;
  epm_router_name(c->fam, c->layer, bias, name, sizeof name);
  EPM_TRY(epm_model_dir_tensor(c->md, name, &t, &f));
  int ok = (t->dtype == EPM_ST_BF16 || t->dtype == EPM_ST_F32) &&
           (bias ? (t->ndim == 1 && t->shape[0] == E) : (t->ndim == 2 && t->shape[0] == E && t->shape[1] == H));
  if (!ok) {
    char s[64], x[64];
    const int64_t want[2] = {E, H};
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s' is %s %s, expected BF16 or F32 %s", epm_st_path(f), name,
                     epm_st_dtype_name(t->dtype), epm_st_shape_str(t->ndim, t->shape, s, sizeof s),
                     epm_st_shape_str(bias ? 1 : 2, want, x, sizeof x));
  }
  if (!dst) return EPM_OK;
  /* An Inf or NaN logit or bias poisons every token's expert choice. */
  EPM_TRY(epm_check_finite(epm_st_path(f), t));
  const size_t n = (size_t)t->numel;
  if (t->dtype == EPM_ST_F32) {
    memcpy(dst, t->data, n * sizeof(float));
  } else {
    for (size_t i = 0; i < n; i++) /* safetensors is little-endian */
      dst[i] = epm_bf16_to_f32((epm_bf16_t)(t->data[2 * i] | (t->data[2 * i + 1] << 8)));
  }
  if (c->prog) epm_load_progress_add(c->prog, t->nbytes);
  return EPM_OK;
}

/* Router: bf16 [E, H] plus an fp32 bias [E] (E x (H + 2) x 2 bytes).
 * Six tensors of one expert: 3 x (packed [I, H/2] + scales [I, H/16]). */
static int expert_bytes(int64_t H, int64_t I, int64_t *out) {
  int64_t ih;
  return epm_mul_i64(I, H, &ih) || epm_mul_i64(ih / 16, 27, out); /* 3 x (8 + 1) sixteenths */
}

epm_status_t epm_weights_layer_bytes(const epm_model_dims_t *d, int ep_size, size_t *out) {
  if (ep_size < 1 || d->num_experts < ep_size)
    return epm_error(EPM_ERR_INVALID_ARG, "%lld experts cannot give each of %d ranks a slot",
                     (long long)d->num_experts, ep_size);
  int64_t per, shared = 0, local, router, total;
  /* The default split's largest slice: the first E mod P ranks hold one more. */
  const int64_t most = d->num_experts / ep_size + (d->num_experts % ep_size != 0);
  if (expert_bytes(d->hidden, d->intermediate, &per) ||
      (d->shared_experts && expert_bytes(d->hidden, d->shared_intermediate, &shared)) ||
      epm_mul_i64(per, most, &local) ||
      epm_add_i64(d->hidden, 2, &router) || epm_mul3_i64(d->num_experts, router, 2, &router) ||
      epm_add_i64(local, shared, &total) ||
      epm_add_i64(total, router, &total))
    return epm_error(EPM_ERR_OVERFLOW, "layer bytes of E=%lld H=%lld I=%lld overflow 64 bits",
                     (long long)d->num_experts, (long long)d->hidden, (long long)d->intermediate);
  *out = (size_t)total;
  return EPM_OK;
}

epm_status_t epm_weights_load_layer(epm_model_dir_t *md, int64_t layer, int ep_rank, int ep_size,
                                    epm_layer_t *out, epm_load_progress_t *progress) {
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  epm_placement_t p = EPM_PLACEMENT_INIT;
  memset(out, 0, sizeof *out);
  if (ep_size < 1 || ep_rank < 0 || ep_rank >= ep_size)
    return epm_error(EPM_ERR_INVALID_ARG, "EP rank %d of %d is invalid", ep_rank, ep_size);
  epm_status_t st = epm_placement_default(d->num_experts, ep_size, 0, &p);
  if (st != EPM_OK) return epm_error_wrap(st, "%s", epm_model_dir_path(md));
  st = epm_weights_load_layer_placed(md, layer, &p, ep_rank, out, progress);
  epm_placement_free(&p);
  return st;
}

epm_status_t epm_weights_load_layer_placed(epm_model_dir_t *md, int64_t layer, const epm_placement_t *p,
                                           int64_t rank, epm_layer_t *out, epm_load_progress_t *progress) {
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  const int64_t E = d->num_experts;
  memset(out, 0, sizeof *out);
  if (!epm_model_dir_is_moe_layer(md, layer))
    return epm_error(EPM_ERR_INVALID_ARG, "%s: layer %lld is not a MoE layer of this %lld-layer model",
                     epm_model_dir_path(md), (long long)layer, (long long)d->num_layers);
  ctx_t c = {md, epm_model_dir_family(md), layer, progress, 0, NULL, 0, 0};
  epm_status_t st;
  float in_s, down_s, sh_g = 0, sh_u = 0, sh_d = 0;
  const int64_t first = p->rank_start[rank], count = epm_placement_rank_slots(p, rank);
  /* Check every tensor this rank needs before allocating: the allocation is
   * sized by config.json, and only tensors the files really hold justify it. */
  EPM_TRY_GOTO(global_input_scales(&c, E, &in_s, &down_s), st, fail);
  for (int64_t i = 0; i < count; i++)
    EPM_TRY_GOTO(load_expert(&c, p->slot_expert[first + i], d->hidden, d->intermediate, NULL, 0), st, fail);
  if (d->shared_experts) {
    EPM_TRY_GOTO(load_expert(&c, EPM_EXPERT_SHARED, d->hidden, d->shared_intermediate, NULL, 0), st, fail);
    EPM_TRY_GOTO(scalar_f32(&c, EPM_EXPERT_SHARED, EPM_PROJ_GATE, EPM_FIELD_INPUT_SCALE, &sh_g), st, fail);
    EPM_TRY_GOTO(scalar_f32(&c, EPM_EXPERT_SHARED, EPM_PROJ_UP, EPM_FIELD_INPUT_SCALE, &sh_u), st, fail);
    EPM_TRY_GOTO(scalar_f32(&c, EPM_EXPERT_SHARED, EPM_PROJ_DOWN, EPM_FIELD_INPUT_SCALE, &sh_d), st, fail);
  }
  EPM_TRY_GOTO(load_router_tensor(&c, 0, E, d->hidden, NULL), st, fail);
  if (d->routing == EPM_ROUTING_DEEPSEEK_V3) EPM_TRY_GOTO(load_router_tensor(&c, 1, E, 0, NULL), st, fail);
  st = epm_layer_alloc_placed(d, p, rank, out);
  if (st != EPM_OK) return epm_error_wrap(st, "%s", epm_model_dir_path(md));
  out->layer_index = layer;
  out->input_scale = in_s;
  out->down_input_scale = down_s;
  /* A replica reads the same tensors as the expert's first slot. */
  for (int64_t i = 0; i < count; i++)
    EPM_TRY_GOTO(load_expert(&c, out->slots.expert[i], d->hidden, d->intermediate, &out->experts, i), st, fail);
  if (d->shared_experts) {
    EPM_TRY_GOTO(load_expert(&c, EPM_EXPERT_SHARED, d->hidden, d->shared_intermediate, &out->shared, 0), st, fail);
    out->shared_input_scale = fmaxf(sh_g, sh_u);
    out->shared_down_input_scale = sh_d;
  }
  EPM_TRY_GOTO(run_jobs(&c), st, fail);
  EPM_TRY_GOTO(load_router_tensor(&c, 0, E, d->hidden, out->router_w), st, fail);
  if (out->router_bias) EPM_TRY_GOTO(load_router_tensor(&c, 1, E, 0, out->router_bias), st, fail);
  if (c.warned > 4)
    EPM_LOG(EPM_LOG_WARN, "weights", "layer %lld: %d experts in all had gate != up weight_scale_2",
            (long long)layer, c.warned);
  free(c.jobs);
  return EPM_OK;
fail:
  free(c.jobs);
  epm_error_wrap(st, "loading layer %lld slots [%lld, %lld) (EP rank %lld of %lld)", (long long)layer,
                 (long long)first, (long long)(first + count), (long long)rank, (long long)p->ep_size);
  epm_layer_free(out);
  return st;
}
