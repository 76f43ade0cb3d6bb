/*
 * pool_test.c: pools of threads, of processes (under fork, spawn and forkserver) and auto,
 * through the public API: options, submit, futures (states, results and who owns them, errors,
 * cancel, callbacks), tdm_wait and as_completed, map and imap (arrays and sources, ordered and
 * not, a window that bounds memory), shutdown, terminate, interrupt and close, statistics and
 * the auto measure; process workers that segfault, abort, exit, are killed or time out in the
 * middle of a task, the retry policy, pools that break, recycling, initializers that fail;
 * 100,000 tasks while workers are SIGKILLed at random; Ctrl-C reaching a program that runs a
 * process pool.
 *
 * Most behaviour is shared, so most cases are written once for a backend and registered once
 * per backend (TEST_ALL, TEST_PROCS, TEST_THREADS below): each runs in a process of its own.
 * Tasks leave their side effects in a named tandem segment (the board), which thread tasks and
 * process workers under every start method reach alike.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

/* Sanitizers make forks and tasks 5-100 times slower: the large cases do less there. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define SLOW_BUILD 1
#endif
#endif
#ifndef SLOW_BUILD
#define SLOW_BUILD 0
#endif

/* A wait that only a bug makes long: fails the case with a line number instead of hanging. */
#define LONG ((int64_t)((double)TDM_S(20) * tdm_test_timeout_scale()))

/* ---- Backends -------------------------------------------------------------------------------- */

struct config {
  const char *name;
  tdm_pool_backend backend;
  tdm_start_method start;
};

static const struct config cfg_threads = { "threads", TDM_POOL_THREADS, TDM_START_DEFAULT };
static const struct config cfg_auto = { "auto", TDM_POOL_AUTO, TDM_START_DEFAULT };
static const struct config cfg_fork = { "fork", TDM_POOL_PROCESSES, TDM_START_FORK };
static const struct config cfg_spawn = { "spawn", TDM_POOL_PROCESSES, TDM_START_SPAWN };
static const struct config cfg_forkserver = { "forkserver", TDM_POOL_PROCESSES,
                                              TDM_START_FORKSERVER };

static bool procs(const struct config *c) {
  return c->backend == TDM_POOL_PROCESSES;
}

/* One case per backend: NAME_threads, NAME_auto, NAME_fork, NAME_spawn, NAME_forkserver. */
#define CASE_FOR(fn, cfg, timeout) \
  TEST_T(fn##_##cfg, timeout) {    \
    fn(&cfg_##cfg);                \
  }

#define TEST_ALL(fn, timeout)             \
  static void fn(const struct config *c); \
  CASE_FOR(fn, threads, timeout)          \
  CASE_FOR(fn, auto, timeout)             \
  CASE_FOR(fn, fork, timeout)             \
  CASE_FOR(fn, spawn, timeout)            \
  CASE_FOR(fn, forkserver, timeout)       \
  static void fn(const struct config *c)

#define TEST_PROCS(fn, timeout)           \
  static void fn(const struct config *c); \
  CASE_FOR(fn, fork, timeout)             \
  CASE_FOR(fn, spawn, timeout)            \
  CASE_FOR(fn, forkserver, timeout)       \
  static void fn(const struct config *c)

#define TEST_THREADS(fn, timeout)         \
  static void fn(const struct config *c); \
  CASE_FOR(fn, threads, timeout)          \
  CASE_FOR(fn, auto, timeout)             \
  static void fn(const struct config *c)

static tdm_pool_options options(const struct config *c, unsigned workers) {
  tdm_pool_options o;
  memset(&o, 0, sizeof o);
  o.backend = c->backend;
  o.start = c->start;
  o.workers = workers;
  return o;
}

static tdm_pool *open_pool(const tdm_pool_options *o) {
  tdm_pool *p = NULL;
  CHECK_OK(tdm_pool_open(&p, o));
  CHECK(p != NULL);
  CHECK_EQ(tdm_pool_backend_get(p), o->backend);
  return p;
}

static tdm_pool *open_n(const struct config *c, unsigned workers) {
  tdm_pool_options o = options(c, workers);
  return open_pool(&o);
}

static tdm_pool_stats stats(tdm_pool *p) {
  tdm_pool_stats s;
  memset(&s, 0xee, sizeof s);
  tdm_pool_stats_get(p, &s);
  return s;
}

/*
 * Auto starts one worker per CPU (at most `workers`) and grows later: a case that needs n tasks
 * running at once skips auto on a machine with fewer CPUs.
 */
static void need_concurrency(tdm_pool *p, unsigned n) {
  unsigned w = stats(p).workers;
  if (w < n) {
    CHECK_EQ(tdm_pool_backend_get(p), TDM_POOL_AUTO);
    CHECK_OK(tdm_pool_close(p));
    tdm_test_skip("auto started %u workers (one per CPU); the case needs %u", w, n);
  }
}

/* ---- The board: side effects in a named segment, seen by every backend ----------------------- */

#define SLOTS 64

struct board {
  _Atomic int32_t gate[SLOTS];       /* 1: the gated task of this slot may return */
  _Atomic int32_t started[SLOTS];    /* times a task of this slot started */
  _Atomic int32_t pid[SLOTS];        /* the process that ran it */
  _Atomic int32_t tid[SLOTS];        /* and its thread */
  _Atomic int32_t saw_cancel[SLOTS]; /* it saw tdm_task_cancelled() turn true */
  _Atomic int64_t count[SLOTS];      /* side effects */
  _Atomic int32_t inits, finis;      /* initializer and finalizer runs */
  _Atomic int64_t fini_sum;          /* what the finalizers read in their argument */
  _Atomic int32_t init_pid[256];
  _Atomic int32_t init_tid[256];
  uint64_t nhits;
  _Atomic int32_t hits[]; /* per-item side effects of the larger cases */
};

static struct board *B; /* the case's board; in a spawn or forkserver worker, its attachment */
static char B_name[40];

/* Creates the case's board with room for `nhits` per-item counters. */
static struct board *board_new(size_t nhits) {
  static int k;
  tdm_shm *s = NULL;
  snprintf(B_name, sizeof B_name, "/tdm-pool-test-%d-%d", (int)getpid(), k++);
  CHECK_OK(tdm_shm_create(&s, B_name, sizeof(struct board) + nhits * sizeof(int32_t), NULL));
  B = tdm_shm_addr(s); /* the handle stays open: the segment goes when the case ends */
  B->nhits = nhits;
  return B;
}

/* The board named `name`: the case's own (threads, and fork workers, which inherit it), or
 * attached once per worker process (spawn, forkserver). */
static struct board *board_at(const char *name) {
  if (B != NULL && strcmp(B_name, name) == 0) return B;
  tdm_shm *s = NULL;
  CHECK_OK(tdm_shm_attach(&s, name, sizeof(struct board), NULL));
  snprintf(B_name, sizeof B_name, "%s", name);
  B = tdm_shm_addr(s);
  return B;
}

/* The argument of most tasks: where the board is, a slot in it, and two values. */
struct job {
  char board[40];
  int32_t slot;
  int32_t value;
  int64_t aux;
};

static struct job job(int slot, int value) {
  struct job j;
  memset(&j, 0, sizeof j);
  CHECK(B != NULL);
  snprintf(j.board, sizeof j.board, "%s", B_name);
  j.slot = slot;
  j.value = value;
  return j;
}

static struct job job_aux(int slot, int value, int64_t aux) {
  struct job j = job(slot, value);
  j.aux = aux;
  return j;
}

static struct job read_job(const void *arg, size_t size) {
  struct job j;
  CHECK_EQ(size, sizeof j);
  CHECK(arg != NULL);
  memcpy(&j, arg, sizeof j);
  return j;
}

static tdm_future *submit_opt(tdm_pool *p, tdm_task_fn fn, struct job j,
                              const tdm_task_options *to) {
  tdm_future *f = NULL;
  CHECK_OK(tdm_pool_submit(p, fn, &j, sizeof j, to, &f));
  CHECK(f != NULL);
  return f;
}

static tdm_future *submit(tdm_pool *p, tdm_task_fn fn, struct job j) {
  return submit_opt(p, fn, j, NULL);
}

static tdm_future *submit_timeout(tdm_pool *p, tdm_task_fn fn, struct job j, int64_t timeout) {
  tdm_task_options to = { .timeout = timeout };
  return submit_opt(p, fn, j, &to);
}

/* ---- Outcomes -------------------------------------------------------------------------------- */

static int64_t result_i64(tdm_future *f) {
  const void *d = NULL;
  size_t n = 0;
  CHECK_OK(tdm_future_result(f, TDM_FOREVER, &d, &n));
  CHECK_EQ(n, sizeof(int64_t));
  CHECK(d != NULL);
  int64_t v;
  memcpy(&v, d, sizeof v);
  return v;
}

static int32_t result_i32(tdm_future *f) {
  const void *d = NULL;
  size_t n = 0;
  CHECK_OK(tdm_future_result(f, TDM_FOREVER, &d, &n));
  CHECK_EQ(n, sizeof(int32_t));
  CHECK(d != NULL);
  int32_t v;
  memcpy(&v, d, sizeof v);
  return v;
}

/* A future that ended FAILED with `code`, `status` and `attempts`: its result is not given. */
static void expect_failed(tdm_future *f, int code, int status, unsigned attempts) {
  const void *d = (const void *)&d;
  size_t n = 777;
  CHECK_ERR(tdm_future_result(f, TDM_FOREVER, &d, &n), code);
  CHECK(d == (const void *)&d);
  CHECK_EQ(n, 777);
  CHECK_EQ(tdm_future_state_get(f), TDM_FUTURE_FAILED);
  CHECK(tdm_future_done(f));
  tdm_task_error e;
  memset(&e, 0xee, sizeof e);
  CHECK_ERR(tdm_future_error(f, &e), code);
  CHECK_ERR(e.code, code);
  CHECK_EQ(e.status, status);
  CHECK_EQ(e.attempts, attempts);
}

/*
 * A task cancelled before it started: by tdm_future_cancel(), by shutdown(cancel_pending) or
 * by terminate. All three end it CANCELLED (future.h), never started.
 */
static void expect_cancelled_unstarted(tdm_future *f) {
  CHECK_ERR(tdm_future_wait(f, LONG), 0);
  CHECK_ERR(tdm_future_result(f, 0, NULL, NULL), -ECANCELED);
  CHECK_EQ(tdm_future_state_get(f), TDM_FUTURE_CANCELLED);
  tdm_task_error e;
  CHECK_ERR(tdm_future_error(f, &e), -ECANCELED);
  CHECK_EQ(e.attempts, 0);
}

/* A future cancelled by tdm_future_cancel() while it ran. */
static void expect_cancelled(tdm_future *f, unsigned attempts) {
  CHECK_OK(tdm_future_wait(f, LONG));
  CHECK_EQ(tdm_future_state_get(f), TDM_FUTURE_CANCELLED);
  const void *d = (const void *)&d;
  CHECK_ERR(tdm_future_result(f, 0, &d, NULL), -ECANCELED);
  CHECK(d == (const void *)&d);
  tdm_task_error e;
  CHECK_ERR(tdm_future_error(f, &e), -ECANCELED);
  CHECK_EQ(e.attempts, attempts);
}

static void wait_running(tdm_future *f, int slot) {
  int64_t until = tdm_clock_now() + LONG;
  while (atomic_load(&B->started[slot]) < 1 || tdm_future_state_get(f) != TDM_FUTURE_RUNNING) {
    if (tdm_clock_now() > until)
      tdm_test_fail(__FILE__, __LINE__, "the task of slot %d never ran (state %d, started %d)",
                    slot, (int)tdm_future_state_get(f), (int)atomic_load(&B->started[slot]));
    tdm_clock_sleep(TDM_MS(1));
  }
}

static void free_all(tdm_future **fs, size_t n) {
  for (size_t i = 0; i < n; i++)
    tdm_future_free(fs[i]);
}

/* ---- Processes and threads of this case ------------------------------------------------------ */

/*
 * The threads of this process that a pool started: those named otherwise than the main thread
 * (pool threads name themselves; a sanitizer's own threads keep the program's name).
 */
static int pool_threads(void) {
  char main_comm[64] = "", comm[64];
  DIR *d = opendir("/proc/self/task");
  CHECK(d != NULL);
  int n = 0;
  struct dirent *e;
  for (int pass = 0; pass < 2; pass++) {
    rewinddir(d);
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.') continue;
      char path[300];
      snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue; /* ended meanwhile */
      ssize_t len = read(fd, comm, sizeof comm - 1);
      close(fd);
      comm[len > 0 ? len : 0] = '\0';
      if (pass == 0 && atoi(e->d_name) == (int)getpid())
        snprintf(main_comm, sizeof main_comm, "%s", comm);
      if (pass == 1 && strcmp(comm, main_comm) != 0) n++;
    }
  }
  closedir(d);
  return n;
}

/* Reads /proc/PID/stat: its parent, state and command. False when it is gone. */
static bool proc_stat(int pid, int *ppid, char *state, char *comm, size_t cap) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  char *open_paren = strchr(buf, '('), *close_paren = strrchr(buf, ')');
  if (open_paren == NULL || close_paren == NULL) return false;
  size_t len = (size_t)(close_paren - open_paren - 1);
  if (len >= cap) len = cap - 1;
  memcpy(comm, open_paren + 1, len);
  comm[len] = '\0';
  return sscanf(close_paren + 2, "%c %d", state, ppid) == 2;
}

/*
 * The processes that descend from this one and still run (zombies do not count), the
 * forkserver itself aside (it stays for later starts; its children count): pool workers under
 * every start method.
 */
static int live_descendants(void) {
  enum { MAX = 4096 };
  static int pids[MAX], ppids[MAX];
  static char states[MAX];
  static bool server[MAX], mine[MAX];
  int n = 0;
  DIR *d = opendir("/proc");
  CHECK(d != NULL);
  struct dirent *e;
  while ((e = readdir(d)) != NULL && n < MAX) {
    int pid = atoi(e->d_name);
    char comm[64];
    if (pid <= 0 || !proc_stat(pid, &ppids[n], &states[n], comm, sizeof comm)) continue;
    pids[n] = pid;
    server[n] = strcmp(comm, "tdm-forkserver") == 0;
    mine[n] = false;
    n++;
  }
  closedir(d);
  int self = (int)getpid();
  for (bool changed = true; changed;) {
    changed = false;
    for (int i = 0; i < n; i++) {
      if (mine[i]) continue;
      bool m = ppids[i] == self;
      for (int k = 0; k < n && !m; k++)
        m = mine[k] && pids[k] == ppids[i];
      if (m) mine[i] = changed = true;
    }
  }
  int count = 0;
  for (int i = 0; i < n; i++)
    count += mine[i] && !server[i] && states[i] != 'Z' && states[i] != 'X';
  return count;
}

/* The pids (processes) or thread ids (threads) of the pool's workers now. */
static size_t worker_ids(tdm_pool *p, pid_t *ids, size_t cap) {
  tdm_pool_worker_stats ws[64];
  size_t n = tdm_pool_worker_stats_get(p, ws, 64);
  CHECK(n <= 64 && n <= cap);
  for (size_t i = 0; i < n; i++)
    ids[i] = ws[i].pid;
  return n;
}

/* The command name of a worker (process, or thread of this process). */
static void worker_comm(const struct config *c, pid_t id, char *buf, size_t cap) {
  char path[64];
  if (procs(c))
    snprintf(path, sizeof path, "/proc/%d/comm", (int)id);
  else
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)id);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  CHECK(fd >= 0);
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  CHECK(n > 0);
  buf[n] = '\0';
  buf[strcspn(buf, "\n")] = '\0';
}

