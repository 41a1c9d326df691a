/* protocol_msg.c — typed payloads of the epmoe wire protocol (layouts in
 * docs/PROTOCOL.md). Decoders check type, direction and the exact payload
 * length (trailing bytes are an error), and derive every data size with
 * overflow-checked arithmetic before comparing it to what arrived. */
#include <string.h>

#include "epmoe/protocol.h"
#include "protocol_wire.h"

#define RESP EPM_FRAME_F_RESPONSE

/* ---- helpers ---------------------------------------------------------- */

static size_t cstrlen32(const char *s) {
  size_t n = s ? strlen(s) : 0;
  return n > EPM_PROTO_MAX_TEXT ? (size_t)EPM_PROTO_MAX_TEXT : n;
}

static void put_str(epm_buf_t *b, const char *s, size_t n) {
  epm__put32(b, (uint32_t)n);
  if (n) memcpy(b->data + b->len, s, n);
  b->len += n;
}

static void put_view(epm_buf_t *b, epm_str_t v) { put_str(b, v.ptr, v.len); }

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

/* Start a frame: reserve header + payload, write the header. */
static epm_status_t begin(epm_buf_t *b, uint16_t type, uint32_t flags, uint64_t rid, size_t plen,
                          size_t reserve) {
  size_t total;
  if (epm_add_size(EPM_FRAME_HEADER_SIZE, reserve, &total))
    return epm_error(EPM_ERR_OVERFLOW, "%s frame of %zu bytes does not fit in memory",
                     epm_msg_type_name(type), reserve);
  EPM_TRY(epm_buf_reserve(b, total));
  epm_frame_header_encode(b->data + b->len, type, flags, rid, plen);
  b->len += EPM_FRAME_HEADER_SIZE;
  return EPM_OK;
}

static epm_status_t expect(const epm_frame_t *f, uint16_t type, int response) {
  if (f->type != type)
    return epm_error(EPM_ERR_PROTOCOL, "expected a %s frame, got %s (type %u)",
                     epm_msg_type_name(type), epm_msg_type_name(f->type), f->type);
  if (!!(f->flags & RESP) != !!response)
    return epm_error(EPM_ERR_PROTOCOL, "%s frame has the wrong direction (flags 0x%x)",
                     epm_msg_type_name(type), f->flags);
  return EPM_OK;
}

static epm_status_t finish(const epm__rd_t *r, const epm_frame_t *f) {
  if (r->bad)
    return epm_error(EPM_ERR_PROTOCOL, "%s payload of %llu bytes is truncated or has an oversized string",
                     epm_msg_type_name(f->type), (unsigned long long)f->payload_len);
  if (r->pos != r->len)
    return epm_error(EPM_ERR_PROTOCOL, "%s payload has %zu trailing bytes after %zu used",
                     epm_msg_type_name(f->type), r->len - r->pos, r->pos);
  return EPM_OK;
}

static epm__rd_t reader(const epm_frame_t *f) {
  epm__rd_t r = {f->payload, (size_t)f->payload_len, 0, f->payload == NULL && f->payload_len != 0};
  return r;
}

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

/* ---- HELLO ------------------------------------------------------------- */

epm_status_t epm_hello_req_encode(epm_buf_t *b, uint64_t rid, const epm_hello_req_t *m) {
  size_t plen = 4 + 4 + (size_t)m->client_name.len;
  EPM_TRY(begin(b, EPM_MSG_HELLO, 0, rid, plen, plen));
  epm__put16(b, m->min_version);
  epm__put16(b, m->max_version);
  put_view(b, m->client_name);
  return EPM_OK;
}

epm_status_t epm_hello_req_decode(const epm_frame_t *f, epm_hello_req_t *out) {
  epm__rd_t r = reader(f);
  epm_hello_req_t m;
  EPM_TRY(expect(f, EPM_MSG_HELLO, 0));
  m.min_version = epm__get16(&r);
  m.max_version = epm__get16(&r);
  m.client_name = get_str(&r);
  EPM_TRY(finish(&r, f));
  *out = m;
  return EPM_OK;
}

