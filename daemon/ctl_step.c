/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_step.c — `epmoectl step`: one EP step across the ranks of an mpirun
 * job, in-process (no daemon), with the EP=1 reference check.
 *
 * The seed defines the GLOBAL token set (epmoe/tokens.h): rank r takes rows
 * [m_0 + ... + m_{r-1}, + m_r), so any split of the same total is the same
 * problem. Each rank generates only its expert slots of the seeded layer
 * (expert e depends only on (seed, layer, e); the slots follow the default
 * placement, --redundant-experts or --placement); with --check rank 0 also
 * generates the whole layer and recomputes the step with the reference
 * full-layer function (EP = 1).
 *
 * Error measure of --check (see docs/ARCHITECTURE.md "Engine"):
 *   max_err = max_i |y_i - ref_i| / max_j |ref_j|
 * EP=N differs from EP=1 only in the fp32 summation order of the partials
 * (and, with bf16 partials, their rounding), which can flip the bf16
 * rounding of the routed sum and then of the output: at most about two bf16
 * ulps at the output's scale, 2^-6. Default tolerance 2^-6 = 0.015625;
 * EP=1 is bit-identical to the reference (use --tolerance 0 to demand it).
 *
 * Exit: 0 ok, 1 step failed / check above tolerance / repeats differ, 64 usage (EPM_EXIT_USAGE).
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/clock.h"
#include "ctl.h"
#include "epmoe/backend.h"
#include "epmoe/bootstrap.h"
#include "epmoe/comm.h"
#include "epmoe/engine.h"
#include "epmoe/group.h"
#include "epmoe/layer.h"
#include "epmoe/log.h"
#include "epmoe/moe_ref.h"
#include "epmoe/placement.h"
#include "epmoe/tokens.h"

#define MAX_RANKS 4096

typedef struct {
  const char *preset;
  long long *tokens; /* per rank, from --tokens-per-rank */
  int ntokens;
  long long seed, weights_seed, layer, repeat, warmup, experts, top_k, threads, redundant;
  const char *routing; /* --routing override, NULL = the preset's */
  const char *placement; /* --placement FILE, NULL = the default split */
  int weights_seed_set;
  epm_backend_kind_t backend;
  epm_scale_mode_t scale;
  epm_dtype_t partial;
  int kernels; /* epm_kernels_t */
  int shared, check, json;
  double tol;
  epm_opt_list_t tokens_list; /* --tokens-per-rank as parsed; copied into tokens */
  epm_dispatch_mode_t dispatch;
  long long recv_capacity, workspace_mb;
  const char *dispatch_latency_us, *dispatch_gbps; /* auto's cost terms, "AG,A2A" */
  epm_dispatch_cost_t cost;                        /* parsed from the two above */
  int calibrate, graph;
} step_opts_t;

#define AT(field) EPM_OPT_AT(step_opts_t, field)
/* counts: int64 in [lo, hi], K/M/G suffixes allowed */
#define COUNT(lo, hi) .kind = EPM_OPT_INT64, .min = (lo), .max = (hi)

static const epm_opt_choice_t backends[] = {{"cpu", EPM_BACKEND_CPU}, {"cuda", EPM_BACKEND_CUDA}, {NULL, 0}};
static const epm_opt_choice_t scales[] = {{"static", EPM_SCALE_STATIC}, {"dynamic", EPM_SCALE_DYNAMIC}, {NULL, 0}};
static const epm_opt_choice_t partials[] = {{"f32", EPM_DTYPE_F32}, {"bf16", EPM_DTYPE_BF16}, {NULL, 0}};
static const epm_opt_choice_t dispatches[] = {
    {"allgather", EPM_DISPATCH_ALLGATHER}, {"alltoall", EPM_DISPATCH_ALLTOALL}, {"auto", EPM_DISPATCH_AUTO}, {NULL, 0}};
static const epm_opt_choice_t kernel_sets[] = {{"v1", EPM_KERNELS_V1}, {"v2", EPM_KERNELS_V2}, {NULL, 0}};

