/*
 * client.c: the client side of managers: handles, connections, proxies and every call.
 *
 * A handle keeps a stack of idle connections to the server. A call takes one (or opens a new one
 * and greets the server with HELLO and this process's client id), sends its request, waits for
 * the answer and puts the connection back. So a thread parked in the server (on a lock, a
 * queue) holds one connection and the other threads use others; a single-threaded program uses
 * one connection. Every request names the calling thread, which is how the server knows who
 * holds an rlock.
 *
 * When a connection breaks (the server died or shut down), the call returns TDM_EMANAGER and
 * the handle forgets all its idle connections: they lead to the same dead server. The next
 * call connects again, so a manager restarted at the same address is reached; its HELLO
 * carries a new instance number, and proxies of the old run are refused with -ESTALE.
 *
 * Fork. The handle notices a new process id on the child's first call: it forgets the
 * inherited connections without a word on them (the parent still uses them), takes a client
 * id of its own, and takes a reference to every proxy it inherited, so that the parent
 * closing its proxies does not free what the child uses.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "conn/conn.h"
#include "manager/manager.h"
#include "platform/platform.h"
#include "process/process.h"
#include "tandem/conn.h"

struct mconn {
  tdm_conn *c;
  uint64_t instance; /* the server run it greeted */
};

struct tdm_proxy {
  tdm_manager *m;
  tdm_token tok;
  tdm_proxy *prev, *next; /* the handle's proxies */
};

struct tdm_manager {
  char *address;
  unsigned char *key;
  size_t key_len, max_message;
  int64_t connect_timeout;
  pthread_mutex_t mu; /* guards everything below */
  struct mconn *idle;
  size_t n_idle, cap_idle;
  pid_t pid, owner_pid; /* the process the connections belong to; the one that made m */
  uint64_t client, instance;
  uint64_t started; /* the run of the server this handle started (0: none) */
  pid_t server_pid;
  bool adopt; /* a fork child: take references to the inherited proxies */
  bool shut;
  tdm_process *proc; /* the server, when this handle started it */
  tdm_proxy *proxies;
};

/* ---- Connections ----------------------------------------------------------------------------- */

static int new_client_id(uint64_t *id) {
  int rc = tdm__random(id, sizeof *id);
  if (rc == 0 && *id == 0) *id = 1;
  return rc;
}

/* The codes of a connection that broke, and of connecting to nobody, are one: the manager is
 * gone. */
static int gone(int rc) {
  switch (rc) {
  case TDM_EEOF:
  case -ECONNRESET:
  case -ECONNABORTED:
  case -ECONNREFUSED:
  case -ENOENT:
  case -EPIPE:
  case -EPROTO:
    return TDM_EMANAGER;
  default:
    return rc;
  }
}

static int status_of(const uint8_t *msg, size_t len, struct tdm__rbuf *rest) {
  *rest = (struct tdm__rbuf){ msg, len, false };
  uint32_t st = tdm__rb_u32(rest);
  return rest->bad ? TDM_EMANAGER : (int)st;
}

/* Greets the server on a new connection. */
static int hello(tdm_manager *m, tdm_conn *c, uint64_t client, uint64_t *instance, pid_t *pid) {
  struct tdm__wbuf w = { 0 };
  tdm__mreq_encode(&w, &(struct tdm__mreq){ .op = MOP_HELLO });
  tdm__wb_u64(&w, client);
  tdm__wb_u32(&w, TDM__MGR_PROTOCOL);
  if (w.failed) return -ENOMEM;
  int rc = tdm_conn_send(c, w.p, w.len, m->connect_timeout);
  tdm__wb_free(&w);
  void *msg = NULL;
  size_t len = 0;
  if (rc == 0) rc = tdm_conn_recv(c, &msg, &len, m->connect_timeout);
  if (rc < 0) return gone(rc);
  struct tdm__rbuf r;
  rc = status_of(msg, len, &r);
  if (rc == 0) {
    *instance = tdm__rb_u64(&r);
    *pid = (pid_t)tdm__rb_u32(&r);
    if (r.bad) rc = TDM_EMANAGER;
  }
  tdm__free(msg);
  return rc;
}

static void drop_idle_locked(tdm_manager *m) {
  while (m->n_idle > 0)
    tdm_conn_close(m->idle[--m->n_idle].c);
}

static int call_on(tdm_manager *m, struct mconn *mc, const struct tdm__wbuf *req, void **msg,
                   size_t *len);

/* Takes a connection for one call: an idle one, or a new one. */
static int conn_take(tdm_manager *m, struct mconn *out) {
  pthread_mutex_lock(&m->mu);
  if (m->pid != tdm__self_pid()) {
    /* A fork child: the inherited sockets are the parent's conversation. Close our copies
     * (the parent's stay open) and become a client of our own. */
    drop_idle_locked(m);
    m->pid = tdm__self_pid();
    int rc = new_client_id(&m->client);
    if (rc < 0) {
      pthread_mutex_unlock(&m->mu);
      return rc;
    }
    m->adopt = m->proxies != NULL;
    m->proc = NULL; /* the parent's child, not ours (the handle is the parent's to close) */
  }
  if (m->n_idle > 0) {
    *out = m->idle[--m->n_idle];
    pthread_mutex_unlock(&m->mu);
    return 0;
  }
  uint64_t client = m->client;
  pthread_mutex_unlock(&m->mu);

  tdm_conn_options o = { .max_message = m->max_message,
                         .authkey = m->key,
                         .authkey_len = m->key_len,
                         .handshake_timeout = m->connect_timeout };
  tdm_conn *c;
  int rc = tdm_client_connect(&c, m->address, &o);
  if (rc < 0) return gone(rc);
  uint64_t instance = 0;
  pid_t pid = 0;
  rc = hello(m, c, client, &instance, &pid);
  if (rc < 0) {
    tdm_conn_close(c);
    return rc;
  }
  *out = (struct mconn){ c, instance };
  pthread_mutex_lock(&m->mu);
  m->instance = instance; /* a restarted manager: proxies of the old run will be refused */
  m->server_pid = pid;
  bool adopt = m->adopt;
  m->adopt = false;
  size_t n = 0;
  for (tdm_proxy *p = adopt ? m->proxies : NULL; p != NULL; p = p->next)
    n++;
  uint64_t *ids = n > 0 ? tdm__calloc(n, sizeof *ids) : NULL;
  uint64_t inst = 0;
  n = 0;
  for (tdm_proxy *p = ids != NULL ? m->proxies : NULL; p != NULL; p = p->next) {
    ids[n++] = p->tok.id;
    inst = p->tok.instance;
  }
  pthread_mutex_unlock(&m->mu);
  /* References for the proxies a fork child inherited, one at a time: one object freed
   * meanwhile must not cost the others theirs. */
  for (size_t i = 0; i < n; i++) {
    struct tdm__wbuf w = { 0 };
    tdm__mreq_encode(&w, &(struct tdm__mreq){ .op = MOP_INCREF, .instance = inst });
    tdm__wb_u64(&w, 1);
    tdm__wb_u64(&w, ids[i]);
    void *msg = NULL;
    size_t len;
    if (!w.failed && call_on(m, out, &w, &msg, &len) == TDM_EMANAGER) {
      tdm__wb_free(&w);
      tdm__free(ids);
      return TDM_EMANAGER; /* out was closed */
    }
    tdm__free(msg);
    tdm__wb_free(&w);
  }
  tdm__free(ids);
  return 0;
}

