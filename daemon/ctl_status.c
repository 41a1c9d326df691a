/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl status — each selected daemon's STATUS: Redis-INFO-style text, or
 * with --json {"ranks":[{"rank":R,...STATUS...},...]} (ctl_common.h). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

static const epm_opt_t status_opts[] = {
    {.name = "json", .kind = EPM_OPT_FLAG, .off = 0, .size = sizeof(int),
     .help = "{\"ranks\":[{\"rank\":R,...}]}, one entry per selected rank"},
};

int epm_ctl_status(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  epm_opt_result_t res;
  int json = 0, rc, n;
  ctl_target_defaults(&o, 5000);
  epm_opt_group_t g[] = {{NULL, status_opts, 1, &json, NULL}, ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {.prog = "epmoectl status",
                       .synopsis = "usage: epmoectl status [--json] [--rank R | --all] [--socket-dir DIR]",
                       .about = "Each selected daemon's STATUS: Redis-INFO-style text, or JSON.",
                       .epilog = "Exit: 0 ok, 1 a daemon could not be asked, 64 usage error.",
                       .groups = g,
                       .ngroups = 2};
  if ((rc = epm_ctl_args(&cmd, argc, argv, &res)) >= 0) return rc;
  rc = 0;
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 1;
  ctl_json_t *doc = json ? ctl_json_ranks() : NULL;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    char *text = NULL;
    if (ctl_connect(&o, socks[i].path, &c) != EPM_OK ||
        epm_client_status(c, json, &text) != EPM_OK) {
      fprintf(stderr, "epmoectl status: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = 1;
      if (doc) ctl_json_rank(doc, socks[i].rank, NULL, epm_last_error());
    } else if (doc) {
      json_error_t je;
      json_t *obj = json_loads(text, 0, &je);
      if (!obj) rc = 1;
      ctl_json_rank(doc, socks[i].rank, obj, obj ? NULL : "the daemon's STATUS is not JSON");
    } else {
      /* the INFO text uses \r\n like Redis; print it as plain lines */
      printf("%s", i ? "\n" : "");
      for (char *p = text; *p; p++)
        if (*p != '\r') putchar(*p);
    }
    free(text);
    epm_client_close(c);
  }
  if (doc) ctl_json_print(doc);
  free(socks);
  return rc;
}
