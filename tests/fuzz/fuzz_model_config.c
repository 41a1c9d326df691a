/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_model_config — libFuzzer target for the checkpoint directory parser:
 * config.json, hf_quant_config.json, the index, and the safetensors files it
 * names (fuzz_model_dir.h says how one input becomes those files). The files
 * are written to a private temporary directory and opened with
 * epm_model_dir_open, the daemon's own path. When the directory is accepted
 * the dims must pass epm_model_dims_validate and the documented bounds
 * (abort = a finding), every mapped tensor is looked up, and each MoE layer
 * is loaded at EP 1 and rank 1 of EP 2 (through every value check) when its
 * size is small. Build and run: tests/fuzz/README.md. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/log.h"
#include "epmoe/model_dir.h"
#include "epmoe/weights.h"
#include "fuzz_model_dir.h"
#include "fuzz_replay.h"

static char dir[256];

static void cleanup(void) {
  char p[512];
  for (int i = 0; i < EPM_FUZZ_NFILES; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, epm_fuzz_files[i]);
    unlink(p);
  }
  rmdir(dir);
}

static void put_file(const char *name, const uint8_t *p, size_t n) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  unlink(path);
  if (n == 0) return;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) abort();
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) abort();
    p += w;
    n -= (size_t)w;
  }
  close(fd);
}

static void check_dims(const epm_model_dims_t *d) {
  if (epm_model_dims_validate(d) != EPM_OK) abort();
  if (d->hidden > EPM_CKPT_MAX_HIDDEN || d->intermediate > EPM_CKPT_MAX_INTERMEDIATE ||
      d->shared_intermediate > EPM_CKPT_MAX_INTERMEDIATE || d->num_experts > EPM_CKPT_MAX_EXPERTS ||
      d->top_k > EPM_CKPT_MAX_TOP_K || d->n_group > EPM_CKPT_MAX_GROUPS || d->num_layers > EPM_CKPT_MAX_LAYERS)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!dir[0]) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/epm_fuzz_dir_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) abort();
    atexit(cleanup);
    epm_log_set_level(EPM_LOG_ERROR); /* gate/up scale mismatch warnings are expected here */
  }
  const size_t ml = strlen(EPM_FUZZ_FILE_MARK);
  size_t at = 0;
  for (int i = 0; i < EPM_FUZZ_NFILES; i++) {
    const uint8_t *end = NULL;
    if (i + 1 < EPM_FUZZ_NFILES && at < size)
      end = memmem(data + at, size - at, EPM_FUZZ_FILE_MARK, ml);
    size_t n = end ? (size_t)(end - (data + at)) : size - at;
    put_file(epm_fuzz_files[i], data + at, n);
    at = end ? at + n + ml : size;
  }
  epm_model_dir_t *md;
  if (epm_model_dir_open(dir, &md) != EPM_OK) return 0;
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  check_dims(d);
  for (size_t i = 0; i < epm_model_dir_tensor_count(md); i++) {
    const epm_st_tensor_t *t;
    (void)epm_model_dir_tensor(md, epm_model_dir_tensor_name(md, i), &t, NULL);
  }
  size_t bytes;
  if (epm_weights_layer_bytes(d, 1, &bytes) == EPM_OK && bytes <= (64u << 20)) {
    for (int64_t i = 0; i < epm_model_dir_moe_layer_count(md) && i < 4; i++) {
      epm_layer_t l;
      const int64_t L = epm_model_dir_moe_layer(md, i);
      if (epm_weights_load_layer(md, L, 0, 1, &l, NULL) == EPM_OK) epm_layer_free(&l);
      if (d->num_experts % 2 == 0 && epm_weights_load_layer(md, L, 1, 2, &l, NULL) == EPM_OK) epm_layer_free(&l);
    }
  }
  epm_model_dir_close(md);
  return 0;
}
