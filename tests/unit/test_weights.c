/* SPDX-License-Identifier: Apache-2.0 */
/* test_weights: checkpoint directories end to end.
 *  - a checkpoint written by epm_ckpt_make loads back bit-identical to the
 *    in-memory generator (epm_layer_generate), for EP = 1, 2, 4, 8, and the EP
 *    slices are disjoint and their union is the full EP=1 layer;
 *  - config.json round trip for the three families' naming;
 *  - bad directories (missing expert, wrong dtype, non-scalar scale, bad
 *    quant config, hostile index, E % EP) each fail with their own message;
 *  - gate/up weight_scale_2 mismatch loads with the larger value;
 *  - config.json values past their bounds (including a shared-expert count
 *    whose product with I wraps to a valid size), bad values (NaN/negative
 *    block scales, out-of-range decode scales, non-finite router), and
 *    special files (FIFO, device, directory) each refused by name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epmoe/layer.h"
#include "epmoe/nvfp4.h"
#include "epmoe/model_dir.h"
#include "epmoe/safetensors.h"
#include "epmoe/weights.h"

static char tmpdir[256];
static const uint64_t SEED = 12345;

static int setup(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/epm_wt_test_XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char *make_ckpt(const char *sub, const epm_model_dims_t *d, int64_t layers, size_t shard) {
  static char dir[512];
  snprintf(dir, sizeof dir, "%s/%s", tmpdir, sub);
  epm_ckpt_make_opts_t o = {.out_dir = dir, .dims = *d, .layers = layers, .seed = SEED, .shard_bytes = shard,
                            .quiet = 1};
  if (epm_ckpt_make(&o) != EPM_OK) fail_msg("ckpt make %s: %s", dir, epm_last_error());
  return dir;
}

static void bank_equal(const epm_expert_bank_t *a, const epm_expert_bank_t *b, int64_t a0, int64_t b0, int64_t n) {
  const size_t w = (size_t)(a->hidden * a->intermediate / 2), s = w / 8;
  assert_int_equal(a->hidden, b->hidden);
  assert_int_equal(a->intermediate, b->intermediate);
#define CMP(f, unit) assert_memory_equal(a->f + (size_t)a0 * (unit), b->f + (size_t)b0 * (unit), (size_t)n * (unit))
  CMP(gate_w, w);
  CMP(up_w, w);
  CMP(down_w, w);
  CMP(gate_sf, s);
  CMP(up_sf, s);
  CMP(down_sf, s);
  assert_memory_equal(a->gate_up_scale_2 + a0, b->gate_up_scale_2 + b0, (size_t)n * sizeof(float));
  assert_memory_equal(a->down_scale_2 + a0, b->down_scale_2 + b0, (size_t)n * sizeof(float));
#undef CMP
}

/* Everything but the routed experts, which callers compare by slice. */
static void common_equal(const epm_layer_t *a, const epm_layer_t *b) {
  const epm_model_dims_t *d = &a->dims;
  assert_int_equal(a->layer_index, b->layer_index);
  assert_true(a->input_scale == b->input_scale);
  assert_true(a->down_input_scale == b->down_input_scale);
  assert_memory_equal(a->router_w, b->router_w, (size_t)(d->num_experts * d->hidden) * sizeof(float));
  assert_int_equal(a->router_bias == NULL, b->router_bias == NULL);
  if (a->router_bias) assert_memory_equal(a->router_bias, b->router_bias, (size_t)d->num_experts * sizeof(float));
  assert_int_equal(a->shared.count, b->shared.count);
  if (a->shared.count) {
    bank_equal(&a->shared, &b->shared, 0, 0, 1);
    assert_true(a->shared_input_scale == b->shared_input_scale);
    assert_true(a->shared_down_input_scale == b->shared_down_input_scale);
  }
}

static void dims_equal(const epm_model_dims_t *a, const epm_model_dims_t *b) {
  assert_int_equal(a->hidden, b->hidden);
  assert_int_equal(a->intermediate, b->intermediate);
  assert_int_equal(a->num_experts, b->num_experts);
  assert_int_equal(a->top_k, b->top_k);
  assert_int_equal(a->n_group, b->n_group);
  assert_int_equal(a->topk_group, b->topk_group);
  assert_true(a->routed_scaling_factor == b->routed_scaling_factor);
  assert_int_equal(a->routing, b->routing);
  assert_int_equal(a->shared_experts, b->shared_experts);
  if (a->shared_experts) assert_int_equal(a->shared_intermediate, b->shared_intermediate);
}

/* Load every layer at EP 1, 2, 4, 8; compare with the generator and with
 * the EP=1 load (union of disjoint slices == full layer, byte for byte). */
