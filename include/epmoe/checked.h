/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/checked.h — overflow-checked 64-bit size arithmetic.
 *
 * Every product of dimensions in epmoe goes through these helpers (or is
 * widened to int64_t/size_t before multiplying). They return 0 on success and
 * non-zero on overflow or a negative input, leaving *out untouched on failure.
 */
#ifndef EPMOE_CHECKED_H
#define EPMOE_CHECKED_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline int epm_mul_i64(int64_t a, int64_t b, int64_t *out) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) return 1;
  *out = r;
  return 0;
}
static inline int epm_add_i64(int64_t a, int64_t b, int64_t *out) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) return 1;
  *out = r;
  return 0;
}
static inline int epm_mul3_i64(int64_t a, int64_t b, int64_t c, int64_t *out) {
  int64_t ab;
  return epm_mul_i64(a, b, &ab) || epm_mul_i64(ab, c, out);
}
static inline int epm_mul_size(size_t a, size_t b, size_t *out) {
  size_t r;
  if (__builtin_mul_overflow(a, b, &r)) return 1;
  *out = r;
  return 0;
}
static inline int epm_add_size(size_t a, size_t b, size_t *out) {
  size_t r;
  if (__builtin_add_overflow(a, b, &r)) return 1;
  *out = r;
  return 0;
}
/* Round n (>= 0) up to a multiple of m (> 0). */
static inline int epm_round_up_i64(int64_t n, int64_t m, int64_t *out) {
  int64_t r;
  if (n < 0 || m <= 0 || __builtin_add_overflow(n, m - 1, &r)) return 1;
  *out = (r / m) * m;
  return 0;
}
/* ceil(n / d) for n >= 0, d > 0; no intermediate n + d - 1, so no overflow near INT64_MAX. */
static inline int64_t epm_ceil_div_i64(int64_t n, int64_t d) { return n / d + (n % d != 0); }

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_CHECKED_H */
