/* SPDX-License-Identifier: Apache-2.0 */
/* test_plan: shape planning (epmoe/plan.h) at the sizes that broke FlashInfer.
 *
 * Expected numbers are independent of plan.c: literals worked out by hand
 * (comments show the arithmetic), plain products of the test's own inputs, or
 * a brute-force search (the padded-row bound). Runs in the UBSan build, where
 * any signed overflow inside the planner aborts the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "epmoe/nvfp4.h"
#include "epmoe/kernels.h" /* epm_plan_local_rows_bound */
#include "epmoe/plan.h"

static epm_plan_config_t preset_cfg(const char *preset, int64_t ep, int64_t tokens) {
  epm_plan_config_t c;
  memset(&c, 0, sizeof c);
  assert_int_equal(epm_model_preset(preset, &c.dims), EPM_OK);
  c.ep_size = ep;
  c.max_tokens_per_rank = tokens;
  return c;
}

static epm_plan_t plan_ok(const epm_plan_config_t *c) {
  epm_plan_t p;
  epm_status_t st = epm_plan_compute(c, &p);
  if (st != EPM_OK) fail_msg("epm_plan_compute: %s", epm_last_error());
  return p;
}

static void expect_error(const epm_plan_config_t *c, epm_status_t want, const char *needle) {
  epm_plan_t p;
  memset(&p, 0xA5, sizeof p);
  assert_int_equal(epm_plan_compute(c, &p), want);
  if (!strstr(epm_last_error(), needle))
    fail_msg("message '%s' lacks '%s'", epm_last_error(), needle);
  unsigned char *b = (unsigned char *)&p; /* out untouched on failure */
  for (size_t i = 0; i < sizeof p; i++) assert_int_equal(b[i], 0xA5);
}

/* The seed's boundary table: EP32 DeepSeek-R1 (H 7168). FlashInfer crashed
 * from 9,370 tokens per rank (M*H > 2^31-1); here all succeed and only the
 * informational int32 flag moves. */
static void test_seed_boundary_table(void **state) {
  (void)state;
  const struct {
    int64_t per_rank, gathered, scale_numel;
    int over_int32;
  } rows[] = {
      /* M = 32 x t; scale numel = M x 7168 / 16 = M x 448 */
      {9360, 299520, 134184960, 0},  /* M*H = 2,146,959,360 <= 2,147,483,647 */
      {9370, 299840, 134328320, 1},  /* M*H = 2,149,253,120 */
      {8192, 262144, 117440512, 0},  /* M*H = 1,879,048,192 */
      {10240, 327680, 146800640, 1}, /* M*H = 2,348,810,240: the seed */
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    epm_plan_config_t c = preset_cfg("deepseek-r1", 32, rows[i].per_rank);
    epm_plan_t p = plan_ok(&c);
    assert_int_equal(p.tokens_gathered, rows[i].gathered);
    assert_int_equal(p.tokens_local, rows[i].per_rank);
    assert_int_equal(p.local_experts, 8);
    assert_int_equal(p.xsf_gathered.elements, rows[i].scale_numel);
    assert_int_equal(p.xsf_gathered.bytes, (size_t)rows[i].scale_numel);
    assert_int_equal(p.xq_gathered.bytes, (size_t)rows[i].gathered * 3584);
    assert_int_equal(p.partial_y.elements, rows[i].gathered * 7168);
    assert_int_equal(p.partial_y.bytes, (size_t)rows[i].gathered * 7168 * 2);
    assert_int_equal(p.y_local.bytes, (size_t)rows[i].per_rank * 7168 * 2);
    assert_int_equal(p.topk_ids_gathered.bytes, (size_t)rows[i].gathered * 8 * 4);
    epm_plan_buffer_info_t b;
    assert_int_equal(epm_plan_buffer_by_name(&p, "partial_y", &b), EPM_OK);
    assert_int_equal(b.int32_elements, rows[i].over_int32);
    assert_int_equal(b.int32_bytes, 1); /* 2 bytes per element: all four > 2^31 bytes */
    assert_int_equal(p.violations, 0);
    assert_int_equal(p.chunks, 1);
    assert_int_equal(epm_plan_check_scale_numel(rows[i].gathered, 7168, rows[i].scale_numel),
                     EPM_OK);
    assert_int_equal(epm_plan_check_packed_numel(rows[i].gathered, 7168, rows[i].gathered * 3584),
                     EPM_OK);
  }
}

