/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/dtype.h — the element types of float buffers handed between stages,
 * backends and collectives (one enum for all of them, so a partial result's
 * type passes from the engine to the comm without a translation table).
 *
 * bf16 is raw bfloat16 bits (epm_bf16_t, epmoe/bf16.h). On-disk tensor types
 * are a different, wider set: epm_st_dtype_t in epmoe/safetensors.h.
 */
#ifndef EPMOE_DTYPE_H
#define EPMOE_DTYPE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_DTYPE_F32 = 0,
  EPM_DTYPE_BF16 = 1,
  EPM_DTYPE_COUNT
} epm_dtype_t;

/* Bytes per element: 4, 2; 0 for a value that is not a dtype, so callers
 * validate and size in one step. */
size_t epm_dtype_size(epm_dtype_t dt);
/* "f32", "bf16"; "?" for a value that is not a dtype. Never NULL. */
const char *epm_dtype_name(epm_dtype_t dt);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_DTYPE_H */
