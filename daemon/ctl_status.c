/* epmoectl status — each selected daemon's STATUS: Redis-INFO-style text, or
 * with --json one JSON object per rank (a JSON array with several ranks). */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

int epm_ctl_status(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  int json = 0, rc = 0, n;
  ctl_target_defaults(&o, 5000);
  for (int i = 1; i < argc; i++) {
    int k = ctl_target_opt(&o, argc, argv, &i, "status");
    if (k == 2) return 2;
    if (k) continue;
    if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: epmoectl status [--json] [--rank R | --all] [--socket-dir DIR]\n%s", ctl_target_help);
      return 0;
    } else {
      fprintf(stderr, "epmoectl status: unknown option '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 1;
  if (json && n > 1) printf("[");
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    char *text = NULL;
    if (epm_client_connect(socks[i].path, o.timeout_ms, &c) != EPM_OK ||
        epm_client_status(c, json, &text) != EPM_OK) {
      fprintf(stderr, "epmoectl status: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = 1;
      if (json && n > 1) printf("%snull", i ? "," : "");
    } else if (json) {
      printf("%s%s", n > 1 && i ? "," : "", text);
    } else {
      /* the INFO text uses \r\n like Redis; print it as plain lines */
      printf("%s", i ? "\n" : "");
      for (char *p = text; *p; p++)
        if (*p != '\r') putchar(*p);
    }
    free(text);
    epm_client_close(c);
  }
  if (json) printf(n > 1 ? "]\n" : "\n");
  free(socks);
  return rc;
}
