/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/protocol.h — the wire protocol between epmoed and its clients.
 *
 * Every message is one frame: a fixed 32-byte little-endian header followed by
 * `payload_len` bytes of payload (docs/PROTOCOL.md has the byte layout):
 *
 *   off size field
 *     0    4 magic        "EPMO" (0x4F4D5045 read as LE u32)
 *     4    2 version      protocol version of this frame (2)
 *     6    2 type         epm_msg_type_t
 *     8    4 flags        EPM_FRAME_F_* bits; unknown bits are an error
 *    12    4 reserved     must be 0
 *    16    8 request_id   chosen by the client, echoed in the response
 *    24    8 payload_len  uint64; checked against the limit before anything is allocated
 *
 * Two X-macro tables describe every message: EPM_MSG_MAP (type, value, the
 * body of its request and of its response) and EPM_BODY_MAP (each body's C
 * type, direction, fd rule and wire fields). The type enum, the name lookup,
 * the body structs, their encoders and decoders, the generic dispatch, the
 * unit test's and the fuzzer's loops all come from them, so adding a message
 * is one row (plus hooks in daemon/protocol_msg.c if its payload has a
 * variable tail or value rules).
 *
 * The codec is pure: no I/O, no allocation, and it never reads past the bytes
 * it is given. epm_frame_decode() is the function a fuzzer drives
 * (tests/fuzz/fuzz_frame.c); the body decoders below are equally bounded, and
 * every size they derive from the wire is overflow-checked. Decoded views
 * (strings, FORWARD data) point into the caller's buffer (zero-copy); they are
 * valid as long as that buffer is.
 */
#ifndef EPMOE_PROTOCOL_H
#define EPMOE_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/doorbell.h"
#include "epmoe/dtype.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_PROTO_MAGIC 0x4F4D5045u /* bytes 'E' 'P' 'M' 'O' */
/* Version 2 added the FORWARD request's step options (flags, partial dtype)
 * and DOORBELL_ATTACH; version-1 peers are refused (docs/PROTOCOL.md). */
#define EPM_PROTO_VERSION 2u        /* the newest version this build speaks */
#define EPM_PROTO_MIN_VERSION 2u    /* the oldest version this build accepts */
#define EPM_FRAME_HEADER_SIZE 32u
/* Default cap on payload_len: big enough for 64Ki tokens of DeepSeek-R1
 * inline (64Ki x 7168 x 2 + logits); bulk traffic should use shared memory. */
#define EPM_PROTO_DEFAULT_MAX_PAYLOAD ((uint64_t)1 << 30)
#define EPM_PROTO_MAX_TEXT ((uint64_t)16 << 20) /* any one string or text body */

/* ---- the message table -------------------------------------------------
 * X(NAME, value, request body, response body, what it is for)
 * Values are dense from 1 (protocol.c asserts it): epm_frame_decode()
 * accepts 1..EPM_MSG_TYPE_MAX. `none`: that direction does not exist.
 * docs/PROTOCOL.md lists the same rows; test_protocol fails if they differ. */
#define EPM_MSG_MAP(X)                                                                          \
  X(HELLO, 1, hello_req, hello_resp, "version negotiation + server info")                      \
  X(STATUS, 2, fmt_req, text_resp, "human/machine status: config, ranks, state")                \
  X(STATS, 3, fmt_req, text_resp, "counters: INFO text, JSON or Prometheus")                    \
  X(HEALTH, 4, empty_req, health_resp, "ok / not ready / failed + reason")                      \
  X(FORWARD, 5, fwd_req, fwd_resp, "one rank's share of one collective MoE step")               \
  X(SHM_ATTACH, 6, shm_attach, empty_resp, "register a memfd as this connection's data region") \
  X(SHUTDOWN, 7, empty_req, empty_resp, "drain and exit (the whole group)")                     \
  X(ERROR, 8, none, error_resp, "response only: status code + message")                         \
  X(DEV_ATTACH, 9, dev_attach, empty_resp, "register CUDA device memory (fd or IPC handle)")       \
  X(DOORBELL_ATTACH, 10, db_attach, empty_resp, "register a doorbell: steps without a message each")

