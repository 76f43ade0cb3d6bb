/*
 * threads.c: the thread backend (TDM_POOL_THREADS and TDM_POOL_AUTO).
 *
 * Tasks. Submitted futures go into one lock-free injection queue: Vyukov's bounded
 * multi-producer, multi-consumer ring of pointers, each cell with a sequence number, so a push
 * or a pop is one compare-and-swap on the ring's tail or head and no lock is taken on the hot
 * path. When the ring is full, pushes go to an overflow list under a mutex, and keep going
 * there while it is not empty, so that tasks still start in the order they came; workers refill
 * from it once the ring is empty. The overflow is the slow path of a pool with more than
 * RING_CAP tasks waiting.
 *
 * Parking. An idle worker spins on the ring for a few microseconds (a busy submitter keeps it
 * fed without a system call), then counts itself in `sleepers` and sleeps on the futex word
 * `wake`. A push reads `sleepers` after it has published its task and, only if someone sleeps,
 * bumps `wake` and wakes one. The worker counts itself before it looks at the ring one last
 * time; both sides are sequentially consistent, so a task is never left with everyone asleep.
 *
 * Maps. tdm_pool_map() cuts the items into grains (about 64 per participant, or the caller's
 * chunk) and gives each participant (the caller and up to one worker per worker thread) an
 * equal range of grains, packed as (lo, hi) in one 64-bit word. A participant takes grains from
 * the front of its own range with a compare-and-swap on its own cache line; when it runs dry it
 * steals the back half of the largest range left (a compare-and-swap on that word moves hi).
 * Ranges are split again only when someone runs dry, so a uniform map costs one uncontended
 * CAS per grain, and a skewed one rebalances itself. Workers join through "help" entries in the
 * injection queue (tagged pointers), so a map never waits for a worker that is busy elsewhere:
 * the caller steals that worker's range.
 *
 * The supervisor thread sleeps until the earliest task deadline (a task past it fails with
 * TDM_ETASKTIMEOUT and is asked to stop) and, for TDM_POOL_AUTO, samples the CPU clocks of the
 * busy workers every millisecond while work waits: the share of their wall time spent on a CPU
 * sets the target size (see auto_tick()).
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "platform/platform.h"
#include "pool/pool.h"

#define RING_CAP        8192u
#define SPIN_NS         20000                 /* an idle worker spins this long before it sleeps */
#define AUTO_TICK_NS    250000                /* auto: sampling period while work waits */
#define AUTO_IDLE_NS    ((int64_t)1000000000) /* auto: an idle worker above target ends after */
#define GRAINS_EACH     64u                   /* map: grains per participant */
#define AUTO_LINGER_NS  ((int64_t)100000000)  /* auto: keep ticking this long after work */
#define SCHED_EVERY     8                     /* auto: run-queue statistics every this many ticks */
#define SCHED_WINDOW_NS ((int64_t)10000000)   /* auto: busy time over which they are summed */

/* Zeroed memory aligned to a cache line (the pool's hot words are _Alignas(64), which malloc
 * does not promise); *base is what to free. */
static void *calloc_lines(size_t n, size_t size, void **base) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total) || total > SIZE_MAX - 64) return NULL;
  unsigned char *b = tdm__calloc(1, total + 63);
  if (b == NULL) return NULL;
  *base = b;
  return (void *)(((uintptr_t)b + 63) & ~(uintptr_t)63);
}

/* ---- The injection queue --------------------------------------------------------------------- */

struct cell {
  _Atomic size_t seq;
  void *item;
};

struct ring {
  _Alignas(64) _Atomic size_t tail;
  _Alignas(64) _Atomic size_t head;
  _Alignas(64) struct cell cells[RING_CAP];
};

static void ring_init(struct ring *r) {
  for (size_t i = 0; i < RING_CAP; i++)
    atomic_init(&r->cells[i].seq, i);
  atomic_init(&r->tail, 0);
  atomic_init(&r->head, 0);
}

static bool ring_push(struct ring *r, void *item) {
  size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
  for (;;) {
    struct cell *c = &r->cells[pos & (RING_CAP - 1)];
    size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)pos;
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        c->item = item;
        atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
        return true;
      }
    } else if (dif < 0) {
      return false;
    } else {
      pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    }
  }
}

static void *ring_pop(struct ring *r) {
  size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
  for (;;) {
    struct cell *c = &r->cells[pos & (RING_CAP - 1)];
    size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        void *item = c->item;
        atomic_store_explicit(&c->seq, pos + RING_CAP, memory_order_release);
        return item;
      }
    } else if (dif < 0) {
      return NULL;
    } else {
      pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    }
  }
}

static size_t ring_size(struct ring *r) {
  size_t t = atomic_load(&r->tail), h = atomic_load(&r->head);
  return t > h ? t - h : 0;
}

/* ---- State ----------------------------------------------------------------------------------- */

struct tpool;

struct worker {
  _Alignas(64) pthread_t thread;
  struct tpool *t;
  bool used;      /* slot holds a live thread; under pool mu */
  bool joinable;  /* slot's thread has not been joined yet; under pool mu */
  unsigned index; /* for its name */
  _Atomic int32_t tid;
  pthread_mutex_t mu; /* guards current */
  struct tdm_future *current;
  _Atomic int64_t deadline; /* of the current task; TDM__NEVER for none */
  _Atomic bool busy;
  _Atomic uint64_t tasks, busy_ns, cpu_ns;
  /* auto: the supervisor's last sample of this worker (under pool mu) */
  int64_t sample_cpu;
  bool sample_busy;
  int sched_fd;        /* the thread's scheduler statistics (tdm__sched_open()), or -1 */
  int32_t sched_tid;   /* the thread sched_fd describes */
  int64_t sample_wait; /* its run-queue wait at the last statistics round; -1: none */
  int64_t sample_wait_at;
};

struct job;

