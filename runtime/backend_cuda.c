/* SPDX-License-Identifier: Apache-2.0 */
/* backend_cuda.c — the `cuda` backend: device memory on one GPU, every op
 * ordered on the backend's one stream (epm_backend_stream), which the NCCL
 * comm of the same step must also use. CUDA errors go through
 * epmoe/cuda_status.h: EPM_ERR_NOMEM when out of memory, else EPM_ERR_CUDA.
 *
 * Stage ops run the kernels of include/epmoe/kernels.h:
 *   route     epm_kernel_routing (router bias uploaded at load)
 *   quantize  epm_kernel_quantize_bf16, linear scales; the encode scale goes
 *             through a one-float device slot of the backend
 *   experts   epm_kernel_moe_forward over a workspace sized for the
 *             gathered capacity (a placed bank's replica table uploaded at
 *             load; plan of max_gathered rows; a smaller M uses
 *             a prefix of every piece). The workspace and the shared-expert
 *             scratch belong to the backend, grown at load, and are shared by
 *             every layer loaded on it: per-layer copies would multiply the
 *             largest buffers by the layer count.
 *   shared    the same kernels on a one-expert view (top-1, weight 1)
 * bf16 <-> fp32 and the shared combine run as kernels (kernels/elementwise.cu).
 * Weight on input and the dynamic-scale amax have no kernels yet: they stage
 * through pinned host buffers sized at load (m_r x H), which costs a sync
 * each.
 *
 * Kernel sets (epm_backend_config_t.kernels): v1 runs the reference kernels
 * on the canonical weights; v2 runs the warp routing and the fast expert
 * GEMMs on weights prepacked once at load (epm_moe2_prepack_expert, one
 * expert at a time through a host buffer) for this device's architecture
 * (sm_90: wgmma; sm_100: CUTLASS in an EPMOE_CUTLASS build); the shared
 * expert takes the same path as the routed ones. Creating a v2 backend on a
 * device without those kernels fails with EPM_ERR_NOT_SUPPORTED. */
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "epmoe/checked.h"
#include "epmoe/cuda_status.h"
#include "epmoe/kernels.h"

typedef struct {
  int device;
  epm_kernels_t kernels;
  int arch, sm_count; /* v2: 90 or 100, and the persistent grid */
  cudaStream_t stream;
  float *scale_dev; /* [1] encode scale read by the quantize kernel */
  /* Scratch of the expert stages, shared by every layer loaded on this
   * backend (ops run one at a time on the one stream), grown at load only:
   * routed workspace for the gathered capacity, shared-expert workspace and
   * buffers for the local capacity. */
  void *ws_dev, *sh_ws_dev;
  size_t ws_cap, sh_ws_cap;
  uint8_t *sh_packed, *sh_sf;
  int32_t *sh_ids;    /* zeros */
  float *sh_w;        /* ones */
  epm_bf16_t *sh_out; /* [sh_rows, sh_H] */
  int64_t sh_rows, sh_H;
  /* Pinned staging for the host-side elementwise ops, grown at load only. */
  float *host_f32;
  epm_bf16_t *host_bf16;
  int64_t host_elems;
} cuda_ctx_t;

typedef struct {
  uint8_t *gate_w, *gate_sf, *up_w, *up_sf, *down_w, *down_sf; /* v1: canonical */
  uint8_t *w13, *w2;                                           /* v2: prepacked */
  float *gate_up_scale_2, *down_scale_2;
} dev_bank_t;

typedef struct {
  struct epm_backend_weights hdr; /* first: backend.c reads it */
  dev_bank_t routed, shared;
  float *bias_dev;       /* [E] or NULL */
  /* Encode scales fp32(1/input_scale), fp32(1/shared_input_scale), uploaded
   * at load: no quantize copies a scale from the host per call. */
  float *enc_dev;
  /* A placed bank's replica table (layer.h slots), NULL when unplaced. */
  int32_t *rep_start_dev, *rep_local_dev;
  int has_shared;
} cuda_weights_t;

static cuda_ctx_t *ctx_of(const epm_backend_t *be) { return (cuda_ctx_t *)be->ctx; }

static void cuda_destroy(epm_backend_t *be) {
  cuda_ctx_t *c = ctx_of(be);
  if (!c) return;
  if (c->stream) {
    cudaStreamSynchronize(c->stream);
    cudaStreamDestroy(c->stream);
  }
  cudaFree(c->scale_dev);
  void *p[] = {c->ws_dev, c->sh_ws_dev, c->sh_packed, c->sh_sf, c->sh_ids, c->sh_w, c->sh_out};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
  cudaFreeHost(c->host_f32);
  cudaFreeHost(c->host_bf16);
  free(c);
  be->ctx = NULL;
}

static epm_status_t cuda_alloc(epm_backend_t *be, size_t bytes, void **out) {
  void *p = NULL;
  (void)be;
  EPM_TRY(epm_cuda_status(cudaMalloc(&p, bytes ? bytes : 256), "cudaMalloc(%zu bytes)", bytes));
  *out = p;
  return EPM_OK;
}

