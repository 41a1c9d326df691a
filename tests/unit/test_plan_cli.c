/* SPDX-License-Identifier: Apache-2.0 */
/* test_plan_cli: runs the epmoectl binary (path in argv[1]) and checks
 * `epmoectl plan ... --json` with jansson, plus usage errors -> exit 64 (EX_USAGE).
 * The expected numbers are the "done when" numbers, worked by hand:
 * 32 x 10240 = 327,680 tokens; 327,680 x 7168 / 16 = 146,800,640 scale bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static const char *ctl;

/* Run "ctl args", capture stdout into a malloc'd string, return exit status. */
static int run(const char *args, char **out) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' %s 2>/dev/null", ctl, args);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (cap - len < 2) {
      cap *= 2;
      buf = realloc(buf, cap);
      assert_non_null(buf);
    }
  }
  buf[len] = '\0';
  int st = pclose(f);
  if (out)
    *out = buf;
  else
    free(buf);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_t *find_buffer(json_t *root, const char *name) {
  json_t *bufs = json_object_get(root, "buffers"), *b;
  size_t i;
  json_array_foreach(bufs, i, b) {
    if (strcmp(json_string_value(json_object_get(b, "name")), name) == 0) return b;
  }
  fail_msg("no buffer %s in the JSON", name);
  return NULL;
}

static json_int_t iget(json_t *o, const char *path1, const char *path2) {
  json_t *v = json_object_get(o, path1);
  if (path2) v = json_object_get(v, path2);
  if (!json_is_integer(v)) fail_msg("%s%s%s is not an integer", path1, path2 ? "." : "", path2 ? path2 : "");
  return json_integer_value(v);
}

/* --workspace-mb: the JSON's workspace object against the buffers it sums. */
static void test_workspace_budget(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(run("plan --preset deepseek-r1 --ep 32 --tokens-per-rank 10240 --workspace-mb 4096 --json", &out),
                   0);
  json_error_t err;
  json_t *root = json_loads(out, 0, &err);
  if (!root) fail_msg("bad JSON (%s): %s", err.text, out);
  static const char *const ws[] = {"expanded_to_permuted", "permuted_to_token", "expert_row_offsets",
                                   "gemm1_out", "inter_q", "inter_sf", "gemm2_out"};
  json_int_t sum = 0;
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) sum += iget(find_buffer(root, ws[i]), "bytes", NULL);
  assert_int_equal(iget(root, "workspace", "bytes_unchunked"), sum);
  assert_int_equal(iget(root, "workspace", "budget"), (json_int_t)4096 << 20);
  const json_int_t rows = iget(root, "workspace", "chunk_rows"), chunk = iget(root, "workspace", "bytes_chunk");
  assert_true(rows > 0 && rows < 327680);
  assert_int_equal(iget(root, "workspace", "chunks"), (327680 + rows - 1) / rows);
  assert_true(chunk <= (json_int_t)4096 << 20);
  assert_int_equal(iget(root, "workspace", "total_chunked"), iget(root, "totals", "total") - sum + chunk);
  json_decref(root);
  free(out);
  /* 0 = unbounded: one chunk. */
  assert_int_equal(run("plan --preset deepseek-r1 --ep 32 --tokens-per-rank 10240 --workspace-mb 0 --json", &out), 0);
  root = json_loads(out, 0, &err);
  if (!root) fail_msg("bad JSON (%s): %s", err.text, out);
  assert_int_equal(iget(root, "workspace", "chunks"), 1);
  json_decref(root);
  free(out);
}

static void test_done_when(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(run("plan --preset deepseek-r1 --ep 32 --tokens-per-rank 10240 --json", &out), 0);
  json_error_t err;
  json_t *root = json_loads(out, 0, &err);
  if (!root) fail_msg("bad JSON (%s): %s", err.text, out);
  assert_int_equal(iget(root, "tokens", "gathered"), 327680);
  assert_int_equal(iget(root, "tokens", "local"), 10240);
  assert_int_equal(iget(root, "local_experts", NULL), 8);
  json_t *sf = find_buffer(root, "xsf_gathered");
  assert_int_equal(iget(sf, "bytes", NULL), 146800640);
  assert_int_equal(iget(sf, "rows", NULL), 327680);
  assert_int_equal(iget(sf, "cols", NULL), 448);
  assert_string_equal(json_string_value(json_object_get(sf, "dtype")), "e4m3");
  assert_int_equal(iget(find_buffer(root, "partial_y"), "elements", NULL), INT64_C(2348810240));
  assert_true(json_is_true(json_object_get(find_buffer(root, "partial_y"), "int32_elements")));
  assert_int_equal(iget(root, "violations", NULL), 0);
  assert_int_equal(iget(root, "chunks", NULL), 1);
  json_t *lims = json_object_get(root, "limits"), *l;
  size_t i;
  assert_true(json_array_size(lims) > 0);
  json_array_foreach(lims, i, l) assert_true(json_is_true(json_object_get(l, "ok")));
  assert_true(iget(root, "totals", "total") > iget(root, "totals", "weights"));
  json_decref(root);
  free(out);
}

