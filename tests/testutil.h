/* testutil.h — shared helpers for tests: the FlashInfer reference bundle
 * (bundle.h), seeded RNG. */
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

/* Exit code that ctest reports as skipped. */
#define EPM_TEST_SKIP 77

#endif
