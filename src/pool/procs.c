/*
 * procs.c: the process backend of the pool (TDM_POOL_PROCESSES), parent side. The worker's
 * side is procs_worker.c; the structures both see are in procs.h.
 *
 * Workers. Each worker is a daemon child (tdm_process_start(), daemon = true: it dies with the
 * parent, however the parent ends) running tdm__procs_worker(). It ignores SIGINT, runs the
 * initializer, says READY (with the initializer's result) and then serves its own task queue.
 * tdm_pool_open() waits for every first worker's READY; one failed initializer fails the open
 * with TDM_EINIT, and every worker is killed and reaped. A replacement whose initializer fails
 * later breaks the pool (TDM_EINIT): pending and new tasks fail with it, running ones finish.
 *
 * Channels. One task queue per worker (parent -> worker, 8 messages: at most 2 tasks in flight,
 * plus a STOP and control nudges), one results queue (workers -> parent), a socketpair per
 * worker for descriptors, and an eventfd that wakes the supervisor. The queues are tandem
 * queues (queue.h): shared memory, robust against a process killed inside a put or a get.
 * Arguments and results up to INLINE_MAX bytes travel inside the queue messages; larger ones
 * in a memfd whose descriptor goes on the socket, so the queues' arenas stay small (a queue
 * reserves its whole arena at open) whatever max_result is. The pool segment holds one slot per
 * worker: what it runs (`running`, `item`), since when (`started`), the vetoes and its counts.
 *
 * The supervisor. One thread (the pool's only one in this process) owns the workers: it polls
 * their pidfds and the eventfd, drains the results queue, dispatches, enforces timeouts,
 * handles deaths, and starts replacements. It sleeps in ppoll() with `sleeping` set in the pool
 * segment; a worker that put a result, or a thread that submitted, writes the eventfd only when
 * it finds `sleeping` set (tdm__procs_poke), so a busy pool makes no system call per result
 * for waking. Everything the supervisor shares with the callers' threads (the pending list,
 * the workers' flights, the maps) is under one mutex `mu`; futures are ended outside it (their
 * callbacks may submit), from a list filled under it.
 *
 * Dispatch. Pending futures wait in a FIFO in this process; maps wait as a cursor over their
 * items. Each worker holds a line of at most LINE (2) commands: the one it runs and the next,
 * so that it never waits for the supervisor between two tasks (twice the throughput for tiny
 * tasks), and a cancel, a death or a timeout never strands more than one task. A task moves to
 * RUNNING (tdm__future_start, counting an attempt) when it is first in its worker's line;
 * behind another command it stays PENDING, with no attempt, until the command ahead ends
 * (promote()). Such a waiting task can be taken back (take_back()): its id goes in its veto
 * word, then `running` is read; if the worker still runs the command ahead, it will skip the
 * task, which goes back to the FIFO at once (its place in the line becomes a hole that the
 * worker skips); otherwise the worker's answer decides (VETOED: back to the FIFO). An idle
 * worker with nothing else to do takes back the tasks stuck behind long ones (steal()), and a
 * pool broken by an initializer, or a shutdown that cancels pending work, takes back every
 * waiting task. With max_tasks_per_worker, a worker is never given more than its remaining
 * quota, and a STOP follows its last command: it finishes, runs the finalizer, exits 0, and
 * the supervisor reaps it and starts a replacement. Nothing it was given can be lost that way,
 * nor can the pool hang on it (Python's gh-115634).
 *
 * Exactly once. A worker sets slot.running to the id (CAS 0 -> id) before it calls the
 * function, and clears it (CAS id -> 0) after its result put has completed. When a worker dies,
 * the supervisor first recovers the results queue (a put cut short by the death) and drains it
 * completely: every result put before the death is now delivered. Then, of that worker's
 * flights not yet answered, the one in slot.running was lost with the worker: it runs again
 * under the retry policy (tdm__future_retry, at the front of the FIFO, stats.retried), or fails
 * with TDM_EWORKER and the worker's exit code (-signal or the exit status); every other one
 * never started and goes back to the front of the FIFO as it was (PENDING, no attempt). A
 * SIGSEGV, an abort, an exit() in the task, a SIGKILL from outside and the OOM killer all take
 * this one path. With break_on_worker_death the first unexpected death breaks the pool instead
 * (TDM_EBROKEN): every worker is killed and every unfinished task fails with it.
 *
 * Killing. To stop task X (its timeout, or a cancel), the supervisor (or the cancelling thread)
 * first wins CAS running X -> X|KILL and only then sends SIGKILL; the worker's own clearing CAS
 * then fails, and it starts nothing more. So a worker is never killed for a task it has already
 * finished, and never while it runs another. A cancelled task still in a worker's line is
 * vetoed (the same veto word and order as take_back()): the worker skips it, or the canceller
 * sees it running and kills it with the handshake.
 *
 * Timeouts. The deadline of a task is the start time in its slot plus its timeout; until the
 * supervisor has seen it start, it sleeps until (dispatch time + timeout), which is never later
 * than the real deadline, and looks again. A task past its deadline is killed with the
 * handshake and fails with TDM_ETASKTIMEOUT; its worker is replaced, the others go on.
 *
 * Maps. tdm_pool_map() hands its items to the supervisor as chunks, commands that name ranges
 * [lo, hi) of arrays in shared memory: an input or output array that lies in a tandem segment
 * (tdm__shm_find) is used in place, and anything else (inputs, outputs, the map's argument and
 * the items' int32 outcomes) lives in a temporary anonymous segment. The segments' descriptors
 * go to a worker on its socket before its first chunk of the map, and a DROP follows when the
 * map ends. Without a chunk size, chunks are guided: each takes max(grain, remaining / (2 x
 * workers)) items, so they shrink as the work runs out and a dry worker always finds more.
 * The worker records the item it runs in slot.item, and ends each item by writing its return
 * value in that same word (with a CAS when items have a timeout, against the supervisor's
 * KILL), so a death loses exactly the item that was running: it fails (TDM_EWORKER, or
 * TDM_ETASKTIMEOUT when the supervisor killed it) or runs again under the retry policy, and
 * the rest of the chunk is dispatched again; no item is lost and none runs twice. When a map
 * ends its temporary segment is truncated before it is closed: its memory goes at once, even
 * if a worker forked meanwhile still holds a copy of the descriptor.
 *
 * Starting. Workers start with opt.start; TDM_START_DEFAULT is resolved at each start, so the
 * first workers fork while the caller is single-threaded and replacements, started by the
 * supervisor thread, use the forkserver. A forked worker closes the copies of the pool's other
 * descriptors that fork gave it (its siblings' sockets, queues and pidfds, map segments), whose
 * numbers its start argument lists. In AddressSanitizer builds replacements are spawned, not
 * forked (see start_method()). A start that fails (process limit, memory) is retried
 * with a backoff from 10 ms to 1 s; when no worker is alive at all and FAIL_AFTER starts fail
 * in a row, every pending task fails with the start's error (and maps end with it) rather than
 * wait forever, and the pool keeps trying for later work.
 *
 * Ending. shutdown lets the work left finish, then sends STOP to each idle worker; terminate
 * (and tdm_pool_interrupt(), from a signal handler: a flag and an eventfd write) kills every
 * worker, reaps them, and ends every unfinished task CANCELLED. When the
 * supervisor returns, no worker process is left, and close frees every segment and descriptor.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "platform/platform.h"
#include "pool/pool.h"
#include "pool/procs.h"
#include "process/process.h"
#include "shm/shm.h"
#include "tandem/queue.h"
#include "tandem/shm.h"

#define INLINE_MAX  ((size_t)32 << 10) /* larger arguments and results go by memfd */
#define OBJ_MAX     4096u              /* the longest object path a command carries */
#define TQ_CAPACITY 8u                 /* 2 tasks, a STOP and nudges */
#define LINE        2u    /* commands a worker holds at most: the one it runs, the next one */
#define MAX_WORKERS 4094u /* with the parent, the results queue's 4095 participants */
#define BACKOFF_MIN TDM_MS(10)
#define BACKOFF_MAX TDM_S(1)
#define DRAIN_BATCH 64u      /* results handled per hold of mu */
#define REAP_WAIT   TDM_S(5) /* for a dead forkserver child's exit code to come */
#define FAIL_AFTER                                                                  \
  4u                    /* failed starts in a row, with no worker alive, before the \
                           pending work fails (10 + 20 + 40 ms of backoff) */
#define GRAINS_EACH 64u /* guided map: the smallest chunk is n / (64 x workers) */
#define ALIGN(x, a) (((x) + (a)-1) & ~((size_t)(a)-1))

/* supervisor commands (procs.cmd) */
#define CMD_WORK      0x1u /* a task or a map arrived */
#define CMD_SHUTDOWN  0x2u
#define CMD_TERMINATE 0x4u
#define CMD_INTERRUPT 0x8u

enum {
  W_EMPTY,    /* no process */
  W_BOOTING,  /* started, READY not yet received */
  W_READY,    /* serving */
  W_RETIRING, /* given its last task (quota) and a STOP */
  W_STOPPING, /* given a STOP at shutdown */
  W_FAILED    /* its initializer failed: waiting for it to exit */
};

struct pmap;

/*
 * A command given to a worker and not yet answered: a task, a chunk of a map, or a hole (a
 * task taken back for sure, which the worker will skip: only its VETOED answer is awaited).
 */
struct flight {
  uint64_t id;
  struct tdm_future *f; /* a task (the backend's reference), or NULL */
  struct pmap *m;       /* a chunk: items [lo, hi) */
  size_t lo, hi;
  int64_t sent;    /* when it was dispatched: its start is no earlier */
  int64_t timeout; /* TDM_FOREVER: none */
  unsigned parity; /* its veto word */
  bool started;    /* f moved to RUNNING (first in its worker's line) */
  bool revoking;   /* vetoed to be taken back: a VETOED answer sends f back to the FIFO */
};

static bool is_hole(const struct flight *fl) {
  return fl->f == NULL && fl->m == NULL;
}

struct worker {
  int state;
  unsigned gen; /* starts of this slot */
  tdm_process *proc;
  int pidfd;
  tdm_queue *tq;
  int sock;
  struct flight fl[LINE];
  unsigned nfl;
  uint64_t dispatched; /* commands given to this process (max_tasks_per_worker) */
  uint64_t dseq;       /* commands with a flight dispatched: the parity picks the veto word */
  uint32_t ctl;        /* socket messages sent that no command has announced yet */
  uint64_t *segs;      /* map segments it has been sent */
  size_t n_segs, cap_segs;
  bool killed;    /* we killed it (timeout, cancel, terminate): not a loss */
  bool dead;      /* its pidfd said so; handled by reap_dead() */
  bool stop_owed; /* a STOP that did not fit in its queue yet */
  int init_rc;    /* its initializer's return value (READY) */
  int code;       /* its exit code, once reaped */
};

/* A range of map items to dispatch (again). */
struct range {
  size_t lo, hi;
};

/* An item that was lost with its worker, and how often. */
struct loss {
  size_t item;
  unsigned n;
};

