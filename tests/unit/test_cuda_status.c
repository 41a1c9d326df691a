/* SPDX-License-Identifier: Apache-2.0 */
/* test_cuda_status: the one CUDA error translation (epmoe/cuda_status.h).
 * Links only cudart: error names and strings need no driver or device, so
 * this runs on CPU machines. The reset of CUDA's last error needs a working
 * runtime (a driver) and is skipped without one: there the runtime's
 * initialisation error is sticky and cannot be reset by anyone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "epmoe/cuda_status.h"

static void test_success_is_ok_and_silent(void **state) {
  (void)state;
  epm_error(EPM_ERR_IO, "marker");
  assert_int_equal(epm_cuda_status(cudaSuccess, "cudaFree(%p)", (void *)0), EPM_OK);
  assert_string_equal(epm_last_error(), "marker"); /* success records nothing */
}

static void test_out_of_memory_is_nomem(void **state) {
  (void)state;
  assert_int_equal(epm_cuda_status(cudaErrorMemoryAllocation, "cudaMalloc(%zu bytes)", (size_t)1 << 40),
                   EPM_ERR_NOMEM);
  const char *m = epm_last_error();
  /* Call with its values first, then CUDA's name, then its text. */
  const char *want = "cudaMalloc(1099511627776 bytes): cudaErrorMemoryAllocation: ";
  assert_memory_equal(m, want, strlen(want));
  assert_string_equal(m + strlen(want), cudaGetErrorString(cudaErrorMemoryAllocation));
  assert_true(strlen(m) > strlen(want)); /* the text is not empty */
}

static void test_other_errors_are_cuda(void **state) {
  (void)state;
  const cudaError_t errs[] = {cudaErrorInvalidValue, cudaErrorLaunchFailure, cudaErrorIllegalAddress,
                              cudaErrorNoDevice, cudaErrorInsufficientDriver, cudaErrorInvalidDevice};
  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    assert_int_equal(epm_cuda_status(errs[i], "call %zu", i), EPM_ERR_CUDA);
    assert_non_null(strstr(epm_last_error(), cudaGetErrorName(errs[i])));
    assert_memory_equal(epm_last_error(), "call ", 5);
  }
}

/* A call description past the internal buffer is cut, never the error name. */
static void test_long_call_keeps_the_name(void **state) {
  (void)state;
  char call[600];
  memset(call, 'c', sizeof call - 1);
  call[sizeof call - 1] = '\0';
  assert_int_equal(epm_cuda_status(cudaErrorInvalidValue, "%s", call), EPM_ERR_CUDA);
  assert_non_null(strstr(epm_last_error(), ": cudaErrorInvalidValue: "));
}

static cudaError_t fails_with(cudaError_t e) { return e; }

static epm_status_t try_twice(cudaError_t first, int *reached) {
  EPM_CUDA_TRY(fails_with(cudaSuccess));
  EPM_CUDA_TRY(fails_with(first));
  *reached = 1;
  return EPM_OK;
}

static void test_try_macro(void **state) {
  (void)state;
  int reached = 0;
  assert_int_equal(try_twice(cudaErrorMemoryAllocation, &reached), EPM_ERR_NOMEM);
  assert_int_equal(reached, 0);
  const char *want = "fails_with(first): cudaErrorMemoryAllocation: ";
  assert_memory_equal(epm_last_error(), want, strlen(want));
  assert_int_equal(try_twice(cudaSuccess, &reached), EPM_OK);
  assert_int_equal(reached, 1);
}

/* The translation resets CUDA's last error, so the next launch check does
 * not report this failure again. Needs a runtime that initialises. */
static void test_resets_last_error(void **state) {
  (void)state;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    skip();
  }
  const cudaError_t e = cudaSetDevice(n + 100);
  assert_int_equal(e, cudaErrorInvalidDevice);
  assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidDevice);
  assert_int_equal(epm_cuda_status(e, "cudaSetDevice(%d)", n + 100), EPM_ERR_CUDA);
  assert_int_equal(cudaPeekAtLastError(), cudaSuccess);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_success_is_ok_and_silent), cmocka_unit_test(test_out_of_memory_is_nomem),
      cmocka_unit_test(test_other_errors_are_cuda),    cmocka_unit_test(test_long_call_keeps_the_name),
      cmocka_unit_test(test_try_macro),                cmocka_unit_test(test_resets_last_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
