/*
 * demo_more.c: the experiments of `tandem demo` that are not a race between methods: where a
 * worker's writes end up (memory), how long a message takes between processes (IPC), and what
 * the tutorial claims need measured.
 *
 * Memory. A worker appends to a global array, as a Python worker appends to a global list. A
 * thread shares the parent's memory, so the parent sees every item; a process works on its own
 * copy (fork) or a fresh image (spawn, forkserver), so the parent sees none. The two ways to
 * bring the items back are shown as well: an array in shared memory (multiprocessing.Array),
 * which the child appends to through an atomic length, a queue the child puts them on, and a
 * manager's list (Python's Manager().list()), which the child extends through a proxy.
 *
 * IPC. The parent and one child play ping-pong: through two tandem queues (the child stamps
 * its "hello" with the monotonic clock, which every process of the machine shares, so the
 * one-way time is measured as well as the round trip), then through a duplex pipe. The median
 * of many rounds is kept: one round is a few microseconds, which a preemption can multiply.
 *
 * Children get their queues, segments and pipe ends as descriptors at the same numbers
 * (pass_fds), so the code is the same under every start method.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "demo.h"

#define MAX_ITEMS     1000000
#define CHILD_TIMEOUT TDM_S(30)

/* ---- Memory ---------------------------------------------------------------------------------- */

static long list[MAX_ITEMS]; /* the "global list" */
static long list_len;

static void append_items(long items) {
  for (long i = 0; i < items; i++)
    list[list_len++] = i;
}

static void thread_append(void *arg) {
  append_items(*(long *)arg);
}

static int process_append(void *arg, size_t size) {
  long items;
  if (!demo_unpack(&items, sizeof items, arg, size)) return 2;
  append_items(items);
  return 0;
}

struct shared_args {
  int fd; /* the segment, or the queue */
  long items;
};

/* Element 0 of the shared array is the length; items go after it. */
static int shm_append(void *arg, size_t size) {
  struct shared_args a;
  if (!demo_unpack(&a, sizeof a, arg, size)) return 2;
  tdm_shm *seg;
  if (tdm_shm_attach_fd(&seg, a.fd, 0) != 0) return 3;
  tdm_array *arr = tdm_array_check(tdm_shm_addr(seg), TDM_TYPE_I64);
  int rc = arr == NULL ? 4 : 0;
  for (long i = 0; i < a.items && rc == 0; i++) {
    int64_t len, item = i;
    if (tdm_array_add(arr, 0, 1, &len) != 0 || tdm_array_set(arr, (size_t)len + 1, &item) != 0)
      rc = 5;
  }
  tdm_shm_close(seg);
  return rc;
}

static int queue_append(void *arg, size_t size) {
  struct shared_args a;
  if (!demo_unpack(&a, sizeof a, arg, size)) return 2;
  tdm_queue *q;
  if (tdm_queue_attach_fd(&q, a.fd) != 0) return 3;
  int rc = 0;
  for (long i = 0; i < a.items && rc == 0; i++)
    if (tdm_queue_put(q, &i, sizeof i, CHILD_TIMEOUT) != 0) rc = 4;
  tdm_queue_close(q);
  return rc;
}

/* Starts fn in a child with the descriptor fd (or none for -1) and arguments; joins it. */
static int run_child(tdm_process_fn fn, const void *arg, size_t size, int fd,
                     int (*meanwhile)(void *), void *ctx) {
  tdm_process_options opt = { .pass_fds = &fd, .n_pass_fds = fd >= 0 ? 1 : 0 };
  tdm_process *p;
  int rc = tdm_process_start(&p, fn, arg, size, &opt);
  if (rc != 0) return rc;
  int work = meanwhile != NULL ? meanwhile(ctx) : 0;
  rc = tdm_process_join(p, CHILD_TIMEOUT);
  if (rc != 0) tdm_process_kill(p), tdm_process_join(p, TDM_FOREVER);
  int code = -1;
  if (rc == 0) rc = tdm_process_exitcode(p, &code);
  tdm_process_close(p);
  if (rc == 0 && work != 0) rc = work;
  if (rc == 0 && code != 0) rc = TDM_ECHILDINIT;
  return rc;
}

