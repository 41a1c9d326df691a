/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing_plan.c — validation, sizes and grid of the routing kernel. */
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/kernels.h"
#include "plan_util.h"
#include "routing_core.h"
#include "routing_warp_core.h"

epm_status_t epm_routing_plan(const epm_model_dims_t *dims, int64_t tokens,
                              epm_routing_plan_t *out) {
  if (!dims || !out) return epm_error(EPM_ERR_INVALID_ARG, "routing plan: NULL dims or out");
  memset(out, 0, sizeof *out);
  if (tokens < 0)
    return epm_error(EPM_ERR_INVALID_ARG, "routing plan: tokens = %lld < 0", (long long)tokens);
  const int64_t e = dims->num_experts, k = dims->top_k;
  if (e < 1 || e > INT32_MAX)
    return epm_error(EPM_ERR_INVALID_ARG, "routing plan: num_experts = %lld outside [1, 2^31-1]",
                     (long long)e);
  if (k < 1 || k > e || k > EPM_CORE_ROUTE_MAX_K)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "routing plan: top_k = %lld must be in [1, min(num_experts = %lld, %d)] on the GPU",
                     (long long)k, (long long)e, EPM_CORE_ROUTE_MAX_K);
  if ((int)dims->routing < 0 || dims->routing >= EPM_ROUTING_COUNT)
    return epm_error(EPM_ERR_INVALID_ARG, "routing plan: unknown routing method %d", (int)dims->routing);
  if (dims->routing == EPM_ROUTING_LLAMA4 && k != 1)
    return epm_error(EPM_ERR_INVALID_ARG, "routing plan: llama4 needs top_k = 1, got %lld", (long long)k);
  if (dims->routing == EPM_ROUTING_DEEPSEEK_V3 && dims->n_group > 1) {
    const int64_t g = dims->n_group;
    if (g > EPM_CORE_ROUTE_MAX_GROUPS || e % g != 0 || e / g < 2)
      return epm_error(EPM_ERR_INVALID_ARG,
                       "routing plan: n_group = %lld must divide num_experts = %lld into groups of >= 2 "
                       "and be <= %d",
                       (long long)g, (long long)e, EPM_CORE_ROUTE_MAX_GROUPS);
    if (dims->topk_group < 1 || dims->topk_group > g || k > dims->topk_group * (e / g))
      return epm_error(EPM_ERR_INVALID_ARG,
                       "routing plan: topk_group = %lld must be in [1, n_group = %lld] and keep >= top_k = "
                       "%lld experts",
                       (long long)dims->topk_group, (long long)g, (long long)k);
  }
  if (dims->routing == EPM_ROUTING_DEEPSEEK_V3 && !(dims->routed_scaling_factor > 0.0f))
    return epm_error(EPM_ERR_INVALID_ARG, "routing plan: routed_scaling_factor = %g must be > 0",
                     (double)dims->routed_scaling_factor);
  int64_t nl = 0, nk = 0, bl = 0, bk = 0;
  if (epm_mul_i64(tokens, e, &nl) || epm_mul_i64(nl, 4, &bl) || epm_mul_i64(tokens, k, &nk) ||
      epm_mul_i64(nk, 4, &bk))
    return epm_error(EPM_ERR_OVERFLOW, "routing plan: %lld tokens x %lld experts overflows int64",
                     (long long)tokens, (long long)e);
  out->tokens = tokens;
  out->num_experts = e;
  out->top_k = k;
  out->n_group = dims->n_group;
  out->topk_group = dims->topk_group;
  out->routed_scaling_factor = dims->routed_scaling_factor;
  out->method = dims->routing;
  out->logits_bytes = (size_t)bl;
  out->ids_bytes = (size_t)bk;
  out->weights_bytes = (size_t)bk;
  /* One thread per token; small blocks spread the serial per-token work. */
  out->block = 128u;
  int64_t g = (tokens + 127) / 128;
  out->grid = (uint32_t)(g < 1 ? 1 : (g > 65536 ? 65536 : g));
  /* Warp kernel: one warp per token, 4 per block (many small blocks fill
   * every SM at a few thousand tokens). */
  out->warp_ok = e <= EPM_RW_MAX_EXPERTS && k <= EPM_RW_MAX_K;
  out->experts_per_lane = (int32_t)((e + EPM_RW_LANES - 1) / EPM_RW_LANES);
  out->warp_block = 128u;
  int64_t wg = (tokens + 3) / 4;
  out->warp_grid = (uint32_t)(wg < 1 ? 1 : (wg > 65536 ? 65536 : wg));
  return EPM_OK;
}

epm_status_t epm__rw_cfg(const epm_routing_plan_t *p, int64_t ep_size, epm_rw_cfg_t *out) {
  if (!p || !out) return epm_error(EPM_ERR_INVALID_ARG, "warp routing: NULL plan or config");
  if (!p->warp_ok)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "warp routing: num_experts = %lld and top_k = %lld must be <= %d and <= %d (use the "
                     "thread-per-token kernel)",
                     (long long)p->num_experts, (long long)p->top_k, EPM_RW_MAX_EXPERTS, EPM_RW_MAX_K);
  if (ep_size < 0 || (ep_size > 0 && p->num_experts % ep_size != 0))
    return epm_error(EPM_ERR_INVALID_ARG, "warp routing: ep_size = %lld must divide num_experts = %lld",
                     (long long)ep_size, (long long)p->num_experts);
  memset(out, 0, sizeof *out);
  out->method = (int)p->method;
  out->num_experts = p->num_experts;
  out->top_k = p->top_k;
  out->n_group = p->n_group;
  out->topk_group = p->topk_group;
  out->routed_scaling_factor = p->routed_scaling_factor;
  out->epl = p->experts_per_lane;
  out->ep_size = ep_size;
  return EPM_OK;
}
