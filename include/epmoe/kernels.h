/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/kernels.h — the CUDA kernels of one MoE step, as plain-C launchers.
 *
 * Every launcher has two halves:
 *   epm_<op>_plan()     pure C (kernels/<op>_plan.c, built and tested without
 *                       CUDA): validates shapes, does all size math in
 *                       int64_t/size_t with overflow checks, picks the grid
 *                       (x <= 2^31-1, y <= 65535; large work is grid-strided)
 *                       and reports every device buffer size.
 *   epm_kernel_<op>()   thin launch (kernels/<op>.cu) that only reads the
 *                       plan. Without CUDA they return EPM_ERR_NOT_SUPPORTED.
 * `stream` is a cudaStream_t passed as void* (NULL = legacy default stream).
 * All pointers named *_dev are device pointers. Launchers never synchronize
 * and never read device memory on the host, so the whole step can be
 * captured in a CUDA graph. Launch errors map to EPM_ERR_CUDA with the CUDA
 * error string.
 *
 * Alignment (checked; EPM_ERR_INVALID_ARG names the pointer): bf16 inputs
 * and outputs and the MoE output 16 bytes, packed NVFP4 8 bytes, the MoE
 * workspace 256 bytes. cudaMalloc'ed buffers satisfy all of these; so does
 * a row offset into them when the row size is a multiple of the alignment
 * (true for any H, I multiple of 16).
 *
 * Layouts (row-major, element counts int64):
 *   bf16 activations  x [M, H]                     uint16 bf16 bits
 *   NVFP4 tensor      packed [rows, cols/2] + sf, as include/epmoe/nvfp4.h
 *                     (element 2j in the low nibble; E4M3 scales linear
 *                     [rows, cols/16] or 128x4 swizzled)
 *   routing           ids int32 [M, k], weights fp32 [M, k], in the order of
 *                     the CPU reference (include/epmoe/routing.h)
 *   expert weights    the canonical ModelOpt form of include/epmoe/layer.h,
 *                     copied to the device unchanged: gate/up [E_l, I, H/2]
 *                     + linear scales [E_l, I, H/16], down [E_l, H, I/2] +
 *                     [E_l, H, I/16], decode scales [E_l] fp32 each.
 */
#ifndef EPMOE_KERNELS_H
#define EPMOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/dtype.h"
#include "epmoe/model.h"
#include "epmoe/nvfp4.h"
#include "epmoe/plan.h" /* EPM_CUDA_GRID_*_MAX, epm_plan_local_rows_bound */
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif


/* ---- NVFP4 quantize: bf16 [rows, cols] -> packed + E4M3 scales ----------
 * Bit-identical to epm_nvfp4_quantize_bf16 (exact division, RNE, -0 -> 0x0).
 * One thread per 16-element block, grid-strided. The encode scale G is read
 * from device memory (global_scale_dev, one float). For the 128x4 layout the
 * launcher zeroes the padded scale buffer first. */
typedef struct {
  int64_t rows, cols;
  epm_sf_layout_t layout;
  int64_t blocks;        /* rows * cols / 16 */
  size_t x_bytes;        /* rows * cols * 2 */
  size_t packed_bytes;   /* rows * cols / 2 */
  size_t sf_bytes;       /* linear rows*cols/16, swizzled pad128(rows)*pad4(cols/16) */
  uint32_t grid, block;
} epm_quantize_plan_t;

epm_status_t epm_quantize_plan(int64_t rows, int64_t cols, epm_sf_layout_t layout,
                               epm_quantize_plan_t *out);
epm_status_t epm_kernel_quantize_bf16(const epm_quantize_plan_t *p, const void *x_dev,
                                      const float *global_scale_dev, void *packed_dev,
                                      void *sf_dev, void *stream);

