/* ctl_common.h — what the daemon-facing epmoectl subcommands share: picking
 * sockets (--rank R | --all, --socket-dir), timeouts, token lists, and the
 * deterministic global token set that `forward` and `bench` send. */
#ifndef EPMOE_CTL_COMMON_H
#define EPMOE_CTL_COMMON_H

#include <stdint.h>
#include <stdio.h>

#include "epmoe/client.h"

typedef struct {
  char socket_dir[256];
  int rank;       /* -1: all */
  int timeout_ms;
} ctl_target_opts_t;

/* Defaults: $EPMOE_SOCKET_DIR, else $XDG_RUNTIME_DIR/epmoe, else /run/epmoe; all ranks. */
void ctl_target_defaults(ctl_target_opts_t *o, int timeout_ms);
/* Consume argv[*i] (and its value) if it is --socket-dir/--rank/--all/--timeout.
 * Returns 1 consumed, 0 not ours, 2 usage error (printed). */
int ctl_target_opt(ctl_target_opts_t *o, int argc, char **argv, int *i, const char *cmd);
extern const char ctl_target_help[];

typedef struct {
  int rank;
  char path[300];
} ctl_sock_t;

/* The sockets named by o, sorted by rank. Returns the count (>= 1), or -1
 * after printing why (none found, bad rank). *out malloc'd. */
int ctl_find_sockets(const ctl_target_opts_t *o, ctl_sock_t **out);

/* "64,0,17" -> counts; returns n or -1 (printed). */
int ctl_parse_counts(const char *flag, const char *s, int64_t **out);

/* Element (token t, column j) of the global random input, independent of how
 * tokens are split over ranks. bf16 bits for x; fp32 for logits. */
uint16_t ctl_rand_x(uint64_t seed, int64_t t, int64_t j);
float ctl_rand_logit(uint64_t seed, int64_t t, int64_t j);

double ctl_now_s(void);
int ctl_cmp_double(const void *a, const void *b);

#endif