/* A map in progress (tdm_pool_map()), under mu. */
struct pmap {
  struct pmap *next;
  struct tdm__map *m;
  uint64_t seq; /* its place among the submissions */
  const char *obj;
  uint64_t off;
  tdm_shm *tmp;      /* argument, outcomes, copies */
  bool on_scratch;   /* tmp is ps->scratch: neither dropped nor closed at the end */
  int32_t *rcs;      /* the outcomes, in tmp */
  int in_fd, out_fd; /* the caller's segments (duplicates), or -1 */
  uint64_t tmp_id, in_id, out_id;
  uint64_t in_off, out_off, rc_off, arg_off;
  size_t cursor; /* items before it have been dispatched once */
  struct range *redo;
  size_t n_redo, cap_redo;
  struct loss *losses;
  size_t n_losses, cap_losses;
  size_t unsettled;  /* items whose outcome is not known yet */
  unsigned inflight; /* its chunks in workers */
  int err;           /* 0, or what ends the whole map */
  bool done;         /* the caller may go */
};

/* The object and offset of a function, for workers that must resolve it. */
struct fn_id {
  const void *fn;
  const char *obj; /* owned by the table */
  uint64_t off;
};

/* A future to end once mu is released. */
struct ending {
  struct tdm_future *f;
  tdm_future_state state;
  int code, status;
  void *result;
  size_t size;
};

struct procs {
  tdm_pool *p;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* a map is done; the supervisor has ended */
  pthread_t sup;
  bool sup_started;
  tdm_shm *seg;
  struct tdm__procs_hdr *h;
  tdm_queue *rq;
  int efd;
  unsigned nw;
  struct worker *w;
  size_t inline_max, tq_msg, rq_msg;
  _Atomic unsigned cmd;
  /* Under mu. */
  struct tdm_future *head, *tail; /* pending futures, linked by f->next */
  struct pmap *maps;              /* in seq order */
  bool closing;                   /* shutdown: finish the work, then STOP the workers */
  bool cancel_all;                /* shutdown(cancel_pending): what comes back is cancelled */
  bool ended;                     /* the supervisor is done: no workers, no work */
  unsigned rr;                    /* where dispatch starts looking */
  uint64_t next_seg;
  /* The map scratch segment: kept between maps, so that workers keep it mapped and its pages
   * are faulted in once, not at every map. One map uses it at a time; a concurrent one gets a
   * segment of its own. */
  tdm_shm *scratch;
  uint64_t scratch_id;
  bool scratch_busy;
  /* The supervisor's (and open's, before it). */
  unsigned starts; /* for names: "<name>-<n>" */
  int64_t retry_at;
  int64_t backoff;
  int start_err;
  unsigned start_fails;
  bool start_failed_now;  /* a start failed since fail_unstartable() last looked */
  unsigned char *msg;     /* one result */
  unsigned char *cmd_buf; /* one command */
  struct pollfd *pfd;
  unsigned *pfd_w;
  struct ending *end;
  size_t n_end, cap_end;
  /* Functions seen, under fn_mu (never taken with anything else but mu before it). */
  pthread_mutex_t fn_mu;
  struct fn_id *fns;
  size_t n_fns, cap_fns;
};

static struct procs *state_of(tdm_pool *p) {
  return p->be_state;
}

/* ---- Small helpers --------------------------------------------------------------------------- */

static void poke(struct procs *ps, unsigned cmd) {
  if ((atomic_load_explicit(&ps->cmd, memory_order_relaxed) & cmd) != cmd)
    atomic_fetch_or(&ps->cmd, cmd);
  tdm__procs_poke(ps->h, ps->efd);
}

static bool is_final(const struct tdm_future *f) {
  uint32_t s = tdm__load(&f->state);
  return (s & TDM__FINISHING) != 0 || (s & TDM__STATE_MASK) >= TDM_FUTURE_DONE;
}

/* Queues f to be ended outside mu. The list has room for every future the supervisor can end
 * in one hold of mu (grown before, never under mu). */
static void end_later(struct procs *ps, struct tdm_future *f, tdm_future_state state, int code,
                      int status, void *result, size_t size) {
  TDM__REQUIRE(ps->n_end < ps->cap_end, "tandem pool: ending list overflow");
  ps->end[ps->n_end++] = (struct ending){ f, state, code, status, result, size };
}

/* Ends the futures queued by end_later() and drops the backend's references. Without mu. */
static void flush_endings(struct procs *ps) {
  for (size_t i = 0; i < ps->n_end; i++) {
    struct ending *e = &ps->end[i];
    tdm__future_finish(e->f, e->state, e->code, e->status, e->result, e->size);
    tdm__future_unref(e->f);
  }
  ps->n_end = 0;
}

/* Ends a detached list of futures (linked by next) all alike, and drops their references. */
static void end_list(struct tdm_future *f, tdm_future_state state, int code, int status) {
  while (f != NULL) {
    struct tdm_future *next = f->next;
    f->next = NULL;
    tdm__future_finish(f, state, code, status, NULL, 0);
    tdm__future_unref(f);
    f = next;
  }
}

/* RUNNING -> PENDING for a task that never left its worker's queue: not a retry, so the
 * attempt tdm__future_start() counted is taken back. False when it has ended meanwhile. */
static bool unstart(struct tdm_future *f) {
  if (!tdm__future_retry(f)) return false;
  atomic_fetch_sub_explicit(&f->attempts, 1, memory_order_relaxed);
  return true;
}

static void push_front(struct procs *ps, struct tdm_future *f) {
  f->worker = -1;
  f->next = ps->head;
  ps->head = f;
  if (ps->tail == NULL) ps->tail = f;
}

static void push_back(struct procs *ps, struct tdm_future *f) {
  f->worker = -1;
  f->next = NULL;
  if (ps->tail != NULL)
    ps->tail->next = f;
  else
    ps->head = f;
  ps->tail = f;
}

static struct tdm_future *detach_pending(struct procs *ps) {
  struct tdm_future *f = ps->head;
  ps->head = ps->tail = NULL;
  return f;
}

/*
 * Sends a task that never ran back to the front of the FIFO, as it was: PENDING, its attempt
 * (if one was counted) taken back. A future that has ended meanwhile is dropped.
 */
static void requeue(struct procs *ps, struct tdm_future *f, bool started) {
  if (started ? !unstart(f) : is_final(f)) {
    tdm__future_unref(f);
    return;
  }
  push_front(ps, f);
}

static bool grow(void **v, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t n = *cap > 0 ? *cap : 4;
  while (n < need)
    n *= 2;
  void *nv = tdm__alloc(n * elem);
  if (nv == NULL) return false;
  if (*cap > 0) memcpy(nv, *v, *cap * elem);
  tdm__free(*v);
  *v = nv;
  *cap = n;
  return true;
}

/* ---- Function identity ----------------------------------------------------------------------- */

/*
 * Finds (object, offset) for fn, from the table or from the dynamic loader. The loader is
 * asked without any lock of ours held: a library constructor that submits to this pool while
 * the loader holds its own lock must not find us waiting for that lock under mu.
 */
static int locate(struct procs *ps, const void *fn, const char **obj, uint64_t *off) {
  pthread_mutex_lock(&ps->fn_mu);
  for (size_t i = 0; i < ps->n_fns; i++) {
    if (ps->fns[i].fn == fn) {
      *obj = ps->fns[i].obj;
      *off = ps->fns[i].off;
      pthread_mutex_unlock(&ps->fn_mu);
      return 0;
    }
  }
  pthread_mutex_unlock(&ps->fn_mu);
  const char *name;
  uint64_t o;
  int r = tdm__fn_locate(fn, &name, &o);
  if (r != 0) return r;
  char *copy = tdm__strdup(name);
  if (copy == NULL) return -ENOMEM;
  if (strlen(copy) > OBJ_MAX) {
    tdm__free(copy);
    return TDM_ENOTASK;
  }
  pthread_mutex_lock(&ps->fn_mu);
  for (size_t i = 0; i < ps->n_fns; i++) {
    if (ps->fns[i].fn == fn) { /* another thread was first */
      *obj = ps->fns[i].obj;
      *off = ps->fns[i].off;
      pthread_mutex_unlock(&ps->fn_mu);
      tdm__free(copy);
      return 0;
    }
  }
  if (!grow((void **)&ps->fns, &ps->cap_fns, ps->n_fns + 1, sizeof *ps->fns)) {
    pthread_mutex_unlock(&ps->fn_mu);
    tdm__free(copy);
    return -ENOMEM;
  }
  /* Entries are never removed, so the strings stay valid for the pool's life. */
  ps->fns[ps->n_fns++] = (struct fn_id){ fn, copy, o };
  pthread_mutex_unlock(&ps->fn_mu);
  *obj = copy;
  *off = o;
  return 0;
}

static const void *task_fn_addr(tdm_task_fn fn) {
  const void *a;
  memcpy(&a, &fn, sizeof a);
  return a;
}

/* ---- The socket ------------------------------------------------------------------------------ */

/* Sends one control message (and fd, if >= 0) to worker w without waiting. 0 or an errno. */
static int send_ctl(struct worker *w, uint32_t kind, uint64_t id, uint64_t size, int fd) {
  struct tdm__procs_ctl c = { .kind = kind, .id = id, .size = size };
  ssize_t r;
  struct iovec iov = { &c, sizeof c };
  r = tdm__sendmsg_fds(w->sock, &iov, 1, fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0, MSG_DONTWAIT);
  if (r < 0) return (int)r;
  if ((size_t)r != sizeof c) return -EIO; /* a seqpacket socket sends all or nothing */
  w->ctl++;
  return 0;
}

/* Writes `size` bytes into a new memfd. Returns the descriptor or a negative errno. */
static int make_blob(const void *data, size_t size) {
  int fd = tdm__memfd_create("tandem-arg");
  if (fd < 0) return fd;
  size_t done = 0;
  while (done < size) {
    ssize_t n = write(fd, (const char *)data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? -errno : -EIO;
      close(fd);
      return e;
    }
    done += (size_t)n;
  }
  return fd;
}

