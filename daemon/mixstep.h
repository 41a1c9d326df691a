/* mixstep.h — the closed form of the "mix" stand-in step (srv_step_builtin.c)
 * and its reference, shared by the daemon and `epmoectl forward --check`.
 *
 * Over the global token set (all ranks, rank order), M tokens:
 *   mean[h] = (1/max(M,1)) * sum_t x[t][h]           (needs every rank's tokens)
 *   gate[t] = 1 / (1 + exp(-max_e logits[t][e]))      (needs the router logits)
 *   y[t][h] = bf16(x[t][h] * gate[t] + mean[h])
 * The sum is accumulated in double, so the result does not depend on how the
 * tokens are split across ranks except for the order of additions (far below
 * bf16 resolution). It is NOT the MoE layer; it exists so that the daemon can
 * be tested end to end before / without the step engine.
 */
#ifndef EPMOE_MIXSTEP_H
#define EPMOE_MIXSTEP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float epm__mix_bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint16_t epm__mix_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
  return (uint16_t)(u >> 16);
}

/* Add this chunk's column sums into sum[H] (double). */
static inline void epm_mix_colsum(const uint16_t *x, int64_t m, int64_t hidden, double *sum) {
  for (int64_t t = 0; t < m; t++)
    for (int64_t h = 0; h < hidden; h++) sum[h] += epm__mix_bf16_to_f32(x[t * hidden + h]);
}

/* y for m local tokens given the global column sums and token count. */
static inline void epm_mix_apply(const uint16_t *x, const float *logits, int64_t m, int64_t hidden,
                                 int64_t experts, const double *sum, int64_t total_m, uint16_t *y) {
  double inv = 1.0 / (double)(total_m > 0 ? total_m : 1);
  for (int64_t t = 0; t < m; t++) {
    float mx = logits[t * experts];
    for (int64_t e = 1; e < experts; e++)
      if (logits[t * experts + e] > mx) mx = logits[t * experts + e];
    double gate = 1.0 / (1.0 + exp(-(double)mx));
    for (int64_t h = 0; h < hidden; h++)
      y[t * hidden + h] =
          epm__mix_f32_to_bf16((float)(epm__mix_bf16_to_f32(x[t * hidden + h]) * gate + sum[h] * inv));
  }
}

#endif
