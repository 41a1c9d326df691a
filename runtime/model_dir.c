/* SPDX-License-Identifier: Apache-2.0 */
/* model_dir.c — config.json / hf_quant_config.json / index parsing for a
 * ModelOpt NVFP4 checkpoint directory (see include/epmoe/model_dir.h). */
#define _GNU_SOURCE
#include "epmoe/model_dir.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/checked.h"
#include "regular_file.h"

typedef struct {
  const char *name; /* owned by names storage */
  size_t file;
} map_entry_t;

struct epm_model_dir {
  char *dir;
  epm_model_dims_t dims;
  epm_model_family_t family;
  int64_t *moe_layers;
  int64_t n_moe;
  map_entry_t *map; /* sorted by name */
  size_t nmap;
  char **files;
  epm_st_file_t **open;
  size_t nfiles;
  char *index_path; /* for error messages; the single file when no index */
  int names_owned;  /* map names strdup'ed (index) or borrowed from the file header */
};

static const char *const family_names[EPM_FAMILY_COUNT] = {"deepseek_v3", "qwen3_moe", "llama4"};

const char *epm_model_family_name(epm_model_family_t f) {
  return ((int)f >= 0 && f < EPM_FAMILY_COUNT) ? family_names[f] : "?";
}

epm_model_family_t epm_model_family_for_dims(const epm_model_dims_t *d) {
  if (d->routing == EPM_ROUTING_LLAMA4) return EPM_FAMILY_LLAMA4;
  if (d->routing == EPM_ROUTING_DEEPSEEK_V3 || d->shared_experts) return EPM_FAMILY_DEEPSEEK_V3;
  return EPM_FAMILY_QWEN3_MOE;
}

static char *path_join(const char *dir, const char *name) {
  char *p = NULL;
  if (asprintf(&p, "%s/%s", dir, name) < 0) return NULL;
  return p;
}

/* Load a JSON object file with duplicate keys rejected and a size cap.
 * *missing is set (and EPM_OK returned with *out NULL) when the file does not
 * exist. Anything but a regular file is refused before reading (a FIFO would
 * block json_load_file forever). */
static epm_status_t load_json(const char *path, json_t **out, int *missing) {
  json_error_t jerr;
  int fd, gone = 0;
  size_t size, got = 0;
  *out = NULL;
  epm_status_t st = epm__open_regular(path, &fd, &size, &gone);
  if (st != EPM_OK) {
    if (gone && missing) {
      *missing = 1;
      epm_error_clear();
      return EPM_OK;
    }
    return st;
  }
  if (size > EPM_CKPT_MAX_JSON) {
    close(fd);
    return epm_error(EPM_ERR_OVERFLOW, "%s: %zu bytes exceeds the JSON file limit %u", path, size,
                     EPM_CKPT_MAX_JSON);
  }
  char *buf = malloc(size + 1);
  if (!buf) {
    close(fd);
    return epm_error(EPM_ERR_NOMEM, "%s: %zu bytes", path, size);
  }
  while (got < size) {
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      st = epm_error(EPM_ERR_IO, "%s: read %zu of %zu bytes: %s", path, got, size,
                     n < 0 ? strerror(errno) : "file shrank while being read");
      free(buf);
      close(fd);
      return st;
    }
    got += (size_t)n;
  }
  close(fd);
  json_t *j = json_loadb(buf, size, JSON_REJECT_DUPLICATES, &jerr);
  free(buf);
  if (!j)
    return epm_error(EPM_ERR_FORMAT, "%s: invalid JSON: %s at line %d column %d", path, jerr.text, jerr.line,
                     jerr.column);
  if (!json_is_object(j)) {
    json_decref(j);
    return epm_error(EPM_ERR_FORMAT, "%s: top level is not a JSON object", path);
  }
  *out = j;
  return EPM_OK;
}

/* Integer key in [0, max]: required, or missing -> def. Every integer read
 * from config.json has a bound, so no later product of them can overflow. */
