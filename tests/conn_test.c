/*
 * conn_test.c: connections through the public API, across threads and real processes (fork,
 * spawn and forkserver children that adopt their end from pass_fds): messages of 0 bytes to 64
 * MiB with checksums, recv_into that loses nothing, the max message refused before allocation,
 * truncated frames, end of file, a peer killed, no SIGPIPE, timeouts in the middle of a
 * message, descriptor passing and its truncation, one-way pipes, tdm_conn_wait over
 * connections, a sentinel and a queue; listeners and clients over a Unix path, a private Unix
 * socket, TCP over IPv4 and IPv6 with mutual authentication, wrong and missing keys, garbage
 * and stalled clients; and no descriptor left open on any of these paths.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

static const tdm_start_method methods[] = { TDM_START_FORK, TDM_START_SPAWN, TDM_START_FORKSERVER };
#define N_METHODS 3

#define MIB ((size_t)1 << 20)

/* ---- Helpers --------------------------------------------------------------------------------- */

static uint64_t fnv(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = UINT64_C(14695981039346656037);
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * UINT64_C(1099511628211);
  return h;
}

static unsigned char *pattern(size_t n, uint64_t seed) {
  unsigned char *b = malloc(n > 0 ? n : 1);
  CHECK(b != NULL);
  uint64_t s = seed | 1;
  for (size_t i = 0; i < n; i++) {
    if (i % 8 == 0) tdm_test_rand(&s);
    b[i] = (unsigned char)(s >> (8 * (i % 8)));
  }
  return b;
}

static void make_pipe(tdm_conn **a, tdm_conn **b, const tdm_conn_options *o) {
  CHECK_OK(tdm_pipe(a, b, o));
  CHECK(*a != NULL && *b != NULL);
}

/* Writes raw bytes on a connection's socket, bypassing the framing. */
static void raw_write(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t r = send(fd, c, n, MSG_NOSIGNAL);
    CHECK(r > 0);
    c += r;
    n -= (size_t)r;
  }
}

static void header(unsigned char h[16], uint64_t len, uint32_t nfds, uint32_t flags) {
  for (int i = 0; i < 8; i++)
    h[i] = (unsigned char)(len >> (56 - 8 * i));
  for (int i = 0; i < 4; i++) {
    h[8 + i] = (unsigned char)(nfds >> (24 - 8 * i));
    h[12 + i] = (unsigned char)(flags >> (24 - 8 * i));
  }
}

static void expect_message(tdm_conn *c, const void *want, size_t n) {
  void *m = NULL;
  size_t len = 0;
  CHECK_OK(tdm_conn_recv(c, &m, &len, TDM_S(30)));
  CHECK_EQ(len, n);
  CHECK(m != NULL);
  CHECK(n == 0 || memcmp(m, want, n) == 0);
  tdm_free(m);
}

static const size_t sizes[] = { 0, 1, 100, 4096, 1000003, 64 * MIB };
#define N_SIZES (sizeof sizes / sizeof sizes[0])

/* ---- Messages between threads ---------------------------------------------------------------- */

static void send_sizes(void *arg) {
  tdm_conn *c = arg;
  for (size_t i = 0; i < N_SIZES; i++) {
    unsigned char *b = pattern(sizes[i], i + 1);
    CHECK_OK(tdm_conn_send(c, b, sizes[i], TDM_FOREVER));
    free(b);
  }
}

TEST(messages_between_threads) {
  int fds0 = tdm_test_count_fds();
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  CHECK_EQ(tdm_conn_max_message(a), TDM_CONN_MAX_MESSAGE_DEFAULT);
  /* Both directions of one duplex pipe, at the same time. */
  tdm_thread *t1 = tdm_test_thread(send_sizes, a);
  tdm_thread *t2 = tdm_test_thread(send_sizes, b);
  for (size_t i = 0; i < N_SIZES; i++) {
    unsigned char *want = pattern(sizes[i], i + 1);
    for (int side = 0; side < 2; side++) {
      void *m = NULL;
      size_t len = 0;
      CHECK_OK(tdm_conn_recv(side ? a : b, &m, &len, TDM_FOREVER));
      CHECK_EQ(len, sizes[i]);
      CHECK_EQ(fnv(m, len), fnv(want, sizes[i]));
      tdm_free(m);
    }
    free(want);
  }
  CHECK_OK(tdm_thread_join(t1, TDM_FOREVER));
  CHECK_OK(tdm_thread_join(t2, TDM_FOREVER));
  CHECK_OK(tdm_conn_close(a));
  CHECK_OK(tdm_conn_close(b));
  CHECK_OK(tdm_conn_close(NULL));
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* Several threads send on one connection at once: messages never interleave. */
struct sender {
  tdm_conn *c;
  int id;
};

static void send_tagged(void *arg) {
  struct sender *s = arg;
  for (int i = 0; i < 300; i++) {
    size_t n = 1 + (size_t)(i * 977 + s->id * 131) % 20000;
    unsigned char *b = pattern(n, (uint64_t)s->id << 32 | (uint64_t)i);
    b[0] = (unsigned char)s->id;
    CHECK_OK(tdm_conn_send(s->c, b, n, TDM_FOREVER));
    free(b);
  }
}

TEST(concurrent_senders_do_not_interleave) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  struct sender s[3] = { { a, 0 }, { a, 1 }, { a, 2 } };
  tdm_thread *t[3];
  for (int i = 0; i < 3; i++)
    t[i] = tdm_test_thread(send_tagged, &s[i]);
  int next[3] = { 0, 0, 0 };
  for (int k = 0; k < 900; k++) {
    void *m;
    size_t len;
    CHECK_OK(tdm_conn_recv(b, &m, &len, TDM_FOREVER));
    int id = ((unsigned char *)m)[0];
    CHECK(id >= 0 && id < 3);
    int i = next[id]++;
    size_t n = 1 + (size_t)(i * 977 + id * 131) % 20000;
    CHECK_EQ(len, n);
    unsigned char *want = pattern(n, (uint64_t)id << 32 | (uint64_t)i);
    want[0] = (unsigned char)id;
    CHECK(memcmp(m, want, n) == 0);
    free(want);
    tdm_free(m);
  }
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  CHECK_OK(tdm_conn_close(a));
  CHECK_OK(tdm_conn_close(b));
}

/* ---- Messages between processes -------------------------------------------------------------- */

/* What a child is told: the number of its end, and which socket the parent's end is (a fork
 * child inherits it, and must close it for end of file to reach it). */
struct ends {
  int fd;
  ino_t parent_ino;
};

static void close_parent_end(const struct ends *e) {
  for (int fd = 3; fd < 1024; fd++) {
    struct stat st;
    if (fd != e->fd && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == e->parent_ino)
      close(fd);
  }
}