static const epm_opt_t step_opts[] = {
    {.name = "preset", .kind = EPM_OPT_STR, AT(preset), .flags = EPM_OPT_REQUIRED, .arg = "NAME",
     .help = "model dims: deepseek-r1, qwen3-235b, llama4-maverick, tiny"},
    {.name = "tokens-per-rank", .kind = EPM_OPT_LIST, AT(tokens_list), .min = 0, .max = 1LL << 40,
     .max_items = MAX_RANKS, .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED, .arg = "LIST",
     .help = "one count per rank (P values, each >= 0), e.g. 4,0,7,1"},
    {.name = "seed", COUNT(0, 1LL << 62), AT(seed), .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED, .arg = "S",
     .help = "token set seed (x and router logits)"},
    {.name = "weights-seed", COUNT(0, 1LL << 62), AT(weights_seed), .flags = EPM_OPT_KMG, .arg = "W",
     .help = "layer weights seed (default: S)"},
    {.name = "layer", COUNT(0, 1 << 20), AT(layer), .def = "0", .flags = EPM_OPT_KMG, .arg = "L",
     .help = "layer index"},
    {.name = "experts", COUNT(1, 1 << 16), AT(experts), .flags = EPM_OPT_KMG, .arg = "E",
     .help = "override the preset's routed expert count"},
    {.name = "redundant-experts", COUNT(0, 1 << 16), AT(redundant), .def = "0", .flags = EPM_OPT_KMG, .arg = "N",
     .help = "N extra slots holding second copies of experts 0..N-1\n(default placement)"},
    {.name = "placement", .kind = EPM_OPT_STR, AT(placement), .arg = "FILE",
     .help = "expert placement map (JSON, docs/PLACEMENT.md) instead of\nthe default split"},
    {.name = "routing", .kind = EPM_OPT_STR, AT(routing), .arg = "NAME",
     .help = "override the routing method (default, renormalize,\n"
             "renormalize-naive, deepseek-v3, llama4, topk); methods other\n"
             "than deepseek-v3 drop the expert groups, llama4 implies top-1"},
    {.name = "top-k", COUNT(1, 1 << 16), AT(top_k), .flags = EPM_OPT_KMG, .arg = "K",
     .help = "override the preset's top-k"},
    {.name = "backend", .kind = EPM_OPT_ENUM, AT(backend), .def = "cpu", .choices = backends,
     .help = "where the stages run (cuda uses the nccl comm)"},
    {.name = "scale", .kind = EPM_OPT_ENUM, AT(scale), .def = "static", .choices = scales,
     .help = "global scale: the layer's input_scale, or the\nall-reduced amax of this step"},
    {.name = "no-shared", .kind = EPM_OPT_SET, AT(shared), .value = 0, .help = "leave out the shared expert"},
    {.name = "partial", .kind = EPM_OPT_ENUM, AT(partial), .def = "f32", .choices = partials,
     .help = "reduce-scatter dtype"},
    {.name = "dispatch", .kind = EPM_OPT_ENUM, AT(dispatch), .def = "allgather", .choices = dispatches,
     .help = "allgather, alltoall, or auto (per step, by the cost model)"},
    {.name = "recv-capacity", COUNT(0, 1LL << 40), AT(recv_capacity), .def = "0", .flags = EPM_OPT_KMG, .arg = "N",
     .help = "alltoall: most token rows a rank receives per step\n(0 = any routing)"},
    {.name = "workspace-mb", COUNT(0, 1LL << 30), AT(workspace_mb), .def = "0", .flags = EPM_OPT_KMG, .arg = "MB",
     .help = "expert-stage workspace budget per rank in MiB; the experts\nrun in chunks of rows that fit (0 = unbounded)"},
    {.name = "graph", .kind = EPM_OPT_FLAG, AT(graph),
     .help = "fixed-capacity step: one packed allgather, no sizes\nexchange; on cuda one CUDA graph per step"},
    {.name = "dispatch-latency-us", .kind = EPM_OPT_STR, AT(dispatch_latency_us), .arg = "AG,A2A",
     .help = "auto's per-call latency of each mode (us)"},
    {.name = "dispatch-gbps", .kind = EPM_OPT_STR, AT(dispatch_gbps), .arg = "AG,A2A",
     .help = "auto's bandwidth of each mode (GB/s)"},
    {.name = "calibrate-dispatch", .kind = EPM_OPT_FLAG, AT(calibrate),
     .help = "measure those terms with this job's comm, print them, and exit"},
    {.name = "threads", COUNT(1, 1024), AT(threads), .flags = EPM_OPT_KMG, .arg = "T",
     .help = "reference threads per rank (default: cores / ranks on the node)"},
    {.name = "kernels", .kind = EPM_OPT_ENUM, AT(kernels), .def = "v1", .choices = kernel_sets,
     .help = "cuda kernels: v1 (reference) or v2 (fast)"},
    {.name = "repeat", COUNT(1, 1 << 20), AT(repeat), .def = "1", .flags = EPM_OPT_KMG,
     .help = "run the step N times; the output must be bit-identical"},
    {.name = "warmup", COUNT(0, 1000), AT(warmup), .def = "0", .flags = EPM_OPT_KMG,
     .help = "untimed steps first (NCCL connects on first use)"},
    {.name = "check", .kind = EPM_OPT_FLAG, AT(check),
     .help = "rank 0 recomputes the EP=1 result with the reference and\n"
             "prints max_err = max|y-ref| / max|ref|; exit 1 above tolerance"},
    {.name = "tolerance", .kind = EPM_OPT_DOUBLE, AT(tol), .def = "0.015625", .fmin = 0, .fmax = 1e30, .arg = "X",
     .help = "check tolerance (2^-6; 0 = bit-identical)"},
    {.name = "json", .kind = EPM_OPT_FLAG, AT(json), .help = "one JSON object on stdout (rank 0)"},
};

