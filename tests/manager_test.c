/*
 * manager_test.c: managers through the public API, across real processes (fork children that
 * inherit the handle, fork children that connect on their own, spawn children that get the
 * address and tokens): every object type with its invariants from several processes at once
 * (dictionaries, lists, queues bounded and joinable, locks, rlocks, semaphores, events,
 * conditions, barriers, values, namespaces, and a custom type under fork, spawn and
 * forkserver); tokens and references (a token opened elsewhere, an object freed when the last
 * proxy goes, -ESTALE), wrong types; 8 processes x 10,000 increments under a manager lock;
 * remote managers over TCP with right, wrong and missing keys, and tdm_manager_serve(); a
 * manager killed in the middle of calls (nothing hangs, TDM_EMANAGER) and restarted at the same
 * address (old proxies -ESTALE, the old handle reconnects); a client killed holding a lock
 * (-EOWNERDEAD) and its references dropped; 64 concurrent clients; clients that stall in the
 * handshake or in a request; garbage and oversized messages; calls after shutdown; bad
 * options; several threads on one handle; fork inheritance of proxies; every start method.
 *
 * Cases fork their children before they start any thread (a fork made while another thread
 * runs may copy a sanitizer's allocator lock held). No case measures how fast something is:
 * only lower bounds of waits that must time out are checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

/* A wait that only a bug makes long: fails the case with a line number instead of hanging. */
#define LONG ((int64_t)((double)TDM_S(20) * tdm_test_timeout_scale()))

/* A C string as the (pointer, length) pair the API takes. */
#define S(s) (s), strlen(s)

static const tdm_start_method methods[] = { TDM_START_FORK, TDM_START_SPAWN, TDM_START_FORKSERVER };
#define N_METHODS 3

/* ---- Helpers --------------------------------------------------------------------------------- */

static tdm_manager *start_manager(const tdm_manager_options *o) {
  tdm_manager *m = NULL;
  CHECK_OK(tdm_manager_start(&m, o));
  CHECK(m != NULL);
  return m;
}

/* The helpers below report the line of their caller: `at` carries it. */
struct at {
  const char *file;
  int line;
};
#define AT ((struct at){ __FILE__, __LINE__ })

static void check_rc_at(struct at at, int rc, int want, const char *what) {
  if (rc != want)
    tdm_test_fail(at.file, at.line, "%s returned %d (%s), expected %d (%s)", what, rc,
                  tdm_err_name(rc), want, tdm_err_name(want));
}

static void expect_bytes_at(struct at at, const void *got, size_t len, const char *want) {
  size_t n = strlen(want);
  if (len != n || (n > 0 && memcmp(got, want, n) != 0))
    tdm_test_fail(at.file, at.line, "got \"%.*s\" (%zu bytes), expected \"%s\"",
                  (int)(len < 200 ? len : 200), got != NULL ? (const char *)got : "", len, want);
}
#define expect_bytes(got, len, want) expect_bytes_at(AT, (got), (len), (want))

static bool bytes_is(tdm_bytes b, const char *s) {
  size_t n = strlen(s);
  return b.len == n && (n == 0 || memcmp(b.data, s, n) == 0);
}

static bool bytes_eq(tdm_bytes a, tdm_bytes b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

static void dict_expect_at(struct at at, tdm_proxy *d, const char *k, const char *want) {
  void *v = NULL;
  size_t n = 0;
  check_rc_at(at, tdm_mdict_get(d, S(k), &v, &n), 0, "tdm_mdict_get");
  expect_bytes_at(at, v, n, want);
  tdm_free(v);
}
#define dict_expect(d, k, want) dict_expect_at(AT, (d), (k), (want))

static size_t dict_len_at(struct at at, tdm_proxy *d) {
  size_t n = 12345;
  check_rc_at(at, tdm_mdict_len(d, &n), 0, "tdm_mdict_len");
  return n;
}
#define dict_len(d) dict_len_at(AT, (d))

static void list_expect_at(struct at at, tdm_proxy *l, int64_t i, const char *want) {
  void *v = NULL;
  size_t n = 0;
  check_rc_at(at, tdm_mlist_get(l, i, &v, &n), 0, "tdm_mlist_get");
  expect_bytes_at(at, v, n, want);
  tdm_free(v);
}
#define list_expect(l, i, want) list_expect_at(AT, (l), (i), (want))

static size_t list_len_at(struct at at, tdm_proxy *l) {
  size_t n = 12345;
  check_rc_at(at, tdm_mlist_len(l, &n), 0, "tdm_mlist_len");
  return n;
}
#define list_len(l) list_len_at(AT, (l))

/* Checks that a slice holds exactly the strings of `want` (NULL-terminated). */
static void slice_expect_at(struct at at, tdm_proxy *l, int64_t start, int64_t stop,
                            const char *const *want) {
  tdm_bytes_list *s = NULL;
  check_rc_at(at, tdm_mlist_slice(l, start, stop, &s), 0, "tdm_mlist_slice");
  if (s == NULL) tdm_test_fail(at.file, at.line, "slice: no list");
  size_t n = 0;
  while (want[n] != NULL)
    n++;
  if (s->n != n)
    tdm_test_fail(at.file, at.line, "slice(%lld, %lld) has %zu items, expected %zu",
                  (long long)start, (long long)stop, s->n, n);
  for (size_t i = 0; i < n; i++)
    if (!bytes_is(s->v[i], want[i]))
      tdm_test_fail(at.file, at.line, "slice(%lld, %lld)[%zu] is \"%.*s\", expected \"%s\"",
                    (long long)start, (long long)stop, i, (int)s->v[i].len,
                    (const char *)s->v[i].data, want[i]);
  tdm_free(s);
}
/* Variadic: a compound literal of strings has commas. */
#define slice_expect(l, start, stop, ...) slice_expect_at(AT, (l), (start), (stop), __VA_ARGS__)

static void queue_expect_at(struct at at, tdm_proxy *q, const char *want, int64_t timeout) {
  void *v = NULL;
  size_t n = 0;
  check_rc_at(at, tdm_mqueue_get(q, &v, &n, timeout), 0, "tdm_mqueue_get");
  expect_bytes_at(at, v, n, want);
  tdm_free(v);
}
#define queue_expect(q, want, timeout) queue_expect_at(AT, (q), (want), (timeout))

static int64_t value_int_at(struct at at, tdm_proxy *v) {
  int64_t x = -12345;
  check_rc_at(at, tdm_mvalue_get_int(v, &x), 0, "tdm_mvalue_get_int");
  return x;
}
#define value_int(v) value_int_at(AT, (v))

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t r = write(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    CHECK(r > 0);
    c += r;
    n -= (size_t)r;
  }
}

static void read_all(int fd, void *p, size_t n) {
  char *c = p;
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    CHECK(r > 0);
    c += r;
    n -= (size_t)r;
  }
}

/* Writes raw bytes on a socket, bypassing any framing. */
static void raw_send(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t r = send(fd, c, n, MSG_NOSIGNAL);
    CHECK(r > 0);
    c += r;
    n -= (size_t)r;
  }
}

/* A frame header of tandem/conn.h: length (64-bit BE), descriptors and flags (32-bit BE). */
static void frame_header(unsigned char h[16], uint64_t len) {
  memset(h, 0, 16);
  for (int i = 0; i < 8; i++)
    h[i] = (unsigned char)(len >> (56 - 8 * i));
}

/* Connects to a "unix:/path" address without tandem; sends `bytes`; keeps the socket. */
static int raw_unix_client(const char *address, const void *bytes, size_t n) {
  CHECK(strncmp(address, "unix:", 5) == 0);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(s >= 0);
  struct sockaddr_un un = { .sun_family = AF_UNIX };
  snprintf(un.sun_path, sizeof un.sun_path, "%s", address + 5);
  CHECK(connect(s, (struct sockaddr *)&un, sizeof un) == 0);
  if (n > 0) raw_send(s, bytes, n);
  return s;
}

/* Reads and drops what a raw socket receives until the peer closes it (or resets it). */
static void raw_expect_closed(int s) {
  char buf[4096];
  for (;;) {
    struct pollfd pfd = { .fd = s, .events = POLLIN };
    int r = poll(&pfd, 1, (int)(LONG / TDM_MS(1)));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) tdm_test_fail(__FILE__, __LINE__, "the server never closed the connection");
    ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return;
    CHECK(n > 0);
  }
}

/* Runs a few operations on a fresh dictionary: the manager serves. */
static void manager_serves_at(struct at at, tdm_manager *m) {
  tdm_proxy *d;
  check_rc_at(at, tdm_manager_dict(m, &d), 0, "tdm_manager_dict");
  check_rc_at(at, tdm_mdict_set(d, S("alive"), S("yes")), 0, "tdm_mdict_set");
  dict_expect_at(at, d, "alive", "yes");
  check_rc_at(at, tdm_proxy_close(d), 0, "tdm_proxy_close");
}
#define manager_serves(m) manager_serves_at(AT, (m))

/* Starts and stops a manager, so that what the library makes once and keeps for good (the pipe
 * its daemon children watch, tandem/process.h) exists before a case counts descriptors. */
static void warm_up(void) {
  tdm_manager *m = NULL;
  CHECK_OK(tdm_manager_start(&m, NULL));
  CHECK_OK(tdm_manager_close(m));
}

/* A private directory for "unix:/path" addresses. */
struct sockdir {
  char dir[64];
  char path[96];
  char address[128];
};

static void sockdir_make(struct sockdir *s) {
  snprintf(s->dir, sizeof s->dir, "/tmp/mgr-test-XXXXXX");
  CHECK(mkdtemp(s->dir) != NULL);
  snprintf(s->path, sizeof s->path, "%s/sock", s->dir);
  snprintf(s->address, sizeof s->address, "unix:%s", s->path);
}

static void sockdir_remove(struct sockdir *s) {
  unlink(s->path);
  CHECK(rmdir(s->dir) == 0);
}

/* Shared memory for counters that children report through. */
struct board {
  _Atomic int arrived;
  _Atomic int flag;
  _Atomic int inside, max_inside;
  _Atomic long long sum;
  _Atomic int count;
  int32_t tid;
  int slots[64][8];
  long long plain; /* incremented without atomics, only under a manager lock */
};

static struct board *board_new(void) {
  return tdm_test_shared(sizeof(struct board));
}

static void board_free(struct board *b) {
  tdm_test_unshare(b, sizeof *b);
}

/* ---- Dictionaries ---------------------------------------------------------------------------- */

static char sentinel;

TEST(dict_operations) {
  tdm_manager *m = start_manager(NULL);
  CHECK(tdm_manager_pid(m) > 0 && tdm_manager_pid(m) != getpid());
  CHECK(strncmp(tdm_manager_address(m), "unix:/", 6) == 0);
  tdm_proxy *d;
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_EQ(tdm_proxy_type(d), TDM_MDICT);
  CHECK_EQ(dict_len(d), 0);

  /* A missing key: -ENOENT, outputs untouched. */
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mdict_get(d, S("missing"), &v, &n), -ENOENT);
  CHECK(v == &sentinel && n == 77);
  CHECK_ERR(tdm_mdict_pop(d, S("missing"), &v, &n), -ENOENT);
  CHECK(v == &sentinel && n == 77);
  CHECK_ERR(tdm_mdict_delete(d, S("missing")), -ENOENT);

  CHECK_OK(tdm_mdict_set(d, S("a"), S("1")));
  CHECK_OK(tdm_mdict_set(d, S("b"), S("2")));
  CHECK_OK(tdm_mdict_set(d, S("a"), S("one"))); /* overwrites */
  dict_expect(d, "a", "one");
  dict_expect(d, "b", "2");
  /* A 0-byte key and value; keys are bytes, a NUL inside is part of them. */
  CHECK_OK(tdm_mdict_set(d, "", 0, "", 0));
  dict_expect(d, "", "");
  CHECK_OK(tdm_mdict_set(d, "k\0x", 3, S("with nul")));
  CHECK_ERR(tdm_mdict_get(d, S("k"), &v, &n), -ENOENT);
  CHECK_OK(tdm_mdict_get(d, "k\0x", 3, &v, &n));
  expect_bytes(v, n, "with nul");
  tdm_free(v);
  CHECK_EQ(dict_len(d), 4);

  CHECK_EQ(tdm_mdict_contains(d, S("a")), 1);
  CHECK_EQ(tdm_mdict_contains(d, "", 0), 1);
  CHECK_EQ(tdm_mdict_contains(d, S("zz")), 0);

  /* pop hands the value back and removes the key. */
  v = NULL;
  CHECK_OK(tdm_mdict_pop(d, S("b"), &v, &n));
  expect_bytes(v, n, "2");
  tdm_free(v);
  CHECK_EQ(tdm_mdict_contains(d, S("b")), 0);
  CHECK_ERR(tdm_mdict_pop(d, S("b"), &v, &n), -ENOENT);
  CHECK_OK(tdm_mdict_delete(d, "", 0));
  CHECK_ERR(tdm_mdict_delete(d, "", 0), -ENOENT);
  CHECK_OK(tdm_mdict_delete(d, "k\0x", 3));
  CHECK_EQ(dict_len(d), 1);

  /* setdefault: keeps what is there, sets what is not. */
  void *o = NULL;
  size_t on = 0;
  CHECK_OK(tdm_mdict_setdefault(d, S("a"), S("x"), &o, &on));
  expect_bytes(o, on, "one");
  tdm_free(o);
  dict_expect(d, "a", "one");
  o = NULL;
  CHECK_OK(tdm_mdict_setdefault(d, S("c"), S("3"), &o, &on));
  expect_bytes(o, on, "3");
  tdm_free(o);
  dict_expect(d, "c", "3");

  /* update: n pairs at once, overwriting too. */
  tdm_bytes pairs[] = {
    { S("k1") }, { S("v1") }, { S("k2") }, { S("v2") }, { S("a") }, { S("uno") }
  };
  CHECK_OK(tdm_mdict_update(d, pairs, 3));
  dict_expect(d, "k1", "v1");
  dict_expect(d, "k2", "v2");
  dict_expect(d, "a", "uno");
  CHECK_OK(tdm_mdict_update(d, pairs, 0));
  CHECK_EQ(dict_len(d), 4);

  /* keys, values and items: one order, consistent with get. */
  tdm_bytes_list *keys = NULL, *vals = NULL, *items = NULL;
  CHECK_OK(tdm_mdict_keys(d, &keys));
  CHECK_OK(tdm_mdict_values(d, &vals));
  CHECK_OK(tdm_mdict_items(d, &items));
  CHECK_EQ(keys->n, 4);
  CHECK_EQ(vals->n, 4);
  CHECK_EQ(items->n, 8);
  const char *want_keys[] = { "a", "c", "k1", "k2" };
  const char *want_vals[] = { "uno", "3", "v1", "v2" };
  for (size_t i = 0; i < 4; i++) {
    CHECK(bytes_eq(keys->v[i], items->v[2 * i]));
    CHECK(bytes_eq(vals->v[i], items->v[2 * i + 1]));
    int found = 0;
    for (size_t k = 0; k < 4; k++) {
      if (bytes_is(keys->v[i], want_keys[k])) {
        CHECK(bytes_is(vals->v[i], want_vals[k]));
        found++;
      }
    }
    CHECK_EQ(found, 1);
    for (size_t j = 0; j < i; j++)
      CHECK(!bytes_eq(keys->v[i], keys->v[j]));
  }
  tdm_free(keys);
  tdm_free(vals);
  tdm_free(items);

  /* A 1 MiB value. */
  size_t big = (size_t)1 << 20;
  char *bv = malloc(big);
  CHECK(bv != NULL);
  for (size_t i = 0; i < big; i++)
    bv[i] = (char)(i * 131 + 7);
  CHECK_OK(tdm_mdict_set(d, S("big"), bv, big));
  v = NULL;
  CHECK_OK(tdm_mdict_get(d, S("big"), &v, &n));
  CHECK_EQ(n, big);
  CHECK(memcmp(v, bv, big) == 0);
  tdm_free(v);
  free(bv);

  CHECK_OK(tdm_mdict_clear(d));
  CHECK_EQ(dict_len(d), 0);
  CHECK_OK(tdm_mdict_keys(d, &keys));
  CHECK_EQ(keys->n, 0);
  tdm_free(keys);
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(NULL));
  CHECK_OK(tdm_manager_close(m));
  CHECK_OK(tdm_manager_close(NULL));
}

