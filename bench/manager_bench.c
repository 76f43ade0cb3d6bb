/*
 * manager_bench.c: tandem's manager (tandem/manager.h) against a bare Unix-socket round trip and
 * CPython's multiprocessing.Manager (bench/peers/cpython_manager.py).
 *
 * Every operation is one proxy call, a round trip: a client process sends a request to the
 * manager's server process and waits for its reply. Three calls, each from 1 client process and
 * from 8 at once:
 *
 *   dict-get   tdm_mdict_get() of one key whose value is 64 bytes (every client the same key);
 *              each reply is checked and freed.
 *   dict-set   tdm_mdict_set() of a 64-byte value that carries a sequence number, under a key of
 *              the client's own; afterwards each key must hold its client's last number.
 *   value-add  tdm_mvalue_add_int(v, 1, &new_value): one atomic add; afterwards the value must
 *              be the number of adds, so no update was lost.
 *
 * The manager is started once, at the suite's first run, by tdm_manager_start() with the
 * defaults (a process of its own, a private Unix socket, no key), and kept until the suite
 * ends, as a program keeps its manager. Each run makes a fresh object through it (untimed). The
 * clients are forked children (bench_party_start), and each makes a connection of its own, as a
 * process that was sent the address and a token would: tdm_manager_connect() to
 * tdm_manager_address(), tdm_proxy_open() of the object's token. Then it waits at the gate. The
 * clock starts when the gate opens and stops when the last client has made its last call: one
 * operation is one call, wall time / all clients' calls, so the rate shown beside a ratio is the
 * calls per second of all the clients together.
 *
 * The floor is what a round trip costs with nothing but the kernel: the same clients, each with
 * one end of a socketpair(AF_UNIX, SOCK_STREAM), write a 64-byte request and read a 64-byte reply
 * from a server process that poll()s every client's socket on one thread and echoes each request,
 * the shape of the manager's server (one thread, one poll loop).
 *
 * The project's goal, tandem's manager at least 20x CPython's, sits on the CPython rows, which
 * the peer script gives. CPython's Value proxy has no atomic add, so the script's goal row for
 * value-add is the closest real equivalent: a type registered on a SyncManager whose add()
 * takes a lock and returns the new value (one round trip, as tdm_mvalue_add_int). Beside it,
 * without a goal, the script shows what a Python program usually writes, `v.value += 1` on
 * Manager().Value('q'): two round trips per add, and updates lost between clients.
 *
 * With 8 clients on a machine with fewer CPUs, the clients and the server take turns on them:
 * what those rows measure is the server's throughput under load, not the latency of one call.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"

#define PEERS "cpython_manager.py"

#define MAX_CLIENTS 8
#define VALUE_LEN   64
#define GET_KEY     "bench-key"
#define ADDRESS_MAX 512

enum mgr_op { OP_GET, OP_SET, OP_ADD, OP_FLOOR };

typedef struct mgr_arg {
  enum mgr_op op;
  int clients;
} mgr_arg;

/* One run's state, in shared memory: the clients store when they ended, or why they failed. */
typedef struct mgr_run {
  bench_gate gate;
  enum mgr_op op;
  int clients;
  int64_t per_client;        /* calls of each client */
  tdm_token token;           /* the object the clients call */
  char address[ADDRESS_MAX]; /* the manager's */
  int64_t end[MAX_CLIENTS];
  int err[MAX_CLIENTS];
} mgr_run;

/* What a forked client (or the floor's server) is: the child reads its own copy of the parent's
 * struct, and of the descriptor table it points to, which is the parent's private memory: each
 * process closes the ends it does not use in its own copy. */
typedef struct mgr_client {
  mgr_run *run;
  int (*fd)[2]; /* the floor: fd[i][0] the server's end of client i's socket, fd[i][1] the
                   client's */
  int id;       /* the server: -1 */
} mgr_client;

/* A failing call in a client is a bug in the library or the benchmark: say which, keep the error
 * for the parent (its row says it) and exit 1. */
static _Noreturn void client_fail(mgr_run *s, int id, const char *call, int err) {
  fprintf(stderr, "tandem bench: manager client %d: %s failed: %s\n", id, call, tdm_strerror(err));
  s->err[id] = err;
  _exit(1);
}

/* ---- Descriptors (the floor) ---------------------------------------------------------------- */