/*
 * The workers are gone: processes ended (at once: close, terminate and a failed open return
 * once they are reaped), threads returned (a joined thread may stay listed in /proc for a
 * moment after its join returned, so that is waited for).
 */
static void expect_nothing_left(void) {
  CHECK_EQ(live_descendants(), 0);
  WAIT_UNTIL(pool_threads() == 0);
}

/* ---- Tasks ----------------------------------------------------------------------------------- */

/* Gives its argument back as its result; size 0 gives an empty result. */
static int t_echo(tdm_task *t, const void *arg, size_t size) {
  if (size == 0) return arg == NULL ? 0 : 1;
  return tdm_task_set_result(t, arg, size);
}

/* value squared (int64); counts a side effect in its slot. */
static int t_square(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  if (j.slot >= 0) atomic_fetch_add(&board_at(j.board)->count[j.slot], 1);
  int64_t v = (int64_t)j.value * j.value;
  return tdm_task_set_result(t, &v, sizeof v);
}

/* Sets results three times; value 1 ends on an empty one. */
static int t_results(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  CHECK_OK(tdm_task_set_result(t, "first", 5));
  CHECK_OK(tdm_task_set_result(t, "second!", 7));
  if (j.value == 1) return tdm_task_set_result(t, NULL, 0);
  return tdm_task_set_result(t, "third", 5);
}

/* Fails with `value`, after setting a result that must be dropped. */
static int t_fail(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  CHECK_OK(tdm_task_set_result(t, "junk", 4));
  return j.value;
}

/*
 * Records where it runs, then waits until its gate opens or it is asked to stop; then counts
 * its side effect, sets `value` as its result (int32) and returns `aux`.
 */
static int t_gated(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  struct board *b = board_at(j.board);
  atomic_store(&b->pid[j.slot], (int32_t)getpid());
  atomic_store(&b->tid[j.slot], tdm_test_gettid());
  atomic_fetch_add(&b->started[j.slot], 1);
  while (atomic_load(&b->gate[j.slot]) == 0) {
    if (tdm_task_cancelled(t)) {
      atomic_store(&b->saw_cancel[j.slot], 1);
      break;
    }
    tdm_clock_sleep(TDM_MS(1));
  }
  atomic_fetch_add(&b->count[j.slot], 1);
  int32_t v = j.value;
  CHECK_OK(tdm_task_set_result(t, &v, sizeof v));
  return (int)j.aux;
}

/* Sleeps `value` ms (less if asked to stop), counts, sets `value` as result, returns `aux`. */
static int t_sleep(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  int64_t until = tdm_clock_now() + TDM_MS(j.value);
  while (tdm_clock_now() < until && !tdm_task_cancelled(t))
    tdm_clock_sleep(TDM_MS(1));
  if (j.slot >= 0) atomic_fetch_add(&board_at(j.board)->count[j.slot], 1);
  int32_t v = j.value;
  CHECK_OK(tdm_task_set_result(t, &v, sizeof v));
  return (int)j.aux;
}

/* Spins until its thread has used `aux` ns of CPU. */
static int t_spin(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  struct job j = read_job(arg, size);
  int64_t start = tdm_clock_thread_cpu();
  volatile uint64_t x = 1;
  while (tdm_clock_thread_cpu() - start < j.aux)
    for (int i = 0; i < 1000; i++)
      x = x * 6364136223846793005u + 1;
  return 0;
}

enum { CRASH_SEGV = 1, CRASH_ABORT, CRASH_EXIT3, CRASH_KILL_SELF };

/* Ends the calling process as `kind` says (no core file). */
static _Noreturn void crash(int kind) {
  struct rlimit no_core = { 0, 0 };
  setrlimit(RLIMIT_CORE, &no_core);
  switch (kind) {
  case CRASH_SEGV:
    signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would make it an exit */
    raise(SIGSEGV);
    break;
  case CRASH_ABORT:
    abort();
  case CRASH_EXIT3:
    exit(3);
  case CRASH_KILL_SELF: /* what the OOM killer does */
    raise(SIGKILL);
    break;
  default:
    break;
  }
  _exit(100);
}

/* Records where it runs, then crashes as `value` says. */
static int t_crash(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  struct job j = read_job(arg, size);
  struct board *b = board_at(j.board);
  atomic_store(&b->pid[j.slot], (int32_t)getpid());
  atomic_fetch_add(&b->started[j.slot], 1);
  crash(j.value);
}

/* Counts its runs in its slot; kills its worker on the first `value` runs; then returns the
 * number of runs (int32). */
static int t_crash_times(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  int64_t n = atomic_fetch_add(&board_at(j.board)->count[j.slot], 1);
  if (n < j.value) crash(CRASH_KILL_SELF);
  int32_t runs = (int32_t)n + 1;
  return tdm_task_set_result(t, &runs, sizeof runs);
}

/* Counts hits[value] and gives {pid, tid} of where it ran. */
static int t_whoami(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  atomic_fetch_add(&board_at(j.board)->hits[j.value], 1);
  int32_t id[2] = { (int32_t)getpid(), tdm_test_gettid() };
  return tdm_task_set_result(t, id, sizeof id);
}

/* The stress task: counts hits[value], works about `aux` ns, gives 3 x value. */
static int t_stress(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  atomic_fetch_add(&board_at(j.board)->hits[j.value], 1);
  int64_t until = tdm_clock_now() + j.aux;
  while (tdm_clock_now() < until) {
  }
  int32_t v = 3 * j.value;
  return tdm_task_set_result(t, &v, sizeof v);
}

/* A result of `value` bytes; gives tdm_task_set_result()'s error as its own. */
static int t_big_result(tdm_task *t, const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  unsigned char *buf = malloc((size_t)j.value);
  CHECK(buf != NULL);
  for (int32_t i = 0; i < j.value; i++)
    buf[i] = (unsigned char)(i * 7);
  int r = tdm_task_set_result(t, buf, (size_t)j.value);
  free(buf);
  return r;
}

/* Tries to open a process pool, and gives what open returned (int32). */
static int t_open_process_pool(tdm_task *t, const void *arg, size_t size) {
  (void)arg;
  (void)size;
  tdm_pool_options o = { .backend = TDM_POOL_PROCESSES, .workers = 1 };
  tdm_pool *q = NULL;
  int32_t r = tdm_pool_open(&q, &o);
  if (r == 0) tdm_pool_close(q);
  return tdm_task_set_result(t, &r, sizeof r);
}

/* Threads: submits t_square to its own pool and gives the inner future's handle. */
struct inner {
  tdm_pool *pool;
  struct job j;
};

static int t_submit_inner(tdm_task *t, const void *arg, size_t size) {
  struct inner in;
  CHECK_EQ(size, sizeof in);
  memcpy(&in, arg, sizeof in);
  tdm_future *f = NULL;
  CHECK_OK(tdm_pool_submit(in.pool, t_square, &in.j, sizeof in.j, NULL, &f));
  return tdm_task_set_result(t, &f, sizeof f);
}

/* ---- Initializers and finalizers ------------------------------------------------------------- */

/* Counts and records its worker; fails (7) from the `value`-th run on (value < 0: never). */
static int i_record(const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  struct board *b = board_at(j.board);
  int32_t k = atomic_fetch_add(&b->inits, 1);
  if (k < 256) {
    atomic_store(&b->init_pid[k], (int32_t)getpid());
    atomic_store(&b->init_tid[k], tdm_test_gettid());
  }
  return j.value >= 0 && k >= j.value ? 7 : 0;
}

/* Counts, and adds `aux` from its copy of init_arg. */
static void f_record(const void *arg, size_t size) {
  struct job j = read_job(arg, size);
  struct board *b = board_at(j.board);
  atomic_fetch_add(&b->fini_sum, j.aux);
  atomic_fetch_add(&b->finis, 1);
}

/* ---- Map items and sources ------------------------------------------------------------------- */

/* The argument of the map functions. */
struct marg {
  struct job j;      /* the board */
  const void *self;  /* where the caller's copy of this struct lives */
  int32_t fail_mod;  /* items x with x % fail_mod == 3 fail with x + 1 (0: none) */
  int32_t gate_item; /* the item that waits for gate[0] (-1: none) */
};

static struct marg marg(int fail_mod, int gate_item) {
  struct marg a;
  memset(&a, 0, sizeof a);
  a.j = job(0, 0);
  a.fail_mod = fail_mod;
  a.gate_item = gate_item;
  return a;
}

/*
 * int32 x -> int64 x * x. x == -1 kills the worker with SIGSEGV, x == -2 never returns (for
 * timeouts). Checks that its output was zeroed before the call.
 */
static int m_square(const void *in, void *out, const void *arg) {
  int32_t x;
  memcpy(&x, in, sizeof x);
  for (size_t i = 0; i < sizeof(int64_t); i++)
    if (((const unsigned char *)out)[i] != 0) return 99;
  if (x == -1) crash(CRASH_SEGV);
  if (x == -2)
    for (;;)
      tdm_clock_sleep(TDM_MS(10));
  const struct marg *a = arg;
  if (a != NULL) {
    if (a->gate_item == x) {
      struct board *b = board_at(a->j.board);
      while (atomic_load(&b->gate[0]) == 0)
        tdm_clock_sleep(TDM_MS(1));
    }
    if (a->fail_mod > 0 && x % a->fail_mod == 3) return x + 1;
  }
  int64_t v = (int64_t)x * x;
  memcpy(out, &v, sizeof v);
  return 0;
}

/* No input: writes 42. */
static int m_no_input(const void *in, void *out, const void *arg) {
  (void)arg;
  if (in != NULL) return 98;
  int64_t v = 42;
  memcpy(out, &v, sizeof v);
  return 0;
}

/* No output: counts hits[x] (or count[0] with no input either). */
static int m_count(const void *in, void *out, const void *arg) {
  if (out != NULL || arg == NULL) return 97;
  const struct marg *a = arg;
  struct board *b = board_at(a->j.board);
  if (in == NULL) {
    atomic_fetch_add(&b->count[0], 1);
  } else {
    int32_t x;
    memcpy(&x, in, sizeof x);
    atomic_fetch_add(&b->hits[x], 1);
  }
  return 0;
}

/* 1 when `arg` is the caller's own struct, 2 when it is a copy of it. */
static int m_arg_identity(const void *in, void *out, const void *arg) {
  (void)in;
  const struct marg *a = arg;
  if (a == NULL || a->fail_mod != 12345) return 96;
  int64_t v = a->self == arg ? 1 : 2;
  memcpy(out, &v, sizeof v);
  return 0;
}

/* A source of int32 items 0, 1, 2...: ends at `limit`, fails at `fail_at`. */
struct source {
  size_t next, limit, fail_at;
  int fail_code;
  size_t produced;
};

static int src_count(void *ctx, void *item) {
  struct source *s = ctx;
  if (s->next == s->fail_at) return s->fail_code;
  if (s->next == s->limit) return TDM_EEOF;
  int32_t v = (int32_t)(s->next++ % 1000000);
  memcpy(item, &v, sizeof v);
  s->produced++;
  return 0;
}

static struct source source(size_t limit, size_t fail_at, int fail_code) {
  struct source s = { 0, limit, fail_at, fail_code, 0 };
  return s;
}

static int32_t *iota(size_t n) {
  int32_t *in = malloc(n * sizeof *in);
  CHECK(in != NULL);
  for (size_t i = 0; i < n; i++)
    in[i] = (int32_t)i;
  return in;
}

static void check_squares(const int64_t *out, const int32_t *in, size_t n, const int *errors,
                          int fail_mod) {
  for (size_t i = 0; i < n; i++) {
    bool fails = fail_mod > 0 && in[i] % fail_mod == 3;
    if (errors != NULL) CHECK_EQ(errors[i], fails ? in[i] + 1 : 0);
    if (!fails && out[i] != (int64_t)in[i] * in[i])
      tdm_test_fail(__FILE__, __LINE__, "item %zu: %lld, want %lld", i, (long long)out[i],
                    (long long)in[i] * in[i]);
  }
}

/* ---- Callbacks ------------------------------------------------------------------------------- */

struct cb_log {
  _Atomic int n;
  _Atomic int order[16];
  _Atomic int calls[16];
  _Atomic int32_t tid[16];
};

struct cb_arg {
  struct cb_log *log;
  int id;
};

static void cb_record(tdm_future *f, void *arg) {
  CHECK(tdm_future_done(f));
  struct cb_arg *a = arg;
  int pos = atomic_fetch_add(&a->log->n, 1);
  if (pos < 16) atomic_store(&a->log->order[pos], a->id);
  atomic_store(&a->log->tid[a->id], tdm_test_gettid());
  atomic_fetch_add(&a->log->calls[a->id], 1);
}

struct chain {
  tdm_pool *pool;
  struct job j;
  _Atomic(tdm_future *) next;
};

/* Submits the next task from a callback. */
static void cb_submit(tdm_future *f, void *arg) {
  (void)f;
  struct chain *c = arg;
  tdm_future *n = NULL;
  CHECK_OK(tdm_pool_submit(c->pool, t_square, &c->j, sizeof c->j, NULL, &n));
  atomic_store(&c->next, n);
}

static void cb_count(tdm_future *f, void *arg) {
  (void)f;
  atomic_fetch_add((_Atomic int32_t *)arg, 1);
}

/* ==== Cases ====================================================================================
 */

/* ---- Opening --------------------------------------------------------------------------------- */

TEST(backend_names) {
  CHECK(strcmp(tdm_pool_backend_name(TDM_POOL_THREADS), "threads") == 0);
  CHECK(strcmp(tdm_pool_backend_name(TDM_POOL_PROCESSES), "processes") == 0);
  CHECK(strcmp(tdm_pool_backend_name(TDM_POOL_AUTO), "auto") == 0);
  CHECK(strcmp(tdm_pool_backend_name(TDM_POOL_CLUSTER), "cluster") == 0);
  CHECK(tdm_pool_backend_name((tdm_pool_backend)4) == NULL);
  CHECK(tdm_pool_backend_name((tdm_pool_backend)-1) == NULL);
}

TEST(cluster_pools_need_libtandem_mpi) {
  /* This program does not link libtandem-mpi: no cluster backend is registered. */
  tdm_pool *p = NULL;
  tdm_pool_options o = { .backend = TDM_POOL_CLUSTER };
  CHECK_EQ(tdm_pool_open(&p, &o), TDM_ECLUSTER);
  CHECK(p == NULL);
}

TEST(null_options_open_a_thread_pool) {
  board_new(0);
  tdm_pool *p = NULL;
  CHECK_OK(tdm_pool_open(&p, NULL));
  CHECK_EQ(tdm_pool_backend_get(p), TDM_POOL_THREADS);
  unsigned want = (unsigned)tdm_cpu_count() + 4;
  if (want > 32) want = 32;
  CHECK_EQ(stats(p).workers, want);
  CHECK_EQ(stats(p).workers_started, want);
  CHECK_EQ(tdm_pool_worker_stats_get(p, NULL, 0), want);
  /* Its workers, and one supervisor thread at most. */
  CHECK(pool_threads() >= (int)want && pool_threads() <= (int)want + 1);
  unsigned target = 0;
  CHECK(!tdm_pool_cpu_bound(p, &target)); /* nothing measured yet */
  CHECK_EQ(target, want);
  tdm_future *f = submit(p, t_square, job(0, 12));
  CHECK_EQ(result_i64(f), 144);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
  expect_nothing_left();
  CHECK_OK(tdm_pool_close(NULL));
}

