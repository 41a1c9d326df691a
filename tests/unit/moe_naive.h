/* SPDX-License-Identifier: Apache-2.0 */
/* moe_naive.h — a deliberately plain float64 evaluation of one MoE expert
 * slot, written for the tests only. It shares no code with runtime/: its own
 * E2M1/E4M3/bf16 decoders and rounding (by search and nearbyint, not bit
 * tricks), its own NVFP4 re-quantization of the intermediate, and double
 * accumulation everywhere. */
#ifndef EPMOE_TEST_MOE_NAIVE_H
#define EPMOE_TEST_MOE_NAIVE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static double nv_e2m1(uint8_t c) {
  static const double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  double v = mag[c & 7];
  return (c & 8) ? -v : v;
}

/* E4M3 (fn): bias 7, subnormals m * 2^-9 */
static double nv_e4m3(uint8_t b) {
  int e = (b >> 3) & 15, m = b & 7;
  double v = e == 0 ? ldexp((double)m, -9) : ldexp(8.0 + m, e - 10);
  return (b & 0x80) ? -v : v;
}

/* nearest representable E4M3 >= 0 (RNE, saturating at 448) */
static double nv_round_e4m3(double v) {
  if (v >= 448.0) return 448.0;
  if (v <= 0.0) return 0.0;
  int e = (int)floor(log2(v));
  double quantum = e < -6 ? ldexp(1.0, -9) : ldexp(1.0, e - 3);
  double r = nearbyint(v / quantum) * quantum;
  return r > 448.0 ? 448.0 : r;
}

/* nearest E2M1 value, ties to the even code, saturating at 6 */
static double nv_round_e2m1(double x) {
  static const double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  double a = fabs(x), best = 0.0, bd = INFINITY;
  int bi = 0;
  for (int i = 0; i < 8; i++) {
    double d = fabs(a - mag[i]);
    if (d < bd || (d == bd && (i % 2) == 0 && (bi % 2) != 0)) {
      bd = d;
      bi = i;
      best = mag[i];
    }
  }
  return x < 0 ? -best : best;
}

/* round to bf16 (via fp32, round-half-even on the 16 dropped bits) */
static double nv_bf16(double x) {
  float f = (float)x;
  if (f == 0.0f || !isfinite(f)) return f;
  int e;
  double m = frexp((double)f, &e);             /* f = m * 2^e, 0.5 <= |m| < 1 */
  double scaled = ldexp(m, 8);                 /* 8 significant bits */
  return ldexp(nearbyint(scaled), e - 8);
}

typedef struct {
  int64_t H, I;
  const uint8_t *gw, *gs, *uw, *us, *dw, *ds; /* this expert's tensors */
  double ws13, ws2;                           /* weight_scale_2 */
} nv_expert_t;

/* y[H] = one expert on one NVFP4 token row (x packed, sf linear, decode a1),
 * intermediate re-quantized with encode scale g_mid and decoded with
 * fp32(1/g_mid); y rounded to bf16 when y_bf16. */
static void nv_expert(const nv_expert_t *ex, const uint8_t *x, const uint8_t *xs, double a1, double g_mid,
                      int y_bf16, double *y, double *scratch /* [H + 2I] */) {
  const int64_t H = ex->H, I = ex->I;
  double *a = scratch, *h = scratch + H;
  for (int64_t j = 0; j < H; j++) {
    uint8_t c = (uint8_t)((j % 2) ? x[j / 2] >> 4 : x[j / 2] & 15);
    a[j] = nv_e2m1(c) * nv_e4m3(xs[j / 16]) * a1;
  }
  for (int64_t i = 0; i < I; i++) {
    double g = 0, u = 0;
    for (int64_t j = 0; j < H; j++) {
      const int64_t o = i * H + j;
      uint8_t cg = (uint8_t)((o % 2) ? ex->gw[o / 2] >> 4 : ex->gw[o / 2] & 15);
      uint8_t cu = (uint8_t)((o % 2) ? ex->uw[o / 2] >> 4 : ex->uw[o / 2] & 15);
      g += a[j] * nv_e2m1(cg) * nv_e4m3(ex->gs[o / 16]) * ex->ws13;
      u += a[j] * nv_e2m1(cu) * nv_e4m3(ex->us[o / 16]) * ex->ws13;
    }
    h[i] = nv_bf16(g / (1.0 + exp(-g)) * u);
  }
  /* NVFP4 re-quantization of h, block by block, in the fp32 steps of spec
   * §1.4 (the recipe is defined in fp32: near an E2M1 tie the rounded
   * reciprocal decides, so double math would pick the other code) */
  const float gf = (float)g_mid, ginv = 1.0f / gf, sixth = 1.0f / 6.0f;
  for (int64_t b = 0; b < I / 16; b++) {
    float vmax = 0;
    for (int j = 0; j < 16; j++) vmax = fmaxf(vmax, fabsf((float)h[b * 16 + j]));
    const float sf = (float)nv_round_e4m3((double)(gf * (vmax * sixth)));
    const float sc = sf == 0.0f ? 0.0f : 1.0f / (sf * ginv);
    for (int j = 0; j < 16; j++) {
      float v = (float)h[b * 16 + j] * sc;
      v = v > 6.0f ? 6.0f : (v < -6.0f ? -6.0f : v);
      h[b * 16 + j] = nv_round_e2m1(v) * (double)(sf * ginv);
    }
  }
  for (int64_t n = 0; n < H; n++) {
    double s = 0;
    for (int64_t i = 0; i < I; i++) {
      const int64_t o = n * I + i;
      uint8_t c = (uint8_t)((o % 2) ? ex->dw[o / 2] >> 4 : ex->dw[o / 2] & 15);
      s += h[i] * nv_e2m1(c) * nv_e4m3(ex->ds[o / 16]) * ex->ws2;
    }
    y[n] = y_bf16 ? nv_bf16(s) : s;
  }
}

static double nv_rel_l2(const double *ref, const float *got, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
