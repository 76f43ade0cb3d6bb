/*
 * sync_bench.c: tandem's locks, conditions, semaphores and events against pthreads, POSIX
 * semaphores and CPython (bench/peers/cpython_sync.py).
 *
 * Every object, tandem's and the peers', lives in a MAP_SHARED mapping, so that one run
 * function serves threads and forked processes alike; only the flags differ (TDM_SYNC_SHARED,
 * PTHREAD_PROCESS_SHARED, sem_init's pshared). A run builds its objects, times `iters`
 * operations and tears everything down, so no run inherits another's cache or futex state.
 *
 * Three shapes of workload:
 *   uncontended  one thread: acquire+release in a loop; the fast path, no system call.
 *   contended    P parties (threads or processes) each do iters/P rounds of
 *                acquire; counter++; release. Time = from the gate opening to the last party's
 *                end, divided by all rounds; the counter must come out exact.
 *   ping-pong    two parties pass the turn back and forth (condition + lock, two semaphores,
 *                two events); the timing side is the calling thread, the other side a thread
 *                or a child. Time = one round trip, i.e. two hand-offs, each a wake-up.
 * Each implementation gets a loop of its own (LOCK_LOOP and PAIR_ROUNDS choose it outside the
 * loop), so that what is timed is the library call and the same loop for every implementation,
 * never a dispatch.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#define PEERS "cpython_sync.py"

/* Implementations, and whether the objects are shared (and the parties processes). */
enum kind { TANDEM, PTHREAD, PTHREAD_ROBUST, TANDEM_RLOCK, PTHREAD_RECURSIVE };

typedef struct impl_arg {
  enum kind kind;
  bool shared; /* TDM_SYNC_SHARED / PTHREAD_PROCESS_SHARED / sem pshared */
  bool procs;  /* the parties are processes (implies shared) */
  int parties; /* contended workloads */
} impl_arg;

/* A failing call in a timed loop is a bug in the library or the benchmark: stop loudly. */
static _Noreturn void die(const char *call, int err) {
  fprintf(stderr, "tandem bench: %s failed: %s\n", call, tdm_strerror(err));
  abort();
}

/* ---- Locks ---------------------------------------------------------------------------------- */

typedef struct any_lock {
  enum kind kind;
  union {
    tdm_lock t;
    tdm_rlock r;
    pthread_mutex_t p;
  } u;
} any_lock;

static int pt_mutex_init(pthread_mutex_t *m, bool shared, bool robust, bool recursive) {
  pthread_mutexattr_t a;
  int r = pthread_mutexattr_init(&a);
  if (r == 0 && shared) r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (r == 0 && robust) r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (r == 0 && recursive) r = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  if (r == 0) r = pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  return -r;
}

static int any_lock_init(any_lock *l, enum kind kind, bool shared) {
  int flags = shared ? TDM_SYNC_SHARED : TDM_SYNC_PRIVATE;
  l->kind = kind;
  switch (kind) {
  case TANDEM:
    return tdm_lock_init(&l->u.t, flags);
  case TANDEM_RLOCK:
    return tdm_rlock_init(&l->u.r, flags);
  case PTHREAD:
    return pt_mutex_init(&l->u.p, shared, false, false);
  case PTHREAD_ROBUST:
    return pt_mutex_init(&l->u.p, shared, true, false);
  case PTHREAD_RECURSIVE:
    return pt_mutex_init(&l->u.p, shared, false, true);
  }
  return -EINVAL;
}

static void any_lock_fini(any_lock *l) {
  switch (l->kind) {
  case TANDEM:
    tdm_lock_fini(&l->u.t);
    break;
  case TANDEM_RLOCK:
    tdm_rlock_fini(&l->u.r);
    break;
  default:
    pthread_mutex_destroy(&l->u.p);
  }
}

static inline void tdm_take(tdm_lock *l) {
  int r = tdm_lock_acquire(l, TDM_FOREVER);
  if (__builtin_expect(r != 0, 0)) die("tdm_lock_acquire", r);
}

static inline void tdm_rtake(tdm_rlock *l) {
  int r = tdm_rlock_acquire(l, TDM_FOREVER);
  if (__builtin_expect(r != 0, 0)) die("tdm_rlock_acquire", r);
}

static inline void pt_take(pthread_mutex_t *m) {
  int r = pthread_mutex_lock(m);
  if (__builtin_expect(r != 0, 0)) die("pthread_mutex_lock", -r);
}

