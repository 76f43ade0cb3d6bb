/*
 * cluster_suite.c: the cluster backend (tandem/cluster.h) against the process backend with as
 * many workers, in the same run.
 *
 * Two workloads, each on 1, 2, 3 and 4 worker ranks (cluster/<workload>/<n>-workers):
 *
 *   map-1m       tdm_pool_map() of x * x + 1 over 1,000,000 int64 items (default chunking), one
 *                operation = one item; a run is 5 maps back to back (--quick: 2), as in
 *                pool/map-1m.
 *   cpu-16x10m   16 tasks (--quick: 8), each the seeds' sum to 10,000,000 (bench_sum_to()),
 *                submitted, then their results read; one operation = one task.
 *
 * The tandem row is the cluster's; its peers are the process backend opened with the same
 * number of workers, in this process, and the sequential loop (whose ratio is the cluster's
 * speedup). The ratio of the process row says how the cluster compares with shared memory on
 * one machine: below 1.00x the cluster is slower.
 *
 * The tandem command does not link MPI: each cluster run starts a job, the program
 * tandem-cluster-bench (cluster_bench.c, built with libtandem-mpi next to the tandem command)
 * under tests/cluster/mpirun.sh (the build copies it to <dir of tandem>/peers/mpirun.sh, `make
 * install` to share/tandem/peers/), `mpirun -np <n + 1>`. That program opens its pool, warms it
 * up, times the work alone (not MPI's start-up, nor the pool's opening) and prints one line with
 * the time per operation, which is read here; a job is started for every run (its start-up is
 * not timed). Where the build has no MPI, or the program, mpirun or the wrapper cannot be
 * found, the cluster rows are skipped and their names say why.
 *
 * The process pools are kept for the workload (opened at the harness's warm-up run), and the
 * machine is left alone 10 ms before each in-process run, as in pool_bench.c; every output is
 * checked, here and in the job.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "pool_peers.h"

#define MAP_ITEMS   1000000
#define MAP_RUN     5 /* maps per timed run (--quick: MAP_QUICK) */
#define MAP_QUICK   2
#define CPU_TASKS   16
#define CPU_QUICK   8
#define CPU_COUNT   UINT64_C(10000000)
#define MAX_WORKERS 4
#define SETTLE_NS   TDM_MS(10)
#define HELPER      "tandem-cluster-bench"
#define OUTPUT_MAX  65536

#ifndef TDM_BENCH_PEERS_FROM_BIN
#define TDM_BENCH_PEERS_FROM_BIN "../share/tandem/peers"
#endif

/* The work is pool_work.c's, as pool_bench.c's is. */

static void settle(void) {
  struct timespec t = { 0, SETTLE_NS };
  while (clock_nanosleep(CLOCK_MONOTONIC, 0, &t, &t) == EINTR) {
  }
}

static int failed(const char *what, int r) {
  if (r != 0) fprintf(stderr, "tandem bench: %s: %s\n", what, tdm_strerror(r));
  return r;
}

/* ---- Finding the job's pieces --------------------------------------------------------------- */

/* The program, the wrapper and mpirun; `missing` says why the cluster rows are skipped. */
static char helper_path[PATH_MAX], wrapper_path[PATH_MAX], mpirun_path[PATH_MAX];
static const char *missing;

#ifdef TDM_BENCH_HAVE_MPI
/* Stores dir/name in out and says whether it may be accessed with `mode`. */
static bool executable(char *out, size_t size, const char *dir, const char *name, int mode) {
  int k = snprintf(out, size, "%s/%s", dir, name);
  return k > 0 && (size_t)k < size && access(out, mode) == 0;
}

/* Finds `name` on PATH (an absolute path as it is). */
static bool on_path(const char *name, char *out, size_t size) {
  if (name[0] == '/') return executable(out, size, "", name + 1, X_OK);
  const char *path = getenv("PATH");
  if (path == NULL) path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    size_t len = strcspn(path, ":");
    char dir[PATH_MAX];
    if (len > 0 && len < sizeof dir) {
      snprintf(dir, sizeof dir, "%.*s", (int)len, path);
      if (executable(out, size, dir, name, X_OK)) return true;
    }
    path += len;
    if (*path == ':') path++;
  }
  return false;
}
#endif

