/*
 * pool_bench.c: pools. tandem's pool on each backend (threads, processes, auto) against GLib's
 * GThreadPool (glib_peer.c), OpenMP (omp_peer.c), a sequential loop and CPython's
 * multiprocessing.Pool, ThreadPool, ProcessPoolExecutor and ThreadPoolExecutor
 * (bench/peers/cpython_pool.py).
 *
 * Four workloads, each measured once per backend (pool/<workload>/<backend>: the table shows
 * one tandem row per workload, so each backend has its own, with the peers that fit it):
 *
 *   map-1m        tdm_pool_map() of x * x + 1 over 1,000,000 int64 items (default chunking),
 *                 one operation = one item. A run is 5 maps one after another (--quick: 2),
 *                 so that what is measured is a program that maps again and again, whose
 *                 pool's threads are awake, not one woken from idle each time (an idle thread
 *                 woken on a 2-CPU machine may wait milliseconds for a CPU: the scheduler
 *                 puts it beside its waker). Peers: OpenMP `parallel for` with the item inlined
 *                 (what an OpenMP program writes) and calling the same tdm_map_fn through a
 *                 pointer (the call that tandem's API makes per item), GLib (chunks pushed), a
 *                 sequential loop.
 *   cpu-8x10m     8 tasks, each the seeds' sum of i for i < 10,000,000 with a volatile
 *                 accumulator (bench_sum_to()), submitted, then their results read; one
 *                 operation = one task. The sequential loop's ratio is the speedup.
 *   wait-64x50ms  64 tasks that each sleep 50 ms, submitted, then waited for; one operation =
 *                 the batch. The reference is one 50 ms wait. The threads backend is opened
 *                 with 64 workers (a user who knows the work waits would), auto and processes
 *                 with their defaults; each run opens a new pool (untimed), so auto starts
 *                 small every time and has to grow by itself.
 *   submit-200k   200,000 empty tasks: submit all, then wait for each and free its future; one
 *                 operation = one task (--quick: 50,000 tasks, 20,000 on processes).
 *
 * Every pool but the wait workload's is opened at its first run (the harness's untimed warm-up)
 * and kept until its workload is over, as a program keeps its pool; GLib's is kept the same
 * way and OpenMP keeps its team by itself. Before each timed run the machine is left alone for
 * 10 ms (settle()), so that threads of the previous implementation that still spin before
 * they sleep do not take CPU time from the next one (libgomp's idle team spins about 2 ms of
 * CPU after a parallel region here, tandem's workers 20 us). Every output is checked after
 * its run: map outputs, task sums, task outcomes.
 *
 * A goal of the project is attached to the peer row it is measured against (the harness prints
 * whether the run meets it): the thread backend's map within 1.5x of OpenMP (ratio >= 0.667),
 * the CPU-bound speedup at least 0.95 x cores on threads and on processes (the sequential row's
 * ratio), the 64 waits within 10% of one wait on threads and auto (ratio >= 0.909),
 * submit-and-wait at least 5x GLib on threads; the CPython goals (process map 50x Pool.map,
 * submit 100x ThreadPoolExecutor) come with the script's rows.
 *
 * A tandem call that fails (a backend not there yet: -ENOSYS) fails its row with the error; the
 * other rows still run. A peer that is not built here is reported as skipped, with why in its
 * name.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "pool_peers.h"

#define PEERS "cpython_pool.py"

#define MAP_ITEMS    1000000
#define MAP_RUN      5 /* maps per timed run (--quick: MAP_QUICK) */
#define MAP_QUICK    2
#define CPU_TASKS    8
#define CPU_COUNT    UINT64_C(10000000)
#define SUBMIT_TASKS 200000
#define SUBMIT_QUICK 50000 /* --quick; the process backend's: 20,000 */
#define SETTLE_NS    TDM_MS(10)

/* ---- The work ------------------------------------------------------------------------------- */

void bench_wait_50ms(void) {
  struct timespec t = { 0, 50 * 1000 * 1000 };
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &t, &t) == EINTR) {
  }
}

