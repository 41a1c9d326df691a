/* testutil.c — the test RNG (see testutil.h; the bundle reader is bundle.c). */
#include "testutil.h"

#include <math.h>

uint64_t epm_test_rng_u64(epm_test_rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float epm_test_rng_uniform(epm_test_rng_t *r) {
  return (float)(epm_test_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

float epm_test_rng_normal(epm_test_rng_t *r) {
  float u1 = epm_test_rng_uniform(r), u2 = epm_test_rng_uniform(r);
  if (u1 < 1e-7f) u1 = 1e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}
