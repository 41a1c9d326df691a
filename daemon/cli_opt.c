/* SPDX-License-Identifier: Apache-2.0 */
/* cli_opt.c — see cli_opt.h. */
#include "cli_opt.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GROUPS 8 /* groups of one command: its own options plus shared ones */

/* ---- numbers ------------------------------------------------------------ */

/* strtoll/strtoull/strtod skip leading spaces and accept an empty number as
 * 0 with end == s; a command line value must be the number and nothing else. */
static int bad_start(const char *s) { return !s || !*s || isspace((unsigned char)*s); }

typedef enum { SCAN_OK, SCAN_SYNTAX, SCAN_RANGE } scan_t;

/* The one strict integer scan behind both parsers: decimal digits with an
 * optional sign (signed only: strtoull would negate "-1" into 2^64-1), an
 * optional K/M/G suffix (x 1024^k) when kmg, nothing else; SCAN_RANGE when the
 * value does not fit the type. */
static scan_t scan_int(const char *s, int kmg, int is_signed, int64_t *i, uint64_t *u) {
  char *end = NULL;
  long long sv = 0;
  unsigned long long uv = 0;
  if (bad_start(s) || (!is_signed && (s[0] == '-' || s[0] == '+'))) return SCAN_SYNTAX;
  errno = 0;
  if (is_signed) sv = strtoll(s, &end, 10);
  else uv = strtoull(s, &end, 10);
  int range = errno == ERANGE;
  if (end == s) return SCAN_SYNTAX;
  uint64_t mul = 1;
  if (kmg && end[0] && end[1] == '\0') {
    switch (end[0]) {
      case 'K': case 'k': mul = 1ull << 10; break;
      case 'M': case 'm': mul = 1ull << 20; break;
      case 'G': case 'g': mul = 1ull << 30; break;
      default: break;
    }
    if (mul > 1) end++;
  }
  if (*end != '\0') return SCAN_SYNTAX;
  if (range) return SCAN_RANGE;
  if (is_signed) return __builtin_mul_overflow((int64_t)sv, (int64_t)mul, i) ? SCAN_RANGE : SCAN_OK;
  return __builtin_mul_overflow((uint64_t)uv, mul, u) ? SCAN_RANGE : SCAN_OK;
}

epm_status_t epm_opt_parse_i64(const char *s, int kmg, int64_t min, int64_t max, int64_t *out) {
  int64_t v = 0;
  scan_t r = scan_int(s, kmg, 1, &v, NULL);
  if (r == SCAN_SYNTAX)
    return epm_error(EPM_ERR_INVALID_ARG, "'%s' is not an integer in [%lld, %lld]%s", s ? s : "", (long long)min,
                     (long long)max, kmg ? " (K/M/G suffix allowed)" : "");
  if (r == SCAN_RANGE || v < min || v > max)
    return epm_error(EPM_ERR_INVALID_ARG, "%s is outside [%lld, %lld]", s, (long long)min, (long long)max);
  *out = v;
  return EPM_OK;
}

epm_status_t epm_opt_parse_u64(const char *s, int kmg, uint64_t min, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  scan_t r = scan_int(s, kmg, 0, NULL, &v);
  if (r == SCAN_SYNTAX)
    return epm_error(EPM_ERR_INVALID_ARG, "'%s' is not an unsigned integer in [%llu, %llu]%s", s ? s : "",
                     (unsigned long long)min, (unsigned long long)max, kmg ? " (K/M/G suffix allowed)" : "");
  if (r == SCAN_RANGE || v < min || v > max)
    return epm_error(EPM_ERR_INVALID_ARG, "%s is outside [%llu, %llu]", s, (unsigned long long)min,
                     (unsigned long long)max);
  *out = v;
  return EPM_OK;
}