struct drain {
  tdm_queue *q;
  long items, got;
};

static int drain_queue(void *ctx) {
  struct drain *d = ctx;
  for (; d->got < d->items; d->got++) {
    long item;
    size_t len;
    int rc = tdm_queue_recv(d->q, &item, sizeof item, &len, CHILD_TIMEOUT);
    if (rc != 0) return rc;
    if (len != sizeof item || item != d->got) return -EPROTO;
  }
  return 0;
}

struct manager_args {
  char address[512]; /* the manager's, where the child connects */
  tdm_token list;
  long items;
};

#define MANAGER_BATCH 1000

/* The child appends through a proxy of the manager's list, in batches of MANAGER_BATCH. */
static int manager_append(void *arg, size_t size) {
  struct manager_args a;
  if (!demo_unpack(&a, sizeof a, arg, size)) return 2;
  tdm_manager *m;
  if (tdm_manager_connect(&m, a.address, NULL) != 0) return 3;
  tdm_proxy *l;
  int rc = tdm_proxy_open(&l, m, &a.list) != 0 ? 4 : 0;
  static long batch[MANAGER_BATCH];
  tdm_bytes v[MANAGER_BATCH];
  for (long i = 0; i < a.items && rc == 0; i += MANAGER_BATCH) {
    size_t n = 0;
    for (; n < MANAGER_BATCH && i + (long)n < a.items; n++) {
      batch[n] = i + (long)n;
      v[n] = (tdm_bytes){ &batch[n], sizeof batch[n] };
    }
    if (tdm_mlist_extend(l, v, n) != 0) rc = 5;
  }
  if (rc != 4) tdm_proxy_close(l);
  tdm_manager_close(m);
  return rc;
}

/* A manager's list, appended to by a child process: *seen gets the length the parent reads,
 * once every item has been checked. */
static int manager_rows(long items, long *seen) {
  tdm_manager *m;
  int rc = tdm_manager_start(&m, NULL);
  if (rc != 0) return rc;
  tdm_proxy *l;
  rc = tdm_manager_list(m, &l);
  if (rc == 0) {
    struct manager_args a = { .items = items };
    tdm_proxy_token(l, &a.list);
    if (strlen(tdm_manager_address(m)) >= sizeof a.address) rc = -ENAMETOOLONG;
    if (rc == 0) {
      strcpy(a.address, tdm_manager_address(m));
      rc = run_child(manager_append, &a, sizeof a, -1, NULL, NULL);
    }
    size_t len = 0;
    if (rc == 0) rc = tdm_mlist_len(l, &len);
    for (size_t i = 0; rc == 0 && i < len; i += MANAGER_BATCH) {
      tdm_bytes_list *got = NULL;
      rc = tdm_mlist_slice(l, (int64_t)i, (int64_t)(i + MANAGER_BATCH), &got);
      for (size_t k = 0; rc == 0 && k < got->n; k++) {
        long v;
        if (got->v[k].len != sizeof v) rc = -EPROTO;
        if (rc == 0) memcpy(&v, got->v[k].data, sizeof v);
        if (rc == 0 && v != (long)(i + k)) rc = -EPROTO;
      }
      tdm_free(got);
    }
    if (rc == 0) *seen = (long)len;
    tdm_proxy_close(l);
  }
  tdm_manager_close(m);
  return rc;
}

