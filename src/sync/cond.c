/*
 * cond.c: Condition.
 *
 * A condition is a sequence word and two counts. A waiter registers itself (`waiters_`) and reads
 * the sequence while it still holds the lock, releases the lock, spins briefly, then sleeps on
 * the word (counted in `sleepers_` while it does) for as long as the sequence is unchanged.
 * notify() bumps the sequence and wakes n sleepers. Nothing is lost between the waiter's release
 * and its sleep: the futex compares the word first, so a notify in that gap makes the sleep
 * return at once. The registered count lets notify() do nothing at all when nobody waits (both
 * sides run with the lock held, so notify() sees every waiter that registered before it); the
 * sleeper count lets it skip the system call when the waiters are still spinning, which is what
 * makes a quick hand-off cheap. `sleepers_` is raised before the futex compare and read after
 * the sequence bump, both sequentially consistent, so a waiter about to sleep is never missed.
 *
 * There is no lock inside the condition, so a process killed while waiting leaves at most the
 * counts one too high (notify then makes a system call it did not need).
 *
 * Every waiter that has not gone to sleep yet when a notify(n) comes (it is between releasing the
 * lock and sleeping, or still spinning) is released by the bumped sequence, and the wake still
 * releases n sleepers: more than n waits may return. Python's Condition releases exactly n,
 * with a queue of per-waiter locks; the difference is documented in tandem/sync.h and is why
 * tdm_cond_wait_for() exists.
 */
#include <limits.h>
#include <string.h>

#include "sync/sync.h"

_Static_assert(sizeof(tdm_cond) == 32, "tdm_cond layout");

int tdm_cond_init(tdm_cond *c, int flags) {
  if ((flags & ~TDM_SYNC_SHARED) != 0) return -EINVAL;
  memset(c, 0, sizeof *c);
  tdm__stamp(&c->magic_, &c->version_, &c->flags_, TDM__COND_MAGIC, flags);
  return 0;
}

void tdm_cond_fini(tdm_cond *c) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_fini");
  __atomic_store_n(&c->magic_, 0, __ATOMIC_RELAXED);
}

int tdm__cond_wait_core(tdm_cond *c, tdm_lock *l, int64_t deadline) {
  bool shared = tdm__is_shared(c->flags_);
  TDM__REQUIRE(shared == tdm__is_shared(l->flags_),
               "tdm_cond_wait: condition %p and lock %p must both be private or both shared",
               (void *)c, (void *)l);
  __atomic_fetch_add(&c->waiters_, 1, __ATOMIC_SEQ_CST);
  uint32_t seq = __atomic_load_n(&c->seq_, __ATOMIC_SEQ_CST);
  tdm__lock_release(l);
  TDM__SPIN_WHILE(__atomic_load_n(&c->seq_, __ATOMIC_RELAXED) == seq, TDM__WAIT_SPIN_NS, deadline);
  int r = 0;
  while (__atomic_load_n(&c->seq_, __ATOMIC_ACQUIRE) == seq) {
    __atomic_fetch_add(&c->sleepers_, 1, __ATOMIC_SEQ_CST);
    int w = tdm__futex_wait(&c->seq_, seq, deadline, shared);
    __atomic_fetch_sub(&c->sleepers_, 1, __ATOMIC_RELAXED);
    if (w == -ETIMEDOUT) {
      r = -ETIMEDOUT;
      break;
    }
  }
  __atomic_fetch_sub(&c->waiters_, 1, __ATOMIC_RELAXED);
  int a = tdm__lock_acquire(l, TDM_FOREVER);
  return a == -EOWNERDEAD ? a : r;
}

int tdm_cond_wait(tdm_cond *c, tdm_lock *l, int64_t timeout) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_wait");
  TDM__CHECK(l, TDM__LOCK_MAGIC, "tdm_cond_wait");
  TDM__REQUIRE(tdm__lock_held(l), "tdm_cond_wait: lock %p is not held by this thread", (void *)l);
  return tdm__cond_wait_core(c, l, tdm__deadline(timeout));
}

/* Waits with every level of a recursive lock released, and restores them. */
static int wait_rlock(tdm_cond *c, tdm_rlock *l, int64_t deadline) {
  uint32_t levels = l->count_;
  l->count_ = 0;
  int r = tdm__cond_wait_core(c, &l->lock_, deadline);
  l->count_ = levels;
  return r;
}

int tdm_cond_wait_rlock(tdm_cond *c, tdm_rlock *l, int64_t timeout) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_wait_rlock");
  TDM__CHECK(&l->lock_, TDM__RLOCK_MAGIC, "tdm_cond_wait_rlock");
  TDM__REQUIRE(tdm__lock_held(&l->lock_),
               "tdm_cond_wait_rlock: recursive lock %p is not held by this thread", (void *)l);
  return wait_rlock(c, l, tdm__deadline(timeout));
}

/*
 * Python's wait_for loop, for a plain lock (`rl` NULL) or a recursive one (`rl`, whose core is
 * `l`): the predicate is evaluated with the lock held, within one deadline.
 */
static int wait_for(tdm_cond *c, tdm_lock *l, tdm_rlock *rl, tdm_predicate pred, void *arg,
                    int64_t timeout) {
  int64_t deadline = tdm__deadline(timeout);
  while (!pred(arg)) {
    if (deadline != TDM__NEVER && tdm_clock_now() >= deadline) return -ETIMEDOUT;
    int r = rl != NULL ? wait_rlock(c, rl, deadline) : tdm__cond_wait_core(c, l, deadline);
    if (r == -EOWNERDEAD) return r;
  }
  return 0;
}

int tdm_cond_wait_for(tdm_cond *c, tdm_lock *l, tdm_predicate pred, void *arg, int64_t timeout) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_wait_for");
  TDM__CHECK(l, TDM__LOCK_MAGIC, "tdm_cond_wait_for");
  TDM__REQUIRE(tdm__lock_held(l), "tdm_cond_wait_for: lock %p is not held by this thread",
               (void *)l);
  return wait_for(c, l, NULL, pred, arg, timeout);
}

int tdm_cond_wait_for_rlock(tdm_cond *c, tdm_rlock *l, tdm_predicate pred, void *arg,
                            int64_t timeout) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_wait_for_rlock");
  TDM__CHECK(&l->lock_, TDM__RLOCK_MAGIC, "tdm_cond_wait_for_rlock");
  TDM__REQUIRE(tdm__lock_held(&l->lock_),
               "tdm_cond_wait_for_rlock: recursive lock %p is not held by this thread", (void *)l);
  return wait_for(c, &l->lock_, l, pred, arg, timeout);
}

static void notify(tdm_cond *c, int n) {
  if (__atomic_load_n(&c->waiters_, __ATOMIC_SEQ_CST) == 0) return;
  __atomic_fetch_add(&c->seq_, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&c->sleepers_, __ATOMIC_SEQ_CST) > 0)
    tdm__futex_wake(&c->seq_, n, tdm__is_shared(c->flags_));
}

void tdm_cond_notify(tdm_cond *c, int n) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_notify");
  if (n > 0) notify(c, n);
}

void tdm_cond_notify_all(tdm_cond *c) {
  TDM__CHECK(c, TDM__COND_MAGIC, "tdm_cond_notify_all");
  notify(c, INT_MAX);
}