struct dict_ctx {
  tdm_proxy *d;
  struct board *b;
  int id;
};

/* Each child sets 100 keys of its own, deletes the odd ones, and races for one setdefault. */
static void dict_child(void *arg) {
  struct dict_ctx *c = arg;
  char k[32], v[32];
  for (int i = 0; i < 100; i++) {
    snprintf(k, sizeof k, "c%d-%03d", c->id, i);
    snprintf(v, sizeof v, "v%d-%d", c->id, i);
    CHECK_OK(tdm_mdict_set(c->d, S(k), S(v)));
  }
  snprintf(v, sizeof v, "winner %d", c->id);
  void *o = NULL;
  size_t on = 0;
  CHECK_OK(tdm_mdict_setdefault(c->d, S("shared"), S(v), &o, &on));
  CHECK(on > 7 && memcmp(o, "winner ", 7) == 0);
  c->b->slots[c->id][0] = atoi((char *)o + 7);
  tdm_free(o);
  for (int i = 1; i < 100; i += 2) {
    snprintf(k, sizeof k, "c%d-%03d", c->id, i);
    CHECK_OK(tdm_mdict_delete(c->d, S(k)));
  }
}

/* A child that updates two keys together; snapshots must always see them equal. */
static void dict_updater(void *arg) {
  struct dict_ctx *c = arg;
  for (int i = 0; i < 300; i++) {
    char v[16];
    snprintf(v, sizeof v, "%d", i);
    tdm_bytes pairs[] = { { S("x") }, { S(v) }, { S("y") }, { S(v) } };
    CHECK_OK(tdm_mdict_update(c->d, pairs, 2));
  }
  atomic_store(&c->b->flag, 1);
}

TEST_T(dict_from_processes, 120) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *d, *d2;
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_manager_dict(m, &d2));
  struct dict_ctx ctx[5];
  pid_t pids[5];
  for (int i = 0; i < 4; i++) {
    ctx[i] = (struct dict_ctx){ d, b, i };
    pids[i] = tdm_test_fork(dict_child, &ctx[i]);
  }
  ctx[4] = (struct dict_ctx){ d2, b, 4 };
  tdm_bytes start[] = { { S("x") }, { S("-") }, { S("y") }, { S("-") } };
  CHECK_OK(tdm_mdict_update(d2, start, 2));
  pids[4] = tdm_test_fork(dict_updater, &ctx[4]);
  /* Snapshots taken while the updater runs: x and y always agree. */
  int snapshots = 0;
  while (atomic_load(&b->flag) == 0 || snapshots < 10) {
    tdm_bytes_list *items = NULL;
    CHECK_OK(tdm_mdict_items(d2, &items));
    CHECK_EQ(items->n, 4);
    tdm_bytes x = bytes_is(items->v[0], "x") ? items->v[1] : items->v[3];
    tdm_bytes y = bytes_is(items->v[0], "x") ? items->v[3] : items->v[1];
    CHECK(bytes_eq(x, y));
    tdm_free(items);
    snapshots++;
  }
  for (int i = 0; i < 5; i++)
    tdm_test_wait_ok(pids[i]);
  dict_expect(d2, "x", "299");
  dict_expect(d2, "y", "299");

  /* 4 x 50 keys left, and the one shared key that one child won for all. */
  CHECK_EQ(dict_len(d), 4 * 50 + 1);
  int winner = b->slots[0][0];
  CHECK(winner >= 0 && winner < 4);
  for (int i = 0; i < 4; i++)
    CHECK_EQ(b->slots[i][0], winner);
  char w[32];
  snprintf(w, sizeof w, "winner %d", winner);
  dict_expect(d, "shared", w);
  for (int c = 0; c < 4; c++) {
    for (int i = 0; i < 100; i++) {
      char k[32], v[32];
      snprintf(k, sizeof k, "c%d-%03d", c, i);
      snprintf(v, sizeof v, "v%d-%d", c, i);
      if (i % 2 == 0)
        dict_expect(d, k, v);
      else
        CHECK_EQ(tdm_mdict_contains(d, S(k)), 0);
    }
  }
  /* The snapshot calls agree with each other and with get. */
  tdm_bytes_list *keys = NULL, *vals = NULL, *items = NULL;
  CHECK_OK(tdm_mdict_keys(d, &keys));
  CHECK_OK(tdm_mdict_values(d, &vals));
  CHECK_OK(tdm_mdict_items(d, &items));
  CHECK_EQ(keys->n, 201);
  CHECK_EQ(vals->n, 201);
  CHECK_EQ(items->n, 402);
  for (size_t i = 0; i < keys->n; i++) {
    CHECK(bytes_eq(keys->v[i], items->v[2 * i]));
    CHECK(bytes_eq(vals->v[i], items->v[2 * i + 1]));
  }
  tdm_free(keys);
  tdm_free(vals);
  tdm_free(items);
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(d2));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Lists ----------------------------------------------------------------------------------- */

TEST(list_operations) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l;
  CHECK_OK(tdm_manager_list(m, &l));
  CHECK_EQ(tdm_proxy_type(l), TDM_MLIST);
  CHECK_EQ(list_len(l), 0);
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mlist_get(l, 0, &v, &n), -ERANGE);
  CHECK_ERR(tdm_mlist_get(l, -1, &v, &n), -ERANGE);
  CHECK_ERR(tdm_mlist_pop(l, -1, &v, &n), -ERANGE);
  CHECK(v == &sentinel && n == 77);
  slice_expect(l, 0, 10, (const char *[]){ NULL });

  CHECK_OK(tdm_mlist_append(l, S("a")));
  CHECK_OK(tdm_mlist_append(l, S("b")));
  CHECK_OK(tdm_mlist_append(l, S("c")));
  CHECK_EQ(list_len(l), 3);
  list_expect(l, 0, "a");
  list_expect(l, 2, "c");
  list_expect(l, -1, "c");
  list_expect(l, -3, "a");
  CHECK_ERR(tdm_mlist_get(l, 3, &v, &n), -ERANGE);
  CHECK_ERR(tdm_mlist_get(l, -4, &v, &n), -ERANGE);
  CHECK(v == &sentinel && n == 77);

  CHECK_OK(tdm_mlist_set(l, -1, S("C")));
  list_expect(l, 2, "C");
  CHECK_OK(tdm_mlist_set(l, 0, "", 0));
  list_expect(l, 0, "");
  CHECK_OK(tdm_mlist_set(l, 0, S("a")));
  CHECK_ERR(tdm_mlist_set(l, 3, S("x")), -ERANGE);
  CHECK_ERR(tdm_mlist_set(l, -4, S("x")), -ERANGE);

  /* insert clamps as Python does. */
  CHECK_OK(tdm_mlist_insert(l, 0, S("z")));        /* z a b C */
  CHECK_OK(tdm_mlist_insert(l, 100, S("end")));    /* z a b C end */
  CHECK_OK(tdm_mlist_insert(l, -100, S("first"))); /* first z a b C end */
  CHECK_OK(tdm_mlist_insert(l, -1, S("pen")));     /* first z a b C pen end */
  slice_expect(l, 0, 100, (const char *[]){ "first", "z", "a", "b", "C", "pen", "end", NULL });
  /* Slices: negative bounds, clamping, empty. */
  slice_expect(l, -2, 100, (const char *[]){ "pen", "end", NULL });
  slice_expect(l, 1, -1, (const char *[]){ "z", "a", "b", "C", "pen", NULL });
  slice_expect(l, -100, 2, (const char *[]){ "first", "z", NULL });
  slice_expect(l, 5, 2, (const char *[]){ NULL });
  slice_expect(l, -1, -3, (const char *[]){ NULL });
  slice_expect(l, 7, 100, (const char *[]){ NULL });
  slice_expect(l, INT64_MIN, INT64_MAX,
               (const char *[]){ "first", "z", "a", "b", "C", "pen", "end", NULL });

  /* pop */
  v = NULL;
  CHECK_OK(tdm_mlist_pop(l, -1, &v, &n));
  expect_bytes(v, n, "end");
  tdm_free(v);
  v = NULL;
  CHECK_OK(tdm_mlist_pop(l, 0, &v, &n));
  expect_bytes(v, n, "first");
  tdm_free(v);
  CHECK_ERR(tdm_mlist_pop(l, 100, NULL, NULL), -ERANGE);
  CHECK_ERR(tdm_mlist_pop(l, -6, NULL, NULL), -ERANGE);
  CHECK_OK(tdm_mlist_append(l, S("a")));     /* z a b C pen a */
  CHECK_OK(tdm_mlist_pop(l, 3, NULL, NULL)); /* z a b pen a */
  slice_expect(l, 0, 100, (const char *[]){ "z", "a", "b", "pen", "a", NULL });

  /* index */
  size_t idx = 999;
  CHECK_OK(tdm_mlist_index(l, S("a"), 0, &idx));
  CHECK_EQ(idx, 1);
  CHECK_OK(tdm_mlist_index(l, S("a"), 2, &idx));
  CHECK_EQ(idx, 4);
  CHECK_OK(tdm_mlist_index(l, S("a"), -1, &idx));
  CHECK_EQ(idx, 4);
  CHECK_OK(tdm_mlist_index(l, S("z"), -100, &idx));
  CHECK_EQ(idx, 0);
  idx = 999;
  CHECK_ERR(tdm_mlist_index(l, S("a"), 5, &idx), -ENOENT);
  CHECK_ERR(tdm_mlist_index(l, S("nope"), 0, &idx), -ENOENT);
  CHECK_EQ(idx, 999);

  /* remove the first equal item */
  CHECK_OK(tdm_mlist_remove(l, S("a")));
  slice_expect(l, 0, 100, (const char *[]){ "z", "b", "pen", "a", NULL });
  CHECK_ERR(tdm_mlist_remove(l, S("nope")), -ENOENT);

  /* extend */
  tdm_bytes more[] = { { S("x") }, { "", 0 }, { S("y") } };
  CHECK_OK(tdm_mlist_extend(l, more, 3));
  CHECK_OK(tdm_mlist_extend(l, more, 0));
  slice_expect(l, 0, 100, (const char *[]){ "z", "b", "pen", "a", "x", "", "y", NULL });
  CHECK_EQ(list_len(l), 7);

  CHECK_OK(tdm_mlist_clear(l));
  CHECK_EQ(list_len(l), 0);
  CHECK_ERR(tdm_mlist_get(l, 0, &v, &n), -ERANGE);
  CHECK_OK(tdm_mlist_insert(l, 5, S("only")));
  slice_expect(l, -5, 5, (const char *[]){ "only", NULL });
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_manager_close(m));
}

struct list_ctx {
  tdm_proxy *l;
  int id;
};

/* Each child extends the list 50 times with groups of 3: a group is never split. */
static void list_child(void *arg) {
  struct list_ctx *c = arg;
  for (int k = 0; k < 50; k++) {
    char s[3][32];
    tdm_bytes g[3];
    for (int j = 0; j < 3; j++) {
      snprintf(s[j], sizeof s[j], "%d:%03d:%d", c->id, k, j);
      g[j] = (tdm_bytes){ S(s[j]) };
    }
    CHECK_OK(tdm_mlist_extend(c->l, g, 3));
    char a[32];
    snprintf(a, sizeof a, "%d:%03d:a", c->id, k);
    CHECK_OK(tdm_mlist_append(c->l, S(a)));
  }
}

TEST_T(list_from_processes, 120) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l;
  CHECK_OK(tdm_manager_list(m, &l));
  struct list_ctx ctx[4];
  pid_t pids[4];
  for (int i = 0; i < 4; i++) {
    ctx[i] = (struct list_ctx){ l, i };
    pids[i] = tdm_test_fork(list_child, &ctx[i]);
  }
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(list_len(l), 4 * 50 * 4);
  tdm_bytes_list *s = NULL;
  CHECK_OK(tdm_mlist_slice(l, 0, INT64_MAX, &s));
  CHECK_EQ(s->n, 800);
  int next[4] = { 0, 0, 0, 0 };
  for (size_t i = 0; i < s->n;) {
    char buf[32];
    CHECK(s->v[i].len < sizeof buf);
    memcpy(buf, s->v[i].data, s->v[i].len);
    buf[s->v[i].len] = '\0';
    int id = -1, k = -1;
    char tail = 0;
    CHECK(sscanf(buf, "%d:%d:%c", &id, &k, &tail) == 3);
    CHECK(id >= 0 && id < 4);
    CHECK_EQ(k, next[id]);
    if (tail == 'a') {
      next[id]++;
      i++;
      continue;
    }
    /* A group: its three items side by side, in order. */
    CHECK(i + 2 < s->n);
    for (int j = 0; j < 3; j++) {
      char want[32];
      snprintf(want, sizeof want, "%d:%03d:%d", id, k, j);
      CHECK(bytes_is(s->v[i + (size_t)j], want));
    }
    i += 3;
  }
  for (int i = 0; i < 4; i++)
    CHECK_EQ(next[i], 50);
  tdm_free(s);
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_manager_close(m));
}

/* ---- Queues ---------------------------------------------------------------------------------- */

struct queue_ctx {
  tdm_proxy *q;
  struct board *b;
  int id;
};

/* Waits for the parent to block in a put on a full queue, then makes room. */
static void queue_room_maker(void *arg) {
  struct queue_ctx *c = arg;
  WAIT_UNTIL(atomic_load(&c->b->flag) == 1);
  tdm_clock_sleep(TDM_MS(50));
  queue_expect(c->q, "a", LONG);
}

/* Takes three messages of a joinable queue and marks them done. */
static void queue_worker(void *arg) {
  struct queue_ctx *c = arg;
  for (int i = 0; i < 3; i++) {
    void *v = NULL;
    size_t n;
    CHECK_OK(tdm_mqueue_get(c->q, &v, &n, LONG));
    tdm_free(v);
    CHECK_OK(tdm_mqueue_task_done(c->q));
  }
}

TEST(queue_operations) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *q, *bq, *jq, *jq2;
  CHECK_OK(tdm_manager_queue(m, 0, false, &q));
  CHECK_OK(tdm_manager_queue(m, 2, false, &bq));
  CHECK_OK(tdm_manager_queue(m, 0, true, &jq));
  CHECK_OK(tdm_manager_queue(m, 0, true, &jq2));
  CHECK_EQ(tdm_proxy_type(q), TDM_MQUEUE);
  struct queue_ctx c1 = { bq, b, 0 }, c2 = { jq2, b, 1 };
  pid_t room = tdm_test_fork(queue_room_maker, &c1);
  pid_t worker = tdm_test_fork(queue_worker, &c2);

  /* FIFO, 0-byte messages included. */
  CHECK_OK(tdm_mqueue_put(q, S("1"), 0));
  CHECK_OK(tdm_mqueue_put(q, S("2"), TDM_FOREVER));
  CHECK_OK(tdm_mqueue_put(q, "", 0, 0));
  size_t qs = 99;
  CHECK_OK(tdm_mqueue_qsize(q, &qs));
  CHECK_EQ(qs, 3);
  queue_expect(q, "1", 0);
  queue_expect(q, "2", 0);
  queue_expect(q, "", 0);
  CHECK_OK(tdm_mqueue_qsize(q, &qs));
  CHECK_EQ(qs, 0);
  /* Empty: get times out, outputs untouched. */
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mqueue_get(q, &v, &n, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_mqueue_get(q, &v, &n, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  CHECK(v == &sentinel && n == 77);
  /* Not joinable. */
  CHECK_ERR(tdm_mqueue_task_done(q), TDM_ETYPE);

  /* Bounded: a put on a full queue times out... */
  CHECK_OK(tdm_mqueue_put(bq, S("a"), 0));
  CHECK_OK(tdm_mqueue_put(bq, S("b"), 0));
  CHECK_ERR(tdm_mqueue_put(bq, S("c"), 0), -ETIMEDOUT);
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_mqueue_put(bq, S("c"), TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  CHECK_OK(tdm_mqueue_qsize(bq, &qs));
  CHECK_EQ(qs, 2);
  /* ...and goes through when another process makes room. */
  atomic_store(&b->flag, 1);
  CHECK_OK(tdm_mqueue_put(bq, S("c"), LONG));
  tdm_test_wait_ok(room);
  queue_expect(bq, "b", 0);
  queue_expect(bq, "c", 0);

  /* Joinable. */
  CHECK_OK(tdm_mqueue_join(jq, 0)); /* nothing put */
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_mqueue_put(jq, S("job"), 0));
  CHECK_ERR(tdm_mqueue_join(jq, 0), -ETIMEDOUT);
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_mqueue_join(jq, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  for (int i = 0; i < 3; i++)
    queue_expect(jq, "job", 0);
  CHECK_ERR(tdm_mqueue_join(jq, 0), -ETIMEDOUT); /* taken, not done */
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_mqueue_task_done(jq));
  CHECK_OK(tdm_mqueue_join(jq, 0));
  CHECK_ERR(tdm_mqueue_task_done(jq), TDM_EOVERRELEASE);
  CHECK_OK(tdm_mqueue_join(jq, 0));
  /* join across processes: a worker marks them done. */
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_mqueue_put(jq2, S("work"), 0));
  CHECK_OK(tdm_mqueue_join(jq2, LONG));
  tdm_test_wait_ok(worker);
  CHECK_OK(tdm_mqueue_qsize(jq2, &qs));
  CHECK_EQ(qs, 0);

  CHECK_OK(tdm_proxy_close(q));
  CHECK_OK(tdm_proxy_close(bq));
  CHECK_OK(tdm_proxy_close(jq));
  CHECK_OK(tdm_proxy_close(jq2));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

#define PRODUCERS    3
#define CONSUMERS    2
#define PER_PRODUCER 300

static void producer(void *arg) {
  struct queue_ctx *c = arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    int msg[2] = { c->id, i };
    CHECK_OK(tdm_mqueue_put(c->q, msg, sizeof msg, LONG));
  }
}