epm_status_t epm_opt_parse_f64(const char *s, double min, double max, int min_exclusive, double *out) {
  char *end = NULL;
  double v = 0;
  int range = 0;
  char lo = min_exclusive ? '(' : '[';
  if (!bad_start(s)) {
    errno = 0;
    v = strtod(s, &end);
    range = errno == ERANGE;
  }
  if (bad_start(s) || end == s || *end != '\0')
    return epm_error(EPM_ERR_INVALID_ARG, "'%s' is not a number in %c%g, %g]", s ? s : "", lo, min, max);
  if (!isfinite(v))
    return epm_error(EPM_ERR_INVALID_ARG, "'%s' is not a finite number in %c%g, %g]", s, lo, min, max);
  if (range) /* underflow: the double would not be the number written */
    return epm_error(EPM_ERR_INVALID_ARG, "'%s' is too small to represent as a double (in %c%g, %g])", s, lo, min,
                     max);
  if ((min_exclusive ? !(v > min) : !(v >= min)) || !(v <= max))
    return epm_error(EPM_ERR_INVALID_ARG, "%s is outside %c%g, %g]", s, lo, min, max);
  *out = v;
  return EPM_OK;
}

/* ---- one option's value --------------------------------------------------- */

static int takes_value(const epm_opt_t *o) { return o->kind != EPM_OPT_FLAG && o->kind != EPM_OPT_SET; }

/* "cpu|cuda|auto" into buf. */
static const char *choice_list(const epm_opt_choice_t *c, char *buf, size_t n) {
  size_t k = 0;
  buf[0] = '\0';
  for (; c && c->name && k < n; c++) {
    int w = snprintf(buf + k, n - k, "%s%s", k ? "|" : "", c->name);
    if (w < 0) break;
    k += (size_t)w;
  }
  return buf;
}

static const epm_opt_choice_t *find_choice(const epm_opt_choice_t *c, const char *v) {
  for (; c && c->name; c++)
    if (strcmp(c->name, v) == 0) return c;
  return NULL;
}

/* What a value of o must look like, for "needs a value" messages. */
static const char *expected(const epm_opt_t *o, char *buf, size_t n) {
  char ch[256];
  switch (o->kind) {
    case EPM_OPT_INT64:
      snprintf(buf, n, "an integer in [%lld, %lld]", (long long)o->min, (long long)o->max);
      break;
    case EPM_OPT_UINT64:
      snprintf(buf, n, "an integer in [%llu, %llu]", (unsigned long long)o->umin, (unsigned long long)o->umax);
      break;
    case EPM_OPT_DOUBLE:
      snprintf(buf, n, "a number in %c%g, %g]", o->flags & EPM_OPT_MIN_EXCLUSIVE ? '(' : '[', o->fmin, o->fmax);
      break;
    case EPM_OPT_LIST:
      snprintf(buf, n, "a comma-separated list of integers in [%lld, %lld]", (long long)o->min, (long long)o->max);
      break;
    case EPM_OPT_ENUM:
      snprintf(buf, n, "one of %s", choice_list(o->choices, ch, sizeof ch));
      break;
    case EPM_OPT_STRBUF:
      if (!o->choices) {
        snprintf(buf, n, "a value of at most %zu characters", o->size - 1);
        break;
      }
      /* fall through */
    default:
      if (o->choices) snprintf(buf, n, "one of %s", choice_list(o->choices, ch, sizeof ch));
      else snprintf(buf, n, "a value");
      break;
  }
  return buf;
}

static epm_status_t parse_list(const epm_opt_t *o, const char *s, epm_opt_list_t *out) {
  size_t n = 1;
  for (const char *p = s; *p; p++) n += *p == ',';
  if (n > o->max_items)
    return epm_error(EPM_ERR_INVALID_ARG, "'%.40s%s' has %zu values; at most %zu", s, strlen(s) > 40 ? "..." : "", n,
                     o->max_items);
  int64_t *v = calloc(n, sizeof *v);
  if (!v) return epm_error(EPM_ERR_NOMEM, "no memory for a list of %zu values", n);
  const char *p = s;
  for (size_t i = 0; i < n; i++) {
    /* strtok would merge "1,,2" into two values; an empty element is an error. */
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    /* The whole element, however long: cutting it to a fixed buffer read
     * "000...0007" as 0. */
    char *tok = strndup(p, len);
    if (!tok) {
      free(v);
      return epm_error(EPM_ERR_NOMEM, "no memory for a list value of %zu characters", len);
    }
    epm_status_t st = epm_opt_parse_i64(tok, (o->flags & EPM_OPT_KMG) != 0, o->min, o->max, &v[i]);
    free(tok);
    if (st != EPM_OK) {
      free(v);
      return epm_error_wrap(EPM_ERR_INVALID_ARG, "value %zu of '%s'", i + 1, s);
    }
    p = comma ? comma + 1 : p + len;
  }
  free(out->v);
  out->v = v;
  out->n = n;
  return EPM_OK;
}