static void check_round_trip(const epm_model_dims_t *d, const char *dir, int64_t layers) {
  epm_model_dir_t *md;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  dims_equal(d, epm_model_dir_dims(md));
  assert_int_equal(epm_model_dir_moe_layer_count(md), layers);
  for (int64_t L = 0; L < layers; L++) {
    epm_layer_t full, gen;
    assert_int_equal(epm_weights_load_layer(md, L, 0, 1, &full, NULL), EPM_OK);
    assert_int_equal(epm_layer_generate(d, L, SEED, 0, d->num_experts, &gen), EPM_OK);
    common_equal(&full, &gen);
    bank_equal(&full.experts, &gen.experts, 0, 0, d->num_experts);
    epm_layer_free(&gen);
    for (int ep = 2; ep <= 8; ep *= 2) {
      if (d->num_experts % ep) continue;
      int64_t covered = 0;
      for (int r = 0; r < ep; r++) {
        epm_layer_t part;
        assert_int_equal(epm_weights_load_layer(md, L, r, ep, &part, NULL), EPM_OK);
        assert_int_equal(part.slots.first_slot, covered); /* contiguous, disjoint, in rank order */
        assert_int_equal(part.experts.count, d->num_experts / ep);
        common_equal(&part, &full); /* global input scales identical on every rank */
        bank_equal(&part.experts, &full.experts, 0, part.slots.first_slot, part.experts.count);
        covered += part.experts.count;
        epm_layer_free(&part);
      }
      assert_int_equal(covered, d->num_experts);
    }
    epm_layer_free(&full);
  }
  epm_model_dir_close(md);
}

static void test_tiny_multi_file(void **state) {
  (void)state;
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("tiny", &d), EPM_OK);
  const char *dir = make_ckpt("tiny", &d, 2, 300 << 10);
  epm_model_dir_t *md;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  assert_true(epm_model_dir_file_count(md) >= 3);
  assert_int_equal(epm_model_dir_family(md), EPM_FAMILY_DEEPSEEK_V3);
  epm_model_dir_close(md);
  check_round_trip(&d, dir, 2);
}

static void test_families(void **state) {
  (void)state;
  /* Small shapes with each family's routing: qwen3 (renormalize, default),
   * llama4 (top-1, shared expert), deepseek without groups. */
  epm_model_dims_t q = {"q", 64, 32, 8, 2, 1, 1, 1.0f, EPM_ROUTING_RENORMALIZE, 0, 0, 3};
  epm_model_dims_t q2 = {"q2", 64, 32, 8, 2, 1, 1, 1.0f, EPM_ROUTING_RENORMALIZE_NAIVE, 0, 0, 1};
  epm_model_dims_t l4 = {"l4", 64, 32, 8, 1, 1, 1, 1.0f, EPM_ROUTING_LLAMA4, 1, 32, 1};
  epm_model_dims_t ds = {"ds", 32, 64, 8, 2, 1, 1, 1.5f, EPM_ROUTING_DEEPSEEK_V3, 1, 128, 1};
  check_round_trip(&q, make_ckpt("qwen", &q, 3, 0), 3);
  check_round_trip(&q2, make_ckpt("qwen2", &q2, 1, 0), 1);
  check_round_trip(&l4, make_ckpt("llama4", &l4, 1, 16 << 10), 1);
  check_round_trip(&ds, make_ckpt("ds", &ds, 1, 0), 1);
  epm_model_dir_t *md;
  char p[600];
  snprintf(p, sizeof p, "%s/qwen", tmpdir);
  assert_int_equal(epm_model_dir_open(p, &md), EPM_OK);
  assert_int_equal(epm_model_dir_family(md), EPM_FAMILY_QWEN3_MOE);
  assert_int_equal(epm_model_dir_file_count(md), 1);
  epm_model_dir_close(md);
  snprintf(p, sizeof p, "%s/llama4", tmpdir);
  assert_int_equal(epm_model_dir_open(p, &md), EPM_OK);
  assert_int_equal(epm_model_dir_family(md), EPM_FAMILY_LLAMA4);
  char name[256];
  epm_weight_name(EPM_FAMILY_LLAMA4, 0, 7, EPM_PROJ_DOWN, EPM_FIELD_WEIGHT_SCALE, name, sizeof name);
  assert_string_equal(name, "language_model.model.layers.0.feed_forward.experts.7.down_proj.weight_scale");
  const epm_st_tensor_t *t;
  assert_int_equal(epm_model_dir_tensor(md, name, &t, NULL), EPM_OK);
  epm_model_dir_close(md);
}

/* ---- mutating a single-file checkpoint ---- */
typedef struct {
  const char *drop;      /* drop tensors whose name contains this */
  const char *retype;    /* change this tensor's dtype to another of the same width */
  const char *reshape;   /* make this scalar F32 [2] */
  const char *revalue;   /* set this F32 scalar to value */
  float value;
  const char *patch;     /* overwrite bytes [patch_at, patch_at + patch_len) of this tensor */
  size_t patch_at, patch_len;
  const uint8_t *patch_bytes;
} mutate_t;

