/* SPDX-License-Identifier: Apache-2.0 */
/* srv.h — epmoed internals shared by epmoed.c and daemon/srv_*.c.
 *
 * Threads: the main thread runs the libuv loop (sockets, signals, timers,
 * metrics HTTP) and starts/ends MPI through the bootstrap; one worker thread
 * makes every MPI call in between (rendezvous, steps; srv_step.c). They meet in two places only:
 *  - the request queue (srv_worker_submit, mutex) main -> worker, and
 *  - the completion queue + uv_async_t worker -> main.
 * Counters in srv_stats_t are updated under their own mutex, so STATUS and
 * STATS answer from the loop while a step runs.
 */
#ifndef EPMOE_SRV_H
#define EPMOE_SRV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <uv.h>

#include "epmoe/bootstrap.h"
#include "epmoe/protocol.h"
#include "epmoe/status.h"

/* ---- configuration (srv_config.c): one declarative table ---------------- */
typedef struct {
  char model[512];      /* checkpoint directory ("" = use preset) */
  char preset[32];
  int64_t seed;
  char backend[8];      /* cpu | cuda | auto */
  char socket_dir[256];
  int64_t max_tokens_per_rank;
  char log_level[8];
  char log_format[8];   /* text | json */
  char log_prefix[8];   /* auto | syslog | none */
  int64_t step_timeout_s; /* join wait; and a step with no progress anywhere (liveness on) */
  double liveness_s;      /* heartbeat silence that fails the group; 0 = off (wall-clock watchdog) */
  int64_t metrics_port; /* 0 = off */
  char metrics_bind[64]; /* address of the metrics listener */
  int64_t idle_timeout_s; /* a connection with nothing in flight this long is closed; 0 = never */
  int64_t max_frame;    /* bytes of one frame's payload */
  char allowed_group[64]; /* extra group (name or gid) allowed to connect */
  int64_t max_connections;
  int64_t warmup_tokens;
  int64_t layers;        /* MoE layers served (0 = all of a checkpoint) */
  int64_t step_delay_ms; /* test hook: sleep inside each step (0 = off) */
  char dispatch[16];     /* allgather | alltoall | auto (epmoe/dispatch.h) */
  int64_t recv_capacity; /* alltoall receive rows per rank (0 = any routing) */
  int64_t workspace_mb;  /* expert-stage workspace budget, MiB (0 = unbounded) */
  char dispatch_latency_us[48], dispatch_gbps[48]; /* auto's terms "AG,A2A" ("" = defaults) */
  char placement[512];   /* expert placement map (JSON file), "" = default split */
  int64_t redundant_experts; /* extra slots of the default split */
  char kernels[4];       /* v1 | v2: the cuda backend's kernels */
  uint8_t src[32];       /* per table row: 0 default, 1 environment, 2 flag */
} srv_config_t;

/* What main() does after srv_config_load. */
typedef enum { SRV_CONFIG_RUN = 0, SRV_CONFIG_HELP, SRV_CONFIG_VERSION } srv_config_action_t;
/* Fill defaults, then EPMOE_* env, then flags (flag wins), with the one
 * option parser (cli_opt.h). Prints nothing: returns EPM_OK (*act says
 * whether --help or --version was asked for), or EPM_ERR_INVALID_ARG with a
 * message naming the option, the value and the limit. Also refused: an
 * EPMOE_* variable that is no setting (a misspelling), and neither --model
 * nor --preset (no silent default model). */
epm_status_t srv_config_load(srv_config_t *c, int argc, char **argv, srv_config_action_t *act);
/* The --help text (full) or the synopsis for a usage error, on f. */
void srv_config_usage(FILE *f, int full);
/* "config_name:value" lines, Redis INFO style (\r\n), or JSON members
 * "name":{"value":..,"source":..}, appended to b. */
void srv_config_dump(const srv_config_t *c, epm_buf_t *b, int json);
/* One log line per value that differs from its default, naming its source. */
void srv_config_log(const srv_config_t *c);

