/* SPDX-License-Identifier: Apache-2.0 */
/* ctl_ckpt.c — `epmoectl ckpt make|inspect|load`: write a synthetic
 * ModelOpt NVFP4 checkpoint, validate one (exit 1 on any problem), or time
 * loading one rank's expert slice. Exit 64 on a bad command line. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "epmoe/checked.h"
#include "epmoe/model_dir.h"
#include "epmoe/safetensors.h"
#include "epmoe/weights.h"

/* ---- the three actions' options ---- */
typedef struct {
  const char *preset, *out;
  long long layers, shard_mb;
  uint64_t seed;
  int quiet;
  /* inspect */
  int json, tensors;
  /* load */
  long long ep, rank;
  int cold;
} ckpt_opts_t;

#define AT(field) EPM_OPT_AT(ckpt_opts_t, field)

static const epm_opt_t make_opts[] = {
    {.name = "preset", .kind = EPM_OPT_STR, AT(preset), .flags = EPM_OPT_REQUIRED, .arg = "NAME",
     .help = "deepseek-r1, qwen3-235b, llama4-maverick, tiny"},
    {.name = "layers", .kind = EPM_OPT_INT64, AT(layers), .min = 1, .max = 100000,
     .flags = EPM_OPT_KMG | EPM_OPT_REQUIRED, .help = "MoE layers to write (layers 0..N-1)"},
    {.name = "out", .kind = EPM_OPT_STR, AT(out), .flags = EPM_OPT_REQUIRED, .arg = "DIR",
     .help = "new checkpoint directory"},
    {.name = "seed", .kind = EPM_OPT_UINT64, AT(seed), .def = "1", .umin = 0, .umax = INT64_MAX,
     .flags = EPM_OPT_KMG, .arg = "S", .help = "seed of the generated weights"},
    {.name = "shard-mb", .kind = EPM_OPT_INT64, AT(shard_mb), .def = "4096", .min = 0, .max = 1 << 24,
     .flags = EPM_OPT_KMG, .arg = "M", .help = "most MB per safetensors file (0 = one model.safetensors)"},
    {.name = "quiet", .kind = EPM_OPT_FLAG, AT(quiet), .help = "no progress lines"},
};

static const epm_opt_t inspect_opts[] = {
    {.name = "json", .kind = EPM_OPT_FLAG, AT(json), .help = "one JSON object instead of text"},
    {.name = "tensors", .kind = EPM_OPT_FLAG, AT(tensors),
     .help = "add every tensor with its FNV-1a 64 hash (reads all data)"},
};

static const epm_opt_t load_opts[] = {
    {.name = "ep", .kind = EPM_OPT_INT64, AT(ep), .def = "1", .min = 1, .max = 1 << 20, .flags = EPM_OPT_KMG,
     .help = "expert-parallel group size"},
    {.name = "rank", .kind = EPM_OPT_INT64, AT(rank), .def = "0", .min = 0, .max = 1 << 20, .flags = EPM_OPT_KMG,
     .arg = "R", .help = "the rank whose expert slice is loaded (< --ep)"},
    {.name = "cold", .kind = EPM_OPT_FLAG, AT(cold), .help = "drop the checkpoint's files from the page cache first"},
};

typedef enum { ACT_MAKE, ACT_INSPECT, ACT_LOAD, ACT_COUNT } ckpt_action_t;
static const char *const action_names[ACT_COUNT] = {"make", "inspect", "load"};

