/*
 * shm_test.c: shared memory segments and their owners, across real processes: create, attach
 * and share (named, anonymous, by descriptor, through fork and exec); who removes a segment and
 * when (close, unlink, hand-over, an owner killed with SIGKILL or exiting without closing, a
 * forked child of an owner, a namesake made in the meantime, a reaper that was killed); that the
 * reaper is a fresh exec of the program, sharing no memory with its owner (and a fork where it
 * cannot be); bad input, a full /dev/shm, descriptor leaks and failed allocations.
 *
 * Every case names its segments "/tdm-test-<pid>-<tag>-<n>", so cases never meet, and checks
 * /dev/shm itself to see whether a segment exists.
 */
#include <dirent.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

/* ---- Helpers --------------------------------------------------------------------------------- */

#define NAME_LEN 64

/* A name no other case (or earlier call) uses: "/tdm-test-<pid>-<tag>-<n>". */
static void unique(char *buf, const char *tag) {
  static int n;
  snprintf(buf, NAME_LEN, "/tdm-test-%d-%s-%d", (int)getpid(), tag, n++);
}

static bool exists(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
  return access(path, F_OK) == 0;
}

/* How many files in /dev/shm start with "tdm-test-<pid>-" (this case's segments). */
static int count_mine(pid_t pid) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "tdm-test-%d-", (int)pid);
  DIR *d = opendir("/dev/shm");
  CHECK(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
  closedir(d);
  return n;
}

static tdm_shm *create(const char *name, size_t size) {
  tdm_shm *s = NULL;
  CHECK_OK(tdm_shm_create(&s, name, size, NULL));
  CHECK(s != NULL);
  return s;
}

static tdm_shm *create_noown(const char *name, size_t size) {
  tdm_shm *s = NULL;
  tdm_shm_options o = { .flags = TDM_SHM_NOOWN };
  CHECK_OK(tdm_shm_create(&s, name, size, &o));
  return s;
}

static tdm_shm *attach(const char *name, size_t size, unsigned flags) {
  tdm_shm *s = NULL;
  tdm_shm_options o = { .flags = flags };
  CHECK_OK(tdm_shm_attach(&s, name, size, &o));
  CHECK(s != NULL);
  return s;
}

/* Flags and scratch shared with forked children. */
struct shared {
  volatile int ready, go, skip;
  volatile pid_t pid;
  volatile uintptr_t start, end; /* a region of the child's memory */
  char names[4][NAME_LEN];
};

static struct shared *shared_new(void) {
  return tdm_test_shared(sizeof(struct shared));
}

/* Forks a child that runs fn(arg) and then waits forever, to be killed. */
static pid_t fork_lingering(void (*fn)(void *arg), void *arg) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    fn(arg);
    for (;;)
      pause();
  }
  return pid;
}

/*
 * Names n segments "<tag>" in sh->names, forks a lingering child that runs fn(sh) (an owner, to
 * be killed), and waits until fn set sh->ready. Returns the child.
 */
static pid_t start_owner(struct shared *sh, const char *tag, int n, void (*fn)(void *arg)) {
  for (int i = 0; i < n; i++)
    unique(sh->names[i], tag);
  pid_t pid = fork_lingering(fn, sh);
  WAIT_UNTIL(sh->ready);
  return pid;
}

/* Reads what a helper printed first, and checks that it is `want`. Closes `out`. */
static void expect_output(int out, const char *want) {
  char buf[16] = { 0 };
  CHECK(read(out, buf, sizeof buf - 1) > 0);
  close(out);
  CHECK(strcmp(buf, want) == 0);
}

/* ---- Create, attach, share ------------------------------------------------------------------- */

TEST(create_attach_and_accessors) {
  umask(022);
  char name[NAME_LEN];
  unique(name, "basic");
  tdm_shm *s = create(name, 10000);
  unsigned char *p = tdm_shm_addr(s);
  CHECK(p != NULL);
  CHECK((uintptr_t)p % (uintptr_t)sysconf(_SC_PAGESIZE) == 0);
  CHECK_EQ(tdm_shm_size(s), 10000);
  CHECK(strcmp(tdm_shm_name(s), name) == 0);
  CHECK(tdm_shm_owned(s));
  CHECK(exists(name));

  /* The descriptor is close-on-exec, the mode 0600 (under the umask), the size reserved. */
  int fd = tdm_shm_fd(s);
  CHECK(fd >= 0);
  CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  struct stat st;
  CHECK(fstat(fd, &st) == 0);
  CHECK_EQ(st.st_size, 10000);
  CHECK_EQ(st.st_mode & 07777, 0600);
  /* Reserved: allocated before any page was touched (a read fault would allocate too). */
  CHECK((long long)st.st_blocks * 512 >= 10000);
  for (size_t i = 0; i < 10000; i++)
    CHECK(p[i] == 0);

  memcpy(p, "hello", 6);
  /* Attach by the name without its slash, accepting the segment's size. */
  tdm_shm *a = attach(name + 1, 0, 0);
  CHECK(strcmp(tdm_shm_name(a), name) == 0);
  CHECK_EQ(tdm_shm_size(a), 10000);
  CHECK(!tdm_shm_owned(a));
  CHECK(tdm_shm_addr(a) != tdm_shm_addr(s));
  CHECK(strcmp(tdm_shm_addr(a), "hello") == 0);
  ((char *)tdm_shm_addr(a))[0] = 'j';
  CHECK(p[0] == 'j');
  /* A smaller expected size is fine, and the whole segment is mapped; TDM_SHM_NOOWN is
   * accepted and changes nothing. */
  tdm_shm *b = attach(name, 4096, TDM_SHM_NOOWN);
  CHECK(!tdm_shm_owned(b));
  CHECK_EQ(tdm_shm_size(b), 10000);
  CHECK(tdm_shm_fd(b) != tdm_shm_fd(a));

  CHECK_OK(tdm_shm_close(a));
  CHECK_OK(tdm_shm_close(b));
  CHECK(exists(name)); /* attachers remove nothing */
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name)); /* the owner does */
  CHECK_OK(tdm_shm_close(NULL));
}

TEST(create_with_mode_and_without_owner) {
  umask(0);
  char name[NAME_LEN];
  unique(name, "mode");
  tdm_shm *s = NULL;
  tdm_shm_options o = { .flags = TDM_SHM_NOOWN, .mode = 0640 };
  CHECK_OK(tdm_shm_create(&s, name, 100, &o));
  CHECK(!tdm_shm_owned(s));
  struct stat st;
  CHECK(fstat(tdm_shm_fd(s), &st) == 0);
  CHECK_EQ(st.st_mode & 07777, 0640);
  CHECK_OK(tdm_shm_close(s));
  CHECK(exists(name));
  /* Nobody owns it: it stays until someone removes it. */
  CHECK_OK(tdm_shm_unlink_name(name));
  CHECK(!exists(name));
  CHECK_ERR(tdm_shm_unlink_name(name), -ENOENT);

  /* TDM_SHM_OWN on create is the default, spelled out. */
  o = (tdm_shm_options){ .flags = TDM_SHM_OWN };
  CHECK_OK(tdm_shm_create(&s, name, 100, &o));
  CHECK(tdm_shm_owned(s));
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
}

