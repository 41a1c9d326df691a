/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_core.h — the scalar, layout and schedule math of the fast (v2)
 * expert GEMMs, shared by the CUDA kernels (moe2_gemm.cu, moe2_permute.cu),
 * their pure-C plan and prepack (moe2_plan.c, moe2_prepack.c) and the CPU
 * tests (private to kernels/ and tests/).
 *
 * Like nvfp4_core.h it compiles as C11 on the host and __host__ __device__
 * under nvcc, so the bit manipulation the kernels run is the one the CPU
 * tests check exhaustively against the codec.
 *
 * Numerics (shared/spec/perf-design.md §2.1). A weight word holds 8 E2M1
 * codes; placing a code's sign at bit 15 and its (e1 e0 m) bits at 11..9 of
 * an FP16 lane gives exactly e2m1 * 2^-14 (code 0.5 lands on an FP16
 * subnormal), and one FP16 multiply by the block scale (E4M3 -> FP16 is exact)
 * gives e2m1 * s * 2^-14, an integer multiple of 2^-24, hence exact. The
 * activations take the same form, so every tensor-core product is exact and
 * only the fp32 summation order differs from the reference; the 2^-14 of both
 * operands folds into the fp32 epilogue scale (2^28, exact). If a GPU turns
 * out to flush FP16 subnormal wgmma inputs, the all-normal variant scales both
 * operands to e2m1 * 16 * s instead (values in [2^-6, 43008], all FP16
 * normals, fold 2^-8), one more FP16 multiply per element pair.
 */
#ifndef EPMOE_KERNELS_MOE2_CORE_H
#define EPMOE_KERNELS_MOE2_CORE_H

#include <stdint.h>

#include "nvfp4_core.h"

/* ---- fixed geometry -------------------------------------------------------
 * A prepacked weight chunk covers 64 rows x 64 k: 2048 bytes of codes (128
 * threads x 4 words, one word per k16 step) then 256 bytes of scales
 * (row-major [64 rows][4 k16 steps]). */
#define EPM_MOE2_CHUNK_ROWS 64
#define EPM_MOE2_CHUNK_K 64
#define EPM_MOE2_CHUNK_CODE_BYTES 2048
#define EPM_MOE2_CHUNK_BYTES 2304
/* Prepacked weight rows pad to the largest tile height, K to the largest
 * stage depth, so one prepacked form serves both tile shapes. */
#define EPM_MOE2_ROW_PAD 256
#define EPM_MOE2_K_PAD 128
/* Permuted rows of each expert pad to one FP16 swizzle atom (8 rows); a token
 * tile may read up to EPM_MOE2_ROW_SLACK rows past the last expert's rows. */
#define EPM_MOE2_ROW_ALIGN 8
#define EPM_MOE2_ROW_SLACK 256
#define EPM_MOE2_ATOM_BYTES 1024 /* 8 rows x 64 FP16, 128-byte swizzled */
#define EPM_MOE2_THREADS 384     /* 2 consumer warpgroups + 1 producer warpgroup */
#define EPM_MOE2_CONSUMERS 256
/* Largest dynamic shared memory of one CTA on sm_90 and sm_100 (227 KB). */
#define EPM_MOE2_SMEM_MAX 232448
#define EPM_MOE2_SMEM_ALIGN 1024 /* swizzled tiles need 1024-byte aligned bases */

/* The sm_100a path: per-expert rows pad to the 128-row scale-factor tile; its
 * argument arrays and CUTLASS's workspace take this much of the workspace's
 * schedule piece (moe2_sm100_cutlass.cu checks its needs against it). */
#define EPM_MOE2_SM100_ROW_ALIGN 128
#define EPM_MOE2_SM100_GROUP_BYTES 2048
#define EPM_MOE2_SM100_CUTLASS_WS ((int64_t)8 << 20)

/* Regimes (epm_moe2_plan_t.regime): decode streams every weight tile once
 * for few tokens; prefill reuses a weight tile over up to 256 tokens. */
#define EPM_MOE2_REGIME_DECODE 0
#define EPM_MOE2_REGIME_PREFILL 1

