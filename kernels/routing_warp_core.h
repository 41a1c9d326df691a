/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing_warp_core.h — warp-per-token routing: configuration and the
 * per-lane helpers of kernels/routing_warp_body.h (private to kernels/ and
 * tests/).
 *
 * The warp algorithm is written once, in routing_warp_body.h, against a few
 * macros for lane-private variables and warp collectives. routing_warp.cu
 * compiles it with one CUDA thread per lane (__shfl_*_sync, __ballot_sync,
 * atomicAdd); routing_warp_emu.c compiles the very same text with every
 * lane-private variable an array over 32 lanes, each lane block a loop over
 * the lanes, and the collectives reading the other lanes' array entries. So
 * the CPU test that compares the emulation with runtime/routing.c checks the
 * lane logic, reduction order and tie rules the GPU runs (the only thing not
 * shared is the device's double exp; see docs/ARCHITECTURE.md).
 *
 * Lane l owns experts [l * epl, l * epl + epl), epl = ceil(E / 32) <= 16, so
 * index order is (lane, then slot) order: the softmax denominator is summed
 * in the reference's index order by broadcasting lane by lane. Selected slot
 * r lives in lane r % 32 (two slots per lane: top_k <= 64).
 */
#ifndef EPMOE_KERNELS_ROUTING_WARP_CORE_H
#define EPMOE_KERNELS_ROUTING_WARP_CORE_H

#include <stdint.h>

#include "epmoe/dtype.h"
#include "epmoe/kernels.h"
#include "routing_core.h"

#define EPM_RW_LANES 32
#define EPM_RW_MAX_PER_LANE 16 /* E <= 512 */
#define EPM_RW_MAX_EXPERTS (EPM_RW_LANES * EPM_RW_MAX_PER_LANE)
#define EPM_RW_MAX_K (2 * EPM_RW_LANES)

typedef struct {
  int method; /* EPM_CORE_ROUTE_* */
  int64_t num_experts, top_k, n_group, topk_group;
  float routed_scaling_factor;
  int32_t epl;     /* experts per lane, ceil(E / 32) */
  int64_t ep_size; /* ranks for the per-rank token counts (E % ep_size == 0) */
} epm_rw_cfg_t;

/* Selection key: larger key = better candidate under the reference's rule
 * (larger score, then lower index). The score's bits are made order
 * preserving (negative floats flipped), -0 first becomes +0 because the
 * reference compares -0 == +0 and lets the index decide. Key 0 = no
 * candidate (below every real key: the smallest real one is -inf's). */
EPM_HD uint64_t epm_rw_key(float s, int64_t i) {
  uint32_t u = epm_core_f32_bits(s == 0.0f ? 0.0f : s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ((uint64_t)u << 32) | (uint64_t)(~(uint32_t)i);
}
EPM_HD uint32_t epm_rw_key_index(uint64_t key) { return ~(uint32_t)(key & 0xFFFFFFFFu); }

/* Top-2 (as a multiset) of {a1 >= a2} and {b1 >= b2}: the group score is the
 * sum of the two largest biased scores whatever the order they are met in. */
EPM_HD void epm_rw_top2_merge(float *a1, float *a2, float b1, float b2) {
  float hi = *a1 > b1 ? *a1 : b1, lo = *a1 > b1 ? b1 : *a1;
  float second = *a2 > b2 ? *a2 : b2;
  *a1 = hi;
  *a2 = lo > second ? lo : second;
}
/* Insert v into the running top-2 (the reference's loop body). */
EPM_HD void epm_rw_top2_push(float *b1, float *b2, float v) {
  if (v > *b1) {
    *b2 = *b1;
    *b1 = v;
  } else if (v > *b2) {
    *b2 = v;
  }
}

#ifdef __cplusplus
extern "C" {
#endif
/* The warp kernel's configuration for plan p (routing_plan.c). */
epm_status_t epm__rw_cfg(const epm_routing_plan_t *p, int64_t ep_size, epm_rw_cfg_t *out);

/* The CPU emulation of epm_kernel_routing_warp (routing_warp_emu.c): the
 * same per-token body run lane by lane on host memory, tokens in order.
 * Counts are zeroed first, like the kernel's. EPM_ERR_INTERNAL if a value the
 * body treats as warp-uniform differs between lanes. */
epm_status_t epm_routing_warp_emulate(const epm_routing_plan_t *p, const void *logits, epm_dtype_t logits_dtype,
                                      const float *bias, int32_t *ids, float *weights,
                                      const epm_routing_counts_t *counts);
#ifdef __cplusplus
}
#endif

#endif /* EPMOE_KERNELS_ROUTING_WARP_CORE_H */
