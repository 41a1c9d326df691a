/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/log.h — one line per event on stderr, in one of two formats:
 *   text  2026-11-26T04:50:01.123Z r3/8 INFO  comm   bootstrap.c:88: message
 *   json  {"time":"2026-11-26T04:50:01.123Z","level":"info","priority":6,
 *          "rank":3,"size":8,"subsystem":"comm","file":"bootstrap.c",
 *          "line":88,"message":"message"}
 * (JSON: one object per line, the message escaped to valid UTF-8 JSON; rank
 * and size are null in single-process tools.) When stderr is the systemd
 * journal (JOURNAL_STREAM names stderr's device and inode), or when asked to
 * (epm_log_set_prefix), each line starts with the syslog priority "<N>"
 * (3 error, 4 warning, 6 info, 7 debug), which journald strips and stores as
 * the entry's PRIORITY.
 * The level and subsystem checks happen before formatting. Rank and size are
 * set once by the bootstrap (or stay -1 for single-process tools).
 */
#ifndef EPMOE_LOG_H
#define EPMOE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_LOG_ERROR = 0,
  EPM_LOG_WARN = 1,
  EPM_LOG_INFO = 2,
  EPM_LOG_DEBUG = 3,
} epm_log_level_t;

typedef enum { EPM_LOG_FMT_TEXT = 0, EPM_LOG_FMT_JSON = 1 } epm_log_format_t;

extern int epm__log_level; /* private: read by the macro */

void epm_log_set_level(epm_log_level_t level);
/* Parse "error|warn|info|debug"; returns 0 on success. */
int epm_log_level_parse(const char *s, epm_log_level_t *out);
void epm_log_set_format(epm_log_format_t format);
/* Parse "text|json"; returns 0 on success. */
int epm_log_format_parse(const char *s, epm_log_format_t *out);
/* The syslog priority of a level (LOG_ERR 3, LOG_WARNING 4, LOG_INFO 6,
 * LOG_DEBUG 7). */
int epm_log_priority(epm_log_level_t level);
/* Whether stderr is the journal: reads JOURNAL_STREAM ("DEV:INODE", set by
 * systemd for a service whose stderr is the journal) and compares it with
 * fstat(2) of file descriptor 2. The first line logged runs this once; call
 * it again after redirecting stderr. Returns 1 (prefix "<N>") or 0. */
int epm_log_detect_journal(void);
/* The "<N>" prefix: AUTO as epm_log_detect_journal says (the default);
 * SYSLOG always, for a process whose stderr reaches the journal through
 * another one (MPI ranks: mpirun's output forwarding); NONE never. */
typedef enum { EPM_LOG_PREFIX_AUTO = 0, EPM_LOG_PREFIX_SYSLOG = 1, EPM_LOG_PREFIX_NONE = 2 } epm_log_prefix_t;
void epm_log_set_prefix(epm_log_prefix_t prefix);
/* Parse "auto|syslog|none"; returns 0 on success. */
int epm_log_prefix_parse(const char *s, epm_log_prefix_t *out);
void epm_log_set_rank(int rank, int size);
void epm_log_write(epm_log_level_t level, const char *subsys, const char *file, int line,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define EPM_LOG(level, subsys, ...)                                              \
  do {                                                                           \
    if ((int)(level) <= epm__log_level)                                          \
      epm_log_write((level), (subsys), __FILE__, __LINE__, __VA_ARGS__);         \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_LOG_H */
