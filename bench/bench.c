/*
 * bench.c: the harness of `tandem bench`: timing, medians, the CPython peer scripts, the output.
 *
 * Measuring. bench_run() takes one workload at a time. Every implementation first runs once
 * with a quarter of the iterations, not counted (the warm-up: page faults, lazy binding, the CPU
 * clock ramping up), then the timed runs go round-robin across implementations, each round starting
 * with a different one, so that a slow phase of the machine (another process, thermal throttling)
 * does not land on one implementation only. The median of the runs is kept: it ignores a run that a
 * preemption spoiled, which a mean would not.
 *
 * Termination. A workload is bounded by a watchdog (alarm(2)). Its handler, like the handler of
 * SIGINT and SIGTERM, does only async-signal-safe work: it SIGKILLs every child process that is
 * registered here and the process group of a running peer script, writes a message and _exits.
 * Children also carry PR_SET_PDEATHSIG, so none outlives the program even when it is SIGKILLed.
 *
 * Peers. A workload may name a script in bench/peers/ that measures CPython's counterparts.
 * After the C workloads, bench_finish() runs each named script once with /usr/bin/python3 (else
 * python3 from PATH; TDM_BENCH_PYTHON overrides), passing the keys of the workloads that ran, the
 * number of runs and --quick. The script prints one JSON object per line; its results join the
 * table under the same keys. The script runs in a process group of its own so that the group,
 * including any multiprocessing children, can be killed as a whole. When python3 is missing, or
 * the script fails or returns nothing for a workload, the table says "skipped (why)": a number
 * is never made up. The scripts are found next to the tandem command (the build copies them to
 * <dir of tandem>/peers), then where `make install` puts them (<bindir>/../share/tandem/peers,
 * TDM_BENCH_PEERS_FROM_BIN), then in the source tree; python runs them with -B, so that no
 * __pycache__ is left in an installed tree.
 *
 * Output. Results are kept in the order they were measured and grouped by workload for output,
 * tandem's row first. The table (the default), the JSON array (--json) and the CSV (--csv) carry
 * the same results: one row or object per implementation of each workload, with its median, its
 * number of runs, its goal and, when it has no number, why. --svg also draws them (svg.c), one
 * group of bars per workload, in addition to whichever of the three is printed.
 */
#include "bench.h"

#include <assert.h>
#include <math.h>
#include <errno.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"

#ifndef TDM_BENCH_PEERS_DIR
#define TDM_BENCH_PEERS_DIR "bench/peers"
#endif
/* Where `make install` puts the peer scripts, relative to the directory of the tandem command. */
#ifndef TDM_BENCH_PEERS_FROM_BIN
#define TDM_BENCH_PEERS_FROM_BIN "../share/tandem/peers"
#endif

#define MAX_RUNS       100
#define MAX_CHILDREN   64
#define WATCHDOG_S     120 /* per workload */
#define PEER_TIMEOUT_S 180 /* per peer script */
#define IMPL_NAME_MAX  96
#define NOTE_MAX       160

/* ---- Results ------------------------------------------------------------------------------- */

enum status { ST_OK, ST_SKIPPED, ST_FAILED };

typedef struct result {
  char workload[BENCH_KEY_MAX];
  char impl[IMPL_NAME_MAX];
  bool tandem;
  enum status status;
  double ns; /* the median, when ST_OK */
  int runs;
  bench_rate rate; /* the workload's (C results only; see workload_rate()) */
  int64_t bytes_per_op;
  double goal;         /* a peer's goal, the least ratio that meets it; 0: none */
  char note[NOTE_MAX]; /* why it was skipped or failed */
} result;

/* A workload whose CPython peers a script should measure. */
typedef struct peer_request {
  const char *script;
  char key[BENCH_KEY_MAX];
} peer_request;

struct bench_ctx {
  bench_options opt;
  result *results;
  size_t n_results, cap_results;
  peer_request *requests;
  size_t n_requests, cap_requests;
  char python_version[32]; /* from the peer scripts; empty when none ran */
  char python_path[PATH_MAX];
  int failures;
};

static void *grow(void *p, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return p;
  size_t c = *cap ? *cap * 2 : 32;
  void *q = realloc(p, c * size);
  if (q == NULL) {
    fprintf(stderr, "tandem bench: out of memory\n");
    exit(1);
  }
  *cap = c;
  return q;
}

static result *add_result(bench_ctx *ctx, const char *workload, const char *impl, bool tandem) {
  ctx->results = grow(ctx->results, &ctx->cap_results, ctx->n_results, sizeof *ctx->results);
  result *r = &ctx->results[ctx->n_results++];
  memset(r, 0, sizeof *r);
  snprintf(r->workload, sizeof r->workload, "%s", workload);
  snprintf(r->impl, sizeof r->impl, "%s", impl);
  r->tandem = tandem;
  return r;
}

