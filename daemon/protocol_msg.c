/* SPDX-License-Identifier: Apache-2.0 */
/* protocol_msg.c — message bodies of the epmoe wire protocol (layouts in
 * docs/PROTOCOL.md). The fixed part of every body is written and read by
 * code generated from its field list in EPM_BODY_MAP; what a field list
 * cannot say (the data after the fixed part, rules on values) lives in the
 * per-body hooks below. Every body goes through the same encode and decode
 * path, so all of them check type, direction, the fd flag and the exact
 * payload length (trailing bytes are an error) the same way, and derive data
 * sizes with overflow-checked arithmetic before comparing them to what
 * arrived. */
#include <string.h>

#include "epmoe/doorbell.h"
#include "epmoe/protocol.h"
#include "protocol_wire.h"

#define RESP EPM_FRAME_F_RESPONSE

/* docs/PROTOCOL.md and old peers know these sizes; the field lists must keep them. */
_Static_assert(EPM_FWD_REQ_FIXED == 72, "the FORWARD request's fixed part is 72 bytes on the wire");
_Static_assert(EPM_FWD_RESP_FIXED == 40, "the FORWARD response's fixed part is 40 bytes on the wire");

static const char *dir_name(uint32_t flags) { return (flags & RESP) ? "response" : "request"; }

/* ---- strings ------------------------------------------------------------ */

static void put_bytes(epm_buf_t *b, const void *p, size_t n) {
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_str(epm_buf_t *b, epm_str_t s) {
  epm__put32(b, s.len);
  put_bytes(b, s.ptr, s.len);
}

static epm_str_t get_str(epm__rd_t *r) {
  epm_str_t s = {NULL, 0};
  uint32_t n = epm__get32(r);
  const uint8_t *q;
  if (r->bad) return s;
  if (n > EPM_PROTO_MAX_TEXT) {
    r->bad = 1;
    return s;
  }
  q = epm__rd_take(r, n);
  if (!q) return s;
  s.ptr = (const char *)q;
  s.len = n;
  return s;
}

/* TEXT: whatever is left of the payload. */
static epm_str_t get_text(epm__rd_t *r) {
  epm_str_t s = {NULL, 0};
  size_t n = r->bad ? 0 : r->len - r->pos;
  if (n > EPM_PROTO_MAX_TEXT) {
    r->bad = 1;
    return s;
  }
  if (n == 0) return s; /* an empty payload has no pointer to offset */
  s.ptr = (const char *)epm__rd_take(r, n);
  s.len = (uint32_t)n;
  return s;
}

/* Encoder side: add a string's bytes, refusing one its decoder would refuse. */
static epm_status_t str_bytes(const char *body, const char *field, epm_str_t s, size_t *sum) {
  if (s.len > EPM_PROTO_MAX_TEXT)
    return epm_error(EPM_ERR_OVERFLOW, "%s.%s of %u bytes exceeds the limit of %llu bytes", body, field,
                     s.len, (unsigned long long)EPM_PROTO_MAX_TEXT);
  if (s.len && !s.ptr)
    return epm_error(EPM_ERR_INVALID_ARG, "%s.%s claims %u bytes but has no pointer", body, field, s.len);
  *sum += s.len;
  return EPM_OK;
}

/* ---- code generated from the field lists -------------------------------- */

/* var_B: bytes of B's strings (the fixed part's size is a constant). */
#define VAR_U16(n)
#define VAR_U32(n)
#define VAR_U64(n)
#define VAR_I64(n)
#define VAR_STR(n) EPM_TRY(str_bytes(bname, #n, m->n, &sum));
#define VAR_TEXT(n) VAR_STR(n)
#define VAR_PAD16(n)
#define VAR_PAD32(n)
#define VAR_VIEW(n)
#define VAR_HANDLE(n)
#define VAR(kind, n) VAR_##kind(n)

/* put_B: the fixed part, into space reserved by the caller. */
#define PUT_U16(n) epm__put16(b, m->n);
#define PUT_U32(n) epm__put32(b, m->n);
#define PUT_U64(n) epm__put64(b, m->n);
#define PUT_I64(n) epm__put64(b, (uint64_t)m->n);
#define PUT_STR(n) put_str(b, m->n);
#define PUT_TEXT(n) put_bytes(b, m->n.ptr, m->n.len);
#define PUT_PAD16(n) epm__put16(b, 0);
#define PUT_PAD32(n) epm__put32(b, 0);
#define PUT_VIEW(n)
#define PUT_HANDLE(n)
#define PUT(kind, n) PUT_##kind(n)

/* get_B: the fixed part; a short payload sets r->bad. */
#define GET_U16(n) m->n = epm__get16(r);
#define GET_U32(n) m->n = epm__get32(r);
#define GET_U64(n) m->n = epm__get64(r);
#define GET_I64(n) m->n = (int64_t)epm__get64(r);
#define GET_STR(n) m->n = get_str(r);
#define GET_TEXT(n) m->n = get_text(r);
#define GET_PAD16(n) (void)epm__get16(r);
#define GET_PAD32(n) (void)epm__get32(r);
#define GET_VIEW(n)
#define GET_HANDLE(n)
#define GET(kind, n) GET_##kind(n)

#define MEMBERS_U16 +1
#define MEMBERS_U32 +1
#define MEMBERS_U64 +1
#define MEMBERS_I64 +1
#define MEMBERS_STR +1
#define MEMBERS_TEXT +1
#define MEMBERS_PAD16
#define MEMBERS_PAD32
#define MEMBERS_VIEW +1
#define MEMBERS_HANDLE +1
#define MEMBERS(kind, n) MEMBERS_##kind

#define GEN_BODY(body, T, dir, fd, FIELDS)                   \
  static epm_status_t var_##body(const void *vm, size_t *n) { \
    const T *m = vm;                                          \
    const char *bname = #body;                                \
    size_t sum = 0;                                           \
    (void)m;                                                  \
    (void)bname;                                              \
    FIELDS(VAR)                                               \
    *n = sum;                                                 \
    return EPM_OK;                                            \
  }                                                           \
  static void put_##body(epm_buf_t *b, const void *vm) {     \
    const T *m = vm;                                          \
    (void)m;                                                  \
    (void)b;                                                  \
    FIELDS(PUT)                                               \
  }                                                           \
  static void get_##body(epm__rd_t *r, void *vm) {            \
    T *m = vm;                                                \
    (void)m;                                                  \
    (void)r;                                                  \
    FIELDS(GET)                                               \
  }
