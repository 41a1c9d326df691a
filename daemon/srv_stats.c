/* SPDX-License-Identifier: Apache-2.0 */
/* srv_stats.c — counters and what the daemon says about itself: STATUS
 * (Redis-INFO-style "# Section\r\nkey:value\r\n" text, or JSON), STATS (INFO
 * text, JSON, or Prometheus text exposition 0.0.4), and the optional
 * loopback HTTP listener (--metrics-port) serving /metrics, /health, /ready.
 * Everything renders on the loop thread from counters guarded by stats.mu, so
 * it answers while the worker is inside a step. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "srv.h"
#include "srv_process.h"

static const double bucket_le[SRV_HIST_BUCKETS] = {1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
                                                   0.05, 0.1,    0.25,   0.5,  1,    2.5,    5,    10};
static const char *const hist_name[SRV_H_COUNT] = {"step_wait_seconds", "step_seconds", "request_seconds"};
static const char *const hist_help[SRV_H_COUNT] = {
    "time a FORWARD waited for every rank to join its step",
    "time of the collective step itself (GO to done)",
    "time from FORWARD received to result ready"};
static const char *const state_name[] = {"starting", "ready", "draining", "failed"};

void srv_stats_init(srv_stats_t *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
}

static double unix_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void srv_hist_add(srv_stats_t *s, srv_hist_id_t h, double seconds) {
  double now = unix_now();
  pthread_mutex_lock(&s->mu);
  s->hist[h].count++;
  s->hist[h].sum += seconds;
  s->hist[h].last = seconds;
  s->hist[h].last_unix = now;
  for (int i = 0; i < SRV_HIST_BUCKETS; i++)
    if (seconds <= bucket_le[i]) {
      s->hist[h].bucket[i]++;
      break;
    }
  pthread_mutex_unlock(&s->mu);
}

void srv_stats_error(srv_stats_t *s, epm_status_t st) {
  pthread_mutex_lock(&s->mu);
  if ((int)st >= 0 && st < EPM_STATUS_COUNT) s->errors_total[st]++;
  pthread_mutex_unlock(&s->mu);
}

static void putf(epm_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(epm_buf_t *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) epm_buf_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Quantile estimate from the histogram (upper bucket bound), seconds. */
static double hist_quantile(const srv_hist_t *h, double q) {
  uint64_t need = (uint64_t)((double)h->count * q + 0.999999), acc = 0;
  if (!h->count) return 0;
  for (int i = 0; i < SRV_HIST_BUCKETS; i++) {
    acc += h->bucket[i];
    if (acc >= need) return bucket_le[i];
  }
  return 1.0 / 0.0;
}

/* The engine's "total" stage is the whole step: listed among the stages it
 * would make every sum over the stage label count each step twice, so it is
 * rendered as a series of its own. */
static int is_total_stage(const char *name) { return strcmp(name, "total") == 0; }

/* What the counters say about the present, read once per render. */
typedef struct {
  int64_t forwards_in_flight; /* FORWARDs received and not yet answered */
  int in_step;                /* the worker is inside a step's collective */
  double in_step_s;
  double engine_last, engine_sum; /* the engine's "total" stage (0 before a step) */
} now_t;

static now_t snapshot_now(srv_t *s, const srv_stats_t *c) {
  now_t n;
  uint64_t id = 0, ns = 0;
  uint32_t layer = 0;
  memset(&n, 0, sizeof n);
  /* every FORWARD handed to the worker is answered once, through
   * srv_net_deliver, which records its request latency */
  n.forwards_in_flight = (int64_t)(c->forwards_total - c->hist[SRV_H_REQUEST].count);
  if (s->worker) ns = srv_worker_in_step_ns(s, &id, &layer);
  n.in_step = ns > 0;
  n.in_step_s = (double)ns * 1e-9;
  for (int i = 0; i < c->nstages; i++)
    if (is_total_stage(c->stage_name[i])) {
      n.engine_last = c->stage_last[i];
      n.engine_sum = c->stage_sum[i];
    }
  return n;
}