epm_status_t epm_hello_resp_encode(epm_buf_t *b, uint64_t rid, const epm_hello_resp_t *m) {
  size_t plen = 2 + 2 + 4 + 4 + 4 + 5 * 8 + 3 * 4 + (size_t)m->server_version.len +
                (size_t)m->model.len + (size_t)m->backend.len;
  EPM_TRY(begin(b, EPM_MSG_HELLO, RESP, rid, plen, plen));
  epm__put16(b, m->version);
  epm__put16(b, 0);
  epm__put32(b, m->rank);
  epm__put32(b, m->world_size);
  epm__put32(b, 0);
  epm__put64(b, (uint64_t)m->hidden);
  epm__put64(b, (uint64_t)m->num_experts);
  epm__put64(b, (uint64_t)m->top_k);
  epm__put64(b, (uint64_t)m->max_tokens_per_rank);
  epm__put64(b, m->max_payload);
  put_view(b, m->server_version);
  put_view(b, m->model);
  put_view(b, m->backend);
  return EPM_OK;
}

epm_status_t epm_hello_resp_decode(const epm_frame_t *f, epm_hello_resp_t *out) {
  epm__rd_t r = reader(f);
  epm_hello_resp_t m;
  EPM_TRY(expect(f, EPM_MSG_HELLO, 1));
  m.version = epm__get16(&r);
  (void)epm__get16(&r);
  m.rank = epm__get32(&r);
  m.world_size = epm__get32(&r);
  (void)epm__get32(&r);
  m.hidden = (int64_t)epm__get64(&r);
  m.num_experts = (int64_t)epm__get64(&r);
  m.top_k = (int64_t)epm__get64(&r);
  m.max_tokens_per_rank = (int64_t)epm__get64(&r);
  m.max_payload = epm__get64(&r);
  m.server_version = get_str(&r);
  m.model = get_str(&r);
  m.backend = get_str(&r);
  EPM_TRY(finish(&r, f));
  if (m.hidden <= 0 || m.num_experts <= 0 || m.top_k <= 0 || m.max_tokens_per_rank < 0 ||
      m.world_size == 0 || m.rank >= m.world_size)
    return epm_error(EPM_ERR_PROTOCOL,
                     "HELLO response has impossible values: rank %u of %u, hidden %lld, experts %lld, top_k %lld",
                     m.rank, m.world_size, (long long)m.hidden, (long long)m.num_experts,
                     (long long)m.top_k);
  *out = m;
  return EPM_OK;
}

/* ---- STATUS / STATS / HEALTH / SHUTDOWN -------------------------------- */

epm_status_t epm_u32_req_encode(epm_buf_t *b, uint16_t type, uint64_t rid, uint32_t v) {
  EPM_TRY(begin(b, type, 0, rid, 4, 4));
  epm__put32(b, v);
  return EPM_OK;
}

epm_status_t epm_u32_req_decode(const epm_frame_t *f, uint32_t *out) {
  epm__rd_t r = reader(f);
  uint32_t v;
  if (f->type != EPM_MSG_STATUS && f->type != EPM_MSG_STATS)
    return epm_error(EPM_ERR_PROTOCOL, "%s frame carries no format word", epm_msg_type_name(f->type));
  EPM_TRY(expect(f, f->type, 0));
  v = epm__get32(&r);
  EPM_TRY(finish(&r, f));
  if (v > EPM_FMT_PROMETHEUS)
    return epm_error(EPM_ERR_PROTOCOL, "%s format %u unknown (0 text, 1 json, 2 prometheus)",
                     epm_msg_type_name(f->type), v);
  *out = v;
  return EPM_OK;
}

epm_status_t epm_text_resp_encode(epm_buf_t *b, uint16_t type, uint64_t rid, const char *text,
                                  size_t len) {
  if (len > EPM_PROTO_MAX_TEXT)
    return epm_error(EPM_ERR_OVERFLOW, "%s text of %zu bytes exceeds %llu", epm_msg_type_name(type),
                     len, (unsigned long long)EPM_PROTO_MAX_TEXT);
  return epm_frame_encode(b, type, RESP, rid, text, len);
}

epm_status_t epm_text_resp_decode(const epm_frame_t *f, epm_str_t *out) {
  if (f->type != EPM_MSG_STATUS && f->type != EPM_MSG_STATS)
    return epm_error(EPM_ERR_PROTOCOL, "expected a STATUS or STATS response, got %s",
                     epm_msg_type_name(f->type));
  EPM_TRY(expect(f, f->type, 1));
  if (f->payload_len > EPM_PROTO_MAX_TEXT)
    return epm_error(EPM_ERR_PROTOCOL, "%s text of %llu bytes exceeds %llu",
                     epm_msg_type_name(f->type), (unsigned long long)f->payload_len,
                     (unsigned long long)EPM_PROTO_MAX_TEXT);
  out->ptr = (const char *)f->payload;
  out->len = (uint32_t)f->payload_len;
  return EPM_OK;
}

