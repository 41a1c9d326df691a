/* SPDX-License-Identifier: Apache-2.0 */
/* test_base: the monotonic clock (epmoe/clock.h) against CLOCK_MONOTONIC
 * read directly around it, and the dtype table (epmoe/dtype.h) against the C
 * types it describes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <time.h>

#include "epmoe/bf16.h"
#include "epmoe/clock.h"
#include "epmoe/dtype.h"

static uint64_t ref_ns(void) {
  struct timespec ts;
  assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Bracketed by the reference clock read just before and just after: the same
 * clock (not REALTIME, not a scaled one) and in nanoseconds. */
static void test_clock_is_monotonic_ns(void **state) {
  (void)state;
  for (int i = 0; i < 1000; i++) {
    const uint64_t before = ref_ns(), ours = epm_clock_ns(), after = ref_ns();
    if (ours < before || ours > after)
      fail_msg("epm_clock_ns %llu outside [%llu, %llu]", (unsigned long long)ours, (unsigned long long)before,
               (unsigned long long)after);
  }
  uint64_t last = epm_clock_ns();
  for (int i = 0; i < 100000; i++) {
    const uint64_t now = epm_clock_ns();
    assert_true(now >= last);
    last = now;
  }
}

static void test_clock_seconds_match_ns(void **state) {
  (void)state;
  const double s0 = epm_clock_s();
  const uint64_t ns = epm_clock_ns();
  const double s1 = epm_clock_s();
  assert_true(s0 <= (double)ns * 1e-9 && (double)ns * 1e-9 <= s1);
  /* A 20 ms sleep shows up as at least 20 ms on both (and not as hours). */
  const struct timespec nap = {0, 20 * 1000 * 1000};
  const uint64_t t0 = epm_clock_ns();
  const double u0 = epm_clock_s();
  assert_int_equal(nanosleep(&nap, NULL), 0);
  const uint64_t dt = epm_clock_ns() - t0;
  const double du = epm_clock_s() - u0;
  assert_true(dt >= 20000000u && dt < 60000000000u);
  assert_true(du >= 0.02 && du < 60.0);
}

static void test_dtype_table(void **state) {
  (void)state;
  assert_int_equal(epm_dtype_size(EPM_DTYPE_F32), sizeof(float));
  assert_int_equal(epm_dtype_size(EPM_DTYPE_BF16), sizeof(epm_bf16_t));
  assert_string_equal(epm_dtype_name(EPM_DTYPE_F32), "f32");
  assert_string_equal(epm_dtype_name(EPM_DTYPE_BF16), "bf16");
  /* Every dtype is described; names are distinct. */
  for (int a = 0; a < EPM_DTYPE_COUNT; a++) {
    assert_true(epm_dtype_size((epm_dtype_t)a) > 0);
    assert_string_not_equal(epm_dtype_name((epm_dtype_t)a), "?");
    for (int b = 0; b < a; b++) assert_string_not_equal(epm_dtype_name((epm_dtype_t)a), epm_dtype_name((epm_dtype_t)b));
  }
  /* Out of range: size 0 (so one check validates and sizes), name "?". */
  const int bad[] = {-1, EPM_DTYPE_COUNT, 99};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(epm_dtype_size((epm_dtype_t)bad[i]), 0);
    assert_string_equal(epm_dtype_name((epm_dtype_t)bad[i]), "?");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_clock_is_monotonic_ns),
      cmocka_unit_test(test_clock_seconds_match_ns),
      cmocka_unit_test(test_dtype_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
