/* SPDX-License-Identifier: Apache-2.0 */
/* test_comm_mpi.c — the MPI comm backend against naive expectations.
 *
 * Run under mpirun with any P. Every rank builds its inputs from (rank, tag,
 * index), so the expected gathered array and the expected rank-order fp32
 * sums are recomputed here without any communication. The chunk limit is
 * lowered (epm_comm_mpi_set_max_count) to drive the >INT_MAX code paths with
 * small buffers; results must be identical to the unchunked ones. The
 * all-to-all-v runs over count matrices with zeros, an all-zero one, all
 * rows to one rank, self only, one sender and equal counts, checked byte by
 * byte and against the traffic counters.
 */
#include <limits.h>
#include <math.h>

#include "comm_check.h"
#include "epmoe/comm.h"

static int P, me;

typedef struct {
  const char *name;
  int64_t (*count)(int r, int p);
} pattern_t;

static int64_t pat_unequal(int r, int p) { return (r * 7 + 3) % 11; }
static int64_t pat_some_zero(int r, int p) { return r % 2 ? 0 : r + 5; }
static int64_t pat_all_zero(int r, int p) { return 0; }
static int64_t pat_last_all(int r, int p) { return r == p - 1 ? 37 : 0; }
static int64_t pat_first_all(int r, int p) { return r == 0 ? 29 : 0; }
static int64_t pat_equal(int r, int p) { return 6; }

static const pattern_t patterns[] = {
    {"unequal", pat_unequal},     {"some-zero", pat_some_zero}, {"all-zero", pat_all_zero},
    {"last-holds-all", pat_last_all}, {"first-holds-all", pat_first_all}, {"equal", pat_equal},
};
enum { NPAT = sizeof patterns / sizeof patterns[0] };

static void fill_counts(const pattern_t *pt, int64_t *counts, int64_t *total, int64_t *my_off) {
  *total = 0;
  for (int r = 0; r < P; r++) {
    counts[r] = pt->count(r, P);
    if (r == me) *my_off = *total;
    *total += counts[r];
  }
}

/* ---- allgather-v ---- */

static void check_gather(const pattern_t *pt, const size_t *esz, int nbufs, epm_comm_t *c,
                         int64_t limit) {
  int64_t counts[64], total, my_off = 0;
  fill_counts(pt, counts, &total, &my_off);
  epm_comm_gather_buf_t bufs[4];
  for (int b = 0; b < nbufs; b++) {
    size_t sn = (size_t)counts[me] * esz[b], rn = (size_t)total * esz[b];
    uint8_t *s = sn ? malloc(sn) : NULL, *rv = rn ? malloc(rn) : NULL;
    for (size_t i = 0; i < sn; i++) s[i] = cc_byte(me, b, (int64_t)i);
    if (rn) memset(rv, 0xA5, rn); /* poison: every byte must be written */
    bufs[b] = (epm_comm_gather_buf_t){.send = s, .recv = rv, .elem_size = esz[b]};
  }
  if (nbufs == 1)
    CHECK_OK(epm_comm_allgatherv(c, bufs[0].send, bufs[0].recv, counts, esz[0]));
  else
    CHECK_OK(epm_comm_allgatherv_multi(c, bufs, nbufs, counts));
  for (int b = 0; b < nbufs; b++) {
    const uint8_t *rv = bufs[b].recv;
    size_t pos = 0;
    for (int r = 0; r < P; r++)
      for (size_t i = 0; i < (size_t)counts[r] * esz[b]; i++, pos++)
        CHECK(rv[pos] == cc_byte(r, b, (int64_t)i),
              "%s limit %lld buf %d elem %zu: byte %zu (rank %d's byte %zu) is %u, want %u", pt->name,
              (long long)limit, b, esz[b], pos, r, i, rv[pos], cc_byte(r, b, (int64_t)i));
    free((void *)bufs[b].send);
    free(bufs[b].recv);
  }
}

/* ---- reduce-scatter-v ---- */

