/* epmoectl bench — drive FORWARD steps from every rank's client for a
 * duration; print steps, tokens/s and p50/p99 step latency (wall time of one
 * collective step as seen by the driver, from the first send to the last
 * answer). The data is sent once per step (inline, or via --shm). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/clock.h"
#include "ctl.h"
#include "ctl_drive.h"

typedef struct {
  epm_opt_list_t counts;
  long long warmup;
  double duration;
  int shm;
} bench_opts_t;

#define AT(field) EPM_OPT_AT(bench_opts_t, field)

static const epm_opt_t bench_opts[] = {
    CTL_TOKENS_OPT(bench_opts_t, counts),
    {.name = "duration", .kind = EPM_OPT_DOUBLE, AT(duration), .def = "5", .fmin = 0, .fmax = 86400,
     .flags = EPM_OPT_MIN_EXCLUSIVE, .arg = "S", .help = "seconds of measured steps"},
    {.name = "warmup", .kind = EPM_OPT_INT64, AT(warmup), .def = "3", .min = 0, .max = 1000000,
     .flags = EPM_OPT_KMG, .help = "untimed steps first"},
    {.name = "shm", .kind = EPM_OPT_SET, AT(shm), .value = 1, .help = "data through a sealed memfd per connection"},
    {.name = "devmem", .kind = EPM_OPT_SET, AT(shm), .value = 2,
     .help = "data through CUDA device memory (cuMemCreate fd over SCM_RIGHTS; rank r on GPU r)"},
    {.name = "devipc", .kind = EPM_OPT_SET, AT(shm), .value = 3,
     .help = "as --devmem via the legacy fallback (cudaMalloc + cudaIpcMemHandle_t)"},
};

int epm_ctl_bench(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_drive_t d;
  bench_opts_t b = {0};
  epm_opt_result_t res;
  int rc;
  ctl_target_defaults(&o, 60000);
  epm_opt_group_t g[] = {{NULL, bench_opts, sizeof bench_opts / sizeof bench_opts[0], &b, NULL},
                         ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {
      .prog = "epmoectl bench",
      .synopsis = "usage: epmoectl bench --tokens-per-rank a,b,... [--duration S] [--warmup N] [--shm | --devmem | --devipc]\n"
                  "                      [--rank R | --all] [--socket-dir DIR]",
      .about = "Drive FORWARD steps from every rank's client for a duration; print steps,\n"
               "tokens/s and p50/p99 step latency.",
      .epilog = "Exit: 0 ok, 1 failure, 64 usage error.",
      .groups = g,
      .ngroups = 2};
  if ((rc = epm_ctl_args(&cmd, argc, argv, &res)) >= 0) {
    epm_opt_free(&cmd);
    return rc;
  }
  rc = 0;
  const int64_t *counts = b.counts.v;
  int ncounts = (int)b.counts.n, shm = b.shm; /* at most 2^20 counts (CTL_TOKENS_OPT) */
  long long warmup = b.warmup;
  double duration = b.duration;
  if (ctl_drive_open(&d, &o, counts, ncounts, shm, "bench") || ctl_drive_fill(&d, 7, NULL, "bench")) {
    ctl_drive_close(&d);
    epm_opt_free(&cmd);
    return 1;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t step = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
  size_t cap = 1024, n = 0;
  double *lat = malloc(cap * sizeof *lat), *srv = malloc(cap * sizeof *srv);
  for (long long w = 0; w < warmup && !rc; w++) rc = ctl_drive_step(&d, 0, step++) ? 1 : 0;
  double t0 = epm_clock_s(), t = t0;
  while (!rc && t - t0 < duration && lat && srv) {
    double s0 = epm_clock_s();
    if (ctl_drive_step(&d, 0, step++)) {
      rc = 1;
      break;
    }
    t = epm_clock_s();
    if (n == cap) {
      cap *= 2;
      double *nl = realloc(lat, cap * sizeof *lat), *ns = realloc(srv, cap * sizeof *srv);
      if (!nl || !ns) break;
      lat = nl, srv = ns;
    }
    double mx = 0;
    for (int r = 0; r < d.nranks; r++) mx = fmax(mx, (double)d.step_ns[r] * 1e-9);
    lat[n] = t - s0;
    srv[n++] = mx;
  }
  if (rc) {
    for (int r = 0; r < d.nranks; r++)
      if (d.st[r] != EPM_OK) fprintf(stderr, "epmoectl bench: %s\n", d.err[r]);
  } else if (n) {
    double el = t - t0;
    qsort(lat, n, sizeof *lat, ctl_cmp_double);
    qsort(srv, n, sizeof *srv, ctl_cmp_double);
    printf("bench: %d ranks, model %s (H %lld, E %lld) on %s, %s data, tokens/step %lld (",
           d.nranks, d.info.model, (long long)d.info.hidden, (long long)d.info.num_experts, d.info.backend,
           ctl_drive_mode_name(shm), (long long)d.total);
    for (int r = 0; r < d.nranks; r++) printf("%s%lld", r ? "," : "", (long long)d.m[r]);
    printf(")\n");
    printf("bench: %zu steps in %.2f s: %.1f steps/s, %.0f tokens/s\n", n, el, (double)n / el,
           (double)n * (double)d.total / el);
    printf("bench: step latency (driver wall) p50 %.3f ms, p99 %.3f ms, max %.3f ms; "
           "inside the collective p50 %.3f ms, p99 %.3f ms\n",
           lat[n / 2] * 1e3, lat[(size_t)((double)(n - 1) * 0.99)] * 1e3, lat[n - 1] * 1e3, srv[n / 2] * 1e3,
           srv[(size_t)((double)(n - 1) * 0.99)] * 1e3);
  }
  free(lat);
  free(srv);
  ctl_drive_close(&d);
  epm_opt_free(&cmd);
  return rc;
}
