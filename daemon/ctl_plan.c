/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_plan.c — `epmoectl plan`: per-rank buffer sizes, totals and CUDA launch
 * limits of one EP step, computed offline from a model preset (epmoe/plan.h).
 * Exit: 0 plan printed (violations are reported in the output), 1 the sizes
 * do not fit in 64 bits, 64 usage error (bad flag or inconsistent values). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"
#include "epmoe/model.h"
#include "epmoe/placement.h"
#include "epmoe/plan.h"

#define MAX_RANKS 65536
#define STR_(x) #x
#define STR(x) STR_(x)

typedef struct {
  const char *preset;
  long long ep, rank, tile;
  long long hidden, intermediate, experts, top_k; /* -1: keep the preset's */
  epm_opt_list_t tokens; /* one value: every rank's capacity; N values: each rank's count */
  int json;
  const char *placement, *load; /* FILE or NULL (default split; uniform load) */
  long long redundant, workspace_mb;
} opts_t;

#define AT(field) EPM_OPT_AT(opts_t, field)
/* counts: int64 in [lo, hi], K/M/G suffixes allowed */
#define COUNT(lo, hi) .kind = EPM_OPT_INT64, .min = (lo), .max = (hi)

static const epm_opt_t plan_opts[] = {
    {.name = "preset", .kind = EPM_OPT_STR, AT(preset), .flags = EPM_OPT_REQUIRED, .arg = "NAME",
     .help = "model: deepseek-r1, qwen3-235b, llama4-maverick, tiny"},
    {.name = "ep", COUNT(1, MAX_RANKS), AT(ep), .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED,
     .help = "expert-parallel group size"},
    {.name = "tokens-per-rank", .kind = EPM_OPT_LIST, AT(tokens), .min = 0, .max = INT64_MAX,
     .max_items = MAX_RANKS, .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED, .arg = "T|a,b,..",
     .help = "T: tokens on every rank (the capacity buffers are sized for);\n"
             "a,b,..: exact tokens of each rank, one value per rank (N values)"},
    {.name = "rank", COUNT(0, MAX_RANKS - 1), AT(rank), .def = "0", .flags = EPM_OPT_KMG, .arg = "R",
     .help = "the rank to report; sets the local expert slice and, with a\n"
             "per-rank list, the local token count"},
    {.name = "tile", COUNT(1, EPM_PLAN_MAX_TILE), AT(tile), .def = STR(EPM_PLAN_DEFAULT_TILE), .flags = EPM_OPT_KMG,
     .help = "GEMM M-tile: rows per CTA, each local expert padded to it"},
    {.name = "hidden", COUNT(16, INT64_MAX), AT(hidden), .flags = EPM_OPT_KMG, .arg = "H",
     .help = "override the preset's hidden size (multiple of 16)"},
    {.name = "intermediate", COUNT(16, INT64_MAX), AT(intermediate), .flags = EPM_OPT_KMG, .arg = "I",
     .help = "override the routed experts' intermediate size (multiple of 16)"},
    {.name = "experts", COUNT(1, INT64_MAX), AT(experts), .flags = EPM_OPT_KMG, .arg = "E", .help = "override the number of routed experts"},
    {.name = "top-k", COUNT(1, INT64_MAX), AT(top_k), .flags = EPM_OPT_KMG, .arg = "K", .help = "override experts per token"},
    {.name = "json", .kind = EPM_OPT_FLAG, AT(json), .help = "print one JSON object instead of the table"},
    {.name = "placement", .kind = EPM_OPT_STR, AT(placement), .arg = "FILE",
     .help = "expert placement map (JSON, docs/PLACEMENT.md); default:\nthe contiguous split"},
    {.name = "redundant-experts", COUNT(0, 1 << 16), AT(redundant), .def = "0", .flags = EPM_OPT_KMG, .arg = "N",
     .help = "extra slots of the default split (copies of experts 0..N-1)"},
    {.name = "workspace-mb", COUNT(0, 1LL << 30), AT(workspace_mb), .def = "0", .flags = EPM_OPT_KMG, .arg = "MB",
     .help = "expert-stage workspace budget in MiB: report the chunks of\ngathered rows the experts run in (0 = unbounded)"},
    {.name = "load", .kind = EPM_OPT_STR, AT(load), .arg = "FILE",
     .help = "per-expert load for the expected imbalance (as `epmoectl\nplacement --from-stats` reads it); default uniform"},
};

