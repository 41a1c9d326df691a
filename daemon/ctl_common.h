/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_common.h — what the daemon-facing epmoectl subcommands share: picking
 * sockets (--rank R | --all, --socket-dir), timeouts, the token list, and the
 * deterministic global token set that `forward` and `bench` send. */
#ifndef EPMOE_CTL_COMMON_H
#define EPMOE_CTL_COMMON_H

#include <stdint.h>
#include <stdio.h>

#include "cli_opt.h"
#include "epmoe/client.h"

typedef struct {
  char socket_dir[256];
  int rank;       /* -1: all */
  int timeout_ms;
  int64_t expect_uid; /* -1: the socket directory's owner */
} ctl_target_opts_t;

/* Defaults: $EPMOE_SOCKET_DIR, else $XDG_RUNTIME_DIR/epmoe, else /run/epmoe;
 * all ranks; this subcommand's timeout; the server uid from the directory.
 * Call before parsing. */
void ctl_target_defaults(ctl_target_opts_t *o, int timeout_ms);
/* The option group of --socket-dir, --rank, --all and --timeout into o, for
 * a subcommand's epm_opt_cmd_t. */
epm_opt_group_t ctl_target_group(ctl_target_opts_t *o);

typedef struct {
  int rank;
  char path[300];
} ctl_sock_t;

/* Connect to a daemon socket with o's timeout and server-uid check. */
epm_status_t ctl_connect(const ctl_target_opts_t *o, const char *path, epm_client_t **c);

/* The sockets named by o, sorted by rank. Returns the count (>= 1), or -1
 * after printing why (none found, bad rank). *out malloc'd. */
int ctl_find_sockets(const ctl_target_opts_t *o, ctl_sock_t **out);

/* --json of every subcommand that selects daemons (status, stats, health,
 * shutdown): ONE shape whatever the selection (--rank R, --all, one daemon
 * or many), so a script parses it the same way every time:
 *   {"ranks":[{"rank":0,...},{"rank":1,...}]}
 * in rank order; a daemon that could not be asked is {"rank":R,"error":"..."}.
 * The document is a jansson json_t; ctl_json_rank steals obj. */
typedef struct json_t ctl_json_t;
ctl_json_t *ctl_json_ranks(void);
/* Append rank's entry: "rank" first, then obj's members (obj may be NULL);
 * with error != NULL, {"rank":R,"error":error} instead of obj. */
void ctl_json_rank(ctl_json_t *doc, int rank, ctl_json_t *obj, const char *error);
/* Print doc on one line of stdout and free it. */
void ctl_json_print(ctl_json_t *doc);

/* --tokens-per-rank of forward and bench: one count per daemon, in rank order. */
#define CTL_TOKENS_OPT(type, field)                                                              \
  {.name = "tokens-per-rank", .kind = EPM_OPT_LIST, EPM_OPT_AT(type, field), .min = 0,           \
   .max = (int64_t)1 << 30, .max_items = 1 << 20, .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED,        \
   .help = "tokens each rank sends, in rank order (0 joins the step with no work)"}

/* Element (token t, column j) of the global random input, independent of how
 * tokens are split over ranks. bf16 bits for x; fp32 for logits. */
uint16_t ctl_rand_x(uint64_t seed, int64_t t, int64_t j);
float ctl_rand_logit(uint64_t seed, int64_t t, int64_t j);

int ctl_cmp_double(const void *a, const void *b);

/* A per-expert load vector read from a file (ctl_placement.c): saved STATS
 * JSON of the daemons (summed over ranks), a placement file's "load", or a
 * JSON array of numbers. *load malloc'd [*n]; *ranks (may be NULL) = STATS
 * objects read. Returns 0, or -1 after printing why. */
int ctl_load_file(const char *path, double **load, int64_t *n, int *ranks);

#endif
