/* SPDX-License-Identifier: Apache-2.0 */
/* test_status: status names, strerror and the per-thread error text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/status.h"

static void test_names(void **state) {
  (void)state;
  assert_string_equal(epm_status_name(EPM_OK), "EPM_OK");
  assert_string_equal(epm_status_name(EPM_ERR_OVERFLOW), "EPM_ERR_OVERFLOW");
  assert_string_equal(epm_strerror(EPM_ERR_NOMEM), "out of memory");
  assert_string_equal(epm_strerror((epm_status_t)999), "unknown status");
}

static void test_error_message_names_values(void **state) {
  (void)state;
  epm_status_t st = epm_error(EPM_ERR_INVALID_ARG,
                              "hidden_states_scale has %lld elements; %lld tokens x %lld hidden / 16 = %lld expected",
                              146800639LL, 327680LL, 7168LL, 327680LL * 7168 / 16);
  assert_int_equal(st, EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_last_error(),
                      "hidden_states_scale has 146800639 elements; 327680 tokens x 7168 hidden / 16 = 146800640 expected");
  epm_error_wrap(st, "layer %d", 3);
  assert_true(strncmp(epm_last_error(), "layer 3: hidden_states_scale", 28) == 0);
  epm_error_clear();
  assert_string_equal(epm_last_error(), "");
}

static void *other_thread(void *arg) {
  (void)arg;
  return (void *)(uintptr_t)(epm_last_error()[0] == '\0');
}

static void test_error_is_per_thread(void **state) {
  (void)state;
  pthread_t t;
  void *ret;
  epm_error(EPM_ERR_IO, "main thread error");
  assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
  assert_int_equal(pthread_join(t, &ret), 0);
  assert_true(ret != NULL);
  assert_string_equal(epm_last_error(), "main thread error");
}

static void test_checked_arith(void **state) {
  (void)state;
  int64_t r = 0;
  assert_int_equal(epm_mul_i64(327680, 7168, &r), 0);
  assert_int_equal(r, 2348810240LL);
  assert_int_not_equal(epm_mul_i64(INT64_MAX / 2 + 1, 2, &r), 0);
  assert_int_not_equal(epm_mul_i64(-1, 2, &r), 0);
  assert_int_equal(epm_round_up_i64(2049, 128, &r), 0);
  assert_int_equal(r, 2176);
  assert_int_not_equal(epm_add_i64(INT64_MAX, 1, &r), 0);
  /* ceil-div near INT64_MAX: (n + d - 1) / d would overflow here. */
  assert_true(epm_ceil_div_i64(INT64_MAX, 128) == INT64_MAX / 128 + 1);
  assert_true(epm_ceil_div_i64(INT64_MAX - 127, 128) == (INT64_MAX - 127) / 128 + ((INT64_MAX - 127) % 128 != 0));
  assert_int_equal(epm_ceil_div_i64(256, 128), 2);
  assert_int_equal(epm_ceil_div_i64(257, 128), 3);
  assert_int_equal(epm_ceil_div_i64(0, 128), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_error_message_names_values),
      cmocka_unit_test(test_error_is_per_thread),
      cmocka_unit_test(test_checked_arith),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
