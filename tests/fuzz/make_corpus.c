/* SPDX-License-Identifier: Apache-2.0 */
/* make_corpus — writes the seed corpora of the three fuzz targets under
 * OUTDIR/{frame,safetensors,model_config}/: small valid inputs built with the
 * library's own writers and encoders, and near-valid ones that each break one
 * rule (an attack case of docs/RELIABILITY.md). tests/fuzz/corpus/ holds its
 * output; the fuzz_corpus test regenerates it and replays both.
 *   make_corpus OUTDIR */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epmoe/model_dir.h"
#include "epmoe/protocol.h"
#include "protocol_samples.h"
#include "epmoe/safetensors.h"
#include "epmoe/weights.h"
#include "fuzz_model_dir.h"

static const char *out_root;

static void die(const char *what) {
  fprintf(stderr, "make_corpus: %s: %s\n", what, errno ? strerror(errno) : epm_last_error());
  exit(1);
}

static void put(const char *target, const char *name, const void *p, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", out_root, target);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/%s/%s", out_root, target, name);
  FILE *fp = fopen(path, "wb");
  if (!fp || fwrite(p, 1, n, fp) != n || fclose(fp) != 0) die(path);
}

static uint8_t *slurp(const char *path, size_t *n) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    *n = 0;
    return NULL;
  }
  fseek(fp, 0, SEEK_END);
  long len = ftell(fp);
  rewind(fp);
  uint8_t *b = malloc((size_t)len + 1);
  if (!b || fread(b, 1, (size_t)len, fp) != (size_t)len) die(path);
  b[len] = 0; /* config text is also used as a C string */
  fclose(fp);
  *n = (size_t)len;
  return b;
}

/* ---- frame ---- */
static void frame_seed(const char *name, epm_status_t st, epm_buf_t *b) {
  if (st != EPM_OK) die(name);
  put("frame", name, b->data, b->len);
  epm_buf_free(b);
  memset(b, 0, sizeof *b);
}

/* One seed per sample of every (type, direction) of the protocol table, so a
 * message added to the table is seeded without touching this file. */
static void frames(void) {
  epm_buf_t b = {0};
  char name[96];
  for (uint16_t t = 1; t <= EPM_MSG_TYPE_MAX; t++)
    for (int resp = 0; resp < 2; resp++) {
      epm_body_t body = epm_msg_body(t, resp);
      epm_msg_body_t m;
      for (int v = 0; body != EPM_BODY_none && epm_sample_body(body, v, &m); v++) {
        snprintf(name, sizeof name, "%s_%s_%d", epm_msg_type_name(t), resp ? "resp" : "req", v);
        frame_seed(name, epm_msg_encode(&b, t, resp, (uint64_t)t * 2 + (uint64_t)resp, &m), &b);
      }
    }
  /* Back to back, then a frame cut short, then garbage after a good frame. */
  epm_msg_body_t fq;
  if (!epm_sample_body(EPM_BODY_fwd_req, 0, &fq)) die("forward sample");
  if (epm_msg_encode(&b, EPM_MSG_STATUS, 0, 12, &(epm_fmt_req_t){EPM_FMT_TEXT}) != EPM_OK ||
      epm_msg_encode(&b, EPM_MSG_HEALTH, 0, 13, NULL) != EPM_OK || epm_msg_encode(&b, EPM_MSG_FORWARD, 0, 14, &fq) != EPM_OK)
    die("stream");
  frame_seed("stream", EPM_OK, &b);
  if (epm_msg_encode(&b, EPM_MSG_FORWARD, 0, 15, &fq) != EPM_OK) die("truncated");
  b.len /= 2;
  frame_seed("truncated", EPM_OK, &b);
  if (epm_msg_encode(&b, EPM_MSG_HEALTH, 0, 16, NULL) != EPM_OK) die("bad magic");
  epm_buf_put(&b, "EPMX\x01\x00\x04\x00", 8);
  frame_seed("bad_magic_after", EPM_OK, &b);
}

/* ---- safetensors ---- */
static void st_raw(const char *name, const char *hdr, size_t dlen, uint64_t hlen_field) {
  size_t hl = strlen(hdr);
  uint8_t *b = calloc(8 + hl + dlen + 1, 1);
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hlen_field >> (8 * i));
  memcpy(b + 8, hdr, hl);
  for (size_t i = 0; i < dlen; i++) b[8 + hl + i] = (uint8_t)(i * 37 + 1);
  put("safetensors", name, b, 8 + hl + dlen);
  free(b);
}
#define ST(name, hdr, dlen) st_raw(name, hdr, dlen, strlen(hdr))

