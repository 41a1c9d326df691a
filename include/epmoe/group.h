/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/group.h — the composition root: everything one rank needs to run
 * MoE steps, assembled in one place.
 *
 *   bootstrap (caller's) -> backend (cpu | cuda on the bootstrap's GPU)
 *     -> comm paired with it (cpu: MPI on host memory; cuda: NCCL on the
 *        backend's stream, so collectives are ordered with the kernels)
 *     -> layers (preset + seed, or this rank's slice of a checkpoint)
 *     -> one engine per served layer (all sharing one set of step buffers),
 *        and per (layer, step options) on first use (epm_group_step_opts)
 *
 * The daemon, `epmoectl step` and the MPI tests all build their ranks with
 * epm_group_create; nothing else restates the pairing rules above.
 *
 * Memory of a step's inputs and outputs is the caller's to say (epm_group_io_t):
 * host memory is staged through the engine's buffers; device memory (cuda
 * backend only) is used in place with no staging copy.
 */
#ifndef EPMOE_GROUP_H
#define EPMOE_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/backend.h"
#include "epmoe/bootstrap.h"
#include "epmoe/comm.h"
#include "epmoe/engine.h"
#include "epmoe/layer.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_group epm_group_t;

typedef struct {
  /* The model: a checkpoint directory (model_dir != NULL), or a preset name
   * with generated weights (seed). `dims`, when set, replaces the preset's
   * dims (tools that override experts/routing/top-k); ignored for checkpoints. */
  const char *model_dir;
  const char *preset;
  const epm_model_dims_t *dims;
  uint64_t seed;
  /* Served layers. Presets: `layer_ids[0..num_layers)` when given, else
   * layers 0..num_layers-1 (num_layers 0 -> 1). Checkpoints: the first
   * num_layers MoE layers (0 -> all), under their checkpoint numbers. */
  const int64_t *layer_ids;
  int64_t num_layers;
  /* Backend: cuda when the bootstrap picked a GPU, cpu otherwise. */
  int threads;                 /* cpu reference threads; 0 = cores / ranks on this node */
  double comm_timeout_s;       /* NCCL init and wait limit; <= 0 -> the comm's default */
  /* Engine options, the same for every layer; the defaults of
   * epm_group_step (epm_group_step_opts picks others per step). */
  int64_t max_tokens_per_rank; /* capacity of one rank's step (> 0) */
  epm_scale_mode_t scale_mode;
  int shared_expert;           /* 1: add the layer's shared expert when it has one */
  epm_dtype_t partial_dtype;
  /* Dispatch (epmoe/dispatch.h): mode, alltoall receive capacity in token
   * rows (0 = any routing fits), auto's cost terms (all 0 = defaults). */
  epm_dispatch_mode_t dispatch;
  int64_t recv_capacity;
  epm_dispatch_cost_t dispatch_cost;
  /* Where the experts live, the same map for every served layer
   * (epmoe/placement.h): `placement` when given (its expert count and EP
   * size must match the model and the group; copied), else the default
   * contiguous split of E + redundant_experts slots (the redundant slots are
   * second copies of experts 0, 1, ...). Every rank must pass the same map:
   * creation compares their hashes and fails on all ranks otherwise. */
  const epm_placement_t *placement;
  int64_t redundant_experts;
  epm_kernels_t kernels;       /* cuda backend: v1 (reference) or v2 (fast) kernels */
  /* Every engine's stage hook (epm_engine_config_t.on_stage); NULL = none. */
  void (*on_stage)(void *arg, int ended);
  void *on_stage_arg;
  /* Expert-stage workspace budget in bytes (epm_engine_config_t
   * workspace_bytes); 0 = unbounded. */
  size_t workspace_bytes;
  /* 1: the fixed-capacity step (epm_engine_config_t fixed_capacity): one
   * packed allgather, no sizes exchange, one CUDA graph per step on cuda. */
  int fixed_capacity;
} epm_group_config_t;

#define EPM_GROUP_CONFIG_INIT                                                                     \
  {NULL, NULL, NULL, 0, NULL, 0, 0, 0.0, 0, EPM_SCALE_STATIC, 1, EPM_DTYPE_F32, EPM_DISPATCH_ALLGATHER, 0, \
   {{0, 0}, {0, 0}}, NULL, 0, EPM_KERNELS_V1, NULL, NULL, 0, 0}

/* What HELLO/STATUS report. */
typedef struct {
  char model[64];       /* checkpoint's model name, or the preset */
  char backend[16];     /* "cpu" | "cuda" */
  int ep_rank, ep_size, gpu;
  int64_t hidden, num_experts, top_k;
  int64_t num_layers;
  int64_t first_expert, local_experts; /* this rank's slots: first global slot, slot count */
  int64_t num_slots;                   /* slots of the group (E + redundant) */
  uint64_t weight_bytes; /* this rank's weights, all served layers */
  uint64_t buffer_bytes; /* step buffers (backend memory) */
} epm_group_info_t;

/* Where a step's x / logits / y live, and the step's tokens. */
typedef struct {
  epm_mem_kind_t mem;    /* EPM_MEM_HOST, or EPM_MEM_DEVICE (cuda backend only) */
  const epm_bf16_t *x;   /* [m, H] */
  const float *logits;   /* [m, E] fp32 */
  epm_bf16_t *y;         /* [m, H] */
  int64_t m;             /* 0 is legal: the rank still joins every collective */
} epm_group_io_t;

/* Build this rank's part of the group. COLLECTIVE over the bootstrap's EP
 * group: every rank calls it with the same config, and either every rank
 * returns EPM_OK or every rank returns an error (a rank whose own part
 * succeeded returns EPM_ERR_ABORTED naming the ranks that failed), so no rank
 * is left in a later collective alone.
 * [in] boot: initialised, caller-owned, must outlive the group. */
epm_status_t epm_group_create(const epm_group_config_t *cfg, const epm_bootstrap_t *boot,
                              epm_group_t **out);
void epm_group_destroy(epm_group_t *g); /* NULL ok */

/* One step of checkpoint/preset layer `layer`. COLLECTIVE (see
 * epm_engine_step): all ranks call it for the same layer, in the same order.
 * EPM_ERR_INVALID_ARG (local, before any communication) for a layer not
 * served, device memory on the cpu backend, or m out of range. */
epm_status_t epm_group_step(epm_group_t *g, int64_t layer, const epm_group_io_t *io);

/* The options one step may choose (the daemon's FORWARD flags and partial
 * dtype). An engine that computes the shared expert itself sets
 * shared_expert = 0, or the shared expert is added twice. */
typedef struct {
  int shared_expert;         /* 1: add the layer's shared expert (when it has one) */
  epm_dtype_t partial_dtype; /* dtype of the reduce-scatter; every rank must pass the same */
} epm_step_opts_t;

/* As epm_group_step, with this step's options instead of the config's
 * (opts NULL = the config's). The group keeps one engine per (layer,
 * options) it has stepped, made on first use; making one allocates but does
 * not communicate, and the engines of one partial dtype share one set of
 * step buffers. COLLECTIVE like epm_group_step: every rank passes the same
 * partial_dtype (shared_expert may differ, it only touches this rank's
 * rows). A rank that cannot make the engine still joins the step, which
 * then fails on every rank. */
epm_status_t epm_group_step_opts(epm_group_t *g, int64_t layer, const epm_step_opts_t *opts,
                                 const epm_group_io_t *io);

void epm_group_info(const epm_group_t *g, epm_group_info_t *out);
/* 1 when `layer` is served. */
int epm_group_has_layer(const epm_group_t *g, int64_t layer);
/* The i-th served layer's number (i in [0, num_layers)), -1 out of range. */
int64_t epm_group_layer_id(const epm_group_t *g, int64_t i);
/* The engine of a served layer (stats, buffer size), NULL when not served. */
epm_engine_t *epm_group_engine(epm_group_t *g, int64_t layer);
/* The weights of a served layer (this rank's slice), NULL when not served. */
const epm_layer_t *epm_group_layer(const epm_group_t *g, int64_t layer);
/* The engine that ran the last step (its stage timings), or the first
 * layer's engine before any step. */
const epm_engine_t *epm_group_last_engine(const epm_group_t *g);
/* The group's expert placement (owned by the group). */
const epm_placement_t *epm_group_placement(const epm_group_t *g);
/* Per-expert load of this rank's own tokens over every served layer:
 * epm_engine_expert_load summed over the engines (n = num_experts). */
epm_status_t epm_group_expert_load(const epm_group_t *g, uint64_t *total, uint64_t *last, int64_t n);
/* The backend (stream, device) and comm, for callers that own step buffers. */
epm_backend_t *epm_group_backend(epm_group_t *g);
epm_comm_t *epm_group_comm(epm_group_t *g);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_GROUP_H */