static epm_status_t get_i64(const char *path, json_t *o, const char *key, int required, int64_t def, int64_t max,
                            int64_t *out) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    if (required) return epm_error(EPM_ERR_FORMAT, "%s: required key \"%s\" is missing", path, key);
    *out = def;
    return EPM_OK;
  }
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return epm_error(EPM_ERR_FORMAT, "%s: \"%s\" must be a non-negative integer", path, key);
  if (json_integer_value(v) > max)
    return epm_error(EPM_ERR_FORMAT, "%s: \"%s\" = %lld exceeds the limit %lld", path, key,
                     (long long)json_integer_value(v), (long long)max);
  *out = (int64_t)json_integer_value(v);
  return EPM_OK;
}

static epm_status_t get_str(const char *path, json_t *o, const char *key, const char *def, const char **out) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return EPM_OK;
  }
  if (!json_is_string(v)) return epm_error(EPM_ERR_FORMAT, "%s: \"%s\" must be a string", path, key);
  *out = json_string_value(v);
  return EPM_OK;
}

static epm_status_t add_moe_layer(epm_model_dir_t *md, int64_t L) {
  int64_t *p = realloc(md->moe_layers, (size_t)(md->n_moe + 1) * sizeof *p);
  if (!p) return epm_error(EPM_ERR_NOMEM, "MoE layer list");
  md->moe_layers = p;
  p[md->n_moe++] = L;
  return EPM_OK;
}

/* A layer-index array (mlp_only_layers, moe_layers) as flags over
 * [0, num_layers): one pass over the array, so the layer scan costs
 * O(array + layers) whatever the file holds. Entries must be layer indices. */
static epm_status_t layer_flags(const char *p, const char *key, json_t *a, int64_t nl, uint8_t **out) {
  size_t i;
  json_t *x;
  *out = calloc((size_t)nl + 1, 1);
  if (!*out) return epm_error(EPM_ERR_NOMEM, "%s: \"%s\" flags", p, key);
  json_array_foreach(a, i, x) {
    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= nl) {
      free(*out);
      *out = NULL;
      if (!json_is_integer(x))
        return epm_error(EPM_ERR_FORMAT, "%s: \"%s\"[%zu] is not an integer", p, key, i);
      return epm_error(EPM_ERR_FORMAT, "%s: \"%s\"[%zu] = %lld is not a layer index below num_hidden_layers = %lld",
                       p, key, i, (long long)json_integer_value(x), (long long)nl);
    }
    (*out)[json_integer_value(x)] = 1;
  }
  return EPM_OK;
}

