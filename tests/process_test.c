/*
 * process_test.c: processes under every start method: exit codes and signals, join timeouts,
 * terminate/kill/interrupt, sentinels under poll, the calling process's identity, daemons that
 * die with their parent (SIGKILLed) together with their descendants, process groups, passing
 * descriptors, tasks in dlopen'ed libraries, failures (process limit, missing function, bad
 * arguments) that leave nothing behind, and 1,000 start/join cycles without a leak.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

static const tdm_start_method methods[] = { TDM_START_FORK, TDM_START_SPAWN, TDM_START_FORKSERVER };
#define N_METHODS 3

static tdm_process *start(tdm_process_fn fn, const void *arg, size_t size, tdm_start_method m) {
  tdm_process *p = NULL;
  tdm_process_options o = { .start = m };
  CHECK_OK(tdm_process_start(&p, fn, arg, size, &o));
  CHECK(p != NULL);
  return p;
}

static int join_code(tdm_process *p) {
  CHECK_OK(tdm_process_join(p, TDM_FOREVER));
  int code = 12345;
  CHECK_OK(tdm_process_exitcode(p, &code));
  CHECK_OK(tdm_process_close(p));
  return code;
}

/* True when no child of ours has ended without being reaped. */
static bool no_zombies(void) {
  siginfo_t info;
  memset(&info, 0, sizeof info);
  int r = waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT);
  return (r != 0 && errno == ECHILD) || (r == 0 && info.si_pid == 0);
}

static void start_threads(int n, pthread_t *t, tdm_event *stop);

/* ---- Tasks ----------------------------------------------------------------------------------- */

static int return_arg(void *arg, size_t size) {
  CHECK_EQ(size, sizeof(int));
  int v;
  memcpy(&v, arg, sizeof v);
  return v;
}

/* Sums a large argument: the child must see every byte the parent sent. */
static int checksum(void *arg, size_t size) {
  const unsigned char *b = arg;
  uint32_t sum = 0;
  for (size_t i = 0; i < size; i++)
    sum = sum * 31 + b[i];
  return (int)(sum % 251);
}

static int arg_is_null(void *arg, size_t size) {
  return arg == NULL && size == 0 ? 0 : 1;
}

static int die_by_signal(void *arg, size_t size) {
  (void)size;
  int sig;
  memcpy(&sig, arg, sizeof sig);
  signal(sig, SIG_DFL);
  kill(getpid(), sig);
  return 99;
}

/*
 * Waits until the pipe {read end, write end} in its argument reads end of file. The read end
 * is passed at the same number (pass_fds); a fork child also inherits the write end, and closes
 * it (the pipe is close-on-exec, so the other children never have it).
 */
static int wait_for_eof(void *arg, size_t size) {
  CHECK_EQ(size, 2 * sizeof(int));
  int fds[2];
  memcpy(fds, arg, sizeof fds);
  /* Under spawn and forkserver the number of the write end may be another descriptor here. */
  struct stat st0, st1;
  if (fstat(fds[0], &st0) == 0 && fstat(fds[1], &st1) == 0 && st0.st_ino == st1.st_ino &&
      S_ISFIFO(st1.st_mode))
    close(fds[1]);
  char c;
  while (read(fds[0], &c, 1) != 0) {
  }
  return 5;
}

static int sleep_forever(void *arg, size_t size) {
  (void)arg;
  (void)size;
  for (;;)
    pause();
  return 0;
}

/* ---- Start methods, exit codes --------------------------------------------------------------- */

static void exit_codes_all_methods(void) {
  for (int m = 0; m < N_METHODS; m++) {
    for (int v = 0; v < 256; v += 85) {
      tdm_process *p = start(return_arg, &v, sizeof v, methods[m]);
      CHECK_EQ(tdm_process_method(p), methods[m]);
      CHECK(tdm_process_pid(p) > 0);
      CHECK_EQ(join_code(p), v);
    }
    /* With size 0 the task gets NULL, whatever the caller passed. */
    int ignored = 0;
    CHECK_EQ(join_code(start(arg_is_null, &ignored, 0, methods[m])), 0);
    /* A large argument arrives whole. */
    size_t size = 3 * 1024 * 1024 + 7;
    unsigned char *big = malloc(size);
    CHECK(big != NULL);
    for (size_t i = 0; i < size; i++)
      big[i] = (unsigned char)(i * 7 + i / 1000);
    int want = checksum(big, size);
    CHECK_EQ(join_code(start(checksum, big, size, methods[m])), want);
    free(big);
  }
}

TEST(exit_codes_single_threaded) {
  exit_codes_all_methods();
}

TEST(exit_codes_multithreaded) {
  pthread_t t[3];
  tdm_event stop;
  start_threads(3, t, &stop);
  exit_codes_all_methods();
  tdm_event_set(&stop);
  for (int i = 0; i < 3; i++)
    pthread_join(t[i], NULL);
}

struct parked {
  tdm_event *stop;
  _Atomic int32_t tid;
};

static void *park(void *arg) {
  struct parked *me = arg;
  atomic_store(&me->tid, tdm_test_gettid());
  tdm_event_wait(me->stop, TDM_FOREVER);
  return NULL;
}

/*
 * Starts n threads that wait on `stop`, and returns once all of them sleep in the kernel. A
 * thread still starting may hold the sanitizers' allocator lock, which a fork child would then
 * wait on forever (GCC 12's libasan takes no such lock around fork); the library cannot help
 * that, so the cases fork only from a process whose other threads are parked.
 */
