/*
 * procs_worker.c: the process backend, worker side. Each worker is a daemon child started with
 * tdm_process_start() on tdm__procs_worker(), a library function, so that every start method
 * finds it (fork runs it as is; spawn and forkserver resolve it from libtandem's object and
 * offset like any task).
 *
 * The worker is a loop over its own task queue: it takes a command, runs it, puts a result in
 * the shared results queue, and pokes the supervisor (tdm__procs_poke) only if the supervisor
 * sleeps. Nothing else is shared with the parent but the slot, where the worker says what it
 * runs. The order of the slot's writes is the whole exactly-once protocol (procs.c tells the
 * parent's half):
 *
 *   task X:   started = now; CAS running 0 -> X; check its veto word; run; put the result;
 *             CAS running X -> 0
 *   chunk C:  item = 0; CAS running 0 -> C; per item i: started = now; item = (i, RUNNING);
 *             run; CAS item (i, RUNNING) -> (i, DONE, rc); outcome[i] = rc; after the last
 *             item: put the result; CAS running C -> 0
 *
 * The supervisor kills a worker only after it has won a CAS that sets a KILL bit on the very
 * word the worker clears with its own CAS (running X -> X|KILL, or item (i, RUNNING) ->
 * (i, RUNNING)|KILL), so exactly one of them decides whether X (or item i) ended by itself or
 * was killed. A worker whose CAS fails has been given up: it starts nothing more and waits
 * for the SIGKILL that follows. Between "CAS running 0 -> X" and running X, the worker reads
 * X's veto word (one per position in its queue, named by the command): the parent writes X's
 * id there to take X back (a cancel, or to give it to an idle worker) before it reads
 * `running` (both sequentially consistent), so either the worker sees the veto and skips X
 * (VETOED), or the parent sees X running and knows it cannot take it back.
 *
 * Functions arrive as (object, offset) and are resolved once each (a small cache), whatever
 * the start method: a fork child could use the parent's pointer, but not for a library that
 * the parent loaded after the fork.
 *
 * Map arrays are segments the worker maps when the parent sends their descriptors on the
 * socket (CTL_ADD, before the first chunk that needs them), and unmaps when told (CTL_DROP).
 * A command says how many socket messages precede it (`ctl`), so the worker reads the socket
 * only when there is something on it, and never blocks there. Arguments and results larger
 * than a queue message travel the same way, in a memfd.
 *
 * SIGINT is ignored: a Ctrl-C in the terminal reaches the whole foreground process group, and
 * it is the parent's to handle; the parent terminates its workers if it wants to.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "platform/platform.h"
#include "pool/pool.h"
#include "pool/procs.h"
#include "process/process.h"
#include "tandem/queue.h"

#define FN_CACHE    32 /* resolved functions kept */
#define EXIT_BROKEN 70 /* the worker lost a channel: it ends and the parent sees a death */

struct seg {
  uint64_t id;
  void *addr;
  size_t size;
};

struct fn_entry {
  uint64_t off;
  char *obj; /* NULL: a free entry */
  void *addr;
};

struct worker {
  struct tdm__procs_boot b;
  tdm_queue *tq, *rq;
  struct tdm__procs_hdr *h;
  size_t h_size;
  struct tdm__procs_slot *slot;
  int efd, sock;
  unsigned char *cmd; /* one command, as received */
  size_t cmd_cap;
  unsigned char *res; /* one result, as put */
  size_t res_cap;
  struct seg *segs;
  size_t n_segs, cap_segs;
  struct fn_entry fns[FN_CACHE];
  unsigned fn_next;
  unsigned char *blob; /* a TASK argument that came by memfd */
  size_t blob_size;
  uint64_t blob_id;
};

void tdm__procs_poke(struct tdm__procs_hdr *h, int efd) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&h->sleeping, memory_order_relaxed) == 0) return;
  /* One poker writes: the exchange hands the wake-up to exactly one of them. */
  if (atomic_exchange(&h->sleeping, 0) == 0) return;
  int saved = errno; /* async-signal-safe: a handler must not change errno */
  uint64_t one = 1;
  while (write(efd, &one, sizeof one) < 0 && errno == EINTR) {
  }
  errno = saved;
}

/* Given up by the supervisor (it won the KILL handshake): start nothing, wait for SIGKILL. */
static _Noreturn void wait_to_die(void) {
  for (;;)
    pause();
}

/* ---- Functions ------------------------------------------------------------------------------- */

