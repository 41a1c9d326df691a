/* SPDX-License-Identifier: Apache-2.0 */
/* test_srv_stats: what the daemon exports about itself (daemon/srv_stats.c),
 * rendered from counters set here by hand, against values measured here
 * independently:
 *  - the Prometheus text is well formed (one HELP/TYPE per family, every
 *    sample of a declared family, every value a number);
 *  - no stage="total" among the stage series, so sum by (stage) equals the
 *    stages' own sum, and the whole step is its own series;
 *  - in-flight and last-step gauges from the counters;
 *  - process_* against /proc/self/fd, a touched buffer, a busy loop and the
 *    clock read at main();
 *  - the JSON and INFO forms say the same. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "epmoe/engine.h"
#include "srv.h"

static double main_started; /* Unix seconds, read first thing in main() */
static srv_t S;

static double unix_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int setup(void **state) {
  (void)state;
  memset(&S, 0, sizeof S);
  pthread_mutex_init(&S.state_mu, NULL);
  srv_stats_init(&S.stats);
  S.rank = 2;
  S.size = 4;
  S.state = SRV_ST_READY;
  /* the engine's own stage names, "total" among them, with sums 1, 2, 4, ...
   * for the stages and 1000 for the whole step */
  S.stats.nstages = EPM_STAGE_COUNT;
  for (int i = 0; i < EPM_STAGE_COUNT; i++) {
    S.stats.stage_name[i] = epm_engine_stage_name((epm_engine_stage_t)i);
    int total = strcmp(S.stats.stage_name[i], "total") == 0;
    S.stats.stage_sum[i] = total ? 1000.0 : (double)(1 << i);
    S.stats.stage_last[i] = total ? 10.0 : 0.5;
  }
  return 0;
}

static char *render(int fmt) {
  epm_buf_t b = {0};
  srv_render_stats(&S, &b, fmt);
  epm_buf_put(&b, "", 1);
  char *s = strdup((const char *)b.data);
  epm_buf_free(&b);
  return s;
}

/* The value of the sample "name{labels}" (labels exactly as written), or NAN. */
static double sample(const char *text, const char *series) {
  char key[256];
  snprintf(key, sizeof key, "\n%s ", series);
  const char *p = strstr(text, key);
  return p ? strtod(p + strlen(key), NULL) : NAN;
}

/* Text exposition 0.0.4, as a scraper reads it. */
static void check_exposition(const char *text) {
  char *copy = strdup(text), *save = NULL;
  char typed[128][96];
  int ntyped = 0;
  for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char name[96];
    if (strncmp(line, "# HELP ", 7) == 0) continue;
    if (strncmp(line, "# TYPE ", 7) == 0) {
      char type[32];
      assert_int_equal(sscanf(line + 7, "%95s %31s", name, type), 2);
      assert_true(!strcmp(type, "counter") || !strcmp(type, "gauge") || !strcmp(type, "histogram"));
      for (int i = 0; i < ntyped; i++)
        if (!strcmp(typed[i], name)) fail_msg("family %s typed twice", name);
      assert_true(ntyped < 128);
      snprintf(typed[ntyped++], sizeof typed[0], "%s", name);
      continue;
    }
    assert_true(line[0] != '#');
    assert_int_equal(sscanf(line, "%95[a-zA-Z0-9_:]", name), 1);
    const char *close = strchr(line, '}');
    assert_non_null(close); /* every series has labels: rank at least */
    assert_non_null(strstr(line, "rank=\"2\""));
    char *end = NULL;
    double v = strtod(close + 2, &end);
    if (*end != '\0') fail_msg("value of '%s' is not a number", line);
    (void)v;
    int declared = 0; /* the family: the name, or a histogram's base */
    for (int i = 0; i < ntyped && !declared; i++) {
      size_t k = strlen(typed[i]);
      declared = !strncmp(name, typed[i], k) && (!name[k] || !strcmp(name + k, "_bucket") ||
                                                  !strcmp(name + k, "_sum") || !strcmp(name + k, "_count"));
    }
    if (!declared) fail_msg("sample %s before its TYPE line", name);
  }
  free(copy);
}

static void test_no_total_stage(void **state) {
  (void)state;
  char *t = render(EPM_FMT_PROMETHEUS);
  check_exposition(t);
  assert_null(strstr(t, "stage=\"total\""));
  /* sum by (stage) of the counters = the stages' own sums (1 + 2 + 4 + ...) */
  double sum = 0, want = 0;
  int n = 0;
  for (int i = 0; i < EPM_STAGE_COUNT; i++) {
    const char *name = epm_engine_stage_name((epm_engine_stage_t)i);
    if (!strcmp(name, "total")) continue;
    char series[128];
    snprintf(series, sizeof series, "epmoe_stage_seconds_total{rank=\"2\",stage=\"%s\"}", name);
    double v = sample(t, series);
    assert_true(v == v); /* not NaN: the series is there */
    sum += v;
    want += (double)(1 << i);
    n++;
  }
  assert_int_equal(n, EPM_STAGE_COUNT - 1);
  assert_true(sum == want);
  assert_true(sample(t, "epmoe_engine_seconds_total{rank=\"2\"}") == 1000.0);
  assert_true(sample(t, "epmoe_last_step_engine_seconds{rank=\"2\"}") == 10.0);
  assert_true(sample(t, "epmoe_last_step_stage_seconds{rank=\"2\",stage=\"route\"}") == 0.5);
  free(t);
}

