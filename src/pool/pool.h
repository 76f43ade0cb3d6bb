/*
 * pool/pool.h: what the pool's front end (pool.c, future.c, imap.c) and its backends
 * (threads.c, procs.c) share. Private to the library.
 *
 * The front end validates calls, makes futures, keeps the statistics and the policies; a
 * backend runs tasks and maps. A backend is a const table of functions (struct tdm__backend);
 * nothing above the table knows which one runs.
 *
 * A future's life, and who may move it (every move is a compare-and-swap on f->state, so each
 * happens once):
 *   PENDING -> RUNNING      the backend, when a worker starts the task (tdm__future_start())
 *   RUNNING -> PENDING      the process backend, when a worker died under the task and the
 *                           retry policy runs it again (tdm__future_retry())
 *   any non-final -> final  whoever ends it (tdm__future_finish()): the backend, or the caller
 *                           of tdm_future_cancel(), or terminate
 * A backend that finds a future already final when it pops it (cancelled while pending) drops
 * it without running it.
 *
 * References: a future starts with two, the caller's and the backend's. The backend holds its
 * reference for as long as it holds the future anywhere (a queue, a list, a worker) and drops it
 * with tdm__future_unref() when it lets go: after ending it, or when it finds it already ended
 * (cancelled while pending). tdm__future_finish() drops no reference. The caller's goes with
 * tdm_future_free().
 */
#ifndef TDM_POOL_POOL_H
#define TDM_POOL_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "base/internal.h"
#include "tandem/pool.h"

/* ---- Futures --------------------------------------------------------------------------------- */

struct tdm__callback; /* future.c */

/* Arguments up to this size live inside the future: no allocation. */
#define TDM__INLINE_ARG 48

struct tdm_task {
  struct tdm_future *f; /* thread backend: the future; NULL in a process worker */
  void *result;         /* set by tdm_task_set_result() (malloc'd) */
  size_t result_size;
  size_t max_result;               /* 0: no limit */
  const _Atomic bool *cancel_flag; /* tdm_task_cancelled() reads it; NULL: never */
  const _Atomic bool *pool_stop;   /* and this one, the pool's terminate; NULL: none */
};

struct tdm_future {
  uint32_t state;   /* tdm_future_state, | TDM__FINISHING while the outcome is written; the
                       futex word waiters sleep on (__atomic builtins) */
  uint32_t waiters; /* threads asleep on state (__atomic builtins) */
  _Atomic int refs;
  _Atomic bool cancel;            /* asked to stop (tdm_task_cancelled()) */
  _Atomic bool has_cbs;           /* a callback or watcher was added: the ender must take mu */
  pthread_mutex_t mu;             /* guards cbs, watchers, fired */
  struct tdm__callback *cbs;      /* user callbacks, run outside mu */
  struct tdm__callback *watchers; /* tdm_wait() and as_completed, run under mu */
  bool fired;                     /* the final state is out: callbacks run at once */
  tdm_pool *pool;                 /* NULL once the pool's reference is dropped */
  struct tdm_future *next;        /* the backend's links while it holds the future */
  /* The task. */
  tdm_task_fn fn;
  void *arg; /* inline_arg, or malloc'd */
  size_t size;
  int64_t timeout;  /* resolved: TDM_FOREVER for none */
  int64_t deadline; /* set when it starts running; TDM_FOREVER for none */
  uint64_t id;      /* unique in the pool, from 1 */
  int worker;       /* backend's index of the worker running it, -1 */
  unsigned char inline_arg[TDM__INLINE_ARG];
  /* The outcome, written before the final state is published. */
  void *result;
  size_t result_size;
  int code;   /* tdm_task_error.code */
  int status; /* tdm_task_error.status */
  _Atomic unsigned attempts;
  bool internal; /* an imap chunk: not counted in stats.submitted */
};

/* Bits of state besides the tdm_future_state (TDM__STATE_MASK): FINISHING while the one thread
 * that ends the future writes the outcome; CANCEL_REQ on a RUNNING future whose cancel was asked
 * of a thread (it then ends CANCELLED, whatever it returns). */
