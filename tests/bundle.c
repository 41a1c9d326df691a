/* SPDX-License-Identifier: Apache-2.0 */
/* bundle.c — reader of the FlashInfer-format reference bundle (see bundle.h). */
#include "bundle.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "epmoe/nvfp4.h" /* epm_bf16_to_f32 */

#define FORMAT_V1 "flashinfer-ref bundle v1"
#define ALIGN 64 /* every array starts at a multiple of this (README: Files and format) */

const char *epm_test_data_dir(void) {
  const char *d = getenv("EPMOE_TEST_DATA");
  return (d && *d) ? d : EPMOE_TEST_DATA;
}

static char man_path[4096];
static json_t *man_root;
static int man_state; /* 0 not read yet, 1 usable, -1 broken (error printed once) */

#define bundle_err(...)                                \
  do {                                                 \
    fprintf(stderr, "bundle %s: ", man_path);          \
    fprintf(stderr, __VA_ARGS__);                      \
    fprintf(stderr, "\n");                             \
  } while (0)

static int dtype_size(const char *d, size_t *out) {
  static const struct {
    const char *name;
    size_t size;
  } known[] = {{"uint8", 1}, {"int32", 4}, {"float32", 4}, {"bfloat16", 2}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(d, known[i].name) == 0) {
      *out = known[i].size;
      return 0;
    }
  return 1;
}

static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int d = 0; d < ndim && n < cap; d++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

/* An integer member >= 0; ctx names the object in the error. */
static int get_count(json_t *o, const char *ctx, const char *key, int64_t *out) {
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v)) {
    bundle_err("%s has no integer \"%s\"", ctx, key);
    return 1;
  }
  if (json_integer_value(v) < 0) {
    bundle_err("%s.%s = %lld is negative", ctx, key, (long long)json_integer_value(v));
    return 1;
  }
  *out = (int64_t)json_integer_value(v);
  return 0;
}

static int get_positive(json_t *o, const char *ctx, const char *key, int64_t *out) {
  if (get_count(o, ctx, key, out)) return 1;
  if (*out == 0) {
    bundle_err("%s.%s is 0; it must be at least 1", ctx, key);
    return 1;
  }
  return 0;
}

/* The shape of an arrays[] entry: ndim <= EPM_REF_MAX_DIMS, each dim >= 0,
 * product without int64 overflow. */
static int entry_shape(json_t *a, const char *name, int *ndim, int64_t *shape, int64_t *numel) {
  json_t *s = json_object_get(a, "shape"), *v;
  size_t d;
  if (!json_is_array(s)) {
    bundle_err("array %s has no \"shape\" list", name);
    return 1;
  }
  if (json_array_size(s) > EPM_REF_MAX_DIMS) {
    bundle_err("array %s: shape has %zu dimensions; the tests read at most %d", name, json_array_size(s),
               EPM_REF_MAX_DIMS);
    return 1;
  }
  *ndim = (int)json_array_size(s);
  *numel = 1;
  json_array_foreach(s, d, v) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
      bundle_err("array %s: shape[%zu] is not an integer >= 0", name, d);
      return 1;
    }
    shape[d] = (int64_t)json_integer_value(v);
    if (shape[d] && *numel > INT64_MAX / shape[d]) {
      bundle_err("array %s: the element count of its shape overflows int64", name);
      return 1;
    }
    *numel *= shape[d];
  }
  return 0;
}