/*
 * The program lies next to the tandem command (the build puts both in src/cli/, `make install`
 * in bin/); the wrapper in <dir>/peers, then <dir>/TDM_BENCH_PEERS_FROM_BIN, then the source
 * tree; mpirun is the one CMake found, else the first on PATH.
 */
static void find_pieces(void) {
#ifndef TDM_BENCH_HAVE_MPI
#ifdef TDM_BENCH_CLUSTER_MISSING
  missing = TDM_BENCH_CLUSTER_MISSING;
#else
  missing = "not built: no MPI";
#endif
  return;
#else
  char exe[PATH_MAX], dir[PATH_MAX + 64];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  char *slash = NULL;
  if (len > 0) {
    exe[len] = '\0';
    slash = strrchr(exe, '/');
  }
  if (slash == NULL) {
    missing = HELPER " not found";
    return;
  }
  *slash = '\0';
  if (!executable(helper_path, sizeof helper_path, exe, HELPER, X_OK)) {
    missing = HELPER " not found";
    return;
  }
  snprintf(dir, sizeof dir, "%s/peers", exe);
  bool found = executable(wrapper_path, sizeof wrapper_path, dir, "mpirun.sh", R_OK);
  snprintf(dir, sizeof dir, "%s/%s", exe, TDM_BENCH_PEERS_FROM_BIN);
  if (!found) found = executable(wrapper_path, sizeof wrapper_path, dir, "mpirun.sh", R_OK);
  if (!found)
    found =
        executable(wrapper_path, sizeof wrapper_path, TDM_BENCH_MPIRUN_SH_DIR, "mpirun.sh", R_OK);
  if (!found) {
    missing = "mpirun.sh not found";
    return;
  }
  found = false;
#ifdef TDM_BENCH_MPIRUN
  found = on_path(TDM_BENCH_MPIRUN, mpirun_path, sizeof mpirun_path);
#endif
  if (!found) found = on_path("mpirun", mpirun_path, sizeof mpirun_path);
  if (!found) missing = "mpirun not found";
#endif
}

/* ---- One job -------------------------------------------------------------------------------- */

typedef struct job {
  const char *const *argv;
  int out; /* the write end of the pipe that becomes the job's stdout */
} job;

/* In the child (bench_party_start() forked it, maybe from a process with threads: only
 * async-signal-safe calls until exec). */
static void job_exec(void *arg) {
  const job *j = arg;
  int in = open("/dev/null", O_RDONLY); /* mpirun forwards stdin to rank 0: give it none */
  if (in < 0 || dup2(in, STDIN_FILENO) < 0 || dup2(j->out, STDOUT_FILENO) < 0) _exit(126);
  if (in != STDIN_FILENO) close(in);
  execv("/bin/sh", (char *const *)j->argv);
  _exit(127);
}

/*
 * Runs `mpirun -np workers+1 tandem-cluster-bench WORKLOAD ITERS` through the wrapper and reads
 * its line. Returns 0 with the time per operation in *ns; the job's error code when it printed
 * one; -EPROTO when it printed no result line (or one for another job); the errors of starting
 * it; -ECHILD when it failed otherwise (its stderr says why).
 */
