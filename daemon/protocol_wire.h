/* SPDX-License-Identifier: Apache-2.0 */
/* protocol_wire.h — private little-endian helpers and a bounded reader for
 * the protocol codec (protocol.c, protocol_msg.c). Not installed. */
#ifndef EPMOE_PROTOCOL_WIRE_H
#define EPMOE_PROTOCOL_WIRE_H

#include <stdint.h>
#include <string.h>

#include "epmoe/checked.h"
#include "epmoe/protocol.h"

static inline uint16_t epm__rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t epm__rd32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t epm__rd64(const uint8_t *p) {
  return (uint64_t)epm__rd32(p) | ((uint64_t)epm__rd32(p + 4) << 32);
}
static inline void epm__wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static inline void epm__wr32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void epm__wr64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Bounded reader: every get checks the remaining length first; after the
 * first failure `bad` stays set and further gets return zeros. */
typedef struct {
  const uint8_t *p;
  size_t len, pos;
  int bad;
} epm__rd_t;

static inline const uint8_t *epm__rd_take(epm__rd_t *r, size_t n) {
  const uint8_t *q;
  if (r->bad || r->len - r->pos < n) {
    r->bad = 1;
    return NULL;
  }
  q = r->p + r->pos;
  r->pos += n;
  return q;
}
static inline uint16_t epm__get16(epm__rd_t *r) {
  const uint8_t *q = epm__rd_take(r, 2);
  return q ? epm__rd16(q) : 0;
}
static inline uint32_t epm__get32(epm__rd_t *r) {
  const uint8_t *q = epm__rd_take(r, 4);
  return q ? epm__rd32(q) : 0;
}
static inline uint64_t epm__get64(epm__rd_t *r) {
  const uint8_t *q = epm__rd_take(r, 8);
  return q ? epm__rd64(q) : 0;
}

/* Writer helpers append to an epm_buf_t whose space was reserved up front. */
static inline void epm__put16(epm_buf_t *b, uint16_t v) {
  epm__wr16(b->data + b->len, v);
  b->len += 2;
}
static inline void epm__put32(epm_buf_t *b, uint32_t v) {
  epm__wr32(b->data + b->len, v);
  b->len += 4;
}
static inline void epm__put64(epm_buf_t *b, uint64_t v) {
  epm__wr64(b->data + b->len, v);
  b->len += 8;
}

#endif