/* The seed's numbers at EP32 x 10240: worst-case expert rows and limits. */
static void test_seed_expert_stage(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 32, 10240);
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(p.expanded_pairs, 2621440);      /* 327680 x 8 */
  assert_int_equal(p.local_pairs_max, 2621440);     /* min(8, E_l 8) = 8 per token */
  assert_int_equal(p.local_pairs_uniform, 81920);   /* 2621440 / 32 */
  assert_int_equal(p.gemm_m_tiles_max, 20487);      /* 8 + floor((2621440 - 8) / 128) */
  assert_int_equal(p.permuted_rows_max, 2622336);   /* 20487 x 128 */
  assert_int_equal(p.gemm1_out.bytes, (size_t)2622336 * 4096 * 2);
  assert_int_equal(p.gemm2_out.bytes, (size_t)2622336 * 7168 * 2);
  assert_int_equal(p.inter_q.bytes, (size_t)2622336 * 1024);
  assert_int_equal(p.inter_sf.bytes, (size_t)2622336 * 128);
  assert_int_equal(p.expert_offset, 0);
  c.rank = 31;
  p = plan_ok(&c);
  assert_int_equal(p.expert_offset, 248);
}

/* M*H across 2^31 at element level with EP1 (spec §7 (a): 299,593 / 299,594),
 * across 2^32, and non-uniform per-rank counts including idle ranks. */
static void test_mh_beyond_2_31_and_2_32(void **state) {
  (void)state;
  epm_plan_buffer_info_t b;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 1, 299593);
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(p.partial_y.elements, INT64_C(2147482624)); /* 299593 x 7168 */
  assert_int_equal(epm_plan_buffer_by_name(&p, "partial_y", &b), EPM_OK);
  assert_false(b.int32_elements);
  c.max_tokens_per_rank = 299594;
  p = plan_ok(&c);
  assert_int_equal(p.partial_y.elements, INT64_C(2147489792));
  assert_int_equal(epm_plan_buffer_by_name(&p, "partial_y", &b), EPM_OK);
  assert_true(b.int32_elements);
  assert_int_equal(p.xsf_gathered.bytes, (size_t)134218112); /* 2147489792 / 16 */

  c.max_tokens_per_rank = 600000; /* M*H = 4,300,800,000 > 2^32 */
  p = plan_ok(&c);
  assert_int_equal(p.partial_y.elements, INT64_C(4300800000));
  assert_int_equal(p.partial_y.bytes, (size_t)8601600000ULL);
  assert_int_equal(p.xq_gathered.bytes, (size_t)2150400000ULL);
  assert_int_equal(p.xsf_gathered.bytes, (size_t)268800000ULL);
  assert_int_equal(epm_plan_check_scale_numel(600000, 7168, 268800000), EPM_OK);

  /* Four ranks, one idle, one with a dummy token: M = 299,594 again. */
  int64_t counts[4] = {0, 1, 299592, 1};
  c = preset_cfg("deepseek-r1", 4, 0);
  c.tokens_per_rank = counts;
  p = plan_ok(&c);
  assert_int_equal(p.tokens_gathered, 299594);
  assert_int_equal(p.tokens_max, 299592);
  assert_int_equal(p.tokens_local, 0);
  assert_int_equal(p.x_local.bytes, 0);
  assert_int_equal(p.xsf_local_swz.bytes, 0);
  assert_int_equal(p.y_local.bytes, 0);
  assert_int_equal(p.shared_out.bytes, 0);
  assert_int_equal(p.partial_y.elements, INT64_C(2147489792));
  assert_null(p.config.tokens_per_rank); /* the plan keeps no caller pointer */
  c.rank = 1;
  p = plan_ok(&c);
  assert_int_equal(p.tokens_local, 1);
  assert_int_equal(p.xsf_local.bytes, 448);
  assert_int_equal(p.xsf_local_swz.bytes, 128 * 448); /* one row padded to 128; 448 % 4 == 0 */
  assert_int_equal(p.expert_offset, 64);
}