static void cuda_free(epm_backend_t *be, void *p) {
  (void)be;
  cudaFree(p);
}

static epm_status_t cuda_h2d(epm_backend_t *be, void *dst, const void *src, size_t bytes) {
  EPM_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx_of(be)->stream));
  return EPM_OK;
}

/* Host results are read right after, so this one waits. */
static epm_status_t cuda_d2h(epm_backend_t *be, void *dst, const void *src, size_t bytes) {
  EPM_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx_of(be)->stream));
  EPM_CUDA_TRY(cudaStreamSynchronize(ctx_of(be)->stream));
  return EPM_OK;
}

static epm_status_t cuda_copy_2d(epm_backend_t *be, void *dst, size_t dpitch, const void *src, size_t spitch,
                                 size_t width, size_t rows) {
  EPM_CUDA_TRY(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice,
                                 ctx_of(be)->stream));
  return EPM_OK;
}

static epm_status_t cuda_zero(epm_backend_t *be, void *dst, size_t bytes) {
  EPM_CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, ctx_of(be)->stream));
  return EPM_OK;
}

/* Thread-local capture mode: only this thread's calls are recorded, and an
 * unsafe call (a synchronize) made by it during the capture fails instead of
 * silently running. */
static epm_status_t cuda_capture_begin(epm_backend_t *be) {
  EPM_CUDA_TRY(cudaStreamBeginCapture(ctx_of(be)->stream, cudaStreamCaptureModeThreadLocal));
  return EPM_OK;
}

static epm_status_t cuda_capture_end(epm_backend_t *be, int keep, void **out) {
  cudaGraph_t g = NULL;
  cudaError_t e = cudaStreamEndCapture(ctx_of(be)->stream, &g);
  if (!keep || e != cudaSuccess) {
    if (g) cudaGraphDestroy(g);
    return keep ? epm_cuda_status(e, "cudaStreamEndCapture") : EPM_OK;
  }
  cudaGraphExec_t x = NULL;
  e = cudaGraphInstantiate(&x, g, 0);
  cudaGraphDestroy(g);
  EPM_CUDA_TRY(e);
  *out = x;
  return EPM_OK;
}

static epm_status_t cuda_graph_launch(epm_backend_t *be, void *graph) {
  EPM_CUDA_TRY(cudaGraphLaunch((cudaGraphExec_t)graph, ctx_of(be)->stream));
  return EPM_OK;
}

static void cuda_graph_destroy(epm_backend_t *be, void *graph) {
  (void)be;
  cudaGraphExecDestroy((cudaGraphExec_t)graph);
}

static epm_status_t cuda_mark_create(epm_backend_t *be, void **mark) {
  (void)be;
  cudaEvent_t ev = NULL;
  EPM_CUDA_TRY(cudaEventCreate(&ev));
  *mark = ev;
  return EPM_OK;
}

static void cuda_mark_destroy(epm_backend_t *be, void *mark) {
  (void)be;
  cudaEventDestroy((cudaEvent_t)mark);
}

static epm_status_t cuda_mark_record(epm_backend_t *be, void *mark) {
  EPM_CUDA_TRY(cudaEventRecord((cudaEvent_t)mark, ctx_of(be)->stream));
  return EPM_OK;
}

static epm_status_t cuda_mark_elapsed(epm_backend_t *be, void *a, void *b, double *seconds) {
  (void)be;
  float ms = 0.0f;
  EPM_CUDA_TRY(cudaEventSynchronize((cudaEvent_t)b));
  EPM_CUDA_TRY(cudaEventElapsedTime(&ms, (cudaEvent_t)a, (cudaEvent_t)b));
  *seconds = 1e-3 * (double)ms;
  return EPM_OK;
}

static epm_status_t cuda_sync(epm_backend_t *be) {
  EPM_CUDA_TRY(cudaStreamSynchronize(ctx_of(be)->stream));
  return EPM_OK;
}

/* ---- weights ----------------------------------------------------------- */

static epm_status_t upload(const void *src, size_t bytes, void **dst) {
  EPM_TRY(epm_cuda_status(cudaMalloc(dst, bytes ? bytes : 256), "cudaMalloc(%zu bytes) for weights", bytes));
  if (bytes) EPM_CUDA_TRY(cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice));
  return EPM_OK;
}

static void free_bank(dev_bank_t *d) {
  void *p[] = {d->gate_w, d->gate_sf, d->up_w,  d->up_sf,           d->down_w,
               d->down_sf, d->w13,    d->w2,    d->gate_up_scale_2, d->down_scale_2};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
  memset(d, 0, sizeof *d);
}

