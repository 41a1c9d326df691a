/* SPDX-License-Identifier: Apache-2.0 */
/* safetensors.c — validating reader (see include/epmoe/safetensors.h).
 *
 * Order of checks follows the reference (safetensors/src/tensor.rs) so our
 * errors correspond to its HeaderTooSmall / HeaderTooLarge /
 * InvalidHeaderLength / InvalidHeaderDeserialization / InvalidOffset /
 * ValidationOverflow / MisalignedSlice / TensorInvalidInfo /
 * MetadataIncompleteBuffer, plus duplicate names (jansson
 * JSON_REJECT_DUPLICATES) which the reference's HashMap does not catch.
 */
#define _GNU_SOURCE
#include "epmoe/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epmoe/checked.h"
#include "regular_file.h"

struct epm_st_file {
  char *path;
  int fd;
  const uint8_t *map;
  int mapped; /* map is ours (mmap of fd); else the caller's buffer (epm_st_open_mem) */
  size_t size;
  size_t nt;
  epm_st_tensor_t *t;   /* in offset order */
  const epm_st_tensor_t **by_name; /* into t, sorted by name */
  char **meta;          /* key, value pairs */
  size_t nmeta;
  char *names;          /* storage for tensor names */
};

static const char *const dtype_names[EPM_ST_DTYPE_COUNT] = {
#define EPM__ST_DT_NAME(name, bits) #name,
    EPM_ST_DTYPE_MAP(EPM__ST_DT_NAME)
#undef EPM__ST_DT_NAME
};
static const int dtype_bits[EPM_ST_DTYPE_COUNT] = {
#define EPM__ST_DT_BITS(name, bits) bits,
    EPM_ST_DTYPE_MAP(EPM__ST_DT_BITS)
#undef EPM__ST_DT_BITS
};

const char *epm_st_dtype_name(epm_st_dtype_t dt) {
  return ((int)dt >= 0 && dt < EPM_ST_DTYPE_COUNT) ? dtype_names[dt] : "?";
}
int epm_st_dtype_bits(epm_st_dtype_t dt) {
  return ((int)dt >= 0 && dt < EPM_ST_DTYPE_COUNT) ? dtype_bits[dt] : 0;
}
int epm_st_dtype_parse(const char *s, epm_st_dtype_t *out) {
  for (int i = 0; s && i < EPM_ST_DTYPE_COUNT; i++) {
    if (strcmp(s, dtype_names[i]) == 0) {
      *out = (epm_st_dtype_t)i;
      return 0;
    }
  }
  return 1;
}

