/*
 * server.c: the manager's server: objects, clients, references, and the poll loop.
 *
 * One thread serves everyone. Every connection's socket is non-blocking, and the server frames
 * messages itself (the format of tandem/conn.h) with an input buffer and an output buffer per
 * connection, so a client that stalls in the middle of a message, or does not read its
 * replies, costs the others nothing. The authentication handshake is the conn module's state
 * machine driven by the same loop, with a deadline: a client that connects and says nothing is
 * dropped when its handshake time runs out.
 *
 * A request that must wait (a lock held, an empty queue, a barrier not full) is parked: the
 * connection is put on the object's wait list with its deadline, and answered when the object
 * changes or the deadline passes. A client sends one request at a time on a connection (the
 * client library opens one connection per thread that is inside a call), so each connection
 * has at most one parked request, and its state lives in the connection itself.
 *
 * Clients and references. A connection says which client it belongs to in its first request
 * (HELLO, with a random 64-bit id the client chose): all connections of one process are one
 * client. The client holds counted references to objects; when its last connection closes
 * (the process closed the manager, exited or was killed), the server drops them all, gives
 * every lock it held to the next acquirer with -EOWNERDEAD, and frees the objects no one else
 * refers to. A condition holds a reference to its lock.
 */
#include "manager/manager.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "conn/conn.h"
#include "platform/platform.h"

/* ---- State -------------------------------------------------------------------------------- */

struct item {
  size_t len;
  uint8_t data[];
};

struct kv { /* a dictionary or namespace entry: the key's bytes, then the value's */
  size_t klen, vlen;
  uint8_t data[];
};

struct client {
  uint64_t id;
  size_t nconns;
  struct tdm__map refs; /* object id -> struct ref */
};

struct ref {
  uint64_t id, count;
};

enum wait_kind { W_NONE, W_LOCK, W_COND, W_QGET, W_QPUT, W_QJOIN, W_SEM, W_EVENT, W_BARRIER };

struct waitlist {
  struct tdm__mconn *head, *tail;
};

enum conn_state { C_AUTH, C_READY, C_CLOSING, C_DEAD };

struct tdm__mconn {
  int fd; /* -1 for a fake connection */
  enum conn_state state;
  struct tdm__auth auth;
  int64_t auth_deadline;
  uint8_t *in; /* received bytes not yet handled */
  size_t in_len, in_cap;
  struct tdm__wbuf out; /* frames to send; out_off of them were sent */
  size_t out_off;
  struct client *client;
  /* The parked request: what it waits for, on which object's list, until when. */
  enum wait_kind wait;
  struct obj *wobj;
  struct waitlist *wlist;
  struct tdm__mconn *wprev, *wnext;
  int64_t deadline;
  uint64_t thread;
  int wresult;        /* a condition waiter: what to answer once it has the lock back */
  unsigned wcount;    /* an rlock level to restore; a barrier arrival index */
  struct item *witem; /* a put waiting for room */
};

struct obj {
  uint64_t id;
  uint32_t type;
  uint64_t refs;
  struct waitlist w; /* lock acquirers, queue getters, semaphore, event, cond, barrier waiters */
  union {
    struct tdm__map map; /* dictionary, namespace: key -> struct kv */
    struct {
      struct item **v;
      size_t n, cap;
    } list;
    struct {
      struct item **v;
      size_t head, n, cap, maxsize;
      bool joinable;
      uint64_t unfinished;
      struct waitlist putters, joiners;
    } queue;
    struct {
      bool held, owner_died;
      struct client *owner;
      uint64_t thread;
      unsigned count;
    } lock;
    struct {
      unsigned value, initial;
      bool bounded;
    } sem;
    bool event;
    struct obj *cond_lock;
    struct {
      unsigned parties, count;
      bool broken;
    } barrier;
    int64_t i;
    double d;
    struct {
      const tdm_manager_type *t;
      void *state;
    } custom;
  } u;
};

struct tdm__msrv {
  uint64_t instance, next_id;
  size_t max_message;
  struct tdm__map objects; /* id -> struct obj */
  struct tdm__map clients; /* id -> struct client */
  const tdm_manager_type *types[TDM_MANAGER_MAX_TYPES];
  size_t n_types;
  struct tdm__mconn **conns;
  size_t n_conns, cap_conns;
  struct tdm__wbuf scratch; /* the reply being built */
  int64_t accept_pause;     /* out of descriptors: no accepting until then */
  bool stopping;
};

/* A handler's status: the request was parked (or answered already), no reply to send now.
 * Outside every status a request can have (results are >= 0, errors > -2^31). */
#define WAIT_REPLY INT_MIN

/* ---- Replies -------------------------------------------------------------------------------- */

/* Queues a frame of `len` + `more_len` bytes for `c`. When memory runs out the connection
 * cannot be answered any more: its output is marked failed, and the loop closes it (its client
 * sees TDM_EMANAGER) once no object is being walked. */
static void send_frame(struct tdm__msrv *s, struct tdm__mconn *c, const void *body, size_t len,
                       const void *more, size_t more_len) {
  (void)s;
  if (c->state == C_DEAD) return;
  uint8_t hdr[TDM__FRAME_HEADER];
  tdm__frame_encode(hdr, len + more_len, 0);
  tdm__wb_bytes(&c->out, hdr, sizeof hdr);
  tdm__wb_bytes(&c->out, body, len);
  tdm__wb_bytes(&c->out, more, more_len);
}

static void reply(struct tdm__msrv *s, struct tdm__mconn *c, int status, const void *res,
                  size_t len) {
  if (4 + len > s->max_message) {
    status = -EMSGSIZE;
    len = 0;
  }
  uint8_t st[4];
  for (int i = 0; i < 4; i++)
    st[i] = (uint8_t)((uint32_t)status >> (8 * i));
  send_frame(s, c, st, sizeof st, res, len);
}

static void reply_status(struct tdm__msrv *s, struct tdm__mconn *c, int status) {
  reply(s, c, status, NULL, 0);
}

/* A reply of one byte string (an item or a value). */
static void reply_str(struct tdm__msrv *s, struct tdm__mconn *c, const void *p, size_t n) {
  uint8_t len[8];
  for (int i = 0; i < 8; i++)
    len[i] = (uint8_t)((uint64_t)n >> (8 * i));
  if (4 + 8 + n > s->max_message) {
    reply_status(s, c, -EMSGSIZE);
    return;
  }
  uint8_t st[4 + 8] = { 0 };
  memcpy(st + 4, len, 8);
  send_frame(s, c, st, sizeof st, p, n);
}

static void conn_kill(struct tdm__msrv *s, struct tdm__mconn *c);

/* ---- Wait lists ----------------------------------------------------------------------------- */

static void wl_push(struct waitlist *l, struct tdm__mconn *c) {
  c->wlist = l;
  c->wnext = NULL;
  c->wprev = l->tail;
  if (l->tail != NULL)
    l->tail->wnext = c;
  else
    l->head = c;
  l->tail = c;
}

static void wl_remove(struct tdm__mconn *c) {
  struct waitlist *l = c->wlist;
  if (l == NULL) return;
  if (c->wprev != NULL)
    c->wprev->wnext = c->wnext;
  else
    l->head = c->wnext;
  if (c->wnext != NULL)
    c->wnext->wprev = c->wprev;
  else
    l->tail = c->wprev;
  c->wlist = NULL;
  c->wprev = c->wnext = NULL;
}

static void park(struct tdm__mconn *c, enum wait_kind k, struct obj *o, struct waitlist *l,
                 int64_t timeout, uint64_t thread) {
  c->wait = k;
  c->wobj = o;
  c->deadline = tdm__deadline(timeout);
  c->thread = thread;
  wl_push(l, c);
}

/* Ends the parked request of `c` (without answering it). */
static void unpark(struct tdm__mconn *c) {
  wl_remove(c);
  c->wait = W_NONE;
  c->wobj = NULL;
  tdm__free(c->witem);
  c->witem = NULL;
}

