/* epmoectl forward — one collective step through every rank's socket at once
 * (one thread per rank). The global token set (random from --seed, or read
 * from --input) is split over the ranks in rank order by --tokens-per-rank;
 * --check recomputes the same global set on the CPU reference (EP = 1, the
 * full layer) and prints the max relative error, max|y - ref| / max|ref|,
 * exiting 1 above --tolerance. The default 2^-6 is the engine's documented
 * bound for EP=N vs EP=1 (fp32 partial-sum order can move the bf16 rounding by
 * about two ulps at the output's scale; docs/ARCHITECTURE.md "Engine"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "ctl_drive.h"

static float bf16f(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static void usage(void) {
  printf("usage: epmoectl forward --tokens-per-rank a,b,... [--random | --input FILE] [--seed S] [--check]\n"
         "                        [--tolerance T] [--layer L] [--step-id N] [--shm | --devmem | --devipc] [--all] [--socket-dir DIR]\n"
         "  --tokens-per-rank  tokens each rank sends, in rank order (0 joins the step with no work)\n"
         "  --input FILE       bf16 x [M, H] then fp32 logits [M, E], M = sum of the counts\n"
         "  --check            compare with the CPU reference; exit 1 above --tolerance (default 2^-6 = 0.015625)\n"
         "  --shm              pass data through a sealed memfd per connection instead of inline\n"
         "  --devmem           pass data through CUDA device memory (cuMemCreate, fd over SCM_RIGHTS;\n"
         "                     rank r's region on GPU r; CUDA builds)\n"
         "  --devipc           as --devmem, through the legacy fallback: cudaMalloc + cudaIpcMemHandle_t\n"
         "                     sent in DEV_ATTACH, opened by the daemon with cudaIpcOpenMemHandle\n%s",
         ctl_target_help);
}

int epm_ctl_forward(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_drive_t d;
  int64_t *counts = NULL;
  int ncounts = 0, check = 0, shm = 0, rc = 0;
  long long seed = 1, layer = 0, step_id = -1;
  double tol = 0.015625; /* 2^-6: the engine's documented EP=N vs EP=1 bound */
  const char *input = NULL;
  ctl_target_defaults(&o, 60000);
  for (int i = 1; i < argc; i++) {
    int k = ctl_target_opt(&o, argc, argv, &i, "forward");
    const char *a = argv[i];
    if (k == 2) return 2;
    if (k) continue;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage();
      return 0;
    } else if (strcmp(a, "--check") == 0) check = 1;
    else if (strcmp(a, "--shm") == 0) shm = 1;
    else if (strcmp(a, "--devmem") == 0) shm = 2;
    else if (strcmp(a, "--devipc") == 0) shm = 3;
    else if (strcmp(a, "--random") == 0) input = NULL;
    else if (i + 1 >= argc) {
      fprintf(stderr, "epmoectl forward: unknown option or missing value '%s' (see --help)\n", a);
      return 2;
    } else if (strcmp(a, "--tokens-per-rank") == 0) {
      if ((ncounts = ctl_parse_counts(a, argv[++i], &counts)) < 0) return 2;
    } else if (strcmp(a, "--input") == 0) input = argv[++i];
    else if (strcmp(a, "--seed") == 0) {
      if (epm_ctl_parse_i64(a, argv[++i], 0, INT64_MAX, &seed)) return 2;
    } else if (strcmp(a, "--layer") == 0) {
      if (epm_ctl_parse_i64(a, argv[++i], 0, UINT32_MAX, &layer)) return 2;
    } else if (strcmp(a, "--step-id") == 0) {
      if (epm_ctl_parse_i64(a, argv[++i], 0, INT64_MAX, &step_id)) return 2;
    } else if (strcmp(a, "--tolerance") == 0) {
      char *end;
      tol = strtod(argv[++i], &end);
      if (*end || !(tol >= 0)) {
        fprintf(stderr, "epmoectl forward: bad value for --tolerance: '%s'\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "epmoectl forward: unknown option '%s' (see --help)\n", a);
      return 2;
    }
  }
  if (!counts) {
    fprintf(stderr, "epmoectl forward: --tokens-per-rank is required (see --help)\n");
    return 2;
  }
  if (step_id < 0) { /* unique per invocation, so it never meets an old aborted key */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    step_id = (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
  }
  if (ctl_drive_open(&d, &o, counts, ncounts, shm, "forward") || ctl_drive_fill(&d, (uint64_t)seed, input, "forward")) {
    ctl_drive_close(&d);
    free(counts);
    return 1;
  }
  printf("forward: %d ranks, model %s (H %lld, E %lld) on %s, tokens", d.nranks, d.info.model,
         (long long)d.info.hidden, (long long)d.info.num_experts, d.info.backend);
  for (int r = 0; r < d.nranks; r++) printf("%s%lld", r ? "," : " ", (long long)d.m[r]);
  printf(" (M = %lld), %s data, layer %lld, step %lld\n", (long long)d.total, ctl_drive_mode_name(shm), layer, step_id);
  double t0 = ctl_now_s();
  int failed = ctl_drive_step(&d, (uint32_t)layer, (uint64_t)step_id);
  double wall = ctl_now_s() - t0;
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
        double e = fabs((double)bf16f(d.y[i]) - (double)bf16f(ref[i]));
        if (!(e <= maxerr)) maxerr = e, worst = i; /* NaN counts as worst */
        maxref = fmax(maxref, fabs((double)bf16f(ref[i])));
      }
      double rel = maxref > 0 ? maxerr / maxref : maxerr;
      for (size_t i = 0; i < n; i++)
        if (!(fabs((double)bf16f(d.y[i]) - (double)bf16f(ref[i])) <= tol * maxref)) bad++;
      printf("check: %zu values vs CPU reference: max relative error %.3g (max|y-ref| %.3g at token %zu, max|ref| %.3g), "
             "%zu above tolerance %.3g: %s\n",
             n, rel, maxerr, n ? worst / (size_t)d.info.hidden : 0, maxref, bad, tol, rel <= tol ? "PASS" : "FAIL");
      if (!(rel <= tol)) rc = 1;
    }
    free(ref);
  }
  ctl_drive_close(&d);
  free(counts);
  return rc;
}
