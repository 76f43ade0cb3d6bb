/*
 * process.c: process handles, the registry of children, and the death pipe.
 *
 * A handle holds the child's pidfd, which is how tandem watches it: the pidfd is the pollable
 * sentinel, join waits for it to become readable, and waitid(P_PIDFD) reaps the child, so no
 * SIGCHLD handler is needed and a recycled pid can never be signalled or reaped by mistake.
 * A forkserver child is the forkserver's child, not ours: the forkserver reaps it and writes its
 * exit code on a socket that the handle keeps (status_fd), and join waits on that socket.
 * Collecting the exit is serialised per handle, so several threads may join, poll and signal
 * one child at once.
 *
 * Every open handle is in one registry, for tdm_process_active_children(). Handles remember
 * the process that made them: after a fork() by the program, the child's copies are dead
 * (listed nowhere; closing them only frees memory).
 *
 * The death pipe is made on the first daemon start. Only this process holds its write end
 * (close-on-exec, and closed in the child of every fork() by a pthread_atfork handler), so the
 * pipe closes exactly when this process ends, and every daemon child watches its read end.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "platform/platform.h"
#include "process/process.h"

static struct {
  pthread_mutex_t mu;
  tdm_process head; /* sentinel of a circular list */
  atomic_uint next_id;
  atomic_int method; /* what TDM_START_DEFAULT stands for; TDM_START_DEFAULT: automatic */
} reg = { .mu = PTHREAD_MUTEX_INITIALIZER, .head = { .prev = &reg.head, .next = &reg.head } };

static struct {
  pthread_mutex_t mu;
  int rd, wr;
} death = { PTHREAD_MUTEX_INITIALIZER, -1, -1 };

__thread bool tdm__forking_daemon TDM__TLS_IE;

/* getpid() is a system call; the process's own pid changes only in the child of a fork. */
static pid_t self_pid;

pid_t tdm__self_pid(void) {
  pid_t pid = tdm__load_relaxed(&self_pid);
  if (pid == 0) {
    pid = getpid();
    tdm__store(&self_pid, pid);
  }
  return pid;
}

int tdm__death_pipe(int *rd) {
  int r = 0;
  pthread_mutex_lock(&death.mu);
  if (death.rd < 0) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) == 0) {
      death.rd = fds[0];
      death.wr = fds[1];
    } else {
      r = -errno;
    }
  }
  *rd = death.rd;
  pthread_mutex_unlock(&death.mu);
  return r;
}

/* In the child of fork(): the write end is the parent's to hold; the read end is kept only by a
 * daemon child of tdm__start_fork(), which watches it. */
static void fork_child(void) {
  self_pid = 0;
  pthread_mutex_init(&death.mu, NULL);
  pthread_mutex_init(&reg.mu, NULL);
  /* The parent's handles are dead here: listed nowhere, freed when closed. */
  reg.head.prev = reg.head.next = &reg.head;
  if (death.wr >= 0) close(death.wr);
  if (death.rd >= 0 && !tdm__forking_daemon) close(death.rd);
  death.rd = death.wr = -1;
}

__attribute__((constructor(103))) static void process_init(void) {
  pthread_atfork(NULL, NULL, fork_child);
}

/* ---- Start ----------------------------------------------------------------------------------- */

const char *tdm_start_method_name(tdm_start_method m) {
  switch (m) {
  case TDM_START_DEFAULT:
    return "default";
  case TDM_START_FORK:
    return "fork";
  case TDM_START_SPAWN:
    return "spawn";
  case TDM_START_FORKSERVER:
    return "forkserver";
  }
  return NULL;
}

tdm_start_method tdm_process_start_method(void) {
  int m = atomic_load(&reg.method);
  if (m != TDM_START_DEFAULT) return (tdm_start_method)m;
  return tdm__thread_count() == 1 ? TDM_START_FORK : TDM_START_FORKSERVER;
}

int tdm_process_set_start_method(tdm_start_method m) {
  if (tdm_start_method_name(m) == NULL) return -EINVAL;
  atomic_store(&reg.method, (int)m);
  return 0;
}

int tdm__fn_locate(const void *fn, const char **object, uint64_t *offset) {
  Dl_info info;
  struct link_map *lm = NULL;
  if (dladdr1(fn, &info, (void **)&lm, RTLD_DL_LINKMAP) == 0 || lm == NULL) return TDM_ENOTASK;
  *object = lm->l_name != NULL ? lm->l_name : "";
  *offset = (uint64_t)((uintptr_t)fn - (uintptr_t)lm->l_addr);
  return 0;
}

