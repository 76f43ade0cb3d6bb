/*
 * tandem/pool.h: pools of workers that run tasks (Python's multiprocessing.Pool, ThreadPool,
 * concurrent.futures.ThreadPoolExecutor and ProcessPoolExecutor), where threads or processes
 * is one option.
 *
 * A pool runs tasks on its workers: threads of the calling process (TDM_POOL_THREADS),
 * processes (TDM_POOL_PROCESSES, under any start method), threads sized to the work
 * (TDM_POOL_AUTO), or the ranks of an MPI job (TDM_POOL_CLUSTER, in libtandem-mpi: see
 * tandem/cluster.h). tdm_pool_submit() runs one function on one argument and returns a future
 * (future.h); tdm_pool_map() runs a function over an array of fixed-size items into an ordered
 * output array; tdm_pool_imap() yields results while later items still run, with a bounded
 * window, from an array or from a source callback of any length.
 *
 * Failures. A process worker that crashes, is killed or exits in the middle of a task fails
 * that task alone (TDM_EWORKER with its signal or exit status), or runs it again on another
 * worker under the retry policy; the worker is replaced and the pool goes on. A task past its
 * timeout on a process worker is stopped by killing and replacing the worker (TDM_ETASKTIMEOUT).
 * Every submitted task ends exactly once: DONE, FAILED with a reason or CANCELLED, and it is
 * started more than once only under the retry policy, which the future records
 * (tdm_task_error.attempts). Threads share the caller's process: a thread task that crashes
 * crashes the program, and a thread task past its timeout or cancelled is only asked to stop
 * (tdm_task_cancelled()).
 *
 * Functions across processes. Task and item functions are plain C function pointers. Under
 * fork they are valid as they are; under spawn and forkserver a worker finds them as
 * tdm_process_start() finds its function (the loaded object and the offset in it), so they
 * must live in the program or in a shared library, not in code generated at run time.
 * Arguments and results are bytes, copied (threads too, so that switching backends changes
 * nothing); map arrays in a tandem shared segment (shm.h) are used in place by process
 * workers, other arrays are copied through shared memory.
 *
 * Processes and signals. Process workers are daemon children (process.h): they die with the
 * parent however it ends, they may not start children, and they ignore SIGINT, so Ctrl-C in a
 * terminal reaches the parent alone. If the parent dies of it, its workers die with it. A
 * program that handles SIGINT may call tdm_pool_interrupt() from its handler: the pool cancels
 * its pending work and stops its workers.
 *
 * The pool starts one supervisor thread in the calling process (it watches workers, deadlines
 * and, for TDM_POOL_AUTO, the load); a thread pool's workers are threads too.
 *
 * Thread safety. Every function may be called from any thread at once, except tdm_pool_close(),
 * after which the handle is gone. A task may submit to its own pool (threads) but must not wait
 * for work that needs its own worker. Fork: a fork child must not use its parent's pools.
 */
#ifndef TANDEM_POOL_H
#define TANDEM_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"
#include "tandem/future.h"
#include "tandem/process.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_pool tdm_pool;

/*
 * A task: runs with the argument bytes given to tdm_pool_submit() (`arg` is NULL when `size` is
 * 0) and returns 0 for success or any other value for failure (tdm_task_error.status). Its
 * result is what it passed to tdm_task_set_result().
 */
typedef int (*tdm_task_fn)(tdm_task *task, const void *arg, size_t size);

/*
 * A map item: reads one input item at `in` and writes one output item at `out` (the sizes given
 * to the map call; `out` is zeroed before the call), with the map's argument bytes `arg`
 * (NULL when none). Returns 0, or any other value to fail this item alone. Item i lies at
 * in + i * in_size: it is as aligned as the caller's array and item size make it (process
 * copies keep each item's offset from a page boundary), so pass sizes that keep the alignment
 * the items need, or use memcpy.
 */
typedef int (*tdm_map_fn)(const void *in, void *out, const void *arg);

/* Runs once in each worker before its first task; 0 for success. Failure: see initializer. */
typedef int (*tdm_pool_init_fn)(const void *arg, size_t size);

/* Runs once in each worker as it ends in an orderly way (shutdown or recycling). */
typedef void (*tdm_pool_fini_fn)(const void *arg, size_t size);

/* Where the workers run. */
typedef enum tdm_pool_backend {
  TDM_POOL_THREADS = 0, /* threads of the calling process */
  TDM_POOL_PROCESSES,   /* child processes (daemons), under tdm_pool_options.start */
  TDM_POOL_AUTO,        /* threads, as many as the work needs: see docs/pool.md */
  TDM_POOL_CLUSTER      /* the ranks of an MPI job (libtandem-mpi, tandem/cluster.h) */
} tdm_pool_backend;