/* Answers every request parked on `l` with `status`. */
static void fail_all(struct tdm__msrv *s, struct waitlist *l, int status) {
  while (l->head != NULL) {
    struct tdm__mconn *c = l->head;
    unpark(c);
    reply_status(s, c, status);
  }
}

/* ---- Objects --------------------------------------------------------------------------------- */

static struct obj *obj_get(struct tdm__msrv *s, uint64_t id) {
  return tdm__map_get(&s->objects, &id, sizeof id);
}

static void obj_decref(struct tdm__msrv *s, struct obj *o, uint64_t n);

static void obj_free(struct tdm__msrv *s, struct obj *o) {
  /* Whoever still waits on an object nobody refers to learns that it is gone. */
  fail_all(s, &o->w, -ESTALE);
  switch (o->type) {
  case TDM_MDICT:
  case TDM_MNAMESPACE:
    for (size_t i = 0; i < o->u.map.cap; i++)
      if (o->u.map.e[i].key != NULL) tdm__free(o->u.map.e[i].val);
    tdm__map_fini(&o->u.map);
    break;
  case TDM_MLIST:
    for (size_t i = 0; i < o->u.list.n; i++)
      tdm__free(o->u.list.v[i]);
    tdm__free(o->u.list.v);
    break;
  case TDM_MQUEUE:
    fail_all(s, &o->u.queue.putters, -ESTALE);
    fail_all(s, &o->u.queue.joiners, -ESTALE);
    for (size_t i = 0; i < o->u.queue.n; i++)
      tdm__free(o->u.queue.v[(o->u.queue.head + i) % o->u.queue.cap]);
    tdm__free(o->u.queue.v);
    break;
  case TDM_MCONDITION:
    obj_decref(s, o->u.cond_lock, 1);
    break;
  case TDM_MCUSTOM:
    if (o->u.custom.t->destroy != NULL) o->u.custom.t->destroy(o->u.custom.state);
    break;
  default:
    break;
  }
  tdm__map_del(&s->objects, &o->id, sizeof o->id);
  tdm__free(o);
}

static void obj_decref(struct tdm__msrv *s, struct obj *o, uint64_t n) {
  o->refs -= n < o->refs ? n : o->refs;
  if (o->refs == 0) obj_free(s, o);
}

/* Adds n references of client `cl` to `o`. Returns 0 or -ENOMEM. */
static int ref_add(struct client *cl, struct obj *o, uint64_t n) {
  struct ref *r = tdm__map_get(&cl->refs, &o->id, sizeof o->id);
  if (r == NULL) {
    r = tdm__alloc(sizeof *r);
    if (r == NULL) return -ENOMEM;
    *r = (struct ref){ o->id, 0 };
    if (tdm__map_put(&cl->refs, &r->id, sizeof r->id, r, NULL) < 0) {
      tdm__free(r);
      return -ENOMEM;
    }
  }
  r->count += n;
  o->refs += n;
  return 0;
}

/* Drops one reference of `cl` to `o`; -ESTALE when the client held none. */
static int ref_drop(struct tdm__msrv *s, struct client *cl, struct obj *o) {
  struct ref *r = tdm__map_get(&cl->refs, &o->id, sizeof o->id);
  if (r == NULL) return -ESTALE;
  if (--r->count == 0) tdm__free(tdm__map_del(&cl->refs, &r->id, sizeof r->id));
  obj_decref(s, o, 1);
  return 0;
}

/* ---- Locks ------------------------------------------------------------------------------------
 */

static struct obj *lock_of(struct obj *o) {
  return o->type == TDM_MCONDITION ? o->u.cond_lock : o;
}

static bool lock_holds(const struct obj *lk, const struct client *cl, uint64_t thread) {
  return lk->u.lock.held && lk->u.lock.owner == cl &&
         (lk->type == TDM_MLOCK || lk->u.lock.thread == thread);
}

/* Gives a free lock to its first waiter, if any. */
static void lock_handoff(struct tdm__msrv *s, struct obj *lk) {
  struct tdm__mconn *c = lk->w.head;
  if (lk->u.lock.held || c == NULL) return;
  int status = c->wait == W_LOCK && c->wresult != 0 ? c->wresult : 0;
  if (lk->u.lock.owner_died) status = -EOWNERDEAD;
  lk->u.lock =
      (__typeof__(lk->u.lock)){ true, false, c->client, c->thread, c->wcount != 0 ? c->wcount : 1 };
  unpark(c);
  reply_status(s, c, status);
}

static int lock_acquire(struct tdm__mconn *c, struct obj *o, const struct tdm__mreq *q) {
  struct obj *lk = lock_of(o);
  if (!lk->u.lock.held) {
    int status = lk->u.lock.owner_died ? -EOWNERDEAD : 0;
    lk->u.lock = (__typeof__(lk->u.lock)){ true, false, c->client, q->thread, 1 };
    return status;
  }
  if (lk->type == TDM_MRLOCK && lock_holds(lk, c->client, q->thread)) {
    if (lk->u.lock.count == UINT32_MAX) return -EAGAIN;
    lk->u.lock.count++;
    return 0;
  }
  if (q->timeout == 0) return -ETIMEDOUT;
  c->wresult = 0;
  c->wcount = 0;
  park(c, W_LOCK, lk, &lk->w, q->timeout, q->thread);
  return WAIT_REPLY;
}

static int lock_release(struct tdm__msrv *s, struct tdm__mconn *c, struct obj *o,
                        const struct tdm__mreq *q) {
  struct obj *lk = lock_of(o);
  if (!lk->u.lock.held) return -EPERM;
  if (lk->type == TDM_MRLOCK) {
    if (!lock_holds(lk, c->client, q->thread)) return -EPERM;
    if (--lk->u.lock.count > 0) return 0;
  }
  lk->u.lock.held = false;
  lk->u.lock.owner = NULL;
  lock_handoff(s, lk);
  return 0;
}

/* The client is gone: every lock it held goes to the next acquirer, who is told. */
static void locks_orphan(struct tdm__msrv *s, struct client *cl) {
  for (size_t i = 0; i < s->objects.cap; i++) {
    struct obj *o = s->objects.e[i].key != NULL ? s->objects.e[i].val : NULL;
    if (o == NULL || (o->type != TDM_MLOCK && o->type != TDM_MRLOCK)) continue;
    if (!o->u.lock.held || o->u.lock.owner != cl) continue;
    o->u.lock.held = false;
    o->u.lock.owner = NULL;
    o->u.lock.owner_died = true;
    lock_handoff(s, o);
  }
}

static int cond_wait(struct tdm__msrv *s, struct tdm__mconn *c, struct obj *o,
                     const struct tdm__mreq *q) {
  struct obj *lk = o->u.cond_lock;
  if (!lock_holds(lk, c->client, q->thread)) return -EPERM;
  unsigned level = lk->u.lock.count;
  lk->u.lock.held = false;
  lk->u.lock.owner = NULL;
  lock_handoff(s, lk);
  c->wresult = 0;
  c->wcount = level;
  park(c, W_COND, o, &o->w, q->timeout, q->thread);
  return WAIT_REPLY;
}

/* A condition waiter was notified (result 0) or timed out: it queues for the lock again. */
static void cond_requeue(struct tdm__msrv *s, struct tdm__mconn *c, int result) {
  struct obj *lk = c->wobj->u.cond_lock;
  unsigned level = c->wcount;
  uint64_t thread = c->thread;
  unpark(c);
  c->wresult = result;
  c->wcount = level;
  park(c, W_LOCK, lk, &lk->w, TDM_FOREVER, thread);
  lock_handoff(s, lk);
}

