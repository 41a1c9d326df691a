/* SPDX-License-Identifier: Apache-2.0 */
/* status.c — status names and the per-thread last-error message. */
#include "epmoe/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char epm__last_error[1024];

const char *epm_strerror(epm_status_t st) {
  switch (st) {
#define EPM__STATUS_DESC(name, val, desc) \
  case EPM_##name:                        \
    return desc;
    EPM_STATUS_MAP(EPM__STATUS_DESC)
#undef EPM__STATUS_DESC
    default:
      return "unknown status";
  }
}

const char *epm_status_name(epm_status_t st) {
  switch (st) {
#define EPM__STATUS_NAME(name, val, desc) \
  case EPM_##name:                        \
    return "EPM_" #name;
    EPM_STATUS_MAP(EPM__STATUS_NAME)
#undef EPM__STATUS_NAME
    default:
      return "EPM_UNKNOWN";
  }
}

const char *epm_last_error(void) { return epm__last_error; }

void epm_error_clear(void) { epm__last_error[0] = '\0'; }

epm_status_t epm_error(epm_status_t st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(epm__last_error, sizeof epm__last_error, fmt, ap);
  va_end(ap);
  return st;
}

epm_status_t epm_error_wrap(epm_status_t st, const char *fmt, ...) {
  char prefix[512];
  char old[sizeof epm__last_error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, epm__last_error, sizeof old);
  snprintf(epm__last_error, sizeof epm__last_error, "%s: %s", prefix, old);
  return st;
}
