/* SPDX-License-Identifier: Apache-2.0 */
/* comm_check.h — shared helpers of the comm tests: per-rank data that any
 * rank can regenerate, and the expected results written naively (one loop,
 * no messaging), independent of the backend code under test. */
#ifndef EPMOE_TEST_COMM_CHECK_H
#define EPMOE_TEST_COMM_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "epmoe/bf16.h"
#include "epmoe/bootstrap.h"

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      int r_;                                                                \
      MPI_Comm_rank(MPI_COMM_WORLD, &r_);                                    \
      fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", r_, __FILE__,    \
              __LINE__, #cond);                                              \
      fprintf(stderr, __VA_ARGS__);                                          \
      fprintf(stderr, "\n");                                                 \
      MPI_Abort(MPI_COMM_WORLD, 1);                                          \
    }                                                                        \
  } while (0)

#define CHECK_OK(expr)                                                       \
  do {                                                                       \
    epm_status_t st_ = (expr);                                               \
    CHECK(st_ == EPM_OK, "%s: %s", epm_status_name(st_), epm_last_error());  \
  } while (0)

static inline uint64_t cc_mix(uint64_t x) { /* splitmix64 finaliser */
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Byte i of buffer `tag` contributed by `rank`. */
static inline uint8_t cc_byte(int rank, int tag, int64_t i) {
  return (uint8_t)cc_mix(((uint64_t)rank << 48) ^ ((uint64_t)tag << 40) ^ (uint64_t)i);
}

/* fp32 element i of rank's reduce input: mixed signs and exponents 2^-12..2^12,
 * so the order of additions changes the rounded sum. */
static inline float cc_f32(int rank, int tag, int64_t i) {
  uint64_t h = cc_mix(((uint64_t)rank << 48) ^ ((uint64_t)tag << 40) ^ (uint64_t)i ^ 0x5eedull);
  uint32_t mant = (uint32_t)(h & 0x7fffffu);
  uint32_t exp = (uint32_t)(127 - 12 + (int)((h >> 23) % 25));
  uint32_t sign = (uint32_t)((h >> 40) & 1u) << 31;
  uint32_t bits = sign | (exp << 23) | mant;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* GPU tests: every rank exits 77 together unless every rank can have a GPU
 * of its own (ranks on its node <= GPUs it sees); decided by one all-reduce
 * so no rank is left waiting. Call after MPI_Init. */
static inline void cc_skip_without_gpu(void) {
  int ngpu = 0, short_any = 0, r = 0, local = 1;
  CHECK_OK(epm_gpu_count(&ngpu));
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  int short_me = ngpu == 0 || ngpu < local;
  MPI_Allreduce(&short_me, &short_any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (!short_any) return;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  if (r == 0) printf("not one GPU per rank (this rank sees %d for %d local ranks): skipping\n", ngpu, local);
  MPI_Finalize();
  exit(77);
}

#endif