static int wait_task(tdm_task *task, const void *arg, size_t size) {
  (void)task, (void)arg, (void)size;
  bench_wait_50ms();
  return 0;
}

static int empty_task(tdm_task *task, const void *arg, size_t size) {
  (void)task, (void)arg, (void)size;
  return 0;
}

/* Lets threads of the previous run that still spin go to sleep (see the top of the file). */
static void settle(void) {
  struct timespec t = { 0, SETTLE_NS };
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &t, &t) == EINTR) {
  }
}

static unsigned cores(void) {
  int n = tdm_cpu_count();
  return n > 0 ? (unsigned)n : 1;
}

/* ---- Implementations and tandem's pools ----------------------------------------------------- */

enum kind { TANDEM, SEQUENTIAL, OMP, OMP_FN, GLIB, ONE_WAIT };

typedef struct impl_arg {
  enum kind kind;
  tdm_pool_backend backend; /* TANDEM */
  unsigned workers;         /* TANDEM: 0 for the backend's default */
  bool fresh;               /* TANDEM: a new pool for each run instead of the kept one */
} impl_arg;

static tdm_pool *kept[3]; /* by backend, for the workload being measured */

static int pool_open(const impl_arg *a, tdm_pool **out) {
  tdm_pool_options o = { .backend = a->backend, .workers = a->workers };
  int r = tdm_pool_open(out, &o);
  if (r != 0)
    fprintf(stderr, "tandem bench: tdm_pool_open (%s): %s\n", tdm_pool_backend_name(a->backend),
            tdm_strerror(r));
  return r;
}

static int pool_get(const impl_arg *a, tdm_pool **out) {
  tdm_pool **k = &kept[a->backend];
  if (*k == NULL) {
    int r = pool_open(a, k);
    if (r != 0) return r;
  }
  *out = *k;
  return 0;
}

/* After each workload: close the kept pools (tandem's and GLib's). */
static void pools_release(void) {
  for (size_t i = 0; i < BENCH_COUNT(kept); i++) {
    if (kept[i] != NULL) tdm_pool_close(kept[i]);
    kept[i] = NULL;
  }
  bench_glib_release();
}

/* Says on stderr what failed (the table shows the code only). */
static int failed(const char *what, int r) {
  if (r != 0) fprintf(stderr, "tandem bench: %s: %s\n", what, tdm_strerror(r));
  return r;
}

/* ---- map ------------------------------------------------------------------------------------ */

static int64_t *map_in, *map_out;

static int map_arrays(void) {
  return bench_map_arrays(MAP_ITEMS, &map_in, &map_out);
}

static int map_check(size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (map_out[i] != bench_map_item(map_in[i])) {
      fprintf(stderr, "tandem bench: map output %zu is %lld, not %lld\n", i, (long long)map_out[i],
              (long long)bench_map_item(map_in[i]));
      return -EPROTO;
    }
  }
  return 0;
}

/* One map of n items by implementation a (p: tandem's pool); its time in *elapsed. */
static int map_once(const impl_arg *a, tdm_pool *p, size_t n, int64_t *elapsed) {
  int64_t t0 = tdm_clock_now();
  switch (a->kind) {
  case TANDEM: {
    int r = tdm_pool_map(p, bench_map_item_fn, map_in, sizeof *map_in, map_out, sizeof *map_out, n,
                         NULL);
    *elapsed = tdm_clock_now() - t0;
    return failed("tdm_pool_map", r);
  }
  case SEQUENTIAL:
    for (size_t i = 0; i < n; i++)
      map_out[i] = bench_map_item(map_in[i]);
    *elapsed = tdm_clock_now() - t0;
    return 0;
  case OMP:
    return bench_omp_map(map_in, map_out, n, elapsed);
  case OMP_FN:
    return bench_omp_map_fn(bench_map_item_fn, map_in, map_out, n, elapsed);
  case GLIB: {
    size_t chunk = n / (4 * cores());
    return bench_glib_map(map_in, map_out, n, chunk ? chunk : 1, cores(), elapsed);
  }
  default:
    return -EINVAL;
  }
}

/* iters items: maps of MAP_ITEMS items one after another (fewer items in one map when iters is
 * smaller: the warm-up). */
