/*
 * forkserver.c: the forkserver, and its client in the parent.
 *
 * The forkserver is a spawned copy of the program (see child.c) that stays single-threaded and
 * forks children on request, so a multithreaded program gets clean children without paying an
 * exec per child. It is started the first time a process needs it and serves that process
 * alone. It leads a process group of its own (terminal signals meant for the program's job do
 * not reach it), and it ends when its command socket closes: only its parent holds the other
 * end (close-on-exec, and closed in the child of every fork() by an atfork handler), so that
 * happens exactly when the parent ends. PR_SET_PDEATHSIG is a second guard when the parent
 * thread that started it is the main thread (the signal follows the thread, not the process).
 *
 * A request is one SEQPACKET message on the command socket carrying two descriptors: the
 * child's boot channel and a status socket. The forkserver forks; the child moves its channel
 * to descriptor 3, closes every other descriptor above 2, joins the caller's process group and
 * boots from the channel exactly as a spawned child does (the caller sends the boot message
 * itself, so the argument never passes through the forkserver). The forkserver answers on the
 * status socket with the child's pid and, by SCM_RIGHTS, a pidfd for it; when the child ends it
 * reaps it (it is the parent) and writes the exit code there. The caller's handle keeps that
 * socket and joins on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "platform/platform.h"
#include "process/process.h"

#define REQ_MAGIC TDM__MAGIC('T', 'f', 's', 'q')

struct request {
  uint32_t magic;
  uint32_t reserved;
};

struct reply {
  uint32_t magic;
  int32_t result; /* 0 or a negative errno */
  int32_t pid;
  int32_t reserved;
};

/* ---- Client ---------------------------------------------------------------------------------- */

static struct {
  pthread_mutex_t mu;
  int cmd;
  int pidfd;
} fs = { PTHREAD_MUTEX_INITIALIZER, -1, -1 };

static void forget(void) {
  if (fs.cmd >= 0) close(fs.cmd);
  if (fs.pidfd >= 0) close(fs.pidfd);
  fs.cmd = fs.pidfd = -1;
}

/* Kills and reaps the forkserver (our child), dead or not, and forgets it. Called with fs.mu
 * held. */
static void drop(void) {
  tdm__discard_child(fs.pidfd);
  fs.pidfd = -1;
  forget();
}

/* The forkserver belongs to the process that started it. */
static void fork_child(void) {
  pthread_mutex_init(&fs.mu, NULL);
  forget();
}

__attribute__((constructor(104))) static void forkserver_init(void) {
  pthread_atfork(NULL, NULL, fork_child);
}

/* Starts the forkserver. Called with fs.mu held. */
static int launch(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  pid_t pid;
  int pidfd, channel;
  int r = tdm__spawn_self(&pid, &pidfd, &channel);
  if (r == 0) {
    uint32_t flags = tdm__is_main_thread() ? TDM__BOOT_PDEATH : 0;
    r = tdm__boot_exchange(channel, TDM__ROLE_FORKSERVER, flags, NULL, &sv[1], 1);
    close(channel);
    if (r != 0) tdm__discard_child(pidfd);
  }
  close(sv[1]);
  if (r != 0) {
    close(sv[0]);
    return r;
  }
  fs.cmd = sv[0];
  fs.pidfd = pidfd;
  return 0;
}

/* Asks the forkserver for a child, which will answer on `status`. 0 or an error code. */
static int request(int child_channel, int status) {
  struct request req = { REQ_MAGIC, 0 };
  int fds[2] = { child_channel, status };
  pthread_mutex_lock(&fs.mu);
  int r = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    /* A forkserver that died (killed by someone) is replaced, and reaped: it is our child. */
    if (fs.cmd >= 0 && tdm__wait_readable(fs.pidfd, 0) == 1) drop();
    if (fs.cmd < 0 && (r = launch()) != 0) break;
    ssize_t sent = tdm__send_fds(fs.cmd, &req, sizeof req, fds, 2);
    r = sent < 0 ? (int)sent : 0;
    if (r != -EPIPE && r != -ECONNRESET && r != -ENOTCONN) break;
    drop();
  }
  pthread_mutex_unlock(&fs.mu);
  return r;
}