static epm_opt_cmd_t command(opts_t *o, epm_opt_group_t *g) {
  *g = (epm_opt_group_t){NULL, plan_opts, sizeof plan_opts / sizeof plan_opts[0], o, NULL};
  return (epm_opt_cmd_t){
      .prog = "epmoectl plan",
      .synopsis = "usage: epmoectl plan --preset NAME --ep N --tokens-per-rank T|a,b,c,... [options]",
      .about = "Per-rank memory of every buffer of one EP step (one MoE layer), totals, and the\n"
               "CUDA grid limits the step's kernels would hit, with the chunking that fixes them.\n"
               "All sizes are 64-bit and overflow-checked; nothing is allocated.",
      .epilog = "Counts accept K/M/G suffixes (x1024). Exit: 0 printed (limits are in the output),\n"
                "1 a size does not fit in 64 bits, 64 usage error (bad flag or inconsistent values).",
      .groups = g,
      .ngroups = 1};
}

static const char *human(size_t bytes, char *buf, size_t n) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = (double)bytes;
  size_t u = 0;
  while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
    v /= 1024.0;
    u++;
  }
  if (u == 0)
    snprintf(buf, n, "%zu B", bytes);
  else
    snprintf(buf, n, "%.1f %s", v, units[u]);
  return buf;
}

static void print_text(const epm_plan_t *p) {
  const epm_model_dims_t *d = &p->config.dims;
  char h[32];
  printf("model %s: H %lld, I %lld, E %lld, top-k %lld, routing %s", d->name, (long long)d->hidden,
         (long long)d->intermediate, (long long)d->num_experts, (long long)d->top_k,
         epm_routing_method_name(d->routing));
  if (d->n_group > 1) printf(" (groups %lld, keep %lld)", (long long)d->n_group, (long long)d->topk_group);
  if (d->shared_experts) printf(", shared expert I %lld", (long long)d->shared_intermediate);
  printf("\nEP %lld, rank %lld: local experts %lld = slots [%lld, %lld) of %lld, GEMM M-tile %lld\n",
         (long long)p->config.ep_size, (long long)p->config.rank, (long long)p->local_experts,
         (long long)p->expert_offset, (long long)(p->expert_offset + p->local_experts), (long long)p->num_slots,
         (long long)p->tile);
  printf("tokens: local %lld, max per rank %lld, gathered %lld; pairs M*k %lld\n",
         (long long)p->tokens_local, (long long)p->tokens_max, (long long)p->tokens_gathered,
         (long long)p->expanded_pairs);
  printf("local pairs: worst case %lld (uniform routing %lld); GEMM M-tiles %lld -> permuted rows "
         "%lld\n\n",
         (long long)p->local_pairs_max, (long long)p->local_pairs_uniform,
         (long long)p->gemm_m_tiles_max, (long long)p->permuted_rows_max);

  printf("%-9s %-21s %-6s %-26s %18s %11s\n", "group", "buffer", "dtype", "shape [rows, cols]",
         "bytes", "");
  epm_plan_buffer_info_t b;
  for (size_t i = 0; i < epm_plan_buffer_count(); i++) {
    if (epm_plan_buffer(p, i, &b) != EPM_OK) continue;
    char shape[64];
    snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)b.buf.rows, (long long)b.buf.cols);
    printf("%-9s %-21s %-6s %-26s %18zu %11s%s\n", epm_plan_group_name(b.group), b.name, b.dtype,
           shape, b.buf.bytes, human(b.buf.bytes, h, sizeof h),
           b.int32_elements ? "  >int32 elements" : (b.int32_bytes ? "  >int32 bytes" : ""));
  }
  printf("\ntotals per rank:\n");
  const struct { const char *n; size_t v; } tot[] = {
      {"local", p->bytes_local},       {"gathered", p->bytes_gathered},
      {"expert", p->bytes_expert},     {"shared", p->bytes_shared},
      {"activations", p->bytes_activations}, {"weights (1 layer)", p->bytes_weights},
      {"total", p->bytes_total},
  };
  for (size_t i = 0; i < sizeof tot / sizeof tot[0]; i++)
    printf("  %-18s %18zu %11s\n", tot[i].n, tot[i].v, human(tot[i].v, h, sizeof h));

  printf("\nCUDA launch limits (assumed kernel configurations, see include/epmoe/plan.h):\n");
  for (size_t i = 0; i < p->n_limits; i++) {
    const epm_plan_limit_t *l = &p->limits[i];
    printf("  %-14s %s = %lld %s: %s %lld", l->kernel, l->dim, (long long)l->value, l->what,
           l->chunks == 1 ? "<=" : ">", (long long)l->limit);
    if (l->chunks == 0)
      printf("  VIOLATED, no chunking fits\n");
    else if (l->chunks > 1)
      printf("  VIOLATED: needs %lld chunks of <= %lld tokens\n", (long long)l->chunks,
             (long long)l->max_tokens);
    else
      printf("\n");
  }
  if (p->violations == 0)
    printf("no violation: every grid fits without chunking\n");
  else if (p->chunks == 0)
    printf("%zu violation(s): not even one token fits; no chunking helps\n", p->violations);
  else if (p->chunks == 1)
    printf("%zu violation(s) in the local kernels: chunk this rank's tokens (see above)\n",
           p->violations);
  else
    printf("%zu violation(s): run the expert stage in %lld chunks of at most %lld gathered tokens\n",
           p->violations, (long long)p->chunks, (long long)p->max_tokens_per_chunk);
  {
    char h1[32], h2[32], h3[32], h4[32];
    printf("expert workspace: %s for all %lld rows in one call; budget %s -> %lld chunk(s) of <= %lld gathered "
           "rows, %s per chunk; total per rank with chunking %s\n",
           human(p->bytes_expert_ws, h1, sizeof h1), (long long)p->tokens_gathered,
           p->config.workspace_bytes ? human(p->config.workspace_bytes, h2, sizeof h2) : "unbounded",
           (long long)p->ws_chunks, (long long)p->ws_chunk_tokens, human(p->bytes_expert_ws_chunk, h3, sizeof h3),
           human(p->bytes_total_chunked, h4, sizeof h4));
  }
  int any = 0;
  for (size_t i = 0; i < epm_plan_buffer_count(); i++) {
    if (epm_plan_buffer(p, i, &b) != EPM_OK || !(b.int32_elements || b.int32_bytes)) continue;
    if (!any) printf("int32 notes (informational: 32-bit indexing would wrap here):\n");
    any = 1;
    printf("  %-21s %lld elements, %zu bytes\n", b.name, (long long)b.buf.elements, b.buf.bytes);
  }
}