static inline void pt_give(pthread_mutex_t *m) {
  int r = pthread_mutex_unlock(m);
  if (__builtin_expect(r != 0, 0)) die("pthread_mutex_unlock", -r);
}

/* n rounds of acquire; body; release, one loop per implementation. */
#define LOCK_LOOP(l, n, body)              \
  switch ((l)->kind) {                     \
  case TANDEM:                             \
    for (int64_t i_ = 0; i_ < (n); i_++) { \
      tdm_take(&(l)->u.t);                 \
      body;                                \
      tdm_lock_release(&(l)->u.t);         \
    }                                      \
    break;                                 \
  case TANDEM_RLOCK:                       \
    for (int64_t i_ = 0; i_ < (n); i_++) { \
      tdm_rtake(&(l)->u.r);                \
      body;                                \
      tdm_rlock_release(&(l)->u.r);        \
    }                                      \
    break;                                 \
  default:                                 \
    for (int64_t i_ = 0; i_ < (n); i_++) { \
      pt_take(&(l)->u.p);                  \
      body;                                \
      pt_give(&(l)->u.p);                  \
    }                                      \
  }

static void lock_loop(any_lock *l, int64_t n) {
  LOCK_LOOP(l, n, (void)0);
}

static void lock_loop_counting(any_lock *l, int64_t n, int64_t *counter) {
  LOCK_LOOP(l, n, (*counter)++);
}

/* One thread, one lock: the fast path. With `reentrant`, the lock is already held once. */
static int uncontended(const impl_arg *a, int64_t iters, double *ns, bool reentrant) {
  any_lock *l = bench_shared_alloc(sizeof *l);
  int r = any_lock_init(l, a->kind, a->shared);
  if (r == 0) {
    if (reentrant) {
      if (a->kind == TANDEM_RLOCK)
        tdm_rtake(&l->u.r);
      else
        pt_take(&l->u.p);
    }
    int64_t t0 = tdm_clock_now();
    lock_loop(l, iters);
    *ns = (double)(tdm_clock_now() - t0) / (double)iters;
    if (reentrant) {
      if (a->kind == TANDEM_RLOCK)
        tdm_rlock_release(&l->u.r);
      else
        pt_give(&l->u.p);
    }
    any_lock_fini(l);
  }
  bench_shared_free(l, sizeof *l);
  return r;
}

static int run_uncontended(const void *arg, int64_t iters, double *ns) {
  return uncontended(arg, iters, ns, false);
}

static int run_reentrant(const void *arg, int64_t iters, double *ns) {
  return uncontended(arg, iters, ns, true);
}

/* ---- Contended lock ------------------------------------------------------------------------- */

typedef struct contend_state {
  bench_gate gate;
  uint32_t next_index;
  int64_t rounds; /* per party */
  any_lock lock;
  int64_t counter; /* guarded by lock, next to it as in real code */
  int64_t end[];   /* per party: when it finished */
} contend_state;

static void contend_party(void *arg) {
  contend_state *s = arg;
  uint32_t me = __atomic_fetch_add(&s->next_index, 1, __ATOMIC_RELAXED);
  bench_gate_arrive(&s->gate);
  lock_loop_counting(&s->lock, s->rounds, &s->counter);
  s->end[me] = tdm_clock_now();
}

static int run_contended(const void *arg, int64_t iters, double *ns) {
  const impl_arg *a = arg;
  int n = a->parties;
  size_t size = sizeof(contend_state) + (size_t)n * sizeof(int64_t);
  contend_state *s = bench_shared_alloc(size);
  bench_party *party = calloc((size_t)n, sizeof *party);
  int r = party ? any_lock_init(&s->lock, a->kind, a->shared) : -ENOMEM;
  if (r == 0) {
    s->rounds = iters / n > 0 ? iters / n : 1;
    int started = 0;
    while (started < n && (r = bench_party_start(&party[started], a->procs, contend_party, s)) == 0)
      started++;
    /* Parties that did start wait at the gate: let them run, then join them all. */
    int64_t t0 = bench_gate_open(&s->gate, (uint32_t)started);
    for (int i = 0; i < started; i++) {
      int j = bench_party_join(&party[i]);
      if (r == 0) r = j;
    }
    int64_t total = s->rounds * n;
    if (r == 0 && s->counter != total) {
      fprintf(stderr, "tandem bench: lock lost updates: counter %lld, expected %lld\n",
              (long long)s->counter, (long long)total);
      r = -EPROTO;
    }
    if (r == 0) {
      int64_t t1 = t0;
      for (int i = 0; i < n; i++)
        if (s->end[i] > t1) t1 = s->end[i];
      *ns = (double)(t1 - t0) / (double)total;
    }
    any_lock_fini(&s->lock);
  }
  free(party);
  bench_shared_free(s, size);
  return r;
}

