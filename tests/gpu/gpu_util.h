/* SPDX-License-Identifier: Apache-2.0 */
/* tests/gpu/gpu_util.h — helpers of the GPU tests: skip without a GPU,
 * checked CUDA calls, poisoned device buffers, device-side fills. */
#ifndef EPMOE_TESTS_GPU_UTIL_H
#define EPMOE_TESTS_GPU_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "epmoe/cuda_status.h"
#include "epmoe/kernels.h"
#include "epmoe/layer.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exit 77 (ctest: skipped) when no CUDA device is usable; print the device. */
void gpu_require_device(const char *test_name);

/* A failed CUDA call ends the test, described by epmoe's own translation. */
#define GPU_CHECK(call)                                                                \
  do {                                                                                 \
    epm_status_t gpu__c = epm_cuda_status((call), "%s", #call);                        \
    if (gpu__c != EPM_OK) {                                                            \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, epm_status_name(gpu__c),   \
              epm_last_error());                                                       \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

#define EPM_CHECK(call)                                                                \
  do {                                                                                 \
    epm_status_t gpu__s = (call);                                                      \
    if (gpu__s != EPM_OK) {                                                            \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call,              \
              epm_status_name(gpu__s), epm_last_error());                              \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

/* cudaMalloc + fill every byte with `poison` (0xFF: NaN for bf16/fp32, -1
 * for ints), so elements a kernel forgets to write are caught. */
void *gpu_alloc_poisoned(size_t bytes, int poison);
void *gpu_upload(const void *host, size_t bytes);
void gpu_download(void *host, const void *dev, size_t bytes);

/* Device fills by the functions of gpu_fill.h. */
void gpu_fill_act_bf16(uint16_t *dev, int64_t rows, int64_t cols, uint64_t seed);
void gpu_fill_logits(float *dev, int64_t rows, int64_t num_experts, uint64_t seed);
/* Random bytes (hash & mask) | orr: E2M1 codes with mask 0xFF, sane E4M3
 * scales with e.g. mask 0x0F | 0x30. */
void gpu_fill_bytes(uint8_t *dev, int64_t n, uint64_t seed, unsigned mask, unsigned orr);

/* Copy a layer's routed expert bank (canonical form) to the device; the
 * layer's input/down-input decode scales go into w as well. */
void gpu_upload_experts(const epm_layer_t *layer, epm_moe_weights_dev_t *w);
void gpu_free_experts(epm_moe_weights_dev_t *w);

/* One whole expert step on the device, stage by stage on the default
 * stream: quantize x -> (packed, sf) = in.hidden_fp4/hidden_sf, routing
 * logits -> in.ids/in.weights, permute, GEMM1, GEMM2, finalize -> out. */
#define GPU_STEP_STAGES 6
typedef struct {
  epm_quantize_plan_t qp;
  epm_routing_plan_t rp;
  epm_moe_plan_t mp;
  const void *x;          /* bf16 [M, H] */
  const float *g;         /* encode scale, device */
  const float *logits;    /* [M, E] */
  const float *bias;      /* [E] or NULL */
  epm_moe_weights_dev_t w;
  epm_moe_inputs_dev_t in; /* written by the quantize and routing stages */
  epm_moe_workspace_t ws;
  int out_f32;
  void *out;
} gpu_step_t;
extern const char *const gpu_step_stage_names[GPU_STEP_STAGES];
/* Run the step once and synchronize; ms[s] = each stage's time (or NULL). */
void gpu_step_run(const gpu_step_t *s, float *ms);

/* Compare out [n] with ref [n] (fp32 values): rel-L2 error, max |diff| and
 * max |ref|; prints one line. Returns the rel-L2 error. */
typedef struct {
  double rel_l2, max_abs, ref_absmax;
  int64_t exact, n, nonfinite;
} gpu_cmp_t;
gpu_cmp_t gpu_compare(const char *what, const float *out, const float *ref, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