static int cond_notify(struct tdm__msrv *s, struct tdm__mconn *c, struct obj *o,
                       const struct tdm__mreq *q, uint32_t n) {
  if (!lock_holds(o->u.cond_lock, c->client, q->thread)) return -EPERM;
  while (n-- > 0 && o->w.head != NULL)
    cond_requeue(s, o->w.head, 0);
  return 0;
}

/* ---- Queues, semaphores, events, barriers -------------------------------------------------- */

static int queue_push(struct obj *o, struct item *it) {
  __typeof__(o->u.queue) *qu = &o->u.queue;
  if (qu->n == qu->cap) {
    size_t cap = qu->cap != 0 ? qu->cap * 2 : 8;
    struct item **v = tdm__calloc(cap, sizeof *v);
    if (v == NULL) return -ENOMEM;
    for (size_t i = 0; i < qu->n; i++)
      v[i] = qu->v[(qu->head + i) % qu->cap];
    tdm__free(qu->v);
    qu->v = v;
    qu->cap = cap;
    qu->head = 0;
  }
  qu->v[(qu->head + qu->n) % qu->cap] = it;
  qu->n++;
  return 0;
}

static struct item *queue_pop(struct obj *o) {
  __typeof__(o->u.queue) *qu = &o->u.queue;
  struct item *it = qu->v[qu->head];
  qu->head = (qu->head + 1) % qu->cap;
  qu->n--;
  return it;
}

/* Hands queued items to waiting getters and lets waiting putters in while there is room. */
static void queue_settle(struct tdm__msrv *s, struct obj *o) {
  __typeof__(o->u.queue) *qu = &o->u.queue;
  for (;;) {
    if (qu->n > 0 && o->w.head != NULL) {
      struct tdm__mconn *g = o->w.head;
      struct item *it = queue_pop(o);
      unpark(g);
      reply_str(s, g, it->data, it->len);
      tdm__free(it);
      continue;
    }
    if (qu->putters.head != NULL && (qu->maxsize == 0 || qu->n < qu->maxsize)) {
      struct tdm__mconn *p = qu->putters.head;
      if (queue_push(o, p->witem) < 0) break; /* the putter waits on */
      p->witem = NULL;
      if (qu->joinable) qu->unfinished++;
      unpark(p);
      reply_status(s, p, 0);
      continue;
    }
    break;
  }
}

static void barrier_break(struct tdm__msrv *s, struct obj *o) {
  o->u.barrier.broken = true;
  o->u.barrier.count = 0;
  fail_all(s, &o->w, TDM_EBROKEN);
}

/* A parked request's deadline passed. */
static void wait_timeout(struct tdm__msrv *s, struct tdm__mconn *c) {
  struct obj *o = c->wobj;
  switch (c->wait) {
  case W_COND:
    cond_requeue(s, c, -ETIMEDOUT);
    return;
  case W_BARRIER:
    unpark(c);
    reply_status(s, c, -ETIMEDOUT);
    barrier_break(s, o);
    return;
  default:
    unpark(c);
    reply_status(s, c, -ETIMEDOUT);
  }
}

/* ---- Requests ------------------------------------------------------------------------------- */

static struct item *item_new(const uint8_t *p, size_t n) {
  struct item *it = tdm__alloc(sizeof *it + n);
  if (it != NULL) {
    it->len = n;
    if (n > 0) memcpy(it->data, p, n);
  }
  return it;
}

static struct kv *kv_new(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
  struct kv *e = tdm__alloc(sizeof *e + kl + vl);
  if (e != NULL) {
    e->klen = kl;
    e->vlen = vl;
    if (kl > 0) memcpy(e->data, k, kl);
    if (vl > 0) memcpy(e->data + kl, v, vl);
  }
  return e;
}

static int map_set(struct tdm__map *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
  struct kv *e = kv_new(k, kl, v, vl);
  if (e == NULL) return -ENOMEM;
  void *old;
  if (tdm__map_put(m, e->data, kl, e, &old) < 0) {
    tdm__free(e);
    return -ENOMEM;
  }
  tdm__free(old);
  return 0;
}

/* Writes the keys (what 1), values (2) or both (3) of a map as a list. */
static void map_list(struct tdm__wbuf *w, const struct tdm__map *m, int what) {
  tdm__wb_u64(w, what == 3 ? 2 * (uint64_t)m->n : m->n);
  for (size_t i = 0; i < m->cap; i++) {
    const struct kv *e = m->e[i].key != NULL ? m->e[i].val : NULL;
    if (e == NULL) continue;
    if (what & 1) tdm__wb_str(w, e->data, e->klen);
    if (what & 2) tdm__wb_str(w, e->data + e->klen, e->vlen);
  }
}

/* Python's index rules: negative counts from the end; false when out of [0, n). */
static bool norm_index(int64_t i, size_t n, size_t *out) {
  if (i < 0) i += (int64_t)n;
  if (i < 0 || (uint64_t)i >= n) return false;
  *out = (size_t)i;
  return true;
}

static size_t clamp_index(int64_t i, size_t n) {
  if (i < 0) i += (int64_t)n;
  if (i < 0) return 0;
  return (uint64_t)i > n ? n : (size_t)i;
}

static int list_reserve(struct obj *o, size_t more) {
  __typeof__(o->u.list) *l = &o->u.list;
  if (more <= l->cap - l->n) return 0;
  if (more > SIZE_MAX / sizeof(struct item *) / 2 - l->n) return -ENOMEM;
  size_t cap = l->cap != 0 ? l->cap : 8;
  while (cap - l->n < more)
    cap *= 2;
  struct item **v = tdm__realloc(l->v, cap * sizeof *v);
  if (v == NULL) return -ENOMEM;
  l->v = v;
  l->cap = cap;
  return 0;
}

static int dict_op(struct tdm__msrv *s, struct obj *o, uint32_t op, struct tdm__rbuf *r) {
  struct tdm__wbuf *w = &s->scratch;
  struct tdm__map *m = &o->u.map;
  size_t kl = 0, vl = 0;
  const uint8_t *k = NULL, *v = NULL;
  switch (op) {
  case MOP_DICT_GET:
  case MOP_DICT_DELETE:
  case MOP_DICT_CONTAINS:
  case MOP_DICT_POP:
  case MOP_NS_GET:
  case MOP_NS_DELETE:
    k = tdm__rb_str(r, &kl);
    break;
  case MOP_DICT_SET:
  case MOP_DICT_SETDEFAULT:
  case MOP_NS_SET:
    k = tdm__rb_str(r, &kl);
    v = tdm__rb_str(r, &vl);
    break;
  default:
    break;
  }
  if (op >= MOP_NS_GET && op <= MOP_NS_DELETE && !r->bad && (kl == 0 || kl > 255)) return -EINVAL;
  if (op == MOP_DICT_UPDATE) {
    uint64_t n = tdm__rb_u64(r);
    if (n > r->left / 16) return -EPROTO; /* a pair takes at least 16 bytes */
    /* Check the whole request first, so that an update is all or nothing. */
    struct tdm__rbuf chk = *r;
    for (uint64_t i = 0; i < 2 * n && !chk.bad; i++)
      (void)tdm__rb_str(&chk, &kl);
    if (chk.bad || chk.left != 0) return -EPROTO;
    for (uint64_t i = 0; i < n; i++) {
      k = tdm__rb_str(r, &kl);
      v = tdm__rb_str(r, &vl);
      if (map_set(m, k, kl, v, vl) < 0) return -ENOMEM;
    }
    return 0;
  }
  if (r->bad || r->left != 0) return -EPROTO;
  struct kv *e;
  switch (op) {
  case MOP_DICT_GET:
  case MOP_NS_GET:
    e = tdm__map_get(m, k, kl);
    if (e == NULL) return -ENOENT;
    tdm__wb_str(w, e->data + e->klen, e->vlen);
    return 0;
  case MOP_DICT_SET:
  case MOP_NS_SET:
    return map_set(m, k, kl, v, vl);
  case MOP_DICT_DELETE:
  case MOP_NS_DELETE:
    e = tdm__map_del(m, k, kl);
    if (e == NULL) return -ENOENT;
    tdm__free(e);
    return 0;
  case MOP_DICT_CONTAINS:
    return tdm__map_get(m, k, kl) != NULL ? 1 : 0;
  case MOP_DICT_POP:
    e = tdm__map_get(m, k, kl);
    if (e == NULL) return -ENOENT;
    tdm__wb_str(w, e->data + e->klen, e->vlen);
    if (w->failed) return -ENOMEM;
    tdm__free(tdm__map_del(m, k, kl));
    return 0;
  case MOP_DICT_SETDEFAULT:
    e = tdm__map_get(m, k, kl);
    if (e == NULL) {
      int rc = map_set(m, k, kl, v, vl);
      if (rc < 0) return rc;
      e = tdm__map_get(m, k, kl);
    }
    tdm__wb_str(w, e->data + e->klen, e->vlen);
    return 0;
  case MOP_DICT_LEN:
    tdm__wb_u64(w, m->n);
    return 0;
  case MOP_DICT_KEYS:
  case MOP_NS_NAMES:
    map_list(w, m, 1);
    return 0;
  case MOP_DICT_VALUES:
    map_list(w, m, 2);
    return 0;
  case MOP_DICT_ITEMS:
    map_list(w, m, 3);
    return 0;
  case MOP_DICT_CLEAR:
    for (size_t i = 0; i < m->cap; i++)
      if (m->e[i].key != NULL) tdm__free(m->e[i].val);
    tdm__map_fini(m);
    return 0;
  default:
    return -EPROTO;
  }
}

