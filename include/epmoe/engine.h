/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/engine.h — the EP step engine: one MoE layer forward across the EP
 * group, one object per layer per rank.
 *
 *   route -> quantize -> counts exchange -> dispatch -> local experts +
 *   finalize (partial y over this rank's experts) -> combine (sum, rank
 *   order) -> + shared expert for own tokens -> bf16 y
 *
 * Two dispatch modes (epmoe/dispatch.h), fixed or chosen per step (auto):
 *   allgather  sizes exchange, allgather-v of fp4 rows, scales, top-k ids and
 *              weights (rank order), experts over all M rows, reduce-scatter-v
 *   alltoall   rows exchange of every rank's per-destination token counts,
 *              all-to-all-v of each token's row once to every rank owning
 *              one of its experts, experts over the received rows (the same
 *              backend op), all-to-all-v of the partials back, summed per
 *              token in rank order on the token's rank
 * Both give the same bits (a rank owning none of a token's experts adds an
 * exact +0 in allgather mode and nothing in alltoall mode).
 *
 * The engine owns no threads. All step buffers are allocated once at create
 * time from max_tokens_per_rank x EP size (and the alltoall receive capacity);
 * a step allocates nothing.
 *
 * Numerics: with the static global scale every rank quantizes with the
 * layer's input_scale, so the gathered NVFP4 rows are exactly those an EP=1
 * run would quantize. The only EP-dependent rounding is the order of the fp32
 * partial-sum additions (within a rank, then across ranks in rank order) and
 * the final bf16 rounding: see docs/ARCHITECTURE.md "Engine". Results are
 * bit-identical across repeated runs with the same split.
 */
#ifndef EPMOE_ENGINE_H
#define EPMOE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/backend.h"
#include "epmoe/comm.h"
#include "epmoe/dispatch.h"
#include "epmoe/layer.h"
#include "epmoe/nvfp4.h"
#include "epmoe/placement.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_engine epm_engine_t;

typedef enum {
  EPM_SCALE_STATIC = 0,  /* encode scale 1/input_scale of the layer (all ranks equal) */
  EPM_SCALE_DYNAMIC = 1, /* all-reduce max of the step's amax, then 448*6/amax */
} epm_scale_mode_t;

typedef struct {
  int64_t max_tokens_per_rank; /* capacity of one rank's step (> 0) */
  epm_scale_mode_t scale_mode;
  int shared_expert;           /* 1: add the layer's shared expert (when it has one) */
  epm_dtype_t partial_dtype;   /* dtype of the reduce-scatter; the comm must support it */
  /* Borrow the step buffers of another engine instead of allocating them
   * (the layers of one model step one after another, so one set serves
   * all; the partial alone is [EP x max_tokens, H]). It must have the same
   * comm, backend, hidden size, expert count, top-k, capacity and partial
   * dtype, must outlive this engine, and the two must never step at the
   * same time. NULL = own buffers. */
  const struct epm_engine *share_buffers;
  /* How tokens reach the experts: allgather, alltoall, or auto (per step,
   * by the cost model below). Buffers of both modes exist only for auto. */
  epm_dispatch_mode_t dispatch;
  /* alltoall: most token rows one rank may receive in a step (its expert
   * batch); 0 = EP x max_tokens_per_rank, which no routing can exceed. A
   * step whose routing would send more to some rank fails on every rank
   * with EPM_ERR_OVERFLOW naming that rank and the numbers (before any
   * data moves), never dropping a row; auto runs such a step in allgather
   * mode instead. */
  int64_t recv_capacity;
  /* auto: the cost model's terms; all zero = epm_dispatch_cost_default(). */
  epm_dispatch_cost_t dispatch_cost;
  /* Where the experts live (epmoe/placement.h): the layer must hold exactly
   * this rank's slots of it. Read during create only. NULL = the default
   * placement of E experts over the comm's ranks (contiguous, the first
   * E mod P ranks one expert more), which an unplaced contiguous slice may
   * also match. */
  const epm_placement_t *placement;
  /* Called on the stepping thread each time a stage ends (ended: an
   * epm_engine_stage_t), e.g. to report progress to a liveness monitor.
   * NULL = none. It must not call into the engine. */
  void (*on_stage)(void *arg, int ended);
  void *on_stage_arg;
  /* Workspace budget of the expert stage in bytes (epmoe/plan.h
   * workspace_bytes); 0 = unbounded. The expert stage then runs over chunks
   * of gathered (or received) rows whose worst-case workspace fits, and the
   * backend's expert scratch is sized for one chunk, not for EP x
   * max_tokens_per_rank rows. Same bits as one call (a row's partial depends
   * on that row only). A budget below one row's need fails create. */
  size_t workspace_bytes;
  /* Fixed-capacity step (the host-sync-free form): every rank sends one
   * packed record per token (NVFP4 row, scales, ids, weights) in a segment
   * of max_tokens_per_rank records behind a header carrying its count, all
   * in ONE allgather of equal size; no host sizes exchange; the experts run
   * over the padded rows and the combine is a reduce-scatter of equal
   * segments. Bit-identical to the variable-size step. On a device backend
   * each step runs as one CUDA graph (route through combine, NCCL
   * included), captured once per local token count and replayed. Needs
   * allgather dispatch, the static scale and hidden >= 32. */
  int fixed_capacity;
} epm_engine_config_t;

