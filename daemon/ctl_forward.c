/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl forward — one collective step through every rank's socket at once
 * (one thread per rank). The global token set (random from --seed, or read
 * from --input) is split over the ranks in rank order by --tokens-per-rank;
 * --check recomputes the same global set on the CPU reference (EP = 1, the
 * full layer) and prints the max relative error, max|y - ref| / max|ref|,
 * exiting 1 above --tolerance. The default 2^-6 is the engine's documented
 * bound for EP=N vs EP=1 (fp32 partial-sum order can move the bf16 rounding by
 * about two ulps at the output's scale; docs/ARCHITECTURE.md "Engine"). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/bf16.h"
#include "epmoe/clock.h"
#include "ctl.h"
#include "ctl_drive.h"

typedef struct {
  epm_opt_list_t counts;
  const char *input;
  uint64_t seed;
  long long layer, step_id; /* step_id -1: unique per invocation */
  double tol;
  int random, check, shm, no_shared, partial;
} fwd_opts_t;

#define AT(field) EPM_OPT_AT(fwd_opts_t, field)

static const epm_opt_choice_t partials[] = {{"f32", EPM_DTYPE_F32}, {"bf16", EPM_DTYPE_BF16}, {NULL, 0}};

static const epm_opt_t fwd_opts[] = {
    CTL_TOKENS_OPT(fwd_opts_t, counts),
    {.name = "random", .kind = EPM_OPT_FLAG, AT(random), .help = "random tokens from --seed (the default)"},
    {.name = "input", .kind = EPM_OPT_STR, AT(input), .arg = "FILE",
     .help = "bf16 x [M, H] then fp32 logits [M, E], M = sum of the counts"},
    {.name = "seed", .kind = EPM_OPT_UINT64, AT(seed), .def = "1", .umin = 0, .umax = INT64_MAX,
     .flags = EPM_OPT_KMG, .arg = "S", .help = "seed of the random global token set"},
    {.name = "check", .kind = EPM_OPT_FLAG, AT(check),
     .help = "compare with the CPU reference; exit 1 above --tolerance"},
    {.name = "tolerance", .kind = EPM_OPT_DOUBLE, AT(tol), .def = "0.015625", .fmin = 0, .fmax = DBL_MAX,
     .arg = "T", .help = "largest max|y - ref| / max|ref| of --check (2^-6)"},
    {.name = "layer", .kind = EPM_OPT_INT64, AT(layer), .def = "0", .min = 0, .max = UINT32_MAX,
     .flags = EPM_OPT_KMG, .arg = "L", .help = "MoE layer index"},
    {.name = "step-id", .kind = EPM_OPT_INT64, AT(step_id), .min = 0, .max = INT64_MAX, .flags = EPM_OPT_KMG,
     .help = "the step's key (default: unique per invocation)"},
    {.name = "no-shared", .kind = EPM_OPT_FLAG, AT(no_shared),
     .help = "leave the shared expert out of y (what an engine that computes it itself sends;\n"
             "--check compares with the reference without it)"},
    {.name = "partial-dtype", .kind = EPM_OPT_ENUM, AT(partial), .def = "f32", .choices = partials,
     .help = "dtype of the partial sums in the reduce-scatter (a per-request option)"},
    {.name = "shm", .kind = EPM_OPT_SET, AT(shm), .value = 1,
     .help = "pass data through a sealed memfd per connection instead of inline"},
    {.name = "devmem", .kind = EPM_OPT_SET, AT(shm), .value = 2,
     .help = "pass data through CUDA device memory (cuMemCreate, fd over SCM_RIGHTS;\n"
             "rank r's region on GPU r; CUDA builds)"},
    {.name = "devipc", .kind = EPM_OPT_SET, AT(shm), .value = 3,
     .help = "as --devmem, through the legacy fallback: cudaMalloc + cudaIpcMemHandle_t\n"
             "sent in DEV_ATTACH, opened by the daemon with cudaIpcOpenMemHandle"},
};

int epm_ctl_forward(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_drive_t d;
  fwd_opts_t f = {.step_id = -1};
  epm_opt_result_t res;
  int rc = 0;
  ctl_target_defaults(&o, 60000);
  epm_opt_group_t g[] = {{NULL, fwd_opts, sizeof fwd_opts / sizeof fwd_opts[0], &f, NULL}, ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {
      .prog = "epmoectl forward",
      .synopsis = "usage: epmoectl forward --tokens-per-rank a,b,... [--random | --input FILE] [--seed S] [--check]\n"
                  "                        [--tolerance T] [--layer L] [--step-id N] [--no-shared] [--partial-dtype f32|bf16]\n"
                  "                        [--shm | --devmem | --devipc]\n"
                  "                        [--rank R | --all] [--socket-dir DIR]",
      .about = "One collective step through every rank's socket at once. The global token set is\n"
               "split over the ranks in rank order by --tokens-per-rank.",
      .epilog = "Exit: 0 ok, 1 failure or --check above tolerance, 64 usage error.",
      .groups = g,
      .ngroups = 2};
  rc = epm_ctl_args(&cmd, argc, argv, &res);
  if (rc < 0 && f.random && f.input) rc = epm_ctl_usage(&cmd, "--random and --input '%s' exclude each other", f.input);
  if (rc >= 0) {
    epm_opt_free(&cmd);
    return rc;
  }
  rc = 0;
  const int64_t *counts = f.counts.v;
  int ncounts = (int)f.counts.n; /* at most 2^20 (CTL_TOKENS_OPT) */
  long long step_id = f.step_id, layer = f.layer;
  double tol = f.tol;
  int check = f.check, shm = f.shm;
  uint64_t seed = f.seed;
  const char *input = f.input;
  if (step_id < 0) { /* unique per invocation, so it never meets an old aborted key */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    step_id = (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
  }
  if (ctl_drive_open(&d, &o, counts, ncounts, shm, "forward") || ctl_drive_fill(&d, seed, input, "forward") ||
      ctl_drive_set_options(&d, f.no_shared ? 0 : EPM_FWD_F_SHARED_EXPERT, (epm_dtype_t)f.partial, "forward")) {
    ctl_drive_close(&d);
    epm_opt_free(&cmd);
    return 1;
  }
  printf("forward: %d ranks, model %s (H %lld, E %lld) on %s, tokens", d.nranks, d.info.model,
         (long long)d.info.hidden, (long long)d.info.num_experts, d.info.backend);
  for (int r = 0; r < d.nranks; r++) printf("%s%lld", r ? "," : " ", (long long)d.m[r]);
  printf(" (M = %lld), %s data, layer %lld, step %lld, shared expert %s, partial %s\n", (long long)d.total,
         ctl_drive_mode_name(shm), layer, step_id, f.no_shared ? "off" : "on", epm_dtype_name((epm_dtype_t)f.partial));
  double t0 = epm_clock_s();
  int failed = ctl_drive_step(&d, (uint32_t)layer, (uint64_t)step_id);
  double wall = epm_clock_s() - t0;
  if (failed) {
    for (int r = 0; r < d.nranks; r++)
      if (d.st[r] != EPM_OK) fprintf(stderr, "epmoectl forward: %s\n", d.err[r]);
    rc = 1;
  } else {
    double srv = 0;
    for (int r = 0; r < d.nranks; r++) srv = fmax(srv, (double)d.step_ns[r] * 1e-6);
    printf("forward: step done in %.3f ms wall (%.3f ms inside the collective, max over ranks)\n", wall * 1e3, srv);
  }
  if (!rc && check) {
    size_t n = (size_t)(d.total * d.info.hidden);
    uint16_t *ref = calloc(n + 1, 2);
    char why[200];
    if (!ref || ctl_reference(&d, (uint32_t)layer, ref, why, sizeof why) != 0) {
      fprintf(stderr, "epmoectl forward: --check: %s\n", ref ? why : "no memory");
      rc = 1;
    } else {
      double maxerr = 0, maxref = 0;
      size_t bad = 0, worst = 0;
      for (size_t i = 0; i < n; i++) {
        double e = fabs((double)epm_bf16_to_f32(d.y[i]) - (double)epm_bf16_to_f32(ref[i]));
        if (!(e <= maxerr)) maxerr = e, worst = i; /* NaN counts as worst */
        maxref = fmax(maxref, fabs((double)epm_bf16_to_f32(ref[i])));
      }
      double rel = maxref > 0 ? maxerr / maxref : maxerr;
      for (size_t i = 0; i < n; i++)
        if (!(fabs((double)epm_bf16_to_f32(d.y[i]) - (double)epm_bf16_to_f32(ref[i])) <= tol * maxref)) bad++;
      printf("check: %zu values vs CPU reference: max relative error %.3g (max|y-ref| %.3g at token %zu, max|ref| %.3g), "
             "%zu above tolerance %.3g: %s\n",
             n, rel, maxerr, n ? worst / (size_t)d.info.hidden : 0, maxref, bad, tol, rel <= tol ? "PASS" : "FAIL");
      if (!(rel <= tol)) rc = 1;
    }
    free(ref);
  }
  ctl_drive_close(&d);
  epm_opt_free(&cmd);
  return rc;
}