static int job_run(const char *workload, unsigned workers, int64_t iters, double *ns) {
  if (missing != NULL) {
    static bool said; /* the table shows no tandem row's name: say why once */
    if (!said) fprintf(stderr, "tandem bench: the cluster/ rows are skipped: %s\n", missing);
    said = true;
    return -ENOTSUP;
  }
  char np[16], its[32];
  snprintf(np, sizeof np, "%u", workers + 1);
  snprintf(its, sizeof its, "%lld", (long long)iters);
  const char *const argv[] = { "/bin/sh",   wrapper_path, mpirun_path, "-np", np,
                               helper_path, workload,     its,         NULL };
  char *out = malloc(OUTPUT_MAX);
  if (out == NULL) return -ENOMEM;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    free(out);
    return failed("pipe2", -errno);
  }
  job j = { argv, fds[1] };
  bench_party party;
  int r = bench_party_start(&party, true, job_exec, &j);
  close(fds[1]);
  if (r != 0) {
    close(fds[0]);
    free(out);
    return failed("starting mpirun", r);
  }
  /* Until the end of the job; what does not fit is read and dropped. */
  size_t len = 0;
  char drop[512];
  for (;;) {
    bool room = len + 1 < OUTPUT_MAX;
    ssize_t k =
        room ? read(fds[0], out + len, OUTPUT_MAX - 1 - len) : read(fds[0], drop, sizeof drop);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    if (room) len += (size_t)k;
  }
  close(fds[0]);
  int status = bench_party_join(&party);
  out[len] = '\0';

  r = -EPROTO;
  static const char prefix[] = HELPER ": ";
  for (char *line = out; line != NULL && *line;) {
    char *nl = strchr(line, '\n');
    if (nl != NULL) *nl = '\0';
    if (strncmp(line, prefix, sizeof prefix - 1) == 0) {
      const char *rest = line + sizeof prefix - 1;
      char w[16];
      unsigned got;
      long long n;
      double t;
      int code;
      if (sscanf(rest, "workload=%15s workers=%u iters=%lld ns_per_op=%lf", w, &got, &n, &t) == 4) {
        if (strcmp(w, workload) == 0 && got == workers && n == iters && t > 0) {
          *ns = t;
          r = 0;
        } else {
          fprintf(stderr, "tandem bench: %s answered for another job: %s\n", HELPER, rest);
        }
      } else if (sscanf(rest, "error=%d", &code) == 1 && code < 0) {
        r = code;
      }
    }
    line = nl != NULL ? nl + 1 : NULL;
  }
  free(out);
  if (status != 0) {
    /* A result, then a failure at the end of the job, fails the run too. */
    fprintf(stderr, "tandem bench: the job `%s -np %s %s %s %s` failed (its messages are above)\n",
            mpirun_path, np, helper_path, workload, its);
    if (r == 0 || r == -EPROTO) r = status;
  } else if (r == -EPROTO) {
    fprintf(stderr, "tandem bench: no result line from %s\n", HELPER);
  }
  return r;
}

/* ---- Implementations ------------------------------------------------------------------------ */

enum kind { CLUSTER, PROCESSES, SEQUENTIAL };

typedef struct impl_arg {
  enum kind kind;
  unsigned workers; /* CLUSTER: worker ranks; PROCESSES: workers */
} impl_arg;

static tdm_pool *kept; /* the process pool of the workload being measured */

static int pool_get(unsigned workers, tdm_pool **out) {
  if (kept == NULL) {
    tdm_pool_options o = { .backend = TDM_POOL_PROCESSES, .workers = workers };
    int r = tdm_pool_open(&kept, &o);
    if (r != 0) return failed("tdm_pool_open (processes)", r);
  }
  *out = kept;
  return 0;
}

static int64_t *map_in, *map_out;

static int map_arrays(void) {
  return bench_map_arrays(MAP_ITEMS, &map_in, &map_out);
}

static int run_map(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  if (a->kind == CLUSTER) return job_run("map", a->workers, iters, ns);
  size_t n = iters < MAP_ITEMS ? (size_t)iters : MAP_ITEMS;
  int64_t maps = iters / (int64_t)n, elapsed = 0;
  tdm_pool *p = NULL;
  int r = map_arrays();
  if (r == 0 && a->kind == PROCESSES) r = pool_get(a->workers, &p);
  if (r != 0) return r;
  memset(map_out, 0, n * sizeof *map_out); /* a map that writes nothing fails the check */
  settle();
  for (int64_t k = 0; k < maps && r == 0; k++) {
    int64_t t0 = tdm_clock_now();
    if (a->kind == PROCESSES) {
      r = failed("tdm_pool_map", tdm_pool_map(p, bench_map_item_fn, map_in, sizeof *map_in, map_out,
                                              sizeof *map_out, n, NULL));
    } else {
      for (size_t i = 0; i < n; i++)
        map_out[i] = bench_map_item(map_in[i]);
    }
    elapsed += tdm_clock_now() - t0;
  }
  for (size_t i = 0; r == 0 && i < n; i++) {
    if (map_out[i] != bench_map_item(map_in[i])) {
      fprintf(stderr, "tandem bench: map output %zu is %lld\n", i, (long long)map_out[i]);
      r = -EPROTO;
    }
  }
  if (r == 0) *ns = (double)elapsed / (double)(maps * (int64_t)n);
  return r;
}

