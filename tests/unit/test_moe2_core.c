/* SPDX-License-Identifier: Apache-2.0 */
/* test_moe2_core: the CPU-testable parts of the fast (v2) expert GEMMs —
 * the in-register FP16 dequant (kernels/moe2_core.h, the same bit
 * manipulation the sm_90a kernel runs) against the codec for every code x
 * scale pair in both variants, the FP16 conversions, the prepacked weight
 * layout read back through the wgmma register-fragment layout (as stated by
 * CUTLASS's ALayout_64x16, written out independently here), the tiled token
 * layout read back through the wgmma K-major 128B-swizzle descriptor model,
 * the persistent schedule (coverage, order, balance by bytes), and the plan
 * (shared memory within sm_90a limits, sizes at the seed's scale, errors). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/nvfp4.h"
#include "moe2_core.h"
#include "testutil.h"

static int same_f32(float a, float b) { return (a != a && b != b) || epm_core_f32_bits(a) == epm_core_f32_bits(b); }

/* Independent FP16 value of bits h: (-1)^s * m * 2^(e-25) in double. */
static double f16_value(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  if (e == 31) return m ? NAN : (s ? -INFINITY : INFINITY);
  double v = e == 0 ? ldexp((double)m, -24) : ldexp((double)(m | 1024), e - 25);
  return s ? -v : v;
}

/* Nearest FP16 to x (ties to even) by scaling to the FP16 ulp of x's binade. */
static uint16_t f16_ref(float x) {
  if (x != x) return 0x7E00;
  uint16_t sign = signbit(x) ? 0x8000 : 0;
  double a = fabs((double)x);
  if (a >= 65520.0) return sign | 0x7C00;
  int e;
  frexp(a, &e); /* a in [2^(e-1), 2^e) */
  int ulp_exp = e - 11 < -24 ? -24 : e - 11;
  double q = nearbyint(ldexp(a, -ulp_exp)); /* default rounding: to nearest even */
  double v = ldexp(q, ulp_exp);
  /* encode v */
  if (v == 0) return sign;
  int ve;
  double fr = frexp(v, &ve); /* v = fr * 2^ve, fr in [0.5, 1) */
  if (ve - 1 < -14) return sign | (uint16_t)ldexp(v, 24); /* subnormal */
  uint16_t exp_field = (uint16_t)(ve - 1 + 15);
  uint16_t man = (uint16_t)(ldexp(fr, 11) - 1024.0);
  return sign | (uint16_t)(exp_field << 10) | man;
}

static void test_f16_conversions(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = epm_core_f16_to_f32((uint16_t)h);
    double ref = f16_value((uint16_t)h);
    if (!same_f32(f, (float)ref)) fail_msg("f16 %04x -> %a, expected %a", h, (double)f, ref);
    if (f == f && epm_core_f16_from_f32(f) != h) fail_msg("f16 %04x round trip gives %04x", h, epm_core_f16_from_f32(f));
  }
  epm_test_rng_t rng = {5};
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)epm_test_rng_u64(&rng);
    if (i % 2) u = (u & 0x80000000u) | (0x30000000u + (u % 0x18000000u)); /* around the FP16 range */
    float x = epm_core_bits_f32(u);
    if (x != x) continue;
    uint16_t got = epm_core_f16_from_f32(x), want = f16_ref(x);
    if (got != want) fail_msg("f16(%a) = %04x, expected %04x", (double)x, got, want);
  }
  /* ties: halfway between 1 and the next FP16 goes to even; subnormal ties too */
  assert_int_equal(epm_core_f16_from_f32(1.0f + 0x1p-11f), 0x3C00);
  assert_int_equal(epm_core_f16_from_f32(1.0f + 3 * 0x1p-11f), 0x3C02);
  assert_int_equal(epm_core_f16_from_f32(0x1p-25f), 0x0000);
  assert_int_equal(epm_core_f16_from_f32(3 * 0x1p-25f), 0x0002);
  assert_int_equal(epm_core_f16_from_f32(65504.0f), 0x7BFF);
  assert_int_equal(epm_core_f16_from_f32(65520.0f), 0x7C00);
}