static epm_opt_cmd_t command(ckpt_action_t a, ckpt_opts_t *o, epm_opt_group_t *g) {
  static const struct {
    const epm_opt_t *opts;
    size_t n;
    const char *prog, *synopsis, *about;
    int max_args;
  } act[ACT_COUNT] = {
      {make_opts, sizeof make_opts / sizeof make_opts[0], "epmoectl ckpt make",
       "usage: epmoectl ckpt make --preset NAME --layers N --out DIR [--seed S] [--shard-mb M] [--quiet]",
       "Write a ModelOpt-style NVFP4 checkpoint: config.json (the preset's model family\n"
       "naming), hf_quant_config.json, safetensors files of at most M MB and\n"
       "model.safetensors.index.json. Layer L holds the same weights as the in-memory\n"
       "generator with seed S.",
       0},
      {inspect_opts, sizeof inspect_opts / sizeof inspect_opts[0], "epmoectl ckpt inspect",
       "usage: epmoectl ckpt inspect DIR [--json] [--tensors]",
       "Validate everything (headers, index, config, every expert tensor's dtype and\n"
       "shape) and list layers, experts, dtypes and sizes; exit 1 on any problem.",
       1},
      {load_opts, sizeof load_opts / sizeof load_opts[0], "epmoectl ckpt load",
       "usage: epmoectl ckpt load DIR [--ep N] [--rank R] [--cold]",
       "Load every MoE layer's slice for EP rank R of N into host memory and print the rate.", 1},
  };
  *g = (epm_opt_group_t){NULL, act[a].opts, act[a].n, o, NULL};
  return (epm_opt_cmd_t){.prog = act[a].prog,
                         .synopsis = act[a].synopsis,
                         .about = act[a].about,
                         .epilog = "Exit: 0 ok, 1 failure (inspect: any problem found), 64 usage error.",
                         .max_args = act[a].max_args,
                         .groups = g,
                         .ngroups = 1};
}

/* `ckpt --help`: every action's help, generated from its table. */
static void help_all(FILE *f) {
  ckpt_opts_t o;
  epm_opt_group_t g;
  memset(&o, 0, sizeof o);
  fprintf(f, "usage: epmoectl ckpt make|inspect|load ...  (epmoectl ckpt ACTION --help for one)\n"
             "presets: deepseek-r1, qwen3-235b, llama4-maverick, tiny\n");
  for (int a = 0; a < ACT_COUNT; a++) {
    epm_opt_cmd_t cmd = command((ckpt_action_t)a, &o, &g);
    fputc('\n', f);
    epm_opt_help(f, &cmd);
  }
}

/* Parse an action's argv; -1 to go on, else the exit code. DIR actions need
 * exactly one positional argument. */
static int parse(ckpt_action_t a, int argc, char **argv, ckpt_opts_t *o, const char **dir) {
  epm_opt_group_t g;
  epm_opt_result_t res;
  epm_opt_cmd_t cmd = command(a, o, &g);
  int rc = epm_ctl_args(&cmd, argc, argv, &res);
  if (rc >= 0) return rc;
  if (cmd.max_args && res.nargs != 1) return epm_ctl_usage(&cmd, "DIR is required");
  if (dir) *dir = res.nargs ? res.args[0] : NULL;
  if (a == ACT_LOAD && o->rank >= o->ep)
    return epm_ctl_usage(&cmd, "--rank %lld must be < --ep %lld", o->rank, o->ep);
  if (a == ACT_MAKE && epm_model_preset(o->preset, &(epm_model_dims_t){0}) != EPM_OK)
    return epm_ctl_usage(&cmd, "%s", epm_last_error());
  return -1;
}

static int fail_st(const char *what) {
  fprintf(stderr, "epmoectl ckpt %s: %s\n", what, epm_last_error());
  return 1;
}

static int cmd_make(int argc, char **argv) {
  ckpt_opts_t a;
  memset(&a, 0, sizeof a);
  int rc = parse(ACT_MAKE, argc, argv, &a, NULL);
  if (rc >= 0) return rc;
  epm_ckpt_make_opts_t o = {.out_dir = a.out, .layers = a.layers, .seed = a.seed,
                            .shard_bytes = (size_t)a.shard_mb << 20, .quiet = a.quiet};
  if (epm_model_preset(a.preset, &o.dims) != EPM_OK) return fail_st("make");
  return epm_ckpt_make(&o) == EPM_OK ? 0 : fail_st("make");
}

/* ---- inspect ---- */
/* The scan stops after this many bad tensors: with at most this many failed
 * lookups, and one successful lookup per distinct tensor of the weight map,
 * inspect's time is bounded by what the files hold, whatever config.json says. */
#define EPM__INSPECT_MAX_BAD 1000

typedef struct {
  int64_t bad;
  json_t *problems;
  size_t dtype_count[EPM_ST_DTYPE_COUNT];
  size_t dtype_bytes[EPM_ST_DTYPE_COUNT];
} insp_t;

