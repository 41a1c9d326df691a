/* SPDX-License-Identifier: Apache-2.0 */
/* test_placement_mpi.c — groups on expert placements under mpirun (run at
 * P = 3 and 5: the tiny preset's 16 experts do not divide).
 *
 * Oracle: the CPU reference full layer (EP = 1) on the global token set,
 * recomputed by every rank, and its routing for the load.
 *   - the default split (first E mod P ranks one expert more), redundant
 *     slots, a hand-made map with non-contiguous experts and replicas, and a
 *     map balanced from the load the first group observed: every rank's y is
 *     bit-identical to the reference (fp32 partials: each token's terms sum
 *     exactly, so the cross-rank order does not show; measured, asserted)
 *   - the per-expert load (epm_group_expert_load), summed over the ranks,
 *     equals the reference routing's count per expert, per step and in total
 *   - the balanced map lowers the expected max/mean rank load of that load
 *   - every rank refuses when the ranks pass different maps; an engine
 *     refuses a layer placed with another map
 */
#include <math.h>

#include "comm_check.h"
#include "epmoe/group.h"
#include "epmoe/moe_ref.h"
#include "epmoe/placement.h"
#include "epmoe/tokens.h"

static int P, me;
static epm_bootstrap_t boot;
static epm_model_dims_t d;

/* Two steps of one token set (unequal counts, zeros) through the group: y
 * against the reference bit for bit; the load against the routing. Returns
 * the group's load summed over the ranks (per expert) in load[]. */
static void check_group(epm_group_t *g, const char *what, uint64_t tok_seed, double *load) {
  const int64_t H = d.hidden, E = d.num_experts, k = d.top_k;
  int64_t M = 0, off = 0, m = 0;
  for (int r = 0; r < P; r++) {
    int64_t c = (5 * r + 3 + (int64_t)tok_seed) % 17; /* unequal, some zero */
    if (r == me) off = M, m = c;
    M += c;
  }
  epm_bf16_t *x = malloc((size_t)(M * H + 1) * 2), *ref = malloc((size_t)(M * H + 1) * 2),
             *y = malloc((size_t)(m * H + 1) * 2);
  float *lg = malloc((size_t)(M * E + 1) * 4), *w = malloc((size_t)(M * k + 1) * 4);
  int32_t *ids = malloc((size_t)(M * k + 1) * 4);
  int64_t *cnt = calloc((size_t)(3 * E), sizeof *cnt);
  uint64_t *tot = calloc((size_t)E, sizeof *tot), *last = calloc((size_t)E, sizeof *last);
  CHECK(x && ref && y && lg && w && ids && cnt && tot && last, "oom");
  CHECK_OK(epm_tokens_generate(&d, tok_seed, 0, M, x, lg));
  epm_layer_t full = {0};
  CHECK_OK(epm_layer_generate(&d, 0, 11, 0, E, &full));
  epm_moe_ref_opts_t o = EPM_MOE_REF_OPTS_INIT;
  o.threads = 1;
  CHECK_OK(epm_moe_ref_layer(&full, x, lg, M, &o, ids, w, NULL, ref, NULL));
  epm_group_io_t io = {EPM_MEM_HOST, x + off * H, lg + off * E, y, m};
  for (int step = 0; step < 2; step++) {
    CHECK_OK(epm_group_step(g, 0, &io));
    int64_t diffs = 0;
    for (int64_t i = 0; i < m * H; i++) diffs += y[i] != ref[off * H + i];
    int64_t all = diffs;
    CHECK_OK(epm_bootstrap_allreduce_i64(&boot, &all, 1, EPM_BOOT_SUM));
    if (me == 0 && step == 0)
      printf("%s: %lld of %lld outputs differ from EP=1\n", what, (long long)all, (long long)(M * H));
    CHECK(diffs == 0, "%s, step %d: %lld of this rank's %lld outputs differ from the EP=1 reference", what, step,
          (long long)diffs, (long long)(m * H));
  }
  /* The load: this rank's own tokens' experts, summed over the ranks. */
  CHECK_OK(epm_group_expert_load(g, tot, last, E));
  for (int64_t e = 0; e < E; e++) cnt[e] = (int64_t)last[e], cnt[E + e] = (int64_t)tot[e];
  for (int64_t i = 0; i < m * k; i++) cnt[2 * E + ids[off * k + i]]++; /* this rank's rows of the routing */
  CHECK_OK(epm_bootstrap_allreduce_i64(&boot, cnt, (int)(3 * E), EPM_BOOT_SUM));
  int64_t want_all = 0;
  for (int64_t e = 0; e < E; e++) {
    int64_t want = 0;
    for (int64_t i = 0; i < M * k; i++) want += ids[i] == e;
    CHECK(cnt[2 * E + e] == want, "test's own count"); /* the ranks' rows cover the set */
    CHECK(cnt[e] == want && cnt[E + e] == 2 * want, "%s: expert %lld load last %lld total %lld, routing says %lld",
          what, (long long)e, (long long)cnt[e], (long long)cnt[E + e], (long long)want);
    if (load) load[e] = (double)cnt[e];
    want_all += want;
  }
  CHECK(want_all == M * k, "pairs %lld", (long long)want_all);
  epm_layer_free(&full);
  free(x), free(ref), free(y), free(lg), free(w), free(ids), free(cnt), free(tot), free(last);
}

