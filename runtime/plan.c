/* SPDX-License-Identifier: Apache-2.0 */
/* plan.c — sizes of one EP step per rank (epmoe/plan.h).
 *
 * Every product goes through the overflow-checked helpers of checked.h and a
 * failure names the operands, so a shape that does not fit in int64 is an
 * error with numbers, never a wrapped size. Bytes are derived from int64
 * element counts and widened to size_t only once they are known to fit.
 * This file compiles with -Wconversion -Wsign-conversion.
 */
#include "epmoe/plan.h"

#include <stddef.h>
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/kernels.h" /* epm_plan_local_rows_bound */

/* These write *out = 0 on failure too, so no caller reads an unset value. */
static epm_status_t mul(const char *what, int64_t a, int64_t b, int64_t *out) {
  *out = 0;
  if (epm_mul_i64(a, b, out))
    return epm_error(EPM_ERR_OVERFLOW, "%s: %lld x %lld overflows int64", what, (long long)a,
                     (long long)b);
  return EPM_OK;
}

static epm_status_t add(const char *what, int64_t a, int64_t b, int64_t *out) {
  *out = 0;
  if (epm_add_i64(a, b, out))
    return epm_error(EPM_ERR_OVERFLOW, "%s: %lld + %lld overflows int64", what, (long long)a,
                     (long long)b);
  return EPM_OK;
}

static epm_status_t round_up(const char *what, int64_t n, int64_t m, int64_t *out) {
  *out = 0;
  if (epm_round_up_i64(n, m, out))
    return epm_error(EPM_ERR_OVERFLOW, "%s: rounding %lld up to a multiple of %lld overflows int64",
                     what, (long long)n, (long long)m);
  return EPM_OK;
}

/* Fill a buffer of [rows, cols] elements of `bits` bits (4, 8, 16, 32, 64). */
static epm_status_t set_buf(epm_plan_buf_t *b, const char *what, int64_t rows, int64_t cols,
                            int bits) {
  int64_t elements = 0, bytes = 0;
  EPM_TRY(mul(what, rows, cols, &elements));
  if (bits == 4) {
    bytes = elements / 2 + elements % 2; /* two E2M1 codes per byte */
  } else {
    EPM_TRY(mul(what, elements, (int64_t)(bits / 8), &bytes));
  }
  b->rows = rows;
  b->cols = cols;
  b->elements = elements;
  b->bytes = (size_t)bytes;
  return EPM_OK;
}

/* NVFP4 block scales of a [rows, cols] matrix in the 128x4 swizzled layout:
 * rows padded to 128, scale columns (cols/16) padded to 4, one byte each
 * (spec §2.2). `experts` stacks that many such matrices. */
static epm_status_t set_swizzled_sf(epm_plan_buf_t *b, const char *what, int64_t experts,
                                    int64_t rows, int64_t cols) {
  int64_t prow, pcol, all_rows;
  EPM_TRY(round_up(what, rows, 128, &prow));
  EPM_TRY(round_up(what, cols / 16, 4, &pcol));
  EPM_TRY(mul(what, experts, prow, &all_rows));
  return set_buf(b, what, all_rows, pcol, 8);
}


/* Most gathered tokens whose worst case fits in `max_tiles` GEMM M-tiles:
 * the largest P with min(E_l, P) + floor((P - min(E_l, P)) / tile) <= L is
 * L when L < E_l, else E_l + (L - E_l + 1) * tile - 1 (vLLM PR #43599 uses
 * the same bound with the global E); tokens = P / min(k, E_l). */
static int64_t tokens_fitting_tiles(int64_t max_tiles, int64_t top_k, int64_t local_experts,
                                    int64_t tile) {
  int64_t kk = top_k < local_experts ? top_k : local_experts;
  int64_t pmax;
  if (max_tiles < local_experts) {
    pmax = max_tiles;
  } else {
    int64_t t;
    if (epm_mul_i64(max_tiles - local_experts + 1, tile, &t) ||
        epm_add_i64(t, local_experts - 1, &pmax))
      return INT64_MAX;
  }
  return pmax / kk;
}

