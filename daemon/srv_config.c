/* SPDX-License-Identifier: Apache-2.0 */
/* srv_config.c — epmoed's settings: ONE declarative table (daemon/cli_opt.h)
 * drives defaults, EPMOE_* environment variables, --flags (flag wins over
 * env), range checks, --help and the config section of STATUS. A bad value is
 * a one-line error naming the flag, the value and the limit. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opt.h"
#include "epmoe/dispatch.h"
#include "epmoe/log.h"
#include "epmoe/model.h"
#include "srv.h"

extern char **environ;

#define AT(field) EPM_OPT_AT(srv_config_t, field)

static const epm_opt_choice_t backends[] = {{"cpu", 0}, {"cuda", 0}, {"auto", 0}, {NULL, 0}};
static const epm_opt_choice_t kernels[] = {{"v1", 0}, {"v2", 0}, {NULL, 0}};
static const epm_opt_choice_t log_levels[] = {{"error", 0}, {"warn", 0}, {"info", 0}, {"debug", 0}, {NULL, 0}};
static const epm_opt_choice_t log_formats[] = {{"text", 0}, {"json", 0}, {NULL, 0}};
static const epm_opt_choice_t log_prefixes[] = {{"auto", 0}, {"syslog", 0}, {"none", 0}, {NULL, 0}};
static const epm_opt_choice_t dispatches[] = {{"allgather", 0}, {"alltoall", 0}, {"auto", 0}, {NULL, 0}};

/* The environment variable of --name is EPMOE_NAME (dashes -> underscores);
 * scripts and unit files depend on these names. */
