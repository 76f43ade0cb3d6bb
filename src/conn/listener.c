/*
 * listener.c: listeners and clients over Unix sockets and TCP (IPv4 and IPv6).
 *
 * Addresses are strings in one form for both sides ("unix:/path", "tcp:HOST:PORT",
 * "tcp:[V6]:PORT"; see conn.h), parsed here into a socket address. Every socket is made
 * close-on-exec. The listening socket is non-blocking, so that a client taken by another thread
 * (or process) between poll() and accept() never blocks an accept past its deadline; accepted
 * and connected sockets are left blocking (conn.c asks MSG_DONTWAIT per call).
 *
 * A Unix socket gets its permission bits before it exists: Linux creates the file of bind() with
 * the mode of the socket's own inode, which fchmod() sets, so there is no moment in which a
 * socket made with the process's umask could be reached by others. A listener without a path
 * binds inside a fresh mkdtemp() directory (0700), so the path is also unguessable and
 * unreachable for other users; the directory and the socket are removed on close, the socket
 * only while the path still names the same file (another process may have replaced it).
 *
 * Accept runs the handshake (auth.c) before it returns a connection, one client at a time, each
 * bounded by the handshake timeout and by the caller's own deadline, whichever comes first: a
 * client that stalls costs at most that, and a client that fails is dropped while the listener
 * stays usable.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn/conn.h"
#include "platform/platform.h"

#include <openssl/crypto.h>

struct tdm_listener {
  int fd;
  char *address; /* what tdm_listener_address() returns */
  char *path;    /* the Unix socket file made here, or NULL */
  dev_t dev;     /* ...and its identity */
  ino_t ino;
  char *dir; /* the private directory made here, or NULL */
  unsigned char *key;
  size_t key_len;
  int64_t handshake;
  size_t max_message;
};

/* ---- Addresses ------------------------------------------------------------------------------- */

struct address {
  struct sockaddr_storage ss;
  socklen_t len;
  bool tcp;
  bool private_unix; /* "unix:" or NULL: a path in a private directory, chosen by the listener */
};

static int parse_port(const char *s, unsigned *port) {
  if (*s == '\0' || strlen(s) > 5) return -EINVAL;
  unsigned v = 0;
  for (; *s != '\0'; s++) {
    if (*s < '0' || *s > '9') return -EINVAL;
    v = v * 10 + (unsigned)(*s - '0');
  }
  if (v > 65535) return -EINVAL;
  *port = v;
  return 0;
}

static int resolve(const char *host, bool v6_only, unsigned port, bool passive, struct address *a) {
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                            .ai_family = v6_only ? AF_INET6 : AF_UNSPEC,
                            .ai_flags =
                                (v6_only ? AI_NUMERICHOST : 0) | (passive ? AI_PASSIVE : 0) };
  struct addrinfo *res = NULL;
  int r = getaddrinfo(host, NULL, &hints, &res);
  if (r != 0) {
    if (r == EAI_MEMORY) return -ENOMEM;
    if (r == EAI_SYSTEM) return errno != 0 ? -errno : -EINVAL;
    return r == EAI_NONAME || r == EAI_FAMILY || r == EAI_NODATA || r == EAI_ADDRFAMILY
               ? -EADDRNOTAVAIL
               : -EINVAL;
  }
  int rc = -EADDRNOTAVAIL;
  for (struct addrinfo *i = res; i != NULL; i = i->ai_next) {
    if (i->ai_family != AF_INET && i->ai_family != AF_INET6) continue;
    if (i->ai_addrlen > sizeof a->ss) continue;
    memcpy(&a->ss, i->ai_addr, i->ai_addrlen);
    a->len = i->ai_addrlen;
    if (i->ai_family == AF_INET)
      ((struct sockaddr_in *)&a->ss)->sin_port = htons((uint16_t)port);
    else
      ((struct sockaddr_in6 *)&a->ss)->sin6_port = htons((uint16_t)port);
    rc = 0;
    break;
  }
  freeaddrinfo(res);
  return rc;
}

static int parse_address(const char *s, bool passive, struct address *a) {
  memset(a, 0, sizeof *a);
  if (s == NULL || strcmp(s, "unix:") == 0) {
    if (!passive) return -EINVAL;
    a->private_unix = true;
    return 0;
  }
  if (strncmp(s, "unix:", 5) == 0) {
    struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
    size_t n = strlen(s + 5);
    if (n >= sizeof un->sun_path) return -ENAMETOOLONG;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, s + 5, n + 1);
    a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
  }
  if (strncmp(s, "tcp:", 4) != 0) return -EINVAL;
  s += 4;
  char host[256];
  const char *port_s;
  bool v6 = false;
  if (*s == '[') {
    const char *end = strchr(s, ']');
    if (end == NULL || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host || end == s + 1)
      return -EINVAL;
    memcpy(host, s + 1, (size_t)(end - s - 1));
    host[end - s - 1] = '\0';
    port_s = end + 2;
    v6 = true;
  } else {
    const char *colon = strrchr(s, ':');
    if (colon == NULL) {
      strcpy(host, "127.0.0.1"); /* loopback unless asked otherwise */
      port_s = s;
    } else {
      size_t n = (size_t)(colon - s);
      if (n == 0 || n >= sizeof host || memchr(s, ':', n) != NULL) return -EINVAL;
      memcpy(host, s, n);
      host[n] = '\0';
      port_s = colon + 1;
    }
  }
  unsigned port;
  if (parse_port(port_s, &port) < 0) return -EINVAL;
  a->tcp = true;
  return resolve(host, v6, port, passive, a);
}