static void check_reduce(const pattern_t *pt, int64_t row_elems, epm_dtype_t dt, epm_comm_t *c,
                         int64_t limit) {
  int64_t counts[64], total, my_off = 0;
  fill_counts(pt, counts, &total, &my_off);
  const int64_t ne = total * row_elems, mine = counts[me] * row_elems;
  const size_t esz = dt == EPM_DTYPE_F32 ? 4 : 2;
  const int tag = 7 + (int)dt;
  char *send = ne ? malloc((size_t)ne * esz) : NULL;
  char *out = mine ? malloc((size_t)mine * esz) : NULL, *out2 = mine ? malloc((size_t)mine * esz) : NULL;
  for (int64_t i = 0; i < ne; i++) {
    float v = cc_f32(me, tag, i);
    if (dt == EPM_DTYPE_F32) ((float *)send)[i] = v;
    else ((uint16_t *)send)[i] = epm_bf16_from_f32(v);
  }
  if (mine) memset(out, 0xA5, (size_t)mine * esz);
  CHECK_OK(epm_comm_reduce_scatterv(c, send, out, counts, row_elems, dt));
  /* Run twice: bit-identical results. */
  CHECK_OK(epm_comm_reduce_scatterv(c, send, out2, counts, row_elems, dt));
  if (mine) CHECK(memcmp(out, out2, (size_t)mine * esz) == 0, "%s: repeat differs", pt->name);
  for (int64_t j = 0; j < mine; j++) {
    int64_t g = my_off * row_elems + j; /* global element index */
    float acc = 0.0f;
    for (int r = 0; r < P; r++) {
      float x = dt == EPM_DTYPE_F32 ? cc_f32(r, tag, g) : epm_bf16_to_f32(epm_bf16_from_f32(cc_f32(r, tag, g)));
      acc = r == 0 ? x : acc + x;
    }
    if (dt == EPM_DTYPE_F32) {
      float got = ((float *)out)[j];
      CHECK(memcmp(&got, &acc, 4) == 0, "%s f32 limit %lld row %lld: element %lld = %.9g, rank-order sum %.9g",
            pt->name, (long long)limit, (long long)row_elems, (long long)j, got, acc);
    } else {
      uint16_t got = ((uint16_t *)out)[j], want = epm_bf16_from_f32(acc);
      CHECK(got == want, "%s bf16 limit %lld: element %lld = 0x%04x, want 0x%04x", pt->name,
            (long long)limit, (long long)j, got, want);
    }
  }
  free(send);
  free(out);
  free(out2);
}

/* ---- all-to-all-v ---- */

typedef struct {
  const char *name;
  int64_t (*count)(int s, int d, int p); /* rows rank s sends to rank d */
} matrix_t;

static int64_t mx_unequal(int s, int d, int p) { return (s * 5 + d * 3 + 1) % 7; }
static int64_t mx_some_zero(int s, int d, int p) { return (s + d) % 2 ? 0 : s + d + 1; }
static int64_t mx_all_zero(int s, int d, int p) { return 0; }
static int64_t mx_to_last(int s, int d, int p) { return d == p - 1 ? 9 + s : 0; }
static int64_t mx_self_only(int s, int d, int p) { return s == d ? 4 : 0; }
static int64_t mx_from_first(int s, int d, int p) { return s == 0 ? 11 : 0; }
static int64_t mx_equal(int s, int d, int p) { return 3; }

static const matrix_t matrices[] = {
    {"unequal", mx_unequal},   {"some-zero", mx_some_zero},     {"all-zero", mx_all_zero},
    {"to-last", mx_to_last},   {"self-only", mx_self_only},     {"from-first", mx_from_first},
    {"equal", mx_equal},
};
enum { NMAT = sizeof matrices / sizeof matrices[0] };

/* Byte i of the block rank s sends to rank d in array b. */
static uint8_t a2a_byte(int s, int d, int b, int64_t i) { return cc_byte(s, 20 + b, (int64_t)d * 1000000 + i); }

/* Every rank sends count(me, d) rows to d; the naive expectation: rank me's
 * receive buffer is rank 0's block for me, then rank 1's, ... and the
 * traffic counters grow by the rows to and from other ranks. */