static void start_threads(int n, pthread_t *t, tdm_event *stop) {
  static struct parked parked[8];
  CHECK(n <= 8);
  CHECK_OK(tdm_event_init(stop, TDM_SYNC_PRIVATE));
  for (int i = 0; i < n; i++) {
    parked[i].stop = stop;
    atomic_store(&parked[i].tid, 0);
    CHECK(pthread_create(&t[i], NULL, park, &parked[i]) == 0);
  }
  for (int i = 0; i < n; i++) {
    WAIT_UNTIL(atomic_load(&parked[i].tid) != 0);
    WAIT_UNTIL(tdm_test_thread_sleeping(atomic_load(&parked[i].tid)));
  }
}

TEST(default_start_method) {
  CHECK_EQ(tdm_process_start_method(), TDM_START_FORK);
  int v = 3;
  tdm_process *p = start(return_arg, &v, sizeof v, TDM_START_DEFAULT);
  CHECK_EQ(tdm_process_method(p), TDM_START_FORK);
  CHECK_EQ(join_code(p), 3);
  pthread_t t[1];
  tdm_event stop;
  start_threads(1, t, &stop);
  CHECK_EQ(tdm_process_start_method(), TDM_START_FORKSERVER);
  p = start(return_arg, &v, sizeof v, TDM_START_DEFAULT);
  CHECK_EQ(tdm_process_method(p), TDM_START_FORKSERVER);
  CHECK_EQ(join_code(p), 3);
  CHECK_OK(tdm_process_set_start_method(TDM_START_SPAWN));
  CHECK_EQ(tdm_process_start_method(), TDM_START_SPAWN);
  p = start(return_arg, &v, sizeof v, TDM_START_DEFAULT);
  CHECK_EQ(tdm_process_method(p), TDM_START_SPAWN);
  CHECK_EQ(join_code(p), 3);
  CHECK_ERR(tdm_process_set_start_method((tdm_start_method)42), -EINVAL);
  CHECK_OK(tdm_process_set_start_method(TDM_START_DEFAULT));
  CHECK_EQ(tdm_process_start_method(), TDM_START_FORKSERVER);
  CHECK(strcmp(tdm_start_method_name(TDM_START_FORKSERVER), "forkserver") == 0);
  CHECK(tdm_start_method_name((tdm_start_method)42) == NULL);
  tdm_event_set(&stop);
  pthread_join(t[0], NULL);
}

/* ---- Signals --------------------------------------------------------------------------------- */

TEST(killed_by_signal_is_negative) {
  for (int m = 0; m < N_METHODS; m++) {
    int sig = SIGUSR1;
    CHECK_EQ(join_code(start(die_by_signal, &sig, sizeof sig, methods[m])), -SIGUSR1);
    sig = SIGKILL;
    CHECK_EQ(join_code(start(die_by_signal, &sig, sizeof sig, methods[m])), -SIGKILL);
  }
}

TEST(terminate_kill_interrupt) {
  for (int m = 0; m < N_METHODS; m++) {
    int (*send[3])(tdm_process *) = { tdm_process_terminate, tdm_process_kill,
                                      tdm_process_interrupt };
    int want[3] = { -SIGTERM, -SIGKILL, -SIGINT };
    for (int i = 0; i < 3; i++) {
      tdm_process *p = start(sleep_forever, NULL, 0, methods[m]);
      CHECK(tdm_process_is_alive(p));
      CHECK_OK(send[i](p));
      CHECK_EQ(join_code(p), want[i]);
    }
    /* Signalling a child that has ended is harmless. */
    int v = 0;
    tdm_process *p = start(return_arg, &v, sizeof v, methods[m]);
    CHECK_OK(tdm_process_join(p, TDM_FOREVER));
    CHECK_OK(tdm_process_terminate(p));
    CHECK_ERR(tdm_process_signal(p, -1), -EINVAL);
    CHECK_ERR(tdm_process_signal(p, 1000), -EINVAL);
    CHECK_OK(tdm_process_close(p));
  }
}

TEST(no_signal_disposition_changed) {
  struct sigaction before, after;
  sigaction(SIGCHLD, NULL, &before);
  sigset_t mask_before, mask_after;
  sigemptyset(&mask_before);
  sigemptyset(&mask_after);
  sigprocmask(SIG_BLOCK, NULL, &mask_before);
  for (int m = 0; m < N_METHODS; m++) {
    int v = 1;
    CHECK_EQ(join_code(start(return_arg, &v, sizeof v, methods[m])), 1);
  }
  sigaction(SIGCHLD, NULL, &after);
  sigprocmask(SIG_BLOCK, NULL, &mask_after);
  CHECK(after.sa_handler == SIG_DFL && before.sa_handler == SIG_DFL);
  for (int sig = 1; sig < NSIG; sig++)
    CHECK_EQ(sigismember(&mask_before, sig), sigismember(&mask_after, sig));
}

/* ---- Join, is_alive, close, sentinels ---------------------------------------------------------
 */

TEST(join_timeout_and_busy) {
  for (int m = 0; m < N_METHODS; m++) {
    int fds[2];
    CHECK(pipe2(fds, O_CLOEXEC) == 0);
    tdm_process_options o = { .start = methods[m], .pass_fds = &fds[0], .n_pass_fds = 1 };
    tdm_process *p = NULL;
    CHECK_OK(tdm_process_start(&p, wait_for_eof, fds, sizeof fds, &o));
    close(fds[0]);
    CHECK_ERR(tdm_process_join(p, TDM_MS(30)), -ETIMEDOUT);
    CHECK_ERR(tdm_process_join(p, 0), -ETIMEDOUT);
    CHECK(tdm_process_is_alive(p));
    int code = 777;
    CHECK_ERR(tdm_process_exitcode(p, &code), -EBUSY);
    CHECK_EQ(code, 777);
    CHECK_ERR(tdm_process_close(p), -EBUSY);
    close(fds[1]); /* the child sees end of file and returns 5 */
    CHECK_OK(tdm_process_join(p, TDM_FOREVER));
    CHECK(!tdm_process_is_alive(p));
    CHECK_OK(tdm_process_join(p, 0)); /* joining again is fine */
    CHECK_OK(tdm_process_exitcode(p, &code));
    CHECK_EQ(code, 5);
    CHECK_OK(tdm_process_close(p));
  }
  CHECK_OK(tdm_process_close(NULL));
}