void srv_render_status(srv_t *s, epm_buf_t *b, int json) {
  char reason[256];
  srv_model_info_t info;
  srv_state_t st = srv_get_state(s, reason, sizeof reason);
  int have = srv_get_info(s, &info);
  uint64_t step_id = 0;
  uint32_t layer = 0;
  uint64_t in_ns = s->worker ? srv_worker_in_step_ns(s, &step_id, &layer) : 0;
  double up = (double)(epm_clock_ns() - s->start_ns) * 1e-9;
  srv_stats_t c;
  pthread_mutex_lock(&s->stats.mu);
  c = s->stats;
  pthread_mutex_unlock(&s->stats.mu);
  if (!have) memset(&info, 0, sizeof info);
  if (json) {
    epm_buf_t cfg = {0};
    json_t *o = json_object(), *cj;
    json_error_t jerr;
    epm_buf_put(&cfg, "{", 1);
    srv_config_dump(&s->cfg, &cfg, 1);
    epm_buf_put(&cfg, "}", 2);
    cj = json_loads((const char *)cfg.data, 0, &jerr);
    epm_buf_free(&cfg);
    json_object_set_new(o, "schema", json_integer(1));
    json_object_set_new(o, "version", json_string(EPMOE_VERSION_STRING));
    json_object_set_new(o, "rank", json_integer(s->rank));
    json_object_set_new(o, "world_size", json_integer(s->size));
    json_object_set_new(o, "pid", json_integer(getpid()));
    json_object_set_new(o, "uptime_seconds", json_real(up));
    json_object_set_new(o, "socket", json_string(s->sockdir.path));
    json_object_set_new(o, "state", json_string(state_name[st]));
    json_object_set_new(o, "state_reason", json_string(reason));
    json_object_set_new(o, "model", json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "name", info.model, "backend",
                                              info.backend, "hidden", (json_int_t)info.hidden, "experts",
                                              (json_int_t)info.num_experts, "top_k", (json_int_t)info.top_k,
                                              "max_tokens_per_rank", (json_int_t)s->cfg.max_tokens_per_rank,
                                              "layers", (json_int_t)info.num_layers, "weight_bytes",
                                              (json_int_t)info.weight_bytes, "buffer_bytes", (json_int_t)info.buffer_bytes));
    json_object_set_new(o, "step", json_pack("{s:b,s:I,s:I,s:f,s:I,s:I,s:I}", "in_step", in_ns > 0, "layer",
                                             (json_int_t)layer, "step_id", (json_int_t)step_id, "in_step_seconds",
                                             (double)in_ns * 1e-9, "steps_total", (json_int_t)c.steps_total,
                                             "steps_failed", (json_int_t)c.steps_failed, "tokens_total",
                                             (json_int_t)c.tokens_total));
    json_object_set_new(o, "clients", json_pack("{s:I,s:I,s:I}", "open", (json_int_t)c.connections_open, "total",
                                                (json_int_t)c.connections_total, "refused",
                                                (json_int_t)c.connections_refused));
    json_object_set_new(o, "config", cj ? cj : json_null());
    char *txt = json_dumps(o, JSON_COMPACT);
    if (txt) epm_buf_put(b, txt, strlen(txt));
    free(txt);
    json_decref(o);
    return;
  }
  putf(b, "# Server\r\nversion:%s\r\nrank:%d\r\nworld_size:%d\r\npid:%d\r\nuptime_seconds:%.1f\r\nsocket:%s\r\n",
       EPMOE_VERSION_STRING, s->rank, s->size, (int)getpid(), up, s->sockdir.path);
  putf(b, "state:%s\r\nstate_reason:%s\r\n", state_name[st], reason);
  putf(b, "\r\n# Model\r\nmodel:%s\r\nbackend:%s\r\nhidden:%lld\r\nexperts:%lld\r\ntop_k:%lld\r\nmax_tokens_per_rank:%lld\r\n",
       info.model, info.backend, (long long)info.hidden, (long long)info.num_experts, (long long)info.top_k,
       (long long)s->cfg.max_tokens_per_rank);
  putf(b, "layers:%lld\r\nweight_bytes:%llu\r\nbuffer_bytes:%llu\r\n", (long long)info.num_layers,
       (unsigned long long)info.weight_bytes, (unsigned long long)info.buffer_bytes);
  putf(b, "\r\n# Step\r\nin_step:%d\r\nin_step_layer:%u\r\nin_step_id:%llu\r\nin_step_seconds:%.3f\r\n", in_ns > 0,
       layer, (unsigned long long)step_id, (double)in_ns * 1e-9);
  putf(b, "steps_total:%llu\r\nsteps_failed:%llu\r\ntokens_total:%llu\r\n", (unsigned long long)c.steps_total,
       (unsigned long long)c.steps_failed, (unsigned long long)c.tokens_total);
  putf(b, "\r\n# Clients\r\nconnections_open:%lld\r\nconnections_total:%llu\r\nconnections_refused:%llu\r\n",
       (long long)c.connections_open, (unsigned long long)c.connections_total,
       (unsigned long long)c.connections_refused);
  putf(b, "connections_idle_closed:%llu\r\naccept_errors:%llu\r\nframes_refused:%llu\r\n",
       (unsigned long long)c.connections_idle_closed, (unsigned long long)c.accept_errors,
       (unsigned long long)c.frames_refused);
  putf(b, "\r\n# Config\r\n");
  srv_config_dump(&s->cfg, b, 0);
}