/* Reads the memfd of a large result (sent on the socket before its result message). */
static int recv_blob(struct worker *w, uint64_t id, size_t size, void **out) {
  struct tdm__procs_ctl c;
  int fd = -1;
  size_t n_fds = 0;
  ssize_t got = tdm__recv_fds(w->sock, &c, sizeof c, &fd, 1, &n_fds);
  if (got != (ssize_t)sizeof c || n_fds != 1 || c.kind != TDM__CTL_BLOB || c.id != id ||
      c.size != size) {
    if (n_fds == 1) close(fd);
    return -EPROTO;
  }
  unsigned char *buf = tdm__alloc(size > 0 ? size : 1);
  int r = buf != NULL ? 0 : -ENOMEM;
  for (size_t done = 0; r == 0 && done < size;) {
    ssize_t n = pread(fd, buf + done, size - done, (off_t)done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      r = n < 0 ? -errno : -EIO;
    else
      done += (size_t)n;
  }
  close(fd);
  if (r != 0) {
    tdm__free(buf);
    return r;
  }
  *out = buf;
  return 0;
}

/* ---- Workers: starting and releasing ----------------------------------------------------------
 */

static bool has_seg(const struct worker *w, uint64_t id) {
  for (size_t i = 0; i < w->n_segs; i++)
    if (w->segs[i] == id) return true;
  return false;
}

/* Puts a command without waiting: the queue has room for everything dispatch allows. */
static int put_cmd(struct procs *ps, struct worker *w, struct tdm__procs_cmd *c, const char *obj,
                   const void *arg, size_t arg_len) {
  c->ctl = w->ctl;
  size_t at = ALIGN(sizeof *c + c->obj_len, 16);
  size_t len = at + arg_len;
  unsigned char *b = ps->cmd_buf;
  memcpy(b, c, sizeof *c);
  if (c->obj_len > 0) memcpy(b + sizeof *c, obj, c->obj_len);
  memset(b + sizeof *c + c->obj_len, 0, at - sizeof *c - c->obj_len);
  if (arg_len > 0) memcpy(b + at, arg, arg_len);
  int r = tdm_queue_put(w->tq, b, len, 0);
  if (r == 0) w->ctl = 0;
  return r;
}

/* A CTRL nudge that makes an idle worker read its socket. If the queue is full the worker is
 * reading it: the messages ride with the next command. */
static void put_nudge(struct procs *ps, struct worker *w) {
  struct tdm__procs_cmd c = { .kind = TDM__CMD_CTRL };
  (void)put_cmd(ps, w, &c, NULL, NULL, 0);
}

/* A STOP (finalizer, exit 0), owed until it fits in the worker's queue. */
static void put_stop(struct procs *ps, struct worker *w) {
  struct tdm__procs_cmd c = { .kind = TDM__CMD_STOP };
  w->stop_owed = put_cmd(ps, w, &c, NULL, NULL, 0) != 0;
}

static void add_fd(int32_t *fds, size_t *n, size_t cap, int fd) {
  if (fd >= 0 && *n < cap) fds[(*n)++] = fd;
}

/* The pool descriptors a fork child inherits and must close (all but its own pass_fds). */
static size_t fork_close_list(struct procs *ps, int32_t *fds, size_t cap) {
  size_t n = 0;
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL) continue;
    add_fd(fds, &n, cap, w->pidfd);
    add_fd(fds, &n, cap, tdm_queue_fd(w->tq));
    add_fd(fds, &n, cap, w->sock);
  }
  for (struct pmap *m = ps->maps; m != NULL; m = m->next) {
    if (m->tmp != NULL) add_fd(fds, &n, cap, tdm_shm_fd(m->tmp));
    add_fd(fds, &n, cap, m->in_fd);
    add_fd(fds, &n, cap, m->out_fd);
  }
  return n;
}

/* The size of the close list's room. */
static size_t fork_close_cap(struct procs *ps) {
  size_t n = 3 * (size_t)ps->nw;
  for (struct pmap *m = ps->maps; m != NULL; m = m->next)
    n += 3;
  return n;
}

#if defined(__SANITIZE_ADDRESS__)
#define TDM__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TDM__ASAN 1
#endif
#endif

/*
 * The start method for the next worker: opt.start, with TDM_START_DEFAULT resolved now. In
 * AddressSanitizer builds a worker is not forked from the supervisor thread: GCC 12's ASan does
 * not take its thread registry's lock around fork(), so a fork child whose parent had another
 * thread in that lock hangs when it starts the daemon's watcher thread. Those replacements are
 * spawned instead.
 */
static tdm_start_method start_method(struct procs *ps) {
  tdm_start_method m = ps->p->opt.start;
  if (m == TDM_START_DEFAULT) m = tdm_process_start_method();
#ifdef TDM__ASAN
  if (m == TDM_START_FORK && ps->sup_started) m = TDM_START_SPAWN;
#endif
  return m;
}

/*
 * Starts a worker in slot i (EMPTY). Called without mu, which it takes only to read the maps
 * (the fork close list) and to publish the slot: the start itself (a fork, or a spawn's exec)
 * runs without it, as nothing but the supervisor (or open, before it) changes a slot. Returns 0
 * or the error of tdm_process_start().
 */
static int start_worker(struct procs *ps, unsigned i) {
  tdm_pool *p = ps->p;
  struct worker *w = &ps->w[i];
  tdm_start_method method = start_method(ps);
  tdm_queue_options qo = {
    .capacity = TQ_CAPACITY, .max_message = ps->tq_msg, .slot_payload = 256, .max_processes = 4
  };
  tdm_queue *tq;
  int r = tdm_queue_open(&tq, &qo);
  if (r != 0) return r;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    r = -errno;
    tdm_queue_close(tq);
    return r;
  }
  const char *init_obj = "", *fini_obj = "";
  uint64_t init_off = 0, fini_off = 0;
  uint16_t flags = 0;
  if (p->opt.initializer != NULL) {
    const void *a;
    memcpy(&a, &p->opt.initializer, sizeof a);
    if ((r = locate(ps, a, &init_obj, &init_off)) != 0) goto fail;
    flags |= TDM__BOOT_INIT;
  }
  if (p->opt.finalizer != NULL) {
    const void *a;
    memcpy(&a, &p->opt.finalizer, sizeof a);
    if ((r = locate(ps, a, &fini_obj, &fini_off)) != 0) goto fail;
    flags |= TDM__BOOT_FINI;
  }
  size_t n_close = 0, close_cap = 0;
  int32_t *close_fds = NULL;
  if (method == TDM_START_FORK) {
    pthread_mutex_lock(&ps->mu);
    close_cap = fork_close_cap(ps) + 1;
    close_fds = tdm__calloc(close_cap, sizeof *close_fds);
    if (close_fds != NULL) {
      n_close = fork_close_list(ps, close_fds, close_cap);
      close_fds[n_close++] = sv[0];
    }
    pthread_mutex_unlock(&ps->mu);
    if (close_fds == NULL) {
      r = -ENOMEM;
      goto fail;
    }
  }
  struct tdm__procs_boot b = { .magic = TDM__PROCS_MAGIC,
                               .version = TDM__PROCS_LAYOUT,
                               .flags = flags,
                               .index = i,
                               .gen = w->gen + 1,
                               .tq_fd = tdm_queue_fd(tq),
                               .rq_fd = tdm_queue_fd(ps->rq),
                               .seg_fd = tdm_shm_fd(ps->seg),
                               .efd = ps->efd,
                               .sock_fd = sv[1],
                               .n_close = (uint32_t)n_close,
                               .max_result = p->opt.max_result,
                               .inline_max = ps->inline_max,
                               .init_off = init_off,
                               .fini_off = fini_off,
                               .init_obj_len = (uint32_t)strlen(init_obj),
                               .fini_obj_len = (uint32_t)strlen(fini_obj),
                               .init_size = p->opt.init_size };
  size_t len =
      sizeof b + b.init_obj_len + b.fini_obj_len + p->opt.init_size + n_close * sizeof(int32_t);
  unsigned char *arg = tdm__alloc(len);
  if (arg == NULL) {
    tdm__free(close_fds);
    r = -ENOMEM;
    goto fail;
  }
  unsigned char *q = arg;
  memcpy(q, &b, sizeof b);
  q += sizeof b;
  memcpy(q, init_obj, b.init_obj_len);
  q += b.init_obj_len;
  memcpy(q, fini_obj, b.fini_obj_len);
  q += b.fini_obj_len;
  if (p->opt.init_size > 0) memcpy(q, p->opt.init_arg, p->opt.init_size);
  q += p->opt.init_size;
  if (n_close > 0) memcpy(q, close_fds, n_close * sizeof(int32_t));
  tdm__free(close_fds);

  /* A fresh slot: nothing running, nothing vetoed, no counts. */
  struct tdm__procs_slot *s = &ps->h->slots[i];
  atomic_store(&s->running, 0);
  atomic_store(&s->item, 0);
  atomic_store(&s->started, 0);
  atomic_store(&s->veto[0], 0);
  atomic_store(&s->veto[1], 0);
  atomic_store(&s->tasks, 0);
  atomic_store(&s->busy_ns, 0);
  atomic_store(&s->cpu_ns, 0);

  char name[256];
  snprintf(name, sizeof name, "%s-%u", p->opt.name, ++ps->starts);
  int pass[5] = { b.tq_fd, b.rq_fd, b.seg_fd, b.efd, b.sock_fd };
  tdm_process_options po = {
    .name = name, .start = method, .daemon = true, .pass_fds = pass, .n_pass_fds = 5
  };
  tdm_process *proc;
  r = tdm_process_start(&proc, tdm__procs_worker, arg, len, &po);
  tdm__free(arg);
  if (r != 0) goto fail;
  close(sv[1]);
  pthread_mutex_lock(&ps->mu);
  w->state = W_BOOTING;
  w->gen++;
  w->proc = proc;
  w->pidfd = tdm_process_sentinel(proc);
  w->tq = tq;
  w->sock = sv[0];
  w->nfl = 0;
  w->dispatched = 0;
  w->ctl = 0;
  w->n_segs = 0;
  w->killed = false;
  w->dead = false;
  w->stop_owed = false;
  w->init_rc = 0;
  w->code = 0;
  pthread_mutex_unlock(&ps->mu);
  atomic_fetch_add(&p->c.workers_started, 1);
  return 0;
fail:
  close(sv[0]);
  close(sv[1]);
  tdm_queue_close(tq);
  return r;
}

/* Collects a dead (or killed) worker's exit code. Without mu: only the supervisor reaps. */
static void reap(struct worker *w) {
  int code = 0;
  if (tdm_process_join(w->proc, REAP_WAIT) != 0 || tdm_process_exitcode(w->proc, &code) != 0)
    code = 0; /* a forkserver child whose forkserver died: its code is lost */
  w->code = code;
}

/* Frees what a reaped worker held; the slot becomes EMPTY. Under mu. */
static void release(struct worker *w) {
  if (w->proc != NULL) {
    if (tdm_process_close(w->proc) != 0) {
      /* Still running (a worker we never saw die): make sure, then close. */
      (void)tdm_process_kill(w->proc);
      (void)tdm_process_join(w->proc, TDM_FOREVER);
      (void)tdm_process_close(w->proc);
    }
  }
  if (w->tq != NULL) tdm_queue_close(w->tq);
  if (w->sock >= 0) close(w->sock);
  w->proc = NULL;
  w->tq = NULL;
  w->sock = -1;
  w->pidfd = -1;
  w->nfl = 0;
  w->n_segs = 0;
  w->state = W_EMPTY;
  w->dead = false;
}

/* The handshake: kill the worker for the command `id` only if it still runs it. */
static bool kill_for(struct procs *ps, unsigned i, uint64_t id) {
  struct worker *w = &ps->w[i];
  uint64_t expect = id;
  if (!atomic_compare_exchange_strong(&ps->h->slots[i].running, &expect, id | TDM__PROCS_KILL))
    return false;
  w->killed = true;
  (void)tdm_process_kill(w->proc);
  return true;
}

/* ---- Maps: settling -------------------------------------------------------------------------- */

/* Items [lo, hi) did not run: they go back to be dispatched (or, if the map has failed,
 * marked -ECANCELED when it ends). */
static void add_redo(struct pmap *pm, size_t lo, size_t hi) {
  if (lo >= hi) return;
  if (!grow((void **)&pm->redo, &pm->cap_redo, pm->n_redo + 1, sizeof *pm->redo)) {
    /* Out of memory: the items cannot be rescheduled, so they fail, and so does the map. */
    for (size_t i = lo; i < hi; i++)
      pm->rcs[i] = -ENOMEM;
    pm->unsettled -= hi - lo;
    if (pm->err == 0) pm->err = -ENOMEM;
    return;
  }
  pm->redo[pm->n_redo++] = (struct range){ lo, hi };
}