static void add_limit(epm_plan_t *p, const char *kernel, const char *dim, const char *what,
                      int64_t value, int64_t limit, int64_t max_tokens, int64_t tokens) {
  epm_plan_limit_t *l = &p->limits[p->n_limits++];
  l->kernel = kernel;
  l->dim = dim;
  l->what = what;
  l->value = value;
  l->limit = limit;
  l->max_tokens = max_tokens;
  if (value <= limit)
    l->chunks = 1;
  else if (max_tokens < 1)
    l->chunks = 0;
  else
    l->chunks = epm_ceil_div_i64(tokens, max_tokens);
  if (l->chunks != 1) p->violations++;
}

static void plan_limits(epm_plan_t *p) {
  const epm_model_dims_t *d = &p->config.dims;
  const int64_t M = p->tokens_gathered, k = d->top_k, el = p->local_experts, tile = p->tile;
  int64_t t_gemm_y = tokens_fitting_tiles(EPM_CUDA_GRID_YZ_MAX, k, el, tile);
  int64_t t_rows = tokens_fitting_tiles(EPM_CUDA_GRID_X_MAX / tile, k, el, tile);
  /* ceil(2I / tile_n) == ceil(I / (tile_n / 2)); written so nothing overflows. */
  int64_t n1 = epm_ceil_div_i64(d->intermediate, EPM_PLAN_GEMM_TILE_N / 2);
  int64_t n2 = epm_ceil_div_i64(d->hidden, EPM_PLAN_GEMM_TILE_N);
  /* Splitting tokens never shrinks an N-tile count: no chunking fixes it. */
  int64_t t_n1 = n1 <= EPM_CUDA_GRID_X_MAX ? INT64_MAX : 0;
  int64_t t_n2 = n2 <= EPM_CUDA_GRID_X_MAX ? INT64_MAX : 0;

  p->n_limits = 0;
  p->violations = 0;
  add_limit(p, "route", "grid.x", "local tokens (one CTA per token)", p->tokens_local,
            EPM_CUDA_GRID_X_MAX, EPM_CUDA_GRID_X_MAX, p->tokens_local);
  add_limit(p, "quantize", "grid.x", "local tokens (one CTA per token)", p->tokens_local,
            EPM_CUDA_GRID_X_MAX, EPM_CUDA_GRID_X_MAX, p->tokens_local);
  add_limit(p, "gemm1", "grid.x", "N-tiles of 2I", n1, EPM_CUDA_GRID_X_MAX, t_n1, M);
  add_limit(p, "gemm1", "grid.y", "M-tiles of permuted rows", p->gemm_m_tiles_max,
            EPM_CUDA_GRID_YZ_MAX, t_gemm_y, M);
  add_limit(p, "swiglu_requant", "grid.x", "permuted rows (one CTA per row)",
            p->permuted_rows_max, EPM_CUDA_GRID_X_MAX, t_rows, M);
  add_limit(p, "gemm2", "grid.x", "N-tiles of H", n2, EPM_CUDA_GRID_X_MAX, t_n2, M);
  add_limit(p, "gemm2", "grid.y", "M-tiles of permuted rows", p->gemm_m_tiles_max,
            EPM_CUDA_GRID_YZ_MAX, t_gemm_y, M);
  add_limit(p, "finalize", "grid.x", "gathered tokens (one CTA per token)", M,
            EPM_CUDA_GRID_X_MAX, EPM_CUDA_GRID_X_MAX, M);

  /* The expert stage chunks the gathered batch; the local kernels (the first
   * two) are bounded by m_r alone. */
  int64_t tmin = M;
  for (size_t i = 2; i < p->n_limits; i++)
    if (p->limits[i].max_tokens < tmin) tmin = p->limits[i].max_tokens;
  p->max_tokens_per_chunk = tmin;
  if (M == 0)
    p->chunks = 1;
  else if (tmin < 1)
    p->chunks = 0;
  else
    p->chunks = epm_ceil_div_i64(M, tmin);
}