/* ---- Routing: logits fp32 [M, E] -> ids int32 [M, k] + weights fp32 -----
 * epm_kernel_routing (v1): one thread per token running the same per-token
 * code as the CPU reference (kernels/routing_core.h); bias fp32 [E] or NULL.
 * epm_kernel_routing_warp (v2): one warp per token for every method
 * (kernels/routing_warp_body.h, the same text the CPU emulation runs): lane l
 * holds experts [l*epl, l*epl + epl), sigmoid once per expert, group top-2 and
 * top-k by warp reductions over 64-bit (score, index) keys, the reference's
 * double sums in the reference's order; fp32 or bf16 logits (bf16 widened
 * exactly, as epm_route_bf16). Needs E <= 512 and top_k <= 64
 * (plan.warp_ok). Optionally counts, over this call's tokens, the pairs of
 * every expert and the tokens bound for every rank (a token with several
 * experts on one rank counts once), zeroing them first: the dispatch header
 * and the permute need no histogram pass. */
typedef struct {
  int64_t tokens, num_experts, top_k, n_group, topk_group;
  float routed_scaling_factor;
  epm_routing_method_t method;
  size_t logits_bytes, ids_bytes, weights_bytes;
  uint32_t grid, block;
  int warp_ok;               /* the warp kernel takes these dims */
  int32_t experts_per_lane;  /* ceil(E / 32) */
  uint32_t warp_grid, warp_block; /* 4 tokens (warps) per block, grid-strided */
} epm_routing_plan_t;

typedef struct {
  int32_t *expert_counts; /* [E] pairs per global expert, or NULL */
  int32_t *rank_tokens;   /* [ep_size] tokens with >= 1 expert on rank r, or NULL */
  int64_t ep_size;        /* ranks own E / ep_size consecutive experts each */
} epm_routing_counts_t;

epm_status_t epm_routing_plan(const epm_model_dims_t *dims, int64_t tokens,
                              epm_routing_plan_t *out);
epm_status_t epm_kernel_routing(const epm_routing_plan_t *p, const float *logits_dev,
                                const float *bias_dev, int32_t *ids_dev, float *weights_dev,
                                void *stream);
/* logits_dev [M, E] of logits_dtype (EPM_DTYPE_F32 or EPM_DTYPE_BF16); counts
 * may be NULL. */
epm_status_t epm_kernel_routing_warp(const epm_routing_plan_t *p, const void *logits_dev,
                                     epm_dtype_t logits_dtype, const float *bias_dev, int32_t *ids_dev,
                                     float *weights_dev, const epm_routing_counts_t *counts,
                                     void *stream);

/* ---- MoE experts: permute -> GEMM1+SwiGLU+requant -> GEMM2 -> finalize ---
 * Inputs: the gathered NVFP4 tokens (hidden_fp4 [M, H/2], linear scales
 * [M, H/16], decode scale input_scale), ids/weights [M, k]. Only the pairs
 * served by this rank's E_l bank slots contribute: with a contiguous plan
 * (epm_moe_plan) ids in [expert_offset, expert_offset + E_l), slot id -
 * expert_offset; with a placed plan (epm_moe_plan_placed) the pair (t, j) goes
 * to bank slot epm_moe_local_slot(rep_start, rep_local, ids[t, j], t) when it
 * is >= 0 (the placement's replica rule, epmoe/placement.h). A token whose
 * experts are all served elsewhere gets exact 0 (so EP partials sum).
 *
 * permute   per-local-expert histogram, prefix sum padded to EPM_MOE_TILE_M
 *           (on the device; no host read of counts), pair -> row map
 *           (-1 = non-local) and row -> token map (-1 = padding).
 * gemm1     rows of expert e: a = dequant(hidden[token]) (E2M1 x E4M3 exact
 *           in bf16), gate = (a . gate_e) * input_scale * gate_up_scale_2[e],
 *           up likewise (tensor-core MMA, fp32 accumulate);
 *           act = silu(gate) * up, rounded to bf16, then NVFP4-quantized
 *           with encode scale 1/down_input_scale into the intermediate
 *           [rows, I/2] + linear scales [rows, I/16].
 * gemm2     y = (h . down_e) * down_input_scale * down_scale_2[e], stored
 *           bf16 [rows, H].
 * finalize  out[t, :] = sum over slots j = 0..k-1 in stored order with a
 *           local expert of bf16(w[t, j]) * y[row(t, j), :], fp32
 *           accumulate; out is bf16 or fp32 (EP partial for the reduce). */