/* How often item i was lost, counting this time. */
static unsigned note_loss(struct pmap *pm, size_t i) {
  for (size_t k = 0; k < pm->n_losses; k++)
    if (pm->losses[k].item == i) return ++pm->losses[k].n;
  if (!grow((void **)&pm->losses, &pm->cap_losses, pm->n_losses + 1, sizeof *pm->losses))
    return UINT32_MAX; /* no memory to count: no retry */
  pm->losses[pm->n_losses++] = (struct loss){ i, 1 };
  return 1;
}

static void remove_map(struct procs *ps, struct pmap *pm) {
  for (struct pmap **pp = &ps->maps; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == pm) {
      *pp = pm->next;
      break;
    }
  }
  pm->next = NULL;
}

/* Tells every worker that has pm's segments to unmap them. */
static void drop_segments(struct procs *ps, struct pmap *pm) {
  uint64_t ids[3] = { pm->on_scratch ? 0 : pm->tmp_id, pm->in_id, pm->out_id };
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL || w->dead) continue;
    bool sent = false;
    for (unsigned k = 0; k < 3; k++) {
      if (ids[k] == 0) continue;
      for (size_t j = 0; j < w->n_segs; j++) {
        if (w->segs[j] != ids[k]) continue;
        w->segs[j] = w->segs[--w->n_segs];
        sent |= send_ctl(w, TDM__CTL_DROP, ids[k], 0, -1) == 0;
        break;
      }
    }
    /* A busy worker reads them with its next command; an idle one needs a nudge. */
    if (sent && w->nfl == 0 && w->state == W_READY) put_nudge(ps, w);
  }
}

/* Ends pm when nothing of it is left in a worker and its items are settled (or it failed). */
static void map_check_done(struct procs *ps, struct pmap *pm) {
  if (pm->done || pm->inflight > 0 || (pm->unsettled > 0 && pm->err == 0)) return;
  if (pm->err != 0) {
    /* Items never run: in the redo list and after the cursor. */
    for (size_t k = 0; k < pm->n_redo; k++)
      for (size_t i = pm->redo[k].lo; i < pm->redo[k].hi; i++)
        pm->rcs[i] = -ECANCELED;
    for (size_t i = pm->cursor; i < pm->m->n; i++)
      pm->rcs[i] = -ECANCELED;
    pm->n_redo = 0;
    pm->cursor = pm->m->n;
    pm->unsettled = 0;
  }
  pm->done = true;
  remove_map(ps, pm);
  drop_segments(ps, pm);
  pthread_cond_broadcast(&ps->cv);
}

static void map_fail(struct procs *ps, struct pmap *pm, int err) {
  if (pm->err == 0) pm->err = err;
  map_check_done(ps, pm);
}

/*
 * Settles the chunk of a worker that died, from its slot: items before the one recorded are
 * done; that one returned (DONE), was killed for its timeout (KILL), or was lost: it runs
 * again under the retry policy, or takes `lost` (TDM_EWORKER, or -ECANCELED when we killed
 * the worker); the items after it did not run. `started`: the chunk is the one in
 * slot.running.
 */
static void settle_chunk_death(struct procs *ps, unsigned wi, struct flight *fl, bool started,
                               int lost) {
  struct pmap *pm = fl->m;
  tdm_pool *p = ps->p;
  pm->inflight--;
  uint64_t it = started ? atomic_load(&ps->h->slots[wi].item) : 0;
  uint64_t rel1 = TDM__ITEM_REL(it);
  if (rel1 == 0) {
    add_redo(pm, fl->lo, fl->hi);
    map_check_done(ps, pm);
    return;
  }
  size_t k = fl->lo + (size_t)rel1 - 1;
  size_t ran = (size_t)rel1 - 1;
  if (it & TDM__ITEM_DONE) {
    pm->rcs[k] = TDM__ITEM_RC(it);
    ran++;
  } else if (it & TDM__ITEM_KILL) {
    pm->rcs[k] = TDM_ETASKTIMEOUT;
    atomic_fetch_add(&p->c.timed_out, 1);
    ran++;
  } else if (lost == TDM_EWORKER && pm->err == 0 && !p->opt.break_on_worker_death &&
             note_loss(pm, k) <= p->opt.retries) {
    atomic_fetch_add(&p->c.retried, 1);
    add_redo(pm, k, k + 1);
  } else {
    pm->rcs[k] = lost;
    ran++;
  }
  pm->unsettled -= ran;
  atomic_fetch_add(&p->c.items, ran);
  add_redo(pm, k + 1, fl->hi);
  map_check_done(ps, pm);
}

/* ---- Results --------------------------------------------------------------------------------- */

/* The oldest flight with this id (a hole comes before the same task given again). */
static int find_flight(struct worker *w, uint64_t id) {
  for (unsigned k = 0; k < w->nfl; k++)
    if (w->fl[k].id == id) return (int)k;
  return -1;
}

/* Whether a hole with k's id comes before flight k: then `running` == that id is the hole. */
static bool hole_before(const struct worker *w, unsigned k) {
  for (unsigned j = 0; j < k; j++)
    if (is_hole(&w->fl[j]) && w->fl[j].id == w->fl[k].id) return true;
  return false;
}

/* The flight of task f on worker w (not a hole), or -1. */
static int find_task(struct worker *w, const struct tdm_future *f) {
  for (unsigned k = 0; k < w->nfl; k++)
    if (w->fl[k].f == f) return (int)k;
  return -1;
}

/*
 * The first task in a worker's line (only holes before it) is about to run: PENDING ->
 * RUNNING, counting the attempt. The tasks behind it stay PENDING, so a task never shows as
 * running, nor counts an attempt, while it waits behind another.
 */
static void promote(struct worker *w) {
  for (unsigned k = 0; k < w->nfl; k++) {
    struct flight *fl = &w->fl[k];
    if (is_hole(fl)) continue;
    if (fl->f != NULL && !fl->started && !fl->revoking) fl->started = tdm__future_start(fl->f);
    return;
  }
}

/*
 * Takes back task k of worker i, which waits behind flight 0: its veto word gets its id, then
 * `running` is read (both sequentially consistent; the worker sets `running` and then reads
 * the veto). If flight 0 still runs, the worker has not reached k and will skip it: the task
 * goes back to the FIFO now and k becomes a hole. Otherwise the worker may have started it:
 * k is marked `revoking`, and its answer decides (VETOED: back to the FIFO; a result: it ran).
 * Returns whether the task is back. Under mu.
 */
static bool take_back(struct procs *ps, unsigned i, unsigned k) {
  struct worker *w = &ps->w[i];
  struct flight *fl = &w->fl[k];
  struct tdm__procs_slot *s = &ps->h->slots[i];
  if (fl->f == NULL || fl->revoking || k == 0 || is_hole(&w->fl[0])) return false;
  atomic_store(&s->veto[fl->parity], fl->id);
  if (atomic_load(&s->running) != w->fl[0].id) {
    fl->revoking = true;
    return false;
  }
  struct tdm_future *f = fl->f;
  bool started = fl->started;
  fl->f = NULL;
  fl->started = false;
  requeue(ps, f, started);
  return true;
}

/* Takes back every task that waits behind another in a worker's line. Under mu. */
static void take_back_waiting(struct procs *ps) {
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL || w->dead) continue;
    for (unsigned k = 1; k < w->nfl; k++)
      if (w->fl[k].f != NULL && !w->fl[k].started && !w->fl[k].revoking) (void)take_back(ps, i, k);
  }
}

static void remove_flight(struct worker *w, unsigned k) {
  for (unsigned j = k + 1; j < w->nfl; j++)
    w->fl[j - 1] = w->fl[j];
  w->nfl--;
}

static void count_time(tdm_pool *p, const struct tdm__procs_res *r) {
  atomic_fetch_add_explicit(&p->c.busy_ns, r->wall_ns, memory_order_relaxed);
  atomic_fetch_add_explicit(&p->c.cpu_ns, r->cpu_ns, memory_order_relaxed);
}

/* Handles one result message (in ps->msg, len bytes). Under mu. */
static void handle_result(struct procs *ps, size_t len) {
  tdm_pool *p = ps->p;
  struct tdm__procs_res r;
  if (len < sizeof r) return;
  memcpy(&r, ps->msg, sizeof r);
  if (r.worker >= ps->nw) return;
  struct worker *w = &ps->w[r.worker];
  if (r.gen != w->gen || w->proc == NULL) return; /* an earlier start of that slot */
  if (r.kind == TDM__RES_READY) {
    if (w->state == W_BOOTING) {
      w->state = r.code == 0 ? W_READY : W_FAILED;
      w->init_rc = r.code;
      if (r.code == 0) {
        ps->start_fails = 0;
        ps->backoff = 0;
      }
    }
    return;
  }
  int k = find_flight(w, r.id);
  if (k < 0) return;
  struct flight fl = w->fl[k];
  remove_flight(w, (unsigned)k);
  if (r.kind == TDM__RES_CHUNK) {
    struct pmap *pm = fl.m;
    pm->inflight--;
    if (r.flags & TDM__RES_ERROR) {
      /* The worker could not run it (mapping, function): redo it, and fail the map. */
      add_redo(pm, fl.lo, fl.hi);
      map_fail(ps, pm, r.code);
    } else {
      size_t n = fl.hi - fl.lo;
      pm->unsettled -= n;
      atomic_fetch_add(&p->c.items, n);
      atomic_fetch_add(&p->c.done, 1);
      count_time(p, &r);
      map_check_done(ps, pm);
    }
  } else if (r.kind == TDM__RES_VETOED) {
    /* Skipped: cancelled (ended already), or taken back (a hole, or revoking: to the FIFO). */
    if (fl.f != NULL) requeue(ps, fl.f, fl.started);
  } else if (fl.f != NULL) {
    /* It ran before it was seen first in line (taken back too late): count its attempt. */
    if (!fl.started) (void)tdm__future_start(fl.f);
    void *data = NULL;
    size_t size = 0;
    int rc = 0;
    if (r.flags & TDM__RES_ERROR) {
      rc = r.code;
    } else if (r.code == 0 && r.size > 0) {
      size = (size_t)r.size;
      if (r.flags & TDM__RES_FD) {
        rc = recv_blob(w, r.id, size, &data);
      } else if (len - sizeof r < size || (data = tdm__alloc(size)) == NULL) {
        rc = len - sizeof r < size ? -EPROTO : -ENOMEM;
      } else {
        memcpy(data, ps->msg + sizeof r, size);
      }
    }
    count_time(p, &r);
    if (rc != 0)
      end_later(ps, fl.f, TDM_FUTURE_FAILED, rc, 0, NULL, 0);
    else if (r.code != 0)
      end_later(ps, fl.f, TDM_FUTURE_FAILED, TDM_ETASK, r.code, NULL, 0);
    else
      end_later(ps, fl.f, TDM_FUTURE_DONE, 0, 0, data, data != NULL ? size : 0);
  } else if (r.flags & TDM__RES_FD) {
    void *data = NULL; /* a hole never runs; should one, its memfd must not stay on the socket */
    if (recv_blob(w, r.id, (size_t)r.size, &data) == 0) tdm__free(data);
  }
  promote(w);
  /* Socket messages (DROPs) that no command carried: an idle worker reads them now. */
  if (w->nfl == 0 && w->ctl > 0 && w->state == W_READY) put_nudge(ps, w);
}

