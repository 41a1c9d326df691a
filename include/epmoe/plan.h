/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/plan.h — shape planning of one EP step: every buffer size per rank,
 * CUDA grid limits and the chunking they need, and size checks for launchers.
 *
 * Why this exists: FlashInfer computed num_tokens * hidden_size in 32-bit int
 * and died at EP32 DeepSeek-R1 (327,680 gathered tokens x 7168) with
 * "Unsupported hidden state scale shape" (spec/nvfp4-moe.md §3.2, §7). Here
 * every product of dimensions is int64_t (elements) or size_t (bytes) and
 * overflow-checked; a size that does not fit in int64 is EPM_ERR_OVERFLOW with
 * the operands in the message, never a wrapped number.
 *
 * The plan is pure host arithmetic (no allocation, no device), so it runs in
 * unit tests with 3e9-element shapes. The engine, the CPU and the CUDA
 * backends size their buffers from it, for the capacity they were configured
 * with (max tokens per rank), then use the same numbers to check every tensor
 * handed to them.
 *
 * One step (docs/ARCHITECTURE.md), m_r tokens on rank r, M = sum(m_r):
 *   local     x_r [m_r, H] bf16 and logits [m_r, E] fp32 from the engine,
 *             routed to top-k ids (int32) + weights (fp32), quantized to
 *             NVFP4 (packed [m_r, H/2] + linear scales [m_r, H/16])
 *   gathered  all-gather-v of fp4 rows, linear scales, ids, weights -> M rows
 *   expert    the (token, expert) pairs that hit this rank's E_l expert slots,
 *             permuted by expert with each expert's rows padded to the GEMM
 *             M-tile; GEMM1 [rows, 2I] -> SwiGLU + NVFP4 requant [rows, I]
 *             -> GEMM2 [rows, H] -> finalize (weighted sum per token) into
 *             partial y [M, H] bf16 = reduce-scatter input
 *   output    reduce-scatter-v (sum) -> y_r [m_r, H] bf16
 *
 * Thread safety: every function is reentrant; errors go to the calling
 * thread's epm_last_error().
 */
#ifndef EPMOE_PLAN_H
#define EPMOE_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/model.h"
#include "epmoe/placement.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* GEMM M-tile (rows per CTA in the batch dimension) when the config leaves 0.
 * Each local expert's rows are padded up to a multiple of it. */
#define EPM_PLAN_DEFAULT_TILE 128
#define EPM_PLAN_MAX_TILE 1024
/* Output columns per GEMM CTA assumed for grid.x of the grouped GEMMs. */
#define EPM_PLAN_GEMM_TILE_N 128
/* CUDA grid limits (all compute capabilities >= 3.0). */
#define EPM_CUDA_GRID_X_MAX INT64_C(2147483647)
#define EPM_CUDA_GRID_YZ_MAX INT64_C(65535)

/* What the caller asks about. */
typedef struct {
  epm_model_dims_t dims;          /* validated by epm_plan_compute */
  int64_t ep_size;                /* EP group size, >= 1 */
  int64_t rank;                   /* 0 <= rank < ep_size */
  /* Where the experts live (read during the call only): NULL = the default
   * placement, the contiguous split with the first E mod ep_size ranks
   * holding one expert more (epmoe/placement.h). Its expert count and EP size
   * must match dims and ep_size. */
  const epm_placement_t *placement;
  /* Either the exact token count of every rank ([ep_size], caller-owned, read
   * during the call only) or NULL, then every rank has max_tokens_per_rank
   * (the capacity case the engine sizes its buffers for). Counts may be 0. */
  const int64_t *tokens_per_rank;
  int64_t max_tokens_per_rank;
  int64_t tile;                   /* GEMM M-tile; 0 = EPM_PLAN_DEFAULT_TILE */
  /* alltoall dispatch: most token rows one rank receives per step (>= 0);
   * 0 = the worst case M (every token of every rank routed to this rank). */
  int64_t recv_capacity;
  /* Workspace budget of the expert stage in bytes (the permute maps and the
   * GEMM intermediates: expanded_to_permuted .. gemm2_out); 0 = unbounded.
   * The expert stage then runs over chunks of at most ws_chunk_tokens
   * gathered rows, each chunk's worst-case workspace within the budget. */
  size_t workspace_bytes;
} epm_plan_config_t;

/* One buffer: logical shape [rows, cols] (fp4 counts unpacked elements, the
 * leading dim of per-expert weights folds the expert index in), its element
 * count and its size in bytes. A buffer of 0 rows has 0 bytes. */
typedef struct {
  int64_t rows;
  int64_t cols;
  int64_t elements;
  size_t bytes;
} epm_plan_buf_t;