int tdm_process_start(tdm_process **out, tdm_process_fn fn, const void *arg, size_t size,
                      const tdm_process_options *opt) {
  static const tdm_process_options defaults;
  if (opt == NULL) opt = &defaults;
  if (out == NULL || fn == NULL || (arg == NULL && size > 0)) return -EINVAL;
  if (size > TDM_PROCESS_ARG_MAX) return -E2BIG;
  if (tdm_start_method_name(opt->start) == NULL) return -EINVAL;
  if (opt->n_pass_fds > TDM__PASS_FDS_MAX || (opt->n_pass_fds > 0 && opt->pass_fds == NULL))
    return -EINVAL;
  for (size_t i = 0; i < opt->n_pass_fds; i++)
    if (opt->pass_fds[i] < 0 || fcntl(opt->pass_fds[i], F_GETFD) < 0) return -EINVAL;
  if (opt->name != NULL && (opt->name[0] == '\0' || strlen(opt->name) > 4096)) return -EINVAL;
  if (tdm_process_is_daemon()) return TDM_EDAEMON;

  struct tdm__task t = { .fn = fn,
                         .arg = arg,
                         .size = size,
                         .daemon = opt->daemon,
                         .group = opt->daemon || opt->new_group,
                         .pass_fds = opt->pass_fds,
                         .n_pass = opt->n_pass_fds };
  tdm_start_method method =
      opt->start != TDM_START_DEFAULT ? opt->start : tdm_process_start_method();
  if (method != TDM_START_FORK) {
    void *addr;
    memcpy(&addr, &fn, sizeof addr);
    int r = tdm__fn_locate(addr, &t.object, &t.offset);
    if (r != 0) return r;
  }
  tdm_process *p = tdm__calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  char buf[32];
  if (opt->name == NULL) {
    snprintf(buf, sizeof buf, "Process-%u", atomic_fetch_add(&reg.next_id, 1) + 1);
    p->name = tdm__strdup(buf);
  } else {
    p->name = tdm__strdup(opt->name);
  }
  if (p->name == NULL) {
    tdm__free(p);
    return -ENOMEM;
  }
  t.name = p->name;
  p->magic = TDM__PROCESS_MAGIC;
  p->owner = tdm__self_pid();
  p->pidfd = p->status_fd = -1;
  p->method = method;
  p->daemon = t.daemon;
  p->group = t.group;
  p->state = TDM__RUNNING;
  pthread_mutex_init(&p->mu, NULL);

  int r;
  switch (method) {
  case TDM_START_FORK:
    r = tdm__start_fork(p, &t);
    break;
  case TDM_START_SPAWN:
    r = tdm__start_spawn(p, &t);
    break;
  default:
    r = tdm__start_forkserver(p, &t);
    break;
  }
  if (r != 0) {
    pthread_mutex_destroy(&p->mu);
    tdm__free(p->name);
    tdm__free(p);
    return r;
  }
  pthread_mutex_lock(&reg.mu);
  p->prev = reg.head.prev;
  p->next = &reg.head;
  reg.head.prev->next = p;
  reg.head.prev = p;
  pthread_mutex_unlock(&reg.mu);
  *out = p;
  return 0;
}

/* ---- Supervision ----------------------------------------------------------------------------- */

static void check(const tdm_process *p) {
  TDM__REQUIRE(p != NULL && p->magic == TDM__PROCESS_MAGIC, "not a tdm_process handle: %p",
               (const void *)p);
}

/* A handle inherited through fork() describes a child of another process. */
static bool foreign(const tdm_process *p) {
  return p->owner != tdm__self_pid();
}

/* Collects the exit when there is one; with `block`, waits for it (the caller knows it comes
 * soon: the child has ended). Returns the state. */
static int collect(tdm_process *p, bool block) {
  pthread_mutex_lock(&p->mu);
  if (p->state == TDM__RUNNING) {
    if (p->status_fd < 0) {
      int code, r = tdm__pidfd_reap(p->pidfd, block, &code);
      if (r == 1) {
        p->exitcode = code;
        tdm__store(&p->state, TDM__ENDED);
      } else if (r < 0) {
        tdm__store(&p->state, TDM__LOST); /* reaped by someone else's wait() */
      }
    } else if (!p->orphaned) {
      if (block) (void)tdm__wait_readable(p->status_fd, TDM__NEVER);
      int32_t code;
      ssize_t n = recv(p->status_fd, &code, sizeof code, MSG_DONTWAIT);
      if (n == (ssize_t)sizeof code) {
        p->exitcode = code;
        tdm__store(&p->state, TDM__ENDED);
      } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        /* The forkserver died: from now on, the pidfd says when the child ends. */
        tdm__store(&p->orphaned, true);
      }
    }
    if (p->orphaned && tdm__wait_readable(p->pidfd, 0) == 1) tdm__store(&p->state, TDM__LOST);
  }
  int state = p->state;
  pthread_mutex_unlock(&p->mu);
  return state;
}

