/* SPDX-License-Identifier: Apache-2.0 */
/* test_kernel_plan: the pure-C plans of the CUDA kernels (kernels/<op>_plan.c)
 * at the seed's size (M = 327,680 gathered tokens, H = 7168), past 2^31 and
 * 2^32 elements, and their errors. Expected sizes are typed from hand
 * arithmetic, not read back from the plan code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "epmoe/kernels.h"

static void check_grid(uint32_t grid, uint32_t block) {
  assert_true(grid >= 1);
  assert_true((int64_t)grid <= EPM_CUDA_GRID_X_MAX);
  assert_true(block >= 32 && block <= 1024);
}

static void test_quantize_seed_size(void **state) {
  (void)state;
  epm_quantize_plan_t p;
  assert_int_equal(epm_quantize_plan(327680, 7168, EPM_SF_LINEAR, &p), EPM_OK);
  assert_int_equal(p.blocks, 146800640LL);
  assert_int_equal(p.sf_bytes, (size_t)146800640ULL); /* the seed's scale numel */
  assert_int_equal(p.packed_bytes, (size_t)1174405120ULL);
  assert_int_equal(p.x_bytes, (size_t)4697620480ULL); /* > 2^32 bytes */
  check_grid(p.grid, p.block);
  assert_int_equal(epm_quantize_plan(327680, 7168, EPM_SF_SWIZZLED_128X4, &p), EPM_OK);
  assert_int_equal(p.sf_bytes, (size_t)146800640ULL); /* 327680 % 128 == 0, 448 % 4 == 0 */
  /* 100 rows x 48 cols: 3 scale cols -> padded 128 x 4 */
  assert_int_equal(epm_quantize_plan(100, 48, EPM_SF_SWIZZLED_128X4, &p), EPM_OK);
  assert_int_equal(p.sf_bytes, (size_t)512);
  assert_int_equal(p.packed_bytes, (size_t)2400);
}

static void test_quantize_past_2_32(void **state) {
  (void)state;
  epm_quantize_plan_t p;
  /* 600,000 x 7168 = 4,300,800,000 elements > 2^32 */
  assert_int_equal(epm_quantize_plan(600000, 7168, EPM_SF_LINEAR, &p), EPM_OK);
  assert_int_equal(p.blocks, 268800000LL);
  assert_int_equal(p.packed_bytes, (size_t)2150400000ULL);
  assert_int_equal(p.x_bytes, (size_t)8601600000ULL);
  check_grid(p.grid, p.block);
  /* grid-strided: the grid covers the work through the stride, never overflows */
  assert_true((int64_t)p.grid * p.block <= p.blocks);
  assert_int_equal(epm_quantize_plan(0, 7168, EPM_SF_LINEAR, &p), EPM_OK);
  assert_int_equal(p.blocks, 0);
}