/* ---- stats (srv_stats.c) ------------------------------------------------ */
#define SRV_HIST_BUCKETS 16
typedef struct {
  uint64_t count;
  double sum;
  uint64_t bucket[SRV_HIST_BUCKETS]; /* cumulative at render time, raw here */
  double last;      /* the latest observation (seconds) */
  double last_unix; /* when it was added (Unix seconds; 0 = never) */
} srv_hist_t;

typedef enum { SRV_H_WAIT = 0, SRV_H_STEP, SRV_H_REQUEST, SRV_H_COUNT } srv_hist_id_t;

typedef struct {
  pthread_mutex_t mu;
  uint64_t steps_total, steps_failed, tokens_total, forwards_total;
  int64_t last_step_tokens; /* this rank's tokens in the latest completed step */
  uint64_t requests_total[EPM_MSG_TYPE_MAX + 1];
  uint64_t errors_total[EPM_STATUS_COUNT];
  uint64_t bytes_in, bytes_out, bytes_shm;
  uint64_t connections_total, connections_refused, connections_idle_closed;
  uint64_t accept_errors, frames_refused; /* failed accepts; frames refused by size before buffering */
  uint64_t metrics_requests, metrics_refused;
  int64_t connections_open;
  srv_hist_t hist[SRV_H_COUNT];
  /* engine stage timings of the last step and their sums (seconds); the
   * engine's "total" stage is one of them, rendered apart from the others */
  int nstages;
  const char *stage_name[16];
  double stage_sum[16], stage_last[16];
  /* dispatch (epmoe/dispatch.h): the last step's mode and its payload bytes
   * to / from other ranks, steps per mode, and byte sums over all steps */
  const char *dispatch_last;
  uint64_t dispatch_steps[2]; /* allgather, alltoall */
  uint64_t dispatch_sent_last, dispatch_recv_last, combine_sent_last, combine_recv_last;
  uint64_t comm_sent_total, comm_recv_total;
  /* per logical expert: (token, expert) pairs of this rank's own tokens,
   * summed over completed steps of every layer, and of the last step;
   * allocated once the model is loaded (n_experts 0 before) */
  int64_t n_experts;
  uint64_t *expert_tokens, *expert_tokens_last;
} srv_stats_t;

void srv_stats_init(srv_stats_t *s);
void srv_hist_add(srv_stats_t *s, srv_hist_id_t h, double seconds);
void srv_stats_error(srv_stats_t *s, epm_status_t st);

/* ---- what the worker reports of its epm_group (srv_step.c) ------------- */
typedef struct {
  int64_t hidden, num_experts, top_k, num_layers;
  uint64_t weight_bytes; /* this rank's expert slices + shared expert + router */
  uint64_t buffer_bytes; /* step buffers of the engine(s), backend memory */
  char model[64];
  char backend[16];
} srv_model_info_t;

/* ---- a listening socket with accept back-off (srv_listen.c) -------------- */
typedef struct srv_listener {
  struct srv *s;
  int fd;
  const char *what; /* for the log: the socket path or the metrics address */
  uv_poll_t poll;
  uv_timer_t timer; /* back-off after a failed accept */
  void (*on_accept)(struct srv_listener *l, int fd);
  int active, closing, paused, handles_open;
  unsigned backoff_ms;
  uint64_t last_log_ns, suppressed;
} srv_listener_t;

epm_status_t srv_listener_start(struct srv *s, srv_listener_t *l, int fd, const char *what,
                                void (*on_accept)(srv_listener_t *l, int fd));
void srv_listener_close(srv_listener_t *l); /* closes fd once the handles are closed */