static void test_in_flight_and_last_step(void **state) {
  (void)state;
  char *t = render(EPM_FMT_PROMETHEUS);
  assert_true(sample(t, "epmoe_forwards_in_flight{rank=\"2\"}") == 0);
  assert_true(sample(t, "epmoe_last_step_timestamp_seconds{rank=\"2\"}") == 0); /* no step yet */
  free(t);
  /* 5 FORWARDs received, 3 answered (their request latency recorded) */
  S.stats.forwards_total = 5;
  for (int i = 0; i < 3; i++) srv_hist_add(&S.stats, SRV_H_REQUEST, 0.01);
  double t0 = unix_now();
  srv_hist_add(&S.stats, SRV_H_STEP, 0.5);
  srv_hist_add(&S.stats, SRV_H_STEP, 0.25);
  double t1 = unix_now();
  S.stats.last_step_tokens = 77;
  t = render(EPM_FMT_PROMETHEUS);
  check_exposition(t);
  assert_true(sample(t, "epmoe_forwards_in_flight{rank=\"2\"}") == 2);
  assert_true(sample(t, "epmoe_last_step_seconds{rank=\"2\"}") == 0.25);
  assert_true(sample(t, "epmoe_last_step_tokens{rank=\"2\"}") == 77);
  double ts = sample(t, "epmoe_last_step_timestamp_seconds{rank=\"2\"}");
  assert_true(ts >= t0 - 0.001 && ts <= t1 + 0.001); /* printed to the millisecond */
  assert_true(sample(t, "epmoe_step_in_progress{rank=\"2\"}") == 0);
  free(t);
}

static int64_t count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int64_t n = 0;
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
  closedir(d);
  return n - 1;
}

static void test_process_series(void **state) {
  (void)state;
  char *t = render(EPM_FMT_PROMETHEUS);
  check_exposition(t);
  double fds0 = sample(t, "process_open_fds{rank=\"2\"}"), rss0 = sample(t, "process_resident_memory_bytes{rank=\"2\"}");
  double cpu0 = sample(t, "process_cpu_seconds_total{rank=\"2\"}");
  double start = sample(t, "process_start_time_seconds{rank=\"2\"}");
  assert_true(fds0 == (double)count_fds());
  assert_true(rss0 > 0 && sample(t, "process_virtual_memory_bytes{rank=\"2\"}") >= rss0);
  assert_true(sample(t, "process_max_fds{rank=\"2\"}") >= fds0);
  /* started before main() ran, and not long before (clock ticks of 10 ms) */
  assert_true(start <= main_started + 0.02 && start > main_started - 60);
  free(t);

  /* three more descriptors, 64 MB touched, 0.2 s of CPU */
  int fd[3] = {open("/dev/null", O_RDONLY), open("/dev/null", O_RDONLY), open("/dev/null", O_RDONLY)};
  size_t big = (size_t)64 << 20;
  volatile char *buf = malloc(big);
  assert_non_null((void *)buf);
  for (size_t i = 0; i < big; i += 4096) buf[i] = (char)i;
  /* 0.2 s of this process's CPU time by its own clock (wall time would
   * depend on what else the machine runs) */
  struct timespec c0, c1;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  volatile double x = 0;
  do {
    for (int i = 0; i < 100000; i++) x += 1.0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  } while ((double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) * 1e-9 < 0.2);
  t = render(EPM_FMT_PROMETHEUS);
  assert_true(sample(t, "process_open_fds{rank=\"2\"}") == fds0 + 3);
  assert_true(sample(t, "process_resident_memory_bytes{rank=\"2\"}") >= rss0 + 60.0 * (1 << 20));
  assert_true(sample(t, "process_cpu_seconds_total{rank=\"2\"}") >= cpu0 + 0.15);
  free(t);
  for (int i = 0; i < 3; i++) close(fd[i]);
  free((void *)buf);
}

static void test_json_and_info_agree(void **state) {
  (void)state;
  S.stats.forwards_total = 4;
  srv_hist_add(&S.stats, SRV_H_REQUEST, 0.01);
  srv_hist_add(&S.stats, SRV_H_STEP, 0.125);
  S.stats.last_step_tokens = 9;
  char *t = render(EPM_FMT_JSON);
  json_error_t je;
  json_t *o = json_loads(t, 0, &je);
  if (!o) fail_msg("stats JSON does not parse: %s: %s", je.text, t);
  json_t *stages = json_object_get(o, "stages");
  assert_int_equal(json_object_size(stages), EPM_STAGE_COUNT - 1);
  assert_null(json_object_get(stages, "total"));
  assert_true(json_real_value(json_object_get(json_object_get(o, "engine"), "sum")) == 1000.0);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "in_flight"), "forwards")), 3);
  assert_true(json_real_value(json_object_get(json_object_get(o, "last_step"), "seconds")) == 0.125);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "last_step"), "tokens")), 9);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "process"), "open_fds")), count_fds());
  json_decref(o);
  free(t);
  t = render(EPM_FMT_TEXT);
  assert_null(strstr(t, "stage_total"));
  assert_non_null(strstr(t, "engine_seconds:last=10.000000,sum=1000.000000\r\n"));
  assert_non_null(strstr(t, "forwards_in_flight:3\r\n"));
  assert_non_null(strstr(t, "last_step_tokens:9\r\n"));
  assert_non_null(strstr(t, "\r\n# Process\r\n"));
  free(t);
}

int main(void) {
  main_started = unix_now();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_no_total_stage, setup),
      cmocka_unit_test_setup(test_in_flight_and_last_step, setup),
      cmocka_unit_test_setup(test_process_series, setup),
      cmocka_unit_test_setup(test_json_and_info_agree, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
