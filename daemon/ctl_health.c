/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl health — a probe: exit 0 when every selected daemon is healthy,
 * 1 when one is not ready yet (loading, warming up, draining), 2 when one has
 * failed or cannot be reached, 64 on a bad command line. Fast by default (2 s
 * timeout) so it fits a Kubernetes exec probe's timeoutSeconds. --json prints
 * {"ranks":[{"rank":R,"health":"ok|not-ready|failed","reason":"..."}]}. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

typedef struct {
  int quiet, json;
} health_opts_t;

static const epm_opt_t health_opts[] = {
    {.name = "quiet", .short_name = 'q', .kind = EPM_OPT_FLAG, EPM_OPT_AT(health_opts_t, quiet),
     .help = "no per-rank lines; the exit code is the answer"},
    {.name = "json", .kind = EPM_OPT_FLAG, EPM_OPT_AT(health_opts_t, json),
     .help = "{\"ranks\":[{\"rank\":R,\"health\":...,\"reason\":...}]}"},
};

int epm_ctl_health(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  epm_opt_result_t res;
  health_opts_t ho = {0, 0};
  int worst = 0, n, rc;
  ctl_target_defaults(&o, 2000);
  epm_opt_group_t g[] = {{NULL, health_opts, 2, &ho, NULL}, ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {.prog = "epmoectl health",
                       .synopsis = "usage: epmoectl health [--rank R | --all] [--socket-dir DIR] [--quiet | --json]",
                       .about = "A probe of every selected daemon; one line per rank unless --quiet.",
                       .epilog = "Exit: 0 healthy, 1 not ready (loading, warming up, draining), 2 failed or\n"
                                 "unreachable, 64 usage error.",
                       .groups = g,
                       .ngroups = 2};
  if ((rc = epm_ctl_args(&cmd, argc, argv, &res)) >= 0) return rc;
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 2;
  ctl_json_t *doc = ho.json ? ctl_json_ranks() : NULL;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    epm_health_t h = EPM_HEALTH_FAILED;
    char reason[256] = "";
    int code;
    if (ctl_connect(&o, socks[i].path, &c) != EPM_OK ||
        epm_client_health(c, &h, reason, sizeof reason) != EPM_OK) {
      snprintf(reason, sizeof reason, "unreachable: %s", epm_last_error());
      h = EPM_HEALTH_FAILED;
    }
    epm_client_close(c);
    code = h == EPM_HEALTH_OK ? 0 : h == EPM_HEALTH_NOT_READY ? 1 : 2;
    if (code > worst) worst = code;
    if (doc)
      ctl_json_rank(doc, socks[i].rank, json_pack("{s:s,s:s}", "health", epm_health_name(h), "reason", reason), NULL);
    else if (!ho.quiet)
      printf("rank %d: %s%s%s%s\n", socks[i].rank, epm_health_name(h), reason[0] ? " (" : "", reason,
             reason[0] ? ")" : "");
  }
  if (doc) ctl_json_print(doc);
  free(socks);
  return worst;
}