static epm_status_t parse_deepseek(const char *p, json_t *c, epm_model_dir_t *md) {
  epm_model_dims_t *d = &md->dims;
  int64_t n_shared, first_dense, freq;
  const char *scoring = NULL, *topk_method = NULL;
  EPM_TRY(get_i64(p, c, "moe_intermediate_size", 1, 0, EPM_CKPT_MAX_INTERMEDIATE, &d->intermediate));
  EPM_TRY(get_i64(p, c, "n_routed_experts", 1, 0, EPM_CKPT_MAX_EXPERTS, &d->num_experts));
  EPM_TRY(get_i64(p, c, "n_group", 0, 1, EPM_CKPT_MAX_GROUPS, &d->n_group));
  EPM_TRY(get_i64(p, c, "topk_group", 0, 1, EPM_CKPT_MAX_GROUPS, &d->topk_group));
  EPM_TRY(get_i64(p, c, "n_shared_experts", 0, 0, EPM_CKPT_MAX_SHARED, &n_shared));
  EPM_TRY(get_i64(p, c, "first_k_dense_replace", 0, 0, EPM_CKPT_MAX_LAYERS, &first_dense));
  EPM_TRY(get_i64(p, c, "moe_layer_freq", 0, 1, EPM_CKPT_MAX_LAYERS, &freq));
  EPM_TRY(get_str(p, c, "scoring_func", "sigmoid", &scoring));
  EPM_TRY(get_str(p, c, "topk_method", "noaux_tc", &topk_method));
  if (strcmp(scoring, "sigmoid") != 0 || strcmp(topk_method, "noaux_tc") != 0)
    return epm_error(EPM_ERR_NOT_SUPPORTED,
                     "%s: scoring_func \"%s\" with topk_method \"%s\" is not supported (DeepSeek-V3 "
                     "routing needs \"sigmoid\" and \"noaux_tc\")",
                     p, scoring, topk_method);
  if (freq < 1) return epm_error(EPM_ERR_FORMAT, "%s: moe_layer_freq = %lld must be >= 1", p, (long long)freq);
  d->routing = EPM_ROUTING_DEEPSEEK_V3;
  d->shared_experts = n_shared > 0;
  /* One fused MLP of n_shared experts. Checked even though both factors are
   * bounded: a wrapped product could land on a valid size. */
  if (epm_mul_i64(d->intermediate, n_shared, &d->shared_intermediate) ||
      d->shared_intermediate > EPM_CKPT_MAX_INTERMEDIATE)
    return epm_error(EPM_ERR_FORMAT,
                     "%s: shared expert intermediate = moe_intermediate_size %lld x n_shared_experts %lld exceeds "
                     "the limit %d",
                     p, (long long)d->intermediate, (long long)n_shared, EPM_CKPT_MAX_INTERMEDIATE);
  json_t *r = json_object_get(c, "routed_scaling_factor");
  if (r && !json_is_number(r))
    return epm_error(EPM_ERR_FORMAT, "%s: \"routed_scaling_factor\" must be a number", p);
  d->routed_scaling_factor = r ? (float)json_number_value(r) : 1.0f;
  for (int64_t L = first_dense; L < d->num_layers; L++)
    if (L % freq == 0) EPM_TRY(add_moe_layer(md, L));
  return EPM_OK;
}

static epm_status_t parse_qwen3(const char *p, json_t *c, epm_model_dir_t *md) {
  epm_model_dims_t *d = &md->dims;
  int64_t step;
  uint8_t *dense = NULL;
  EPM_TRY(get_i64(p, c, "moe_intermediate_size", 1, 0, EPM_CKPT_MAX_INTERMEDIATE, &d->intermediate));
  EPM_TRY(get_i64(p, c, "num_experts", 1, 0, EPM_CKPT_MAX_EXPERTS, &d->num_experts));
  EPM_TRY(get_i64(p, c, "decoder_sparse_step", 0, 1, EPM_CKPT_MAX_LAYERS, &step));
  json_t *norm = json_object_get(c, "norm_topk_prob"), *only = json_object_get(c, "mlp_only_layers");
  if (norm && !json_is_boolean(norm))
    return epm_error(EPM_ERR_FORMAT, "%s: \"norm_topk_prob\" must be true or false", p);
  if (only && !json_is_array(only))
    return epm_error(EPM_ERR_FORMAT, "%s: \"mlp_only_layers\" must be an array", p);
  if (step < 1) return epm_error(EPM_ERR_FORMAT, "%s: decoder_sparse_step = %lld must be >= 1", p, (long long)step);
  d->routing = (norm && json_is_true(norm)) ? EPM_ROUTING_RENORMALIZE : EPM_ROUTING_DEFAULT;
  d->n_group = d->topk_group = 1;
  d->routed_scaling_factor = 1.0f;
  if (only) EPM_TRY(layer_flags(p, "mlp_only_layers", only, d->num_layers, &dense));
  epm_status_t st = EPM_OK;
  for (int64_t L = 0; L < d->num_layers && st == EPM_OK; L++)
    if (!(dense && dense[L]) && (L + 1) % step == 0) st = add_moe_layer(md, L);
  free(dense);
  return st;
}

