/* srv_config.c — epmoed's settings: ONE declarative table drives defaults,
 * EPMOE_* environment variables, --flags (flag wins over env), range checks,
 * --help and the config section of STATUS. Parsing is strict: integers need
 * an end-pointer check and a range check, unknown flags are refused, and a bad
 * value is a one-line error naming the flag, the value and the limit. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/dispatch.h"
#include "epmoe/log.h"
#include "srv.h"

typedef enum { T_STR, T_I64, T_SIZE } ctype_t;

typedef struct {
  const char *name; /* flag "--name", env "EPMOE_NAME" (dashes -> underscores) */
  ctype_t type;
  size_t off, cap;  /* cap: bytes of a string field */
  const char *def;
  int64_t min, max;
  const char *choices; /* "a|b|c" for enumerated strings, NULL otherwise */
  const char *help;
} opt_t;

#define F(field) offsetof(srv_config_t, field), sizeof(((srv_config_t *)0)->field)

static const opt_t opts[] = {
    {"model", T_STR, F(model), "", 0, 0, NULL, "checkpoint directory (NVFP4 safetensors); overrides --preset"},
    {"preset", T_STR, F(preset), "tiny", 0, 0, NULL, "model preset: tiny, deepseek-r1, qwen3-235b, llama4-maverick, or mix (a stand-in step for tests)"},
    {"seed", T_I64, F(seed), "1", 0, INT64_MAX, NULL, "seed of the generated preset weights"},
    {"layers", T_I64, F(layers), "1", 0, 4096, NULL, "MoE layers served: preset layers 0..N-1, or a checkpoint's first N (0 = all)"},
    {"backend", T_STR, F(backend), "auto", 0, 0, "cpu|cuda|auto", "where the experts run (auto: cuda when a GPU is visible)"},
    {"socket-dir", T_STR, F(socket_dir), "", 0, 0, NULL, "directory of epmoe.<rank>.sock (default $XDG_RUNTIME_DIR/epmoe or /run/epmoe)"},
    {"max-tokens-per-rank", T_I64, F(max_tokens_per_rank), "4096", 1, (int64_t)1 << 24, NULL, "largest m_r one FORWARD may carry"},
    {"log-level", T_STR, F(log_level), "info", 0, 0, "error|warn|info|debug", "log verbosity"},
    {"step-timeout", T_I64, F(step_timeout_s), "30", 1, 86400, NULL, "seconds a step may wait for all ranks / run before it fails"},
    {"metrics-port", T_I64, F(metrics_port), "0", 0, 65535, NULL, "serve Prometheus /metrics on 127.0.0.1:PORT (0 = off)"},
    {"max-frame", T_SIZE, F(max_frame), "1G", 4096, (int64_t)1 << 40, NULL, "largest frame payload accepted (K/M/G suffixes)"},
    {"allowed-group", T_STR, F(allowed_group), "", 0, 0, NULL, "group (name or gid) whose members may connect besides our uid"},
    {"max-connections", T_I64, F(max_connections), "64", 1, 4096, NULL, "simultaneous client connections"},
    {"warmup-tokens", T_I64, F(warmup_tokens), "4", 0, 1 << 20, NULL, "tokens per rank of the start-up warm-up step"},
    {"step-delay-ms", T_I64, F(step_delay_ms), "0", 0, 600000, NULL, "testing: sleep this long inside every step"},
    {"dispatch", T_STR, F(dispatch), "allgather", 0, 0, "allgather|alltoall|auto", "how tokens reach the experts (auto: per step, by the cost terms below)"},
    {"recv-capacity", T_I64, F(recv_capacity), "0", 0, (int64_t)1 << 40, NULL, "alltoall: most token rows a rank receives per step (0 = any routing fits)"},
    {"dispatch-latency-us", T_STR, F(dispatch_latency_us), "", 0, 0, NULL, "auto: fixed cost per step ALLGATHER,ALLTOALL in us (epmoectl step --calibrate-dispatch)"},
    {"dispatch-gbps", T_STR, F(dispatch_gbps), "", 0, 0, NULL, "auto: bandwidth ALLGATHER,ALLTOALL in GB/s (from the same calibration)"},
};
#define NOPTS (sizeof opts / sizeof opts[0])
_Static_assert(NOPTS <= sizeof(((srv_config_t *)0)->src), "src[] too small");

