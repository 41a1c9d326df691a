/* SPDX-License-Identifier: Apache-2.0 */
/* regular_file.c — see regular_file.h. */
#define _GNU_SOURCE
#include "regular_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

epm_status_t epm__open_regular(const char *path, int *fd, size_t *size, int *missing) {
  struct stat sb;
  *fd = -1;
  if (missing) *missing = 0;
  /* O_NONBLOCK changes nothing for reads of a regular file; it only keeps
   * the open of a FIFO from waiting. O_NOCTTY: a tty never becomes ours. */
  int f = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (f < 0) {
    int e = errno;
    if (missing) *missing = e == ENOENT;
    return epm_error(EPM_ERR_IO, "%s: open: %s", path, strerror(e));
  }
  if (fstat(f, &sb) != 0) {
    int e = errno;
    close(f);
    return epm_error(EPM_ERR_IO, "%s: fstat: %s", path, strerror(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(f);
    return epm_error(EPM_ERR_IO, "%s: is %s, not a regular file: refused", path, kind(sb.st_mode));
  }
  *fd = f;
  *size = (size_t)sb.st_size;
  return EPM_OK;
}
