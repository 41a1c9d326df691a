/* epmoe/client.h — the client library of epmoed (libepmoe_client).
 *
 * Blocking calls over one Unix-socket connection to one rank's daemon. Every
 * call is bounded by the connection's timeout (epm_client_set_timeout; a call
 * that runs out returns EPM_ERR_TIMEOUT and the connection should be closed).
 * Thread safety: a connection serialises its calls with a mutex, so several
 * threads may share one; for parallel requests open several connections.
 * Errors the daemon reports come back as their status code with the daemon's
 * message in epm_last_error() ("rank 1: step (layer 0, id 7) failed ...").
 *
 * A FORWARD is this rank's share of ONE collective step: it returns only when
 * every rank's daemon received a FORWARD with the same (layer, step_id) — the
 * step's tag, unique among the steps in flight — and the step ran, or when
 * the step failed on every rank (--step-timeout, a client that left before
 * the step ran, a failed group). Closing a connection with FORWARDs that have
 * not started cancels those steps on every rank.
 * The daemon closes a connection with nothing in flight after --idle-timeout
 * (default 300 s): a long-lived client reconnects on EPM_ERR_IO.
 */
#ifndef EPMOE_CLIENT_H
#define EPMOE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/protocol.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_client epm_client_t;

typedef struct {
  uint16_t version;
  int rank, world_size;
  int64_t hidden, num_experts, top_k, max_tokens_per_rank;
  uint64_t max_payload;
  char server_version[32], model[64], backend[16];
} epm_client_info_t;

/* Connect to the daemon socket at path. Does not send HELLO (so a daemon that
 * is still loading can be probed with epm_client_health). Before anything is
 * sent, the server's uid (SO_PEERCRED) must be the owner of the directory
 * holding the socket, else EPM_ERR_IO naming both uids: someone else's socket in a
 * directory they can write is not our daemon.
 * [out] *out: close with epm_client_close. timeout_ms <= 0 means 30 s. */
epm_status_t epm_client_connect(const char *path, int timeout_ms, epm_client_t **out);
/* The same with the server's uid given: expect_uid >= 0 must match it (for a
 * socket in a directory that others may swap, e.g. a shared non-sticky
 * parent); expect_uid < 0 is epm_client_connect's rule. */
epm_status_t epm_client_connect_as(const char *path, int timeout_ms, long expect_uid, epm_client_t **out);
void epm_client_close(epm_client_t *c); /* NULL ok; unmaps a shm region */
void epm_client_set_timeout(epm_client_t *c, int timeout_ms);

/* Version negotiation + server info; required before forward calls.
 * EPM_ERR_NOT_READY while the daemon is loading its model. */
epm_status_t epm_client_hello(epm_client_t *c, const char *client_name, epm_client_info_t *out);

/* STATUS (json 0: Redis-INFO text, 1: JSON) and STATS (EPM_FMT_*).
 * [out] *text: NUL-terminated, malloc'd; free() it. */
epm_status_t epm_client_status(epm_client_t *c, int json, char **text);
epm_status_t epm_client_stats(epm_client_t *c, epm_text_format_t fmt, char **text);

/* [out] *state (epm_health_t), reason copied into reason[0, n) (may be NULL). */
epm_status_t epm_client_health(epm_client_t *c, epm_health_t *state, char *reason, size_t n);

/* One rank's share of step (layer, step_id), data inline in the frame.
 * [in]  x bf16 [m, H], logits fp32 [m, E] (H, E from HELLO); caller-owned.
 * [out] y bf16 [m, H]. m may be 0 (joins the step with no tokens).
 * [out] step_ns (may be NULL): the server's time inside the collective. */
epm_status_t epm_client_forward(epm_client_t *c, uint32_t layer, uint64_t step_id, const uint16_t *x,
                                const float *logits, int64_t m, uint16_t *y, uint64_t *step_ns);

/* Zero-copy host path: create a sealed memfd of `bytes`, map it here, and
 * attach it to this connection on the daemon (SCM_RIGHTS). Later forward_shm
 * calls name byte offsets into it. [out] *base: valid until close. */
epm_status_t epm_client_shm_create(epm_client_t *c, size_t bytes, void **base);
/* x at x_off (bf16 [m,H]), logits at logits_off (fp32 [m,E]); the daemon writes
 * y (bf16 [m,H]) at y_off before this returns. Offsets: x,y even, logits % 4. */
epm_status_t epm_client_forward_shm(epm_client_t *c, uint32_t layer, uint64_t step_id, int64_t m,
                                    uint64_t x_off, uint64_t logits_off, uint64_t y_off, uint64_t *step_ns);

/* Zero-copy device path (CUDA builds): allocate `bytes` on CUDA device
 * `device` with cuMemCreate, export it as a POSIX fd and attach it on the
 * daemon (SCM_RIGHTS; the daemon maps it on the same device ordinal).
 * [out] *dptr: the device address here (a CUdeviceptr), valid until close.
 * EPM_ERR_NOT_SUPPORTED in builds without CUDA. */
epm_status_t epm_client_devmem_create(epm_client_t *c, size_t bytes, int device, uint64_t *dptr);
/* Legacy fallback of the same (for drivers without POSIX-fd VMM export):
 * cudaMalloc the region and send its cudaIpcMemHandle_t in DEV_ATTACH; the
 * daemon opens it with cudaIpcOpenMemHandle. Used like a devmem region. */
epm_status_t epm_client_devipc_create(epm_client_t *c, size_t bytes, int device, uint64_t *dptr);
/* Host <-> device-region copies (for simple clients and tests). */
epm_status_t epm_client_devmem_write(epm_client_t *c, uint64_t off, const void *src, size_t n);
epm_status_t epm_client_devmem_read(epm_client_t *c, uint64_t off, void *dst, size_t n);
/* As epm_client_forward_shm, with offsets into the device region. The daemon
 * stages x/logits through host memory for the engine (the engine's API takes
 * host buffers) and writes y back into the region before answering. */
epm_status_t epm_client_forward_dev(epm_client_t *c, uint32_t layer, uint64_t step_id, int64_t m,
                                    uint64_t x_off, uint64_t logits_off, uint64_t y_off, uint64_t *step_ns);

/* Ask the daemon (and with it the whole group) to drain and exit. */
epm_status_t epm_client_shutdown(epm_client_t *c);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_CLIENT_H */