static void conn_give_back(tdm_manager *m, struct mconn *mc) {
  pthread_mutex_lock(&m->mu);
  if (m->pid == tdm__self_pid() && !m->shut) {
    if (m->n_idle == m->cap_idle) {
      size_t cap = m->cap_idle != 0 ? 2 * m->cap_idle : 4;
      struct mconn *v = tdm__realloc(m->idle, cap * sizeof *v);
      if (v != NULL) {
        m->idle = v;
        m->cap_idle = cap;
      }
    }
    if (m->n_idle < m->cap_idle) {
      m->idle[m->n_idle++] = *mc;
      pthread_mutex_unlock(&m->mu);
      return;
    }
  }
  pthread_mutex_unlock(&m->mu);
  tdm_conn_close(mc->c);
}

/*
 * The request and its answer, on the connection's socket directly. After HELLO (sent through
 * the connection, which reads exactly one frame and keeps nothing), the client frames its own
 * messages: the server answers each request with exactly one frame and sends nothing else, so
 * the client may read ahead, and a call costs one sendmsg() and, for an answer of up to 4 KiB,
 * one recv(). The socket is blocking; a server that dies makes both return at once.
 */
#define READ_AHEAD 4096

static int raw_send(int fd, const struct tdm__wbuf *req) {
  uint8_t hdr[TDM__FRAME_HEADER];
  tdm__frame_encode(hdr, req->len, 0);
  struct iovec iov[2] = { { hdr, sizeof hdr }, { req->p, req->len } };
  struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
  while (mh.msg_iovlen > 0) {
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    while (n > 0 && mh.msg_iovlen > 0) {
      size_t k = (size_t)n < mh.msg_iov->iov_len ? (size_t)n : mh.msg_iov->iov_len;
      mh.msg_iov->iov_base = (uint8_t *)mh.msg_iov->iov_base + k;
      mh.msg_iov->iov_len -= k;
      n -= (ssize_t)k;
      if (mh.msg_iov->iov_len == 0) mh.msg_iov++, mh.msg_iovlen--;
    }
  }
  return 0;
}

/* Reads until `want` bytes are at buf (`have` already are). */
static int raw_fill(int fd, uint8_t *buf, size_t have, size_t want) {
  while (have < want) {
    ssize_t n = recv(fd, buf + have, want - have, 0);
    if (n == 0) return TDM_EEOF;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    have += (size_t)n;
  }
  return 0;
}

static int raw_recv(int fd, size_t max, void **msg, size_t *len) {
  uint8_t buf[READ_AHEAD];
  size_t have = 0;
  while (have < TDM__FRAME_HEADER) {
    ssize_t n = recv(fd, buf + have, sizeof buf - have, 0);
    if (n == 0) return TDM_EEOF;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    have += (size_t)n;
  }
  uint64_t body;
  uint32_t nfds;
  if (tdm__frame_decode(buf, max, &body, &nfds) < 0 || nfds != 0) return -EPROTO;
  if (have > TDM__FRAME_HEADER + body) return -EPROTO; /* more than one answer */
  uint8_t *p = tdm__alloc((size_t)body);
  if (p == NULL) return -ENOMEM;
  size_t got = have - TDM__FRAME_HEADER;
  memcpy(p, buf + TDM__FRAME_HEADER, got);
  int rc = raw_fill(fd, p, got, (size_t)body);
  if (rc < 0) {
    tdm__free(p);
    return rc;
  }
  *msg = p;
  *len = (size_t)body;
  return 0;
}

/* Sends a request on mc and receives the answer. On a broken connection, closes it, forgets
 * the idle ones, and returns TDM_EMANAGER. */
static int call_on(tdm_manager *m, struct mconn *mc, const struct tdm__wbuf *req, void **msg,
                   size_t *len) {
  if (req->len > m->max_message) return -EMSGSIZE;
  int fd = tdm_conn_fd(mc->c);
  int rc = raw_send(fd, req);
  if (rc == 0) rc = raw_recv(fd, m->max_message, msg, len);
  if (rc == 0) return 0;
  tdm_conn_close(mc->c);
  mc->c = NULL;
  pthread_mutex_lock(&m->mu);
  if (m->pid == tdm__self_pid()) drop_idle_locked(m);
  pthread_mutex_unlock(&m->mu);
  /* Whatever broke it (the peer gone, an answer beyond our limit), the conversation is over. */
  return rc == -ENOMEM ? rc : TDM_EMANAGER;
}

/* One call: the reply's status (or an error), with the reply's results in *r and its buffer in
 * *msg (to free). */