#define EPM__MSG_ENUM(name, val, req, resp, desc) EPM_MSG_##name = val,
#define EPM__MSG_ONE(name, val, req, resp, desc) +1
typedef enum {
  EPM_MSG_MAP(EPM__MSG_ENUM)
  EPM_MSG_TYPE_MAX = 0 EPM_MSG_MAP(EPM__MSG_ONE) /* = the largest value, since they are dense */
} epm_msg_type_t;
#undef EPM__MSG_ENUM
#undef EPM__MSG_ONE

#define EPM_FRAME_F_RESPONSE 0x1u /* set on every server -> client frame */
#define EPM_FRAME_F_HAS_FD 0x2u   /* exactly one fd travels with this frame (SCM_RIGHTS) */
#define EPM_FRAME_F_KNOWN (EPM_FRAME_F_RESPONSE | EPM_FRAME_F_HAS_FD)

typedef struct {
  uint64_t max_payload; /* frames announcing more are rejected before any allocation */
} epm_proto_limits_t;

typedef struct {
  uint16_t version;
  uint16_t type;
  uint32_t flags;
  uint64_t request_id;
  uint64_t payload_len;
  const uint8_t *payload; /* view into the decoded buffer (NULL when payload_len == 0) */
} epm_frame_t;

const char *epm_msg_type_name(uint16_t type); /* "FORWARD"; "UNKNOWN" otherwise */

/* Decode one frame from buf[0, len).
 *   EPM_OK             a complete, valid frame; *out set, *consumed = 32 + payload_len.
 *   EPM_ERR_NOT_READY  incomplete: *consumed = the total bytes this frame needs
 *                      once known (32 while the header is incomplete). Call again
 *                      with more bytes.
 *   anything else      malformed (bad magic, unsupported version, unknown type or
 *                      flag, non-zero reserved, payload over lim->max_payload); the
 *                      stream cannot be resynchronised and must be closed.
 * Reads only buf[0, min(len, 32 + payload_len)). lim may be NULL (default cap).
 * Thread-safe; no allocation. */
epm_status_t epm_frame_decode(const void *buf, size_t len, const epm_proto_limits_t *lim,
                              epm_frame_t *out, size_t *consumed);

/* The version of a frame that epm_frame_decode refuses for its version
 * alone (magic right, version outside [MIN, VERSION]); 0 otherwise or when
 * fewer than 6 bytes are given. The daemon answers such a peer with an ERROR
 * frame re-labelled with the peer's version (epm_frame_set_version): the
 * ERROR body is the same in every version, so an old client can read why it
 * was refused. */
uint16_t epm_frame_refused_version(const void *buf, size_t len);
void epm_frame_set_version(uint8_t *frame, uint16_t version);

/* Write the 32-byte header for a frame. */
void epm_frame_header_encode(uint8_t out[EPM_FRAME_HEADER_SIZE], uint16_t type, uint32_t flags,
                             uint64_t request_id, uint64_t payload_len);

/* ---- a growable byte buffer used by the encoders ---------------------- */
typedef struct {
  uint8_t *data;
  size_t len;
  size_t cap;
} epm_buf_t;

epm_status_t epm_buf_reserve(epm_buf_t *b, size_t extra);
epm_status_t epm_buf_put(epm_buf_t *b, const void *p, size_t n);
void epm_buf_free(epm_buf_t *b);

/* Encode a whole frame (header + given payload) into b (appending). */
epm_status_t epm_frame_encode(epm_buf_t *b, uint16_t type, uint32_t flags, uint64_t request_id,
                              const void *payload, size_t payload_len);

/* ---- body fields --------------------------------------------------------
 * A body is a list of F(kind, member) in wire order. Kinds:
 *   U16 U32 U64 I64  little-endian integers (I64: two's complement)
 *   STR              u32 length + bytes (no NUL), at most EPM_PROTO_MAX_TEXT
 *   TEXT             the rest of the payload as a string (last field only)
 *   PAD16 PAD32      zero on the wire, ignored when read; no struct member
 *   VIEW HANDLE      struct members that are not in the fixed part: the
 *                    body's hooks send them after it (FORWARD data views, the
 *                    DEV_ATTACH IPC handle)
 * Strings are views (ptr, len), NOT NUL-terminated. */
