/* SPDX-License-Identifier: Apache-2.0 */
/* backend.c — the backend seam: argument checks in one place, then the
 * implementation's op (backend_cpu.c, backend_cuda.c). Shapes are checked
 * against the layer's dims here so each implementation can trust them. */
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "epmoe/checked.h"

static const char *const kind_names[] = {[EPM_BACKEND_CPU] = "cpu", [EPM_BACKEND_CUDA] = "cuda"};

epm_status_t epm_backend_kind_parse(const char *name, epm_backend_kind_t *out) {
  for (int i = 0; name && i < (int)(sizeof kind_names / sizeof kind_names[0]); i++) {
    if (strcmp(name, kind_names[i]) == 0) {
      *out = (epm_backend_kind_t)i;
      return EPM_OK;
    }
  }
  return epm_error(EPM_ERR_INVALID_ARG, "unknown backend '%s'; valid: cpu, cuda",
                   name ? name : "(null)");
}

const char *epm_backend_kind_name(epm_backend_kind_t kind) {
  if ((int)kind < 0 || (int)kind >= (int)(sizeof kind_names / sizeof kind_names[0]))
    return "invalid";
  return kind_names[kind];
}

const char *epm_kernels_name(epm_kernels_t k) {
  return k == EPM_KERNELS_V1 ? "v1" : (k == EPM_KERNELS_V2 ? "v2" : "invalid");
}

static epm_status_t unsupported(const epm_backend_t *be, const char *op) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "backend '%s' does not implement '%s'", be->ops->name, op);
}

epm_status_t epm_backend_create(const epm_backend_config_t *cfg, epm_backend_t **out) {
  if (!cfg || !out) return epm_error(EPM_ERR_INVALID_ARG, "backend config or out pointer is NULL");
  epm_backend_t *be = calloc(1, sizeof *be);
  if (!be) return epm_error(EPM_ERR_NOMEM, "backend object (%zu bytes)", sizeof *be);
  be->cfg = *cfg;
  epm_status_t st;
  if (cfg->kernels != EPM_KERNELS_V1 && cfg->kernels != EPM_KERNELS_V2) {
    free(be);
    return epm_error(EPM_ERR_INVALID_ARG, "backend kernels %d is not v1 (0) or v2 (1)", (int)cfg->kernels);
  }
  switch (cfg->kind) {
    case EPM_BACKEND_CPU: st = epm__backend_cpu_init(be); break;
    case EPM_BACKEND_CUDA: st = epm__backend_cuda_init(be); break;
    default: st = epm_error(EPM_ERR_INVALID_ARG, "backend kind %d is not cpu (0) or cuda (1)", (int)cfg->kind);
  }
  if (st != EPM_OK) {
    free(be);
    return st;
  }
  *out = be;
  return EPM_OK;
}

void epm_backend_destroy(epm_backend_t *be) {
  if (!be) return;
  if (be->ops && be->ops->destroy) be->ops->destroy(be);
  free(be);
}

const char *epm_backend_name(const epm_backend_t *be) { return be ? be->ops->name : "(null)"; }
int epm_backend_is_device(const epm_backend_t *be) { return be && be->ops->is_device; }
void *epm_backend_stream(const epm_backend_t *be) { return be && be->ops->stream ? be->ops->stream(be) : NULL; }

epm_status_t epm_backend_alloc(epm_backend_t *be, size_t bytes, void **out) {
  if (!be || !out) return epm_error(EPM_ERR_INVALID_ARG, "backend alloc: NULL argument");
  return be->ops->alloc(be, bytes, out);
}

void epm_backend_free(epm_backend_t *be, void *p) {
  if (be && p) be->ops->free(be, p);
}

epm_status_t epm_backend_copy_h2d(epm_backend_t *be, void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return EPM_OK;
  if (!dst || !src) return epm_error(EPM_ERR_INVALID_ARG, "copy_h2d of %zu bytes: NULL pointer", bytes);
  return be->ops->copy_h2d(be, dst, src, bytes);
}