static void add_skipped(bench_ctx *ctx, const char *workload, const char *impl, const char *why) {
  result *r = add_result(ctx, workload, impl, false);
  r->status = ST_SKIPPED;
  snprintf(r->note, sizeof r->note, "%s", why);
}

/* ---- Children, signals and the watchdog ---------------------------------------------------- */

/* Read by the signal handler: only plain stores of whole words happen while it may run. */
static volatile pid_t children[MAX_CHILDREN];
static volatile pid_t peer_group;
static char current_workload[BENCH_KEY_MAX];

static void say(const char *s) {
  ssize_t r = write(STDERR_FILENO, s, strlen(s));
  (void)r;
}

static void kill_everything(void) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] > 0) kill(children[i], SIGKILL);
  if (peer_group > 0) kill(-peer_group, SIGKILL);
  /* Reap what we killed (waitpid is async-signal-safe); the script's own children go to init. */
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] > 0) waitpid(children[i], NULL, 0);
  if (peer_group > 0) waitpid(peer_group, NULL, 0);
}

static void on_fatal_signal(int sig) {
  kill_everything();
  if (sig == SIGALRM) {
    say("\ntandem bench: workload ");
    say(current_workload);
    say(" did not finish in time (watchdog); its children were killed\n");
    _exit(3);
  }
  say("\ntandem bench: interrupted; children killed\n");
  _exit(128 + sig);
}

static const int fatal_signals[] = { SIGALRM, SIGINT, SIGTERM, SIGHUP };

static void install_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
    sigaction(fatal_signals[i], &sa, NULL);
}

/* In a new child: default signal dispositions, and death when the program ends. */
static void child_setup(pid_t parent) {
  for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
    signal(fatal_signals[i], SIG_DFL);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1); /* the program died before prctl took effect */
}

static int register_child(pid_t pid) {
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i] == 0) {
      children[i] = pid;
      return 0;
    }
  }
  return -EAGAIN;
}

static void unregister_child(pid_t pid) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] == pid) children[i] = 0;
}

static int wait_status(pid_t pid, int *status) {
  while (waitpid(pid, status, 0) < 0) {
    if (errno != EINTR) return -errno;
  }
  return 0;
}

/* ---- Helpers for workloads ------------------------------------------------------------------ */

void *bench_shared_alloc(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "tandem bench: mmap of %zu bytes failed: %s\n", size, strerror(errno));
    exit(1);
  }
  return p;
}

void bench_shared_free(void *p, size_t size) {
  munmap(p, size);
}

int bench_party_start(bench_party *p, bool process, void (*fn)(void *), void *arg) {
  memset(p, 0, sizeof *p);
  p->process = process;
  if (!process) return tdm_thread_start(&p->thread, fn, arg, NULL);

  pid_t parent = getpid();
  fflush(NULL); /* the child _exits, but a buffered line must not be written twice anyway */
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) {
    child_setup(parent);
    fn(arg);
    _exit(0);
  }
  p->pid = pid;
  if (register_child(pid) != 0) {
    kill(pid, SIGKILL);
    int st;
    wait_status(pid, &st);
    return -EAGAIN;
  }
  return 0;
}

int bench_child_wait(pid_t pid) {
  int st = 0;
  int r = wait_status(pid, &st);
  if (r != 0) return r;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -ECHILD;
}

int bench_party_join(bench_party *p) {
  if (!p->process) return tdm_thread_join(p->thread, TDM_FOREVER);
  int r = bench_child_wait(p->pid);
  unregister_child(p->pid);
  return r;
}

void bench_gate_arrive(bench_gate *g) {
  __atomic_fetch_add(&g->arrived, 1, __ATOMIC_SEQ_CST);
  while (!__atomic_load_n(&g->open, __ATOMIC_ACQUIRE))
    sched_yield();
}