static void check_alltoall(const matrix_t *mt, const size_t *esz, int nbufs, epm_comm_t *c, int64_t limit) {
  int64_t counts[64 * 64], stot = 0, rtot = 0;
  for (int s = 0; s < P; s++)
    for (int d = 0; d < P; d++) counts[s * P + d] = mt->count(s, d, P);
  for (int r = 0; r < P; r++) {
    stot += counts[me * P + r];
    rtot += counts[r * P + me];
  }
  epm_comm_gather_buf_t bufs[4];
  size_t row = 0;
  for (int b = 0; b < nbufs; b++) {
    size_t sn = (size_t)stot * esz[b], rn = (size_t)rtot * esz[b], pos = 0;
    uint8_t *snd = sn ? malloc(sn) : NULL, *rv = rn ? malloc(rn) : NULL;
    for (int d = 0; d < P; d++)
      for (int64_t i = 0; i < counts[me * P + d] * (int64_t)esz[b]; i++) snd[pos++] = a2a_byte(me, d, b, i);
    if (rn) memset(rv, 0xA5, rn); /* poison: every byte must be written */
    bufs[b] = (epm_comm_gather_buf_t){.send = snd, .recv = rv, .elem_size = esz[b]};
    row += esz[b];
  }
  epm_comm_traffic_t t0, t1;
  epm_comm_traffic(c, &t0);
  if (nbufs == 1)
    CHECK_OK(epm_comm_alltoallv(c, bufs[0].send, bufs[0].recv, counts, esz[0]));
  else
    CHECK_OK(epm_comm_alltoallv_multi(c, bufs, nbufs, counts));
  epm_comm_traffic(c, &t1);
  uint64_t want_sent = 0, want_recv = 0;
  for (int r = 0; r < P; r++) {
    if (r == me) continue;
    want_sent += (uint64_t)counts[me * P + r] * row;
    want_recv += (uint64_t)counts[r * P + me] * row;
  }
  CHECK(t1.bytes_sent - t0.bytes_sent == want_sent && t1.bytes_recv - t0.bytes_recv == want_recv &&
            t1.calls == t0.calls + 1,
        "%s: traffic sent %llu recv %llu, want %llu %llu", mt->name,
        (unsigned long long)(t1.bytes_sent - t0.bytes_sent), (unsigned long long)(t1.bytes_recv - t0.bytes_recv),
        (unsigned long long)want_sent, (unsigned long long)want_recv);
  for (int b = 0; b < nbufs; b++) {
    const uint8_t *rv = bufs[b].recv;
    size_t pos = 0;
    for (int s = 0; s < P; s++)
      for (int64_t i = 0; i < counts[s * P + me] * (int64_t)esz[b]; i++, pos++)
        CHECK(rv[pos] == a2a_byte(s, me, b, i), "%s limit %lld buf %d/%d elem %zu: byte %zu (rank %d's byte %lld) is %u, want %u",
              mt->name, (long long)limit, b, nbufs, esz[b], pos, s, (long long)i, rv[pos], a2a_byte(s, me, b, i));
    free((void *)bufs[b].send);
    free(bufs[b].recv);
  }
}

