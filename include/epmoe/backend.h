/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/backend.h — where the MoE stage math runs: `cpu` (the reference
 * implementation, host memory) or `cuda` (the kernels, device memory).
 *
 * A small vtable in the style of ggml's ggml_backend_i, keeping only what the
 * step engine calls. Every stage is a separate op so a later dispatch mode
 * (all-to-all: send each token only to the ranks owning one of its experts)
 * can reuse route/quantize/experts and replace only the collectives.
 *
 * Memory: buffers passed to the stage ops live in the backend's memory
 * (host for cpu, device for cuda) and come from epm_backend_alloc. Copies
 * between host and backend memory go through copy_h2d/copy_d2h. Ops are
 * ordered on the backend's one stream; epm_backend_sync waits for them.
 *
 * Shapes (all counts int64_t, rows row-major):
 *   x        bf16  [m, H]         hidden states
 *   logits   fp32  [m, E]         router logits
 *   ids      int32 [m, k]         global expert ids
 *   weights  fp32  [m, k]         routing weights (bf16-exact: the kernels'
 *                                 bf16 weights, widened; see routing.h)
 *   packed   uint8 [m, H/2]       NVFP4 E2M1 codes (element 0 low nibble)
 *   sf       uint8 [m, H/16]      E4M3 block scales, linear layout
 *   partial  fp32 or bf16 [M, H]  finalize output over this rank's experts
 *
 * Thread safety: one backend object is used by one thread at a time.
 */
#ifndef EPMOE_BACKEND_H
#define EPMOE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/dtype.h"
#include "epmoe/layer.h"
#include "epmoe/nvfp4.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_BACKEND_CPU = 0,
  EPM_BACKEND_CUDA = 1,
} epm_backend_kind_t;

typedef struct epm_backend epm_backend_t;
/* A layer's weights prepared for one backend (repacked / uploaded). */
typedef struct epm_backend_weights epm_backend_weights_t;

/* Which CUDA kernels the cuda backend runs (include/epmoe/kernels.h):
 * v1 = the reference GPU path (WMMA GEMMs, thread-per-token routing), v2 =
 * the fast path (sm_90a wgmma GEMMs with in-register dequant, warp routing;
 * on sm_100a the CUTLASS block-scaled GEMMs of an EPMOE_CUTLASS build). Both
 * compute the same math; outputs differ only by fp32 summation order. */
typedef enum {
  EPM_KERNELS_V1 = 0,
  EPM_KERNELS_V2 = 1,
} epm_kernels_t;

typedef struct {
  epm_backend_kind_t kind;
  int device;  /* cuda: device ordinal (the bootstrap's local rank); cpu: unused */
  int threads; /* cpu: worker threads for the reference (0 = default) */
  epm_kernels_t kernels; /* cuda: v1 (default) or v2; cpu: unused */
} epm_backend_config_t;

#define EPM_BACKEND_CONFIG_INIT {EPM_BACKEND_CPU, 0, 0, EPM_KERNELS_V1}

/* "v1" | "v2"; "invalid" for anything else. */
const char *epm_kernels_name(epm_kernels_t k);

/* "cpu" | "cuda" -> kind; EPM_ERR_INVALID_ARG lists the names. */
epm_status_t epm_backend_kind_parse(const char *name, epm_backend_kind_t *out);
const char *epm_backend_kind_name(epm_backend_kind_t kind);

/* Create a backend. cuda without a CUDA build or device -> EPM_ERR_NOT_SUPPORTED
 * / EPM_ERR_CUDA with the reason. [out] *out owned by the caller; destroy it. */
epm_status_t epm_backend_create(const epm_backend_config_t *cfg, epm_backend_t **out);
void epm_backend_destroy(epm_backend_t *be); /* NULL ok */
const char *epm_backend_name(const epm_backend_t *be);
/* 1 when buffers live in device memory (host pointers must be copied in). */
int epm_backend_is_device(const epm_backend_t *be);
/* The cudaStream_t every op of a device backend is ordered on (pass it to
 * the NCCL comm of the same step); NULL for cpu. */
void *epm_backend_stream(const epm_backend_t *be);

/* ---- memory ------------------------------------------------------------ */
/* Backend memory of `bytes` (0 gives a valid, unique, freeable pointer). */
epm_status_t epm_backend_alloc(epm_backend_t *be, size_t bytes, void **out);
void epm_backend_free(epm_backend_t *be, void *p); /* NULL ok */
epm_status_t epm_backend_copy_h2d(epm_backend_t *be, void *dst, const void *src, size_t bytes);
epm_status_t epm_backend_copy_d2h(epm_backend_t *be, void *dst, const void *src, size_t bytes);
epm_status_t epm_backend_sync(epm_backend_t *be);
/* Within backend memory, ordered on the stream (no host wait; capturable
 * in a CUDA graph): `rows` rows of `width` bytes from src (rows `spitch`
 * bytes apart) to dst (`dpitch` apart), and zero `bytes` bytes. The packed
 * dispatch records are built and taken apart with these. */
epm_status_t epm_backend_copy_2d(epm_backend_t *be, void *dst, size_t dpitch, const void *src, size_t spitch,
                                 size_t width, size_t rows);
epm_status_t epm_backend_zero(epm_backend_t *be, void *dst, size_t bytes);

