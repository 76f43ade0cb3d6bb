/*
 * demo.c: `tandem demo`: threads or processes? The classic experiments, measured here.
 *
 * It runs, in order: three I/O-bound batches (tasks that sleep, that read files from the disk,
 * that download from a loopback HTTP server), one CPU-bound batch (the sum to ten million per
 * task), each by five methods (demo_run.c); then where a worker's writes land (memory), how
 * long a message takes between processes (IPC), and three claims from tutorials, each with a
 * prediction and a measurement (demo_more.c). It prints a table per experiment and one
 * sentence that says what the numbers show; the sentence is built from the numbers of this
 * run, never written in advance, so a machine where the usual story does not hold gets told so.
 *
 * Output: the table on stdout, or with --json one JSON document; --svg FILE adds a chart (one
 * group of bars per experiment); a progress line on stderr while it runs, when stderr is a
 * terminal. Exit status: 0, 1 when a measurement failed (the others are still reported), 2
 * for a usage error.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "demo.h"

/* ---- Options -------------------------------------------------------------------------------- */

enum exp_id { E_SLEEP, E_FILE, E_HTTP, E_CPU, E_MEMORY, E_IPC, E_CLAIMS, E_COUNT };

static const char *const exp_keys[E_COUNT] = { "io-sleep", "io-file", "io-http", "cpu",
                                               "memory",   "ipc",     "claims" };

typedef struct options {
  bool want[E_COUNT];
  long io_tasks, io_ms, file_kib, http_kib, cpu_tasks, memory_items, ipc_rounds, runs, cpu_n;
  double claim_s;
  bool json;
  const char *svg;
  int progress; /* -1: when stderr is a terminal */
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: tandem demo [-e|--experiments LIST] [-r|--runs N] [--json] [--svg FILE]\n"
          "                   [--io-tasks N] [--io-ms MS] [--file-kib KIB] [--http-kib KIB]\n"
          "                   [--cpu-tasks N] [--cpu-n N] [--memory-items N] [--ipc-rounds N]\n"
          "                   [--claim-seconds S] [--progress | --no-progress] [-h|--help]\n"
          "\n"
          "Threads or processes? Runs the classic experiments on this machine, each task batch\n"
          "sequentially, on threads, on threads under a CPython-style GIL, on processes and on\n"
          "the automatic pool, and prints what was measured and what it shows.\n"
          "\n"
          "  -e, --experiments LIST  comma-separated, from: io-sleep io-file io-http, io (the\n"
          "                          three), cpu, memory, ipc, claims (adds cpu), all (default)\n"
          "  -r, --runs N            timed runs per method; the median is shown (default 3)\n"
          "  --json                  print one JSON document instead of the tables\n"
          "  --svg FILE              also write a bar chart of the results to FILE\n"
          "  --io-tasks N            tasks in each I/O batch (default 16, at most 256)\n"
          "  --io-ms MS              how long each sleep and each HTTP answer waits (default 50)\n"
          "  --file-kib KIB          size of each file read from the disk (default 2048)\n"
          "  --http-kib KIB          size of each HTTP download (default 256)\n"
          "  --cpu-tasks N           tasks in the CPU batch (default 8, at most 256)\n"
          "  --cpu-n N               each CPU task sums the numbers below N (default 10000000)\n"
          "  --memory-items N        items the memory experiment's worker appends (default 1000)\n"
          "  --ipc-rounds N          round trips per IPC measurement (default 2000)\n"
          "  --claim-seconds S       the length of a task in the claims (default 1)\n"
          "  --progress              a progress line on stderr (default: if it is a terminal)\n"
          "  --no-progress           no progress line\n"
          "  -h, --help              show this help\n"
          "\n"
          "Exit status: 0; 1 when a measurement failed (the rest is still shown); 2 for bad\n"
          "options. The defaults finish in about 15 s on 2 CPUs.\n");
}

__attribute__((format(printf, 1, 2))) static int bad(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "tandem demo: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  usage(stderr);
  return 2;
}

static bool parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static bool parse_experiments(const char *list, bool want[E_COUNT]) {
  memset(want, 0, E_COUNT * sizeof want[0]);
  char buf[256];
  if (snprintf(buf, sizeof buf, "%s", list) >= (int)sizeof buf) return false;
  bool any = false;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
       tok = strtok_r(NULL, ",", &save)) {
    bool known = false;
    if (strcmp(tok, "all") == 0) {
      for (int e = 0; e < E_COUNT; e++)
        want[e] = true;
      known = true;
    } else if (strcmp(tok, "io") == 0) {
      want[E_SLEEP] = want[E_FILE] = want[E_HTTP] = known = true;
    }
    for (int e = 0; e < E_COUNT && !known; e++) {
      if (strcmp(tok, exp_keys[e]) == 0) want[e] = known = true;
    }
    if (!known) return false;
    any = true;
  }
  if (want[E_CLAIMS]) want[E_CPU] = true; /* claim 2 is read off the CPU experiment */
  return any;
}

/* The options that take a whole number, its range, and where it goes. */
static const struct numeric {
  int key;
  const char *name;
  long lo, hi;
  size_t offset;
} numerics[] = {
  { 'r', "runs", 1, 50, offsetof(options, runs) },
  { 'i', "io-tasks", 1, 256, offsetof(options, io_tasks) },
  { 'w', "io-ms", 0, 10000, offsetof(options, io_ms) },
  { 'f', "file-kib", 1, 1 << 20, offsetof(options, file_kib) },
  { 'H', "http-kib", 1, 1 << 20, offsetof(options, http_kib) },
  { 'c', "cpu-tasks", 1, 256, offsetof(options, cpu_tasks) },
  { 'n', "cpu-n", 1, 4000000000L, offsetof(options, cpu_n) },
  { 'm', "memory-items", 1, 1000000, offsetof(options, memory_items) },
  { 'p', "ipc-rounds", 1, 1000000, offsetof(options, ipc_rounds) },
};

static const struct numeric *numeric_option(int key) {
  for (size_t i = 0; i < sizeof numerics / sizeof numerics[0]; i++)
    if (numerics[i].key == key) return &numerics[i];
  return NULL;
}

