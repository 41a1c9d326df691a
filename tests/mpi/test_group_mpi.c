/* SPDX-License-Identifier: Apache-2.0 */
/* test_group_mpi.c — the composition root (epmoe/group.h) under mpirun.
 *
 * Oracle: the CPU reference full layer (EP = 1) on the global token set,
 * which every rank recomputes for the tiny preset.
 *   - two non-adjacent served layers (2 and 5) of one group share step
 *     buffers and each matches its own reference (bit-identical at P = 1,
 *     within 2^-6 of max|ref| otherwise); token counts unequal with zeros
 *   - info: EP rank/size, this rank's expert slice, layers, backend, bytes
 *   - local refusals before any communication: a layer not served, device
 *     memory on the cpu backend (the message names the layer / backend)
 *   - set-up agreement: one rank whose model directory does not exist fails
 *     with its own reason, every other rank with EPM_ERR_ABORTED naming it
 */
#include <math.h>

#include "comm_check.h"
#include "epmoe/group.h"
#include "epmoe/moe_ref.h"
#include "epmoe/tokens.h"

#define TOL 0.015625

static int P, me;

static void check_layer(epm_group_t *g, const epm_model_dims_t *d, int64_t layer, uint64_t tok_seed) {
  const int64_t H = d->hidden, E = d->num_experts;
  int64_t M = 0, off = 0, m = 0;
  for (int r = 0; r < P; r++) {
    int64_t c = (3 * r + 2 + layer) % 5; /* unequal, some zero */
    if (r == me) off = M, m = c;
    M += c;
  }
  epm_bf16_t *x = malloc((size_t)(M * H + 1) * 2), *ref = malloc((size_t)(M * H + 1) * 2),
             *y = malloc((size_t)(m * H + 1) * 2);
  float *lg = malloc((size_t)(M * E + 1) * 4);
  CHECK(x && ref && y && lg, "oom");
  CHECK_OK(epm_tokens_generate(d, tok_seed, 0, M, x, lg));
  epm_group_io_t io = {EPM_MEM_HOST, x + off * H, lg + off * E, y, m};
  CHECK_OK(epm_group_step(g, layer, &io));

  epm_layer_t full = {0};
  CHECK_OK(epm_layer_generate(d, layer, 11, 0, E, &full));
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.threads = 1;
  CHECK_OK(epm_moe_ref_layer(&full, x, lg, M, &o, NULL, NULL, NULL, ref, NULL));
  double dmax = 0, rmax = 0;
  int64_t diffs = 0;
  for (int64_t i = 0; i < M * H; i++) rmax = fmax(rmax, fabs(epm_bf16_to_f32(ref[i])));
  for (int64_t i = 0; i < m * H; i++) {
    dmax = fmax(dmax, fabs((double)epm_bf16_to_f32(y[i]) - epm_bf16_to_f32(ref[off * H + i])));
    diffs += y[i] != ref[off * H + i];
  }
  double err = rmax > 0 ? dmax / rmax : dmax;
  CHECK(err <= TOL, "layer %lld: max_err %.3g > %g", (long long)layer, err, TOL);
  if (P == 1) CHECK(diffs == 0, "layer %lld: %lld elements differ from the reference at P = 1", (long long)layer,
                    (long long)diffs);
  /* The group's last engine is the one of this layer. */
  epm_engine_stats_t st;
  epm_engine_stats(epm_group_last_engine(g), &st);
  CHECK(st.last_M == M, "last engine saw %lld gathered tokens, expected %lld", (long long)st.last_M, (long long)M);
  epm_layer_free(&full);
  free(x), free(ref), free(y), free(lg);
}

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  P = boot.ep_size;
  me = boot.ep_rank;
  epm_model_dims_t d;
  CHECK_OK(epm_model_preset("tiny", &d));

  const int64_t ids[2] = {2, 5};
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = "tiny";
  gc.seed = 11;
  gc.layer_ids = ids;
  gc.num_layers = 2;
  gc.threads = 1;
  gc.max_tokens_per_rank = 8;
  epm_group_t *g = NULL;
  CHECK_OK(epm_group_create(&gc, &boot, &g));

  epm_group_info_t in;
  epm_group_info(g, &in);
  CHECK(in.ep_rank == me && in.ep_size == P, "info rank %d/%d", in.ep_rank, in.ep_size);
  CHECK(in.local_experts == d.num_experts / P && in.first_expert == me * in.local_experts, "slice [%lld, +%lld)",
        (long long)in.first_expert, (long long)in.local_experts);
  CHECK(in.num_layers == 2 && in.hidden == d.hidden && in.num_experts == d.num_experts, "dims in info");
  CHECK(!strcmp(in.backend, "cpu") && !strcmp(in.model, "tiny"), "backend %s model %s", in.backend, in.model);
  CHECK(in.weight_bytes > 0 && in.buffer_bytes > 0, "bytes %llu %llu", (unsigned long long)in.weight_bytes,
        (unsigned long long)in.buffer_bytes);
  CHECK(epm_group_has_layer(g, 2) && epm_group_has_layer(g, 5) && !epm_group_has_layer(g, 0), "served layers");
  CHECK(epm_group_layer_id(g, 1) == 5 && epm_group_layer_id(g, 2) == -1, "layer ids");

  check_layer(g, &d, 5, 21);
  check_layer(g, &d, 2, 22);
  check_layer(g, &d, 5, 23);

  /* Local refusals: nothing is communicated, so one rank may fail alone. */
  epm_bf16_t one[1];
  epm_group_io_t io = {EPM_MEM_HOST, one, NULL, one, 0};
  CHECK(epm_group_step(g, 3, &io) == EPM_ERR_INVALID_ARG, "an unserved layer was accepted");
  CHECK(strstr(epm_last_error(), "layer 3 is not served") != NULL, "message: %s", epm_last_error());
  io.mem = EPM_MEM_DEVICE;
  CHECK(epm_group_step(g, 2, &io) == EPM_ERR_INVALID_ARG, "device memory accepted on cpu");
  CHECK(strstr(epm_last_error(), "cpu backend") != NULL, "message: %s", epm_last_error());
  epm_group_destroy(g);

  /* Set-up agreement: the last rank fails alone (a missing checkpoint). */
  epm_group_config_t bad = gc;
  if (me == P - 1) bad.model_dir = "/nonexistent/epmoe-group-test";
  epm_group_t *g2 = NULL;
  epm_status_t st = epm_group_create(&bad, &boot, &g2);
  CHECK(st != EPM_OK && g2 == NULL, "a failed set-up returned OK on rank %d", me);
  if (me == P - 1) {
    CHECK(st != EPM_ERR_ABORTED, "the failing rank should report its own reason, got %s", epm_status_name(st));
    CHECK(strstr(epm_last_error(), "/nonexistent/epmoe-group-test") != NULL, "message: %s", epm_last_error());
  } else {
    char want[64];
    snprintf(want, sizeof want, "first: rank %d", P - 1);
    CHECK(st == EPM_ERR_ABORTED, "got %s", epm_status_name(st));
    CHECK(strstr(epm_last_error(), want) != NULL, "message: %s", epm_last_error());
  }
  /* And the group still forms afterwards. */
  CHECK_OK(epm_group_create(&gc, &boot, &g2));
  check_layer(g2, &d, 2, 24);
  epm_group_destroy(g2);

  if (me == 0) printf("test_group_mpi: P = %d passed\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
