/*
 * cluster_test.c: the cluster backend (TDM_POOL_CLUSTER, libtandem-mpi) through the public
 * API, in a real MPI job: map (chunks, sizes, arguments, item errors, 10 million items), submit
 * and futures (arguments and results of every size, failures, the rank that ran a task, dynamic
 * balancing), imap over arrays and sources, tdm_wait and as_completed, statistics,
 * initializers and finalizers, timeouts, cancel, shutdown, terminate, one pool at a time, the
 * workers option, and hybrid ranks that run pools of their own (threads, processes, auto).
 *
 * Started as `mpirun -np N cluster_test --ranks N [PATTERN...]` (tests/cluster/mpirun.sh).
 * This is not a runner.c executable: MPI starts before main() in every rank, and a forked
 * child must not use it, so rank 0's main() runs the cases one after the other in this one
 * process. Each case opens its own pools and closes them. A failed check prints where and
 * why, then exit(1): libtandem-mpi's exit handler ends the worker ranks and the job ends.
 * `--ranks 0` runs the program without mpirun, where no cluster may open (and so does
 * `mpirun -np 1 ... --ranks 1`). TDM_CLUSTER_TEST_LARGE sets the size of the large map
 * (10,000,000 items); TDM_TEST_TIMEOUT_SCALE stretches the bounded waits, as in runner.c.
 *
 * Tasks run on other ranks, so they cannot fail checks: they return codes, and leave their side
 * effects in a named tandem segment (a board) that every rank of this one-machine job attaches.
 * A task that waits for something on the board (a gate) waits for a bounded time and returns
 * an error code when it passes, so that a bug fails the case instead of hanging the job. No
 * check depends on timing: only lower bounds on elapsed time are checked.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#include "tandem.h"
#include "tandem/cluster.h"

/* Sanitizers: a crashing task resets SIGSEGV (the sanitizer's handler would make it an exit). */
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

/* ---- Checks ---------------------------------------------------------------------------------- */

static const char *current_case = "main";

static void fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

static void fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "%s:%d: case %s: ", file, line, current_case);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