/* Store text into o's field of base. The message does not name the option. */
static epm_status_t set_value(const epm_opt_t *o, void *base, const char *text) {
  char *dst = (char *)base + o->off;
  char ch[256];
  int kmg = (o->flags & EPM_OPT_KMG) != 0;
  switch (o->kind) {
    case EPM_OPT_FLAG: {
      int one = 1;
      memcpy(dst, &one, sizeof one);
      return EPM_OK;
    }
    case EPM_OPT_SET:
      memcpy(dst, &o->value, sizeof o->value);
      return EPM_OK;
    case EPM_OPT_INT64: {
      int64_t v;
      EPM_TRY(epm_opt_parse_i64(text, kmg, o->min, o->max, &v));
      if (o->size == sizeof(int32_t)) { /* the table check proved [min, max] fits */
        int32_t v32 = (int32_t)v;
        memcpy(dst, &v32, sizeof v32);
      } else {
        memcpy(dst, &v, sizeof v);
      }
      return EPM_OK;
    }
    case EPM_OPT_UINT64: {
      uint64_t v;
      EPM_TRY(epm_opt_parse_u64(text, kmg, o->umin, o->umax, &v));
      memcpy(dst, &v, sizeof v);
      return EPM_OK;
    }
    case EPM_OPT_DOUBLE: {
      double v;
      EPM_TRY(epm_opt_parse_f64(text, o->fmin, o->fmax, (o->flags & EPM_OPT_MIN_EXCLUSIVE) != 0, &v));
      memcpy(dst, &v, sizeof v);
      return EPM_OK;
    }
    case EPM_OPT_ENUM: {
      const epm_opt_choice_t *c = find_choice(o->choices, text);
      if (!c)
        return epm_error(EPM_ERR_INVALID_ARG, "'%s' is not one of %s", text, choice_list(o->choices, ch, sizeof ch));
      memcpy(dst, &c->value, sizeof c->value);
      return EPM_OK;
    }
    case EPM_OPT_STR:
    case EPM_OPT_STRBUF:
      if (o->choices && !find_choice(o->choices, text))
        return epm_error(EPM_ERR_INVALID_ARG, "'%s' is not one of %s", text, choice_list(o->choices, ch, sizeof ch));
      if (o->kind == EPM_OPT_STR) {
        memcpy(dst, &text, sizeof text);
        return EPM_OK;
      }
      if (strlen(text) >= o->size)
        return epm_error(EPM_ERR_INVALID_ARG, "'%.32s...' is %zu characters; the limit is %zu", text, strlen(text),
                         o->size - 1);
      memcpy(dst, text, strlen(text) + 1);
      return EPM_OK;
    case EPM_OPT_LIST:
      return parse_list(o, text, (epm_opt_list_t *)(void *)dst);
  }
  return epm_error(EPM_ERR_INTERNAL, "option kind %d", (int)o->kind);
}

/* ---- the table ------------------------------------------------------------ */