typedef struct {
  const char *ptr;
  uint32_t len;
} epm_str_t;

/* A view of p[0, n). n saturates at UINT32_MAX, above EPM_PROTO_MAX_TEXT, so
 * an over-long string is refused by the encoder rather than cut short. */
static inline epm_str_t epm_str_of(const char *p, size_t n) {
  epm_str_t s = {p, n > UINT32_MAX ? UINT32_MAX : (uint32_t)n};
  return s;
}

#define EPM_DEV_IPC_HANDLE_BYTES 64u

#define EPM__MEMBER_U16(n) uint16_t n;
#define EPM__MEMBER_U32(n) uint32_t n;
#define EPM__MEMBER_U64(n) uint64_t n;
#define EPM__MEMBER_I64(n) int64_t n;
#define EPM__MEMBER_STR(n) epm_str_t n;
#define EPM__MEMBER_TEXT(n) epm_str_t n;
#define EPM__MEMBER_PAD16(n)
#define EPM__MEMBER_PAD32(n)
#define EPM__MEMBER_VIEW(n) const void *n;
#define EPM__MEMBER_HANDLE(n) uint8_t n[EPM_DEV_IPC_HANDLE_BYTES];
#define EPM__MEMBER(kind, n) EPM__MEMBER_##kind(n)
/* typedef struct { members } T; from a field list */
#define EPM_PROTO_STRUCT(T, FIELDS) typedef struct { FIELDS(EPM__MEMBER) } T

/* Bytes a field takes in the fixed part (STR: its length word). */
#define EPM__FIXED_U16 2u
#define EPM__FIXED_U32 4u
#define EPM__FIXED_U64 8u
#define EPM__FIXED_I64 8u
#define EPM__FIXED_STR 4u
#define EPM__FIXED_TEXT 0u
#define EPM__FIXED_PAD16 2u
#define EPM__FIXED_PAD32 4u
#define EPM__FIXED_VIEW 0u
#define EPM__FIXED_HANDLE 0u
#define EPM__FIXED(kind, n) +EPM__FIXED_##kind
/* The fixed part of a body in bytes (its minimum payload when strings are empty). */
#define EPM_PROTO_FIXED_BYTES(FIELDS) (0u FIELDS(EPM__FIXED))

/* HELLO request: the range of versions the client speaks, and its name. */
#define EPM_HELLO_REQ_FIELDS(F) \
  F(U16, min_version)           \
  F(U16, max_version)           \
  F(STR, client_name)
EPM_PROTO_STRUCT(epm_hello_req_t, EPM_HELLO_REQ_FIELDS);

/* HELLO response: the chosen version and what the server is. */
#define EPM_HELLO_RESP_FIELDS(F)                                            \
  F(U16, version) /* min(client max, server max), checked >= both mins */ \
  F(PAD16, pad0)                                                          \
  F(U32, rank)                                                            \
  F(U32, world_size)                                                      \
  F(PAD32, pad1)                                                          \
  F(I64, hidden)              /* H */                                     \
  F(I64, num_experts)         /* E (logits per token) */                  \
  F(I64, top_k)                                                           \
  F(I64, max_tokens_per_rank)                                             \
  F(U64, max_payload)                                                     \
  F(STR, server_version)                                                  \
  F(STR, model)                                                           \
  F(STR, backend)
EPM_PROTO_STRUCT(epm_hello_resp_t, EPM_HELLO_RESP_FIELDS);

/* Pick the version both sides speak; EPM_ERR_PROTOCOL (naming both ranges) if none. */
epm_status_t epm_proto_negotiate(uint16_t cmin, uint16_t cmax, uint16_t *chosen);

typedef enum { EPM_FMT_TEXT = 0, EPM_FMT_JSON = 1, EPM_FMT_PROMETHEUS = 2 } epm_text_format_t;

/* STATUS / STATS request: the format of the answer. */
#define EPM_FMT_REQ_FIELDS(F) F(U32, format) /* epm_text_format_t */
EPM_PROTO_STRUCT(epm_fmt_req_t, EPM_FMT_REQ_FIELDS);

