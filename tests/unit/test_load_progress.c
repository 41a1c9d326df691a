/* SPDX-License-Identifier: Apache-2.0 */
/* test_load_progress: progress of long loads when stderr is not a terminal
 * (a log file here, as under journald or kubectl logs): a line at each
 * further 10 % and after interval_s of silence, never a line per call, the
 * summary at the end, nothing when quiet. Counts and percentages are worked
 * by hand from the byte counts fed in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/log.h"
#include "epmoe/weights.h"
#include "testutil.h"

/* Percentages of the progress lines of `what` in out, in order; returns how
 * many (at most max). The summary line ("what: done, ...") is not one. */
static int percents(const char *out, const char *what, int *pct, int max) {
  int n = 0;
  char key[128];
  snprintf(key, sizeof key, "%s: ", what);
  for (const char *p = strstr(out, key); p; p = strstr(p + 1, key)) {
    const char *open = strchr(p, '('), *eol = strchr(p, '\n');
    if (strncmp(p + strlen(key), "done,", 5) == 0) continue;
    assert_non_null(open);
    assert_true(!eol || open < eol);
    assert_true(n < max);
    pct[n++] = atoi(open + 1);
  }
  return n;
}

static void test_tenths_not_calls(void **state) {
  (void)state;
  epm_load_progress_t p;
  int pct[32];
  epm_test_stderr_begin();
  epm_load_progress_begin(&p, "loading x", 1000, EPM_PROGRESS_AUTO); /* stderr is a file: lines */
  for (int i = 0; i < 1000; i++) epm_load_progress_add(&p, 1);
  epm_load_progress_end(&p);
  char *out = epm_test_stderr_end();
  /* 1000 calls, 9 lines: at 100, 200, ..., 900 bytes (1000 is the summary's) */
  int n = percents(out, "loading x", pct, 32);
  assert_int_equal(n, 9);
  for (int i = 0; i < n; i++) assert_int_equal(pct[i], 10 * (i + 1));
  assert_non_null(strstr(out, "loading x: 0 kB of 1 kB (10%), "));
  assert_non_null(strstr(out, "loading x: done, 1 kB in "));
  assert_null(strchr(out, '\r')); /* no terminal redraws in a log */
  free(out);

  /* big steps: one line per call that crosses a tenth, not one per tenth */
  epm_test_stderr_begin();
  epm_load_progress_begin(&p, "big", 10, EPM_PROGRESS_LINES);
  epm_load_progress_add(&p, 5); /* 0 -> 50 % */
  epm_load_progress_add(&p, 4); /* 50 -> 90 % */
  epm_load_progress_add(&p, 1); /* 100 %: the summary's */
  epm_load_progress_end(&p);
  out = epm_test_stderr_end();
  n = percents(out, "big", pct, 32);
  assert_int_equal(n, 2);
  assert_int_equal(pct[0], 50);
  assert_int_equal(pct[1], 90);
  free(out);
}

static void test_silence_interval(void **state) {
  (void)state;
  epm_load_progress_t p;
  int pct[32];
  const struct timespec nap = {0, 30 * 1000 * 1000};
  epm_test_stderr_begin();
  epm_load_progress_begin(&p, "slow", 1000000, EPM_PROGRESS_LINES);
  p.interval_s = 0.02; /* 5 s in production */
  epm_load_progress_add(&p, 1); /* too soon: nothing */
  nanosleep(&nap, NULL);
  epm_load_progress_add(&p, 1); /* 30 ms of silence: a line at 0 % */
  epm_load_progress_add(&p, 1); /* right after it: nothing */
  nanosleep(&nap, NULL);
  epm_load_progress_add(&p, 1); /* another */
  char *out = epm_test_stderr_end();
  int n = percents(out, "slow", pct, 32);
  assert_int_equal(n, 2);
  assert_int_equal(pct[0], 0);
  assert_int_equal(pct[1], 0);
  assert_non_null(strstr(out, "slow: 0 kB of 1.0 MB (0%)"));
  free(out);
}

static void test_quiet_and_json(void **state) {
  (void)state;
  epm_load_progress_t p;
  epm_test_stderr_begin();
  epm_load_progress_begin(&p, "hush", 100, EPM_PROGRESS_QUIET);
  for (int i = 0; i < 100; i++) epm_load_progress_add(&p, 1);
  epm_load_progress_end(&p);
  char *out = epm_test_stderr_end();
  assert_string_equal(out, "");
  free(out);
  /* the lines are log lines, so they follow the log format */
  epm_log_set_format(EPM_LOG_FMT_JSON);
  epm_test_stderr_begin();
  epm_load_progress_begin(&p, "as json", 100, EPM_PROGRESS_LINES);
  epm_load_progress_add(&p, 60);
  epm_load_progress_end(&p);
  out = epm_test_stderr_end();
  epm_log_set_format(EPM_LOG_FMT_TEXT);
  assert_non_null(strstr(out, "{\"time\":"));
  assert_non_null(strstr(out, "\"subsystem\":\"weights\""));
  assert_non_null(strstr(out, "\"message\":\"as json: 0 kB of 0 kB (60%)"));
  assert_non_null(strstr(out, "\"message\":\"as json: done, "));
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tenths_not_calls),
      cmocka_unit_test(test_silence_interval),
      cmocka_unit_test(test_quiet_and_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