/* One arrays[] entry is complete and self-consistent. */
static int check_entry(json_t *arrays, size_t i) {
  json_t *a = json_array_get(arrays, i);
  char ctx[96], sb[128];
  snprintf(ctx, sizeof ctx, "arrays[%zu]", i);
  if (!json_is_object(a)) {
    bundle_err("%s is not an object", ctx);
    return 1;
  }
  const char *name = json_string_value(json_object_get(a, "name"));
  if (!name) {
    bundle_err("%s has no string \"name\"", ctx);
    return 1;
  }
  for (size_t j = 0; j < i; j++)
    if (strcmp(name, json_string_value(json_object_get(json_array_get(arrays, j), "name"))) == 0) {
      bundle_err("array %s is listed twice (arrays[%zu] and arrays[%zu])", name, j, i);
      return 1;
    }
  snprintf(ctx, sizeof ctx, "array %s", name);
  const char *file = json_string_value(json_object_get(a, "file"));
  const char *dtype = json_string_value(json_object_get(a, "dtype"));
  size_t esize;
  int64_t offset, nbytes, numel, shape[EPM_REF_MAX_DIMS];
  int ndim;
  if (!file) {
    bundle_err("%s has no string \"file\"", ctx);
    return 1;
  }
  if (!dtype) {
    bundle_err("%s has no string \"dtype\"", ctx);
    return 1;
  }
  if (dtype_size(dtype, &esize)) {
    bundle_err("%s: unknown dtype \"%s\" (known: uint8, int32, float32, bfloat16)", ctx, dtype);
    return 1;
  }
  if (get_count(a, ctx, "offset", &offset) || get_count(a, ctx, "nbytes", &nbytes) ||
      entry_shape(a, name, &ndim, shape, &numel))
    return 1;
  if (numel > INT64_MAX / (int64_t)esize) {
    bundle_err("%s: shape %s x %zu-byte %s overflows int64", ctx, shape_str(shape, ndim, sb, sizeof sb), esize,
               dtype);
    return 1;
  }
  if (numel * (int64_t)esize != nbytes) {
    bundle_err("%s: nbytes %lld does not match shape %s x %zu-byte %s = %lld bytes", ctx, (long long)nbytes,
               shape_str(shape, ndim, sb, sizeof sb), esize, dtype, (long long)(numel * (int64_t)esize));
    return 1;
  }
  if (offset % ALIGN) {
    bundle_err("%s: offset %lld is not a multiple of %d", ctx, (long long)offset, ALIGN);
    return 1;
  }
  return 0;
}

static json_t *manifest(void) {
  if (man_state == 0) {
    json_error_t err;
    snprintf(man_path, sizeof man_path, "%s/manifest.json", epm_test_data_dir());
    man_state = -1;
    man_root = json_load_file(man_path, JSON_REJECT_DUPLICATES, &err);
    if (!man_root) {
      bundle_err("cannot parse: %s (line %d)", err.text, err.line);
      return NULL;
    }
    const char *fmt = json_string_value(json_object_get(man_root, "format"));
    if (!fmt || strcmp(fmt, FORMAT_V1) != 0) {
      bundle_err("\"format\" is %s%s%s; these tests read \"" FORMAT_V1 "\"", fmt ? "\"" : "",
                 fmt ? fmt : "missing", fmt ? "\"" : "");
      return NULL;
    }
    json_t *arrays = json_object_get(man_root, "arrays");
    if (!json_is_array(arrays)) {
      bundle_err("no \"arrays\" list");
      return NULL;
    }
    for (size_t i = 0; i < json_array_size(arrays); i++)
      if (check_entry(arrays, i)) return NULL;
    man_state = 1;
  } else if (man_state < 0) {
    bundle_err("unusable (see the first error above)");
  }
  return man_state > 0 ? man_root : NULL;
}

static json_t *find_entry(const char *name) {
  json_t *root = manifest(), *a;
  size_t i;
  if (!root) return NULL;
  json_array_foreach(json_object_get(root, "arrays"), i, a) {
    if (strcmp(json_string_value(json_object_get(a, "name")), name) == 0) return a;
  }
  bundle_err("array %s is not in the manifest", name);
  return NULL;
}

