/* SPDX-License-Identifier: Apache-2.0 */
/* test_cli_opt: the one command-line parser (daemon/cli_opt.c) on a table
 * that has every kind: both spellings, short options, "--", every class of
 * error with the option, the value and the limit in its message, bounds at
 * their edges, defaults < environment < flag, the table's own checks,
 * --help generated from the table, --version, and the check for unknown
 * environment variables with its edit distance. Expected values are worked
 * by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opt.h"

typedef struct {
  int64_t n;
  int small; /* an int field: bounds within int */
  uint64_t u;
  double x, pos;
  const char *name;
  char buf[8];
  char mode[8];
  int kind, json, quiet, sel;
  epm_opt_list_t list;
} t_opts_t;

#define AT(f) EPM_OPT_AT(t_opts_t, f)

static const epm_opt_choice_t kinds[] = {{"cpu", 10}, {"cuda", 20}, {NULL, 0}};
static const epm_opt_choice_t modes[] = {{"fast", 0}, {"slow", 0}, {NULL, 0}};

static const epm_opt_t topts[] = {
    {.name = "n", .kind = EPM_OPT_INT64, AT(n), .def = "5", .min = 1, .max = 100, .env = "EPM_TEST_N",
     .help = "a count"},
    {.name = "small", .short_name = 's', .kind = EPM_OPT_INT64, AT(small), .min = -3, .max = 1 << 20,
     .flags = EPM_OPT_KMG, .help = "an int"},
    {.name = "u", .kind = EPM_OPT_UINT64, AT(u), .umin = 2, .umax = UINT64_MAX, .help = "unsigned"},
    {.name = "x", .kind = EPM_OPT_DOUBLE, AT(x), .def = "0.5", .fmin = -1, .fmax = 1, .help = "a ratio"},
    {.name = "pos", .kind = EPM_OPT_DOUBLE, AT(pos), .fmin = 0, .fmax = 10, .flags = EPM_OPT_MIN_EXCLUSIVE,
     .arg = "S", .help = "seconds, > 0"},
    {.name = "name", .kind = EPM_OPT_STR, AT(name), .arg = "NAME", .help = "a name\nsecond line"},
    {.name = "buf", .kind = EPM_OPT_STRBUF, AT(buf), .def = "abc", .env = "EPM_TEST_BUF", .help = "7 chars"},
    {.name = "mode", .kind = EPM_OPT_STRBUF, AT(mode), .def = "fast", .choices = modes, .help = "speed"},
    {.name = "kind", .kind = EPM_OPT_ENUM, AT(kind), .def = "cpu", .choices = kinds, .help = "where"},
    {.name = "json", .kind = EPM_OPT_FLAG, AT(json), .help = "JSON out"},
    {.name = "quiet", .short_name = 'q', .kind = EPM_OPT_FLAG, AT(quiet), .help = "hush"},
    {.name = "all", .kind = EPM_OPT_SET, AT(sel), .value = -1, .help = "every one"},
    {.name = "one", .kind = EPM_OPT_SET, AT(sel), .value = 1, .help = "the first"},
    {.name = "list", .kind = EPM_OPT_LIST, AT(list), .min = 0, .max = 1024, .max_items = 4,
     .flags = EPM_OPT_KMG, .help = "counts"},
};
#define NT (sizeof topts / sizeof topts[0])

static t_opts_t o;
static uint8_t src[NT];
static epm_opt_group_t grp;
static epm_opt_cmd_t cmd;
static epm_opt_result_t res;

static int setup(void **state) {
  (void)state;
  memset(&o, 0, sizeof o);
  unsetenv("EPM_TEST_N");
  unsetenv("EPM_TEST_BUF");
  grp = (epm_opt_group_t){"test options:", topts, NT, &o, src};
  cmd = (epm_opt_cmd_t){.prog = "t", .synopsis = "usage: t [options] [ARG]", .about = "About text.",
                        .epilog = "Epilog text.", .max_args = 1, .groups = &grp, .ngroups = 1};
  return 0;
}

