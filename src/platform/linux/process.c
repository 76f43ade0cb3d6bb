/*
 * process.c: the Linux side of processes: pidfds, PR_SET_PDEATHSIG, the thread count, and
 * descriptor passing over Unix sockets.
 *
 * pidfd_open(), pidfd_send_signal() and waitid(P_PIDFD) (Linux 5.3/5.4) make a child's identity
 * a descriptor: signalling or reaping through it can never hit a recycled pid, and the same
 * descriptor is the child's pollable sentinel. Every call here retries after EINTR, and none
 * installs a signal handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/internal.h"
#include "platform/platform.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int tdm__pidfd_open(pid_t pid) {
  long fd = syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -errno : (int)fd;
}

int tdm__pidfd_signal(int pidfd, int sig) {
  return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

int tdm__pidfd_reap(int pidfd, bool block, int *code) {
  siginfo_t info;
  for (;;) {
    memset(&info, 0, sizeof info);
    if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | (block ? 0 : WNOHANG)) == 0) break;
    if (errno != EINTR) return -errno;
  }
  if (info.si_pid == 0) return 0; /* WNOHANG, still running */
  *code = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
  return 1;
}

int tdm__wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int ms = -1;
    if (deadline != TDM__NEVER) {
      int64_t left = deadline - tdm_clock_now();
      if (left <= 0) {
        ms = 0;
      } else {
        /* Round up, so that the wait never ends before the deadline. */
        int64_t m = (left + 999999) / 1000000;
        ms = m > INT32_MAX ? INT32_MAX : (int)m;
      }
    }
    struct pollfd p = { .fd = fd, .events = events };
    int r = poll(&p, 1, ms);
    if (r > 0) return (p.revents & POLLNVAL) ? -EBADF : 1;
    if (r < 0 && errno != EINTR) return -errno;
    if (r == 0 && ms == 0) return 0;
    if (r == 0 && deadline != TDM__NEVER && tdm_clock_now() >= deadline) return 0;
  }
}

int tdm__wait_readable(int fd, int64_t deadline) {
  return tdm__wait_fd(fd, POLLIN, deadline);
}

/*
 * Reads /proc/<pid>/stat ("self" for pid 0) into buf (NUL-terminated) and returns a pointer to
 * the state field, just after the command name (which may hold spaces and parentheses, so
 * fields count from the last ')'), or NULL with errno set.
 */
static char *read_stat(pid_t pid, char *buf, size_t size) {
  char path[32];
  if (pid == 0)
    snprintf(path, sizeof path, "/proc/self/stat");
  else
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  ssize_t n = read(fd, buf, size - 1);
  int err = errno;
  close(fd);
  if (n <= 0) {
    errno = n < 0 ? err : ESRCH;
    return NULL;
  }
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (p == NULL || p[1] != ' ' || p[2] == '\0') {
    errno = EIO;
    return NULL;
  }
  return p + 2;
}

/* The text of field `field` (1-based, as in proc(5); 3 is the state) after read_stat(). */
static const char *stat_field(const char *state, int field) {
  const char *p = state;
  for (int f = 3; f < field; f++) {
    p = strchr(p, ' ');
    if (p == NULL) return NULL;
    p++;
  }
  return p;
}

int tdm__thread_count(void) {
  char buf[1024];
  char *state = read_stat(0, buf, sizeof buf);
  const char *f = state != NULL ? stat_field(state, 20) : NULL;
  return f != NULL ? atoi(f) : -1;
}

int tdm__proc_start_time(pid_t pid, uint64_t *start) {
  char buf[1024];
  char *state = read_stat(pid, buf, sizeof buf);
  if (state == NULL) return errno == ENOENT || errno == ESRCH ? -ESRCH : -errno;
  /* A zombie (or a process being torn down) has ended: it runs no more code. */
  if (*state == 'Z' || *state == 'X' || *state == 'x') return -ESRCH;
  const char *f = stat_field(state, 22);
  if (f == NULL) return -EIO;
  *start = strtoull(f, NULL, 10);
  return 0;
}

bool tdm__parent_death_signal(int sig, pid_t parent) {
  (void)prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL);
  /* A parent that died before the prctl left us to another process: the signal never comes. */
  return getppid() == parent;
}

int tdm__send_all(int sock, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t r = send(sock, p, len, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno == ECONNRESET ? -EPIPE : -errno;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

int tdm__recv_all(int sock, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t r = recv(sock, p, len, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno == ECONNRESET ? -EPIPE : -errno;
    }
    if (r == 0) return -EPIPE;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}