/* Closes the socket ends of n clients, except the client end of client `keep` (-1: all). */
static void close_fds(int (*fd)[2], int n, int keep) {
  for (int i = 0; i < n; i++) {
    bench_close_fd(&fd[i][0]);
    if (i != keep) bench_close_fd(&fd[i][1]);
  }
}

/*
 * The floor's server: one thread polls every client's socket and echoes each 64-byte request.
 * It ends when every client has closed its end (and, since each client process holds only its
 * own end, when every client has exited).
 */
static void floor_server(void *arg) {
  const mgr_client *c = arg;
  struct pollfd pfd[MAX_CLIENTS];
  int n = c->run->clients, live = n;
  for (int i = 0; i < n; i++) {
    bench_close_fd(&c->fd[i][1]);
    pfd[i] = (struct pollfd){ .fd = c->fd[i][0], .events = POLLIN };
  }
  unsigned char buf[VALUE_LEN];
  while (live > 0) {
    if (poll(pfd, (nfds_t)n, -1) < 0) {
      if (errno == EINTR) continue;
      _exit(1);
    }
    for (int i = 0; i < n; i++) {
      if (pfd[i].fd < 0 || pfd[i].revents == 0) continue;
      int r = bench_read_full(pfd[i].fd, buf, sizeof buf);
      if (r == TDM_EEOF) {
        close(pfd[i].fd);
        pfd[i].fd = -1; /* poll() skips it from now on */
        live--;
        continue;
      }
      if (r == 0) r = bench_write_full(pfd[i].fd, buf, sizeof buf);
      if (r != 0) _exit(1);
    }
  }
}

static void floor_client(void *arg) {
  const mgr_client *c = arg;
  mgr_run *s = c->run;
  int id = c->id;
  close_fds(c->fd, s->clients, id); /* only ours stays open: the server sees each end of file */
  int fd = c->fd[id][1];
  unsigned char buf[VALUE_LEN];
  memset(buf, 0x5a, sizeof buf);
  int64_t n = s->per_client;
  bench_gate_arrive(&s->gate);
  for (int64_t i = 0; i < n; i++) {
    int r = bench_write_full(fd, buf, sizeof buf);
    if (r != 0) client_fail(s, id, "write", r);
    r = bench_read_full(fd, buf, sizeof buf);
    if (r != 0) client_fail(s, id, "read", r);
  }
  s->end[id] = tdm_clock_now();
  bench_close_fd(&c->fd[id][1]);
}

/* ---- The manager ------------------------------------------------------------------------- */

#ifdef TDM_BENCH_HAVE_MANAGER

/* Started at the suite's first run; stopped when the suite ends. */
static tdm_manager *manager;

static void manager_client(void *arg) {
  const mgr_client *c = arg;
  mgr_run *s = c->run;
  int id = c->id;
  /* The client's own connection: the handle and proxies inherited through fork stay unused. */
  tdm_manager *m = NULL;
  tdm_proxy *p = NULL;
  const char *call = "tdm_manager_connect";
  int r = tdm_manager_connect(&m, s->address, NULL);
  if (r == 0) {
    call = "tdm_proxy_open";
    r = tdm_proxy_open(&p, m, &s->token);
  }
  bench_gate_arrive(&s->gate); /* also after a failure: the parent waits for every client */
  if (r != 0) client_fail(s, id, call, r);

  unsigned char val[VALUE_LEN];
  memset(val, 0x5a, sizeof val);
  char key[32];
  size_t klen = (size_t)snprintf(key, sizeof key, "client-%d", id);
  int64_t n = s->per_client;
  switch (s->op) {
  case OP_GET:
    for (int64_t i = 0; i < n; i++) {
      void *got;
      size_t len;
      r = tdm_mdict_get(p, GET_KEY, sizeof GET_KEY - 1, &got, &len);
      if (r != 0) client_fail(s, id, "tdm_mdict_get", r);
      bool same = len == VALUE_LEN && memcmp(got, val, VALUE_LEN) == 0;
      tdm_free(got);
      if (!same) client_fail(s, id, "tdm_mdict_get (a wrong value came back)", -EPROTO);
    }
    break;
  case OP_SET:
    for (int64_t i = 0; i < n; i++) {
      memcpy(val, &i, sizeof i);
      r = tdm_mdict_set(p, key, klen, val, sizeof val);
      if (r != 0) client_fail(s, id, "tdm_mdict_set", r);
    }
    break;
  case OP_ADD:
    for (int64_t i = 0; i < n; i++) {
      int64_t now;
      r = tdm_mvalue_add_int(p, 1, &now);
      if (r != 0) client_fail(s, id, "tdm_mvalue_add_int", r);
    }
    break;
  default:
    client_fail(s, id, "manager_client", -EINVAL);
  }
  s->end[id] = tdm_clock_now();
  tdm_proxy_close(p);
  tdm_manager_close(m);
}

