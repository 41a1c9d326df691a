/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.c — the dispatch modes' names, byte counts, cost model and its
 * calibration (epmoe/dispatch.h). The engine asks here which mode a step
 * runs; the numbers are host arithmetic on the step's count matrix, the same
 * on every rank, so every rank picks the same mode without talking.
 */
#include "epmoe/dispatch.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/checked.h"
#include "epmoe/clock.h"
#include "epmoe/nvfp4.h"

static const char *const mode_names[] = {
    [EPM_DISPATCH_ALLGATHER] = "allgather", [EPM_DISPATCH_ALLTOALL] = "alltoall", [EPM_DISPATCH_AUTO] = "auto"};

epm_status_t epm_dispatch_mode_parse(const char *name, epm_dispatch_mode_t *out) {
  for (int i = 0; name && i < (int)(sizeof mode_names / sizeof mode_names[0]); i++)
    if (strcmp(name, mode_names[i]) == 0) {
      *out = (epm_dispatch_mode_t)i;
      return EPM_OK;
    }
  return epm_error(EPM_ERR_INVALID_ARG, "unknown dispatch mode '%s'; valid: allgather, alltoall, auto",
                   name ? name : "(null)");
}

const char *epm_dispatch_mode_name(epm_dispatch_mode_t mode) {
  if ((int)mode < 0 || (int)mode >= (int)(sizeof mode_names / sizeof mode_names[0])) return "invalid";
  return mode_names[mode];
}

/* Uncalibrated terms: `epmoectl step --calibrate-dispatch` with the MPI comm,
 * 4 ranks on the 2-core CI box (shared memory), tiny dims, rounded (measured
 * 28-30 / 35-36 us and 0.81-0.87 / 1.02-1.06 GB/s). Only a starting point:
 * calibrate on the machine that serves. */
void epm_dispatch_cost_default(epm_dispatch_cost_t *out) {
  out->latency_us[EPM_DISPATCH_ALLGATHER] = 30.0;
  out->latency_us[EPM_DISPATCH_ALLTOALL] = 40.0;
  out->gbps[EPM_DISPATCH_ALLGATHER] = 0.8;
  out->gbps[EPM_DISPATCH_ALLTOALL] = 1.0;
}

epm_status_t epm_dispatch_cost_validate(const epm_dispatch_cost_t *c) {
  for (int m = 0; m < EPM_DISPATCH_MODES; m++) {
    const char *name = mode_names[m];
    if (!isfinite(c->latency_us[m]) || c->latency_us[m] < 0)
      return epm_error(EPM_ERR_INVALID_ARG, "dispatch cost: %s latency %g us must be finite and >= 0", name,
                       c->latency_us[m]);
    if (!isfinite(c->gbps[m]) || !(c->gbps[m] > 0))
      return epm_error(EPM_ERR_INVALID_ARG, "dispatch cost: %s bandwidth %g GB/s must be finite and > 0", name,
                       c->gbps[m]);
  }
  return EPM_OK;
}

static epm_status_t parse_pair(const char *what, const char *s, double out[EPM_DISPATCH_MODES]) {
  if (!s || !*s) return EPM_OK;
  double v[EPM_DISPATCH_MODES];
  const char *p = s;
  for (int i = 0; i < EPM_DISPATCH_MODES; i++) {
    char *end = NULL;
    errno = 0;
    v[i] = strtod(p, &end);
    if (errno || end == p || *end != (i + 1 < EPM_DISPATCH_MODES ? ',' : '\0'))
      return epm_error(EPM_ERR_INVALID_ARG, "dispatch %s '%s': want two numbers ALLGATHER,ALLTOALL", what, s);
    p = end + 1;
  }
  memcpy(out, v, sizeof v);
  return EPM_OK;
}

epm_status_t epm_dispatch_cost_parse(const char *latency_us, const char *gbps, epm_dispatch_cost_t *inout) {
  epm_dispatch_cost_t c = *inout;
  EPM_TRY(parse_pair("latency-us", latency_us, c.latency_us));
  EPM_TRY(parse_pair("gbps", gbps, c.gbps));
  EPM_TRY(epm_dispatch_cost_validate(&c));
  *inout = c;
  return EPM_OK;
}

