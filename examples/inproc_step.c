/* SPDX-License-Identifier: Apache-2.0 */
/* inproc_step — the in-process mode: an engine that links libepmoe and runs
 * its MoE layers through include/epmoe/group.h, with no daemon and no socket.
 * One process per EP rank, started by the launcher the engine already uses:
 *
 *   mpirun -np 2 ./inproc_step [--preset tiny] [--seed S] [--layers L] [--tokens N] [--gpu]
 *
 * What an engine does, in order (the numbered steps below):
 *   1 bootstrap: MPI and the EP group (the engine's own MPI is fine: the
 *     bootstrap joins an initialised MPI rather than starting it)
 *   2 epm_group_create: collective; builds this rank's backend, comm, layer
 *     weights (its slice of the experts) and the step engines
 *   3 per MoE layer and batch: epm_group_step_opts with this rank's tokens
 *     (any count, 0 included: every rank calls every step, in the same order)
 *     and the options the engine wants: shared_expert = 0 when the engine
 *     computes the layer's shared expert itself (vLLM/SGLang/TensorRT-LLM do),
 *     or it is added twice; the routing is always epmoe's (from the logits)
 *   4 destroy, finalize
 * Here each rank also sends its y to rank 0, which recomputes the same
 * global tokens on the CPU reference (the whole layer, EP = 1) and compares:
 * exit 0 when every layer, with and without the shared expert, is within
 * 2^-6 relative (docs/ARCHITECTURE.md "Engine"), 1 otherwise, on every rank.
 * --gpu picks the cuda backend when this rank sees a GPU (host buffers are
 * staged; an engine passes device pointers with EPM_MEM_DEVICE instead). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/bf16.h"
#include "epmoe/bootstrap.h"
#include "epmoe/group.h"
#include "epmoe/layer.h"
#include "epmoe/model.h"
#include "epmoe/moe_ref.h"
#include "epmoe/tokens.h"

typedef struct {
  const char *preset;
  long long seed, layers, tokens;
  int gpu;
} args_t;

static int parse(int argc, char **argv, args_t *a) {
  *a = (args_t){"tiny", 1, 2, 8, 0};
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    char *end = NULL;
    if (!strcmp(argv[i], "--gpu")) {
      a->gpu = 1;
      continue;
    }
    if (!v) return -1;
    if (!strcmp(argv[i], "--preset")) a->preset = v;
    else if (!strcmp(argv[i], "--seed")) a->seed = strtoll(v, &end, 10);
    else if (!strcmp(argv[i], "--layers")) a->layers = strtoll(v, &end, 10);
    else if (!strcmp(argv[i], "--tokens")) a->tokens = strtoll(v, &end, 10);
    else return -1;
    if (end && *end) return -1;
    i++;
  }
  return a->seed >= 0 && a->layers >= 1 && a->tokens >= 0 ? 0 : -1;
}

/* Rank 0: max |y - ref| / max |ref| of the whole layer on the CPU reference. */
static double check_layer(const epm_model_dims_t *d, int64_t layer, uint64_t seed, int shared, const epm_bf16_t *x,
                          const float *logits, int64_t M, const epm_bf16_t *y) {
  epm_layer_t full;
  epm_moe_ref_opts_t ro = EPM_MOE_REF_OPTS_INIT;
  epm_bf16_t *ref = calloc((size_t)(M * d->hidden + 1), sizeof *ref);
  double maxerr = 0, maxref = 0;
  ro.include_shared = shared;
  if (!ref || epm_layer_generate(d, layer, seed, 0, d->num_experts, &full) != EPM_OK) {
    free(ref);
    return INFINITY;
  }
  if (epm_moe_ref_layer(&full, x, logits, M, &ro, NULL, NULL, NULL, ref, NULL) == EPM_OK) {
    for (int64_t i = 0; i < M * d->hidden; i++) {
      double e = fabs((double)epm_bf16_to_f32(y[i]) - (double)epm_bf16_to_f32(ref[i]));
      if (!(e <= maxerr)) maxerr = e; /* NaN counts as the worst */
      maxref = fmax(maxref, fabs((double)epm_bf16_to_f32(ref[i])));
    }
  } else {
    maxerr = INFINITY;
  }
  epm_layer_free(&full);
  free(ref);
  return maxref > 0 ? maxerr / maxref : (M > 0 ? INFINITY : 0);
}

