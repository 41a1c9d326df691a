/* SPDX-License-Identifier: Apache-2.0 */
/* test_model: presets carry the published config values, validate, and the
 * routing names round-trip. Expected numbers are typed from the model configs
 * (spec/nvfp4-moe.md §6.3), not read back from model.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "epmoe/model.h"

typedef struct {
  const char *name;
  int64_t h, i, e, k, ng, tg, shared, shared_i, layers;
  float rsf;
  const char *routing;
} want_t;

static const want_t wants[] = {
    {"deepseek-r1", 7168, 2048, 256, 8, 8, 4, 1, 2048, 61, 2.5f, "deepseek-v3"},
    {"qwen3-235b", 4096, 1536, 128, 8, 1, 1, 0, 0, 94, 1.0f, "renormalize"},
    {"llama4-maverick", 5120, 8192, 128, 1, 1, 1, 1, 8192, 48, 1.0f, "llama4"},
    {"tiny", 256, 128, 16, 4, 4, 2, 1, 128, 2, 2.5f, "deepseek-v3"},
};

static void test_presets_match_configs(void **state) {
  (void)state;
  for (size_t n = 0; n < sizeof wants / sizeof wants[0]; n++) {
    const want_t *w = &wants[n];
    epm_model_dims_t d;
    assert_int_equal(epm_model_preset(w->name, &d), EPM_OK);
    assert_string_equal(d.name, w->name);
    assert_int_equal(d.hidden, w->h);
    assert_int_equal(d.intermediate, w->i);
    assert_int_equal(d.num_experts, w->e);
    assert_int_equal(d.top_k, w->k);
    assert_int_equal(d.n_group, w->ng);
    assert_int_equal(d.topk_group, w->tg);
    assert_int_equal(d.shared_experts, w->shared);
    assert_int_equal(d.shared_intermediate, w->shared_i);
    assert_int_equal(d.num_layers, w->layers);
    assert_true(d.routed_scaling_factor == w->rsf);
    assert_string_equal(epm_routing_method_name(d.routing), w->routing);
    assert_int_equal(epm_model_dims_validate(&d), EPM_OK);
  }
}

static void test_preset_names_list(void **state) {
  (void)state;
  const char *const *names = epm_model_preset_names();
  size_t count = 0;
  for (; names[count]; count++) {
    epm_model_dims_t d;
    assert_int_equal(epm_model_preset(names[count], &d), EPM_OK);
    assert_int_equal(epm_model_dims_validate(&d), EPM_OK);
  }
  assert_int_equal(count, sizeof wants / sizeof wants[0]);
  epm_model_dims_t d;
  assert_int_equal(epm_model_preset("gpt-5", &d), EPM_ERR_INVALID_ARG);
  assert_non_null(strstr(epm_last_error(), "'gpt-5'"));
  assert_non_null(strstr(epm_last_error(), "deepseek-r1"));
  assert_int_equal(epm_model_preset(NULL, &d), EPM_ERR_INVALID_ARG);
}

static void test_routing_round_trip(void **state) {
  (void)state;
  const char *names[] = {"default", "renormalize", "renormalize-naive", "deepseek-v3", "llama4", "topk"};
  assert_int_equal(sizeof names / sizeof names[0], EPM_ROUTING_COUNT);
  for (int i = 0; i < EPM_ROUTING_COUNT; i++) {
    epm_routing_method_t m;
    assert_int_equal(epm_routing_method_parse(names[i], &m), EPM_OK);
    assert_int_equal((int)m, i); /* header order */
    assert_string_equal(epm_routing_method_name(m), names[i]);
  }
  epm_routing_method_t m = EPM_ROUTING_TOPK;
  assert_int_equal(epm_routing_method_parse("DeepSeekV3", &m), EPM_ERR_INVALID_ARG);
  assert_int_equal(m, EPM_ROUTING_TOPK); /* untouched on failure */
  assert_non_null(strstr(epm_last_error(), "'DeepSeekV3'"));
  assert_int_equal(epm_routing_method_parse(NULL, &m), EPM_ERR_INVALID_ARG);
  assert_string_equal(epm_routing_method_name((epm_routing_method_t)99), "invalid");
}

/* Each mutation of a valid preset must be rejected with a message naming the value. */
static void test_validate_rejects(void **state) {
  (void)state;
  epm_model_dims_t base, d;
  assert_int_equal(epm_model_preset("deepseek-r1", &base), EPM_OK);
#define REJECT(stmt, needle)                                              \
  do {                                                                    \
    d = base;                                                             \
    stmt;                                                                 \
    assert_int_equal(epm_model_dims_validate(&d), EPM_ERR_INVALID_ARG);  \
    assert_non_null(strstr(epm_last_error(), needle));                    \
  } while (0)
  REJECT(d.hidden = 7160, "hidden = 7160");
  REJECT(d.hidden = 0, "hidden = 0");
  REJECT(d.intermediate = -16, "intermediate = -16");
  REJECT(d.num_experts = 0, "num_experts = 0");
  REJECT(d.top_k = 257, "top_k = 257");
  REJECT(d.top_k = 0, "top_k = 0");
  REJECT(d.n_group = 7, "n_group = 7");        /* 256 % 7 */
  REJECT(d.topk_group = 9, "topk_group = 9");  /* > n_group */
  REJECT((d.topk_group = 1, d.top_k = 40), "< top_k = 40"); /* 1 group x 32 < 40 */
  REJECT(d.n_group = 256, "experts per group");
  REJECT(d.routing = EPM_ROUTING_RENORMALIZE, "only to deepseek-v3");
  REJECT((d.routing = EPM_ROUTING_LLAMA4, d.n_group = 1, d.topk_group = 1), "top_k = 8");
  REJECT(d.routing = (epm_routing_method_t)17, "routing method 17");
  REJECT(d.routed_scaling_factor = 0.0f, "routed_scaling_factor");
  REJECT(d.shared_experts = 2, "shared_experts = 2");
  REJECT(d.shared_intermediate = 100, "shared_intermediate = 100");
  REJECT((d.shared_experts = 0), "no shared expert");
  REJECT(d.num_layers = 0, "num_layers = 0");
  REJECT(memset(d.name, 'x', sizeof d.name), "NUL-terminated");
#undef REJECT
  assert_int_equal(epm_model_dims_validate(NULL), EPM_ERR_INVALID_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_presets_match_configs),
      cmocka_unit_test(test_preset_names_list),
      cmocka_unit_test(test_routing_round_trip),
      cmocka_unit_test(test_validate_rejects),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