#define TDM__STATE_MASK 0x0fu
#define TDM__FINISHING  0x10u
#define TDM__CANCEL_REQ 0x20u

/*
 * PENDING -> RUNNING. False when the future is no longer pending (cancelled, or ended by
 * terminate): the caller must drop it, not run it. Counts an attempt.
 */
bool tdm__future_start(struct tdm_future *f);

/* RUNNING -> PENDING, for a retry. False when it is no longer running. */
bool tdm__future_retry(struct tdm_future *f);

/*
 * Asks a RUNNING future to end CANCELLED when its task returns, and sets f->cancel (what
 * tdm_task_cancelled() reads). -EINPROGRESS when asked (now or before); -EALREADY when it has
 * ended; -EAGAIN when it is PENDING.
 */
int tdm__future_request_cancel(struct tdm_future *f);

/*
 * Ends the future: writes the outcome (takes ownership of `result`, tdm__alloc'd, freed if the
 * future had already ended), publishes `state` (DONE, FAILED or CANCELLED), wakes the waiters,
 * runs the watchers and callbacks, and counts it in the pool's statistics. Drops no reference.
 * Returns false (and frees result) when the future had already ended.
 */
bool tdm__future_finish(struct tdm_future *f, tdm_future_state state, int code, int status,
                        void *result, size_t result_size);

/* PENDING -> CANCELLED (as tdm__future_finish() would), only if it is still pending. */
bool tdm__future_cancel_pending(struct tdm_future *f);

/* Adds and drops references. The last drop frees the future. */
void tdm__future_ref(struct tdm_future *f);
void tdm__future_unref(struct tdm_future *f);

/*
 * A new future for `fn(arg, size)` (arg copied), with two references, or NULL (-ENOMEM).
 * `timeout` is the resolved timeout (TDM_FOREVER for none).
 */
struct tdm_future *tdm__future_new(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size,
                                   int64_t timeout);

/* ---- Maps ------------------------------------------------------------------------------------ */

/* One tdm_pool_map() call, as the front end hands it to a backend. */
struct tdm__map {
  tdm_map_fn fn;
  const void *arg; /* the caller's bytes (threads use this pointer) */
  size_t arg_size;
  const unsigned char *in;
  size_t in_size;
  unsigned char *out;
  size_t out_size;
  size_t n;
  size_t chunk;          /* 0: automatic */
  int *errors;           /* n entries, or NULL when the caller does not want them */
  _Atomic size_t failed; /* items whose outcome is not 0 */
};

/* ---- Backends -------------------------------------------------------------------------------- */

struct tdm__backend {
  const char *name;
  /* Starts the workers; waits for their initializers. 0, or an error with nothing left. */
  int (*open)(tdm_pool *p);
  /* Takes the backend's reference on f (PENDING) and runs it some time. 0, or an error (then
   * the future was not taken: the front end ends it and drops that reference). */
  int (*submit)(tdm_pool *p, struct tdm_future *f);
  /* Runs every item of m; returns when all have run: 0 (outcomes in m->errors), or an error
   * for the whole map (-ECANCELED, TDM_EBROKEN, -ENOMEM...). */
  int (*map)(tdm_pool *p, struct tdm__map *m);
  /* f was RUNNING and tdm_future_cancel() was called: 0 when the backend stopped it and
   * ended it CANCELLED; -EINPROGRESS when it only asked it to stop (threads); -EALREADY when
   * it had ended meanwhile; -EAGAIN when it went back to PENDING (a retry): the front end
   * then tries again. */
  int (*cancel_running)(tdm_pool *p, struct tdm_future *f);
  /* f was PENDING and has just been ended CANCELLED by the front end: make sure it never
   * starts (process workers may hold it in their queue). May be NULL. */
  void (*cancelled_pending)(tdm_pool *p, struct tdm_future *f);
  /* No more submits (the front end refuses them already). With cancel_pending, end every
   * pending task CANCELLED. With wait, return once every task has ended and every worker has
   * run its finalizer and ended. */
  void (*shutdown)(tdm_pool *p, bool wait, bool cancel_pending);
  /* Stops everything now (see tdm_pool_terminate()); returns once the workers are gone. */
  void (*terminate)(tdm_pool *p);
  /* Async-signal-safe: ask for terminate, do not wait. */
  void (*interrupt)(tdm_pool *p);
  /* The caller waits forever for f, which is PENDING and has no timeout: run it in the calling
   * thread if the backend can (threads). True when it ran it. May be NULL. */
  bool (*run_inline)(tdm_pool *p, struct tdm_future *f);
  /* Fills up to cap entries; returns the number of workers. */
  size_t (*worker_stats)(tdm_pool *p, tdm_pool_worker_stats *out, size_t cap);
  /* The auto measure (tdm_pool_cpu_bound()). NULL for a pool of fixed size: the front end's
   * tdm__pool_fixed_cpu_bound(). */
  bool (*cpu_bound)(tdm_pool *p, unsigned *target);
  /* Frees the backend's state, after shutdown(wait) or terminate. */
  void (*close)(tdm_pool *p);
};