static epm_status_t check_config(const epm_plan_config_t *cfg, int64_t *tile) {
  if (!cfg) return epm_error(EPM_ERR_INVALID_ARG, "plan config pointer is NULL");
  epm_status_t st = epm_model_dims_validate(&cfg->dims);
  if (st != EPM_OK) return epm_error_wrap(st, "model '%s'", cfg->dims.name);
  if (cfg->ep_size < 1)
    return epm_error(EPM_ERR_INVALID_ARG, "ep_size = %lld must be >= 1", (long long)cfg->ep_size);
  const epm_placement_t *pl = cfg->placement;
  if (pl && (pl->num_experts != cfg->dims.num_experts || pl->ep_size != cfg->ep_size))
    return epm_error(EPM_ERR_INVALID_ARG,
                     "the placement maps %lld experts over %lld ranks; the plan is for %lld experts over %lld ranks",
                     (long long)pl->num_experts, (long long)pl->ep_size, (long long)cfg->dims.num_experts,
                     (long long)cfg->ep_size);
  if (!pl && cfg->dims.num_experts < cfg->ep_size)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "num_experts = %lld cannot give each of ep_size = %lld ranks an expert (add redundant "
                     "experts with a placement)",
                     (long long)cfg->dims.num_experts, (long long)cfg->ep_size);
  if (cfg->rank < 0 || cfg->rank >= cfg->ep_size)
    return epm_error(EPM_ERR_INVALID_ARG, "rank = %lld is outside [0, ep_size = %lld)",
                     (long long)cfg->rank, (long long)cfg->ep_size);
  if (cfg->recv_capacity < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "recv_capacity = %lld must be >= 0 (0 = the worst case)",
                     (long long)cfg->recv_capacity);
  *tile = cfg->tile == 0 ? EPM_PLAN_DEFAULT_TILE : cfg->tile;
  if (*tile < 1 || *tile > EPM_PLAN_MAX_TILE)
    return epm_error(EPM_ERR_INVALID_ARG, "tile = %lld must be between 1 and %d",
                     (long long)cfg->tile, EPM_PLAN_MAX_TILE);
  return EPM_OK;
}

/* m_r, max m_r and M = sum m_r. */
static epm_status_t count_tokens(const epm_plan_config_t *cfg, int64_t *local, int64_t *max,
                                 int64_t *gathered) {
  if (!cfg->tokens_per_rank) {
    if (cfg->max_tokens_per_rank < 0)
      return epm_error(EPM_ERR_INVALID_ARG, "max_tokens_per_rank = %lld is negative",
                       (long long)cfg->max_tokens_per_rank);
    *local = *max = cfg->max_tokens_per_rank;
    return mul("gathered tokens (ep_size x max_tokens_per_rank)", cfg->ep_size,
               cfg->max_tokens_per_rank, gathered);
  }
  int64_t sum = 0, hi = 0;
  for (int64_t r = 0; r < cfg->ep_size; r++) {
    int64_t m = cfg->tokens_per_rank[r];
    if (m < 0)
      return epm_error(EPM_ERR_INVALID_ARG, "tokens_per_rank[%lld] = %lld is negative",
                       (long long)r, (long long)m);
    if (epm_add_i64(sum, m, &sum))
      return epm_error(EPM_ERR_OVERFLOW,
                       "gathered tokens: the sum of tokens_per_rank overflows int64 at rank %lld "
                       "(%lld tokens)",
                       (long long)r, (long long)m);
    if (m > hi) hi = m;
  }
  *local = cfg->tokens_per_rank[cfg->rank];
  *max = hi;
  *gathered = sum;
  return EPM_OK;
}

static epm_status_t plan_tokens(epm_plan_t *p, const epm_placement_t *pl) {
  const epm_model_dims_t *d = &p->config.dims;
  const int64_t M = p->tokens_gathered, ep = p->config.ep_size;
  int64_t mk;
  p->local_experts = epm_placement_rank_slots(pl, p->config.rank);
  p->expert_offset = pl->rank_start[p->config.rank];
  p->num_slots = pl->num_slots;
  EPM_TRY(mul("expanded pairs (gathered tokens x top_k)", M, d->top_k, &p->expanded_pairs));
  mk = p->expanded_pairs;
  EPM_TRY(add("uniform local pairs", mk, ep - 1, &mk));
  p->local_pairs_uniform = mk / ep;
  EPM_TRY(mul("alltoall send rows (m_r x min(top_k, ep_size))", p->tokens_local,
              d->top_k < ep ? d->top_k : ep, &p->a2a_send_rows));
  const int64_t cap = p->config.recv_capacity;
  p->a2a_recv_rows = cap > 0 && cap < M ? cap : M;
  return epm_plan_local_rows_bound(M, d->top_k, p->local_experts, p->tile, &p->local_pairs_max,
                                   &p->gemm_m_tiles_max, &p->permuted_rows_max);
}

