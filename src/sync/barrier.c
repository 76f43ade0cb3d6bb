/*
 * barrier.c: Barrier.
 *
 * The barrier's state (arrivals in this round, the round's number, the broken flag) is guarded
 * by an internal lock and waited on through an internal condition, as in Python's
 * threading.Barrier; the lock is a tandem lock, so in shared memory it is robust.
 *
 * Rounds are numbered instead of drained: the last party to arrive runs the action, starts the
 * next round (count 0, generation + 1) and wakes everybody. A waiter returns when the generation
 * it arrived in has ended, so a fast party may arrive in the next round while slow ones are
 * still leaving the last one (Python makes it wait for the "draining" to finish; with numbered
 * rounds that wait is unnecessary). How a round ended is kept in a 64-bit history, one bit per
 * generation modulo 64: set when the round was ended by reset(), so its waiters report
 * TDM_EBROKEN instead of success. A waiter would misread the history only if 64 further rounds
 * completed between its wake-up and its re-taking the lock, which cannot happen while it is one
 * of the parties those rounds need.
 *
 * Breaking (timeout, abort, failed action, a party that died holding the internal lock) sets
 * the broken flag without ending the round: everyone waiting, and everyone arriving, gets
 * TDM_EBROKEN until reset() ends the round as broken and starts an empty, whole one. Because
 * reset() needs no draining, parties that died while waiting do not block it.
 */
#include <string.h>

#include "sync/sync.h"

_Static_assert(sizeof(tdm_barrier) == 128, "tdm_barrier layout");

#define GEN_BIT(g) ((uint64_t)1 << ((g) % 64))

int tdm_barrier_init(tdm_barrier *b, uint32_t parties, int flags) {
  if (parties == 0 || parties > INT32_MAX) return -EINVAL;
  int r = tdm__lock_init_as(&b->lock_, flags, TDM__LOCK_MAGIC);
  if (r != 0) return r;
  r = tdm_cond_init(&b->cond_, flags);
  if (r != 0) return r;
  b->parties_ = parties;
  b->count_ = 0;
  b->gen_ = 0;
  b->broken_ = 0;
  b->broken_gens_ = 0;
  memset(b->spare_, 0, sizeof b->spare_);
  tdm__stamp(&b->magic_, &b->version_, &b->flags_, TDM__BARRIER_MAGIC, flags);
  return 0;
}

void tdm_barrier_fini(tdm_barrier *b) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_fini");
  tdm_cond_fini(&b->cond_);
  tdm_lock_fini(&b->lock_);
  __atomic_store_n(&b->magic_, 0, __ATOMIC_RELAXED);
}

/* Breaks the barrier; the caller holds the internal lock. */
static void break_locked(tdm_barrier *b) {
  b->broken_ = 1;
  tdm_cond_notify_all(&b->cond_);
}

/*
 * Takes the internal lock; returns 0 or -ENOTSUP. A previous holder that died may have left the
 * state half-changed, so the barrier is broken rather than trusted. The lock is already ours
 * only when an action calls its own barrier, which the contract forbids. -ENOTSUP: a shared
 * barrier used from a thread without a usable robust list (see tdm_lock_acquire).
 */
static int try_enter(tdm_barrier *b) {
  int r = tdm__lock_acquire(&b->lock_, TDM_FOREVER);
  TDM__REQUIRE(r != -EDEADLK, "tdm_barrier: the action of barrier %p called the barrier itself",
               (void *)b);
  if (r == -ENOTSUP) return r;
  if (r == -EOWNERDEAD) break_locked(b);
  return 0;
}

/* try_enter() for the calls that cannot return a code. */
static void enter(tdm_barrier *b) {
  TDM__REQUIRE(try_enter(b) == 0,
               "tdm_barrier: this thread cannot use shared barrier %p (no usable robust list)",
               (void *)b);
}

int tdm_barrier_wait_action(tdm_barrier *b, tdm_barrier_action action, void *arg, int64_t timeout) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_wait");
  int64_t deadline = tdm__deadline(timeout);
  int e = try_enter(b);
  if (e != 0) return e;
  if (b->broken_) {
    tdm__lock_release(&b->lock_);
    return TDM_EBROKEN;
  }
  uint32_t gen = b->gen_;
  uint32_t index = b->count_++;
  int r;
  if (index + 1 == b->parties_) {
    /* Last to arrive: run the action, then end the round. */
    int a = action != NULL ? action(arg) : 0;
    if (a != 0) {
      break_locked(b);
      r = a < 0 ? a : TDM_EBROKEN;
    } else {
      b->broken_gens_ &= ~GEN_BIT(gen);
      b->count_ = 0;
      b->gen_ = gen + 1;
      tdm_cond_notify_all(&b->cond_);
      r = (int)index;
    }
    tdm__lock_release(&b->lock_);
    return r;
  }
  for (;;) {
    int w = tdm__cond_wait_core(&b->cond_, &b->lock_, deadline);
    if (w == -EOWNERDEAD) break_locked(b);
    if (b->gen_ != gen) {
      r = (b->broken_gens_ & GEN_BIT(gen)) ? TDM_EBROKEN : (int)index;
      break;
    }
    if (b->broken_) {
      r = TDM_EBROKEN;
      break;
    }
    if (w == -ETIMEDOUT) {
      break_locked(b);
      r = -ETIMEDOUT;
      break;
    }
  }
  tdm__lock_release(&b->lock_);
  return r;
}

int tdm_barrier_wait(tdm_barrier *b, int64_t timeout) {
  return tdm_barrier_wait_action(b, NULL, NULL, timeout);
}

void tdm_barrier_abort(tdm_barrier *b) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_abort");
  enter(b);
  break_locked(b);
  tdm__lock_release(&b->lock_);
}

void tdm_barrier_reset(tdm_barrier *b) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_reset");
  enter(b);
  if (b->count_ > 0 || b->broken_) {
    b->broken_gens_ |= GEN_BIT(b->gen_);
    b->gen_++;
  }
  b->count_ = 0;
  b->broken_ = 0;
  tdm_cond_notify_all(&b->cond_);
  tdm__lock_release(&b->lock_);
}

uint32_t tdm_barrier_parties(const tdm_barrier *b) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_parties");
  return b->parties_;
}

uint32_t tdm_barrier_n_waiting(tdm_barrier *b) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_n_waiting");
  enter(b);
  uint32_t n = b->broken_ ? 0 : b->count_;
  tdm__lock_release(&b->lock_);
  return n;
}

bool tdm_barrier_broken(tdm_barrier *b) {
  TDM__CHECK(b, TDM__BARRIER_MAGIC, "tdm_barrier_broken");
  enter(b);
  bool broken = b->broken_ != 0;
  tdm__lock_release(&b->lock_);
  return broken;
}
