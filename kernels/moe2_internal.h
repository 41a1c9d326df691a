/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/moe2_internal.h — private glue between the v2 expert kernel files
 * (moe2_gemm.cu, moe2_permute.cu, moe2_sm100.cu). */
#ifndef EPMOE_KERNELS_MOE2_INTERNAL_H
#define EPMOE_KERNELS_MOE2_INTERNAL_H

#include "epmoe/kernels.h"
#include "moe2_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Schedule parameters of GEMM 1 or 2 (moe2_plan.c): the permute's scan
 * builds the prefix arrays with exactly what the GEMM kernels read them with. */
epm_core_sched_t epm__moe2_sched(const epm_moe2_plan_t *p, int gemm);

/* The sm_100a path (opts.arch == 100, moe2_sm100.cu): permuted NVFP4 rows
 * with 128x4 scales per expert, CUTLASS block-scaled grouped GEMMs
 * (moe2_sm100_cutlass.cu, EPMOE_CUTLASS=ON), SwiGLU + requant and the bf16
 * rounding of y as small kernels. EPM_ERR_NOT_SUPPORTED without CUTLASS. */
epm_status_t epm__moe2_sm100_permute(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                     const int32_t *counts_dev, const epm_moe2_workspace_t *ws, void *stream);
epm_status_t epm__moe2_sm100_gemm1(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                   const epm_moe2_workspace_t *ws, void *stream);
epm_status_t epm__moe2_sm100_gemm2(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                   const epm_moe2_workspace_t *ws, void *stream);

#ifdef __cplusplus
}
#endif
#endif
