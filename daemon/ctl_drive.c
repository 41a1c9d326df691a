/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_drive.c — see ctl_drive.h. */
#include "ctl_drive.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "epmoe/layer.h"
#include "epmoe/model_dir.h"
#include "epmoe/moe_ref.h"
#include "epmoe/tokens.h"
#include "epmoe/weights.h"

/* config.<key>.value of rank 0's STATUS JSON, as a string (or NULL). */
static const char *cfg_value(json_t *root, const char *key, char *buf, size_t n) {
  json_t *v = json_object_get(json_object_get(json_object_get(root, "config"), key), "value");
  if (json_is_string(v)) snprintf(buf, n, "%s", json_string_value(v));
  else if (json_is_integer(v)) snprintf(buf, n, "%lld", (long long)json_integer_value(v));
  else return NULL;
  return buf;
}

static void learn_model(ctl_drive_t *d) {
  char *text = NULL, buf[512];
  json_error_t je;
  json_t *root;
  if (epm_client_status(d->cl[0], 1, &text) != EPM_OK) return;
  root = json_loads(text, 0, &je);
  free(text);
  if (!root) return;
  if (cfg_value(root, "preset", buf, sizeof buf)) snprintf(d->preset, sizeof d->preset, "%s", buf);
  if (cfg_value(root, "model", buf, sizeof buf)) snprintf(d->model_dir, sizeof d->model_dir, "%s", buf);
  if (cfg_value(root, "seed", buf, sizeof buf)) d->weight_seed = strtoull(buf, NULL, 10);
  json_decref(root);
  if (d->model_dir[0]) {
    epm_model_dir_t *md = NULL;
    if (epm_model_dir_open(d->model_dir, &md) == EPM_OK) {
      d->dims = *epm_model_dir_dims(md);
      d->have_dims = 1;
    }
    epm_model_dir_close(md);
  } else if (epm_model_preset(d->preset, &d->dims) == EPM_OK) {
    d->have_dims = 1;
  }
  if (d->have_dims && (d->dims.hidden != d->info.hidden || d->dims.num_experts != d->info.num_experts))
    d->have_dims = 0; /* not the model the daemons serve: no reference */
}

const char *ctl_drive_mode_name(int shm) {
  return shm == 3 ? "CUDA device (cudaIpcMemHandle_t)" : shm == 2 ? "CUDA device (cuMemCreate fd)" : shm ? "memfd" : "inline";
}