/* Returns 0, or 2 after printing the usage (or 1 for --help, which printed it on stdout). */
static int parse(int argc, char **argv, options *o) {
  static const struct option longopts[] = {
    { "experiments", required_argument, NULL, 'e' },
    { "runs", required_argument, NULL, 'r' },
    { "json", no_argument, NULL, 'j' },
    { "svg", required_argument, NULL, 's' },
    { "io-tasks", required_argument, NULL, 'i' },
    { "io-ms", required_argument, NULL, 'w' },
    { "file-kib", required_argument, NULL, 'f' },
    { "http-kib", required_argument, NULL, 'H' },
    { "cpu-tasks", required_argument, NULL, 'c' },
    { "cpu-n", required_argument, NULL, 'n' },
    { "memory-items", required_argument, NULL, 'm' },
    { "ipc-rounds", required_argument, NULL, 'p' },
    { "claim-seconds", required_argument, NULL, 'C' },
    { "progress", no_argument, NULL, 'P' },
    { "no-progress", no_argument, NULL, 'Q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  *o = (options){ .io_tasks = 16,
                  .io_ms = 50,
                  .file_kib = 2048,
                  .http_kib = 256,
                  .cpu_tasks = 8,
                  .cpu_n = 10000000,
                  .memory_items = 1000,
                  .ipc_rounds = 2000,
                  .runs = 3,
                  .claim_s = 1.0,
                  .progress = -1 };
  parse_experiments("all", o->want);
  opterr = 0;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, ":e:r:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'e':
      if (!parse_experiments(optarg, o->want))
        return bad("--experiments takes a list of: io-sleep, io-file, io-http, io, cpu, memory, "
                   "ipc, claims, all");
      break;
    case 'j':
      o->json = true;
      break;
    case 's':
      if (*optarg == '\0') return bad("--svg takes a file name");
      o->svg = optarg;
      break;
    case 'C': {
      char *end;
      double s = strtod(optarg, &end);
      if (*optarg == '\0' || *end != '\0' || !(s >= 0.01 && s <= 60))
        return bad("--claim-seconds takes a number from 0.01 to 60");
      o->claim_s = s;
      break;
    }
    case 'P':
      o->progress = 1;
      break;
    case 'Q':
      o->progress = 0;
      break;
    case 'h':
      usage(stdout);
      return 1;
    case ':':
      return bad("option '%s' needs a value", argv[optind - 1]);
    default: {
      const struct numeric *num = numeric_option(c);
      if (num == NULL) return bad("unknown option '%s'", argv[optind - 1]);
      if (!parse_long(optarg, num->lo, num->hi, (long *)((char *)o + num->offset)))
        return bad("--%s takes a number from %ld to %ld", num->name, num->lo, num->hi);
    }
    }
  }
  if (optind < argc) return bad("unexpected argument '%s'", argv[optind]);
  if (o->progress < 0) o->progress = isatty(STDERR_FILENO);
  return 0;
}

/* Timed runs per method: the CPU batch takes milliseconds, so it runs three times as often, and
 * a slow spell of a shared machine weighs less on its median. */
static int runs_of(const options *o, enum exp_id e) {
  return (int)o->runs * (e == E_CPU ? 3 : 1);
}

/* ---- Progress ---------------------------------------------------------------------------------
 */

static int progress_on, progress_step, progress_total;