static void problem(insp_t *s) {
  if (json_array_size(s->problems) < EPM__INSPECT_MAX_BAD + 10)
    json_array_append_new(s->problems, json_string(epm_last_error()));
}

static void bad_tensor(insp_t *s) {
  problem(s);
  if (++s->bad == EPM__INSPECT_MAX_BAD) {
    epm_error(EPM_ERR_FORMAT, "stopped after %d bad tensors", EPM__INSPECT_MAX_BAD);
    problem(s);
  }
}

/* Every file opens and validates; every mapped tensor is in its file and
 * every tensor of a file is mapped to it. */
static json_t *inspect_files(epm_model_dir_t *md, insp_t *s, int tensors) {
  json_t *files = json_array();
  size_t nf = epm_model_dir_file_count(md), nt = epm_model_dir_tensor_count(md);
  size_t *mapped = calloc(nf + 1, sizeof *mapped);
  json_t *tl = tensors ? json_array() : NULL;
  for (size_t i = 0; i < nt; i++) mapped[epm_model_dir_tensor_file(md, i)]++;
  for (size_t i = 0; i < nt; i++) {
    const epm_st_tensor_t *t;
    if (epm_model_dir_tensor(md, epm_model_dir_tensor_name(md, i), &t, NULL) != EPM_OK) {
      problem(s);
      continue;
    }
    if (tl) {
      char h[24];
      json_t *shape = json_array();
      for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
      snprintf(h, sizeof h, "%016llx", (unsigned long long)epm_fnv1a64(t->data, t->nbytes, EPM_FNV1A64_INIT));
      json_array_append_new(tl, json_pack("{s:s, s:s, s:s, s:o, s:I, s:s}", "name", t->name, "file",
                                          epm_model_dir_file_name(md, epm_model_dir_tensor_file(md, i)), "dtype",
                                          epm_st_dtype_name(t->dtype), "shape", shape, "nbytes",
                                          (json_int_t)t->nbytes, "fnv1a64", h));
    }
  }
  for (size_t i = 0; i < nf; i++) {
    const epm_st_file_t *f;
    if (epm_model_dir_file(md, i, &f) != EPM_OK) {
      problem(s);
      continue;
    }
    size_t bytes = 0;
    for (size_t k = 0; k < epm_st_count(f); k++) {
      const epm_st_tensor_t *t = epm_st_at(f, k);
      s->dtype_count[t->dtype]++;
      s->dtype_bytes[t->dtype] += t->nbytes;
      bytes += t->nbytes;
    }
    if (epm_st_count(f) != mapped[i]) {
      epm_error(EPM_ERR_FORMAT, "%s: holds %zu tensors but the weight map assigns %zu to it", epm_st_path(f),
                epm_st_count(f), mapped[i]);
      problem(s);
    }
    json_array_append_new(files, json_pack("{s:s, s:I, s:I}", "name", epm_model_dir_file_name(md, i), "tensors",
                                           (json_int_t)epm_st_count(f), "bytes", (json_int_t)epm_st_file_size(f)));
  }
  free(mapped);
  return tl ? json_pack("{s:o, s:o}", "files", files, "tensors", tl) : json_pack("{s:o}", "files", files);
}

/* All 12 tensors of every expert plus shared and router: exact dtype and
 * shape, and the values the loader checks (epm_check_*: block scales, decode
 * scales, finite router), so inspect says ok exactly when a load would. */
