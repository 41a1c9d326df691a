/* SPDX-License-Identifier: Apache-2.0 */
/* test_safetensors: the reader against hand-built files — valid ones (bytes
 * read back exactly, views, metadata, writer round trip) and an attack corpus
 * where each malformed file must fail with its own status and message. Files
 * are written byte by byte here, independently of epmoe's writer. Special
 * files (FIFO, device, directory) are refused without blocking, and the
 * in-memory entry point (the fuzz target's) agrees with the file one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epmoe/safetensors.h"

static char tmpdir[256];

static int setup(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/epm_st_test_XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Write [u64 hlen][header][data] with an explicit header length field. */
static const char *write_raw(const char *name, uint64_t hlen_field, const char *hdr, const void *data,
                             size_t dlen) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hlen_field >> (8 * i));
  assert_int_equal(fwrite(le, 1, 8, fp), 8);
  if (hdr) assert_int_equal(fwrite(hdr, 1, strlen(hdr), fp), strlen(hdr));
  if (dlen) assert_int_equal(fwrite(data, 1, dlen, fp), dlen);
  fclose(fp);
  return path;
}
static const char *write_st(const char *name, const char *hdr, const void *data, size_t dlen) {
  return write_raw(name, strlen(hdr), hdr, data, dlen);
}

static uint8_t blob[4096];

static void test_valid_file(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof blob; i++) blob[i] = (uint8_t)(i * 7 + 3);
  /* Offsets deliberately not in name order; a 0-rank and an empty tensor. */
  const char *hdr =
      "  {\"b\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
      "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[32,36]},"
      "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[36,36]},"
      "\"f4\":{\"dtype\":\"F4\",\"shape\":[3,2],\"data_offsets\":[36,39]},"
      "\"__metadata__\":{\"format\":\"pt\"}}   ";
  const char *p = write_st("valid.safetensors", hdr, blob, 39);
  epm_st_file_t *f = NULL;
  assert_int_equal(epm_st_open(p, &f), EPM_OK);
  assert_int_equal(epm_st_count(f), 5);
  assert_string_equal(epm_st_at(f, 0)->name, "a"); /* offset order */
  const epm_st_tensor_t *t = epm_st_find(f, "b");
  assert_non_null(t);
  assert_int_equal(t->dtype, EPM_ST_F32);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->numel, 6);
  assert_int_equal(t->nbytes, 24);
  assert_int_equal(t->file_offset, 8 + strlen(hdr) + 8);
  assert_memory_equal(t->data, blob + 8, 24);
  t = epm_st_find(f, "s");
  assert_int_equal(t->ndim, 0);
  assert_int_equal(t->numel, 1);
  assert_memory_equal(t->data, blob + 32, 4);
  t = epm_st_find(f, "e");
  assert_int_equal(t->nbytes, 0);
  assert_null(epm_st_find(f, "zz"));
  assert_string_equal(epm_st_metadata(f, "format"), "pt");
  int64_t shape[2] = {2, 3};
  assert_int_equal(epm_st_expect(f, "b", EPM_ST_F32, 2, shape, &t), EPM_OK);
  assert_int_equal(epm_st_expect(f, "b", EPM_ST_BF16, 2, shape, &t), EPM_ERR_FORMAT);
  assert_non_null(strstr(epm_last_error(), "tensor 'b' is F32 [2, 3], expected BF16 [2, 3]"));
  assert_int_equal(epm_st_expect(f, "nope", EPM_ST_F32, 2, shape, &t), EPM_ERR_FORMAT);
  assert_non_null(strstr(epm_last_error(), "tensor 'nope' is missing"));
  epm_st_close(f);
}

