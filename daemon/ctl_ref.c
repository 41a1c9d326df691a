/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_ref.c — `epmoectl ref`: one MoE layer on the CPU reference with a
 * seeded random layer and seeded tokens; prints a checksum of the bf16 output
 * and the time of each stage, so machines and backends can be compared.
 * With --input FILE the tokens and router logits come from the file and
 * --output FILE receives y: an independent reference for clients of the
 * daemon (the Python package's tests), computed by the CPU reference rather
 * than the step engine. Exit: 0 done, 1 the reference failed (message
 * printed), 64 usage error. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/clock.h"
#include "ctl.h"
#include "epmoe/layer.h"
#include "epmoe/model.h"
#include "epmoe/moe_ref.h"

typedef struct {
  const char *preset, *input, *output;
  long long tokens, seed, local, offset, layer, threads; /* local -1: all; threads 0: default */
  int json, no_shared;
} opts_t;

#define AT(field) EPM_OPT_AT(opts_t, field)
/* counts: int64 in [lo, hi], K/M/G suffixes allowed */
#define COUNT(lo, hi) .kind = EPM_OPT_INT64, .min = (lo), .max = (hi)

static const epm_opt_t ref_opts[] = {
    {.name = "preset", .kind = EPM_OPT_STR, AT(preset), .flags = EPM_OPT_REQUIRED, .arg = "NAME",
     .help = "deepseek-r1, qwen3-235b, llama4-maverick, tiny"},
    {.name = "tokens", COUNT(0, INT32_MAX), AT(tokens), .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED,
     .help = "tokens to generate and run"},
    {.name = "seed", COUNT(0, INT64_MAX), AT(seed), .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED, .arg = "S",
     .help = "seed of the layer and the tokens"},
    {.name = "local-experts", COUNT(0, INT32_MAX), AT(local), .flags = EPM_OPT_KMG, .arg = "E_l",
     .help = "experts held (default: all); a slice [offset, offset+E_l)"},
    {.name = "expert-offset", COUNT(0, INT32_MAX), AT(offset), .def = "0", .flags = EPM_OPT_KMG, .arg = "O",
     .help = "first local expert"},
    {.name = "layer", COUNT(0, INT32_MAX), AT(layer), .def = "0", .flags = EPM_OPT_KMG, .arg = "L",
     .help = "layer index fed to the generator"},
    {.name = "threads", COUNT(1, 4096), AT(threads), .flags = EPM_OPT_KMG, .arg = "T",
     .help = "CPU threads (default $EPMOE_THREADS, else all cores)"},
    {.name = "no-shared", .kind = EPM_OPT_FLAG, AT(no_shared), .help = "leave out the shared expert"},
    {.name = "input", .kind = EPM_OPT_STR, AT(input), .arg = "FILE",
     .help = "read bf16 x [N, H] then fp32 router logits [N, E] (N = --tokens) instead of\n"
             "generating the tokens; the logits are used as given"},
    {.name = "output", .kind = EPM_OPT_STR, AT(output), .arg = "FILE", .help = "write y, bf16 [N, H], to FILE"},
    {.name = "json", .kind = EPM_OPT_FLAG, AT(json), .help = "one JSON object instead of text"},
};

static epm_opt_cmd_t command(opts_t *o, epm_opt_group_t *g) {
  *g = (epm_opt_group_t){NULL, ref_opts, sizeof ref_opts / sizeof ref_opts[0], o, NULL};
  return (epm_opt_cmd_t){
      .prog = "epmoectl ref",
      .synopsis = "usage: epmoectl ref --preset NAME --tokens N --seed S [options]",
      .about = "Generate one MoE layer (NVFP4 weights quantized from Gaussians with ModelOpt's\n"
               "formulas) and N unit-RMS bf16 tokens from the seed, run router, routing, NVFP4\n"
               "input quantization, the local experts and (unless --no-shared) the shared expert\n"
               "on the CPU reference, and print a checksum of the bf16 output:\n"
               "  fnv1a64 of the output's little-endian bf16 bytes, the fp64 sum and max |value|.\n"
               "With --local-experts below the expert count the output is this slice's EP partial.",
      .epilog = "Counts accept K/M/G suffixes (x1024). Exit: 0 ok, 1 failure, 64 usage error.",
      .groups = g,
      .ngroups = 1};
}

static void print_text(const opts_t *o, const epm_layer_t *l, int threads, int64_t local_slots, double gen_s,
                       const epm_moe_ref_timing_t *t, const epm_moe_checksum_t *c) {
  const epm_model_dims_t *d = &l->dims;
  printf("preset %s: H %lld, I %lld, E %lld, top_k %lld, routing %s, shared %lld\n", d->name,
         (long long)d->hidden, (long long)d->intermediate, (long long)d->num_experts, (long long)d->top_k,
         epm_routing_method_name(d->routing), (long long)l->shared.count);
  printf("tokens %lld, seed %lld, layer %lld, local experts [%lld, %lld), local slots %lld, threads %d\n",
         o->tokens, o->seed, o->layer, (long long)l->expert_offset,
         (long long)(l->expert_offset + l->experts.count), (long long)local_slots, threads);
  printf("checksum fnv1a64 %016" PRIx64 " sum %.9g absmax %.9g\n", c->fnv1a64, c->sum, c->absmax);
  printf("time (s): generate %.3f | router %.3f route %.3f quantize %.3f gather %.3f gemm1 %.3f "
         "requant %.3f gemm2 %.3f finalize %.3f shared %.3f | layer total %.3f\n",
         gen_s, t->router_s, t->route_s, t->quantize_s, t->gather_s, t->gemm1_s, t->requant_s, t->gemm2_s,
         t->finalize_s, t->shared_s, t->total_s);
}

static void print_json(const opts_t *o, const epm_layer_t *l, int threads, int64_t local_slots, double gen_s,
                       const epm_moe_ref_timing_t *t, const epm_moe_checksum_t *c) {
  const epm_model_dims_t *d = &l->dims;
  printf("{\"preset\":\"%s\",\"hidden\":%lld,\"intermediate\":%lld,\"num_experts\":%lld,\"top_k\":%lld,"
         "\"routing\":\"%s\",\"shared_experts\":%lld,\"tokens\":%lld,\"seed\":%lld,\"layer\":%lld,"
         "\"expert_offset\":%lld,\"local_experts\":%lld,\"local_slots\":%lld,\"threads\":%d,"
         "\"checksum\":{\"fnv1a64\":\"%016" PRIx64 "\",\"sum\":%.17g,\"absmax\":%.17g},"
         "\"time_s\":{\"generate\":%.6f,\"router\":%.6f,\"route\":%.6f,\"quantize\":%.6f,\"gather\":%.6f,"
         "\"gemm1\":%.6f,\"requant\":%.6f,\"gemm2\":%.6f,\"finalize\":%.6f,\"shared\":%.6f,\"total\":%.6f}}\n",
         d->name, (long long)d->hidden, (long long)d->intermediate, (long long)d->num_experts,
         (long long)d->top_k, epm_routing_method_name(d->routing), (long long)l->shared.count, o->tokens, o->seed,
         o->layer, (long long)l->expert_offset, (long long)l->experts.count, (long long)local_slots, threads,
         c->fnv1a64, c->sum, c->absmax, gen_s, t->router_s, t->route_s, t->quantize_s, t->gather_s,
         t->gemm1_s, t->requant_s, t->gemm2_s, t->finalize_s, t->shared_s, t->total_s);
}

int epm_ctl_ref(int argc, char **argv) {
  opts_t o = {.local = -1};
  epm_opt_group_t g;
  epm_opt_result_t res;
  epm_opt_cmd_t cmd = command(&o, &g);
  int rc = epm_ctl_args(&cmd, argc, argv, &res);
  if (rc >= 0) return rc;
  epm_model_dims_t d;
  if (epm_model_preset(o.preset, &d) != EPM_OK) return epm_ctl_usage(&cmd, "%s", epm_last_error());
  if (o.local < 0) o.local = d.num_experts - o.offset;
  if (o.offset + o.local > d.num_experts || o.local < 0)
    return epm_ctl_usage(&cmd, "--expert-offset %lld + --local-experts %lld exceeds the %lld experts of %s", o.offset,
                         o.local, (long long)d.num_experts, d.name);
  const int64_t m = o.tokens, H = d.hidden, k = d.top_k;
  epm_layer_t l;
  epm_bf16_t *x = NULL, *out = NULL;
  int32_t *ids = NULL;
  int ret = 1;
  double g0 = epm_clock_s();
  if (epm_layer_generate(&d, o.layer, (uint64_t)o.seed, o.offset, o.local, &l) != EPM_OK) {
    fprintf(stderr, "epmoectl ref: generating the layer: %s\n", epm_last_error());
    return 1;
  }
  double gen_s = epm_clock_s() - g0;
  float *logits = NULL;
  x = malloc((size_t)(m > 0 ? m : 1) * (size_t)H * sizeof(epm_bf16_t));
  out = malloc((size_t)(m > 0 ? m : 1) * (size_t)H * sizeof(epm_bf16_t));
  ids = malloc((size_t)(m > 0 ? m : 1) * (size_t)k * sizeof(int32_t));
  if (!x || !out || !ids) {
    fprintf(stderr, "epmoectl ref: out of memory for %lld tokens x hidden %lld\n", (long long)m, (long long)H);
    goto done;
  }
  if (o.input) {
    size_t xb = (size_t)m * (size_t)H * sizeof *x, lb = (size_t)m * (size_t)d.num_experts * sizeof(float);
    FILE *f = fopen(o.input, "rb");
    logits = malloc(lb ? lb : 1);
    if (!f || !logits || fread(x, 1, xb, f) != xb || fread(logits, 1, lb, f) != lb) {
      fprintf(stderr, "epmoectl ref: %s must hold bf16 x [%lld, %lld] then fp32 logits [%lld, %lld] (%zu bytes)\n",
              o.input, (long long)m, (long long)H, (long long)m, (long long)d.num_experts, xb + lb);
      if (f) fclose(f);
      goto done;
    }
    fclose(f);
  } else if (epm_layer_random_hidden(H, (uint64_t)o.seed, 0, m, x) != EPM_OK) {
    fprintf(stderr, "epmoectl ref: tokens: %s\n", epm_last_error());
    goto done;
  }
  epm_moe_ref_opts_t opts = EPM_MOE_REF_OPTS_INIT;
  opts.threads = (int)o.threads;
  opts.include_shared = !o.no_shared;
  epm_moe_ref_timing_t t;
  memset(&t, 0, sizeof t);
  if (epm_moe_ref_layer(&l, x, logits, m, &opts, ids, NULL, NULL, out, &t) != EPM_OK) {
    fprintf(stderr, "epmoectl ref: %s\n", epm_last_error());
    goto done;
  }
  if (o.output) {
    FILE *f = fopen(o.output, "wb");
    size_t yb = (size_t)m * (size_t)H * sizeof *out;
    int ok = f && fwrite(out, 1, yb, f) == yb;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) {
      fprintf(stderr, "epmoectl ref: cannot write %zu bytes of y to %s\n", yb, o.output);
      goto done;
    }
  }
  int64_t slots = 0;
  for (int64_t i = 0; i < m * k; i++) slots += ids[i] >= o.offset && ids[i] < o.offset + o.local;
  epm_moe_checksum_t c;
  epm_moe_checksum_bf16(out, m * H, &c);
  if (o.json)
    print_json(&o, &l, epm_moe_ref_threads(opts.threads), slots, gen_s, &t, &c);
  else
    print_text(&o, &l, epm_moe_ref_threads(opts.threads), slots, gen_s, &t, &c);
  ret = 0;
done:
  free(logits);
  free(x);
  free(out);
  free(ids);
  epm_layer_free(&l);
  return ret;
}
