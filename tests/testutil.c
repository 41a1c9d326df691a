/* SPDX-License-Identifier: Apache-2.0 */
/* testutil.c — the test RNG (see testutil.h; the bundle reader is bundle.c). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

uint64_t epm_test_rng_u64(epm_test_rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float epm_test_rng_uniform(epm_test_rng_t *r) {
  return (float)(epm_test_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

float epm_test_rng_normal(epm_test_rng_t *r) {
  float u1 = epm_test_rng_uniform(r), u2 = epm_test_rng_uniform(r);
  if (u1 < 1e-7f) u1 = 1e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

static char stderr_path[64];
static int stderr_saved = -1;

/* A harness failure, not a result: stop loudly. */
static void die(const char *what) {
  perror(what);
  abort();
}

void epm_test_stderr_begin(void) {
  snprintf(stderr_path, sizeof stderr_path, "/tmp/epm_test_stderr_XXXXXX");
  int fd = mkstemp(stderr_path);
  if (fd < 0) die("mkstemp");
  fflush(stderr);
  stderr_saved = dup(STDERR_FILENO);
  if (stderr_saved < 0 || dup2(fd, STDERR_FILENO) < 0) die("dup2");
  close(fd);
}

char *epm_test_stderr_end(void) {
  struct stat st;
  fflush(stderr);
  if (dup2(stderr_saved, STDERR_FILENO) < 0) die("dup2");
  close(stderr_saved);
  stderr_saved = -1;
  FILE *f = fopen(stderr_path, "rb");
  if (!f || fstat(fileno(f), &st) != 0) die(stderr_path);
  char *buf = calloc(1, (size_t)st.st_size + 1);
  if (!buf) die("calloc");
  size_t n = fread(buf, 1, (size_t)st.st_size, f);
  buf[n] = '\0';
  fclose(f);
  unlink(stderr_path);
  return buf;
}