int demo_memory(long items, demo_memory_row rows[DEMO_MEMORY_ROWS]) {
  if (items < 1 || items > MAX_ITEMS) return -EINVAL;
  memset(rows, 0, DEMO_MEMORY_ROWS * sizeof *rows);
  int first = 0;

  rows[0] = (demo_memory_row){
    .how = "a thread appends to the global array", .model = "threads", .seen = -1, .appended = items
  };
  list_len = 0;
  tdm_thread *t;
  int rc = tdm_thread_start(&t, thread_append, &items, NULL);
  if (rc == 0) rc = tdm_thread_join(t, TDM_FOREVER);
  if (rc == 0) rows[0].seen = list_len;
  rows[0].error = rc;
  first = first ? first : rc;

  rows[1] = (demo_memory_row){ .how = "a process appends to the global array",
                               .model = "processes",
                               .seen = -1,
                               .appended = items };
  list_len = 0;
  rc = run_child(process_append, &items, sizeof items, -1, NULL, NULL);
  if (rc == 0) rows[1].seen = list_len;
  rows[1].error = rc;
  first = first ? first : rc;

  rows[2] = (demo_memory_row){ .how = "a process appends to an array in shared memory",
                               .model = "processes + tdm_array",
                               .seen = -1,
                               .appended = items };
  tdm_shm *seg;
  size_t bytes = tdm_array_footprint(TDM_TYPE_I64, (size_t)items + 1, 0);
  rc = tdm_shm_create(&seg, NULL, bytes, NULL);
  if (rc == 0) {
    tdm_array *arr = tdm_shm_addr(seg);
    rc = tdm_array_init(arr, TDM_TYPE_I64, (size_t)items + 1, 0);
    struct shared_args a = { .fd = tdm_shm_fd(seg), .items = items };
    if (rc == 0) rc = run_child(shm_append, &a, sizeof a, a.fd, NULL, NULL);
    int64_t len = 0;
    if (rc == 0) rc = tdm_array_get(arr, 0, &len);
    for (int64_t i = 0; rc == 0 && i < len; i++) {
      int64_t v;
      rc = tdm_array_get(arr, (size_t)i + 1, &v);
      if (rc == 0 && v != i) rc = -EPROTO;
    }
    if (rc == 0) rows[2].seen = (long)len;
    tdm_shm_close(seg);
  }
  rows[2].error = rc;
  first = first ? first : rc;

  rows[3] = (demo_memory_row){ .how = "a process puts the items on a queue",
                               .model = "processes + tdm_queue",
                               .seen = -1,
                               .appended = items };
  tdm_queue *q;
  rc = tdm_queue_open(&q, NULL);
  if (rc == 0) {
    struct shared_args a = { .fd = tdm_queue_fd(q), .items = items };
    struct drain d = { .q = q, .items = items };
    rc = run_child(queue_append, &a, sizeof a, a.fd, drain_queue, &d);
    if (rc == 0) rows[3].seen = d.got;
    tdm_queue_close(q);
  }
  rows[3].error = rc;
  first = first ? first : rc;

  rows[4] = (demo_memory_row){ .how = "a manager holds the list for every process",
                               .model = "processes + tdm_manager",
                               .seen = -1,
                               .appended = items };
  rc = manager_rows(items, &rows[4].seen);
  rows[4].error = rc;
  first = first ? first : rc;
  return first;
}

/* ---- IPC --------------------------------------------------------------------------------------
 */

typedef struct hello {
  int64_t stamp; /* tdm_clock_now() in the child just before the put */
  char text[56];
} hello;

struct ipc_args {
  int down, up; /* queues: parent to child, child to parent; or the pipe end in `down` */
  int rounds;
};

static int queue_echo(void *arg, size_t size) {
  struct ipc_args a;
  if (!demo_unpack(&a, sizeof a, arg, size)) return 2;
  tdm_queue *down, *up;
  if (tdm_queue_attach_fd(&down, a.down) != 0) return 3;
  if (tdm_queue_attach_fd(&up, a.up) != 0) return 3;
  int rc = 0;
  for (int r = 0; r < a.rounds && rc == 0; r++) {
    char go;
    size_t len;
    hello h = { 0 };
    snprintf(h.text, sizeof h.text, "hello from process %d", (int)getpid());
    if (tdm_queue_recv(down, &go, sizeof go, &len, CHILD_TIMEOUT) != 0) rc = 4;
    h.stamp = tdm_clock_now();
    if (rc == 0 && tdm_queue_put(up, &h, sizeof h, CHILD_TIMEOUT) != 0) rc = 5;
  }
  tdm_queue_close(down);
  tdm_queue_close(up);
  return rc;
}

