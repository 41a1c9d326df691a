/* kernels/moe2_sm100.cu — the sm_100a path of the v2 expert kernels (see
 * moe2_internal.h). Filled in with the CUTLASS translation unit. */
#include "cuda_check.h"
#include "moe2_internal.h"

static epm_status_t no_cutlass(const char *what) {
  return epm_error(EPM_ERR_NOT_SUPPORTED, "%s: the sm_100a path needs a build with EPMOE_CUTLASS=ON", what);
}
extern "C" epm_status_t epm__moe2_sm100_permute(const epm_moe2_plan_t *p, const epm_moe_inputs_dev_t *in,
                                                const int32_t *counts_dev, const epm_moe2_workspace_t *ws,
                                                void *stream) {
  return no_cutlass("moe2 permute");
}
extern "C" epm_status_t epm__moe2_sm100_gemm1(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                              const epm_moe2_workspace_t *ws, void *stream) {
  return no_cutlass("moe2 gemm1");
}
extern "C" epm_status_t epm__moe2_sm100_gemm2(const epm_moe2_plan_t *p, const epm_moe2_weights_dev_t *w,
                                              const epm_moe2_workspace_t *ws, void *stream) {
  return no_cutlass("moe2 gemm2");
}
extern "C" int epm_moe2_arch_built(int arch) { return arch == 90; }
