/* SPDX-License-Identifier: Apache-2.0 */
/* kernels/routing_warp_body.h — ONE token routed by one warp, written once for
 * the GPU (routing_warp.cu) and its lane-by-lane CPU emulation
 * (routing_warp_emu.c); see routing_warp_core.h. No include guard: each
 * includer defines the macros below first, then includes this file once.
 *
 *   RW_FN, RW_NAME           storage class / qualifiers and name of the function
 *   RW_VAR(T, x)             a lane-private variable (array over lanes on the CPU)
 *   RW_ARR(T, x, n)          a lane-private array
 *   RW_V(x), RW_A(x, j)      their value in the current lane
 *   RW_LANE_DECL             declares what RW_LANES needs (the device's lane id)
 *   RW_LANES                 starts a block every lane runs (`lane` = lane id)
 *   RW_XOR(x, m)             in a lane block: x of lane ^ m (shfl.bfly)
 *   RW_BCAST(x, src)         in uniform code: x of lane src (shfl.idx)
 *   RW_BCAST_A(x, j, src)    the same for element j of a lane-private array
 *   RW_UNI(x)                in uniform code: x, equal in every lane
 *   RW_BALLOT(x)             in uniform code: bit l set when lane l's int x != 0
 *   RW_ATOMIC_ADD(p, v)      in a lane block: *p += v for every lane
 *   RW_UNROLL                unroll hint for loops over the per-lane slots
 *   RW_MAXPL                 experts per lane the arrays hold (>= epl; <= EPM_RW_MAX_PER_LANE)
 * A collective (RW_XOR, RW_BCAST, RW_BALLOT) never appears under a
 * lane-dependent condition, and a lane block never writes the variable it
 * reads through RW_XOR, so both expansions compute the same thing.
 *
 * The math is runtime/routing.c's, step for step (include/epmoe/routing.h):
 * selection by 64-bit keys (epm_rw_key) in k arg-max rounds = the reference's
 * best-first top-k order; group scores = top-2 multiset sums; kept groups =
 * the topk_group best by (score, lower index); the double sums in the
 * reference's order (softmax denominator by expert index, the others by
 * selection slot); the final order by rank under (weight desc, id asc),
 * which is the reference's insertion sort result. */

