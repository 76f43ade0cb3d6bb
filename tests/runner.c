/*
 * runner.c: runs test cases, each in a fresh process of its own (see runner.h).
 *
 * The runner process starts one child per case: fork, then in the child setpgid() and exec of
 * /proc/self/exe with `--run NAME`, stdout and stderr going to an anonymous file. Up to -j cases
 * run at once. The parent polls the children (waitpid WNOHANG every few milliseconds: simple and
 * independent of signals), kills a case's whole process group when its timeout passes, and
 * after a case ends checks that its group is empty: a case that leaves processes behind fails.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runner.h"

#define MAX_CASES         512
#define MAX_HELPERS       64
#define DEFAULT_TIMEOUT_S 60

static const struct tdm_test_case *cases[MAX_CASES];
static int ncases;
static const struct tdm_test_helper *helpers[MAX_HELPERS];
static int nhelpers;

void tdm_test_register(const struct tdm_test_case *c) {
  if (ncases == MAX_CASES) {
    fprintf(stderr, "runner: too many cases\n");
    exit(2);
  }
  cases[ncases++] = c;
}

void tdm_test_register_helper(const struct tdm_test_helper *h) {
  if (nhelpers == MAX_HELPERS) {
    fprintf(stderr, "runner: too many helpers\n");
    exit(2);
  }
  helpers[nhelpers++] = h;
}

_Noreturn void tdm_test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "FAIL %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " (pid %d)\n", (int)getpid());
  va_end(ap);
  fflush(stdout);
  fflush(stderr);
  _exit(99);
}

#define SKIP_STATUS 77

_Noreturn void tdm_test_skip(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("SKIP: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  fflush(stdout);
  fflush(stderr);
  _exit(SKIP_STATUS);
}

/* Reads the reason a skipped case printed ("SKIP: reason"). */
static void skip_reason(int fd, char *buf, size_t cap) {
  buf[0] = '\0';
  char all[4096];
  ssize_t n = pread(fd, all, sizeof all - 1, 0);
  if (n <= 0) return;
  all[n] = '\0';
  char *s = strstr(all, "SKIP: ");
  if (s == NULL) return;
  s += 6;
  size_t len = strcspn(s, "\n");
  if (len >= cap) len = cap - 1;
  memcpy(buf, s, len);
  buf[len] = '\0';
}

/* ---- Helpers for cases ----------------------------------------------------------------------- */

void *tdm_test_shared(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) tdm_test_fail(__FILE__, __LINE__, "mmap: %s", strerror(errno));
  return p;
}

void tdm_test_unshare(void *p, size_t size) {
  munmap(p, size);
}

pid_t tdm_test_fork(void (*fn)(void *arg), void *arg) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) tdm_test_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
  if (pid == 0) {
    fn(arg);
    fflush(stdout);
    _exit(0);
  }
  return pid;
}

int tdm_test_wait(pid_t pid) {
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) tdm_test_fail(__FILE__, __LINE__, "waitpid: %s", strerror(errno));
  }
  return status;
}

void tdm_test_wait_ok(pid_t pid) {
  int status = tdm_test_wait(pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (WIFSIGNALED(status))
      tdm_test_fail(__FILE__, __LINE__, "child %d killed by signal %d", (int)pid, WTERMSIG(status));
    tdm_test_fail(__FILE__, __LINE__, "child %d exited with status %d", (int)pid,
                  WEXITSTATUS(status));
  }
}

void tdm_test_kill_and_reap(pid_t pid) {
  CHECK(kill(pid, SIGKILL) == 0);
  int status = tdm_test_wait(pid);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

int tdm_test_count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  CHECK(d != NULL);
  int n = 0;
  while (readdir(d) != NULL)
    n++;
  closedir(d);
  return n - 3; /* ".", ".." and the directory's own descriptor */
}

pid_t tdm_test_spawn_helper(const char *name, char *const args[], int *out_fd) {
  int fds[2] = { -1, -1 };
  if (out_fd != NULL && pipe2(fds, O_CLOEXEC) != 0)
    tdm_test_fail(__FILE__, __LINE__, "pipe: %s", strerror(errno));
  char *argv[64];
  int n = 0;
  argv[n++] = "test";
  argv[n++] = "--helper";
  argv[n++] = (char *)name;
  for (int i = 0; args != NULL && args[i] != NULL && n < 63; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) tdm_test_fail(__FILE__, __LINE__, "fork: %s", strerror(errno));
  if (pid == 0) {
    if (out_fd != NULL) dup2(fds[1], STDOUT_FILENO);
    execv("/proc/self/exe", argv);
    _exit(127);
  }
  if (out_fd != NULL) {
    close(fds[1]);
    *out_fd = fds[0];
  }
  return pid;
}

