/* SPDX-License-Identifier: Apache-2.0 */
/* testutil.h — shared helpers for tests: the FlashInfer reference bundle
 * (bundle.h), seeded RNG, captured stderr. */
#ifndef EPMOE_TESTUTIL_H
#define EPMOE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "bundle.h"

/* splitmix64-based deterministic RNG for tests. */
typedef struct { uint64_t s; } epm_test_rng_t;
uint64_t epm_test_rng_u64(epm_test_rng_t *r);
float epm_test_rng_uniform(epm_test_rng_t *r);   /* [0,1) */
float epm_test_rng_normal(epm_test_rng_t *r);    /* N(0,1) */

/* Redirect file descriptor 2 (stderr) to a fresh temporary file until
 * epm_test_stderr_end, which restores it and returns what was written
 * (malloc'd, NUL-terminated). For tests of what a program logs. */
void epm_test_stderr_begin(void);
char *epm_test_stderr_end(void);

/* Exit code that ctest reports as skipped. */
#define EPM_TEST_SKIP 77

#endif