/* Takes messages until an empty one; checks each producer's messages come in order. */
static void consumer(void *arg) {
  struct queue_ctx *c = arg;
  int last[PRODUCERS] = { -1, -1, -1 };
  for (;;) {
    void *v = NULL;
    size_t n = 0;
    CHECK_OK(tdm_mqueue_get(c->q, &v, &n, LONG));
    if (n == 0) {
      tdm_free(v);
      break;
    }
    CHECK_EQ(n, 2 * sizeof(int));
    int msg[2];
    memcpy(msg, v, sizeof msg);
    tdm_free(v);
    CHECK(msg[0] >= 0 && msg[0] < PRODUCERS);
    CHECK(msg[1] > last[msg[0]]);
    last[msg[0]] = msg[1];
    atomic_fetch_add(&c->b->sum, msg[1]);
    atomic_fetch_add(&c->b->count, 1);
  }
}

TEST_T(queue_producers_consumers, 120) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *q;
  CHECK_OK(tdm_manager_queue(m, 16, false, &q)); /* bounded: producers wait for room */
  struct queue_ctx ctx[PRODUCERS + CONSUMERS];
  pid_t pids[PRODUCERS + CONSUMERS];
  /* Consumers first: they block in get on an empty queue. */
  for (int i = 0; i < CONSUMERS; i++) {
    ctx[i] = (struct queue_ctx){ q, b, i };
    pids[i] = tdm_test_fork(consumer, &ctx[i]);
  }
  for (int i = 0; i < PRODUCERS; i++) {
    ctx[CONSUMERS + i] = (struct queue_ctx){ q, b, i };
    pids[CONSUMERS + i] = tdm_test_fork(producer, &ctx[CONSUMERS + i]);
  }
  for (int i = 0; i < PRODUCERS; i++)
    tdm_test_wait_ok(pids[CONSUMERS + i]);
  for (int i = 0; i < CONSUMERS; i++)
    CHECK_OK(tdm_mqueue_put(q, "", 0, LONG));
  for (int i = 0; i < CONSUMERS; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(atomic_load(&b->count), PRODUCERS * PER_PRODUCER);
  CHECK_EQ(atomic_load(&b->sum), (long long)PRODUCERS * PER_PRODUCER * (PER_PRODUCER - 1) / 2);
  size_t qs = 99;
  CHECK_OK(tdm_mqueue_qsize(q, &qs));
  CHECK_EQ(qs, 0);
  CHECK_OK(tdm_proxy_close(q));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Locks and rlocks ------------------------------------------------------------------------ */

struct lock_ctx {
  tdm_proxy *l, *r;
  struct board *b;
};

/* Holds the plain lock until told, then leaves (it no longer holds it: the parent released it). */
static void lock_holder(void *arg) {
  struct lock_ctx *c = arg;
  CHECK_OK(tdm_mlock_acquire(c->l, LONG));
  atomic_store(&c->b->flag, 1);
  WAIT_UNTIL(atomic_load(&c->b->flag) == 2);
}

/* Holds the rlock twice, and releases it when told. */
static void rlock_holder(void *arg) {
  struct lock_ctx *c = arg;
  CHECK_OK(tdm_mlock_acquire(c->r, LONG));
  CHECK_OK(tdm_mlock_acquire(c->r, 0)); /* re-entry never waits */
  atomic_store(&c->b->arrived, 1);
  WAIT_UNTIL(atomic_load(&c->b->arrived) == 2);
  CHECK_OK(tdm_mlock_release(c->r));
  CHECK_OK(tdm_mlock_release(c->r));
  CHECK_ERR(tdm_mlock_release(c->r), -EPERM);
  atomic_store(&c->b->arrived, 3);
}

struct thread_try {
  tdm_proxy *r;
  int rc_release, rc_try, rc_wait;
  int64_t waited;
};

static void rlock_other_thread(void *arg) {
  struct thread_try *t = arg;
  t->rc_release = tdm_mlock_release(t->r);
  t->rc_try = tdm_mlock_acquire(t->r, 0);
  int64_t t0 = tdm_clock_now();
  t->rc_wait = tdm_mlock_acquire(t->r, TDM_MS(50));
  t->waited = tdm_clock_now() - t0;
}

TEST(lock_and_rlock) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l, *r;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_rlock(m, &r));
  CHECK_EQ(tdm_proxy_type(l), TDM_MLOCK);
  CHECK_EQ(tdm_proxy_type(r), TDM_MRLOCK);
  /* Released while nobody holds them: -EPERM (before the children can take them). */
  CHECK_ERR(tdm_mlock_release(l), -EPERM);
  CHECK_ERR(tdm_mlock_release(r), -EPERM);
  struct lock_ctx ctx = { l, r, b };
  pid_t lh = tdm_test_fork(lock_holder, &ctx);
  pid_t rh = tdm_test_fork(rlock_holder, &ctx);

  /* A plain lock held by another process: no entry, and no re-entry. */
  WAIT_UNTIL(atomic_load(&b->flag) == 1); /* the child holds it */
  CHECK_ERR(tdm_mlock_acquire(l, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_mlock_acquire(l, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  /* Anyone may release a plain lock held by another process (as in Python). */
  CHECK_OK(tdm_mlock_release(l));
  CHECK_OK(tdm_mlock_acquire(l, 0));
  CHECK_ERR(tdm_mlock_acquire(l, 0), -ETIMEDOUT); /* not reentrant */
  atomic_store(&b->flag, 2);
  tdm_test_wait_ok(lh);
  CHECK_OK(tdm_mlock_release(l));
  CHECK_ERR(tdm_mlock_release(l), -EPERM);

  /* An rlock held by another process: we can neither take it nor release it. */
  WAIT_UNTIL(atomic_load(&b->arrived) == 1);
  CHECK_ERR(tdm_mlock_acquire(r, 0), -ETIMEDOUT);
  CHECK_ERR(tdm_mlock_release(r), -EPERM);
  atomic_store(&b->arrived, 2);
  CHECK_OK(tdm_mlock_acquire(r, LONG)); /* once the child released both levels */
  WAIT_UNTIL(atomic_load(&b->arrived) == 3);
  tdm_test_wait_ok(rh);
  /* Re-entry here, then another thread of this process is not the owner. */
  CHECK_OK(tdm_mlock_acquire(r, 0));
  CHECK_OK(tdm_mlock_acquire(r, TDM_FOREVER));
  struct thread_try tt = { r, 1, 1, 1, 0 };
  tdm_thread *t = tdm_test_thread(rlock_other_thread, &tt);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  CHECK_ERR(tt.rc_release, -EPERM);
  CHECK_ERR(tt.rc_try, -ETIMEDOUT);
  CHECK_ERR(tt.rc_wait, -ETIMEDOUT);
  CHECK(tt.waited >= TDM_MS(50));
  CHECK_OK(tdm_mlock_release(r));
  CHECK_OK(tdm_mlock_release(r));
  CHECK_OK(tdm_mlock_release(r));
  CHECK_ERR(tdm_mlock_release(r), -EPERM);
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_proxy_close(r));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Semaphores ------------------------------------------------------------------------------ */

struct sem_ctx {
  tdm_proxy *s;
  struct board *b;
};

static void sem_user(void *arg) {
  struct sem_ctx *c = arg;
  for (int i = 0; i < 50; i++) {
    CHECK_OK(tdm_msem_acquire(c->s, LONG));
    int in = atomic_fetch_add(&c->b->inside, 1) + 1;
    int mx = atomic_load(&c->b->max_inside);
    while (in > mx && !atomic_compare_exchange_weak(&c->b->max_inside, &mx, in)) {
    }
    tdm_clock_sleep(TDM_US(200));
    atomic_fetch_sub(&c->b->inside, 1);
    CHECK_OK(tdm_msem_release(c->s, 1));
  }
}

/* Blocks on an empty semaphore until the parent releases it. */
static void sem_waiter(void *arg) {
  struct sem_ctx *c = arg;
  atomic_store(&c->b->flag, 1);
  CHECK_OK(tdm_msem_acquire(c->s, LONG));
  atomic_store(&c->b->flag, 2);
}

TEST_T(semaphore, 120) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *s, *bs, *z;
  CHECK_OK(tdm_manager_semaphore(m, 2, false, &s));
  CHECK_OK(tdm_manager_semaphore(m, 2, true, &bs));
  CHECK_OK(tdm_manager_semaphore(m, 0, false, &z));
  CHECK_EQ(tdm_proxy_type(s), TDM_MSEMAPHORE);
  struct sem_ctx cs = { bs, b }, cz = { z, b };
  pid_t pids[4];
  for (int i = 0; i < 4; i++)
    pids[i] = tdm_test_fork(sem_user, &cs);
  pid_t w = tdm_test_fork(sem_waiter, &cz);

  unsigned val = 99;
  CHECK_OK(tdm_msem_value(s, &val));
  CHECK_EQ(val, 2);
  CHECK_OK(tdm_msem_acquire(s, 0));
  CHECK_OK(tdm_msem_acquire(s, LONG));
  CHECK_OK(tdm_msem_value(s, &val));
  CHECK_EQ(val, 0);
  CHECK_ERR(tdm_msem_acquire(s, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_msem_acquire(s, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  CHECK_OK(tdm_msem_release(s, 2));
  CHECK_OK(tdm_msem_release(s, 1)); /* unbounded: may go beyond its start */
  CHECK_OK(tdm_msem_value(s, &val));
  CHECK_EQ(val, 3);

  /* Four processes through a bounded semaphore of 2: never more than 2 inside. */
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK(atomic_load(&b->max_inside) >= 1 && atomic_load(&b->max_inside) <= 2);
  CHECK_OK(tdm_msem_value(bs, &val));
  CHECK_EQ(val, 2);
  /* Bounded: no release beyond the start, and a refused release changes nothing. */
  CHECK_ERR(tdm_msem_release(bs, 1), TDM_EOVERRELEASE);
  CHECK_OK(tdm_msem_acquire(bs, 0));
  CHECK_ERR(tdm_msem_release(bs, 2), TDM_EOVERRELEASE);
  CHECK_OK(tdm_msem_value(bs, &val));
  CHECK_EQ(val, 1);
  CHECK_OK(tdm_msem_release(bs, 1));
  CHECK_OK(tdm_msem_value(bs, &val));
  CHECK_EQ(val, 2);

  /* A release wakes a waiter in another process. */
  WAIT_UNTIL(atomic_load(&b->flag) == 1);
  CHECK_OK(tdm_msem_release(z, 1));
  tdm_test_wait_ok(w);
  CHECK_EQ(atomic_load(&b->flag), 2);
  CHECK_OK(tdm_msem_value(z, &val));
  CHECK_EQ(val, 0);
  CHECK_OK(tdm_proxy_close(s));
  CHECK_OK(tdm_proxy_close(bs));
  CHECK_OK(tdm_proxy_close(z));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Events ---------------------------------------------------------------------------------- */

struct event_ctx {
  tdm_proxy *e;
  struct board *b;
};

static void event_waiter(void *arg) {
  struct event_ctx *c = arg;
  atomic_fetch_add(&c->b->arrived, 1);
  CHECK_OK(tdm_mevent_wait(c->e, LONG));
  CHECK_EQ(tdm_mevent_is_set(c->e), 1);
}

TEST(event) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *e;
  CHECK_OK(tdm_manager_event(m, &e));
  CHECK_EQ(tdm_proxy_type(e), TDM_MEVENT);
  struct event_ctx c = { e, b };
  pid_t pids[3];
  for (int i = 0; i < 3; i++)
    pids[i] = tdm_test_fork(event_waiter, &c);
  CHECK_EQ(tdm_mevent_is_set(e), 0);
  CHECK_ERR(tdm_mevent_wait(e, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_mevent_wait(e, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  WAIT_UNTIL(atomic_load(&b->arrived) == 3);
  for (int i = 0; i < 3; i++)
    WAIT_UNTIL(tdm_test_process_sleeping(pids[i]));
  CHECK_OK(tdm_mevent_set(e));
  for (int i = 0; i < 3; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(tdm_mevent_is_set(e), 1);
  CHECK_OK(tdm_mevent_wait(e, 0));
  CHECK_OK(tdm_mevent_set(e));
  CHECK_OK(tdm_mevent_clear(e));
  CHECK_EQ(tdm_mevent_is_set(e), 0);
  CHECK_ERR(tdm_mevent_wait(e, 0), -ETIMEDOUT);
  CHECK_OK(tdm_proxy_close(e));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Conditions ------------------------------------------------------------------------------ */

struct cond_ctx {
  tdm_proxy *c, *l, *items;
  struct board *b;
  int id;
};

#define CONSUMED_EACH 50

/* Takes CONSUMED_EACH items from the list, waiting on the condition while it is empty. */
static void cond_consumer(void *arg) {
  struct cond_ctx *c = arg;
  long long sum = 0;
  for (int k = 0; k < CONSUMED_EACH; k++) {
    CHECK_OK(tdm_mlock_acquire(c->c, LONG));
    while (list_len(c->items) == 0)
      CHECK_OK(tdm_mcond_wait(c->c, LONG));
    void *v = NULL;
    size_t n = 0;
    CHECK_OK(tdm_mlist_pop(c->items, 0, &v, &n));
    CHECK_EQ(n, sizeof(int));
    int x;
    memcpy(&x, v, sizeof x);
    tdm_free(v);
    sum += x;
    CHECK_OK(tdm_mlock_release(c->c));
  }
  atomic_fetch_add(&c->b->sum, sum);
}

/* Counts itself under the lock, then waits: once the parent holds the lock with every waiter
 * counted, they all wait (the wait released the lock). */
static void cond_all_waiter(void *arg) {
  struct cond_ctx *c = arg;
  CHECK_OK(tdm_mlock_acquire(c->c, LONG));
  atomic_fetch_add(&c->b->arrived, 1);
  CHECK_OK(tdm_mcond_wait(c->c, LONG));
  CHECK_OK(tdm_mlock_release(c->c));
}

/* Takes the condition's rlock while the parent waits on it (the wait released every level). */
static void cond_rlock_notifier(void *arg) {
  struct cond_ctx *c = arg;
  WAIT_UNTIL(atomic_load(&c->b->flag) == 1);
  CHECK_OK(tdm_mlock_acquire(c->c, LONG));
  CHECK_OK(tdm_mcond_notify(c->c, 1));
  CHECK_OK(tdm_mlock_release(c->c));
}

TEST_T(condition, 120) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l, *c, *items, *c2, *c3;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_condition(m, l, &c));
  CHECK_OK(tdm_manager_list(m, &items));
  CHECK_OK(tdm_manager_condition(m, l, &c2));
  CHECK_OK(tdm_manager_condition(m, NULL, &c3));
  CHECK_EQ(tdm_proxy_type(c), TDM_MCONDITION);
  struct cond_ctx ctx[3], all = { c2, l, items, b, 0 }, rl = { c3, NULL, NULL, b, 0 };
  pid_t pids[3], waiters[3];
  /* Misuse that is a result: wait and notify without the lock. */
  CHECK_ERR(tdm_mcond_wait(c, 0), -EPERM);
  CHECK_ERR(tdm_mcond_notify(c, 1), -EPERM);
  CHECK_ERR(tdm_mcond_notify_all(c), -EPERM);
  for (int i = 0; i < 3; i++) {
    ctx[i] = (struct cond_ctx){ c, l, items, b, i };
    pids[i] = tdm_test_fork(cond_consumer, &ctx[i]);
  }

  /* Producer: the condition's lock is the lock proxy's lock. */
  for (int i = 0; i < 3 * CONSUMED_EACH; i++) {
    CHECK_OK(tdm_mlock_acquire(l, LONG));
    CHECK_OK(tdm_mlist_append(items, &i, sizeof i));
    CHECK_OK(tdm_mcond_notify(c, 1));
    CHECK_OK(tdm_mlock_release(l));
  }
  for (int i = 0; i < 3; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(atomic_load(&b->sum), (long long)(3 * CONSUMED_EACH) * (3 * CONSUMED_EACH - 1) / 2);
  CHECK_EQ(list_len(items), 0);

  /* A wait that times out takes the lock back. */
  CHECK_OK(tdm_mlock_acquire(c, LONG));
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_mcond_wait(c, TDM_MS(50)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  CHECK_ERR(tdm_mlock_acquire(l, 0), -ETIMEDOUT); /* held, by us */
  CHECK_OK(tdm_mcond_notify(c, 1));               /* nobody waits: fine */
  CHECK_OK(tdm_mcond_notify_all(c));
  CHECK_OK(tdm_mlock_release(c));

  /* notify_all wakes every waiter. */
  for (int i = 0; i < 3; i++)
    waiters[i] = tdm_test_fork(cond_all_waiter, &all);
  for (;;) {
    CHECK_OK(tdm_mlock_acquire(c2, LONG));
    if (atomic_load(&b->arrived) == 3) break;
    CHECK_OK(tdm_mlock_release(c2));
    tdm_clock_sleep(TDM_MS(1));
  }
  CHECK_OK(tdm_mcond_notify_all(c2));
  CHECK_OK(tdm_mlock_release(c2));
  for (int i = 0; i < 3; i++)
    tdm_test_wait_ok(waiters[i]);

  /* A condition over its own rlock: a wait releases every level and takes them all back. */
  pid_t notifier = tdm_test_fork(cond_rlock_notifier, &rl);
  CHECK_OK(tdm_mlock_acquire(c3, LONG));
  CHECK_OK(tdm_mlock_acquire(c3, LONG));
  atomic_store(&b->flag, 1);
  CHECK_OK(tdm_mcond_wait(c3, LONG));
  tdm_test_wait_ok(notifier);
  CHECK_OK(tdm_mlock_release(c3));
  CHECK_OK(tdm_mlock_release(c3));
  CHECK_ERR(tdm_mlock_release(c3), -EPERM);

  CHECK_OK(tdm_proxy_close(c));
  CHECK_OK(tdm_proxy_close(c2));
  CHECK_OK(tdm_proxy_close(c3));
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_proxy_close(items));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Barriers -------------------------------------------------------------------------------- */

struct barrier_ctx {
  tdm_proxy *br;
  struct board *b;
  int id;
  int expect; /* the result a lone waiter expects */
};

#define ROUNDS 3

static void barrier_party(void *arg) {
  struct barrier_ctx *c = arg;
  for (int r = 0; r < ROUNDS; r++) {
    unsigned idx = 99;
    CHECK_OK(tdm_mbarrier_wait(c->br, LONG, &idx));
    c->b->slots[c->id][r] = (int)idx;
  }
}

static void barrier_lone_waiter(void *arg) {
  struct barrier_ctx *c = arg;
  unsigned idx = 99;
  CHECK_ERR(tdm_mbarrier_wait(c->br, LONG, &idx), c->expect);
  CHECK_EQ(idx, 99);
}

static void barrier_ok_waiter(void *arg) {
  struct barrier_ctx *c = arg;
  CHECK_OK(tdm_mbarrier_wait(c->br, LONG, NULL));
}

static unsigned barrier_waiting(tdm_proxy *br) {
  unsigned n = 99;
  CHECK_OK(tdm_mbarrier_state(br, &n, NULL));
  return n;
}

static bool barrier_broken(tdm_proxy *br) {
  bool broken = false;
  CHECK_OK(tdm_mbarrier_state(br, NULL, &broken));
  return broken;
}

TEST_T(barrier, 120) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *br, *one, *b3;
  CHECK_OK(tdm_manager_barrier(m, 4, &br));
  CHECK_OK(tdm_manager_barrier(m, 1, &one));
  CHECK_OK(tdm_manager_barrier(m, 3, &b3));
  CHECK_EQ(tdm_proxy_type(br), TDM_MBARRIER);
  tdm_proxy *bad = NULL;
  CHECK_ERR(tdm_manager_barrier(m, 0, &bad), -EINVAL);
  CHECK(bad == NULL);

  /* Four processes, three rounds: each round's indexes are 0..3, one each. */
  struct barrier_ctx ctx[4];
  pid_t pids[4];
  for (int i = 0; i < 4; i++) {
    ctx[i] = (struct barrier_ctx){ br, b, i, 0 };
    pids[i] = tdm_test_fork(barrier_party, &ctx[i]);
  }
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(pids[i]);
  for (int r = 0; r < ROUNDS; r++) {
    int seen = 0;
    for (int i = 0; i < 4; i++) {
      int idx = b->slots[i][r];
      CHECK(idx >= 0 && idx < 4);
      CHECK((seen & (1 << idx)) == 0);
      seen |= 1 << idx;
    }
    CHECK_EQ(seen, 0xf);
  }
  CHECK_EQ(barrier_waiting(br), 0);
  CHECK(!barrier_broken(br));

  /* One party: never waits. */
  unsigned idx = 99;
  CHECK_OK(tdm_mbarrier_wait(one, 0, &idx));
  CHECK_EQ(idx, 0);

  /* A party that times out breaks the barrier for the others. */
  struct barrier_ctx lone = { b3, b, 0, TDM_EBROKEN };
  pid_t w = tdm_test_fork(barrier_lone_waiter, &lone);
  WAIT_UNTIL(barrier_waiting(b3) == 1);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_mbarrier_wait(b3, TDM_MS(50), &idx), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(50));
  tdm_test_wait_ok(w);
  CHECK(barrier_broken(b3));
  CHECK_ERR(tdm_mbarrier_wait(b3, LONG, NULL), TDM_EBROKEN);
  CHECK_OK(tdm_mbarrier_reset(b3));
  CHECK(!barrier_broken(b3));
  CHECK_EQ(barrier_waiting(b3), 0);

  /* abort: the waiter and later callers get TDM_EBROKEN until a reset. */
  w = tdm_test_fork(barrier_lone_waiter, &lone);
  WAIT_UNTIL(barrier_waiting(b3) == 1);
  CHECK_OK(tdm_mbarrier_abort(b3));
  tdm_test_wait_ok(w);
  CHECK(barrier_broken(b3));
  CHECK_ERR(tdm_mbarrier_wait(b3, 0, NULL), TDM_EBROKEN);
  CHECK_OK(tdm_mbarrier_reset(b3));

  /* reset with a waiter: it gets TDM_EBROKEN, and the barrier works again. */
  w = tdm_test_fork(barrier_lone_waiter, &lone);
  WAIT_UNTIL(barrier_waiting(b3) == 1);
  CHECK_OK(tdm_mbarrier_reset(b3));
  tdm_test_wait_ok(w);
  CHECK(!barrier_broken(b3));
  CHECK_EQ(barrier_waiting(b3), 0);
  pid_t a1 = tdm_test_fork(barrier_ok_waiter, &lone);
  pid_t a2 = tdm_test_fork(barrier_ok_waiter, &lone);
  CHECK_OK(tdm_mbarrier_wait(b3, LONG, NULL));
  tdm_test_wait_ok(a1);
  tdm_test_wait_ok(a2);

  CHECK_OK(tdm_proxy_close(br));
  CHECK_OK(tdm_proxy_close(one));
  CHECK_OK(tdm_proxy_close(b3));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* A party whose process dies while it waits breaks the barrier. */
static void barrier_doomed(void *arg) {
  struct barrier_ctx *c = arg;
  (void)tdm_mbarrier_wait(c->br, TDM_FOREVER, NULL);
  _exit(3); /* not reached: killed */
}

TEST(barrier_party_killed) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *br;
  CHECK_OK(tdm_manager_barrier(m, 3, &br));
  struct barrier_ctx c = { br, b, 0, 0 };
  pid_t doomed = tdm_test_fork(barrier_doomed, &c);
  struct barrier_ctx lone = { br, b, 1, TDM_EBROKEN };
  pid_t w = tdm_test_fork(barrier_lone_waiter, &lone);
  WAIT_UNTIL(barrier_waiting(br) == 2);
  tdm_test_kill_and_reap(doomed);
  tdm_test_wait_ok(w);
  CHECK(barrier_broken(br));
  CHECK_OK(tdm_proxy_close(br));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Values ---------------------------------------------------------------------------------- */

struct value_ctx {
  tdm_proxy *i, *f;
};

static void value_adder(void *arg) {
  struct value_ctx *c = arg;
  for (int k = 0; k < 1000; k++) {
    CHECK_OK(tdm_mvalue_add_int(c->i, 1, NULL));
    CHECK_OK(tdm_mvalue_add_float(c->f, 0.5, NULL));
  }
}

TEST_T(values, 120) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *vi, *vf, *ci, *cf;
  CHECK_OK(tdm_manager_value_int(m, 5, &vi));
  CHECK_OK(tdm_manager_value_float(m, 1.5, &vf));
  CHECK_OK(tdm_manager_value_int(m, 0, &ci));
  CHECK_OK(tdm_manager_value_float(m, 0.0, &cf));
  CHECK_EQ(tdm_proxy_type(vi), TDM_MVALUE_INT);
  CHECK_EQ(tdm_proxy_type(vf), TDM_MVALUE_FLOAT);
  struct value_ctx ctx = { ci, cf };
  pid_t pids[4];
  for (int i = 0; i < 4; i++)
    pids[i] = tdm_test_fork(value_adder, &ctx);

  CHECK_EQ(value_int(vi), 5);
  CHECK_OK(tdm_mvalue_set_int(vi, -10));
  CHECK_EQ(value_int(vi), -10);
  int64_t out = 0;
  CHECK_OK(tdm_mvalue_add_int(vi, 3, &out));
  CHECK_EQ(out, -7);
  CHECK_OK(tdm_mvalue_add_int(vi, -3, NULL));
  CHECK_EQ(value_int(vi), -10);
  /* Wraps around as unsigned arithmetic does. */
  CHECK_OK(tdm_mvalue_set_int(vi, INT64_MAX));
  CHECK_OK(tdm_mvalue_add_int(vi, 1, &out));
  CHECK(out == INT64_MIN);
  CHECK(value_int(vi) == INT64_MIN);
  CHECK_OK(tdm_mvalue_add_int(vi, -1, &out));
  CHECK(out == INT64_MAX);

  double d = 0;
  CHECK_OK(tdm_mvalue_get_float(vf, &d));
  CHECK(d == 1.5);
  CHECK_OK(tdm_mvalue_add_float(vf, 0.25, &d));
  CHECK(d == 1.75);
  CHECK_OK(tdm_mvalue_set_float(vf, -2.0));
  CHECK_OK(tdm_mvalue_get_float(vf, &d));
  CHECK(d == -2.0);
  CHECK_OK(tdm_mvalue_add_float(vf, 0.5, NULL));
  CHECK_OK(tdm_mvalue_get_float(vf, &d));
  CHECK(d == -1.5);
  CHECK_OK(tdm_mvalue_set_float(vf, 1e300));
  CHECK_OK(tdm_mvalue_get_float(vf, &d));
  CHECK(d == 1e300);

  /* No lost updates between processes. */
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(value_int(ci), 4000);
  CHECK_OK(tdm_mvalue_get_float(cf, &d));
  CHECK(d == 2000.0);
  CHECK_OK(tdm_proxy_close(vi));
  CHECK_OK(tdm_proxy_close(vf));
  CHECK_OK(tdm_proxy_close(ci));
  CHECK_OK(tdm_proxy_close(cf));
  CHECK_OK(tdm_manager_close(m));
}

/* ---- Namespaces ------------------------------------------------------------------------------ */

struct ns_ctx {
  tdm_proxy *ns;
  int id;
};

static void ns_child(void *arg) {
  struct ns_ctx *c = arg;
  char name[16], val[16];
  snprintf(name, sizeof name, "child%d", c->id);
  snprintf(val, sizeof val, "pid %d", c->id);
  CHECK_OK(tdm_mns_set(c->ns, name, S(val)));
}

static void ns_expect_at(struct at at, tdm_proxy *ns, const char *name, const char *want) {
  void *v = NULL;
  size_t n = 0;
  check_rc_at(at, tdm_mns_get(ns, name, &v, &n), 0, "tdm_mns_get");
  expect_bytes_at(at, v, n, want);
  tdm_free(v);
}
#define ns_expect(ns, name, want) ns_expect_at(AT, (ns), (name), (want))

TEST(namespace) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *ns;
  CHECK_OK(tdm_manager_namespace(m, &ns));
  CHECK_EQ(tdm_proxy_type(ns), TDM_MNAMESPACE);
  struct ns_ctx ctx[3];
  pid_t pids[3];
  for (int i = 0; i < 3; i++) {
    ctx[i] = (struct ns_ctx){ ns, i };
    pids[i] = tdm_test_fork(ns_child, &ctx[i]);
  }
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mns_get(ns, "missing", &v, &n), -ENOENT);
  CHECK(v == &sentinel && n == 77);
  CHECK_ERR(tdm_mns_delete(ns, "missing"), -ENOENT);
  CHECK_OK(tdm_mns_set(ns, "x", S("1")));
  CHECK_OK(tdm_mns_set(ns, "x", S("2")));
  CHECK_OK(tdm_mns_set(ns, "empty", "", 0));
  ns_expect(ns, "x", "2");
  ns_expect(ns, "empty", "");
  /* Names of 1 to 255 bytes. */
  char name[300];
  memset(name, 'n', sizeof name);
  name[255] = '\0';
  CHECK_OK(tdm_mns_set(ns, name, S("long")));
  ns_expect(ns, name, "long");
  CHECK_OK(tdm_mns_delete(ns, name));
  name[255] = 'n';
  name[256] = '\0';
  CHECK_ERR(tdm_mns_set(ns, name, S("too long")), -EINVAL);
  CHECK_ERR(tdm_mns_get(ns, name, &v, &n), -EINVAL);
  CHECK_ERR(tdm_mns_set(ns, "", S("no name")), -EINVAL);
  CHECK_OK(tdm_mns_delete(ns, "empty"));
  CHECK_ERR(tdm_mns_get(ns, "empty", &v, &n), -ENOENT);

  for (int i = 0; i < 3; i++)
    tdm_test_wait_ok(pids[i]);
  tdm_bytes_list *names = NULL;
  CHECK_OK(tdm_mns_names(ns, &names));
  CHECK_EQ(names->n, 4);
  const char *want[] = { "x", "child0", "child1", "child2" };
  for (int k = 0; k < 4; k++) {
    int found = 0;
    for (size_t i = 0; i < names->n; i++)
      found += bytes_is(names->v[i], want[k]);
    CHECK_EQ(found, 1);
  }
  tdm_free(names);
  ns_expect(ns, "child1", "pid 1");
  CHECK_OK(tdm_proxy_close(ns));
  CHECK_OK(tdm_manager_close(m));
}

/* ---- A custom type --------------------------------------------------------------------------- */

/* The server runs these; `destroyed` counts in the server process. */
static int destroyed;

enum { OP_ADD, OP_GET, OP_FAIL, OP_DESTROYED, OP_ECHO, OP_INT_MIN };

static int counter_create(void **state, const void *arg, size_t len) {
  if (len != 0 && len != sizeof(int64_t)) return -EINVAL;
  int64_t *c = malloc(sizeof *c);
  if (c == NULL) return -ENOMEM;
  *c = 0;
  if (len > 0) memcpy(c, arg, sizeof *c);
  *state = c;
  return 0;
}

static int counter_call(void *state, uint32_t op, const void *in, size_t in_len, void **out,
                        size_t *out_len) {
  int64_t *c = state;
  switch (op) {
  case OP_ADD: {
    if (in_len != sizeof(int64_t)) return -EINVAL;
    int64_t d;
    memcpy(&d, in, sizeof d);
    *c += d;
    return 7;
  }
  case OP_GET: {
    int64_t *r = malloc(sizeof *r);
    if (r == NULL) return -ENOMEM;
    *r = *c;
    *out = r;
    *out_len = sizeof *r;
    return 0;
  }
  case OP_FAIL:
    return -EDOM;
  case OP_INT_MIN: /* a result no request can have */
    return INT_MIN;
  case OP_DESTROYED:
    return destroyed;
  case OP_ECHO: {
    void *r = malloc(in_len > 0 ? in_len : 1);
    if (r == NULL) return -ENOMEM;
    if (in_len > 0) memcpy(r, in, in_len);
    *out = r;
    *out_len = in_len;
    return (int)in_len;
  }
  default:
    return -ENOSYS;
  }
}

static void counter_destroy(void *state) {
  destroyed++;
  free(state);
}

static const tdm_manager_type counter_type = { "counter", counter_create, counter_call,
                                               counter_destroy };
static const tdm_manager_type *const test_types[] = { &counter_type };

static int64_t counter_get_at(struct at at, tdm_proxy *p) {
  void *out = NULL;
  size_t n = 0;
  check_rc_at(at, tdm_proxy_call(p, OP_GET, NULL, 0, &out, &n), 0, "tdm_proxy_call(OP_GET)");
  if (n != sizeof(int64_t)) tdm_test_fail(at.file, at.line, "OP_GET: %zu bytes", n);
  int64_t v;
  memcpy(&v, out, sizeof v);
  tdm_free(out);
  return v;
}
#define counter_get(p) counter_get_at(AT, (p))

static void counter_adder(void *arg) {
  tdm_proxy *p = arg;
  int64_t one = 1;
  for (int i = 0; i < 100; i++)
    CHECK_EQ(tdm_proxy_call(p, OP_ADD, &one, sizeof one, NULL, NULL), 7);
}

/* A spawn child: connects with the address, opens the token, adds. */
struct remote_arg {
  char address[256];
  char key[32];
  tdm_token token;
  int64_t add;
};

static int counter_remote(void *arg, size_t size) {
  struct remote_arg ra;
  CHECK_EQ(size, sizeof ra);
  memcpy(&ra, arg, sizeof ra);
  tdm_manager_options o = { .authkey = ra.key[0] ? ra.key : NULL, .authkey_len = strlen(ra.key) };
  tdm_manager *m;
  CHECK_OK(tdm_manager_connect(&m, ra.address, &o));
  tdm_proxy *p;
  CHECK_OK(tdm_proxy_open(&p, m, &ra.token));
  CHECK_EQ(tdm_proxy_type(p), TDM_MCUSTOM);
  CHECK_EQ(tdm_proxy_call(p, OP_ADD, &ra.add, sizeof ra.add, NULL, NULL), 7);
  CHECK_OK(tdm_proxy_close(p));
  CHECK_OK(tdm_manager_close(m));
  return 0;
}

static void custom_type_under(tdm_start_method method) {
  tdm_manager_options o = { .start = method, .types = test_types, .n_types = 1 };
  tdm_manager *m = start_manager(&o);
  tdm_proxy *p, *q, *r;
  int64_t init = 40;
  CHECK_OK(tdm_manager_create(m, "counter", &init, sizeof init, &p));
  CHECK_EQ(tdm_proxy_type(p), TDM_MCUSTOM);
  CHECK_OK(tdm_manager_create(m, "counter", NULL, 0, &q));
  CHECK_EQ(counter_get(p), 40);
  CHECK_EQ(counter_get(q), 0);
  /* Errors of create() and of call() come back; unknown types are -ENOENT. */
  tdm_proxy *bad = NULL;
  CHECK_ERR(tdm_manager_create(m, "counter", "abc", 3, &bad), -EINVAL);
  CHECK_ERR(tdm_manager_create(m, "nosuch", NULL, 0, &bad), -ENOENT);
  CHECK(bad == NULL);
  CHECK_ERR(tdm_proxy_call(p, OP_FAIL, NULL, 0, NULL, NULL), -EDOM);
  CHECK_ERR(tdm_proxy_call(p, OP_INT_MIN, NULL, 0, NULL, NULL), -ERANGE);
  CHECK_ERR(tdm_proxy_call(p, 999, NULL, 0, NULL, NULL), -ENOSYS);
  CHECK_ERR(tdm_proxy_call(p, OP_ADD, "x", 1, NULL, NULL), -EINVAL);
  void *out = &sentinel;
  size_t n = 77;
  CHECK_EQ(tdm_proxy_call(p, OP_ECHO, S("hello"), &out, &n), 5);
  expect_bytes(out, n, "hello");
  tdm_free(out);
  out = &sentinel;
  CHECK_EQ(tdm_proxy_call(p, OP_ADD, &init, sizeof init, &out, &n), 7);
  CHECK(out == NULL); /* no reply bytes */
  CHECK_EQ(counter_get(p), 80);

  /* Several processes: fork children that inherited the proxy, and a spawn child with a token. */
  pid_t pids[3];
  for (int i = 0; i < 3; i++)
    pids[i] = tdm_test_fork(counter_adder, q);
  struct remote_arg ra = { .add = 1000 };
  snprintf(ra.address, sizeof ra.address, "%s", tdm_manager_address(m));
  tdm_proxy_token(q, &ra.token);
  CHECK_EQ(ra.token.type, TDM_MCUSTOM);
  tdm_process_options po = { .start = TDM_START_SPAWN };
  tdm_process *child;
  CHECK_OK(tdm_process_start(&child, counter_remote, &ra, sizeof ra, &po));
  for (int i = 0; i < 3; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_OK(tdm_process_join(child, LONG));
  int code = -1;
  CHECK_OK(tdm_process_exitcode(child, &code));
  CHECK_EQ(code, 0);
  CHECK_OK(tdm_process_close(child));
  CHECK_EQ(counter_get(q), 1300);

  /* destroy() runs when the last reference goes. */
  CHECK_OK(tdm_manager_create(m, "counter", NULL, 0, &r));
  int before = tdm_proxy_call(p, OP_DESTROYED, NULL, 0, NULL, NULL);
  CHECK(before >= 0);
  CHECK_OK(tdm_proxy_close(r));
  CHECK_EQ(tdm_proxy_call(p, OP_DESTROYED, NULL, 0, NULL, NULL), before + 1);
  CHECK_OK(tdm_proxy_close(q));
  CHECK_EQ(tdm_proxy_call(p, OP_DESTROYED, NULL, 0, NULL, NULL), before + 2);
  CHECK_OK(tdm_proxy_close(p));
  CHECK_OK(tdm_manager_close(m));
}

TEST_T(custom_type_fork, 120) {
  custom_type_under(TDM_START_FORK);
}

TEST_T(custom_type_spawn, 120) {
  custom_type_under(TDM_START_SPAWN);
}

TEST_T(custom_type_forkserver, 120) {
  custom_type_under(TDM_START_FORKSERVER);
}

static int no_create(void **state, const void *arg, size_t len) {
  (void)arg;
  (void)len;
  *state = NULL;
  return 0;
}

TEST(custom_type_errors) {
  warm_up();
  int fds0 = tdm_test_count_fds();
  tdm_manager *m = NULL;
  static const tdm_manager_type no_name = { NULL, no_create, counter_call, NULL };
  static const tdm_manager_type empty_name = { "", no_create, counter_call, NULL };
  static const tdm_manager_type no_call = { "nocall", no_create, NULL, NULL };
  static const tdm_manager_type long_name = {
    "0123456789012345678901234567890123456789012345678901234567890123X", no_create, counter_call,
    NULL
  };
  static const tdm_manager_type *const t_no_name[] = { &no_name };
  static const tdm_manager_type *const t_empty_name[] = { &empty_name };
  static const tdm_manager_type *const t_no_call[] = { &no_call };
  static const tdm_manager_type *const t_long[] = { &long_name };
  static const tdm_manager_type *const t_dup[] = { &counter_type, &counter_type };
  static const tdm_manager_type *const t_null[] = { NULL };
  const tdm_manager_type *const *bad[] = {
    t_no_name, t_empty_name, t_no_call, t_long, t_dup, t_null
  };
  size_t nbad[] = { 1, 1, 1, 1, 2, 1 };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tdm_manager_options o = { .types = bad[i], .n_types = nbad[i] };
    CHECK_ERR(tdm_manager_start(&m, &o), -EINVAL);
    CHECK(m == NULL);
  }
  tdm_manager_options o = { .types = NULL, .n_types = 1 };
  CHECK_ERR(tdm_manager_start(&m, &o), -EINVAL);

  /* More than TDM_MANAGER_MAX_TYPES, each with a name of its own. */
  tdm_manager_type many[TDM_MANAGER_MAX_TYPES + 1];
  const tdm_manager_type *many_p[TDM_MANAGER_MAX_TYPES + 1];
  char names[TDM_MANAGER_MAX_TYPES + 1][16];
  for (int i = 0; i <= TDM_MANAGER_MAX_TYPES; i++) {
    snprintf(names[i], sizeof names[i], "type%d", i);
    many[i] = (tdm_manager_type){ names[i], no_create, counter_call, NULL };
    many_p[i] = &many[i];
  }
  o = (tdm_manager_options){ .types = many_p, .n_types = TDM_MANAGER_MAX_TYPES + 1 };
  CHECK_ERR(tdm_manager_start(&m, &o), -EINVAL);
  /* Exactly the most is fine (under fork, where the table need not be static). */
  o.n_types = TDM_MANAGER_MAX_TYPES;
  o.start = TDM_START_FORK;
  CHECK_OK(tdm_manager_start(&m, &o));
  tdm_proxy *p;
  CHECK_OK(tdm_manager_create(m, "type63", NULL, 0, &p));
  CHECK_OK(tdm_proxy_close(p));
  CHECK_OK(tdm_manager_close(m));
  m = NULL;
  CHECK_EQ(tdm_test_count_fds(), fds0);

  /* Under spawn, a table the child cannot find: a function that is in no loaded object. */
  void *heap = malloc(64);
  CHECK(heap != NULL);
  tdm_manager_type *lost = malloc(sizeof *lost);
  CHECK(lost != NULL);
  *lost = (tdm_manager_type){ "lost", no_create, NULL, NULL };
  memcpy(&lost->call, &heap, sizeof heap);
  const tdm_manager_type *lost_p[] = { lost };
  o = (tdm_manager_options){ .start = TDM_START_SPAWN, .types = lost_p, .n_types = 1 };
  CHECK_ERR(tdm_manager_start(&m, &o), TDM_ENOTASK);
  CHECK(m == NULL);
  free(lost);
  free(heap);
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* ---- Tokens, references, wrong types --------------------------------------------------------- */

struct token_ctx {
  int rfd, wfd;
};

/* Reads a token from a pipe and writes through it, with the inherited handle. */
static tdm_manager *g_manager;

static void token_reader(void *arg) {
  struct token_ctx *c = arg;
  tdm_token t;
  read_all(c->rfd, &t, sizeof t);
  tdm_proxy *d;
  CHECK_OK(tdm_proxy_open(&d, g_manager, &t));
  CHECK_EQ(tdm_proxy_type(d), TDM_MDICT);
  CHECK_OK(tdm_mdict_set(d, S("from"), S("fork child")));
  CHECK_OK(tdm_proxy_close(d));
  char done = 1;
  write_all(c->wfd, &done, 1);
}

static int dict_remote(void *arg, size_t size) {
  struct remote_arg ra;
  CHECK_EQ(size, sizeof ra);
  memcpy(&ra, arg, sizeof ra);
  tdm_manager *m;
  CHECK_OK(tdm_manager_connect(&m, ra.address, NULL));
  tdm_proxy *d;
  CHECK_OK(tdm_proxy_open(&d, m, &ra.token));
  CHECK_OK(tdm_mdict_set(d, S("from"), S("spawn child")));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
  return 0;
}

TEST(tokens_between_processes) {
  int to_child[2], from_child[2];
  CHECK(pipe(to_child) == 0 && pipe(from_child) == 0);
  g_manager = start_manager(NULL);
  struct token_ctx c = { to_child[0], from_child[1] };
  pid_t pid = tdm_test_fork(token_reader, &c);
  tdm_proxy *d, *l;
  CHECK_OK(tdm_manager_dict(g_manager, &d));
  CHECK_OK(tdm_manager_list(g_manager, &l));
  tdm_token t, tl;
  tdm_proxy_token(d, &t);
  tdm_proxy_token(l, &tl);
  CHECK_EQ(t.type, TDM_MDICT);
  CHECK_EQ(tl.type, TDM_MLIST);
  CHECK_EQ(t.reserved, 0);
  CHECK(t.instance == tl.instance);
  CHECK(t.id != tl.id);

  /* To a fork child through a pipe. */
  write_all(to_child[1], &t, sizeof t);
  char done = 0;
  read_all(from_child[0], &done, 1);
  tdm_test_wait_ok(pid);
  dict_expect(d, "from", "fork child");

  /* To a spawn child, with the address. */
  struct remote_arg ra = { 0 };
  snprintf(ra.address, sizeof ra.address, "%s", tdm_manager_address(g_manager));
  ra.token = t;
  tdm_process_options po = { .start = TDM_START_SPAWN };
  tdm_process *child;
  CHECK_OK(tdm_process_start(&child, dict_remote, &ra, sizeof ra, &po));
  CHECK_OK(tdm_process_join(child, LONG));
  int code = -1;
  CHECK_OK(tdm_process_exitcode(child, &code));
  CHECK_EQ(code, 0);
  CHECK_OK(tdm_process_close(child));
  dict_expect(d, "from", "spawn child");

  /* A second proxy of the same object, here. */
  tdm_proxy *d2;
  CHECK_OK(tdm_proxy_open(&d2, g_manager, &t));
  tdm_token t2;
  tdm_proxy_token(d2, &t2);
  CHECK(memcmp(&t, &t2, sizeof t) == 0);
  dict_expect(d2, "from", "spawn child");

  /* Tokens that name nothing: an unknown type, another manager run. */
  tdm_proxy *p = NULL;
  tdm_token bogus = t;
  bogus.type = 777;
  CHECK_ERR(tdm_proxy_open(&p, g_manager, &bogus), -EINVAL);
  bogus = t;
  bogus.instance ^= 0x5a5a5a5a5a5a5a5aULL;
  CHECK_ERR(tdm_proxy_open(&p, g_manager, &bogus), -ESTALE);
  bogus = t;
  bogus.id += 1000000;
  CHECK_ERR(tdm_proxy_open(&p, g_manager, &bogus), -ESTALE);
  tdm_manager *other = start_manager(NULL);
  tdm_proxy *od;
  CHECK_OK(tdm_manager_dict(other, &od));
  tdm_token ot;
  tdm_proxy_token(od, &ot);
  CHECK(ot.instance != t.instance);
  CHECK_ERR(tdm_proxy_open(&p, g_manager, &ot), -ESTALE);
  CHECK(p == NULL);
  CHECK_OK(tdm_proxy_close(od));
  CHECK_OK(tdm_manager_close(other));

  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(d2));
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_manager_close(g_manager));
  close(to_child[0]);
  close(to_child[1]);
  close(from_child[0]);
  close(from_child[1]);
}

TEST(references_and_stale_tokens) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *d, *d2;
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_mdict_set(d, S("k"), S("v")));
  tdm_token t;
  tdm_proxy_token(d, &t);
  /* Two references: the object lives while either does. */
  CHECK_OK(tdm_proxy_open(&d2, m, &t));
  CHECK_OK(tdm_proxy_close(d));
  dict_expect(d2, "k", "v");
  CHECK_OK(tdm_proxy_close(d2));
  tdm_proxy *p = NULL;
  CHECK_ERR(tdm_proxy_open(&p, m, &t), -ESTALE);
  CHECK(p == NULL);

  /* A condition keeps its lock alive. */
  tdm_proxy *l, *c;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_condition(m, l, &c));
  tdm_token tl;
  tdm_proxy_token(l, &tl);
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_proxy_open(&l, m, &tl));
  CHECK_OK(tdm_mlock_acquire(l, 0));
  CHECK_ERR(tdm_mlock_acquire(c, 0), -ETIMEDOUT); /* the same lock */
  CHECK_OK(tdm_mlock_release(l));
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_proxy_close(c));
  CHECK_ERR(tdm_proxy_open(&p, m, &tl), -ESTALE);

  /* Every type goes away with its last proxy. */
  for (int i = 0; i < 12; i++) {
    tdm_proxy *o = NULL;
    switch (i) {
    case 0:
      CHECK_OK(tdm_manager_dict(m, &o));
      break;
    case 1:
      CHECK_OK(tdm_manager_list(m, &o));
      break;
    case 2:
      CHECK_OK(tdm_manager_queue(m, 0, true, &o));
      break;
    case 3:
      CHECK_OK(tdm_manager_lock(m, &o));
      break;
    case 4:
      CHECK_OK(tdm_manager_rlock(m, &o));
      break;
    case 5:
      CHECK_OK(tdm_manager_semaphore(m, 1, true, &o));
      break;
    case 6:
      CHECK_OK(tdm_manager_event(m, &o));
      break;
    case 7:
      CHECK_OK(tdm_manager_condition(m, NULL, &o));
      break;
    case 8:
      CHECK_OK(tdm_manager_barrier(m, 2, &o));
      break;
    case 9:
      CHECK_OK(tdm_manager_value_int(m, 1, &o));
      break;
    case 10:
      CHECK_OK(tdm_manager_value_float(m, 1, &o));
      break;
    case 11:
      CHECK_OK(tdm_manager_namespace(m, &o));
      break;
    }
    tdm_token ti;
    tdm_proxy_token(o, &ti);
    CHECK_EQ(ti.type, tdm_proxy_type(o));
    CHECK_OK(tdm_proxy_close(o));
    CHECK_ERR(tdm_proxy_open(&p, m, &ti), -ESTALE);
  }
  CHECK_OK(tdm_manager_close(m));
}

