/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/layer.h — one MoE layer's weights in host memory, ModelOpt NVFP4 form.
 *
 * Canonical form, as in a ModelOpt checkpoint (no shuffling, no interleave):
 * per expert, gate_proj and up_proj [I, H] and down_proj [H, I], each as
 * packed E2M1 [rows, cols/2] + linear E4M3 block scales [rows, cols/16] + one
 * fp32 weight_scale_2 (decode scale; gate and up share one). Backends repack
 * from this form at load time.
 *
 * A rank holds a bank of routed experts, the whole router, and the shared
 * expert (if any). The bank is either a contiguous slice [expert_offset,
 * expert_offset + count) of the E routed experts (unplaced: the reference's
 * view, tools that slice by hand) or the rank's slots of an expert placement
 * (epmoe/placement.h; `slots` below), where bank slot i holds logical expert
 * slots.expert[i] and experts may be replicated. The generator makes expert
 * e's weights depend only on (seed, layer, e), so every bank is exactly a
 * selection of the full model's experts.
 */
#ifndef EPMOE_LAYER_H
#define EPMOE_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/model.h"
#include "epmoe/nvfp4.h"
#include "epmoe/placement.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t count;        /* experts in this bank */
  int64_t hidden;       /* H */
  int64_t intermediate; /* I */
  uint8_t *gate_w;      /* [count, I, H/2]  */
  uint8_t *gate_sf;     /* [count, I, H/16] */
  uint8_t *up_w;        /* [count, I, H/2]  */
  uint8_t *up_sf;       /* [count, I, H/16] */
  uint8_t *down_w;      /* [count, H, I/2]  */
  uint8_t *down_sf;     /* [count, H, I/16] */
  float *gate_up_scale_2; /* [count] decode scale shared by gate and up */
  float *down_scale_2;    /* [count] */
} epm_expert_bank_t;

/* Where a placed bank's slots sit in the group's placement. num_slots == 0:
 * unplaced (the contiguous slice at expert_offset). Otherwise bank slot i is
 * global slot first_slot + i and holds logical expert expert[i]; the pair
 * (gathered token t, logical expert e) is served by bank slot
 * epm_moe_local_slot(rep_start, rep_local, e, t) (epmoe/kernels.h) when that
 * is >= 0 and by another rank otherwise. Owned by the layer. */
typedef struct {
  int64_t num_slots;  /* S of the whole group; 0 = unplaced */
  int64_t first_slot;
  int32_t *expert;    /* [experts.count] logical expert of each bank slot */
  int32_t *rep_start; /* [E + 1] the placement's replica_start */
  int32_t *rep_local; /* [S] bank slot of each replica here, -1 elsewhere */
} epm_slot_map_t;

typedef struct {
  epm_model_dims_t dims;
  int64_t layer_index;
  int64_t expert_offset;      /* unplaced: first global expert id held in `experts`; placed: 0 */
  epm_expert_bank_t experts;  /* local routed experts (placed: one per slot) */
  epm_slot_map_t slots;       /* placed banks only (num_slots > 0) */
  epm_expert_bank_t shared;   /* count 0 when the model has no shared expert */
  float input_scale;          /* decode scale of the layer input: max over ALL E experts */
  float down_input_scale;     /* decode scale of the intermediate (GEMM2 input), max over all E */
  float shared_input_scale;   /* the shared expert's own input and down input scales */
  float shared_down_input_scale;
  float *router_w;            /* [E, H] fp32 (bf16-exact in checkpoints) */
  float *router_bias;         /* [E] e_score_correction_bias, NULL when unused */
} epm_layer_t;

/* Allocate zeroed storage for a layer holding experts [offset, offset+count)
 * (and the shared expert / router per dims). Sizes overflow-checked. */
epm_status_t epm_layer_alloc(const epm_model_dims_t *dims, int64_t expert_offset, int64_t count,
                             epm_layer_t *out);
/* Allocate zeroed storage for `rank`'s slots of a placement (one bank entry
 * per slot, replicas included) and fill `slots`; the placement's expert count
 * must be dims->num_experts. */
epm_status_t epm_layer_alloc_placed(const epm_model_dims_t *dims, const epm_placement_t *p, int64_t rank,
                                    epm_layer_t *out);
void epm_layer_free(epm_layer_t *l); /* accepts a zeroed struct; idempotent */

/* Bank index serving (token, logical expert) on this layer, or -1: the
 * placement's rule for a placed bank, the contiguous slice otherwise. */
int64_t epm_layer_local_slot(const epm_layer_t *l, int64_t expert, int64_t token);
/* Logical expert held by bank slot i. */
int64_t epm_layer_slot_expert(const epm_layer_t *l, int64_t i);
/* The bank is consistent: an unplaced slice within [0, E), or a placed bank
 * whose slot map is well formed. EPM_ERR_INVALID_ARG names what is wrong. */
epm_status_t epm_layer_check_bank(const epm_layer_t *l);

/* Bytes held by one bank (all six tensors + scales). */
size_t epm_expert_bank_bytes(const epm_expert_bank_t *b);

/* Seeded random layer quantized with the real ModelOpt formulas from Gaussian
 * fp32 weights: weight_scale_2 = amax/(6*448), block scale = e4m3(block_amax /
 * (6*weight_scale_2)) with zero blocks stored as 1.0, codes by exact division.
 * input_scale / down_input_scale are set as calibrated amax/(6*448) of typical
 * activations. Expert e depends only on (seed, layer_index, e). */
epm_status_t epm_layer_generate(const epm_model_dims_t *dims, int64_t layer_index, uint64_t seed,
                                int64_t expert_offset, int64_t count, epm_layer_t *out);
/* The same generator for `rank`'s slots of a placement: bank slot i gets
 * expert slots.expert[i], bit for bit as in the full model (a replica is a
 * second copy of the same stream). */
epm_status_t epm_layer_generate_placed(const epm_model_dims_t *dims, int64_t layer_index, uint64_t seed,
                                       const epm_placement_t *p, int64_t rank, epm_layer_t *out);

/* Seeded hidden states [m, hidden] bf16 with N(0, 1) entries: the unit-RMS
 * activations the generator's input_scale is calibrated for. Row t is global
 * token first_token + t and depends only on (seed, first_token + t), so EP
 * ranks can each make their rows of one global batch. */
epm_status_t epm_layer_random_hidden(int64_t hidden, uint64_t seed, int64_t first_token, int64_t m,
                                     epm_bf16_t *out);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_LAYER_H */
