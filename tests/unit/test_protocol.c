/* test_protocol: the wire codec. Every message type round-trips; truncated,
 * oversized, wrong magic/version/type/flags, and size-overflow frames are
 * errors; a seeded mutation loop over valid frames (each decoded from an
 * exactly-sized heap copy, so ASan sees any over-read) never crashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/protocol.h"

static epm_str_t S(const char *s) {
  epm_str_t v = {s, (uint32_t)strlen(s)};
  return v;
}

static int str_eq(epm_str_t v, const char *s) { return v.len == strlen(s) && memcmp(v.ptr, s, v.len) == 0; }

/* Decode the single frame in b; assert it consumes every byte. */
static epm_frame_t decode_one(const epm_buf_t *b) {
  epm_frame_t f;
  size_t used = 0;
  assert_int_equal(epm_frame_decode(b->data, b->len, NULL, &f, &used), EPM_OK);
  assert_int_equal(used, b->len);
  return f;
}

static void test_hello_roundtrip(void **state) {
  (void)state;
  epm_buf_t b = {0};
  epm_hello_req_t rq = {1, 3, S("epmoectl")}, rq2;
  assert_int_equal(epm_hello_req_encode(&b, 77, &rq), EPM_OK);
  epm_frame_t f = decode_one(&b);
  assert_int_equal(f.type, EPM_MSG_HELLO);
  assert_int_equal(f.request_id, 77);
  assert_int_equal(epm_hello_req_decode(&f, &rq2), EPM_OK);
  assert_int_equal(rq2.min_version, 1);
  assert_int_equal(rq2.max_version, 3);
  assert_true(str_eq(rq2.client_name, "epmoectl"));
  /* a response is not a request */
  assert_int_equal(epm_hello_resp_decode(&f, &(epm_hello_resp_t){0}), EPM_ERR_PROTOCOL);

  b.len = 0;
  epm_hello_resp_t rs = {1, 3, 4, 7168, 256, 8, 10240, 1u << 30, S("0.1.0"), S("deepseek-r1"), S("cpu")}, rs2;
  assert_int_equal(epm_hello_resp_encode(&b, 78, &rs), EPM_OK);
  f = decode_one(&b);
  assert_true(f.flags & EPM_FRAME_F_RESPONSE);
  assert_int_equal(epm_hello_resp_decode(&f, &rs2), EPM_OK);
  assert_int_equal(rs2.rank, 3);
  assert_int_equal(rs2.world_size, 4);
  assert_int_equal(rs2.hidden, 7168);
  assert_int_equal(rs2.num_experts, 256);
  assert_int_equal(rs2.top_k, 8);
  assert_int_equal(rs2.max_tokens_per_rank, 10240);
  assert_true(str_eq(rs2.model, "deepseek-r1") && str_eq(rs2.backend, "cpu") && str_eq(rs2.server_version, "0.1.0"));
  epm_buf_free(&b);
}

static void test_negotiate(void **state) {
  (void)state;
  uint16_t v = 0;
  assert_int_equal(epm_proto_negotiate(1, 9, &v), EPM_OK);
  assert_int_equal(v, EPM_PROTO_VERSION);
  assert_int_equal(epm_proto_negotiate(2, 9, &v), EPM_ERR_PROTOCOL); /* server speaks only 1 */
  assert_non_null(strstr(epm_last_error(), "client speaks 2..9"));
  assert_int_equal(epm_proto_negotiate(3, 1, &v), EPM_ERR_PROTOCOL);
}

