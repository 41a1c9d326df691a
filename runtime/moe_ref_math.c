/* SPDX-License-Identifier: Apache-2.0 */
/* moe_ref_math.c — the inner loops of the CPU reference: exact NVFP4 decode
 * through a byte table, and dot products with a fixed summation order.
 *
 * Why the products are exact: in the expert GEMMs an operand is e2m1 (2
 * significant bits) times e4m3 (4 bits) and >= 2^-10 in magnitude, so a
 * product has at most 12 significant bits and is >= 2^-20: fused and unfused
 * multiply-add give the same bits and only the sums round. (The router's
 * bf16 x bf16 products are exact too unless they underflow.) The order of the
 * sums is fixed below, so results do not depend on the ISA, the compiler's
 * FMA contraction or the thread count. */
#include "moe_ref_math.h"

#include <pthread.h>
#include <string.h>

#include "epmoe/nvfp4.h"

/* byte -> (value of the low nibble, value of the high nibble) */
static float k_pair[256][2];
static pthread_once_t k_pair_once = PTHREAD_ONCE_INIT;

static void pair_init(void) {
  for (int b = 0; b < 256; b++) {
    k_pair[b][0] = epm_e2m1_to_f32((uint8_t)(b & 0xF));
    k_pair[b][1] = epm_e2m1_to_f32((uint8_t)(b >> 4));
  }
}

void epm__nvfp4_decode_exact(const uint8_t *packed, const uint8_t *sf, int64_t rows, int64_t cols,
                             float *out) {
  pthread_once(&k_pair_once, pair_init);
  const int64_t nb = cols / 16;
  for (int64_t r = 0; r < rows; r++) {
    const uint8_t *p = packed + r * (cols / 2);
    const uint8_t *s = sf + r * nb;
    float *o = out + r * cols;
    for (int64_t k = 0; k < nb; k++) {
      const float scale = epm_e4m3_to_f32(s[k]);
      for (int j = 0; j < 8; j++) {
        const float *v = k_pair[p[k * 8 + j]];
        o[k * 16 + 2 * j] = v[0] * scale;
        o[k * 16 + 2 * j + 1] = v[1] * scale;
      }
    }
  }
}

/* x86-64 builds carry an AVX2 clone of the dot kernels picked at load time
 * (ifunc); AVX2 without FMA, and the products are exact anyway, so every
 * clone gives the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define EPM__SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EPM__SIMD_CLONES
#endif

/* Eight fp32 lanes; on SSE2 the compiler uses two registers, with AVX one. */
typedef float v8f __attribute__((vector_size(32)));

/* Macros, not functions: passing a 32-byte vector by value changes the ABI
 * on x86-64 without AVX (-Wpsabi). memcpy makes the loads alignment-free. */
#define LOAD8(v, p) memcpy(&(v), (p), sizeof(v8f))

static inline float reduce8(const v8f *v) {
  const float *p = (const float *)v;
  return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

EPM__SIMD_CLONES static void dot4(const float *a, const float *w, int64_t ld, int64_t n, float *out) {
  v8f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
  const float *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
  for (int64_t h = 0; h < n; h += 8) {
    v8f av, x0, x1, x2, x3;
    LOAD8(av, a + h);
    LOAD8(x0, w0 + h);
    LOAD8(x1, w1 + h);
    LOAD8(x2, w2 + h);
    LOAD8(x3, w3 + h);
    c0 += av * x0;
    c1 += av * x1;
    c2 += av * x2;
    c3 += av * x3;
  }
  out[0] = reduce8(&c0);
  out[1] = reduce8(&c1);
  out[2] = reduce8(&c2);
  out[3] = reduce8(&c3);
}

EPM__SIMD_CLONES static float dot1(const float *a, const float *w, int64_t n) {
  v8f c = {0};
  for (int64_t h = 0; h < n; h += 8) {
    v8f x, y;
    LOAD8(x, a + h);
    LOAD8(y, w + h);
    c += x * y;
  }
  return reduce8(&c);
}

void epm__dot_rows(const float *a, const float *w, int64_t ld, int64_t nrows, int64_t n, float *out) {
  int64_t r = 0;
  for (; r + 4 <= nrows; r += 4) dot4(a, w + r * ld, ld, n, out + r);
  for (; r < nrows; r++) out[r] = dot1(a, w + r * ld, n);
}