/* Options for tdm_pool_open(); NULL means all defaults. */
typedef struct tdm_pool_options {
  tdm_pool_backend backend;
  tdm_start_method start;       /* processes: how workers start; TDM_START_DEFAULT: the
                                   process's current method (process.h) */
  unsigned workers;             /* workers; 0: tdm_cpu_count() for processes, Python's
                                   min(32, cpus + 4) for threads; for TDM_POOL_AUTO the most
                                   it may grow to (0: 64 or 8 x cpus, whichever is more); for
                                   TDM_POOL_CLUSTER the worker ranks to use (0, or more than
                                   the job has: all of them) */
  tdm_pool_init_fn initializer; /* NULL for none. If it fails in a worker at open, open fails
                                   with TDM_EINIT and nothing is left running; if it fails in a
                                   replacement worker later, the pool is broken: pending and
                                   new tasks fail with TDM_EINIT */
  tdm_pool_fini_fn finalizer;   /* NULL for none */
  const void *init_arg;         /* bytes given to initializer and finalizer (copied) */
  size_t init_size;
  uint64_t max_tasks_per_worker; /* a worker that has run this many tasks (map chunks count as
                                    one each) ends and is replaced; 0: never */
  int64_t task_timeout;          /* default for each task: a task still running this long
                                    after it started fails with TDM_ETASKTIMEOUT (process
                                    maps: per item; thread maps have none);
                                    0 or TDM_FOREVER: none */
  unsigned retries;              /* lost-task policy: a task whose process worker died under
                                    it runs again, up to this many more times, before it fails
                                    with TDM_EWORKER; 0: fail at once */
  bool break_on_worker_death;    /* Python's ProcessPoolExecutor: the first worker death the
                                    pool did not cause itself (a crash, an exit, a kill from
                                    outside; not a timeout, cancel or recycling) breaks the
                                    pool, and every unfinished and later task fails with
                                    TDM_EBROKEN (the one its worker died under too);
                                    retries do not apply */
  size_t max_result;             /* processes: the largest argument or result in bytes;
                                    0: 64 MiB */
  const char *name;              /* worker names are "<name>-<n>"; NULL: "PoolWorker" */
  unsigned rank_workers;         /* cluster: 0: each worker rank runs one task at a time in
                                    its own process; n: each worker rank runs a pool of its
                                    own with n workers of rank_backend (hybrid), which applies
                                    start, timeouts, retries and recycling as on one machine */
  tdm_pool_backend rank_backend; /* cluster with rank_workers: TDM_POOL_THREADS,
                                    TDM_POOL_PROCESSES or TDM_POOL_AUTO */
} tdm_pool_options;

/*
 * Opens a pool and starts its workers (TDM_POOL_AUTO starts one per CPU and grows), waiting
 * until each has run its initializer. Returns 0; -EINVAL for an unknown backend or start
 * method, a negative task_timeout other than TDM_FOREVER, workers over 4094, init_arg NULL
 * with init_size > 0, or a name that is empty or over 200 bytes;
 * TDM_EINIT when an initializer failed (nothing is left running); -ENOMEM; -EAGAIN when a
 * thread or process cannot be started; TDM_EDAEMON when called in a daemon process with the
 * process backend; TDM_ECHILDINIT when a worker died before it was ready; the other errors of
 * tdm_process_start(). TDM_POOL_CLUSTER (tandem/cluster.h): TDM_ECLUSTER when the program
 * does not link libtandem-mpi, was not started by mpirun, has no worker rank, or is a worker
 * rank itself; TDM_EMISMATCH when a rank runs another build; -EBUSY while another cluster pool
 * is open; -EINVAL for rank_backend TDM_POOL_CLUSTER.
 */
TDM_API int tdm_pool_open(tdm_pool **out, const tdm_pool_options *opt);

/* Per-task options for tdm_pool_submit(); NULL means the pool's defaults. */
typedef struct tdm_task_options {
  int64_t timeout; /* 0: the pool's task_timeout; TDM_FOREVER: none for this task */
} tdm_task_options;

/*
 * Submits `fn` with a copy of the `size` bytes at `arg` and returns its future in *out (the
 * caller frees it with tdm_future_free()). Never blocks on the workers: tasks wait in the pool.
 * Returns 0; -EPIPE after shutdown or terminate; TDM_EBROKEN or TDM_EINIT when the pool is
 * broken; -EMSGSIZE when size is over max_result (processes); TDM_ENOTASK when fn lies in no
 * loaded object (processes); -EINVAL for fn NULL or a negative timeout other than
 * TDM_FOREVER; -ENOMEM. On failure *out is untouched. When a process pool cannot start any
 * worker (the process limit, descriptors), its tasks fail with that start's error (-EAGAIN,
 * -EMFILE, TDM_ECHILDINIT) rather than wait forever; later work tries again.
 */