/* The placement and its expected per-rank load (epmoe/placement.h). */
typedef struct {
  const char *source, *load_source;
  const epm_placement_t *p;
  double *rank_load; /* [P] */
  double imbalance, max, mean;
} place_info_t;

static void print_placement(const place_info_t *pi) {
  const epm_placement_t *p = pi->p;
  double lo = pi->rank_load[0];
  for (int64_t r = 1; r < p->ep_size; r++) lo = pi->rank_load[r] < lo ? pi->rank_load[r] : lo;
  printf("placement %s: %lld slots (%lld redundant) over %lld ranks; expected per-rank load (%s): max/mean %.4f "
         "(max %.6g, mean %.6g, min %.6g)\n",
         pi->source, (long long)p->num_slots, (long long)(p->num_slots - p->num_experts), (long long)p->ep_size,
         pi->load_source, pi->imbalance, pi->max, pi->mean, lo);
}

static json_t *jint(int64_t v) { return json_integer((json_int_t)v); }

static json_t *placement_json(const place_info_t *pi) {
  json_t *o = json_object(), *per = json_array(), *rl = json_array();
  for (int64_t r = 0; r < pi->p->ep_size; r++) {
    json_array_append_new(per, jint(epm_placement_rank_slots(pi->p, r)));
    json_array_append_new(rl, json_real(pi->rank_load[r]));
  }
  json_object_set_new(o, "source", json_string(pi->source));
  json_object_set_new(o, "num_slots", jint(pi->p->num_slots));
  json_object_set_new(o, "redundant_experts", jint(pi->p->num_slots - pi->p->num_experts));
  json_object_set_new(o, "slots_per_rank", per);
  json_object_set_new(o, "load", json_string(pi->load_source));
  json_object_set_new(o, "rank_load", rl);
  json_object_set_new(o, "imbalance", json_real(pi->imbalance));
  return o;
}
static json_t *jsize(size_t v) { return json_integer((json_int_t)v); } /* < 2^63: from int64 */

