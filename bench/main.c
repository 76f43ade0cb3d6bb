/*
 * main.c: `tandem bench`, the one entry point of tandem's benchmarks (a subcommand of the tandem
 * command, src/cli/main.c, which calls bench_main() with argv[0] set to "bench").
 *
 * It parses the options, runs every suite in turn (each suite measures its selected workloads
 * through the harness in bench.c), then lets the harness run the CPython peers and print the
 * results: the table, or JSON, or CSV, and with --svg a chart as well. A new suite is a function
 * declared in bench.h and called here.
 *
 * Exit status, as every subcommand of tandem: 0 when every measurement ran, 1 when one failed or
 * the chart could not be written, 2 for a usage error (3: the watchdog stopped a workload that
 * hung; see bench.c).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "cli/cli.h"

static void usage(FILE *f) {
  fprintf(f, "usage: tandem bench [--quick] [--runs N] [--filter SUBSTRING] [--list]\n"
             "                    [--json | --csv] [--svg FILE] [--no-peers] [--verbose] [--help]\n"
             "\n"
             "Measures tandem's synchronisation primitives, process starts, queues,\n"
             "managers and pools against their peers in the same run (pthreads, POSIX\n"
             "semaphores, raw fork/vfork/posix_spawn, pipes, sockets, POSIX mq, memcpy,\n"
             "GLib's thread pool, OpenMP and CPython's threading/multiprocessing/\n"
             "concurrent.futures), and prints ratios\n"
             "(peer time / tandem time: how many times faster tandem is).\n"
             "The workloads' names start with their suite: lock/, rlock/, cond/, sem/,\n"
             "event/, process/, queue/, manager/, cluster/, pool/ (--filter manager/ runs\n"
             "one suite). cluster/ runs tandem-cluster-bench under mpirun (1-4 worker\n"
             "ranks) against the process backend; without MPI its rows are skipped.\n"
             "\n"
             "  --quick             3 runs with fewer iterations (default: 5 runs)\n"
             "  --runs N            timed runs per measurement (the median is reported)\n"
             "  --filter SUBSTRING  run only the workloads whose name contains SUBSTRING\n"
             "  --list              list the workloads (after --filter) and exit\n"
             "  --json              print a JSON array, one object per result:\n"
             "                      {workload, impl, role, ns_per_op, runs[, goal]\n"
             "                      [, skipped | failed]}\n"
             "  --csv               print CSV: a header, then one row per result\n"
             "  --svg FILE          also write a bar chart of the results to FILE\n"
             "  --no-peers          do not run the CPython peers\n"
             "  --verbose           also print every run's time on stderr\n"
             "  --help              show this help\n"
             "\n"
             "The CPython peers run with /usr/bin/python3, or else python3 from PATH\n"
             "(TDM_BENCH_PYTHON overrides); without one they are reported as skipped,\n"
             "and so are GLib's and OpenMP's when this build lacks them.\n"
             "Exit status: 0, 1 when a measurement failed or FILE could not be written,\n"
             "2 for a usage error.\n");
}

/*
 * Says whether `path` can be written without writing it, so that a run of minutes does not end
 * in a chart that cannot be saved: its directory must exist and be writable, and the file, if it
 * exists, must be a writable regular file (or a device, such as /dev/null). Stores the reason in
 * *err (a positive errno) when it cannot.
 */
static bool writable(const char *path, int *err) {
  struct stat st;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      *err = EISDIR;
      return false;
    }
    if (access(path, W_OK) != 0) {
      *err = errno;
      return false;
    }
    return true;
  }
  if (errno != ENOENT) {
    *err = errno;
    return false;
  }
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    snprintf(dir, sizeof dir, ".");
  } else if (slash == path) {
    snprintf(dir, sizeof dir, "/");
  } else {
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  }
  if (access(dir, W_OK) != 0) {
    *err = errno;
    return false;
  }
  return true;
}

int bench_main(int argc, char **argv) {
  static const struct option longopts[] = {
    { "quick", no_argument, NULL, 'q' },
    { "json", no_argument, NULL, 'j' },
    { "csv", no_argument, NULL, 'c' },
    { "svg", required_argument, NULL, 's' },
    { "filter", required_argument, NULL, 'f' },
    { "runs", required_argument, NULL, 'r' },
    { "list", no_argument, NULL, 'l' },
    { "no-peers", no_argument, NULL, 'n' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  bench_options opt = { .runs = 0 };
  int c;
  optind = 1; /* getopt's state is global: start afresh */
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'q':
      opt.quick = true;
      break;
    case 'j':
      opt.json = true;
      break;
    case 'c':
      opt.csv = true;
      break;
    case 's':
      if (*optarg == '\0') {
        fprintf(stderr, "tandem bench: --svg takes a file name\n");
        usage(stderr);
        return 2;
      }
      opt.svg = optarg;
      break;
    case 'f':
      opt.filter = optarg;
      break;
    case 'r': {
      char *end;
      long n = strtol(optarg, &end, 10);
      if (*optarg == '\0' || *end != '\0' || n < 1 || n > 100) {
        fprintf(stderr, "tandem bench: --runs takes a number from 1 to 100\n");
        usage(stderr);
        return 2;
      }
      opt.runs = (int)n;
      break;
    }
    case 'l':
      opt.list = true;
      break;
    case 'n':
      opt.no_peers = true;
      break;
    case 'v':
      opt.verbose = true;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "tandem bench: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }
  if (opt.json && opt.csv) {
    fprintf(stderr, "tandem bench: --json and --csv exclude each other\n");
    usage(stderr);
    return 2;
  }
  if (opt.runs == 0) opt.runs = opt.quick ? 3 : 5;
  int err = 0;
  if (opt.svg != NULL && !opt.list && !writable(opt.svg, &err)) {
    fprintf(stderr, "tandem bench: cannot write the chart to %s: %s\n", opt.svg, strerror(err));
    return 1;
  }

  bench_ctx *ctx = bench_ctx_new(&opt);
  if (ctx == NULL) {
    fprintf(stderr, "tandem bench: out of memory\n");
    return 1;
  }
  bench_sync_suite(ctx);
  bench_process_suite(ctx);
  bench_queue_suite(ctx);
  /* Before the pools: the manager suite forks its clients, and OpenMP's team, which the pool
   * suite starts, keeps its threads until the program ends. */
  bench_manager_suite(ctx);
  /* The cluster suite forks mpirun, so it runs before OpenMP's team exists too. */
  bench_cluster_suite(ctx);
  bench_pool_suite(ctx);
  return bench_finish(ctx);
}
