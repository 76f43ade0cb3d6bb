/*
 * pool_peers.h: the pool workloads' shared pieces (pool_bench.c) and the C peers that run them
 * on GLib's thread pool (glib_peer.c) and on OpenMP (omp_peer.c).
 *
 * Every implementation runs the same work, from here: the map item (x * x + 1 on an int64), the
 * CPU-bound task (bench_sum_to(), the seeds' loop, compiled once so every implementation runs
 * the same machine code), the 50 ms wait (bench_wait_50ms()) and the empty task. A peer
 * function does one timed run's work and returns 0, or a negative errno (-ENOTSUP when the peer
 * is not built into this `tandem bench`: the CMake build leaves a peer out when its library is
 * not found, and under ThreadSanitizer, which cannot see the synchronisation inside libgomp or
 * GLib and would report races that are not there). pool_bench.c times the call and checks the
 * outputs. A peer's pool is kept between runs (as tandem's is, except in the wait workload) and
 * released by its *_release() function after the workload.
 */
#ifndef TDM_BENCH_POOL_PEERS_H
#define TDM_BENCH_POOL_PEERS_H

#include <stddef.h>
#include <stdint.h>

#include "tandem.h"

/* The map item, inlined where a program writes its own loop. */
static inline int64_t bench_map_item(int64_t x) {
  return x * x + 1;
}

/* The seeds' CPU-bound loop: the sum of i for i < n, through a volatile accumulator so that
 * the compiler cannot turn the loop into a formula. Not inlined: one copy for everyone. */
uint64_t bench_sum_to(uint64_t n);

/* The map workload's item function (out = bench_map_item(in), int64) and the CPU workload's
 * task (its argument a uint64 n, its result bench_sum_to(n)): pool_work.c. */
int bench_map_item_fn(const void *in, void *out, const void *arg);
int bench_cpu_task(tdm_task *task, const void *arg, size_t size);

/* Submits `tasks` tasks of fn(arg) into fs[] and reads each outcome in order (a uint64 result
 * into results[i] when `results`); frees every future. Returns 0, or the first failure with
 * *what naming the call that failed. */
int bench_submit_and_wait(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size, size_t tasks,
                          tdm_future **fs, uint64_t *results, const char **what);

/* The map workload's arrays: in[i] = i and room for the outputs, n items each, made once (0
 * when *in is already set, or -ENOMEM), and freed. */
int bench_map_arrays(size_t n, int64_t **in, int64_t **out);
void bench_map_arrays_free(int64_t **in, int64_t **out);

/* Waits 50 ms (clock_nanosleep, resumed after a signal). */
void bench_wait_50ms(void);

/* The wait workload's batch: 64 tasks. */
#define BENCH_WAITERS 64

/* ---- OpenMP (omp_peer.c) and GLib (glib_peer.c) --------------------------------------------- */

/*
 * Each function does one run's work and stores in *elapsed the nanoseconds of its timed part
 * (what a program waits for: not the making of a pool that is kept between runs, nor the
 * making and freeing of the wait workload's pool). Returns 0, or a negative errno; -ENOTSUP
 * when the peer is not in this build (bench_*_missing says why).
 */

/* Why the OpenMP peer is missing from this build, or NULL when it is built. */
extern const char *const bench_omp_missing;

/* out[i] = bench_map_item(in[i]) for i < n: `#pragma omp parallel for`, default threads. */
int bench_omp_map(const int64_t *in, int64_t *out, size_t n, int64_t *elapsed);

/* The same loop calling `fn` (the tdm_map_fn that tandem runs) for each item. */
int bench_omp_map_fn(tdm_map_fn fn, const int64_t *in, int64_t *out, size_t n, int64_t *elapsed);

/* sums[i] = bench_sum_to(count) for i < tasks: a parallel for, one iteration per task. */
int bench_omp_cpu(uint64_t *sums, size_t tasks, uint64_t count, int64_t *elapsed);

/* `batches` times: BENCH_WAITERS waits of 50 ms, a parallel for on BENCH_WAITERS threads. */
int bench_omp_wait(int64_t batches, int64_t *elapsed);

/* n empty tasks (`#pragma omp task`) made by one thread of the team, then `taskwait`. */
int bench_omp_submit(size_t n, int64_t *elapsed);

/* Why the GLib peer is missing from this build, or NULL when it is built. */
extern const char *const bench_glib_missing;

/* The map in chunks of `chunk` items pushed to a GThreadPool of `threads` threads, waited for
 * with a counter and a condition variable. */
int bench_glib_map(const int64_t *in, int64_t *out, size_t n, size_t chunk, unsigned threads,
                   int64_t *elapsed);

/* One pushed task per bench_sum_to(count). */
int bench_glib_cpu(uint64_t *sums, size_t tasks, uint64_t count, unsigned threads,
                   int64_t *elapsed);

/* `batches` times: BENCH_WAITERS waits pushed to a pool of BENCH_WAITERS threads, made for the
 * run and freed after it (untimed); GLib starts its threads on demand, within the timed part. */
int bench_glib_wait(int64_t batches, int64_t *elapsed);

/* n empty tasks pushed, then a wait until every one has run (counter + condition). */
int bench_glib_submit(size_t n, unsigned threads, int64_t *elapsed);

/* Frees the kept pool (after each workload). */
void bench_glib_release(void);

#endif /* TDM_BENCH_POOL_PEERS_H */
