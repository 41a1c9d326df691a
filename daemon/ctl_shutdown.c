/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl shutdown — ask the selected daemons to drain and exit. One rank's
 * SHUTDOWN drains the whole group (the step coordinator tells every rank), so
 * --rank 0 is enough; --all (default) asks every rank. --json prints
 * {"ranks":[{"rank":R,"result":"shutting down|already gone"}]}. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

static const epm_opt_t shutdown_opts[] = {
    {.name = "json", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int),
     .help = "{\"ranks\":[{\"rank\":R,\"result\":...}]}"},
};

int epm_ctl_shutdown(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  epm_opt_result_t res;
  int rc, n, json = 0;
  ctl_target_defaults(&o, 5000);
  epm_opt_group_t g[] = {{NULL, shutdown_opts, 1, &json, NULL}, ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {.prog = "epmoectl shutdown",
                       .synopsis = "usage: epmoectl shutdown [--rank R | --all] [--socket-dir DIR] [--json]",
                       .about = "Ask the selected daemons to drain and exit; one rank's SHUTDOWN drains the\n"
                                "whole group, so --rank 0 is enough.",
                       .epilog = "Exit: 0 ok, 1 a daemon could not be asked, 64 usage error.",
                       .groups = g,
                       .ngroups = 2};
  if ((rc = epm_ctl_args(&cmd, argc, argv, &res)) >= 0) return rc;
  rc = 0;
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 1;
  ctl_json_t *doc = json ? ctl_json_ranks() : NULL;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    const char *result = NULL;
    epm_status_t st = ctl_connect(&o, socks[i].path, &c);
    if (st == EPM_OK) st = epm_client_shutdown(c);
    if (st == EPM_OK) result = "shutting down";
    else if (i > 0 && (st == EPM_ERR_IO)) result = "already gone"; /* drained by rank 0's request */
    else {
      fprintf(stderr, "epmoectl shutdown: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = 1;
    }
    if (doc) ctl_json_rank(doc, socks[i].rank, result ? json_pack("{s:s}", "result", result) : NULL,
                           result ? NULL : epm_last_error());
    else if (result) printf("rank %d: %s\n", socks[i].rank, result);
    epm_client_close(c);
  }
  if (doc) ctl_json_print(doc);
  free(socks);
  return rc;
}
