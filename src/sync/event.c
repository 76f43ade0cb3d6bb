/*
 * event.c: Event.
 *
 * The futex word holds a generation counter and the flag: word = generation << 1 | flag.
 * set() on a clear event moves to the next generation with the flag up and wakes every
 * sleeper; clear() only drops the flag. A waiter that saw the flag down sleeps while the word is
 * unchanged, and any change it sees afterwards can only come from a set() (clear() does not touch
 * a word whose flag is down), so it returns success even when the flag was cleared again before
 * it ran, as Python's Event.wait() does. The waiter count spares set() its system call when
 * nobody sleeps; as in sem.c, sequentially consistent accesses make sure no sleeper is missed.
 */
#include <limits.h>
#include <string.h>

#include "sync/sync.h"

_Static_assert(sizeof(tdm_event) == 32, "tdm_event layout");

int tdm_event_init(tdm_event *e, int flags) {
  if ((flags & ~TDM_SYNC_SHARED) != 0) return -EINVAL;
  memset(e, 0, sizeof *e);
  tdm__stamp(&e->magic_, &e->version_, &e->flags_, TDM__EVENT_MAGIC, flags);
  return 0;
}

void tdm_event_fini(tdm_event *e) {
  TDM__CHECK(e, TDM__EVENT_MAGIC, "tdm_event_fini");
  __atomic_store_n(&e->magic_, 0, __ATOMIC_RELAXED);
}

void tdm_event_set(tdm_event *e) {
  TDM__CHECK(e, TDM__EVENT_MAGIC, "tdm_event_set");
  uint32_t v = __atomic_load_n(&e->word_, __ATOMIC_RELAXED);
  do {
    if (v & 1) return;
  } while (!__atomic_compare_exchange_n(&e->word_, &v, (v + 2) | 1, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_RELAXED));
  if (__atomic_load_n(&e->waiters_, __ATOMIC_SEQ_CST) > 0)
    tdm__futex_wake(&e->word_, INT_MAX, tdm__is_shared(e->flags_));
}

void tdm_event_clear(tdm_event *e) {
  TDM__CHECK(e, TDM__EVENT_MAGIC, "tdm_event_clear");
  __atomic_fetch_and(&e->word_, ~1u, __ATOMIC_RELEASE);
}

bool tdm_event_is_set(const tdm_event *e) {
  TDM__CHECK(e, TDM__EVENT_MAGIC, "tdm_event_is_set");
  return (__atomic_load_n(&e->word_, __ATOMIC_ACQUIRE) & 1) != 0;
}

int tdm_event_wait(tdm_event *e, int64_t timeout) {
  TDM__CHECK(e, TDM__EVENT_MAGIC, "tdm_event_wait");
  uint32_t v = __atomic_load_n(&e->word_, __ATOMIC_ACQUIRE);
  if (v & 1) return 0;
  if (timeout == 0) return -ETIMEDOUT;
  int64_t deadline = tdm__deadline(timeout);
  TDM__SPIN_WHILE(__atomic_load_n(&e->word_, __ATOMIC_RELAXED) == v, TDM__WAIT_SPIN_NS, deadline);
  if (__atomic_load_n(&e->word_, __ATOMIC_ACQUIRE) != v) return 0;
  bool shared = tdm__is_shared(e->flags_);
  int r = 0;
  __atomic_fetch_add(&e->waiters_, 1, __ATOMIC_SEQ_CST);
  while (__atomic_load_n(&e->word_, __ATOMIC_SEQ_CST) == v) {
    if (tdm__futex_wait(&e->word_, v, deadline, shared) == -ETIMEDOUT) {
      r = __atomic_load_n(&e->word_, __ATOMIC_ACQUIRE) == v ? -ETIMEDOUT : 0;
      break;
    }
  }
  __atomic_fetch_sub(&e->waiters_, 1, __ATOMIC_RELAXED);
  return r;
}
