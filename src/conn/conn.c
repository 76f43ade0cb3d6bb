/*
 * conn.c: connections: framed messages over a stream socket, with descriptors attached.
 *
 * Sending. A message goes out as one sendmsg() of two buffers, the 16-byte header and the
 * caller's bytes, with the descriptors attached to it, so they ride with the header's first
 * byte. The socket stays in blocking mode (it may be shared with other code through
 * tdm_conn_fd(), and a file status flag would change it for every process that has it):
 * each call asks for MSG_DONTWAIT instead and waits with poll() against its deadline. A send
 * that has to stop in the middle of a frame cannot take back what left, so it breaks the
 * connection (-ECONNABORTED); one that stops before its first byte leaves nothing behind.
 *
 * Receiving is resumable. The handle keeps the state of the message in progress: the bytes of
 * the header read so far, the descriptors that came with it, and, when a receive stopped (a
 * timeout) or when the caller's buffer was too small, where the body stands. A header is read
 * with recvmsg() of exactly the bytes it still needs and a body with recv() of exactly what is
 * left of it, never past the end of the frame, so the descriptors of the next frame are never
 * taken by the read of this one. A body that the caller takes into its own buffer is read
 * straight there; only when that read stops half-way is the part moved into the handle.
 *
 * Locks. One tandem lock serialises senders and another receivers, so that messages of two
 * threads never interleave and the receive state has one owner. `broken` and `rx_ready` are read
 * without the locks (by poll and wait), so they are atomics.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn/conn.h"
#include "platform/platform.h"
#include "tandem/sync.h"

struct rx {
  uint8_t hdr[TDM__FRAME_HEADER];
  size_t hdr_have;     /* bytes of the header read so far */
  bool have_header;    /* the header is whole and valid: len and n_declared hold */
  uint64_t len;        /* the body's length */
  uint32_t n_declared; /* descriptors the header announces */
  unsigned char *body; /* a body that is partly read and kept in the handle, or NULL */
  uint64_t body_have;  /* bytes of the body read so far */
  int fds[TDM_CONN_MAX_FDS];
  size_t n_fds;   /* descriptors received with this header, owned by the handle */
  bool fds_trunc; /* some descriptors of this header were lost on the way */
  bool fds_lost;  /* ...so the message is being dropped (-EMFILE) */
  bool eof;       /* end of file between frames: every receive reports it */
};

struct tdm_conn {
  int fd;
  int family; /* AF_UNIX, AF_INET, AF_INET6 */
  unsigned dirs;
  size_t max_message;
  int broken;    /* 0, or the code that broke the connection (atomic) */
  bool rx_ready; /* a receive would return without reading the socket (atomic) */
  tdm_lock send_lock;
  tdm_lock recv_lock;
  struct rx rx; /* under recv_lock */
};

/* ---- Frames ---------------------------------------------------------------------------------- */

static void put_be(uint8_t *p, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; i--) {
    p[i] = (uint8_t)v;
    v >>= 8;
  }
}

static uint64_t get_be(const uint8_t *p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++)
    v = v << 8 | p[i];
  return v;
}

void tdm__frame_encode(uint8_t hdr[TDM__FRAME_HEADER], uint64_t len, uint32_t n_fds) {
  put_be(hdr, len, 8);
  put_be(hdr + 8, n_fds, 4);
  put_be(hdr + 12, 0, 4);
}

int tdm__frame_decode(const uint8_t hdr[TDM__FRAME_HEADER], uint64_t max_len, uint64_t *len,
                      uint32_t *n_fds) {
  uint64_t l = get_be(hdr, 8);
  uint64_t n = get_be(hdr + 8, 4);
  uint64_t flags = get_be(hdr + 12, 4);
  if (l > max_len || n > TDM_CONN_MAX_FDS || flags != 0) return -EPROTO;
  *len = l;
  *n_fds = (uint32_t)n;
  return 0;
}

/* ---- Handles --------------------------------------------------------------------------------- */