static void test_text_health_error_shutdown(void **state) {
  (void)state;
  epm_buf_t b = {0};
  uint32_t fmt;
  epm_str_t txt;
  assert_int_equal(epm_u32_req_encode(&b, EPM_MSG_STATS, 5, EPM_FMT_PROMETHEUS), EPM_OK);
  epm_frame_t f = decode_one(&b);
  assert_int_equal(epm_u32_req_decode(&f, &fmt), EPM_OK);
  assert_int_equal(fmt, EPM_FMT_PROMETHEUS);
  b.len = 0;
  assert_int_equal(epm_u32_req_encode(&b, EPM_MSG_STATUS, 5, 7), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_u32_req_decode(&f, &fmt), EPM_ERR_PROTOCOL); /* format 7 unknown */

  b.len = 0;
  const char *info = "# Server\r\nversion:0.1.0\r\n";
  assert_int_equal(epm_text_resp_encode(&b, EPM_MSG_STATUS, 6, info, strlen(info)), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_text_resp_decode(&f, &txt), EPM_OK);
  assert_true(str_eq(txt, info));

  b.len = 0;
  epm_health_resp_t h = {EPM_HEALTH_NOT_READY, S("warm-up step pending")}, h2;
  assert_int_equal(epm_health_resp_encode(&b, 9, &h), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_health_resp_decode(&f, &h2), EPM_OK);
  assert_int_equal(h2.state, EPM_HEALTH_NOT_READY);
  assert_true(str_eq(h2.reason, "warm-up step pending"));
  assert_string_equal(epm_health_name(EPM_HEALTH_FAILED), "failed");

  b.len = 0;
  epm_error_resp_t e;
  assert_int_equal(epm_error_resp_encode(&b, 10, EPM_ERR_TIMEOUT, "step 4 timed out; missing ranks 1,3"), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_error_resp_decode(&f, &e), EPM_OK);
  assert_int_equal(e.code, EPM_ERR_TIMEOUT);
  assert_true(str_eq(e.message, "step 4 timed out; missing ranks 1,3"));

  b.len = 0;
  assert_int_equal(epm_empty_encode(&b, EPM_MSG_SHUTDOWN, 0, 11), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(f.type, EPM_MSG_SHUTDOWN);
  assert_int_equal(f.payload_len, 0);
  assert_null(f.payload);

  b.len = 0;
  epm_shm_attach_t sa = {1 << 20}, sa2;
  assert_int_equal(epm_shm_attach_encode(&b, 12, &sa), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_shm_attach_decode(&f, &sa2), EPM_OK);
  assert_int_equal(sa2.size, 1 << 20);
  b.len = 0;
  epm_dev_attach_t da = {(uint64_t)1 << 33, 3, EPM_DEV_ATTACH_FD, {0}}, da2;
  assert_int_equal(epm_dev_attach_encode(&b, 13, &da), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_dev_attach_decode(&f, &da2), EPM_OK);
  assert_int_equal(da2.size, (uint64_t)1 << 33);
  assert_int_equal(da2.device, 3);
  assert_int_equal(da2.kind, EPM_DEV_ATTACH_FD);
  b.data[8] &= (uint8_t)~EPM_FRAME_F_HAS_FD; /* without the fd flag it is refused */
  f = decode_one(&b);
  assert_int_equal(epm_dev_attach_decode(&f, &da2), EPM_ERR_PROTOCOL);
  epm_buf_free(&b);
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
  assert_int_equal(epm_dev_attach_encode(&b, 20, &a), EPM_OK);
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
  assert_int_equal(epm_dev_attach_encode(&b, 22, &a), EPM_ERR_INVALID_ARG);
  epm_buf_free(&b);
}

static void test_forward_roundtrip(void **state) {
  (void)state;
  enum { M = 3, H = 32, E = 8 };
  uint16_t x[M * H], y[M * H];
  float lg[M * E];
  for (int i = 0; i < M * H; i++) x[i] = (uint16_t)((unsigned)i * 37u), y[i] = (uint16_t)((unsigned)i * 11u + 1);
  for (int i = 0; i < M * E; i++) lg[i] = (float)i * 0.25f - 3.0f;
  epm_buf_t b = {0};
  epm_fwd_req_t rq = {.layer = 5, .data_mode = EPM_DATA_INLINE, .step_id = 42, .m = M, .hidden = H,
                      .num_experts = E, .x = x, .logits = lg}, rq2;
  assert_int_equal(epm_fwd_req_encode(&b, 1, &rq, 1), EPM_OK);
  assert_int_equal(b.len, EPM_FRAME_HEADER_SIZE + EPM_FWD_REQ_FIXED + sizeof x + sizeof lg);
  epm_frame_t f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq2), EPM_OK);
  assert_int_equal(rq2.layer, 5);
  assert_int_equal(rq2.step_id, 42);
  assert_int_equal(rq2.m, M);
  assert_memory_equal(rq2.x, x, sizeof x);
  assert_memory_equal(rq2.logits, lg, sizeof lg);

  /* header-only encoding announces the same payload length */
  epm_buf_t h = {0};
  assert_int_equal(epm_fwd_req_encode(&h, 1, &rq, 0), EPM_OK);
  assert_int_equal(h.len, EPM_FRAME_HEADER_SIZE + EPM_FWD_REQ_FIXED);
  assert_memory_equal(h.data, b.data, h.len);
  epm_buf_free(&h);

  /* zero tokens: joins the step with no data */
  b.len = 0;
  rq.m = 0;
  assert_int_equal(epm_fwd_req_encode(&b, 2, &rq, 1), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_req_decode(&f, &rq2), EPM_OK);
  assert_int_equal(rq2.m, 0);

  /* shm mode */
  b.len = 0;
  epm_fwd_req_t sq = {.layer = 1, .data_mode = EPM_DATA_SHM, .step_id = 9, .m = M, .hidden = H,
                      .num_experts = E, .x_offset = 0, .logits_offset = 4096, .y_offset = 8192};
  assert_int_equal(epm_fwd_req_encode(&b, 3, &sq, 1), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(f.payload_len, EPM_FWD_REQ_FIXED);
  assert_int_equal(epm_fwd_req_decode(&f, &rq2), EPM_OK);
  assert_int_equal(rq2.logits_offset, 4096);
  assert_int_equal(rq2.y_offset, 8192);

  b.len = 0;
  epm_fwd_resp_t rs = {.step_id = 42, .m = M, .hidden = H, .data_mode = EPM_DATA_INLINE, .step_ns = 12345, .y = y}, rs2;
  assert_int_equal(epm_fwd_resp_encode(&b, 1, &rs, 1), EPM_OK);
  f = decode_one(&b);
  assert_int_equal(epm_fwd_resp_decode(&f, &rs2), EPM_OK);
  assert_int_equal(rs2.step_ns, 12345);
  assert_memory_equal(rs2.y, y, sizeof y);
  epm_buf_free(&b);
}

