/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_plan.c — sizes, tile shape, shared memory, workspace layout
 * and grids of the fast (v2) expert kernels (include/epmoe/kernels.h). Pure C:
 * the tile constants come from kernels/moe2_core.h, the same header the
 * kernels are compiled from, so plan and kernels agree by construction.
 *
 * As in v1 the per-expert counts exist only on the device, so every buffer
 * indexed by permuted row takes the worst case of epm_plan_local_rows_bound
 * (here with rows padded to 8 per expert), plus the rows a token tile may
 * read past the end. */
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/kernels.h"
#include "epmoe/plan.h"
#include "moe2_core.h"
#include "moe2_internal.h"
#include "plan_util.h"

#define EPM__WS_ALIGN 1024 /* the tiled FP16 buffers are read by 1024-byte atoms */

_Static_assert(EPM_MOE2_TILES_DECODE == EPM_MOE2_REGIME_DECODE &&
                   EPM_MOE2_TILES_PREFILL == EPM_MOE2_REGIME_PREFILL,
               "public tile enum matches the kernels' regimes");
_Static_assert(EPM_MOE2_FP16_SUBNORMAL == EPM_MOE2_DEQUANT_SUBNORMAL && EPM_MOE2_FP16_NORMAL == EPM_MOE2_DEQUANT_NORMAL,
               "public dequant enum matches the kernels' variants");

static int add_piece(size_t *total, size_t bytes) {
  size_t aligned = 0;
  if (epm_add_size(bytes, EPM__WS_ALIGN - 1, &aligned)) return 1;
  aligned -= aligned % EPM__WS_ALIGN;
  return epm_add_size(*total, aligned, total);
}

static epm_status_t too_big(const char *what, int64_t a, int64_t b) {
  return epm_error(EPM_ERR_OVERFLOW, "moe2 plan: %s (%lld x %lld) overflows 64-bit sizes", what, (long long)a,
                   (long long)b);
}

/* Prepacked bytes of one weight matrix of rows_pad x k_pad. */
static int packed_bytes(int64_t rows_pad, int64_t k_pad, int64_t *out) {
  return epm_mul3_i64(rows_pad / EPM_MOE2_CHUNK_ROWS, k_pad / EPM_MOE2_CHUNK_K, EPM_MOE2_CHUNK_BYTES, out);
}

/* sm_100a (CUTLASS): canonical codes [rows, K/2] then 128x4 scales. */
static int sm100_bytes(int64_t rows, int64_t k, int64_t *out) {
  int64_t codes = 0, sf = 0, rp = 0, kp = 0;
  if (epm_mul_i64(rows, k / 2, &codes) || epm_round_up_i64(rows, 128, &rp) ||
      epm_round_up_i64(k / 16, 4, &kp) || epm_mul_i64(rp, kp, &sf))
    return 1;
  return epm_add_i64(epm_core_round_up(codes, 128), sf, out);
}

