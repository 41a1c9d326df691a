/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_permute.cu — the v2 permute + gather pass, finalize and the
 * whole v2 expert pipeline in order.
 *
 *   histogram  only when no counts are given (the warp routing kernel emits
 *              them): atomic count per local expert over the M*k pairs
 *   scan       one thread: rows per expert padded to 8 -> offsets[E_l + 1],
 *              cursors zeroed, and both GEMMs' schedule prefixes
 *              (epm_core_sched_scan); all on the device, nothing read back
 *   gather     one warp per (token, slot) pair: lane 0 claims the row
 *              (atomic cursor; the order inside an expert does not matter,
 *              finalize reads rows through pair_row), then the warp writes
 *              the token's NVFP4 row once as exact FP16 into the tiled,
 *              swizzled B layout of GEMM1 (epm_core_x16_offset), zeros past H.
 * Finalize is the v1 kernel (deterministic slot order, no FMA contraction)
 * reading the v2 rows through pair_row.
 */
#include <stdint.h>
#include <string.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "moe2_core.h"
#include "moe2_internal.h"

namespace {

__global__ void moe2_hist_kernel(const int32_t *__restrict__ ids, int64_t pairs, int64_t off, int64_t el,
                                 int32_t *__restrict__ counts) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += stride) {
    const int64_t e = (int64_t)ids[p] - off;
    if (e >= 0 && e < el) atomicAdd(&counts[e], 1);
  }
}

__global__ void moe2_scan_kernel(const int32_t *__restrict__ counts_in, int32_t *__restrict__ counts,
                                 int32_t *__restrict__ cursors, int64_t *__restrict__ offsets, int64_t el,
                                 int64_t align, epm_core_sched_t s1, int64_t *uoff1, int64_t *coff1,
                                 epm_core_sched_t s2, int64_t *uoff2, int64_t *coff2) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t acc = 0;
  for (int64_t e = 0; e < el; e++) {
    if (counts_in != counts) counts[e] = counts_in[e]; /* the GEMMs read the counts from the workspace */
    offsets[e] = acc;
    acc += ((int64_t)counts[e] + align - 1) / align * align;
    cursors[e] = 0;
  }
  offsets[el] = acc;
  epm_core_sched_scan(&s1, counts, el, uoff1, coff1);
  epm_core_sched_scan(&s2, counts, el, uoff2, coff2);
}

__global__ void moe2_gather_kernel(const int32_t *__restrict__ ids, const uint8_t *__restrict__ hidden,
                                   const uint8_t *__restrict__ hidden_sf, int64_t pairs, int64_t k, int64_t off,
                                   int64_t el, const int64_t *__restrict__ offsets, int32_t *__restrict__ cursors,
                                   int64_t *__restrict__ pair_row, uint8_t *__restrict__ x16, int64_t rows_total,
                                   int64_t H, int64_t h_pad, int normal) {
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
    const uint8_t *src = hidden + tok * (H / 2), *sf = hidden_sf + tok * (H / 16);
    for (int64_t c = lane; c < h_pad / 8; c += 32) { /* 8 elements = one 16-byte chunk */
      const int64_t k0 = c * 8;
      uint32_t o[4] = {0, 0, 0, 0};
      if (k0 < H) {
        const uint32_t q = *reinterpret_cast<const uint32_t *>(src + k0 / 2);
        const uint8_t s = sf[k0 / 16];
#pragma unroll
        for (int e = 0; e < 4; e++)
          o[e] = (uint32_t)epm_core_x16_value((q >> (8 * e)) & 15u, s, normal) |
                 ((uint32_t)epm_core_x16_value((q >> (8 * e + 4)) & 15u, s, normal) << 16);
      }
      *reinterpret_cast<uint4 *>(x16 + epm_core_x16_offset(row, k0, rows_total)) = make_uint4(o[0], o[1], o[2], o[3]);
    }
  }
}

} // namespace