epm_status_t epm_backend_copy_d2h(epm_backend_t *be, void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return EPM_OK;
  if (!dst || !src) return epm_error(EPM_ERR_INVALID_ARG, "copy_d2h of %zu bytes: NULL pointer", bytes);
  return be->ops->copy_d2h(be, dst, src, bytes);
}

epm_status_t epm_backend_sync(epm_backend_t *be) { return be->ops->sync ? be->ops->sync(be) : EPM_OK; }

epm_status_t epm_backend_copy_2d(epm_backend_t *be, void *dst, size_t dpitch, const void *src, size_t spitch,
                                 size_t width, size_t rows) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "copy_2d: NULL backend");
  if (rows == 0 || width == 0) return EPM_OK;
  if (!dst || !src) return epm_error(EPM_ERR_INVALID_ARG, "copy_2d of %zu rows: NULL buffer", rows);
  if (width > dpitch || width > spitch)
    return epm_error(EPM_ERR_INVALID_ARG, "copy_2d: row width %zu exceeds a pitch (dst %zu, src %zu)", width, dpitch,
                     spitch);
  if (!be->ops->copy_2d) return unsupported(be, "copy_2d");
  return be->ops->copy_2d(be, dst, dpitch, src, spitch, width, rows);
}

epm_status_t epm_backend_zero(epm_backend_t *be, void *dst, size_t bytes) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "zero: NULL backend");
  if (bytes == 0) return EPM_OK;
  if (!dst) return epm_error(EPM_ERR_INVALID_ARG, "zero of %zu bytes: NULL buffer", bytes);
  if (!be->ops->zero) return unsupported(be, "zero");
  return be->ops->zero(be, dst, bytes);
}

epm_status_t epm_backend_capture_begin(epm_backend_t *be) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "capture_begin: NULL backend");
  if (!be->ops->capture_begin) return unsupported(be, "graph capture");
  return be->ops->capture_begin(be);
}

epm_status_t epm_backend_capture_end(epm_backend_t *be, int keep, void **graph) {
  if (!be || (keep && !graph)) return epm_error(EPM_ERR_INVALID_ARG, "capture_end: NULL argument");
  if (!be->ops->capture_end) return unsupported(be, "graph capture");
  return be->ops->capture_end(be, keep, graph);
}

epm_status_t epm_backend_graph_launch(epm_backend_t *be, void *graph) {
  if (!be || !graph) return epm_error(EPM_ERR_INVALID_ARG, "graph_launch: NULL argument");
  if (!be->ops->graph_launch) return unsupported(be, "graph launch");
  return be->ops->graph_launch(be, graph);
}

void epm_backend_graph_destroy(epm_backend_t *be, void *graph) {
  if (be && graph && be->ops->graph_destroy) be->ops->graph_destroy(be, graph);
}

epm_status_t epm_backend_mark_create(epm_backend_t *be, void **mark) {
  if (!be || !mark) return epm_error(EPM_ERR_INVALID_ARG, "mark_create: NULL argument");
  *mark = NULL;
  if (!be->ops->mark_create) return unsupported(be, "timing marks");
  return be->ops->mark_create(be, mark);
}

void epm_backend_mark_destroy(epm_backend_t *be, void *mark) {
  if (be && mark && be->ops->mark_destroy) be->ops->mark_destroy(be, mark);
}

epm_status_t epm_backend_mark_record(epm_backend_t *be, void *mark) {
  if (!be || !mark) return epm_error(EPM_ERR_INVALID_ARG, "mark_record: NULL argument");
  if (!be->ops->mark_record) return unsupported(be, "timing marks");
  return be->ops->mark_record(be, mark);
}

