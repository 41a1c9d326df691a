/* SPDX-License-Identifier: Apache-2.0 */
/* test_bootstrap.c — the launch check refuses mis-launches with one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "epmoe/bootstrap.h"

static const char *const launcher_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS",
                                            "SLURM_NTASKS", "EPMOE_ALLOW_SINGLETON"};

static int clear_env(void **state) {
  for (size_t i = 0; i < sizeof launcher_vars / sizeof launcher_vars[0]; i++) unsetenv(launcher_vars[i]);
  return 0;
}

static void expect_refused(const char *needle1, const char *needle2, epm_status_t st) {
  assert_int_equal(st, EPM_ERR_INVALID_ARG);
  const char *msg = epm_last_error();
  assert_non_null(strstr(msg, needle1));
  assert_non_null(strstr(msg, needle2));
  assert_null(strchr(msg, '\n')); /* one line */
}

static void test_plain_singleton_ok(void **state) {
  assert_int_equal(epm_bootstrap_check_launch(1, 1, 0, 0), EPM_OK);
}

static void test_slurm_ntasks_refused(void **state) {
  setenv("SLURM_NTASKS", "4", 1);
  expect_refused("SLURM_NTASKS=4", "world of 1", epm_bootstrap_check_launch(1, 1, 0, 0));
}

static void test_pmi_size_refused(void **state) {
  setenv("PMI_SIZE", "2", 1);
  expect_refused("PMI_SIZE=2", "world of 1", epm_bootstrap_check_launch(1, 1, 0, 0));
}

static void test_ompi_size_refused(void **state) {
  setenv("OMPI_COMM_WORLD_SIZE", "8", 1);
  expect_refused("OMPI_COMM_WORLD_SIZE=8", "world of 1", epm_bootstrap_check_launch(1, 1, 0, 0));
}

/* mpirun -np 1 inside a 4-task Slurm allocation is a correct launch. */
static void test_mpirun_wins_over_allocation(void **state) {
  setenv("SLURM_NTASKS", "4", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
  assert_int_equal(epm_bootstrap_check_launch(1, 1, 0, 0), EPM_OK);
}

static void test_step_tasks_win_over_allocation(void **state) {
  setenv("SLURM_NTASKS", "4", 1);
  setenv("SLURM_STEP_NUM_TASKS", "1", 1);
  assert_int_equal(epm_bootstrap_check_launch(1, 1, 0, 0), EPM_OK);
}

static void test_allow_singleton(void **state) {
  setenv("SLURM_NTASKS", "4", 1);
  setenv("EPMOE_ALLOW_SINGLETON", "1", 1);
  assert_int_equal(epm_bootstrap_check_launch(1, 1, 0, 0), EPM_OK);
}

static void test_matching_world_ok(void **state) {
  setenv("SLURM_NTASKS", "4", 1);
  assert_int_equal(epm_bootstrap_check_launch(4, 4, 0, 0), EPM_OK);
}

static void test_garbage_ignored(void **state) {
  setenv("SLURM_NTASKS", "four", 1);
  assert_int_equal(epm_bootstrap_check_launch(1, 1, 0, 0), EPM_OK);
}

static void test_more_ranks_than_gpus(void **state) {
  expect_refused("4 ranks on this node", "2 visible GPU", epm_bootstrap_check_launch(4, 4, 2, 1));
  assert_int_equal(epm_bootstrap_check_launch(4, 4, 2, 0), EPM_OK); /* CPU mode */
  assert_int_equal(epm_bootstrap_check_launch(8, 2, 2, 1), EPM_OK); /* 2 per node, 2 GPUs */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_plain_singleton_ok, clear_env),
      cmocka_unit_test_setup(test_slurm_ntasks_refused, clear_env),
      cmocka_unit_test_setup(test_pmi_size_refused, clear_env),
      cmocka_unit_test_setup(test_ompi_size_refused, clear_env),
      cmocka_unit_test_setup(test_mpirun_wins_over_allocation, clear_env),
      cmocka_unit_test_setup(test_step_tasks_win_over_allocation, clear_env),
      cmocka_unit_test_setup(test_allow_singleton, clear_env),
      cmocka_unit_test_setup(test_matching_world_ok, clear_env),
      cmocka_unit_test_setup(test_garbage_ignored, clear_env),
      cmocka_unit_test_setup(test_more_ranks_than_gpus, clear_env),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
