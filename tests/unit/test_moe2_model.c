/* SPDX-License-Identifier: Apache-2.0 */
/* test_moe2_model: a CPU model of the fast (v2) expert pipeline that walks
 * the kernels' data flow with the kernels' own layout and index functions
 * (kernels/moe2_core.h): prepacked weights, permute + FP16 gather into the
 * tiled token buffer, the persistent schedule (every CTA's unit range), the
 * producer's chunk addresses and the consumers' fragment dequant, the token
 * tile read through the wgmma descriptor model, the accumulator -> (row,
 * token) map of both epilogues (incl. GEMM2's lane-pair exchange), the
 * requant into GEMM2's B layout, and the v1 finalize. Only the tensor-core
 * arithmetic is replaced by plain fp32 sums in k order. Compared with the
 * CPU reference (epm_moe_ref_experts) at the GPU test's bounds, and
 * bit-identical across tile shapes, dequant variants and grid sizes (same
 * sums, same order): a wrong index anywhere shows up here, on the CPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/bf16.h"
#include "epmoe/kernels.h"
#include "epmoe/layer.h"
#include "epmoe/moe_ref.h"
#include "epmoe/nvfp4.h"
#include "epmoe/routing.h"
#include "moe2_core.h"
#include "moe2_internal.h"
#include "testutil.h"

/* CUTLASS ALayout_64x16 (see test_moe2_core.c): register reg, half hi of
 * thread tid -> (m, k) in the m64 x k16 fragment. */
static void frag_elem(int tid, int reg, int hi, int *m, int *k) {
  const int t0 = tid % 4, t1 = (tid / 4) % 8, t2 = tid / 32;
  const int v = 2 * reg + hi, v0 = v & 1, v1 = (v >> 1) & 1, v2 = v >> 2;
  *m = t1 + 16 * t2 + 8 * v1;
  *k = 2 * t0 + v0 + 8 * v2;
}

/* CUTLASS CLayout_64xN: thread (t0 + 4 t1 + 32 t2), accumulator register
 * r = v0 + 2 v1 + 4 i -> m = t1 + 16 t2 + 8 v1, n = 2 t0 + v0 + 8 i. The
 * model fills the registers with it; the kernels' epilogues read them back
 * with epm_core_moe2_acc_pos, so the two must agree. */
static void clayout_elem(int tid, int r, int *m, int *n) {
  const int t0 = tid % 4, t1 = (tid / 4) % 8, t2 = tid / 32;
  *m = t1 + 16 * t2 + 8 * ((r >> 1) & 1);
  *n = 2 * t0 + (r & 1) + 8 * (r >> 2);
}

static uint16_t ld16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

typedef struct {
  const epm_moe2_plan_t *p;
  int normal;
  int64_t G; /* CTAs */
  const int32_t *counts;
  const int64_t *offsets;
  uint8_t *inter16; /* GEMM1 out */
  uint16_t *y;      /* GEMM2 out */
  const float *scale2;
  float alpha0, g_mid;
} model_t;