epm_status_t epm_dispatch_row_bytes(int64_t hidden, int64_t top_k, epm_dtype_t partial, int64_t *dispatch_row,
                                    int64_t *combine_row) {
  int64_t meta, d, c;
  if (hidden <= 0 || hidden % EPM_NVFP4_BLOCK || top_k <= 0)
    return epm_error(EPM_ERR_INVALID_ARG, "dispatch rows: hidden %lld (a positive multiple of %d), top_k %lld (> 0)",
                     (long long)hidden, EPM_NVFP4_BLOCK, (long long)top_k);
  if (epm_mul_i64(top_k, 8, &meta) || epm_add_i64(hidden / 2 + hidden / EPM_NVFP4_BLOCK, meta, &d) ||
      epm_mul_i64(hidden, partial == EPM_DTYPE_F32 ? 4 : 2, &c))
    return epm_error(EPM_ERR_OVERFLOW, "dispatch rows of hidden %lld, top_k %lld overflow int64", (long long)hidden,
                     (long long)top_k);
  *dispatch_row = d;
  *combine_row = c;
  return EPM_OK;
}

/* a * b + acc in uint64, 0 on overflow. */
static int mad(uint64_t a, uint64_t b, uint64_t *acc) {
  uint64_t p;
  return __builtin_mul_overflow(a, b, &p) || __builtin_add_overflow(*acc, p, acc);
}

epm_status_t epm_dispatch_bytes(epm_dispatch_mode_t mode, int P, const int64_t *m, const int64_t *counts,
                                int64_t dispatch_row, int64_t combine_row, uint64_t *sent, uint64_t *recv,
                                uint64_t *busiest) {
  if (P < 1 || !m || !sent || !recv || dispatch_row < 0 || combine_row < 0 ||
      (mode != EPM_DISPATCH_ALLGATHER && mode != EPM_DISPATCH_ALLTOALL) || (mode == EPM_DISPATCH_ALLTOALL && !counts))
    return epm_error(EPM_ERR_INVALID_ARG, "dispatch bytes: mode %d, P %d, rows %lld/%lld or a NULL array", (int)mode,
                     P, (long long)dispatch_row, (long long)combine_row);
  const uint64_t bd = (uint64_t)dispatch_row, bc = (uint64_t)combine_row;
  uint64_t total = 0, top = 0;
  for (int r = 0; r < P; r++) total += (uint64_t)m[r]; /* engine-checked: each <= capacity */
  for (int r = 0; r < P; r++) {
    uint64_t s = 0, v = 0;
    int bad = 0;
    if (mode == EPM_DISPATCH_ALLGATHER) {
      const uint64_t mine = (uint64_t)m[r], others = total - mine;
      bad = mad((uint64_t)(P - 1) * mine, bd, &s) || mad(others, bc, &s) || mad(others, bd, &v) ||
            mad((uint64_t)(P - 1) * mine, bc, &v);
    } else {
      for (int o = 0; o < P && !bad; o++) {
        if (o == r) continue;
        const uint64_t out = (uint64_t)counts[(size_t)r * (size_t)P + (size_t)o];
        const uint64_t in = (uint64_t)counts[(size_t)o * (size_t)P + (size_t)r];
        bad = mad(out, bd, &s) || mad(in, bc, &s) || mad(in, bd, &v) || mad(out, bc, &v);
      }
    }
    if (bad) return epm_error(EPM_ERR_OVERFLOW, "dispatch bytes of rank %d pass 2^64", r);
    sent[r] = s;
    recv[r] = v;
    if (s > top) top = s;
    if (v > top) top = v;
  }
  if (busiest) *busiest = top;
  return EPM_OK;
}

double epm_dispatch_seconds(const epm_dispatch_cost_t *c, epm_dispatch_mode_t mode, uint64_t busiest) {
  const int i = mode == EPM_DISPATCH_ALLTOALL ? 1 : 0;
  return c->latency_us[i] * 1e-6 + (double)busiest / (c->gbps[i] * 1e9);
}

/* ---- calibration ---- */

enum { NARR = 4 };

typedef struct {
  epm_comm_t *c;
  int P, me;
  int64_t H, row[NARR], crow;
  epm_dtype_t rd;
  void *snd[NARR], *rcv[NARR], *part, *back; /* [P*n] rows each (send: allgather uses the first n) */
  int64_t *counts, *matrix, *xrow, *xall;
} cal_t;