static void child_attach_and_write(void *arg) {
  const char *name = arg;
  tdm_shm *a = attach(name, 64, 0);
  CHECK(!tdm_shm_owned(a));
  strcpy(tdm_shm_addr(a), "written by the child");
  CHECK_OK(tdm_shm_close(a));
  CHECK(exists(name));
}

TEST(named_segment_shared_with_forked_child) {
  char name[NAME_LEN];
  unique(name, "fork");
  tdm_shm *s = create(name, 64);
  tdm_test_wait_ok(tdm_test_fork(child_attach_and_write, name));
  CHECK(strcmp(tdm_shm_addr(s), "written by the child") == 0);
  CHECK(exists(name)); /* the child attached and closed: nothing removed */
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
}

static void child_writes_inherited(void *arg) {
  tdm_shm *s = arg;
  strcpy(tdm_shm_addr(s), "through the inherited mapping");
}

static void child_attaches_fd(void *arg) {
  tdm_shm *s = arg;
  tdm_shm *a = NULL;
  CHECK_OK(tdm_shm_attach_fd(&a, tdm_shm_fd(s), 4096));
  CHECK(tdm_shm_name(a) == NULL);
  strcpy((char *)tdm_shm_addr(a) + 100, "through attach_fd");
  CHECK_OK(tdm_shm_close(a));
}

TEST(anonymous_segment_through_fork_and_attach_fd) {
  tdm_shm *s = create(NULL, 4096);
  CHECK(tdm_shm_name(s) == NULL);
  CHECK(!tdm_shm_owned(s));
  CHECK_ERR(tdm_shm_own(s), -EINVAL);
  CHECK_ERR(tdm_shm_unlink(s), -EINVAL);
  CHECK_OK(tdm_shm_disown(s));
  CHECK(fcntl(tdm_shm_fd(s), F_GETFD) & FD_CLOEXEC);
  struct stat st;
  CHECK(fstat(tdm_shm_fd(s), &st) == 0);
  CHECK((long long)st.st_blocks * 512 >= 4096);

  tdm_test_wait_ok(tdm_test_fork(child_writes_inherited, s));
  CHECK(strcmp(tdm_shm_addr(s), "through the inherited mapping") == 0);
  tdm_test_wait_ok(tdm_test_fork(child_attaches_fd, s));
  CHECK(strcmp((char *)tdm_shm_addr(s) + 100, "through attach_fd") == 0);

  /* In this process too: a second mapping of the same memory; the caller keeps its fd. */
  tdm_shm *a = NULL;
  CHECK_OK(tdm_shm_attach_fd(&a, tdm_shm_fd(s), 0));
  CHECK_EQ(tdm_shm_size(a), 4096);
  CHECK(tdm_shm_fd(a) != tdm_shm_fd(s));
  CHECK(fcntl(tdm_shm_fd(a), F_GETFD) & FD_CLOEXEC);
  ((char *)tdm_shm_addr(a))[0] = 'X';
  CHECK(((char *)tdm_shm_addr(s))[0] == 'X');
  CHECK_OK(tdm_shm_close(a));
  CHECK(fcntl(tdm_shm_fd(s), F_GETFD) >= 0);
  CHECK_ERR(tdm_shm_attach_fd(&a, tdm_shm_fd(s), 4097), -EINVAL);
  CHECK_OK(tdm_shm_close(s));
}

TEST(attach_fd_of_named_segment) {
  char name[NAME_LEN];
  unique(name, "fdnamed");
  tdm_shm *s = create(name, 4096);
  tdm_shm *a = NULL;
  CHECK_OK(tdm_shm_attach_fd(&a, tdm_shm_fd(s), 0));
  CHECK(tdm_shm_name(a) == NULL); /* reached by descriptor: it has no name to own */
  CHECK_ERR(tdm_shm_own(a), -EINVAL);
  CHECK_OK(tdm_shm_close(a));
  CHECK(exists(name));
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
}

HELPER(attach_fd_and_write) {
  CHECK(argc == 2);
  tdm_shm *a = NULL;
  CHECK_OK(tdm_shm_attach_fd(&a, atoi(argv[1]), 0));
  strcpy(tdm_shm_addr(a), "written by an exec'd helper");
  CHECK_OK(tdm_shm_close(a));
  printf("done\n");
  return 0;
}

TEST(anonymous_segment_passed_to_exec_child) {
  tdm_shm *s = create(NULL, 4096);
  /* tandem's descriptors are close-on-exec: pass a copy that is not. */
  int fd = dup(tdm_shm_fd(s));
  CHECK(fd >= 0);
  char arg[16];
  snprintf(arg, sizeof arg, "%d", fd);
  char *args[] = { arg, NULL };
  int out;
  pid_t pid = tdm_test_spawn_helper("attach_fd_and_write", args, &out);
  close(fd);
  expect_output(out, "done\n");
  tdm_test_wait_ok(pid);
  CHECK(strcmp(tdm_shm_addr(s), "written by an exec'd helper") == 0);
  CHECK_OK(tdm_shm_close(s));
}

HELPER(exec_sees_no_fd) {
  CHECK(argc == 2);
  CHECK(fcntl(atoi(argv[1]), F_GETFD) < 0);
  return 0;
}

TEST(segment_descriptors_do_not_survive_exec) {
  char name[NAME_LEN];
  unique(name, "exec");
  tdm_shm *s = create(name, 4096);
  tdm_shm *a = create(NULL, 4096);
  char arg1[16], arg2[16];
  snprintf(arg1, sizeof arg1, "%d", tdm_shm_fd(s));
  snprintf(arg2, sizeof arg2, "%d", tdm_shm_fd(a));
  char *args1[] = { arg1, NULL }, *args2[] = { arg2, NULL };
  tdm_test_wait_ok(tdm_test_spawn_helper("exec_sees_no_fd", args1, NULL));
  tdm_test_wait_ok(tdm_test_spawn_helper("exec_sees_no_fd", args2, NULL));
  CHECK_OK(tdm_shm_close(a));
  CHECK_OK(tdm_shm_close(s));
}

/* ---- Who removes a segment ------------------------------------------------------------------- */

TEST(unlink_removes_name_and_ownership) {
  char name[NAME_LEN];
  unique(name, "unlink");
  tdm_shm *s = create(name, 4096);
  strcpy(tdm_shm_addr(s), "still mapped");
  CHECK_OK(tdm_shm_unlink(s));
  CHECK(!exists(name));
  CHECK(!tdm_shm_owned(s));
  CHECK(strcmp(tdm_shm_addr(s), "still mapped") == 0);
  tdm_shm *a = NULL;
  CHECK_ERR(tdm_shm_attach(&a, name, 0, NULL), -ENOENT);
  CHECK_ERR(tdm_shm_unlink(s), -ENOENT);
  CHECK_OK(tdm_shm_close(s)); /* not an owner any more: nothing to remove, no error */

  /* An owner whose name someone else removed learns it from close. */
  s = create(name, 4096);
  CHECK_OK(tdm_shm_unlink_name(name + 1));
  CHECK_ERR(tdm_shm_close(s), -ENOENT);
}