/* Takes every result there is. Returns whether there was one. */
static bool drain(struct procs *ps) {
  bool any = false;
  for (;;) {
    unsigned n = 0;
    pthread_mutex_lock(&ps->mu);
    while (n < DRAIN_BATCH) {
      size_t len;
      if (tdm_queue_recv(ps->rq, ps->msg, ps->rq_msg, &len, 0) != 0) break;
      handle_result(ps, len);
      n++;
    }
    pthread_mutex_unlock(&ps->mu);
    flush_endings(ps);
    if (n > 0) any = true;
    if (n < DRAIN_BATCH) return any;
  }
}

/* A start failed (or a worker died before it was ready): wait longer before the next one. */
static void start_failed(struct procs *ps, int err, int64_t now) {
  ps->start_err = err;
  ps->start_fails++;
  ps->start_failed_now = true;
  ps->backoff = ps->backoff == 0 ? BACKOFF_MIN : ps->backoff * 2;
  if (ps->backoff > BACKOFF_MAX) ps->backoff = BACKOFF_MAX;
  ps->retry_at = now + ps->backoff;
}

/* ---- Deaths ---------------------------------------------------------------------------------- */

static void break_pool(struct procs *ps, int code, int status);

/* Handles the death of worker i (reaped, results drained). Under mu. */
static void on_death(struct procs *ps, unsigned i) {
  tdm_pool *p = ps->p;
  struct worker *w = &ps->w[i];
  struct tdm__procs_slot *s = &ps->h->slots[i];
  uint64_t run = atomic_load(&s->running) & ~TDM__PROCS_KILL;
  bool orderly = (w->state == W_RETIRING || w->state == W_STOPPING) && w->code == 0 && !w->killed &&
                 w->nfl == 0;
  bool failed_init = w->state == W_FAILED;
  bool lost = !orderly && !w->killed && !failed_init;
  bool breaking = lost && p->opt.break_on_worker_death;
  /* Flights back to the front of the FIFO in their order: the last one first. */
  for (unsigned k = w->nfl; k-- > 0;) {
    struct flight *fl = &w->fl[k];
    if (is_hole(fl)) continue;
    bool running = fl->id == run && !hole_before(w, k);
    if (fl->m != NULL) {
      settle_chunk_death(ps, i, fl, running, w->killed ? -ECANCELED : TDM_EWORKER);
      continue;
    }
    struct tdm_future *f = fl->f;
    if (is_final(f)) {
      tdm__future_unref(f); /* cancelled or timed out: ended already */
    } else if (!running) {
      requeue(ps, f, fl->started);
    } else if (!fl->started && !tdm__future_start(f)) {
      tdm__future_unref(f); /* it ran, unseen, and was cancelled meanwhile */
    } else if (breaking) {
      end_later(ps, f, TDM_FUTURE_FAILED, TDM_EBROKEN, 0, NULL, 0);
    } else if (atomic_load(&f->attempts) <= p->opt.retries && tdm__future_retry(f)) {
      atomic_fetch_add(&p->c.retried, 1);
      push_front(ps, f);
    } else {
      end_later(ps, f, TDM_FUTURE_FAILED, TDM_EWORKER, w->code, NULL, 0);
    }
  }
  w->nfl = 0;
  /* An initializer that failed, or crashed its worker: the pool cannot make workers. */
  bool init_died = w->state == W_BOOTING && !w->killed && p->opt.initializer != NULL;
  /* Without an initializer, a worker that died before it was ready could not start: the next
   * start waits, so that a worker that can never start is not restarted in a loop. */
  if (w->state == W_BOOTING && !w->killed && p->opt.initializer == NULL)
    start_failed(ps, TDM_ECHILDINIT, tdm_clock_now());
  int init_status = failed_init ? w->init_rc : w->code;
  release(w);
  if (lost) atomic_fetch_add(&p->c.workers_lost, 1);
  if (failed_init || init_died)
    break_pool(ps, TDM_EINIT, init_status);
  else if (breaking)
    break_pool(ps, TDM_EBROKEN, 0);
}

/* Reaps the workers whose pidfds said they ended, after taking every result they put. */
static bool reap_dead(struct procs *ps) {
  bool any = false;
  for (unsigned i = 0; i < ps->nw; i++)
    any |= ps->w[i].dead;
  if (!any) return false;
  for (unsigned i = 0; i < ps->nw; i++)
    if (ps->w[i].dead) reap(&ps->w[i]);
  /* A put that the death cut short holds a slot: recover it, then every result is there. */
  (void)tdm_queue_recover(ps->rq);
  drain(ps);
  pthread_mutex_lock(&ps->mu);
  for (unsigned i = 0; i < ps->nw; i++)
    if (ps->w[i].dead) on_death(ps, i);
  pthread_mutex_unlock(&ps->mu);
  flush_endings(ps);
  return true;
}

/* ---- Breaking and terminating ---------------------------------------------------------------- */

/*
 * Kills every worker and ends everything unfinished with `code` (terminate: -ECANCELED, every
 * task CANCELLED; break: TDM_EBROKEN, every task FAILED). Called by the supervisor
 * without mu.
 */
static void kill_all(struct procs *ps, int code) {
  pthread_mutex_lock(&ps->mu);
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL) continue;
    w->killed = true;
    (void)tdm_process_kill(w->proc);
  }
  pthread_mutex_unlock(&ps->mu);
  for (unsigned i = 0; i < ps->nw; i++)
    if (ps->w[i].proc != NULL) reap(&ps->w[i]);
  (void)tdm_queue_recover(ps->rq);
  drain(ps);
  pthread_mutex_lock(&ps->mu);
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL) continue;
    uint64_t run = atomic_load(&ps->h->slots[i].running) & ~TDM__PROCS_KILL;
    for (unsigned k = 0; k < w->nfl; k++) {
      struct flight *fl = &w->fl[k];
      if (is_hole(fl)) continue;
      bool running = fl->id == run && !hole_before(w, k);
      struct tdm_future *f = fl->f;
      if (fl->m != NULL) {
        if (fl->m->err == 0) fl->m->err = code;
        settle_chunk_death(ps, i, fl, running, -ECANCELED);
      } else if (is_final(f)) {
        tdm__future_unref(f);
      } else if (running || fl->started) {
        /* It ran, or was RUNNING for all to see: its attempt counts (seen or not), and it ends
         * as terminate ends every task (CANCELLED), or fails with the break. */
        if (!fl->started) (void)tdm__future_start(f);
        end_later(ps, f, code == -ECANCELED ? TDM_FUTURE_CANCELLED : TDM_FUTURE_FAILED, code, 0,
                  NULL, 0);
      } else {
        /* Never started: cancelled by terminate (no attempt), or failed with the break. */
        end_later(ps, f, code == -ECANCELED ? TDM_FUTURE_CANCELLED : TDM_FUTURE_FAILED, code, 0,
                  NULL, 0);
      }
    }
    w->nfl = 0;
    release(w);
  }
  struct tdm_future *pending = detach_pending(ps);
  for (struct pmap *pm = ps->maps, *nx; pm != NULL; pm = nx) {
    nx = pm->next;
    map_fail(ps, pm, code);
  }
  pthread_mutex_unlock(&ps->mu);
  flush_endings(ps);
  if (code == -ECANCELED)
    end_list(pending, TDM_FUTURE_CANCELLED, -ECANCELED, 0);
  else
    end_list(pending, TDM_FUTURE_FAILED, code, 0);
}

/* Records the pool broken; the supervisor acts on it (see settle_waiting()). Under mu. */
static void break_pool(struct procs *ps, int code, int status) {
  tdm__pool_break(ps->p, code, code == TDM_EINIT ? status : 0);
}

/* ---- Dispatch -------------------------------------------------------------------------------- */

static unsigned ready_workers(struct procs *ps) {
  unsigned n = 0;
  for (unsigned i = 0; i < ps->nw; i++)
    n += ps->w[i].state == W_READY;
  return n;
}

static bool map_has_work(const struct pmap *pm) {
  return pm->err == 0 && (pm->n_redo > 0 || pm->cursor < pm->m->n);
}

static struct pmap *first_map(struct procs *ps) {
  for (struct pmap *pm = ps->maps; pm != NULL; pm = pm->next)
    if (map_has_work(pm)) return pm;
  return NULL;
}

/* Sends the segments a chunk of pm needs to worker w. 0, or an error: the worker cannot take
 * a chunk now. */
static int send_segments(struct worker *w, struct pmap *pm) {
  uint64_t ids[3] = { pm->tmp_id, pm->in_id, pm->out_id };
  int fds[3] = { tdm_shm_fd(pm->tmp), pm->in_fd, pm->out_fd };
  for (unsigned k = 0; k < 3; k++) {
    if (ids[k] == 0 || has_seg(w, ids[k])) continue;
    if (!grow((void **)&w->segs, &w->cap_segs, w->n_segs + 1, sizeof *w->segs)) return -ENOMEM;
    int r = send_ctl(w, TDM__CTL_ADD, ids[k], 0, fds[k]);
    if (r != 0) return r;
    w->segs[w->n_segs++] = ids[k];
  }
  return 0;
}

/* Gives worker i one chunk of pm. False when it could not. */
static bool dispatch_chunk(struct procs *ps, unsigned i, struct pmap *pm) {
  tdm_pool *p = ps->p;
  struct worker *w = &ps->w[i];
  size_t lo, hi;
  const struct tdm__map *m = pm->m;
  size_t want;
  if (m->chunk > 0) {
    want = m->chunk;
  } else {
    size_t workers = ready_workers(ps);
    if (workers == 0) workers = 1;
    size_t grain = m->n / ((size_t)GRAINS_EACH * ps->nw);
    if (grain == 0) grain = 1;
    size_t left = m->n - pm->cursor;
    want = left / (2 * workers);
    if (want < grain) want = grain;
  }
  if (want > TDM__ITEM_MAX) want = TDM__ITEM_MAX;
  bool from_redo = pm->n_redo > 0;
  if (from_redo) {
    struct range *rg = &pm->redo[pm->n_redo - 1];
    lo = rg->lo;
    hi = rg->hi - rg->lo > want ? rg->lo + want : rg->hi;
  } else {
    lo = pm->cursor;
    hi = m->n - lo > want ? lo + want : m->n;
  }
  if (send_segments(w, pm) != 0) return false;
  struct tdm__procs_cmd c = { .kind = TDM__CMD_CHUNK,
                              .id = atomic_fetch_add(&p->next_id, 1) + 1,
                              .fn_off = pm->off,
                              .obj_len = (uint32_t)strlen(pm->obj),
                              .flags = p->opt.task_timeout != TDM_FOREVER ? TDM__CMD_TIMED : 0,
                              .lo = lo,
                              .hi = hi,
                              .in_seg = m->in_size > 0 ? (pm->in_id ? pm->in_id : pm->tmp_id) : 0,
                              .in_off = pm->in_off,
                              .in_size = m->in_size,
                              .out_seg =
                                  m->out_size > 0 ? (pm->out_id ? pm->out_id : pm->tmp_id) : 0,
                              .out_off = pm->out_off,
                              .out_size = m->out_size,
                              .rc_seg = pm->tmp_id,
                              .rc_off = pm->rc_off,
                              .arg_seg = m->arg_size > 0 ? pm->tmp_id : 0,
                              .arg_off = pm->arg_off,
                              .arg_size = m->arg_size };
  unsigned parity = (unsigned)(w->dseq & 1);
  atomic_store(&ps->h->slots[i].veto[parity], 0);
  if (put_cmd(ps, w, &c, pm->obj, NULL, 0) != 0) return false;
  w->dseq++;
  if (from_redo) {
    struct range *rg = &pm->redo[pm->n_redo - 1];
    rg->lo = hi;
    if (rg->lo >= rg->hi) pm->n_redo--;
  } else {
    pm->cursor = hi;
  }
  pm->inflight++;
  w->fl[w->nfl++] = (struct flight){ .id = c.id,
                                     .m = pm,
                                     .lo = lo,
                                     .hi = hi,
                                     .sent = tdm_clock_now(),
                                     .timeout = p->opt.task_timeout,
                                     .parity = parity };
  return true;
}