static json_t *inspect_layer(epm_model_dir_t *md, int64_t L, insp_t *s) {
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  epm_model_family_t fam = epm_model_dir_family(md);
  float in = 0, down = 0;
  int64_t bad = 0, mism = 0;
  char name[256];
  for (int64_t e = -1; e < d->num_experts && s->bad < EPM__INSPECT_MAX_BAD; e++) {
    if (e == EPM_EXPERT_SHARED && !d->shared_experts) continue;
    int64_t I = e == EPM_EXPERT_SHARED ? d->shared_intermediate : d->intermediate, H = d->hidden;
    float s2[3] = {0, 0, 0};
    for (int p = 0; p < 3; p++) {
      int64_t rows = p == EPM_PROJ_DOWN ? H : I, cols = p == EPM_PROJ_DOWN ? I : H;
      int64_t ws[2] = {rows, cols / 2}, ss[2] = {rows, cols / 16};
      const epm_st_tensor_t *t;
      const epm_st_file_t *f = NULL;
      const epm_st_dtype_t dts[4] = {EPM_ST_U8, EPM_ST_F8_E4M3, EPM_ST_F32, EPM_ST_F32};
      for (int fld = 0; fld < 4; fld++) {
        epm_weight_name(fam, L, e, (epm_proj_t)p, (epm_field_t)fld, name, sizeof name);
        epm_status_t st = epm_model_dir_tensor(md, name, &t, &f);
        if (st == EPM_OK && fld < 2) st = epm_st_expect(f, name, dts[fld], 2, fld ? ss : ws, &t);
        if (st == EPM_OK && fld >= 2 && (t->dtype != EPM_ST_F32 || t->numel != 1 || t->ndim > 1))
          st = epm_error(EPM_ERR_FORMAT, "tensor '%s' is %s with %lld elements, expected an F32 scalar", name,
                         epm_st_dtype_name(t->dtype), (long long)t->numel);
        if (st == EPM_OK && fld == EPM_FIELD_WEIGHT_SCALE)
          st = epm_check_block_scales(epm_st_path(f), name, t->data, ss[0], ss[1]);
        float v = 0;
        if (st == EPM_OK && fld >= 2) {
          memcpy(&v, t->data, sizeof v);
          st = epm_check_decode_scale(epm_st_path(f), name, v);
        }
        if (st != EPM_OK) {
          bad++;
          bad_tensor(s);
          continue;
        }
        if (fld < 2) continue;
        if (fld == EPM_FIELD_WEIGHT_SCALE_2) s2[p] = v;
        if (fld == EPM_FIELD_INPUT_SCALE && e >= 0) {
          if (p == EPM_PROJ_DOWN && v > down) down = v;
          if (p != EPM_PROJ_DOWN && v > in) in = v;
        }
      }
    }
    if (s2[0] != s2[1]) mism++;
  }
  for (int b = 0; b < 2; b++) {
    const epm_st_tensor_t *t;
    const epm_st_file_t *f;
    const int64_t want[2] = {d->num_experts, d->hidden};
    if (b && d->routing != EPM_ROUTING_DEEPSEEK_V3) continue;
    epm_router_name(fam, L, b, name, sizeof name);
    epm_status_t st = epm_model_dir_tensor(md, name, &t, &f);
    /* The loader's rule: BF16 or F32, [E, H] (weight) or [E] (bias). */
    if (st == EPM_OK)
      st = epm_st_expect(f, name, t->dtype == EPM_ST_F32 ? EPM_ST_F32 : EPM_ST_BF16, b ? 1 : 2, want, &t);
    if (st == EPM_OK) st = epm_check_finite(epm_st_path(f), t);
    if (st != EPM_OK) {
      bad++;
      bad_tensor(s);
    }
  }
  return json_pack("{s:I, s:I, s:I, s:f, s:f, s:I}", "layer", (json_int_t)L, "experts", (json_int_t)d->num_experts,
                   "bad_tensors", (json_int_t)bad, "input_scale", (double)in, "down_input_scale", (double)down,
                   "gate_up_scale_2_mismatches", (json_int_t)mism);
}

/* The MoE tensors config.json implies (12 per expert and shared expert, the
 * router and its bias) cannot outnumber the weight map: one line that says
 * config.json and the files disagree, before the per-tensor problems. */
static void count_tensors(epm_model_dir_t *md, insp_t *s) {
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  const int64_t per_extra = 12 * d->shared_experts + 1 + (d->routing == EPM_ROUTING_DEEPSEEK_V3);
  const int64_t layers = epm_model_dir_moe_layer_count(md);
  int64_t per = 0, need = 0;
  size_t have = epm_model_dir_tensor_count(md);
  if (epm_mul_i64(12, d->num_experts, &per) || epm_add_i64(per, per_extra, &per) ||
      epm_mul_i64(per, layers, &need) || (uint64_t)need > (uint64_t)have) {
    epm_error(EPM_ERR_FORMAT,
              "%s: config.json describes %lld MoE layers of %lld experts, which need %lld tensors or more, but the "
              "weight map lists %zu",
              epm_model_dir_path(md), (long long)layers, (long long)d->num_experts, (long long)need, have);
    problem(s);
  }
}