TEST(two_owning_handles_in_one_process) {
  char name[NAME_LEN];
  unique(name, "twice");
  tdm_shm *s = create(name, 4096);
  tdm_shm *a = attach(name, 0, TDM_SHM_OWN);
  CHECK(tdm_shm_owned(a));
  CHECK_OK(tdm_shm_own(a)); /* owning again changes nothing */
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
  CHECK(tdm_shm_owned(a));
  CHECK_ERR(tdm_shm_close(a), -ENOENT);
}

TEST(close_spares_a_namesake) {
  char name[NAME_LEN];
  unique(name, "namesake");
  tdm_shm *s = create(name, 4096);
  /* Someone removes the segment and makes a new one under the same name. */
  CHECK_OK(tdm_shm_unlink_name(name));
  tdm_shm *t = create_noown(name, 4096);
  strcpy(tdm_shm_addr(t), "new");
  CHECK_ERR(tdm_shm_close(s), -ENOENT);
  CHECK(exists(name));
  tdm_shm *a = attach(name, 0, 0);
  CHECK(strcmp(tdm_shm_addr(a), "new") == 0);
  CHECK_OK(tdm_shm_close(a));
  CHECK_OK(tdm_shm_unlink(t));
  CHECK_OK(tdm_shm_close(t));
}

static void child_attacher(void *arg) {
  struct shared *sh = arg;
  tdm_shm *a = attach(sh->names[0], 0, 0);
  CHECK(!tdm_shm_owned(a));
  CHECK_OK(tdm_shm_close(a));
  CHECK(exists(sh->names[0]));
  /* And one that exits without closing. */
  attach(sh->names[0], 0, 0);
}

TEST(attacher_never_removes) {
  struct shared *sh = shared_new();
  unique(sh->names[0], "attacher");
  tdm_shm *s = create(sh->names[0], 4096);
  tdm_test_wait_ok(tdm_test_fork(child_attacher, sh));
  CHECK(exists(sh->names[0]));
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(sh->names[0]));
}

static void child_attach_own_close(void *arg) {
  const char *name = arg;
  tdm_shm *a = attach(name, 0, TDM_SHM_OWN);
  CHECK(tdm_shm_owned(a));
  CHECK_OK(tdm_shm_close(a));
  CHECK(!exists(name));
}

static void child_attach_own_exit(void *arg) {
  const char *name = arg;
  tdm_shm *a = attach(name, 0, TDM_SHM_OWN);
  CHECK(tdm_shm_owned(a));
}

TEST(attacher_with_own_removes) {
  char name[NAME_LEN];
  unique(name, "attachown");
  tdm_shm *s = create_noown(name, 4096);
  tdm_test_wait_ok(tdm_test_fork(child_attach_own_close, name));
  CHECK(!exists(name));
  CHECK_OK(tdm_shm_close(s));

  s = create_noown(name, 4096);
  tdm_test_wait_ok(tdm_test_fork(child_attach_own_exit, name));
  WAIT_UNTIL(!exists(name)); /* its reaper saw it go */
  CHECK_OK(tdm_shm_close(s));
}

static void child_takes_over(void *arg) {
  struct shared *sh = arg;
  tdm_shm *a = attach(sh->names[0], 0, 0);
  CHECK_OK(tdm_shm_own(a));
  CHECK(tdm_shm_owned(a));
  sh->ready = 1;
  WAIT_UNTIL(sh->go);
  /* Exits without closing: the reaper removes the segment. */
}

TEST(ownership_handed_over) {
  struct shared *sh = shared_new();
  unique(sh->names[0], "handover");
  tdm_shm *s = create(sh->names[0], 4096);
  pid_t pid = tdm_test_fork(child_takes_over, sh);
  WAIT_UNTIL(sh->ready);
  CHECK_OK(tdm_shm_disown(s));
  CHECK(!tdm_shm_owned(s));
  CHECK_OK(tdm_shm_disown(s));
  CHECK_OK(tdm_shm_close(s));
  CHECK(exists(sh->names[0])); /* the new owner has it */
  sh->go = 1;
  tdm_test_wait_ok(pid);
  WAIT_UNTIL(!exists(sh->names[0]));

  /* And back: disown, then own again in the same process. */
  s = create(sh->names[0], 4096);
  CHECK_OK(tdm_shm_disown(s));
  CHECK_OK(tdm_shm_own(s));
  CHECK(tdm_shm_owned(s));
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(sh->names[0]));
}

static void child_owns_three(void *arg) {
  struct shared *sh = arg;
  create(sh->names[0], 4096);
  create(sh->names[1], 1 << 20);
  create_noown(sh->names[2], 4096);
  tdm_shm *a = create(NULL, 4096);
  (void)a;
  sh->ready = 1;
}

TEST(sigkilled_owner_segments_vanish) {
  struct shared *sh = shared_new();
  pid_t pid = start_owner(sh, "killed", 3, child_owns_three);
  for (int i = 0; i < 3; i++)
    CHECK(exists(sh->names[i]));
  tdm_test_kill_and_reap(pid);
  WAIT_UNTIL(!exists(sh->names[0]) && !exists(sh->names[1]));
  CHECK(exists(sh->names[2])); /* created without an owner */
  CHECK_OK(tdm_shm_unlink_name(sh->names[2]));
}

HELPER(owner_then_sleep) {
  CHECK(argc >= 2);
  for (int i = 1; i < argc; i++)
    create(argv[i], 8192);
  printf("ready\n");
  fflush(stdout);
  for (;;)
    pause();
}

TEST(sigkilled_exec_owner_segments_vanish) {
  char names[3][NAME_LEN];
  for (int i = 0; i < 3; i++)
    unique(names[i], "helper");
  char *args[] = { names[0], names[1], names[2], NULL };
  int out;
  pid_t pid = tdm_test_spawn_helper("owner_then_sleep", args, &out);
  expect_output(out, "ready\n");
  for (int i = 0; i < 3; i++)
    CHECK(exists(names[i]));
  tdm_test_kill_and_reap(pid);
  WAIT_UNTIL(!exists(names[0]) && !exists(names[1]) && !exists(names[2]));
}

HELPER(owner_then_exec) {
  CHECK(argc == 2);
  create(argv[1], 4096);
  execl("/proc/self/exe", "test", "--helper", "say_ready_and_sleep", (char *)NULL);
  return 1;
}

HELPER(say_ready_and_sleep) {
  (void)argc;
  (void)argv;
  printf("ready\n");
  fflush(stdout);
  pause(); /* until killed */
  return 0;
}