EPM_BODY_MAP(GEN_BODY)

/* The most bytes each kind can add beyond the fixed part, and whether its
 * length has no bound of its own (FORWARD data: only the frame limit). */
#define XTRA_U16(n)
#define XTRA_U32(n)
#define XTRA_U64(n)
#define XTRA_I64(n)
#define XTRA_STR(n) +(uint64_t)EPM_PROTO_MAX_TEXT
#define XTRA_TEXT(n) +(uint64_t)EPM_PROTO_MAX_TEXT
#define XTRA_PAD16(n)
#define XTRA_PAD32(n)
#define XTRA_VIEW(n)
#define XTRA_HANDLE(n) +(uint64_t)EPM_DEV_IPC_HANDLE_BYTES
#define XTRA(kind, n) XTRA_##kind(n)
#define OPEN_U16
#define OPEN_U32
#define OPEN_U64
#define OPEN_I64
#define OPEN_STR
#define OPEN_TEXT
#define OPEN_PAD16
#define OPEN_PAD32
#define OPEN_VIEW +1
#define OPEN_HANDLE
#define OPEN(kind, n) OPEN_##kind

enum { FD_NOFD, FD_FD, FD_KIND };
#define DIR_REQ 0u
#define DIR_RESP RESP

typedef struct {
  const char *name;
  uint32_t dir;   /* 0 or RESP */
  int fd;         /* FD_* */
  size_t size;    /* sizeof the C type */
  size_t fixed;   /* bytes of the fixed part */
  int members;    /* 0: the empty bodies, whose pointers may be NULL */
  uint64_t max;   /* the most payload the body can take (fixed + strings/handle at their limit) */
  int open_ended; /* > 0: a VIEW tail bounded only by the frame limit */
  epm_status_t (*var)(const void *m, size_t *n);
  void (*put)(epm_buf_t *b, const void *m);
  void (*get)(epm__rd_t *r, void *m);
} body_desc_t;