static const char *src_name[] = {"default", "environment", "flag"};

static int parse_i64(const char *s, int size_suffix, int64_t *out) {
  char *end = NULL;
  long long v;
  int64_t mul = 1;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno || end == s) return 1;
  if (size_suffix && *end && end[1] == '\0') {
    switch (*end) {
      case 'K': case 'k': mul = (int64_t)1 << 10; end++; break;
      case 'M': case 'm': mul = (int64_t)1 << 20; end++; break;
      case 'G': case 'g': mul = (int64_t)1 << 30; end++; break;
      default: break;
    }
  }
  if (*end != '\0' || __builtin_mul_overflow((int64_t)v, mul, out)) return 1;
  return 0;
}

static int in_choices(const char *choices, const char *v) {
  size_t n = strlen(v);
  for (const char *p = choices; p && *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, v, n) == 0) return 1;
    p = bar ? bar + 1 : p + len;
  }
  return 0;
}

/* Store value into the field of row o; print one line and return 2 on error. */
static int set(srv_config_t *c, const opt_t *o, const char *val, const char *from) {
  char *base = (char *)c + o->off;
  if (o->type == T_STR) {
    if (strlen(val) >= o->cap) {
      fprintf(stderr, "epmoed: bad value for --%s (%s): %zu characters, the limit is %zu\n", o->name,
              from, strlen(val), o->cap - 1);
      return 2;
    }
    if (o->choices && !in_choices(o->choices, val)) {
      fprintf(stderr, "epmoed: bad value for --%s (%s): '%s' is not one of %s\n", o->name, from, val,
              o->choices);
      return 2;
    }
    memcpy(base, val, strlen(val) + 1);
    return 0;
  }
  int64_t v;
  if (parse_i64(val, o->type == T_SIZE, &v)) {
    fprintf(stderr, "epmoed: bad value for --%s (%s): '%s' is not an integer%s\n", o->name, from, val,
            o->type == T_SIZE ? " (K/M/G suffix allowed)" : "");
    return 2;
  }
  if (v < o->min || v > o->max) {
    fprintf(stderr, "epmoed: bad value for --%s (%s): %lld is outside [%lld, %lld]\n", o->name, from,
            (long long)v, (long long)o->min, (long long)o->max);
    return 2;
  }
  memcpy(base, &v, sizeof v);
  return 0;
}

static void env_name(const opt_t *o, char *out, size_t n) {
  size_t k = (size_t)snprintf(out, n, "EPMOE_");
  for (const char *p = o->name; *p && k + 1 < n; p++) out[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  out[k] = '\0';
}

static void usage(void) {
  char env[64];
  printf("usage: mpirun -np N epmoed [--preset NAME --seed N | --model DIR] [options]\n\n"
         "One daemon per rank; serves FORWARD steps on DIR/epmoe.<rank>.sock.\n"
         "Every option also reads an environment variable; the flag wins.\n\noptions:\n");
  for (size_t i = 0; i < NOPTS; i++) {
    env_name(&opts[i], env, sizeof env);
    printf("  --%-21s %s\n  %-23s default '%s'%s%s, env %s\n", opts[i].name, opts[i].help, "",
           opts[i].def, opts[i].choices ? ", one of " : "", opts[i].choices ? opts[i].choices : "", env);
  }
  printf("  --help                  this text\n");
}

int srv_config_load(srv_config_t *c, int argc, char **argv) {
  char env[64];
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < NOPTS; i++)
    if (set(c, &opts[i], opts[i].def, "default")) return 2;
  for (size_t i = 0; i < NOPTS; i++) {
    const char *v;
    env_name(&opts[i], env, sizeof env);
    if ((v = getenv(env)) != NULL) {
      if (set(c, &opts[i], v, env)) return 2;
      c->src[i] = 1;
    }
  }
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a], *val = NULL;
    size_t nlen;
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage();
      return 1;
    }
    if (strncmp(arg, "--", 2) != 0) {
      fprintf(stderr, "epmoed: unexpected argument '%s' (see --help)\n", arg);
      return 2;
    }
    arg += 2;
    const char *eq = strchr(arg, '=');
    nlen = eq ? (size_t)(eq - arg) : strlen(arg);
    const opt_t *o = NULL;
    size_t idx = 0;
    for (size_t i = 0; i < NOPTS; i++)
      if (strlen(opts[i].name) == nlen && strncmp(opts[i].name, arg, nlen) == 0) o = &opts[i], idx = i;
    if (!o) {
      fprintf(stderr, "epmoed: unknown flag '--%.*s' (see --help)\n", (int)nlen, arg);
      return 2;
    }
    if (eq) val = eq + 1;
    else if (a + 1 < argc) val = argv[++a];
    else {
      fprintf(stderr, "epmoed: --%s needs a value\n", o->name);
      return 2;
    }
    if (set(c, o, val, "flag")) return 2;
    c->src[idx] = 2;
  }
  epm_dispatch_cost_t dc; /* a typo in the cost terms stops the start, not the first step */
  epm_dispatch_cost_default(&dc);
  if (epm_dispatch_cost_parse(c->dispatch_latency_us, c->dispatch_gbps, &dc) != EPM_OK) {
    fprintf(stderr, "epmoed: %s\n", epm_last_error());
    return 2;
  }
  if (c->socket_dir[0] == '\0') {
    const char *x = getenv("XDG_RUNTIME_DIR");
    int n = x && *x ? snprintf(c->socket_dir, sizeof c->socket_dir, "%s/epmoe", x)
                    : snprintf(c->socket_dir, sizeof c->socket_dir, "/run/epmoe");
    if (n < 0 || (size_t)n >= sizeof c->socket_dir) {
      fprintf(stderr, "epmoed: $XDG_RUNTIME_DIR is too long for a socket path; pass --socket-dir\n");
      return 2;
    }
  }
  return 0;
}