epm_status_t epm_backend_mark_elapsed(epm_backend_t *be, void *a, void *b, double *seconds) {
  if (!be || !a || !b || !seconds) return epm_error(EPM_ERR_INVALID_ARG, "mark_elapsed: NULL argument");
  if (!be->ops->mark_elapsed) return unsupported(be, "timing marks");
  return be->ops->mark_elapsed(be, a, b, seconds);
}

epm_status_t epm_backend_weights_load(epm_backend_t *be, const epm_layer_t *layer, int64_t max_local,
                                      int64_t max_gathered, epm_backend_weights_t **out) {
  if (!be || !layer || !out) return epm_error(EPM_ERR_INVALID_ARG, "weights_load: NULL argument");
  /* max_gathered may be below max_local: an engine with a workspace budget
   * runs the expert stage in chunks smaller than one rank's tokens. */
  if (max_local < 0 || max_gathered < 0 || (max_local > 0 && max_gathered < 1))
    return epm_error(EPM_ERR_INVALID_ARG, "weights_load: max rows local %lld, gathered %lld (need local >= 0 and "
                     "gathered >= 1 when local > 0)",
                     (long long)max_local, (long long)max_gathered);
  EPM_TRY(epm_model_dims_validate(&layer->dims));
  const epm_expert_bank_t *b = &layer->experts;
  EPM_TRY(epm_layer_check_bank(layer));
  if (b->count > 0 && (b->hidden != layer->dims.hidden || b->intermediate != layer->dims.intermediate))
    return epm_error(EPM_ERR_INVALID_ARG, "expert bank is [H %lld, I %lld]; dims say [H %lld, I %lld]",
                     (long long)b->hidden, (long long)b->intermediate, (long long)layer->dims.hidden,
                     (long long)layer->dims.intermediate);
  if (!layer->router_w)
    return epm_error(EPM_ERR_INVALID_ARG, "layer %lld has no router weights", (long long)layer->layer_index);
  if (!be->ops->weights_load) return unsupported(be, "weights_load");
  epm_status_t st = be->ops->weights_load(be, layer, max_local, max_gathered, out);
  if (st == EPM_OK) {
    (*out)->layer = layer;
    (*out)->owner = be;
    (*out)->max_local = max_local;
    (*out)->max_gathered = max_gathered;
  }
  return st;
}

void epm_backend_weights_free(epm_backend_t *be, epm_backend_weights_t *w) {
  if (be && w && be->ops->weights_free) be->ops->weights_free(be, w);
}

/* A weights handle must come from this backend: mixing them would hand host
 * pointers to kernels or the reverse. */
static epm_status_t check_w(const epm_backend_t *be, const epm_backend_weights_t *w, const char *op) {
  if (!be || !w) return epm_error(EPM_ERR_INVALID_ARG, "%s: NULL backend or weights", op);
  if (w->owner != be)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: weights were loaded by backend '%s', not '%s'", op,
                     w->owner ? w->owner->ops->name : "?", be->ops->name);
  return EPM_OK;
}

static epm_status_t check_rows(int64_t m, const char *op) {
  if (m < 0) return epm_error(EPM_ERR_INVALID_ARG, "%s: row count %lld < 0", op, (long long)m);
  return EPM_OK;
}

epm_status_t epm_backend_route(epm_backend_t *be, const epm_backend_weights_t *w, const float *logits,
                               int64_t m, int32_t *ids, float *weights) {
  EPM_TRY(check_w(be, w, "route"));
  EPM_TRY(check_rows(m, "route"));
  if (m > w->max_local)
    return epm_error(EPM_ERR_INVALID_ARG, "route of %lld rows; the weights were loaded for at most %lld",
                     (long long)m, (long long)w->max_local);
  if (m == 0) return EPM_OK;
  if (!logits || !ids || !weights) return epm_error(EPM_ERR_INVALID_ARG, "route of %lld rows: NULL buffer", (long long)m);
  if (!be->ops->route) return unsupported(be, "route");
  return be->ops->route(be, w, logits, m, ids, weights);
}

