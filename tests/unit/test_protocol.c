/* SPDX-License-Identifier: Apache-2.0 */
/* test_protocol: the wire codec, driven by the message and body tables of
 * include/epmoe/protocol.h. For every message type and direction in
 * EPM_MSG_MAP and every sample of its body (tests/fuzz/protocol_samples.h):
 * the encoding equals frames captured from the codec before it was
 * table-driven (wire compatibility), decodes back to the sample, and every
 * truncation, trailing bytes, a wrong type, the other direction, a wrong
 * HAS_FD flag and every other body's decoder are refused. Hand-built frames
 * check the FORWARD and DEV_ATTACH size rules; docs/PROTOCOL.md must list
 * exactly the table's messages; a seeded mutation loop over the samples
 * (each decoded from an exactly-sized heap copy, so ASan sees any over-read)
 * never crashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/protocol.h"
#include "../fuzz/protocol_samples.h"

static const char *doc_path; /* docs/PROTOCOL.md, from argv[1] */

/* ---- facts about each body, generated from EPM_BODY_MAP ----------------- */

#define IS_RESP_REQ 0
#define IS_RESP_RESP 1
#define FD_RULE_NOFD 0
#define FD_RULE_FD 1
#define FD_RULE_KIND 2
#define OPEN_U16
#define OPEN_U32
#define OPEN_U64
#define OPEN_I64
#define OPEN_STR
#define OPEN_TEXT +1
#define OPEN_PAD16
#define OPEN_PAD32
#define OPEN_VIEW
#define OPEN_HANDLE
#define OPEN(kind, n) OPEN_##kind

/* direction, fd rule, and whether the body ends in TEXT (its length is the
 * payload's, so no truncation or extension can be detected) */
static const struct {
  const char *name;
  int resp, fd, open_ended;
} body_facts[EPM_BODY_COUNT] = {
#define FACTS(B, T, dir, fd, FIELDS) [EPM_BODY_##B] = {#B, IS_RESP_##dir, FD_RULE_##fd, (0 FIELDS(OPEN)) != 0},
    EPM_BODY_MAP(FACTS)
#undef FACTS
};

static epm_status_t typed_encode(epm_body_t body, epm_buf_t *b, uint16_t type, uint64_t rid, const epm_msg_body_t *m) {
  switch (body) {
#define ENC(B, T, dir, fd, FIELDS) \
  case EPM_BODY_##B: return epm_##B##_encode(b, type, rid, &m->B);
    EPM_BODY_MAP(ENC)
#undef ENC
    default: fail_msg("no body %d", (int)body);
  }
  return EPM_ERR_INTERNAL;
}

static epm_status_t typed_decode(epm_body_t body, const epm_frame_t *f, epm_msg_body_t *out) {
  switch (body) {
#define DEC(B, T, dir, fd, FIELDS) \
  case EPM_BODY_##B: return epm_##B##_decode(f, out ? &out->B : NULL);
    EPM_BODY_MAP(DEC)
#undef DEC
    default: fail_msg("no body %d", (int)body);
  }
  return EPM_ERR_INTERNAL;
}

/* Field-by-field equality from the field lists; views compared by content. */
#define CMP_U16(n) assert_int_equal(a->n, b->n);
#define CMP_U32(n) assert_int_equal(a->n, b->n);
#define CMP_U64(n) assert_int_equal(a->n, b->n);
#define CMP_I64(n) assert_int_equal(a->n, b->n);
#define CMP_STR(n)                                       \
  assert_int_equal(a->n.len, b->n.len);                  \
  if (a->n.len) assert_memory_equal(a->n.ptr, b->n.ptr, a->n.len);
#define CMP_TEXT(n) CMP_STR(n)
#define CMP_PAD16(n)
#define CMP_PAD32(n)
#define CMP_VIEW(n) /* below: their length depends on other fields */
#define CMP_HANDLE(n) assert_memory_equal(a->n, b->n, EPM_DEV_IPC_HANDLE_BYTES);
#define CMP(kind, n) CMP_##kind(n)

static void body_equal(epm_body_t body, const epm_msg_body_t *ua, const epm_msg_body_t *ub) {
  switch (body) {
#define EQ(B, T, dir, fd, FIELDS) \
  case EPM_BODY_##B: {             \
    const T *a = &ua->B;           \
    const T *b = &ub->B;           \
    (void)a;                       \
    (void)b;                       \
    FIELDS(CMP) break;             \
  }
    EPM_BODY_MAP(EQ)
#undef EQ
    default: fail_msg("no body %d", (int)body);
  }
  size_t xb, lb;
  if (body == EPM_BODY_fwd_req && ua->fwd_req.data_mode == EPM_DATA_INLINE) {
    assert_int_equal(epm_fwd_data_bytes(ua->fwd_req.m, ua->fwd_req.hidden, ua->fwd_req.num_experts, &xb, &lb), EPM_OK);
    if (xb) assert_memory_equal(ua->fwd_req.x, ub->fwd_req.x, xb);
    if (lb) assert_memory_equal(ua->fwd_req.logits, ub->fwd_req.logits, lb);
  }
  if (body == EPM_BODY_fwd_resp && ua->fwd_resp.data_mode == EPM_DATA_INLINE) {
    assert_int_equal(epm_fwd_data_bytes(ua->fwd_resp.m, ua->fwd_resp.hidden, 1, &xb, &lb), EPM_OK);
    if (xb) assert_memory_equal(ua->fwd_resp.y, ub->fwd_resp.y, xb);
  }
}

/* Decode the single frame in b; assert it consumes every byte. */
static epm_frame_t decode_one(const epm_buf_t *b) {
  epm_frame_t f;
  size_t used = 0;
  assert_int_equal(epm_frame_decode(b->data, b->len, NULL, &f, &used), EPM_OK);
  assert_int_equal(used, b->len);
  return f;
}

/* A frame (type, flags) around payload[0, n) in an exactly-sized heap
 * buffer, decoded into *f. The caller frees the returned buffer. */
static uint8_t *frame_of(uint16_t type, uint32_t flags, const uint8_t *payload, size_t n, uint8_t fill,
                         size_t nfill, epm_frame_t *f) {
  size_t total = EPM_FRAME_HEADER_SIZE + n + nfill, used = 0;
  uint8_t *buf = malloc(total);
  assert_non_null(buf);
  epm_frame_header_encode(buf, type, flags, 99, n + nfill);
  if (n) memcpy(buf + EPM_FRAME_HEADER_SIZE, payload, n);
  memset(buf + EPM_FRAME_HEADER_SIZE + n, fill, nfill);
  assert_int_equal(epm_frame_decode(buf, total, NULL, f, &used), EPM_OK);
  assert_int_equal(used, total);
  return buf;
}