/* E_l x 2I x H (gate+up weights of the local experts) across 2^31. */
static void test_weights_beyond_2_31(void **state) {
  (void)state;
  epm_plan_buffer_info_t b;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 1, 1);
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(p.w13_q.elements, INT64_C(7516192768)); /* 256 x 4096 x 7168 */
  assert_int_equal(p.w13_q.bytes, (size_t)3758096384ULL);
  assert_int_equal(epm_plan_buffer_by_name(&p, "w13_q", &b), EPM_OK);
  assert_true(b.int32_elements);
  assert_true(b.int32_bytes);
  c.ep_size = 4; /* 64 x 4096 x 7168 = 1,879,048,192 */
  p = plan_ok(&c);
  assert_int_equal(p.w13_q.elements, INT64_C(1879048192));
  assert_int_equal(epm_plan_buffer_by_name(&p, "w13_q", &b), EPM_OK);
  assert_false(b.int32_elements);
  /* EP32: the DESIGN number, 3 x 7168 x 2048 x (0.5 + 1/16) = 24,772,608 B
   * per expert (no padding at these dims), 8 local experts. */
  c.ep_size = 32;
  p = plan_ok(&c);
  size_t routed = p.w13_q.bytes + p.w13_sf.bytes + p.w2_q.bytes + p.w2_sf.bytes;
  assert_int_equal(routed, (size_t)8 * 24772608);
  size_t shared = p.shared_w13_q.bytes + p.shared_w13_sf.bytes + p.shared_w2_q.bytes +
                  p.shared_w2_sf.bytes;
  assert_int_equal(shared, (size_t)24772608);
  assert_int_equal(p.expert_scalars.bytes, 8 * 3 * 4);
  assert_int_equal(p.routing_bias.bytes, 256 * 4);
  /* Padding shows up when dims are not multiples of 128 / 64: tiny has
   * 2I = 256 rows (no row padding) but I/16 = 8, H/16 = 16 (no col padding);
   * with I = 144: 2I = 288 -> 384 rows, I/16 = 9 -> 12 cols. */
  c = preset_cfg("tiny", 2, 5);
  c.dims.intermediate = 144;
  p = plan_ok(&c);
  assert_int_equal(p.w13_sf.rows, 8 * 384);
  assert_int_equal(p.w13_sf.cols, 16);
  assert_int_equal(p.w2_sf.rows, 8 * 256);
  assert_int_equal(p.w2_sf.cols, 12);
  assert_int_equal(p.w2_sf.bytes, 8 * 256 * 12);
  assert_int_equal(p.inter_sf.cols, 12);
  assert_int_equal(p.w13_q.bytes, 8 * 288 * 256 / 2);
  /* qwen3 has no shared expert and no bias. */
  c = preset_cfg("qwen3-235b", 8, 100);
  p = plan_ok(&c);
  assert_int_equal(p.shared_w13_q.bytes + p.shared_w2_sf.bytes + p.shared_scalars.bytes, 0);
  assert_int_equal(p.shared_gemm1_out.bytes + p.shared_out.bytes + p.shared_inter_sf.bytes, 0);
  assert_int_equal(p.routing_bias.bytes, 0);
}

static void test_int64_overflow(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 1, INT64_MAX / 4);
  expect_error(&c, EPM_ERR_OVERFLOW, "overflows int64"); /* M x k */
  c = preset_cfg("deepseek-r1", 32, INT64_MAX / 16);
  expect_error(&c, EPM_ERR_OVERFLOW, "x 576460752303423487 overflows int64");
  int64_t counts[2] = {INT64_MAX, 1};
  c = preset_cfg("tiny", 2, 0);
  c.tokens_per_rank = counts;
  expect_error(&c, EPM_ERR_OVERFLOW, "sum of tokens_per_rank overflows int64 at rank 1");
  /* A huge hidden size: the first product that breaks is named with its operands. */
  c = preset_cfg("tiny", 1, 16);
  c.dims.hidden = INT64_C(1) << 60;
  expect_error(&c, EPM_ERR_OVERFLOW, "x_local [m_r, H]: 16 x 1152921504606846976 overflows int64");
  c = preset_cfg("tiny", 1, 1);
  c.dims.intermediate = INT64_C(1) << 62;
  expect_error(&c, EPM_ERR_OVERFLOW, "2I: 2 x 4611686018427387904 overflows int64");
  /* Just below: 2^31 gathered tokens of tiny plan fine, in int64. */
  c = preset_cfg("tiny", 1, INT64_C(1) << 31);
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(p.partial_y.elements, (INT64_C(1) << 31) * 256);
}