TEST(open_rejects_bad_options) {
  int dummy = 0;
  tdm_pool *const untouched = (tdm_pool *)&dummy;
  tdm_pool *p = untouched;
  tdm_pool_options o = options(&cfg_threads, 1);
  o.backend = (tdm_pool_backend)7;
  CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
  o.backend = (tdm_pool_backend)-1;
  CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
  o = options(&cfg_fork, 1);
  o.start = (tdm_start_method)42;
  CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
  const struct config *all[] = { &cfg_threads, &cfg_auto, &cfg_fork };
  for (int i = 0; i < 3; i++) {
    o = options(all[i], 1);
    o.task_timeout = -5;
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
    o.task_timeout = TDM_FOREVER - 1;
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
    o = options(all[i], 4095); /* the most is 4094 */
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
    o = options(all[i], UINT32_MAX);
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
    o = options(all[i], 1);
    o.init_size = 4; /* with init_arg NULL */
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
    o = options(all[i], 1);
    o.name = "";
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
    char long_name[202];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    o.name = long_name;
    CHECK_ERR(tdm_pool_open(&p, &o), -EINVAL);
  }
  CHECK(p == untouched);
  expect_nothing_left();
  /* TDM_FOREVER and 0 mean no timeout, and are fine. */
  o = options(&cfg_threads, 1);
  o.task_timeout = TDM_FOREVER;
  p = open_pool(&o);
  CHECK_OK(tdm_pool_close(p));
  o.task_timeout = 0;
  p = open_pool(&o);
  CHECK_OK(tdm_pool_close(p));
  expect_nothing_left();
}

/* Default sizes, and worker names "<name>-<n>" (processes: comm; threads: the thread's name). */
TEST_ALL(worker_names_and_default_size, 60) {
  board_new(0);
  unsigned cpus = (unsigned)tdm_cpu_count();
  tdm_pool_options o = options(c, 0);
  tdm_pool *p = open_pool(&o);
  unsigned want = c->backend == TDM_POOL_THREADS ? (cpus + 4 > 32 ? 32 : cpus + 4) : cpus;
  CHECK_EQ(stats(p).workers, want);
  pid_t ids[64];
  size_t n = worker_ids(p, ids, 64);
  CHECK_EQ(n, want);
  for (size_t i = 0; i < n; i++) {
    char comm[64];
    worker_comm(c, ids[i], comm, sizeof comm);
    if (strncmp(comm, "PoolWorker-", 11) != 0)
      tdm_test_fail(__FILE__, __LINE__, "worker %d is named \"%s\"", (int)ids[i], comm);
  }
  CHECK_OK(tdm_pool_close(p));
  o = options(c, 2);
  o.name = "pt";
  p = open_pool(&o);
  n = worker_ids(p, ids, 64);
  CHECK_EQ(n, procs(c) || c->backend == TDM_POOL_THREADS ? 2 : (cpus < 2 ? cpus : 2));
  for (size_t i = 0; i < n; i++) {
    char comm[64];
    worker_comm(c, ids[i], comm, sizeof comm);
    if (strncmp(comm, "pt-", 3) != 0)
      tdm_test_fail(__FILE__, __LINE__, "worker %d is named \"%s\"", (int)ids[i], comm);
    for (size_t k = 0; k < i; k++)
      CHECK(ids[k] != ids[i]);
  }
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Submit and results ---------------------------------------------------------------------- */

TEST_ALL(submit_copies_arguments_and_results, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  uint64_t submitted = 0;
  /* Arguments of every size come back whole, from a copy taken by submit. */
  static const size_t sizes[] = { 1, 47, 48, 49, 4096, 1 << 20 };
  unsigned char *buf = malloc(1 << 20), *want = malloc(1 << 20);
  CHECK(buf != NULL && want != NULL);
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    for (size_t i = 0; i < sizes[s]; i++)
      want[i] = buf[i] = (unsigned char)(i * 31 + s);
    tdm_future *f = NULL;
    CHECK_OK(tdm_pool_submit(p, t_echo, buf, sizes[s], NULL, &f));
    submitted++;
    memset(buf, 0, sizes[s]);
    const void *d = NULL, *d2 = NULL;
    size_t n = 0, n2 = 0;
    CHECK_OK(tdm_future_result(f, TDM_FOREVER, &d, &n));
    CHECK_EQ(n, sizes[s]);
    CHECK(memcmp(d, want, n) == 0);
    /* The bytes belong to the future: the same ones every time, until it is freed. */
    CHECK_OK(tdm_future_result(f, 0, &d2, &n2));
    CHECK(d2 == d && n2 == n);
    CHECK_OK(tdm_future_result(f, 0, NULL, NULL));
    CHECK_EQ(tdm_future_state_get(f), TDM_FUTURE_DONE);
    tdm_task_error e;
    memset(&e, 0xee, sizeof e);
    CHECK_OK(tdm_future_error(f, &e));
    CHECK_EQ(e.code, 0);
    CHECK_EQ(e.status, 0);
    CHECK_EQ(e.attempts, 1);
    tdm_future_free(f);
  }
  free(buf);
  free(want);
  /* Size 0: the task gets NULL whatever the caller passed, and an empty result is NULL, 0. */
  int ignored = 5;
  tdm_future *f = NULL;
  CHECK_OK(tdm_pool_submit(p, t_echo, &ignored, 0, NULL, &f));
  submitted++;
  const void *d = &d;
  size_t n = 99;
  CHECK_OK(tdm_future_result(f, TDM_FOREVER, &d, &n));
  CHECK(d == NULL);
  CHECK_EQ(n, 0);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_submit(p, t_echo, NULL, 0, NULL, &f));
  submitted++;
  CHECK_OK(tdm_future_result(f, TDM_FOREVER, NULL, NULL));
  tdm_future_free(f);
  /* The last result set wins; NULL, 0 makes it empty. */
  f = submit(p, t_results, job(0, 0));
  submitted++;
  CHECK_OK(tdm_future_result(f, TDM_FOREVER, &d, &n));
  CHECK(n == 5 && memcmp(d, "third", 5) == 0);
  tdm_future_free(f);
  f = submit(p, t_results, job(0, 1));
  submitted++;
  d = &d;
  n = 99;
  CHECK_OK(tdm_future_result(f, TDM_FOREVER, &d, &n));
  CHECK(d == NULL && n == 0);
  tdm_future_free(f);
  /* A task that fails: TDM_ETASK with what it returned; the result it set is dropped. */
  f = submit(p, t_fail, job(0, 5));
  submitted++;
  expect_failed(f, TDM_ETASK, 5, 1);
  tdm_future_free(f);
  f = submit(p, t_fail, job(0, -3));
  submitted++;
  expect_failed(f, TDM_ETASK, -3, 1);
  tdm_future_free(f);
  /* Bad arguments; *out is left alone. */
  tdm_future *const untouched = (tdm_future *)&n;
  f = untouched;
  struct job j = job(0, 1);
  CHECK_ERR(tdm_pool_submit(p, NULL, &j, sizeof j, NULL, &f), -EINVAL);
  tdm_task_options to = { .timeout = -5 };
  CHECK_ERR(tdm_pool_submit(p, t_square, &j, sizeof j, &to, &f), -EINVAL);
  to.timeout = TDM_FOREVER - 1;
  CHECK_ERR(tdm_pool_submit(p, t_square, &j, sizeof j, &to, &f), -EINVAL);
  CHECK(f == untouched);
  to.timeout = TDM_FOREVER;
  f = submit_opt(p, t_square, job(-1, 9), &to);
  submitted++;
  CHECK_EQ(result_i64(f), 81);
  tdm_future_free(f);
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.submitted, submitted);
  CHECK_EQ(s.done, submitted - 2);
  CHECK_EQ(s.failed, 2);
  CHECK_EQ(s.cancelled, 0);
  CHECK_EQ(s.retried, 0);
  CHECK_OK(tdm_pool_close(p));
}

TEST_ALL(future_states_and_wait_timeouts, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 1);
  tdm_future *g = submit(p, t_gated, job(0, 11));
  wait_running(g, 0);
  tdm_future *w = submit(p, t_square, job(1, 3));
  CHECK_EQ(tdm_future_state_get(w), TDM_FUTURE_PENDING);
  CHECK(!tdm_future_done(w));
  CHECK(!tdm_future_done(g));
  CHECK_ERR(tdm_future_wait(w, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_future_wait(g, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  const void *d = &d;
  size_t n = 777;
  CHECK_ERR(tdm_future_result(w, 0, &d, &n), -ETIMEDOUT);
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_future_result(g, TDM_MS(20), &d, &n), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(20));
  CHECK(d == &d && n == 777);
  tdm_task_error e;
  memset(&e, 0xee, sizeof e);
  CHECK_OK(tdm_future_error(w, &e));
  CHECK(e.code == 0 && e.status == 0 && e.attempts == 0);
  CHECK_OK(tdm_future_error(g, &e));
  CHECK(e.code == 0 && e.status == 0 && e.attempts == 1);
  CHECK_EQ(tdm_future_state_get(w), TDM_FUTURE_PENDING);
  CHECK_EQ(tdm_future_state_get(g), TDM_FUTURE_RUNNING);
  atomic_store(&B->gate[0], 1);
  CHECK_EQ(result_i32(g), 11);
  CHECK_EQ(result_i64(w), 9);
  CHECK_OK(tdm_future_wait(g, 0));
  CHECK_OK(tdm_future_wait(w, TDM_FOREVER));
  CHECK_EQ(tdm_future_state_get(g), TDM_FUTURE_DONE);
  CHECK_EQ(atomic_load(&B->count[1]), 1);
  CHECK_EQ(atomic_load(&B->saw_cancel[0]), 0);
  tdm_future_free(g);
  tdm_future_free(w);
  CHECK_OK(tdm_pool_close(p));
}

/* max_result bounds arguments and results on processes, and nothing on threads. */
TEST(max_result_bounds_process_arguments_and_results) {
  board_new(0);
  /* The default is 64 MiB (the pages of the argument are never touched). */
  size_t big = ((size_t)64 << 20) + 1;
  void *huge = mmap(NULL, big, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  CHECK(huge != MAP_FAILED);
  tdm_pool *dp = open_n(&cfg_fork, 1);
  tdm_future *df = NULL;
  CHECK_ERR(tdm_pool_submit(dp, t_echo, huge, big, NULL, &df), -EMSGSIZE);
  CHECK(df == NULL);
  CHECK_OK(tdm_pool_close(dp));
  munmap(huge, big);
  /* Processes first: fork while this process has no other thread. */
  const struct config *cs[] = { &cfg_fork, &cfg_threads };
  unsigned char *buf = calloc(1, 2048);
  CHECK(buf != NULL);
  for (int k = 0; k < 2; k++) {
    tdm_pool_options o = options(cs[k], 1);
    o.max_result = 1024;
    tdm_pool *p = open_pool(&o);
    tdm_future *f = NULL;
    if (procs(cs[k])) {
      tdm_future *const untouched = (tdm_future *)buf;
      f = untouched;
      CHECK_ERR(tdm_pool_submit(p, t_echo, buf, 1025, NULL, &f), -EMSGSIZE);
      CHECK(f == untouched);
    } else {
      CHECK_OK(tdm_pool_submit(p, t_echo, buf, 2048, NULL, &f));
      CHECK_OK(tdm_future_result(f, TDM_FOREVER, NULL, NULL));
      tdm_future_free(f);
    }
    CHECK_OK(tdm_pool_submit(p, t_echo, buf, 1024, NULL, &f));
    size_t n = 0;
    CHECK_OK(tdm_future_result(f, TDM_FOREVER, NULL, &n));
    CHECK_EQ(n, 1024);
    tdm_future_free(f);
    f = submit(p, t_big_result, job(0, 1024));
    CHECK_OK(tdm_future_result(f, TDM_FOREVER, NULL, &n));
    CHECK_EQ(n, 1024);
    tdm_future_free(f);
    f = submit(p, t_big_result, job(0, 2000));
    if (procs(cs[k]))
      expect_failed(f, TDM_ETASK, -EMSGSIZE, 1);
    else
      CHECK_OK(tdm_future_result(f, TDM_FOREVER, NULL, NULL));
    tdm_future_free(f);
    CHECK_OK(tdm_pool_close(p));
  }
  free(buf);
}

/* A process worker is a daemon: it cannot open a process pool. */
TEST(process_workers_cannot_open_process_pools) {
  board_new(0);
  tdm_pool *p = open_n(&cfg_fork, 1);
  tdm_future *f = submit(p, t_open_process_pool, job(0, 0));
  CHECK_EQ(result_i32(f), TDM_EDAEMON);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
}

TEST_THREADS(a_task_submits_to_its_own_pool, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  struct inner in = { p, job(3, 7) };
  tdm_future *outer = NULL;
  CHECK_OK(tdm_pool_submit(p, t_submit_inner, &in, sizeof in, NULL, &outer));
  const void *d = NULL;
  size_t n = 0;
  CHECK_OK(tdm_future_result(outer, TDM_FOREVER, &d, &n));
  CHECK_EQ(n, sizeof(tdm_future *));
  tdm_future *inner;
  memcpy(&inner, d, sizeof inner);
  CHECK_EQ(result_i64(inner), 49);
  CHECK_EQ(atomic_load(&B->count[3]), 1);
  tdm_future_free(inner);
  tdm_future_free(outer);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Cancel ---------------------------------------------------------------------------------- */

TEST_ALL(cancel_pending_never_runs, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 1);
  tdm_future *g = submit(p, t_gated, job(0, 1));
  wait_running(g, 0);
  tdm_future *f1 = submit(p, t_square, job(1, 2));
  tdm_future *f2 = submit(p, t_square, job(2, 3));
  tdm_future *f3 = submit(p, t_square, job(3, 4));
  struct cb_log log;
  memset(&log, 0, sizeof log);
  struct cb_arg a0 = { &log, 0 };
  CHECK_OK(tdm_future_on_done(f1, cb_record, &a0));
  CHECK_EQ(atomic_load(&log.n), 0);
  CHECK_OK(tdm_future_cancel(f1));
  /* Cancelled at once; its callback ran in the thread that cancelled it. */
  CHECK(tdm_future_done(f1));
  CHECK_EQ(tdm_future_state_get(f1), TDM_FUTURE_CANCELLED);
  CHECK_EQ(atomic_load(&log.n), 1);
  CHECK_EQ(atomic_load(&log.tid[0]), tdm_test_gettid());
  expect_cancelled(f1, 0);
  CHECK_ERR(tdm_future_cancel(f1), -EALREADY);
  /* Freeing a pending future does not cancel it. */
  tdm_future_free(f2);
  atomic_store(&B->gate[0], 1);
  CHECK_EQ(result_i32(g), 1);
  CHECK_ERR(tdm_future_cancel(g), -EALREADY);
  CHECK_EQ(result_i64(f3), 16);
  /* A failed future cannot be cancelled either. */
  tdm_future *ff = submit(p, t_fail, job(0, 1));
  CHECK_OK(tdm_future_wait(ff, TDM_FOREVER));
  CHECK_ERR(tdm_future_cancel(ff), -EALREADY);
  CHECK_OK(tdm_pool_shutdown(p, true, false));
  CHECK_EQ(atomic_load(&B->count[1]), 0);
  CHECK_EQ(atomic_load(&B->count[2]), 1);
  CHECK_EQ(atomic_load(&B->count[3]), 1);
  CHECK_EQ(atomic_load(&log.calls[0]), 1);
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.cancelled, 1);
  CHECK_EQ(s.done, 3);
  CHECK_EQ(s.failed, 1);
  tdm_future_free(g);
  tdm_future_free(f1);
  tdm_future_free(f3);
  tdm_future_free(ff);
  CHECK_OK(tdm_pool_close(p));
}

TEST_PROCS(cancel_running_kills_the_worker, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 1);
  tdm_future *g = submit(p, t_gated, job(0, 1));
  wait_running(g, 0);
  pid_t pid = atomic_load(&B->pid[0]), ids[4];
  CHECK_EQ(worker_ids(p, ids, 4), 1);
  CHECK_EQ(ids[0], pid);
  CHECK_OK(tdm_future_cancel(g));
  CHECK_EQ(tdm_future_state_get(g), TDM_FUTURE_CANCELLED);
  expect_cancelled(g, 1);
  CHECK_ERR(tdm_future_cancel(g), -EALREADY);
  WAIT_UNTIL(tdm_test_process_gone(pid));
  /* The replacement runs the next task. */
  tdm_future *f = submit(p, t_square, job(1, 5));
  CHECK_EQ(result_i64(f), 25);
  CHECK_EQ(worker_ids(p, ids, 4), 1);
  CHECK(ids[0] != pid);
  CHECK_EQ(atomic_load(&B->count[0]), 0); /* it never passed its gate */
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.cancelled, 1);
  CHECK_EQ(s.workers_replaced, 1);
  CHECK_EQ(s.workers_started, 2);
  CHECK_EQ(s.workers, 1);
  tdm_future_free(g);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(live_descendants(), 0);
}