TDM_API int tdm_pool_submit(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size,
                            const tdm_task_options *opt, tdm_future **out);

/* ---- map and imap ---------------------------------------------------------------------------- */

/* Options for tdm_pool_map() and tdm_pool_imap(); NULL means all defaults. */
typedef struct tdm_map_options {
  size_t chunk;    /* items per task; 0: automatic (split again only when workers run
                      dry; see docs/pool.md) */
  const void *arg; /* bytes given to every call of the item function (threads: this very
                      pointer; processes: a copy) */
  size_t arg_size;
  int *errors;    /* map: NULL, or n ints that receive each item's outcome: 0, the
                     function's non-zero return, TDM_EWORKER (its worker died on it),
                     TDM_ETASKTIMEOUT, or -ECANCELED (not run: the pool was terminated) */
  size_t window;  /* imap: items in flight at most (read from the source, not yet
                     yielded); 0: 64 x chunk, at least 4 x workers items */
  bool unordered; /* imap: yield items as they end rather than in input order */
} tdm_map_options;

/*
 * Runs `fn` on each of the `n` items of `in_size` bytes at `in`, writing item i's output of
 * `out_size` bytes at out + i * out_size; returns when every item has run. On threads the
 * calling thread runs items too. Process workers use arrays that lie in a tandem shared segment
 * (shm.h) in place; other arrays are copied in and out through a scratch segment, which the
 * pool keeps for its next map (its memory stays until the pool closes).
 * `in_size` may be 0 (no input), and so may `out_size` (no output; out may be NULL).
 * Returns 0 when every item returned 0; TDM_ETASK when some failed (the other outputs are all
 * written; options.errors says which); -EPIPE after shutdown; TDM_EBROKEN; TDM_EINIT;
 * -ECANCELED when the pool was terminated meanwhile; -EINVAL for fn NULL, in or out NULL with
 * items of non-zero size, or sizes that overflow; -ENOMEM; -ENOSPC (no shared memory for the
 * copy).
 */
TDM_API int tdm_pool_map(tdm_pool *p, tdm_map_fn fn, const void *in, size_t in_size, void *out,
                         size_t out_size, size_t n, const tdm_map_options *opt);

/* An iterator over map results as they become ready (Python's imap and imap_unordered). */
typedef struct tdm_imap tdm_imap;

/*
 * A source of input items for tdm_pool_imap_source(): writes the next item (in_size bytes) at
 * `item` and returns 0, or returns TDM_EEOF when there are no more, or another negative code to
 * stop the imap with that error. It runs in the thread that calls tdm_imap_next().
 */
typedef int (*tdm_source_fn)(void *ctx, void *item);

/* One result of an imap: the item's index in the input, its output and its outcome. */
typedef struct tdm_imap_item {
  size_t index;    /* position in the input, from 0 */
  const void *out; /* out_size bytes, valid until the next call on the iterator */
  int error;       /* 0, or the item's outcome as in tdm_map_options.errors */
} tdm_imap_item;

/*
 * Opens an imap over the `n` items at `in` (which must stay valid until the iterator is
 * closed). Items are read and submitted lazily, at most options.window in flight, so the
 * memory used is bounded whatever n is. Returns 0; the errors of tdm_pool_map() at submission.
 */
TDM_API int tdm_pool_imap(tdm_imap **out, tdm_pool *p, tdm_map_fn fn, const void *in,
                          size_t in_size, size_t out_size, size_t n, const tdm_map_options *opt);

/*
 * Opens an imap over the items that `source` gives (see tdm_source_fn), which may never end.
 */
TDM_API int tdm_pool_imap_source(tdm_imap **out, tdm_pool *p, tdm_map_fn fn, tdm_source_fn source,
                                 void *ctx, size_t in_size, size_t out_size,
                                 const tdm_map_options *opt);

/*
 * Gives the next result in *item: in input order, or as items end with options.unordered.
 * Waits for at most `timeout`. Returns 0; TDM_EEOF after the last item; -ETIMEDOUT; the
 * source's error (once, after every item read before it; TDM_EEOF after that); -ECANCELED, -EPIPE,
 * TDM_EBROKEN, TDM_EINIT when the pool stopped. Item failures are not errors of this call:
 * they are in item->error. Use one iterator from one thread at a time.
 */
TDM_API int tdm_imap_next(tdm_imap *it, int64_t timeout, tdm_imap_item *item);

/*
 * Closes the iterator: items not yet started are dropped, running ones finish unseen. Returns 0.
 * NULL is a no-op.
 */
TDM_API int tdm_imap_close(tdm_imap *it);