static const epm_opt_t opts[] = {
    {.name = "model", .kind = EPM_OPT_STRBUF, AT(model), .def = "", .env = "EPMOE_MODEL", .arg = "DIR",
     .help = "checkpoint directory (NVFP4 safetensors); overrides --preset.\n"
             "This or --preset is required"},
    {.name = "preset", .kind = EPM_OPT_STRBUF, AT(preset), .def = "", .env = "EPMOE_PRESET", .arg = "NAME",
     .help = "generated weights of a model preset (tests, benchmarks):\n"
             "tiny, deepseek-r1, qwen3-235b, llama4-maverick"},
    {.name = "seed", .kind = EPM_OPT_INT64, AT(seed), .def = "1", .min = 0, .max = INT64_MAX, .env = "EPMOE_SEED",
     .help = "seed of the generated preset weights"},
    {.name = "layers", .kind = EPM_OPT_INT64, AT(layers), .def = "0", .min = 0, .max = 4096, .env = "EPMOE_LAYERS",
     .help = "MoE layers served: a checkpoint's first N, or preset layers\n"
             "0..N-1 (0 = every layer of a checkpoint; 1 of a preset)"},
    {.name = "backend", .kind = EPM_OPT_STRBUF, AT(backend), .def = "auto", .choices = backends,
     .env = "EPMOE_BACKEND", .help = "where the experts run (auto: cuda when a GPU is visible)"},
    {.name = "socket-dir", .kind = EPM_OPT_STRBUF, AT(socket_dir), .def = "", .env = "EPMOE_SOCKET_DIR",
     .arg = "DIR", .help = "directory of epmoe.<rank>.sock\n(default $XDG_RUNTIME_DIR/epmoe or /run/epmoe)"},
    {.name = "max-tokens-per-rank", .kind = EPM_OPT_INT64, AT(max_tokens_per_rank), .def = "4096", .min = 1,
     .max = (int64_t)1 << 24, .env = "EPMOE_MAX_TOKENS_PER_RANK", .help = "largest m_r one FORWARD may carry"},
    {.name = "log-level", .kind = EPM_OPT_STRBUF, AT(log_level), .def = "info", .choices = log_levels,
     .env = "EPMOE_LOG_LEVEL", .help = "log verbosity"},
    {.name = "log-format", .kind = EPM_OPT_STRBUF, AT(log_format), .def = "text", .choices = log_formats,
     .env = "EPMOE_LOG_FORMAT",
     .help = "log lines on stderr: text, or one JSON object per line"},
    {.name = "log-prefix", .kind = EPM_OPT_STRBUF, AT(log_prefix), .def = "auto", .choices = log_prefixes,
     .env = "EPMOE_LOG_PREFIX",
     .help = "\"<N>\" syslog priority before each line, which journald\n"
             "stores as PRIORITY: auto = when stderr is the journal\n"
             "(JOURNAL_STREAM); syslog = always (ranks under mpirun\n"
             "in a systemd unit reach the journal through mpirun)"},
    {.name = "step-timeout", .kind = EPM_OPT_INT64, AT(step_timeout_s), .def = "30", .min = 1, .max = 86400,
     .env = "EPMOE_STEP_TIMEOUT", .arg = "S",
     .help = "seconds a step may wait for all ranks to join; with liveness also\nthe longest a step may go with no rank making progress (without\nliveness: the longest a step may run)"},
    {.name = "liveness-timeout", .kind = EPM_OPT_DOUBLE, AT(liveness_s), .def = "5", .fmin = 0, .fmax = 3600,
     .env = "EPMOE_LIVENESS_TIMEOUT", .arg = "S",
     .help = "heartbeats between ranks: a rank silent this long (dead or\nstopped) fails the group (0 = off; >= 0.1)"},
    {.name = "metrics-port", .kind = EPM_OPT_INT64, AT(metrics_port), .def = "0", .min = 0, .max = 65535,
     .env = "EPMOE_METRICS_PORT", .arg = "PORT",
     .help = "serve Prometheus /metrics on --metrics-bind:PORT+local rank (0 = off)"},
    {.name = "metrics-bind", .kind = EPM_OPT_STRBUF, AT(metrics_bind), .def = "127.0.0.1", .env = "EPMOE_METRICS_BIND",
     .arg = "ADDR", .help = "IPv4 or IPv6 address of the metrics listener (0.0.0.0: every interface)"},
    {.name = "max-frame", .kind = EPM_OPT_INT64, AT(max_frame), .def = "1G", .min = 4096, .max = (int64_t)1 << 40,
     .flags = EPM_OPT_KMG, .env = "EPMOE_MAX_FRAME", .arg = "BYTES",
     .help = "largest frame payload accepted (K/M/G suffixes)"},
    {.name = "allowed-group", .kind = EPM_OPT_STRBUF, AT(allowed_group), .def = "", .env = "EPMOE_ALLOWED_GROUP",
     .arg = "GROUP", .help = "group (name or gid) whose members may connect besides our uid"},
    {.name = "max-connections", .kind = EPM_OPT_INT64, AT(max_connections), .def = "64", .min = 1, .max = 4096,
     .env = "EPMOE_MAX_CONNECTIONS",
     .help = "simultaneous client connections (a few more are kept for\nHEALTH/STATUS probes)"},
    {.name = "idle-timeout", .kind = EPM_OPT_INT64, AT(idle_timeout_s), .def = "300", .min = 0, .max = 86400 * 7,
     .env = "EPMOE_IDLE_TIMEOUT", .arg = "S",
     .help = "close a connection with nothing in flight after S seconds\nwithout traffic (0 = never)"},
    {.name = "warmup-tokens", .kind = EPM_OPT_INT64, AT(warmup_tokens), .def = "4", .min = 0, .max = 1 << 20,
     .env = "EPMOE_WARMUP_TOKENS", .help = "tokens per rank of the start-up warm-up step"},
    {.name = "step-delay-ms", .kind = EPM_OPT_INT64, AT(step_delay_ms), .def = "0", .min = 0, .max = 600000,
     .env = "EPMOE_STEP_DELAY_MS", .arg = "MS", .help = "testing: sleep this long inside every step"},
    {.name = "dispatch", .kind = EPM_OPT_STRBUF, AT(dispatch), .def = "allgather", .choices = dispatches,
     .env = "EPMOE_DISPATCH", .help = "how tokens reach the experts (auto: per step, by the cost\nterms below)"},
    {.name = "recv-capacity", .kind = EPM_OPT_INT64, AT(recv_capacity), .def = "0", .min = 0, .max = (int64_t)1 << 40,
     .env = "EPMOE_RECV_CAPACITY", .arg = "N",
     .help = "alltoall: most token rows a rank receives per step\n(0 = any routing fits)"},
    {.name = "workspace-mb", .kind = EPM_OPT_INT64, AT(workspace_mb), .def = "0", .min = 0, .max = (int64_t)1 << 30,
     .env = "EPMOE_WORKSPACE_MB", .arg = "MB",
     .help = "expert-stage workspace budget per rank in MiB: the experts\nrun over chunks of gathered rows that fit (0 = unbounded)"},
    {.name = "dispatch-latency-us", .kind = EPM_OPT_STRBUF, AT(dispatch_latency_us), .def = "",
     .env = "EPMOE_DISPATCH_LATENCY_US", .arg = "AG,A2A",
     .help = "auto: fixed cost per step of each mode in us\n(epmoectl step --calibrate-dispatch)"},
    {.name = "dispatch-gbps", .kind = EPM_OPT_STRBUF, AT(dispatch_gbps), .def = "", .env = "EPMOE_DISPATCH_GBPS",
     .arg = "AG,A2A", .help = "auto: bandwidth of each mode in GB/s (same calibration)"},
    {.name = "placement", .kind = EPM_OPT_STRBUF, AT(placement), .def = "", .env = "EPMOE_PLACEMENT", .arg = "FILE",
     .help = "expert placement map (JSON, docs/PLACEMENT.md; `epmoectl\nplacement` writes one); default: the contiguous split"},
    {.name = "redundant-experts", .kind = EPM_OPT_INT64, AT(redundant_experts), .def = "0", .min = 0, .max = 1 << 16,
     .env = "EPMOE_REDUNDANT_EXPERTS", .arg = "N",
     .help = "extra slots of the default split: second copies of\nexperts 0..N-1 (ignored with --placement)"},
    {.name = "kernels", .kind = EPM_OPT_STRBUF, AT(kernels), .def = "v1", .choices = kernels, .env = "EPMOE_KERNELS",
     .help = "cuda kernels: v1 (reference) or v2 (fast: sm_90a wgmma, warp routing)"},
};
#define NOPTS (sizeof opts / sizeof opts[0])
_Static_assert(NOPTS <= sizeof(((srv_config_t *)0)->src), "src[] too small");

