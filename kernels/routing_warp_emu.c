/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing_warp_emu.c — the warp routing kernel's body
 * (routing_warp_body.h) emulated on the CPU: every lane-private variable is an
 * array over the 32 lanes, every lane block a loop over them, and a shuffle
 * reads another lane's entry. Tests compare it bit for bit with the CPU
 * reference (runtime/routing.c). Single-threaded and allocation-free. */
#include <math.h>
#include <string.h>

#include "epmoe/bf16.h"
#include "routing_warp_core.h"

/* Set when a value the body uses as warp-uniform differs between lanes. */
static _Thread_local int rw_nonuniform;

static uint32_t rw_ballot(const int *x) {
  uint32_t m = 0;
  for (int l = 0; l < EPM_RW_LANES; l++)
    if (x[l]) m |= 1u << l;
  return m;
}

static int rw_check_uniform(const void *x, size_t size) {
  const unsigned char *b = (const unsigned char *)x;
  for (int l = 1; l < EPM_RW_LANES; l++)
    if (memcmp(b, b + (size_t)l * size, size) != 0) rw_nonuniform = 1;
  return 0;
}

#define RW_FN static
#define RW_NAME rw_route_token_emu
#define RW_LANE_DECL
#define RW_VAR(T, x) T x[EPM_RW_LANES]
#define RW_ARR(T, x, n) T x[EPM_RW_LANES][n]
#define RW_V(x) x[lane]
#define RW_A(x, j) x[lane][j]
#define RW_LANES for (int lane = 0; lane < EPM_RW_LANES; lane++)
#define RW_XOR(x, m) x[lane ^ (m)]
#define RW_BCAST(x, src) x[src]
#define RW_BCAST_A(x, j, src) x[src][j]
#define RW_UNI(x) (rw_check_uniform(x, sizeof x[0]), x[0])
#define RW_BALLOT(x) rw_ballot(x)
#define RW_ATOMIC_ADD(p, v) (*(p) += (v))
#define RW_UNROLL
#define RW_MAXPL EPM_RW_MAX_PER_LANE

#include "routing_warp_body.h"

epm_status_t epm_routing_warp_emulate(const epm_routing_plan_t *p, const void *logits, epm_dtype_t logits_dtype,
                                      const float *bias, int32_t *ids, float *weights,
                                      const epm_routing_counts_t *counts) {
  epm_rw_cfg_t cfg;
  EPM_TRY(epm__rw_cfg(p, counts ? counts->ep_size : 0, &cfg));
  if (logits_dtype != EPM_DTYPE_F32 && logits_dtype != EPM_DTYPE_BF16)
    return epm_error(EPM_ERR_INVALID_ARG, "warp routing: logits dtype %s is not f32 or bf16",
                     epm_dtype_name(logits_dtype));
  if (p->tokens > 0 && (!logits || !ids || !weights))
    return epm_error(EPM_ERR_INVALID_ARG, "warp routing emulation: NULL logits, ids or weights");
  int32_t *ec = counts ? counts->expert_counts : NULL, *rt = counts ? counts->rank_tokens : NULL;
  if (ec) memset(ec, 0, (size_t)p->num_experts * sizeof *ec);
  if (rt) memset(rt, 0, (size_t)cfg.ep_size * sizeof *rt);
  const float *bs = p->method == EPM_ROUTING_DEEPSEEK_V3 ? bias : NULL;
  rw_nonuniform = 0;
  for (int64_t t = 0; t < p->tokens; t++) {
    const int64_t o = t * p->num_experts;
    rw_route_token_emu(&cfg, logits_dtype == EPM_DTYPE_F32 ? (const float *)logits + o : NULL,
                       logits_dtype == EPM_DTYPE_BF16 ? (const uint16_t *)logits + o : NULL, bs,
                       ids + t * p->top_k, weights + t * p->top_k, ec, rt);
  }
  if (rw_nonuniform)
    return epm_error(EPM_ERR_INTERNAL, "warp routing emulation: a warp-uniform value differed between lanes");
  return EPM_OK;
}