extern "C" epm_status_t epm_kernel_moe2_permute(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                                const int32_t *counts_dev, const epm_moe2_workspace_t *ws,
                                                void *stream) {
  if (!p || !in || !ws || (p->pairs > 0 && (!in->ids || !in->hidden_fp4 || !in->hidden_sf)))
    return epm_error(EPM_ERR_INVALID_ARG, "moe2 permute: NULL plan, inputs, workspace or ids");
  if (p->opts.arch == 100) return epm__moe2_sm100_permute(p, in, counts_dev, ws, stream);
  EPM_CHECK_ALIGNED(in->hidden_fp4, 8);
  EPM_CHECK_ALIGNED(ws->x16, 1024);
  cudaStream_t s = EPM_STREAM(stream);
  if (!counts_dev) {
    EPM_CUDA_TRY(cudaMemsetAsync(ws->counts, 0, (size_t)p->local_experts * sizeof(int32_t), s));
    if (p->pairs > 0) {
      moe2_hist_kernel<<<p->grid_pairs, p->block_pairs, 0, s>>>(in->ids, p->pairs, p->expert_offset,
                                                                 p->local_experts, ws->counts);
      EPM_CUDA_LAUNCHED("moe2_hist_kernel");
    }
  }
  moe2_scan_kernel<<<1, 1, 0, s>>>(counts_dev ? counts_dev : ws->counts, ws->counts, ws->cursors, ws->offsets,
                                   p->local_experts, EPM_MOE2_ROW_ALIGN, epm__moe2_sched(p, 1), ws->uoff1,
                                   ws->coff1, epm__moe2_sched(p, 2), ws->uoff2, ws->coff2);
  EPM_CUDA_LAUNCHED("moe2_scan_kernel");
  if (p->pairs > 0) {
    moe2_gather_kernel<<<p->grid_pairs, p->block_pairs, 0, s>>>(
        in->ids, in->hidden_fp4, in->hidden_sf, p->pairs, p->top_k, p->expert_offset, p->local_experts, ws->offsets,
        ws->cursors, ws->pair_row, ws->x16, p->max_rows, p->hidden, p->hidden_pad,
        p->opts.fp16 == EPM_MOE2_FP16_NORMAL);
    EPM_CUDA_LAUNCHED("moe2_gather_kernel");
  }
  return EPM_OK;
}

/* The v1 finalize reads only tokens, hidden, top_k, its grid, y and pair_row. */
extern "C" epm_status_t epm_kernel_moe2_finalize(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                                 const epm_moe2_workspace_t *ws, int out_f32, void *out_dev,
                                                 void *stream) {
  if (!p || !ws) return epm_error(EPM_ERR_INVALID_ARG, "moe2 finalize: NULL plan or workspace");
  epm_moe_plan_t v1;
  epm_moe_workspace_t w1;
  memset(&v1, 0, sizeof v1);
  memset(&w1, 0, sizeof w1);
  v1.tokens = p->tokens;
  v1.hidden = p->hidden;
  v1.top_k = p->top_k;
  v1.grid_finalize = p->grid_finalize;
  v1.block = p->block;
  w1.y = ws->y;
  w1.pair_row = ws->pair_row;
  return epm_kernel_moe_finalize(&v1, in, &w1, out_f32, out_dev, stream);
}

extern "C" epm_status_t epm_kernel_moe2_forward(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                                const epm_moe_inputs_dev_t *in, const int32_t *counts_dev,
                                                const epm_moe2_workspace_t *ws, int out_f32, void *out_dev,
                                                void *stream) {
  EPM_TRY(epm_kernel_moe2_permute(p, in, counts_dev, ws, stream));
  EPM_TRY(epm_kernel_moe2_gemm1(p, w, ws, stream));
  EPM_TRY(epm_kernel_moe2_gemm2(p, w, ws, stream));
  return epm_kernel_moe2_finalize(p, in, ws, out_f32, out_dev, stream);
}