static void test_scale_one_short(void **state) {
  (void)state;
  assert_int_equal(epm_plan_check_scale_numel(327680, 7168, 146800639), EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_last_error(),
                      "hidden_states_scale has 146800639 elements; 327680 tokens x 7168 hidden / 16 "
                      "= 146800640 expected");
  assert_int_equal(epm_plan_check_scale_numel(327680, 7168, 146800641), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_plan_check_scale_numel(327680, 7168, 146800640), EPM_OK);
  /* The seed's int32 arithmetic would have wrapped to -1,946,157,056 here. */
  assert_int_equal(epm_plan_check_packed_numel(327680, 7168, 1174405119), EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_last_error(),
                      "hidden_states has 1174405119 elements; 327680 tokens x 7168 hidden / 2 = "
                      "1174405120 expected");
  assert_int_equal(epm_plan_check_numel("routing_logits", 10, 5, "tokens", 3, "experts", 1),
                   EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_last_error(),
                      "routing_logits has 10 elements; 5 tokens x 3 experts = 15 expected");
  assert_int_equal(epm_plan_check_scale_numel(4, 7160, 1790), EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_last_error(), "hidden_states_scale: 7160 hidden is not a multiple of 16");
  assert_int_equal(epm_plan_check_scale_numel(INT64_MAX, 7168, 0), EPM_ERR_OVERFLOW);
  assert_non_null(strstr(epm_last_error(), "overflows int64"));
  assert_int_equal(epm_plan_check_scale_numel(-1, 7168, 0), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_plan_check_scale_numel(0, 7168, 0), EPM_OK);

  epm_plan_config_t c = preset_cfg("deepseek-r1", 32, 10240);
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(epm_plan_check_buffer(&p, "xsf_gathered", 146800640), EPM_OK);
  assert_int_equal(epm_plan_check_buffer(&p, "xsf_gathered", 146800639), EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_last_error(),
                      "buffer xsf_gathered has 146800639 bytes; the plan needs 146800640 "
                      "([327680, 448] e4m3)");
  assert_int_equal(epm_plan_check_buffer(&p, "nope", 1), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "'nope'"));
}

static void test_bad_config(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 512, 10);
  expect_error(&c, EPM_ERR_INVALID_ARG, "num_experts = 256 cannot give each of ep_size = 512 ranks an expert");
  c.ep_size = 0;
  expect_error(&c, EPM_ERR_INVALID_ARG, "ep_size = 0 must be >= 1");
  c.ep_size = -4;
  expect_error(&c, EPM_ERR_INVALID_ARG, "ep_size = -4");
  c = preset_cfg("deepseek-r1", 32, -1);
  expect_error(&c, EPM_ERR_INVALID_ARG, "max_tokens_per_rank = -1 is negative");
  int64_t counts[4] = {3, 4, -2, 5};
  c = preset_cfg("qwen3-235b", 4, 0);
  c.tokens_per_rank = counts;
  expect_error(&c, EPM_ERR_INVALID_ARG, "tokens_per_rank[2] = -2 is negative");
  c = preset_cfg("deepseek-r1", 32, 10);
  c.rank = 32;
  expect_error(&c, EPM_ERR_INVALID_ARG, "rank = 32 is outside [0, ep_size = 32)");
  c.rank = -1;
  expect_error(&c, EPM_ERR_INVALID_ARG, "rank = -1");
  c.rank = 0;
  c.tile = -8;
  expect_error(&c, EPM_ERR_INVALID_ARG, "tile = -8");
  c.tile = 4096;
  expect_error(&c, EPM_ERR_INVALID_ARG, "tile = 4096");
  c.tile = 0;
  c.dims.hidden = 7000;
  expect_error(&c, EPM_ERR_INVALID_ARG, "model 'deepseek-r1': hidden = 7000");
  expect_error(NULL, EPM_ERR_INVALID_ARG, "NULL");
}