static void rewrite(const char *dir, const mutate_t *m) {
  char path[600], tmp[600];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  snprintf(tmp, sizeof tmp, "%s/model.safetensors.tmp", dir);
  epm_st_file_t *f;
  assert_int_equal(epm_st_open(path, &f), EPM_OK);
  size_t n = epm_st_count(f), k = 0;
  epm_st_spec_t *specs = calloc(n, sizeof *specs);
  const void **data = calloc(n, sizeof *data);
  size_t *len = calloc(n, sizeof *len);
  static float two[2] = {1.0f, 1.0f};
  uint8_t *patched = NULL;
  for (size_t i = 0; i < n; i++) {
    const epm_st_tensor_t *t = epm_st_at(f, i);
    if (m->drop && strstr(t->name, m->drop)) continue;
    specs[k] = (epm_st_spec_t){.name = t->name, .dtype = t->dtype, .ndim = t->ndim};
    memcpy(specs[k].shape, t->shape, sizeof t->shape);
    data[k] = t->data;
    len[k] = t->nbytes;
    if (m->retype && strcmp(t->name, m->retype) == 0)
      specs[k].dtype = epm_st_dtype_bits(t->dtype) == 16 ? EPM_ST_F16 : t->dtype == EPM_ST_U8 ? EPM_ST_I8 : EPM_ST_U8;
    if (m->reshape && strcmp(t->name, m->reshape) == 0) {
      specs[k].ndim = 1;
      specs[k].shape[0] = 2;
      data[k] = two;
      len[k] = 8;
    }
    if (m->revalue && strcmp(t->name, m->revalue) == 0) data[k] = &m->value;
    if (m->patch && strcmp(t->name, m->patch) == 0) {
      assert_true(m->patch_at + m->patch_len <= t->nbytes);
      patched = malloc(t->nbytes);
      memcpy(patched, t->data, t->nbytes);
      memcpy(patched + m->patch_at, m->patch_bytes, m->patch_len);
      data[k] = patched;
    }
    k++;
  }
  if (m->patch) assert_non_null(patched); /* the tensor exists */
  epm_st_writer_t *w;
  assert_int_equal(epm_st_writer_open(tmp, specs, k, NULL, 0, &w), EPM_OK);
  for (size_t i = 0; i < k; i++) assert_int_equal(epm_st_writer_put(w, data[i], len[i]), EPM_OK);
  assert_int_equal(epm_st_writer_close(w), EPM_OK);
  epm_st_close(f);
  assert_int_equal(rename(tmp, path), 0);
  free(specs);
  free(data);
  free(len);
  free(patched);
}

static void write_file(const char *dir, const char *name, const char *text) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *fp = fopen(p, "w");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
}

static void expect_load_fail(const char *dir, int rank, int ep, epm_status_t st, const char *msg) {
  epm_model_dir_t *md;
  epm_layer_t l;
  epm_status_t got = epm_model_dir_open(dir, &md);
  if (got == EPM_OK) {
    got = epm_weights_load_layer(md, 0, rank, ep, &l, NULL);
    if (got == EPM_OK) epm_layer_free(&l);
    epm_model_dir_close(md);
  }
  if (got != st || !strstr(epm_last_error(), msg))
    fail_msg("%s: got %s '%s', want %s containing '%s'", dir, epm_status_name(got), epm_last_error(),
             epm_status_name(st), msg);
}

static const epm_model_dims_t small = {"s", 64, 32, 8, 2, 2, 1, 2.0f, EPM_ROUTING_DEEPSEEK_V3, 1, 32, 1};

