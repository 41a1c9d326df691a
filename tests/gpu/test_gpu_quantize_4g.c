/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_quantize_4g: quantize past M*H = 2^32 elements (600,000 x 7168 =
 * 4,300,800,000): rows on both sides of the 2^32 element boundary and the
 * last rows are bit-identical to the host codec, and every scale byte was
 * written (poison 0xFF is never a valid non-negative scale). */
#include <stdio.h>
#include <stdlib.h>

#include "epmoe/kernels.h"
#include "epmoe/nvfp4.h"
#include "gpu_fill.h"
#include "gpu_util.h"

int main(void) {
  gpu_require_device("test_gpu_quantize_4g");
  const int64_t M = 600000, H = 7168;
  const uint64_t seed = 4242;
  epm_quantize_plan_t p;
  EPM_CHECK(epm_quantize_plan(M, H, EPM_SF_LINEAR, &p));
  uint16_t *dx = gpu_alloc_poisoned(p.x_bytes, 0);
  gpu_fill_act_bf16(dx, M, H, seed);
  const float g = 448.0f * 6.0f / 16.0f;
  float *dg = gpu_upload(&g, sizeof g);
  uint8_t *dq = gpu_alloc_poisoned(p.packed_bytes, 0xFF), *ds = gpu_alloc_poisoned(p.sf_bytes, 0xFF);
  cudaEvent_t a, b;
  GPU_CHECK(cudaEventCreate(&a));
  GPU_CHECK(cudaEventCreate(&b));
  GPU_CHECK(cudaEventRecord(a, 0));
  EPM_CHECK(epm_kernel_quantize_bf16(&p, dx, dg, dq, ds, NULL));
  GPU_CHECK(cudaEventRecord(b, 0));
  GPU_CHECK(cudaDeviceSynchronize());
  float ms = 0;
  GPU_CHECK(cudaEventElapsedTime(&ms, a, b));
  printf("quantize %lld x %lld (%.2f GB bf16) in %.3f ms = %.0f GB/s\n", (long long)M, (long long)H,
         (double)p.x_bytes / 1e9, ms, (double)(p.x_bytes + p.packed_bytes + p.sf_bytes) / (ms * 1e-3) / 1e9);
  int failures = 0;
  uint8_t *sf = malloc(p.sf_bytes);
  gpu_download(sf, ds, p.sf_bytes);
  int64_t unwritten = 0;
  for (size_t i = 0; i < p.sf_bytes; i++) unwritten += sf[i] >= 0x80;
  printf("scale bytes >= 0x80 (unwritten or negative): %lld of %zu\n", (long long)unwritten, p.sf_bytes);
  if (unwritten) failures++;
  const int64_t boundary = (1LL << 32) / H; /* row holding element 2^32 */
  const int64_t rows[] = {0, boundary - 1, boundary, boundary + 1, M / 2, M - 1};
  epm_bf16_t *hx = malloc((size_t)H * 2);
  uint8_t *hq = malloc((size_t)H / 2), *hs = malloc((size_t)H / 16), *gq = malloc((size_t)H / 2);
  int64_t bad = 0;
  for (size_t s = 0; s < sizeof rows / sizeof rows[0]; s++) {
    for (int64_t h = 0; h < H; h++) hx[h] = epm_fill_act_bf16(seed, rows[s], h, H);
    EPM_CHECK(epm_nvfp4_quantize_bf16(hx, 1, H, g, EPM_SF_LINEAR, hq, hs));
    gpu_download(gq, dq + rows[s] * (H / 2), (size_t)H / 2);
    for (int64_t i = 0; i < H / 2; i++) bad += gq[i] != hq[i];
    for (int64_t i = 0; i < H / 16; i++) bad += sf[rows[s] * (H / 16) + i] != hs[i];
  }
  printf("sampled rows incl. %lld..%lld around element 2^32 and row %lld: %lld bytes differ from the codec\n",
         (long long)(boundary - 1), (long long)(boundary + 1), (long long)(M - 1), (long long)bad);
  if (bad) failures++;
  if (failures) return 1;
  printf("test_gpu_quantize_4g: OK\n");
  return 0;
}
