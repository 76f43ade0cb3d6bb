/*
 * start.c: the start methods, seen from the parent.
 *
 * fork: fork(), then the child runs the function on its copy-on-write copy of the argument. The
 * parent flushes stdio first, so that the child cannot write the parent's buffered output a
 * second time. pidfd_open() on the new pid is race-free: the child cannot be reaped (and its pid
 * recycled) before we wait for it.
 *
 * spawn: posix_spawn() of /proc/self/exe with the program's argv and environment, plus
 * TANDEM_BOOT=<fd>; glibc's posix_spawn() uses CLONE_VM|CLONE_VFORK, so its cost does not grow
 * with the parent's memory, and it reports exec failures as its result. The only descriptor
 * the child inherits beyond the caller's inheritable ones is its end of a socketpair (dup2 onto
 * itself in the file actions clears close-on-exec in that one child only, so concurrent spawns
 * from other threads never leak it). Through the socket the parent sends the boot message (the
 * function as (object, offset), name, flags, argument, and by SCM_RIGHTS the death pipe and
 * pass_fds) and waits for the child's reply: the child has found its function and runs.
 * The child starts with an empty signal mask, whatever the spawning thread blocks.
 *
 * forkserver: see forkserver.c; the boot exchange is the same as spawn's.
 *
 * A start that fails after the child exists kills the child (SIGKILL through its pidfd) and
 * reaps it, so a failure never leaves a zombie, a descriptor or a half-started child behind.
 */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "platform/platform.h"
#include "process/process.h"

extern char **environ;

int tdm__child_pidfd(pid_t pid) {
  int pidfd = tdm__pidfd_open(pid);
  if (pidfd < 0) {
    (void)kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
  }
  return pidfd;
}

int tdm__boot_fds(const struct tdm__task *t, int *fds, size_t *n, uint32_t *flags) {
  *n = 0;
  if (t->group) *flags |= TDM__BOOT_GROUP;
  if (t->daemon) {
    int r = tdm__death_pipe(&fds[(*n)++]);
    if (r != 0) return r;
    *flags |= TDM__BOOT_DAEMON;
  }
  for (size_t i = 0; i < t->n_pass; i++)
    fds[(*n)++] = t->pass_fds[i];
  return 0;
}

void tdm__discard_child(int pidfd) {
  int code;
  (void)tdm__pidfd_signal(pidfd, SIGKILL);
  (void)tdm__pidfd_reap(pidfd, true, &code);
  close(pidfd);
}

/* ---- fork ------------------------------------------------------------------------------------ */

int tdm__start_fork(tdm_process *p, const struct tdm__task *t) {
  int death_rd = -1;
  if (t->daemon) {
    int r = tdm__death_pipe(&death_rd);
    if (r != 0) return r;
  }
  pid_t parent = tdm__self_pid();
  /* ThreadSanitizer cannot start a thread in the child of a multithreaded fork (it kills the
   * child): a daemon made so relies on PR_SET_PDEATHSIG alone in TSan builds. */
  bool may_thread = true;
#ifdef __SANITIZE_THREAD__
  may_thread = !t->daemon || tdm__thread_count() == 1;
#endif
  fflush(NULL);
  tdm__forking_daemon = t->daemon;
  pid_t pid = fork();
  tdm__forking_daemon = false;
  if (pid == 0) {
    tdm__child_setup(t->name, t->daemon, t->group, parent, death_rd, may_thread);
    tdm__child_exit(t->fn(t->size > 0 ? (void *)(uintptr_t)t->arg : NULL, t->size));
  }
  if (pid < 0) return -errno;
  /* Both sides set the group, so that it exists whichever runs first. */
  if (t->group) (void)setpgid(pid, pid);
  int pidfd = tdm__child_pidfd(pid);
  if (pidfd < 0) return pidfd;
  p->pid = pid;
  p->pidfd = pidfd;
  return 0;
}

/* ---- spawn ----------------------------------------------------------------------------------- */