#define EPM_MOE2_DECODE_BM 256
#define EPM_MOE2_DECODE_BN 64
#define EPM_MOE2_DECODE_BK 128
#define EPM_MOE2_DECODE_STAGES 6
#define EPM_MOE2_PREFILL_BM 128
#define EPM_MOE2_PREFILL_BN 256
#define EPM_MOE2_PREFILL_BK 64
#define EPM_MOE2_PREFILL_STAGES 5

/* Dequant variants (epm_moe2_plan_t.dequant). */
#define EPM_MOE2_DEQUANT_SUBNORMAL 0
#define EPM_MOE2_DEQUANT_NORMAL 1

typedef struct {
  int32_t bm, bn_max, bk, stages;
} epm_core_moe2_tile_t;

EPM_HD epm_core_moe2_tile_t epm_core_moe2_tile(int regime) {
  epm_core_moe2_tile_t t;
  if (regime == EPM_MOE2_REGIME_PREFILL) {
    t.bm = EPM_MOE2_PREFILL_BM;
    t.bn_max = EPM_MOE2_PREFILL_BN;
    t.bk = EPM_MOE2_PREFILL_BK;
    t.stages = EPM_MOE2_PREFILL_STAGES;
  } else {
    t.bm = EPM_MOE2_DECODE_BM;
    t.bn_max = EPM_MOE2_DECODE_BN;
    t.bk = EPM_MOE2_DECODE_BK;
    t.stages = EPM_MOE2_DECODE_STAGES;
  }
  return t;
}

/* Shared memory of one pipeline stage: the FP16 token tile (bk/64 atoms of
 * bn_max rows x 128 bytes, first: 1024-aligned) then the weight chunks
 * (bm/64 row blocks x bk/64 chunks), rounded to 1024. */
EPM_HD int64_t epm_core_moe2_stage_act_bytes(epm_core_moe2_tile_t t) {
  return (int64_t)(t.bk / 64) * t.bn_max * 128;
}
EPM_HD int64_t epm_core_moe2_stage_bytes(epm_core_moe2_tile_t t) {
  int64_t b = epm_core_moe2_stage_act_bytes(t) + (int64_t)(t.bm / 64) * (t.bk / 64) * EPM_MOE2_CHUNK_BYTES;
  return (b + EPM_MOE2_SMEM_ALIGN - 1) / EPM_MOE2_SMEM_ALIGN * EPM_MOE2_SMEM_ALIGN;
}
/* GEMM1 epilogue staging per consumer warpgroup: [bn_max tokens][j + 8] bf16,
 * j = bm/4 intermediate columns (the +8 keeps the stores bank-conflict free). */
EPM_HD int64_t epm_core_moe2_epi_pitch(epm_core_moe2_tile_t t) { return (int64_t)t.bm / 4 + 8; }
EPM_HD int64_t epm_core_moe2_epi_bytes(epm_core_moe2_tile_t t) {
  return 2 * (int64_t)t.bn_max * epm_core_moe2_epi_pitch(t) * 2;
}
/* Total dynamic shared memory: alignment slack + stages + epilogue + the
 * full/empty mbarriers. */
EPM_HD int64_t epm_core_moe2_smem_bytes(epm_core_moe2_tile_t t) {
  return EPM_MOE2_SMEM_ALIGN + t.stages * epm_core_moe2_stage_bytes(t) + epm_core_moe2_epi_bytes(t) +
         2 * 8 * (int64_t)t.stages;
}

EPM_HD int64_t epm_core_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* wgmma N (tokens) of a tile holding `rows` valid tokens: decode 16, 32 or
 * 64, prefill 64, 128 or 256 (rows past the count are read but masked).
 * Three N per kernel: with a fourth, ptxas 13.0 serializes the wgmmas of the
 * whole kernel ("insufficient register resources"), so the decode tile does
 * not follow the count in steps of 8. */
EPM_HD int32_t epm_core_moe2_tile_n(int regime, int64_t rows) {
  if (regime == EPM_MOE2_REGIME_PREFILL) return rows <= 64 ? 64 : (rows <= 128 ? 128 : 256);
  return rows <= 16 ? 16 : (rows <= 32 ? 32 : 64);
}