static const body_desc_t bodies[EPM_BODY_COUNT] = {
    [EPM_BODY_none] = {"none", 0, FD_NOFD, 0, 0, 0, 0, 0, NULL, NULL, NULL},
#define DESC(body, T, dir, fd, FIELDS)                                                            \
  [EPM_BODY_##body] = {#body,                                                                   \
                       DIR_##dir,                                                               \
                       FD_##fd,                                                                 \
                       sizeof(T),                                                               \
                       EPM_PROTO_FIXED_BYTES(FIELDS),                                           \
                       0 FIELDS(MEMBERS),                                                       \
                       (uint64_t)EPM_PROTO_FIXED_BYTES(FIELDS) FIELDS(XTRA),                    \
                       0 FIELDS(OPEN),                                                          \
                       var_##body,                                                              \
                       put_##body,                                                              \
                       get_##body},
    EPM_BODY_MAP(DESC)
#undef DESC
};

uint64_t epm_msg_max_payload(uint16_t type, int response, uint64_t max_payload) {
  epm_body_t b = epm_msg_body(type, response);
  if (b == EPM_BODY_none) return 0;
  const body_desc_t *d = &bodies[b];
  return d->open_ended || d->max > max_payload ? max_payload : d->max;
}

const char *epm_body_name(epm_body_t body) {
  return (unsigned)body < EPM_BODY_COUNT ? bodies[body].name : "unknown";
}

/* ---- hooks: what the field lists cannot say ----------------------------- */

typedef struct {
  /* encode: check a private copy of the body (which it may normalise), say
   * how many bytes follow the fixed part, add frame flags */
  epm_status_t (*prep)(void *m, size_t *tail, uint32_t *flags);
  void (*put_tail)(epm_buf_t *b, const void *m); /* write those bytes */
  /* decode, after the fixed part: read and check what follows it */
  epm_status_t (*get_tail)(epm__rd_t *r, const epm_frame_t *f, void *m);
  /* decode, after the length check: rules on values */
  epm_status_t (*check)(const epm_frame_t *f, const void *m);
} body_hooks_t;

const char *epm_health_name(epm_health_t h) {
  switch (h) {
    case EPM_HEALTH_OK: return "ok";
    case EPM_HEALTH_NOT_READY: return "not-ready";
    case EPM_HEALTH_FAILED: return "failed";
    default: return "unknown";
  }
}

epm_status_t epm_proto_negotiate(uint16_t cmin, uint16_t cmax, uint16_t *chosen) {
  uint16_t v = cmax < EPM_PROTO_VERSION ? cmax : (uint16_t)EPM_PROTO_VERSION;
  if (cmin > cmax || v < cmin || v < EPM_PROTO_MIN_VERSION)
    return epm_error(EPM_ERR_PROTOCOL,
                     "no common protocol version: client speaks %u..%u, server speaks %u..%u", cmin,
                     cmax, EPM_PROTO_MIN_VERSION, EPM_PROTO_VERSION);
  *chosen = v;
  return EPM_OK;
}

epm_status_t epm_fwd_data_bytes(int64_t m, int64_t hidden, int64_t num_experts, size_t *x_bytes,
                                size_t *logits_bytes) {
  int64_t xb, lb, sum;
  if (m < 0 || hidden <= 0 || num_experts <= 0)
    return epm_error(EPM_ERR_INVALID_ARG, "FORWARD shape m=%lld hidden=%lld experts=%lld: m must be >= 0, hidden and experts > 0",
                     (long long)m, (long long)hidden, (long long)num_experts);
  if (epm_mul3_i64(m, hidden, 2, &xb) || epm_mul3_i64(m, num_experts, 4, &lb) ||
      epm_add_i64(xb, lb, &sum) || (uint64_t)sum > SIZE_MAX)
    return epm_error(EPM_ERR_OVERFLOW,
                     "FORWARD data for m=%lld tokens x hidden=%lld (bf16) + experts=%lld (fp32) overflows 64 bits",
                     (long long)m, (long long)hidden, (long long)num_experts);
  *x_bytes = (size_t)xb;
  *logits_bytes = (size_t)lb;
  return EPM_OK;
}

static epm_status_t hello_resp_check(const epm_frame_t *f, const void *vm) {
  const epm_hello_resp_t *m = vm;
  (void)f;
  if (m->hidden <= 0 || m->num_experts <= 0 || m->top_k <= 0 || m->max_tokens_per_rank < 0 ||
      m->world_size == 0 || m->rank >= m->world_size)
    return epm_error(EPM_ERR_PROTOCOL,
                     "HELLO response has impossible values: rank %u of %u, hidden %lld, experts %lld, top_k %lld",
                     m->rank, m->world_size, (long long)m->hidden, (long long)m->num_experts,
                     (long long)m->top_k);
  return EPM_OK;
}

static epm_status_t fmt_req_check(const epm_frame_t *f, const void *vm) {
  const epm_fmt_req_t *m = vm;
  if (m->format > EPM_FMT_PROMETHEUS)
    return epm_error(EPM_ERR_PROTOCOL, "%s format %u unknown (0 text, 1 json, 2 prometheus)",
                     epm_msg_type_name(f->type), m->format);
  return EPM_OK;
}

static epm_status_t health_resp_check(const epm_frame_t *f, const void *vm) {
  const epm_health_resp_t *m = vm;
  (void)f;
  if (m->state > EPM_HEALTH_FAILED)
    return epm_error(EPM_ERR_PROTOCOL, "HEALTH state %u unknown (0 ok, 1 not-ready, 2 failed)", m->state);
  return EPM_OK;
}

/* FORWARD request: inline data (x then logits) follows the fixed part. */
static epm_status_t fwd_req_prep(void *vm, size_t *tail, uint32_t *flags) {
  epm_fwd_req_t *m = vm;
  size_t xb, lb;
  (void)flags;
  EPM_TRY(epm_fwd_data_bytes(m->m, m->hidden, m->num_experts, &xb, &lb));
  if (m->data_mode != EPM_DATA_INLINE) return EPM_OK;
  if ((xb && !m->x) || (lb && !m->logits))
    return epm_error(EPM_ERR_INVALID_ARG, "inline FORWARD of m=%lld tokens without x or logits", (long long)m->m);
  m->x_offset = m->logits_offset = m->y_offset = 0; /* the decoder refuses offsets inline */
  if (epm_add_size(xb, lb, tail))
    return epm_error(EPM_ERR_OVERFLOW, "FORWARD payload for m=%lld overflows", (long long)m->m);
  return EPM_OK;
}

static void fwd_req_put_tail(epm_buf_t *b, const void *vm) {
  const epm_fwd_req_t *m = vm;
  size_t xb, lb;
  if (m->data_mode != EPM_DATA_INLINE || epm_fwd_data_bytes(m->m, m->hidden, m->num_experts, &xb, &lb) != EPM_OK)
    return; /* fwd_req_prep checked the shape */
  put_bytes(b, m->x, xb);
  put_bytes(b, m->logits, lb);
}

static int range_ok(uint64_t off, size_t n) { return off <= UINT64_MAX - n; }

static epm_status_t fwd_req_get_tail(epm__rd_t *r, const epm_frame_t *f, void *vm) {
  epm_fwd_req_t *m = vm;
  size_t xb, lb;
  (void)f;
  if (m->data_mode > EPM_DATA_DEVICE)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD data mode %u unknown (0 inline, 1 shm, 2 device)", m->data_mode);
  EPM_TRY(epm_fwd_data_bytes(m->m, m->hidden, m->num_experts, &xb, &lb));
  if (m->data_mode == EPM_DATA_INLINE) {
    /* Compare against what is left rather than adding to the fixed part, so a
     * huge m cannot wrap the sum into a small, matching number. */
    size_t left = r->len - r->pos;
    if (xb > left || lb != left - xb)
      return epm_error(EPM_ERR_PROTOCOL,
                       "FORWARD inline data is %zu bytes; m=%lld x hidden=%lld x 2 + m x experts=%lld x 4 = %zu + %zu expected",
                       left, (long long)m->m, (long long)m->hidden, (long long)m->num_experts, xb, lb);
    m->x = epm__rd_take(r, xb);
    m->logits = epm__rd_take(r, lb);
    if (m->x_offset || m->logits_offset || m->y_offset)
      return epm_error(EPM_ERR_PROTOCOL, "FORWARD inline request carries non-zero shm offsets");
  } else if (!range_ok(m->x_offset, xb) || !range_ok(m->logits_offset, lb) || !range_ok(m->y_offset, xb)) {
    return epm_error(EPM_ERR_OVERFLOW, "FORWARD shm offsets x=%llu logits=%llu y=%llu plus sizes overflow 64 bits",
                     (unsigned long long)m->x_offset, (unsigned long long)m->logits_offset,
                     (unsigned long long)m->y_offset);
  }
  return EPM_OK;
}

static epm_status_t fwd_req_check(const epm_frame_t *f, const void *vm) {
  const epm_fwd_req_t *m = vm;
  (void)f;
  if (m->flags & ~EPM_FWD_F_KNOWN)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD flags 0x%x have unknown bits (known 0x%x)", m->flags,
                     EPM_FWD_F_KNOWN);
  if (m->partial_dtype >= EPM_DTYPE_COUNT)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD partial dtype %u unknown (0 f32, 1 bf16)", m->partial_dtype);
  return EPM_OK;
}

