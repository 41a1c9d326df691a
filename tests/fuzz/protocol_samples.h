/* SPDX-License-Identifier: Apache-2.0 */
/* protocol_samples.h — one or more valid values of every protocol body, for
 * the table-driven loops of tests/unit/test_protocol.c and the seeds of
 * tests/fuzz/fuzz_frame.c. A body added to EPM_BODY_MAP without a sample
 * here fails test_protocol (epm_sample_body returns 0 for its variant 0).
 * Variants cover each body's shapes: FORWARD inline / shm / device (with
 * and without the shared expert, both partial dtypes), the DEV_ATTACH fd and
 * IPC kinds, the DOORBELL_ATTACH host and device modes, both text formats. */
#ifndef EPMOE_TESTS_PROTOCOL_SAMPLES_H
#define EPMOE_TESTS_PROTOCOL_SAMPLES_H

#include <string.h>

#include "epmoe/protocol.h"

enum { EPM_SAMPLE_M = 2, EPM_SAMPLE_H = 16, EPM_SAMPLE_E = 4 };

/* Data the FORWARD samples point at; filled by epm_sample_body. */
static uint16_t epm_sample_x[EPM_SAMPLE_M * EPM_SAMPLE_H], epm_sample_y[EPM_SAMPLE_M * EPM_SAMPLE_H];
static float epm_sample_logits[EPM_SAMPLE_M * EPM_SAMPLE_E];

static epm_str_t epm_sample_str(const char *s) { return epm_str_of(s, strlen(s)); }

/* Fill *m with variant v of body; 0 when the body has no such variant. */
static int epm_sample_body(epm_body_t body, int v, epm_msg_body_t *m) {
  for (unsigned i = 0; i < EPM_SAMPLE_M * EPM_SAMPLE_H; i++) {
    epm_sample_x[i] = (uint16_t)(i * 37u);
    epm_sample_y[i] = (uint16_t)(i * 11u + 1u);
  }
  for (unsigned i = 0; i < EPM_SAMPLE_M * EPM_SAMPLE_E; i++) epm_sample_logits[i] = (float)i * 0.25f - 3.0f;
  memset(m, 0, sizeof *m);
  switch (body) {
    case EPM_BODY_hello_req:
      if (v > 0) return 0;
      m->hello_req = (epm_hello_req_t){1, 3, epm_sample_str("epmoectl")};
      return 1;
    case EPM_BODY_hello_resp:
      if (v > 0) return 0;
      m->hello_resp = (epm_hello_resp_t){1,     3,       4,
                                         7168,  256,     8,
                                         10240, 1u << 30, epm_sample_str("0.1.0"),
                                         epm_sample_str("deepseek-r1"), epm_sample_str("cpu")};
      return 1;
    case EPM_BODY_fmt_req:
      if (v > 1) return 0;
      m->fmt_req.format = v == 0 ? EPM_FMT_JSON : EPM_FMT_PROMETHEUS;
      return 1;
    case EPM_BODY_text_resp:
      if (v > 0) return 0;
      m->text_resp.text = epm_sample_str("# Server\r\nversion:0.1.0\r\n");
      return 1;
    case EPM_BODY_empty_req:
    case EPM_BODY_empty_resp:
      return v == 0;
    case EPM_BODY_health_resp:
      if (v > 0) return 0;
      m->health_resp = (epm_health_resp_t){EPM_HEALTH_NOT_READY, epm_sample_str("warm-up step pending")};
      return 1;
    case EPM_BODY_fwd_req:
      if (v == 0)
        m->fwd_req = (epm_fwd_req_t){.layer = 5, .data_mode = EPM_DATA_INLINE, .step_id = 42, .m = EPM_SAMPLE_M,
                                     .hidden = EPM_SAMPLE_H, .num_experts = EPM_SAMPLE_E,
                                     .flags = EPM_FWD_F_SHARED_EXPERT, .partial_dtype = EPM_DTYPE_F32,
                                     .x = epm_sample_x, .logits = epm_sample_logits};
      else if (v == 1)
        m->fwd_req = (epm_fwd_req_t){.layer = 1, .data_mode = EPM_DATA_SHM, .step_id = 9, .m = 3, .hidden = 32,
                                     .num_experts = 8, .x_offset = 0, .logits_offset = 4096, .y_offset = 8192,
                                     .flags = 0, .partial_dtype = EPM_DTYPE_BF16};
      else if (v == 2)
        m->fwd_req = (epm_fwd_req_t){.layer = 60, .data_mode = EPM_DATA_DEVICE, .step_id = 1ull << 40, .m = 0,
                                     .hidden = 7168, .num_experts = 256, .x_offset = 64, .logits_offset = 128,
                                     .y_offset = 256, .flags = EPM_FWD_F_SHARED_EXPERT,
                                     .partial_dtype = EPM_DTYPE_BF16};
      else
        return 0;
      return 1;
    case EPM_BODY_fwd_resp:
      if (v == 0)
        m->fwd_resp = (epm_fwd_resp_t){.step_id = 42, .m = EPM_SAMPLE_M, .hidden = EPM_SAMPLE_H,
                                       .data_mode = EPM_DATA_INLINE, .step_ns = 12345, .y = epm_sample_y};
      else if (v == 1)
        m->fwd_resp = (epm_fwd_resp_t){.step_id = 9, .m = 3, .hidden = 32, .data_mode = EPM_DATA_SHM, .step_ns = 777};
      else
        return 0;
      return 1;
    case EPM_BODY_shm_attach:
      if (v > 0) return 0;
      m->shm_attach.size = 1u << 20;
      return 1;
    case EPM_BODY_dev_attach:
      if (v == 0) {
        m->dev_attach = (epm_dev_attach_t){(uint64_t)1 << 33, 3, EPM_DEV_ATTACH_FD, {0}};
      } else if (v == 1) {
        m->dev_attach = (epm_dev_attach_t){((uint64_t)1 << 32) + 12345, 1, EPM_DEV_ATTACH_IPC, {0}};
        for (unsigned i = 0; i < EPM_DEV_IPC_HANDLE_BYTES; i++) m->dev_attach.ipc_handle[i] = (uint8_t)(i * 37u + 5u);
      } else {
        return 0;
      }
      return 1;
    case EPM_BODY_db_attach:
      if (v == 0)
        m->db_attach = (epm_db_attach_t){.size = 4096 + 3 * 65536, .mode = EPM_DB_MODE_HOST, .capacity = 256,
                                         .x_offset = 4096, .logits_offset = 4096 + 65536,
                                         .y_offset = 4096 + 2 * 65536, .step_base = 1ull << 52};
      else if (v == 1)
        m->db_attach = (epm_db_attach_t){.size = 4096, .mode = EPM_DB_MODE_DEVICE, .capacity = 8192,
                                         .x_offset = 0, .logits_offset = 1u << 27, .y_offset = 3u << 27,
                                         .step_base = 77};
      else
        return 0;
      return 1;
    case EPM_BODY_error_resp:
      if (v > 0) return 0;
      m->error_resp = (epm_error_resp_t){EPM_ERR_TIMEOUT, epm_sample_str("step 4 timed out; missing ranks 1,3")};
      return 1;
    case EPM_BODY_none:
    case EPM_BODY_COUNT:
      return 0;
  }
  return 0; /* no default: -Wswitch names a body added without a sample */
}

#endif
