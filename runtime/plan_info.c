/* SPDX-License-Identifier: Apache-2.0 */
/* plan_info.c — describe a plan's buffers (name, dtype, role) and check the
 * sizes of tensors handed to launchers against it (epmoe/plan.h).
 *
 * The table below is the single list of a step's buffers: printing, totals
 * and allocation loops iterate over it, so a buffer added to epm_plan_t and
 * here is counted everywhere.
 */
#include "epmoe/plan.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "epmoe/checked.h"

typedef struct {
  const char *name;
  size_t offset;
  epm_plan_group_t group;
  const char *dtype;
  const char *desc;
} buf_row_t;

#define ROW(field, group, dtype, desc) {#field, offsetof(epm_plan_t, field), group, dtype, desc}
#define L EPM_PLAN_GROUP_LOCAL
#define G EPM_PLAN_GROUP_GATHERED
#define X EPM_PLAN_GROUP_EXPERT
#define S EPM_PLAN_GROUP_SHARED
#define W EPM_PLAN_GROUP_WEIGHTS
static const buf_row_t table[] = {
    ROW(x_local, L, "bf16", "[m_r, H] hidden states from the engine"),
    ROW(logits_local, L, "fp32", "[m_r, E] router logits"),
    ROW(topk_ids_local, L, "int32", "[m_r, k] chosen global expert ids"),
    ROW(topk_w_local, L, "fp32", "[m_r, k] routing weights"),
    ROW(xq_local, L, "fp4x2", "[m_r, H/2] bytes: NVFP4 codes of x_r, two per byte"),
    ROW(xsf_local, L, "e4m3", "[m_r, H/16] block scales, linear (gathered as is)"),
    ROW(xsf_local_swz, L, "e4m3", "[pad128(m_r), pad4(H/16)] block scales, 128x4 swizzled"),
    ROW(xq_gathered, G, "fp4x2", "[M, H/2] bytes: all ranks' NVFP4 codes, rank order"),
    ROW(xsf_gathered, G, "e4m3", "[M, H/16] linear scales: the hidden_states_scale"),
    ROW(xsf_gathered_swz, G, "e4m3", "[pad128(M), pad4(H/16)] scales swizzled after the gather"),
    ROW(topk_ids_gathered, G, "int32", "[M, k] expert ids of all tokens"),
    ROW(topk_w_gathered, G, "fp32", "[M, k] routing weights of all tokens"),
    ROW(expanded_to_permuted, X, "int64", "[M, k] permuted row of each pair, -1 if not local"),
    ROW(permuted_to_token, X, "int64", "[R] gathered token of each permuted row, -1 = padding"),
    ROW(expert_row_offsets, X, "int64", "[E_l + 1] padded first row of each local expert"),
    ROW(gemm1_out, X, "bf16", "[R, 2I] GEMM1 output [up | gate] (unfused path)"),
    ROW(inter_q, X, "fp4x2", "[R, I/2] bytes: SwiGLU output re-quantized to NVFP4"),
    ROW(inter_sf, X, "e4m3", "[pad128(R), pad4(I/16)] its scales, 128x4 swizzled"),
    ROW(gemm2_out, X, "bf16", "[R, H] GEMM2 output, rounded to bf16 before finalize"),
    ROW(partial_y, X, "bf16", "[M, H] weighted sum over local experts = reduce-scatter input"),
    ROW(y_local, L, "bf16", "[m_r, H] reduce-scatter output returned to the engine"),
    ROW(shared_gemm1_out, S, "bf16", "[m_r, 2Is] shared-expert GEMM1 output"),
    ROW(shared_inter_q, S, "fp4x2", "[m_r, Is/2] bytes: shared SwiGLU output in NVFP4"),
    ROW(shared_inter_sf, S, "e4m3", "[pad128(m_r), pad4(Is/16)] its scales, swizzled"),
    ROW(shared_out, S, "bf16", "[m_r, H] shared-expert output, added unscaled"),
    ROW(w13_q, W, "fp4x2", "[E_l, 2I, H/2] bytes: gate+up weights of the local experts"),
    ROW(w13_sf, W, "e4m3", "[E_l, pad128(2I), pad4(H/16)] their scales, swizzled per expert"),
    ROW(w2_q, W, "fp4x2", "[E_l, H, I/2] bytes: down weights of the local experts"),
    ROW(w2_sf, W, "e4m3", "[E_l, pad128(H), pad4(I/16)] their scales, swizzled per expert"),
    ROW(expert_scalars, W, "fp32", "[E_l, 3] output1_scale, output1_scale_gate, output2_scale"),
    ROW(routing_bias, W, "fp32", "[E] deepseek-v3 e_score_correction_bias"),
    ROW(shared_w13_q, W, "fp4x2", "[S, 2Is, H/2] bytes: shared-expert gate+up weights"),
    ROW(shared_w13_sf, W, "e4m3", "[S, pad128(2Is), pad4(H/16)] their scales"),
    ROW(shared_w2_q, W, "fp4x2", "[S, H, Is/2] bytes: shared-expert down weights"),
    ROW(shared_w2_sf, W, "e4m3", "[S, pad128(H), pad4(Is/16)] their scales"),
    ROW(shared_scalars, W, "fp32", "[S, 3] shared-expert scalars"),
};
#undef L
#undef G
#undef X
#undef S
#undef W
#undef ROW
#define NROWS (sizeof table / sizeof table[0])