/* STATUS / STATS response: the whole payload is the text. */
#define EPM_TEXT_RESP_FIELDS(F) F(TEXT, text)
EPM_PROTO_STRUCT(epm_text_resp_t, EPM_TEXT_RESP_FIELDS);

/* HEALTH and SHUTDOWN requests, and the SHUTDOWN / attach acks: no payload
 * at all (a byte is an error). The struct exists only so every body has a C
 * type; pointers to it may be NULL. */
#define EPM_EMPTY_FIELDS(F)
typedef struct {
  uint8_t unused;
} epm_empty_t;

typedef enum { EPM_HEALTH_OK = 0, EPM_HEALTH_NOT_READY = 1, EPM_HEALTH_FAILED = 2 } epm_health_t;
const char *epm_health_name(epm_health_t h); /* "ok", "not-ready", "failed" */

#define EPM_HEALTH_RESP_FIELDS(F) \
  F(U32, state) /* epm_health_t */ \
  F(STR, reason)
EPM_PROTO_STRUCT(epm_health_resp_t, EPM_HEALTH_RESP_FIELDS);

typedef enum { EPM_DATA_INLINE = 0, EPM_DATA_SHM = 1, EPM_DATA_DEVICE = 2 } epm_data_mode_t;

/* Step options (FORWARD flags, the doorbell's request flags). */
#define EPM_FWD_F_SHARED_EXPERT 0x1u /* add the layer's shared expert to y (when it has one) */
#define EPM_FWD_F_KNOWN EPM_FWD_F_SHARED_EXPERT

/* FORWARD request. Inline: the payload carries x then logits after the
 * fixed part. Shm / device: the data lives in the connection's attached
 * memfd / device region at the given byte offsets; the daemon writes y at
 * y_offset before it answers. flags and partial_dtype are the step's
 * options: every rank of one step must send the same partial_dtype (it is
 * part of the step's key); the shared expert only touches this rank's rows. */
#define EPM_FWD_REQ_FIELDS(F)                                                              \
  F(U32, layer)                                                                            \
  F(U32, data_mode)   /* epm_data_mode_t */                                                \
  F(U64, step_id)     /* all ranks' FORWARDs with equal (layer, step_id) form one step */  \
  F(I64, m)           /* tokens of this rank, >= 0 (0 = join without work) */              \
  F(I64, hidden)      /* H; must equal the server's */                                     \
  F(I64, num_experts) /* E; must equal the server's */                                     \
  F(U64, x_offset)    /* shm / device only (the encoder writes 0 inline) */                \
  F(U64, logits_offset)                                                                    \
  F(U64, y_offset)                                                                         \
  F(U32, flags)       /* EPM_FWD_F_*; unknown bits are an error */                         \
  F(U32, partial_dtype) /* epm_dtype_t of the reduce-scatter: 0 f32, 1 bf16 */             \
  F(VIEW, x)          /* inline: bf16 [m, H] view (unaligned) */                           \
  F(VIEW, logits)     /* inline: fp32 [m, E] view (unaligned) */
EPM_PROTO_STRUCT(epm_fwd_req_t, EPM_FWD_REQ_FIELDS);

/* FORWARD response; y inline (view) or already written to the shm region. */
#define EPM_FWD_RESP_FIELDS(F)                                          \
  F(U64, step_id)                                                       \
  F(I64, m)                                                             \
  F(I64, hidden)                                                        \
  F(U32, data_mode)                                                     \
  F(PAD32, pad0)                                                        \
  F(U64, step_ns) /* wall time of the collective on the server */      \
  F(VIEW, y)      /* inline: bf16 [m, H] view */
EPM_PROTO_STRUCT(epm_fwd_resp_t, EPM_FWD_RESP_FIELDS);

#define EPM_SHM_ATTACH_FIELDS(F) F(U64, size) /* bytes of the memfd sent with this frame */
EPM_PROTO_STRUCT(epm_shm_attach_t, EPM_SHM_ATTACH_FIELDS);

/* DEV_ATTACH request: the size of the shared allocation and the CUDA
 * device ordinal (as the daemon's process numbers devices) to map it on.
 * kind FD: a cuMemCreate allocation whose POSIX fd travels with the frame
 * (HAS_FD). kind IPC (legacy fallback): a cudaMalloc allocation named by the
 * 64-byte cudaIpcMemHandle_t in ipc_handle, sent after the fixed part; no fd. */
