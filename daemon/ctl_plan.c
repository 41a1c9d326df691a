/* ctl_plan.c — `epmoectl plan`: per-rank buffer sizes, totals and CUDA launch
 * limits of one EP step, computed offline from a model preset (epmoe/plan.h).
 * Exit: 0 plan printed (violations are reported in the output), 1 the sizes
 * do not fit in 64 bits, 2 usage error (bad flag or inconsistent values). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "epmoe/model.h"
#include "epmoe/plan.h"

#define MAX_RANKS 65536

static void usage(FILE *f) {
  fprintf(f,
          "usage: epmoectl plan --preset NAME --ep N --tokens-per-rank T|a,b,c,... [options]\n"
          "\n"
          "Per-rank memory of every buffer of one EP step (one MoE layer), totals, and the\n"
          "CUDA grid limits the step's kernels would hit, with the chunking that fixes them.\n"
          "All sizes are 64-bit and overflow-checked; nothing is allocated.\n"
          "\n"
          "  --preset NAME            model: deepseek-r1, qwen3-235b, llama4-maverick, tiny\n"
          "  --ep N                   expert-parallel group size; must divide the expert count\n"
          "  --tokens-per-rank T      tokens on every rank (the capacity buffers are sized for)\n"
          "  --tokens-per-rank a,b,.. exact tokens of each rank, one value per rank (N values)\n"
          "  --rank R                 the rank to report (default 0); sets the local expert\n"
          "                           slice and, with a per-rank list, the local token count\n"
          "  --tile N                 GEMM M-tile: rows per CTA, each local expert padded to it\n"
          "                           (default %d, at most %d)\n"
          "  --hidden H               override the preset's hidden size (multiple of 16)\n"
          "  --intermediate I         override the routed experts' intermediate size (multiple of 16)\n"
          "  --experts E              override the number of routed experts\n"
          "  --top-k K                override experts per token\n"
          "  --json                   print one JSON object instead of the table\n"
          "  -h, --help               this text\n"
          "\n"
          "Counts accept K/M/G suffixes (x1024). Exit: 0 printed (limits are in the output),\n"
          "1 a size does not fit in 64 bits, 2 usage error.\n",
          EPM_PLAN_DEFAULT_TILE, EPM_PLAN_MAX_TILE);
}

typedef struct {
  const char *preset;
  long long ep, rank, tile, tokens;
  long long hidden, intermediate, experts, top_k; /* -1: keep the preset's */
  int64_t *list;                                  /* per-rank tokens, or NULL */
  long long list_len;
  int json;
} opts_t;

static int parse_list(const char *s, opts_t *o) {
  long long n = 1;
  for (const char *c = s; *c; c++) n += *c == ',';
  if (n > MAX_RANKS) {
    fprintf(stderr, "epmoectl plan: --tokens-per-rank has %lld values; at most %d\n", n, MAX_RANKS);
    return 2;
  }
  o->list = calloc((size_t)n, sizeof *o->list);
  char *copy = strdup(s);
  if (!o->list || !copy) {
    free(copy);
    fprintf(stderr, "epmoectl plan: out of memory\n");
    return 1;
  }
  long long i = 0;
  int rc = 0;
  /* strtok would skip empty fields; walk them by hand so "1,,2" is an error. */
  for (char *f = copy;; i++) {
    char *comma = strchr(f, ',');
    if (comma) *comma = '\0';
    long long v;
    rc = epm_ctl_parse_i64("--tokens-per-rank", f, 0, INT64_MAX, &v);
    if (rc) break;
    o->list[i] = v;
    if (!comma) break;
    f = comma + 1;
  }
  free(copy);
  o->list_len = n;
  return rc;
}

