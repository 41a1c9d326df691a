/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/elementwise.cu — the elementwise ops on a rank's own rows (bf16 <->
 * fp32 and the shared-expert combine) on the device.
 *
 * They used to stage through pinned host memory with a sync each way, which
 * at 1024 x 7168 cost tens of milliseconds per step, far more than the
 * shared expert's GEMMs. Each element is one bf16 rounding (the codec's RNE
 * and quiet-NaN rule, kernels/nvfp4_core.h) or one fp32 add, so the results
 * are the host loops' bit for bit. One thread per element, grid-strided with
 * 64-bit indices. */
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "nvfp4_core.h"
#include "plan_util.h"

namespace {

__global__ void bf16_to_f32_kernel(const uint16_t *__restrict__ s, float *__restrict__ d, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    d[i] = epm_bf16_to_f32(s[i]);
}

__global__ void f32_to_bf16_kernel(const float *__restrict__ s, uint16_t *__restrict__ d, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    d[i] = epm_bf16_from_f32(s[i]);
}

/* y = float(bf16(y)) + float(s): the routed sum is rounded to bf16 before
 * the shared expert's bf16 output is added, as the reference does. */
__global__ void shared_combine_kernel(float *__restrict__ y, const uint16_t *__restrict__ s, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = epm_bf16_round(y[i]) + epm_bf16_to_f32(s[i]);
}

epm_status_t check(const char *op, const void *a, const void *b, int64_t n) {
  if (n < 0) return epm_error(EPM_ERR_INVALID_ARG, "%s: n = %lld < 0", op, (long long)n);
  if (n > 0 && (!a || !b)) return epm_error(EPM_ERR_INVALID_ARG, "%s of %lld values: NULL device pointer", op,
                                            (long long)n);
  return EPM_OK;
}

} // namespace

extern "C" epm_status_t epm_kernel_bf16_to_f32(const void *src_dev, int64_t n, float *dst_dev, void *stream) {
  EPM_TRY(check("bf16_to_f32", src_dev, dst_dev, n));
  if (n == 0) return EPM_OK;
  bf16_to_f32_kernel<<<epm__plan_grid(n), EPM__PLAN_BLOCK, 0, EPM_STREAM(stream)>>>((const uint16_t *)src_dev,
                                                                                   dst_dev, n);
  EPM_CUDA_LAUNCHED("bf16_to_f32_kernel");
  return EPM_OK;
}

extern "C" epm_status_t epm_kernel_f32_to_bf16(const float *src_dev, int64_t n, void *dst_dev, void *stream) {
  EPM_TRY(check("f32_to_bf16", src_dev, dst_dev, n));
  if (n == 0) return EPM_OK;
  f32_to_bf16_kernel<<<epm__plan_grid(n), EPM__PLAN_BLOCK, 0, EPM_STREAM(stream)>>>(src_dev,
                                                                                   (uint16_t *)dst_dev, n);
  EPM_CUDA_LAUNCHED("f32_to_bf16_kernel");
  return EPM_OK;
}

extern "C" epm_status_t epm_kernel_shared_combine(float *y_dev, const void *s_dev, int64_t n, void *stream) {
  EPM_TRY(check("shared_combine", y_dev, s_dev, n));
  if (n == 0) return EPM_OK;
  shared_combine_kernel<<<epm__plan_grid(n), EPM__PLAN_BLOCK, 0, EPM_STREAM(stream)>>>(
      y_dev, (const uint16_t *)s_dev, n);
  EPM_CUDA_LAUNCHED("shared_combine_kernel");
  return EPM_OK;
}
