/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/quantize.cu — NVFP4 quantize of bf16 rows on the device.
 *
 * One thread per 16-element block: it loads 32 bytes of bf16, runs the same
 * block recipe as the host codec (kernels/nvfp4_core.h; exact IEEE division,
 * software RNE for E2M1 since Hopper has no cvt.e2m1x2) and stores 8 packed
 * bytes and one scale byte. Blocks are grid-strided with 64-bit indices, so
 * rows * cols may exceed 2^32.
 */
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "nvfp4_core.h"

__global__ void epm__quantize_bf16_kernel(const uint4 *__restrict__ x, const float *__restrict__ gs,
                                          uint2 *__restrict__ packed, uint8_t *__restrict__ sf,
                                          int64_t blocks, int64_t sf_cols, int swizzled) {
  const float g = gs[0];
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += stride) {
    uint4 v0 = x[2 * b], v1 = x[2 * b + 1];
    uint32_t w[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    float f[16];
#pragma unroll
    for (int i = 0; i < 8; i++) {
      f[2 * i] = epm_bf16_to_f32((uint16_t)(w[i] & 0xFFFFu));
      f[2 * i + 1] = epm_bf16_to_f32((uint16_t)(w[i] >> 16));
    }
    uint8_t q[8];
    uint8_t s = epm_core_quantize_block(f, g, q);
    packed[b] = make_uint2((uint32_t)q[0] | ((uint32_t)q[1] << 8) | ((uint32_t)q[2] << 16) |
                               ((uint32_t)q[3] << 24),
                           (uint32_t)q[4] | ((uint32_t)q[5] << 8) | ((uint32_t)q[6] << 16) |
                               ((uint32_t)q[7] << 24));
    int64_t off = swizzled ? epm_core_sf_offset_128x4(b / sf_cols, b % sf_cols, sf_cols) : b;
    sf[off] = s;
  }
}

extern "C" epm_status_t epm_kernel_quantize_bf16(const epm_quantize_plan_t *p, const void *x_dev,
                                                 const float *global_scale_dev, void *packed_dev,
                                                 void *sf_dev, void *stream) {
  if (!p || !x_dev || !global_scale_dev || !packed_dev || !sf_dev)
    return epm_error(EPM_ERR_INVALID_ARG, "quantize: NULL plan or device pointer");
  EPM_CHECK_ALIGNED(x_dev, 16);
  EPM_CHECK_ALIGNED(packed_dev, 8);
  if (p->blocks == 0) return EPM_OK;
  int swz = p->layout == EPM_SF_SWIZZLED_128X4;
  if (swz) EPM_CUDA_TRY(cudaMemsetAsync(sf_dev, 0, p->sf_bytes, EPM_STREAM(stream)));
  epm__quantize_bf16_kernel<<<p->grid, p->block, 0, EPM_STREAM(stream)>>>(
      (const uint4 *)x_dev, global_scale_dev, (uint2 *)packed_dev, (uint8_t *)sf_dev, p->blocks,
      p->cols / 16, swz);
  EPM_CUDA_LAUNCHED("epm__quantize_bf16_kernel");
  return EPM_OK;
}
