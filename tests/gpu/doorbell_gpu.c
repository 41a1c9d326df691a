/* SPDX-License-Identifier: Apache-2.0 */
/* doorbell_gpu — the device-mode doorbell inside a CUDA graph (label gpu;
 * exit 77 without a GPU). Run by tests/gpu/doorbell_gpu.sh against one
 * daemon on the cuda backend (tiny preset, 2 layers):
 *
 *   doorbell_gpu DIR
 *
 * The client's stream does, for two MoE layers in a row:
 *   copy x and layer 0's logits in -> ring (layer 0) -> wait -> copy y0 out
 *   -> y0 becomes x (device copy) -> copy layer 1's logits in -> ring
 *   (layer 1) -> wait -> copy y1 out
 * once eagerly, then captured into a CUDA graph that is launched again with
 * new tokens each time (the ring / wait values are constants, so one graph
 * serves every step). Each step's y0 and y1 are checked against the CPU
 * reference (epm_moe_ref_layer of the whole layer; y1's from the y0 the GPU
 * produced), and the daemon's answer count must advance by 2 per launch. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epmoe/bf16.h"
#include "epmoe/client.h"
#include "epmoe/layer.h"
#include "epmoe/model.h"
#include "epmoe/moe_ref.h"
#include "epmoe/tokens.h"

#define M 16 /* tokens per step: a fixed capacity, as a captured graph has */

#define FAIL(...)          \
  do {                     \
    printf("FAIL: ");      \
    printf(__VA_ARGS__);   \
    printf("\n");          \
    exit(1);               \
  } while (0)
#define CUDA_OK(call)                                                                  \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess) FAIL("%s: %s", #call, cudaGetErrorString(e_));             \
  } while (0)
#define EPM_OK_OR_FAIL(call)                                  \
  do {                                                        \
    if ((call) != EPM_OK) FAIL("%s: %s", #call, epm_last_error()); \
  } while (0)

static epm_model_dims_t dims;
static epm_layer_t layers[2];
static int64_t H, E;

static double rel_err(const epm_bf16_t *y, const epm_bf16_t *ref, int64_t n) {
  double maxerr = 0, maxref = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)epm_bf16_to_f32(y[i]) - (double)epm_bf16_to_f32(ref[i]));
    if (!(e <= maxerr)) maxerr = e;
    maxref = fmax(maxref, fabs((double)epm_bf16_to_f32(ref[i])));
  }
  if (!(maxref > 0)) FAIL("the reference is all zero: the check would prove nothing");
  return maxerr / maxref;
}

static void check_step(int k, const epm_bf16_t *x, const float *lg0, const float *lg1, const epm_bf16_t *y0,
                       const epm_bf16_t *y1) {
  epm_bf16_t *ref = malloc((size_t)(M * H) * 2);
  epm_moe_ref_opts_t ro = EPM_MOE_REF_OPTS_INIT;
  ro.include_shared = 0; /* the integration default: the engine adds its shared expert itself */
  EPM_OK_OR_FAIL(epm_moe_ref_layer(&layers[0], x, lg0, M, &ro, NULL, NULL, NULL, ref, NULL));
  double e0 = rel_err(y0, ref, M * H);
  EPM_OK_OR_FAIL(epm_moe_ref_layer(&layers[1], y0, lg1, M, &ro, NULL, NULL, NULL, ref, NULL));
  double e1 = rel_err(y1, ref, M * H);
  printf("ok: step %d: layer 0 max relative error %.3g, layer 1 %.3g vs the CPU reference\n", k, e0, e1);
  if (!(e0 <= 1.0 / 64) || !(e1 <= 1.0 / 64)) FAIL("step %d above 2^-6", k);
  free(ref);
}