static int pipe_echo(void *arg, size_t size) {
  struct ipc_args a;
  if (!demo_unpack(&a, sizeof a, arg, size)) return 2;
  tdm_conn *c;
  if (tdm_conn_open_fd(&c, a.down, NULL) != 0) return 3;
  int rc = 0;
  for (int r = 0; r < a.rounds && rc == 0; r++) {
    char buf[64];
    size_t len;
    if (tdm_conn_recv_into(c, buf, sizeof buf, &len, CHILD_TIMEOUT) != 0 ||
        tdm_conn_send(c, buf, len, CHILD_TIMEOUT) != 0)
      rc = 4;
  }
  tdm_conn_close(c);
  return rc;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_us(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2] / 1e3;
}

struct queue_pong {
  tdm_queue *down, *up;
  demo_ipc *out;
  double *rtt, *oneway;
};

static int queue_rounds(void *ctx) {
  struct queue_pong *c = ctx;
  for (int r = 0; r < c->out->rounds; r++) {
    hello h;
    size_t len;
    int64_t t0 = tdm_clock_now();
    int rc = tdm_queue_put(c->down, "g", 1, CHILD_TIMEOUT);
    if (rc == 0) rc = tdm_queue_recv(c->up, &h, sizeof h, &len, CHILD_TIMEOUT);
    int64_t t1 = tdm_clock_now();
    if (rc == 0 && len != sizeof h) rc = -EPROTO;
    if (rc != 0) return rc;
    c->rtt[r] = (double)(t1 - t0);
    c->oneway[r] = (double)(t1 - h.stamp);
    if (r == 0) {
      h.text[sizeof h.text - 1] = '\0';
      snprintf(c->out->hello, sizeof c->out->hello, "%s", h.text);
    }
  }
  return 0;
}

struct pipe_pong {
  tdm_conn *c;
  int rounds;
  double *rtt;
};

static int pipe_rounds(void *ctx) {
  struct pipe_pong *p = ctx;
  for (int r = 0; r < p->rounds; r++) {
    char buf[64];
    size_t len;
    int64_t t0 = tdm_clock_now();
    int rc = tdm_conn_send(p->c, "ping", 4, CHILD_TIMEOUT);
    if (rc == 0) rc = tdm_conn_recv_into(p->c, buf, sizeof buf, &len, CHILD_TIMEOUT);
    if (rc == 0 && (len != 4 || memcmp(buf, "ping", 4) != 0)) rc = -EPROTO;
    if (rc != 0) return rc;
    p->rtt[r] = (double)(tdm_clock_now() - t0);
  }
  return 0;
}

static int ipc_fail(demo_ipc *out, int rc, const char *what) {
  return demo_failed(&out->error, out->what, sizeof out->what, rc, what);
}

