/*
 * process_bench.c: starting a process, per start method, against the raw POSIX floors and
 * CPython's multiprocessing (bench/peers/cpython_process.py).
 *
 * One operation is one child that returns at once: start it, wait for it to end, collect its
 * exit status (which must be 0) and release what the start made. For tandem that is
 * tdm_process_start() with .start = fork, spawn or forkserver, tdm_process_join(),
 * tdm_process_exitcode() and tdm_process_close(); for the floors it is the bare system call and
 * waitpid(). The floors:
 *   fork()+_exit(0)+waitpid             what the fork method cannot beat;
 *   vfork()+_exit(0)+waitpid            the cheapest child Linux makes (the parent's memory is
 *                                       borrowed, not copied), for scale;
 *   posix_spawn(/bin/true)+waitpid      an exec of a small C program (glibc's posix_spawn is
 *                                       clone(CLONE_VM|CLONE_VFORK)+exec, as tandem's spawn is);
 *   posix_spawn(tandem --help)+waitpid  an exec of this program, the tandem command, as
 *                                       `tandem --help >/dev/null` (/proc/self/exe): it loads
 *                                       what a tandem spawn child loads (tandem's spawn execs
 *                                       /proc/self/exe too) and leaves main() at once, so the gap
 *                                       between it and tandem's spawn is tandem's own work (the
 *                                       boot exchange).
 * The harness's untimed warm-up run (a quarter of the iterations, at least one start) comes
 * first for every implementation, so tandem's forkserver is running and every path has been
 * taken once before timing starts; CPython's forkserver is started before timing too.
 *
 * The same workloads then run with a 1 GiB parent: the program mallocs 1 GiB and memsets it
 * (every page present, 4 KiB pages unless transparent huge pages are "always"), so that fork()
 * has to copy a page table for it and the child's exit has to tear that copy down, while spawn,
 * forkserver and posix_spawn (which copy nothing) should stay flat. The memory is taken in the
 * first run of these workloads (untimed: the warm-up), so --list allocates nothing, and it is
 * freed after them.
 *
 * The raw children _exit at once and cannot hang, so they are not registered with the
 * harness's watchdog (which would add a prctl() to the floor); tandem's children are tandem's.
 *
 * The goals of the project sit on the peer rows they are measured against (the table says
 * whether a run meets them): the fork method within 1.2x of a raw fork+waitpid (a ratio of at
 * least 1/1.2), and every start method at least 10x faster than CPython's same method (the peer
 * script gives that one).
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define PEERS "cpython_process.py"

#define BIG_PARENT ((size_t)1 << 30)

extern char **environ;

enum kind { TANDEM, RAW_FORK, RAW_VFORK, SPAWN_TRUE, SPAWN_TANDEM };

typedef struct impl_arg {
  enum kind kind;
  tdm_start_method method; /* TANDEM */
  bool big;                /* run with the 1 GiB parent */
} impl_arg;

/* ---- The 1 GiB parent ----------------------------------------------------------------------- */

static void *big_memory;

/* Takes and touches the 1 GiB the first time a big workload runs. */
static int big_parent(void) {
  if (big_memory != NULL) return 0;
  void *p = malloc(BIG_PARENT);
  if (p == NULL) return -ENOMEM;
  memset(p, 0x5a, BIG_PARENT);
  big_memory = p;
  return 0;
}

static void big_parent_free(void) {
  free(big_memory);
  big_memory = NULL;
}

/* ---- One start + join ----------------------------------------------------------------------- */

static int returns_at_once(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

static int tandem_once(const tdm_process_options *o) {
  tdm_process *p;
  int r = tdm_process_start(&p, returns_at_once, NULL, 0, o);
  if (r != 0) return r;
  int code = -1;
  r = tdm_process_join(p, TDM_FOREVER);
  if (r == 0) r = tdm_process_exitcode(p, &code);
  if (r == 0 && code != 0) r = -ECHILD;
  if (r != 0) {
    (void)tdm_process_kill(p);
    (void)tdm_process_join(p, TDM_FOREVER);
  }
  int c = tdm_process_close(p);
  return r != 0 ? r : c;
}

static int fork_once(void) {
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) _exit(0);
  return bench_child_wait(pid);
}

static int vfork_once(void) {
  pid_t pid = vfork();
  if (pid < 0) return -errno;
  if (pid == 0) _exit(0);
  return bench_child_wait(pid);
}

/* posix_spawn of `path`; with `quiet`, its standard output goes to /dev/null. */
static int spawn_once(const char *path, char *const argv[], bool quiet) {
  posix_spawn_file_actions_t fa;
  int r = posix_spawn_file_actions_init(&fa);
  if (r != 0) return -r;
  if (quiet) r = posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  if (r == 0) r = posix_spawn(&pid, path, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0) return -r;
  return bench_child_wait(pid);
}

/* ---- Runs ----------------------------------------------------------------------------------- */