/* ---- graphs (device backends; cpu: EPM_ERR_NOT_SUPPORTED) -------------- */
/* Record every op enqueued on the backend's stream between begin and end
 * (also the NCCL calls of a comm on that stream) instead of running it; no
 * op in between may wait on the host. end with keep = 0 discards the
 * capture (after an error); with keep = 1 it returns an executable graph in
 * *graph. A launch runs the recorded ops on the stream, reading the
 * addresses captured (host sources of copies included) at launch time. */
epm_status_t epm_backend_capture_begin(epm_backend_t *be);
epm_status_t epm_backend_capture_end(epm_backend_t *be, int keep, void **graph);
epm_status_t epm_backend_graph_launch(epm_backend_t *be, void *graph);
void epm_backend_graph_destroy(epm_backend_t *be, void *graph); /* NULL ok */

/* Timing marks on the stream (device backends; cpu: EPM_ERR_NOT_SUPPORTED):
 * record puts a mark after the ops enqueued so far, without waiting;
 * elapsed waits for mark b and gives the seconds between a and b as the
 * device saw them. The engine times its stages with these instead of a
 * stream sync after each stage. */
epm_status_t epm_backend_mark_create(epm_backend_t *be, void **mark);
void epm_backend_mark_destroy(epm_backend_t *be, void *mark); /* NULL ok */
epm_status_t epm_backend_mark_record(epm_backend_t *be, void *mark);
epm_status_t epm_backend_mark_elapsed(epm_backend_t *be, void *a, void *b, double *seconds);

/* ---- weights ----------------------------------------------------------- */
/* Prepare `layer` (this rank's expert slice, router, shared expert) for the
 * backend, with scratch for up to max_local rows per route/quantize/shared
 * call and max_gathered rows per experts call (sized once here, so a step
 * allocates nothing in the backend either).
 * [in] layer is caller-owned and must outlive the returned handle (the cpu
 * backend reads it in place; cuda copies what it needs). */
epm_status_t epm_backend_weights_load(epm_backend_t *be, const epm_layer_t *layer, int64_t max_local,
                                      int64_t max_gathered, epm_backend_weights_t **out);
void epm_backend_weights_free(epm_backend_t *be, epm_backend_weights_t *w); /* NULL ok */

/* ---- stage ops (all buffers in backend memory; m, M may be 0) ---------- */
/* 1 route: logits [m, E] -> ids [m, k], weights [m, k] per the layer's method. */
epm_status_t epm_backend_route(epm_backend_t *be, const epm_backend_weights_t *w,
                               const float *logits, int64_t m, int32_t *ids, float *weights);
/* Router weight on the input (llama4, vLLM apply_router_weight_on_input;
 * top_k must be 1): x_out[t] = bf16(x[t] * bf16(weights[t])), then
 * weights[t] = 1 so the experts sum with weight 1 (moe_ref.h layer step 3). */
epm_status_t epm_backend_weight_on_input(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                         float *weights, epm_bf16_t *x_out);
/* max |x| over x [m, H] into *amax (host); for the dynamic global scale. */
epm_status_t epm_backend_amax(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                              float *amax);
/* 2 quantize: x [m, H] -> packed, sf (linear) with encode scale G. */
epm_status_t epm_backend_quantize(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                  float global_scale, uint8_t *packed, uint8_t *sf);
/* 2 quantize with the layer's static encode scale fp32(1/input_scale), the
 * same bits as epm_backend_quantize with that G. A device backend keeps the
 * scale in device memory from load, so the op copies nothing from the host
 * (and can be captured in a graph). */
epm_status_t epm_backend_quantize_static(epm_backend_t *be, const epm_backend_weights_t *w, const epm_bf16_t *x,
                                         int64_t m, uint8_t *packed, uint8_t *sf);
/* 4 local experts + finalize over the gathered M rows, which were quantized
 * with decode scale a1 (= 1/G_in; the layer's input_scale when static):
 * partial[t] = sum over t's top-k slots whose expert is local of
 * bf16(w[t,j]) * expert(x_t), in slot order, fp32 (moe_ref.h steps 1-10);
 * rows whose experts are all remote are exactly 0. */
epm_status_t epm_backend_experts(epm_backend_t *be, const epm_backend_weights_t *w,
                                 const uint8_t *packed, const uint8_t *sf, float x_decode_scale,
                                 const int32_t *ids, const float *weights, int64_t M,
                                 epm_dtype_t partial_dtype, void *partial);
/* 6 shared expert for the rank's own tokens, combined as the reference layer
 * does (moe_ref.h epm_moe_ref_layer step 5): y [m, H] fp32 becomes
 * float(bf16(y)) + float(bf16(shared(x))), the routed sum rounded to bf16 as
 * after a bf16 reduce-scatter, one add; the caller rounds the result to bf16.
 * shared(x) quantizes x with the shared expert's own input_scale. No-op when
 * the layer has no shared expert. */
epm_status_t epm_backend_shared_add(epm_backend_t *be, const epm_backend_weights_t *w,
                                    const epm_bf16_t *x, int64_t m, float *y);
/* Convert n fp32 values to bf16 (round to nearest even), and back (exact). */
epm_status_t epm_backend_f32_to_bf16(epm_backend_t *be, const float *src, int64_t n,
                                     epm_bf16_t *dst);
epm_status_t epm_backend_bf16_to_f32(epm_backend_t *be, const epm_bf16_t *src, int64_t n,
                                     float *dst);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_BACKEND_H */
