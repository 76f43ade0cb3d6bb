/*
 * demo_run.c: the tasks of `tandem demo`, the five ways of running a batch of them, the loopback
 * HTTP server and the files the I/O experiments read.
 *
 * Methods. Sequential runs the tasks in the calling thread. Threads, threads under the GIL
 * model and processes open a pool with one worker per task (a thread or a process per
 * "download", as the classic Python experiments start one Thread or Process each) and close it
 * after the last result; the automatic pool opens with its defaults and sizes itself to what
 * it measures. The time of a run covers opening, the work and closing, since a program pays
 * for all three; the CPU time is getrusage() of the process and of its reaped children, so a
 * process pool's workers count once the pool has reaped them at close.
 *
 * The GIL model. A task marked `gil` holds demo_gil while it runs, as a thread running Python
 * code holds CPython's GIL: its computing loops pass tdm_gil_checkpoint() (CPython's eval
 * breaker), and every blocking call (sleep, read, connect, recv) is made with the GIL released,
 * as CPython's I/O functions do. Nothing else changes, so the difference between "threads" and
 * "threads + GIL" is the GIL's alone.
 *
 * Checking. Every task returns a value that depends on its input (the sum, the bytes read or
 * downloaded); a run whose values differ from the expected ones is a failed run, not a time.
 *
 * The HTTP server is a daemon child process (it dies with the demo however the demo ends), one
 * poll() loop over non-blocking sockets: each request names its size and its delay, the delay
 * stands for a remote server's latency, and many requests wait at once without a thread each.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "demo.h"

tdm_gil demo_gil;

#define READ_CHUNK   (256 * 1024)
#define IO_TIMEOUT_S 30
#define MAX_FILES    256

double demo_now(void) {
  return (double)tdm_clock_now() / 1e9;
}

const char *demo_method_name(demo_method m) {
  static const char *const names[M_COUNT] = { "sequential", "threads", "threads + GIL", "processes",
                                              "auto pool" };
  return (unsigned)m < M_COUNT ? names[m] : "default process pool";
}

int demo_run_init(void) {
  return tdm_gil_init(&demo_gil, 0);
}

void demo_run_fini(void) {
  tdm_gil_fini(&demo_gil);
}

/* ---- The tasks ------------------------------------------------------------------------------ */

/* Around a blocking call: a thread under the GIL model lets the others run meanwhile. */
static void gil_out(const demo_task *t) {
  if (t->gil) tdm_gil_release(&demo_gil);
}

static void gil_in(const demo_task *t) {
  if (t->gil) tdm_gil_acquire(&demo_gil);
}

static void checkpoint(const demo_task *t) {
  if (t->gil) tdm_gil_checkpoint(&demo_gil);
}

static uint64_t sum_bytes(const demo_task *t, const uint8_t *p, size_t n) {
  uint64_t s = 0;
  for (size_t lo = 0; lo < n; lo += 16384) {
    size_t hi = n - lo < 16384 ? n : lo + 16384;
    for (size_t i = lo; i < hi; i++)
      s += p[i];
    checkpoint(t);
  }
  return s;
}

/* sum(range(n)), computed: the empty asm keeps the compiler from folding the loop into n(n-1)/2
 * or vectorising it, so it is one addition per number, as the experiment means. */
static uint64_t sum_to(const demo_task *t) {
  uint64_t s = 0;
  for (uint64_t lo = 0; lo < t->n; lo += 4096) {
    uint64_t hi = t->n - lo < 4096 ? t->n : lo + 4096;
    for (uint64_t i = lo; i < hi; i++) {
      s += i;
      __asm__ volatile("" : "+r"(s));
    }
    checkpoint(t);
  }
  return s;
}