#define CHECK(cond)                                            \
  do {                                                         \
    if (!(cond)) fail(__FILE__, __LINE__, "CHECK(%s)", #cond); \
  } while (0)

#define CHECK_EQ(a, b)                                                                        \
  do {                                                                                        \
    long long a_ = (long long)(a), b_ = (long long)(b);                                       \
    if (a_ != b_) fail(__FILE__, __LINE__, "CHECK_EQ(%s, %s): %lld != %lld", #a, #b, a_, b_); \
  } while (0)

#define CHECK_RC(expr, want)                                                            \
  do {                                                                                  \
    int rc_ = (expr), want_ = (want);                                                   \
    if (rc_ != want_)                                                                   \
      fail(__FILE__, __LINE__, "%s returned %d (%s: %s), expected %d (%s)", #expr, rc_, \
           tdm_err_name(rc_), tdm_strerror(rc_), want_, tdm_err_name(want_));           \
  } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, 0)

/* ---- Time ------------------------------------------------------------------------------------ */

static double scale(void) {
  const char *s = getenv("TDM_TEST_TIMEOUT_SCALE");
  double v = s != NULL ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

/* A wait that only a bug makes long: tasks give up and rank 0 fails the case after it. */
static int64_t cap(void) {
  return (int64_t)((double)TDM_S(60) * scale());
}

static void nap(int64_t ns) {
  struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static double seconds_since(int64_t t0) {
  return (double)(tdm_clock_now() - t0) / 1e9;
}

/* Waits (in rank 0) until `cond` holds, failing the case after cap(). */
#define WAIT_UNTIL(cond)                                                                         \
  do {                                                                                           \
    int64_t until_ = tdm_clock_now() + cap();                                                    \
    while (!(cond)) {                                                                            \
      if (tdm_clock_now() > until_) fail(__FILE__, __LINE__, "timed out waiting for %s", #cond); \
      nap(TDM_US(500));                                                                          \
    }                                                                                            \
  } while (0)

/* ---- The board ------------------------------------------------------------------------------- */

#define SLOTS     256
#define MAX_RANKS 64

struct board {
  _Atomic int32_t quit;           /* rank 0 is ending: every wait on the board ends */
  _Atomic int32_t gate_all;       /* every gate is open */
  _Atomic int32_t gate[SLOTS];    /* 1: the gated task of this slot may return */
  _Atomic int32_t started[SLOTS]; /* times a task of this slot started */
  _Atomic int32_t ran[SLOTS];     /* times one returned */
  _Atomic int32_t rank[SLOTS];    /* the rank that ran it */
  _Atomic int32_t counter;        /* side effects of the larger cases */
  _Atomic int32_t inits[MAX_RANKS], finis[MAX_RANKS]; /* per rank */
};

/* Rank 0: every board made, so that the exit handler can open their gates and remove them. */
static char board_names[64][48];
static struct board *board_addrs[64];
static int nboards;

/* A process's attachments (worker ranks, and their own workers in hybrid pools). */
static pthread_mutex_t attach_lock = PTHREAD_MUTEX_INITIALIZER;
static char attached_names[64][48];
static struct board *attached[64];
static int nattached;

static struct board *board_new(void) {
  CHECK(nboards < 64);
  tdm_shm_options o = { .flags = TDM_SHM_NOOWN };
  tdm_shm *s = NULL;
  char *name = board_names[nboards];
  snprintf(name, sizeof board_names[0], "/tdm-cluster-test-%d-%d", (int)getpid(), nboards);
  CHECK_OK(tdm_shm_create(&s, name, sizeof(struct board), &o));
  board_addrs[nboards++] = tdm_shm_addr(s); /* mapped until the program ends */
  return tdm_shm_addr(s);
}

static const char *board_name(const struct board *b) {
  for (int i = 0; i < nboards; i++)
    if (board_addrs[i] == b) return board_names[i];
  fail(__FILE__, __LINE__, "not a board");
}

/* The board `name` in a task: attached once per process. NULL when it cannot be. */
static struct board *board_at(const char *name) {
  struct board *b = NULL;
  pthread_mutex_lock(&attach_lock);
  for (int i = 0; i < nboards && b == NULL; i++) /* rank 0 itself (never in practice) */
    if (strcmp(board_names[i], name) == 0) b = board_addrs[i];
  for (int i = 0; i < nattached && b == NULL; i++)
    if (strcmp(attached_names[i], name) == 0) b = attached[i];
  tdm_shm *s = NULL;
  if (b == NULL && nattached < 64 && tdm_shm_attach(&s, name, sizeof(struct board), NULL) == 0) {
    b = tdm_shm_addr(s);
    snprintf(attached_names[nattached], sizeof attached_names[0], "%s", name);
    attached[nattached++] = b;
  }
  pthread_mutex_unlock(&attach_lock);
  return b;
}

static void boards_release(void) {
  for (int i = 0; i < nboards; i++) {
    atomic_store(&board_addrs[i]->quit, 1);
    tdm_shm_unlink_name(board_names[i]);
  }
}

/* Waits in a task until *flag (or the board's gate_all or quit) is set: 0, or 91 after cap(). */
static int task_wait_flag(struct board *b, _Atomic int32_t *flag) {
  int64_t until = tdm_clock_now() + cap();
  while (!atomic_load(flag) && !atomic_load(&b->gate_all) && !atomic_load(&b->quit)) {
    if (tdm_clock_now() > until) return 91;
    nap(TDM_US(500));
  }
  return 0;
}

/* The tasks of slots 0..n-1 that have started. */
static int started_total(struct board *b, int n) {
  int started = 0;
  for (int i = 0; i < n; i++)
    started += atomic_load(&b->started[i]);
  return started;
}

/* ---- Tasks ----------------------------------------------------------------------------------- */

/* Who ran a task. */
struct who {
  int32_t rank;
  int32_t pid;
  int64_t init_value; /* the rank's g_init_value when it ran */
};

static int64_t g_init_value; /* set by init_store() in each worker */

static int put_who(tdm_task *t) {
  struct who w = { tdm_cluster_rank(), (int32_t)getpid(), g_init_value };
  return tdm_task_set_result(t, &w, sizeof w) == 0 ? 0 : 92;
}

/* The argument of the board tasks. */
struct job {
  char board[48];
  int32_t slot;
  int32_t pad;
  int64_t ms; /* how long to sleep */
};

static struct job job(const struct board *b, int slot, int64_t ms) {
  struct job j;
  memset(&j, 0, sizeof j);
  snprintf(j.board, sizeof j.board, "%s", board_name(b));
  j.slot = slot;
  j.ms = ms;
  return j;
}

/* Result: who ran it. No argument needed. */
static int task_who(tdm_task *t, const void *arg, size_t size) {
  (void)arg;
  (void)size;
  return put_who(t);
}

/* Returns the int in its argument (a failure when non-zero), after setting a result. */
static int task_return(tdm_task *t, const void *arg, size_t size) {
  int v;
  if (size != sizeof v) return 93;
  memcpy(&v, arg, sizeof v);
  tdm_task_set_result(t, "dropped", 7);
  return v;
}

/* Sleeps job.ms, then gives who ran it. Marks started/ran when given a board. */
static int task_sleep(tdm_task *t, const void *arg, size_t size) {
  struct job j;
  if (size != sizeof j) return 93;
  memcpy(&j, arg, sizeof j);
  struct board *b = j.board[0] != '\0' ? board_at(j.board) : NULL;
  if (b != NULL) {
    atomic_store(&b->rank[j.slot], tdm_cluster_rank());
    atomic_fetch_add(&b->started[j.slot], 1);
  }
  nap(TDM_MS(j.ms));
  if (b != NULL) atomic_fetch_add(&b->ran[j.slot], 1);
  return put_who(t);
}

/* Waits for its slot's gate, then gives who ran it. */
static int task_gated(tdm_task *t, const void *arg, size_t size) {
  struct job j;
  if (size != sizeof j) return 93;
  memcpy(&j, arg, sizeof j);
  struct board *b = board_at(j.board);
  if (b == NULL) return 94;
  atomic_store(&b->rank[j.slot], tdm_cluster_rank());
  atomic_fetch_add(&b->started[j.slot], 1);
  int rc = task_wait_flag(b, &b->gate[j.slot]);
  atomic_fetch_add(&b->ran[j.slot], 1);
  return rc != 0 ? rc : put_who(t);
}

/* Marks its slot as run. */
static int task_mark(tdm_task *t, const void *arg, size_t size) {
  struct job j;
  if (size != sizeof j) return 93;
  memcpy(&j, arg, sizeof j);
  struct board *b = board_at(j.board);
  if (b == NULL) return 94;
  atomic_fetch_add(&b->started[j.slot], 1);
  atomic_fetch_add(&b->ran[j.slot], 1);
  return put_who(t);
}

/* The balance case: slot 0 is the long task; the others count on b->counter. */
struct balance_job {
  char board[48];
  int32_t is_long;
  int32_t wait_for; /* the long task: returns once this many short ones have ended */
};

static int task_balance(tdm_task *t, const void *arg, size_t size) {
  struct balance_job j;
  if (size != sizeof j) return 93;
  memcpy(&j, arg, sizeof j);
  struct board *b = board_at(j.board);
  if (b == NULL) return 94;
  if (j.is_long) {
    /* Busy while the others take the short tasks. It ends when enough short tasks have ended
     * elsewhere (not after a time: a slow machine must not fail the case), or after cap(),
     * when the short tasks it waits for were given to this very rank. */
    int64_t until = tdm_clock_now() + cap();
    nap(TDM_MS(200));
    while (atomic_load(&b->counter) < j.wait_for && !atomic_load(&b->quit) &&
           tdm_clock_now() < until)
      nap(TDM_MS(1));
  } else {
    nap(TDM_MS(20));
    atomic_fetch_add(&b->counter, 1);
  }
  return put_who(t);
}

/* The argument and result of task_echo: a header, then `len - sizeof header` pattern bytes. */
struct echo_hdr {
  uint32_t seed;
  uint32_t out_len; /* the result: out_len pattern bytes of seed * 7 */
};

static uint8_t pattern(uint32_t seed, size_t i) {
  return (uint8_t)((seed + i * 131u + (i >> 9)) & 0xff);
}

static int task_echo(tdm_task *t, const void *arg, size_t size) {
  if (size == 0) return arg == NULL ? 0 : 95; /* an empty argument: an empty result */
  struct echo_hdr h;
  if (size < sizeof h) return 93;
  memcpy(&h, arg, sizeof h);
  const uint8_t *p = (const uint8_t *)arg + sizeof h;
  for (size_t i = 0; i < size - sizeof h; i++)
    if (p[i] != pattern(h.seed, i)) return 96;
  if (h.out_len == 0) return 0;
  uint8_t *out = malloc(h.out_len);
  if (out == NULL) return 97;
  for (size_t i = 0; i < h.out_len; i++)
    out[i] = pattern(h.seed * 7u, i);
  tdm_task_set_result(t, "first", 5); /* the last call wins */
  int rc = tdm_task_set_result(t, out, h.out_len);
  free(out);
  return rc == 0 ? 0 : 98;
}

/* Sets a result of the size_t bytes its argument names: 0, or 50 when set_result refused. */
static int task_sized(tdm_task *t, const void *arg, size_t size) {
  size_t want;
  if (size < sizeof want) return 93;
  memcpy(&want, arg, sizeof want);
  uint8_t *b = malloc(want > 0 ? want : 1);
  if (b == NULL) return 97;
  for (size_t i = 0; i < want; i++)
    b[i] = pattern(7, i);
  int rc = tdm_task_set_result(t, b, want);
  free(b);
  return rc == 0 ? 0 : rc == -EMSGSIZE ? 50 : 51;
}

static int task_crash(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  (void)arg;
  (void)size;
#if SLOW_BUILD
  signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would make it an exit */
#endif
  raise(SIGSEGV);
  return 99;
}

static int task_abort(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  (void)arg;
  (void)size;
  abort();
}

/* ---- Map items ------------------------------------------------------------------------------- */

struct affine {
  int64_t mul, add;
};

static int64_t square_plus(int64_t x, const struct affine *a) {
  return x * x * a->mul + a->add;
}

/* int64 x -> int64 x * x * mul + add (the map's argument; NULL: 1 and 0). */
static int item_square(const void *in, void *out, const void *arg) {
  struct affine a = { 1, 0 };
  if (arg != NULL) memcpy(&a, arg, sizeof a);
  int64_t x, zero = 0;
  memcpy(&x, in, sizeof x);
  if (memcmp(out, &zero, sizeof zero) != 0) return 77; /* out is zeroed before the call */
  int64_t y = square_plus(x, &a);
  memcpy(out, &y, sizeof y);
  return 0;
}

/* As item_square, but x % 10 == 3 fails with 30 + x % 7. */
static int item_some_fail(const void *in, void *out, const void *arg) {
  int64_t x;
  memcpy(&x, in, sizeof x);
  if (x % 10 == 3) return 30 + (int)(x % 7);
  return item_square(in, out, arg);
}

/* No input: writes 42, or 78 when the map's argument is not NULL. */
static int item_const(const void *in, void *out, const void *arg) {
  (void)in;
  int64_t y = 42;
  memcpy(out, &y, sizeof y);
  return arg == NULL ? 0 : 78;
}

/* No output: x % 7 == 0 fails with 5. */
static int item_no_out(const void *in, void *out, const void *arg) {
  (void)out;
  (void)arg;
  int64_t x;
  memcpy(&x, in, sizeof x);
  return x % 7 == 0 ? 5 : 0;
}

/* 3 bytes in, 5 bytes out. */
static int item_odd(const void *in, void *out, const void *arg) {
  (void)arg;
  const uint8_t *i = in;
  uint8_t *o = out;
  for (int k = 0; k < 5; k++)
    o[k] = (uint8_t)(i[k % 3] ^ (k * 37));
  return 0;
}

/* uint32 x -> uint64 x * 2654435761 + 12345. */
static uint64_t large_f(uint32_t x) {
  return (uint64_t)x * 2654435761u + 12345u;
}

static int item_large(const void *in, void *out, const void *arg) {
  (void)arg;
  uint32_t x;
  memcpy(&x, in, sizeof x);
  uint64_t y = large_f(x);
  memcpy(out, &y, sizeof y);
  return 0;
}

/* The argument is a struct job: counts on the board, sleeps job.ms, then squares. */
static int item_slow(const void *in, void *out, const void *arg) {
  struct job j;
  memcpy(&j, arg, sizeof j);
  struct board *b = board_at(j.board);
  if (b == NULL) return 94;
  atomic_fetch_add(&b->counter, 1);
  nap(TDM_MS(j.ms));
  return item_square(in, out, NULL);
}

/* ---- Helpers --------------------------------------------------------------------------------- */

static int W; /* worker ranks in the job */

static tdm_pool *open_pool(const tdm_pool_options *o) {
  tdm_pool_options d;
  memset(&d, 0, sizeof d);
  d.backend = TDM_POOL_CLUSTER;
  tdm_pool *p = NULL;
  CHECK_OK(tdm_pool_open(&p, o != NULL ? o : &d));
  CHECK(p != NULL);
  return p;
}

static tdm_pool_options cluster_options(void) {
  tdm_pool_options o;
  memset(&o, 0, sizeof o);
  o.backend = TDM_POOL_CLUSTER;
  return o;
}

static tdm_future *submit(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size) {
  tdm_future *f = NULL;
  CHECK_OK(tdm_pool_submit(p, fn, arg, size, NULL, &f));
  CHECK(f != NULL);
  return f;
}

/* Waits for a future that must end DONE with a struct who, and returns it. */
static struct who who_of(tdm_future *f) {
  const void *data = NULL;
  size_t size = 0;
  CHECK_OK(tdm_future_result(f, cap(), &data, &size));
  CHECK_EQ(size, sizeof(struct who));
  struct who w;
  memcpy(&w, data, sizeof w);
  if (w.rank < 1 || w.rank > W || w.pid <= 0 || w.pid == getpid())
    fail(__FILE__, __LINE__, "a task ran on rank %d, pid %d (rank 0 is pid %d, %d worker ranks)",
         (int)w.rank, (int)w.pid, (int)getpid(), W);
  return w;
}

/* Waits for a future that must end FAILED with `code` (and status, unless any_status). */
/* Runs task_who and returns who ran it. */
static struct who run_who(tdm_pool *p) {
  tdm_future *f = submit(p, task_who, NULL, 0);
  struct who w = who_of(f);
  tdm_future_free(f);
  return w;
}

static void check_failed(tdm_future *f, int code, int status, bool any_status) {
  const void *data = (const void *)1;
  size_t size = 12345;
  CHECK_RC(tdm_future_result(f, cap(), &data, &size), code);
  CHECK(data == (const void *)1 && size == 12345); /* untouched */
  CHECK_EQ(tdm_future_state_get(f), TDM_FUTURE_FAILED);
  tdm_task_error e;
  CHECK_EQ(tdm_future_error(f, &e), code);
  CHECK_EQ(e.code, code);
  if (!any_status) CHECK_EQ(e.status, status);
  CHECK_EQ(e.attempts, 1);
}

static void check_cancelled(tdm_future *f) {
  CHECK_EQ(tdm_future_state_get(f), TDM_FUTURE_CANCELLED);
  CHECK(tdm_future_done(f));
  CHECK_RC(tdm_future_result(f, 0, NULL, NULL), -ECANCELED);
  tdm_task_error e;
  CHECK_EQ(tdm_future_error(f, &e), -ECANCELED);
}

static int64_t *iota64(size_t n) {
  int64_t *a = malloc(n * sizeof *a);
  CHECK(a != NULL);
  for (size_t i = 0; i < n; i++)
    a[i] = (int64_t)i - 1000;
  return a;
}

/* ---- Cases: information and options ---------------------------------------------------------- */

static void case_info(void) {
  CHECK_OK(tdm_cluster_status());
  CHECK_EQ(tdm_cluster_rank(), 0);
  CHECK_EQ(tdm_cluster_size(), W + 1);
  for (int r = 0; r <= W; r++) {
    const char *h = tdm_cluster_host(r);
    CHECK(h != NULL && h[0] != '\0');
  }
  CHECK(tdm_cluster_host(W + 1) == NULL);
  CHECK(tdm_cluster_host(-1) == NULL);
  CHECK(strcmp(tdm_pool_backend_name(TDM_POOL_CLUSTER), "cluster") == 0);

  tdm_pool *p = open_pool(NULL);
  CHECK_EQ(tdm_pool_backend_get(p), TDM_POOL_CLUSTER);
  unsigned target = 0;
  CHECK(!tdm_pool_cpu_bound(p, &target)); /* nothing measured yet */
  CHECK_EQ(target, W);
  tdm_pool_stats s;
  tdm_pool_stats_get(p, &s);
  CHECK_EQ(s.workers, W);
  CHECK_OK(tdm_pool_close(p));
}

static void case_options(void) {
  tdm_pool *const sentinel = (tdm_pool *)(uintptr_t)0x5a5a;
  tdm_pool *p = sentinel;
  tdm_pool_options o;

  o = cluster_options();
  o.rank_workers = 1;
  o.rank_backend = TDM_POOL_CLUSTER;
  CHECK_RC(tdm_pool_open(&p, &o), -EINVAL);
  o.rank_backend = (tdm_pool_backend)99;
  CHECK_RC(tdm_pool_open(&p, &o), -EINVAL);

  o = cluster_options();
  o.task_timeout = -5;
  CHECK_RC(tdm_pool_open(&p, &o), -EINVAL);

  o = cluster_options();
  o.workers = 4095;
  CHECK_RC(tdm_pool_open(&p, &o), -EINVAL);

  o = cluster_options();
  o.init_size = 4;
  CHECK_RC(tdm_pool_open(&p, &o), -EINVAL);

  o = cluster_options();
  o.name = "";
  CHECK_RC(tdm_pool_open(&p, &o), -EINVAL);
  CHECK(p == sentinel);

  /* One cluster pool at a time; the failures above left nothing open. */
  tdm_pool *p1 = open_pool(NULL);
  p = sentinel;
  o = cluster_options();
  CHECK_RC(tdm_pool_open(&p, &o), -EBUSY);
  CHECK(p == sentinel);
  o.rank_workers = 2;
  o.rank_backend = TDM_POOL_THREADS;
  CHECK_RC(tdm_pool_open(&p, &o), -EBUSY);
  CHECK(p == sentinel);

  /* Other backends open meanwhile. */
  tdm_pool_options t;
  memset(&t, 0, sizeof t);
  t.backend = TDM_POOL_THREADS;
  t.workers = 2;
  tdm_pool *pt = NULL;
  CHECK_OK(tdm_pool_open(&pt, &t));
  CHECK_OK(tdm_pool_close(pt));

  /* The first still works, and once closed, another opens. */
  CHECK_EQ(run_who(p1).init_value, 0);
  CHECK_OK(tdm_pool_close(p1));
  tdm_pool *p2 = open_pool(NULL);
  CHECK_OK(tdm_pool_close(p2));

  /* Bad arguments to submit and map. */
  p = open_pool(NULL);
  tdm_future *f = (tdm_future *)(uintptr_t)0x5a5a;
  CHECK_RC(tdm_pool_submit(p, NULL, NULL, 0, NULL, &f), -EINVAL);
  tdm_task_options to = { .timeout = -5 };
  CHECK_RC(tdm_pool_submit(p, task_who, NULL, 0, &to, &f), -EINVAL);
  CHECK(f == (tdm_future *)(uintptr_t)0x5a5a);
  int64_t x[4] = { 0 }, y[4];
  CHECK_RC(tdm_pool_map(p, NULL, x, 8, y, 8, 4, NULL), -EINVAL);
  CHECK_RC(tdm_pool_map(p, item_square, NULL, 8, y, 8, 4, NULL), -EINVAL);
  CHECK_RC(tdm_pool_map(p, item_square, x, 8, NULL, 8, 4, NULL), -EINVAL);
  /* Items over 256 MiB cannot travel: refused before anything is read (nor sent). */
  CHECK_RC(tdm_pool_map(p, item_square, x, (size_t)300 << 20, y, 8, 1, NULL), -EMSGSIZE);
  CHECK_RC(tdm_pool_map(p, item_square, x, 8, y, (size_t)300 << 20, 1, NULL), -EMSGSIZE);
  CHECK_EQ(run_who(p).init_value, 0); /* the pool still works */
  CHECK_OK(tdm_pool_close(p));
  CHECK_OK(tdm_pool_close(NULL));
}

/* ---- Cases: map ------------------------------------------------------------------------------ */

static void check_squares(const int64_t *in, const int64_t *out, size_t n, const struct affine *a) {
  struct affine one = { 1, 0 };
  for (size_t i = 0; i < n; i++)
    if (out[i] != square_plus(in[i], a != NULL ? a : &one))
      fail(__FILE__, __LINE__, "map item %zu: %lld, expected %lld", i, (long long)out[i],
           (long long)square_plus(in[i], a != NULL ? a : &one));
}

static void case_map(void) {
  const size_t n = 100000;
  int64_t *in = iota64(n);
  int64_t *out = malloc(n * sizeof *out);
  int *errors = malloc(n * sizeof *errors);
  CHECK(out != NULL && errors != NULL);
  tdm_pool *p = open_pool(NULL);

  /* Automatic and explicit chunks, with and without an argument. */
  static const size_t chunks[] = { 0, 1, 7, 1000, 200000 };
  for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    tdm_map_options mo = { .chunk = chunks[c] };
    if (chunks[c] != 1) { /* 100,000 units of one item: once is enough */
      memset(out, 0xab, n * sizeof *out);
      CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, n, &mo));
      check_squares(in, out, n, NULL);
    }

    struct affine a = { 3, -17 };
    memset(out, 0xab, n * sizeof *out);
    mo.arg = &a;
    mo.arg_size = sizeof a;
    CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, n, &mo));
    check_squares(in, out, n, &a);
  }

  /* No input: in_size 0 (the argument is NULL when none is given). */
  memset(out, 0, n * sizeof *out);
  CHECK_OK(tdm_pool_map(p, item_const, NULL, 0, out, sizeof *out, n, NULL));
  for (size_t i = 0; i < n; i++)
    CHECK_EQ(out[i], 42);

  /* No output: out_size 0, out NULL; the items ran (their errors say so). */
  for (size_t i = 0; i < n; i++)
    errors[i] = -12345;
  tdm_map_options mo = { .errors = errors };
  CHECK_RC(tdm_pool_map(p, item_no_out, in, sizeof *in, NULL, 0, n, &mo), TDM_ETASK);
  for (size_t i = 0; i < n; i++)
    CHECK_EQ(errors[i], in[i] % 7 == 0 ? 5 : 0);
  CHECK_OK(tdm_pool_map(p, item_no_out, in + 7, sizeof *in, NULL, 0, 6, NULL)); /* -993..-988 */

  /* Items that fail: each outcome reported, every other output written. */
  for (size_t c = 0; c < 3; c++) {
    struct affine a = { 2, 5 };
    tdm_map_options fo = { .chunk = c == 0   ? 0
                                    : c == 1 ? 1
                                             : 333,
                           .arg = &a,
                           .arg_size = sizeof a,
                           .errors = errors };
    size_t m = c == 1 ? 20000 : n;
    for (size_t i = 0; i < m; i++)
      errors[i] = -12345;
    memset(out, 0xab, m * sizeof *out);
    CHECK_RC(tdm_pool_map(p, item_some_fail, in, sizeof *in, out, sizeof *out, m, &fo), TDM_ETASK);
    for (size_t i = 0; i < m; i++) {
      if (in[i] % 10 == 3) {
        CHECK_EQ(errors[i], 30 + in[i] % 7);
      } else {
        CHECK_EQ(errors[i], 0);
        CHECK_EQ(out[i], square_plus(in[i], &a));
      }
    }
    /* Without an errors array, the same result. */
    CHECK_RC(tdm_pool_map(p, item_some_fail, in, sizeof *in, out, sizeof *out, m, NULL), TDM_ETASK);
  }

  /* n = 0: nothing runs or is written; n = 1. */
  out[0] = 777;
  CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, 0, NULL));
  CHECK_EQ(out[0], 777);
  out[1] = 888;
  tdm_map_options big = { .chunk = 1000 };
  CHECK_OK(tdm_pool_map(p, item_square, in + 5, sizeof *in, out, sizeof *out, 1, &big));
  CHECK_EQ(out[0], square_plus(in[5], &(struct affine){ 1, 0 }));
  CHECK_EQ(out[1], 888);

  /* Items of odd sizes (3 bytes in, 5 out), packed. */
  const size_t m = 10007;
  uint8_t *oin = malloc(m * 3), *oout = malloc(m * 5);
  CHECK(oin != NULL && oout != NULL);
  for (size_t i = 0; i < m * 3; i++)
    oin[i] = (uint8_t)(i * 7 + (i >> 8));
  for (size_t c = 0; c < 2; c++) {
    memset(oout, 0xee, m * 5);
    tdm_map_options oo = { .chunk = c == 0 ? 0 : 13 };
    CHECK_OK(tdm_pool_map(p, item_odd, oin, 3, oout, 5, m, &oo));
    for (size_t i = 0; i < m; i++)
      for (int k = 0; k < 5; k++)
        CHECK_EQ(oout[i * 5 + (size_t)k], (uint8_t)(oin[i * 3 + (size_t)(k % 3)] ^ (k * 37)));
  }

  tdm_pool_stats s;
  tdm_pool_stats_get(p, &s);
  CHECK_EQ(s.submitted, 0);
  CHECK_EQ(s.failed, 0); /* item failures are not chunk failures */
  CHECK_OK(tdm_pool_close(p));
  free(oin);
  free(oout);
  free(in);
  free(out);
  free(errors);
}