#define EPM_ENGINE_CONFIG_INIT \
  {0, EPM_SCALE_STATIC, 1, EPM_DTYPE_F32, NULL, EPM_DISPATCH_ALLGATHER, 0, {{0, 0}, {0, 0}}, NULL, NULL, NULL, 0, 0}

/* Stages timed per step (wall clock on the calling thread, seconds). */
#define EPM_ENGINE_STAGES(X)                                             \
  X(ROUTE, "route")                                                      \
  X(QUANTIZE, "quantize")                                                \
  X(SIZES, "sizes")            /* sizes exchange (+ amax all-reduce) */  \
  X(ALLGATHER, "allgather")                                              \
  X(A2A_DISPATCH, "a2a_dispatch")  /* pack + all-to-all-v out */         \
  X(EXPERTS, "experts")        /* local experts + finalize */            \
  X(REDUCE_SCATTER, "reduce_scatter")                                    \
  X(A2A_COMBINE, "a2a_combine")    /* all-to-all-v back + rank-order sum */ \
  X(SHARED, "shared")          /* shared expert + bf16 output */         \
  X(TOTAL, "total")

typedef enum {
#define EPM__STAGE_ENUM(id, name) EPM_STAGE_##id,
  EPM_ENGINE_STAGES(EPM__STAGE_ENUM)
#undef EPM__STAGE_ENUM
  EPM_STAGE_COUNT
} epm_engine_stage_t;

const char *epm_engine_stage_name(epm_engine_stage_t s); /* "route", ... */

typedef struct {
  uint64_t steps;           /* successful steps */
  uint64_t failed_steps;
  uint64_t tokens_local;    /* sum of m_r over successful steps */
  uint64_t tokens_gathered; /* sum of M */
  int64_t last_m;           /* this rank's tokens in the last step */
  int64_t last_M;           /* tokens of all ranks in the last step */
  /* Dispatch. Bytes are this rank's payload to / from other ranks as the
   * comm counted it (epm_comm_traffic; the counts exchange not included). */
  epm_dispatch_mode_t last_mode;                /* mode of the last successful step */
  uint64_t steps_mode[EPM_DISPATCH_MODES];      /* successful steps per mode */
  int64_t last_expert_rows;  /* rows the expert stage ran over: M, or the rows received */
  int64_t last_expert_chunks; /* expert calls those rows took (workspace_bytes chunking) */
  uint64_t last_dispatch_sent, last_dispatch_recv; /* allgather-v / first all-to-all-v */
  uint64_t last_combine_sent, last_combine_recv;   /* reduce-scatter-v / all-to-all-v back */
  uint64_t bytes_sent, bytes_recv; /* sums over successful steps, dispatch + combine */
  /* auto: the model's predicted seconds of each mode for the last step and
   * the busiest rank's bytes it used (0 in a fixed mode). */
  double last_model_s[EPM_DISPATCH_MODES];
  uint64_t last_model_bytes[EPM_DISPATCH_MODES];
  float last_input_scale;   /* decode scale a1 of the last step's activations (G = 1/a1) */
  double last_s[EPM_STAGE_COUNT]; /* last successful step */
  double sum_s[EPM_STAGE_COUNT];  /* over successful steps */
  double max_s[EPM_STAGE_COUNT];
} epm_engine_stats_t;

