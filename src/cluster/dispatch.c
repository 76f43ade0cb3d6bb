/*
 * dispatch.c: the cluster backend's table, in rank 0. One thread, the dispatcher, talks MPI
 * for the open pool; the calls of the table (from any of the program's threads) only queue work
 * under the pool's mutex and wake it.
 *
 * The dispatcher hands out units (a task, or a chunk of a map) so that each rank has up to
 * `window` in flight, one pass over the ranks at a time (so work spreads evenly), and gives the
 * next unit to whichever rank answers first: balancing is dynamic, never a static split. It
 * sends with MPI_Isend and polls for results with MPI_Improbe, never blocking in MPI, which is
 * what lets the ranks send their results with plain blocking calls. A map's outputs are copied
 * into the caller's array as chunks come back, and its caller sleeps until the last one has.
 *
 * A rank cannot be stopped from here, so ending a unit early (its timeout, a cancel, terminate)
 * ends its future at once and leaves the unit in flight until the rank answers; the answer is
 * then dropped. A map waits for its chunks in flight even when terminated, because they write
 * into the caller's array.
 *
 * When mpirun ends the job because a rank died, rank 0 gets SIGTERM; while a pool is open (and
 * the program has not set a SIGTERM handler of its own), a handler prints what each rank was
 * running before the signal takes its course.
 */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster.h"

#define S (tdm__cl.spi)

/* The largest chunk a map makes by itself, in bytes of input and output. */
#define AUTO_CHUNK_BYTES ((size_t)1 << 20)

struct qnode { /* a submitted task, waiting */
  struct qnode *next;
  struct tdm_future *f;
  const char *obj; /* the function's object path (lives as long as the object is loaded) */
  uint64_t off;
};

struct mapjob { /* one tdm_pool_map() call */
  struct mapjob *next;
  struct tdm__map *m;
  const char *obj;
  uint64_t off;
  size_t next_lo;     /* the first item not yet handed out */
  size_t chunk;       /* items per unit */
  size_t outstanding; /* units in flight */
  int result;         /* 0, or the whole map's error (-ECANCELED) */
  bool done;          /* every unit came back: the caller may return */
};

struct unit {  /* in flight on a rank */
  uint64_t id; /* 0: a free slot */
  struct tdm_future *f;
  struct mapjob *job;
  size_t lo, hi;
  void *buf; /* the message, until its send completes */
  MPI_Request req;
  int64_t deadline; /* a task's timeout, or INT64_MAX */
};

struct crank { /* a worker rank */
  int mpi_rank;
  int32_t pid;
  struct unit *u;     /* window entries */
  _Atomic unsigned n; /* in flight */
  _Atomic uint64_t tasks, busy_ns, cpu_ns;
  uint64_t lost, replaced, retried; /* a hybrid rank's own pool's, as last reported */
};

struct cl {
  tdm_pool *p;
  pthread_mutex_t mu; /* guards head/tail, maps, the flags; cv signals job->done, finished */
  pthread_cond_t cv;
  struct qnode *head, *tail;
  struct mapjob *maps;
  bool shutdown, terminating, finished;
  _Atomic bool interrupt;
  _Atomic uint32_t wake; /* the dispatcher's futex: bumped when there is work */
  _Atomic bool sleeping; /* the dispatcher waits on `wake` */
  unsigned nr, window;
  struct crank *r;
  bool hybrid;
  pthread_t th;
  bool th_started;
  uint64_t next_id;
  void *rbuf;
  size_t rcap;
};

/* The open pool's state (one at a time), for rank 0's SIGTERM report and exit. */
static struct cl *_Atomic open_cl;
static struct sigaction term_old;
static bool term_installed;

static struct cl *cl_of(tdm_pool *p) {
  return p->be_state;
}