struct tpool {
  struct ring ring;
  _Alignas(64) _Atomic unsigned sleepers;
  _Atomic unsigned spinners; /* idle workers spinning on the ring */
  _Atomic bool waking;       /* a wake-up is in flight (wake_one()) */
  unsigned max_spinners;
  uint32_t wake;                    /* futex word (__atomic builtins) */
  _Alignas(64) pthread_mutex_t omu; /* the overflow list */
  struct tdm_future *ohead, *otail;
  _Atomic size_t on; /* tasks in the overflow list */
  /* Workers. */
  pthread_mutex_t mu; /* slots, live */
  pthread_cond_t cv;  /* live dropped, or an initializer reported */
  struct worker *w;   /* opt.workers slots */
  unsigned cap, live, next_index;
  unsigned init_done;
  int init_error;
  _Atomic bool stopping;       /* shutdown: exit once the queue is empty */
  _Atomic bool cancel_pending; /* shutdown with cancel, or terminate: pending tasks cancel */
  _Atomic bool terminating;
  _Atomic bool interrupted; /* tdm_pool_interrupt(): the supervisor terminates */
  /* The supervisor. */
  pthread_t sup;
  bool sup_started;
  uint32_t sup_word;        /* futex word: bumped to wake the supervisor */
  _Atomic int64_t sup_next; /* when it means to wake by itself */
  _Atomic bool sup_stop;
  /* auto */
  bool is_auto;
  _Atomic unsigned target;
  _Atomic uint32_t util_ppm; /* share of busy wall time on a CPU, parts per million */
  void *self_base, *w_base;  /* what to free (calloc_lines()) */
  unsigned replace;          /* recycled workers the supervisor must replace; under mu */
  int64_t last_tick;
  int64_t last_work; /* auto: when the supervisor last saw work waiting or running */
  bool sampled;      /* auto: util_ppm holds a measure, not the initial guess */
  /* auto, under mu: busy workers' run-queue wait and wall time since the last window, and the
   * share of busy time spent waiting for a CPU that the last window measured */
  unsigned ticks;
  bool no_schedstat; /* the kernel keeps no run-queue statistics: q stays 0 */
  int64_t win_wait, win_wall;
  double runq_share;
  bool opened; /* open has returned: a failing initializer now breaks the pool; mu */
  tdm_pool *pool;
};

static struct tpool *tp_of(tdm_pool *p) {
  return p->be_state;
}

/* ---- Queueing -------------------------------------------------------------------------------- */

/* Wakes a sleeping worker, unless one is spinning: it will take the task, and wake another if
 * more are left (see chain()). */
static void wake_one(struct tpool *t) {
  if (atomic_load(&t->sleepers) == 0 || atomic_load(&t->spinners) > 0) return;
  /* One wake-up in flight at a time: the woken worker spins when it wakes, and until it has
   * taken the token nobody needs a second one (tokio's "searching" workers). */
  if (atomic_load(&t->waking) || atomic_exchange(&t->waking, true)) return;
  __atomic_fetch_add(&t->wake, 1, __ATOMIC_SEQ_CST);
  /* Nobody was in the kernel to take the token: the worker counted in `sleepers` was still on
   * its way. Either it sleeps next, sees `wake` moved and returns at once (taking the token
   * itself), or its last look found a task and it never sleeps, and then nobody would take the
   * token: every later push would see a wake-up in flight and wake nobody, with tasks queued
   * and every worker asleep (seen under load in a test). Give the token back. */
  if (tdm__futex_wake(&t->wake, 1, false) == 0) atomic_store(&t->waking, false);
}

static void wake_all(struct tpool *t) {
  __atomic_fetch_add(&t->wake, 1, __ATOMIC_SEQ_CST);
  tdm__futex_wake(&t->wake, INT32_MAX, false);
}

static void poke_supervisor(struct tpool *t) {
  __atomic_fetch_add(&t->sup_word, 1, __ATOMIC_SEQ_CST);
  tdm__futex_wake(&t->sup_word, 1, false);
}

/* Queues a future or a tagged job pointer. */
static void push(struct tpool *t, void *item) {
  if (atomic_load(&t->on) > 0 || !ring_push(&t->ring, item)) {
    pthread_mutex_lock(&t->omu);
    struct tdm_future *f = item;
    /* A job's help entry never overflows: see map(). */
    f->next = NULL;
    if (t->otail != NULL)
      t->otail->next = f;
    else
      t->ohead = f;
    t->otail = f;
    atomic_fetch_add(&t->on, 1);
    pthread_mutex_unlock(&t->omu);
  }
  /* A full barrier between publishing the task and reading `sleepers` (an RMW, which
   * ThreadSanitizer understands, unlike a fence). */
  (void)atomic_fetch_add(&t->sleepers, 0);
  wake_one(t);
}

static void *pop(struct tpool *t) {
  void *item = ring_pop(&t->ring);
  if (item != NULL || atomic_load(&t->on) == 0) return item;
  pthread_mutex_lock(&t->omu);
  /* Refill the ring from the overflow, oldest first, then take from the ring: the ring's tasks
   * are all older than the overflow's. */
  while (t->ohead != NULL && ring_push(&t->ring, t->ohead)) {
    t->ohead = t->ohead->next;
    if (t->ohead == NULL) t->otail = NULL;
    atomic_fetch_sub(&t->on, 1);
  }
  pthread_mutex_unlock(&t->omu);
  return ring_pop(&t->ring);
}

static bool queue_empty(struct tpool *t) {
  return ring_size(&t->ring) == 0 && atomic_load(&t->on) == 0;
}

/* ---- Maps ------------------------------------------------------------------------------------ */

struct range {
  _Alignas(64) _Atomic uint64_t lohi; /* lo << 32 | hi, in grains */
};

struct job {
  struct tdm__map *m;
  tdm_pool *p;
  size_t grain; /* items per grain */
  uint32_t n_grains;
  unsigned slots;
  struct range *r;
  void *r_base;
  unsigned char *ran; /* per grain: 1 once run */
  _Atomic unsigned joined;
  _Atomic unsigned active; /* participants inside */
  _Atomic uint32_t done_grains;
  uint32_t done; /* futex word: 1 when every grain has run, or the map was stopped */
  uint32_t sleeping;
  _Atomic int refs;
};