/* One CUDA launch-limit check of an assumed kernel configuration (see
 * epm_plan_t.limits). `value` is the worst-case grid dimension for the whole
 * gathered batch; `chunks` is how many token chunks of the gathered batch are
 * needed so each chunk's grid fits (1 = fits as is, 0 = no chunking can fit). */
typedef struct {
  const char *kernel;      /* "route", "quantize", "gemm1", "swiglu_requant", "gemm2", "finalize" */
  const char *dim;         /* "grid.x" or "grid.y" */
  const char *what;        /* what the dimension counts */
  int64_t value;
  int64_t limit;
  int64_t max_tokens;      /* most gathered tokens whose grid fits (INT64_MAX: any) */
  int64_t chunks;
} epm_plan_limit_t;

#define EPM_PLAN_MAX_LIMITS 8

typedef struct {
  epm_plan_config_t config;    /* copy; tokens_per_rank and placement set to NULL (not kept) */
  int64_t tile;                /* resolved GEMM M-tile */

  /* ---- tokens and experts ---- */
  int64_t tokens_local;        /* m_r of this rank */
  int64_t tokens_max;          /* max over ranks of m_r */
  int64_t tokens_gathered;     /* M = sum over ranks of m_r */
  int64_t num_slots;           /* S: physical expert slots of the group (E + redundant) */
  int64_t local_experts;       /* E_l: this rank's slots (floor or ceil of S / ep_size by default) */
  int64_t expert_offset;       /* this rank's first global slot: its slots are [offset, offset + E_l) */
  int64_t expanded_pairs;      /* M * k: every (token, slot) pair of the gathered batch */
  /* Worst case of pairs landing on local experts: a token picks k distinct
   * experts, so at most min(k, E_l) of them are local: M * min(k, E_l). */
  int64_t local_pairs_max;
  int64_t local_pairs_uniform; /* ceil(M * k / ep_size): the same under uniform routing (info) */
  /* Worst case of GEMM M-tiles over the local experts, each expert padded to
   * the tile: with P pairs over E_l experts, sum ceil(n_e / tile) is largest
   * when j = min(E_l, P) experts get one row each and the rest fill whole
   * tiles: j + floor((P - j) / tile). (FlashInfer's getMaxNumCtasInBatchDim,
   * applied to the local experts.) */
  int64_t gemm_m_tiles_max;
  int64_t permuted_rows_max;   /* gemm_m_tiles_max * tile: rows of every expert buffer */
  /* alltoall dispatch (each token once to every rank owning one of its
   * experts): rows this rank sends, at most m_r * min(k, ep_size), and rows
   * it may receive, min(recv_capacity, M) (M when recv_capacity is 0). Its
   * send/receive buffers are these rows of the local/gathered row widths. */
  int64_t a2a_send_rows;
  int64_t a2a_recv_rows;

  /* ---- local (this rank's m_r tokens) ---- */
  epm_plan_buf_t x_local;           /* [m_r, H] bf16, engine input */
  epm_plan_buf_t logits_local;      /* [m_r, E] fp32 router logits */
  epm_plan_buf_t topk_ids_local;    /* [m_r, k] int32 global expert ids */
  epm_plan_buf_t topk_w_local;      /* [m_r, k] fp32 routing weights */
  epm_plan_buf_t xq_local;          /* [m_r, H] fp4 packed: m_r * H / 2 bytes */
  epm_plan_buf_t xsf_local;         /* [m_r, H/16] e4m3, linear (what is gathered) */
  epm_plan_buf_t xsf_local_swz;     /* [pad128(m_r), pad4(H/16)] e4m3, 128x4 swizzled */

  /* ---- gathered (all ranks, rank order) ---- */
  epm_plan_buf_t xq_gathered;       /* [M, H] fp4 packed */
  epm_plan_buf_t xsf_gathered;      /* [M, H/16] e4m3 linear: the hidden_states_scale */
  epm_plan_buf_t xsf_gathered_swz;  /* [pad128(M), pad4(H/16)] swizzled after the gather */
  epm_plan_buf_t topk_ids_gathered; /* [M, k] int32 */
  epm_plan_buf_t topk_w_gathered;   /* [M, k] fp32 */

  /* ---- expert computation (worst case rows R = permuted_rows_max) ---- */
  epm_plan_buf_t expanded_to_permuted; /* [M, k] int64: row in the permuted buffers, -1 = not local */
  epm_plan_buf_t permuted_to_token;    /* [R, 1] int64: source token of a permuted row, -1 = padding */
  epm_plan_buf_t expert_row_offsets;   /* [E_l + 1, 1] int64: padded start row of each local expert */
  epm_plan_buf_t gemm1_out;            /* [R, 2I] bf16, [up | gate] (a fused GEMM1+SwiGLU skips it) */
  epm_plan_buf_t inter_q;              /* [R, I] fp4 packed: SwiGLU output re-quantized */
  epm_plan_buf_t inter_sf;             /* [pad128(R), pad4(I/16)] e4m3, 128x4 swizzled */
  epm_plan_buf_t gemm2_out;            /* [R, H] bf16 (rounded to bf16 before finalize) */
  epm_plan_buf_t partial_y;            /* [M, H] bf16: finalize output, fp32-accumulated in
                                          registers; it is the reduce-scatter send buffer */
  epm_plan_buf_t y_local;              /* [m_r, H] bf16: reduce-scatter output */

  /* ---- shared expert, on this rank's own m_r tokens (0 bytes if none) ---- */
  epm_plan_buf_t shared_gemm1_out;     /* [m_r, 2*Is] bf16 */
  epm_plan_buf_t shared_inter_q;       /* [m_r, Is] fp4 packed */
  epm_plan_buf_t shared_inter_sf;      /* [pad128(m_r), pad4(Is/16)] e4m3 swizzled */
  epm_plan_buf_t shared_out;           /* [m_r, H] bf16, added unscaled to y_r */

  /* ---- weights held by this rank (NVFP4, kernel-ready layout) ---- */
  epm_plan_buf_t w13_q;                /* [E_l * 2I, H] fp4 packed, rows [up; gate] per expert */
  epm_plan_buf_t w13_sf;               /* [E_l * pad128(2I), pad4(H/16)] e4m3, swizzled per expert */
  epm_plan_buf_t w2_q;                 /* [E_l * H, I] fp4 packed */
  epm_plan_buf_t w2_sf;                /* [E_l * pad128(H), pad4(I/16)] e4m3, swizzled per expert */
  epm_plan_buf_t expert_scalars;       /* [E_l, 3] fp32: output1_scale, output1_scale_gate, output2_scale */
  epm_plan_buf_t routing_bias;         /* [E, 1] fp32 (deepseek-v3 only, else 0) */
  epm_plan_buf_t shared_w13_q;         /* [S * 2Is, H] fp4 packed, S = shared_experts */
  epm_plan_buf_t shared_w13_sf;        /* [S * pad128(2Is), pad4(H/16)] */
  epm_plan_buf_t shared_w2_q;          /* [S * H, Is] fp4 packed */
  epm_plan_buf_t shared_w2_sf;         /* [S * pad128(H), pad4(Is/16)] */
  epm_plan_buf_t shared_scalars;       /* [S, 3] fp32 */

  /* ---- totals (bytes) ---- */
  size_t bytes_local;                  /* local group */
  size_t bytes_gathered;
  size_t bytes_expert;
  size_t bytes_shared;                 /* shared-expert activations */
  size_t bytes_activations;            /* all of the above: one step's workspace */
  size_t bytes_weights;                /* routed + shared weights of one layer */
  size_t bytes_total;                  /* activations + weights */

  /* ---- CUDA launch limits of the assumed kernel configurations ----
   *  route, quantize     grid.x = m_r (one CTA per local token)
   *  gemm1, gemm2        grid.x = ceil(N / EPM_PLAN_GEMM_TILE_N), grid.y = GEMM M-tiles
   *                      (gemm_m_tiles_max; CTAs of the batch dim on y, as FlashInfer
   *                      and vLLM's Triton MoE do: the limit behind vLLM PR #43599)
   *  swiglu_requant      grid.x = permuted rows (one CTA per row)
   *  finalize            grid.x = M (one CTA per gathered token)
   * A limit that does not fit is a violation; the remedy is to run the expert
   * stage over chunks of at most max_tokens_per_chunk gathered tokens. */
  epm_plan_limit_t limits[EPM_PLAN_MAX_LIMITS];
  size_t n_limits;
  size_t violations;                   /* limits with chunks != 1 */
  int64_t max_tokens_per_chunk;        /* most gathered tokens per expert-stage chunk: min of
                                          the expert-stage limits' max_tokens, capped at M
                                          (0 when M is 0 or when nothing fits) */
  int64_t chunks;                      /* ceil(M / max_tokens_per_chunk); 1 = no chunking;
                                          0 = impossible (a single token does not fit) */

  /* ---- expert-stage chunking under config.workspace_bytes ----
   * The workspace (expanded_to_permuted, permuted_to_token,
   * expert_row_offsets, gemm1_out, inter_q, inter_sf, gemm2_out) scales with
   * the rows one expert call sees; partial_y and the gathered rows do not
   * (they hold the whole step). Chunks are cut at gathered-row boundaries:
   * a row's partial depends only on that row, so the bits do not change. */
  size_t bytes_expert_ws;              /* the workspace for all M rows in one call */
  int64_t ws_chunk_tokens;             /* most rows per expert call: the budget's, capped
                                          by max_tokens_per_chunk and M (>= 1 when M > 0) */
  int64_t ws_chunks;                   /* ceil(M / ws_chunk_tokens); 1 when M is 0 */
  size_t bytes_expert_ws_chunk;        /* the workspace of one ws_chunk_tokens-row call */
  size_t bytes_total_chunked;          /* bytes_total with the chunk's workspace instead */
} epm_plan_t;