/* Usage errors happen before MPI is up; print them once per job. */
static int launcher_rank0(void) {
  const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    if (v) return strcmp(v, "0") == 0;
  }
  return 1;
}

/* 0 ok, -1 help printed, else the exit code (message printed on rank 0). */
static int parse_args(int argc, char **argv, step_opts_t *o) {
  epm_opt_group_t g = {NULL, step_opts, sizeof step_opts / sizeof step_opts[0], o, NULL};
  epm_opt_cmd_t cmd = {
      .prog = "epmoectl step",
      .synopsis = "usage: mpirun -np P epmoectl step --preset NAME --tokens-per-rank a,b,... --seed S [options]",
      .about = "Run one MoE layer step across the P ranks of the job (expert parallel, in-process):\n"
               "route -> quantize -> allgather-v -> local experts -> reduce-scatter-v -> + shared expert.\n"
               "The seed defines the global token set; rank r takes the r-th slice of it.",
      .epilog = "Prints per-rank stage timings (mean over the repeats) and the checksum of the global\n"
                "output (gathered to rank 0 in rank order): fnv1a64 of the bf16 bytes, sum, max |y|.\n"
                "Exit: 0 ok, 1 step failed / check above tolerance / repeats differ, 64 usage error.",
      .groups = &g,
      .ngroups = 1};
  epm_opt_result_t res;
  epm_routing_method_t m;
  memset(o, 0, sizeof *o);
  o->shared = 1;
  o->weights_seed = -1; /* not given: the token seed */
  epm_status_t st = epm_opt_parse(&cmd, argc, argv, &res);
  if (st == EPM_OK && (res.help || res.version)) {
    if (res.help) epm_opt_help(stdout, &cmd);
    else printf("epmoectl %s\n", EPMOE_VERSION_STRING);
    epm_opt_free(&cmd);
    return -1;
  }
  if (st == EPM_OK && o->routing && epm_routing_method_parse(o->routing, &m) != EPM_OK)
    st = epm_error_wrap(EPM_ERR_INVALID_ARG, "bad value for --routing");
  epm_dispatch_cost_default(&o->cost);
  if (st == EPM_OK && (o->dispatch_latency_us || o->dispatch_gbps) &&
      epm_dispatch_cost_parse(o->dispatch_latency_us, o->dispatch_gbps, &o->cost) != EPM_OK)
    st = epm_error_wrap(EPM_ERR_INVALID_ARG, "bad value for --dispatch-latency-us / --dispatch-gbps");
  if (st == EPM_OK) {
    o->tokens = calloc(o->tokens_list.n, sizeof *o->tokens);
    if (!o->tokens) st = epm_error(EPM_ERR_NOMEM, "no memory for %zu token counts", o->tokens_list.n);
    for (size_t r = 0; o->tokens && r < o->tokens_list.n; r++) o->tokens[r] = o->tokens_list.v[r];
    o->ntokens = (int)o->tokens_list.n; /* at most MAX_RANKS */
  }
  epm_opt_free(&cmd);
  if (st != EPM_OK) {
    if (launcher_rank0()) {
      fprintf(stderr, "epmoectl step: %s\n", epm_last_error());
      if (st == EPM_ERR_INVALID_ARG) epm_opt_usage(stderr, &cmd);
    }
    return st == EPM_ERR_INVALID_ARG ? EPM_EXIT_USAGE : 1;
  }
  o->weights_seed_set = o->weights_seed >= 0;
  if (!o->weights_seed_set) o->weights_seed = o->seed;
  return 0;
}

/* Everything one rank holds; freed by step_free. */
typedef struct {
  step_opts_t o;
  epm_bootstrap_t boot;
  int booted, rank, P;
  epm_model_dims_t dims;
  epm_placement_t placement; /* --placement, when given */
  epm_group_t *group; /* backend, comm, the layer and its engine */
  epm_engine_t *eng;  /* the group's engine of --layer */
  int64_t off, m, M, max_m;
  epm_bf16_t *x, *y, *y_all; /* y_all: rank 0 */
  float *logits;
} step_t;

static void step_free(step_t *s) {
  epm_group_destroy(s->group);
  epm_placement_free(&s->placement);
  free(s->x);
  free(s->y);
  free(s->y_all);
  free(s->logits);
  free(s->o.tokens);
  if (s->booted) epm_bootstrap_finalize(&s->boot);
}

