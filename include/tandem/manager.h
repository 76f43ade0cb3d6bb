/*
 * tandem/manager.h: managers (Python's multiprocessing.Manager, SyncManager and BaseManager,
 * with remote managers), a server process that holds shared objects which other processes reach
 * through proxies.
 *
 * The server. A manager is one process that holds objects (dictionaries, lists, queues, locks,
 * semaphores, events, conditions, barriers, values, namespaces, and types the program
 * registers) and serves requests on a socket: a private Unix socket by default, or TCP for
 * remote managers, where an authkey is mandatory and both sides prove they know it (the
 * handshake of tandem/conn.h). tdm_manager_start() starts one as a child process under any
 * start method; tdm_manager_serve() turns the calling process into one (the other terminal of a
 * remote manager); tdm_manager_connect() reaches one that runs. The server is one thread and
 * one poll loop: a request that must wait (a lock held, an empty queue, a barrier not full)
 * waits in the server, with its deadline, and never holds up another client.
 *
 * The wire carries data only. Keys, values, list items and queue messages are byte strings
 * (0 bytes or more); integers and floats travel as fixed-size little-endian fields. Nothing a
 * client sends is ever run: a custom type's operations are C functions the server was started
 * with (tdm_manager_type). A malformed, oversized or unknown request gets an error reply and the
 * server goes on serving everyone else.
 *
 * Proxies and references. Each object is created through the manager and comes back as a
 * proxy (tdm_proxy), a handle of this process that holds one reference to the object. A token
 * (tdm_token, 24 plain bytes) names the object anywhere: send it to another process (through a
 * queue, a pipe, a file, another host) and tdm_proxy_open() makes a proxy there, with a
 * reference of its own. An object lives while any proxy of any process refers to it;
 * tdm_proxy_close() releases one. Keep your proxy until the other process has opened its own:
 * a token does not hold the object. The references of a process that dies (a crash, a kill)
 * are dropped by the server when its connections close, and a lock it held is handed to the
 * next acquirer with -EOWNERDEAD.
 *
 * Errors every proxy call can return besides its own:
 *   TDM_EMANAGER  the manager is gone (its process ended, it was shut down, the connection
 *                 broke) or cannot be reached; a later call tries to reconnect, so a manager
 *                 restarted at the same address is reached again (but see -ESTALE);
 *   -ESTALE       the object no longer exists: every proxy released it, or it belonged to an
 *                 earlier run of a manager that was restarted;
 *   TDM_ETYPE     the proxy is not of the type the call needs (a queue call on a lock);
 *   -EMSGSIZE     the request or its reply would be longer than the manager's max_message;
 *   -ENOMEM, -EMFILE (no descriptor left for a connection), -EINVAL for NULL arguments.
 * Timeouts are relative nanoseconds (tandem/clock.h): TDM_FOREVER waits forever, 0 does not
 * wait. A call that waits in the server also needs the server to answer: it returns
 * TDM_EMANAGER at once if the manager dies meanwhile.
 *
 * Threads. A manager handle and its proxies may be used from any number of threads at once.
 * Each thread that is inside a call uses a connection of its own (kept for the next call), so a
 * thread blocked in tdm_mlock_acquire() does not hold up the others. Lock ownership is per
 * thread: an RLock acquired by a thread is released by that thread (as in Python).
 *
 * Fork. A fork child inherits the handle and its proxies: on its first call it opens its own
 * connections and takes references of its own to every proxy it inherited, so the child's
 * proxies stay valid when the parent closes its own. Under spawn and forkserver, pass the
 * manager's address (tdm_manager_address()), its authkey, and tokens.
 */
#ifndef TANDEM_MANAGER_H
#define TANDEM_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"
#include "tandem/process.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_manager tdm_manager;
typedef struct tdm_proxy tdm_proxy;

