/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/moe_ref.h — the CPU reference MoE layer (the oracle; spec/nvfp4-moe.md §3.3–§3.4).
 *
 * Every fast path (CUDA kernels, the EP step over N ranks, the daemon) is
 * judged against these functions. They are deterministic: the result does not
 * depend on the thread count (each output element is computed by one thread in
 * a fixed order).
 *
 * Numerics, per local (token t, slot j): e = ids[t,j] in the layer's slice
 * [expert_offset, expert_offset + count), or for a placed layer a pair its
 * bank serves under the placement's replica rule (token index t = the row of
 * the call, epm_layer_local_slot); a1 = the input decode scale,
 * w13s2 / w2s2 = the expert's weight_scale_2:
 *   1 a   = e2m1(x) * e4m3(sf_x)                         exact in fp32 (no global scale yet)
 *   2 W   = e2m1(w) * e4m3(sf_w)                         gate, up, down tiles, exact in fp32
 *   3 x_g = sum_h a[h]*Wgate[i,h], x_u = same with Wup    fp32 accumulation, order below
 *   4 alpha1 = fp32(a1 * w13s2); gate = fp32(x_g*alpha1); up = fp32(x_u*alpha1)
 *   5 act = silu(gate) * up, silu(g) = g / (1 + expf(-g))  fp32
 *   6 h   = NVFP4(bf16(act), G_mid)                       codec recipe (nvfp4.h): round to bf16,
 *                                                         E4M3 block scale, E2M1 codes, RNE
 *   7 x_d = sum_i e2m1(h)*e4m3(sf_h) * Wdown[n,i]         fp32 accumulation
 *   8 y   = fp32(x_d * alpha2), alpha2 = fp32(d_mid * w2s2)
 *   9 y   = bf16(y)                                       gemm2 output is bf16 in the kernels
 *                                                         (skipped with expert_out_fp32)
 *  10 out[t] = sum over j of the token's LOCAL slots, in stored slot order, of
 *              wk * y(t,j), fp32 accumulation starting from +0, wk = bf16(w[t,j])
 *              (fp32 w with weights_fp32); non-local slots are skipped, so they
 *              contribute exactly 0 and EP partials sum to the full output.
 *  11 out_bf16[t] = bf16(out[t]) (RNE)
 * G_mid / d_mid: by default G_mid = fp32(1 / layer->down_input_scale) and
 * d_mid = layer->down_input_scale (the values vLLM hands the kernel); with
 * opts.mid_global_scale > 0, G_mid is that value and d_mid = fp32(1 / G_mid)
 * (FlashInfer's test form, c_global_sf).
 * Accumulation order of steps 3 and 7: eight fp32 partial sums, partial p
 * holding elements h = p, p+8, p+16, ... in increasing h, then combined as
 * ((p0+p4)+(p2+p6)) + ((p1+p5)+(p3+p7)). The products are exact, so only the
 * sums round. (A kernel with another order differs by fp32 rounding, which can
 * move a step-6 code by one; compare with a tolerance.)
 * Mathematically this is FlashInfer's run_moe_dequant (dequantize fully, fp32
 * matmuls) with the alphas applied after the sum as in the kernels (§3.4).
 *
 * Thread count: opts->threads > 0, else $EPMOE_THREADS, else every core (OpenMP).
 * Built without OpenMP the functions run single-threaded.
 */
#ifndef EPMOE_MOE_REF_H
#define EPMOE_MOE_REF_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/layer.h"
#include "epmoe/nvfp4.h"
#include "epmoe/routing.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int threads;            /* > 0 use exactly this many; 0 = $EPMOE_THREADS or all cores */
  int weights_fp32;       /* 0: finalize with bf16-rounded routing weights (kernels); 1: fp32 as given */
  int expert_out_fp32;    /* 0: round each expert output to bf16 before finalize (kernels); 1: keep fp32 */
  float mid_global_scale; /* 0: G_mid = 1/down_input_scale; > 0: this G_mid (see above) */
  int include_shared;     /* layer function: 1 adds the shared expert (if the layer has one) */
  int weight_on_input;    /* layer function: -1 auto (on for llama4), 0 weights in finalize,
                             1 scale the bf16 input by bf16(w) before quantizing and finalize
                             with weight 1 (vLLM apply_router_weight_on_input; needs top_k 1) */
} epm_moe_ref_opts_t;

#define EPM_MOE_REF_OPTS_INIT {0, 0, 0, 0.0f, 1, -1}