static void case_large_map(void) {
  size_t n = 10000000;
  /* TDM_CLUSTER_TEST_LARGE: another count, for a machine too slow for this one. */
  const char *e = getenv("TDM_CLUSTER_TEST_LARGE");
  if (e != NULL && atol(e) > 0) n = (size_t)atol(e);
  uint32_t *in = malloc(n * sizeof *in);
  uint64_t *out = malloc(n * sizeof *out);
  CHECK(in != NULL && out != NULL);
  for (size_t i = 0; i < n; i++)
    in[i] = (uint32_t)(i * 2654435761u) ^ (uint32_t)(i >> 7);
  memset(out, 0, n * sizeof *out);
  tdm_pool *p = open_pool(NULL);
  int64_t t0 = tdm_clock_now();
  CHECK_OK(tdm_pool_map(p, item_large, in, sizeof *in, out, sizeof *out, n, NULL));
  double t = seconds_since(t0);
  for (size_t i = 0; i < n; i++)
    if (out[i] != large_f(in[i]))
      fail(__FILE__, __LINE__, "item %zu: %llu, expected %llu", i, (unsigned long long)out[i],
           (unsigned long long)large_f(in[i]));
  tdm_pool_stats s;
  tdm_pool_stats_get(p, &s);
  CHECK_EQ(s.items, n);
  CHECK_OK(tdm_pool_close(p));
  printf("   %zu items in %.2f s\n", n, t);
  free(in);
  free(out);
}

