/* SPDX-License-Identifier: Apache-2.0 */
/* doorbell_check — the host doorbell against running daemons (every rank's
 * socket in DIR), driven by tests/daemon/doorbell_it.sh.
 *
 *   doorbell_check DIR steps         steps of several token splits and every
 *                                    option (shared expert on/off, f32/bf16
 *                                    partials, both served layers) against the
 *                                    EP = 1 CPU reference of the same global
 *                                    tokens; a skipped and a stale sequence
 *                                    number each refused naming both numbers,
 *                                    the doorbell going on after them; a step
 *                                    above the capacity refused by the daemon
 *   doorbell_check DIR die-mid-step  a child rings every rank and is killed
 *                                    while the step runs (--step-delay-ms);
 *                                    then this process's steps pass at once
 *   doorbell_check DIR die-half-rung a child rings rank 0 only and dies; the
 *                                    orphan step fails by --step-timeout, and
 *                                    this process's steps pass after it
 *
 * The reference is the CPU reference (epm_moe_ref_layer on the whole layer
 * generated from the preset and seed the daemons were started with), not
 * the step engine. Exit 0 pass, 1 fail (a FAIL: line says why). */
#define _GNU_SOURCE
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "epmoe/bf16.h"
#include "epmoe/client.h"
#include "epmoe/clock.h"
#include "epmoe/layer.h"
#include "epmoe/model.h"
#include "epmoe/moe_ref.h"
#include "epmoe/tokens.h"

#define MAXR 8
#define CAP 32

static const char *g_dir;
static int g_n;
static epm_client_t *g_cl[MAXR];
static epm_doorbell_t *g_db[MAXR];
static epm_client_info_t g_info;
static epm_model_dims_t g_dims;

#define FAIL(...)                    \
  do {                               \
    printf("FAIL: ");                \
    printf(__VA_ARGS__);             \
    printf("\n");                    \
    exit(1);                         \
  } while (0)

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Connect to every rank, HELLO, one doorbell each with the same base. */
static void open_all(uint64_t base) {
  for (int r = 0; r < MAXR; r++) {
    char path[300];
    snprintf(path, sizeof path, "%s/epmoe.%d.sock", g_dir, r);
    if (access(path, F_OK) != 0) break;
    epm_client_info_t info;
    if (epm_client_connect(path, 20000, &g_cl[r]) != EPM_OK || epm_client_hello(g_cl[r], "doorbell_check", &info) != EPM_OK)
      FAIL("rank %d: %s", r, epm_last_error());
    if (epm_client_doorbell_create(g_cl[r], CAP, base, &g_db[r]) != EPM_OK) FAIL("rank %d doorbell: %s", r, epm_last_error());
    if (r == 0) g_info = info;
    g_n = r + 1;
  }
  if (g_n < 2 || g_n != g_info.world_size) FAIL("found %d sockets in %s for %d ranks", g_n, g_dir, g_info.world_size);
  if (epm_model_preset(g_info.model, &g_dims) != EPM_OK) FAIL("model %s is not a preset: %s", g_info.model, epm_last_error());
}

static void close_all(void) {
  for (int r = 0; r < g_n; r++) epm_client_close(g_cl[r]);
  memset(g_cl, 0, sizeof g_cl);
  memset(g_db, 0, sizeof g_db);
}

/* One step of the global set (counts split in rank order) through the
 * doorbells, checked against the reference. */