int demo_ipc_run(int rounds, demo_ipc *out) {
  memset(out, 0, sizeof *out);
  if (rounds < 1) return -EINVAL;
  out->rounds = rounds;
  double *rtt = calloc((size_t)rounds, sizeof *rtt), *oneway = calloc((size_t)rounds, sizeof *rtt);
  if (rtt == NULL || oneway == NULL) {
    free(rtt);
    free(oneway);
    return ipc_fail(out, -ENOMEM, "calloc");
  }

  tdm_queue *down = NULL, *up = NULL;
  int rc = tdm_queue_open(&down, NULL);
  if (rc == 0) rc = tdm_queue_open(&up, NULL);
  if (rc == 0) {
    struct ipc_args a = { .down = tdm_queue_fd(down), .up = tdm_queue_fd(up), .rounds = rounds };
    int fds[2] = { a.down, a.up };
    tdm_process_options opt = { .pass_fds = fds, .n_pass_fds = 2 };
    struct queue_pong c = { down, up, out, rtt, oneway };
    tdm_process *p;
    rc = tdm_process_start(&p, queue_echo, &a, sizeof a, &opt);
    if (rc == 0) {
      rc = queue_rounds(&c);
      if (rc != 0) tdm_process_kill(p);
      int j = tdm_process_join(p, CHILD_TIMEOUT), code = -1;
      if (j == 0) tdm_process_exitcode(p, &code);
      if (rc == 0) rc = j != 0 ? j : code != 0 ? TDM_ECHILDINIT : 0;
      tdm_process_close(p);
    }
  }
  if (up != NULL) tdm_queue_close(up);
  if (down != NULL) tdm_queue_close(down);
  if (ipc_fail(out, rc, "queue ping-pong") == 0) {
    out->queue_rtt_us = median_us(rtt, rounds);
    out->hello_us = median_us(oneway, rounds);
  }

  tdm_conn *mine, *theirs;
  rc = tdm_pipe(&mine, &theirs, NULL);
  if (rc == 0) {
    struct ipc_args a = { .down = tdm_conn_fd(theirs), .rounds = rounds };
    struct pipe_pong pp = { mine, rounds, rtt };
    rc = run_child(pipe_echo, &a, sizeof a, a.down, pipe_rounds, &pp);
    tdm_conn_close(theirs);
    tdm_conn_close(mine);
  }
  if (ipc_fail(out, rc, "pipe ping-pong") == 0) out->pipe_rtt_us = median_us(rtt, rounds);
  free(rtt);
  free(oneway);
  return out->error;
}

/* ---- Claims ------------------------------------------------------------------------------------
 */

static void gil_sleeper(void *arg) {
  int64_t ns = *(const int64_t *)arg;
  tdm_gil_acquire(&demo_gil);
  tdm_gil_sleep(&demo_gil, ns);
  tdm_gil_release(&demo_gil);
}

static int claims_fail(demo_claims *out, int rc, const char *what) {
  return demo_failed(&out->error, out->what, sizeof out->what, rc, what);
}

int demo_claims_run(double seconds, demo_claims *out) {
  memset(out, 0, sizeof *out);
  out->seconds = seconds;
  out->cpus = tdm_cpu_count();
  out->pool_workers = (unsigned)out->cpus; /* a process pool's default size (pool.h) */
  int64_t ns = (int64_t)(seconds * 1e9);

  /* Claim 1: four threads under the GIL model, each sleeping. */
  tdm_thread *t[4];
  int started = 0, rc = 0;
  double t0 = demo_now();
  for (; started < 4 && rc == 0; started++)
    rc = tdm_thread_start(&t[started], gil_sleeper, &ns, NULL);
  if (rc != 0) started--;
  for (int i = 0; i < started; i++)
    tdm_thread_join(t[i], TDM_FOREVER);
  out->gil_sleep_s = demo_now() - t0;
  if (claims_fail(out, rc, "tdm_thread_start") != 0) return rc;

  /* Claim 3: four tasks on a default process pool, sleeping, then computing. */
  demo_task tasks[4];
  uint64_t expected[4];
  for (uint32_t i = 0; i < 4; i++) {
    tasks[i] = (demo_task){ .kind = K_SLEEP, .index = i, .ns = ns };
    expected[i] = demo_expected(&tasks[i]);
  }
  demo_result r;
  rc = demo_run(M_DEFAULT_PROCS, tasks, expected, 4, NULL, &r);
  if (claims_fail(out, rc, "default pool, sleeping tasks") != 0) return rc;
  out->pool_sleep_s = r.wall_s;
  for (uint32_t i = 0; i < 4; i++)
    tasks[i].kind = K_BURN;
  rc = demo_run(M_DEFAULT_PROCS, tasks, expected, 4, NULL, &r);
  if (claims_fail(out, rc, "default pool, computing tasks") != 0) return rc;
  out->pool_cpu_s = r.wall_s;

  unsigned waves = (4 + out->pool_workers - 1) / out->pool_workers;
  out->predict_sleep_s = waves * seconds;
  double by_cpus = 4.0 / out->cpus;
  out->predict_cpu_s = (by_cpus > waves ? by_cpus : waves) * seconds;
  return 0;
}
