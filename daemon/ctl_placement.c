/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_placement.c — `epmoectl placement`: a balanced expert placement map
 * from observed per-expert loads (epmoe/placement.h, docs/PLACEMENT.md).
 *
 * The load comes from the daemons' STATS (every rank counts the experts its
 * own tokens were routed to; the sum over ranks is each expert's load), read
 * live through their sockets or from a file of saved STATS JSON. The map is
 * written as JSON for `epmoed --placement FILE`; a summary compares its
 * expected per-rank load imbalance (max / mean) with the default split's.
 * Exit: 0 written, 1 no load could be read or the map could not be written,
 * 64 usage error. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"
#include "epmoe/placement.h"

typedef struct {
  const char *from_stats; /* FILE, or NULL: ask the daemons */
  const char *out;        /* FILE, or NULL: the map on stdout */
  long long ep, redundant;
} place_opts_t;

#define AT(field) EPM_OPT_AT(place_opts_t, field)

static const epm_opt_t place_opts[] = {
    {.name = "from-stats", .kind = EPM_OPT_STR, AT(from_stats), .arg = "FILE",
     .help = "read the load from FILE: `epmoectl stats --json` output (one\n"
             "object per rank, concatenated), a JSON array of such objects,\n"
             "a placement file with \"load\", or a JSON array of numbers;\n"
             "default: ask the running daemons (daemon selection below)"},
    {.name = "ep", .kind = EPM_OPT_INT64, AT(ep), .def = "0", .min = 0, .max = 1 << 20, .flags = EPM_OPT_KMG,
     .arg = "P", .help = "ranks of the new map (0: as many as the STATS read)"},
    {.name = "redundant-experts", .kind = EPM_OPT_INT64, AT(redundant), .def = "0", .min = 0, .max = 1 << 16,
     .flags = EPM_OPT_KMG, .arg = "N", .help = "extra slots, given to copies of the hottest experts"},
    {.name = "out", .kind = EPM_OPT_STR, AT(out), .arg = "FILE",
     .help = "write the map here (default: stdout; the summary then goes\nto stderr)"},
};

/* The load vector, summed over every source read. */
typedef struct {
  double *v;
  int64_t n;     /* experts (0 before the first source) */
  int ranks;     /* STATS objects read */
  double tokens; /* sum of v */
} load_t;

static int add_vector(load_t *l, json_t *arr, const char *what) {
  const int64_t n = (int64_t)json_array_size(arr);
  if (n < 1) {
    fprintf(stderr, "epmoectl placement: %s: empty load vector\n", what);
    return -1;
  }
  if (l->n == 0) {
    l->v = calloc((size_t)n, sizeof *l->v);
    if (!l->v) return -1;
    l->n = n;
  } else if (n != l->n) {
    fprintf(stderr, "epmoectl placement: %s: %lld experts, but an earlier source had %lld\n", what, (long long)n,
            (long long)l->n);
    return -1;
  }
  for (int64_t e = 0; e < n; e++) {
    json_t *x = json_array_get(arr, (size_t)e);
    if (!json_is_number(x) || json_number_value(x) < 0) {
      fprintf(stderr, "epmoectl placement: %s: entry %lld is not a number >= 0\n", what, (long long)e);
      return -1;
    }
    l->v[e] += json_number_value(x);
    l->tokens += json_number_value(x);
  }
  return 0;
}

/* One JSON value: a STATS object, a placement file, an array of either, or
 * a plain vector. */
static int add_value(load_t *l, json_t *j, const char *what) {
  if (json_is_array(j)) {
    json_t *first = json_array_get(j, 0);
    if (!first || json_is_number(first)) return add_vector(l, j, what);
    for (size_t i = 0; i < json_array_size(j); i++)
      if (add_value(l, json_array_get(j, i), what)) return -1;
    return 0;
  }
  json_t *ex = json_object_get(j, "experts");
  json_t *tot = ex ? json_object_get(ex, "tokens_total") : NULL;
  if (json_is_array(tot)) {
    l->ranks++;
    return add_vector(l, tot, what);
  }
  json_t *load = json_object_get(j, "load");
  if (json_is_array(load)) return add_vector(l, load, what);
  fprintf(stderr,
          "epmoectl placement: %s: a JSON value with neither \"experts\".\"tokens_total\" (STATS) nor \"load\" "
          "nor a number array\n",
          what);
  return -1;
}

static int read_file(load_t *l, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0, n;
  do {
    if (len + 4096 > cap) {
      cap = cap ? 2 * cap : 65536;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        return -1;
      }
      buf = nb;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
  } while (n > 0);
  fclose(f);
  /* Concatenated JSON values (one per rank, as `stats --json` prints). */
  size_t off = 0;
  int values = 0, rc = 0;
  while (rc == 0) {
    while (off < len && (buf[off] == ' ' || buf[off] == '\n' || buf[off] == '\r' || buf[off] == '\t')) off++;
    if (off >= len) break;
    json_error_t err;
    json_t *j = json_loadb(buf + off, len - off, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, &err);
    if (!j) {
      fprintf(stderr, "epmoectl placement: %s: value %d: %s (line %d)\n", path, values + 1, err.text, err.line);
      rc = -1;
      break;
    }
    off += err.position > 0 ? (size_t)err.position : len - off; /* no progress: stop */
    values++;
    rc = add_value(l, j, path);
    json_decref(j);
  }
  free(buf);
  if (rc == 0 && values == 0) {
    fprintf(stderr, "epmoectl placement: %s holds no JSON value\n", path);
    rc = -1;
  }
  return rc;
}