static int call(tdm_manager *m, struct tdm__wbuf *req, void **msg, struct tdm__rbuf *r,
                uint64_t *instance) {
  *msg = NULL;
  if (req->failed) {
    tdm__wb_free(req);
    return -ENOMEM;
  }
  struct mconn mc;
  int rc = conn_take(m, &mc);
  if (rc == 0) {
    if (instance != NULL) {
      /* A request that names the run (CREATE) learns it from the connection. */
      *instance = mc.instance;
      for (int i = 0; i < 8; i++)
        req->p[8 + i] = (uint8_t)(mc.instance >> (8 * i));
    }
    size_t len = 0;
    rc = call_on(m, &mc, req, msg, &len);
    if (mc.c != NULL) conn_give_back(m, &mc);
    if (rc == 0) rc = status_of(*msg, len, r);
  }
  tdm__wb_free(req);
  return rc;
}

/* ---- Proxies' calls ----------------------------------------------------------------------------
 */

/* Which proxy types a call accepts (bit per tdm_mtype). */
#define T(x)       (1ull << (x))
#define T_LOCKLIKE (T(TDM_MLOCK) | T(TDM_MRLOCK) | T(TDM_MCONDITION))
#define T_VALUE    (T(TDM_MVALUE_INT) | T(TDM_MVALUE_FLOAT))

static uint64_t type_bit(uint32_t type) {
  return type == TDM_MCUSTOM ? T(63) : type < 63 ? T(type) : 0;
}

/* Starts a request on proxy p: its fixed part. */
static void begin(struct tdm__wbuf *w, const tdm_proxy *p, uint32_t op, int64_t timeout) {
  *w = (struct tdm__wbuf){ 0 };
  tdm__mreq_encode(w, &(struct tdm__mreq){ op, p->tok.type, p->tok.instance, p->tok.id,
                                           (uint64_t)(uint32_t)tdm__tid(), timeout });
}

struct rep {
  void *msg;
  struct tdm__rbuf r;
};

/* Sends the request begun on p, after checking p's type against `types`. */
static int pcall(tdm_proxy *p, uint64_t types, struct tdm__wbuf *w, struct rep *rep) {
  rep->msg = NULL;
  if ((type_bit(p->tok.type) & types) == 0) {
    tdm__wb_free(w);
    return TDM_ETYPE;
  }
  return call(p->m, w, &rep->msg, &rep->r, NULL);
}

/* Hands the reply's byte string to the caller, in the reply's own buffer (moved to its start). */
static int take_str(struct rep *rep, void **val, size_t *len) {
  size_t n;
  const uint8_t *p = tdm__rb_str(&rep->r, &n);
  if (p == NULL) return TDM_EMANAGER;
  memmove(rep->msg, p, n);
  *val = rep->msg;
  *len = n;
  rep->msg = NULL;
  return 0;
}

static int take_list(struct rep *rep, tdm_bytes_list **out) {
  struct tdm__rbuf r = rep->r;
  uint64_t n = tdm__rb_u64(&r);
  if (r.bad || n > r.left / 8) return TDM_EMANAGER;
  size_t total = 0, len;
  struct tdm__rbuf chk = r;
  for (uint64_t i = 0; i < n; i++) {
    (void)tdm__rb_str(&chk, &len);
    total += len;
  }
  if (chk.bad) return TDM_EMANAGER;
  size_t head = sizeof(tdm_bytes_list) + (size_t)n * sizeof(tdm_bytes);
  tdm_bytes_list *l = tdm__alloc(head + total);
  if (l == NULL) return -ENOMEM;
  uint8_t *data = (uint8_t *)l + head;
  l->n = (size_t)n;
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *p = tdm__rb_str(&r, &len);
    if (len > 0) memcpy(data, p, len);
    l->v[i] = (tdm_bytes){ data, len };
    data += len;
  }
  *out = l;
  return 0;
}

static uint64_t take_u64(struct rep *rep, int *rc) {
  uint64_t v = tdm__rb_u64(&rep->r);
  if (rep->r.bad && *rc == 0) *rc = TDM_EMANAGER;
  return v;
}

/* A call whose reply is only a status. */
static int simple(tdm_proxy *p, uint64_t types, struct tdm__wbuf *w) {
  struct rep rep;
  int rc = pcall(p, types, w, &rep);
  tdm__free(rep.msg);
  return rc;
}

/* A call whose reply is a byte string. */
static int with_str(tdm_proxy *p, uint64_t types, struct tdm__wbuf *w, void **val, size_t *len) {
  struct rep rep;
  int rc = pcall(p, types, w, &rep);
  if (rc == 0) rc = take_str(&rep, val, len);
  tdm__free(rep.msg);
  return rc;
}

static int with_list(tdm_proxy *p, uint64_t types, struct tdm__wbuf *w, tdm_bytes_list **out) {
  struct rep rep;
  int rc = pcall(p, types, w, &rep);
  if (rc == 0) rc = take_list(&rep, out);
  tdm__free(rep.msg);
  return rc;
}

static int with_u64(tdm_proxy *p, uint64_t types, struct tdm__wbuf *w, uint64_t *out) {
  struct rep rep;
  int rc = pcall(p, types, w, &rep);
  uint64_t v = rc == 0 ? take_u64(&rep, &rc) : 0;
  if (rc == 0) *out = v;
  tdm__free(rep.msg);
  return rc;
}

#define NEED(cond)               \
  do {                           \
    if (!(cond)) return -EINVAL; \
  } while (0)
#define BYTES_OK(p, n) ((p) != NULL || (n) == 0)

/* ---- Dictionaries ------------------------------------------------------------------------------
 */

static int dict_key(tdm_proxy *d, uint32_t op, const void *key, size_t klen, struct tdm__wbuf *w) {
  NEED(d != NULL && BYTES_OK(key, klen));
  begin(w, d, op, 0);
  tdm__wb_str(w, key, klen);
  return 0;
}

int tdm_mdict_get(tdm_proxy *d, const void *key, size_t klen, void **val, size_t *vlen) {
  struct tdm__wbuf w;
  NEED(val != NULL && vlen != NULL);
  int rc = dict_key(d, MOP_DICT_GET, key, klen, &w);
  return rc < 0 ? rc : with_str(d, T(TDM_MDICT), &w, val, vlen);
}

int tdm_mdict_set(tdm_proxy *d, const void *key, size_t klen, const void *val, size_t vlen) {
  struct tdm__wbuf w;
  NEED(BYTES_OK(val, vlen));
  int rc = dict_key(d, MOP_DICT_SET, key, klen, &w);
  if (rc < 0) return rc;
  tdm__wb_str(&w, val, vlen);
  return simple(d, T(TDM_MDICT), &w);
}

