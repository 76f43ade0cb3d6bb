/*
 * manager.h: what the files of the manager module share: the wire format (operation codes and
 * a bounds-checked codec), the hash map the server keeps its objects in, and the server's
 * entry points, which take request bytes and produce reply bytes without any socket (so that
 * tests/fuzz/ can drive the request decoder and every object directly).
 *
 * A request is one connection message (tandem/conn.h framing):
 *   u32 op | u32 type | u64 instance | u64 object | u64 thread | i64 timeout | arguments
 * `type` is the proxy's tdm_mtype (checked against the object), `instance` the manager run the
 * proxy belongs to, `thread` the caller's thread (lock ownership), `timeout` relative
 * nanoseconds (negative: forever). Arguments are fixed-size little-endian integers and byte
 * strings (u64 length, bytes). A reply is: i32 status | results. docs/manager.md lists them.
 */
#ifndef TDM_MANAGER_MANAGER_H
#define TDM_MANAGER_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/internal.h"
#include "tandem/manager.h"

#define TDM__MGR_PROTOCOL        1u
#define TDM__MGR_HEADER          40        /* the fixed part of a request */
#define TDM__MGR_CONNECT_DEFAULT TDM_S(10) /* tdm_manager_options.connect_timeout of 0 */

enum tdm__mop {
  /* Session and lifetime */
  MOP_HELLO = 1, /* u64 client, u32 protocol -> u64 instance, u32 pid */
  MOP_INCREF,    /* u64 n, n x u64 object -> (all or none) */
  MOP_DECREF,    /* object in the header */
  MOP_CREATE,    /* type in the header, arguments by type -> u64 object */
  MOP_SHUTDOWN,
  /* Dictionaries */
  MOP_DICT_GET = 16, /* key -> value */
  MOP_DICT_SET,      /* key, value */
  MOP_DICT_DELETE,   /* key */
  MOP_DICT_CONTAINS, /* key -> status 1 or 0 */
  MOP_DICT_POP,      /* key -> value */
  MOP_DICT_SETDEFAULT,
  MOP_DICT_UPDATE, /* u64 n, n x (key, value) */
  MOP_DICT_LEN,    /* -> u64 */
  MOP_DICT_KEYS,   /* -> list */
  MOP_DICT_VALUES,
  MOP_DICT_ITEMS,
  MOP_DICT_CLEAR,
  /* Lists */
  MOP_LIST_APPEND = 32,
  MOP_LIST_EXTEND, /* u64 n, n x bytes */
  MOP_LIST_GET,    /* i64 index -> bytes */
  MOP_LIST_SET,    /* i64 index, bytes */
  MOP_LIST_INSERT,
  MOP_LIST_POP,
  MOP_LIST_INDEX, /* bytes, i64 start -> u64 */
  MOP_LIST_REMOVE,
  MOP_LIST_LEN,
  MOP_LIST_SLICE, /* i64 start, i64 stop -> list */
  MOP_LIST_CLEAR,
  /* Queues */
  MOP_QUEUE_PUT = 48,
  MOP_QUEUE_GET,
  MOP_QUEUE_QSIZE,
  MOP_QUEUE_TASK_DONE,
  MOP_QUEUE_JOIN,
  /* Locks (also a condition's lock) */
  MOP_LOCK_ACQUIRE = 64,
  MOP_LOCK_RELEASE,
  /* Semaphores */
  MOP_SEM_ACQUIRE = 72,
  MOP_SEM_RELEASE, /* u32 n */
  MOP_SEM_VALUE,   /* -> u32 */
  /* Events */
  MOP_EVENT_SET = 80,
  MOP_EVENT_CLEAR,
  MOP_EVENT_IS_SET,
  MOP_EVENT_WAIT,
  /* Conditions */
  MOP_COND_WAIT = 88,
  MOP_COND_NOTIFY, /* u32 n (UINT32_MAX: all) */
  /* Barriers */
  MOP_BARRIER_WAIT = 96, /* -> u32 index */
  MOP_BARRIER_ABORT,
  MOP_BARRIER_RESET,
  MOP_BARRIER_STATE, /* -> u32 waiting, u8 broken */
  /* Values: 8 bytes, an i64 or a double by the object's type */
  MOP_VALUE_GET = 104,
  MOP_VALUE_SET,
  MOP_VALUE_ADD, /* delta -> new value */
  /* Namespaces */
  MOP_NS_GET = 112,
  MOP_NS_SET,
  MOP_NS_DELETE,
  MOP_NS_NAMES,
  /* Custom types */
  MOP_CUSTOM_CALL = 128, /* u32 op, bytes -> bytes */
};

/* ---- The codec ---------------------------------------------------------------------------- */

/* A growing buffer that requests and replies are written into. A failed growth sets `failed`
 * and later writes do nothing, so a writer checks once at the end. */
struct tdm__wbuf {
  uint8_t *p;
  size_t len, cap;
  bool failed;
};

