/* epmoectl health — a probe: exit 0 when every selected daemon is healthy,
 * 1 when one is not ready yet (loading, warming up, draining), 2 when one has
 * failed or cannot be reached. Fast by default (2 s timeout) so it fits a
 * Kubernetes exec probe's timeoutSeconds. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

int epm_ctl_health(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  int worst = 0, n, quiet = 0;
  ctl_target_defaults(&o, 2000);
  for (int i = 1; i < argc; i++) {
    int k = ctl_target_opt(&o, argc, argv, &i, "health");
    if (k == 2) return 2;
    if (k) continue;
    if (strcmp(argv[i], "--quiet") == 0 || strcmp(argv[i], "-q") == 0) quiet = 1;
    else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: epmoectl health [--rank R | --all] [--socket-dir DIR] [--quiet]\n"
             "exit 0 healthy, 1 not ready, 2 failed or unreachable\n%s", ctl_target_help);
      return 0;
    } else {
      fprintf(stderr, "epmoectl health: unknown option '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 2;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    epm_health_t h = EPM_HEALTH_FAILED;
    char reason[256] = "";
    int code;
    if (epm_client_connect(socks[i].path, o.timeout_ms, &c) != EPM_OK ||
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