/* Brute force of the padded-row bound: the most GEMM M-tiles P local pairs
 * can need, over every way to split them among at most E_l experts. */
static int64_t brute_tiles(int64_t pairs, int64_t experts, int64_t tile) {
  if (experts == 0 || pairs == 0) return pairs == 0 ? 0 : -1; /* -1: infeasible */
  int64_t best = -1;
  for (int64_t n = 0; n <= pairs; n++) {
    int64_t rest = brute_tiles(pairs - n, experts - 1, tile);
    if (rest < 0) continue;
    int64_t t = (n + tile - 1) / tile + rest;
    if (t > best) best = t;
  }
  return best;
}

static void test_rows_bound_brute_force(void **state) {
  (void)state;
  for (int64_t el = 1; el <= 4; el++)
    for (int64_t k = 1; k <= 5; k++)
      for (int64_t tile = 1; tile <= 9; tile += 2)
        for (int64_t m = 0; m <= 6; m++) {
          int64_t pairs, tiles, rows;
          assert_int_equal(epm_plan_local_rows_bound(m, k, el, tile, &pairs, &tiles, &rows), EPM_OK);
          int64_t kk = k < el ? k : el;
          assert_int_equal(pairs, m * kk);
          assert_int_equal(tiles, brute_tiles(m * kk, el, tile));
          assert_int_equal(rows, tiles * tile);
        }
  int64_t a, b, r;
  assert_int_equal(epm_plan_local_rows_bound(-1, 8, 8, 128, &a, &b, &r), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_plan_local_rows_bound(1, 8, 0, 128, &a, &b, &r), EPM_ERR_INVALID_ARG);
}

/* grid.y of the grouped GEMMs: vLLM PR #43599 chunks DeepSeek (E 256, k 8,
 * tile 128) above (256 + (65535 - 256 + 1) x 128 - 1) / 8 = 1,044,511 tokens
 * (spec §5); at EP1 the local experts are all 256. */
static void test_grid_y_chunking(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 1, 1044511);
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(p.gemm_m_tiles_max, 65535);
  assert_int_equal(p.violations, 0);
  assert_int_equal(p.chunks, 1);
  assert_int_equal(p.max_tokens_per_chunk, 1044511);
  c.max_tokens_per_rank = 1044512;
  p = plan_ok(&c);
  assert_int_equal(p.gemm_m_tiles_max, 65536);
  assert_int_equal(p.violations, 2); /* gemm1 and gemm2 grid.y */
  assert_int_equal(p.chunks, 2);
  assert_int_equal(p.max_tokens_per_chunk, 1044511);
  size_t seen = 0;
  for (size_t i = 0; i < p.n_limits; i++) {
    if (p.limits[i].chunks == 1) continue;
    assert_string_equal(p.limits[i].dim, "grid.y");
    assert_int_equal(p.limits[i].value, 65536);
    assert_int_equal(p.limits[i].limit, 65535);
    assert_int_equal(p.limits[i].chunks, 2);
    seen++;
  }
  assert_int_equal(seen, 2);
  c.max_tokens_per_rank = 3 * INT64_C(1044511) + 1;
  p = plan_ok(&c);
  assert_int_equal(p.chunks, 4);

  /* For other shapes: a chunk of max_tokens_per_chunk fits, one more token does not. */
  const struct {
    const char *preset;
    int64_t ep, tile, tokens;
  } cases[] = {
      {"qwen3-235b", 1, 8, 1 << 20},  {"qwen3-235b", 16, 64, 1 << 22},
      {"llama4-maverick", 4, 128, 1 << 25}, {"tiny", 1, 1, 1 << 20},
      {"deepseek-r1", 8, 256, 1 << 24},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    c = preset_cfg(cases[i].preset, cases[i].ep, cases[i].tokens);
    c.tile = cases[i].tile;
    p = plan_ok(&c);
    assert_true(p.violations > 0);
    int64_t t = p.max_tokens_per_chunk;
    assert_int_equal(p.chunks, (c.ep_size * cases[i].tokens + t - 1) / t);
    c.ep_size = 1;
    c.dims.num_experts /= cases[i].ep; /* same E_l, so the chunk can be planned at EP1 */
    c.max_tokens_per_rank = t;
    if (c.dims.n_group > 1) c.dims.n_group = c.dims.topk_group = 1, c.dims.routing = EPM_ROUTING_TOPK;
    p = plan_ok(&c);
    assert_int_equal(p.violations, 0);
    c.max_tokens_per_rank = t + 1;
    p = plan_ok(&c);
    assert_true(p.violations > 0);
  }
}