/* Computes until this thread has used t->ns of CPU time. */
static uint64_t burn(const demo_task *t) {
  int64_t end = tdm_clock_thread_cpu() + t->ns;
  uint64_t x = t->index;
  do {
    for (int i = 0; i < 100000; i++) {
      x = x * 6364136223846793005u + 1442695040888963407u;
      __asm__ volatile("" : "+r"(x));
    }
    checkpoint(t);
  } while (tdm_clock_thread_cpu() < end);
  return t->index;
}

static int read_file(const demo_task *t, uint64_t *value) {
  uint8_t *buf = malloc(READ_CHUNK);
  if (buf == NULL) return -ENOMEM;
  gil_out(t);
  int fd = open(t->path, O_RDONLY | O_CLOEXEC);
  gil_in(t);
  int rc = fd < 0 ? -errno : 0;
  uint64_t s = 0, total = 0;
  while (rc == 0) {
    gil_out(t);
    ssize_t got = read(fd, buf, READ_CHUNK);
    int err = errno;
    gil_in(t);
    if (got < 0 && err == EINTR) continue;
    if (got < 0) rc = -err;
    if (got <= 0) break;
    s += sum_bytes(t, buf, (size_t)got);
    total += (uint64_t)got;
  }
  if (fd >= 0) close(fd);
  free(buf);
  if (rc == 0 && total != t->bytes) rc = -EIO;
  *value = s;
  return rc;
}

static int set_timeouts(int fd) {
  struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
    return -errno;
  return 0;
}

/* Reads the answer: the status line and headers, then Content-Length bytes of body. */
static int http_read(const demo_task *t, int fd, uint8_t *buf, uint64_t *value) {
  size_t have = 0;
  char *body = NULL;
  while (body == NULL) {
    if (have == READ_CHUNK - 1) return -EPROTO; /* headers this long are not ours */
    gil_out(t);
    ssize_t got = recv(fd, buf + have, READ_CHUNK - 1 - have, 0);
    int err = errno;
    gil_in(t);
    if (got < 0 && err == EINTR) continue;
    if (got < 0) return err == EAGAIN ? -ETIMEDOUT : -err;
    if (got == 0) return -EPROTO;
    have += (size_t)got;
    buf[have] = '\0';
    body = strstr((char *)buf, "\r\n\r\n");
  }
  unsigned long long length = 0;
  char *cl = strstr((char *)buf, "Content-Length: ");
  if (strncmp((char *)buf, "HTTP/1.1 200 ", 13) != 0 || cl == NULL || cl > body ||
      sscanf(cl, "Content-Length: %llu", &length) != 1 || length != t->bytes)
    return -EPROTO;
  body += 4;
  size_t in_buf = have - (size_t)(body - (char *)buf);
  uint64_t s = sum_bytes(t, (uint8_t *)body, in_buf), total = in_buf;
  while (total < length) {
    gil_out(t);
    ssize_t got = recv(fd, buf, READ_CHUNK, 0);
    int err = errno;
    gil_in(t);
    if (got < 0 && err == EINTR) continue;
    if (got < 0) return err == EAGAIN ? -ETIMEDOUT : -err;
    if (got == 0) break;
    s += sum_bytes(t, buf, (size_t)got);
    total += (uint64_t)got;
  }
  *value = s;
  return total == length ? 0 : -EPROTO;
}

static int http_get(const demo_task *t, uint64_t *value) {
  uint8_t *buf = malloc(READ_CHUNK);
  if (buf == NULL) return -ENOMEM;
  int rc = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) rc = -errno;
  if (rc == 0) rc = set_timeouts(fd);
  struct sockaddr_in addr = { .sin_family = AF_INET,
                              .sin_port = htons(t->port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (rc == 0) {
    gil_out(t);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) rc = -errno;
    gil_in(t);
  }
  if (rc == 0) {
    char req[160];
    int len = snprintf(req, sizeof req,
                       "GET /%u?bytes=%llu&delay_ms=%lld HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Connection: close\r\n\r\n",
                       t->index, (unsigned long long)t->bytes, (long long)(t->ns / 1000000));
    gil_out(t);
    if (send(fd, req, (size_t)len, MSG_NOSIGNAL) != len) rc = errno ? -errno : -EIO;
    gil_in(t);
  }
  if (rc == 0) rc = http_read(t, fd, buf, value);
  if (fd >= 0) close(fd);
  free(buf);
  return rc;
}