static void test_e4m3_to_f16(void **state) {
  (void)state;
  for (uint32_t b = 0; b < 256; b++)
    for (uint32_t c = 0; c < 256; c += 37) {
      uint32_t h2 = epm_core_e4m3x2_to_f16x2(b | (c << 8));
      assert_true(same_f32(epm_core_f16_to_f32((uint16_t)(h2 & 0xFFFF)), epm_e4m3_to_f32((uint8_t)b)));
      assert_true(same_f32(epm_core_f16_to_f32((uint16_t)(h2 >> 16)), epm_e4m3_to_f32((uint8_t)c)));
    }
}

/* The fragment register and half a nibble lands in, per the table of
 * epm_core_w4_dequant (nibbles 3,7 -> frag 0; 2,6 -> 1; 1,5 -> 2; 0,4 -> 3). */
static void nibble_slot(int n, int *reg, int *hi) {
  static const int reg_of[8] = {3, 2, 1, 0, 3, 2, 1, 0};
  *reg = reg_of[n];
  *hi = n >= 4;
}

/* Every code x every scale byte x every nibble position, both variants, both
 * rows of the pair: the dequantized FP16 is exactly e2m1 * e4m3 * 2^-14
 * (or * 16), NaN for the NaN scales. Counts the FP16 subnormal results. */
static void test_dequant_exhaustive(void **state) {
  (void)state;
  epm_test_rng_t rng = {11};
  long subnormal[2] = {0, 0}, finite_pairs = 0;
  for (int normal = 0; normal < 2; normal++)
    for (uint32_t code = 0; code < 16; code++)
      for (uint32_t s = 0; s < 256; s++) {
        const float want = epm_e2m1_to_f32((uint8_t)code) * epm_e4m3_to_f32((uint8_t)s) * (normal ? 16.0f : 0x1p-14f);
        int sub_counted = 0;
        if (normal == 0 && want == want) finite_pairs++;
        for (int n = 0; n < 8; n++)
          for (int row8 = 0; row8 < 2; row8++) {
            uint32_t q = (uint32_t)epm_test_rng_u64(&rng);
            q = (q & ~(0xFu << (4 * n))) | (code << (4 * n));
            uint32_t other = (uint32_t)(epm_test_rng_u64(&rng) % 0x7E); /* a finite scale for the other row */
            int reg, hi;
            nibble_slot(n, &reg, &hi);
            /* rows g (frag 0, 2) take the first scale byte, rows g+8 (1, 3) the second */
            const int is_g8 = reg & 1;
            uint32_t sg = is_g8 ? other : s, sg8 = is_g8 ? s : other;
            if (row8 != is_g8) continue; /* the scale byte must be the element's row's */
            uint32_t frag[4];
            /* through the chunk's scale words, as the kernel loads them (k16 step j) */
            const int j = (int)(epm_test_rng_u64(&rng) % 4);
            uint32_t wg = (uint32_t)epm_test_rng_u64(&rng), wg8 = (uint32_t)epm_test_rng_u64(&rng);
            wg = (wg & ~(0xFFu << (8 * j))) | (sg << (8 * j));
            wg8 = (wg8 & ~(0xFFu << (8 * j))) | (sg8 << (8 * j));
            epm_core_w4_dequant(q, epm_core_w4_scale_pair_step(wg, wg8, j, normal), normal, frag);
            const uint16_t h = (uint16_t)(hi ? frag[reg] >> 16 : frag[reg] & 0xFFFF);
            const float got = epm_core_f16_to_f32(h);
            if (!same_f32(got, want) && !(want == 0.0f && got == 0.0f))
              fail_msg("variant %d code %u scale %02x nibble %d: %a, expected %a", normal, code, s, n, (double)got,
                       (double)want);
            /* the same through the byte-pair entry point */
            uint32_t frag2[4];
            epm_core_w4_dequant(q, epm_core_w4_scale_pair(sg, sg8, normal), normal, frag2);
            assert_int_equal(frag2[reg], frag[reg]);
            if (!sub_counted && want == want && want != 0.0f && ((h >> 10) & 31) == 0) {
              subnormal[normal]++;
              sub_counted = 1;
            }
          }
        /* the activation form of the gather pass gives the same FP16 */
        const uint16_t xv = epm_core_x16_value(code, (uint8_t)s, normal);
        assert_true(same_f32(epm_core_f16_to_f32(xv), want) || (want == 0.0f && epm_core_f16_to_f32(xv) == 0.0f));
      }
  printf("dequant: %ld finite code/scale pairs; %ld FP16 subnormal results (2^-14 variant), %ld (all-normal)\n",
         finite_pairs / 1, subnormal[0], subnormal[1]);
  assert_int_equal(finite_pairs, 16 * 254);
  assert_int_equal(subnormal[1], 0); /* the fallback never produces a subnormal */
  /* the exact variant does (code 0.5, small scales): 1,320 of the 4,064 pairs,
   * the count shared/spec/perf-design.md §2.1 found independently in numpy */
  assert_int_equal(subnormal[0], 1320);
  /* folds are exact powers of two */
  assert_true(epm_core_w4_fold(0) == 268435456.0f);
  assert_true(epm_core_w4_fold(1) * 256.0f == 1.0f);
}

