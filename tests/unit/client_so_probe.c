/* SPDX-License-Identifier: Apache-2.0 */
/* client_so_probe.c — a program an engine would write, linked against the
 * client shared library only: connecting to a socket that does not exist must
 * fail with EPM_ERR_IO/SYSTEM and a message naming the path (base's error text
 * travels inside the .so). */
#include <stdio.h>
#include <string.h>

#include "epmoe/client.h"

int main(void) {
  const char *path = "/nonexistent-epmoe-dir/epmoe.0.sock";
  epm_client_t *c = NULL;
  epm_status_t st = epm_client_connect(path, 100, &c);
  if (st == EPM_OK || c != NULL) {
    fprintf(stderr, "client_so_probe: connect to %s succeeded\n", path);
    return 1;
  }
  if (!strstr(epm_last_error(), path)) {
    fprintf(stderr, "client_so_probe: the error does not name the path: %s\n", epm_last_error());
    return 1;
  }
  printf("client_so_probe: %s: %s (as expected)\n", epm_status_name(st), epm_last_error());
  return 0;
}