#define EPM_MOE_TILE_M 64

#if defined(__CUDACC__)
#define EPM_MOE_HD __host__ __device__
#else
#define EPM_MOE_HD
#endif

/* The replica rule of a placement, on one rank: the pair (gathered token t,
 * logical expert e) is served by replica t mod n_e of e's n_e replicas
 * (rep_start[e] .. rep_start[e + 1]); rep_local gives that replica's bank
 * slot on this rank, or -1 when it lives on another rank. The one definition
 * the kernels, the CPU reference and epm_placement_slot() share. */
static inline EPM_MOE_HD int64_t epm_moe_local_slot(const int32_t *rep_start, const int32_t *rep_local, int64_t e,
                                                    int64_t token) {
  const int64_t b = rep_start[e], n = (int64_t)rep_start[e + 1] - b;
  return rep_local[b + token % n];
}

typedef struct {
  int64_t tokens, hidden, inter, top_k, num_experts, expert_offset, local_experts;
  int placed;             /* 1: ids map to bank slots through the inputs' rep_start/rep_local */
  int64_t pairs;          /* tokens * top_k */
  int64_t max_rows;       /* worst case padded rows = epm_plan_t.permuted_rows_max at tile TILE_M */
  int64_t max_m_tiles;    /* max_rows / TILE_M */
  int64_t n_tiles_gemm1;  /* ceil(I / 64) */
  int64_t n_tiles_gemm2;  /* ceil(H / 128) */
  /* workspace: one device allocation carved by epm_moe_workspace_carve */
  size_t counts_bytes;    /* int32 [E_l] histogram + int32 [E_l] cursors */
  size_t offsets_bytes;   /* int64 [E_l + 1] padded prefix sum (last = rows used) */
  size_t pair_row_bytes;  /* int64 [pairs] */
  size_t row_token_bytes; /* int64 [max_rows] */
  size_t inter_packed_bytes, inter_sf_bytes; /* [max_rows, I/2], [max_rows, I/16] */
  size_t y_bytes;         /* bf16 [max_rows, H] */
  size_t workspace_bytes; /* all of the above, each 256-byte aligned */
  size_t out_bf16_bytes, out_f32_bytes; /* [M, H] */
  uint32_t grid_pairs, grid_tiles, grid_finalize, block;
} epm_moe_plan_t;

typedef struct {
  int32_t *counts, *cursors;
  int64_t *offsets, *pair_row, *row_token;
  uint8_t *inter_packed, *inter_sf;
  uint16_t *y;
} epm_moe_workspace_t;

typedef struct {
  const uint8_t *gate_w, *gate_sf, *up_w, *up_sf, *down_w, *down_sf;
  const float *gate_up_scale_2, *down_scale_2; /* [E_l] */
  float input_scale;      /* decode scale of hidden_fp4 (layer input_scale) */
  float down_input_scale; /* decode scale of the intermediate */
} epm_moe_weights_dev_t;

typedef struct {
  const uint8_t *hidden_fp4, *hidden_sf; /* [M, H/2], linear [M, H/16] */
  const int32_t *ids;                    /* [M, k] global (logical) expert ids */
  const float *weights;                  /* [M, k] fp32 (rounded to bf16 in finalize) */
  /* Placed plans only (NULL otherwise): the rank's replica table, device
   * memory: rep_start [num_experts + 1], rep_local [rep_start[num_experts]]. */
  const int32_t *rep_start, *rep_local;
} epm_moe_inputs_dev_t;

/* Worst-case local pairs, GEMM M-tiles and padded rows for `tokens` gathered
 * tokens (the bound epm_plan_t and epm_moe_plan both size with; also for
 * callers that size a chunk). */
