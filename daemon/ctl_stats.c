/* epmoectl stats — each selected daemon's counters: INFO text (default),
 * --json, or --prometheus (text exposition 0.0.4, every series labelled with
 * its rank, so the outputs of several ranks concatenate into one scrape). */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

int epm_ctl_stats(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  epm_text_format_t fmt = EPM_FMT_TEXT;
  int rc = 0, n;
  ctl_target_defaults(&o, 5000);
  for (int i = 1; i < argc; i++) {
    int k = ctl_target_opt(&o, argc, argv, &i, "stats");
    if (k == 2) return 2;
    if (k) continue;
    if (strcmp(argv[i], "--json") == 0) fmt = EPM_FMT_JSON;
    else if (strcmp(argv[i], "--prometheus") == 0) fmt = EPM_FMT_PROMETHEUS;
    else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: epmoectl stats [--prometheus | --json] [--rank R | --all] [--socket-dir DIR]\n%s", ctl_target_help);
      return 0;
    } else {
      fprintf(stderr, "epmoectl stats: unknown option '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 1;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    char *text = NULL;
    if (epm_client_connect(socks[i].path, o.timeout_ms, &c) != EPM_OK || epm_client_stats(c, fmt, &text) != EPM_OK) {
      fprintf(stderr, "epmoectl stats: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = 1;
    } else {
      for (char *p = text; *p; p++)
        if (*p != '\r') putchar(*p);
      if (fmt == EPM_FMT_JSON) putchar('\n');
      else if (fmt == EPM_FMT_TEXT && i + 1 < n) putchar('\n');
    }
    free(text);
    epm_client_close(c);
  }
  free(socks);
  return rc;
}
