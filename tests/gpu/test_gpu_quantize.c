/* SPDX-License-Identifier: Apache-2.0 */
/* test_gpu_quantize: the NVFP4 quantize kernel is bit-identical to the host
 * codec (epm_nvfp4_quantize_bf16) on fresh random inputs with zero blocks,
 * -0, NaN, Inf, scale underflow and saturation, in the linear and 128x4
 * layouts (outputs poisoned first, so padding and unwritten bytes show), and
 * passes FlashInfer's quantization vectors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "epmoe/nvfp4.h"
#include "gpu_util.h"
#include "testutil.h"

static int failures;

static void expect(int ok, const char *fmt, const char *what, long long at) {
  if (!ok && failures++ < 20) {
    fprintf(stderr, "FAIL: ");
    fprintf(stderr, fmt, what, at);
    fprintf(stderr, "\n");
  }
}

/* Run the kernel on host x; returns packed + sf (host, malloc'ed). */
static void run_gpu(const epm_bf16_t *x, int64_t rows, int64_t cols, float g, epm_sf_layout_t lay,
                    uint8_t **packed, uint8_t **sf, size_t *sf_bytes) {
  epm_quantize_plan_t p;
  EPM_CHECK(epm_quantize_plan(rows, cols, lay, &p));
  void *dx = gpu_upload(x, p.x_bytes);
  float *dg = gpu_upload(&g, sizeof g);
  void *dp = gpu_alloc_poisoned(p.packed_bytes, 0xFF);
  void *ds = gpu_alloc_poisoned(p.sf_bytes, 0xFF);
  EPM_CHECK(epm_kernel_quantize_bf16(&p, dx, dg, dp, ds, NULL));
  GPU_CHECK(cudaDeviceSynchronize());
  *packed = malloc(p.packed_bytes);
  *sf = malloc(p.sf_bytes);
  *sf_bytes = p.sf_bytes;
  gpu_download(*packed, dp, p.packed_bytes);
  gpu_download(*sf, ds, p.sf_bytes);
  GPU_CHECK(cudaFree(dx));
  GPU_CHECK(cudaFree(dg));
  GPU_CHECK(cudaFree(dp));
  GPU_CHECK(cudaFree(ds));
}

static void random_case(int64_t rows, int64_t cols, uint64_t seed, int scale_one) {
  epm_test_rng_t rng = {seed};
  epm_bf16_t *x = malloc((size_t)(rows * cols) * sizeof *x);
  for (int64_t r = 0; r < rows; r++) {
    float mag = powf(2.0f, (float)(epm_test_rng_u64(&rng) % 40) - 20.0f);
    for (int64_t c = 0; c < cols; c++) x[r * cols + c] = epm_bf16_from_f32(epm_test_rng_normal(&rng) * mag);
    if (epm_test_rng_u64(&rng) % 5 == 0) /* a zero or -0 block */
      for (int64_t c = 0; c < 16; c++) x[r * cols + c] = (epm_bf16_t)((r & 1) ? 0x8000 : 0);
  }
  if (rows > 3) {
    x[1 * cols + 3] = 0x7FC0; /* NaN */
    x[2 * cols + 5] = 0x7F80; /* +Inf */
    x[3 * cols + 7] = 0xFF80; /* -Inf */
  }
  float amax = 0.0f;
  for (int64_t i = 0; i < rows * cols; i++) {
    float v = fabsf(epm_bf16_to_f32(x[i]));
    if (isfinite(v) && v > amax) amax = v;
  }
  /* below the true amax on purpose: some blocks saturate at 448 / code 6 */
  float g = scale_one ? 1.0f : epm_nvfp4_global_scale(amax * 0.5f);
  for (int swz = 0; swz < 2; swz++) {
    epm_sf_layout_t lay = swz ? EPM_SF_SWIZZLED_128X4 : EPM_SF_LINEAR;
    size_t sfb = 0, pb = (size_t)(rows * cols / 2);
    EPM_CHECK(epm_nvfp4_sf_bytes(rows, cols, lay, &sfb));
    uint8_t *hp = malloc(pb), *hs = malloc(sfb), *gp, *gs;
    size_t gsb;
    EPM_CHECK(epm_nvfp4_quantize_bf16(x, rows, cols, g, lay, hp, hs));
    run_gpu(x, rows, cols, g, lay, &gp, &gs, &gsb);
    int64_t bad_p = 0, bad_s = 0;
    for (size_t i = 0; i < pb; i++) bad_p += gp[i] != hp[i];
    for (size_t i = 0; i < sfb; i++) bad_s += gs[i] != hs[i];
    printf("quantize %lld x %lld g=%g %s: %lld/%zu packed bytes and %lld/%zu scale bytes differ\n",
           (long long)rows, (long long)cols, (double)g, swz ? "128x4" : "linear", (long long)bad_p, pb,
           (long long)bad_s, sfb);
    expect(bad_p == 0 && bad_s == 0, "%s: %lld bytes differ from the codec", "quantize", bad_p + bad_s);
    free(hp);
    free(hs);
    free(gp);
    free(gs);
  }
  free(x);
}

