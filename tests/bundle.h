/* SPDX-License-Identifier: Apache-2.0 */
/* bundle.h — the FlashInfer-format reference vector bundle (tests/data/README.md):
 * manifest.json plus raw .bin files.
 *
 * Every shape, dtype, file offset, EP slice and routing case a test uses comes
 * from the manifest through this file, so any bundle of the format, pointed to
 * by EPMOE_TEST_DATA=DIR, runs through the same tests. The array table is
 * checked once when the manifest is first read: each entry's keys, its dtype,
 * nbytes == shape x dtype size, 64-byte alignment. An error goes to stderr and
 * names the manifest key, the array, or both numbers that disagree; the
 * functions return 0 on success and 1 on failure (tests assert on that).
 *
 * Not thread-safe: the parsed manifest is cached per process. */
#ifndef EPMOE_TESTS_BUNDLE_H
#define EPMOE_TESTS_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/routing.h"

#define EPM_REF_MAX_DIMS 4
/* A dimension the caller does not constrain in epm_ref_load_as. */
#define EPM_REF_ANY ((int64_t)-1)

/* One array of the bundle. data is malloc'ed; free with epm_ref_free(). */
typedef struct {
  char dtype[16]; /* "uint8", "int32", "float32", "bfloat16" */
  int ndim;
  int64_t shape[EPM_REF_MAX_DIMS];
  int64_t numel;
  size_t nbytes;
  void *data;
} epm_ref_array_t;

/* Directory of the bundle: $EPMOE_TEST_DATA or the compiled-in tests/data. */
const char *epm_test_data_dir(void);

/* Load array `name` as stored (any dtype, any shape). */
int epm_ref_load(const char *name, epm_ref_array_t *out);
/* Load `name` and require its dtype and shape: ndim dimensions, each equal to
 * shape[d] unless that is EPM_REF_ANY. The error names the array, the
 * dimension, the manifest's value and the expected one. */
int epm_ref_load_as(const char *name, const char *dtype, int ndim, const int64_t *shape, epm_ref_array_t *out);
/* Like epm_ref_load_as for real values: float32 as stored, bfloat16 widened
 * exactly to float32 (out->dtype becomes "float32"). */
int epm_ref_load_f32(const char *name, int ndim, const int64_t *shape, epm_ref_array_t *out);
/* A one-element real array (float32 or bfloat16). */
int epm_ref_scalar_f32(const char *name, float *out);
void epm_ref_free(epm_ref_array_t *a);

/* computations.nvfp4_quant.params: quant_* is a [rows, cols] bf16 matrix. */
typedef struct {
  int64_t rows, cols;
} epm_bundle_quant_t;

/* One routing method of computations.routing.params, in manifest order. */
typedef struct {
  char name[32];            /* manifest key: array names are routing_<name>_ids/_weights/_scores */
  epm_routing_config_t cfg; /* method, num_experts, top_k, n_group, topk_group, routed_scaling_factor */
} epm_bundle_route_case_t;

#define EPM_BUNDLE_MAX_CASES 16

/* computations.routing.params: routing_logits is [tokens, num_experts]. */
typedef struct {
  int64_t tokens, num_experts;
  int ncases;
  epm_bundle_route_case_t cases[EPM_BUNDLE_MAX_CASES];
} epm_bundle_routing_t;

/* Experts [off, off + count). */
typedef struct {
  int64_t off, count;
} epm_bundle_slice_t;

/* computations.moe.params. */
typedef struct {
  int64_t tokens, hidden, intermediate, num_experts, top_k;
  char routing_name[32];        /* routing_method as the manifest spells it */
  epm_routing_config_t routing; /* the routing that produced moe_topk_ids from moe_logits */
  epm_bundle_slice_t lo, hi;    /* local_slice_lo / local_slice_hi: moe_out_local_{lo,hi}_* */
} epm_bundle_moe_t;

/* Read (and check) one section's parameters. The first call per process
 * prints a one-line summary ("bundle routing: ...") on stdout, so a run shows
 * which shapes it took from which bundle. */
int epm_bundle_quant(epm_bundle_quant_t *out);
int epm_bundle_routing(epm_bundle_routing_t *out);
int epm_bundle_moe(epm_bundle_moe_t *out);

#endif
