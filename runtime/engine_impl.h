/* SPDX-License-Identifier: Apache-2.0 */
/* engine_impl.h — private: the engine object shared by engine.c (create,
 * buffers, the step and the allgather mode) and engine_a2a.c (the alltoall
 * mode and the per-step mode choice). */
#ifndef EPMOE_ENGINE_IMPL_H
#define EPMOE_ENGINE_IMPL_H

#include <pthread.h>

#include "epmoe/engine.h"

/* Sent in the sizes / rows exchange by a rank that cannot take part in this
 * step; far above any capacity, so it also fails every receiver's bound
 * check. */
#define EPM__STEP_FAILED (INT64_C(1) << 62)

struct epm_engine {
  epm_engine_config_t cfg;
  const epm_layer_t *layer;
  epm_comm_t *comm;
  epm_backend_t *be;
  epm_backend_weights_t *w;
  int rank, size, device;
  int64_t H, E, k, max_m, max_M;
  int64_t chunk_rows;   /* most rows per expert call (workspace budget) */
  int64_t last_chunks;  /* expert calls of this step */
  int use_shared;
  int weight_on_input; /* llama4: router weight scales the input (top-1) */
  size_t partial_elem; /* bytes per element of the reduce-scatter */

  /* Backend memory. The _loc buffers hold this rank's rows, the _all ones the
   * gathered rows; x/logits/y staging exists only on a device backend. */
  epm_bf16_t *x_dev;
  epm_bf16_t *x_woi; /* [max_m, H] weighted input (weight_on_input only) */
  float *logits_dev;
  epm_bf16_t *y_dev;
  int32_t *ids_loc, *ids_all;
  float *wts_loc, *wts_all;
  uint8_t *packed_loc, *packed_all, *sf_loc, *sf_all;
  void *partial_all; /* [max_M, H] partial_dtype */
  void *y_red;       /* [max_m, H] partial_dtype: the reduce-scatter output */
  float *y32;        /* [max_m, H] fp32 (aliases y_red when partials are fp32) */
  float *amax_buf;   /* [1] for the dynamic scale's all-reduce */
  size_t buffer_bytes;
  int owns_buffers; /* 0 when borrowed from cfg.share_buffers */
  int stage_io;     /* this step: x/logits/y are host memory on a device backend */

  int64_t *counts; /* [size] host: tokens per rank this step */

  /* ---- dispatch modes ---- */
  int ag_bufs, a2a_bufs;    /* which modes' buffers exist (auto: both) */
  epm_dispatch_cost_t cost; /* resolved (defaults filled in) */
  int64_t drow, crow;       /* bytes of a token's dispatch row / combine row */
  int64_t send_cap, recv_cap; /* alltoall rows: sent (max_m * min(k, P)), received */
  /* alltoall, backend memory: send rows (destination-major), received rows,
   * the expert output of the received rows (= combine send), and the
   * partials of this rank's tokens coming back (destination-major). */
  uint8_t *packed_snd, *sf_snd, *packed_rcv, *sf_rcv;
  int32_t *ids_snd, *ids_rcv;
  float *wts_snd, *wts_rcv;
  void *part_rcv; /* [recv_cap, H] partial_dtype */
  void *comb_rcv; /* [send_cap, H] partial_dtype */
  /* alltoall, host: where packing and the rank-order sum run. On the cpu
   * backend these point at the backend buffers; on a device backend they
   * are host copies (the packing and the sum have no kernels yet). */
  int32_t *h_ids_loc;
  float *h_wts_loc;
  uint8_t *h_packed_loc, *h_sf_loc, *h_packed_snd, *h_sf_snd;
  int32_t *h_ids_snd;
  float *h_wts_snd;
  void *h_comb;  /* [send_cap, H] partial_dtype */
  float *h_y32;  /* [max_m, H] */
  int host_mirrors; /* the h_ pointers above are own allocations (device backend) */
  /* alltoall, host, per engine: this step's plan and the exchanged counts. */
  int64_t *send_tok;   /* [send_cap] local token of each send row */
  int64_t *send_cnt;   /* [size] rows to each rank */
  int64_t *xrow;       /* [size + 1] {m_r or STEP_FAILED, send_cnt[0..P)} */
  int64_t *xall;       /* [size * (size + 1)] every rank's xrow */
  int64_t *matrix;     /* [size * size] dispatch rows s -> d */
  int64_t *matrix_t;   /* [size * size] combine rows (transposed) */
  int64_t *scratch_i;  /* [size] */
  uint64_t *bytes_s, *bytes_r; /* [size] cost model */

  /* ---- fixed capacity (engine_fixed.c) and the CUDA graph (engine_graph.c) ---- */
  int fixed;                 /* cfg.fixed_capacity */
  size_t fx_rec, fx_seg;     /* record bytes, segment bytes (fx_rows records) */
  size_t fx_off_sf, fx_off_ids, fx_off_w; /* field offsets inside a record */
  int64_t fx_rows;           /* max_m + 1: the header row, then the token rows */
  uint8_t *fx_loc, *fx_all;  /* own segment, P gathered segments (backend memory) */
  uint8_t *fx_packed, *fx_sf;
  int32_t *fx_ids;
  float *fx_wts;
  void *fx_partial;          /* [P * fx_rows, H] partial_dtype */
  void *fx_red;              /* [fx_rows, H] partial_dtype: the combine output */
  int64_t *fx_ones, *fx_rows_each; /* [size] host: 1 segment / fx_rows rows per rank */
  /* The header source: engine-owned host memory, because a captured graph
   * copies from this address every time it is launched. */
  int64_t fx_hdr_src[2];
  int capturing;             /* inside a graph capture: no host waits */
  uint8_t *pk_loc, *pk_all;  /* variable-size allgather: [max_m], [max_M] records */
  void *graphs;              /* engine_graph.c: one captured step per m (device backend) */
  /* Stage timing on a device backend: marks on the stream, read once at
   * the end of the step (no stream sync per stage). NULL: sync + clock. */
#define EPM__MARKS 24
  void *marks[EPM__MARKS];