static void json_str(epm_buf_t *b, const char *s) {
  epm_buf_put(b, "\"", 1);
  for (; *s; s++) {
    char esc[8];
    if (*s == '"' || *s == '\\') snprintf(esc, sizeof esc, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*s);
    else esc[0] = *s, esc[1] = '\0';
    epm_buf_put(b, esc, strlen(esc));
  }
  epm_buf_put(b, "\"", 1);
}

void srv_config_log(const srv_config_t *c) {
  for (size_t i = 0; i < NOPTS; i++) {
    const opt_t *o = &opts[i];
    const char *base = (const char *)c + o->off;
    int64_t v;
    char env[64];
    if (!c->src[i]) continue;
    env_name(o, env, sizeof env);
    if (o->type == T_STR) {
      EPM_LOG(EPM_LOG_INFO, "config", "--%s=%s (set by %s%s%s)", o->name, base, src_name[c->src[i]],
              c->src[i] == 1 ? " " : "", c->src[i] == 1 ? env : "");
    } else {
      memcpy(&v, base, sizeof v);
      EPM_LOG(EPM_LOG_INFO, "config", "--%s=%lld (set by %s%s%s)", o->name, (long long)v, src_name[c->src[i]],
              c->src[i] == 1 ? " " : "", c->src[i] == 1 ? env : "");
    }
  }
}

void srv_config_dump(const srv_config_t *c, epm_buf_t *b, int json) {
  char line[700];
  for (size_t i = 0; i < NOPTS; i++) {
    const opt_t *o = &opts[i];
    const char *base = (const char *)c + o->off;
    char val[600];
    if (o->type == T_STR) snprintf(val, sizeof val, "%s", base);
    else {
      int64_t v;
      memcpy(&v, base, sizeof v);
      snprintf(val, sizeof val, "%lld", (long long)v);
    }
    if (json) {
      snprintf(line, sizeof line, "%s\"%s\":{\"value\":", i ? "," : "", o->name);
      epm_buf_put(b, line, strlen(line));
      if (o->type == T_STR) json_str(b, val);
      else epm_buf_put(b, val, strlen(val));
      snprintf(line, sizeof line, ",\"source\":\"%s\"}", src_name[c->src[i]]);
    } else {
      snprintf(line, sizeof line, "config_%s:%s\r\n", o->name, val);
      for (char *p = line + 7; *p && *p != ':'; p++)
        if (*p == '-') *p = '_';
    }
    epm_buf_put(b, line, strlen(line));
  }
}