static void test_writer_round_trip(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
  epm_st_spec_t specs[3] = {
      {.name = "x.weight", .dtype = EPM_ST_U8, .ndim = 2, .shape = {4, 8}},
      {.name = "x.scale", .dtype = EPM_ST_F8_E4M3, .ndim = 2, .shape = {4, 1}},
      {.name = "x.s2", .dtype = EPM_ST_F32, .ndim = 0},
  };
  const char *meta[2] = {"format", "pt"};
  epm_st_writer_t *w;
  assert_int_equal(epm_st_writer_open(path, specs, 3, meta, 1, &w), EPM_OK);
  assert_int_equal(epm_st_writer_put(w, blob, 31), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_st_writer_put(w, blob, 32), EPM_OK);
  assert_int_equal(epm_st_writer_put(w, blob + 100, 4), EPM_OK);
  assert_int_equal(epm_st_writer_put(w, blob + 200, 4), EPM_OK);
  assert_int_equal(epm_st_writer_close(w), EPM_OK);
  epm_st_file_t *f;
  assert_int_equal(epm_st_open(path, &f), EPM_OK);
  /* Data section starts 8-byte aligned, as the reference writer pads. */
  assert_int_equal(epm_st_at(f, 0)->file_offset % 8, 0);
  assert_memory_equal(epm_st_find(f, "x.weight")->data, blob, 32);
  assert_memory_equal(epm_st_find(f, "x.scale")->data, blob + 100, 4);
  assert_memory_equal(epm_st_find(f, "x.s2")->data, blob + 200, 4);
  assert_int_equal(epm_st_find(f, "x.scale")->dtype, EPM_ST_F8_E4M3);
  assert_string_equal(epm_st_metadata(f, "format"), "pt");
  epm_st_close(f);
}

/* epm_st_read copies exactly the mapped bytes, and a file truncated after
 * open gives EPM_ERR_IO instead of a SIGBUS. */
static void test_read_and_shrink(void **state) {
  (void)state;
  const char *p = write_st("shrink.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[64],\"data_offsets\":[0,64]},"
                           "\"b\":{\"dtype\":\"U8\",\"shape\":[512],\"data_offsets\":[64,576]}}",
                           blob, 576);
  epm_st_file_t *f;
  uint8_t dst[512];
  assert_int_equal(epm_st_open(p, &f), EPM_OK);
  const epm_st_tensor_t *b = epm_st_find(f, "b");
  assert_int_equal(epm_st_read(f, b, dst), EPM_OK);
  assert_memory_equal(dst, blob + 64, 512);
  assert_int_equal(truncate(p, (off_t)(b->file_offset + 100)), 0);
  assert_int_equal(epm_st_read(f, b, dst), EPM_ERR_IO);
  assert_non_null(strstr(epm_last_error(), "tensor 'b': read 100 of 512 bytes"));
  assert_non_null(strstr(epm_last_error(), "file shrank since it was opened"));
  epm_st_close(f);
}

typedef struct {
  const char *what;
  const char *hdr;
  size_t dlen;
  epm_status_t st;
  const char *msg;
} attack_t;

static void expect_fail(const char *path, epm_status_t st, const char *msg, const char *what) {
  epm_st_file_t *f = (epm_st_file_t *)0x1;
  epm_status_t got = epm_st_open(path, &f);
  if (got != st || !strstr(epm_last_error(), msg) || !strstr(epm_last_error(), path))
    fail_msg("%s: got %s '%s', want %s containing '%s' and the path", what, epm_status_name(got),
             epm_last_error(), epm_status_name(st), msg);
  assert_null(f);
}

#define T1(dt, shape, off) "{\"t\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}}"

