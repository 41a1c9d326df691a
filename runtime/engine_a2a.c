/* SPDX-License-Identifier: Apache-2.0 */
/* engine_a2a.c — the alltoall dispatch mode of the step engine and the
 * per-step mode choice (epmoe/engine.h, epmoe/dispatch.h).
 *
 *   route plan   which ranks own at least one of each local token's top-k
 *                experts: send_cnt[d] token rows to rank d, and send_tok,
 *                the local token of each send row, destination-major
 *                (ranks in order, tokens in order within a rank)
 *   exchange     one rows exchange of {m_r, send_cnt[0..P)} from every
 *                rank: every rank holds the whole count matrix, checks it,
 *                checks every rank's receive total against the capacity and
 *                picks the mode, all from the same numbers, so every rank
 *                takes the same branch (or returns the same error; auto
 *                takes the allgather mode instead when a rank would overflow)
 *   dispatch     pack the 4 arrays (fp4 row, scales, ids, weights) by
 *                send_tok; one all-to-all-v
 *   experts      the backend's own op over the received rows: their ids are
 *                global, so it computes exactly the local-expert partial it
 *                would compute for them in the gathered batch
 *   combine      all-to-all-v of the partial rows back (transposed counts);
 *                the token's rank adds its rows in row order = rank order of
 *                the expert owners, in fp32 from -0 (so the first term
 *                enters exactly: -0 + x = x for every x, +0 and -0 too), and
 *                rounds once to bf16 when partials are bf16, as the
 *                reduce-scatter does
 * In allgather mode a rank owning none of a token's experts adds an exact +0
 * (the finalize sum starts at +0 and never yields -0), so both modes give
 * the same bits.
 *
 * The packing and the sum run on the host: on the cpu backend in place, on a
 * device backend through host copies (no kernels for them yet).
 */
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#include "epmoe/checked.h"
#include "epmoe/nvfp4.h"

static epm_status_t rows_size(int64_t rows, int64_t row, const char *what, size_t *bytes) {
  if (rows < 0 || row < 0 || epm_mul_size((size_t)rows, (size_t)row, bytes))
    return epm_error(EPM_ERR_OVERFLOW, "alltoall buffer %s: %lld rows x %lld bytes overflows size_t", what,
                     (long long)rows, (long long)row);
  return EPM_OK;
}

static epm_status_t be_rows(epm_engine_t *e, int64_t rows, int64_t row, const char *what, void **out) {
  size_t bytes = 0;
  EPM_TRY(rows_size(rows, row, what, &bytes));
  epm_status_t st = epm_backend_alloc(e->be, bytes, out);
  if (st != EPM_OK) return epm_error_wrap(st, "alltoall buffer %s (%zu bytes)", what, bytes);
  e->buffer_bytes += bytes;
  return EPM_OK;
}

static epm_status_t host_rows(int64_t rows, int64_t row, const char *what, void **out) {
  size_t bytes = 0;
  EPM_TRY(rows_size(rows, row, what, &bytes));
  *out = malloc(bytes ? bytes : 1);
  if (!*out) return epm_error(EPM_ERR_NOMEM, "alltoall host buffer %s (%zu bytes)", what, bytes);
  return EPM_OK;
}