static void progress(const char *fmt, ...) {
  if (!progress_on) return;
  char msg[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\r\033[K[%d/%d] %s", ++progress_step, progress_total, msg);
  fflush(stderr);
}

static void progress_end(void) {
  if (progress_on) fprintf(stderr, "\r\033[K");
}

/* ---- The speed experiments --------------------------------------------------------------------
 */

typedef struct speed {
  enum exp_id id;
  char title[128];
  char unit[64]; /* what one task does, for the sentence */
  size_t n;
  demo_task *tasks;
  uint64_t *expected;
  void (*before)(void);
  demo_result r[M_COUNT];
  char summary[768];
  int setup_rc; /* the batch could not be prepared (its files, its server): not measured */
  char setup_what[64];
} speed;

static double speedup(const speed *s, demo_method m) {
  const demo_result *seq = &s->r[M_SEQ], *r = &s->r[m];
  if (seq->error != 0 || r->error != 0 || r->wall_s <= 0) return NAN;
  return seq->wall_s / r->wall_s;
}

static double cpu_ratio(const demo_result *r) {
  return r->error == 0 && r->wall_s > 0 ? r->cpu_s / r->wall_s : NAN;
}

static bool all_ok(const speed *s) {
  for (int m = 0; m < M_COUNT; m++)
    if (s->r[m].error != 0) return false;
  return true;
}

static void fmt_time(char *buf, size_t size, double s) {
  if (s < 1e-3) {
    snprintf(buf, size, "%.2f ms", s * 1e3);
  } else if (s < 1) {
    snprintf(buf, size, "%.1f ms", s * 1e3);
  } else {
    snprintf(buf, size, "%.2f s", s);
  }
}

/* Appends to a fixed buffer, cutting what does not fit. */
static void add(char *buf, size_t size, const char *fmt, ...) {
  size_t len = strlen(buf);
  if (len + 1 >= size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + len, size - len, fmt, ap);
  va_end(ap);
}

static void summarise_io(speed *s, int cpus, double cached) {
  char *b = s->summary;
  size_t z = sizeof s->summary;
  double seq_cpu = cpu_ratio(&s->r[M_SEQ]), thr = speedup(s, M_THREADS), gil = speedup(s, M_GIL),
         prc = speedup(s, M_PROCS), aut = speedup(s, M_AUTO);
  if (seq_cpu < 0.5) {
    add(b, z,
        "These tasks mostly wait: one after another they kept a CPU busy %.0f%% of the "
        "time. ",
        seq_cpu * 100);
    if (thr >= 1.5) {
      add(b, z, "Run at once, the waits overlap: threads were %.1fx faster than sequential", thr);
    } else {
      add(b, z, "Threads were %.1fx as fast as sequential", thr);
    }
    if (gil >= 0.8 * thr) {
      add(b, z,
          ", and the GIL model kept %.1fx, because a thread releases the GIL while it waits. ",
          gil);
    } else if (gil >= 1.5) {
      add(b, z,
          "; the GIL model kept %.1fx: the threads overlap their waits but take turns for the "
          "work between them. ",
          gil);
    } else {
      add(b, z, "; under the GIL model %.1fx: the work between the waits held the GIL. ", gil);
    }
  } else {
    /* Waiting is the smaller part: more CPUs help more than overlapping does. */
    add(b, z,
        "These tasks kept a CPU busy %.0f%% of the time even one after another (%s), so they "
        "gain more from CPUs than from overlapping their waits. Threads were %.1fx as fast as "
        "sequential, keeping %.1f CPUs busy; under the GIL model %.1fx (%.1f CPUs), %s. ",
        seq_cpu * 100,
        s->id != E_FILE ? "the work between the waits is most of each task"
        : cached > 0.95
            ? "the files stayed in memory, so reading them is copying, which is CPU work"
            : "this disk answers fast, and copying and checking the bytes is CPU work",
        thr, cpu_ratio(&s->r[M_THREADS]), gil, cpu_ratio(&s->r[M_GIL]),
        gil < 0.8 * thr ? "since only the waits overlap and the work takes turns"
                        : "since the waits overlap with the work");
  }
  double extra_ms = (s->r[M_PROCS].wall_s - s->r[M_THREADS].wall_s) * 1e3;
  if (prc < 0.8 * thr && extra_ms > 0) {
    add(b, z, "Processes reached %.1fx: starting %zu of them cost %.0f ms more than %zu threads. ",
        prc, s->n, extra_ms, s->n);
  } else {
    add(b, z, "Processes reached %.1fx. ", prc);
  }
  add(b, z, "The auto pool judged the work %s and aimed for %u workers (%.1fx)%s.",
      s->r[M_AUTO].auto_cpu ? "CPU-bound" : "I/O-bound", s->r[M_AUTO].auto_n, aut,
      !s->r[M_AUTO].auto_cpu && s->r[M_AUTO].auto_n > (unsigned)cpus
          ? ", more than the CPUs, since they wait"
          : "");
}

static void summarise_cpu(speed *s, int cpus) {
  char *b = s->summary;
  size_t z = sizeof s->summary;
  double thr = speedup(s, M_THREADS), gil = speedup(s, M_GIL), prc = speedup(s, M_PROCS),
         aut = speedup(s, M_AUTO);
  long ceiling = (long)s->n < cpus ? (long)s->n : cpus;
  add(b, z,
      "Each task computes and never waits (CPU/wall %.2f one after another), so only more "
      "CPUs make it faster, %ldx at most here (%zu tasks, %d CPU%s). ",
      cpu_ratio(&s->r[M_SEQ]), ceiling, s->n, cpus, cpus == 1 ? "" : "s");
  add(b, z, "C threads ran them %.1fx faster", thr);
  double busy = cpu_ratio(&s->r[M_THREADS]);
  if (thr > 1.05 * (double)ceiling) {
    add(b, z,
        ", more than the most %ld CPU%s can give, which only a change in this machine's speed "
        "between the runs explains (a shared host)",
        ceiling, ceiling == 1 ? "" : "s");
  } else if (busy > 1.5 && thr < 0.8 * busy) {
    add(b, z,
        " with %.1f CPUs busy: each did %.0f%% of what one CPU does alone, so this machine's "
        "CPUs share something (hyper-threads of one core, or a busy host)",
        busy, thr / busy * 100);
  }
  if (gil < 1.25) {
    add(b, z,
        "; under the GIL model they took turns (%.1fx, %llu hand-offs of the GIL), as "
        "CPython's threads do",
        gil, (unsigned long long)s->r[M_GIL].gil_switches);
  } else {
    add(b, z, "; under the GIL model %.1fx", gil);
  }
  add(b, z,
      "; processes %.1fx%s; the auto pool judged the work %s and aimed for %u workers "
      "(%.1fx%s).",
      prc, prc < 0.9 * thr ? ", paying for their start" : "",
      s->r[M_AUTO].auto_cpu ? "CPU-bound" : "I/O-bound", s->r[M_AUTO].auto_n, aut,
      aut > 1.05 * (double)ceiling && thr <= 1.05 * (double)ceiling
          ? ", more than the CPUs can give: this machine's speed changed between the runs"
          : "");
}

/* Index of the median of v[0..n-1] (the lower one of the middle two when n is even). */
static int median_index(const double *v, int n) {
  for (int k = 0; k < n; k++) {
    int below = 0, equal = 0;
    for (int j = 0; j < n; j++) {
      below += v[j] < v[k];
      equal += v[j] == v[k];
    }
    if (below <= (n - 1) / 2 && below + equal > (n - 1) / 2) return k;
  }
  return 0;
}

/*
 * Measures every method `runs` times, round-robin: each round runs every method once, starting
 * with a different one each round, so that a slow spell of the machine does not land on one
 * method alone. Before the first round, one task runs once untimed (page faults, lazy binding).
 * Each method's row is its median run.
 */
static int run_speed(speed *s, int runs, int cpus, double cached) {
  enum { MAX_RUNS = 3 * 50 };
  static demo_result one[M_COUNT][MAX_RUNS];
  double wall[M_COUNT][MAX_RUNS];
  int first = 0;
  if (s->setup_rc != 0) {
    for (int m = 0; m < M_COUNT; m++) {
      s->r[m] = (demo_result){ .error = s->setup_rc };
      snprintf(s->r[m].what, sizeof s->r[m].what, "%s", s->setup_what);
    }
    snprintf(s->summary, sizeof s->summary, "Not measured: %s failed (%s).", s->setup_what,
             tdm_strerror(s->setup_rc));
    return s->setup_rc;
  }
  demo_result warm;
  if (s->before != NULL) s->before();
  demo_run(M_SEQ, s->tasks, s->expected, 1, NULL, &warm);
  for (int k = 0; k < runs; k++) {
    for (int j = 0; j < M_COUNT; j++) {
      int m = (j + k) % M_COUNT;
      if (s->r[m].error != 0) continue;
      progress("%s: %s (run %d of %d)", exp_keys[s->id], demo_method_name((demo_method)m), k + 1,
               runs);
      int rc = demo_run((demo_method)m, s->tasks, s->expected, s->n, s->before, &one[m][k]);
      if (rc != 0) {
        s->r[m] = one[m][k];
        if (first == 0) first = rc;
        continue;
      }
      wall[m][k] = one[m][k].wall_s;
    }
  }
  for (int m = 0; m < M_COUNT; m++) {
    if (s->r[m].error != 0) continue;
    s->r[m] = one[m][median_index(wall[m], runs)];
    s->r[m].runs = runs;
  }
  if (all_ok(s)) {
    if (s->id == E_CPU) {
      summarise_cpu(s, cpus);
    } else {
      summarise_io(s, cpus, cached);
    }
  } else {
    snprintf(s->summary, sizeof s->summary,
             "A method failed, so the comparison is incomplete (see its row).");
  }
  return first;
}

/* ---- The machine ------------------------------------------------------------------------------
 */

typedef struct machine {
  int cpus;
  char system[256];
  char cpu_model[128];
  char date[32];
} machine;

static void describe_machine(machine *m) {
  m->cpus = tdm_cpu_count();
  struct utsname u;
  if (uname(&u) == 0) {
    snprintf(m->system, sizeof m->system, "%s %s %s", u.sysname, u.release, u.machine);
  }
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[256];
  while (f != NULL && fgets(line, sizeof line, f) != NULL) {
    char *colon = strchr(line, ':');
    if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
      colon += 1 + (colon[1] == ' ');
      colon[strcspn(colon, "\n")] = '\0';
      snprintf(m->cpu_model, sizeof m->cpu_model, "%s", colon);
      break;
    }
  }
  if (f != NULL) fclose(f);
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(m->date, sizeof m->date, "%Y-%m-%d %H:%M UTC", &tm);
}

/* ---- The whole run ----------------------------------------------------------------------------
 */

typedef struct demo {
  options opt;
  machine mach;
  speed speeds[E_CPU + 1];
  double files_cached; /* after the drop: 0 means the reads went to the disk */
  demo_memory_row memory[DEMO_MEMORY_ROWS];
  char memory_summary[512];
  demo_ipc ipc;
  char ipc_summary[384];
  demo_claims claims;
  struct claim {
    char text[96];
    bool holds;
    char verdict[48];
    char why[512];
  } claim[3];
  int memory_rc, ipc_rc, claims_rc, setup_rc;
  char setup_what[96];
} demo;

static void on_signal(int sig) {
  demo_files_remove(); /* the server and the pools' workers die with us (daemons) */
  signal(sig, SIG_DFL);
  raise(sig);
}

static int make_batch(speed *s, enum exp_id id, size_t n) {
  s->id = id;
  s->n = n;
  s->tasks = calloc(n, sizeof *s->tasks);
  s->expected = calloc(n, sizeof *s->expected);
  if (s->tasks == NULL || s->expected == NULL) return -ENOMEM;
  return 0;
}

static int setup(demo *d) {
  const options *o = &d->opt;
  int rc = 0;
  if (o->want[E_SLEEP]) {
    speed *s = &d->speeds[E_SLEEP];
    rc = make_batch(s, E_SLEEP, (size_t)o->io_tasks);
    snprintf(s->title, sizeof s->title, "%ld tasks, each sleeps %ld ms", o->io_tasks, o->io_ms);
    for (size_t i = 0; rc == 0 && i < s->n; i++)
      s->tasks[i] = (demo_task){ .kind = K_SLEEP, .index = (uint32_t)i, .ns = o->io_ms * 1000000 };
  }
  if (rc == 0 && o->want[E_FILE]) {
    speed *s = &d->speeds[E_FILE];
    rc = make_batch(s, E_FILE, (size_t)o->io_tasks);
    for (size_t i = 0; rc == 0 && i < s->n; i++)
      s->tasks[i] = (demo_task){ .kind = K_FILE,
                                 .index = (uint32_t)i,
                                 .bytes = (uint64_t)o->file_kib * 1024 };
    progress("io-file: writing %ld files of %ld KiB", o->io_tasks, o->file_kib);
    if (rc == 0) {
      s->setup_rc = demo_files_create(s->tasks, s->n, (uint64_t)o->file_kib * 1024);
      snprintf(s->setup_what, sizeof s->setup_what, "creating the files");
    }
    demo_files_drop();
    d->files_cached = demo_files_cached();
    s->before = demo_files_drop;
    snprintf(s->title, sizeof s->title, "%ld tasks, each reads a %ld KiB file%s%s", o->io_tasks,
             o->file_kib, s->setup_rc == 0 ? " from " : "",
             s->setup_rc == 0 ? demo_files_dir() : "");
  }
  if (rc == 0 && o->want[E_HTTP]) {
    speed *s = &d->speeds[E_HTTP];
    uint16_t port = 0;
    rc = make_batch(s, E_HTTP, (size_t)o->io_tasks);
    if (rc == 0) {
      s->setup_rc = demo_http_start(&port);
      snprintf(s->setup_what, sizeof s->setup_what, "starting the HTTP server");
    }
    for (size_t i = 0; rc == 0 && i < s->n; i++)
      s->tasks[i] = (demo_task){ .kind = K_HTTP,
                                 .index = (uint32_t)i,
                                 .ns = o->io_ms * 1000000,
                                 .bytes = (uint64_t)o->http_kib * 1024,
                                 .port = port };
    snprintf(
        s->title, sizeof s->title,
        "%ld tasks, each downloads %ld KiB from a loopback HTTP server that answers after %ld ms",
        o->io_tasks, o->http_kib, o->io_ms);
  }
  if (rc == 0 && o->want[E_CPU]) {
    speed *s = &d->speeds[E_CPU];
    rc = make_batch(s, E_CPU, (size_t)o->cpu_tasks);
    for (size_t i = 0; rc == 0 && i < s->n; i++)
      s->tasks[i] = (demo_task){ .kind = K_SUM, .index = (uint32_t)i, .n = (uint64_t)o->cpu_n };
    snprintf(s->title, sizeof s->title, "%ld tasks, each sums the numbers below %ld", o->cpu_tasks,
             o->cpu_n);
  }
  for (int e = 0; rc == 0 && e <= E_CPU; e++) {
    speed *s = &d->speeds[e];
    for (size_t i = 0; s->setup_rc == 0 && i < s->n; i++)
      s->expected[i] = demo_expected(&s->tasks[i]);
  }
  if (rc != 0) snprintf(d->setup_what, sizeof d->setup_what, "setup");
  return rc;
}

static void judge_claims(demo *d) {
  const demo_claims *c = &d->claims;
  double s = c->seconds;
  struct claim *k = &d->claim[0];
  snprintf(k->text, sizeof k->text,
           "Four threads that each sleep %g s take %g s, because of the GIL.", s, 4 * s);
  k->holds = c->gil_sleep_s >= 3 * s;
  snprintf(k->why, sizeof k->why,
           "Four threads under the GIL model, each sleeping %.2g s, took %.2f s%s.", s,
           c->gil_sleep_s,
           k->holds ? ""
                    : ", not four times as long: a thread releases the GIL while it sleeps, so the "
                      "sleeps overlap; "
                      "the GIL serialises running Python code, not waiting");

  k = &d->claim[1];
  snprintf(k->text, sizeof k->text, "Threads don't speed up CPU-bound work.");
  const speed *cpu = &d->speeds[E_CPU];
  double gil = speedup(cpu, M_GIL), thr = speedup(cpu, M_THREADS);
  bool gil_holds = gil < 1.25, c_holds = thr < 1.25;
  snprintf(
      k->why, sizeof k->why,
      "%s under the GIL model (%.1fx for %zu tasks) and %s for C threads (%.1fx on %d CPU%s)%s.",
      gil_holds ? "Holds" : "Does not hold", gil, cpu->n, c_holds ? "holds" : "does not hold", thr,
      d->mach.cpus, d->mach.cpus == 1 ? "" : "s",
      d->mach.cpus == 1       ? ": with one CPU nothing runs in parallel"
      : gil_holds && !c_holds ? ": it is CPython's GIL that serialises the threads, not threads"
                              : "");
  k->holds = gil_holds && c_holds;

  k = &d->claim[2];
  snprintf(k->text, sizeof k->text, "A default Pool runs four %g-second tasks in just over %g s.",
           s, s);
  bool fast = c->pool_sleep_s <= 1.5 * s && c->pool_cpu_s <= 1.5 * s;
  k->holds = fast;
  snprintf(k->why, sizeof k->why,
           "A default pool has one worker per usable CPU: %u here, on %d CPU%s. For four %.2g s "
           "tasks that predicts %.2f s when they sleep and %.2f s when they compute; measured "
           "%.2f s and %.2f s.%s",
           c->pool_workers, c->cpus, c->cpus == 1 ? "" : "s", s, c->predict_sleep_s,
           c->predict_cpu_s, c->pool_sleep_s, c->pool_cpu_s,
           fast ? "" : " It holds on a machine with 4 or more usable CPUs.");
  for (int i = 0; i < 3; i++)
    snprintf(d->claim[i].verdict, sizeof d->claim[i].verdict, "%s",
             d->claim[i].holds ? "holds" : "does not hold");
  if (gil_holds && !c_holds) {
    snprintf(d->claim[1].verdict, sizeof d->claim[1].verdict, "holds under the GIL only");
  } else if (!gil_holds && c_holds) {
    snprintf(d->claim[1].verdict, sizeof d->claim[1].verdict, "holds for C threads only");
  }
}

static void summarise_memory(demo *d) {
  const demo_memory_row *r = d->memory;
  snprintf(d->memory_summary, sizeof d->memory_summary,
           "A thread writes to the parent's own memory, so the parent sees %ld of %ld items; a "
           "process writes to its own copy, so the parent sees %ld. To bring items back from a "
           "process, put them in shared memory (%ld seen), send them (%ld received), or keep "
           "the list in a manager process that every process reaches through a proxy (%ld seen).",
           r[0].seen, r[0].appended, r[1].seen, r[2].seen, r[3].seen, r[4].seen);
}

static void summarise_ipc(demo *d) {
  snprintf(d->ipc_summary, sizeof d->ipc_summary,
           "A message from one process to another took %.1f µs through a tandem queue; a round "
           "trip took %.1f µs through queues and %.1f µs through a pipe. Threads need none of "
           "this: they share memory.",
           d->ipc.hello_us, d->ipc.queue_rtt_us, d->ipc.pipe_rtt_us);
}

/* ---- Output: tables ---------------------------------------------------------------------------
 */

/* Prints `text` wrapped at 96 columns: the first line indented by `first` spaces, the others by
 * `rest`. */
static void wrap_hanging(const char *text, int first, int rest) {
  const int width = 96;
  const char *p = text;
  int indent = first;
  while (*p != '\0') {
    int room = width - indent, len = (int)strlen(p);
    int cut = len;
    if (len > room) {
      cut = room;
      while (cut > 0 && p[cut] != ' ')
        cut--;
      if (cut == 0) cut = room;
    }
    printf("%*s%.*s\n", indent, "", cut, p);
    p += cut;
    while (*p == ' ')
      p++;
    indent = rest;
  }
}

/* Prints `text` wrapped at 96 columns, each line indented by `indent` spaces. */
static void wrap(const char *text, int indent) {
  wrap_hanging(text, indent, indent);
}

static void print_speed(const speed *s, int number) {
  static const char *const headings[] = { "I/O-bound: sleeping", "I/O-bound: reading files",
                                          "I/O-bound: downloading", "CPU-bound: computing" };
  char heading[256];
  snprintf(heading, sizeof heading, "%d. %s: %s", number, headings[s->id], s->title);
  printf("\n");
  wrap_hanging(heading, 0, 3);
  if (s->setup_rc != 0) {
    printf("   not measured: %s: %s\n", s->setup_what, tdm_strerror(s->setup_rc));
    return;
  }
  printf("   %-15s %10s %9s %9s   %s\n", "method", "wall", "speedup", "CPU/wall", "verdict");
  for (int m = 0; m < M_COUNT; m++) {
    const demo_result *r = &s->r[m];
    if (r->error != 0) {
      printf("   %-15s failed: %s: %s\n", demo_method_name((demo_method)m), r->what,
             tdm_strerror(r->error));
      continue;
    }
    char wall[32], verdict[64] = "";
    fmt_time(wall, sizeof wall, r->wall_s);
    if (m == M_AUTO) {
      snprintf(verdict, sizeof verdict, "%s, %u workers", r->auto_cpu ? "CPU-bound" : "I/O-bound",
               r->auto_n);
    }
    printf("   %-15s %10s %8.1fx %9.2f%s%s\n", demo_method_name((demo_method)m), wall,
           speedup(s, (demo_method)m), cpu_ratio(r), verdict[0] != '\0' ? "   " : "", verdict);
  }
}

static void print_text(const demo *d) {
  const options *o = &d->opt;
  printf("tandem demo: threads or processes? Measured on this machine.\n");
  char line[512];
  snprintf(line, sizeof line, "%d CPU%s usable (tdm_cpu_count)%s%s, %s; tandem %s, %s.",
           d->mach.cpus, d->mach.cpus == 1 ? "" : "s", d->mach.cpu_model[0] ? ", " : "",
           d->mach.cpu_model, d->mach.system, tdm_version(), d->mach.date);
  wrap(line, 2);
  snprintf(line, sizeof line,
           "Each time is the median of %ld run%s (%ld for the CPU batch), from starting the "
           "workers to having them gone.",
           o->runs, o->runs == 1 ? "" : "s", 3 * o->runs);
  wrap(line, 2);
  printf("  speedup: sequential time / this time; CPU/wall: CPU time of all the workers / wall "
         "time.\n");
  if (d->setup_rc != 0) {
    printf("\n  setup failed (%s): %s\n", d->setup_what, tdm_strerror(d->setup_rc));
    return;
  }
  int number = 0;
  for (int e = 0; e <= E_CPU; e++) {
    if (!o->want[e]) continue;
    print_speed(&d->speeds[e], ++number);
    if (e == E_FILE) {
      if (d->files_cached >= 0) {
        char note[256];
        snprintf(note, sizeof note,
                 "(%.0f%% of the files' pages stayed cached after each drop from the page cache%s)",
                 d->files_cached * 100,
                 d->files_cached < 0.05   ? ": the reads went to the disk"
                 : d->files_cached > 0.95 ? ": the reads came from memory, as on a file system "
                                            "in memory (tmpfs), which cannot drop them"
                                          : ": some reads came from memory");
        wrap(note, 3);
      }
    }
    if (d->speeds[e].setup_rc == 0) wrap(d->speeds[e].summary, 3);
  }
  if (o->want[E_MEMORY]) {
    printf("\n%d. Memory: a worker appends %ld items to a list; what does the parent see?\n",
           ++number, o->memory_items);
    for (int i = 0; i < DEMO_MEMORY_ROWS; i++) {
      const demo_memory_row *r = &d->memory[i];
      if (r->note != NULL) {
        printf("   %-23s %-48s %s\n", r->model, r->how, r->note);
      } else if (r->error != 0) {
        printf("   %-23s %-48s failed: %s\n", r->model, r->how, tdm_strerror(r->error));
      } else {
        printf("   %-23s %-48s parent %s %ld\n", r->model, r->how, i == 3 ? "gets" : "sees",
               r->seen);
      }
    }
    if (d->memory_rc == 0) wrap(d->memory_summary, 3);
  }
  if (o->want[E_IPC]) {
    printf("\n%d. IPC between two processes, the median of %ld rounds\n", ++number, o->ipc_rounds);
    if (d->ipc_rc != 0) {
      printf("   failed: %s: %s\n", d->ipc.what, tdm_strerror(d->ipc_rc));
    } else {
      printf("   %-40s %8.1f µs   the child said \"%s\"\n", "tdm_queue, one way (child to parent)",
             d->ipc.hello_us, d->ipc.hello);
      printf("   %-40s %8.1f µs\n", "tdm_queue, round trip", d->ipc.queue_rtt_us);
      printf("   %-40s %8.1f µs\n", "tdm_pipe, round trip", d->ipc.pipe_rtt_us);
      wrap(d->ipc_summary, 3);
    }
  }
  if (o->want[E_CLAIMS]) {
    printf("\n%d. Tutorial claims, put to the test\n", ++number);
    if (d->claims_rc != 0) {
      printf("   failed: %s: %s\n", d->claims.what, tdm_strerror(d->claims_rc));
    } else {
      for (int i = 0; i < 3; i++) {
        char verdict[48];
        size_t k = 0;
        for (; d->claim[i].verdict[k] != '\0' && k + 1 < sizeof verdict; k++)
          verdict[k] = (char)toupper((unsigned char)d->claim[i].verdict[k]);
        verdict[k] = '\0';
        printf("   \"%s\"  %s\n", d->claim[i].text, verdict);
        wrap(d->claim[i].why, 5);
      }
    }
  }
}

/* ---- Output: JSON ------------------------------------------------------------------------------
 */

static void json_num(FILE *f, double v) {
  if (isfinite(v)) {
    fprintf(f, "%.6g", v);
  } else {
    fputs("null", f);
  }
}

static void json_error(FILE *f, int code, const char *what) {
  if (code == 0) {
    fputs("null", f);
    return;
  }
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, tdm_strerror(code));
  cli_json_string(f, msg);
}