static void cal_free(cal_t *k) {
  for (int i = 0; i < NARR; i++) {
    epm_comm_free(k->c, k->snd[i]);
    epm_comm_free(k->c, k->rcv[i]);
  }
  epm_comm_free(k->c, k->part);
  epm_comm_free(k->c, k->back);
  free(k->counts);
  free(k->matrix);
  free(k->xrow);
  free(k->xall);
}

static epm_status_t cal_alloc(epm_comm_t *c, void **p, int64_t rows, int64_t row) {
  size_t bytes;
  if (epm_mul_size((size_t)rows, (size_t)row, &bytes))
    return epm_error(EPM_ERR_OVERFLOW, "calibration buffer of %lld x %lld bytes", (long long)rows, (long long)row);
  EPM_TRY(epm_comm_alloc(c, bytes, p));
  if (*p && epm_comm_mem_kind(c) == EPM_MEM_HOST) memset(*p, 0, bytes); /* zeros: no NaN or denormal sums */
  return EPM_OK;
}

/* One round of a mode's collectives with n tokens on every rank. */
static epm_status_t cal_round(cal_t *k, epm_dispatch_mode_t mode, int64_t n) {
  const int P = k->P;
  epm_comm_gather_buf_t b[NARR];
  for (int i = 0; i < NARR; i++) b[i] = (epm_comm_gather_buf_t){k->snd[i], k->rcv[i], (size_t)k->row[i]};
  if (mode == EPM_DISPATCH_ALLGATHER) {
    for (int r = 0; r < P; r++) k->counts[r] = n;
    EPM_TRY(epm_comm_allgatherv_multi(k->c, b, NARR, k->counts));
    EPM_TRY(epm_comm_reduce_scatterv(k->c, k->part, k->back, k->counts, k->H, k->rd));
  } else {
    for (int r = 0; r <= P; r++) k->xrow[r] = n;
    EPM_TRY(epm_comm_exchange_rows(k->c, k->xrow, P + 1, k->xall));
    for (size_t i = 0; i < (size_t)P * (size_t)P; i++) k->matrix[i] = n;
    EPM_TRY(epm_comm_alltoallv_multi(k->c, b, NARR, k->matrix));
    EPM_TRY(epm_comm_alltoallv(k->c, k->part, k->back, k->matrix, (size_t)k->crow));
  }
  return epm_comm_wait(k->c, 0);
}

/* Mean seconds of `reps` rounds after one untimed, on the slowest rank. */
static epm_status_t cal_time(cal_t *k, epm_dispatch_mode_t mode, int64_t n, int reps, double *sec) {
  EPM_TRY(cal_round(k, mode, n));
  EPM_TRY(epm_comm_barrier(k->c));
  double t0 = epm_clock_s();
  for (int i = 0; i < reps; i++) EPM_TRY(cal_round(k, mode, n));
  const double mine = (epm_clock_s() - t0) / reps;
  EPM_TRY(epm_comm_exchange_sizes(k->c, (int64_t)(mine * 1e9), k->counts));
  int64_t top = 0;
  for (int r = 0; r < k->P; r++)
    if (k->counts[r] > top) top = k->counts[r];
  *sec = (double)top * 1e-9;
  return EPM_OK;
}

/* The busiest rank's bytes of a mode with n tokens on every rank and, for
 * alltoall, every token sent to every rank (what cal_round moves). */
static epm_status_t cal_bytes(cal_t *k, epm_dispatch_mode_t mode, int64_t n, uint64_t *busiest) {
  const int P = k->P;
  uint64_t *s = calloc(2 * (size_t)P, sizeof *s);
  if (!s) return epm_error(EPM_ERR_NOMEM, "calibration: %d ranks", P);
  for (int r = 0; r < P; r++) k->counts[r] = n;
  for (size_t i = 0; i < (size_t)P * (size_t)P; i++) k->matrix[i] = n;
  int64_t bd = 0;
  for (int i = 0; i < NARR; i++) bd += k->row[i];
  epm_status_t st = epm_dispatch_bytes(mode, P, k->counts, k->matrix, bd, k->crow, s, s + P, busiest);
  free(s);
  return st;
}

