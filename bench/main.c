/*
 * main.c: tandem-bench, the one entry point of tandem's benchmarks.
 *
 * It parses the options, runs every suite in turn (each suite measures its selected workloads
 * through the harness in bench.c), then lets the harness run the CPython peers and print the
 * results. A new suite is a function declared in bench.h and called here.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void usage(FILE *f) {
  fprintf(f, "usage: tandem-bench [--quick] [--json] [--filter SUBSTRING] [--runs N] [--list]\n"
             "                    [--no-peers] [--verbose] [--help]\n"
             "\n"
             "Measures tandem's synchronisation primitives, process starts, queues and\n"
             "pools against their peers in the same run (pthreads, POSIX semaphores, raw\n"
             "fork/vfork/posix_spawn, pipes, sockets, POSIX mq, memcpy, GLib's thread\n"
             "pool, OpenMP and CPython's threading/multiprocessing/concurrent.futures),\n"
             "and prints ratios\n"
             "(peer time / tandem time: how many times faster tandem is).\n"
             "\n"
             "  --quick             3 runs with fewer iterations (default: 5 runs)\n"
             "  --json              print a JSON array of {workload, impl, ns_per_op, runs}\n"
             "  --filter SUBSTRING  run only the workloads whose name contains SUBSTRING\n"
             "  --runs N            timed runs per measurement (the median is reported)\n"
             "  --list              list the workloads (after --filter) and exit\n"
             "  --no-peers          do not run the CPython peers\n"
             "  --verbose           also print every run's time on stderr\n"
             "  --help              show this help\n"
             "\n"
             "The CPython peers run with /usr/bin/python3, or else python3 from PATH\n"
             "(TDM_BENCH_PYTHON overrides); without one they are reported as skipped.\n");
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {
    { "quick", no_argument, NULL, 'q' },
    { "json", no_argument, NULL, 'j' },
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
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'q':
      opt.quick = true;
      break;
    case 'j':
      opt.json = true;
      break;
    case 'f':
      opt.filter = optarg;
      break;
    case 'r': {
      char *end;
      long n = strtol(optarg, &end, 10);
      if (*optarg == '\0' || *end != '\0' || n < 1 || n > 100) {
        fprintf(stderr, "tandem-bench: --runs takes a number from 1 to 100\n");
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
    fprintf(stderr, "tandem-bench: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }
  if (opt.runs == 0) opt.runs = opt.quick ? 3 : 5;

  bench_ctx *ctx = bench_ctx_new(&opt);
  if (ctx == NULL) {
    fprintf(stderr, "tandem-bench: out of memory\n");
    return 1;
  }
  bench_sync_suite(ctx);
  bench_process_suite(ctx);
  bench_queue_suite(ctx);
  bench_pool_suite(ctx);
  return bench_finish(ctx);
}