static void test_attack_corpus(void **state) {
  (void)state;
  static const attack_t cases[] = {
      {"invalid JSON", "{\"t\":{\"dtype\":\"U8\",", 0, EPM_ERR_FORMAT, "invalid header JSON"},
      {"not UTF-8", "{\"\xff\xfe\":{}}", 0, EPM_ERR_FORMAT, "invalid header JSON"},
      {"not an object", "[1,2,3]", 0, EPM_ERR_FORMAT, "header JSON is not an object"},
      {"unknown dtype", T1("F128", "[4]", "[0,4]"), 4, EPM_ERR_FORMAT, "unknown dtype 'F128'"},
      {"negative shape", T1("U8", "[-4]", "[0,4]"), 4, EPM_ERR_FORMAT, "shape[0] is negative"},
      {"fractional shape", T1("U8", "[4.0]", "[0,4]"), 4, EPM_ERR_FORMAT, "shape[0] is not an integer"},
      {"overflowing shape", T1("U8", "[4294967296,4294967296,16]", "[0,4]"), 4, EPM_ERR_OVERFLOW,
       "shape overflows 64-bit element count at dim 1"},
      {"overflowing bytes", T1("F64", "[2,1152921504606846976]", "[0,4]"), 4, EPM_ERR_OVERFLOW,
       "bits overflows 64 bits"},
      {"rank too high", T1("U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]"), 1, EPM_ERR_FORMAT,
       "rank 9 exceeds the limit 8"},
      {"size mismatch", T1("F32", "[2]", "[0,4]"), 4, EPM_ERR_FORMAT, "hold 4 bytes but F32 [2] needs 8"},
      {"misaligned F4", T1("F4", "[3]", "[0,2]"), 2, EPM_ERR_FORMAT, "not whole bytes"},
      {"offsets past end", T1("U8", "[8]", "[0,8]"), 4, EPM_ERR_FORMAT,
       "data_offsets [0, 8] past the end of the 4-byte data section"},
      {"end before begin", T1("U8", "[0]", "[4,0]"), 4, EPM_ERR_FORMAT, "end before begin"},
      {"bad offsets", T1("U8", "[4]", "[0]"), 4, EPM_ERR_FORMAT, "two non-negative integers"},
      {"overlapping",
       "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}",
       12, EPM_ERR_FORMAT, "tensor 'b': data_offsets [4, 12] overlap the previous tensor 'a' ending at 8"},
      {"json attack (all at [0,16])",
       "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
       "\"b\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
       "\"c\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]}}",
       16, EPM_ERR_FORMAT, "overlap the previous tensor"},
      {"gap",
       "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
       "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}",
       12, EPM_ERR_FORMAT, "tensor 'b': data_offsets [8, 12] leave a gap of 4 bytes after offset 4"},
      {"gap at start", T1("U8", "[4]", "[4,8]"), 8, EPM_ERR_FORMAT, "leave a gap of 4 bytes after offset 0"},
      {"polyglot tail", T1("U8", "[4]", "[0,4]"), 40, EPM_ERR_FORMAT,
       "tensors cover 4 bytes but the data section has 40"},
      {"duplicate names",
       "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
       "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
       4, EPM_ERR_FORMAT, "duplicate object key"},
      {"metadata not strings", "{\"__metadata__\":{\"k\":1}}", 0, EPM_ERR_FORMAT,
       "__metadata__ value of 'k' is not a string"},
      {"unknown field", "{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],\"x\":1}}", 4,
       EPM_ERR_FORMAT, "unknown field 'x'"},
      {"missing field", "{\"t\":{\"dtype\":\"U8\",\"shape\":[4]}}", 4, EPM_ERR_FORMAT,
       "array \"data_offsets\""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[64];
    snprintf(name, sizeof name, "attack%zu.safetensors", i);
    const char *p = write_st(name, cases[i].hdr, blob, cases[i].dlen);
    expect_fail(p, cases[i].st, cases[i].msg, cases[i].what);
  }
}

static void test_header_length_attacks(void **state) {
  (void)state;
  const char *hdr = T1("U8", "[4]", "[0,4]");
  /* Huge length field (the reference's HeaderTooLarge). */
  expect_fail(write_raw("huge.safetensors", 0xffffffffffffffffULL, hdr, blob, 4), EPM_ERR_OVERFLOW,
              "header length 18446744073709551615 exceeds the limit 100000000", "huge");
  expect_fail(write_raw("huge2.safetensors", 100000001ULL, hdr, blob, 4), EPM_ERR_OVERFLOW,
              "exceeds the limit 100000000", "just over limit");
  /* Within the limit but past EOF (InvalidHeaderLength). */
  expect_fail(write_raw("eof.safetensors", 1000, hdr, blob, 4), EPM_ERR_FORMAT,
              "header length 1000 + 8 exceeds the file size", "past eof");
  /* Fewer than 8 bytes (HeaderTooSmall). */
  char path[512];
  snprintf(path, sizeof path, "%s/small.safetensors", tmpdir);
  FILE *fp = fopen(path, "wb");
  fwrite("abc", 1, 3, fp);
  fclose(fp);
  expect_fail(path, EPM_ERR_FORMAT, "fewer than the 8-byte header length", "small");
  /* Truncated data: header claims 16 bytes, file holds 10. */
  expect_fail(write_st("trunc.safetensors", T1("U8", "[16]", "[0,16]"), blob, 10), EPM_ERR_FORMAT,
              "past the end of the 10-byte data section (file truncated", "truncated");
  /* Missing file. */
  epm_st_file_t *f;
  assert_int_equal(epm_st_open("/nonexistent/x.safetensors", &f), EPM_ERR_IO);
  assert_non_null(strstr(epm_last_error(), "/nonexistent/x.safetensors: open"));
}

/* Every prefix of a valid file must be rejected, never read out of bounds
 * (ASan watches), and so must every single-byte corruption of its header
 * that changes its meaning — here we only require no crash and a status. */
static void test_truncations_and_flips(void **state) {
  (void)state;
  const char *hdr = "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}";
  size_t hl = strlen(hdr), total = 8 + hl + 16;
  uint8_t *buf = malloc(total);
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, hdr, hl);
  memcpy(buf + 8 + hl, blob, 16);
  char path[512];
  snprintf(path, sizeof path, "%s/fuzz.safetensors", tmpdir);
  for (size_t cut = 0; cut < total; cut++) {
    FILE *fp = fopen(path, "wb");
    fwrite(buf, 1, cut, fp);
    fclose(fp);
    epm_st_file_t *f;
    assert_int_not_equal(epm_st_open(path, &f), EPM_OK);
  }
  for (size_t pos = 0; pos < 8 + hl; pos++) {
    uint8_t save = buf[pos];
    buf[pos] ^= 0x5a;
    FILE *fp = fopen(path, "wb");
    fwrite(buf, 1, total, fp);
    fclose(fp);
    epm_st_file_t *f = NULL;
    if (epm_st_open(path, &f) == EPM_OK) {
      for (size_t i = 0; i < epm_st_count(f); i++) {
        const epm_st_tensor_t *t = epm_st_at(f, i);
        (void)epm_fnv1a64(t->data, t->nbytes, EPM_FNV1A64_INIT);
      }
      epm_st_close(f);
    }
    buf[pos] = save;
  }
  free(buf);
}