static void futex_wake(_Atomic uint32_t *w) {
  syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Tells the dispatcher to look (after the caller made work visible under mu). */
static void poke(struct cl *c) {
  atomic_fetch_add(&c->wake, 1);
  if (atomic_load(&c->sleeping)) futex_wake(&c->wake);
}

/* ---- The SIGTERM report ---------------------------------------------------------------------- */

/* Async-signal-safe; reads the ranks' windows without a lock (the process is ending). */
static void on_term(int sig) {
  char line[2048];
  size_t cap = sizeof line - 1, n = 0;
  n = tdm__cl_put(line, n, cap, "tandem cluster: rank 0 stopped by signal ");
  n = tdm__cl_put_u(line, n, cap, (uint64_t)sig);
  n = tdm__cl_put(line, n, cap, " (the job is ending, as when a rank dies); in flight:");
  struct cl *c = atomic_load(&open_cl);
  bool any = false;
  for (unsigned i = 0; c != NULL && i < c->nr; i++) {
    for (unsigned k = 0; k < c->window; k++) {
      const struct unit *u = &c->r[i].u[k];
      if (u->id == 0) continue;
      n = tdm__cl_put(line, n, cap, any ? ", rank " : " rank ");
      n = tdm__cl_put_u(line, n, cap, (uint64_t)c->r[i].mpi_rank);
      n = tdm__cl_put(line, n, cap, u->f != NULL ? ": task " : ": map chunk ");
      n = tdm__cl_put_u(line, n, cap, u->id);
      if (u->f == NULL) {
        n = tdm__cl_put(line, n, cap, " (items ");
        n = tdm__cl_put_u(line, n, cap, u->lo);
        n = tdm__cl_put(line, n, cap, "-");
        n = tdm__cl_put_u(line, n, cap, u->hi - 1);
        n = tdm__cl_put(line, n, cap, ")");
      }
      any = true;
    }
  }
  if (!any) n = tdm__cl_put(line, n, cap, " nothing");
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
  sigaction(sig, &term_old, NULL);
  raise(sig);
}

static void term_install(void) {
  struct sigaction cur;
  if (sigaction(SIGTERM, NULL, &cur) != 0 || cur.sa_handler != SIG_DFL ||
      (cur.sa_flags & SA_SIGINFO))
    return; /* the program handles SIGTERM itself */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;
  term_installed = sigaction(SIGTERM, &sa, &term_old) == 0;
}

static void term_remove(void) {
  if (term_installed) sigaction(SIGTERM, &term_old, NULL);
  term_installed = false;
}

/* ---- Units ----------------------------------------------------------------------------------- */

static struct unit *free_slot(struct crank *r, unsigned window) {
  for (unsigned k = 0; k < window; k++)
    if (r->u[k].id == 0) return &r->u[k];
  return NULL;
}

/* Sends a unit's message, built in a buffer the unit keeps until the send completes. */
static int post(struct crank *r, struct unit *u, int tag, void *msg, size_t len) {
  u->buf = msg;
  if (MPI_Isend(msg, (int)len, MPI_BYTE, r->mpi_rank, tag, tdm__cl.comm, &u->req) != MPI_SUCCESS) {
    free(msg);
    u->buf = NULL;
    return -EIO;
  }
  atomic_fetch_add(&r->n, 1);
  return 0;
}

static void *unit_msg(const struct tdm__cl_unit *h, const char *obj, const void *a, size_t na,
                      const void *b, size_t nb, size_t *len) {
  size_t ol = strlen(obj);
  *len = sizeof *h + ol + na + nb;
  unsigned char *m = malloc(*len);
  if (m == NULL) return NULL;
  memcpy(m, h, sizeof *h);
  memcpy(m + sizeof *h, obj, ol);
  if (na > 0) memcpy(m + sizeof *h + ol, a, na);
  if (nb > 0) memcpy(m + sizeof *h + ol + na, b, nb);
  return m;
}

static void send_task(struct cl *c, struct crank *r, struct unit *u, struct qnode *q) {
  struct tdm_future *f = q->f;
  struct tdm__cl_unit h = { .id = ++c->next_id,
                            .fn_off = q->off,
                            .obj_len = (uint32_t)strlen(q->obj),
                            .arg_size = f->size,
                            .timeout = f->timeout };
  size_t len;
  void *msg = unit_msg(&h, q->obj, f->arg, f->size, NULL, 0, &len);
  *u = (struct unit){ .id = h.id, .f = f, .deadline = INT64_MAX };
  if (!c->hybrid && f->timeout != TDM_FOREVER) u->deadline = tdm_deadline_after(f->timeout).at;
  int rc = msg == NULL ? -ENOMEM : post(r, u, TDM__CL_TASK, msg, len);
  if (rc != 0) {
    S->future_finish(f, TDM_FUTURE_FAILED, rc, 0, NULL, 0);
    S->future_unref(f);
    u->id = 0;
  }
}

static void send_chunk(struct cl *c, struct crank *r, struct unit *u, struct mapjob *j, size_t lo,
                       size_t hi) {
  const struct tdm__map *m = j->m;
  struct tdm__cl_unit h = { .id = ++c->next_id,
                            .fn_off = j->off,
                            .obj_len = (uint32_t)strlen(j->obj),
                            .arg_size = m->arg_size,
                            .n = hi - lo,
                            .in_size = m->in_size,
                            .out_size = m->out_size,
                            .timeout = TDM_FOREVER };
  size_t len;
  void *msg =
      unit_msg(&h, j->obj, m->arg, m->arg_size, m->in_size > 0 ? m->in + lo * m->in_size : NULL,
               (hi - lo) * m->in_size, &len);
  *u = (struct unit){ .id = h.id, .job = j, .lo = lo, .hi = hi, .deadline = INT64_MAX };
  int rc = msg == NULL ? -ENOMEM : post(r, u, TDM__CL_CHUNK, msg, len);
  if (rc != 0) {
    /* The chunk's items fail with the error; the map goes on. */
    pthread_mutex_lock(&c->mu);
    for (size_t i = lo; i < hi; i++)
      if (m->errors != NULL) m->errors[i] = rc;
    atomic_fetch_add(&j->m->failed, hi - lo);
    if (--j->outstanding == 0 && j->next_lo >= m->n) {
      j->done = true;
      pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    u->id = 0;
  }
}

/* Takes the next unit of work for a rank, under mu: a task, or a chunk of a map. A task with a
 * timeout goes only to an idle rank (unless the rank has a pool of its own, which times it),
 * so that its deadline, counted from now, is counted from its start. */
static bool take(struct cl *c, bool idle, struct qnode **q, struct mapjob **job, size_t *lo,
                 size_t *hi) {
  if (c->head != NULL) {
    if (!idle && !c->hybrid && c->head->f->timeout != TDM_FOREVER) return false;
    *q = c->head;
    c->head = c->head->next;
    if (c->head == NULL) c->tail = NULL;
    return true;
  }
  for (struct mapjob *j = c->maps; j != NULL; j = j->next) {
    if (j->next_lo >= j->m->n) continue;
    *job = j;
    *lo = j->next_lo;
    *hi = j->m->n - *lo > j->chunk ? *lo + j->chunk : j->m->n;
    j->next_lo = *hi;
    j->outstanding++;
    return true;
  }
  return false;
}

/* Fills the ranks' windows, one unit per rank per pass. True when it sent something. */
static bool hand_out(struct cl *c) {
  bool sent = false, more = true;
  while (more) {
    more = false;
    for (unsigned i = 0; i < c->nr; i++) {
      struct crank *r = &c->r[i];
      struct unit *u = free_slot(r, c->window);
      if (u == NULL) continue;
      struct qnode *q = NULL;
      struct mapjob *j = NULL;
      size_t lo = 0, hi = 0;
      pthread_mutex_lock(&c->mu);
      bool got = take(c, atomic_load(&r->n) == 0, &q, &j, &lo, &hi);
      pthread_mutex_unlock(&c->mu);
      if (!got) continue;
      if (q != NULL) {
        struct tdm_future *f = q->f;
        if (S->future_start(f)) {
          send_task(c, r, u, q);
        } else {
          S->future_unref(f); /* cancelled while it waited */
        }
        free(q);
      } else {
        send_chunk(c, r, u, j, lo, hi);
      }
      sent = more = true;
    }
  }
  return sent;
}

/* Frees the buffers of the sends that completed. */
static void reap_sends(struct cl *c) {
  for (unsigned i = 0; i < c->nr; i++)
    for (unsigned k = 0; k < c->window; k++) {
      struct unit *u = &c->r[i].u[k];
      if (u->buf == NULL) continue;
      int done = 0;
      MPI_Test(&u->req, &done, MPI_STATUS_IGNORE);
      if (done) {
        free(u->buf);
        u->buf = NULL;
      }
    }
}

static void unit_release(struct crank *r, struct unit *u) {
  if (u->buf != NULL) { /* the answer came, so the send is complete or about to be */
    MPI_Wait(&u->req, MPI_STATUS_IGNORE);
    free(u->buf);
  }
  *u = (struct unit){ 0 };
  atomic_fetch_sub(&r->n, 1);
}

static void task_result(const struct tdm__cl_result *h, const unsigned char *data, size_t len,
                        struct unit *u) {
  struct tdm_future *f = u->f;
  if (h->flags & TDM__CL_RES_ERROR) {
    S->future_finish(f, TDM_FUTURE_FAILED, h->code, h->status, NULL, 0);
  } else if (h->code != 0) {
    S->future_finish(f, TDM_FUTURE_FAILED, TDM_ETASK, h->code, NULL, 0);
  } else if (h->size > len) {
    S->future_finish(f, TDM_FUTURE_FAILED, -EPROTO, 0, NULL, 0);
  } else {
    void *res = NULL;
    if (h->size > 0 && (res = S->alloc((size_t)h->size)) != NULL)
      memcpy(res, data, (size_t)h->size);
    if (h->size > 0 && res == NULL)
      S->future_finish(f, TDM_FUTURE_FAILED, -ENOMEM, 0, NULL, 0);
    else
      S->future_finish(f, TDM_FUTURE_DONE, 0, 0, res, (size_t)h->size);
  }
  S->future_unref(f);
}

static void chunk_result(struct cl *c, const struct tdm__cl_result *h, const unsigned char *data,
                         size_t len, struct unit *u) {
  struct mapjob *j = u->job;
  struct tdm__map *m = j->m;
  size_t n = u->hi - u->lo, out_bytes = n * m->out_size;
  const struct tdm__cl_failure *fails = (const void *)(data + out_bytes);
  size_t failed = 0;
  if (h->flags & TDM__CL_RES_ERROR) {
    for (size_t i = u->lo; i < u->hi; i++)
      if (m->errors != NULL) m->errors[i] = h->code;
    failed = n;
  } else if (len < out_bytes || (len - out_bytes) / sizeof *fails < h->n_failed) {
    for (size_t i = u->lo; i < u->hi; i++)
      if (m->errors != NULL) m->errors[i] = -EPROTO;
    failed = n;
  } else {
    if (out_bytes > 0) memcpy(m->out + u->lo * m->out_size, data, out_bytes);
    for (uint64_t k = 0; k < h->n_failed; k++) {
      struct tdm__cl_failure fl;
      memcpy(&fl, data + out_bytes + k * sizeof fl, sizeof fl);
      if (fl.index < n && m->errors != NULL) m->errors[u->lo + fl.index] = fl.rc;
    }
    failed = (size_t)h->n_failed;
    atomic_fetch_add(&c->p->c.items, n);
    atomic_fetch_add(&c->p->c.done, 1);
  }
  if (failed > 0) atomic_fetch_add(&m->failed, failed);
  pthread_mutex_lock(&c->mu);
  if (--j->outstanding == 0 && j->next_lo >= m->n) {
    j->done = true;
    pthread_cond_broadcast(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
}

static void handle(struct cl *c, int tag, int from, const unsigned char *msg, size_t len) {
  struct tdm__cl_result h;
  if (tag != TDM__CL_RESULT || from < 1 || (unsigned)from > c->nr || len < sizeof h) return;
  memcpy(&h, msg, sizeof h);
  struct crank *r = &c->r[from - 1];
  struct unit *u = NULL;
  for (unsigned k = 0; k < c->window && u == NULL; k++)
    if (r->u[k].id == h.id) u = &r->u[k];
  if (u == NULL || h.id == 0) return;
  atomic_fetch_add(&r->tasks, 1);
  atomic_fetch_add(&r->busy_ns, h.wall_ns);
  atomic_fetch_add(&r->cpu_ns, h.cpu_ns);
  if (c->hybrid) { /* what the rank's own pool lost, replaced and retried since its last word */
    if (h.lost > r->lost) atomic_fetch_add(&c->p->c.workers_lost, h.lost - r->lost);
    if (h.replaced > r->replaced)
      atomic_fetch_add(&c->p->c.workers_replaced, h.replaced - r->replaced);
    if (h.retried > r->retried) atomic_fetch_add(&c->p->c.retried, h.retried - r->retried);
    r->lost = h.lost > r->lost ? h.lost : r->lost;
    r->replaced = h.replaced > r->replaced ? h.replaced : r->replaced;
    r->retried = h.retried > r->retried ? h.retried : r->retried;
  }
  atomic_fetch_add(&c->p->c.busy_ns, h.wall_ns);
  atomic_fetch_add(&c->p->c.cpu_ns, h.cpu_ns);
  if (u->f != NULL)
    task_result(&h, msg + sizeof h, len - sizeof h, u);
  else
    chunk_result(c, &h, msg + sizeof h, len - sizeof h, u);
  unit_release(r, u);
}

/* Tasks past their timeout end now (their rank finishes them unseen). */
static void expire(struct cl *c, int64_t now) {
  for (unsigned i = 0; i < c->nr; i++)
    for (unsigned k = 0; k < c->window; k++) {
      struct unit *u = &c->r[i].u[k];
      if (u->id == 0 || u->f == NULL || u->deadline > now) continue;
      u->deadline = INT64_MAX;
      S->future_finish(u->f, TDM_FUTURE_FAILED, TDM_ETASKTIMEOUT, 0, NULL, 0); /* counts it */
    }
}

static int64_t next_deadline(const struct cl *c) {
  int64_t d = INT64_MAX;
  for (unsigned i = 0; i < c->nr; i++)
    for (unsigned k = 0; k < c->window; k++)
      if (c->r[i].u[k].id != 0 && c->r[i].u[k].deadline < d) d = c->r[i].u[k].deadline;
  return d;
}

/* Under mu: every waiting task ends CANCELLED. */
static void cancel_queue(struct cl *c) {
  while (c->head != NULL) {
    struct qnode *q = c->head;
    c->head = q->next;
    S->future_cancel_pending(q->f);
    S->future_unref(q->f);
    free(q);
  }
  c->tail = NULL;
}

/* Under mu: terminate. Waiting work is cancelled and maps stop handing out chunks; the
 * dispatcher ends the tasks in flight (cancel_flying()), since only it touches the units. */
static void terminate_locked(struct cl *c) {
  c->terminating = true;
  cancel_queue(c);
  for (struct mapjob *j = c->maps; j != NULL; j = j->next) {
    for (size_t i = j->next_lo; i < j->m->n; i++)
      if (j->m->errors != NULL) j->m->errors[i] = -ECANCELED;
    if (j->next_lo < j->m->n) atomic_fetch_add(&j->m->failed, j->m->n - j->next_lo);
    j->next_lo = j->m->n;
    j->result = -ECANCELED;
    if (j->outstanding == 0) j->done = true;
  }
  pthread_cond_broadcast(&c->cv);
}

/* The dispatcher, once terminating: the tasks in flight end CANCELLED (their ranks finish them
 * unseen). */
static void cancel_flying(struct cl *c) {
  for (unsigned i = 0; i < c->nr; i++)
    for (unsigned k = 0; k < c->window; k++)
      if (c->r[i].u[k].id != 0 && c->r[i].u[k].f != NULL)
        S->future_finish(c->r[i].u[k].f, TDM_FUTURE_CANCELLED, -ECANCELED, 0, NULL, 0);
}

static unsigned in_flight(const struct cl *c) {
  unsigned n = 0;
  for (unsigned i = 0; i < c->nr; i++)
    n += atomic_load(&c->r[i].n);
  return n;
}

/* Sends CLOSE to the first `n` ranks and waits for their CLOSED (their finalizers). */
static void close_ranks(struct cl *c, unsigned n) {
  for (unsigned i = 0; i < n; i++)
    MPI_Send(NULL, 0, MPI_BYTE, c->r[i].mpi_rank, TDM__CL_CLOSE, tdm__cl.comm);
  for (unsigned i = 0; i < n; i++) {
    int len, tag = 0, from;
    do {
      if (tdm__cl_recv(c->r[i].mpi_rank, &c->rbuf, &c->rcap, &len, &tag, &from) != 0) break;
    } while (tag != TDM__CL_CLOSED);
  }
}

static void sleep_until_poked(struct cl *c, uint32_t seen, int64_t ns) {
  atomic_store(&c->sleeping, true);
  if (atomic_load(&c->wake) == seen && !atomic_load(&c->interrupt)) {
    struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };
    syscall(SYS_futex, (uint32_t *)&c->wake, FUTEX_WAIT_PRIVATE, seen, &ts, NULL, 0);
  }
  atomic_store(&c->sleeping, false);
}

static void *dispatcher(void *arg) {
  struct cl *c = arg;
  int64_t idle_since = 0, sleep_ns = 0;
  bool cancelled = false;
  for (;;) {
    uint32_t seen = atomic_load(&c->wake);
    pthread_mutex_lock(&c->mu);
    if (atomic_load(&c->interrupt) && !c->terminating) terminate_locked(c);
    bool terminating = c->terminating;
    pthread_mutex_unlock(&c->mu);
    if (terminating && !cancelled) {
      cancel_flying(c);
      cancelled = true;
    }
    bool did = hand_out(c);
    int len, tag, from;
    while (tdm__cl_try_recv(MPI_ANY_SOURCE, &c->rbuf, &c->rcap, &len, &tag, &from) == 0) {
      handle(c, tag, from, c->rbuf, (size_t)len);
      did = true;
    }
    reap_sends(c);
    int64_t now = tdm_clock_now();
    expire(c, now);
    unsigned flying = in_flight(c);
    pthread_mutex_lock(&c->mu);
    bool stop =
        (c->shutdown || c->terminating) && flying == 0 && c->head == NULL && c->maps == NULL;
    pthread_mutex_unlock(&c->mu);
    if (stop) break;
    if (did) {
      idle_since = 0;
      continue;
    }
    if (flying == 0) {
      sleep_until_poked(c, seen, 1000000000); /* nothing out there: wait for work */
      idle_since = 0;
      continue;
    }
    /* Results will come: poll, yielding the core, for TDM__CL_SPIN_NS / 4, then sleep 10 us
     * doubling to 500 us between looks (new work wakes it at once). */
    if (idle_since == 0) {
      idle_since = now;
      sleep_ns = 0;
    }
    if (now - idle_since < TDM__CL_SPIN_NS / 4) {
      sched_yield();
      continue;
    }
    sleep_ns = sleep_ns == 0 ? 10000 : sleep_ns * 2 > 500000 ? 500000 : sleep_ns * 2;
    int64_t ns = sleep_ns, d = next_deadline(c);
    if (d != INT64_MAX && d - now < ns) ns = d - now > 0 ? d - now : 0;
    if (ns > 0) sleep_until_poked(c, seen, ns);
  }
  close_ranks(c, c->nr);
  pthread_mutex_lock(&c->mu);
  c->finished = true;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* ---- The table ------------------------------------------------------------------------------- */

static void cl_free(struct cl *c) {
  for (unsigned i = 0; c->r != NULL && i < c->nr; i++)
    free(c->r[i].u);
  free(c->r);
  free(c->rbuf);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c);
}

/* The object and offset of an optional function pointer; 0 when fn is NULL. */
static int locate(const void *fn, const char **obj, uint64_t *off) {
  *obj = "";
  *off = 0;
  return fn == NULL ? 0 : S->fn_locate(fn, obj, off);
}

static int cl_open(tdm_pool *p) {
  /* Rank 0 alone, and not a fork child of it: MPI is its parent's. */
  if (tdm__cl.rank != 0 || getpid() != tdm__cl.pid) return TDM_ECLUSTER;
  if (tdm__cl.status != 0) return tdm__cl.status;
  if (p->opt.max_result > TDM__CL_MAX_MSG - 4096) return -EINVAL;
  const char *iobj, *fobj;
  uint64_t ioff, foff;
  void *ifn, *ffn;
  memcpy(&ifn, &p->opt.initializer, sizeof ifn);
  memcpy(&ffn, &p->opt.finalizer, sizeof ffn);
  int r = locate(ifn, &iobj, &ioff);
  if (r == 0) r = locate(ffn, &fobj, &foff);
  if (r != 0) return r;
  struct cl *expect = NULL;
  struct cl *c = calloc(1, sizeof *c);
  if (c == NULL) return -ENOMEM;
  if (!atomic_compare_exchange_strong(&open_cl, &expect, c)) {
    free(c);
    return -EBUSY;
  }
  c->p = p;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  unsigned ranks = (unsigned)tdm__cl.size - 1;
  c->nr = p->opt.workers == 0 || p->opt.workers > ranks ? ranks : p->opt.workers;
  c->hybrid = p->opt.rank_workers > 0;
  c->window = TDM__CL_WINDOW + (c->hybrid ? p->opt.rank_workers : 0);
  p->opt.workers = c->nr;
  c->r = calloc(c->nr, sizeof *c->r);
  for (unsigned i = 0; c->r != NULL && i < c->nr; i++) {
    c->r[i].mpi_rank = (int)i + 1;
    if ((c->r[i].u = calloc(c->window, sizeof *c->r[i].u)) == NULL) r = -ENOMEM;
  }
  struct tdm__cl_open o = { .flags = (ifn != NULL ? TDM__CL_OPEN_INIT : 0u) |
                                     (ffn != NULL ? TDM__CL_OPEN_FINI : 0u),
                            .init_len = (uint32_t)strlen(iobj),
                            .fini_len = (uint32_t)strlen(fobj),
                            .rank_workers = p->opt.rank_workers,
                            .init_off = ioff,
                            .fini_off = foff,
                            .init_size = p->opt.init_size,
                            .max_result = p->opt.max_result,
                            .rank_backend = (uint32_t)p->opt.rank_backend,
                            .start = (uint32_t)p->opt.start,
                            .retries = p->opt.retries,
                            .break_on_worker_death = p->opt.break_on_worker_death,
                            .task_timeout = p->opt.task_timeout,
                            .max_tasks_per_worker = p->opt.max_tasks_per_worker };
  size_t len = sizeof o + o.init_len + o.fini_len + p->opt.init_size;
  unsigned char *msg = r == 0 && c->r != NULL ? malloc(len) : NULL;
  if (msg == NULL) {
    atomic_store(&open_cl, NULL);
    cl_free(c);
    return -ENOMEM;
  }
  memcpy(msg, &o, sizeof o);
  memcpy(msg + sizeof o, iobj, o.init_len);
  memcpy(msg + sizeof o + o.init_len, fobj, o.fini_len);
  if (p->opt.init_size > 0)
    memcpy(msg + sizeof o + o.init_len + o.fini_len, p->opt.init_arg, p->opt.init_size);
  /* Open every rank, then collect the answers: the initializers run side by side. */
  for (unsigned i = 0; i < c->nr; i++)
    MPI_Send(msg, (int)len, MPI_BYTE, c->r[i].mpi_rank, TDM__CL_OPEN, tdm__cl.comm);
  free(msg);
  int rc = 0;
  for (unsigned i = 0; i < c->nr; i++) {
    int n, tag = 0, from;
    struct tdm__cl_ready ready = { -EPROTO, 0 };
    do {
      if (tdm__cl_recv(c->r[i].mpi_rank, &c->rbuf, &c->rcap, &n, &tag, &from) != 0) break;
    } while (tag != TDM__CL_READY);
    if (tag == TDM__CL_READY && (size_t)n >= sizeof ready) memcpy(&ready, c->rbuf, sizeof ready);
    c->r[i].pid = ready.pid;
    if (ready.code != 0 && rc == 0) rc = ready.code;
  }
  atomic_fetch_add(&p->c.workers_started, c->nr);
  if (rc == 0) {
    term_install();
    rc = pthread_create(&c->th, NULL, dispatcher, c) == 0 ? 0 : -EAGAIN;
    c->th_started = rc == 0;
  }
  if (rc != 0) {
    close_ranks(c, c->nr);
    term_remove();
    atomic_store(&open_cl, NULL);
    cl_free(c);
    return rc;
  }
  p->be_state = c;
  return 0;
}

static int cl_submit(tdm_pool *p, struct tdm_future *f) {
  struct cl *c = cl_of(p);
  struct qnode *q = malloc(sizeof *q);
  if (q == NULL) return -ENOMEM;
  void *fn;
  memcpy(&fn, &f->fn, sizeof fn);
  int r = S->fn_locate(fn, &q->obj, &q->off);
  if (r != 0) {
    free(q);
    return r;
  }
  q->f = f;
  q->next = NULL;
  pthread_mutex_lock(&c->mu);
  if (c->tail != NULL)
    c->tail->next = q;
  else
    c->head = q;
  c->tail = q;
  pthread_mutex_unlock(&c->mu);
  poke(c);
  return 0;
}

static int cl_map(tdm_pool *p, struct tdm__map *m) {
  struct cl *c = cl_of(p);
  struct mapjob j = { .m = m };
  void *fn;
  memcpy(&fn, &m->fn, sizeof fn);
  int r = S->fn_locate(fn, &j.obj, &j.off);
  if (r != 0) return r;
  /* A chunk's message (its inputs, or its outputs and failures) stays under half the limit. */
  if (m->arg_size > TDM__CL_MAX_MSG / 4 || m->in_size > TDM__CL_MAX_MSG / 4 ||
      m->out_size > TDM__CL_MAX_MSG / 4)
    return -EMSGSIZE;
  size_t per = m->in_size + m->out_size, room = (TDM__CL_MAX_MSG / 2 - m->arg_size) / (per + 8);
  j.chunk = m->chunk;
  if (j.chunk == 0) {
    size_t by_bytes = AUTO_CHUNK_BYTES / (per > 0 ? per : 1);
    j.chunk = m->n / ((size_t)c->nr * 8);
    if (j.chunk > by_bytes) j.chunk = by_bytes;
  }
  if (j.chunk > room) j.chunk = room;
  if (j.chunk > UINT32_MAX) j.chunk = UINT32_MAX;
  if (j.chunk == 0) j.chunk = 1;
  if (m->errors != NULL) memset(m->errors, 0, m->n * sizeof *m->errors);
  pthread_mutex_lock(&c->mu);
  if (c->terminating) {
    pthread_mutex_unlock(&c->mu);
    return -ECANCELED;
  }
  j.next = c->maps;
  c->maps = &j;
  pthread_mutex_unlock(&c->mu);
  poke(c);
  pthread_mutex_lock(&c->mu);
  while (!j.done)
    pthread_cond_wait(&c->cv, &c->mu);
  for (struct mapjob **pp = &c->maps; *pp != NULL; pp = &(*pp)->next)
    if (*pp == &j) {
      *pp = j.next;
      break;
    }
  pthread_mutex_unlock(&c->mu);
  poke(c); /* a dispatcher waiting for the maps to go can end now */
  return j.result;
}

static int cl_cancel_running(tdm_pool *p, struct tdm_future *f) {
  (void)p;
  return S->future_finish(f, TDM_FUTURE_CANCELLED, -ECANCELED, 0, NULL, 0) ? 0 : -EALREADY;
}

static void wait_finished(struct cl *c) {
  pthread_mutex_lock(&c->mu);
  while (!c->finished)
    pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
}

static void cl_shutdown(tdm_pool *p, bool wait, bool cancel_pending) {
  struct cl *c = cl_of(p);
  pthread_mutex_lock(&c->mu);
  c->shutdown = true;
  if (cancel_pending) cancel_queue(c);
  pthread_mutex_unlock(&c->mu);
  poke(c);
  if (wait) wait_finished(c);
}

static void cl_terminate(tdm_pool *p) {
  struct cl *c = cl_of(p);
  pthread_mutex_lock(&c->mu);
  if (!c->terminating) terminate_locked(c);
  pthread_mutex_unlock(&c->mu);
  poke(c);
  wait_finished(c);
}

static void cl_interrupt(tdm_pool *p) {
  struct cl *c = cl_of(p);
  atomic_store(&c->interrupt, true);
  atomic_fetch_add(&c->wake, 1);
  futex_wake(&c->wake);
}

static size_t cl_worker_stats(tdm_pool *p, tdm_pool_worker_stats *out, size_t cap) {
  struct cl *c = cl_of(p);
  for (size_t i = 0; i < c->nr && i < cap; i++) {
    const struct crank *r = &c->r[i];
    out[i] = (tdm_pool_worker_stats){ .pid = r->pid,
                                      .tasks = atomic_load(&r->tasks),
                                      .busy_ns = atomic_load(&r->busy_ns),
                                      .cpu_ns = atomic_load(&r->cpu_ns),
                                      .busy = atomic_load(&r->n) > 0 };
  }
  return c->nr;
}

static void cl_close(tdm_pool *p) {
  struct cl *c = cl_of(p);
  if (c == NULL) return;
  if (c->th_started) pthread_join(c->th, NULL);
  term_remove();
  atomic_store(&open_cl, NULL);
  cl_free(c);
  p->be_state = NULL;
}

void tdm__cl_dispatch_atexit(void) {
  /* The program ends with a pool open: stop it as terminate would; its handle stays (the
   * program is ending). */
  struct cl *c = atomic_load(&open_cl);
  if (c == NULL || !c->th_started) return;
  cl_terminate(c->p);
  pthread_join(c->th, NULL);
  c->th_started = false;
  term_remove();
}

const struct tdm__backend tdm__backend_cluster = {
  .name = "cluster",
  .open = cl_open,
  .submit = cl_submit,
  .map = cl_map,
  .cancel_running = cl_cancel_running,
  .shutdown = cl_shutdown,
  .terminate = cl_terminate,
  .interrupt = cl_interrupt,
  .worker_stats = cl_worker_stats,
  .close = cl_close,
};