static epm_status_t parse_llama4(const char *p, json_t *c, epm_model_dir_t *md) {
  epm_model_dims_t *d = &md->dims;
  int64_t step;
  uint8_t *moe = NULL;
  EPM_TRY(get_i64(p, c, "intermediate_size", 1, 0, EPM_CKPT_MAX_INTERMEDIATE, &d->intermediate));
  EPM_TRY(get_i64(p, c, "num_local_experts", 1, 0, EPM_CKPT_MAX_EXPERTS, &d->num_experts));
  EPM_TRY(get_i64(p, c, "interleave_moe_layer_step", 0, 1, EPM_CKPT_MAX_LAYERS, &step));
  if (step < 1)
    return epm_error(EPM_ERR_FORMAT, "%s: interleave_moe_layer_step = %lld must be >= 1", p, (long long)step);
  d->routing = EPM_ROUTING_LLAMA4;
  d->n_group = d->topk_group = 1;
  d->routed_scaling_factor = 1.0f;
  d->shared_experts = 1;
  d->shared_intermediate = d->intermediate;
  json_t *ml = json_object_get(c, "moe_layers");
  if (ml && !json_is_array(ml)) return epm_error(EPM_ERR_FORMAT, "%s: \"moe_layers\" must be an array", p);
  if (ml) EPM_TRY(layer_flags(p, "moe_layers", ml, d->num_layers, &moe));
  epm_status_t st = EPM_OK;
  for (int64_t L = 0; L < d->num_layers && st == EPM_OK; L++)
    if (moe ? moe[L] : (L + 1) % step == 0) st = add_moe_layer(md, L);
  free(moe);
  return st;
}

static epm_status_t parse_config(epm_model_dir_t *md) {
  char *p = path_join(md->dir, "config.json");
  json_t *root = NULL;
  const char *mt = NULL;
  epm_status_t st = EPM_OK;
  if (!p) return epm_error(EPM_ERR_NOMEM, "path");
  EPM_TRY_GOTO(load_json(p, &root, NULL), st, out);
  json_t *c = root, *tc = json_object_get(root, "text_config");
  EPM_TRY_GOTO(get_str(p, root, "model_type", "", &mt), st, out);
  int fam = -1;
  if (strcmp(mt, "deepseek_v3") == 0) fam = EPM_FAMILY_DEEPSEEK_V3;
  if (strcmp(mt, "qwen3_moe") == 0) fam = EPM_FAMILY_QWEN3_MOE;
  if (strcmp(mt, "llama4") == 0 || strcmp(mt, "llama4_text") == 0) fam = EPM_FAMILY_LLAMA4;
  if (fam < 0) {
    st = epm_error(EPM_ERR_NOT_SUPPORTED,
                   "%s: model_type \"%s\" is not supported (deepseek_v3, qwen3_moe, llama4)", p, mt);
    goto out;
  }
  if (fam == EPM_FAMILY_LLAMA4 && json_is_object(tc)) c = tc;
  md->family = (epm_model_family_t)fam;
  epm_model_dims_t *d = &md->dims;
  memset(d, 0, sizeof *d);
  snprintf(d->name, sizeof d->name, "%s", mt);
  EPM_TRY_GOTO(get_i64(p, c, "hidden_size", 1, 0, EPM_CKPT_MAX_HIDDEN, &d->hidden), st, out);
  EPM_TRY_GOTO(get_i64(p, c, "num_experts_per_tok", 1, 0, EPM_CKPT_MAX_TOP_K, &d->top_k), st, out);
  EPM_TRY_GOTO(get_i64(p, c, "num_hidden_layers", 1, 0, EPM_CKPT_MAX_LAYERS, &d->num_layers), st, out);
  if (fam == EPM_FAMILY_DEEPSEEK_V3) EPM_TRY_GOTO(parse_deepseek(p, c, md), st, out);
  if (fam == EPM_FAMILY_QWEN3_MOE) EPM_TRY_GOTO(parse_qwen3(p, c, md), st, out);
  if (fam == EPM_FAMILY_LLAMA4) EPM_TRY_GOTO(parse_llama4(p, c, md), st, out);
  const char *ovr = NULL;
  EPM_TRY_GOTO(get_str(p, root, "epmoe_routing", NULL, &ovr), st, out);
  if (ovr) {
    EPM_TRY_GOTO(epm_routing_method_parse(ovr, &d->routing), st, out);
  }
  st = epm_model_dims_validate(d);
  if (st != EPM_OK) {
    epm_error_wrap(st, "%s", p);
    goto out;
  }
  if (md->n_moe == 0) st = epm_error(EPM_ERR_FORMAT, "%s: no MoE layers among %lld layers", p, (long long)d->num_layers);
out:
  json_decref(root);
  free(p);
  return st;
}