static const char *const group_names[EPM_PLAN_GROUP_COUNT] = {
    "local", "gathered", "expert", "shared", "weights",
};

const char *epm_plan_group_name(epm_plan_group_t g) {
  if ((int)g < 0 || g >= EPM_PLAN_GROUP_COUNT) return "invalid";
  return group_names[g];
}

size_t epm_plan_buffer_count(void) { return NROWS; }

epm_status_t epm_plan_buffer(const epm_plan_t *p, size_t i, epm_plan_buffer_info_t *out) {
  if (!p || !out) return epm_error(EPM_ERR_INVALID_ARG, "plan buffer: NULL argument");
  if (i >= NROWS)
    return epm_error(EPM_ERR_INVALID_ARG, "plan buffer index %zu is outside [0, %zu)", i, NROWS);
  const buf_row_t *r = &table[i];
  memcpy(&out->buf, (const char *)p + r->offset, sizeof out->buf);
  out->name = r->name;
  out->group = r->group;
  out->dtype = r->dtype;
  out->desc = r->desc;
  out->int32_elements = out->buf.elements > INT32_MAX;
  out->int32_bytes = out->buf.bytes > (size_t)INT32_MAX;
  return EPM_OK;
}

epm_status_t epm_plan_buffer_by_name(const epm_plan_t *p, const char *name,
                                     epm_plan_buffer_info_t *out) {
  for (size_t i = 0; name && i < NROWS; i++)
    if (strcmp(table[i].name, name) == 0) return epm_plan_buffer(p, i, out);
  return epm_error(EPM_ERR_INVALID_ARG, "no plan buffer named '%s'", name ? name : "(null)");
}

epm_status_t epm_plan_check_numel(const char *tensor, int64_t numel, int64_t rows,
                                  const char *rows_name, int64_t cols, const char *cols_name,
                                  int64_t divisor) {
  int64_t prod;
  if (rows < 0 || cols < 0 || divisor < 1)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: %lld %s, %lld %s, divisor %lld: need >= 0, >= 0, >= 1",
                     tensor, (long long)rows, rows_name, (long long)cols, cols_name,
                     (long long)divisor);
  if (cols % divisor != 0)
    return epm_error(EPM_ERR_INVALID_ARG, "%s: %lld %s is not a multiple of %lld", tensor,
                     (long long)cols, cols_name, (long long)divisor);
  if (epm_mul_i64(rows, cols, &prod))
    return epm_error(EPM_ERR_OVERFLOW, "%s: %lld %s x %lld %s overflows int64", tensor,
                     (long long)rows, rows_name, (long long)cols, cols_name);
  int64_t expected = prod / divisor;
  if (numel == expected) return EPM_OK;
  if (divisor == 1)
    return epm_error(EPM_ERR_INVALID_ARG, "%s has %lld elements; %lld %s x %lld %s = %lld expected",
                     tensor, (long long)numel, (long long)rows, rows_name, (long long)cols,
                     cols_name, (long long)expected);
  return epm_error(EPM_ERR_INVALID_ARG,
                   "%s has %lld elements; %lld %s x %lld %s / %lld = %lld expected", tensor,
                   (long long)numel, (long long)rows, rows_name, (long long)cols, cols_name,
                   (long long)divisor, (long long)expected);
}

epm_status_t epm_plan_check_scale_numel(int64_t rows, int64_t hidden, int64_t numel) {
  return epm_plan_check_numel("hidden_states_scale", numel, rows, "tokens", hidden, "hidden", 16);
}

epm_status_t epm_plan_check_packed_numel(int64_t rows, int64_t hidden, int64_t numel) {
  return epm_plan_check_numel("hidden_states", numel, rows, "tokens", hidden, "hidden", 2);
}

epm_status_t epm_plan_check_buffer(const epm_plan_t *p, const char *name, size_t have_bytes) {
  epm_plan_buffer_info_t b;
  EPM_TRY(epm_plan_buffer_by_name(p, name, &b));
  if (have_bytes >= b.buf.bytes) return EPM_OK;
  return epm_error(EPM_ERR_INVALID_ARG, "buffer %s has %zu bytes; the plan needs %zu ([%lld, %lld] %s)",
                   name, have_bytes, b.buf.bytes, (long long)b.buf.rows, (long long)b.buf.cols,
                   b.dtype);
}
