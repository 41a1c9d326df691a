/* testutil.c — reference bundle loader and test RNG (see testutil.h). */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *epm_test_data_dir(void) {
  const char *d = getenv("EPMOE_TEST_DATA");
  return (d && *d) ? d : EPMOE_TEST_DATA;
}

static json_t *manifest(void) {
  static json_t *root;
  if (!root) {
    char path[4096];
    json_error_t err;
    snprintf(path, sizeof path, "%s/manifest.json", epm_test_data_dir());
    root = json_load_file(path, 0, &err);
    if (!root) fprintf(stderr, "cannot load %s: %s (line %d)\n", path, err.text, err.line);
  }
  return root;
}

int epm_ref_load(const char *name, epm_ref_array_t *out) {
  json_t *root = manifest(), *arrays, *a;
  size_t i;
  memset(out, 0, sizeof *out);
  if (!root) return 1;
  arrays = json_object_get(root, "arrays");
  json_array_foreach(arrays, i, a) {
    const char *n = json_string_value(json_object_get(a, "name"));
    if (!n || strcmp(n, name) != 0) continue;
    const char *file = json_string_value(json_object_get(a, "file"));
    const char *dtype = json_string_value(json_object_get(a, "dtype"));
    json_t *shape = json_object_get(a, "shape");
    long long offset = json_integer_value(json_object_get(a, "offset"));
    long long nbytes = json_integer_value(json_object_get(a, "nbytes"));
    char path[4096];
    FILE *f;
    snprintf(out->dtype, sizeof out->dtype, "%s", dtype ? dtype : "?");
    out->ndim = (int)json_array_size(shape);
    out->numel = 1;
    for (int d = 0; d < out->ndim && d < 4; d++) {
      out->shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
      out->numel *= out->shape[d];
    }
    out->nbytes = (size_t)nbytes;
    out->data = malloc(out->nbytes ? out->nbytes : 1);
    snprintf(path, sizeof path, "%s/%s", epm_test_data_dir(), file);
    f = fopen(path, "rb");
    if (!f || fseek(f, (long)offset, SEEK_SET) != 0 || fread(out->data, 1, out->nbytes, f) != out->nbytes) {
      fprintf(stderr, "cannot read %s [%lld, +%lld) of %s\n", name, offset, nbytes, path);
      if (f) fclose(f);
      free(out->data);
      out->data = NULL;
      return 1;
    }
    fclose(f);
    return 0;
  }
  fprintf(stderr, "array %s not in the manifest\n", name);
  return 1;
}

int epm_ref_scalar_f32(const char *name, float *out) {
  epm_ref_array_t a;
  if (epm_ref_load(name, &a) != 0) return 1;
  if (strcmp(a.dtype, "float32") != 0 || a.numel < 1) {
    epm_ref_free(&a);
    return 1;
  }
  memcpy(out, a.data, sizeof *out);
  epm_ref_free(&a);
  return 0;
}

void epm_ref_free(epm_ref_array_t *a) {
  free(a->data);
  a->data = NULL;
}

uint64_t epm_test_rng_u64(epm_test_rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float epm_test_rng_uniform(epm_test_rng_t *r) {
  return (float)(epm_test_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

float epm_test_rng_normal(epm_test_rng_t *r) {
  float u1 = epm_test_rng_uniform(r), u2 = epm_test_rng_uniform(r);
  if (u1 < 1e-7f) u1 = 1e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}
