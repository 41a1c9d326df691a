/* epmoe/protocol.h — the wire protocol between epmoed and its clients.
 *
 * Every message is one frame: a fixed 32-byte little-endian header followed by
 * `payload_len` bytes of payload (docs/PROTOCOL.md has the byte layout):
 *
 *   off size field
 *     0    4 magic        "EPMO" (0x4F4D5045 read as LE u32)
 *     4    2 version      protocol version of this frame (1)
 *     6    2 type         epm_msg_type_t
 *     8    4 flags        EPM_FRAME_F_* bits; unknown bits are an error
 *    12    4 reserved     must be 0
 *    16    8 request_id   chosen by the client, echoed in the response
 *    24    8 payload_len  uint64; checked against the limit before anything is allocated
 *
 * The codec is pure: no I/O, no allocation, and it never reads past the bytes
 * it is given. epm_frame_decode() is the function a fuzzer drives
 * (tests/fuzz/fuzz_frame.c); the typed payload decoders below are equally
 * bounded, and every size they derive from the wire is overflow-checked.
 * Decoded payload views point into the caller's buffer (zero-copy); they are
 * valid as long as that buffer is.
 */
#ifndef EPMOE_PROTOCOL_H
#define EPMOE_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_PROTO_MAGIC 0x4F4D5045u /* bytes 'E' 'P' 'M' 'O' */
#define EPM_PROTO_VERSION 1u        /* the newest version this build speaks */
#define EPM_PROTO_MIN_VERSION 1u    /* the oldest version this build accepts */
#define EPM_FRAME_HEADER_SIZE 32u
/* Default cap on payload_len: big enough for 64Ki tokens of DeepSeek-R1
 * inline (64Ki x 7168 x 2 + logits); bulk traffic should use shared memory. */
#define EPM_PROTO_DEFAULT_MAX_PAYLOAD ((uint64_t)1 << 30)
#define EPM_PROTO_MAX_TEXT ((uint64_t)16 << 20) /* STATUS/STATS/ERROR/HEALTH strings */

typedef enum {
  EPM_MSG_HELLO = 1,    /* version negotiation + server info */
  EPM_MSG_STATUS = 2,   /* human/machine status: config, ranks, state */
  EPM_MSG_STATS = 3,    /* counters: INFO text, JSON or Prometheus */
  EPM_MSG_HEALTH = 4,   /* ok / not ready / failed + reason */
  EPM_MSG_FORWARD = 5,  /* one rank's share of one collective MoE step */
  EPM_MSG_SHM_ATTACH = 6, /* register a memfd (SCM_RIGHTS) as this connection's data region */
  EPM_MSG_SHUTDOWN = 7, /* drain and exit (the whole group) */
  EPM_MSG_ERROR = 8,    /* response only: status code + message */
  EPM_MSG_DEV_ATTACH = 9, /* register CUDA device memory (cuMemCreate POSIX fd, or a cudaIpcMemHandle_t) */
  EPM_MSG_TYPE_MAX = 9
} epm_msg_type_t;

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

/* ---- typed payloads --------------------------------------------------- */
/* Strings on the wire: u32 length + bytes (no NUL). Decoded strings are views
 * (ptr, len), NOT NUL-terminated. */
typedef struct {
  const char *ptr;
  uint32_t len;
} epm_str_t;

/* HELLO request: the range of versions the client speaks, and its name. */
typedef struct {
  uint16_t min_version, max_version;
  epm_str_t client_name;
} epm_hello_req_t;

/* HELLO response: the chosen version and what the server is. */
typedef struct {
  uint16_t version;  /* min(client max, server max), checked >= both mins */
  uint32_t rank, world_size;
  int64_t hidden;    /* H */
  int64_t num_experts; /* E (logits per token) */
  int64_t top_k;
  int64_t max_tokens_per_rank;
  uint64_t max_payload;
  epm_str_t server_version, model, backend;
} epm_hello_resp_t;

/* Pick the version both sides speak; EPM_ERR_PROTOCOL (naming both ranges) if none. */
epm_status_t epm_proto_negotiate(uint16_t cmin, uint16_t cmax, uint16_t *chosen);

typedef enum { EPM_FMT_TEXT = 0, EPM_FMT_JSON = 1, EPM_FMT_PROMETHEUS = 2 } epm_text_format_t;

typedef enum { EPM_HEALTH_OK = 0, EPM_HEALTH_NOT_READY = 1, EPM_HEALTH_FAILED = 2 } epm_health_t;
const char *epm_health_name(epm_health_t h); /* "ok", "not-ready", "failed" */

typedef struct {
  uint32_t state; /* epm_health_t */
  epm_str_t reason;
} epm_health_resp_t;

typedef enum { EPM_DATA_INLINE = 0, EPM_DATA_SHM = 1, EPM_DATA_DEVICE = 2 } epm_data_mode_t;

/* FORWARD request. Inline: the payload carries x then logits. Shm / device:
 * the data lives in the connection's attached memfd / device region at the
 * given byte offsets; the daemon writes y at y_offset before it answers. */
