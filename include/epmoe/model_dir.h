/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/model_dir.h — a Hugging Face checkpoint directory as exported by
 * NVIDIA ModelOpt for NVFP4 (e.g. nvidia/DeepSeek-R1-FP4):
 *
 *   config.json                     model dims, family naming (model_type)
 *   hf_quant_config.json            {"quantization": {"quant_algo": "NVFP4", "group_size": 16}}
 *   model.safetensors.index.json    {"weight_map": {tensor name: file name}}   (multi-file)
 *   model-0000N-of-0000M.safetensors, or a single model.safetensors
 *
 * Families and their config.json keys:
 *   deepseek_v3 (DeepSeek-V3/R1): hidden_size, moe_intermediate_size, n_routed_experts,
 *     num_experts_per_tok, n_group, topk_group, routed_scaling_factor, scoring_func
 *     "sigmoid" + topk_method "noaux_tc" -> deepseek-v3 routing, n_shared_experts (shared
 *     I = moe_intermediate_size x n_shared_experts), num_hidden_layers, MoE layers are
 *     L >= first_k_dense_replace with L % moe_layer_freq == 0.
 *   qwen3_moe: hidden_size, moe_intermediate_size, num_experts, num_experts_per_tok,
 *     norm_topk_prob (true -> renormalize, false -> default), MoE layers are those not in
 *     mlp_only_layers with (L + 1) % decoder_sparse_step == 0; no shared expert.
 *   llama4 (keys read from "text_config" when present): hidden_size, intermediate_size,
 *     num_local_experts, num_experts_per_tok -> llama4 routing, one shared expert of
 *     intermediate_size, MoE layers from "moe_layers" or every interleave_moe_layer_step-th.
 * An optional "epmoe_routing" key (a routing method name) overrides the inferred method;
 * `epmoectl ckpt make` writes it only when the family's keys cannot express the preset.
 *
 * Files are opened (mmap + full header validation) lazily, on first lookup.
 * Only regular files are opened (symlinks to them are fine); JSON files are
 * capped at EPM_CKPT_MAX_JSON bytes.
 *
 * Upper bounds on config.json values, each well above every published MoE
 * (largest known in brackets) and low enough that every size product of a
 * layer stays far inside int64 (H x I x E < 2^45). A value over its bound is
 * EPM_ERR_FORMAT naming the key, the value and the bound. See
 * docs/RELIABILITY.md "Checkpoints".
 */
#define EPM_CKPT_MAX_HIDDEN 65536        /* hidden_size [7168, DeepSeek-V3] */
#define EPM_CKPT_MAX_INTERMEDIATE 131072 /* expert and shared-expert intermediate [8192, Llama-4] */
#define EPM_CKPT_MAX_EXPERTS 4096        /* routed experts per layer [512] */
#define EPM_CKPT_MAX_TOP_K 64            /* experts per token [22]; the GPU routing kernel's limit */
#define EPM_CKPT_MAX_GROUPS 64           /* n_group, topk_group [8]; the GPU routing kernel's limit */
#define EPM_CKPT_MAX_SHARED 16           /* n_shared_experts, fused into one MLP [2] */
#define EPM_CKPT_MAX_LAYERS 1024         /* num_hidden_layers and layer steps [126] */
#define EPM_CKPT_MAX_JSON (256u << 20)   /* bytes of one JSON file [~10 MB, the R1 index] */
#ifndef EPMOE_MODEL_DIR_H
#define EPMOE_MODEL_DIR_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/model.h"
#include "epmoe/safetensors.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_FAMILY_DEEPSEEK_V3 = 0,
  EPM_FAMILY_QWEN3_MOE = 1,
  EPM_FAMILY_LLAMA4 = 2,
  EPM_FAMILY_COUNT
} epm_model_family_t;

const char *epm_model_family_name(epm_model_family_t f); /* the config.json model_type */
/* The family whose routing matches a preset's dims (ckpt make). */
epm_model_family_t epm_model_family_for_dims(const epm_model_dims_t *d);

typedef struct epm_model_dir epm_model_dir_t;

epm_status_t epm_model_dir_open(const char *dir, epm_model_dir_t **out);
void epm_model_dir_close(epm_model_dir_t *md); /* NULL ok */

const char *epm_model_dir_path(const epm_model_dir_t *md);
const epm_model_dims_t *epm_model_dir_dims(const epm_model_dir_t *md);
epm_model_family_t epm_model_dir_family(const epm_model_dir_t *md);
/* MoE layers in increasing order. */
int64_t epm_model_dir_moe_layer_count(const epm_model_dir_t *md);
int64_t epm_model_dir_moe_layer(const epm_model_dir_t *md, int64_t i);
int epm_model_dir_is_moe_layer(const epm_model_dir_t *md, int64_t layer);

/* Tensors of the weight map, sorted by name, and the files they live in. */
size_t epm_model_dir_tensor_count(const epm_model_dir_t *md);
const char *epm_model_dir_tensor_name(const epm_model_dir_t *md, size_t i);
size_t epm_model_dir_tensor_file(const epm_model_dir_t *md, size_t i);
size_t epm_model_dir_file_count(const epm_model_dir_t *md);
const char *epm_model_dir_file_name(const epm_model_dir_t *md, size_t i);
/* Open (once) and validate file i. */
epm_status_t epm_model_dir_file(epm_model_dir_t *md, size_t i, const epm_st_file_t **out);

/* Find a tensor through the weight map; EPM_ERR_FORMAT names the tensor and the
 * index file (absent from the map) or the data file (absent from the file). */
epm_status_t epm_model_dir_tensor(epm_model_dir_t *md, const char *name, const epm_st_tensor_t **out,
                                  const epm_st_file_t **file);
/* As above and check dtype and shape exactly (ndim 0 = scalar). */
epm_status_t epm_model_dir_expect(epm_model_dir_t *md, const char *name, epm_st_dtype_t dtype, int ndim,
                                  const int64_t *shape, const epm_st_tensor_t **out);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_MODEL_DIR_H */
