/* SPDX-License-Identifier: Apache-2.0 */
/* engine_fixed.c — the fixed-capacity step (epm_engine_config_t
 * fixed_capacity): one packed record per token, every rank's segment of the
 * same size, so the dispatch is ONE allgather of equal counts and no host
 * sizes exchange precedes it. That is what lets a device backend capture the
 * whole step in one CUDA graph (engine_graph.c): nothing in it depends on a
 * host-side count of another rank.
 *
 * Segment of rank r (seg bytes, rows of rec bytes), rows = max_m + 1:
 *   row 0        header: int64 {count m_r or STEP_FAILED, FIXED_MAGIC} in the
 *                first 16 bytes, zeros elsewhere
 *   rows 1..m_r  token records: [codes H/2 | scales H/16 | pad | ids k x int32
 *                | weights k x fp32 | pad to 16]
 *   the rest     zeros (written by the sender every step)
 * A zero record is a valid inert row: expert ids 0, weights 0, scales 0 (so
 * the decoded row is 0). The expert stage runs over all P x rows rows (the
 * header and pad rows too: their partials land only in rows the owner
 * ignores), the combine is a reduce-scatter of equal segments of `rows` rows,
 * and each rank keeps its rows 1..m_r. Every token row sees exactly what the
 * variable-size step gives it, so the output is bit-identical to it.
 *
 * Failure agreement: a rank whose local stages failed sends a segment of
 * zeros with the STEP_FAILED count; every rank reads all headers after the
 * gather and returns the same error before the combine. */
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#include "epmoe/checked.h"

#define FIXED_MAGIC INT64_C(0x45504d4f45464958) /* "EPMOEFIX" */

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

epm_status_t epm__fixed_layout(epm_engine_t *e) {
  const size_t H = (size_t)e->H, k = (size_t)e->k;
  if (e->fixed && H / 2 < 2 * sizeof(int64_t))
    return epm_error(EPM_ERR_INVALID_ARG, "fixed capacity: hidden %zu is below 32 (the header lives in the codes)",
                     H);
  e->fx_off_sf = H / 2;
  e->fx_off_ids = round_up(H / 2 + H / EPM_NVFP4_BLOCK, 4);
  e->fx_off_w = e->fx_off_ids + k * sizeof(int32_t);
  e->fx_rec = round_up(e->fx_off_w + k * sizeof(float), 16);
  e->fx_rows = e->max_m + 1;
  size_t seg = 0;
  if (epm_mul_size(e->fx_rec, (size_t)e->fx_rows, &seg))
    return epm_error(EPM_ERR_OVERFLOW, "fixed capacity: %zu-byte records x %lld rows overflows", e->fx_rec,
                     (long long)e->fx_rows);
  e->fx_seg = seg;
  return EPM_OK;
}

/* Records of n tokens starting at `rows` (pitch rec) from the local columns
 * (pack) or into the gathered columns (unpack): four strided copies each,
 * no kernel, capturable. */
epm_status_t epm__records_pack(epm_engine_t *e, uint8_t *rows, int64_t n) {
  const size_t rec = e->fx_rec, H = (size_t)e->H, k = (size_t)e->k, N = (size_t)n;
  EPM_TRY(epm_backend_copy_2d(e->be, rows, rec, e->packed_loc, H / 2, H / 2, N));
  EPM_TRY(epm_backend_copy_2d(e->be, rows + e->fx_off_sf, rec, e->sf_loc, H / EPM_NVFP4_BLOCK, H / EPM_NVFP4_BLOCK,
                              N));
  EPM_TRY(epm_backend_copy_2d(e->be, rows + e->fx_off_ids, rec, e->ids_loc, k * sizeof(int32_t),
                              k * sizeof(int32_t), N));
  return epm_backend_copy_2d(e->be, rows + e->fx_off_w, rec, e->wts_loc, k * sizeof(float), k * sizeof(float), N);
}

