/* SPDX-License-Identifier: Apache-2.0 */
/* backend_cpu.c — the `cpu` backend: host memory, every stage computed by the
 * reference (routing.h, moe_ref.h, nvfp4.h). It is the oracle the cuda backend
 * is compared with and the backend of the MPI path, so it does nothing clever:
 * each op is one reference call plus the glue to the engine's buffers.
 *
 * The shared expert runs as a one-expert layer view (the shared bank, its own
 * input and intermediate scales, top-1 with weight 1), which is the reference
 * layer function's step 5. Its scratch belongs to the backend (grown at load,
 * shared by all layers loaded on it), so a model of many layers does not hold
 * one copy per layer. */
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "epmoe/checked.h"
#include "epmoe/moe_ref.h"
#include "epmoe/routing.h"

#define CPU_ALIGN 64

/* Shared-expert scratch, one per backend (every layer loaded on it uses it;
 * ops run one at a time), grown at load only. */
typedef struct {
  uint8_t *sh_packed, *sh_sf;
  int32_t *sh_ids; /* zeros */
  float *sh_w;     /* ones */
  epm_bf16_t *sh_out;
  int64_t rows, hidden;
} cpu_ctx_t;

typedef struct {
  struct epm_backend_weights hdr; /* first: backend.c reads it */
  epm_routing_config_t routing;
  epm_moe_ref_opts_t opts;
  int has_shared;
  epm_layer_t shared_view; /* the shared expert as a one-expert layer */
} cpu_weights_t;

static epm_status_t cpu_alloc(epm_backend_t *be, size_t bytes, void **out) {
  size_t rounded;
  (void)be;
  /* aligned_alloc needs a multiple of the alignment; 0 bytes still gets a
   * unique pointer so callers need no special case. */
  if (epm_add_size(bytes, CPU_ALIGN - 1, &rounded))
    return epm_error(EPM_ERR_OVERFLOW, "cpu alloc of %zu bytes", bytes);
  rounded = rounded / CPU_ALIGN * CPU_ALIGN;
  if (rounded == 0) rounded = CPU_ALIGN;
  void *p = aligned_alloc(CPU_ALIGN, rounded);
  if (!p) return epm_error(EPM_ERR_NOMEM, "cpu backend: %zu bytes", bytes);
  *out = p;
  return EPM_OK;
}

static void cpu_free(epm_backend_t *be, void *p) {
  (void)be;
  free(p);
}

static epm_status_t cpu_copy(epm_backend_t *be, void *dst, const void *src, size_t bytes) {
  (void)be;
  if (dst != src) memmove(dst, src, bytes);
  return EPM_OK;
}

static void free_scratch(cpu_ctx_t *c) {
  free(c->sh_packed);
  free(c->sh_sf);
  free(c->sh_ids);
  free(c->sh_w);
  free(c->sh_out);
  memset(c, 0, sizeof *c);
}

static void cpu_destroy(epm_backend_t *be) {
  if (be->ctx) free_scratch(be->ctx);
  free(be->ctx);
  be->ctx = NULL;
}

static void cpu_weights_free(epm_backend_t *be, epm_backend_weights_t *hw) {
  (void)be;
  free(hw);
}

/* A view of the shared expert as a one-expert layer. */
static void shared_view(const epm_layer_t *l, epm_layer_t *v) {
  memset(v, 0, sizeof *v);
  v->dims = l->dims;
  v->dims.intermediate = l->dims.shared_intermediate;
  v->dims.num_experts = 1;
  v->dims.top_k = 1;
  v->dims.n_group = 1;
  v->dims.topk_group = 1;
  v->dims.routed_scaling_factor = 1.0f;
  v->dims.routing = EPM_ROUTING_TOPK;
  v->dims.shared_experts = 0;
  v->dims.shared_intermediate = 0;
  v->layer_index = l->layer_index;
  v->expert_offset = 0;
  v->experts = l->shared;
  v->input_scale = l->shared_input_scale;
  v->down_input_scale = l->shared_down_input_scale;
  v->router_w = l->router_w;
}