/* Calls fn for every message type, direction and sample of its body. */
typedef void (*sample_fn)(uint16_t type, int resp, epm_body_t body, int variant, const epm_msg_body_t *m);
static int for_each_sample(sample_fn fn) {
  int n = 0;
  for (uint16_t t = 1; t <= EPM_MSG_TYPE_MAX; t++)
    for (int resp = 0; resp < 2; resp++) {
      epm_body_t body = epm_msg_body(t, resp);
      epm_msg_body_t m;
      if (body == EPM_BODY_none) continue;
      for (int v = 0; epm_sample_body(body, v, &m); v++, n++) fn(t, resp, body, v, &m);
    }
  return n;
}

/* ---- the tables themselves --------------------------------------------- */

static void test_tables_agree(void **state) {
  (void)state;
  int used[EPM_BODY_COUNT] = {0}, rows = 0;
#define ROW(name, val, rq, rs, desc)                                                  \
  rows++;                                                                                \
  assert_string_equal(epm_msg_type_name(val), #name);                                   \
  assert_int_equal(epm_msg_body(val, 0), EPM_BODY_##rq);                                \
  assert_int_equal(epm_msg_body(val, 1), EPM_BODY_##rs);                               \
  if (EPM_BODY_##rq != EPM_BODY_none) assert_int_equal(body_facts[EPM_BODY_##rq].resp, 0); \
  assert_int_not_equal(EPM_BODY_##rs, EPM_BODY_none); /* every request has an answer */ \
  assert_int_equal(body_facts[EPM_BODY_##rs].resp, 1);                                 \
  used[EPM_BODY_##rq]++;                                                                \
  used[EPM_BODY_##rs]++;
  EPM_MSG_MAP(ROW)
#undef ROW
  assert_int_equal(rows, EPM_MSG_TYPE_MAX);
  assert_string_equal(epm_msg_type_name(0), "UNKNOWN");
  assert_string_equal(epm_msg_type_name(EPM_MSG_TYPE_MAX + 1), "UNKNOWN");
  assert_int_equal(epm_msg_body(0, 0), EPM_BODY_none);
  assert_int_equal(epm_msg_body(EPM_MSG_TYPE_MAX + 1, 1), EPM_BODY_none);
  for (int b = 1; b < EPM_BODY_COUNT; b++) {
    epm_msg_body_t m;
    assert_string_equal(epm_body_name((epm_body_t)b), body_facts[b].name);
    if (!used[b]) fail_msg("body %s is carried by no message", body_facts[b].name);
    if (!epm_sample_body((epm_body_t)b, 0, &m)) fail_msg("body %s has no sample", body_facts[b].name);
  }
  /* the FORWARD fixed parts documented in docs/PROTOCOL.md */
  assert_int_equal(EPM_FWD_REQ_FIXED, 72);
  assert_int_equal(EPM_FWD_RESP_FIXED, 40);
}

/* ---- wire compatibility: frames from the codec before the tables -------- */

/* Captured from the hand-written encoders (commit 59b0423) for the samples
 * in protocol_samples.h, request id 0x0807060504030201: type, response,
 * sample variant, whole frame in hex; then moved to version 2 by hand (the
 * header's version byte 01 -> 02; FORWARD requests gain the 8 option bytes
 * after the 64-byte fixed part: u32 flags, u32 partial dtype). The
 * DOORBELL_ATTACH frames were packed with Python's struct from
 * docs/PROTOCOL.md, not by this codec. */
static const struct {
  uint16_t type;
  int resp, variant;
  const char *hex;
} golden[] = {
    {EPM_MSG_HELLO, 0, 0,
       "45504d4f02000100000000000000000001020304050607081000000000000000010003000800000065706d6f6563746c"},
    {EPM_MSG_HELLO, 1, 0,
       "45504d4f0200010001000000000000000102030405060708570000000000000001000000030000000400000000000000"
       "001c000000000000000100000000000008000000000000000028000000000000000000400000000005000000302e312e"
       "300b000000646565707365656b2d723103000000637075"},
    {EPM_MSG_STATUS, 0, 0,
       "45504d4f0200020000000000000000000102030405060708040000000000000001000000"},
    {EPM_MSG_STATUS, 1, 0,
       "45504d4f0200020001000000000000000102030405060708190000000000000023205365727665720d0a76657273696f"
       "6e3a302e312e300d0a"},
    {EPM_MSG_STATS, 0, 1,
       "45504d4f0200030000000000000000000102030405060708040000000000000002000000"},
    {EPM_MSG_STATS, 1, 0,
       "45504d4f0200030001000000000000000102030405060708190000000000000023205365727665720d0a76657273696f"
       "6e3a302e312e300d0a"},
    {EPM_MSG_HEALTH, 0, 0,
       "45504d4f02000400000000000000000001020304050607080000000000000000"},
    {EPM_MSG_HEALTH, 1, 0,
       "45504d4f02000400010000000000000001020304050607081c0000000000000001000000140000007761726d2d757020"
       "737465702070656e64696e67"},
    {EPM_MSG_FORWARD, 0, 0,
       "45504d4f0200050000000000000000000102030405060708a80000000000000005000000000000002a00000000000000"
       "020000000000000010000000000000000400000000000000000000000000000000000000000000000000000000000000"
       "0100000000000000000025004a006f009400b900de00030128014d0172019701bc01e10106022b02500275029a02bf02"
       "e40209032e03530378039d03c203e7030c04310456047b04000040c0000030c0000020c0000010c0000000c00000e0bf"
       "0000c0bf0000a0bf"},
    {EPM_MSG_FORWARD, 0, 1,
       "45504d4f0200050000000000000000000102030405060708480000000000000001000000010000000900000000000000"
       "030000000000000020000000000000000800000000000000000000000000000000100000000000000020000000000000"
       "0000000001000000"},
    {EPM_MSG_FORWARD, 0, 2,
       "45504d4f020005000000000000000000010203040506070848000000000000003c000000020000000000000000010000"
       "0000000000000000001c0000000000000001000000000000400000000000000080000000000000000001000000000000"
       "0100000001000000"},
    {EPM_MSG_FORWARD, 1, 0,
       "45504d4f020005000100000000000000010203040506070868000000000000002a000000000000000200000000000000"
       "10000000000000000000000000000000393000000000000001000c00170022002d00380043004e00590064006f007a00"
       "850090009b00a600b100bc00c700d200dd00e800f300fe00090114011f012a01350140014b015601"},
    {EPM_MSG_FORWARD, 1, 1,
       "45504d4f0200050001000000000000000102030405060708280000000000000009000000000000000300000000000000"
       "200000000000000001000000000000000903000000000000"},
    {EPM_MSG_SHM_ATTACH, 0, 0,
       "45504d4f020006000200000000000000010203040506070808000000000000000000100000000000"},
    {EPM_MSG_SHM_ATTACH, 1, 0,
       "45504d4f02000600010000000000000001020304050607080000000000000000"},
    {EPM_MSG_SHUTDOWN, 0, 0,
       "45504d4f02000700000000000000000001020304050607080000000000000000"},
    {EPM_MSG_SHUTDOWN, 1, 0,
       "45504d4f02000700010000000000000001020304050607080000000000000000"},
    {EPM_MSG_ERROR, 1, 0,
       "45504d4f02000800010000000000000001020304050607082b0000000000000009000000230000007374657020342074"
       "696d6564206f75743b206d697373696e672072616e6b7320312c33"},
    {EPM_MSG_DEV_ATTACH, 0, 0,
       "45504d4f0200090002000000000000000102030405060708100000000000000000000000020000000300000000000000"},
    {EPM_MSG_DEV_ATTACH, 0, 1,
       "45504d4f0200090000000000000000000102030405060708500000000000000039300000010000000100000001000000"
       "052a4f7499bee3082d52779cc1e60b30557a9fc4e90e33587da2c7ec11365b80a5caef14395e83a8cdf2173c6186abd0"
       "f51a3f6489aed3f81d42678cb1d6fb20"},
    {EPM_MSG_DEV_ATTACH, 1, 0,
       "45504d4f02000900010000000000000001020304050607080000000000000000"},
    {EPM_MSG_DOORBELL_ATTACH, 0, 0,
       "45504d4f02000a0002000000000000000102030405060708380000000000000000100300000000000000000000000000"
       "00010000000000000010000000000000001001000000000000100200000000000000000000001000"},
    {EPM_MSG_DOORBELL_ATTACH, 0, 1,
       "45504d4f02000a0002000000000000000102030405060708380000000000000000100000000000000100000000000000"
       "00200000000000000000000000000000000000080000000000000018000000004d00000000000000"},
    {EPM_MSG_DOORBELL_ATTACH, 1, 0,
       "45504d4f02000a00010000000000000001020304050607080000000000000000"},
};

static size_t unhex(const char *hex, uint8_t *out, size_t cap) {
  size_t n = strlen(hex) / 2;
  assert_true(n <= cap);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
    out[i] = (uint8_t)v;
  }
  return n;
}

static void test_golden_frames(void **state) {
  (void)state;
  int seen[EPM_MSG_TYPE_MAX + 1][2] = {{0}};
  uint8_t want[512];
  for (size_t i = 0; i < sizeof golden / sizeof golden[0]; i++) {
    epm_body_t body = epm_msg_body(golden[i].type, golden[i].resp);
    epm_msg_body_t s, d;
    epm_buf_t b = {0}, t = {0};
    size_t n = unhex(golden[i].hex, want, sizeof want);
    assert_int_not_equal(body, EPM_BODY_none);
    assert_true(epm_sample_body(body, golden[i].variant, &s));
    /* new encoders, generic and typed, write the old bytes */
    assert_int_equal(epm_msg_encode(&b, golden[i].type, golden[i].resp, 0x0807060504030201ull, &s), EPM_OK);
    assert_int_equal(typed_encode(body, &t, golden[i].type, 0x0807060504030201ull, &s), EPM_OK);
    assert_int_equal(b.len, n);
    assert_memory_equal(b.data, want, n);
    assert_int_equal(t.len, n);
    assert_memory_equal(t.data, want, n);
    /* and new decoders read the old bytes */
    epm_buf_t g = {0};
    assert_int_equal(epm_buf_put(&g, want, n), EPM_OK);
    epm_frame_t f = decode_one(&g);
    memset(&d, 0xee, sizeof d);
    assert_int_equal(epm_msg_decode(&f, &d), EPM_OK);
    body_equal(body, &s, &d);
    seen[golden[i].type][golden[i].resp]++;
    epm_buf_free(&b);
    epm_buf_free(&t);
    epm_buf_free(&g);
  }
  /* every message and direction of the table has one */
  for (uint16_t ty = 1; ty <= EPM_MSG_TYPE_MAX; ty++)
    for (int r = 0; r < 2; r++)
      if (epm_msg_body(ty, r) != EPM_BODY_none && !seen[ty][r])
        fail_msg("no golden frame for the %s %s", epm_msg_type_name(ty), r ? "response" : "request");
}

/* ---- every message: round trip and strictness --------------------------- */

static void check_message(uint16_t type, int resp, epm_body_t body, int variant, const epm_msg_body_t *s) {
  epm_buf_t b = {0}, t = {0};
  epm_msg_body_t d;
  uint8_t *buf;
  epm_frame_t g;
  const uint64_t rid = 0x1122334455667788ull;
  print_message("%s %s (%s, sample %d)\n", epm_msg_type_name(type), resp ? "response" : "request",
                body_facts[body].name, variant);

  /* encode (generic and typed agree), frame, flags */
  assert_int_equal(epm_msg_encode(&b, type, resp, rid, s), EPM_OK);
  assert_int_equal(typed_encode(body, &t, type, rid, s), EPM_OK);
  assert_int_equal(t.len, b.len);
  assert_memory_equal(t.data, b.data, b.len);
  epm_frame_t f = decode_one(&b);
  assert_int_equal(f.type, type);
  assert_int_equal(f.request_id, rid);
  assert_int_equal(!!(f.flags & EPM_FRAME_F_RESPONSE), resp);
  if (body_facts[body].fd != FD_RULE_KIND)
    assert_int_equal(!!(f.flags & EPM_FRAME_F_HAS_FD), body_facts[body].fd == FD_RULE_FD);

  /* round trip, generic and typed */
  memset(&d, 0xee, sizeof d);
  assert_int_equal(epm_msg_decode(&f, &d), EPM_OK);
  body_equal(body, s, &d);
  memset(&d, 0xee, sizeof d);
  assert_int_equal(typed_decode(body, &f, &d), EPM_OK);
  body_equal(body, s, &d);
  assert_int_equal(typed_decode(body, &f, NULL), EPM_OK); /* validate only */

  /* every truncation */
  for (size_t k = 0; k < f.payload_len; k++) {
    buf = frame_of(type, f.flags, f.payload, k, 0, 0, &g);
    epm_status_t st = typed_decode(body, &g, &d);
    if (body_facts[body].open_ended) { /* the text is the payload: a shorter one */
      assert_int_equal(st, EPM_OK);
      assert_int_equal(d.text_resp.text.len, k);
    } else if (st != EPM_ERR_PROTOCOL) {
      fail_msg("%s %s cut to %zu of %llu bytes: %s", epm_msg_type_name(type), resp ? "response" : "request", k,
               (unsigned long long)f.payload_len, epm_status_name(st));
    }
    free(buf);
  }

  /* trailing bytes: one zero byte, and eight 0xA5 */
  for (int e = 0; e < 2; e++) {
    size_t extra = e ? 8 : 1;
    buf = frame_of(type, f.flags, f.payload, (size_t)f.payload_len, e ? 0xA5 : 0, extra, &g);
    epm_status_t st = typed_decode(body, &g, &d);
    if (body_facts[body].open_ended) {
      assert_int_equal(st, EPM_OK);
      assert_int_equal(d.text_resp.text.len, f.payload_len + extra);
    } else if (st != EPM_ERR_PROTOCOL) {
      fail_msg("%s %s with %zu trailing bytes: %s", epm_msg_type_name(type), resp ? "response" : "request", extra,
               epm_status_name(st));
    }
    assert_int_equal(epm_msg_decode(&g, &d), st);
    free(buf);
  }

  /* every other body's decoder refuses the frame */
  for (int ob = 1; ob < EPM_BODY_COUNT; ob++)
    if (ob != (int)body) assert_int_equal(typed_decode((epm_body_t)ob, &f, &d), EPM_ERR_PROTOCOL);

  /* the same payload under every other type: refused unless that type
   * carries the same body (STATUS/STATS, HEALTH/SHUTDOWN requests, the
   * acks); the encoder refuses the mismatches too */
  for (uint16_t t2 = 1; t2 <= EPM_MSG_TYPE_MAX; t2++) {
    if (t2 == type) continue;
    int same = epm_msg_body(t2, resp) == body;
    buf = frame_of(t2, f.flags, f.payload, (size_t)f.payload_len, 0, 0, &g);
    assert_int_equal(typed_decode(body, &g, &d), same ? EPM_OK : EPM_ERR_PROTOCOL);
    free(buf);
    t.len = 0;
    assert_int_equal(typed_encode(body, &t, t2, rid, s), same ? EPM_OK : EPM_ERR_INVALID_ARG);
  }
  t.len = 0;
  assert_int_equal(typed_encode(body, &t, 0, rid, s), EPM_ERR_INVALID_ARG);
  assert_int_equal(typed_encode(body, &t, EPM_MSG_TYPE_MAX + 1, rid, s), EPM_ERR_INVALID_ARG);

  /* the other direction, and the HAS_FD flag flipped */
  buf = frame_of(type, f.flags ^ EPM_FRAME_F_RESPONSE, f.payload, (size_t)f.payload_len, 0, 0, &g);
  assert_int_equal(typed_decode(body, &g, &d), EPM_ERR_PROTOCOL);
  free(buf);
  buf = frame_of(type, f.flags ^ EPM_FRAME_F_HAS_FD, f.payload, (size_t)f.payload_len, 0, 0, &g);
  assert_int_equal(typed_decode(body, &g, &d), EPM_ERR_PROTOCOL);
  assert_int_equal(epm_msg_decode(&g, &d), EPM_ERR_PROTOCOL);
  free(buf);

  epm_buf_free(&b);
  epm_buf_free(&t);
}

static void test_every_message(void **state) {
  (void)state;
  /* 13 bodies, 19 (type, direction) pairs, more with the variants */
  assert_true(for_each_sample(check_message) >= 19);
}

/* Every sample's encoded payload fits its type's maximum (a server that
 * refuses by that maximum never refuses a valid frame). */
static void check_fits_max(uint16_t type, int resp, epm_body_t body, int variant, const epm_msg_body_t *m) {
  epm_buf_t b = {0};
  (void)body;
  assert_int_equal(epm_msg_encode(&b, type, resp, 1, m), EPM_OK);
  uint64_t payload = b.len - EPM_FRAME_HEADER_SIZE;
  if (payload > epm_msg_max_payload(type, resp, EPM_PROTO_DEFAULT_MAX_PAYLOAD))
    fail_msg("%s %s sample %d: %llu payload bytes > the type's maximum %llu", epm_msg_type_name(type),
             resp ? "response" : "request", variant, (unsigned long long)payload,
             (unsigned long long)epm_msg_max_payload(type, resp, EPM_PROTO_DEFAULT_MAX_PAYLOAD));
  epm_buf_free(&b);
}

/* The most each (type, direction) can carry, from the body table: what a
 * server checks a header against before it buffers anything. */
static void test_max_payload(void **state) {
  (void)state;
  const uint64_t lim = EPM_PROTO_DEFAULT_MAX_PAYLOAD, text = EPM_PROTO_MAX_TEXT;
  assert_int_equal(epm_msg_max_payload(EPM_MSG_HEALTH, 0, lim), 0);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_SHUTDOWN, 0, lim), 0);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_STATUS, 0, lim), 4);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_STATS, 0, lim), 4);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_SHM_ATTACH, 0, lim), 8);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_DEV_ATTACH, 0, lim), 16 + EPM_DEV_IPC_HANDLE_BYTES);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_HELLO, 0, lim), 4 + 4 + text);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_FORWARD, 0, lim), lim); /* data: the frame limit alone */
  assert_int_equal(epm_msg_max_payload(EPM_MSG_FORWARD, 0, 4096), 4096);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_ERROR, 0, lim), 0); /* no ERROR request exists */
  assert_int_equal(epm_msg_max_payload(EPM_MSG_ERROR, 1, lim), 4 + 4 + text);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_STATUS, 1, lim), text);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_HEALTH, 1, lim), 4 + 4 + text);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_HELLO, 1, lim), EPM_PROTO_FIXED_BYTES(EPM_HELLO_RESP_FIELDS) + 3 * text);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_HELLO, 1, 1000), 1000); /* capped by the limit */
  assert_int_equal(epm_msg_max_payload(0, 0, lim), 0);
  assert_int_equal(epm_msg_max_payload(EPM_MSG_TYPE_MAX + 1, 0, lim), 0);
  assert_true(for_each_sample(check_fits_max) >= 17);
}

