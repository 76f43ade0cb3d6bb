/*
 * cluster_map: one program whose pool runs on threads, on processes or on the ranks of an MPI
 * job, chosen on the command line; nothing else changes.
 *
 *   ./cluster_map processes              (or threads)
 *   mpirun -np 3 ./cluster_map cluster   rank 0 runs main(); ranks 1 and 2 are the workers
 *   ./cluster_map                        the cluster when started by mpirun, else processes
 *
 * On several machines: `mpirun --hostfile hosts -np 33 ./cluster_map`, with the same binary at
 * the same path on every host (docs/cluster.md).
 *
 * The Python nearest to it, mpi4py's executor (run as `mpirun -np 3 python -m mpi4py.futures
 * prog.py`, or with ProcessPoolExecutor on one machine):
 *
 *   import os, socket
 *   from mpi4py.futures import MPIPoolExecutor
 *
 *   def primes(r):
 *       lo, hi = r
 *       return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(max(lo, 2), hi))
 *
 *   def where(i):
 *       return i, socket.gethostname(), os.getpid()
 *
 *   if __name__ == "__main__":
 *       with MPIPoolExecutor() as ex:
 *           print(list(ex.map(primes, [(i * 25000, (i + 1) * 25000) for i in range(8)])))
 *           for f in [ex.submit(where, i) for i in range(4)]:
 *               print(f.result())
 *
 * In C the program links libtandem-mpi (CMake: tandem::tandem_mpi; pkg-config tandem-mpi) and
 * includes tandem/cluster.h only to ask where it runs: the pool is the same pool.h as
 * everywhere. No main guard is needed: worker ranks, like worker processes, never reach main().
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"
#include "tandem/cluster.h"

enum { RANGES = 8, WIDTH = 25000, TASKS = 4 };

struct range {
  long lo, hi;
};

/* What a task says about where it ran. */
struct where {
  int index, rank; /* rank: the worker's rank in the MPI job, -1 outside one */
  long pid;
  char host[64];
};

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
  return 0;
}

/* One task: reports the worker that runs it (its result is bytes, as everywhere). */
static int where(tdm_task *task, const void *arg, size_t size) {
  struct where w = { .rank = tdm_cluster_rank(), .pid = (long)getpid() };
  if (size != sizeof w.index) return 1; /* a non-zero return fails this task alone */
  memcpy(&w.index, arg, sizeof w.index);
  if (gethostname(w.host, sizeof w.host - 1) != 0) strcpy(w.host, "?");
  return tdm_task_set_result(task, &w, sizeof w);
}

static int usage(void) {
  fprintf(stderr, "usage: cluster_map [threads | processes | cluster]\n"
                  "       mpirun -np N cluster_map [cluster]\n");
  return 2;
}

int main(int argc, char **argv) {
  /* Without an argument: the cluster when this program runs under mpirun with workers. */
  tdm_pool_backend backend = tdm_cluster_status() == 0 ? TDM_POOL_CLUSTER : TDM_POOL_PROCESSES;
  if (argc > 2) return usage();
  if (argc == 2) {
    if (strcmp(argv[1], "threads") == 0)
      backend = TDM_POOL_THREADS;
    else if (strcmp(argv[1], "processes") == 0)
      backend = TDM_POOL_PROCESSES;
    else if (strcmp(argv[1], "cluster") == 0)
      backend = TDM_POOL_CLUSTER;
    else
      return usage();
  }

  tdm_pool_options opt = { .backend = backend }; /* the one option that changes */
  tdm_pool *pool;
  int rc = tdm_pool_open(&pool, &opt);
  if (rc != 0) {
    fprintf(stderr, "cluster_map: open %s: %s\n", tdm_pool_backend_name(backend), tdm_strerror(rc));
    return 1;
  }
  tdm_pool_stats st;
  tdm_pool_stats_get(pool, &st);
  printf("backend: %s, workers: %u", tdm_pool_backend_name(backend), st.workers);
  if (backend == TDM_POOL_CLUSTER) {
    printf(" (ranks 1-%d of %d, on", tdm_cluster_size() - 1, tdm_cluster_size());
    for (int r = 1; r < tdm_cluster_size(); r++)
      printf(" %s", tdm_cluster_host(r));
    printf(")");
  }
  printf("\n");

  /* A map: results come back in input order, whichever worker ran each item. */
  struct range in[RANGES];
  long out[RANGES];
  for (int i = 0; i < RANGES; i++)
    in[i] = (struct range){ (long)i * WIDTH, (long)(i + 1) * WIDTH };
  int failed = 0;
  rc = tdm_pool_map(pool, count_primes, in, sizeof in[0], out, sizeof out[0], RANGES, NULL);
  if (rc != 0) {
    fprintf(stderr, "cluster_map: map: %s\n", tdm_strerror(rc));
    failed = 1;
  } else {
    printf("primes per %d numbers: [", WIDTH);
    for (int i = 0; i < RANGES; i++) {
      long expected = 0;
      for (long n = in[i].lo; n < in[i].hi; n++)
        expected += is_prime(n);
      printf("%s%ld", i > 0 ? ", " : "", out[i]);
      failed |= out[i] != expected;
    }
    printf("]\n");
  }

  /* Submits, then their futures: each task's result says where it ran. */
  tdm_future *f[TASKS];
  int submitted = 0;
  for (; submitted < TASKS; submitted++) {
    rc = tdm_pool_submit(pool, where, &submitted, sizeof submitted, NULL, &f[submitted]);
    if (rc != 0) {
      fprintf(stderr, "cluster_map: submit: %s\n", tdm_strerror(rc));
      failed = 1;
      break;
    }
  }
  for (int i = 0; i < submitted; i++) {
    const void *data;
    size_t size;
    struct where w;
    rc = tdm_future_result(f[i], TDM_FOREVER, &data, &size);
    if (rc != 0 || size != sizeof w) {
      fprintf(stderr, "cluster_map: task %d: %s\n", i, rc != 0 ? tdm_strerror(rc) : "bad size");
      failed = 1;
    } else {
      memcpy(&w, data, sizeof w);
      printf("task %d ran on %s, pid %ld", w.index, w.host, w.pid);
      if (w.rank >= 0) printf(", rank %d", w.rank);
      printf("\n");
      /* Threads run in this process; processes and ranks do not; ranks are 1..N-1. */
      bool here = w.pid == (long)getpid();
      failed |= w.index != i || here != (backend == TDM_POOL_THREADS);
      if (backend == TDM_POOL_CLUSTER) failed |= w.rank < 1 || w.rank >= tdm_cluster_size();
    }
    tdm_future_free(f[i]);
  }
  tdm_pool_close(pool);
  return failed;
}
