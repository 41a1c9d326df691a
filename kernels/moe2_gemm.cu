/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_gemm.cu — the fast (v2) grouped NVFP4 expert GEMMs for sm_90a.
 *
 * Orientation (swap-AB): out^T[weight rows, tokens] = W[rows, K] . X^T, so
 * the weights are the wgmma A operand, taken from registers, and the tokens
 * the N dimension (16..256), read from shared memory by descriptor.
 *
 * CTA = 3 warpgroups, persistent over a contiguous range of work units
 * (kernels/moe2_core.h: expert, weight row tile, token tile; balanced by the
 * bytes each unit moves):
 *   producer   (warpgroup 2, one thread, 40 registers): per stage, waits the
 *              slot's empty mbarrier, arms the full mbarrier with the byte
 *              count and issues 1-D bulk copies (cp.async.bulk, no tensor map:
 *              nothing to rebuild per expert, graph-safe): the prepacked weight
 *              chunks (L2 evict-first: read once) and the FP16 token tile,
 *              which the permute pass already wrote swizzled.
 *   consumers  (warpgroups 0 and 1, 232 registers, bm/2 weight rows each):
 *              per 64-k chunk, a 128-bit shared load of 4 words + two scale
 *              words, the in-register dequant of moe2_core.h (bit placement
 *              + one FP16 multiply, exact), then wgmma m64nNk16 for 4 k16
 *              steps; the next chunk's dequant overlaps these wgmmas (A
 *              fragments double-buffered, wait_group 1), and a stage is
 *              released once the wgmmas that read it are complete.
 * Epilogues: GEMM1 (gate and up rows interleaved by 8, so a thread holds
 * gate[j] and up[j] of the same token): alpha1, silu(gate) * up, bf16 round,
 * staged through shared memory so each thread quantizes whole 16-blocks of
 * j with the codec's recipe, written as FP16 in GEMM2's tiled B layout (and
 * as packed NVFP4 when asked). GEMM2: alpha2, bf16 pairs exchanged between
 * neighbouring lanes so each store is 32 bits, y [rows, H].
 * The fp32 epilogue scale carries the operands' power of two (fold), which
 * commutes with rounding: gate = (acc' * (alpha * fold)) is bit for bit the
 * v1 kernel's acc * alpha for the same sum.
 */
#include <stdint.h>
#include <string.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "moe2_core.h"
#include "moe2_internal.h"
#include "wgmma_rs.h"

/* The sm_90a kernel body is compiled out for sm_100a, leaving its helpers
 * unreferenced there. */
#pragma nv_diag_suppress 177

namespace {

template <int R>
struct Tile {
  static constexpr int BM = R == EPM_MOE2_REGIME_PREFILL ? EPM_MOE2_PREFILL_BM : EPM_MOE2_DECODE_BM;
  static constexpr int BN = R == EPM_MOE2_REGIME_PREFILL ? EPM_MOE2_PREFILL_BN : EPM_MOE2_DECODE_BN;
  static constexpr int BK = R == EPM_MOE2_REGIME_PREFILL ? EPM_MOE2_PREFILL_BK : EPM_MOE2_DECODE_BK;
  static constexpr int STAGES = R == EPM_MOE2_REGIME_PREFILL ? EPM_MOE2_PREFILL_STAGES : EPM_MOE2_DECODE_STAGES;
  static constexpr int MB = BM / 128; /* m64 blocks per consumer warpgroup */
  static constexpr int GPS = BK / 64; /* 64-k chunks per stage */
  static constexpr int ACT_BYTES = GPS * BN * 128;
  static constexpr int W_BYTES = (BM / 64) * GPS * EPM_MOE2_CHUNK_BYTES;
  static constexpr int STAGE_BYTES = (ACT_BYTES + W_BYTES + 1023) / 1024 * 1024;
  static constexpr int JW = BM / 4; /* GEMM1 intermediate columns per warpgroup */
  static constexpr int EPI_PITCH = JW + 8;
  static constexpr int EPI_BYTES = 2 * BN * EPI_PITCH * 2;
  static constexpr int64_t SMEM = EPM_MOE2_SMEM_ALIGN + (int64_t)STAGES * STAGE_BYTES + EPI_BYTES + 2 * 8 * STAGES;
};

struct GemmArgs {
  const uint8_t *w; /* prepacked weights of local expert 0 */
  int64_t w_expert_bytes;
  int64_t kchunks; /* K / 64 (K padded to 128: even) */
  const uint8_t *x; /* tiled FP16 B operand [kchunks][rows_total / 8][1024] */
  int64_t rows_total;
  const int32_t *counts;
  const int64_t *offsets, *uoff, *coff;
  int64_t el;
  epm_core_sched_t sched;
  const float *scale2; /* per-expert decode scale of the weights */
  float alpha0;        /* decode scale of the B operand */
  float fold;
  int normal;
  /* GEMM1 epilogue */
  uint8_t *out16;
  int64_t inter;
  float g_mid;
  uint8_t *inter_packed, *inter_sf;
  /* GEMM2 epilogue */
  uint16_t *y;
  int64_t hidden;
};

/* ---- sm_90 primitives (PTX) ---- */
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred P1;\n"
      "EPM_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@!P1 bra EPM_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void bulk_g2s_hint(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar,
                                              uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::"r"(
          dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_operand(float &r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void wg_barrier(int wg) { asm volatile("bar.sync %0, 128;" ::"r"(wg + 1) : "memory"); }

/* K-major B operand, 128-byte swizzle: rows of 128 bytes, 8-row groups 1024
 * bytes apart (SBO), LBO unused (1); start address in 16-byte units. */
__device__ __forceinline__ uint64_t desc_b(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

/* ---- producer ---- */
template <int R>
__device__ void produce(const GemmArgs &a, uint32_t sbase, uint32_t full0, uint32_t empty0, int64_t u0, int64_t u1) {
  using T = Tile<R>;
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  int stage = 0;
  uint32_t phase = 0;
  const int64_t ksteps = a.kchunks / T::GPS;
  for (int64_t u = u0; u < u1; u++) {
    const epm_core_sched_unit_t x = epm_core_sched_unit(&a.sched, a.counts, a.uoff, a.el, u);
    const int n = epm_core_moe2_tile_n(R, x.rows);
    const int64_t row0 = a.offsets[x.e] + x.nt * T::BN;
    const uint8_t *wexp = a.w + x.e * a.w_expert_bytes;
    for (int64_t ks = 0; ks < ksteps; ks++) {
      mbar_wait(empty0 + 8u * (uint32_t)stage, phase ^ 1u);
      const uint32_t st = sbase + (uint32_t)(stage * T::STAGE_BYTES), full = full0 + 8u * (uint32_t)stage;
      mbar_expect_tx(full, (uint32_t)(T::W_BYTES + T::GPS * n * 128));
#pragma unroll
      for (int b = 0; b < T::BM / 64; b++)
        bulk_g2s_hint(st + (uint32_t)(T::ACT_BYTES + b * T::GPS * EPM_MOE2_CHUNK_BYTES),
                      wexp + epm_core_w4_chunk_offset(x.mt * (T::BM / 64) + b, ks * T::GPS, a.kchunks),
                      (uint32_t)(T::GPS * EPM_MOE2_CHUNK_BYTES), full, policy);
#pragma unroll
      for (int c = 0; c < T::GPS; c++)
        bulk_g2s(st + (uint32_t)(c * T::BN * 128),
                 a.x + ((ks * T::GPS + c) * (a.rows_total / 8) + row0 / 8) * EPM_MOE2_ATOM_BYTES,
                 (uint32_t)(n * 128), full);
      if (++stage == T::STAGES) {
        stage = 0;
        phase ^= 1u;
      }
    }
  }
}

/* ---- consumers ---- */
struct Ring {
  int stage;
  uint32_t phase;
  int pending; /* stage whose last wgmmas are in flight, released after the next wait, or -1 */
};

/* One 64-k chunk: dequant this thread's A fragments into af, issue the
 * wgmmas, then retire the previous chunk's and release its stage if it was
 * the stage's last. */
template <int R, int N>
__device__ __forceinline__ void chunk(const GemmArgs &a, uint8_t *base, uint32_t full0, uint32_t empty0, int wg,
                                      int tid, int64_t gi, uint32_t (&af)[Tile<R>::MB][4][4],
                                      float (&acc)[Tile<R>::MB][N / 2], Ring &ring) {
  using T = Tile<R>;
  const int c = (int)(gi % T::GPS);
  if (c == 0) mbar_wait(full0 + 8u * (uint32_t)ring.stage, ring.phase);
  uint8_t *sb = base + ring.stage * T::STAGE_BYTES;
  const int w = tid / 32, g = (tid % 32) / 4;
#pragma unroll
  for (int b = 0; b < T::MB; b++) {
    const uint8_t *ch = sb + T::ACT_BYTES + ((wg * T::MB + b) * T::GPS + c) * EPM_MOE2_CHUNK_BYTES;
    const uint4 q = *reinterpret_cast<const uint4 *>(ch + tid * 16);
    const uint32_t sg = *reinterpret_cast<const uint32_t *>(ch + EPM_MOE2_CHUNK_CODE_BYTES + (16 * w + g) * 4);
    const uint32_t sg8 = *reinterpret_cast<const uint32_t *>(ch + EPM_MOE2_CHUNK_CODE_BYTES + (16 * w + g + 8) * 4);
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; j++)
      epm_core_w4_dequant(words[j], epm_core_w4_scale_pair_step(sg, sg8, j, a.normal), a.normal, af[b][j]);
  }
#pragma unroll
  for (int b = 0; b < T::MB; b++)
#pragma unroll
    for (int i = 0; i < N / 2; i++) fence_operand(acc[b][i]);
  wgmma_fence();
  const uint32_t act = smem_u32(sb) + (uint32_t)(c * T::BN * 128);
#pragma unroll
  for (int j = 0; j < 4; j++)
#pragma unroll
    for (int b = 0; b < T::MB; b++) epm_wgmma_rs<N>::mma(acc[b], af[b][j], desc_b(act + (uint32_t)(j * 32)));
  wgmma_commit();
#pragma unroll
  for (int b = 0; b < T::MB; b++)
#pragma unroll
    for (int i = 0; i < N / 2; i++) fence_operand(acc[b][i]);
  wgmma_wait<1>();
  if (ring.pending >= 0) {
    mbar_arrive(empty0 + 8u * (uint32_t)ring.pending);
    ring.pending = -1;
  }
  if (c == T::GPS - 1) {
    ring.pending = ring.stage;
    if (++ring.stage == T::STAGES) {
      ring.stage = 0;
      ring.phase ^= 1u;
    }
  }
}

template <int R, int N>
__device__ void epilogue_gemm1(const GemmArgs &a, uint8_t *base, int wg, int tid, const epm_core_sched_unit_t &x,
                               float (&acc)[Tile<R>::MB][N / 2]) {
  using T = Tile<R>;
  const float alpha = (a.alpha0 * a.scale2[x.e]) * a.fold;
  uint16_t *epi = reinterpret_cast<uint16_t *>(base + T::STAGES * T::STAGE_BYTES) + wg * T::BN * T::EPI_PITCH;
#pragma unroll
  for (int b = 0; b < T::MB; b++)
#pragma unroll
    for (int r = 0; r < N / 2; r += 4) {
      /* registers r, r+1: gate (row g) of tokens col, col+1; r+2, r+3: up (row g+8) */
      int row, col;
      epm_core_moe2_acc_pos(T::BM, wg, b, tid, r, &row, &col);
      const int jl = (row / 16) * 8 + row % 8 - wg * T::JW;
      const float g0 = acc[b][r + 0] * alpha, u0 = acc[b][r + 2] * alpha;
      const float g1 = acc[b][r + 1] * alpha, u1 = acc[b][r + 3] * alpha;
      epi[col * T::EPI_PITCH + jl] = epm_bf16_from_f32(silu(g0) * u0);
      epi[(col + 1) * T::EPI_PITCH + jl] = epm_bf16_from_f32(silu(g1) * u1);
    }
  wg_barrier(wg);
  constexpr int JB = T::JW / 16;
  const int64_t jbase = x.mt * (T::BM / 2) + wg * T::JW;
  const int64_t prow0 = a.offsets[x.e] + x.nt * T::BN;
  for (int it = tid; it < (int)x.rows * JB; it += 128) {
    const int col = it / JB, jb = it % JB;
    const int64_t j0 = jbase + jb * 16, prow = prow0 + col;
    uint32_t o[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (j0 < a.inter) {
      float v[16];
#pragma unroll
      for (int q = 0; q < 16; q++) v[q] = epm_bf16_to_f32(epi[col * T::EPI_PITCH + jb * 16 + q]);
      uint8_t pk[8];
      const uint8_t sf = epm_core_quantize_block(v, a.g_mid, pk);
#pragma unroll
      for (int q = 0; q < 8; q++)
        o[q] = (uint32_t)epm_core_x16_value(pk[q] & 15u, sf, a.normal) |
               ((uint32_t)epm_core_x16_value(pk[q] >> 4, sf, a.normal) << 16);
      if (a.inter_packed) {
        uint2 pv = make_uint2((uint32_t)pk[0] | ((uint32_t)pk[1] << 8) | ((uint32_t)pk[2] << 16) | ((uint32_t)pk[3] << 24),
                              (uint32_t)pk[4] | ((uint32_t)pk[5] << 8) | ((uint32_t)pk[6] << 16) | ((uint32_t)pk[7] << 24));
        *reinterpret_cast<uint2 *>(a.inter_packed + prow * (a.inter / 2) + j0 / 2) = pv;
        a.inter_sf[prow * (a.inter / 16) + j0 / 16] = sf;
      }
    }
    /* j past I: zeros, so GEMM2's K padding multiplies zeros, never garbage */
    *reinterpret_cast<uint4 *>(a.out16 + epm_core_x16_offset(prow, j0, a.rows_total)) = make_uint4(o[0], o[1], o[2], o[3]);
    *reinterpret_cast<uint4 *>(a.out16 + epm_core_x16_offset(prow, j0 + 8, a.rows_total)) =
        make_uint4(o[4], o[5], o[6], o[7]);
  }
  wg_barrier(wg); /* the staging is free for the next unit */
}

template <int R, int N>
__device__ void epilogue_gemm2(const GemmArgs &a, int wg, int tid, const epm_core_sched_unit_t &x,
                               float (&acc)[Tile<R>::MB][N / 2]) {
  using T = Tile<R>;
  const float alpha = (a.alpha0 * a.scale2[x.e]) * a.fold;
  const bool even = (((tid % 32) / 4) & 1) == 0;
  const int64_t prow0 = a.offsets[x.e] + x.nt * T::BN;
#pragma unroll
  for (int b = 0; b < T::MB; b++)
#pragma unroll
    for (int r = 0; r < N / 2; r += 2) {
      /* v0 = (row, token col), v1 = (row, token col + 1); lanes g and g ^ 1
       * (lane ^ 4) swap so each holds two adjacent rows of one token: the
       * even lane stores rows (row, row + 1) of token col, the odd lane rows
       * (row - 1, row) of token col + 1 */
      int row, col;
      epm_core_moe2_acc_pos(T::BM, wg, b, tid, r, &row, &col);
      const float v0 = acc[b][r] * alpha, v1 = acc[b][r + 1] * alpha;
      const float o = __shfl_xor_sync(0xffffffffu, even ? v1 : v0, 4);
      const float lo = even ? v0 : o, hi = even ? o : v1;
      const int c = even ? col : col + 1;
      const int64_t n = x.mt * T::BM + (even ? row : row - 1);
      if (c < x.rows && n < a.hidden)
        *reinterpret_cast<uint32_t *>(a.y + (prow0 + c) * a.hidden + n) =
            (uint32_t)epm_bf16_from_f32(lo) | ((uint32_t)epm_bf16_from_f32(hi) << 16);
    }
}

template <int R, int EPI, int N>
__device__ void consume_unit(const GemmArgs &a, uint8_t *base, uint32_t full0, uint32_t empty0, int wg, int tid,
                             const epm_core_sched_unit_t &x, Ring &ring) {
  using T = Tile<R>;
  float acc[T::MB][N / 2];
#pragma unroll
  for (int b = 0; b < T::MB; b++)
#pragma unroll
    for (int i = 0; i < N / 2; i++) acc[b][i] = 0.0f;
  uint32_t af0[T::MB][4][4], af1[T::MB][4][4];
  for (int64_t gi = 0; gi < a.kchunks; gi += 2) {
    chunk<R, N>(a, base, full0, empty0, wg, tid, gi, af0, acc, ring);
    chunk<R, N>(a, base, full0, empty0, wg, tid, gi + 1, af1, acc, ring);
  }
  wgmma_wait<0>();
  if (ring.pending >= 0) {
    mbar_arrive(empty0 + 8u * (uint32_t)ring.pending);
    ring.pending = -1;
  }
  if (EPI == 1) epilogue_gemm1<R, N>(a, base, wg, tid, x, acc);
  else epilogue_gemm2<R, N>(a, wg, tid, x, acc);
}

template <int R, int EPI>
__global__ void __launch_bounds__(EPM_MOE2_THREADS, 1) moe2_gemm_kernel(const __grid_constant__ GemmArgs a) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = Tile<R>;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint8_t *base = smem_raw + ((EPM_MOE2_SMEM_ALIGN - (smem_u32(smem_raw) % EPM_MOE2_SMEM_ALIGN)) % EPM_MOE2_SMEM_ALIGN);
  const uint32_t full0 = smem_u32(base) + (uint32_t)(T::STAGES * T::STAGE_BYTES + T::EPI_BYTES);
  const uint32_t empty0 = full0 + 8u * T::STAGES;
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::STAGES; s++) {
      mbar_init(full0 + 8u * (uint32_t)s, 1u);
      mbar_init(empty0 + 8u * (uint32_t)s, EPM_MOE2_CONSUMERS);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();
  const int64_t G = gridDim.x;
  const int64_t u0 = epm_core_sched_begin(&a.sched, a.counts, a.uoff, a.coff, a.el, blockIdx.x, G);
  const int64_t u1 = epm_core_sched_begin(&a.sched, a.counts, a.uoff, a.coff, a.el, blockIdx.x + 1, G);
  const int wg = (int)(threadIdx.x / 128), tid = (int)(threadIdx.x % 128);
  if (wg == 2) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid == 0) produce<R>(a, smem_u32(base), full0, empty0, u0, u1);
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  Ring ring = {0, 0u, -1};
  for (int64_t u = u0; u < u1; u++) {
    const epm_core_sched_unit_t x = epm_core_sched_unit(&a.sched, a.counts, a.uoff, a.el, u);
    const int n = epm_core_moe2_tile_n(R, x.rows);
    if (R == EPM_MOE2_REGIME_PREFILL) {
      switch (n) {
        case 64: consume_unit<R, EPI, 64>(a, base, full0, empty0, wg, tid, x, ring); break;
        case 128: consume_unit<R, EPI, 128>(a, base, full0, empty0, wg, tid, x, ring); break;
        case 256: consume_unit<R, EPI, 256>(a, base, full0, empty0, wg, tid, x, ring); break;
        default: __trap();
      }
    } else {
      switch (n) {
        case 16: consume_unit<R, EPI, 16>(a, base, full0, empty0, wg, tid, x, ring); break;
        case 32: consume_unit<R, EPI, 32>(a, base, full0, empty0, wg, tid, x, ring); break;
        case 64: consume_unit<R, EPI, 64>(a, base, full0, empty0, wg, tid, x, ring); break;
        default: __trap();
      }
    }
  }
#else
  (void)a; /* built for sm_90a only; the launcher never runs it elsewhere */
#endif
}


template <int R, int EPI>
epm_status_t launch(const epm_moe2_plan_t *p, const GemmArgs &a, void *stream, const char *what) {
  if (p->smem_bytes != Tile<R>::SMEM)
    return epm_error(EPM_ERR_INTERNAL, "%s: plan shared memory %lld != kernel's %lld", what, (long long)p->smem_bytes,
                     (long long)Tile<R>::SMEM);
  const int smem = (int)p->smem_bytes;
  EPM_CUDA_TRY(cudaFuncSetAttribute(moe2_gemm_kernel<R, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  moe2_gemm_kernel<R, EPI><<<p->grid_gemm, p->block_gemm, (size_t)smem, EPM_STREAM(stream)>>>(a);
  EPM_CUDA_LAUNCHED(what);
  return EPM_OK;
}

/* The sm_90a kernels run on compute capability 9.0 only. */
epm_status_t require_sm90(const char *what) {
  int dev = 0, major = 0, minor = 0;
  EPM_CUDA_TRY(cudaGetDevice(&dev));
  EPM_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  EPM_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major != 9 || minor != 0)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "%s: the sm_90a kernels need compute capability 9.0, device %d is %d.%d",
                     what, dev, major, minor);
  return EPM_OK;
}

GemmArgs common_args(const epm_moe2_plan_t *p, const epm_moe2_workspace_t *ws, int gemm) {
  GemmArgs a;
  memset(&a, 0, sizeof a);
  a.rows_total = p->max_rows;
  a.counts = ws->counts;
  a.offsets = ws->offsets;
  a.uoff = gemm == 1 ? ws->uoff1 : ws->uoff2;
  a.coff = gemm == 1 ? ws->coff1 : ws->coff2;
  a.el = p->local_experts;
  a.sched = epm__moe2_sched(p, gemm);
  a.fold = epm_core_w4_fold(p->opts.fp16 == EPM_MOE2_FP16_NORMAL);
  a.normal = p->opts.fp16 == EPM_MOE2_FP16_NORMAL;
  a.inter = p->inter;
  a.hidden = p->hidden;
  return a;
}

} // namespace

extern "C" epm_status_t epm_kernel_moe2_gemm1(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                              const epm_moe2_workspace_t *ws, void *stream) {
  if (!p || !w || !ws || !w->w13 || !w->gate_up_scale_2)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 gemm1: NULL plan, weights or workspace");
  if (!(w->down_input_scale > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 gemm1: down_input_scale = %g must be > 0", (double)w->down_input_scale);
  if (p->opts.arch == 100) return epm__moe2_sm100_gemm1(p, w, ws, stream);
  EPM_CHECK_ALIGNED(w->w13, 16);
  EPM_CHECK_ALIGNED(ws->x16, 1024);
  EPM_CHECK_ALIGNED(ws->inter16, 1024);
  EPM_TRY(require_sm90("moe2 gemm1"));
  if (p->tokens == 0) return EPM_OK;
  GemmArgs a = common_args(p, ws, 1);
  a.w = w->w13;
  a.w_expert_bytes = (int64_t)p->w13_expert_bytes;
  a.kchunks = p->hidden_pad / 64;
  a.x = ws->x16;
  a.scale2 = w->gate_up_scale_2;
  a.alpha0 = w->input_scale;
  a.out16 = ws->inter16;
  a.g_mid = 1.0f / w->down_input_scale;
  a.inter_packed = ws->inter_packed;
  a.inter_sf = ws->inter_sf;
  if (p->opts.tiles == EPM_MOE2_TILES_PREFILL)
    return launch<EPM_MOE2_REGIME_PREFILL, 1>(p, a, stream, "moe2 gemm1 (prefill tiles)");
  return launch<EPM_MOE2_REGIME_DECODE, 1>(p, a, stream, "moe2 gemm1 (decode tiles)");
}

extern "C" epm_status_t epm_kernel_moe2_gemm2(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                              const epm_moe2_workspace_t *ws, void *stream) {
  if (!p || !w || !ws || !w->w2 || !w->down_scale_2)
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 gemm2: NULL plan, weights or workspace");
  if (p->opts.arch == 100) return epm__moe2_sm100_gemm2(p, w, ws, stream);
  EPM_CHECK_ALIGNED(w->w2, 16);
  EPM_CHECK_ALIGNED(ws->y, 16);
  EPM_TRY(require_sm90("moe2 gemm2"));
  if (p->tokens == 0) return EPM_OK;
  GemmArgs a = common_args(p, ws, 2);
  a.w = w->w2;
  a.w_expert_bytes = (int64_t)p->w2_expert_bytes;
  a.kchunks = p->inter_pad / 64;
  a.x = ws->inter16;
  a.scale2 = w->down_scale_2;
  a.alpha0 = w->down_input_scale;
  a.y = ws->y;
  if (p->opts.tiles == EPM_MOE2_TILES_PREFILL)
    return launch<EPM_MOE2_REGIME_PREFILL, 2>(p, a, stream, "moe2 gemm2 (prefill tiles)");
  return launch<EPM_MOE2_REGIME_DECODE, 2>(p, a, stream, "moe2 gemm2 (decode tiles)");
}