int tdm_mdict_delete(tdm_proxy *d, const void *key, size_t klen) {
  struct tdm__wbuf w;
  int rc = dict_key(d, MOP_DICT_DELETE, key, klen, &w);
  return rc < 0 ? rc : simple(d, T(TDM_MDICT), &w);
}

int tdm_mdict_contains(tdm_proxy *d, const void *key, size_t klen) {
  struct tdm__wbuf w;
  int rc = dict_key(d, MOP_DICT_CONTAINS, key, klen, &w);
  return rc < 0 ? rc : simple(d, T(TDM_MDICT), &w);
}

int tdm_mdict_pop(tdm_proxy *d, const void *key, size_t klen, void **val, size_t *vlen) {
  struct tdm__wbuf w;
  NEED(val != NULL && vlen != NULL);
  int rc = dict_key(d, MOP_DICT_POP, key, klen, &w);
  return rc < 0 ? rc : with_str(d, T(TDM_MDICT), &w, val, vlen);
}

int tdm_mdict_setdefault(tdm_proxy *d, const void *key, size_t klen, const void *val, size_t vlen,
                         void **out, size_t *out_len) {
  struct tdm__wbuf w;
  NEED(BYTES_OK(val, vlen) && out != NULL && out_len != NULL);
  int rc = dict_key(d, MOP_DICT_SETDEFAULT, key, klen, &w);
  if (rc < 0) return rc;
  tdm__wb_str(&w, val, vlen);
  return with_str(d, T(TDM_MDICT), &w, out, out_len);
}

static bool bytes_ok(const tdm_bytes *v, size_t n) {
  if (v == NULL && n > 0) return false;
  for (size_t i = 0; i < n; i++)
    if (!BYTES_OK(v[i].data, v[i].len)) return false;
  return true;
}

int tdm_mdict_update(tdm_proxy *d, const tdm_bytes *pairs, size_t n) {
  NEED(d != NULL && n <= SIZE_MAX / 2 && bytes_ok(pairs, 2 * n));
  struct tdm__wbuf w;
  begin(&w, d, MOP_DICT_UPDATE, 0);
  tdm__wb_u64(&w, n);
  for (size_t i = 0; i < 2 * n; i++)
    tdm__wb_str(&w, pairs[i].data, pairs[i].len);
  return simple(d, T(TDM_MDICT), &w);
}

/* A call without arguments whose reply is a count. */
static int count_call(tdm_proxy *p, uint32_t op, uint64_t types, size_t *out) {
  NEED(p != NULL && out != NULL);
  struct tdm__wbuf w;
  begin(&w, p, op, 0);
  uint64_t v;
  int rc = with_u64(p, types, &w, &v);
  if (rc == 0) *out = (size_t)v;
  return rc;
}

int tdm_mdict_len(tdm_proxy *d, size_t *len) {
  return count_call(d, MOP_DICT_LEN, T(TDM_MDICT), len);
}

/* A call without arguments whose reply is a list of byte strings. */
static int list_call(tdm_proxy *p, uint32_t op, uint64_t types, tdm_bytes_list **out) {
  NEED(p != NULL && out != NULL);
  struct tdm__wbuf w;
  begin(&w, p, op, 0);
  return with_list(p, types, &w, out);
}

int tdm_mdict_keys(tdm_proxy *d, tdm_bytes_list **out) {
  return list_call(d, MOP_DICT_KEYS, T(TDM_MDICT), out);
}

int tdm_mdict_values(tdm_proxy *d, tdm_bytes_list **out) {
  return list_call(d, MOP_DICT_VALUES, T(TDM_MDICT), out);
}

int tdm_mdict_items(tdm_proxy *d, tdm_bytes_list **out) {
  return list_call(d, MOP_DICT_ITEMS, T(TDM_MDICT), out);
}

static int status_call(tdm_proxy *p, uint32_t op, uint64_t types, int64_t timeout) {
  NEED(p != NULL);
  struct tdm__wbuf w;
  begin(&w, p, op, timeout);
  return simple(p, types, &w);
}

int tdm_mdict_clear(tdm_proxy *d) {
  return status_call(d, MOP_DICT_CLEAR, T(TDM_MDICT), 0);
}

/* ---- Lists
 * --------------------------------------------------------------------------------------- */

int tdm_mlist_append(tdm_proxy *l, const void *val, size_t len) {
  NEED(l != NULL && BYTES_OK(val, len));
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_APPEND, 0);
  tdm__wb_str(&w, val, len);
  return simple(l, T(TDM_MLIST), &w);
}

int tdm_mlist_extend(tdm_proxy *l, const tdm_bytes *items, size_t n) {
  NEED(l != NULL && bytes_ok(items, n));
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_EXTEND, 0);
  tdm__wb_u64(&w, n);
  for (size_t i = 0; i < n; i++)
    tdm__wb_str(&w, items[i].data, items[i].len);
  return simple(l, T(TDM_MLIST), &w);
}

int tdm_mlist_get(tdm_proxy *l, int64_t index, void **val, size_t *len) {
  NEED(l != NULL && val != NULL && len != NULL);
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_GET, 0);
  tdm__wb_u64(&w, (uint64_t)index);
  return with_str(l, T(TDM_MLIST), &w, val, len);
}

static int list_at(tdm_proxy *l, uint32_t op, int64_t index, const void *val, size_t len) {
  NEED(l != NULL && BYTES_OK(val, len));
  struct tdm__wbuf w;
  begin(&w, l, op, 0);
  tdm__wb_u64(&w, (uint64_t)index);
  tdm__wb_str(&w, val, len);
  return simple(l, T(TDM_MLIST), &w);
}

int tdm_mlist_set(tdm_proxy *l, int64_t index, const void *val, size_t len) {
  return list_at(l, MOP_LIST_SET, index, val, len);
}

int tdm_mlist_insert(tdm_proxy *l, int64_t index, const void *val, size_t len) {
  return list_at(l, MOP_LIST_INSERT, index, val, len);
}

