/* SPDX-License-Identifier: Apache-2.0 */
/* log.c — the one-line-per-event logger behind EPM_LOG (epmoe/log.h): text or
 * JSON lines on stderr, with the journal's "<N>" priority prefix when stderr
 * is the systemd journal. Each line is built in full and written with one
 * fputs under a mutex, so lines of different threads never interleave. */
#include "epmoe/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int epm__log_level = EPM_LOG_INFO;
static int epm__log_rank = -1;
static int epm__log_size = -1;
static epm_log_format_t epm__log_format = EPM_LOG_FMT_TEXT;
static int epm__log_journal = -1; /* "<N>" prefix: 1 on, 0 off, -1 not looked at yet (auto) */
static pthread_mutex_t epm__log_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char *const json_levels[] = {"error", "warn", "info", "debug"};
static const int priorities[] = {3, 4, 6, 7}; /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */

#define MSG_MAX 2048
/* A message of MSG_MAX - 1 bytes, each escaped to at most 6 ("\u001f"),
 * plus the fixed fields. */
#define LINE_MAX_BYTES (6 * MSG_MAX + 512)

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

void epm_log_set_format(epm_log_format_t format) {
  pthread_mutex_lock(&epm__log_mu);
  epm__log_format = format == EPM_LOG_FMT_JSON ? EPM_LOG_FMT_JSON : EPM_LOG_FMT_TEXT;
  pthread_mutex_unlock(&epm__log_mu);
}

int epm_log_format_parse(const char *s, epm_log_format_t *out) {
  if (strcmp(s, "text") == 0) *out = EPM_LOG_FMT_TEXT;
  else if (strcmp(s, "json") == 0) *out = EPM_LOG_FMT_JSON;
  else return 1;
  return 0;
}

int epm_log_priority(epm_log_level_t level) {
  return (int)level >= 0 && (int)level < 4 ? priorities[level] : priorities[EPM_LOG_DEBUG];
}

static int journal_locked(void) {
  const char *js = getenv("JOURNAL_STREAM");
  unsigned long long dev = 0, ino = 0;
  char tail;
  struct stat st;
  epm__log_journal = js && sscanf(js, "%llu:%llu%c", &dev, &ino, &tail) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                     (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
  return epm__log_journal;
}

int epm_log_detect_journal(void) {
  pthread_mutex_lock(&epm__log_mu);
  int on = journal_locked();
  pthread_mutex_unlock(&epm__log_mu);
  return on;
}

void epm_log_set_prefix(epm_log_prefix_t prefix) {
  pthread_mutex_lock(&epm__log_mu);
  epm__log_journal = prefix == EPM_LOG_PREFIX_SYSLOG ? 1 : prefix == EPM_LOG_PREFIX_NONE ? 0 : -1;
  pthread_mutex_unlock(&epm__log_mu);
}

int epm_log_prefix_parse(const char *s, epm_log_prefix_t *out) {
  if (strcmp(s, "auto") == 0) *out = EPM_LOG_PREFIX_AUTO;
  else if (strcmp(s, "syslog") == 0) *out = EPM_LOG_PREFIX_SYSLOG;
  else if (strcmp(s, "none") == 0) *out = EPM_LOG_PREFIX_NONE;
  else return 1;
  return 0;
}

void epm_log_set_rank(int rank, int size) {
  epm__log_rank = rank;
  epm__log_size = size;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when s does not start
 * one (stray continuation, overlong form, surrogate, above U+10FFFF, cut off). */
static size_t utf8_len(const unsigned char *s) {
  unsigned char c = s[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return n;
}

typedef struct {
  char *p;
  size_t len, cap;
} out_t;

static void put(out_t *o, const char *s, size_t n) {
  if (o->len + n >= o->cap) n = o->cap - 1 - o->len; /* cannot happen with LINE_MAX_BYTES; stays bounded */
  memcpy(o->p + o->len, s, n);
  o->len += n;
  o->p[o->len] = '\0';
}

static void putf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(out_t *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
  va_end(ap);
  if (n > 0) o->len += (size_t)n < o->cap - o->len ? (size_t)n : o->cap - o->len - 1;
}

/* s as a JSON string: quotes, backslash and control characters escaped,
 * bytes that are not valid UTF-8 replaced by U+FFFD, so any message gives a
 * line every JSON parser accepts. */
static void put_json_str(out_t *o, const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  put(o, "\"", 1);
  while (*u) {
    char esc[8];
    unsigned char c = *u;
    if (c == '"' || c == '\\') {
      esc[0] = '\\', esc[1] = (char)c;
      put(o, esc, 2);
      u++;
    } else if (c == '\n' || c == '\r' || c == '\t') {
      esc[0] = '\\', esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
      put(o, esc, 2);
      u++;
    } else if (c < 0x20 || c == 0x7f) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      put(o, esc, 6);
      u++;
    } else if (c < 0x80) {
      put(o, (const char *)u, 1);
      u++;
    } else {
      size_t n = utf8_len(u);
      if (n) put(o, (const char *)u, n);
      else put(o, "\\ufffd", 6);
      u += n ? n : 1;
    }
  }
  put(o, "\"", 1);
}

void epm_log_write(epm_log_level_t level, const char *subsys, const char *file, int line,
                   const char *fmt, ...) {
  char msg[MSG_MAX];
  char stamp[40];
  char buf[LINE_MAX_BYTES];
  out_t o = {buf, 0, sizeof buf};
  struct timespec ts;
  struct tm tm;
  va_list ap;
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  if ((int)level < 0 || (int)level > EPM_LOG_DEBUG) level = EPM_LOG_DEBUG;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  buf[0] = '\0';

  pthread_mutex_lock(&epm__log_mu);
  if (epm__log_journal < 0) journal_locked();
  if (epm__log_journal) putf(&o, "<%d>", priorities[level]);
  if (epm__log_format == EPM_LOG_FMT_JSON) {
    putf(&o, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"priority\":%d,", stamp, ts.tv_nsec / 1000000L,
         json_levels[level], priorities[level]);
    if (epm__log_rank >= 0) putf(&o, "\"rank\":%d,\"size\":%d,", epm__log_rank, epm__log_size);
    else putf(&o, "\"rank\":null,\"size\":null,");
    put(&o, "\"subsystem\":", 12);
    put_json_str(&o, subsys);
    put(&o, ",\"file\":", 8);
    put_json_str(&o, base);
    putf(&o, ",\"line\":%d,\"message\":", line);
    put_json_str(&o, msg);
    put(&o, "}\n", 2);
  } else if (epm__log_rank >= 0) {
    putf(&o, "%s.%03ldZ r%d/%d %-5s %-6s %s:%d: %s\n", stamp, ts.tv_nsec / 1000000L, epm__log_rank, epm__log_size,
         level_names[level], subsys, base, line, msg);
  } else {
    putf(&o, "%s.%03ldZ %-5s %-6s %s:%d: %s\n", stamp, ts.tv_nsec / 1000000L, level_names[level], subsys, base, line,
         msg);
  }
  fputs(buf, stderr);
  fflush(stderr);
  pthread_mutex_unlock(&epm__log_mu);
}