static epm_status_t scratch(int64_t rows, int64_t cols, size_t elem, void **out) {
  *out = NULL;
  int64_t n;
  size_t bytes;
  if (epm_mul_i64(rows > 0 ? rows : 1, cols, &n) || epm_mul_size((size_t)n, elem, &bytes))
    return epm_error(EPM_ERR_OVERFLOW, "cpu scratch %lld x %lld x %zu bytes", (long long)rows, (long long)cols,
                     elem);
  *out = malloc(bytes);
  if (!*out) return epm_error(EPM_ERR_NOMEM, "cpu scratch of %zu bytes", bytes);
  return EPM_OK;
}

static epm_status_t grow_scratch(cpu_ctx_t *c, int64_t rows, int64_t H) {
  if (rows <= c->rows && H <= c->hidden) return EPM_OK;
  const int64_t R = rows > c->rows ? rows : c->rows, HH = H > c->hidden ? H : c->hidden;
  free_scratch(c);
  epm_status_t st;
  EPM_TRY_GOTO(scratch(R, HH / 2, 1, (void **)&c->sh_packed), st, fail);
  EPM_TRY_GOTO(scratch(R, HH / EPM_NVFP4_BLOCK, 1, (void **)&c->sh_sf), st, fail);
  EPM_TRY_GOTO(scratch(R, 1, sizeof(int32_t), (void **)&c->sh_ids), st, fail);
  EPM_TRY_GOTO(scratch(R, 1, sizeof(float), (void **)&c->sh_w), st, fail);
  EPM_TRY_GOTO(scratch(R, HH, sizeof(epm_bf16_t), (void **)&c->sh_out), st, fail);
  for (int64_t i = 0; i < R; i++) {
    c->sh_ids[i] = 0;
    c->sh_w[i] = 1.0f;
  }
  c->rows = R;
  c->hidden = HH;
  return EPM_OK;
fail:
  free_scratch(c);
  return st;
}

static epm_status_t cpu_weights_load(epm_backend_t *be, const epm_layer_t *l, int64_t max_local,
                                     int64_t max_gathered, epm_backend_weights_t **out) {
  (void)max_gathered; /* the reference allocates its own per-call scratch */
  cpu_weights_t *w = calloc(1, sizeof *w);
  if (!w) return epm_error(EPM_ERR_NOMEM, "cpu weights handle");
  epm_status_t st;
  EPM_TRY_GOTO(epm_routing_config_from_dims(&l->dims, &w->routing), st, fail);
  EPM_TRY_GOTO(epm_routing_validate(&w->routing), st, fail);
  w->opts = (epm_moe_ref_opts_t)EPM_MOE_REF_OPTS_INIT;
  w->opts.threads = be->cfg.threads;
  w->opts.include_shared = 0;
  w->has_shared = l->dims.shared_experts > 0 && l->shared.count > 0;
  if (w->has_shared) {
    const int64_t H = l->dims.hidden;
    if (!(l->shared_input_scale > 0.0f) || !(l->shared_down_input_scale > 0.0f)) {
      st = epm_error(EPM_ERR_INVALID_ARG, "shared expert scales input %g, down input %g must be > 0",
                     (double)l->shared_input_scale, (double)l->shared_down_input_scale);
      goto fail;
    }
    shared_view(l, &w->shared_view);
    EPM_TRY_GOTO(grow_scratch(be->ctx, max_local, H), st, fail);
  }
  *out = &w->hdr;
  return EPM_OK;
fail:
  cpu_weights_free(be, &w->hdr);
  return st;
}

static epm_status_t cpu_route(epm_backend_t *be, const epm_backend_weights_t *hw, const float *logits, int64_t m,
                              int32_t *ids, float *weights) {
  const cpu_weights_t *w = (const cpu_weights_t *)hw;
  (void)be;
  return epm_route_f32(&w->routing, logits, hw->layer->router_bias, m, ids, weights, NULL);
}

static epm_status_t cpu_weight_on_input(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                        float *weights, epm_bf16_t *x_out) {
  (void)be;
  epm__host_weight_on_input(x, m, hidden, weights, x_out);
  return EPM_OK;
}

static epm_status_t cpu_amax(epm_backend_t *be, const epm_bf16_t *x, int64_t n, float *amax) {
  (void)be;
  *amax = epm_amax_bf16(x, n);
  return EPM_OK;
}

