/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe_gemm.cu — grouped NVFP4 x NVFP4 expert GEMMs on tensor cores.
 *
 * Both operands are E2M1 with E4M3 block scales. Each product e2m1 * e4m3 is
 * exact in bf16 (at most 6 significant bits, magnitude in [2^-10, 2688]), so
 * the tiles are dequantized exactly into shared memory as bf16 and fed to
 * bf16 tensor-core MMA (WMMA 16x16x16, fp32 accumulate); the fp32 global
 * decode scales are applied in the epilogue. One 64x128x64 tile per step
 * with the next k-step's raw blocks prefetched into registers while the MMAs
 * of this one run (BENCHMARKS.md "v2"); this is the reference GPU path, not
 * the fast one (it stays WMMA fed from shared memory).
 *
 * The grid is persistent: tiles are (permuted-row tile, column tile) pairs
 * whose count is read from offsets[E_l] on the device, so the launch needs
 * no host read and is capturable. All row/element offsets are int64.
 *
 * GEMM1: B rows 0..63 are gate rows n0.., 64..127 the matching up rows; the
 * epilogue computes act = silu(gate) * up, rounds to bf16 and quantizes
 * each 16-block of the intermediate to NVFP4 (same block recipe as the
 * codec). GEMM2: B rows are 128 rows of down; the epilogue scales and
 * stores bf16.
 */
#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "nvfp4_core.h"

namespace {

constexpr int BM = EPM_MOE_TILE_M; /* 64 permuted rows */
constexpr int BN = 128;
constexpr int BK = 64;
constexpr int LDS = BK + 8; /* bf16 per smem row: keeps 32-byte fragment alignment, skews banks */
constexpr int LDC = BN + 4;
constexpr int THREADS = 256;

struct __align__(32) TileSmem {
  union {
    struct {
      __nv_bfloat16 a[BM][LDS];
      __nv_bfloat16 b[BN][LDS];
    } ab;
    float c[BM][LDC];
  };
};

/* One operand row as the loader sees it: packed codes and linear scales of
 * K columns; NULL = a zero row (padding or past N). */
struct RowRef {
  const uint8_t *packed;
  const uint8_t *sf;
};

/* The raw bytes of one 16-element k-block: 8 packed bytes and the scale
 * (0 for a zero row or a block past K, which dequantizes to zeros). Loaded a
 * k-step ahead so the global latency hides behind the MMAs. */
struct RawBlock {
  uint2 q;
  float s;
};

__device__ __forceinline__ RawBlock load_block(RowRef r, int64_t kb, bool valid) {
  RawBlock b = {make_uint2(0, 0), 0.0f};
  if (valid && r.packed) {
    b.q = *reinterpret_cast<const uint2 *>(r.packed + kb * 8);
    b.s = epm_core_e4m3_to_f32(r.sf[kb]);
  }
  return b;
}

/* Two E2M1 codes (one byte, element 0 in the low nibble) times the block
 * scale, as bf16x2. The code's exponent/mantissa bits are placed straight
 * into an fp32 (exponent field e = 0..3, so the value is e2m1 * 2^-126, the
 * 0.5 code landing on an fp32 subnormal); two exact multiplies give
 * e2m1 * scale, which has at most 6 significant bits, so its bf16 is just the
 * upper half of the fp32 bits (one byte-permute packs both): no int->float
 * conversion, no rounding. */
__device__ __forceinline__ uint32_t dequant_pair(uint32_t byte, float s) {
  const uint32_t lo = ((byte & 7u) << 22) | ((byte & 8u) << 28);
  const uint32_t hi = ((byte & 0x70u) << 18) | ((byte & 0x80u) << 24);
  const float flo = (__uint_as_float(lo) * 0x1p126f) * s;
  const float fhi = (__uint_as_float(hi) * 0x1p126f) * s;
  return __byte_perm(__float_as_uint(flo), __float_as_uint(fhi), 0x7632);
}

/* Dequantize a raw block into dst[16] (16-byte aligned shared memory). */
__device__ __forceinline__ void store_block(const RawBlock &b, __nv_bfloat16 *dst) {
  uint32_t o[8];
  const uint32_t w[2] = {b.q.x, b.q.y};
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) o[i * 4 + j] = dequant_pair((w[i] >> (8 * j)) & 0xFFu, b.s);
  reinterpret_cast<uint4 *>(dst)[0] = make_uint4(o[0], o[1], o[2], o[3]);
  reinterpret_cast<uint4 *>(dst)[1] = make_uint4(o[4], o[5], o[6], o[7]);
}

