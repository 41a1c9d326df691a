/* log.c — the one-line-per-event logger behind EPM_LOG. */
#include "epmoe/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int epm__log_level = EPM_LOG_INFO;
static int epm__log_rank = -1;
static int epm__log_size = -1;
static pthread_mutex_t epm__log_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void epm_log_set_level(epm_log_level_t level) { epm__log_level = (int)level; }

int epm_log_level_parse(const char *s, epm_log_level_t *out) {
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, level_names[i]) == 0 || (i == 1 && strcasecmp(s, "warning") == 0)) {
      *out = (epm_log_level_t)i;
      return 0;
    }
  }
  return 1;
}

void epm_log_set_rank(int rank, int size) {
  epm__log_rank = rank;
  epm__log_size = size;
}

void epm_log_write(epm_log_level_t level, const char *subsys, const char *file, int line,
                   const char *fmt, ...) {
  char msg[2048];
  char stamp[40];
  struct timespec ts;
  struct tm tm;
  va_list ap;
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);

  pthread_mutex_lock(&epm__log_mu);
  if (epm__log_rank >= 0)
    fprintf(stderr, "%s.%03ldZ r%d/%d %-5s %-6s %s:%d: %s\n", stamp, ts.tv_nsec / 1000000L,
            epm__log_rank, epm__log_size, level_names[level], subsys, base, line, msg);
  else
    fprintf(stderr, "%s.%03ldZ %-5s %-6s %s:%d: %s\n", stamp, ts.tv_nsec / 1000000L,
            level_names[level], subsys, base, line, msg);
  fflush(stderr);
  pthread_mutex_unlock(&epm__log_mu);
}