/* ---- Ping-pong between two parties ---------------------------------------------------------- */

/*
 * A pair workload: side A runs in the calling thread and is timed; side B runs in a thread or a
 * child. Each state struct starts with a pair_hdr.
 */
typedef struct pair_ops pair_ops;

typedef struct pair_hdr {
  const pair_ops *ops; /* valid in a forked child: same program, same addresses */
  enum kind kind;
  uint32_t ready; /* B is running */
  int64_t rounds;
} pair_hdr;

struct pair_ops {
  size_t size;
  int (*init)(pair_hdr *h, bool shared);
  void (*fini)(pair_hdr *h);
  void (*side_a)(pair_hdr *h);
  void (*side_b)(pair_hdr *h);
};

/*
 * h->rounds rounds of `tandem` (when h->kind is TANDEM) or of `peer`, each an expression for one
 * round. The choice is made once, outside the loop, as LOCK_LOOP's is.
 */
#define PAIR_ROUNDS(h, tandem, peer)                 \
  do {                                               \
    if ((h)->kind == TANDEM) {                       \
      for (int64_t i_ = 0; i_ < (h)->rounds; i_++) { \
        tandem;                                      \
      }                                              \
    } else {                                         \
      for (int64_t i_ = 0; i_ < (h)->rounds; i_++) { \
        peer;                                        \
      }                                              \
    }                                                \
  } while (0)

static void pair_b(void *arg) {
  pair_hdr *h = arg;
  __atomic_store_n(&h->ready, 1, __ATOMIC_RELEASE);
  h->ops->side_b(h);
}

static int run_pair(const pair_ops *ops, const impl_arg *a, int64_t iters, double *ns) {
  pair_hdr *h = bench_shared_alloc(ops->size);
  h->ops = ops;
  h->kind = a->kind;
  h->rounds = iters;
  int r = ops->init(h, a->shared);
  if (r == 0) {
    bench_party b;
    r = bench_party_start(&b, a->procs, pair_b, h);
    if (r == 0) {
      while (!__atomic_load_n(&h->ready, __ATOMIC_ACQUIRE))
        sched_yield();
      int64_t t0 = tdm_clock_now();
      ops->side_a(h);
      *ns = (double)(tdm_clock_now() - t0) / (double)iters;
      r = bench_party_join(&b);
    }
    ops->fini(h);
  }
  bench_shared_free(h, ops->size);
  return r;
}

/* Condition: A sets turn = 1 and waits for 0; B waits for 1 and sets 0. */
typedef struct cond_state {
  pair_hdr h;
  int turn;
  tdm_lock tl;
  tdm_cond tc;
  pthread_mutex_t pm;
  pthread_cond_t pc;
} cond_state;

static int cond_init(pair_hdr *h, bool shared) {
  cond_state *s = (cond_state *)h;
  int flags = shared ? TDM_SYNC_SHARED : TDM_SYNC_PRIVATE;
  if (h->kind == TANDEM) {
    int r = tdm_lock_init(&s->tl, flags);
    if (r == 0) r = tdm_cond_init(&s->tc, flags);
    return r;
  }
  int r = pt_mutex_init(&s->pm, shared, h->kind == PTHREAD_ROBUST, false);
  if (r != 0) return r;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  if (shared) pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
  r = -pthread_cond_init(&s->pc, &ca);
  pthread_condattr_destroy(&ca);
  return r;
}

static void cond_fini(pair_hdr *h) {
  cond_state *s = (cond_state *)h;
  if (h->kind == TANDEM) {
    tdm_cond_fini(&s->tc);
    tdm_lock_fini(&s->tl);
  } else {
    pthread_cond_destroy(&s->pc);
    pthread_mutex_destroy(&s->pm);
  }
}

static inline void tdm_cond_waiter(tdm_cond *c, tdm_lock *l) {
  int r = tdm_cond_wait(c, l, TDM_FOREVER);
  if (__builtin_expect(r != 0, 0)) die("tdm_cond_wait", r);
}

static inline void pt_wait(pthread_cond_t *c, pthread_mutex_t *m) {
  int r = pthread_cond_wait(c, m);
  if (__builtin_expect(r != 0, 0)) die("pthread_cond_wait", -r);
}

