/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_sm100.cu — the sm_100a path of the v2 expert kernels
 * (moe2_internal.h): Blackwell has native block-scaled NVFP4 MMA, so no
 * dequant; CUTLASS's grouped GEMM (moe2_sm100_cutlass.cu, EPMOE_CUTLASS=ON)
 * does the tensor work and these small kernels do the rest, with the v1
 * numerics at every rounding point:
 *
 *   permute  counts (given or a histogram), rows per expert padded to 128
 *            (a scale-factor tile), then one warp per pair copies the token's
 *            NVFP4 row and writes its scales in the 128x4 layout (the scale
 *            buffer is zeroed first, so padding scales are 0, never NaN)
 *   gemm1    CUTLASS: fp32 [rows, 2I] = alpha1_e * tokens . [gate; up]^T;
 *            then per (row, 16 j): silu(gate) * up, bf16 round, the codec's
 *            block quantization -> NVFP4 intermediate + 128x4 scales
 *   gemm2    CUTLASS: fp32 [rows, H] = alpha2_e * intermediate . down^T,
 *            then bf16 round -> y (the v1 finalize reads it via pair_row)
 *
 * Workspace pieces of the plan, carved for this path: x16 = tokens (NVFP4
 * rows, then scales), inter16 = the fp32 GEMM output (GEMM1's, then GEMM2's
 * in the same place), the NVFP4 intermediate rows, its scales; uoff1 = the
 * CUTLASS scratch (argument arrays and workspace).
 *
 * Built for every CUDA architecture (it has no tcgen05 code itself); without
 * CUTLASS the entry points answer EPM_ERR_NOT_SUPPORTED. This path has never
 * run: no Blackwell card was lent while it was written. */
#include <stdint.h>
#include <string.h>

#include "cuda_check.h"
#include "moe2_internal.h"
#include "moe2_sm100_cutlass.h"

/* Without CUTLASS the kernels below are compiled but never launched. */
#pragma nv_diag_suppress 177

namespace {

struct Sm100Ws {
  uint8_t *xq, *xsf;       /* [rows, H/2], 128x4 [rows, round4(H/16)] */
  float *d;                /* [rows, 2I] then [rows, H] */
  uint8_t *iq, *isf;       /* [rows, I/2], 128x4 [rows, round4(I/16)] */
  uint8_t *scratch;
  size_t xsf_bytes, isf_bytes, scratch_bytes;
};

int64_t ru(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

Sm100Ws carve(const epm_moe2_plan_t *p, const epm_moe2_workspace_t *ws) {
  Sm100Ws s;
  const int64_t rows = p->max_rows, H = p->hidden, I = p->inter;
  const int64_t wmax = 2 * I > H ? 2 * I : H;
  s.xq = ws->x16;
  s.xsf = ws->x16 + ru(rows * (H / 2), 1024);
  s.xsf_bytes = (size_t)(rows * ru(H / 16, 4));
  s.d = reinterpret_cast<float *>(ws->inter16);
  s.iq = ws->inter16 + ru(rows * wmax * 4, 1024);
  s.isf = s.iq + ru(rows * (I / 2), 1024);
  s.isf_bytes = (size_t)(rows * ru(I / 16, 4));
  s.scratch = reinterpret_cast<uint8_t *>(ws->uoff1);
  s.scratch_bytes = p->sched_bytes;
  return s;
}

__global__ void sm100_hist_kernel(const int32_t *__restrict__ ids, int64_t pairs, int64_t off, int64_t el,
                                  int32_t *__restrict__ counts) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += stride) {
    const int64_t e = (int64_t)ids[p] - off;
    if (e >= 0 && e < el) atomicAdd(&counts[e], 1);
  }
}

__global__ void sm100_scan_kernel(const int32_t *__restrict__ counts_in, int32_t *__restrict__ counts,
                                  int32_t *__restrict__ cursors, int64_t *__restrict__ offsets, int64_t el) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t acc = 0;
  for (int64_t e = 0; e < el; e++) {
    if (counts_in != counts) counts[e] = counts_in[e];
    offsets[e] = acc;
    acc += ((int64_t)counts[e] + EPM_MOE2_SM100_ROW_ALIGN - 1) / EPM_MOE2_SM100_ROW_ALIGN * EPM_MOE2_SM100_ROW_ALIGN;
    cursors[e] = 0;
  }
  offsets[el] = acc;
}

