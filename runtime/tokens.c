/* SPDX-License-Identifier: Apache-2.0 */
/* tokens.c — seeded synthetic layer inputs (epmoe/tokens.h). Counter-based,
 * so any row range is generated without generating the rows before it. */
#include "epmoe/tokens.h"

#include <math.h>

#include "epmoe/checked.h"

#define STREAM_X UINT64_C(0x8c4b1b3f5e2d7a91)
#define STREAM_LOGITS UINT64_C(0x3d9a62c4e0b7f153)

static uint64_t mix64(uint64_t z) {
  z += UINT64_C(0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Uniform in (0, 1]: 53 random bits, never 0 (log below). */
static double unit(uint64_t key, uint64_t i) {
  return ((double)(mix64(key ^ mix64(i)) >> 11) + 1.0) * 0x1.0p-53;
}

/* Element i of a N(0,1) stream: Box-Muller on the pair (2*(i/2), +1), using
 * the cosine for even i and the sine for odd i. */
static double normal(uint64_t key, uint64_t i) {
  const uint64_t p = i & ~UINT64_C(1);
  const double r = sqrt(-2.0 * log(unit(key, p))), th = 6.283185307179586 * unit(key, p + 1);
  return (i & 1) ? r * sin(th) : r * cos(th);
}

epm_status_t epm_tokens_generate(const epm_model_dims_t *dims, uint64_t seed, int64_t first_row, int64_t rows,
                                 epm_bf16_t *x, float *logits) {
  int64_t end, nx, nl;
  if (!dims) return epm_error(EPM_ERR_INVALID_ARG, "tokens: NULL dims");
  if (first_row < 0 || rows < 0 || epm_add_i64(first_row, rows, &end) ||
      epm_mul_i64(end, dims->hidden, &nx) || epm_mul_i64(end, dims->num_experts, &nl))
    return epm_error(EPM_ERR_INVALID_ARG, "tokens: rows [%lld, +%lld) x H %lld / E %lld out of range",
                     (long long)first_row, (long long)rows, (long long)dims->hidden,
                     (long long)dims->num_experts);
  const uint64_t kx = mix64(seed ^ STREAM_X), kl = mix64(seed ^ STREAM_LOGITS);
  const int64_t H = dims->hidden, E = dims->num_experts;
  for (int64_t t = 0; t < rows; t++) {
    const uint64_t g = (uint64_t)(first_row + t);
    if (x)
      for (int64_t h = 0; h < H; h++)
        x[t * H + h] = epm_bf16_from_f32((float)normal(kx, g * (uint64_t)H + (uint64_t)h));
    if (logits)
      for (int64_t e = 0; e < E; e++)
        logits[t * E + e] = (float)(2.0 * normal(kl, g * (uint64_t)E + (uint64_t)e));
  }
  return EPM_OK;
}