/* The per-expert counters, copied under the lock (the worker adds to them
 * while we render). NULL arrays and n 0 before the model is loaded. */
typedef struct {
  int64_t n;
  uint64_t *total, *last;
} loads_t;

static void loads_take(srv_t *s, loads_t *l) {
  memset(l, 0, sizeof *l);
  pthread_mutex_lock(&s->stats.mu);
  const int64_t n = s->stats.n_experts;
  if (n > 0) {
    l->total = malloc((size_t)n * sizeof *l->total);
    l->last = malloc((size_t)n * sizeof *l->last);
    if (l->total && l->last) {
      memcpy(l->total, s->stats.expert_tokens, (size_t)n * sizeof *l->total);
      memcpy(l->last, s->stats.expert_tokens_last, (size_t)n * sizeof *l->last);
      l->n = n;
    }
  }
  pthread_mutex_unlock(&s->stats.mu);
}

static void loads_free(loads_t *l) {
  free(l->total);
  free(l->last);
}

static void put_list(epm_buf_t *b, const uint64_t *v, int64_t n) {
  for (int64_t i = 0; i < n; i++) putf(b, "%s%llu", i ? "," : "", (unsigned long long)v[i]);
}

static void render_info(srv_t *s, const srv_stats_t *c, epm_buf_t *b) {
  now_t n = snapshot_now(s, c);
  srv_process_t p;
  srv_process_sample(&p);
  putf(b, "# Stats\r\nrank:%d\r\nsteps_total:%llu\r\nsteps_failed:%llu\r\ntokens_total:%llu\r\nforwards_total:%llu\r\n",
       s->rank, (unsigned long long)c->steps_total, (unsigned long long)c->steps_failed,
       (unsigned long long)c->tokens_total, (unsigned long long)c->forwards_total);
  putf(b, "forwards_in_flight:%lld\r\nin_step:%d\r\nin_step_seconds:%.3f\r\n", (long long)n.forwards_in_flight,
       n.in_step, n.in_step_s);
  putf(b, "last_step_seconds:%.6f\r\nlast_step_tokens:%lld\r\nlast_step_unix_time:%.3f\r\n",
       c->hist[SRV_H_STEP].last, (long long)c->last_step_tokens, c->hist[SRV_H_STEP].last_unix);
  putf(b, "bytes_received:%llu\r\nbytes_sent:%llu\r\nbytes_shm:%llu\r\n", (unsigned long long)c->bytes_in,
       (unsigned long long)c->bytes_out, (unsigned long long)c->bytes_shm);
  putf(b, "\r\n# Latency\r\n");
  for (int h = 0; h < SRV_H_COUNT; h++)
    putf(b, "%s:count=%llu,avg=%.6f,p50<=%.4g,p99<=%.4g\r\n", hist_name[h], (unsigned long long)c->hist[h].count,
         c->hist[h].count ? c->hist[h].sum / (double)c->hist[h].count : 0.0, hist_quantile(&c->hist[h], 0.5),
         hist_quantile(&c->hist[h], 0.99));
  putf(b, "\r\n# Stages\r\n");
  for (int i = 0; i < c->nstages; i++)
    if (!is_total_stage(c->stage_name[i]))
      putf(b, "stage_%s:last=%.6f,sum=%.6f\r\n", c->stage_name[i], c->stage_last[i], c->stage_sum[i]);
  putf(b, "engine_seconds:last=%.6f,sum=%.6f\r\n", n.engine_last, n.engine_sum);
  putf(b, "\r\n# Dispatch\r\n");
  putf(b, "dispatch_last_mode:%s\r\n", c->dispatch_last ? c->dispatch_last : "none");
  putf(b, "dispatch_steps:allgather=%llu,alltoall=%llu\r\n", (unsigned long long)c->dispatch_steps[0],
       (unsigned long long)c->dispatch_steps[1]);
  putf(b, "dispatch_last_bytes:sent=%llu,received=%llu\r\n", (unsigned long long)c->dispatch_sent_last,
       (unsigned long long)c->dispatch_recv_last);
  putf(b, "combine_last_bytes:sent=%llu,received=%llu\r\n", (unsigned long long)c->combine_sent_last,
       (unsigned long long)c->combine_recv_last);
  putf(b, "comm_bytes_total:sent=%llu,received=%llu\r\n", (unsigned long long)c->comm_sent_total,
       (unsigned long long)c->comm_recv_total);
  putf(b, "\r\n# Process\r\nresident_memory_bytes:%.0f\r\nopen_fds:%lld\r\ncpu_seconds:%.3f\r\n"
          "start_time_seconds:%.3f\r\n", p.resident_bytes, (long long)p.open_fds, p.cpu_seconds, p.start_time_seconds);
  putf(b, "\r\n# Errors\r\n");
  for (int e = 1; e < EPM_STATUS_COUNT; e++)
    if (c->errors_total[e]) putf(b, "errors_%s:%llu\r\n", epm_status_name((epm_status_t)e), (unsigned long long)c->errors_total[e]);
  loads_t l;
  loads_take(s, &l);
  putf(b, "\r\n# Experts\r\nexpert_tokens:");
  put_list(b, l.total, l.n);
  putf(b, "\r\nexpert_tokens_last_step:");
  put_list(b, l.last, l.n);
  putf(b, "\r\n");
  loads_free(&l);
}