int epm_ref_load(const char *name, epm_ref_array_t *out) {
  memset(out, 0, sizeof *out);
  json_t *a = find_entry(name);
  if (!a) return 1;
  /* check_entry vouched for every key and for nbytes == shape x dtype */
  const char *file = json_string_value(json_object_get(a, "file"));
  const int64_t offset = (int64_t)json_integer_value(json_object_get(a, "offset"));
  size_t esize = 1;
  snprintf(out->dtype, sizeof out->dtype, "%s", json_string_value(json_object_get(a, "dtype")));
  dtype_size(out->dtype, &esize);
  entry_shape(a, name, &out->ndim, out->shape, &out->numel);
  out->nbytes = (size_t)out->numel * esize;

  char path[4096];
  struct stat st;
  snprintf(path, sizeof path, "%s/%s", epm_test_data_dir(), file);
  FILE *f = fopen(path, "rb");
  if (!f || fstat(fileno(f), &st) != 0) {
    bundle_err("array %s: cannot open %s", name, path);
    if (f) fclose(f);
    return 1;
  }
  if (offset > (int64_t)st.st_size || (int64_t)out->nbytes > (int64_t)st.st_size - offset) {
    bundle_err("array %s: bytes [%lld, %lld) run past the end of %s (%lld bytes)", name, (long long)offset,
               (long long)(offset + (int64_t)out->nbytes), path, (long long)st.st_size);
    fclose(f);
    return 1;
  }
  out->data = malloc(out->nbytes ? out->nbytes : 1);
  if (!out->data || fseeko(f, (off_t)offset, SEEK_SET) != 0 || fread(out->data, 1, out->nbytes, f) != out->nbytes) {
    bundle_err("array %s: cannot read %zu bytes at %lld of %s", name, out->nbytes, (long long)offset, path);
    fclose(f);
    epm_ref_free(out);
    return 1;
  }
  fclose(f);
  return 0;
}

/* ndim < 0: any shape. */
static int check_shape(const char *name, const epm_ref_array_t *a, int ndim, const int64_t *shape) {
  char sb[128], wb[128];
  if (ndim < 0) return 0;
  if (a->ndim != ndim) {
    bundle_err("array %s: shape %s in the manifest has %d dimensions; the test needs %d (%s, -1 = any)", name,
               shape_str(a->shape, a->ndim, sb, sizeof sb), a->ndim, ndim, shape_str(shape, ndim, wb, sizeof wb));
    return 1;
  }
  for (int d = 0; d < ndim; d++)
    if (shape[d] != EPM_REF_ANY && a->shape[d] != shape[d]) {
      bundle_err("array %s: shape[%d] = %lld in the manifest (shape %s), expected %lld from the parameters", name,
                 d, (long long)a->shape[d], shape_str(a->shape, a->ndim, sb, sizeof sb), (long long)shape[d]);
      return 1;
    }
  return 0;
}

int epm_ref_load_as(const char *name, const char *dtype, int ndim, const int64_t *shape, epm_ref_array_t *out) {
  if (epm_ref_load(name, out)) return 1;
  if (strcmp(out->dtype, dtype) != 0) {
    bundle_err("array %s: dtype %s in the manifest; the test reads it as %s", name, out->dtype, dtype);
    epm_ref_free(out);
    return 1;
  }
  if (check_shape(name, out, ndim, shape)) {
    epm_ref_free(out);
    return 1;
  }
  return 0;
}

int epm_ref_load_f32(const char *name, int ndim, const int64_t *shape, epm_ref_array_t *out) {
  if (epm_ref_load(name, out)) return 1;
  if (check_shape(name, out, ndim, shape)) {
    epm_ref_free(out);
    return 1;
  }
  if (strcmp(out->dtype, "bfloat16") == 0) { /* widening is exact */
    float *w = malloc((size_t)out->numel * sizeof(float) + 1);
    const epm_bf16_t *b = out->data;
    if (!w) {
      epm_ref_free(out);
      return 1;
    }
    for (int64_t i = 0; i < out->numel; i++) w[i] = epm_bf16_to_f32(b[i]);
    free(out->data);
    out->data = w;
    out->nbytes = (size_t)out->numel * sizeof(float);
    snprintf(out->dtype, sizeof out->dtype, "float32");
  } else if (strcmp(out->dtype, "float32") != 0) {
    bundle_err("array %s: dtype %s in the manifest; the test reads real values (float32 or bfloat16)", name,
               out->dtype);
    epm_ref_free(out);
    return 1;
  }
  return 0;
}