/* The canonical ModelOpt form goes to the device unchanged (kernels.h). */
static epm_status_t upload_bank(const epm_expert_bank_t *b, dev_bank_t *d) {
  size_t gw, gsf, dw, dsf, s2;
  const int64_t n = b->count, H = b->hidden, I = b->intermediate;
  if (epm_mul_size((size_t)(n * I), (size_t)(H / 2), &gw) || epm_mul_size((size_t)(n * I), (size_t)(H / 16), &gsf) ||
      epm_mul_size((size_t)(n * H), (size_t)(I / 2), &dw) || epm_mul_size((size_t)(n * H), (size_t)(I / 16), &dsf) ||
      epm_mul_size((size_t)n, sizeof(float), &s2))
    return epm_error(EPM_ERR_OVERFLOW, "expert bank of %lld x [H %lld, I %lld] overflows", (long long)n,
                     (long long)H, (long long)I);
  EPM_TRY(upload(b->gate_w, gw, (void **)&d->gate_w));
  EPM_TRY(upload(b->gate_sf, gsf, (void **)&d->gate_sf));
  EPM_TRY(upload(b->up_w, gw, (void **)&d->up_w));
  EPM_TRY(upload(b->up_sf, gsf, (void **)&d->up_sf));
  EPM_TRY(upload(b->down_w, dw, (void **)&d->down_w));
  EPM_TRY(upload(b->down_sf, dsf, (void **)&d->down_sf));
  EPM_TRY(upload(b->gate_up_scale_2, s2, (void **)&d->gate_up_scale_2));
  EPM_TRY(upload(b->down_scale_2, s2, (void **)&d->down_scale_2));
  return EPM_OK;
}

/* The v2 plan options of this backend (tiles from the token count). */
static epm_moe2_opts_t moe2_opts(const cuda_ctx_t *c) {
  epm_moe2_opts_t o = EPM_MOE2_OPTS_INIT;
  o.sm_count = c->sm_count;
  o.arch = c->arch;
  return o;
}

/* v2: prepack each expert on the host, copy it to its slot on the device. */
static epm_status_t upload_bank_v2(const cuda_ctx_t *c, const epm_expert_bank_t *b, dev_bank_t *d) {
  const int64_t n = b->count, H = b->hidden, I = b->intermediate;
  const epm_moe2_opts_t o = moe2_opts(c);
  epm_moe2_plan_t p;
  size_t w13_all, w2_all, s2;
  EPM_TRY(epm_moe2_plan(1, H, I, n, 1, 0, n, &o, &p));
  if (epm_mul_size((size_t)n, p.w13_expert_bytes, &w13_all) || epm_mul_size((size_t)n, p.w2_expert_bytes, &w2_all) ||
      epm_mul_size((size_t)n, sizeof(float), &s2))
    return epm_error(EPM_ERR_OVERFLOW, "prepacked expert bank of %lld x [H %lld, I %lld] overflows", (long long)n,
                     (long long)H, (long long)I);
  EPM_TRY(epm_cuda_status(cudaMalloc((void **)&d->w13, w13_all ? w13_all : 256), "cudaMalloc(%zu bytes) for weights", w13_all));
  EPM_TRY(epm_cuda_status(cudaMalloc((void **)&d->w2, w2_all ? w2_all : 256), "cudaMalloc(%zu bytes) for weights", w2_all));
  EPM_TRY(upload(b->gate_up_scale_2, s2, (void **)&d->gate_up_scale_2));
  EPM_TRY(upload(b->down_scale_2, s2, (void **)&d->down_scale_2));
  uint8_t *h13 = malloc(p.w13_expert_bytes), *h2 = malloc(p.w2_expert_bytes);
  epm_status_t st = (h13 && h2) ? EPM_OK : epm_error(EPM_ERR_NOMEM, "prepack staging of %zu + %zu bytes",
                                                      p.w13_expert_bytes, p.w2_expert_bytes);
  const size_t wi = (size_t)(I * (H / 2)), si = (size_t)(I * (H / 16)), wd = (size_t)(H * (I / 2)),
               sd = (size_t)(H * (I / 16));
  for (int64_t e = 0; st == EPM_OK && e < n; e++) {
    const size_t ue = (size_t)e;
    st = epm_moe2_prepack_expert(&p, b->gate_w + ue * wi, b->gate_sf + ue * si, b->up_w + ue * wi, b->up_sf + ue * si,
                                 b->down_w + ue * wd, b->down_sf + ue * sd, h13, h2);
    if (st == EPM_OK)
      st = epm_cuda_status(cudaMemcpy(d->w13 + ue * p.w13_expert_bytes, h13, p.w13_expert_bytes, cudaMemcpyHostToDevice),
                           "cudaMemcpy(prepacked gate/up of expert %lld)", (long long)e);
    if (st == EPM_OK)
      st = epm_cuda_status(cudaMemcpy(d->w2 + ue * p.w2_expert_bytes, h2, p.w2_expert_bytes, cudaMemcpyHostToDevice),
                           "cudaMemcpy(prepacked down of expert %lld)", (long long)e);
  }
  free(h13);
  free(h2);
  return st;
}

