/* SPDX-License-Identifier: Apache-2.0 */
/* epmoectl stats — each selected daemon's counters: INFO text (default),
 * --json ({"ranks":[{"rank":R,...}]}, ctl_common.h), or --prometheus (text
 * exposition 0.0.4, every series labelled with its rank, the families of
 * several ranks merged into one scrape). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_common.h"

/* Prometheus text allows one HELP/TYPE per family and wants a family's
 * samples together, so the outputs of several ranks are merged family by
 * family (families in the order rank 0 lists them) instead of concatenated. */
typedef struct {
  char name[128];
  int have_help, have_type;
  epm_buf_t head, samples;
} family_t;

static void merge_prom(char **texts, int n) {
  family_t *fam = NULL;
  int nf = 0, cap = 0;
  for (int r = 0; r < n; r++) {
    if (!texts[r]) continue;
    for (char *line = texts[r], *nx; line && *line; line = nx) {
      nx = strchr(line, '\n');
      size_t len = nx ? (size_t)(nx - line) + 1 : strlen(line);
      if (nx) nx++;
      char name[128] = "";
      if (!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7)) sscanf(line + 7, "%127s", name);
      else if (line[0] != '#') sscanf(line, "%127[a-zA-Z0-9_:]", name);
      if (!name[0]) continue;
      /* a sample's family: the name, or the histogram's base without _bucket/_sum/_count */
      int f = -1;
      for (int i = 0; i < nf && f < 0; i++) {
        size_t k = strlen(fam[i].name);
        if (!strncmp(name, fam[i].name, k) &&
            (!name[k] || !strcmp(name + k, "_bucket") || !strcmp(name + k, "_sum") || !strcmp(name + k, "_count")))
          f = i;
      }
      if (f < 0) {
        if (nf == cap) {
          cap = cap ? 2 * cap : 64;
          family_t *nfam = realloc(fam, sizeof *fam * (size_t)cap);
          if (!nfam) break;
          fam = nfam;
        }
        f = nf++;
        memset(&fam[f], 0, sizeof fam[f]);
        snprintf(fam[f].name, sizeof fam[f].name, "%s", name);
      }
      if (line[0] == '#') { /* HELP/TYPE once per family, from the first rank that has it */
        int *have = line[2] == 'H' ? &fam[f].have_help : &fam[f].have_type;
        if (!*have) epm_buf_put(&fam[f].head, line, len);
        *have = 1;
      } else {
        epm_buf_put(&fam[f].samples, line, len);
      }
    }
  }
  for (int i = 0; i < nf; i++) {
    fwrite(fam[i].head.data, 1, fam[i].head.len, stdout);
    fwrite(fam[i].samples.data, 1, fam[i].samples.len, stdout);
    epm_buf_free(&fam[i].head);
    epm_buf_free(&fam[i].samples);
  }
  free(fam);
}

/* The format, a single epm_text_format_t (the group's base). */
static const epm_opt_t stats_opts[] = {
    {.name = "json", .kind = EPM_OPT_SET, .off = 0, .size = sizeof(epm_text_format_t), .value = EPM_FMT_JSON,
     .help = "{\"ranks\":[{\"rank\":R,...}]}, one entry per selected rank"},
    {.name = "prometheus", .kind = EPM_OPT_SET, .off = 0, .size = sizeof(epm_text_format_t),
     .value = EPM_FMT_PROMETHEUS, .help = "Prometheus text exposition, every series labelled with its rank"},
};

int epm_ctl_stats(int argc, char **argv) {
  ctl_target_opts_t o;
  ctl_sock_t *socks;
  epm_text_format_t fmt = EPM_FMT_TEXT;
  epm_opt_result_t res;
  int rc = 0, n;
  ctl_target_defaults(&o, 5000);
  epm_opt_group_t g[] = {{NULL, stats_opts, 2, &fmt, NULL}, ctl_target_group(&o)};
  epm_opt_cmd_t cmd = {.prog = "epmoectl stats",
                       .synopsis = "usage: epmoectl stats [--prometheus | --json] [--rank R | --all] [--socket-dir DIR]",
                       .about = "Each selected daemon's counters (INFO text by default).",
                       .epilog = "Exit: 0 ok, 1 a daemon could not be asked, 64 usage error.",
                       .groups = g,
                       .ngroups = 2};
  if ((rc = epm_ctl_args(&cmd, argc, argv, &res)) >= 0) return rc;
  rc = 0;
  if ((n = ctl_find_sockets(&o, &socks)) < 0) return 1;
  if (fmt == EPM_FMT_PROMETHEUS && n > 1) {
    char **texts = calloc((size_t)n, sizeof *texts);
    for (int i = 0; texts && i < n; i++) {
      epm_client_t *c = NULL;
      if (ctl_connect(&o, socks[i].path, &c) != EPM_OK ||
          epm_client_stats(c, fmt, &texts[i]) != EPM_OK) {
        fprintf(stderr, "epmoectl stats: rank %d: %s\n", socks[i].rank, epm_last_error());
        rc = 1;
      }
      epm_client_close(c);
    }
    if (texts) merge_prom(texts, n);
    for (int i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    free(socks);
    return rc;
  }
  ctl_json_t *doc = fmt == EPM_FMT_JSON ? ctl_json_ranks() : NULL;
  for (int i = 0; i < n; i++) {
    epm_client_t *c = NULL;
    char *text = NULL;
    if (ctl_connect(&o, socks[i].path, &c) != EPM_OK || epm_client_stats(c, fmt, &text) != EPM_OK) {
      fprintf(stderr, "epmoectl stats: rank %d: %s\n", socks[i].rank, epm_last_error());
      rc = 1;
      if (doc) ctl_json_rank(doc, socks[i].rank, NULL, epm_last_error());
    } else if (doc) {
      json_error_t je;
      json_t *obj = json_loads(text, 0, &je);
      if (!obj) rc = 1;
      ctl_json_rank(doc, socks[i].rank, obj, obj ? NULL : "the daemon's STATS is not JSON");
    } else {
      for (char *p = text; *p; p++)
        if (*p != '\r') putchar(*p);
      if (fmt == EPM_FMT_TEXT && i + 1 < n) putchar('\n');
    }
    free(text);
    epm_client_close(c);
  }
  if (doc) ctl_json_print(doc);
  free(socks);
  return rc;
}