/* Parse argv; 0 ok, 2 usage error (message printed), -1 help printed. */
static int parse(int argc, char **argv, opts_t *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *val = NULL;
    char flag[64];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return -1;
    }
    if (strcmp(a, "--json") == 0) {
      o->json = 1;
      continue;
    }
    if (epm_ctl_flag_value("plan", argc, argv, &i, flag, sizeof flag, &val) != 0) return 2;
    int rc;
    if (strcmp(flag, "--preset") == 0) {
      o->preset = val;
      rc = 0;
    } else if (strcmp(flag, "--ep") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 1, MAX_RANKS, &o->ep);
    } else if (strcmp(flag, "--rank") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 0, MAX_RANKS - 1, &o->rank);
    } else if (strcmp(flag, "--tile") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 1, EPM_PLAN_MAX_TILE, &o->tile);
    } else if (strcmp(flag, "--tokens-per-rank") == 0) {
      free(o->list);
      o->list = NULL;
      rc = strchr(val, ',') ? parse_list(val, o)
                            : epm_ctl_parse_i64(flag, val, 0, INT64_MAX, &o->tokens);
    } else if (strcmp(flag, "--hidden") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 16, INT64_MAX, &o->hidden);
    } else if (strcmp(flag, "--intermediate") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 16, INT64_MAX, &o->intermediate);
    } else if (strcmp(flag, "--experts") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 1, INT64_MAX, &o->experts);
    } else if (strcmp(flag, "--top-k") == 0) {
      rc = epm_ctl_parse_i64(flag, val, 1, INT64_MAX, &o->top_k);
    } else {
      fprintf(stderr, "epmoectl plan: unknown flag %s (see epmoectl plan --help)\n", flag);
      return 2;
    }
    if (rc) return 2;
  }
  if (!o->preset || o->ep < 0 || (o->tokens < 0 && !o->list)) {
    fprintf(stderr, "epmoectl plan: --preset, --ep and --tokens-per-rank are required\n");
    return 2;
  }
  if (o->list && o->list_len != o->ep) {
    fprintf(stderr, "epmoectl plan: --tokens-per-rank has %lld values but --ep is %lld\n",
            o->list_len, o->ep);
    return 2;
  }
  return 0;
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
  printf("\nEP %lld, rank %lld: local experts %lld = [%lld, %lld), GEMM M-tile %lld\n",
         (long long)p->config.ep_size, (long long)p->config.rank, (long long)p->local_experts,
         (long long)p->expert_offset, (long long)(p->expert_offset + p->local_experts),
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
  int any = 0;
  for (size_t i = 0; i < epm_plan_buffer_count(); i++) {
    if (epm_plan_buffer(p, i, &b) != EPM_OK || !(b.int32_elements || b.int32_bytes)) continue;
    if (!any) printf("int32 notes (informational: 32-bit indexing would wrap here):\n");
    any = 1;
    printf("  %-21s %lld elements, %zu bytes\n", b.name, (long long)b.buf.elements, b.buf.bytes);
  }
}

static json_t *jint(int64_t v) { return json_integer((json_int_t)v); }
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
  json_object_set_new(root, "int32_notes", notes);
  return root;
}

int epm_ctl_plan(int argc, char **argv) {
  opts_t o = {.ep = -1, .tokens = -1, .hidden = -1, .intermediate = -1, .experts = -1,
              .top_k = -1};
  epm_plan_config_t cfg;
  epm_plan_t p;
  int rc = parse(argc, argv, &o);
  if (rc) {
    free(o.list);
    return rc < 0 ? 0 : rc;
  }
  memset(&cfg, 0, sizeof cfg);
  if (epm_model_preset(o.preset, &cfg.dims) != EPM_OK) {
    fprintf(stderr, "epmoectl plan: %s\n", epm_last_error());
    free(o.list);
    return 2;
  }
  if (o.hidden >= 0) cfg.dims.hidden = o.hidden;
  if (o.intermediate >= 0) cfg.dims.intermediate = o.intermediate;
  if (o.experts >= 0) cfg.dims.num_experts = o.experts;
  if (o.top_k >= 0) cfg.dims.top_k = o.top_k;
  cfg.ep_size = o.ep;
  cfg.rank = o.rank;
  cfg.tile = o.tile;
  cfg.tokens_per_rank = o.list;
  cfg.max_tokens_per_rank = o.list ? 0 : o.tokens;
  epm_status_t st = epm_plan_compute(&cfg, &p);
  free(o.list);
  if (st != EPM_OK) {
    fprintf(stderr, "epmoectl plan: %s\n", epm_last_error());
    return st == EPM_ERR_OVERFLOW ? 1 : 2;
  }
  if (o.json) {
    json_t *root = to_json(&p);
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
  }
  return 0;
}