static json_t *to_json(const epm_plan_t *p) {
  const epm_model_dims_t *d = &p->config.dims;
  json_t *root = json_object(), *m = json_object(), *tok = json_object(), *bufs = json_array(),
         *tot = json_object(), *lims = json_array(), *notes = json_array();
  json_object_set_new(m, "name", json_string(d->name));
  json_object_set_new(m, "hidden", jint(d->hidden));
  json_object_set_new(m, "intermediate", jint(d->intermediate));
  json_object_set_new(m, "num_experts", jint(d->num_experts));
  json_object_set_new(m, "top_k", jint(d->top_k));
  json_object_set_new(m, "n_group", jint(d->n_group));
  json_object_set_new(m, "topk_group", jint(d->topk_group));
  json_object_set_new(m, "routed_scaling_factor", json_real(d->routed_scaling_factor));
  json_object_set_new(m, "routing", json_string(epm_routing_method_name(d->routing)));
  json_object_set_new(m, "shared_experts", jint(d->shared_experts));
  json_object_set_new(m, "shared_intermediate", jint(d->shared_intermediate));
  json_object_set_new(root, "model", m);
  json_object_set_new(root, "ep", jint(p->config.ep_size));
  json_object_set_new(root, "rank", jint(p->config.rank));
  json_object_set_new(root, "tile", jint(p->tile));
  json_object_set_new(root, "local_experts", jint(p->local_experts));
  json_object_set_new(root, "expert_offset", jint(p->expert_offset));
  json_object_set_new(root, "num_slots", jint(p->num_slots));
  json_object_set_new(tok, "local", jint(p->tokens_local));
  json_object_set_new(tok, "max_per_rank", jint(p->tokens_max));
  json_object_set_new(tok, "gathered", jint(p->tokens_gathered));
  json_object_set_new(tok, "expanded_pairs", jint(p->expanded_pairs));
  json_object_set_new(tok, "local_pairs_max", jint(p->local_pairs_max));
  json_object_set_new(tok, "local_pairs_uniform", jint(p->local_pairs_uniform));
  json_object_set_new(tok, "gemm_m_tiles_max", jint(p->gemm_m_tiles_max));
  json_object_set_new(tok, "permuted_rows_max", jint(p->permuted_rows_max));
  json_object_set_new(root, "tokens", tok);

  epm_plan_buffer_info_t b;
  for (size_t i = 0; i < epm_plan_buffer_count(); i++) {
    if (epm_plan_buffer(p, i, &b) != EPM_OK) continue;
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(b.name));
    json_object_set_new(o, "group", json_string(epm_plan_group_name(b.group)));
    json_object_set_new(o, "dtype", json_string(b.dtype));
    json_object_set_new(o, "rows", jint(b.buf.rows));
    json_object_set_new(o, "cols", jint(b.buf.cols));
    json_object_set_new(o, "elements", jint(b.buf.elements));
    json_object_set_new(o, "bytes", jsize(b.buf.bytes));
    json_object_set_new(o, "int32_elements", json_boolean(b.int32_elements));
    json_object_set_new(o, "int32_bytes", json_boolean(b.int32_bytes));
    json_object_set_new(o, "desc", json_string(b.desc));
    json_array_append_new(bufs, o);
    if (b.int32_elements || b.int32_bytes) json_array_append_new(notes, json_string(b.name));
  }
  json_object_set_new(root, "buffers", bufs);
  json_object_set_new(tot, "local", jsize(p->bytes_local));
  json_object_set_new(tot, "gathered", jsize(p->bytes_gathered));
  json_object_set_new(tot, "expert", jsize(p->bytes_expert));
  json_object_set_new(tot, "shared", jsize(p->bytes_shared));
  json_object_set_new(tot, "activations", jsize(p->bytes_activations));
  json_object_set_new(tot, "weights", jsize(p->bytes_weights));
  json_object_set_new(tot, "total", jsize(p->bytes_total));
  json_object_set_new(root, "totals", tot);
  for (size_t i = 0; i < p->n_limits; i++) {
    const epm_plan_limit_t *l = &p->limits[i];
    json_t *o = json_object();
    json_object_set_new(o, "kernel", json_string(l->kernel));
    json_object_set_new(o, "dim", json_string(l->dim));
    json_object_set_new(o, "what", json_string(l->what));
    json_object_set_new(o, "value", jint(l->value));
    json_object_set_new(o, "limit", jint(l->limit));
    json_object_set_new(o, "max_tokens", jint(l->max_tokens));
    json_object_set_new(o, "chunks", jint(l->chunks));
    json_object_set_new(o, "ok", json_boolean(l->chunks == 1));
    json_array_append_new(lims, o);
  }
  json_object_set_new(root, "limits", lims);
  json_object_set_new(root, "violations", jsize(p->violations));
  json_object_set_new(root, "chunks", jint(p->chunks));
  json_object_set_new(root, "max_tokens_per_chunk", jint(p->max_tokens_per_chunk));
  json_t *ws = json_object();
  json_object_set_new(ws, "budget", jsize(p->config.workspace_bytes));
  json_object_set_new(ws, "bytes_unchunked", jsize(p->bytes_expert_ws));
  json_object_set_new(ws, "chunk_rows", jint(p->ws_chunk_tokens));
  json_object_set_new(ws, "chunks", jint(p->ws_chunks));
  json_object_set_new(ws, "bytes_chunk", jsize(p->bytes_expert_ws_chunk));
  json_object_set_new(ws, "total_chunked", jsize(p->bytes_total_chunked));
  json_object_set_new(root, "workspace", ws);
  json_object_set_new(root, "int32_notes", notes);
  return root;
}

