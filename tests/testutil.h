/* testutil.h — shared helpers for tests: the FlashInfer reference bundle
 * (tests/data/manifest.json + .bin files), seeded RNG, float comparison. */
#ifndef EPMOE_TESTUTIL_H
#define EPMOE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* One array of the reference bundle. data is malloc'ed; free with free(). */
typedef struct {
  char dtype[16];     /* "uint8", "int32", "float32", "bfloat16" */
  int ndim;
  int64_t shape[4];
  int64_t numel;
  size_t nbytes;
  void *data;
} epm_ref_array_t;

/* Directory of the bundle: $EPMOE_TEST_DATA or the compiled-in tests/data. */
const char *epm_test_data_dir(void);
/* Load array `name` (e.g. "quant_packed"); returns 0 on success, prints why not. */
int epm_ref_load(const char *name, epm_ref_array_t *out);
/* Read a scalar parameter from the manifest (e.g. "quant_global_scale" array of
 * one element); returns 0 on success. */
int epm_ref_scalar_f32(const char *name, float *out);
void epm_ref_free(epm_ref_array_t *a);

/* splitmix64-based deterministic RNG for tests. */
typedef struct { uint64_t s; } epm_test_rng_t;
uint64_t epm_test_rng_u64(epm_test_rng_t *r);
float epm_test_rng_uniform(epm_test_rng_t *r);   /* [0,1) */
float epm_test_rng_normal(epm_test_rng_t *r);    /* N(0,1) */

/* Exit code that ctest reports as skipped. */
#define EPM_TEST_SKIP 77

#endif
