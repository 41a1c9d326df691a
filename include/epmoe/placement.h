/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/placement.h — where the experts of a layer live: logical expert ->
 * one or more physical slots on the ranks of the EP group.
 *
 * E logical experts (the router's outputs) are served by S >= E physical
 * slots. Slots are numbered rank by rank: rank r holds the global slots
 * [rank_start[r], rank_start[r + 1]), and slot s holds the weights of logical
 * expert slot_expert[s]. An expert with n > 1 slots is replicated: S - E
 * slots are "redundant" copies of hot experts (DeepSeek's EPLB, as vLLM and
 * SGLang use it), loaded from the same checkpoint tensors (or the same
 * generator stream) as the original.
 *
 * The replica rule: the (token t, logical expert e) pair of the gathered
 * batch (t = the token's row in rank order) goes to replica t mod n_e of e,
 * n_e = its number of slots, replicas in ascending slot order. Exactly one
 * replica serves each pair and every replica computes the same bits, so the
 * output does not depend on the placement (only the fp32 summation order of
 * a token's terms across ranks does; docs/ARCHITECTURE.md "Engine"). The
 * kernels and the CPU reference apply the rule through one per-rank table
 * (epm_placement_local_map, epm_moe_local_slot in epmoe/kernels.h).
 *
 * The default map is the contiguous split with the remainder spread over the
 * first ranks: rank r holds floor(S/P) slots, one more when r < S mod P; slot
 * s holds expert s mod E (so with N redundant slots, experts 0..N-1 get the
 * second copies). epm_placement_balance() computes a map from observed loads;
 * maps travel as JSON files (docs/PLACEMENT.md).
 *
 * Thread safety: a map is read-only after it is built; functions are
 * reentrant. Errors go to the calling thread's epm_last_error().
 */
#ifndef EPMOE_PLACEMENT_H
#define EPMOE_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits: slot and expert ids are int32 on the device. */
#define EPM_PLACEMENT_MAX_SLOTS (INT64_C(1) << 24)

typedef struct {
  int64_t num_experts;    /* E */
  int64_t ep_size;        /* P */
  int64_t num_slots;      /* S = E + redundant */
  int64_t *rank_start;    /* [P + 1], rank_start[0] = 0, rank_start[P] = S */
  int32_t *slot_expert;   /* [S] logical expert of each slot */
  int32_t *replica_start; /* [E + 1] replicas of e: replica_slot[replica_start[e] .. replica_start[e + 1]) */
  int32_t *replica_slot;  /* [S] slots grouped by expert, ascending within an expert */
} epm_placement_t;

#define EPM_PLACEMENT_INIT {0, 0, 0, NULL, NULL, NULL, NULL}

/* The default map of E experts + `redundant` copies over P ranks (above).
 * EPM_ERR_INVALID_ARG names the numbers when E < 1, P < 1, redundant < 0, a
 * rank would hold no slot (E + redundant < P) or S exceeds the limit. */
epm_status_t epm_placement_default(int64_t num_experts, int64_t ep_size, int64_t redundant,
                                   epm_placement_t *out);

/* A map from its slots: rank r holds slots_per_rank[r] slots, slot_expert
 * lists every slot's logical expert rank by rank. Validated: every count
 * >= 1, every expert id in [0, E), every expert placed at least once; the
 * error names the bad entry ("rank 2 slot 3 holds expert 40; experts are
 * [0, 16)", "expert 7 has no slot"). Inputs are copied. */
epm_status_t epm_placement_from_slots(int64_t num_experts, int64_t ep_size, const int64_t *slots_per_rank,
                                      const int32_t *slot_expert, epm_placement_t *out);
epm_status_t epm_placement_copy(const epm_placement_t *src, epm_placement_t *out);
void epm_placement_free(epm_placement_t *p); /* accepts a zeroed struct; idempotent */

/* 1 when both maps are the same (E, P, every rank's slots). */
int epm_placement_equal(const epm_placement_t *a, const epm_placement_t *b);
/* fnv1a64 over E, P and every rank's slots: ranks compare it to agree that
 * they all loaded the same map. */
uint64_t epm_placement_hash(const epm_placement_t *p);

static inline int64_t epm_placement_rank_slots(const epm_placement_t *p, int64_t rank) {
  return p->rank_start[rank + 1] - p->rank_start[rank];
}
static inline int64_t epm_placement_replicas(const epm_placement_t *p, int64_t expert) {
  return (int64_t)p->replica_start[expert + 1] - p->replica_start[expert];
}
/* The global slot serving (token, expert): the replica rule above. */
static inline int64_t epm_placement_slot(const epm_placement_t *p, int64_t expert, int64_t token) {
  return p->replica_slot[p->replica_start[expert] + token % epm_placement_replicas(p, expert)];
}
/* The rank holding global slot s (0 <= s < S). */
int64_t epm_placement_slot_rank(const epm_placement_t *p, int64_t slot);

/* One rank's lookup table, the form the kernels read (epm_moe_local_slot):
 * rep_local[i] = the bank index on `rank` of replica i (i indexing
 * replica_slot), -1 when that replica lives on another rank. [out] rep_local
 * holds num_slots entries; the expert offsets are p->replica_start. */
epm_status_t epm_placement_local_map(const epm_placement_t *p, int64_t rank, int32_t *rep_local);

/* ---- load ----------------------------------------------------------------
 * load[e] >= 0 is the work of logical expert e (tokens routed to it; NULL =
 * uniform, 1 each). The replica rule spreads an expert's pairs evenly, so a
 * slot of e carries load[e] / n_e and a rank the sum over its slots. */
epm_status_t epm_placement_rank_load(const epm_placement_t *p, const double *load, double *rank_load);
/* max over ranks / mean over ranks of the rank load (1 = perfectly even;
 * 1 when there is no load at all). max and mean may be NULL. */
epm_status_t epm_placement_imbalance(const epm_placement_t *p, const double *load, double *imbalance,
                                     double *max, double *mean);

/* A balanced map of E experts + `redundant` copies over P ranks, in the
 * manner of DeepSeek's EPLB: the redundant slots go one at a time to the
 * expert with the highest load per replica (ties: lower expert id), then the
 * replicas, heaviest first (load[e] / n_e; ties: lower expert, then lower
 * replica), each go to the least loaded rank that still has a free slot,
 * preferring ranks that do not hold that expert yet (ties: lower rank).
 * Ranks get equal slot counts (the first S mod P one more). Within a rank
 * the slots are sorted by expert id. load as above (NULL = uniform). */
epm_status_t epm_placement_balance(int64_t num_experts, int64_t ep_size, int64_t redundant, const double *load,
                                   epm_placement_t *out);

/* ---- JSON files (docs/PLACEMENT.md) -----------------------------------------
 *   {"format": "epmoe-placement", "version": 1, "num_experts": E, "ep_size": P,
 *    "redundant_experts": S - E, "ranks": [[experts of rank 0's slots], ...]}
 * plus optional informational members, ignored when read ("load": the load
 * vector the map was balanced for, "imbalance": ...). Reading checks the
 * format and version, that "ranks" has ep_size lists, that num_experts and
 * redundant_experts agree with the slots, and everything
 * epm_placement_from_slots checks; errors name the file and the entry. */
/* [out] *text malloc'd, NUL-terminated; load (may be NULL) is written as
 * "load" with the imbalance it gives. */
epm_status_t epm_placement_to_json(const epm_placement_t *p, const double *load, char **text);
epm_status_t epm_placement_from_json(const char *text, size_t len, const char *what, epm_placement_t *out);
epm_status_t epm_placement_load_file(const char *path, epm_placement_t *out);
epm_status_t epm_placement_save_file(const epm_placement_t *p, const double *load, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_PLACEMENT_H */
