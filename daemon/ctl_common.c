/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_common.c — socket selection and input generation shared by the
 * daemon-facing epmoectl subcommands (status, stats, health, forward, bench,
 * shutdown). */
#include "epmoe/clock.h"
#include "epmoe/bf16.h"
#include "ctl_common.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

static const epm_opt_t target_opts[] = {
    {.name = "socket-dir", .kind = EPM_OPT_STRBUF, EPM_OPT_AT(ctl_target_opts_t, socket_dir), .arg = "DIR",
     .help = "daemon sockets (default $EPMOE_SOCKET_DIR, $XDG_RUNTIME_DIR/epmoe or /run/epmoe)"},
    {.name = "rank", .kind = EPM_OPT_INT64, EPM_OPT_AT(ctl_target_opts_t, rank), .min = 0, .max = 1 << 20,
     .flags = EPM_OPT_KMG, .arg = "R", .help = "only rank R's daemon"},
    {.name = "all", .kind = EPM_OPT_SET, EPM_OPT_AT(ctl_target_opts_t, rank), .value = -1,
     .help = "every epmoe.<rank>.sock in DIR (the default)"},
    {.name = "timeout", .kind = EPM_OPT_INT64, EPM_OPT_AT(ctl_target_opts_t, timeout_ms), .min = 1,
     .max = 86400000, .flags = EPM_OPT_KMG | EPM_OPT_SHOW_INIT, .arg = "MS",
     .help = "per-call timeout in milliseconds"},
    {.name = "expect-uid", .kind = EPM_OPT_INT64, EPM_OPT_AT(ctl_target_opts_t, expect_uid), .min = -1,
     .max = 0x7fffffff, .env = "EPMOE_EXPECT_UID", .arg = "UID",
     .help = "the uid the daemons must run as (checked with SO_PEERCRED before\nanything is sent; default -1: the owner of the socket directory)"},
};

epm_opt_group_t ctl_target_group(ctl_target_opts_t *o) {
  return (epm_opt_group_t){"daemon selection:", target_opts, sizeof target_opts / sizeof target_opts[0], o, NULL};
}

void ctl_target_defaults(ctl_target_opts_t *o, int timeout_ms) {
  const char *d = getenv("EPMOE_SOCKET_DIR"), *x = getenv("XDG_RUNTIME_DIR");
  if (d && *d) snprintf(o->socket_dir, sizeof o->socket_dir, "%s", d);
  else if (x && *x) snprintf(o->socket_dir, sizeof o->socket_dir, "%s/epmoe", x);
  else snprintf(o->socket_dir, sizeof o->socket_dir, "/run/epmoe");
  o->rank = -1;
  o->timeout_ms = timeout_ms;
  o->expect_uid = -1;
}

epm_status_t ctl_connect(const ctl_target_opts_t *o, const char *path, epm_client_t **c) {
  return epm_client_connect_as(path, o->timeout_ms, (long)o->expect_uid, c);
}

static int has_sockets(const char *dir) {
  DIR *d = opendir(dir);
  int found = 0;
  if (!d) return 0;
  for (struct dirent *e; !found && (e = readdir(d)) != NULL;) {
    int r;
    char tail[8];
    found = sscanf(e->d_name, "epmoe.%d.soc%1s", &r, tail) == 2;
  }
  closedir(d);
  return found;
}

/* The directory that holds the sockets: --socket-dir itself, or the
 * daemon's own subdirectory epmoe-<uid> that it makes inside a shared
 * --socket-dir (ours first, then the first other one that holds sockets). */
static void socket_dir(const ctl_target_opts_t *o, char *out, size_t n) {
  snprintf(out, n, "%s", o->socket_dir);
  if (has_sockets(o->socket_dir)) return;
  char sub[300];
  snprintf(sub, sizeof sub, "%s/epmoe-%u", o->socket_dir,
           (unsigned)(o->expect_uid >= 0 ? (uid_t)o->expect_uid : geteuid()));
  if (has_sockets(sub)) {
    snprintf(out, n, "%s", sub);
    return;
  }
  DIR *d = opendir(o->socket_dir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    unsigned u;
    char tail[2];
    if (sscanf(e->d_name, "epmoe-%u%1s", &u, tail) != 1) continue;
    snprintf(sub, sizeof sub, "%s/%s", o->socket_dir, e->d_name);
    if (has_sockets(sub)) {
      snprintf(out, n, "%s", sub);
      break;
    }
  }
  closedir(d);
}

static int cmp_sock(const void *a, const void *b) {
  return ((const ctl_sock_t *)a)->rank - ((const ctl_sock_t *)b)->rank;
}

int ctl_find_sockets(const ctl_target_opts_t *o, ctl_sock_t **out) {
  ctl_sock_t *v = NULL;
  int n = 0, cap = 0;
  char dir[256];
  socket_dir(o, dir, sizeof dir);
  if (o->rank >= 0) {
    v = calloc(1, sizeof *v);
    if (!v) return -1;
    v->rank = o->rank;
    snprintf(v->path, sizeof v->path, "%s/epmoe.%d.sock", dir, o->rank);
    *out = v;
    return 1;
  }
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "epmoectl: cannot open socket dir %s (is epmoed running? see --socket-dir)\n", dir);
    return -1;
  }
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    int r;
    char tail[8];
    if (sscanf(e->d_name, "epmoe.%d.soc%1s", &r, tail) != 2 || r < 0 || strcmp(strrchr(e->d_name, '.'), ".sock")) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      ctl_sock_t *nv = realloc(v, sizeof *v * (size_t)cap);
      if (!nv) break;
      v = nv;
    }
    v[n].rank = r;
    snprintf(v[n].path, sizeof v[n].path, "%s/%s", dir, e->d_name);
    n++;
  }
  closedir(d);
  if (n == 0) {
    fprintf(stderr, "epmoectl: no epmoe.<rank>.sock in %s (is epmoed running? see --socket-dir)\n", dir);
    free(v);
    return -1;
  }
  qsort(v, (size_t)n, sizeof *v, cmp_sock);
  *out = v;
  return n;
}

static uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Approximately N(0,1): sum of four uniforms, rescaled. */
static float gauss(uint64_t h) {
  double s = 0;
  for (int k = 0; k < 4; k++) s += (double)((h >> (16 * k)) & 0xffff) / 65535.0;
  return (float)((s - 2.0) * 1.7320508);
}

uint16_t ctl_rand_x(uint64_t seed, int64_t t, int64_t j) {
  return epm_bf16_from_f32(gauss(mix64(seed ^ mix64((uint64_t)t * 0x100000001B3ull + (uint64_t)j))));
}

float ctl_rand_logit(uint64_t seed, int64_t t, int64_t j) {
  return gauss(mix64(~seed ^ mix64((uint64_t)t * 0xC2B2AE3D27D4EB4Full + (uint64_t)j)));
}


int ctl_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

ctl_json_t *ctl_json_ranks(void) { return json_pack("{s:[]}", "ranks"); }

void ctl_json_rank(ctl_json_t *doc, int rank, ctl_json_t *obj, const char *error) {
  json_t *e = json_pack("{s:i}", "rank", rank);
  if (error) json_object_set_new(e, "error", json_string(error));
  else if (json_is_object(obj)) json_object_update(e, obj); /* a "rank" member of obj is the same number */
  json_decref(obj);
  json_array_append_new(json_object_get(doc, "ranks"), e);
}

void ctl_json_print(ctl_json_t *doc) {
  char *txt = json_dumps(doc, JSON_COMPACT);
  if (txt) printf("%s\n", txt);
  free(txt);
  json_decref(doc);
}
