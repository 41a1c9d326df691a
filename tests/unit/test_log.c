/* SPDX-License-Identifier: Apache-2.0 */
/* test_log: the logger (runtime/base/log.c) as a log collector sees it, with
 * stderr redirected to a file: JSON lines that jansson (a strict parser:
 * valid UTF-8 only) accepts, with every field and the message byte for byte
 * (escapes, and U+FFFD for each byte that is not UTF-8); text lines as
 * before; the "<N>" syslog priority exactly when JOURNAL_STREAM names
 * stderr's device and inode; the level filter; and whole lines from
 * concurrent threads. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "epmoe/log.h"
#include "testutil.h"

static int setup(void **state) {
  (void)state;
  unsetenv("JOURNAL_STREAM");
  epm_log_set_format(EPM_LOG_FMT_TEXT);
  epm_log_set_level(EPM_LOG_INFO);
  epm_log_set_rank(-1, -1);
  epm_log_set_prefix(EPM_LOG_PREFIX_AUTO);
  return 0;
}

static json_t *parse_line(const char *line) {
  json_error_t je;
  json_t *j = json_loads(line, 0, &je);
  if (!j) fail_msg("not JSON (%s at %d): %s", je.text, je.position, line);
  return j;
}

static void test_json_fields_and_escapes(void **state) {
  (void)state;
  /* what each message must read after decoding */
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"plain text", "plain text"},
      {"quote \" backslash \\ slash /", "quote \" backslash \\ slash /"},
      {"new\nline\ttab\rcr", "new\nline\ttab\rcr"},
      {"ctl \x01\x1f del \x7f", "ctl \x01\x1f del \x7f"},
      {"utf8 \xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e", "utf8 \xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e"},
      /* not UTF-8: a lone 0xff, a cut-off 3-byte sequence, an overlong '/',
       * a surrogate, a stray continuation byte; one U+FFFD per bad byte */
      {"bad \xff|\xe2\x82|\xc0\xaf|\xed\xa0\x80|\x80", "bad \xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
                                                       "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd"},
  };
  const size_t n = sizeof cases / sizeof cases[0];
  epm_log_set_format(EPM_LOG_FMT_JSON);
  epm_log_set_rank(3, 8);
  time_t t0 = time(NULL);
  epm_test_stderr_begin();
  int line0 = __LINE__ + 2;
  for (size_t i = 0; i < n; i++)
    epm_log_write(i % 2 ? EPM_LOG_WARN : EPM_LOG_ERROR, "net", __FILE__, line0 + (int)i, "%s", cases[i].in);
  char *out = epm_test_stderr_end();
  time_t t1 = time(NULL);
  size_t k = 0;
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"), k++) {
    assert_true(k < n);
    json_t *j = parse_line(line);
    assert_string_equal(json_string_value(json_object_get(j, "message")), cases[k].want);
    assert_string_equal(json_string_value(json_object_get(j, "level")), k % 2 ? "warn" : "error");
    assert_int_equal(json_integer_value(json_object_get(j, "priority")), k % 2 ? 4 : 3);
    assert_int_equal(json_integer_value(json_object_get(j, "rank")), 3);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 8);
    assert_string_equal(json_string_value(json_object_get(j, "subsystem")), "net");
    assert_string_equal(json_string_value(json_object_get(j, "file")), "test_log.c");
    assert_int_equal(json_integer_value(json_object_get(j, "line")), line0 + (int)k);
    /* RFC 3339 UTC with milliseconds, between the clock reads around it */
    const char *ts = json_string_value(json_object_get(j, "time"));
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm);
    assert_non_null(rest);
    assert_true(rest[0] == '.' && rest[4] == 'Z' && rest[5] == '\0');
    time_t t = timegm(&tm);
    assert_true(t >= t0 && t <= t1);
    json_decref(j);
  }
  assert_int_equal(k, n);
  free(out);
}