static epm_status_t plan_activations(epm_plan_t *p) {
  const epm_model_dims_t *d = &p->config.dims;
  const int64_t H = d->hidden, I = d->intermediate, E = d->num_experts, k = d->top_k;
  const int64_t mr = p->tokens_local, M = p->tokens_gathered, R = p->permuted_rows_max;
  const int64_t S = d->shared_experts, Is = d->shared_intermediate;
  int64_t I2, Is2;
  EPM_TRY(mul("2I", 2, I, &I2));
  EPM_TRY(mul("2Is", 2, Is, &Is2));

  EPM_TRY(set_buf(&p->x_local, "x_local [m_r, H]", mr, H, 16));
  EPM_TRY(set_buf(&p->logits_local, "logits_local [m_r, E]", mr, E, 32));
  EPM_TRY(set_buf(&p->topk_ids_local, "topk_ids_local [m_r, k]", mr, k, 32));
  EPM_TRY(set_buf(&p->topk_w_local, "topk_w_local [m_r, k]", mr, k, 32));
  EPM_TRY(set_buf(&p->xq_local, "xq_local [m_r, H]", mr, H, 4));
  EPM_TRY(set_buf(&p->xsf_local, "xsf_local [m_r, H/16]", mr, H / 16, 8));
  EPM_TRY(set_swizzled_sf(&p->xsf_local_swz, "xsf_local_swz", 1, mr, H));

  EPM_TRY(set_buf(&p->xq_gathered, "xq_gathered [M, H]", M, H, 4));
  EPM_TRY(set_buf(&p->xsf_gathered, "xsf_gathered [M, H/16]", M, H / 16, 8));
  EPM_TRY(set_swizzled_sf(&p->xsf_gathered_swz, "xsf_gathered_swz", 1, M, H));
  EPM_TRY(set_buf(&p->topk_ids_gathered, "topk_ids_gathered [M, k]", M, k, 32));
  EPM_TRY(set_buf(&p->topk_w_gathered, "topk_w_gathered [M, k]", M, k, 32));

  EPM_TRY(set_buf(&p->expanded_to_permuted, "expanded_to_permuted [M, k]", M, k, 64));
  EPM_TRY(set_buf(&p->permuted_to_token, "permuted_to_token [R]", R, 1, 64));
  EPM_TRY(set_buf(&p->expert_row_offsets, "expert_row_offsets [E_l + 1]", p->local_experts + 1,
                  1, 64));
  EPM_TRY(set_buf(&p->gemm1_out, "gemm1_out [R, 2I]", R, I2, 16));
  EPM_TRY(set_buf(&p->inter_q, "inter_q [R, I]", R, I, 4));
  EPM_TRY(set_swizzled_sf(&p->inter_sf, "inter_sf", 1, R, I));
  EPM_TRY(set_buf(&p->gemm2_out, "gemm2_out [R, H]", R, H, 16));
  EPM_TRY(set_buf(&p->partial_y, "partial_y [M, H]", M, H, 16));
  EPM_TRY(set_buf(&p->y_local, "y_local [m_r, H]", mr, H, 16));

  /* S is 0 or 1 (validated): a model without a shared expert has 0 rows. */
  EPM_TRY(set_buf(&p->shared_gemm1_out, "shared_gemm1_out [m_r, 2Is]", mr * S, Is2, 16));
  EPM_TRY(set_buf(&p->shared_inter_q, "shared_inter_q [m_r, Is]", mr * S, Is, 4));
  EPM_TRY(set_swizzled_sf(&p->shared_inter_sf, "shared_inter_sf", S, mr, Is));
  EPM_TRY(set_buf(&p->shared_out, "shared_out [m_r, H]", mr * S, H, 16));
  return EPM_OK;
}