/* A table bug is the programmer's, found on the first run of the command. */
static epm_status_t check_opt(const epm_opt_t *o) {
  size_t want = 0;
  if (!o->name || !o->name[0] || strchr(o->name, '=') || strcmp(o->name, "help") == 0 ||
      strcmp(o->name, "version") == 0 || o->short_name == 'h')
    return epm_error(EPM_ERR_INTERNAL, "option table: bad name '%s'", o->name ? o->name : "(null)");
  switch (o->kind) {
    case EPM_OPT_FLAG: case EPM_OPT_SET: case EPM_OPT_ENUM: want = sizeof(int); break;
    case EPM_OPT_INT64:
      want = o->size == sizeof(int32_t) && o->min >= INT32_MIN && o->max <= INT32_MAX ? sizeof(int32_t)
                                                                                    : sizeof(int64_t);
      break;
    case EPM_OPT_UINT64: want = sizeof(uint64_t); break;
    case EPM_OPT_DOUBLE: want = sizeof(double); break;
    case EPM_OPT_STR: want = sizeof(const char *); break;
    case EPM_OPT_STRBUF: want = o->size ? o->size : 1; break;
    case EPM_OPT_LIST: want = sizeof(epm_opt_list_t); break;
    default: return epm_error(EPM_ERR_INTERNAL, "option --%s: unknown kind %d", o->name, (int)o->kind);
  }
  if (o->size != want || (o->kind == EPM_OPT_STRBUF && o->size < 2))
    return epm_error(EPM_ERR_INTERNAL, "option --%s: its field is %zu bytes; this kind and range need %zu", o->name,
                     o->size, want);
  if ((o->kind == EPM_OPT_INT64 || o->kind == EPM_OPT_LIST) && o->min > o->max)
    return epm_error(EPM_ERR_INTERNAL, "option --%s: min %lld > max %lld", o->name, (long long)o->min,
                     (long long)o->max);
  if (o->kind == EPM_OPT_UINT64 && o->umin > o->umax)
    return epm_error(EPM_ERR_INTERNAL, "option --%s: umin > umax", o->name);
  if (o->kind == EPM_OPT_DOUBLE && !(isfinite(o->fmin) && isfinite(o->fmax) && o->fmin <= o->fmax))
    return epm_error(EPM_ERR_INTERNAL, "option --%s: bad bounds [%g, %g]", o->name, o->fmin, o->fmax);
  if (o->kind == EPM_OPT_ENUM && !o->choices)
    return epm_error(EPM_ERR_INTERNAL, "option --%s: an enum without choices", o->name);
  if (o->kind == EPM_OPT_LIST && o->max_items == 0)
    return epm_error(EPM_ERR_INTERNAL, "option --%s: a list of at most 0 values", o->name);
  if (!takes_value(o) && (o->def || o->env || (o->flags & EPM_OPT_REQUIRED)))
    return epm_error(EPM_ERR_INTERNAL, "option --%s: a flag has no default, environment or requirement", o->name);
  return EPM_OK;
}

static epm_status_t check_cmd(const epm_opt_cmd_t *cmd) {
  if (cmd->ngroups > MAX_GROUPS || cmd->max_args < 0 || cmd->max_args > EPM_OPT_MAX_ARGS)
    return epm_error(EPM_ERR_INTERNAL, "%s: %zu option groups (at most %d), %d arguments (at most %d)", cmd->prog,
                     cmd->ngroups, MAX_GROUPS, cmd->max_args, EPM_OPT_MAX_ARGS);
  for (size_t g = 0; g < cmd->ngroups; g++) {
    if (cmd->groups[g].n > EPM_OPT_GROUP_MAX)
      return epm_error(EPM_ERR_INTERNAL, "%s: %zu options in one group; at most %d", cmd->prog, cmd->groups[g].n,
                       EPM_OPT_GROUP_MAX);
    for (size_t i = 0; i < cmd->groups[g].n; i++) {
      const epm_opt_t *o = &cmd->groups[g].opts[i];
      EPM_TRY(check_opt(o));
      for (size_t h = 0; h <= g; h++)
        for (size_t j = 0; j < (h == g ? i : cmd->groups[h].n); j++) {
          const epm_opt_t *p = &cmd->groups[h].opts[j];
          if (strcmp(p->name, o->name) == 0 || (o->short_name && p->short_name == o->short_name))
            return epm_error(EPM_ERR_INTERNAL, "%s: option --%s declared twice", cmd->prog, o->name);
        }
    }
  }
  return EPM_OK;
}

typedef struct {
  size_t g, i;
  const epm_opt_t *o;
} found_t;

