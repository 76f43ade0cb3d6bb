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

int tdm__wait_readable(int fd, int64_t deadline) {
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
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, ms);
    if (r > 0) return 1;
    if (r < 0 && errno != EINTR) return -errno;
    if (r == 0 && ms == 0) return 0;
    if (r == 0 && deadline != TDM__NEVER && tdm_clock_now() >= deadline) return 0;
  }
}

int tdm__thread_count(void) {
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[1024];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  /* The command name may hold spaces and parentheses: fields count from the last ')'. */
  char *p = strrchr(buf, ')');
  if (p == NULL) return -1;
  /* After ")": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
   * utime stime cutime cstime priority nice num_threads(20). */
  int field = 2;
  for (; *p != '\0'; p++) {
    if (*p == ' ' && ++field == 20) return atoi(p + 1);
  }
  return -1;
}

bool tdm__parent_death_signal(int sig, pid_t parent) {
  (void)prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL);
  /* A parent that died before the prctl left us to another process: the signal never comes. */
  return getppid() == parent;
}

ssize_t tdm__send_fds(int sock, const void *buf, size_t len, const int *fds, size_t n) {
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int) * 253)];
  } control;
  struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (n > 253) return -EINVAL;
  if (n > 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.space;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  }
  for (;;) {
    ssize_t r = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno != EINTR) return -errno;
  }
}

ssize_t tdm__recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *n_fds) {
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int) * 253)];
  } control;
  struct iovec iov = { .iov_base = buf, .iov_len = len };
  struct msghdr msg = { .msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = control.space,
                        .msg_controllen = sizeof control.space };
  ssize_t r;
  *n_fds = 0;
  for (;;) {
    r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (r >= 0) break;
    if (errno != EINTR) return -errno;
  }
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int got[253];
    memcpy(got, CMSG_DATA(c), n * sizeof(int));
    for (size_t i = 0; i < n; i++) {
      if (*n_fds < max_fds)
        fds[(*n_fds)++] = got[i];
      else
        close(got[i]);
    }
  }
  return r;
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