int64_t bench_gate_open(bench_gate *g, uint32_t n) {
  while (__atomic_load_n(&g->arrived, __ATOMIC_ACQUIRE) < n)
    sched_yield();
  int64_t t0 = tdm_clock_now();
  __atomic_store_n(&g->open, 1, __ATOMIC_RELEASE);
  return t0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- The context and the measurements ------------------------------------------------------- */

bench_ctx *bench_ctx_new(const bench_options *opt) {
  bench_ctx *ctx = calloc(1, sizeof *ctx);
  if (ctx == NULL) return NULL;
  ctx->opt = *opt;
  if (ctx->opt.runs < 1) ctx->opt.runs = 1;
  if (ctx->opt.runs > MAX_RUNS) ctx->opt.runs = MAX_RUNS;
  install_handlers();
  return ctx;
}

bool bench_selected(const bench_ctx *ctx, const char *key) {
  return ctx->opt.filter == NULL || strstr(key, ctx->opt.filter) != NULL;
}

bool bench_quick(const bench_ctx *ctx) {
  return ctx->opt.quick;
}

static bool show_progress(const bench_ctx *ctx) {
  return !ctx->opt.json && !ctx->opt.csv && isatty(STDERR_FILENO);
}

static void request_peers(bench_ctx *ctx, const bench_workload *w) {
  ctx->requests = grow(ctx->requests, &ctx->cap_requests, ctx->n_requests, sizeof *ctx->requests);
  peer_request *q = &ctx->requests[ctx->n_requests++];
  q->script = w->peer_script;
  snprintf(q->key, sizeof q->key, "%s", w->key);
}

void bench_run(bench_ctx *ctx, const bench_workload *w) {
  if (!bench_selected(ctx, w->key)) return;
  if (ctx->opt.list) {
    printf("%s\n", w->key);
    return;
  }
  int runs = ctx->opt.runs, n = w->n_impls;
  int64_t iters = ctx->opt.quick ? w->quick_iters : w->iters;
  int64_t warm_iters = iters / 4 > 0 ? iters / 4 : 1;
  double samples[BENCH_MAX_IMPLS][MAX_RUNS];
  int err[BENCH_MAX_IMPLS] = { 0 };

  if (show_progress(ctx)) fprintf(stderr, "\r\033[K  measuring %s ...", w->key);
  snprintf(current_workload, sizeof current_workload, "%s", w->key);
  alarm(WATCHDOG_S);
  for (int i = 0; i < n; i++) {
    double ignored;
    err[i] = w->impls[i].run(w->impls[i].arg, warm_iters, &ignored);
  }
  for (int run = 0; run < runs; run++) {
    for (int k = 0; k < n; k++) {
      int i = (run + k) % n;
      if (err[i] == 0) err[i] = w->impls[i].run(w->impls[i].arg, iters, &samples[i][run]);
    }
  }
  alarm(0);

  if (show_progress(ctx)) fprintf(stderr, "\r\033[K");
  for (int i = 0; i < n; i++) {
    if (ctx->opt.verbose && err[i] == 0) {
      fprintf(stderr, "%s, %s: ns/op per run:", w->key, w->impls[i].name);
      for (int run = 0; run < runs; run++)
        fprintf(stderr, " %.1f", samples[i][run]);
      fprintf(stderr, "\n");
    }
    result *r = add_result(ctx, w->key, w->impls[i].name, i == 0);
    r->rate = w->rate;
    r->bytes_per_op = w->bytes_per_op;
    r->goal = w->goal[i];
    if (err[i] == 0) {
      r->status = ST_OK;
      r->runs = runs;
      r->ns = bench_median(samples[i], runs);
    } else if (err[i] == -ENOTSUP) {
      r->status = ST_SKIPPED;
      snprintf(r->note, sizeof r->note, "not supported here");
    } else {
      r->status = ST_FAILED;
      snprintf(r->note, sizeof r->note, "failed: %s", tdm_strerror(err[i]));
      ctx->failures++;
    }
  }
  if (w->peer_script != NULL) request_peers(ctx, w);
}

void bench_measure(bench_ctx *ctx, const char *key, int64_t iters, int64_t quick_iters,
                   const char *peer_script, const bench_impl *impls, size_t n) {
  bench_workload w = { .iters = iters, .quick_iters = quick_iters, .peer_script = peer_script };
  assert(n >= 1 && n <= BENCH_MAX_IMPLS);
  snprintf(w.key, sizeof w.key, "%s", key);
  w.n_impls = (int)n;
  memcpy(w.impls, impls, n * sizeof *impls);
  bench_run(ctx, &w);
}

/* ---- Peer scripts --------------------------------------------------------------------------- */

/* Finds `name` (a path, or a command searched on PATH) and stores its path in out. */
static bool find_program(const char *name, char *out, size_t size) {
  if (strchr(name, '/') != NULL) {
    snprintf(out, size, "%s", name);
    return access(out, X_OK) == 0;
  }
  const char *path = getenv("PATH");
  if (path == NULL) path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    const char *end = strchr(path, ':');
    size_t len = end ? (size_t)(end - path) : strlen(path);
    if (len > 0 && len < size) {
      snprintf(out, size, "%.*s/%s", (int)len, path, name);
      if (access(out, X_OK) == 0) return true;
    }
    path += len;
    if (*path == ':') path++;
  }
  return false;
}

/* Stores dir/script in out and says whether it is a readable file. */
static bool script_at(const char *dir, const char *script, char *out, size_t size) {
  int k = snprintf(out, size, "%s/%s", dir, script);
  return k > 0 && (size_t)k < size && access(out, R_OK) == 0;
}

/*
 * Finds a peer script: in <dir>/peers, where <dir> holds the tandem command (the build copies
 * bench/peers/ there), then in <dir>/TDM_BENCH_PEERS_FROM_BIN (where `make install` puts them),
 * then in the source tree.
 */
