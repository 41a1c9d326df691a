/* SPDX-License-Identifier: Apache-2.0 */
/* bench.c — `epmoe-bench`: one EP rank's MoE layer measured in one process,
 * nccl-tests style flags, medians of -n timed runs after -w warm-up runs.
 *
 * Rows (a rank of an EP group of --ep ranks: E/ep local experts, --tokens of
 * its own tokens, ep x tokens gathered rows through its expert stage):
 *   cpu  route, quantize, moe_layer (the CPU reference backend, wall clock)
 *   gpu  copy (device copy bandwidth), floor (weight bytes / that bandwidth),
 *        bf16_grouped (per-expert cuBLAS GEMMs reading every local expert's
 *        bf16 weights: the baseline), route, quantize, moe_layer (epmoe's
 *        cuda backend), all timed with CUDA events on one stream
 * moe_layer reports % of floor and its speed-up over bf16_grouped; the GPU
 * output is checked once against the CPU reference on sampled rows.
 * Without a GPU the GPU rows are skipped with a line saying so (exit 0).
 * Exit: 0 done, 1 a measurement or the check failed, 64 usage error. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli_opt.h"
#include "epmoe/backend.h"
#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "epmoe/tokens.h"

typedef struct {
  const char *preset;
  long long ep, tokens, iters, warmup, seed;
  int json, no_cpu;
} opts_t;

#define AT(field) EPM_OPT_AT(opts_t, field)
static const epm_opt_t bench_opts[] = {
    {.name = "preset", .kind = EPM_OPT_STR, AT(preset), .def = "deepseek-r1", .arg = "NAME",
     .help = "model dims: deepseek-r1, qwen3-235b, llama4-maverick, tiny"},
    {.name = "ep", .kind = EPM_OPT_INT64, AT(ep), .def = "8", .min = 1, .max = 1 << 16, .arg = "P",
     .help = "EP size: this rank holds E/P experts and sees P x T gathered rows"},
    {.name = "tokens", .kind = EPM_OPT_INT64, AT(tokens), .def = "128", .min = 1, .max = 1 << 20, .arg = "T",
     .flags = EPM_OPT_KMG, .help = "tokens per rank"},
    {.name = "iters", .short_name = 'n', .kind = EPM_OPT_INT64, AT(iters), .def = "20", .min = 1, .max = 100000,
     .help = "timed runs per row (the median is reported)"},
    {.name = "warmup", .short_name = 'w', .kind = EPM_OPT_INT64, AT(warmup), .def = "5", .min = 0, .max = 100000,
     .help = "untimed runs first"},
    {.name = "seed", .kind = EPM_OPT_INT64, AT(seed), .def = "1", .min = 0, .max = INT64_MAX,
     .help = "weights and tokens seed"},
    {.name = "no-cpu", .kind = EPM_OPT_FLAG, AT(no_cpu), .help = "skip the CPU reference rows (slow at large dims)"},
    {.name = "json", .kind = EPM_OPT_FLAG, AT(json), .help = "one JSON object instead of the table"},
};

double bench_median(double *v, int n) {
  for (int i = 1; i < n; i++) /* insertion sort: n is small */
    for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
      double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

bench_row_t *bench_add(bench_result_t *r, const char *name, const char *device, double us) {
  if (r->n >= BENCH_MAX_ROWS) return NULL;
  bench_row_t *row = &r->row[r->n++];
  memset(row, 0, sizeof *row);
  row->name = name;
  row->device = device;
  row->us = us;
  return row;
}

static int setup(const opts_t *o, bench_problem_t *p) {
  memset(p, 0, sizeof *p);
  if (epm_model_preset(o->preset, &p->dims) != EPM_OK) return 64;
  p->ep = o->ep;
  p->m = o->tokens;
  p->iters = (int)o->iters;
  p->warmup = (int)o->warmup;
  p->seed = (uint64_t)o->seed;
  if (p->dims.num_experts % p->ep) {
    fprintf(stderr, "epmoe-bench: --ep %lld must divide the %lld experts of %s\n", o->ep,
            (long long)p->dims.num_experts, o->preset);
    return 64;
  }
  p->local_experts = p->dims.num_experts / p->ep;
  p->M = p->m * p->ep;
  const int64_t H = p->dims.hidden, E = p->dims.num_experts;
  p->x = malloc((size_t)(p->M * H) * sizeof *p->x);
  p->logits = malloc((size_t)(p->M * E) * sizeof *p->logits);
  if (!p->x || !p->logits) {
    fprintf(stderr, "epmoe-bench: out of memory for %lld gathered tokens\n", (long long)p->M);
    return 1;
  }
  if (epm_tokens_generate(&p->dims, p->seed, 0, p->M, p->x, p->logits) != EPM_OK ||
      epm_layer_generate(&p->dims, 0, p->seed, 0, p->local_experts, &p->layer) != EPM_OK) {
    fprintf(stderr, "epmoe-bench: %s\n", epm_last_error());
    return 1;
  }
  return 0;
}