/* ---- prepacked weights read back through the wgmma A fragment layout ----
 * CUTLASS ALayout_64x16 (cute/atom/mma_traits_sm90_gmma.hpp): thread
 * (t0 + 4 t1 + 32 t2), value (v0 + 2 v1 + 4 v2) -> m = t1 + 16 t2 + 8 v1,
 * k = 2 t0 + v0 + 8 v2; 32-bit register r holds values 2r (low half) and
 * 2r + 1 (high half). */
static void frag_elem(int tid, int reg, int hi, int *m, int *k) {
  const int t0 = tid % 4, t1 = (tid / 4) % 8, t2 = tid / 32;
  const int v = 2 * reg + hi, v0 = v & 1, v1 = (v >> 1) & 1, v2 = v >> 2;
  *m = t1 + 16 * t2 + 8 * v1;
  *k = 2 * t0 + v0 + 8 * v2;
}

static uint8_t rand_sf(epm_test_rng_t *r) { return (uint8_t)(0x20 + epm_test_rng_u64(r) % 0x40); }

static void fill_canon(epm_test_rng_t *r, uint8_t *w, uint8_t *sf, int64_t rows, int64_t k) {
  for (int64_t i = 0; i < rows * k / 2; i++) w[i] = (uint8_t)epm_test_rng_u64(r);
  for (int64_t i = 0; i < rows * k / 16; i++) sf[i] = rand_sf(r);
}

static float canon_value(const uint8_t *w, const uint8_t *sf, int64_t k, int64_t row, int64_t col) {
  uint8_t c = (uint8_t)((w[row * (k / 2) + col / 2] >> ((col % 2) * 4)) & 15);
  return epm_e2m1_to_f32(c) * epm_e4m3_to_f32(sf[row * (k / 16) + col / 16]);
}

/* Decode a prepacked matrix [rows_pad, k_pad] the way the consumers do and
 * place every fragment value with frag_elem; *scale is the variant's. */