TEST(wrong_type) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l, *d, *q, *vi, *vf, *ns, *e;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_manager_queue(m, 0, false, &q));
  CHECK_OK(tdm_manager_value_int(m, 0, &vi));
  CHECK_OK(tdm_manager_value_float(m, 0, &vf));
  CHECK_OK(tdm_manager_namespace(m, &ns));
  CHECK_OK(tdm_manager_event(m, &e));
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mqueue_put(l, S("x"), 0), TDM_ETYPE);
  CHECK_ERR(tdm_mqueue_get(l, &v, &n, 0), TDM_ETYPE);
  CHECK_ERR(tdm_mdict_get(q, S("k"), &v, &n), TDM_ETYPE);
  CHECK_ERR(tdm_mdict_set(l, S("k"), S("v")), TDM_ETYPE);
  CHECK_ERR(tdm_mlist_append(d, S("x")), TDM_ETYPE);
  CHECK_ERR(tdm_mlock_acquire(d, 0), TDM_ETYPE);
  CHECK_ERR(tdm_mlock_release(e), TDM_ETYPE);
  CHECK_ERR(tdm_msem_acquire(l, 0), TDM_ETYPE);
  CHECK_ERR(tdm_mevent_set(l), TDM_ETYPE);
  CHECK_ERR(tdm_mcond_wait(l, 0), TDM_ETYPE); /* a lock is not a condition */
  CHECK_ERR(tdm_mcond_notify(l, 1), TDM_ETYPE);
  CHECK_ERR(tdm_mbarrier_wait(e, 0, NULL), TDM_ETYPE);
  double dv = 0;
  CHECK_ERR(tdm_mvalue_get_float(vi, &dv), TDM_ETYPE);
  CHECK_ERR(tdm_mvalue_add_int(vf, 1, NULL), TDM_ETYPE);
  CHECK_ERR(tdm_mns_get(d, "x", &v, &n), TDM_ETYPE);
  CHECK_ERR(tdm_mdict_get(ns, S("x"), &v, &n), TDM_ETYPE);
  CHECK_ERR(tdm_proxy_call(d, 0, NULL, 0, NULL, NULL), TDM_ETYPE);
  CHECK(v == &sentinel && n == 77);
  /* The proxies still work for their own types. */
  CHECK_OK(tdm_mlock_acquire(l, 0));
  CHECK_OK(tdm_mlock_release(l));
  CHECK_OK(tdm_mdict_set(d, S("k"), S("v")));
  tdm_proxy *ps[] = { l, d, q, vi, vf, ns, e };
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
    CHECK_OK(tdm_proxy_close(ps[i]));
  CHECK_OK(tdm_manager_close(m));
}

