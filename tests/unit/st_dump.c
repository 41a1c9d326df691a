/* SPDX-License-Identifier: Apache-2.0 */
/* st_dump — what epmoe reads, as JSON lines, for the Python interop test
 * (tests/py/st_interop.py compares it with the reference implementation).
 *
 *   st_dump FILE...      every tensor of each safetensors file as epm_st_open sees it
 *   st_dump --model DIR  every MoE layer loaded at EP=1 through epm_weights_load_layer,
 *                        re-emitted per checkpoint tensor name (router weight back to
 *                        bf16 bits) plus the layer's global input scales
 * Each tensor line: {"name", "dtype", "shape", "nbytes", "fnv1a64"}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/bf16.h"
#include "epmoe/safetensors.h"
#include "epmoe/weights.h"

static void line(const char *name, const char *dtype, int ndim, const int64_t *shape, const void *data, size_t n) {
  printf("{\"name\": \"%s\", \"dtype\": \"%s\", \"shape\": [", name, dtype);
  for (int i = 0; i < ndim; i++) printf("%s%lld", i ? ", " : "", (long long)shape[i]);
  printf("], \"nbytes\": %zu, \"fnv1a64\": \"%016llx\"}\n", n,
         (unsigned long long)epm_fnv1a64(data, n, EPM_FNV1A64_INIT));
}

static int dump_files(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    epm_st_file_t *f;
    if (epm_st_open(argv[i], &f) != EPM_OK) {
      fprintf(stderr, "st_dump: %s\n", epm_last_error());
      return 1;
    }
    for (size_t k = 0; k < epm_st_count(f); k++) {
      const epm_st_tensor_t *t = epm_st_at(f, k);
      line(t->name, epm_st_dtype_name(t->dtype), t->ndim, t->shape, t->data, t->nbytes);
    }
    const char *fmt = epm_st_metadata(f, "format");
    if (fmt) printf("{\"metadata_format\": \"%s\"}\n", fmt);
    epm_st_close(f);
  }
  return 0;
}

static void bank(epm_model_family_t fam, int64_t L, int64_t id, const epm_expert_bank_t *b, int64_t slot) {
  const int64_t H = b->hidden, I = b->intermediate;
  const size_t w = (size_t)(H * I / 2), s = w / 8, k = (size_t)slot;
  const uint8_t *ws[3] = {b->gate_w + k * w, b->up_w + k * w, b->down_w + k * w};
  const uint8_t *ss[3] = {b->gate_sf + k * s, b->up_sf + k * s, b->down_sf + k * s};
  const float *s2[3] = {&b->gate_up_scale_2[slot], &b->gate_up_scale_2[slot], &b->down_scale_2[slot]};
  char name[256];
  for (int p = 0; p < 3; p++) {
    int64_t rows = p == 2 ? H : I, cols = p == 2 ? I : H;
    int64_t sw[2] = {rows, cols / 2}, sf[2] = {rows, cols / 16};
    epm_weight_name(fam, L, id, (epm_proj_t)p, EPM_FIELD_WEIGHT, name, sizeof name);
    line(name, "U8", 2, sw, ws[p], w);
    epm_weight_name(fam, L, id, (epm_proj_t)p, EPM_FIELD_WEIGHT_SCALE, name, sizeof name);
    line(name, "F8_E4M3", 2, sf, ss[p], s);
    epm_weight_name(fam, L, id, (epm_proj_t)p, EPM_FIELD_WEIGHT_SCALE_2, name, sizeof name);
    line(name, "F32", 0, NULL, s2[p], 4);
  }
}

static int dump_model(const char *dir) {
  epm_model_dir_t *md;
  if (epm_model_dir_open(dir, &md) != EPM_OK) {
    fprintf(stderr, "st_dump: %s\n", epm_last_error());
    return 1;
  }
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  const epm_model_family_t fam = epm_model_dir_family(md);
  for (int64_t i = 0; i < epm_model_dir_moe_layer_count(md); i++) {
    const int64_t L = epm_model_dir_moe_layer(md, i);
    epm_layer_t l;
    if (epm_weights_load_layer(md, L, 0, 1, &l, NULL) != EPM_OK) {
      fprintf(stderr, "st_dump: %s\n", epm_last_error());
      epm_model_dir_close(md);
      return 1;
    }
    printf("{\"layer\": %lld, \"input_scale\": %.9g, \"down_input_scale\": %.9g, \"shared_input_scale\": %.9g, "
           "\"shared_down_input_scale\": %.9g}\n",
           (long long)L, (double)l.input_scale, (double)l.down_input_scale, (double)l.shared_input_scale,
           (double)l.shared_down_input_scale);
    for (int64_t e = 0; e < l.experts.count; e++) bank(fam, L, e, &l.experts, e);
    if (l.shared.count) bank(fam, L, EPM_EXPERT_SHARED, &l.shared, 0);
    char name[256];
    int64_t rs[2] = {d->num_experts, d->hidden};
    const size_t n = (size_t)(d->num_experts * d->hidden);
    epm_bf16_t *bf = malloc(n * 2);
    for (size_t k = 0; k < n; k++) bf[k] = epm_bf16_from_f32(l.router_w[k]); /* exact: loaded from bf16 */
    epm_router_name(fam, L, 0, name, sizeof name);
    line(name, "BF16", 2, rs, bf, n * 2);
    free(bf);
    if (l.router_bias) {
      epm_router_name(fam, L, 1, name, sizeof name);
      line(name, "F32", 1, rs, l.router_bias, (size_t)d->num_experts * 4);
    }
    epm_layer_free(&l);
  }
  epm_model_dir_close(md);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    fprintf(argc < 2 ? stderr : stdout, "usage: st_dump FILE... | st_dump --model DIR\n");
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--model") == 0) return argc == 3 ? dump_model(argv[2]) : 2;
  return dump_files(argc, argv);
}