epm_status_t epm_health_resp_encode(epm_buf_t *b, uint64_t rid, const epm_health_resp_t *m) {
  size_t plen = 4 + 4 + (size_t)m->reason.len;
  EPM_TRY(begin(b, EPM_MSG_HEALTH, RESP, rid, plen, plen));
  epm__put32(b, m->state);
  put_view(b, m->reason);
  return EPM_OK;
}

epm_status_t epm_health_resp_decode(const epm_frame_t *f, epm_health_resp_t *out) {
  epm__rd_t r = reader(f);
  epm_health_resp_t m;
  EPM_TRY(expect(f, EPM_MSG_HEALTH, 1));
  m.state = epm__get32(&r);
  m.reason = get_str(&r);
  EPM_TRY(finish(&r, f));
  if (m.state > EPM_HEALTH_FAILED)
    return epm_error(EPM_ERR_PROTOCOL, "HEALTH state %u unknown (0 ok, 1 not-ready, 2 failed)", m.state);
  *out = m;
  return EPM_OK;
}

epm_status_t epm_empty_encode(epm_buf_t *b, uint16_t type, uint32_t flags, uint64_t rid) {
  return begin(b, type, flags, rid, 0, 0);
}

/* ---- FORWARD ----------------------------------------------------------- */

epm_status_t epm_fwd_req_encode(epm_buf_t *b, uint64_t rid, const epm_fwd_req_t *m, int with_data) {
  size_t xb = 0, lb = 0, plen = EPM_FWD_REQ_FIXED, reserve;
  EPM_TRY(epm_fwd_data_bytes(m->m, m->hidden, m->num_experts, &xb, &lb));
  if (m->data_mode == EPM_DATA_INLINE && (epm_add_size(plen, xb, &plen) || epm_add_size(plen, lb, &plen)))
    return epm_error(EPM_ERR_OVERFLOW, "FORWARD payload for m=%lld overflows", (long long)m->m);
  reserve = with_data ? plen : EPM_FWD_REQ_FIXED;
  EPM_TRY(begin(b, EPM_MSG_FORWARD, 0, rid, plen, reserve));
  epm__put32(b, m->layer);
  epm__put32(b, m->data_mode);
  epm__put64(b, m->step_id);
  epm__put64(b, (uint64_t)m->m);
  epm__put64(b, (uint64_t)m->hidden);
  epm__put64(b, (uint64_t)m->num_experts);
  epm__put64(b, m->data_mode != EPM_DATA_INLINE ? m->x_offset : 0);
  epm__put64(b, m->data_mode != EPM_DATA_INLINE ? m->logits_offset : 0);
  epm__put64(b, m->data_mode != EPM_DATA_INLINE ? m->y_offset : 0);
  if (with_data && m->data_mode == EPM_DATA_INLINE) {
    if (xb) memcpy(b->data + b->len, m->x, xb);
    b->len += xb;
    if (lb) memcpy(b->data + b->len, m->logits, lb);
    b->len += lb;
  }
  return EPM_OK;
}

static int range_ok(uint64_t off, size_t n) { return off <= UINT64_MAX - n; }