/* One warp per pair: claim the row, copy the NVFP4 row, place its scales. */
__global__ void sm100_gather_kernel(const int32_t *__restrict__ ids, const uint8_t *__restrict__ hidden,
                                    const uint8_t *__restrict__ hidden_sf, int64_t pairs, int64_t k, int64_t off,
                                    int64_t el, const int64_t *__restrict__ offsets, int32_t *__restrict__ cursors,
                                    int64_t *__restrict__ pair_row, uint8_t *__restrict__ xq,
                                    uint8_t *__restrict__ xsf, int64_t H) {
  const int lane = (int)(threadIdx.x % 32);
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t p = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; p < pairs; p += warps) {
    int64_t row = -1;
    if (lane == 0) {
      const int64_t e = (int64_t)ids[p] - off;
      if (e >= 0 && e < el) row = offsets[e] + atomicAdd(&cursors[e], 1);
      pair_row[p] = row;
    }
    row = __shfl_sync(0xffffffffu, row, 0);
    if (row < 0) continue;
    const int64_t tok = p / k;
    const uint2 *src = reinterpret_cast<const uint2 *>(hidden + tok * (H / 2));
    uint2 *dst = reinterpret_cast<uint2 *>(xq + row * (H / 2));
    for (int64_t c = lane; c < H / 16; c += 32) dst[c] = src[c];
    for (int64_t c = lane; c < H / 16; c += 32)
      xsf[epm_core_sf_offset_128x4(row, c, H / 16)] = hidden_sf[tok * (H / 16) + c];
  }
}

/* Expert of permuted row r: the largest e with offsets[e] <= r. */
__device__ int64_t expert_of(const int64_t *offsets, int64_t el, int64_t r) {
  int64_t lo = 0, hi = el;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= r) lo = mid;
    else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

/* Per (row, 16-block of j): the v1 GEMM1 epilogue on CUTLASS's fp32 output
 * (alpha already applied, the same single rounding as acc * alpha). */
__global__ void sm100_swiglu_quant_kernel(const float *__restrict__ d, const int32_t *__restrict__ counts,
                                          const int64_t *__restrict__ offsets, int64_t el, int64_t I, float g_mid,
                                          uint8_t *__restrict__ iq, uint8_t *__restrict__ isf) {
  const int64_t rows = offsets[el], jb_n = I / 16, items = rows * jb_n;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t it = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; it < items; it += stride) {
    const int64_t r = it / jb_n, jb = it % jb_n, e = expert_of(offsets, el, r);
    if (r - offsets[e] >= counts[e]) continue; /* padding row: never read as a GEMM2 row */
    const float *gate = d + r * 2 * I + jb * 16, *up = gate + I;
    float act[16];
#pragma unroll
    for (int q = 0; q < 16; q++) act[q] = epm_bf16_round(silu(gate[q]) * up[q]);
    uint8_t pk[8];
    const uint8_t sf = epm_core_quantize_block(act, g_mid, pk);
    uint2 v = make_uint2((uint32_t)pk[0] | ((uint32_t)pk[1] << 8) | ((uint32_t)pk[2] << 16) | ((uint32_t)pk[3] << 24),
                         (uint32_t)pk[4] | ((uint32_t)pk[5] << 8) | ((uint32_t)pk[6] << 16) | ((uint32_t)pk[7] << 24));
    *reinterpret_cast<uint2 *>(iq + r * (I / 2) + jb * 8) = v;
    isf[epm_core_sf_offset_128x4(r, jb, I / 16)] = sf;
  }
}

/* y = bf16(d) over the used rows (padding rows are converted too, unread). */
__global__ void sm100_round_y_kernel(const float *__restrict__ d, const int64_t *__restrict__ offsets, int64_t el,
                                     int64_t H, uint16_t *__restrict__ y) {
  const int64_t n = offsets[el] * H, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] = epm_bf16_from_f32(d[i]);
}

uint32_t grid_for(int64_t work) {
  int64_t g = (work + 255) / 256;
  return (uint32_t)(g < 1 ? 1 : (g > 65536 ? 65536 : g));
}

#ifdef EPMOE_HAVE_CUTLASS
epm_status_t gemm(const epm_moe2_plan_t *p, const epm_moe2_workspace_t *ws, const Sm100Ws &s, const uint8_t *a,
                  const uint8_t *a_sf, int64_t n, int64_t kdim, const uint8_t *w, size_t w_expert_bytes,
                  const float *scale2, float alpha0, void *stream) {
  epm_sm100_gemm_t g;
  memset(&g, 0, sizeof g);
  g.groups = p->local_experts;
  g.n = n;
  g.k = kdim;
  g.counts = ws->counts;
  g.row_offsets = ws->offsets;
  g.a = a;
  g.a_sf = a_sf;
  g.b = w;
  g.b_expert_bytes = (int64_t)w_expert_bytes;
  g.b_sf_offset = ru(n * (kdim / 2), 128);
  g.scale2 = scale2;
  g.alpha0 = alpha0;
  g.d = s.d;
  g.scratch = s.scratch;
  g.scratch_bytes = s.scratch_bytes;
  g.sm_count = p->opts.sm_count;
  EPM_CUDA_TRY(cudaGetDevice(&g.device));
  return epm__sm100_nvfp4_grouped(&g, stream);
}
#endif