epm_status_t epm_moe2_plan(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts, int64_t top_k,
                           int64_t expert_offset, int64_t local_experts, const epm_moe2_opts_t *opts,
                           epm_moe2_plan_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "moe2 plan: out is NULL");
  memset(out, 0, sizeof *out);
  const epm_moe2_opts_t defaults = EPM_MOE2_OPTS_INIT;
  epm_moe2_opts_t o = opts ? *opts : defaults;
  /* The v1 plan validates the dims the same way; reuse its checks and messages. */
  epm_moe_plan_t v1;
  EPM_TRY(epm_moe_plan(tokens, hidden, inter, num_experts, top_k, expert_offset, local_experts, &v1));
  if (o.sm_count < 1 || o.sm_count > 65535)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 plan: sm_count = %d must be in [1, 65535]", o.sm_count);
  if (o.arch != 90 && o.arch != 100)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 plan: arch = %d; the fast kernels exist for 90 (sm_90a) and 100 (sm_100a)",
                     o.arch);
  if (o.fp16 != EPM_MOE2_FP16_SUBNORMAL && o.fp16 != EPM_MOE2_FP16_NORMAL)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 plan: fp16 variant %d is not SUBNORMAL (0) or NORMAL (1)", (int)o.fp16);
  if (o.tiles == EPM_MOE2_TILES_AUTO) {
    /* Average tokens per expert (uniform routing) >= 128: a weight tile is
     * reused enough that the 256-token tiles pay off. */
    int64_t tk = 0, lim = 0;
    int big = epm_mul_i64(tokens, top_k, &tk) || epm_mul_i64(128, num_experts, &lim) || tk >= lim;
    o.tiles = big ? EPM_MOE2_TILES_PREFILL : EPM_MOE2_TILES_DECODE;
  }
  if (o.tiles != EPM_MOE2_TILES_DECODE && o.tiles != EPM_MOE2_TILES_PREFILL)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 plan: tiles = %d is not AUTO, DECODE or PREFILL", (int)o.tiles);

  out->tokens = tokens;
  out->hidden = hidden;
  out->inter = inter;
  out->top_k = top_k;
  out->num_experts = num_experts;
  out->expert_offset = expert_offset;
  out->local_experts = local_experts;
  out->pairs = v1.pairs;
  out->opts = o;
  const epm_core_moe2_tile_t t = epm_core_moe2_tile((int)o.tiles);
  out->bm = t.bm;
  out->bn_max = t.bn_max;
  out->bk = t.bk;
  out->stages = t.stages;
  out->smem_bytes = epm_core_moe2_smem_bytes(t);
  if (out->smem_bytes > EPM_MOE2_SMEM_MAX)
    return epm_error(EPM_ERR_INTERNAL, "moe2 plan: tile %dx%dx%d with %d stages needs %lld bytes of shared memory > %d",
                     t.bm, t.bn_max, t.bk, t.stages, (long long)out->smem_bytes, EPM_MOE2_SMEM_MAX);

  int64_t r1 = 0;
  if (epm_round_up_i64(hidden, EPM_MOE2_K_PAD, &out->hidden_pad) ||
      epm_round_up_i64(inter, EPM_MOE2_K_PAD, &out->inter_pad) || epm_mul_i64(inter, 2, &r1) ||
      epm_round_up_i64(r1, EPM_MOE2_ROW_PAD, &out->rows1_pad) ||
      epm_round_up_i64(hidden, EPM_MOE2_ROW_PAD, &out->rows2_pad))
    return too_big("padded weight dims", hidden, inter);
  out->m_tiles1 = out->rows1_pad / t.bm;
  out->m_tiles2 = out->rows2_pad / t.bm;
  int64_t b13 = 0, b2 = 0;
  if (packed_bytes(t.bm, out->hidden_pad, &out->w1_tile_bytes) ||
      packed_bytes(t.bm, out->inter_pad, &out->w2_tile_bytes))
    return too_big("weight tile", t.bm, out->hidden_pad);
  if (o.arch == 100 ? (sm100_bytes(r1, hidden, &b13) || sm100_bytes(hidden, inter, &b2))
                    : (packed_bytes(out->rows1_pad, out->hidden_pad, &b13) ||
                       packed_bytes(out->rows2_pad, out->inter_pad, &b2)))
    return too_big("prepacked expert", out->rows1_pad, out->hidden_pad);
  out->w13_expert_bytes = (size_t)b13;
  out->w2_expert_bytes = (size_t)b2;

  if (o.arch == 100 && (hidden % 64 != 0 || inter % 64 != 0))
    return epm_error(EPM_ERR_INVALID_ARG,
                     "moe2 plan: the sm_100a path needs hidden = %lld and intermediate = %lld to be multiples of 64 "
                     "(4 scale blocks per 128x4 tile column)",
                     (long long)hidden, (long long)inter);
  /* Rows: every local pair, each expert padded to 8 (sm_100a: 128), plus the tile slack. */
  int64_t lp = 0, tiles = 0, rows = 0, nt_bound = 0;
  EPM_TRY(epm_plan_local_rows_bound(tokens, top_k, local_experts,
                                    o.arch == 100 ? EPM_MOE2_SM100_ROW_ALIGN : EPM_MOE2_ROW_ALIGN, &lp, &tiles,
                                    &rows));
  if (epm_add_i64(rows, EPM_MOE2_ROW_SLACK, &out->max_rows)) return too_big("permuted rows", rows, 1);
  /* sum over experts of ceil(count / bn) <= E_l + pairs / bn */
  nt_bound = local_experts + lp / t.bn_max;
  if (epm_mul_i64(out->m_tiles1, nt_bound, &out->max_units1) ||
      epm_mul_i64(out->m_tiles2, nt_bound, &out->max_units2))
    return too_big("work units", out->m_tiles1, nt_bound);

  int64_t b_x16 = 0, b_i16 = 0, b_ip = 0, b_isf = 0, b_y = 0, b_pair = 0, b_sched = 0;
  if (epm_mul3_i64(out->max_rows, out->hidden_pad, 2, &b_x16) ||
      epm_mul3_i64(out->max_rows, out->inter_pad, 2, &b_i16) || epm_mul3_i64(out->max_rows, hidden, 2, &b_y))
    return too_big("FP16 rows x K", out->max_rows, out->hidden_pad);
  if (o.packed_intermediate &&
      (epm_mul_i64(out->max_rows, inter / 2, &b_ip) || epm_mul_i64(out->max_rows, inter / 16, &b_isf)))
    return too_big("NVFP4 intermediate", out->max_rows, inter);
  if (epm_mul_i64(v1.pairs, 8, &b_pair)) return too_big("pair map", v1.pairs, 8);
  if (epm_mul3_i64(local_experts + 1, 8, 4, &b_sched)) return too_big("schedule", local_experts, 32);
  if (o.arch == 100) {
    /* tokens: NVFP4 rows + 128x4 scales; intermediate: the fp32 GEMM output
     * (GEMM1 [rows, 2I], then GEMM2 [rows, H] in the same place) + NVFP4 rows
     * + 128x4 scales; schedule piece: CUTLASS arguments and workspace. */
    int64_t xq = 0, xsf = 0, d = 0, iq = 0, isf = 0, wmax = 2 * inter > hidden ? 2 * inter : hidden;
    if (epm_mul_i64(out->max_rows, hidden / 2, &xq) || epm_mul_i64(out->max_rows, epm_core_round_up(hidden / 16, 4), &xsf) ||
        epm_mul3_i64(out->max_rows, wmax, 4, &d) || epm_mul_i64(out->max_rows, inter / 2, &iq) ||
        epm_mul_i64(out->max_rows, epm_core_round_up(inter / 16, 4), &isf) ||
        epm_add_i64(epm_core_round_up(xq, EPM__WS_ALIGN), xsf, &b_x16) ||
        epm_add_i64(epm_core_round_up(d, EPM__WS_ALIGN) + epm_core_round_up(iq, EPM__WS_ALIGN), isf, &b_i16) ||
        epm_mul_i64(local_experts, EPM_MOE2_SM100_GROUP_BYTES, &b_sched) ||
        epm_add_i64(b_sched, EPM_MOE2_SM100_CUTLASS_WS, &b_sched))
      return too_big("sm_100a rows x dims", out->max_rows, wmax);
    b_ip = b_isf = 0;
  }
  out->counts_bytes = (size_t)local_experts * 2 * sizeof(int32_t);
  out->offsets_bytes = (size_t)(local_experts + 1) * sizeof(int64_t);
  out->sched_bytes = (size_t)b_sched;
  out->pair_row_bytes = (size_t)b_pair;
  out->x16_bytes = (size_t)b_x16;
  out->inter16_bytes = (size_t)b_i16;
  out->inter_packed_bytes = (size_t)b_ip;
  out->inter_sf_bytes = (size_t)b_isf;
  out->y_bytes = (size_t)b_y;
  out->out_bf16_bytes = v1.out_bf16_bytes;
  out->out_f32_bytes = v1.out_f32_bytes;
  size_t total = 0;
  if (add_piece(&total, out->counts_bytes) || add_piece(&total, out->offsets_bytes) ||
      add_piece(&total, out->sched_bytes) || add_piece(&total, out->pair_row_bytes) ||
      add_piece(&total, out->x16_bytes) || add_piece(&total, out->inter16_bytes) ||
      add_piece(&total, out->inter_packed_bytes) || add_piece(&total, out->inter_sf_bytes) ||
      add_piece(&total, out->y_bytes))
    return too_big("workspace", out->max_rows, hidden);
  out->workspace_bytes = total;

  /* Persistent GEMMs: one CTA per SM, never more CTAs than units can use. */
  int64_t units = out->max_units1 > out->max_units2 ? out->max_units1 : out->max_units2;
  int64_t g = units < o.sm_count ? units : o.sm_count;
  out->grid_gemm = (uint32_t)(g < 1 ? 1 : g);
  out->block_gemm = EPM_MOE2_THREADS;
  /* One warp per pair, 8 warps per block, grid-strided. */
  out->block_pairs = 256u;
  int64_t gp = (v1.pairs + 7) / 8;
  out->grid_pairs = (uint32_t)(gp < 1 ? 1 : (gp > EPM__PLAN_GRID_CAP ? EPM__PLAN_GRID_CAP : gp));
  out->grid_finalize = v1.grid_finalize;
  out->block = v1.block;
  return EPM_OK;
}

