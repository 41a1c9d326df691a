/* SPDX-License-Identifier: Apache-2.0 */
/* tests/gpu/gpu_fill.h — counter-based test data, identical on host and
 * device: element i of a tensor is a pure function of (seed, i), so a test
 * can fill gigabytes on the GPU and recompute only the rows it checks on the
 * host. */
#ifndef EPMOE_TESTS_GPU_FILL_H
#define EPMOE_TESTS_GPU_FILL_H

#include <stdint.h>

#include "nvfp4_core.h"

EPM_HD uint64_t epm_fill_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1) with 24 bits. */
EPM_HD float epm_fill_unit(uint64_t seed, int64_t i) {
  uint64_t h = epm_fill_mix(seed * 0x100000001B3ull ^ (uint64_t)i);
  return (float)(int32_t)(uint32_t)(h >> 32) * 0x1p-31f;
}

/* Activation element (row, col) of a [*, cols] bf16 tensor: magnitudes vary
 * by row over 2^-4 .. 2^2 (times up to 4), and about one 16-block in 61 is all zero. */
EPM_HD uint16_t epm_fill_act_bf16(uint64_t seed, int64_t row, int64_t col, int64_t cols) {
  int64_t i = row * cols + col;
  if (epm_fill_mix(seed ^ 0xABCDull ^ (uint64_t)(i / 16)) % 61u == 0) return 0;
  float mag = (float)(1u << (row % 7)) * 0x1p-4f;
  float u = epm_fill_unit(seed, i);
  return epm_bf16_from_f32(u * u * u * 4.0f * mag);
}

/* Router logit (row, e): roughly N(0, 1)-shaped from three uniforms. */
EPM_HD float epm_fill_logit(uint64_t seed, int64_t row, int64_t e, int64_t num_experts) {
  int64_t i = (row * num_experts + e) * 3;
  return epm_fill_unit(seed, i) + epm_fill_unit(seed, i + 1) + epm_fill_unit(seed, i + 2);
}

#endif