int tdm__conn_new(tdm_conn **out, int fd, unsigned dirs, size_t max_message) {
  tdm_conn *c = tdm__calloc(1, sizeof *c);
  if (c == NULL) return -ENOMEM;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  c->family = getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 ? ss.ss_family : AF_UNSPEC;
  if (c->family == AF_INET || c->family == AF_INET6) {
    /* Messages are requests and replies: Nagle's delay would only add latency. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  c->fd = fd;
  c->dirs = dirs;
  c->max_message = max_message != 0 ? max_message : TDM_CONN_MAX_MESSAGE_DEFAULT;
  (void)tdm_lock_init(&c->send_lock, TDM_SYNC_PRIVATE);
  (void)tdm_lock_init(&c->recv_lock, TDM_SYNC_PRIVATE);
  *out = c;
  return 0;
}

static bool options_ok(const tdm_conn_options *opt, unsigned allowed) {
  return opt == NULL || (opt->flags & ~allowed) == 0;
}

int tdm_pipe(tdm_conn **a, tdm_conn **b, const tdm_conn_options *opt) {
  if (a == NULL || b == NULL || !options_ok(opt, TDM_CONN_ONEWAY | TDM_CONN_INSECURE_TCP))
    return -EINVAL;
  bool oneway = opt != NULL && (opt->flags & TDM_CONN_ONEWAY);
  size_t max = opt != NULL ? opt->max_message : 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  if (oneway) {
    /* The kernel enforces the direction too: the other code that holds the descriptors
     * (through tdm_conn_fd()) cannot write the wrong way. */
    (void)shutdown(sv[0], SHUT_WR);
    (void)shutdown(sv[1], SHUT_RD);
  }
  tdm_conn *ca, *cb;
  int rc =
      tdm__conn_new(&ca, sv[0], oneway ? TDM__CONN_RECV : TDM__CONN_SEND | TDM__CONN_RECV, max);
  if (rc < 0) goto fail;
  rc = tdm__conn_new(&cb, sv[1], oneway ? TDM__CONN_SEND : TDM__CONN_SEND | TDM__CONN_RECV, max);
  if (rc < 0) {
    ca->fd = -1;
    tdm_conn_close(ca);
    goto fail;
  }
  *a = ca;
  *b = cb;
  return 0;
fail:
  close(sv[0]);
  close(sv[1]);
  return rc;
}

int tdm_conn_open_fd(tdm_conn **out, int fd, const tdm_conn_options *opt) {
  if (out == NULL || !options_ok(opt, TDM_CONN_INSECURE_TCP)) return -EINVAL;
  int type;
  socklen_t tl = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0) return -errno;
  if (type != SOCK_STREAM) return -EPROTOTYPE;
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return -errno;
  tdm_conn *c;
  int rc =
      tdm__conn_new(&c, fd, TDM__CONN_SEND | TDM__CONN_RECV, opt != NULL ? opt->max_message : 0);
  if (rc < 0) return rc;
  if (!(flags & FD_CLOEXEC)) (void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  *out = c;
  return 0;
}

static void rx_drop_fds(struct rx *rx) {
  for (size_t i = 0; i < rx->n_fds; i++)
    close(rx->fds[i]);
  rx->n_fds = 0;
}

int tdm_conn_close(tdm_conn *c) {
  if (c == NULL) return 0;
  rx_drop_fds(&c->rx);
  tdm__free(c->rx.body);
  if (c->fd >= 0) close(c->fd);
  /* A lock can only be held here in a fork child of a thread that was inside a call (see
   * conn.h): the thread that held it does not exist, so there is nothing to wait for. */
  if (!tdm_lock_locked(&c->send_lock)) tdm_lock_fini(&c->send_lock);
  if (!tdm_lock_locked(&c->recv_lock)) tdm_lock_fini(&c->recv_lock);
  tdm__free(c);
  return 0;
}

int tdm_conn_fd(const tdm_conn *c) {
  return c->fd;
}

size_t tdm_conn_max_message(const tdm_conn *c) {
  return c->max_message;
}

size_t tdm__conn_set_max(tdm_conn *c, size_t max_message) {
  size_t old = c->max_message;
  c->max_message = max_message;
  return old;
}