/* The kinds of objects a manager holds. */
typedef enum tdm_mtype {
  TDM_MDICT = 1,     /* byte-string keys to byte-string values (Python's dict) */
  TDM_MLIST,         /* a sequence of byte strings (list) */
  TDM_MQUEUE,        /* a FIFO of byte strings, optionally bounded and joinable (Queue) */
  TDM_MLOCK,         /* Lock */
  TDM_MRLOCK,        /* RLock */
  TDM_MSEMAPHORE,    /* Semaphore and BoundedSemaphore */
  TDM_MEVENT,        /* Event */
  TDM_MCONDITION,    /* Condition, over a lock or rlock of the manager */
  TDM_MBARRIER,      /* Barrier */
  TDM_MVALUE_INT,    /* Value('q'): a 64-bit integer */
  TDM_MVALUE_FLOAT,  /* Value('d'): a double */
  TDM_MNAMESPACE,    /* Namespace: named byte-string fields */
  TDM_MCUSTOM = 100, /* a type registered with tdm_manager_options.types */
} tdm_mtype;

/* A byte string: `len` bytes at `data`. */
typedef struct tdm_bytes {
  const void *data;
  size_t len;
} tdm_bytes;

/* Several byte strings in one block, returned by calls such as tdm_mdict_keys(): v[0..n-1]
 * point into the same block. Free the whole with one tdm_free(). */
typedef struct tdm_bytes_list {
  size_t n;
  tdm_bytes v[];
} tdm_bytes_list;

/* The name of an object, valid in every process that reaches the same manager run: plain
 * bytes, to copy, send and compare. It holds no reference (see the top of this file). */
typedef struct tdm_token {
  uint64_t instance; /* the manager run that made the object (random) */
  uint64_t id;       /* the object in that run */
  uint32_t type;     /* a tdm_mtype */
  uint32_t reserved; /* 0 */
} tdm_token;

/*
 * A type of object the server holds and the program defines (Python's BaseManager.register):
 * a const table of C functions. The server runs them on its one thread, one call at a time, so
 * they need no locks and must not block. Under spawn and forkserver the table (and the
 * functions) must be static data of the program or of a library it loaded, as a task function
 * must be (see tandem/process.h).
 *   create   makes an object's state from the bytes given to tdm_manager_create(); returns 0
 *            or a negative errno (handed to the creator);
 *   call     runs operation `op` on the state with the request's bytes; it may set *out to a
 *            buffer from malloc() (the server frees it) with *out_len bytes for the reply.
 *            Returns a number >= 0 handed to the caller as the call's result, or a negative
 *            error code (INT_MIN is not one: the caller gets -ERANGE);
 *   destroy  frees the state when the last reference is released or the manager stops.
 */
typedef struct tdm_manager_type {
  const char *name; /* 1 to 64 bytes, unique among the types of one manager */
  int (*create)(void **state, const void *arg, size_t len);
  int (*call)(void *state, uint32_t op, const void *in, size_t in_len, void **out, size_t *out_len);
  void (*destroy)(void *state);
} tdm_manager_type;

/* The most types one manager can be given. */
#define TDM_MANAGER_MAX_TYPES 64

/* The default longest request or reply, in bytes (64 MiB). */
#define TDM_MANAGER_MAX_MESSAGE_DEFAULT ((size_t)64 << 20)

/* Options of tdm_manager_start(), tdm_manager_serve() and tdm_manager_connect(); NULL means
 * all defaults. */