int tdm_mlist_pop(tdm_proxy *l, int64_t index, void **val, size_t *len) {
  NEED(l != NULL && (val == NULL || len != NULL));
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_POP, 0);
  tdm__wb_u64(&w, (uint64_t)index);
  if (val != NULL) return with_str(l, T(TDM_MLIST), &w, val, len);
  return simple(l, T(TDM_MLIST), &w);
}

int tdm_mlist_index(tdm_proxy *l, const void *val, size_t len, int64_t start, size_t *index) {
  NEED(l != NULL && BYTES_OK(val, len) && index != NULL);
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_INDEX, 0);
  tdm__wb_str(&w, val, len);
  tdm__wb_u64(&w, (uint64_t)start);
  uint64_t v;
  int rc = with_u64(l, T(TDM_MLIST), &w, &v);
  if (rc == 0) *index = (size_t)v;
  return rc;
}

int tdm_mlist_remove(tdm_proxy *l, const void *val, size_t len) {
  NEED(l != NULL && BYTES_OK(val, len));
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_REMOVE, 0);
  tdm__wb_str(&w, val, len);
  return simple(l, T(TDM_MLIST), &w);
}

int tdm_mlist_len(tdm_proxy *l, size_t *len) {
  return count_call(l, MOP_LIST_LEN, T(TDM_MLIST), len);
}

int tdm_mlist_slice(tdm_proxy *l, int64_t start, int64_t stop, tdm_bytes_list **out) {
  NEED(l != NULL && out != NULL);
  struct tdm__wbuf w;
  begin(&w, l, MOP_LIST_SLICE, 0);
  tdm__wb_u64(&w, (uint64_t)start);
  tdm__wb_u64(&w, (uint64_t)stop);
  return with_list(l, T(TDM_MLIST), &w, out);
}

int tdm_mlist_clear(tdm_proxy *l) {
  return status_call(l, MOP_LIST_CLEAR, T(TDM_MLIST), 0);
}

/* ---- Queues
 * ---------------------------------------------------------------------------------------- */

int tdm_mqueue_put(tdm_proxy *q, const void *msg, size_t len, int64_t timeout) {
  NEED(q != NULL && BYTES_OK(msg, len));
  struct tdm__wbuf w;
  begin(&w, q, MOP_QUEUE_PUT, timeout);
  tdm__wb_str(&w, msg, len);
  return simple(q, T(TDM_MQUEUE), &w);
}

int tdm_mqueue_get(tdm_proxy *q, void **msg, size_t *len, int64_t timeout) {
  NEED(q != NULL && msg != NULL && len != NULL);
  struct tdm__wbuf w;
  begin(&w, q, MOP_QUEUE_GET, timeout);
  return with_str(q, T(TDM_MQUEUE), &w, msg, len);
}

int tdm_mqueue_qsize(tdm_proxy *q, size_t *n) {
  return count_call(q, MOP_QUEUE_QSIZE, T(TDM_MQUEUE), n);
}

int tdm_mqueue_task_done(tdm_proxy *q) {
  return status_call(q, MOP_QUEUE_TASK_DONE, T(TDM_MQUEUE), 0);
}

int tdm_mqueue_join(tdm_proxy *q, int64_t timeout) {
  return status_call(q, MOP_QUEUE_JOIN, T(TDM_MQUEUE), timeout);
}

/* ---- Locks, semaphores, events, conditions, barriers ------------------------------------------
 */

int tdm_mlock_acquire(tdm_proxy *l, int64_t timeout) {
  return status_call(l, MOP_LOCK_ACQUIRE, T_LOCKLIKE, timeout);
}

int tdm_mlock_release(tdm_proxy *l) {
  return status_call(l, MOP_LOCK_RELEASE, T_LOCKLIKE, 0);
}

int tdm_msem_acquire(tdm_proxy *s, int64_t timeout) {
  return status_call(s, MOP_SEM_ACQUIRE, T(TDM_MSEMAPHORE), timeout);
}

static int with_u32_arg(tdm_proxy *p, uint32_t op, uint64_t types, uint32_t n) {
  NEED(p != NULL);
  struct tdm__wbuf w;
  begin(&w, p, op, 0);
  tdm__wb_u32(&w, n);
  return simple(p, types, &w);
}

int tdm_msem_release(tdm_proxy *s, unsigned n) {
  NEED(n >= 1);
  return with_u32_arg(s, MOP_SEM_RELEASE, T(TDM_MSEMAPHORE), n);
}

/* A call whose reply is one u32. */
static int with_u32(tdm_proxy *p, uint64_t types, struct tdm__wbuf *w, uint32_t *out) {
  struct rep rep;
  int rc = pcall(p, types, w, &rep);
  if (rc == 0) {
    uint32_t v = tdm__rb_u32(&rep.r);
    if (rep.r.bad)
      rc = TDM_EMANAGER;
    else
      *out = v;
  }
  tdm__free(rep.msg);
  return rc;
}

int tdm_msem_value(tdm_proxy *s, unsigned *value) {
  NEED(s != NULL && value != NULL);
  struct tdm__wbuf w;
  begin(&w, s, MOP_SEM_VALUE, 0);
  uint32_t v;
  int rc = with_u32(s, T(TDM_MSEMAPHORE), &w, &v);
  if (rc == 0) *value = v;
  return rc;
}

int tdm_mevent_set(tdm_proxy *e) {
  return status_call(e, MOP_EVENT_SET, T(TDM_MEVENT), 0);
}

int tdm_mevent_clear(tdm_proxy *e) {
  return status_call(e, MOP_EVENT_CLEAR, T(TDM_MEVENT), 0);
}

int tdm_mevent_is_set(tdm_proxy *e) {
  return status_call(e, MOP_EVENT_IS_SET, T(TDM_MEVENT), 0);
}

int tdm_mevent_wait(tdm_proxy *e, int64_t timeout) {
  return status_call(e, MOP_EVENT_WAIT, T(TDM_MEVENT), timeout);
}

int tdm_mcond_wait(tdm_proxy *c, int64_t timeout) {
  return status_call(c, MOP_COND_WAIT, T(TDM_MCONDITION), timeout);
}

int tdm_mcond_notify(tdm_proxy *c, unsigned n) {
  return with_u32_arg(c, MOP_COND_NOTIFY, T(TDM_MCONDITION), n);
}