/* Gather every rank's y rows to rank 0, in rank order (rows of H bf16). */
static epm_status_t gather_output(step_t *s) {
  const size_t row = (size_t)s->dims.hidden * sizeof(epm_bf16_t);
  return epm_bootstrap_gather_bytes(&s->boot, 0, s->y, (size_t)s->m * row, s->y_all,
                                    s->rank == 0 ? (size_t)s->M * row : 0, NULL);
}

static epm_status_t setup(step_t *s) {
  step_opts_t *o = &s->o;
  EPM_TRY(epm_model_preset(o->preset, &s->dims));
  if (o->experts) s->dims.num_experts = o->experts;
  if (o->routing) {
    EPM_TRY(epm_routing_method_parse(o->routing, &s->dims.routing));
    if (s->dims.routing != EPM_ROUTING_DEEPSEEK_V3) {
      s->dims.n_group = s->dims.topk_group = 1;
      s->dims.routed_scaling_factor = 1.0f;
    }
    if (s->dims.routing == EPM_ROUTING_LLAMA4) s->dims.top_k = 1;
  }
  if (o->top_k) s->dims.top_k = o->top_k;
  EPM_TRY(epm_model_dims_validate(&s->dims));
  if (o->placement) EPM_TRY(epm_placement_load_file(o->placement, &s->placement));
  if (o->placement && o->redundant && o->redundant != s->placement.num_slots - s->placement.num_experts)
    return epm_error(EPM_ERR_INVALID_ARG, "--redundant-experts %lld but the placement %s has %lld redundant slots",
                     o->redundant, o->placement, (long long)(s->placement.num_slots - s->placement.num_experts));
  /* Every check above depends only on the arguments, so all ranks return
   * here alike or all reach the (collective) group creation below. */
  s->M = 0;
  s->max_m = 1;
  for (int r = 0; r < s->P; r++) {
    if (r == s->rank) s->off = s->M;
    s->M += o->tokens[r];
    if (o->tokens[r] > s->max_m) s->max_m = o->tokens[r];
  }
  s->m = o->tokens[s->rank];
  const int64_t H = s->dims.hidden, E = s->dims.num_experts;

  /* --backend cuda asked the bootstrap for a GPU per rank, so the group
   * pairs a cuda backend with NCCL; cpu gets MPI. */
  const int64_t layer_id = o->layer;
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = o->preset;
  gc.dims = &s->dims;
  gc.seed = (uint64_t)o->weights_seed;
  gc.layer_ids = &layer_id;
  gc.num_layers = 1;
  gc.threads = (int)o->threads;
  gc.max_tokens_per_rank = s->max_m;
  gc.scale_mode = o->scale;
  gc.shared_expert = o->shared;
  gc.partial_dtype = o->partial;
  gc.dispatch = o->dispatch;
  gc.recv_capacity = o->recv_capacity;
  gc.workspace_bytes = (size_t)o->workspace_mb << 20;
  gc.fixed_capacity = o->graph;
  gc.dispatch_cost = o->cost;
  gc.placement = o->placement ? &s->placement : NULL;
  gc.redundant_experts = o->redundant;
  gc.kernels = (epm_kernels_t)o->kernels;
  EPM_TRY(epm_group_create(&gc, &s->boot, &s->group));
  s->eng = epm_group_engine(s->group, layer_id);

  size_t nx = (size_t)(s->m * H), nl = (size_t)(s->m * E);
  s->x = malloc((nx ? nx : 1) * sizeof *s->x);
  s->y = malloc((nx ? nx : 1) * sizeof *s->y);
  s->logits = malloc((nl ? nl : 1) * sizeof *s->logits);
  if (s->rank == 0) s->y_all = malloc((size_t)(s->M * H > 0 ? s->M * H : 1) * sizeof *s->y_all);
  if (!s->x || !s->y || !s->logits || (s->rank == 0 && !s->y_all))
    return epm_error(EPM_ERR_NOMEM, "token buffers for %lld tokens x H %lld", (long long)s->m, (long long)H);
  EPM_TRY(epm_tokens_generate(&s->dims, (uint64_t)o->seed, s->off, s->m, s->x, s->logits));

  return EPM_OK;
}

typedef struct {
  int done;
  double max_err, rel_l2, seconds;
  int64_t mismatches;
  epm_moe_checksum_t ref_sum;
} check_result_t;