static epm_status_t check_quant(json_t *q, const char *p) {
  const char *algo = NULL;
  int64_t gs;
  EPM_TRY(get_str(p, q, "quant_algo", "", &algo));
  if (strcmp(algo, "NVFP4") != 0)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "%s: quant_algo \"%s\" is not supported; epmoe loads \"NVFP4\"", p,
                     algo);
  EPM_TRY(get_i64(p, q, "group_size", 0, 16, INT64_MAX, &gs));
  if (gs != 16)
    return epm_error(EPM_ERR_NOT_SUPPORTED, "%s: group_size %lld; NVFP4 uses 16-element blocks", p,
                     (long long)gs);
  return EPM_OK;
}

/* hf_quant_config.json {"quantization": {...}}, else config.json's quantization_config. */
static epm_status_t parse_quant(epm_model_dir_t *md) {
  char *p = path_join(md->dir, "hf_quant_config.json");
  json_t *root = NULL;
  int missing = 0;
  epm_status_t st;
  if (!p) return epm_error(EPM_ERR_NOMEM, "path");
  EPM_TRY_GOTO(load_json(p, &root, &missing), st, out);
  if (!missing) {
    json_t *q = json_object_get(root, "quantization");
    st = json_is_object(q) ? check_quant(q, p)
                           : epm_error(EPM_ERR_FORMAT, "%s: no \"quantization\" object", p);
    goto out;
  }
  free(p);
  p = path_join(md->dir, "config.json");
  if (!p) return epm_error(EPM_ERR_NOMEM, "path");
  EPM_TRY_GOTO(load_json(p, &root, NULL), st, out);
  json_t *q = json_object_get(root, "quantization_config");
  st = json_is_object(q) ? check_quant(q, p)
                         : epm_error(EPM_ERR_FORMAT,
                                     "%s: no hf_quant_config.json and no \"quantization_config\" in "
                                     "config.json: not a ModelOpt NVFP4 checkpoint",
                                     md->dir);
out:
  json_decref(root);
  free(p);
  return st;
}

static int map_cmp(const void *a, const void *b) {
  return strcmp(((const map_entry_t *)a)->name, ((const map_entry_t *)b)->name);
}

/* Names come from a file we do not trust: stay inside the directory. */
static epm_status_t check_file_name(const epm_model_dir_t *md, const char *fname) {
  if (!*fname || strchr(fname, '/') || strcmp(fname, ".") == 0 || strcmp(fname, "..") == 0)
    return epm_error(EPM_ERR_FORMAT, "%s: weight_map file name \"%s\" is not a plain file name", md->index_path,
                     fname);
  return EPM_OK;
}

static epm_status_t add_file(epm_model_dir_t *md, const char *fname) {
  EPM_TRY(check_file_name(md, fname));
  char **f = realloc(md->files, (md->nfiles + 1) * sizeof *f);
  if (!f) return epm_error(EPM_ERR_NOMEM, "file list");
  md->files = f;
  if (!(f[md->nfiles] = strdup(fname))) return epm_error(EPM_ERR_NOMEM, "file list");
  md->nfiles++;
  return EPM_OK;
}

/* Weight-map entry k names file fname[k]. */
typedef struct {
  const char *fname;
  size_t k;
} file_ref_t;

static int file_ref_cmp(const void *a, const void *b) {
  int c = strcmp(((const file_ref_t *)a)->fname, ((const file_ref_t *)b)->fname);
  if (c) return c;
  size_t x = ((const file_ref_t *)a)->k, y = ((const file_ref_t *)b)->k;
  return (x > y) - (x < y);
}

/* The distinct file names of the weight map, by sorting: O(n log n) however
 * many files a hostile index names (a linear search per entry was O(n^2)). */