static int teardown(void **state) {
  (void)state;
  epm_opt_free(&cmd);
  return 0;
}

/* Parse a NULL-terminated argument list (argv[0] = "t"). */
static epm_status_t parse_v(const char *first, ...) {
  char *argv[32];
  int argc = 0;
  va_list ap;
  argv[argc++] = (char *)"t";
  va_start(ap, first);
  for (const char *a = first; a && argc < 31; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  return epm_opt_parse(&cmd, argc, argv, &res);
}
#define PARSE(...) parse_v(__VA_ARGS__, (const char *)NULL)

/* The call failed as a usage error and its message holds every piece. */
static void want_error(epm_status_t st, epm_status_t code, ...) {
  va_list ap;
  assert_int_equal(st, code);
  va_start(ap, code);
  for (const char *piece = va_arg(ap, const char *); piece; piece = va_arg(ap, const char *))
    if (!strstr(epm_last_error(), piece)) fail_msg("message '%s' lacks '%s'", epm_last_error(), piece);
  va_end(ap);
}
#define WANT_ERR(st, ...) want_error((st), EPM_ERR_INVALID_ARG, __VA_ARGS__, (const char *)NULL)

static void test_defaults(void **state) {
  (void)state;
  assert_int_equal(PARSE(NULL), EPM_OK);
  assert_int_equal(o.n, 5);
  assert_true(o.x == 0.5);
  assert_string_equal(o.buf, "abc");
  assert_string_equal(o.mode, "fast");
  assert_int_equal(o.kind, 10);
  assert_null(o.name);
  assert_int_equal(o.small, 0); /* no default: the caller's value stays */
  assert_int_equal(res.help, 0);
  assert_int_equal(res.nargs, 0);
  for (size_t i = 0; i < NT; i++) assert_int_equal(src[i], EPM_OPT_SRC_DEFAULT);
}

static void test_both_spellings(void **state) {
  (void)state;
  assert_int_equal(PARSE("--n", "7", "--x=-0.25", "--name", "a=b", "--kind=cuda", "--buf", "", "--small=-3"), EPM_OK);
  assert_int_equal(o.n, 7);
  assert_true(o.x == -0.25);
  assert_string_equal(o.name, "a=b"); /* only the first '=' of --name=... splits */
  assert_int_equal(o.kind, 20);
  assert_string_equal(o.buf, "");
  assert_int_equal(o.small, -3);
  assert_int_equal(PARSE("--n=8", "--x", "1", "--name=c=d", "--kind", "cpu", "--small", "2K"), EPM_OK);
  assert_int_equal(o.n, 8);
  assert_true(o.x == 1.0);
  assert_string_equal(o.name, "c=d");
  assert_int_equal(o.kind, 10);
  assert_int_equal(o.small, 2048);
  /* short forms: -s V, -sV, -s=V; a flag's short name alone */
  assert_int_equal(PARSE("-s", "9", "-q"), EPM_OK);
  assert_int_equal(o.small, 9);
  assert_int_equal(o.quiet, 1);
  assert_int_equal(PARSE("-s10"), EPM_OK);
  assert_int_equal(o.small, 10);
  assert_int_equal(PARSE("-s=11"), EPM_OK);
  assert_int_equal(o.small, 11);
  /* a value may start with a dash when it follows its option */
  assert_int_equal(PARSE("--small", "-2"), EPM_OK);
  assert_int_equal(o.small, -2);
  /* the last one wins, for SET options choosing one mode too */
  assert_int_equal(PARSE("--n", "3", "--n", "4", "--all", "--one"), EPM_OK);
  assert_int_equal(o.n, 4);
  assert_int_equal(o.sel, 1);
  assert_int_equal(PARSE("--one", "--all"), EPM_OK);
  assert_int_equal(o.sel, -1);
  assert_int_equal(src[0], EPM_OPT_SRC_DEFAULT); /* --n not given this time */
  assert_int_equal(src[11], EPM_OPT_SRC_FLAG);
}

static void test_double_dash_and_args(void **state) {
  (void)state;
  assert_int_equal(PARSE("dir", "--json"), EPM_OK);
  assert_int_equal(res.nargs, 1);
  assert_string_equal(res.args[0], "dir");
  assert_int_equal(o.json, 1);
  /* after "--" everything is an argument, even --help */
  assert_int_equal(PARSE("--", "--help"), EPM_OK);
  assert_int_equal(res.help, 0);
  assert_int_equal(res.nargs, 1);
  assert_string_equal(res.args[0], "--help");
  assert_int_equal(PARSE("--n", "9", "--", "-x"), EPM_OK);
  assert_int_equal(o.n, 9);
  assert_string_equal(res.args[0], "-x");
  /* "-" alone is an argument */
  assert_int_equal(PARSE("-"), EPM_OK);
  assert_string_equal(res.args[0], "-");
  WANT_ERR(PARSE("a", "b"), "unexpected argument 'b'");
  WANT_ERR(PARSE("--", "a", "b"), "unexpected argument 'b'");
}

static void test_help_first(void **state) {
  (void)state;
  /* help wins even over a broken line, and stores nothing */
  assert_int_equal(PARSE("--bogus", "--n", "x", "--help"), EPM_OK);
  assert_int_equal(res.help, 1);
  assert_int_equal(o.n, 0);
  assert_int_equal(PARSE("-h"), EPM_OK);
  assert_int_equal(res.help, 1);
}

static void test_version(void **state) {
  (void)state;
  /* like help: stores nothing, even on a broken line; help wins over it */
  assert_int_equal(PARSE("--n", "7", "--version", "--bogus"), EPM_OK);
  assert_int_equal(res.version, 1);
  assert_int_equal(res.help, 0);
  assert_int_equal(o.n, 0);
  assert_int_equal(PARSE("--version", "--help"), EPM_OK);
  assert_int_equal(res.help, 1);
  assert_int_equal(res.version, 0);
  /* after "--" it is an argument */
  assert_int_equal(PARSE("--", "--version"), EPM_OK);
  assert_int_equal(res.version, 0);
  assert_string_equal(res.args[0], "--version");
  /* and --help says so */
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  epm_opt_help(f, &cmd);
  fclose(f);
  assert_non_null(strstr(text, "  --version               print the version and exit 0\n"));
  free(text);
}

/* Distances worked by hand: one edit of each kind, a swap of neighbours
 * counted once, and the empty string. */
static void test_edit_distance(void **state) {
  (void)state;
  assert_int_equal(epm_opt_edit_distance("EPMOE_MODEL", "EPMOE_MODEL"), 0);
  assert_int_equal(epm_opt_edit_distance("EPMOE_MODLE", "EPMOE_MODEL"), 1);   /* swap */
  assert_int_equal(epm_opt_edit_distance("EPMOE_MODE", "EPMOE_MODEL"), 1);    /* insert */
  assert_int_equal(epm_opt_edit_distance("EPMOE_MODELS", "EPMOE_MODEL"), 1);  /* delete */
  assert_int_equal(epm_opt_edit_distance("EPMOE_MODAL", "EPMOE_MODEL"), 1);   /* substitute */
  assert_int_equal(epm_opt_edit_distance("EPMOE_SOCKETDIR", "EPMOE_SOCKET_DIR"), 1);
  assert_int_equal(epm_opt_edit_distance("kitten", "sitting"), 3);
  assert_int_equal(epm_opt_edit_distance("", "abc"), 3);
  assert_int_equal(epm_opt_edit_distance("abc", ""), 3);
  assert_int_equal(epm_opt_edit_distance("ab", "ba"), 1);
  assert_int_equal(epm_opt_edit_distance("flaw", "lawn"), 2); /* delete f, insert n */
  assert_int_equal(epm_opt_edit_distance("ca", "abc"), 3);    /* a restricted swap edits no letter twice */
}

static void test_check_env(void **state) {
  (void)state;
  static const char *const known[] = {"EPM_TEST_SIDE", NULL};
  /* the options' variables and the extra names pass; other prefixes are not looked at */
  char *ok[] = {(char *)"EPM_TEST_N=3", (char *)"EPM_TEST_BUF=x", (char *)"EPM_TEST_SIDE=1", (char *)"PATH=/bin",
                (char *)"EPM_TESTING", NULL};
  assert_int_equal(epm_opt_check_env(&cmd, "EPM_TEST_", known, ok), EPM_OK);
  assert_int_equal(epm_opt_check_env(&cmd, "EPM_TEST_", known, NULL), EPM_OK);
  /* a misspelling names the nearest known names, every one at that distance */
  char *typo[] = {(char *)"EPM_TEST_BUG=1", NULL};
  WANT_ERR(epm_opt_check_env(&cmd, "EPM_TEST_", known, typo),
           "unknown environment variable EPM_TEST_BUG (did you mean EPM_TEST_BUF?): not a setting of t");
  char *two_near[] = {(char *)"EPM_TEST_SIDF=", NULL}; /* one from SIDE; N and BUF are far */
  WANT_ERR(epm_opt_check_env(&cmd, "EPM_TEST_", known, two_near), "EPM_TEST_SIDF (did you mean EPM_TEST_SIDE?)");
  /* all unknown names in one message; one with nothing near has no guess */
  char *many[] = {(char *)"EPM_TEST_NN=1", (char *)"HOME=/", (char *)"EPM_TEST_FAR_AWAY_NAME=2", NULL};
  WANT_ERR(epm_opt_check_env(&cmd, "EPM_TEST_", known, many), "unknown environment variables EPM_TEST_NN (did you "
           "mean EPM_TEST_N?); EPM_TEST_FAR_AWAY_NAME: not a setting of t (t --help lists them)");
  /* a name without '=' counts as set */
  char *bare[] = {(char *)"EPM_TEST_X", NULL};
  WANT_ERR(epm_opt_check_env(&cmd, "EPM_TEST_", known, bare), "EPM_TEST_X");
  /* equal distance: both named, in table order */
  static const char *const pair[] = {"EPM_TEST_AB", "EPM_TEST_AC", NULL};
  char *amb[] = {(char *)"EPM_TEST_AA=1", NULL};
  WANT_ERR(epm_opt_check_env(&cmd, "EPM_TEST_", pair, amb), "(did you mean EPM_TEST_AB or EPM_TEST_AC?)");
}

static void test_errors_name_option_value_limit(void **state) {
  (void)state;
  WANT_ERR(PARSE("--bogus"), "unknown option '--bogus'");
  WANT_ERR(PARSE("--bogus=3"), "unknown option '--bogus'");
  WANT_ERR(PARSE("-z"), "unknown option '-z'");
  WANT_ERR(PARSE("--n"), "option --n needs a value", "an integer in [1, 100]");
  WANT_ERR(PARSE("--list"), "option --list needs a value", "list of integers in [0, 1024]");
  WANT_ERR(PARSE("--kind"), "option --kind needs a value", "one of cpu|cuda");
  WANT_ERR(PARSE("--n", "12x"), "bad value for --n", "'12x' is not an integer in [1, 100]");
  WANT_ERR(PARSE("--n=0"), "bad value for --n", "0 is outside [1, 100]");
  WANT_ERR(PARSE("--n=101"), "bad value for --n", "101 is outside [1, 100]");
  WANT_ERR(PARSE("--n="), "bad value for --n", "'' is not an integer in [1, 100]");
  WANT_ERR(PARSE("--n", " 5"), "bad value for --n", "' 5' is not an integer");
  WANT_ERR(PARSE("--n", "5 "), "bad value for --n", "'5 ' is not an integer");
  WANT_ERR(PARSE("--n", "0x10"), "bad value for --n", "'0x10' is not an integer");
  WANT_ERR(PARSE("--n", "4K"), "bad value for --n", "'4K' is not an integer in [1, 100]"); /* no KMG here */
  WANT_ERR(PARSE("--n", "99999999999999999999"), "bad value for --n", "99999999999999999999 is outside [1, 100]");
  WANT_ERR(PARSE("--small", "1025K"), "bad value for --small", "1025K is outside [-3, 1048576]");
  WANT_ERR(PARSE("--small", "2T"), "bad value for --small", "'2T' is not an integer in [-3, 1048576] (K/M/G");
  WANT_ERR(PARSE("--small", "-4"), "bad value for --small", "-4 is outside [-3, 1048576]");
  WANT_ERR(PARSE("--x", "nan"), "bad value for --x", "'nan' is not a finite number in [-1, 1]");
  WANT_ERR(PARSE("--x", "inf"), "bad value for --x", "'inf' is not a finite number");
  WANT_ERR(PARSE("--x", "1e999"), "bad value for --x", "'1e999' is not a finite number");
  WANT_ERR(PARSE("--x", "1e-400"), "bad value for --x", "'1e-400' is too small to represent");
  WANT_ERR(PARSE("--x", "0.5s"), "bad value for --x", "'0.5s' is not a number in [-1, 1]");
  WANT_ERR(PARSE("--x", ""), "bad value for --x", "'' is not a number");
  WANT_ERR(PARSE("--x", "1.0000001"), "bad value for --x", "1.0000001 is outside [-1, 1]");
  WANT_ERR(PARSE("--pos", "0"), "bad value for --pos", "0 is outside (0, 10]");
  WANT_ERR(PARSE("--u", "-1"), "bad value for --u", "'-1' is not an unsigned integer in [2, 18446744073709551615]");
  WANT_ERR(PARSE("--u", "1"), "bad value for --u", "1 is outside [2, 18446744073709551615]");
  WANT_ERR(PARSE("--u", "18446744073709551616"), "bad value for --u", "is outside [2, 18446744073709551615]");
  WANT_ERR(PARSE("--kind", "gpu"), "bad value for --kind", "'gpu' is not one of cpu|cuda");
  WANT_ERR(PARSE("--mode", "medium"), "bad value for --mode", "'medium' is not one of fast|slow");
  WANT_ERR(PARSE("--buf", "12345678"), "bad value for --buf", "is 8 characters; the limit is 7");
  WANT_ERR(PARSE("--json=1"), "option --json takes no value (got '--json=1')");
  WANT_ERR(PARSE("-qq"), "option --quiet takes no value (got '-qq')");
  WANT_ERR(PARSE("--list", "1,,2"), "bad value for --list", "value 2 of '1,,2'", "'' is not an integer in [0, 1024]");
  WANT_ERR(PARSE("--list", "1,2,"), "bad value for --list", "value 3 of '1,2,'");
  WANT_ERR(PARSE("--list", "1,2000"), "bad value for --list", "2000 is outside [0, 1024]");
  WANT_ERR(PARSE("--list", "1,2,3,4,5"), "bad value for --list", "has 5 values; at most 4");
}

static void test_bounds_edges(void **state) {
  (void)state;
  assert_int_equal(PARSE("--n", "1"), EPM_OK);
  assert_int_equal(o.n, 1);
  assert_int_equal(PARSE("--n", "+100"), EPM_OK);
  assert_int_equal(o.n, 100);
  assert_int_equal(PARSE("--small", "1M"), EPM_OK); /* 2^20 exactly: the max */
  assert_int_equal(o.small, 1 << 20);
  assert_int_equal(PARSE("--u", "18446744073709551615"), EPM_OK);
  assert_true(o.u == UINT64_MAX);
  assert_int_equal(PARSE("--u", "2"), EPM_OK);
  assert_true(o.u == 2);
  assert_int_equal(PARSE("--pos", "1e-300", "--x", "-1"), EPM_OK);
  assert_true(o.pos == 1e-300 && o.x == -1.0);
  assert_int_equal(PARSE("--buf", "1234567"), EPM_OK);
  assert_string_equal(o.buf, "1234567");
  /* the number parsers at the edges of int64 and with suffix overflow */
  int64_t v;
  uint64_t u;
  assert_int_equal(epm_opt_parse_i64("-9223372036854775808", 0, INT64_MIN, INT64_MAX, &v), EPM_OK);
  assert_true(v == INT64_MIN);
  assert_int_equal(epm_opt_parse_i64("9223372036854775807", 0, INT64_MIN, INT64_MAX, &v), EPM_OK);
  assert_true(v == INT64_MAX);
  assert_int_equal(epm_opt_parse_i64("9223372036854775808", 0, INT64_MIN, INT64_MAX, &v), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_opt_parse_i64("8589934592G", 1, INT64_MIN, INT64_MAX, &v), EPM_ERR_INVALID_ARG); /* 2^63 */
  assert_int_equal(epm_opt_parse_i64("8589934591G", 1, INT64_MIN, INT64_MAX, &v), EPM_OK);
  assert_true(v == INT64_MAX - ((INT64_C(1) << 30) - 1));
  assert_int_equal(epm_opt_parse_i64("-3k", 1, INT64_MIN, INT64_MAX, &v), EPM_OK);
  assert_true(v == -3072);
  assert_int_equal(epm_opt_parse_i64("K", 1, INT64_MIN, INT64_MAX, &v), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_opt_parse_i64(NULL, 0, 0, 1, &v), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_opt_parse_u64("17179869184G", 1, 0, UINT64_MAX, &u), EPM_ERR_INVALID_ARG); /* 2^64 */
  assert_int_equal(epm_opt_parse_u64("17179869183G", 1, 0, UINT64_MAX, &u), EPM_OK);
  assert_true(u == UINT64_MAX - ((UINT64_C(1) << 30) - 1));
  assert_int_equal(epm_opt_parse_u64("+4", 0, 0, UINT64_MAX, &u), EPM_ERR_INVALID_ARG);
}

static void test_lists(void **state) {
  (void)state;
  assert_int_equal(PARSE("--list", "3,0,1K,1000"), EPM_OK);
  assert_int_equal(o.list.n, 4);
  assert_true(o.list.v[0] == 3 && o.list.v[1] == 0 && o.list.v[2] == 1024 && o.list.v[3] == 1000);
  char buf[64];
  assert_string_equal(epm_opt_format(&topts[13], &o, buf, sizeof buf), "3,0,1024,1000");
  /* an element longer than any fixed buffer is read whole: 44 zeros then 7 */
  char longv[64];
  memset(longv, '0', 44);
  snprintf(longv + 44, sizeof longv - 44, "7,1");
  assert_int_equal(PARSE("--list", longv), EPM_OK);
  assert_int_equal(o.list.n, 2);
  assert_true(o.list.v[0] == 7 && o.list.v[1] == 1);
  memset(longv, '9', 40);
  longv[40] = '\0';
  WANT_ERR(PARSE("--list", longv), "bad value for --list", "is outside [0, 1024]");
  /* a second --list replaces the first (the first is freed, not leaked) */
  assert_int_equal(PARSE("--list", "7", "--list=8,9"), EPM_OK);
  assert_int_equal(o.list.n, 2);
  assert_true(o.list.v[0] == 8 && o.list.v[1] == 9);
  epm_opt_free(&cmd);
  assert_null(o.list.v);
  assert_int_equal(o.list.n, 0);
}

static void test_env_precedence(void **state) {
  (void)state;
  setenv("EPM_TEST_N", "42", 1);
  setenv("EPM_TEST_BUF", "env", 1);
  assert_int_equal(PARSE(NULL), EPM_OK);
  assert_int_equal(o.n, 42);
  assert_string_equal(o.buf, "env");
  assert_int_equal(src[0], EPM_OPT_SRC_ENV);
  assert_int_equal(src[6], EPM_OPT_SRC_ENV);
  /* the flag beats the environment */
  assert_int_equal(PARSE("--n=9", "--buf", "flag"), EPM_OK);
  assert_int_equal(o.n, 9);
  assert_string_equal(o.buf, "flag");
  assert_int_equal(src[0], EPM_OPT_SRC_FLAG);
  assert_int_equal(src[6], EPM_OPT_SRC_FLAG);
  /* a bad environment value is a usage error naming the variable */
  setenv("EPM_TEST_N", "abc", 1);
  WANT_ERR(PARSE(NULL), "bad value for --n (from EPM_TEST_N)", "'abc' is not an integer in [1, 100]");
  setenv("EPM_TEST_N", "500", 1);
  WANT_ERR(PARSE("--n", "3"), "--n (from EPM_TEST_N)", "500 is outside [1, 100]");
  unsetenv("EPM_TEST_N");
  unsetenv("EPM_TEST_BUF");
}

static void test_required(void **state) {
  (void)state;
  static const epm_opt_t req[] = {
      {.name = "must", .kind = EPM_OPT_INT64, .off = 0, .size = sizeof(int64_t), .min = 0, .max = 9,
       .flags = EPM_OPT_REQUIRED, .env = "EPM_TEST_MUST", .help = "needed"},
  };
  int64_t must = -1;
  epm_opt_group_t g = {NULL, req, 1, &must, NULL};
  epm_opt_cmd_t c = {.prog = "r", .synopsis = "usage: r --must N", .groups = &g, .ngroups = 1};
  char *argv[] = {(char *)"r", (char *)"--must", (char *)"3", NULL};
  unsetenv("EPM_TEST_MUST");
  want_error(epm_opt_parse(&c, 1, argv, &res), EPM_ERR_INVALID_ARG, "option --must is required",
             "an integer in [0, 9]", (const char *)NULL);
  assert_int_equal(epm_opt_parse(&c, 3, argv, &res), EPM_OK);
  assert_int_equal(must, 3);
  setenv("EPM_TEST_MUST", "4", 1); /* the environment satisfies it too */
  assert_int_equal(epm_opt_parse(&c, 1, argv, &res), EPM_OK);
  assert_int_equal(must, 4);
  unsetenv("EPM_TEST_MUST");
}

/* A table that lies about its field, repeats a name or has a bad default is
 * refused before anything is parsed. */
static void test_table_checks(void **state) {
  (void)state;
  int64_t i64 = 0;
  int i32 = 0;
  char *argv[] = {(char *)"b", NULL};
  const epm_opt_t too_wide[] = {{.name = "w", .kind = EPM_OPT_INT64, .off = 0, .size = sizeof(int), .min = 0,
                                 .max = (int64_t)INT_MAX + 1, .help = ""}};
  const epm_opt_t twice[] = {{.name = "a", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int), .help = ""},
                             {.name = "a", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int), .help = ""}};
  const epm_opt_t bad_def[] = {{.name = "d", .kind = EPM_OPT_INT64, .off = 0, .size = sizeof(int64_t), .def = "7",
                                .min = 0, .max = 5, .help = ""}};
  const epm_opt_t help_name[] = {{.name = "help", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int), .help = ""}};
  const epm_opt_t version_name[] = {
      {.name = "version", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int), .help = ""}};
  const epm_opt_t flag_env[] = {
      {.name = "f", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int), .env = "EPM_X", .help = ""}};
  struct {
    const epm_opt_t *t;
    size_t n;
    void *base;
    const char *why;
  } cases[] = {
      {too_wide, 1, &i32, "field is 4 bytes; this kind and range need 8"},
      {twice, 2, &i32, "option --a declared twice"},
      {bad_def, 1, &i64, "the default of --d: 7 is outside [0, 5]"},
      {help_name, 1, &i32, "bad name 'help'"},
      {version_name, 1, &i32, "bad name 'version'"},
      {flag_env, 1, &i32, "a flag has no default, environment or requirement"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    epm_opt_group_t g = {NULL, cases[k].t, cases[k].n, cases[k].base, NULL};
    epm_opt_cmd_t c = {.prog = "b", .synopsis = "usage: b", .groups = &g, .ngroups = 1};
    want_error(epm_opt_parse(&c, 1, argv, &res), EPM_ERR_INTERNAL, cases[k].why, (const char *)NULL);
  }
}