static int cmd_inspect(int argc, char **argv) {
  const char *dir = NULL;
  ckpt_opts_t a;
  memset(&a, 0, sizeof a);
  int rc = parse(ACT_INSPECT, argc, argv, &a, &dir);
  if (rc >= 0) return rc;
  int as_json = a.json, tensors = a.tensors;
  epm_model_dir_t *md;
  if (epm_model_dir_open(dir, &md) != EPM_OK) {
    if (as_json) {
      json_t *r = json_pack("{s:s, s:b, s:[s]}", "dir", dir, "ok", 0, "problems", epm_last_error());
      json_dumpf(r, stdout, JSON_INDENT(2));
      json_decref(r);
      putchar('\n');
    }
    return fail_st("inspect");
  }
  insp_t s = {.problems = json_array()};
  const epm_model_dims_t *d = epm_model_dir_dims(md);
  json_t *r = inspect_files(md, &s, tensors);
  json_t *layers = json_array(), *dt = json_object();
  count_tensors(md, &s);
  for (int64_t i = 0; s.bad < EPM__INSPECT_MAX_BAD && i < epm_model_dir_moe_layer_count(md); i++)
    json_array_append_new(layers, inspect_layer(md, epm_model_dir_moe_layer(md, i), &s));
  for (int k = 0; k < EPM_ST_DTYPE_COUNT; k++)
    if (s.dtype_count[k])
      json_object_set_new(dt, epm_st_dtype_name((epm_st_dtype_t)k),
                          json_pack("{s:I, s:I}", "tensors", (json_int_t)s.dtype_count[k], "bytes",
                                    (json_int_t)s.dtype_bytes[k]));
  int ok = json_array_size(s.problems) == 0;
  json_object_update_new(
      r, json_pack("{s:s, s:s, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:s, s:I, s:I, s:I}, s:o, s:o, s:b, s:o}",
                   "dir", dir, "family", epm_model_family_name(epm_model_dir_family(md)), "dims", "hidden",
                   (json_int_t)d->hidden, "intermediate", (json_int_t)d->intermediate, "num_experts",
                   (json_int_t)d->num_experts, "top_k", (json_int_t)d->top_k, "n_group", (json_int_t)d->n_group,
                   "topk_group", (json_int_t)d->topk_group, "routed_scaling_factor", (double)d->routed_scaling_factor,
                   "routing", epm_routing_method_name(d->routing), "shared_experts", (json_int_t)d->shared_experts,
                   "shared_intermediate", (json_int_t)d->shared_intermediate, "num_layers",
                   (json_int_t)d->num_layers, "layers", layers, "dtypes", dt, "ok", ok, "problems", s.problems));
  if (as_json) {
    json_dumpf(r, stdout, JSON_INDENT(1));
    putchar('\n');
  } else {
    size_t i;
    json_t *v;
    printf("checkpoint %s\n  family %s: H %lld, I %lld, E %lld, top_k %lld, groups %lld/%lld, rsf %g, routing %s, "
           "shared %lld (I %lld)\n  %lld layers, %lld MoE\n",
           dir, epm_model_family_name(epm_model_dir_family(md)), (long long)d->hidden, (long long)d->intermediate,
           (long long)d->num_experts, (long long)d->top_k, (long long)d->n_group, (long long)d->topk_group,
           (double)d->routed_scaling_factor, epm_routing_method_name(d->routing), (long long)d->shared_experts,
           (long long)d->shared_intermediate, (long long)d->num_layers, (long long)json_array_size(layers));
    json_array_foreach(json_object_get(r, "files"), i, v)
      printf("  file %-36s %7lld tensors %10.3f MB\n", json_string_value(json_object_get(v, "name")),
             (long long)json_integer_value(json_object_get(v, "tensors")),
             (double)json_integer_value(json_object_get(v, "bytes")) / 1e6);
    for (int k = 0; k < EPM_ST_DTYPE_COUNT; k++)
      if (s.dtype_count[k])
        printf("  dtype %-8s %8zu tensors %12.3f MB\n", epm_st_dtype_name((epm_st_dtype_t)k), s.dtype_count[k],
               (double)s.dtype_bytes[k] / 1e6);
    json_array_foreach(layers, i, v)
      printf("  layer %lld: %lld experts, %lld bad tensors, input_scale %g, down_input_scale %g, %lld gate/up "
             "weight_scale_2 mismatches\n",
             (long long)json_integer_value(json_object_get(v, "layer")),
             (long long)json_integer_value(json_object_get(v, "experts")),
             (long long)json_integer_value(json_object_get(v, "bad_tensors")),
             json_real_value(json_object_get(v, "input_scale")),
             json_real_value(json_object_get(v, "down_input_scale")),
             (long long)json_integer_value(json_object_get(v, "gate_up_scale_2_mismatches")));
    json_array_foreach(s.problems, i, v) {
      if (i == 50) {
        printf("  ... %zu problems in all\n", json_array_size(s.problems));
        break;
      }
      printf("  problem: %s\n", json_string_value(v));
    }
    printf("%s\n", ok ? "ok" : "FAILED");
  }
  json_decref(r);
  epm_model_dir_close(md);
  return ok ? 0 : 1;
}