/* ---- 8 processes x 10,000 increments under a manager lock ------------------------------------ */

#define INCREMENTERS 8
#define INCREMENTS   10000

struct incr_ctx {
  tdm_proxy *l, *v;
  struct board *b;
};

static void incrementer(void *arg) {
  struct incr_ctx *c = arg;
  for (int i = 0; i < INCREMENTS; i++) {
    CHECK_OK(tdm_mlock_acquire(c->l, LONG));
    int64_t x = value_int(c->v);
    CHECK_OK(tdm_mvalue_set_int(c->v, x + 1));
    c->b->plain++; /* not atomic: only the lock protects it */
    CHECK_OK(tdm_mlock_release(c->l));
  }
}

TEST_T(lock_protected_increments, 600) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l, *v;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_value_int(m, 0, &v));
  struct incr_ctx c = { l, v, b };
  pid_t pids[INCREMENTERS];
  for (int i = 0; i < INCREMENTERS; i++)
    pids[i] = tdm_test_fork(incrementer, &c);
  for (int i = 0; i < INCREMENTERS; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(value_int(v), INCREMENTERS * INCREMENTS);
  CHECK_EQ(b->plain, INCREMENTERS * INCREMENTS);
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_proxy_close(v));
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* ---- Remote managers over TCP ---------------------------------------------------------------- */