/* route and quantize on this rank's m tokens, the experts over M rows. */
static int cpu_rows(bench_problem_t *p, bench_result_t *r) {
  const int64_t H = p->dims.hidden, k = p->dims.top_k, M = p->M, m = p->m;
  epm_backend_config_t bc = EPM_BACKEND_CONFIG_INIT;
  epm_backend_t *be = NULL;
  epm_backend_weights_t *w = NULL;
  int32_t *ids = malloc((size_t)(M * k) * sizeof *ids);
  float *wts = malloc((size_t)(M * k) * sizeof *wts), *part = malloc((size_t)(M * H) * sizeof *part);
  uint8_t *q = malloc((size_t)(M * H / 2)), *sf = malloc((size_t)(M * H / 16));
  double *t = malloc((size_t)p->iters * sizeof *t);
  int rc = 1;
  if (!ids || !wts || !part || !q || !sf || !t) goto out;
  if (epm_backend_create(&bc, &be) != EPM_OK || epm_backend_weights_load(be, &p->layer, M, M, &w) != EPM_OK) goto out;
  const float a1 = p->layer.input_scale;
  /* Gathered ids / rows once (the experts row needs them); the route and
   * quantize rows rewrite their first m rows with the same values (both
   * are per token). */
  if (epm_backend_route(be, w, p->logits, M, ids, wts) != EPM_OK ||
      epm_backend_quantize(be, p->x, M, H, 1.0f / a1, q, sf) != EPM_OK)
    goto out;
  const char *names[3] = {"route", "quantize", "moe_layer"};
  for (int s = 0; s < 3; s++) {
    for (int i = -p->warmup; i < p->iters; i++) {
      const double t0 = epm_clock_s();
      epm_status_t st = s == 0   ? epm_backend_route(be, w, p->logits, m, ids, wts)
                        : s == 1 ? epm_backend_quantize(be, p->x, m, H, 1.0f / a1, q, sf)
                                 : epm_backend_experts(be, w, q, sf, a1, ids, wts, M, EPM_DTYPE_F32, part);
      if (st != EPM_OK) goto out;
      if (i >= 0) t[i] = epm_clock_s() - t0;
    }
    bench_add(r, names[s], "cpu", 1e6 * bench_median(t, p->iters));
  }
  rc = 0;
out:
  if (rc) fprintf(stderr, "epmoe-bench: cpu rows: %s\n", epm_last_error());
  epm_backend_weights_free(be, w);
  epm_backend_destroy(be);
  free(ids);
  free(wts);
  free(part);
  free(q);
  free(sf);
  free(t);
  return rc;
}

static void print_text(const opts_t *o, const bench_problem_t *p, const bench_result_t *r) {
  printf("# epmoe-bench: %s (H %lld, I %lld, E %lld, top-%lld), EP %lld: %lld local experts, %lld tokens/rank, "
         "%lld gathered rows; median of %lld after %lld warm-up\n",
         o->preset, (long long)p->dims.hidden, (long long)p->dims.intermediate, (long long)p->dims.num_experts,
         (long long)p->dims.top_k, o->ep, (long long)p->local_experts, o->tokens, (long long)p->M, o->iters,
         o->warmup);
  printf("# %-14s %-4s %12s %12s %-8s %8s %-14s %8s\n", "row", "dev", "time_us", "rate", "unit", "ratio", "vs",
         "%floor");
  for (int i = 0; i < r->n; i++) {
    const bench_row_t *w = &r->row[i];
    printf("  %-14s %-4s %12.2f %12.3f %-8s %8.2f %-14s %8.1f\n", w->name, w->device, w->us, w->rate,
           w->unit ? w->unit : "-", w->ratio, w->vs ? w->vs : "-", w->pct_floor);
  }
  printf("# gpu: %s\n", r->gpu_note);
  if (r->check_err >= 0) printf("# check gpu moe_layer vs cpu reference: max_err %.3g\n", r->check_err);
}

