/*
 * child.c: the child's side of a start, and the calling process's identity.
 *
 * A spawned child is this same program, exec'd afresh with TANDEM_BOOT=<fd> in its
 * environment. libtandem's constructor sees the variable before main() runs, removes it (so
 * that the child's own children and exec's do not inherit it), reads the boot message on that
 * descriptor and becomes what the message says: a task, which runs its function and exits, or
 * the forkserver, which serves until its parent goes. main() never runs in either, which is why
 * a tandem program needs no main guard. A forkserver child enters the same path from the
 * forkserver's loop, right after fork().
 *
 * The function arrives as (object, offset): the path of the loaded object that contains it
 * (empty for the main program) and its distance from that object's load address, which
 * dladdr1() gave the parent. The child opens the object (a no-op if it is loaded; dlopen()
 * otherwise, which runs the library's constructors), adds the offset to its own load address,
 * and checks with dladdr1() that the address falls inside that same object. Only then does it
 * tell the parent that it runs, so every failure to find the function is the parent's error
 * code, with no child left over.
 *
 * A daemon leads a process group of its own and watches the read end of its parent's death
 * pipe from a small thread; only the parent holds the write end, so the pipe closes exactly
 * when the parent process ends, however it ends, and the thread then SIGKILLs the daemon's whole
 * group: the daemon and every descendant that stayed in it. PR_SET_PDEATHSIG would kill the
 * daemon alone (and fires when the parent *thread* ends, not the process), so it only stands in
 * for the watcher when the thread cannot be made.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform/platform.h"
#include "process/process.h"

char **tdm__argv;
int tdm__spawn_plan;
char tdm__spawn_preload[4096];

/* The calling process's identity. `name` is replaced only by tdm_process_set_name(). */
static struct {
  pthread_mutex_t mu;
  char name[256];
  bool named;
  pid_t parent; /* 0: not a tandem child */
  bool daemon;
} self = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* ---- The calling process --------------------------------------------------------------------- */

const char *tdm_process_current_name(void) {
  return self.named ? self.name : "MainProcess";
}

int tdm_process_set_name(const char *name) {
  if (name == NULL || name[0] == '\0' || strlen(name) >= sizeof self.name) return -EINVAL;
  pthread_mutex_lock(&self.mu);
  /* Readers may hold the old pointer: it is the same buffer, so it stays valid. */
  snprintf(self.name, sizeof self.name, "%s", name);
  self.named = true;
  pthread_mutex_unlock(&self.mu);
  if (tdm__is_main_thread()) tdm__set_os_thread_name(name);
  return 0;
}

pid_t tdm_process_parent_pid(void) {
  return self.parent != 0 ? self.parent : getppid();
}

bool tdm_process_is_daemon(void) {
  return self.daemon;
}

/* ---- Becoming a child ------------------------------------------------------------------------ */

static void *watch_parent(void *arg) {
  int fd = (int)(intptr_t)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  struct pollfd p = { .fd = fd, .events = POLLIN };
  /* Nobody ever writes to the pipe: it only becomes readable (or hung up) when it closes. */
  while (poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
  if (getpgrp() == getpid()) kill(0, SIGKILL);
  kill(getpid(), SIGKILL);
  return NULL;
}

void tdm__child_setup(const char *name, bool daemon, bool group, pid_t parent, int death_rd,
                      bool may_thread) {
  size_t n = strnlen(name, sizeof self.name - 1);
  memcpy(self.name, name, n);
  self.name[n] = '\0';
  self.named = true;
  self.parent = parent;
  self.daemon = daemon;
  tdm__set_os_thread_name(name);
  if (group) (void)setpgid(0, 0);
  if (!daemon) return;
  pthread_attr_t attr;
  pthread_t t;
  bool watching = false;
  if (may_thread && pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    watching = pthread_create(&t, &attr, watch_parent, (void *)(intptr_t)death_rd) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!watching) {
    pid_t parent_now = getppid();
    struct pollfd p = { .fd = death_rd, .events = POLLIN };
    /* Set the signal, then look at the pipe: a parent that died in between is seen either way. */
    if (!tdm__parent_death_signal(SIGKILL, parent_now) || poll(&p, 1, 0) != 0) _exit(128 + SIGKILL);
  }
  /* A parent that died before the watcher started is seen too: the pipe is closed already. */
}

_Noreturn void tdm__child_exit(int rc) {
  fflush(NULL);
  _exit(rc & 0xff);
}

/* ---- The boot message ------------------------------------------------------------------------ */

static _Noreturn void boot_fail(int channel, int code) {
  struct tdm__boot_reply reply = { TDM__BOOT_MAGIC, code };
  (void)tdm__send_all(channel, &reply, sizeof reply);
  _exit(127);
}

/* Moves `fd` to a number above `floor` (close-on-exec), closing the old one. */
static int move_above(int fd, int floor) {
  if (fd > floor) return fd;
  int n = fcntl(fd, F_DUPFD_CLOEXEC, floor + 1);
  if (n < 0) return -1;
  close(fd);
  return n;
}

void *tdm__fn_resolve(const char *object, uint64_t offset) {
  void *handle = object[0] == '\0' ? dlopen(NULL, RTLD_NOW) : dlopen(object, RTLD_NOW);
  if (handle == NULL) return NULL;
  struct link_map *lm = NULL;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || lm == NULL) return NULL;
  uintptr_t addr = (uintptr_t)lm->l_addr + (uintptr_t)offset;
  Dl_info info;
  struct link_map *where = NULL;
  if (dladdr1((void *)addr, &info, (void **)&where, RTLD_DL_LINKMAP) == 0 || where != lm)
    return NULL;
  /* The handle stays open: the function runs in this object. */
  return (void *)addr;
}

