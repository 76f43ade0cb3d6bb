/*
 * runner.h: tandem's test runner.
 *
 * A test executable holds cases (TEST) and helper programs (HELPER). Run without arguments, it
 * runs every case in a process of its own: it re-executes itself with `--run NAME`, in a new
 * process group, with the case's timeout; a crash, a hang or a failed check fails that case
 * alone, and any process the case left behind in its group fails it too. A case's output is
 * kept and shown only when it fails (or with -v).
 *
 *   prog [-v] [-j N] [PATTERN...]   run the cases whose names contain a PATTERN (all by default)
 *   prog --list                     list the cases
 *   prog --run NAME                 run one case in this process
 *   prog --helper NAME [ARGS...]    run a helper program (for cases that need a fresh process)
 *
 * Environment: TDM_TEST_TIMEOUT_SCALE multiplies every timeout (sanitizer builds set it).
 * Why not Criterion: see docs/architecture.md.
 */
#ifndef TDM_TEST_RUNNER_H
#define TDM_TEST_RUNNER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "tandem.h"

struct tdm_test_case {
  const char *name;
  void (*fn)(void);
  int timeout_s; /* 0: the default, 60 s */
};

struct tdm_test_helper {
  const char *name;
  int (*fn)(int argc, char **argv);
};

void tdm_test_register(const struct tdm_test_case *c);
void tdm_test_register_helper(const struct tdm_test_helper *h);

#define TEST_T(name, timeout)                                                \
  static void test_##name(void);                                             \
  __attribute__((constructor)) static void register_##name(void) {           \
    static const struct tdm_test_case c = { #name, test_##name, (timeout) }; \
    tdm_test_register(&c);                                                   \
  }                                                                          \
  static void test_##name(void)

#define TEST(name) TEST_T(name, 0)

#define HELPER(name)                                                      \
  static int helper_##name(int argc, char **argv);                        \
  __attribute__((constructor)) static void register_helper_##name(void) { \
    static const struct tdm_test_helper h = { #name, helper_##name };     \
    tdm_test_register_helper(&h);                                         \
  }                                                                       \
  static int helper_##name(int argc, char **argv)

/* Fails the current case (or helper process): prints the message and exits with status 99. */
_Noreturn void tdm_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) tdm_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); \
  } while (0)

#define CHECK_EQ(a, b)                                                                       \
  do {                                                                                       \
    long long va_ = (long long)(a), vb_ = (long long)(b);                                    \
    if (va_ != vb_)                                                                          \
      tdm_test_fail(__FILE__, __LINE__, "CHECK_EQ(%s, %s): %lld != %lld", #a, #b, va_, vb_); \
  } while (0)

/* Checks that a tandem call returned the code `code`. */
#define CHECK_ERR(expr, code)                                                               \
  do {                                                                                      \
    int r_ = (int)(expr), want_ = (int)(code);                                              \
    if (r_ != want_)                                                                        \
      tdm_test_fail(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s)", #expr, r_, \
                    tdm_err_name(r_), want_, tdm_err_name(want_));                          \
  } while (0)

#define CHECK_OK(expr) CHECK_ERR(expr, 0)

/*
 * Ends the current case as skipped, saying why: the runner reports it as "ok NAME # SKIP
 * reason", counts it apart from the passed ones, and a run where everything was skipped does
 * not pass. For cases that need something the machine may lack (root, a writable cgroup).
 */
_Noreturn void tdm_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- Helpers for cases ----------------------------------------------------------------------- */

/* Returns zeroed memory shared with children forked afterwards (MAP_SHARED | MAP_ANONYMOUS). */
void *tdm_test_shared(size_t size);
void tdm_test_unshare(void *p, size_t size);

/* Forks a child that runs fn(arg) and exits 0 (a failed CHECK in it exits 99). */
pid_t tdm_test_fork(void (*fn)(void *arg), void *arg);

/* Waits for a child and returns its wait status. */
int tdm_test_wait(pid_t pid);

/* Waits for a child and fails the case unless it exited with status 0. */
void tdm_test_wait_ok(pid_t pid);

/* Sends SIGKILL to a child, reaps it, and fails the case unless SIGKILL is what ended it. */
void tdm_test_kill_and_reap(pid_t pid);

/* The number of descriptors the calling process has open (from /proc/self/fd). */
int tdm_test_count_fds(void);

/*
 * Starts this executable as `--helper name args...` in a child process, with stdout connected to
 * a pipe whose read end goes to *out_fd (when out_fd is not NULL).
 */
pid_t tdm_test_spawn_helper(const char *name, char *const args[], int *out_fd);

/*
 * Runs fn(arg) in a forked child with stderr captured, and fails the case unless the child was
 * killed by SIGABRT with `message` somewhere in what it printed on stderr: the check for misuse.
 */
void tdm_test_expect_abort(void (*fn)(void *arg), void *arg, const char *message, const char *file,
                           int line);
#define EXPECT_ABORT(fn, arg, message) \
  tdm_test_expect_abort((fn), (arg), (message), __FILE__, __LINE__)

/* The factor TDM_TEST_TIMEOUT_SCALE puts on every timeout (1 when unset). */
double tdm_test_timeout_scale(void);

/*
 * Polls `cond` every millisecond and fails the case when it stays false for 20 s (times the
 * timeout scale). For waiting until another thread or process reaches a state, never for
 * measuring time.
 */
#define WAIT_UNTIL(cond)                                                                        \
  do {                                                                                          \
    int64_t until_ = tdm_clock_now() + (int64_t)((double)TDM_S(20) * tdm_test_timeout_scale()); \
    while (!(cond)) {                                                                           \
      if (tdm_clock_now() > until_)                                                             \
        tdm_test_fail(__FILE__, __LINE__, "WAIT_UNTIL(%s) never became true", #cond);           \
      tdm_clock_sleep(TDM_MS(1));                                                               \
    }                                                                                           \
  } while (0)

/* The calling thread's kernel id. */
int32_t tdm_test_gettid(void);

/*
 * True when the thread `tid` of this process, or the process `pid`, is asleep ('S' in /proc):
 * how a case knows that a waiter is parked in the kernel rather than merely about to wait.
 */
bool tdm_test_thread_sleeping(int32_t tid);
bool tdm_test_process_sleeping(pid_t pid);

/* True when the process `pid` has ended: it no longer exists, or is a zombie nobody reaped yet
 * (an orphan that went to a subreaper, say). */
bool tdm_test_process_gone(pid_t pid);

/* Starts a tandem thread running fn(arg) with default options; fails the case if it cannot. */
tdm_thread *tdm_test_thread(tdm_thread_fn fn, void *arg);

/* A small, fast, per-call-site random generator for stress cases (xorshift64*). */
static inline uint64_t tdm_test_rand(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * UINT64_C(2685821657736338717);
}

#endif /* TDM_TEST_RUNNER_H */