static const char *src_name[] = {"default", "environment", "flag"};

/* EPMOE_* names that are not epmoed options but are known, so they are not
 * reported as misspelt settings. */
static const char *const known_env[] = {
    /* read inside the daemon's process by the library */
    "EPMOE_ALLOW_SINGLETON", /* comm/bootstrap.c: a world of one on purpose */
    "EPMOE_THREADS",         /* runtime/moe_ref.c: CPU reference threads */
    /* the deployment recipes' own settings (deploy/): the recipes keep them
     * away from the daemon, but an operator's shell may export them */
    "EPMOE_NP", "EPMOE_PREFIX", "EPMOE_BIN", "EPMOE_RUN_DIR", "EPMOE_READY_TIMEOUT", "EPMOE_READY_FILE",
    "EPMOE_DRAIN_TIMEOUT", "EPMOE_WORKERS", "EPMOE_SLOTS",
    /* the tests' and test tools' (tests/) */
    "EPMOE_TEST_DATA", "EPMOE_BF16_STRIDE", "EPMOE_FUZZ_SECONDS", "EPMOE_FUZZ_TARGETS", "EPMOE_FUZZ_BUILD",
    "EPMOE_TEST_FAULT", /* daemon/srv_step.c: the fault suite's hook (tests/daemon/fault_matrix.sh) */
    "EPMOE_BUILD_DIR",  /* python/tests: where the Python package's tests find the built binaries */
    NULL};

/* c is only read by --help (no option shows its initial value). */
static epm_opt_cmd_t command(srv_config_t *c, epm_opt_group_t *g) {
  *g = (epm_opt_group_t){NULL, opts, NOPTS, c, c->src};
  return (epm_opt_cmd_t){
      .prog = "epmoed",
      .synopsis = "usage: mpirun -np N epmoed (--model DIR | --preset NAME [--seed N]) [options]",
      .about = "One daemon per rank; serves FORWARD steps on DIR/epmoe.<rank>.sock.\n"
               "Every option also reads an environment variable; the flag wins.",
      .epilog = "Other EPMOE_* variables: EPMOE_ALLOW_SINGLETON=1 runs a world of one on purpose,\n"
                "EPMOE_THREADS=N sets the CPU threads; the deployment recipes' and the tests' own\n"
                "variables are ignored; any other EPMOE_* name is an error (a misspelt setting).\n"
                "\n"
                "Exit: 0 drained after SIGTERM or SHUTDOWN, 1 start-up or runtime failure,\n"
                "3 the group failed: a rank dead or stopped, a stalled step (fail-stop),\n"
                "64 bad command line or environment.",
      .groups = g,
      .ngroups = 1};
}