/* Rank 0: the EP=1 reference for the global token set. */
static epm_status_t run_check(step_t *s, float input_scale, check_result_t *cr) {
  const int64_t H = s->dims.hidden, E = s->dims.num_experts, n = s->M * H;
  epm_layer_t full = {0};
  epm_bf16_t *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x), *ref = malloc((size_t)(n > 0 ? n : 1) * sizeof *ref);
  float *logits = malloc((size_t)(s->M * E > 0 ? s->M * E : 1) * sizeof *logits);
  epm_status_t st = EPM_OK;
  double t0 = epm_clock_s();
  if (!x || !ref || !logits) {
    st = epm_error(EPM_ERR_NOMEM, "check buffers for %lld tokens", (long long)s->M);
    goto out;
  }
  EPM_TRY_GOTO(epm_tokens_generate(&s->dims, (uint64_t)s->o.seed, 0, s->M, x, logits), st, out);
  EPM_TRY_GOTO(epm_layer_generate(&s->dims, s->o.layer, (uint64_t)s->o.weights_seed, 0, E, &full), st, out);
  full.input_scale = input_scale; /* the dynamic scale, when used; else unchanged */
  epm_moe_ref_opts_t ro = EPM_MOE_REF_OPTS_INIT;
  ro.include_shared = s->o.shared;
  ro.threads = epm_moe_ref_threads(0);
  EPM_TRY_GOTO(epm_moe_ref_layer(&full, x, logits, s->M, &ro, NULL, NULL, NULL, ref, NULL), st, out);
  double refmax = 0.0, dmax = 0.0, d2 = 0.0, r2 = 0.0;
  cr->mismatches = 0;
  for (int64_t i = 0; i < n; i++) {
    double a = epm_bf16_to_f32(s->y_all[i]), b = epm_bf16_to_f32(ref[i]);
    double d = fabs(a - b);
    if (!(d <= dmax)) dmax = isnan(d) ? INFINITY : d > dmax ? d : dmax;
    if (fabs(b) > refmax) refmax = fabs(b);
    cr->mismatches += s->y_all[i] != ref[i];
    d2 += d * d;
    r2 += b * b;
  }
  cr->max_err = dmax == 0.0 ? 0.0 : refmax > 0.0 ? dmax / refmax : INFINITY;
  cr->rel_l2 = d2 == 0.0 ? 0.0 : r2 > 0.0 ? sqrt(d2 / r2) : INFINITY;
  epm_moe_checksum_bf16(ref, n, &cr->ref_sum);
  cr->done = 1;
out:
  cr->seconds = epm_clock_s() - t0;
  epm_layer_free(&full);
  free(x);
  free(ref);
  free(logits);
  return st;
}

/* Per-rank stage means (ms) and the last step's dispatch numbers gathered
 * to rank 0: [P][NSTAT], NSTAT = STAGE_COUNT + the DISP_ values. */
enum { DISP_A2A_STEPS, DISP_ROWS, DISP_CHUNKS, DISP_D_SENT, DISP_D_RECV, DISP_C_SENT, DISP_C_RECV, DISP_N };
#define NSTAT (EPM_STAGE_COUNT + DISP_N)
static const char *const disp_names[DISP_N] = {"alltoall_steps", "expert_rows",  "expert_chunks", "dispatch_sent",
                                               "dispatch_recv",  "combine_sent", "combine_recv"};
static double *gather_stages(step_t *s) {
  epm_engine_stats_t st;
  double mine[NSTAT], *all = NULL;
  epm_engine_stats(s->eng, &st);
  for (int i = 0; i < EPM_STAGE_COUNT; i++) mine[i] = st.steps ? 1e3 * st.sum_s[i] / (double)st.steps : 0.0;
  const double d[DISP_N] = {(double)st.steps_mode[EPM_DISPATCH_ALLTOALL], (double)st.last_expert_rows,
                            (double)st.last_expert_chunks,
                            (double)st.last_dispatch_sent, (double)st.last_dispatch_recv,
                            (double)st.last_combine_sent, (double)st.last_combine_recv};
  memcpy(mine + EPM_STAGE_COUNT, d, sizeof d);
  const size_t bytes = sizeof mine;
  if (s->rank == 0) all = calloc((size_t)s->P * NSTAT, sizeof *all);
  /* Every rank joins the gather, even when rank 0 could not allocate (it
   * then offers a 0-byte buffer and the gather fails on every rank). */
  if (epm_bootstrap_gather_bytes(&s->boot, 0, mine, bytes, all, all ? (size_t)s->P * bytes : 0, NULL) != EPM_OK) {
    free(all);
    return NULL;
  }
  return all;
}

static const char *scale_name(epm_scale_mode_t m) { return m == EPM_SCALE_STATIC ? "static" : "dynamic"; }