static epm_status_t upload_bank_any(const cuda_ctx_t *c, const epm_expert_bank_t *b, dev_bank_t *d) {
  return c->kernels == EPM_KERNELS_V2 ? upload_bank_v2(c, b, d) : upload_bank(b, d);
}

static void cuda_weights_free(epm_backend_t *be, epm_backend_weights_t *hw) {
  cuda_weights_t *w = (cuda_weights_t *)hw;
  (void)be;
  free_bank(&w->routed);
  free_bank(&w->shared);
  cudaFree(w->bias_dev);
  cudaFree(w->enc_dev);
  cudaFree(w->rep_start_dev);
  cudaFree(w->rep_local_dev);
  free(w);
}

/* Pinned host staging for max_local x H elements (the rank's own rows). */
static epm_status_t grow_host(cuda_ctx_t *c, int64_t elems) {
  if (elems <= c->host_elems) return EPM_OK;
  cudaFreeHost(c->host_f32);
  cudaFreeHost(c->host_bf16);
  c->host_f32 = NULL;
  c->host_bf16 = NULL;
  c->host_elems = 0;
  EPM_CUDA_TRY(cudaMallocHost((void **)&c->host_f32, (size_t)elems * sizeof(float)));
  EPM_CUDA_TRY(cudaMallocHost((void **)&c->host_bf16, (size_t)elems * sizeof(epm_bf16_t)));
  c->host_elems = elems;
  return EPM_OK;
}

/* Device scratch grows at load time only (never inside a step). */
static epm_status_t grow_dev(cuda_ctx_t *c, void **p, size_t *cap, size_t need, const char *what) {
  if (need <= *cap && *p) return EPM_OK;
  EPM_CUDA_TRY(cudaStreamSynchronize(c->stream));
  cudaFree(*p);
  *p = NULL;
  *cap = 0;
  cudaError_t e = cudaMalloc(p, need ? need : 256);
  if (e != cudaSuccess) {
    *p = NULL;
    return epm_cuda_status(e, "cudaMalloc(%zu bytes) for %s", need, what);
  }
  *cap = need;
  return EPM_OK;
}

/* Workspace bytes of `tokens` gathered rows over [off, off + el) with the
 * backend's kernel set. */
static epm_status_t ws_bytes(const cuda_ctx_t *c, int64_t tokens, int64_t H, int64_t I, int64_t E, int64_t k,
                             int64_t off, int64_t el, size_t *out) {
  if (c->kernels == EPM_KERNELS_V2) {
    const epm_moe2_opts_t o = moe2_opts(c);
    epm_moe2_plan_t p;
    EPM_TRY(epm_moe2_plan(tokens, H, I, E, k, off, el, &o, &p));
    *out = p.workspace_bytes;
  } else {
    epm_moe_plan_t p;
    EPM_TRY(epm_moe_plan(tokens, H, I, E, k, off, el, &p));
    *out = p.workspace_bytes;
  }
  return EPM_OK;
}

static epm_status_t load_shared(cuda_ctx_t *c, cuda_weights_t *w, const epm_layer_t *l, int64_t max_local) {
  const int64_t H = l->dims.hidden, Is = l->dims.shared_intermediate, rows = max_local > 0 ? max_local : 1;
  size_t wsb = 0;
  EPM_TRY(upload_bank_any(c, &l->shared, &w->shared));
  EPM_TRY(ws_bytes(c, rows, H, Is, 1, 1, 0, 1, &wsb));
  EPM_TRY(grow_dev(c, &c->sh_ws_dev, &c->sh_ws_cap, wsb, "shared expert workspace"));
  if (rows <= c->sh_rows && H <= c->sh_H) return EPM_OK;
  const int64_t R = rows > c->sh_rows ? rows : c->sh_rows, HH = H > c->sh_H ? H : c->sh_H;
  size_t cap = 0;
  c->sh_rows = c->sh_H = 0;
  EPM_TRY(grow_dev(c, (void **)&c->sh_packed, &cap, (size_t)(R * HH / 2), "shared expert input"));
  cap = 0;
  EPM_TRY(grow_dev(c, (void **)&c->sh_sf, &cap, (size_t)(R * HH / EPM_NVFP4_BLOCK), "shared expert scales"));
  cap = 0;
  EPM_TRY(grow_dev(c, (void **)&c->sh_out, &cap, (size_t)(R * HH) * sizeof(epm_bf16_t), "shared expert output"));
  cap = 0;
  EPM_TRY(grow_dev(c, (void **)&c->sh_ids, &cap, (size_t)R * sizeof(int32_t), "shared expert ids"));
  cap = 0;
  EPM_TRY(grow_dev(c, (void **)&c->sh_w, &cap, (size_t)R * sizeof(float), "shared expert weights"));
  EPM_CUDA_TRY(cudaMemset(c->sh_ids, 0, (size_t)R * sizeof(int32_t)));
  float *ones = malloc((size_t)R * sizeof *ones);
  if (!ones) return epm_error(EPM_ERR_NOMEM, "shared expert weights of %lld rows", (long long)R);
  for (int64_t i = 0; i < R; i++) ones[i] = 1.0f;
  cudaError_t e = cudaMemcpy(c->sh_w, ones, (size_t)R * sizeof *ones, cudaMemcpyHostToDevice);
  free(ones);
  EPM_TRY(epm_cuda_status(e, "cudaMemcpy(shared expert weights, %lld rows)", (long long)R));
  c->sh_rows = R;
  c->sh_H = HH;
  return EPM_OK;
}