/* FORWARD response: inline y follows the fixed part. */
static epm_status_t fwd_resp_prep(void *vm, size_t *tail, uint32_t *flags) {
  epm_fwd_resp_t *m = vm;
  size_t xb, lb;
  (void)flags;
  EPM_TRY(epm_fwd_data_bytes(m->m, m->hidden, 1, &xb, &lb));
  if (m->data_mode != EPM_DATA_INLINE) return EPM_OK;
  if (xb && !m->y)
    return epm_error(EPM_ERR_INVALID_ARG, "inline FORWARD response of m=%lld tokens without y", (long long)m->m);
  *tail = xb;
  return EPM_OK;
}

static void fwd_resp_put_tail(epm_buf_t *b, const void *vm) {
  const epm_fwd_resp_t *m = vm;
  size_t xb, lb;
  if (m->data_mode != EPM_DATA_INLINE || epm_fwd_data_bytes(m->m, m->hidden, 1, &xb, &lb) != EPM_OK)
    return; /* fwd_resp_prep checked the shape */
  put_bytes(b, m->y, xb);
}

static epm_status_t fwd_resp_get_tail(epm__rd_t *r, const epm_frame_t *f, void *vm) {
  epm_fwd_resp_t *m = vm;
  size_t xb, lb, left = r->len - r->pos;
  (void)f;
  if (m->data_mode > EPM_DATA_DEVICE)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD response data mode %u unknown", m->data_mode);
  EPM_TRY(epm_fwd_data_bytes(m->m, m->hidden, 1, &xb, &lb));
  if (m->data_mode == EPM_DATA_INLINE) {
    if (left != xb)
      return epm_error(EPM_ERR_PROTOCOL, "FORWARD response carries %zu data bytes; m=%lld x hidden=%lld x 2 = %zu expected",
                       left, (long long)m->m, (long long)m->hidden, xb);
    m->y = epm__rd_take(r, xb);
  }
  return EPM_OK;
}