int ctl_drive_open(ctl_drive_t *d, const ctl_target_opts_t *o, const int64_t *counts, int n, int shm,
                   const char *cmd) {
  memset(d, 0, sizeof *d);
  int ns = ctl_find_sockets(o, &d->socks);
  if (ns < 0) return 1;
  d->nranks = ns;
  if (n != ns) {
    fprintf(stderr, "epmoectl %s: --tokens-per-rank has %d values but %d daemon sockets were found in %s\n", cmd, n, ns,
            o->socket_dir);
    return 1;
  }
  d->cl = calloc((size_t)ns, sizeof *d->cl);
  d->m = calloc((size_t)ns, sizeof *d->m);
  d->off = calloc((size_t)ns, sizeof *d->off);
  d->step_ns = calloc((size_t)ns, sizeof *d->step_ns);
  d->err = calloc((size_t)ns, sizeof *d->err);
  d->st = calloc((size_t)ns, sizeof *d->st);
  d->region = calloc((size_t)ns, sizeof *d->region);
  if (!d->cl || !d->m || !d->off || !d->step_ns || !d->err || !d->st || !d->region) return 1;
  d->shm = shm;
  d->step_flags = EPM_FWD_F_SHARED_EXPERT;
  d->partial_dtype = EPM_DTYPE_F32;
  for (int r = 0; r < ns; r++) {
    epm_client_info_t info;
    if (ctl_connect(o, d->socks[r].path, &d->cl[r]) != EPM_OK ||
        epm_client_hello(d->cl[r], "epmoectl", &info) != EPM_OK) {
      fprintf(stderr, "epmoectl %s: rank %d: %s\n", cmd, d->socks[r].rank, epm_last_error());
      return 1;
    }
    if (info.rank != d->socks[r].rank || (o->rank < 0 && info.world_size != ns)) {
      fprintf(stderr, "epmoectl %s: %s answers as rank %d of %d; expected rank %d of %d\n", cmd, d->socks[r].path,
              info.rank, info.world_size, d->socks[r].rank, ns);
      return 1;
    }
    if (r == 0) d->info = info;
    else if (info.hidden != d->info.hidden || info.num_experts != d->info.num_experts) {
      fprintf(stderr, "epmoectl %s: ranks disagree on the model shape\n", cmd);
      return 1;
    }
    if (counts[r] > info.max_tokens_per_rank) {
      fprintf(stderr, "epmoectl %s: rank %d: %lld tokens exceed its --max-tokens-per-rank %lld\n", cmd, r,
              (long long)counts[r], (long long)info.max_tokens_per_rank);
      return 1;
    }
    d->m[r] = counts[r];
    d->off[r] = d->total;
    d->total += counts[r];
  }
  learn_model(d);
  size_t H = (size_t)d->info.hidden, E = (size_t)d->info.num_experts, M = (size_t)d->total;
  d->x = calloc(M * H + 1, 2);
  d->y = calloc(M * H + 1, 2);
  d->logits = calloc(M * E + 1, 4);
  if (!d->x || !d->y || !d->logits) {
    fprintf(stderr, "epmoectl %s: no memory for %zu tokens\n", cmd, M);
    return 1;
  }
  if (shm) {
    for (int r = 0; r < ns; r++) {
      size_t bytes = (size_t)d->m[r] * (H * 2 * 2 + E * 4) + 64;
      uint64_t dptr;
      epm_status_t st = shm == 3   ? epm_client_devipc_create(d->cl[r], bytes, d->socks[r].rank, &dptr)
                        : shm == 2 ? epm_client_devmem_create(d->cl[r], bytes, d->socks[r].rank, &dptr)
                                   : epm_client_shm_create(d->cl[r], bytes, &d->region[r]);
      if (st != EPM_OK) {
        fprintf(stderr, "epmoectl %s: rank %d: %s\n", cmd, r, epm_last_error());
        return 1;
      }
    }
  }
  return 0;
}

int ctl_drive_set_options(ctl_drive_t *d, uint32_t flags, epm_dtype_t partial_dtype, const char *cmd) {
  for (int r = 0; r < d->nranks; r++)
    if (epm_client_set_step_options(d->cl[r], flags, partial_dtype) != EPM_OK) {
      fprintf(stderr, "epmoectl %s: %s\n", cmd, epm_last_error());
      return 1;
    }
  d->step_flags = flags;
  d->partial_dtype = partial_dtype;
  return 0;
}

int ctl_drive_fill(ctl_drive_t *d, uint64_t seed, const char *input_file, const char *cmd) {
  int64_t H = d->info.hidden, E = d->info.num_experts, M = d->total;
  if (input_file) {
    FILE *f = fopen(input_file, "rb");
    size_t xb = (size_t)(M * H) * 2, lb = (size_t)(M * E) * 4;
    if (!f || fread(d->x, 1, xb, f) != xb || fread(d->logits, 1, lb, f) != lb) {
      fprintf(stderr, "epmoectl %s: %s must hold bf16 x [%lld, %lld] then fp32 logits [%lld, %lld] (%zu bytes)\n", cmd,
              input_file, (long long)M, (long long)H, (long long)M, (long long)E, xb + lb);
      if (f) fclose(f);
      return 1;
    }
    fclose(f);
    return 0;
  }
  if (d->have_dims) {
    if (epm_tokens_generate(&d->dims, seed, 0, M, d->x, d->logits) == EPM_OK) return 0;
    fprintf(stderr, "epmoectl %s: %s\n", cmd, epm_last_error());
    return 1;
  }
  for (int64_t t = 0; t < M; t++) {
    for (int64_t j = 0; j < H; j++) d->x[t * H + j] = ctl_rand_x(seed, t, j);
    for (int64_t e = 0; e < E; e++) d->logits[t * E + e] = ctl_rand_logit(seed, t, e);
  }
  return 0;
}

typedef struct {
  ctl_drive_t *d;
  int r;
  uint32_t layer;
  uint64_t step_id;
} job_t;

