/* SPDX-License-Identifier: Apache-2.0 */
/* nvfp4_scalar.c — E2M1 and E4M3 (fn) conversions and the global scale
 * (spec/nvfp4-moe.md §1).
 *
 * Every conversion works on the binary32 bit pattern with integer rounding,
 * so the result does not depend on the FPU rounding mode, FTZ/DAZ or
 * -ffast-math, and equals NVIDIA's host routines bit for bit (checked over all
 * 2^32 floats by test_nvfp4_nvidia_large).
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "epmoe/nvfp4.h"

static inline uint32_t f32_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

static inline float f32_from_bits(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* v >> shift rounded to nearest, ties to even (1 <= shift <= 31). */
static inline uint32_t shr_rne(uint32_t v, unsigned shift) {
  uint32_t q = v >> shift;
  uint32_t rem = v & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return q;
}

/* Round a non-negative finite magnitude (bits `a`, sign cleared) to a
 * multiple of 2^-frac_bits, returned as an integer count of that quantum.
 * Used for the subnormal ranges, where the quantum is fixed; the caller
 * guarantees a < 2^(24 - frac_bits) so the count fits. */
static inline uint32_t round_to_quantum(uint32_t a, int frac_bits) {
  int exp_field = (int)(a >> 23);
  uint32_t mant = a & 0x7FFFFFu;
  if (exp_field != 0) mant |= 0x800000u;
  else exp_field = 1; /* binary32 subnormal: same scale as exponent field 1 */
  /* a = mant * 2^(exp_field - 150); count = a * 2^frac_bits. */
  int shift = 150 - exp_field - frac_bits;
  if (shift <= 0) return mant << (unsigned)(-shift);
  if (shift > 25) return 0; /* < quarter quantum: rounds to 0 */
  return shr_rne(mant, (unsigned)shift);
}

/* ---- E2M1 ---------------------------------------------------------------- */

static const float k_e2m1_values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                        -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

uint8_t epm_e2m1_from_f32(float x) {
  uint32_t u = f32_bits(x);
  uint32_t a = u & 0x7FFFFFFFu;
  uint32_t mag;
  if (a > 0x7F800000u) return 0x0; /* NaN: documented choice (NVIDIA gives 0x7) */
  if (a >= 0x41000000u) {
    mag = 7; /* |x| >= 8 (incl. Inf): saturate to 6 */
  } else if (a < 0x3F800000u) {
    mag = round_to_quantum(a, 1); /* |x| < 1: subnormal quantum 0.5, 2 = 1.0 */
  } else {
    /* 1 <= |x| < 8: rebias exponent 127 -> 1, keep 1 mantissa bit; a carry
     * out of the mantissa moves into the exponent, as it should. */
    mag = shr_rne(a - (126u << 23), 22);
    if (mag > 7) mag = 7;
  }
  if (mag == 0) return 0x0; /* never -0 */
  return (uint8_t)(mag | ((u >> 28) & 0x8u));
}

float epm_e2m1_to_f32(uint8_t code) { return k_e2m1_values[code & 0xF]; }

/* ---- E4M3 (fn) ----------------------------------------------------------- */

uint8_t epm_e4m3_from_f32(float x) {
  uint32_t u = f32_bits(x);
  uint32_t a = u & 0x7FFFFFFFu;
  uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  uint32_t mag;
  if (a > 0x7F800000u) return 0x7F; /* NaN (sign dropped, like cuda_fp8.hpp) */
  if (a >= 0x43E00000u) {
    mag = 0x7E; /* |x| >= 448 (incl. Inf): SATFINITE */
  } else if (a < 0x3C800000u) {
    mag = round_to_quantum(a, 9); /* |x| < 2^-6: subnormal quantum 2^-9; 8 = 2^-6 */
  } else {
    /* 2^-6 <= |x| < 448: rebias 127 -> 7, keep 3 mantissa bits. */
    mag = shr_rne(a - (120u << 23), 20);
    if (mag > 0x7E) mag = 0x7E; /* 464 and up would round to the NaN code */
  }
  return (uint8_t)(mag | sign);
}

float epm_e4m3_to_f32(uint8_t b) {
  uint32_t sign = (uint32_t)(b & 0x80u) << 24;
  uint32_t e = (b >> 3) & 0xFu;
  uint32_t m = b & 0x7u;
  if ((b & 0x7F) == 0x7F) return f32_from_bits(sign | 0x7FC00000u);
  if (e == 0) {
    float v = (float)m * 0x1p-9f; /* exact */
    return (b & 0x80u) ? -v : v;
  }
  return f32_from_bits(sign | ((e + 120u) << 23) | (m << 20));
}

/* ---- global scale -------------------------------------------------------- */

float epm_nvfp4_global_scale(float amax) {
  if (!(amax > 0.0f) || !isfinite(amax)) return 1.0f;
  float g = (EPM_E4M3_MAX * EPM_E2M1_MAX) / amax;
  /* A subnormal amax would give Inf, which poisons every scale downstream. */
  return isfinite(g) ? g : FLT_MAX;
}

float epm_nvfp4_decode_scale(float global_scale) { return 1.0f / global_scale; }