static void print_text(step_t *s, const double *stages, const epm_moe_checksum_t *cs, int identical,
                       const check_result_t *cr, float input_scale) {
  const step_opts_t *o = &s->o;
  printf("step: preset %s (H %lld, I %lld, E %lld, top-%lld, %s%s), EP %d, M %lld tokens, seed %lld, layer %lld\n",
         o->preset, (long long)s->dims.hidden, (long long)s->dims.intermediate, (long long)s->dims.num_experts,
         (long long)s->dims.top_k, epm_routing_method_name(s->dims.routing),
         s->dims.shared_experts && o->shared ? ", shared expert" : "", s->P, (long long)s->M, o->seed, o->layer);
  {
    const epm_placement_t *pl = epm_group_placement(s->group);
    double imb = 1.0;
    int64_t lo = pl->num_slots, hi = 0;
    for (int r = 0; r < s->P; r++) {
      const int64_t n = epm_placement_rank_slots(pl, r);
      lo = n < lo ? n : lo;
      hi = n > hi ? n : hi;
    }
    (void)epm_placement_imbalance(pl, NULL, &imb, NULL, NULL);
    printf("      placement %s: %lld slots (%lld redundant), %lld..%lld per rank, uniform-load imbalance %.3f\n",
           o->placement ? o->placement : "default", (long long)pl->num_slots,
           (long long)(pl->num_slots - pl->num_experts), (long long)lo, (long long)hi, imb);
  }
  printf("      backend %s, comm %s, scale %s (input_scale %g), partials %s, repeat %lld\n",
         epm_backend_name(epm_group_backend(s->group)), epm_comm_backend_name(epm_group_comm(s->group)), scale_name(o->scale), (double)input_scale,
         o->partial == EPM_DTYPE_F32 ? "f32" : "bf16", o->repeat);
  printf("stage times, ms (mean of %lld step%s)\n%4s %8s", o->repeat, o->repeat > 1 ? "s" : "", "rank", "tokens");
  for (int i = 0; i < EPM_STAGE_COUNT; i++) printf(" %14s", epm_engine_stage_name((epm_engine_stage_t)i));
  printf("\n");
  for (int r = 0; r < s->P; r++) {
    printf("%4d %8lld", r, o->tokens[r]);
    for (int i = 0; i < EPM_STAGE_COUNT; i++) printf(" %14.3f", stages[r * NSTAT + i]);
    printf("\n");
  }
  printf("dispatch %s: %.0f of %lld measured steps alltoall; last step's bytes to/from other ranks\n%4s",
         epm_dispatch_mode_name(o->dispatch), stages[EPM_STAGE_COUNT + DISP_A2A_STEPS], o->repeat, "rank");
  for (int i = 1; i < DISP_N; i++) printf(" %14s", disp_names[i]);
  printf("\n");
  for (int r = 0; r < s->P; r++) {
    printf("%4d", r);
    for (int i = 1; i < DISP_N; i++) printf(" %14.0f", stages[r * NSTAT + EPM_STAGE_COUNT + i]);
    printf("\n");
  }
  printf("checksum fnv1a64 %016llx sum %.9g absmax %.9g%s\n", (unsigned long long)cs->fnv1a64, cs->sum, cs->absmax,
         o->repeat > 1 ? (identical ? " (bit-identical across repeats)" : " (REPEATS DIFFER)") : "");
  if (cr->done)
    printf("check vs EP=1 reference: max_err %.3g (max|y-ref|/max|ref|), rel_l2 %.3g, %lld of %lld elements differ, "
           "tolerance %g: %s (reference %.2f s)\n",
           cr->max_err, cr->rel_l2, (long long)cr->mismatches, (long long)(s->M * s->dims.hidden), o->tol,
           cr->max_err <= o->tol ? "PASS" : "FAIL", cr->seconds);
}