typedef struct tdm_manager_options {
  /* Where the server listens (the forms of tdm_listener_open()): NULL or "unix:" a Unix socket
   * in a new private directory; "unix:/path"; "tcp:HOST:PORT" (port 0 picks one). TCP needs an
   * authkey. Not used by tdm_manager_connect(), which takes the address as an argument. */
  const char *address;
  /* The shared secret (copied). Required for TCP; optional on a Unix socket, whose private
   * directory already keeps other users out. Client and server must give the same one. */
  const void *authkey;
  size_t authkey_len;
  tdm_start_method start; /* tdm_manager_start(): how the server process is made */
  /* Server: custom types, each named by its tdm_manager_type.name. */
  const tdm_manager_type *const *types;
  size_t n_types;
  size_t max_message;      /* the longest request or reply; 0: 64 MiB. Client and server should
                              agree: each refuses what is beyond its own */
  int64_t connect_timeout; /* client: connecting and authenticating; 0: 10 s */
  /* tdm_manager_serve(): called once the server listens, with its address (the real port). */
  void (*ready)(const char *address, void *ud);
  void *ready_ud;
} tdm_manager_options;

/* ---- Managers ----------------------------------------------------------------------------- */

/*
 * Starts a manager server as a child process (a daemon: it dies with the caller) and connects
 * to it (Python's Manager() and BaseManager.start()). On success *out is a handle owned by the
 * caller; tdm_manager_close() or tdm_manager_shutdown() stops the server. Returns 0, or
 * -EINVAL (bad options, TCP without an authkey, a type without a name or a call, two types with
 * one name, more than TDM_MANAGER_MAX_TYPES), an error of tdm_listener_open() in the server
 * (-EADDRINUSE...), of tdm_process_start() (-EAGAIN at the process limit, TDM_ENOTASK for a
 * type table spawn cannot find...), TDM_EMANAGER when the server died before it served,
 * -ETIMEDOUT when it did not answer within connect_timeout, -ENOMEM, -EMFILE. Nothing is left
 * behind on failure.
 */
TDM_API int tdm_manager_start(tdm_manager **out, const tdm_manager_options *opt);

/*
 * Connects to a manager that runs at `address` (Python's BaseManager.connect()), with the
 * options' authkey. On success *out is a handle owned by the caller; closing it drops its
 * references but leaves the server running. Returns 0; TDM_EMANAGER when nobody serves there
 * (the connection was refused or dropped); TDM_EAUTH when the keys differ; -ETIMEDOUT; -EINVAL
 * for a malformed address or TCP without a key; -ENOMEM; -EMFILE.
 */
TDM_API int tdm_manager_connect(tdm_manager **out, const char *address,
                                const tdm_manager_options *opt);

/*
 * Runs a manager server in the calling process until a client calls tdm_manager_shutdown()
 * (Python's get_server().serve_forever()), then frees every object and returns 0. opt->ready,
 * when set, is called once the server listens. Returns early with -EINVAL (as
 * tdm_manager_start()), an error of tdm_listener_open(), -ENOMEM or -EMFILE. The calling
 * thread runs the server; other threads of the process may be clients of it.
 */
TDM_API int tdm_manager_serve(const tdm_manager_options *opt);

/*
 * Asks the server to stop: it answers every waiting call with TDM_EMANAGER, closes every
 * connection and frees every object; later calls of every client return TDM_EMANAGER. When
 * `m` started the server, waits up to `timeout` for its process to end, then kills it. The
 * handle stays to be closed. Returns 0; TDM_EMANAGER when the server was already gone;
 * -ETIMEDOUT when the started server had to be killed.
 */
TDM_API int tdm_manager_shutdown(tdm_manager *m, int64_t timeout);

/*
 * Closes the handle: its connections (the server drops the references this process held, and
 * frees objects no one else refers to) and, when it started the server and nobody shut it
 * down, shuts the server down (waiting up to 1 s, then killing it). Proxies made through `m`
 * must be closed first. Returns 0; NULL is a no-op.
 */
TDM_API int tdm_manager_close(tdm_manager *m);

/* The address clients connect to ("unix:/tmp/tandem-Ab12Cd/socket", "tcp:127.0.0.1:40123"),
 * owned by the handle. */
TDM_API const char *tdm_manager_address(const tdm_manager *m);

/* The server's process id (from its greeting). */
TDM_API pid_t tdm_manager_pid(const tdm_manager *m);

