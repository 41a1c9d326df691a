/* SPDX-License-Identifier: Apache-2.0 */
/* tests/gpu/gpu_util.cu — see gpu_util.h. */
#include "gpu_fill.h"
#include "gpu_util.h"

extern "C" void gpu_require_device(const char *test_name) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (e != cudaSuccess) (void)epm_cuda_status(e, "cudaGetDeviceCount");
    printf("%s: no CUDA device (%s); skipping\n", test_name, e == cudaSuccess ? "0 devices" : epm_last_error());
    exit(77);
  }
  cudaDeviceProp p;
  GPU_CHECK(cudaGetDeviceProperties(&p, 0));
  printf("%s: device 0 = %s (sm_%d%d, %d SMs, %.1f GiB)\n", test_name, p.name, p.major, p.minor,
         p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30));
}

extern "C" void *gpu_alloc_poisoned(size_t bytes, int poison) {
  void *p = NULL;
  GPU_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  GPU_CHECK(cudaMemset(p, poison, bytes ? bytes : 1));
  return p;
}

extern "C" void *gpu_upload(const void *host, size_t bytes) {
  void *p = gpu_alloc_poisoned(bytes, 0xFF);
  if (bytes) GPU_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
  return p;
}

extern "C" void gpu_download(void *host, const void *dev, size_t bytes) {
  if (bytes) GPU_CHECK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}

__global__ void fill_act_kernel(uint16_t *x, int64_t rows, int64_t cols, uint64_t seed) {
  const int64_t n = rows * cols, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = epm_fill_act_bf16(seed, i / cols, i % cols, cols);
}

__global__ void fill_logits_kernel(float *x, int64_t rows, int64_t e, uint64_t seed) {
  const int64_t n = rows * e, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = epm_fill_logit(seed, i / e, i % e, e);
}

__global__ void fill_bytes_kernel(uint8_t *x, int64_t n, uint64_t seed, unsigned mask, unsigned orr) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = (uint8_t)((epm_fill_mix(seed ^ (uint64_t)i) & mask) | orr);
}

extern "C" void gpu_fill_bytes(uint8_t *dev, int64_t n, uint64_t seed, unsigned mask, unsigned orr) {
  fill_bytes_kernel<<<4096, 256>>>(dev, n, seed, mask, orr);
  GPU_CHECK(cudaGetLastError());
  GPU_CHECK(cudaDeviceSynchronize());
}

extern "C" void gpu_fill_act_bf16(uint16_t *dev, int64_t rows, int64_t cols, uint64_t seed) {
  fill_act_kernel<<<4096, 256>>>(dev, rows, cols, seed);
  GPU_CHECK(cudaGetLastError());
  GPU_CHECK(cudaDeviceSynchronize());
}

extern "C" void gpu_fill_logits(float *dev, int64_t rows, int64_t num_experts, uint64_t seed) {
  fill_logits_kernel<<<4096, 256>>>(dev, rows, num_experts, seed);
  GPU_CHECK(cudaGetLastError());
  GPU_CHECK(cudaDeviceSynchronize());
}

extern "C" void gpu_upload_experts(const epm_layer_t *layer, epm_moe_weights_dev_t *w) {
  const epm_expert_bank_t *b = &layer->experts;
  const size_t c = (size_t)b->count, H = (size_t)b->hidden, I = (size_t)b->intermediate;
  w->gate_w = (const uint8_t *)gpu_upload(b->gate_w, c * I * H / 2);
  w->gate_sf = (const uint8_t *)gpu_upload(b->gate_sf, c * I * H / 16);
  w->up_w = (const uint8_t *)gpu_upload(b->up_w, c * I * H / 2);
  w->up_sf = (const uint8_t *)gpu_upload(b->up_sf, c * I * H / 16);
  w->down_w = (const uint8_t *)gpu_upload(b->down_w, c * H * I / 2);
  w->down_sf = (const uint8_t *)gpu_upload(b->down_sf, c * H * I / 16);
  w->gate_up_scale_2 = (const float *)gpu_upload(b->gate_up_scale_2, c * sizeof(float));
  w->down_scale_2 = (const float *)gpu_upload(b->down_scale_2, c * sizeof(float));
  w->input_scale = layer->input_scale;
  w->down_input_scale = layer->down_input_scale;
}