static epm_status_t shm_attach_check(const epm_frame_t *f, const void *vm) {
  const epm_shm_attach_t *m = vm;
  (void)f;
  if (m->size == 0) return epm_error(EPM_ERR_PROTOCOL, "SHM_ATTACH of an empty region");
  return EPM_OK;
}

/* DEV_ATTACH: the fd variant carries an fd and nothing else; the IPC variant
 * carries the handle after the fixed part and must not carry an fd (the
 * daemon would otherwise hold an fd nobody uses). */
static epm_status_t dev_attach_prep(void *vm, size_t *tail, uint32_t *flags) {
  const epm_dev_attach_t *m = vm;
  if (m->kind == EPM_DEV_ATTACH_IPC) {
    *tail = EPM_DEV_IPC_HANDLE_BYTES;
  } else if (m->kind == EPM_DEV_ATTACH_FD) {
    *flags |= EPM_FRAME_F_HAS_FD;
  } else {
    return epm_error(EPM_ERR_INVALID_ARG, "DEV_ATTACH kind %u (known: 0 fd, 1 ipc)", m->kind);
  }
  return EPM_OK;
}

static void dev_attach_put_tail(epm_buf_t *b, const void *vm) {
  const epm_dev_attach_t *m = vm;
  if (m->kind == EPM_DEV_ATTACH_IPC) put_bytes(b, m->ipc_handle, EPM_DEV_IPC_HANDLE_BYTES);
}