static int find_long(const epm_opt_cmd_t *cmd, const char *name, size_t len, found_t *f) {
  for (size_t g = 0; g < cmd->ngroups; g++)
    for (size_t i = 0; i < cmd->groups[g].n; i++) {
      const epm_opt_t *o = &cmd->groups[g].opts[i];
      if (strlen(o->name) == len && strncmp(o->name, name, len) == 0) {
        *f = (found_t){g, i, o};
        return 1;
      }
    }
  return 0;
}

static int find_short(const epm_opt_cmd_t *cmd, char c, found_t *f) {
  for (size_t g = 0; g < cmd->ngroups; g++)
    for (size_t i = 0; i < cmd->groups[g].n; i++)
      if (c && cmd->groups[g].opts[i].short_name == c) {
        *f = (found_t){g, i, &cmd->groups[g].opts[i]};
        return 1;
      }
  return 0;
}

/* ---- parse ---------------------------------------------------------------- */

epm_status_t epm_opt_parse(const epm_opt_cmd_t *cmd, int argc, char *const *argv, epm_opt_result_t *res) {
  uint8_t src[MAX_GROUPS][EPM_OPT_GROUP_MAX];
  char what[320];
  memset(res, 0, sizeof *res);
  memset(src, 0, sizeof src);
  EPM_TRY(check_cmd(cmd));

  /* Help wins over everything else on the line, so a broken line can still
   * ask what it should have been; --version comes next, for the same reason. */
  for (int a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--") == 0) break;
    if (strcmp(argv[a], "-h") == 0 || strcmp(argv[a], "--help") == 0) {
      res->help = 1;
      res->version = 0;
      return EPM_OK;
    }
    if (strcmp(argv[a], "--version") == 0) res->version = 1;
  }
  if (res->version) return EPM_OK;

  /* defaults < environment < argv */
  for (size_t g = 0; g < cmd->ngroups; g++)
    for (size_t i = 0; i < cmd->groups[g].n; i++) {
      const epm_opt_t *o = &cmd->groups[g].opts[i];
      if (o->def && set_value(o, cmd->groups[g].base, o->def) != EPM_OK)
        return epm_error_wrap(EPM_ERR_INTERNAL, "%s: the default of --%s", cmd->prog, o->name);
    }
  for (size_t g = 0; g < cmd->ngroups; g++)
    for (size_t i = 0; i < cmd->groups[g].n; i++) {
      const epm_opt_t *o = &cmd->groups[g].opts[i];
      const char *v = o->env ? getenv(o->env) : NULL;
      if (!v) continue;
      epm_status_t st = set_value(o, cmd->groups[g].base, v);
      if (st != EPM_OK) return epm_error_wrap(st, "bad value for --%s (from %s)", o->name, o->env);
      src[g][i] = EPM_OPT_SRC_ENV;
    }

  int only_args = 0;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a], *val = NULL;
    found_t f;
    if (only_args || arg[0] != '-' || arg[1] == '\0') { /* "-" is an argument (stdin, by convention) */
      if (res->nargs >= cmd->max_args)
        return epm_error(EPM_ERR_INVALID_ARG, "unexpected argument '%s'%s", arg,
                         cmd->max_args ? " (too many arguments)" : "");
      res->args[res->nargs++] = arg;
      continue;
    }
    if (strcmp(arg, "--") == 0) {
      only_args = 1;
      continue;
    }
    if (arg[1] == '-') {
      const char *name = arg + 2, *eq = strchr(name, '=');
      size_t len = eq ? (size_t)(eq - name) : strlen(name);
      if (!find_long(cmd, name, len, &f))
        return epm_error(EPM_ERR_INVALID_ARG, "unknown option '--%.*s'", (int)len, name);
      if (eq) val = eq + 1;
    } else {
      if (!find_short(cmd, arg[1], &f)) return epm_error(EPM_ERR_INVALID_ARG, "unknown option '%s'", arg);
      if (arg[2]) val = arg + 2 + (arg[2] == '='); /* -r3 and -r=3 */
    }
    const epm_opt_t *o = f.o;
    if (!takes_value(o)) {
      if (val) return epm_error(EPM_ERR_INVALID_ARG, "option --%s takes no value (got '%s')", o->name, arg);
    } else if (!val) {
      if (a + 1 >= argc)
        return epm_error(EPM_ERR_INVALID_ARG, "option --%s needs a value: %s", o->name, expected(o, what, sizeof what));
      val = argv[++a];
    }
    epm_status_t st = set_value(o, cmd->groups[f.g].base, val);
    if (st != EPM_OK) return epm_error_wrap(st, "bad value for --%s", o->name);
    src[f.g][f.i] = EPM_OPT_SRC_FLAG;
  }

  for (size_t g = 0; g < cmd->ngroups; g++) {
    for (size_t i = 0; i < cmd->groups[g].n; i++) {
      const epm_opt_t *o = &cmd->groups[g].opts[i];
      if ((o->flags & EPM_OPT_REQUIRED) && src[g][i] == EPM_OPT_SRC_DEFAULT)
        return epm_error(EPM_ERR_INVALID_ARG, "option --%s is required: %s", o->name, expected(o, what, sizeof what));
    }
    if (cmd->groups[g].src) memcpy(cmd->groups[g].src, src[g], cmd->groups[g].n);
  }
  return EPM_OK;
}

