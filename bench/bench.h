/*
 * bench.h: the benchmark harness shared by every suite of `tandem bench`.
 *
 * A suite (sync_bench.c, process_bench.c, queue_bench.c, manager_bench.c, pool_bench.c,
 * cluster_suite.c) describes each workload as a key, iteration counts and a list of
 * implementations: tandem's first, then its peers. Each implementation is a function that performs
 * one timed run of a given number of operations and reports nanoseconds per operation. The harness
 * selects workloads (--filter), warms every implementation up once, repeats the runs round-robin
 * across implementations (so that a drift of the machine's speed hits them all alike), keeps the
 * median, runs the CPython peer scripts in bench/peers/ and prints the table, the JSON or the CSV,
 * and draws the chart.
 *
 * Helpers for the workloads themselves are here too: memory that forked children share, a
 * "party" that is either a thread or a child process, and a start gate.
 */
#ifndef TDM_BENCH_H
#define TDM_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tandem.h"

/* ---- Workloads ------------------------------------------------------------------------------ */

/*
 * One timed run of `iters` operations of an implementation. On success stores the time per
 * operation in *ns_per_op and returns 0. Returns a negative errno when the run failed (-ENOTSUP:
 * the implementation is not available here, which is reported as skipped, not as a failure).
 * `arg` is the implementation's own argument.
 */
typedef int (*bench_run_fn)(const void *arg, int64_t iters, double *ns_per_op);

typedef struct bench_impl {
  const char *name; /* shown in the table: "tdm_lock", "pthread_mutex pshared+robust" */
  bench_run_fn run;
  const void *arg;
} bench_impl;

#define BENCH_MAX_IMPLS 6
#define BENCH_KEY_MAX   64

/*
 * What the table shows beside the times of a throughput workload, computed from each time:
 * nothing, operations per second (messages, tasks, map items or calls), or bytes per second (one
 * operation moves bytes_per_op bytes).
 */
typedef enum bench_rate {
  BENCH_RATE_NONE,
  BENCH_RATE_MSGS,
  BENCH_RATE_BYTES,
  BENCH_RATE_TASKS,
  BENCH_RATE_ITEMS,
  BENCH_RATE_CALLS
} bench_rate;

typedef struct bench_workload {
  char key[BENCH_KEY_MAX]; /* "lock/contended/2-procs": what --filter matches */
  int64_t iters;           /* operations per run (the quick variant uses quick_iters) */
  int64_t quick_iters;
  /* A script in bench/peers/ that measures CPython's peers of this workload, or NULL. */
  const char *peer_script;
  bench_rate rate;      /* BENCH_RATE_NONE unless set */
  int64_t bytes_per_op; /* BENCH_RATE_BYTES */
  int n_impls;
  bench_impl impls[BENCH_MAX_IMPLS]; /* impls[0] is tandem's */
  /* A peer's goal: the least ratio (its time / tandem's) that meets it, which the table checks
   * against the run; 0: none. (A CPython peer's goal comes from its script.) */
  double goal[BENCH_MAX_IMPLS];
} bench_workload;

/* ---- The run -------------------------------------------------------------------------------- */

typedef struct bench_options {
  int runs;           /* timed runs per measurement; the median is reported */
  bool quick;         /* fewer iterations */
  bool json;          /* a JSON array instead of the table */
  bool csv;           /* CSV instead of the table (not with json) */
  const char *svg;    /* also write a chart to this file; NULL: none */
  bool list;          /* list the selected workload keys, measure nothing */
  bool no_peers;      /* do not run the CPython peer scripts */
  bool verbose;       /* print every run's time on stderr */
  const char *filter; /* run only workloads whose key contains this; NULL: all */
} bench_options;

typedef struct bench_ctx bench_ctx;

/* Makes a context for one run of the program; NULL when out of memory. */
bench_ctx *bench_ctx_new(const bench_options *opt);

/* Returns true when the workload `key` is selected by --filter. */
bool bench_selected(const bench_ctx *ctx, const char *key);

/* Returns true with --quick. */
bool bench_quick(const bench_ctx *ctx);

/* The number of elements of an array (not of a pointer). */
#define BENCH_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Measures every implementation of `w` (when selected) and records the medians. A watchdog
 * bounds the whole workload: if it hangs, the program kills every child it started, says so on
 * stderr and exits with status 3.
 */
void bench_run(bench_ctx *ctx, const bench_workload *w);