static epm_status_t dev_attach_get_tail(epm__rd_t *r, const epm_frame_t *f, void *vm) {
  epm_dev_attach_t *m = vm;
  int has_fd = (f->flags & EPM_FRAME_F_HAS_FD) != 0;
  if (m->kind == EPM_DEV_ATTACH_IPC) {
    const uint8_t *h;
    if (has_fd)
      return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH with a CUDA IPC handle must not carry a file descriptor");
    h = epm__rd_take(r, EPM_DEV_IPC_HANDLE_BYTES); /* a short one is reported as truncated */
    if (h) memcpy(m->ipc_handle, h, EPM_DEV_IPC_HANDLE_BYTES);
  } else if (m->kind == EPM_DEV_ATTACH_FD) {
    if (!has_fd) return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH frame without the HAS_FD flag");
  } else {
    return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH kind %u is unknown (0 fd, 1 CUDA IPC handle)", m->kind);
  }
  return EPM_OK;
}

static epm_status_t dev_attach_check(const epm_frame_t *f, const void *vm) {
  const epm_dev_attach_t *m = vm;
  (void)f;
  if (m->size == 0) return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH of an empty region");
  return EPM_OK;
}

static epm_status_t db_attach_check(const epm_frame_t *f, const void *vm) {
  const epm_db_attach_t *m = vm;
  (void)f;
  if (m->mode > EPM_DB_MODE_DEVICE)
    return epm_error(EPM_ERR_PROTOCOL, "DOORBELL_ATTACH mode %u unknown (0 host, 1 device)", m->mode);
  if (m->size < EPM_DB_CTL_BYTES)
    return epm_error(EPM_ERR_PROTOCOL, "DOORBELL_ATTACH region of %llu bytes is smaller than its %u-byte control block",
                     (unsigned long long)m->size, EPM_DB_CTL_BYTES);
  if (m->capacity <= 0)
    return epm_error(EPM_ERR_PROTOCOL, "DOORBELL_ATTACH capacity %lld tokens must be > 0", (long long)m->capacity);
  return EPM_OK;
}

/* Bodies not named here are their field list and nothing more. */
static const body_hooks_t hooks[EPM_BODY_COUNT] = {
    [EPM_BODY_hello_resp] = {.check = hello_resp_check},
    [EPM_BODY_fmt_req] = {.check = fmt_req_check},
    [EPM_BODY_health_resp] = {.check = health_resp_check},
    [EPM_BODY_fwd_req] = {fwd_req_prep, fwd_req_put_tail, fwd_req_get_tail, fwd_req_check},
    [EPM_BODY_fwd_resp] = {fwd_resp_prep, fwd_resp_put_tail, fwd_resp_get_tail, NULL},
    [EPM_BODY_shm_attach] = {.check = shm_attach_check},
    [EPM_BODY_dev_attach] = {dev_attach_prep, dev_attach_put_tail, dev_attach_get_tail, dev_attach_check},
    [EPM_BODY_db_attach] = {.check = db_attach_check},
};

/* ---- the one encode and decode path ------------------------------------- */

static epm_status_t body_encode(epm_body_t id, epm_buf_t *b, uint16_t type, uint64_t rid, const void *m,
                                int with_tail) {
  const body_desc_t *d = &bodies[id];
  const body_hooks_t *h = &hooks[id];
  epm_msg_body_t c;
  uint32_t flags = d->dir | (d->fd == FD_FD ? EPM_FRAME_F_HAS_FD : 0u);
  size_t var = 0, tail = 0, head, plen, total;
  epm_body_t want = epm_msg_body(type, d->dir != 0);
  if (want != id)
    return epm_error(EPM_ERR_INVALID_ARG, "a %s %s (type %u) carries the %s body, not %s", epm_msg_type_name(type),
                     dir_name(d->dir), type, epm_body_name(want), d->name);
  if (!m && d->members)
    return epm_error(EPM_ERR_INVALID_ARG, "%s %s: no %s body given", epm_msg_type_name(type), dir_name(d->dir),
                     d->name);
  memset(&c, 0, sizeof c);
  if (m) memcpy(&c, m, d->size);
  if (h->prep) EPM_TRY(h->prep(&c, &tail, &flags));
  EPM_TRY(d->var(&c, &var));
  head = d->fixed + var; /* strings are capped at 16 MiB each: no overflow */
  if (epm_add_size(head, tail, &plen) || epm_add_size(EPM_FRAME_HEADER_SIZE, with_tail ? plen : head, &total))
    return epm_error(EPM_ERR_OVERFLOW, "%s %s of %zu + %zu bytes does not fit in memory", epm_msg_type_name(type),
                     dir_name(d->dir), head, tail);
  EPM_TRY(epm_buf_reserve(b, total));
  epm_frame_header_encode(b->data + b->len, type, flags, rid, plen);
  b->len += EPM_FRAME_HEADER_SIZE;
  d->put(b, &c);
  if (with_tail && h->put_tail) h->put_tail(b, &c);
  return EPM_OK;
}

