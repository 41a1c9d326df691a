/* SPDX-License-Identifier: Apache-2.0 */
/* futex.h — the two futex calls of the doorbell (client and daemon), on
 * 32-bit words in MAP_SHARED memory. Shared futexes (no FUTEX_PRIVATE_FLAG):
 * the waiter and the waker are different processes mapping one memfd.
 * Private header of the daemon folder. */
#ifndef EPMOE_FUTEX_H
#define EPMOE_FUTEX_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the doorbell's futex words are the low halves of 64-bit counters");

/* The low 32 bits of a 64-bit counter: the futex word. */
static inline uint32_t *epm__futex_word(uint64_t *counter) { return (uint32_t *)(void *)counter; }

/* Sleep while *word == val, at most timeout_ns (> 0). Returns 0 when woken
 * or when *word already differed, ETIMEDOUT, or EINTR; the caller re-reads. */
static inline int epm__futex_wait(uint32_t *word, uint32_t val, int64_t timeout_ns) {
  struct timespec ts = {(time_t)(timeout_ns / 1000000000), (long)(timeout_ns % 1000000000)};
  if (syscall(SYS_futex, word, FUTEX_WAIT, val, &ts, NULL, 0) == 0) return 0;
  return errno == EAGAIN ? 0 : errno;
}

static inline void epm__futex_wake(uint32_t *word) { (void)syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); }

#endif