/* Makes the object of a run: a dict (with GET_KEY set, for dict-get) or an integer value. */
static int object_make(enum mgr_op op, tdm_proxy **out) {
  int r = 0;
  if (manager == NULL) r = tdm_manager_start(&manager, NULL);
  if (r != 0) return r;
  tdm_proxy *p;
  r = op == OP_ADD ? tdm_manager_value_int(manager, 0, &p) : tdm_manager_dict(manager, &p);
  if (r != 0) return r;
  if (op == OP_GET) {
    unsigned char val[VALUE_LEN];
    memset(val, 0x5a, sizeof val);
    r = tdm_mdict_set(p, GET_KEY, sizeof GET_KEY - 1, val, sizeof val);
  }
  if (r != 0) {
    tdm_proxy_close(p);
    return r;
  }
  *out = p;
  return 0;
}

/* Checks what the clients left: every add counted, each client's last set in its key. */
static int object_check(const mgr_run *s, tdm_proxy *p) {
  int64_t want = s->per_client * s->clients;
  if (s->op == OP_ADD) {
    int64_t v = 0;
    int r = tdm_mvalue_get_int(p, &v);
    if (r != 0) return r;
    if (v != want) {
      fprintf(stderr, "tandem bench: the value is %lld after %lld adds\n", (long long)v,
              (long long)want);
      return -EPROTO;
    }
  } else if (s->op == OP_SET) {
    for (int i = 0; i < s->clients; i++) {
      char key[32];
      size_t klen = (size_t)snprintf(key, sizeof key, "client-%d", i), len;
      void *got;
      int r = tdm_mdict_get(p, key, klen, &got, &len);
      if (r != 0) return r;
      int64_t seq = -1;
      if (len == VALUE_LEN) memcpy(&seq, got, sizeof seq);
      tdm_free(got);
      if (seq != s->per_client - 1) {
        fprintf(stderr, "tandem bench: %s holds set number %lld of %lld\n", key, (long long)seq,
                (long long)s->per_client);
        return -EPROTO;
      }
    }
  }
  return 0;
}

/* Stores in s the object's token and the manager's address, for the clients. */
static int object_share(mgr_run *s, tdm_proxy *p) {
  tdm_proxy_token(p, &s->token);
  int k = snprintf(s->address, sizeof s->address, "%s", tdm_manager_address(manager));
  return k < 0 || (size_t)k >= sizeof s->address ? -ENAMETOOLONG : 0;
}

static void object_close(tdm_proxy *p) {
  tdm_proxy_close(p);
}

static void manager_stop(void) {
  tdm_manager_close(manager);
  manager = NULL;
}

#define MANAGER_NAME(call) call
#else
/* Without the manager module, its rows are skipped (-ENOTSUP) and their names say why. */
static void manager_client(void *arg) {
  (void)arg;
}
static int object_make(enum mgr_op op, tdm_proxy **out) {
  (void)op;
  (void)out;
  return -ENOTSUP;
}
static int object_share(mgr_run *s, tdm_proxy *p) {
  (void)s;
  (void)p;
  return -ENOTSUP;
}
static int object_check(const mgr_run *s, tdm_proxy *p) {
  (void)s;
  (void)p;
  return -ENOTSUP;
}
static void object_close(tdm_proxy *p) {
  (void)p;
}
static void manager_stop(void) {}
#define MANAGER_NAME(call) call " (tandem/manager: not in this build)"
#endif

/* ---- A run ---------------------------------------------------------------------------------- */

/*
 * One timed run of `iters` calls (all clients together) of the manager's workload `arg`, or of
 * its floor: makes the object (or the sockets and the echo server), forks the clients, opens the
 * gate once each is ready, and takes the time from the gate to the last client's end.
 */