static float *unpack(const uint8_t *pk, int64_t rows_pad, int64_t k_pad, int normal) {
  float *a = calloc((size_t)(rows_pad * k_pad), sizeof *a);
  const int64_t kch = k_pad / 64;
  for (int64_t rb = 0; rb < rows_pad / 64; rb++)
    for (int64_t kc = 0; kc < kch; kc++) {
      const uint8_t *ch = pk + epm_core_w4_chunk_offset(rb, kc, kch);
      for (int tid = 0; tid < 128; tid++) {
        const int w = tid / 32, g = (tid % 32) / 4;
        uint32_t sg = 0, sg8 = 0;
        memcpy(&sg, ch + EPM_MOE2_CHUNK_CODE_BYTES + (16 * w + g) * 4, 4);
        memcpy(&sg8, ch + EPM_MOE2_CHUNK_CODE_BYTES + (16 * w + g + 8) * 4, 4);
        for (int j = 0; j < 4; j++) {
          uint32_t q, frag[4];
          memcpy(&q, ch + tid * 16 + j * 4, 4);
          epm_core_w4_dequant(q, epm_core_w4_scale_pair_step(sg, sg8, j, normal), normal, frag);
          for (int reg = 0; reg < 4; reg++)
            for (int hi = 0; hi < 2; hi++) {
              int m, k;
              frag_elem(tid, reg, hi, &m, &k);
              const uint16_t h = (uint16_t)(hi ? frag[reg] >> 16 : frag[reg] & 0xFFFF);
              a[(rb * 64 + m) * k_pad + kc * 64 + j * 16 + k] = epm_core_f16_to_f32(h);
            }
        }
      }
    }
  return a;
}

static void prepack_case(int64_t H, int64_t I) {
  epm_test_rng_t r = {(uint64_t)(H * 31 + I)};
  epm_moe2_plan_t p;
  assert_int_equal(epm_moe2_plan(10, H, I, 8, 2, 0, 8, NULL, &p), EPM_OK);
  uint8_t *gw = malloc((size_t)(I * H / 2)), *gs = malloc((size_t)(I * H / 16)), *uw = malloc((size_t)(I * H / 2)),
          *us = malloc((size_t)(I * H / 16)), *dw = malloc((size_t)(H * I / 2)), *ds = malloc((size_t)(H * I / 16));
  fill_canon(&r, gw, gs, I, H);
  fill_canon(&r, uw, us, I, H);
  fill_canon(&r, dw, ds, H, I);
  uint8_t *w13 = malloc(p.w13_expert_bytes), *w2 = malloc(p.w2_expert_bytes);
  memset(w13, 0xAB, p.w13_expert_bytes); /* every byte must be written */
  memset(w2, 0xAB, p.w2_expert_bytes);
  assert_int_equal(epm_moe2_prepack_expert(&p, gw, gs, uw, us, dw, ds, w13, w2), EPM_OK);
  for (int normal = 0; normal < 2; normal++) {
    const float f = normal ? 16.0f : 0x1p-14f;
    float *a1 = unpack(w13, p.rows1_pad, p.hidden_pad, normal);
    for (int64_t R = 0; R < p.rows1_pad; R++) {
      /* rows 16q + 0..7 are gate rows 8q.., 16q + 8..15 the up rows 8q.. */
      const int64_t jrow = 8 * (R / 16) + R % 8;
      const int up = (R % 16) >= 8;
      for (int64_t k = 0; k < p.hidden_pad; k++) {
        float want = 0.0f;
        if (jrow < I && k < H) want = canon_value(up ? uw : gw, up ? us : gs, H, jrow, k) * f;
        if (!same_f32(a1[R * p.hidden_pad + k], want) && !(want == 0.0f && a1[R * p.hidden_pad + k] == 0.0f))
          fail_msg("gemm1 H%lld I%lld variant %d row %lld k %lld: %a, expected %a", (long long)H, (long long)I,
                   normal, (long long)R, (long long)k, (double)a1[R * p.hidden_pad + k], (double)want);
      }
    }
    float *a2 = unpack(w2, p.rows2_pad, p.inter_pad, normal);
    for (int64_t R = 0; R < p.rows2_pad; R++)
      for (int64_t k = 0; k < p.inter_pad; k++) {
        float want = (R < H && k < I) ? canon_value(dw, ds, I, R, k) * f : 0.0f;
        if (!same_f32(a2[R * p.inter_pad + k], want) && !(want == 0.0f && a2[R * p.inter_pad + k] == 0.0f))
          fail_msg("gemm2 H%lld I%lld row %lld k %lld: %a, expected %a", (long long)H, (long long)I, (long long)R,
                   (long long)k, (double)a2[R * p.inter_pad + k], (double)want);
      }
    free(a1);
    free(a2);
  }
  free(gw);
  free(gs);
  free(uw);
  free(us);
  free(dw);
  free(ds);
  free(w13);
  free(w2);
}