/* Children that end in the order the parent chooses; poll() on their sentinels says which. */
TEST(sentinels_under_poll) {
  for (int m = 0; m < N_METHODS; m++) {
    enum { N = 3 };
    tdm_process *p[N];
    for (int i = 0; i < N; i++)
      p[i] = start(sleep_forever, NULL, 0, methods[m]);
    int order[N] = { 1, 2, 0 };
    bool done[N] = { false };
    for (int k = 0; k < N; k++) {
      struct pollfd pf[N];
      for (int i = 0; i < N; i++)
        pf[i] = (struct pollfd){ .fd = tdm_process_sentinel(p[i]), .events = POLLIN };
      CHECK_EQ(poll(pf, N, 0), k); /* exactly the ones that ended so far */
      CHECK_OK(tdm_process_kill(p[order[k]]));
      /* Wait for the killed one alone, then look at all. */
      struct pollfd one = { .fd = tdm_process_sentinel(p[order[k]]), .events = POLLIN };
      while (poll(&one, 1, -1) < 0)
        CHECK_EQ(errno, EINTR);
      CHECK_EQ(poll(pf, N, 0), k + 1);
      for (int i = 0; i < N; i++) {
        bool r = (pf[i].revents & POLLIN) != 0;
        CHECK_EQ(r, done[i] || i == order[k]);
      }
      done[order[k]] = true;
    }
    for (int i = 0; i < N; i++)
      CHECK_EQ(join_code(p[i]), -SIGKILL);
  }
}

TEST(active_children) {
  tdm_process *out[8];
  CHECK_EQ(tdm_process_active_children(out, 8), 0);
  tdm_process *p[N_METHODS];
  for (int m = 0; m < N_METHODS; m++)
    p[m] = start(sleep_forever, NULL, 0, methods[m]);
  CHECK_EQ(tdm_process_active_children(out, 8), 3);
  CHECK_EQ(tdm_process_active_children(out, 1), 3);
  CHECK_EQ(tdm_process_active_children(NULL, 0), 3);
  CHECK_OK(tdm_process_kill(p[1]));
  WAIT_UNTIL(tdm_process_active_children(out, 8) == 2);
  CHECK(out[0] == p[0] && out[1] == p[2]);
  CHECK(!tdm_process_is_alive(p[1]));
  for (int m = 0; m < N_METHODS; m++) {
    CHECK_OK(tdm_process_kill(p[m]));
    CHECK_EQ(join_code(p[m]), -SIGKILL);
  }
  CHECK_EQ(tdm_process_active_children(out, 8), 0);
}

/* ---- Identity -------------------------------------------------------------------------------- */

struct identity {
  int fd;
  pid_t parent;
};

/* Writes what the child sees of itself to the descriptor in its argument. */
static int report_identity(void *arg, size_t size) {
  (void)size;
  struct identity id;
  memcpy(&id, arg, sizeof id);
  char comm[64] = "";
  int c = open("/proc/self/comm", O_RDONLY);
  ssize_t n = c >= 0 ? read(c, comm, sizeof comm - 1) : 0;
  if (n > 0 && comm[n - 1] == '\n') comm[n - 1] = '\0';
  if (c >= 0) close(c);
  char buf[512];
  int len = snprintf(buf, sizeof buf, "%s|%s|%d|%d|%d", tdm_process_current_name(), comm,
                     tdm_process_parent_pid() == id.parent, tdm_process_is_daemon(),
                     getpgrp() == getpid());
  return write(id.fd, buf, (size_t)len) == len ? 0 : 1;
}

TEST(child_identity) {
  for (int m = 0; m < N_METHODS; m++) {
    for (int daemon = 0; daemon < 2; daemon++) {
      int fds[2];
      CHECK(pipe(fds) == 0);
      struct identity id = { fds[1], getpid() };
      tdm_process_options o = { .name = "worker-ü-0123456789",
                                .start = methods[m],
                                .daemon = daemon,
                                .pass_fds = &fds[1],
                                .n_pass_fds = 1 };
      tdm_process *p;
      CHECK_OK(tdm_process_start(&p, report_identity, &id, sizeof id, &o));
      CHECK(strcmp(tdm_process_name(p), "worker-ü-0123456789") == 0);
      CHECK_EQ(tdm_process_daemon(p), daemon);
      close(fds[1]);
      CHECK_EQ(join_code(p), 0);
      char buf[512] = "";
      ssize_t n = read(fds[0], buf, sizeof buf - 1);
      CHECK(n > 0);
      close(fds[0]);
      char want[512];
      /* ps shows the first 15 bytes, cut at a character boundary ("ü" is 2 bytes). */
      snprintf(want, sizeof want, "worker-ü-0123456789|worker-ü-01234|1|%d|%d", daemon, daemon);
      if (strcmp(buf, want) != 0) tdm_test_fail(__FILE__, __LINE__, "saw %s, want %s", buf, want);
    }
  }
  /* The parent is "MainProcess" until it names itself. */
  CHECK(strcmp(tdm_process_current_name(), "MainProcess") == 0);
  CHECK_EQ(tdm_process_parent_pid(), getppid());
  CHECK(!tdm_process_is_daemon());
  CHECK_OK(tdm_process_set_name("renamed"));
  CHECK(strcmp(tdm_process_current_name(), "renamed") == 0);
  CHECK_ERR(tdm_process_set_name(""), -EINVAL);
  CHECK_ERR(tdm_process_set_name(NULL), -EINVAL);
  char longest[257];
  memset(longest, 'n', 256);
  longest[256] = '\0';
  CHECK_ERR(tdm_process_set_name(longest), -EINVAL);
  CHECK(strcmp(tdm_process_current_name(), "renamed") == 0);
  longest[255] = '\0';
  CHECK_OK(tdm_process_set_name(longest));
  CHECK(strcmp(tdm_process_current_name(), longest) == 0);
  /* Default names count up. */
  int v = 0;
  tdm_process *a = start(return_arg, &v, sizeof v, TDM_START_FORK);
  tdm_process *b = start(return_arg, &v, sizeof v, TDM_START_FORK);
  unsigned na, nb;
  CHECK(sscanf(tdm_process_name(a), "Process-%u", &na) == 1);
  CHECK(sscanf(tdm_process_name(b), "Process-%u", &nb) == 1);
  CHECK_EQ(nb, na + 1);
  join_code(a);
  join_code(b);
}

