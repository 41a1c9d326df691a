/* SPDX-License-Identifier: Apache-2.0 */
/* client_app.c — what an inference engine builds against an installed epmoe:
 * the client library alone. Connecting to a socket that does not exist must
 * fail with a status (not crash, not exit) and a message naming the path. */
#include <stdio.h>
#include <string.h>

#include <epmoe/client.h>

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "/nonexistent-epmoe-install-test/epmoe.0.sock";
  epm_client_t *c = NULL;
  epm_status_t st = epm_client_connect(path, 200, &c);
  if (st == EPM_OK || c != NULL) {
    fprintf(stderr, "client_app: connecting to %s succeeded\n", path);
    return 1;
  }
  if (!strstr(epm_last_error(), path)) {
    fprintf(stderr, "client_app: the error does not name %s: %s\n", path, epm_last_error());
    return 1;
  }
  printf("client_app: %s: %s (as expected)\n", epm_status_name(st), epm_last_error());
  return 0;
}