static struct ends ends_of(tdm_conn *parent, tdm_conn *child) {
  struct stat st;
  CHECK(fstat(tdm_conn_fd(parent), &st) == 0);
  return (struct ends){ tdm_conn_fd(child), st.st_ino };
}

/* Starts a child run by fn on the end `child` (which it adopts from pass_fds), and closes our copy.
 */
static tdm_process *start_on(tdm_process_fn fn, tdm_conn *parent, tdm_conn *child,
                             tdm_start_method m) {
  struct ends e = ends_of(parent, child);
  tdm_process_options o = { .start = m, .pass_fds = &e.fd, .n_pass_fds = 1 };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, fn, &e, sizeof e, &o));
  CHECK_OK(tdm_conn_close(child));
  return p;
}

/* In a child: adopts the end it was given. */
static tdm_conn *adopt(void *arg, size_t size) {
  struct ends e;
  CHECK_EQ(size, sizeof e);
  memcpy(&e, arg, sizeof e);
  close_parent_end(&e);
  tdm_conn *c;
  CHECK_OK(tdm_conn_open_fd(&c, e.fd, NULL));
  CHECK(fcntl(e.fd, F_GETFD) & FD_CLOEXEC);
  return c;
}

/* Starts a forkserver (it holds descriptors of its own for good), so that descriptor counts
 * taken afterwards compare. */
static int nothing(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

static void warm_forkserver(void) {
  tdm_process_options o = { .start = TDM_START_FORKSERVER };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, nothing, NULL, 0, &o));
  CHECK_OK(tdm_process_join(p, TDM_S(30)));
  tdm_process_close(p);
}

/* The child's side: answers every message with its length and checksum, until end of file. */
static int echo_checksums(void *arg, size_t size) {
  tdm_conn *c = adopt(arg, size);
  for (;;) {
    void *m;
    size_t len;
    int rc = tdm_conn_recv(c, &m, &len, TDM_FOREVER);
    if (rc == TDM_EEOF) break;
    CHECK_OK(rc);
    uint64_t reply[2] = { len, fnv(m, len) };
    tdm_free(m);
    CHECK_OK(tdm_conn_send(c, reply, sizeof reply, TDM_FOREVER));
  }
  tdm_conn_close(c);
  return 7;
}

TEST_T(messages_between_processes, 240) {
  warm_forkserver();
  int fds0 = tdm_test_count_fds();
  for (int m = 0; m < N_METHODS; m++) {
    tdm_conn *a, *b;
    make_pipe(&a, &b, NULL);
    tdm_process *p = start_on(echo_checksums, a, b, methods[m]);
    for (size_t i = 0; i < N_SIZES; i++) {
      unsigned char *msg = pattern(sizes[i], i + 7);
      CHECK_OK(tdm_conn_send(a, msg, sizes[i], TDM_FOREVER));
      uint64_t reply[2];
      size_t len;
      CHECK_OK(tdm_conn_recv_into(a, reply, sizeof reply, &len, TDM_S(60)));
      CHECK_EQ(len, sizeof reply);
      CHECK_EQ(reply[0], sizes[i]);
      CHECK(reply[1] == fnv(msg, sizes[i]));
      free(msg);
    }
    CHECK_OK(tdm_conn_close(a)); /* the child reads end of file */
    CHECK_OK(tdm_process_join(p, TDM_S(60)));
    int code = -1;
    CHECK_OK(tdm_process_exitcode(p, &code));
    CHECK_EQ(code, 7);
    CHECK_OK(tdm_process_close(p));
  }
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* ---- recv_into ------------------------------------------------------------------------------- */

TEST(recv_into_too_small_loses_nothing) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  unsigned char *msg = pattern(1000, 3);
  CHECK_OK(tdm_conn_send(a, msg, 1000, 0));
  CHECK_OK(tdm_conn_send(a, "next", 4, 0));
  unsigned char buf[2000];
  size_t len = 0;
  CHECK_ERR(tdm_conn_recv_into(b, buf, 10, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 1000);
  len = 0;
  CHECK_ERR(tdm_conn_recv_into(b, buf, 999, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 1000);
  /* Still ready: the message is there. */
  CHECK_OK(tdm_conn_poll(b, 0));
  CHECK_OK(tdm_conn_recv_into(b, buf, sizeof buf, &len, 0));
  CHECK_EQ(len, 1000);
  CHECK(memcmp(buf, msg, 1000) == 0);
  /* Too small, then taken by tdm_conn_recv(). */
  CHECK_ERR(tdm_conn_recv_into(b, buf, 3, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 4);
  expect_message(b, "next", 4);
  /* A 0-byte message fits in no buffer at all. */
  CHECK_OK(tdm_conn_send(a, NULL, 0, 0));
  len = 99;
  CHECK_OK(tdm_conn_recv_into(b, NULL, 0, &len, 0));
  CHECK_EQ(len, 0);
  CHECK_ERR(tdm_conn_recv_into(b, NULL, 5, &len, 0), -EINVAL);
  free(msg);
  tdm_conn_close(a);
  tdm_conn_close(b);
}

/* ---- Limits and protocol errors -------------------------------------------------------------- */

static size_t largest_alloc;

static void *counting_alloc(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  if (size > largest_alloc) largest_alloc = size;
  return realloc(ptr, size);
}

TEST(max_message_refused_before_allocation) {
  tdm_allocator al = { counting_alloc, NULL };
  tdm_allocator_set(&al);
  tdm_conn_options o = { .max_message = 4096 };
  tdm_conn *a, *b;
  make_pipe(&a, &b, &o);
  CHECK_EQ(tdm_conn_max_message(b), 4096);
  unsigned char big[4097] = { 0 };
  CHECK_ERR(tdm_conn_send(a, big, 4097, 0), -EMSGSIZE);
  CHECK_OK(tdm_conn_send(a, big, 4096, 0));
  expect_message(b, big, 4096);
  /* A forged header announcing 2^62 bytes: refused before a byte is allocated for it. */
  unsigned char h[16];
  header(h, UINT64_C(1) << 62, 0, 0);
  raw_write(tdm_conn_fd(a), h, sizeof h);
  largest_alloc = 0;
  void *m = NULL;
  size_t len = 0;
  CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_S(10)), -EPROTO);
  CHECK(largest_alloc < 4096);
  CHECK(m == NULL);
  /* Broken for good, and it says so. */
  CHECK_ERR(tdm_conn_recv(b, &m, &len, 0), -ECONNABORTED);
  CHECK_ERR(tdm_conn_send(b, "x", 1, 0), -ECONNABORTED);
  CHECK_OK(tdm_conn_poll(b, 0)); /* ready: a receive returns at once */
  tdm_conn_close(a);
  tdm_conn_close(b);
  tdm_allocator_set(NULL);
}

TEST(protocol_errors) {
  struct {
    uint64_t len;
    uint32_t nfds, flags;
  } bad[] = { { 5, 0, 1 }, { 5, 65, 0 }, { 5, 2, 0 } /* announced, none attached */ };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tdm_conn *a, *b;
    make_pipe(&a, &b, NULL);
    unsigned char h[16];
    header(h, bad[i].len, bad[i].nfds, bad[i].flags);
    raw_write(tdm_conn_fd(a), h, sizeof h);
    raw_write(tdm_conn_fd(a), "hello", 5);
    void *m;
    size_t len;
    CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_S(10)), -EPROTO);
    CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_S(10)), -ECONNABORTED);
    tdm_conn_close(a);
    tdm_conn_close(b);
  }
}

