/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/tokens.h — seeded synthetic inputs of one MoE layer: hidden states and
 * router logits for a GLOBAL token set.
 *
 * Every value is a pure function of (seed, row, column): row t of the global
 * set is the same whichever rank generates it and however the set is split,
 * so `epmoectl step --tokens-per-rank 3,5` and `8,0` solve the same problem
 * and rank 0 can regenerate all rows for the EP=1 check.
 *   x[t, h]      = bf16(N(0, 1))          hidden states, bf16
 *   logits[t, e] = fp32(2 * N(0, 1))      router logits
 * N(0,1) by Box-Muller over a counter-based splitmix64 hash; the streams of x
 * and logits are independent.
 */
#ifndef EPMOE_TOKENS_H
#define EPMOE_TOKENS_H

#include <stdint.h>

#include "epmoe/model.h"
#include "epmoe/nvfp4.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows [first_row, first_row + rows) of the global set. x [rows, H] and
 * logits [rows, E] may each be NULL (not generated). */
epm_status_t epm_tokens_generate(const epm_model_dims_t *dims, uint64_t seed, int64_t first_row,
                                 int64_t rows, epm_bf16_t *x, float *logits);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_TOKENS_H */
