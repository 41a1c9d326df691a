/* epmoectl bench — drive FORWARD steps from every rank's client for a
 * duration; print steps, tokens/s and p50/p99 step latency (wall time of one
 * collective step as seen by the driver, from the first send to the last
 * answer). The data is sent once per step (inline, or via --shm). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "ctl_drive.h"

int epm_ctl_bench(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_drive_t d;
  int64_t *counts = NULL;
  int ncounts = 0, shm = 0, rc = 0;
  long long warmup = 3;
  double duration = 5;
  ctl_target_defaults(&o, 60000);
  for (int i = 1; i < argc; i++) {
    int k = ctl_target_opt(&o, argc, argv, &i, "bench");
    const char *a = argv[i];
    if (k == 2) return 2;
    if (k) continue;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      printf("usage: epmoectl bench --tokens-per-rank a,b,... [--duration S] [--warmup N] [--shm | --devmem | --devipc] [--all] [--socket-dir DIR]\n"
             "  --shm     data through a sealed memfd per connection\n"
             "  --devmem  data through CUDA device memory (cuMemCreate fd over SCM_RIGHTS; rank r on GPU r)\n"
             "  --devipc  as --devmem via the legacy fallback (cudaMalloc + cudaIpcMemHandle_t)\n%s",
             ctl_target_help);
      return 0;
    } else if (strcmp(a, "--shm") == 0) shm = 1;
    else if (strcmp(a, "--devmem") == 0) shm = 2;
    else if (strcmp(a, "--devipc") == 0) shm = 3;
    else if (i + 1 >= argc) {
      fprintf(stderr, "epmoectl bench: unknown option or missing value '%s' (see --help)\n", a);
      return 2;
    } else if (strcmp(a, "--tokens-per-rank") == 0) {
      if ((ncounts = ctl_parse_counts(a, argv[++i], &counts)) < 0) return 2;
    } else if (strcmp(a, "--warmup") == 0) {
      if (epm_ctl_parse_i64(a, argv[++i], 0, 1000000, &warmup)) return 2;
    } else if (strcmp(a, "--duration") == 0) {
      char *end;
      duration = strtod(argv[++i], &end);
      if (*end || !(duration > 0) || duration > 86400) {
        fprintf(stderr, "epmoectl bench: bad value for --duration: '%s' (seconds, > 0)\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "epmoectl bench: unknown option '%s' (see --help)\n", a);
      return 2;
    }
  }
  if (!counts) {
    fprintf(stderr, "epmoectl bench: --tokens-per-rank is required (see --help)\n");
    return 2;
  }
  if (ctl_drive_open(&d, &o, counts, ncounts, shm, "bench") || ctl_drive_fill(&d, 7, NULL, "bench")) {
    ctl_drive_close(&d);
    free(counts);
    return 1;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t step = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
  size_t cap = 1024, n = 0;
  double *lat = malloc(cap * sizeof *lat), *srv = malloc(cap * sizeof *srv);
  for (long long w = 0; w < warmup && !rc; w++) rc = ctl_drive_step(&d, 0, step++) ? 1 : 0;
  double t0 = ctl_now_s(), t = t0;
  while (!rc && t - t0 < duration && lat && srv) {
    double s0 = ctl_now_s();
    if (ctl_drive_step(&d, 0, step++)) {
      rc = 1;
      break;
    }
    t = ctl_now_s();
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
  free(counts);
  return rc;
}