#define EPM_DEV_ATTACH_FD 0u
#define EPM_DEV_ATTACH_IPC 1u
#define EPM_DEV_ATTACH_FIELDS(F)                          \
  F(U64, size)                                            \
  F(U32, device)                                          \
  F(U32, kind)          /* EPM_DEV_ATTACH_FD or _IPC */   \
  F(HANDLE, ipc_handle) /* kind IPC only */
EPM_PROTO_STRUCT(epm_dev_attach_t, EPM_DEV_ATTACH_FIELDS);

/* DOORBELL_ATTACH request: a sealed memfd (HAS_FD) whose first
 * EPM_DB_CTL_BYTES are the control block (epmoe/doorbell.h), and where the
 * step data lives: host mode, x / logits / y at the offsets into that memfd;
 * device mode, at the offsets into the connection's DEV_ATTACH region (which
 * the doorbell takes over). Step ids of the doorbell are step_base + the
 * step's sequence number, so every rank's client must pass the same base. */
#define EPM_DB_MODE_HOST 0u
#define EPM_DB_MODE_DEVICE 1u
#define EPM_DB_ATTACH_FIELDS(F)                                       \
  F(U64, size)     /* bytes of the memfd sent with this frame */     \
  F(U32, mode)     /* EPM_DB_MODE_HOST or _DEVICE */                  \
  F(PAD32, pad0)                                                      \
  F(I64, capacity) /* tokens of one step at most, > 0 */              \
  F(U64, x_offset)                                                    \
  F(U64, logits_offset)                                               \
  F(U64, y_offset)                                                    \
  F(U64, step_base)
EPM_PROTO_STRUCT(epm_db_attach_t, EPM_DB_ATTACH_FIELDS);

#define EPM_ERROR_RESP_FIELDS(F) \
  F(U32, code) /* epm_status_t */ \
  F(STR, message)
EPM_PROTO_STRUCT(epm_error_resp_t, EPM_ERROR_RESP_FIELDS);

/* Sizes of the fixed FORWARD parts (72 and 40), and the data bytes for m
 * tokens; EPM_ERR_OVERFLOW names the values when m * H * 2 + m * E * 4 does
 * not fit. */
#define EPM_FWD_REQ_FIXED EPM_PROTO_FIXED_BYTES(EPM_FWD_REQ_FIELDS)
#define EPM_FWD_RESP_FIXED EPM_PROTO_FIXED_BYTES(EPM_FWD_RESP_FIELDS)
epm_status_t epm_fwd_data_bytes(int64_t m, int64_t hidden, int64_t num_experts, size_t *x_bytes,
                                size_t *logits_bytes);

/* ---- the body table -----------------------------------------------------
 * X(body, C type, direction, fd rule, fields)
 *   direction  REQ: client -> server (RESPONSE flag clear); RESP: flag set
 *   fd rule    NOFD: HAS_FD must be clear; FD: must be set (one fd travels
 *              with the frame); KIND: the body decides (DEV_ATTACH kind) */
#define EPM_BODY_MAP(X)                                                       \
  X(hello_req, epm_hello_req_t, REQ, NOFD, EPM_HELLO_REQ_FIELDS)             \
  X(hello_resp, epm_hello_resp_t, RESP, NOFD, EPM_HELLO_RESP_FIELDS)         \
  X(fmt_req, epm_fmt_req_t, REQ, NOFD, EPM_FMT_REQ_FIELDS)                   \
  X(text_resp, epm_text_resp_t, RESP, NOFD, EPM_TEXT_RESP_FIELDS)            \
  X(empty_req, epm_empty_t, REQ, NOFD, EPM_EMPTY_FIELDS)                     \
  X(empty_resp, epm_empty_t, RESP, NOFD, EPM_EMPTY_FIELDS)                   \
  X(health_resp, epm_health_resp_t, RESP, NOFD, EPM_HEALTH_RESP_FIELDS)      \
  X(fwd_req, epm_fwd_req_t, REQ, NOFD, EPM_FWD_REQ_FIELDS)                   \
  X(fwd_resp, epm_fwd_resp_t, RESP, NOFD, EPM_FWD_RESP_FIELDS)               \
  X(shm_attach, epm_shm_attach_t, REQ, FD, EPM_SHM_ATTACH_FIELDS)            \
  X(dev_attach, epm_dev_attach_t, REQ, KIND, EPM_DEV_ATTACH_FIELDS)          \
  X(db_attach, epm_db_attach_t, REQ, FD, EPM_DB_ATTACH_FIELDS)               \
  X(error_resp, epm_error_resp_t, RESP, NOFD, EPM_ERROR_RESP_FIELDS)