static void test_prepack_fragments(void **state) {
  (void)state;
  prepack_case(256, 128); /* tiny preset */
  prepack_case(144, 80);  /* not multiples of any tile: row and K padding */
  prepack_case(1024, 512);
}

/* ---- tiled FP16 tokens read back through the wgmma descriptor model ----
 * K-major, 128B swizzle (CUTLASS canonical Swizzle<3,4,3> o ((8,n),(8,k))):
 * element (n, kk) of a tile whose descriptor starts at byte S (S % 1024 == 0
 * plus 32 per k16 step) is at S + (n / 8) * SBO + (n % 8) * 128 + kk * 2, then
 * bits [4,7) ^= bits [7,10). The producer copied the tile's rows [row0,
 * row0 + N) of atom column a contiguously from x16 + (a * rows/8 + row0/8) *
 * 1024, so the byte the tensor core reads must be epm_core_x16_offset of the
 * element. */
static void test_x16_descriptor_model(void **state) {
  (void)state;
  const int64_t rows_total = 96, k_pad = 256;
  /* bijection onto [0, rows * K * 2) */
  size_t nbytes = (size_t)(rows_total * k_pad * 2);
  unsigned char *seen = calloc(nbytes / 2, 1);
  for (int64_t r = 0; r < rows_total; r++)
    for (int64_t k = 0; k < k_pad; k++) {
      int64_t o = epm_core_x16_offset(r, k, rows_total);
      assert_true(o >= 0 && o + 2 <= (int64_t)nbytes && o % 2 == 0);
      assert_int_equal(seen[o / 2], 0);
      seen[o / 2] = 1;
      if (k % 8 == 0) assert_int_equal(o % 16, 0); /* 16-byte chunks stay whole */
    }
  free(seen);
  for (int64_t row0 = 0; row0 + 64 <= rows_total; row0 += 8)
    for (int64_t a = 0; a < k_pad / 64; a++)
      for (int j = 0; j < 4; j++)
        for (int n = 0; n < 64; n++)
          for (int kk = 0; kk < 16; kk++) {
            const uint32_t off = (uint32_t)(j * 32 + (n / 8) * 1024 + (n % 8) * 128 + kk * 2);
            const uint32_t sw = off ^ (((off >> 7) & 7u) << 4);
            const int64_t global = (a * (rows_total / 8) + row0 / 8) * 1024 + sw;
            assert_int_equal(global, epm_core_x16_offset(row0 + n, a * 64 + j * 16 + kk, rows_total));
          }
}

/* ---- schedule ---- */
static void sched_check(int regime, const int32_t *counts, int64_t el, int64_t m_tiles, int64_t k_pad, int64_t G) {
  const epm_core_moe2_tile_t t = epm_core_moe2_tile(regime);
  epm_core_sched_t s = {m_tiles, k_pad, (int64_t)(t.bm / 64) * (k_pad / 64) * EPM_MOE2_CHUNK_BYTES, t.bn_max,
                        regime};
  int64_t *uoff = malloc((size_t)(el + 1) * 8), *coff = malloc((size_t)(el + 1) * 8);
  epm_core_sched_scan(&s, counts, el, uoff, coff);
  /* direct enumeration: e, mt, nt in order, tile costs summed independently */
  int64_t u = 0, T = 0, maxc = 0;
  for (int64_t e = 0; e < el; e++)
    for (int64_t mt = 0; mt < m_tiles; mt++)
      for (int64_t n0 = 0; n0 < counts[e]; n0 += t.bn_max) {
        const int64_t rows = counts[e] - n0 < t.bn_max ? counts[e] - n0 : t.bn_max;
        epm_core_sched_unit_t x = epm_core_sched_unit(&s, counts, uoff, el, u);
        assert_int_equal(x.e, e);
        assert_int_equal(x.mt, mt);
        assert_int_equal(x.nt * t.bn_max, n0);
        assert_int_equal(x.rows, rows);
        assert_int_equal(epm_core_sched_prefix(&s, counts, uoff, coff, el, u), T);
        const int32_t n = epm_core_moe2_tile_n(regime, rows);
        assert_true(n >= rows && n % 16 == 0 && n <= t.bn_max);
        const int64_t c = s.w_tile_bytes + (int64_t)n * k_pad * 2;
        T += c;
        maxc = c > maxc ? c : maxc;
        u++;
      }
  assert_int_equal(uoff[el], u);
  assert_int_equal(coff[el], T);
  assert_int_equal(epm_core_sched_prefix(&s, counts, uoff, coff, el, u), T);
  /* CTA ranges: contiguous, cover [0, U), each within T / G + one unit */
  int64_t prev = epm_core_sched_begin(&s, counts, uoff, coff, el, 0, G);
  assert_int_equal(prev, 0);
  for (int64_t c = 1; c <= G; c++) {
    const int64_t b = epm_core_sched_begin(&s, counts, uoff, coff, el, c, G);
    assert_true(b >= prev);
    const int64_t load = epm_core_sched_prefix(&s, counts, uoff, coff, el, b) -
                         epm_core_sched_prefix(&s, counts, uoff, coff, el, prev);
    if (load > T / G + maxc + 1)
      fail_msg("CTA %lld of %lld carries %lld bytes > %lld / %lld + %lld", (long long)(c - 1), (long long)G,
               (long long)load, (long long)T, (long long)G, (long long)maxc);
    prev = b;
  }
  assert_int_equal(prev, u);
  free(uoff);
  free(coff);
}

