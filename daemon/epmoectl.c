/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl — the operator's and developer's command line. Dispatches to one
 * file per subcommand (daemon/ctl_<name>.c) through a plain table, and owns
 * the exit-code policy of a bad command line (ctl.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

typedef struct {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *help;
} ctl_cmd_t;

static const ctl_cmd_t commands[] = {
    {"plan", epm_ctl_plan, "per-rank buffer sizes and limits of one EP step (offline)"},
    {"ref", epm_ctl_ref, "run one MoE layer on the CPU reference; print checksum and timing"},
    {"step", epm_ctl_step, "one EP step across the ranks of an mpirun job (in-process, no daemon)"},
    {"ckpt", epm_ctl_ckpt, "make, inspect or load an NVFP4 ModelOpt-style checkpoint directory"},
    {"placement", epm_ctl_placement, "balanced expert placement map from observed loads (JSON)"},
    {"status", epm_ctl_status, "print a daemon's status (text or --json)"},
    {"stats", epm_ctl_stats, "print a daemon's counters (INFO text, --json or --prometheus)"},
    {"health", epm_ctl_health, "probe health: exit 0 healthy, 1 not ready, 2 failed"},
    {"forward", epm_ctl_forward, "drive one collective FORWARD through daemons' sockets"},
    {"bench", epm_ctl_bench, "drive FORWARDs for a duration; print tokens/s and step latency"},
    {"shutdown", epm_ctl_shutdown, "ask daemons to drain and exit"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f,
          "usage: epmoectl <command> [options]    (epmoectl <command> --help for details)\n\n"
          "commands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
  fprintf(f,
          "\nOptions take '--name VALUE' or '--name=VALUE'; '--' ends them.\n"
          "Exit: 0 ok, 1 failure, %d bad command line (health: 2 failed).\n"
          "\nepmoe %s\n",
          EPM_EXIT_USAGE, EPMOE_VERSION_STRING);
}

static int usage_error(const epm_opt_cmd_t *cmd, const char *msg) {
  fprintf(stderr, "%s: %s\n", cmd->prog, msg);
  epm_opt_usage(stderr, cmd);
  return EPM_EXIT_USAGE;
}

int epm_ctl_args(const epm_opt_cmd_t *cmd, int argc, char **argv, epm_opt_result_t *res) {
  epm_status_t st = epm_opt_parse(cmd, argc, argv, res);
  if (st == EPM_ERR_INVALID_ARG) return usage_error(cmd, epm_last_error());
  if (st != EPM_OK) { /* no memory, or a bug in the command's table */
    fprintf(stderr, "%s: %s\n", cmd->prog, epm_last_error());
    return 1;
  }
  if (res->help) {
    epm_opt_help(stdout, cmd);
    return 0;
  }
  if (res->version) {
    printf("epmoectl %s\n", EPMOE_VERSION_STRING);
    return 0;
  }
  return -1;
}

int epm_ctl_usage(const epm_opt_cmd_t *cmd, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return usage_error(cmd, msg);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return EPM_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("epmoectl %s\n", EPMOE_VERSION_STRING);
    return 0;
  }
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "epmoectl: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return EPM_EXIT_USAGE;
}