static void *resolve(struct worker *w, const unsigned char *obj, size_t obj_len, uint64_t off) {
  for (unsigned i = 0; i < FN_CACHE; i++) {
    struct fn_entry *e = &w->fns[i];
    if (e->obj != NULL && e->off == off && strlen(e->obj) == obj_len &&
        memcmp(e->obj, obj, obj_len) == 0)
      return e->addr;
  }
  char *name = tdm__alloc(obj_len + 1);
  if (name == NULL) return NULL;
  memcpy(name, obj, obj_len);
  name[obj_len] = '\0';
  void *addr = tdm__fn_resolve(name, off);
  if (addr == NULL) {
    tdm__free(name);
    return NULL;
  }
  struct fn_entry *e = &w->fns[w->fn_next++ % FN_CACHE];
  tdm__free(e->obj);
  *e = (struct fn_entry){ off, name, addr };
  return addr;
}

/* ---- The socket ------------------------------------------------------------------------------ */

static struct seg *find_seg(struct worker *w, uint64_t id) {
  for (size_t i = 0; i < w->n_segs; i++)
    if (w->segs[i].id == id) return &w->segs[i];
  return NULL;
}

/* Maps the segment behind fd as `id`. A segment that cannot be mapped is recorded with no
 * address: the chunks that need it fail, the worker goes on. */
static void add_seg(struct worker *w, uint64_t id, int fd) {
  if (w->n_segs == w->cap_segs) {
    size_t cap = w->cap_segs > 0 ? 2 * w->cap_segs : 8;
    struct seg *s = tdm__alloc(cap * sizeof *s);
    if (s == NULL) {
      close(fd);
      return;
    }
    if (w->n_segs > 0) memcpy(s, w->segs, w->n_segs * sizeof *s);
    tdm__free(w->segs);
    w->segs = s;
    w->cap_segs = cap;
  }
  struct seg *s = &w->segs[w->n_segs++];
  *s = (struct seg){ id, NULL, 0 };
  struct stat st;
  if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      s->addr = p;
      s->size = (size_t)st.st_size;
    }
  }
  if (fd >= 0) close(fd);
}

static void drop_seg(struct worker *w, uint64_t id) {
  struct seg *s = find_seg(w, id);
  if (s == NULL) return;
  if (s->addr != NULL) munmap(s->addr, s->size);
  *s = w->segs[--w->n_segs];
}