TEST(truncated_frame_is_not_eof) {
  int fds0 = tdm_test_count_fds();
  /* The peer closes in the middle of a body, and in the middle of a header. */
  for (int where = 0; where < 2; where++) {
    tdm_conn *a, *b;
    make_pipe(&a, &b, NULL);
    CHECK_OK(tdm_conn_send(a, "whole", 5, 0));
    unsigned char h[16];
    header(h, 100, 0, 0);
    raw_write(tdm_conn_fd(a), h, where == 0 ? 16 : 5);
    if (where == 0) raw_write(tdm_conn_fd(a), "only ten b", 10);
    tdm_conn_close(a);
    expect_message(b, "whole", 5);
    void *m;
    size_t len;
    CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_S(10)), -ECONNRESET);
    CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_S(10)), -ECONNABORTED);
    tdm_conn_close(b);
  }
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST(clean_eof) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  CHECK_OK(tdm_conn_send(a, "last", 4, 0));
  tdm_conn_close(a);
  CHECK_OK(tdm_conn_poll(b, 0));
  expect_message(b, "last", 4);
  void *m;
  size_t len;
  CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_FOREVER), TDM_EEOF);
  CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_FOREVER), TDM_EEOF);
  char buf[8];
  CHECK_ERR(tdm_conn_recv_into(b, buf, sizeof buf, &len, 0), TDM_EEOF);
  CHECK_OK(tdm_conn_poll(b, TDM_FOREVER));
  /* Sending to a peer that closed: -EPIPE, and no SIGPIPE (its default would kill us). */
  signal(SIGPIPE, SIG_DFL);
  CHECK_ERR(tdm_conn_send(b, "x", 1, 0), -EPIPE);
  CHECK_ERR(tdm_conn_send(b, "x", 1, TDM_FOREVER), -EPIPE);
  tdm_conn_close(b);
}

static void idle_child(void *arg) {
  (void)arg;
  for (;;)
    pause();
}