static void test_schedule(void **state) {
  (void)state;
  epm_test_rng_t r = {3};
  int32_t counts[64];
  for (int it = 0; it < 60; it++) {
    const int64_t el = 1 + (int64_t)(epm_test_rng_u64(&r) % 64);
    for (int64_t e = 0; e < el; e++) {
      const uint64_t v = epm_test_rng_u64(&r);
      counts[e] = (int32_t)(v % 5 == 0 ? 0 : (v % 7 == 0 ? 1 + v % 3 : v % 700)); /* empty, tiny, varied */
    }
    const int regime = it % 2;
    sched_check(regime, counts, el, 1 + it % 28, 128 * (1 + it % 56), 1 + (int64_t)(epm_test_rng_u64(&r) % 200));
  }
  /* all empty: no units, every CTA empty */
  memset(counts, 0, sizeof counts);
  sched_check(0, counts, 8, 16, 7168, 132);
  /* int64: huge counts and K still exact */
  for (int e = 0; e < 4; e++) counts[e] = INT32_MAX - e;
  const epm_core_sched_t s = {28, 7168, 4 * 56 * EPM_MOE2_CHUNK_BYTES, 64, 0};
  int64_t uoff[5], coff[5];
  epm_core_sched_scan(&s, counts, 4, uoff, coff);
  /* 28 m-tiles x ceil((2^31 - 1 - e) / 64) token tiles per expert */
  assert_int_equal(uoff[1], 28 * 33554432LL);
  assert_true(coff[4] > (int64_t)1 << 50);
  assert_int_equal(epm_core_sched_begin(&s, counts, uoff, coff, 4, 132, 132), uoff[4]);
}