/* Rules on values, beyond the layout: the encoders write these values (they
 * only refuse what cannot be framed), the decoders refuse them. */
static void test_value_rules(void **state) {
  (void)state;
  epm_buf_t b = {0};
  epm_frame_t f;
  epm_msg_body_t m;

  assert_int_equal(epm_fmt_req_encode(&b, EPM_MSG_STATUS, 5, &(epm_fmt_req_t){7}), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_fmt_req_decode(&f, &m.fmt_req), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "format 7"));

  b.len = 0;
  assert_int_equal(epm_health_resp_encode(&b, EPM_MSG_HEALTH, 5, &(epm_health_resp_t){3, epm_str_of("x", 1)}), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_health_resp_decode(&f, &m.health_resp), EPM_ERR_PROTOCOL);
  assert_string_equal(epm_health_name(EPM_HEALTH_FAILED), "failed");

  epm_sample_body(EPM_BODY_hello_resp, 0, &m);
  m.hello_resp.rank = m.hello_resp.world_size; /* rank 4 of 4 */
  b.len = 0;
  assert_int_equal(epm_hello_resp_encode(&b, EPM_MSG_HELLO, 5, &m.hello_resp), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_hello_resp_decode(&f, &m.hello_resp), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "rank 4 of 4"));

  b.len = 0;
  assert_int_equal(epm_shm_attach_encode(&b, EPM_MSG_SHM_ATTACH, 5, &(epm_shm_attach_t){0}), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_shm_attach_decode(&f, &m.shm_attach), EPM_ERR_PROTOCOL);

  /* FORWARD options: unknown flag bits and an unknown partial dtype */
  epm_sample_body(EPM_BODY_fwd_req, 1, &m);
  m.fwd_req.flags = 0x4;
  b.len = 0;
  assert_int_equal(epm_fwd_req_encode(&b, EPM_MSG_FORWARD, 5, &m.fwd_req), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &m.fwd_req), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "flags 0x4"));
  epm_sample_body(EPM_BODY_fwd_req, 1, &m);
  m.fwd_req.partial_dtype = EPM_DTYPE_COUNT;
  b.len = 0;
  assert_int_equal(epm_fwd_req_encode(&b, EPM_MSG_FORWARD, 5, &m.fwd_req), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &m.fwd_req), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "partial dtype 2"));

  /* DOORBELL_ATTACH: mode, a region smaller than the control block, capacity */
  for (int k = 0; k < 3; k++) {
    epm_sample_body(EPM_BODY_db_attach, 0, &m);
    if (k == 0) m.db_attach.mode = 2;
    if (k == 1) m.db_attach.size = EPM_DB_CTL_BYTES - 1;
    if (k == 2) m.db_attach.capacity = 0;
    b.len = 0;
    assert_int_equal(epm_db_attach_encode(&b, EPM_MSG_DOORBELL_ATTACH, 5, &m.db_attach), EPM_OK);
    f = decode_one(&b);
    assert_int_equal(epm_db_attach_decode(&f, &m.db_attach), EPM_ERR_PROTOCOL);
    assert_non_null(strstr(epm_last_error(), k == 0 ? "mode 2" : k == 1 ? "4095 bytes" : "capacity 0"));
  }

  /* the encoders refuse what cannot be framed */
  char big_dummy = 'x';
  epm_error_resp_t e = {EPM_ERR_IO, {&big_dummy, (uint32_t)EPM_PROTO_MAX_TEXT + 1}};
  b.len = 0;
  assert_int_equal(epm_error_resp_encode(&b, EPM_MSG_ERROR, 5, &e), EPM_ERR_OVERFLOW);
  assert_non_null(strstr(epm_last_error(), "error_resp.message"));
  assert_int_equal(epm_str_of("x", (size_t)UINT32_MAX + 5).len, UINT32_MAX); /* saturates: refused, not cut */
  e.message = (epm_str_t){NULL, 3};
  assert_int_equal(epm_error_resp_encode(&b, EPM_MSG_ERROR, 5, &e), EPM_ERR_INVALID_ARG);
  epm_sample_body(EPM_BODY_fwd_req, 0, &m);
  m.fwd_req.x = NULL;
  assert_int_equal(epm_fwd_req_encode(&b, EPM_MSG_FORWARD, 5, &m.fwd_req), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_hello_req_encode(&b, EPM_MSG_HELLO, 5, NULL), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_msg_encode(&b, EPM_MSG_ERROR, 0, 5, &m), EPM_ERR_INVALID_ARG); /* no ERROR request */
  assert_int_equal(b.len, 0); /* nothing written by a refused encode */
  epm_buf_free(&b);
}