static void test_help_generated(void **state) {
  (void)state;
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_non_null(f);
  o.small = 77; /* not shown: no SHOW_INIT */
  epm_opt_help(f, &cmd);
  fclose(f);
  const char *pieces[] = {
      "usage: t [options] [ARG]\n", "About text.", "test options:", "Epilog text.",
      "  --n N ",           /* placeholder from the kind */
      "a count (default 5; env EPM_TEST_N)",
      "  -s, --small N ", "  --pos S ", "  --name NAME ",
      "a name\n                          second line", /* continuation lines indented to the help column */
      "  --kind cpu|cuda ", "(default cpu)", "  --mode fast|slow ", "(default fast)",
      "  --list a,b,... ", "  -q, --quiet ", "  --all ", "  -h, --help ", "(default abc; env EPM_TEST_BUF)",
  };
  for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++)
    if (!strstr(text, pieces[i])) fail_msg("--help lacks '%s':\n%s", pieces[i], text);
  for (size_t i = 0; i < NT; i++) { /* every option of the table, once */
    char want[64];
    snprintf(want, sizeof want, "--%s ", topts[i].name);
    const char *at = strstr(text, want);
    if (!at) {
      snprintf(want, sizeof want, "--%s\n", topts[i].name);
      at = strstr(text, want);
    }
    if (!at) fail_msg("--help does not list --%s", topts[i].name);
    assert_null(strstr(at + 1, want));
  }
  assert_null(strstr(text, "77"));
  free(text);

  /* SHOW_INIT shows the value the command set in code; usage is the synopsis */
  static const epm_opt_t shown[] = {{.name = "timeout", .kind = EPM_OPT_INT64, .off = 0, .size = sizeof(int),
                                     .min = 1, .max = 1000000, .flags = EPM_OPT_SHOW_INIT, .arg = "MS",
                                     .help = "per call"}};
  int timeout = 2500;
  epm_opt_group_t g = {NULL, shown, 1, &timeout, NULL};
  epm_opt_cmd_t c = {.prog = "s", .synopsis = "usage: s [--timeout MS]", .groups = &g, .ngroups = 1};
  f = open_memstream(&text, &len);
  epm_opt_help(f, &c);
  epm_opt_usage(f, &c);
  fclose(f);
  assert_non_null(strstr(text, "  --timeout MS            per call (default 2500)\n"));
  assert_non_null(strstr(text, "usage: s [--timeout MS]\n(s --help lists every option)\n"));
  free(text);
}