static int try_to_start_child(void *arg, size_t size) {
  (void)arg;
  (void)size;
  tdm_process *p = NULL;
  int v = 0;
  int r = tdm_process_start(&p, return_arg, &v, sizeof v, NULL);
  return r == TDM_EDAEMON && p == NULL ? 0 : 1;
}

TEST(daemon_may_not_start_children) {
  for (int m = 0; m < N_METHODS; m++) {
    tdm_process_options o = { .start = methods[m], .daemon = true };
    tdm_process *p;
    CHECK_OK(tdm_process_start(&p, try_to_start_child, NULL, 0, &o));
    CHECK_EQ(join_code(p), 0);
  }
}

/* ---- Daemons die with their parent ----------------------------------------------------------- */

/* A daemon that forks a grandchild (raw fork, in its group), reports both pids, and waits. */
static int daemon_with_grandchild(void *arg, size_t size) {
  (void)size;
  int fd;
  memcpy(&fd, arg, sizeof fd);
  pid_t g = fork();
  if (g == 0) {
    for (;;)
      pause();
  }
  char buf[64];
  int n = snprintf(buf, sizeof buf, "%d %d\n", (int)getpid(), (int)g);
  if (write(fd, buf, (size_t)n) != n) return 1;
  close(fd);
  for (;;)
    pause();
}

/* Starts a daemon under every start method, then waits to be killed. Args: "threads" or not. */
HELPER(daemon_parent) {
  pthread_t t[2];
  tdm_event stop;
  if (argc > 1 && strcmp(argv[1], "threads") == 0) start_threads(2, t, &stop);
  int out = STDOUT_FILENO;
  for (int m = 0; m < N_METHODS; m++) {
    tdm_process_options o = {
      .start = methods[m], .daemon = true, .pass_fds = &out, .n_pass_fds = 1
    };
    tdm_process *p;
    int r = tdm_process_start(&p, daemon_with_grandchild, &out, sizeof out, &o);
    if (r != 0) {
      fprintf(stderr, "start: %s\n", tdm_strerror(r));
      return 1;
    }
  }
  for (;;)
    pause();
}

static void daemons_die_with_parent(const char *mode) {
  int out;
  char *args[] = { (char *)mode, NULL };
  pid_t helper = tdm_test_spawn_helper("daemon_parent", args, &out);
  FILE *f = fdopen(out, "r");
  CHECK(f != NULL);
  pid_t pids[2 * N_METHODS];
  for (int m = 0; m < N_METHODS; m++) {
    int d, g;
    CHECK(fscanf(f, "%d %d", &d, &g) == 2);
    pids[2 * m] = d;
    pids[2 * m + 1] = g;
  }
  fclose(f);
  for (int i = 0; i < 2 * N_METHODS; i++)
    CHECK(!tdm_test_process_gone(pids[i]));
  tdm_test_kill_and_reap(helper);
  /* Within a second is the goal; WAIT_UNTIL allows more so that a slow machine does not fail. */
  for (int i = 0; i < 2 * N_METHODS; i++) {
#ifdef __SANITIZE_THREAD__
    /* TSan builds cannot give a daemon forked from a multithreaded parent its watcher thread:
     * PR_SET_PDEATHSIG kills the daemon, and its own descendants outlive it (docs/process.md). */
    if (i == 1 && strcmp(mode, "threads") == 0) {
      kill(pids[i], SIGKILL);
      continue;
    }
#endif
    WAIT_UNTIL(tdm_test_process_gone(pids[i]));
  }
}

TEST(daemons_and_descendants_die_with_sigkilled_parent) {
  daemons_die_with_parent("single");
}

TEST(daemons_die_with_multithreaded_parent) {
  daemons_die_with_parent("threads");
}

/* A child with a group of its own; its grandchild stays in that group. */
static int group_with_grandchild(void *arg, size_t size) {
  return daemon_with_grandchild(arg, size);
}