static int run_cpu(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  if (a->kind == CLUSTER) return job_run("cpu", a->workers, iters, ns);
  size_t tasks = (size_t)iters;
  uint64_t count = CPU_COUNT;
  uint64_t *sums = calloc(tasks, sizeof *sums);
  tdm_future **fs = calloc(tasks, sizeof *fs);
  tdm_pool *p = NULL;
  int r = sums != NULL && fs != NULL ? 0 : -ENOMEM;
  if (r == 0 && a->kind == PROCESSES) r = pool_get(a->workers, &p);
  int64_t elapsed = 0;
  if (r == 0) {
    settle();
    int64_t t0 = tdm_clock_now();
    if (a->kind == PROCESSES) {
      const char *what = "";
      r = bench_submit_and_wait(p, bench_cpu_task, &count, sizeof count, tasks, fs, sums, &what);
      failed(what, r);
    } else {
      for (size_t i = 0; i < tasks; i++)
        sums[i] = bench_sum_to(count);
    }
    elapsed = tdm_clock_now() - t0;
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

/* ---- The suite ------------------------------------------------------------------------------ */

static void measure(bench_ctx *ctx, const char *key, int64_t iters, int64_t quick_iters,
                    bench_rate rate, const bench_impl *impls, size_t n) {
  bench_workload w = { .iters = iters, .quick_iters = quick_iters, .rate = rate };
  snprintf(w.key, sizeof w.key, "%s", key);
  w.n_impls = (int)n;
  memcpy(w.impls, impls, n * sizeof *impls);
  bench_run(ctx, &w);
  if (kept != NULL) tdm_pool_close(kept);
  kept = NULL;
}

void bench_cluster_suite(bench_ctx *ctx) {
  static impl_arg cluster[MAX_WORKERS], procs[MAX_WORKERS];
  static const impl_arg seq = { .kind = SEQUENTIAL };
  static char names[2][MAX_WORKERS][3][128];
  static const char *const work[2] = { "tdm_pool_map", "tdm_pool_submit" };

  find_pieces();
  for (unsigned k = 0; k < MAX_WORKERS; k++) {
    unsigned n = k + 1;
    cluster[k] = (impl_arg){ CLUSTER, n };
    procs[k] = (impl_arg){ PROCESSES, n };
    for (int w = 0; w < 2; w++) {
      char why[64] = "";
      if (missing != NULL) snprintf(why, sizeof why, " (%s)", missing);
      snprintf(names[w][k][0], sizeof names[w][k][0], "%s, cluster, %u worker rank%s (-np %u)%s",
               work[w], n, n == 1 ? "" : "s", n + 1, why);
      snprintf(names[w][k][1], sizeof names[w][k][1], "%s, processes, %u worker%s", work[w], n,
               n == 1 ? "" : "s");
      snprintf(names[w][k][2], sizeof names[w][k][2], "sequential loop, 1 thread%s",
               w == 1 ? " (ratio: the cluster's speedup)" : "");
    }
  }

  char key[BENCH_KEY_MAX];
  for (unsigned k = 0; k < MAX_WORKERS; k++) {
    const bench_impl impls[] = {
      { names[0][k][0], run_map, &cluster[k] },
      { names[0][k][1], run_map, &procs[k] },
      { names[0][k][2], run_map, &seq },
    };
    snprintf(key, sizeof key, "cluster/map-1m/%u-worker%s", k + 1, k ? "s" : "");
    measure(ctx, key, MAP_RUN * MAP_ITEMS, MAP_QUICK * MAP_ITEMS, BENCH_RATE_ITEMS, impls,
            BENCH_COUNT(impls));
  }
  for (unsigned k = 0; k < MAX_WORKERS; k++) {
    const bench_impl impls[] = {
      { names[1][k][0], run_cpu, &cluster[k] },
      { names[1][k][1], run_cpu, &procs[k] },
      { names[1][k][2], run_cpu, &seq },
    };
    snprintf(key, sizeof key, "cluster/cpu-16x10m/%u-worker%s", k + 1, k ? "s" : "");
    measure(ctx, key, CPU_TASKS, CPU_QUICK, BENCH_RATE_NONE, impls, BENCH_COUNT(impls));
  }
  bench_map_arrays_free(&map_in, &map_out);
}
