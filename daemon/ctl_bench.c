/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl bench — drive FORWARD steps from every rank's client for a
 * duration; print steps, tokens/s and p50/p99 step latency (wall time of one
 * collective step as seen by the driver, from the first send to the last
 * answer). The data is sent once per step (inline, or via --shm).
 *
 * --doorbell measures what a step costs on top of the step itself, for the
 * two ways a client can ask: memfd FORWARDs over the socket (one thread per
 * rank, kept for the whole run and released together by a barrier each
 * step) and the host doorbell (one thread rings every rank, then waits for
 * every answer). Overhead of a step = the driver's round trip minus the
 * longest time a rank spent inside the collective; p50 and p99 over the
 * steps. */
#include <math.h>
#include <pthread.h>
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
  int shm, doorbell;
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
    {.name = "doorbell", .kind = EPM_OPT_FLAG, AT(doorbell),
     .help = "measure the overhead over the step itself of memfd FORWARDs over the socket\n"
             "and of the host doorbell, --duration each (implies --shm)"},
};

/* ---- --doorbell ------------------------------------------------------------- */

typedef struct {
  double *v;
  size_t n, cap;
} series_t;

static int series_add(series_t *s, double x) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    double *p = realloc(s->v, cap * sizeof *p);
    if (!p) return -1;
    s->v = p, s->cap = cap;
  }
  s->v[s->n++] = x;
  return 0;
}

static double pct(series_t *s, double q) {
  if (!s->n) return 0;
  qsort(s->v, s->n, sizeof *s->v, ctl_cmp_double);
  return s->v[(size_t)((double)(s->n - 1) * q)];
}

typedef struct {
  ctl_drive_t *d;
  pthread_barrier_t go, done;
  uint64_t step_id;
  int stop;
} sock_run_t;

typedef struct {
  sock_run_t *run;
  int r;
} sock_arg_t;

/* One rank's persistent thread: a memfd FORWARD per barrier round. */
static void *sock_rank(void *arg) {
  sock_arg_t *a = arg;
  sock_run_t *run = a->run;
  ctl_drive_t *d = run->d;
  const int r = a->r;
  const int64_t H = d->info.hidden, E = d->info.num_experts, m = d->m[r];
  const size_t xb = (size_t)(m * H) * 2, lb = (size_t)(m * E) * 4;
  for (;;) {
    pthread_barrier_wait(&run->go);
    if (run->stop) return NULL;
    d->st[r] = epm_client_forward_shm(d->cl[r], 0, run->step_id, m, 0, xb, xb + lb, &d->step_ns[r]);
    if (d->st[r] != EPM_OK) {
      free(d->err[r]);
      d->err[r] = strdup(epm_last_error());
    }
    pthread_barrier_wait(&run->done);
  }
}

static void print_series(const char *what, series_t *rt, series_t *step, series_t *ovh, double el) {
  printf("bench: %-24s %zu steps in %.2f s: round trip p50 %.1f us; step p50 %.1f us; "
         "overhead p50 %.1f us, p99 %.1f us\n",
         what, ovh->n, el, pct(rt, 0.5) * 1e6, pct(step, 0.5) * 1e6, pct(ovh, 0.5) * 1e6, pct(ovh, 0.99) * 1e6);
}

static double max_step_s(const ctl_drive_t *d) {
  double mx = 0;
  for (int r = 0; r < d->nranks; r++) mx = fmax(mx, (double)d->step_ns[r] * 1e-9);
  return mx;
}

static int bench_socket(ctl_drive_t *d, uint64_t *step, long long warmup, double duration, series_t *rt, series_t *st,
                        series_t *ov, double *el) {
  sock_run_t run = {.d = d};
  pthread_t *th = calloc((size_t)d->nranks, sizeof *th);
  sock_arg_t *args = calloc((size_t)d->nranks, sizeof *args);
  int rc = 0;
  if (!th || !args) {
    free(th), free(args);
    return 1;
  }
  /* The same data as the doorbell phase: written once, stepped many times. */
  for (int r = 0; r < d->nranks; r++) {
    size_t xb = (size_t)(d->m[r] * d->info.hidden) * 2;
    memcpy(d->region[r], d->x + d->off[r] * d->info.hidden, xb);
    memcpy((uint8_t *)d->region[r] + xb, d->logits + d->off[r] * d->info.num_experts,
           (size_t)(d->m[r] * d->info.num_experts) * 4);
  }
  pthread_barrier_init(&run.go, NULL, (unsigned)d->nranks + 1);
  pthread_barrier_init(&run.done, NULL, (unsigned)d->nranks + 1);
  for (int r = 0; r < d->nranks; r++) {
    args[r] = (sock_arg_t){&run, r};
    pthread_create(&th[r], NULL, sock_rank, &args[r]);
  }
  double t0 = 0, t = 0;
  for (long long i = 0; !rc; i++) {
    if (i == warmup) t0 = epm_clock_s();
    if (i >= warmup && (t = epm_clock_s()) - t0 >= duration) break;
    run.step_id = (*step)++;
    double s0 = epm_clock_s();
    pthread_barrier_wait(&run.go);
    pthread_barrier_wait(&run.done);
    double lat = epm_clock_s() - s0;
    for (int r = 0; r < d->nranks; r++)
      if (d->st[r] != EPM_OK) {
        fprintf(stderr, "epmoectl bench: socket path, rank %d: %s\n", r, d->err[r] ? d->err[r] : "failed");
        rc = 1;
      }
    if (i >= warmup && !rc) {
      double sx = max_step_s(d);
      if (series_add(rt, lat) || series_add(st, sx) || series_add(ov, lat - sx)) rc = 1;
    }
  }
  *el = t - t0;
  run.stop = 1;
  pthread_barrier_wait(&run.go);
  for (int r = 0; r < d->nranks; r++) pthread_join(th[r], NULL);
  pthread_barrier_destroy(&run.go);
  pthread_barrier_destroy(&run.done);
  free(th), free(args);
  return rc;
}

