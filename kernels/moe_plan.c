/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe_plan.c — sizes, workspace layout and grids of the MoE expert
 * kernels (permute, GEMM1, GEMM2, finalize).
 *
 * Counts per expert are only known on the device, so every buffer indexed by
 * permuted row is sized for the worst case of epm_plan_local_rows_bound():
 * all M*min(k, E_l) local pairs, each expert padded to the tile. The GEMMs run a persistent grid that reads
 * the real tile count from device memory.
 */
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/kernels.h"
#include "epmoe/plan.h"
#include "plan_util.h"

#define EPM__WS_ALIGN 256

static int add_piece(size_t *total, size_t bytes) {
  size_t aligned = 0;
  if (epm_add_size(bytes, EPM__WS_ALIGN - 1, &aligned)) return 1;
  aligned -= aligned % EPM__WS_ALIGN;
  return epm_add_size(*total, aligned, total);
}

static epm_status_t too_big(const char *what, int64_t a, int64_t b) {
  return epm_error(EPM_ERR_OVERFLOW, "moe plan: %s (%lld x %lld) overflows 64-bit sizes", what,
                   (long long)a, (long long)b);
}

/* The worst case of local (token, expert) pairs and padded GEMM rows for
 * `tokens` gathered tokens: the step plan (runtime/plan.c) sizes its buffers
 * with it and the kernels below size theirs, so both agree by construction. */
epm_status_t epm_plan_local_rows_bound(int64_t tokens, int64_t top_k, int64_t local_experts,
                                       int64_t tile, int64_t *pairs, int64_t *m_tiles,
                                       int64_t *padded_rows) {
  if (tokens < 0 || top_k < 1 || local_experts < 1 || tile < 1)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "local rows bound: tokens = %lld, top_k = %lld, local_experts = %lld, "
                     "tile = %lld (need tokens >= 0, the others >= 1)",
                     (long long)tokens, (long long)top_k, (long long)local_experts,
                     (long long)tile);
  int64_t kk = top_k < local_experts ? top_k : local_experts;
  int64_t p = 0, j, tiles, rows = 0;
  if (epm_mul_i64(tokens, kk, &p)) return too_big("local pairs (tokens x min(top_k, local_experts))", tokens, kk);
  j = p < local_experts ? p : local_experts;
  tiles = j + (p - j) / tile; /* <= p, cannot overflow */
  if (epm_mul_i64(tiles, tile, &rows)) return too_big("permuted rows (GEMM M-tiles x tile)", tiles, tile);
  *pairs = p;
  *m_tiles = tiles;
  *padded_rows = rows;
  return EPM_OK;
}


/* placed: local_experts bank slots of a placement (any experts, replicas
 * allowed), else the contiguous slice [expert_offset, + local_experts). */