static void step_check(const int64_t *counts, uint32_t layer, uint32_t flags, epm_dtype_t dt, uint64_t seed) {
  const int64_t H = g_info.hidden, E = g_info.num_experts;
  int64_t M = 0, off[MAXR];
  for (int r = 0; r < g_n; r++) off[r] = M, M += counts[r];
  epm_bf16_t *x = calloc((size_t)(M * H + 1), 2), *y = calloc((size_t)(M * H + 1), 2), *ref = calloc((size_t)(M * H + 1), 2);
  float *lg = calloc((size_t)(M * E + 1), 4);
  if (!x || !y || !ref || !lg) FAIL("no memory");
  if (epm_tokens_generate(&g_dims, seed, 0, M, x, lg) != EPM_OK) FAIL("tokens: %s", epm_last_error());
  for (int r = 0; r < g_n; r++) {
    memcpy(epm_doorbell_x(g_db[r]), x + off[r] * H, (size_t)(counts[r] * H) * 2);
    memcpy(epm_doorbell_logits(g_db[r]), lg + off[r] * E, (size_t)(counts[r] * E) * 4);
    if (epm_doorbell_ring(g_db[r], layer, counts[r], flags, dt) != EPM_OK) FAIL("ring rank %d: %s", r, epm_last_error());
  }
  for (int r = 0; r < g_n; r++) {
    if (epm_doorbell_wait(g_db[r], 0, NULL) != EPM_OK) FAIL("step on rank %d: %s", r, epm_last_error());
    memcpy(y + off[r] * H, epm_doorbell_y(g_db[r]), (size_t)(counts[r] * H) * 2);
  }
  epm_layer_t full;
  epm_moe_ref_opts_t ro = EPM_MOE_REF_OPTS_INIT;
  ro.include_shared = (flags & EPM_FWD_F_SHARED_EXPERT) != 0;
  if (epm_layer_generate(&g_dims, layer, 1, 0, g_dims.num_experts, &full) != EPM_OK ||
      epm_moe_ref_layer(&full, x, lg, M, &ro, NULL, NULL, NULL, ref, NULL) != EPM_OK)
    FAIL("reference: %s", epm_last_error());
  double maxerr = 0, maxref = 0;
  for (int64_t i = 0; i < M * H; i++) {
    double e = fabs((double)epm_bf16_to_f32(y[i]) - (double)epm_bf16_to_f32(ref[i]));
    if (!(e <= maxerr)) maxerr = e;
    maxref = fmax(maxref, fabs((double)epm_bf16_to_f32(ref[i])));
  }
  double rel = maxref > 0 ? maxerr / maxref : maxerr;
  printf("ok: doorbell step layer %u, tokens", layer);
  for (int r = 0; r < g_n; r++) printf("%s%lld", r ? "," : " ", (long long)counts[r]);
  printf(", shared %s, partial %s: max relative error %.3g vs the CPU reference\n", flags ? "on" : "off",
         epm_dtype_name(dt), rel);
  if (!(rel <= 1.0 / 64)) FAIL("relative error %.3g above 2^-6", rel);
  if (M > 0 && !(maxref > 0)) FAIL("reference is all zero: the check would prove nothing");
  epm_layer_free(&full);
  free(x), free(y), free(ref), free(lg);
}

/* Every rank rings seq; each must be refused at once, naming seq and the
 * number expected. */
static void expect_refused(uint64_t seq, uint64_t expected) {
  char want[128];
  snprintf(want, sizeof want, "doorbell sequence %llu is not the next one: expected %llu", (unsigned long long)seq,
           (unsigned long long)expected);
  for (int r = 0; r < g_n; r++)
    if (epm_doorbell_ring_seq(g_db[r], seq, 0, 1, EPM_FWD_F_SHARED_EXPERT, EPM_DTYPE_F32) != EPM_OK)
      FAIL("ring_seq: %s", epm_last_error());
  for (int r = 0; r < g_n; r++) {
    epm_status_t st = epm_doorbell_wait(g_db[r], 5000, NULL);
    if (st != EPM_ERR_INVALID_ARG || !strstr(epm_last_error(), want))
      FAIL("rank %d: sequence %llu answered %s: %s (wanted \"%s\")", r, (unsigned long long)seq, epm_status_name(st),
           epm_last_error(), want);
  }
  printf("ok: sequence %llu refused on every rank: %s\n", (unsigned long long)seq, epm_last_error());
}

