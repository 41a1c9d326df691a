/* SPDX-License-Identifier: Apache-2.0 */
/* test_sockdir.c — the socket directory policy (daemon/srv_sockdir.c) as any
 * user, in a scratch directory: a missing directory is made 0750 and removed
 * again; a directory of ours keeps its mode; a shared 1777 parent keeps its
 * mode and gets our own epmoe-<uid>; a symlinked directory, a group-writable
 * one, a regular file or a symlink at the socket path are refused and left
 * alone; a stale socket of ours is replaced, a live one refused; at exit only
 * our own socket goes (not one that replaced it). The cases that need a
 * second user are tests/daemon/sockdir_perm.sh (root). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "srv.h"

static char root[256];

static int setup(void **state) {
  (void)state;
  snprintf(root, sizeof root, "/tmp/epm_sockdir.XXXXXX");
  if (!mkdtemp(root)) return -1;
  umask(022);
  return 0;
}

static int teardown(void **state) {
  char cmd[300];
  (void)state;
  snprintf(cmd, sizeof cmd, "rm -rf %s", root);
  return system(cmd) == 0 ? 0 : -1;
}

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", root, name); }

static mode_t mode_of(const char *p) {
  struct stat st;
  assert_int_equal(lstat(p, &st), 0);
  return st.st_mode & 07777;
}

static void open_ok(srv_sockdir_t *sd, const char *dir, int *fd) {
  epm_status_t st = srv_sockdir_open(sd, dir, "", 0, fd);
  if (st != EPM_OK) fail_msg("srv_sockdir_open(%s): %s", dir, epm_last_error());
  assert_true(*fd >= 0);
}

static void refused(const char *dir, const char *why) {
  srv_sockdir_t sd;
  int fd = 123;
  assert_int_not_equal(srv_sockdir_open(&sd, dir, "", 0, &fd), EPM_OK);
  if (!strstr(epm_last_error(), why)) fail_msg("refusal '%s' does not say '%s'", epm_last_error(), why);
  assert_int_equal(fd, -1);
}

static void test_missing_dir_made_and_removed(void **state) {
  (void)state;
  char d[300], sock[320];
  srv_sockdir_t sd;
  int fd;
  path_of(d, sizeof d, "made");
  open_ok(&sd, d, &fd);
  assert_int_equal(mode_of(d), 0750);
  snprintf(sock, sizeof sock, "%s/epmoe.0.sock", d);
  assert_string_equal(sd.path, sock);
  assert_int_equal(mode_of(sock) & 0777, 0660);
  close(fd);
  srv_sockdir_remove(&sd);
  assert_int_not_equal(access(d, F_OK), 0); /* ours, empty: gone */
}

static void test_own_dir_keeps_its_mode(void **state) {
  (void)state;
  char d[300];
  srv_sockdir_t sd;
  int fd;
  path_of(d, sizeof d, "own");
  assert_int_equal(mkdir(d, 0700), 0);
  assert_int_equal(chmod(d, 0711), 0);
  open_ok(&sd, d, &fd);
  assert_int_equal(mode_of(d), 0711);
  close(fd);
  srv_sockdir_remove(&sd);
  assert_int_equal(access(d, F_OK), 0); /* not made by the daemon: stays */
  assert_int_equal(mode_of(d), 0711);
}

static void test_shared_parent_gets_own_subdir(void **state) {
  (void)state;
  char d[300], sub[320];
  srv_sockdir_t sd;
  int fd;
  path_of(d, sizeof d, "shared");
  assert_int_equal(mkdir(d, 0700), 0);
  assert_int_equal(chmod(d, 01777), 0);
  open_ok(&sd, d, &fd);
  snprintf(sub, sizeof sub, "%s/epmoe-%u", d, (unsigned)geteuid());
  assert_string_equal(sd.dir, sub);
  assert_int_equal(mode_of(d), 01777);
  assert_int_equal(mode_of(sub), 0750);
  close(fd);
  srv_sockdir_remove(&sd);
  assert_int_equal(mode_of(d), 01777);
  assert_int_not_equal(access(sub, F_OK), 0);
}

static void test_refusals_leave_things_alone(void **state) {
  (void)state;
  char d[300], p[320], target[300], link[300];
  path_of(d, sizeof d, "guarded");
  assert_int_equal(mkdir(d, 0750), 0);
  assert_int_equal(chmod(d, 0750), 0);
  snprintf(p, sizeof p, "%s/epmoe.0.sock", d);
  /* a regular file at the socket path */
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs("data", f);
  fclose(f);
  refused(d, "exists and is not a socket");
  struct stat rst;
  assert_int_equal(lstat(p, &rst), 0);
  assert_true(S_ISREG(rst.st_mode));
  unlink(p);
  /* a symlink at the socket path */
  path_of(target, sizeof target, "target");
  f = fopen(target, "w");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(symlink(target, p), 0);
  refused(d, "is a symbolic link");
  assert_int_equal(access(target, F_OK), 0);
  unlink(p);
  /* a symlinked directory */
  path_of(link, sizeof link, "dirlink");
  assert_int_equal(symlink(d, link), 0);
  refused(link, "is a symbolic link");
  /* a directory of ours that another group may write */
  assert_int_equal(chmod(d, 0770), 0);
  refused(d, "writable by group");
  assert_int_equal(mode_of(d), 0770);
  /* not a directory */
  refused(target, "is not a directory");
  /* a group that does not exist */
  srv_sockdir_t sd;
  int fd;
  assert_int_equal(srv_sockdir_open(&sd, d, "epm-no-such-group-x", 0, &fd), EPM_ERR_INVALID_ARG);
}

static void test_stale_live_and_replaced_sockets(void **state) {
  (void)state;
  char d[300];
  srv_sockdir_t a, b;
  int fa, fb;
  path_of(d, sizeof d, "sockets");
  open_ok(&a, d, &fa);
  refused(d, "another daemon answers"); /* a is listening */
  close(fa);                            /* a died: its socket is stale */
  a.bound = 0;                          /* (as after a crash: nobody removes it) */
  open_ok(&b, d, &fb);                  /* the stale one is replaced */
  /* b's socket is replaced under it (someone removed and re-bound the path):
   * at exit b removes nothing that is not its own */
  struct stat st;
  assert_int_equal(unlink(b.path), 0);
  int other = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un un = {.sun_family = AF_UNIX};
  snprintf(un.sun_path, sizeof un.sun_path, "%s", b.path);
  assert_int_equal(bind(other, (struct sockaddr *)&un, sizeof un), 0);
  srv_sockdir_remove(&b);
  assert_int_equal(lstat(b.path, &st), 0);
  close(other);
  close(fb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_missing_dir_made_and_removed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_own_dir_keeps_its_mode, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shared_parent_gets_own_subdir, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refusals_leave_things_alone, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stale_live_and_replaced_sockets, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