bool tdm__conn_can_recv(const tdm_conn *c) {
  return (c->dirs & TDM__CONN_RECV) != 0;
}

bool tdm__conn_ready_now(tdm_conn *c) {
  return tdm__load(&c->broken) != 0 || tdm__load(&c->rx_ready);
}

/* Marks the connection broken by `code` and returns code. */
static int set_broken(tdm_conn *c, int code) {
  int zero = 0;
  __atomic_compare_exchange_n(&c->broken, &zero, code, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  return code;
}

/* ---- Sending --------------------------------------------------------------------------------- */

static int send_message(tdm_conn *c, const void *buf, size_t len, const int *fds, size_t n_fds,
                        int64_t timeout) {
  if (!(c->dirs & TDM__CONN_SEND)) return -EBADF;
  if ((buf == NULL && len > 0) || n_fds > TDM_CONN_MAX_FDS || (fds == NULL && n_fds > 0))
    return -EINVAL;
  if (len > c->max_message) return -EMSGSIZE;
  if (n_fds > 0 && c->family != AF_UNIX) return -EOPNOTSUPP;
  tdm_deadline d = tdm_deadline_after(timeout);
  int rc = tdm_lock_acquire(&c->send_lock, timeout);
  if (rc != 0) return rc;
  if (tdm__load(&c->broken) != 0) {
    tdm_lock_release(&c->send_lock);
    return -ECONNABORTED;
  }
  uint8_t hdr[TDM__FRAME_HEADER];
  tdm__frame_encode(hdr, len, (uint32_t)n_fds);
  uint64_t total = TDM__FRAME_HEADER + (uint64_t)len, sent = 0;
  while (sent < total) {
    struct iovec iov[2];
    size_t cnt = 0;
    if (sent < TDM__FRAME_HEADER) {
      iov[cnt++] = (struct iovec){ hdr + sent, TDM__FRAME_HEADER - (size_t)sent };
      if (len > 0) iov[cnt++] = (struct iovec){ (void *)buf, len };
    } else {
      iov[cnt++] =
          (struct iovec){ (char *)buf + (sent - TDM__FRAME_HEADER), (size_t)(total - sent) };
    }
    ssize_t r = tdm__sendmsg_fds(c->fd, iov, cnt, sent == 0 ? fds : NULL, sent == 0 ? n_fds : 0,
                                 MSG_DONTWAIT);
    if (r >= 0) {
      sent += (uint64_t)r;
      continue;
    }
    if (r == -EAGAIN || r == -EWOULDBLOCK) {
      int w = tdm__wait_fd(c->fd, POLLOUT, d.at);
      if (w > 0) continue;
      rc = w == 0 ? -ETIMEDOUT : w;
    } else {
      rc = r == -ECONNRESET ? -EPIPE : (int)r;
    }
    /* Part of the frame is out: the stream can no longer be parsed by the peer. The peer of
     * -EPIPE is gone anyway and what it sent may still be read, so only the others break. */
    if (sent > 0 && rc != -EPIPE) rc = set_broken(c, -ECONNABORTED);
    break;
  }
  tdm_lock_release(&c->send_lock);
  return rc;
}

int tdm_conn_send(tdm_conn *c, const void *buf, size_t len, int64_t timeout) {
  return send_message(c, buf, len, NULL, 0, timeout);
}

int tdm_conn_send_fds(tdm_conn *c, const void *buf, size_t len, const int *fds, size_t n_fds,
                      int64_t timeout) {
  return send_message(c, buf, len, fds, n_fds, timeout);
}

/* ---- Receiving ------------------------------------------------------------------------------- */

static void rx_update_ready(tdm_conn *c) {
  struct rx *rx = &c->rx;
  tdm__store(&c->rx_ready, rx->eof || (rx->have_header && rx->body_have == rx->len));
}

/* Forgets the message just delivered or dropped (its descriptors were handed over or closed). */
static void rx_reset(struct rx *rx) {
  rx->hdr_have = 0;
  rx->have_header = false;
  rx->len = 0;
  rx->n_declared = 0;
  rx->body = NULL;
  rx->body_have = 0;
  rx->n_fds = 0;
  rx->fds_trunc = false;
  rx->fds_lost = false;
}

/* Reads until the header is whole. Returns 0, TDM_EEOF, -ETIMEDOUT, or an error. */
static int rx_header(tdm_conn *c, tdm_deadline d) {
  struct rx *rx = &c->rx;
  while (!rx->have_header) {
    if (rx->eof) return TDM_EEOF;
    if (rx->hdr_have < TDM__FRAME_HEADER) {
      size_t got = 0;
      bool trunc = false;
      ssize_t r = tdm__recvmsg_fds(c->fd, rx->hdr + rx->hdr_have, TDM__FRAME_HEADER - rx->hdr_have,
                                   MSG_DONTWAIT, rx->fds + rx->n_fds, TDM_CONN_MAX_FDS - rx->n_fds,
                                   &got, &trunc);
      rx->n_fds += got;
      rx->fds_trunc |= trunc;
      if (r > 0) {
        rx->hdr_have += (size_t)r;
        continue;
      }
      if (r == 0) {
        if (rx->hdr_have == 0 && rx->n_fds == 0) {
          rx->eof = true;
          return TDM_EEOF;
        }
        return set_broken(c, -ECONNRESET);
      }
      if (r == -EAGAIN || r == -EWOULDBLOCK) {
        int w = tdm__wait_readable(c->fd, d.at);
        if (w > 0) continue;
        return w == 0 ? -ETIMEDOUT : w;
      }
      /* Nothing was consumed by a failed read: only a reset ends the stream. */
      return r == -ECONNRESET ? set_broken(c, -ECONNRESET) : (int)r;
    }
    uint64_t len;
    uint32_t n;
    if (tdm__frame_decode(rx->hdr, c->max_message, &len, &n) < 0) return set_broken(c, -EPROTO);
    if (n > 0 && c->family != AF_UNIX) return set_broken(c, -EPROTO);
    if (rx->n_fds == n && !rx->fds_trunc) {
      /* The message and its descriptors are all accounted for. */
    } else if (rx->fds_trunc && rx->n_fds < n) {
      /* The kernel could not give us every descriptor (our descriptor limit): the message is
       * useless without them, but the stream is intact. Drop it. */
      rx_drop_fds(rx);
      rx->fds_lost = true;
    } else {
      return set_broken(c, -EPROTO);
    }
    rx->len = len;
    rx->n_declared = n;
    rx->have_header = true;
  }
  return 0;
}

/* Reads the rest of the body into dst (NULL: throw it away). Returns 0, -ETIMEDOUT or an
 * error. */
static int rx_body(tdm_conn *c, unsigned char *dst, tdm_deadline d) {
  struct rx *rx = &c->rx;
  unsigned char scratch[4096];
  while (rx->body_have < rx->len) {
    uint64_t left = rx->len - rx->body_have;
    size_t want = left > (uint64_t)SSIZE_MAX ? (size_t)SSIZE_MAX : (size_t)left;
    unsigned char *p = dst != NULL ? dst + rx->body_have : scratch;
    if (dst == NULL && want > sizeof scratch) want = sizeof scratch;
    ssize_t r = recv(c->fd, p, want, MSG_DONTWAIT);
    if (r > 0) {
      rx->body_have += (uint64_t)r;
      continue;
    }
    if (r == 0) return set_broken(c, -ECONNRESET);
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      int w = tdm__wait_readable(c->fd, d.at);
      if (w > 0) continue;
      return w == 0 ? -ETIMEDOUT : w;
    }
    return e == ECONNRESET ? set_broken(c, -ECONNRESET) : -e;
  }
  return 0;
}