epm_status_t epm_plan_local_rows_bound(int64_t tokens, int64_t top_k, int64_t local_experts,
                                       int64_t tile, int64_t *pairs, int64_t *m_tiles,
                                       int64_t *padded_rows);

/* Plan for M gathered tokens and the local slice [expert_offset, +E_l). */
epm_status_t epm_moe_plan(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts,
                          int64_t top_k, int64_t expert_offset, int64_t local_experts,
                          epm_moe_plan_t *out);
/* Plan for M gathered tokens and local_slots bank slots of a placement:
 * ids are logical experts in [0, num_experts) mapped to bank slots through
 * the inputs' rep_start/rep_local (a rank may hold any set of experts, and
 * replicas). Sizes and grids as epm_moe_plan with E_l = local_slots. */
epm_status_t epm_moe_plan_placed(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts,
                                 int64_t top_k, int64_t local_slots, epm_moe_plan_t *out);
/* Point the workspace pieces into one device allocation of workspace_bytes. */
epm_status_t epm_moe_workspace_carve(const epm_moe_plan_t *p, void *base_dev,
                                     epm_moe_workspace_t *ws);

epm_status_t epm_kernel_moe_permute(const epm_moe_plan_t *p, const epm_moe_inputs_dev_t *in,
                                    const epm_moe_workspace_t *ws, void *stream);
epm_status_t epm_kernel_moe_gemm1(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                  const epm_moe_inputs_dev_t *in, const epm_moe_workspace_t *ws,
                                  void *stream);
epm_status_t epm_kernel_moe_gemm2(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                  const epm_moe_workspace_t *ws, void *stream);
/* out_f32 != 0: out_dev is fp32 [M, H], else bf16 [M, H]. */
epm_status_t epm_kernel_moe_finalize(const epm_moe_plan_t *p, const epm_moe_inputs_dev_t *in,
                                     const epm_moe_workspace_t *ws, int out_f32, void *out_dev,
                                     void *stream);
/* All four in order. */
epm_status_t epm_kernel_moe_forward(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                    const epm_moe_inputs_dev_t *in, const epm_moe_workspace_t *ws,
                                    int out_f32, void *out_dev, void *stream);

/* ---- MoE experts, fast path (v2) ------------------------------------------
 * The same stages and the same numerics contract as the v1 kernels above
 * (products exact, fp32 accumulation; only the summation order differs, so
 * the outputs agree with v1 and the CPU reference within fp32-accumulation
 * noise, plus the rare NVFP4 requant flip that noise can cause), built for
 * speed (docs/ARCHITECTURE.md "GPU kernels", shared/spec/perf-design.md §2):
 *
 * permute   counts (given, e.g. by the routing kernel, or a histogram),
 *           per-expert rows padded to 8, the persistent schedules of both
 *           GEMMs, then one warp per (token, slot) pair that claims its row
 *           and converts the token's NVFP4 row once to FP16 (exact) in the
 *           tiled, swizzled layout the tensor cores read (`x16`).
 * gemm1     sm_90a: warp-specialised wgmma, NVFP4 weights as the register
 *           operand dequantized in registers to FP16 (bit placement + one
 *           multiply by the FP16 block scale), tokens on wgmma N, a bulk-copy
 *           producer warp and an mbarrier ring, a persistent schedule balanced
 *           by bytes; epilogue alpha1, SwiGLU, bf16 round, NVFP4 requant
 *           (the codec's block recipe) written as FP16 for GEMM2 (`inter16`)
 *           and, when the workspace has it, as packed NVFP4 + linear scales.
 * gemm2     same mainloop over down; epilogue alpha2, bf16 y [rows, H].
 * finalize  the v1 finalize (deterministic slot order) on the v2 rows.
 *
 * Weights are prepacked once at load (epm_moe2_prepack_expert, host C) into
 * the per-thread fragment order of the kernels. Two tile shapes: decode
 * (256 weight rows x up to 64 tokens x 128 k, 6 stages; wgmma N 16, 32 or 64
 * after the expert's count) and prefill (128 x 256 x 64, 5 stages; N 64, 128
 * or 256). */
