/* epmoe/weights.h — ModelOpt NVFP4 tensor names, loading one MoE layer's
 * expert-parallel slice from a checkpoint directory, and writing synthetic
 * checkpoints.
 *
 * Names (spec nvfp4-moe.md §6.1), with P the layer's MoE block prefix:
 *   P.experts.E.{gate,up,down}_proj.weight          U8      [rows, cols/2]  packed E2M1
 *   P.experts.E.{gate,up,down}_proj.weight_scale    F8_E4M3 [rows, cols/16] linear block scales
 *   P.experts.E.{gate,up,down}_proj.weight_scale_2  F32     [] (or [1])     decode scale
 *   P.experts.E.{gate,up,down}_proj.input_scale     F32     [] (or [1])     activation decode scale
 *   P.<shared>.{gate,up,down}_proj.*                the shared expert, same fields
 *   P.<router>.weight                               BF16 (or F32) [E, H]
 *   P.gate.e_score_correction_bias                  F32 (or BF16) [E]   (deepseek-v3 routing)
 * gate/up are [I, H] and down is [H, I].
 *   deepseek_v3, qwen3_moe: P = model.layers.L.mlp, <shared> = shared_experts, <router> = gate
 *   llama4 [UNVERIFIED against a real export]: P = language_model.model.layers.L.feed_forward,
 *     <shared> = shared_expert, <router> = router
 *
 * Loading rank r takes that rank's slots of an expert placement
 * (epmoe/placement.h; by default the contiguous split with the first E mod EP
 * ranks holding one expert more; a replica reads the same tensors as its
 * expert) and reads input_scale of ALL experts so every rank computes the same
 * global scales: input_scale = max over experts of max(gate, up) input_scale,
 * down_input_scale = max over experts of the down input_scale. When an
 * expert's gate and up weight_scale_2 differ (never in ModelOpt exports, which
 * tie them; seen in third-party ones) the loader warns with both values and
 * uses the larger: with one shared decode scale, the larger one cannot
 * overflow the other projection's E4M3 block scales, at a small precision cost.
 */
#ifndef EPMOE_WEIGHTS_H
#define EPMOE_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/layer.h"
#include "epmoe/model_dir.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EPM_PROJ_GATE = 0, EPM_PROJ_UP = 1, EPM_PROJ_DOWN = 2 } epm_proj_t;
typedef enum {
  EPM_FIELD_WEIGHT = 0,
  EPM_FIELD_WEIGHT_SCALE = 1,
  EPM_FIELD_WEIGHT_SCALE_2 = 2,
  EPM_FIELD_INPUT_SCALE = 3
} epm_field_t;
#define EPM_EXPERT_SHARED (-1)

/* Tensor name of a routed expert (expert >= 0) or the shared expert
 * (EPM_EXPERT_SHARED). Returns 0, or 1 if buf is too small. */
int epm_weight_name(epm_model_family_t fam, int64_t layer, int64_t expert, epm_proj_t proj,
                    epm_field_t field, char *buf, size_t len);
/* Router weight (bias = 0) or e_score_correction_bias (bias = 1). */
int epm_router_name(epm_model_family_t fam, int64_t layer, int bias, char *buf, size_t len);

/* Progress of a long load: a live line (bytes, MB/s, ETA) on stderr when it is
 * a terminal, one summary line otherwise. */
typedef struct {
  size_t total, done;
  double t0, last_print;
  int live;
  int quiet;
} epm_load_progress_t;

void epm_load_progress_begin(epm_load_progress_t *p, size_t total_bytes, int quiet);
void epm_load_progress_add(epm_load_progress_t *p, size_t bytes);
/* Prints the summary ("loaded 6.3 GB in 4.1 s, 1540 MB/s"); returns seconds. */
double epm_load_progress_end(epm_load_progress_t *p, const char *what);

/* Bytes one rank copies for one layer (its experts, the shared expert,
 * router) under the default split: the largest slice, ceil(E / EP) experts. */
epm_status_t epm_weights_layer_bytes(const epm_model_dims_t *d, int ep_size, size_t *out);

/* Load checkpoint layer `layer` (must be a MoE layer) for rank ep_rank of
 * ep_size into *out (allocated here; free with epm_layer_free). Every tensor
 * read is checked for presence, dtype and shape; errors name the tensor and
 * the file. progress may be NULL. */
epm_status_t epm_weights_load_layer(epm_model_dir_t *md, int64_t layer, int ep_rank, int ep_size,
                                    epm_layer_t *out, epm_load_progress_t *progress);
/* The same for `rank`'s slots of placement p (a placed bank, layer.h); the
 * unplaced form above loads the default placement of ep_size ranks. */
epm_status_t epm_weights_load_layer_placed(epm_model_dir_t *md, int64_t layer, const epm_placement_t *p,
                                           int64_t rank, epm_layer_t *out, epm_load_progress_t *progress);

/* ---- synthetic checkpoints (epmoectl ckpt make) ---- */
typedef struct {
  const char *out_dir;         /* created if missing; must not hold a checkpoint already */
  epm_model_dims_t dims;       /* from a preset (or a test's own dims) */
  int64_t layers;              /* MoE layers 0..layers-1, all MoE */
  uint64_t seed;
  size_t shard_bytes;          /* start a new file when one would exceed this; 0 = one file */
  int quiet;
} epm_ckpt_make_opts_t;

/* Write a complete ModelOpt-style NVFP4 directory whose layer L is exactly
 * epm_layer_generate(dims, L, seed, 0, E) (bit for bit after loading). Expert
 * input_scale values vary per expert; their max is the generator's layer
 * scale. One shard becomes model.safetensors without an index. */
epm_status_t epm_ckpt_make(const epm_ckpt_make_opts_t *o);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_WEIGHTS_H */