/* ---- FP16 ---------------------------------------------------------------- */

EPM_HD float epm_core_f16_to_f32(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16, e = ((uint32_t)h >> 10) & 31u, m = (uint32_t)h & 1023u;
  float mag;
  if (e == 0) mag = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
  else if (e == 31) return epm_core_bits_f32(sign | 0x7F800000u | (m << 13) | (m ? 0x400000u : 0u));
  else mag = epm_core_bits_f32(((e + 112u) << 23) | (m << 13));
  return epm_core_bits_f32(sign | epm_core_f32_bits(mag));
}

/* fp32 -> FP16, round to nearest even, subnormals kept, overflow to inf,
 * NaN to a quiet NaN (the IEEE conversion __float2half_rn does). */
EPM_HD uint16_t epm_core_f16_from_f32(float x) {
  uint32_t u = epm_core_f32_bits(x);
  uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);
  if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520 rounds to inf */
  if (a < 0x38800000u) {                                  /* < 2^-14: subnormal, step 2^-24 */
    float s = epm_core_bits_f32(a) * 16777216.0f;         /* exact */
    uint32_t q = (uint32_t)s;
    float frac = s - (float)q;
    if (frac > 0.5f || (frac == 0.5f && (q & 1u))) q++;
    return (uint16_t)(sign | q); /* q == 1024 is the smallest normal */
  }
  uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);
  return (uint16_t)(sign | ((r >> 13) - (112u << 10)));
}

/* Two FP16 multiplies, round to nearest even (mul.rn.f16x2). On the host the
 * exact fp32 product (11 x 11 significant bits) is rounded once, which is the
 * correctly rounded FP16 product. */
EPM_HD uint32_t epm_core_hmul2(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  uint32_t r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
#else
  uint16_t lo = epm_core_f16_from_f32(epm_core_f16_to_f32((uint16_t)(a & 0xFFFFu)) *
                                      epm_core_f16_to_f32((uint16_t)(b & 0xFFFFu)));
  uint16_t hi = epm_core_f16_from_f32(epm_core_f16_to_f32((uint16_t)(a >> 16)) *
                                      epm_core_f16_to_f32((uint16_t)(b >> 16)));
  return (uint32_t)lo | ((uint32_t)hi << 16);
#endif
}

/* Two E4M3 bytes (low byte -> low half) to FP16x2, exact for every finite
 * E4M3 value (cvt.rn.f16x2.e4m3x2 on sm_89+). */
EPM_HD uint32_t epm_core_e4m3x2_to_f16x2(uint32_t two) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t r;
  unsigned short in = (unsigned short)(two & 0xFFFFu);
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(in));
  return r;
#else
  uint16_t lo = epm_core_f16_from_f32(epm_core_e4m3_to_f32((uint8_t)(two & 0xFFu)));
  uint16_t hi = epm_core_f16_from_f32(epm_core_e4m3_to_f32((uint8_t)((two >> 8) & 0xFFu)));
  return (uint32_t)lo | ((uint32_t)hi << 16);
#endif
}

/* Byte permute (PRMT / __byte_perm): result byte i = byte sel_i of {b:a}. */
EPM_HD uint32_t epm_core_prmt(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
  return __byte_perm(a, b, sel);
#else
  uint64_t v = (uint64_t)a | ((uint64_t)b << 32);
  uint32_t r = 0;
  for (int i = 0; i < 4; i++) {
    uint32_t s = (sel >> (4 * i)) & 7u;
    r |= (uint32_t)((v >> (8 * s)) & 0xFFu) << (8 * i);
  }
  return r;
#endif
}

/* ---- weight dequant (the A operand, in registers) -------------------------
 * Code placement of the two nibbles at bits 12..15 and 28..31 of q into an
 * FP16x2: sign to bit 15/31, (e1 e0 m) to bits 9..11 / 25..27. */
EPM_HD uint32_t epm_core_w4_place(uint32_t q) { return (q & 0x80008000u) | ((q >> 3) & 0x0E000E00u); }