_Noreturn void tdm__child_boot(int channel) {
  struct tdm__boot b;
  int fds[1 + TDM__BOOT_FDS_MAX];
  size_t n_fds = 0;
  ssize_t got = tdm__recv_fds(channel, &b, sizeof b, fds, 1 + TDM__BOOT_FDS_MAX, &n_fds);
  if (got <= 0) _exit(127);
  if ((size_t)got < sizeof b &&
      tdm__recv_all(channel, (char *)&b + got, sizeof b - (size_t)got) != 0)
    _exit(127);
  if (b.magic != TDM__BOOT_MAGIC || b.version != TDM__BOOT_VERSION) boot_fail(channel, -EPROTO);

  if (b.role == TDM__ROLE_FORKSERVER) {
    if (n_fds != 1) boot_fail(channel, -EPROTO);
    struct tdm__boot_reply reply = { TDM__BOOT_MAGIC, 0 };
    (void)tdm__send_all(channel, &reply, sizeof reply);
    close(channel);
    tdm__forkserver_main(fds[0], (b.flags & TDM__BOOT_PDEATH) != 0, b.parent_pid);
  }

  bool daemon = (b.flags & TDM__BOOT_DAEMON) != 0;
  size_t first_pass = daemon ? 1 : 0;
  if (b.role != TDM__ROLE_TASK || n_fds != first_pass + b.n_pass || b.n_pass > TDM__BOOT_FDS_MAX ||
      b.object_len > 4096 || b.name_len > 4096)
    boot_fail(channel, -EPROTO);
  char object[4097], name[4097];
  void *arg = NULL;
  if (tdm__recv_all(channel, object, b.object_len) != 0) _exit(127);
  object[b.object_len] = '\0';
  if (tdm__recv_all(channel, name, b.name_len) != 0) _exit(127);
  name[b.name_len] = '\0';
  if (b.arg_size > 0) {
    arg = malloc(b.arg_size);
    if (arg == NULL) boot_fail(channel, -ENOMEM);
    if (tdm__recv_all(channel, arg, b.arg_size) != 0) _exit(127);
  }

  /* Descriptors to their numbers: first everything of ours above every target, then dup2. */
  int top = 2;
  for (uint32_t i = 0; i < b.n_pass; i++)
    if (b.targets[i] > top) top = b.targets[i];
  channel = move_above(channel, top);
  for (size_t i = 0; i < n_fds; i++)
    fds[i] = move_above(fds[i], top);
  if (channel < 0) _exit(127);
  for (size_t i = 0; i < n_fds; i++)
    if (fds[i] < 0) boot_fail(channel, -EMFILE);
  for (uint32_t i = 0; i < b.n_pass; i++) {
    if (dup2(fds[first_pass + i], b.targets[i]) < 0) boot_fail(channel, -errno);
    close(fds[first_pass + i]);
  }

  if (b.flags & TDM__BOOT_JOINPG) (void)setpgid(0, b.parent_pgid);
  tdm__child_setup(name, daemon, (b.flags & TDM__BOOT_GROUP) != 0, b.parent_pid,
                   daemon ? fds[0] : -1, true);
  void *addr = tdm__fn_resolve(object, b.offset);
  if (addr == NULL) boot_fail(channel, TDM_ENOTASK);
  tdm_process_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  struct tdm__boot_reply reply = { TDM__BOOT_MAGIC, 0 };
  if (tdm__send_all(channel, &reply, sizeof reply) != 0) _exit(127);
  close(channel);
  tdm__child_exit(fn(arg, (size_t)b.arg_size));
}

/*
 * The library constructor: runs after tandem's own (platform 101, threads 102), before the
 * program's. glibc passes argc, argv and envp to ELF constructors.
 */
__attribute__((constructor)) static void child_init(int argc, char **argv, char **envp) {
  (void)argc;
  (void)envp;
  tdm__argv = argv;
  /* Whether an exec of this program runs this constructor (see tdm__spawn_self()). */
  tdm__spawn_plan =
      tdm__exec_self_plan((const void *)&tdm__argv, tdm__spawn_preload, sizeof tdm__spawn_preload);
  const char *v = getenv(TDM__BOOT_ENV);
  if (v == NULL) return;
  char *end;
  long fd = strtol(v, &end, 10);
  unsetenv(TDM__BOOT_ENV);
  if (*end != '\0' || fd < 0 || fd > INT32_MAX || fcntl((int)fd, F_GETFD) < 0) return;
  (void)fcntl((int)fd, F_SETFD, FD_CLOEXEC);
  tdm__child_boot((int)fd);
}
