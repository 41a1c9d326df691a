/* SPDX-License-Identifier: Apache-2.0 */
/* bench_gpu_nocuda.c — epmoe-bench built without CUDA: no GPU rows. */
#include <stdio.h>

#include "bench.h"

int bench_gpu(bench_problem_t *p, bench_result_t *r) {
  (void)p;
  snprintf(r->gpu_note, sizeof r->gpu_note, "skipped: built without CUDA (the GPU rows need a CUDA build and a device)");
  r->gpu_ran = 0;
  return 0;
}