/* Whether nothing but holes is ahead in worker w's line: the next command runs at once. */
static bool line_empty(const struct worker *w) {
  for (unsigned k = 0; k < w->nfl; k++)
    if (!is_hole(&w->fl[k])) return false;
  return true;
}

/*
 * Gives worker i the task f: RUNNING already when `first` (nothing ahead of it), PENDING when
 * it waits behind another command. False when the worker could not take it (f is back at the
 * front of the FIFO) or f has failed (by end_later).
 */
static bool dispatch_task(struct procs *ps, unsigned i, struct tdm_future *f, bool first) {
  struct worker *w = &ps->w[i];
  const char *obj;
  uint64_t off;
  /* Found at submit: a lookup in the table, which never forgets. */
  int r = locate(ps, task_fn_addr(f->fn), &obj, &off);
  if (r != 0) {
    end_later(ps, f, TDM_FUTURE_FAILED, r, 0, NULL, 0);
    return false;
  }
  unsigned parity = (unsigned)(w->dseq & 1);
  struct tdm__procs_cmd c = { .kind = TDM__CMD_TASK,
                              .id = f->id,
                              .fn_off = off,
                              .obj_len = (uint32_t)strlen(obj),
                              .flags = parity ? TDM__CMD_PARITY : 0,
                              .size = f->size };
  const void *arg = f->arg;
  size_t arg_len = f->size;
  if (f->size > ps->inline_max) {
    int fd = make_blob(f->arg, f->size);
    r = fd < 0 ? fd : send_ctl(w, TDM__CTL_BLOB, f->id, f->size, fd);
    if (fd >= 0) close(fd);
    if (r != 0) {
      end_later(ps, f, TDM_FUTURE_FAILED, r == -EAGAIN ? -ENOMEM : r, 0, NULL, 0);
      return false;
    }
    c.flags |= TDM__CMD_ARG_FD;
    arg = NULL;
    arg_len = 0;
  }
  /* The flight that last held this position has been answered: its veto is stale. */
  atomic_store(&ps->h->slots[i].veto[parity], 0);
  if (put_cmd(ps, w, &c, obj, arg, arg_len) != 0) {
    requeue(ps, f, first);
    return false;
  }
  w->dseq++;
  f->worker = (int)i;
  w->fl[w->nfl++] = (struct flight){ .id = f->id,
                                     .f = f,
                                     .sent = tdm_clock_now(),
                                     .timeout = f->timeout,
                                     .parity = parity,
                                     .started = first };
  return true;
}

/* Gives worker i one command: 1 given, 0 no work at all, -1 not to this worker now. */
static int give(struct procs *ps, unsigned i) {
  tdm_pool *p = ps->p;
  struct worker *w = &ps->w[i];
  uint64_t quota = p->opt.max_tasks_per_worker;
  for (;;) {
    struct tdm_future *f = ps->head;
    struct pmap *pm = first_map(ps);
    if (f == NULL && pm == NULL) return 0;
    bool ok;
    if (f != NULL && (pm == NULL || f->id < pm->seq)) {
      ps->head = f->next;
      if (ps->head == NULL) ps->tail = NULL;
      f->next = NULL;
      bool first = line_empty(w);
      if (first ? !tdm__future_start(f) : is_final(f)) {
        tdm__future_unref(f); /* cancelled while pending */
        continue;
      }
      ok = dispatch_task(ps, i, f, first);
      if (!ok && ps->n_end > 0) return 1; /* it failed: the ending counts as progress */
    } else {
      ok = dispatch_chunk(ps, i, pm);
    }
    if (!ok) return -1;
    w->dispatched++;
    if (quota > 0 && w->dispatched >= quota) {
      put_stop(ps, w);
      w->state = W_RETIRING;
    }
    return 1;
  }
}

/*
 * Idle workers with nothing left to take take the tasks that wait behind a running command in
 * other workers' lines, so that no task waits behind a long one while a worker idles. One pass
 * over the workers: victims in order, each paired with the next idle worker.
 */
static bool steal(struct procs *ps) {
  bool any = false;
  unsigned idle = 0;
  for (unsigned j = 0; j < ps->nw; j++) {
    struct worker *v = &ps->w[j];
    if (v->proc == NULL || v->dead || v->killed || v->nfl < LINE) continue;
    struct flight *fl = &v->fl[LINE - 1];
    if (fl->f == NULL || fl->started || fl->revoking || is_final(fl->f)) continue;
    while (idle < ps->nw &&
           (ps->w[idle].state != W_READY || ps->w[idle].nfl != 0 || ps->w[idle].dead || idle == j))
      idle++;
    if (idle == ps->nw || ps->n_end + 2 > ps->cap_end) break;
    if (take_back(ps, j, LINE - 1) && give(ps, idle) == 1) any = true;
  }
  return any;
}

/*
 * Gives free workers work, oldest first: each idle worker one command, then each a second one
 * to run next (so that a worker never waits for the supervisor between two tasks); then idle
 * workers take back tasks waiting behind long ones.
 */
static bool dispatch(struct procs *ps) {
  tdm_pool *p = ps->p;
  if (atomic_load(&p->broken) != 0) return false;
  bool any = false, dry = false;
  for (unsigned pass = 0; pass < LINE && !dry; pass++) {
    for (unsigned j = 0; j < ps->nw && !dry; j++) {
      unsigned i = (ps->rr + j) % ps->nw;
      struct worker *w = &ps->w[i];
      if (w->state != W_READY || w->nfl != pass || w->dead) continue;
      if (ps->n_end + 2 > ps->cap_end) return any; /* flush first */
      int r = give(ps, i);
      if (r > 0) any = true;
      if (r == 0) dry = true;
    }
  }
  ps->rr = (ps->rr + 1) % ps->nw;
  if (ps->head != NULL || first_map(ps) != NULL) return any;
  return steal(ps) || any;
}

/* ---- Timeouts -------------------------------------------------------------------------------- */

static int64_t add_time(int64_t t, int64_t d) {
  return t > INT64_MAX - d ? TDM__NEVER : t + d;
}

/*
 * Kills what has run past its deadline, with the handshake, and returns the next time to look
 * (TDM__NEVER). A command not seen running yet cannot end before now + its timeout, which is
 * when the supervisor looks again: never later than its real deadline. Under mu.
 */
static int64_t check_timeouts(struct procs *ps, int64_t now) {
  int64_t next = TDM__NEVER;
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL || w->killed || w->dead) continue;
    struct tdm__procs_slot *s = &ps->h->slots[i];
    for (unsigned k = 0; k < w->nfl; k++) {
      struct flight *fl = &w->fl[k];
      if (fl->timeout == TDM_FOREVER || is_hole(fl) || hole_before(w, k)) continue;
      int64_t at = add_time(now, fl->timeout);
      if (atomic_load(&s->running) == fl->id) {
        uint64_t it = fl->m != NULL ? atomic_load(&s->item) : 0;
        bool timed =
            fl->m == NULL || (TDM__ITEM_REL(it) > 0 && !(it & (TDM__ITEM_DONE | TDM__ITEM_KILL)));
        if (timed) at = add_time(atomic_load(&s->started), fl->timeout);
        if (timed && now >= at) {
          if (fl->m == NULL) {
            if (kill_for(ps, i, fl->id)) {
              /* The flight keeps the backend's reference until the death is handled. */
              tdm__future_ref(fl->f);
              end_later(ps, fl->f, TDM_FUTURE_FAILED, TDM_ETASKTIMEOUT, 0, NULL, 0);
            }
          } else if (atomic_compare_exchange_strong(&s->item, &it, it | TDM__ITEM_KILL)) {
            w->killed = true;
            (void)tdm_process_kill(w->proc);
          }
          break;
        }
      }
      if (at < next) next = at;
    }
  }
  return next;
}

/* ---- Workers: replacing ---------------------------------------------------------------------- */

static bool work_left(struct procs *ps) {
  if (ps->head != NULL) return true;
  for (struct pmap *pm = ps->maps; pm != NULL; pm = pm->next)
    if (map_has_work(pm)) return true;
  return false;
}

static unsigned live_workers(struct procs *ps) {
  unsigned n = 0;
  for (unsigned i = 0; i < ps->nw; i++)
    n += ps->w[i].proc != NULL;
  return n;
}

/*
 * Starts workers for the empty slots (with mu held by the caller only around the slot's
 * publication). When nothing can start and no worker lives, the pending work fails with the
 * start's error instead of waiting for ever.
 */
static bool replace_workers(struct procs *ps, int64_t now) {
  tdm_pool *p = ps->p;
  bool any = false;
  if (atomic_load(&p->broken) != 0 || now < ps->retry_at) return false;
  for (unsigned i = 0; i < ps->nw; i++) {
    if (ps->w[i].state != W_EMPTY) continue;
    pthread_mutex_lock(&ps->mu);
    bool need = !ps->closing || work_left(ps);
    pthread_mutex_unlock(&ps->mu);
    if (!need) return any;
    int r = start_worker(ps, i);
    if (r == 0) {
      atomic_fetch_add(&p->c.workers_replaced, 1);
      any = true;
      continue;
    }
    start_failed(ps, r, now);
    return any;
  }
  return any;
}

/* With no worker alive and FAIL_AFTER failed starts in a row, the work waiting fails with the
 * last start's error instead of waiting for ever; work that comes later waits for the next
 * try, and fails only if that one fails too. */
static void fail_unstartable(struct procs *ps) {
  bool now = ps->start_failed_now;
  ps->start_failed_now = false;
  if (!now || ps->start_fails < FAIL_AFTER) return;
  pthread_mutex_lock(&ps->mu);
  if (live_workers(ps) != 0) {
    pthread_mutex_unlock(&ps->mu);
    return;
  }
  int r = ps->start_err;
  struct tdm_future *pending = detach_pending(ps);
  for (struct pmap *pm = ps->maps, *nx; pm != NULL; pm = nx) {
    nx = pm->next;
    map_fail(ps, pm, r);
  }
  pthread_mutex_unlock(&ps->mu);
  end_list(pending, TDM_FUTURE_FAILED, r, 0);
}

/* ---- Waiting --------------------------------------------------------------------------------- */

/*
 * Sleeps until the eventfd is written, a worker ends, or `timeout` (ns; negative: none) passes,
 * and marks the workers that ended. With a timeout of 0 it only looks.
 */