TEST(owner_exec_removes) {
  char name[NAME_LEN];
  unique(name, "exec");
  char *args[] = { name, NULL };
  int out;
  pid_t pid = tdm_test_spawn_helper("owner_then_exec", args, &out);
  expect_output(out, "ready\n");
  /* The process lives on, but the program that held the handle is gone. */
  WAIT_UNTIL(!exists(name));
  CHECK(kill(pid, 0) == 0);
  tdm_test_kill_and_reap(pid);
}

static void child_creates_and_returns(void *arg) {
  struct shared *sh = arg;
  create(sh->names[0], 4096);
  create(sh->names[1], 4096);
  tdm_shm *a = attach(sh->names[1], 0, TDM_SHM_OWN);
  (void)a;
}

TEST(owner_exiting_without_close_removes) {
  struct shared *sh = shared_new();
  unique(sh->names[0], "exit");
  unique(sh->names[1], "exit");
  tdm_test_wait_ok(tdm_test_fork(child_creates_and_returns, sh));
  WAIT_UNTIL(!exists(sh->names[0]) && !exists(sh->names[1]));
}

struct fork_arg {
  tdm_shm *s;
  char name[NAME_LEN];
};

static void child_closes_copy(void *arg) {
  struct fork_arg *fa = arg;
  CHECK(!tdm_shm_owned(fa->s));
  CHECK_ERR(tdm_shm_disown(fa->s), 0);
  CHECK_OK(tdm_shm_close(fa->s));
  CHECK(exists(fa->name));
}

TEST(forked_child_of_owner_is_not_owner) {
  struct fork_arg fa;
  unique(fa.name, "child");
  fa.s = create(fa.name, 4096);
  tdm_test_wait_ok(tdm_test_fork(child_closes_copy, &fa));
  CHECK(exists(fa.name));
  CHECK(tdm_shm_owned(fa.s));
  CHECK_OK(tdm_shm_close(fa.s));
  CHECK(!exists(fa.name));
}

static void owner_with_lingering_child(void *arg) {
  struct shared *sh = arg;
  create(sh->names[0], 4096);
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {
    for (;;)
      pause();
  }
  sh->pid = child;
  sh->ready = 1;
}

TEST(owner_death_seen_while_its_child_lives) {
  /* Orphans come to this process, so that the grandchild can be reaped here. */
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  struct shared *sh = shared_new();
  pid_t owner = start_owner(sh, "grandchild", 1, owner_with_lingering_child);
  CHECK(exists(sh->names[0]));
  tdm_test_kill_and_reap(owner);
  /* The child inherited no copy of the owner's end of the socket to its reaper. */
  WAIT_UNTIL(!exists(sh->names[0]));
  CHECK(kill(sh->pid, 0) == 0);
  tdm_test_kill_and_reap(sh->pid);
}

TEST(waitpid_never_sees_the_reaper) {
  char name[NAME_LEN];
  unique(name, "waitpid");
  tdm_shm *s = create(name, 4096); /* starts this process's reaper */
  int status;
  errno = 0;
  CHECK_EQ(waitpid(-1, &status, WNOHANG), -1);
  CHECK_EQ(errno, ECHILD);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) _exit(7);
  CHECK_EQ(waitpid(-1, &status, 0), pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7);
  errno = 0;
  CHECK_EQ(waitpid(-1, &status, WNOHANG), -1);
  CHECK_EQ(errno, ECHILD);
  /* And the reaper works. */
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
}

TEST(reaper_holds_no_descriptor_of_the_owner) {
  int p[2];
  CHECK(pipe(p) == 0); /* not close-on-exec: a fork copies it, as it would a program's own */
  char name[NAME_LEN];
  unique(name, "fds");
  tdm_shm *s = create(name, 4096); /* starts the reaper while the pipe is open */
  close(p[1]);
  /* If the reaper had kept a copy of the write end, the read end would never see end-of-file. */
  CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
  char c;
  CHECK_EQ(read(p[0], &c, 1), 0);
  close(p[0]);
  CHECK_OK(tdm_shm_close(s));
}

static void on_signal(int sig) {
  (void)sig;
}

static void owner_with_handlers(void *arg) {
  struct shared *sh = arg;
  /* Handlers here, so that the reaper (which resets them) would die of these signals. */
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  signal(SIGUSR1, on_signal);
  create(sh->names[0], 4096);
  sh->ready = 1;
}

TEST(reaper_survives_signals_to_the_process_group) {
  struct shared *sh = shared_new();
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  pid_t owner = start_owner(sh, "group", 1, owner_with_handlers);
  /* What a Ctrl-C, a hang-up or a "kill the job" sends to the foreground group. */
  CHECK(kill(0, SIGINT) == 0);
  CHECK(kill(0, SIGTERM) == 0);
  CHECK(kill(0, SIGHUP) == 0);
  CHECK(kill(0, SIGUSR1) == 0);
  CHECK(kill(owner, 0) == 0);
  tdm_test_kill_and_reap(owner);
  WAIT_UNTIL(!exists(sh->names[0]));
}

static void spare_namesake_owner(void *arg) {
  struct shared *sh = arg;
  create(sh->names[0], 4096); /* first in the reaper's table, so reaped first */
  create(sh->names[1], 4096);
  sh->ready = 1;
}

TEST(reaper_spares_a_namesake) {
  struct shared *sh = shared_new();
  pid_t owner = start_owner(sh, "reapsake", 2, spare_namesake_owner);
  CHECK_OK(tdm_shm_unlink_name(sh->names[0]));
  tdm_shm *t = create_noown(sh->names[0], 4096);
  tdm_test_kill_and_reap(owner);
  /* The reaper goes through its names in order: once the second is gone, it saw the first. */
  WAIT_UNTIL(!exists(sh->names[1]));
  CHECK(exists(sh->names[0]));
  CHECK_OK(tdm_shm_unlink(t));
  CHECK_OK(tdm_shm_close(t));
}

/* This process's children, from /proc (Linux 3.5 with CONFIG_PROC_CHILDREN). */
static int children(pid_t *out, int max) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  int n = 0, pid;
  while (n < max && fscanf(f, "%d", &pid) == 1)
    out[n++] = pid;
  fclose(f);
  return n;
}

/*
 * In a forked owner: creates sh->names[0], the process's first owned segment, and returns the
 * reaper that started with it, adopted as a child (the reaper's intermediate parent exits at
 * once, and the owner is a subreaper). Returns 0 and sets sh->skip where /proc does not list
 * children.
 */
static pid_t first_owned_segment(struct shared *sh) {
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  create(sh->names[0], 4096);
  pid_t kids[8];
  int n = children(kids, 8);
  if (n < 0) {
    sh->skip = 1;
    return 0;
  }
  CHECK_EQ(n, 1);
  return kids[0];
}

/* In the case: ends it as skipped when the owner set sh->skip. */
static void skip_without_children(struct shared *sh, pid_t owner) {
  if (!sh->skip) return;
  tdm_test_kill_and_reap(owner);
  tdm_shm_unlink_name(sh->names[0]);
  tdm_test_skip("/proc/self/task/TID/children is missing");
}