static epm_group_t *make(const epm_placement_t *pl, int64_t redundant) {
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = "tiny";
  gc.seed = 11;
  gc.num_layers = 1;
  gc.threads = 1;
  gc.max_tokens_per_rank = 16;
  gc.placement = pl;
  gc.redundant_experts = redundant;
  epm_group_t *g = NULL;
  CHECK_OK(epm_group_create(&gc, &boot, &g));
  /* info agrees with the map */
  epm_group_info_t in;
  epm_group_info(g, &in);
  const epm_placement_t *gp = epm_group_placement(g);
  CHECK(in.num_slots == gp->num_slots && in.first_expert == gp->rank_start[me] &&
            in.local_experts == epm_placement_rank_slots(gp, me),
        "info: slots [%lld, +%lld) of %lld", (long long)in.first_expert, (long long)in.local_experts,
        (long long)in.num_slots);
  return g;
}

/* A map with experts scattered over the ranks and a few replicas, the same
 * on every rank (seeded). */
static void scattered_map(epm_placement_t *out) {
  const int64_t E = d.num_experts, S = E + P;
  int32_t *se = malloc((size_t)S * sizeof *se);
  int64_t *per = malloc((size_t)P * sizeof *per);
  CHECK(se && per, "oom");
  uint64_t s = 5;
  for (int64_t i = 0; i < E; i++) se[i] = (int32_t)i;
  for (int64_t i = E - 1; i > 0; i--) { /* shuffle */
    const int64_t j = (int64_t)(cc_mix(s++) % (uint64_t)(i + 1));
    int32_t t = se[i];
    se[i] = se[j];
    se[j] = t;
  }
  for (int64_t i = E; i < S; i++) se[i] = (int32_t)((i * 7) % E); /* replicas */
  for (int r = 0; r < P; r++) per[r] = 1; /* uneven counts, every rank >= 1 */
  for (int64_t i = P; i < S; i++) per[cc_mix(s++) % (uint64_t)P]++;
  CHECK_OK(epm_placement_from_slots(E, P, per, se, out));
  free(se);
  free(per);
}