extern const struct tdm__backend tdm__backend_threads;   /* threads.c: THREADS and AUTO */
extern const struct tdm__backend tdm__backend_processes; /* procs.c */
/* The cluster backend lives in libtandem-mpi, which registers it through the SPI (spi.h). */

/* ---- The pool -------------------------------------------------------------------------------- */

struct tdm__pool_counters {
  _Atomic uint64_t submitted, done, failed, cancelled, retried, timed_out, items;
  _Atomic uint64_t workers_started, workers_replaced, workers_lost;
  _Atomic uint64_t busy_ns, cpu_ns;
};

struct tdm_pool {
  uint32_t magic;
  const struct tdm__backend *be;
  tdm_pool_options opt; /* resolved: workers set, name set, init_arg copied, timeouts
                           TDM_FOREVER for none, max_result set */
  void *init_copy;      /* the copy behind opt.init_arg */
  char *name_copy;
  _Atomic bool closed;         /* shutdown or terminate: submits fail with -EPIPE */
  _Atomic int entering;        /* callers handing work to the backend now (pool.c) */
  _Atomic int broken;          /* 0, or TDM_EBROKEN / TDM_EINIT: every task fails with it */
  _Atomic uint64_t broken_why; /* code | status << 32 of the break that won (pool.c) */
  _Atomic uint64_t next_id;
  int64_t opened_ns;
  struct tdm__pool_counters c;
  void *be_state; /* the backend's */
};

/* Whether tasks run in another process (processes, cluster): their functions travel as
 * (loaded object, offset), and max_result bounds arguments and results. */
static inline bool tdm__pool_remote(const tdm_pool *p) {
  return p->opt.backend == TDM_POOL_PROCESSES || p->opt.backend == TDM_POOL_CLUSTER;
}

/* tdm_pool_submit() with a resolved timeout; `internal` for imap's chunks (not counted as
 * submitted). */
int tdm__pool_submit_internal(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size,
                              int64_t timeout, bool internal, tdm_future **out);

/* What tdm_pool_map() and tdm_pool_imap() check alike: fn, the input array, the argument.
 * 0 or -EINVAL. */
int tdm__map_check(tdm_map_fn fn, const void *in, size_t in_size, size_t n,
                   const tdm_map_options *opt);

/* Marks the pool broken with `code` and the status its tasks then fail with (TDM_EINIT: the
 * initializer's return value; first one wins). tdm__pool_broken_status() gives that status. */
void tdm__pool_break(tdm_pool *p, int code, int status);
int tdm__pool_broken_status(tdm_pool *p);

/* tdm_pool_cpu_bound() of a pool of fixed size: its workers' count, and whether the tasks it ran
 * spent at least half their wall time on the CPU (false before any has run). */
bool tdm__pool_fixed_cpu_bound(tdm_pool *p, unsigned *target);

/* The time (ns) CLOCK_THREAD_CPUTIME_ID of the calling thread. */
int64_t tdm__thread_cpu_ns(void);

#endif