/* ---- Cases: submit --------------------------------------------------------------------------- */

struct echo_case {
  size_t arg_len; /* 0, or at least sizeof(struct echo_hdr) */
  uint32_t out_len;
};

static struct echo_case echo_sizes(size_t i) {
  struct echo_case c = { 0, 0 };
  switch (i % 5) {
  case 0:
    break; /* nothing either way */
  case 1:
    c.arg_len = sizeof(struct echo_hdr);
    break; /* header only, empty result */
  case 2:
    c.arg_len = 8 + i % 97, c.out_len = (uint32_t)(i % 61);
    break; /* small */
  case 3:
    c.arg_len = 4096 + i, c.out_len = 1;
    break;
  default:
    c.arg_len = 100, c.out_len = (uint32_t)(1000 + i);
    break;
  }
  if (i % 200 == 7) c.arg_len = (size_t)1 << 20;          /* 1 MiB argument */
  if (i % 200 == 8) c.arg_len = 64, c.out_len = 1u << 20; /* 1 MiB result */
  return c;
}

static void case_submit(void) {
  const size_t n = 2000;
  tdm_pool *p = open_pool(NULL);
  tdm_future **fs = calloc(n, sizeof *fs);
  uint8_t *buf = malloc(((size_t)1 << 20) + 64);
  CHECK(fs != NULL && buf != NULL);
  for (size_t i = 0; i < n; i++) {
    struct echo_case c = echo_sizes(i);
    struct echo_hdr h = { (uint32_t)i, c.out_len };
    if (c.arg_len > 0) {
      memcpy(buf, &h, sizeof h);
      for (size_t k = 0; k < c.arg_len - sizeof h; k++)
        buf[sizeof h + k] = pattern(h.seed, k);
    }
    CHECK_OK(tdm_pool_submit(p, task_echo, c.arg_len > 0 ? buf : NULL, c.arg_len, NULL, &fs[i]));
  }
  /* The argument was copied: scribbling on it now changes nothing. */
  memset(buf, 0, ((size_t)1 << 20) + 64);
  for (size_t i = 0; i < n; i++) {
    struct echo_case c = echo_sizes(i);
    const void *data = (const void *)1;
    size_t size = 12345;
    int rc = tdm_future_result(fs[i], cap(), &data, &size);
    if (rc != 0) {
      tdm_task_error e;
      tdm_future_error(fs[i], &e);
      fail(__FILE__, __LINE__, "task %zu (argument %zu bytes): %s, status %d", i, c.arg_len,
           tdm_err_name(rc), e.status);
    }
    CHECK_EQ(tdm_future_state_get(fs[i]), TDM_FUTURE_DONE);
    CHECK_EQ(size, c.out_len);
    if (c.out_len == 0) {
      CHECK(data == NULL);
    } else {
      const uint8_t *d = data;
      for (size_t k = 0; k < c.out_len; k++)
        if (d[k] != pattern((uint32_t)i * 7u, k))
          fail(__FILE__, __LINE__, "task %zu: result byte %zu is wrong", i, k);
    }
    tdm_task_error e;
    CHECK_EQ(tdm_future_error(fs[i], &e), 0);
    CHECK_EQ(e.attempts, 1);
    tdm_future_free(fs[i]);
  }

  /* Failing tasks: TDM_ETASK with the function's return value; their result is dropped. */
  static const int codes[] = { 17, -3, 1, 255 };
  tdm_future *ff[4];
  for (int i = 0; i < 4; i++)
    ff[i] = submit(p, task_return, &codes[i], sizeof codes[i]);
  for (int i = 0; i < 4; i++) {
    check_failed(ff[i], TDM_ETASK, codes[i], false);
    tdm_future_free(ff[i]);
  }
  int zero = 0;
  tdm_future *ok = submit(p, task_return, &zero, sizeof zero);
  const void *data = NULL;
  size_t size = 0;
  CHECK_OK(tdm_future_result(ok, cap(), &data, &size));
  CHECK_EQ(size, 7);
  CHECK(memcmp(data, "dropped", 7) == 0);
  tdm_future_free(ok);

  /* A future freed while pending: its task still runs. */
  struct board *b = board_new();
  struct job j = job(b, 0, 0);
  tdm_future_free(submit(p, task_mark, &j, sizeof j));
  WAIT_UNTIL(atomic_load(&b->ran[0]) == 1);

  tdm_pool_stats s;
  tdm_pool_stats_get(p, &s);
  CHECK_EQ(s.submitted, n + 6);

  /* 16 MiB each way. */
  size_t big = (size_t)16 << 20;
  uint8_t *huge = malloc(big);
  CHECK(huge != NULL);
  memcpy(huge, &big, sizeof big);
  for (size_t k = sizeof big; k < big; k++)
    huge[k] = (uint8_t)k;
  tdm_future *hf = submit(p, task_sized, huge, big);
  CHECK_OK(tdm_future_result(hf, cap(), &data, &size));
  CHECK_EQ(size, big);
  for (size_t k = 0; k < big; k += 4093)
    CHECK_EQ(((const uint8_t *)data)[k], pattern(7, k));
  tdm_future_free(hf);
  free(huge);
  CHECK_OK(tdm_pool_close(p));

  /* max_result bounds arguments (at submit) and results (in the task). */
  tdm_pool_options o = cluster_options();
  o.max_result = 1000;
  p = open_pool(&o);
  uint8_t small[2000];
  size_t want = 10;
  memset(small, 0, sizeof small);
  memcpy(small, &want, sizeof want);
  tdm_future *f = (tdm_future *)(uintptr_t)0x5a5a;
  CHECK_RC(tdm_pool_submit(p, task_sized, small, sizeof small, NULL, &f), -EMSGSIZE);
  CHECK(f == (tdm_future *)(uintptr_t)0x5a5a);
  f = submit(p, task_sized, small, 1000);
  CHECK_OK(tdm_future_result(f, cap(), NULL, &size));
  CHECK_EQ(size, 10);
  tdm_future_free(f);
  want = 1001;
  memcpy(small, &want, sizeof want);
  f = submit(p, task_sized, small, sizeof want);
  check_failed(f, TDM_ETASK, 50, false);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
  free(fs);
  free(buf);
}

