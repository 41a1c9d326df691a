/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_elementwise: the bf16 <-> fp32 and shared-combine kernels are
 * bit-identical to the host codec (epm_bf16_from_f32 / epm_bf16_to_f32) on
 * random fp32 bit patterns (every class: NaN, Inf, subnormals, -0, RNE
 * ties) and on hand-picked edge values; outputs poisoned first, and an odd
 * n so the grid-stride tail is exercised. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/nvfp4.h"
#include "gpu_util.h"
#include "testutil.h"

static int failures;

static void expect_bits(uint32_t got, uint32_t want, const char *what, int64_t i) {
  if (got != want && failures++ < 20)
    fprintf(stderr, "FAIL: %s[%lld] = 0x%08x, host 0x%08x\n", what, (long long)i, got, want);
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

int main(void) {
  gpu_require_device("test_gpu_elementwise");
  const int64_t n = 1000003;
  const uint32_t edges[] = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u,
                            0xFF812345u, 0x00000001u, 0x807FFFFFu, 0x3F808000u, 0x3F818000u, 0x3F808001u,
                            0x7F7FFFFFu, 0x7F7F8000u, 0xC0490FDBu, 0x0000FFFFu};
  const size_t n_edges = sizeof edges / sizeof edges[0];
  epm_test_rng_t rng = {42};
  uint32_t *yb = malloc((size_t)n * 4), *out32 = malloc((size_t)n * 4);
  uint16_t *sb = malloc((size_t)n * 2), *out16 = malloc((size_t)n * 2);
  if (!yb || !out32 || !sb || !out16) return 1;
  for (int64_t i = 0; i < n; i++) {
    uint64_t r = epm_test_rng_u64(&rng);
    yb[i] = (size_t)i < n_edges ? edges[i] : (uint32_t)r;
    sb[i] = (uint16_t)((size_t)i < n_edges ? edges[n_edges - 1 - (size_t)i] >> 16 : r >> 40);
  }
  float *dy = gpu_upload(yb, (size_t)n * 4);
  void *ds = gpu_upload(sb, (size_t)n * 2);
  float *d32 = gpu_alloc_poisoned((size_t)n * 4, 0xA5);
  void *d16 = gpu_alloc_poisoned((size_t)n * 2, 0xA5);

  EPM_CHECK(epm_kernel_f32_to_bf16(dy, n, d16, NULL));
  EPM_CHECK(epm_kernel_bf16_to_f32(ds, n, d32, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  gpu_download(out16, d16, (size_t)n * 2);
  gpu_download(out32, d32, (size_t)n * 4);
  for (int64_t i = 0; i < n; i++) {
    float f;
    memcpy(&f, &yb[i], sizeof f);
    expect_bits(out16[i], epm_bf16_from_f32(f), "f32_to_bf16", i);
    expect_bits(out32[i], f32_bits(epm_bf16_to_f32(sb[i])), "bf16_to_f32", i);
  }

  EPM_CHECK(epm_kernel_shared_combine(dy, ds, n, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  gpu_download(out32, dy, (size_t)n * 4);
  for (int64_t i = 0; i < n; i++) {
    float f;
    memcpy(&f, &yb[i], sizeof f);
    const float want = epm_bf16_to_f32(epm_bf16_from_f32(f)) + epm_bf16_to_f32(sb[i]);
    const uint32_t w = f32_bits(want), g = out32[i];
    /* NaN payloads of a NaN + x sum are not specified by IEEE; any NaN is right. */
    if (want != want) {
      if (((g & 0x7FFFFFFFu) <= 0x7F800000u) && failures++ < 20)
        fprintf(stderr, "FAIL: shared_combine[%lld] = 0x%08x, host NaN\n", (long long)i, g);
    } else {
      expect_bits(g, w, "shared_combine", i);
    }
  }

  /* n = 0 launches nothing; negative n is refused. */
  EPM_CHECK(epm_kernel_bf16_to_f32(ds, 0, d32, NULL));
  if (epm_kernel_f32_to_bf16(dy, -1, d16, NULL) != EPM_ERR_INVALID_ARG && failures++ < 20)
    fprintf(stderr, "FAIL: n = -1 accepted\n");
  GPU_CHECK(cudaFree(dy));
  GPU_CHECK(cudaFree(ds));
  GPU_CHECK(cudaFree(d32));
  GPU_CHECK(cudaFree(d16));
  free(yb);
  free(out32);
  free(sb);
  free(out16);
  if (failures) {
    fprintf(stderr, "test_gpu_elementwise: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_gpu_elementwise: OK (%lld values)\n", (long long)n);
  return 0;
}