static void print_json(step_t *s, const double *stages, const epm_moe_checksum_t *cs, int identical,
                       const check_result_t *cr, float input_scale) {
  const step_opts_t *o = &s->o;
  char hex[20];
  json_t *root = json_object(), *toks = json_array(), *ranks = json_array();
  for (int r = 0; r < s->P; r++) {
    json_t *rk = json_object(), *ms = json_object();
    json_array_append_new(toks, json_integer(o->tokens[r]));
    json_object_set_new(rk, "rank", json_integer(r));
    json_object_set_new(rk, "tokens", json_integer(o->tokens[r]));
    for (int i = 0; i < EPM_STAGE_COUNT; i++)
      json_object_set_new(ms, epm_engine_stage_name((epm_engine_stage_t)i), json_real(stages[r * NSTAT + i]));
    json_object_set_new(rk, "stage_ms", ms);
    json_t *dj = json_object();
    for (int i = 0; i < DISP_N; i++)
      json_object_set_new(dj, disp_names[i], json_integer((json_int_t)stages[r * NSTAT + EPM_STAGE_COUNT + i]));
    json_object_set_new(rk, "dispatch", dj);
    json_array_append_new(ranks, rk);
  }
  json_object_set_new(root, "preset", json_string(o->preset));
  json_object_set_new(root, "hidden", json_integer(s->dims.hidden));
  json_object_set_new(root, "intermediate", json_integer(s->dims.intermediate));
  json_object_set_new(root, "experts", json_integer(s->dims.num_experts));
  json_object_set_new(root, "top_k", json_integer(s->dims.top_k));
  json_object_set_new(root, "ep", json_integer(s->P));
  json_object_set_new(root, "slots", json_integer(epm_group_placement(s->group)->num_slots));
  json_object_set_new(root, "tokens_per_rank", toks);
  json_object_set_new(root, "tokens", json_integer(s->M));
  json_object_set_new(root, "seed", json_integer(o->seed));
  json_object_set_new(root, "weights_seed", json_integer(o->weights_seed));
  json_object_set_new(root, "layer", json_integer(o->layer));
  json_object_set_new(root, "backend", json_string(epm_backend_name(epm_group_backend(s->group))));
  json_object_set_new(root, "comm", json_string(epm_comm_backend_name(epm_group_comm(s->group))));
  json_object_set_new(root, "scale", json_string(scale_name(o->scale)));
  json_object_set_new(root, "input_scale", json_real(input_scale));
  json_object_set_new(root, "shared", json_boolean(o->shared && s->dims.shared_experts));
  json_object_set_new(root, "partial", json_string(o->partial == EPM_DTYPE_F32 ? "f32" : "bf16"));
  json_object_set_new(root, "repeat", json_integer(o->repeat));
  json_object_set_new(root, "dispatch", json_string(epm_dispatch_mode_name(o->dispatch)));
  json_object_set_new(root, "ranks", ranks);
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)cs->fnv1a64);
  json_t *sum = json_object();
  json_object_set_new(sum, "fnv1a64", json_string(hex));
  json_object_set_new(sum, "sum", json_real(cs->sum));
  json_object_set_new(sum, "absmax", json_real(cs->absmax));
  json_object_set_new(root, "checksum", sum);
  json_object_set_new(root, "repeats_identical", json_boolean(identical));
  if (cr->done) {
    json_t *c = json_object();
    json_object_set_new(c, "max_err", json_real(cr->max_err));
    json_object_set_new(c, "rel_l2", json_real(cr->rel_l2));
    json_object_set_new(c, "mismatches", json_integer(cr->mismatches));
    json_object_set_new(c, "tolerance", json_real(o->tol));
    json_object_set_new(c, "pass", json_boolean(cr->max_err <= o->tol));
    json_object_set_new(c, "seconds", json_real(cr->seconds));
    json_object_set_new(root, "check", c);
  }
  char *text = json_dumps(root, JSON_COMPACT);
  if (text) printf("%s\n", text);
  free(text);
  json_decref(root);
}