static int list_op(struct tdm__msrv *s, struct obj *o, uint32_t op, struct tdm__rbuf *r) {
  struct tdm__wbuf *w = &s->scratch;
  __typeof__(o->u.list) *l = &o->u.list;
  size_t vl = 0, at = 0;
  const uint8_t *v = NULL;
  int64_t i = 0, j = 0;
  if (op == MOP_LIST_EXTEND) {
    uint64_t n = tdm__rb_u64(r);
    if (n > r->left / 8) return -EPROTO; /* an item takes at least 8 bytes */
    struct tdm__rbuf chk = *r;
    for (uint64_t x = 0; x < n && !chk.bad; x++)
      (void)tdm__rb_str(&chk, &vl);
    if (chk.bad || chk.left != 0) return -EPROTO;
    if (list_reserve(o, (size_t)n) < 0) return -ENOMEM;
    size_t first = l->n;
    for (uint64_t x = 0; x < n; x++) {
      v = tdm__rb_str(r, &vl);
      struct item *it = item_new(v, vl);
      if (it == NULL) {
        while (l->n > first)
          tdm__free(l->v[--l->n]);
        return -ENOMEM;
      }
      l->v[l->n++] = it;
    }
    return 0;
  }
  switch (op) {
  case MOP_LIST_APPEND:
  case MOP_LIST_REMOVE:
    v = tdm__rb_str(r, &vl);
    break;
  case MOP_LIST_GET:
  case MOP_LIST_POP:
    i = (int64_t)tdm__rb_u64(r);
    break;
  case MOP_LIST_SET:
  case MOP_LIST_INSERT:
    i = (int64_t)tdm__rb_u64(r);
    v = tdm__rb_str(r, &vl);
    break;
  case MOP_LIST_INDEX:
    v = tdm__rb_str(r, &vl);
    i = (int64_t)tdm__rb_u64(r);
    break;
  case MOP_LIST_SLICE:
    i = (int64_t)tdm__rb_u64(r);
    j = (int64_t)tdm__rb_u64(r);
    break;
  default:
    break;
  }
  if (r->bad || r->left != 0) return -EPROTO;
  struct item *it;
  switch (op) {
  case MOP_LIST_APPEND:
  case MOP_LIST_INSERT:
    if (list_reserve(o, 1) < 0 || (it = item_new(v, vl)) == NULL) return -ENOMEM;
    at = op == MOP_LIST_APPEND ? l->n : clamp_index(i, l->n);
    memmove(&l->v[at + 1], &l->v[at], (l->n - at) * sizeof *l->v);
    l->v[at] = it;
    l->n++;
    return 0;
  case MOP_LIST_GET:
    if (!norm_index(i, l->n, &at)) return -ERANGE;
    tdm__wb_str(w, l->v[at]->data, l->v[at]->len);
    return 0;
  case MOP_LIST_SET:
    if (!norm_index(i, l->n, &at)) return -ERANGE;
    if ((it = item_new(v, vl)) == NULL) return -ENOMEM;
    tdm__free(l->v[at]);
    l->v[at] = it;
    return 0;
  case MOP_LIST_POP:
    if (!norm_index(i, l->n, &at)) return -ERANGE;
    tdm__wb_str(w, l->v[at]->data, l->v[at]->len);
    if (w->failed) return -ENOMEM;
    tdm__free(l->v[at]);
    memmove(&l->v[at], &l->v[at + 1], (l->n - at - 1) * sizeof *l->v);
    l->n--;
    return 0;
  case MOP_LIST_INDEX:
  case MOP_LIST_REMOVE:
    for (at = op == MOP_LIST_INDEX ? clamp_index(i, l->n) : 0; at < l->n; at++)
      if (l->v[at]->len == vl && (vl == 0 || memcmp(l->v[at]->data, v, vl) == 0)) break;
    if (at == l->n) return -ENOENT;
    if (op == MOP_LIST_INDEX) {
      tdm__wb_u64(w, at);
      return 0;
    }
    tdm__free(l->v[at]);
    memmove(&l->v[at], &l->v[at + 1], (l->n - at - 1) * sizeof *l->v);
    l->n--;
    return 0;
  case MOP_LIST_LEN:
    tdm__wb_u64(w, l->n);
    return 0;
  case MOP_LIST_SLICE: {
    size_t a = clamp_index(i, l->n), b = clamp_index(j, l->n);
    if (b < a) b = a;
    tdm__wb_u64(w, b - a);
    for (size_t x = a; x < b; x++)
      tdm__wb_str(w, l->v[x]->data, l->v[x]->len);
    return 0;
  }
  case MOP_LIST_CLEAR:
    for (size_t x = 0; x < l->n; x++)
      tdm__free(l->v[x]);
    l->n = 0;
    return 0;
  default:
    return -EPROTO;
  }
}

static int queue_op(struct tdm__msrv *s, struct tdm__mconn *c, struct obj *o,
                    const struct tdm__mreq *q, struct tdm__rbuf *r) {
  __typeof__(o->u.queue) *qu = &o->u.queue;
  size_t vl = 0;
  const uint8_t *v = q->op == MOP_QUEUE_PUT ? tdm__rb_str(r, &vl) : NULL;
  if (r->bad || r->left != 0) return -EPROTO;
  switch (q->op) {
  case MOP_QUEUE_PUT: {
    struct item *it = item_new(v, vl);
    if (it == NULL) return -ENOMEM;
    if (qu->maxsize != 0 && qu->n >= qu->maxsize) {
      if (q->timeout == 0) {
        tdm__free(it);
        return -ETIMEDOUT;
      }
      park(c, W_QPUT, o, &qu->putters, q->timeout, q->thread);
      c->witem = it;
      return WAIT_REPLY;
    }
    if (queue_push(o, it) < 0) {
      tdm__free(it);
      return -ENOMEM;
    }
    if (qu->joinable) qu->unfinished++;
    queue_settle(s, o);
    return 0;
  }
  case MOP_QUEUE_GET:
    if (qu->n == 0) {
      if (q->timeout == 0) return -ETIMEDOUT;
      park(c, W_QGET, o, &o->w, q->timeout, q->thread);
      return WAIT_REPLY;
    }
    {
      struct item *it = queue_pop(o);
      reply_str(s, c, it->data, it->len);
      tdm__free(it);
    }
    queue_settle(s, o);
    return WAIT_REPLY; /* answered above */
  case MOP_QUEUE_QSIZE:
    tdm__wb_u64(&s->scratch, qu->n);
    return 0;
  case MOP_QUEUE_TASK_DONE:
    if (!qu->joinable) return TDM_ETYPE;
    if (qu->unfinished == 0) return TDM_EOVERRELEASE;
    if (--qu->unfinished == 0) fail_all(s, &qu->joiners, 0);
    return 0;
  case MOP_QUEUE_JOIN:
    if (!qu->joinable) return TDM_ETYPE;
    if (qu->unfinished == 0) return 0;
    if (q->timeout == 0) return -ETIMEDOUT;
    park(c, W_QJOIN, o, &qu->joiners, q->timeout, q->thread);
    return WAIT_REPLY;
  default:
    return -EPROTO;
  }
}

