/* SPDX-License-Identifier: Apache-2.0 */
/* model.c — named model presets and routing method names (epmoe/model.h).
 *
 * Preset sources (see spec/nvfp4-moe.md §6.3, which cites the configs):
 *   deepseek-r1  DeepSeek-V3/R1 (same MoE dims) config.json: hidden_size 7168,
 *       moe_intermediate_size 2048, n_routed_experts 256, num_experts_per_tok 8,
 *       n_group 8, topk_group 4, routed_scaling_factor 2.5, scoring sigmoid +
 *       noaux_tc (e_score_correction_bias), norm_topk_prob, n_shared_experts 1
 *       (shared I = moe_intermediate_size x n_shared = 2048), 61 layers
 *       (first_k_dense_replace 3: 58 of them are MoE).
 *   qwen3-235b  Qwen3-235B-A22B config.json: hidden_size 4096,
 *       moe_intermediate_size 1536, num_experts 128, num_experts_per_tok 8,
 *       norm_topk_prob (softmax -> top-k -> renormalize; vLLM maps it to
 *       Renormalize, which is numerically the same selection and weights),
 *       no shared expert, 94 layers all MoE.
 *   llama4-maverick  Llama-4-Maverick-17B-128E config.json: hidden_size 5120,
 *       intermediate_size 8192 (experts and the shared expert; the dense layers
 *       use intermediate_size_mlp 16384), num_local_experts 128,
 *       num_experts_per_tok 1, sigmoid top-1 (Llama4 routing), 48 layers with
 *       interleave_moe_layer_step 2 (24 MoE).
 *   tiny  our own test shape: every feature of deepseek-v3 routing (groups,
 *       scaling, shared expert) at sizes a CPU reference runs in milliseconds.
 * num_layers counts all decoder layers and is informational only.
 */
#include "epmoe/model.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static const char *const routing_names[EPM_ROUTING_COUNT] = {
    [EPM_ROUTING_DEFAULT] = "default",
    [EPM_ROUTING_RENORMALIZE] = "renormalize",
    [EPM_ROUTING_RENORMALIZE_NAIVE] = "renormalize-naive",
    [EPM_ROUTING_DEEPSEEK_V3] = "deepseek-v3",
    [EPM_ROUTING_LLAMA4] = "llama4",
    [EPM_ROUTING_TOPK] = "topk",
};

const char *epm_routing_method_name(epm_routing_method_t m) {
  if ((int)m < 0 || m >= EPM_ROUTING_COUNT) return "invalid";
  return routing_names[m];
}

epm_status_t epm_routing_method_parse(const char *name, epm_routing_method_t *out) {
  if (name) {
    for (int i = 0; i < EPM_ROUTING_COUNT; i++) {
      if (strcmp(name, routing_names[i]) == 0) {
        *out = (epm_routing_method_t)i;
        return EPM_OK;
      }
    }
  }
  return epm_error(EPM_ERR_INVALID_ARG,
                   "unknown routing method '%s'; valid: default, renormalize, "
                   "renormalize-naive, deepseek-v3, llama4, topk",
                   name ? name : "(null)");
}

/* Positional so the table reads like the config files it comes from. */
static const epm_model_dims_t presets[] = {
    {"deepseek-r1", 7168, 2048, 256, 8, 8, 4, 2.5f, EPM_ROUTING_DEEPSEEK_V3, 1, 2048, 61},
    {"qwen3-235b", 4096, 1536, 128, 8, 1, 1, 1.0f, EPM_ROUTING_RENORMALIZE, 0, 0, 94},
    {"llama4-maverick", 5120, 8192, 128, 1, 1, 1, 1.0f, EPM_ROUTING_LLAMA4, 1, 8192, 48},
    {"tiny", 256, 128, 16, 4, 4, 2, 2.5f, EPM_ROUTING_DEEPSEEK_V3, 1, 128, 2},
};
#define NPRESETS (sizeof presets / sizeof presets[0])

static const char *const preset_names[NPRESETS + 1] = {
    "deepseek-r1", "qwen3-235b", "llama4-maverick", "tiny", NULL,
};

const char *const *epm_model_preset_names(void) { return preset_names; }

epm_status_t epm_model_preset(const char *name, epm_model_dims_t *out) {
  for (size_t i = 0; name && i < NPRESETS; i++) {
    if (strcmp(name, presets[i].name) == 0) {
      *out = presets[i];
      return EPM_OK;
    }
  }
  return epm_error(EPM_ERR_INVALID_ARG,
                   "unknown model preset '%s'; valid: deepseek-r1, qwen3-235b, llama4-maverick, tiny",
                   name ? name : "(null)");
}