static bool find_script(const char *script, char *out, size_t size) {
  char exe[PATH_MAX], dir[PATH_MAX + 64];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash != NULL) {
      *slash = '\0';
      snprintf(dir, sizeof dir, "%s/peers", exe);
      if (script_at(dir, script, out, size)) return true;
      snprintf(dir, sizeof dir, "%s/%s", exe, TDM_BENCH_PEERS_FROM_BIN);
      if (script_at(dir, script, out, size)) return true;
    }
  }
  return script_at(TDM_BENCH_PEERS_DIR, script, out, size);
}

/* Copies the JSON string value of "field" in `line` into out; false when there is none. */
static bool json_string(const char *line, const char *field, char *out, size_t size) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", field);
  const char *p = strstr(line, pat);
  if (p == NULL) return false;
  p += strlen(pat);
  while (*p == ' ')
    p++;
  if (*p++ != '"') return false;
  size_t n = 0;
  for (; *p && *p != '"'; p++) {
    if (*p == '\\' && p[1] != '\0') p++;
    if (n + 1 < size) out[n++] = *p;
  }
  out[n] = '\0';
  return *p == '"';
}

static bool json_number(const char *line, const char *field, double *out) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", field);
  const char *p = strstr(line, pat);
  if (p == NULL) return false;
  char *end;
  double v = strtod(p + strlen(pat), &end);
  if (end == p + strlen(pat)) return false;
  *out = v;
  return true;
}

/* Reads the script's output, up to the deadline. Returns the text (NUL-terminated) or NULL. */
static char *read_all(int fd, int64_t deadline, bool *timed_out) {
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  if (buf == NULL) return NULL;
  *timed_out = false;
  for (;;) {
    int64_t left = deadline - tdm_clock_now();
    if (left <= 0) {
      *timed_out = true;
      break;
    }
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int pr = poll(&pfd, 1, (int)(left / 1000000 + 1));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    if (len + 1024 > cap) {
      char *b = realloc(buf, cap *= 2);
      if (b == NULL) break;
      buf = b;
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
  }
  buf[len] = '\0';
  return buf;
}

static bool has_peer_result(const bench_ctx *ctx, size_t first, const char *key) {
  for (size_t i = first; i < ctx->n_results; i++)
    if (strcmp(ctx->results[i].workload, key) == 0) return true;
  return false;
}

/* Runs one peer script for every workload that named it, and adds its results. */
static void run_peer_script(bench_ctx *ctx, const char *script) {
  size_t n_keys = 0;
  for (size_t i = 0; i < ctx->n_requests; i++)
    if (strcmp(ctx->requests[i].script, script) == 0) n_keys++;
  if (n_keys == 0) return;

  char why[NOTE_MAX] = "";
  char path[PATH_MAX];
  /* The distribution's CPython (the one `make bench` installs, built with its usual
   * optimisations) is the fair peer; a python3 earlier on PATH may be a slower local build. */
  const char *python = getenv("TDM_BENCH_PYTHON");
  if (python == NULL || *python == '\0')
    python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  if (ctx->opt.no_peers) {
    snprintf(why, sizeof why, "--no-peers");
  } else if (!find_program(python, ctx->python_path, sizeof ctx->python_path)) {
    snprintf(why, sizeof why, "%s not installed", python);
    ctx->python_path[0] = '\0';
  } else if (!find_script(script, path, sizeof path)) {
    snprintf(why, sizeof why, "%s not found", script);
  }

  size_t first = ctx->n_results;
  if (why[0] == '\0') {
    char runs[16];
    snprintf(runs, sizeof runs, "%d", ctx->opt.runs);
    const char **argv = calloc(n_keys + 8, sizeof *argv);
    if (argv == NULL) return;
    size_t a = 0;
    argv[a++] = ctx->python_path;
    argv[a++] = "-B"; /* no __pycache__ beside the scripts, which may be installed */
    argv[a++] = path;
    argv[a++] = "--runs";
    argv[a++] = runs;
    if (ctx->opt.quick) argv[a++] = "--quick";
    for (size_t i = 0; i < ctx->n_requests; i++)
      if (strcmp(ctx->requests[i].script, script) == 0) argv[a++] = ctx->requests[i].key;
    argv[a] = NULL;

    if (show_progress(ctx)) fprintf(stderr, "\r\033[K  measuring CPython peers (%s) ...", script);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      snprintf(why, sizeof why, "pipe: %s", strerror(errno));
    } else {
      pid_t parent = getpid();
      fflush(NULL);
      pid_t pid = fork();
      if (pid == 0) {
        setpgid(0, 0);
        child_setup(parent);
        dup2(fds[1], STDOUT_FILENO);
        execv(ctx->python_path, (char *const *)argv);
        say("tandem bench: cannot run python\n");
        _exit(127);
      }
      close(fds[1]);
      if (pid < 0) {
        snprintf(why, sizeof why, "fork: %s", strerror(errno));
      } else {
        setpgid(pid, pid); /* also here: the group must exist before it can be killed */
        peer_group = pid;
        bool timed_out;
        char *out = read_all(fds[0], tdm_clock_now() + TDM_S(PEER_TIMEOUT_S), &timed_out);
        if (timed_out) kill(-pid, SIGKILL);
        /* Kill leftovers of the group while the leader, a zombie at worst, keeps its id. */
        siginfo_t info;
        while (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
        }
        kill(-pid, SIGKILL);
        int st = 0;
        wait_status(pid, &st);
        peer_group = 0;

        for (char *line = out; line != NULL && *line;) {
          char *nl = strchr(line, '\n');
          if (nl) *nl = '\0';
          char key[BENCH_KEY_MAX], impl[IMPL_NAME_MAX], err[NOTE_MAX - 16];
          double ns;
          if (json_string(line, "python", ctx->python_version, sizeof ctx->python_version)) {
            /* the interpreter's version, for the header */
          } else if (json_string(line, "workload", key, sizeof key) &&
                     json_string(line, "impl", impl, sizeof impl)) {
            if (json_number(line, "ns_per_op", &ns)) {
              result *r = add_result(ctx, key, impl, false);
              double runs_d = 0;
              r->status = ST_OK;
              r->ns = ns;
              r->runs = json_number(line, "runs", &runs_d) ? (int)runs_d : ctx->opt.runs;
              if (!json_number(line, "goal", &r->goal)) r->goal = 0;
            } else {
              if (!json_string(line, "error", err, sizeof err)) snprintf(err, sizeof err, "?");
              char note[NOTE_MAX];
              snprintf(note, sizeof note, "error: %s", err);
              add_skipped(ctx, key, impl, note);
            }
          }
          line = nl ? nl + 1 : NULL;
        }
        free(out);
        if (timed_out)
          snprintf(why, sizeof why, "%s timed out after %d s", script, PEER_TIMEOUT_S);
        else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
          snprintf(why, sizeof why, "%s failed (status %d)", script,
                   WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        else
          snprintf(why, sizeof why, "no result from %s", script);
      }
      close(fds[0]);
    }
    free(argv);
  }
  for (size_t i = 0; i < ctx->n_requests; i++) {
    const peer_request *q = &ctx->requests[i];
    if (strcmp(q->script, script) == 0 && !has_peer_result(ctx, first, q->key))
      add_skipped(ctx, q->key, "CPython", why);
  }
}

/* Runs each script once, at the first request that names it. */
static void run_peer_scripts(bench_ctx *ctx) {
  for (size_t i = 0; i < ctx->n_requests; i++) {
    const char *s = ctx->requests[i].script;
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++)
      seen = strcmp(ctx->requests[j].script, s) == 0;
    if (!seen) run_peer_script(ctx, s);
  }
}