int tdm__spawn_self(pid_t *pid_out, int *pidfd_out, int *channel_out) {
  /* A program that loaded libtandem with dlopen() would run its main() in the child: preload
   * the library so that its constructor takes over, or refuse when even that cannot work. */
  if (tdm__spawn_plan < 0) return -ENOTSUP;
  char *preload = NULL;
  if (tdm__spawn_plan == 1) {
    const char *old = getenv("LD_PRELOAD");
    size_t size =
        sizeof "LD_PRELOAD=:" + (old != NULL ? strlen(old) : 0) + strlen(tdm__spawn_preload);
    preload = tdm__alloc(size);
    if (preload == NULL) return -ENOMEM;
    /* The program's own preloads first: some (a sanitizer's runtime) must come first. */
    snprintf(preload, size, "LD_PRELOAD=%s%s%s", old != NULL ? old : "",
             old != NULL && old[0] != '\0' ? ":" : "", tdm__spawn_preload);
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    int e = -errno;
    tdm__free(preload);
    return e;
  }

  /* The environment, without any TANDEM_BOOT of ours, plus the child's. */
  size_t n = 0;
  for (char **e = environ; e != NULL && *e != NULL; e++)
    n++;
  char **env = tdm__calloc(n + 3, sizeof *env);
  if (env == NULL) {
    close(sv[0]);
    close(sv[1]);
    tdm__free(preload);
    return -ENOMEM;
  }
  char boot[32];
  snprintf(boot, sizeof boot, TDM__BOOT_ENV "=%d", sv[1]);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], TDM__BOOT_ENV "=", sizeof TDM__BOOT_ENV) != 0 &&
        (preload == NULL || strncmp(environ[i], "LD_PRELOAD=", 11) != 0))
      env[k++] = environ[i];
  if (preload != NULL) env[k++] = preload;
  env[k++] = boot;
  env[k] = NULL;

  static char *const fallback_argv[] = { "tandem-child", NULL };
  char *const *argv = tdm__argv != NULL && tdm__argv[0] != NULL ? tdm__argv : fallback_argv;

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t none;
  sigemptyset(&none);
  int r = posix_spawn_file_actions_init(&fa);
  if (r == 0) {
    r = posix_spawnattr_init(&attr);
    if (r != 0) posix_spawn_file_actions_destroy(&fa);
  }
  pid_t pid = -1;
  if (r == 0) {
    r = posix_spawn_file_actions_adddup2(&fa, sv[1], sv[1]);
    if (r == 0) r = posix_spawnattr_setsigmask(&attr, &none);
    if (r == 0) r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    if (r == 0) r = posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, env);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
  }
  tdm__free(env);
  tdm__free(preload);
  close(sv[1]);
  if (r != 0) {
    close(sv[0]);
    return -r;
  }
  int pidfd = tdm__child_pidfd(pid);
  if (pidfd < 0) {
    close(sv[0]);
    return pidfd;
  }
  *pid_out = pid;
  *pidfd_out = pidfd;
  *channel_out = sv[0];
  return 0;
}

int tdm__boot_exchange(int channel, uint16_t role, uint32_t flags, const struct tdm__task *t,
                       const int *fds, size_t n_fds) {
  struct tdm__boot b;
  memset(&b, 0, sizeof b);
  b.magic = TDM__BOOT_MAGIC;
  b.version = TDM__BOOT_VERSION;
  b.role = role;
  b.flags = flags;
  b.parent_pid = (int32_t)tdm__self_pid();
  b.parent_pgid = (int32_t)getpgrp();
  size_t object_len = 0, name_len = 0;
  if (t != NULL) {
    object_len = strlen(t->object);
    name_len = strlen(t->name);
    if (object_len > 4096) return TDM_ENOTASK;
    if (name_len > 4096) return -EINVAL;
    b.object_len = (uint32_t)object_len;
    b.name_len = (uint32_t)name_len;
    b.offset = t->offset;
    b.arg_size = t->size;
    b.n_pass = (uint32_t)t->n_pass;
    for (size_t i = 0; i < t->n_pass; i++)
      b.targets[i] = t->pass_fds[i];
  }
  ssize_t sent = tdm__send_fds(channel, &b, sizeof b, fds, n_fds);
  int r = sent < 0 ? (int)sent : 0;
  if (r == 0 && (size_t)sent < sizeof b)
    r = tdm__send_all(channel, (const char *)&b + sent, sizeof b - (size_t)sent);
  if (r == 0 && t != NULL) {
    r = tdm__send_all(channel, t->object, object_len);
    if (r == 0) r = tdm__send_all(channel, t->name, name_len);
    if (r == 0 && t->size > 0) r = tdm__send_all(channel, t->arg, t->size);
  }
  /* A child that is still reading sees the end of the message and gives up. */
  if (r != 0) (void)shutdown(channel, SHUT_WR);
  struct tdm__boot_reply reply;
  /* The child may have answered (and gone) before reading everything: read what it said. */
  int got = tdm__recv_all(channel, &reply, sizeof reply);
  if (got == 0 && reply.magic == TDM__BOOT_MAGIC) return reply.result;
  return r == 0 || r == -EPIPE ? TDM_ECHILDINIT : r;
}

int tdm__start_spawn(tdm_process *p, const struct tdm__task *t) {
  int fds[1 + TDM__PASS_FDS_MAX];
  size_t n;
  uint32_t flags = 0;
  int r = tdm__boot_fds(t, fds, &n, &flags);
  if (r != 0) return r;
  pid_t pid;
  int pidfd, channel;
  r = tdm__spawn_self(&pid, &pidfd, &channel);
  if (r != 0) return r;
  r = tdm__boot_exchange(channel, TDM__ROLE_TASK, flags, t, fds, n);
  close(channel);
  if (r != 0) {
    tdm__discard_child(pidfd);
    return r;
  }
  p->pid = pid;
  p->pidfd = pidfd;
  return 0;
}