static void render_prom(srv_t *s, const srv_stats_t *c, epm_buf_t *b) {
  const int r = s->rank;
  now_t n = snapshot_now(s, c);
  srv_state_t st = srv_get_state(s, NULL, 0);
#define COUNTER(name, help, val)                                                              \
  putf(b, "# HELP epmoe_" name " " help "\n# TYPE epmoe_" name " counter\nepmoe_" name "{rank=\"%d\"} %llu\n", r, \
       (unsigned long long)(val))
  putf(b, "# HELP epmoe_build_info epmoe build\n# TYPE epmoe_build_info gauge\nepmoe_build_info{version=\"%s\",rank=\"%d\"} 1\n",
       EPMOE_VERSION_STRING, r);
  putf(b, "# HELP epmoe_ready 1 when the daemon serves FORWARDs\n# TYPE epmoe_ready gauge\nepmoe_ready{rank=\"%d\"} %d\n", r,
       st == SRV_ST_READY);
  {
    srv_model_info_t info;
    if (srv_get_info(s, &info))
      putf(b, "# HELP epmoe_memory_bytes memory held by this rank, by pool (host or GPU per backend)\n"
              "# TYPE epmoe_memory_bytes gauge\nepmoe_memory_bytes{rank=\"%d\",pool=\"weights\",backend=\"%s\"} %llu\n"
              "epmoe_memory_bytes{rank=\"%d\",pool=\"step_buffers\",backend=\"%s\"} %llu\n",
           r, info.backend, (unsigned long long)info.weight_bytes, r, info.backend,
           (unsigned long long)info.buffer_bytes);
  }
  COUNTER("steps_total", "collective steps completed on this rank", c->steps_total);
  COUNTER("steps_failed_total", "FORWARDs whose step failed (timeout, shutdown, engine error)", c->steps_failed);
  COUNTER("tokens_total", "tokens of this rank processed in completed steps", c->tokens_total);
  COUNTER("received_bytes_total", "bytes read from client sockets", c->bytes_in);
  COUNTER("sent_bytes_total", "bytes written to client sockets", c->bytes_out);
  COUNTER("shm_bytes_total", "bytes read and written through shared-memory regions", c->bytes_shm);
  COUNTER("connections_total", "client connections accepted", c->connections_total);
  COUNTER("connections_refused_total", "connections refused (peer credentials, or past every slot)",
          c->connections_refused);
  COUNTER("connections_idle_closed_total", "connections closed after --idle-timeout", c->connections_idle_closed);
  COUNTER("accept_errors_total", "failed accepts (e.g. out of descriptors), each followed by a back-off",
          c->accept_errors);
  COUNTER("frames_refused_total", "frames refused from their header as too big for their type", c->frames_refused);
  COUNTER("metrics_requests_total", "HTTP requests answered by the metrics listener", c->metrics_requests);
  COUNTER("metrics_refused_total", "metrics connections closed at once (over the connection cap)",
          c->metrics_refused);
  putf(b, "# HELP epmoe_connections_open client connections open\n# TYPE epmoe_connections_open gauge\n"
          "epmoe_connections_open{rank=\"%d\"} %lld\n", r, (long long)c->connections_open);
  putf(b, "# HELP epmoe_requests_total requests by frame type\n# TYPE epmoe_requests_total counter\n");
  for (int t = 1; t <= EPM_MSG_TYPE_MAX; t++)
    putf(b, "epmoe_requests_total{rank=\"%d\",type=\"%s\"} %llu\n", r, epm_msg_type_name((uint16_t)t),
         (unsigned long long)c->requests_total[t]);
  putf(b, "# HELP epmoe_errors_total error responses by status\n# TYPE epmoe_errors_total counter\n");
  for (int e = 1; e < EPM_STATUS_COUNT; e++)
    putf(b, "epmoe_errors_total{rank=\"%d\",status=\"%s\"} %llu\n", r, epm_status_name((epm_status_t)e),
         (unsigned long long)c->errors_total[e]);
  for (int h = 0; h < SRV_H_COUNT; h++) {
    uint64_t acc = 0;
    putf(b, "# HELP epmoe_%s %s\n# TYPE epmoe_%s histogram\n", hist_name[h], hist_help[h], hist_name[h]);
    for (int i = 0; i < SRV_HIST_BUCKETS; i++) {
      acc += c->hist[h].bucket[i];
      putf(b, "epmoe_%s_bucket{rank=\"%d\",le=\"%g\"} %llu\n", hist_name[h], r, bucket_le[i], (unsigned long long)acc);
    }
    putf(b, "epmoe_%s_bucket{rank=\"%d\",le=\"+Inf\"} %llu\nepmoe_%s_sum{rank=\"%d\"} %.9f\nepmoe_%s_count{rank=\"%d\"} %llu\n",
         hist_name[h], r, (unsigned long long)c->hist[h].count, hist_name[h], r, c->hist[h].sum, hist_name[h], r,
         (unsigned long long)c->hist[h].count);
  }
  putf(b, "# HELP epmoe_stage_seconds_total time spent per engine stage (the stages do not overlap; the whole "
          "step is epmoe_engine_seconds_total)\n# TYPE epmoe_stage_seconds_total counter\n");
  for (int i = 0; i < c->nstages; i++)
    if (!is_total_stage(c->stage_name[i]))
      putf(b, "epmoe_stage_seconds_total{rank=\"%d\",stage=\"%s\"} %.9f\n", r, c->stage_name[i], c->stage_sum[i]);
  putf(b, "# HELP epmoe_engine_seconds_total time inside the engine's steps, stages and the time between them\n"
          "# TYPE epmoe_engine_seconds_total counter\nepmoe_engine_seconds_total{rank=\"%d\"} %.9f\n", r, n.engine_sum);
#define GAUGE(name, help, fmt, val) \
  putf(b, "# HELP epmoe_" name " " help "\n# TYPE epmoe_" name " gauge\nepmoe_" name "{rank=\"%d\"} " fmt "\n", r, val)
  GAUGE("forwards_in_flight", "FORWARDs received and not answered yet", "%lld", (long long)n.forwards_in_flight);
  GAUGE("step_in_progress", "1 while this rank is inside a step's collective", "%d", n.in_step);
  GAUGE("step_in_progress_seconds", "how long the current step has been inside the collective (0: none)", "%.6f",
        n.in_step_s);
  GAUGE("last_step_seconds", "collective time of the latest completed step (GO to done)", "%.9f",
        c->hist[SRV_H_STEP].last);
  GAUGE("last_step_tokens", "this rank's tokens in the latest completed step", "%lld", (long long)c->last_step_tokens);
  GAUGE("last_step_timestamp_seconds", "Unix time the latest step completed (0: none yet)", "%.3f",
        c->hist[SRV_H_STEP].last_unix);
  GAUGE("last_step_engine_seconds", "engine time of the latest step", "%.9f", n.engine_last);
  putf(b, "# HELP epmoe_last_step_stage_seconds engine time per stage of the latest step\n"
          "# TYPE epmoe_last_step_stage_seconds gauge\n");
  for (int i = 0; i < c->nstages; i++)
    if (!is_total_stage(c->stage_name[i]))
      putf(b, "epmoe_last_step_stage_seconds{rank=\"%d\",stage=\"%s\"} %.9f\n", r, c->stage_name[i], c->stage_last[i]);
#undef GAUGE
  /* The standard process_* families (the names every Prometheus client
   * library exports), with the rank label like every other series. */
  srv_process_t p;
  srv_process_sample(&p);
#define PROC(name, type, help, val)                                                                     \
  if ((val) >= 0)                                                                                       \
  putf(b, "# HELP " name " " help "\n# TYPE " name " " type "\n" name "{rank=\"%d\"} %.15g\n", r, (double)(val))
  PROC("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", p.cpu_seconds);
  PROC("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", p.resident_bytes);
  PROC("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.virtual_bytes);
  PROC("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds);
  PROC("process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds);
  PROC("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
       p.start_time_seconds);
#undef PROC
  putf(b, "# HELP epmoe_dispatch_steps_total steps per dispatch mode\n# TYPE epmoe_dispatch_steps_total counter\n");
  putf(b, "epmoe_dispatch_steps_total{rank=\"%d\",mode=\"allgather\"} %llu\n", r, (unsigned long long)c->dispatch_steps[0]);
  putf(b, "epmoe_dispatch_steps_total{rank=\"%d\",mode=\"alltoall\"} %llu\n", r, (unsigned long long)c->dispatch_steps[1]);
  putf(b, "# HELP epmoe_comm_bytes_total step payload bytes to / from other ranks (dispatch + combine)\n"
          "# TYPE epmoe_comm_bytes_total counter\n");
  putf(b, "epmoe_comm_bytes_total{rank=\"%d\",direction=\"sent\"} %llu\n", r, (unsigned long long)c->comm_sent_total);
  putf(b, "epmoe_comm_bytes_total{rank=\"%d\",direction=\"received\"} %llu\n", r, (unsigned long long)c->comm_recv_total);
  loads_t l;
  loads_take(s, &l);
  if (l.n > 0) {
    putf(b, "# HELP epmoe_expert_tokens_total tokens of this rank routed to each logical expert (sum over ranks: "
            "the expert's load)\n# TYPE epmoe_expert_tokens_total counter\n");
    for (int64_t e = 0; e < l.n; e++)
      putf(b, "epmoe_expert_tokens_total{rank=\"%d\",expert=\"%lld\"} %llu\n", r, (long long)e,
           (unsigned long long)l.total[e]);
  }
  loads_free(&l);
#undef COUNTER
}

void srv_render_stats(srv_t *s, epm_buf_t *b, int fmt) {
  srv_stats_t c;
  pthread_mutex_lock(&s->stats.mu);
  c = s->stats;
  pthread_mutex_unlock(&s->stats.mu);
  if (fmt == EPM_FMT_PROMETHEUS) {
    render_prom(s, &c, b);
  } else if (fmt == EPM_FMT_JSON) {
    json_t *o = json_object(), *lat = json_object(), *stg = json_object(), *err = json_object();
    json_object_set_new(o, "schema", json_integer(1));
    json_object_set_new(o, "rank", json_integer(s->rank));
    json_object_set_new(o, "steps_total", json_integer((json_int_t)c.steps_total));
    json_object_set_new(o, "steps_failed", json_integer((json_int_t)c.steps_failed));
    json_object_set_new(o, "tokens_total", json_integer((json_int_t)c.tokens_total));
    json_object_set_new(o, "forwards_total", json_integer((json_int_t)c.forwards_total));
    json_object_set_new(o, "bytes_received", json_integer((json_int_t)c.bytes_in));
    json_object_set_new(o, "bytes_sent", json_integer((json_int_t)c.bytes_out));
    json_object_set_new(o, "bytes_shm", json_integer((json_int_t)c.bytes_shm));
    for (int h = 0; h < SRV_H_COUNT; h++)
      json_object_set_new(lat, hist_name[h],
                          json_pack("{s:I,s:f,s:f,s:f}", "count", (json_int_t)c.hist[h].count, "sum", c.hist[h].sum,
                                    "p50_le", hist_quantile(&c.hist[h], 0.5), "p99_le", hist_quantile(&c.hist[h], 0.99)));
    now_t n = snapshot_now(s, &c);
    srv_process_t p;
    srv_process_sample(&p);
    for (int i = 0; i < c.nstages; i++)
      if (!is_total_stage(c.stage_name[i]))
        json_object_set_new(stg, c.stage_name[i], json_pack("{s:f,s:f}", "last", c.stage_last[i], "sum", c.stage_sum[i]));
    json_object_set_new(o, "engine", json_pack("{s:f,s:f}", "last", n.engine_last, "sum", n.engine_sum));
    json_object_set_new(o, "in_flight", json_pack("{s:I,s:b,s:f}", "forwards", (json_int_t)n.forwards_in_flight,
                                                  "in_step", n.in_step, "in_step_seconds", n.in_step_s));
    json_object_set_new(o, "last_step", json_pack("{s:f,s:I,s:f}", "seconds", c.hist[SRV_H_STEP].last, "tokens",
                                                  (json_int_t)c.last_step_tokens, "unix_time",
                                                  c.hist[SRV_H_STEP].last_unix));
    json_object_set_new(o, "process", json_pack("{s:f,s:f,s:f,s:f,s:I,s:I}", "resident_memory_bytes", p.resident_bytes,
                                                "virtual_memory_bytes", p.virtual_bytes, "cpu_seconds", p.cpu_seconds,
                                                "start_time_seconds", p.start_time_seconds, "open_fds",
                                                (json_int_t)p.open_fds, "max_fds", (json_int_t)p.max_fds));
    for (int e = 1; e < EPM_STATUS_COUNT; e++)
      if (c.errors_total[e]) json_object_set_new(err, epm_status_name((epm_status_t)e), json_integer((json_int_t)c.errors_total[e]));
    json_object_set_new(o, "latency", lat);
    json_object_set_new(o, "stages", stg);
    json_object_set_new(
        o, "dispatch",
        json_pack("{s:s,s:{s:I,s:I},s:{s:I,s:I},s:{s:I,s:I},s:{s:I,s:I}}", "last_mode",
                  c.dispatch_last ? c.dispatch_last : "none", "steps", "allgather", (json_int_t)c.dispatch_steps[0],
                  "alltoall", (json_int_t)c.dispatch_steps[1], "last_dispatch_bytes", "sent",
                  (json_int_t)c.dispatch_sent_last, "received", (json_int_t)c.dispatch_recv_last, "last_combine_bytes",
                  "sent", (json_int_t)c.combine_sent_last, "received", (json_int_t)c.combine_recv_last,
                  "comm_bytes_total", "sent", (json_int_t)c.comm_sent_total, "received",
                  (json_int_t)c.comm_recv_total));
    json_object_set_new(o, "errors", err);
    {
      loads_t l;
      json_t *ex = json_object(), *tot = json_array(), *last = json_array();
      loads_take(s, &l);
      for (int64_t e = 0; e < l.n; e++) {
        json_array_append_new(tot, json_integer((json_int_t)l.total[e]));
        json_array_append_new(last, json_integer((json_int_t)l.last[e]));
      }
      loads_free(&l);
      json_object_set_new(ex, "num_experts", json_integer((json_int_t)l.n));
      json_object_set_new(ex, "tokens_total", tot);
      json_object_set_new(ex, "tokens_last_step", last);
      json_object_set_new(o, "experts", ex);
    }
    char *txt = json_dumps(o, JSON_COMPACT);
    if (txt) epm_buf_put(b, txt, strlen(txt));
    free(txt);
    json_decref(o);
  } else {
    render_info(s, &c, b);
  }
}