typedef enum {
  EPM_MOE2_TILES_AUTO = -1, /* prefill when tokens * top_k >= 128 * num_experts */
  EPM_MOE2_TILES_DECODE = 0,
  EPM_MOE2_TILES_PREFILL = 1
} epm_moe2_tiles_t;

/* How the E2M1 x E4M3 operands become FP16: exactly e2m1*s*2^-14 (FP16
 * subnormals for small values; needs wgmma to keep subnormal inputs) or the
 * all-normal e2m1*16*s (one more FP16 multiply per element pair). Both give
 * bit-identical GEMM results when the hardware keeps subnormals; NORMAL is the
 * default until a GPU run has shown that it does (tests/gpu/test_gpu_moe2.c). */
typedef enum { EPM_MOE2_FP16_SUBNORMAL = 0, EPM_MOE2_FP16_NORMAL = 1 } epm_moe2_fp16_t;

typedef struct {
  int sm_count;            /* persistent CTAs: the device's SM count (>= 1) */
  epm_moe2_tiles_t tiles;  /* EPM_MOE2_TILES_AUTO picks from the token count */
  epm_moe2_fp16_t fp16;
  int arch;                /* 90: sm_90a wgmma kernels; 100: the sm_100a CUTLASS path */
  int packed_intermediate; /* 1: the workspace also holds the NVFP4 intermediate */
} epm_moe2_opts_t;

#define EPM_MOE2_OPTS_INIT {132, EPM_MOE2_TILES_AUTO, EPM_MOE2_FP16_NORMAL, 90, 0}

typedef struct {
  int64_t tokens, hidden, inter, top_k, num_experts, expert_offset, local_experts;
  int64_t pairs;                  /* tokens * top_k */
  epm_moe2_opts_t opts;           /* as given, tiles resolved */
  int32_t bm, bn_max, bk, stages; /* tile: weight rows, tokens, k per stage */
  int64_t smem_bytes;             /* dynamic shared memory of one GEMM CTA */
  int64_t hidden_pad, inter_pad;  /* K of GEMM1 / GEMM2, multiples of 128 */
  int64_t rows1_pad, rows2_pad;   /* prepacked weight rows: 2I and H, multiples of 256 */
  int64_t m_tiles1, m_tiles2;     /* weight row tiles per expert */
  int64_t w1_tile_bytes, w2_tile_bytes; /* prepacked bytes one work unit streams */
  size_t w13_expert_bytes, w2_expert_bytes; /* prepacked bytes per expert */
  int64_t max_rows;               /* permuted rows incl. tile slack (multiple of 8) */
  int64_t max_units1, max_units2; /* bound on the work units of each GEMM */
  /* workspace: one device allocation carved by epm_moe2_workspace_carve */
  size_t counts_bytes;            /* int32 [E_l] counts + int32 [E_l] cursors */
  size_t offsets_bytes;           /* int64 [E_l + 1] rows padded to 8 */
  size_t sched_bytes;             /* int64 [E_l + 1] x 4: unit and cost prefixes of both GEMMs */
  size_t pair_row_bytes;          /* int64 [pairs] */
  size_t x16_bytes;               /* FP16 tokens, tiled [max_rows, hidden_pad] */
  size_t inter16_bytes;           /* FP16 intermediate, tiled [max_rows, inter_pad] */
  size_t inter_packed_bytes, inter_sf_bytes; /* NVFP4 [max_rows, I/2], [max_rows, I/16] or 0 */
  size_t y_bytes;                 /* bf16 [max_rows, H] */
  size_t workspace_bytes;
  size_t out_bf16_bytes, out_f32_bytes; /* [M, H] */
  uint32_t grid_gemm, block_gemm; /* persistent: min(sm_count, units bound) x 384 threads */
  uint32_t grid_pairs, block_pairs; /* one warp per pair */
  uint32_t grid_finalize, block;
} epm_moe2_plan_t;