#define EPM_CORE_F16X2_2P14 0x74007400u /* FP16 2^14 in both halves */
#define EPM_CORE_F16X2_16 0x4C004C00u   /* FP16 16 in both halves */

/* FP16x2 scales of one k16 step: (s_g, s_g8) from the scale bytes of rows g
 * and g + 8, times 16 for the all-normal variant (exact: s <= 448). */
EPM_HD uint32_t epm_core_w4_scale_pair(uint32_t sg_byte, uint32_t sg8_byte, int normal) {
  uint32_t s = epm_core_e4m3x2_to_f16x2((sg_byte & 0xFFu) | ((sg8_byte & 0xFFu) << 8));
  return normal ? epm_core_hmul2(s, EPM_CORE_F16X2_16) : s;
}

/* The same from the chunk's scale words of rows g and g + 8 (byte j = k16
 * step j), as the kernel loads them: one byte permute picks the pair. */
EPM_HD uint32_t epm_core_w4_scale_pair_step(uint32_t sg_word, uint32_t sg8_word, int j, int normal) {
  uint32_t s = epm_core_e4m3x2_to_f16x2(epm_core_prmt(sg_word, sg8_word, (uint32_t)j | ((uint32_t)(4 + j) << 4)));
  return normal ? epm_core_hmul2(s, EPM_CORE_F16X2_16) : s;
}

/* One thread's wgmma A fragment of one m64 x k16 step from its prepacked
 * word q and the scale pair (s_g, s_g8): frag[0] = row g, k 2t..2t+1;
 * frag[1] = row g+8, same k; frag[2] = row g, k 2t+8..2t+9; frag[3] = row
 * g+8, k 2t+8..2t+9 (low half = even k). Nibble n of q (bits 4n..4n+3) holds:
 * n=3,7 -> frag[0] lo,hi; n=2,6 -> frag[1]; n=1,5 -> frag[2]; n=0,4 -> frag[3]
 * (each step takes the nibbles at bits 12..15 and 28..31, then q <<= 4). */
EPM_HD void epm_core_w4_dequant(uint32_t q, uint32_t s_pair, int normal, uint32_t frag[4]) {
  const uint32_t sg = epm_core_prmt(s_pair, 0u, 0x1010u);  /* (s_g, s_g) */
  const uint32_t sg8 = epm_core_prmt(s_pair, 0u, 0x3232u); /* (s_g8, s_g8) */
  for (int r = 0; r < 4; r++) {
    uint32_t v = epm_core_w4_place(q);
    if (normal) v = epm_core_hmul2(v, EPM_CORE_F16X2_2P14);
    frag[r] = epm_core_hmul2(v, (r & 1) ? sg8 : sg);
    q <<= 4;
  }
}

/* Nibble n of a thread's word: row offset (0 or 8 from row g) and k offset
 * (from k = 2t of the k16 step) of the element it holds. */
EPM_HD void epm_core_w4_nibble_elem(int n, int *drow, int *dk) {
  /* n: 3 7 2 6 1 5 0 4 -> frag 0lo 0hi 1lo 1hi 2lo 2hi 3lo 3hi */
  const int frag = 3 - (n & 3), hi = n >> 2;
  *drow = (frag & 1) ? 8 : 0;
  *dk = ((frag & 2) ? 8 : 0) + hi;
}

/* Row and k (within a 64 x 64 chunk) of nibble n of thread tid's word for
 * k16 step j: warp w = tid/32 owns rows 16w..16w+15, lane = 4g + t. */
EPM_HD void epm_core_w4_chunk_elem(int tid, int j, int n, int *row, int *k) {
  int dr, dk;
  const int w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  epm_core_w4_nibble_elem(n, &dr, &dk);
  *row = 16 * w + g + dr;
  *k = 16 * j + 2 * t + dk;
}

/* Power of two that turns the fp32 accumulator of the scaled operands back
 * into the unscaled sum: 2^28 (each operand x 2^-14) or 2^-8 (each x 16). */
EPM_HD float epm_core_w4_fold(int normal) { return normal ? 0x1p-8f : 0x1p28f; }

/* FP16 form of one activation element for the B operand: e2m1(code) *
 * e4m3(sf) * (2^-14 or 16), exact (the same value the weight dequant gives). */