static void test_incremental_and_truncated(void **state) {
  (void)state;
  epm_buf_t b = {0};
  epm_hello_req_t rq = {1, 1, S("x")};
  epm_frame_t f;
  size_t used;
  assert_int_equal(epm_hello_req_encode(&b, 1, &rq), EPM_OK);
  for (size_t n = 0; n < b.len; n++) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, b.data, n);
    used = 0;
    assert_int_equal(epm_frame_decode(copy, n, NULL, &f, &used), EPM_ERR_NOT_READY);
    assert_int_equal(used, n < EPM_FRAME_HEADER_SIZE ? EPM_FRAME_HEADER_SIZE : b.len);
    free(copy);
  }
  /* a payload cut short inside a decodable frame: declare fewer bytes */
  epm_frame_t full = decode_one(&b), cut = full;
  cut.payload_len -= 1;
  epm_hello_req_t out;
  assert_int_equal(epm_hello_req_decode(&cut, &out), EPM_ERR_PROTOCOL);
  /* trailing bytes are refused too */
  epm_buf_t big = {0};
  assert_int_equal(epm_frame_encode(&big, EPM_MSG_HELLO, 0, 1, full.payload, full.payload_len), EPM_OK);
  uint8_t extra = 0;
  assert_int_equal(epm_buf_put(&big, &extra, 1), EPM_OK);
  big.data[24] += 1; /* payload_len + 1 */
  f = decode_one(&big);
  assert_int_equal(epm_hello_req_decode(&f, &out), EPM_ERR_PROTOCOL);
  assert_non_null(strstr(epm_last_error(), "trailing"));
  epm_buf_free(&big);
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
  h[4] = 2; /* version 2 */
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);
  h[4] = 0;
  assert_int_equal(epm_frame_decode(h, sizeof h, &lim, &f, &used), EPM_ERR_PROTOCOL);

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
    union {
      epm_hello_req_t a; epm_hello_resp_t b; uint32_t c; epm_str_t d; epm_health_resp_t e;
      epm_fwd_req_t g; epm_fwd_resp_t h; epm_shm_attach_t i; epm_error_resp_t j; epm_dev_attach_t k;
    } u;
    (void)epm_dev_attach_decode(&f, &u.k);
    (void)epm_hello_req_decode(&f, &u.a);
    (void)epm_hello_resp_decode(&f, &u.b);
    (void)epm_u32_req_decode(&f, &u.c);
    (void)epm_text_resp_decode(&f, &u.d);
    (void)epm_health_resp_decode(&f, &u.e);
    if (epm_fwd_req_decode(&f, &u.g) == EPM_OK && u.g.data_mode == EPM_DATA_INLINE) {
      /* touch the views: they must lie inside the copy */
      volatile uint8_t s = 0;
      size_t xb, lb;
      assert_int_equal(epm_fwd_data_bytes(u.g.m, u.g.hidden, u.g.num_experts, &xb, &lb), EPM_OK);
      for (size_t k = 0; k < xb; k++) s ^= ((const uint8_t *)u.g.x)[k];
      for (size_t k = 0; k < lb; k++) s ^= ((const uint8_t *)u.g.logits)[k];
    }
    (void)epm_fwd_resp_decode(&f, &u.h);
    (void)epm_shm_attach_decode(&f, &u.i);
    (void)epm_error_resp_decode(&f, &u.j);
  }
  free(copy);
  return st;
}