TEST_THREADS(cancel_running_thread_asks_it_to_stop, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 1);
  tdm_future *g = submit(p, t_gated, job(0, 1));
  wait_running(g, 0);
  CHECK_ERR(tdm_future_cancel(g), -EINPROGRESS);
  /* The task saw the request and returned 0 with a result: it ends CANCELLED all the same. */
  expect_cancelled(g, 1);
  CHECK_EQ(atomic_load(&B->saw_cancel[0]), 1);
  CHECK_ERR(tdm_future_cancel(g), -EALREADY);
  tdm_future *f = submit(p, t_square, job(1, 5));
  CHECK_EQ(result_i64(f), 25);
  CHECK_EQ(stats(p).cancelled, 1);
  tdm_future_free(g);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Callbacks ------------------------------------------------------------------------------- */

TEST_ALL(on_done_callbacks_run_once_in_order, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  struct cb_log log;
  memset(&log, 0, sizeof log);
  struct cb_arg a[4] = { { &log, 0 }, { &log, 1 }, { &log, 2 }, { &log, 3 } };
  tdm_future *g = submit(p, t_gated, job(0, 1));
  wait_running(g, 0);
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_future_on_done(g, cb_record, &a[i]));
  CHECK_EQ(atomic_load(&log.n), 0);
  atomic_store(&B->gate[0], 1);
  CHECK_OK(tdm_future_wait(g, TDM_FOREVER));
  WAIT_UNTIL(atomic_load(&log.n) == 3);
  int32_t me = tdm_test_gettid();
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(atomic_load(&log.order[i]), i);
    CHECK(atomic_load(&log.tid[i]) != me); /* run by the thread that ended the future */
  }
  /* On a future that has ended: at once, in the calling thread. */
  CHECK_OK(tdm_future_on_done(g, cb_record, &a[3]));
  CHECK_EQ(atomic_load(&log.n), 4);
  CHECK_EQ(atomic_load(&log.order[3]), 3);
  CHECK_EQ(atomic_load(&log.tid[3]), me);
  /* A callback may submit. */
  struct chain ch = { p, job(1, 6), NULL };
  tdm_future *g2 = submit(p, t_gated, job(2, 2));
  CHECK_OK(tdm_future_on_done(g2, cb_submit, &ch));
  atomic_store(&B->gate[2], 1);
  WAIT_UNTIL(atomic_load(&ch.next) != NULL);
  tdm_future *next = atomic_load(&ch.next);
  CHECK_EQ(result_i64(next), 36);
  /* A failed future's callbacks run too. */
  tdm_future *ff = submit(p, t_fail, job(0, 3));
  struct cb_log flog;
  memset(&flog, 0, sizeof flog);
  struct cb_arg fa = { &flog, 0 };
  CHECK_OK(tdm_future_on_done(ff, cb_record, &fa));
  CHECK_OK(tdm_future_wait(ff, TDM_FOREVER));
  WAIT_UNTIL(atomic_load(&flog.n) == 1);
  CHECK_OK(tdm_pool_shutdown(p, true, false));
  for (int i = 0; i < 4; i++)
    CHECK_EQ(atomic_load(&log.calls[i]), 1);
  CHECK_EQ(atomic_load(&flog.calls[0]), 1);
  CHECK_EQ(atomic_load(&log.n), 4);
  tdm_future_free(g);
  tdm_future_free(g2);
  tdm_future_free(next);
  tdm_future_free(ff);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Waiting on many ------------------------------------------------------------------------- */

TEST_ALL(wait_in_every_mode, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  need_concurrency(p, 2);
  tdm_future *fx = submit(p, t_fail, job(0, 4)); /* fails */
  tdm_future *fd = submit(p, t_square, job(-1, 2));
  CHECK_OK(tdm_future_wait(fx, TDM_FOREVER));
  CHECK_OK(tdm_future_wait(fd, TDM_FOREVER));
  tdm_future *f0 = submit(p, t_gated, job(0, 0));
  tdm_future *f1 = submit(p, t_gated, job(1, 1));
  wait_running(f0, 0);
  wait_running(f1, 1);
  size_t nd = 99;
  tdm_future *running[] = { f0, f1 };
  CHECK_ERR(tdm_wait(running, 2, TDM_WAIT_ALL, 0, &nd), -ETIMEDOUT);
  CHECK_EQ(nd, 0);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_wait(running, 2, TDM_WAIT_FIRST, TDM_MS(20), &nd), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(20));
  CHECK_EQ(nd, 0);
  CHECK_ERR(tdm_wait(running, 2, TDM_WAIT_FIRST_ERROR, 0, NULL), -ETIMEDOUT);
  /* One of them has ended. */
  tdm_future *some[] = { f0, f1, fd };
  CHECK_OK(tdm_wait(some, 3, TDM_WAIT_FIRST, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 1);
  CHECK_ERR(tdm_wait(some, 3, TDM_WAIT_ALL, 0, &nd), -ETIMEDOUT);
  CHECK_EQ(nd, 1);
  /* FIRST_ERROR: no failure and not all ended is a timeout; a failure ends it at once. */
  tdm_future *ok_and_running[] = { f0, fd };
  CHECK_ERR(tdm_wait(ok_and_running, 2, TDM_WAIT_FIRST_ERROR, TDM_MS(10), &nd), -ETIMEDOUT);
  CHECK_EQ(nd, 1);
  tdm_future *with_failure[] = { f0, f1, fx };
  CHECK_OK(tdm_wait(with_failure, 3, TDM_WAIT_FIRST_ERROR, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 1);
  /* Waiting wakes when a task ends: FIRST on a sleeper, FIRST_ERROR on one that then fails. */
  atomic_store(&B->gate[1], 1);
  CHECK_OK(tdm_future_wait(f1, TDM_FOREVER));
  tdm_future *fs = submit(p, t_sleep, job(-1, 30));
  tdm_future *sleeper[] = { f0, fs };
  CHECK_OK(tdm_wait(sleeper, 2, TDM_WAIT_FIRST, TDM_FOREVER, &nd));
  CHECK(tdm_future_done(fs) && !tdm_future_done(f0));
  CHECK_EQ(nd, 1);
  tdm_future *ff = submit(p, t_sleep, job_aux(-1, 30, 9));
  tdm_future *failing[] = { f0, ff };
  CHECK_OK(tdm_wait(failing, 2, TDM_WAIT_FIRST_ERROR, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 1);
  expect_failed(ff, TDM_ETASK, 9, 1);
  CHECK(!tdm_future_done(f0));
  /* A cancelled future counts as an error. */
  tdm_future *f3 = submit(p, t_gated, job(3, 3));
  wait_running(f3, 3);
  tdm_future *f4 = submit(p, t_square, job(4, 4)); /* both workers busy: pending */
  CHECK_OK(tdm_future_cancel(f4));
  tdm_future *with_cancelled[] = { f0, f4 };
  CHECK_OK(tdm_wait(with_cancelled, 2, TDM_WAIT_FIRST_ERROR, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 1);
  /* ALL; repeats; none at all. */
  atomic_store(&B->gate[0], 1);
  atomic_store(&B->gate[3], 1);
  tdm_future *all[] = { fx, fd, f0, f1, fs, ff, f3, f4 };
  CHECK_OK(tdm_wait(all, 8, TDM_WAIT_ALL, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 8);
  for (int i = 0; i < 8; i++)
    CHECK(tdm_future_done(all[i]));
  tdm_future *repeats[] = { f0, f0, fd };
  CHECK_OK(tdm_wait(repeats, 3, TDM_WAIT_ALL, 0, NULL));
  CHECK_OK(tdm_wait(repeats, 3, TDM_WAIT_FIRST_ERROR, 0, NULL));
  nd = 99;
  CHECK_OK(tdm_wait(NULL, 0, TDM_WAIT_ALL, 0, &nd));
  CHECK_EQ(nd, 0);
  CHECK_OK(tdm_wait(NULL, 0, TDM_WAIT_FIRST, TDM_FOREVER, NULL));
  free_all(all, 8);
  CHECK_OK(tdm_pool_close(p));
}

TEST_ALL(as_completed_gives_futures_in_the_order_they_end, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  need_concurrency(p, 2);
  tdm_future *fd = submit(p, t_square, job(-1, 2));
  CHECK_OK(tdm_future_wait(fd, TDM_FOREVER));
  tdm_future *f0 = submit(p, t_gated, job(0, 0));
  tdm_future *f1 = submit(p, t_gated, job(1, 1));
  wait_running(f0, 0);
  wait_running(f1, 1);
  tdm_future *f2 = submit(p, t_gated, job(2, 2)); /* pending */
  tdm_future *fs[] = { f0, f1, f2, fd };
  tdm_as_completed *it = NULL;
  CHECK_OK(tdm_as_completed_open(&it, fs, 4));
  tdm_future *got = NULL;
  CHECK_OK(tdm_as_completed_next(it, 0, &got)); /* the one that had ended comes first */
  CHECK(got == fd);
  CHECK_ERR(tdm_as_completed_next(it, 0, &got), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_as_completed_next(it, TDM_MS(20), &got), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(20));
  CHECK(got == fd);
  int order[] = { 1, 2, 0 };
  for (int k = 0; k < 3; k++) {
    atomic_store(&B->gate[order[k]], 1);
    CHECK_OK(tdm_as_completed_next(it, LONG, &got));
    CHECK(got == fs[order[k]]);
    CHECK(tdm_future_done(got));
  }
  CHECK_ERR(tdm_as_completed_next(it, TDM_FOREVER, &got), TDM_EEOF);
  CHECK_ERR(tdm_as_completed_next(it, 0, &got), TDM_EEOF);
  tdm_as_completed_close(it);
  tdm_as_completed_close(NULL);
  /* None: the end at once. A NULL entry is refused. */
  CHECK_OK(tdm_as_completed_open(&it, NULL, 0));
  CHECK_ERR(tdm_as_completed_next(it, TDM_FOREVER, &got), TDM_EEOF);
  tdm_as_completed_close(it);
  tdm_as_completed *const untouched = (tdm_as_completed *)&got;
  it = untouched;
  tdm_future *with_null[] = { f0, NULL };
  CHECK_ERR(tdm_as_completed_open(&it, with_null, 2), -EINVAL);
  CHECK(it == untouched);
  free_all(fs, 4);
  CHECK_OK(tdm_pool_close(p));
}

/*
 * A task waits in the pool until a worker starts it: while one worker is held by a long task,
 * every task submitted after it runs on the other worker, and stays PENDING with no attempt
 * until then.
 */
TEST_ALL(pending_tasks_run_on_an_idle_worker, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  need_concurrency(p, 2);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  tdm_future *f[8];
  for (int i = 0; i < 8; i++)
    f[i] = submit(p, t_sleep, job(1 + i, 2));
  for (int i = 0; i < 8; i++) {
    CHECK_OK(tdm_future_wait(f[i], LONG));
    CHECK_EQ(result_i32(f[i]), 2);
  }
  CHECK(!tdm_future_done(g));
  /* One worker, held: the next task is not started, however long it waits. */
  tdm_pool *one = open_n(c, 1);
  tdm_future *h = submit(one, t_gated, job(10, 0));
  wait_running(h, 10);
  tdm_future *w = submit(one, t_square, job(11, 3));
  tdm_clock_sleep(TDM_MS(50));
  CHECK_EQ(tdm_future_state_get(w), TDM_FUTURE_PENDING);
  tdm_task_error e;
  CHECK_OK(tdm_future_error(w, &e));
  CHECK_EQ(e.attempts, 0);
  atomic_store(&B->gate[0], 1);
  atomic_store(&B->gate[10], 1);
  CHECK_EQ(result_i64(w), 9);
  free_all(f, 8);
  tdm_future_free(g);
  tdm_future_free(h);
  tdm_future_free(w);
  CHECK_OK(tdm_pool_close(one));
  CHECK_OK(tdm_pool_close(p));
}

/* Futures of a process pool and of a thread pool, waited on together. */
TEST(wait_and_as_completed_across_pools) {
  board_new(0);
  tdm_pool *pp = open_n(&cfg_fork, 1);
  tdm_pool *tp = open_n(&cfg_threads, 1);
  tdm_future *a = submit(pp, t_gated, job(0, 1));
  tdm_future *b = submit(tp, t_gated, job(1, 2));
  wait_running(a, 0);
  wait_running(b, 1);
  tdm_future *fs[] = { a, b };
  size_t nd = 9;
  CHECK_ERR(tdm_wait(fs, 2, TDM_WAIT_FIRST, 0, &nd), -ETIMEDOUT);
  tdm_as_completed *it = NULL;
  CHECK_OK(tdm_as_completed_open(&it, fs, 2));
  tdm_future *got = NULL;
  atomic_store(&B->gate[1], 1);
  CHECK_OK(tdm_as_completed_next(it, TDM_FOREVER, &got));
  CHECK(got == b);
  CHECK_OK(tdm_wait(fs, 2, TDM_WAIT_FIRST, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 1);
  atomic_store(&B->gate[0], 1);
  CHECK_OK(tdm_as_completed_next(it, TDM_FOREVER, &got));
  CHECK(got == a);
  CHECK_ERR(tdm_as_completed_next(it, TDM_FOREVER, &got), TDM_EEOF);
  tdm_as_completed_close(it);
  CHECK_OK(tdm_wait(fs, 2, TDM_WAIT_ALL, TDM_FOREVER, &nd));
  CHECK_EQ(nd, 2);
  CHECK_EQ(result_i32(a), 1);
  CHECK_EQ(result_i32(b), 2);
  free_all(fs, 2);
  CHECK_OK(tdm_pool_close(tp));
  CHECK_OK(tdm_pool_close(pp));
}

/* ---- map ---------------------------------------------------------------------------------------
 */

TEST_ALL(map_is_ordered_with_per_item_errors, 120) {
  enum { N = 1000 };
  board_new(N);
  tdm_pool *p = open_n(c, 2);
  int32_t *in = iota(N);
  int64_t *out = malloc(N * sizeof *out);
  int *errors = malloc(N * sizeof *errors);
  CHECK(out != NULL && errors != NULL);
  static const size_t chunks[] = { 0, 1, 7, N, 5 * N };
  for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
    tdm_map_options o = { .chunk = chunks[k] };
    memset(out, 0xab, N * sizeof *out); /* m_square fails an item whose output is not zeroed */
    CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, &o));
    check_squares(out, in, N, NULL, 0);
  }
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, NULL));
  check_squares(out, in, N, NULL, 0);
  /* Items that fail fail alone: the others' outputs are all written. */
  struct marg a = marg(7, -1);
  for (int with_errors = 0; with_errors < 2; with_errors++) {
    tdm_map_options o = { .arg = &a, .arg_size = sizeof a, .errors = with_errors ? errors : NULL };
    memset(errors, 0x5a, N * sizeof *errors);
    memset(out, 0, N * sizeof *out);
    CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, &o), TDM_ETASK);
    check_squares(out, in, N, with_errors ? errors : NULL, 7);
  }
  /* The map's argument: threads get the caller's pointer, processes a copy. */
  a.fail_mod = 12345;
  a.self = &a;
  tdm_map_options ao = { .arg = &a, .arg_size = sizeof a };
  CHECK_OK(tdm_pool_map(p, m_arg_identity, in, sizeof *in, out, sizeof *out, N, &ao));
  for (size_t i = 0; i < N; i++)
    CHECK_EQ(out[i], procs(c) ? 2 : 1);
  /* No input. */
  CHECK_OK(tdm_pool_map(p, m_no_input, NULL, 0, out, sizeof *out, N, NULL));
  for (size_t i = 0; i < N; i++)
    CHECK_EQ(out[i], 42);
  /* No output: each item runs exactly once. */
  a = marg(0, -1);
  tdm_map_options co = { .arg = &a, .arg_size = sizeof a, .chunk = 3 };
  CHECK_OK(tdm_pool_map(p, m_count, in, sizeof *in, NULL, 0, N, &co));
  for (size_t i = 0; i < N; i++)
    CHECK_EQ(atomic_load(&B->hits[i]), 1);
  CHECK_OK(tdm_pool_map(p, m_count, NULL, 0, NULL, 0, 50, &co));
  CHECK_EQ(atomic_load(&B->count[0]), 50);
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, 0, NULL));
  /* Bad arguments. */
  CHECK_ERR(tdm_pool_map(p, NULL, in, sizeof *in, out, sizeof *out, N, NULL), -EINVAL);
  CHECK_ERR(tdm_pool_map(p, m_square, NULL, sizeof *in, out, sizeof *out, N, NULL), -EINVAL);
  CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, NULL, sizeof *out, N, NULL), -EINVAL);
  CHECK_ERR(tdm_pool_map(p, m_square, in, SIZE_MAX / 2 + 1, out, sizeof *out, 4, NULL), -EINVAL);
  CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, out, SIZE_MAX / 4 + 1, 8, NULL), -EINVAL);
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.submitted, 0);
  CHECK_EQ(s.items, 11 * N + 50);
  free(in);
  free(out);
  free(errors);
  CHECK_OK(tdm_pool_close(p));
}