static char true_path[] = "/bin/true";
static char *true_argv[] = { true_path, NULL };

/* `tandem --help`, this very program: prints its usage (to /dev/null) and returns from main(). */
static char tandem_path[] = "/proc/self/exe";
static char tandem_name[] = "tandem", tandem_help[] = "--help";
static char *tandem_argv[] = { tandem_name, tandem_help, NULL };

static int run_start(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  if (a->big) {
    int r = big_parent();
    if (r != 0) return r;
  }
  if (a->kind == SPAWN_TRUE && access(true_path, X_OK) != 0) return -ENOTSUP;
  tdm_process_options o = { .start = a->method };
  int r = 0;
  int64_t t0 = tdm_clock_now();
  for (int64_t i = 0; i < iters && r == 0; i++) {
    switch (a->kind) {
    case TANDEM:
      r = tandem_once(&o);
      break;
    case RAW_FORK:
      r = fork_once();
      break;
    case RAW_VFORK:
      r = vfork_once();
      break;
    case SPAWN_TRUE:
      r = spawn_once(true_path, true_argv, false);
      break;
    case SPAWN_TANDEM:
      r = spawn_once(tandem_path, tandem_argv, true);
      break;
    }
  }
  if (r == 0) *ns = (double)(tdm_clock_now() - t0) / (double)iters;
  return r;
}

/* ---- The suite ------------------------------------------------------------------------------ */

/* Measures `key` with impls (tandem's first) and the goals of the C peers (0: none). */
static void measure(bench_ctx *ctx, const char *key, int64_t iters, int64_t quick_iters,
                    const bench_impl *impls, const double *goals, size_t n) {
  bench_workload w = { .iters = iters, .quick_iters = quick_iters, .peer_script = PEERS };
  snprintf(w.key, sizeof w.key, "%s", key);
  w.n_impls = (int)n;
  memcpy(w.impls, impls, n * sizeof *impls);
  memcpy(w.goal, goals, n * sizeof *goals);
  bench_run(ctx, &w);
}

#define MEASURE(ctx, key, iters, quick_iters, impls, goals) \
  measure((ctx), (key), (iters), (quick_iters), (impls), (goals), BENCH_COUNT(impls))

/* The workloads of one parent size. Iterations: default, --quick. */
static void start_suite(bench_ctx *ctx, bool big) {
  const impl_arg tdm_fork = { TANDEM, TDM_START_FORK, big };
  const impl_arg tdm_spawn = { TANDEM, TDM_START_SPAWN, big };
  const impl_arg tdm_fs = { TANDEM, TDM_START_FORKSERVER, big };
  const impl_arg raw_fork = { RAW_FORK, TDM_START_DEFAULT, big };
  const impl_arg raw_vfork = { RAW_VFORK, TDM_START_DEFAULT, big };
  const impl_arg spawn_true = { SPAWN_TRUE, TDM_START_DEFAULT, big };
  const impl_arg spawn_tandem = { SPAWN_TANDEM, TDM_START_DEFAULT, big };
  const bench_impl fork_impls[] = {
    { "tdm_process_start fork+join", run_start, &tdm_fork },
    { "fork()+_exit+waitpid (raw)", run_start, &raw_fork },
    { "vfork()+_exit+waitpid (raw)", run_start, &raw_vfork },
  };
  const bench_impl spawn_impls[] = {
    { "tdm_process_start spawn+join", run_start, &tdm_spawn },
    { "posix_spawn(/bin/true)+waitpid", run_start, &spawn_true },
    { "posix_spawn(tandem --help >/dev/null)+waitpid", run_start, &spawn_tandem },
  };
  const bench_impl fs_impls[] = {
    { "tdm_process_start forkserver+join", run_start, &tdm_fs },
    { "fork()+_exit+waitpid (raw, this process)", run_start, &raw_fork },
  };
  /* The fork method within 1.2x of a raw fork (the goal is the small parent's). */
  const double fork_goals[] = { 0, big ? 0 : 1 / 1.2, 0 };
  const double no_goals[] = { 0, 0, 0 };
  /* A fork of the 1 GiB parent copies its page table (milliseconds): fewer of those. */
  const char *prefix = big ? "process/start-1gib-parent" : "process/start";
  char key[BENCH_KEY_MAX];
  snprintf(key, sizeof key, "%s/fork", prefix);
  MEASURE(ctx, key, big ? 20 : 500, big ? 5 : 100, fork_impls, fork_goals);
  snprintf(key, sizeof key, "%s/spawn", prefix);
  MEASURE(ctx, key, big ? 50 : 100, 20, spawn_impls, no_goals);
  snprintf(key, sizeof key, "%s/forkserver", prefix);
  MEASURE(ctx, key, big ? 20 : 500, big ? 5 : 100, fs_impls, no_goals);
}

void bench_process_suite(bench_ctx *ctx) {
  start_suite(ctx, false);
  start_suite(ctx, true);
  big_parent_free();
}