void epm_opt_free(const epm_opt_cmd_t *cmd) {
  for (size_t g = 0; g < cmd->ngroups; g++)
    for (size_t i = 0; i < cmd->groups[g].n; i++) {
      const epm_opt_t *o = &cmd->groups[g].opts[i];
      if (o->kind != EPM_OPT_LIST || o->size != sizeof(epm_opt_list_t)) continue;
      epm_opt_list_t *l = (epm_opt_list_t *)(void *)((char *)cmd->groups[g].base + o->off);
      free(l->v);
      l->v = NULL;
      l->n = 0;
    }
}

/* ---- the environment ------------------------------------------------------ */

size_t epm_opt_edit_distance(const char *a, const char *b) {
  enum { W = 64 }; /* names longer than this are never near anything */
  size_t n = strlen(a), m = strlen(b);
  if (n >= W || m >= W) return n > m ? n : m;
  size_t d[W + 1][W + 1];
  for (size_t i = 0; i <= n; i++) d[i][0] = i;
  for (size_t j = 0; j <= m; j++) d[0][j] = j;
  for (size_t i = 1; i <= n; i++)
    for (size_t j = 1; j <= m; j++) {
      size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
        best = d[i - 2][j - 2] + 1;
      d[i][j] = best;
    }
  return d[n][m];
}

typedef struct {
  char text[1024];
  size_t len;
} msg_t;

