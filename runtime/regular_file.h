/* SPDX-License-Identifier: Apache-2.0 */
/* regular_file.h — open a checkpoint file for reading, refusing anything but
 * a regular file before a single byte is read (runtime-internal). */
#ifndef EPMOE_RUNTIME_REGULAR_FILE_H
#define EPMOE_RUNTIME_REGULAR_FILE_H

#include <stddef.h>

#include "epmoe/status.h"

/* Opens `path` read-only with O_NONBLOCK (a FIFO would otherwise block the
 * open until a writer appears), fstat()s the descriptor and refuses a FIFO,
 * device, socket or directory with EPM_ERR_IO naming what it is. Symlinks are
 * followed (Hugging Face caches link snapshot files to blobs); the check is on
 * the target. On success *fd is open (close it) and *size is the file size.
 * A missing file is EPM_ERR_IO with *missing = 1 when missing is not NULL. */
epm_status_t epm__open_regular(const char *path, int *fd, size_t *size, int *missing);

#endif /* EPMOE_RUNTIME_REGULAR_FILE_H */