/* How the caller takes the message. */
struct take {
  void *buf;      /* recv_into: the caller's buffer; NULL: allocate */
  size_t cap;     /* its size */
  int *fds;       /* room for descriptors (recv_fds), or NULL */
  size_t max_fds; /* how many */
};

static int recv_message(tdm_conn *c, const struct take *t, void **msg, size_t *len, size_t *n_fds,
                        int64_t timeout) {
  if (!(c->dirs & TDM__CONN_RECV)) return -EBADF;
  tdm_deadline d = tdm_deadline_after(timeout);
  int rc = tdm_lock_acquire(&c->recv_lock, timeout);
  if (rc != 0) return rc;
  struct rx *rx = &c->rx;
  if (tdm__load(&c->broken) != 0) {
    rc = -ECONNABORTED;
    goto out;
  }
  rc = rx_header(c, d);
  if (rc != 0) goto out;
  if (rx->fds_lost) {
    rc = rx_body(c, NULL, d);
    if (rc == 0) {
      tdm__free(rx->body);
      rx_reset(rx);
      rc = -EMFILE;
    }
    goto out;
  }
  if (rx->n_fds > t->max_fds || rx->len > SIZE_MAX) {
    if (t->fds != NULL) *n_fds = rx->n_fds;
    if (t->fds != NULL || t->buf != NULL) *len = (size_t)rx->len;
    rc = -EMSGSIZE;
    goto out;
  }
  if (t->buf != NULL && rx->len > t->cap) {
    *len = (size_t)rx->len;
    rc = -EMSGSIZE;
    goto out;
  }
  size_t l = (size_t)rx->len;
  if (t->buf != NULL && rx->body == NULL) {
    /* Straight into the caller's buffer; only a stop half-way moves the part into the handle,
     * since the next call may bring another buffer. */
    rc = rx_body(c, t->buf, d);
    if (rc != 0 && rx->body_have > 0 && tdm__load(&c->broken) == 0) {
      rx->body = tdm__alloc(l);
      if (rx->body == NULL) {
        rc = set_broken(c, -ENOMEM);
        goto out;
      }
      memcpy(rx->body, t->buf, (size_t)rx->body_have);
    }
    if (rc != 0) goto out;
  } else {
    if (rx->body == NULL) {
      rx->body = tdm__alloc(l > 0 ? l : 1);
      if (rx->body == NULL) {
        rc = -ENOMEM;
        goto out;
      }
    }
    rc = rx_body(c, rx->body, d);
    if (rc != 0) goto out;
    if (t->buf != NULL) {
      memcpy(t->buf, rx->body, l);
      tdm__free(rx->body);
    } else {
      *msg = rx->body;
    }
  }
  *len = l;
  if (t->fds != NULL) {
    memcpy(t->fds, rx->fds, rx->n_fds * sizeof(int));
    *n_fds = rx->n_fds;
  }
  rx_reset(rx);
out:
  rx_update_ready(c);
  tdm_lock_release(&c->recv_lock);
  return rc;
}