/* grid.x: one CTA per gathered token in finalize passes 2^31 - 1 tokens. */
static void test_grid_x_chunking(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("tiny", 1, INT64_C(2147483648));
  c.tile = 1024;
  epm_plan_t p = plan_ok(&c);
  int finalize = 0;
  for (size_t i = 0; i < p.n_limits; i++)
    if (strcmp(p.limits[i].kernel, "finalize") == 0) {
      finalize = 1;
      assert_int_equal(p.limits[i].value, INT64_C(2147483648));
      assert_int_equal(p.limits[i].chunks, 2);
    }
  assert_true(finalize);
  assert_true(p.chunks >= 2);
  assert_true(p.max_tokens_per_chunk <= INT64_C(2147483647));
}

static void test_buffer_iteration(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("llama4-maverick", 16, 777);
  epm_plan_t p = plan_ok(&c);
  size_t n = epm_plan_buffer_count();
  assert_true(n >= 30);
  size_t sum[EPM_PLAN_GROUP_COUNT] = {0};
  epm_plan_buffer_info_t b, b2;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(epm_plan_buffer(&p, i, &b), EPM_OK);
    assert_non_null(b.desc);
    assert_true(strlen(b.desc) > 0);
    assert_true(b.buf.elements == b.buf.rows * b.buf.cols);
    sum[b.group] += b.buf.bytes;
    for (size_t j = 0; j < i; j++) {
      assert_int_equal(epm_plan_buffer(&p, j, &b2), EPM_OK);
      assert_string_not_equal(b.name, b2.name);
    }
    assert_int_equal(epm_plan_buffer_by_name(&p, b.name, &b2), EPM_OK);
    assert_int_equal(b2.buf.bytes, b.buf.bytes);
  }
  assert_int_equal(sum[EPM_PLAN_GROUP_LOCAL], p.bytes_local);
  assert_int_equal(sum[EPM_PLAN_GROUP_WEIGHTS], p.bytes_weights);
  assert_int_equal(p.bytes_total, p.bytes_activations + p.bytes_weights);
  assert_int_equal(p.bytes_activations,
                   p.bytes_local + p.bytes_gathered + p.bytes_expert + p.bytes_shared);
  /* Llama4 top-1 at EP16: E_l 8, one local pair per token at most. */
  assert_int_equal(p.local_pairs_max, 16 * 777);
  assert_int_equal(p.x_local.bytes, 777 * 5120 * 2);
  assert_int_equal(p.logits_local.bytes, 777 * 128 * 4);
  assert_int_equal(epm_plan_buffer(&p, n, &b), EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_plan_group_name(EPM_PLAN_GROUP_EXPERT), "expert");
}

/* The NVFP4 codec (runtime/nvfp4_matrix.c, written separately) sizes packed
 * codes and both scale layouts; the plan's buffers must agree with it. */
static size_t codec_bytes(int64_t rows, int64_t cols, int layout) {
  size_t n = 0;
  epm_status_t st = layout < 0 ? epm_nvfp4_packed_bytes(rows, cols, &n)
                               : epm_nvfp4_sf_bytes(rows, cols, (epm_sf_layout_t)layout, &n);
  if (st != EPM_OK) fail_msg("codec size of [%lld, %lld]: %s", (long long)rows, (long long)cols,
                             epm_last_error());
  return n;
}