epm_status_t srv_config_load(srv_config_t *c, int argc, char **argv, srv_config_action_t *act) {
  epm_opt_group_t g;
  epm_opt_result_t res;
  memset(c, 0, sizeof *c);
  epm_opt_cmd_t cmd = command(c, &g);
  EPM_TRY(epm_opt_parse(&cmd, argc, argv, &res));
  *act = res.help ? SRV_CONFIG_HELP : res.version ? SRV_CONFIG_VERSION : SRV_CONFIG_RUN;
  if (*act != SRV_CONFIG_RUN) return EPM_OK;
  EPM_TRY(epm_opt_check_env(&cmd, "EPMOE_", known_env, environ));
  /* No silent default model: a daemon that reports healthy while serving
   * random weights (a misspelt EPMOE_MODEL) is worse than one that stops. */
  if (!c->model[0] && !c->preset[0]) {
    char names[256] = "";
    size_t k = 0;
    for (const char *const *p = epm_model_preset_names(); *p && k < sizeof names; p++)
      k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", k ? ", " : "", *p);
    return epm_error(EPM_ERR_INVALID_ARG,
                     "no model to serve: pass --model DIR (or EPMOE_MODEL=DIR) with an NVFP4 checkpoint, "
                     "or --preset NAME (or EPMOE_PRESET=NAME) for generated test weights (%s)", names);
  }
  if (!c->model[0] && epm_model_preset(c->preset, &(epm_model_dims_t){0}) != EPM_OK)
    return epm_error_wrap(EPM_ERR_INVALID_ARG, "bad value for --preset");
  {
    epm_dispatch_cost_t dc; /* a typo in the cost terms stops the start, not the first step */
    epm_dispatch_cost_default(&dc);
    if (epm_dispatch_cost_parse(c->dispatch_latency_us, c->dispatch_gbps, &dc) != EPM_OK)
      return epm_error_wrap(EPM_ERR_INVALID_ARG, "bad --dispatch-latency-us / --dispatch-gbps");
  }
  if (c->liveness_s > 0 && c->liveness_s < 0.1)
    return epm_error(EPM_ERR_INVALID_ARG, "bad value for --liveness-timeout: %g is below 0.1 s (0 turns it off)",
                     c->liveness_s);
  if (c->socket_dir[0] == '\0') {
    const char *x = getenv("XDG_RUNTIME_DIR");
    int n = x && *x ? snprintf(c->socket_dir, sizeof c->socket_dir, "%s/epmoe", x)
                    : snprintf(c->socket_dir, sizeof c->socket_dir, "/run/epmoe");
    if (n < 0 || (size_t)n >= sizeof c->socket_dir)
      return epm_error(EPM_ERR_INVALID_ARG, "$XDG_RUNTIME_DIR is %zu characters, too long for a socket path "
                       "(limit %zu); pass --socket-dir", strlen(x), sizeof c->socket_dir - 1 - strlen("/epmoe"));
  }
  return EPM_OK;
}

void srv_config_usage(FILE *f, int full) {
  srv_config_t c;
  epm_opt_group_t g;
  memset(&c, 0, sizeof c);
  epm_opt_cmd_t cmd = command(&c, &g);
  if (full) epm_opt_help(f, &cmd);
  else epm_opt_usage(f, &cmd);
}

static void json_str(epm_buf_t *b, const char *s) {
  epm_buf_put(b, "\"", 1);
  for (; *s; s++) {
    char esc[8];
    if (*s == '"' || *s == '\\') snprintf(esc, sizeof esc, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*s);
    else esc[0] = *s, esc[1] = '\0';
    epm_buf_put(b, esc, strlen(esc));
  }
  epm_buf_put(b, "\"", 1);
}

static int is_text(const epm_opt_t *o) { return o->kind == EPM_OPT_STRBUF; }

void srv_config_log(const srv_config_t *c) {
  for (size_t i = 0; i < NOPTS; i++) {
    char val[600];
    if (!c->src[i]) continue;
    EPM_LOG(EPM_LOG_INFO, "config", "--%s=%s (set by %s%s%s)", opts[i].name, epm_opt_format(&opts[i], c, val, sizeof val),
            src_name[c->src[i]], c->src[i] == EPM_OPT_SRC_ENV ? " " : "",
            c->src[i] == EPM_OPT_SRC_ENV ? opts[i].env : "");
  }
}

void srv_config_dump(const srv_config_t *c, epm_buf_t *b, int json) {
  char line[700];
  for (size_t i = 0; i < NOPTS; i++) {
    const epm_opt_t *o = &opts[i];
    char val[600];
    epm_opt_format(o, c, val, sizeof val);
    if (json) {
      snprintf(line, sizeof line, "%s\"%s\":{\"value\":", i ? "," : "", o->name);
      epm_buf_put(b, line, strlen(line));
      if (is_text(o)) json_str(b, val);
      else epm_buf_put(b, val, strlen(val));
      snprintf(line, sizeof line, ",\"source\":\"%s\"}", src_name[c->src[i]]);
    } else {
      snprintf(line, sizeof line, "config_%s:%s\r\n", o->name, val);
      for (char *p = line + 7; *p && *p != ':'; p++)
        if (*p == '-') *p = '_';
    }
    epm_buf_put(b, line, strlen(line));
  }
}