/* "tcp:1.2.3.4:5", "tcp:[::1]:5" or "unix:/path", newly allocated; NULL when out of memory. */
static char *format_address(const struct sockaddr_storage *ss) {
  char buf[sizeof(struct sockaddr_un) + 64];
  if (ss->ss_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)ss;
    snprintf(buf, sizeof buf, "unix:%.*s", (int)sizeof un->sun_path, un->sun_path);
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    char h[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &in->sin_addr, h, sizeof h);
    snprintf(buf, sizeof buf, "tcp:%s:%u", h, (unsigned)ntohs(in->sin_port));
  } else {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    char h[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &in6->sin6_addr, h, sizeof h);
    snprintf(buf, sizeof buf, "tcp:[%s]:%u", h, (unsigned)ntohs(in6->sin6_port));
  }
  return tdm__strdup(buf);
}

/* Options as both sides need them. Returns 0 or -EINVAL (bad flags, TCP without a key). */
static int check_options(const tdm_conn_options *opt, bool tcp) {
  if (opt != NULL && (opt->flags & ~TDM_CONN_INSECURE_TCP) != 0) return -EINVAL;
  if (opt != NULL && opt->authkey == NULL && opt->authkey_len > 0) return -EINVAL;
  bool key = opt != NULL && opt->authkey_len > 0;
  if (tcp && !key && !(opt != NULL && (opt->flags & TDM_CONN_INSECURE_TCP))) return -EINVAL;
  return 0;
}

static int64_t handshake_timeout(const tdm_conn_options *opt) {
  return opt == NULL || opt->handshake_timeout == 0 ? TDM_CONN_HANDSHAKE_DEFAULT
                                                    : opt->handshake_timeout;
}

/* ---- Listeners ------------------------------------------------------------------------------- */

/* Makes the private directory and the socket path in it, in a->ss. */
static int private_path(struct address *a, char **dir) {
  const char *tmp = secure_getenv("TMPDIR");
  struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
  char buf[sizeof un->sun_path];
  /* "/tandem-XXXXXX/socket" must fit; a TMPDIR too long for a socket falls back to /tmp. */
  if (tmp == NULL || tmp[0] != '/' || strlen(tmp) + 22 >= sizeof buf) tmp = "/tmp";
  snprintf(buf, sizeof buf, "%s/tandem-XXXXXX", tmp);
  if (mkdtemp(buf) == NULL) return -errno;
  *dir = tdm__strdup(buf);
  if (*dir == NULL) {
    rmdir(buf);
    return -ENOMEM;
  }
  un->sun_family = AF_UNIX;
  size_t n = strlen(buf);
  memcpy(un->sun_path, buf, n);
  memcpy(un->sun_path + n, "/socket", sizeof "/socket"); /* fits: checked above */
  a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(un->sun_path) + 1);
  return 0;
}

static void remove_files(tdm_listener *l) {
  if (l->path != NULL) {
    struct stat st;
    if (lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino) unlink(l->path);
  }
  if (l->dir != NULL) rmdir(l->dir);
}

static void free_listener(tdm_listener *l) {
  if (l->key != NULL) OPENSSL_cleanse(l->key, l->key_len);
  tdm__free(l->key);
  tdm__free(l->address);
  tdm__free(l->path);
  tdm__free(l->dir);
  tdm__free(l);
}