epm_status_t epm_fwd_req_decode(const epm_frame_t *f, epm_fwd_req_t *out) {
  epm__rd_t r = reader(f);
  epm_fwd_req_t m;
  size_t xb, lb;
  EPM_TRY(expect(f, EPM_MSG_FORWARD, 0));
  memset(&m, 0, sizeof m);
  m.layer = epm__get32(&r);
  m.data_mode = epm__get32(&r);
  m.step_id = epm__get64(&r);
  m.m = (int64_t)epm__get64(&r);
  m.hidden = (int64_t)epm__get64(&r);
  m.num_experts = (int64_t)epm__get64(&r);
  m.x_offset = epm__get64(&r);
  m.logits_offset = epm__get64(&r);
  m.y_offset = epm__get64(&r);
  if (r.bad)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD payload of %llu bytes is shorter than its %u-byte fixed part",
                     (unsigned long long)f->payload_len, EPM_FWD_REQ_FIXED);
  if (m.data_mode > EPM_DATA_DEVICE)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD data mode %u unknown (0 inline, 1 shm, 2 device)", m.data_mode);
  EPM_TRY(epm_fwd_data_bytes(m.m, m.hidden, m.num_experts, &xb, &lb));
  if (m.data_mode == EPM_DATA_INLINE) {
    /* Compare against what is left rather than adding to the fixed part, so a
     * huge m cannot wrap the sum into a small, matching number. */
    size_t left = r.len - r.pos;
    if (xb > left || lb != left - xb)
      return epm_error(EPM_ERR_PROTOCOL,
                       "FORWARD inline data is %zu bytes; m=%lld x hidden=%lld x 2 + m x experts=%lld x 4 = %zu + %zu expected",
                       left, (long long)m.m, (long long)m.hidden, (long long)m.num_experts, xb, lb);
    m.x = epm__rd_take(&r, xb);
    m.logits = epm__rd_take(&r, lb);
    if (m.x_offset || m.logits_offset || m.y_offset)
      return epm_error(EPM_ERR_PROTOCOL, "FORWARD inline request carries non-zero shm offsets");
  } else if (!range_ok(m.x_offset, xb) || !range_ok(m.logits_offset, lb) || !range_ok(m.y_offset, xb)) {
    return epm_error(EPM_ERR_OVERFLOW, "FORWARD shm offsets x=%llu logits=%llu y=%llu plus sizes overflow 64 bits",
                     (unsigned long long)m.x_offset, (unsigned long long)m.logits_offset,
                     (unsigned long long)m.y_offset);
  }
  EPM_TRY(finish(&r, f));
  *out = m;
  return EPM_OK;
}

epm_status_t epm_fwd_resp_encode(epm_buf_t *b, uint64_t rid, const epm_fwd_resp_t *m, int with_data) {
  size_t xb = 0, lb = 0, plen = EPM_FWD_RESP_FIXED;
  EPM_TRY(epm_fwd_data_bytes(m->m, m->hidden, 1, &xb, &lb));
  if (m->data_mode == EPM_DATA_INLINE && epm_add_size(plen, xb, &plen))
    return epm_error(EPM_ERR_OVERFLOW, "FORWARD response for m=%lld overflows", (long long)m->m);
  EPM_TRY(begin(b, EPM_MSG_FORWARD, RESP, rid, plen, with_data ? plen : EPM_FWD_RESP_FIXED));
  epm__put64(b, m->step_id);
  epm__put64(b, (uint64_t)m->m);
  epm__put64(b, (uint64_t)m->hidden);
  epm__put32(b, m->data_mode);
  epm__put32(b, 0);
  epm__put64(b, m->step_ns);
  if (with_data && m->data_mode == EPM_DATA_INLINE && xb) {
    memcpy(b->data + b->len, m->y, xb);
    b->len += xb;
  }
  return EPM_OK;
}

epm_status_t epm_fwd_resp_decode(const epm_frame_t *f, epm_fwd_resp_t *out) {
  epm__rd_t r = reader(f);
  epm_fwd_resp_t m;
  size_t xb, lb, left;
  EPM_TRY(expect(f, EPM_MSG_FORWARD, 1));
  memset(&m, 0, sizeof m);
  m.step_id = epm__get64(&r);
  m.m = (int64_t)epm__get64(&r);
  m.hidden = (int64_t)epm__get64(&r);
  m.data_mode = epm__get32(&r);
  (void)epm__get32(&r);
  m.step_ns = epm__get64(&r);
  if (r.bad)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD response of %llu bytes is shorter than its %u-byte fixed part",
                     (unsigned long long)f->payload_len, EPM_FWD_RESP_FIXED);
  if (m.data_mode > EPM_DATA_DEVICE)
    return epm_error(EPM_ERR_PROTOCOL, "FORWARD response data mode %u unknown", m.data_mode);
  EPM_TRY(epm_fwd_data_bytes(m.m, m.hidden, 1, &xb, &lb));
  left = r.len - r.pos;
  if (m.data_mode == EPM_DATA_INLINE) {
    if (left != xb)
      return epm_error(EPM_ERR_PROTOCOL, "FORWARD response carries %zu data bytes; m=%lld x hidden=%lld x 2 = %zu expected",
                       left, (long long)m.m, (long long)m.hidden, xb);
    m.y = epm__rd_take(&r, xb);
  }
  EPM_TRY(finish(&r, f));
  *out = m;
  return EPM_OK;
}

/* ---- SHM_ATTACH / ERROR ------------------------------------------------ */