int tdm__start_forkserver(tdm_process *p, const struct tdm__task *t) {
  /* The child gets the caller's standard streams as they are now (not the forkserver's), unless
   * pass_fds says otherwise. */
  struct tdm__task with_stdio = *t;
  int targets[TDM__BOOT_FDS_MAX];
  size_t n_targets = 0;
  for (int std = 0; std <= 2; std++) {
    bool passed = false;
    for (size_t i = 0; i < t->n_pass && !passed; i++)
      passed = t->pass_fds[i] == std;
    if (!passed && fcntl(std, F_GETFD) >= 0) targets[n_targets++] = std;
  }
  for (size_t i = 0; i < t->n_pass; i++)
    targets[n_targets++] = t->pass_fds[i];
  with_stdio.pass_fds = targets;
  with_stdio.n_pass = n_targets;
  t = &with_stdio;
  int fds[1 + TDM__BOOT_FDS_MAX];
  size_t n;
  uint32_t flags = TDM__BOOT_JOINPG;
  int r = tdm__boot_fds(t, fds, &n, &flags);
  if (r != 0) return r;

  int ch[2], st[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ch) != 0) return -errno;
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, st) != 0) {
    int e = -errno;
    close(ch[0]);
    close(ch[1]);
    return e;
  }
  r = request(ch[1], st[1]);
  close(ch[1]);
  close(st[1]);
  struct reply rep;
  int pidfd = -1;
  size_t got_fds = 0;
  if (r == 0) {
    ssize_t got = tdm__recv_fds(st[0], &rep, sizeof rep, &pidfd, 1, &got_fds);
    if (got < 0)
      r = (int)got;
    else if (got != (ssize_t)sizeof rep || rep.magic != REQ_MAGIC)
      r = TDM_ECHILDINIT; /* the forkserver died on the way */
    else if (rep.result != 0)
      r = rep.result;
    else if (got_fds != 1)
      r = TDM_ECHILDINIT;
  }
  if (r == 0) {
    r = tdm__boot_exchange(ch[0], TDM__ROLE_TASK, flags, t, fds, n);
    if (r != 0) {
      /* Kill it, and wait until the forkserver has reaped it: nothing is left behind. */
      (void)tdm__pidfd_signal(pidfd, SIGKILL);
      int32_t code;
      while (recv(st[0], &code, sizeof code, 0) < 0 && errno == EINTR) {
      }
    }
  }
  close(ch[0]);
  if (r != 0) {
    if (got_fds == 1) close(pidfd);
    close(st[0]);
    return r;
  }
  p->pid = rep.pid;
  p->pidfd = pidfd;
  p->status_fd = st[0];
  return 0;
}

/* ---- Server ---------------------------------------------------------------------------------- */

struct kid {
  pid_t pid;
  int pidfd;
  int status;
};

static void answer(int status, int result, pid_t pid, int pidfd) {
  struct reply rep = { REQ_MAGIC, result, pid, 0 };
  (void)tdm__send_fds(status, &rep, sizeof rep, &pidfd, pidfd >= 0 ? 1 : 0);
}

_Noreturn void tdm__forkserver_main(int cmd, bool pdeath, pid_t parent) {
  tdm__set_os_thread_name("tdm-forkserver");
  (void)setpgid(0, 0);
  /* Hold nothing of the caller's but the command socket (and stderr, for diagnostics): each
   * child gets the caller's standard streams with its boot message. */
  if (cmd != 3) {
    if (dup2(cmd, 3) < 0) _exit(1);
    close(cmd);
    cmd = 3;
  }
  tdm__close_from(4);
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    close(null);
  }
  if (pdeath && !tdm__parent_death_signal(SIGKILL, parent)) _exit(0);
  struct kid *kids = NULL;
  size_t n = 0, cap = 0;
  struct pollfd *pfd = NULL;
  for (;;) {
    if (n + 1 > cap) {
      size_t ncap = cap == 0 ? 16 : cap * 2;
      struct kid *k = realloc(kids, ncap * sizeof *k);
      struct pollfd *q = k != NULL ? realloc(pfd, (ncap + 1) * sizeof *q) : NULL;
      if (k != NULL) kids = k;
      if (q == NULL) _exit(1); /* out of memory: the parent sees us gone and starts another */
      pfd = q;
      cap = ncap;
    }
    pfd[0] = (struct pollfd){ .fd = cmd, .events = POLLIN };
    for (size_t i = 0; i < n; i++)
      pfd[i + 1] = (struct pollfd){ .fd = kids[i].pidfd, .events = POLLIN };
    if (poll(pfd, n + 1, -1) < 0) {
      if (errno == EINTR) continue;
      _exit(1);
    }
    /* Children that ended: reap them and report. */
    for (size_t i = n; i-- > 0;) {
      if (pfd[i + 1].revents == 0) continue;
      int code;
      if (tdm__pidfd_reap(kids[i].pidfd, false, &code) == 0) continue;
      int32_t c = code;
      (void)send(kids[i].status, &c, sizeof c, MSG_NOSIGNAL | MSG_DONTWAIT);
      close(kids[i].status);
      close(kids[i].pidfd);
      kids[i] = kids[--n];
    }
    if (pfd[0].revents == 0) continue;
    struct request req;
    int fds[2];
    size_t nf;
    ssize_t got = tdm__recv_fds(cmd, &req, sizeof req, fds, 2, &nf);
    if (got == 0 || (got < 0 && got != -EINTR && got != -EAGAIN)) _exit(0); /* parent gone */
    if (got != (ssize_t)sizeof req || req.magic != REQ_MAGIC || nf != 2) {
      for (size_t i = 0; i < nf; i++)
        close(fds[i]);
      continue;
    }
    pid_t pid = fork();
    if (pid == 0) {
      if (fds[0] != 3 && dup2(fds[0], 3) < 0) _exit(127);
      tdm__close_from(4);
      tdm__child_boot(3);
    }
    close(fds[0]);
    if (pid < 0) {
      answer(fds[1], -errno, 0, -1);
      close(fds[1]);
      continue;
    }
    int pidfd = tdm__child_pidfd(pid);
    if (pidfd < 0) {
      answer(fds[1], pidfd, 0, -1);
      close(fds[1]);
      continue;
    }
    answer(fds[1], 0, pid, pidfd);
    kids[n++] = (struct kid){ pid, pidfd, fds[1] };
  }
}
