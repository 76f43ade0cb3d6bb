/*
 * pool_backends: the same work on a pool of threads, a pool of processes and an automatic
 * pool, by changing one option.
 *
 * The Python it re-creates:
 *
 *   from multiprocessing import Pool
 *   from multiprocessing.pool import ThreadPool
 *
 *   def primes(r):
 *       lo, hi = r
 *       return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(max(lo, 2), hi))
 *
 *   ranges = [(i * 20000, (i + 1) * 20000) for i in range(8)]
 *   for make in (ThreadPool, Pool):
 *       with make(4) as p:
 *           print(p.map(primes, ranges))
 *
 * In Python the thread pool runs this CPU-bound work one thread at a time (the GIL); in C
 * threads run it in parallel, so for plain computation threads are the natural choice, and the
 * automatic backend picks them. Processes are for what threads cannot give: a task that
 * crashes or leaks takes only its worker down, a library that is not thread-safe gets a process
 * of its own, and a task can be killed at a timeout (see pool_crash.c and pool_timeout.c).
 *
 * What changes with the backend, besides that: memory. A thread task runs in the caller's
 * process and sees its globals; a process task runs on a copy, so what it writes to a global
 * never reaches the caller. Only the items (and a task's result) travel back.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "tandem.h"

enum { RANGES = 8, WIDTH = 20000 };

struct range {
  long lo, hi;
};

static atomic_long calls; /* how many items ran in *this* process */

static bool is_prime(long n) {
  if (n < 2) return false;
  for (long d = 2; d * d <= n; d++)
    if (n % d == 0) return false;
  return true;
}

/* One map item: counts the primes in [lo, hi). */
static int count_primes(const void *in, void *out, const void *arg) {
  (void)arg;
  struct range r;
  memcpy(&r, in, sizeof r);
  long count = 0;
  for (long n = r.lo; n < r.hi; n++)
    count += is_prime(n);
  memcpy(out, &count, sizeof count);
  atomic_fetch_add(&calls, 1); /* reaches main() only when the item ran in this process */
  return 0;
}

/* Runs the map on a pool of the given backend; 0 when the counts are `expected`. */
static int run(tdm_pool_backend backend, const struct range *in, const long *expected) {
  tdm_pool_options opt = { .backend = backend, .workers = 4 }; /* the one option that changes */
  tdm_pool *pool;
  atomic_store(&calls, 0);
  int rc = tdm_pool_open(&pool, &opt);
  if (rc != 0) {
    fprintf(stderr, "pool_backends: open %s: %s\n", tdm_pool_backend_name(backend),
            tdm_strerror(rc));
    return 1;
  }
  long out[RANGES];
  rc = tdm_pool_map(pool, count_primes, in, sizeof in[0], out, sizeof out[0], RANGES, NULL);
  tdm_pool_close(pool);
  if (rc != 0) {
    fprintf(stderr, "pool_backends: map: %s\n", tdm_strerror(rc));
    return 1;
  }
  int ok = 1;
  printf("%-9s [", tdm_pool_backend_name(backend));
  for (int i = 0; i < RANGES; i++) {
    printf("%s%ld", i > 0 ? ", " : "", out[i]);
    ok &= out[i] == expected[i];
  }
  long seen = atomic_load(&calls);
  printf("]  items run in this process: %ld\n", seen);
  /* Threads (and auto, which uses threads): every item ran here. Processes: none did. */
  ok &= seen == (backend == TDM_POOL_PROCESSES ? 0 : RANGES);
  return ok ? 0 : 1;
}

int main(void) {
  struct range in[RANGES];
  long expected[RANGES];
  for (int i = 0; i < RANGES; i++) {
    in[i] = (struct range){ (long)i * WIDTH, (long)(i + 1) * WIDTH };
    expected[i] = 0;
    for (long n = in[i].lo; n < in[i].hi; n++)
      expected[i] += is_prime(n);
  }
  int failed = run(TDM_POOL_THREADS, in, expected);
  failed |= run(TDM_POOL_PROCESSES, in, expected);
  failed |= run(TDM_POOL_AUTO, in, expected);
  return failed;
}