static void mode_steps(void) {
  open_all(now_us());
  const int64_t splits[][MAXR] = {{5, 3, 0, 0}, {0, 7, 2, 1}, {CAP, 1, 4, 9}, {0, 0, 0, 0}};
  uint64_t seed = 11;
  for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) step_check(splits[i], 0, EPM_FWD_F_SHARED_EXPERT, EPM_DTYPE_F32, seed++);
  step_check(splits[0], 0, 0, EPM_DTYPE_F32, seed++);
  step_check(splits[1], 1, 0, EPM_DTYPE_BF16, seed++);
  step_check(splits[2], 1, EPM_FWD_F_SHARED_EXPERT, EPM_DTYPE_BF16, seed++);
  /* 7 steps rung so far: a skipped number, then a stale one, each refused;
   * the doorbell continues after the refused number */
  expect_refused(9, 8);
  step_check(splits[0], 0, EPM_FWD_F_SHARED_EXPERT, EPM_DTYPE_F32, seed++); /* 10 */
  expect_refused(4, 11);
  step_check(splits[1], 0, 0, EPM_DTYPE_F32, seed++); /* 5: an id used before, never open twice */
  /* the client library refuses tokens above the capacity before ringing
   * (the daemon's own check is exercised by the Python tests, which write
   * the control block directly) */
  epm_status_t st = epm_doorbell_ring(g_db[0], 0, CAP + 1, 0, EPM_DTYPE_F32);
  if (st != EPM_ERR_INVALID_ARG) FAIL("the client library rang %d tokens into a capacity of %d", CAP + 1, CAP);
  printf("ok: the client refuses %d tokens for a capacity of %d: %s\n", CAP + 1, CAP, epm_last_error());
  close_all();
}

/* A child that rings ranks [0, upto) of fresh connections, then dies
 * (SIGKILL) after die_ms. Returns when it is dead. */
static void orphan(int upto, int die_ms) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) FAIL("fork");
  if (pid == 0) {
    open_all(now_us() + 7777777);
    for (int r = 0; r < upto && r < g_n; r++)
      if (epm_doorbell_ring(g_db[r], 0, 4, EPM_FWD_F_SHARED_EXPERT, EPM_DTYPE_F32) != EPM_OK) _exit(2);
    usleep((useconds_t)die_ms * 1000u);
    raise(SIGKILL);
    _exit(3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) FAIL("the orphan client did not die by SIGKILL (status 0x%x)", status);
}

static void mode_die(int half) {
  const int64_t split[MAXR] = {3, 2, 1, 1};
  /* Every rank rung: the step runs (it lasts --step-delay-ms) while the
   * client dies; our step right after it must pass without a timeout. */
  orphan(half ? 1 : MAXR, 100);
  uint64_t t0 = epm_clock_ns();
  if (half) {
    /* Rank 0 holds a join nobody else makes: the orphan step fails after
     * --step-timeout on rank 0; wait for that before our step. */
    sleep(5);
  }
  open_all(now_us());
  step_check(split, 0, EPM_FWD_F_SHARED_EXPERT, EPM_DTYPE_F32, 99);
  step_check(split, 0, 0, EPM_DTYPE_F32, 100);
  double s = (double)(epm_clock_ns() - t0) * 1e-9;
  printf("ok: a client killed %s; the next steps passed %.2f s after its death\n",
         half ? "after ringing rank 0 only (its step failed by --step-timeout)" : "mid-step after ringing every rank", s);
  if (!half && s > 3.0) FAIL("the steps after the dead client took %.2f s (want < 3 s: no timeout involved)", s);
  close_all();
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: doorbell_check DIR steps|die-mid-step|die-half-rung\n");
    return 64;
  }
  g_dir = argv[1];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!strcmp(argv[2], "steps")) mode_steps();
  else if (!strcmp(argv[2], "die-mid-step")) mode_die(0);
  else if (!strcmp(argv[2], "die-half-rung")) mode_die(1);
  else {
    fprintf(stderr, "doorbell_check: unknown mode '%s'\n", argv[2]);
    return 64;
  }
  printf("PASS: doorbell_check %s\n", argv[2]);
  return 0;
}
