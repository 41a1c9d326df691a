/* SPDX-License-Identifier: Apache-2.0 */
/* srv_process.h — the daemon process's own resources, for the standard
 * Prometheus process_* series (resident memory, open fds, CPU seconds,
 * start time), read from /proc and getrusage on every scrape. */
#ifndef EPMOE_SRV_PROCESS_H
#define EPMOE_SRV_PROCESS_H

#include <stdint.h>

typedef struct {
  double resident_bytes;     /* /proc/self/statm resident pages x page size */
  double virtual_bytes;      /* /proc/self/statm size x page size */
  double cpu_seconds;        /* user + system, getrusage(RUSAGE_SELF) */
  double start_time_seconds; /* Unix time the process started (/proc/self/stat + btime) */
  int64_t open_fds;          /* entries of /proc/self/fd */
  int64_t max_fds;           /* RLIMIT_NOFILE soft limit (-1: unlimited) */
} srv_process_t;

/* Fills every field it can read; one it cannot is < 0. Returns the number
 * of fields read (6 on Linux). */
int srv_process_sample(srv_process_t *p);

#endif