#define JOB_TAG ((uintptr_t)1)

static void job_unref(struct job *j) {
  if (atomic_fetch_sub(&j->refs, 1) != 1) return;
  tdm__free(j->r_base);
  tdm__free(j->ran);
  tdm__free(j);
}

static void job_signal_done(struct job *j) {
  __atomic_store_n(&j->done, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&j->sleeping, __ATOMIC_SEQ_CST) > 0)
    tdm__futex_wake(&j->done, INT32_MAX, false);
}

static void run_grain(struct job *j, uint32_t g) {
  struct tdm__map *m = j->m;
  size_t lo = (size_t)g * j->grain, hi = lo + j->grain;
  if (hi > m->n) hi = m->n;
  /* Outputs start zeroed: one memset per grain, not one per item. */
  if (m->out_size > 0) memset(m->out + lo * m->out_size, 0, (hi - lo) * m->out_size);
  const unsigned char *in = m->in_size > 0 ? m->in + lo * m->in_size : NULL;
  unsigned char *out = m->out_size > 0 ? m->out + lo * m->out_size : NULL;
  const void *arg = m->arg_size > 0 ? m->arg : NULL;
  size_t failed = 0;
  for (size_t i = lo; i < hi; i++) {
    int r = m->fn(in, out, arg);
    if (in != NULL) in += m->in_size;
    if (out != NULL) out += m->out_size;
    if (m->errors != NULL) m->errors[i] = r;
    failed += r != 0;
  }
  if (failed > 0) atomic_fetch_add_explicit(&m->failed, failed, memory_order_relaxed);
  j->ran[g] = 1;
  atomic_fetch_add_explicit(&j->p->c.done, 1, memory_order_relaxed);
  if (atomic_fetch_add(&j->done_grains, 1) + 1 == j->n_grains) job_signal_done(j);
}

/* Takes one grain from the front of range s; false when it is empty. */
static bool take_own(struct job *j, unsigned s, uint32_t *g) {
  uint64_t v = atomic_load(&j->r[s].lohi);
  for (;;) {
    uint32_t lo = (uint32_t)(v >> 32), hi = (uint32_t)v;
    if (lo >= hi) return false;
    if (atomic_compare_exchange_weak(&j->r[s].lohi, &v, (uint64_t)(lo + 1) << 32 | hi)) {
      *g = lo;
      return true;
    }
  }
}

/* Steals the back half of the largest range into range s; false when nothing is left. */
static bool steal(struct job *j, unsigned s) {
  for (;;) {
    unsigned best = j->slots;
    uint32_t most = 0;
    for (unsigned k = 0; k < j->slots; k++) {
      uint64_t v = atomic_load_explicit(&j->r[k].lohi, memory_order_relaxed);
      uint32_t lo = (uint32_t)(v >> 32), hi = (uint32_t)v;
      if (hi > lo && hi - lo > most) {
        most = hi - lo;
        best = k;
      }
    }
    if (best == j->slots) return false;
    uint64_t v = atomic_load(&j->r[best].lohi);
    uint32_t lo = (uint32_t)(v >> 32), hi = (uint32_t)v;
    if (lo >= hi) continue;
    uint32_t mid = lo + (hi - lo) / 2; /* the thief takes [mid, hi); one grain: all of it */
    if (atomic_compare_exchange_strong(&j->r[best].lohi, &v, (uint64_t)lo << 32 | mid)) {
      atomic_store(&j->r[s].lohi, (uint64_t)mid << 32 | hi);
      return true;
    }
  }
}

static void participate(struct tpool *t, struct job *j) {
  unsigned s = atomic_fetch_add(&j->joined, 1);
  if (s >= j->slots) return;
  atomic_fetch_add(&j->active, 1);
  uint32_t g;
  for (;;) {
    if (atomic_load(&t->terminating)) break;
    if (take_own(j, s, &g)) {
      run_grain(j, g);
      continue;
    }
    if (!steal(j, s)) break;
  }
  if (atomic_fetch_sub(&j->active, 1) == 1 && atomic_load(&t->terminating)) job_signal_done(j);
}

static int map(tdm_pool *p, struct tdm__map *m) {
  struct tpool *t = tp_of(p);
  struct job *j = tdm__calloc(1, sizeof *j);
  if (j == NULL) return -ENOMEM;
  pthread_mutex_lock(&t->mu);
  unsigned workers = t->live > 0 ? t->live : 1;
  pthread_mutex_unlock(&t->mu);
  size_t grain = m->chunk;
  if (grain == 0) {
    size_t want = (size_t)(workers + 1) * GRAINS_EACH;
    grain = (m->n + want - 1) / want;
  }
  if (grain == 0) grain = 1;
  size_t n_grains = (m->n + grain - 1) / grain;
  if (n_grains > UINT32_MAX - 1) {
    grain = (m->n + (UINT32_MAX - 2)) / (UINT32_MAX - 1);
    n_grains = (m->n + grain - 1) / grain;
  }
  unsigned helpers = n_grains - 1 < workers ? (unsigned)(n_grains - 1) : workers;
  j->m = m;
  j->p = p;
  j->grain = grain;
  j->n_grains = (uint32_t)n_grains;
  j->slots = helpers + 1;
  j->r = calloc_lines(j->slots, sizeof *j->r, &j->r_base);
  j->ran = tdm__calloc(n_grains, 1);
  if (j->r == NULL || j->ran == NULL) {
    tdm__free(j->r_base);
    tdm__free(j->ran);
    tdm__free(j);
    return -ENOMEM;
  }
  for (unsigned s = 0; s < j->slots; s++) {
    uint64_t lo = n_grains * s / j->slots, hi = n_grains * (s + 1) / j->slots;
    atomic_init(&j->r[s].lohi, lo << 32 | hi);
  }
  atomic_init(&j->refs, (int)helpers + 1);
  atomic_fetch_add_explicit(&p->c.items, m->n, memory_order_relaxed);
  for (unsigned h = 0; h < helpers; h++) {
    /* Only the ring takes help entries: behind the overflow they would come too late to
     * matter, and the caller does the work anyway. */
    if (!ring_push(&t->ring, (void *)((uintptr_t)j | JOB_TAG))) {
      job_unref(j);
      continue;
    }
  }
  if (atomic_fetch_add(&t->sleepers, 0) > 0) {
    __atomic_fetch_add(&t->wake, 1, __ATOMIC_SEQ_CST);
    tdm__futex_wake(&t->wake, (int)helpers, false);
  }
  participate(t, j);
  /* Wait for the grains the workers hold (or for everyone to leave after a terminate). */
  for (unsigned i = 0; __atomic_load_n(&j->done, __ATOMIC_SEQ_CST) == 0; i++) {
    if (i < 1000) {
      tdm__cpu_relax();
      continue;
    }
    __atomic_fetch_add(&j->sleeping, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&j->done, __ATOMIC_SEQ_CST) == 0)
      tdm__futex_wait(&j->done, 0, TDM__NEVER, false);
    __atomic_fetch_sub(&j->sleeping, 1, __ATOMIC_SEQ_CST);
  }
  int r = 0;
  if (atomic_load(&j->done_grains) != j->n_grains) {
    /* Terminated: wait until no participant is inside, then mark what never ran. */
    while (atomic_load(&j->active) > 0)
      sched_yield();
    for (uint32_t g = 0; g < j->n_grains; g++) {
      if (j->ran[g]) continue;
      size_t lo = (size_t)g * grain, hi = lo + grain < m->n ? lo + grain : m->n;
      for (size_t i = lo; i < hi; i++)
        if (m->errors != NULL) m->errors[i] = -ECANCELED;
    }
    r = -ECANCELED;
  }
  job_unref(j);
  return r;
}