static epm_status_t cpu_quantize(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden, float G,
                                 uint8_t *packed, uint8_t *sf) {
  (void)be;
  return epm_nvfp4_quantize_bf16(x, m, hidden, G, EPM_SF_LINEAR, packed, sf);
}

static epm_status_t cpu_experts(epm_backend_t *be, const epm_backend_weights_t *hw, const uint8_t *packed,
                                const uint8_t *sf, float a1, const int32_t *ids, const float *weights, int64_t M,
                                epm_dtype_t dtype, void *partial) {
  const cpu_weights_t *w = (const cpu_weights_t *)hw;
  (void)be;
  return epm_moe_ref_experts(hw->layer, packed, sf, a1, M, hw->layer->dims.top_k, ids, weights, &w->opts,
                             dtype == EPM_DTYPE_F32 ? (float *)partial : NULL,
                             dtype == EPM_DTYPE_BF16 ? (epm_bf16_t *)partial : NULL, NULL);
}

static epm_status_t cpu_shared_add(epm_backend_t *be, const epm_backend_weights_t *hw, const epm_bf16_t *x,
                                   int64_t m, float *y) {
  const cpu_weights_t *w = (const cpu_weights_t *)hw;
  const cpu_ctx_t *c = be->ctx;
  const epm_layer_t *v = &w->shared_view;
  const int64_t H = hw->layer->dims.hidden;
  if (!w->has_shared) return EPM_OK;
  EPM_TRY(epm_nvfp4_quantize_bf16(x, m, H, 1.0f / v->input_scale, EPM_SF_LINEAR, c->sh_packed, c->sh_sf));
  EPM_TRY(epm_moe_ref_experts(v, c->sh_packed, c->sh_sf, v->input_scale, m, 1, c->sh_ids, c->sh_w, &w->opts,
                              NULL, c->sh_out, NULL));
  epm__host_shared_combine(y, c->sh_out, m * H);
  return EPM_OK;
}

static epm_status_t cpu_f32_to_bf16(epm_backend_t *be, const float *src, int64_t n, epm_bf16_t *dst) {
  (void)be;
  for (int64_t i = 0; i < n; i++) dst[i] = epm_bf16_from_f32(src[i]);
  return EPM_OK;
}

static epm_status_t cpu_bf16_to_f32(epm_backend_t *be, const epm_bf16_t *src, int64_t n, float *dst) {
  (void)be;
  for (int64_t i = 0; i < n; i++) dst[i] = epm_bf16_to_f32(src[i]);
  return EPM_OK;
}

static epm_status_t cpu_copy_2d(epm_backend_t *be, void *dst, size_t dpitch, const void *src, size_t spitch,
                                size_t width, size_t rows) {
  (void)be;
  for (size_t r = 0; r < rows; r++) memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
  return EPM_OK;
}

static epm_status_t cpu_zero(epm_backend_t *be, void *dst, size_t bytes) {
  (void)be;
  memset(dst, 0, bytes);
  return EPM_OK;
}

static const epm__backend_ops_t cpu_ops = {
    .copy_2d = cpu_copy_2d,
    .zero = cpu_zero,
    .name = "cpu",
    .is_device = 0,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_h2d = cpu_copy,
    .copy_d2h = cpu_copy,
    .sync = NULL,
    .weights_load = cpu_weights_load,
    .weights_free = cpu_weights_free,
    .route = cpu_route,
    .weight_on_input = cpu_weight_on_input,
    .amax = cpu_amax,
    .quantize = cpu_quantize,
    .experts = cpu_experts,
    .shared_add = cpu_shared_add,
    .f32_to_bf16 = cpu_f32_to_bf16,
    .bf16_to_f32 = cpu_bf16_to_f32,
};

epm_status_t epm__backend_cpu_init(epm_backend_t *be) {
  if (be->cfg.threads < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "cpu backend: threads = %d must be >= 0", be->cfg.threads);
  be->ctx = calloc(1, sizeof(cpu_ctx_t));
  if (!be->ctx) return epm_error(EPM_ERR_NOMEM, "cpu backend context");
  be->ops = &cpu_ops;
  return EPM_OK;
}