TEST(signal_tree_reaches_descendants) {
  for (int m = 0; m < N_METHODS; m++) {
    int fds[2];
    CHECK(pipe(fds) == 0);
    tdm_process_options o = {
      .start = methods[m], .new_group = true, .pass_fds = &fds[1], .n_pass_fds = 1
    };
    tdm_process *p;
    CHECK_OK(tdm_process_start(&p, group_with_grandchild, &fds[1], sizeof fds[1], &o));
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    int d, g;
    CHECK(fscanf(f, "%d %d", &d, &g) == 2);
    fclose(f);
    CHECK_EQ(d, tdm_process_pid(p));
    CHECK(!tdm_test_process_gone(g));
    CHECK_OK(tdm_process_signal_tree(p, SIGKILL));
    CHECK_EQ(join_code(p), -SIGKILL);
    WAIT_UNTIL(tdm_test_process_gone(g));
    /* The grandchild was reparented to the runner (a subreaper), which reaps it later. */
  }
  tdm_process *p = start(sleep_forever, NULL, 0, TDM_START_FORK);
  CHECK_ERR(tdm_process_signal_tree(p, SIGKILL), -ENOTSUP);
  CHECK_ERR(tdm_process_signal_tree(p, -1), -EINVAL);
  CHECK_ERR(tdm_process_signal_tree(p, NSIG), -EINVAL);
  CHECK_OK(tdm_process_kill(p));
  CHECK_EQ(join_code(p), -SIGKILL);
}

/* ---- Descriptors ----------------------------------------------------------------------------- */

static int write_to_fd_50(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return write(50, "x", 1) == 1 ? 0 : 1;
}

TEST(pass_fds_at_the_same_number) {
  for (int m = 0; m < N_METHODS; m++) {
    int fds[2];
    CHECK(pipe2(fds, O_CLOEXEC) == 0);
    CHECK(dup3(fds[1], 50, O_CLOEXEC) == 50);
    close(fds[1]);
    int fd = 50;
    tdm_process_options o = { .start = methods[m], .pass_fds = &fd, .n_pass_fds = 1 };
    tdm_process *p;
    CHECK_OK(tdm_process_start(&p, write_to_fd_50, NULL, 0, &o));
    close(50);
    CHECK_EQ(join_code(p), 0);
    char c;
    CHECK_EQ(read(fds[0], &c, 1), 1);
    CHECK_EQ(c, 'x');
    close(fds[0]);
  }
}

/* Writes a byte to each of the 64 descriptors listed in its argument. */
static int write_to_each(void *arg, size_t size) {
  int fds[64];
  CHECK_EQ(size, sizeof fds);
  memcpy(fds, arg, sizeof fds);
  for (int i = 0; i < 64; i++)
    if (write(fds[i], "x", 1) != 1) return 1;
  return 0;
}

/* The most pass_fds there may be: a forkserver child gets the standard streams on top. */
TEST(sixty_four_pass_fds) {
  for (int m = 0; m < N_METHODS; m++) {
    int pipefd[2], many[64];
    CHECK(pipe2(pipefd, O_CLOEXEC) == 0);
    for (int i = 0; i < 64; i++)
      CHECK_EQ(dup3(pipefd[1], 100 + i, O_CLOEXEC), 100 + i);
    close(pipefd[1]);
    for (int i = 0; i < 64; i++)
      many[i] = 100 + i;
    tdm_process_options o = { .start = methods[m], .pass_fds = many, .n_pass_fds = 64 };
    tdm_process *p;
    CHECK_OK(tdm_process_start(&p, write_to_each, many, sizeof many, &o));
    for (int i = 0; i < 64; i++)
      close(many[i]);
    CHECK_EQ(join_code(p), 0);
    char buf[128];
    size_t got = 0;
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0)
      got += (size_t)n;
    CHECK_EQ(got, 64);
    close(pipefd[0]);
  }
}

/* ---- Failures -------------------------------------------------------------------------------- */

TEST(bad_arguments) {
  tdm_process *p = (tdm_process *)0x1;
  int v = 0;
  CHECK_ERR(tdm_process_start(NULL, return_arg, &v, sizeof v, NULL), -EINVAL);
  CHECK_ERR(tdm_process_start(&p, NULL, NULL, 0, NULL), -EINVAL);
  CHECK_ERR(tdm_process_start(&p, return_arg, NULL, 4, NULL), -EINVAL);
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, TDM_PROCESS_ARG_MAX + 1, NULL), -E2BIG);
  tdm_process_options o = { .start = (tdm_start_method)9 };
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  int bad = 1000;
  o = (tdm_process_options){ .pass_fds = &bad, .n_pass_fds = 1 };
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  bad = -1;
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  o = (tdm_process_options){ .pass_fds = NULL, .n_pass_fds = 1 };
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  int many[65];
  for (int i = 0; i < 65; i++)
    many[i] = STDERR_FILENO;
  o = (tdm_process_options){ .pass_fds = many, .n_pass_fds = 65 };
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  o = (tdm_process_options){ .name = "" };
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  static char name[4098];
  memset(name, 'n', 4097);
  o = (tdm_process_options){ .name = name };
  CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EINVAL);
  CHECK(p == (tdm_process *)0x1);
  CHECK(no_zombies());
  /* 4096 bytes is the longest name, under every method. */
  name[4096] = '\0';
  for (int m = 0; m < N_METHODS; m++) {
    o = (tdm_process_options){ .name = name, .start = methods[m] };
    CHECK_OK(tdm_process_start(&p, return_arg, &v, sizeof v, &o));
    CHECK(strcmp(tdm_process_name(p), name) == 0);
    CHECK_EQ(join_code(p), 0);
  }
}

/* Under RLIMIT_NPROC (as an unprivileged user: root is exempt) no start method can make a
 * process: each says -EAGAIN, and nothing is left behind. */
