/* SPDX-License-Identifier: Apache-2.0 */
/* placement.c — the expert placement map (epmoe/placement.h): building and
 * validating it, the default contiguous split, the per-rank lookup table the
 * kernels read, comparison and hashing. Balancing is placement_balance.c,
 * JSON files placement_json.c. */
#include "epmoe/placement.h"

#include <stdlib.h>
#include <string.h>

void epm_placement_free(epm_placement_t *p) {
  if (!p) return;
  free(p->rank_start);
  free(p->slot_expert);
  free(p->replica_start);
  free(p->replica_slot);
  memset(p, 0, sizeof *p);
}

static epm_status_t check_sizes(int64_t E, int64_t P, int64_t S) {
  if (E < 1) return epm_error(EPM_ERR_INVALID_ARG, "placement: %lld experts; need at least 1", (long long)E);
  if (P < 1) return epm_error(EPM_ERR_INVALID_ARG, "placement: EP size %lld; need at least 1", (long long)P);
  if (S > EPM_PLACEMENT_MAX_SLOTS || E > EPM_PLACEMENT_MAX_SLOTS)
    return epm_error(EPM_ERR_INVALID_ARG, "placement: %lld slots for %lld experts exceeds the limit of %lld",
                     (long long)S, (long long)E, (long long)EPM_PLACEMENT_MAX_SLOTS);
  if (S < P)
    return epm_error(EPM_ERR_INVALID_ARG,
                     "placement: %lld slots (%lld experts + %lld redundant) cannot give each of %lld ranks a slot; "
                     "use at most %lld ranks or add redundant experts",
                     (long long)S, (long long)E, (long long)(S - E), (long long)P, (long long)S);
  return EPM_OK;
}

/* Everything derived from rank_start + slot_expert: the replica lists. */
static epm_status_t index_replicas(epm_placement_t *p) {
  const int64_t E = p->num_experts, S = p->num_slots;
  int32_t *fill = calloc((size_t)E, sizeof *fill);
  p->replica_start = calloc((size_t)E + 1, sizeof *p->replica_start);
  p->replica_slot = malloc((size_t)S * sizeof *p->replica_slot);
  if (!fill || !p->replica_start || !p->replica_slot) {
    free(fill);
    return epm_error(EPM_ERR_NOMEM, "placement: replica lists of %lld experts, %lld slots", (long long)E,
                     (long long)S);
  }
  for (int64_t s = 0; s < S; s++) p->replica_start[p->slot_expert[s] + 1]++;
  for (int64_t e = 0; e < E; e++) p->replica_start[e + 1] += p->replica_start[e];
  /* Ascending slots within an expert: the replica rule's order. */
  for (int64_t s = 0; s < S; s++) {
    const int32_t e = p->slot_expert[s];
    p->replica_slot[p->replica_start[e] + fill[e]++] = (int32_t)s;
  }
  free(fill);
  return EPM_OK;
}

epm_status_t epm_placement_from_slots(int64_t E, int64_t P, const int64_t *per_rank, const int32_t *slot_expert,
                                      epm_placement_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "placement: out is NULL");
  if (P >= 1 && !per_rank) return epm_error(EPM_ERR_INVALID_ARG, "placement: slots_per_rank is NULL");
  int64_t S = 0;
  for (int64_t r = 0; r < P; r++) {
    if (per_rank[r] < 1)
      return epm_error(EPM_ERR_INVALID_ARG, "placement: rank %lld holds %lld slots; every rank needs at least one",
                       (long long)r, (long long)per_rank[r]);
    if (per_rank[r] > EPM_PLACEMENT_MAX_SLOTS || S + per_rank[r] > EPM_PLACEMENT_MAX_SLOTS)
      return epm_error(EPM_ERR_INVALID_ARG, "placement: more than %lld slots at rank %lld",
                       (long long)EPM_PLACEMENT_MAX_SLOTS, (long long)r);
    S += per_rank[r];
  }
  EPM_TRY(check_sizes(E, P, S));
  if (!slot_expert) return epm_error(EPM_ERR_INVALID_ARG, "placement: slot_expert is NULL");
  epm_placement_t p = {E, P, S, NULL, NULL, NULL, NULL};
  epm_status_t st = EPM_OK;
  uint8_t *seen = calloc((size_t)E, 1);
  p.rank_start = malloc((size_t)(P + 1) * sizeof *p.rank_start);
  p.slot_expert = malloc((size_t)S * sizeof *p.slot_expert);
  if (!seen || !p.rank_start || !p.slot_expert) {
    st = epm_error(EPM_ERR_NOMEM, "placement of %lld slots over %lld ranks", (long long)S, (long long)P);
    goto out;
  }
  p.rank_start[0] = 0;
  for (int64_t r = 0; r < P; r++) {
    p.rank_start[r + 1] = p.rank_start[r] + per_rank[r];
    for (int64_t s = p.rank_start[r]; s < p.rank_start[r + 1]; s++) {
      const int32_t e = slot_expert[s];
      if (e < 0 || e >= E) {
        st = epm_error(EPM_ERR_INVALID_ARG, "placement: rank %lld slot %lld holds expert %d; experts are [0, %lld)",
                       (long long)r, (long long)(s - p.rank_start[r]), e, (long long)E);
        goto out;
      }
      p.slot_expert[s] = e;
      seen[e] = 1;
    }
  }
  for (int64_t e = 0; e < E; e++)
    if (!seen[e]) {
      st = epm_error(EPM_ERR_INVALID_ARG, "placement: expert %lld has no slot (every expert of [0, %lld) needs one)",
                     (long long)e, (long long)E);
      goto out;
    }
  st = index_replicas(&p);