static void test_mutations_never_crash(void **state) {
  (void)state;
  epm_buf_t seeds[6] = {{0}};
  uint16_t x[4 * 16] = {0};
  float lg[4 * 4] = {0};
  epm_hello_req_encode(&seeds[0], 1, &(epm_hello_req_t){1, 1, S("fuzz")});
  epm_hello_resp_t rs = {1, 0, 2, 16, 4, 2, 64, 1 << 20, S("v"), S("tiny"), S("cpu")};
  epm_hello_resp_encode(&seeds[1], 1, &rs);
  epm_fwd_req_t rq = {.data_mode = EPM_DATA_INLINE, .m = 4, .hidden = 16, .num_experts = 4, .x = x, .logits = lg};
  epm_fwd_req_encode(&seeds[2], 1, &rq, 1);
  epm_health_resp_encode(&seeds[3], 1, &(epm_health_resp_t){2, S("comm aborted")});
  epm_error_resp_encode(&seeds[4], 1, EPM_ERR_PROTOCOL, "bad");
  epm_fwd_resp_t rp = {.m = 4, .hidden = 16, .y = x};
  epm_fwd_resp_encode(&seeds[5], 1, &rp, 1);
  uint64_t s = 0x9E3779B97F4A7C15ull;
  int ok = 0, errs = 0;
  uint8_t buf[4096];
  for (int it = 0; it < 20000; it++) {
    const epm_buf_t *seed = &seeds[it % 6];
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
  for (int i = 0; i < 6; i++) epm_buf_free(&seeds[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hello_roundtrip),        cmocka_unit_test(test_negotiate),
      cmocka_unit_test(test_text_health_error_shutdown), cmocka_unit_test(test_dev_attach_ipc),
      cmocka_unit_test(test_forward_roundtrip),
      cmocka_unit_test(test_incremental_and_truncated), cmocka_unit_test(test_bad_headers),
      cmocka_unit_test(test_forward_size_overflow),  cmocka_unit_test(test_mutations_never_crash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