/* ---- Creating objects (each returns a new proxy owned by the caller, or an error above) --- */

/* A new empty dictionary (Manager().dict()). */
TDM_API int tdm_manager_dict(tdm_manager *m, tdm_proxy **out);
/* A new empty list (Manager().list()). */
TDM_API int tdm_manager_list(tdm_manager *m, tdm_proxy **out);
/* A queue of at most `maxsize` messages (0: unbounded). A joinable queue also counts the
 * messages not yet marked done (tdm_mqueue_task_done(), tdm_mqueue_join()). */
TDM_API int tdm_manager_queue(tdm_manager *m, size_t maxsize, bool joinable, tdm_proxy **out);
/* A new unlocked lock (Manager().Lock()): any client thread may release it. */
TDM_API int tdm_manager_lock(tdm_manager *m, tdm_proxy **out);
/* A new unlocked rlock (Manager().RLock()): re-entrant for, and released by, the thread that
 * holds it. */
TDM_API int tdm_manager_rlock(tdm_manager *m, tdm_proxy **out);
/* A semaphore with `value` permits; a bounded one refuses to go beyond it (TDM_EOVERRELEASE). */
TDM_API int tdm_manager_semaphore(tdm_manager *m, unsigned value, bool bounded, tdm_proxy **out);
/* A new event, not set (Manager().Event()). */
TDM_API int tdm_manager_event(tdm_manager *m, tdm_proxy **out);
/* A condition over `lock`, a lock or rlock proxy of the same manager that the condition keeps
 * alive, or NULL for an rlock of its own. */
TDM_API int tdm_manager_condition(tdm_manager *m, tdm_proxy *lock, tdm_proxy **out);
/* A barrier for `parties` callers (1 or more, else -EINVAL). */
TDM_API int tdm_manager_barrier(tdm_manager *m, unsigned parties, tdm_proxy **out);
/* A new 64-bit integer value (Manager().Value('q', initial)). */
TDM_API int tdm_manager_value_int(tdm_manager *m, int64_t initial, tdm_proxy **out);
/* A new double value (Manager().Value('d', initial)). */
TDM_API int tdm_manager_value_float(tdm_manager *m, double initial, tdm_proxy **out);
/* A new namespace without fields (Manager().Namespace()). */
TDM_API int tdm_manager_namespace(tdm_manager *m, tdm_proxy **out);
/* An object of the custom type `type`, made by its create() from the `len` bytes at `arg`.
 * Returns -ENOENT when the server has no such type, or the error create() returned. */
TDM_API int tdm_manager_create(tdm_manager *m, const char *type, const void *arg, size_t len,
                               tdm_proxy **out);

/* ---- Proxies ------------------------------------------------------------------------------ */

/* The token that names the proxy's object (to send to another process). */
TDM_API void tdm_proxy_token(const tdm_proxy *p, tdm_token *out);

/*
 * Makes a proxy in this process for the object `token` names, with a reference of its own
 * (Python's unpickling of a proxy). On success *out is owned by the caller. Returns 0; -ESTALE
 * when the object no longer exists (or the token is from another manager run); -EINVAL for a
 * token whose type is unknown; the errors at the top of this file.
 */
TDM_API int tdm_proxy_open(tdm_proxy **out, tdm_manager *m, const tdm_token *token);

/* Releases the proxy's reference (the object is freed when it was the last) and frees the
 * proxy. Returns 0 (also when the manager is gone: the reference went with it); NULL is a
 * no-op. No thread may use the proxy during or after the call. */
TDM_API int tdm_proxy_close(tdm_proxy *p);

/* The type of the proxy's object (a tdm_mtype). */
TDM_API tdm_mtype tdm_proxy_type(const tdm_proxy *p);

/*
 * Runs operation `op` of a custom type's object with the `len` bytes at `in`. The reply's bytes,
 * if the operation made any, come back in *out (free with tdm_free(); NULL when none) and
 * *out_len; out and out_len may be NULL to drop them. Returns the operation's result (>= 0) or
 * its error (< 0), or an error at the top of this file.
 */