/* Runs one task; its value goes to *value. Returns 0 or a negative code. */
static int run_task(const demo_task *t, uint64_t *value) {
  gil_in(t);
  int rc = 0;
  switch (t->kind) {
  case K_SLEEP:
    rc = t->gil ? tdm_gil_sleep(&demo_gil, t->ns) : tdm_clock_sleep(t->ns);
    *value = t->index;
    break;
  case K_FILE:
    rc = read_file(t, value);
    break;
  case K_HTTP:
    rc = http_get(t, value);
    break;
  case K_SUM:
    *value = sum_to(t);
    break;
  case K_BURN:
    *value = burn(t);
    break;
  }
  gil_out(t);
  return rc;
}

uint64_t demo_expected(const demo_task *t) {
  switch (t->kind) {
  case K_SUM:
    return t->n == 0 ? 0 : t->n * (t->n - 1) / 2;
  case K_FILE:
  case K_HTTP: {
    uint64_t s = 0;
    for (uint64_t off = 0; off < t->bytes; off++)
      s += demo_byte(t->index, off);
    return s;
  }
  default:
    return t->index;
  }
}

/* A pool task: the demo_task's bytes in, its value out. Fails with the (positive) error. */
static int pool_task(tdm_task *task, const void *arg, size_t size) {
  demo_task t;
  if (!demo_unpack(&t, sizeof t, arg, size)) return EINVAL;
  uint64_t v = 0;
  int rc = run_task(&t, &v);
  if (rc != 0) return -rc;
  return tdm_task_set_result(task, &v, sizeof v) == 0 ? 0 : ENOMEM;
}

/* ---- Methods -------------------------------------------------------------------------------- */

int demo_failed(int *error, char *what, size_t cap, int rc, const char *text) {
  if (rc != 0 && *error == 0) {
    *error = rc;
    snprintf(what, cap, "%s", text);
  }
  return rc;
}

static int fail(demo_result *r, int code, const char *what) {
  return demo_failed(&r->error, r->what, sizeof r->what, code, what);
}

static int run_sequential(const demo_task *tasks, size_t n, uint64_t *values, demo_result *r) {
  for (size_t i = 0; i < n; i++) {
    int rc = run_task(&tasks[i], &values[i]);
    if (rc != 0) return fail(r, rc, "task");
  }
  return 0;
}

static int run_pool(demo_method m, const demo_task *tasks, size_t n, uint64_t *values,
                    demo_result *r) {
  tdm_pool_options opt = {
    .backend = m == M_PROCS || m == M_DEFAULT_PROCS ? TDM_POOL_PROCESSES
               : m == M_AUTO                        ? TDM_POOL_AUTO
                                                    : TDM_POOL_THREADS,
    .workers = m == M_AUTO || m == M_DEFAULT_PROCS ? 0 : (unsigned)n,
  };
  tdm_future **fs = calloc(n, sizeof *fs);
  if (fs == NULL) return fail(r, -ENOMEM, "calloc");
  tdm_pool *p;
  int rc = tdm_pool_open(&p, &opt);
  if (rc != 0) {
    free(fs);
    return fail(r, rc, "tdm_pool_open");
  }
  size_t submitted = 0;
  for (; submitted < n && rc == 0; submitted++) {
    rc = tdm_pool_submit(p, pool_task, &tasks[submitted], sizeof tasks[submitted], NULL,
                         &fs[submitted]);
    if (rc != 0) fail(r, rc, "tdm_pool_submit");
  }
  if (rc != 0) submitted--;
  if (submitted > 0) {
    int w = tdm_wait(fs, submitted, TDM_WAIT_ALL, TDM_S(300), NULL);
    if (w != 0 && rc == 0) rc = fail(r, w, "tdm_wait");
  }
  for (size_t i = 0; i < submitted; i++) {
    const void *data;
    size_t size;
    int got = tdm_future_result(fs[i], 0, &data, &size);
    if (got == 0 && size == sizeof values[i]) {
      memcpy(&values[i], data, sizeof values[i]);
    } else if (rc == 0) {
      tdm_task_error e = { 0 };
      tdm_future_error(fs[i], &e);
      /* A task's own failure is its status, a positive errno (pool_task). */
      rc = e.code == TDM_ETASK && e.status > 0 ? fail(r, -e.status, "task")
                                               : fail(r, got != 0 ? got : -EPROTO, "task");
    }
    tdm_future_free(fs[i]);
  }
  free(fs);
  if (m == M_AUTO) r->auto_cpu = tdm_pool_cpu_bound(p, &r->auto_n);
  int closed = tdm_pool_close(p);
  if (closed != 0 && rc == 0) rc = fail(r, closed, "tdm_pool_close");
  return rc;
}