void tdm_test_expect_abort(void (*fn)(void *arg), void *arg, const char *message, const char *file,
                           int line) {
  int fds[2];
  if (pipe(fds) != 0) tdm_test_fail(file, line, "pipe: %s", strerror(errno));
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) tdm_test_fail(file, line, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    /* No core files for expected aborts. */
    signal(SIGABRT, SIG_DFL);
    fn(arg);
    _exit(0);
  }
  close(fds[1]);
  char buf[4096];
  size_t len = 0;
  ssize_t r;
  while (len < sizeof buf - 1 && (r = read(fds[0], buf + len, sizeof buf - 1 - len)) != 0) {
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    len += (size_t)r;
  }
  buf[len] = '\0';
  close(fds[0]);
  int status = tdm_test_wait(pid);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
    tdm_test_fail(file, line, "expected an abort with \"%s\", child status 0x%x, stderr: %s",
                  message, status, buf);
  if (strstr(buf, message) == NULL)
    tdm_test_fail(file, line, "abort message lacks \"%s\": %s", message, buf);
}

int32_t tdm_test_gettid(void) {
  return (int32_t)syscall(SYS_gettid);
}

/* The scheduler state in a /proc/.../stat file: the letter after the command's ')'. */
static char state_of(const char *path) {
  char buf[512];
  FILE *f = fopen(path, "r");
  if (f == NULL) return '?';
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' ? p[2] : '?';
}

bool tdm_test_thread_sleeping(int32_t tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
  return state_of(path) == 'S';
}

bool tdm_test_process_sleeping(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  return state_of(path) == 'S';
}

bool tdm_test_process_gone(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  char state = state_of(path);
  return state == '?' || state == 'Z' || state == 'X';
}

tdm_thread *tdm_test_thread(tdm_thread_fn fn, void *arg) {
  tdm_thread *t = NULL;
  CHECK_OK(tdm_thread_start(&t, fn, arg, NULL));
  return t;
}

/* ---- The runner ------------------------------------------------------------------------------ */

struct slot {
  int index; /* into cases[], -1 when free */
  pid_t pid;
  int out; /* captured output */
  int64_t start_ns, deadline_ns;
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double tdm_test_timeout_scale(void) {
  const char *s = getenv("TDM_TEST_TIMEOUT_SCALE");
  double v = s != NULL ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static void dump(int fd) {
  char buf[8192];
  ssize_t r;
  lseek(fd, 0, SEEK_SET);
  while ((r = read(fd, buf, sizeof buf)) > 0)
    fwrite(buf, 1, (size_t)r, stdout);
}

static int start_case(struct slot *s, int index, const char *self) {
  int out = memfd_create("tdm-test-output", MFD_CLOEXEC);
  if (out < 0) return -errno;
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    close(out);
    return -errno;
  }
  if (pid == 0) {
    setpgid(0, 0);
    dup2(out, STDOUT_FILENO);
    dup2(out, STDERR_FILENO);
    execl(self, self, "--run", cases[index]->name, (char *)NULL);
    _exit(127);
  }
  setpgid(pid, pid); /* also from here, so the group exists before any kill */
  int t = cases[index]->timeout_s > 0 ? cases[index]->timeout_s : DEFAULT_TIMEOUT_S;
  s->index = index;
  s->pid = pid;
  s->out = out;
  s->start_ns = now_ns();
  s->deadline_ns = s->start_ns + (int64_t)(t * tdm_test_timeout_scale() * 1e9);
  return 0;
}

/*
 * Reaps what a finished case left in its process group (the runner is a child subreaper, so
 * orphans come back to it) and kills what still runs. Returns true when something still ran:
 * a case must wait for every process it starts.
 */
static bool reap_group(pid_t pgid) {
  int status;
  while (waitpid(-pgid, &status, WNOHANG) > 0) {
  }
  if (kill(-pgid, 0) != 0) return false;
  kill(-pgid, SIGKILL);
  for (int i = 0; i < 1000 && kill(-pgid, 0) == 0; i++) {
    while (waitpid(-pgid, &status, WNOHANG) > 0) {
    }
    struct timespec ts = { 0, 1000 * 1000 };
    nanosleep(&ts, NULL);
  }
  return true;
}

/*
 * Reaps the children that ended and belong to no running case: orphans that left their case's
 * process group (a segment owner's reaper, which runs in a session of its own, say) and came
 * back to us because we are a subreaper. Cases' own pids are left to the loop below.
 */
static void reap_strays(const struct slot *slots, int jobs) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  int pid;
  while (fscanf(f, "%d", &pid) == 1) {
    bool running_case = false;
    for (int i = 0; i < jobs; i++)
      running_case = running_case || (slots[i].index >= 0 && slots[i].pid == pid);
    if (!running_case) waitpid(pid, NULL, WNOHANG);
  }
  fclose(f);
}