static int bench_doorbell(ctl_drive_t *d, uint64_t *step, long long warmup, double duration, series_t *rt, series_t *st,
                          series_t *ov, double *el) {
  const int n = d->nranks;
  const int64_t H = d->info.hidden, E = d->info.num_experts;
  epm_doorbell_t **db = calloc((size_t)n, sizeof *db);
  if (!db) return 1;
  /* Step ids continue the socket phase's: every rank's doorbell gets the
   * same base, so their k-th rings form one step. */
  const uint64_t base = *step;
  for (int r = 0; r < n; r++) {
    if (epm_client_doorbell_create(d->cl[r], d->m[r] > 0 ? d->m[r] : 1, base, &db[r]) != EPM_OK) {
      fprintf(stderr, "epmoectl bench: rank %d: %s\n", r, epm_last_error());
      free(db);
      return 1;
    }
    memcpy(epm_doorbell_x(db[r]), d->x + d->off[r] * H, (size_t)(d->m[r] * H) * 2);
    memcpy(epm_doorbell_logits(db[r]), d->logits + d->off[r] * E, (size_t)(d->m[r] * E) * 4);
  }
  int rc = 0;
  double t0 = 0, t = 0;
  for (long long i = 0; !rc; i++) {
    if (i == warmup) t0 = epm_clock_s();
    if (i >= warmup && (t = epm_clock_s()) - t0 >= duration) break;
    double s0 = epm_clock_s();
    for (int r = 0; r < n && !rc; r++)
      if (epm_doorbell_ring(db[r], 0, d->m[r], d->step_flags, d->partial_dtype) != EPM_OK) rc = 1;
    for (int r = 0; r < n && !rc; r++)
      if (epm_doorbell_wait(db[r], 0, &d->step_ns[r]) != EPM_OK) rc = 1;
    double lat = epm_clock_s() - s0;
    if (rc) fprintf(stderr, "epmoectl bench: doorbell: %s\n", epm_last_error());
    else if (i >= warmup) {
      double sx = max_step_s(d);
      if (series_add(rt, lat) || series_add(st, sx) || series_add(ov, lat - sx)) rc = 1;
    }
    (*step)++;
  }
  *el = t - t0;
  free(db); /* the doorbells belong to the connections */
  return rc;
}

static int run_doorbell_bench(ctl_drive_t *d, long long warmup, double duration) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t step = (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
  series_t v[6] = {{0}};
  double el[2] = {0, 0};
  int rc = bench_socket(d, &step, warmup, duration, &v[0], &v[1], &v[2], &el[0]);
  if (!rc) rc = bench_doorbell(d, &step, warmup, duration, &v[3], &v[4], &v[5], &el[1]);
  if (!rc) {
    printf("bench: %d ranks, model %s (H %lld, E %lld) on %s, tokens/step %lld (", d->nranks, d->info.model,
           (long long)d->info.hidden, (long long)d->info.num_experts, d->info.backend, (long long)d->total);
    for (int r = 0; r < d->nranks; r++) printf("%s%lld", r ? "," : "", (long long)d->m[r]);
    printf("); overhead = round trip - max over ranks of the time inside the collective\n");
    print_series("socket (memfd FORWARD):", &v[0], &v[1], &v[2], el[0]);
    print_series("doorbell (host):", &v[3], &v[4], &v[5], el[1]);
  }
  for (int i = 0; i < 6; i++) free(v[i].v);
  return rc;
}

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
      .synopsis = "usage: epmoectl bench --tokens-per-rank a,b,... [--duration S] [--warmup N]\n"
                  "                      [--shm | --devmem | --devipc | --doorbell]\n"
                  "                      [--rank R | --all] [--socket-dir DIR]",
      .about = "Drive FORWARD steps from every rank's client for a duration; print steps,\n"
               "tokens/s and p50/p99 step latency.",
      .epilog = "Exit: 0 ok, 1 failure, 64 usage error.",
      .groups = g,
      .ngroups = 2};
  rc = epm_ctl_args(&cmd, argc, argv, &res);
  if (rc < 0 && b.doorbell && b.shm)
    rc = epm_ctl_usage(&cmd, "--doorbell measures the memfd and doorbell paths itself; leave out --shm/--devmem/--devipc");
  if (rc >= 0) {
    epm_opt_free(&cmd);
    return rc;
  }
  rc = 0;
  const int64_t *counts = b.counts.v;
  int ncounts = (int)b.counts.n, shm = b.doorbell ? 1 : b.shm; /* at most 2^20 counts (CTL_TOKENS_OPT) */
  long long warmup = b.warmup;
  double duration = b.duration;
  if (ctl_drive_open(&d, &o, counts, ncounts, shm, "bench") || ctl_drive_fill(&d, 7, NULL, "bench")) {
    ctl_drive_close(&d);
    epm_opt_free(&cmd);
    return 1;
  }
  if (b.doorbell) {
    rc = run_doorbell_bench(&d, warmup, duration);
    ctl_drive_close(&d);
    epm_opt_free(&cmd);
    return rc;
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