/* ---- the socket directory (srv_sockdir.c; policy in docs/RELIABILITY.md) -- */
typedef struct {
  char dir[256];  /* where the socket lives: --socket-dir, or our subdirectory of it */
  char path[300]; /* dir/epmoe.<rank>.sock */
  int dir_made;   /* this daemon created dir (rmdir when empty at exit) */
  int subdir;     /* dir is the daemon's own subdirectory of a shared parent */
  int bound;      /* path is our socket (dev, ino) until we remove it */
  dev_t dev;
  ino_t ino;
  int have_group; /* --allowed-group */
  gid_t gid;
} srv_sockdir_t;

/* Apply the directory policy, then create and bind the listening socket
 * (mode 0660, group --allowed-group). Refuses (and removes nothing) on a
 * symlink, a directory or socket path owned by another user, a live daemon. */
epm_status_t srv_sockdir_open(srv_sockdir_t *sd, const char *dir, const char *allowed_group, int rank,
                              int *listen_fd);
/* Remove what this daemon made: its socket (if the path still is that
 * socket) and a directory it created (when empty). Async-signal-safe enough
 * for the fail-stop path (unlink, rmdir, lstat). */
void srv_sockdir_remove(srv_sockdir_t *sd);
/* 1 when a peer of that uid/gid/pid belongs to the allowed group (primary or
 * supplementary). */
int srv_sockdir_in_group(const srv_sockdir_t *sd, uid_t uid, gid_t gid, pid_t pid);

/* ---- the whole daemon --------------------------------------------------- */
typedef enum { SRV_ST_STARTING = 0, SRV_ST_READY, SRV_ST_DRAINING, SRV_ST_FAILED } srv_state_t;

typedef struct srv_conn srv_conn_t;
typedef struct srv_req srv_req_t;
typedef struct srv_worker srv_worker_t;

typedef struct srv {
  srv_config_t cfg;
  epm_bootstrap_t boot; /* MPI and the EP group (epmoed.c: init at start, finalize at exit) */
  int rank, size;       /* boot.ep_rank, boot.ep_size */
  uv_loop_t *loop;
  uv_signal_t sigterm, sigint;
  uv_timer_t watchdog;
  uv_async_t wake; /* worker -> loop: completions, state changes */
  srv_sockdir_t sockdir;
  srv_listener_t listener;  /* the Unix socket */
  srv_listener_t mlistener; /* the metrics port */
  int metrics_on;
  int64_t metrics_conns;
  uv_timer_t sweep;  /* idle and probe deadlines of connections */
  int sweep_on;
  srv_conn_t *conns; /* intrusive list */
  int64_t nconns;    /* counted against --max-connections */
  int64_t nprobes;   /* reserved slots in use (HEALTH/STATUS only, short deadline) */
  srv_worker_t *worker;
  srv_model_info_t info; /* under state_mu; info_ready once set */
  int info_ready;
  srv_stats_t stats;
  uint64_t start_ns;
  pthread_mutex_t state_mu;
  srv_state_t state;
  char state_reason[256];
  int closing;  /* loop handles are being closed */
  int exit_code;
} srv_t;

