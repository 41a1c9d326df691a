/* SPDX-License-Identifier: Apache-2.0 */
/* backend_impl.h — private: the vtable behind epm_backend_t (ggml_backend_i
 * style). Each backend file fills one epm__backend_ops_t; backend.c checks
 * arguments once and forwards, so the implementations only do the work. */
#ifndef EPMOE_BACKEND_IMPL_H
#define EPMOE_BACKEND_IMPL_H

#include "epmoe/backend.h"

typedef struct {
  const char *name;
  int is_device;
  void *(*stream)(const epm_backend_t *be); /* cudaStream_t of the device backend; NULL = none */
  void (*destroy)(epm_backend_t *be);
  epm_status_t (*alloc)(epm_backend_t *be, size_t bytes, void **out);
  void (*free)(epm_backend_t *be, void *p);
  epm_status_t (*copy_h2d)(epm_backend_t *be, void *dst, const void *src, size_t bytes);
  epm_status_t (*copy_d2h)(epm_backend_t *be, void *dst, const void *src, size_t bytes);
  epm_status_t (*sync)(epm_backend_t *be);
  epm_status_t (*copy_2d)(epm_backend_t *be, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                          size_t rows);
  epm_status_t (*zero)(epm_backend_t *be, void *dst, size_t bytes);
  epm_status_t (*capture_begin)(epm_backend_t *be);
  epm_status_t (*capture_end)(epm_backend_t *be, int keep, void **graph);
  epm_status_t (*graph_launch)(epm_backend_t *be, void *graph);
  void (*graph_destroy)(epm_backend_t *be, void *graph);
  epm_status_t (*mark_create)(epm_backend_t *be, void **mark);
  void (*mark_destroy)(epm_backend_t *be, void *mark);
  epm_status_t (*mark_record)(epm_backend_t *be, void *mark);
  epm_status_t (*mark_elapsed)(epm_backend_t *be, void *a, void *b, double *seconds);
  epm_status_t (*quantize_static)(epm_backend_t *be, const epm_backend_weights_t *w, const epm_bf16_t *x, int64_t m,
                                  uint8_t *packed, uint8_t *sf);
  epm_status_t (*weights_load)(epm_backend_t *be, const epm_layer_t *layer, int64_t max_local,
                               int64_t max_gathered, epm_backend_weights_t **out);
  void (*weights_free)(epm_backend_t *be, epm_backend_weights_t *w);
  epm_status_t (*route)(epm_backend_t *be, const epm_backend_weights_t *w, const float *logits,
                        int64_t m, int32_t *ids, float *weights);
  epm_status_t (*weight_on_input)(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                  float *weights, epm_bf16_t *x_out);
  epm_status_t (*amax)(epm_backend_t *be, const epm_bf16_t *x, int64_t n, float *amax);
  epm_status_t (*quantize)(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                           float global_scale, uint8_t *packed, uint8_t *sf);
  epm_status_t (*experts)(epm_backend_t *be, const epm_backend_weights_t *w,
                          const uint8_t *packed, const uint8_t *sf, float x_decode_scale,
                          const int32_t *ids, const float *weights, int64_t M,
                          epm_dtype_t partial_dtype, void *partial);
  epm_status_t (*shared_add)(epm_backend_t *be, const epm_backend_weights_t *w,
                             const epm_bf16_t *x, int64_t m, float *y);
  epm_status_t (*f32_to_bf16)(epm_backend_t *be, const float *src, int64_t n, epm_bf16_t *dst);
  epm_status_t (*bf16_to_f32)(epm_backend_t *be, const epm_bf16_t *src, int64_t n, float *dst);
} epm__backend_ops_t;

struct epm_backend {
  const epm__backend_ops_t *ops;
  epm_backend_config_t cfg;
  void *ctx;           /* the implementation's state */
};

/* Every backend's weights handle starts with this header so backend.c can
 * check shapes without knowing the implementation. */
struct epm_backend_weights {
  const epm_layer_t *layer;
  const epm_backend_t *owner;
  int64_t max_local, max_gathered; /* rows the scratch was sized for */
};

/* Host loops shared by the backends (the cuda backend runs them on pinned
 * staging until it has kernels for them):
 *   weight on input  out[t] = bf16(x[t] * bf16(w[t])), w[t] = 1  (top-1)
 *   shared combine   y[i] = float(bf16(y[i])) + float(s[i])  (moe_ref.h step 5) */
void epm__host_weight_on_input(const epm_bf16_t *x, int64_t m, int64_t hidden, float *w, epm_bf16_t *out);
void epm__host_shared_combine(float *y, const epm_bf16_t *s, int64_t n);

/* Constructors, one per backend file (cuda: backend_cuda.c or its
 * _nocuda.c stub). */
epm_status_t epm__backend_cpu_init(epm_backend_t *be);
epm_status_t epm__backend_cuda_init(epm_backend_t *be);

#endif
