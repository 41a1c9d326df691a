/* epmoectl shutdown — ask the selected daemons to drain and exit. One rank's
 * SHUTDOWN drains the whole group (the step coordinator tells every rank), so
 * --rank 0 is enough; --all (default) asks every rank. */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

int epm_ctl_shutdown(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  int rc = 0, n;
  ctl_target_defaults(&o, 5000);
  for (int i = 1; i < argc; i++) {
    int k = ctl_target_opt(&o, argc, argv, &i, "shutdown");
    if (k == 2) return 2;
    if (k) continue;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: epmoectl shutdown [--rank R | --all] [--socket-dir DIR]\n%s", ctl_target_help);
      return 0;
    }
    fprintf(stderr, "epmoectl shutdown: unknown option '%s' (see --help)\n", argv[i]);
    return 2;
  }
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 1;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    epm_status_t st = epm_client_connect(socks[i].path, o.timeout_ms, &c);
    if (st == EPM_OK) st = epm_client_shutdown(c);
    if (st == EPM_OK) printf("rank %d: shutting down\n", socks[i].rank);
    else if (i > 0 && (st == EPM_ERR_IO)) printf("rank %d: already gone\n", socks[i].rank);
    else {
      fprintf(stderr, "epmoectl shutdown: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = 1;
    }
    epm_client_close(c);
  }
  free(socks);
  return rc;
}