static void print_json(const demo *d) {
  FILE *f = stdout;
  const options *o = &d->opt;
  fprintf(f, "{\n  \"tandem\": ");
  cli_json_string(f, tdm_version());
  fprintf(f, ",\n  \"date\": ");
  cli_json_string(f, d->mach.date);
  fprintf(f, ",\n  \"machine\": {\"cpus\": %d, \"cpu_model\": ", d->mach.cpus);
  cli_json_string(f, d->mach.cpu_model);
  fprintf(f, ", \"system\": ");
  cli_json_string(f, d->mach.system);
  fprintf(f, "},\n  \"runs\": %ld,\n  \"setup_error\": ", o->runs);
  json_error(f, d->setup_rc, d->setup_what);
  fprintf(f, ",\n  \"experiments\": [");
  const char *sep = "\n";
  for (int e = 0; e <= E_CPU && d->setup_rc == 0; e++) {
    if (!o->want[e]) continue;
    const speed *s = &d->speeds[e];
    fprintf(f, "%s    {\"name\": \"%s\", \"title\": ", sep, exp_keys[e]);
    cli_json_string(f, s->title);
    fprintf(f, ", \"tasks\": %zu, \"results\": [", s->n);
    for (int m = 0; m < M_COUNT; m++) {
      const demo_result *r = &s->r[m];
      fprintf(f, "%s\n      {\"method\": \"%s\", \"ok\": %s, \"wall_s\": ", m ? "," : "",
              demo_method_name((demo_method)m), r->error == 0 ? "true" : "false");
      json_num(f, r->error == 0 ? r->wall_s : NAN);
      fprintf(f, ", \"speedup\": ");
      json_num(f, speedup(s, (demo_method)m));
      fprintf(f, ", \"cpu_per_wall\": ");
      json_num(f, cpu_ratio(r));
      fprintf(f, ", \"runs\": %d, \"error\": ", r->runs);
      json_error(f, r->error, r->what);
      if (m == M_AUTO && r->error == 0) {
        fprintf(f, ", \"auto\": {\"cpu_bound\": %s, \"workers\": %u}",
                r->auto_cpu ? "true" : "false", r->auto_n);
      }
      if (m == M_GIL && r->error == 0) {
        fprintf(f, ", \"gil_switches\": %llu", (unsigned long long)r->gil_switches);
      }
      fprintf(f, "}");
    }
    fprintf(f, "],\n     \"summary\": ");
    cli_json_string(f, s->summary);
    if (e == E_FILE) {
      fprintf(f, ", \"cached_after_drop\": ");
      json_num(f, d->files_cached >= 0 ? d->files_cached : NAN);
    }
    fprintf(f, "}");
    sep = ",\n";
  }
  if (o->want[E_MEMORY] && d->setup_rc == 0) {
    fprintf(f, "%s    {\"name\": \"memory\", \"items\": %ld, \"rows\": [", sep, o->memory_items);
    for (int i = 0; i < DEMO_MEMORY_ROWS; i++) {
      const demo_memory_row *r = &d->memory[i];
      fprintf(f, "%s\n      {\"model\": ", i ? "," : "");
      cli_json_string(f, r->model);
      fprintf(f, ", \"how\": ");
      cli_json_string(f, r->how);
      fprintf(f, ", \"seen\": ");
      if (r->seen >= 0) {
        fprintf(f, "%ld", r->seen);
      } else {
        fputs("null", f);
      }
      fprintf(f, ", \"error\": ");
      json_error(f, r->error, "worker");
      fprintf(f, ", \"note\": ");
      if (r->note != NULL) {
        cli_json_string(f, r->note);
      } else {
        fputs("null", f);
      }
      fprintf(f, "}");
    }
    fprintf(f, "],\n     \"summary\": ");
    cli_json_string(f, d->memory_rc == 0 ? d->memory_summary : "");
    fprintf(f, "}");
    sep = ",\n";
  }
  if (o->want[E_IPC] && d->setup_rc == 0) {
    fprintf(f, "%s    {\"name\": \"ipc\", \"rounds\": %ld, \"hello\": ", sep, o->ipc_rounds);
    cli_json_string(f, d->ipc.hello);
    bool ok = d->ipc_rc == 0;
    fprintf(f, ", \"queue_one_way_us\": ");
    json_num(f, ok ? d->ipc.hello_us : NAN);
    fprintf(f, ", \"queue_round_trip_us\": ");
    json_num(f, ok ? d->ipc.queue_rtt_us : NAN);
    fprintf(f, ", \"pipe_round_trip_us\": ");
    json_num(f, ok ? d->ipc.pipe_rtt_us : NAN);
    fprintf(f, ", \"error\": ");
    json_error(f, d->ipc_rc, d->ipc.what);
    fprintf(f, ", \"summary\": ");
    cli_json_string(f, ok ? d->ipc_summary : "");
    fprintf(f, "}");
    sep = ",\n";
  }
  if (o->want[E_CLAIMS] && d->setup_rc == 0) {
    const demo_claims *c = &d->claims;
    bool ok = d->claims_rc == 0;
    fprintf(f, "%s    {\"name\": \"claims\", \"seconds\": ", sep);
    json_num(f, c->seconds);
    fprintf(f, ", \"error\": ");
    json_error(f, d->claims_rc, c->what);
    fprintf(f, ", \"claims\": [");
    const double measured[3] = { c->gil_sleep_s, NAN, c->pool_sleep_s };
    for (int i = 0; i < 3 && ok; i++) {
      fprintf(f, "%s\n      {\"claim\": ", i ? "," : "");
      cli_json_string(f, d->claim[i].text);
      fprintf(f, ", \"holds\": %s, \"verdict\": ", d->claim[i].holds ? "true" : "false");
      cli_json_string(f, d->claim[i].verdict);
      fprintf(f, ", \"measured_s\": ");
      json_num(f, measured[i]);
      if (i == 2) {
        fprintf(f, ", \"measured_cpu_s\": ");
        json_num(f, c->pool_cpu_s);
        fprintf(f, ", \"predicted_s\": ");
        json_num(f, c->predict_sleep_s);
        fprintf(f, ", \"predicted_cpu_s\": ");
        json_num(f, c->predict_cpu_s);
        fprintf(f, ", \"workers\": %u", c->pool_workers);
      }
      fprintf(f, ", \"explanation\": ");
      cli_json_string(f, d->claim[i].why);
      fprintf(f, "}");
    }
    fprintf(f, "]}");
  }
  fprintf(f, "\n  ]\n}\n");
}