static void owner_kills_its_reaper(void *arg) {
  struct shared *sh = arg;
  pid_t reaper = first_owned_segment(sh);
  if (reaper == 0) {
    sh->ready = 1;
    return;
  }
  char path[64], comm[32] = { 0 };
  snprintf(path, sizeof path, "/proc/%d/comm", (int)reaper);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  CHECK(fgets(comm, sizeof comm, f) != NULL);
  fclose(f);
  CHECK(strcmp(comm, "tdm-shm-reaper\n") == 0);
  CHECK(kill(reaper, SIGKILL) == 0);
  CHECK(waitpid(reaper, NULL, 0) == reaper);
  /* The next message finds it dead: a new reaper is started and told both names. */
  create(sh->names[1], 4096);
  sh->ready = 1;
}

TEST(dead_reaper_is_replaced) {
  struct shared *sh = shared_new();
  pid_t owner = start_owner(sh, "replaced", 2, owner_kills_its_reaper);
  skip_without_children(sh, owner);
  CHECK(exists(sh->names[0]) && exists(sh->names[1]));
  tdm_test_kill_and_reap(owner);
  WAIT_UNTIL(!exists(sh->names[0]) && !exists(sh->names[1]));
}

#define BIG_REGION ((size_t)64 << 20)

/* An owner whose memory is large before its first owned segment: sh->pid is its reaper, and
 * [sh->start, sh->end) its private region. */
static void owner_with_a_big_region(void *arg) {
  struct shared *sh = arg;
  char *big = mmap(NULL, BIG_REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(big != MAP_FAILED);
  memset(big, 0x5a, BIG_REGION);
  pid_t reaper = first_owned_segment(sh);
  if (reaper != 0) {
    /* Written again after the start: a forked reaper would make the owner copy all of it. */
    memset(big, 0xa5, BIG_REGION);
    sh->start = (uintptr_t)big;
    sh->end = (uintptr_t)big + BIG_REGION;
    sh->pid = reaper;
  }
  sh->ready = 1;
}

/* The value of `field` ("VmRSS:") in /proc/PID/status, in kB; -1 if missing. */
static long status_kb(pid_t pid, const char *field) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  long kb = -1;
  while (fgets(buf, sizeof buf, f) != NULL)
    if (strncmp(buf, field, strlen(field)) == 0) kb = atol(buf + strlen(field));
  fclose(f);
  return kb;
}

TEST(reaper_is_a_fresh_exec_sharing_no_memory) {
  struct shared *sh = shared_new();
  pid_t owner = start_owner(sh, "exec", 1, owner_with_a_big_region);
  skip_without_children(sh, owner);
  char path[64], buf[512];
  /* The same program file, started again, under the reaper's own name. */
  struct stat mine, its;
  snprintf(path, sizeof path, "/proc/%d/exe", (int)sh->pid);
  CHECK(stat(path, &its) == 0);
  CHECK(stat("/proc/self/exe", &mine) == 0);
  CHECK(its.st_dev == mine.st_dev && its.st_ino == mine.st_ino);
  /* Nothing of the owner's address space: not even the mapping of its region. */
  snprintf(path, sizeof path, "/proc/%d/maps", (int)sh->pid);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  int lines = 0;
  while (fgets(buf, sizeof buf, f) != NULL) {
    unsigned long lo, hi;
    CHECK(sscanf(buf, "%lx-%lx", &lo, &hi) == 2);
    CHECK(hi <= sh->start || lo >= sh->end);
    lines++;
  }
  fclose(f);
  CHECK(lines > 0);
  /* And its resident memory is its own start-up's, far below the owner's region. */
  long rss = status_kb(sh->pid, "VmRSS:");
  CHECK(rss > 0);
  CHECK(rss < (long)(BIG_REGION / 1024 / 2));
  CHECK(status_kb(owner, "VmRSS:") >= (long)(BIG_REGION / 1024));
  /* Named as the exec named it. */
  snprintf(path, sizeof path, "/proc/%d/cmdline", (int)sh->pid);
  f = fopen(path, "r");
  CHECK(f != NULL);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  CHECK(n == sizeof "tdm-shm-reaper" && memcmp(buf, "tdm-shm-reaper", n) == 0);

  tdm_test_kill_and_reap(owner);
  WAIT_UNTIL(!exists(sh->names[0]));
}

/* The dynamic loader named in this program's PT_INTERP, or NULL for a static program. */
static int find_interp(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  const char **interp = data;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_INTERP)
      *interp = (const char *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
  return 1;
}

TEST(owner_started_through_the_loader_still_has_a_reaper) {
  /* "ld.so program": /proc/self/exe is the loader, so the reaper cannot exec the program; it
   * stays a fork of the owner, and works the same. */
  const char *interp = NULL;
  dl_iterate_phdr(find_interp, &interp);
  if (interp == NULL) tdm_test_skip("a static program has no dynamic loader");
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  CHECK(len > 0);
  self[len] = '\0';
  char names[2][NAME_LEN];
  unique(names[0], "loader");
  unique(names[1], "loader");
  int fds[2];
  CHECK(pipe2(fds, O_CLOEXEC) == 0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    char *argv[] = {
      (char *)interp, self, "--helper", "owner_then_sleep", names[0], names[1], NULL
    };
    execv(interp, argv);
    _exit(127);
  }
  close(fds[1]);
  expect_output(fds[0], "ready\n");
  CHECK(exists(names[0]) && exists(names[1]));
  tdm_test_kill_and_reap(pid);
  WAIT_UNTIL(!exists(names[0]) && !exists(names[1]));
}

/* ---- Bad input and resource limits ----------------------------------------------------------- */