static int run_map(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  size_t n = iters < MAP_ITEMS ? (size_t)iters : MAP_ITEMS;
  int64_t maps = iters / (int64_t)n, elapsed = 0;
  int r = map_arrays();
  if (r != 0) return r;
  memset(map_out, 0, n * sizeof *map_out); /* a map that writes nothing fails the check */
  tdm_pool *p = NULL;
  if (a->kind == TANDEM && (r = pool_get(a, &p)) != 0) return r;
  settle();
  for (int64_t k = 0; k < maps && r == 0; k++) {
    int64_t e = 0;
    r = map_once(a, p, n, &e);
    elapsed += e;
  }
  if (r == 0) r = map_check(n);
  if (r == 0) *ns = (double)elapsed / (double)(maps * (int64_t)n);
  return r;
}

/* ---- CPU-bound tasks ------------------------------------------------------------------------ */

/* bench_submit_and_wait(), saying on stderr what failed. */
static int submit_and_wait(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size, size_t tasks,
                           tdm_future **fs, uint64_t *results) {
  const char *what = "";
  int r = bench_submit_and_wait(p, fn, arg, size, tasks, fs, results, &what);
  return r != 0 ? failed(what, r) : 0;
}

static int run_cpu(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  size_t tasks = (size_t)iters;
  uint64_t count = CPU_COUNT;
  uint64_t *sums = calloc(tasks, sizeof *sums);
  tdm_future **fs = calloc(tasks, sizeof *fs);
  int r = sums && fs ? 0 : -ENOMEM;
  tdm_pool *p = NULL;
  if (r == 0 && a->kind == TANDEM) r = pool_get(a, &p);
  int64_t elapsed = 0;
  if (r == 0) {
    settle();
    int64_t t0 = tdm_clock_now();
    switch (a->kind) {
    case TANDEM:
      r = submit_and_wait(p, bench_cpu_task, &count, sizeof count, tasks, fs, sums);
      elapsed = tdm_clock_now() - t0;
      break;
    case SEQUENTIAL:
      for (size_t i = 0; i < tasks; i++)
        sums[i] = bench_sum_to(count);
      elapsed = tdm_clock_now() - t0;
      break;
    case OMP:
      r = bench_omp_cpu(sums, tasks, count, &elapsed);
      break;
    case GLIB:
      r = bench_glib_cpu(sums, tasks, count, cores(), &elapsed);
      break;
    default:
      r = -EINVAL;
    }
  }
  for (size_t i = 0; r == 0 && i < tasks; i++) {
    if (sums[i] != count * (count - 1) / 2) {
      fprintf(stderr, "tandem bench: task %zu summed to %llu\n", i, (unsigned long long)sums[i]);
      r = -EPROTO;
    }
  }
  if (r == 0) *ns = (double)elapsed / (double)tasks;
  free(sums);
  free(fs);
  return r;
}

/* ---- Waiting tasks -------------------------------------------------------------------------- */

static int run_wait(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  int64_t elapsed = 0;
  int r = 0;
  switch (a->kind) {
  case TANDEM: {
    tdm_pool *p;
    tdm_future *fs[BENCH_WAITERS];
    if ((r = pool_open(a, &p)) != 0) return r;
    settle();
    int64_t t0 = tdm_clock_now();
    for (int64_t b = 0; b < iters && r == 0; b++)
      r = submit_and_wait(p, wait_task, NULL, 0, BENCH_WAITERS, fs, NULL);
    elapsed = tdm_clock_now() - t0;
    tdm_pool_close(p);
    break;
  }
  case ONE_WAIT: {
    settle();
    int64_t t0 = tdm_clock_now();
    for (int64_t b = 0; b < iters; b++)
      bench_wait_50ms();
    elapsed = tdm_clock_now() - t0;
    break;
  }
  case OMP:
    settle();
    r = bench_omp_wait(iters, &elapsed);
    break;
  case GLIB:
    settle();
    r = bench_glib_wait(iters, &elapsed);
    break;
  default:
    r = -EINVAL;
  }
  if (r == 0) *ns = (double)elapsed / (double)iters;
  return r;
}