int main(int argc, char **argv) {
  int ndev = 0;
  if (argc != 2) {
    fprintf(stderr, "usage: doorbell_gpu DIR\n");
    return 64;
  }
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
    printf("no GPU: skip\n");
    return 77;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  char path[300];
  snprintf(path, sizeof path, "%s/epmoe.0.sock", argv[1]);
  epm_client_t *c = NULL;
  epm_client_info_t info;
  EPM_OK_OR_FAIL(epm_client_connect(path, 30000, &c));
  EPM_OK_OR_FAIL(epm_client_hello(c, "doorbell_gpu", &info));
  if (info.world_size != 1) FAIL("run one daemon (got %d ranks)", info.world_size);
  EPM_OK_OR_FAIL(epm_model_preset(info.model, &dims));
  H = dims.hidden, E = dims.num_experts;
  for (int l = 0; l < 2; l++) EPM_OK_OR_FAIL(epm_layer_generate(&dims, l, 1, 0, E, &layers[l]));

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  epm_doorbell_t *db = NULL;
  EPM_OK_OR_FAIL(epm_client_doorbell_create_dev(c, 0, M, (uint64_t)ts.tv_sec * 1000000u, &db));
  void *dx = (void *)(uintptr_t)epm_doorbell_dev_x(db), *dl = (void *)(uintptr_t)epm_doorbell_dev_logits(db),
       *dy = (void *)(uintptr_t)epm_doorbell_dev_y(db);
  const size_t xb = (size_t)(M * H) * 2, lb = (size_t)(M * E) * 4;

  /* pinned staging: the graph's host ends */
  epm_bf16_t *hx, *hy0, *hy1;
  float *hl0, *hl1;
  CUDA_OK(cudaMallocHost((void **)&hx, xb));
  CUDA_OK(cudaMallocHost((void **)&hy0, xb));
  CUDA_OK(cudaMallocHost((void **)&hy1, xb));
  CUDA_OK(cudaMallocHost((void **)&hl0, lb));
  CUDA_OK(cudaMallocHost((void **)&hl1, lb));
  epm_bf16_t *unused_x = malloc(xb); /* the x of layer 1's logits draw: layer 1 reads y0 */
  cudaStream_t s;
  static cudaGraphExec_t exec;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  /* The two-layer sequence on stream s: the same calls eagerly and captured. */
#define ENQUEUE()                                                                            \
  do {                                                                                       \
    CUDA_OK(cudaMemcpyAsync(dx, hx, xb, cudaMemcpyHostToDevice, s));                         \
    CUDA_OK(cudaMemcpyAsync(dl, hl0, lb, cudaMemcpyHostToDevice, s));                        \
    EPM_OK_OR_FAIL(epm_doorbell_ring_stream(db, s, 0, M, 0, EPM_DTYPE_F32));                 \
    EPM_OK_OR_FAIL(epm_doorbell_wait_stream(db, s));                                         \
    CUDA_OK(cudaMemcpyAsync(hy0, dy, xb, cudaMemcpyDeviceToHost, s));                        \
    CUDA_OK(cudaMemcpyAsync(dx, dy, xb, cudaMemcpyDeviceToDevice, s));                       \
    CUDA_OK(cudaMemcpyAsync(dl, hl1, lb, cudaMemcpyHostToDevice, s));                        \
    EPM_OK_OR_FAIL(epm_doorbell_ring_stream(db, s, 1, M, 0, EPM_DTYPE_F32));                 \
    EPM_OK_OR_FAIL(epm_doorbell_wait_stream(db, s));                                         \
    CUDA_OK(cudaMemcpyAsync(hy1, dy, xb, cudaMemcpyDeviceToHost, s));                        \
  } while (0)

  const int steps = 6;
  uint64_t answered = 0, before = 0;
  for (int k = 0; k <= steps; k++) {
    /* new tokens every step; layer 1's logits are another draw */
    EPM_OK_OR_FAIL(epm_tokens_generate(&dims, 100 + (uint64_t)k, 0, M, hx, hl0));
    EPM_OK_OR_FAIL(epm_tokens_generate(&dims, 500 + (uint64_t)k, 0, M, unused_x, hl1));
    if (k == 0) {
      ENQUEUE(); /* eager */
    } else {
      if (k == 1) {
        cudaGraph_t graph;
        CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        ENQUEUE();
        CUDA_OK(cudaStreamEndCapture(s, &graph));
        CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
        CUDA_OK(cudaGraphDestroy(graph));
        printf("ok: captured ring / wait / copies of two layers into one CUDA graph\n");
      }
      CUDA_OK(cudaGraphLaunch(exec, s));
    }
    CUDA_OK(cudaStreamSynchronize(s));
    EPM_OK_OR_FAIL(epm_doorbell_status(db, &answered, NULL));
    if (answered != before + 2) FAIL("step %d: the daemon answered %llu steps, expected %llu", k, (unsigned long long)answered,
                                     (unsigned long long)(before + 2));
    before = answered;
    check_step(k, hx, hl0, hl1, hy0, hy1);
  }
  free(unused_x);
  printf("PASS: device-mode doorbell, %d steps of 2 layers (1 eager, %d graph launches)\n", steps + 1, steps);
  epm_client_close(c);
  return 0;
}