int epm_ctl_plan(int argc, char **argv) {
  opts_t o = {.ep = -1, .hidden = -1, .intermediate = -1, .experts = -1, .top_k = -1};
  epm_opt_group_t g;
  epm_opt_result_t res;
  epm_opt_cmd_t cmd = command(&o, &g);
  epm_plan_config_t cfg;
  epm_plan_t p;
  int rc = epm_ctl_args(&cmd, argc, argv, &res);
  if (rc < 0 && o.tokens.n > 1 && o.tokens.n != (size_t)o.ep)
    rc = epm_ctl_usage(&cmd, "--tokens-per-rank has %zu values but --ep is %lld", o.tokens.n, o.ep);
  memset(&cfg, 0, sizeof cfg);
  if (rc < 0 && epm_model_preset(o.preset, &cfg.dims) != EPM_OK) rc = epm_ctl_usage(&cmd, "%s", epm_last_error());
  if (rc >= 0) {
    epm_opt_free(&cmd);
    return rc;
  }
  if (o.hidden >= 0) cfg.dims.hidden = o.hidden;
  if (o.intermediate >= 0) cfg.dims.intermediate = o.intermediate;
  if (o.experts >= 0) cfg.dims.num_experts = o.experts;
  if (o.top_k >= 0) cfg.dims.top_k = o.top_k;
  cfg.ep_size = o.ep;
  cfg.rank = o.rank;
  cfg.tile = o.tile;
  cfg.workspace_bytes = (size_t)o.workspace_mb << 20;
  /* One value is the capacity of every rank, a list the exact count of each. */
  cfg.tokens_per_rank = o.tokens.n > 1 ? o.tokens.v : NULL;
  cfg.max_tokens_per_rank = o.tokens.n > 1 ? 0 : o.tokens.v[0];
  /* The placement and the load its expected imbalance is computed for. */
  epm_placement_t pl = EPM_PLACEMENT_INIT;
  place_info_t pi = {o.placement ? o.placement : "default", o.load ? o.load : "uniform", &pl, NULL, 1.0, 0, 0};
  double *load = NULL;
  int64_t nload = 0;
  epm_status_t st = o.placement ? epm_placement_load_file(o.placement, &pl)
                                : epm_placement_default(cfg.dims.num_experts, o.ep, o.redundant, &pl);
  if (st == EPM_OK && o.load && ctl_load_file(o.load, &load, &nload, NULL) != 0)
    st = epm_error(EPM_ERR_INVALID_ARG, "--load %s could not be read (see above)", o.load);
  if (st == EPM_OK && load && nload != cfg.dims.num_experts)
    st = epm_error(EPM_ERR_INVALID_ARG, "--load %s has %lld experts; the model has %lld", o.load, (long long)nload,
                   (long long)cfg.dims.num_experts);
  if (st == EPM_OK) {
    pi.rank_load = calloc((size_t)pl.ep_size, sizeof *pi.rank_load);
    st = pi.rank_load ? EPM_OK : epm_error(EPM_ERR_NOMEM, "rank loads");
  }
  if (st == EPM_OK) st = epm_placement_rank_load(&pl, load, pi.rank_load);
  if (st == EPM_OK) st = epm_placement_imbalance(&pl, load, &pi.imbalance, &pi.max, &pi.mean);
  cfg.placement = &pl;
  if (st == EPM_OK) st = epm_plan_compute(&cfg, &p);
  epm_opt_free(&cmd);
  free(load);
  if (st != EPM_OK) {
    epm_placement_free(&pl);
    free(pi.rank_load);
    if (st == EPM_ERR_OVERFLOW) {
      fprintf(stderr, "epmoectl plan: %s\n", epm_last_error());
      return 1;
    }
    return epm_ctl_usage(&cmd, "%s", epm_last_error());
  }
  if (o.json) {
    json_t *root = to_json(&p);
    json_object_set_new(root, "placement", placement_json(&pi));
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!s) {
      fprintf(stderr, "epmoectl plan: out of memory formatting JSON\n");
      return 1;
    }
    printf("%s\n", s);
    free(s);
  } else {
    print_text(&p);
    print_placement(&pi);
  }
  epm_placement_free(&pl);
  free(pi.rank_load);
  return 0;
}
