/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing.cu — top-k routing on the device, one thread per token,
 * running kernels/routing_core.h (the CPU reference's algorithm). Tokens are
 * grid-strided with 64-bit offsets (M * E may pass 2^31). */
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/kernels.h"
#include "routing_core.h"

__global__ void epm__routing_kernel(epm_core_route_cfg_t cfg, const float *__restrict__ logits,
                                    const float *__restrict__ bias, int64_t tokens,
                                    int32_t *__restrict__ ids, float *__restrict__ weights) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < tokens; t += stride)
    epm_core_route_token(&cfg, logits + t * cfg.num_experts, bias, ids + t * cfg.top_k,
                         weights + t * cfg.top_k);
}

extern "C" epm_status_t epm_kernel_routing(const epm_routing_plan_t *p, const float *logits_dev,
                                           const float *bias_dev, int32_t *ids_dev, float *weights_dev,
                                           void *stream) {
  if (!p || !logits_dev || !ids_dev || !weights_dev)
    return epm_error(EPM_ERR_INVALID_ARG, "routing: NULL plan or device pointer");
  if (p->tokens == 0) return EPM_OK;
  epm_core_route_cfg_t cfg;
  cfg.method = (int)p->method;
  cfg.num_experts = p->num_experts;
  cfg.top_k = p->top_k;
  cfg.n_group = p->n_group;
  cfg.topk_group = p->topk_group;
  cfg.routed_scaling_factor = p->routed_scaling_factor;
  const float *bias = p->method == EPM_ROUTING_DEEPSEEK_V3 ? bias_dev : nullptr;
  epm__routing_kernel<<<p->grid, p->block, 0, EPM_STREAM(stream)>>>(cfg, logits_dev, bias, p->tokens,
                                                                   ids_dev, weights_dev);
  EPM_CUDA_LAUNCHED("epm__routing_kernel");
  return EPM_OK;
}