static void test_negotiate(void **state) {
  (void)state;
  uint16_t v = 0;
  assert_int_equal(epm_proto_negotiate(1, 9, &v), EPM_OK);
  assert_int_equal(v, EPM_PROTO_VERSION);
  assert_int_equal(epm_proto_negotiate(3, 9, &v), EPM_ERR_PROTOCOL); /* server speaks only 2 */
  assert_non_null(strstr(epm_last_error(), "client speaks 3..9"));
  assert_int_equal(epm_proto_negotiate(1, 1, &v), EPM_ERR_PROTOCOL); /* a version-1 client */
  assert_non_null(strstr(epm_last_error(), "client speaks 1..1, server speaks 2..2"));
  assert_int_equal(epm_proto_negotiate(3, 1, &v), EPM_ERR_PROTOCOL);
}

/* Builds a DEV_ATTACH frame by hand (independent of the encoder):
 * u64 size, u32 device, u32 kind, then `extra` bytes of handle. */
static size_t dev_attach_raw(uint8_t *out, uint32_t flags, uint64_t size, uint32_t device, uint32_t kind,
                             const uint8_t *extra, size_t nextra) {
  uint8_t *p = out + EPM_FRAME_HEADER_SIZE;
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(size >> (8 * i));
  for (int i = 0; i < 4; i++) p[8 + i] = (uint8_t)(device >> (8 * i));
  for (int i = 0; i < 4; i++) p[12 + i] = (uint8_t)(kind >> (8 * i));
  if (nextra) memcpy(p + 16, extra, nextra);
  epm_frame_header_encode(out, EPM_MSG_DEV_ATTACH, flags, 21, 16 + nextra);
  return EPM_FRAME_HEADER_SIZE + 16 + nextra;
}

