/*
 * cluster_bench.c: tandem-cluster-bench, the program that `tandem bench` runs under mpirun to
 * measure the cluster backend (cluster_suite.c). The tandem command does not link MPI; this
 * program links libtandem-mpi and does one measurement per run:
 *
 *   mpirun -np N tandem-cluster-bench map ITEMS     ITEMS map items, in maps of at most
 *                                                  1,000,000 int64 (x * x + 1), back to back
 *   mpirun -np N tandem-cluster-bench cpu TASKS     TASKS tasks, each bench_sum_to(10,000,000)
 *
 * Rank 0 runs main(): it opens a cluster pool on every worker rank (N - 1 of them), does an
 * untimed warm-up (one map of the same size, or one short task per rank: the ranks' first
 * messages and page faults), then times the work alone, from the first submit to the last
 * result, as pool_bench.c does in-process: MPI's start-up, the pool's opening and its closing
 * are not in the time. Every output is checked. It prints one line on stdout:
 *
 *   tandem-cluster-bench: workload=map workers=2 iters=5000000 ns_per_op=12.345
 *
 * or, when something failed, `tandem-cluster-bench: error=CODE` (a tandem error code, which the
 * suite reports) with the reason on stderr. Exit status: 0, 1 when the measurement failed, 2 for
 * a usage error.
 *
 * The work is pool_bench.c's, from pool_peers.h: the same map item, and bench_sum_to() with the
 * same body (it is defined there in the tandem command, which this program does not link), so
 * the in-process rows and these run the same code.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_peers.h"
#include "tandem.h"
#include "tandem/cluster.h"

#define MAP_ITEMS  1000000
#define CPU_COUNT  UINT64_C(10000000)
#define WARM_COUNT UINT64_C(1000000) /* the warm-up tasks' sum: short */

/* Says what failed, on stderr for people and on stdout for the suite; returns r. */
static int failed(const char *what, int r) {
  fprintf(stderr, "tandem-cluster-bench: %s: %s\n", what, tdm_strerror(r));
  printf("tandem-cluster-bench: error=%d\n", r);
  return r;
}

/* `iters` items in maps of at most MAP_ITEMS, after one untimed map; the time in *elapsed, the
 * items timed in *ops (iters rounded down to whole maps). */
static int run_map(tdm_pool *p, int64_t iters, int64_t *elapsed, int64_t *ops) {
  size_t n = iters < MAP_ITEMS ? (size_t)iters : MAP_ITEMS;
  int64_t maps = iters / (int64_t)n;
  int64_t *in = malloc(n * sizeof *in), *out = calloc(n, sizeof *out);
  int r = in != NULL && out != NULL ? 0 : -ENOMEM;
  for (size_t i = 0; r == 0 && i < n; i++)
    in[i] = (int64_t)i;
  if (r == 0) r = tdm_pool_map(p, bench_map_item_fn, in, sizeof *in, out, sizeof *out, n, NULL);
  if (r == 0) memset(out, 0, n * sizeof *out); /* a map that writes nothing fails the check */
  *elapsed = 0;
  *ops = maps * (int64_t)n;
  for (int64_t k = 0; r == 0 && k < maps; k++) {
    int64_t t0 = tdm_clock_now();
    r = tdm_pool_map(p, bench_map_item_fn, in, sizeof *in, out, sizeof *out, n, NULL);
    *elapsed += tdm_clock_now() - t0;
  }
  if (r != 0) failed("tdm_pool_map", r);
  for (size_t i = 0; r == 0 && i < n; i++) {
    if (out[i] != bench_map_item(in[i])) {
      fprintf(stderr, "tandem-cluster-bench: map output %zu is %lld, not %lld\n", i,
              (long long)out[i], (long long)bench_map_item(in[i]));
      r = failed("map check", -EPROTO);
    }
  }
  free(in);
  free(out);
  return r;
}

/* Submits `tasks` tasks of bench_sum_to(count), then reads each result and checks it. */
static int sums(tdm_pool *p, size_t tasks, uint64_t count) {
  tdm_future **fs = calloc(tasks, sizeof *fs);
  if (fs == NULL) return failed("calloc", -ENOMEM);
  uint64_t *got = calloc(tasks, sizeof *got);
  const char *what = "calloc";
  int r = got == NULL ? -ENOMEM
                      : bench_submit_and_wait(p, bench_cpu_task, &count, sizeof count, tasks, fs,
                                              got, &what);
  for (size_t i = 0; r == 0 && i < tasks; i++)
    if (got[i] != count * (count - 1) / 2) {
      what = "a task's sum";
      r = -EPROTO;
    }
  if (r != 0) failed(what, r);
  free(got);
  free(fs);
  return r;
}

/* `iters` CPU-bound tasks, after one short task per worker rank; the time in *elapsed. */
static int run_cpu(tdm_pool *p, unsigned workers, int64_t iters, int64_t *elapsed) {
  int r = sums(p, workers, WARM_COUNT);
  if (r != 0) return r;
  int64_t t0 = tdm_clock_now();
  r = sums(p, (size_t)iters, CPU_COUNT);
  *elapsed = tdm_clock_now() - t0;
  return r;
}

static int usage(void) {
  fprintf(stderr, "usage: mpirun -np N tandem-cluster-bench map ITEMS | cpu TASKS\n"
                  "Measures tandem's cluster backend on the N - 1 worker ranks of the job\n"
                  "(`tandem bench --filter cluster/` runs it) and prints one line:\n"
                  "tandem-cluster-bench: workload=W workers=N iters=I ns_per_op=T\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc != 3 || (strcmp(argv[1], "map") != 0 && strcmp(argv[1], "cpu") != 0)) return usage();
  char *end;
  long long iters = strtoll(argv[2], &end, 10);
  if (*argv[2] == '\0' || *end != '\0' || iters < 1) return usage();
  bool map = strcmp(argv[1], "map") == 0;

  int r = tdm_cluster_status();
  if (r != 0) {
    failed("tdm_cluster_status", r);
    return 1;
  }
  tdm_pool_options opt = { .backend = TDM_POOL_CLUSTER };
  tdm_pool *p;
  if ((r = tdm_pool_open(&p, &opt)) != 0) {
    failed("tdm_pool_open", r);
    return 1;
  }
  tdm_pool_stats st;
  tdm_pool_stats_get(p, &st);
  int64_t elapsed = 0, ops = iters;
  r = map ? run_map(p, iters, &elapsed, &ops) : run_cpu(p, st.workers, iters, &elapsed);
  int c = tdm_pool_close(p);
  if (r == 0 && c != 0) r = failed("tdm_pool_close", c);
  if (r == 0)
    printf("tandem-cluster-bench: workload=%s workers=%u iters=%lld ns_per_op=%.3f\n", argv[1],
           st.workers, iters, (double)elapsed / (double)ops);
  fflush(stdout);
  return r == 0 ? 0 : 1;
}