/* ---- Running tasks --------------------------------------------------------------------------- */

static void run_task(struct tpool *t, struct worker *w, struct tdm_future *f) {
  int broken = atomic_load(&t->pool->broken);
  if (broken != 0 || atomic_load(&t->cancel_pending)) {
    /* A broken pool fails what waits with its reason; shutdown or terminate cancels it. */
    if (broken != 0)
      (void)tdm__future_finish(f, TDM_FUTURE_FAILED, broken, tdm__pool_broken_status(t->pool), NULL,
                               0);
    else
      (void)tdm__future_cancel_pending(f);
    tdm__future_unref(f);
    return;
  }
  if (!tdm__future_start(f)) {
    tdm__future_unref(f); /* cancelled while it waited */
    return;
  }
  /* Only a task with a deadline is published in its worker's slot: the supervisor is the one
   * reader, and the lock is the price of letting it reach the future safely. */
  bool timed = f->timeout != TDM_FOREVER;
  if (timed) {
    int64_t d = tdm__deadline(f->timeout);
    f->deadline = d;
    pthread_mutex_lock(&w->mu);
    w->current = f;
    atomic_store(&w->deadline, d);
    pthread_mutex_unlock(&w->mu);
    __atomic_fetch_add(&t->sup_word, 1, __ATOMIC_SEQ_CST);
    if (d < atomic_load(&t->sup_next)) tdm__futex_wake(&t->sup_word, 1, false);
  }
  struct tdm_task task = { .f = f, .cancel_flag = &f->cancel, .pool_stop = &t->terminating };
  int r = f->fn(&task, f->size > 0 ? f->arg : NULL, f->size);
  if (timed) {
    pthread_mutex_lock(&w->mu);
    w->current = NULL;
    atomic_store(&w->deadline, TDM__NEVER);
    pthread_mutex_unlock(&w->mu);
  }
  if (atomic_load_explicit(&t->terminating, memory_order_relaxed)) {
    /* Terminated while it ran: it ends cancelled, whatever it returned. */
    tdm__free(task.result);
    tdm__future_finish(f, TDM_FUTURE_CANCELLED, -ECANCELED, 0, NULL, 0);
  } else if (r == 0) {
    tdm__future_finish(f, TDM_FUTURE_DONE, 0, 0, task.result, task.result_size);
  } else {
    tdm__free(task.result);
    tdm__future_finish(f, TDM_FUTURE_FAILED, TDM_ETASK, r, NULL, 0);
  }
  tdm__future_unref(f);
}

static bool run_inline(tdm_pool *p, struct tdm_future *f) {
  struct tpool *t = tp_of(p);
  if (atomic_load(&t->cancel_pending) || !tdm__future_start(f)) return false;
  struct tdm_task task = { .f = f, .cancel_flag = &f->cancel, .pool_stop = &t->terminating };
  int r = f->fn(&task, f->size > 0 ? f->arg : NULL, f->size);
  if (r == 0) {
    tdm__future_finish(f, TDM_FUTURE_DONE, 0, 0, task.result, task.result_size);
  } else {
    tdm__free(task.result);
    tdm__future_finish(f, TDM_FUTURE_FAILED, TDM_ETASK, r, NULL, 0);
  }
  /* The queue still holds f with the backend's reference: the worker that pops it finds it
   * started and drops it. */
  return true;
}

/* ---- Workers --------------------------------------------------------------------------------- */

static int start_worker(struct tpool *t); /* under t->mu */
static void drain_cancel(struct tpool *t);

/* A worker that found work wakes another if more waits and nobody spins: wake-ups spread one
 * by one, each woken worker passing the token on, rather than one per push. The task it leaves
 * may be a long one's neighbour: it must not wait for this worker to come back. */
static void chain(struct tpool *t) {
  if (!queue_empty(t)) wake_one(t);
}

/*
 * Waits for work: a spin, then sleep. NULL when the worker should end. At most max_spinners
 * workers spin at once (half the CPUs, at least one): more would take the CPUs the submitter
 * and the busy workers need, which on a small machine costs far more than a wake-up.
 */