const char *epm_st_shape_str(int ndim, const int64_t *shape, char *buf, size_t len) {
  size_t o = 0;
  if (len == 0) return buf;
  buf[0] = '\0';
  o += (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < ndim && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (o < len) snprintf(buf + o, len - o, "]");
  return buf;
}

uint64_t epm_fnv1a64(const void *data, size_t n, uint64_t h) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* numel x bits / 8 with every step checked; sub-byte dtypes must fill whole
 * bytes (the reference's MisalignedSlice). */
epm_status_t epm_st_spec_nbytes(const epm_st_spec_t *s, size_t *out) {
  int64_t numel = 1, bits;
  if (s->ndim < 0 || s->ndim > EPM_ST_MAX_RANK)
    return epm_error(EPM_ERR_FORMAT, "tensor '%s': rank %d outside [0, %d]", s->name, s->ndim,
                     EPM_ST_MAX_RANK);
  for (int i = 0; i < s->ndim; i++) {
    if (s->shape[i] < 0)
      return epm_error(EPM_ERR_FORMAT, "tensor '%s': shape[%d] = %lld is negative", s->name, i,
                       (long long)s->shape[i]);
    if (epm_mul_i64(numel, s->shape[i], &numel))
      return epm_error(EPM_ERR_OVERFLOW, "tensor '%s': shape overflows 64-bit element count at dim %d (%lld)",
                       s->name, i, (long long)s->shape[i]);
  }
  if (epm_mul_i64(numel, epm_st_dtype_bits(s->dtype), &bits))
    return epm_error(EPM_ERR_OVERFLOW, "tensor '%s': %lld elements x %d bits overflows 64 bits", s->name,
                     (long long)numel, epm_st_dtype_bits(s->dtype));
  if (bits % 8 != 0)
    return epm_error(EPM_ERR_FORMAT, "tensor '%s': %lld elements of %s are %lld bits, not whole bytes",
                     s->name, (long long)numel, epm_st_dtype_name(s->dtype), (long long)bits);
  if ((uint64_t)(bits / 8) > SIZE_MAX)
    return epm_error(EPM_ERR_OVERFLOW, "tensor '%s': %lld bytes exceed size_t", s->name,
                     (long long)(bits / 8));
  *out = (size_t)(bits / 8);
  return EPM_OK;
}

/* A JSON integer >= 0 (not a real, not a bool). */
static int json_nonneg(const json_t *v, int64_t *out) {
  if (!json_is_integer(v)) return 1;
  json_int_t x = json_integer_value(v);
  if (x < 0) return 2;
  *out = (int64_t)x;
  return 0;
}

static epm_status_t parse_tensor(epm_st_file_t *f, const char *name, json_t *v, uint64_t data_len,
                                 epm_st_tensor_t *t, uint64_t *begin, uint64_t *end) {
  const char *p = f->path;
  const char *key;
  json_t *x;
  if (!json_is_object(v))
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", p, name);
  json_object_foreach(v, key, x) {
    if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
      return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': unknown field '%s'", p, name, key);
  }
  json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
         *off = json_object_get(v, "data_offsets");
  if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off))
    return epm_error(EPM_ERR_FORMAT,
                     "%s: tensor '%s': needs string \"dtype\", array \"shape\" and array \"data_offsets\"",
                     p, name);
  if (epm_st_dtype_parse(json_string_value(dt), &t->dtype))
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", p, name,
                     json_string_value(dt));
  size_t nd = json_array_size(sh);
  if (nd > EPM_ST_MAX_RANK)
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': rank %zu exceeds the limit %d", p, name, nd,
                     EPM_ST_MAX_RANK);
  epm_st_spec_t spec = {.name = name, .dtype = t->dtype, .ndim = (int)nd};
  for (size_t i = 0; i < nd; i++) {
    int rc = json_nonneg(json_array_get(sh, i), &spec.shape[i]);
    if (rc)
      return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is %s", p, name, i,
                       rc == 2 ? "negative" : "not an integer");
  }
  size_t nbytes;
  epm_status_t st = epm_st_spec_nbytes(&spec, &nbytes);
  if (st != EPM_OK) return epm_error_wrap(st, "%s", p);
  int64_t b, e;
  if (json_array_size(off) != 2 || json_nonneg(json_array_get(off, 0), &b) ||
      json_nonneg(json_array_get(off, 1), &e))
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers",
                     p, name);
  if (e < b)
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] end before begin", p,
                     name, (long long)b, (long long)e);
  if ((uint64_t)e > data_len)
    return epm_error(EPM_ERR_FORMAT,
                     "%s: tensor '%s': data_offsets [%lld, %lld] past the end of the %llu-byte data "
                     "section (file truncated or corrupt)",
                     p, name, (long long)b, (long long)e, (unsigned long long)data_len);
  if ((uint64_t)(e - b) != nbytes) {
    char s[160];
    return epm_error(EPM_ERR_FORMAT,
                     "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but %s %s needs %zu", p,
                     name, (long long)b, (long long)e, (long long)(e - b), epm_st_dtype_name(t->dtype),
                     epm_st_shape_str(spec.ndim, spec.shape, s, sizeof s), nbytes);
  }
  t->ndim = spec.ndim;
  memcpy(t->shape, spec.shape, sizeof t->shape);
  t->numel = 1;
  for (int i = 0; i < t->ndim; i++) t->numel *= t->shape[i]; /* checked above */
  t->nbytes = nbytes;
  *begin = (uint64_t)b;
  *end = (uint64_t)e;
  return EPM_OK;
}

