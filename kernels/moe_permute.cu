/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe_permute.cu — device-side permutation of (token, slot) pairs
 * into per-local-expert row ranges, padded to EPM_MOE_TILE_M.
 *
 * Three small kernels, all on the stream, no host read of the counts:
 *   histogram  atomic count per bank slot over the M*k pairs (a placed plan
 *              maps each pair through the rank's replica table first)
 *   scan       one thread: padded exclusive prefix sum -> offsets[E_l + 1]
 *   scatter    pair -> row (atomic cursor per expert), row -> token
 * Rows within an expert come out in a nondeterministic order; every row is
 * computed independently and finalize reads rows through pair_row, so the
 * output does not depend on it.
 */
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"

/* Bank slot of pair p (token p / k), or -1: through the placement's replica
 * table when the plan is placed (rs != NULL), else the contiguous slice. */
__device__ __forceinline__ int64_t epm__moe_pair_slot(const int32_t *__restrict__ ids, int64_t p, int64_t k,
                                                      int64_t off, int64_t el, const int32_t *__restrict__ rs,
                                                      const int32_t *__restrict__ rl) {
  if (rs) return epm_moe_local_slot(rs, rl, ids[p], p / k);
  const int64_t e = (int64_t)ids[p] - off;
  return e >= 0 && e < el ? e : -1;
}

__global__ void epm__moe_hist_kernel(const int32_t *__restrict__ ids, int64_t pairs, int64_t k, int64_t off,
                                     int64_t el, const int32_t *__restrict__ rs, const int32_t *__restrict__ rl,
                                     int32_t *__restrict__ counts) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += stride) {
    const int64_t e = epm__moe_pair_slot(ids, p, k, off, el, rs, rl);
    if (e >= 0) atomicAdd(&counts[e], 1);
  }
}

__global__ void epm__moe_scan_kernel(const int32_t *__restrict__ counts, int32_t *__restrict__ cursors,
                                     int64_t *__restrict__ offsets, int64_t el) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t acc = 0;
  for (int64_t e = 0; e < el; e++) {
    offsets[e] = acc;
    acc += ((int64_t)counts[e] + EPM_MOE_TILE_M - 1) / EPM_MOE_TILE_M * EPM_MOE_TILE_M;
    cursors[e] = 0;
  }
  offsets[el] = acc;
}

__global__ void epm__moe_scatter_kernel(const int32_t *__restrict__ ids, int64_t pairs, int64_t k,
                                        int64_t off, int64_t el, const int32_t *__restrict__ rs,
                                        const int32_t *__restrict__ rl, const int64_t *__restrict__ offsets,
                                        int32_t *__restrict__ cursors, int64_t *__restrict__ pair_row,
                                        int64_t *__restrict__ row_token) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += stride) {
    const int64_t e = epm__moe_pair_slot(ids, p, k, off, el, rs, rl);
    if (e >= 0) {
      int64_t row = offsets[e] + atomicAdd(&cursors[e], 1);
      pair_row[p] = row;
      row_token[row] = p / k;
    } else {
      pair_row[p] = -1;
    }
  }
}

extern "C" epm_status_t epm_kernel_moe_permute(const epm_moe_plan_t *p, const epm_moe_inputs_dev_t *in,
                                               const epm_moe_workspace_t *ws, void *stream) {
  if (!p || !in || !ws || !in->ids)
    return epm_error(EPM_ERR_INVALID_ARG, "moe permute: NULL plan, inputs, workspace or ids");
  if (p->placed != (in->rep_start != NULL) || (in->rep_start != NULL) != (in->rep_local != NULL))
    return epm_error(EPM_ERR_INVALID_ARG,
                     "moe permute: a %s plan needs %s replica table (rep_start %p, rep_local %p)",
                     p->placed ? "placed" : "contiguous", p->placed ? "the" : "no", (const void *)in->rep_start,
                     (const void *)in->rep_local);
  cudaStream_t s = EPM_STREAM(stream);
  EPM_CUDA_TRY(cudaMemsetAsync(ws->counts, 0, p->counts_bytes, s));
  /* -1 everywhere: padding rows are recognised by a negative token. */
  EPM_CUDA_TRY(cudaMemsetAsync(ws->row_token, 0xFF, p->row_token_bytes, s));
  if (p->pairs > 0) {
    epm__moe_hist_kernel<<<p->grid_pairs, p->block, 0, s>>>(in->ids, p->pairs, p->top_k, p->expert_offset,
                                                             p->local_experts, in->rep_start, in->rep_local,
                                                             ws->counts);
    EPM_CUDA_LAUNCHED("epm__moe_hist_kernel");
  }
  epm__moe_scan_kernel<<<1, 1, 0, s>>>(ws->counts, ws->cursors, ws->offsets, p->local_experts);
  EPM_CUDA_LAUNCHED("epm__moe_scan_kernel");
  if (p->pairs > 0) {
    epm__moe_scatter_kernel<<<p->grid_pairs, p->block, 0, s>>>(
        in->ids, p->pairs, p->top_k, p->expert_offset, p->local_experts, in->rep_start, in->rep_local,
        ws->offsets, ws->cursors, ws->pair_row, ws->row_token);
    EPM_CUDA_LAUNCHED("epm__moe_scatter_kernel");
  }
  return EPM_OK;
}