static epm_status_t plan(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts, int64_t top_k,
                         int64_t expert_offset, int64_t local_experts, int placed, epm_moe_plan_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "moe plan: out is NULL");
  memset(out, 0, sizeof *out);
  if (tokens < 0) return epm_error(EPM_ERR_INVALID_ARG, "moe plan: tokens = %lld < 0", (long long)tokens);
  if (hidden <= 0 || hidden % EPM_NVFP4_BLOCK != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "moe plan: hidden = %lld must be a positive multiple of 16",
                     (long long)hidden);
  if (inter <= 0 || inter % EPM_NVFP4_BLOCK != 0)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "moe plan: intermediate = %lld must be a positive multiple of 16",
                     (long long)inter);
  if (num_experts <= 0 || top_k <= 0 || top_k > num_experts)
    return epm_error(EPM_ERR_INVALID_ARG, "moe plan: top_k = %lld must be in [1, num_experts = %lld]",
                     (long long)top_k, (long long)num_experts);
  if (placed && (local_experts <= 0 || local_experts > INT32_MAX))
    return epm_error(EPM_ERR_INVALID_ARG, "moe plan: %lld bank slots; need 1 .. %d", (long long)local_experts,
                     INT32_MAX);
  if (!placed && (local_experts <= 0 || expert_offset < 0 || local_experts > num_experts ||
                  expert_offset > num_experts - local_experts))
    return epm_error(EPM_ERR_INVALID_ARG,
                     "moe plan: local experts [%lld, %lld + %lld) must lie within [0, %lld)",
                     (long long)expert_offset, (long long)expert_offset, (long long)local_experts,
                     (long long)num_experts);
  /* The per-expert histogram and cursors are int32 atomics: one expert can
   * receive every token. */
  if (tokens > INT32_MAX)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "moe plan: tokens = %lld exceeds the int32 per-expert counters (%d); chunk the batch",
                     (long long)tokens, INT32_MAX);
  /* Device ids are int32; the kernels compare them with 64-bit bounds. */
  if (num_experts > INT32_MAX)
    return epm_error(EPM_ERR_INVALID_ARG, "moe plan: num_experts = %lld exceeds int32 ids",
                     (long long)num_experts);

  int64_t pairs = 0, local_pairs = 0, m_tiles = 0, rows = 0;
  if (epm_mul_i64(tokens, top_k, &pairs)) return too_big("tokens x top_k", tokens, top_k);
  /* The step plan's worst case (include/epmoe/plan.h), so the buffers it
   * sizes are exactly what these kernels need. */
  EPM_TRY(epm_plan_local_rows_bound(tokens, top_k, local_experts, EPM_MOE_TILE_M, &local_pairs,
                                    &m_tiles, &rows));

  out->tokens = tokens;
  out->hidden = hidden;
  out->inter = inter;
  out->top_k = top_k;
  out->num_experts = num_experts;
  out->expert_offset = expert_offset;
  out->local_experts = local_experts;
  out->placed = placed;
  out->pairs = pairs;
  out->max_rows = rows;
  out->max_m_tiles = m_tiles;
  out->n_tiles_gemm1 = epm_ceil_div_i64(inter, 64);
  out->n_tiles_gemm2 = epm_ceil_div_i64(hidden, 128);

  int64_t b_counts = 0, b_offsets = 0, b_pair = 0, b_rowtok = 0, b_ip = 0, b_isf = 0, b_y = 0,
          b_out = 0, mh = 0;
  if (epm_mul_i64(local_experts, 2 * 4, &b_counts) ||
      epm_mul_i64(local_experts + 1, 8, &b_offsets))
    return too_big("expert counters", local_experts, 8);
  if (epm_mul_i64(pairs, 8, &b_pair)) return too_big("pair map", pairs, 8);
  if (epm_mul_i64(rows, 8, &b_rowtok)) return too_big("row map", rows, 8);
  if (epm_mul_i64(rows, inter / 2, &b_ip) || epm_mul_i64(rows, inter / 16, &b_isf))
    return too_big("intermediate", rows, inter);
  if (epm_mul3_i64(rows, hidden, 2, &b_y)) return too_big("GEMM2 output rows x hidden", rows, hidden);
  if (epm_mul_i64(tokens, hidden, &mh) || epm_mul_i64(mh, 4, &b_out))
    return too_big("output tokens x hidden", tokens, hidden);
  out->counts_bytes = (size_t)b_counts;
  out->offsets_bytes = (size_t)b_offsets;
  out->pair_row_bytes = (size_t)b_pair;
  out->row_token_bytes = (size_t)b_rowtok;
  out->inter_packed_bytes = (size_t)b_ip;
  out->inter_sf_bytes = (size_t)b_isf;
  out->y_bytes = (size_t)b_y;
  out->out_f32_bytes = (size_t)b_out;
  out->out_bf16_bytes = (size_t)b_out / 2;
  size_t total = 0;
  if (add_piece(&total, out->counts_bytes) || add_piece(&total, out->offsets_bytes) ||
      add_piece(&total, out->pair_row_bytes) || add_piece(&total, out->row_token_bytes) ||
      add_piece(&total, out->inter_packed_bytes) || add_piece(&total, out->inter_sf_bytes) ||
      add_piece(&total, out->y_bytes))
    return too_big("workspace", rows, hidden);
  out->workspace_bytes = total;

  out->block = EPM__PLAN_BLOCK;
  out->grid_pairs = epm__plan_grid(pairs);
  /* Finalize: one thread per 8 outputs. */
  out->grid_finalize = epm__plan_grid(mh / 8 + 1);
  /* GEMMs: persistent tiles; a few CTAs per SM of the largest GPU suffice. */
  int64_t tiles = out->max_m_tiles * (out->n_tiles_gemm1 > out->n_tiles_gemm2 ? out->n_tiles_gemm1
                                                                              : out->n_tiles_gemm2);
  out->grid_tiles = (uint32_t)(tiles < 1 ? 1 : (tiles > 1024 ? 1024 : tiles));
  return EPM_OK;
}

epm_status_t epm_moe_plan(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts,
                          int64_t top_k, int64_t expert_offset, int64_t local_experts,
                          epm_moe_plan_t *out) {
  return plan(tokens, hidden, inter, num_experts, top_k, expert_offset, local_experts, 0, out);
}

epm_status_t epm_moe_plan_placed(int64_t tokens, int64_t hidden, int64_t inter, int64_t num_experts,
                                 int64_t top_k, int64_t local_slots, epm_moe_plan_t *out) {
  return plan(tokens, hidden, inter, num_experts, top_k, 0, local_slots, 1, out);
}

epm_status_t epm_moe_workspace_carve(const epm_moe_plan_t *p, void *base_dev,
                                     epm_moe_workspace_t *ws) {
  if (!p || !ws || !base_dev)
    return epm_error(EPM_ERR_INVALID_ARG, "moe workspace: NULL plan, base or output");
  if ((uintptr_t)base_dev % EPM__WS_ALIGN != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "moe workspace: base %p is not %d-byte aligned", base_dev,
                     EPM__WS_ALIGN);
  uint8_t *b = (uint8_t *)base_dev;
  size_t off = 0;
#define EPM__TAKE(field, type, bytes)          \
  do {                                          \
    ws->field = (type *)(void *)(b + off);      \
    (void)add_piece(&off, (bytes));             \
  } while (0)
  EPM__TAKE(counts, int32_t, p->counts_bytes);
  ws->cursors = ws->counts + p->local_experts;
  EPM__TAKE(offsets, int64_t, p->offsets_bytes);
  EPM__TAKE(pair_row, int64_t, p->pair_row_bytes);
  EPM__TAKE(row_token, int64_t, p->row_token_bytes);
  EPM__TAKE(inter_packed, uint8_t, p->inter_packed_bytes);
  EPM__TAKE(inter_sf, uint8_t, p->inter_sf_bytes);
  EPM__TAKE(y, uint16_t, p->y_bytes);
#undef EPM__TAKE
  return EPM_OK;
}