int tdm_listener_open(tdm_listener **out, const char *address, const tdm_conn_options *opt) {
  if (out == NULL) return -EINVAL;
  if (opt != NULL && (opt->backlog < 0 || (opt->mode & ~0777u) != 0)) return -EINVAL;
  struct address a;
  int rc = parse_address(address, true, &a);
  if (rc < 0) return rc;
  rc = check_options(opt, a.tcp);
  if (rc < 0) return rc;
  tdm_listener *l = tdm__calloc(1, sizeof *l);
  if (l == NULL) return -ENOMEM;
  l->fd = -1;
  l->handshake = handshake_timeout(opt);
  l->max_message = opt != NULL ? opt->max_message : 0;
  if (opt != NULL && opt->authkey_len > 0) {
    l->key = tdm__alloc(opt->authkey_len);
    if (l->key == NULL) goto nomem;
    memcpy(l->key, opt->authkey, opt->authkey_len);
    l->key_len = opt->authkey_len;
  }
  if (a.private_unix) {
    rc = private_path(&a, &l->dir);
    if (rc < 0) goto fail;
  }
  l->fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (l->fd < 0) goto fail_errno;
  if (a.ss.ss_family == AF_UNIX) {
    mode_t mode = opt != NULL && opt->mode != 0 ? (mode_t)opt->mode : 0600;
    if (fchmod(l->fd, mode) != 0) goto fail_errno;
    const char *p = ((struct sockaddr_un *)&a.ss)->sun_path;
    if (bind(l->fd, (struct sockaddr *)&a.ss, a.len) != 0) goto fail_errno;
    struct stat st;
    l->path = tdm__strdup(p);
    if (l->path == NULL || lstat(p, &st) != 0) {
      unlink(p);
      if (l->path == NULL) goto nomem;
      goto fail_errno;
    }
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    /* The umask may have taken bits away. */
    if ((st.st_mode & 0777) != mode && chmod(p, mode) != 0) goto fail_errno;
  } else {
    int one = 1;
    (void)setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a.ss.ss_family == AF_INET6)
      (void)setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(l->fd, (struct sockaddr *)&a.ss, a.len) != 0) goto fail_errno;
  }
  if (listen(l->fd, opt != NULL && opt->backlog > 0 ? opt->backlog : 128) != 0) goto fail_errno;
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  if (a.ss.ss_family == AF_UNIX) {
    bound = a.ss;
  } else if (getsockname(l->fd, (struct sockaddr *)&bound, &bl) != 0) {
    goto fail_errno;
  }
  l->address = format_address(&bound);
  if (l->address == NULL) goto nomem;
  *out = l;
  return 0;
nomem:
  rc = -ENOMEM;
  goto fail;
fail_errno:
  rc = -errno;
fail:
  if (l->fd >= 0) close(l->fd);
  remove_files(l);
  free_listener(l);
  return rc;
}

int tdm_listener_accept(tdm_listener *l, tdm_conn **out, int64_t timeout) {
  if (out == NULL) return -EINVAL;
  tdm_deadline d = tdm_deadline_after(timeout);
  int fd;
  for (;;) {
    fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) break;
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      int w = tdm__wait_readable(l->fd, d.at);
      if (w == 0) return -ETIMEDOUT;
      if (w < 0) return w;
      continue;
    }
    /* A client that left while it waited is nobody's business but its own. */
    if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
    return -e;
  }
  tdm_conn *c;
  int rc = tdm__conn_new(&c, fd, TDM__CONN_SEND | TDM__CONN_RECV, l->max_message);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  tdm_deadline hd = tdm_deadline_after(l->handshake);
  if (hd.at > d.at) hd = d;
  rc = tdm__conn_handshake(c, true, l->key, l->key_len, hd);
  if (rc < 0) {
    tdm_conn_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

const char *tdm_listener_address(const tdm_listener *l) {
  return l->address;
}

int tdm_listener_fd(const tdm_listener *l) {
  return l->fd;
}

int tdm_listener_close(tdm_listener *l) {
  if (l == NULL) return 0;
  close(l->fd);
  remove_files(l);
  free_listener(l);
  return 0;
}

/* ---- Clients --------------------------------------------------------------------------------- */

static int connect_by(int fd, const struct address *a, tdm_deadline d) {
  for (;;) {
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0) return 0;
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      /* A Unix listener's backlog is full: it is alive, but busy. Try again shortly. */
      if (tdm_deadline_passed(d)) return -ETIMEDOUT;
      int64_t left = tdm_deadline_left(d);
      tdm_clock_sleep(left >= 0 && left < TDM_MS(1) ? left : TDM_MS(1));
      continue;
    }
    if (e != EINPROGRESS) return -e;
    int w = tdm__wait_fd(fd, POLLOUT, d.at);
    if (w == 0) return -ETIMEDOUT;
    if (w < 0) return w;
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) return -errno;
    return -err;
  }
}

int tdm_client_connect(tdm_conn **out, const char *address, const tdm_conn_options *opt) {
  if (out == NULL) return -EINVAL;
  struct address a;
  int rc = parse_address(address, false, &a);
  if (rc < 0) return rc;
  rc = check_options(opt, a.tcp);
  if (rc < 0) return rc;
  tdm_deadline d = tdm_deadline_after(handshake_timeout(opt));
  int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  rc = connect_by(fd, &a, d);
  if (rc == 0) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) rc = -errno;
  }
  if (rc < 0) {
    close(fd);
    return rc;
  }
  tdm_conn *c;
  rc = tdm__conn_new(&c, fd, TDM__CONN_SEND | TDM__CONN_RECV, opt != NULL ? opt->max_message : 0);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  rc = tdm__conn_handshake(c, false, opt != NULL ? opt->authkey : NULL,
                           opt != NULL ? opt->authkey_len : 0, d);
  if (rc < 0) {
    tdm_conn_close(c);
    return rc;
  }
  *out = c;
  return 0;
}