/* One grouped GEMM as the kernel runs it; epi = 1 or 2. */
static void model_gemm(model_t *md, int epi, const uint8_t *w, size_t w_bytes, const uint8_t *x) {
  const epm_moe2_plan_t *p = md->p;
  const epm_core_sched_t s = epm__moe2_sched(p, epi);
  const int64_t el = p->local_experts, kchunks = (epi == 1 ? p->hidden_pad : p->inter_pad) / 64;
  const int BM = p->bm, MB = BM / 128, JW = BM / 4, BN = p->bn_max;
  const float fold = epm_core_w4_fold(md->normal);
  int64_t *uoff = malloc((size_t)(el + 1) * 8), *coff = malloc((size_t)(el + 1) * 8);
  epm_core_sched_scan(&s, md->counts, el, uoff, coff);
  static float D[2][64][256], A[64][64], B[256][64], acc[2][128][2][128];
  static uint16_t epist[256][64 + 8];
  for (int64_t c = 0; c < md->G; c++) {
    const int64_t u0 = epm_core_sched_begin(&s, md->counts, uoff, coff, el, c, md->G);
    const int64_t u1 = epm_core_sched_begin(&s, md->counts, uoff, coff, el, c + 1, md->G);
    for (int64_t u = u0; u < u1; u++) {
      const epm_core_sched_unit_t un = epm_core_sched_unit(&s, md->counts, uoff, el, u);
      const int N = epm_core_moe2_tile_n((int)p->opts.tiles, un.rows);
      const int64_t row0 = md->offsets[un.e] + un.nt * BN;
      assert_true(N >= un.rows && N <= BN && row0 % 8 == 0 && row0 + N <= p->max_rows);
      for (int wg = 0; wg < 2; wg++) {
        for (int b = 0; b < MB; b++) {
          memset(D[b], 0, sizeof D[b]);
          for (int64_t gi = 0; gi < kchunks; gi++) {
            /* the producer copied row block mt*BM/64 + (0..BM/64-1); this consumer reads wg*MB + b */
            const uint8_t *ch = w + (size_t)un.e * w_bytes +
                                epm_core_w4_chunk_offset(un.mt * (BM / 64) + wg * MB + b, gi, kchunks);
            for (int tid = 0; tid < 128; tid++) {
              const int ww = tid / 32, g = (tid % 32) / 4;
              uint32_t sg, sg8;
              memcpy(&sg, ch + EPM_MOE2_CHUNK_CODE_BYTES + (16 * ww + g) * 4, 4);
              memcpy(&sg8, ch + EPM_MOE2_CHUNK_CODE_BYTES + (16 * ww + g + 8) * 4, 4);
              for (int j = 0; j < 4; j++) {
                uint32_t q, frag[4];
                memcpy(&q, ch + tid * 16 + j * 4, 4);
                epm_core_w4_dequant(q, epm_core_w4_scale_pair_step(sg, sg8, j, md->normal), md->normal, frag);
                for (int reg = 0; reg < 4; reg++)
                  for (int hi = 0; hi < 2; hi++) {
                    int mm, kk;
                    frag_elem(tid, reg, hi, &mm, &kk);
                    A[mm][j * 16 + kk] = epm_core_f16_to_f32((uint16_t)(hi ? frag[reg] >> 16 : frag[reg] & 0xFFFF));
                  }
              }
            }
            /* token tile: the atom column gi of rows [row0, row0 + N), through
             * the K-major 128B-swizzle descriptor (start + 32 per k16 step) */
            const uint8_t *atom = x + (gi * (p->max_rows / 8) + row0 / 8) * EPM_MOE2_ATOM_BYTES;
            for (int n = 0; n < N; n++)
              for (int kk = 0; kk < 64; kk++) {
                const uint32_t off = (uint32_t)((kk / 16) * 32 + (n / 8) * 1024 + (n % 8) * 128 + (kk % 16) * 2);
                B[n][kk] = epm_core_f16_to_f32(ld16(atom + (off ^ (((off >> 7) & 7u) << 4))));
              }
            for (int mm = 0; mm < 64; mm++)
              for (int n = 0; n < N; n++) {
                float d = D[b][mm][n];
                for (int kk = 0; kk < 64; kk++) d += A[mm][kk] * B[n][kk];
                D[b][mm][n] = d;
              }
          }
          for (int tid = 0; tid < 128; tid++)
            for (int r = 0; r < N / 2; r++) {
              int mm, nn;
              clayout_elem(tid, r, &mm, &nn);
              acc[b][tid][0][r] = D[b][mm][nn];
            }
        }
        const float alpha = (md->alpha0 * md->scale2[un.e]) * fold;
        if (epi == 1) {
          memset(epist, 0xFF, sizeof epist);
          for (int b = 0; b < MB; b++)
            for (int tid = 0; tid < 128; tid++)
              for (int r = 0; r < N / 2; r += 4) {
                int row, col;
                epm_core_moe2_acc_pos(BM, wg, b, tid, r, &row, &col);
                const int jl = (row / 16) * 8 + row % 8 - wg * JW;
                assert_true(jl >= 0 && jl < JW);
                const float *a4 = &acc[b][tid][0][r];
                const float g0 = a4[0] * alpha, up0 = a4[2] * alpha, g1 = a4[1] * alpha, up1 = a4[3] * alpha;
                epist[col][jl] = epm_bf16_from_f32((g0 / (1.0f + expf(-g0))) * up0);
                epist[col + 1][jl] = epm_bf16_from_f32((g1 / (1.0f + expf(-g1))) * up1);
              }
          const int64_t jbase = un.mt * (BM / 2) + wg * JW;
          for (int col = 0; col < un.rows; col++)
            for (int jb = 0; jb < JW / 16; jb++) {
              const int64_t j0 = jbase + jb * 16, prow = row0 + col;
              uint16_t h[16];
              memset(h, 0, sizeof h);
              if (j0 < p->inter) {
                float v[16];
                for (int q = 0; q < 16; q++) v[q] = epm_bf16_to_f32(epist[col][jb * 16 + q]);
                uint8_t pk[8];
                const uint8_t sf = epm_core_quantize_block(v, md->g_mid, pk);
                for (int q = 0; q < 16; q++) h[q] = epm_core_x16_value((unsigned)(pk[q / 2] >> (4 * (q % 2))) & 15u, sf, md->normal);
              }
              for (int q = 0; q < 16; q++)
                memcpy(md->inter16 + epm_core_x16_offset(prow, j0 + q, p->max_rows), &h[q], 2);
            }
        } else {
          /* lanes exchange with lane ^ 4 (g ^ 1), then store 32-bit pairs */
          for (int b = 0; b < MB; b++)
            for (int tid = 0; tid < 128; tid++)
              for (int r = 0; r < N / 2; r += 2) {
                const int even = (((tid % 32) / 4) & 1) == 0, partner = tid ^ 4;
                int row, col;
                epm_core_moe2_acc_pos(BM, wg, b, tid, r, &row, &col);
                const float v0 = acc[b][tid][0][r] * alpha, v1 = acc[b][tid][0][r + 1] * alpha;
                const float pv0 = acc[b][partner][0][r] * alpha, pv1 = acc[b][partner][0][r + 1] * alpha;
                const float o = even ? pv0 : pv1; /* what the partner sent */
                const float lo = even ? v0 : o, hi = even ? o : v1;
                const int cc = even ? col : col + 1;
                const int64_t n = un.mt * BM + (even ? row : row - 1);
                if (cc < un.rows && n < p->hidden) {
                  md->y[(row0 + cc) * p->hidden + n] = epm_bf16_from_f32(lo);
                  md->y[(row0 + cc) * p->hidden + n + 1] = epm_bf16_from_f32(hi);
                }
              }
        }
      }
    }
  }
  free(uoff);
  free(coff);
}

