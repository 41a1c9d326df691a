/* SPDX-License-Identifier: Apache-2.0 */
/* placement_json.c — placement maps as JSON files (epmoe/placement.h,
 * docs/PLACEMENT.md). Reading validates everything a hand-edited file can get
 * wrong and names the entry; writing puts one rank per line so a diff of two
 * maps reads rank by rank. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/placement.h"

#define FORMAT_NAME "epmoe-placement"
#define FORMAT_VERSION 1
/* A map file is small (a few bytes per slot); refuse anything absurd. */
#define MAX_FILE_BYTES (INT64_C(64) << 20)

static epm_status_t get_int(const char *what, json_t *root, const char *key, int required, int64_t lo, int64_t hi,
                            int64_t *out) {
  json_t *v = json_object_get(root, key);
  if (!v) {
    if (required) return epm_error(EPM_ERR_FORMAT, "%s: \"%s\" is missing", what, key);
    return EPM_OK;
  }
  if (!json_is_integer(v)) return epm_error(EPM_ERR_FORMAT, "%s: \"%s\" must be an integer", what, key);
  const int64_t x = (int64_t)json_integer_value(v);
  if (x < lo || x > hi)
    return epm_error(EPM_ERR_FORMAT, "%s: \"%s\" = %lld is outside [%lld, %lld]", what, key, (long long)x,
                     (long long)lo, (long long)hi);
  *out = x;
  return EPM_OK;
}

static epm_status_t from_root(json_t *root, const char *what, epm_placement_t *out) {
  if (!json_is_object(root)) return epm_error(EPM_ERR_FORMAT, "%s: the top level must be a JSON object", what);
  json_t *fmt = json_object_get(root, "format");
  if (!json_is_string(fmt) || strcmp(json_string_value(fmt), FORMAT_NAME) != 0)
    return epm_error(EPM_ERR_FORMAT, "%s: \"format\" must be \"%s\"", what, FORMAT_NAME);
  int64_t version = 0, E = 0, P = 0, R = -1;
  EPM_TRY(get_int(what, root, "version", 1, 1, INT64_MAX, &version));
  if (version != FORMAT_VERSION)
    return epm_error(EPM_ERR_FORMAT, "%s: version %lld; this build reads version %d", what, (long long)version,
                     FORMAT_VERSION);
  EPM_TRY(get_int(what, root, "num_experts", 1, 1, EPM_PLACEMENT_MAX_SLOTS, &E));
  EPM_TRY(get_int(what, root, "ep_size", 1, 1, EPM_PLACEMENT_MAX_SLOTS, &P));
  EPM_TRY(get_int(what, root, "redundant_experts", 0, 0, EPM_PLACEMENT_MAX_SLOTS, &R));
  json_t *ranks = json_object_get(root, "ranks");
  if (!json_is_array(ranks)) return epm_error(EPM_ERR_FORMAT, "%s: \"ranks\" must be an array of %lld arrays", what, (long long)P);
  if ((int64_t)json_array_size(ranks) != P)
    return epm_error(EPM_ERR_FORMAT, "%s: \"ranks\" has %zu entries but \"ep_size\" is %lld", what,
                     json_array_size(ranks), (long long)P);
  int64_t S = 0;
  for (size_t r = 0; r < (size_t)P; r++) {
    json_t *rk = json_array_get(ranks, r);
    if (!json_is_array(rk)) return epm_error(EPM_ERR_FORMAT, "%s: ranks[%zu] must be an array of expert ids", what, r);
    if (json_array_size(rk) == 0)
      return epm_error(EPM_ERR_FORMAT, "%s: ranks[%zu] is empty; every rank needs at least one slot", what, r);
    S += (int64_t)json_array_size(rk);
    if (S > EPM_PLACEMENT_MAX_SLOTS)
      return epm_error(EPM_ERR_FORMAT, "%s: more than %lld slots", what, (long long)EPM_PLACEMENT_MAX_SLOTS);
  }
  if (R >= 0 && S != E + R)
    return epm_error(EPM_ERR_FORMAT, "%s: %lld slots in \"ranks\" but num_experts %lld + redundant_experts %lld = %lld",
                     what, (long long)S, (long long)E, (long long)R, (long long)(E + R));
  int64_t *per = malloc((size_t)P * sizeof *per);
  int32_t *se = malloc((size_t)S * sizeof *se);
  epm_status_t st = EPM_OK;
  if (!per || !se) {
    st = epm_error(EPM_ERR_NOMEM, "%s: %lld slots", what, (long long)S);
    goto out;
  }
  int64_t s = 0;
  for (size_t r = 0; r < (size_t)P; r++) {
    json_t *rk = json_array_get(ranks, r);
    per[r] = (int64_t)json_array_size(rk);
    for (size_t j = 0; j < json_array_size(rk); j++) {
      json_t *v = json_array_get(rk, j);
      const json_int_t x = json_is_integer(v) ? json_integer_value(v) : -1;
      if (!json_is_integer(v) || x < 0 || x >= E) {
        st = epm_error(EPM_ERR_FORMAT, "%s: ranks[%zu][%zu] must be an expert id in [0, num_experts %lld)", what, r, j,
                       (long long)E);
        goto out;
      }
      se[s++] = (int32_t)x;
    }
  }
  st = epm_placement_from_slots(E, P, per, se, out);
  if (st != EPM_OK) st = epm_error_wrap(EPM_ERR_FORMAT, "%s", what);
out:
  free(per);
  free(se);
  return st;
}

