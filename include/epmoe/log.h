/* epmoe/log.h — one line per event on stderr:
 *   2026-11-26T04:50:01.123Z r3/8 INFO  comm  bootstrap.c:88: message
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

extern int epm__log_level; /* private: read by the macro */

void epm_log_set_level(epm_log_level_t level);
/* Parse "error|warn|info|debug"; returns 0 on success. */
int epm_log_level_parse(const char *s, epm_log_level_t *out);
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