/*
 * Builds the workload `key` from its iteration counts, its peer script (or NULL) and impls[0..n-1]
 * (tandem's first; n <= BENCH_MAX_IMPLS), and runs it with bench_run().
 */
void bench_measure(bench_ctx *ctx, const char *key, int64_t iters, int64_t quick_iters,
                   const char *peer_script, const bench_impl *impls, size_t n);

/* bench_measure() of an array of implementations. */
#define BENCH_MEASURE(ctx, key, iters, quick_iters, peer_script, impls) \
  bench_measure((ctx), (key), (iters), (quick_iters), (peer_script), (impls), BENCH_COUNT(impls))

/*
 * Runs the peer scripts that the measured workloads named, prints the table (or the JSON, or the
 * CSV), writes the chart when one was asked for, and frees the context. Returns the program's
 * exit status: 0; 1 when some measurement failed or the chart could not be written; 2 when no
 * workload matched --filter.
 */
int bench_finish(bench_ctx *ctx);

/* ---- Helpers for workloads ------------------------------------------------------------------ */

/* Returns zeroed memory in a MAP_SHARED|MAP_ANONYMOUS mapping (kept by forked children). */
void *bench_shared_alloc(size_t size);

/* Unmaps memory from bench_shared_alloc(). */
void bench_shared_free(void *p, size_t size);

/* A participant in a workload: a tandem thread or a forked child process. */
typedef struct bench_party {
  bool process;
  pid_t pid;
  tdm_thread *thread;
} bench_party;

/*
 * Starts fn(arg) in a new thread or, with `process`, in a forked child that then exits with
 * status 0 (the caller's state, with everything in shared memory, is what the child sees).
 * The process must have one thread when it forks. A child dies with the program (it gets
 * SIGKILL if the program ends) and is killed by the watchdog. Returns 0 or a negative errno.
 */
int bench_party_start(bench_party *p, bool process, void (*fn)(void *), void *arg);

/* Waits for the party to end. Returns 0, or -ECHILD when a child did not exit with status 0. */
int bench_party_join(bench_party *p);

/*
 * Waits for the child `pid` to end (retrying after EINTR) and reaps it. Returns 0 when it exited
 * with status 0, -ECHILD when it ended otherwise, or the negative errno of waitpid().
 */
int bench_child_wait(pid_t pid);

/*
 * A start gate in shared memory (zero it to initialise). Parties call bench_gate_arrive(),
 * which returns once the gate opens; the timing side calls bench_gate_open(n), which waits until
 * n parties have arrived, opens the gate and returns the time at which it did.
 */
typedef struct bench_gate {
  uint32_t arrived;
  uint32_t open;
} bench_gate;

void bench_gate_arrive(bench_gate *g);
int64_t bench_gate_open(bench_gate *g, uint32_t n);

/* Returns the median of v[0..n-1] (n > 0); v is reordered. */
double bench_median(double *v, int n);

/* ---- Suites --------------------------------------------------------------------------------- */

/* Descriptor helpers for suites whose peers talk over pipes and sockets. bench_write_full()
 * writes all n bytes (0 or a negative errno); bench_read_full() reads exactly n bytes (0,
 * TDM_EEOF at end of file before the first byte, -EPROTO inside a record, or a negative
 * errno); bench_close_fd() closes *fd if it is open and sets it to -1. */
int bench_write_full(int fd, const void *buf, size_t n);
int bench_read_full(int fd, void *buf, size_t n);
void bench_close_fd(int *fd);

/* Locks, conditions, semaphores and events (sync_bench.c). */
void bench_sync_suite(bench_ctx *ctx);

/* Process start + join per start method, with a small and a 1 GiB parent (process_bench.c). */
void bench_process_suite(bench_ctx *ctx);

/* Queue throughput (64 bytes, 1 MiB) and ping-pong between processes (queue_bench.c). */
void bench_queue_suite(bench_ctx *ctx);

/* Manager proxy round trips (dict get and set, value add) from 1 and 8 client processes
 * (manager_bench.c). */
void bench_manager_suite(bench_ctx *ctx);

/* Pools: map, CPU-bound tasks, waiting tasks, submit-and-wait, per backend (pool_bench.c). */
void bench_pool_suite(bench_ctx *ctx);

/* The cluster backend on 1-4 worker ranks against the process backend: map and CPU-bound
 * tasks, each cluster run a job of tandem-cluster-bench under mpirun (cluster_suite.c). */
void bench_cluster_suite(bench_ctx *ctx);

#endif /* TDM_BENCH_H */