/* Expert of the tile starting at permuted row m0: the largest e with
 * offsets[e] <= m0 (empty experts share their successor's offset). */
__device__ __forceinline__ int64_t tile_expert(const int64_t *offsets, int64_t el, int64_t m0) {
  int64_t lo = 0, hi = el;
  while (hi - lo > 1) {
    int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= m0) lo = mid;
    else hi = mid;
  }
  return lo;
}

/* acc(64x128) = A(64 x K) * B(128 x K)^T for one tile; result left in sm.c. */
__device__ void tile_mma(TileSmem &sm, const RowRef *arow, const RowRef *brow, int64_t k_blocks) {
  using namespace nvcuda;
  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = warp / 4, wn = warp % 4; /* 2 x 4 warps, 32 x 32 each */
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

  /* This thread's blocks: A (row tid/4, k-block tid%4), B rows idx/4 for
   * idx = tid and tid + 256. Prefetched one k-step ahead. */
  const int ra_r = tid / 4, q = tid % 4;
  RawBlock ra = load_block(arow[ra_r], q, q < k_blocks);
  RawBlock rb0 = load_block(brow[ra_r], q, q < k_blocks);
  RawBlock rb1 = load_block(brow[ra_r + BM], q, q < k_blocks);
  for (int64_t kb0 = 0; kb0 < k_blocks; kb0 += BK / 16) {
    __syncthreads(); /* previous step's fragments are loaded */
    store_block(ra, &sm.ab.a[ra_r][q * 16]);
    store_block(rb0, &sm.ab.b[ra_r][q * 16]);
    store_block(rb1, &sm.ab.b[ra_r + BM][q * 16]);
    __syncthreads();
    const int64_t nk = kb0 + BK / 16 + q;
    if (kb0 + BK / 16 < k_blocks) {
      ra = load_block(arow[ra_r], nk, nk < k_blocks);
      rb0 = load_block(brow[ra_r], nk, nk < k_blocks);
      rb1 = load_block(brow[ra_r + BM], nk, nk < k_blocks);
    }
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], &sm.ab.a[wm * 32 + i * 16][kk], LDS);
#pragma unroll
      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], &sm.ab.b[wn * 32 + j * 16][kk], LDS);
#pragma unroll
      for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }
  __syncthreads(); /* c aliases a/b */
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++)
      wmma::store_matrix_sync(&sm.c[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], LDC,
                              wmma::mem_row_major);
  __syncthreads();
}

struct Gemm1Args {
  const uint8_t *hidden, *hidden_sf;
  const uint8_t *gate_w, *gate_sf, *up_w, *up_sf;
  const float *scale2;
  float input_scale, g_mid;
  const int64_t *offsets, *row_token;
  uint8_t *inter, *inter_sf;
  int64_t el, hidden_dim, inter_dim, n_tiles;
};