/* v2 takes a contiguous slice of experts with one slot each (its kernels
 * have no replica table yet): *off = the first expert. A placement with
 * redundant experts or a scattered map needs --kernels v1. */
static epm_status_t v2_slice(const epm_layer_t *l, int64_t *off) {
  *off = l->expert_offset;
  if (l->slots.num_slots == 0) return EPM_OK;
  const int64_t n = l->experts.count;
  *off = n > 0 ? l->slots.expert[0] : 0;
  int ok = l->slots.num_slots == l->dims.num_experts;
  for (int64_t i = 1; ok && i < n; i++) ok = l->slots.expert[i] == *off + i;
  if (!ok)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "--kernels v2 takes a contiguous expert slice with one slot per expert; "
                     "this rank's placement (%lld slots for %lld experts, first expert %lld) needs --kernels v1",
                     (long long)l->slots.num_slots, (long long)l->dims.num_experts, (long long)*off);
  return EPM_OK;
}

/* The routed experts' plan: a placed bank maps ids through its replica
 * table, an unplaced one is the contiguous slice. */
static epm_status_t routed_plan(const epm_layer_t *l, int64_t M, epm_moe_plan_t *p) {
  const epm_model_dims_t *d = &l->dims;
  if (l->slots.num_slots > 0)
    return epm_moe_plan_placed(M, d->hidden, d->intermediate, d->num_experts, d->top_k, l->experts.count, p);
  return epm_moe_plan(M, d->hidden, d->intermediate, d->num_experts, d->top_k, l->expert_offset, l->experts.count,
                      p);
}

static epm_status_t cuda_weights_load(epm_backend_t *be, const epm_layer_t *l, int64_t max_local,
                                      int64_t max_gathered, epm_backend_weights_t **out) {
  cuda_ctx_t *c = ctx_of(be);
  const epm_model_dims_t *d = &l->dims;
  cuda_weights_t *w = calloc(1, sizeof *w);
  if (!w) return epm_error(EPM_ERR_NOMEM, "cuda weights handle");
  epm_status_t st;
  epm_moe_plan_t p;
  EPM_TRY_GOTO(epm_cuda_status(cudaSetDevice(c->device), "cudaSetDevice(%d)", c->device), st, fail);
  EPM_TRY_GOTO(upload_bank_any(c, &l->experts, &w->routed), st, fail);
  if (l->router_bias)
    EPM_TRY_GOTO(upload(l->router_bias, (size_t)d->num_experts * sizeof(float), (void **)&w->bias_dev), st, fail);
  if (l->slots.num_slots > 0) {
    EPM_TRY_GOTO(upload(l->slots.rep_start, (size_t)(d->num_experts + 1) * sizeof(int32_t),
                        (void **)&w->rep_start_dev), st, fail);
    EPM_TRY_GOTO(upload(l->slots.rep_local, (size_t)l->slots.num_slots * sizeof(int32_t),
                        (void **)&w->rep_local_dev), st, fail);
  }
  {
    const float enc[2] = {l->input_scale > 0.0f ? 1.0f / l->input_scale : 1.0f,
                          l->shared_input_scale > 0.0f ? 1.0f / l->shared_input_scale : 1.0f};
    EPM_TRY_GOTO(upload(enc, sizeof enc, (void **)&w->enc_dev), st, fail);
  }
  if (c->kernels == EPM_KERNELS_V2) {
    int64_t off = 0;
    size_t wsb = 0;
    EPM_TRY_GOTO(v2_slice(l, &off), st, fail);
    EPM_TRY_GOTO(ws_bytes(c, max_gathered > 0 ? max_gathered : 1, d->hidden, d->intermediate, d->num_experts,
                          d->top_k, off, l->experts.count, &wsb),
                 st, fail);
    EPM_TRY_GOTO(grow_dev(c, &c->ws_dev, &c->ws_cap, wsb, "expert workspace"), st, fail);
  } else {
    EPM_TRY_GOTO(routed_plan(l, max_gathered > 0 ? max_gathered : 1, &p), st, fail);
    EPM_TRY_GOTO(grow_dev(c, &c->ws_dev, &c->ws_cap, p.workspace_bytes, "expert workspace"), st, fail);
  }
  w->has_shared = d->shared_experts > 0 && l->shared.count > 0;
  if (w->has_shared) EPM_TRY_GOTO(load_shared(c, w, l, max_local), st, fail);
  EPM_TRY_GOTO(grow_host(c, (max_local > 0 ? max_local : 1) * d->hidden), st, fail);
  *out = &w->hdr;
  return EPM_OK;
fail:
  cuda_weights_free(be, &w->hdr);
  return st;
}

