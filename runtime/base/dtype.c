/* SPDX-License-Identifier: Apache-2.0 */
/* dtype.c — sizes and names of epm_dtype_t (epmoe/dtype.h). */
#include "epmoe/dtype.h"

/* Indexed by the enum; a new dtype without a row here fails to compile
 * through the array size check below. */
static const struct {
  size_t size;
  const char *name;
} k_dtypes[] = {
    [EPM_DTYPE_F32] = {4, "f32"},
    [EPM_DTYPE_BF16] = {2, "bf16"},
};
_Static_assert(sizeof k_dtypes / sizeof k_dtypes[0] == EPM_DTYPE_COUNT, "one k_dtypes row per epm_dtype_t");

static int valid(epm_dtype_t dt) { return (int)dt >= 0 && (int)dt < (int)EPM_DTYPE_COUNT; }

size_t epm_dtype_size(epm_dtype_t dt) { return valid(dt) ? k_dtypes[dt].size : 0; }

const char *epm_dtype_name(epm_dtype_t dt) { return valid(dt) ? k_dtypes[dt].name : "?"; }