static double cpu_seconds(void) {
  struct rusage self, children;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &children);
  return (double)(self.ru_utime.tv_sec + self.ru_stime.tv_sec + children.ru_utime.tv_sec +
                  children.ru_stime.tv_sec) +
         (double)(self.ru_utime.tv_usec + self.ru_stime.tv_usec + children.ru_utime.tv_usec +
                  children.ru_stime.tv_usec) /
             1e6;
}

int demo_run(demo_method m, const demo_task *batch, const uint64_t *expected, size_t n,
             void (*before)(void), demo_result *r) {
  memset(r, 0, sizeof *r);
  demo_task *tasks = calloc(n, sizeof *tasks);
  uint64_t *values = calloc(n, sizeof *values);
  if (tasks == NULL || values == NULL) {
    fail(r, -ENOMEM, "calloc");
    goto out;
  }
  memcpy(tasks, batch, n * sizeof *tasks);
  for (size_t i = 0; i < n; i++)
    tasks[i].gil = m == M_GIL;
  if (before != NULL) before();
  uint64_t switches = tdm_gil_switches(&demo_gil);
  double c0 = cpu_seconds(), t0 = demo_now();
  int rc = m == M_SEQ ? run_sequential(tasks, n, values, r) : run_pool(m, tasks, n, values, r);
  r->wall_s = demo_now() - t0;
  r->cpu_s = cpu_seconds() - c0;
  r->gil_switches = tdm_gil_switches(&demo_gil) - switches;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (values[i] != expected[i]) {
      char what[96];
      snprintf(what, sizeof what, "task %zu gave %llu, not %llu", i, (unsigned long long)values[i],
               (unsigned long long)expected[i]);
      rc = fail(r, -EPROTO, what);
    }
  }
  if (rc == 0) r->runs = 1;
out:
  free(tasks);
  free(values);
  return r->error;
}

/* ---- The HTTP server ------------------------------------------------------------------------- */

enum { MAX_CONNS = 512, REQ_MAX = 1024 };

typedef struct hconn {
  int fd;
  enum { H_READ, H_WAIT, H_WRITE } state;
  char req[REQ_MAX];
  size_t got;
  int64_t due;
  char head[160];
  size_t head_len, head_off;
  uint32_t index;
  uint64_t bytes, sent;
} hconn;

static tdm_process *server;