static void wait_events(struct procs *ps, int64_t timeout) {
  nfds_t n = 0;
  ps->pfd[n++] = (struct pollfd){ .fd = ps->efd, .events = POLLIN };
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL || w->dead) continue;
    ps->pfd_w[n] = i;
    ps->pfd[n++] = (struct pollfd){ .fd = w->pidfd, .events = POLLIN };
  }
  if (timeout != 0) {
    atomic_store(&ps->h->sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&ps->cmd) != 0 || tdm_queue_ready(ps->rq)) timeout = 0;
  }
  struct timespec ts = { .tv_sec = (time_t)(timeout / TDM_S(1)),
                         .tv_nsec = (long)(timeout % TDM_S(1)) };
  int r = ppoll(ps->pfd, n, timeout < 0 ? NULL : &ts, NULL);
  atomic_store(&ps->h->sleeping, 0);
  if (r <= 0) return;
  if (ps->pfd[0].revents != 0) {
    uint64_t v;
    while (read(ps->efd, &v, sizeof v) < 0 && errno == EINTR) {
    }
  }
  for (nfds_t k = 1; k < n; k++)
    if (ps->pfd[k].revents != 0) ps->w[ps->pfd_w[k]].dead = true;
}

/* ---- The supervisor -------------------------------------------------------------------------- */

/*
 * After the pool broke (EINIT lets running tasks finish; EBROKEN killed everyone already), or
 * after shutdown(cancel_pending): what waits, in the FIFO or behind a running command, fails
 * with the break's code or is cancelled.
 */
static void settle_waiting(struct procs *ps) {
  tdm_pool *p = ps->p;
  int code = atomic_load(&p->broken);
  pthread_mutex_lock(&ps->mu);
  if (code == 0 && !ps->cancel_all) {
    pthread_mutex_unlock(&ps->mu);
    return;
  }
  take_back_waiting(ps);
  struct tdm_future *pending = detach_pending(ps);
  if (code != 0) {
    for (struct pmap *pm = ps->maps, *nx; pm != NULL; pm = nx) {
      nx = pm->next;
      map_fail(ps, pm, code);
    }
  }
  pthread_mutex_unlock(&ps->mu);
  if (code != 0)
    end_list(pending, TDM_FUTURE_FAILED, code, tdm__pool_broken_status(ps->p));
  else
    end_list(pending, TDM_FUTURE_CANCELLED, -ECANCELED, 0);
}

/* Shutdown: STOP the idle workers once no work is left; true when every worker has gone. */
static bool wind_down(struct procs *ps) {
  if (!ps->closing) return false;
  bool left = work_left(ps) && atomic_load(&ps->p->broken) == 0;
  bool live = false;
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL) continue;
    live = true;
    if (!left && w->state == W_READY && w->nfl == 0) {
      put_stop(ps, w);
      w->state = W_STOPPING;
    }
  }
  return !live && !left;
}

static void *supervise(void *arg) {
  struct procs *ps = arg;
  tdm_pool *p = ps->p;
  tdm__set_os_thread_name("tdm-pool-sup");
  bool progress = true;
  int64_t next = TDM__NEVER;
  for (;;) {
    int64_t timeout = 0;
    if (!progress) {
      int64_t now = tdm_clock_now();
      timeout = next == TDM__NEVER ? -1 : next > now ? next - now : 0;
    }
    wait_events(ps, timeout);
    progress = false;
    unsigned cmd = atomic_exchange(&ps->cmd, 0);
    if (cmd & (CMD_TERMINATE | CMD_INTERRUPT)) {
      atomic_store(&p->closed, true);
      pthread_mutex_lock(&ps->mu);
      ps->closing = true;
      pthread_mutex_unlock(&ps->mu);
      kill_all(ps, -ECANCELED);
      break;
    }
    progress |= drain(ps);
    progress |= reap_dead(ps);
    if (atomic_load(&p->broken) == TDM_EBROKEN && live_workers(ps) > 0) {
      kill_all(ps, TDM_EBROKEN);
      progress = true;
    }
    settle_waiting(ps);
    int64_t now = tdm_clock_now();
    progress |= replace_workers(ps, now);
    fail_unstartable(ps);
    pthread_mutex_lock(&ps->mu);
    next = check_timeouts(ps, now);
    if (ps->n_end > 0) progress = true;
    for (unsigned i = 0; i < ps->nw; i++)
      if (ps->w[i].stop_owed && ps->w[i].proc != NULL && !ps->w[i].dead) put_stop(ps, &ps->w[i]);
    progress |= dispatch(ps);
    bool done = wind_down(ps);
    for (unsigned i = 0; i < ps->nw; i++)
      if (ps->w[i].state == W_EMPTY && ps->retry_at > now && ps->retry_at < next)
        next = ps->retry_at;
    pthread_mutex_unlock(&ps->mu);
    flush_endings(ps);
    if (done) break;
  }
  pthread_mutex_lock(&ps->mu);
  ps->ended = true;
  ps->closing = true;
  struct tdm_future *pending = detach_pending(ps);
  for (struct pmap *pm = ps->maps, *nx; pm != NULL; pm = nx) {
    nx = pm->next;
    map_fail(ps, pm, -ECANCELED);
  }
  pthread_cond_broadcast(&ps->cv);
  pthread_mutex_unlock(&ps->mu);
  end_list(pending, TDM_FUTURE_CANCELLED, -ECANCELED, 0);
  return NULL;
}

/* ---- The backend table ----------------------------------------------------------------------- */

static void destroy(struct procs *ps) {
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc != NULL) {
      (void)tdm_process_kill(w->proc);
      (void)tdm_process_join(w->proc, TDM_FOREVER);
    }
    release(w);
    tdm__free(w->segs);
  }
  tdm__free(ps->w);
  if (ps->rq != NULL) tdm_queue_close(ps->rq);
  if (ps->seg != NULL) tdm_shm_close(ps->seg);
  if (ps->scratch != NULL) {
    (void)ftruncate(tdm_shm_fd(ps->scratch), 0);
    tdm_shm_close(ps->scratch);
  }
  if (ps->efd >= 0) close(ps->efd);
  for (size_t i = 0; i < ps->n_fns; i++)
    tdm__free((void *)(uintptr_t)ps->fns[i].obj);
  tdm__free(ps->fns);
  tdm__free(ps->msg);
  tdm__free(ps->cmd_buf);
  tdm__free(ps->pfd);
  tdm__free(ps->pfd_w);
  tdm__free(ps->end);
  pthread_mutex_destroy(&ps->mu);
  pthread_mutex_destroy(&ps->fn_mu);
  pthread_cond_destroy(&ps->cv);
  tdm__free(ps);
}

/* Waits for the first workers' READY. 0, TDM_EINIT, or TDM_ECHILDINIT (one died unready). */
static int await_ready(struct procs *ps) {
  for (;;) {
    unsigned booting = 0;
    for (unsigned i = 0; i < ps->nw; i++) {
      struct worker *w = &ps->w[i];
      if (w->state == W_FAILED) return TDM_EINIT;
      if (w->dead) return ps->p->opt.initializer != NULL ? TDM_EINIT : TDM_ECHILDINIT;
      booting += w->state == W_BOOTING;
    }
    if (booting == 0) return 0;
    wait_events(ps, -1);
    (void)atomic_exchange(&ps->cmd, 0);
    drain(ps);
  }
}

static int procs_open(tdm_pool *p) {
  unsigned nw = p->opt.workers;
  if (nw == 0 || nw > MAX_WORKERS) return -EINVAL;
  struct procs *ps = tdm__calloc(1, sizeof *ps);
  if (ps == NULL) return -ENOMEM;
  ps->p = p;
  ps->nw = nw;
  ps->efd = -1;
  pthread_mutex_init(&ps->mu, NULL);
  pthread_mutex_init(&ps->fn_mu, NULL);
  pthread_cond_init(&ps->cv, NULL);
  ps->inline_max = p->opt.max_result < INLINE_MAX ? p->opt.max_result : INLINE_MAX;
  ps->tq_msg = ALIGN(sizeof(struct tdm__procs_cmd) + OBJ_MAX, 16) + ps->inline_max;
  ps->rq_msg = sizeof(struct tdm__procs_res) + ps->inline_max;
  ps->msg = tdm__alloc(ps->rq_msg);
  ps->cmd_buf = tdm__alloc(ps->tq_msg);
  ps->w = tdm__calloc(nw, sizeof *ps->w);
  ps->pfd = tdm__calloc(nw + 1, sizeof *ps->pfd);
  ps->pfd_w = tdm__calloc(nw + 1, sizeof *ps->pfd_w);
  ps->cap_end = 2 * (size_t)nw + DRAIN_BATCH + 4;
  ps->end = tdm__calloc(ps->cap_end, sizeof *ps->end);
  int r = -ENOMEM;
  if (ps->msg == NULL || ps->cmd_buf == NULL || ps->w == NULL || ps->pfd == NULL ||
      ps->pfd_w == NULL || ps->end == NULL)
    goto fail;
  for (unsigned i = 0; i < nw; i++) {
    ps->w[i].sock = -1;
    ps->w[i].pidfd = -1;
  }
  ps->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ps->efd < 0) {
    r = -errno;
    goto fail;
  }
  size_t seg_size = sizeof(struct tdm__procs_hdr) + (size_t)nw * sizeof(struct tdm__procs_slot);
  if ((r = tdm_shm_create(&ps->seg, NULL, seg_size, NULL)) != 0) goto fail;
  ps->h = tdm_shm_addr(ps->seg);
  ps->h->magic = TDM__PROCS_MAGIC;
  ps->h->version = TDM__PROCS_LAYOUT;
  ps->h->n_slots = nw;
  size_t cap = 4 * (size_t)nw + 16;
  size_t arena_msgs = 2 * (size_t)nw < 32 ? 2 * (size_t)nw : 32;
  tdm_queue_options qo = { .capacity = cap,
                           .max_message = ps->rq_msg,
                           .max_bytes = (ps->rq_msg + 64) * (arena_msgs < 2 ? 2 : arena_msgs),
                           .slot_payload = 128,
                           .max_processes = nw + 8 < 4095 ? nw + 8 : 4095 };
  if ((r = tdm_queue_open(&ps->rq, &qo)) != 0) goto fail;
  p->be_state = ps;
  for (unsigned i = 0; i < nw; i++)
    if ((r = start_worker(ps, i)) != 0) goto fail_workers;
  if ((r = await_ready(ps)) != 0) goto fail_workers;
  /* The supervisor takes no signal meant for the program's own threads. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  r = pthread_create(&ps->sup, NULL, supervise, ps);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r != 0) {
    r = -EAGAIN;
    goto fail_workers;
  }
  ps->sup_started = true;
  return 0;
fail_workers:
  p->be_state = NULL;
fail:
  if (ps->w != NULL) {
    for (unsigned i = 0; i < nw; i++)
      if (ps->w[i].proc != NULL) ps->w[i].killed = true;
  }
  destroy(ps);
  return r;
}

static int procs_submit(tdm_pool *p, struct tdm_future *f) {
  struct procs *ps = state_of(p);
  const char *obj;
  uint64_t off;
  int r = locate(ps, task_fn_addr(f->fn), &obj, &off);
  if (r != 0) return r;
  pthread_mutex_lock(&ps->mu);
  if (ps->ended || ps->closing) {
    pthread_mutex_unlock(&ps->mu);
    return atomic_load(&p->broken) != 0 ? atomic_load(&p->broken) : -EPIPE;
  }
  push_back(ps, f);
  pthread_mutex_unlock(&ps->mu);
  poke(ps, CMD_WORK);
  return 0;
}

static int procs_cancel_running(tdm_pool *p, struct tdm_future *f) {
  struct procs *ps = state_of(p);
  /* Ending it first decides the race with its result: whoever ends it first wins. */
  if (!tdm__future_finish(f, TDM_FUTURE_CANCELLED, -ECANCELED, 0, NULL, 0)) return -EALREADY;
  pthread_mutex_lock(&ps->mu);
  int i = f->worker;
  if (i >= 0 && find_task(&ps->w[i], f) >= 0 && !ps->w[i].killed) {
    struct worker *w = &ps->w[i];
    struct tdm__procs_slot *s = &ps->h->slots[i];
    struct flight *fl = &w->fl[find_task(w, f)];
    if (!kill_for(ps, (unsigned)i, f->id)) {
      /* Queued behind another command: veto it. The worker reads the vetoes after it sets
       * `running` (seq_cst), we read `running` after the veto (seq_cst): if we do not see it
       * running, it will see the veto. */
      atomic_store(&s->veto[fl->parity], f->id);
      if (atomic_load(&s->running) == f->id) (void)kill_for(ps, (unsigned)i, f->id);
    }
  }
  pthread_mutex_unlock(&ps->mu);
  return 0;
}