static void test_bad_checkpoints(void **state) {
  (void)state;
  const char *d;
  char dir[600];
#define FRESH(sub) (d = make_ckpt(sub, &small, 1, 0), snprintf(dir, sizeof dir, "%s", d), dir)
  rewrite(FRESH("missing"), &(mutate_t){.drop = "experts.3."});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "tensor 'model.layers.0.mlp.experts.3.gate_proj.input_scale' is missing");
  /* Ranks that do not own expert 3 fail too: the global scale needs it. */
  expect_load_fail(dir, 0, 2, EPM_ERR_FORMAT, "experts.3.");
  rewrite(FRESH("dtype"), &(mutate_t){.retype = "model.layers.0.mlp.experts.1.up_proj.weight_scale"});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT,
                   "tensor 'model.layers.0.mlp.experts.1.up_proj.weight_scale' is U8 [32, 4], expected F8_E4M3 [32, 4]");
  assert_non_null(strstr(epm_last_error(), "model.safetensors"));
  rewrite(FRESH("scalar"), &(mutate_t){.reshape = "model.layers.0.mlp.experts.2.down_proj.weight_scale_2"});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "weight_scale_2' is F32 [2], expected F32 [] (a scalar)");
  rewrite(FRESH("nan"), &(mutate_t){.revalue = "model.layers.0.mlp.experts.5.gate_proj.input_scale", .value = -1.0f});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "experts.5.gate_proj.input_scale' = -1");
  rewrite(FRESH("router"), &(mutate_t){.retype = "model.layers.0.mlp.gate.weight"});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "gate.weight' is F16 [8, 64], expected BF16 or F32 [8, 64]");
  expect_load_fail(FRESH("ep9"), 0, 9, EPM_ERR_INVALID_ARG, "8 slots (8 experts + 0 redundant) cannot give each of 9 ranks a slot");
  write_file(FRESH("gs"), "hf_quant_config.json", "{\"quantization\":{\"quant_algo\":\"NVFP4\",\"group_size\":32}}");
  expect_load_fail(dir, 0, 1, EPM_ERR_NOT_SUPPORTED, "group_size 32; NVFP4 uses 16-element blocks");
  write_file(FRESH("algo"), "hf_quant_config.json", "{\"quantization\":{\"quant_algo\":\"FP8\"}}");
  expect_load_fail(dir, 0, 1, EPM_ERR_NOT_SUPPORTED, "quant_algo \"FP8\" is not supported");
  write_file(FRESH("dupcfg"), "config.json", "{\"model_type\":\"qwen3_moe\",\"model_type\":\"llama4\"}");
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "duplicate object key");
  write_file(FRESH("mt"), "config.json", "{\"model_type\":\"mixtral\"}");
  expect_load_fail(dir, 0, 1, EPM_ERR_NOT_SUPPORTED, "model_type \"mixtral\" is not supported");
  write_file(FRESH("cfgmissing"), "config.json", "{\"model_type\":\"qwen3_moe\",\"hidden_size\":64}");
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "required key \"num_experts_per_tok\" is missing");
  write_file(FRESH("layers"), "config.json",
             "{\"model_type\":\"qwen3_moe\",\"hidden_size\":64,\"num_experts_per_tok\":2,"
             "\"num_hidden_layers\":9000000000000,\"moe_intermediate_size\":32,\"num_experts\":8}");
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "\"num_hidden_layers\" = 9000000000000 exceeds the limit 1024");
  write_file(FRESH("idx"), "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../../etc/passwd\"}}");
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "weight_map file name \"../../etc/passwd\" is not a plain file name");
  write_file(FRESH("idx2"), "model.safetensors.index.json",
             "{\"weight_map\":{\"model.layers.0.mlp.gate.weight\":\"model.safetensors\"}}");
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "experts.0.gate_proj.input_scale' is missing from");
  write_file(FRESH("idx3"), "model.safetensors.index.json",
             "{\"weight_map\":{\"model.layers.0.mlp.experts.0.gate_proj.input_scale\":\"model.safetensors\","
             "\"nothere\":\"model.safetensors\"}}");
  epm_model_dir_t *md;
  const epm_st_tensor_t *t;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  assert_int_equal(epm_model_dir_tensor(md, "nothere", &t, NULL), EPM_ERR_FORMAT);
  assert_non_null(strstr(epm_last_error(), "tensor 'nothere' is listed in the weight map but missing from the file"));
  epm_layer_t l;
  assert_int_equal(epm_weights_load_layer(md, 5, 0, 1, &l, NULL), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "layer 5 is not a MoE layer"));
  epm_model_dir_close(md);
  unlink(strcat(FRESH("nomodel"), "/model.safetensors"));
  dir[strlen(dir) - strlen("/model.safetensors")] = '\0';
  expect_load_fail(dir, 0, 1, EPM_ERR_IO, "model.safetensors: open");
#undef FRESH
}

static void test_scale_2_mismatch_uses_max(void **state) {
  (void)state;
  const char *d = make_ckpt("mism", &small, 1, 0);
  char dir[600];
  snprintf(dir, sizeof dir, "%s", d);
  rewrite(dir, &(mutate_t){.revalue = "model.layers.0.mlp.experts.4.up_proj.weight_scale_2", .value = 1e3f});
  epm_model_dir_t *md;
  epm_layer_t l;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  assert_int_equal(epm_weights_load_layer(md, 0, 1, 2, &l, NULL), EPM_OK); /* experts 4..7 */
  assert_true(l.experts.gate_up_scale_2[0] == 1e3f);
  assert_true(l.experts.gate_up_scale_2[1] < 1.0f);
  epm_layer_free(&l);
  epm_model_dir_close(md);
}

/* Every single-byte corruption of config.json, hf_quant_config.json and the
 * index either opens or fails cleanly (ASan watches); a load after a
 * successful open must also finish one way or the other. */
static void flip_each_byte(const char *dir, const char *file, size_t stride) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  FILE *fp = fopen(p, "rb");
  assert_non_null(fp);
  char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, fp);
  fclose(fp);
  assert_true(n > 0 && n < sizeof buf);
  for (size_t i = 0; i < n; i += stride) {
    char save = buf[i];
    buf[i] = (char)(buf[i] ^ 0x21);
    fp = fopen(p, "wb");
    fwrite(buf, 1, n, fp);
    fclose(fp);
    epm_model_dir_t *md;
    if (epm_model_dir_open(dir, &md) == EPM_OK) {
      epm_layer_t l;
      if (epm_model_dir_moe_layer_count(md) > 0 &&
          epm_weights_load_layer(md, epm_model_dir_moe_layer(md, 0), 0, 1, &l, NULL) == EPM_OK)
        epm_layer_free(&l);
      epm_model_dir_close(md);
    }
    buf[i] = save;
  }
  fp = fopen(p, "wb");
  fwrite(buf, 1, n, fp);
  fclose(fp);
}