TEST_ALL(map_of_a_million_items, 300) {
  size_t n = SLOW_BUILD ? (size_t)1 << 17 : (size_t)1 << 20;
  board_new(0);
  tdm_pool *p = open_n(c, 4);
  int32_t *in = iota(n);
  int64_t *out = calloc(n, sizeof *out);
  CHECK(out != NULL);
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, n, NULL));
  check_squares(out, in, n, NULL, 0);
  CHECK_EQ(stats(p).items, n);
  free(in);
  free(out);
  CHECK_OK(tdm_pool_close(p));
}

/* Arrays in tandem segments (named and anonymous) are used in place by process workers. */
TEST_PROCS(map_arrays_in_a_segment, 60) {
  enum { N = 5000 };
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  char name[64];
  snprintf(name, sizeof name, "/tdm-pool-test-map-%d", (int)getpid());
  tdm_shm *named = NULL, *anon = NULL;
  size_t size = N * (sizeof(int32_t) + sizeof(int64_t));
  CHECK_OK(tdm_shm_create(&named, name, size, NULL));
  CHECK_OK(tdm_shm_create(&anon, NULL, size, NULL));
  tdm_shm *segs[] = { named, anon };
  for (int k = 0; k < 2; k++) {
    int64_t *out = tdm_shm_addr(segs[k]); /* 8-byte items first: aligned */
    int32_t *in = (int32_t *)(out + N);
    for (int i = 0; i < N; i++)
      in[i] = i;
    CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, NULL));
    check_squares(out, in, N, NULL, 0);
    /* Only the output in the segment, the input on the heap (and the other way). */
    int32_t *heap_in = iota(N);
    memset(out, 0, N * sizeof *out);
    CHECK_OK(tdm_pool_map(p, m_square, heap_in, sizeof *heap_in, out, sizeof *out, N, NULL));
    check_squares(out, heap_in, N, NULL, 0);
    int64_t *heap_out = calloc(N, sizeof *heap_out);
    CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, heap_out, sizeof *heap_out, N, NULL));
    check_squares(heap_out, in, N, NULL, 0);
    free(heap_in);
    free(heap_out);
  }
  CHECK_OK(tdm_shm_close(named));
  CHECK_OK(tdm_shm_close(anon));
  CHECK_OK(tdm_pool_close(p));
}

/* On threads the caller runs items too: a map completes while the only worker is busy. */
TEST_THREADS(map_runs_items_in_the_calling_thread, 60) {
  enum { N = 200 };
  board_new(0);
  tdm_pool *p = open_n(c, 1);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  int32_t *in = iota(N);
  int64_t out[N];
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, NULL));
  check_squares(out, in, N, NULL, 0);
  CHECK(!tdm_future_done(g));
  atomic_store(&B->gate[0], 1);
  CHECK_OK(tdm_future_wait(g, TDM_FOREVER));
  tdm_future_free(g);
  free(in);
  CHECK_OK(tdm_pool_close(p));
}

/* A map item that crashes its worker or runs past its timeout fails alone (one item a chunk). */
TEST_PROCS(map_items_that_crash_or_hang_fail_alone, 120) {
  enum { N = 40 };
  board_new(0);
  tdm_pool_options o = options(c, 2);
  o.task_timeout = TDM_MS(300);
  tdm_pool *p = open_pool(&o);
  int32_t *in = iota(N);
  in[5] = -1;  /* SIGSEGV */
  in[17] = -2; /* never returns */
  int64_t out[N];
  int errors[N];
  tdm_map_options mo = { .chunk = 1, .errors = errors };
  CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, &mo), TDM_ETASK);
  for (int i = 0; i < N; i++) {
    if (i == 5)
      CHECK_ERR(errors[i], TDM_EWORKER);
    else if (i == 17)
      CHECK_ERR(errors[i], TDM_ETASKTIMEOUT);
    else {
      CHECK_EQ(errors[i], 0);
      CHECK_EQ(out[i], (int64_t)i * i);
    }
  }
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.timed_out, 1);
  CHECK_EQ(s.workers_lost, 1);
  WAIT_UNTIL(stats(p).workers_replaced == 2 && stats(p).workers == 2);
  /* The pool goes on. */
  in[5] = 5;
  in[17] = 17;
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, NULL));
  check_squares(out, in, N, NULL, 0);
  free(in);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- imap ------------------------------------------------------------------------------------ */

/* Reads n items from `it` in input order, checking each. */
static void expect_ordered(tdm_imap *it, size_t first, size_t n, int fail_mod) {
  for (size_t k = first; k < first + n; k++) {
    tdm_imap_item item;
    memset(&item, 0xee, sizeof item);
    CHECK_OK(tdm_imap_next(it, TDM_FOREVER, &item));
    CHECK_EQ(item.index, k);
    int32_t x = (int32_t)(k % 1000000);
    if (fail_mod > 0 && x % fail_mod == 3) {
      CHECK_EQ(item.error, x + 1);
      continue;
    }
    CHECK_EQ(item.error, 0);
    CHECK(item.out != NULL);
    int64_t v;
    memcpy(&v, item.out, sizeof v);
    CHECK_EQ(v, (int64_t)x * x);
  }
}

/* Reads n items in any order; each index once. */
static void expect_unordered(tdm_imap *it, size_t n, bool *seen) {
  memset(seen, 0, n);
  for (size_t k = 0; k < n; k++) {
    tdm_imap_item item;
    CHECK_OK(tdm_imap_next(it, TDM_FOREVER, &item));
    CHECK(item.index < n);
    CHECK(!seen[item.index]);
    seen[item.index] = true;
    CHECK_EQ(item.error, 0);
    int64_t v;
    memcpy(&v, item.out, sizeof v);
    CHECK_EQ(v, (int64_t)item.index * (int64_t)item.index);
  }
}

TEST_ALL(imap_ordered_and_unordered, 120) {
  enum { N = 300 };
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  need_concurrency(p, 2);
  int32_t *in = iota(N);
  bool seen[N];
  tdm_imap *it = NULL;
  tdm_imap_item item;
  /* Ordered, with a small window and automatic chunks; then the end, twice. */
  tdm_map_options o = { .window = 8 };
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), N, &o));
  expect_ordered(it, 0, N, 0);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_ERR(tdm_imap_next(it, 0, &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));
  /* Unordered: each item once. */
  o.unordered = true;
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), N, &o));
  expect_unordered(it, N, seen);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));
  /* Item failures are in item.error. */
  struct marg a = marg(7, -1);
  tdm_map_options fo = { .arg = &a, .arg_size = sizeof a, .window = 16, .chunk = 4 };
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), N, &fo));
  expect_ordered(it, 0, N, 7);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));
  /* Item 0 waits for its gate: in order, nothing comes until it ends... */
  a = marg(0, 0);
  tdm_map_options go = { .arg = &a, .arg_size = sizeof a, .window = 8, .chunk = 1 };
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), N, &go));
  CHECK_ERR(tdm_imap_next(it, 0, &item), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_imap_next(it, TDM_MS(20), &item), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(20));
  atomic_store(&B->gate[0], 1);
  expect_ordered(it, 0, N, 0);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));
  /* ...unordered, the others come first. */
  atomic_store(&B->gate[0], 0);
  go.unordered = true;
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), N, &go));
  CHECK_OK(tdm_imap_next(it, TDM_FOREVER, &item));
  CHECK(item.index != 0);
  CHECK_EQ(item.error, 0);
  atomic_store(&B->gate[0], 1);
  size_t got = 1;
  memset(seen, 0, sizeof seen);
  seen[item.index] = true;
  while (tdm_imap_next(it, TDM_FOREVER, &item) == 0) {
    CHECK(item.index < N && !seen[item.index]);
    seen[item.index] = true;
    got++;
  }
  CHECK_EQ(got, N);
  CHECK_OK(tdm_imap_close(it));
  /* Closing early drops the rest. */
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), N, &o));
  for (int k = 0; k < 3; k++)
    CHECK_OK(tdm_imap_next(it, TDM_FOREVER, &item));
  CHECK_OK(tdm_imap_close(it));
  CHECK_OK(tdm_imap_close(NULL));
  /* Nothing to do. */
  CHECK_OK(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof(int64_t), 0, NULL));
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));
  /* Bad arguments. */
  tdm_imap *const untouched = (tdm_imap *)&item;
  it = untouched;
  CHECK_ERR(tdm_pool_imap(&it, p, NULL, in, sizeof *in, sizeof(int64_t), N, NULL), -EINVAL);
  CHECK_ERR(tdm_pool_imap(&it, p, m_square, NULL, sizeof *in, sizeof(int64_t), N, NULL), -EINVAL);
  CHECK(it == untouched);
  free(in);
  CHECK_OK(tdm_pool_close(p));
}

/* Reads `n` items from an endless source, slowly, and checks that the pool never read more
 * than `window` items ahead of what was given. */
static void expect_bounded(tdm_imap *it, struct source *s, size_t n, size_t window, bool ordered) {
  for (size_t consumed = 1; consumed <= n; consumed++) {
    tdm_imap_item item;
    CHECK_OK(tdm_imap_next(it, TDM_FOREVER, &item));
    if (ordered) CHECK_EQ(item.index, consumed - 1);
    CHECK_EQ(item.error, 0);
    if (s->produced > consumed + window)
      tdm_test_fail(__FILE__, __LINE__, "%zu items read from the source, %zu given, window %zu",
                    s->produced, consumed, window);
    if (consumed % 4 == 0) tdm_clock_sleep(TDM_US(500)); /* a slow consumer */
  }
}

TEST_ALL(imap_source_ends_fails_and_stays_bounded, 120) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  tdm_imap *it = NULL;
  tdm_imap_item item;
  /* A source that ends. */
  struct source s = source(500, SIZE_MAX, 0);
  tdm_map_options o = { .window = 16 };
  CHECK_OK(
      tdm_pool_imap_source(&it, p, m_square, src_count, &s, sizeof(int32_t), sizeof(int64_t), &o));
  expect_ordered(it, 0, 500, 0);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_EQ(s.produced, 500);
  CHECK_OK(tdm_imap_close(it));
  /* A source that fails: every item before, then its error once, then the end. */
  s = source(SIZE_MAX, 50, -EIO);
  CHECK_OK(
      tdm_pool_imap_source(&it, p, m_square, src_count, &s, sizeof(int32_t), sizeof(int64_t), &o));
  expect_ordered(it, 0, 50, 0);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), -EIO);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));
  /* The same, unordered: 50 items in some order, then the error. */
  s = source(SIZE_MAX, 50, -EIO);
  o.unordered = true;
  CHECK_OK(
      tdm_pool_imap_source(&it, p, m_square, src_count, &s, sizeof(int32_t), sizeof(int64_t), &o));
  bool seen[50];
  expect_unordered(it, 50, seen);
  CHECK_ERR(tdm_imap_next(it, TDM_FOREVER, &item), -EIO);
  CHECK_OK(tdm_imap_close(it));
  /* An endless source and a slow consumer: memory stays bounded by the window. */
  size_t n = SLOW_BUILD ? 300 : 1000;
  for (int unordered = 0; unordered < 2; unordered++) {
    s = source(SIZE_MAX, SIZE_MAX, 0);
    tdm_map_options bo = { .window = 16, .chunk = 1, .unordered = unordered };
    CHECK_OK(tdm_pool_imap_source(&it, p, m_square, src_count, &s, sizeof(int32_t), sizeof(int64_t),
                                  &bo));
    expect_bounded(it, &s, n, 16, !unordered);
    CHECK_OK(tdm_imap_close(it));
    /* The default window: 64 x chunk, at least 4 x workers items. */
    s = source(SIZE_MAX, SIZE_MAX, 0);
    bo.window = 0;
    bo.chunk = 2;
    unsigned w4 = 4 * stats(p).workers;
    CHECK_OK(tdm_pool_imap_source(&it, p, m_square, src_count, &s, sizeof(int32_t), sizeof(int64_t),
                                  &bo));
    expect_bounded(it, &s, n, w4 > 128 ? w4 : 128, !unordered);
    CHECK_OK(tdm_imap_close(it));
  }
  /* Bad arguments. */
  tdm_imap *const untouched = (tdm_imap *)&item;
  it = untouched;
  CHECK_ERR(tdm_pool_imap_source(&it, p, NULL, src_count, &s, 4, 8, NULL), -EINVAL);
  CHECK_ERR(tdm_pool_imap_source(&it, p, m_square, NULL, &s, 4, 8, NULL), -EINVAL);
  CHECK(it == untouched);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Ending ---------------------------------------------------------------------------------- */

