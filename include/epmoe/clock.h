/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/clock.h — the one monotonic clock of epmoe (CLOCK_MONOTONIC).
 *
 * For durations, deadlines and stage timings: it never jumps with NTP or a
 * settime, unlike the wall clock that log lines print. The zero point is
 * arbitrary (usually boot), so only differences mean anything.
 */
#ifndef EPMOE_CLOCK_H
#define EPMOE_CLOCK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Nanoseconds since an arbitrary fixed point; never decreases. */
uint64_t epm_clock_ns(void);
/* The same clock in seconds (double: ns resolution for ~100 days of uptime). */
double epm_clock_s(void);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_CLOCK_H */
