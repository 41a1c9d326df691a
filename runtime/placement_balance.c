/* SPDX-License-Identifier: Apache-2.0 */
/* placement_balance.c — per-rank load of a placement and the balanced map
 * computed from observed expert loads (epmoe/placement.h).
 *
 * The balancer follows DeepSeek's EPLB (the greedy behind vLLM's and SGLang's
 * rebalancing), without its node level: first replicate, then pack.
 *   replicate  each redundant slot goes to the expert whose per-replica load
 *              load[e] / n_e is the highest now; this minimises the largest
 *              per-replica load, the unit the packing cannot split.
 *   pack       replicas sorted by weight, heaviest first, each onto the least
 *              loaded rank with a free slot (longest-processing-time greedy
 *              with equal slot counts per rank); a rank already holding the
 *              expert is avoided when another rank has room, because two
 *              copies on one rank only split that rank's own work.
 * Every choice has an explicit tie rule, so the map is a pure function of
 * (E, P, redundant, load). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "epmoe/placement.h"

static epm_status_t check_load(const double *load, int64_t E) {
  for (int64_t e = 0; load && e < E; e++)
    if (!isfinite(load[e]) || load[e] < 0.0)
      return epm_error(EPM_ERR_INVALID_ARG, "load of expert %lld is %g; loads must be finite and >= 0",
                       (long long)e, load[e]);
  return EPM_OK;
}

epm_status_t epm_placement_rank_load(const epm_placement_t *p, const double *load, double *rank_load) {
  if (!p || !rank_load || !p->rank_start) return epm_error(EPM_ERR_INVALID_ARG, "placement rank load: NULL argument");
  EPM_TRY(check_load(load, p->num_experts));
  for (int64_t r = 0; r < p->ep_size; r++) {
    double sum = 0.0;
    for (int64_t s = p->rank_start[r]; s < p->rank_start[r + 1]; s++) {
      const int32_t e = p->slot_expert[s];
      sum += (load ? load[e] : 1.0) / (double)epm_placement_replicas(p, e);
    }
    rank_load[r] = sum;
  }
  return EPM_OK;
}

epm_status_t epm_placement_imbalance(const epm_placement_t *p, const double *load, double *imbalance, double *max,
                                     double *mean) {
  if (!p || !imbalance || !p->rank_start) return epm_error(EPM_ERR_INVALID_ARG, "placement imbalance: NULL argument");
  double *rl = malloc((size_t)p->ep_size * sizeof *rl);
  if (!rl) return epm_error(EPM_ERR_NOMEM, "rank loads of %lld ranks", (long long)p->ep_size);
  epm_status_t st = epm_placement_rank_load(p, load, rl);
  if (st == EPM_OK) {
    double hi = 0.0, sum = 0.0;
    for (int64_t r = 0; r < p->ep_size; r++) {
      sum += rl[r];
      if (rl[r] > hi) hi = rl[r];
    }
    const double mu = sum / (double)p->ep_size;
    *imbalance = mu > 0.0 ? hi / mu : 1.0;
    if (max) *max = hi;
    if (mean) *mean = mu;
  }
  free(rl);
  return st;
}

typedef struct {
  double w;        /* load of this replica */
  int32_t expert;
  int32_t replica; /* 0 .. n_e - 1 */
} item_t;

static int heavier_first(const void *a, const void *b) {
  const item_t *x = a, *y = b;
  if (x->w != y->w) return x->w > y->w ? -1 : 1;
  if (x->expert != y->expert) return x->expert < y->expert ? -1 : 1;
  return (x->replica > y->replica) - (x->replica < y->replica);
}

static int by_expert(const void *a, const void *b) {
  const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

epm_status_t epm_placement_balance(int64_t E, int64_t P, int64_t redundant, const double *load,
                                   epm_placement_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "placement balance: out is NULL");
  /* The default map checks E, P and the slot count with the same messages. */
  epm_placement_t shape = EPM_PLACEMENT_INIT;
  EPM_TRY(epm_placement_default(E, P, redundant, &shape));
  epm_placement_free(&shape);
  EPM_TRY(check_load(load, E));
  const int64_t S = E + redundant;
  int64_t *nrep = calloc((size_t)E, sizeof *nrep), *cap = malloc((size_t)P * sizeof *cap);
  int64_t *used = calloc((size_t)P, sizeof *used);
  double *rload = calloc((size_t)P, sizeof *rload);
  item_t *items = malloc((size_t)S * sizeof *items);
  const int64_t maxcap = S / P + (S % P != 0);
  int32_t *bank = malloc((size_t)(P * maxcap) * sizeof *bank); /* [P][maxcap]: each rank's experts */
  uint8_t *holds = calloc((size_t)E * (size_t)P, 1);           /* [E][P]: rank holds a copy of e */
  epm_status_t st = EPM_OK;
  if (!nrep || !cap || !used || !rload || !items || !bank || !holds) {
    st = epm_error(EPM_ERR_NOMEM, "placement balance of %lld experts over %lld ranks", (long long)E, (long long)P);
    goto out;
  }
  /* Replicate: one slot at a time to the highest load per replica. */
  for (int64_t e = 0; e < E; e++) nrep[e] = 1;
  for (int64_t i = 0; i < redundant; i++) {
    int64_t best = 0;
    double bw = -1.0;
    for (int64_t e = 0; e < E; e++) {
      const double w = (load ? load[e] : 1.0) / (double)nrep[e];
      if (w > bw) bw = w, best = e;
    }
    nrep[best]++;
  }
  int64_t n = 0;
  for (int64_t e = 0; e < E; e++)
    for (int64_t j = 0; j < nrep[e]; j++)
      items[n++] = (item_t){(load ? load[e] : 1.0) / (double)nrep[e], (int32_t)e, (int32_t)j};
  qsort(items, (size_t)n, sizeof *items, heavier_first);
  for (int64_t r = 0; r < P; r++) cap[r] = S / P + (r < S % P);
  /* Pack: least loaded rank with room, a rank without this expert first. */
  for (int64_t i = 0; i < n; i++) {
    const int32_t e = items[i].expert;
    int64_t best = -1;
    int best_fresh = 0;
    for (int64_t r = 0; r < P; r++) {
      if (used[r] >= cap[r]) continue;
      const int fresh = !holds[e * P + r];
      if (best < 0 || fresh > best_fresh || (fresh == best_fresh && rload[r] < rload[best])) {
        best = r;
        best_fresh = fresh;
      }
    }
    bank[best * maxcap + used[best]++] = e;
    holds[e * P + best] = 1;
    rload[best] += items[i].w;
  }
  {
    int32_t *se = malloc((size_t)S * sizeof *se);
    if (!se) {
      st = epm_error(EPM_ERR_NOMEM, "placement of %lld slots", (long long)S);
      goto out;
    }
    int64_t s = 0;
    for (int64_t r = 0; r < P; r++) {
      qsort(bank + r * maxcap, (size_t)used[r], sizeof *bank, by_expert);
      for (int64_t j = 0; j < used[r]; j++) se[s++] = bank[r * maxcap + j];
    }
    st = epm_placement_from_slots(E, P, cap, se, out);
    free(se);
  }
out:
  free(nrep);
  free(cap);
  free(used);
  free(rload);
  free(items);
  free(bank);
  free(holds);
  return st;
}