typedef struct {
  uint32_t layer;
  uint32_t data_mode; /* epm_data_mode_t */
  uint64_t step_id;   /* all ranks' FORWARDs with equal (layer, step_id) form one step */
  int64_t m;          /* tokens of this rank, >= 0 (0 = join without work) */
  int64_t hidden;     /* H; must equal the server's */
  int64_t num_experts;/* E; must equal the server's */
  uint64_t x_offset, logits_offset, y_offset; /* shm mode only (0 inline) */
  const void *x;      /* inline: bf16 [m, H] view (unaligned) */
  const void *logits; /* inline: fp32 [m, E] view (unaligned) */
} epm_fwd_req_t;

/* FORWARD response; y inline (view) or already written to the shm region. */
typedef struct {
  uint64_t step_id;
  int64_t m, hidden;
  uint32_t data_mode;
  uint64_t step_ns;   /* wall time of the collective on the server */
  const void *y;      /* inline: bf16 [m, H] view */
} epm_fwd_resp_t;

typedef struct {
  uint64_t size; /* bytes of the memfd the client sends with this frame */
} epm_shm_attach_t;

/* DEV_ATTACH request: the size of the shared allocation and the CUDA
 * device ordinal (as the daemon's process numbers devices) to map it on.
 * kind FD: a cuMemCreate allocation whose POSIX fd travels with the frame
 * (HAS_FD). kind IPC (legacy fallback): a cudaMalloc allocation named by the
 * 64-byte cudaIpcMemHandle_t in ipc_handle; no fd. */
#define EPM_DEV_ATTACH_FD 0u
#define EPM_DEV_ATTACH_IPC 1u
#define EPM_DEV_IPC_HANDLE_BYTES 64u
typedef struct {
  uint64_t size;
  uint32_t device;
  uint32_t kind; /* EPM_DEV_ATTACH_FD or EPM_DEV_ATTACH_IPC */
  uint8_t ipc_handle[EPM_DEV_IPC_HANDLE_BYTES]; /* kind IPC only */
} epm_dev_attach_t;

typedef struct {
  uint32_t code; /* epm_status_t */
  epm_str_t message;
} epm_error_resp_t;

/* Sizes of the fixed FORWARD parts, and the data bytes for m tokens;
 * EPM_ERR_OVERFLOW names the values when m * H * 2 + m * E * 4 does not fit. */
#define EPM_FWD_REQ_FIXED 64u
#define EPM_FWD_RESP_FIXED 40u
epm_status_t epm_fwd_data_bytes(int64_t m, int64_t hidden, int64_t num_experts, size_t *x_bytes,
                                size_t *logits_bytes);

/* Encoders append one complete frame to b. For inline FORWARD requests and
 * responses with with_data == 0, only the header and fixed part are written
 * (payload_len still counts the data) so a caller can send the data with
 * writev without copying it. */
epm_status_t epm_hello_req_encode(epm_buf_t *b, uint64_t rid, const epm_hello_req_t *m);
epm_status_t epm_hello_resp_encode(epm_buf_t *b, uint64_t rid, const epm_hello_resp_t *m);
epm_status_t epm_u32_req_encode(epm_buf_t *b, uint16_t type, uint64_t rid, uint32_t v);
epm_status_t epm_text_resp_encode(epm_buf_t *b, uint16_t type, uint64_t rid, const char *text,
                                  size_t len);
epm_status_t epm_health_resp_encode(epm_buf_t *b, uint64_t rid, const epm_health_resp_t *m);
epm_status_t epm_fwd_req_encode(epm_buf_t *b, uint64_t rid, const epm_fwd_req_t *m, int with_data);
epm_status_t epm_fwd_resp_encode(epm_buf_t *b, uint64_t rid, const epm_fwd_resp_t *m, int with_data);
epm_status_t epm_shm_attach_encode(epm_buf_t *b, uint64_t rid, const epm_shm_attach_t *m);
epm_status_t epm_dev_attach_encode(epm_buf_t *b, uint64_t rid, const epm_dev_attach_t *m);
epm_status_t epm_error_resp_encode(epm_buf_t *b, uint64_t rid, epm_status_t code, const char *msg);
/* Empty-payload frames: HEALTH/SHUTDOWN requests and acks. */
epm_status_t epm_empty_encode(epm_buf_t *b, uint16_t type, uint32_t flags, uint64_t rid);

/* Decoders take a frame from epm_frame_decode() and check its type, direction
 * and exact payload length (no trailing bytes). */
epm_status_t epm_hello_req_decode(const epm_frame_t *f, epm_hello_req_t *out);
epm_status_t epm_hello_resp_decode(const epm_frame_t *f, epm_hello_resp_t *out);
epm_status_t epm_u32_req_decode(const epm_frame_t *f, uint32_t *out); /* STATUS/STATS format */
epm_status_t epm_text_resp_decode(const epm_frame_t *f, epm_str_t *out);
epm_status_t epm_health_resp_decode(const epm_frame_t *f, epm_health_resp_t *out);
epm_status_t epm_fwd_req_decode(const epm_frame_t *f, epm_fwd_req_t *out);
epm_status_t epm_fwd_resp_decode(const epm_frame_t *f, epm_fwd_resp_t *out);
epm_status_t epm_shm_attach_decode(const epm_frame_t *f, epm_shm_attach_t *out);
epm_status_t epm_dev_attach_decode(const epm_frame_t *f, epm_dev_attach_t *out);
epm_status_t epm_error_resp_decode(const epm_frame_t *f, epm_error_resp_t *out);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_PROTOCOL_H */