epm_status_t no_cutlass(const char *what) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "%s: the sm_100a path needs a build with EPMOE_CUTLASS=ON", what);
}

} // namespace

extern "C" epm_status_t epm__moe2_sm100_permute(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                                const int32_t *counts_dev, const epm_moe2_workspace_t *ws,
                                                void *stream) {
#ifndef EPMOE_HAVE_CUTLASS
  return no_cutlass("moe2 permute");
#else
  cudaStream_t st = EPM_STREAM(stream);
  const Sm100Ws s = carve(p, ws);
  EPM_CHECK_ALIGNED(in->hidden_fp4, 8);
  if (!counts_dev) {
    EPM_CUDA_TRY(cudaMemsetAsync(ws->counts, 0, (size_t)p->local_experts * sizeof(int32_t), st));
    if (p->pairs > 0) {
      sm100_hist_kernel<<<p->grid_pairs, p->block_pairs, 0, st>>>(in->ids, p->pairs, p->expert_offset,
                                                                  p->local_experts, ws->counts);
      EPM_CUDA_LAUNCHED("sm100_hist_kernel");
    }
  }
  sm100_scan_kernel<<<1, 1, 0, st>>>(counts_dev ? counts_dev : ws->counts, ws->counts, ws->cursors, ws->offsets,
                                     p->local_experts);
  EPM_CUDA_LAUNCHED("sm100_scan_kernel");
  EPM_CUDA_TRY(cudaMemsetAsync(s.xsf, 0, s.xsf_bytes, st));
  if (p->pairs > 0) {
    sm100_gather_kernel<<<p->grid_pairs, p->block_pairs, 0, st>>>(in->ids, in->hidden_fp4, in->hidden_sf, p->pairs,
                                                                  p->top_k, p->expert_offset, p->local_experts,
                                                                  ws->offsets, ws->cursors, ws->pair_row, s.xq, s.xsf,
                                                                  p->hidden);
    EPM_CUDA_LAUNCHED("sm100_gather_kernel");
  }
  return EPM_OK;
#endif
}

extern "C" epm_status_t epm__moe2_sm100_gemm1(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                              const epm_moe2_workspace_t *ws, void *stream) {
#ifndef EPMOE_HAVE_CUTLASS
  return no_cutlass("moe2 gemm1");
#else
  if (p->tokens == 0) return EPM_OK;
  cudaStream_t st = EPM_STREAM(stream);
  const Sm100Ws s = carve(p, ws);
  EPM_TRY(gemm(p, ws, s, s.xq, s.xsf, 2 * p->inter, p->hidden, w->w13, p->w13_expert_bytes, w->gate_up_scale_2,
               w->input_scale, stream));
  EPM_CUDA_TRY(cudaMemsetAsync(s.isf, 0, s.isf_bytes, st));
  const int64_t items = p->max_rows * (p->inter / 16);
  sm100_swiglu_quant_kernel<<<grid_for(items), 256, 0, st>>>(s.d, ws->counts, ws->offsets, p->local_experts,
                                                             p->inter, 1.0f / w->down_input_scale, s.iq, s.isf);
  EPM_CUDA_LAUNCHED("sm100_swiglu_quant_kernel");
  return EPM_OK;
#endif
}

extern "C" epm_status_t epm__moe2_sm100_gemm2(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                              const epm_moe2_workspace_t *ws, void *stream) {
#ifndef EPMOE_HAVE_CUTLASS
  return no_cutlass("moe2 gemm2");
#else
  if (p->tokens == 0) return EPM_OK;
  cudaStream_t st = EPM_STREAM(stream);
  const Sm100Ws s = carve(p, ws);
  EPM_TRY(gemm(p, ws, s, s.iq, s.isf, p->hidden, p->inter, w->w2, p->w2_expert_bytes, w->down_scale_2,
               w->down_input_scale, stream));
  sm100_round_y_kernel<<<grid_for(p->max_rows * p->hidden), 256, 0, st>>>(s.d, ws->offsets, p->local_experts,
                                                                         p->hidden, ws->y);
  EPM_CUDA_LAUNCHED("sm100_round_y_kernel");
  return EPM_OK;
#endif
}

extern "C" int epm_moe2_arch_built(int arch) {
#ifdef EPMOE_HAVE_CUTLASS
  return arch == 90 || arch == 100;
#else
  return arch == 90;
#endif
}