static void test_format(void **state) {
  (void)state;
  char buf[64];
  assert_int_equal(PARSE("--kind", "cuda", "--x", "0.125", "--n", "64", "--u", "18446744073709551615"), EPM_OK);
  assert_string_equal(epm_opt_format(&topts[8], &o, buf, sizeof buf), "cuda");
  assert_string_equal(epm_opt_format(&topts[3], &o, buf, sizeof buf), "0.125");
  assert_string_equal(epm_opt_format(&topts[0], &o, buf, sizeof buf), "64");
  assert_string_equal(epm_opt_format(&topts[2], &o, buf, sizeof buf), "18446744073709551615");
  assert_string_equal(epm_opt_format(&topts[6], &o, buf, sizeof buf), "abc");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
      cmocka_unit_test_setup_teardown(test_both_spellings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_double_dash_and_args, setup, teardown),
      cmocka_unit_test_setup_teardown(test_help_first, setup, teardown),
      cmocka_unit_test_setup_teardown(test_version, setup, teardown),
      cmocka_unit_test_setup_teardown(test_edit_distance, setup, teardown),
      cmocka_unit_test_setup_teardown(test_check_env, setup, teardown),
      cmocka_unit_test_setup_teardown(test_errors_name_option_value_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bounds_edges, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lists, setup, teardown),
      cmocka_unit_test_setup_teardown(test_env_precedence, setup, teardown),
      cmocka_unit_test_setup_teardown(test_required, setup, teardown),
      cmocka_unit_test_setup_teardown(test_table_checks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_help_generated, setup, teardown),
      cmocka_unit_test_setup_teardown(test_format, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
