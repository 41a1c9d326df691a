/* SPDX-License-Identifier: Apache-2.0 */
/* safetensors_write.c — streaming safetensors writer: the header (all
 * offsets known up front) then the tensors' bytes in order, so a checkpoint
 * of many GB is written without holding it in memory. The header is padded
 * with spaces to a multiple of 8 bytes, as the reference writer does, so the
 * data section starts aligned. */
#define _GNU_SOURCE
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/checked.h"
#include "epmoe/safetensors.h"

struct epm_st_writer {
  char *path;
  FILE *fp;
  size_t n, next;
  size_t *nbytes;
  char **names;
};

static epm_status_t build_header(const char *path, const epm_st_spec_t *specs, size_t n,
                                 const char *const *metadata, size_t nmeta, size_t *nbytes,
                                 char **out) {
  json_t *root = json_object();
  epm_status_t st = EPM_OK;
  size_t at = 0;
  if (!root) return epm_error(EPM_ERR_NOMEM, "%s: header", path);
  if (nmeta) {
    json_t *m = json_object();
    for (size_t i = 0; m && i < nmeta; i++)
      json_object_set_new(m, metadata[2 * i], json_string(metadata[2 * i + 1]));
    json_object_set_new(root, "__metadata__", m);
  }
  for (size_t i = 0; i < n; i++) {
    EPM_TRY_GOTO(epm_st_spec_nbytes(&specs[i], &nbytes[i]), st, out);
    if (json_object_get(root, specs[i].name)) {
      st = epm_error(EPM_ERR_INVALID_ARG, "%s: duplicate tensor name '%s'", path, specs[i].name);
      goto out;
    }
    json_t *shape = json_array();
    for (int d = 0; d < specs[i].ndim; d++) json_array_append_new(shape, json_integer(specs[i].shape[d]));
    size_t end;
    if (epm_add_size(at, nbytes[i], &end)) {
      st = epm_error(EPM_ERR_OVERFLOW, "%s: data section overflows size_t at '%s'", path, specs[i].name);
      goto out;
    }
    json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", epm_st_dtype_name(specs[i].dtype), "shape",
                          shape, "data_offsets", (json_int_t)at, (json_int_t)end);
    if (!e || json_object_set_new(root, specs[i].name, e) != 0) {
      st = epm_error(EPM_ERR_NOMEM, "%s: header entry '%s'", path, specs[i].name);
      goto out;
    }
    at = end;
  }
  *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!*out) st = epm_error(EPM_ERR_NOMEM, "%s: header text", path);
out:
  json_decref(root);
  return st;
}

epm_status_t epm_st_writer_open(const char *path, const epm_st_spec_t *specs, size_t n,
                                const char *const *metadata, size_t nmeta, epm_st_writer_t **out) {
  *out = NULL;
  epm_st_writer_t *w = calloc(1, sizeof *w);
  char *hdr = NULL;
  epm_status_t st = EPM_OK;
  if (!w || !(w->path = strdup(path)) || !(w->nbytes = calloc(n + 1, sizeof *w->nbytes)) ||
      !(w->names = calloc(n + 1, sizeof *w->names))) {
    st = epm_error(EPM_ERR_NOMEM, "%s: writer for %zu tensors", path, n);
    goto fail;
  }
  w->n = n;
  for (size_t i = 0; i < n; i++)
    if (!(w->names[i] = strdup(specs[i].name))) {
      st = epm_error(EPM_ERR_NOMEM, "%s: writer names", path);
      goto fail;
    }
  EPM_TRY_GOTO(build_header(path, specs, n, metadata, nmeta, w->nbytes, &hdr), st, fail);
  size_t len = strlen(hdr), padded = (len + 7) / 8 * 8;
  if (padded > EPM_ST_MAX_HEADER) {
    st = epm_error(EPM_ERR_OVERFLOW, "%s: header of %zu bytes exceeds the limit %llu", path, padded,
                   (unsigned long long)EPM_ST_MAX_HEADER);
    goto fail;
  }
  w->fp = fopen(path, "wb");
  if (!w->fp) {
    st = epm_error(EPM_ERR_IO, "%s: create: %s", path, strerror(errno));
    goto fail;
  }
  setvbuf(w->fp, NULL, _IOFBF, 1 << 20);
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  if (fwrite(le, 1, 8, w->fp) != 8 || fwrite(hdr, 1, len, w->fp) != len) {
    st = epm_error(EPM_ERR_IO, "%s: write header: %s", path, strerror(errno));
    goto fail;
  }
  for (size_t i = len; i < padded; i++) fputc(' ', w->fp);
  free(hdr);
  *out = w;
  return EPM_OK;
fail:
  free(hdr);
  epm_st_writer_abort(w);
  return st;
}

epm_status_t epm_st_writer_put(epm_st_writer_t *w, const void *data, size_t nbytes) {
  if (w->next >= w->n)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: all %zu tensors already written", w->path, w->n);
  if (nbytes != w->nbytes[w->next])
    return epm_error(EPM_ERR_INVALID_ARG, "%s: tensor '%s' given %zu bytes, header says %zu", w->path,
                     w->names[w->next], nbytes, w->nbytes[w->next]);
  if (nbytes && fwrite(data, 1, nbytes, w->fp) != nbytes)
    return epm_error(EPM_ERR_IO, "%s: write '%s' (%zu bytes): %s", w->path, w->names[w->next], nbytes,
                     strerror(errno));
  w->next++;
  return EPM_OK;
}

static void writer_free(epm_st_writer_t *w) {
  for (size_t i = 0; w->names && i < w->n; i++) free(w->names[i]);
  free(w->names);
  free(w->nbytes);
  free(w->path);
  free(w);
}

epm_status_t epm_st_writer_close(epm_st_writer_t *w) {
  epm_status_t st = EPM_OK;
  if (w->next != w->n) {
    st = epm_error(EPM_ERR_INVALID_ARG, "%s: closed after %zu of %zu tensors", w->path, w->next, w->n);
    epm_st_writer_abort(w);
    return st;
  }
  if (fclose(w->fp) != 0) {
    st = epm_error(EPM_ERR_IO, "%s: close: %s", w->path, strerror(errno));
    unlink(w->path);
    writer_free(w);
    return st;
  }
  writer_free(w);
  return EPM_OK;
}

void epm_st_writer_abort(epm_st_writer_t *w) {
  if (!w) return;
  if (w->fp) {
    fclose(w->fp);
    unlink(w->path);
  }
  writer_free(w);
}