static epm_status_t assign_files(epm_model_dir_t *md, file_ref_t *refs) {
  qsort(refs, md->nmap, sizeof *refs, file_ref_cmp);
  for (size_t i = 0; i < md->nmap; i++) {
    if (i == 0 || strcmp(refs[i].fname, refs[i - 1].fname) != 0) EPM_TRY(add_file(md, refs[i].fname));
    md->map[refs[i].k].file = md->nfiles - 1;
  }
  return EPM_OK;
}

static epm_status_t finish_map(epm_model_dir_t *md) {
  md->open = calloc(md->nfiles + 1, sizeof *md->open);
  if (!md->open) return epm_error(EPM_ERR_NOMEM, "file table");
  if (md->nmap) qsort(md->map, md->nmap, sizeof *md->map, map_cmp);
  return EPM_OK;
}

static epm_status_t parse_index(epm_model_dir_t *md) {
  json_t *root = NULL;
  int missing = 0;
  epm_status_t st = EPM_OK;
  md->index_path = path_join(md->dir, "model.safetensors.index.json");
  if (!md->index_path) return epm_error(EPM_ERR_NOMEM, "path");
  EPM_TRY(load_json(md->index_path, &root, &missing));
  if (missing) {
    /* Single-file checkpoint: the file's own header is the map. */
    free(md->index_path);
    md->index_path = path_join(md->dir, "model.safetensors");
    if (!md->index_path) return epm_error(EPM_ERR_NOMEM, "path");
    const epm_st_file_t *f;
    EPM_TRY(add_file(md, "model.safetensors"));
    EPM_TRY(finish_map(md));
    st = epm_model_dir_file(md, 0, &f);
    if (st != EPM_OK)
      return epm_error_wrap(st, "%s: no model.safetensors.index.json, and model.safetensors", md->dir);
    md->nmap = epm_st_count(f);
    md->map = calloc(md->nmap + 1, sizeof *md->map);
    if (!md->map) return epm_error(EPM_ERR_NOMEM, "tensor map");
    for (size_t i = 0; i < md->nmap; i++) md->map[i] = (map_entry_t){epm_st_at(f, i)->name, 0};
    if (md->nmap) qsort(md->map, md->nmap, sizeof *md->map, map_cmp);
    return EPM_OK;
  }
  json_t *wm = json_object_get(root, "weight_map");
  file_ref_t *refs = NULL;
  const char *key;
  json_t *v;
  if (!json_is_object(wm)) {
    st = epm_error(EPM_ERR_FORMAT, "%s: no \"weight_map\" object", md->index_path);
    goto out;
  }
  md->map = calloc(json_object_size(wm) + 1, sizeof *md->map);
  refs = calloc(json_object_size(wm) + 1, sizeof *refs);
  md->names_owned = 1;
  if (!md->map || !refs) {
    st = epm_error(EPM_ERR_NOMEM, "tensor map");
    goto out;
  }
  json_object_foreach(wm, key, v) {
    if (!json_is_string(v)) {
      st = epm_error(EPM_ERR_FORMAT, "%s: weight_map[\"%s\"] is not a file name string", md->index_path, key);
      goto out;
    }
    md->map[md->nmap].name = strdup(key);
    if (!md->map[md->nmap].name) {
      st = epm_error(EPM_ERR_NOMEM, "tensor map");
      goto out;
    }
    refs[md->nmap] = (file_ref_t){json_string_value(v), md->nmap};
    md->nmap++;
  }
  EPM_TRY_GOTO(assign_files(md, refs), st, out);
  EPM_TRY_GOTO(finish_map(md), st, out);
out:
  free(refs);
  json_decref(root);
  return st;
}