epm_status_t epm__a2a_alloc(epm_engine_t *e, int64_t send_rows, int64_t recv_rows) {
  if (send_rows != e->send_cap || recv_rows != e->recv_cap)
    return epm_error(EPM_ERR_INTERNAL, "alltoall rows: plan %lld/%lld, engine %lld/%lld", (long long)send_rows,
                     (long long)recv_rows, (long long)e->send_cap, (long long)e->recv_cap);
  const int64_t H = e->H, pb = H / 2, fb = H / EPM_NVFP4_BLOCK, ib = e->k * 4, cb = H * (int64_t)e->partial_elem;
  const int64_t S = e->send_cap, R = e->recv_cap;
  EPM_TRY(be_rows(e, S, pb, "fp4 rows out", (void **)&e->packed_snd));
  EPM_TRY(be_rows(e, S, fb, "scales out", (void **)&e->sf_snd));
  EPM_TRY(be_rows(e, S, ib, "ids out", (void **)&e->ids_snd));
  EPM_TRY(be_rows(e, S, ib, "weights out", (void **)&e->wts_snd));
  EPM_TRY(be_rows(e, R, pb, "fp4 rows in", (void **)&e->packed_rcv));
  EPM_TRY(be_rows(e, R, fb, "scales in", (void **)&e->sf_rcv));
  EPM_TRY(be_rows(e, R, ib, "ids in", (void **)&e->ids_rcv));
  EPM_TRY(be_rows(e, R, ib, "weights in", (void **)&e->wts_rcv));
  EPM_TRY(be_rows(e, R, cb, "partials of received rows", &e->part_rcv));
  EPM_TRY(be_rows(e, S, cb, "partials coming back", &e->comb_rcv));
  if (!epm_backend_is_device(e->be)) { /* host memory already: work in place */
    e->h_ids_loc = e->ids_loc;
    e->h_wts_loc = e->wts_loc;
    e->h_packed_loc = e->packed_loc;
    e->h_sf_loc = e->sf_loc;
    e->h_packed_snd = e->packed_snd;
    e->h_sf_snd = e->sf_snd;
    e->h_ids_snd = e->ids_snd;
    e->h_wts_snd = e->wts_snd;
    e->h_comb = e->comb_rcv;
    e->h_y32 = e->y32;
    return EPM_OK;
  }
  e->host_mirrors = 1;
  const int64_t m = e->max_m;
  EPM_TRY(host_rows(m, ib, "ids", (void **)&e->h_ids_loc));
  EPM_TRY(host_rows(m, ib, "weights", (void **)&e->h_wts_loc));
  EPM_TRY(host_rows(m, pb, "fp4 rows", (void **)&e->h_packed_loc));
  EPM_TRY(host_rows(m, fb, "scales", (void **)&e->h_sf_loc));
  EPM_TRY(host_rows(S, pb, "fp4 rows out", (void **)&e->h_packed_snd));
  EPM_TRY(host_rows(S, fb, "scales out", (void **)&e->h_sf_snd));
  EPM_TRY(host_rows(S, ib, "ids out", (void **)&e->h_ids_snd));
  EPM_TRY(host_rows(S, ib, "weights out", (void **)&e->h_wts_snd));
  EPM_TRY(host_rows(S, cb, "partials coming back", &e->h_comb));
  EPM_TRY(host_rows(m, H * 4, "routed sum", (void **)&e->h_y32));
  return EPM_OK;
}

void epm__a2a_free(epm_engine_t *e) {
  void *bufs[] = {e->packed_snd, e->sf_snd, e->ids_snd, e->wts_snd, e->packed_rcv,
                  e->sf_rcv,     e->ids_rcv, e->wts_rcv, e->part_rcv, e->comb_rcv};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) epm_backend_free(e->be, bufs[i]);
  if (e->host_mirrors) {
    void *h[] = {e->h_ids_loc, e->h_wts_loc, e->h_packed_loc, e->h_sf_loc, e->h_packed_snd,
                 e->h_sf_snd,  e->h_ids_snd, e->h_wts_snd,    e->h_comb,   e->h_y32};
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) free(h[i]);
  }
}