TEST(bad_names_sizes_flags) {
  tdm_shm *const sentinel = (tdm_shm *)(uintptr_t)0x1234;
  tdm_shm *s = sentinel;
  char name[NAME_LEN];
  unique(name, "bad");
  /* Once first: the reaper's socket is opened with the first owned segment and stays. */
  CHECK_OK(tdm_shm_close(create(name, 4096)));
  int fds = tdm_test_count_fds();

  /* Longest name accepted, with or without the slash; one byte more is refused. */
  char longest[TDM_SHM_NAME_MAX + 3];
  snprintf(longest, sizeof longest, "tdm-test-%d-", (int)getpid());
  size_t n = strlen(longest);
  memset(longest + n, 'x', TDM_SHM_NAME_MAX - n);
  longest[TDM_SHM_NAME_MAX] = '\0';
  CHECK_OK(tdm_shm_create(&s, longest, 4096, NULL));
  CHECK(strcmp(tdm_shm_name(s) + 1, longest) == 0);
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(longest));
  char slashed[TDM_SHM_NAME_MAX + 3];
  snprintf(slashed, sizeof slashed, "/%s", longest);
  CHECK_OK(tdm_shm_create(&s, slashed, 4096, NULL));
  CHECK_OK(tdm_shm_close(s));
  s = sentinel;
  strcat(longest, "x");
  CHECK_ERR(tdm_shm_create(&s, longest, 4096, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_attach(&s, longest, 0, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_unlink_name(longest), -EINVAL);

  const char *bad[] = { "", "/", "a/b", "/a/b", "//a", "a/", ".", "..", "/.", "/.." };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_ERR(tdm_shm_create(&s, bad[i], 4096, NULL), -EINVAL);
    CHECK_ERR(tdm_shm_attach(&s, bad[i], 0, NULL), -EINVAL);
    CHECK_ERR(tdm_shm_unlink_name(bad[i]), -EINVAL);
  }
  CHECK_ERR(tdm_shm_attach(&s, NULL, 0, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_unlink_name(NULL), -EINVAL);

  /* Sizes. */
  CHECK_ERR(tdm_shm_create(&s, name, 0, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_create(&s, NULL, 0, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_create(&s, name, SIZE_MAX, NULL), -EFBIG);
  CHECK_ERR(tdm_shm_create(&s, NULL, SIZE_MAX, NULL), -EFBIG);
  CHECK_ERR(tdm_shm_create(&s, name, (size_t)PTRDIFF_MAX + 1, NULL), -EFBIG);

  /* Flags and modes. */
  tdm_shm_options o = { .flags = 0x100 };
  CHECK_ERR(tdm_shm_create(&s, name, 4096, &o), -EINVAL);
  CHECK_ERR(tdm_shm_attach(&s, name, 0, &o), -EINVAL);
  o = (tdm_shm_options){ .flags = TDM_SHM_OWN | TDM_SHM_NOOWN };
  CHECK_ERR(tdm_shm_create(&s, name, 4096, &o), -EINVAL);
  CHECK_ERR(tdm_shm_attach(&s, name, 0, &o), -EINVAL);
  o = (tdm_shm_options){ .mode = 04600 };
  CHECK_ERR(tdm_shm_create(&s, name, 4096, &o), -EINVAL);

  /* Missing, too small, existing. */
  CHECK_ERR(tdm_shm_attach(&s, name, 0, NULL), -ENOENT);
  CHECK_ERR(tdm_shm_unlink_name(name), -ENOENT);
  CHECK(s == sentinel);
  CHECK(!exists(name));
  tdm_shm *t = create(name, 4096);
  strcpy(tdm_shm_addr(t), "original");
  CHECK_ERR(tdm_shm_attach(&s, name, 4097, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_create(&s, name, 4096, NULL), -EEXIST);
  CHECK_ERR(tdm_shm_create(&s, name + 1, 8192, NULL), -EEXIST);
  CHECK(s == sentinel);
  CHECK(strcmp(tdm_shm_addr(t), "original") == 0);
  CHECK_EQ(tdm_shm_size(t), 4096);
  CHECK(tdm_shm_owned(t));
  CHECK_OK(tdm_shm_close(t));
  CHECK(!exists(name));

  /* An empty segment made by someone else cannot be attached. */
  char path[128];
  snprintf(path, sizeof path, "/dev/shm/%s", name + 1);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  CHECK(fd >= 0);
  CHECK_ERR(tdm_shm_attach(&s, name, 0, NULL), -EINVAL);
  CHECK_ERR(tdm_shm_attach_fd(&s, fd, 0), -EINVAL);
  CHECK(ftruncate(fd, 4096) == 0);
  /* Not open for writing: the read-write mapping is refused. */
  int ro = open(path, O_RDONLY);
  CHECK(ro >= 0);
  CHECK_ERR(tdm_shm_attach_fd(&s, ro, 0), -EACCES);
  close(ro);
  close(fd);
  CHECK_OK(tdm_shm_unlink_name(name));
  /* A directory in /dev/shm is not a segment. */
  CHECK(mkdir(path, 0700) == 0);
  CHECK_ERR(tdm_shm_attach(&s, name, 0, NULL), -EINVAL);
  CHECK(rmdir(path) == 0);

  /* Descriptors that are not shared memory. */
  CHECK_ERR(tdm_shm_attach_fd(&s, -1, 0), -EBADF);
  CHECK_ERR(tdm_shm_attach_fd(&s, 1000, 0), -EBADF);
  int p[2];
  CHECK(pipe(p) == 0);
  CHECK_ERR(tdm_shm_attach_fd(&s, p[0], 0), -EINVAL);
  close(p[0]);
  close(p[1]);
  int dir = open("/", O_RDONLY | O_DIRECTORY);
  CHECK(dir >= 0);
  CHECK_ERR(tdm_shm_attach_fd(&s, dir, 0), -EINVAL);
  close(dir);
  CHECK(s == sentinel);

  CHECK_EQ(tdm_test_count_fds(), fds);
  CHECK_EQ(count_mine(getpid()), 0);
}

static void create_without_out(void *arg) {
  (void)arg;
  tdm_shm_create(NULL, NULL, 4096, NULL);
}

TEST(null_out_is_misuse) {
  EXPECT_ABORT(create_without_out, NULL, "tdm_shm_create: out is NULL");
}

TEST(full_dev_shm_is_enospc_and_leaves_nothing) {
  struct statvfs vfs;
  CHECK(statvfs("/dev/shm", &vfs) == 0);
  char name[NAME_LEN];
  unique(name, "full");
  /* Once first: the reaper's socket is opened with the first owned segment and stays. */
  CHECK_OK(tdm_shm_close(create(name, 4096)));
  int fds = tdm_test_count_fds();
  tdm_shm *s = NULL;
  if (vfs.f_blocks > 0) {
    size_t total = (size_t)vfs.f_blocks * vfs.f_frsize;
    CHECK_ERR(tdm_shm_create(&s, name, total + ((size_t)64 << 20), NULL), -ENOSPC);
    CHECK(!exists(name));
    tdm_shm_options o = { .flags = TDM_SHM_NOOWN };
    CHECK_ERR(tdm_shm_create(&s, name, total + ((size_t)64 << 20), &o), -ENOSPC);
    CHECK(!exists(name));
  }
  /* Beyond memory and swap: refused up front, for a memfd as for a name. */
  struct sysinfo si;
  CHECK(sysinfo(&si) == 0);
  size_t memory = ((size_t)si.totalram + si.totalswap) * si.mem_unit;
  CHECK_ERR(tdm_shm_create(&s, NULL, memory + ((size_t)1 << 30), NULL), -ENOSPC);
  CHECK_ERR(tdm_shm_create(&s, name, memory + ((size_t)1 << 30), NULL), -ENOSPC);
  CHECK(!exists(name));
  CHECK(s == NULL);
  CHECK_EQ(tdm_test_count_fds(), fds);
  CHECK_EQ(count_mine(getpid()), 0);
}

TEST(no_descriptor_leaks) {
  char name[NAME_LEN];
  unique(name, "leak");
  /* Once first: the reaper's socket is opened with the first owned segment and stays. */
  CHECK_OK(tdm_shm_close(create(name, 4096)));
  int fds = tdm_test_count_fds();
  for (int i = 0; i < 200; i++) {
    tdm_shm *s = create(name, 4096);
    tdm_shm *a = attach(name, 0, 0);
    tdm_shm *b = attach(name, 0, TDM_SHM_OWN);
    tdm_shm *c = create(NULL, 4096);
    tdm_shm *d = NULL;
    CHECK_OK(tdm_shm_attach_fd(&d, tdm_shm_fd(c), 0));
    tdm_shm *e = NULL;
    CHECK_ERR(tdm_shm_create(&e, name, 4096, NULL), -EEXIST);
    CHECK_OK(tdm_shm_close(d));
    CHECK_OK(tdm_shm_close(c));
    CHECK_OK(tdm_shm_close(a));
    CHECK_OK(tdm_shm_close(s));
    CHECK_ERR(tdm_shm_close(b), -ENOENT);
  }
  CHECK_EQ(tdm_test_count_fds(), fds);
  CHECK_EQ(count_mine(getpid()), 0);
}

#define FD_LIMIT 64

/* Takes every free descriptor below the limit but `spare`; returns how many, in fds. */
static int take_fds(int fds[FD_LIMIT], int spare) {
  int n = 0, fd;
  while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) {
    CHECK(n < FD_LIMIT);
    fds[n++] = fd;
  }
  CHECK_EQ(errno, EMFILE);
  CHECK(n >= spare);
  for (int i = 0; i < spare; i++)
    close(fds[--n]);
  return n;
}

static void give_fds(const int fds[FD_LIMIT], int n) {
  while (n > 0)
    close(fds[--n]);
}

TEST(descriptor_limit_is_emfile_and_leaves_nothing) {
  char name[NAME_LEN], other[NAME_LEN];
  unique(name, "emfile");
  unique(other, "emfile");
  tdm_shm *anon = create(NULL, 4096);
  tdm_shm *t = create_noown(other, 4096);
  struct rlimit rl;
  CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  rl.rlim_cur = FD_LIMIT;
  CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  tdm_shm *s = NULL;
  tdm_shm_options own = { .flags = TDM_SHM_OWN };
  int fds[FD_LIMIT];

  /* None free: the segment's own descriptor cannot be had. */
  int n = take_fds(fds, 0);
  CHECK_ERR(tdm_shm_create(&s, name, 4096, NULL), -EMFILE);
  CHECK_ERR(tdm_shm_create(&s, NULL, 4096, NULL), -EMFILE);
  CHECK_ERR(tdm_shm_attach(&s, other, 0, NULL), -EMFILE);
  CHECK_ERR(tdm_shm_attach_fd(&s, tdm_shm_fd(anon), 0), -EMFILE);
  CHECK(!exists(name));
  give_fds(fds, n);

  /* One free: the segment's file opens, the socket to a new reaper does not. Each failure
   * gives the descriptor back, or the last create would fail. */
  n = take_fds(fds, 1);
  CHECK_ERR(tdm_shm_create(&s, name, 4096, NULL), -EMFILE);
  CHECK(!exists(name));
  CHECK_ERR(tdm_shm_attach(&s, other, 0, &own), -EMFILE);
  CHECK(exists(other));
  CHECK(s == NULL);
  s = create_noown(name, 4096);
  CHECK_ERR(tdm_shm_own(s), -EMFILE);
  CHECK(!tdm_shm_owned(s));
  CHECK_OK(tdm_shm_close(s));
  CHECK(exists(name)); /* not owned: the close removed nothing */
  give_fds(fds, n);

  /* With descriptors to spare, owning works again. */
  s = attach(name, 0, TDM_SHM_OWN);
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
  CHECK_OK(tdm_shm_unlink(t));
  CHECK_OK(tdm_shm_close(t));
  CHECK_OK(tdm_shm_close(anon));
  CHECK_EQ(count_mine(getpid()), 0);
}

/* The longest name there is, made unique by `i`. */
static void longest_name(char *buf, int i) {
  int n = snprintf(buf, TDM_SHM_NAME_MAX + 2, "/tdm-test-%d-full-%d-", (int)getpid(), i);
  memset(buf + n, 'x', (size_t)(TDM_SHM_NAME_MAX + 1 - n));
  buf[TDM_SHM_NAME_MAX + 1] = '\0';
}

static void fill_the_reaper(void *arg) {
  struct shared *sh = arg;
  char name[TDM_SHM_NAME_MAX + 2];
  int n = 0, r;
  for (;; n++) {
    CHECK(n < 5000);
    longest_name(name, n);
    tdm_shm *s = NULL;
    r = tdm_shm_create(&s, name, 4096, NULL);
    if (r != 0) break;
  }
  /* 1 MiB of entries of 254 to 269 bytes (the name, and the inode in hex). */
  CHECK_ERR(r, -ENOMEM);
  printf("the reaper's table was full after %d names\n", n);
  CHECK(n >= (1 << 20) / 269 && n <= (1 << 20) / 254);
  CHECK(!exists(name));
  CHECK_EQ(count_mine(getpid()), n);
  /* Segments without an owner do not count. */
  tdm_shm *s = create_noown(name, 4096);
  CHECK_ERR(tdm_shm_own(s), -ENOMEM);
  CHECK_OK(tdm_shm_unlink(s));
  CHECK_OK(tdm_shm_close(s));
  sh->pid = getpid();
  sh->ready = n;
}

TEST(full_reaper_table_is_enomem) {
  struct rlimit rl;
  CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 5000)
    tdm_test_skip("needs 5000 descriptors, the hard limit is %lu", (unsigned long)rl.rlim_max);
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 8192 ? 8192 : rl.rlim_max;
  CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  struct shared *sh = shared_new();
  pid_t owner = start_owner(sh, "full", 0, fill_the_reaper);
  CHECK_EQ(count_mine(owner), sh->ready);
  tdm_test_kill_and_reap(owner);
  /* The reaper held them all. */
  WAIT_UNTIL(count_mine(owner) == 0);
}

/* An allocator that fails the allocation number `fail_at` (counting from 1) of each round. */
static int allocs, fail_at;

static void *failing(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL && ++allocs == fail_at) return NULL;
  return realloc(ptr, size);
}

TEST(allocation_failures_leave_nothing) {
  char name[NAME_LEN];
  unique(name, "alloc");
  tdm_shm *keep = create(name, 4096);
  tdm_shm *anon = create(NULL, 4096);
  CHECK_OK(tdm_shm_unlink(keep));
  CHECK_OK(tdm_shm_own(create_noown(name, 4096))); /* the reaper runs: its socket is counted */
  CHECK_OK(tdm_shm_unlink_name(name));
  int fds = tdm_test_count_fds();
  tdm_allocator a = { failing, NULL };
  tdm_allocator_set(&a);
  int failures = 0;
  for (fail_at = 1;; fail_at++) {
    allocs = 0;
    tdm_shm *s = NULL;
    int r = tdm_shm_create(&s, name, 4096, NULL);
    if (r == 0) {
      CHECK_OK(tdm_shm_close(s));
      break;
    }
    CHECK_ERR(r, -ENOMEM);
    CHECK(s == NULL);
    CHECK(!exists(name));
    CHECK_EQ(tdm_test_count_fds(), fds);
    failures++;
  }
  CHECK(failures > 0);
  for (int which = 0; which < 3; which++) {
    fail_at = 0;
    tdm_shm *t = which == 0 ? NULL : create_noown(name, 4096);
    int base = tdm_test_count_fds();
    failures = 0;
    for (fail_at = 1;; fail_at++) {
      allocs = 0;
      tdm_shm *s = NULL;
      int r = which == 0   ? tdm_shm_create(&s, NULL, 4096, NULL)
              : which == 1 ? tdm_shm_attach(&s, name, 0, NULL)
                           : tdm_shm_attach_fd(&s, tdm_shm_fd(anon), 0);
      if (r == 0) {
        CHECK_OK(tdm_shm_close(s));
        break;
      }
      CHECK_ERR(r, -ENOMEM);
      CHECK(s == NULL);
      CHECK_EQ(tdm_test_count_fds(), base);
      failures++;
    }
    CHECK(failures > 0);
    fail_at = 0;
    if (t != NULL) {
      CHECK_OK(tdm_shm_unlink(t));
      CHECK_OK(tdm_shm_close(t));
    }
  }
  tdm_allocator_set(NULL);
  CHECK_EQ(count_mine(getpid()), 0);
  CHECK_OK(tdm_shm_close(anon));
  CHECK_OK(tdm_shm_close(keep));
}

/* ---- Threads and fork together --------------------------------------------------------------- */

#define STRESS_THREADS 4
#define STRESS_ROUNDS  100

struct stress {
  tdm_event *done; /* set when the forks are over: workers may return */
  int id;
};

/*
 * Under AddressSanitizer (GCC 12's), a child forked while another thread is inside ASan's
 * allocator inherits its lock held and hangs at its first malloc: glibc's malloc takes its
 * locks around fork(), ASan's does not. There, the workers run each round under a read lock
 * and the forks happen under the write lock, between rounds: the same work and the same
 * checks, with the forks at quiet moments. Every other build forks at any moment.
 */
#if defined(__SANITIZE_ADDRESS__)
#define FORK_AT_QUIET_MOMENTS 1
#else
#define FORK_AT_QUIET_MOMENTS 0
#endif
static pthread_rwlock_t fork_gate;

static void fork_gate_init(void) {
  pthread_rwlockattr_t a;
  pthread_rwlockattr_init(&a);
  /* The forker must not wait for ever behind workers that take the read lock again and again. */
  pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  CHECK_OK(pthread_rwlock_init(&fork_gate, &a));
  pthread_rwlockattr_destroy(&a);
}

static void stress_worker(void *arg) {
  struct stress *st = arg;
  /* At least STRESS_ROUNDS, and on while the main thread forks. */
  for (int i = 0; i < STRESS_ROUNDS || !tdm_event_is_set(st->done); i++) {
    if (FORK_AT_QUIET_MOMENTS) pthread_rwlock_rdlock(&fork_gate);
    char name[NAME_LEN];
    snprintf(name, sizeof name, "/tdm-test-%d-stress-%d-%d", (int)getpid(), st->id, i);
    tdm_shm *s = create(name, 4096);
    tdm_shm *a = attach(name, 0, TDM_SHM_OWN);
    CHECK_OK(tdm_shm_disown(s));
    CHECK_OK(tdm_shm_own(s));
    CHECK(tdm_shm_owned(s) && tdm_shm_owned(a));
    CHECK_OK(tdm_shm_close(a));
    CHECK_ERR(tdm_shm_close(s), -ENOENT);
    if (FORK_AT_QUIET_MOMENTS) pthread_rwlock_unlock(&fork_gate);
  }
  /* Alive until the forks are over: ThreadSanitizer reports a thread that finished before a
   * fork as leaked in the child. */
}

static void stress_child(void *arg) {
  (void)arg;
  char name[NAME_LEN];
  unique(name, "stresschild");
  tdm_shm *s = create(name, 4096);
  CHECK(tdm_shm_owned(s));
  CHECK_OK(tdm_shm_close(s));
  CHECK(!exists(name));
}

TEST(threads_and_forks_together) {
  fork_gate_init();
  struct stress st[STRESS_THREADS];
  tdm_event done;
  CHECK_OK(tdm_event_init(&done, TDM_SYNC_PRIVATE));
  tdm_thread *t[STRESS_THREADS];
  for (int i = 0; i < STRESS_THREADS; i++) {
    st[i].id = i;
    st[i].done = &done;
    CHECK_OK(tdm_thread_start(&t[i], stress_worker, &st[i], NULL));
  }
  for (int i = 0; i < 50; i++) {
    if (FORK_AT_QUIET_MOMENTS) pthread_rwlock_wrlock(&fork_gate);
    pid_t pid = tdm_test_fork(stress_child, NULL);
    if (FORK_AT_QUIET_MOMENTS) pthread_rwlock_unlock(&fork_gate);
    tdm_test_wait_ok(pid);
  }
  tdm_event_set(&done);
  for (int i = 0; i < STRESS_THREADS; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  tdm_event_fini(&done);
  CHECK_EQ(count_mine(getpid()), 0);
}

#define MAX_FORKED 256

struct forker {
  int stop, forks; /* atomics */
  int ready;
  pid_t pids[MAX_FORKED]; /* children that wait to be killed */
  char name[NAME_LEN];
};

static void fork_in_a_loop(void *arg) {
  struct forker *f = arg;
  while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE) && f->forks < MAX_FORKED) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      for (;;)
        pause();
    }
    f->pids[f->forks] = pid;
    __atomic_add_fetch(&f->forks, 1, __ATOMIC_RELEASE);
  }
}

