/* SPDX-License-Identifier: Apache-2.0 */
/* epmoe/dispatch.h — how a step moves tokens to the expert owners and the
 * partial outputs back: the two dispatch modes, the bytes each moves, and
 * the small cost model that `auto` picks with.
 *
 *   allgather  every token to every rank (allgather-v of NVFP4 rows, scales,
 *              ids, weights), experts over all M rows, reduce-scatter-v of
 *              the partials. Per rank r with m_r tokens (P ranks, M total):
 *                sent     (P-1) m_r Bd + (M - m_r) Bc
 *                received (M - m_r) Bd + (P-1) m_r Bc
 *   alltoall   each token once to every rank owning at least one of its
 *              top-k experts, experts over the received rows only, partials
 *              back to the token's rank, summed there in rank order. With
 *              C[s][d] = token rows rank s sends to rank d:
 *                sent     sum_{d != r} C[r][d] Bd + sum_{s != r} C[s][r] Bc
 *                received sum_{s != r} C[s][r] Bd + sum_{d != r} C[r][d] Bc
 * Bd = H/2 + H/16 + 8k bytes (NVFP4 codes, E4M3 scales, int32 ids, fp32
 * weights of one token), Bc = 4H (fp32 partials) or 2H (bf16). Bytes that
 * stay on the rank are not counted (ep-comm-anchors.md section 4.2).
 *
 * Cost of a mode for one step (seconds):
 *   latency_us[mode] * 1e-6 + busiest(mode) / (gbps[mode] * 1e9)
 * where busiest = the largest max(sent, received) over the ranks (links are
 * full duplex; the slowest rank ends the step). alltoall never moves more
 * bytes than allgather, so what allgather buys is a lower fixed cost: one
 * collective per direction tuned by MPI/NCCL instead of a counts exchange,
 * packing and per-peer messages. Calibrate both terms per machine with
 * epm_dispatch_calibrate (`epmoectl step --calibrate-dispatch`).
 */
#ifndef EPMOE_DISPATCH_H
#define EPMOE_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/backend.h"
#include "epmoe/comm.h"
#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  EPM_DISPATCH_ALLGATHER = 0,
  EPM_DISPATCH_ALLTOALL = 1,
  EPM_DISPATCH_AUTO = 2, /* per step, the cheaper of the two by the cost model */
} epm_dispatch_mode_t;

/* The modes a step actually runs (allgather, alltoall): array sizes below. */
#define EPM_DISPATCH_MODES 2

/* "allgather" | "alltoall" | "auto"; EPM_ERR_INVALID_ARG lists the names. */
epm_status_t epm_dispatch_mode_parse(const char *name, epm_dispatch_mode_t *out);
const char *epm_dispatch_mode_name(epm_dispatch_mode_t mode);

typedef struct {
  double latency_us[EPM_DISPATCH_MODES]; /* fixed cost of one step's dispatch + combine, >= 0 */
  double gbps[EPM_DISPATCH_MODES];       /* payload GB/s (1e9 bytes) of the busiest rank, > 0 */
} epm_dispatch_cost_t;

/* Uncalibrated terms (see the .c file for where they come from). */
void epm_dispatch_cost_default(epm_dispatch_cost_t *out);
/* "AG,A2A" pairs: latency_us and gbps strings as the tools take them
 * (either may be NULL or "" to keep *inout's value). A bad number names the
 * string and the rule. */
epm_status_t epm_dispatch_cost_parse(const char *latency_us, const char *gbps, epm_dispatch_cost_t *inout);
/* Each term finite, latency >= 0, gbps > 0; the message names the term. */
epm_status_t epm_dispatch_cost_validate(const epm_dispatch_cost_t *c);

/* Bytes of one token row: dispatch Bd, combine Bc (see above). */
epm_status_t epm_dispatch_row_bytes(int64_t hidden, int64_t top_k, epm_dtype_t partial, int64_t *dispatch_row,
                                    int64_t *combine_row);

/* Bytes every rank sends and receives in `mode` (ALLGATHER or ALLTOALL) for
 * one step: m[P] tokens per rank, counts[P*P] token rows s -> d (read by
 * alltoall only; may be NULL for allgather). sent[P], recv[P] out. Returns
 * the busiest rank's max(sent, received) in *busiest (may be NULL).
 * EPM_ERR_OVERFLOW when a count passes uint64. */
epm_status_t epm_dispatch_bytes(epm_dispatch_mode_t mode, int P, const int64_t *m, const int64_t *counts,
                                int64_t dispatch_row, int64_t combine_row, uint64_t *sent, uint64_t *recv,
                                uint64_t *busiest);

/* Predicted seconds of a mode moving `busiest` bytes on the busiest rank. */
double epm_dispatch_seconds(const epm_dispatch_cost_t *c, epm_dispatch_mode_t mode, uint64_t busiest);

/* Measure both modes' terms with this comm. COLLECTIVE: every rank calls it
 * with the same arguments. For each mode it times that mode's collectives
 * (allgather: allgather-v of the 4 dispatch arrays + reduce-scatter-v;
 * alltoall: the rows exchange + all-to-all-v of the 4 arrays + all-to-all-v
 * back, every token to every rank) at 1 token per rank and at a size of
 * about `target_bytes` per rank (0 = 8 MiB), the slowest rank's mean, and
 * fits latency and bandwidth through the two points. At P = 1 nothing moves:
 * the latencies are measured and the bandwidths keep their defaults. */
epm_status_t epm_dispatch_calibrate(epm_comm_t *comm, int64_t hidden, int64_t top_k, epm_dtype_t partial,
                                    size_t target_bytes, epm_dispatch_cost_t *out);

#ifdef __cplusplus
}
#endif
#endif /* EPMOE_DISPATCH_H */
