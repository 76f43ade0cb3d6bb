/*
 * sync_test.c: Lock, RLock, Condition, Semaphore, Event and Barrier, between threads and between
 * real processes (fork, objects in a MAP_SHARED mapping): results, timeouts, owner death, kills
 * at random points, misuse, and a stress case per primitive.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include "platform/platform.h"
#include "runner.h"

/* ---- Helpers --------------------------------------------------------------------------------- */

static void join(tdm_thread *t) {
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
}

/* Memory shared with forked children, holding one of every primitive and some scratch. */
struct shared {
  tdm_lock lock, lock2, lock3;
  tdm_rlock rlock;
  tdm_cond cond, cond2;
  tdm_sem sem, sem2;
  tdm_event event, event2;
  tdm_barrier barrier;
  pthread_mutex_t pm1, pm2;
  volatile long counter;
  volatile int inside, turn, ready, flag;
  int results[64];
  int arrived[1024];
};

static struct shared *shared_new(void) {
  struct shared *s = tdm_test_shared(sizeof *s);
  CHECK_OK(tdm_lock_init(&s->lock, TDM_SYNC_SHARED));
  CHECK_OK(tdm_lock_init(&s->lock2, TDM_SYNC_SHARED));
  CHECK_OK(tdm_lock_init(&s->lock3, TDM_SYNC_SHARED));
  CHECK_OK(tdm_rlock_init(&s->rlock, TDM_SYNC_SHARED));
  CHECK_OK(tdm_cond_init(&s->cond, TDM_SYNC_SHARED));
  CHECK_OK(tdm_cond_init(&s->cond2, TDM_SYNC_SHARED));
  CHECK_OK(tdm_sem_init(&s->sem, 0, 0, TDM_SYNC_SHARED));
  CHECK_OK(tdm_sem_init(&s->sem2, 0, 0, TDM_SYNC_SHARED));
  CHECK_OK(tdm_event_init(&s->event, TDM_SYNC_SHARED));
  CHECK_OK(tdm_event_init(&s->event2, TDM_SYNC_SHARED));
  return s;
}

static bool all_sleeping(const pid_t *pids, int n) {
  for (int i = 0; i < n; i++)
    if (!tdm_test_process_sleeping(pids[i])) return false;
  return true;
}

/*
 * Forks n children that run fn(s), each adding one to s->ready before it blocks, and waits until
 * s->ready reaches n and every one of them sleeps in the kernel.
 */
static void fork_blocked(void (*fn)(void *), struct shared *s, pid_t *pids, int n) {
  for (int i = 0; i < n; i++)
    pids[i] = tdm_test_fork(fn, s);
  WAIT_UNTIL(s->ready == n && all_sleeping(pids, n));
}

/* ---- Lock ------------------------------------------------------------------------------------ */

TEST(lock_basic) {
  tdm_lock l;
  CHECK_OK(tdm_lock_init(&l, TDM_SYNC_PRIVATE));
  CHECK(!tdm_lock_locked(&l));
  CHECK_OK(tdm_lock_acquire(&l, TDM_FOREVER));
  CHECK(tdm_lock_locked(&l));
  CHECK(tdm_lock_held(&l));
  CHECK_ERR(tdm_lock_acquire(&l, TDM_FOREVER), -EDEADLK);
  CHECK_ERR(tdm_lock_acquire(&l, 0), -EDEADLK);
  CHECK(tdm_lock_held(&l));
  tdm_lock_release(&l);
  CHECK(!tdm_lock_locked(&l));
  CHECK(!tdm_lock_held(&l));
  CHECK_OK(tdm_lock_acquire(&l, 0));
  tdm_lock_release(&l);
  tdm_lock_fini(&l);
}

TEST(lock_init_arguments) {
  tdm_lock l;
  CHECK_ERR(tdm_lock_init(&l, 2), -EINVAL);
  CHECK_ERR(tdm_lock_init(&l, -1), -EINVAL);
  /* On glibc/Linux x86-64 and arm64, shared (robust) locks are available. */
  CHECK_OK(tdm_lock_init(&l, TDM_SYNC_SHARED));
  tdm_lock_fini(&l);
}

struct holder {
  tdm_lock *lock;
  tdm_event go, held;
};

static void hold_until_go(void *arg) {
  struct holder *h = arg;
  CHECK_OK(tdm_lock_acquire(h->lock, TDM_FOREVER));
  tdm_event_set(&h->held);
  CHECK_OK(tdm_event_wait(&h->go, TDM_FOREVER));
  tdm_lock_release(h->lock);
}