/* ---- Output --------------------------------------------------------------------------------- */

/*
 * Stores in order[] the indexes of the results grouped by workload, in the order in which the
 * workloads first appear, tandem's result first in each group (peer scripts add theirs last).
 */
static void group_results(const bench_ctx *ctx, size_t *order) {
  size_t n = 0;
  for (size_t i = 0; i < ctx->n_results; i++) {
    const char *key = ctx->results[i].workload;
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++)
      seen = strcmp(ctx->results[j].workload, key) == 0;
    if (seen) continue;
    for (int pass = 0; pass < 2; pass++)
      for (size_t j = i; j < ctx->n_results; j++)
        if (strcmp(ctx->results[j].workload, key) == 0 && ctx->results[j].tandem == (pass == 0))
          order[n++] = j;
  }
}

/* tandem's result of workload `key`, or NULL when there is none. */
static const result *tandem_result(const bench_ctx *ctx, const char *key) {
  for (size_t i = 0; i < ctx->n_results; i++)
    if (ctx->results[i].tandem && strcmp(ctx->results[i].workload, key) == 0)
      return &ctx->results[i];
  return NULL;
}

/* Stores peer p's time / tandem's t in *ratio when both have a number; false otherwise. */
static bool ratio_of(const result *p, const result *t, double *ratio) {
  if (p->status != ST_OK || t == NULL || t->status != ST_OK || t->ns <= 0 || p->tandem)
    return false;
  *ratio = p->ns / t->ns;
  return true;
}

static const char *status_name(enum status st) {
  return st == ST_OK ? "ok" : st == ST_SKIPPED ? "skipped" : "failed";
}

/* The machine and the run, one line: "tandem 0.1.0, Linux 6.1 x86_64, 2 CPUs (...), ...". */
static void describe_machine(const bench_ctx *ctx, char *out, size_t size) {
  struct utsname u;
  char system[200] = "";
  if (uname(&u) == 0)
    snprintf(system, sizeof system, "%s %s %s, ", u.sysname, u.release, u.machine);
  int k = snprintf(out, size, "tandem %s, %s%d CPUs (tdm_cpu_count), glibc %s", tdm_version(),
                   system, tdm_cpu_count(), gnu_get_libc_version());
  if (ctx->python_version[0] && k > 0 && (size_t)k < size)
    snprintf(out + k, size - (size_t)k, ", CPython %s (%s)", ctx->python_version, ctx->python_path);
}