epm_status_t epm__records_unpack(epm_engine_t *e, const uint8_t *rows, int64_t n, uint8_t *packed, uint8_t *sf,
                                 int32_t *ids, float *wts) {
  const size_t rec = e->fx_rec, H = (size_t)e->H, k = (size_t)e->k, N = (size_t)n;
  EPM_TRY(epm_backend_copy_2d(e->be, packed, H / 2, rows, rec, H / 2, N));
  EPM_TRY(epm_backend_copy_2d(e->be, sf, H / EPM_NVFP4_BLOCK, rows + e->fx_off_sf, rec, H / EPM_NVFP4_BLOCK, N));
  EPM_TRY(epm_backend_copy_2d(e->be, ids, k * sizeof(int32_t), rows + e->fx_off_ids, rec, k * sizeof(int32_t), N));
  return epm_backend_copy_2d(e->be, wts, k * sizeof(float), rows + e->fx_off_w, rec, k * sizeof(float), N);
}

/* Buffers: the own segment, the gathered segments, their unpacked columns,
 * the partials over all gathered rows and the combine output. */
epm_status_t epm__fixed_alloc(epm_engine_t *e) {
  const size_t rows = (size_t)e->fx_rows, P = (size_t)e->size, H = (size_t)e->H, k = (size_t)e->k;
  size_t all_rows = 0, b[8];
  if (epm_mul_size(rows, P, &all_rows) || epm_mul_size(e->fx_seg, P, &b[1]) ||
      epm_mul_size(all_rows, H / 2, &b[2]) || epm_mul_size(all_rows, H / EPM_NVFP4_BLOCK, &b[3]) ||
      epm_mul_size(all_rows, k * sizeof(int32_t), &b[4]) || epm_mul_size(all_rows, k * sizeof(float), &b[5]) ||
      epm_mul_size(all_rows, H * e->partial_elem, &b[6]) || epm_mul_size(rows, H * e->partial_elem, &b[7]))
    return epm_error(EPM_ERR_OVERFLOW, "fixed capacity buffers: %zu rows x %zu ranks overflow", rows, P);
  b[0] = e->fx_seg;
  void **dst[8] = {(void **)&e->fx_loc,  (void **)&e->fx_all, (void **)&e->fx_packed, (void **)&e->fx_sf,
                   (void **)&e->fx_ids,  (void **)&e->fx_wts, &e->fx_partial,         &e->fx_red};
  for (int i = 0; i < 8; i++) {
    epm_status_t st = epm_backend_alloc(e->be, b[i], dst[i]);
    if (st != EPM_OK) return epm_error_wrap(st, "fixed capacity buffer %d (%zu bytes)", i, b[i]);
    e->buffer_bytes += b[i];
  }
  return EPM_OK;
}

void epm__fixed_free(epm_engine_t *e) {
  void *p[] = {e->fx_loc, e->fx_all, e->fx_packed, e->fx_sf, e->fx_ids, e->fx_wts, e->fx_partial, e->fx_red};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) epm_backend_free(e->be, p[i]);
}

void epm__fixed_borrow(epm_engine_t *e, const epm_engine_t *o) {
  e->fx_loc = o->fx_loc;
  e->fx_all = o->fx_all;
  e->fx_packed = o->fx_packed;
  e->fx_sf = o->fx_sf;
  e->fx_ids = o->fx_ids;
  e->fx_wts = o->fx_wts;
  e->fx_partial = o->fx_partial;
  e->fx_red = o->fx_red;
}

/* The header the next dispatch sends: m, or STEP_FAILED. It is copied from
 * engine memory when the dispatch runs (also when a captured graph runs). */
/* Pack this rank's m rows (0 after a local failure) into its segment behind
 * the header and gather every segment: one collective of equal counts.
 * Nothing here reads another rank's count on the host. */