typedef struct {
  int32_t *counts, *cursors;
  int64_t *offsets, *uoff1, *coff1, *uoff2, *coff2, *pair_row;
  uint8_t *x16, *inter16;
  uint8_t *inter_packed, *inter_sf; /* NULL unless opts.packed_intermediate */
  uint16_t *y;
} epm_moe2_workspace_t;

typedef struct {
  const uint8_t *w13; /* [E_l][w13_expert_bytes] prepacked gate/up */
  const uint8_t *w2;  /* [E_l][w2_expert_bytes] prepacked down */
  const float *gate_up_scale_2, *down_scale_2; /* [E_l] */
  float input_scale, down_input_scale;
} epm_moe2_weights_dev_t;

/* Plan for M gathered tokens and the local slice [expert_offset, +E_l);
 * opts NULL = EPM_MOE2_OPTS_INIT. EPM_ERR_INVALID_ARG names a bad dimension
 * or option, EPM_ERR_OVERFLOW the product that does not fit. */
epm_status_t epm_moe2_plan(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts,
                           int64_t top_k, int64_t expert_offset, int64_t local_experts,
                           const epm_moe2_opts_t *opts, epm_moe2_plan_t *out);
epm_status_t epm_moe2_workspace_carve(const epm_moe2_plan_t *p, void *base_dev,
                                      epm_moe2_workspace_t *ws);
/* Prepack one expert (host memory, canonical form of kernels.h in) into
 * w13_expert_bytes + w2_expert_bytes of host memory. Depends only on the
 * dims and opts.arch, not on the token count. */
epm_status_t epm_moe2_prepack_expert(const epm_moe2_plan_t *p, const uint8_t *gate_w, const uint8_t *gate_sf,
                                     const uint8_t *up_w, const uint8_t *up_sf, const uint8_t *down_w,
                                     const uint8_t *down_sf, uint8_t *w13_out, uint8_t *w2_out);

/* counts_dev: int32 [E_l] tokens per local expert of these ids (e.g. the
 * routing kernel's per-expert counts summed over the gathered ranks), or
 * NULL to count here. Wrong counts corrupt the permutation. */
epm_status_t epm_kernel_moe2_permute(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                     const int32_t *counts_dev, const epm_moe2_workspace_t *ws,
                                     void *stream);
epm_status_t epm_kernel_moe2_gemm1(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                   const epm_moe2_workspace_t *ws, void *stream);
epm_status_t epm_kernel_moe2_gemm2(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                   const epm_moe2_workspace_t *ws, void *stream);
epm_status_t epm_kernel_moe2_finalize(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                      const epm_moe2_workspace_t *ws, int out_f32, void *out_dev,
                                      void *stream);
epm_status_t epm_kernel_moe2_forward(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                     const epm_moe_inputs_dev_t *in, const int32_t *counts_dev,
                                     const epm_moe2_workspace_t *ws, int out_f32, void *out_dev,
                                     void *stream);
/* 1 when this build has the kernels of opts.arch (90: any CUDA build; 100:
 * EPMOE_CUTLASS=ON), so callers can fall back to v1. */
int epm_moe2_arch_built(int arch);

/* ---- elementwise ops on n values (grid-strided, any n >= 0) -------------
 * Bit-identical to the host loops: bf16 -> fp32 exact; fp32 -> bf16 RNE with
 * NaN kept quiet (epm_bf16_from_f32); shared combine
 * y[i] = float(bf16(y[i])) + float(s[i]) for fp32 y and bf16 s. */
epm_status_t epm_kernel_bf16_to_f32(const void *src_dev, int64_t n, float *dst_dev, void *stream);
epm_status_t epm_kernel_f32_to_bf16(const float *src_dev, int64_t n, void *dst_dev, void *stream);
epm_status_t epm_kernel_shared_combine(float *y_dev, const void *s_dev, int64_t n, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_KERNELS_H */