/* ---- Ending ---------------------------------------------------------------------------------- */

/*
 * Stops accepting tasks (later submits fail with -EPIPE) and, with `cancel_pending`, cancels
 * every task not yet started (Python's shutdown(wait, cancel_futures)). With `wait`, returns
 * once every remaining task has ended and the workers have run their finalizers and ended;
 * otherwise at once, the workers ending by themselves. May be called again (to wait). Returns
 * 0.
 */
TDM_API int tdm_pool_shutdown(tdm_pool *p, bool wait, bool cancel_pending);

/*
 * Ends the pool now (Python's Pool.terminate()): pending tasks end CANCELLED; process workers
 * are killed and their running tasks end CANCELLED; thread workers are asked to stop
 * (tdm_task_cancelled()) and their running tasks, when they return, end CANCELLED. A map
 * running meanwhile returns -ECANCELED. Returns once every worker process is reaped and every
 * thread has returned. Later submits fail with -EPIPE. Returns 0.
 */
TDM_API int tdm_pool_terminate(tdm_pool *p);

/*
 * For a SIGINT (or other) handler: async-signal-safe. Asks the supervisor to terminate the pool
 * (as tdm_pool_terminate(), without waiting). Returns 0.
 */
TDM_API int tdm_pool_interrupt(tdm_pool *p);

/*
 * Shuts the pool down (waiting for the tasks left, as tdm_pool_shutdown(p, true, false)) and
 * frees it. Futures of its tasks stay valid until freed. Returns 0. NULL is a no-op.
 */
TDM_API int tdm_pool_close(tdm_pool *p);

/* ---- Information ----------------------------------------------------------------------------- */

/* What a pool has done since it opened (tdm_pool_stats_get()). */
typedef struct tdm_pool_stats {
  uint64_t submitted;        /* tasks submitted (map and imap chunks not included) */
  uint64_t done;             /* tasks and map chunks that ended DONE */
  uint64_t failed;           /* ended FAILED (task returned non-zero, worker died, timeout) */
  uint64_t cancelled;        /* ended CANCELLED */
  uint64_t retried;          /* restarts under the retry policy */
  uint64_t timed_out;        /* tasks and map items past their timeout */
  uint64_t items;            /* map and imap items run */
  uint64_t workers_started;  /* including the first ones */
  uint64_t workers_replaced; /* started for a worker that died, timed out or was recycled */
  uint64_t workers_lost;     /* workers that died (crash, signal, exit) */
  unsigned workers;          /* workers now */
  uint64_t busy_ns;          /* wall time workers spent running tasks, summed */
  uint64_t cpu_ns;           /* CPU time of those tasks, summed */
  int64_t uptime_ns;         /* since open */
} tdm_pool_stats;

/* Fills *s. busy_ns / (uptime_ns x workers) is the pool's use; cpu_ns / busy_ns is near 1
 * for CPU-bound tasks and near 0 for tasks that mostly wait. The figures are sums kept without
 * a lock: a thread worker adds its busy and CPU time when it goes idle (one clock reading per
 * busy stretch, not per task), so they may trail the futures that have ended by a moment. */
TDM_API void tdm_pool_stats_get(tdm_pool *p, tdm_pool_stats *s);

/* One worker's figures (tdm_pool_worker_stats()). */
typedef struct tdm_pool_worker_stats {
  pid_t pid;        /* the worker process, or the thread's kernel id */
  uint64_t tasks;   /* tasks and chunks run */
  uint64_t busy_ns; /* wall time spent running them */
  uint64_t cpu_ns;  /* CPU time spent running them */
  bool busy;        /* running one now */
} tdm_pool_worker_stats;

/*
 * Fills up to `cap` entries of `out` with the current workers' figures and returns how many
 * workers there are (which may exceed cap).
 */
TDM_API size_t tdm_pool_worker_stats_get(tdm_pool *p, tdm_pool_worker_stats *out, size_t cap);

/* The backend in use. */
TDM_API tdm_pool_backend tdm_pool_backend_get(const tdm_pool *p);

/* "threads", "processes", "auto" or "cluster"; NULL for a value that is not a backend. */
TDM_API const char *tdm_pool_backend_name(tdm_pool_backend b);

/*
 * TDM_POOL_AUTO: what the pool has measured: true when its recent tasks spent most of their
 * time on the CPU (cpu_ns / busy_ns at least one half), false when they mostly waited.
 * *target (if not NULL) receives the number of workers the pool aims for. Other backends:
 * the same measure over every task they ran (false before any), with *target their fixed
 * size.
 */
TDM_API bool tdm_pool_cpu_bound(tdm_pool *p, unsigned *target);

#ifdef __cplusplus
}
#endif

#endif