static void safetensors(const char *micro_file) {
  ST("all_dtypes",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]},"
     "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[32,36]},"
     "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[36,36]},"
     "\"f4\":{\"dtype\":\"F4\",\"shape\":[3,2],\"data_offsets\":[36,39]},"
     "\"sf\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,2],\"data_offsets\":[39,43]},"
     "\"r\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[43,47]},"
     "\"__metadata__\":{\"format\":\"pt\"}}  ",
     47);
  ST("overlap", "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}", 12);
  ST("gap", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
            "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}", 12);
  ST("polyglot", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 40);
  ST("duplicate", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
  ST("shape_overflow", "{\"t\":{\"dtype\":\"F64\",\"shape\":[2,1152921504606846976],\"data_offsets\":[0,4]}}", 4);
  ST("misaligned_f4", "{\"t\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2);
  ST("not_object", "[1,2,3]", 0);
  st_raw("header_too_large", "{\"t\":{}}", 0, 0xffffffffffffffffULL);
  st_raw("header_past_eof", "{\"t\":{}}", 0, 1000);
  size_t n;
  uint8_t *m = slurp(micro_file, &n);
  if (!m) die(micro_file);
  put("safetensors", "micro_expert_layer", m, n);
  /* The same file with a NaN block scale: accepted by the reader, refused
   * by the value check the target runs. */
  epm_st_file_t *f;
  if (epm_st_open_mem(m, n, "micro", &f) != EPM_OK) die("micro");
  for (size_t i = 0; i < epm_st_count(f); i++)
    if (epm_st_at(f, i)->dtype == EPM_ST_F8_E4M3) {
      m[epm_st_at(f, i)->file_offset] = 0x7f;
      break;
    }
  epm_st_close(f);
  put("safetensors", "micro_nan_scale", m, n);
  free(m);
}

/* ---- model_config ---- */
typedef struct {
  uint8_t *p;
  size_t n;
} blob_t;

static void dir_seed(const char *name, const blob_t files[EPM_FUZZ_NFILES]) {
  size_t total = 0, ml = strlen(EPM_FUZZ_FILE_MARK);
  for (int i = 0; i < EPM_FUZZ_NFILES; i++) total += files[i].n + ml;
  uint8_t *b = malloc(total), *w = b;
  int last = 0;
  for (int i = 0; i < EPM_FUZZ_NFILES; i++)
    if (files[i].n) last = i;
  for (int i = 0; i <= last; i++) {
    if (i) {
      memcpy(w, EPM_FUZZ_FILE_MARK, ml);
      w += ml;
    }
    if (files[i].n) memcpy(w, files[i].p, files[i].n);
    w += files[i].n;
  }
  put("model_config", name, b, (size_t)(w - b));
  free(b);
}

static blob_t text(const char *s) { return (blob_t){(uint8_t *)strdup(s), strlen(s)}; }

/* A micro checkpoint of dims d: its config, quant config and one file. */
static void make_micro(const char *tmp, const char *sub, const epm_model_dims_t *d, blob_t files[EPM_FUZZ_NFILES]) {
  char dir[1024], p[1100];
  snprintf(dir, sizeof dir, "%s/%s", tmp, sub);
  epm_ckpt_make_opts_t o = {.out_dir = dir, .dims = *d, .layers = 1, .seed = 7, .shard_bytes = 0, .quiet = 1};
  if (epm_ckpt_make(&o) != EPM_OK) die(dir);
  memset(files, 0, EPM_FUZZ_NFILES * sizeof *files);
  for (int i = 0; i < EPM_FUZZ_NFILES; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, epm_fuzz_files[i]);
    files[i].p = slurp(p, &files[i].n);
  }
}

static void free_files(blob_t files[EPM_FUZZ_NFILES]) {
  for (int i = 0; i < EPM_FUZZ_NFILES; i++) free(files[i].p);
}

/* files[0] with "key": value replaced (the line ckpt make writes). */
static void set_key(blob_t *cfg, const char *key, const char *value) {
  char *s = (char *)cfg->p, pat[128], *at, *end;
  snprintf(pat, sizeof pat, "\"%s\": ", key);
  if (!(at = strstr(s, pat))) die(key);
  at += strlen(pat);
  end = at + strcspn(at, ",\n}");
  size_t nl = strlen(value), tail = strlen(end);
  char *n = malloc((size_t)(at - s) + nl + tail + 1);
  memcpy(n, s, (size_t)(at - s));
  memcpy(n + (at - s), value, nl);
  memcpy(n + (at - s) + nl, end, tail + 1);
  free(cfg->p);
  cfg->p = (uint8_t *)n;
  cfg->n = strlen(n);
}

