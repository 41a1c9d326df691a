/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_prepack.c — one expert's weights from the canonical ModelOpt
 * form (include/epmoe/kernels.h) into what the fast kernels read. Host C, run
 * once at load.
 *
 * sm_90a: 64 x 64 chunks (kernels/moe2_core.h): per thread of a consumer
 * warpgroup one 32-bit word per k16 step holding exactly its wgmma A fragment
 * (epm_core_w4_chunk_elem), then the chunk's scales row-major [64][4]; GEMM1's
 * rows interleave gate and up by 8 (epm_core_w13_source); rows and K are
 * zero-padded to the tile (code 0, scale 0: the padding dequantizes to 0).
 * sm_100a: the codes unchanged (gate rows then up rows for GEMM1) and the
 * scales re-laid in the 128x4 layout CUTLASS's block-scaled GEMM reads. */
#include <string.h>

#include "epmoe/kernels.h"
#include "moe2_core.h"

typedef struct {
  const uint8_t *w[2], *sf[2]; /* [0] gate or down, [1] up */
  int64_t rows, k;             /* logical rows (I for gate/up, H for down), K */
  int interleave;              /* GEMM1: gate/up by 8 */
} src_t;

/* Row R of the prepacked matrix: its codes and scales, or 0 for padding. */
static int src_row(const src_t *s, int64_t R, const uint8_t **w, const uint8_t **sf) {
  int64_t row = R;
  int up = 0;
  if (s->interleave) {
    if (!epm_core_w13_source(R, s->rows, &up, &row)) return 0;
  } else if (R >= s->rows) {
    return 0;
  }
  *w = s->w[up] + row * (s->k / 2);
  *sf = s->sf[up] + row * (s->k / 16);
  return 1;
}

static void prepack_sm90(const src_t *s, int64_t rows_pad, int64_t k_pad, uint8_t *out) {
  const int64_t kchunks = k_pad / EPM_MOE2_CHUNK_K;
  for (int64_t rb = 0; rb < rows_pad / EPM_MOE2_CHUNK_ROWS; rb++) {
    const uint8_t *rw[EPM_MOE2_CHUNK_ROWS], *rsf[EPM_MOE2_CHUNK_ROWS];
    for (int r = 0; r < EPM_MOE2_CHUNK_ROWS; r++)
      if (!src_row(s, rb * EPM_MOE2_CHUNK_ROWS + r, &rw[r], &rsf[r])) rw[r] = rsf[r] = NULL;
    for (int64_t kc = 0; kc < kchunks; kc++) {
      uint8_t *chunk = out + epm_core_w4_chunk_offset(rb, kc, kchunks);
      for (int tid = 0; tid < 128; tid++)
        for (int j = 0; j < 4; j++) {
          uint32_t word = 0;
          for (int n = 0; n < 8; n++) {
            int r, kk;
            epm_core_w4_chunk_elem(tid, j, n, &r, &kk);
            const int64_t k = kc * EPM_MOE2_CHUNK_K + kk;
            uint32_t code = 0;
            if (rw[r] && k < s->k) code = (uint32_t)(rw[r][k / 2] >> ((k % 2) * 4)) & 0xFu;
            word |= code << (4 * n);
          }
          for (int b = 0; b < 4; b++) chunk[tid * 16 + j * 4 + b] = (uint8_t)(word >> (8 * b));
        }
      for (int r = 0; r < EPM_MOE2_CHUNK_ROWS; r++)
        for (int j = 0; j < 4; j++) {
          const int64_t kb = kc * 4 + j; /* k16 block */
          chunk[EPM_MOE2_CHUNK_CODE_BYTES + r * 4 + j] = (rsf[r] && kb < s->k / 16) ? rsf[r][kb] : 0;
        }
    }
  }
}

/* sm_100a: codes [rows, K/2] as given (two sources stacked), then the
 * scales in the 128x4 layout at the next 128-byte boundary. */
static void prepack_sm100(const uint8_t *w0, const uint8_t *sf0, const uint8_t *w1, const uint8_t *sf1,
                          int64_t rows_each, int64_t k, uint8_t *out) {
  const int64_t n = w1 ? 2 : 1, rows = n * rows_each, nsf = k / 16;
  const size_t half = (size_t)(rows_each * (k / 2));
  memcpy(out, w0, half);
  if (w1) memcpy(out + half, w1, half);
  uint8_t *sf = out + epm_core_round_up(rows * (k / 2), 128);
  const int64_t sf_bytes = epm_core_round_up(rows, 128) * epm_core_round_up(nsf, 4);
  memset(sf, 0, (size_t)sf_bytes);
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *src = r < rows_each ? sf0 + r * nsf : sf1 + (r - rows_each) * nsf;
    for (int64_t c = 0; c < nsf; c++) sf[epm_core_sf_offset_128x4(r, c, nsf)] = src[c];
  }
}

epm_status_t epm_moe2_prepack_expert(const epm_moe2_plan_t *p, const uint8_t *gate_w, const uint8_t *gate_sf,
                                     const uint8_t *up_w, const uint8_t *up_sf, const uint8_t *down_w,
                                     const uint8_t *down_sf, uint8_t *w13_out, uint8_t *w2_out) {
  if (!p || !gate_w || !gate_sf || !up_w || !up_sf || !down_w || !down_sf || !w13_out || !w2_out)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 prepack: NULL plan, weight or output");
  const int64_t H = p->hidden, I = p->inter;
  if (p->opts.arch == 100) {
    prepack_sm100(gate_w, gate_sf, up_w, up_sf, I, H, w13_out);
    prepack_sm100(down_w, down_sf, NULL, NULL, H, I, w2_out);
    return EPM_OK;
  }
  const src_t g13 = {{gate_w, up_w}, {gate_sf, up_sf}, I, H, 1};
  const src_t g2 = {{down_w, NULL}, {down_sf, NULL}, H, I, 0};
  prepack_sm90(&g13, p->rows1_pad, p->hidden_pad, w13_out);
  prepack_sm90(&g2, p->rows2_pad, p->inter_pad, w2_out);
  return EPM_OK;
}