/* Reads a memfd whole into a new buffer. 0 or a negative errno. */
static int read_blob(int fd, size_t size, unsigned char **out) {
  unsigned char *buf = tdm__alloc(size > 0 ? size : 1);
  if (buf == NULL) return -ENOMEM;
  size_t done = 0;
  while (done < size) {
    ssize_t r = pread(fd, buf + done, size - done, (off_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      tdm__free(buf);
      return r < 0 ? -errno : -EIO;
    }
    done += (size_t)r;
  }
  *out = buf;
  return 0;
}

/* Reads the `n` socket messages that precede a command. They are there already (the parent
 * sent them before it put the command), so this never waits for long. */
static void read_ctl(struct worker *w, uint32_t n) {
  for (uint32_t k = 0; k < n; k++) {
    struct tdm__procs_ctl c;
    int fd = -1;
    size_t n_fds = 0;
    ssize_t got = tdm__recv_fds(w->sock, &c, sizeof c, &fd, 1, &n_fds);
    if (got != (ssize_t)sizeof c) _exit(EXIT_BROKEN); /* the parent is gone, or a bug */
    if (n_fds == 0) fd = -1;
    switch (c.kind) {
    case TDM__CTL_ADD:
      add_seg(w, c.id, fd);
      break;
    case TDM__CTL_DROP:
      drop_seg(w, c.id);
      if (fd >= 0) close(fd);
      break;
    case TDM__CTL_BLOB:
      tdm__free(w->blob);
      w->blob = NULL;
      w->blob_id = c.id;
      w->blob_size = (size_t)c.size;
      if (fd >= 0 && read_blob(fd, w->blob_size, &w->blob) != 0) w->blob = NULL;
      if (fd >= 0) close(fd);
      break;
    default:
      if (fd >= 0) close(fd);
      break;
    }
  }
}

/* ---- Results --------------------------------------------------------------------------------- */

/* Puts a result and pokes the supervisor. A worker that cannot put has lost its parent's
 * queue: it ends, and the parent handles the death (the task in `running` is lost). */
static void put_result(struct worker *w, struct tdm__procs_res *r, const void *data, size_t size) {
  r->worker = w->b.index;
  r->gen = w->b.gen;
  memcpy(w->res, r, sizeof *r);
  if (size > 0) memcpy(w->res + sizeof *r, data, size);
  if (tdm_queue_put(w->rq, w->res, sizeof *r + size, TDM_FOREVER) != 0) _exit(EXIT_BROKEN);
  tdm__procs_poke(w->h, w->efd);
}

/* Sends a large result in a memfd on the socket. 0 or a negative errno. */
static int send_blob(struct worker *w, uint64_t id, const void *data, size_t size) {
  int fd = tdm__memfd_create("tandem-result");
  if (fd < 0) return fd;
  int r = 0;
  size_t done = 0;
  while (r == 0 && done < size) {
    ssize_t n = write(fd, (const char *)data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      r = n < 0 ? -errno : -EIO;
    else
      done += (size_t)n;
  }
  if (r == 0) {
    struct tdm__procs_ctl c = { .kind = TDM__CTL_BLOB, .id = id, .size = size };
    ssize_t s = tdm__send_fds(w->sock, &c, sizeof c, &fd, 1);
    r = s == (ssize_t)sizeof c ? 0 : s < 0 ? (int)s : -EIO;
  }
  close(fd);
  return r;
}

static void account(struct worker *w, int64_t wall, int64_t cpu) {
  struct tdm__procs_slot *s = w->slot;
  atomic_fetch_add_explicit(&s->tasks, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->busy_ns, (uint64_t)(wall > 0 ? wall : 0), memory_order_relaxed);
  atomic_fetch_add_explicit(&s->cpu_ns, (uint64_t)(cpu > 0 ? cpu : 0), memory_order_relaxed);
}

/* Starts running `id`: the CAS that the kill handshake and the vetoes are about. */
static void begin(struct worker *w, uint64_t id) {
  uint64_t idle = 0;
  if (!atomic_compare_exchange_strong(&w->slot->running, &idle, id)) wait_to_die();
}

/* Stops running `id`; a worker that lost the handshake waits for its end. */
static void end(struct worker *w, uint64_t id) {
  uint64_t mine = id;
  if (!atomic_compare_exchange_strong(&w->slot->running, &mine, 0)) wait_to_die();
}

/* ---- Tasks ----------------------------------------------------------------------------------- */

static void drop_blob(struct worker *w) {
  tdm__free(w->blob);
  w->blob = NULL;
}

static void run_task(struct worker *w, const struct tdm__procs_cmd *c, const unsigned char *obj,
                     const unsigned char *arg) {
  struct tdm__procs_res res = { .kind = TDM__RES_TASK, .id = c->id };
  void *addr = resolve(w, obj, c->obj_len, c->fn_off);
  const void *a = c->size > 0 ? arg : NULL;
  if (c->flags & TDM__CMD_ARG_FD) {
    a = w->blob_id == c->id ? w->blob : NULL;
    if (a == NULL) {
      res.flags = TDM__RES_ERROR;
      res.code = -ENOMEM;
    }
  }
  if (addr == NULL) {
    res.flags = TDM__RES_ERROR;
    res.code = TDM_ENOTASK;
  }
  atomic_store_explicit(&w->slot->started, tdm_clock_now(), memory_order_relaxed);
  begin(w, c->id);
  if (atomic_load(&w->slot->veto[(c->flags & TDM__CMD_PARITY) ? 1 : 0]) == c->id) {
    /* Taken back after it was dispatched: the parent cancelled it or runs it elsewhere. */
    end(w, c->id);
    res.kind = TDM__RES_VETOED;
    put_result(w, &res, NULL, 0);
    drop_blob(w);
    return;
  }
  if (res.flags & TDM__RES_ERROR) {
    put_result(w, &res, NULL, 0);
    end(w, c->id);
    drop_blob(w);
    return;
  }
  tdm_task_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  tdm_task task = { .max_result = (size_t)w->b.max_result };
  int64_t t0 = tdm_clock_now(), c0 = tdm__thread_cpu_ns();
  int rc = fn(&task, a, (size_t)c->size);
  res.wall_ns = (uint64_t)(tdm_clock_now() - t0);
  res.cpu_ns = (uint64_t)(tdm__thread_cpu_ns() - c0);
  res.code = rc;
  const void *data = NULL;
  size_t size = 0;
  if (rc == 0 && task.result_size > 0) {
    if (task.result_size <= w->b.inline_max) {
      data = task.result;
      size = task.result_size;
    } else {
      int r = send_blob(w, c->id, task.result, task.result_size);
      res.flags = r == 0 ? TDM__RES_FD : TDM__RES_ERROR;
      if (r != 0) res.code = r;
      res.size = task.result_size;
    }
  }
  if (!(res.flags & TDM__RES_FD)) res.size = size;
  /* Counted before the result goes: whoever sees the result sees the count. */
  account(w, (int64_t)res.wall_ns, (int64_t)res.cpu_ns);
  put_result(w, &res, data, size);
  tdm__free(task.result);
  end(w, c->id);
  drop_blob(w);
}

/* ---- Map chunks ------------------------------------------------------------------------------ */

/* The address of [off, off + len) in segment `id`, or NULL. */
static unsigned char *seg_at(struct worker *w, uint64_t id, uint64_t off, uint64_t len) {
  struct seg *s = find_seg(w, id);
  if (s == NULL || s->addr == NULL || off > s->size || len > s->size - off) return NULL;
  return (unsigned char *)s->addr + off;
}

static void run_chunk(struct worker *w, const struct tdm__procs_cmd *c, const unsigned char *obj) {
  struct tdm__procs_res res = { .kind = TDM__RES_CHUNK, .id = c->id };
  uint64_t n = c->hi; /* the chunk's items are [lo, hi); arrays are indexed from item 0 */
  void *addr = resolve(w, obj, c->obj_len, c->fn_off);
  unsigned char *in = NULL, *out = NULL, *arg = NULL;
  int32_t *rcs = (int32_t *)(void *)seg_at(w, c->rc_seg, c->rc_off, n * sizeof(int32_t));
  bool ok = rcs != NULL && c->hi > c->lo && c->hi - c->lo <= TDM__ITEM_MAX;
  if (c->in_size > 0 && (in = seg_at(w, c->in_seg, c->in_off, n * c->in_size)) == NULL) ok = false;
  if (c->out_size > 0 && (out = seg_at(w, c->out_seg, c->out_off, n * c->out_size)) == NULL)
    ok = false;
  if (c->arg_size > 0 && (arg = seg_at(w, c->arg_seg, c->arg_off, c->arg_size)) == NULL) ok = false;
  atomic_store_explicit(&w->slot->item, 0, memory_order_relaxed);
  begin(w, c->id);
  if (addr == NULL || !ok) {
    res.flags = TDM__RES_ERROR;
    res.code = addr == NULL ? TDM_ENOTASK : -ENOMEM;
    put_result(w, &res, NULL, 0);
    end(w, c->id);
    return;
  }
  tdm_map_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  bool timed = (c->flags & TDM__CMD_TIMED) != 0;
  int64_t t0 = tdm_clock_now(), c0 = tdm__thread_cpu_ns();
  /* Every item's output is zero when its function runs: one memset for the chunk costs less
   * than one call per item. */
  if (out != NULL) memset(out + c->lo * c->out_size, 0, (size_t)((c->hi - c->lo) * c->out_size));
  for (uint64_t i = c->lo; i < c->hi; i++) {
    uint64_t rel = i - c->lo;
    if (timed) atomic_store_explicit(&w->slot->started, tdm_clock_now(), memory_order_relaxed);
    /* The word before is DONE (or 0), which the supervisor never changes: a store will do. */
    atomic_store_explicit(&w->slot->item, TDM__ITEM(rel), memory_order_release);
    unsigned char *o = out != NULL ? out + i * c->out_size : NULL;
    int rc = fn(in != NULL ? in + i * c->in_size : NULL, o, arg);
    if (timed) {
      uint64_t running = TDM__ITEM(rel);
      if (!atomic_compare_exchange_strong(&w->slot->item, &running, TDM__ITEM_DONE_RC(rel, rc)))
        wait_to_die(); /* timed out: the supervisor kills this worker */
    } else {
      /* Without a timeout nobody sets KILL on an item: a store ends it, and spares the
       * locked instruction that would cost more than a small item itself. */
      atomic_store_explicit(&w->slot->item, TDM__ITEM_DONE_RC(rel, rc), memory_order_release);
    }
    rcs[i] = rc;
  }
  res.wall_ns = (uint64_t)(tdm_clock_now() - t0);
  res.cpu_ns = (uint64_t)(tdm__thread_cpu_ns() - c0);
  account(w, (int64_t)res.wall_ns, (int64_t)res.cpu_ns);
  put_result(w, &res, NULL, 0);
  end(w, c->id);
}

/* ---- Start and loop -------------------------------------------------------------------------- */

static int attach(struct worker *w) {
  const struct tdm__procs_boot *b = &w->b;
  int r = tdm_queue_attach_fd(&w->tq, b->tq_fd);
  if (r == 0) r = tdm_queue_attach_fd(&w->rq, b->rq_fd);
  close(b->tq_fd);
  close(b->rq_fd);
  if (r != 0) return r;
  struct stat st;
  if (fstat(b->seg_fd, &st) != 0 || (size_t)st.st_size < sizeof *w->h) return -EINVAL;
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, b->seg_fd, 0);
  close(b->seg_fd);
  if (p == MAP_FAILED) return -errno;
  w->h = p;
  w->h_size = (size_t)st.st_size;
  if (w->h->magic != TDM__PROCS_MAGIC || w->h->version != TDM__PROCS_LAYOUT ||
      b->index >= w->h->n_slots ||
      sizeof *w->h + (size_t)w->h->n_slots * sizeof(struct tdm__procs_slot) > w->h_size)
    return -EINVAL;
  w->slot = &w->h->slots[b->index];
  w->efd = b->efd;
  w->sock = b->sock_fd;
  w->cmd_cap = tdm_queue_max_message(w->tq);
  w->res_cap = sizeof(struct tdm__procs_res) + (size_t)b->inline_max;
  w->cmd = tdm__alloc(w->cmd_cap);
  w->res = tdm__alloc(w->res_cap);
  return w->cmd != NULL && w->res != NULL ? 0 : -ENOMEM;
}

int tdm__procs_worker(void *arg, size_t size) {
  struct worker w;
  memset(&w, 0, sizeof w);
  if (size < sizeof w.b) return EXIT_BROKEN;
  memcpy(&w.b, arg, sizeof w.b);
  const struct tdm__procs_boot *b = &w.b;
  size_t tail = (size_t)b->init_obj_len + b->fini_obj_len + b->init_size +
                (size_t)b->n_close * sizeof(int32_t);
  if (b->magic != TDM__PROCS_MAGIC || b->version != TDM__PROCS_LAYOUT || size - sizeof w.b != tail)
    return EXIT_BROKEN;
  const unsigned char *init_obj = (const unsigned char *)arg + sizeof w.b;
  const unsigned char *fini_obj = init_obj + b->init_obj_len;
  const unsigned char *init_arg = fini_obj + b->fini_obj_len;
  const unsigned char *closing = init_arg + b->init_size;

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGINT, &sa, NULL);
  /* A fork child holds copies of the parent's other pool descriptors (its siblings' sockets,
   * queues and pidfds, map segments): they would keep memory alive and sockets open. */
  for (uint32_t i = 0; i < b->n_close; i++) {
    int32_t fd;
    memcpy(&fd, closing + i * sizeof fd, sizeof fd);
    close(fd);
  }
  if (attach(&w) != 0) return EXIT_BROKEN;

  /* The initializer, then READY with its result: the parent waits for it before it sends. */
  int rc = 0;
  if (b->flags & TDM__BOOT_INIT) {
    void *addr = resolve(&w, init_obj, b->init_obj_len, b->init_off);
    if (addr == NULL) {
      rc = TDM_ENOTASK;
    } else {
      tdm_pool_init_fn init;
      memcpy(&init, &addr, sizeof init);
      rc = init(b->init_size > 0 ? init_arg : NULL, (size_t)b->init_size);
    }
  }
  struct tdm__procs_res ready = { .kind = TDM__RES_READY, .code = rc };
  put_result(&w, &ready, NULL, 0);
  if (rc != 0) return 1;

  for (;;) {
    size_t len;
    int r = tdm_queue_recv(w.tq, w.cmd, w.cmd_cap, &len, TDM_FOREVER);
    if (r != 0) return EXIT_BROKEN;
    struct tdm__procs_cmd c;
    if (len < sizeof c) return EXIT_BROKEN;
    memcpy(&c, w.cmd, sizeof c);
    size_t arg_at = (sizeof c + c.obj_len + 15) & ~(size_t)15;
    if (c.obj_len > len - sizeof c) return EXIT_BROKEN;
    read_ctl(&w, c.ctl);
    const unsigned char *obj = w.cmd + sizeof c;
    switch (c.kind) {
    case TDM__CMD_TASK:
      if (!(c.flags & TDM__CMD_ARG_FD) && (arg_at > len || c.size > len - arg_at))
        return EXIT_BROKEN;
      run_task(&w, &c, obj, w.cmd + arg_at);
      break;
    case TDM__CMD_CHUNK:
      run_chunk(&w, &c, obj);
      break;
    case TDM__CMD_CTRL:
      break;
    case TDM__CMD_STOP:
      if (b->flags & TDM__BOOT_FINI) {
        void *addr = resolve(&w, fini_obj, b->fini_obj_len, b->fini_off);
        if (addr != NULL) {
          tdm_pool_fini_fn fini;
          memcpy(&fini, &addr, sizeof fini);
          fini(b->init_size > 0 ? init_arg : NULL, (size_t)b->init_size);
        }
      }
      return 0;
    default:
      return EXIT_BROKEN;
    }
  }
}