RW_FN void RW_NAME(const epm_rw_cfg_t *c, const float *lf, const uint16_t *lb, const float *bias, int32_t *ids,
                   float *wout, int32_t *expert_counts, int32_t *rank_tokens) {
  const int64_t E = c->num_experts, k = c->top_k;
  const int epl = c->epl;
  const int ds = c->method == EPM_CORE_ROUTE_DEEPSEEK_V3;
  RW_LANE_DECL;
  RW_ARR(float, lg, RW_MAXPL);  /* logits as fp32 */
  RW_ARR(float, sc, RW_MAXPL);  /* selection score */
  RW_ARR(float, sg, RW_MAXPL);  /* deepseek-v3: fp32 sigmoid */
  RW_ARR(uint64_t, key, RW_MAXPL);

  /* ---- load: scores once per expert ---- */
  RW_LANES {
    RW_UNROLL
    for (int j = 0; j < RW_MAXPL; j++) {
      const int64_t i = (int64_t)lane * epl + j;
      const int valid = j < epl && i < E;
      float x = 0.0f, s = 0.0f, sv = 0.0f;
      if (valid) {
        x = lf ? lf[i] : epm_bf16_to_f32(lb[i]);
        s = x;
        if (ds) {
          sv = epm_core_sigmoid(x);
          s = sv + (bias ? bias[i] : 0.0f);
        }
      }
      RW_A(lg, j) = x;
      RW_A(sc, j) = s;
      RW_A(sg, j) = sv;
      RW_A(key, j) = valid ? epm_rw_key(s, i) : 0u;
    }
  }

  /* ---- deepseek-v3 groups: top-2 sums, keep the topk_group best ---- */
  if (ds && c->n_group > 1) {
    const int64_t G = c->n_group, per = E / G;
    RW_VAR(float, gs0); /* score of group `lane` */
    RW_VAR(float, gs1); /* score of group `lane + 32` */
    RW_VAR(float, b1);
    RW_VAR(float, b2);
    RW_VAR(float, o1);
    RW_VAR(float, o2);
    RW_LANES {
      RW_V(gs0) = 0.0f;
      RW_V(gs1) = 0.0f;
    }
    for (int64_t gi = 0; gi < G; gi++) {
      RW_LANES {
        RW_V(b1) = -INFINITY;
        RW_V(b2) = -INFINITY;
        RW_UNROLL
        for (int j = 0; j < RW_MAXPL; j++) {
          const int64_t i = (int64_t)lane * epl + j;
          if (j < epl && i < E && i / per == gi) epm_rw_top2_push(&RW_V(b1), &RW_V(b2), RW_A(sc, j));
        }
      }
      for (int m = 16; m >= 1; m >>= 1) {
        RW_LANES {
          RW_V(o1) = RW_XOR(b1, m);
          RW_V(o2) = RW_XOR(b2, m);
        }
        RW_LANES { epm_rw_top2_merge(&RW_V(b1), &RW_V(b2), RW_V(o1), RW_V(o2)); }
      }
      RW_LANES {
        const float v = RW_V(b1) + RW_V(b2);
        if (lane == gi) RW_V(gs0) = v;
        if (lane + 32 == gi) RW_V(gs1) = v;
      }
    }
    /* rank of each group among all: kept when fewer than topk_group beat it */
    RW_VAR(int, n0);
    RW_VAR(int, n1);
    RW_LANES {
      RW_V(n0) = 0;
      RW_V(n1) = 0;
    }
    for (int64_t gj = 0; gj < G; gj++) {
      const float v = gj < 32 ? RW_BCAST(gs0, (int)gj) : RW_BCAST(gs1, (int)(gj - 32));
      RW_LANES {
        if (epm_core_beats(v, gj, RW_V(gs0), lane)) RW_V(n0)++;
        if (epm_core_beats(v, gj, RW_V(gs1), lane + 32)) RW_V(n1)++;
      }
    }
    RW_VAR(int, k0);
    RW_VAR(int, k1);
    RW_LANES {
      RW_V(k0) = lane < G && RW_V(n0) < c->topk_group;
      RW_V(k1) = lane + 32 < G && RW_V(n1) < c->topk_group;
    }
    const uint64_t keep = (uint64_t)RW_BALLOT(k0) | ((uint64_t)RW_BALLOT(k1) << 32);
    RW_LANES {
      RW_UNROLL
      for (int j = 0; j < RW_MAXPL; j++) {
        const int64_t i = (int64_t)lane * epl + j;
        if (j < epl && i < E && !((keep >> (i / per)) & 1u)) RW_A(key, j) = 0u;
      }
    }
  }

  /* ---- top-k by arg-max rounds; slot r goes to lane r % 32 ---- */
  RW_VAR(int32_t, id0);
  RW_VAR(int32_t, id1);
  RW_VAR(float, l0);
  RW_VAR(float, l1);
  RW_VAR(float, s0);
  RW_VAR(float, s1);
  RW_VAR(uint64_t, best);
  RW_VAR(uint64_t, ob);
  RW_VAR(float, tl);
  RW_VAR(float, ts);
  for (int64_t r = 0; r < k; r++) {
    RW_LANES {
      uint64_t b = 0u;
      RW_UNROLL
      for (int j = 0; j < RW_MAXPL; j++) b = RW_A(key, j) > b ? RW_A(key, j) : b;
      RW_V(best) = b;
    }
    for (int m = 16; m >= 1; m >>= 1) {
      RW_LANES { RW_V(ob) = RW_XOR(best, m); }
      RW_LANES { RW_V(best) = RW_V(ob) > RW_V(best) ? RW_V(ob) : RW_V(best); }
    }
    const int64_t idx = (int64_t)epm_rw_key_index(RW_UNI(best));
    const int owner = (int)(idx / epl), jo = (int)(idx - (int64_t)owner * epl);
    RW_LANES {
      RW_V(tl) = 0.0f;
      RW_V(ts) = 0.0f;
      RW_UNROLL
      for (int j = 0; j < RW_MAXPL; j++)
        if (j == jo) {
          RW_V(tl) = RW_A(lg, j);
          RW_V(ts) = RW_A(sg, j);
          if (lane == owner) RW_A(key, j) = 0u; /* taken */
        }
    }
    const float vl = RW_BCAST(tl, owner), vs = RW_BCAST(ts, owner);
    RW_LANES {
      if (lane == r) {
        RW_V(id0) = (int32_t)idx;
        RW_V(l0) = vl;
        RW_V(s0) = vs;
      }
      if (lane + 32 == r) {
        RW_V(id1) = (int32_t)idx;
        RW_V(l1) = vl;
        RW_V(s1) = vs;
      }
    }
  }

  /* ---- weights of the own slots (w0: slot lane, w1: slot lane + 32) ---- */
  RW_VAR(float, w0);
  RW_VAR(float, w1);
  RW_LANES {
    RW_V(w0) = 0.0f;
    RW_V(w1) = 0.0f;
  }
  if (c->method == EPM_CORE_ROUTE_DEFAULT || c->method == EPM_CORE_ROUTE_RENORMALIZE_NAIVE) {
    RW_VAR(float, mx);
    RW_VAR(float, om);
    RW_ARR(double, ex, RW_MAXPL);
    RW_LANES {
      float mm = -INFINITY;
      RW_UNROLL
      for (int j = 0; j < RW_MAXPL; j++)
        if (j < epl && (int64_t)lane * epl + j < E) mm = RW_A(lg, j) > mm ? RW_A(lg, j) : mm;
      RW_V(mx) = mm;
    }
    for (int m = 16; m >= 1; m >>= 1) {
      RW_LANES { RW_V(om) = RW_XOR(mx, m); }
      RW_LANES { RW_V(mx) = RW_V(om) > RW_V(mx) ? RW_V(om) : RW_V(mx); }
    }
    /* -0 and +0 compare equal, so lanes may keep different zeros: make it +0
     * (x - (+-0) gives the same exp as the reference's zero either way) */
    RW_LANES { RW_V(mx) = RW_V(mx) + 0.0f; }
    const double mxd = (double)RW_UNI(mx);
    RW_LANES {
      RW_UNROLL
      for (int j = 0; j < RW_MAXPL; j++) RW_A(ex, j) = exp((double)RW_A(lg, j) - mxd);
    }
    /* sum in expert index order: lane 0's slots, then lane 1's, ... */
    double den = 0.0;
    for (int src = 0; src < EPM_RW_LANES; src++) {
      RW_UNROLL
      for (int j = 0; j < RW_MAXPL; j++) {
        const double v = RW_BCAST_A(ex, j, src);
        if (j < epl && (int64_t)src * epl + j < E) den += v;
      }
    }
    RW_LANES {
      if (lane < k) RW_V(w0) = (float)(exp((double)RW_V(l0) - mxd) / den);
      if (lane + 32 < k) RW_V(w1) = (float)(exp((double)RW_V(l1) - mxd) / den);
    }
    if (c->method == EPM_CORE_ROUTE_RENORMALIZE_NAIVE) {
      double psum = 0.0;
      for (int64_t r = 0; r < k; r++) psum += (double)(r < 32 ? RW_BCAST(w0, (int)r) : RW_BCAST(w1, (int)(r - 32)));
      RW_LANES {
        if (lane < k) RW_V(w0) = (float)(RW_V(w0) / psum);
        if (lane + 32 < k) RW_V(w1) = (float)(RW_V(w1) / psum);
      }
    }
  } else if (c->method == EPM_CORE_ROUTE_RENORMALIZE) {
    const double mxd = (double)RW_BCAST(l0, 0); /* slot 0 holds the largest logit */
    double den = 0.0;
    for (int64_t r = 0; r < k; r++) {
      const float v = r < 32 ? RW_BCAST(l0, (int)r) : RW_BCAST(l1, (int)(r - 32));
      den += exp((double)v - mxd);
    }
    RW_LANES {
      if (lane < k) RW_V(w0) = (float)(exp((double)RW_V(l0) - mxd) / den);
      if (lane + 32 < k) RW_V(w1) = (float)(exp((double)RW_V(l1) - mxd) / den);
    }
  } else if (ds) {
    double sum = 0.0;
    for (int64_t r = 0; r < k; r++) sum += (double)(r < 32 ? RW_BCAST(s0, (int)r) : RW_BCAST(s1, (int)(r - 32)));
    const float den = (float)sum + 1e-20f;
    RW_LANES {
      if (lane < k) RW_V(w0) = (RW_V(s0) / den) * c->routed_scaling_factor;
      if (lane + 32 < k) RW_V(w1) = (RW_V(s1) / den) * c->routed_scaling_factor;
    }
  } else if (c->method == EPM_CORE_ROUTE_LLAMA4) {
    RW_LANES {
      if (lane == 0) RW_V(w0) = epm_core_sigmoid(RW_V(l0));
    }
  } else {
    RW_LANES {
      if (lane < k) RW_V(w0) = RW_V(l0);
      if (lane + 32 < k) RW_V(w1) = RW_V(l1);
    }
  }

  /* ---- output order: rank under (weight desc, id asc) ---- */
  RW_VAR(int, r0);
  RW_VAR(int, r1);
  RW_VAR(int, f0); /* first slot of its destination rank */
  RW_VAR(int, f1);
  RW_LANES {
    RW_V(r0) = 0;
    RW_V(r1) = 0;
    RW_V(f0) = 1;
    RW_V(f1) = 1;
  }
  const int64_t per_rank = c->ep_size > 0 ? E / c->ep_size : E;
  for (int64_t r = 0; r < k; r++) {
    const float wv = r < 32 ? RW_BCAST(w0, (int)r) : RW_BCAST(w1, (int)(r - 32));
    const int32_t iv = r < 32 ? RW_BCAST(id0, (int)r) : RW_BCAST(id1, (int)(r - 32));
    RW_LANES {
      if (lane < k) {
        if (epm_core_beats(wv, iv, RW_V(w0), RW_V(id0))) RW_V(r0)++;
        if (r < lane && iv / per_rank == RW_V(id0) / per_rank) RW_V(f0) = 0;
      }
      if (lane + 32 < k) {
        if (epm_core_beats(wv, iv, RW_V(w1), RW_V(id1))) RW_V(r1)++;
        if (r < lane + 32 && iv / per_rank == RW_V(id1) / per_rank) RW_V(f1) = 0;
      }
    }
  }
  RW_LANES {
    if (lane < k) {
      ids[RW_V(r0)] = RW_V(id0);
      wout[RW_V(r0)] = RW_V(w0);
      if (expert_counts) RW_ATOMIC_ADD(&expert_counts[RW_V(id0)], 1);
      if (rank_tokens && RW_V(f0)) RW_ATOMIC_ADD(&rank_tokens[RW_V(id0) / per_rank], 1);
    }
    if (lane + 32 < k) {
      ids[RW_V(r1)] = RW_V(id1);
      wout[RW_V(r1)] = RW_V(w1);
      if (expert_counts) RW_ATOMIC_ADD(&expert_counts[RW_V(id1)], 1);
      if (rank_tokens && RW_V(f1)) RW_ATOMIC_ADD(&rank_tokens[RW_V(id1) / per_rank], 1);
    }
  }
}
