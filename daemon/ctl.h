/* ctl.h — epmoectl subcommands. Each lives in daemon/ctl_<name>.c and has the
 * signature int epm_ctl_<name>(int argc, char **argv), argv[0] being the
 * subcommand name. Exit codes: 0 ok, 1 failure/check failed, 2 usage error. */
#ifndef EPMOE_CTL_H
#define EPMOE_CTL_H

#include <stddef.h>

#define EPM_CTL_COMMANDS(X)                                                              \
  X(plan, "per-rank buffer sizes and limits of one EP step (offline)")                  \
  X(ref, "run one MoE layer on the CPU reference; print checksum and timing")           \
  X(step, "one EP step across the ranks of an mpirun job (in-process, no daemon)")      \
  X(ckpt, "make or inspect an NVFP4 ModelOpt-style checkpoint directory")              \
  X(status, "print a daemon's status (text or --json)")                                 \
  X(stats, "print a daemon's counters (INFO text or --prometheus)")                     \
  X(health, "probe health: exit 0 healthy, 1 not ready, 2 failed")                      \
  X(forward, "drive one collective FORWARD through daemons' sockets")                   \
  X(bench, "drive FORWARDs for a duration; print tokens/s and step latency")            \
  X(shutdown, "ask daemons to drain and exit")

#define EPM__CTL_DECL(name, help) int epm_ctl_##name(int argc, char **argv);
EPM_CTL_COMMANDS(EPM__CTL_DECL)
#undef EPM__CTL_DECL

/* Shared by subcommands: strict integer parse "123", "4K", "2M", "1G";
 * returns 0 on success, prints "epmoectl: bad value for --flag: ..." otherwise. */
int epm_ctl_parse_i64(const char *flag, const char *s, long long min, long long max, long long *out);
/* Split argv[*i] into a flag name and its value: "--name=value" or "--name value"
 * (then *i advances). Returns 0, or prints one line naming `cmd` and returns 2. */
int epm_ctl_flag_value(const char *cmd, int argc, char **argv, int *i, char *flag, size_t flag_size,
                       const char **val);

#endif