TEST_ALL(shutdown_waits_or_not_and_cancels_pending, 120) {
  board_new(0);
  struct job ia = job_aux(0, -1, 1);
  tdm_pool_options o = options(c, 1);
  o.initializer = i_record;
  o.finalizer = f_record;
  o.init_arg = &ia;
  o.init_size = sizeof ia;
  /* Without waiting: shutdown returns while a task runs; the queued ones still run. */
  tdm_pool *p = open_pool(&o);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  tdm_future *q[3];
  for (int i = 0; i < 3; i++)
    q[i] = submit(p, t_square, job(1 + i, i));
  pid_t ids[64];
  size_t nw = worker_ids(p, ids, 64);
  CHECK_OK(tdm_pool_shutdown(p, false, false));
  CHECK(!tdm_future_done(g));
  tdm_future *f = NULL;
  struct job j = job(9, 9);
  CHECK_ERR(tdm_pool_submit(p, t_square, &j, sizeof j, NULL, &f), -EPIPE);
  CHECK(f == NULL);
  int32_t in[1] = { 1 };
  int64_t out[1];
  CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, 1, NULL), -EPIPE);
  tdm_imap *it = NULL;
  CHECK_ERR(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof *out, 1, NULL), -EPIPE);
  CHECK(it == NULL);
  atomic_store(&B->gate[0], 1);
  CHECK_OK(tdm_pool_shutdown(p, true, false));
  /* Everything has ended, the finalizers have run and the workers are gone. */
  CHECK_EQ(tdm_future_state_get(g), TDM_FUTURE_DONE);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(tdm_future_state_get(q[i]), TDM_FUTURE_DONE);
    CHECK_EQ(result_i64(q[i]), i * i);
    CHECK_EQ(atomic_load(&B->count[1 + i]), 1);
  }
  tdm_pool_stats s = stats(p);
  CHECK_EQ(atomic_load(&B->inits), s.workers_started);
  CHECK_EQ(atomic_load(&B->finis), s.workers_started);
  if (procs(c))
    for (size_t i = 0; i < nw; i++)
      CHECK(tdm_test_process_gone(ids[i]));
  CHECK_OK(tdm_pool_shutdown(p, true, false)); /* again: nothing to wait for */
  CHECK_OK(tdm_pool_shutdown(p, false, true));
  CHECK_OK(tdm_pool_close(p));
  tdm_future_free(g);
  free_all(q, 3);
  expect_nothing_left();
  /* cancel_pending: the queued tasks never run; the running one finishes. */
  p = open_pool(&o);
  g = submit(p, t_gated, job(10, 10));
  wait_running(g, 10);
  for (int i = 0; i < 3; i++)
    q[i] = submit(p, t_square, job(11 + i, i));
  CHECK_OK(tdm_pool_shutdown(p, false, true));
  for (int i = 0; i < 3; i++)
    expect_cancelled_unstarted(q[i]);
  CHECK(!tdm_future_done(g));
  atomic_store(&B->gate[10], 1);
  CHECK_OK(tdm_pool_shutdown(p, true, true));
  CHECK_EQ(result_i32(g), 10);
  for (int i = 0; i < 3; i++)
    CHECK_EQ(atomic_load(&B->count[11 + i]), 0);
  CHECK_EQ(stats(p).cancelled + stats(p).failed, 3);
  CHECK_OK(tdm_pool_close(p));
  tdm_future_free(g);
  free_all(q, 3);
  /* Waiting with cancel_pending at once. */
  p = open_pool(&o);
  g = submit(p, t_gated, job(20, 20));
  wait_running(g, 20);
  q[0] = submit(p, t_square, job(21, 1));
  atomic_store(&B->gate[20], 1);
  CHECK_OK(tdm_pool_shutdown(p, true, true));
  CHECK(tdm_future_done(g) && tdm_future_done(q[0]));
  CHECK_EQ(result_i32(g), 20);
  CHECK_OK(tdm_pool_close(p));
  tdm_future_free(g);
  tdm_future_free(q[0]);
  expect_nothing_left();
}

TEST_ALL(terminate_stops_everything, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  need_concurrency(p, 2);
  tdm_future *g[2], *q[2];
  for (int i = 0; i < 2; i++)
    g[i] = submit(p, t_gated, job(i, i));
  for (int i = 0; i < 2; i++)
    wait_running(g[i], i);
  for (int i = 0; i < 2; i++)
    q[i] = submit(p, t_square, job(2 + i, i));
  pid_t pids[2] = { atomic_load(&B->pid[0]), atomic_load(&B->pid[1]) };
  CHECK_OK(tdm_pool_terminate(p));
  for (int i = 0; i < 2; i++) {
    CHECK(tdm_future_done(g[i]));
    if (procs(c)) {
      /* Killed: the running tasks end CANCELLED, and the workers are reaped. */
      expect_cancelled(g[i], 1);
      CHECK(tdm_test_process_gone(pids[i]));
    } else {
      /* Asked to stop, and returned: CANCELLED. */
      expect_cancelled(g[i], 1);
      CHECK_EQ(atomic_load(&B->saw_cancel[i]), 1);
    }
    expect_cancelled_unstarted(q[i]);
    CHECK_EQ(atomic_load(&B->count[2 + i]), 0);
  }
  tdm_future *f = NULL;
  struct job j = job(9, 9);
  CHECK_ERR(tdm_pool_submit(p, t_square, &j, sizeof j, NULL, &f), -EPIPE);
  CHECK_OK(tdm_pool_shutdown(p, true, false));
  CHECK_OK(tdm_pool_close(p));
  free_all(g, 2);
  free_all(q, 2);
  expect_nothing_left();
}

/* tdm_pool_interrupt(): terminate without waiting. */
TEST_ALL(interrupt_terminates_without_waiting, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 1);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  tdm_future *q = submit(p, t_square, job(1, 1));
  CHECK_OK(tdm_pool_interrupt(p));
  CHECK_OK(tdm_future_wait(g, LONG));
  CHECK_EQ(tdm_future_state_get(g), TDM_FUTURE_CANCELLED);
  CHECK_ERR(tdm_future_result(g, 0, NULL, NULL), -ECANCELED);
  expect_cancelled_unstarted(q);
  tdm_future *f = NULL;
  struct job j = job(9, 9);
  int r;
  WAIT_UNTIL((r = tdm_pool_submit(p, t_square, &j, sizeof j, NULL, &f)) != 0);
  CHECK_ERR(r, -EPIPE);
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(atomic_load(&B->count[1]), 0);
  tdm_future_free(g);
  tdm_future_free(q);
  expect_nothing_left();
}

TEST_ALL(close_waits_and_futures_outlive_the_pool, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  tdm_future *f[6];
  for (int i = 0; i < 6; i++)
    f[i] = submit(p, t_sleep, job(i, 5 + i));
  CHECK_OK(tdm_pool_close(p));
  for (int i = 0; i < 6; i++) {
    CHECK_EQ(tdm_future_state_get(f[i]), TDM_FUTURE_DONE);
    CHECK_EQ(result_i32(f[i]), 5 + i);
    CHECK_EQ(atomic_load(&B->count[i]), 1);
  }
  free_all(f, 6);
  expect_nothing_left();
}

/* ---- Statistics --------------------------------------------------------------------------------
 */

TEST_ALL(stats_and_worker_stats, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  need_concurrency(p, 2);
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.workers, 2);
  CHECK_EQ(s.workers_started, 2);
  CHECK(s.submitted == 0 && s.done == 0 && s.failed == 0 && s.cancelled == 0);
  CHECK(s.retried == 0 && s.timed_out == 0 && s.items == 0);
  CHECK(s.workers_replaced == 0 && s.workers_lost == 0 && s.busy_ns == 0 && s.cpu_ns == 0);
  CHECK(s.uptime_ns >= 0);
  tdm_future *f[8];
  for (int i = 0; i < 5; i++)
    f[i] = submit(p, t_square, job(-1, i));
  f[5] = submit(p, t_fail, job(-1, 1));
  f[6] = submit(p, t_fail, job(-1, 2));
  f[7] = submit(p, t_sleep, job(-1, 20));
  CHECK_OK(tdm_wait(f, 8, TDM_WAIT_ALL, TDM_FOREVER, NULL));
  free_all(f, 8);
  enum { N = 100 };
  int32_t *in = iota(N);
  int64_t out[N];
  tdm_map_options mo = { .chunk = 10 };
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, &mo));
  free(in);
  /* A worker adds a task's time to the figures just after its future ends (the thread
   * backend does): let them settle. */
  tdm_pool_worker_stats ws[4];
  WAIT_UNTIL(tdm_pool_worker_stats_get(p, ws, 4) == 2 && !ws[0].busy && !ws[1].busy &&
             ws[0].tasks + ws[1].tasks >= 8 && stats(p).busy_ns >= (uint64_t)TDM_MS(20));
  s = stats(p);
  CHECK_EQ(s.submitted, 8);
  CHECK(s.done >= 6);
  CHECK_EQ(s.failed, 2);
  CHECK_EQ(s.cancelled, 0);
  CHECK_EQ(s.retried, 0);
  CHECK_EQ(s.timed_out, 0);
  CHECK_EQ(s.items, N);
  CHECK_EQ(s.workers, 2);
  CHECK_EQ(s.workers_started, 2);
  CHECK_EQ(s.workers_replaced, 0);
  CHECK_EQ(s.workers_lost, 0);
  CHECK(s.uptime_ns >= TDM_MS(20));
  CHECK(s.cpu_ns <= s.busy_ns);
  memset(ws, 0xee, sizeof ws);
  CHECK_EQ(tdm_pool_worker_stats_get(p, ws, 4), 2);
  CHECK_EQ(tdm_pool_worker_stats_get(p, ws, 1), 2);
  CHECK_EQ(tdm_pool_worker_stats_get(p, NULL, 0), 2);
  uint64_t busy = 0;
  for (int i = 0; i < 2; i++) {
    CHECK(ws[i].pid > 0);
    busy += ws[i].busy_ns;
    char comm[64];
    worker_comm(c, ws[i].pid, comm, sizeof comm); /* a live worker of ours */
  }
  CHECK(ws[0].pid != ws[1].pid);
  CHECK(busy >= (uint64_t)TDM_MS(20));
  /* busy: the worker running a task says so. */
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  pid_t runner = procs(c) ? atomic_load(&B->pid[0]) : atomic_load(&B->tid[0]);
  WAIT_UNTIL(tdm_pool_worker_stats_get(p, ws, 4) == 2 && (ws[0].busy + ws[1].busy) == 1);
  CHECK_EQ(ws[0].busy ? ws[0].pid : ws[1].pid, runner);
  atomic_store(&B->gate[0], 1);
  CHECK_OK(tdm_future_wait(g, TDM_FOREVER));
  WAIT_UNTIL(tdm_pool_worker_stats_get(p, ws, 4) == 2 && !ws[0].busy && !ws[1].busy);
  tdm_future_free(g);
  CHECK_OK(tdm_pool_close(p));
}

/* Runs batches of `fn` until the measure says `cpu_bound` (and the target passes `ok`). */
static void run_until_measured(tdm_pool *p, tdm_task_fn fn, struct job j, unsigned batch,
                               bool cpu_bound, bool (*ok)(unsigned target, unsigned cpus)) {
  unsigned cpus = (unsigned)tdm_cpu_count(), target = 0;
  int64_t deadline = tdm_clock_now() + LONG;
  tdm_future *f[256];
  CHECK(batch <= 256);
  bool measured = false;
  while (!measured) {
    if (tdm_clock_now() > deadline)
      tdm_test_fail(__FILE__, __LINE__, "the pool never measured cpu_bound %d (target %u)",
                    cpu_bound, target);
    for (unsigned i = 0; i < batch; i++)
      f[i] = submit(p, fn, j);
    CHECK_OK(tdm_wait(f, batch, TDM_WAIT_ALL, TDM_FOREVER, NULL));
    free_all(f, batch);
    measured = tdm_pool_cpu_bound(p, &target) == cpu_bound && (ok == NULL || ok(target, cpus));
  }
}

static bool above_cpus(unsigned target, unsigned cpus) {
  return target > cpus;
}

static bool at_most_cpus(unsigned target, unsigned cpus) {
  return target >= 1 && target <= cpus;
}

/* Auto measures tasks that wait, grows above one worker per CPU, and comes back to about one
 * per CPU for CPU-bound tasks. */
TEST_T(auto_sizes_itself_to_the_work, 180) {
  board_new(0);
  unsigned cpus = (unsigned)tdm_cpu_count();
  tdm_pool *p = open_n(&cfg_auto, 0);
  CHECK_EQ(stats(p).workers, cpus);
  /* Sleeping tasks: not CPU-bound, and a target above the CPU count... */
  run_until_measured(p, t_sleep, job(-1, 20), 4 * cpus, false, above_cpus);
  /* ...which the pool reaches while such work goes on. */
  int64_t deadline = tdm_clock_now() + LONG;
  while (stats(p).workers <= cpus) {
    if (tdm_clock_now() > deadline)
      tdm_test_fail(__FILE__, __LINE__, "auto stayed at %u workers", stats(p).workers);
    run_until_measured(p, t_sleep, job(-1, 20), 4 * cpus, false, NULL);
  }
  CHECK(stats(p).workers_started > cpus);
  tdm_pool_stats s = stats(p);
  CHECK(s.cpu_ns * 2 < s.busy_ns);
  /* CPU-bound tasks: about one worker per CPU. */
  run_until_measured(p, t_spin, job_aux(-1, 0, TDM_MS(30)), cpus, true, at_most_cpus);
  CHECK_OK(tdm_pool_close(p));
}

static atomic_bool hog_stop;

/* Keeps a CPU busy until hog_stop: another program's load, as far as the pool can tell. */
static void hog(void *arg) {
  (void)arg;
  volatile uint64_t x = 1;
  while (!atomic_load_explicit(&hog_stop, memory_order_relaxed))
    for (int i = 0; i < 1000; i++)
      x = x * 6364136223846793005u + 1;
}

/* CPU-bound tasks on a machine that other work keeps busy get a share of a CPU, so their CPU
 * time trails their wall time; that is waiting for a CPU, not for I/O, and auto must still
 * call the work CPU-bound and keep about one worker per CPU rather than add more. */
TEST_T(auto_is_not_fooled_by_a_busy_machine, 180) {
  board_new(0);
  unsigned cpus = (unsigned)tdm_cpu_count();
  enum { MAX_HOGS = 64 };
  unsigned n = 3 * cpus < MAX_HOGS ? 3 * cpus : MAX_HOGS;
  tdm_thread *h[MAX_HOGS];
  tdm_pool *p = open_n(&cfg_auto, 0);
  atomic_store(&hog_stop, false);
  for (unsigned i = 0; i < n; i++)
    CHECK_OK(tdm_thread_start(&h[i], hog, NULL, NULL));
  run_until_measured(p, t_spin, job_aux(-1, 0, TDM_MS(10)), cpus, true, at_most_cpus);
  atomic_store(&hog_stop, true);
  for (unsigned i = 0; i < n; i++)
    CHECK_OK(tdm_thread_join(h[i], TDM_FOREVER));
  CHECK_OK(tdm_pool_close(p));
}

/* Fixed pools: the same measure, their size as the target. */
TEST_T(fixed_pools_measure_and_keep_their_size, 120) {
  board_new(0);
  /* Processes first: fork while this process has no other thread. */
  const struct config *cs[] = { &cfg_fork, &cfg_threads };
  for (int k = 0; k < 2; k++) {
    tdm_pool *p = open_n(cs[k], 3);
    unsigned target = 0;
    tdm_pool_cpu_bound(p, &target);
    CHECK_EQ(target, 3);
    run_until_measured(p, t_sleep, job(-1, 20), 3, false, NULL);
    run_until_measured(p, t_spin, job_aux(-1, 0, TDM_MS(30)), 1, true, NULL);
    tdm_pool_cpu_bound(p, &target);
    CHECK_EQ(target, 3);
    CHECK_EQ(stats(p).workers, 3);
    CHECK_OK(tdm_pool_close(p));
  }
}