struct connect_ctx {
  const char *address;
  const char *key; /* NULL: none */
  int expect;
  tdm_token token;
};

/* A fork child that connects on its own (not through the inherited handle). */
static void tcp_client(void *arg) {
  struct connect_ctx *c = arg;
  tdm_manager_options o = { .authkey = c->key, .authkey_len = c->key ? strlen(c->key) : 0 };
  tdm_manager *m = NULL;
  CHECK_ERR(tdm_manager_connect(&m, c->address, &o), c->expect);
  if (c->expect != 0) {
    CHECK(m == NULL);
    return;
  }
  tdm_proxy *d;
  CHECK_OK(tdm_proxy_open(&d, m, &c->token));
  CHECK_OK(tdm_mdict_set(d, S("remote"), S("was here")));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
}

TEST_T(remote_tcp, 120) {
  warm_up();
  int fds0 = tdm_test_count_fds();
  tdm_manager *m = NULL;
  /* TCP needs a key. */
  tdm_manager_options o = { .address = "tcp:127.0.0.1:0" };
  CHECK_ERR(tdm_manager_start(&m, &o), -EINVAL);
  CHECK(m == NULL);
  CHECK_EQ(tdm_test_count_fds(), fds0);
  o.authkey = "tcp secret";
  o.authkey_len = 10;
  m = start_manager(&o);
  const char *a = tdm_manager_address(m);
  CHECK(strncmp(a, "tcp:127.0.0.1:", 14) == 0);
  CHECK(atoi(a + 14) > 0);
  tdm_proxy *d;
  CHECK_OK(tdm_manager_dict(m, &d));
  struct connect_ctx c = { a, "tcp secret", 0, { 0 } };
  tdm_proxy_token(d, &c.token);
  pid_t pid = tdm_test_fork(tcp_client, &c);
  tdm_test_wait_ok(pid);
  dict_expect(d, "remote", "was here");
  /* A wrong key, a key one byte short. */
  c.key = "tcp secreT";
  c.expect = TDM_EAUTH;
  tdm_test_wait_ok(tdm_test_fork(tcp_client, &c));
  c.key = "tcp secre";
  tdm_test_wait_ok(tdm_test_fork(tcp_client, &c));
  /* No key over TCP: refused before connecting (see tdm_manager_connect). */
  c.key = NULL;
  c.expect = -EINVAL;
  tdm_test_wait_ok(tdm_test_fork(tcp_client, &c));
  /* The server still serves the right key. */
  c.key = "tcp secret";
  c.expect = 0;
  CHECK_OK(tdm_mdict_delete(d, S("remote")));
  tdm_test_wait_ok(tdm_test_fork(tcp_client, &c));
  dict_expect(d, "remote", "was here");
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

TEST(unix_keys_must_match) {
  /* A manager with a key, a client without; a manager without, a client with one. */
  tdm_manager_options with = { .authkey = "k", .authkey_len = 1 };
  tdm_manager *m = start_manager(&with);
  tdm_manager *c = NULL;
  CHECK_ERR(tdm_manager_connect(&c, tdm_manager_address(m), NULL), TDM_EAUTH);
  tdm_manager_options wrong = { .authkey = "j", .authkey_len = 1 };
  CHECK_ERR(tdm_manager_connect(&c, tdm_manager_address(m), &wrong), TDM_EAUTH);
  CHECK(c == NULL);
  CHECK_OK(tdm_manager_connect(&c, tdm_manager_address(m), &with));
  manager_serves(c);
  CHECK_OK(tdm_manager_close(c));
  CHECK_OK(tdm_manager_close(m));
  m = start_manager(NULL);
  c = NULL;
  CHECK_ERR(tdm_manager_connect(&c, tdm_manager_address(m), &with), TDM_EAUTH);
  CHECK(c == NULL);
  CHECK_OK(tdm_manager_connect(&c, tdm_manager_address(m), NULL));
  manager_serves(c);
  CHECK_OK(tdm_manager_close(c));
  /* Closing a connected handle leaves the server running. */
  manager_serves(m);
  CHECK_OK(tdm_manager_close(m));
}

/* tdm_manager_serve() in a child: the other terminal of a remote manager. */
static void ready_to_pipe(const char *address, void *ud) {
  int fd = *(int *)ud;
  char buf[256] = { 0 };
  snprintf(buf, sizeof buf, "%s", address);
  write_all(fd, buf, sizeof buf);
}

static void serve_child(void *arg) {
  int *fd = arg;
  tdm_manager_options o = { .address = "tcp:127.0.0.1:0",
                            .authkey = "served",
                            .authkey_len = 6,
                            .ready = ready_to_pipe,
                            .ready_ud = fd };
  CHECK_OK(tdm_manager_serve(&o));
}

TEST_T(serve_in_a_process, 120) {
  int p[2];
  CHECK(pipe(p) == 0);
  pid_t server = tdm_test_fork(serve_child, &p[1]);
  close(p[1]);
  char address[256];
  read_all(p[0], address, sizeof address);
  close(p[0]);
  CHECK(strncmp(address, "tcp:127.0.0.1:", 14) == 0);
  CHECK(atoi(address + 14) > 0);
  tdm_manager_options o = { .authkey = "served", .authkey_len = 6 };
  tdm_manager *m;
  CHECK_OK(tdm_manager_connect(&m, address, &o));
  CHECK_EQ(tdm_manager_pid(m), server);
  manager_serves(m);
  tdm_manager *bad = NULL;
  tdm_manager_options wrong = { .authkey = "serveD", .authkey_len = 6 };
  CHECK_ERR(tdm_manager_connect(&bad, address, &wrong), TDM_EAUTH);
  CHECK_ERR(tdm_manager_connect(&bad, address, NULL), -EINVAL);
  CHECK(bad == NULL);
  /* A client's shutdown ends tdm_manager_serve() with 0. */
  CHECK_OK(tdm_manager_shutdown(m, LONG));
  tdm_test_wait_ok(server);
  tdm_proxy *d = NULL;
  CHECK_ERR(tdm_manager_dict(m, &d), TDM_EMANAGER);
  CHECK_OK(tdm_manager_close(m));
}

/* A server out of descriptors: a client that connects then waits in the listener's backlog,
 * the server goes on serving the clients it has, and takes the waiting one as soon as a
 * descriptor is free. */
static void serve_few_fds_child(void *arg) {
  int *fd = arg;
  /* Room for the listener and two connections, nothing more: the limit goes just past the
   * third free descriptor number (new descriptors take the lowest free numbers). */
  int free_seen = 0, limit = 0;
  for (int k = 0; free_seen < 3; k++) {
    if (fcntl(k, F_GETFD) < 0) free_seen++;
    limit = k + 1;
  }
  struct rlimit rl = { (rlim_t)limit, (rlim_t)limit };
  CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  tdm_manager_options o = { .ready = ready_to_pipe, .ready_ud = fd };
  CHECK_OK(tdm_manager_serve(&o));
}

static void late_client_child(void *arg) {
  int *p = arg; /* p[0]: "go" from the parent; p[1]: the outcome back */
  char address[256];
  read_all(p[0], address, sizeof address);
  tdm_manager_options o = { .connect_timeout = LONG };
  tdm_manager *m;
  int rc = tdm_manager_connect(&m, address, &o);
  tdm_proxy *v = NULL;
  if (rc == 0) rc = tdm_manager_value_int(m, 7, &v);
  write_all(p[1], &rc, sizeof rc);
  if (v != NULL) tdm_proxy_close(v);
  if (m != NULL && rc == 0) tdm_manager_close(m);
}

TEST_T(server_out_of_descriptors, 120) {
  int ready[2], go[2], back[2];
  CHECK(pipe(ready) == 0 && pipe(go) == 0 && pipe(back) == 0);
  pid_t server = tdm_test_fork(serve_few_fds_child, &ready[1]);
  int late_fds[2] = { go[0], back[1] };
  pid_t late = tdm_test_fork(late_client_child, late_fds);
  close(ready[1]);
  close(go[0]);
  close(back[1]);
  char address[256];
  read_all(ready[0], address, sizeof address);
  tdm_manager *m1, *m2;
  CHECK_OK(tdm_manager_connect(&m1, address, NULL));
  CHECK_OK(tdm_manager_connect(&m2, address, NULL));
  write_all(go[1], address, sizeof address);
  /* The late client cannot be accepted: it has no answer, however long we look (this only
   * waits; it assumes nothing about speed). */
  struct pollfd pf = { back[0], POLLIN, 0 };
  CHECK_EQ(poll(&pf, 1, 300), 0);
  tdm_proxy *d;
  CHECK_OK(tdm_manager_dict(m2, &d));
  CHECK_OK(tdm_mdict_set(d, S("still"), S("served")));
  CHECK_OK(tdm_proxy_close(d));
  /* A descriptor frees: the late client gets in and is served. */
  CHECK_OK(tdm_manager_close(m1));
  int rc = -1;
  read_all(back[0], &rc, sizeof rc);
  CHECK_OK(rc);
  tdm_test_wait_ok(late);
  CHECK_OK(tdm_manager_shutdown(m2, LONG));
  CHECK_OK(tdm_manager_close(m2));
  tdm_test_wait_ok(server);
  close(ready[0]);
  close(go[1]);
  close(back[0]);
}

/* ---- A manager killed, then restarted at the same address ------------------------------------ */

struct killed_ctx {
  tdm_proxy *q, *d;
  struct board *b;
};

static void blocked_getter(void *arg) {
  struct killed_ctx *c = arg;
  atomic_store(&c->b->arrived, 1);
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mqueue_get(c->q, &v, &n, TDM_FOREVER), TDM_EMANAGER);
  CHECK(v == &sentinel && n == 77);
}

static void busy_setter(void *arg) {
  struct killed_ctx *c = arg;
  int rc;
  for (int i = 0;; i++) {
    char k[16];
    snprintf(k, sizeof k, "%d", i % 100);
    rc = tdm_mdict_set(c->d, S(k), S("busy"));
    if (rc != 0) break;
    atomic_fetch_add(&c->b->count, 1);
  }
  CHECK_ERR(rc, TDM_EMANAGER);
}

struct thread_get {
  tdm_proxy *q;
  _Atomic int started;
  int32_t tid;
  int rc;
};

static void thread_getter(void *arg) {
  struct thread_get *t = arg;
  t->tid = tdm_test_gettid();
  atomic_store(&t->started, 1);
  void *v = NULL;
  size_t n;
  t->rc = tdm_mqueue_get(t->q, &v, &n, TDM_FOREVER);
  if (t->rc == 0) tdm_free(v);
}