static void test_corrupt_json_files(void **state) {
  (void)state;
  epm_model_dims_t d = small;
  const char *dir = make_ckpt("flips", &d, 1, 12 << 10);
  char keep[600];
  snprintf(keep, sizeof keep, "%s", dir);
  flip_each_byte(keep, "config.json", 2);
  flip_each_byte(keep, "hf_quant_config.json", 1);
  flip_each_byte(keep, "model.safetensors.index.json", 17);
  epm_model_dir_t *md;
  assert_int_equal(epm_model_dir_open(keep, &md), EPM_OK); /* restored intact */
  epm_model_dir_close(md);
}


/* ---- config.json bounds ---- */

/* config.json of dir with key set to an integer (or removed if v < 0). */
static void set_config_int(const char *dir, const char *key, json_int_t v) {
  char p[600];
  snprintf(p, sizeof p, "%s/config.json", dir);
  json_t *c = json_load_file(p, 0, NULL);
  assert_non_null(c);
  if (v < 0)
    json_object_del(c, key);
  else
    json_object_set_new(c, key, json_integer(v));
  assert_int_equal(json_dump_file(c, p, JSON_INDENT(1)), 0);
  json_decref(c);
}

static void expect_open_fail(const char *dir, epm_status_t st, const char *msg) {
  epm_model_dir_t *md = (epm_model_dir_t *)0x1;
  epm_status_t got = epm_model_dir_open(dir, &md);
  if (got != st || !strstr(epm_last_error(), msg))
    fail_msg("%s: got %s '%s', want %s containing '%s'", dir, epm_status_name(got), epm_last_error(),
             epm_status_name(st), msg);
  assert_null(md);
}

static void test_config_bounds(void **state) {
  (void)state;
  static const struct {
    const char *key;
    json_int_t v;
    const char *msg;
  } cases[] = {
      /* 32 x (2^59 + 1) wraps to 32 in 64 bits: a valid-looking shared expert. */
      {"n_shared_experts", (json_int_t)((INT64_C(1) << 59) + 1), "\"n_shared_experts\" = 576460752303423489 exceeds the limit 16"},
      {"n_shared_experts", 17, "\"n_shared_experts\" = 17 exceeds the limit 16"},
      {"hidden_size", (json_int_t)(INT64_C(1) << 59), "\"hidden_size\" = 576460752303423488 exceeds the limit 65536"},
      {"hidden_size", 65536 + 16, "\"hidden_size\" = 65552 exceeds the limit 65536"},
      {"moe_intermediate_size", 131072 + 16, "\"moe_intermediate_size\" = 131088 exceeds the limit 131072"},
      {"n_routed_experts", 1000000000, "\"n_routed_experts\" = 1000000000 exceeds the limit 4096"},
      {"num_experts_per_tok", 65, "\"num_experts_per_tok\" = 65 exceeds the limit 64"},
      {"n_group", 65, "\"n_group\" = 65 exceeds the limit 64"},
      {"topk_group", 65, "\"topk_group\" = 65 exceeds the limit 64"},
      {"num_hidden_layers", 1025, "\"num_hidden_layers\" = 1025 exceeds the limit 1024"},
      {"first_k_dense_replace", 1025, "\"first_k_dense_replace\" = 1025 exceeds the limit 1024"},
      {"moe_layer_freq", 1025, "\"moe_layer_freq\" = 1025 exceeds the limit 1024"},
  };
  char dir[600];
  snprintf(dir, sizeof dir, "%s", make_ckpt("bounds", &small, 1, 0));
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    set_config_int(dir, cases[i].key, cases[i].v);
    expect_open_fail(dir, EPM_ERR_FORMAT, cases[i].msg);
    assert_non_null(strstr(epm_last_error(), "config.json"));
    set_config_int(dir, cases[i].key, -1); /* every key above is optional or restored below */
    if (strcmp(cases[i].key, "hidden_size") == 0) set_config_int(dir, "hidden_size", small.hidden);
    if (strcmp(cases[i].key, "moe_intermediate_size") == 0) set_config_int(dir, "moe_intermediate_size", small.intermediate);
    if (strcmp(cases[i].key, "n_routed_experts") == 0) set_config_int(dir, "n_routed_experts", small.num_experts);
    if (strcmp(cases[i].key, "num_experts_per_tok") == 0) set_config_int(dir, "num_experts_per_tok", small.top_k);
    if (strcmp(cases[i].key, "num_hidden_layers") == 0) set_config_int(dir, "num_hidden_layers", 1);
    if (strcmp(cases[i].key, "n_group") == 0) set_config_int(dir, "n_group", small.n_group);
    if (strcmp(cases[i].key, "n_shared_experts") == 0) set_config_int(dir, "n_shared_experts", 1);
  }
  /* Exactly at a bound is accepted (the limit is inclusive). */
  set_config_int(dir, "moe_layer_freq", 1024);
  epm_model_dir_t *md;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  assert_int_equal(epm_model_dims_validate(epm_model_dir_dims(md)), EPM_OK);
  assert_int_equal(epm_model_dir_dims(md)->shared_intermediate, small.intermediate);
  epm_model_dir_close(md);
  /* n_shared_experts x moe_intermediate_size over the intermediate bound. */
  set_config_int(dir, "moe_intermediate_size", 16384);
  set_config_int(dir, "n_shared_experts", 16);
  expect_open_fail(dir, EPM_ERR_FORMAT,
                   "shared expert intermediate = moe_intermediate_size 16384 x n_shared_experts 16 exceeds the limit "
                   "131072");
  /* Layer-index arrays must name layers of the model. */
  write_file(dir, "config.json",
             "{\"model_type\":\"qwen3_moe\",\"hidden_size\":64,\"num_experts_per_tok\":2,\"num_hidden_layers\":2,"
             "\"moe_intermediate_size\":32,\"num_experts\":8,\"mlp_only_layers\":[0,5000]}");
  expect_open_fail(dir, EPM_ERR_FORMAT, "\"mlp_only_layers\"[1] = 5000 is not a layer index below num_hidden_layers = 2");
  write_file(dir, "config.json",
             "{\"model_type\":\"llama4\",\"text_config\":{\"hidden_size\":64,\"num_experts_per_tok\":1,"
             "\"num_hidden_layers\":4,\"intermediate_size\":32,\"num_local_experts\":8,\"moe_layers\":[1,-3]}}");
  expect_open_fail(dir, EPM_ERR_FORMAT, "\"moe_layers\"[1] = -3 is not a layer index below num_hidden_layers = 4");
}