static void first_owner_while_forking(void *arg) {
  struct forker *f = arg;
  tdm_thread *t;
  CHECK_OK(tdm_thread_start(&t, fork_in_a_loop, f, NULL));
  WAIT_UNTIL(__atomic_load_n(&f->forks, __ATOMIC_ACQUIRE) > 0);
  /* Starts the reaper (a fork of its own) while the other thread forks. */
  create(f->name, 4096);
  __atomic_store_n(&f->stop, 1, __ATOMIC_RELEASE);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  __atomic_store_n(&f->ready, 1, __ATOMIC_RELEASE);
}

TEST(reaper_started_while_another_thread_forks) {
  /* The children forked meanwhile come to this process when their parent is killed. */
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  struct forker *f = tdm_test_shared(sizeof *f);
  for (int i = 0; i < 10; i++) {
    memset(f, 0, sizeof *f);
    unique(f->name, "forking");
    pid_t owner = fork_lingering(first_owner_while_forking, f);
    WAIT_UNTIL(__atomic_load_n(&f->ready, __ATOMIC_ACQUIRE));
    tdm_test_kill_and_reap(owner);
    /* None of the children, forked at any moment of the start, holds the owner's socket. */
    WAIT_UNTIL(!exists(f->name));
    for (int k = 0; k < f->forks; k++)
      tdm_test_kill_and_reap(f->pids[k]);
  }
}
