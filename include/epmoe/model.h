/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/model.h — model dimensions of one MoE layer and the named presets.
 *
 * Presets are the shapes users run (deepseek-r1, qwen3-235b, llama4-maverick)
 * plus `tiny` for tests and the quick start. Routing methods are named, never
 * numbered (FlashInfer and vLLM disagree on the integers).
 */
#ifndef EPMOE_MODEL_H
#define EPMOE_MODEL_H

#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_ROUTING_DEFAULT = 0,           /* "default": softmax -> top-k, weights = probs */
  EPM_ROUTING_RENORMALIZE = 1,       /* "renormalize": top-k logits -> softmax over k */
  EPM_ROUTING_RENORMALIZE_NAIVE = 2, /* "renormalize-naive": softmax -> top-k -> /sum */
  EPM_ROUTING_DEEPSEEK_V3 = 3,       /* "deepseek-v3": sigmoid + bias, groups, scaled */
  EPM_ROUTING_LLAMA4 = 4,            /* "llama4": top-1, sigmoid(logit) */
  EPM_ROUTING_TOPK = 5,              /* "topk": top-k logits, raw values */
  EPM_ROUTING_COUNT
} epm_routing_method_t;

const char *epm_routing_method_name(epm_routing_method_t m);
/* Parse a name above; EPM_ERR_INVALID_ARG lists the valid names. */
epm_status_t epm_routing_method_parse(const char *name, epm_routing_method_t *out);

typedef struct {
  char name[32];
  int64_t hidden;              /* H */
  int64_t intermediate;        /* I of a routed expert (moe_intermediate_size) */
  int64_t num_experts;         /* E, routed experts of the layer */
  int64_t top_k;
  int64_t n_group;             /* deepseek-v3 expert groups (1 = none) */
  int64_t topk_group;          /* groups kept per token */
  float routed_scaling_factor; /* 1.0 when the model has none */
  epm_routing_method_t routing;
  int64_t shared_experts;      /* 0 or 1 shared expert, always computed */
  int64_t shared_intermediate; /* I of the shared expert */
  int64_t num_layers;          /* layers in the model (informational) */
} epm_model_dims_t;

/* Names of the presets, NULL-terminated. */
const char *const *epm_model_preset_names(void);
/* Fill *out from a preset; EPM_ERR_INVALID_ARG lists valid names. */
epm_status_t epm_model_preset(const char *name, epm_model_dims_t *out);
/* Check the dims are usable (H, I multiples of 16 etc.), naming the bad value. */
epm_status_t epm_model_dims_validate(const epm_model_dims_t *d);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_MODEL_H */