/* Compute the plan. cfg is read only during the call. On error *out is left
 * untouched and the message names the values: EPM_ERR_INVALID_ARG for bad
 * dims, ep_size, rank, tile, placement or token counts (more ranks than
 * slots, a placement of other E or P, negative tokens, rank out of range);
 * EPM_ERR_OVERFLOW when a size does not fit in int64/size_t. */
epm_status_t epm_plan_compute(const epm_plan_config_t *cfg, epm_plan_t *out);

/* Worst-case expert-stage workspace (see bytes_expert_ws) of one expert
 * call over `rows` gathered rows with p's dims, local experts and tile. */
epm_status_t epm_plan_expert_ws_bytes(const epm_plan_t *p, int64_t rows, size_t *out);

/* epm_plan_local_rows_bound() (worst-case local pairs and padded rows) is
 * declared in epmoe/kernels.h: the kernels own that bound. */

/* ---- buffer iteration (for printing, allocation loops, checks) ---- */
typedef enum {
  EPM_PLAN_GROUP_LOCAL = 0,
  EPM_PLAN_GROUP_GATHERED,
  EPM_PLAN_GROUP_EXPERT,
  EPM_PLAN_GROUP_SHARED,
  EPM_PLAN_GROUP_WEIGHTS,
  EPM_PLAN_GROUP_COUNT
} epm_plan_group_t;