static void msg_add(msg_t *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msg_add(msg_t *m, const char *fmt, ...) {
  va_list ap;
  if (m->len >= sizeof m->text - 1) return;
  va_start(ap, fmt);
  int n = vsnprintf(m->text + m->len, sizeof m->text - m->len, fmt, ap);
  va_end(ap);
  if (n > 0) m->len = m->len + (size_t)n < sizeof m->text ? m->len + (size_t)n : sizeof m->text - 1;
}

/* Calls fn(name, arg) for every known name: the options' variables, then
 * the extra list. */
static int each_known(const epm_opt_cmd_t *cmd, const char *const *known, int (*fn)(const char *, void *), void *arg) {
  for (size_t g = 0; g < cmd->ngroups; g++)
    for (size_t i = 0; i < cmd->groups[g].n; i++)
      if (cmd->groups[g].opts[i].env && fn(cmd->groups[g].opts[i].env, arg)) return 1;
  for (size_t k = 0; known && known[k]; k++)
    if (fn(known[k], arg)) return 1;
  return 0;
}

typedef struct {
  const char *name; /* the variable's name, not NUL-terminated */
  size_t len;
  size_t dist;      /* nearness wanted (pass 2) */
  msg_t *m;
  int found;
} env_probe_t;

static int is_name(const char *known, void *arg) {
  env_probe_t *p = arg;
  return strlen(known) == p->len && strncmp(known, p->name, p->len) == 0;
}

static int near_at(const char *known, void *arg) {
  env_probe_t *p = arg;
  char name[64];
  snprintf(name, sizeof name, "%.*s", (int)(p->len < sizeof name ? p->len : sizeof name - 1), p->name);
  if (epm_opt_edit_distance(name, known) == p->dist) {
    msg_add(p->m, "%s%s", p->found ? " or " : " (did you mean ", known);
    p->found++;
  }
  return 0;
}

epm_status_t epm_opt_check_env(const epm_opt_cmd_t *cmd, const char *prefix, const char *const *known,
                               char *const *envp) {
  msg_t m = {{0}, 0};
  size_t plen = strlen(prefix), unknown = 0;
  for (size_t e = 0; envp && envp[e]; e++) {
    const char *eq = strchr(envp[e], '=');
    env_probe_t p = {envp[e], eq ? (size_t)(eq - envp[e]) : strlen(envp[e]), 0, &m, 0};
    if (strncmp(envp[e], prefix, plen) != 0 || each_known(cmd, known, is_name, &p)) continue;
    msg_add(&m, "%s%.*s", unknown++ ? "; " : "", (int)p.len, p.name);
    /* the nearest names, if any is near: a quarter of the name's letters
     * after the prefix, at least 1, at most 3 */
    size_t tail = p.len > plen ? p.len - plen : 1, limit = tail / 4 < 1 ? 1 : tail / 4 > 3 ? 3 : tail / 4;
    for (p.dist = 1; p.dist <= limit && !p.found; p.dist++) each_known(cmd, known, near_at, &p);
    if (p.found) msg_add(&m, "?)");
  }
  if (!unknown) return EPM_OK;
  return epm_error(EPM_ERR_INVALID_ARG, "unknown environment variable%s %s: not a setting of %s (%s --help lists "
                   "them)", unknown > 1 ? "s" : "", m.text, cmd->prog, cmd->prog);
}

/* ---- text ----------------------------------------------------------------- */

const char *epm_opt_format(const epm_opt_t *o, const void *base, char *buf, size_t n) {
  const char *p = (const char *)base + o->off;
  buf[0] = '\0';
  switch (o->kind) {
    case EPM_OPT_FLAG: case EPM_OPT_SET: case EPM_OPT_ENUM: {
      int v;
      memcpy(&v, p, sizeof v);
      for (const epm_opt_choice_t *c = o->kind == EPM_OPT_ENUM ? o->choices : NULL; c && c->name; c++)
        if (c->value == v) {
          snprintf(buf, n, "%s", c->name);
          return buf;
        }
      snprintf(buf, n, "%d", v);
      break;
    }
    case EPM_OPT_INT64:
      if (o->size == sizeof(int32_t)) {
        int32_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, n, "%d", (int)v);
      } else {
        int64_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, n, "%lld", (long long)v);
      }
      break;
    case EPM_OPT_UINT64: {
      uint64_t v;
      memcpy(&v, p, sizeof v);
      snprintf(buf, n, "%llu", (unsigned long long)v);
      break;
    }
    case EPM_OPT_DOUBLE: {
      double v;
      memcpy(&v, p, sizeof v);
      snprintf(buf, n, "%.17g", v);
      break;
    }
    case EPM_OPT_STR: {
      const char *s;
      memcpy(&s, p, sizeof s);
      snprintf(buf, n, "%s", s ? s : "");
      break;
    }
    case EPM_OPT_STRBUF:
      snprintf(buf, n, "%.*s", (int)o->size, p);
      break;
    case EPM_OPT_LIST: {
      epm_opt_list_t l;
      size_t k = 0;
      memcpy(&l, p, sizeof l);
      for (size_t i = 0; i < l.n && k < n; i++) {
        int w = snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)l.v[i]);
        if (w < 0) break;
        k += (size_t)w;
      }
      break;
    }
  }
  return buf;
}

#define HELP_COL 26