EPM_HD uint16_t epm_core_x16_value(uint32_t code, uint8_t sf, int normal) {
  return epm_core_f16_from_f32(epm_core_e2m1_to_f32(code) * epm_core_e4m3_to_f32(sf) *
                               (normal ? 16.0f : 0x1p-14f));
}

/* ---- layouts -------------------------------------------------------------- */

/* GEMM1's prepacked rows interleave gate and up in blocks of 8, so rows g
 * and g + 8 of every 16-row warp block are gate[j] and up[j] of the same j:
 * row R -> j = 8 * (R / 16) + R % 8, up when R % 16 >= 8. Returns 0 for a
 * padding row (j >= I). */
EPM_HD int epm_core_w13_source(int64_t R, int64_t inter, int *is_up, int64_t *row) {
  const int64_t j = 8 * (R / 16) + R % 8;
  *is_up = (int)((R % 16) >= 8);
  *row = j;
  return j < inter;
}

/* Accumulator register r (0 .. N/2-1) of m64 block b of consumer warpgroup
 * wg, thread tid (wgmma m64nN f32 layout: register 4i + q holds row g + 8 *
 * (q >> 1), token column 8i + 2t + (q & 1)): its row within the bm-row tile
 * and its token column within the tile. */
EPM_HD void epm_core_moe2_acc_pos(int bm, int wg, int b, int tid, int r, int *row, int *col) {
  const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4, i = r / 4, q = r % 4;
  *row = wg * (bm / 2) + b * 64 + 16 * w + g + ((q & 2) ? 8 : 0);
  *col = 8 * i + 2 * t + (q & 1);
}

/* Byte offset of chunk (row block rb, k chunk kc) of one prepacked matrix. */
EPM_HD int64_t epm_core_w4_chunk_offset(int64_t rb, int64_t kc, int64_t k_chunks) {
  return (rb * k_chunks + kc) * EPM_MOE2_CHUNK_BYTES;
}

/* Byte offset of FP16 element (row, k) in the tiled token buffer: 1024-byte
 * atoms ordered [k / 64][row / 8], inside an atom row r = row % 8 at r * 128
 * with its 16-byte chunks XOR-swizzled by r (the wgmma K-major 128B swizzle),
 * so a tile of N rows x 64 k is one contiguous N * 128-byte copy. rows_total
 * is a multiple of 8. */
EPM_HD int64_t epm_core_x16_offset(int64_t row, int64_t k, int64_t rows_total) {
  const int64_t r = row % 8, c = (k % 64) / 8;
  return ((k / 64) * (rows_total / 8) + row / 8) * EPM_MOE2_ATOM_BYTES + r * 128 + ((c ^ r) * 16) +
         (k % 8) * 2;
}

/* ---- persistent schedule ---------------------------------------------------
 * Work units of one grouped GEMM are (local expert e, weight row tile mt,
 * token tile nt), ordered e, then mt, then nt, so the token tiles of one
 * weight tile run back to back on one CTA (the second read of the weights
 * hits L2). A unit costs the bytes it moves into shared memory: its weight
 * tile plus its FP16 token tile. CTA c of G takes the contiguous unit range
 * whose starting cost lies in [c T / G, (c+1) T / G), so no CTA carries more
 * than T / G + one unit. The per-expert prefix arrays are built on the device
 * by one thread (the scan) from the token counts; everything else is closed
 * form, so no unit list is materialised. */
typedef struct {
  int64_t m_tiles;      /* weight row tiles per expert */
  int64_t k_pad;        /* K of the GEMM, padded */
  int64_t w_tile_bytes; /* prepacked weight bytes of one unit */
  int32_t bn_max;
  int32_t regime;
} epm_core_sched_t;