static void test_quantize_errors(void **state) {
  (void)state;
  epm_quantize_plan_t p;
  assert_int_equal(epm_quantize_plan(10, 24, EPM_SF_LINEAR, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "cols = 24"));
  assert_int_equal(epm_quantize_plan(-1, 16, EPM_SF_LINEAR, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_quantize_plan(10, 16, (epm_sf_layout_t)7, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_quantize_plan(INT64_MAX / 8, 64, EPM_SF_LINEAR, &p), EPM_ERR_OVERFLOW);
  assert_non_null(strstr(epm_last_error(), "overflows"));
  assert_int_equal(epm_quantize_plan(10, 16, EPM_SF_LINEAR, NULL), EPM_ERR_INVALID_ARG);
}

static void test_moe_seed_size(void **state) {
  (void)state;
  epm_moe_plan_t p;
  /* EP32 share of DeepSeek-R1: experts [0, 8) of 256, top-8 */
  assert_int_equal(epm_moe_plan(327680, 7168, 2048, 256, 8, 0, 8, &p), EPM_OK);
  assert_int_equal(p.pairs, 2621440LL);
  /* 2,621,440 local pairs: 8 experts with one row each + 2,621,432 / 64 full
   * tiles = 40,967 tiles = 2,621,888 rows */
  assert_int_equal(p.max_rows, 2621888LL);
  assert_int_equal(p.max_m_tiles, 40967LL);
  assert_int_equal(p.n_tiles_gemm1, 32);
  assert_int_equal(p.n_tiles_gemm2, 56);
  assert_int_equal(p.y_bytes, (size_t)37587386368ULL);          /* rows x 7168 x 2 */
  assert_int_equal(p.inter_packed_bytes, (size_t)2684813312ULL); /* rows x 1024 */
  assert_int_equal(p.inter_sf_bytes, (size_t)335601664ULL);      /* rows x 128 */
  assert_int_equal(p.pair_row_bytes, (size_t)20971520ULL);
  assert_int_equal(p.out_bf16_bytes, (size_t)4697620480ULL);
  assert_int_equal(p.out_f32_bytes, (size_t)9395240960ULL);
  assert_true(p.workspace_bytes >= p.y_bytes + p.inter_packed_bytes + p.inter_sf_bytes +
                                       p.pair_row_bytes + p.row_token_bytes);
  check_grid(p.grid_pairs, p.block);
  check_grid(p.grid_tiles, p.block);
  check_grid(p.grid_finalize, p.block);

  /* carve: pieces in order, 256-aligned, inside the allocation */
  static _Alignas(256) uint8_t fake[512]; /* only addresses are computed */
  epm_moe_workspace_t ws;
  assert_int_equal(epm_moe_workspace_carve(&p, fake + 8, &ws), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "256-byte aligned"));
  assert_int_equal(epm_moe_workspace_carve(&p, fake, &ws), EPM_OK);
  uintptr_t b = (uintptr_t)fake;
  assert_int_equal(((uintptr_t)ws.y - b) % 256, 0);
  assert_true((uintptr_t)ws.y - b + p.y_bytes <= p.workspace_bytes);
  assert_true((uintptr_t)ws.row_token - b >= p.counts_bytes + p.offsets_bytes + p.pair_row_bytes);
  assert_ptr_equal(ws.cursors, ws.counts + 8);
}

static void test_moe_small_and_edges(void **state) {
  (void)state;
  epm_moe_plan_t p;
  /* E_l larger than k: worst case is k slots per token */
  assert_int_equal(epm_moe_plan(48, 256, 128, 8, 2, 0, 8, &p), EPM_OK);
  assert_int_equal(p.max_rows, 576); /* 96 pairs: 8 single rows + 88/64 -> 9 tiles */
  /* E_l at the top end of the range, k = 1 */
  assert_int_equal(epm_moe_plan(10, 256, 128, 16, 1, 12, 4, &p), EPM_OK);
  assert_int_equal(p.max_rows, 256); /* 10 pairs: 4 tiles */
  /* zero tokens is legal */
  assert_int_equal(epm_moe_plan(0, 7168, 2048, 256, 8, 248, 8, &p), EPM_OK);
  assert_int_equal(p.pairs, 0);
  assert_int_equal(p.max_rows, 0);
  /* past 2^32 elements of the output: 700,000 x 7168 */
  assert_int_equal(epm_moe_plan(700000, 7168, 2048, 256, 8, 0, 8, &p), EPM_OK);
  assert_int_equal(p.out_bf16_bytes, (size_t)10035200000ULL);
}

static void test_moe_errors(void **state) {
  (void)state;
  epm_moe_plan_t p;
  assert_int_equal(epm_moe_plan(10, 7168, 2048, 256, 8, 250, 8, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "[250, 250 + 8)"));
  assert_int_equal(epm_moe_plan(10, 7168, 2048, 256, 0, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe_plan(10, 7168, 2048, 8, 9, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe_plan(10, 7160, 2048, 256, 8, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "hidden = 7160"));
  assert_int_equal(epm_moe_plan(10, 7168, 2040, 256, 8, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe_plan(-1, 7168, 2048, 256, 8, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe_plan(INT64_MAX / 4, 7168, 2048, 256, 8, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_moe_plan(2147483648LL, 7168, 2048, 256, 8, 0, 8, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "tokens = 2147483648"));
  /* the largest legal batch still plans, with sizes far past 2^32 */
  assert_int_equal(epm_moe_plan(2147483647LL, 16, 16, 256, 8, 0, 8, &p), EPM_OK);
  assert_int_equal(p.pairs, 17179869176LL);
  assert_int_equal(epm_moe_plan(2147483647LL, 7168, 2048, 256, 8, 0, 8, &p), EPM_OK);
  assert_true(p.y_bytes > ((size_t)1 << 40)); /* ~246 TB: planned, never allocated */
}

static void test_routing_plan(void **state) {
  (void)state;
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("deepseek-r1", &d), EPM_OK);
  epm_routing_plan_t p;
  assert_int_equal(epm_routing_plan(&d, 327680, &p), EPM_OK);
  assert_int_equal(p.logits_bytes, (size_t)335544320ULL);
  assert_int_equal(p.ids_bytes, (size_t)10485760ULL);
  check_grid(p.grid, p.block);
  /* M x E past 2^32: 20,000,000 x 256 */
  assert_int_equal(epm_routing_plan(&d, 20000000, &p), EPM_OK);
  assert_int_equal(p.logits_bytes, (size_t)20480000000ULL);
  check_grid(p.grid, p.block);
  epm_model_dims_t bad = d;
  bad.top_k = 65;
  assert_int_equal(epm_routing_plan(&bad, 4, &p), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "top_k = 65"));
  bad = d;
  bad.n_group = 7; /* 256 % 7 != 0 */
  assert_int_equal(epm_routing_plan(&bad, 4, &p), EPM_ERR_INVALID_ARG);
  bad = d;
  bad.topk_group = 9;
  assert_int_equal(epm_routing_plan(&bad, 4, &p), EPM_ERR_INVALID_ARG);
  bad = d;
  bad.routing = EPM_ROUTING_LLAMA4;
  assert_int_equal(epm_routing_plan(&bad, 4, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_routing_plan(&d, -3, &p), EPM_ERR_INVALID_ARG);
  assert_int_equal(epm_routing_plan(&d, INT64_MAX / 8, &p), EPM_ERR_OVERFLOW);
}

#ifndef EPMOE_HAVE_CUDA
static void test_launch_without_cuda(void **state) {
  (void)state;
  epm_quantize_plan_t p;
  assert_int_equal(epm_quantize_plan(1, 16, EPM_SF_LINEAR, &p), EPM_OK);
  uint8_t buf[64];
  float g = 1.0f;
  assert_int_equal(epm_kernel_quantize_bf16(&p, buf, &g, buf, buf, NULL), EPM_ERR_NOT_SUPPORTED);
  assert_non_null(strstr(epm_last_error(), "no CUDA"));
}
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_quantize_seed_size),
      cmocka_unit_test(test_quantize_past_2_32),
      cmocka_unit_test(test_quantize_errors),
      cmocka_unit_test(test_moe_seed_size),
      cmocka_unit_test(test_moe_small_and_edges),
      cmocka_unit_test(test_moe_errors),
      cmocka_unit_test(test_routing_plan),
#ifndef EPMOE_HAVE_CUDA
      cmocka_unit_test(test_launch_without_cuda),
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