/* Text with embedded newlines, each further line indented to the help column. */
static void put_indented(FILE *f, const char *s) {
  for (; *s; s++) {
    fputc(*s, f);
    if (*s == '\n' && s[1]) fprintf(f, "%*s", HELP_COL, "");
  }
}

static void help_row(FILE *f, const epm_opt_t *o, const void *base) {
  char left[128], ch[256], val[256], extra[512];
  size_t k = 0;
  const char *arg = o->arg;
  if (!arg && takes_value(o)) {
    switch (o->kind) {
      case EPM_OPT_INT64: case EPM_OPT_UINT64: arg = "N"; break;
      case EPM_OPT_DOUBLE: arg = "X"; break;
      case EPM_OPT_LIST: arg = "a,b,..."; break;
      case EPM_OPT_ENUM: arg = choice_list(o->choices, ch, sizeof ch); break;
      default: arg = o->choices ? choice_list(o->choices, ch, sizeof ch) : "VALUE"; break;
    }
  }
  if (o->short_name) snprintf(left, sizeof left, "  -%c, --%s%s%s", o->short_name, o->name, arg ? " " : "", arg ? arg : "");
  else snprintf(left, sizeof left, "  --%s%s%s", o->name, arg ? " " : "", arg ? arg : "");
  if (strlen(left) + 2 > HELP_COL) fprintf(f, "%s\n%*s", left, HELP_COL, "");
  else fprintf(f, "%-*s", HELP_COL, left);
  put_indented(f, o->help ? o->help : "");

  extra[0] = '\0';
#define EXTRA(...) k += (size_t)snprintf(extra + k, k < sizeof extra ? sizeof extra - k : 0, __VA_ARGS__)
  if (o->flags & EPM_OPT_REQUIRED) EXTRA("required");
  if (o->def && o->def[0]) EXTRA("%sdefault %s", k ? "; " : "", o->def);
  if ((o->flags & EPM_OPT_SHOW_INIT) && base) EXTRA("%sdefault %s", k ? "; " : "", epm_opt_format(o, base, val, sizeof val));
  if (o->arg && o->choices) EXTRA("%sone of %s", k ? "; " : "", choice_list(o->choices, ch, sizeof ch));
  if (o->env) EXTRA("%senv %s", k ? "; " : "", o->env);
#undef EXTRA
  if (!extra[0]) {
    fputc('\n', f);
    return;
  }
  /* on the help's last line when it fits in 100 columns, else a line of its own */
  const char *last = strrchr(o->help ? o->help : "", '\n');
  size_t last_len = strlen(last ? last + 1 : (o->help ? o->help : ""));
  if (HELP_COL + last_len + strlen(extra) + 3 <= 100) fprintf(f, " (%s)\n", extra);
  else fprintf(f, "\n%*s(%s)\n", HELP_COL, "", extra);
}

void epm_opt_help(FILE *f, const epm_opt_cmd_t *cmd) {
  fprintf(f, "%s\n", cmd->synopsis);
  if (cmd->about) fprintf(f, "\n%s\n", cmd->about);
  for (size_t g = 0; g < cmd->ngroups; g++) {
    const epm_opt_group_t *gr = &cmd->groups[g];
    if (g == 0 || gr->title) fprintf(f, "\n%s\n", gr->title ? gr->title : "options:");
    for (size_t i = 0; i < gr->n; i++) help_row(f, &gr->opts[i], gr->base);
    if (g == 0) {
      fprintf(f, "%-*s%s\n", HELP_COL, "  -h, --help", "print this text and exit 0");
      fprintf(f, "%-*s%s\n", HELP_COL, "  --version", "print the version and exit 0");
    }
  }
  if (cmd->ngroups == 0)
    fprintf(f, "\noptions:\n%-*s%s\n%-*s%s\n", HELP_COL, "  -h, --help", "print this text and exit 0", HELP_COL,
            "  --version", "print the version and exit 0");
  if (cmd->epilog) fprintf(f, "\n%s\n", cmd->epilog);
}

void epm_opt_usage(FILE *f, const epm_opt_cmd_t *cmd) {
  fprintf(f, "%s\n(%s --help lists every option)\n", cmd->synopsis, cmd->prog);
}