epm_status_t epm_placement_from_json(const char *text, size_t len, const char *what, epm_placement_t *out) {
  if (!text || !out) return epm_error(EPM_ERR_INVALID_ARG, "placement JSON: NULL argument");
  if (!what) what = "placement";
  json_error_t err;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
  if (!root) return epm_error(EPM_ERR_FORMAT, "%s: line %d column %d: %s", what, err.line, err.column, err.text);
  epm_status_t st = from_root(root, what, out);
  json_decref(root);
  return st;
}

epm_status_t epm_placement_load_file(const char *path, epm_placement_t *out) {
  if (!path) return epm_error(EPM_ERR_INVALID_ARG, "placement file: NULL path");
  FILE *f = fopen(path, "rb");
  if (!f) return epm_error(EPM_ERR_IO, "placement file %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t len = 0, cap = 0;
  epm_status_t st = EPM_OK;
  for (;;) {
    if (len == cap) {
      cap = cap ? 2 * cap : 4096;
      if ((int64_t)cap > MAX_FILE_BYTES) {
        st = epm_error(EPM_ERR_FORMAT, "placement file %s is larger than %lld bytes", path, (long long)MAX_FILE_BYTES);
        break;
      }
      char *nb = realloc(buf, cap);
      if (!nb) {
        st = epm_error(EPM_ERR_NOMEM, "placement file %s: %zu bytes", path, cap);
        break;
      }
      buf = nb;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) {
      if (ferror(f)) st = epm_error(EPM_ERR_IO, "placement file %s: read error", path);
      break;
    }
  }
  fclose(f);
  if (st == EPM_OK) st = epm_placement_from_json(buf, len, path, out);
  free(buf);
  return st;
}

/* Hand-formatted so each rank is one line (json_dumps puts every number on
 * its own line or everything on one). */
epm_status_t epm_placement_to_json(const epm_placement_t *p, const double *load, char **text) {
  if (!p || !text || !p->rank_start) return epm_error(EPM_ERR_INVALID_ARG, "placement JSON: NULL argument");
  double imb = 1.0;
  if (load) EPM_TRY(epm_placement_imbalance(p, load, &imb, NULL, NULL));
  /* Upper bound: 12 bytes per slot or load value, plus the fixed text. */
  size_t cap = 512 + (size_t)p->ep_size * 16 + (size_t)p->num_slots * 12 + (load ? (size_t)p->num_experts * 26 : 0);
  char *s = malloc(cap);
  if (!s) return epm_error(EPM_ERR_NOMEM, "placement JSON of %lld slots", (long long)p->num_slots);
  size_t n = 0;
#define PUT(...) n += (size_t)snprintf(s + n, cap - n, __VA_ARGS__)
  PUT("{\n  \"format\": \"%s\",\n  \"version\": %d,\n  \"num_experts\": %lld,\n  \"ep_size\": %lld,\n"
      "  \"redundant_experts\": %lld,\n  \"ranks\": [\n",
      FORMAT_NAME, FORMAT_VERSION, (long long)p->num_experts, (long long)p->ep_size,
      (long long)(p->num_slots - p->num_experts));
  for (int64_t r = 0; r < p->ep_size; r++) {
    PUT("    [");
    for (int64_t i = p->rank_start[r]; i < p->rank_start[r + 1]; i++)
      PUT("%s%d", i > p->rank_start[r] ? ", " : "", p->slot_expert[i]);
    PUT("]%s\n", r + 1 < p->ep_size ? "," : "");
  }
  PUT("  ]");
  if (load) {
    PUT(",\n  \"imbalance\": %.6g,\n  \"load\": [", imb);
    for (int64_t e = 0; e < p->num_experts; e++) PUT("%s%.17g", e ? ", " : "", load[e]);
    PUT("]");
  }
  PUT("\n}\n");
#undef PUT
  *text = s;
  return EPM_OK;
}

epm_status_t epm_placement_save_file(const epm_placement_t *p, const double *load, const char *path) {
  char *text = NULL;
  EPM_TRY(epm_placement_to_json(p, load, &text));
  FILE *f = fopen(path, "w");
  epm_status_t st = EPM_OK;
  if (!f) {
    st = epm_error(EPM_ERR_IO, "placement file %s: %s", path, strerror(errno));
  } else {
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad) st = epm_error(EPM_ERR_IO, "placement file %s: write failed", path);
  }
  free(text);
  return st;
}
