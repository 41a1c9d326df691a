/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe_finalize.cu — weighted sum over each token's top-k slots, and
 * the whole expert pipeline in order.
 *
 * out[t, h] = sum_{j = 0..k-1, slot j local} bf16(w[t, j]) * y[row(t, j), h]
 * in stored slot order with fp32 accumulation (explicit round-to-nearest
 * multiply and add, so nvcc's FMA contraction cannot make it differ from the
 * CPU reference), then bf16 (or fp32 for the EP reduce). One thread per 8
 * outputs (16-byte loads of y), grid-strided over M*H/8 with int64 indices.
 */
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "nvfp4_core.h"

__global__ void epm__moe_finalize_kernel(const uint16_t *__restrict__ y,
                                         const int64_t *__restrict__ pair_row,
                                         const float *__restrict__ weights, int64_t tokens,
                                         int64_t hidden, int64_t k, int out_f32, void *out) {
  const int64_t per_row = hidden / 8, items = tokens * per_row;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
    const int64_t t = i / per_row, h = (i % per_row) * 8;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < k; j++) {
      const int64_t row = pair_row[t * k + j];
      if (row < 0) continue;
      const float w = epm_bf16_round(weights[t * k + j]);
      const uint4 v = *reinterpret_cast<const uint4 *>(y + row * hidden + h);
      const uint32_t wd[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int q = 0; q < 4; q++) {
        acc[2 * q] = __fadd_rn(acc[2 * q], __fmul_rn(w, epm_bf16_to_f32((uint16_t)(wd[q] & 0xFFFFu))));
        acc[2 * q + 1] = __fadd_rn(acc[2 * q + 1], __fmul_rn(w, epm_bf16_to_f32((uint16_t)(wd[q] >> 16))));
      }
    }
    if (out_f32) {
      float4 *o = reinterpret_cast<float4 *>(static_cast<float *>(out) + t * hidden + h);
      o[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      o[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    } else {
      uint32_t pk[4];
#pragma unroll
      for (int q = 0; q < 4; q++)
        pk[q] = (uint32_t)epm_bf16_from_f32(acc[2 * q]) |
                ((uint32_t)epm_bf16_from_f32(acc[2 * q + 1]) << 16);
      *reinterpret_cast<uint4 *>(static_cast<uint16_t *>(out) + t * hidden + h) =
          make_uint4(pk[0], pk[1], pk[2], pk[3]);
    }
  }
}

extern "C" epm_status_t epm_kernel_moe_finalize(const epm_moe_plan_t *p, const epm_moe_inputs_dev_t *in,
                                                const epm_moe_workspace_t *ws, int out_f32,
                                                void *out_dev, void *stream) {
  if (!p || !in || !ws || !out_dev || !in->weights)
    return epm_error(EPM_ERR_INVALID_ARG, "moe finalize: NULL plan, inputs, workspace or output");
  EPM_CHECK_ALIGNED(out_dev, 16);
  EPM_CHECK_ALIGNED(ws->y, 16);
  if (p->tokens == 0) return EPM_OK;
  epm__moe_finalize_kernel<<<p->grid_finalize, p->block, 0, EPM_STREAM(stream)>>>(
      ws->y, ws->pair_row, in->weights, p->tokens, p->hidden, p->top_k, out_f32, out_dev);
  EPM_CUDA_LAUNCHED("epm__moe_finalize_kernel");
  return EPM_OK;
}

extern "C" epm_status_t epm_kernel_moe_forward(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                               const epm_moe_inputs_dev_t *in,
                                               const epm_moe_workspace_t *ws, int out_f32,
                                               void *out_dev, void *stream) {
  EPM_TRY(epm_kernel_moe_permute(p, in, ws, stream));
  EPM_TRY(epm_kernel_moe_gemm1(p, w, in, ws, stream));
  EPM_TRY(epm_kernel_moe_gemm2(p, w, ws, stream));
  return epm_kernel_moe_finalize(p, in, ws, out_f32, out_dev, stream);
}