static void *await(struct tpool *t, bool *idle_expired) {
  int64_t idle_deadline = t->is_auto ? tdm_clock_now() + AUTO_IDLE_NS : TDM__NEVER;
  for (;;) {
    unsigned spinning = atomic_fetch_add(&t->spinners, 1);
    if (spinning < t->max_spinners) {
      int64_t spin_until = tdm_clock_now() + SPIN_NS;
      for (unsigned i = 1;; i++) {
        void *item = pop(t);
        if (item != NULL) {
          atomic_fetch_sub(&t->spinners, 1);
          chain(t);
          return item;
        }
        if (atomic_load(&t->stopping)) {
          atomic_fetch_sub(&t->spinners, 1);
          return NULL;
        }
        if ((i & 31) == 0 && tdm_clock_now() > spin_until) break;
        tdm__cpu_relax();
      }
    }
    atomic_fetch_sub(&t->spinners, 1);
    uint32_t seen = __atomic_load_n(&t->wake, __ATOMIC_SEQ_CST);
    atomic_fetch_add(&t->sleepers, 1);
    void *item = pop(t);
    if (item != NULL || atomic_load(&t->stopping)) {
      atomic_fetch_sub(&t->sleepers, 1);
      /* A waker may have counted this worker as asleep and sent the token its way. */
      if (atomic_exchange(&t->waking, false) && item != NULL) chain(t);
      return item;
    }
    int r = tdm__futex_wait(&t->wake, seen, idle_deadline, false);
    atomic_fetch_sub(&t->sleepers, 1);
    /* Whoever returns from the wait first takes the wake-up in flight, so the next push may
     * wake another (see wake_one()). */
    bool woken = atomic_exchange(&t->waking, false);
    if ((item = pop(t)) != NULL) {
      chain(t);
      return item;
    }
    if (r == -ETIMEDOUT && !woken) {
      *idle_expired = true;
      return NULL;
    }
  }
}

/* Runs one popped item: a task or a map's help entry. */
static void run_item(struct tpool *t, struct worker *w, void *item) {
  if ((uintptr_t)item & JOB_TAG) {
    struct job *j = (struct job *)((uintptr_t)item & ~JOB_TAG);
    participate(t, j);
    job_unref(j);
  } else {
    run_task(t, w, item);
  }
  atomic_fetch_add_explicit(&w->tasks, 1, memory_order_relaxed);
}

/* Reports this worker's initializer; false when it failed (the worker then ends). */
static bool initialize(struct tpool *t) {
  tdm_pool *p = t->pool;
  int r = p->opt.initializer != NULL ? p->opt.initializer(p->opt.init_arg, p->opt.init_size) : 0;
  pthread_mutex_lock(&t->mu);
  if (r != 0 && t->init_error == 0) t->init_error = TDM_EINIT;
  bool breaks = r != 0 && t->opened;
  t->init_done++;
  pthread_cond_broadcast(&t->cv);
  pthread_mutex_unlock(&t->mu);
  if (breaks) {
    /* Past open, a failing initializer breaks the pool: what waits and what comes later fails
     * with TDM_EINIT and the initializer's value. Fail what waits now: this worker may have
     * been the one meant to run it. */
    tdm__pool_break(p, TDM_EINIT, r);
    drain_cancel(t);
  }
  return r == 0;
}