TDM_API int tdm_proxy_call(tdm_proxy *p, uint32_t op, const void *in, size_t len, void **out,
                           size_t *out_len);

/* ---- Dictionaries (TDM_MDICT) --------------------------------------------------------------
 * Values come back in a buffer to free with tdm_free(). A missing key is -ENOENT (KeyError). */

/* The value of `key` in *val (yours to tdm_free()) and *vlen; -ENOENT when it is missing. */
TDM_API int tdm_mdict_get(tdm_proxy *d, const void *key, size_t klen, void **val, size_t *vlen);
/* Sets `key` to a copy of the value (d[key] = value). */
TDM_API int tdm_mdict_set(tdm_proxy *d, const void *key, size_t klen, const void *val, size_t vlen);
/* Removes `key` (del d[key]); -ENOENT when it is missing. */
TDM_API int tdm_mdict_delete(tdm_proxy *d, const void *key, size_t klen);
/* Returns 1 when the key is there, 0 when not, or an error. */
TDM_API int tdm_mdict_contains(tdm_proxy *d, const void *key, size_t klen);
/* Removes the key and hands its value back (pop). */
TDM_API int tdm_mdict_pop(tdm_proxy *d, const void *key, size_t klen, void **val, size_t *vlen);
/* Sets the key to `val` unless it is there; *out gets the value it has then (setdefault). */
TDM_API int tdm_mdict_setdefault(tdm_proxy *d, const void *key, size_t klen, const void *val,
                                 size_t vlen, void **out, size_t *out_len);
/* Sets n pairs at once, atomically: pairs[2i] is a key, pairs[2i+1] its value (update). */
TDM_API int tdm_mdict_update(tdm_proxy *d, const tdm_bytes *pairs, size_t n);
/* The number of keys in *len (len(d)). */
TDM_API int tdm_mdict_len(tdm_proxy *d, size_t *len);
/* The keys, the values, or the items (key, value, key, value...) in one consistent snapshot;
 * keys and values come in the same order. *out is freed with tdm_free(). */
TDM_API int tdm_mdict_keys(tdm_proxy *d, tdm_bytes_list **out);
TDM_API int tdm_mdict_values(tdm_proxy *d, tdm_bytes_list **out);
TDM_API int tdm_mdict_items(tdm_proxy *d, tdm_bytes_list **out);
/* Removes every key (d.clear()). */
TDM_API int tdm_mdict_clear(tdm_proxy *d);

/* ---- Lists (TDM_MLIST) ---------------------------------------------------------------------
 * Indexes count from 0, or from the end when negative (-1 is the last), as in Python. An index
 * out of range is -ERANGE (IndexError); a value not found is -ENOENT (ValueError). */

/* Appends a copy of the item (l.append). */
TDM_API int tdm_mlist_append(tdm_proxy *l, const void *val, size_t len);
/* Appends n items at once: no other client's item lands between them (l.extend). */
TDM_API int tdm_mlist_extend(tdm_proxy *l, const tdm_bytes *items, size_t n);
/* The item at `index` in *val (yours to tdm_free()) and *len (l[i]). */
TDM_API int tdm_mlist_get(tdm_proxy *l, int64_t index, void **val, size_t *len);
/* Replaces the item at `index` (l[i] = value). */
TDM_API int tdm_mlist_set(tdm_proxy *l, int64_t index, const void *val, size_t len);
/* Inserts before `index`, clamped to the list as Python does (insert). */
TDM_API int tdm_mlist_insert(tdm_proxy *l, int64_t index, const void *val, size_t len);
/* Removes the item at `index` and hands it back; val may be NULL to drop it (pop, del). */
TDM_API int tdm_mlist_pop(tdm_proxy *l, int64_t index, void **val, size_t *len);
/* The first index of an item equal to `val` at or after `start`. */
TDM_API int tdm_mlist_index(tdm_proxy *l, const void *val, size_t len, int64_t start,
                            size_t *index);