/*
 * f was PENDING and the front end has cancelled it. In the FIFO it is dropped when its turn
 * comes; waiting in a worker's line, it is vetoed (and the worker killed with the handshake in
 * the instant where it had just started it anyway).
 */
static void procs_cancelled_pending(tdm_pool *p, struct tdm_future *f) {
  struct procs *ps = state_of(p);
  pthread_mutex_lock(&ps->mu);
  int i = f->worker;
  int k = i >= 0 ? find_task(&ps->w[i], f) : -1;
  if (k >= 0 && !ps->w[i].killed) {
    struct tdm__procs_slot *s = &ps->h->slots[i];
    atomic_store(&s->veto[ps->w[i].fl[k].parity], f->id);
    if (atomic_load(&s->running) == f->id) (void)kill_for(ps, (unsigned)i, f->id);
  }
  pthread_mutex_unlock(&ps->mu);
}

static int procs_map(tdm_pool *p, struct tdm__map *m) {
  struct procs *ps = state_of(p);
  const void *fn;
  memcpy(&fn, &m->fn, sizeof fn);
  struct pmap *pm = tdm__calloc(1, sizeof *pm);
  if (pm == NULL) return -ENOMEM;
  pm->m = m;
  pm->in_fd = pm->out_fd = -1;
  int r = locate(ps, fn, &pm->obj, &pm->off);
  size_t n = m->n, in_bytes = n * m->in_size, out_bytes = n * m->out_size;
  size_t off_in = 0, off_out = 0;
  int found_in = 0, found_out = 0;
  if (r == 0 && in_bytes > 0) {
    found_in = tdm__shm_find(m->in, in_bytes, &pm->in_fd, &off_in);
    if (found_in < 0) r = found_in;
  }
  if (r == 0 && out_bytes > 0) {
    found_out = tdm__shm_find(m->out, out_bytes, &pm->out_fd, &off_out);
    if (found_out < 0) r = found_out;
  }
  /* The temporary segment: argument, outcomes, then the arrays that are not in place. */
  size_t at = 0;
  pm->arg_off = at;
  at = ALIGN(at + m->arg_size, 64);
  pm->rc_off = at;
  at = ALIGN(at + n * sizeof(int32_t), 64);
  size_t tmp_in = at;
  if (found_in == 0) at = ALIGN(at + in_bytes, 64);
  size_t tmp_out = at;
  if (found_out == 0) at = ALIGN(at + out_bytes, 64);
  if (at == 0) at = 64;
  tdm_shm *old = NULL;
  if (r == 0) {
    pthread_mutex_lock(&ps->mu);
    if (!ps->scratch_busy && ps->scratch != NULL && tdm_shm_size(ps->scratch) >= at) {
      pm->tmp = ps->scratch;
      pm->tmp_id = ps->scratch_id;
      pm->on_scratch = true;
      ps->scratch_busy = true;
    }
    pthread_mutex_unlock(&ps->mu);
    if (pm->tmp == NULL) r = tdm_shm_create(&pm->tmp, NULL, at, NULL);
    if (r == 0 && !pm->on_scratch) {
      /* A free scratch too small (or none): this segment takes its place. */
      pthread_mutex_lock(&ps->mu);
      if (!ps->scratch_busy) {
        if (ps->scratch != NULL) {
          struct pmap gone = { .tmp_id = ps->scratch_id };
          drop_segments(ps, &gone);
          old = ps->scratch;
        }
        ps->scratch = pm->tmp;
        ps->scratch_id = pm->tmp_id = ++ps->next_seg;
        ps->scratch_busy = true;
        pm->on_scratch = true;
      }
      pthread_mutex_unlock(&ps->mu);
    }
  }
  if (old != NULL) {
    (void)ftruncate(tdm_shm_fd(old), 0);
    tdm_shm_close(old);
  }
  if (r != 0) {
    if (pm->in_fd >= 0) close(pm->in_fd);
    if (pm->out_fd >= 0) close(pm->out_fd);
    tdm__free(pm);
    return r;
  }
  unsigned char *base = tdm_shm_addr(pm->tmp);
  if (m->arg_size > 0) memcpy(base + pm->arg_off, m->arg, m->arg_size);
  pm->rcs = (int32_t *)(void *)(base + pm->rc_off);
  /* A reused scratch still holds the last map's outcomes. */
  if (pm->on_scratch) memset(pm->rcs, 0, n * sizeof(int32_t));
  pm->in_off = found_in ? off_in : tmp_in;
  pm->out_off = found_out ? off_out : tmp_out;
  if (found_in == 0 && in_bytes > 0) memcpy(base + tmp_in, m->in, in_bytes);

  pthread_mutex_lock(&ps->mu);
  if (ps->ended || ps->closing || atomic_load(&p->broken) != 0) {
    r = atomic_load(&p->broken) != 0 ? atomic_load(&p->broken) : -EPIPE;
    pthread_mutex_unlock(&ps->mu);
  } else {
    pm->seq = atomic_fetch_add(&p->next_id, 1) + 1;
    if (!pm->on_scratch) pm->tmp_id = ++ps->next_seg;
    pm->in_id = found_in ? ++ps->next_seg : 0;
    pm->out_id = found_out ? ++ps->next_seg : 0;
    pm->unsettled = n;
    struct pmap **pp = &ps->maps;
    while (*pp != NULL)
      pp = &(*pp)->next;
    *pp = pm;
    pthread_mutex_unlock(&ps->mu);
    poke(ps, CMD_WORK);
    pthread_mutex_lock(&ps->mu);
    while (!pm->done)
      pthread_cond_wait(&ps->cv, &ps->mu);
    pthread_mutex_unlock(&ps->mu);
    r = pm->err;
    size_t failed = 0;
    for (size_t i = 0; i < n; i++) {
      int rc = pm->rcs[i];
      failed += rc != 0;
      if (m->errors != NULL) m->errors[i] = rc;
    }
    atomic_store(&m->failed, failed);
    if (found_out == 0 && out_bytes > 0) memcpy(m->out, base + tmp_out, out_bytes);
  }
  if (pm->on_scratch) {
    pthread_mutex_lock(&ps->mu);
    ps->scratch_busy = false;
    pthread_mutex_unlock(&ps->mu);
  } else {
    /* No worker touches the segment any more; its memory goes now, even if a worker made by
     * fork meanwhile still holds a copy of the descriptor. */
    (void)ftruncate(tdm_shm_fd(pm->tmp), 0);
    tdm_shm_close(pm->tmp);
  }
  if (pm->in_fd >= 0) close(pm->in_fd);
  if (pm->out_fd >= 0) close(pm->out_fd);
  tdm__free(pm->redo);
  tdm__free(pm->losses);
  tdm__free(pm);
  return r;
}

static void procs_shutdown(tdm_pool *p, bool wait, bool cancel_pending) {
  struct procs *ps = state_of(p);
  pthread_mutex_lock(&ps->mu);
  ps->closing = true;
  struct tdm_future *pending = NULL;
  if (cancel_pending) {
    /* Tasks waiting behind others come back too; those that cannot yet come back when their
     * worker skips them (the supervisor cancels them then). */
    ps->cancel_all = true;
    take_back_waiting(ps);
    pending = detach_pending(ps);
  }
  pthread_mutex_unlock(&ps->mu);
  end_list(pending, TDM_FUTURE_CANCELLED, -ECANCELED, 0);
  poke(ps, CMD_SHUTDOWN);
  if (!wait) return;
  pthread_mutex_lock(&ps->mu);
  while (!ps->ended)
    pthread_cond_wait(&ps->cv, &ps->mu);
  pthread_mutex_unlock(&ps->mu);
}

static void procs_terminate(tdm_pool *p) {
  struct procs *ps = state_of(p);
  poke(ps, CMD_TERMINATE);
  pthread_mutex_lock(&ps->mu);
  while (!ps->ended)
    pthread_cond_wait(&ps->cv, &ps->mu);
  pthread_mutex_unlock(&ps->mu);
}

static void procs_interrupt(tdm_pool *p) {
  struct procs *ps = state_of(p);
  atomic_fetch_or(&ps->cmd, CMD_INTERRUPT);
  int saved = errno;
  uint64_t one = 1;
  while (write(ps->efd, &one, sizeof one) < 0 && errno == EINTR) {
  }
  errno = saved;
}

static size_t procs_worker_stats(tdm_pool *p, tdm_pool_worker_stats *out, size_t cap) {
  struct procs *ps = state_of(p);
  size_t n = 0;
  pthread_mutex_lock(&ps->mu);
  for (unsigned i = 0; i < ps->nw; i++) {
    struct worker *w = &ps->w[i];
    if (w->proc == NULL) continue;
    if (n < cap) {
      struct tdm__procs_slot *s = &ps->h->slots[i];
      out[n] = (tdm_pool_worker_stats){ .pid = tdm_process_pid(w->proc),
                                        .tasks = atomic_load(&s->tasks),
                                        .busy_ns = atomic_load(&s->busy_ns),
                                        .cpu_ns = atomic_load(&s->cpu_ns),
                                        .busy = atomic_load(&s->running) != 0 };
    }
    n++;
  }
  pthread_mutex_unlock(&ps->mu);
  return n;
}

static void procs_close(tdm_pool *p) {
  struct procs *ps = state_of(p);
  if (ps == NULL) return;
  if (ps->sup_started) pthread_join(ps->sup, NULL);
  destroy(ps);
  p->be_state = NULL;
}

const struct tdm__backend tdm__backend_processes = {
  .name = "processes",
  .open = procs_open,
  .submit = procs_submit,
  .map = procs_map,
  .cancel_running = procs_cancel_running,
  .cancelled_pending = procs_cancelled_pending,
  .shutdown = procs_shutdown,
  .terminate = procs_terminate,
  .interrupt = procs_interrupt,
  .worker_stats = procs_worker_stats,
  .close = procs_close,
};