epm_status_t epm_shm_attach_encode(epm_buf_t *b, uint64_t rid, const epm_shm_attach_t *m) {
  EPM_TRY(begin(b, EPM_MSG_SHM_ATTACH, EPM_FRAME_F_HAS_FD, rid, 8, 8));
  epm__put64(b, m->size);
  return EPM_OK;
}

epm_status_t epm_shm_attach_decode(const epm_frame_t *f, epm_shm_attach_t *out) {
  epm__rd_t r = reader(f);
  uint64_t size;
  EPM_TRY(expect(f, EPM_MSG_SHM_ATTACH, 0));
  if (!(f->flags & EPM_FRAME_F_HAS_FD))
    return epm_error(EPM_ERR_PROTOCOL, "SHM_ATTACH frame without the HAS_FD flag");
  size = epm__get64(&r);
  EPM_TRY(finish(&r, f));
  if (size == 0) return epm_error(EPM_ERR_PROTOCOL, "SHM_ATTACH of an empty region");
  out->size = size;
  return EPM_OK;
}

epm_status_t epm_dev_attach_encode(epm_buf_t *b, uint64_t rid, const epm_dev_attach_t *m) {
  int ipc = m->kind == EPM_DEV_ATTACH_IPC;
  size_t plen = ipc ? 16 + EPM_DEV_IPC_HANDLE_BYTES : 16;
  if (m->kind != EPM_DEV_ATTACH_FD && !ipc)
    return epm_error(EPM_ERR_INVALID_ARG, "DEV_ATTACH kind %u (known: 0 fd, 1 ipc)", m->kind);
  EPM_TRY(begin(b, EPM_MSG_DEV_ATTACH, ipc ? 0 : EPM_FRAME_F_HAS_FD, rid, plen, plen));
  epm__put64(b, m->size);
  epm__put32(b, m->device);
  epm__put32(b, m->kind);
  if (ipc) {
    memcpy(b->data + b->len, m->ipc_handle, EPM_DEV_IPC_HANDLE_BYTES);
    b->len += EPM_DEV_IPC_HANDLE_BYTES;
  }
  return EPM_OK;
}

/* The fd variant carries an fd and nothing else; the IPC variant carries the
 * handle and must not carry an fd (the daemon would otherwise hold an fd
 * nobody uses). */
epm_status_t epm_dev_attach_decode(const epm_frame_t *f, epm_dev_attach_t *out) {
  epm__rd_t r = reader(f);
  epm_dev_attach_t m;
  memset(&m, 0, sizeof m);
  EPM_TRY(expect(f, EPM_MSG_DEV_ATTACH, 0));
  m.size = epm__get64(&r);
  m.device = epm__get32(&r);
  m.kind = epm__get32(&r);
  if (!r.bad && m.kind == EPM_DEV_ATTACH_IPC) {
    if (f->flags & EPM_FRAME_F_HAS_FD)
      return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH with a CUDA IPC handle must not carry a file descriptor");
    const uint8_t *h = epm__rd_take(&r, EPM_DEV_IPC_HANDLE_BYTES);
    if (h) memcpy(m.ipc_handle, h, EPM_DEV_IPC_HANDLE_BYTES);
  } else if (!r.bad && m.kind == EPM_DEV_ATTACH_FD) {
    if (!(f->flags & EPM_FRAME_F_HAS_FD))
      return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH frame without the HAS_FD flag");
  } else if (!r.bad) {
    return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH kind %u is unknown (0 fd, 1 CUDA IPC handle)", m.kind);
  }
  EPM_TRY(finish(&r, f));
  if (m.size == 0) return epm_error(EPM_ERR_PROTOCOL, "DEV_ATTACH of an empty region");
  *out = m;
  return EPM_OK;
}

epm_status_t epm_error_resp_encode(epm_buf_t *b, uint64_t rid, epm_status_t code, const char *msg) {
  size_t n = cstrlen32(msg), plen = 8 + n;
  EPM_TRY(begin(b, EPM_MSG_ERROR, RESP, rid, plen, plen));
  epm__put32(b, (uint32_t)code);
  put_str(b, msg, n);
  return EPM_OK;
}

epm_status_t epm_error_resp_decode(const epm_frame_t *f, epm_error_resp_t *out) {
  epm__rd_t r = reader(f);
  epm_error_resp_t m;
  EPM_TRY(expect(f, EPM_MSG_ERROR, 1));
  m.code = epm__get32(&r);
  m.message = get_str(&r);
  EPM_TRY(finish(&r, f));
  *out = m;
  return EPM_OK;
}
