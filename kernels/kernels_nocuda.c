/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/kernels_nocuda.c — the kernel launchers in a build without CUDA:
 * the plans still work (kernels/<op>_plan.c); launching says why it cannot. */
#include "epmoe/kernels.h"

static epm_status_t no_cuda(const char *what) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "%s: this build of epmoe has no CUDA (EPMOE_CUDA=OFF or no nvcc)",
                   what);
}

epm_status_t epm_kernel_quantize_bf16(const epm_quantize_plan_t *p, const void *x_dev,
                                      const float *global_scale_dev, void *packed_dev, void *sf_dev,
                                      void *stream) {
  return no_cuda("quantize kernel");
}
epm_status_t epm_kernel_routing(const epm_routing_plan_t *p, const float *logits_dev,
                                const float *bias_dev, int32_t *ids_dev, float *weights_dev,
                                void *stream) {
  return no_cuda("routing kernel");
}
epm_status_t epm_kernel_moe_permute(const epm_moe_plan_t *p, const epm_moe_inputs_dev_t *in,
                                    const epm_moe_workspace_t *ws, void *stream) {
  return no_cuda("moe permute kernel");
}
epm_status_t epm_kernel_moe_gemm1(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                  const epm_moe_inputs_dev_t *in, const epm_moe_workspace_t *ws,
                                  void *stream) {
  return no_cuda("moe gemm1 kernel");
}
epm_status_t epm_kernel_moe_gemm2(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                  const epm_moe_workspace_t *ws, void *stream) {
  return no_cuda("moe gemm2 kernel");
}
epm_status_t epm_kernel_moe_finalize(const epm_moe_plan_t *p, const epm_moe_inputs_dev_t *in,
                                     const epm_moe_workspace_t *ws, int out_f32, void *out_dev,
                                     void *stream) {
  return no_cuda("moe finalize kernel");
}
epm_status_t epm_kernel_moe_forward(const epm_moe_plan_t *p, const epm_moe_weights_dev_t *w,
                                    const epm_moe_inputs_dev_t *in, const epm_moe_workspace_t *ws,
                                    int out_f32, void *out_dev, void *stream) {
  return no_cuda("moe forward");
}
epm_status_t epm_kernel_routing_warp(const epm_routing_plan_t *p, const void *logits_dev,
                                     epm_dtype_t logits_dtype, const float *bias_dev, int32_t *ids_dev,
                                     float *weights_dev, const epm_routing_counts_t *counts, void *stream) {
  return no_cuda("warp routing kernel");
}
epm_status_t epm_kernel_moe2_permute(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                     const int32_t *counts_dev, const epm_moe2_workspace_t *ws, void *stream) {
  return no_cuda("moe2 permute kernel");
}
epm_status_t epm_kernel_moe2_gemm1(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                   const epm_moe2_workspace_t *ws, void *stream) {
  return no_cuda("moe2 gemm1 kernel");
}
epm_status_t epm_kernel_moe2_gemm2(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                   const epm_moe2_workspace_t *ws, void *stream) {
  return no_cuda("moe2 gemm2 kernel");
}
epm_status_t epm_kernel_moe2_finalize(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                      const epm_moe2_workspace_t *ws, int out_f32, void *out_dev, void *stream) {
  return no_cuda("moe2 finalize kernel");
}
epm_status_t epm_kernel_moe2_forward(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                     const epm_moe_inputs_dev_t *in, const int32_t *counts_dev,
                                     const epm_moe2_workspace_t *ws, int out_f32, void *out_dev, void *stream) {
  return no_cuda("moe2 forward");
}
int epm_moe2_arch_built(int arch) { return 0; }
epm_status_t epm_kernel_bf16_to_f32(const void *src_dev, int64_t n, float *dst_dev, void *stream) {
  return no_cuda("bf16_to_f32 kernel");
}
epm_status_t epm_kernel_f32_to_bf16(const float *src_dev, int64_t n, void *dst_dev, void *stream) {
  return no_cuda("f32_to_bf16 kernel");
}
epm_status_t epm_kernel_shared_combine(float *y_dev, const void *s_dev, int64_t n, void *stream) {
  return no_cuda("shared combine kernel");
}