int main(int argc, char **argv) {
  args_t a;
  epm_bootstrap_t boot;
  epm_group_t *g = NULL;
  epm_model_dims_t dims;
  int fails = 0;
  if (parse(argc, argv, &a) != 0 || epm_model_preset(a.preset, &dims) != EPM_OK) {
    fprintf(stderr, "usage: mpirun -np N inproc_step [--preset NAME] [--seed S] [--layers L] [--tokens N] [--gpu]\n");
    return 64;
  }
  /* 1 bootstrap */
  epm_bootstrap_opts_t bo = {.gpu_mode = a.gpu ? EPM_GPU_AUTO : EPM_GPU_OFF};
  if (epm_bootstrap_init(&argc, &argv, &bo, &boot) != EPM_OK) {
    fprintf(stderr, "inproc_step: %s\n", epm_last_error());
    epm_bootstrap_finalize(&boot);
    return 1;
  }
  const int P = boot.ep_size, r = boot.ep_rank;
  /* This rank's tokens: unequal on purpose (rank r: tokens + 3r; the last
   * rank none when there are several), as an engine's batch would be. */
  int64_t m = r == P - 1 && P > 1 ? 0 : a.tokens + 3 * r, first = 0, M = 0;
  for (int q = 0; q < P; q++) {
    int64_t mq = q == P - 1 && P > 1 ? 0 : a.tokens + 3 * q;
    if (q < r) first += mq;
    M += mq;
  }
  /* 2 the group: collective, all ranks the same config */
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = a.preset;
  gc.seed = (uint64_t)a.seed;
  gc.num_layers = a.layers;
  gc.max_tokens_per_rank = a.tokens + 3 * P;
  gc.shared_expert = 0; /* the integration default: the engine adds its shared expert */
  if (epm_group_create(&gc, &boot, &g) != EPM_OK) {
    fprintf(stderr, "inproc_step: rank %d: %s\n", r, epm_last_error());
    epm_bootstrap_finalize(&boot);
    return 1;
  }
  const int64_t H = dims.hidden, E = dims.num_experts;
  epm_bf16_t *x = calloc((size_t)(m * H + 1), 2), *y = calloc((size_t)(m * H + 1), 2);
  float *logits = calloc((size_t)(m * E + 1), 4);
  epm_bf16_t *gx = NULL, *gy = NULL;
  float *glogits = NULL;
  if (r == 0) {
    gx = calloc((size_t)(M * H + 1), 2), gy = calloc((size_t)(M * H + 1), 2), glogits = calloc((size_t)(M * E + 1), 4);
  }
  if (!x || !y || !logits || (r == 0 && (!gx || !gy || !glogits))) {
    fprintf(stderr, "inproc_step: rank %d: out of memory\n", r);
    return 1; /* no collective is pending: MPI ends the job */
  }
  for (int64_t l = 0; l < a.layers; l++) {
    for (int shared = 0; shared < 2; shared++) {
      const int64_t layer = epm_group_layer_id(g, l);
      uint64_t tseed = (uint64_t)(100 + 10 * l + shared);
      /* rows [first, first + m) of the global token set */
      int ok = epm_tokens_generate(&dims, tseed, first, m, x, logits) == EPM_OK;
      /* 3 the step: collective; every rank calls it even when m == 0 */
      epm_step_opts_t so = {shared, EPM_DTYPE_F32};
      epm_group_io_t io = {EPM_MEM_HOST, x, logits, y, m};
      epm_status_t st = epm_group_step_opts(g, layer, &so, &io);
      if (st != EPM_OK) fprintf(stderr, "inproc_step: rank %d: layer %lld: %s\n", r, (long long)layer, epm_last_error());
      ok = ok && st == EPM_OK;
      /* the check: y (and this rank's tokens) to rank 0 */
      size_t xb = (size_t)(m * H) * 2;
      ok = ok && epm_bootstrap_gather_bytes(&boot, 0, y, xb, gy, (size_t)(M * H) * 2, NULL) == EPM_OK;
      if (r == 0 && ok) {
        ok = epm_tokens_generate(&dims, tseed, 0, M, gx, glogits) == EPM_OK;
        double rel = ok ? check_layer(&dims, layer, (uint64_t)a.seed, shared, gx, glogits, M, gy) : INFINITY;
        ok = rel <= 1.0 / 64;
        printf("inproc_step: %d ranks, %s layer %lld, %lld tokens, shared expert %s: max relative error %.3g vs the "
               "CPU reference: %s\n",
               P, a.preset, (long long)layer, (long long)M, shared ? "on" : "off", rel, ok ? "PASS" : "FAIL");
      }
      int nfail = 0, first_failed = -1;
      if (epm_bootstrap_agree(&boot, ok, &nfail, &first_failed) != EPM_OK || nfail) fails++;
    }
  }
  /* 4 tear down */
  epm_group_destroy(g);
  free(x), free(y), free(logits), free(gx), free(gy), free(glogits);
  epm_bootstrap_finalize(&boot);
  if (r == 0) printf("inproc_step: %s\n", fails ? "FAIL" : "PASS");
  return fails ? 1 : 0;
}