__global__ void __launch_bounds__(THREADS) gemm1_kernel(Gemm1Args a) {
  __shared__ TileSmem sm;
  __shared__ RowRef arow[BM], brow[BN];
  const int64_t m_tiles = a.offsets[a.el] / BM;
  const int64_t total = m_tiles * a.n_tiles;
  const int64_t H = a.hidden_dim, I = a.inter_dim;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    const int64_t m0 = (t / a.n_tiles) * BM, n0 = (t % a.n_tiles) * (BN / 2);
    const int64_t e = tile_expert(a.offsets, a.el, m0);
    __syncthreads(); /* previous tile's epilogue done with arow/brow */
    if (threadIdx.x < BM) {
      int64_t tok = a.row_token[m0 + threadIdx.x];
      RowRef r = {nullptr, nullptr};
      if (tok >= 0) r = {a.hidden + tok * (H / 2), a.hidden_sf + tok * (H / 16)};
      arow[threadIdx.x] = r;
    } else if (threadIdx.x < BM + BN) {
      int j = threadIdx.x - BM;
      int64_t n = n0 + (j % (BN / 2));
      bool up = j >= BN / 2;
      RowRef r = {nullptr, nullptr};
      if (n < I) {
        int64_t row = e * I + n;
        r = {(up ? a.up_w : a.gate_w) + row * (H / 2), (up ? a.up_sf : a.gate_sf) + row * (H / 16)};
      }
      brow[j] = r;
    }
    __syncthreads();
    tile_mma(sm, arow, brow, H / 16);
    /* Epilogue: one thread per (row, 16-block of the 64 intermediate cols). */
    const int r = threadIdx.x / 4, q = threadIdx.x % 4;
    const int64_t col = n0 + q * 16;
    if (col < I) {
      const float alpha = a.input_scale * a.scale2[e];
      float act[16];
#pragma unroll
      for (int j = 0; j < 16; j++) {
        float gate = sm.c[r][q * 16 + j] * alpha;
        float upv = sm.c[r][BN / 2 + q * 16 + j] * alpha;
        float silu = gate / (1.0f + expf(-gate));
        act[j] = epm_bf16_round(silu * upv);
      }
      uint8_t pk[8];
      uint8_t s = epm_core_quantize_block(act, a.g_mid, pk);
      const int64_t row = m0 + r;
      uint2 v = make_uint2((uint32_t)pk[0] | ((uint32_t)pk[1] << 8) | ((uint32_t)pk[2] << 16) |
                               ((uint32_t)pk[3] << 24),
                           (uint32_t)pk[4] | ((uint32_t)pk[5] << 8) | ((uint32_t)pk[6] << 16) |
                               ((uint32_t)pk[7] << 24));
      *reinterpret_cast<uint2 *>(a.inter + row * (I / 2) + col / 2) = v;
      a.inter_sf[row * (I / 16) + col / 16] = s;
    }
  }
}

struct Gemm2Args {
  const uint8_t *inter, *inter_sf;
  const uint8_t *down_w, *down_sf;
  const float *scale2;
  float down_input_scale;
  const int64_t *offsets;
  uint16_t *y;
  int64_t el, hidden_dim, inter_dim, n_tiles;
};

__global__ void __launch_bounds__(THREADS) gemm2_kernel(Gemm2Args a) {
  __shared__ TileSmem sm;
  __shared__ RowRef arow[BM], brow[BN];
  const int64_t m_tiles = a.offsets[a.el] / BM;
  const int64_t total = m_tiles * a.n_tiles;
  const int64_t H = a.hidden_dim, I = a.inter_dim;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    const int64_t m0 = (t / a.n_tiles) * BM, n0 = (t % a.n_tiles) * BN;
    const int64_t e = tile_expert(a.offsets, a.el, m0);
    __syncthreads();
    if (threadIdx.x < BM) {
      int64_t row = m0 + threadIdx.x;
      arow[threadIdx.x] = RowRef{a.inter + row * (I / 2), a.inter_sf + row * (I / 16)};
    } else if (threadIdx.x < BM + BN) {
      int j = threadIdx.x - BM;
      int64_t n = n0 + j;
      RowRef r = {nullptr, nullptr};
      if (n < H) r = {a.down_w + (e * H + n) * (I / 2), a.down_sf + (e * H + n) * (I / 16)};
      brow[j] = r;
    }
    __syncthreads();
    tile_mma(sm, arow, brow, I / 16);
    const float alpha = a.down_input_scale * a.scale2[e];
    for (int idx = threadIdx.x; idx < BM * BN / 2; idx += THREADS) {
      const int r = idx / (BN / 2), c2 = (idx % (BN / 2)) * 2;
      const int64_t n = n0 + c2;
      if (n < H) { /* H % 16 == 0: both columns valid */
        uint32_t lo = epm_bf16_from_f32(sm.c[r][c2] * alpha);
        uint32_t hi = epm_bf16_from_f32(sm.c[r][c2 + 1] * alpha);
        *reinterpret_cast<uint32_t *>(a.y + (m0 + r) * H + n) = lo | (hi << 16);
      }
    }
  }
}

} // namespace