TEST_T(manager_killed_then_restarted, 120) {
  struct board *b = board_new();
  struct sockdir sd;
  sockdir_make(&sd);
  tdm_manager_options o = { .address = sd.address };
  tdm_manager *m = start_manager(&o);
  CHECK(strcmp(tdm_manager_address(m), sd.address) == 0);
  pid_t server = tdm_manager_pid(m);
  tdm_proxy *q, *d, *l;
  CHECK_OK(tdm_manager_queue(m, 0, false, &q));
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_mdict_set(d, S("before"), S("1")));
  tdm_token dt;
  tdm_proxy_token(d, &dt);
  struct killed_ctx c = { q, d, b };
  pid_t getter = tdm_test_fork(blocked_getter, &c);
  pid_t busy = tdm_test_fork(busy_setter, &c);
  /* And a thread of this process, blocked too. */
  struct thread_get tg = { .q = q, .rc = 1 };
  tdm_thread *t = tdm_test_thread(thread_getter, &tg);
  CHECK_OK(tdm_mlock_acquire(l, 0));
  WAIT_UNTIL(atomic_load(&b->arrived) == 1 && tdm_test_process_sleeping(getter));
  WAIT_UNTIL(atomic_load(&tg.started) == 1 && tdm_test_thread_sleeping(tg.tid));
  WAIT_UNTIL(atomic_load(&b->count) >= 100);

  CHECK(kill(server, SIGKILL) == 0);
  /* Every waiter and every caller gets TDM_EMANAGER; nothing hangs. */
  tdm_test_wait_ok(getter);
  tdm_test_wait_ok(busy);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  CHECK_ERR(tg.rc, TDM_EMANAGER);
  CHECK_ERR(tdm_mdict_set(d, S("after"), S("2")), TDM_EMANAGER);
  CHECK_ERR(tdm_mlock_acquire(l, TDM_FOREVER), TDM_EMANAGER);
  CHECK_ERR(tdm_mlock_release(l), TDM_EMANAGER);
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mqueue_get(q, &v, &n, TDM_FOREVER), TDM_EMANAGER);
  CHECK(v == &sentinel && n == 77);
  tdm_proxy *p = NULL;
  CHECK_ERR(tdm_manager_dict(m, &p), TDM_EMANAGER);
  CHECK_ERR(tdm_proxy_open(&p, m, &dt), TDM_EMANAGER);
  CHECK(p == NULL);
  CHECK_OK(tdm_proxy_close(l)); /* the reference went with the manager */

  /* A new manager at the same address (the killed one could not remove its socket). */
  unlink(sd.path);
  tdm_manager *m2 = start_manager(&o);
  CHECK(tdm_manager_pid(m2) != server);
  /* The old handle reaches it again; its old proxies name objects of the dead run. */
  CHECK_ERR(tdm_mdict_get(d, S("before"), &v, &n), -ESTALE);
  CHECK_ERR(tdm_mqueue_put(q, S("x"), 0), -ESTALE);
  CHECK_ERR(tdm_proxy_open(&p, m, &dt), -ESTALE);
  CHECK_ERR(tdm_proxy_open(&p, m2, &dt), -ESTALE);
  CHECK(v == &sentinel && n == 77);
  /* New objects work, from both handles. */
  tdm_proxy *nd, *nd2;
  CHECK_OK(tdm_manager_dict(m, &nd));
  CHECK_OK(tdm_mdict_set(nd, S("after"), S("restart")));
  tdm_token nt;
  tdm_proxy_token(nd, &nt);
  CHECK(nt.instance != dt.instance);
  CHECK_OK(tdm_proxy_open(&nd2, m2, &nt));
  dict_expect(nd2, "after", "restart");
  CHECK_OK(tdm_proxy_close(nd));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(q));
  /* Closing the old handle (whose server died) leaves the new server to its own handle. */
  CHECK_OK(tdm_manager_close(m));
  CHECK(tdm_test_process_gone(server));
  dict_expect(nd2, "after", "restart");
  CHECK_OK(tdm_proxy_close(nd2));
  CHECK_OK(tdm_manager_close(m2));
  sockdir_remove(&sd);
  board_free(b);
}

/* ---- A client killed while holding a lock ---------------------------------------------------- */

struct doomed_ctx {
  tdm_proxy *l, *r;
  tdm_manager *m;
  int wfd;
};

/* Takes the lock and the rlock, makes an object only it refers to, reports its token, hangs. */
static void doomed_client(void *arg) {
  struct doomed_ctx *c = arg;
  CHECK_OK(tdm_mlock_acquire(c->l, LONG));
  CHECK_OK(tdm_mlock_acquire(c->r, LONG));
  CHECK_OK(tdm_mlock_acquire(c->r, LONG));
  tdm_proxy *d;
  CHECK_OK(tdm_manager_dict(c->m, &d));
  CHECK_OK(tdm_mdict_set(d, S("owner"), S("doomed")));
  tdm_token t;
  tdm_proxy_token(d, &t);
  write_all(c->wfd, &t, sizeof t);
  for (;;)
    pause();
}

struct thread_acq {
  tdm_proxy *l;
  _Atomic int started;
  int32_t tid;
  int rc, rc_again, rc_release;
};

/* Waits for the lock; once it has it, checks that it holds it and gives it back. */
static void thread_acquirer(void *arg) {
  struct thread_acq *t = arg;
  t->tid = tdm_test_gettid();
  atomic_store(&t->started, 1);
  t->rc = tdm_mlock_acquire(t->l, LONG);
  t->rc_again = tdm_mlock_acquire(t->l, 0);
  t->rc_release = tdm_mlock_release(t->l);
}

TEST(client_killed_holding_lock) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l, *r;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_rlock(m, &r));
  int p[2];
  CHECK(pipe(p) == 0);
  struct doomed_ctx c = { l, r, m, p[1] };
  pid_t doomed = tdm_test_fork(doomed_client, &c);
  close(p[1]);
  tdm_token t;
  read_all(p[0], &t, sizeof t);
  close(p[0]);
  CHECK_EQ(t.type, TDM_MDICT);
  /* A thread of ours waits for the lock when its owner dies. */
  struct thread_acq ta = { .l = l, .rc = 1 };
  tdm_thread *th = tdm_test_thread(thread_acquirer, &ta);
  WAIT_UNTIL(atomic_load(&ta.started) == 1 && tdm_test_thread_sleeping(ta.tid));
  CHECK_ERR(tdm_mlock_acquire(r, 0), -ETIMEDOUT);
  tdm_test_kill_and_reap(doomed);
  CHECK_OK(tdm_thread_join(th, TDM_FOREVER));
  CHECK_ERR(ta.rc, -EOWNERDEAD);
  /* The thread held the lock then. */
  CHECK_ERR(ta.rc_again, -ETIMEDOUT);
  CHECK_OK(ta.rc_release);
  CHECK_OK(tdm_mlock_acquire(l, 0));
  CHECK_OK(tdm_mlock_release(l));
  /* The rlock: the next acquirer gets it, one level, with -EOWNERDEAD. */
  CHECK_ERR(tdm_mlock_acquire(r, LONG), -EOWNERDEAD);
  CHECK_OK(tdm_mlock_release(r));
  CHECK_ERR(tdm_mlock_release(r), -EPERM);
  CHECK_OK(tdm_mlock_acquire(r, 0));
  CHECK_OK(tdm_mlock_release(r));
  /* Its references were dropped: the object only it referred to is gone. */
  tdm_proxy *d = NULL;
  CHECK_ERR(tdm_proxy_open(&d, m, &t), -ESTALE);
  CHECK(d == NULL);
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_proxy_close(r));
  CHECK_OK(tdm_manager_close(m));
}

/* ---- Many clients; clients that stall -------------------------------------------------------- */

#define CLIENTS    64
#define CLIENT_OPS 200

struct many_ctx {
  const char *address;
  tdm_token v, d;
  int id;
};

static void many_client(void *arg) {
  struct many_ctx *c = arg;
  tdm_manager_options o = { .authkey = "many", .authkey_len = 4 };
  tdm_manager *m;
  CHECK_OK(tdm_manager_connect(&m, c->address, &o));
  tdm_proxy *v, *d;
  CHECK_OK(tdm_proxy_open(&v, m, &c->v));
  CHECK_OK(tdm_proxy_open(&d, m, &c->d));
  for (int i = 0; i < CLIENT_OPS; i++) {
    CHECK_OK(tdm_mvalue_add_int(v, 1, NULL));
    char k[32];
    snprintf(k, sizeof k, "%d/%d", c->id, i);
    CHECK_OK(tdm_mdict_set(d, S(k), &i, sizeof i));
  }
  CHECK_OK(tdm_proxy_close(v));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
}

TEST_T(many_clients, 240) {
  tdm_manager_options o = { .authkey = "many", .authkey_len = 4 };
  tdm_manager *m = start_manager(&o);
  tdm_proxy *v, *d;
  CHECK_OK(tdm_manager_value_int(m, 0, &v));
  CHECK_OK(tdm_manager_dict(m, &d));
  static struct many_ctx ctx[CLIENTS];
  pid_t pids[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    ctx[i].address = tdm_manager_address(m);
    tdm_proxy_token(v, &ctx[i].v);
    tdm_proxy_token(d, &ctx[i].d);
    ctx[i].id = i;
    pids[i] = tdm_test_fork(many_client, &ctx[i]);
  }
  for (int i = 0; i < CLIENTS; i++)
    tdm_test_wait_ok(pids[i]);
  CHECK_EQ(value_int(v), CLIENTS * CLIENT_OPS);
  CHECK_EQ(dict_len(d), CLIENTS * CLIENT_OPS);
  for (int i = 0; i < CLIENTS; i += 7) {
    char k[32];
    snprintf(k, sizeof k, "%d/%d", i, CLIENT_OPS - 1);
    void *val = NULL;
    size_t n = 0;
    CHECK_OK(tdm_mdict_get(d, S(k), &val, &n));
    CHECK_EQ(n, sizeof(int));
    int x;
    memcpy(&x, val, sizeof x);
    CHECK_EQ(x, CLIENT_OPS - 1);
    tdm_free(val);
  }
  CHECK_OK(tdm_proxy_close(v));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
}

struct stall_ctx {
  const char *address;
  tdm_token d;
};

static void unstalled_client(void *arg) {
  struct stall_ctx *c = arg;
  tdm_manager_options o = { .authkey = "k", .authkey_len = 1 };
  tdm_manager *m;
  CHECK_OK(tdm_manager_connect(&m, c->address, &o));
  tdm_proxy *d;
  CHECK_OK(tdm_proxy_open(&d, m, &c->d));
  for (int i = 0; i < 100; i++)
    CHECK_OK(tdm_mdict_set(d, S("child"), &i, sizeof i));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
}

TEST_T(stalled_clients_do_not_block_others, 120) {
  tdm_manager_options o = { .authkey = "k", .authkey_len = 1 };
  tdm_manager *m = start_manager(&o);
  const char *a = tdm_manager_address(m);
  tdm_proxy *d;
  CHECK_OK(tdm_manager_dict(m, &d));
  /* Connects and says nothing: stalls in the handshake. */
  int mute = raw_unix_client(a, NULL, 0);
  /* Stalls in the middle of a frame header of the handshake. */
  unsigned char h[16];
  frame_header(h, 32);
  int half = raw_unix_client(a, h, 5);
  /* Authenticated, then stalls in the middle of a request. */
  tdm_conn_options co = { .authkey = "k", .authkey_len = 1 };
  tdm_conn *stuck;
  CHECK_OK(tdm_client_connect(&stuck, a, &co));
  frame_header(h, 100);
  raw_send(tdm_conn_fd(stuck), h, sizeof h);
  raw_send(tdm_conn_fd(stuck), "0123456789", 10);

  /* Everyone else is served: this handle, a new handle, a new process. */
  for (int i = 0; i < 50; i++)
    CHECK_OK(tdm_mdict_set(d, S("parent"), &i, sizeof i));
  tdm_manager *m2;
  CHECK_OK(tdm_manager_connect(&m2, a, &o));
  manager_serves(m2);
  struct stall_ctx c = { a, { 0 } };
  tdm_proxy_token(d, &c.d);
  tdm_test_wait_ok(tdm_test_fork(unstalled_client, &c));
  CHECK_EQ(dict_len(d), 2);

  close(mute);
  close(half);
  CHECK_OK(tdm_conn_close(stuck));
  manager_serves(m2);
  CHECK_OK(tdm_manager_close(m2));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(m));
}

/* ---- Bad input ------------------------------------------------------------------------------- */

/* Receives what the server has sent so far (its greeting, if it sends one). */
static void drain(tdm_conn *c) {
  for (;;) {
    void *msg;
    size_t len;
    int rc = tdm_conn_recv(c, &msg, &len, TDM_MS(200));
    if (rc != 0) {
      CHECK_ERR(rc, -ETIMEDOUT);
      return;
    }
    tdm_free(msg);
  }
}

/* Reads until the server closes the connection (a few error replies may come first). */
static void expect_disconnect(tdm_conn *c) {
  for (int i = 0; i < 16; i++) {
    void *msg;
    size_t len;
    int rc = tdm_conn_recv(c, &msg, &len, LONG);
    if (rc == TDM_EEOF || rc == -ECONNRESET) return;
    CHECK_OK(rc);
    tdm_free(msg);
  }
  tdm_test_fail(__FILE__, __LINE__, "the server kept a client that broke the framing");
}

TEST_T(garbage_and_oversized_messages, 120) {
  tdm_manager_options o = { .authkey = "key", .authkey_len = 3 };
  tdm_manager *m = start_manager(&o);
  const char *a = tdm_manager_address(m);
  tdm_conn_options co = { .authkey = "key", .authkey_len = 3 };

  /* Well-framed garbage: an error reply, or the door. */
  unsigned char junk[256];
  uint64_t seed = 0x9e3779b97f4a7c15ULL;
  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (unsigned char)tdm_test_rand(&seed);
  struct {
    const void *p;
    size_t n;
  } garbage[] = { { "", 0 },
                  { "G", 1 },
                  { "GARBAGE GARBAGE", 15 },
                  { junk, 8 },
                  { junk, 24 },
                  { junk, sizeof junk },
                  { "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 12 } };
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
    tdm_conn *c;
    CHECK_OK(tdm_client_connect(&c, a, &co));
    drain(c);
    CHECK_OK(tdm_conn_send(c, garbage[i].p, garbage[i].n, LONG));
    void *msg;
    size_t len;
    int rc = tdm_conn_recv(c, &msg, &len, LONG);
    if (rc == 0)
      tdm_free(msg);
    else if (rc != TDM_EEOF && rc != -ECONNRESET)
      tdm_test_fail(__FILE__, __LINE__, "garbage %zu: no reply and no disconnect: %s", i,
                    tdm_err_name(rc));
    CHECK_OK(tdm_conn_close(c));
    manager_serves(m);
  }

  /* A frame announcing 2^40 bytes: beyond max_message, the server drops the client. */
  tdm_conn *c;
  CHECK_OK(tdm_client_connect(&c, a, &co));
  drain(c);
  /* The header and some bytes in one send: the server may hang up as soon as it has read the
   * header, and a second send could find the socket closed. */
  unsigned char h[16 + 64];
  frame_header(h, UINT64_C(1) << 40);
  memcpy(h + 16, junk, 64);
  raw_send(tdm_conn_fd(c), h, sizeof h);
  expect_disconnect(c);
  CHECK_OK(tdm_conn_close(c));
  manager_serves(m);

  /* Garbage without a handshake. */
  static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  int s = raw_unix_client(a, http, sizeof http - 1);
  raw_expect_closed(s);
  close(s);
  manager_serves(m);
  CHECK_OK(tdm_manager_close(m));
}

TEST_T(max_message, 120) {
  tdm_manager_options o = { .max_message = 4096 };
  tdm_manager *m = start_manager(&o);
  tdm_proxy *d, *l;
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_manager_list(m, &l));
  /* A request too long for the limit. */
  char big[10000];
  memset(big, 'b', sizeof big);
  CHECK_ERR(tdm_mdict_set(d, S("k"), big, sizeof big), -EMSGSIZE);
  CHECK_ERR(tdm_mlist_append(l, big, sizeof big), -EMSGSIZE);
  CHECK_EQ(dict_len(d), 0);
  /* A reply too long for it: items that fit one by one, a slice of all that does not. */
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_mlist_append(l, big, 2000));
  tdm_bytes_list *s = NULL;
  CHECK_ERR(tdm_mlist_slice(l, 0, 3, &s), -EMSGSIZE);
  CHECK(s == NULL);
  /* The handle still works after both. */
  void *v = NULL;
  size_t n = 0;
  CHECK_OK(tdm_mlist_get(l, 2, &v, &n));
  CHECK_EQ(n, 2000);
  tdm_free(v);
  CHECK_OK(tdm_mlist_slice(l, 0, 1, &s));
  CHECK_EQ(s->n, 1);
  tdm_free(s);

  /* A raw client whose frame is beyond the server's maximum is dropped. */
  tdm_conn *c;
  CHECK_OK(tdm_client_connect(&c, tdm_manager_address(m), NULL));
  drain(c);
  CHECK_OK(tdm_conn_send(c, big, sizeof big, LONG));
  expect_disconnect(c);
  CHECK_OK(tdm_conn_close(c));
  manager_serves(m);
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(l));
  CHECK_OK(tdm_manager_close(m));
}