static epm_status_t decode_raw(const uint8_t *raw, size_t n, epm_dev_attach_t *out) {
  epm_frame_t f;
  size_t used = 0;
  assert_int_equal(epm_frame_decode(raw, n, NULL, &f, &used), EPM_OK);
  assert_int_equal(used, n);
  return epm_dev_attach_decode(&f, out);
}

/* The legacy CUDA IPC variant: 64-byte handle in the payload, no fd. */
static void test_dev_attach_ipc(void **state) {
  (void)state;
  epm_buf_t b = {0};
  epm_dev_attach_t a, a2;
  uint8_t h[EPM_DEV_IPC_HANDLE_BYTES], raw[EPM_FRAME_HEADER_SIZE + 16 + 2 * EPM_DEV_IPC_HANDLE_BYTES];
  for (size_t i = 0; i < sizeof h; i++) h[i] = (uint8_t)(i * 37u + 5u);
  memset(&a, 0, sizeof a);
  a.size = ((uint64_t)1 << 32) + 12345;
  a.device = 1;
  a.kind = EPM_DEV_ATTACH_IPC;
  memcpy(a.ipc_handle, h, sizeof h);
  assert_int_equal(epm_dev_attach_encode(&b, EPM_MSG_DEV_ATTACH, 20, &a), EPM_OK);
  assert_int_equal(b.len, EPM_FRAME_HEADER_SIZE + 16 + EPM_DEV_IPC_HANDLE_BYTES);
  /* the encoder's bytes equal the hand-built layout */
  size_t n = dev_attach_raw(raw, 0, a.size, 1, EPM_DEV_ATTACH_IPC, h, sizeof h);
  assert_int_equal(n, b.len);
  epm_frame_header_encode(raw, EPM_MSG_DEV_ATTACH, 0, 20, 16 + sizeof h);
  assert_memory_equal(raw, b.data, n);
  epm_frame_t f = decode_one(&b);
  assert_int_equal(f.flags & EPM_FRAME_F_HAS_FD, 0);
  memset(&a2, 0xee, sizeof a2);
  assert_int_equal(epm_dev_attach_decode(&f, &a2), EPM_OK);
  assert_int_equal(a2.size, a.size);
  assert_int_equal(a2.device, 1);
  assert_int_equal(a2.kind, EPM_DEV_ATTACH_IPC);
  assert_memory_equal(a2.ipc_handle, h, sizeof h);
  /* an IPC attach that also claims an fd is refused */
  b.data[8] |= EPM_FRAME_F_HAS_FD;
  f = decode_one(&b);
  assert_int_equal(epm_dev_attach_decode(&f, &a2), EPM_ERR_PROTOCOL);
  epm_buf_free(&b);

  /* malformed sizes: truncated handle, trailing bytes, fd-kind with a
   * handle, zero region size, unknown kind */
  n = dev_attach_raw(raw, 0, 4096, 0, EPM_DEV_ATTACH_IPC, h, sizeof h - 1);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_ERR_PROTOCOL);
  n = dev_attach_raw(raw, 0, 4096, 0, EPM_DEV_ATTACH_IPC, h, 0);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_ERR_PROTOCOL);
  uint8_t big[2 * EPM_DEV_IPC_HANDLE_BYTES] = {0};
  n = dev_attach_raw(raw, 0, 4096, 0, EPM_DEV_ATTACH_IPC, big, sizeof h + 1);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_ERR_PROTOCOL);
  n = dev_attach_raw(raw, EPM_FRAME_F_HAS_FD, 4096, 0, EPM_DEV_ATTACH_FD, h, sizeof h);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_ERR_PROTOCOL);
  n = dev_attach_raw(raw, 0, 0, 0, EPM_DEV_ATTACH_IPC, h, sizeof h);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_ERR_PROTOCOL);
  n = dev_attach_raw(raw, 0, 4096, 0, 2, h, sizeof h);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_ERR_PROTOCOL);
  /* the hand-built well-formed frame decodes */
  n = dev_attach_raw(raw, 0, 4096, 7, EPM_DEV_ATTACH_IPC, h, sizeof h);
  assert_int_equal(decode_raw(raw, n, &a2), EPM_OK);
  assert_int_equal(a2.size, 4096);
  assert_int_equal(a2.device, 7);
  /* the encoder refuses an unknown kind */
  a.kind = 5;
  assert_int_equal(epm_dev_attach_encode(&b, EPM_MSG_DEV_ATTACH, 22, &a), EPM_ERR_INVALID_ARG);
  epm_buf_free(&b);
}