/* ---- Process workers that die ------------------------------------------------------------------
 */

TEST_PROCS(a_crash_fails_its_task_alone, 120) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  static const int kinds[] = { CRASH_SEGV, CRASH_ABORT, CRASH_EXIT3, CRASH_KILL_SELF };
  static const int status[] = { -SIGSEGV, -SIGABRT, 3, -SIGKILL };
  for (int k = 0; k < 4; k++) {
    tdm_future *f = submit(p, t_crash, job(k, kinds[k]));
    expect_failed(f, TDM_EWORKER, status[k], 1);
    WAIT_UNTIL(tdm_test_process_gone(atomic_load(&B->pid[k])));
    tdm_future *next = submit(p, t_square, job(-1, k));
    CHECK_EQ(result_i64(next), k * k);
    tdm_future_free(f);
    tdm_future_free(next);
  }
  /* Killed from outside: the test finds the worker running the task in worker_stats. */
  tdm_future *g = submit(p, t_gated, job(8, 0));
  wait_running(g, 8);
  tdm_pool_worker_stats ws[4];
  pid_t victim = 0;
  WAIT_UNTIL(tdm_pool_worker_stats_get(p, ws, 4) == 2 && (ws[0].busy || ws[1].busy));
  victim = ws[0].busy ? ws[0].pid : ws[1].pid;
  CHECK_EQ(victim, atomic_load(&B->pid[8]));
  CHECK(kill(victim, SIGKILL) == 0);
  expect_failed(g, TDM_EWORKER, -SIGKILL, 1);
  tdm_future_free(g);
  WAIT_UNTIL(stats(p).workers_replaced == 5 && stats(p).workers == 2);
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.workers_lost, 5);
  CHECK_EQ(s.workers_started, 7);
  CHECK_EQ(s.failed, 5);
  CHECK_EQ(s.done, 4);
  CHECK_EQ(s.retried, 0);
  /* The pool goes on with all its workers. */
  enum { N = 100 };
  int32_t *in = iota(N);
  int64_t out[N];
  CHECK_OK(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, N, NULL));
  check_squares(out, in, N, NULL, 0);
  free(in);
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(live_descendants(), 0);
}

/* A worker that dies while it runs no task costs no task. */
TEST_PROCS(an_idle_worker_killed_costs_no_task, 60) {
  board_new(0);
  tdm_pool *p = open_n(c, 2);
  pid_t ids[4];
  CHECK_EQ(worker_ids(p, ids, 4), 2);
  CHECK(kill(ids[0], SIGKILL) == 0);
  WAIT_UNTIL(stats(p).workers_lost == 1 && stats(p).workers_replaced == 1);
  WAIT_UNTIL(stats(p).workers == 2);
  tdm_future *f[10];
  for (int i = 0; i < 10; i++)
    f[i] = submit(p, t_square, job(-1, i));
  for (int i = 0; i < 10; i++)
    CHECK_EQ(result_i64(f[i]), i * i);
  free_all(f, 10);
  CHECK_EQ(stats(p).failed, 0);
  CHECK_OK(tdm_pool_close(p));
}

TEST_PROCS(retries_run_lost_tasks_again, 120) {
  board_new(0);
  tdm_pool_options o = options(c, 2);
  o.retries = 2;
  tdm_pool *p = open_pool(&o);
  /* Always crashes: fails after 1 + retries attempts, with the last death's status. */
  tdm_future *f = submit(p, t_crash_times, job(0, 1000));
  expect_failed(f, TDM_EWORKER, -SIGKILL, 3);
  CHECK_EQ(atomic_load(&B->count[0]), 3);
  /* Crashes once: DONE on its second attempt. */
  tdm_future *g = submit(p, t_crash_times, job(1, 1));
  CHECK_EQ(result_i32(g), 2);
  tdm_task_error e;
  CHECK_OK(tdm_future_error(g, &e));
  CHECK_EQ(e.code, 0);
  CHECK_EQ(e.attempts, 2);
  CHECK_EQ(atomic_load(&B->count[1]), 2);
  /* A task that fails by returning is not run again. */
  tdm_future *h = submit(p, t_fail, job(2, 6));
  expect_failed(h, TDM_ETASK, 6, 1);
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.retried, 3);
  CHECK_EQ(s.failed, 2);
  CHECK_EQ(s.done, 1);
  CHECK_EQ(s.workers_lost, 4);
  tdm_future_free(f);
  tdm_future_free(g);
  tdm_future_free(h);
  CHECK_OK(tdm_pool_close(p));
}

TEST_PROCS(break_on_worker_death_fails_everything_unfinished, 60) {
  board_new(0);
  tdm_pool_options o = options(c, 2);
  o.break_on_worker_death = true;
  tdm_pool *p = open_pool(&o);
  tdm_future *done = submit(p, t_square, job(-1, 3));
  CHECK_EQ(result_i64(done), 9);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  tdm_future *crash_f = submit(p, t_crash, job(1, CRASH_KILL_SELF));
  /* Submits that come after the death may find the pool broken already. */
  tdm_future *q[3] = { NULL, NULL, NULL };
  for (int i = 0; i < 3; i++) {
    struct job jq = job(2 + i, 0);
    int r = tdm_pool_submit(p, t_gated, &jq, sizeof jq, NULL, &q[i]);
    if (r != 0) CHECK_ERR(r, TDM_EBROKEN);
  }
  /* The task that crashed, the one running elsewhere and the queued ones: all TDM_EBROKEN. */
  CHECK_OK(tdm_future_wait(crash_f, LONG));
  expect_failed(crash_f, TDM_EBROKEN, 0, 1);
  CHECK_OK(tdm_future_wait(g, LONG));
  expect_failed(g, TDM_EBROKEN, 0, 1);
  for (int i = 0; i < 3; i++) {
    if (q[i] == NULL) continue;
    CHECK_OK(tdm_future_wait(q[i], LONG));
    CHECK_ERR(tdm_future_result(q[i], 0, NULL, NULL), TDM_EBROKEN);
    CHECK_EQ(atomic_load(&B->started[2 + i]), 0);
  }
  /* What had ended keeps its result; later work is refused. */
  CHECK_EQ(result_i64(done), 9);
  tdm_future *f = NULL;
  struct job j = job(9, 9);
  CHECK_ERR(tdm_pool_submit(p, t_square, &j, sizeof j, NULL, &f), TDM_EBROKEN);
  CHECK(f == NULL);
  int32_t in[4] = { 1, 2, 3, 4 };
  int64_t out[4];
  CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, 4, NULL), TDM_EBROKEN);
  tdm_imap *it = NULL;
  CHECK_ERR(tdm_pool_imap(&it, p, m_square, in, sizeof *in, sizeof *out, 4, NULL), TDM_EBROKEN);
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(live_descendants(), 0);
  tdm_future_free(done);
  tdm_future_free(g);
  tdm_future_free(crash_f);
  free_all(q, 3); /* NULL entries are no-ops */
}

/* ---- Timeouts ----------------------------------------------------------------------------------
 */

TEST_PROCS(a_timeout_kills_and_replaces_the_worker, 120) {
  board_new(0);
  tdm_pool_options o = options(c, 2);
  o.task_timeout = TDM_MS(200);
  tdm_pool *p = open_pool(&o);
  int64_t t0 = tdm_clock_now();
  tdm_future *g = submit(p, t_gated, job(0, 0)); /* its gate never opens */
  tdm_future *other = submit(p, t_sleep, job(1, 100));
  CHECK_EQ(result_i32(other), 100);
  expect_failed(g, TDM_ETASKTIMEOUT, 0, 1);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(200));
  CHECK_EQ(atomic_load(&B->count[0]), 0);
  WAIT_UNTIL(tdm_test_process_gone(atomic_load(&B->pid[0])));
  WAIT_UNTIL(stats(p).workers_replaced == 1 && stats(p).workers == 2);
  /* Per task: TDM_FOREVER overrides the pool's default... */
  tdm_future *longer = submit_timeout(p, t_sleep, job(2, 400), TDM_FOREVER);
  CHECK_EQ(result_i32(longer), 400);
  /* ...and so does a shorter one; 0 is the pool's default. */
  t0 = tdm_clock_now();
  tdm_future *shorter = submit_timeout(p, t_gated, job(3, 0), TDM_MS(50));
  expect_failed(shorter, TDM_ETASKTIMEOUT, 0, 1);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  t0 = tdm_clock_now();
  tdm_future *dflt = submit_timeout(p, t_gated, job(4, 0), 0);
  expect_failed(dflt, TDM_ETASKTIMEOUT, 0, 1);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(200));
  tdm_pool_stats s = stats(p);
  CHECK_EQ(s.timed_out, 3);
  CHECK_EQ(s.failed, 3);
  CHECK_EQ(s.retried, 0);
  /* The timed-out tasks were not run again. */
  for (int i = 0; i < 5; i++)
    CHECK(atomic_load(&B->started[i]) <= 1);
  tdm_future *fs[] = { g, other, longer, shorter, dflt };
  free_all(fs, 5);
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(live_descendants(), 0);
}

/* A pool without a default timeout, and a retry policy that a timeout does not use. */
TEST(per_task_timeout_without_a_default_is_not_retried) {
  board_new(0);
  tdm_pool_options o = options(&cfg_fork, 1);
  o.retries = 3;
  tdm_pool *p = open_pool(&o);
  int64_t t0 = tdm_clock_now();
  tdm_future *g = submit_timeout(p, t_gated, job(0, 0), TDM_MS(100));
  expect_failed(g, TDM_ETASKTIMEOUT, 0, 1);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(100));
  CHECK_EQ(atomic_load(&B->started[0]), 1);
  tdm_future *f = submit(p, t_sleep, job(1, 150));
  CHECK_EQ(result_i32(f), 150);
  CHECK_EQ(stats(p).retried, 0);
  tdm_future_free(g);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
}

TEST_THREADS(a_timeout_asks_a_thread_task_to_stop, 60) {
  board_new(0);
  tdm_pool_options o = options(c, 2);
  o.task_timeout = TDM_MS(100);
  tdm_pool *p = open_pool(&o);
  int64_t t0 = tdm_clock_now();
  tdm_future *g = submit(p, t_gated, job(0, 0));
  expect_failed(g, TDM_ETASKTIMEOUT, 0, 1);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(100));
  /* The task saw the request (and returned 0 with a result, which is dropped). */
  WAIT_UNTIL(atomic_load(&B->count[0]) == 1);
  CHECK_EQ(atomic_load(&B->saw_cancel[0]), 1);
  tdm_future *longer = submit_timeout(p, t_sleep, job(1, 200), TDM_FOREVER);
  CHECK_EQ(result_i32(longer), 200);
  t0 = tdm_clock_now();
  tdm_future *shorter = submit_timeout(p, t_gated, job(2, 0), TDM_MS(30));
  expect_failed(shorter, TDM_ETASKTIMEOUT, 0, 1);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  WAIT_UNTIL(atomic_load(&B->saw_cancel[2]) == 1);
  CHECK_EQ(atomic_load(&B->saw_cancel[1]), 0);
  CHECK_EQ(stats(p).timed_out, 2);
  tdm_future *fs[] = { g, longer, shorter };
  free_all(fs, 3);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Recycling and initializers ----------------------------------------------------------------
 */

TEST_ALL(recycled_workers_run_every_task_once, 180) {
  size_t n = SLOW_BUILD ? 30 : 60;
  static const uint64_t maxes[] = { 1, 3 };
  for (int k = 0; k < 2; k++) {
    board_new(n);
    struct job ia = job_aux(0, -1, 1);
    tdm_pool_options o = options(c, 2);
    o.max_tasks_per_worker = maxes[k];
    o.initializer = i_record;
    o.finalizer = f_record;
    o.init_arg = &ia;
    o.init_size = sizeof ia;
    tdm_pool *p = open_pool(&o);
    tdm_future **f = malloc(n * sizeof *f);
    CHECK(f != NULL);
    for (size_t i = 0; i < n; i++)
      f[i] = submit(p, t_whoami, job(-1, (int)i));
    int32_t ids[256][2];
    CHECK(n <= 256);
    for (size_t i = 0; i < n; i++) {
      const void *d = NULL;
      size_t len = 0;
      CHECK_OK(tdm_future_result(f[i], LONG, &d, &len));
      CHECK_EQ(len, sizeof ids[i]);
      memcpy(ids[i], d, sizeof ids[i]);
      CHECK_EQ(atomic_load(&B->hits[i]), 1);
    }
    /* No worker ran more than its share (a process, or a thread: ids are not reused soon). */
    for (size_t i = 0; i < n; i++) {
      uint64_t same = 0;
      for (size_t m = 0; m < n; m++)
        same += procs(c) ? ids[m][0] == ids[i][0] : ids[m][1] == ids[i][1];
      if (same > maxes[k])
        tdm_test_fail(__FILE__, __LINE__, "a worker ran %llu tasks, max %llu",
                      (unsigned long long)same, (unsigned long long)maxes[k]);
    }
    CHECK_OK(tdm_pool_shutdown(p, true, false));
    tdm_pool_stats s = stats(p);
    CHECK(s.workers_started >= (n + maxes[k] - 1) / maxes[k]);
    CHECK(s.workers_replaced >= (n + maxes[k] - 1) / maxes[k] - 2);
    CHECK_EQ(s.workers_lost, 0);
    CHECK_EQ(s.done, n);
    CHECK_EQ(atomic_load(&B->inits), s.workers_started);
    CHECK_EQ(atomic_load(&B->finis), s.workers_started);
    CHECK_OK(tdm_pool_close(p));
    free_all(f, n);
    free(f);
  }
}

TEST_ALL(initializer_and_finalizer_run_once_per_worker, 60) {
  board_new(0);
  struct job ia = job_aux(0, -1, 5);
  tdm_pool_options o = options(c, 3);
  o.initializer = i_record;
  o.finalizer = f_record;
  o.init_arg = &ia;
  o.init_size = sizeof ia;
  tdm_pool *p = open_pool(&o);
  memset(&ia, 0, sizeof ia); /* open copied it */
  /* Open returned once every worker had run its initializer. */
  tdm_pool_stats s = stats(p);
  CHECK_EQ(atomic_load(&B->inits), s.workers_started);
  CHECK_EQ(atomic_load(&B->finis), 0);
  pid_t ids[64];
  size_t nw = worker_ids(p, ids, 64);
  CHECK_EQ(nw, s.workers);
  for (size_t i = 0; i < nw; i++) {
    bool found = false;
    for (int k = 0; k < atomic_load(&B->inits); k++)
      found = found || (procs(c) ? atomic_load(&B->init_pid[k]) == ids[i]
                                 : atomic_load(&B->init_tid[k]) == ids[i]);
    CHECK(found);
  }
  tdm_future *f[20];
  for (int i = 0; i < 20; i++)
    f[i] = submit(p, t_square, job(-1, i));
  CHECK_OK(tdm_wait(f, 20, TDM_WAIT_ALL, TDM_FOREVER, NULL));
  free_all(f, 20);
  CHECK_OK(tdm_pool_shutdown(p, true, false));
  s = stats(p);
  CHECK_EQ(atomic_load(&B->inits), s.workers_started);
  CHECK_EQ(atomic_load(&B->finis), s.workers_started);
  CHECK_EQ(atomic_load(&B->fini_sum), 5 * (int64_t)s.workers_started);
  CHECK_OK(tdm_pool_close(p));
}