struct shutdown_ctx {
  tdm_proxy *q;
};

static void shutdown_waiter(void *arg) {
  struct shutdown_ctx *c = arg;
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mqueue_get(c->q, &v, &n, TDM_FOREVER), TDM_EMANAGER);
  CHECK(v == &sentinel);
}

TEST(calls_after_shutdown) {
  tdm_manager *m = start_manager(NULL);
  pid_t server = tdm_manager_pid(m);
  tdm_proxy *q, *d;
  CHECK_OK(tdm_manager_queue(m, 0, false, &q));
  CHECK_OK(tdm_manager_dict(m, &d));
  struct shutdown_ctx c = { q };
  pid_t waiter = tdm_test_fork(shutdown_waiter, &c);
  WAIT_UNTIL(tdm_test_process_sleeping(waiter));
  tdm_manager *other;
  CHECK_OK(tdm_manager_connect(&other, tdm_manager_address(m), NULL));
  tdm_proxy *od;
  tdm_token t;
  tdm_proxy_token(d, &t);
  CHECK_OK(tdm_proxy_open(&od, other, &t));
  CHECK_OK(tdm_mdict_set(od, S("k"), S("v")));

  CHECK_OK(tdm_manager_shutdown(m, LONG));
  CHECK(tdm_test_process_gone(server));
  /* A waiting call is answered TDM_EMANAGER; later calls of every client too. */
  tdm_test_wait_ok(waiter);
  void *v = &sentinel;
  size_t n = 77;
  CHECK_ERR(tdm_mdict_get(d, S("k"), &v, &n), TDM_EMANAGER);
  CHECK_ERR(tdm_mdict_get(od, S("k"), &v, &n), TDM_EMANAGER);
  CHECK(v == &sentinel && n == 77);
  CHECK_ERR(tdm_mqueue_put(q, S("x"), 0), TDM_EMANAGER);
  tdm_proxy *p = NULL;
  CHECK_ERR(tdm_manager_dict(m, &p), TDM_EMANAGER);
  CHECK_ERR(tdm_manager_lock(other, &p), TDM_EMANAGER);
  CHECK_ERR(tdm_proxy_open(&p, m, &t), TDM_EMANAGER);
  CHECK(p == NULL);
  CHECK_ERR(tdm_manager_shutdown(m, LONG), TDM_EMANAGER);
  CHECK_ERR(tdm_manager_shutdown(other, LONG), TDM_EMANAGER);
  CHECK_OK(tdm_proxy_close(q));
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(od));
  CHECK_OK(tdm_manager_close(other));
  CHECK_OK(tdm_manager_close(m));
}

TEST(bad_options) {
  warm_up();
  int fds0 = tdm_test_count_fds();
  tdm_manager *m = NULL;
  CHECK_ERR(tdm_manager_start(NULL, NULL), -EINVAL);
  tdm_manager_options bad[] = {
    { .address = "tcp:127.0.0.1:0" },      /* TCP without a key */
    { .address = "tcp:0" },                /* the same */
    { .address = "bogus:1" },              /* not an address */
    { .address = "tcp:127.0.0.1" },        /* no port */
    { .authkey = NULL, .authkey_len = 3 }, /* a length without a key */
    { .start = (tdm_start_method)42 },     /* no such start method */
    { .types = NULL, .n_types = 2 },       /* no table */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = tdm_manager_start(&m, &bad[i]);
    if (rc != -EINVAL)
      tdm_test_fail(__FILE__, __LINE__, "bad options %zu: %s, expected -EINVAL", i,
                    tdm_err_name(rc));
    CHECK(m == NULL);
  }
  /* An address that is taken. */
  struct sockdir sd;
  sockdir_make(&sd);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un un = { .sun_family = AF_UNIX };
  snprintf(un.sun_path, sizeof un.sun_path, "%s", sd.path);
  CHECK(bind(s, (struct sockaddr *)&un, sizeof un) == 0);
  tdm_manager_options taken = { .address = sd.address };
  CHECK_ERR(tdm_manager_start(&m, &taken), -EADDRINUSE);
  CHECK(m == NULL);
  close(s);
  unlink(sd.path);

  /* Connect: malformed addresses, TCP without a key, nobody there. */
  CHECK_ERR(tdm_manager_connect(NULL, "unix:/x", NULL), -EINVAL);
  CHECK_ERR(tdm_manager_connect(&m, NULL, NULL), -EINVAL);
  CHECK_ERR(tdm_manager_connect(&m, "bogus", NULL), -EINVAL);
  CHECK_ERR(tdm_manager_connect(&m, "tcp:127.0.0.1:1", NULL), -EINVAL);
  CHECK_ERR(tdm_manager_connect(&m, sd.address, NULL), TDM_EMANAGER); /* no such socket */
  tdm_conn_options lo = { .authkey = "k", .authkey_len = 1 };
  tdm_listener *l;
  CHECK_OK(tdm_listener_open(&l, "tcp:127.0.0.1:0", &lo));
  char closed_port[64];
  snprintf(closed_port, sizeof closed_port, "%s", tdm_listener_address(l));
  tdm_listener_close(l);
  tdm_manager_options key = { .authkey = "k", .authkey_len = 1 };
  CHECK_ERR(tdm_manager_connect(&m, closed_port, &key), TDM_EMANAGER); /* refused */
  CHECK(m == NULL);
  sockdir_remove(&sd);

  /* NULL outputs and arguments. */
  tdm_manager *good = start_manager(NULL);
  CHECK_ERR(tdm_manager_dict(good, NULL), -EINVAL);
  CHECK_ERR(tdm_manager_queue(good, 0, false, NULL), -EINVAL);
  CHECK_ERR(tdm_manager_create(good, NULL, NULL, 0, &(tdm_proxy *){ NULL }), -EINVAL);
  tdm_proxy *d;
  CHECK_OK(tdm_manager_dict(good, &d));
  CHECK_ERR(tdm_mdict_set(d, NULL, 3, S("v")), -EINVAL);
  CHECK_ERR(tdm_proxy_open(&d, good, NULL), -EINVAL);
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_manager_close(good));
  CHECK_EQ(tdm_test_count_fds(), fds0);
}

/* ---- Threads of one process; fork inheritance ------------------------------------------------ */

struct blocker {
  tdm_proxy *p;
  _Atomic int started, done;
  int32_t tid;
  int rc;
  char got[16];
};

static void lock_blocker(void *arg) {
  struct blocker *b = arg;
  b->tid = tdm_test_gettid();
  atomic_store(&b->started, 1);
  b->rc = tdm_mlock_acquire(b->p, TDM_FOREVER);
  atomic_store(&b->done, 1);
}

static void get_blocker(void *arg) {
  struct blocker *b = arg;
  b->tid = tdm_test_gettid();
  atomic_store(&b->started, 1);
  void *v = NULL;
  size_t n = 0;
  b->rc = tdm_mqueue_get(b->p, &v, &n, TDM_FOREVER);
  if (b->rc == 0) {
    snprintf(b->got, sizeof b->got, "%.*s", (int)n, (char *)v);
    tdm_free(v);
  }
  atomic_store(&b->done, 1);
}

static void thread_adder(void *arg) {
  tdm_proxy *v = arg;
  for (int i = 0; i < 300; i++)
    CHECK_OK(tdm_mvalue_add_int(v, 1, NULL));
}

TEST_T(threads_share_a_handle, 120) {
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *l, *q, *d, *v;
  CHECK_OK(tdm_manager_lock(m, &l));
  CHECK_OK(tdm_manager_queue(m, 0, false, &q));
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_manager_value_int(m, 0, &v));
  CHECK_OK(tdm_mlock_acquire(l, 0));
  struct blocker lb = { .p = l, .rc = 1 }, qb = { .p = q, .rc = 1 };
  tdm_thread *t1 = tdm_test_thread(lock_blocker, &lb);
  tdm_thread *t2 = tdm_test_thread(get_blocker, &qb);
  WAIT_UNTIL(atomic_load(&lb.started) && tdm_test_thread_sleeping(lb.tid));
  WAIT_UNTIL(atomic_load(&qb.started) && tdm_test_thread_sleeping(qb.tid));
  /* Two threads wait in the server; this one is still served, as are new threads. */
  for (int i = 0; i < 100; i++) {
    char k[16];
    snprintf(k, sizeof k, "%d", i);
    CHECK_OK(tdm_mdict_set(d, S(k), S(k)));
  }
  CHECK_EQ(dict_len(d), 100);
  tdm_thread *adders[4];
  for (int i = 0; i < 4; i++)
    adders[i] = tdm_test_thread(thread_adder, v);
  for (int i = 0; i < 4; i++)
    CHECK_OK(tdm_thread_join(adders[i], TDM_FOREVER));
  CHECK_EQ(value_int(v), 1200);
  CHECK(!atomic_load(&lb.done) && !atomic_load(&qb.done));
  /* Release the waiters. */
  CHECK_OK(tdm_mqueue_put(q, S("wake"), 0));
  CHECK_OK(tdm_thread_join(t2, TDM_FOREVER));
  CHECK_OK(qb.rc);
  CHECK(strcmp(qb.got, "wake") == 0);
  CHECK(!atomic_load(&lb.done));
  CHECK_OK(tdm_mlock_release(l));
  WAIT_UNTIL(atomic_load(&lb.done));
  CHECK_OK(lb.rc);
  /* The thread took it; a plain lock may be released by anyone (before the thread ends, so that
   * nothing depends on what a thread's end does to a lock it holds). */
  CHECK_ERR(tdm_mlock_acquire(l, 0), -ETIMEDOUT);
  CHECK_OK(tdm_mlock_release(l));
  CHECK_OK(tdm_thread_join(t1, TDM_FOREVER));
  CHECK_OK(tdm_mlock_acquire(l, 0));
  CHECK_OK(tdm_mlock_release(l));
  tdm_proxy *ps[] = { l, q, d, v };
  for (size_t i = 0; i < 4; i++)
    CHECK_OK(tdm_proxy_close(ps[i]));
  CHECK_OK(tdm_manager_close(m));
}

struct inherit_ctx {
  tdm_proxy *d, *v;
  struct board *b;
};

static void inheriting_child(void *arg) {
  struct inherit_ctx *c = arg;
  /* The first call takes this process's own references. */
  dict_expect(c->d, "k", "parent");
  CHECK_EQ(value_int(c->v), 7);
  atomic_store(&c->b->flag, 1);
  WAIT_UNTIL(atomic_load(&c->b->flag) == 2); /* the parent closed its proxies */
  dict_expect(c->d, "k", "parent");
  CHECK_OK(tdm_mdict_set(c->d, S("k"), S("child")));
  CHECK_OK(tdm_mvalue_add_int(c->v, 1, NULL));
  CHECK_EQ(value_int(c->v), 8);
  atomic_store(&c->b->flag, 3);
  WAIT_UNTIL(atomic_load(&c->b->flag) == 4); /* the parent checked through a token */
}

TEST(fork_child_keeps_inherited_proxies) {
  struct board *b = board_new();
  tdm_manager *m = start_manager(NULL);
  tdm_proxy *d, *v;
  CHECK_OK(tdm_manager_dict(m, &d));
  CHECK_OK(tdm_manager_value_int(m, 7, &v));
  CHECK_OK(tdm_mdict_set(d, S("k"), S("parent")));
  tdm_token dt, vt;
  tdm_proxy_token(d, &dt);
  tdm_proxy_token(v, &vt);
  struct inherit_ctx c = { d, v, b };
  pid_t pid = tdm_test_fork(inheriting_child, &c);
  WAIT_UNTIL(atomic_load(&b->flag) == 1);
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(v));
  atomic_store(&b->flag, 2);
  WAIT_UNTIL(atomic_load(&b->flag) == 3);
  /* The objects live on the child's references: reach them again through their tokens. */
  CHECK_OK(tdm_proxy_open(&d, m, &dt));
  dict_expect(d, "k", "child");
  CHECK_OK(tdm_proxy_close(d));
  atomic_store(&b->flag, 4);
  tdm_test_wait_ok(pid);
  /* Once the child is gone, so are its references and the objects. */
  for (;;) {
    tdm_proxy *p = NULL;
    int rc = tdm_proxy_open(&p, m, &vt);
    if (rc == -ESTALE) break;
    CHECK_OK(rc);
    CHECK_OK(tdm_proxy_close(p));
    tdm_clock_sleep(TDM_MS(1));
  }
  CHECK_OK(tdm_manager_close(m));
  board_free(b);
}

/* A fork child that closes its inherited proxies and handle: the server goes on. */
static void closing_child(void *arg) {
  struct inherit_ctx *c = arg;
  CHECK_OK(tdm_mvalue_add_int(c->v, 1, NULL));
  CHECK_OK(tdm_proxy_close(c->d));
  CHECK_OK(tdm_proxy_close(c->v));
  CHECK_OK(tdm_manager_close(g_manager));
}

TEST(fork_child_closing_its_handle_leaves_the_server) {
  g_manager = start_manager(NULL);
  pid_t server = tdm_manager_pid(g_manager);
  tdm_proxy *d, *v;
  CHECK_OK(tdm_manager_dict(g_manager, &d));
  CHECK_OK(tdm_manager_value_int(g_manager, 0, &v));
  struct inherit_ctx c = { d, v, NULL };
  tdm_test_wait_ok(tdm_test_fork(closing_child, &c));
  CHECK(!tdm_test_process_gone(server));
  CHECK_EQ(value_int(v), 1);
  manager_serves(g_manager);
  CHECK_OK(tdm_proxy_close(d));
  CHECK_OK(tdm_proxy_close(v));
  CHECK_OK(tdm_manager_close(g_manager));
  CHECK(tdm_test_process_gone(server));
}

/* ---- Start methods --------------------------------------------------------------------------- */

static void start_method_child(void *arg) {
  tdm_proxy *d = arg;
  CHECK_OK(tdm_mdict_set(d, S("child"), S("here")));
}

TEST_T(start_methods, 180) {
  for (int i = 0; i < N_METHODS; i++) {
    tdm_manager_options o = { .start = methods[i] };
    tdm_manager *m = start_manager(&o);
    pid_t server = tdm_manager_pid(m);
    CHECK(server > 0 && server != getpid());
    CHECK(strncmp(tdm_manager_address(m), "unix:/", 6) == 0);
    tdm_proxy *d;
    CHECK_OK(tdm_manager_dict(m, &d));
    CHECK_OK(tdm_mdict_set(d, S("parent"), S("here")));
    tdm_test_wait_ok(tdm_test_fork(start_method_child, d));
    dict_expect(d, "child", "here");
    CHECK_OK(tdm_manager_shutdown(m, LONG));
    CHECK(tdm_test_process_gone(server));
    CHECK_ERR(tdm_mdict_set(d, S("late"), S("x")), TDM_EMANAGER);
    CHECK_OK(tdm_proxy_close(d));
    CHECK_OK(tdm_manager_close(m));

    /* Closing the handle that started it stops the server too. */
    m = start_manager(&o);
    server = tdm_manager_pid(m);
    manager_serves(m);
    CHECK_OK(tdm_manager_close(m));
    CHECK(tdm_test_process_gone(server));
  }
}