static epm_status_t plan_weights(epm_plan_t *p) {
  const epm_model_dims_t *d = &p->config.dims;
  const int64_t H = d->hidden, I = d->intermediate, el = p->local_experts;
  const int64_t S = d->shared_experts, Is = d->shared_intermediate;
  int64_t rows, I2, Is2;
  /* Dims come from presets or user overrides: even 2I is checked. */
  EPM_TRY(mul("2I", 2, I, &I2));
  EPM_TRY(mul("2Is", 2, Is, &Is2));
  EPM_TRY(mul("w13_q rows (E_l x 2I)", el, I2, &rows));
  EPM_TRY(set_buf(&p->w13_q, "w13_q [E_l x 2I, H]", rows, H, 4));
  EPM_TRY(set_swizzled_sf(&p->w13_sf, "w13_sf", el, I2, H));
  EPM_TRY(mul("w2_q rows (E_l x H)", el, H, &rows));
  EPM_TRY(set_buf(&p->w2_q, "w2_q [E_l x H, I]", rows, I, 4));
  EPM_TRY(set_swizzled_sf(&p->w2_sf, "w2_sf", el, H, I));
  EPM_TRY(set_buf(&p->expert_scalars, "expert_scalars [E_l, 3]", el, 3, 32));
  EPM_TRY(set_buf(&p->routing_bias, "routing_bias [E]",
                  d->routing == EPM_ROUTING_DEEPSEEK_V3 ? d->num_experts : 0, 1, 32));
  EPM_TRY(set_buf(&p->shared_w13_q, "shared_w13_q [S x 2Is, H]", S * Is2, H, 4));
  EPM_TRY(set_swizzled_sf(&p->shared_w13_sf, "shared_w13_sf", S, Is2, H));
  EPM_TRY(set_buf(&p->shared_w2_q, "shared_w2_q [S x H, Is]", S * H, Is, 4));
  EPM_TRY(set_swizzled_sf(&p->shared_w2_sf, "shared_w2_sf", S, H, Is));
  EPM_TRY(set_buf(&p->shared_scalars, "shared_scalars [S, 3]", S, 3, 32));
  return EPM_OK;
}

static epm_status_t plan_totals(epm_plan_t *p) {
  size_t by_group[EPM_PLAN_GROUP_COUNT] = {0};
  epm_plan_buffer_info_t b;
  for (size_t i = 0; i < epm_plan_buffer_count(); i++) {
    EPM_TRY(epm_plan_buffer(p, i, &b));
    if (epm_add_size(by_group[b.group], b.buf.bytes, &by_group[b.group]))
      return epm_error(EPM_ERR_OVERFLOW, "total bytes of group %s overflow size_t at %s",
                       epm_plan_group_name(b.group), b.name);
  }
  p->bytes_local = by_group[EPM_PLAN_GROUP_LOCAL];
  p->bytes_gathered = by_group[EPM_PLAN_GROUP_GATHERED];
  p->bytes_expert = by_group[EPM_PLAN_GROUP_EXPERT];
  p->bytes_shared = by_group[EPM_PLAN_GROUP_SHARED];
  p->bytes_weights = by_group[EPM_PLAN_GROUP_WEIGHTS];
  size_t act = 0;
  if (epm_add_size(p->bytes_local, p->bytes_gathered, &act) ||
      epm_add_size(act, p->bytes_expert, &act) || epm_add_size(act, p->bytes_shared, &act) ||
      epm_add_size(act, p->bytes_weights, &p->bytes_total))
    return epm_error(EPM_ERR_OVERFLOW, "total bytes of the plan overflow size_t");
  p->bytes_activations = act;
  return EPM_OK;
}

