/* SPDX-License-Identifier: Apache-2.0 */
/* srv_process.c — see srv_process.h. Linux only, like the rest of the
 * daemon (SO_PEERCRED, memfd); a field whose source is missing stays < 0 and
 * its series is left out rather than reported as 0. */
#include "srv_process.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

/* Seconds since the epoch the system booted ("btime" of /proc/stat). */
static double boot_time(void) {
  FILE *f = fopen("/proc/stat", "r");
  char line[256];
  double bt = -1;
  unsigned long long v;
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "btime %llu", &v) == 1) {
      bt = (double)v;
      break;
    }
  fclose(f);
  return bt;
}

/* Field 22 of /proc/self/stat (starttime, clock ticks after boot). The
 * command name (field 2) may hold spaces and parentheses, so fields are
 * counted from the last ')'. */
static double start_ticks(void) {
  FILE *f = fopen("/proc/self/stat", "r");
  char buf[1024];
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p++;
  for (int field = 3; field < 22; field++) { /* skip fields 3..21 */
    p = strchr(p + 1, ' ');
    if (!p) return -1;
  }
  unsigned long long t;
  return sscanf(p, " %llu", &t) == 1 ? (double)t : -1;
}

int srv_process_sample(srv_process_t *p) {
  int got = 0;
  long page = sysconf(_SC_PAGESIZE), hz = sysconf(_SC_CLK_TCK);
  memset(p, 0, sizeof *p);
  p->resident_bytes = p->virtual_bytes = p->cpu_seconds = p->start_time_seconds = -1;
  p->open_fds = p->max_fds = -1;

  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long long size, res;
  if (f && fscanf(f, "%llu %llu", &size, &res) == 2 && page > 0) {
    p->virtual_bytes = (double)size * (double)page;
    p->resident_bytes = (double)res * (double)page;
    got += 2;
  }
  if (f) fclose(f);

  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    p->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
                     (double)ru.ru_stime.tv_usec * 1e-6;
    got++;
  }

  double bt = boot_time(), st = start_ticks();
  if (bt >= 0 && st >= 0 && hz > 0) {
    p->start_time_seconds = bt + st / (double)hz;
    got++;
  }

  DIR *d = opendir("/proc/self/fd");
  if (d) {
    int64_t n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
      if (e->d_name[0] != '.') n++;
    p->open_fds = n - 1; /* not the descriptor opendir itself holds */
    closedir(d);
    got++;
  }

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    p->max_fds = rl.rlim_cur == RLIM_INFINITY ? -1 : (int64_t)rl.rlim_cur;
    got++;
  }
  return got;
}