epm_status_t epm_backend_weight_on_input(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                         float *weights, epm_bf16_t *x_out) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "weight_on_input: NULL backend");
  EPM_TRY(check_rows(m, "weight_on_input"));
  if (hidden <= 0) return epm_error(EPM_ERR_INVALID_ARG, "weight_on_input: hidden %lld <= 0", (long long)hidden);
  if (m == 0) return EPM_OK;
  if (!x || !weights || !x_out)
    return epm_error(EPM_ERR_INVALID_ARG, "weight_on_input of %lld rows: NULL buffer", (long long)m);
  if (!be->ops->weight_on_input) return unsupported(be, "weight_on_input");
  return be->ops->weight_on_input(be, x, m, hidden, weights, x_out);
}

epm_status_t epm_backend_amax(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                              float *amax) {
  int64_t n;
  if (!be || !amax) return epm_error(EPM_ERR_INVALID_ARG, "amax: NULL argument");
  if (epm_mul_i64(m, hidden, &n))
    return epm_error(EPM_ERR_OVERFLOW, "amax over %lld x %lld elements", (long long)m, (long long)hidden);
  *amax = 0.0f;
  if (n == 0) return EPM_OK;
  if (!x) return epm_error(EPM_ERR_INVALID_ARG, "amax of %lld elements: NULL input", (long long)n);
  if (!be->ops->amax) return unsupported(be, "amax");
  return be->ops->amax(be, x, n, amax);
}

epm_status_t epm_backend_quantize(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                  float global_scale, uint8_t *packed, uint8_t *sf) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "quantize: NULL backend");
  EPM_TRY(check_rows(m, "quantize"));
  if (hidden <= 0 || hidden % EPM_NVFP4_BLOCK)
    return epm_error(EPM_ERR_INVALID_ARG, "quantize: hidden %lld is not a positive multiple of %d",
                     (long long)hidden, EPM_NVFP4_BLOCK);
  if (m == 0) return EPM_OK;
  if (!x || !packed || !sf) return epm_error(EPM_ERR_INVALID_ARG, "quantize of %lld rows: NULL buffer", (long long)m);
  if (!be->ops->quantize) return unsupported(be, "quantize");
  return be->ops->quantize(be, x, m, hidden, global_scale, packed, sf);
}

epm_status_t epm_backend_quantize_static(epm_backend_t *be, const epm_backend_weights_t *w, const epm_bf16_t *x,
                                         int64_t m, uint8_t *packed, uint8_t *sf) {
  EPM_TRY(check_w(be, w, "quantize_static"));
  if (m > w->max_local)
    return epm_error(EPM_ERR_INVALID_ARG, "quantize of %lld rows; the weights were loaded for at most %lld",
                     (long long)m, (long long)w->max_local);
  const float a1 = w->layer->input_scale;
  if (!(a1 > 0.0f) || a1 > 3.0e38f)
    return epm_error(EPM_ERR_INVALID_ARG, "quantize_static: layer %lld input_scale %g must be finite and > 0",
                     (long long)w->layer->layer_index, (double)a1);
  if (!be->ops->quantize_static) return epm_backend_quantize(be, x, m, w->layer->dims.hidden, 1.0f / a1, packed, sf);
  EPM_TRY(check_rows(m, "quantize"));
  if (m == 0) return EPM_OK;
  if (!x || !packed || !sf) return epm_error(EPM_ERR_INVALID_ARG, "quantize of %lld rows: NULL buffer", (long long)m);
  return be->ops->quantize_static(be, w, x, m, packed, sf);
}