int tdm_mcond_notify_all(tdm_proxy *c) {
  return with_u32_arg(c, MOP_COND_NOTIFY, T(TDM_MCONDITION), UINT32_MAX);
}

int tdm_mbarrier_wait(tdm_proxy *b, int64_t timeout, unsigned *index) {
  NEED(b != NULL);
  struct tdm__wbuf w;
  begin(&w, b, MOP_BARRIER_WAIT, timeout);
  uint32_t i;
  int rc = with_u32(b, T(TDM_MBARRIER), &w, &i);
  if (rc == 0 && index != NULL) *index = i;
  return rc;
}

int tdm_mbarrier_abort(tdm_proxy *b) {
  return status_call(b, MOP_BARRIER_ABORT, T(TDM_MBARRIER), 0);
}

int tdm_mbarrier_reset(tdm_proxy *b) {
  return status_call(b, MOP_BARRIER_RESET, T(TDM_MBARRIER), 0);
}

int tdm_mbarrier_state(tdm_proxy *b, unsigned *n_waiting, bool *broken) {
  NEED(b != NULL);
  struct tdm__wbuf w;
  begin(&w, b, MOP_BARRIER_STATE, 0);
  struct rep rep;
  int rc = pcall(b, T(TDM_MBARRIER), &w, &rep);
  if (rc == 0) {
    uint32_t n = tdm__rb_u32(&rep.r);
    const uint8_t *flag = rep.r.left == 1 ? rep.r.p : NULL;
    if (rep.r.bad || flag == NULL) {
      rc = TDM_EMANAGER;
    } else {
      if (n_waiting != NULL) *n_waiting = n;
      if (broken != NULL) *broken = *flag != 0;
    }
  }
  tdm__free(rep.msg);
  return rc;
}

/* ---- Values -------------------------------------------------------------------------------------
 */

static int value_call(tdm_proxy *v, uint32_t op, uint32_t type, uint64_t arg, uint64_t *out) {
  NEED(v != NULL);
  struct tdm__wbuf w;
  begin(&w, v, op, 0);
  if (op != MOP_VALUE_GET) tdm__wb_u64(&w, arg);
  if (out == NULL) return simple(v, T(type), &w);
  return with_u64(v, T(type), &w, out);
}

int tdm_mvalue_get_int(tdm_proxy *v, int64_t *out) {
  NEED(out != NULL);
  uint64_t x;
  int rc = value_call(v, MOP_VALUE_GET, TDM_MVALUE_INT, 0, &x);
  if (rc == 0) *out = (int64_t)x;
  return rc;
}

int tdm_mvalue_set_int(tdm_proxy *v, int64_t value) {
  return value_call(v, MOP_VALUE_SET, TDM_MVALUE_INT, (uint64_t)value, NULL);
}

int tdm_mvalue_add_int(tdm_proxy *v, int64_t delta, int64_t *out) {
  uint64_t x;
  int rc = value_call(v, MOP_VALUE_ADD, TDM_MVALUE_INT, (uint64_t)delta, &x);
  if (rc == 0 && out != NULL) *out = (int64_t)x;
  return rc;
}

static uint64_t bits(double d) {
  uint64_t x;
  memcpy(&x, &d, sizeof x);
  return x;
}

static double real(uint64_t x) {
  double d;
  memcpy(&d, &x, sizeof d);
  return d;
}

int tdm_mvalue_get_float(tdm_proxy *v, double *out) {
  NEED(out != NULL);
  uint64_t x;
  int rc = value_call(v, MOP_VALUE_GET, TDM_MVALUE_FLOAT, 0, &x);
  if (rc == 0) *out = real(x);
  return rc;
}

int tdm_mvalue_set_float(tdm_proxy *v, double value) {
  return value_call(v, MOP_VALUE_SET, TDM_MVALUE_FLOAT, bits(value), NULL);
}

int tdm_mvalue_add_float(tdm_proxy *v, double delta, double *out) {
  uint64_t x;
  int rc = value_call(v, MOP_VALUE_ADD, TDM_MVALUE_FLOAT, bits(delta), &x);
  if (rc == 0 && out != NULL) *out = real(x);
  return rc;
}

/* ---- Namespaces
 * ------------------------------------------------------------------------------------ */

static int ns_name(tdm_proxy *ns, uint32_t op, const char *name, struct tdm__wbuf *w) {
  NEED(ns != NULL && name != NULL);
  size_t n = strlen(name);
  NEED(n >= 1 && n <= 255);
  begin(w, ns, op, 0);
  tdm__wb_str(w, name, n);
  return 0;
}

int tdm_mns_get(tdm_proxy *ns, const char *name, void **val, size_t *len) {
  NEED(val != NULL && len != NULL);
  struct tdm__wbuf w;
  int rc = ns_name(ns, MOP_NS_GET, name, &w);
  return rc < 0 ? rc : with_str(ns, T(TDM_MNAMESPACE), &w, val, len);
}

int tdm_mns_set(tdm_proxy *ns, const char *name, const void *val, size_t len) {
  NEED(BYTES_OK(val, len));
  struct tdm__wbuf w;
  int rc = ns_name(ns, MOP_NS_SET, name, &w);
  if (rc < 0) return rc;
  tdm__wb_str(&w, val, len);
  return simple(ns, T(TDM_MNAMESPACE), &w);
}

int tdm_mns_delete(tdm_proxy *ns, const char *name) {
  struct tdm__wbuf w;
  int rc = ns_name(ns, MOP_NS_DELETE, name, &w);
  return rc < 0 ? rc : simple(ns, T(TDM_MNAMESPACE), &w);
}

int tdm_mns_names(tdm_proxy *ns, tdm_bytes_list **out) {
  return list_call(ns, MOP_NS_NAMES, T(TDM_MNAMESPACE), out);
}

/* ---- Custom types ------------------------------------------------------------------------------
 */