/* ---- plan ---- */
static void test_plan_shapes(void **state) {
  (void)state;
  for (int regime = 0; regime < 2; regime++) {
    const epm_core_moe2_tile_t t = epm_core_moe2_tile(regime);
    const int64_t smem = epm_core_moe2_smem_bytes(t);
    printf("tile %s: %dx%dx%d, %d stages, %lld bytes of shared memory (limit %d)\n",
           regime ? "prefill" : "decode", t.bm, t.bn_max, t.bk, t.stages, (long long)smem, EPM_MOE2_SMEM_MAX);
    assert_true(smem <= EPM_MOE2_SMEM_MAX);
    assert_int_equal(epm_core_moe2_stage_bytes(t) % 1024, 0);
    assert_int_equal(epm_core_moe2_stage_act_bytes(t) % 1024, 0);
    assert_int_equal(t.bm % 128, 0);                   /* two warpgroups of m64 blocks */
    assert_int_equal(EPM_MOE2_ROW_PAD % t.bm, 0);      /* one prepack serves both tiles */
    assert_int_equal(EPM_MOE2_K_PAD % t.bk, 0);
    assert_true(EPM_MOE2_ROW_SLACK >= t.bn_max);       /* a tile never reads past the buffer */
  }
  /* DeepSeek-R1 at EP8, 1,024 gathered tokens: decode tiles, no padding waste */
  epm_moe2_plan_t p;
  assert_int_equal(epm_moe2_plan(1024, 7168, 2048, 256, 8, 32, 32, NULL, &p), EPM_OK);
  assert_int_equal(p.opts.tiles, EPM_MOE2_TILES_DECODE);
  assert_int_equal(p.hidden_pad, 7168);
  assert_int_equal(p.inter_pad, 2048);
  assert_int_equal(p.rows1_pad, 4096);
  assert_int_equal(p.rows2_pad, 7168);
  assert_int_equal(p.m_tiles1, 16);
  assert_int_equal(p.m_tiles2, 28);
  assert_int_equal(p.w13_expert_bytes, (size_t)16515072); /* 4096 x 7168 x 0.5625 */
  assert_int_equal(p.w2_expert_bytes, (size_t)8257536);   /* 7168 x 2048 x 0.5625 */
  assert_int_equal(p.grid_gemm, 132);
  assert_int_equal(p.block_gemm, 384);
  assert_int_equal(p.smem_bytes, epm_core_moe2_smem_bytes(epm_core_moe2_tile(0)));
  /* 8 experts per token, 32 local: worst case 8 local pairs per token */
  int64_t lp, mt, rows;
  assert_int_equal(epm_plan_local_rows_bound(1024, 8, 32, 8, &lp, &mt, &rows), EPM_OK);
  assert_int_equal(p.max_rows, rows + 256);
  assert_int_equal(p.x16_bytes, (size_t)(p.max_rows * 7168 * 2));
  assert_int_equal(p.inter16_bytes, (size_t)(p.max_rows * 2048 * 2));
  assert_int_equal(p.inter_packed_bytes, 0);
  /* 32,768 gathered tokens: prefill tiles */
  assert_int_equal(epm_moe2_plan(32768, 7168, 2048, 256, 8, 32, 32, NULL, &p), EPM_OK);
  assert_int_equal(p.opts.tiles, EPM_MOE2_TILES_PREFILL);
  assert_int_equal(p.m_tiles1, 32);
  assert_int_equal(p.m_tiles2, 56);
  /* the seed's size: EP32 x 10,240 tokens, all sizes int64, > 2^32 bytes */
  epm_moe2_opts_t o = EPM_MOE2_OPTS_INIT;
  o.packed_intermediate = 1;
  assert_int_equal(epm_moe2_plan(327680, 7168, 2048, 256, 8, 0, 8, &o, &p), EPM_OK);
  assert_true(p.x16_bytes > ((size_t)1 << 32));
  assert_int_equal(p.inter_packed_bytes, (size_t)(p.max_rows * 1024));
  assert_true(p.workspace_bytes > p.x16_bytes + p.inter16_bytes + p.y_bytes);
  /* padding for odd dims */
  assert_int_equal(epm_moe2_plan(5, 144, 80, 8, 2, 0, 8, NULL, &p), EPM_OK);
  assert_int_equal(p.hidden_pad, 256);
  assert_int_equal(p.inter_pad, 128);
  assert_int_equal(p.rows1_pad, 256);
  assert_int_equal(p.rows2_pad, 256);
  assert_int_equal(p.grid_gemm, p.max_units1 > p.max_units2 ? (p.max_units1 < 132 ? p.max_units1 : 132)
                                                             : (p.max_units2 < 132 ? p.max_units2 : 132));
}

