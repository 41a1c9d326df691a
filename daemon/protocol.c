/* SPDX-License-Identifier: Apache-2.0 */
/* protocol.c — frame codec: header decode/encode, the growable buffer, and
 * the message-table lookups (type name, which body a frame carries). Bodies
 * live in protocol_msg.c. Invariant: nothing here reads a byte at or past
 * `len`, and every size taken from the wire is compared against a limit
 * before it is added to anything. */
#include "epmoe/protocol.h"

#include <stdlib.h>
#include <string.h>

#include "protocol_wire.h"

/* The table must stay dense from 1: epm_frame_decode() checks 1..MAX, and
 * the daemon counts requests in an array indexed by type. */
enum {
  EPM__MSG_SEQ_ZERO = 0,
#define EPM__MSG_SEQ(name, val, req, resp, desc) EPM__MSG_SEQ_##name,
  EPM_MSG_MAP(EPM__MSG_SEQ)
#undef EPM__MSG_SEQ
};
#define EPM__MSG_DENSE(name, val, req, resp, desc) \
  _Static_assert(EPM__MSG_SEQ_##name == (val), "EPM_MSG_MAP values must run 1, 2, 3... in row order: " #name);
EPM_MSG_MAP(EPM__MSG_DENSE)
#undef EPM__MSG_DENSE

const char *epm_msg_type_name(uint16_t type) {
  switch (type) {
#define EPM__MSG_NAME(name, val, req, resp, desc) \
  case val: return #name;
    EPM_MSG_MAP(EPM__MSG_NAME)
#undef EPM__MSG_NAME
    default: return "UNKNOWN";
  }
}

epm_body_t epm_msg_body(uint16_t type, int response) {
  switch (type) {
#define EPM__MSG_BODY(name, val, req, resp, desc) \
  case val: return response ? EPM_BODY_##resp : EPM_BODY_##req;
    EPM_MSG_MAP(EPM__MSG_BODY)
#undef EPM__MSG_BODY
    default: return EPM_BODY_none;
  }
}

epm_status_t epm_frame_decode(const void *buf, size_t len, const epm_proto_limits_t *lim,
                              epm_frame_t *out, size_t *consumed) {
  const uint8_t *p = buf;
  uint64_t max = lim && lim->max_payload ? lim->max_payload : EPM_PROTO_DEFAULT_MAX_PAYLOAD;
  uint32_t magic, flags, reserved;
  uint16_t version, type;
  uint64_t rid, plen;

  if (len < 4 || (!p && len)) {
    *consumed = EPM_FRAME_HEADER_SIZE;
    return EPM_ERR_NOT_READY;
  }
  /* Reject a wrong magic as soon as 4 bytes are here, so a client talking
   * another protocol gets an answer instead of a stall. */
  magic = epm__rd32(p);
  if (magic != EPM_PROTO_MAGIC)
    return epm_error(EPM_ERR_PROTOCOL, "bad frame magic 0x%08x (expected 0x%08x \"EPMO\")",
                     magic, EPM_PROTO_MAGIC);
  if (len < EPM_FRAME_HEADER_SIZE) {
    *consumed = EPM_FRAME_HEADER_SIZE;
    return EPM_ERR_NOT_READY;
  }
  version = epm__rd16(p + 4);
  type = epm__rd16(p + 6);
  flags = epm__rd32(p + 8);
  reserved = epm__rd32(p + 12);
  rid = epm__rd64(p + 16);
  plen = epm__rd64(p + 24);
  if (version < EPM_PROTO_MIN_VERSION || version > EPM_PROTO_VERSION)
    return epm_error(EPM_ERR_PROTOCOL,
                     "protocol version %u is not supported: this side speaks versions %u..%u (upgrade the older peer; "
                     "docs/PROTOCOL.md)",
                     version, EPM_PROTO_MIN_VERSION, EPM_PROTO_VERSION);
  if (type < 1 || type > EPM_MSG_TYPE_MAX)
    return epm_error(EPM_ERR_PROTOCOL, "unknown frame type %u (known 1..%u)", type,
                     EPM_MSG_TYPE_MAX);
  if (flags & ~EPM_FRAME_F_KNOWN)
    return epm_error(EPM_ERR_PROTOCOL, "unknown frame flags 0x%x (known 0x%x)", flags,
                     EPM_FRAME_F_KNOWN);
  if (reserved != 0)
    return epm_error(EPM_ERR_PROTOCOL, "reserved header field is 0x%x, must be 0", reserved);
  if (plen > max || plen > SIZE_MAX - EPM_FRAME_HEADER_SIZE)
    return epm_error(EPM_ERR_OVERFLOW, "%s frame payload of %llu bytes exceeds the limit of %llu bytes",
                     epm_msg_type_name(type), (unsigned long long)plen, (unsigned long long)max);
  if (len - EPM_FRAME_HEADER_SIZE < plen) {
    *consumed = EPM_FRAME_HEADER_SIZE + (size_t)plen;
    return EPM_ERR_NOT_READY;
  }
  out->version = version;
  out->type = type;
  out->flags = flags;
  out->request_id = rid;
  out->payload_len = plen;
  out->payload = plen ? p + EPM_FRAME_HEADER_SIZE : NULL;
  *consumed = EPM_FRAME_HEADER_SIZE + (size_t)plen;
  return EPM_OK;
}

uint16_t epm_frame_refused_version(const void *buf, size_t len) {
  const uint8_t *p = buf;
  if (!p || len < 6 || epm__rd32(p) != EPM_PROTO_MAGIC) return 0;
  uint16_t v = epm__rd16(p + 4);
  return v < EPM_PROTO_MIN_VERSION || v > EPM_PROTO_VERSION ? v : 0;
}

void epm_frame_set_version(uint8_t *frame, uint16_t version) { epm__wr16(frame + 4, version); }

void epm_frame_header_encode(uint8_t out[EPM_FRAME_HEADER_SIZE], uint16_t type, uint32_t flags,
                             uint64_t request_id, uint64_t payload_len) {
  epm__wr32(out, EPM_PROTO_MAGIC);
  epm__wr16(out + 4, EPM_PROTO_VERSION);
  epm__wr16(out + 6, type);
  epm__wr32(out + 8, flags);
  epm__wr32(out + 12, 0);
  epm__wr64(out + 16, request_id);
  epm__wr64(out + 24, payload_len);
}

epm_status_t epm_buf_reserve(epm_buf_t *b, size_t extra) {
  size_t need, cap;
  uint8_t *p;
  if (epm_add_size(b->len, extra, &need))
    return epm_error(EPM_ERR_OVERFLOW, "buffer of %zu bytes cannot grow by %zu", b->len, extra);
  if (need <= b->cap) return EPM_OK;
  cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  p = realloc(b->data, cap);
  if (!p) return epm_error(EPM_ERR_NOMEM, "cannot grow a message buffer to %zu bytes", cap);
  b->data = p;
  b->cap = cap;
  return EPM_OK;
}

epm_status_t epm_buf_put(epm_buf_t *b, const void *p, size_t n) {
  if (n == 0) return EPM_OK;
  EPM_TRY(epm_buf_reserve(b, n));
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return EPM_OK;
}

void epm_buf_free(epm_buf_t *b) {
  if (!b) return;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

epm_status_t epm_frame_encode(epm_buf_t *b, uint16_t type, uint32_t flags, uint64_t request_id,
                              const void *payload, size_t payload_len) {
  uint8_t h[EPM_FRAME_HEADER_SIZE];
  size_t total;
  if (epm_add_size(sizeof h, payload_len, &total))
    return epm_error(EPM_ERR_OVERFLOW, "frame payload of %zu bytes does not fit in memory", payload_len);
  epm_frame_header_encode(h, type, flags, request_id, payload_len);
  EPM_TRY(epm_buf_reserve(b, total));
  EPM_TRY(epm_buf_put(b, h, sizeof h));
  return epm_buf_put(b, payload, payload_len);
}