void epm__a2a_borrow(epm_engine_t *e, const epm_engine_t *o) {
  e->packed_snd = o->packed_snd;
  e->sf_snd = o->sf_snd;
  e->ids_snd = o->ids_snd;
  e->wts_snd = o->wts_snd;
  e->packed_rcv = o->packed_rcv;
  e->sf_rcv = o->sf_rcv;
  e->ids_rcv = o->ids_rcv;
  e->wts_rcv = o->wts_rcv;
  e->part_rcv = o->part_rcv;
  e->comb_rcv = o->comb_rcv;
  e->h_ids_loc = o->h_ids_loc;
  e->h_wts_loc = o->h_wts_loc;
  e->h_packed_loc = o->h_packed_loc;
  e->h_sf_loc = o->h_sf_loc;
  e->h_packed_snd = o->h_packed_snd;
  e->h_sf_snd = o->h_sf_snd;
  e->h_ids_snd = o->h_ids_snd;
  e->h_wts_snd = o->h_wts_snd;
  e->h_comb = o->h_comb;
  e->h_y32 = o->h_y32;
  e->host_mirrors = 0; /* the owner frees them */
}

/* Where each expert's pairs go. The replica rule picks a copy by the token's
 * gathered row, which alltoall does not know before its exchange (and the
 * receiver would see another row number), so alltoall takes placements in
 * which every expert has one slot: uneven splits and custom maps, not
 * redundant experts. */
static epm_status_t owner_table(epm_engine_t *e, const epm_placement_t *given) {
  epm_placement_t dflt = EPM_PLACEMENT_INIT;
  const epm_placement_t *p = given;
  epm_status_t st = EPM_OK;
  if (!p) {
    EPM_TRY(epm_placement_default(e->E, e->size, 0, &dflt));
    p = &dflt;
  }
  e->expert_rank = malloc((size_t)e->E * sizeof *e->expert_rank);
  if (!e->expert_rank) st = epm_error(EPM_ERR_NOMEM, "alltoall owner table of %lld experts", (long long)e->E);
  for (int64_t x = 0; st == EPM_OK && x < e->E; x++) {
    if (epm_placement_replicas(p, x) != 1) {
      st = epm_error(EPM_ERR_INVALID_ARG,
                     "%s dispatch needs one slot per expert, but expert %lld has %lld copies (%lld redundant slots); "
                     "use --dispatch allgather with redundant experts",
                     epm_dispatch_mode_name(e->cfg.dispatch), (long long)x, (long long)epm_placement_replicas(p, x),
                     (long long)(p->num_slots - e->E));
      break;
    }
    e->expert_rank[x] = (int32_t)epm_placement_slot_rank(p, epm_placement_slot(p, x, 0));
  }
  epm_placement_free(&dflt);
  return st;
}

epm_status_t epm__a2a_host_init(epm_engine_t *e, const epm_placement_t *p) {
  if (!e->a2a_bufs) return EPM_OK;
  EPM_TRY(owner_table(e, p));
  const size_t P = (size_t)e->size;
  e->send_tok = malloc((e->send_cap > 0 ? (size_t)e->send_cap : 1) * sizeof *e->send_tok);
  e->send_cnt = calloc(P, sizeof *e->send_cnt);
  e->xrow = calloc(P + 1, sizeof *e->xrow);
  e->xall = calloc(P * (P + 1), sizeof *e->xall);
  e->matrix = calloc(P * P, sizeof *e->matrix);
  e->matrix_t = calloc(P * P, sizeof *e->matrix_t);
  e->scratch_i = calloc(2 * P, sizeof *e->scratch_i);
  e->bytes_s = calloc(P, sizeof *e->bytes_s);
  e->bytes_r = calloc(P, sizeof *e->bytes_r);
  if (!e->send_tok || !e->send_cnt || !e->xrow || !e->xall || !e->matrix || !e->matrix_t || !e->scratch_i ||
      !e->bytes_s || !e->bytes_r)
    return epm_error(EPM_ERR_NOMEM, "alltoall count arrays for %zu ranks and %lld send rows", P,
                     (long long)e->send_cap);
  return EPM_OK;
}

