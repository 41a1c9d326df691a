/* SPDX-License-Identifier: Apache-2.0 */
/* cli_opt.h — the one command-line parser of epmoed and of every epmoectl
 * subcommand. A command declares its options in a table (name, kind, where the
 * value goes, default, bounds, help, environment variable); epm_opt_parse()
 * fills the destination struct from defaults, then the environment, then argv
 * (a flag beats the environment), and epm_opt_help() prints --help from the
 * same table, so the accepted syntax and the documentation cannot drift.
 *
 * Syntax, the same for every command: "--name VALUE" and "--name=VALUE";
 * "-x VALUE" for an option with a short name; "--" ends the options; "-h" or
 * "--help" anywhere before "--" asks for help. Numbers are strict: decimal,
 * nothing before or after, in the option's bounds; doubles must be finite.
 * "--version" anywhere before "--" asks for the version (help wins over it).
 *
 * The parser never prints and never exits: it returns EPM_OK or a status with
 * a message (epm_last_error()) that names the option, the value and the
 * limit. Only a main() turns that into an exit code (EPM_EXIT_USAGE). */
#ifndef EPMOE_CLI_OPT_H
#define EPMOE_CLI_OPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "epmoe/status.h"

/* EX_USAGE of BSD <sysexits.h>: the command was used incorrectly. */
#define EPM_EXIT_USAGE 64

typedef enum {
  EPM_OPT_FLAG,   /* no value; int = 1 */
  EPM_OPT_SET,    /* no value; int = .value (several flags choosing one mode) */
  EPM_OPT_INT64,  /* int64_t, or int when .min/.max fit in an int */
  EPM_OPT_UINT64, /* uint64_t (size_t) in [.umin, .umax]; a sign is refused */
  EPM_OPT_DOUBLE, /* finite double in [.fmin, .fmax] */
  EPM_OPT_STR,    /* const char *, pointing into argv, the environment or .def */
  EPM_OPT_STRBUF, /* char[size], copied; a value that does not fit is refused */
  EPM_OPT_ENUM,   /* int = .choices[i].value of the name given */
  EPM_OPT_LIST    /* epm_opt_list_t: "a,b,c" of int64 in [.min, .max] */
} epm_opt_kind_t;

/* .flags bits */
#define EPM_OPT_KMG 0x1u          /* integers take a K, M or G suffix (x 1024^k) */
#define EPM_OPT_REQUIRED 0x2u     /* a usage error when neither argv nor env gives it */
#define EPM_OPT_MIN_EXCLUSIVE 0x4u /* DOUBLE: the value must be > .fmin */
#define EPM_OPT_SHOW_INIT 0x8u    /* --help shows the field's value before parsing as the
                                   * default (a default the command sets in code) */

/* Where a value came from (epm_opt_group_t.src). */
typedef enum { EPM_OPT_SRC_DEFAULT = 0, EPM_OPT_SRC_ENV = 1, EPM_OPT_SRC_FLAG = 2 } epm_opt_src_t;

typedef struct {
  const char *name;
  int value;
} epm_opt_choice_t; /* arrays end with {NULL, 0} */

typedef struct {
  int64_t *v; /* malloc'd by the parser; free with epm_opt_free() */
  size_t n;
} epm_opt_list_t;

typedef struct {
  const char *name;     /* long name without the dashes: "tokens-per-rank" */
  char short_name;      /* 'q' for -q, or 0 */
  epm_opt_kind_t kind;
  size_t off, size;     /* destination in the group's struct: EPM_OPT_AT(type, field) */
  const char *def;      /* default as text, parsed like a value; NULL keeps the field as the
                         * caller initialised it (a sentinel such as -1 = "not given") */
  int64_t min, max;     /* INT64 and LIST elements */
  uint64_t umin, umax;  /* UINT64 */
  double fmin, fmax;    /* DOUBLE */
  int value;            /* SET */
  size_t max_items;     /* LIST: most elements accepted */
  const epm_opt_choice_t *choices; /* ENUM; for STR/STRBUF the accepted values, or NULL */
  unsigned flags;       /* EPM_OPT_KMG | EPM_OPT_REQUIRED | ... */
  const char *env;      /* environment variable read before argv, or NULL */
  const char *arg;      /* placeholder in --help ("N", "DIR"); NULL: from the kind */
  const char *help;     /* one or more lines ('\n'-separated) */
} epm_opt_t;

