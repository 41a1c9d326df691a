/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/routing.h — top-k expert selection from router logits (spec/nvfp4-moe.md §4).
 *
 * Methods are chosen by name (epm_routing_method_t in model.h), never by the
 * FlashInfer or vLLM integer. For one token with logits l[0..E):
 *
 *   default            p = softmax(l); select top-k of l;      w = p (no renorm)
 *   renormalize        select top-k of l;                      w = softmax over the k selected l
 *   renormalize-naive  p = softmax(l); select top-k of l;      w = p / sum of the k selected p
 *   deepseek-v3        s = sigmoid(l) (fp32), b = s + bias (fp32 add).
 *                      n_group > 1: group score = sum of the two largest b of each group of
 *                      E/n_group experts; keep the topk_group best groups; select top-k of b
 *                      among the experts of kept groups only (dropped groups never compete,
 *                      as the FlashInfer kernel's -inf masking);
 *                      w = s / (sum of the k selected s + 1e-20) * routed_scaling_factor
 *   llama4             k must be 1; select argmax l;           w = sigmoid(l)
 *   topk               select top-k of l;                      w = l
 *
 * Determinism and ties: selection compares (score, expert index): a larger
 * score wins, equal scores go to the LOWER expert index (group selection
 * likewise by group index). The k outputs of a token are then ordered by
 * DESCENDING FINAL WEIGHT, equal weights by ascending expert index: this is
 * FlashInfer's reference order (torch.topk over the dense weight matrix). For
 * deepseek-v3 it is the order of the unbiased sigmoid, not of the biased
 * selection score. Selecting on the logit (not the rounded probability) keeps
 * default/renormalize-naive selections exact when probabilities tie in fp32.
 *
 * Precision: softmax and its sums are evaluated in double and rounded once to
 * fp32; sigmoid is computed in double and rounded to fp32 before anything uses
 * it (so a sigmoid that underflows in fp32 is exactly 0, and the deepseek-v3
 * epsilon makes the weights 0 instead of 0/0 NaN). The routed scaling factor
 * is applied here, exactly once, for deepseek-v3 only; nothing else applies it.
 *
 * Logits must be finite (NaN/Inf are rejected with the token and expert
 * named). The bias is read as given (fp32); checkpoints hold bf16-exact
 * values, and FlashInfer's kernel reads it as bf16.
 *
 * Thread safety: all functions are pure; buffers are caller-owned and only
 * used during the call.
 */
#ifndef EPMOE_ROUTING_H
#define EPMOE_ROUTING_H

#include <stdint.h>

#include "epmoe/model.h"
#include "epmoe/nvfp4.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  epm_routing_method_t method;
  int64_t num_experts;         /* E (global), 1 .. EPM_ROUTING_MAX_EXPERTS */
  int64_t top_k;               /* 1 .. E (llama4: exactly 1) */
  int64_t n_group;             /* deepseek-v3: groups (0 or 1 = no grouping); ignored otherwise */
  int64_t topk_group;          /* deepseek-v3 with n_group > 1: groups kept, 1 .. n_group */
  float routed_scaling_factor; /* deepseek-v3 only: finite, > 0 (1.0 = none) */
} epm_routing_config_t;

/* Largest E this reference accepts (a sanity bound on the per-token scratch;
 * FlashInfer's routing kernels stop at 512). */
#define EPM_ROUTING_MAX_EXPERTS 65536

/* The routing configuration of a model preset / checkpoint dims. */
epm_status_t epm_routing_config_from_dims(const epm_model_dims_t *dims, epm_routing_config_t *out);

/* Check every limit the math needs: method known, 1 <= E <= MAX, 1 <= top_k <= E,
 * llama4 top_k == 1, deepseek-v3: n_group >= 0, E % n_group == 0, E/n_group >= 2
 * (top-2 group score), 1 <= topk_group <= n_group, top_k <= topk_group * E/n_group
 * (enough experts in the kept groups), routed_scaling_factor finite and > 0.
 * The error message names the field, its value and the limit. */
epm_status_t epm_routing_validate(const epm_routing_config_t *cfg);

/* The extra limits of FlashInfer's trtllm routing kernels (spec §3.2 items 7,
 * 10, 11), for callers that must stay inside what that kernel accepts:
 * deepseek-v3: 32 <= E <= 512, E % 4 == 0, top_k <= 22, n_group <= 8,
 * E/n_group <= 32, topk_group <= 4. Implies epm_routing_validate(). */
epm_status_t epm_routing_validate_flashinfer(const epm_routing_config_t *cfg);

/* Route m tokens (m >= 0; 0 is a no-op).
 *   logits        [in]  [m, E] fp32 (or raw bf16 bits for the _bf16 variant, widened exactly)
 *   bias          [in]  [E] fp32 correction bias for deepseek-v3, or NULL (= zeros);
 *                       must be NULL or finite; ignored by the other methods
 *   ids           [out] [m, top_k] int32 global expert ids, order as described above
 *   weights       [out] [m, top_k] fp32 final weights, same order
 *   weights_bf16  [out] [m, top_k] the weights rounded to bf16 (RNE), as the
 *                       kernels consume them; may be NULL
 * Validates cfg first. Outputs are written only on success. */
epm_status_t epm_route_f32(const epm_routing_config_t *cfg, const float *logits, const float *bias,
                           int64_t m, int32_t *ids, float *weights, epm_bf16_t *weights_bf16);
epm_status_t epm_route_bf16(const epm_routing_config_t *cfg, const epm_bf16_t *logits,
                            const float *bias, int64_t m, int32_t *ids, float *weights,
                            epm_bf16_t *weights_bf16);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_ROUTING_H */