static epm_status_t parse_metadata(epm_st_file_t *f, json_t *v) {
  const char *key;
  json_t *x;
  if (!json_is_object(v))
    return epm_error(EPM_ERR_FORMAT, "%s: __metadata__ is not an object of strings", f->path);
  f->meta = calloc(2 * json_object_size(v) + 1, sizeof *f->meta);
  if (!f->meta) return epm_error(EPM_ERR_NOMEM, "%s: __metadata__ copy", f->path);
  json_object_foreach(v, key, x) {
    if (!json_is_string(x))
      return epm_error(EPM_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string", f->path, key);
    f->meta[2 * f->nmeta] = strdup(key);
    f->meta[2 * f->nmeta + 1] = strdup(json_string_value(x));
    f->nmeta++;
    if (!f->meta[2 * f->nmeta - 2] || !f->meta[2 * f->nmeta - 1])
      return epm_error(EPM_ERR_NOMEM, "%s: __metadata__ copy", f->path);
  }
  return EPM_OK;
}

typedef struct {
  uint64_t begin, end;
  size_t idx;
} span_t;

static int span_cmp(const void *a, const void *b) {
  const span_t *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp((*(const epm_st_tensor_t *const *)a)->name, (*(const epm_st_tensor_t *const *)b)->name);
}

/* Tensors sorted by offset must tile [0, data_len) exactly. */
static epm_status_t check_layout(epm_st_file_t *f, span_t *sp, const epm_st_tensor_t *tmp,
                                 uint64_t data_len) {
  uint64_t at = 0;
  qsort(sp, f->nt, sizeof *sp, span_cmp);
  for (size_t i = 0; i < f->nt; i++) {
    const char *nm = tmp[sp[i].idx].name;
    if (sp[i].begin < at)
      return epm_error(EPM_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] overlap the previous tensor '%s' "
                       "ending at %llu",
                       f->path, nm, (unsigned long long)sp[i].begin, (unsigned long long)sp[i].end,
                       tmp[sp[i - 1].idx].name, (unsigned long long)at);
    if (sp[i].begin > at)
      return epm_error(EPM_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] leave a gap of %llu bytes after "
                       "offset %llu",
                       f->path, nm, (unsigned long long)sp[i].begin, (unsigned long long)sp[i].end,
                       (unsigned long long)(sp[i].begin - at), (unsigned long long)at);
    at = sp[i].end;
  }
  if (at != data_len)
    return epm_error(EPM_ERR_FORMAT,
                     "%s: tensors cover %llu bytes but the data section has %llu (trailing bytes: "
                     "incomplete or polyglot file)",
                     f->path, (unsigned long long)at, (unsigned long long)data_len);
  return EPM_OK;
}

static epm_status_t parse_header(epm_st_file_t *f) {
  const char *p = f->path;
  if (f->size < 8)
    return epm_error(EPM_ERR_FORMAT, "%s: file has %zu bytes, fewer than the 8-byte header length", p,
                     f->size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | f->map[i];
  if (n > EPM_ST_MAX_HEADER)
    return epm_error(EPM_ERR_OVERFLOW, "%s: header length %llu exceeds the limit %llu", p,
                     (unsigned long long)n, (unsigned long long)EPM_ST_MAX_HEADER);
  if (n + 8 > f->size)
    return epm_error(EPM_ERR_FORMAT, "%s: header length %llu + 8 exceeds the file size %zu", p,
                     (unsigned long long)n, f->size);
  uint64_t data_len = f->size - 8 - n;
  json_error_t jerr;
  json_t *root = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return epm_error(EPM_ERR_FORMAT, "%s: invalid header JSON (%llu bytes): %s at line %d column %d", p,
                     (unsigned long long)n, jerr.text, jerr.line, jerr.column);
  epm_status_t st = EPM_OK;
  span_t *sp = NULL;
  size_t namebytes = 0, k = 0;
  const char *key;
  json_t *v;
  if (!json_is_object(root)) {
    st = epm_error(EPM_ERR_FORMAT, "%s: header JSON is not an object", p);
    goto out;
  }
  json_object_foreach(root, key, v) {
    if (strcmp(key, "__metadata__") == 0) {
      EPM_TRY_GOTO(parse_metadata(f, v), st, out);
      continue;
    }
    f->nt++;
    namebytes += strlen(key) + 1;
  }
  f->t = calloc(f->nt + 1, sizeof *f->t);
  f->by_name = calloc(f->nt + 1, sizeof *f->by_name);
  sp = calloc(f->nt + 1, sizeof *sp);
  f->names = malloc(namebytes + 1);
  if (!f->t || !f->by_name || !sp || !f->names) {
    st = epm_error(EPM_ERR_NOMEM, "%s: %zu tensor entries", p, f->nt);
    goto out;
  }
  char *np = f->names;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "__metadata__") == 0) continue;
    size_t len = strlen(key) + 1;
    memcpy(np, key, len);
    f->t[k].name = np;
    np += len;
    EPM_TRY_GOTO(parse_tensor(f, f->t[k].name, v, data_len, &f->t[k], &sp[k].begin, &sp[k].end), st, out);
    sp[k].idx = k;
    k++;
  }
  EPM_TRY_GOTO(check_layout(f, sp, f->t, data_len), st, out);
  /* Store in offset order, pointing into the mapping. */
  {
    epm_st_tensor_t *ord = calloc(f->nt + 1, sizeof *ord);
    if (!ord) {
      st = epm_error(EPM_ERR_NOMEM, "%s: %zu tensor entries", p, f->nt);
      goto out;
    }
    for (size_t i = 0; i < f->nt; i++) {
      ord[i] = f->t[sp[i].idx];
      ord[i].file_offset = 8 + n + sp[i].begin;
      ord[i].data = ord[i].nbytes ? f->map + ord[i].file_offset : NULL;
    }
    free(f->t);
    f->t = ord;
  }
  for (size_t i = 0; i < f->nt; i++) f->by_name[i] = &f->t[i];
  qsort(f->by_name, f->nt, sizeof *f->by_name, name_cmp);
  /* jansson already rejects duplicate keys; this guards the lookup table. */
  for (size_t i = 1; i < f->nt; i++)
    if (strcmp(f->by_name[i]->name, f->by_name[i - 1]->name) == 0) {
      st = epm_error(EPM_ERR_FORMAT, "%s: duplicate tensor name '%s'", p, f->by_name[i]->name);
      goto out;
    }