int main(int argc, char **argv) {
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  P = boot.ep_size;
  me = boot.ep_rank;
  CHECK_OK(epm_model_preset("tiny", &d));
  const int64_t E = d.num_experts;
  double load[16], uni = 0, imb_d = 0, imb_b = 0;
  CHECK(E == 16, "tiny has 16 experts");

  epm_group_t *g = make(NULL, 0);
  const epm_placement_t *gp = epm_group_placement(g);
  CHECK(gp->num_slots == E && epm_placement_rank_slots(gp, me) == E / P + (me < E % P), "default split");
  check_group(g, "default split", 31, load);
  CHECK_OK(epm_placement_imbalance(gp, load, &imb_d, NULL, NULL));
  epm_group_destroy(g);

  g = make(NULL, P + 1);
  CHECK(epm_group_placement(g)->num_slots == E + P + 1, "redundant slots");
  check_group(g, "default split + redundant", 32, NULL);
  epm_group_destroy(g);

  epm_placement_t scat = EPM_PLACEMENT_INIT;
  scattered_map(&scat);
  g = make(&scat, 0);
  check_group(g, "scattered map with replicas", 33, NULL);
  epm_group_destroy(g);

  /* Rebalance from the load the default group observed. */
  epm_placement_t bal = EPM_PLACEMENT_INIT;
  CHECK_OK(epm_placement_balance(E, P, 3, load, &bal));
  CHECK_OK(epm_placement_imbalance(&bal, load, &imb_b, NULL, NULL));
  CHECK_OK(epm_placement_imbalance(&bal, NULL, &uni, NULL, NULL));
  if (me == 0) printf("observed load: default split max/mean %.4f, balanced (+3 slots) %.4f\n", imb_d, imb_b);
  CHECK(imb_b <= imb_d, "the balanced map is worse: %.4f > %.4f", imb_b, imb_d);
  g = make(&bal, 0);
  check_group(g, "balanced from observed load", 31, NULL);

  /* An engine refuses a layer placed with another map that routes
   * differently here: this rank's slots unchanged, but on another rank a
   * copy of a replicated expert becomes a copy of this rank's first expert,
   * which changes that expert's replica list. The engine must accept exactly
   * when this rank's replica table is unchanged. */
  {
    const epm_placement_t *a = epm_group_placement(g);
    int32_t *se = malloc((size_t)a->num_slots * sizeof *se);
    int64_t *per = malloc((size_t)P * sizeof *per);
    CHECK(se && per, "oom");
    memcpy(se, a->slot_expert, (size_t)a->num_slots * sizeof *se);
    for (int r = 0; r < P; r++) per[r] = epm_placement_rank_slots(a, r);
    for (int64_t s2 = 0; s2 < a->num_slots; s2++)
      if (epm_placement_slot_rank(a, s2) != me && epm_placement_replicas(a, se[s2]) > 1) {
        se[s2] = a->slot_expert[a->rank_start[me]];
        break;
      }
    epm_placement_t other = EPM_PLACEMENT_INIT;
    CHECK_OK(epm_placement_from_slots(E, P, per, se, &other));
    int32_t *t1 = malloc((size_t)a->num_slots * 4), *t2 = malloc((size_t)a->num_slots * 4);
    CHECK_OK(epm_placement_local_map(a, me, t1));
    CHECK_OK(epm_placement_local_map(&other, me, t2));
    const int same = memcmp(a->replica_start, other.replica_start, (size_t)(E + 1) * 4) == 0 &&
                     memcmp(t1, t2, (size_t)a->num_slots * 4) == 0;
    epm_engine_config_t ec = EPM_ENGINE_CONFIG_INIT;
    ec.max_tokens_per_rank = 4;
    ec.placement = &other;
    epm_engine_t *eng = NULL;
    epm_status_t st = epm_engine_create(&ec, epm_group_layer(g, 0), epm_group_comm(g), epm_group_backend(g), &eng);
    if (same) {
      CHECK_OK(st);
      epm_engine_destroy(eng);
    } else {
      CHECK(st == EPM_ERR_INVALID_ARG && eng == NULL, "a layer of another map accepted");
      CHECK(strstr(epm_last_error(), "placed with another map"), "message: %s", epm_last_error());
    }
    int64_t refused = !same;
    CHECK_OK(epm_bootstrap_allreduce_i64(&boot, &refused, 1, EPM_BOOT_SUM));
    CHECK(refused > 0, "no rank saw a map that routes differently: the case tested nothing");
    free(se), free(per), free(t1), free(t2);
    epm_placement_free(&other);
  }
  epm_group_destroy(g);

  /* Different maps on different ranks: every rank refuses. */
  epm_group_config_t gc = EPM_GROUP_CONFIG_INIT;
  gc.preset = "tiny";
  gc.seed = 11;
  gc.threads = 1;
  gc.max_tokens_per_rank = 4;
  gc.placement = me == 0 ? &scat : &bal;
  epm_group_t *g2 = NULL;
  epm_status_t st = epm_group_create(&gc, &boot, &g2);
  CHECK(st == EPM_ERR_INVALID_ARG && g2 == NULL, "different maps accepted on rank %d: %s", me, epm_status_name(st));
  CHECK(strstr(epm_last_error(), "different expert placements"), "message: %s", epm_last_error());
  /* A map of the wrong size: refused on every rank before any step. */
  epm_placement_t wrong = EPM_PLACEMENT_INIT;
  CHECK_OK(epm_placement_default(E, P + 1, 0, &wrong));
  gc.placement = &wrong;
  st = epm_group_create(&gc, &boot, &g2);
  CHECK(st == EPM_ERR_INVALID_ARG && strstr(epm_last_error(), "16 experts over"), "wrong-size map: %s",
        epm_last_error());

  epm_placement_free(&wrong);
  epm_placement_free(&scat);
  epm_placement_free(&bal);
  if (me == 0) printf("test_placement_mpi: P = %d passed\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