/*
 * The JSON array: one object per result, in table order, with the keys workload, impl, role
 * ("tandem" or "peer"), ns_per_op (a number, or null when there is none), runs, then goal when
 * the row has one, and skipped or failed (the reason) when ns_per_op is null.
 */
static void print_json(const bench_ctx *ctx, const size_t *order) {
  printf("[");
  for (size_t k = 0; k < ctx->n_results; k++) {
    const result *r = &ctx->results[order[k]];
    printf("%s\n  {\"workload\": ", k ? "," : "");
    cli_json_string(stdout, r->workload);
    printf(", \"impl\": ");
    cli_json_string(stdout, r->impl);
    printf(", \"role\": \"%s\", \"ns_per_op\": ", r->tandem ? "tandem" : "peer");
    if (r->status == ST_OK)
      printf("%.3f", r->ns);
    else
      printf("null");
    printf(", \"runs\": %d", r->runs);
    if (r->goal > 0) printf(", \"goal\": %g", r->goal);
    if (r->status != ST_OK) {
      printf(", \"%s\": ", status_name(r->status));
      cli_json_string(stdout, r->note);
    }
    printf("}");
  }
  printf("\n]\n");
}

/* Writes one CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break. */
static void csv_field(const char *s) {
  if (strpbrk(s, ",\"\r\n") == NULL) {
    fputs(s, stdout);
    return;
  }
  putchar('"');
  for (; *s; s++) {
    if (*s == '"') putchar('"');
    putchar(*s);
  }
  putchar('"');
}

/*
 * The CSV: a header row, then one row per result in table order, with the JSON's content:
 * workload, impl, role, ns_per_op (empty when there is none), runs, ratio (peer / tandem, empty on
 * tandem's row and where either has no number), goal (empty when none), status (ok, skipped or
 * failed) and note (why it has no number).
 */
static void print_csv(const bench_ctx *ctx, const size_t *order) {
  printf("workload,impl,role,ns_per_op,runs,ratio,goal,status,note\n");
  for (size_t k = 0; k < ctx->n_results; k++) {
    const result *r = &ctx->results[order[k]];
    csv_field(r->workload);
    putchar(',');
    csv_field(r->impl);
    printf(",%s,", r->tandem ? "tandem" : "peer");
    if (r->status == ST_OK) printf("%.3f", r->ns);
    printf(",%d,", r->runs);
    double ratio;
    if (ratio_of(r, tandem_result(ctx, r->workload), &ratio)) printf("%.6g", ratio);
    putchar(',');
    if (r->goal > 0) printf("%g", r->goal);
    printf(",%s,", status_name(r->status));
    csv_field(r->status == ST_OK ? "" : r->note);
    putchar('\n');
  }
}

/* Formats a time with three significant digits in a unit that fits: "87.3 ns", "1.23 µs". */
static void format_time(char *out, size_t size, double ns) {
  static const char *const units[] = { "ns", "µs", "ms", "s" };
  size_t u = 0;
  while (ns >= 1000 && u + 1 < sizeof units / sizeof units[0]) {
    ns /= 1000;
    u++;
  }
  snprintf(out, size, ns >= 100 ? "%.0f %s" : ns >= 10 ? "%.1f %s" : "%.2f %s", ns, units[u]);
}

/* Formats a ratio for a label: two decimals near 1, fewer above. */
static void format_times(char *out, size_t size, double x) {
  snprintf(out, size, x < 1.1 ? "%.2fx" : x < 10 ? "%.1fx" : "%.0fx", x);
}

/*
 * The label of a bar: its time, and for a peer how tandem compares ("1.23 µs, tandem 3.1x
 * faster") and whether a goal is met; or why there is no number ("skipped: why", "failed: why").
 */
static void chart_label(char *out, size_t size, const result *r, const result *t) {
  if (r->status != ST_OK) {
    /* A failure's note already starts with "failed: " (bench_run()). */
    snprintf(out, size, "%s%s", r->status == ST_SKIPPED ? "skipped: " : "", r->note);
    return;
  }
  char time[32], x[32];
  format_time(time, sizeof time, r->ns);
  double ratio;
  if (!ratio_of(r, t, &ratio)) {
    snprintf(out, size, "%s", time);
    return;
  }
  format_times(x, sizeof x, ratio >= 1 ? ratio : 1 / ratio);
  int k = snprintf(out, size, "%s, tandem %s %s", time, x, ratio >= 1 ? "faster" : "slower");
  if (r->goal > 0 && k > 0 && (size_t)k < size)
    snprintf(out + k, size - (size_t)k, " (goal %.3gx: %s)", r->goal,
             ratio >= r->goal ? "met" : "NOT met");
}