/* FlashInfer's quant_* vectors, shapes from the bundle's manifest. */
static void flashinfer_case(void) {
  epm_bundle_quant_t q;
  epm_ref_array_t x = {0}, packed = {0}, sfl = {0}, sfs = {0};
  float g;
  if (epm_bundle_quant(&q)) {
    expect(0, "%s: cannot read the bundle's quant parameters (%lld)", "quantize", 0);
    return;
  }
  const int64_t rows = q.rows, cols = q.cols;
  if (epm_ref_load_as("quant_x", "bfloat16", 2, (int64_t[]){rows, cols}, &x) ||
      epm_ref_load_as("quant_packed", "uint8", 2, (int64_t[]){rows, cols / 2}, &packed) ||
      epm_ref_load_as("quant_sf_linear", "uint8", 2, (int64_t[]){rows, cols / 16}, &sfl) ||
      epm_ref_load_as("quant_sf_swizzled", "uint8", 1, (int64_t[]){EPM_REF_ANY}, &sfs) ||
      epm_ref_scalar_f32("quant_global_scale", &g)) {
    expect(0, "%s: cannot load FlashInfer vectors (%lld)", "quantize", 0);
    epm_ref_free(&x);
    epm_ref_free(&packed);
    epm_ref_free(&sfl);
    epm_ref_free(&sfs);
    return;
  }
  for (int swz = 0; swz < 2; swz++) {
    uint8_t *gp, *gs;
    size_t gsb;
    run_gpu(x.data, rows, cols, g, swz ? EPM_SF_SWIZZLED_128X4 : EPM_SF_LINEAR, &gp, &gs, &gsb);
    const uint8_t *want_sf = swz ? sfs.data : sfl.data;
    expect(gsb == (size_t)(swz ? sfs.nbytes : sfl.nbytes), "%s: scale size differs (%lld)", "flashinfer", (long long)gsb);
    int64_t bad = 0;
    for (size_t i = 0; i < gsb; i++) bad += gs[i] != want_sf[i];
    expect(bad == 0, "%s: %lld scale bytes differ", "flashinfer", bad);
    const uint8_t *wp = packed.data, *wl = sfl.data;
    bad = 0;
    for (int64_t i = 0; i < rows * cols / 2; i++) {
      if (wl[i / 8] == 0) continue; /* payload of a zero-scale block is don't-care */
      for (int h = 0; h < 2; h++) {
        int a = (gp[i] >> (4 * h)) & 0xF, b = (wp[i] >> (4 * h)) & 0xF;
        bad += (a == 8 ? 0 : a) != (b == 8 ? 0 : b);
      }
    }
    printf("flashinfer quant_* [%lld, %lld] %s: %lld codes differ\n", (long long)rows, (long long)cols,
           swz ? "128x4" : "linear", (long long)bad);
    expect(bad == 0, "%s: %lld codes differ", "flashinfer", bad);
    free(gp);
    free(gs);
  }
  epm_ref_free(&x);
  epm_ref_free(&packed);
  epm_ref_free(&sfl);
  epm_ref_free(&sfs);
}

int main(void) {
  gpu_require_device("test_gpu_quantize");
  random_case(1000, 512, 1, 0);
  random_case(333, 208, 2, 0); /* 13 scale columns: swizzle pads rows and columns */
  random_case(129, 7168, 3, 0);
  random_case(77, 64, 4, 1); /* G = 1: small blocks underflow to scale 0 */
  random_case(1, 16, 5, 0);
  flashinfer_case();
  { /* a misaligned input is refused with the pointer named, nothing launched */
    epm_quantize_plan_t p;
    EPM_CHECK(epm_quantize_plan(1, 16, EPM_SF_LINEAR, &p));
    uint8_t *buf = gpu_alloc_poisoned(64, 0);
    float *dg = gpu_alloc_poisoned(4, 0);
    epm_status_t st = epm_kernel_quantize_bf16(&p, buf + 2, dg, buf + 32, buf + 48, NULL);
    printf("misaligned x: %s: %s\n", epm_status_name(st), epm_last_error());
    expect(st == EPM_ERR_INVALID_ARG && strstr(epm_last_error(), "x_dev") != NULL,
           "%s: misaligned input not refused (%lld)", "quantize", (long long)st);
    GPU_CHECK(cudaFree(buf));
    GPU_CHECK(cudaFree(dg));
  }
  if (failures) {
    fprintf(stderr, "test_gpu_quantize: %d failures\n", failures);
    return 1;
  }
  printf("test_gpu_quantize: max error vs codec = 0 (bit-identical)\n");
  return 0;
}