static int sync_op(struct tdm__msrv *s, struct tdm__mconn *c, struct obj *o,
                   const struct tdm__mreq *q, struct tdm__rbuf *r) {
  uint32_t n = 0;
  if (q->op == MOP_SEM_RELEASE || q->op == MOP_COND_NOTIFY) n = tdm__rb_u32(r);
  if (r->bad || r->left != 0) return -EPROTO;
  switch (q->op) {
  case MOP_LOCK_ACQUIRE:
    return lock_acquire(c, o, q);
  case MOP_LOCK_RELEASE:
    return lock_release(s, c, o, q);
  case MOP_SEM_ACQUIRE:
    if (o->u.sem.value > 0) {
      o->u.sem.value--;
      return 0;
    }
    if (q->timeout == 0) return -ETIMEDOUT;
    park(c, W_SEM, o, &o->w, q->timeout, q->thread);
    return WAIT_REPLY;
  case MOP_SEM_RELEASE:
    if (n == 0) return -EINVAL;
    if (n > UINT32_MAX - o->u.sem.value ||
        (o->u.sem.bounded && o->u.sem.value + n > o->u.sem.initial))
      return TDM_EOVERRELEASE;
    o->u.sem.value += n;
    while (o->u.sem.value > 0 && o->w.head != NULL) {
      struct tdm__mconn *wc = o->w.head;
      o->u.sem.value--;
      unpark(wc);
      reply_status(s, wc, 0);
    }
    return 0;
  case MOP_SEM_VALUE:
    tdm__wb_u32(&s->scratch, o->u.sem.value);
    return 0;
  case MOP_EVENT_SET:
    o->u.event = true;
    fail_all(s, &o->w, 0);
    return 0;
  case MOP_EVENT_CLEAR:
    o->u.event = false;
    return 0;
  case MOP_EVENT_IS_SET:
    return o->u.event ? 1 : 0;
  case MOP_EVENT_WAIT:
    if (o->u.event) return 0;
    if (q->timeout == 0) return -ETIMEDOUT;
    park(c, W_EVENT, o, &o->w, q->timeout, q->thread);
    return WAIT_REPLY;
  case MOP_COND_WAIT:
    return cond_wait(s, c, o, q);
  case MOP_COND_NOTIFY:
    return cond_notify(s, c, o, q, n);
  case MOP_BARRIER_WAIT:
    if (o->u.barrier.broken) return TDM_EBROKEN;
    if (o->u.barrier.count + 1 == o->u.barrier.parties) {
      unsigned index = o->u.barrier.count;
      o->u.barrier.count = 0;
      while (o->w.head != NULL) {
        struct tdm__mconn *wc = o->w.head;
        uint8_t idx[4];
        for (int b = 0; b < 4; b++)
          idx[b] = (uint8_t)(wc->wcount >> (8 * b));
        unpark(wc);
        reply(s, wc, 0, idx, sizeof idx);
      }
      tdm__wb_u32(&s->scratch, index);
      return 0;
    }
    if (q->timeout == 0) {
      barrier_break(s, o);
      return -ETIMEDOUT;
    }
    c->wcount = o->u.barrier.count++;
    park(c, W_BARRIER, o, &o->w, q->timeout, q->thread);
    return WAIT_REPLY;
  case MOP_BARRIER_ABORT:
    barrier_break(s, o);
    return 0;
  case MOP_BARRIER_RESET:
    barrier_break(s, o);
    o->u.barrier.broken = false;
    return 0;
  case MOP_BARRIER_STATE:
    tdm__wb_u32(&s->scratch, o->u.barrier.count);
    tdm__wb_bytes(&s->scratch, &(uint8_t){ o->u.barrier.broken }, 1);
    return 0;
  default:
    return -EPROTO;
  }
}

static int value_op(struct tdm__msrv *s, struct obj *o, uint32_t op, struct tdm__rbuf *r) {
  uint64_t x = op != MOP_VALUE_GET ? tdm__rb_u64(r) : 0;
  if (r->bad || r->left != 0) return -EPROTO;
  bool fl = o->type == TDM_MVALUE_FLOAT;
  double d;
  memcpy(&d, &x, sizeof d);
  if (op == MOP_VALUE_SET) {
    if (fl)
      o->u.d = d;
    else
      o->u.i = (int64_t)x;
  } else if (op == MOP_VALUE_ADD) {
    if (fl)
      o->u.d += d;
    else
      o->u.i = (int64_t)((uint64_t)o->u.i + x);
  } else if (op != MOP_VALUE_GET) {
    return -EPROTO;
  }
  if (fl)
    memcpy(&x, &o->u.d, sizeof x);
  else
    x = (uint64_t)o->u.i;
  if (op != MOP_VALUE_SET) tdm__wb_u64(&s->scratch, x);
  return 0;
}

static int custom_op(struct tdm__msrv *s, struct obj *o, struct tdm__rbuf *r) {
  uint32_t cop = tdm__rb_u32(r);
  size_t n;
  const uint8_t *in = tdm__rb_str(r, &n);
  if (r->bad || r->left != 0) return -EPROTO;
  void *out = NULL;
  size_t out_len = 0;
  int rc = o->u.custom.t->call(o->u.custom.state, cop, in, n, &out, &out_len);
  if (out != NULL) {
    tdm__wb_str(&s->scratch, out, out_len);
    free(out);
  }
  /* The one value a status cannot carry (it means "parked"): the type broke its contract. */
  return rc == WAIT_REPLY ? -ERANGE : rc;
}

/* Which object types an operation applies to. */
static bool op_fits(uint32_t op, uint32_t type) {
  if (op >= MOP_DICT_GET && op < MOP_LIST_APPEND) return type == TDM_MDICT;
  if (op >= MOP_LIST_APPEND && op < MOP_QUEUE_PUT) return type == TDM_MLIST;
  if (op >= MOP_QUEUE_PUT && op < MOP_LOCK_ACQUIRE) return type == TDM_MQUEUE;
  if (op >= MOP_LOCK_ACQUIRE && op < MOP_SEM_ACQUIRE)
    return type == TDM_MLOCK || type == TDM_MRLOCK || type == TDM_MCONDITION;
  if (op >= MOP_SEM_ACQUIRE && op < MOP_EVENT_SET) return type == TDM_MSEMAPHORE;
  if (op >= MOP_EVENT_SET && op < MOP_COND_WAIT) return type == TDM_MEVENT;
  if (op >= MOP_COND_WAIT && op < MOP_BARRIER_WAIT) return type == TDM_MCONDITION;
  if (op >= MOP_BARRIER_WAIT && op < MOP_VALUE_GET) return type == TDM_MBARRIER;
  if (op >= MOP_VALUE_GET && op < MOP_NS_GET)
    return type == TDM_MVALUE_INT || type == TDM_MVALUE_FLOAT;
  if (op >= MOP_NS_GET && op < MOP_CUSTOM_CALL) return type == TDM_MNAMESPACE;
  return op == MOP_CUSTOM_CALL && type == TDM_MCUSTOM;
}