out:
  free(sp);
  json_decref(root);
  return st;
}

static epm_st_file_t *file_new(const char *path) {
  epm_st_file_t *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    return NULL;
  }
  f->fd = -1;
  return f;
}

epm_status_t epm_st_open(const char *path, epm_st_file_t **out) {
  *out = NULL;
  epm_st_file_t *f = file_new(path);
  if (!f) return epm_error(EPM_ERR_NOMEM, "%s: open", path);
  epm_status_t st = epm__open_regular(path, &f->fd, &f->size, NULL);
  if (st != EPM_OK) goto fail;
  if (f->size > 0) {
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (m == MAP_FAILED) {
      st = epm_error(EPM_ERR_IO, "%s: mmap of %zu bytes: %s", path, f->size, strerror(errno));
      goto fail;
    }
    f->map = m;
    f->mapped = 1;
  }
  EPM_TRY_GOTO(parse_header(f), st, fail);
  *out = f;
  return EPM_OK;
fail:
  epm_st_close(f);
  return st;
}

epm_status_t epm_st_open_mem(const void *data, size_t size, const char *name, epm_st_file_t **out) {
  *out = NULL;
  epm_st_file_t *f = file_new(name);
  if (!f) return epm_error(EPM_ERR_NOMEM, "%s: open", name);
  f->map = data;
  f->size = size;
  epm_status_t st = parse_header(f);
  if (st != EPM_OK) {
    epm_st_close(f);
    return st;
  }
  *out = f;
  return EPM_OK;
}

void epm_st_close(epm_st_file_t *f) {
  if (!f) return;
  if (f->mapped) munmap((void *)f->map, f->size);
  if (f->fd >= 0) close(f->fd);
  for (size_t i = 0; i < 2 * f->nmeta; i++) free(f->meta[i]);
  free(f->meta);
  free(f->t);
  free(f->by_name);
  free(f->names);
  free(f->path);
  free(f);
}

const char *epm_st_path(const epm_st_file_t *f) { return f->path; }
size_t epm_st_file_size(const epm_st_file_t *f) { return f->size; }
size_t epm_st_count(const epm_st_file_t *f) { return f->nt; }
const epm_st_tensor_t *epm_st_at(const epm_st_file_t *f, size_t i) {
  return i < f->nt ? &f->t[i] : NULL;
}

const epm_st_tensor_t *epm_st_find(const epm_st_file_t *f, const char *name) {
  size_t lo = 0, hi = f->nt;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, f->by_name[mid]->name);
    if (c == 0) return f->by_name[mid];
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

epm_status_t epm_st_expect(const epm_st_file_t *f, const char *name, epm_st_dtype_t dtype, int ndim,
                           const int64_t *shape, const epm_st_tensor_t **out) {
  const epm_st_tensor_t *t = epm_st_find(f, name);
  char a[160], b[160];
  if (!t) return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s' is missing", f->path, name);
  int same = t->dtype == dtype && t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
  if (!same)
    return epm_error(EPM_ERR_FORMAT, "%s: tensor '%s' is %s %s, expected %s %s", f->path, name,
                     epm_st_dtype_name(t->dtype), epm_st_shape_str(t->ndim, t->shape, a, sizeof a),
                     epm_st_dtype_name(dtype), epm_st_shape_str(ndim, shape, b, sizeof b));
  *out = t;
  return EPM_OK;
}

epm_status_t epm_st_read(const epm_st_file_t *f, const epm_st_tensor_t *t, void *dst) {
  size_t done = 0;
  if (f->fd < 0) {
    if (t->nbytes) memcpy(dst, t->data, t->nbytes);
    return EPM_OK;
  }
  while (done < t->nbytes) {
    ssize_t n = pread(f->fd, (char *)dst + done, t->nbytes - done, (off_t)(t->file_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return epm_error(EPM_ERR_IO, "%s: tensor '%s': read %zu of %zu bytes at offset %llu: %s", f->path, t->name,
                       done, t->nbytes, (unsigned long long)(t->file_offset + done),
                       n < 0 ? strerror(errno) : "file shrank since it was opened");
    done += (size_t)n;
  }
  return EPM_OK;
}

const char *epm_st_metadata(const epm_st_file_t *f, const char *key) {
  for (size_t i = 0; i < f->nmeta; i++)
    if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
  return NULL;
}