static void test_plan_carve(void **state) {
  (void)state;
  epm_moe2_opts_t o = EPM_MOE2_OPTS_INIT;
  o.packed_intermediate = 1;
  epm_moe2_plan_t p;
  assert_int_equal(epm_moe2_plan(300, 256, 128, 16, 4, 4, 4, &o, &p), EPM_OK);
  void *base = aligned_alloc(1024, p.workspace_bytes);
  epm_moe2_workspace_t ws;
  assert_int_equal(epm_moe2_workspace_carve(&p, base, &ws), EPM_OK);
  /* pieces in order, aligned, disjoint, inside the allocation */
  const uint8_t *b = base;
  const struct {
    const void *p;
    size_t n;
  } pc[] = {{ws.counts, p.counts_bytes},     {ws.offsets, p.offsets_bytes}, {ws.uoff1, p.sched_bytes},
            {ws.pair_row, p.pair_row_bytes}, {ws.x16, p.x16_bytes},         {ws.inter16, p.inter16_bytes},
            {ws.inter_packed, p.inter_packed_bytes}, {ws.inter_sf, p.inter_sf_bytes}, {ws.y, p.y_bytes}};
  size_t end = 0;
  for (size_t i = 0; i < sizeof pc / sizeof pc[0]; i++) {
    size_t off = (size_t)((const uint8_t *)pc[i].p - b);
    assert_int_equal(off % 1024, 0);
    assert_true(off >= end);
    end = off + pc[i].n;
  }
  assert_true(end <= p.workspace_bytes);
  assert_ptr_equal(ws.cursors, ws.counts + 4);
  assert_ptr_equal(ws.coff2, ws.uoff1 + 3 * 5);
  o.packed_intermediate = 0;
  assert_int_equal(epm_moe2_plan(300, 256, 128, 16, 4, 4, 4, &o, &p), EPM_OK);
  assert_int_equal(epm_moe2_workspace_carve(&p, base, &ws), EPM_OK);
  assert_null(ws.inter_packed);
  assert_int_equal(epm_moe2_workspace_carve(&p, (uint8_t *)base + 256, &ws), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "1024-byte aligned"));
  free(base);
}

static void test_plan_errors(void **state) {
  (void)state;
  epm_moe2_plan_t p;
  epm_moe2_opts_t o = EPM_MOE2_OPTS_INIT;
  o.sm_count = 0;
  assert_int_equal(epm_moe2_plan(10, 256, 128, 16, 4, 0, 4, &o, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "sm_count = 0"));
  o = (epm_moe2_opts_t)EPM_MOE2_OPTS_INIT;
  o.arch = 80;
  assert_int_equal(epm_moe2_plan(10, 256, 128, 16, 4, 0, 4, &o, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "arch = 80"));
  o = (epm_moe2_opts_t)EPM_MOE2_OPTS_INIT;
  o.fp16 = (epm_moe2_fp16_t)3;
  assert_int_equal(epm_moe2_plan(10, 256, 128, 16, 4, 0, 4, &o, &p), EPM_ERR_INVALID_ARG);
  o = (epm_moe2_opts_t)EPM_MOE2_OPTS_INIT;
  o.tiles = (epm_moe2_tiles_t)7;
  assert_int_equal(epm_moe2_plan(10, 256, 128, 16, 4, 0, 4, &o, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe2_plan(10, 250, 128, 16, 4, 0, 4, NULL, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "hidden = 250"));
  assert_int_equal(epm_moe2_plan(10, 256, 128, 16, 4, 14, 4, NULL, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe2_plan(INT32_MAX, (int64_t)1 << 40, 128, 16, 4, 0, 4, NULL, &p), EPM_ERR_OVERFLOW);
  assert_int_equal(epm_moe2_plan(10, 256, 128, 16, 4, 0, 4, NULL, NULL), EPM_ERR_INVALID_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f16_conversions),  cmocka_unit_test(test_e4m3_to_f16),
      cmocka_unit_test(test_dequant_exhaustive), cmocka_unit_test(test_prepack_fragments),
      cmocka_unit_test(test_x16_descriptor_model), cmocka_unit_test(test_schedule),
      cmocka_unit_test(test_plan_shapes),      cmocka_unit_test(test_plan_carve),
      cmocka_unit_test(test_plan_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