static void check_rows_exchange(epm_comm_t *c) {
  int64_t mine[3] = {me, ((int64_t)me << 40) - 1, me == 1 ? INT64_MIN : -me}, all[64 * 3];
  CHECK_OK(epm_comm_exchange_rows(c, mine, 3, all));
  for (int r = 0; r < P; r++)
    CHECK(all[3 * r] == r && all[3 * r + 1] == ((int64_t)r << 40) - 1 && all[3 * r + 2] == (r == 1 ? INT64_MIN : -r),
          "rows of rank %d: %lld %lld %lld", r, (long long)all[3 * r], (long long)all[3 * r + 1],
          (long long)all[3 * r + 2]);
  CHECK(epm_comm_exchange_rows(c, mine, 0, all) == EPM_ERR_INVALID_ARG, "n = 0 accepted");
  CHECK(strstr(epm_last_error(), "outside [1,"), "message: %s", epm_last_error());
  /* A bad matrix is refused on every rank alike (it is the same everywhere). */
  int64_t counts[64 * 64] = {0};
  char b[64] = {0};
  counts[(P - 1) * P] = -2;
  epm_status_t st = epm_comm_alltoallv(c, b, b + 32, counts, 1);
  CHECK(st == EPM_ERR_INVALID_ARG, "negative count accepted: %s %s", epm_status_name(st), epm_last_error());
  char want[64];
  snprintf(want, sizeof want, "rank %d sends -2 rows to rank 0", P - 1);
  CHECK(strstr(epm_last_error(), want), "message '%s' lacks '%s'", epm_last_error(), want);
  counts[(P - 1) * P] = 0;
  counts[me * P] = 1; /* this rank sends a row but passes no buffer */
  for (int s = 0; s < P; s++) counts[s * P] = 1;
  CHECK(epm_comm_alltoallv(c, NULL, b, counts, 4) == EPM_ERR_INVALID_ARG, "NULL send accepted");
}

/* The inputs must make order visible, or the bit check above proves little:
 * with 3+ ranks some element's reverse-order sum must differ. */
static void check_order_matters(void) {
  if (P < 3) return;
  int differs = 0;
  for (int64_t g = 0; g < 4096 && !differs; g++) {
    float fw = 0, bw = 0;
    for (int r = 0; r < P; r++) fw = r == 0 ? cc_f32(r, 7, g) : fw + cc_f32(r, 7, g);
    for (int r = P - 1; r >= 0; r--) bw = r == P - 1 ? cc_f32(r, 7, g) : bw + cc_f32(r, 7, g);
    differs = memcmp(&fw, &bw, 4) != 0;
  }
  CHECK(differs, "test data too tame: forward and reverse sums agree everywhere");
}

static void check_sizes_max_barrier(epm_comm_t *c) {
  int64_t all[64];
  int64_t mine = ((int64_t)me << 33) + 7 * me + 1; /* above 2^32: 64-bit path */
  CHECK_OK(epm_comm_exchange_sizes(c, mine, all));
  for (int r = 0; r < P; r++)
    CHECK(all[r] == ((int64_t)r << 33) + 7 * r + 1, "sizes[%d] = %lld", r, (long long)all[r]);

  float v[5], want[5];
  for (int i = 0; i < 5; i++) {
    v[i] = cc_f32(me, 11, i);
    want[i] = -INFINITY;
    for (int r = 0; r < P; r++) want[i] = fmaxf(want[i], cc_f32(r, 11, i));
  }
  CHECK_OK(epm_comm_allreduce_max_f32(c, v, 5));
  for (int i = 0; i < 5; i++) CHECK(v[i] == want[i], "max[%d] = %g want %g", i, v[i], want[i]);
  CHECK_OK(epm_comm_barrier(c));
  CHECK_OK(epm_comm_wait(c, 0));
  CHECK_OK(epm_comm_check_async(c));
}

static void check_bad_args(epm_comm_t *c) {
  int64_t counts[64];
  for (int r = 0; r < P; r++) counts[r] = 1;
  counts[P - 1] = -1;
  char b[64] = {0};
  CHECK(epm_comm_allgatherv(c, b, b + 8, counts, 1) == EPM_ERR_INVALID_ARG, "negative count accepted");
  CHECK(strstr(epm_last_error(), "< 0") != NULL, "message: %s", epm_last_error());
  counts[P - 1] = 1;
  CHECK(epm_comm_reduce_scatterv(c, b, b, counts, 0, EPM_DTYPE_F32) == EPM_ERR_INVALID_ARG,
        "row_elems 0 accepted");
  CHECK(epm_comm_allgatherv(c, NULL, b, counts, 4) == EPM_ERR_INVALID_ARG, "NULL send accepted");
  /* Sizes exchange carries any value (sentinels), never failing on one rank only. */
  CHECK_OK(epm_comm_exchange_sizes(c, me == 0 ? -3 : INT64_MAX - me, counts));
  for (int r = 0; r < P; r++) CHECK(counts[r] == (r == 0 ? -3 : INT64_MAX - r), "sentinel of rank %d", r);
}