static int cmd_load(int argc, char **argv) {
  const char *dir = NULL;
  ckpt_opts_t a;
  memset(&a, 0, sizeof a);
  int rc = parse(ACT_LOAD, argc, argv, &a, &dir);
  if (rc >= 0) return rc;
  long long ep = a.ep, rank = a.rank;
  int cold = a.cold;
  epm_model_dir_t *md;
  if (epm_model_dir_open(dir, &md) != EPM_OK) return fail_st("load");
  if (cold) {
    /* Drop only these files' pages (not the whole system cache). */
    for (size_t i = 0; i < epm_model_dir_file_count(md); i++) {
      char p[4096];
      snprintf(p, sizeof p, "%s/%s", dir, epm_model_dir_file_name(md, i));
      int fd = open(p, O_RDONLY | O_NONBLOCK); /* never wait on a FIFO; the load refuses it */
      if (fd >= 0) {
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
      }
    }
  }
  size_t per;
  if (epm_weights_layer_bytes(epm_model_dir_dims(md), (int)ep, &per) != EPM_OK) {
    epm_model_dir_close(md);
    return fail_st("load");
  }
  epm_load_progress_t prog;
  int64_t n = epm_model_dir_moe_layer_count(md);
  char what[128];
  snprintf(what, sizeof what, "ckpt load: rank %lld of %lld, %lld layers", rank, ep, (long long)n);
  epm_load_progress_begin(&prog, what, per * (size_t)n, EPM_PROGRESS_AUTO);
  uint64_t h = EPM_FNV1A64_INIT;
  for (int64_t i = 0; i < n; i++) {
    epm_layer_t l;
    if (epm_weights_load_layer(md, epm_model_dir_moe_layer(md, i), (int)rank, (int)ep, &l, &prog) != EPM_OK) {
      epm_model_dir_close(md);
      return fail_st("load");
    }
    h = epm_fnv1a64(l.experts.gate_w, 64, h); /* keep the copy observable */
    epm_layer_free(&l);
  }
  epm_load_progress_end(&prog);
  epm_model_dir_close(md);
  return h == 0; /* never 0 in practice; avoids the copy being optimised away */
}

int epm_ctl_ckpt(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    help_all(stdout);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    printf("epmoectl %s\n", EPMOE_VERSION_STRING);
    return 0;
  }
  int (*const run[ACT_COUNT])(int, char **) = {cmd_make, cmd_inspect, cmd_load};
  for (int a = 0; argc >= 2 && a < ACT_COUNT; a++)
    if (strcmp(argv[1], action_names[a]) == 0) return run[a](argc - 1, argv + 1);
  if (argc < 2) fprintf(stderr, "epmoectl ckpt: an action is required: make, inspect or load\n");
  else fprintf(stderr, "epmoectl ckpt: unknown action '%s'; the actions are make, inspect and load\n", argv[1]);
  for (int a = 0; a < ACT_COUNT; a++) {
    ckpt_opts_t o;
    epm_opt_group_t g;
    epm_opt_cmd_t cmd = command((ckpt_action_t)a, &o, &g);
    fprintf(stderr, "%s\n", cmd.synopsis);
  }
  fprintf(stderr, "(epmoectl ckpt --help lists every option)\n");
  return EPM_EXIT_USAGE;
}
