/*
 * socket.c: the platform calls of connections: message I/O with descriptors attached
 * (SCM_RIGHTS) that reports truncation, and random bytes from the kernel (getrandom). The
 * process module's boot messages use the same I/O through tdm__send_fds()/tdm__recv_fds().
 *
 * recvmsg() takes MSG_CMSG_CLOEXEC, so a received descriptor is never open without
 * close-on-exec, even for an instant in which another thread could exec. Descriptors the caller
 * has no room for are closed here, never left open.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "platform/platform.h"

/* Room for this many descriptors in one control message, on either side. */
#define MAX_FDS 253

ssize_t tdm__sendmsg_fds(int sock, const struct iovec *iov, size_t iovcnt, const int *fds, size_t n,
                         int flags) {
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } control;
  struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = iovcnt };
  if (n > MAX_FDS) return -EINVAL;
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
    ssize_t r = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno != EINTR) return -errno;
  }
}

ssize_t tdm__recvmsg_fds(int sock, void *buf, size_t len, int flags, int *fds, size_t max_fds,
                         size_t *n_fds, bool *truncated) {
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  } control;
  struct iovec iov = { .iov_base = buf, .iov_len = len };
  struct msghdr msg = { .msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = control.space,
                        .msg_controllen = sizeof control.space };
  ssize_t r;
  *n_fds = 0;
  *truncated = false;
  for (;;) {
    r = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (r >= 0) break;
    if (errno != EINTR) return -errno;
  }
  if (msg.msg_flags & MSG_CTRUNC) *truncated = true;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (*n_fds < max_fds) {
        fds[(*n_fds)++] = fd;
      } else {
        close(fd);
        *truncated = true;
      }
    }
  }
  return r;
}

ssize_t tdm__send_fds(int sock, const void *buf, size_t len, const int *fds, size_t n) {
  struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
  return tdm__sendmsg_fds(sock, &iov, 1, fds, n, 0);
}

ssize_t tdm__recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *n_fds) {
  bool truncated;
  return tdm__recvmsg_fds(sock, buf, len, 0, fds, max_fds, n_fds, &truncated);
}

int tdm__random(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len > 0) {
    ssize_t r = getrandom(p, len, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}