int epm_ctl_step(int argc, char **argv) {
  step_t s;
  memset(&s, 0, sizeof s);
  int rc = parse_args(argc, argv, &s.o);
  if (rc) {
    free(s.o.tokens);
    return rc < 0 ? 0 : rc;
  }
  epm_bootstrap_opts_t bo = {.gpu_mode = s.o.backend == EPM_BACKEND_CUDA ? EPM_GPU_REQUIRE : EPM_GPU_OFF};
  if (epm_bootstrap_init(&argc, &argv, &bo, &s.boot) != EPM_OK) {
    fprintf(stderr, "epmoectl step: %s\n", epm_last_error());
    free(s.o.tokens);
    return 1;
  }
  s.booted = 1;
  s.rank = s.boot.ep_rank;
  s.P = s.boot.ep_size;
  epm_log_set_rank(s.boot.world_rank, s.boot.world_size);
  if (s.o.ntokens != s.P) {
    if (s.rank == 0)
      fprintf(stderr,
              "epmoectl step: --tokens-per-rank has %d value%s but the job has %d rank%s; give one count per "
              "rank (mpirun -np %d)\n",
              s.o.ntokens, s.o.ntokens == 1 ? "" : "s", s.P, s.P == 1 ? "" : "s", s.o.ntokens);
    step_free(&s);
    return EPM_EXIT_USAGE;
  }
  /* Setup failures are the same on every rank (same arguments) or local
   * (memory); agree on the outcome before the first step. */
  epm_status_t st = setup(&s);
  int bad = st != EPM_OK, n_bad = 0, first_bad = -1;
  if (epm_bootstrap_agree(&s.boot, !bad, &n_bad, &first_bad) != EPM_OK) {
    fprintf(stderr, "epmoectl step: rank %d: %s\n", s.rank, epm_last_error());
    step_free(&s);
    return 1;
  }
  /* Every rank failing means the arguments are wrong: say it once. */
  if (bad && n_bad == s.P && s.rank == 0)
    fprintf(stderr, "epmoectl step: %s\n", epm_last_error());
  else if (bad && n_bad < s.P)
    fprintf(stderr, "epmoectl step: rank %d: setup: %s\n", s.rank, epm_last_error());
  if (n_bad) {
    step_free(&s);
    return st == EPM_ERR_INVALID_ARG ? EPM_EXIT_USAGE : 1;
  }

  if (s.o.calibrate) { /* the dispatch cost terms for this job's comm, then exit */
    epm_dispatch_cost_t c;
    st = epm_dispatch_calibrate(epm_group_comm(s.group), s.dims.hidden, s.dims.top_k, s.o.partial, 0, &c);
    char flags[160];
    snprintf(flags, sizeof flags, "--dispatch-latency-us %.1f,%.1f --dispatch-gbps %.3f,%.3f", c.latency_us[0],
             c.latency_us[1], c.gbps[0], c.gbps[1]);
    if (st != EPM_OK) fprintf(stderr, "epmoectl step: rank %d: calibration: %s\n", s.rank, epm_last_error());
    else if (s.rank == 0 && s.o.json)
      printf("{\"comm\":\"%s\",\"ep\":%d,\"hidden\":%lld,\"top_k\":%lld,\"latency_us\":{\"allgather\":%.3f,"
             "\"alltoall\":%.3f},\"gbps\":{\"allgather\":%.4f,\"alltoall\":%.4f},\"flags\":\"%s\"}\n",
             epm_comm_backend_name(epm_group_comm(s.group)), s.P, (long long)s.dims.hidden, (long long)s.dims.top_k,
             c.latency_us[0], c.latency_us[1], c.gbps[0], c.gbps[1], flags);
    else if (s.rank == 0)
      printf("dispatch calibration: comm %s, EP %d, H %lld, top-%lld, %s partials\n"
             "  allgather latency %.1f us, %.3f GB/s; alltoall latency %.1f us, %.3f GB/s\n"
             "for epmoed / epmoectl step: %s\n",
             epm_comm_backend_name(epm_group_comm(s.group)), s.P, (long long)s.dims.hidden, (long long)s.dims.top_k,
             s.o.partial == EPM_DTYPE_F32 ? "f32" : "bf16", c.latency_us[0], c.gbps[0], c.latency_us[1], c.gbps[1],
             flags);
    step_free(&s);
    return st == EPM_OK ? 0 : 1;
  }
  const int64_t n_all = s.M * s.dims.hidden;
  epm_moe_checksum_t cs = {0}, first = {0};
  int identical = 1;
  for (long long w = 0; w < s.o.warmup; w++) {
    st = epm_engine_step(s.eng, s.x, s.logits, s.m, s.y);
    if (st != EPM_OK) {
      fprintf(stderr, "epmoectl step: rank %d: warm-up step %lld: %s: %s\n", s.rank, w, epm_status_name(st),
              epm_last_error());
      step_free(&s);
      return 1;
    }
  }
  if (s.o.warmup) epm_engine_stats_reset(s.eng); /* timings cover the measured steps only */
  for (long long rep = 0; rep < s.o.repeat; rep++) {
    st = epm_engine_step(s.eng, s.x, s.logits, s.m, s.y);
    if (st != EPM_OK) {
      fprintf(stderr, "epmoectl step: rank %d: step %lld: %s: %s\n", s.rank, rep, epm_status_name(st),
              epm_last_error());
      step_free(&s);
      return 1;
    }
    if (gather_output(&s) != EPM_OK) {
      fprintf(stderr, "epmoectl step: rank %d: %s\n", s.rank, epm_last_error());
      step_free(&s);
      return 1;
    }
    if (s.rank == 0) {
      epm_moe_checksum_bf16(s.y_all, n_all, &cs);
      if (rep == 0) first = cs;
      identical &= cs.fnv1a64 == first.fnv1a64;
    }
  }
  epm_engine_stats_t es;
  epm_engine_stats(s.eng, &es);
  const float input_scale = es.last_input_scale;
  double *stages = gather_stages(&s);
  check_result_t cr = {0};
  int result = 0;
  if (s.rank == 0) {
    if (s.o.check && run_check(&s, input_scale, &cr) != EPM_OK) {
      fprintf(stderr, "epmoectl step: check: %s\n", epm_last_error());
      result = 1;
    }
    if (stages) {
      if (s.o.json)
        print_json(&s, stages, &cs, identical, &cr, input_scale);
      else
        print_text(&s, stages, &cs, identical, &cr, input_scale);
    }
    if (!identical) fprintf(stderr, "epmoectl step: the repeated steps gave different outputs\n");
    if (cr.done && !(cr.max_err <= s.o.tol))
      fprintf(stderr, "epmoectl step: check failed: max_err %.3g > tolerance %g\n", cr.max_err, s.o.tol);
    if (!identical || (cr.done && !(cr.max_err <= s.o.tol))) result = 1;
  }
  free(stages);
  if (epm_bootstrap_bcast_bytes(&s.boot, 0, &result, sizeof result) != EPM_OK) result = 1;
  fflush(stdout);
  step_free(&s);
  return result;
}
