/* epmoectl health — a probe: exit 0 when every selected daemon is healthy,
 * 1 when one is not ready yet (loading, warming up, draining), 2 when one has
 * failed or cannot be reached, 64 on a bad command line. Fast by default (2 s
 * timeout) so it fits a Kubernetes exec probe's timeoutSeconds. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

static const epm_opt_t health_opts[] = {
    {.name = "quiet", .short_name = 'q', .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int),
     .help = "no per-rank lines; the exit code is the answer"},
};

int epm_ctl_health(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  epm_opt_result_t res;
  int worst = 0, n, quiet = 0, rc;
  ctl_target_defaults(&o, 2000);
  epm_opt_group_t g[] = {{NULL, health_opts, 1, &quiet, NULL}, ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {.prog = "epmoectl health",
                       .synopsis = "usage: epmoectl health [--rank R | --all] [--socket-dir DIR] [--quiet]",
                       .about = "A probe of every selected daemon; one line per rank unless --quiet.",
                       .epilog = "Exit: 0 healthy, 1 not ready (loading, warming up, draining), 2 failed or\n"
                                 "unreachable, 64 usage error.",
                       .groups = g,
                       .ngroups = 2};
  if ((rc = epm_ctl_args(&cmd, argc, argv, &res)) >= 0) return rc;
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 2;
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
    if (!quiet) printf("rank %d: %s%s%s%s\n", socks[i].rank, epm_health_name(h), reason[0] ? " (" : "", reason,
                       reason[0] ? ")" : "");
  }
  free(socks);
  return worst;
}