static int run_all(const char *self, int jobs, bool verbose, char **patterns, int npatterns) {
  int selected[MAX_CASES], nsel = 0;
  for (int i = 0; i < ncases; i++) {
    bool take = npatterns == 0;
    for (int p = 0; p < npatterns && !take; p++)
      take = strstr(cases[i]->name, patterns[p]) != NULL;
    if (take) selected[nsel++] = i;
  }
  if (jobs < 1) jobs = 1;
  struct slot slots[64];
  if (jobs > 64) jobs = 64;
  for (int i = 0; i < jobs; i++)
    slots[i].index = -1;

  /* Orphans of a case come back to us, so that reap_group() can account for them. */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  int next = 0, done = 0, failed = 0, skipped = 0;
  printf("1..%d\n", nsel);
  while (done < nsel) {
    for (int i = 0; i < jobs && next < nsel; i++) {
      if (slots[i].index >= 0) continue;
      int r = start_case(&slots[i], selected[next], self);
      if (r < 0) {
        printf("not ok %s (could not start: %s)\n", cases[selected[next]]->name, strerror(-r));
        failed++;
        done++;
      }
      next++;
    }
    bool progressed = false;
    for (int i = 0; i < jobs; i++) {
      struct slot *s = &slots[i];
      if (s->index < 0) continue;
      int status;
      pid_t w = waitpid(s->pid, &status, WNOHANG);
      bool timed_out = false;
      if (w == 0) {
        if (now_ns() < s->deadline_ns) continue;
        timed_out = true;
        kill(-s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
      }
      bool leaked = reap_group(s->pid);
      double ms = (double)(now_ns() - s->start_ns) / 1e6;
      const char *name = cases[s->index]->name;
      bool ok = !timed_out && !leaked && WIFEXITED(status) && WEXITSTATUS(status) == 0;
      bool skip = !timed_out && !leaked && WIFEXITED(status) && WEXITSTATUS(status) == SKIP_STATUS;
      if (skip) {
        char why[256];
        skip_reason(s->out, why, sizeof why);
        printf("ok %s # SKIP %s\n", name, why);
        skipped++;
      } else if (ok) {
        printf("ok %s (%.0f ms)\n", name, ms);
        if (verbose) dump(s->out);
      } else {
        failed++;
        if (timed_out)
          printf("not ok %s (timed out after %.0f ms)\n", name, ms);
        else if (WIFSIGNALED(status))
          printf("not ok %s (killed by signal %d: %s)\n", name, WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
        else if (WEXITSTATUS(status) != 0)
          printf("not ok %s (exit status %d)\n", name, WEXITSTATUS(status));
        else
          printf("not ok %s (left processes running)\n", name);
        printf("---- output of %s ----\n", name);
        dump(s->out);
        printf("---- end of %s ----\n", name);
      }
      fflush(stdout);
      close(s->out);
      s->index = -1;
      done++;
      progressed = true;
    }
    if (progressed) reap_strays(slots, jobs);
    if (!progressed) {
      struct timespec ts = { 0, 2 * 1000 * 1000 };
      nanosleep(&ts, NULL);
    }
  }
  printf("# %d passed, %d skipped, %d failed\n", nsel - failed - skipped, skipped, failed);
  if (nsel > 0 && skipped == nsel) return 1;
  return failed == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
    for (int i = 0; i < ncases; i++)
      printf("%s\n", cases[i]->name);
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "--run") == 0) {
    for (int i = 0; i < ncases; i++) {
      if (strcmp(cases[i]->name, argv[2]) == 0) {
        setvbuf(stdout, NULL, _IOLBF, 0);
        cases[i]->fn();
        fflush(stdout);
        return 0;
      }
    }
    fprintf(stderr, "no case named %s\n", argv[2]);
    return 2;
  }
  if (argc >= 3 && strcmp(argv[1], "--helper") == 0) {
    for (int i = 0; i < nhelpers; i++)
      if (strcmp(helpers[i]->name, argv[2]) == 0) return helpers[i]->fn(argc - 2, argv + 2);
    fprintf(stderr, "no helper named %s\n", argv[2]);
    return 2;
  }
  int jobs = 1;
  bool verbose = false;
  char *patterns[MAX_CASES];
  int npatterns = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-v") == 0)
      verbose = true;
    else if (strcmp(argv[i], "-j") == 0 && i + 1 < argc)
      jobs = atoi(argv[++i]);
    else if (argv[i][0] == '-') {
      fprintf(stderr, "usage: %s [-v] [-j N] [PATTERN...] | --list | --run NAME | --helper NAME\n",
              argv[0]);
      return 2;
    } else
      patterns[npatterns++] = argv[i];
  }
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    perror("readlink /proc/self/exe");
    return 2;
  }
  self[n] = '\0';
  setvbuf(stdout, NULL, _IOLBF, 0);
  return run_all(self, jobs, verbose, patterns, npatterns);
}