/* ---- Submit and wait ------------------------------------------------------------------------ */

static tdm_future **submit_fs;
static size_t submit_cap;

static int run_submit(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  size_t n = (size_t)iters;
  int64_t elapsed = 0;
  int r = 0;
  if (submit_cap < n) {
    tdm_future **fs = realloc(submit_fs, n * sizeof *fs);
    if (fs == NULL) return -ENOMEM;
    submit_fs = fs;
    submit_cap = n;
  }
  tdm_pool *p = NULL;
  if (a->kind == TANDEM && (r = pool_get(a, &p)) != 0) return r;
  settle();
  int64_t t0 = tdm_clock_now();
  switch (a->kind) {
  case TANDEM:
    r = submit_and_wait(p, empty_task, NULL, 0, n, submit_fs, NULL);
    elapsed = tdm_clock_now() - t0;
    break;
  case OMP:
    r = bench_omp_submit(n, &elapsed);
    break;
  case GLIB:
    r = bench_glib_submit(n, cores(), &elapsed);
    break;
  default:
    r = -EINVAL;
  }
  if (r == 0) *ns = (double)elapsed / (double)n;
  return r;
}

/* ---- The suite ------------------------------------------------------------------------------ */

static const char *const backends[3] = { "threads", "processes", "auto" };

/* Measures pool/<name>/<backend> with impls (tandem's first) and their goals, then releases
 * the pools it kept. */
static void measure(bench_ctx *ctx, const char *name, int backend, int64_t iters,
                    int64_t quick_iters, bench_rate rate, const bench_impl *impls,
                    const double *goals, size_t n) {
  bench_workload w = { .iters = iters,
                       .quick_iters = quick_iters,
                       .peer_script = PEERS,
                       .rate = rate,
                       .n_impls = (int)n };
  snprintf(w.key, sizeof w.key, "pool/%s/%s", name, backends[backend]);
  memcpy(w.impls, impls, n * sizeof *impls);
  memcpy(w.goal, goals, n * sizeof *goals);
  bench_run(ctx, &w);
  pools_release();
}

/* A peer's name, with why it is skipped when it is not built here. */
static const char *peer_name(char *buf, size_t size, const char *name, const char *missing) {
  if (missing == NULL) return name;
  snprintf(buf, size, "%s (%s)", name, missing);
  return buf;
}