TEST_ALL(a_failing_initializer_fails_open_and_leaves_nothing, 60) {
  /* Every initializer fails; then all but the first. */
  for (int fail_from = 0; fail_from < 2; fail_from++) {
    board_new(0);
    struct job ia = job(0, fail_from);
    tdm_pool_options o = options(c, 3);
    o.initializer = i_record;
    o.init_arg = &ia;
    o.init_size = sizeof ia;
    tdm_pool *const untouched = (tdm_pool *)&ia;
    tdm_pool *p = untouched;
    CHECK_ERR(tdm_pool_open(&p, &o), TDM_EINIT);
    CHECK(p == untouched);
    int inits = atomic_load(&B->inits);
    CHECK(inits >= 1);
    if (procs(c))
      for (int k = 0; k < inits; k++)
        CHECK(tdm_test_process_gone(atomic_load(&B->init_pid[k])));
    expect_nothing_left();
  }
}

/* An initializer that fails in a replacement worker breaks the pool with TDM_EINIT. */
TEST_PROCS(an_initializer_failing_later_breaks_the_pool, 60) {
  board_new(0);
  struct job ia = job(0, 2); /* the first two succeed */
  tdm_pool_options o = options(c, 2);
  o.initializer = i_record;
  o.init_arg = &ia;
  o.init_size = sizeof ia;
  tdm_pool *p = open_pool(&o);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  tdm_future *c1 = submit(p, t_crash, job(1, CRASH_KILL_SELF));
  expect_failed(c1, TDM_EWORKER, -SIGKILL, 1);
  /* Until the replacement's initializer has failed a task may still be accepted: it fails
   * with TDM_EINIT and the initializer's status. Then submit says TDM_EINIT itself. */
  struct job j = job(-1, 1);
  tdm_future *pending[64];
  int np = 0, r;
  for (;;) {
    tdm_future *f = NULL;
    r = tdm_pool_submit(p, t_square, &j, sizeof j, NULL, &f);
    if (r != 0) break;
    CHECK(np < 64);
    pending[np++] = f;
    tdm_clock_sleep(TDM_MS(5));
  }
  CHECK_ERR(r, TDM_EINIT);
  for (int i = 0; i < np; i++) {
    CHECK_OK(tdm_future_wait(pending[i], LONG));
    expect_failed(pending[i], TDM_EINIT, 7, 0);
  }
  int32_t in[2] = { 1, 2 };
  int64_t out[2];
  CHECK_ERR(tdm_pool_map(p, m_square, in, sizeof *in, out, sizeof *out, 2, NULL), TDM_EINIT);
  atomic_store(&B->gate[0], 1);
  CHECK_OK(tdm_future_wait(g, LONG));
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(live_descendants(), 0);
  free_all(pending, (size_t)np);
  tdm_future_free(g);
  tdm_future_free(c1);
}

/* On threads a replacement comes with recycling: its failing initializer breaks the pool too. */
TEST_THREADS(an_initializer_failing_in_a_recycled_thread_breaks_the_pool, 60) {
  board_new(0);
  struct job ia = job(0, 1); /* the first succeeds, every later one returns 7 */
  tdm_pool_options o = options(c, 1);
  o.initializer = i_record;
  o.init_arg = &ia;
  o.init_size = sizeof ia;
  o.max_tasks_per_worker = 1;
  tdm_pool *p = open_pool(&o);
  tdm_future *g = submit(p, t_gated, job(0, 0));
  wait_running(g, 0);
  /* Queued behind the gated task: the worker ends after it, and its replacement fails. */
  struct job j = job(-1, 1);
  tdm_future *q = submit(p, t_square, j);
  atomic_store(&B->gate[0], 1);
  CHECK_EQ(result_i32(g), 0);
  CHECK_OK(tdm_future_wait(q, LONG));
  expect_failed(q, TDM_EINIT, 7, 0);
  tdm_future *f = NULL;
  CHECK_ERR(tdm_pool_submit(p, t_square, &j, sizeof j, NULL, &f), TDM_EINIT);
  CHECK(f == NULL);
  CHECK_EQ(atomic_load(&B->inits), 2);
  CHECK_OK(tdm_pool_close(p));
  tdm_future_free(g);
  tdm_future_free(q);
}

/* ---- Stress: tasks while workers are killed at random ------------------------------------------
 */

struct killer {
  tdm_pool *pool;
  _Atomic bool stop;
  _Atomic int kills;
  int max_kills;
  int64_t min_pause, max_pause;
  uint64_t seed;
};

/* True when `pid` is a worker of the stress pool (its name says so). Does not allocate. */
static bool is_stress_worker(pid_t pid) {
  char path[64], comm[32] = "";
  snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, comm, sizeof comm - 1);
  close(fd);
  return n > 7 && strncmp(comm, "stress-", 7) == 0;
}

/*
 * Kills a random worker with SIGKILL at random moments. It makes no allocation: the pool may
 * fork replacements while it runs (GCC 12's ASan: see docs/architecture.md).
 */
static void killer_main(void *arg) {
  struct killer *k = arg;
  uint64_t rng = k->seed;
  while (!atomic_load(&k->stop) && atomic_load(&k->kills) < k->max_kills) {
    tdm_pool_worker_stats ws[16];
    size_t n = tdm_pool_worker_stats_get(k->pool, ws, 16);
    if (n > 16) n = 16;
    if (n > 0) {
      pid_t pid = ws[tdm_test_rand(&rng) % n].pid;
      if (pid > 0 && is_stress_worker(pid) && kill(pid, SIGKILL) == 0)
        atomic_fetch_add(&k->kills, 1);
    }
    int64_t span = k->max_pause - k->min_pause;
    tdm_clock_sleep(k->min_pause + (int64_t)(tdm_test_rand(&rng) % (uint64_t)span));
  }
}

static size_t stress_tasks(void) {
  const char *env = getenv("TDM_POOL_STRESS_TASKS");
  if (env != NULL && atoi(env) > 0) return (size_t)atoi(env);
  return SLOW_BUILD ? 10000 : 100000;
}

/*
 * 100,000 tiny tasks on 4 process workers while another thread SIGKILLs random workers at
 * random moments. What holds whatever the timing:
 *  - every future ends exactly once (its callback counts 1), and each DONE result is right;
 *  - retries = 0: each task starts at most once (its side effect counts 0 or 1), DONE ones
 *    exactly once; each non-DONE one is FAILED with TDM_EWORKER and -SIGKILL (only SIGKILL is
 *    sent), so there are no more of them than kills;
 *  - retries larger than the number of kills: every task ends DONE, its side effect counted at
 *    least once and at most once per attempt (a worker may die after the task's side effect and
 *    before its result got out), and the attempts beyond the first add up to stats.retried.
 * How many tasks a kill hits (an idle worker, one starting, one in a task) is left to chance.
 */
static void stress(tdm_start_method m, unsigned retries) {
  size_t n = stress_tasks();
  board_new(n);
  tdm_pool_options o = options(&cfg_fork, 4);
  o.start = m;
  o.name = "stress";
  o.retries = retries;
  tdm_pool *p = open_pool(&o);
  tdm_future **f = malloc(n * sizeof *f);
  _Atomic int32_t *ends = calloc(n, sizeof *ends);
  CHECK(f != NULL && ends != NULL);
  /* Every task is submitted before the killer starts, so that no thread of ours is in the
   * allocator while the pool forks replacements. */
  for (size_t i = 0; i < n; i++) {
    f[i] = submit(p, t_stress, job_aux(-1, (int)i, TDM_US(10)));
    CHECK_OK(tdm_future_on_done(f[i], cb_count, &ends[i]));
  }
  struct killer k = { .pool = p, .max_kills = SLOW_BUILD ? 40 : 800, .seed = (uint64_t)getpid() };
  k.min_pause = SLOW_BUILD ? TDM_MS(10) : TDM_US(500);
  k.max_pause = SLOW_BUILD ? TDM_MS(40) : TDM_MS(4);
  tdm_thread *t = tdm_test_thread(killer_main, &k);
  CHECK_OK(tdm_wait(f, n, TDM_WAIT_ALL, TDM_FOREVER, NULL));
  atomic_store(&k.stop, true);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  int kills = atomic_load(&k.kills);
  size_t done = 0, failed = 0;
  uint64_t retried = 0;
  for (size_t i = 0; i < n; i++) {
    /* As in Python, waiters are woken before the callbacks run: a callback may trail. */
    WAIT_UNTIL(atomic_load(&ends[i]) >= 1);
    CHECK_EQ(atomic_load(&ends[i]), 1);
    int32_t hits = atomic_load(&B->hits[i]);
    tdm_task_error e;
    tdm_future_state s = tdm_future_state_get(f[i]);
    int code = tdm_future_error(f[i], &e);
    if (s == TDM_FUTURE_DONE) {
      CHECK_EQ(code, 0);
      CHECK_EQ(result_i32(f[i]), 3 * (int32_t)i);
      if (retries == 0) { /* first, for the numbers it prints */
        CHECK_EQ(hits, 1);
        CHECK_EQ(e.attempts, 1);
      }
      CHECK(hits >= 1 && (unsigned)hits <= e.attempts);
      CHECK(e.attempts >= 1 && e.attempts <= 1 + retries);
      retried += e.attempts - 1;
      done++;
    } else {
      if (s != TDM_FUTURE_FAILED || code != TDM_EWORKER || e.status != -SIGKILL)
        tdm_test_fail(__FILE__, __LINE__, "task %zu: state %d, %s, status %d, attempts %u", i,
                      (int)s, tdm_err_name(code), e.status, e.attempts);
      CHECK_EQ(e.attempts, 1 + retries);
      CHECK(hits <= (int32_t)e.attempts);
      retried += e.attempts - 1;
      failed++;
    }
  }
  tdm_pool_stats s = stats(p);
  printf("%zu tasks, %d kills: %zu done, %zu failed, %llu restarts, %llu workers lost\n", n, kills,
         done, failed, (unsigned long long)s.retried, (unsigned long long)s.workers_lost);
  CHECK(kills > 0);
  CHECK_EQ(s.submitted, n);
  CHECK_EQ(s.done, done);
  CHECK_EQ(s.failed, failed);
  CHECK_EQ(s.retried, retried);
  CHECK(failed <= s.workers_lost);
  CHECK(s.workers_lost <= (uint64_t)kills);
  if (retries > (unsigned)kills) CHECK_EQ(done, n);
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(live_descendants(), 0);
  free_all(f, n);
  free(f);
  free(ends);
}

TEST_T(stress_tasks_while_workers_are_killed_fork, 300) {
  stress(TDM_START_FORK, 0);
}

TEST_T(stress_tasks_while_workers_are_killed_forkserver, 300) {
  stress(TDM_START_FORKSERVER, 0);
}

TEST_T(stress_with_retries_every_task_done_fork, 300) {
  stress(TDM_START_FORK, 100000);
}

/* ---- Ctrl-C ------------------------------------------------------------------------------------
 */

static int t_forever(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  (void)arg;
  (void)size;
  for (;;)
    tdm_clock_sleep(TDM_MS(10));
  return 0;
}

/* Opens a process pool of two workers running long tasks, with more queued, and prints the
 * workers' pids once both run. */
static tdm_pool *start_long_tasks(tdm_future **fs, int n) {
  tdm_pool_options o = options(&cfg_fork, 2);
  tdm_pool *p = open_pool(&o);
  for (int i = 0; i < n; i++)
    CHECK_OK(tdm_pool_submit(p, t_forever, NULL, 0, NULL, &fs[i]));
  WAIT_UNTIL(tdm_future_state_get(fs[0]) == TDM_FUTURE_RUNNING &&
             tdm_future_state_get(fs[1]) == TDM_FUTURE_RUNNING);
  pid_t ids[2];
  CHECK_EQ(worker_ids(p, ids, 2), 2);
  printf("%d %d\n", (int)ids[0], (int)ids[1]);
  fflush(stdout);
  return p;
}

HELPER(pool_sigint_default) {
  (void)argc;
  (void)argv;
  tdm_future *fs[3];
  start_long_tasks(fs, 3);
  tdm_future_wait(fs[0], TDM_FOREVER); /* SIGINT's default action ends us here */
  return 1;
}

static tdm_pool *interrupted_pool;

static void on_sigint(int sig) {
  (void)sig;
  tdm_pool_interrupt(interrupted_pool);
}

HELPER(pool_sigint_handler) {
  (void)argc;
  (void)argv;
  tdm_future *fs[5];
  interrupted_pool = start_long_tasks(fs, 5);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGINT, &sa, NULL) == 0);
  printf("handler\n");
  fflush(stdout);
  /* The two running tasks end CANCELLED (their workers were killed); the three queued ones
   * were cancelled. */
  for (int i = 0; i < 5; i++) {
    CHECK_OK(tdm_future_wait(fs[i], TDM_FOREVER));
    CHECK_EQ(tdm_future_state_get(fs[i]), TDM_FUTURE_CANCELLED);
    CHECK_ERR(tdm_future_result(fs[i], 0, NULL, NULL), -ECANCELED);
    tdm_task_error e;
    CHECK_ERR(tdm_future_error(fs[i], &e), -ECANCELED);
    CHECK_EQ(e.attempts, i < 2 ? 1 : 0);
    tdm_future_free(fs[i]);
  }
  tdm_future *f = NULL;
  int r;
  WAIT_UNTIL((r = tdm_pool_submit(interrupted_pool, t_forever, NULL, 0, NULL, &f)) != 0);
  CHECK_ERR(r, -EPIPE);
  CHECK_OK(tdm_pool_close(interrupted_pool));
  CHECK_EQ(live_descendants(), 0);
  printf("clean\n");
  return 0;
}

/* Reads a line from the helper (fails if it ends first). */
static void read_line(int fd, char *buf, size_t cap) {
  size_t len = 0;
  while (len < cap - 1) {
    ssize_t r = read(fd, buf + len, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (buf[len] == '\n') break;
    len++;
  }
  buf[len] = '\0';
  if (len == 0) tdm_test_fail(__FILE__, __LINE__, "the helper printed nothing");
}

/* True when the process ignores SIGINT (/proc/PID/status, SigIgn). */
static bool ignores_sigint(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  unsigned long long mask = 0;
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "SigIgn: %llx", &mask) == 1) break;
  fclose(f);
  return (mask >> (SIGINT - 1)) & 1;
}

TEST(sigint_ends_a_program_and_its_workers) {
  int fd;
  pid_t h = tdm_test_spawn_helper("pool_sigint_default", NULL, &fd);
  char line[128];
  read_line(fd, line, sizeof line);
  int pids[2];
  CHECK(sscanf(line, "%d %d", &pids[0], &pids[1]) == 2);
  for (int i = 0; i < 2; i++) {
    CHECK(!tdm_test_process_gone(pids[i]));
    CHECK(ignores_sigint(pids[i])); /* Ctrl-C in a terminal reaches the parent alone */
    CHECK(getpgid(pids[i]) != getpgid(h));
  }
  CHECK(kill(h, SIGINT) == 0);
  int status = tdm_test_wait(h);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
  for (int i = 0; i < 2; i++)
    WAIT_UNTIL(tdm_test_process_gone(pids[i]));
  close(fd);
}

TEST(sigint_handler_interrupts_the_pool) {
  int fd;
  pid_t h = tdm_test_spawn_helper("pool_sigint_handler", NULL, &fd);
  char line[128];
  read_line(fd, line, sizeof line);
  int pids[2];
  CHECK(sscanf(line, "%d %d", &pids[0], &pids[1]) == 2);
  read_line(fd, line, sizeof line);
  CHECK(strcmp(line, "handler") == 0);
  CHECK(kill(h, SIGINT) == 0);
  tdm_test_wait_ok(h);
  read_line(fd, line, sizeof line);
  CHECK(strcmp(line, "clean") == 0);
  for (int i = 0; i < 2; i++)
    WAIT_UNTIL(tdm_test_process_gone(pids[i]));
  close(fd);
}
