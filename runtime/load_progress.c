/* SPDX-License-Identifier: Apache-2.0 */
/* load_progress.c — progress of long checkpoint loads and writes (see
 * epmoe/weights.h). A load of hundreds of GB takes minutes; an operator
 * reading the journal or a Kubernetes log (not a terminal) must see it move,
 * without a line per tensor: lines come at each further 10 % or after
 * interval_s of silence. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/clock.h"
#include "epmoe/log.h"
#include "epmoe/weights.h"

void epm_load_progress_begin(epm_load_progress_t *p, const char *what, size_t total_bytes, int mode) {
  memset(p, 0, sizeof *p);
  snprintf(p->what, sizeof p->what, "%s", what ? what : "load");
  p->total = total_bytes;
  p->t0 = p->last_print = epm_clock_s();
  p->interval_s = 5.0;
  p->quiet = mode == EPM_PROGRESS_QUIET;
  p->live = mode == EPM_PROGRESS_AUTO && isatty(STDERR_FILENO);
}

/* "3.40 GB", "12.5 MB", "800 kB": a tiny test checkpoint and a 600 GB one
 * both read sensibly. */
static const char *size_text(double bytes, char *buf, size_t n) {
  if (bytes >= 1e9) snprintf(buf, n, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6) snprintf(buf, n, "%.1f MB", bytes / 1e6);
  else snprintf(buf, n, "%.0f kB", bytes / 1e3);
  return buf;
}

static double rate_mbs(const epm_load_progress_t *p, double t) {
  double el = t - p->t0;
  return el > 0 ? (double)p->done / 1e6 / el : 0.0;
}

void epm_load_progress_add(epm_load_progress_t *p, size_t bytes) {
  p->done += bytes;
  if (p->quiet || p->total == 0) return;
  double t = epm_clock_s(), mbs;
  double left = p->done < p->total ? (double)(p->total - p->done) : 0.0;
  if (p->live) {
    if (t - p->last_print < 0.25 && p->done < p->total) return;
    p->last_print = t;
    mbs = rate_mbs(p, t);
    fprintf(stderr, "\r  %.2f / %.2f GB  %.0f MB/s  ETA %.0f s   ", (double)p->done / 1e9, (double)p->total / 1e9, mbs,
            mbs > 0 ? left / 1e6 / mbs : 0.0);
    fflush(stderr);
    return;
  }
  if (p->done >= p->total) return; /* the summary says the rest */
  /* done / total in tenths, without overflowing done * 10 */
  int decile = (int)((double)p->done / (double)p->total * 10.0);
  if (decile <= p->last_decile && t - p->last_print < p->interval_s) return;
  p->last_decile = decile > p->last_decile ? decile : p->last_decile;
  p->last_print = t;
  mbs = rate_mbs(p, t);
  char a[32], b[32];
  EPM_LOG(EPM_LOG_INFO, "weights", "%s: %s of %s (%d%%), %.0f MB/s, ETA %.0f s", p->what,
          size_text((double)p->done, a, sizeof a), size_text((double)p->total, b, sizeof b),
          (int)((double)p->done * 100.0 / (double)p->total), mbs, mbs > 0 ? left / 1e6 / mbs : 0.0);
}

double epm_load_progress_end(epm_load_progress_t *p) {
  double el = epm_clock_s() - p->t0;
  if (p->live) fputc('\n', stderr);
  char a[32];
  if (!p->quiet)
    EPM_LOG(EPM_LOG_INFO, "weights", "%s: done, %s in %.2f s, %.0f MB/s", p->what, size_text((double)p->done, a, sizeof a),
            el, el > 0 ? (double)p->done / 1e6 / el : 0.0);
  return el;
}