static void print_json(const opts_t *o, const bench_problem_t *p, const bench_result_t *r) {
  json_t *root = json_object(), *rows = json_array();
  json_object_set_new(root, "preset", json_string(o->preset));
  json_object_set_new(root, "ep", json_integer(o->ep));
  json_object_set_new(root, "tokens_per_rank", json_integer(o->tokens));
  json_object_set_new(root, "gathered_rows", json_integer(p->M));
  json_object_set_new(root, "local_experts", json_integer(p->local_experts));
  json_object_set_new(root, "iters", json_integer(o->iters));
  json_object_set_new(root, "warmup", json_integer(o->warmup));
  for (int i = 0; i < r->n; i++) {
    const bench_row_t *w = &r->row[i];
    json_t *j = json_object();
    json_object_set_new(j, "name", json_string(w->name));
    json_object_set_new(j, "device", json_string(w->device));
    json_object_set_new(j, "time_us", json_real(w->us));
    if (w->unit) {
      json_object_set_new(j, "rate", json_real(w->rate));
      json_object_set_new(j, "unit", json_string(w->unit));
    }
    if (w->vs) {
      json_object_set_new(j, "ratio", json_real(w->ratio));
      json_object_set_new(j, "vs", json_string(w->vs));
    }
    if (w->pct_floor > 0) json_object_set_new(j, "pct_floor", json_real(w->pct_floor));
    json_array_append_new(rows, j);
  }
  json_object_set_new(root, "rows", rows);
  json_object_set_new(root, "gpu_ran", json_boolean(r->gpu_ran));
  json_object_set_new(root, "gpu", json_string(r->gpu_note));
  if (r->check_err >= 0) json_object_set_new(root, "check_max_err", json_real(r->check_err));
  char *s = json_dumps(root, JSON_COMPACT);
  if (s) puts(s);
  free(s);
  json_decref(root);
}

int main(int argc, char **argv) {
  opts_t o = {0};
  epm_opt_group_t g = {NULL, bench_opts, sizeof bench_opts / sizeof bench_opts[0], &o, NULL};
  const epm_opt_cmd_t cmd = {
      .prog = "epmoe-bench",
      .synopsis = "usage: epmoe-bench [--preset NAME] [--ep P] [--tokens T] [-n N] [-w W] [--json]",
      .about = "One EP rank's MoE layer: the CPU reference rows, and on a GPU the copy bandwidth,\n"
               "the weight-read floor, a bf16 grouped cuBLAS baseline over every local expert's\n"
               "weights and epmoe's routing, quantize and MoE layer, timed with CUDA events.",
      .epilog = "Without a GPU the GPU rows are skipped (said on the `# gpu:` line), exit 0.\n"
                "Exit: 0 done, 1 a measurement or the check failed, 64 usage error.",
      .groups = &g,
      .ngroups = 1};
  epm_opt_result_t res;
  if (epm_opt_parse(&cmd, argc, argv, &res) != EPM_OK) {
    fprintf(stderr, "epmoe-bench: %s\n", epm_last_error());
    epm_opt_usage(stderr, &cmd);
    epm_opt_free(&cmd);
    return 64;
  }
  if (res.help) {
    epm_opt_help(stdout, &cmd);
    epm_opt_free(&cmd);
    return 0;
  }
  bench_problem_t p;
  bench_result_t r;
  memset(&r, 0, sizeof r);
  r.check_err = -1;
  int rc = setup(&o, &p);
  if (rc == 64) {
    fprintf(stderr, "epmoe-bench: %s\n", epm_last_error());
    epm_opt_usage(stderr, &cmd);
  }
  if (rc == 0 && !o.no_cpu) rc = cpu_rows(&p, &r);
  if (rc == 0) rc = bench_gpu(&p, &r);
  if (rc == 0) {
    if (o.json)
      print_json(&o, &p, &r);
    else
      print_text(&o, &p, &r);
  }
  epm_layer_free(&p.layer);
  free(p.x);
  free(p.logits);
  epm_opt_free(&cmd);
  return rc;
}
