/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing_warp.cu — top-k routing, one warp per token
 * (kernels/routing_warp_body.h compiled with one CUDA thread per lane; the
 * CPU emulation in routing_warp_emu.c compiles the same text). Tokens are
 * grid-strided by warp with 64-bit offsets. */
#include <math.h>
#include <stdint.h>

#include "cuda_check.h"
#include "epmoe/bf16.h"
#include "epmoe/kernels.h"
#include "routing_warp_core.h"

namespace {

/* The body twice: arrays for 8 experts per lane (E <= 256, fewer registers,
 * more warps per SM) and for 16 (E <= 512). */
#define RW_FN __device__ __forceinline__
#define RW_LANE_DECL const int lane = (int)(threadIdx.x & 31u)
#define RW_VAR(T, x) T x
#define RW_ARR(T, x, n) T x[n]
#define RW_V(x) x
#define RW_A(x, j) x[j]
#define RW_LANES
#define RW_XOR(x, m) __shfl_xor_sync(0xffffffffu, x, m)
#define RW_BCAST(x, src) __shfl_sync(0xffffffffu, x, src)
#define RW_BCAST_A(x, j, src) __shfl_sync(0xffffffffu, x[j], src)
#define RW_UNI(x) (x)
#define RW_BALLOT(x) __ballot_sync(0xffffffffu, (x) != 0)
#define RW_ATOMIC_ADD(p, v) atomicAdd((p), (v))
#define RW_UNROLL _Pragma("unroll")

#define RW_NAME rw_route_token8
#define RW_MAXPL 8
#include "routing_warp_body.h"
#undef RW_NAME
#undef RW_MAXPL
#define RW_NAME rw_route_token16
#define RW_MAXPL EPM_RW_MAX_PER_LANE
#include "routing_warp_body.h"

template <int MAXPL>
__global__ void __launch_bounds__(128) routing_warp_kernel(epm_rw_cfg_t cfg, const float *__restrict__ lf,
                                                           const uint16_t *__restrict__ lb,
                                                           const float *__restrict__ bias, int64_t tokens,
                                                           int32_t *__restrict__ ids, float *__restrict__ w,
                                                           int32_t *ec, int32_t *rt) {
  const int64_t per_block = blockDim.x / 32, warps = (int64_t)gridDim.x * per_block;
  const int64_t E = cfg.num_experts, k = cfg.top_k;
  for (int64_t t = (int64_t)blockIdx.x * per_block + threadIdx.x / 32; t < tokens; t += warps) {
    const float *l32 = lf ? lf + t * E : nullptr;
    const uint16_t *l16 = lb ? lb + t * E : nullptr;
    if (MAXPL == 8) rw_route_token8(&cfg, l32, l16, bias, ids + t * k, w + t * k, ec, rt);
    else rw_route_token16(&cfg, l32, l16, bias, ids + t * k, w + t * k, ec, rt);
  }
}

} // namespace

extern "C" epm_status_t epm_kernel_routing_warp(const epm_routing_plan_t *p, const void *logits_dev,
                                                epm_dtype_t logits_dtype, const float *bias_dev, int32_t *ids_dev,
                                                float *weights_dev, const epm_routing_counts_t *counts, void *stream) {
  epm_rw_cfg_t cfg;
  if (!p) return epm_error(EPM_ERR_INVALID_ARG, "warp routing: NULL plan");
  EPM_TRY(epm__rw_cfg(p, counts ? counts->ep_size : 0, &cfg));
  if (logits_dtype != EPM_DTYPE_F32 && logits_dtype != EPM_DTYPE_BF16)
    return epm_error(EPM_ERR_INVALID_ARG, "warp routing: logits dtype %s is not f32 or bf16",
                     epm_dtype_name(logits_dtype));
  cudaStream_t s = EPM_STREAM(stream);
  int32_t *ec = counts ? counts->expert_counts : nullptr, *rt = counts ? counts->rank_tokens : nullptr;
  if (ec) EPM_CUDA_TRY(cudaMemsetAsync(ec, 0, (size_t)p->num_experts * sizeof(int32_t), s));
  if (rt) EPM_CUDA_TRY(cudaMemsetAsync(rt, 0, (size_t)cfg.ep_size * sizeof(int32_t), s));
  if (p->tokens == 0) return EPM_OK;
  if (!logits_dev || !ids_dev || !weights_dev)
    return epm_error(EPM_ERR_INVALID_ARG, "warp routing: NULL logits, ids or weights");
  const float *bias = p->method == EPM_ROUTING_DEEPSEEK_V3 ? bias_dev : nullptr;
  const float *lf = logits_dtype == EPM_DTYPE_F32 ? static_cast<const float *>(logits_dev) : nullptr;
  const uint16_t *lb = logits_dtype == EPM_DTYPE_BF16 ? static_cast<const uint16_t *>(logits_dev) : nullptr;
  if (cfg.epl <= 8)
    routing_warp_kernel<8><<<p->warp_grid, p->warp_block, 0, s>>>(cfg, lf, lb, bias, p->tokens, ids_dev, weights_dev,
                                                                   ec, rt);
  else
    routing_warp_kernel<EPM_RW_MAX_PER_LANE><<<p->warp_grid, p->warp_block, 0, s>>>(cfg, lf, lb, bias, p->tokens,
                                                                                     ids_dev, weights_dev, ec, rt);
  EPM_CUDA_LAUNCHED("routing_warp_kernel");
  return EPM_OK;
}