/* The client sends the header and fixed part, then the data by writev:
 * the head-only encoding is a prefix of the whole frame and announces the
 * same length. */
static void test_forward_head_only(void **state) {
  (void)state;
  epm_msg_body_t m, d;
  epm_buf_t b = {0}, h = {0};
  epm_sample_body(EPM_BODY_fwd_req, 0, &m);
  assert_int_equal(epm_msg_encode(&b, EPM_MSG_FORWARD, 0, 1, &m), EPM_OK);
  assert_int_equal(b.len, EPM_FRAME_HEADER_SIZE + EPM_FWD_REQ_FIXED + sizeof epm_sample_x + sizeof epm_sample_logits);
  assert_int_equal(epm_msg_encode_head(&h, EPM_MSG_FORWARD, 0, 1, &m), EPM_OK);
  assert_int_equal(h.len, EPM_FRAME_HEADER_SIZE + EPM_FWD_REQ_FIXED);
  assert_memory_equal(h.data, b.data, h.len);
  /* inline requests carry no offsets, whatever the struct held */
  m.fwd_req.y_offset = 4096;
  b.len = 0;
  assert_int_equal(epm_fwd_req_encode(&b, EPM_MSG_FORWARD, 1, &m.fwd_req), EPM_OK);
  epm_frame_t f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &d.fwd_req), EPM_OK);
  assert_int_equal(d.fwd_req.y_offset, 0);
  /* zero tokens: joins the step with no data */
  m.fwd_req.m = 0;
  b.len = 0;
  assert_int_equal(epm_fwd_req_encode(&b, EPM_MSG_FORWARD, 2, &m.fwd_req), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(f.payload_len, EPM_FWD_REQ_FIXED);
  assert_int_equal(epm_fwd_req_decode(&f, &d.fwd_req), EPM_OK);
  assert_int_equal(d.fwd_req.m, 0);
  /* the response's head leaves y out the same way */
  epm_sample_body(EPM_BODY_fwd_resp, 0, &m);
  b.len = h.len = 0;
  assert_int_equal(epm_msg_encode(&b, EPM_MSG_FORWARD, 1, 3, &m), EPM_OK);
  assert_int_equal(epm_msg_encode_head(&h, EPM_MSG_FORWARD, 1, 3, &m), EPM_OK);
  assert_int_equal(h.len, EPM_FRAME_HEADER_SIZE + EPM_FWD_RESP_FIXED);
  assert_int_equal(b.len, h.len + sizeof epm_sample_y);
  assert_memory_equal(h.data, b.data, h.len);
  epm_buf_free(&b);
  epm_buf_free(&h);
}