/* Removes the first item equal to `val` (remove). */
TDM_API int tdm_mlist_remove(tdm_proxy *l, const void *val, size_t len);
/* The number of items in *len (len(l)). */
TDM_API int tdm_mlist_len(tdm_proxy *l, size_t *len);
/* The items start..stop-1, with Python's slice rules (negative bounds count from the end, bounds
 * are clamped, an empty slice is not an error). */
TDM_API int tdm_mlist_slice(tdm_proxy *l, int64_t start, int64_t stop, tdm_bytes_list **out);
/* Removes every item (del l[:]). */
TDM_API int tdm_mlist_clear(tdm_proxy *l);

/* ---- Queues (TDM_MQUEUE) ------------------------------------------------------------------ */

/* Appends a message, waiting up to `timeout` for room in a bounded queue. Returns 0 or
 * -ETIMEDOUT (Full). */
TDM_API int tdm_mqueue_put(tdm_proxy *q, const void *msg, size_t len, int64_t timeout);
/* Takes the oldest message, waiting up to `timeout` for one (free it with tdm_free()). Returns
 * 0 or -ETIMEDOUT (Empty). */
TDM_API int tdm_mqueue_get(tdm_proxy *q, void **msg, size_t *len, int64_t timeout);
/* The number of messages waiting in *n (qsize()). */
TDM_API int tdm_mqueue_qsize(tdm_proxy *q, size_t *n);
/* Joinable queues: marks one message done. Returns 0; TDM_EOVERRELEASE when more were marked
 * than were put; TDM_ETYPE for a queue that is not joinable. */
TDM_API int tdm_mqueue_task_done(tdm_proxy *q);
/* Joinable queues: waits until every message put has been marked done. 0 or -ETIMEDOUT. */
TDM_API int tdm_mqueue_join(tdm_proxy *q, int64_t timeout);

/* ---- Locks and rlocks (TDM_MLOCK, TDM_MRLOCK; also a condition's lock) ----------------------
 * acquire returns 0, -ETIMEDOUT, or -EOWNERDEAD: the caller now holds the lock, whose previous
 * owner's process died holding it (what it protects may be half-updated). release returns 0 or
 * -EPERM when the caller does not hold it (any thread may release a plain lock held by anyone,
 * as in Python; an rlock only by the thread that holds it). */

/* Takes the lock, waiting up to `timeout` (see above for the codes). */
TDM_API int tdm_mlock_acquire(tdm_proxy *l, int64_t timeout);
/* Gives the lock back (see above: -EPERM when the caller may not). */
TDM_API int tdm_mlock_release(tdm_proxy *l);

/* ---- Semaphores (TDM_MSEMAPHORE) ---------------------------------------------------------- */

/* Takes one permit, waiting up to `timeout`. 0 or -ETIMEDOUT. */
TDM_API int tdm_msem_acquire(tdm_proxy *s, int64_t timeout);
/* Gives back n permits (n >= 1). 0, or TDM_EOVERRELEASE for a bounded semaphore. */
TDM_API int tdm_msem_release(tdm_proxy *s, unsigned n);
/* The permits available now in *value. */
TDM_API int tdm_msem_value(tdm_proxy *s, unsigned *value);

/* ---- Events (TDM_MEVENT) ------------------------------------------------------------------ */

/* Sets the event and wakes every waiter (set()). */
TDM_API int tdm_mevent_set(tdm_proxy *e);
/* Clears the event (clear()). */
TDM_API int tdm_mevent_clear(tdm_proxy *e);
/* Returns 1 when set, 0 when not, or an error. */
TDM_API int tdm_mevent_is_set(tdm_proxy *e);
/* Waits up to `timeout` for the event to be set. 0 or -ETIMEDOUT. */
TDM_API int tdm_mevent_wait(tdm_proxy *e, int64_t timeout);