static void model_configs(const char *tmp, char *micro_file, size_t len) {
  const epm_model_dims_t ds = {"ds", 32, 16, 4, 2, 2, 1, 2.0f, EPM_ROUTING_DEEPSEEK_V3, 1, 16, 1};
  const epm_model_dims_t qw = {"qw", 32, 16, 4, 2, 1, 1, 1.0f, EPM_ROUTING_RENORMALIZE, 0, 0, 1};
  const epm_model_dims_t l4 = {"l4", 32, 16, 4, 1, 1, 1, 1.0f, EPM_ROUTING_LLAMA4, 1, 16, 1};
  blob_t f[EPM_FUZZ_NFILES];
  make_micro(tmp, "qw", &qw, f);
  dir_seed("qwen3_moe", f);
  free_files(f);
  make_micro(tmp, "l4", &l4, f);
  dir_seed("llama4", f);
  free_files(f);
  make_micro(tmp, "ds", &ds, f);
  snprintf(micro_file, len, "%s/ds/model.safetensors", tmp);
  dir_seed("deepseek_v3", f);
  /* The same with an index naming every tensor's file. */
  {
    epm_st_file_t *sf;
    if (epm_st_open_mem(f[3].p, f[3].n, "ds", &sf) != EPM_OK) die("ds");
    size_t cap = 64 + 80 * epm_st_count(sf), o = 0;
    char *idx = malloc(cap);
    o += (size_t)snprintf(idx + o, cap - o, "{\"metadata\":{},\"weight_map\":{");
    for (size_t i = 0; i < epm_st_count(sf); i++)
      o += (size_t)snprintf(idx + o, cap - o, "%s\"%s\":\"model.safetensors\"", i ? "," : "", epm_st_at(sf, i)->name);
    snprintf(idx + o, cap - o, "}}");
    epm_st_close(sf);
    blob_t g[EPM_FUZZ_NFILES] = {f[0], f[1], {(uint8_t *)idx, strlen(idx)}, f[3], {NULL, 0}};
    dir_seed("deepseek_v3_index", g);
    g[2] = text("{\"weight_map\":{\"model.layers.0.mlp.gate.weight\":\"../escape.safetensors\"}}");
    dir_seed("index_escape", g);
    free(g[2].p);
    free(idx);
  }
  /* Near-valid configs: one value past its bound or wrong each. */
  static const char *const bad[][3] = {
      {"shared_wrap", "n_shared_experts", "576460752303423489"},
      {"hidden_huge", "hidden_size", "576460752303423488"},
      {"experts_huge", "n_routed_experts", "1000000000"},
      {"experts_4096", "n_routed_experts", "4096"},
      {"topk_over", "num_experts_per_tok", "65"},
      {"groups_over", "n_group", "65"},
      {"layers_over", "num_hidden_layers", "1025"},
      {"scoring_softmax", "scoring_func", "\"softmax\""},
      {"rsf_inf", "routed_scaling_factor", "1e999"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    blob_t g[EPM_FUZZ_NFILES];
    memcpy(g, f, sizeof g);
    g[0] = text((const char *)f[0].p);
    set_key(&g[0], bad[i][1], bad[i][2]);
    dir_seed(bad[i][0], g);
    free(g[0].p);
  }
  {
    blob_t g[EPM_FUZZ_NFILES];
    memcpy(g, f, sizeof g);
    g[1] = text("{\"quantization\":{\"quant_algo\":\"NVFP4\",\"group_size\":32}}");
    dir_seed("group_size_32", g);
    free(g[1].p);
    g[1] = (blob_t){NULL, 0};
    dir_seed("no_quant_config", g);
    g[1] = f[1];
    g[0] = text("{\"model_type\":\"qwen3_moe\",\"hidden_size\":32,\"num_experts_per_tok\":2,\"num_hidden_layers\":2,"
                "\"moe_intermediate_size\":16,\"num_experts\":4,\"mlp_only_layers\":[0,5000]}");
    dir_seed("mlp_only_out_of_range", g);
    free(g[0].p);
  }
  free_files(f);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make_corpus OUTDIR\n");
    return 2;
  }
  out_root = argv[1];
  mkdir(out_root, 0755);
  char tmp[] = "/tmp/epm_make_corpus_XXXXXX", micro[1100], cmd[1200];
  if (!mkdtemp(tmp)) die("mkdtemp");
  frames();
  model_configs(tmp, micro, sizeof micro);
  safetensors(micro);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0) die("cleanup");
  printf("make_corpus: wrote %s/{frame,safetensors,model_config}\n", out_root);
  return 0;
}