void epm__a2a_host_free(epm_engine_t *e) {
  free(e->send_tok);
  free(e->send_cnt);
  free(e->xrow);
  free(e->xall);
  free(e->expert_rank);
  free(e->matrix);
  free(e->matrix_t);
  free(e->scratch_i);
  free(e->bytes_s);
  free(e->bytes_r);
}

epm_status_t epm__a2a_route_plan(epm_engine_t *e, int64_t m) {
  const int P = e->size;
  const int64_t k = e->k, E = e->E;
  const int32_t *ids = e->ids_loc;
  if (epm_backend_is_device(e->be) && m > 0) {
    EPM_TRY(epm_backend_copy_d2h(e->be, e->h_ids_loc, e->ids_loc, (size_t)(m * k) * sizeof(int32_t)));
    EPM_TRY(epm_backend_sync(e->be));
    ids = e->h_ids_loc;
  }
  int64_t *seen = e->scratch_i, *pos = e->scratch_i + P;
  for (int d = 0; d < P; d++) {
    e->send_cnt[d] = 0;
    seen[d] = -1;
  }
  for (int64_t t = 0; t < m; t++)
    for (int64_t j = 0; j < k; j++) {
      const int32_t id = ids[t * k + j];
      if (id < 0 || id >= E)
        return epm_error(EPM_ERR_INTERNAL, "rank %d: token %lld slot %lld routed to expert %d outside [0, %lld)",
                         e->rank, (long long)t, (long long)j, (int)id, (long long)E);
      const int64_t d = e->expert_rank[id];
      if (seen[d] != t) {
        seen[d] = t;
        e->send_cnt[d]++;
      }
    }
  int64_t off = 0;
  for (int d = 0; d < P; d++) {
    pos[d] = off;
    off += e->send_cnt[d];
    seen[d] = -1;
  }
  for (int64_t t = 0; t < m; t++)
    for (int64_t j = 0; j < k; j++) {
      const int64_t d = e->expert_rank[ids[t * k + j]];
      if (seen[d] != t) {
        seen[d] = t;
        e->send_tok[pos[d]++] = t;
      }
    }
  for (int d = 0; d < P; d++) e->xrow[1 + d] = e->send_cnt[d];
  return EPM_OK;
}

/* After the rows exchange: every rank's row, validated the same way on
 * every rank, into counts / matrix / matrix_t; the capacity check. */
static epm_status_t check_rows(epm_engine_t *e, epm__step_plan_t *sp) {
  const int P = e->size, W = P + 1;
  int64_t M = 0;
  for (int r = 0; r < P; r++)
    if (e->xall[(size_t)r * (size_t)W] == EPM__STEP_FAILED)
      return epm_error(EPM_ERR_ABORTED, "step abandoned: rank %d failed before the dispatch (see its log)", r);
  for (int r = 0; r < P; r++) {
    const int64_t *row = e->xall + (size_t)r * (size_t)W;
    if (row[0] < 0 || row[0] > e->max_m)
      return epm_error(EPM_ERR_INVALID_ARG, "rank %d sent %lld tokens; capacity is [0, %lld] per rank", r,
                       (long long)row[0], (long long)e->max_m);
    e->counts[r] = row[0];
    M += row[0];
    for (int d = 0; d < P; d++) {
      /* A token goes at most once to a rank. */
      if (row[1 + d] < 0 || row[1 + d] > row[0])
        return epm_error(EPM_ERR_INVALID_ARG, "rank %d sends %lld token rows to rank %d but has %lld tokens", r,
                         (long long)row[1 + d], d, (long long)row[0]);
      e->matrix[(size_t)r * (size_t)P + (size_t)d] = row[1 + d];
      e->matrix_t[(size_t)d * (size_t)P + (size_t)r] = row[1 + d];
    }
  }
  for (int d = 0; d < P; d++) {
    int64_t in = 0, most = 0;
    int from = 0;
    for (int r = 0; r < P; r++) {
      const int64_t c = e->matrix[(size_t)r * (size_t)P + (size_t)d];
      in += c;
      if (c > most) most = c, from = r;
    }
    if (in > e->recv_cap && e->cfg.dispatch == EPM_DISPATCH_AUTO) {
      sp->a2a_over = 1; /* auto runs the allgather mode, which needs no capacity */
    } else if (in > e->recv_cap) {
      return epm_error(EPM_ERR_OVERFLOW,
                       "alltoall dispatch: rank %d would receive %lld token rows this step (the most, %lld, from "
                       "rank %d), above its receive capacity of %lld rows (recv_capacity; 0 sizes it for any "
                       "routing: EP x max_tokens_per_rank = %lld)",
                       d, (long long)in, (long long)most, from, (long long)e->recv_cap, (long long)e->max_M);
    }
  }
  sp->M = M;
  sp->rows_out = sp->rows_in = 0;
  for (int r = 0; r < P; r++) {
    sp->rows_out += e->matrix[(size_t)e->rank * (size_t)P + (size_t)r];
    sp->rows_in += e->matrix[(size_t)r * (size_t)P + (size_t)e->rank];
  }
  return EPM_OK;
}