/* Parses the request line; on a bad request answers 400 at once, with no body. */
static void http_parse(hconn *c) {
  unsigned index = 0;
  unsigned long long bytes = 0;
  long long delay_ms = 0;
  if (sscanf(c->req, "GET /%u?bytes=%llu&delay_ms=%lld HTTP/1.", &index, &bytes, &delay_ms) == 3 &&
      bytes <= (1ull << 30) && delay_ms >= 0 && delay_ms <= 60000) {
    c->index = index;
    c->bytes = bytes;
    c->due = tdm_clock_now() + delay_ms * 1000000;
    c->head_len = (size_t)snprintf(c->head, sizeof c->head,
                                   "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                   "Content-Length: %llu\r\nConnection: close\r\n\r\n",
                                   bytes);
  } else {
    c->bytes = 0;
    c->due = 0;
    c->head_len = (size_t)snprintf(c->head, sizeof c->head,
                                   "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n");
  }
  c->state = H_WAIT;
}

/* Moves a connection on as far as it can without blocking; false when it is finished. */
static bool http_step(hconn *c, uint8_t *buf) {
  if (c->state == H_READ) {
    ssize_t got = recv(c->fd, c->req + c->got, REQ_MAX - 1 - c->got, 0);
    if (got < 0) return errno == EAGAIN || errno == EINTR;
    if (got == 0) return false;
    c->got += (size_t)got;
    c->req[c->got] = '\0';
    if (strstr(c->req, "\r\n\r\n") != NULL || c->got == REQ_MAX - 1) http_parse(c);
  }
  if (c->state == H_WAIT) {
    if (tdm_clock_now() < c->due) return true;
    c->state = H_WRITE;
  }
  while (c->head_off < c->head_len) {
    ssize_t put = send(c->fd, c->head + c->head_off, c->head_len - c->head_off, MSG_NOSIGNAL);
    if (put < 0) return errno == EAGAIN || errno == EINTR;
    c->head_off += (size_t)put;
  }
  while (c->sent < c->bytes) {
    size_t n = c->bytes - c->sent < 65536 ? (size_t)(c->bytes - c->sent) : 65536;
    for (size_t i = 0; i < n; i++)
      buf[i] = demo_byte(c->index, c->sent + i);
    ssize_t put = send(c->fd, buf, n, MSG_NOSIGNAL);
    if (put < 0) return errno == EAGAIN || errno == EINTR;
    c->sent += (uint64_t)put;
  }
  return false;
}

static int http_serve(void *arg, size_t size) {
  int lfd;
  if (!demo_unpack(&lfd, sizeof lfd, arg, size)) return 2;
  static hconn conns[MAX_CONNS];
  static struct pollfd pfd[MAX_CONNS + 1];
  static uint8_t buf[65536];
  size_t n = 0;
  for (;;) {
    int64_t now = tdm_clock_now(), wait_ns = -1;
    for (size_t i = 0; i < n; i++) {
      pfd[i] = (struct pollfd){ .fd = conns[i].fd,
                                .events = conns[i].state == H_READ    ? POLLIN
                                          : conns[i].state == H_WRITE ? POLLOUT
                                                                      : 0 };
      if (conns[i].state == H_WAIT) {
        int64_t left = conns[i].due > now ? conns[i].due - now : 0;
        if (wait_ns < 0 || left < wait_ns) wait_ns = left;
      }
    }
    pfd[n] = (struct pollfd){ .fd = n < MAX_CONNS ? lfd : -1, .events = POLLIN };
    int ms = wait_ns < 0 ? -1 : (int)((wait_ns + 999999) / 1000000);
    if (poll(pfd, n + 1, ms) < 0 && errno != EINTR) return 1;
    if (pfd[n].revents & POLLIN) {
      int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) conns[n++] = (hconn){ .fd = fd, .state = H_READ };
    }
    for (size_t i = 0; i < n;) {
      bool ready = i < n && (pfd[i].revents != 0 || conns[i].state == H_WAIT);
      if (ready && pfd[i].fd == conns[i].fd && !http_step(&conns[i], buf)) {
        close(conns[i].fd);
        conns[i] = conns[--n];
        pfd[i] = pfd[n]; /* the moved connection keeps its poll result */
        continue;
      }
      i++;
    }
  }
}