static void test_json_single_process_and_long(void **state) {
  (void)state;
  char big[5000];
  memset(big, '"', sizeof big - 1); /* every byte escaped: the longest line there is */
  big[sizeof big - 1] = '\0';
  epm_log_set_format(EPM_LOG_FMT_JSON);
  epm_test_stderr_begin();
  EPM_LOG(EPM_LOG_INFO, "weights", "%s", big);
  char *out = epm_test_stderr_end();
  assert_int_equal(strchr(out, '\n') - out, (long)strlen(out) - 1); /* one line */
  json_t *j = parse_line(out);
  assert_true(json_is_null(json_object_get(j, "rank")));
  assert_true(json_is_null(json_object_get(j, "size")));
  /* the message is cut at the logger's limit, never mid-escape */
  const char *m = json_string_value(json_object_get(j, "message"));
  assert_int_equal(strlen(m), 2047);
  assert_int_equal(strspn(m, "\""), 2047);
  json_decref(j);
  free(out);
}

static void test_text_unchanged(void **state) {
  (void)state;
  epm_log_set_rank(1, 2);
  epm_test_stderr_begin();
  const int at = __LINE__ + 1;
  EPM_LOG(EPM_LOG_INFO, "step", "hello %d", 42);
  char *out = epm_test_stderr_end();
  /* 2026-11-26T04:50:01.123Z r1/2 INFO  step   test_log.c:NNN: hello 42 */
  struct tm tm;
  const char *rest = strptime(out, "%Y-%m-%dT%H:%M:%S", &tm);
  assert_non_null(rest);
  char tail[128];
  snprintf(tail, sizeof tail, " r1/2 INFO  step   test_log.c:%d: hello 42\n", at);
  assert_true(rest[0] == '.' && rest[4] == 'Z');
  assert_string_equal(rest + 5, tail);
  free(out);
}

static void test_level_filter(void **state) {
  (void)state;
  epm_log_set_format(EPM_LOG_FMT_JSON);
  epm_test_stderr_begin();
  EPM_LOG(EPM_LOG_DEBUG, "net", "hidden");
  EPM_LOG(EPM_LOG_INFO, "net", "shown");
  epm_log_set_level(EPM_LOG_DEBUG);
  EPM_LOG(EPM_LOG_DEBUG, "net", "now shown");
  char *out = epm_test_stderr_end();
  assert_null(strstr(out, "\"hidden\""));
  assert_non_null(strstr(out, "\"message\":\"shown\""));
  assert_non_null(strstr(out, "\"level\":\"debug\",\"priority\":7"));
  free(out);
}

static void test_parse_names(void **state) {
  (void)state;
  epm_log_format_t f;
  epm_log_level_t l;
  assert_int_equal(epm_log_format_parse("json", &f), 0);
  assert_int_equal(f, EPM_LOG_FMT_JSON);
  assert_int_equal(epm_log_format_parse("text", &f), 0);
  assert_int_equal(f, EPM_LOG_FMT_TEXT);
  assert_int_equal(epm_log_format_parse("JSONL", &f), 1);
  assert_int_equal(epm_log_level_parse("warning", &l), 0);
  assert_int_equal(l, EPM_LOG_WARN);
  assert_int_equal(epm_log_priority(EPM_LOG_ERROR), 3);
  assert_int_equal(epm_log_priority(EPM_LOG_WARN), 4);
  assert_int_equal(epm_log_priority(EPM_LOG_INFO), 6);
  assert_int_equal(epm_log_priority(EPM_LOG_DEBUG), 7);
}

/* Every line of every level starts with its priority when stderr is the
 * journal, in both formats; never when JOURNAL_STREAM names another file or
 * is malformed. */