EPM_HD int64_t epm_core_sched_ntiles(const epm_core_sched_t *s, int64_t count) {
  return (count + s->bn_max - 1) / s->bn_max;
}
/* Valid tokens of token tile nt of an expert with `count` tokens. */
EPM_HD int64_t epm_core_sched_tile_rows(const epm_core_sched_t *s, int64_t count, int64_t nt) {
  int64_t r = count - nt * s->bn_max;
  return r < s->bn_max ? r : s->bn_max;
}
EPM_HD int64_t epm_core_sched_tile_cost(const epm_core_sched_t *s, int64_t rows) {
  return s->w_tile_bytes + (int64_t)epm_core_moe2_tile_n(s->regime, rows) * s->k_pad * 2;
}
/* Cost of one weight row tile's token tiles (every mt of the expert costs the same). */
EPM_HD int64_t epm_core_sched_mt_cost(const epm_core_sched_t *s, int64_t count) {
  const int64_t nt = epm_core_sched_ntiles(s, count);
  if (nt == 0) return 0;
  return (nt - 1) * epm_core_sched_tile_cost(s, s->bn_max) +
         epm_core_sched_tile_cost(s, epm_core_sched_tile_rows(s, count, nt - 1));
}

/* uoff[e] = units before expert e, coff[e] = their cost; [el] = totals. */
EPM_HD void epm_core_sched_scan(const epm_core_sched_t *s, const int32_t *counts, int64_t el, int64_t *uoff,
                                int64_t *coff) {
  int64_t u = 0, c = 0;
  for (int64_t e = 0; e < el; e++) {
    uoff[e] = u;
    coff[e] = c;
    u += s->m_tiles * epm_core_sched_ntiles(s, counts[e]);
    c += s->m_tiles * epm_core_sched_mt_cost(s, counts[e]);
  }
  uoff[el] = u;
  coff[el] = c;
}

/* Expert of unit u < uoff[el]: the largest e with uoff[e] <= u (experts
 * without units share their successor's offset). */
EPM_HD int64_t epm_core_sched_expert(const int64_t *uoff, int64_t el, int64_t u) {
  int64_t lo = 0, hi = el;
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    if (uoff[mid] <= u) lo = mid;
    else hi = mid;
  }
  return lo;
}

typedef struct {
  int64_t e, mt, nt;
  int64_t rows; /* valid tokens of the tile */
} epm_core_sched_unit_t;

EPM_HD epm_core_sched_unit_t epm_core_sched_unit(const epm_core_sched_t *s, const int32_t *counts,
                                                 const int64_t *uoff, int64_t el, int64_t u) {
  epm_core_sched_unit_t r;
  r.e = epm_core_sched_expert(uoff, el, u);
  const int64_t nt = epm_core_sched_ntiles(s, counts[r.e]), v = u - uoff[r.e];
  r.mt = v / nt;
  r.nt = v % nt;
  r.rows = epm_core_sched_tile_rows(s, counts[r.e], r.nt);
  return r;
}

/* Cost of the units before unit u (u in [0, uoff[el]]). Every tile but an
 * expert's last is full, so this is closed form. */
EPM_HD int64_t epm_core_sched_prefix(const epm_core_sched_t *s, const int32_t *counts, const int64_t *uoff,
                                     const int64_t *coff, int64_t el, int64_t u) {
  if (u >= uoff[el]) return coff[el];
  const epm_core_sched_unit_t x = epm_core_sched_unit(s, counts, uoff, el, u);
  return coff[x.e] + x.mt * epm_core_sched_mt_cost(s, counts[x.e]) +
         x.nt * epm_core_sched_tile_cost(s, s->bn_max);
}

/* First unit of CTA c of G (c in [0, G]; c = G gives the unit count): the
 * smallest u whose starting cost is >= floor(c T / G). */
EPM_HD int64_t epm_core_sched_begin(const epm_core_sched_t *s, const int32_t *counts, const int64_t *uoff,
                                    const int64_t *coff, int64_t el, int64_t c, int64_t G) {
  const int64_t U = uoff[el], T = coff[el];
  if (c >= G) return U;
  /* c * T / G without overflowing: T / G * c + (T % G) * c / G */
  const int64_t target = (T / G) * c + ((T % G) * c) / G;
  int64_t lo = 0, hi = U; /* answer in [lo, hi] */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (epm_core_sched_prefix(s, counts, uoff, coff, el, mid) >= target) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

#endif /* EPMOE_KERNELS_MOE2_CORE_H */
