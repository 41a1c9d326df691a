/* SPDX-License-Identifier: Apache-2.0 */
/* clock.c — CLOCK_MONOTONIC for epmoe/clock.h. */
#include "epmoe/clock.h"

#include <time.h>

uint64_t epm_clock_ns(void) {
  struct timespec ts = {0, 0};
  (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for this clock id and a valid pointer */
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

double epm_clock_s(void) { return (double)epm_clock_ns() * 1e-9; }