static void test_incremental(void **state) {
  (void)state;
  epm_buf_t b = {0};
  epm_frame_t f;
  size_t used;
  assert_int_equal(epm_hello_req_encode(&b, EPM_MSG_HELLO, 1, &(epm_hello_req_t){1, 1, epm_str_of("x", 1)}), EPM_OK);
  for (size_t n = 0; n < b.len; n++) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, b.data, n);
    used = 0;
    assert_int_equal(epm_frame_decode(copy, n, NULL, &f, &used), EPM_ERR_NOT_READY);
    assert_int_equal(used, n < EPM_FRAME_HEADER_SIZE ? EPM_FRAME_HEADER_SIZE : b.len);
    free(copy);
  }
  /* trailing bytes are named as such */
  uint8_t *buf = frame_of(EPM_MSG_SHUTDOWN, 0, NULL, 0, 0, 3, &f);
  assert_int_equal(epm_empty_req_decode(&f, NULL), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "3 trailing bytes"));
  free(buf);
  epm_buf_free(&b);
}

static void test_bad_headers(void **state) {
  (void)state;
  uint8_t h[EPM_FRAME_HEADER_SIZE];
  epm_frame_t f;
  size_t used;
  epm_proto_limits_t lim = {1024};

  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 1, 0);
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_OK);

  h[0] = 'X';
  assert_int_equal(epm_frame_decode(h, 4, &lim, &f, &used), EPM_ERR_PROTOCOL); /* early magic check */
  assert_non_null(strstr(epm_last_error(), "magic"));

  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 1, 0);
  h[4] = 3; /* version 3 */
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  assert_int_equal(epm_frame_refused_version(h, sizeof h), 3);
  h[4] = 0;
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  /* a version-1 client: the message names both versions, and the answer
   * can be framed in the peer's version */
  h[4] = 1;
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "protocol version 1 is not supported: this side speaks versions 2..2"));
  assert_int_equal(epm_frame_refused_version(h, sizeof h), 1);
  epm_buf_t eb = {0};
  assert_int_equal(epm_error_resp_encode(&eb, EPM_MSG_ERROR, 0, &(epm_error_resp_t){EPM_ERR_PROTOCOL, epm_str_of("v", 1)}),
                   EPM_OK);
  epm_frame_set_version(eb.data, 1);
  assert_int_equal(eb.data[4], 1);
  assert_int_equal(eb.data[5], 0);
  epm_buf_free(&eb);
  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 1, 0);
  assert_int_equal(epm_frame_refused_version(h, sizeof h), 0); /* a good version */
  assert_int_equal(epm_frame_refused_version(h, 5), 0);        /* too short to say */

  epm_frame_header_encode(h, 0, 0, 1, 0);
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  epm_frame_header_encode(h, EPM_MSG_TYPE_MAX + 1, 0, 1, 0);
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0x80, 1, 0);
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  epm_frame_header_encode(h, EPM_MSG_HEALTH, 0, 1, 0);
  h[12] = 1; /* reserved */
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);

  /* over the limit: refused from the header alone, before any payload */
  epm_frame_header_encode(h, EPM_MSG_FORWARD, 0, 1, 1025);
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_OVERFLOW);
  assert_non_null(strstr(epm_last_error(), "1025"));
  epm_frame_header_encode(h, EPM_MSG_FORWARD, 0, 1, UINT64_MAX);
  assert_int_equal(epm_frame_decode(h, sizeof h, NULL, &f, &used), EPM_ERR_OVERFLOW);
  epm_frame_header_encode(h, EPM_MSG_FORWARD, 0, 1, 1024);
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_NOT_READY);
  assert_int_equal(used, EPM_FRAME_HEADER_SIZE + 1024);
}

/* Build a FORWARD request frame by hand with arbitrary fixed fields and
 * `data` trailing bytes. */
static void fwd_raw(epm_buf_t *b, uint32_t mode, int64_t m, int64_t hdim, int64_t e, size_t data) {
  uint8_t fx[EPM_FWD_REQ_FIXED] = {0};
  uint64_t v[7] = {1, (uint64_t)m, (uint64_t)hdim, (uint64_t)e, 0, 0, 0};
  fx[4] = (uint8_t)mode;
  for (int i = 0; i < 7; i++)
    for (int k = 0; k < 8; k++) fx[8 + 8 * i + k] = (uint8_t)(v[i] >> (8 * k));
  b->len = 0;
  uint8_t h[EPM_FRAME_HEADER_SIZE];
  epm_frame_header_encode(h, EPM_MSG_FORWARD, 0, 1, sizeof fx + data);
  assert_int_equal(epm_buf_put(b, h, sizeof h), EPM_OK);
  assert_int_equal(epm_buf_put(b, fx, sizeof fx), EPM_OK);
  assert_int_equal(epm_buf_reserve(b, data), EPM_OK);
  memset(b->data + b->len, 0, data);
  b->len += data;
}

static void test_forward_size_overflow(void **state) {
  (void)state;
  epm_buf_t b = {0};
  epm_fwd_req_t rq;
  epm_frame_t f;
  /* m*H*2 overflows int64: refused with the numbers, never trusted */
  fwd_raw(&b, EPM_DATA_INLINE, (int64_t)1 << 62, 7168, 256, 16);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_ERR_OVERFLOW);
  assert_non_null(strstr(epm_last_error(), "4611686018427387904"));
  /* sizes that fit but disagree with the payload */
  fwd_raw(&b, EPM_DATA_INLINE, 2, 16, 4, 2 * 16 * 2 + 2 * 4 * 4 - 1);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_ERR_PROTOCOL);
  fwd_raw(&b, EPM_DATA_INLINE, 2, 16, 4, 2 * 16 * 2 + 2 * 4 * 4);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_OK);
  /* negative m, zero hidden, unknown mode */
  fwd_raw(&b, EPM_DATA_INLINE, -1, 16, 4, 0);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_ERR_INVALID_ARG);
  fwd_raw(&b, EPM_DATA_INLINE, 1, 0, 4, 0);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_ERR_INVALID_ARG);
  fwd_raw(&b, 3, 1, 16, 4, 0);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_ERR_PROTOCOL);
  /* shm mode with a data tail is refused (trailing bytes) */
  fwd_raw(&b, EPM_DATA_SHM, 1, 16, 4, 8);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq), EPM_ERR_PROTOCOL);
  /* the helper itself: exact numbers */
  size_t xb, lb;
  assert_int_equal(epm_fwd_data_bytes(327680, 7168, 256, &xb, &lb), EPM_OK);
  assert_int_equal(xb, (size_t)327680 * 7168 * 2);
  assert_int_equal(lb, (size_t)327680 * 256 * 4);
  assert_int_equal(epm_fwd_data_bytes(INT64_MAX / 2, 2, 1, &xb, &lb), EPM_ERR_OVERFLOW);
  epm_buf_free(&b);
}