/* Dimensions fed to NVFP4 must hold whole 16-element scale blocks; anything
 * else the codec and the GEMMs cannot express. */
static epm_status_t check_dim16(const char *what, int64_t v) {
  if (v <= 0 || v % 16 != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s = %lld must be a positive multiple of 16", what,
                     (long long)v);
  return EPM_OK;
}

epm_status_t epm_model_dims_validate(const epm_model_dims_t *d) {
  if (!d) return epm_error(EPM_ERR_INVALID_ARG, "model dims pointer is NULL");
  if (memchr(d->name, '\0', sizeof d->name) == NULL)
    return epm_error(EPM_ERR_INVALID_ARG, "model name is not NUL-terminated within %zu bytes",
                     sizeof d->name);
  EPM_TRY(check_dim16("hidden", d->hidden));
  EPM_TRY(check_dim16("intermediate", d->intermediate));
  if (d->num_experts < 1)
    return epm_error(EPM_ERR_INVALID_ARG, "num_experts = %lld must be >= 1",
                     (long long)d->num_experts);
  if (d->top_k < 1 || d->top_k > d->num_experts)
    return epm_error(EPM_ERR_INVALID_ARG, "top_k = %lld must be between 1 and num_experts = %lld",
                     (long long)d->top_k, (long long)d->num_experts);
  if ((int)d->routing < 0 || d->routing >= EPM_ROUTING_COUNT)
    return epm_error(EPM_ERR_INVALID_ARG, "routing method %d is not one of the %d known methods",
                     (int)d->routing, (int)EPM_ROUTING_COUNT);
  if (d->n_group < 1 || d->topk_group < 1 || d->topk_group > d->n_group)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "n_group = %lld, topk_group = %lld: need 1 <= topk_group <= n_group",
                     (long long)d->n_group, (long long)d->topk_group);
  if (d->routing == EPM_ROUTING_DEEPSEEK_V3) {
    if (d->num_experts % d->n_group != 0)
      return epm_error(EPM_ERR_INVALID_ARG, "num_experts = %lld is not divisible by n_group = %lld",
                       (long long)d->num_experts, (long long)d->n_group);
    /* Group scores sum the top-2 biased scores of a group, so a group needs
     * two experts unless there is only one group. */
    int64_t per_group = d->num_experts / d->n_group;
    if (d->n_group > 1 && per_group < 2)
      return epm_error(EPM_ERR_INVALID_ARG,
                       "num_experts / n_group = %lld experts per group; deepseek-v3 group "
                       "scores need at least 2",
                       (long long)per_group);
    /* The kept groups must hold at least top_k experts or selection runs dry. */
    if (d->topk_group * per_group < d->top_k)
      return epm_error(EPM_ERR_INVALID_ARG,
                       "topk_group = %lld groups x %lld experts per group = %lld < top_k = %lld",
                       (long long)d->topk_group, (long long)per_group,
                       (long long)(d->topk_group * per_group), (long long)d->top_k);
  } else if (d->n_group != 1 || d->topk_group != 1) {
    return epm_error(EPM_ERR_INVALID_ARG,
                     "n_group = %lld, topk_group = %lld: expert groups apply only to deepseek-v3 "
                     "routing (use 1, 1 for %s)",
                     (long long)d->n_group, (long long)d->topk_group,
                     epm_routing_method_name(d->routing));
  }
  if (d->routing == EPM_ROUTING_LLAMA4 && d->top_k != 1)
    return epm_error(EPM_ERR_INVALID_ARG, "llama4 routing is top-1; top_k = %lld",
                     (long long)d->top_k);
  if (!isfinite(d->routed_scaling_factor) || d->routed_scaling_factor <= 0.0f)
    return epm_error(EPM_ERR_INVALID_ARG, "routed_scaling_factor = %g must be finite and > 0",
                     (double)d->routed_scaling_factor);
  if (d->shared_experts < 0 || d->shared_experts > 1)
    return epm_error(EPM_ERR_INVALID_ARG, "shared_experts = %lld must be 0 or 1",
                     (long long)d->shared_experts);
  if (d->shared_experts == 1) {
    EPM_TRY(check_dim16("shared_intermediate", d->shared_intermediate));
  } else if (d->shared_intermediate != 0) {
    return epm_error(EPM_ERR_INVALID_ARG,
                     "shared_intermediate = %lld but the model has no shared expert",
                     (long long)d->shared_intermediate);
  }
  if (d->num_layers < 1)
    return epm_error(EPM_ERR_INVALID_ARG, "num_layers = %lld must be >= 1",
                     (long long)d->num_layers);
  return EPM_OK;
}