static void cond_a(pair_hdr *h) {
  cond_state *s = (cond_state *)h;
  if (h->kind == TANDEM) {
    tdm_take(&s->tl);
    for (int64_t i = 0; i < h->rounds; i++) {
      s->turn = 1;
      tdm_cond_notify(&s->tc, 1);
      while (s->turn == 1)
        tdm_cond_waiter(&s->tc, &s->tl);
    }
    tdm_lock_release(&s->tl);
  } else {
    pt_take(&s->pm);
    for (int64_t i = 0; i < h->rounds; i++) {
      s->turn = 1;
      pthread_cond_signal(&s->pc);
      while (s->turn == 1)
        pt_wait(&s->pc, &s->pm);
    }
    pt_give(&s->pm);
  }
}

static void cond_b(pair_hdr *h) {
  cond_state *s = (cond_state *)h;
  if (h->kind == TANDEM) {
    tdm_take(&s->tl);
    for (int64_t i = 0; i < h->rounds; i++) {
      while (s->turn == 0)
        tdm_cond_waiter(&s->tc, &s->tl);
      s->turn = 0;
      tdm_cond_notify(&s->tc, 1);
    }
    tdm_lock_release(&s->tl);
  } else {
    pt_take(&s->pm);
    for (int64_t i = 0; i < h->rounds; i++) {
      while (s->turn == 0)
        pt_wait(&s->pc, &s->pm);
      s->turn = 0;
      pthread_cond_signal(&s->pc);
    }
    pt_give(&s->pm);
  }
}

static const pair_ops cond_ops = { sizeof(cond_state), cond_init, cond_fini, cond_a, cond_b };

static int run_cond(const void *arg, int64_t iters, double *ns) {
  return run_pair(&cond_ops, arg, iters, ns);
}

/* Semaphores: A releases B's and takes its own; B takes its own and releases A's. */
typedef struct sem_state {
  pair_hdr h;
  tdm_sem ta, tb;
  sem_t pa, pb;
} sem_state;

static int sem_setup(pair_hdr *h, bool shared) {
  sem_state *s = (sem_state *)h;
  if (h->kind == TANDEM) {
    int flags = shared ? TDM_SYNC_SHARED : TDM_SYNC_PRIVATE;
    int r = tdm_sem_init(&s->ta, 0, 0, flags);
    if (r == 0) r = tdm_sem_init(&s->tb, 0, 0, flags);
    return r;
  }
  if (sem_init(&s->pa, shared, 0) != 0 || sem_init(&s->pb, shared, 0) != 0) return -errno;
  return 0;
}

static void sem_teardown(pair_hdr *h) {
  sem_state *s = (sem_state *)h;
  if (h->kind == TANDEM) {
    tdm_sem_fini(&s->ta);
    tdm_sem_fini(&s->tb);
  } else {
    sem_destroy(&s->pa);
    sem_destroy(&s->pb);
  }
}

static inline void tdm_down(tdm_sem *s) {
  int r = tdm_sem_acquire(s, TDM_FOREVER);
  if (__builtin_expect(r != 0, 0)) die("tdm_sem_acquire", r);
}

static inline void tdm_up(tdm_sem *s) {
  int r = tdm_sem_release(s, 1);
  if (__builtin_expect(r != 0, 0)) die("tdm_sem_release", r);
}

static inline void pt_down(sem_t *s) {
  while (sem_wait(s) != 0)
    if (errno != EINTR) die("sem_wait", -errno);
}

static inline void pt_up(sem_t *s) {
  if (sem_post(s) != 0) die("sem_post", -errno);
}

static void sem_a(pair_hdr *h) {
  sem_state *s = (sem_state *)h;
  PAIR_ROUNDS(h, (tdm_up(&s->tb), tdm_down(&s->ta)), (pt_up(&s->pb), pt_down(&s->pa)));
}

static void sem_b(pair_hdr *h) {
  sem_state *s = (sem_state *)h;
  PAIR_ROUNDS(h, (tdm_down(&s->tb), tdm_up(&s->ta)), (pt_down(&s->pb), pt_up(&s->pa)));
}

static const pair_ops sem_ops = { sizeof(sem_state), sem_setup, sem_teardown, sem_a, sem_b };

static int run_sem(const void *arg, int64_t iters, double *ns) {
  return run_pair(&sem_ops, arg, iters, ns);
}

/*
 * Events: A sets B's event and waits for its own, then clears it; B waits for its own, clears
 * it, sets A's. The peer is the event a C programmer writes by hand (and Python's threading.Event
 * is): a flag under a mutex, with a condition broadcast on set.
 */