TEST(peer_killed) {
  signal(SIGPIPE, SIG_DFL);
  int fds0 = tdm_test_count_fds();
  /* unread: whether the killed peer had messages it had not read. */
  for (int unread = 0; unread < 2; unread++) {
    tdm_conn *a, *b;
    make_pipe(&a, &b, NULL);
    pid_t pid = tdm_test_fork(idle_child, NULL);
    tdm_conn_close(b); /* only the child holds that end now */
    if (unread) CHECK_OK(tdm_conn_send(a, "never read", 10, 0));
    CHECK_ERR(tdm_conn_poll(a, TDM_MS(20)), -ETIMEDOUT);
    tdm_test_kill_and_reap(pid);
    void *m;
    size_t len;
    if (unread) {
      CHECK_ERR(tdm_conn_recv(a, &m, &len, TDM_S(10)), -ECONNRESET);
      CHECK_ERR(tdm_conn_recv(a, &m, &len, TDM_S(10)), -ECONNABORTED);
    } else {
      CHECK_ERR(tdm_conn_recv(a, &m, &len, TDM_S(10)), TDM_EEOF);
      CHECK_ERR(tdm_conn_send(a, "x", 1, TDM_S(10)), -EPIPE);
    }
    tdm_conn_close(a);
  }
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* ---- Timeouts ----------------------------------------------------------------------------------
 */

TEST(poll_and_recv_timeouts) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  CHECK_ERR(tdm_conn_poll(b, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_conn_poll(b, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  void *m = NULL;
  size_t len;
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_conn_recv(b, &m, &len, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  CHECK_ERR(tdm_conn_recv(b, &m, &len, 0), -ETIMEDOUT);
  CHECK_OK(tdm_conn_send(a, "ping", 4, 0));
  CHECK_OK(tdm_conn_poll(b, TDM_FOREVER));
  expect_message(b, "ping", 4);
  tdm_conn_close(a);
  tdm_conn_close(b);
}

/* A receive that times out in the middle of a header or a body goes on where it stopped. */
TEST(recv_resumes_after_timeout) {
  for (int into = 0; into < 2; into++) {
    tdm_conn *a, *b;
    make_pipe(&a, &b, NULL);
    unsigned char *msg = pattern(3000, 11);
    unsigned char h[16];
    header(h, 3000, 0, 0);
    int fd = tdm_conn_fd(a);
    raw_write(fd, h, 7);
    unsigned char buf[3000];
    void *m = NULL;
    size_t len;
    int rc = into ? tdm_conn_recv_into(b, buf, sizeof buf, &len, TDM_MS(20))
                  : tdm_conn_recv(b, &m, &len, TDM_MS(20));
    CHECK_ERR(rc, -ETIMEDOUT);
    raw_write(fd, h + 7, 9);
    raw_write(fd, msg, 1234);
    rc = into ? tdm_conn_recv_into(b, buf, sizeof buf, &len, TDM_MS(20))
              : tdm_conn_recv(b, &m, &len, TDM_MS(20));
    CHECK_ERR(rc, -ETIMEDOUT);
    /* A smaller buffer now: still told the size, still nothing lost. */
    CHECK_ERR(tdm_conn_recv_into(b, buf, 100, &len, 0), -EMSGSIZE);
    CHECK_EQ(len, 3000);
    raw_write(fd, msg + 1234, 3000 - 1234);
    if (into) {
      CHECK_OK(tdm_conn_recv_into(b, buf, sizeof buf, &len, TDM_S(10)));
      CHECK_EQ(len, 3000);
      CHECK(memcmp(buf, msg, 3000) == 0);
    } else {
      expect_message(b, msg, 3000);
    }
    /* The stream is still in step. */
    CHECK_OK(tdm_conn_send(a, "after", 5, 0));
    expect_message(b, "after", 5);
    free(msg);
    tdm_conn_close(a);
    tdm_conn_close(b);
  }
}

TEST(send_timeouts) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  /* Fill the socket with small messages: the one that finds no room fails whole, and the
   * connection is intact. */
  int sent = 0;
  for (;;) {
    int rc = tdm_conn_send(a, &sent, sizeof sent, 0);
    if (rc == -ETIMEDOUT) break;
    CHECK_OK(rc);
    sent++;
  }
  CHECK(sent > 10);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_conn_send(a, &sent, sizeof sent, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  for (int i = 0; i < sent; i++) {
    int v = -1;
    size_t len;
    CHECK_OK(tdm_conn_recv_into(b, &v, sizeof v, &len, 0));
    CHECK_EQ(v, i);
  }
  CHECK_ERR(tdm_conn_poll(b, 0), -ETIMEDOUT);
  /* A large message cut by its timeout breaks the connection, and says so. */
  size_t n = 8 * MIB;
  unsigned char *big = pattern(n, 5);
  CHECK_ERR(tdm_conn_send(a, big, n, TDM_MS(30)), -ECONNABORTED);
  CHECK_ERR(tdm_conn_send(a, "x", 1, 0), -ECONNABORTED);
  void *m;
  size_t len;
  CHECK_ERR(tdm_conn_recv(a, &m, &len, 0), -ECONNABORTED);
  free(big);
  tdm_conn_close(a);
  tdm_conn_close(b);
}

/* ---- Descriptors ----------------------------------------------------------------------------- */

/* The child reads the text of the memfd it receives and writes it to the pipe it receives. */
static int use_received_fds(void *arg, size_t size) {
  tdm_conn *c = adopt(arg, size);
  void *m;
  size_t len, n = 0;
  int fds[4];
  CHECK_OK(tdm_conn_recv_fds(c, &m, &len, fds, 4, &n, TDM_S(30)));
  CHECK_EQ(n, 2);
  CHECK_EQ(len, 4);
  CHECK(memcmp(m, "fds!", 4) == 0);
  tdm_free(m);
  for (int i = 0; i < 2; i++)
    CHECK(fcntl(fds[i], F_GETFD) & FD_CLOEXEC);
  char text[64] = { 0 };
  CHECK(pread(fds[0], text, sizeof text - 1, 0) > 0);
  CHECK(write(fds[1], text, strlen(text)) == (ssize_t)strlen(text));
  close(fds[0]);
  close(fds[1]);
  tdm_conn_close(c);
  return 0;
}

TEST(descriptors_between_processes) {
  warm_forkserver();
  int fds0 = tdm_test_count_fds();
  for (int m = 0; m < N_METHODS; m++) {
    tdm_conn *a, *b;
    make_pipe(&a, &b, NULL);
    tdm_process *p = start_on(use_received_fds, a, b, methods[m]);
    int mfd = memfd_create("conn-test", MFD_CLOEXEC);
    CHECK(mfd >= 0);
    char text[32];
    snprintf(text, sizeof text, "hello through %s", tdm_start_method_name(methods[m]));
    CHECK(write(mfd, text, strlen(text)) == (ssize_t)strlen(text));
    int pfd[2];
    CHECK(pipe2(pfd, O_CLOEXEC) == 0);
    int pass[2] = { mfd, pfd[1] };
    CHECK_OK(tdm_conn_send_fds(a, "fds!", 4, pass, 2, TDM_S(10)));
    close(mfd); /* the child has its own now */
    close(pfd[1]);
    char got[64] = { 0 };
    size_t have = 0;
    for (;;) {
      ssize_t r = read(pfd[0], got + have, sizeof got - 1 - have);
      CHECK(r >= 0);
      if (r == 0) break;
      have += (size_t)r;
    }
    CHECK(strcmp(got, text) == 0);
    close(pfd[0]);
    CHECK_OK(tdm_process_join(p, TDM_S(30)));
    int code = -1;
    CHECK_OK(tdm_process_exitcode(p, &code));
    CHECK_EQ(code, 0);
    tdm_process_close(p);
    tdm_conn_close(a);
  }
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST(descriptor_truncation_loses_nothing) {
  int fds0 = tdm_test_count_fds();
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0);
  int three[3] = { pfd[0], pfd[1], pfd[1] };
  CHECK_OK(tdm_conn_send_fds(a, "three", 5, three, 3, 0));
  CHECK_OK(tdm_conn_send_fds(a, "three", 5, three, 3, 0));
  int fds[4] = { -1, -1, -1, -1 };
  void *m = NULL;
  size_t len = 0, n = 0;
  /* Room for one: told how many, and the message stays. */
  CHECK_ERR(tdm_conn_recv_fds(b, &m, &len, fds, 1, &n, 0), -EMSGSIZE);
  CHECK_EQ(n, 3);
  CHECK_EQ(len, 5);
  CHECK(m == NULL && fds[0] == -1);
  /* A receive without room for descriptors does not take it either. */
  CHECK_ERR(tdm_conn_recv(b, &m, &len, 0), -EMSGSIZE);
  char buf[16];
  len = 0;
  CHECK_ERR(tdm_conn_recv_into(b, buf, sizeof buf, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 5); /* it would fit: the descriptors are what does not */
  CHECK_OK(tdm_conn_recv_fds(b, &m, &len, fds, 4, &n, 0));
  CHECK_EQ(n, 3);
  CHECK(memcmp(m, "three", 5) == 0);
  tdm_free(m);
  /* The received write end works. */
  CHECK(write(fds[2], "z", 1) == 1);
  char z;
  CHECK(read(pfd[0], &z, 1) == 1 && z == 'z');
  for (int i = 0; i < 3; i++)
    close(fds[i]);
  /* The second message's descriptors are held by the handle: closing it closes them. */
  CHECK_ERR(tdm_conn_recv_fds(b, &m, &len, fds, 0, &n, 0), -EMSGSIZE);
  CHECK_EQ(n, 3);
  close(pfd[0]);
  close(pfd[1]);
  tdm_conn_close(a);
  tdm_conn_close(b);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* In a child whose descriptor limit leaves no room: the message is dropped, the stream goes on. */
static void receive_over_limit(void *arg) {
  tdm_conn *b = arg;
  /* Wait for both messages, then leave room for no new descriptor. */
  WAIT_UNTIL(tdm_conn_poll(b, 0) == 0);
  tdm_clock_sleep(TDM_MS(20));
  int lowest_free = 0;
  while (fcntl(lowest_free, F_GETFD) >= 0)
    lowest_free++;
  struct rlimit rl = { (rlim_t)lowest_free, (rlim_t)lowest_free };
  CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  void *m;
  size_t len, n;
  int fds[4];
  CHECK_ERR(tdm_conn_recv_fds(b, &m, &len, fds, 4, &n, TDM_S(10)), -EMFILE);
  expect_message(b, "after", 5);
}

TEST(descriptors_beyond_the_limit_are_dropped) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0);
  CHECK_OK(tdm_conn_send_fds(a, "lost", 4, pfd, 2, 0));
  CHECK_OK(tdm_conn_send(a, "after", 5, 0));
  tdm_test_wait_ok(tdm_test_fork(receive_over_limit, b));
  close(pfd[0]);
  close(pfd[1]);
  tdm_conn_close(a);
  tdm_conn_close(b);
}

TEST(descriptor_errors) {
  tdm_conn *a, *b;
  make_pipe(&a, &b, NULL);
  int many[TDM_CONN_MAX_FDS + 1];
  for (int i = 0; i <= TDM_CONN_MAX_FDS; i++)
    many[i] = 0;
  CHECK_ERR(tdm_conn_send_fds(a, "x", 1, many, TDM_CONN_MAX_FDS + 1, 0), -EINVAL);
  CHECK_ERR(tdm_conn_send_fds(a, "x", 1, NULL, 1, 0), -EINVAL);
  int bad = 1000;
  CHECK_ERR(tdm_conn_send_fds(a, "x", 1, &bad, 1, 0), -EBADF);
  /* Nothing went out. */
  CHECK_ERR(tdm_conn_poll(b, 0), -ETIMEDOUT);
  CHECK_OK(tdm_conn_send_fds(a, "max", 3, many, TDM_CONN_MAX_FDS, 0));
  void *m;
  size_t len, n;
  int got[TDM_CONN_MAX_FDS];
  CHECK_OK(tdm_conn_recv_fds(b, &m, &len, got, TDM_CONN_MAX_FDS, &n, 0));
  CHECK_EQ(n, TDM_CONN_MAX_FDS);
  for (size_t i = 0; i < n; i++)
    close(got[i]);
  tdm_free(m);
  tdm_conn_close(a);
  tdm_conn_close(b);
}

/* ---- One-way pipes, adopting descriptors ------------------------------------------------------
 */

TEST(oneway_pipe) {
  tdm_conn_options o = { .flags = TDM_CONN_ONEWAY };
  tdm_conn *r, *w;
  make_pipe(&r, &w, &o);
  void *m;
  size_t len;
  CHECK_ERR(tdm_conn_send(r, "x", 1, 0), -EBADF);
  CHECK_ERR(tdm_conn_recv(w, &m, &len, 0), -EBADF);
  CHECK_ERR(tdm_conn_poll(w, 0), -EBADF);
  tdm_wait_entry we = { .kind = TDM_WAIT_CONN, .conn = w };
  CHECK_ERR(tdm_conn_wait(&we, 1, 0), -EBADF);
  CHECK_OK(tdm_conn_send(w, "one way", 7, 0));
  expect_message(r, "one way", 7);
  /* The kernel holds the direction too. */
  CHECK(send(tdm_conn_fd(r), "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0);
  tdm_conn_close(w);
  CHECK_ERR(tdm_conn_recv(r, &m, &len, 0), TDM_EEOF);
  tdm_conn_close(r);
  tdm_conn_options bad = { .flags = 0x100 };
  CHECK_ERR(tdm_pipe(&r, &w, &bad), -EINVAL);
  CHECK_ERR(tdm_pipe(NULL, &w, NULL), -EINVAL);
}

TEST(open_fd_errors) {
  int fds0 = tdm_test_count_fds();
  tdm_conn *c = NULL;
  CHECK_ERR(tdm_conn_open_fd(&c, 999, NULL), -EBADF);
  int p[2];
  CHECK(pipe2(p, O_CLOEXEC) == 0);
  CHECK_ERR(tdm_conn_open_fd(&c, p[0], NULL), -ENOTSOCK);
  int d[2];
  CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d) == 0);
  CHECK_ERR(tdm_conn_open_fd(&c, d[0], NULL), -EPROTOTYPE);
  tdm_conn_options ow = { .flags = TDM_CONN_ONEWAY };
  int s[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0);
  CHECK_ERR(tdm_conn_open_fd(&c, s[0], &ow), -EINVAL);
  CHECK(c == NULL);
  /* Adopted: made close-on-exec, closed with the handle. */
  tdm_conn *x, *y;
  CHECK_OK(tdm_conn_open_fd(&x, s[0], NULL));
  CHECK_OK(tdm_conn_open_fd(&y, s[1], NULL));
  CHECK(fcntl(s[0], F_GETFD) & FD_CLOEXEC);
  CHECK_OK(tdm_conn_send(x, "adopted", 7, 0));
  expect_message(y, "adopted", 7);
  tdm_conn_close(x);
  tdm_conn_close(y);
  CHECK(fcntl(s[0], F_GETFD) < 0);
  close(p[0]);
  close(p[1]);
  close(d[0]);
  close(d[1]);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* ---- tdm_conn_wait -----------------------------------------------------------------------------
 */

static int sleep_then_exit(void *arg, size_t size) {
  (void)arg;
  (void)size;
  tdm_clock_sleep(TDM_MS(100));
  return 0;
}

static void put_later(void *arg) {
  tdm_clock_sleep(TDM_MS(50));
  CHECK_OK(tdm_queue_put(arg, "q", 1, TDM_FOREVER));
}

TEST(wait_on_many) {
  warm_forkserver(); /* the default start method may be forkserver (threads run here) */
  int fds0 = tdm_test_count_fds();
  tdm_conn *a1, *b1, *a2, *b2;
  make_pipe(&a1, &b1, NULL);
  make_pipe(&a2, &b2, NULL);
  tdm_queue *q;
  CHECK_OK(tdm_queue_open(&q, NULL));
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0);
  tdm_wait_entry set[5] = {
    { .kind = TDM_WAIT_CONN, .conn = b1 },  { .kind = TDM_WAIT_CONN, .conn = b2 },
    { .kind = TDM_WAIT_QUEUE, .queue = q }, { .kind = TDM_WAIT_FD, .fd = pfd[0] },
    { .kind = TDM_WAIT_PROCESS },
  };
  /* Nothing ready: the timeout runs out, never early. */
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_conn_wait(set, 4, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  CHECK_ERR(tdm_conn_wait(set, 4, 0), -ETIMEDOUT);
  /* A connection. */
  CHECK_OK(tdm_conn_send(a2, "two", 3, 0));
  CHECK_EQ(tdm_conn_wait(set, 4, TDM_FOREVER), 1);
  CHECK(!set[0].ready && set[1].ready && !set[2].ready && !set[3].ready);
  expect_message(b2, "two", 3);
  /* A queue, put by another thread while we wait. */
  tdm_thread *t = tdm_test_thread(put_later, q);
  CHECK_EQ(tdm_conn_wait(set, 4, TDM_S(10)), 1);
  CHECK(set[2].ready);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  void *m;
  size_t len;
  CHECK_OK(tdm_queue_get(q, &m, &len, 0));
  tdm_free(m);
  /* A queue alone. */
  t = tdm_test_thread(put_later, q);
  CHECK_EQ(tdm_conn_wait(&set[2], 1, TDM_S(10)), 1);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  CHECK_ERR(tdm_conn_wait(set, 0, 0), -ETIMEDOUT);
  /* Two at once: the queue (still holding its message) and a descriptor. */
  CHECK(write(pfd[1], "x", 1) == 1);
  CHECK_EQ(tdm_conn_wait(set, 4, 0), 2);
  CHECK(set[2].ready && set[3].ready);
  CHECK_OK(tdm_queue_get(q, &m, &len, 0));
  tdm_free(m);
  char c;
  CHECK(read(pfd[0], &c, 1) == 1);
  /* A process sentinel, with a queue in the set. */
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, sleep_then_exit, NULL, 0, NULL));
  set[4].process = p;
  CHECK_EQ(tdm_conn_wait(set, 5, TDM_S(30)), 1);
  CHECK(set[4].ready);
  CHECK_OK(tdm_process_join(p, TDM_S(10)));
  tdm_process_close(p);
  /* A peer that closed makes its connection ready. */
  tdm_conn_close(a1);
  CHECK_EQ(tdm_conn_wait(set, 4, TDM_S(10)), 1);
  CHECK(set[0].ready);
  /* Bad entries. */
  tdm_wait_entry bad = { .kind = (tdm_wait_kind)99 };
  CHECK_ERR(tdm_conn_wait(&bad, 1, 0), -EINVAL);
  bad = (tdm_wait_entry){ .kind = TDM_WAIT_CONN, .conn = NULL };
  CHECK_ERR(tdm_conn_wait(&bad, 1, 0), -EINVAL);
  bad = (tdm_wait_entry){ .kind = TDM_WAIT_FD, .fd = 999 };
  CHECK_ERR(tdm_conn_wait(&bad, 1, 0), -EBADF);
  CHECK_ERR(tdm_conn_wait(NULL, 1, 0), -EINVAL);
  close(pfd[0]);
  close(pfd[1]);
  tdm_queue_close(q);
  tdm_conn_close(b1);
  tdm_conn_close(a2);
  tdm_conn_close(b2);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* ---- Listeners and clients ---------------------------------------------------------------------
 */

struct client_arg {
  char address[200];
  char key[32]; /* "" for none */
  unsigned flags;
  int64_t handshake_timeout;
};

/* Exit codes of the client processes: 0 success, then one per expected failure. */
static int code_of(int rc) {
  switch (rc) {
  case 0:
    return 0;
  case TDM_EAUTH:
    return 1;
  case -ETIMEDOUT:
    return 2;
  case -ECONNRESET:
    return 3;
  default:
    return 10;
  }
}

/* A client: connects, then answers one message with its checksum. */
static int client_task(void *arg, size_t size) {
  struct client_arg ca;
  CHECK_EQ(size, sizeof ca);
  memcpy(&ca, arg, sizeof ca);
  tdm_conn_options o = { .flags = ca.flags,
                         .authkey = ca.key[0] != '\0' ? ca.key : NULL,
                         .authkey_len = strlen(ca.key),
                         .handshake_timeout = ca.handshake_timeout };
  tdm_conn *c;
  int rc = tdm_client_connect(&c, ca.address, &o);
  if (rc < 0) {
    fprintf(stderr, "client: %s\n", tdm_err_name(rc));
    return code_of(rc);
  }
  void *m;
  size_t len;
  CHECK_OK(tdm_conn_recv(c, &m, &len, TDM_S(30)));
  uint64_t sum = fnv(m, len);
  tdm_free(m);
  CHECK_OK(tdm_conn_send(c, &sum, sizeof sum, TDM_S(30)));
  tdm_conn_close(c);
  return 0;
}

static tdm_process *start_client(const char *address, const char *key, unsigned flags,
                                 tdm_start_method m) {
  struct client_arg ca = { .flags = flags };
  CHECK(strlen(address) < sizeof ca.address);
  strcpy(ca.address, address);
  if (key != NULL) strcpy(ca.key, key);
  tdm_process_options o = { .start = m };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, client_task, &ca, sizeof ca, &o));
  return p;
}

static int client_code(tdm_process *p) {
  CHECK_OK(tdm_process_join(p, TDM_S(60)));
  int code = -1;
  CHECK_OK(tdm_process_exitcode(p, &code));
  tdm_process_close(p);
  return code;
}

/* Accepts one client and checks that it can talk. */
static void serve_one(tdm_listener *l) {
  tdm_conn *c;
  CHECK_OK(tdm_listener_accept(l, &c, TDM_S(30)));
  unsigned char *msg = pattern(100000, 9);
  CHECK_OK(tdm_conn_send(c, msg, 100000, TDM_S(30)));
  uint64_t sum;
  size_t len;
  CHECK_OK(tdm_conn_recv_into(c, &sum, sizeof sum, &len, TDM_S(30)));
  CHECK(sum == fnv(msg, 100000));
  free(msg);
  tdm_conn_close(c);
}

static void listen_and_serve(const char *address, const char *key, unsigned flags) {
  tdm_conn_options o = { .flags = flags, .authkey = key, .authkey_len = key ? strlen(key) : 0 };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, address, &o));
  const char *where = tdm_listener_address(l);
  for (int m = 0; m < N_METHODS; m++) {
    tdm_process *p = start_client(where, key, flags, methods[m]);
    serve_one(l);
    CHECK_EQ(client_code(p), 0);
  }
  tdm_listener_close(l);
}