int tdm_proxy_call(tdm_proxy *p, uint32_t op, const void *in, size_t len, void **out,
                   size_t *out_len) {
  NEED(p != NULL && BYTES_OK(in, len) && (out == NULL || out_len != NULL));
  struct tdm__wbuf w;
  begin(&w, p, MOP_CUSTOM_CALL, 0);
  tdm__wb_u32(&w, op);
  tdm__wb_str(&w, in, len);
  struct rep rep;
  int rc = pcall(p, T(63), &w, &rep);
  if (out != NULL) {
    *out = NULL;
    *out_len = 0;
  }
  /* The result (>= 0 or an error of the type's own) comes with the bytes it made, if any. */
  if (out != NULL && rep.msg != NULL && rep.r.left > 0 && take_str(&rep, out, out_len) < 0)
    rc = TDM_EMANAGER;
  tdm__free(rep.msg);
  return rc;
}

/* ---- Proxies ------------------------------------------------------------------------------------
 */

/* Gives back one reference to the object `tok` names; a manager that is gone took it already. */
static void drop_ref(tdm_manager *m, const tdm_token *tok) {
  tdm_proxy tmp = { .m = m, .tok = *tok };
  struct tdm__wbuf w;
  begin(&w, &tmp, MOP_DECREF, 0);
  void *msg;
  struct tdm__rbuf r;
  (void)call(m, &w, &msg, &r, NULL);
  tdm__free(msg);
}

static int proxy_new(tdm_proxy **out, tdm_manager *m, const tdm_token *tok) {
  tdm_proxy *p = tdm__calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->m = m;
  p->tok = *tok;
  pthread_mutex_lock(&m->mu);
  p->next = m->proxies;
  if (m->proxies != NULL) m->proxies->prev = p;
  m->proxies = p;
  pthread_mutex_unlock(&m->mu);
  *out = p;
  return 0;
}

static void proxy_free(tdm_proxy *p) {
  tdm_manager *m = p->m;
  pthread_mutex_lock(&m->mu);
  if (p->prev != NULL)
    p->prev->next = p->next;
  else
    m->proxies = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  pthread_mutex_unlock(&m->mu);
  tdm__free(p);
}

void tdm_proxy_token(const tdm_proxy *p, tdm_token *out) {
  *out = p->tok;
}

tdm_mtype tdm_proxy_type(const tdm_proxy *p) {
  return (tdm_mtype)p->tok.type;
}

static bool known_type(uint32_t t) {
  return (t >= TDM_MDICT && t <= TDM_MNAMESPACE) || t == TDM_MCUSTOM;
}

int tdm_proxy_open(tdm_proxy **out, tdm_manager *m, const tdm_token *token) {
  NEED(out != NULL && m != NULL && token != NULL && known_type(token->type));
  struct tdm__wbuf w = { 0 };
  tdm__mreq_encode(&w, &(struct tdm__mreq){ .op = MOP_INCREF, .instance = token->instance });
  tdm__wb_u64(&w, 1);
  tdm__wb_u64(&w, token->id);
  void *msg;
  struct tdm__rbuf r;
  int rc = call(m, &w, &msg, &r, NULL);
  tdm__free(msg);
  if (rc < 0) return rc;
  rc = proxy_new(out, m, token);
  if (rc < 0) drop_ref(m, token); /* nothing was taken */
  return rc;
}

int tdm_proxy_close(tdm_proxy *p) {
  if (p == NULL) return 0;
  drop_ref(p->m, &p->tok);
  proxy_free(p);
  return 0;
}

/* ---- Creating objects
 * ---------------------------------------------------------------------------- */

/* Sends a CREATE whose arguments are in w (begun by create_begin) and makes the proxy. */
static int create_end(tdm_manager *m, uint32_t type, struct tdm__wbuf *w, tdm_proxy **out) {
  void *msg;
  struct tdm__rbuf r;
  uint64_t instance = 0;
  int rc = call(m, w, &msg, &r, &instance);
  uint64_t id = 0;
  if (rc == 0) {
    id = tdm__rb_u64(&r);
    if (r.bad) rc = TDM_EMANAGER;
  }
  tdm__free(msg);
  if (rc < 0) return rc;
  tdm_token tok = { instance, id, type, 0 };
  rc = proxy_new(out, m, &tok);
  if (rc < 0) drop_ref(m, &tok);
  return rc;
}

static void create_begin(struct tdm__wbuf *w, uint32_t type) {
  *w = (struct tdm__wbuf){ 0 };
  tdm__mreq_encode(w, &(struct tdm__mreq){ .op = MOP_CREATE, .type = type });
}

static int create_plain(tdm_manager *m, uint32_t type, tdm_proxy **out) {
  NEED(m != NULL && out != NULL);
  struct tdm__wbuf w;
  create_begin(&w, type);
  return create_end(m, type, &w, out);
}

int tdm_manager_dict(tdm_manager *m, tdm_proxy **out) {
  return create_plain(m, TDM_MDICT, out);
}

int tdm_manager_list(tdm_manager *m, tdm_proxy **out) {
  return create_plain(m, TDM_MLIST, out);
}

int tdm_manager_lock(tdm_manager *m, tdm_proxy **out) {
  return create_plain(m, TDM_MLOCK, out);
}

int tdm_manager_rlock(tdm_manager *m, tdm_proxy **out) {
  return create_plain(m, TDM_MRLOCK, out);
}

int tdm_manager_event(tdm_manager *m, tdm_proxy **out) {
  return create_plain(m, TDM_MEVENT, out);
}

int tdm_manager_namespace(tdm_manager *m, tdm_proxy **out) {
  return create_plain(m, TDM_MNAMESPACE, out);
}

int tdm_manager_queue(tdm_manager *m, size_t maxsize, bool joinable, tdm_proxy **out) {
  NEED(m != NULL && out != NULL);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MQUEUE);
  tdm__wb_u64(&w, maxsize);
  tdm__wb_u32(&w, joinable);
  return create_end(m, TDM_MQUEUE, &w, out);
}

int tdm_manager_semaphore(tdm_manager *m, unsigned value, bool bounded, tdm_proxy **out) {
  NEED(m != NULL && out != NULL);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MSEMAPHORE);
  tdm__wb_u32(&w, value);
  tdm__wb_u32(&w, bounded);
  return create_end(m, TDM_MSEMAPHORE, &w, out);
}