/* Tasks report the rank that ran them; a rank busy with a long task gets few others. */
static void case_balance(void) {
  const int nshort = 40, inflight = 3;
  struct board *b = board_new();
  tdm_pool *p = open_pool(NULL);
  struct balance_job lj;
  memset(&lj, 0, sizeof lj);
  snprintf(lj.board, sizeof lj.board, "%s", board_name(b));
  lj.is_long = 1;
  /* With one worker rank the short tasks wait behind the long one: it must not wait for them. */
  lj.wait_for = W >= 2 ? nshort - inflight : 0;
  struct balance_job sj = lj;
  sj.is_long = 0;
  int64_t t0 = tdm_clock_now();
  tdm_future *lf = submit(p, task_balance, &lj, sizeof lj);
  tdm_future *sf[40];
  for (int i = 0; i < nshort; i++)
    sf[i] = submit(p, task_balance, &sj, sizeof sj);
  int per_rank[MAX_RANKS] = { 0 };
  struct who lw = who_of(lf);
  for (int i = 0; i < nshort; i++)
    per_rank[who_of(sf[i]).rank]++;
  CHECK(seconds_since(t0) >= 0.2);
  if (W < 2) {
    printf("   (balance not checked: the job has one worker rank)\n");
  } else {
    /* The rank of the long task was busy until all but `inflight` short tasks had ended
     * elsewhere: it ran at most those (the dispatcher keeps up to 3 units in flight per rank),
     * and every other rank ran some. */
    if (per_rank[lw.rank] > inflight)
      fail(__FILE__, __LINE__,
           "rank %d ran the long task and %d short ones (at most %d expected): no balancing",
           lw.rank, per_rank[lw.rank], inflight);
    for (int r = 1; r <= W; r++)
      if (r != lw.rank && per_rank[r] == 0) fail(__FILE__, __LINE__, "rank %d ran no task", r);
  }
  printf("   long task on rank %d; short tasks per rank:", lw.rank);
  for (int r = 1; r <= W; r++)
    printf(" %d", per_rank[r]);
  printf("\n");
  for (int i = 0; i < nshort; i++)
    tdm_future_free(sf[i]);
  tdm_future_free(lf);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Cases: imap ----------------------------------------------------------------------------- */

struct counter_src {
  int64_t next, end, fail_at; /* fail_at < 0: never */
};

static int source_count(void *ctx, void *item) {
  struct counter_src *c = ctx;
  if (c->next == c->fail_at) return -EIO;
  if (c->next >= c->end) return TDM_EEOF;
  int64_t v = c->next++;
  memcpy(item, &v, sizeof v);
  return 0;
}

static void case_imap(void) {
  const size_t n = 20000;
  int64_t *in = iota64(n);
  uint8_t *seen = calloc(n, 1);
  CHECK(seen != NULL);
  tdm_pool *p = open_pool(NULL);
  struct affine a = { 5, 3 };
  tdm_imap_item item;

  /* Ordered, over an array: the default window and chunk, then small ones. */
  for (int v = 0; v < 3; v++) {
    tdm_map_options mo = { .arg = &a, .arg_size = sizeof a };
    if (v == 1) mo.chunk = 7, mo.window = 50;
    if (v == 2) mo.chunk = 1, mo.window = 4;
    size_t m = v == 2 ? 2000 : n;
    tdm_imap *it = NULL;
    CHECK_OK(tdm_pool_imap(&it, p, item_square, in, sizeof *in, sizeof(int64_t), m, &mo));
    for (size_t i = 0; i < m; i++) {
      CHECK_OK(tdm_imap_next(it, cap(), &item));
      CHECK_EQ(item.index, i);
      CHECK_EQ(item.error, 0);
      int64_t y;
      memcpy(&y, item.out, sizeof y);
      CHECK_EQ(y, square_plus(in[i], &a));
    }
    CHECK_RC(tdm_imap_next(it, cap(), &item), TDM_EEOF);
    CHECK_RC(tdm_imap_next(it, 0, &item), TDM_EEOF);
    CHECK_OK(tdm_imap_close(it));
  }

  /* Unordered: every index exactly once. */
  for (int v = 0; v < 2; v++) {
    tdm_map_options mo = { .arg = &a, .arg_size = sizeof a, .unordered = true };
    if (v == 1) mo.chunk = 3, mo.window = 30;
    tdm_imap *it = NULL;
    CHECK_OK(tdm_pool_imap(&it, p, item_square, in, sizeof *in, sizeof(int64_t), n, &mo));
    memset(seen, 0, n);
    for (size_t i = 0; i < n; i++) {
      CHECK_OK(tdm_imap_next(it, cap(), &item));
      CHECK(item.index < n);
      CHECK_EQ(seen[item.index], 0);
      seen[item.index] = 1;
      int64_t y;
      memcpy(&y, item.out, sizeof y);
      CHECK_EQ(y, square_plus(in[item.index], &a));
    }
    CHECK_RC(tdm_imap_next(it, cap(), &item), TDM_EEOF);
    CHECK_OK(tdm_imap_close(it));
  }

  /* From a source, ordered and not; item failures come in item.error. */
  for (int v = 0; v < 2; v++) {
    struct counter_src src = { 0, (int64_t)n, -1 };
    tdm_map_options mo = { .unordered = v == 1 };
    tdm_imap *it = NULL;
    CHECK_OK(tdm_pool_imap_source(&it, p, item_some_fail, source_count, &src, sizeof(int64_t),
                                  sizeof(int64_t), &mo));
    memset(seen, 0, n);
    for (size_t i = 0; i < n; i++) {
      CHECK_OK(tdm_imap_next(it, cap(), &item));
      if (v == 0) CHECK_EQ(item.index, i);
      CHECK(item.index < n);
      CHECK_EQ(seen[item.index], 0);
      seen[item.index] = 1;
      int64_t x = (int64_t)item.index;
      if (x % 10 == 3) {
        CHECK_EQ(item.error, 30 + x % 7);
      } else {
        CHECK_EQ(item.error, 0);
        int64_t y;
        memcpy(&y, item.out, sizeof y);
        CHECK_EQ(y, x * x);
      }
    }
    CHECK_RC(tdm_imap_next(it, cap(), &item), TDM_EEOF);
    CHECK_OK(tdm_imap_close(it));
  }

  /* A source that fails: the items read before it, then its error once, then TDM_EEOF. */
  struct counter_src bad = { 0, 1000, 300 };
  tdm_imap *it = NULL;
  CHECK_OK(tdm_pool_imap_source(&it, p, item_square, source_count, &bad, sizeof(int64_t),
                                sizeof(int64_t), NULL));
  for (size_t i = 0; i < 300; i++) {
    CHECK_OK(tdm_imap_next(it, cap(), &item));
    CHECK_EQ(item.index, i);
  }
  CHECK_RC(tdm_imap_next(it, cap(), &item), -EIO);
  CHECK_RC(tdm_imap_next(it, cap(), &item), TDM_EEOF);
  CHECK_OK(tdm_imap_close(it));

  /* Closed early, over a source that never ends: the pool goes on. */
  struct counter_src endless = { 0, INT64_MAX, -1 };
  CHECK_OK(tdm_pool_imap_source(&it, p, item_square, source_count, &endless, sizeof(int64_t),
                                sizeof(int64_t), NULL));
  for (size_t i = 0; i < 100; i++) {
    CHECK_OK(tdm_imap_next(it, cap(), &item));
    CHECK_EQ(item.index, i);
  }
  CHECK_OK(tdm_imap_close(it));
  CHECK_OK(tdm_imap_close(NULL));
  int64_t *out = malloc(n * sizeof *out);
  CHECK(out != NULL);
  CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, n, NULL));
  check_squares(in, out, n, NULL);

  CHECK_OK(tdm_pool_close(p));
  free(out);
  free(in);
  free(seen);
}

/* ---- Cases: waiting -------------------------------------------------------------------------- */

static atomic_int callbacks;

static void on_done(tdm_future *f, void *arg) {
  CHECK(tdm_future_done(f));
  CHECK(arg == &callbacks);
  atomic_fetch_add(&callbacks, 1);
}

static void *open_gate_soon(void *arg) {
  _Atomic int32_t *gate = arg;
  nap(TDM_MS(20)); /* not needed for correctness: likely lets tdm_wait() block first */
  atomic_store(gate, 1);
  return NULL;
}

static void case_wait(void) {
  struct board *b = board_new();
  tdm_pool *p = open_pool(NULL);
  size_t nd = 999;

  /* One ended DONE, one FAILED, one that runs until its gate opens. */
  tdm_future *quick = submit(p, task_who, NULL, 0);
  int bad = 9;
  tdm_future *failing = submit(p, task_return, &bad, sizeof bad);
  CHECK_OK(tdm_future_wait(quick, cap()));
  CHECK_OK(tdm_future_wait(failing, cap()));
  struct job g = job(b, 0, 0);
  tdm_future *gated = submit(p, task_gated, &g, sizeof g);
  WAIT_UNTIL(atomic_load(&b->started[0]) == 1);

  tdm_future *fs[3] = { gated, quick, failing };
  CHECK_OK(tdm_wait(fs, 0, TDM_WAIT_ALL, 0, &nd));
  CHECK_EQ(nd, 0);
  CHECK_OK(tdm_wait(fs, 2, TDM_WAIT_FIRST, cap(), &nd));
  CHECK_EQ(nd, 1);
  CHECK_RC(tdm_wait(fs, 1, TDM_WAIT_ALL, 0, &nd), -ETIMEDOUT);
  CHECK_EQ(nd, 0);
  CHECK_RC(tdm_wait(fs, 1, TDM_WAIT_FIRST, TDM_MS(50), &nd), -ETIMEDOUT);
  CHECK_RC(tdm_wait(fs, 3, TDM_WAIT_ALL, TDM_MS(10), &nd), -ETIMEDOUT);
  CHECK_EQ(nd, 2);
  tdm_future *fe[2] = { gated, failing };
  CHECK_OK(tdm_wait(fe, 2, TDM_WAIT_FIRST_ERROR, cap(), &nd));
  CHECK_EQ(nd, 1);
  tdm_future *fq[2] = { gated, quick }; /* DONE is no error: waits for the gated one */
  CHECK_RC(tdm_wait(fq, 2, TDM_WAIT_FIRST_ERROR, 0, &nd), -ETIMEDOUT);
  CHECK(!tdm_future_done(gated));
  WAIT_UNTIL(tdm_future_state_get(gated) == TDM_FUTURE_RUNNING);
  CHECK_RC(tdm_future_wait(gated, 0), -ETIMEDOUT);

  atomic_store(&callbacks, 0);
  CHECK_OK(tdm_future_on_done(gated, on_done, &callbacks));
  CHECK_OK(tdm_future_on_done(quick, on_done, &callbacks)); /* ended: runs at once, here */
  CHECK_EQ(atomic_load(&callbacks), 1);
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, open_gate_soon, &b->gate[0]));
  CHECK_OK(tdm_wait(fs, 1, TDM_WAIT_FIRST, cap(), &nd));
  CHECK_EQ(nd, 1);
  CHECK_OK(pthread_join(th, NULL));
  CHECK_OK(tdm_wait(fs, 3, TDM_WAIT_ALL, cap(), &nd));
  CHECK_EQ(nd, 3);
  WAIT_UNTIL(atomic_load(&callbacks) == 2);
  who_of(gated);
  who_of(quick);
  check_failed(failing, TDM_ETASK, 9, false);
  for (int i = 0; i < 3; i++)
    tdm_future_free(fs[i]);

  /* as_completed: an ended future first, then the others in the order their gates open (one
   * at a time, each as soon as its task has started). */
  enum { N = 12 };
  tdm_future *af[N + 1];
  af[0] = submit(p, task_who, NULL, 0);
  CHECK_OK(tdm_future_wait(af[0], cap()));
  for (int i = 1; i <= N; i++) {
    struct job j = job(b, i, 0);
    af[i] = submit(p, task_gated, &j, sizeof j);
    CHECK_OK(tdm_future_on_done(af[i], on_done, &callbacks));
  }
  atomic_store(&callbacks, 0);
  tdm_as_completed *ac = NULL;
  CHECK_OK(tdm_as_completed_open(&ac, af, N + 1));
  tdm_future *f = NULL;
  CHECK_OK(tdm_as_completed_next(ac, cap(), &f));
  CHECK(f == af[0]);
  CHECK_RC(tdm_as_completed_next(ac, TDM_MS(20), &f), -ETIMEDOUT);
  bool released[N + 1] = { false };
  for (int k = 0; k < N; k++) {
    int slot = 0;
    int64_t until = tdm_clock_now() + cap();
    while (slot == 0) {
      for (int i = 1; i <= N && slot == 0; i++)
        if (!released[i] && atomic_load(&b->started[i]) > 0) slot = i;
      if (slot == 0) {
        CHECK(tdm_clock_now() < until);
        nap(TDM_US(500));
      }
    }
    released[slot] = true;
    atomic_store(&b->gate[slot], 1);
    CHECK_OK(tdm_as_completed_next(ac, cap(), &f));
    if (f != af[slot]) {
      int got = -1;
      for (int i = 0; i <= N; i++)
        if (f == af[i]) got = i;
      fail(__FILE__, __LINE__, "as_completed gave task %d, expected %d (the only gate open)", got,
           slot);
    }
  }
  CHECK_RC(tdm_as_completed_next(ac, cap(), &f), TDM_EEOF);
  tdm_as_completed_close(ac);
  tdm_as_completed_close(NULL);
  WAIT_UNTIL(atomic_load(&callbacks) == N);
  for (int i = 0; i <= N; i++) {
    who_of(af[i]);
    tdm_future_free(af[i]);
  }
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Cases: statistics and workers ----------------------------------------------------------- */