int demo_http_start(uint16_t *port) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) return -errno;
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t len = sizeof addr;
  int rc = 0;
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 1024) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &len) != 0)
    rc = -errno;
  if (rc == 0) {
    tdm_process_options opt = { .daemon = true, .pass_fds = &lfd, .n_pass_fds = 1 };
    rc = tdm_process_start(&server, http_serve, &lfd, sizeof lfd, &opt);
  }
  close(lfd); /* the server has its own copy */
  if (rc == 0) *port = ntohs(addr.sin_port);
  return rc;
}

void demo_http_stop(void) {
  if (server == NULL) return;
  tdm_process_kill(server);
  tdm_process_join(server, TDM_S(10));
  tdm_process_close(server);
  server = NULL;
}

/* ---- The files ---------------------------------------------------------------------------- */

static char files_dir[160];
static char files[MAX_FILES][sizeof((demo_task *)0)->path];
static size_t n_files;

const char *demo_files_dir(void) {
  return files_dir;
}

static int write_file(const char *path, uint32_t index, uint64_t bytes) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  static uint8_t buf[65536];
  int rc = 0;
  for (uint64_t off = 0; off < bytes && rc == 0;) {
    size_t n = bytes - off < sizeof buf ? (size_t)(bytes - off) : sizeof buf;
    for (size_t i = 0; i < n; i++)
      buf[i] = demo_byte(index, off + i);
    ssize_t put = write(fd, buf, n);
    if (put < 0 && errno != EINTR) rc = -errno;
    if (put > 0) off += (uint64_t)put;
  }
  if (rc == 0 && fsync(fd) != 0) rc = -errno; /* dirty pages cannot be dropped */
  if (close(fd) != 0 && rc == 0) rc = -errno;
  return rc;
}

int demo_files_create(demo_task *tasks, size_t n, uint64_t bytes) {
  if (n > MAX_FILES) return -EINVAL;
  const char *base = getenv("TMPDIR");
  if (base == NULL || *base == '\0' || access(base, W_OK) != 0)
    base = access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp";
  int len = snprintf(files_dir, sizeof files_dir, "%s/tandem-demo.XXXXXX", base);
  if (len < 0 || (size_t)len >= sizeof files_dir || mkdtemp(files_dir) == NULL) {
    files_dir[0] = '\0';
    return len < 0 || (size_t)len >= sizeof files_dir ? -ENAMETOOLONG : -errno;
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(files[i], sizeof files[i], "%s/file-%zu", files_dir, i);
    int rc = write_file(files[i], (uint32_t)i, bytes);
    if (rc != 0) {
      n_files = i + 1;
      demo_files_remove();
      return rc;
    }
    n_files = i + 1;
    memcpy(tasks[i].path, files[i], sizeof tasks[i].path);
  }
  return 0;
}

void demo_files_drop(void) {
  for (size_t i = 0; i < n_files; i++) {
    int fd = open(files[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

double demo_files_cached(void) {
  size_t pages = 0, resident = 0;
  long page = sysconf(_SC_PAGESIZE);
  for (size_t i = 0; i < n_files; i++) {
    int fd = open(files[i], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
      if (fd >= 0) close(fd);
      return -1;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return -1;
    size_t np = ((size_t)st.st_size + (size_t)page - 1) / (size_t)page;
    unsigned char *vec = malloc(np);
    if (vec != NULL && mincore(m, (size_t)st.st_size, vec) == 0) {
      for (size_t k = 0; k < np; k++)
        resident += vec[k] & 1;
      pages += np;
    }
    free(vec);
    munmap(m, (size_t)st.st_size);
  }
  return pages == 0 ? -1 : (double)resident / (double)pages;
}

void demo_files_remove(void) {
  for (size_t i = 0; i < n_files; i++)
    unlink(files[i]);
  n_files = 0;
  if (files_dir[0] != '\0') rmdir(files_dir);
  files_dir[0] = '\0';
}
