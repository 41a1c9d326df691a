/* SPDX-License-Identifier: Apache-2.0 */
/* runtime_app.c — a program that runs MoE steps itself, built against an
 * installed epmoe runtime (static parts + MPI): one rank (an MPI singleton),
 * the `tiny` preset, one step of 12 tokens through the composition root
 * (epm_group), compared with the EP=1 CPU reference of the same layer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <epmoe/bootstrap.h>
#include <epmoe/group.h>
#include <epmoe/layer.h>
#include <epmoe/model.h>
#include <epmoe/moe_ref.h>
#include <epmoe/nvfp4.h>
#include <epmoe/tokens.h>

#define M 12

static int fail(const char *what) {
  fprintf(stderr, "runtime_app: %s: %s\n", what, epm_last_error());
  return 1;
}

int main(void) {
  epm_bootstrap_opts_t bo = {EPM_GPU_OFF};
  epm_bootstrap_t boot;
  epm_model_dims_t dims;
  epm_group_t *g = NULL;
  epm_layer_t full = {0};
  int rc = 1;
  if (epm_model_preset("tiny", &dims) != EPM_OK) return fail("preset");
  if (epm_bootstrap_init(NULL, NULL, &bo, &boot) != EPM_OK) {
    fail("bootstrap");
    epm_bootstrap_finalize(&boot);
    return 1;
  }
  const int64_t H = dims.hidden, E = dims.num_experts;
  epm_bf16_t *x = malloc((size_t)(M * H) * sizeof *x), *y = malloc((size_t)(M * H) * sizeof *y),
             *ref = malloc((size_t)(M * H) * sizeof *ref);
  float *logits = malloc((size_t)(M * E) * sizeof *logits);
  if (!x || !y || !ref || !logits) {
    rc = fail("malloc");
    goto out;
  }

  epm_group_config_t cfg = EPM_GROUP_CONFIG_INIT;
  cfg.preset = "tiny";
  cfg.seed = 7;
  cfg.num_layers = 1;
  cfg.max_tokens_per_rank = M;
  if (epm_group_create(&cfg, &boot, &g) != EPM_OK) { rc = fail("group create"); goto out; }
  if (epm_tokens_generate(&dims, 3, 0, M, x, logits) != EPM_OK) { rc = fail("tokens"); goto out; }
  epm_group_io_t io = {EPM_MEM_HOST, x, logits, y, M};
  if (epm_group_step(g, 0, &io) != EPM_OK) { rc = fail("step"); goto out; }

  if (epm_layer_generate(&dims, 0, 7, 0, E, &full) != EPM_OK) { rc = fail("reference layer"); goto out; }
  epm_moe_ref_opts_t ro = EPM_MOE_REF_OPTS_INIT;
  if (epm_moe_ref_layer(&full, x, logits, M, &ro, NULL, NULL, NULL, ref, NULL) != EPM_OK) {
    rc = fail("reference");
    goto out;
  }
  double dmax = 0.0, refmax = 0.0;
  for (int64_t i = 0; i < M * H; i++) {
    double a = epm_bf16_to_f32(y[i]), b = epm_bf16_to_f32(ref[i]);
    double d = fabs(a - b);
    if (!(d <= dmax)) dmax = isnan(d) ? INFINITY : d;
    if (fabs(b) > refmax) refmax = fabs(b);
  }
  double rel = refmax > 0.0 ? dmax / refmax : INFINITY;
  /* the engine's documented tolerance against the reference: 2^-6 of max|ref| */
  rc = !(rel <= 0.015625) || refmax == 0.0;
  printf("runtime_app: tiny (H %lld, E %lld), %d tokens, one rank: max relative error %.3g vs the CPU reference: %s\n",
         (long long)H, (long long)E, M, rel, rc ? "FAIL" : "PASS");
out:
  epm_layer_free(&full);
  epm_group_destroy(g);
  epm_bootstrap_finalize(&boot);
  free(x);
  free(y);
  free(ref);
  free(logits);
  return rc;
}