static void limited(void *arg) {
  (void)arg;
  if (getuid() == 0) {
    CHECK(setgid(65534) == 0);
    CHECK(setuid(65534) == 0);
  }
  struct rlimit rl = { 0, 0 };
  CHECK(setrlimit(RLIMIT_NPROC, &rl) == 0);
  int before = tdm_test_count_fds();
  for (int m = 0; m < N_METHODS; m++) {
    tdm_process *p = NULL;
    int v = 0;
    tdm_process_options o = { .start = methods[m] };
    CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EAGAIN);
    CHECK(p == NULL);
    o.daemon = true;
    CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -EAGAIN);
  }
  /* The death pipe made for the daemons stays, for the next one: two descriptors. */
  CHECK_EQ(tdm_test_count_fds(), before + 2);
  CHECK(no_zombies());
}

TEST(process_limit_is_eagain) {
  tdm_test_wait_ok(tdm_test_fork(limited, NULL));
}

/* An environment too large for execve(): spawn (and the start of a forkserver, itself a
 * spawn) fail with exec's own -E2BIG, and leave nothing; fork does not exec and works. */
static void huge_environment(void *arg) {
  (void)arg;
  size_t n = 256 * 1024; /* beyond the kernel's 128 KiB limit for one string */
  char *big = malloc(n + 1);
  CHECK(big != NULL);
  memset(big, 'x', n);
  big[n] = '\0';
  CHECK(setenv("TDM_TEST_HUGE", big, 1) == 0);
  free(big);
  int before = tdm_test_count_fds();
  int v = 3;
  for (int m = 1; m < N_METHODS; m++) {
    tdm_process *p = NULL;
    tdm_process_options o = { .start = methods[m] };
    CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -E2BIG);
    CHECK(p == NULL);
  }
  CHECK_EQ(tdm_test_count_fds(), before);
  CHECK(no_zombies());
  CHECK_EQ(join_code(start(return_arg, &v, sizeof v, TDM_START_FORK)), 3);
}

TEST(exec_failure_is_reported) {
  tdm_test_wait_ok(tdm_test_fork(huge_environment, NULL));
}

static void *tasklib;

static tdm_process_fn tasklib_fn(const char *path) {
  tasklib = dlopen(path, RTLD_NOW);
  if (tasklib == NULL) tdm_test_fail(__FILE__, __LINE__, "dlopen: %s", dlerror());
  tdm_process_fn fn;
  void *sym = dlsym(tasklib, "tdm_tasklib_add_forty");
  CHECK(sym != NULL);
  memcpy(&fn, &sym, sizeof fn);
  return fn;
}

TEST(task_in_dlopened_library) {
  tdm_process_fn fn = tasklib_fn(TDM_TASKLIB_PATH);
  for (int m = 0; m < N_METHODS; m++) {
    int v = 2;
    CHECK_EQ(join_code(start(fn, &v, sizeof v, methods[m])), 42);
  }
}

/* The library is gone from disk by the time the child looks for it: spawn and forkserver
 * children cannot load it, and say so; a fork child has it mapped already. */
TEST(missing_function_is_enotask) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/tdm-tasklib-%d.so", (int)getpid());
  int in = open(TDM_TASKLIB_PATH, O_RDONLY), out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0700);
  CHECK(in >= 0 && out >= 0);
  char buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    CHECK_EQ(write(out, buf, (size_t)n), n);
  close(in);
  close(out);
  tdm_process_fn fn = tasklib_fn(path);
  unlink(path);
  int before = tdm_test_count_fds();
  int v = 1;
  for (int m = 1; m < N_METHODS; m++) {
    tdm_process *p = NULL;
    tdm_process_options o = { .start = methods[m] };
    CHECK_ERR(tdm_process_start(&p, fn, &v, sizeof v, &o), TDM_ENOTASK);
    CHECK(p == NULL);
  }
  CHECK_EQ(join_code(start(fn, &v, sizeof v, TDM_START_FORK)), 41);
  /* A function pointer that is in no loaded object at all. */
  tdm_process *p = NULL;
  tdm_process_options o = { .start = TDM_START_SPAWN };
  tdm_process_fn nowhere;
  uintptr_t addr = 0x10;
  memcpy(&nowhere, &addr, sizeof nowhere);
  CHECK_ERR(tdm_process_start(&p, nowhere, &v, sizeof v, &o), TDM_ENOTASK);
  /* The forkserver started above holds two descriptors of ours (its command socket, pidfd). */
  CHECK_EQ(tdm_test_count_fds(), before + 2);
  CHECK(no_zombies());
}

/* A child that dies while it boots (here: loading the library of its task kills it) is
 * TDM_ECHILDINIT for spawn and forkserver, and is reaped. */
static void child_dies_in_boot(void *arg) {
  (void)arg;
  tdm_process_fn fn = tasklib_fn(TDM_TASKLIB_PATH);
  CHECK(setenv("TDM_TASKLIB_DIE", "1", 1) == 0);
  int before = tdm_test_count_fds();
  int v = 1;
  for (int m = 1; m < N_METHODS; m++) {
    tdm_process *p = NULL;
    tdm_process_options o = { .start = methods[m] };
    CHECK_ERR(tdm_process_start(&p, fn, &v, sizeof v, &o), TDM_ECHILDINIT);
    CHECK(p == NULL);
  }
  CHECK_EQ(tdm_test_count_fds(), before + 2); /* + the forkserver's socket and pidfd */
  CHECK(no_zombies());
}

TEST(child_dying_in_boot_is_echildinit) {
  tdm_test_wait_ok(tdm_test_fork(child_dies_in_boot, NULL));
}

/* A child of ours that the program reaps itself: the handle sees it end, and its exit code is
 * lost (forkserver children are the forkserver's to reap). */
