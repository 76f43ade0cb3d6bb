/*
 * wire.c: the manager's codec and hash map.
 *
 * The codec writes and reads little-endian fields with explicit shifts, so that a manager and
 * its clients on hosts of different byte order agree. The reader never reads past its end: a
 * short or malformed request turns into `bad`, which the server answers with -EPROTO.
 *
 * The map is the server's only index (objects by id, clients by id, references, dictionary and
 * namespace keys). Dictionary keys come from clients, so the hash is keyed (SipHash-1-3 with a
 * random key per map): a client cannot make every key land in one slot.
 */
#include "manager/manager.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "platform/platform.h"

/* ---- Writing -------------------------------------------------------------------------------- */

bool tdm__wb_reserve(struct tdm__wbuf *w, size_t n) {
  if (w->failed) return false;
  if (n <= w->cap - w->len) return true;
  if (n > SIZE_MAX / 2 - w->len) {
    w->failed = true;
    return false;
  }
  size_t cap = w->cap != 0 ? w->cap : 256;
  while (cap - w->len < n)
    cap *= 2;
  uint8_t *p = tdm__realloc(w->p, cap);
  if (p == NULL) {
    w->failed = true;
    return false;
  }
  w->p = p;
  w->cap = cap;
  return true;
}

void tdm__wb_bytes(struct tdm__wbuf *w, const void *p, size_t n) {
  if (n == 0 || !tdm__wb_reserve(w, n)) return;
  memcpy(w->p + w->len, p, n);
  w->len += n;
}

void tdm__wb_u32(struct tdm__wbuf *w, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  tdm__wb_bytes(w, b, sizeof b);
}

void tdm__wb_u64(struct tdm__wbuf *w, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  tdm__wb_bytes(w, b, sizeof b);
}

void tdm__wb_str(struct tdm__wbuf *w, const void *p, size_t n) {
  tdm__wb_u64(w, n);
  tdm__wb_bytes(w, p, n);
}

void tdm__wb_free(struct tdm__wbuf *w) {
  tdm__free(w->p);
  *w = (struct tdm__wbuf){ 0 };
}

/* ---- Reading -------------------------------------------------------------------------------- */

static const uint8_t *take(struct tdm__rbuf *r, size_t n) {
  if (r->bad || n > r->left) {
    r->bad = true;
    r->left = 0;
    return NULL;
  }
  const uint8_t *p = r->p;
  r->p += n;
  r->left -= n;
  return p;
}

uint32_t tdm__rb_u32(struct tdm__rbuf *r) {
  const uint8_t *p = take(r, 4);
  uint32_t v = 0;
  if (p != NULL)
    for (int i = 3; i >= 0; i--)
      v = v << 8 | p[i];
  return v;
}

uint64_t tdm__rb_u64(struct tdm__rbuf *r) {
  const uint8_t *p = take(r, 8);
  uint64_t v = 0;
  if (p != NULL)
    for (int i = 7; i >= 0; i--)
      v = v << 8 | p[i];
  return v;
}

const uint8_t *tdm__rb_str(struct tdm__rbuf *r, size_t *len) {
  uint64_t n = tdm__rb_u64(r);
  const uint8_t *p = n <= r->left ? take(r, (size_t)n) : take(r, SIZE_MAX);
  *len = p != NULL ? (size_t)n : 0;
  return p != NULL ? p : NULL;
}

bool tdm__mreq_decode(struct tdm__rbuf *r, struct tdm__mreq *q) {
  q->op = tdm__rb_u32(r);
  q->type = tdm__rb_u32(r);
  q->instance = tdm__rb_u64(r);
  q->object = tdm__rb_u64(r);
  q->thread = tdm__rb_u64(r);
  q->timeout = (int64_t)tdm__rb_u64(r);
  return !r->bad;
}

void tdm__mreq_encode(struct tdm__wbuf *w, const struct tdm__mreq *q) {
  tdm__wb_u32(w, q->op);
  tdm__wb_u32(w, q->type);
  tdm__wb_u64(w, q->instance);
  tdm__wb_u64(w, q->object);
  tdm__wb_u64(w, q->thread);
  tdm__wb_u64(w, (uint64_t)q->timeout);
}

/* ---- The map ---------------------------------------------------------------------------------
 */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(v0, v1, v2, v3) \
  do {                           \
    v0 += v1;                    \
    v1 = ROTL(v1, 13);           \
    v1 ^= v0;                    \
    v0 = ROTL(v0, 32);           \
    v2 += v3;                    \
    v3 = ROTL(v3, 16);           \
    v3 ^= v2;                    \
    v0 += v3;                    \
    v3 = ROTL(v3, 21);           \
    v3 ^= v0;                    \
    v2 += v1;                    \
    v1 = ROTL(v1, 17);           \
    v1 ^= v2;                    \
    v2 = ROTL(v2, 32);           \
  } while (0)