/* Wall time per stage in seconds. Functions overwrite the fields they time. */
typedef struct {
  double router_s;   /* router logits (layer function, when logits == NULL) */
  double route_s;    /* top-k selection */
  double quantize_s; /* bf16 hidden -> NVFP4 (layer function) */
  double gather_s;   /* per-expert token lists and activation rows */
  double gemm1_s;    /* weight tile decode + gate/up GEMM + SwiGLU */
  double requant_s;  /* bf16 round + NVFP4 re-quantize + decode of the intermediate */
  double gemm2_s;    /* weight tile decode + down GEMM + alpha (+ bf16) */
  double finalize_s; /* weighted sum over slots + bf16 output */
  double shared_s;   /* shared expert, all of its stages */
  double total_s;
} epm_moe_ref_timing_t;

/* The thread count a call with opts.threads == requested would use (>= 1). */
int epm_moe_ref_threads(int requested);

/* Routed experts of one layer slice on already-routed, already-quantized tokens
 * (what an EP rank sees after the all-gather).
 *   layer           [in] experts [expert_offset, expert_offset + count) of E = layer->dims.num_experts,
 *                   or a placed bank (layer.h): row t of the call is the gathered token index
 *   x_fp4, x_sf     [in] [m, H/2] packed E2M1 and [m, H/16] linear E4M3 scales
 *   x_decode_scale  [in] a1 > 0, finite: the decode scale x was quantized with (layer->input_scale)
 *   m               tokens, >= 0 (0 writes nothing and succeeds)
 *   top_k           1 .. E;  ids [m, top_k] int32 in [0, E);  weights [m, top_k] fp32, finite
 *   opts            NULL = EPM_MOE_REF_OPTS_INIT
 *   out_f32         [out] [m, H] fp32 sums of step 10, or NULL
 *   out_bf16        [out] [m, H] bf16 of step 11, or NULL
 *   timing          [out] or NULL
 * Errors name the offending token/slot/value. Allocates scratch proportional
 * to the number of local slots x max(H, I). */
epm_status_t epm_moe_ref_experts(const epm_layer_t *layer, const uint8_t *x_fp4, const uint8_t *x_sf,
                                 float x_decode_scale, int64_t m, int64_t top_k, const int32_t *ids,
                                 const float *weights, const epm_moe_ref_opts_t *opts, float *out_f32,
                                 epm_bf16_t *out_bf16, epm_moe_ref_timing_t *timing);

/* Router logits [m, E] fp32 = hidden [m, H] (bf16) x router_w^T, fp32
 * accumulation in the order of the GEMMs above. threads as in opts.threads. */
epm_status_t epm_moe_ref_router_logits(const epm_layer_t *layer, const epm_bf16_t *hidden, int64_t m,
                                       int threads, float *logits);

/* The whole layer for the tokens of one process (EP = 1 when the layer holds
 * all E experts; a partial sum otherwise):
 *   1 logits = given [m, E] fp32, or epm_moe_ref_router_logits() when NULL
 *   2 route with epm_routing_config_from_dims(&layer->dims) and layer->router_bias
 *   3 quantize hidden to NVFP4 (linear scales) with G_in = fp32(1/layer->input_scale)
 *     (weight_on_input: hidden row first scaled by bf16(w) and rounded to bf16)
 *   4 epm_moe_ref_experts() on the slice, routed output r = step 10 in fp32
 *   5 shared expert (opts.include_shared and layer->shared.count == 1): its own
 *     quantization with 1/shared_input_scale, steps 1-9 with weight 1 and
 *     G_mid = 1/shared_down_input_scale, s = its output;
 *     out = bf16(float(bf16(r)) + float(bf16(s)))  — the routed partial is
 *     bf16 after the reduce-scatter, the shared output is bf16, one add.
 *     Without a shared expert out = bf16(r).
 *   ids/weights [out] [m, top_k] the routing result, or NULL.
 *   out_f32 [out] fp32 before the final bf16 rounding, or NULL. */
epm_status_t epm_moe_ref_layer(const epm_layer_t *layer, const epm_bf16_t *hidden, const float *logits,
                               int64_t m, const epm_moe_ref_opts_t *opts, int32_t *ids, float *weights,
                               float *out_f32, epm_bf16_t *out_bf16, epm_moe_ref_timing_t *timing);

/* Checksum of a bf16 tensor, printed by `epmoectl ref` and the engine checks:
 * fnv1a64 over the raw little-endian bf16 bytes (offset basis
 * 0xcbf29ce484222325, prime 0x100000001b3), the fp64 sum of the values and
 * max |value|. NaN values make sum and absmax NaN. */
typedef struct {
  uint64_t fnv1a64;
  double sum;
  double absmax;
} epm_moe_checksum_t;

void epm_moe_checksum_bf16(const epm_bf16_t *x, int64_t n, epm_moe_checksum_t *out);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_MOE_REF_H */