/*
 * Draws the results as a chart (group: the workload, series: the implementation, value: ns per
 * operation; every group on its own scale) and saves it to opt.svg. Returns 0 or a negative
 * errno.
 */
static int write_chart(const bench_ctx *ctx, const size_t *order) {
  char machine[PATH_MAX + 400], subtitle[PATH_MAX + 600];
  describe_machine(ctx, machine, sizeof machine);
  snprintf(subtitle, sizeof subtitle, "%s; the median of %d run%s%s", machine, ctx->opt.runs,
           ctx->opt.runs == 1 ? "" : "s", ctx->opt.quick ? " (--quick)" : "");
  cli_chart *chart =
      cli_chart_new("tandem bench: time per operation (a shorter bar is faster)", subtitle);
  if (chart == NULL) return -ENOMEM;
  int rc = 0;
  for (size_t k = 0; k < ctx->n_results && rc == 0; k++) {
    const result *r = &ctx->results[order[k]];
    char label[NOTE_MAX + 96];
    chart_label(label, sizeof label, r, tandem_result(ctx, r->workload));
    rc = cli_chart_bar(chart, r->workload, r->impl, r->status == ST_OK ? r->ns : NAN, label);
  }
  if (rc == 0) rc = cli_chart_save(chart, ctx->opt.svg);
  cli_chart_free(chart);
  return rc;
}

static void format_ns(char *out, size_t size, const result *r) {
  if (r->status == ST_OK)
    snprintf(out, size, r->ns < 1000 ? "%.1f" : "%.0f", r->ns);
  else
    snprintf(out, size, "%s", r->status == ST_SKIPPED ? "skipped" : "FAILED");
}

/* The C result of workload `key` that carries its rate, or NULL when it shows none. */
static const result *workload_rate(const bench_ctx *ctx, const char *key) {
  for (size_t i = 0; i < ctx->n_results; i++)
    if (ctx->results[i].rate != BENCH_RATE_NONE && strcmp(ctx->results[i].workload, key) == 0)
      return &ctx->results[i];
  return NULL;
}

/* Formats the rate that a time of ns per operation makes: "12.3 M msg/s", "3.36 GB/s". */
static void format_rate(char *out, size_t size, const result *info, double ns) {
  if (info->rate == BENCH_RATE_BYTES) {
    snprintf(out, size, "%.2f GB/s", (double)info->bytes_per_op / ns);
  } else {
    const char *unit = info->rate == BENCH_RATE_TASKS   ? "tasks/s"
                       : info->rate == BENCH_RATE_ITEMS ? "items/s"
                       : info->rate == BENCH_RATE_CALLS ? "calls/s"
                                                        : "msg/s";
    double per_s = 1e9 / ns;
    if (per_s >= 1e6)
      snprintf(out, size, "%.2f M %s", per_s / 1e6, unit);
    else if (per_s >= 1e3)
      snprintf(out, size, "%.1f k %s", per_s / 1e3, unit);
    else
      snprintf(out, size, "%.0f %s", per_s, unit);
  }
}

/* Formats whether the ratio of peer p to tandem's t meets p's goal: "  goal >= 50x: met". */
static void format_goal(char *out, size_t size, const result *p, const result *t) {
  out[0] = '\0';
  if (p->goal <= 0) return;
  double ratio;
  if (ratio_of(p, t, &ratio))
    snprintf(out, size, "  goal >= %.3gx: %s", p->goal, ratio >= p->goal ? "met" : "NOT met");
  else
    snprintf(out, size, "  goal >= %.3gx: no number", p->goal);
}