static int create(struct tdm__msrv *s, struct tdm__mconn *c, const struct tdm__mreq *q,
                  struct tdm__rbuf *r) {
  struct obj *o = tdm__calloc(1, sizeof *o);
  if (o == NULL) return -ENOMEM;
  o->type = q->type;
  int rc = 0;
  switch (q->type) {
  case TDM_MDICT:
  case TDM_MNAMESPACE:
    tdm__map_init(&o->u.map);
    break;
  case TDM_MLIST:
  case TDM_MLOCK:
  case TDM_MRLOCK:
  case TDM_MEVENT:
    break;
  case TDM_MQUEUE: {
    uint64_t max = tdm__rb_u64(r);
    o->u.queue.maxsize = max > SIZE_MAX ? SIZE_MAX : (size_t)max;
    o->u.queue.joinable = tdm__rb_u32(r) != 0;
    break;
  }
  case TDM_MSEMAPHORE:
    o->u.sem.value = o->u.sem.initial = tdm__rb_u32(r);
    o->u.sem.bounded = tdm__rb_u32(r) != 0;
    break;
  case TDM_MCONDITION: {
    uint64_t lid = tdm__rb_u64(r);
    if (lid == 0) {
      /* An rlock of its own, which only the condition refers to. */
      struct obj *lk = tdm__calloc(1, sizeof *lk);
      if (lk == NULL) {
        rc = -ENOMEM;
        break;
      }
      lk->type = TDM_MRLOCK;
      lk->id = s->next_id++;
      if (tdm__map_put(&s->objects, &lk->id, sizeof lk->id, lk, NULL) < 0) {
        tdm__free(lk);
        rc = -ENOMEM;
        break;
      }
      o->u.cond_lock = lk;
    } else {
      struct obj *lk = obj_get(s, lid);
      if (lk == NULL)
        rc = -ESTALE;
      else if (lk->type != TDM_MLOCK && lk->type != TDM_MRLOCK)
        rc = TDM_ETYPE;
      else
        o->u.cond_lock = lk;
    }
    if (rc == 0) o->u.cond_lock->refs++;
    break;
  }
  case TDM_MBARRIER:
    o->u.barrier.parties = tdm__rb_u32(r);
    if (o->u.barrier.parties == 0) rc = -EINVAL;
    break;
  case TDM_MVALUE_INT:
  case TDM_MVALUE_FLOAT: {
    uint64_t x = tdm__rb_u64(r);
    memcpy(&o->u.i, &x, sizeof x);
    break;
  }
  case TDM_MCUSTOM: {
    size_t nl, al;
    const uint8_t *name = tdm__rb_str(r, &nl);
    const uint8_t *arg = tdm__rb_str(r, &al);
    if (r->bad) break;
    rc = -ENOENT;
    for (size_t i = 0; i < s->n_types; i++) {
      const char *tn = s->types[i]->name;
      if (strlen(tn) != nl || memcmp(tn, name, nl) != 0) continue;
      o->u.custom.t = s->types[i];
      rc = s->types[i]->create(&o->u.custom.state, arg, al);
      if (rc > 0) rc = 0;
      if (rc < 0) o->u.custom.t = NULL;
      break;
    }
    break;
  }
  default:
    rc = -EINVAL;
  }
  if (rc == 0 && (r->bad || r->left != 0)) rc = -EPROTO;
  if (rc == 0) {
    o->id = s->next_id++;
    if (tdm__map_put(&s->objects, &o->id, sizeof o->id, o, NULL) < 0) {
      rc = -ENOMEM;
    } else if (ref_add(c->client, o, 1) < 0) {
      tdm__map_del(&s->objects, &o->id, sizeof o->id);
      rc = -ENOMEM;
    }
  }
  if (rc < 0) {
    /* Undo what was made: the condition's reference to its lock, a custom state. */
    if (q->type == TDM_MCONDITION && o->u.cond_lock != NULL) obj_decref(s, o->u.cond_lock, 1);
    if (q->type == TDM_MCUSTOM && o->u.custom.t != NULL && o->u.custom.t->destroy != NULL)
      o->u.custom.t->destroy(o->u.custom.state);
    if (q->type == TDM_MDICT || q->type == TDM_MNAMESPACE) tdm__map_fini(&o->u.map);
    tdm__free(o);
    return rc;
  }
  tdm__wb_u64(&s->scratch, o->id);
  return 0;
}

static int hello(struct tdm__msrv *s, struct tdm__mconn *c, struct tdm__rbuf *r) {
  uint64_t id = tdm__rb_u64(r);
  uint32_t version = tdm__rb_u32(r);
  if (r->bad || r->left != 0 || c->client != NULL) return -EPROTO;
  if (version != TDM__MGR_PROTOCOL) return -EPROTONOSUPPORT;
  struct client *cl = tdm__map_get(&s->clients, &id, sizeof id);
  if (cl == NULL) {
    cl = tdm__calloc(1, sizeof *cl);
    if (cl == NULL) return -ENOMEM;
    cl->id = id;
    tdm__map_init(&cl->refs);
    if (tdm__map_put(&s->clients, &cl->id, sizeof cl->id, cl, NULL) < 0) {
      tdm__free(cl);
      return -ENOMEM;
    }
  }
  cl->nconns++;
  c->client = cl;
  tdm__wb_u64(&s->scratch, s->instance);
  tdm__wb_u32(&s->scratch, (uint32_t)getpid());
  return 0;
}

static int incref(struct tdm__msrv *s, struct tdm__mconn *c, const struct tdm__mreq *q,
                  struct tdm__rbuf *r) {
  uint64_t n = tdm__rb_u64(r);
  if (r->bad || n > r->left / 8 || r->left != n * 8) return -EPROTO;
  if (q->instance != s->instance) return -ESTALE;
  struct tdm__rbuf chk = *r;
  for (uint64_t i = 0; i < n; i++)
    if (obj_get(s, tdm__rb_u64(&chk)) == NULL) return -ESTALE;
  for (uint64_t i = 0; i < n; i++) {
    struct obj *o = obj_get(s, tdm__rb_u64(r));
    if (ref_add(c->client, o, 1) < 0) {
      /* All or nothing: give back what was taken. */
      struct tdm__rbuf undo = { r->p - 8 * (i + 1), 8 * i, false };
      for (uint64_t k = 0; k < i; k++)
        ref_drop(s, c->client, obj_get(s, tdm__rb_u64(&undo)));
      return -ENOMEM;
    }
  }
  return 0;
}

static int request(struct tdm__msrv *s, struct tdm__mconn *c, const uint8_t *msg, size_t len) {
  struct tdm__rbuf r = { msg, len, false };
  struct tdm__mreq q;
  if (!tdm__mreq_decode(&r, &q)) return -EPROTO;
  if (q.op == MOP_HELLO) return hello(s, c, &r);
  if (c->client == NULL) return -EPROTO;
  switch (q.op) {
  case MOP_INCREF:
    return incref(s, c, &q, &r);
  case MOP_CREATE:
    return create(s, c, &q, &r);
  case MOP_SHUTDOWN:
    if (r.left != 0) return -EPROTO;
    /* A shutdown may name the run it means (a handle stopping the server it started must not
     * stop another one restarted at the same address). */
    if (q.instance != 0 && q.instance != s->instance) return -ESTALE;
    s->stopping = true;
    return 0;
  default:
    break;
  }
  if (q.op < MOP_DECREF || (q.op > MOP_DECREF && q.op < MOP_DICT_GET) || q.op > MOP_CUSTOM_CALL)
    return -EPROTO;
  if (q.instance != s->instance) return -ESTALE;
  struct obj *o = obj_get(s, q.object);
  if (o == NULL) return -ESTALE;
  if (q.op == MOP_DECREF) return r.left != 0 ? -EPROTO : ref_drop(s, c->client, o);
  if (!op_fits(q.op, o->type)) return TDM_ETYPE;
  if (q.op < MOP_LIST_APPEND || (q.op >= MOP_NS_GET && q.op < MOP_CUSTOM_CALL))
    return dict_op(s, o, q.op, &r);
  if (q.op < MOP_QUEUE_PUT) return list_op(s, o, q.op, &r);
  if (q.op < MOP_LOCK_ACQUIRE) return queue_op(s, c, o, &q, &r);
  if (q.op < MOP_VALUE_GET) return sync_op(s, c, o, &q, &r);
  if (q.op < MOP_NS_GET) return value_op(s, o, q.op, &r);
  return custom_op(s, o, &r);
}