epm_status_t epm_model_dir_open(const char *dir, epm_model_dir_t **out) {
  *out = NULL;
  epm_model_dir_t *md = calloc(1, sizeof *md);
  epm_status_t st;
  if (!md || !(md->dir = strdup(dir))) {
    free(md);
    return epm_error(EPM_ERR_NOMEM, "model dir");
  }
  EPM_TRY_GOTO(parse_config(md), st, fail);
  EPM_TRY_GOTO(parse_quant(md), st, fail);
  EPM_TRY_GOTO(parse_index(md), st, fail);
  *out = md;
  return EPM_OK;
fail:
  epm_model_dir_close(md);
  return st;
}

void epm_model_dir_close(epm_model_dir_t *md) {
  if (!md) return;
  for (size_t i = 0; md->names_owned && i < md->nmap; i++) free((char *)md->map[i].name);
  free(md->map);
  for (size_t i = 0; i < md->nfiles; i++) {
    if (md->open) epm_st_close(md->open[i]);
    free(md->files[i]);
  }
  free(md->open);
  free(md->files);
  free(md->moe_layers);
  free(md->index_path);
  free(md->dir);
  free(md);
}

const char *epm_model_dir_path(const epm_model_dir_t *md) { return md->dir; }
const epm_model_dims_t *epm_model_dir_dims(const epm_model_dir_t *md) { return &md->dims; }
epm_model_family_t epm_model_dir_family(const epm_model_dir_t *md) { return md->family; }
int64_t epm_model_dir_moe_layer_count(const epm_model_dir_t *md) { return md->n_moe; }
int64_t epm_model_dir_moe_layer(const epm_model_dir_t *md, int64_t i) {
  return (i >= 0 && i < md->n_moe) ? md->moe_layers[i] : -1;
}
int epm_model_dir_is_moe_layer(const epm_model_dir_t *md, int64_t layer) {
  for (int64_t i = 0; i < md->n_moe; i++)
    if (md->moe_layers[i] == layer) return 1;
  return 0;
}
size_t epm_model_dir_tensor_count(const epm_model_dir_t *md) { return md->nmap; }
const char *epm_model_dir_tensor_name(const epm_model_dir_t *md, size_t i) { return md->map[i].name; }
size_t epm_model_dir_tensor_file(const epm_model_dir_t *md, size_t i) { return md->map[i].file; }
size_t epm_model_dir_file_count(const epm_model_dir_t *md) { return md->nfiles; }
const char *epm_model_dir_file_name(const epm_model_dir_t *md, size_t i) { return md->files[i]; }

epm_status_t epm_model_dir_file(epm_model_dir_t *md, size_t i, const epm_st_file_t **out) {
  if (i >= md->nfiles) return epm_error(EPM_ERR_INVALID_ARG, "file %zu of %zu", i, md->nfiles);
  if (!md->open[i]) {
    char *p = path_join(md->dir, md->files[i]);
    if (!p) return epm_error(EPM_ERR_NOMEM, "path");
    epm_status_t st = epm_st_open(p, &md->open[i]);
    free(p);
    EPM_TRY(st);
  }
  *out = md->open[i];
  return EPM_OK;
}

epm_status_t epm_model_dir_tensor(epm_model_dir_t *md, const char *name, const epm_st_tensor_t **out,
                                  const epm_st_file_t **file) {
  map_entry_t key = {name, 0};
  const map_entry_t *e = bsearch(&key, md->map, md->nmap, sizeof *md->map, map_cmp);
  const epm_st_file_t *f;
  if (!e) return epm_error(EPM_ERR_FORMAT, "tensor '%s' is missing from %s", name, md->index_path);
  EPM_TRY(epm_model_dir_file(md, e->file, &f));
  *out = epm_st_find(f, name);
  if (!*out)
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s' is listed in the weight map but missing from the file",
                     epm_st_path(f), name);
  if (file) *file = f;
  return EPM_OK;
}

epm_status_t epm_model_dir_expect(epm_model_dir_t *md, const char *name, epm_st_dtype_t dtype, int ndim,
                                  const int64_t *shape, const epm_st_tensor_t **out) {
  const epm_st_tensor_t *t;
  const epm_st_file_t *f;
  EPM_TRY(epm_model_dir_tensor(md, name, &t, &f));
  return epm_st_expect(f, name, dtype, ndim, shape, out);
}