TEST(child_reaped_by_the_program) {
  for (int m = 0; m < 2; m++) {
    int v = 7;
    tdm_process *p = start(return_arg, &v, sizeof v, methods[m]);
    int status;
    CHECK_EQ(waitpid(tdm_process_pid(p), &status, 0), tdm_process_pid(p));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7);
    CHECK(!tdm_process_is_alive(p));
    CHECK_OK(tdm_process_join(p, TDM_FOREVER));
    int code = 12345;
    CHECK_ERR(tdm_process_exitcode(p, &code), -ECHILD);
    CHECK_EQ(code, 12345);
    CHECK_OK(tdm_process_close(p));
  }
}

/* Run as "ld.so PROGRAM --helper start_under_loader": /proc/self/exe is the loader, so spawn and
 * forkserver cannot re-exec the program and say -ENOTSUP; fork works. */
HELPER(start_under_loader) {
  (void)argc;
  (void)argv;
  int v = 4;
  for (int m = 1; m < N_METHODS; m++) {
    tdm_process *p = NULL;
    tdm_process_options o = { .start = methods[m] };
    CHECK_ERR(tdm_process_start(&p, return_arg, &v, sizeof v, &o), -ENOTSUP);
    CHECK(p == NULL);
  }
  CHECK_EQ(join_code(start(return_arg, &v, sizeof v, TDM_START_FORK)), 4);
  return 0;
}

/* dl_iterate_phdr() callback: the program's loader (PT_INTERP), from the first object. */
static int find_interp(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_INTERP)
      *(const char **)data = (const char *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
  return 1;
}

TEST(no_reexec_under_an_explicit_loader_is_enotsup) {
  const char *loader = NULL;
  dl_iterate_phdr(find_interp, &loader);
  if (loader == NULL) tdm_test_skip("a static program has no loader");
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  CHECK(n > 0);
  self[n] = '\0';
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    char *args[] = { (char *)loader, self, "--helper", "start_under_loader", NULL };
    execv(loader, args);
    _exit(127);
  }
  CHECK_EQ(tdm_test_wait(pid), 0);
}

/* ---- Leaks ----------------------------------------------------------------------------------- */

TEST_T(thousand_cycles_leave_nothing, 300) {
  int v = 1;
  /* Warm up: the forkserver and the death pipe are made once and kept. */
  for (int m = 0; m < N_METHODS; m++) {
    tdm_process_options o = { .start = methods[m], .daemon = true };
    tdm_process *p;
    CHECK_OK(tdm_process_start(&p, return_arg, &v, sizeof v, &o));
    CHECK_EQ(join_code(p), 1);
  }
  int before = tdm_test_count_fds();
  /* Under a sanitizer a fork costs 100 times more (TSan copies its shadow state): fewer. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  int rounds[N_METHODS] = { 200, 200, 200 };
#else
  int rounds[N_METHODS] = { 1000, 1000, 1000 };
#endif
  for (int m = 0; m < N_METHODS; m++) {
    for (int i = 0; i < rounds[m]; i++) {
      tdm_process_options o = { .start = methods[m], .daemon = (i % 2) == 0 };
      tdm_process *p;
      CHECK_OK(tdm_process_start(&p, return_arg, &v, sizeof v, &o));
      CHECK_EQ(join_code(p), 1);
    }
  }
  CHECK_EQ(tdm_test_count_fds(), before);
  CHECK(no_zombies());
  tdm_process *out[1];
  CHECK_EQ(tdm_process_active_children(out, 1), 0);
}

/* ---- Fork and the forkserver ----------------------------------------------------------------- */

static void inherited_handle(void *arg) {
  tdm_process *p = arg;
  CHECK_ERR(tdm_process_join(p, 0), -ECHILD);
  CHECK(!tdm_process_is_alive(p));
  int code = 12345;
  CHECK_ERR(tdm_process_exitcode(p, &code), -ECHILD);
  CHECK_EQ(code, 12345);
  CHECK_ERR(tdm_process_kill(p), -ECHILD);
  CHECK_ERR(tdm_process_signal_tree(p, SIGKILL), -ECHILD);
  tdm_process *out[1];
  CHECK_EQ(tdm_process_active_children(out, 1), 0);
  CHECK_OK(tdm_process_close(p));
}

TEST(handles_are_dead_in_a_forked_child) {
  tdm_process *p;
  tdm_process_options o = { .start = TDM_START_FORK, .new_group = true };
  CHECK_OK(tdm_process_start(&p, sleep_forever, NULL, 0, &o));
  tdm_test_wait_ok(tdm_test_fork(inherited_handle, p));
  CHECK(tdm_process_is_alive(p));
  CHECK_OK(tdm_process_kill(p));
  CHECK_EQ(join_code(p), -SIGKILL);
}

/* The forkserver's pid: our child named tdm-forkserver. */
static pid_t find_forkserver(void) {
  DIR *d = opendir("/proc");
  CHECK(d != NULL);
  struct dirent *e;
  pid_t found = 0;
  while ((e = readdir(d)) != NULL) {
    int pid = atoi(e->d_name);
    if (pid <= 0) continue;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    int ppid = 0;
    if (p != NULL && strstr(buf, "(tdm-forkserver)") != NULL && sscanf(p + 4, "%d", &ppid) == 1 &&
        ppid == getpid())
      found = pid;
  }
  closedir(d);
  return found;
}

TEST(forkserver_killed_is_replaced) {
  int fds[2];
  CHECK(pipe2(fds, O_CLOEXEC) == 0);
  tdm_process_options o = { .start = TDM_START_FORKSERVER, .pass_fds = &fds[0], .n_pass_fds = 1 };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, wait_for_eof, fds, sizeof fds, &o));
  close(fds[0]);
  pid_t fs = find_forkserver();
  CHECK(fs > 0);
  CHECK(kill(fs, SIGKILL) == 0);
  WAIT_UNTIL(tdm_test_process_gone(fs));
  /* The child lives on (its pidfd says so); its exit code dies with the forkserver. */
  CHECK(tdm_process_is_alive(p));
  CHECK_ERR(tdm_process_join(p, TDM_MS(20)), -ETIMEDOUT);
  CHECK_ERR(tdm_process_close(p), -EBUSY);
  close(fds[1]);
  CHECK_OK(tdm_process_join(p, TDM_FOREVER));
  int code;
  CHECK_ERR(tdm_process_exitcode(p, &code), -ECHILD);
  CHECK_OK(tdm_process_close(p));
  /* The next start gets a new forkserver. */
  int v = 9;
  CHECK_EQ(join_code(start(return_arg, &v, sizeof v, TDM_START_FORKSERVER)), 9);
  pid_t fs2 = find_forkserver();
  CHECK(fs2 > 0 && fs2 != fs);
  CHECK(no_zombies());
}