epm_status_t epm__a2a_exchange(epm_engine_t *e, int64_t m_or_failed, epm_status_t local, epm__step_plan_t *sp) {
  const int P = e->size;
  e->xrow[0] = m_or_failed;
  if (m_or_failed == EPM__STEP_FAILED)
    for (int d = 0; d < P; d++) e->xrow[1 + d] = 0;
  EPM_TRY(epm_comm_exchange_rows(e->comm, e->xrow, P + 1, e->xall));
  if (local != EPM_OK) return local; /* this rank's own message */
  EPM_TRY(check_rows(e, sp));
  sp->mode = e->cfg.dispatch;
  if (e->cfg.dispatch != EPM_DISPATCH_AUTO) return EPM_OK;
  /* The same numbers on every rank and the same config (the engine
   * contract), so every rank computes the same choice. */
  for (int i = 0; i < EPM_DISPATCH_MODES; i++) {
    EPM_TRY(epm_dispatch_bytes((epm_dispatch_mode_t)i, P, e->counts, e->matrix, e->drow, e->crow, e->bytes_s,
                               e->bytes_r, &sp->model_bytes[i]));
    sp->model_s[i] = epm_dispatch_seconds(&e->cost, (epm_dispatch_mode_t)i, sp->model_bytes[i]);
  }
  sp->mode = !sp->a2a_over && sp->model_s[EPM_DISPATCH_ALLTOALL] < sp->model_s[EPM_DISPATCH_ALLGATHER]
                 ? EPM_DISPATCH_ALLTOALL
                 : EPM_DISPATCH_ALLGATHER;
  return EPM_OK;
}

/* dst[i] = src[tok[i]] for n rows of `row` bytes (host). */
static void pack(void *dst, const void *src, size_t row, const int64_t *tok, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    memcpy((char *)dst + (size_t)i * row, (const char *)src + (size_t)tok[i] * row, row);
}

/* y[t] = the rows of token t added in row order (fp32, from -0), bf16
 * partials widened and the sum rounded once to bf16 (host). */
static void combine_sum(const void *rows, epm_dtype_t dt, const int64_t *tok, int64_t n, int64_t m, int64_t H,
                        float *y) {
  for (int64_t i = 0; i < m * H; i++) y[i] = -0.0f;
  for (int64_t r = 0; r < n; r++) {
    float *yt = y + tok[r] * H;
    if (dt == EPM_DTYPE_F32) {
      const float *x = (const float *)rows + r * H;
      for (int64_t h = 0; h < H; h++) yt[h] += x[h];
    } else {
      const epm_bf16_t *x = (const epm_bf16_t *)rows + r * H;
      for (int64_t h = 0; h < H; h++) yt[h] += epm_bf16_to_f32(x[h]);
    }
  }
  if (dt == EPM_DTYPE_BF16)
    for (int64_t i = 0; i < m * H; i++) y[i] = epm_bf16_to_f32(epm_bf16_from_f32(y[i]));
}