static void test_per_rank_list_and_overrides(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(run("plan --preset qwen3-235b --ep 4 --tokens-per-rank 1,2,3K,4 --rank 2 "
                       "--tile 64 --hidden 2048 --top-k 4 --json", &out), 0);
  json_t *root = json_loads(out, 0, NULL);
  assert_non_null(root);
  assert_int_equal(iget(root, "tokens", "local"), 3072);
  assert_int_equal(iget(root, "tokens", "gathered"), 3079);
  assert_int_equal(iget(root, "tokens", "max_per_rank"), 3072);
  assert_int_equal(iget(root, "expert_offset", NULL), 64);
  assert_int_equal(iget(root, "tile", NULL), 64);
  assert_int_equal(iget(root, "model", "hidden"), 2048);
  assert_int_equal(iget(root, "model", "top_k"), 4);
  assert_int_equal(iget(find_buffer(root, "x_local"), "bytes", NULL), 3072 * 2048 * 2);
  json_decref(root);
  free(out);
  /* The table form mentions the buffers and the verdict. */
  assert_int_equal(run("plan --preset tiny --ep 2 --tokens-per-rank 5", &out), 0);
  assert_non_null(strstr(out, "xsf_gathered"));
  assert_non_null(strstr(out, "no violation"));
  free(out);
  /* A violation is reported (exit 0) with the chunking that fixes it. */
  assert_int_equal(run("plan --preset deepseek-r1 --ep 1 --tokens-per-rank 1044512", &out), 0);
  assert_non_null(strstr(out, "VIOLATED"));
  assert_non_null(strstr(out, "2 chunks of at most 1044511"));
  free(out);
}

static void test_usage_errors(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(run("plan --help", &out), 0);
  for (const char *flag = "--preset\0--ep\0--tokens-per-rank\0--rank\0--tile\0--hidden\0"
                          "--intermediate\0--experts\0--top-k\0--json\0";
       *flag; flag += strlen(flag) + 1)
    if (!strstr(out, flag)) fail_msg("--help does not explain %s", flag);
  free(out);
  const char *bad[] = {
      "plan --bogus 1 --preset tiny --ep 1 --tokens-per-rank 1",
      "plan --preset tiny --ep 1",                                   /* missing tokens */
      "plan --preset tiny --ep x --tokens-per-rank 1",
      "plan --preset tiny --ep 0 --tokens-per-rank 1",
      "plan --preset tiny --ep 2 --tokens-per-rank -5",
      "plan --preset tiny --ep 4 --tokens-per-rank 1,2",             /* 2 values, EP 4 */
      "plan --preset tiny --ep 2 --tokens-per-rank 1,,2",
      "plan --preset nope --ep 1 --tokens-per-rank 1",
      "plan --preset deepseek-r1 --ep 512 --tokens-per-rank 1",      /* 256 experts < 512 ranks */
      "plan --preset tiny --ep 2 --rank 2 --tokens-per-rank 1",
      "plan --preset tiny --ep 2 --tokens-per-rank 1 --tile 0",
      "plan --preset tiny --ep 2 --tokens-per-rank 1 --hidden 100",
      "plan --preset tiny --ep 2 --tokens-per-rank",
      "plan stray --preset tiny --ep 2 --tokens-per-rank 1",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = run(bad[i], NULL);
    if (rc != 64) fail_msg("'%s' exited %d, want 64", bad[i], rc);
  }
  /* stderr: one line naming the option, then the synopsis. */
  char cmd[512], line[512];
  snprintf(cmd, sizeof cmd, "'%s' plan --bogus 2>&1 >/dev/null", ctl);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  int lines = 0;
  while (fgets(line, sizeof line, f)) {
    if (lines == 0) assert_string_equal(line, "epmoectl plan: unknown option '--bogus'\n");
    if (lines == 1) assert_non_null(strstr(line, "usage: epmoectl plan --preset NAME"));
    lines++;
  }
  pclose(f);
  assert_int_equal(lines, 3);
  /* Sizes beyond int64 are a failure (1), not a usage error. */
  assert_int_equal(run("plan --preset tiny --ep 1 --tokens-per-rank 16 --hidden 1152921504606846976", NULL), 1);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_plan_cli PATH_TO_EPMOECTL\n");
    return 2;
  }
  ctl = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_done_when),
      cmocka_unit_test(test_workspace_budget),
      cmocka_unit_test(test_per_rank_list_and_overrides),
      cmocka_unit_test(test_usage_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