/* ---- stage ops --------------------------------------------------------- */

static epm_status_t cuda_route(epm_backend_t *be, const epm_backend_weights_t *hw, const float *logits, int64_t m,
                               int32_t *ids, float *weights) {
  const cuda_weights_t *w = (const cuda_weights_t *)hw;
  epm_routing_plan_t p;
  EPM_TRY(epm_routing_plan(&hw->layer->dims, m, &p));
  /* v2: one warp per token where the dims allow it (E <= 512, k <= 64) */
  if (ctx_of(be)->kernels == EPM_KERNELS_V2 && p.warp_ok)
    return epm_kernel_routing_warp(&p, logits, EPM_DTYPE_F32, w->bias_dev, ids, weights, NULL, ctx_of(be)->stream);
  return epm_kernel_routing(&p, logits, w->bias_dev, ids, weights, ctx_of(be)->stream);
}

/* The encode scale is read by the kernel from device memory: a layer's
 * static scales live there from load (enc_dev); a per-call scale (dynamic)
 * goes through the backend's one-float slot. */
static epm_status_t quantize_dev(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                 const float *G_dev, uint8_t *packed, uint8_t *sf) {
  epm_quantize_plan_t p;
  EPM_TRY(epm_quantize_plan(m, hidden, EPM_SF_LINEAR, &p));
  return epm_kernel_quantize_bf16(&p, x, G_dev, packed, sf, ctx_of(be)->stream);
}

static epm_status_t quantize_on(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden, float G,
                                uint8_t *packed, uint8_t *sf) {
  cuda_ctx_t *c = ctx_of(be);
  /* Pageable source: the copy is staged before cudaMemcpyAsync returns. */
  EPM_CUDA_TRY(cudaMemcpyAsync(c->scale_dev, &G, sizeof G, cudaMemcpyHostToDevice, c->stream));
  return quantize_dev(be, x, m, hidden, c->scale_dev, packed, sf);
}

static epm_status_t cuda_quantize_static(epm_backend_t *be, const epm_backend_weights_t *hw, const epm_bf16_t *x,
                                         int64_t m, uint8_t *packed, uint8_t *sf) {
  const cuda_weights_t *w = (const cuda_weights_t *)hw;
  return quantize_dev(be, x, m, hw->layer->dims.hidden, w->enc_dev, packed, sf);
}

