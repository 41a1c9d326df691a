/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_frame — libFuzzer target for the wire codec: decodes frames back to
 * back from the input exactly as the daemon's read callback does (decode,
 * consume, repeat) and runs every body decoder of EPM_BODY_MAP, plus the
 * table dispatch, on each frame, touching every view a decoder returns.
 *   clang -g -fsanitize=fuzzer,address,undefined -Iinclude -Idaemon \
 *     tests/fuzz/fuzz_frame.c daemon/protocol*.c runtime/status.c -o fuzz_frame
 *   fuzz_frame_replay --write-seeds corpus && ./fuzz_frame corpus -max_total_time=60
 * Built without libFuzzer (EPM_FUZZ_MAIN) it is fuzz_frame_replay:
 *   fuzz_frame_replay FILE...        replays files (a crash reproducer, a corpus)
 *   fuzz_frame_replay --table        replays a seed of every message and
 *                                    direction in the table (protocol_samples.h),
 *                                    every truncation and every single-bit flip
 *                                    of it, and all seeds back to back; exits 1
 *                                    if an unmutated seed does not decode
 *   fuzz_frame_replay --write-seeds DIR   writes those seeds as a libFuzzer corpus
 * ctest runs --table. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/protocol.h"
#include "protocol_samples.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

static void touch(const void *p, size_t n) {
  for (size_t k = 0; k < n; k++) sink ^= ((const uint8_t *)p)[k];
}

static void touch_str(epm_str_t s) { touch(s.ptr, s.len); }

/* Read every byte a decoded body points at, so ASan checks the views. */
#define TOUCH_U16(n)
#define TOUCH_U32(n)
#define TOUCH_U64(n)
#define TOUCH_I64(n)
#define TOUCH_STR(n) touch_str(m->n);
#define TOUCH_TEXT(n) touch_str(m->n);
#define TOUCH_PAD16(n)
#define TOUCH_PAD32(n)
#define TOUCH_VIEW(n)
#define TOUCH_HANDLE(n)
#define TOUCH(kind, n) TOUCH_##kind(n)

static int decode_every_body(const epm_frame_t *f) {
  epm_msg_body_t u;
  size_t xb, lb;
  int ok = 0;
#define TRY_BODY(B, T, dir, fd, FIELDS)                \
  if (epm_##B##_decode(f, &u.B) == EPM_OK) {          \
    const T *m = &u.B;                                 \
    (void)m;                                           \
    FIELDS(TOUCH)                                      \
    ok++;                                              \
  }
  EPM_BODY_MAP(TRY_BODY)
#undef TRY_BODY
  /* the views whose length depends on other fields */
  if (epm_fwd_req_decode(f, &u.fwd_req) == EPM_OK && u.fwd_req.data_mode == EPM_DATA_INLINE &&
      epm_fwd_data_bytes(u.fwd_req.m, u.fwd_req.hidden, u.fwd_req.num_experts, &xb, &lb) == EPM_OK) {
    touch(u.fwd_req.x, xb);
    touch(u.fwd_req.logits, lb);
  }
  if (epm_fwd_resp_decode(f, &u.fwd_resp) == EPM_OK && u.fwd_resp.data_mode == EPM_DATA_INLINE &&
      epm_fwd_data_bytes(u.fwd_resp.m, u.fwd_resp.hidden, 1, &xb, &lb) == EPM_OK)
    touch(u.fwd_resp.y, xb);
  /* the table dispatch agrees with the typed decoders: at most one body fits */
  if ((epm_msg_decode(f, &u) == EPM_OK) != (ok == 1) || ok > 1) abort();
  return ok;
}

static int frames_ok; /* frames whose body decoded, for --table */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  epm_proto_limits_t lim = {1u << 20};
  size_t off = 0;
  while (off < size) {
    epm_frame_t f;
    size_t used = 0;
    if (epm_frame_decode(data + off, size - off, &lim, &f, &used) != EPM_OK) break;
    frames_ok += decode_every_body(&f);
    off += used;
  }
  return 0;
}

#ifdef EPM_FUZZ_MAIN
/* Run the target on an exactly-sized copy, so ASan sees over-reads. */
static void run_copy(const uint8_t *p, size_t n) {
  uint8_t *copy = malloc(n ? n : 1);
  if (!copy) abort();
  if (n) memcpy(copy, p, n);
  LLVMFuzzerTestOneInput(copy, n);
  free(copy);
}

static int table_seeds(epm_buf_t *all, int *count, const char *dir) {
  for (uint16_t t = 1; t <= EPM_MSG_TYPE_MAX; t++)
    for (int resp = 0; resp < 2; resp++) {
      epm_body_t body = epm_msg_body(t, resp);
      epm_msg_body_t m;
      for (int v = 0; body != EPM_BODY_none && epm_sample_body(body, v, &m); v++) {
        epm_buf_t b = {0};
        if (epm_msg_encode(&b, t, resp, 1, &m) != EPM_OK || epm_buf_put(all, b.data, b.len) != EPM_OK) {
          fprintf(stderr, "cannot encode the %s %s sample %d: %s\n", epm_msg_type_name(t),
                  resp ? "response" : "request", v, epm_last_error());
          return 1;
        }
        if (dir) {
          char path[4096];
          snprintf(path, sizeof path, "%s/%s_%s_%d", dir, epm_msg_type_name(t), resp ? "resp" : "req", v);
          FILE *fp = fopen(path, "wb");
          if (!fp || fwrite(b.data, 1, b.len, fp) != b.len || fclose(fp) != 0) {
            perror(path);
            return 1;
          }
        } else {
          int before = frames_ok;
          run_copy(b.data, b.len);
          if (frames_ok != before + 1) {
            fprintf(stderr, "the %s %s sample %d does not decode\n", epm_msg_type_name(t),
                    resp ? "response" : "request", v);
            return 1;
          }
          for (size_t k = 0; k < b.len; k++) run_copy(b.data, k);
          for (size_t bit = 0; bit < 8 * b.len; bit++) {
            b.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            run_copy(b.data, b.len);
            b.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
          }
        }
        (*count)++;
        epm_buf_free(&b);
      }
    }
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "--table") || !strcmp(argv[1], "--write-seeds"))) {
    epm_buf_t all = {0};
    int count = 0, write = !strcmp(argv[1], "--write-seeds");
    if (write && argc != 3) {
      fprintf(stderr, "usage: fuzz_frame_replay --write-seeds DIR\n");
      return 2;
    }
    if (table_seeds(&all, &count, write ? argv[2] : NULL)) return 1;
    if (!write) {
      int before = frames_ok;
      run_copy(all.data, all.len); /* back to back, as on a connection */
      if (frames_ok != before + count) {
        fprintf(stderr, "%d of %d back-to-back seeds decoded\n", frames_ok - before, count);
        return 1;
      }
    }
    printf("%s %d seeds from the message table\n", write ? "wrote" : "replayed", count);
    epm_buf_free(&all);
    return 0;
  }
  for (int i = 1; i < argc; i++) {
    FILE *fp = fopen(argv[i], "rb");
    if (!fp) {
      perror(argv[i]);
      return 1;
    }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    run_copy(buf, n);
  }
  return 0;
}
#endif