/* The forkserver ends with its parent, and is never a child that a wait() of the program could
 * block on for ever: it ends as soon as the program's last reference to it closes. */
static void forkserver_parent(void *arg) {
  int *out = arg;
  int v = 0;
  CHECK_EQ(join_code(start(return_arg, &v, sizeof v, TDM_START_FORKSERVER)), 0);
  pid_t fs = find_forkserver();
  CHECK(fs > 0);
  CHECK(write(out[1], &fs, sizeof fs) == sizeof fs);
  _exit(0);
}

TEST(forkserver_ends_with_its_parent) {
  int *pipefd = tdm_test_shared(sizeof(int) * 2);
  CHECK(pipe(pipefd) == 0);
  pid_t c = tdm_test_fork(forkserver_parent, pipefd);
  close(pipefd[1]);
  pid_t fs = 0;
  CHECK_EQ(read(pipefd[0], &fs, sizeof fs), sizeof fs);
  CHECK_EQ(tdm_test_wait(c), 0);
  WAIT_UNTIL(tdm_test_process_gone(fs));
}

/* ---- Shared memory under every start method -------------------------------------------------- */

struct shm_job {
  char name[64]; /* attach by name; empty: attach the descriptor */
  int fd;
  int value;
};

static int write_segment(void *arg, size_t size) {
  CHECK_EQ(size, sizeof(struct shm_job));
  struct shm_job job;
  memcpy(&job, arg, sizeof job);
  tdm_shm *s;
  if (job.name[0] != '\0')
    CHECK_OK(tdm_shm_attach(&s, job.name, 4096, NULL));
  else
    CHECK_OK(tdm_shm_attach_fd(&s, job.fd, 4096));
  CHECK(!tdm_shm_owned(s));
  int *words = tdm_shm_addr(s);
  words[0] = job.value;
  words[1] = (int)getpid();
  CHECK_OK(tdm_shm_close(s));
  return 0;
}

TEST(segments_shared_under_every_method) {
  char name[64];
  snprintf(name, sizeof name, "/tdm-process-test-%d", (int)getpid());
  tdm_shm *named, *anon;
  CHECK_OK(tdm_shm_create(&named, name, 4096, NULL));
  CHECK_OK(tdm_shm_create(&anon, NULL, 8192, NULL));
  for (int m = 0; m < N_METHODS; m++) {
    for (int by_fd = 0; by_fd < 2; by_fd++) {
      tdm_shm *s = by_fd ? anon : named;
      struct shm_job job = { .fd = tdm_shm_fd(anon), .value = 100 * m + by_fd };
      if (!by_fd) snprintf(job.name, sizeof job.name, "%s", name);
      tdm_process_options o = { .start = methods[m], .pass_fds = &job.fd, .n_pass_fds = by_fd };
      tdm_process *p;
      CHECK_OK(tdm_process_start(&p, write_segment, &job, sizeof job, &o));
      pid_t pid = tdm_process_pid(p);
      CHECK_EQ(join_code(p), 0);
      int *words = tdm_shm_addr(s);
      CHECK_EQ(words[0], 100 * m + by_fd);
      CHECK_EQ(words[1], pid);
    }
  }
  char path[96];
  snprintf(path, sizeof path, "/dev/shm%s", name);
  CHECK(access(path, F_OK) == 0); /* children only attached: nothing removed */
  CHECK_OK(tdm_shm_close(named));
  CHECK(access(path, F_OK) != 0);
  CHECK_OK(tdm_shm_close(anon));
}

static int say_hello(void *arg, size_t size) {
  (void)arg;
  (void)size;
  fputs("hello", stdout);
  return 0;
}

/* Standard streams are the caller's at the time of the start, under every method (for a
 * forkserver child too, though the forkserver started with other ones). */
TEST(children_get_the_current_stdout) {
  int v = 0;
  CHECK_EQ(join_code(start(return_arg, &v, sizeof v, TDM_START_FORKSERVER)), 0);
  for (int m = 0; m < N_METHODS; m++) {
    int fds[2];
    CHECK(pipe2(fds, O_CLOEXEC) == 0);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    CHECK(dup2(fds[1], STDOUT_FILENO) == STDOUT_FILENO);
    close(fds[1]);
    tdm_process *p = start(say_hello, NULL, 0, methods[m]);
    CHECK(dup2(saved, STDOUT_FILENO) == STDOUT_FILENO);
    close(saved);
    CHECK_EQ(join_code(p), 0);
    char buf[16] = "";
    CHECK_EQ(read(fds[0], buf, sizeof buf), 5);
    CHECK(memcmp(buf, "hello", 5) == 0);
    close(fds[0]);
  }
}
