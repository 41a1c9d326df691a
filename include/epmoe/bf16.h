/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/bf16.h — the one bfloat16 <-> binary32 conversion of epmoe.
 *
 * Header-only so the host code (C11), the CUDA kernels (__host__ __device__
 * under nvcc) and the tests all run the very same rounding: a second copy
 * that rounds ties or NaNs differently would make GPU and CPU results
 * disagree in the last bit, which the bit-exact tests then blame on the
 * kernels. Rounding is done on the bit pattern with integers, so the result
 * does not depend on the FPU rounding mode, FTZ/DAZ or -ffast-math. Equal to
 * NVIDIA's __float2bfloat16_rn / __bfloat162float on every float
 * (test_bf16_nvidia).
 */
#ifndef EPMOE_BF16_H
#define EPMOE_BF16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t epm_bf16_t; /* raw bfloat16 bits: the upper half of a binary32 */

#ifdef __CUDACC__
#define EPM__BF16_FN static __host__ __device__ __forceinline__
#else
#define EPM__BF16_FN static inline
#endif

EPM__BF16_FN uint32_t epm__bf16_f32_bits(float x) {
#ifdef __CUDA_ARCH__
  return (uint32_t)__float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

EPM__BF16_FN float epm__bf16_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/* Exact: every bf16 is a binary32 with the low 16 bits zero. */
EPM__BF16_FN float epm_bf16_to_f32(epm_bf16_t b) { return epm__bf16_bits_f32((uint32_t)b << 16); }

/* Round to nearest, ties to even; overflow goes to +-Inf. A NaN keeps its
 * sign and top payload bits and gets the quiet bit: truncating a signalling
 * NaN whose payload sits in the low half would otherwise give Inf. */
EPM__BF16_FN epm_bf16_t epm_bf16_from_f32(float x) {
  const uint32_t u = epm__bf16_f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (epm_bf16_t)((u >> 16) | 0x0040u);
  /* Adding 0x7FFF plus the kept lsb carries into the upper half exactly when
   * the low half is above one half, or equal to it with an odd upper half. */
  const uint32_t lsb = (u >> 16) & 1u;
  return (epm_bf16_t)((u + 0x7FFFu + lsb) >> 16);
}

/* x rounded to the nearest bf16 value, kept as fp32. */
EPM__BF16_FN float epm_bf16_round(float x) { return epm_bf16_to_f32(epm_bf16_from_f32(x)); }

#undef EPM__BF16_FN

#endif /* EPMOE_BF16_H */