void tdm__wb_bytes(struct tdm__wbuf *w, const void *p, size_t n); /* raw bytes */
void tdm__wb_u32(struct tdm__wbuf *w, uint32_t v);
void tdm__wb_u64(struct tdm__wbuf *w, uint64_t v);
void tdm__wb_str(struct tdm__wbuf *w, const void *p, size_t n); /* u64 length, bytes */
/* Makes room for n more bytes; false (and `failed`) when memory ran out. */
bool tdm__wb_reserve(struct tdm__wbuf *w, size_t n);
void tdm__wb_free(struct tdm__wbuf *w);

/* A reader over received bytes. Every read past the end sets `bad` and yields zeros. */
struct tdm__rbuf {
  const uint8_t *p;
  size_t left;
  bool bad;
};

uint32_t tdm__rb_u32(struct tdm__rbuf *r);
uint64_t tdm__rb_u64(struct tdm__rbuf *r);
/* A byte string: points into the buffer (never copies); NULL and 0 when bad. */
const uint8_t *tdm__rb_str(struct tdm__rbuf *r, size_t *len);

/* A request's fixed part. */
struct tdm__mreq {
  uint32_t op, type;
  uint64_t instance, object, thread;
  int64_t timeout;
};

/* Decodes the fixed part of a request; the reader is left at its arguments. False when the
 * message is shorter than the fixed part. */
bool tdm__mreq_decode(struct tdm__rbuf *r, struct tdm__mreq *q);
void tdm__mreq_encode(struct tdm__wbuf *w, const struct tdm__mreq *q);

/* ---- The hash map --------------------------------------------------------------------------
 *
 * Keys are byte strings the values own (the map keeps pointers); hashed with SipHash-1-3 under
 * a random key per map, so that a client cannot choose keys that collide. Open addressing with
 * linear probing and backward-shift deletion (no tombstones).
 */
struct tdm__ment {
  uint64_t hash;
  const void *key; /* NULL: empty */
  size_t klen;
  void *val;
};

struct tdm__map {
  struct tdm__ment *e;
  size_t cap, n; /* cap: 0 or a power of two */
  uint64_t k0, k1;
};

void tdm__map_init(struct tdm__map *m);
void tdm__map_fini(struct tdm__map *m); /* frees the table, not the values */
void *tdm__map_get(const struct tdm__map *m, const void *key, size_t klen);
/* Sets key to val (the key's bytes must live as long as the entry). *old (may be NULL) gets
 * the value it replaced, or NULL. Returns 0 or -ENOMEM (the map is unchanged). */
int tdm__map_put(struct tdm__map *m, const void *key, size_t klen, void *val, void **old);
/* Removes the key; returns its value, or NULL when it was not there. */
void *tdm__map_del(struct tdm__map *m, const void *key, size_t klen);

/* ---- The server ----------------------------------------------------------------------------- */

struct tdm__msrv;
struct tdm__mconn;

/* Makes a server's state (no socket). Returns 0, -EINVAL for bad types, -ENOMEM. */
int tdm__msrv_new(struct tdm__msrv **out, const tdm_manager_type *const *types, size_t n_types,
                  size_t max_message);
/* The server's run number (what proxies carry as their token's instance). */
uint64_t tdm__msrv_instance(const struct tdm__msrv *s);
/* Frees every object and connection state (closing their descriptors). */
void tdm__msrv_free(struct tdm__msrv *s);

/* A connection that is already authenticated and has no socket (fd -1): for the fuzzer and
 * tests. NULL when memory ran out. */
struct tdm__mconn *tdm__msrv_fake_conn(struct tdm__msrv *s);
/* Runs one request from `c` as the server would; the reply (if any yet) is appended to the
 * connection's output, which tdm__mconn_output() shows and empties. Returns false when the
 * server would close the connection. */
bool tdm__msrv_request(struct tdm__msrv *s, struct tdm__mconn *c, const uint8_t *msg, size_t len);
size_t tdm__mconn_output(struct tdm__mconn *c, bool clear);
/* Closes `c` as if its peer went away (its client's references go when it was the last). */
void tdm__msrv_drop(struct tdm__msrv *s, struct tdm__mconn *c);
/* Answers the waits whose deadline is at or before `now`. */
void tdm__msrv_expire(struct tdm__msrv *s, int64_t now);

/* Serves on the listening socket `lfd` (non-blocking, owned by the caller) with `key` until
 * a shutdown request; `ready_fd` >= 0 is closed once serving starts. Returns 0 or -ENOMEM. */
int tdm__msrv_run(struct tdm__msrv *s, int lfd, const void *key, size_t key_len);

/* ---- Handles ------------------------------------------------------------------------------ */

/* Makes a handle for the manager at `address` and connects it (client.c). `proc`, when not
 * NULL, is the server process the handle started: the handle owns it from then on, and stops
 * it when closed. On failure the caller still owns `proc`. */
int tdm__manager_open(tdm_manager **out, const char *address, const tdm_manager_options *opt,
                      tdm_process *proc);

#endif /* TDM_MANAGER_MANAGER_H */
