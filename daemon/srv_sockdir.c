/* SPDX-License-Identifier: Apache-2.0 */
/* srv_sockdir.c — where epmoed's socket lives, and who may reach it
 * (docs/RELIABILITY.md "Socket directory" is the policy in words).
 *
 * Rules, each against a way the daemon was once fooled or did harm:
 *  - a directory the daemon did not create is never chmod-ed (a shared 1777
 *    directory kept losing its mode);
 *  - --socket-dir that is missing is created 0750 (02770 with
 *    --allowed-group, owned by that group, so sockets inside inherit it);
 *  - --socket-dir that is shared (writable by others: a 1777 /tmp, a
 *    Kubernetes emptyDir 0777 owned by root) gets the daemon's own
 *    subdirectory epmoe-<uid> inside it, created and moded as above; a shared
 *    parent must be sticky or root's, else its owner could swap our
 *    subdirectory;
 *  - a symlink, or a directory or socket path owned by another user, is
 *    refused; so is a directory writable by a group other than
 *    --allowed-group;
 *  - an existing socket path is removed only when it is a socket of ours
 *    that nobody answers on (stale); anything else is left alone, and at
 *    exit only our own socket (same inode) and a directory we made go.
 * Directories are opened with O_NOFOLLOW and moded through their fd, so a
 * path swapped between the check and the change is not followed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "epmoe/log.h"
#include "srv.h"

static epm_status_t resolve_group(const char *name, gid_t *gid) {
  char *end;
  errno = 0;
  long g = strtol(name, &end, 10);
  if (*name && *end == '\0' && errno == 0 && g >= 0 && g <= 0x7fffffffL) {
    *gid = (gid_t)g;
    return EPM_OK;
  }
  struct group *gr = getgrnam(name);
  if (!gr) return epm_error(EPM_ERR_INVALID_ARG, "--allowed-group '%s' is not a group on this host", name);
  *gid = gr->gr_gid;
  return EPM_OK;
}

/* The mode and group the daemon gives a directory it made. */
static epm_status_t set_own_mode(int dfd, const char *path, const srv_sockdir_t *sd) {
  if (sd->have_group && fchown(dfd, (uid_t)-1, sd->gid) != 0)
    return epm_error(EPM_ERR_SYSTEM, "cannot give %s to group %u (--allowed-group): %s; the daemon's user must be a "
                     "member of it", path, (unsigned)sd->gid, strerror(errno));
  mode_t mode = sd->have_group ? 02770 : 0750; /* setgid: sockets inside get the group */
  if (fchmod(dfd, mode) != 0) return epm_error(EPM_ERR_SYSTEM, "chmod %04o %s: %s", mode, path, strerror(errno));
  return EPM_OK;
}

/* Can members of the allowed group reach a socket inside d? */
static int group_can_enter(const struct stat *d, const srv_sockdir_t *sd) {
  if (!sd->have_group) return 1;
  return (d->st_gid == sd->gid && (d->st_mode & S_IXGRP)) || (d->st_mode & S_IXOTH);
}

/* Open the directory name (relative to at) without following a symlink and
 * check it is one of ours; made: set the daemon's mode (we created it). */
static epm_status_t adopt_dir(int at, const char *name, const char *path, int made, const srv_sockdir_t *sd) {
  int dfd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  if (dfd < 0)
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s: %s%s", path, strerror(errno),
                     errno == ELOOP || errno == ENOTDIR ? " (a symlink or not a directory; refusing)" : "");
  epm_status_t rc = EPM_OK;
  if (fstat(dfd, &st) != 0) {
    rc = epm_error(EPM_ERR_SYSTEM, "stat %s: %s", path, strerror(errno));
  } else if (st.st_uid != geteuid()) {
    rc = epm_error(EPM_ERR_SYSTEM, "socket dir %s belongs to uid %u, not this daemon's uid %u; refusing (another "
                   "user could put a fake daemon there)", path, (unsigned)st.st_uid, (unsigned)geteuid());
  } else if (made) {
    rc = set_own_mode(dfd, path, sd);
  }
  close(dfd);
  return rc;
}