out:
  free(seen);
  if (st != EPM_OK) {
    epm_placement_free(&p);
    return st;
  }
  *out = p;
  return EPM_OK;
}

epm_status_t epm_placement_default(int64_t E, int64_t P, int64_t redundant, epm_placement_t *out) {
  if (!out) return epm_error(EPM_ERR_INVALID_ARG, "placement: out is NULL");
  if (redundant < 0 || redundant > EPM_PLACEMENT_MAX_SLOTS)
    return epm_error(EPM_ERR_INVALID_ARG, "placement: %lld redundant experts; need 0 .. %lld", (long long)redundant,
                     (long long)EPM_PLACEMENT_MAX_SLOTS);
  EPM_TRY(check_sizes(E, P, E + redundant));
  const int64_t S = E + redundant;
  int64_t *per = malloc((size_t)P * sizeof *per);
  int32_t *se = malloc((size_t)S * sizeof *se);
  epm_status_t st;
  if (!per || !se) {
    st = epm_error(EPM_ERR_NOMEM, "placement of %lld slots over %lld ranks", (long long)S, (long long)P);
  } else {
    /* The remainder goes to the first ranks (vLLM's split). */
    for (int64_t r = 0; r < P; r++) per[r] = S / P + (r < S % P);
    for (int64_t s = 0; s < S; s++) se[s] = (int32_t)(s % E);
    st = epm_placement_from_slots(E, P, per, se, out);
  }
  free(per);
  free(se);
  return st;
}

epm_status_t epm_placement_copy(const epm_placement_t *src, epm_placement_t *out) {
  if (!src || !out || !src->rank_start) return epm_error(EPM_ERR_INVALID_ARG, "placement copy: NULL or empty map");
  int64_t *per = malloc((size_t)src->ep_size * sizeof *per);
  if (!per) return epm_error(EPM_ERR_NOMEM, "placement copy of %lld ranks", (long long)src->ep_size);
  for (int64_t r = 0; r < src->ep_size; r++) per[r] = epm_placement_rank_slots(src, r);
  epm_status_t st = epm_placement_from_slots(src->num_experts, src->ep_size, per, src->slot_expert, out);
  free(per);
  return st;
}

int epm_placement_equal(const epm_placement_t *a, const epm_placement_t *b) {
  if (a->num_experts != b->num_experts || a->ep_size != b->ep_size || a->num_slots != b->num_slots) return 0;
  return memcmp(a->rank_start, b->rank_start, (size_t)(a->ep_size + 1) * sizeof *a->rank_start) == 0 &&
         memcmp(a->slot_expert, b->slot_expert, (size_t)a->num_slots * sizeof *a->slot_expert) == 0;
}

static uint64_t fnv_i64(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; i++) {
    h ^= (uint64_t)v >> (8 * i) & 0xffu;
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

uint64_t epm_placement_hash(const epm_placement_t *p) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  h = fnv_i64(h, p->num_experts);
  h = fnv_i64(h, p->ep_size);
  for (int64_t r = 0; r <= p->ep_size; r++) h = fnv_i64(h, p->rank_start[r]);
  for (int64_t s = 0; s < p->num_slots; s++) h = fnv_i64(h, p->slot_expert[s]);
  return h;
}

int64_t epm_placement_slot_rank(const epm_placement_t *p, int64_t slot) {
  int64_t lo = 0, hi = p->ep_size - 1; /* the last rank whose start <= slot */
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (p->rank_start[mid] <= slot) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

epm_status_t epm_placement_local_map(const epm_placement_t *p, int64_t rank, int32_t *rep_local) {
  if (!p || !rep_local || !p->rank_start) return epm_error(EPM_ERR_INVALID_ARG, "placement local map: NULL argument");
  if (rank < 0 || rank >= p->ep_size)
    return epm_error(EPM_ERR_INVALID_ARG, "placement local map: rank %lld is outside [0, %lld)", (long long)rank,
                     (long long)p->ep_size);
  const int64_t lo = p->rank_start[rank], hi = p->rank_start[rank + 1];
  for (int64_t i = 0; i < p->num_slots; i++) {
    const int64_t s = p->replica_slot[i];
    rep_local[i] = s >= lo && s < hi ? (int32_t)(s - lo) : -1;
  }
  return EPM_OK;
}