epm_status_t epm_plan_expert_ws_bytes(const epm_plan_t *p, int64_t rows, size_t *out) {
  const epm_model_dims_t *d = &p->config.dims;
  const int64_t H = d->hidden, I = d->intermediate, k = d->top_k, el = p->local_experts;
  int64_t pairs, tiles, R, I2;
  if (rows < 0) return epm_error(EPM_ERR_INVALID_ARG, "expert workspace of %lld rows", (long long)rows);
  EPM_TRY(mul("2I", 2, I, &I2));
  EPM_TRY(epm_plan_local_rows_bound(rows, k, el, p->tile, &pairs, &tiles, &R));
  epm_plan_buf_t b[7];
  EPM_TRY(set_buf(&b[0], "expanded_to_permuted [rows, k]", rows, k, 64));
  EPM_TRY(set_buf(&b[1], "permuted_to_token [R]", R, 1, 64));
  EPM_TRY(set_buf(&b[2], "expert_row_offsets [E_l + 1]", el + 1, 1, 64));
  EPM_TRY(set_buf(&b[3], "gemm1_out [R, 2I]", R, I2, 16));
  EPM_TRY(set_buf(&b[4], "inter_q [R, I]", R, I, 4));
  EPM_TRY(set_swizzled_sf(&b[5], "inter_sf", 1, R, I));
  EPM_TRY(set_buf(&b[6], "gemm2_out [R, H]", R, H, 16));
  size_t sum = 0;
  for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
    if (epm_add_size(sum, b[i].bytes, &sum))
      return epm_error(EPM_ERR_OVERFLOW, "expert workspace of %lld rows overflows size_t", (long long)rows);
  *out = sum;
  return EPM_OK;
}

/* The largest chunk whose workspace fits the budget (the workspace grows
 * with the rows, so a binary search over [1, cap] finds it). */
static epm_status_t plan_chunks(epm_plan_t *p) {
  const int64_t M = p->tokens_gathered;
  const size_t budget = p->config.workspace_bytes;
  EPM_TRY(epm_plan_expert_ws_bytes(p, M, &p->bytes_expert_ws));
  int64_t cap = p->max_tokens_per_chunk > 0 && p->max_tokens_per_chunk < M ? p->max_tokens_per_chunk : M;
  if (cap < 1) cap = 1; /* M == 0, or no grid fits (reported by the limits) */
  size_t need = 0;
  if (budget > 0) {
    EPM_TRY(epm_plan_expert_ws_bytes(p, 1, &need));
    if (need > budget)
      return epm_error(EPM_ERR_INVALID_ARG,
                       "workspace budget %zu bytes is below the %zu bytes the expert stage needs for one "
                       "gathered row (H %lld, I %lld, %lld local experts, tile %lld)",
                       budget, need, (long long)p->config.dims.hidden, (long long)p->config.dims.intermediate,
                       (long long)p->local_experts, (long long)p->tile);
    int64_t lo = 1, hi = cap; /* invariant: lo fits */
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      EPM_TRY(epm_plan_expert_ws_bytes(p, mid, &need));
      if (need <= budget)
        lo = mid;
      else
        hi = mid - 1;
    }
    cap = lo;
  }
  p->ws_chunk_tokens = cap;
  p->ws_chunks = M == 0 ? 1 : epm_ceil_div_i64(M, cap);
  EPM_TRY(epm_plan_expert_ws_bytes(p, M < cap ? M : cap, &p->bytes_expert_ws_chunk));
  p->bytes_total_chunked = p->bytes_total - p->bytes_expert_ws + p->bytes_expert_ws_chunk;
  return EPM_OK;
}

epm_status_t epm_plan_compute(const epm_plan_config_t *cfg, epm_plan_t *out) {
  epm_plan_t p;
  int64_t tile = 0;
  EPM_TRY(check_config(cfg, &tile));
  memset(&p, 0, sizeof p);
  p.config = *cfg;
  p.config.tokens_per_rank = NULL;
  p.tile = tile;
  EPM_TRY(count_tokens(cfg, &p.tokens_local, &p.tokens_max, &p.tokens_gathered));
  p.config.placement = NULL;
  if (cfg->placement) {
    EPM_TRY(plan_tokens(&p, cfg->placement));
  } else {
    epm_placement_t dflt = EPM_PLACEMENT_INIT;
    EPM_TRY(epm_placement_default(cfg->dims.num_experts, cfg->ep_size, 0, &dflt));
    epm_status_t st = plan_tokens(&p, &dflt);
    epm_placement_free(&dflt);
    EPM_TRY(st);
  }
  EPM_TRY(plan_activations(&p));
  EPM_TRY(plan_weights(&p));
  EPM_TRY(plan_totals(&p));
  plan_limits(&p);
  EPM_TRY(plan_chunks(&p));
  *out = p;
  return EPM_OK;
}
