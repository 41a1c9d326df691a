/* ctl_common.c — socket selection and input generation shared by the
 * daemon-facing epmoectl subcommands (status, stats, health, forward, bench,
 * shutdown). */
#include "ctl_common.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

const char ctl_target_help[] =
    "  --socket-dir DIR  daemon sockets (default $EPMOE_SOCKET_DIR, $XDG_RUNTIME_DIR/epmoe or /run/epmoe)\n"
    "  --rank R          only rank R's daemon      --all  every epmoe.<rank>.sock in DIR (default)\n"
    "  --timeout MS      per-call timeout in milliseconds\n";

void ctl_target_defaults(ctl_target_opts_t *o, int timeout_ms) {
  const char *d = getenv("EPMOE_SOCKET_DIR"), *x = getenv("XDG_RUNTIME_DIR");
  if (d && *d) snprintf(o->socket_dir, sizeof o->socket_dir, "%s", d);
  else if (x && *x) snprintf(o->socket_dir, sizeof o->socket_dir, "%s/epmoe", x);
  else snprintf(o->socket_dir, sizeof o->socket_dir, "/run/epmoe");
  o->rank = -1;
  o->timeout_ms = timeout_ms;
}

int ctl_target_opt(ctl_target_opts_t *o, int argc, char **argv, int *i, const char *cmd) {
  const char *a = argv[*i];
  long long v;
  if (strcmp(a, "--all") == 0) {
    o->rank = -1;
    return 1;
  }
  if (strcmp(a, "--socket-dir") && strcmp(a, "--rank") && strcmp(a, "--timeout")) return 0;
  if (*i + 1 >= argc) {
    fprintf(stderr, "epmoectl %s: %s needs a value\n", cmd, a);
    return 2;
  }
  const char *val = argv[++*i];
  if (strcmp(a, "--socket-dir") == 0) {
    if (strlen(val) >= sizeof o->socket_dir) {
      fprintf(stderr, "epmoectl %s: --socket-dir is longer than %zu bytes\n", cmd, sizeof o->socket_dir - 1);
      return 2;
    }
    snprintf(o->socket_dir, sizeof o->socket_dir, "%s", val);
    return 1;
  }
  if (strcmp(a, "--rank") == 0) {
    if (epm_ctl_parse_i64("--rank", val, 0, 1 << 20, &v)) return 2;
    o->rank = (int)v;
    return 1;
  }
  if (epm_ctl_parse_i64("--timeout", val, 1, 86400000, &v)) return 2;
  o->timeout_ms = (int)v;
  return 1;
}

static int cmp_sock(const void *a, const void *b) {
  return ((const ctl_sock_t *)a)->rank - ((const ctl_sock_t *)b)->rank;
}

int ctl_find_sockets(const ctl_target_opts_t *o, ctl_sock_t **out) {
  ctl_sock_t *v = NULL;
  int n = 0, cap = 0;
  if (o->rank >= 0) {
    v = calloc(1, sizeof *v);
    if (!v) return -1;
    v->rank = o->rank;
    snprintf(v->path, sizeof v->path, "%s/epmoe.%d.sock", o->socket_dir, o->rank);
    *out = v;
    return 1;
  }
  DIR *d = opendir(o->socket_dir);
  if (!d) {
    fprintf(stderr, "epmoectl: cannot open socket dir %s (is epmoed running? see --socket-dir)\n", o->socket_dir);
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
    snprintf(v[n].path, sizeof v[n].path, "%s/%s", o->socket_dir, e->d_name);
    n++;
  }
  closedir(d);
  if (n == 0) {
    fprintf(stderr, "epmoectl: no epmoe.<rank>.sock in %s (is epmoed running? see --socket-dir)\n", o->socket_dir);
    free(v);
    return -1;
  }
  qsort(v, (size_t)n, sizeof *v, cmp_sock);
  *out = v;
  return n;
}

int ctl_parse_counts(const char *flag, const char *s, int64_t **out) {
  int n = 1;
  for (const char *p = s; *p; p++) n += *p == ',';
  int64_t *v = calloc((size_t)n, sizeof *v);
  char tok[32];
  if (!v) return -1;
  for (int i = 0; i < n; i++) {
    const char *end = strchr(s, ',');
    size_t len = end ? (size_t)(end - s) : strlen(s);
    long long x;
    if (len >= sizeof tok) len = sizeof tok - 1;
    memcpy(tok, s, len);
    tok[len] = '\0';
    if (epm_ctl_parse_i64(flag, tok, 0, (long long)1 << 30, &x)) {
      free(v);
      return -1;
    }
    v[i] = x;
    s = end ? end + 1 : s + len;
  }
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
  float f = gauss(mix64(seed ^ mix64((uint64_t)t * 0x100000001B3ull + (uint64_t)j)));
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float ctl_rand_logit(uint64_t seed, int64_t t, int64_t j) {
  return gauss(mix64(~seed ^ mix64((uint64_t)t * 0xC2B2AE3D27D4EB4Full + (uint64_t)j)));
}

double ctl_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ctl_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