static void case_stats(void) {
  tdm_pool *p = open_pool(NULL);
  enum { OK = 30, BAD = 5 };
  tdm_future *fs[OK + BAD];
  int one = 1;
  for (int i = 0; i < OK + BAD; i++)
    fs[i] = i < OK ? submit(p, task_who, NULL, 0) : submit(p, task_return, &one, sizeof one);
  pid_t pids[OK];
  for (int i = 0; i < OK + BAD; i++) {
    if (i < OK)
      pids[i] = who_of(fs[i]).pid;
    else
      check_failed(fs[i], TDM_ETASK, 1, false);
    tdm_future_free(fs[i]);
  }
  int64_t *in = iota64(1000), out[1000];
  tdm_map_options mo = { .chunk = 10 };
  CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, 1000, &mo));
  free(in);

  /* The figures may trail the futures by a moment (a worker's busy flag too): wait until they
   * add up, then check each. */
  const uint64_t tasks = OK + BAD + 1000 / 10;
  tdm_pool_stats s;
  tdm_pool_worker_stats ws[MAX_RANKS];
  size_t nw = 0;
  int64_t until = tdm_clock_now() + cap();
  for (;;) {
    tdm_pool_stats_get(p, &s);
    nw = tdm_pool_worker_stats_get(p, ws, MAX_RANKS);
    uint64_t sum = 0;
    bool busy = false;
    for (size_t i = 0; i < nw && i < MAX_RANKS; i++) {
      sum += ws[i].tasks;
      busy = busy || ws[i].busy;
    }
    if ((s.done + s.failed == tasks && sum == tasks && !busy) || tdm_clock_now() > until) break;
    nap(TDM_MS(1));
  }
  CHECK_EQ(s.submitted, OK + BAD);
  CHECK_EQ(s.done, OK + 100);
  CHECK_EQ(s.failed, BAD);
  CHECK_EQ(s.cancelled, 0);
  CHECK_EQ(s.retried, 0);
  CHECK_EQ(s.timed_out, 0);
  CHECK_EQ(s.items, 1000);
  CHECK_EQ(s.workers, W);
  CHECK_EQ(s.workers_started, W);
  CHECK_EQ(s.workers_replaced, 0);
  CHECK_EQ(s.workers_lost, 0);
  CHECK(s.uptime_ns > 0);

  CHECK_EQ(nw, W);
  uint64_t sum = 0;
  for (size_t i = 0; i < nw; i++) {
    CHECK(ws[i].pid > 0 && ws[i].pid != getpid());
    for (size_t k = 0; k < i; k++)
      CHECK(ws[k].pid != ws[i].pid);
    CHECK(!ws[i].busy);
    sum += ws[i].tasks;
  }
  CHECK_EQ(sum, tasks);
  for (int i = 0; i < OK; i++) { /* the pids the tasks saw are the workers' */
    bool found = false;
    for (size_t k = 0; k < nw; k++)
      found = found || ws[k].pid == pids[i];
    CHECK(found);
  }
  CHECK_EQ(tdm_pool_worker_stats_get(p, ws, 0), W); /* the count, with no room */
  CHECK_OK(tdm_pool_close(p));
}

/*
 * Runs this program again as `--child RANK SIZE` (a program that a rank starts: it inherits
 * mpirun's environment but is no rank of the job) and gives its exit status, or -1.
 */
static int run_child(int rank, int size) {
  char r[16], n[16];
  snprintf(r, sizeof r, "%d", rank);
  snprintf(n, sizeof n, "%d", size);
  /* posix_spawn(), not fork(): a rank with much memory mapped (and ThreadSanitizer's shadow)
   * may not be allowed to fork a copy of itself. */
  char *args[] = { "cluster_test", "--child", r, n, NULL };
  pid_t pid;
  int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, environ);
  if (rc != 0) return 1000 + rc;
  int st;
  if (waitpid(pid, &st, 0) != pid) return 2000 + errno;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A task that runs a program as run_child() does, on its rank: the exit status. */
static int task_run_child(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  (void)arg;
  (void)size;
  return run_child(tdm_cluster_rank(), tdm_cluster_size());
}

/* `--child RANK SIZE`: not a rank, however its environment looks; it knows whose child it is. */
static int child_main(int rank, int size) {
  current_case = "child";
  CHECK_RC(tdm_cluster_status(), TDM_ECLUSTER);
  CHECK_EQ(tdm_cluster_rank(), rank);
  CHECK_EQ(tdm_cluster_size(), size);
  tdm_pool_options o = cluster_options();
  tdm_pool *p;
  CHECK_RC(tdm_pool_open(&p, &o), TDM_ECLUSTER);
  return 0;
}

/* Programs started by rank 0 and by a worker rank are ordinary programs, not ranks. */
static void case_child(void) {
  CHECK_EQ(run_child(0, W + 1), 0);
  tdm_pool_options o = cluster_options();
  tdm_pool *p = open_pool(&o);
  tdm_future *f = submit(p, task_run_child, NULL, 0);
  CHECK_OK(tdm_future_wait(f, TDM_FOREVER));
  tdm_task_error e;
  tdm_future_error(f, &e);
  CHECK_EQ(e.status, 0); /* the child's exit status, or 1000/2000 + errno of fork/waitpid */
  CHECK_EQ(e.code, 0);
  tdm_future_free(f);
  CHECK_OK(tdm_pool_close(p));
}

static void case_workers(void) {
  unsigned asks[] = { 1, 2, 4094, 0 };
  for (size_t a = 0; a < sizeof asks / sizeof asks[0]; a++) {
    if (asks[a] == 2 && W < 3) continue; /* 2 of at least 3 */
    unsigned want = asks[a] == 0 || asks[a] > (unsigned)W ? (unsigned)W : asks[a];
    tdm_pool_options o = cluster_options();
    o.workers = asks[a];
    tdm_pool *p = open_pool(&o);
    tdm_pool_worker_stats ws[MAX_RANKS];
    CHECK_EQ(tdm_pool_worker_stats_get(p, ws, MAX_RANKS), want);
    tdm_pool_stats s;
    tdm_pool_stats_get(p, &s);
    CHECK_EQ(s.workers, want);
    tdm_future *fs[60];
    for (int i = 0; i < 60; i++)
      fs[i] = submit(p, task_who, NULL, 0);
    int ranks_used = 0;
    bool used[MAX_RANKS] = { false };
    for (int i = 0; i < 60; i++) {
      struct who w = who_of(fs[i]);
      if (!used[w.rank]) ranks_used++;
      used[w.rank] = true;
      bool listed = false;
      for (unsigned k = 0; k < want; k++)
        listed = listed || ws[k].pid == w.pid;
      CHECK(listed);
      tdm_future_free(fs[i]);
    }
    CHECK(ranks_used <= (int)want);
    if (want == 1) CHECK_EQ(ranks_used, 1);
    CHECK_OK(tdm_pool_close(p));
  }
}

/* ---- Cases: initializers --------------------------------------------------------------------- */

struct init_arg {
  char board[48];
  int64_t value;
  int32_t fail_rank; /* the rank whose initializer fails; 0: none; -1: all */
};

static int init_store(const void *arg, size_t size) {
  struct init_arg a;
  if (size != sizeof a) return 81;
  memcpy(&a, arg, sizeof a);
  struct board *b = board_at(a.board);
  if (b == NULL) return 82;
  int r = tdm_cluster_rank();
  if (r >= 0 && r < MAX_RANKS) atomic_fetch_add(&b->inits[r], 1);
  g_init_value = a.value;
  return a.fail_rank == -1 || a.fail_rank == r ? 83 : 0;
}

static void fini_count(const void *arg, size_t size) {
  struct init_arg a;
  if (size != sizeof a) return;
  memcpy(&a, arg, sizeof a);
  struct board *b = board_at(a.board);
  int r = tdm_cluster_rank();
  if (b != NULL && r >= 0 && r < MAX_RANKS) atomic_fetch_add(&b->finis[r], 1);
}

static void case_init(void) {
  struct board *b = board_new();
  struct init_arg ia;
  memset(&ia, 0, sizeof ia);
  snprintf(ia.board, sizeof ia.board, "%s", board_name(b));
  ia.value = 4242;
  tdm_pool_options o = cluster_options();
  o.initializer = init_store;
  o.finalizer = fini_count;
  o.init_arg = &ia;
  o.init_size = sizeof ia;
  tdm_pool *p = open_pool(&o);
  ia.value = 0; /* copied at open */
  for (int r = 1; r <= W; r++)
    CHECK_EQ(atomic_load(&b->inits[r]), 1); /* each rank, before open returned */
  CHECK_EQ(atomic_load(&b->inits[0]), 0);
  tdm_future *fs[100];
  for (int i = 0; i < 100; i++)
    fs[i] = submit(p, task_who, NULL, 0);
  for (int i = 0; i < 100; i++) {
    CHECK_EQ(who_of(fs[i]).init_value, 4242);
    tdm_future_free(fs[i]);
  }
  CHECK_EQ(g_init_value, 0); /* rank 0 is not a worker */
  CHECK_OK(tdm_pool_close(p));
  for (int r = 1; r <= W; r++) /* close waits for the finalizers */
    CHECK_EQ(atomic_load(&b->finis[r]), 1);

  /* An initializer that fails on one rank (the first, the last), or on all: TDM_EINIT, and
   * nothing stays open. */
  int fails[] = { 1, W, -1 };
  for (int k = 0; k < 3; k++) {
    ia.fail_rank = fails[k];
    ia.value = 1;
    tdm_pool *sentinel = (tdm_pool *)(uintptr_t)0x5a5a, *q = sentinel;
    CHECK_RC(tdm_pool_open(&q, &o), TDM_EINIT);
    CHECK(q == sentinel);
  }
  tdm_pool *q = open_pool(NULL);
  run_who(q);
  int64_t in[100], out[100];
  for (int i = 0; i < 100; i++)
    in[i] = i;
  CHECK_OK(tdm_pool_map(q, item_square, in, sizeof *in, out, sizeof *out, 100, NULL));
  check_squares(in, out, 100, NULL);
  CHECK_OK(tdm_pool_close(q));
}