static int read_daemons(load_t *l, const ctl_target_opts_t *o) {
  ctl_sock_t *socks;
  int n = ctl_find_sockets(o, &socks), rc = 0;
  if (n < 0) return -1;
  for (int i = 0; i < n && rc == 0; i++) {
    epm_client_t *c = NULL;
    char *text = NULL, what[64];
    snprintf(what, sizeof what, "rank %d", socks[i].rank);
    if (epm_client_connect(socks[i].path, o->timeout_ms, &c) != EPM_OK ||
        epm_client_stats(c, EPM_FMT_JSON, &text) != EPM_OK) {
      fprintf(stderr, "epmoectl placement: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = -1;
    } else {
      json_error_t err;
      json_t *j = json_loads(text, 0, &err);
      rc = j ? add_value(l, j, what) : -1;
      if (!j) fprintf(stderr, "epmoectl placement: rank %d: bad STATS JSON: %s\n", socks[i].rank, err.text);
      json_decref(j);
    }
    free(text);
    epm_client_close(c);
  }
  free(socks);
  return rc;
}

int ctl_load_file(const char *path, double **load, int64_t *n, int *ranks) {
  load_t l = {0};
  if (read_file(&l, path) != 0) {
    free(l.v);
    return -1;
  }
  *load = l.v;
  *n = l.n;
  if (ranks) *ranks = l.ranks;
  return 0;
}

int epm_ctl_placement(int argc, char **argv) {
  place_opts_t o = {0};
  ctl_target_opts_t t;
  epm_opt_result_t res;
  ctl_target_defaults(&t, 5000);
  epm_opt_group_t g[] = {{NULL, place_opts, sizeof place_opts / sizeof place_opts[0], &o, NULL},
                         ctl_target_group(&t)};
  epm_opt_cmd_t cmd = {
      .prog = "epmoectl placement",
      .synopsis = "usage: epmoectl placement [--from-stats FILE | --socket-dir DIR] [--ep P] "
                  "[--redundant-experts N] [--out FILE]",
      .about = "Compute a balanced expert placement from observed per-expert loads (DeepSeek EPLB's greedy:\n"
               "the redundant slots copy the hottest experts, then replicas are packed heaviest first onto\n"
               "the least loaded rank). Restart the daemons with `epmoed --placement FILE` to use it.",
      .epilog = "Exit: 0 written, 1 the load could not be read or the map written, 64 usage error.",
      .groups = g,
      .ngroups = 2};
  int rc = epm_ctl_args(&cmd, argc, argv, &res);
  if (rc >= 0) return rc;
  load_t l = {0};
  if ((o.from_stats ? read_file(&l, o.from_stats) : read_daemons(&l, &t)) != 0) {
    free(l.v);
    return 1;
  }
  const int64_t P = o.ep > 0 ? o.ep : l.ranks;
  if (P < 1) {
    free(l.v);
    return epm_ctl_usage(&cmd, "the load came without STATS objects: say how many ranks with --ep P");
  }
  epm_placement_t dflt = EPM_PLACEMENT_INIT, bal = EPM_PLACEMENT_INIT;
  double imb_d = 0, imb_b = 0, mx_d = 0, mx_b = 0, mean = 0;
  epm_status_t st = epm_placement_default(l.n, P, o.redundant, &dflt);
  if (st == EPM_OK) st = epm_placement_balance(l.n, P, o.redundant, l.v, &bal);
  if (st == EPM_OK) st = epm_placement_imbalance(&dflt, l.v, &imb_d, &mx_d, &mean);
  if (st == EPM_OK) st = epm_placement_imbalance(&bal, l.v, &imb_b, &mx_b, NULL);
  if (st != EPM_OK) {
    fprintf(stderr, "epmoectl placement: %s\n", epm_last_error());
    rc = st == EPM_ERR_INVALID_ARG ? EPM_EXIT_USAGE : 1;
  } else {
    FILE *sum = o.out ? stdout : stderr;
    fprintf(sum, "load: %lld experts, %.0f tokens", (long long)l.n, l.tokens);
    if (l.ranks) fprintf(sum, " from %d ranks' STATS", l.ranks);
    fputc('\n', sum);
    fprintf(sum, "default split (%lld slots over %lld ranks): max/mean rank load %.4f (max %.0f, mean %.1f)\n",
            (long long)dflt.num_slots, (long long)P, imb_d, mx_d, mean);
    fprintf(sum, "balanced map  (%lld redundant): max/mean rank load %.4f (max %.0f)\n", (long long)o.redundant,
            imb_b, mx_b);
    if (o.out) {
      st = epm_placement_save_file(&bal, l.v, o.out);
      if (st == EPM_OK) printf("wrote %s\n", o.out);
    } else {
      char *text = NULL;
      st = epm_placement_to_json(&bal, l.v, &text);
      if (st == EPM_OK) fputs(text, stdout);
      free(text);
    }
    if (st != EPM_OK) {
      fprintf(stderr, "epmoectl placement: %s\n", epm_last_error());
      rc = 1;
    } else {
      rc = 0;
    }
  }
  epm_placement_free(&dflt);
  epm_placement_free(&bal);
  free(l.v);
  return rc;
}
