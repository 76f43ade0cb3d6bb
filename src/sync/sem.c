/*
 * sem.c: Semaphore and BoundedSemaphore.
 *
 * The count is the futex word. Taking a permit is a compare-and-swap that decrements a positive
 * count; a taker that finds 0 spins briefly, then registers in `waiters` and sleeps while the
 * count is 0. Releasing adds n with one compare-and-swap (which also checks the bound), then
 * wakes up to n sleepers if any registered. Both sides use sequentially consistent operations on
 * the two words (a store to one, then a load of the other), so either the releaser sees the
 * registered waiter or the waiter sees the new count: no wake-up is lost.
 *
 * No lock, no owner: a process killed at any point leaves the count consistent (a permit it had
 * taken stays taken, as with any semaphore) and at worst a waiter count one too high.
 */
#include <limits.h>
#include <string.h>

#include "sync/sync.h"

_Static_assert(sizeof(tdm_sem) == 32, "tdm_sem layout");

int tdm_sem_init(tdm_sem *s, uint32_t value, uint32_t max, int flags) {
  if ((flags & ~TDM_SYNC_SHARED) != 0 || (max != 0 && value > max)) return -EINVAL;
  memset(s, 0, sizeof *s);
  s->value_ = value;
  s->max_ = max;
  tdm__stamp(&s->magic_, &s->version_, &s->flags_, TDM__SEM_MAGIC, flags);
  return 0;
}

void tdm_sem_fini(tdm_sem *s) {
  TDM__CHECK(s, TDM__SEM_MAGIC, "tdm_sem_fini");
  __atomic_store_n(&s->magic_, 0, __ATOMIC_RELAXED);
}

/* Takes a permit if one is there. */
static bool try_take(tdm_sem *s) {
  uint32_t v = __atomic_load_n(&s->value_, __ATOMIC_RELAXED);
  while (v > 0) {
    if (__atomic_compare_exchange_n(&s->value_, &v, v - 1, false, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED))
      return true;
  }
  return false;
}

int tdm_sem_acquire(tdm_sem *s, int64_t timeout) {
  TDM__CHECK(s, TDM__SEM_MAGIC, "tdm_sem_acquire");
  if (try_take(s)) return 0;
  if (timeout == 0) return -ETIMEDOUT;
  int64_t deadline = tdm__deadline(timeout);
  TDM__SPIN_WHILE(__atomic_load_n(&s->value_, __ATOMIC_RELAXED) == 0, TDM__WAIT_SPIN_NS, deadline);
  if (try_take(s)) return 0;
  bool shared = tdm__is_shared(s->flags_);
  int r = 0;
  __atomic_fetch_add(&s->waiters_, 1, __ATOMIC_SEQ_CST);
  for (;;) {
    uint32_t v = __atomic_load_n(&s->value_, __ATOMIC_SEQ_CST);
    if (v > 0) {
      if (try_take(s)) break;
      continue;
    }
    if (tdm__futex_wait(&s->value_, 0, deadline, shared) == -ETIMEDOUT) {
      r = try_take(s) ? 0 : -ETIMEDOUT;
      break;
    }
  }
  __atomic_fetch_sub(&s->waiters_, 1, __ATOMIC_RELAXED);
  return r;
}

int tdm_sem_release(tdm_sem *s, uint32_t n) {
  TDM__CHECK(s, TDM__SEM_MAGIC, "tdm_sem_release");
  if (n == 0) return -EINVAL;
  uint32_t max = s->max_;
  uint32_t v = __atomic_load_n(&s->value_, __ATOMIC_RELAXED);
  do {
    if (max != 0 && (v > max || n > max - v)) return TDM_EOVERRELEASE;
    if (n > UINT32_MAX - v) return -EOVERFLOW;
  } while (!__atomic_compare_exchange_n(&s->value_, &v, v + n, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED));
  if (__atomic_load_n(&s->waiters_, __ATOMIC_SEQ_CST) > 0)
    tdm__futex_wake(&s->value_, n > INT_MAX ? INT_MAX : (int)n, tdm__is_shared(s->flags_));
  return 0;
}

uint32_t tdm_sem_value(const tdm_sem *s) {
  TDM__CHECK(s, TDM__SEM_MAGIC, "tdm_sem_value");
  return __atomic_load_n(&s->value_, __ATOMIC_RELAXED);
}
