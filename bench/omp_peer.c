/*
 * omp_peer.c: OpenMP, a peer of the pool workloads (pool_peers.h).
 *
 * Each workload is written as an OpenMP program writes it: the map as `parallel for` over the
 * items with the default number of threads and static scheduling (the item function inlined
 * into the loop, and once more calling tandem's tdm_map_fn through a pointer, so that what
 * separates the two rows is the call, not the scheduling), the CPU-bound tasks as a `parallel
 * for` with one iteration per task (dynamic, 1), the waits as a `parallel for` on 64 threads,
 * and submit-and-wait as `task`s made by one thread of the team followed by `taskwait`.
 * libgomp keeps its team of threads between parallel regions (made in the harness's warm-up
 * run), and its idle threads spin for a while before they sleep: that is OpenMP's own way, so
 * it is measured as it comes; pool_bench.c lets the machine settle before each timed run.
 *
 * Built with OpenMP when CMake finds it (TDM_BENCH_HAVE_OPENMP); otherwise every function
 * returns -ENOTSUP and bench_omp_missing says why.
 */
#include <errno.h>

#include "pool_peers.h"

#ifdef TDM_BENCH_HAVE_OPENMP

#include <omp.h>

const char *const bench_omp_missing = NULL;

int bench_omp_map(const int64_t *in, int64_t *out, size_t n, int64_t *elapsed) {
  long len = (long)n;
  int64_t t0 = tdm_clock_now();
#pragma omp parallel for schedule(static)
  for (long i = 0; i < len; i++)
    out[i] = bench_map_item(in[i]);
  *elapsed = tdm_clock_now() - t0;
  return 0;
}

int bench_omp_map_fn(tdm_map_fn fn, const int64_t *in, int64_t *out, size_t n, int64_t *elapsed) {
  long len = (long)n;
  int failed = 0;
  int64_t t0 = tdm_clock_now();
#pragma omp parallel for schedule(static) reduction(| : failed)
  for (long i = 0; i < len; i++)
    failed |= fn(&in[i], &out[i], NULL) != 0;
  *elapsed = tdm_clock_now() - t0;
  return failed ? -EIO : 0;
}

int bench_omp_cpu(uint64_t *sums, size_t tasks, uint64_t count, int64_t *elapsed) {
  long len = (long)tasks;
  int64_t t0 = tdm_clock_now();
#pragma omp parallel for schedule(dynamic, 1)
  for (long i = 0; i < len; i++)
    sums[i] = bench_sum_to(count);
  *elapsed = tdm_clock_now() - t0;
  return 0;
}

int bench_omp_wait(int64_t batches, int64_t *elapsed) {
  int64_t t0 = tdm_clock_now();
  for (int64_t b = 0; b < batches; b++) {
#pragma omp parallel for num_threads(BENCH_WAITERS) schedule(static, 1)
    for (int i = 0; i < BENCH_WAITERS; i++)
      bench_wait_50ms();
  }
  *elapsed = tdm_clock_now() - t0;
  return 0;
}

int bench_omp_submit(size_t n, int64_t *elapsed) {
  size_t ran = 0;
  int64_t t0 = tdm_clock_now();
#pragma omp parallel shared(ran)
#pragma omp single
  {
    for (size_t i = 0; i < n; i++) {
#pragma omp task shared(ran)
      __atomic_fetch_add(&ran, 1, __ATOMIC_RELAXED);
    }
#pragma omp taskwait
  }
  *elapsed = tdm_clock_now() - t0;
  return ran == n ? 0 : -EIO;
}

#else /* !TDM_BENCH_HAVE_OPENMP */

#ifndef TDM_BENCH_OPENMP_MISSING
#define TDM_BENCH_OPENMP_MISSING "not built: OpenMP not found"
#endif

const char *const bench_omp_missing = TDM_BENCH_OPENMP_MISSING;

int bench_omp_map(const int64_t *in, int64_t *out, size_t n, int64_t *elapsed) {
  (void)in, (void)out, (void)n, (void)elapsed;
  return -ENOTSUP;
}

int bench_omp_map_fn(tdm_map_fn fn, const int64_t *in, int64_t *out, size_t n, int64_t *elapsed) {
  (void)fn, (void)in, (void)out, (void)n, (void)elapsed;
  return -ENOTSUP;
}

int bench_omp_cpu(uint64_t *sums, size_t tasks, uint64_t count, int64_t *elapsed) {
  (void)sums, (void)tasks, (void)count, (void)elapsed;
  return -ENOTSUP;
}

int bench_omp_wait(int64_t batches, int64_t *elapsed) {
  (void)batches, (void)elapsed;
  return -ENOTSUP;
}

int bench_omp_submit(size_t n, int64_t *elapsed) {
  (void)n, (void)elapsed;
  return -ENOTSUP;
}

#endif