/* Designated initializers of .off and .size, for a table row. */
#define EPM_OPT_AT(type, field) .off = offsetof(type, field), .size = sizeof(((type *)0)->field)

/* Options whose offsets point into one struct. */
typedef struct {
  const char *title;    /* heading in --help; NULL: "options:" */
  const epm_opt_t *opts;
  size_t n;             /* at most EPM_OPT_GROUP_MAX */
  void *base;           /* the struct the offsets point into */
  uint8_t *src;         /* NULL, or n entries set to an epm_opt_src_t */
} epm_opt_group_t;
#define EPM_OPT_GROUP_MAX 64

typedef struct {
  const char *prog;     /* prefix of messages and of the help: "epmoectl plan" */
  const char *synopsis; /* "usage: ..." line(s), no trailing newline */
  const char *about;    /* --help: text between the synopsis and the options, or NULL */
  const char *epilog;   /* --help: text after the options, or NULL */
  int max_args;         /* positional arguments accepted, at most EPM_OPT_MAX_ARGS */
  const epm_opt_group_t *groups;
  size_t ngroups;
} epm_opt_cmd_t;
#define EPM_OPT_MAX_ARGS 8

typedef struct {
  int help;                           /* -h/--help given: nothing else was parsed */
  int version;                        /* --version given (and no help): nothing else was parsed */
  int nargs;                          /* positional arguments, in order */
  const char *args[EPM_OPT_MAX_ARGS]; /* point into argv */
} epm_opt_result_t;

/* Parse argv[1..argc-1] (argv[0] is the command's name) into the groups'
 * structs. Returns EPM_OK; EPM_ERR_INVALID_ARG for a bad command line or
 * environment value; EPM_ERR_NOMEM; EPM_ERR_INTERNAL for a bad table. Lists
 * parsed before a failure stay allocated: call epm_opt_free() either way. */
epm_status_t epm_opt_parse(const epm_opt_cmd_t *cmd, int argc, char *const *argv, epm_opt_result_t *res);
/* Free every LIST destination of cmd's groups and zero it. */
void epm_opt_free(const epm_opt_cmd_t *cmd);

/* The full --help text: synopsis, about, every option with its argument,
 * help, default, choices and environment variable, epilog. */
void epm_opt_help(FILE *f, const epm_opt_cmd_t *cmd);
/* The short form for usage errors: the synopsis and where --help is. */
void epm_opt_usage(FILE *f, const epm_opt_cmd_t *cmd);

/* Environment variables named PREFIX* that are neither an option's .env in
 * cmd nor in known (a NULL-terminated list of names something else in the
 * process reads: a library, a wrapper script), searched in envp ("NAME=value"
 * strings, NULL-terminated: environ). A misspelt setting is otherwise ignored
 * silently, so this is an error: EPM_ERR_INVALID_ARG naming every unknown
 * variable with the known names nearest to it (edit distance), e.g.
 * "unknown environment variable EPMOE_MODLE (did you mean EPMOE_MODEL?)". */
epm_status_t epm_opt_check_env(const epm_opt_cmd_t *cmd, const char *prefix, const char *const *known,
                               char *const *envp);
/* Optimal string alignment distance: insertions, deletions, substitutions
 * and swaps of two neighbours, each costing 1 ("MODLE" -> "MODEL" is 1). */
size_t epm_opt_edit_distance(const char *a, const char *b);

/* The value of o in base as text (lists comma-separated); returns buf. */
const char *epm_opt_format(const epm_opt_t *o, const void *base, char *buf, size_t n);

/* The strict number parsers every option goes through (one integer scan
 * behind the signed and unsigned forms). s must be a whole decimal number
 * (a sign only for signed, an optional K/M/G suffix when kmg) with no spaces,
 * inside [min, max]; a double must be finite and not underflow. On failure
 * the message names the text and the limit, e.g. "'12x' is not an integer in
 * [1, 4096]" or "5000 is outside [1, 4096]". */
epm_status_t epm_opt_parse_i64(const char *s, int kmg, int64_t min, int64_t max, int64_t *out);
epm_status_t epm_opt_parse_u64(const char *s, int kmg, uint64_t min, uint64_t max, uint64_t *out);
epm_status_t epm_opt_parse_f64(const char *s, double min, double max, int min_exclusive, double *out);

#endif