int tdm_conn_recv(tdm_conn *c, void **msg, size_t *len, int64_t timeout) {
  if (msg == NULL || len == NULL) return -EINVAL;
  struct take t = { 0 };
  return recv_message(c, &t, msg, len, NULL, timeout);
}

int tdm_conn_recv_into(tdm_conn *c, void *buf, size_t cap, size_t *len, int64_t timeout) {
  if ((buf == NULL && cap > 0) || len == NULL) return -EINVAL;
  /* A buffer of 0 bytes still takes 0-byte messages. */
  static unsigned char none;
  struct take t = { .buf = buf != NULL ? buf : &none, .cap = cap };
  return recv_message(c, &t, NULL, len, NULL, timeout);
}

int tdm_conn_recv_fds(tdm_conn *c, void **msg, size_t *len, int *fds, size_t max_fds, size_t *n_fds,
                      int64_t timeout) {
  if (msg == NULL || len == NULL || n_fds == NULL || (fds == NULL && max_fds > 0)) return -EINVAL;
  static int none;
  struct take t = { .fds = fds != NULL ? fds : &none, .max_fds = max_fds };
  return recv_message(c, &t, msg, len, n_fds, timeout);
}

int tdm_conn_poll(tdm_conn *c, int64_t timeout) {
  if (!(c->dirs & TDM__CONN_RECV)) return -EBADF;
  if (tdm__conn_ready_now(c)) return 0;
  int r = tdm__wait_readable(c->fd, tdm_deadline_after(timeout).at);
  return r > 0 ? 0 : r == 0 ? -ETIMEDOUT : r;
}