/* Run every decoder on one buffer copy; return the frame status. */
static epm_status_t decode_all(const uint8_t *p, size_t n) {
  uint8_t *copy = malloc(n ? n : 1);
  memcpy(copy, p, n);
  epm_frame_t f;
  size_t used;
  epm_status_t st = epm_frame_decode(copy, n, NULL, &f, &used);
  if (st == EPM_OK) {
    epm_msg_body_t u;
    for (int b = 1; b < EPM_BODY_COUNT; b++) (void)typed_decode((epm_body_t)b, &f, &u);
    if (epm_msg_decode(&f, &u) == EPM_OK && f.type == EPM_MSG_FORWARD && !(f.flags & EPM_FRAME_F_RESPONSE) &&
        u.fwd_req.data_mode == EPM_DATA_INLINE) {
      /* touch the views: they must lie inside the copy */
      volatile uint8_t s = 0;
      size_t xb, lb;
      assert_int_equal(epm_fwd_data_bytes(u.fwd_req.m, u.fwd_req.hidden, u.fwd_req.num_experts, &xb, &lb), EPM_OK);
      for (size_t k = 0; k < xb; k++) s ^= ((const uint8_t *)u.fwd_req.x)[k];
      for (size_t k = 0; k < lb; k++) s ^= ((const uint8_t *)u.fwd_req.logits)[k];
    }
  }
  free(copy);
  return st;
}

static epm_buf_t seeds[64];
static int nseeds;
static void add_seed(uint16_t type, int resp, epm_body_t body, int variant, const epm_msg_body_t *m) {
  (void)body, (void)variant;
  assert_true(nseeds < 64);
  assert_int_equal(epm_msg_encode(&seeds[nseeds++], type, resp, 1, m), EPM_OK);
}

static void test_mutations_never_crash(void **state) {
  (void)state;
  for_each_sample(add_seed);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  int ok = 0, errs = 0;
  uint8_t buf[4096];
  for (int it = 0; it < 40000; it++) {
    const epm_buf_t *seed = &seeds[it % nseeds];
    assert_true(seed->len <= sizeof buf);
    memcpy(buf, seed->data, seed->len);
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    int flips = 1 + (int)(s % 3);
    for (int k = 0; k < flips; k++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      buf[s % seed->len] ^= (uint8_t)(1u << ((s >> 32) % 8));
    }
    size_t n = (s >> 40) % 4 == 0 ? (size_t)((s >> 20) % seed->len) : seed->len;
    epm_status_t st = decode_all(buf, n);
    if (st == EPM_OK) ok++;
    else errs++;
  }
  assert_true(ok > 0 && errs > 0); /* both paths exercised */
  for (int i = 0; i < nseeds; i++) epm_buf_free(&seeds[i]);
}

/* A cell of the doc's message list names the body first: "`fwd_req`: ..."
 * or "—" where the table has none. */
static void check_body_cell(const char *cell, uint16_t type, int resp) {
  char want[64];
  epm_body_t body = epm_msg_body(type, resp);
  while (*cell == ' ') cell++;
  if (body == EPM_BODY_none) snprintf(want, sizeof want, "\u2014");
  else snprintf(want, sizeof want, "`%s`", epm_body_name(body));
  if (strncmp(cell, want, strlen(want)))
    fail_msg("PROTOCOL.md's %s %s cell does not start with %s: %.40s", epm_msg_type_name(type),
             resp ? "response" : "request", want, cell);
}

/* docs/PROTOCOL.md lists exactly the table's messages, by value, name and
 * bodies, and its frame table names the right range of types. */
static void test_doc_lists_every_message(void **state) {
  (void)state;
  FILE *fp = doc_path ? fopen(doc_path, "r") : NULL;
  char line[4096], want[64];
  int in_list = 0, rows = 0, range_ok = 0, seen[EPM_MSG_TYPE_MAX + 1] = {0};
  if (!fp) fail_msg("cannot open docs/PROTOCOL.md (argv[1] = %s)", doc_path ? doc_path : "(none)");
  snprintf(want, sizeof want, "| type | 1..%u,", (unsigned)EPM_MSG_TYPE_MAX);
  while (fgets(line, sizeof line, fp)) {
    unsigned v;
    char name[64];
    if (strstr(line, want)) range_ok = 1;
    if (!strncmp(line, "## ", 3) || !strncmp(line, "### ", 4)) in_list = !strncmp(line, "## Message types", 16);
    if (!in_list || sscanf(line, "| %u | %63[A-Z_] |", &v, name) != 2) continue;
    rows++;
    if (v < 1 || v > EPM_MSG_TYPE_MAX) fail_msg("PROTOCOL.md lists type %u %s, not in EPM_MSG_MAP", v, name);
    if (strcmp(name, epm_msg_type_name((uint16_t)v)))
      fail_msg("PROTOCOL.md lists type %u as %s; EPM_MSG_MAP says %s", v, name, epm_msg_type_name((uint16_t)v));
    char *cells[4], *save = NULL;
    int nc = 0;
    for (char *c = strtok_r(line, "|", &save); c && nc < 4; c = strtok_r(NULL, "|", &save)) cells[nc++] = c;
    assert_int_equal(nc, 4); /* type, name, request, response */
    check_body_cell(cells[2], (uint16_t)v, 0);
    check_body_cell(cells[3], (uint16_t)v, 1);
    seen[v]++;
  }
  fclose(fp);
  for (unsigned v = 1; v <= EPM_MSG_TYPE_MAX; v++)
    if (seen[v] != 1) fail_msg("PROTOCOL.md lists %s (type %u) %d times", epm_msg_type_name((uint16_t)v), v, seen[v]);
  assert_int_equal(rows, EPM_MSG_TYPE_MAX);
  if (!range_ok) fail_msg("PROTOCOL.md's frame table does not say \"%s\"", want);
}

int main(int argc, char **argv) {
  doc_path = argc > 1 ? argv[1] : NULL;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tables_agree),      cmocka_unit_test(test_golden_frames),
      cmocka_unit_test(test_every_message),     cmocka_unit_test(test_value_rules),
      cmocka_unit_test(test_negotiate),         cmocka_unit_test(test_dev_attach_ipc),
      cmocka_unit_test(test_forward_head_only), cmocka_unit_test(test_incremental),
      cmocka_unit_test(test_bad_headers),       cmocka_unit_test(test_forward_size_overflow),
      cmocka_unit_test(test_mutations_never_crash), cmocka_unit_test(test_doc_lists_every_message),
      cmocka_unit_test(test_max_payload),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
