/*
 * main.c: the tandem command: `tandem demo`, `tandem bench`, --help and --version.
 *
 * The first argument picks the subcommand, which parses the rest (getopt_long, with argv[0] set
 * to the subcommand's name). Options before the subcommand are only --help and --version, so
 * `tandem --help demo` and `tandem demo --help` both do what they say.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "tandem.h"

static void usage(FILE *f) {
  fprintf(f, "usage: tandem <command> [options]\n"
             "       tandem --help | --version\n"
             "\n"
             "Python's threading, multiprocessing and concurrent.futures, in C.\n"
             "\n"
             "commands:\n"
             "  demo     threads or processes? the classic experiments, measured on this machine\n"
             "  bench    tandem against its peers (pthreads, GLib, OpenMP, CPython), with ratios\n"
             "  help     show this help, or a command's: tandem help demo\n"
             "\n"
             "Run 'tandem <command> --help' for a command's options; 'man tandem' for more.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
    printf("tandem %s\n", tdm_version());
    return 0;
  }
  if (strcmp(cmd, "help") == 0) {
    if (argc == 2) {
      usage(stdout);
      return 0;
    }
    char help[] = "--help";
    char *args[] = { argv[2], help, NULL };
    if (strcmp(argv[2], "demo") == 0) return cli_demo_main(2, args);
    if (strcmp(argv[2], "bench") == 0) return bench_main(2, args);
    fprintf(stderr, "tandem: no command '%s'\n", argv[2]);
    usage(stderr);
    return 2;
  }
  if (strcmp(cmd, "demo") == 0) return cli_demo_main(argc - 1, argv + 1);
  if (strcmp(cmd, "bench") == 0) return bench_main(argc - 1, argv + 1);
  if (cmd[0] == '-') {
    fprintf(stderr, "tandem: unknown option '%s'\n", cmd);
  } else {
    fprintf(stderr, "tandem: no command '%s'\n", cmd);
  }
  usage(stderr);
  return 2;
}
