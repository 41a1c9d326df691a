/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_safetensors — libFuzzer target for the safetensors reader: the input
 * is a whole file image, validated by epm_st_open_mem (the checks epm_st_open
 * makes after mapping). When it is accepted, every tensor is looked up by
 * name, read and hashed, and the properties the loader relies on are
 * asserted (abort = a finding): each view lies inside the image, the name
 * lookup finds the same entry, epm_st_read copies exactly the viewed bytes.
 * The value checks the loader applies (E4M3 block scales, finite F32/BF16)
 * run on the tensors of those dtypes. Build and run: tests/fuzz/README.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/safetensors.h"
#include "epmoe/weights.h"
#include "fuzz_replay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  epm_st_file_t *f;
  if (epm_st_open_mem(data, size, "fuzz.safetensors", &f) != EPM_OK) return 0;
  for (size_t i = 0; i < epm_st_count(f); i++) {
    const epm_st_tensor_t *t = epm_st_at(f, i);
    if (epm_st_find(f, t->name) != t) abort();
    if (t->file_offset > size || t->nbytes > size - t->file_offset) abort();
    if (t->nbytes && t->data != data + t->file_offset) abort();
    uint8_t *copy = malloc(t->nbytes ? t->nbytes : 1);
    if (!copy) abort();
    if (epm_st_read(f, t, copy) != EPM_OK || (t->nbytes && memcmp(copy, t->data, t->nbytes) != 0)) abort();
    free(copy);
    (void)epm_fnv1a64(t->data, t->nbytes, EPM_FNV1A64_INIT);
    if (t->dtype == EPM_ST_F8_E4M3 && t->ndim == 2)
      (void)epm_check_block_scales("fuzz", t->name, t->data, t->shape[0], t->shape[1]);
    if (t->dtype == EPM_ST_F32 || t->dtype == EPM_ST_BF16) (void)epm_check_finite("fuzz", t);
  }
  (void)epm_st_metadata(f, "format");
  epm_st_close(f);
  return 0;
}