typedef struct pt_event {
  pthread_mutex_t m;
  pthread_cond_t c;
  int flag;
} pt_event;

typedef struct event_state {
  pair_hdr h;
  tdm_event ta, tb;
  pt_event pa, pb;
} event_state;

static int pt_event_init(pt_event *e, bool shared) {
  int r = pt_mutex_init(&e->m, shared, false, false);
  if (r != 0) return r;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  if (shared) pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
  r = -pthread_cond_init(&e->c, &ca);
  pthread_condattr_destroy(&ca);
  e->flag = 0;
  return r;
}

static void pt_event_set(pt_event *e) {
  pt_take(&e->m);
  e->flag = 1;
  pthread_cond_broadcast(&e->c);
  pt_give(&e->m);
}

static void pt_event_clear(pt_event *e) {
  pt_take(&e->m);
  e->flag = 0;
  pt_give(&e->m);
}

static void pt_event_wait(pt_event *e) {
  pt_take(&e->m);
  while (!e->flag)
    pt_wait(&e->c, &e->m);
  pt_give(&e->m);
}

static int event_init(pair_hdr *h, bool shared) {
  event_state *s = (event_state *)h;
  if (h->kind == TANDEM) {
    int flags = shared ? TDM_SYNC_SHARED : TDM_SYNC_PRIVATE;
    int r = tdm_event_init(&s->ta, flags);
    if (r == 0) r = tdm_event_init(&s->tb, flags);
    return r;
  }
  int r = pt_event_init(&s->pa, shared);
  if (r == 0) r = pt_event_init(&s->pb, shared);
  return r;
}

static void event_fini(pair_hdr *h) {
  event_state *s = (event_state *)h;
  if (h->kind == TANDEM) {
    tdm_event_fini(&s->ta);
    tdm_event_fini(&s->tb);
  } else {
    pt_event *e[2] = { &s->pa, &s->pb };
    for (int i = 0; i < 2; i++) {
      pthread_cond_destroy(&e[i]->c);
      pthread_mutex_destroy(&e[i]->m);
    }
  }
}

static inline void tdm_await(tdm_event *e) {
  int r = tdm_event_wait(e, TDM_FOREVER);
  if (__builtin_expect(r != 0, 0)) die("tdm_event_wait", r);
}

static void event_a(pair_hdr *h) {
  event_state *s = (event_state *)h;
  PAIR_ROUNDS(h, (tdm_event_set(&s->tb), tdm_await(&s->ta), tdm_event_clear(&s->ta)),
              (pt_event_set(&s->pb), pt_event_wait(&s->pa), pt_event_clear(&s->pa)));
}

static void event_b(pair_hdr *h) {
  event_state *s = (event_state *)h;
  PAIR_ROUNDS(h, (tdm_await(&s->tb), tdm_event_clear(&s->tb), tdm_event_set(&s->ta)),
              (pt_event_wait(&s->pb), pt_event_clear(&s->pb), pt_event_set(&s->pa)));
}

static const pair_ops event_ops = { sizeof(event_state), event_init, event_fini, event_a, event_b };

static int run_event(const void *arg, int64_t iters, double *ns) {
  return run_pair(&event_ops, arg, iters, ns);
}

/* ---- The suite ------------------------------------------------------------------------------ */

/* Threads, private objects; processes, shared objects; one thread, shared objects. */
static const impl_arg tdm_thr = { TANDEM, false, false, 2 };
static const impl_arg tdm_proc = { TANDEM, true, true, 2 };
static const impl_arg tdm_sh = { TANDEM, true, false, 0 };
static const impl_arg pt_thr = { PTHREAD, false, false, 2 };
static const impl_arg pt_proc = { PTHREAD, true, true, 2 };
static const impl_arg pt_sh = { PTHREAD, true, false, 0 };
static const impl_arg ptr_proc = { PTHREAD_ROBUST, true, true, 2 };
static const impl_arg ptr_sh = { PTHREAD_ROBUST, true, false, 0 };
static const impl_arg trl_thr = { TANDEM_RLOCK, false, false, 0 };
static const impl_arg ptrec_thr = { PTHREAD_RECURSIVE, false, false, 0 };