/* The state now: collects the exit of a child that has ended, without waiting for one that
 * runs. A forkserver child that has ended has its exit on the way: that is waited for. */
static int refresh(tdm_process *p) {
  int state = tdm__load(&p->state);
  if (state != TDM__RUNNING) return state;
  return collect(p, p->status_fd >= 0 && tdm__wait_readable(p->pidfd, 0) == 1);
}

int tdm_process_join(tdm_process *p, int64_t timeout) {
  check(p);
  if (foreign(p)) return -ECHILD;
  int64_t deadline = tdm__deadline(timeout);
  while (tdm__load(&p->state) == TDM__RUNNING) {
    /* A forkserver child is joined on the socket where the forkserver reports its exit, unless
     * the forkserver died: then on its pidfd, and its exit code is lost. */
    bool on_status = p->status_fd >= 0 && !tdm__load(&p->orphaned);
    int r = tdm__wait_readable(on_status ? p->status_fd : p->pidfd, deadline);
    if (r < 0) return r;
    if (r == 0) return -ETIMEDOUT;
    collect(p, true);
  }
  return 0;
}

bool tdm_process_is_alive(tdm_process *p) {
  check(p);
  return !foreign(p) && refresh(p) == TDM__RUNNING;
}

int tdm_process_exitcode(tdm_process *p, int *code) {
  check(p);
  if (foreign(p)) return -ECHILD;
  int state = refresh(p);
  if (state == TDM__RUNNING) return -EBUSY;
  if (state == TDM__LOST) return -ECHILD;
  *code = p->exitcode;
  return 0;
}

pid_t tdm_process_pid(const tdm_process *p) {
  check(p);
  return p->pid;
}

const char *tdm_process_name(const tdm_process *p) {
  check(p);
  return p->name;
}

bool tdm_process_daemon(const tdm_process *p) {
  check(p);
  return p->daemon;
}

tdm_start_method tdm_process_method(const tdm_process *p) {
  check(p);
  return p->method;
}

int tdm_process_sentinel(const tdm_process *p) {
  check(p);
  return p->pidfd;
}

int tdm_process_signal(tdm_process *p, int sig) {
  check(p);
  if (sig < 0 || sig >= NSIG) return -EINVAL;
  if (foreign(p)) return -ECHILD;
  int r = tdm__pidfd_signal(p->pidfd, sig);
  return r == -ESRCH ? 0 : r;
}

int tdm_process_terminate(tdm_process *p) {
  return tdm_process_signal(p, SIGTERM);
}

int tdm_process_kill(tdm_process *p) {
  return tdm_process_signal(p, SIGKILL);
}

int tdm_process_interrupt(tdm_process *p) {
  return tdm_process_signal(p, SIGINT);
}

int tdm_process_signal_tree(tdm_process *p, int sig) {
  check(p);
  if (sig < 0 || sig >= NSIG) return -EINVAL;
  if (!p->group) return -ENOTSUP;
  if (foreign(p)) return -ECHILD;
  if (kill(-p->pid, sig) != 0 && errno != ESRCH) return -errno;
  return 0;
}

int tdm_process_close(tdm_process *p) {
  if (p == NULL) return 0;
  check(p);
  if (!foreign(p)) {
    if (refresh(p) == TDM__RUNNING) return -EBUSY;
    pthread_mutex_lock(&reg.mu);
    p->prev->next = p->next;
    p->next->prev = p->prev;
    pthread_mutex_unlock(&reg.mu);
  }
  if (p->pidfd >= 0) close(p->pidfd);
  if (p->status_fd >= 0) close(p->status_fd);
  pthread_mutex_destroy(&p->mu);
  p->magic = 0;
  tdm__free(p->name);
  tdm__free(p);
  return 0;
}

size_t tdm_process_active_children(tdm_process **out, size_t cap) {
  size_t n = 0;
  pid_t me = tdm__self_pid();
  pthread_mutex_lock(&reg.mu);
  for (tdm_process *p = reg.head.next; p != &reg.head; p = p->next) {
    if (p->owner != me) continue;
    if (collect(p, false) != TDM__RUNNING) continue;
    if (n < cap) out[n] = p;
    n++;
  }
  pthread_mutex_unlock(&reg.mu);
  return n;
}