/* A config within every bound but far larger than the files: the load fails
 * on the first missing tensor, before allocating what config.json claims
 * (16 TB per expert array here). */
static void test_check_before_alloc(void **state) {
  (void)state;
  char dir[600];
  snprintf(dir, sizeof dir, "%s", make_ckpt("huge", &small, 1, 0));
  set_config_int(dir, "hidden_size", EPM_CKPT_MAX_HIDDEN);
  set_config_int(dir, "moe_intermediate_size", EPM_CKPT_MAX_INTERMEDIATE);
  set_config_int(dir, "n_routed_experts", EPM_CKPT_MAX_EXPERTS);
  set_config_int(dir, "n_group", 8);
  set_config_int(dir, "topk_group", 4);
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "tensor 'model.layers.0.mlp.experts.8.gate_proj.input_scale' is missing");
  /* Every scale present but the shapes too small for the config: named. */
  set_config_int(dir, "n_routed_experts", small.num_experts);
  set_config_int(dir, "n_group", small.n_group);
  set_config_int(dir, "topk_group", small.topk_group);
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "experts.0.gate_proj.weight' is U8 [32, 32], expected U8 [131072, 32768]");
}

/* ---- values ---- */

static void test_check_functions(void **state) {
  (void)state;
  /* Block scales: exactly the finite, non-negative E4M3 codes (decoded by
   * the codec, not by the check) pass; -0 is refused with the negatives. */
  for (int b = 0; b < 256; b++) {
    const uint8_t v = (uint8_t)b;
    const float f = epm_e4m3_to_f32(v);
    const int good = isfinite(f) && !signbit(f);
    epm_status_t st = epm_check_block_scales("f", "t", &v, 1, 1);
    if ((st == EPM_OK) != good) fail_msg("byte 0x%02x (%g): got %s", b, (double)f, epm_status_name(st));
  }
  uint8_t sf[3][5];
  memset(sf, 0x38, sizeof sf);
  sf[2][3] = 0x7f;
  sf[2][4] = 0xc0;
  assert_int_equal(epm_check_block_scales("f.safetensors", "w.weight_scale", &sf[0][0], 3, 5), EPM_ERR_FORMAT);
  assert_string_equal(epm_last_error(),
                      "f.safetensors: tensor 'w.weight_scale': block scale [2, 3] is 0x7f (NaN, nan); E4M3 block "
                      "scales must be 0x00..0x7e (finite, >= 0); 2 of 15 are bad");
  sf[2][3] = 0x38;
  assert_int_equal(epm_check_block_scales("f", "w", &sf[0][0], 3, 5), EPM_ERR_FORMAT);
  assert_non_null(strstr(epm_last_error(), "block scale [2, 4] is 0xc0 (negative, -2)"));
  /* Decode scales: the stated range, and that it means what it says. */
  assert_true(isfinite(1.0f / EPM_DECODE_SCALE_MIN));
  assert_true(isfinite(6.0f * 448.0f * EPM_DECODE_SCALE_MAX));
  assert_true(EPM_DECODE_SCALE_MIN == FLT_MIN);
  const float ok[] = {EPM_DECODE_SCALE_MIN, 1e-3f, 1.0f, EPM_DECODE_SCALE_MAX};
  const float bad[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, -1.0f, nextafterf(FLT_MIN, 0.0f), 1e-40f,
                       nextafterf(EPM_DECODE_SCALE_MAX, INFINITY), FLT_MAX};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) assert_int_equal(epm_check_decode_scale("f", "s", ok[i]), EPM_OK);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(epm_check_decode_scale("f", "x.input_scale", bad[i]), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "f: tensor 'x.input_scale' = "));
  }
  /* Finite: F32 and BF16, index in the tensor's shape. */
  float w[6] = {1, 2, 3, 4, 5, NAN};
  epm_st_tensor_t t = {.name = "r", .dtype = EPM_ST_F32, .ndim = 2, .shape = {2, 3}, .numel = 6,
                       .data = (const uint8_t *)w, .nbytes = sizeof w};
  assert_int_equal(epm_check_finite("f", &t), EPM_ERR_FORMAT);
  assert_string_equal(epm_last_error(), "f: tensor 'r': element [1, 2] is nan; 1 of 6 elements are not finite");
  w[5] = 6;
  assert_int_equal(epm_check_finite("f", &t), EPM_OK);
  const uint8_t bf[8] = {0x80, 0x3f, 0x80, 0x7f, 0x80, 0xff, 0x00, 0x40}; /* 1, inf, -inf, 2 */
  t = (epm_st_tensor_t){.name = "b", .dtype = EPM_ST_BF16, .ndim = 1, .shape = {4}, .numel = 4, .data = bf, .nbytes = 8};
  assert_int_equal(epm_check_finite("f", &t), EPM_ERR_FORMAT);
  assert_string_equal(epm_last_error(), "f: tensor 'b': element [1] is inf; 2 of 4 elements are not finite");
}

