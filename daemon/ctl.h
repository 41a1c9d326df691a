/* SPDX-License-Identifier: Apache-2.0 */
/* ctl.h — epmoectl subcommands. Each lives in daemon/ctl_<name>.c and has the
 * signature int epm_ctl_<name>(int argc, char **argv), argv[0] being the
 * subcommand name; epmoectl.c lists them in one table.
 *
 * Every subcommand parses its argv with the one option parser (cli_opt.h)
 * through epm_ctl_args(), so the syntax, --help and the exit codes are the
 * same everywhere. Exit codes: 0 ok, 1 runtime failure (or a check that
 * failed), EPM_EXIT_USAGE (64) bad command line; `health` also uses 2. */
#ifndef EPMOE_CTL_H
#define EPMOE_CTL_H

#include <stddef.h>

#include "cli_opt.h"

int epm_ctl_plan(int argc, char **argv);
int epm_ctl_ref(int argc, char **argv);
int epm_ctl_step(int argc, char **argv);
int epm_ctl_ckpt(int argc, char **argv);
int epm_ctl_placement(int argc, char **argv);
int epm_ctl_status(int argc, char **argv);
int epm_ctl_stats(int argc, char **argv);
int epm_ctl_health(int argc, char **argv);
int epm_ctl_forward(int argc, char **argv);
int epm_ctl_bench(int argc, char **argv);
int epm_ctl_shutdown(int argc, char **argv);

/* Parse a subcommand's argv with cmd. Returns -1 to go on, or the exit code
 * the subcommand returns at once: 0 after --help (printed to stdout) or
 * --version ("epmoectl VERSION" on stdout),
 * EPM_EXIT_USAGE after a bad command line ("<prog>: <why>" and the synopsis
 * printed to stderr), 1 when out of memory. */
int epm_ctl_args(const epm_opt_cmd_t *cmd, int argc, char **argv, epm_opt_result_t *res);
/* A usage error found after parsing (inconsistent values, an unknown preset):
 * prints "<prog>: <message>" and the synopsis to stderr; returns EPM_EXIT_USAGE. */
int epm_ctl_usage(const epm_opt_cmd_t *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