TEST_T(listener_unix_path, 120) {
  warm_forkserver();
  int fds0 = tdm_test_count_fds();
  char dir[] = "/tmp/conn-test-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char address[80], path[64];
  snprintf(path, sizeof path, "%s/sock", dir);
  snprintf(address, sizeof address, "unix:%s", path);
  tdm_listener *l;
  tdm_conn_options o = { .authkey = "secret", .authkey_len = 6 };
  CHECK_OK(tdm_listener_open(&l, address, &o));
  CHECK(strcmp(tdm_listener_address(l), address) == 0);
  struct stat st;
  CHECK(stat(path, &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK_EQ(st.st_mode & 0777, 0600);
  /* The path is taken. */
  tdm_listener *l2;
  CHECK_ERR(tdm_listener_open(&l2, address, &o), -EADDRINUSE);
  tdm_listener_close(l);
  CHECK(stat(path, &st) != 0 && errno == ENOENT);
  listen_and_serve(address, "secret", 0);
  /* Another mode on request. */
  o.mode = 0660;
  CHECK_OK(tdm_listener_open(&l, address, &o));
  CHECK(stat(path, &st) == 0);
  CHECK_EQ(st.st_mode & 0777, 0660);
  tdm_listener_close(l);
  CHECK(rmdir(dir) == 0);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST_T(listener_private_unix, 120) {
  int fds0 = tdm_test_count_fds();
  tdm_conn_options o = { .authkey = "k", .authkey_len = 1 };
  for (int i = 0; i < 2; i++) {
    tdm_listener *l;
    CHECK_OK(tdm_listener_open(&l, i == 0 ? NULL : "unix:", &o));
    const char *a = tdm_listener_address(l);
    CHECK(strncmp(a, "unix:/", 6) == 0);
    char path[128], dir[128];
    snprintf(path, sizeof path, "%s", a + 5);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    struct stat st;
    CHECK(stat(dir, &st) == 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0700);
    CHECK(stat(path, &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0600);
    tdm_process *p = start_client(a, "k", 0, TDM_START_SPAWN);
    serve_one(l);
    CHECK_EQ(client_code(p), 0);
    tdm_listener_close(l);
    CHECK(stat(dir, &st) != 0 && errno == ENOENT);
  }
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST_T(listener_tcp_ipv4, 120) {
  warm_forkserver();
  int fds0 = tdm_test_count_fds();
  tdm_conn_options o = { .authkey = "tcp key", .authkey_len = 7 };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, "tcp:0", &o));
  const char *a = tdm_listener_address(l);
  CHECK(strncmp(a, "tcp:127.0.0.1:", 14) == 0);
  CHECK(atoi(a + 14) > 0);
  tdm_listener_close(l);
  listen_and_serve("tcp:127.0.0.1:0", "tcp key", 0);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST_T(listener_tcp_ipv6, 120) {
  int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
  if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) != 0)
    tdm_test_skip("no IPv6 loopback on this machine (%s)", strerror(errno));
  close(s);
  warm_forkserver();
  int fds0 = tdm_test_count_fds();
  tdm_listener *l;
  tdm_conn_options o = { .authkey = "six", .authkey_len = 3 };
  CHECK_OK(tdm_listener_open(&l, "tcp:[::1]:0", &o));
  CHECK(strncmp(tdm_listener_address(l), "tcp:[::1]:", 10) == 0);
  tdm_listener_close(l);
  listen_and_serve("tcp:[::1]:0", "six", 0);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* A client whose key (or lack of one) does not match: both sides fail with TDM_EAUTH, and the
 * listener then serves a good client. */
static void mismatch(const char *server_key, const char *client_key, const char *address,
                     unsigned flags) {
  tdm_conn_options o = { .flags = flags,
                         .authkey = server_key,
                         .authkey_len = server_key ? strlen(server_key) : 0 };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, address, &o));
  tdm_process *p = start_client(tdm_listener_address(l), client_key, flags, TDM_START_FORK);
  tdm_conn *c = NULL;
  CHECK_ERR(tdm_listener_accept(l, &c, TDM_S(30)), TDM_EAUTH);
  CHECK(c == NULL);
  CHECK_EQ(client_code(p), 1);
  p = start_client(tdm_listener_address(l), server_key, flags, TDM_START_FORK);
  serve_one(l);
  CHECK_EQ(client_code(p), 0);
  tdm_listener_close(l);
}

TEST_T(authentication_failures, 120) {
  int fds0 = tdm_test_count_fds();
  mismatch("right key", "wrong key", NULL, 0);
  mismatch("right key", "right ke", "tcp:0", 0);
  mismatch("key", NULL, NULL, 0);                        /* the client has no key */
  mismatch(NULL, "key", NULL, 0);                        /* the listener has none */
  mismatch(NULL, "key", "tcp:0", TDM_CONN_INSECURE_TCP); /* nor over TCP */
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST(tcp_without_key_is_refused) {
  tdm_listener *l;
  CHECK_ERR(tdm_listener_open(&l, "tcp:0", NULL), -EINVAL);
  tdm_conn *c;
  CHECK_ERR(tdm_client_connect(&c, "tcp:127.0.0.1:1", NULL), -EINVAL);
  tdm_conn_options o = { .flags = TDM_CONN_INSECURE_TCP };
  CHECK_OK(tdm_listener_open(&l, "tcp:0", &o));
  tdm_process *p =
      start_client(tdm_listener_address(l), NULL, TDM_CONN_INSECURE_TCP, TDM_START_FORK);
  serve_one(l);
  CHECK_EQ(client_code(p), 0);
  tdm_listener_close(l);
  /* Unix sockets need no key: the file's mode guards them. */
  listen_and_serve(NULL, NULL, 0);
}

/* Connects to `address` (a Unix path) without tandem and sends `bytes`; keeps the socket. */
static int raw_client(const char *address, const void *bytes, size_t n) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(s >= 0);
  struct sockaddr_un un = { .sun_family = AF_UNIX };
  CHECK(strncmp(address, "unix:", 5) == 0);
  snprintf(un.sun_path, sizeof un.sun_path, "%s", address + 5);
  CHECK(connect(s, (struct sockaddr *)&un, sizeof un) == 0);
  if (n > 0) raw_write(s, bytes, n);
  return s;
}

TEST_T(bad_clients_leave_the_listener_usable, 120) {
  int fds0 = tdm_test_count_fds();
  tdm_conn_options o = { .authkey = "k", .authkey_len = 1, .handshake_timeout = TDM_MS(200) };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, NULL, &o));
  const char *a = tdm_listener_address(l);
  /* A listener is ready for tdm_conn_wait when a client waits. */
  tdm_wait_entry we = { .kind = TDM_WAIT_LISTENER, .listener = l };
  CHECK_ERR(tdm_conn_wait(&we, 1, TDM_MS(10)), -ETIMEDOUT);
  /* Garbage. */
  static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  int s = raw_client(a, http, sizeof http - 1);
  CHECK_EQ(tdm_conn_wait(&we, 1, TDM_S(10)), 1);
  CHECK(we.ready);
  tdm_conn *c = NULL;
  CHECK_ERR(tdm_listener_accept(l, &c, TDM_S(10)), TDM_EAUTH);
  close(s);
  /* A well-formed frame that is not a handshake message. */
  unsigned char frame[16 + 70];
  memset(frame, 'A', sizeof frame);
  header(frame, 70, 0, 0);
  s = raw_client(a, frame, sizeof frame);
  CHECK_ERR(tdm_listener_accept(l, &c, TDM_S(10)), TDM_EAUTH);
  close(s);
  /* Stalls in the middle of a header: the handshake timeout drops it. */
  s = raw_client(a, frame, 5);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_listener_accept(l, &c, TDM_S(10)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(200));
  close(s);
  /* Says nothing at all, and the caller's own timeout is shorter. */
  s = raw_client(a, NULL, 0);
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_listener_accept(l, &c, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  close(s);
  /* Connects and leaves. */
  s = raw_client(a, NULL, 0);
  close(s);
  CHECK_ERR(tdm_listener_accept(l, &c, TDM_S(10)), -ECONNRESET);
  /* No client: the timeout. */
  CHECK_ERR(tdm_listener_accept(l, &c, 0), -ETIMEDOUT);
  CHECK(c == NULL);
  /* And a good client is served. */
  tdm_process *p = start_client(a, "k", 0, TDM_START_FORK);
  serve_one(l);
  CHECK_EQ(client_code(p), 0);
  tdm_listener_close(l);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* A client facing a listener that never speaks times out. */
TEST(client_handshake_timeout) {
  int fds0 = tdm_test_count_fds();
  char dir[] = "/tmp/conn-test-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  struct sockaddr_un un = { .sun_family = AF_UNIX };
  snprintf(un.sun_path, sizeof un.sun_path, "%s/mute", dir);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(s >= 0);
  CHECK(bind(s, (struct sockaddr *)&un, sizeof un) == 0);
  CHECK(listen(s, 4) == 0);
  char address[128];
  snprintf(address, sizeof address, "unix:%s", un.sun_path);
  tdm_conn_options o = { .authkey = "k", .authkey_len = 1, .handshake_timeout = TDM_MS(100) };
  tdm_conn *c = NULL;
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_client_connect(&c, address, &o), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(100));
  CHECK(c == NULL);
  close(s);
  unlink(un.sun_path);
  rmdir(dir);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST(address_errors) {
  int fds0 = tdm_test_count_fds();
  tdm_listener *l;
  tdm_conn *c;
  tdm_conn_options o = { .authkey = "k", .authkey_len = 1 };
  const char *bad[] = { "",          "foo",       "tcp:",       "tcp:x:y",   "tcp:1.2.3.4",
                        "tcp:[::1]", "tcp:70000", "tcp:[::1:0", "tcp:::1:0", "udp:1" };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_ERR(tdm_listener_open(&l, bad[i], &o), -EINVAL);
    CHECK_ERR(tdm_client_connect(&c, bad[i], &o), -EINVAL);
  }
  char longpath[200] = "unix:/";
  memset(longpath + 6, 'a', 150);
  CHECK_ERR(tdm_listener_open(&l, longpath, &o), -ENAMETOOLONG);
  CHECK_ERR(tdm_client_connect(&c, "unix:", &o), -EINVAL);
  CHECK_ERR(tdm_client_connect(&c, NULL, &o), -EINVAL);
  CHECK_ERR(tdm_client_connect(&c, "unix:/nonexistent/conn-test", &o), -ENOENT);
  /* A port nobody listens on (bound, then closed). */
  CHECK_OK(tdm_listener_open(&l, "tcp:0", &o));
  char address[64];
  snprintf(address, sizeof address, "%s", tdm_listener_address(l));
  tdm_listener_close(l);
  CHECK_ERR(tdm_client_connect(&c, address, &o), -ECONNREFUSED);
  tdm_conn_options badopt = { .flags = TDM_CONN_ONEWAY };
  CHECK_ERR(tdm_listener_open(&l, NULL, &badopt), -EINVAL);
  badopt = (tdm_conn_options){ .authkey_len = 3 };
  CHECK_ERR(tdm_listener_open(&l, NULL, &badopt), -EINVAL);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* Several messages, both ways, after an authenticated TCP handshake, from threads. */
static void tcp_client_thread(void *arg) {
  tdm_conn_options o = { .authkey = "threads", .authkey_len = 7 };
  tdm_conn *c;
  CHECK_OK(tdm_client_connect(&c, arg, &o));
  for (int i = 0; i < 50; i++) {
    void *m;
    size_t len;
    CHECK_OK(tdm_conn_recv(c, &m, &len, TDM_S(30)));
    CHECK_OK(tdm_conn_send(c, m, len, TDM_S(30)));
    tdm_free(m);
  }
  tdm_conn_close(c);
}

TEST(tcp_echo_between_threads) {
  tdm_conn_options o = { .authkey = "threads", .authkey_len = 7 };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, "tcp:0", &o));
  tdm_thread *t = tdm_test_thread(tcp_client_thread, (void *)tdm_listener_address(l));
  tdm_conn *c;
  CHECK_OK(tdm_listener_accept(l, &c, TDM_S(30)));
  for (int i = 0; i < 50; i++) {
    size_t n = (size_t)i * 7919 % 300000;
    unsigned char *msg = pattern(n, (uint64_t)i);
    CHECK_OK(tdm_conn_send(c, msg, n, TDM_S(30)));
    expect_message(c, msg, n);
    free(msg);
  }
  /* Descriptors do not travel over TCP. */
  int fd = 0;
  CHECK_ERR(tdm_conn_send_fds(c, "x", 1, &fd, 1, 0), -EOPNOTSUPP);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  void *m;
  size_t len;
  CHECK_ERR(tdm_conn_recv(c, &m, &len, TDM_S(10)), TDM_EEOF);
  tdm_conn_close(c);
  tdm_listener_close(l);
}

/* A maximum smaller than the handshake's messages: the handshake still works, the maximum then
 * holds. */
static void small_client(void *arg) {
  tdm_conn_options o = { .authkey = "k", .authkey_len = 1, .max_message = 8 };
  tdm_conn *c;
  CHECK_OK(tdm_client_connect(&c, arg, &o));
  CHECK_EQ(tdm_conn_max_message(c), 8);
  CHECK_ERR(tdm_conn_send(c, "123456789", 9, 0), -EMSGSIZE);
  CHECK_OK(tdm_conn_send(c, "12345678", 8, TDM_S(10)));
  tdm_conn_close(c);
}

TEST(small_max_message_after_handshake) {
  tdm_conn_options o = { .authkey = "k", .authkey_len = 1, .max_message = 8 };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, NULL, &o));
  tdm_thread *t = tdm_test_thread(small_client, (void *)tdm_listener_address(l));
  tdm_conn *c;
  CHECK_OK(tdm_listener_accept(l, &c, TDM_S(30)));
  CHECK_EQ(tdm_conn_max_message(c), 8);
  expect_message(c, "12345678", 8);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  tdm_conn_close(c);
  tdm_listener_close(l);
}