#define EPM__BODY_ENUM(body, T, dir, fd, FIELDS) EPM_BODY_##body,
typedef enum {
  EPM_BODY_none = 0, /* the ERROR request, which does not exist */
  EPM_BODY_MAP(EPM__BODY_ENUM)
  EPM_BODY_COUNT
} epm_body_t;
#undef EPM__BODY_ENUM

/* Any body (for code that handles messages generically). */
#define EPM__BODY_MEMBER(body, T, dir, fd, FIELDS) T body;
typedef union {
  EPM_BODY_MAP(EPM__BODY_MEMBER)
} epm_msg_body_t;
#undef EPM__BODY_MEMBER

/* The body a frame of `type` carries in that direction; EPM_BODY_none for
 * an unknown type or a direction the type does not have. */
epm_body_t epm_msg_body(uint16_t type, int response);
/* The most payload a frame of (type, direction) can carry, from its body's
 * fields (strings and text at EPM_PROTO_MAX_TEXT, the DEV_ATTACH handle),
 * capped by max_payload; a body with a data tail (FORWARD) is bounded by
 * max_payload alone. 0 for a type or direction that does not exist. A
 * server checks a header against it before it buffers the payload. */
uint64_t epm_msg_max_payload(uint16_t type, int response, uint64_t max_payload);
const char *epm_body_name(epm_body_t body); /* "fwd_req"; "none" */

/* Per body B of C type T, generated from EPM_BODY_MAP:
 *   epm_status_t epm_B_encode(epm_buf_t *b, uint16_t type, uint64_t rid, const T *m);
 *   epm_status_t epm_B_decode(const epm_frame_t *f, T *out);
 * e.g. epm_fwd_req_encode / epm_fwd_req_decode, epm_empty_req_encode.
 * The encoder appends one complete frame for message `type` to b; the type
 * must carry B in B's direction (else EPM_ERR_INVALID_ARG), flags follow the
 * table. It refuses what cannot be framed (a string over
 * EPM_PROTO_MAX_TEXT, a FORWARD shape whose size overflows, an unknown
 * DEV_ATTACH kind) and writes no offsets for inline FORWARDs.
 * The decoder takes a frame from epm_frame_decode() and checks, in order:
 * that the frame's type and direction carry B, the HAS_FD rule, the fixed
 * part, the tail, the exact payload length (missing and trailing bytes are
 * both EPM_ERR_PROTOCOL), then the body's value rules. *out is written only
 * on success; out (and, for the empty bodies, m) may be NULL. */
#define EPM__BODY_PROTOS(body, T, dir, fd, FIELDS)                                             \
  epm_status_t epm_##body##_encode(epm_buf_t *b, uint16_t type, uint64_t rid, const T *m); \
  epm_status_t epm_##body##_decode(const epm_frame_t *f, T *out);
EPM_BODY_MAP(EPM__BODY_PROTOS)
#undef EPM__BODY_PROTOS

/* The same by table lookup: the body of (type, response), passed as the
 * matching C type (an epm_msg_body_t fits any). epm_msg_encode_head writes
 * the header and the fixed part only, while payload_len still counts the
 * tail (inline FORWARD data, the DEV_ATTACH handle), so a caller can send
 * the tail with writev without copying it. */
epm_status_t epm_msg_encode(epm_buf_t *b, uint16_t type, int response, uint64_t rid, const void *body);
epm_status_t epm_msg_encode_head(epm_buf_t *b, uint16_t type, int response, uint64_t rid,
                                 const void *body);
epm_status_t epm_msg_decode(const epm_frame_t *f, void *body);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_PROTOCOL_H */
