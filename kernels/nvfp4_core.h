/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/nvfp4_core.h — NVFP4 scalar math shared by the CUDA kernels and
 * their host tests (private to kernels/ and tests/).
 *
 * Written once as inline functions that compile as C11 on the host and as
 * __host__ __device__ under nvcc, so the CPU test suite can prove them
 * bit-identical to the codec (include/epmoe/nvfp4.h) without a GPU; the
 * kernels then run the very same code. Hopper has no cvt.*.e2m1x2, so E2M1
 * rounding is done by comparisons (exactly the RNE decision boundaries of
 * spec/nvfp4-moe.md §1.1); E4M3 rounding is done on the float bits.
 *
 * Only multiplies and one IEEE division appear in the quantize recipe, so
 * nvcc's FMA contraction cannot change a result.
 */
#ifndef EPMOE_KERNELS_NVFP4_CORE_H
#define EPMOE_KERNELS_NVFP4_CORE_H

#include <stdint.h>
#include <string.h>

#include "epmoe/bf16.h" /* bf16 <-> fp32: the one conversion, host and device */

#ifdef __CUDACC__
#define EPM_HD __host__ __device__ __forceinline__
#else
#define EPM_HD static inline
#endif

EPM_HD uint32_t epm_core_f32_bits(float x) {
#ifdef __CUDA_ARCH__
  return (uint32_t)__float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

EPM_HD float epm_core_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/* E2M1 magnitude of code & 7. */
EPM_HD float epm_core_e2m1_mag(uint32_t code) {
  /* 0, .5, 1, 1.5, 2, 3, 4, 6 without a table (device-friendly). */
  uint32_t c = code & 7u;
  if (c < 4u) return 0.5f * (float)c;
  return (float)(2u << ((c - 4u) >> 1)) * ((c & 1u) ? 1.5f : 1.0f);
}

EPM_HD float epm_core_e2m1_to_f32(uint32_t code) {
  float m = epm_core_e2m1_mag(code);
  return (code & 8u) ? -m : m;
}

/* E2M1 round-to-nearest-even, saturating at 6. NaN, -0 and anything that
 * rounds to zero give 0x0 (never 0x8), as epm_e2m1_from_f32. */
EPM_HD uint8_t epm_core_e2m1_from_f32(float x) {
  if (x != x) return 0;
  float a = x < 0.0f ? -x : x;
  uint8_t c;
  if (a <= 0.25f) c = 0;
  else if (a < 0.75f) c = 1;
  else if (a <= 1.25f) c = 2;
  else if (a < 1.75f) c = 3;
  else if (a <= 2.5f) c = 4;
  else if (a < 3.5f) c = 5;
  else if (a <= 5.0f) c = 6;
  else c = 7;
  return (uint8_t)((x < 0.0f && c != 0) ? (c | 8u) : c);
}

/* E4M3 (fn) round-to-nearest-even, saturating to +-448; NaN -> 0x7F. */
EPM_HD uint8_t epm_core_e4m3_from_f32(float x) {
  uint32_t u = epm_core_f32_bits(x);
  uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;
  if (a >= 0x43E00000u) return (uint8_t)(sign | 0x7E); /* >= 448: saturate */
  if (a < 0x3C800000u) {                                /* < 2^-6: subnormal step 2^-9 */
    /* a * 2^9 is exact; round half to even on the integer part. */
    float s = epm_core_bits_f32(a) * 512.0f;
    uint32_t q = (uint32_t)s;
    float frac = s - (float)q;
    if (frac > 0.5f || (frac == 0.5f && (q & 1u))) q++;
    return (uint8_t)(sign | q); /* q == 8 is the smallest normal 0x08 */
  }
  /* Normal: keep 3 mantissa bits, RNE on the 20 dropped bits. */
  uint32_t r = a + 0x7FFFFu + ((a >> 20) & 1u);
  uint32_t e = (r >> 23) - 127u + 7u; /* >= 1 here */
  uint32_t code = (e << 3) | ((r >> 20) & 7u);
  if (code > 0x7Eu) code = 0x7E; /* 464 <= a < 480 rounds to 480 = NaN: saturate */
  return (uint8_t)(sign | code);
}

EPM_HD float epm_core_e4m3_to_f32(uint8_t b) {
  uint32_t e = (b >> 3) & 15u, m = b & 7u;
  float mag;
  if ((b & 0x7Fu) == 0x7Fu) return epm_core_bits_f32(0x7FC00000u);
  if (e == 0) mag = (float)m * (1.0f / 512.0f);
  else mag = epm_core_bits_f32(((e + 120u) << 23) | (m << 20));
  return (b & 0x80u) ? -mag : mag;
}

/* Block scale of a block with max |x| = vmax under encode scale g:
 * e4m3(g * fp32(vmax * fp32(1/6))), spec §1.4. */
EPM_HD uint8_t epm_core_block_sf(float vmax, float g) {
  return epm_core_e4m3_from_f32(g * (vmax * (1.0f / 6.0f)));
}

/* Element multiplier of a block with scale byte sf: 1 / (sf * fp32(1/g)),
 * exact IEEE division; 0 when the scale is 0. */
EPM_HD float epm_core_block_mul(uint8_t sf, float g) {
  float s = epm_core_e4m3_to_f32(sf);
  return s == 0.0f ? 0.0f : 1.0f / (s * (1.0f / g));
}

EPM_HD uint8_t epm_core_e2m1_scaled(float x, float mul) {
  float v = x * mul;
  v = v > 6.0f ? 6.0f : (v < -6.0f ? -6.0f : v);
  return epm_core_e2m1_from_f32(v);
}

/* max |x| ignoring NaN (a NaN compares false and never wins). */
EPM_HD float epm_core_absmax_step(float m, float x) {
  float a = x < 0.0f ? -x : x;
  return a > m ? a : m;
}

/* Quantize one block of 16 fp32 values (already bf16-exact where the caller
 * needs it): 8 packed bytes, returns the scale byte. */
EPM_HD uint8_t epm_core_quantize_block(const float *x, float g, uint8_t *packed8) {
  float vmax = 0.0f;
  for (int i = 0; i < 16; i++) vmax = epm_core_absmax_step(vmax, x[i]);
  uint8_t sf = epm_core_block_sf(vmax, g);
  float mul = epm_core_block_mul(sf, g);
  for (int j = 0; j < 8; j++) {
    uint8_t lo = epm_core_e2m1_scaled(x[2 * j], mul);
    uint8_t hi = epm_core_e2m1_scaled(x[2 * j + 1], mul);
    packed8[j] = (uint8_t)(lo | (hi << 4));
  }
  return sf;
}

/* Byte offset of scale (m, k) in the 128x4 layout, n_sf_cols = cols/16. */
EPM_HD int64_t epm_core_sf_offset_128x4(int64_t m, int64_t k, int64_t n_sf_cols) {
  int64_t n_kt = (n_sf_cols + 3) / 4;
  return (m / 128) * (n_kt * 512) + (k / 4) * 512 + (m % 32) * 16 + ((m % 128) / 32) * 4 + (k % 4);
}

#endif /* EPMOE_KERNELS_NVFP4_CORE_H */