/* Make (or reuse) dir/epmoe-<uid> inside the shared parent dir. */
static epm_status_t make_subdir(srv_sockdir_t *sd, const char *parent, const struct stat *pst) {
  if (!(pst->st_mode & S_ISVTX) && pst->st_uid != 0 && pst->st_uid != geteuid())
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s is shared (mode %04o) and belongs to uid %u without the sticky "
                     "bit: its owner could swap our subdirectory; refusing (use a sticky 1777 or root-owned parent, "
                     "or a directory of your own)", parent, (unsigned)(pst->st_mode & 07777), (unsigned)pst->st_uid);
  char name[32];
  snprintf(name, sizeof name, "epmoe-%u", (unsigned)geteuid());
  int n = snprintf(sd->dir, sizeof sd->dir, "%s/%s", parent, name);
  if (n < 0 || (size_t)n >= sizeof sd->dir)
    return epm_error(EPM_ERR_INVALID_ARG, "socket dir %s/%s is longer than %zu bytes", parent, name,
                     sizeof sd->dir - 1);
  int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (pfd < 0) return epm_error(EPM_ERR_SYSTEM, "open %s: %s", parent, strerror(errno));
  int made = mkdirat(pfd, name, 0700) == 0;
  epm_status_t rc = EPM_OK;
  if (!made && errno != EEXIST) rc = epm_error(EPM_ERR_SYSTEM, "mkdir %s: %s", sd->dir, strerror(errno));
  /* An existing epmoe-<uid> of ours was made by an earlier daemon: ours to mode. */
  if (rc == EPM_OK) rc = adopt_dir(pfd, name, sd->dir, 1, sd);
  close(pfd);
  if (rc == EPM_OK) {
    sd->subdir = 1;
    sd->dir_made = made;
    EPM_LOG(EPM_LOG_INFO, "net", "%s is shared (mode %04o, uid %u): using our own %s", parent,
            (unsigned)(pst->st_mode & 07777), (unsigned)pst->st_uid, sd->dir);
  }
  return rc;
}

static epm_status_t choose_dir(srv_sockdir_t *sd, const char *dir) {
  struct stat st;
  if (strlen(dir) >= sizeof sd->dir)
    return epm_error(EPM_ERR_INVALID_ARG, "socket dir '%s' is longer than %zu bytes", dir, sizeof sd->dir - 1);
  if (lstat(dir, &st) != 0) {
    if (errno != ENOENT) return epm_error(EPM_ERR_SYSTEM, "socket dir %s: %s", dir, strerror(errno));
    if (mkdir(dir, 0700) == 0) {
      snprintf(sd->dir, sizeof sd->dir, "%s", dir);
      EPM_TRY(adopt_dir(AT_FDCWD, dir, dir, 1, sd));
      sd->dir_made = 1;
      return EPM_OK;
    }
    if (errno != EEXIST) /* another rank may have just made it */
      return epm_error(EPM_ERR_SYSTEM, "cannot create socket dir %s: %s", dir, strerror(errno));
    if (lstat(dir, &st) != 0) return epm_error(EPM_ERR_SYSTEM, "socket dir %s: %s", dir, strerror(errno));
  }
  if (S_ISLNK(st.st_mode))
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s is a symbolic link; refusing (name the directory itself)", dir);
  if (!S_ISDIR(st.st_mode)) return epm_error(EPM_ERR_SYSTEM, "socket dir %s is not a directory", dir);
  const mode_t m = st.st_mode;
  const int ours = st.st_uid == geteuid();
  const int shared = (m & S_IWOTH) || (!ours && (m & S_IWGRP) && access(dir, W_OK | X_OK) == 0);
  if (shared) return make_subdir(sd, dir, &st);
  if (!ours)
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s belongs to uid %u, not this daemon's uid %u; refusing (another "
                     "user could put a fake daemon there)", dir, (unsigned)st.st_uid, (unsigned)geteuid());
  if ((m & S_IWGRP) && !(sd->have_group && st.st_gid == sd->gid))
    return epm_error(EPM_ERR_SYSTEM, "socket dir %s is writable by group %u (mode %04o): its members could replace "
                     "the socket; refusing (use a directory only you can write, or --allowed-group %u)", dir,
                     (unsigned)st.st_gid, (unsigned)(m & 07777), (unsigned)st.st_gid);
  /* Another rank of this node may have made it a moment ago and not yet
   * given it the group: wait for that (bounded) before refusing. */
  for (int i = 0; i < 40 && !group_can_enter(&st, sd) && (m & 07777) == 0700; i++) {
    struct timespec d = {0, 50000000};
    nanosleep(&d, NULL);
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) break;
  }
  if (!group_can_enter(&st, sd))
    return epm_error(EPM_ERR_SYSTEM, "--allowed-group %u: members cannot reach a socket in %s (mode %04o, group %u); "
                     "give the group search permission or let the daemon create the directory", (unsigned)sd->gid,
                     dir, (unsigned)(st.st_mode & 07777), (unsigned)st.st_gid);
  snprintf(sd->dir, sizeof sd->dir, "%s", dir); /* ours, used as it is: its mode is the owner's choice */
  return EPM_OK;
}

/* Is something answering on path? 1 yes, 0 no (stale). */
static int someone_answers(const char *path) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;
  if (fd < 0) return 0;
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