/* ---- Output: the chart --------------------------------------------------------------------------
 */

static int write_svg(const demo *d, const char *path) {
  char subtitle[512];
  snprintf(subtitle, sizeof subtitle,
           "%d CPU%s usable, %s, tandem %s, %s; median of %ld run%s (CPU: %ld)", d->mach.cpus,
           d->mach.cpus == 1 ? "" : "s", d->mach.cpu_model[0] ? d->mach.cpu_model : d->mach.system,
           tdm_version(), d->mach.date, d->opt.runs, d->opt.runs == 1 ? "" : "s", 3 * d->opt.runs);
  cli_chart *c = cli_chart_new("tandem demo: wall time by method (shorter is faster)", subtitle);
  if (c == NULL) return -ENOMEM;
  int rc = 0;
  for (int e = 0; e <= E_CPU && rc == 0 && d->setup_rc == 0; e++) {
    if (!d->opt.want[e]) continue;
    const speed *s = &d->speeds[e];
    char group[192];
    snprintf(group, sizeof group, "%s: %s", exp_keys[e], s->title);
    for (int m = 0; m < M_COUNT && rc == 0; m++) {
      const demo_result *r = &s->r[m];
      char label[96], wall[32];
      if (r->error != 0) {
        snprintf(label, sizeof label, "failed: %s", tdm_strerror(r->error));
      } else {
        fmt_time(wall, sizeof wall, r->wall_s);
        snprintf(label, sizeof label, "%s (%.1fx)", wall, speedup(s, (demo_method)m));
      }
      rc = cli_chart_bar(c, group, demo_method_name((demo_method)m),
                         r->error == 0 ? r->wall_s : NAN, label);
    }
  }
  if (rc == 0 && d->opt.want[E_IPC] && d->ipc_rc == 0) {
    const char *group = "ipc: between two processes, median";
    const double v[3] = { d->ipc.hello_us, d->ipc.queue_rtt_us, d->ipc.pipe_rtt_us };
    const char *const names[3] = { "tdm_queue, one way", "tdm_queue, round trip",
                                   "tdm_pipe, round trip" };
    for (int i = 0; i < 3 && rc == 0; i++) {
      char label[48];
      snprintf(label, sizeof label, "%.1f µs", v[i]);
      rc = cli_chart_bar(c, group, names[i], v[i], label);
    }
  }
  if (rc == 0) rc = cli_chart_save(c, path);
  cli_chart_free(c);
  return rc;
}