static void test_agrees_with_codec(void **state) {
  (void)state;
  const struct {
    const char *preset;
    int64_t ep, tokens, tile, inter;
  } cases[] = {
      {"deepseek-r1", 32, 10240, 128, 0}, {"tiny", 2, 5, 8, 144},  {"qwen3-235b", 8, 1, 16, 0},
      {"llama4-maverick", 128, 333, 64, 0}, {"tiny", 4, 0, 128, 0}, {"deepseek-r1", 1, 130, 3, 0},
  };
  const int P = -1, LIN = EPM_SF_LINEAR, SWZ = EPM_SF_SWIZZLED_128X4;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    epm_plan_config_t c = preset_cfg(cases[i].preset, cases[i].ep, cases[i].tokens);
    c.tile = cases[i].tile;
    if (cases[i].inter) c.dims.intermediate = cases[i].inter;
    epm_plan_t p = plan_ok(&c);
    const int64_t H = c.dims.hidden, I = c.dims.intermediate, Is = c.dims.shared_intermediate;
    const int64_t mr = p.tokens_local, M = p.tokens_gathered, R = p.permuted_rows_max;
    const int64_t el = p.local_experts, S = c.dims.shared_experts;
    assert_int_equal(p.xq_local.bytes, codec_bytes(mr, H, P));
    assert_int_equal(p.xsf_local.bytes, codec_bytes(mr, H, LIN));
    assert_int_equal(p.xsf_local_swz.bytes, codec_bytes(mr, H, SWZ));
    assert_int_equal(p.xq_gathered.bytes, codec_bytes(M, H, P));
    assert_int_equal(p.xsf_gathered.bytes, codec_bytes(M, H, LIN));
    assert_int_equal(p.xsf_gathered_swz.bytes, codec_bytes(M, H, SWZ));
    assert_int_equal(p.inter_q.bytes, codec_bytes(R, I, P));
    assert_int_equal(p.inter_sf.bytes, codec_bytes(R, I, SWZ));
    assert_int_equal(p.w13_q.bytes, (size_t)el * codec_bytes(2 * I, H, P));
    assert_int_equal(p.w13_sf.bytes, (size_t)el * codec_bytes(2 * I, H, SWZ));
    assert_int_equal(p.w2_q.bytes, (size_t)el * codec_bytes(H, I, P));
    assert_int_equal(p.w2_sf.bytes, (size_t)el * codec_bytes(H, I, SWZ));
    if (S) {
      assert_int_equal(p.shared_inter_q.bytes, codec_bytes(mr, Is, P));
      assert_int_equal(p.shared_inter_sf.bytes, codec_bytes(mr, Is, SWZ));
      assert_int_equal(p.shared_w13_sf.bytes, codec_bytes(2 * Is, H, SWZ));
      assert_int_equal(p.shared_w2_sf.bytes, codec_bytes(H, Is, SWZ));
    }
  }
}

/* alltoall rows: each token at most once per rank and to at most k ranks;
 * the receive capacity is the worst case M unless set lower. */
static void test_alltoall_rows(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 32, 10240); /* top-8 < 32 ranks */
  epm_plan_t p = plan_ok(&c);
  assert_int_equal(p.a2a_send_rows, 10240 * 8);
  assert_int_equal(p.a2a_recv_rows, 327680);
  c.recv_capacity = 50000;
  p = plan_ok(&c);
  assert_int_equal(p.a2a_recv_rows, 50000);
  c.recv_capacity = 400000; /* above M: M bounds it */
  p = plan_ok(&c);
  assert_int_equal(p.a2a_recv_rows, 327680);
  c = preset_cfg("deepseek-r1", 4, 100); /* 4 ranks < top-8: a token reaches at most 4 */
  p = plan_ok(&c);
  assert_int_equal(p.a2a_send_rows, 400);
  c.recv_capacity = -1;
  expect_error(&c, EPM_ERR_INVALID_ARG, "recv_capacity = -1 must be >= 0");
}