/* The whole v2 forward on the host; out fp32 [m, H]. */
static void model_forward(const epm_layer_t *l, int64_t m, const uint8_t *xq, const uint8_t *xsf, const int32_t *ids,
                          const float *wts, epm_moe2_tiles_t tiles, epm_moe2_fp16_t fp16, int64_t G, float *out) {
  const epm_model_dims_t *d = &l->dims;
  const int64_t H = d->hidden, I = d->intermediate, E = d->num_experts, k = d->top_k, off = l->expert_offset,
                el = l->experts.count;
  epm_moe2_opts_t o = EPM_MOE2_OPTS_INIT;
  o.tiles = tiles;
  o.fp16 = fp16;
  epm_moe2_plan_t p;
  assert_int_equal(epm_moe2_plan(m, H, I, E, k, off, el, &o, &p), EPM_OK);
  const int normal = fp16 == EPM_MOE2_FP16_NORMAL;
  /* prepack */
  uint8_t *w13 = malloc(p.w13_expert_bytes * (size_t)el), *w2 = malloc(p.w2_expert_bytes * (size_t)el);
  const epm_expert_bank_t *b = &l->experts;
  for (int64_t e = 0; e < el; e++)
    assert_int_equal(epm_moe2_prepack_expert(&p, b->gate_w + e * I * H / 2, b->gate_sf + e * I * H / 16,
                                             b->up_w + e * I * H / 2, b->up_sf + e * I * H / 16,
                                             b->down_w + e * H * I / 2, b->down_sf + e * H * I / 16,
                                             w13 + (size_t)e * p.w13_expert_bytes, w2 + (size_t)e * p.w2_expert_bytes),
                     EPM_OK);
  /* permute: counts, offsets (8), rows in pair order, FP16 gather */
  int32_t *counts = calloc((size_t)el + 1, 4), *cursor = calloc((size_t)el + 1, 4);
  int64_t *offsets = malloc((size_t)(el + 1) * 8), *pair_row = malloc((size_t)(m * k + 1) * 8);
  for (int64_t i = 0; i < m * k; i++)
    if (ids[i] >= off && ids[i] < off + el) counts[ids[i] - off]++;
  offsets[0] = 0;
  for (int64_t e = 0; e < el; e++) offsets[e + 1] = offsets[e] + (counts[e] + 7) / 8 * 8;
  assert_true(offsets[el] + EPM_MOE2_ROW_SLACK <= p.max_rows);
  uint8_t *x16 = malloc(p.x16_bytes), *i16 = malloc(p.inter16_bytes);
  memset(x16, 0xFF, p.x16_bytes); /* poison: NaN FP16 where nothing was written */
  memset(i16, 0xFF, p.inter16_bytes);
  uint16_t *y = malloc(p.y_bytes);
  memset(y, 0xFF, p.y_bytes);
  for (int64_t i = 0; i < m * k; i++) {
    pair_row[i] = -1;
    if (ids[i] < off || ids[i] >= off + el) continue;
    const int64_t e = ids[i] - off, row = offsets[e] + cursor[e]++, t = i / k;
    pair_row[i] = row;
    for (int64_t kk = 0; kk < p.hidden_pad; kk++) {
      uint16_t h = 0;
      if (kk < H) h = epm_core_x16_value((unsigned)(xq[t * H / 2 + kk / 2] >> ((kk % 2) * 4)) & 15u, xsf[t * H / 16 + kk / 16], normal);
      memcpy(x16 + epm_core_x16_offset(row, kk, p.max_rows), &h, 2);
    }
  }
  model_t md = {&p, normal, G, counts, offsets, i16, y, b->gate_up_scale_2, l->input_scale, 1.0f / l->down_input_scale};
  model_gemm(&md, 1, w13, p.w13_expert_bytes, x16);
  md.scale2 = b->down_scale_2;
  md.alpha0 = l->down_input_scale;
  model_gemm(&md, 2, w2, p.w2_expert_bytes, i16);
  /* finalize (the v1 kernel's arithmetic) */
  for (int64_t t = 0; t < m; t++)
    for (int64_t h = 0; h < H; h++) {
      float a = 0.0f;
      for (int64_t j = 0; j < k; j++) {
        const int64_t row = pair_row[t * k + j];
        if (row < 0) continue;
        const float wv = epm_bf16_round(wts[t * k + j]);
        const float prod = wv * epm_bf16_to_f32(y[row * H + h]);
        a = a + prod;
      }
      out[t * H + h] = a;
    }
  free(w13);
  free(w2);
  free(counts);
  free(cursor);
  free(offsets);
  free(pair_row);
  free(x16);
  free(i16);
  free(y);
}