/* Create the engine of one layer on this rank. Not collective (no
 * communication), but every rank of the comm must create its engine with the
 * same config, dims and placement. The layer must hold exactly this rank's
 * slots of the placement (cfg.placement, or the default split).
 * [in] layer, comm, be: caller-owned, must outlive the engine.
 * [out] *out: destroy with epm_engine_destroy. */
epm_status_t epm_engine_create(const epm_engine_config_t *cfg, const epm_layer_t *layer,
                               epm_comm_t *comm, epm_backend_t *be, epm_engine_t **out);
void epm_engine_destroy(epm_engine_t *eng); /* NULL ok */

/* One step. COLLECTIVE over the comm: every rank calls it, with any m_r in
 * [0, max_tokens_per_rank] (0 is legal and still joins every collective).
 * [in]  x_local  bf16 [m_r, H], logits fp32 [m_r, E]: host memory, caller-owned.
 * [out] y_local  bf16 [m_r, H], host memory.
 * Errors: a bad argument or a failure before the dispatch is reported to all
 * ranks through the sizes / rows exchange (every rank returns an error, none
 * hangs), and so is an alltoall receive-capacity overflow (EPM_ERR_OVERFLOW
 * on every rank, naming the rank); a failure after it aborts the comm
 * (EPM_ERR_ABORTED on the others). */
epm_status_t epm_engine_step(epm_engine_t *eng, const epm_bf16_t *x_local, const float *logits,
                             int64_t m_r, epm_bf16_t *y_local);

/* As epm_engine_step, but x_local, logits and y_local are already in the
 * backend's memory (device pointers on cuda, e.g. buffers of the inference
 * engine mapped through CUDA IPC): no staging copies, y is written in place
 * and is complete when the call returns. Same as epm_engine_step on cpu. */
epm_status_t epm_engine_step_backend_mem(epm_engine_t *eng, const epm_bf16_t *x_local, const float *logits,
                                         int64_t m_r, epm_bf16_t *y_local);

/* Snapshot of the counters and timings; safe to call from another thread
 * while a step runs. */
void epm_engine_stats(const epm_engine_t *eng, epm_engine_stats_t *out);
void epm_engine_stats_reset(epm_engine_t *eng);

/* The alltoall receive capacity in token rows (0 in allgather mode). */
int64_t epm_engine_recv_capacity(const epm_engine_t *eng);

/* Per-expert load: for each logical expert e in [0, n), n = num_experts, the
 * (token, expert) pairs routed to e from THIS rank's own tokens, summed over
 * successful steps (total) and of the last successful step (last); either
 * may be NULL. Summed over the ranks this is the group's load per expert (in
 * pairs, i.e. tokens: a token picks an expert at most once), what
 * epm_placement_balance() takes. Safe from another thread while a step runs.
 * EPM_ERR_INVALID_ARG when n is not the layer's expert count. */
epm_status_t epm_engine_expert_load(const epm_engine_t *eng, uint64_t *total, uint64_t *last, int64_t n);

/* Most rows one expert call takes (the workspace budget's chunk). */
int64_t epm_engine_chunk_rows(const epm_engine_t *eng);

/* Bytes of step buffers the engine allocated (backend memory). */
size_t epm_engine_buffer_bytes(const epm_engine_t *eng);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_ENGINE_H */
