/* epmoectl — the operator's and developer's command line. Dispatches to one
 * file per subcommand (daemon/ctl_<name>.c). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"


typedef struct {
  const char *name;
  const char *help;
  int (*fn)(int, char **);
} ctl_cmd_t;

static const ctl_cmd_t commands[] = {
#define EPM__CTL_ROW(name, help) {#name, help, epm_ctl_##name},
    EPM_CTL_COMMANDS(EPM__CTL_ROW)
#undef EPM__CTL_ROW
};

static void usage(FILE *f) {
  fprintf(f,
          "usage: epmoectl <command> [options]    (epmoectl <command> --help for details)\n\n"
          "commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\nepmoe %s\n", EPMOE_VERSION_STRING);
}

int epm_ctl_parse_i64(const char *flag, const char *s, long long min, long long max, long long *out) {
  char *end = NULL;
  long long v, mul = 1;
  if (!s || !*s) {
    fprintf(stderr, "epmoectl: %s needs a value\n", flag);
    return 2;
  }
  errno = 0;
  v = strtoll(s, &end, 10);
  if (end && *end && end[1] == '\0') {
    switch (*end) {
      case 'K': case 'k': mul = 1024LL; end++; break;
      case 'M': case 'm': mul = 1024LL * 1024; end++; break;
      case 'G': case 'g': mul = 1024LL * 1024 * 1024; end++; break;
      default: break;
    }
  }
  if (errno || end == s || *end != '\0' || __builtin_mul_overflow(v, mul, &v)) {
    fprintf(stderr, "epmoectl: bad value for %s: '%s' is not an integer\n", flag, s);
    return 2;
  }
  if (v < min || v > max) {
    fprintf(stderr, "epmoectl: bad value for %s: %lld is outside [%lld, %lld]\n", flag, v, min, max);
    return 2;
  }
  *out = v;
  return 0;
}

int epm_ctl_flag_value(const char *cmd, int argc, char **argv, int *i, char *flag, size_t flag_size,
                       const char **val) {
  const char *a = argv[*i], *eq = strchr(a, '=');
  size_t len = eq ? (size_t)(eq - a) : strlen(a);
  if (strncmp(a, "--", 2) != 0 || len >= flag_size) {
    fprintf(stderr, "epmoectl %s: unexpected argument '%s' (see epmoectl %s --help)\n", cmd, a, cmd);
    return 2;
  }
  memcpy(flag, a, len);
  flag[len] = '\0';
  if (eq) {
    *val = eq + 1;
  } else if (*i + 1 < argc) {
    *val = argv[++*i];
  } else {
    fprintf(stderr, "epmoectl %s: %s needs a value\n", cmd, flag);
    return 2;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("epmoectl %s\n", EPMOE_VERSION_STRING);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "epmoectl: unknown command '%s' (see epmoectl --help)\n", argv[1]);
  return 2;
}