static void model_case(const char *name, epm_model_dims_t d, int64_t m, int64_t off, int64_t el, uint64_t seed) {
  const int64_t H = d.hidden, E = d.num_experts, k = d.top_k;
  epm_layer_t layer;
  assert_int_equal(epm_layer_generate(&d, 0, seed, off, el, &layer), EPM_OK);
  epm_test_rng_t rng = {seed * 7 + 1};
  const size_t mh = (size_t)(m * H);
  epm_bf16_t *x = malloc(mh * 2 + 2);
  for (int64_t i = 0; i < m * H; i++) x[i] = epm_bf16_from_f32(epm_test_rng_normal(&rng) * ((i / H) % 9 ? 1.0f : 0.01f));
  uint8_t *xq = malloc(mh / 2 + 1), *xsf = malloc(mh / 16 + 1);
  assert_int_equal(epm_nvfp4_quantize_bf16(x, m, H, 1.0f / layer.input_scale, EPM_SF_LINEAR, xq, xsf), EPM_OK);
  float *l = malloc((size_t)(m * E) * 4 + 4), *wts = malloc((size_t)(m * k) * 4 + 4);
  int32_t *ids = malloc((size_t)(m * k) * 4 + 4);
  for (int64_t i = 0; i < m * E; i++) l[i] = epm_test_rng_normal(&rng);
  epm_routing_config_t cfg;
  assert_int_equal(epm_routing_config_from_dims(&d, &cfg), EPM_OK);
  assert_int_equal(epm_route_f32(&cfg, l, layer.router_bias, m, ids, wts, NULL), EPM_OK);
  float *ref = malloc(mh * 4 + 4), *dn = malloc(mh * 4 + 4), *ds = malloc(mh * 4 + 4), *pf = malloc(mh * 4 + 4);
  epm_bf16_t *ref_b = malloc(mh * 2 + 2);
  assert_int_equal(epm_moe_ref_experts(&layer, xq, xsf, layer.input_scale, m, k, ids, wts, NULL, ref, ref_b, NULL),
                   EPM_OK);
  model_forward(&layer, m, xq, xsf, ids, wts, EPM_MOE2_TILES_DECODE, EPM_MOE2_FP16_NORMAL, 7, dn);
  model_forward(&layer, m, xq, xsf, ids, wts, EPM_MOE2_TILES_DECODE, EPM_MOE2_FP16_SUBNORMAL, 132, ds);
  model_forward(&layer, m, xq, xsf, ids, wts, EPM_MOE2_TILES_PREFILL, EPM_MOE2_FP16_NORMAL, 3, pf);
  double se = 0, sr = 0, mx = 0, rmax = 0;
  int64_t nonfinite = 0;
  for (size_t i = 0; i < mh; i++) {
    if (!isfinite(dn[i])) nonfinite++;
    const double dd = (double)dn[i] - (double)ref[i];
    se += dd * dd;
    sr += (double)ref[i] * ref[i];
    mx = fabs(dd) > mx ? fabs(dd) : mx;
    rmax = fabs(ref[i]) > rmax ? fabs(ref[i]) : rmax;
  }
  const double rel = sr > 0 ? sqrt(se / sr) : sqrt(se), mrel = rmax > 0 ? mx / rmax : mx;
  printf("model %s: rel-L2 %.3e, max|diff|/max|ref| %.3e vs the CPU reference (max|ref| %.3e, %lld values)\n", name, rel, mrel, rmax, (long long)mh);
  if (nonfinite || rel > 5e-3 || mrel > 5e-2)
    fail_msg("%s: rel-L2 %.3e, max rel %.3e, %lld non-finite", name, rel, mrel, (long long)nonfinite);
  if (memcmp(dn, ds, mh * 4)) fail_msg("%s: the 2^-14 and all-normal variants differ", name);
  if (memcmp(dn, pf, mh * 4)) fail_msg("%s: decode and prefill tiles differ", name);
  /* tokens with no local expert are exactly 0 */
  for (int64_t t = 0; t < m; t++) {
    int any = 0;
    for (int64_t j = 0; j < k; j++) any |= ids[t * k + j] >= off && ids[t * k + j] < off + el;
    for (int64_t h = 0; !any && h < H; h++) assert_true(dn[t * H + h] == 0.0f);
  }
  free(x);
  free(xq);
  free(xsf);
  free(l);
  free(wts);
  free(ids);
  free(ref);
  free(ref_b);
  free(dn);
  free(ds);
  free(pf);
  epm_layer_free(&layer);
}