static void test_bad_values(void **state) {
  (void)state;
  const char *d;
  char dir[600], sub[32];
#define FRESH(sub) (d = make_ckpt(sub, &small, 1, 0), snprintf(dir, sizeof dir, "%s", d), dir)
  static const uint8_t nan7f = 0x7f, nanff = 0xff, neg1 = 0xb8, negz = 0x80;
  static const struct {
    const char *tensor;
    size_t at;
    const uint8_t *byte;
    const char *msg;
  } sfc[] = {
      /* up_proj scales are [32, 4]: byte 13 is [3, 1]. */
      {"model.layers.0.mlp.experts.2.up_proj.weight_scale", 13, &nan7f, "experts.2.up_proj.weight_scale': block scale [3, 1] is 0x7f (NaN"},
      {"model.layers.0.mlp.experts.0.gate_proj.weight_scale", 0, &nanff, "block scale [0, 0] is 0xff (NaN"},
      {"model.layers.0.mlp.experts.3.down_proj.weight_scale", 9, &neg1, "experts.3.down_proj.weight_scale': block scale [4, 1] is 0xb8 (negative, -1)"},
      {"model.layers.0.mlp.shared_experts.down_proj.weight_scale", 0, &negz, "shared_experts.down_proj.weight_scale': block scale [0, 0] is 0x80 (negative, -0)"},
  };
  for (size_t i = 0; i < sizeof sfc / sizeof sfc[0]; i++) {
    snprintf(sub, sizeof sub, "sf%zu", i);
    rewrite(FRESH(sub), &(mutate_t){.patch = sfc[i].tensor, .patch_at = sfc[i].at, .patch_len = 1, .patch_bytes = sfc[i].byte});
    expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, sfc[i].msg);
    assert_non_null(strstr(epm_last_error(), "model.safetensors"));
  }
  /* Expert 2's bad scale is not in rank 1 of 2's slice (experts 4..7). */
  rewrite(FRESH("sf_rank"), &(mutate_t){.patch = sfc[0].tensor, .patch_at = 13, .patch_len = 1, .patch_bytes = &nan7f});
  epm_model_dir_t *md;
  epm_layer_t l;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  assert_int_equal(epm_weights_load_layer(md, 0, 1, 2, &l, NULL), EPM_OK);
  epm_layer_free(&l);
  assert_int_equal(epm_weights_load_layer(md, 0, 0, 2, &l, NULL), EPM_ERR_FORMAT);
  epm_model_dir_close(md);
  /* Decode scales outside [FLT_MIN, FLT_MAX / 2688]; rank 1 of 2 loads expert
   * 6, and every rank reads every expert's input_scale. */
  static const struct {
    const char *tensor;
    float v;
    const char *msg;
  } sc[] = {
      {"model.layers.0.mlp.experts.6.up_proj.weight_scale_2", INFINITY, "experts.6.up_proj.weight_scale_2' = inf"},
      {"model.layers.0.mlp.experts.6.up_proj.weight_scale_2", NAN, "weight_scale_2' = nan"},
      {"model.layers.0.mlp.experts.1.down_proj.input_scale", 0.0f, "experts.1.down_proj.input_scale' = 0;"},
      {"model.layers.0.mlp.experts.7.gate_proj.input_scale", 1e-40f, "experts.7.gate_proj.input_scale' = 9.99995e-41"},
      {"model.layers.0.mlp.experts.7.gate_proj.input_scale", 1e36f, "experts.7.gate_proj.input_scale' = 1e+36"},
      {"model.layers.0.mlp.shared_experts.up_proj.input_scale", -2.0f, "shared_experts.up_proj.input_scale' = -2"},
  };
  for (size_t i = 0; i < sizeof sc / sizeof sc[0]; i++) {
    snprintf(sub, sizeof sub, "sc%zu", i);
    rewrite(FRESH(sub), &(mutate_t){.revalue = sc[i].tensor, .value = sc[i].v});
    expect_load_fail(dir, 1, 2, EPM_ERR_FORMAT, sc[i].msg);
    assert_non_null(strstr(epm_last_error(), "a decode scale must be finite and in ["));
  }
  /* Router: Inf bias, NaN bf16 weight, named with the index. */
  static const uint8_t inf32[4] = {0x00, 0x00, 0x80, 0x7f}, nanbf[2] = {0xc0, 0x7f};
  rewrite(FRESH("bias"), &(mutate_t){.patch = "model.layers.0.mlp.gate.e_score_correction_bias", .patch_at = 20,
                                     .patch_len = 4, .patch_bytes = inf32});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT,
                   "e_score_correction_bias': element [5] is inf; 1 of 8 elements are not finite");
  rewrite(FRESH("rw"), &(mutate_t){.patch = "model.layers.0.mlp.gate.weight", .patch_at = 2 * (2 * 64 + 7),
                                   .patch_len = 2, .patch_bytes = nanbf});
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "gate.weight': element [2, 7] is nan");
#undef FRESH
}