/* ---- Cases: timeouts, cancel, shutdown, terminate -------------------------------------------- */

static void case_timeout(void) {
  tdm_pool *p = open_pool(NULL);
  struct job sj;
  memset(&sj, 0, sizeof sj);
  sj.ms = 2000;
  tdm_task_options to = { .timeout = TDM_MS(200) };
  int64_t t0 = tdm_clock_now();
  tdm_future *f = NULL;
  CHECK_OK(tdm_pool_submit(p, task_sleep, &sj, sizeof sj, &to, &f));
  check_failed(f, TDM_ETASKTIMEOUT, 0, true);
  CHECK(seconds_since(t0) >= 0.2);
  tdm_future_free(f);
  tdm_future *fs[20];
  for (int i = 0; i < 20; i++)
    fs[i] = submit(p, task_who, NULL, 0);
  for (int i = 0; i < 20; i++) {
    who_of(fs[i]);
    tdm_future_free(fs[i]);
  }
  tdm_pool_stats s;
  tdm_pool_stats_get(p, &s);
  CHECK_EQ(s.timed_out, 1);
  CHECK_EQ(s.failed, 1);
  CHECK_OK(tdm_pool_close(p));

  /* The pool's default, and a task that opts out of it. */
  tdm_pool_options o = cluster_options();
  o.task_timeout = TDM_MS(200);
  p = open_pool(&o);
  sj.ms = 500;
  to.timeout = TDM_FOREVER;
  tdm_future *forever = NULL;
  CHECK_OK(tdm_pool_submit(p, task_sleep, &sj, sizeof sj, &to, &forever));
  sj.ms = 2000;
  t0 = tdm_clock_now();
  to.timeout = 0; /* the pool's */
  CHECK_OK(tdm_pool_submit(p, task_sleep, &sj, sizeof sj, &to, &f));
  check_failed(f, TDM_ETASKTIMEOUT, 0, true);
  CHECK(seconds_since(t0) >= 0.2);
  who_of(forever);
  run_who(p);
  tdm_future_free(f);
  tdm_future_free(forever);
  CHECK_OK(tdm_pool_close(p));
}

static void case_cancel(void) {
  struct board *b = board_new();
  tdm_pool *p = open_pool(NULL);

  /* A running task: CANCELLED at once (the rank finishes it, unseen). */
  struct job j = job(b, 0, 0);
  tdm_future *run = submit(p, task_gated, &j, sizeof j);
  WAIT_UNTIL(atomic_load(&b->started[0]) == 1);
  WAIT_UNTIL(tdm_future_state_get(run) == TDM_FUTURE_RUNNING);
  CHECK_OK(tdm_future_cancel(run));
  check_cancelled(run);
  CHECK_RC(tdm_future_cancel(run), -EALREADY);
  CHECK_EQ(atomic_load(&b->ran[0]), 0); /* it was still running */
  atomic_store(&b->gate[0], 1);
  WAIT_UNTIL(atomic_load(&b->ran[0]) == 1);
  check_cancelled(run);
  tdm_future_free(run);
  run_who(p);

  /* Pending tasks, behind more gated ones than the ranks hold: CANCELLED, and never run. */
  int ngated = 3 * W + 8;
  CHECK(ngated + 2 < SLOTS - 10);
  tdm_future *gs[SLOTS];
  for (int i = 1; i <= ngated; i++) {
    struct job g = job(b, i, 0);
    gs[i] = submit(p, task_gated, &g, sizeof g);
  }
  struct job m = job(b, SLOTS - 1, 0);
  tdm_future *marker = submit(p, task_mark, &m, sizeof m);
  CHECK_EQ(tdm_future_state_get(marker), TDM_FUTURE_PENDING);
  CHECK_OK(tdm_future_cancel(marker));
  check_cancelled(marker);
  CHECK_RC(tdm_future_cancel(marker), -EALREADY);
  tdm_future *last = gs[ngated];
  CHECK_EQ(tdm_future_state_get(last), TDM_FUTURE_PENDING);
  CHECK_OK(tdm_future_cancel(last));
  check_cancelled(last);
  atomic_store(&b->gate_all, 1);
  for (int i = 1; i < ngated; i++) {
    who_of(gs[i]);
    tdm_future_free(gs[i]);
  }
  CHECK_OK(tdm_pool_close(p));
  CHECK_EQ(atomic_load(&b->started[SLOTS - 1]), 0);
  CHECK_EQ(atomic_load(&b->started[ngated]), 0);
  check_cancelled(marker);
  check_cancelled(last);
  tdm_future_free(marker);
  tdm_future_free(last);

  /* Cancelling a DONE or FAILED future changes nothing. */
  p = open_pool(NULL);
  tdm_future *done = submit(p, task_who, NULL, 0);
  who_of(done);
  CHECK_RC(tdm_future_cancel(done), -EALREADY);
  CHECK_EQ(tdm_future_state_get(done), TDM_FUTURE_DONE);
  tdm_future_free(done);
  CHECK_OK(tdm_pool_close(p));
}

/* Submits n gated tasks on board slots first..first+n-1 into fs[], and waits until every rank
 * runs one of them (a rank runs one at a time; the others wait behind the gates). */
static void submit_gated(tdm_pool *p, struct board *b, int first, int n, tdm_future **fs) {
  CHECK(first + n < SLOTS);
  for (int i = 0; i < n; i++) {
    struct job j = job(b, first + i, 0);
    fs[i] = submit(p, task_gated, &j, sizeof j);
  }
  WAIT_UNTIL(started_total(b, first + n) - started_total(b, first) == W);
}

static void case_shutdown(void) {
  struct board *b = board_new();
  tdm_pool *p = open_pool(NULL);
  int n = 3 * W + 20;
  tdm_future *fs[SLOTS];
  submit_gated(p, b, 0, n, fs);
  CHECK_OK(tdm_pool_shutdown(p, false, true));
  int cancelled = 0;
  for (int i = 0; i < n; i++)
    cancelled += tdm_future_state_get(fs[i]) == TDM_FUTURE_CANCELLED;
  CHECK(cancelled >= n - 3 * W);
  for (int i = 0; i < n; i++)
    if (atomic_load(&b->started[i]) > 0) CHECK_EQ(tdm_future_state_get(fs[i]), TDM_FUTURE_RUNNING);

  tdm_future *f = (tdm_future *)(uintptr_t)0x5a5a;
  CHECK_RC(tdm_pool_submit(p, task_who, NULL, 0, NULL, &f), -EPIPE);
  CHECK(f == (tdm_future *)(uintptr_t)0x5a5a);
  int64_t x[2] = { 1, 2 }, y[2];
  CHECK_RC(tdm_pool_map(p, item_square, x, 8, y, 8, 2, NULL), -EPIPE);

  atomic_store(&b->gate_all, 1);
  CHECK_OK(tdm_pool_shutdown(p, true, false));
  for (int i = 0; i < n; i++) {
    CHECK(tdm_future_done(fs[i]));
    if (tdm_future_state_get(fs[i]) == TDM_FUTURE_CANCELLED) {
      CHECK_EQ(atomic_load(&b->started[i]), 0);
    } else {
      who_of(fs[i]);
      CHECK_EQ(atomic_load(&b->ran[i]), 1);
    }
    tdm_future_free(fs[i]);
  }
  CHECK_RC(tdm_pool_submit(p, task_who, NULL, 0, NULL, &f), -EPIPE);
  CHECK_OK(tdm_pool_close(p));

  /* close waits for the tasks left. */
  p = open_pool(NULL);
  for (int i = 0; i < 50; i++) {
    struct job j = job(b, 0, 5);
    fs[i] = submit(p, task_sleep, &j, sizeof j);
  }
  CHECK_OK(tdm_pool_close(p));
  for (int i = 0; i < 50; i++) {
    who_of(fs[i]);
    tdm_future_free(fs[i]);
  }
}

struct map_thread {
  tdm_pool *p;
  const int64_t *in;
  int64_t *out;
  int *errors;
  size_t n;
  struct job arg;
  int rc;
};

static void *run_map(void *arg) {
  struct map_thread *m = arg;
  tdm_map_options mo = {
    .chunk = 2, .arg = &m->arg, .arg_size = sizeof m->arg, .errors = m->errors
  };
  m->rc = tdm_pool_map(m->p, item_slow, m->in, sizeof *m->in, m->out, sizeof *m->out, m->n, &mo);
  return NULL;
}

/* Opens every gate of the board once all `n` futures have ended (terminate ends them at once,
 * then waits for the ranks, which wait for their gates). */
struct opener {
  struct board *b;
  tdm_future **fs;
  int n;
};

static void *open_gates_when_ended(void *arg) {
  struct opener *o = arg;
  int64_t until = tdm_clock_now() + cap();
  for (int i = 0; i < o->n && tdm_clock_now() < until; i++)
    while (!tdm_future_done(o->fs[i]) && tdm_clock_now() < until)
      nap(TDM_US(200));
  atomic_store(&o->b->gate_all, 1);
  return NULL;
}