/* SipHash-1-3 (one compression round, three finalisation rounds). */
static uint64_t siphash(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n) {
  uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
  uint64_t b = (uint64_t)n << 56;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t m = 0;
    for (int j = 7; j >= 0; j--)
      m = m << 8 | p[i + (size_t)j];
    v3 ^= m;
    SIPROUND(v0, v1, v2, v3);
    v0 ^= m;
  }
  for (size_t j = 0; i + j < n; j++)
    b |= (uint64_t)p[i + j] << (8 * j);
  v3 ^= b;
  SIPROUND(v0, v1, v2, v3);
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND(v0, v1, v2, v3);
  SIPROUND(v0, v1, v2, v3);
  SIPROUND(v0, v1, v2, v3);
  return v0 ^ v1 ^ v2 ^ v3;
}

void tdm__map_init(struct tdm__map *m) {
  *m = (struct tdm__map){ 0 };
  uint64_t k[2] = { 0x9e3779b97f4a7c15ull, (uint64_t)(uintptr_t)m };
  /* Without the kernel's randomness the map still works; only its resistance to chosen keys
   * is weaker. */
  (void)tdm__random(k, sizeof k);
  m->k0 = k[0];
  m->k1 = k[1];
}

void tdm__map_fini(struct tdm__map *m) {
  tdm__free(m->e);
  m->e = NULL;
  m->cap = m->n = 0;
}

static struct tdm__ment *find(const struct tdm__map *m, uint64_t h, const void *key, size_t klen) {
  if (m->cap == 0) return NULL;
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    struct tdm__ment *e = &m->e[i];
    if (e->key == NULL) return NULL;
    if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0) return e;
  }
}

void *tdm__map_get(const struct tdm__map *m, const void *key, size_t klen) {
  if (m->n == 0) return NULL;
  struct tdm__ment *e = find(m, siphash(m->k0, m->k1, key, klen), key, klen);
  return e != NULL ? e->val : NULL;
}

static void place(struct tdm__ment *tab, size_t cap, struct tdm__ment e) {
  size_t i = e.hash & (cap - 1);
  while (tab[i].key != NULL)
    i = (i + 1) & (cap - 1);
  tab[i] = e;
}

static int grow(struct tdm__map *m) {
  size_t cap = m->cap != 0 ? m->cap * 2 : 16;
  struct tdm__ment *tab = tdm__calloc(cap, sizeof *tab);
  if (tab == NULL) return -ENOMEM;
  for (size_t i = 0; i < m->cap; i++)
    if (m->e[i].key != NULL) place(tab, cap, m->e[i]);
  tdm__free(m->e);
  m->e = tab;
  m->cap = cap;
  return 0;
}

int tdm__map_put(struct tdm__map *m, const void *key, size_t klen, void *val, void **old) {
  uint64_t h = siphash(m->k0, m->k1, key, klen);
  struct tdm__ment *e = find(m, h, key, klen);
  if (e != NULL) {
    if (old != NULL) *old = e->val;
    e->key = key;
    e->val = val;
    return 0;
  }
  /* At most 3/4 full: probes stay short. */
  if ((m->n + 1) * 4 > m->cap * 3 && grow(m) < 0) return -ENOMEM;
  place(m->e, m->cap, (struct tdm__ment){ h, key, klen, val });
  m->n++;
  if (old != NULL) *old = NULL;
  return 0;
}

void *tdm__map_del(struct tdm__map *m, const void *key, size_t klen) {
  if (m->n == 0) return NULL;
  struct tdm__ment *e = find(m, siphash(m->k0, m->k1, key, klen), key, klen);
  if (e == NULL) return NULL;
  void *val = e->val;
  /* Backward shift: move later entries of the run into the hole when their home slot allows,
   * so that lookups never need tombstones. */
  size_t mask = m->cap - 1, hole = (size_t)(e - m->e);
  for (size_t i = (hole + 1) & mask; m->e[i].key != NULL; i = (i + 1) & mask) {
    size_t home = m->e[i].hash & mask;
    /* The entry may move into the hole when its home is not in (hole, i], cyclically. */
    bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
    if (stays) continue;
    m->e[hole] = m->e[i];
    hole = i;
  }
  m->e[hole] = (struct tdm__ment){ 0 };
  m->n--;
  return val;
}