/* Sum of the workspace buffers by name (an expert call over all M rows). */
static size_t ws_of(const epm_plan_t *p) {
  static const char *const names[] = {"expanded_to_permuted", "permuted_to_token", "expert_row_offsets",
                                      "gemm1_out", "inter_q", "inter_sf", "gemm2_out"};
  size_t sum = 0;
  epm_plan_buffer_info_t b;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    assert_int_equal(epm_plan_buffer_by_name(p, names[i], &b), EPM_OK);
    sum += b.buf.bytes;
  }
  return sum;
}

/* The workspace budget: EP32 x 10,240 tokens at DeepSeek-R1 dims. */
static void test_workspace_chunks(void **state) {
  (void)state;
  epm_plan_config_t c = preset_cfg("deepseek-r1", 32, 10240);
  epm_plan_t p = plan_ok(&c);
  const int64_t M = 327680;
  assert_int_equal(p.bytes_expert_ws, ws_of(&p));
  assert_true(p.bytes_expert_ws > (size_t)50 << 30); /* ~58 GiB unbounded */
  assert_int_equal(p.ws_chunks, 1);
  assert_int_equal(p.ws_chunk_tokens, M);
  assert_int_equal(p.bytes_total_chunked, p.bytes_total);
  /* The same function at M rows matches the plan's own buffers; at fewer
   * rows it is what a plan of that many gathered tokens holds. */
  size_t b = 0;
  assert_int_equal(epm_plan_expert_ws_bytes(&p, M, &b), EPM_OK);
  assert_int_equal(b, p.bytes_expert_ws);
  epm_plan_config_t c1 = preset_cfg("deepseek-r1", 32, 100);
  epm_plan_t p1 = plan_ok(&c1);
  assert_int_equal(epm_plan_expert_ws_bytes(&p, 3200, &b), EPM_OK);
  assert_int_equal(b, ws_of(&p1));

  const size_t budgets[] = {(size_t)4 << 30, (size_t)1 << 30, (size_t)256 << 20};
  for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
    c.workspace_bytes = budgets[i];
    p = plan_ok(&c);
    const int64_t n = p.ws_chunk_tokens;
    size_t at = 0, above = 0;
    assert_int_equal(epm_plan_expert_ws_bytes(&p, n, &at), EPM_OK);
    assert_int_equal(epm_plan_expert_ws_bytes(&p, n + 1, &above), EPM_OK);
    assert_true(at <= budgets[i] && above > budgets[i]); /* the largest chunk that fits */
    assert_int_equal(p.bytes_expert_ws_chunk, at);
    assert_int_equal(p.ws_chunks, (M + n - 1) / n);
    assert_int_equal(p.bytes_total_chunked, p.bytes_total - p.bytes_expert_ws + at);
    /* Beside every MoE layer's weights (58 in DeepSeek-R1) on an 80 GB
     * card, with fp32 partials (the engine's default: twice the plan's
     * bf16 partial_y). */
    const size_t all = p.bytes_total_chunked - p.bytes_weights + p.partial_y.bytes + 58 * p.bytes_weights;
    assert_true(all < (size_t)80000000000);
  }
  c.workspace_bytes = 1000; /* below one row */
  expect_error(&c, EPM_ERR_INVALID_ARG, "workspace budget 1000 bytes is below the");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_workspace_chunks),
      cmocka_unit_test(test_seed_boundary_table),
      cmocka_unit_test(test_seed_expert_stage),
      cmocka_unit_test(test_mh_beyond_2_31_and_2_32),
      cmocka_unit_test(test_weights_beyond_2_31),
      cmocka_unit_test(test_int64_overflow),
      cmocka_unit_test(test_scale_one_short),
      cmocka_unit_test(test_bad_config),
      cmocka_unit_test(test_rows_bound_brute_force),
      cmocka_unit_test(test_grid_y_chunking),
      cmocka_unit_test(test_grid_x_chunking),
      cmocka_unit_test(test_buffer_iteration),
      cmocka_unit_test(test_agrees_with_codec),
      cmocka_unit_test(test_alltoall_rows),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