static int run_clients(const void *arg, int64_t iters, double *ns) {
  const mgr_arg *a = arg;
  tdm_proxy *obj = NULL;
  int r = 0;
  if (a->op != OP_FLOOR) {
    r = object_make(a->op, &obj);
    if (r != 0) return r;
  }
  mgr_run *s = bench_shared_alloc(sizeof *s);
  s->op = a->op;
  s->clients = a->clients;
  s->per_client = iters / a->clients > 0 ? iters / a->clients : 1;
  int fd[MAX_CLIENTS][2];
  for (int i = 0; i < MAX_CLIENTS; i++)
    fd[i][0] = fd[i][1] = -1;
  if (obj != NULL) r = object_share(s, obj);

  bench_party server;
  mgr_client server_role = { s, fd, -1 };
  bool have_server = false;
  if (r == 0 && a->op == OP_FLOOR) {
    for (int i = 0; i < a->clients && r == 0; i++)
      if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd[i]) != 0) r = -errno;
    if (r == 0) r = bench_party_start(&server, true, floor_server, &server_role);
    have_server = r == 0;
  }
  mgr_client roles[MAX_CLIENTS];
  bench_party party[MAX_CLIENTS];
  int started = 0;
  for (int i = 0; i < a->clients && r == 0; i++) {
    roles[i] = (mgr_client){ s, fd, i };
    r = bench_party_start(&party[i], true, a->op == OP_FLOOR ? floor_client : manager_client,
                          &roles[i]);
    if (r == 0) started++;
  }
  close_fds(fd, a->clients, -1); /* the children hold every end they need */
  int64_t t0 = 0;
  if (r == 0) {
    t0 = bench_gate_open(&s->gate, (uint32_t)started);
  } else {
    for (int i = 0; i < started; i++) /* they would wait at the gate forever */
      kill(party[i].pid, SIGKILL);
  }
  for (int i = 0; i < started; i++) {
    int j = bench_party_join(&party[i]);
    if (r == 0 && j != 0) r = s->err[i] != 0 ? s->err[i] : j;
  }
  if (have_server) { /* its clients are gone: it has seen every end of file */
    int j = bench_party_join(&server);
    if (r == 0) r = j;
  }
  if (r == 0 && obj != NULL) r = object_check(s, obj);
  if (obj != NULL) object_close(obj);
  if (r == 0) {
    int64_t t1 = t0;
    for (int i = 0; i < a->clients; i++)
      if (s->end[i] > t1) t1 = s->end[i];
    *ns = (double)(t1 - t0) / (double)(s->per_client * a->clients);
  }
  bench_shared_free(s, sizeof *s);
  return r;
}

/* ---- The suite ------------------------------------------------------------------------------ */

static void measure(bench_ctx *ctx, const char *key, int64_t iters, int64_t quick_iters,
                    const bench_impl *impls, size_t n) {
  bench_workload w = { .iters = iters,
                       .quick_iters = quick_iters,
                       .peer_script = PEERS,
                       .rate = BENCH_RATE_CALLS,
                       .n_impls = (int)n };
  snprintf(w.key, sizeof w.key, "%s", key);
  memcpy(w.impls, impls, n * sizeof *impls);
  bench_run(ctx, &w);
}

#define FLOOR_NAME "socketpair round trip, 64 B, poll() echo server (floor)"

void bench_manager_suite(bench_ctx *ctx) {
  static const char *const calls[] = { "dict-get", "dict-set", "value-add" };
  static const char *const names[] = { MANAGER_NAME("tdm_mdict_get"), MANAGER_NAME("tdm_mdict_set"),
                                       MANAGER_NAME("tdm_mvalue_add_int") };
  static const mgr_arg args[3][2] = {
    { { OP_GET, 1 }, { OP_GET, MAX_CLIENTS } },
    { { OP_SET, 1 }, { OP_SET, MAX_CLIENTS } },
    { { OP_ADD, 1 }, { OP_ADD, MAX_CLIENTS } },
  };
  static const mgr_arg floors[2] = { { OP_FLOOR, 1 }, { OP_FLOOR, MAX_CLIENTS } };
  for (int c = 0; c < 3; c++) {
    for (int k = 0; k < 2; k++) {
      char key[BENCH_KEY_MAX];
      snprintf(key, sizeof key, "manager/%s/%s", calls[c], k == 0 ? "1-proc" : "8-procs");
      const bench_impl impls[] = {
        { names[c], run_clients, &args[c][k] },
        { FLOOR_NAME, run_clients, &floors[k] },
      };
      /* Iterations: calls per run, all clients together. */
      measure(ctx, key, 20000, 4000, impls, BENCH_COUNT(impls));
    }
  }
  manager_stop();
}