static void case_terminate(void) {
  struct board *b = board_new();
  tdm_pool *p = open_pool(NULL);
  int n = 3 * W + 10;
  tdm_future *fs[SLOTS];
  submit_gated(p, b, 0, n, fs);
  struct opener o = { b, fs, n };
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, open_gates_when_ended, &o));
  CHECK_OK(tdm_pool_terminate(p));
  CHECK_OK(pthread_join(th, NULL));
  for (int i = 0; i < n; i++) {
    check_cancelled(fs[i]);
    tdm_future_free(fs[i]);
  }
  tdm_future *f = NULL;
  CHECK_RC(tdm_pool_submit(p, task_who, NULL, 0, NULL, &f), -EPIPE);
  CHECK_OK(tdm_pool_terminate(p));
  CHECK_OK(tdm_pool_close(p));

  /* tdm_pool_interrupt() (async-signal-safe) terminates the pool without waiting. */
  p = open_pool(NULL);
  atomic_store(&b->gate_all, 0);
  submit_gated(p, b, 100, n, fs);
  CHECK_OK(pthread_create(&th, NULL, open_gates_when_ended, &o));
  CHECK_OK(tdm_pool_interrupt(p));
  CHECK_OK(pthread_join(th, NULL));
  for (int i = 0; i < n; i++) {
    check_cancelled(fs[i]);
    tdm_future_free(fs[i]);
  }
  CHECK_RC(tdm_pool_submit(p, task_who, NULL, 0, NULL, &f), -EPIPE);
  CHECK_OK(tdm_pool_close(p));

  /* Terminated while results come back: each task ends once, DONE or CANCELLED. */
  p = open_pool(NULL);
  enum { MANY = 3000 };
  tdm_future **many = malloc(MANY * sizeof *many);
  CHECK(many != NULL);
  for (int i = 0; i < MANY; i++)
    many[i] = submit(p, task_who, NULL, 0);
  CHECK_OK(tdm_future_wait(many[MANY / 10], cap()));
  CHECK_OK(tdm_pool_terminate(p));
  CHECK_EQ(tdm_future_state_get(many[MANY / 10]), TDM_FUTURE_DONE);
  int ndone = 0, ncancelled = 0;
  for (int i = 0; i < MANY; i++) {
    CHECK(tdm_future_done(many[i]));
    if (tdm_future_state_get(many[i]) == TDM_FUTURE_DONE) {
      who_of(many[i]);
      ndone++;
    } else {
      check_cancelled(many[i]);
      ncancelled++;
    }
    tdm_future_free(many[i]);
  }
  CHECK(ndone >= 1 && ndone + ncancelled == MANY);
  printf("   terminated after %d tasks of %d ended DONE\n", ndone, MANY);
  CHECK_OK(tdm_pool_close(p));
  free(many);

  /* A map in another thread when the pool is terminated: -ECANCELED, and the items not run
   * say so. */
  p = open_pool(NULL);
  atomic_store(&b->counter, 0);
  struct map_thread m = { .p = p, .n = 20000, .arg = job(b, 0, 1) };
  m.in = iota64(m.n);
  m.out = malloc(m.n * sizeof *m.out);
  m.errors = malloc(m.n * sizeof *m.errors);
  CHECK(m.out != NULL && m.errors != NULL);
  for (size_t i = 0; i < m.n; i++)
    m.errors[i] = -12345;
  CHECK_OK(pthread_create(&th, NULL, run_map, &m));
  WAIT_UNTIL(atomic_load(&b->counter) >= 10);
  CHECK_OK(tdm_pool_terminate(p));
  CHECK_OK(pthread_join(th, NULL));
  CHECK_RC(m.rc, -ECANCELED);
  size_t not_run = 0;
  for (size_t i = 0; i < m.n; i++) {
    if (m.errors[i] == -ECANCELED) {
      not_run++;
    } else {
      CHECK_EQ(m.errors[i], 0);
      CHECK_EQ(m.out[i], m.in[i] * m.in[i]);
    }
  }
  CHECK(not_run > 0);
  CHECK_OK(tdm_pool_close(p));
  free((void *)m.in);
  free(m.out);
  free(m.errors);

  /* The ranks are free again. */
  p = open_pool(NULL);
  run_who(p);
  CHECK_OK(tdm_pool_close(p));
}

/* ---- Cases: hybrid --------------------------------------------------------------------------- */

static void hybrid_common(tdm_pool *p) {
  enum { N = 200 };
  tdm_future *fs[N];
  for (int i = 0; i < N; i++)
    fs[i] = submit(p, task_who, NULL, 0);
  for (int i = 0; i < N; i++) {
    who_of(fs[i]);
    tdm_future_free(fs[i]);
  }
  const size_t n = 100000;
  int64_t *in = iota64(n), *out = malloc(n * sizeof *out);
  CHECK(out != NULL);
  struct affine a = { 7, 1 };
  tdm_map_options mo = { .arg = &a, .arg_size = sizeof a };
  CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, n, &mo));
  check_squares(in, out, n, &a);
  mo.chunk = 100;
  memset(out, 0, n * sizeof *out);
  CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, n, &mo));
  check_squares(in, out, n, &a);
  free(in);
  free(out);
}

static void case_hybrid(void) {
  static const tdm_pool_backend backends[] = { TDM_POOL_THREADS, TDM_POOL_PROCESSES,
                                               TDM_POOL_AUTO };
  for (size_t k = 0; k < 3; k++) {
    tdm_pool_options o = cluster_options();
    o.rank_workers = 2;
    o.rank_backend = backends[k];
    tdm_pool *p = open_pool(&o);
    CHECK_EQ(tdm_pool_backend_get(p), TDM_POOL_CLUSTER);
    hybrid_common(p);
    if (backends[k] == TDM_POOL_PROCESSES) {
      /* A crash kills a process of the rank, not the job. */
      tdm_future *c = submit(p, task_crash, NULL, 0);
      check_failed(c, TDM_EWORKER, -SIGSEGV, false);
      tdm_future *a = submit(p, task_abort, NULL, 0);
      check_failed(a, TDM_EWORKER, -SIGABRT, false);
      tdm_future_free(c);
      tdm_future_free(a);
      /* A timeout kills the process running the task. */
      struct job sj;
      memset(&sj, 0, sizeof sj);
      sj.ms = 2000;
      tdm_task_options to = { .timeout = TDM_MS(200) };
      int64_t t0 = tdm_clock_now();
      tdm_future *f = NULL;
      CHECK_OK(tdm_pool_submit(p, task_sleep, &sj, sizeof sj, &to, &f));
      check_failed(f, TDM_ETASKTIMEOUT, 0, true);
      CHECK(seconds_since(t0) >= 0.2);
      tdm_future_free(f);
      hybrid_common(p);
      /* The ranks' own pools' losses reach the pool's statistics with their later answers
       * (hybrid_common() gave every rank work after them): two deaths, three replacements. */
      tdm_pool_stats st;
      tdm_pool_stats_get(p, &st);
      CHECK(st.workers_lost >= 2);
      CHECK(st.workers_replaced >= 3);
    }
    CHECK_OK(tdm_pool_close(p));
  }
}

/* ---- Main ------------------------------------------------------------------------------------ */

struct tcase {
  const char *name;
  void (*fn)(void);
};

static const struct tcase cases[] = {
  { "info", case_info },           { "options", case_options },   { "map", case_map },
  { "large_map", case_large_map }, { "submit", case_submit },     { "balance", case_balance },
  { "imap", case_imap },           { "wait", case_wait },         { "stats", case_stats },
  { "workers", case_workers },     { "init", case_init },         { "timeout", case_timeout },
  { "cancel", case_cancel },       { "shutdown", case_shutdown }, { "terminate", case_terminate },
  { "hybrid", case_hybrid },       { "child", case_child },
};

/* Where no cluster can open: not started by mpirun (--ranks 0), or a job of one rank. */
static void case_no_cluster(void) {
  CHECK_RC(tdm_cluster_status(), TDM_ECLUSTER);
  CHECK_EQ(tdm_cluster_size(), 1);
  tdm_pool_options o = cluster_options();
  tdm_pool *sentinel = (tdm_pool *)(uintptr_t)0x5a5a, *p = sentinel;
  CHECK_RC(tdm_pool_open(&p, &o), TDM_ECLUSTER);
  o.rank_workers = 2;
  CHECK_RC(tdm_pool_open(&p, &o), TDM_ECLUSTER);
  CHECK(p == sentinel);
  /* The other backends work as ever. */
  o.backend = TDM_POOL_THREADS;
  o.rank_workers = 0;
  CHECK_OK(tdm_pool_open(&p, &o));
  int64_t in[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, out[10];
  CHECK_OK(tdm_pool_map(p, item_square, in, sizeof *in, out, sizeof *out, 10, NULL));
  check_squares(in, out, 10, NULL);
  CHECK_OK(tdm_pool_close(p));
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int ranks = -1;
  int first = 1;
  if (argc == 4 && strcmp(argv[1], "--child") == 0) return child_main(atoi(argv[2]), atoi(argv[3]));
  if (argc >= 3 && strcmp(argv[1], "--ranks") == 0) {
    ranks = atoi(argv[2]);
    first = 3;
  }
  if (ranks < 0) {
    fprintf(stderr,
            "usage: mpirun -np N %s --ranks N [PATTERN...]\n"
            "       %s --ranks 0 (not under mpirun)\n",
            argv[0], argv[0]);
    return 2;
  }
  int64_t t0 = tdm_clock_now();
  if (ranks == 0 || ranks == 1) {
    current_case = "no_cluster";
    CHECK_EQ(tdm_cluster_rank(), ranks == 0 ? -1 : 0);
    case_no_cluster();
    printf("ok no_cluster (%.2f s)\n", seconds_since(t0));
    return 0;
  }
  if (tdm_cluster_rank() != 0)
    fail(__FILE__, __LINE__, "main() runs on rank %d of %d (only rank 0 may reach it)",
         tdm_cluster_rank(), tdm_cluster_size());
  CHECK_EQ(tdm_cluster_size(), ranks);
  W = ranks - 1;
  CHECK(W < MAX_RANKS);
  CHECK_OK(atexit(boards_release));
  int run = 0;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    bool wanted = first >= argc;
    for (int a = first; a < argc && !wanted; a++)
      wanted = strstr(cases[c].name, argv[a]) != NULL;
    if (!wanted) continue;
    current_case = cases[c].name;
    int64_t t = tdm_clock_now();
    cases[c].fn();
    printf("ok %s (%.2f s)\n", cases[c].name, seconds_since(t));
    run++;
  }
  current_case = "main";
  printf("%d cases passed on %d worker ranks in %.2f s\n", run, W, seconds_since(t0));
  return 0;
}