void bench_pool_suite(bench_ctx *ctx) {
  static const impl_arg tandem[3] = {
    { TANDEM, TDM_POOL_THREADS, 0, false },
    { TANDEM, TDM_POOL_PROCESSES, 0, false },
    { TANDEM, TDM_POOL_AUTO, 0, false },
  };
  static const impl_arg waiters[3] = {
    { TANDEM, TDM_POOL_THREADS, BENCH_WAITERS, true },
    { TANDEM, TDM_POOL_PROCESSES, 0, true },
    { TANDEM, TDM_POOL_AUTO, 0, true },
  };
  static const impl_arg seq = { .kind = SEQUENTIAL }, omp = { .kind = OMP },
                        omp_fn = { .kind = OMP_FN }, glib = { .kind = GLIB },
                        one_wait = { .kind = ONE_WAIT };
  static char omp_name[5][160], glib_name[4][160], seq_name[160];
  const char *no_omp = bench_omp_missing, *no_glib = bench_glib_missing;
  unsigned n_cores = cores();
  snprintf(seq_name, sizeof seq_name, "sequential loop, 1 thread (ratio: speedup on %u cores)",
           n_cores);

  const char *tandem_map[3] = { "tdm_pool_map, threads (default workers)",
                                "tdm_pool_map, processes (default workers)",
                                "tdm_pool_map, auto (defaults)" };
  const char *tandem_cpu[3] = { "tdm_pool_submit x8, threads (default workers)",
                                "tdm_pool_submit x8, processes (default workers)",
                                "tdm_pool_submit x8, auto (defaults)" };
  const char *tandem_wait[3] = { "64 tasks, threads (64 workers)",
                                 "64 tasks, processes (default workers)",
                                 "64 tasks, auto (defaults: it grows)" };
  const char *tandem_submit[3] = { "submit+wait, threads (default workers)",
                                   "submit+wait, processes (default workers)",
                                   "submit+wait, auto (defaults)" };

  for (int b = 0; b < 3; b++) {
    const bench_impl impls[] = {
      { tandem_map[b], run_map, &tandem[b] },
      { peer_name(omp_name[0], sizeof omp_name[0], "OpenMP parallel for, item inlined", no_omp),
        run_map, &omp },
      { peer_name(omp_name[1], sizeof omp_name[1], "OpenMP parallel for, same tdm_map_fn call",
                  no_omp),
        run_map, &omp_fn },
      { peer_name(glib_name[0], sizeof glib_name[0], "GLib GThreadPool, n/(4 x threads) chunks",
                  no_glib),
        run_map, &glib },
      { "sequential loop, 1 thread", run_map, &seq },
    };
    /* The thread backend's map within 1.5x of OpenMP. */
    const double goals[] = { 0, b == TDM_POOL_THREADS ? 1 / 1.5 : 0, 0, 0, 0 };
    measure(ctx, "map-1m", b, MAP_RUN * MAP_ITEMS, MAP_QUICK * MAP_ITEMS, BENCH_RATE_ITEMS, impls,
            goals, BENCH_COUNT(impls));
  }

  for (int b = 0; b < 3; b++) {
    const bench_impl impls[] = {
      { tandem_cpu[b], run_cpu, &tandem[b] },
      { seq_name, run_cpu, &seq },
      { peer_name(omp_name[2], sizeof omp_name[2], "OpenMP parallel for, dynamic 1", no_omp),
        run_cpu, &omp },
      { peer_name(glib_name[1], sizeof glib_name[1], "GLib GThreadPool, 8 pushes", no_glib),
        run_cpu, &glib },
    };
    /* Speedup at least 0.95 x cores, on threads and on processes. */
    const double goals[] = { 0, b != TDM_POOL_AUTO ? 0.95 * n_cores : 0, 0, 0 };
    measure(ctx, "cpu-8x10m", b, CPU_TASKS, CPU_TASKS, BENCH_RATE_NONE, impls, goals,
            BENCH_COUNT(impls));
  }

  for (int b = 0; b < 3; b++) {
    const bench_impl impls[] = {
      { tandem_wait[b], run_wait, &waiters[b] },
      { "one 50 ms wait (clock_nanosleep)", run_wait, &one_wait },
      { peer_name(omp_name[3], sizeof omp_name[3], "OpenMP parallel for, 64 threads", no_omp),
        run_wait, &omp },
      { peer_name(glib_name[2], sizeof glib_name[2], "GLib GThreadPool, 64 threads", no_glib),
        run_wait, &glib },
    };
    /* Within 10% of one wait, on threads and auto. */
    const double goals[] = { 0, b != TDM_POOL_PROCESSES ? 1 / 1.1 : 0, 0, 0 };
    measure(ctx, "wait-64x50ms", b, 1, 1, BENCH_RATE_NONE, impls, goals, BENCH_COUNT(impls));
  }

  for (int b = 0; b < 3; b++) {
    const bench_impl impls[] = {
      { tandem_submit[b], run_submit, &tandem[b] },
      { peer_name(glib_name[3], sizeof glib_name[3], "GLib GThreadPool push all, counter+cond wait",
                  no_glib),
        run_submit, &glib },
      { peer_name(omp_name[4], sizeof omp_name[4], "OpenMP task x n, taskwait", no_omp), run_submit,
        &omp },
    };
    /* At least 5x GLib (threads). */
    const double goals[] = { 0, b == TDM_POOL_THREADS ? 5 : 0, 0 };
    measure(ctx, "submit-200k", b, SUBMIT_TASKS,
            b == TDM_POOL_PROCESSES ? SUBMIT_QUICK * 2 / 5 : SUBMIT_QUICK, BENCH_RATE_TASKS, impls,
            goals, BENCH_COUNT(impls));
  }
  free(submit_fs);
  submit_fs = NULL;
  submit_cap = 0;
  bench_map_arrays_free(&map_in, &map_out);
}