void epm__fixed_header(epm_engine_t *e, int64_t m, int failed) {
  e->fx_hdr_src[0] = failed ? EPM__STEP_FAILED : m;
  e->fx_hdr_src[1] = FIXED_MAGIC;
}

epm_status_t epm__fixed_dispatch(epm_engine_t *e, int64_t m) {
  EPM_TRY(epm_backend_zero(e->be, e->fx_loc, e->fx_seg));
  EPM_TRY(epm_backend_copy_h2d(e->be, e->fx_loc, e->fx_hdr_src, sizeof e->fx_hdr_src));
  EPM_TRY(epm__records_pack(e, e->fx_loc + e->fx_rec, m)); /* from row 1 */
  const epm_comm_gather_buf_t buf = {e->fx_loc, e->fx_all, e->fx_seg};
  EPM_TRY(epm_comm_allgatherv_multi(e->comm, &buf, 1, e->fx_ones));
  return EPM_OK;
}

/* After the gather completed: every rank's header -> e->counts, M. The same
 * data on every rank, so every rank reaches the same verdict. */
epm_status_t epm__fixed_counts(epm_engine_t *e, int64_t *M) {
  int64_t total = 0;
  for (int r = 0; r < e->size; r++) {
    int64_t h[2];
    const uint8_t *src = e->fx_all + (size_t)r * e->fx_seg;
    if (epm_backend_is_device(e->be))
      EPM_TRY(epm_backend_copy_d2h(e->be, h, src, sizeof h));
    else
      memcpy(h, src, sizeof h);
    if (h[1] != FIXED_MAGIC)
      return epm_error(EPM_ERR_INTERNAL, "fixed capacity: rank %d's segment header is damaged (magic %llx)", r,
                       (unsigned long long)h[1]);
    if (h[0] == EPM__STEP_FAILED)
      return epm_error(EPM_ERR_ABORTED, "step abandoned: rank %d failed before the dispatch (see its log)", r);
    if (h[0] < 0 || h[0] > e->max_m)
      return epm_error(EPM_ERR_INVALID_ARG, "rank %d sent %lld tokens; capacity is [0, %lld] per rank", r,
                       (long long)h[0], (long long)e->max_m);
    e->counts[r] = h[0];
    total += h[0];
  }
  *M = total;
  return EPM_OK;
}

/* Unpack the gathered records, the experts over every gathered row, the
 * equal-segment reduce-scatter, and this rank's rows 1..m into y32. */
epm_status_t epm__fixed_combine(epm_engine_t *e, epm__step_timer_t *tm, int64_t m, float a1) {
  const size_t H = (size_t)e->H;
  const int64_t all_rows = e->fx_rows * e->size;
  EPM_TRY(epm__records_unpack(e, e->fx_all, all_rows, e->fx_packed, e->fx_sf, e->fx_ids, e->fx_wts));
  EPM_TRY(epm__engine_experts(e, e->fx_packed, e->fx_sf, e->fx_ids, e->fx_wts, all_rows, a1, e->fx_partial));
  EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_EXPERTS));
  EPM_TRY(epm_comm_reduce_scatterv(e->comm, e->fx_partial, e->fx_red, e->fx_rows_each, e->H, e->cfg.partial_dtype));
  if (!e->capturing) EPM_TRY(epm_comm_wait(e->comm, 0));
  epm_comm_traffic(e->comm, &tm->tr[2]);
  EPM_TRY(epm__engine_stage_end(tm, EPM_STAGE_REDUCE_SCATTER));
  const uint8_t *mine = (const uint8_t *)e->fx_red + H * e->partial_elem; /* row 1 */
  if (e->cfg.partial_dtype == EPM_DTYPE_BF16)
    return epm_backend_bf16_to_f32(e->be, (const epm_bf16_t *)mine, m * e->H, e->y32);
  const size_t bytes = (size_t)(m * e->H) * sizeof(float);
  return epm_backend_copy_2d(e->be, e->y32, bytes, mine, bytes, bytes, 1);
}