int epm_ref_scalar_f32(const char *name, float *out) {
  epm_ref_array_t a;
  if (epm_ref_load_f32(name, -1, NULL, &a)) return 1;
  if (a.numel != 1) {
    bundle_err("array %s has %lld elements; the test reads it as a scalar (1)", name, (long long)a.numel);
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

/* ---- section parameters ------------------------------------------------------ */

static json_t *section_params(const char *section, char *ctx, size_t cap) {
  json_t *root = manifest();
  if (!root) return NULL;
  snprintf(ctx, cap, "computations.%s.params", section);
  json_t *p = json_object_get(json_object_get(json_object_get(root, "computations"), section), "params");
  if (!json_is_object(p)) bundle_err("no object %s", ctx);
  return json_is_object(p) ? p : NULL;
}

/* FlashInfer spells deepseek-v3 without the dash; the other names are ours. */
static int method_of(const char *ctx, const char *name, epm_routing_method_t *m) {
  const char *n = strcmp(name, "deepseekv3") == 0 ? "deepseek-v3" : name;
  if (epm_routing_method_parse(n, m) != EPM_OK) {
    bundle_err("%s: %s", ctx, epm_last_error());
    return 1;
  }
  return 0;
}

/* n_group / topk_group / routed_scaling_factor: required for deepseek-v3 (a
 * missing one would silently change the math), else optional (null = none). */
static int group_params(json_t *o, const char *ctx, epm_routing_config_t *c) {
  const int need = c->method == EPM_ROUTING_DEEPSEEK_V3;
  json_t *rsf = json_object_get(o, "routed_scaling_factor");
  c->n_group = 1;
  c->topk_group = 1;
  c->routed_scaling_factor = 1.0f;
  if (need || json_is_integer(json_object_get(o, "n_group")))
    if (get_positive(o, ctx, "n_group", &c->n_group)) return 1;
  if (need || json_is_integer(json_object_get(o, "topk_group")))
    if (get_positive(o, ctx, "topk_group", &c->topk_group)) return 1;
  if (json_is_number(rsf)) {
    c->routed_scaling_factor = (float)json_number_value(rsf);
  } else if (need) {
    bundle_err("%s has no number \"routed_scaling_factor\"", ctx);
    return 1;
  }
  if (epm_routing_validate(c) != EPM_OK) {
    bundle_err("%s: %s", ctx, epm_last_error());
    return 1;
  }
  return 0;
}

static int printed_quant, printed_routing, printed_moe;

int epm_bundle_quant(epm_bundle_quant_t *out) {
  char ctx[96];
  int64_t sfv;
  json_t *p = section_params("nvfp4_quant", ctx, sizeof ctx);
  if (!p || get_positive(p, ctx, "rows", &out->rows) || get_positive(p, ctx, "cols", &out->cols) ||
      get_count(p, ctx, "sf_vec_size", &sfv))
    return 1;
  if (sfv != 16) {
    bundle_err("%s.sf_vec_size = %lld; NVFP4 scales blocks of 16", ctx, (long long)sfv);
    return 1;
  }
  if (out->cols % 16) {
    bundle_err("%s.cols = %lld is not a multiple of the block size 16", ctx, (long long)out->cols);
    return 1;
  }
  if (!printed_quant++)
    printf("bundle quant: %lld rows x %lld cols (%s)\n", (long long)out->rows, (long long)out->cols,
           epm_test_data_dir());
  return 0;
}

int epm_bundle_routing(epm_bundle_routing_t *out) {
  char ctx[96], cctx[160];
  const char *key;
  json_t *v, *p = section_params("routing", ctx, sizeof ctx);
  memset(out, 0, sizeof *out);
  if (!p || get_positive(p, ctx, "tokens", &out->tokens) || get_positive(p, ctx, "num_experts", &out->num_experts))
    return 1;
  /* the cases are the object-valued members, in manifest order (jansson
   * keeps insertion order) */
  json_object_foreach(p, key, v) {
    if (!json_is_object(v)) continue;
    if (out->ncases == EPM_BUNDLE_MAX_CASES) {
      bundle_err("%s has more than %d routing cases", ctx, EPM_BUNDLE_MAX_CASES);
      return 1;
    }
    epm_bundle_route_case_t *c = &out->cases[out->ncases++];
    snprintf(cctx, sizeof cctx, "%s.%s", ctx, key);
    if (strlen(key) >= sizeof c->name) {
      bundle_err("%s: case name longer than %zu characters", cctx, sizeof c->name - 1);
      return 1;
    }
    snprintf(c->name, sizeof c->name, "%s", key);
    c->cfg.num_experts = out->num_experts;
    if (method_of(cctx, key, &c->cfg.method) || get_positive(v, cctx, "top_k", &c->cfg.top_k) ||
        group_params(v, cctx, &c->cfg))
      return 1;
  }
  if (out->ncases == 0) {
    bundle_err("%s has no routing case (an object member such as \"renormalize\": {\"top_k\": 8})", ctx);
    return 1;
  }
  if (!printed_routing++) {
    printf("bundle routing: %lld tokens x %lld experts, %d cases:", (long long)out->tokens,
           (long long)out->num_experts, out->ncases);
    for (int i = 0; i < out->ncases; i++)
      printf("%s %s k=%lld", i ? "," : "", out->cases[i].name, (long long)out->cases[i].cfg.top_k);
    printf(" (%s)\n", epm_test_data_dir());
  }
  return 0;
}

static int get_slice(json_t *p, const char *ctx, const char *key, int64_t experts, epm_bundle_slice_t *s) {
  json_t *v = json_object_get(p, key);
  json_t *a = json_array_get(v, 0), *b = json_array_get(v, 1);
  if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(a) || !json_is_integer(b)) {
    bundle_err("%s has no \"%s\" [first, end) pair of integers", ctx, key);
    return 1;
  }
  s->off = (int64_t)json_integer_value(a);
  s->count = (int64_t)json_integer_value(b) - s->off;
  if (s->off < 0 || s->count < 1 || s->off + s->count > experts) {
    bundle_err("%s.%s = [%lld, %lld) is not a non-empty range inside [0, num_experts %lld)", ctx, key,
               (long long)s->off, (long long)(s->off + s->count), (long long)experts);
    return 1;
  }
  return 0;
}

int epm_bundle_moe(epm_bundle_moe_t *out) {
  char ctx[96];
  json_t *p = section_params("moe", ctx, sizeof ctx);
  memset(out, 0, sizeof *out);
  if (!p || get_positive(p, ctx, "tokens", &out->tokens) || get_positive(p, ctx, "hidden_size", &out->hidden) ||
      get_positive(p, ctx, "intermediate_size", &out->intermediate) ||
      get_positive(p, ctx, "num_experts", &out->num_experts) || get_positive(p, ctx, "top_k", &out->top_k))
    return 1;
  if (out->hidden % 16 || out->intermediate % 16) {
    bundle_err("%s: hidden_size %lld and intermediate_size %lld must be multiples of the block size 16", ctx,
               (long long)out->hidden, (long long)out->intermediate);
    return 1;
  }
  const char *rm = json_string_value(json_object_get(p, "routing_method"));
  if (!rm) {
    bundle_err("%s has no string \"routing_method\"", ctx);
    return 1;
  }
  snprintf(out->routing_name, sizeof out->routing_name, "%s", rm);
  out->routing.num_experts = out->num_experts;
  out->routing.top_k = out->top_k;
  if (method_of(ctx, rm, &out->routing.method) || group_params(p, ctx, &out->routing) ||
      get_slice(p, ctx, "local_slice_lo", out->num_experts, &out->lo) ||
      get_slice(p, ctx, "local_slice_hi", out->num_experts, &out->hi))
    return 1;
  if (!printed_moe++)
    printf("bundle moe: %lld tokens, hidden %lld, intermediate %lld, %lld experts, top_k %lld, %s, "
           "slices lo [%lld, %lld) hi [%lld, %lld) (%s)\n",
           (long long)out->tokens, (long long)out->hidden, (long long)out->intermediate,
           (long long)out->num_experts, (long long)out->top_k, out->routing_name, (long long)out->lo.off,
           (long long)(out->lo.off + out->lo.count), (long long)out->hi.off,
           (long long)(out->hi.off + out->hi.count), epm_test_data_dir());
  return 0;
}