static epm_status_t clear_path(const srv_sockdir_t *sd) {
  struct stat st;
  if (lstat(sd->path, &st) != 0) {
    if (errno == ENOENT) return EPM_OK;
    return epm_error(EPM_ERR_SYSTEM, "%s: %s", sd->path, strerror(errno));
  }
  if (S_ISLNK(st.st_mode))
    return epm_error(EPM_ERR_SYSTEM, "%s is a symbolic link; refusing to replace it", sd->path);
  if (!S_ISSOCK(st.st_mode))
    return epm_error(EPM_ERR_SYSTEM, "%s exists and is not a socket; refusing to replace it", sd->path);
  if (st.st_uid != geteuid())
    return epm_error(EPM_ERR_SYSTEM, "%s is a socket of uid %u, not ours (uid %u); refusing to replace it", sd->path,
                     (unsigned)st.st_uid, (unsigned)geteuid());
  if (someone_answers(sd->path))
    return epm_error(EPM_ERR_SYSTEM, "another daemon answers on %s; refusing to start", sd->path);
  EPM_LOG(EPM_LOG_INFO, "net", "removing stale socket %s", sd->path);
  if (unlink(sd->path) != 0 && errno != ENOENT)
    return epm_error(EPM_ERR_SYSTEM, "cannot remove stale socket %s: %s", sd->path, strerror(errno));
  return EPM_OK;
}

epm_status_t srv_sockdir_open(srv_sockdir_t *sd, const char *dir, const char *allowed_group, int rank,
                              int *listen_fd) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  memset(sd, 0, sizeof *sd);
  *listen_fd = -1;
  if (allowed_group && *allowed_group) {
    EPM_TRY(resolve_group(allowed_group, &sd->gid));
    sd->have_group = 1;
  }
  EPM_TRY(choose_dir(sd, dir));
  int n = snprintf(sd->path, sizeof sd->path, "%s/epmoe.%d.sock", sd->dir, rank);
  if (n < 0 || (size_t)n >= sizeof a.sun_path)
    return epm_error(EPM_ERR_INVALID_ARG, "socket path '%s/epmoe.%d.sock' is %d bytes; Unix sockets allow %zu",
                     sd->dir, rank, n, sizeof a.sun_path - 1);
  EPM_TRY(clear_path(sd));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return epm_error(EPM_ERR_SYSTEM, "socket: %s", strerror(errno));
  memcpy(a.sun_path, sd->path, (size_t)n + 1);
  mode_t old = umask(0117); /* socket created 0660 atomically */
  int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
  umask(old);
  struct stat st;
  if (rc != 0 || lstat(sd->path, &st) != 0) {
    epm_status_t e = epm_error(EPM_ERR_SYSTEM, "bind %s: %s", sd->path, strerror(errno));
    close(fd);
    return e;
  }
  sd->bound = 1;
  sd->dev = st.st_dev;
  sd->ino = st.st_ino;
  /* In a directory of ours that is not setgid-to-the-group the socket has
   * our gid: give it the allowed group, or its members are refused by the
   * 0660 mode before SO_PEERCRED is ever asked. */
  if (sd->have_group && st.st_gid != sd->gid && lchown(sd->path, (uid_t)-1, sd->gid) != 0) {
    epm_status_t e = epm_error(EPM_ERR_SYSTEM, "cannot give %s to group %u (--allowed-group): %s", sd->path,
                               (unsigned)sd->gid, strerror(errno));
    close(fd);
    srv_sockdir_remove(sd);
    return e;
  }
  if (listen(fd, 128) != 0) {
    epm_status_t e = epm_error(EPM_ERR_SYSTEM, "listen %s: %s", sd->path, strerror(errno));
    close(fd);
    srv_sockdir_remove(sd);
    return e;
  }
  *listen_fd = fd;
  return EPM_OK;
}

void srv_sockdir_remove(srv_sockdir_t *sd) {
  struct stat st;
  if (sd->bound && lstat(sd->path, &st) == 0 && st.st_dev == sd->dev && st.st_ino == sd->ino) unlink(sd->path);
  sd->bound = 0;
  /* Empty only: the other ranks' sockets share it until the last one leaves. */
  if (sd->dir_made || sd->subdir) rmdir(sd->dir);
  sd->dir_made = sd->subdir = 0;
}

/* Supplementary groups of a live process, from /proc (the kernel's view at
 * the time of the check). -1: unreadable. */
static int proc_has_group(pid_t pid, gid_t gid) {
  char path[64], line[4096];
  if (pid <= 0) return -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  int found = -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "Groups:", 7) != 0) continue;
    found = 0;
    for (char *p = line + 7, *end; *p; p = end) {
      unsigned long g = strtoul(p, &end, 10);
      if (end == p) break;
      if ((gid_t)g == gid) found = 1;
    }
    break;
  }
  fclose(f);
  return found;
}

int srv_sockdir_in_group(const srv_sockdir_t *sd, uid_t uid, gid_t gid, pid_t pid) {
  if (!sd->have_group) return 0;
  if (gid == sd->gid) return 1;
  int p = proc_has_group(pid, sd->gid);
  if (p >= 0) return p;
  /* Another pid namespace: the group database instead. */
  struct passwd *pw = getpwuid(uid);
  if (!pw) return 0;
  gid_t groups[256];
  int n = 256;
  if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0) return 0;
  for (int i = 0; i < n; i++)
    if (groups[i] == sd->gid) return 1;
  return 0;
}
