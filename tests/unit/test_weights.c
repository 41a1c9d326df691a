/* test_weights: checkpoint directories end to end.
 *  - a checkpoint written by epm_ckpt_make loads back bit-identical to the
 *    in-memory generator (epm_layer_generate), for EP = 1, 2, 4, 8, and the EP
 *    slices are disjoint and their union is the full EP=1 layer;
 *  - config.json round trip for the three families' naming;
 *  - bad directories (missing expert, wrong dtype, non-scalar scale, bad
 *    quant config, hostile index, E % EP) each fail with their own message;
 *  - gate/up weight_scale_2 mismatch loads with the larger value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/layer.h"
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
    k++;
  }
  epm_st_writer_t *w;
  assert_int_equal(epm_st_writer_open(tmp, specs, k, NULL, 0, &w), EPM_OK);
  for (size_t i = 0; i < k; i++) assert_int_equal(epm_st_writer_put(w, data[i], len[i]), EPM_OK);
  assert_int_equal(epm_st_writer_close(w), EPM_OK);
  epm_st_close(f);
  assert_int_equal(rename(tmp, path), 0);
  free(specs);
  free(data);
  free(len);
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
  expect_load_fail(dir, 0, 1, EPM_ERR_FORMAT, "num_hidden_layers = 9000000000000 exceeds the limit 100000");
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tiny_multi_file),
      cmocka_unit_test(test_families),
      cmocka_unit_test(test_bad_checkpoints),
      cmocka_unit_test(test_scale_2_mismatch_uses_max),
      cmocka_unit_test(test_corrupt_json_files),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