void bench_sync_suite(bench_ctx *ctx) {
  static const bench_impl lock_thread[] = {
    { "tdm_lock", run_uncontended, &tdm_thr },
    { "pthread_mutex", run_uncontended, &pt_thr },
  };
  static const bench_impl lock_shared[] = {
    { "tdm_lock shared", run_uncontended, &tdm_sh },
    { "pthread_mutex pshared+robust", run_uncontended, &ptr_sh },
    { "pthread_mutex pshared", run_uncontended, &pt_sh },
  };
  static const bench_impl rlock_thread[] = {
    { "tdm_rlock", run_uncontended, &trl_thr },
    { "pthread_mutex recursive", run_uncontended, &ptrec_thr },
  };
  static const bench_impl rlock_held[] = {
    { "tdm_rlock (held once)", run_reentrant, &trl_thr },
    { "pthread_mutex recursive (held once)", run_reentrant, &ptrec_thr },
  };
  BENCH_MEASURE(ctx, "lock/uncontended/thread", 2000000, 500000, PEERS, lock_thread);
  BENCH_MEASURE(ctx, "lock/uncontended/shared", 2000000, 500000, PEERS, lock_shared);
  BENCH_MEASURE(ctx, "rlock/uncontended/thread", 2000000, 500000, PEERS, rlock_thread);
  BENCH_MEASURE(ctx, "rlock/reentrant/thread", 2000000, 500000, PEERS, rlock_held);

  /* Contended: total operations per run, shared among the parties. */
  static const bench_impl contended_2t[] = {
    { "tdm_lock", run_contended, &tdm_thr },
    { "pthread_mutex", run_contended, &pt_thr },
  };
  BENCH_MEASURE(ctx, "lock/contended/2-threads", 500000, 100000, PEERS, contended_2t);
  int ncpu = tdm_cpu_count();
  if (ncpu > 2) {
    static impl_arg tdm_many, pt_many;
    tdm_many = tdm_thr;
    pt_many = pt_thr;
    tdm_many.parties = pt_many.parties = ncpu;
    const bench_impl contended_nt[] = {
      { "tdm_lock", run_contended, &tdm_many },
      { "pthread_mutex", run_contended, &pt_many },
    };
    char key[BENCH_KEY_MAX];
    snprintf(key, sizeof key, "lock/contended/%d-threads", ncpu);
    BENCH_MEASURE(ctx, key, 500000, 100000, PEERS, contended_nt);
  }
  static const bench_impl contended_2p[] = {
    { "tdm_lock shared", run_contended, &tdm_proc },
    { "pthread_mutex pshared+robust", run_contended, &ptr_proc },
    { "pthread_mutex pshared", run_contended, &pt_proc },
  };
  BENCH_MEASURE(ctx, "lock/contended/2-procs", 500000, 100000, PEERS, contended_2p);

  /* Ping-pong: round trips per run. */
  static const bench_impl cond_t[] = {
    { "tdm_cond+tdm_lock", run_cond, &tdm_thr },
    { "pthread_cond+mutex", run_cond, &pt_thr },
  };
  static const bench_impl cond_p[] = {
    { "tdm_cond+tdm_lock shared", run_cond, &tdm_proc },
    { "pthread_cond+mutex pshared", run_cond, &pt_proc },
  };
  static const bench_impl sem_th[] = {
    { "tdm_sem", run_sem, &tdm_thr },
    { "sem_t", run_sem, &pt_thr },
  };
  static const bench_impl sem_p[] = {
    { "tdm_sem shared", run_sem, &tdm_proc },
    { "sem_t pshared", run_sem, &pt_proc },
  };
  static const bench_impl event_t[] = {
    { "tdm_event", run_event, &tdm_thr },
    { "pthread mutex+cond flag", run_event, &pt_thr },
  };
  static const bench_impl event_p[] = {
    { "tdm_event shared", run_event, &tdm_proc },
    { "pthread mutex+cond flag pshared", run_event, &pt_proc },
  };
  BENCH_MEASURE(ctx, "cond/ping-pong/threads", 10000, 2000, PEERS, cond_t);
  BENCH_MEASURE(ctx, "cond/ping-pong/procs", 10000, 2000, PEERS, cond_p);
  BENCH_MEASURE(ctx, "sem/hand-off/threads", 10000, 2000, PEERS, sem_th);
  BENCH_MEASURE(ctx, "sem/hand-off/procs", 10000, 2000, PEERS, sem_p);
  BENCH_MEASURE(ctx, "event/ping-pong/threads", 10000, 2000, PEERS, event_t);
  BENCH_MEASURE(ctx, "event/ping-pong/procs", 10000, 2000, PEERS, event_p);
}
