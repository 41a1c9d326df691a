/* SPDX-License-Identifier: Apache-2.0 */
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

/* Progress of a long load or write (runtime/load_progress.c). On a terminal
 * (EPM_PROGRESS_AUTO and stderr is a tty): a live line (GB, MB/s, ETA)
 * redrawn in place. Otherwise (logs, journald, a pipe, EPM_PROGRESS_LINES):
 * an info log line "WHAT: 1.20 GB of 3.40 GB (35%), 310 MB/s, ETA 7 s" each time
 * another 10 % is done or interval_s (5 s) passed, whichever comes first, so
 * a load of minutes is never silent and a short one prints at most 9 lines.
 * Every mode but QUIET ends with one summary line. */
typedef enum {
  EPM_PROGRESS_AUTO = 0,  /* live on a terminal, else lines */
  EPM_PROGRESS_QUIET = 1, /* nothing */
  EPM_PROGRESS_LINES = 2  /* lines even on a terminal (daemons: one log stream) */
} epm_progress_mode_t;

typedef struct {
  size_t total, done;
  double t0, last_print;
  double interval_s; /* lines: longest silence (5 s; tests may shorten it) */
  int live;          /* redrawn terminal line */
  int quiet;
  int last_decile;   /* lines: the last 10 % step printed */
  char what[96];
} epm_load_progress_t;

/* mode: an epm_progress_mode_t (0 and 1 keep meaning "not quiet", "quiet"). */
void epm_load_progress_begin(epm_load_progress_t *p, const char *what, size_t total_bytes, int mode);
void epm_load_progress_add(epm_load_progress_t *p, size_t bytes);
/* Logs the summary ("WHAT: done, 6.30 GB in 4.10 s, 1540 MB/s"); returns seconds. */
double epm_load_progress_end(epm_load_progress_t *p);

/* Bytes one rank copies for one layer (its experts, the shared expert,
 * router) under the default split: the largest slice, ceil(E / EP) experts. */
epm_status_t epm_weights_layer_bytes(const epm_model_dims_t *d, int ep_size, size_t *out);

/* Load checkpoint layer `layer` (must be a MoE layer) for rank ep_rank of
 * ep_size into *out (allocated here; free with epm_layer_free). Every tensor
 * read is checked for presence, dtype and shape before the layer is
 * allocated, and its values as it is copied (epm_check_* below); errors name
 * the tensor and the file. progress may be NULL. */
epm_status_t epm_weights_load_layer(epm_model_dir_t *md, int64_t layer, int ep_rank, int ep_size,
                                    epm_layer_t *out, epm_load_progress_t *progress);
/* The same for `rank`'s slots of placement p (a placed bank, layer.h); the
 * unplaced form above loads the default placement of ep_size ranks. */
epm_status_t epm_weights_load_layer_placed(epm_model_dir_t *md, int64_t layer, const epm_placement_t *p,
                                           int64_t rank, epm_layer_t *out, epm_load_progress_t *progress);

/* ---- value checks (docs/RELIABILITY.md "Checkpoints") ----
 * Shared by the loader and `epmoectl ckpt inspect`, so a checkpoint inspect
 * calls ok never fails at load on a value, and the reverse. Errors name the
 * file, the tensor, the index and the value. */

/* E4M3 block scales: bytes 0x00..0x7e. 0x7f and 0xff are NaN, and a set sign
 * bit (a negative scale, or -0) is refused too: scales are block amax / 6,
 * never negative, and the kernels read them as unsigned E4M3 (nvfp4-moe.md
 * §1.2), so a signed one would decode differently on GPU and CPU. */
#define EPM_E4M3_SCALE_MAX_BYTE 0x7e
/* Decode scales (weight_scale_2, input_scale) must lie in
 * [EPM_DECODE_SCALE_MIN, EPM_DECODE_SCALE_MAX]: normal fp32 (so the encode
 * scale 1/s is finite) and small enough that the largest decoded value,
 * 6 x 448 x s, is finite. */
#define EPM_DECODE_SCALE_MIN 1.17549435e-38f /* FLT_MIN */
#define EPM_DECODE_SCALE_MAX 1.26592e+35f    /* < FLT_MAX / (6 x 448) */

/* sf [rows, cols] of E4M3 bytes; the first bad one is named with its [row,
 * col] and the count of bad ones. */
epm_status_t epm_check_block_scales(const char *file, const char *tensor, const uint8_t *sf, int64_t rows,
                                    int64_t cols);
epm_status_t epm_check_decode_scale(const char *file, const char *tensor, float v);
/* Every element of an F32 or BF16 tensor (router weight and bias) finite. */
epm_status_t epm_check_finite(const char *file, const epm_st_tensor_t *t);

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