static void test_model_tiny(void **state) {
  (void)state;
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("tiny", &d), EPM_OK); /* H 256, I 128, E 16, k 4 */
  model_case("tiny low slice", d, 90, 0, 4, 1);
  model_case("tiny all experts", d, 70, 0, 16, 3);
  model_case("tiny one token", d, 1, 12, 4, 4);
  model_case("tiny zero tokens", d, 0, 0, 4, 5);
}

static void test_model_odd_and_mid(void **state) {
  (void)state;
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("tiny", &d), EPM_OK);
  d.routing = EPM_ROUTING_RENORMALIZE;
  d.n_group = 1;
  d.topk_group = 1;
  d.routed_scaling_factor = 1.0f;
  d.hidden = 144; /* row and K padding everywhere */
  d.intermediate = 80;
  d.shared_intermediate = 80;
  d.num_experts = 8;
  d.top_k = 2;
  model_case("odd dims H144 I80", d, 100, 0, 8, 7);
  d.hidden = 512; /* several m-tiles per expert (GEMM2: 512 rows), 70 tokens per expert: 2 decode token tiles */
  d.intermediate = 384;
  d.shared_intermediate = 384;
  d.num_experts = 4;
  d.top_k = 2;
  model_case("H512 I384, multi-tile", d, 140, 0, 4, 8);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_model_tiny),
      cmocka_unit_test(test_model_odd_and_mid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