static void *rank_thread(void *arg) {
  job_t *j = arg;
  ctl_drive_t *d = j->d;
  int r = j->r;
  int64_t H = d->info.hidden, E = d->info.num_experts, m = d->m[r], o = d->off[r];
  epm_status_t st;
  if (d->shm >= 2) { /* device region, either way it was shared */
    size_t xb = (size_t)(m * H) * 2, lb = (size_t)(m * E) * 4;
    st = epm_client_devmem_write(d->cl[r], 0, d->x + o * H, xb);
    if (st == EPM_OK) st = epm_client_devmem_write(d->cl[r], xb, d->logits + o * E, lb);
    if (st == EPM_OK) st = epm_client_forward_dev(d->cl[r], j->layer, j->step_id, m, 0, xb, xb + lb, &d->step_ns[r]);
    if (st == EPM_OK) st = epm_client_devmem_read(d->cl[r], xb + lb, d->y + o * H, xb);
  } else if (d->shm) {
    uint8_t *base = d->region[r];
    size_t xb = (size_t)(m * H) * 2, lb = (size_t)(m * E) * 4;
    memcpy(base, d->x + o * H, xb);
    memcpy(base + xb, d->logits + o * E, lb);
    st = epm_client_forward_shm(d->cl[r], j->layer, j->step_id, m, 0, xb, xb + lb, &d->step_ns[r]);
    if (st == EPM_OK) memcpy(d->y + o * H, base + xb + lb, xb);
  } else {
    st = epm_client_forward(d->cl[r], j->layer, j->step_id, d->x + o * H, d->logits + o * E, m, d->y + o * H,
                            &d->step_ns[r]);
  }
  d->st[r] = st;
  free(d->err[r]);
  d->err[r] = st == EPM_OK ? NULL : strdup(epm_last_error());
  return NULL;
}

int ctl_drive_step(ctl_drive_t *d, uint32_t layer, uint64_t step_id) {
  int n = d->nranks, failed = 0;
  pthread_t *th = calloc((size_t)n, sizeof *th);
  job_t *jobs = calloc((size_t)n, sizeof *jobs);
  if (!th || !jobs) {
    free(th);
    free(jobs);
    return n;
  }
  for (int r = 0; r < n; r++) {
    jobs[r] = (job_t){d, r, layer, step_id};
    pthread_create(&th[r], NULL, rank_thread, &jobs[r]);
  }
  for (int r = 0; r < n; r++) {
    pthread_join(th[r], NULL);
    failed += d->st[r] != EPM_OK;
  }
  free(th);
  free(jobs);
  return failed;
}

void ctl_drive_close(ctl_drive_t *d) {
  for (int r = 0; d->cl && r < d->nranks; r++) {
    epm_client_close(d->cl[r]);
    if (d->err) free(d->err[r]);
  }
  free(d->cl), free(d->m), free(d->off), free(d->step_ns), free(d->err), free(d->st), free(d->region);
  free(d->x), free(d->y), free(d->logits), free(d->socks);
  memset(d, 0, sizeof *d);
}

int ctl_reference(const ctl_drive_t *d, uint32_t layer, uint16_t *y_ref, char *why, size_t n) {
  if (!d->have_dims) {
    snprintf(why, n, "no CPU reference for model '%s' (preset or checkpoint not readable here)", d->info.model);
    return -1;
  }
  epm_layer_t full = {0};
  epm_status_t st;
  if (d->model_dir[0]) {
    epm_model_dir_t *md = NULL;
    st = epm_model_dir_open(d->model_dir, &md);
    if (st == EPM_OK) st = epm_weights_load_layer(md, layer, 0, 1, &full, NULL);
    epm_model_dir_close(md);
  } else {
    st = epm_layer_generate(&d->dims, layer, d->weight_seed, 0, d->dims.num_experts, &full);
  }
  if (st == EPM_OK) {
    epm_moe_ref_opts_t ro = EPM_MOE_REF_OPTS_INIT;
    ro.include_shared = (d->step_flags & EPM_FWD_F_SHARED_EXPERT) != 0;
    ro.threads = epm_moe_ref_threads(0);
    st = epm_moe_ref_layer(&full, d->x, d->logits, d->total, &ro, NULL, NULL, NULL, y_ref, NULL);
  }
  epm_layer_free(&full);
  if (st != EPM_OK) {
    snprintf(why, n, "reference for layer %u: %s", layer, epm_last_error());
    return -1;
  }
  return 0;
}