bool tdm__msrv_request(struct tdm__msrv *s, struct tdm__mconn *c, const uint8_t *msg, size_t len) {
  if (c->state != C_READY) return false;
  /* One request at a time: a client that sends another before its answer breaks the rule. */
  if (c->wait != W_NONE) {
    conn_kill(s, c);
    return false;
  }
  s->scratch.len = 0;
  s->scratch.failed = false;
  int status = request(s, c, msg, len);
  if (status == WAIT_REPLY) return c->state != C_DEAD && !c->out.failed;
  if (s->scratch.failed) {
    status = -ENOMEM;
    s->scratch.len = 0;
  }
  reply(s, c, status, s->scratch.p, status < 0 ? 0 : s->scratch.len);
  return c->state != C_DEAD && !c->out.failed;
}

/* ---- Connections and clients ------------------------------------------------------------------
 */

static void client_gone(struct tdm__msrv *s, struct client *cl) {
  tdm__map_del(&s->clients, &cl->id, sizeof cl->id);
  locks_orphan(s, cl);
  /* Dropping references can free objects (and a condition's lock): collect first. */
  for (size_t i = 0; i < cl->refs.cap; i++) {
    struct ref *r = cl->refs.e[i].key != NULL ? cl->refs.e[i].val : NULL;
    if (r == NULL) continue;
    struct obj *o = obj_get(s, r->id);
    if (o != NULL) obj_decref(s, o, r->count);
    tdm__free(r);
  }
  tdm__map_fini(&cl->refs);
  tdm__free(cl);
}

static void conn_kill(struct tdm__msrv *s, struct tdm__mconn *c) {
  if (c->state == C_DEAD) return;
  c->state = C_DEAD;
  if (c->wait == W_BARRIER) {
    /* A party that will never arrive: the others would wait forever. */
    struct obj *o = c->wobj;
    unpark(c);
    barrier_break(s, o);
  }
  unpark(c);
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  struct client *cl = c->client;
  c->client = NULL;
  if (cl != NULL && --cl->nconns == 0) client_gone(s, cl);
}

static void conn_free(struct tdm__mconn *c) {
  OPENSSL_cleanse(&c->auth, sizeof c->auth);
  tdm__free(c->in);
  tdm__wb_free(&c->out);
  tdm__free(c);
}

static struct tdm__mconn *conn_new(struct tdm__msrv *s, int fd) {
  if (s->n_conns == s->cap_conns) {
    size_t cap = s->cap_conns != 0 ? 2 * s->cap_conns : 64;
    struct tdm__mconn **v = tdm__realloc(s->conns, cap * sizeof *v);
    if (v == NULL) return NULL;
    s->conns = v;
    s->cap_conns = cap;
  }
  struct tdm__mconn *c = tdm__calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->fd = fd;
  s->conns[s->n_conns++] = c;
  return c;
}

struct tdm__mconn *tdm__msrv_fake_conn(struct tdm__msrv *s) {
  struct tdm__mconn *c = conn_new(s, -1);
  if (c != NULL) c->state = C_READY;
  return c;
}

size_t tdm__mconn_output(struct tdm__mconn *c, bool clear) {
  size_t n = c->out.len;
  if (clear) c->out.len = 0;
  return n;
}

void tdm__msrv_drop(struct tdm__msrv *s, struct tdm__mconn *c) {
  conn_kill(s, c);
}

void tdm__msrv_expire(struct tdm__msrv *s, int64_t now) {
  for (size_t i = 0; i < s->n_conns; i++) {
    struct tdm__mconn *c = s->conns[i];
    if (c->state == C_DEAD) continue;
    if (c->wait != W_NONE && c->deadline <= now) wait_timeout(s, c);
    if (c->state != C_READY && c->auth_deadline != 0 && c->auth_deadline <= now) conn_kill(s, c);
  }
}

int tdm__msrv_new(struct tdm__msrv **out, const tdm_manager_type *const *types, size_t n_types,
                  size_t max_message) {
  if (n_types > TDM_MANAGER_MAX_TYPES || (n_types > 0 && types == NULL)) return -EINVAL;
  for (size_t i = 0; i < n_types; i++) {
    const tdm_manager_type *t = types[i];
    if (t == NULL || t->name == NULL || t->create == NULL || t->call == NULL) return -EINVAL;
    size_t nl = strlen(t->name);
    if (nl == 0 || nl > 64) return -EINVAL;
    for (size_t j = 0; j < i; j++)
      if (strcmp(types[j]->name, t->name) == 0) return -EINVAL;
  }
  struct tdm__msrv *s = tdm__calloc(1, sizeof *s);
  if (s == NULL) return -ENOMEM;
  int rc = tdm__random(&s->instance, sizeof s->instance);
  if (rc < 0) {
    tdm__free(s);
    return rc;
  }
  s->instance |= 1; /* never 0, which no proxy carries */
  s->next_id = 1;
  s->max_message = max_message != 0 ? max_message : TDM_MANAGER_MAX_MESSAGE_DEFAULT;
  for (size_t i = 0; i < n_types; i++)
    s->types[i] = types[i];
  s->n_types = n_types;
  tdm__map_init(&s->objects);
  tdm__map_init(&s->clients);
  *out = s;
  return 0;
}

uint64_t tdm__msrv_instance(const struct tdm__msrv *s) {
  return s->instance;
}

void tdm__msrv_free(struct tdm__msrv *s) {
  if (s == NULL) return;
  for (size_t i = 0; i < s->n_conns; i++) {
    conn_kill(s, s->conns[i]);
    conn_free(s->conns[i]);
  }
  tdm__free(s->conns);
  /* Clients with no connection cannot exist; objects may remain when references were taken
   * by connections that are gone (none) or the server stopped: free whatever is left. */
  while (s->objects.n > 0) {
    for (size_t i = 0; i < s->objects.cap; i++) {
      struct obj *o = s->objects.e[i].key != NULL ? s->objects.e[i].val : NULL;
      if (o == NULL) continue;
      o->refs = 0;
      obj_free(s, o);
      break;
    }
  }
  tdm__map_fini(&s->objects);
  tdm__map_fini(&s->clients);
  tdm__wb_free(&s->scratch);
  tdm__free(s);
}

/* ---- The loop
 * ------------------------------------------------------------------------------------
 *
 * Each turn: poll the listener and every connection (for output only when some is pending),
 * accept new clients and start their handshakes, read what arrived and run every whole request,
 * answer the waits whose deadline passed, write what is pending, and forget dead connections.
 */

#define READ_CHUNK ((size_t)64 << 10)

static void accept_all(struct tdm__msrv *s, int lfd, const void *key, size_t key_len) {
  for (int k = 0; k < 64; k++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      /* Out of descriptors or memory: the client waits in the backlog, and the listener, which
       * stays readable, is left out of the poll for a while instead of spinning on it. */
      if (errno != EAGAIN && errno != EWOULDBLOCK) s->accept_pause = tdm__deadline(TDM_MS(100));
      return;
    }
    struct tdm__mconn *c = conn_new(s, fd);
    if (c == NULL) {
      close(fd);
      continue;
    }
    unsigned char nonce[TDM__AUTH_NONCE], first[TDM__AUTH_MSG_MAX];
    size_t first_len = 0;
    c->state = C_AUTH;
    if (tdm__random(nonce, sizeof nonce) < 0) {
      conn_kill(s, c);
      continue;
    }
    c->auth_deadline = tdm__deadline(TDM_CONN_HANDSHAKE_DEFAULT);
    tdm__auth_start(&c->auth, true, key, key_len, nonce, first, &first_len);
    if (first_len > 0) send_frame(s, c, first, first_len, NULL, 0);
  }
}