extern "C" epm_status_t epm_kernel_moe_gemm1(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                             const epm_moe_inputs_dev_t *in,
                                             const epm_moe_workspace_t *ws, void *stream) {
  if (!p || !w || !in || !ws || !in->hidden_fp4 || !in->hidden_sf || !w->gate_w || !w->up_w)
    return epm_error(EPM_ERR_INVALID_ARG, "moe gemm1: NULL plan, weights, inputs or workspace");
  if (!(w->down_input_scale > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "moe gemm1: down_input_scale = %g must be > 0",
                     (double)w->down_input_scale);
  EPM_CHECK_ALIGNED(in->hidden_fp4, 8);
  EPM_CHECK_ALIGNED(w->gate_w, 8);
  EPM_CHECK_ALIGNED(w->up_w, 8);
  EPM_CHECK_ALIGNED(ws->inter_packed, 8);
  Gemm1Args a;
  a.hidden = in->hidden_fp4;
  a.hidden_sf = in->hidden_sf;
  a.gate_w = w->gate_w;
  a.gate_sf = w->gate_sf;
  a.up_w = w->up_w;
  a.up_sf = w->up_sf;
  a.scale2 = w->gate_up_scale_2;
  a.input_scale = w->input_scale;
  a.g_mid = 1.0f / w->down_input_scale;
  a.offsets = ws->offsets;
  a.row_token = ws->row_token;
  a.inter = ws->inter_packed;
  a.inter_sf = ws->inter_sf;
  a.el = p->local_experts;
  a.hidden_dim = p->hidden;
  a.inter_dim = p->inter;
  a.n_tiles = p->n_tiles_gemm1;
  gemm1_kernel<<<p->grid_tiles, THREADS, 0, EPM_STREAM(stream)>>>(a);
  EPM_CUDA_LAUNCHED("moe gemm1_kernel");
  return EPM_OK;
}

extern "C" epm_status_t epm_kernel_moe_gemm2(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                             const epm_moe_workspace_t *ws, void *stream) {
  if (!p || !w || !ws || !w->down_w || !w->down_sf)
    return epm_error(EPM_ERR_INVALID_ARG, "moe gemm2: NULL plan, weights or workspace");
  EPM_CHECK_ALIGNED(w->down_w, 8);
  EPM_CHECK_ALIGNED(ws->y, 16);
  Gemm2Args a;
  a.inter = ws->inter_packed;
  a.inter_sf = ws->inter_sf;
  a.down_w = w->down_w;
  a.down_sf = w->down_sf;
  a.scale2 = w->down_scale_2;
  a.down_input_scale = w->down_input_scale;
  a.offsets = ws->offsets;
  a.y = ws->y;
  a.el = p->local_experts;
  a.hidden_dim = p->hidden;
  a.inter_dim = p->inter;
  a.n_tiles = p->n_tiles_gemm2;
  gemm2_kernel<<<p->grid_tiles, THREADS, 0, EPM_STREAM(stream)>>>(a);
  EPM_CUDA_LAUNCHED("moe gemm2_kernel");
  return EPM_OK;
}
