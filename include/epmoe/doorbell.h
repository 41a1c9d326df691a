/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/doorbell.h — the doorbell's control block: the page of shared
 * memory through which a client asks its rank's daemon for a step without
 * sending a socket message (docs/PROTOCOL.md "Doorbell").
 *
 * The client creates a sealed memfd whose first EPM_DB_CTL_BYTES are this
 * block and registers it once with DOORBELL_ATTACH. Then a step is:
 *
 *   host mode    client: write m, layer, flags, partial_dtype; store seq =
 *                last + 1 (release); FUTEX_WAKE the low 32 bits of seq.
 *                daemon: a thread waits on that word, checks seq == last + 1
 *                (else the step fails naming both numbers), queues the step
 *                like a FORWARD, and after it writes status / step_ns /
 *                error, stores done_seq = seq (release) and FUTEX_WAKEs it.
 *   device mode  the client's CUDA stream writes m, layer, flags,
 *                partial_dtype and ring = 1 (cuStreamWriteValue*), then waits
 *                for ack == 1 (cuStreamWaitValue32) and writes ack = 0. The
 *                daemon polls ring, sets ring = 0, numbers the step itself
 *                (seq = done_seq + 1), runs it and writes done_seq and
 *                ack = 1 from its own stream. Every value the client's stream
 *                writes is a constant, so the calls can be captured in a CUDA
 *                graph and the graph replayed (a per-step sequence number in
 *                a graph node would replay the same value).
 *
 * The futex words are the low halves of seq and done_seq (little-endian, so
 * at the same address). Words the client writes and words the daemon writes
 * sit on different cache lines. All integers little-endian; the block is
 * zero when attached (magic/layout excepted).
 */
#ifndef EPMOE_DOORBELL_H
#define EPMOE_DOORBELL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_DB_MAGIC 0x42445045u /* bytes 'E' 'P' 'D' 'B' */
#define EPM_DB_LAYOUT 1u         /* this layout */
#define EPM_DB_CTL_BYTES 4096u   /* the block takes the memfd's first page */
#define EPM_DB_ERROR_BYTES 256u

typedef struct {
  /* 0: identity, written by the client before DOORBELL_ATTACH */
  uint32_t magic;  /* EPM_DB_MAGIC */
  uint32_t layout; /* EPM_DB_LAYOUT */
  uint8_t pad0[56];
  /* 64: the request, written by the client */
  uint64_t seq;           /* host mode: 1, 2, 3, ... (the futex word is its low half) */
  int64_t m;              /* tokens of this step, 0 ..= capacity */
  uint32_t layer;         /* the MoE layer, as in FORWARD */
  uint32_t flags;         /* EPM_FWD_F_* */
  uint32_t partial_dtype; /* epm_dtype_t */
  uint32_t ring;          /* device mode: 1 = a request waits (the daemon clears it) */
  uint8_t pad1[32];
  /* 128: the answer, written by the daemon */
  uint64_t done_seq; /* the sequence number last answered (the futex word is its low half) */
  uint32_t status;   /* epm_status_t of that step; 0 = ok */
  uint32_t ack;      /* device mode: 1 = answered (the client's stream clears it) */
  uint64_t step_ns;  /* time inside the collective on this rank */
  uint64_t step_id;  /* the step's key: step_base + seq */
  uint8_t pad2[32];
  char error[EPM_DB_ERROR_BYTES]; /* 192: NUL-terminated, when status != 0 */
} epm_db_ctl_t;

/* The layout is the wire format: pinned down for C and C++ alike. */
#ifdef __cplusplus
#define EPM__DB_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define EPM__DB_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, seq) == 64, "doorbell layout: seq at 64");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, m) == 72, "doorbell layout: m at 72");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, layer) == 80, "doorbell layout: layer at 80");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, ring) == 92, "doorbell layout: ring at 92");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, done_seq) == 128, "doorbell layout: done_seq at 128");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, ack) == 140, "doorbell layout: ack at 140");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, step_id) == 152, "doorbell layout: step_id at 152");
EPM__DB_ASSERT(offsetof(epm_db_ctl_t, error) == 192, "doorbell layout: error at 192");
EPM__DB_ASSERT(sizeof(epm_db_ctl_t) <= EPM_DB_CTL_BYTES, "the control block fits its page");
#undef EPM__DB_ASSERT

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_DOORBELL_H */