/* On the host through the pinned staging (own rows only, small). */
static epm_status_t cuda_weight_on_input(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden,
                                         float *weights, epm_bf16_t *x_out) {
  cuda_ctx_t *c = ctx_of(be);
  const int64_t n = m * hidden;
  if (n > c->host_elems || m > c->host_elems)
    return epm_error(EPM_ERR_INVALID_ARG, "cuda weight_on_input of %lld values; staging holds %lld", (long long)n,
                     (long long)c->host_elems);
  EPM_CUDA_TRY(cudaMemcpyAsync(c->host_bf16, x, (size_t)n * sizeof(epm_bf16_t), cudaMemcpyDeviceToHost, c->stream));
  EPM_CUDA_TRY(cudaMemcpyAsync(c->host_f32, weights, (size_t)m * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  EPM_CUDA_TRY(cudaStreamSynchronize(c->stream));
  epm__host_weight_on_input(c->host_bf16, m, hidden, c->host_f32, c->host_bf16); /* in place: row by row */
  EPM_CUDA_TRY(cudaMemcpyAsync(x_out, c->host_bf16, (size_t)n * sizeof(epm_bf16_t), cudaMemcpyHostToDevice, c->stream));
  EPM_CUDA_TRY(cudaMemcpyAsync(weights, c->host_f32, (size_t)m * sizeof(float), cudaMemcpyHostToDevice, c->stream));
  EPM_CUDA_TRY(cudaStreamSynchronize(c->stream));
  return EPM_OK;
}

static epm_status_t cuda_quantize(epm_backend_t *be, const epm_bf16_t *x, int64_t m, int64_t hidden, float G,
                                  uint8_t *packed, uint8_t *sf) {
  return quantize_on(be, x, m, hidden, G, packed, sf);
}

/* v2: tokens M over the contiguous experts [off, off + el) of a bank. */
static epm_status_t run_moe2(epm_backend_t *be, const dev_bank_t *bank, int64_t M, int64_t H, int64_t I, int64_t E,
                             int64_t k, int64_t off, int64_t el, void *ws_dev, float a1, float down_input_scale,
                             const uint8_t *packed, const uint8_t *sf, const int32_t *ids, const float *weights,
                             int out_f32, void *out) {
  const cuda_ctx_t *c = ctx_of(be);
  const epm_moe_inputs_dev_t in = {.hidden_fp4 = packed, .hidden_sf = sf, .ids = ids, .weights = weights};
  const epm_moe2_opts_t o = moe2_opts(c);
  epm_moe2_plan_t p;
  epm_moe2_workspace_t ws;
  EPM_TRY(epm_moe2_plan(M, H, I, E, k, off, el, &o, &p));
  EPM_TRY(epm_moe2_workspace_carve(&p, ws_dev, &ws));
  const epm_moe2_weights_dev_t wd = {.w13 = bank->w13, .w2 = bank->w2, .gate_up_scale_2 = bank->gate_up_scale_2,
                                     .down_scale_2 = bank->down_scale_2, .input_scale = a1,
                                     .down_input_scale = down_input_scale};
  return epm_kernel_moe2_forward(&p, &wd, &in, NULL, &ws, out_f32, out, c->stream);
}

static epm_status_t run_moe(epm_backend_t *be, const cuda_weights_t *w, const dev_bank_t *bank,
                            const epm_moe_plan_t *p, void *ws_dev, float a1, float down_input_scale,
                            const uint8_t *packed, const uint8_t *sf, const int32_t *ids, const float *weights,
                            int out_f32, void *out) {
  epm_moe_workspace_t ws;
  EPM_TRY(epm_moe_workspace_carve(p, ws_dev, &ws));
  const epm_moe_weights_dev_t wd = {
      .gate_w = bank->gate_w, .gate_sf = bank->gate_sf, .up_w = bank->up_w, .up_sf = bank->up_sf,
      .down_w = bank->down_w, .down_sf = bank->down_sf, .gate_up_scale_2 = bank->gate_up_scale_2,
      .down_scale_2 = bank->down_scale_2, .input_scale = a1, .down_input_scale = down_input_scale};
  const epm_moe_inputs_dev_t in = {.hidden_fp4 = packed, .hidden_sf = sf, .ids = ids, .weights = weights,
                                   .rep_start = p->placed ? w->rep_start_dev : NULL,
                                   .rep_local = p->placed ? w->rep_local_dev : NULL};
  return epm_kernel_moe_forward(p, &wd, &in, &ws, out_f32, out, ctx_of(be)->stream);
}

static epm_status_t cuda_experts(epm_backend_t *be, const epm_backend_weights_t *hw, const uint8_t *packed,
                                 const uint8_t *sf, float a1, const int32_t *ids, const float *weights, int64_t M,
                                 epm_dtype_t dtype, void *partial) {
  const cuda_weights_t *w = (const cuda_weights_t *)hw;
  const epm_layer_t *l = hw->layer;
  if (ctx_of(be)->kernels == EPM_KERNELS_V2) {
    int64_t off = 0;
    EPM_TRY(v2_slice(l, &off));
    return run_moe2(be, &w->routed, M, l->dims.hidden, l->dims.intermediate, l->dims.num_experts, l->dims.top_k,
                    off, l->experts.count, ctx_of(be)->ws_dev, a1, l->down_input_scale, packed, sf, ids, weights,
                    dtype == EPM_DTYPE_F32, partial);
  }
  epm_moe_plan_t p;
  EPM_TRY(routed_plan(l, M, &p));
  return run_moe(be, w, &w->routed, &p, ctx_of(be)->ws_dev, a1, l->down_input_scale, packed, sf, ids, weights,
                 dtype == EPM_DTYPE_F32, partial);
}

/* y (device fp32 [m, H]) = float(bf16(y)) + float(shared(x)), all on the
 * stream: no host round trip, no sync (stage_end syncs). */
static epm_status_t cuda_shared_add(epm_backend_t *be, const epm_backend_weights_t *hw, const epm_bf16_t *x,
                                    int64_t m, float *y) {
  const cuda_weights_t *w = (const cuda_weights_t *)hw;
  const epm_layer_t *l = hw->layer;
  cuda_ctx_t *c = ctx_of(be);
  const int64_t H = l->dims.hidden;
  if (!w->has_shared) return EPM_OK;
  EPM_TRY(quantize_dev(be, x, m, H, w->enc_dev + 1, c->sh_packed, c->sh_sf));
  if (c->kernels == EPM_KERNELS_V2) {
    EPM_TRY(run_moe2(be, &w->shared, m, H, l->dims.shared_intermediate, 1, 1, 0, 1, c->sh_ws_dev,
                     l->shared_input_scale, l->shared_down_input_scale, c->sh_packed, c->sh_sf, c->sh_ids, c->sh_w, 0,
                     c->sh_out));
  } else {
    epm_moe_plan_t p;
    EPM_TRY(epm_moe_plan(m, H, l->dims.shared_intermediate, 1, 1, 0, 1, &p));
    EPM_TRY(run_moe(be, w, &w->shared, &p, c->sh_ws_dev, l->shared_input_scale, l->shared_down_input_scale,
                    c->sh_packed, c->sh_sf, c->sh_ids, c->sh_w, 0, c->sh_out));
  }
  return epm_kernel_shared_combine(y, c->sh_out, m * H, c->stream);
}

static epm_status_t need_host(const cuda_ctx_t *c, int64_t n, const char *op) {
  if (n > c->host_elems)
    return epm_error(EPM_ERR_INVALID_ARG, "cuda %s of %lld values; staging holds %lld (rows x H of the load)", op,
                     (long long)n, (long long)c->host_elems);
  return EPM_OK;
}

/* Dynamic scale: max |x| of the rank's own rows, on the host staging. */
static epm_status_t cuda_amax(epm_backend_t *be, const epm_bf16_t *x, int64_t n, float *amax) {
  cuda_ctx_t *c = ctx_of(be);
  EPM_TRY(need_host(c, n, "amax"));
  EPM_CUDA_TRY(cudaMemcpyAsync(c->host_bf16, x, (size_t)n * sizeof(epm_bf16_t), cudaMemcpyDeviceToHost, c->stream));
  EPM_CUDA_TRY(cudaStreamSynchronize(c->stream));
  *amax = epm_amax_bf16(c->host_bf16, n);
  return EPM_OK;
}

static epm_status_t cuda_f32_to_bf16(epm_backend_t *be, const float *src, int64_t n, epm_bf16_t *dst) {
  return epm_kernel_f32_to_bf16(src, n, dst, ctx_of(be)->stream);
}

static epm_status_t cuda_bf16_to_f32(epm_backend_t *be, const epm_bf16_t *src, int64_t n, float *dst) {
  return epm_kernel_bf16_to_f32(src, n, dst, ctx_of(be)->stream);
}

static void *cuda_stream(const epm_backend_t *be) { return ctx_of(be)->stream; }

static const epm__backend_ops_t cuda_ops = {
    .copy_2d = cuda_copy_2d,
    .zero = cuda_zero,
    .capture_begin = cuda_capture_begin,
    .capture_end = cuda_capture_end,
    .graph_launch = cuda_graph_launch,
    .graph_destroy = cuda_graph_destroy,
    .quantize_static = cuda_quantize_static,
    .mark_create = cuda_mark_create,
    .mark_destroy = cuda_mark_destroy,
    .mark_record = cuda_mark_record,
    .mark_elapsed = cuda_mark_elapsed,
    .name = "cuda",
    .is_device = 1,
    .stream = cuda_stream,
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .copy_h2d = cuda_h2d,
    .copy_d2h = cuda_d2h,
    .sync = cuda_sync,
    .weights_load = cuda_weights_load,
    .weights_free = cuda_weights_free,
    .route = cuda_route,
    .weight_on_input = cuda_weight_on_input,
    .amax = cuda_amax,
    .quantize = cuda_quantize,
    .experts = cuda_experts,
    .shared_add = cuda_shared_add,
    .f32_to_bf16 = cuda_f32_to_bf16,
    .bf16_to_f32 = cuda_bf16_to_f32,
};

epm_status_t epm__backend_cuda_init(epm_backend_t *be) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { /* no driver or no device: nothing to run on, not a device fault */
    (void)epm_cuda_status(e, "cudaGetDeviceCount"); /* records CUDA's reason, resets the error */
    return epm_error_wrap(EPM_ERR_NOT_SUPPORTED, "backend 'cuda': no CUDA device visible");
  }
  if (n == 0) return epm_error(EPM_ERR_NOT_SUPPORTED, "backend 'cuda': no CUDA device visible (0 devices)");
  if (be->cfg.device < 0 || be->cfg.device >= n)
    return epm_error(EPM_ERR_INVALID_ARG, "backend 'cuda': device %d is outside [0, %d)", be->cfg.device, n);
  EPM_CUDA_TRY(cudaSetDevice(be->cfg.device));
  /* v2 needs its kernels for this device's architecture in this build. */
  int major = 0, minor = 0, sms = 0, arch = 0;
  EPM_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, be->cfg.device));
  EPM_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, be->cfg.device));
  EPM_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, be->cfg.device));
  if (major == 9 && minor == 0) arch = 90;
  if (major == 10 && minor == 0) arch = 100;
  if (be->cfg.kernels == EPM_KERNELS_V2 && (arch == 0 || !epm_moe2_arch_built(arch)))
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "backend 'cuda': --kernels v2 needs sm_90 (or sm_100 in an EPMOE_CUTLASS build); device %d is "
                     "compute capability %d.%d%s",
                     be->cfg.device, major, minor, arch == 100 ? " and this build has no CUTLASS" : "");
  cuda_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return epm_error(EPM_ERR_NOMEM, "cuda backend context");
  c->device = be->cfg.device;
  c->kernels = be->cfg.kernels;
  c->arch = arch;
  c->sm_count = sms > 0 ? sms : 1;
  be->ops = &cuda_ops;
  be->ctx = c;
  e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaMalloc((void **)&c->scale_dev, sizeof(float));
  if (e != cudaSuccess) {
    epm_status_t st = epm_cuda_status(e, "cuda backend init on device %d (stream, scale slot)", c->device);
    cuda_destroy(be);
    return st;
  }
  return EPM_OK;
}
