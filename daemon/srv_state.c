/* SPDX-License-Identifier: Apache-2.0 */
/* srv_state.c — the daemon's state machine and model info (srv.h), shared by
 * the loop thread, the worker and the renderers under state_mu. */
#include <stdarg.h>
#include <stdio.h>

#include "srv.h"

void srv_set_state(srv_t *s, srv_state_t st, const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&s->state_mu);
  /* failed is final; draining only moves to failed */
  if (!(s->state == SRV_ST_FAILED || (s->state == SRV_ST_DRAINING && st != SRV_ST_FAILED))) {
    s->state = st;
    va_start(ap, fmt);
    vsnprintf(s->state_reason, sizeof s->state_reason, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&s->state_mu);
}

srv_state_t srv_get_state(srv_t *s, char *reason, size_t n) {
  srv_state_t st;
  pthread_mutex_lock(&s->state_mu);
  st = s->state;
  if (reason && n) snprintf(reason, n, "%s", s->state_reason);
  pthread_mutex_unlock(&s->state_mu);
  return st;
}

void srv_set_info(srv_t *s, const srv_model_info_t *info) {
  pthread_mutex_lock(&s->state_mu);
  s->info = *info;
  s->info_ready = 1;
  pthread_mutex_unlock(&s->state_mu);
}

int srv_get_info(srv_t *s, srv_model_info_t *out) {
  int ok;
  pthread_mutex_lock(&s->state_mu);
  ok = s->info_ready;
  if (ok) *out = s->info;
  pthread_mutex_unlock(&s->state_mu);
  return ok;
}