/* ---- Conditions (TDM_MCONDITION) ----------------------------------------------------------
 * tdm_mlock_acquire() and tdm_mlock_release() take and give back the condition's lock. */

/* Releases the lock (every level of an rlock), waits up to `timeout` for a notify, then takes
 * the lock back before it returns: 0 (notified), -ETIMEDOUT, -EOWNERDEAD (as acquire), or -EPERM
 * when the caller does not hold the lock. */
TDM_API int tdm_mcond_wait(tdm_proxy *c, int64_t timeout);
/* Wakes up to n waiters (notify(n)); the caller must hold the lock, else -EPERM. */
TDM_API int tdm_mcond_notify(tdm_proxy *c, unsigned n);
/* Wakes every waiter (notify_all()); the caller must hold the lock, else -EPERM. */
TDM_API int tdm_mcond_notify_all(tdm_proxy *c);

/* ---- Barriers (TDM_MBARRIER) -------------------------------------------------------------- */

/* Waits up to `timeout` for all parties; *index (may be NULL) gets 0..parties-1, a different
 * one for each. Returns 0, or TDM_EBROKEN when the barrier is or becomes broken: a party timed
 * out (its own call returns -ETIMEDOUT and breaks it), a waiting party's process died, or it
 * was aborted or reset. */
TDM_API int tdm_mbarrier_wait(tdm_proxy *b, int64_t timeout, unsigned *index);
/* Breaks the barrier: waiters and later callers get TDM_EBROKEN until a reset. */
TDM_API int tdm_mbarrier_abort(tdm_proxy *b);
/* Back to its first state; current waiters get TDM_EBROKEN. */
TDM_API int tdm_mbarrier_reset(tdm_proxy *b);
/* The number of parties waiting now, and whether it is broken (either may be NULL). */
TDM_API int tdm_mbarrier_state(tdm_proxy *b, unsigned *n_waiting, bool *broken);

/* ---- Values (TDM_MVALUE_INT, TDM_MVALUE_FLOAT) --------------------------------------------- */

/* An integer value's current value in *out (v.value). */
TDM_API int tdm_mvalue_get_int(tdm_proxy *v, int64_t *out);
/* Sets an integer value (v.value = x). */
TDM_API int tdm_mvalue_set_int(tdm_proxy *v, int64_t value);
/* Adds `delta` in one step (no lost updates between clients); *out (may be NULL) gets the new
 * value. Wraps around as unsigned arithmetic does. */
TDM_API int tdm_mvalue_add_int(tdm_proxy *v, int64_t delta, int64_t *out);
/* A float value's current value in *out. */
TDM_API int tdm_mvalue_get_float(tdm_proxy *v, double *out);
/* Sets a float value. */
TDM_API int tdm_mvalue_set_float(tdm_proxy *v, double value);
/* Adds `delta` in one step; *out (may be NULL) gets the new value. */
TDM_API int tdm_mvalue_add_float(tdm_proxy *v, double delta, double *out);

/* ---- Namespaces (TDM_MNAMESPACE) ----------------------------------------------------------
 * Fields are named by strings of 1 to 255 bytes (else -EINVAL); a missing one is -ENOENT
 * (AttributeError). */

/* The field `name` in *val (yours to tdm_free()) and *len (ns.name). */
TDM_API int tdm_mns_get(tdm_proxy *ns, const char *name, void **val, size_t *len);
/* Sets the field `name` to a copy of the value (ns.name = value). */
TDM_API int tdm_mns_set(tdm_proxy *ns, const char *name, const void *val, size_t len);
/* Removes the field `name` (del ns.name). */
TDM_API int tdm_mns_delete(tdm_proxy *ns, const char *name);
/* The field names, in no order. */
TDM_API int tdm_mns_names(tdm_proxy *ns, tdm_bytes_list **out);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_MANAGER_H */