  pthread_mutex_t stats_mu;
  epm_engine_stats_t stats;
  /* Per-expert load of this rank's own tokens (epm_engine_expert_load),
   * under stats_mu; ids_host stages the routed ids of a device backend. */
  uint64_t *load_total, *load_last;
  int32_t *ids_host;
  /* alltoall: [E] the rank holding each expert's one slot (host). */
  int32_t *expert_rank;
};

/* Per-step timer: engine.c. */
typedef struct {
  epm_engine_t *e;
  double t, s[EPM_STAGE_COUNT];
  int nmarks;                    /* marks recorded this step (device) */
  int mark_stage[EPM__MARKS];    /* the stage each mark closes (-1: the start) */
  /* comm traffic before the dispatch, after it, after the combine */
  epm_comm_traffic_t tr[3];
} epm__step_timer_t;
epm_status_t epm__engine_stage_end(epm__step_timer_t *tm, epm_engine_stage_t stage);
/* After the step's last stage: the stage times from the marks (waits for
 * the last one, so the step's work is complete on return). */
epm_status_t epm__engine_marks_read(epm__step_timer_t *tm);

/* The expert stage over `rows` rows in chunks of chunk_rows (engine.c). */
epm_status_t epm__engine_experts(epm_engine_t *e, const uint8_t *packed, const uint8_t *sf, const int32_t *ids,
                                 const float *wts, int64_t rows, float a1, void *partial);

/* engine_fixed.c: the token record (also the variable-size allgather's) */
epm_status_t epm__records_pack(epm_engine_t *e, uint8_t *rows, int64_t n);
epm_status_t epm__records_unpack(epm_engine_t *e, const uint8_t *rows, int64_t n, uint8_t *packed, uint8_t *sf,
                                 int32_t *ids, float *wts);
epm_status_t epm__fixed_layout(epm_engine_t *e);
epm_status_t epm__fixed_alloc(epm_engine_t *e);
void epm__fixed_free(epm_engine_t *e);
void epm__fixed_borrow(epm_engine_t *e, const epm_engine_t *o);
void epm__fixed_header(epm_engine_t *e, int64_t m, int failed);
epm_status_t epm__fixed_dispatch(epm_engine_t *e, int64_t m);
epm_status_t epm__fixed_counts(epm_engine_t *e, int64_t *M);
epm_status_t epm__fixed_combine(epm_engine_t *e, epm__step_timer_t *tm, int64_t m, float a1);

/* engine_graph.c: the fixed-capacity step as one CUDA graph (device backend). */
epm_status_t epm__graph_step(epm_engine_t *e, epm__step_timer_t *tm, const epm_bf16_t *x, const float *logits,
                             int64_t m, epm_bf16_t *y, int in_backend_mem, int64_t *M);
void epm__graph_free(epm_engine_t *e);
size_t epm__graph_count(const epm_engine_t *e);

/* What the step decided after the counts exchange (engine_a2a.c fills it). */
typedef struct {
  epm_dispatch_mode_t mode;
  int64_t M;              /* tokens of all ranks */
  int64_t rows_in;        /* alltoall: rows this rank receives */
  int64_t rows_out;       /* alltoall: rows this rank sends */
  int a2a_over;           /* auto: some rank's rows exceed the receive capacity */
  double model_s[EPM_DISPATCH_MODES];
  uint64_t model_bytes[EPM_DISPATCH_MODES];
} epm__step_plan_t;

/* engine_a2a.c */
/* Buffers of the alltoall mode (plan rows given); frees nothing on error
 * (the caller's free path does). */
epm_status_t epm__a2a_alloc(epm_engine_t *e, int64_t send_rows, int64_t recv_rows);
void epm__a2a_free(epm_engine_t *e);
void epm__a2a_borrow(epm_engine_t *e, const epm_engine_t *o);
/* Per-engine host arrays (not shared with other engines). */
/* `p`: the engine's placement during create (NULL = the default split). */
epm_status_t epm__a2a_host_init(epm_engine_t *e, const epm_placement_t *p);
void epm__a2a_host_free(epm_engine_t *e);
/* Before the exchange (local; an error is reported to the peers by the
 * exchange): which rank each of this rank's tokens goes to. */
epm_status_t epm__a2a_route_plan(epm_engine_t *e, int64_t m);
/* The rows exchange (always called, with m or STEP_FAILED), the counts
 * check, the capacity check and the mode choice. Same result on every rank. */
epm_status_t epm__a2a_exchange(epm_engine_t *e, int64_t m_or_failed, epm_status_t local, epm__step_plan_t *sp);
/* Dispatch, experts over the received rows, combine: y32 [m, H] (backend
 * memory) gets the routed sum, bf16-rounded when partials are bf16. */
epm_status_t epm__a2a_run(epm_engine_t *e, epm__step_timer_t *tm, const epm__step_plan_t *sp, int64_t m,
                          float a1);

#endif