epm_status_t epm_dispatch_calibrate(epm_comm_t *c, int64_t hidden, int64_t top_k, epm_dtype_t partial,
                                    size_t target_bytes, epm_dispatch_cost_t *out) {
  if (!c || !out) return epm_error(EPM_ERR_INVALID_ARG, "dispatch calibrate: NULL comm or out");
  if (partial != EPM_DTYPE_F32 && partial != EPM_DTYPE_BF16)
    return epm_error(EPM_ERR_INVALID_ARG, "dispatch calibrate: partial dtype %d is not f32 (0) or bf16 (1)",
                     (int)partial);
  int64_t bd, bc;
  EPM_TRY(epm_dispatch_row_bytes(hidden, top_k, partial, &bd, &bc));
  cal_t k = {.c = c, .P = epm_comm_size(c), .me = epm_comm_rank(c), .H = hidden, .crow = bc,
             .rd = partial};
  k.row[0] = hidden / 2;
  k.row[1] = hidden / EPM_NVFP4_BLOCK;
  k.row[2] = k.row[3] = 4 * top_k;
  if (target_bytes == 0) target_bytes = (size_t)8 << 20;
  /* n_large tokens per rank: about target_bytes through the busiest rank. */
  const int64_t per_token = (int64_t)(k.P > 1 ? k.P - 1 : 1) * (bd + bc);
  int64_t n_large = (int64_t)(target_bytes / (size_t)per_token);
  if (n_large < 16) n_large = 16;
  if (n_large > (1 << 20)) n_large = 1 << 20;
  const int64_t rows = (int64_t)k.P * n_large;
  epm_status_t st = EPM_OK;
  k.counts = calloc((size_t)k.P, sizeof *k.counts);
  k.matrix = calloc((size_t)k.P * (size_t)k.P, sizeof *k.matrix);
  k.xrow = calloc((size_t)k.P + 1, sizeof *k.xrow);
  k.xall = calloc((size_t)k.P * ((size_t)k.P + 1), sizeof *k.xall);
  if (!k.counts || !k.matrix || !k.xrow || !k.xall) {
    st = epm_error(EPM_ERR_NOMEM, "dispatch calibrate: count arrays for %d ranks", k.P);
    goto out; /* nothing collective yet: every rank fails alike only if all lack memory */
  }
  for (int i = 0; i < NARR && st == EPM_OK; i++) {
    st = cal_alloc(c, &k.snd[i], rows, k.row[i]);
    if (st == EPM_OK) st = cal_alloc(c, &k.rcv[i], rows, k.row[i]);
  }
  if (st == EPM_OK) st = cal_alloc(c, &k.part, rows, bc);
  if (st == EPM_OK) st = cal_alloc(c, &k.back, rows, bc);
  {
    /* Agree before the first timed collective: a rank short of memory must
     * not leave the others waiting in it. */
    epm_status_t ex = epm_comm_exchange_sizes(c, st == EPM_OK ? 0 : 1, k.counts);
    if (ex != EPM_OK) {
      st = ex;
      goto out;
    }
    if (st != EPM_OK) goto out;
    for (int r = 0; r < k.P; r++)
      if (k.counts[r]) {
        st = epm_error(EPM_ERR_ABORTED, "dispatch calibrate: rank %d could not allocate its buffers", r);
        goto out;
      }
  }

  epm_dispatch_cost_t res;
  epm_dispatch_cost_default(&res);
  for (int m = 0; m < EPM_DISPATCH_MODES; m++) {
    const epm_dispatch_mode_t mode = (epm_dispatch_mode_t)m;
    double t1, t2;
    uint64_t b1, b2;
    EPM_TRY_GOTO(cal_time(&k, mode, 1, 20, &t1), st, out);
    EPM_TRY_GOTO(cal_time(&k, mode, n_large, 3, &t2), st, out);
    EPM_TRY_GOTO(cal_bytes(&k, mode, 1, &b1), st, out);
    EPM_TRY_GOTO(cal_bytes(&k, mode, n_large, &b2), st, out);
    /* Two points fix the line; noise that makes it fall keeps the default
     * bandwidth and charges everything measured to latency. */
    if (b2 > b1 && t2 > t1) res.gbps[m] = (double)(b2 - b1) / (t2 - t1) * 1e-9;
    double lat = t1 - (double)b1 / (res.gbps[m] * 1e9);
    res.latency_us[m] = lat > 0 ? lat * 1e6 : 0.0;
  }
  *out = res;
out:
  cal_free(&k);
  return st;
}