/* One handshake message from the client. */
static void auth_message(struct tdm__msrv *s, struct tdm__mconn *c, const uint8_t *msg,
                         size_t len) {
  unsigned char out[TDM__AUTH_MSG_MAX];
  size_t out_len = 0;
  int rc = tdm__auth_step(&c->auth, msg, len, out, &out_len);
  if (out_len > 0) send_frame(s, c, out, out_len, NULL, 0);
  if (c->state == C_DEAD) return;
  if (rc == 0) {
    c->state = C_READY;
    c->auth_deadline = 0;
  } else if (rc < 0) {
    /* Say why (the failure message), then hang up. */
    c->state = C_CLOSING;
    c->auth_deadline = tdm__deadline(TDM_S(1));
  }
}

static void conn_read(struct tdm__msrv *s, struct tdm__mconn *c) {
  if (c->in_cap - c->in_len < READ_CHUNK) {
    size_t cap = c->in_len + READ_CHUNK;
    uint8_t *p = tdm__realloc(c->in, cap);
    if (p == NULL) {
      conn_kill(s, c);
      return;
    }
    c->in = p;
    c->in_cap = cap;
  }
  ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    conn_kill(s, c);
    return;
  }
  c->in_len += (size_t)n;
  size_t off = 0;
  while (c->state == C_AUTH || c->state == C_READY) {
    if (c->in_len - off < TDM__FRAME_HEADER) break;
    uint64_t len;
    uint32_t nfds;
    size_t max = c->state == C_AUTH ? TDM__AUTH_MSG_MAX : s->max_message;
    if (tdm__frame_decode(c->in + off, max, &len, &nfds) < 0 || nfds != 0) {
      /* Oversized or not a frame: the stream cannot be followed any more. Say so if the
       * client is still there to read it, then hang up. */
      if (c->state == C_READY) reply_status(s, c, -EMSGSIZE);
      c->state = C_CLOSING;
      c->auth_deadline = tdm__deadline(TDM_S(1));
      break;
    }
    if (c->in_len - off - TDM__FRAME_HEADER < len) {
      /* Room for the whole message before reading on. */
      size_t need = TDM__FRAME_HEADER + (size_t)len + READ_CHUNK;
      if (off == 0 && c->in_cap < need) {
        uint8_t *p = tdm__realloc(c->in, need);
        if (p == NULL) {
          conn_kill(s, c);
          return;
        }
        c->in = p;
        c->in_cap = need;
      }
      break;
    }
    const uint8_t *body = c->in + off + TDM__FRAME_HEADER;
    off += TDM__FRAME_HEADER + (size_t)len;
    if (c->state == C_AUTH)
      auth_message(s, c, body, (size_t)len);
    else
      tdm__msrv_request(s, c, body, (size_t)len);
  }
  if (c->state == C_DEAD) return;
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
}

static void conn_flush(struct tdm__msrv *s, struct tdm__mconn *c) {
  while (c->out_off < c->out.len) {
    ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) conn_kill(s, c);
      break;
    }
    c->out_off += (size_t)n;
  }
  if (c->state == C_DEAD) return;
  if (c->out_off == c->out.len) {
    c->out.len = c->out_off = 0;
    if (c->state == C_CLOSING) conn_kill(s, c);
  } else if (c->out.len - c->out_off > 2 * s->max_message + ((size_t)1 << 20)) {
    /* It sends and does not read: its answers would pile up without end. */
    conn_kill(s, c);
  }
}

static int64_t next_deadline(const struct tdm__msrv *s) {
  int64_t at = s->accept_pause != 0 ? s->accept_pause : INT64_MAX;
  for (size_t i = 0; i < s->n_conns; i++) {
    const struct tdm__mconn *c = s->conns[i];
    if (c->wait != W_NONE && c->deadline < at) at = c->deadline;
    if (c->auth_deadline != 0 && c->auth_deadline < at) at = c->auth_deadline;
  }
  return at;
}

/* Stopping: waiters are told the manager is going away, and everyone gets what is pending. */
static void stop(struct tdm__msrv *s) {
  for (size_t i = 0; i < s->n_conns; i++) {
    struct tdm__mconn *c = s->conns[i];
    if (c->wait == W_NONE || c->state == C_DEAD) continue;
    unpark(c);
    reply_status(s, c, TDM_EMANAGER);
  }
  for (size_t i = 0; i < s->n_conns; i++)
    if (s->conns[i]->state != C_DEAD && s->conns[i]->fd >= 0) conn_flush(s, s->conns[i]);
}

int tdm__msrv_run(struct tdm__msrv *s, int lfd, const void *key, size_t key_len) {
  struct pollfd *pfd = NULL;
  size_t cap_pfd = 0;
  int rc = 0;
  while (!s->stopping) {
    if (cap_pfd < s->n_conns + 1) {
      size_t cap = 2 * (s->n_conns + 1);
      struct pollfd *p = tdm__realloc(pfd, cap * sizeof *p);
      if (p == NULL) {
        rc = -ENOMEM;
        break;
      }
      pfd = p;
      cap_pfd = cap;
    }
    int64_t now = tdm_clock_now();
    if (s->accept_pause != 0 && s->accept_pause <= now) s->accept_pause = 0;
    pfd[0] = (struct pollfd){ .fd = lfd, .events = s->accept_pause == 0 ? POLLIN : 0 };
    size_t n = s->n_conns;
    for (size_t i = 0; i < n; i++) {
      struct tdm__mconn *c = s->conns[i];
      short ev = c->state == C_AUTH || c->state == C_READY ? POLLIN : 0;
      if (c->out_off < c->out.len) ev |= POLLOUT;
      pfd[i + 1] = (struct pollfd){ .fd = c->fd, .events = ev };
    }
    int64_t at = next_deadline(s);
    struct timespec ts, *tsp = NULL;
    if (at != INT64_MAX) {
      int64_t left = at > now ? at - now : 0;
      ts = (struct timespec){ (time_t)(left / 1000000000), (long)(left % 1000000000) };
      tsp = &ts;
    }
    int k = ppoll(pfd, n + 1, tsp, NULL);
    if (k < 0 && errno != EINTR) {
      rc = -errno;
      break;
    }
    if (k > 0 && (pfd[0].revents & POLLIN)) accept_all(s, lfd, key, key_len);
    for (size_t i = 0; k > 0 && i < n; i++) {
      struct tdm__mconn *c = s->conns[i];
      short re = pfd[i + 1].revents;
      if (re == 0 || c->state == C_DEAD) continue;
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        if (c->state == C_AUTH || c->state == C_READY)
          conn_read(s, c);
        else if (re & (POLLHUP | POLLERR))
          conn_kill(s, c);
      }
    }
    tdm__msrv_expire(s, tdm_clock_now());
    if (s->stopping) stop(s);
    /* Write what every connection has pending (answers to parked requests included), and
     * forget the dead. */
    size_t j = 0;
    for (size_t i = 0; i < s->n_conns; i++) {
      struct tdm__mconn *c = s->conns[i];
      if (c->state != C_DEAD && c->out.failed) conn_kill(s, c);
      if (c->state != C_DEAD && c->out_off < c->out.len) conn_flush(s, c);
      if (c->state == C_DEAD) {
        conn_free(c);
        continue;
      }
      s->conns[j++] = c;
    }
    s->n_conns = j;
  }
  tdm__free(pfd);
  return rc;
}