static void test_journal_prefix(void **state) {
  (void)state;
  char js[64];
  struct stat st;
  epm_log_set_level(EPM_LOG_DEBUG);
  for (int fmt = 0; fmt < 2; fmt++) {
    epm_log_set_format((epm_log_format_t)fmt);
    epm_test_stderr_begin();
    assert_int_equal(fstat(STDERR_FILENO, &st), 0);
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
    int on = epm_log_detect_journal();
    EPM_LOG(EPM_LOG_ERROR, "daemon", "e");
    EPM_LOG(EPM_LOG_WARN, "daemon", "w");
    EPM_LOG(EPM_LOG_INFO, "daemon", "i");
    EPM_LOG(EPM_LOG_DEBUG, "daemon", "d");
    char *out = epm_test_stderr_end();
    assert_int_equal(on, 1);
    const char *want[] = {"<3>", "<4>", "<6>", "<7>"};
    int k = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"), k++) {
      assert_true(k < 4);
      assert_memory_equal(line, want[k], 3);
      if (fmt == EPM_LOG_FMT_JSON) json_decref(parse_line(line + 3)); /* journald strips the prefix */
    }
    assert_int_equal(k, 4);
    free(out);
  }
  /* another file's numbers, a malformed value, none */
  const char *other[] = {NULL, "12:34x", "garbage", ""};
  for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
    epm_test_stderr_begin();
    if (i == 0) {
      snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino + 1);
      setenv("JOURNAL_STREAM", js, 1);
    } else {
      setenv("JOURNAL_STREAM", other[i], 1);
    }
    assert_int_equal(epm_log_detect_journal(), 0);
    EPM_LOG(EPM_LOG_INFO, "daemon", "x");
    char *out = epm_test_stderr_end();
    assert_true(out[0] != '<');
    free(out);
  }
  unsetenv("JOURNAL_STREAM");
  assert_int_equal(epm_log_detect_journal(), 0);
}

/* The explicit choice beats the environment both ways; auto looks again. */
static void test_prefix_choice(void **state) {
  (void)state;
  epm_log_prefix_t p;
  struct stat st;
  char js[64];
  assert_int_equal(epm_log_prefix_parse("syslog", &p), 0);
  assert_int_equal(p, EPM_LOG_PREFIX_SYSLOG);
  assert_int_equal(epm_log_prefix_parse("journal", &p), 1);
  epm_log_set_prefix(EPM_LOG_PREFIX_SYSLOG); /* no JOURNAL_STREAM at all */
  epm_test_stderr_begin();
  EPM_LOG(EPM_LOG_WARN, "daemon", "a");
  char *out = epm_test_stderr_end();
  assert_memory_equal(out, "<4>", 3);
  free(out);
  epm_test_stderr_begin();
  assert_int_equal(fstat(STDERR_FILENO, &st), 0);
  snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
  setenv("JOURNAL_STREAM", js, 1);
  epm_log_set_prefix(EPM_LOG_PREFIX_NONE); /* stderr is the journal, but no */
  EPM_LOG(EPM_LOG_WARN, "daemon", "b");
  epm_log_set_prefix(EPM_LOG_PREFIX_AUTO); /* looks at the environment again */
  EPM_LOG(EPM_LOG_INFO, "daemon", "c");
  out = epm_test_stderr_end();
  unsetenv("JOURNAL_STREAM");
  assert_true(out[0] != '<');
  char *second = strchr(out, '\n');
  assert_non_null(second);
  assert_memory_equal(second + 1, "<6>", 3);
  free(out);
  epm_log_set_prefix(EPM_LOG_PREFIX_AUTO);
}

static void *spam(void *arg) {
  int id = (int)(intptr_t)arg;
  for (int i = 0; i < 300; i++) EPM_LOG(EPM_LOG_INFO, "comm", "thread %d line %d \"%s\"", id, i, "payload\\x");
  return NULL;
}

static void test_threads_whole_lines(void **state) {
  (void)state;
  pthread_t t[4];
  epm_log_set_format(EPM_LOG_FMT_JSON);
  epm_test_stderr_begin();
  for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, spam, (void *)(intptr_t)i), 0);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  char *out = epm_test_stderr_end();
  int count[4] = {0};
  for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
    json_t *j = parse_line(line);
    int id = -1, i = -1;
    assert_int_equal(sscanf(json_string_value(json_object_get(j, "message")), "thread %d line %d", &id, &i), 2);
    assert_true(id >= 0 && id < 4 && i == count[id]); /* each thread's lines in its order */
    count[id]++;
    json_decref(j);
  }
  for (int i = 0; i < 4; i++) assert_int_equal(count[i], 300);
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_json_fields_and_escapes, setup),
      cmocka_unit_test_setup(test_json_single_process_and_long, setup),
      cmocka_unit_test_setup(test_text_unchanged, setup),
      cmocka_unit_test_setup(test_level_filter, setup),
      cmocka_unit_test_setup(test_parse_names, setup),
      cmocka_unit_test_setup(test_journal_prefix, setup),
      cmocka_unit_test_setup(test_prefix_choice, setup),
      cmocka_unit_test_setup(test_threads_whole_lines, setup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