/* ---- special files ---- */

static void replace_with(const char *dir, const char *name, const char *kind) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  assert_int_equal(unlink(p), 0);
  if (strcmp(kind, "fifo") == 0) assert_int_equal(mkfifo(p, 0600), 0);
  if (strcmp(kind, "dir") == 0) assert_int_equal(mkdir(p, 0700), 0);
  if (strcmp(kind, "dev") == 0) assert_int_equal(symlink("/dev/zero", p), 0);
}

static void test_special_files(void **state) {
  (void)state;
  /* Opening a FIFO for reading blocks until a writer comes; if the loader
   * ever does, the alarm kills the test instead of hanging it. */
  alarm(60);
  const char *d;
  char dir[600], sub[32];
#define FRESH(sub, shard) (d = make_ckpt(sub, &small, 1, shard), snprintf(dir, sizeof dir, "%s", d), dir)
  static const struct {
    const char *file, *kind, *msg;
  } cases[] = {
      {"config.json", "fifo", "config.json: is a FIFO, not a regular file: refused"},
      {"hf_quant_config.json", "fifo", "hf_quant_config.json: is a FIFO, not a regular file: refused"},
      {"model.safetensors", "fifo", "model.safetensors: is a FIFO, not a regular file: refused"},
      {"model.safetensors", "dev", "model.safetensors: is a character device, not a regular file: refused"},
      {"config.json", "dir", "config.json: is a directory, not a regular file: refused"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(sub, sizeof sub, "special%zu", i);
    replace_with(FRESH(sub, 0), cases[i].file, cases[i].kind);
    expect_open_fail(dir, EPM_ERR_IO, cases[i].msg);
  }
  /* A FIFO in place of a shard: opened lazily, refused at the lookup. */
  FRESH("fifo_shard", 12 << 10);
  char shard[256];
  epm_model_dir_t *md;
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  assert_true(epm_model_dir_file_count(md) >= 2);
  snprintf(shard, sizeof shard, "%s", epm_model_dir_file_name(md, 1));
  epm_model_dir_close(md);
  replace_with(dir, shard, "fifo");
  expect_load_fail(dir, 0, 1, EPM_ERR_IO, "is a FIFO, not a regular file: refused");
  assert_non_null(strstr(epm_last_error(), shard));
  replace_with(dir, "model.safetensors.index.json", "fifo");
  expect_open_fail(dir, EPM_ERR_IO, "model.safetensors.index.json: is a FIFO, not a regular file: refused");
  /* A symlink to a regular file is fine (Hugging Face caches are symlinks). */
  FRESH("link", 0);
  char from[700], to[700];
  snprintf(from, sizeof from, "%s/model.safetensors", dir);
  snprintf(to, sizeof to, "%s/blob", dir);
  assert_int_equal(rename(from, to), 0);
  assert_int_equal(symlink("blob", from), 0);
  assert_int_equal(epm_model_dir_open(dir, &md), EPM_OK);
  epm_model_dir_close(md);
  alarm(0);
#undef FRESH
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tiny_multi_file),
      cmocka_unit_test(test_families),
      cmocka_unit_test(test_bad_checkpoints),
      cmocka_unit_test(test_scale_2_mismatch_uses_max),
      cmocka_unit_test(test_corrupt_json_files),
      cmocka_unit_test(test_config_bounds),
      cmocka_unit_test(test_check_before_alloc),
      cmocka_unit_test(test_check_functions),
      cmocka_unit_test(test_bad_values),
      cmocka_unit_test(test_special_files),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