/* A requested abort (as a watchdog thread would) turns the next call into
 * EPM_ERR_ABORTED on this rank without ending the job. */
static void check_request_abort(const epm_bootstrap_t *boot) {
  epm_comm_t *c;
  CHECK_OK(epm_comm_create(boot, NULL, &c));
  int64_t counts[64];
  CHECK_OK(epm_comm_exchange_sizes(c, 1, counts));
  CHECK_OK(epm_comm_check_async(c));
  epm_comm_request_abort(c);
  CHECK_OK(epm_comm_check_async(c)); /* a request alone is not acted on by the watchdog's poll */
  char b[64] = {0};
  CHECK(epm_comm_allgatherv(c, b, b + 32, counts, 1) == EPM_ERR_ABORTED, "call after request: %s",
        epm_last_error());
  CHECK(strstr(epm_last_error(), "aborted") != NULL, "message: %s", epm_last_error());
  CHECK(epm_comm_check_async(c) == EPM_ERR_ABORTED, "check_async after abort");
  CHECK(epm_comm_barrier(c) == EPM_ERR_ABORTED, "barrier after abort");
  epm_comm_destroy(c);
}

int main(int argc, char **argv) {
  epm_bootstrap_t boot;
  epm_bootstrap_opts_t bo = {.gpu_mode = EPM_GPU_OFF};
  CHECK_OK(epm_bootstrap_init(&argc, &argv, &bo, &boot));
  P = boot.ep_size;
  me = boot.ep_rank;
  CHECK(P <= 64, "test supports up to 64 ranks");
  epm_comm_t *c;
  epm_comm_opts_t co = {.backend = EPM_COMM_MPI};
  CHECK_OK(epm_comm_create(&boot, &co, &c));
  CHECK(epm_comm_rank(c) == me && epm_comm_size(c) == P, "rank/size");
  CHECK(epm_comm_mem_kind(c) == EPM_MEM_HOST, "mpi comm must use host memory");
  CHECK(strcmp(epm_comm_backend_name(c), "mpi") == 0, "name");

  check_order_matters();
  check_sizes_max_barrier(c);
  check_bad_args(c);
  check_rows_exchange(c);

  /* Default limit, then limits that split rows, counts and displacements. */
  const int64_t limits[] = {0, 64, 7, 1};
  const size_t esz_all[] = {1, 3, 7, 16, 33};
  const size_t multi[] = {8, 1, 32, 16}; /* fp4 row, scale, 8 ids, 8 weights (tiny H) */
  for (size_t li = 0; li < sizeof limits / sizeof limits[0]; li++) {
    int64_t lim = limits[li];
    epm_comm_mpi_set_max_count(lim);
    for (int p = 0; p < NPAT; p++) {
      int n_esz = lim == 1 ? 2 : 5; /* 1-byte pieces: a few sizes are enough */
      for (int e = 0; e < n_esz; e++) check_gather(&patterns[p], &esz_all[e], 1, c, lim);
      check_gather(&patterns[p], multi, 4, c, lim);
      const int64_t rows[] = {1, 3, 8};
      for (int k = 0; k < 3; k++) {
        check_reduce(&patterns[p], rows[k], EPM_DTYPE_F32, c, lim);
        check_reduce(&patterns[p], rows[k], EPM_DTYPE_BF16, c, lim);
      }
    }
    for (int x = 0; x < NMAT; x++) {
      int n_esz = lim == 1 ? 2 : 5;
      for (int e = 0; e < n_esz; e++) check_alltoall(&matrices[x], &esz_all[e], 1, c, lim);
      check_alltoall(&matrices[x], multi, 4, c, lim);
    }
    check_sizes_max_barrier(c);
  }
  epm_comm_mpi_set_max_count(0);

  epm_comm_destroy(c);
  check_request_abort(&boot);
  if (me == 0) printf("comm mpi: P=%d ok\n", P);
  epm_bootstrap_finalize(&boot);
  return 0;
}