extern "C" void gpu_free_experts(epm_moe_weights_dev_t *w) {
  const void *p[] = {w->gate_w, w->gate_sf, w->up_w, w->up_sf, w->down_w, w->down_sf,
                     w->gate_up_scale_2, w->down_scale_2};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) GPU_CHECK(cudaFree((void *)p[i]));
}

extern "C" gpu_cmp_t gpu_compare(const char *what, const float *out, const float *ref, int64_t n) {
  gpu_cmp_t c = {0, 0, 0, 0, n, 0};
  double se = 0, sr = 0;
  for (int64_t i = 0; i < n; i++) {
    double o = out[i], r = ref[i];
    if (!(o == o) || o - o != 0) {
      c.nonfinite++;
      continue;
    }
    double d = fabs(o - r);
    se += d * d;
    sr += r * r;
    if (d > c.max_abs) c.max_abs = d;
    if (fabs(r) > c.ref_absmax) c.ref_absmax = fabs(r);
    c.exact += o == r;
  }
  c.rel_l2 = sr > 0 ? sqrt(se / sr) : sqrt(se);
  printf("  %-44s n=%-9lld rel-L2 %.3e  max|diff| %.3e (max|ref| %.3e)  exact %.2f%%  non-finite %lld\n",
         what, (long long)n, c.rel_l2, c.max_abs, c.ref_absmax, n ? 100.0 * (double)c.exact / (double)n : 100.0,
         (long long)c.nonfinite);
  return c;
}

extern "C" const char *const gpu_step_stage_names[GPU_STEP_STAGES] = {
    "quantize", "routing", "permute", "gemm1+swiglu+requant", "gemm2", "finalize"};

extern "C" void gpu_step_run(const gpu_step_t *s, float *ms) {
  static cudaEvent_t ev[GPU_STEP_STAGES + 1];
  static int made;
  if (!made) {
    for (int i = 0; i <= GPU_STEP_STAGES; i++) GPU_CHECK(cudaEventCreate(&ev[i]));
    made = 1;
  }
  GPU_CHECK(cudaEventRecord(ev[0], 0));
  EPM_CHECK(epm_kernel_quantize_bf16(&s->qp, s->x, s->g, (void *)s->in.hidden_fp4, (void *)s->in.hidden_sf, NULL));
  GPU_CHECK(cudaEventRecord(ev[1], 0));
  EPM_CHECK(epm_kernel_routing(&s->rp, s->logits, s->bias, (int32_t *)s->in.ids, (float *)s->in.weights, NULL));
  GPU_CHECK(cudaEventRecord(ev[2], 0));
  EPM_CHECK(epm_kernel_moe_permute(&s->mp, &s->in, &s->ws, NULL));
  GPU_CHECK(cudaEventRecord(ev[3], 0));
  EPM_CHECK(epm_kernel_moe_gemm1(&s->mp, &s->w, &s->in, &s->ws, NULL));
  GPU_CHECK(cudaEventRecord(ev[4], 0));
  EPM_CHECK(epm_kernel_moe_gemm2(&s->mp, &s->w, &s->ws, NULL));
  GPU_CHECK(cudaEventRecord(ev[5], 0));
  EPM_CHECK(epm_kernel_moe_finalize(&s->mp, &s->in, &s->ws, s->out_f32, s->out, NULL));
  GPU_CHECK(cudaEventRecord(ev[6], 0));
  GPU_CHECK(cudaDeviceSynchronize());
  if (ms)
    for (int i = 0; i < GPU_STEP_STAGES; i++) GPU_CHECK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
}