static epm_status_t body_decode(epm_body_t id, const epm_frame_t *f, void *out) {
  const body_desc_t *d = &bodies[id];
  const body_hooks_t *h = &hooks[id];
  epm__rd_t r = {f->payload, (size_t)f->payload_len, 0, f->payload == NULL && f->payload_len != 0};
  epm_msg_body_t m;
  int has_fd = (f->flags & EPM_FRAME_F_HAS_FD) != 0;
  epm_body_t got = epm_msg_body(f->type, (f->flags & RESP) != 0);
  if (got != id)
    return epm_error(EPM_ERR_PROTOCOL, "expected a %s body; a %s %s (type %u) carries %s", d->name,
                     epm_msg_type_name(f->type), dir_name(f->flags), f->type,
                     got == EPM_BODY_none ? "nothing" : epm_body_name(got));
  if (d->fd == FD_NOFD && has_fd)
    return epm_error(EPM_ERR_PROTOCOL, "a %s %s must not carry a file descriptor (flags 0x%x)",
                     epm_msg_type_name(f->type), dir_name(f->flags), f->flags);
  if (d->fd == FD_FD && !has_fd)
    return epm_error(EPM_ERR_PROTOCOL, "%s frame without the HAS_FD flag", epm_msg_type_name(f->type));
  memset(&m, 0, sizeof m);
  d->get(&r, &m);
  if (r.bad)
    return epm_error(EPM_ERR_PROTOCOL, "%s %s payload of %llu bytes is shorter than its %zu-byte fixed part or has an oversized string",
                     epm_msg_type_name(f->type), dir_name(f->flags), (unsigned long long)f->payload_len, d->fixed);
  if (h->get_tail) EPM_TRY(h->get_tail(&r, f, &m));
  if (r.bad)
    return epm_error(EPM_ERR_PROTOCOL, "%s %s payload of %llu bytes is truncated", epm_msg_type_name(f->type),
                     dir_name(f->flags), (unsigned long long)f->payload_len);
  if (r.pos != r.len)
    return epm_error(EPM_ERR_PROTOCOL, "%s %s payload has %zu trailing bytes after %zu used",
                     epm_msg_type_name(f->type), dir_name(f->flags), r.len - r.pos, r.pos);
  if (h->check) EPM_TRY(h->check(f, &m));
  if (out) memcpy(out, &m, d->size);
  return EPM_OK;
}

#define GEN_TYPED(body, T, dir, fd, FIELDS)                                                   \
  epm_status_t epm_##body##_encode(epm_buf_t *b, uint16_t type, uint64_t rid, const T *m) { \
    return body_encode(EPM_BODY_##body, b, type, rid, m, 1);                                 \
  }                                                                                          \
  epm_status_t epm_##body##_decode(const epm_frame_t *f, T *out) { return body_decode(EPM_BODY_##body, f, out); }
EPM_BODY_MAP(GEN_TYPED)

static epm_status_t msg_encode(epm_buf_t *b, uint16_t type, int response, uint64_t rid, const void *body,
                               int with_tail) {
  epm_body_t id = epm_msg_body(type, response);
  if (id == EPM_BODY_none)
    return epm_error(EPM_ERR_INVALID_ARG, "there is no %s %s (type %u)", epm_msg_type_name(type),
                     response ? "response" : "request", type);
  return body_encode(id, b, type, rid, body, with_tail);
}

epm_status_t epm_msg_encode(epm_buf_t *b, uint16_t type, int response, uint64_t rid, const void *body) {
  return msg_encode(b, type, response, rid, body, 1);
}

epm_status_t epm_msg_encode_head(epm_buf_t *b, uint16_t type, int response, uint64_t rid, const void *body) {
  return msg_encode(b, type, response, rid, body, 0);
}

epm_status_t epm_msg_decode(const epm_frame_t *f, void *body) {
  epm_body_t id = epm_msg_body(f->type, (f->flags & RESP) != 0);
  if (id == EPM_BODY_none)
    return epm_error(EPM_ERR_PROTOCOL, "there is no %s %s (type %u)", epm_msg_type_name(f->type),
                     dir_name(f->flags), f->type);
  return body_decode(id, f, body);
}