int tdm_manager_condition(tdm_manager *m, tdm_proxy *lock, tdm_proxy **out) {
  NEED(m != NULL && out != NULL);
  if (lock != NULL && lock->tok.type != TDM_MLOCK && lock->tok.type != TDM_MRLOCK) return TDM_ETYPE;
  NEED(lock == NULL || lock->m == m);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MCONDITION);
  tdm__wb_u64(&w, lock != NULL ? lock->tok.id : 0);
  return create_end(m, TDM_MCONDITION, &w, out);
}

int tdm_manager_barrier(tdm_manager *m, unsigned parties, tdm_proxy **out) {
  NEED(m != NULL && out != NULL && parties >= 1);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MBARRIER);
  tdm__wb_u32(&w, parties);
  return create_end(m, TDM_MBARRIER, &w, out);
}

int tdm_manager_value_int(tdm_manager *m, int64_t initial, tdm_proxy **out) {
  NEED(m != NULL && out != NULL);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MVALUE_INT);
  tdm__wb_u64(&w, (uint64_t)initial);
  return create_end(m, TDM_MVALUE_INT, &w, out);
}

int tdm_manager_value_float(tdm_manager *m, double initial, tdm_proxy **out) {
  NEED(m != NULL && out != NULL);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MVALUE_FLOAT);
  tdm__wb_u64(&w, bits(initial));
  return create_end(m, TDM_MVALUE_FLOAT, &w, out);
}

int tdm_manager_create(tdm_manager *m, const char *type, const void *arg, size_t len,
                       tdm_proxy **out) {
  NEED(m != NULL && out != NULL && type != NULL && BYTES_OK(arg, len));
  size_t n = strlen(type);
  NEED(n >= 1 && n <= 64);
  struct tdm__wbuf w;
  create_begin(&w, TDM_MCUSTOM);
  tdm__wb_str(&w, type, n);
  tdm__wb_str(&w, arg, len);
  return create_end(m, TDM_MCUSTOM, &w, out);
}

/* ---- Handles
 * ---------------------------------------------------------------------------------------- */

int tdm__manager_open(tdm_manager **out, const char *address, const tdm_manager_options *opt,
                      tdm_process *proc) {
  tdm_manager *m = tdm__calloc(1, sizeof *m);
  if (m == NULL) return -ENOMEM;
  m->address = tdm__strdup(address);
  size_t kl = opt != NULL && opt->authkey != NULL ? opt->authkey_len : 0;
  m->key = kl > 0 ? tdm__alloc(kl) : NULL;
  if (m->address == NULL || (kl > 0 && m->key == NULL)) {
    tdm__free(m->address);
    tdm__free(m->key);
    tdm__free(m);
    return -ENOMEM;
  }
  if (kl > 0) memcpy(m->key, opt->authkey, kl);
  m->key_len = kl;
  m->max_message =
      opt != NULL && opt->max_message != 0 ? opt->max_message : TDM_MANAGER_MAX_MESSAGE_DEFAULT;
  m->connect_timeout =
      opt != NULL && opt->connect_timeout != 0 ? opt->connect_timeout : TDM__MGR_CONNECT_DEFAULT;
  pthread_mutex_init(&m->mu, NULL);
  m->pid = m->owner_pid = tdm__self_pid();
  m->proc = proc;
  int rc = new_client_id(&m->client);
  struct mconn mc;
  /* Connect now: a wrong address or key is the caller's to know at once. */
  if (rc == 0) rc = conn_take(m, &mc);
  if (rc < 0) {
    m->proc = NULL;
    tdm_manager_close(m);
    return rc;
  }
  if (proc != NULL) m->started = mc.instance;
  conn_give_back(m, &mc);
  *out = m;
  return 0;
}

int tdm_manager_connect(tdm_manager **out, const char *address, const tdm_manager_options *opt) {
  NEED(out != NULL && address != NULL);
  NEED(opt == NULL || opt->authkey != NULL || opt->authkey_len == 0);
  return tdm__manager_open(out, address, opt, NULL);
}

const char *tdm_manager_address(const tdm_manager *m) {
  return m->address;
}

pid_t tdm_manager_pid(const tdm_manager *m) {
  return m->server_pid;
}

/* Asks the server of run `instance` (0: whichever answers) to stop, then ends the process this
 * handle started, if any. */
static int shutdown_run(tdm_manager *m, uint64_t instance, int64_t timeout) {
  struct tdm__wbuf w = { 0 };
  tdm__mreq_encode(&w, &(struct tdm__mreq){ .op = MOP_SHUTDOWN, .instance = instance });
  void *msg;
  struct tdm__rbuf r;
  int rc = call(m, &w, &msg, &r, NULL);
  tdm__free(msg);
  pthread_mutex_lock(&m->mu);
  m->shut = true;
  drop_idle_locked(m);
  tdm_process *proc = m->pid == m->owner_pid ? m->proc : NULL;
  pthread_mutex_unlock(&m->mu);
  /* The started server may be long dead (and another one serves at its address): then it
   * has nothing to wait for. */
  if (rc == -ESTALE) timeout = 0;
  if (proc != NULL && tdm_process_join(proc, timeout) == -ETIMEDOUT) {
    tdm_process_kill(proc);
    tdm_process_join(proc, TDM_FOREVER);
    if (rc == 0) rc = -ETIMEDOUT;
  }
  return rc;
}

int tdm_manager_shutdown(tdm_manager *m, int64_t timeout) {
  NEED(m != NULL);
  return shutdown_run(m, 0, timeout);
}

int tdm_manager_close(tdm_manager *m) {
  if (m == NULL) return 0;
  bool mine = m->pid == m->owner_pid && m->owner_pid == tdm__self_pid();
  if (mine && m->proc != NULL && !m->shut) (void)shutdown_run(m, m->started, TDM_S(1));
  /* In a fork child that never called, these are copies of the parent's sockets: closing them
   * leaves the parent's open. */
  pthread_mutex_lock(&m->mu);
  drop_idle_locked(m);
  pthread_mutex_unlock(&m->mu);
  if (mine && m->proc != NULL) tdm_process_close(m->proc);
  pthread_mutex_destroy(&m->mu);
  tdm__free(m->idle);
  tdm__free(m->address);
  if (m->key != NULL) {
    memset(m->key, 0, m->key_len);
    tdm__free(m->key);
  }
  tdm__free(m);
  return 0;
}