void srv_set_state(srv_t *s, srv_state_t st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
srv_state_t srv_get_state(srv_t *s, char *reason, size_t n);
/* The model info is written once by the worker; readers get 0 before that. */
void srv_set_info(srv_t *s, const srv_model_info_t *info);
int srv_get_info(srv_t *s, srv_model_info_t *out);

/* ---- requests handed to the worker -------------------------------------- */
struct srv_req {
  srv_req_t *next;
  srv_conn_t *conn;   /* holds a reference; NULL after the client left */
  _Atomic int cancelled; /* set by the loop when the client left before the answer */
  int cancel_sent;    /* worker: the rendezvous was told */
  uint64_t rid;
  uint32_t layer;
  uint64_t step_id;
  int64_t m;
  uint32_t data_mode;
  uint32_t flags;         /* EPM_FWD_F_* */
  uint32_t partial_dtype; /* epm_dtype_t; part of the rendezvous key */
  /* Set for doorbell steps (srv_doorbell.c): called on the worker thread
   * instead of queueing the request for the loop; it answers and frees r. */
  void (*on_done)(srv_t *s, srv_req_t *r);
  void *done_ctx;
  uint64_t db_seq;
  const uint16_t *x;  /* bf16 [m, H]: into `frame` (inline) or the conn's shm */
  const float *logits;
  uint16_t *y;        /* bf16 [m, H]: malloc (inline) or the conn's shm */
  uint8_t *frame;     /* owned frame bytes (inline); host staging (device) */
  struct epm_devmem *dev; /* device mode: the connection's region (conn holds it) */
  uint64_t x_off, logits_off, y_off; /* device mode: offsets into dev */
  uint64_t t_recv_ns, t_go_ns, t_done_ns;
  epm_status_t st;
  char err[384];
};

/* srv_step.c */
epm_status_t srv_worker_start(srv_t *s);
void srv_worker_submit(srv_t *s, srv_req_t *r);
/* Completed requests, in completion order (caller frees via srv_req_free). */
srv_req_t *srv_worker_take_done(srv_t *s);
/* Ask the group to drain: local queue fails, peers are told. */
void srv_worker_request_shutdown(srv_t *s, const char *why);
/* The request's client left: a step not yet GO'd is withdrawn from the
 * group (every rank's share fails at once instead of timing out). */
void srv_worker_cancel(srv_t *s, srv_req_t *r);
/* 1 when heartbeats supervise the group (--liveness-timeout and MPI allow it). */
int srv_worker_liveness_on(srv_t *s);
/* 1 once the group failed (a rank or the coordinator silent, or a stall),
 * with the reason; any thread. */
int srv_worker_group_failed(srv_t *s, char *why, size_t n);
int srv_worker_finished(srv_t *s); /* the worker left its loop (group drained, or failed) */
void srv_worker_join(srv_t *s);
/* The step backend's stream (a cudaStream_t on cuda, NULL on cpu); for
 * on_done hooks, which run on the worker thread. */
void *srv_worker_stream(srv_t *s);
/* > 0: ns the worker has been inside the current collective; 0 if none. */
uint64_t srv_worker_in_step_ns(srv_t *s, uint64_t *step_id, uint32_t *layer);
void srv_req_free(srv_req_t *r);

/* srv_net.c */
epm_status_t srv_net_listen(srv_t *s);
void srv_net_deliver(srv_t *s, srv_req_t *r); /* answer a completed FORWARD */
/* Fail-stop: answer every FORWARD in flight with ERROR(st, msg) and push the
 * answers out for up to budget_ms, so clients see why before the exit. */
void srv_net_fail_inflight(srv_t *s, epm_status_t st, const char *msg, unsigned budget_ms);
void srv_net_stop_accepting(srv_t *s);
void srv_net_close_all(srv_t *s);

/* srv_doorbell.c: DOORBELL_ATTACH (fd: the memfd, always consumed; *dev:
 * the connection's device region, taken over in device mode). On success
 * *out is the connection's doorbell; srv_doorbell_close ends it when the
 * connection closes (a step in flight still completes). On failure err
 * holds the message for the ERROR answer. Loop thread. */
typedef struct srv_doorbell srv_doorbell_t;
epm_status_t srv_doorbell_attach(srv_t *s, const epm_frame_t *f, int fd, uint64_t conn_id,
                                 struct epm_devmem **dev, srv_doorbell_t **out, char *err, size_t n);
void srv_doorbell_close(srv_doorbell_t *db); /* NULL ok */

/* srv_stats.c */
void srv_render_status(srv_t *s, epm_buf_t *b, int json);
void srv_render_stats(srv_t *s, epm_buf_t *b, int fmt);

/* srv_metrics.c: HTTP /metrics, /health, /ready on --metrics-bind:--metrics-port */
epm_status_t srv_metrics_listen(srv_t *s);
void srv_metrics_close(srv_t *s);

#endif