epm_status_t epm__a2a_run(epm_engine_t *e, epm__step_timer_t *tm, const epm__step_plan_t *sp, int64_t m,
                          float a1) {
  const int64_t H = e->H, k = e->k, S = sp->rows_out, R = sp->rows_in;
  const size_t pb = (size_t)(H / 2), fb = (size_t)(H / EPM_NVFP4_BLOCK), ib = (size_t)k * 4;
  const size_t cb = (size_t)H * e->partial_elem;
  const int dev = epm_backend_is_device(e->be);
  if (dev && m > 0) { /* ids came over in the route plan */
    EPM_TRY(epm_backend_copy_d2h(e->be, e->h_packed_loc, e->packed_loc, (size_t)m * pb));
    EPM_TRY(epm_backend_copy_d2h(e->be, e->h_sf_loc, e->sf_loc, (size_t)m * fb));
    EPM_TRY(epm_backend_copy_d2h(e->be, e->h_wts_loc, e->wts_loc, (size_t)m * ib));
    EPM_TRY(epm_backend_sync(e->be));
  }
  pack(e->h_packed_snd, e->h_packed_loc, pb, e->send_tok, S);
  pack(e->h_sf_snd, e->h_sf_loc, fb, e->send_tok, S);
  pack(e->h_ids_snd, e->h_ids_loc, ib, e->send_tok, S);
  pack(e->h_wts_snd, e->h_wts_loc, ib, e->send_tok, S);
  if (dev && S > 0) {
    EPM_TRY(epm_backend_copy_h2d(e->be, e->packed_snd, e->h_packed_snd, (size_t)S * pb));
    EPM_TRY(epm_backend_copy_h2d(e->be, e->sf_snd, e->h_sf_snd, (size_t)S * fb));
    EPM_TRY(epm_backend_copy_h2d(e->be, e->ids_snd, e->h_ids_snd, (size_t)S * ib));
    EPM_TRY(epm_backend_copy_h2d(e->be, e->wts_snd, e->h_wts_snd, (size_t)S * ib));
  }
  const epm_comm_gather_buf_t bufs[4] = {
      {e->packed_snd, e->packed_rcv, pb},
      {e->sf_snd, e->sf_rcv, fb},
      {e->ids_snd, e->ids_rcv, ib},
      {e->wts_snd, e->wts_rcv, ib},
  };
  EPM_TRY(epm_comm_alltoallv_multi(e->comm, bufs, 4, e->matrix));
  EPM_TRY(epm_comm_wait(e->comm, 0));
  epm_comm_traffic(e->comm, &tm->tr[1]);
  EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_A2A_DISPATCH));

  EPM_TRY(epm__engine_experts(e, e->packed_rcv, e->sf_rcv, e->ids_rcv, e->wts_rcv, R, a1, e->part_rcv));
  EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_EXPERTS));

  EPM_TRY(epm_comm_alltoallv(e->comm, e->part_rcv, e->comb_rcv, e->matrix_t, cb));
  EPM_TRY(epm_comm_wait(e->comm, 0));
  epm_comm_traffic(e->comm, &tm->tr[2]);
  if (dev && S > 0) {
    EPM_TRY(epm_backend_copy_d2h(e->be, e->h_comb, e->comb_rcv, (size_t)S * cb));
    EPM_TRY(epm_backend_sync(e->be));
  }
  combine_sum(e->h_comb, e->cfg.partial_dtype, e->send_tok, S, m, H, e->h_y32);
  if (dev && m > 0) EPM_TRY(epm_backend_copy_h2d(e->be, e->y32, e->h_y32, (size_t)(m * H) * sizeof(float)));
  return epm__engine_stage_end(tm, EPM_STAGE_A2A_COMBINE);
}