epm_status_t epm_moe2_workspace_carve(const epm_moe2_plan_t *p, void *base_dev, epm_moe2_workspace_t *ws) {
  if (!p || !ws || !base_dev) return epm_error(EPM_ERR_INVALID_ARG, "moe2 workspace: NULL plan, base or output");
  if ((uintptr_t)base_dev % EPM__WS_ALIGN != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 workspace: base %p is not %d-byte aligned", base_dev,
                     EPM__WS_ALIGN);
  memset(ws, 0, sizeof *ws);
  uint8_t *b = (uint8_t *)base_dev;
  size_t off = 0;
#define EPM__TAKE(field, type, bytes)        \
  do {                                        \
    ws->field = (type *)(void *)(b + off);    \
    (void)add_piece(&off, (bytes));           \
  } while (0)
  EPM__TAKE(counts, int32_t, p->counts_bytes);
  ws->cursors = ws->counts + p->local_experts;
  EPM__TAKE(offsets, int64_t, p->offsets_bytes);
  EPM__TAKE(uoff1, int64_t, p->sched_bytes);
  ws->coff1 = ws->uoff1 + (p->local_experts + 1);
  ws->uoff2 = ws->coff1 + (p->local_experts + 1);
  ws->coff2 = ws->uoff2 + (p->local_experts + 1);
  EPM__TAKE(pair_row, int64_t, p->pair_row_bytes);
  EPM__TAKE(x16, uint8_t, p->x16_bytes);
  EPM__TAKE(inter16, uint8_t, p->inter16_bytes);
  EPM__TAKE(inter_packed, uint8_t, p->inter_packed_bytes);
  EPM__TAKE(inter_sf, uint8_t, p->inter_sf_bytes);
  EPM__TAKE(y, uint16_t, p->y_bytes);
#undef EPM__TAKE
  if (!p->opts.packed_intermediate) ws->inter_packed = ws->inter_sf = NULL;
  return EPM_OK;
}

epm_core_sched_t epm__moe2_sched(const epm_moe2_plan_t *p, int gemm) {
  epm_core_sched_t s;
  s.m_tiles = gemm == 1 ? p->m_tiles1 : p->m_tiles2;
  s.k_pad = gemm == 1 ? p->hidden_pad : p->inter_pad;
  s.w_tile_bytes = gemm == 1 ? p->w1_tile_bytes : p->w2_tile_bytes;
  s.bn_max = p->bn_max;
  s.regime = (int32_t)p->opts.tiles;
  return s;
}