/* A FIFO blocks open(O_RDONLY) until a writer appears, and a device never
 * ends: both must be refused at once, before any read. The alarm turns a
 * hang into a failure. */
static void test_special_files(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/fifo.safetensors", tmpdir);
  assert_int_equal(mkfifo(path, 0600), 0);
  alarm(30);
  expect_fail(path, EPM_ERR_IO, "is a FIFO, not a regular file: refused", "fifo");
  expect_fail("/dev/zero", EPM_ERR_IO, "is a character device, not a regular file: refused", "device");
  expect_fail(tmpdir, EPM_ERR_IO, "is a directory, not a regular file: refused", "directory");
  alarm(0);
}

/* epm_st_open_mem on a file's bytes finds the same tensors at the same
 * places, reads them with epm_st_read, and rejects what the file path does. */
static void test_open_mem(void **state) {
  (void)state;
  const char *hdr = "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}";
  const char *p = write_st("mem.safetensors", hdr, blob, 16);
  size_t hl = strlen(hdr), total = 8 + hl + 16;
  uint8_t *img = malloc(total);
  FILE *fp = fopen(p, "rb");
  assert_int_equal(fread(img, 1, total, fp), total);
  fclose(fp);
  epm_st_file_t *ff, *fm;
  assert_int_equal(epm_st_open(p, &ff), EPM_OK);
  assert_int_equal(epm_st_open_mem(img, total, "img", &fm), EPM_OK);
  assert_int_equal(epm_st_count(fm), epm_st_count(ff));
  assert_string_equal(epm_st_path(fm), "img");
  for (size_t i = 0; i < epm_st_count(ff); i++) {
    const epm_st_tensor_t *a = epm_st_at(ff, i), *b = epm_st_at(fm, i);
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->file_offset, b->file_offset);
    assert_ptr_equal(b->data, img + b->file_offset);
    uint8_t buf[16];
    assert_int_equal(epm_st_read(fm, b, buf), EPM_OK);
    assert_memory_equal(buf, blob + (b->file_offset - 8 - hl), b->nbytes);
  }
  epm_st_close(ff);
  epm_st_close(fm);
  assert_int_equal(epm_st_open_mem(img, total - 1, "short", &fm), EPM_ERR_FORMAT);
  assert_null(fm);
  assert_non_null(strstr(epm_last_error(), "short: tensor 'b': data_offsets [8, 16] past the end"));
  assert_int_equal(epm_st_open_mem(img, 5, "tiny", &fm), EPM_ERR_FORMAT);
  assert_non_null(strstr(epm_last_error(), "tiny: file has 5 bytes"));
  free(img);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_file),
      cmocka_unit_test(test_writer_round_trip),
      cmocka_unit_test(test_read_and_shrink),
      cmocka_unit_test(test_attack_corpus),
      cmocka_unit_test(test_header_length_attacks),
      cmocka_unit_test(test_truncations_and_flips),
      cmocka_unit_test(test_special_files),
      cmocka_unit_test(test_open_mem),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
