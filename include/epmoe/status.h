/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/status.h — the one status enum of epmoe and the per-thread error text.
 *
 * Every fallible function returns epm_status_t. On failure it also records a
 * message for the calling thread that names the offending values and the
 * limit, e.g.
 *   "hidden_states_scale has 146800639 elements; 327680 tokens x 7168 hidden / 16 = 146800640 expected"
 * Read it with epm_last_error() before the next epmoe call on that thread.
 * Library code never exits the process.
 */
#ifndef EPMOE_STATUS_H
#define EPMOE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* X-macro table: name, value, short description. */
#define EPM_STATUS_MAP(X)                                                   \
  X(OK, 0, "success")                                                       \
  X(ERR_INVALID_ARG, 1, "invalid argument")                                 \
  X(ERR_OVERFLOW, 2, "size arithmetic overflow or limit exceeded")          \
  X(ERR_NOMEM, 3, "out of memory")                                          \
  X(ERR_SYSTEM, 4, "system call failed")                                    \
  X(ERR_CUDA, 5, "CUDA error")                                              \
  X(ERR_NCCL, 6, "NCCL error")                                              \
  X(ERR_MPI, 7, "MPI error")                                                \
  X(ERR_PROTOCOL, 8, "protocol error")                                      \
  X(ERR_TIMEOUT, 9, "timed out")                                            \
  X(ERR_NOT_SUPPORTED, 10, "not supported in this build or on this device") \
  X(ERR_IO, 11, "I/O error")                                                \
  X(ERR_FORMAT, 12, "malformed input file or data")                         \
  X(ERR_NOT_READY, 13, "not ready")                                         \
  X(ERR_ABORTED, 14, "aborted (peer failure or shutdown)")                  \
  X(ERR_INTERNAL, 15, "internal error")

typedef enum {
#define EPM__STATUS_ENUM(name, val, desc) EPM_##name = val,
  EPM_STATUS_MAP(EPM__STATUS_ENUM)
#undef EPM__STATUS_ENUM
  EPM_STATUS_COUNT
} epm_status_t;

/* Short description of a status ("invalid argument"); never NULL. */
const char *epm_strerror(epm_status_t st);
/* Symbolic name ("EPM_ERR_INVALID_ARG"); never NULL. */
const char *epm_status_name(epm_status_t st);

/* The calling thread's last error message ("" if none). Valid until the next
 * epmoe call on this thread. */
const char *epm_last_error(void);
/* Record a formatted message for this thread and return st unchanged, so a
 * check reads:  return epm_error(EPM_ERR_INVALID_ARG, "top_k %d > %d", k, e); */
epm_status_t epm_error(epm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current message with more context ("loading layer 3: <old>"). */
epm_status_t epm_error_wrap(epm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void epm_error_clear(void);

/* Propagation, after NCCL's checks.h: EPM_TRY returns on error;
 * EPM_TRY_GOTO stores the status and jumps to a cleanup label. */
#define EPM_TRY(expr)                          \
  do {                                         \
    epm_status_t epm__st = (expr);             \
    if (epm__st != EPM_OK) return epm__st;     \
  } while (0)

#define EPM_TRY_GOTO(expr, st, label)          \
  do {                                         \
    (st) = (expr);                             \
    if ((st) != EPM_OK) goto label;            \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_STATUS_H */