epm_status_t epm_backend_experts(epm_backend_t *be, const epm_backend_weights_t *w, const uint8_t *packed,
                                 const uint8_t *sf, float x_decode_scale, const int32_t *ids,
                                 const float *weights, int64_t M, epm_dtype_t partial_dtype, void *partial) {
  EPM_TRY(check_w(be, w, "experts"));
  EPM_TRY(check_rows(M, "experts"));
  if (epm_dtype_size(partial_dtype) == 0)
    return epm_error(EPM_ERR_INVALID_ARG, "experts: partial dtype %d is not f32 (0) or bf16 (1)", (int)partial_dtype);
  if (M > w->max_gathered)
    return epm_error(EPM_ERR_INVALID_ARG, "experts over %lld rows; the weights were loaded for at most %lld",
                     (long long)M, (long long)w->max_gathered);
  if (!(x_decode_scale > 0.0f) || x_decode_scale > 3.0e38f)
    return epm_error(EPM_ERR_INVALID_ARG, "experts: input decode scale %g must be finite and > 0",
                     (double)x_decode_scale);
  if (M == 0) return EPM_OK;
  if (!packed || !sf || !ids || !weights || !partial)
    return epm_error(EPM_ERR_INVALID_ARG, "experts over %lld rows: NULL buffer", (long long)M);
  if (!be->ops->experts) return unsupported(be, "experts");
  return be->ops->experts(be, w, packed, sf, x_decode_scale, ids, weights, M, partial_dtype, partial);
}

epm_status_t epm_backend_shared_add(epm_backend_t *be, const epm_backend_weights_t *w, const epm_bf16_t *x,
                                    int64_t m, float *y) {
  EPM_TRY(check_w(be, w, "shared_add"));
  EPM_TRY(check_rows(m, "shared_add"));
  if (m > w->max_local)
    return epm_error(EPM_ERR_INVALID_ARG, "shared_add of %lld rows; the weights were loaded for at most %lld",
                     (long long)m, (long long)w->max_local);
  if (m == 0 || w->layer->shared.count == 0) return EPM_OK;
  if (!x || !y) return epm_error(EPM_ERR_INVALID_ARG, "shared_add of %lld rows: NULL buffer", (long long)m);
  if (!be->ops->shared_add) return unsupported(be, "shared_add");
  return be->ops->shared_add(be, w, x, m, y);
}

epm_status_t epm_backend_f32_to_bf16(epm_backend_t *be, const float *src, int64_t n, epm_bf16_t *dst) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "f32_to_bf16: NULL backend");
  EPM_TRY(check_rows(n, "f32_to_bf16"));
  if (n == 0) return EPM_OK;
  if (!src || !dst) return epm_error(EPM_ERR_INVALID_ARG, "f32_to_bf16 of %lld values: NULL buffer", (long long)n);
  if (!be->ops->f32_to_bf16) return unsupported(be, "f32_to_bf16");
  return be->ops->f32_to_bf16(be, src, n, dst);
}

epm_status_t epm_backend_bf16_to_f32(epm_backend_t *be, const epm_bf16_t *src, int64_t n, float *dst) {
  if (!be) return epm_error(EPM_ERR_INVALID_ARG, "bf16_to_f32: NULL backend");
  EPM_TRY(check_rows(n, "bf16_to_f32"));
  if (n == 0) return EPM_OK;
  if (!src || !dst) return epm_error(EPM_ERR_INVALID_ARG, "bf16_to_f32 of %lld values: NULL buffer", (long long)n);
  if (!be->ops->bf16_to_f32) return unsupported(be, "bf16_to_f32");
  return be->ops->bf16_to_f32(be, src, n, dst);
}

void epm__host_weight_on_input(const epm_bf16_t *x, int64_t m, int64_t hidden, float *w, epm_bf16_t *out) {
  for (int64_t t = 0; t < m; t++) {
    const float wt = epm_bf16_to_f32(epm_bf16_from_f32(w[t]));
    for (int64_t h = 0; h < hidden; h++)
      out[t * hidden + h] = epm_bf16_from_f32(epm_bf16_to_f32(x[t * hidden + h]) * wt);
    w[t] = 1.0f;
  }
}

void epm__host_shared_combine(float *y, const epm_bf16_t *s, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = epm_bf16_to_f32(epm_bf16_from_f32(y[i])) + epm_bf16_to_f32(s[i]);
}