/* Ends the worker's slot; under t->mu. */
static void leave_slot(struct tpool *t, struct worker *w) {
  w->used = false;
  t->live--;
  pthread_cond_broadcast(&t->cv);
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct tpool *t = w->t;
  tdm_pool *p = t->pool;
  char name[64];
  snprintf(name, sizeof name, "%s-%u", p->opt.name, w->index);
  tdm__set_os_thread_name(name);
  atomic_store(&w->tid, tdm__tid());
  if (!initialize(t)) {
    pthread_mutex_lock(&t->mu);
    wake_all(t);
    leave_slot(t, w);
    /* Nothing of the pool may be touched after this unlock: close may free it at once. */
    pthread_mutex_unlock(&t->mu);
    return NULL;
  }
  uint64_t ran = 0;
  bool recycle = false;
  for (;;) {
    bool idle_expired = false;
    void *item = pop(t);
    if (item == NULL) item = await(t, &idle_expired);
    if (item == NULL) {
      if (atomic_load(&t->stopping)) {
        if (!queue_empty(t)) continue;
        break;
      }
      if (idle_expired) {
        pthread_mutex_lock(&t->mu);
        bool shrink = t->live > atomic_load(&t->target);
        if (shrink) t->live--; /* counted out now, so that two do not both leave */
        pthread_mutex_unlock(&t->mu);
        if (shrink) {
          if (p->opt.finalizer != NULL) p->opt.finalizer(p->opt.init_arg, p->opt.init_size);
          pthread_mutex_lock(&t->mu);
          t->live++;
          leave_slot(t, w);
          pthread_mutex_unlock(&t->mu);
          return NULL;
        }
      }
      continue;
    }
    /* One clock reading per busy stretch, not per task. */
    int64_t t0 = tdm_clock_now(), c0 = tdm__thread_cpu_ns();
    atomic_store_explicit(&w->busy, true, memory_order_relaxed);
    do {
      run_item(t, w, item);
      if (p->opt.max_tasks_per_worker > 0 && ++ran >= p->opt.max_tasks_per_worker) {
        recycle = true;
        break;
      }
    } while ((item = pop(t)) != NULL);
    atomic_store_explicit(&w->busy, false, memory_order_relaxed);
    int64_t dt = tdm_clock_now() - t0, dc = tdm__thread_cpu_ns() - c0;
    atomic_fetch_add_explicit(&w->busy_ns, (uint64_t)dt, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->cpu_ns, (uint64_t)dc, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->c.busy_ns, (uint64_t)dt, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->c.cpu_ns, (uint64_t)dc, memory_order_relaxed);
    if (recycle) break;
  }
  if (p->opt.finalizer != NULL) p->opt.finalizer(p->opt.init_arg, p->opt.init_size);
  pthread_mutex_lock(&t->mu);
  if (recycle && !atomic_load(&t->stopping)) {
    /* The supervisor starts the replacement: it may need this slot, and joins this thread. */
    t->replace++;
    poke_supervisor(t);
  }
  leave_slot(t, w);
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/*
 * Creates a pool thread with the asynchronous signals blocked (as libuv's threadpool does), so
 * that SIGINT and the like reach the program's own threads: Ctrl-C never lands in a task.
 * Signals a fault raises (SIGSEGV...) stay as they are.
 */
static int create_thread(pthread_t *th, bool detached, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  int sync_sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS };
  for (size_t i = 0; i < sizeof sync_sigs / sizeof sync_sigs[0]; i++)
    sigdelset(&all, sync_sigs[i]);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (detached) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int r = pthread_create(th, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return r;
}

/* Starts a worker in a free slot; under t->mu. 0, -ENOSPC (no free slot), -EAGAIN (no
 * thread). */
static int start_worker(struct tpool *t) {
  struct worker *w = NULL;
  for (unsigned i = 0; i < t->cap; i++) {
    if (!t->w[i].used) {
      w = &t->w[i];
      break;
    }
  }
  if (w == NULL) return -ENOSPC;
  if (w->joinable) {
    /* The slot's last thread has left it (under mu, which we hold): it is returning. */
    pthread_join(w->thread, NULL);
    w->joinable = false;
  }
  w->index = ++t->next_index;
  w->used = true;
  atomic_store(&w->tid, 0);
  atomic_store(&w->busy, false);
  atomic_store(&w->deadline, TDM__NEVER);
  atomic_store(&w->tasks, 0);
  atomic_store(&w->busy_ns, 0);
  atomic_store(&w->cpu_ns, 0);
  w->sample_busy = false;
  w->sample_wait = -1;
  int r = create_thread(&w->thread, false, worker_main, w);
  if (r != 0) {
    w->used = false;
    return -EAGAIN;
  }
  w->joinable = true;
  t->live++;
  atomic_fetch_add(&t->pool->c.workers_started, 1);
  return 0;
}

/* ---- The supervisor -------------------------------------------------------------------------- */

/* Fails the task of a worker whose deadline has passed, and asks it to stop. */
static void expire(struct worker *w, int64_t now) {
  pthread_mutex_lock(&w->mu);
  struct tdm_future *f = w->current;
  if (f != NULL && f->deadline <= now)
    tdm__future_ref(f);
  else
    f = NULL;
  atomic_store(&w->deadline, TDM__NEVER);
  pthread_mutex_unlock(&w->mu);
  if (f == NULL) return;
  atomic_store(&f->cancel, true);
  tdm__future_finish(f, TDM_FUTURE_FAILED, TDM_ETASKTIMEOUT, 0, NULL, 0);
  tdm__future_unref(f);
}

/*
 * Every SCHED_EVERY ticks, reads how long busy worker w has waited on the run queue (runnable,
 * but without a CPU) and adds it to the window. The kernel accounts a wait only when the thread
 * gets a CPU back, so one round can see none of a wait in progress and the next all of it: the
 * share is measured over a window of at least SCHED_WINDOW_NS of busy time, not per tick.
 */
static void sample_runq(struct tpool *t, struct worker *w, bool is_busy, int64_t now) {
  int64_t wait = -1;
  int32_t tid = atomic_load(&w->tid);
  if (is_busy && tid != 0) {
    if (w->sched_fd >= 0 && w->sched_tid != tid) {
      close(w->sched_fd);
      w->sched_fd = -1;
    }
    if (w->sched_fd < 0 && !t->no_schedstat) {
      int fd = tdm__sched_open(tid);
      if (fd >= 0) {
        w->sched_fd = fd;
        w->sched_tid = tid;
      } else if (fd == -ENOENT && tid == atomic_load(&w->tid)) {
        t->no_schedstat = true; /* the thread lives: this kernel keeps no statistics */
      }
    }
    if (w->sched_fd >= 0) wait = tdm__sched_wait_ns(w->sched_fd);
  }
  if (wait >= 0 && w->sample_wait >= 0 && wait >= w->sample_wait) {
    t->win_wait += wait - w->sample_wait;
    t->win_wall += now - w->sample_wait_at;
  }
  w->sample_wait = wait < 0 ? -1 : wait;
  w->sample_wait_at = now;
}

/*
 * TDM_POOL_AUTO. Every tick while tasks wait, the supervisor reads the CPU clock of each
 * worker that was busy through the whole tick: u = CPU time / (wall time x min(busy, cpus)
 * x (1 - q)). Dividing by min(busy, cpus) rather than busy keeps CPU-bound work at u = 1 when
 * there are more busy threads than cores, so oversubscription never looks like waiting. q is
 * the share of the busy workers' time spent waiting for a CPU (the scheduler's run-queue delay,
 * measured over a window; 0 where the kernel does not say): on a machine that other programs
 * keep busy, CPU-bound tasks get part of a CPU, and without q that would read as waiting for
 * I/O. u is smoothed, and the target is cpus / u (cpus for CPU-bound work, the cap for work
 * that mostly sleeps), at least cpus and at most the cap. Workers are added, up to the target,
 * as long as tasks wait; a worker idle for a second above the target ends.
 */
static int64_t auto_tick(struct tpool *t, int64_t now) {
  unsigned cpus = (unsigned)tdm_cpu_count();
  int64_t wall = now - t->last_tick;
  int64_t cpu_sum = 0;
  unsigned busy = 0;
  pthread_mutex_lock(&t->mu);
  bool sched_round = ++t->ticks % SCHED_EVERY == 0;
  for (unsigned i = 0; i < t->cap; i++) {
    struct worker *w = &t->w[i];
    if (!w->used) continue;
    bool is_busy = atomic_load_explicit(&w->busy, memory_order_relaxed);
    clockid_t cid;
    struct timespec ts;
    int64_t cpu = -1;
    if (is_busy && pthread_getcpuclockid(w->thread, &cid) == 0 && clock_gettime(cid, &ts) == 0)
      cpu = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (is_busy && w->sample_busy && cpu >= 0 && cpu >= w->sample_cpu) {
      cpu_sum += cpu - w->sample_cpu;
      busy++;
    }
    w->sample_busy = is_busy && cpu >= 0;
    w->sample_cpu = cpu;
    if (sched_round) sample_runq(t, w, is_busy, now);
  }
  if (t->win_wall >= SCHED_WINDOW_NS) {
    double q = (double)t->win_wait / (double)t->win_wall;
    t->runq_share = q < 0 ? 0 : q > 0.9 ? 0.9 : q;
    t->win_wait = t->win_wall = 0;
  }
  if (busy > 0 && wall > 0 && t->last_tick > 0) {
    double u = (double)cpu_sum /
               ((double)wall * (double)(busy < cpus ? busy : cpus) * (1 - t->runq_share));
    if (u > 1) u = 1;
    /* The first sample stands alone: the initial guess (CPU-bound) must not slow the growth. */
    double old = t->sampled ? atomic_load(&t->util_ppm) / 1e6 : u;
    double smooth = 0.5 * old + 0.5 * u;
    t->sampled = true;
    atomic_store(&t->util_ppm, (uint32_t)(smooth * 1e6));
    double floor = 1.0 / 64;
    unsigned target = (unsigned)((double)cpus / (smooth > floor ? smooth : floor) + 0.5);
    if (target < cpus) target = cpus;
    if (target > t->cap) target = t->cap;
    atomic_store(&t->target, target);
  }
  t->last_tick = now;
  size_t waiting = ring_size(&t->ring) + atomic_load(&t->on);
  unsigned target = atomic_load(&t->target);
  /* Owed replacements come first (they are counted as such), then growth. */
  while (waiting > 0 && t->replace == 0 && t->live < target && atomic_load(&t->sleepers) == 0 &&
         !atomic_load(&t->stopping)) {
    if (start_worker(t) != 0) break;
    waiting--;
  }
  pthread_mutex_unlock(&t->mu);
  /* Tick every millisecond while tasks wait, every ten for a while after (so that a pool fed
   * in bursts is not poked by every submit), then sleep until poked. */
  if (ring_size(&t->ring) + atomic_load(&t->on) > 0 || busy > 0) t->last_work = now;
  if (ring_size(&t->ring) + atomic_load(&t->on) > 0) return now + AUTO_TICK_NS;
  return now - t->last_work < AUTO_LINGER_NS ? now + 10 * AUTO_TICK_NS : TDM__NEVER;
}

static void terminate_now(struct tpool *t);

static void *supervise(void *arg) {
  struct tpool *t = arg;
  tdm__set_os_thread_name("tdm-pool-sup");
  while (!atomic_load(&t->sup_stop)) {
    uint32_t seen = __atomic_load_n(&t->sup_word, __ATOMIC_SEQ_CST);
    if (atomic_load(&t->interrupted) && !atomic_load(&t->terminating)) {
      atomic_store(&t->pool->closed, true);
      terminate_now(t);
    }
    int64_t now = tdm_clock_now(), next = TDM__NEVER;
    pthread_mutex_lock(&t->mu);
    unsigned cap = t->cap;
    pthread_mutex_unlock(&t->mu);
    for (unsigned i = 0; i < cap; i++) {
      int64_t d = atomic_load(&t->w[i].deadline);
      if (d <= now)
        expire(&t->w[i], now);
      else if (d < next)
        next = d;
    }
    pthread_mutex_lock(&t->mu);
    /* Replacements go on after shutdown while tasks are left: they need someone to run them. */
    while (t->replace > 0 && (!atomic_load(&t->stopping) || !queue_empty(t))) {
      int r = start_worker(t);
      if (r == -ENOSPC) t->replace = 0; /* full already: nothing to replace */
      if (r != 0) break;                /* no thread now: try again in a while */
      t->replace--;
      atomic_fetch_add(&t->pool->c.workers_replaced, 1);
    }
    bool owed = t->replace > 0 && (!atomic_load(&t->stopping) || !queue_empty(t));
    pthread_mutex_unlock(&t->mu);
    if (owed && now + 10 * AUTO_TICK_NS * 4 < next) next = now + 10 * AUTO_TICK_NS * 4;
    if (t->is_auto) {
      int64_t tick = auto_tick(t, now);
      if (tick < next) next = tick;
    }
    atomic_store(&t->sup_next, next);
    tdm__futex_wait(&t->sup_word, seen, next, false);
  }
  return NULL;
}

/* ---- The table ------------------------------------------------------------------------------- */

static void free_state(struct tpool *t) {
  for (unsigned i = 0; i < t->cap; i++) {
    pthread_mutex_destroy(&t->w[i].mu);
    if (t->w[i].sched_fd >= 0) close(t->w[i].sched_fd);
  }
  pthread_mutex_destroy(&t->mu);
  pthread_mutex_destroy(&t->omu);
  pthread_cond_destroy(&t->cv);
  tdm__free(t->w_base);
  tdm__free(t->self_base);
}

/* Waits until no worker is left, and joins their threads. */
static void wait_workers_gone(struct tpool *t) {
  pthread_mutex_lock(&t->mu);
  while (t->live > 0)
    pthread_cond_wait(&t->cv, &t->mu);
  for (unsigned i = 0; i < t->cap; i++) {
    if (t->w[i].joinable) {
      pthread_join(t->w[i].thread, NULL);
      t->w[i].joinable = false;
    }
  }
  pthread_mutex_unlock(&t->mu);
}

static void stop_supervisor(struct tpool *t) {
  if (!t->sup_started) return;
  atomic_store(&t->sup_stop, true);
  poke_supervisor(t);
  pthread_join(t->sup, NULL);
  t->sup_started = false;
}

static int open_(tdm_pool *p) {
  void *base;
  struct tpool *t = calloc_lines(1, sizeof *t, &base);
  if (t == NULL) return -ENOMEM;
  t->self_base = base;
  t->pool = p;
  t->cap = p->opt.workers;
  t->w = calloc_lines(t->cap, sizeof *t->w, &t->w_base);
  if (t->w == NULL) {
    tdm__free(t->self_base);
    return -ENOMEM;
  }
  ring_init(&t->ring);
  pthread_mutex_init(&t->mu, NULL);
  pthread_mutex_init(&t->omu, NULL);
  pthread_cond_init(&t->cv, NULL);
  for (unsigned i = 0; i < t->cap; i++) {
    pthread_mutex_init(&t->w[i].mu, NULL);
    t->w[i].t = t;
    t->w[i].sched_fd = -1;
    t->w[i].sample_wait = -1;
    atomic_init(&t->w[i].deadline, TDM__NEVER);
  }
  t->is_auto = p->opt.backend == TDM_POOL_AUTO;
  unsigned cpus = (unsigned)tdm_cpu_count();
  t->max_spinners = cpus / 2 > 1 ? cpus / 2 : 1;
  unsigned first = t->is_auto ? (cpus < t->cap ? cpus : t->cap) : t->cap;
  atomic_init(&t->target, first);
  atomic_init(&t->util_ppm, 1000000);
  atomic_init(&t->sup_next, TDM__NEVER);
  p->be_state = t;

  int r = 0;
  pthread_mutex_lock(&t->mu);
  unsigned started = 0;
  for (; started < first; started++)
    if ((r = start_worker(t)) != 0) break;
  while (t->init_done < started)
    pthread_cond_wait(&t->cv, &t->mu);
  if (r == 0 && t->init_error != 0) r = t->init_error;
  pthread_mutex_unlock(&t->mu);
  if (r == 0) {
    if (create_thread(&t->sup, false, supervise, t) != 0)
      r = -EAGAIN;
    else
      t->sup_started = true;
  }
  if (r != 0) {
    atomic_store(&t->stopping, true);
    wake_all(t);
    wait_workers_gone(t);
    free_state(t);
    p->be_state = NULL;
    return r;
  }
  pthread_mutex_lock(&t->mu); /* workers read it under mu */
  t->opened = true;
  pthread_mutex_unlock(&t->mu);
  return 0;
}

static int submit(tdm_pool *p, struct tdm_future *f) {
  struct tpool *t = tp_of(p);
  push(t, f);
  /* A break that came after this submit was let in may have drained the queue already, and
   * left no worker to find this task: fail it (and anything else) here. */
  if (atomic_load(&p->broken) != 0) drain_cancel(t);
  /* auto: the supervisor must be sampling while tasks come; it sleeps only after a quiet spell. */
  if (t->is_auto && atomic_load(&t->sup_next) == TDM__NEVER) {
    atomic_store(&t->sup_next, 0);
    poke_supervisor(t);
  }
  return 0;
}

static int cancel_running(tdm_pool *p, struct tdm_future *f) {
  (void)p;
  return tdm__future_request_cancel(f);
}

/* Cancels every task still queued, in the calling thread: busy workers may not pop for long. */
static void drain_cancel(struct tpool *t) {
  void *item;
  while ((item = pop(t)) != NULL) {
    if ((uintptr_t)item & JOB_TAG) {
      job_unref((struct job *)((uintptr_t)item & ~JOB_TAG)); /* its map goes on without it */
    } else {
      int broken = atomic_load(&t->pool->broken);
      if (broken != 0)
        (void)tdm__future_finish(item, TDM_FUTURE_FAILED, broken, tdm__pool_broken_status(t->pool),
                                 NULL, 0);
      else
        (void)tdm__future_cancel_pending(item);
      tdm__future_unref(item);
    }
  }
}

static void shutdown_(tdm_pool *p, bool wait, bool cancel_pending) {
  struct tpool *t = tp_of(p);
  if (cancel_pending) {
    atomic_store(&t->cancel_pending, true);
    drain_cancel(t);
  }
  atomic_store(&t->stopping, true);
  wake_all(t);
  if (wait) wait_workers_gone(t);
}

/* Cancels what waits, asks running tasks to stop, and tells the workers to end. */
static void terminate_now(struct tpool *t) {
  atomic_store(&t->terminating, true);
  atomic_store(&t->cancel_pending, true);
  atomic_store(&t->stopping, true);
  /* Running tasks see `terminating` through tdm_task_cancelled() and end cancelled. */
  drain_cancel(t);
  wake_all(t);
}

static void terminate(tdm_pool *p) {
  struct tpool *t = tp_of(p);
  terminate_now(t);
  wait_workers_gone(t);
}

static void interrupt(tdm_pool *p) {
  struct tpool *t = tp_of(p);
  atomic_store(&t->interrupted, true);
  poke_supervisor(t);
}

static size_t worker_stats(tdm_pool *p, tdm_pool_worker_stats *out, size_t cap) {
  struct tpool *t = tp_of(p);
  size_t n = 0;
  pthread_mutex_lock(&t->mu);
  for (unsigned i = 0; i < t->cap; i++) {
    struct worker *w = &t->w[i];
    if (!w->used) continue;
    if (n < cap) {
      out[n] = (tdm_pool_worker_stats){ .pid = atomic_load(&w->tid),
                                        .tasks = atomic_load(&w->tasks),
                                        .busy_ns = atomic_load(&w->busy_ns),
                                        .cpu_ns = atomic_load(&w->cpu_ns),
                                        .busy = atomic_load(&w->busy) };
    }
    n++;
  }
  pthread_mutex_unlock(&t->mu);
  return n;
}

static bool cpu_bound(tdm_pool *p, unsigned *target) {
  struct tpool *t = tp_of(p);
  if (t->is_auto) {
    if (target != NULL) *target = atomic_load(&t->target);
    return atomic_load(&t->util_ppm) >= 500000;
  }
  return tdm__pool_fixed_cpu_bound(p, target);
}

static void close_(tdm_pool *p) {
  struct tpool *t = tp_of(p);
  if (t == NULL) return;
  shutdown_(p, true, false);
  stop_supervisor(t);
  free_state(t);
  p->be_state = NULL;
}

const struct tdm__backend tdm__backend_threads = {
  .name = "threads",
  .open = open_,
  .submit = submit,
  .map = map,
  .cancel_running = cancel_running,
  .cancelled_pending = NULL,
  .run_inline = run_inline,
  .shutdown = shutdown_,
  .terminate = terminate,
  .interrupt = interrupt,
  .worker_stats = worker_stats,
  .cpu_bound = cpu_bound,
  .close = close_,
};