static void print_table(const bench_ctx *ctx, const size_t *order) {
  char machine[PATH_MAX + 400];
  describe_machine(ctx, machine, sizeof machine);
  printf("tandem bench: %s\n", machine);
  printf("%d run%s per measurement after one warm-up, median shown%s.\n", ctx->opt.runs,
         ctx->opt.runs == 1 ? "" : "s", ctx->opt.quick ? " (--quick: fewer iterations)" : "");
  printf("Times are ns per operation: one lock+unlock (contended: wall time / all parties' "
         "operations),\none round trip (ping-pong, hand-off), one child started and reaped "
         "(process/start),\none message delivered (queue/64b, queue/1mib: wall time / all "
         "messages; the rates\nthat the times make follow the ratio, GB = 10^9 bytes), one "
         "proxy call (manager/*: wall time /\nall clients' calls), or for pools (pool/*, "
         "cluster/*: wall time from the first submit to\nthe last result) one map item, one "
         "task, or one batch of 64 waiting tasks (pool/wait-*).\n"
         "ratio = peer / tandem: how many times faster tandem is (below 1.00x, tandem is "
         "slower);\n\"goal >= Rx\" says whether this run's ratio meets a goal of the project.\n\n");

  int wk = (int)strlen("workload"), wi = (int)strlen("peer");
  for (size_t i = 0; i < ctx->n_results; i++) {
    int a = (int)strlen(ctx->results[i].workload), b = (int)strlen(ctx->results[i].impl);
    if (a > wk) wk = a;
    if (!ctx->results[i].tandem && b > wi) wi = b;
  }
  printf("%-*s  %10s  %-*s  %10s  %s\n", wk, "workload", "tandem", wi, "peer", "peer", "ratio");
  printf("%-*s  %10s  %-*s  %10s  %s\n", wk, "", "ns/op", wi, "", "ns/op", "");
  for (int i = 0; i < wk + wi + 34; i++)
    putchar('-');
  putchar('\n');

  for (size_t k = 0; k < ctx->n_results;) {
    /* order[k] starts a group: tandem's result (if any), then the peers of the same workload. */
    const result *t = ctx->results[order[k]].tandem ? &ctx->results[order[k]] : NULL;
    const char *key = ctx->results[order[k]].workload;
    const result *info = workload_rate(ctx, key);
    char tns[32] = "-";
    if (t) {
      format_ns(tns, sizeof tns, t);
      k++;
    }
    bool printed = false;
    for (; k < ctx->n_results && strcmp(ctx->results[order[k]].workload, key) == 0; k++) {
      const result *p = &ctx->results[order[k]];
      char pns[32], goal[48], ratio[NOTE_MAX + 64] = "-";
      format_ns(pns, sizeof pns, p);
      format_goal(goal, sizeof goal, p, t);
      /* Against a goal, one more digit, so that a miss by less than 0.01 does not read as met. */
      const char *fmt = p->goal > 0 ? "%.3fx%s" : "%.2fx%s";
      double x;
      if (ratio_of(p, t, &x) && p->ns > 0 && info) {
        char tr[32], pr[32], r[96];
        format_rate(tr, sizeof tr, info, t->ns);
        format_rate(pr, sizeof pr, info, p->ns);
        snprintf(r, sizeof r, fmt, x, goal);
        snprintf(ratio, sizeof ratio, "%s  (tandem %s, peer %s)", r, tr, pr);
      } else if (ratio_of(p, t, &x))
        snprintf(ratio, sizeof ratio, fmt, x, goal);
      else if (p->status != ST_OK)
        snprintf(ratio, sizeof ratio, "(%s)%s", p->note, goal);
      else if (t && t->status != ST_OK)
        snprintf(ratio, sizeof ratio, "(tandem %s)%s", t->note, goal);
      printf("%-*s  %10s  %-*s  %10s  %s\n", wk, printed ? "" : key, printed ? "" : tns, wi,
             p->impl, pns, ratio);
      printed = true;
    }
    if (!printed)
      printf("%-*s  %10s  %-*s  %10s  %s\n", wk, key, tns, wi, "(no peer)", "-",
             t && t->status != ST_OK ? t->note : "-");
  }
  if (ctx->failures) printf("\n%d measurement(s) FAILED; see above and stderr.\n", ctx->failures);
}

int bench_finish(bench_ctx *ctx) {
  int status = 0;
  if (!ctx->opt.list) {
    run_peer_scripts(ctx);
    if (show_progress(ctx)) fprintf(stderr, "\r\033[K");
    size_t *order = calloc(ctx->n_results + 1, sizeof *order);
    if (order == NULL) {
      fprintf(stderr, "tandem bench: out of memory\n");
      status = 1;
    } else if (ctx->n_results == 0) {
      fprintf(stderr, "tandem bench: no workload matches --filter '%s' (see --list)\n",
              ctx->opt.filter ? ctx->opt.filter : "");
      status = 2;
    } else {
      group_results(ctx, order);
      if (ctx->opt.json)
        print_json(ctx, order);
      else if (ctx->opt.csv)
        print_csv(ctx, order);
      else
        print_table(ctx, order);
      status = ctx->failures ? 1 : 0;
      if (ctx->opt.svg != NULL) {
        fflush(stdout);
        int rc = write_chart(ctx, order);
        if (rc != 0) {
          fprintf(stderr, "tandem bench: cannot write the chart to %s: %s\n", ctx->opt.svg,
                  strerror(-rc));
          status = 1;
        }
      }
    }
    free(order);
  }
  fflush(stdout);
  free(ctx->results);
  free(ctx->requests);
  free(ctx);
  return status;
}

/* ---- Descriptors ---------------------------------------------------------------------------- */

int bench_write_full(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads exactly n bytes. Returns 0, TDM_EEOF at end of file before the first byte, -EPROTO at
 * end of file inside a record, or a negative errno. */
int bench_read_full(int fd, void *buf, size_t n) {
  char *p = buf;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, p + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return got == 0 ? TDM_EEOF : -EPROTO;
    got += (size_t)r;
  }
  return 0;
}

void bench_close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}