typedef struct {
  const char *name;        /* field name in epm_plan_t, e.g. "xsf_gathered" */
  epm_plan_group_t group;
  const char *dtype;       /* "bf16", "fp32", "int32", "int64", "fp4x2", "e4m3" */
  const char *desc;        /* one line: shape and role */
  epm_plan_buf_t buf;
  int int32_elements;      /* elements > INT32_MAX: a 32-bit element index would wrap (info) */
  int int32_bytes;         /* bytes > INT32_MAX: a 32-bit byte offset would wrap (info) */
} epm_plan_buffer_info_t;

const char *epm_plan_group_name(epm_plan_group_t g); /* "local", "gathered", ... */
/* Number of buffers in a plan (a constant). */
size_t epm_plan_buffer_count(void);
/* Describe buffer i (0 <= i < count) of p. EPM_ERR_INVALID_ARG if i is out of range. */
epm_status_t epm_plan_buffer(const epm_plan_t *p, size_t i, epm_plan_buffer_info_t *out);
/* Look a buffer up by name; EPM_ERR_INVALID_ARG names an unknown one. */
epm_status_t epm_plan_buffer_by_name(const epm_plan_t *p, const char *name,
                                     epm_plan_buffer_info_t *out);

/* ---- checks for launchers (the seed's scale check, done right) ---- */
/* numel of a tensor must equal rows x cols / divisor (computed in int64):
 *   "<tensor> has N elements; R <rows_name> x C <cols_name> / D = X expected"
 * (" / D" omitted when divisor is 1). cols must be a multiple of divisor.
 * EPM_ERR_INVALID_ARG on a mismatch, EPM_ERR_OVERFLOW if rows x cols does not fit. */
epm_status_t epm_plan_check_numel(const char *tensor, int64_t numel, int64_t rows,
                                  const char *rows_name, int64_t cols, const char *cols_name,
                                  int64_t divisor);
/* The hidden_states_scale check: linear scales [rows, hidden/16]:
 *   "hidden_states_scale has 146800639 elements; 327680 tokens x 7168 hidden / 16 = 146800640 expected" */
epm_status_t epm_plan_check_scale_numel(int64_t rows, int64_t hidden, int64_t numel);
/* Packed fp4 hidden states [rows, hidden/2] bytes: "hidden_states has ...; ... / 2 = ... expected". */
epm_status_t epm_plan_check_packed_numel(int64_t rows, int64_t hidden, int64_t numel);
/* A caller's allocation for a named plan buffer must hold at least its bytes:
 *   "buffer gemm2_out has 100 bytes; the plan needs 4194304 ([256, 7168] bf16)" */
epm_status_t epm_plan_check_buffer(const epm_plan_t *p, const char *name, size_t have_bytes);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_PLAN_H */