static void held_lock_times_out(int flags) {
  tdm_lock l;
  struct holder h = { .lock = &l };
  CHECK_OK(tdm_lock_init(&l, flags));
  CHECK_OK(tdm_event_init(&h.go, 0));
  CHECK_OK(tdm_event_init(&h.held, 0));
  tdm_thread *t = tdm_test_thread(hold_until_go, &h);
  CHECK_OK(tdm_event_wait(&h.held, TDM_FOREVER));
  CHECK(tdm_lock_locked(&l));
  CHECK(!tdm_lock_held(&l));
  CHECK_ERR(tdm_lock_acquire(&l, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_lock_acquire(&l, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  tdm_event_set(&h.go);
  CHECK_OK(tdm_lock_acquire(&l, TDM_FOREVER));
  tdm_lock_release(&l);
  join(t);
  tdm_lock_fini(&l);
}

TEST(lock_timeouts_private) {
  held_lock_times_out(TDM_SYNC_PRIVATE);
}

TEST(lock_timeouts_shared) {
  held_lock_times_out(TDM_SYNC_SHARED);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

/* SIGALRM every millisecond, without SA_RESTART: every futex wait is interrupted. */
static void signal_storm(bool on) {
  struct sigaction sa = { 0 };
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = { { 0, on ? 1000 : 0 }, { 0, on ? 1000 : 0 } };
  setitimer(ITIMER_REAL, &it, NULL);
}

TEST(timeouts_are_not_extended_by_signals) {
  tdm_lock l;
  struct holder h = { .lock = &l };
  CHECK_OK(tdm_lock_init(&l, 0));
  CHECK_OK(tdm_event_init(&h.go, 0));
  CHECK_OK(tdm_event_init(&h.held, 0));
  tdm_sem s;
  CHECK_OK(tdm_sem_init(&s, 0, 0, 0));
  tdm_cond c;
  CHECK_OK(tdm_cond_init(&c, 0));
  tdm_lock cl;
  CHECK_OK(tdm_lock_init(&cl, 0));
  tdm_thread *t = tdm_test_thread(hold_until_go, &h);
  CHECK_OK(tdm_event_wait(&h.held, TDM_FOREVER));

  signal_storm(true);
  /* Were a signal to restart a relative timeout, none of these waits would ever end. */
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_lock_acquire(&l, TDM_MS(50)), -ETIMEDOUT);
  int64_t t1 = tdm_clock_now();
  CHECK_ERR(tdm_sem_acquire(&s, TDM_MS(50)), -ETIMEDOUT);
  int64_t t2 = tdm_clock_now();
  CHECK_ERR(tdm_event_wait(&h.go, TDM_MS(50)), -ETIMEDOUT);
  int64_t t3 = tdm_clock_now();
  CHECK_OK(tdm_lock_acquire(&cl, TDM_FOREVER));
  CHECK_ERR(tdm_cond_wait(&c, &cl, TDM_MS(50)), -ETIMEDOUT);
  tdm_lock_release(&cl);
  int64_t t4 = tdm_clock_now();
  signal_storm(false);

  CHECK(alarms > 20);
  int64_t spans[] = { t1 - t0, t2 - t1, t3 - t2, t4 - t3 };
  /* Not a measurement: a generous bound (100 times the timeout) that proves each wait ended on
   * its own deadline, not by luck between two signals or at the case's timeout. */
  int64_t bound = (int64_t)((double)TDM_S(5) * tdm_test_timeout_scale());
  for (int i = 0; i < 4; i++) {
    CHECK(spans[i] >= TDM_MS(50));
    CHECK(spans[i] < bound);
  }
  tdm_event_set(&h.go);
  join(t);
}

struct counting {
  tdm_lock *lock;
  volatile long *counter;
  volatile int *inside;
  long iterations;
};

static void count_under_lock(void *arg) {
  struct counting *c = arg;
  for (long i = 0; i < c->iterations; i++) {
    int r = tdm_lock_acquire(c->lock, TDM_FOREVER);
    if (r != 0) CHECK_OK(r);
    if (*c->inside != 0) CHECK(!"two holders at once");
    *c->inside = 1;
    (*c->counter)++;
    *c->inside = 0;
    tdm_lock_release(c->lock);
  }
}

TEST(lock_stress_threads) {
  tdm_lock l;
  CHECK_OK(tdm_lock_init(&l, 0));
  volatile long counter = 0;
  volatile int inside = 0;
  struct counting c = { &l, &counter, &inside, 40000 };
  tdm_thread *t[8];
  for (int i = 0; i < 8; i++)
    t[i] = tdm_test_thread(count_under_lock, &c);
  for (int i = 0; i < 8; i++)
    join(t[i]);
  CHECK_EQ(counter, 8 * 40000);
  tdm_lock_fini(&l);
}

static void count_shared(void *arg) {
  struct shared *s = arg;
  struct counting c = { &s->lock, &s->counter, &s->inside, 20000 };
  count_under_lock(&c);
}

TEST(lock_stress_processes) {
  struct shared *s = shared_new();
  pid_t p[4];
  for (int i = 0; i < 4; i++)
    p[i] = tdm_test_fork(count_shared, s);
  /* The parent's threads compete too. */
  struct counting c = { &s->lock, &s->counter, &s->inside, 20000 };
  tdm_thread *t = tdm_test_thread(count_under_lock, &c);
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(p[i]);
  join(t);
  CHECK_EQ(s->counter, 5 * 20000);
}

static void take_and_hang(void *arg) {
  struct shared *s = arg;
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  s->counter = 1;
  tdm_event_set(&s->event);
  for (;;)
    pause();
}

TEST(lock_owner_death_is_reported_and_lock_keeps_working) {
  struct shared *s = shared_new();
  pid_t p = tdm_test_fork(take_and_hang, s);
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  CHECK(tdm_lock_locked(&s->lock));
  CHECK_ERR(tdm_lock_acquire(&s->lock, 0), -ETIMEDOUT);
  tdm_test_kill_and_reap(p);
  CHECK_ERR(tdm_lock_acquire(&s->lock, TDM_FOREVER), -EOWNERDEAD);
  CHECK(tdm_lock_held(&s->lock));
  tdm_lock_release(&s->lock);
  /* Reported once; from now on the lock is an ordinary lock. */
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  tdm_lock_release(&s->lock);
  CHECK_OK(tdm_lock_acquire(&s->lock, 0));
  tdm_lock_release(&s->lock);
}

struct killer {
  int32_t victim_tid; /* wait until this thread sleeps */
  pid_t target;       /* then kill this process */
};

static void kill_when_asleep(void *arg) {
  struct killer *k = arg;
  WAIT_UNTIL(tdm_test_thread_sleeping(k->victim_tid));
  kill(k->target, SIGKILL);
}

TEST(lock_owner_death_wakes_a_sleeping_waiter) {
  struct shared *s = shared_new();
  pid_t p = tdm_test_fork(take_and_hang, s);
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  struct killer k = { tdm_test_gettid(), p };
  tdm_thread *t = tdm_test_thread(kill_when_asleep, &k);
  /* Asleep in the futex when the owner dies: the kernel must wake us. */
  CHECK_ERR(tdm_lock_acquire(&s->lock, TDM_FOREVER), -EOWNERDEAD);
  tdm_lock_release(&s->lock);
  join(t);
  int status = tdm_test_wait(p);
  CHECK(WIFSIGNALED(status));
}

static void wait_for_lock_child(void *arg) {
  struct shared *s = arg;
  int r = tdm_lock_acquire(&s->lock, TDM_FOREVER);
  CHECK(r == 0 || r == -EOWNERDEAD);
  __atomic_fetch_add(&s->results[r == 0 ? 0 : 1], 1, __ATOMIC_SEQ_CST);
  tdm_lock_release(&s->lock);
}

TEST(lock_owner_death_with_many_waiting_processes) {
  struct shared *s = shared_new();
  pid_t owner = tdm_test_fork(take_and_hang, s);
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  pid_t w[4];
  for (int i = 0; i < 4; i++)
    w[i] = tdm_test_fork(wait_for_lock_child, s);
  WAIT_UNTIL(all_sleeping(w, 4));
  tdm_test_kill_and_reap(owner);
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(w[i]);
  CHECK_EQ(s->results[1], 1); /* exactly one was told */
  CHECK_EQ(s->results[0], 3);
}

static void take_and_return(void *arg) {
  CHECK_OK(tdm_lock_acquire(arg, TDM_FOREVER));
}

TEST(lock_owner_thread_exit_is_reported) {
  struct shared *s = shared_new();
  join(tdm_test_thread(take_and_return, &s->lock));
  CHECK_ERR(tdm_lock_acquire(&s->lock, TDM_FOREVER), -EOWNERDEAD);
  tdm_lock_release(&s->lock);
}

static void robust_pthread_init(pthread_mutex_t *m) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  CHECK_OK(pthread_mutex_init(m, &a));
  pthread_mutexattr_destroy(&a);
}

static void interleave_and_hang(void *arg) {
  struct shared *s = arg;
  /* glibc's nodes and ours in one robust list, removed from the middle and both ends. */
  CHECK_OK(pthread_mutex_lock(&s->pm1));
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  CHECK_OK(pthread_mutex_lock(&s->pm2));
  CHECK_OK(tdm_lock_acquire(&s->lock2, TDM_FOREVER));
  tdm_lock_release(&s->lock);
  CHECK_OK(pthread_mutex_unlock(&s->pm1));
  CHECK_OK(tdm_lock_acquire(&s->lock3, TDM_FOREVER));
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  tdm_lock_release(&s->lock3);
  /* Still held at death: pm2, lock2, lock. */
  tdm_event_set(&s->event);
  for (;;)
    pause();
}

TEST(lock_robust_list_shared_with_glibc_robust_mutexes) {
  struct shared *s = shared_new();
  robust_pthread_init(&s->pm1);
  robust_pthread_init(&s->pm2);
  pid_t p = tdm_test_fork(interleave_and_hang, s);
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  tdm_test_kill_and_reap(p);
  CHECK_ERR(-pthread_mutex_lock(&s->pm2), -EOWNERDEAD);
  CHECK_OK(pthread_mutex_consistent(&s->pm2));
  CHECK_OK(pthread_mutex_unlock(&s->pm2));
  CHECK_OK(pthread_mutex_lock(&s->pm1));
  CHECK_OK(pthread_mutex_unlock(&s->pm1));
  CHECK_ERR(tdm_lock_acquire(&s->lock2, 0), -EOWNERDEAD);
  CHECK_ERR(tdm_lock_acquire(&s->lock, 0), -EOWNERDEAD);
  CHECK_OK(tdm_lock_acquire(&s->lock3, 0));
  tdm_lock_release(&s->lock);
  tdm_lock_release(&s->lock2);
  tdm_lock_release(&s->lock3);
}

#define NMIX 6

struct mix {
  tdm_lock locks[NMIX];
  pthread_mutex_t mutexes[NMIX];
  bool held_lock[NMIX], held_mutex[NMIX];
  uint64_t seed;
};

static void random_mix_then_exit(void *arg) {
  struct mix *m = arg;
  for (int i = 0; i < 20000; i++) {
    int k = (int)(tdm_test_rand(&m->seed) % NMIX);
    if (tdm_test_rand(&m->seed) & 1) {
      if (m->held_lock[k])
        tdm_lock_release(&m->locks[k]);
      else
        CHECK_OK(tdm_lock_acquire(&m->locks[k], TDM_FOREVER));
      m->held_lock[k] = !m->held_lock[k];
    } else if (m->held_mutex[k]) {
      CHECK_OK(pthread_mutex_unlock(&m->mutexes[k]));
      m->held_mutex[k] = false;
    } else {
      /* pthread mutexes are taken in index order (released in any order), so that lock-order
       * checkers (TSan) see no inversion; list positions are still shuffled by the releases. */
      bool higher = false;
      for (int j = k + 1; j < NMIX; j++)
        higher = higher || m->held_mutex[j];
      if (higher) continue;
      CHECK_OK(pthread_mutex_lock(&m->mutexes[k]));
      m->held_mutex[k] = true;
    }
  }
  /* The thread ends holding a random subset of both kinds. */
}

TEST(lock_robust_list_random_interleaving) {
  for (int round = 0; round < 20; round++) {
    struct mix *m = tdm_test_shared(sizeof *m);
    m->seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(round + 1);
    for (int i = 0; i < NMIX; i++) {
      CHECK_OK(tdm_lock_init(&m->locks[i], TDM_SYNC_SHARED));
      robust_pthread_init(&m->mutexes[i]);
    }
    join(tdm_test_thread(random_mix_then_exit, m));
    for (int i = 0; i < NMIX; i++) {
      CHECK_ERR(tdm_lock_acquire(&m->locks[i], 0), m->held_lock[i] ? -EOWNERDEAD : 0);
      tdm_lock_release(&m->locks[i]);
      CHECK_ERR(pthread_mutex_trylock(&m->mutexes[i]), m->held_mutex[i] ? EOWNERDEAD : 0);
      if (m->held_mutex[i]) CHECK_OK(pthread_mutex_consistent(&m->mutexes[i]));
      CHECK_OK(pthread_mutex_unlock(&m->mutexes[i]));
    }
    tdm_test_unshare(m, sizeof *m);
  }
}

static void hammer_forever(void *arg) {
  struct shared *s = arg;
  for (;;) {
    int r = tdm_lock_acquire(&s->lock, TDM_FOREVER);
    if (r != 0 && r != -EOWNERDEAD) CHECK_OK(r);
    s->inside = 1;
    s->counter++;
    s->inside = 0;
    tdm_lock_release(&s->lock);
  }
}

TEST_T(lock_survives_kills_at_random_points, 120) {
  struct shared *s = shared_new();
  uint64_t seed = 42;
  int owner_died = 0;
  for (int round = 0; round < 200; round++) {
    pid_t a = tdm_test_fork(hammer_forever, s);
    pid_t b = tdm_test_fork(hammer_forever, s);
    long before = s->counter;
    WAIT_UNTIL(s->counter > before + 100);
    tdm_clock_sleep((int64_t)(tdm_test_rand(&seed) % TDM_US(500)));
    tdm_test_kill_and_reap(a);
    /* The survivor must go on. */
    long mid = s->counter;
    WAIT_UNTIL(s->counter > mid + 100);
    tdm_test_kill_and_reap(b);
    int r = tdm_lock_acquire(&s->lock, TDM_FOREVER);
    CHECK(r == 0 || r == -EOWNERDEAD);
    /* Whoever died inside the critical section was reported. */
    if (s->inside) CHECK_ERR(r, -EOWNERDEAD);
    owner_died += r == -EOWNERDEAD;
    s->inside = 0;
    tdm_lock_release(&s->lock);
  }
  /* Afterwards it still counts exactly. */
  long start = s->counter;
  pid_t p[2];
  for (int i = 0; i < 2; i++)
    p[i] = tdm_test_fork(count_shared, s);
  for (int i = 0; i < 2; i++)
    tdm_test_wait_ok(p[i]);
  CHECK_EQ(s->counter, start + 2 * 20000);
  printf("owner died inside the lock in %d of 200 rounds\n", owner_died);
}

static void release_unheld(void *arg) {
  tdm_lock l;
  (void)arg;
  CHECK_OK(tdm_lock_init(&l, 0));
  tdm_lock_release(&l);
}

static void release_from_wrong_thread_body(void *arg) {
  tdm_lock_release(arg);
}

static void release_from_wrong_thread(void *arg) {
  (void)arg;
  static tdm_lock l;
  CHECK_OK(tdm_lock_init(&l, 0));
  CHECK_OK(tdm_lock_acquire(&l, TDM_FOREVER));
  join(tdm_test_thread(release_from_wrong_thread_body, &l));
}

static void fini_held(void *arg) {
  tdm_lock l;
  (void)arg;
  CHECK_OK(tdm_lock_init(&l, 0));
  CHECK_OK(tdm_lock_acquire(&l, TDM_FOREVER));
  tdm_lock_fini(&l);
}

static void use_uninitialised(void *arg) {
  tdm_lock l;
  (void)arg;
  memset(&l, 0, sizeof l);
  tdm_lock_acquire(&l, TDM_FOREVER);
}

static void use_after_fini(void *arg) {
  tdm_lock l;
  (void)arg;
  CHECK_OK(tdm_lock_init(&l, 0));
  tdm_lock_fini(&l);
  tdm_lock_acquire(&l, TDM_FOREVER);
}

TEST(lock_misuse_aborts) {
  EXPECT_ABORT(release_unheld, NULL, "tdm_lock_release: lock");
  EXPECT_ABORT(release_unheld, NULL, "is not held by this thread");
  EXPECT_ABORT(release_from_wrong_thread, NULL, "is not held by this thread");
  EXPECT_ABORT(fini_held, NULL, "tdm_lock_fini: lock");
  EXPECT_ABORT(use_uninitialised, NULL, "tdm_lock_acquire");
  EXPECT_ABORT(use_uninitialised, NULL, "not an initialised object");
  EXPECT_ABORT(use_after_fini, NULL, "not an initialised object");
}

struct forked_locks {
  tdm_lock private_lock;
  tdm_rlock private_rlock;
  tdm_lock *shared_lock;
};

static void child_of_lock_holder(void *arg) {
  struct forked_locks *f = arg;
  /* The child's copy of a private lock is held by the child's (forking) thread ... */
  CHECK(tdm_lock_held(&f->private_lock));
  CHECK_ERR(tdm_lock_acquire(&f->private_lock, 0), -EDEADLK);
  tdm_lock_release(&f->private_lock);
  CHECK_OK(tdm_lock_acquire(&f->private_lock, 0));
  tdm_lock_release(&f->private_lock);
  CHECK_EQ(tdm_rlock_level(&f->private_rlock), 2);
  tdm_rlock_release(&f->private_rlock);
  tdm_rlock_release(&f->private_rlock);
  CHECK(!tdm_rlock_held(&f->private_rlock));
  /* ... but a shared lock is still the parent's. */
  CHECK(tdm_lock_locked(f->shared_lock));
  CHECK(!tdm_lock_held(f->shared_lock));
  CHECK_ERR(tdm_lock_acquire(f->shared_lock, 0), -ETIMEDOUT);
  CHECK_OK(tdm_lock_acquire(f->shared_lock, TDM_FOREVER)); /* once the parent lets go */
  tdm_lock_release(f->shared_lock);
}

TEST(locks_held_across_fork) {
  struct shared *s = shared_new();
  static struct forked_locks f;
  CHECK_OK(tdm_lock_init(&f.private_lock, 0));
  CHECK_OK(tdm_rlock_init(&f.private_rlock, 0));
  f.shared_lock = &s->lock;
  CHECK_OK(tdm_lock_acquire(&f.private_lock, 0));
  CHECK_OK(tdm_rlock_acquire(&f.private_rlock, 0));
  CHECK_OK(tdm_rlock_acquire(&f.private_rlock, 0));
  CHECK_OK(tdm_lock_acquire(&s->lock, 0));
  pid_t p = tdm_test_fork(child_of_lock_holder, &f);
  WAIT_UNTIL(tdm_test_process_sleeping(p)); /* waiting for the shared lock */
  tdm_lock_release(&s->lock);
  tdm_test_wait_ok(p);
  CHECK(tdm_lock_held(&f.private_lock)); /* the parent's own copies are untouched */
  CHECK_EQ(tdm_rlock_level(&f.private_rlock), 2);
  tdm_lock_release(&f.private_lock);
  tdm_rlock_release(&f.private_rlock);
  tdm_rlock_release(&f.private_rlock);
}

/* A thread whose robust list tandem cannot use (only a thread not made by pthread_create, which
 * the test imitates by marking the list unusable) gets -ENOTSUP from shared locks and barriers
 * instead of objects that would not survive its death. */
struct unusable {
  struct shared *s;
  int init, barrier_init, lock, rlock, barrier, private_lock;
};

static void without_robust_list(void *arg) {
  struct unusable *u = arg;
  tdm__robust_state_tls = -1;
  tdm_lock l;
  u->init = tdm_lock_init(&l, TDM_SYNC_SHARED);
  tdm_barrier b;
  u->barrier_init = tdm_barrier_init(&b, 2, TDM_SYNC_SHARED);
  u->lock = tdm_lock_acquire(&u->s->lock, TDM_FOREVER);
  u->rlock = tdm_rlock_acquire(&u->s->rlock, TDM_FOREVER);
  u->barrier = tdm_barrier_wait(&u->s->barrier, TDM_FOREVER);
  tdm_lock p;
  CHECK_OK(tdm_lock_init(&p, TDM_SYNC_PRIVATE));
  u->private_lock = tdm_lock_acquire(&p, 0);
  tdm_lock_release(&p);
}

/* The barrier calls that cannot return a code abort instead. */
static void barrier_abort_without_robust_list(void *arg) {
  tdm__robust_state_tls = -1;
  tdm_barrier_abort(arg);
}

TEST(shared_locks_refuse_a_thread_without_a_robust_list) {
  struct shared *s = shared_new();
  CHECK_OK(tdm_barrier_init(&s->barrier, 1, TDM_SYNC_SHARED));
  struct unusable u = { s, 1, 1, 1, 1, 1, 1 };
  join(tdm_test_thread(without_robust_list, &u));
  CHECK_ERR(u.init, -ENOTSUP);
  CHECK_ERR(u.barrier_init, -ENOTSUP);
  CHECK_ERR(u.lock, -ENOTSUP);
  CHECK_ERR(u.rlock, -ENOTSUP);
  CHECK_ERR(u.barrier, -ENOTSUP);
  CHECK_OK(u.private_lock);
  CHECK(!tdm_lock_locked(&s->lock)); /* nothing was taken */
  CHECK_OK(tdm_lock_acquire(&s->lock, 0));
  tdm_lock_release(&s->lock);
  EXPECT_ABORT(barrier_abort_without_robust_list, &s->barrier, "no usable robust list");
  CHECK(!tdm_barrier_broken(&s->barrier));
}

/* ---- RLock ----------------------------------------------------------------------------------- */

struct rholder {
  tdm_rlock *lock;
  int result;
};

static void rlock_try(void *arg) {
  struct rholder *h = arg;
  h->result = tdm_rlock_acquire(h->lock, 0);
  if (h->result == 0) tdm_rlock_release(h->lock);
}

TEST(rlock_levels) {
  tdm_rlock l;
  CHECK_OK(tdm_rlock_init(&l, 0));
  CHECK_EQ(tdm_rlock_level(&l), 0);
  for (int i = 1; i <= 3; i++) {
    CHECK_OK(tdm_rlock_acquire(&l, 0));
    CHECK_EQ(tdm_rlock_level(&l), i);
  }
  struct rholder h = { &l, 1 };
  join(tdm_test_thread(rlock_try, &h));
  CHECK_ERR(h.result, -ETIMEDOUT);
  tdm_rlock_release(&l);
  tdm_rlock_release(&l);
  CHECK(tdm_rlock_held(&l));
  join(tdm_test_thread(rlock_try, &h));
  CHECK_ERR(h.result, -ETIMEDOUT);
  tdm_rlock_release(&l);
  CHECK(!tdm_rlock_held(&l));
  join(tdm_test_thread(rlock_try, &h));
  CHECK_OK(h.result);
  /* The level cannot wrap: at UINT32_MAX levels, one more is refused and nothing changes. */
  CHECK_OK(tdm_rlock_acquire(&l, 0));
  l.count_ = UINT32_MAX; /* reaching it by acquiring would take minutes */
  CHECK_ERR(tdm_rlock_acquire(&l, 0), -EAGAIN);
  CHECK_EQ(tdm_rlock_level(&l), UINT32_MAX);
  l.count_ = 1;
  tdm_rlock_release(&l);
  CHECK(!tdm_rlock_held(&l));
  tdm_rlock_fini(&l);
  CHECK_ERR(tdm_rlock_init(&l, 4), -EINVAL);
}

static void rlock_take_and_hang(void *arg) {
  struct shared *s = arg;
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_rlock_acquire(&s->rlock, TDM_FOREVER));
  tdm_event_set(&s->event);
  for (;;)
    pause();
}

TEST(rlock_owner_death) {
  struct shared *s = shared_new();
  pid_t p = tdm_test_fork(rlock_take_and_hang, s);
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  tdm_test_kill_and_reap(p);
  CHECK_ERR(tdm_rlock_acquire(&s->rlock, TDM_FOREVER), -EOWNERDEAD);
  CHECK_EQ(tdm_rlock_level(&s->rlock), 1);
  tdm_rlock_release(&s->rlock);
  CHECK(!tdm_rlock_held(&s->rlock));
}

struct rcount {
  tdm_rlock *lock;
  volatile long *counter;
  uint64_t seed;
};

static void rlock_random_depths(void *arg) {
  struct rcount *c = arg;
  for (int i = 0; i < 20000; i++) {
    int depth = 1 + (int)(tdm_test_rand(&c->seed) % 4);
    for (int d = 0; d < depth; d++)
      CHECK_OK(tdm_rlock_acquire(c->lock, TDM_FOREVER));
    (*c->counter)++;
    CHECK_EQ(tdm_rlock_level(c->lock), depth);
    for (int d = 0; d < depth; d++)
      tdm_rlock_release(c->lock);
  }
}

TEST(rlock_stress_threads) {
  tdm_rlock l;
  CHECK_OK(tdm_rlock_init(&l, 0));
  volatile long counter = 0;
  struct rcount c[6];
  tdm_thread *t[6];
  for (int i = 0; i < 6; i++) {
    c[i] = (struct rcount){ &l, &counter, (uint64_t)i * 7919 + 1 };
    t[i] = tdm_test_thread(rlock_random_depths, &c[i]);
  }
  for (int i = 0; i < 6; i++)
    join(t[i]);
  CHECK_EQ(counter, 6 * 20000);
}

static void rlock_release_unheld(void *arg) {
  tdm_rlock l;
  (void)arg;
  CHECK_OK(tdm_rlock_init(&l, 0));
  tdm_rlock_release(&l);
}

static void rlock_fini_held(void *arg) {
  tdm_rlock l;
  (void)arg;
  CHECK_OK(tdm_rlock_init(&l, 0));
  CHECK_OK(tdm_rlock_acquire(&l, 0));
  tdm_rlock_fini(&l);
}

TEST(rlock_misuse_aborts) {
  EXPECT_ABORT(rlock_release_unheld, NULL, "tdm_rlock_release: recursive lock");
  EXPECT_ABORT(rlock_fini_held, NULL, "tdm_rlock_fini: lock");
}

/* ---- Condition ------------------------------------------------------------------------------- */

#define QCAP 8

struct queue {
  tdm_lock lock;
  tdm_cond not_empty, not_full;
  long items[QCAP];
  int head, len;
  long produced_sum, consumed_sum;
};

static bool q_has_room(void *arg) {
  return ((struct queue *)arg)->len < QCAP;
}

static void producer(void *arg) {
  struct queue *q = arg;
  for (long i = 1; i <= 20000; i++) {
    CHECK_OK(tdm_lock_acquire(&q->lock, TDM_FOREVER));
    CHECK_OK(tdm_cond_wait_for(&q->not_full, &q->lock, q_has_room, q, TDM_FOREVER));
    q->items[(q->head + q->len) % QCAP] = i;
    q->len++;
    q->produced_sum += i;
    tdm_cond_notify(&q->not_empty, 1);
    tdm_lock_release(&q->lock);
  }
}

static void consumer(void *arg) {
  struct queue *q = arg;
  for (long n = 0; n < 20000; n++) {
    CHECK_OK(tdm_lock_acquire(&q->lock, TDM_FOREVER));
    while (q->len == 0)
      CHECK_OK(tdm_cond_wait(&q->not_empty, &q->lock, TDM_FOREVER));
    q->consumed_sum += q->items[q->head];
    q->head = (q->head + 1) % QCAP;
    q->len--;
    tdm_cond_notify(&q->not_full, 1);
    tdm_lock_release(&q->lock);
  }
}

TEST(cond_producers_and_consumers_threads) {
  struct queue q = { 0 };
  CHECK_OK(tdm_lock_init(&q.lock, 0));
  CHECK_OK(tdm_cond_init(&q.not_empty, 0));
  CHECK_OK(tdm_cond_init(&q.not_full, 0));
  tdm_thread *t[6];
  for (int i = 0; i < 3; i++)
    t[i] = tdm_test_thread(producer, &q);
  for (int i = 3; i < 6; i++)
    t[i] = tdm_test_thread(consumer, &q);
  for (int i = 0; i < 6; i++)
    join(t[i]);
  CHECK_EQ(q.len, 0);
  CHECK_EQ(q.produced_sum, 3L * 20000 * 20001 / 2);
  CHECK_EQ(q.consumed_sum, q.produced_sum);
}

static bool never(void *arg) {
  (void)arg;
  return false;
}

static bool always(void *arg) {
  (void)arg;
  return true;
}

TEST(cond_timeouts) {
  tdm_lock l;
  tdm_cond c;
  CHECK_OK(tdm_lock_init(&l, 0));
  CHECK_OK(tdm_cond_init(&c, 0));
  CHECK_OK(tdm_lock_acquire(&l, TDM_FOREVER));
  CHECK_ERR(tdm_cond_wait(&c, &l, 0), -ETIMEDOUT);
  CHECK(tdm_lock_held(&l));
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_cond_wait(&c, &l, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  CHECK(tdm_lock_held(&l));
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_cond_wait_for(&c, &l, never, NULL, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  CHECK(tdm_lock_held(&l));
  CHECK_ERR(tdm_cond_wait_for(&c, &l, never, NULL, 0), -ETIMEDOUT);
  CHECK_OK(tdm_cond_wait_for(&c, &l, always, NULL, 0));
  CHECK_OK(tdm_cond_wait_for(&c, &l, always, NULL, TDM_FOREVER));
  tdm_lock_release(&l);
  CHECK_ERR(tdm_cond_init(&c, 8), -EINVAL);
}

struct waiters {
  tdm_lock lock;
  tdm_cond cond;
  int generation; /* bumped by the notifier, under the lock */
  int woken;
  int32_t tids[8];
  int registered;
};

static void cond_waiter(void *arg) {
  struct waiters *w = arg;
  CHECK_OK(tdm_lock_acquire(&w->lock, TDM_FOREVER));
  w->tids[w->registered++] = tdm_test_gettid();
  int gen = w->generation;
  /* One wait only: a notify must end it (there are no spurious returns to absorb here). */
  CHECK_OK(tdm_cond_wait(&w->cond, &w->lock, TDM_FOREVER));
  CHECK(w->generation != gen);
  w->woken++;
  tdm_lock_release(&w->lock);
}

static bool all_asleep(struct waiters *w, int n) {
  CHECK_OK(tdm_lock_acquire(&w->lock, TDM_FOREVER));
  bool ok = w->registered == n;
  for (int i = 0; ok && i < n; i++)
    ok = tdm_test_thread_sleeping(w->tids[i]);
  tdm_lock_release(&w->lock);
  return ok;
}

static int woken(struct waiters *w) {
  CHECK_OK(tdm_lock_acquire(&w->lock, TDM_FOREVER));
  int n = w->woken;
  tdm_lock_release(&w->lock);
  return n;
}

static void notify_locked(struct waiters *w, int n) {
  CHECK_OK(tdm_lock_acquire(&w->lock, TDM_FOREVER));
  w->generation++;
  if (n < 0)
    tdm_cond_notify_all(&w->cond);
  else
    tdm_cond_notify(&w->cond, n);
  tdm_lock_release(&w->lock);
}

TEST(cond_notify_n_wakes_n_sleepers) {
  struct waiters w = { 0 };
  CHECK_OK(tdm_lock_init(&w.lock, 0));
  CHECK_OK(tdm_cond_init(&w.cond, 0));
  tdm_thread *t[4];
  for (int i = 0; i < 4; i++)
    t[i] = tdm_test_thread(cond_waiter, &w);
  WAIT_UNTIL(all_asleep(&w, 4));
  notify_locked(&w, 0); /* n = 0 wakes nobody */
  notify_locked(&w, 1);
  WAIT_UNTIL(woken(&w) == 1);
  tdm_clock_sleep(TDM_MS(50));
  CHECK_EQ(woken(&w), 1);
  notify_locked(&w, 2);
  WAIT_UNTIL(woken(&w) == 3);
  tdm_clock_sleep(TDM_MS(50));
  CHECK_EQ(woken(&w), 3);
  notify_locked(&w, -1);
  for (int i = 0; i < 4; i++)
    join(t[i]);
  CHECK_EQ(w.woken, 4);
}

TEST(cond_notify_all_wakes_everyone) {
  struct waiters w = { 0 };
  CHECK_OK(tdm_lock_init(&w.lock, 0));
  CHECK_OK(tdm_cond_init(&w.cond, 0));
  tdm_thread *t[8];
  for (int i = 0; i < 8; i++)
    t[i] = tdm_test_thread(cond_waiter, &w);
  WAIT_UNTIL(all_asleep(&w, 8));
  notify_locked(&w, -1);
  for (int i = 0; i < 8; i++)
    join(t[i]);
  CHECK_EQ(w.woken, 8);
}

struct rcond {
  tdm_rlock lock;
  tdm_cond cond;
  int ready;
};

static bool rcond_ready(void *arg) {
  return ((struct rcond *)arg)->ready != 0;
}

static void rcond_signaller(void *arg) {
  struct rcond *r = arg;
  /* Can only get in if the waiter released every level. */
  CHECK_OK(tdm_rlock_acquire(&r->lock, TDM_FOREVER));
  r->ready = 1;
  tdm_cond_notify(&r->cond, 1);
  tdm_rlock_release(&r->lock);
}

TEST(cond_with_recursive_lock) {
  struct rcond r = { 0 };
  CHECK_OK(tdm_rlock_init(&r.lock, 0));
  CHECK_OK(tdm_cond_init(&r.cond, 0));
  CHECK_OK(tdm_rlock_acquire(&r.lock, TDM_FOREVER));
  CHECK_OK(tdm_rlock_acquire(&r.lock, TDM_FOREVER));
  tdm_thread *t = tdm_test_thread(rcond_signaller, &r);
  CHECK_OK(tdm_cond_wait_for_rlock(&r.cond, &r.lock, rcond_ready, &r, TDM_FOREVER));
  CHECK_EQ(tdm_rlock_level(&r.lock), 2);
  CHECK_ERR(tdm_cond_wait_rlock(&r.cond, &r.lock, TDM_MS(10)), -ETIMEDOUT);
  CHECK_EQ(tdm_rlock_level(&r.lock), 2);
  tdm_rlock_release(&r.lock);
  tdm_rlock_release(&r.lock);
  join(t);
}

static void ping_pong_player(struct shared *s, int me, int rounds) {
  for (int i = 0; i < rounds; i++) {
    CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
    while (s->turn != me)
      CHECK_OK(tdm_cond_wait(&s->cond, &s->lock, TDM_FOREVER));
    s->counter++;
    s->turn = 1 - me;
    tdm_cond_notify(&s->cond, 1);
    tdm_lock_release(&s->lock);
  }
}

static void ping_pong_child(void *arg) {
  ping_pong_player(arg, 1, 5000);
}

TEST(cond_ping_pong_between_processes) {
  struct shared *s = shared_new();
  pid_t p = tdm_test_fork(ping_pong_child, s);
  ping_pong_player(s, 0, 5000);
  tdm_test_wait_ok(p);
  CHECK_EQ(s->counter, 10000);
}

static void shared_cond_waiter(void *arg) {
  struct shared *s = arg;
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  s->ready++;
  int gen = s->turn;
  while (s->turn == gen) {
    int r = tdm_cond_wait(&s->cond, &s->lock, TDM_FOREVER);
    if (r != 0) CHECK_OK(r);
  }
  tdm_lock_release(&s->lock);
}

TEST(cond_killed_waiter_does_not_wedge_the_others) {
  struct shared *s = shared_new();
  pid_t w[3];
  fork_blocked(shared_cond_waiter, s, w, 3);
  tdm_test_kill_and_reap(w[1]);
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  s->turn++;
  tdm_cond_notify_all(&s->cond);
  tdm_lock_release(&s->lock);
  tdm_test_wait_ok(w[0]);
  tdm_test_wait_ok(w[2]);
  /* And it still works for new waiters. */
  s->ready = 0;
  pid_t again;
  fork_blocked(shared_cond_waiter, s, &again, 1);
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  s->turn++;
  tdm_cond_notify(&s->cond, 1);
  tdm_lock_release(&s->lock);
  tdm_test_wait_ok(again);
}

static void cond_waiter_sees_owner_death(void *arg) {
  struct shared *s = arg;
  CHECK_OK(tdm_lock_acquire(&s->lock, TDM_FOREVER));
  s->ready = 1;
  int r;
  do
    r = tdm_cond_wait(&s->cond, &s->lock, TDM_FOREVER);
  while (r == 0);
  CHECK_ERR(r, -EOWNERDEAD);
  tdm_lock_release(&s->lock);
}

TEST(cond_wait_reports_a_lock_owner_that_died) {
  struct shared *s = shared_new();
  pid_t waiter = tdm_test_fork(cond_waiter_sees_owner_death, s);
  WAIT_UNTIL(s->ready == 1 && tdm_test_process_sleeping(waiter));
  pid_t owner = tdm_test_fork(take_and_hang, s); /* takes s->lock and hangs */
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  tdm_cond_notify_all(&s->cond); /* the waiter now waits for the lock */
  tdm_test_kill_and_reap(owner);
  tdm_test_wait_ok(waiter);
}

static void cond_wait_unheld(void *arg) {
  tdm_lock l;
  tdm_cond c;
  (void)arg;
  CHECK_OK(tdm_lock_init(&l, 0));
  CHECK_OK(tdm_cond_init(&c, 0));
  tdm_cond_wait(&c, &l, 0);
}

static void cond_mixed_kinds(void *arg) {
  tdm_lock l;
  tdm_cond c;
  (void)arg;
  CHECK_OK(tdm_lock_init(&l, TDM_SYNC_SHARED));
  CHECK_OK(tdm_cond_init(&c, TDM_SYNC_PRIVATE));
  CHECK_OK(tdm_lock_acquire(&l, 0));
  tdm_cond_wait(&c, &l, 0);
}

TEST(cond_misuse_aborts) {
  EXPECT_ABORT(cond_wait_unheld, NULL, "tdm_cond_wait: lock");
  EXPECT_ABORT(cond_mixed_kinds, NULL, "must both be private or both shared");
}

/* ---- Semaphore ------------------------------------------------------------------------------- */

TEST(sem_basic) {
  tdm_sem s;
  CHECK_OK(tdm_sem_init(&s, 2, 0, 0));
  CHECK_EQ(tdm_sem_value(&s), 2);
  CHECK_OK(tdm_sem_acquire(&s, 0));
  CHECK_OK(tdm_sem_acquire(&s, TDM_FOREVER));
  CHECK_ERR(tdm_sem_acquire(&s, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_sem_acquire(&s, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  CHECK_OK(tdm_sem_release(&s, 3));
  CHECK_EQ(tdm_sem_value(&s), 3);
  CHECK_ERR(tdm_sem_release(&s, 0), -EINVAL);
  tdm_sem_fini(&s);
}

TEST(sem_bounded_and_overflow) {
  tdm_sem s;
  CHECK_ERR(tdm_sem_init(&s, 3, 2, 0), -EINVAL);
  CHECK_ERR(tdm_sem_init(&s, 0, 0, 5), -EINVAL);
  CHECK_OK(tdm_sem_init(&s, 2, 2, 0));
  CHECK_ERR(tdm_sem_release(&s, 1), TDM_EOVERRELEASE);
  CHECK_EQ(tdm_sem_value(&s), 2);
  CHECK_OK(tdm_sem_acquire(&s, 0));
  CHECK_ERR(tdm_sem_release(&s, 2), TDM_EOVERRELEASE);
  CHECK_EQ(tdm_sem_value(&s), 1);
  CHECK_OK(tdm_sem_release(&s, 1));
  CHECK_EQ(tdm_sem_value(&s), 2);
  CHECK_OK(tdm_sem_init(&s, UINT32_MAX - 1, 0, 0));
  CHECK_ERR(tdm_sem_release(&s, 2), -EOVERFLOW);
  CHECK_EQ(tdm_sem_value(&s), UINT32_MAX - 1);
  CHECK_OK(tdm_sem_release(&s, 1));
  CHECK_EQ(tdm_sem_value(&s), UINT32_MAX);
}

struct sem_waiters {
  tdm_sem sem;
  int passed;
  int32_t tids[8];
  int slots, registered;
};

static void sem_waiter(void *arg) {
  struct sem_waiters *w = arg;
  int slot = __atomic_fetch_add(&w->slots, 1, __ATOMIC_SEQ_CST);
  __atomic_store_n(&w->tids[slot], tdm_test_gettid(), __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&w->registered, 1, __ATOMIC_SEQ_CST);
  CHECK_OK(tdm_sem_acquire(&w->sem, TDM_FOREVER));
  __atomic_fetch_add(&w->passed, 1, __ATOMIC_SEQ_CST);
}

static bool sem_all_asleep(struct sem_waiters *w, int n) {
  if (__atomic_load_n(&w->registered, __ATOMIC_SEQ_CST) != n) return false;
  for (int i = 0; i < n; i++)
    if (!tdm_test_thread_sleeping(__atomic_load_n(&w->tids[i], __ATOMIC_SEQ_CST))) return false;
  return true;
}

TEST(sem_release_n_lets_n_through) {
  struct sem_waiters w = { 0 };
  CHECK_OK(tdm_sem_init(&w.sem, 0, 0, 0));
  tdm_thread *t[4];
  for (int i = 0; i < 4; i++)
    t[i] = tdm_test_thread(sem_waiter, &w);
  WAIT_UNTIL(sem_all_asleep(&w, 4));
  CHECK_OK(tdm_sem_release(&w.sem, 2));
  WAIT_UNTIL(__atomic_load_n(&w.passed, __ATOMIC_SEQ_CST) == 2);
  tdm_clock_sleep(TDM_MS(50));
  CHECK_EQ(__atomic_load_n(&w.passed, __ATOMIC_SEQ_CST), 2);
  CHECK_EQ(tdm_sem_value(&w.sem), 0);
  CHECK_OK(tdm_sem_release(&w.sem, 3));
  for (int i = 0; i < 4; i++)
    join(t[i]);
  CHECK_EQ(tdm_sem_value(&w.sem), 1);
}

struct pool {
  tdm_sem *sem;
  int *holders, *max_holders;
  int iterations;
};

static void use_pool(void *arg) {
  struct pool *p = arg;
  for (int i = 0; i < p->iterations; i++) {
    CHECK_OK(tdm_sem_acquire(p->sem, TDM_FOREVER));
    int now = __atomic_add_fetch(p->holders, 1, __ATOMIC_SEQ_CST);
    int seen = __atomic_load_n(p->max_holders, __ATOMIC_SEQ_CST);
    while (now > seen && !__atomic_compare_exchange_n(p->max_holders, &seen, now, false,
                                                      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    __atomic_sub_fetch(p->holders, 1, __ATOMIC_SEQ_CST);
    CHECK_OK(tdm_sem_release(p->sem, 1));
  }
}

TEST(sem_stress_threads) {
  tdm_sem s;
  CHECK_OK(tdm_sem_init(&s, 3, 3, 0));
  int holders = 0, max_holders = 0;
  struct pool p = { &s, &holders, &max_holders, 30000 };
  tdm_thread *t[8];
  for (int i = 0; i < 8; i++)
    t[i] = tdm_test_thread(use_pool, &p);
  for (int i = 0; i < 8; i++)
    join(t[i]);
  CHECK(max_holders >= 1 && max_holders <= 3);
  CHECK_EQ(tdm_sem_value(&s), 3);
}

static void use_shared_pool(void *arg) {
  struct shared *s = arg;
  struct pool p = { &s->sem, &s->results[0], &s->results[1], 20000 };
  use_pool(&p);
}

TEST(sem_stress_processes) {
  struct shared *s = shared_new();
  CHECK_OK(tdm_sem_init(&s->sem, 2, 2, TDM_SYNC_SHARED));
  pid_t p[4];
  for (int i = 0; i < 4; i++)
    p[i] = tdm_test_fork(use_shared_pool, s);
  for (int i = 0; i < 4; i++)
    tdm_test_wait_ok(p[i]);
  CHECK(s->results[1] >= 1 && s->results[1] <= 2);
  CHECK_EQ(tdm_sem_value(&s->sem), 2);
}

static void sem_take_one(void *arg) {
  struct shared *s = arg;
  __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
  CHECK_OK(tdm_sem_acquire(&s->sem, TDM_FOREVER));
}

TEST(sem_killed_waiter_does_not_wedge_the_others) {
  struct shared *s = shared_new();
  pid_t w[3];
  fork_blocked(sem_take_one, s, w, 3);
  tdm_test_kill_and_reap(w[0]);
  CHECK_OK(tdm_sem_release(&s->sem, 2));
  tdm_test_wait_ok(w[1]);
  tdm_test_wait_ok(w[2]);
  CHECK_EQ(tdm_sem_value(&s->sem), 0);
  CHECK_OK(tdm_sem_release(&s->sem, 1));
  CHECK_OK(tdm_sem_acquire(&s->sem, 0));
}

static void sem_ping(void *arg) {
  struct shared *s = arg;
  for (int i = 0; i < 10000; i++) {
    CHECK_OK(tdm_sem_acquire(&s->sem, TDM_FOREVER));
    s->counter++;
    CHECK_OK(tdm_sem_release(&s->sem2, 1));
  }
}

TEST(sem_hand_off_between_processes) {
  struct shared *s = shared_new();
  pid_t p = tdm_test_fork(sem_ping, s);
  for (int i = 0; i < 10000; i++) {
    CHECK_OK(tdm_sem_release(&s->sem, 1));
    CHECK_OK(tdm_sem_acquire(&s->sem2, TDM_FOREVER));
    CHECK_EQ(s->counter, i + 1);
  }
  tdm_test_wait_ok(p);
}

/* ---- Event ----------------------------------------------------------------------------------- */

TEST(event_basic) {
  tdm_event e;
  CHECK_OK(tdm_event_init(&e, 0));
  CHECK(!tdm_event_is_set(&e));
  CHECK_ERR(tdm_event_wait(&e, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_event_wait(&e, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  tdm_event_set(&e);
  tdm_event_set(&e);
  CHECK(tdm_event_is_set(&e));
  CHECK_OK(tdm_event_wait(&e, 0));
  CHECK_OK(tdm_event_wait(&e, TDM_FOREVER));
  tdm_event_clear(&e);
  CHECK(!tdm_event_is_set(&e));
  CHECK_ERR(tdm_event_wait(&e, TDM_MS(1)), -ETIMEDOUT);
  tdm_event_fini(&e);
  CHECK_ERR(tdm_event_init(&e, 3), -EINVAL);
}

struct ev_waiters {
  tdm_event event;
  int results[8];
  int32_t tids[8];
  int registered;
};

struct ev_arg {
  struct ev_waiters *w;
  int index;
};

static void event_waiter(void *arg) {
  struct ev_arg *a = arg;
  __atomic_store_n(&a->w->tids[a->index], tdm_test_gettid(), __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&a->w->registered, 1, __ATOMIC_SEQ_CST);
  /* No timeout: a lost wake-up must hang (and fail the case), not pass as a late success. */
  a->w->results[a->index] = tdm_event_wait(&a->w->event, TDM_FOREVER);
}

static void event_waiters_run(bool clear_at_once) {
  struct ev_waiters w = { 0 };
  CHECK_OK(tdm_event_init(&w.event, 0));
  struct ev_arg args[8];
  tdm_thread *t[8];
  for (int i = 0; i < 8; i++) {
    args[i] = (struct ev_arg){ &w, i };
    t[i] = tdm_test_thread(event_waiter, &args[i]);
  }
  WAIT_UNTIL(__atomic_load_n(&w.registered, __ATOMIC_SEQ_CST) == 8);
  for (int i = 0; i < 8; i++)
    WAIT_UNTIL(tdm_test_thread_sleeping(__atomic_load_n(&w.tids[i], __ATOMIC_SEQ_CST)));
  tdm_event_set(&w.event);
  if (clear_at_once) tdm_event_clear(&w.event);
  for (int i = 0; i < 8; i++)
    join(t[i]);
  for (int i = 0; i < 8; i++)
    CHECK_OK(w.results[i]);
  CHECK_EQ(tdm_event_is_set(&w.event), !clear_at_once);
}

TEST(event_set_wakes_every_waiter) {
  event_waiters_run(false);
}

TEST(event_set_then_clear_still_releases_the_waiters) {
  event_waiters_run(true);
}

static void event_child(void *arg) {
  struct shared *s = arg;
  __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
  CHECK_OK(tdm_event_wait(&s->event, TDM_FOREVER));
  tdm_event_set(&s->event2);
}

TEST(event_between_processes) {
  struct shared *s = shared_new();
  pid_t w[3];
  fork_blocked(event_child, s, w, 3);
  tdm_test_kill_and_reap(w[2]); /* a waiter killed while waiting changes nothing for the others */
  tdm_event_set(&s->event);
  CHECK_OK(tdm_event_wait(&s->event2, TDM_FOREVER));
  tdm_test_wait_ok(w[0]);
  tdm_test_wait_ok(w[1]);
}

TEST(event_stress_rounds_of_sleeping_waiters) {
  /* Each round parks 8 waiters in the kernel (checked in /proc) before the set, or the set and
   * an immediate clear: a single lost wake-up leaves a waiter to time out and fails the case. */
  for (int round = 0; round < 40; round++)
    event_waiters_run(round & 1);
}

/* ---- Barrier --------------------------------------------------------------------------------- */

#define PARTIES 5
#define ROUNDS  200

struct rounds {
  tdm_barrier barrier;
  int arrived[ROUNDS];
  int index_seen[ROUNDS][PARTIES];
  int actions;
};

static int count_action(void *arg) {
  struct rounds *r = arg;
  r->actions++; /* runs alone, under the barrier's lock */
  return 0;
}

static void barrier_party(void *arg) {
  struct rounds *r = arg;
  for (int i = 0; i < ROUNDS; i++) {
    __atomic_fetch_add(&r->arrived[i], 1, __ATOMIC_SEQ_CST);
    int idx = tdm_barrier_wait_action(&r->barrier, count_action, r, TDM_FOREVER);
    CHECK(idx >= 0 && idx < PARTIES);
    /* Nobody leaves round i before everyone arrived, and the action ran before the release. */
    CHECK_EQ(__atomic_load_n(&r->arrived[i], __ATOMIC_SEQ_CST), PARTIES);
    CHECK(__atomic_load_n(&r->actions, __ATOMIC_SEQ_CST) >= i + 1);
    __atomic_fetch_add(&r->index_seen[i][idx], 1, __ATOMIC_SEQ_CST);
  }
}

TEST(barrier_rounds_threads) {
  struct rounds *r = calloc(1, sizeof *r);
  CHECK_OK(tdm_barrier_init(&r->barrier, PARTIES, 0));
  CHECK_EQ(tdm_barrier_parties(&r->barrier), PARTIES);
  tdm_thread *t[PARTIES];
  for (int i = 0; i < PARTIES; i++)
    t[i] = tdm_test_thread(barrier_party, r);
  for (int i = 0; i < PARTIES; i++)
    join(t[i]);
  CHECK_EQ(r->actions, ROUNDS);
  for (int i = 0; i < ROUNDS; i++)
    for (int k = 0; k < PARTIES; k++)
      CHECK_EQ(r->index_seen[i][k], 1); /* 0..n-1, once each */
  CHECK(!tdm_barrier_broken(&r->barrier));
  CHECK_EQ(tdm_barrier_n_waiting(&r->barrier), 0);
  tdm_barrier_fini(&r->barrier);
  free(r);
}

TEST(barrier_rounds_processes) {
  struct rounds *r = tdm_test_shared(sizeof *r);
  CHECK_OK(tdm_barrier_init(&r->barrier, PARTIES, TDM_SYNC_SHARED));
  pid_t p[PARTIES];
  for (int i = 0; i < PARTIES; i++)
    p[i] = tdm_test_fork(barrier_party, r);
  for (int i = 0; i < PARTIES; i++)
    tdm_test_wait_ok(p[i]);
  CHECK_EQ(r->actions, ROUNDS);
  for (int i = 0; i < ROUNDS; i++)
    for (int k = 0; k < PARTIES; k++)
      CHECK_EQ(r->index_seen[i][k], 1);
}

static int positive_action(void *arg) {
  (void)arg;
  return 1;
}

TEST(barrier_arguments_and_single_party) {
  tdm_barrier b;
  CHECK_ERR(tdm_barrier_init(&b, 0, 0), -EINVAL);
  CHECK_ERR(tdm_barrier_init(&b, 3, 2), -EINVAL);
  CHECK_ERR(tdm_barrier_init(&b, 0x80000000u, 0), -EINVAL);
  CHECK_OK(tdm_barrier_init(&b, 1, 0));
  struct rounds r = { 0 };
  CHECK_EQ(tdm_barrier_wait_action(&b, count_action, &r, 0), 0);
  CHECK_EQ(tdm_barrier_wait(&b, 0), 0);
  CHECK_EQ(r.actions, 1);
  /* A positive result breaks the barrier too, and its caller is told TDM_EBROKEN. */
  CHECK_ERR(tdm_barrier_wait_action(&b, positive_action, NULL, 0), TDM_EBROKEN);
  CHECK(tdm_barrier_broken(&b));
  tdm_barrier_fini(&b);
}

struct party {
  tdm_barrier *b;
  int64_t timeout;
  int result;
  tdm_barrier_action action;
};

static void one_wait(void *arg) {
  struct party *p = arg;
  p->result = tdm_barrier_wait_action(p->b, p->action, NULL, p->timeout);
}

static int failing_action(void *arg) {
  (void)arg;
  return -42;
}

TEST(barrier_failed_action_breaks_it) {
  tdm_barrier b;
  CHECK_OK(tdm_barrier_init(&b, 3, 0));
  struct party p[3];
  tdm_thread *t[3];
  for (int i = 0; i < 3; i++) {
    p[i] = (struct party){ &b, TDM_FOREVER, 99, failing_action };
    t[i] = tdm_test_thread(one_wait, &p[i]);
  }
  for (int i = 0; i < 3; i++)
    join(t[i]);
  int failed = 0, broken = 0;
  for (int i = 0; i < 3; i++) {
    failed += p[i].result == -42;
    broken += p[i].result == TDM_EBROKEN;
  }
  CHECK_EQ(failed, 1);
  CHECK_EQ(broken, 2);
  CHECK(tdm_barrier_broken(&b));
  CHECK_ERR(tdm_barrier_wait(&b, 0), TDM_EBROKEN);
  tdm_barrier_reset(&b);
  CHECK(!tdm_barrier_broken(&b));
  for (int i = 0; i < 3; i++) {
    p[i] = (struct party){ &b, TDM_FOREVER, 99, NULL };
    t[i] = tdm_test_thread(one_wait, &p[i]);
  }
  for (int i = 0; i < 3; i++)
    join(t[i]);
  CHECK_EQ(p[0].result + p[1].result + p[2].result, 0 + 1 + 2);
}

TEST(barrier_timeout_breaks_it_for_everyone) {
  tdm_barrier b;
  CHECK_OK(tdm_barrier_init(&b, 3, 0));
  struct party forever = { &b, TDM_FOREVER, 99, NULL };
  tdm_thread *t = tdm_test_thread(one_wait, &forever);
  WAIT_UNTIL(tdm_barrier_n_waiting(&b) == 1);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_barrier_wait(&b, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  join(t);
  CHECK_ERR(forever.result, TDM_EBROKEN);
  CHECK(tdm_barrier_broken(&b));
  CHECK_EQ(tdm_barrier_n_waiting(&b), 0);
  CHECK_ERR(tdm_barrier_wait(&b, TDM_FOREVER), TDM_EBROKEN);
  /* Timeout 0, as in Python: a party that is not the last breaks the barrier at once. */
  tdm_barrier_reset(&b);
  CHECK_ERR(tdm_barrier_wait(&b, 0), -ETIMEDOUT);
  CHECK(tdm_barrier_broken(&b));
}

TEST(barrier_abort_and_reset) {
  tdm_barrier b;
  CHECK_OK(tdm_barrier_init(&b, 3, 0));
  struct party p[2] = { { &b, TDM_FOREVER, 99, NULL }, { &b, TDM_FOREVER, 99, NULL } };
  tdm_thread *t[2] = { tdm_test_thread(one_wait, &p[0]), tdm_test_thread(one_wait, &p[1]) };
  WAIT_UNTIL(tdm_barrier_n_waiting(&b) == 2);
  tdm_barrier_abort(&b);
  join(t[0]);
  join(t[1]);
  CHECK_ERR(p[0].result, TDM_EBROKEN);
  CHECK_ERR(p[1].result, TDM_EBROKEN);
  CHECK_ERR(tdm_barrier_wait(&b, 0), TDM_EBROKEN);

  /* Reset while parties wait: they are told the round is broken, the barrier is whole again. */
  tdm_barrier_reset(&b);
  p[0].result = p[1].result = 99;
  t[0] = tdm_test_thread(one_wait, &p[0]);
  t[1] = tdm_test_thread(one_wait, &p[1]);
  WAIT_UNTIL(tdm_barrier_n_waiting(&b) == 2);
  tdm_barrier_reset(&b);
  join(t[0]);
  join(t[1]);
  CHECK_ERR(p[0].result, TDM_EBROKEN);
  CHECK_ERR(p[1].result, TDM_EBROKEN);
  CHECK(!tdm_barrier_broken(&b));
  CHECK_EQ(tdm_barrier_n_waiting(&b), 0);
  struct party q[3];
  tdm_thread *u[3];
  for (int i = 0; i < 3; i++) {
    q[i] = (struct party){ &b, TDM_FOREVER, 99, NULL };
    u[i] = tdm_test_thread(one_wait, &q[i]);
  }
  for (int i = 0; i < 3; i++)
    join(u[i]);
  CHECK_EQ(q[0].result + q[1].result + q[2].result, 3);
}

static void barrier_party_shared(void *arg) {
  struct shared *s = arg;
  __atomic_fetch_add(&s->ready, 1, __ATOMIC_SEQ_CST);
  int r = tdm_barrier_wait(&s->barrier, TDM_MS(300));
  CHECK(r == -ETIMEDOUT || r == TDM_EBROKEN);
}

static void barrier_party_complete(void *arg) {
  struct shared *s = arg;
  int r = tdm_barrier_wait(&s->barrier, TDM_FOREVER);
  CHECK(r >= 0 && r < 3);
}

TEST(barrier_dead_party_times_out_then_reset_recovers) {
  struct shared *s = shared_new();
  CHECK_OK(tdm_barrier_init(&s->barrier, 4, TDM_SYNC_SHARED));
  /* A party that arrives and is killed while waiting. */
  pid_t victim = tdm_test_fork(barrier_party_complete, s);
  WAIT_UNTIL(tdm_barrier_n_waiting(&s->barrier) == 1 && tdm_test_process_sleeping(victim));
  tdm_test_kill_and_reap(victim);
  pid_t p[2];
  for (int i = 0; i < 2; i++)
    p[i] = tdm_test_fork(barrier_party_shared, s);
  for (int i = 0; i < 2; i++)
    tdm_test_wait_ok(p[i]); /* they time out instead of hanging */
  CHECK(tdm_barrier_broken(&s->barrier));
  tdm_barrier_reset(&s->barrier);
  CHECK_EQ(tdm_barrier_n_waiting(&s->barrier), 0); /* the dead party is forgotten */
  tdm_barrier_fini(&s->barrier);
  CHECK_OK(tdm_barrier_init(&s->barrier, 3, TDM_SYNC_SHARED));
  pid_t q[3];
  for (int i = 0; i < 3; i++)
    q[i] = tdm_test_fork(barrier_party_complete, s);
  for (int i = 0; i < 3; i++)
    tdm_test_wait_ok(q[i]);
}

static int die_in_action(void *arg) {
  (void)arg;
  kill(getpid(), SIGKILL);
  return 0;
}

static void barrier_last_dies(void *arg) {
  struct shared *s = arg;
  WAIT_UNTIL(tdm_barrier_n_waiting(&s->barrier) == 2);
  tdm_barrier_wait_action(&s->barrier, die_in_action, NULL, TDM_FOREVER);
}

static void barrier_waits_long(void *arg) {
  struct shared *s = arg;
  int r = tdm_barrier_wait(&s->barrier, TDM_MS(500));
  CHECK_ERR(r, TDM_EBROKEN);
}

TEST(barrier_party_dying_inside_the_barrier_breaks_it) {
  struct shared *s = shared_new();
  CHECK_OK(tdm_barrier_init(&s->barrier, 3, TDM_SYNC_SHARED));
  pid_t w[2];
  for (int i = 0; i < 2; i++)
    w[i] = tdm_test_fork(barrier_waits_long, s);
  pid_t last = tdm_test_fork(barrier_last_dies, s);
  int status = tdm_test_wait(last);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  for (int i = 0; i < 2; i++)
    tdm_test_wait_ok(w[i]);
  CHECK(tdm_barrier_broken(&s->barrier));
  CHECK_ERR(tdm_barrier_wait(&s->barrier, 0), TDM_EBROKEN);
  tdm_barrier_reset(&s->barrier);
  CHECK(!tdm_barrier_broken(&s->barrier));
}

static void barrier_wait_uninitialised(void *arg) {
  tdm_barrier b;
  (void)arg;
  memset(&b, 0, sizeof b);
  tdm_barrier_wait(&b, 0);
}

static tdm_barrier reentered;

static int action_calls_its_barrier(void *arg) {
  (void)arg;
  return (int)tdm_barrier_n_waiting(&reentered);
}

static void barrier_action_reenters(void *arg) {
  (void)arg;
  CHECK_OK(tdm_barrier_init(&reentered, 1, 0));
  tdm_barrier_wait_action(&reentered, action_calls_its_barrier, NULL, 0);
}

TEST(barrier_misuse_aborts) {
  EXPECT_ABORT(barrier_wait_uninitialised, NULL, "tdm_barrier_wait");
  EXPECT_ABORT(barrier_action_reenters, NULL, "called the barrier itself");
}

/* ---- Kills at random points in semaphores, conditions and events ------------------------------
 */

/* Loops on every lock-free primitive at once, so that a kill lands anywhere in any of them. */
static void churn_waits(void *arg) {
  struct shared *s = arg;
  for (;;) {
    if (tdm_sem_acquire(&s->sem, TDM_MS(1)) == 0) CHECK_OK(tdm_sem_release(&s->sem, 1));
    int a = tdm_lock_acquire(&s->lock2, TDM_FOREVER);
    CHECK(a == 0 || a == -EOWNERDEAD);
    tdm_cond_notify(&s->cond2, 1);
    a = tdm_cond_wait(&s->cond2, &s->lock2, TDM_MS(1));
    CHECK(a == 0 || a == -ETIMEDOUT || a == -EOWNERDEAD);
    tdm_lock_release(&s->lock2);
    tdm_event_set(&s->event2);
    tdm_event_clear(&s->event2);
    (void)tdm_event_wait(&s->event2, TDM_MS(1));
    __atomic_fetch_add(&s->counter, 1, __ATOMIC_SEQ_CST);
  }
}

/* Ping-pong through the churned lock and condition. */
static void churned_ping_pong(struct shared *s, int me) {
  for (int i = 0; i < 2000; i++) {
    int a = tdm_lock_acquire(&s->lock2, TDM_FOREVER);
    CHECK(a == 0 || a == -EOWNERDEAD);
    while (s->turn != me)
      CHECK_OK(tdm_cond_wait(&s->cond2, &s->lock2, TDM_FOREVER));
    s->turn = 1 - me;
    tdm_cond_notify_all(&s->cond2);
    tdm_lock_release(&s->lock2);
  }
}

static void churned_child(void *arg) {
  struct shared *s = arg;
  churned_ping_pong(s, 1);
  for (int i = 0; i < 20000; i++) {
    CHECK_OK(tdm_sem_acquire(&s->sem, TDM_FOREVER));
    CHECK_OK(tdm_sem_release(&s->sem, 1));
  }
  CHECK_OK(tdm_event_wait(&s->event2, TDM_FOREVER));
}

TEST_T(sem_cond_event_survive_kills_at_random_points, 120) {
  struct shared *s = shared_new();
  CHECK_OK(tdm_sem_init(&s->sem, 2, 2, TDM_SYNC_SHARED));
  uint64_t seed = 7;
  for (int round = 0; round < 100; round++) {
    pid_t p[3];
    for (int i = 0; i < 3; i++)
      p[i] = tdm_test_fork(churn_waits, s);
    long before = __atomic_load_n(&s->counter, __ATOMIC_SEQ_CST);
    WAIT_UNTIL(__atomic_load_n(&s->counter, __ATOMIC_SEQ_CST) > before + 3);
    tdm_clock_sleep((int64_t)(tdm_test_rand(&seed) % TDM_US(300)));
    for (int i = 0; i < 3; i++)
      tdm_test_kill_and_reap(p[i]);
    /* A dead process keeps a permit it had taken, as with any semaphore: give them back. */
    uint32_t v = tdm_sem_value(&s->sem);
    CHECK(v <= 2);
    if (v < 2) CHECK_OK(tdm_sem_release(&s->sem, 2 - v));
  }
  /* The same objects still work between fresh processes: nothing was wedged. */
  int a = tdm_lock_acquire(&s->lock2, TDM_FOREVER);
  CHECK(a == 0 || a == -EOWNERDEAD);
  s->turn = 0;
  tdm_lock_release(&s->lock2);
  tdm_event_clear(&s->event2); /* a kill between set and clear may have left it set */
  pid_t p = tdm_test_fork(churned_child, s);
  churned_ping_pong(s, 0);
  for (int i = 0; i < 20000; i++) {
    CHECK_OK(tdm_sem_acquire(&s->sem, TDM_FOREVER));
    CHECK_OK(tdm_sem_release(&s->sem, 1));
  }
  WAIT_UNTIL(tdm_test_process_sleeping(p));
  tdm_event_set(&s->event2);
  tdm_test_wait_ok(p);
  CHECK_EQ(tdm_sem_value(&s->sem), 2);
}

/* ---- Layout ---------------------------------------------------------------------------------- */

TEST(shared_layouts_are_fixed) {
  CHECK_EQ(sizeof(tdm_lock), 48);
  CHECK_EQ(sizeof(tdm_rlock), 64);
  CHECK_EQ(sizeof(tdm_cond), 32);
  CHECK_EQ(sizeof(tdm_sem), 32);
  CHECK_EQ(sizeof(tdm_event), 32);
  CHECK_EQ(sizeof(tdm_barrier), 128);
}