/* ---- main ---------------------------------------------------------------------------------------
 */

int cli_demo_main(int argc, char **argv) {
  static demo d; /* large; and the signal handler's files live in demo_run.c */
  memset(&d, 0, sizeof d);
  int rc = parse(argc, argv, &d.opt);
  if (rc != 0) return rc == 1 ? 0 : rc;
  const options *o = &d.opt;
  describe_machine(&d.mach);

  progress_on = o->progress;
  progress_total = 0;
  for (int e = 0; e <= E_CPU; e++)
    progress_total += o->want[e] ? M_COUNT * runs_of(o, e) : 0;
  progress_total += o->want[E_FILE] + o->want[E_MEMORY] + o->want[E_IPC] + o->want[E_CLAIMS];

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  signal(SIGPIPE, SIG_IGN);
  signal(SIGXFSZ, SIG_IGN); /* a file size limit fails the write (EFBIG), not the demo */

  int failed = 0;
  d.setup_rc = demo_run_init();
  bool gil = d.setup_rc == 0;
  if (!gil) snprintf(d.setup_what, sizeof d.setup_what, "tdm_gil_init");
  if (d.setup_rc == 0) d.setup_rc = setup(&d);
  if (d.setup_rc == 0) {
    for (int e = 0; e <= E_CPU; e++)
      if (o->want[e] && run_speed(&d.speeds[e], runs_of(o, e), d.mach.cpus, d.files_cached) != 0)
        failed = 1;
    demo_http_stop();
    demo_files_remove();
    if (o->want[E_MEMORY]) {
      progress("memory");
      d.memory_rc = demo_memory(o->memory_items, d.memory);
      if (d.memory_rc == 0) summarise_memory(&d);
    }
    if (o->want[E_IPC]) {
      progress("ipc");
      d.ipc_rc = demo_ipc_run((int)o->ipc_rounds, &d.ipc);
      if (d.ipc_rc == 0) summarise_ipc(&d);
    }
    if (o->want[E_CLAIMS]) {
      progress("claims");
      d.claims_rc = demo_claims_run(o->claim_s, &d.claims);
      if (d.claims_rc == 0 && all_ok(&d.speeds[E_CPU])) {
        judge_claims(&d);
      } else if (d.claims_rc == 0) {
        d.claims_rc =
            d.speeds[E_CPU].r[M_THREADS].error ? d.speeds[E_CPU].r[M_THREADS].error : -ECANCELED;
        snprintf(d.claims.what, sizeof d.claims.what, "the CPU experiment failed");
      }
    }
    failed |= d.memory_rc != 0 || d.ipc_rc != 0 || d.claims_rc != 0;
  } else {
    failed = 1;
    demo_http_stop();
    demo_files_remove();
  }
  progress_end();

  if (o->json) {
    print_json(&d);
  } else {
    print_text(&d);
  }
  if (o->svg != NULL) {
    int w = write_svg(&d, o->svg);
    if (w != 0) {
      fprintf(stderr, "tandem demo: cannot write %s: %s\n", o->svg, tdm_strerror(w));
      failed = 1;
    } else if (!o->json) {
      printf("\nChart: %s\n", o->svg);
    }
  }
  for (int e = 0; e <= E_CPU; e++) {
    free(d.speeds[e].tasks);
    free(d.speeds[e].expected);
  }
  if (gil) demo_run_fini();
  fflush(stdout);
  return failed;
}
