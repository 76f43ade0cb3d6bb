/*
 * lock.c: Lock and RLock.
 *
 * The lock is one 32-bit futex word in the kernel's robust-futex format:
 *
 *   bits 0-29   the owner's kernel thread id, 0 when free
 *   bit 30      OWNER_DIED: the previous owner died holding the lock
 *   bit 31      WAITERS: some thread may be asleep on the word
 *
 * Acquiring is a compare-and-swap from "no owner" to our id; releasing is an exchange to 0, and
 * a futex wake only when WAITERS was set, so an uncontended lock costs two atomic operations and
 * no system call. A contended acquirer spins a little, then sets WAITERS and sleeps. A thread
 * that took the lock after sleeping keeps WAITERS set (it cannot know whether others still
 * sleep), which costs at most one spare wake-up and never loses one (Drepper, "Futexes Are
 * Tricky", mutex 3).
 *
 * Because the owner's id is the word, the kernel can do the rest for shared locks: each shared
 * lock the thread holds is linked into its robust list (see platform/linux/futex.c), and when the
 * thread ends the kernel finds every word still holding its id, sets OWNER_DIED, clears the id
 * and wakes one waiter. The next acquirer sees a free word with OWNER_DIED, takes it, and reports
 * -EOWNERDEAD. The lock needs no repair afterwards (unlike a pthread robust mutex, there is no
 * "not recoverable" state): the owner-died bit is consumed by the acquirer that saw it. The
 * `pending` slot of the robust list covers the instants between taking the word and linking the
 * node, and between unlinking and releasing, so a death at any instruction is handled.
 *
 * Private locks skip the robust list and use private futexes.
 */
#include <string.h>

#include "sync/sync.h"

#define WAITERS    TDM__FUTEX_WAITERS
#define OWNER_DIED TDM__FUTEX_OWNER_DIED
#define TID_MASK   TDM__FUTEX_TID_MASK

_Static_assert(sizeof(tdm_lock) == 48, "tdm_lock layout");
_Static_assert(sizeof(tdm_rlock) == 64, "tdm_rlock layout");
_Static_assert((long)offsetof(tdm_lock, word_) - (long)offsetof(tdm_lock, robust_next_) ==
                   TDM__ROBUST_FUTEX_OFFSET,
               "the futex word must sit where the robust list expects it");
_Static_assert(offsetof(tdm_lock, robust_prev_) + 8 == offsetof(tdm_lock, robust_next_),
               "robust list node is {prev, next}");

int tdm__lock_init_as(tdm_lock *l, int flags, uint32_t magic) {
  if ((flags & ~TDM_SYNC_SHARED) != 0) return -EINVAL;
  if (tdm__is_shared((uint16_t)flags) && !tdm__robust_usable()) return -ENOTSUP;
  memset(l, 0, sizeof *l);
  tdm__stamp(&l->magic_, &l->version_, &l->flags_, magic, flags);
  return 0;
}

/*
 * Tries to take a free word `v` (no owner, maybe OWNER_DIED or WAITERS set), leaving `keep` set.
 * Returns 0 or -EOWNERDEAD when taken, 1 when the word changed meanwhile.
 */
static int take_free(tdm_lock *l, uint32_t v, uint32_t tid, uint32_t keep) {
  if (!__atomic_compare_exchange_n(&l->word_, &v, tid | keep, false, __ATOMIC_ACQUIRE,
                                   __ATOMIC_RELAXED))
    return 1;
  return (v & OWNER_DIED) ? -EOWNERDEAD : 0;
}

__attribute__((noinline)) static int acquire_slow(tdm_lock *l, uint32_t tid, int64_t timeout) {
  bool shared = tdm__is_shared(l->flags_);
  uint32_t v = __atomic_load_n(&l->word_, __ATOMIC_RELAXED);
  if (tdm__owner_is_me(v & TID_MASK, shared)) return -EDEADLK;

  if (timeout == 0) {
    int r = (v & TID_MASK) == 0 ? take_free(l, v, tid, v & WAITERS) : 1;
    return r <= 0 ? r : -ETIMEDOUT;
  }
  int64_t deadline = tdm__deadline(timeout);
  /* Spin while the owner is likely to let go soon. */
  TDM__SPIN_WHILE((__atomic_load_n(&l->word_, __ATOMIC_RELAXED) & TID_MASK) != 0, TDM__LOCK_SPIN_NS,
                  deadline);

  bool slept = false;
  for (;;) {
    v = __atomic_load_n(&l->word_, __ATOMIC_RELAXED);
    if ((v & TID_MASK) == 0) {
      /* After sleeping, others may sleep too: keep WAITERS so that our release wakes one. */
      int r = take_free(l, v, tid, slept ? WAITERS : v & WAITERS);
      if (r <= 0) return r;
      continue;
    }
    if (!(v & WAITERS)) {
      if (!__atomic_compare_exchange_n(&l->word_, &v, v | WAITERS, false, __ATOMIC_RELAXED,
                                       __ATOMIC_RELAXED))
        continue;
      v |= WAITERS;
    }
    if (tdm__futex_wait(&l->word_, v, deadline, shared) == -ETIMEDOUT) {
      /* A last look: the lock may have come free as the time ran out. */
      v = __atomic_load_n(&l->word_, __ATOMIC_RELAXED);
      int r = (v & TID_MASK) == 0 ? take_free(l, v, tid, WAITERS) : 1;
      return r <= 0 ? r : -ETIMEDOUT;
    }
    slept = true;
  }
}

/*
 * A shared lock, with the robust-list bookkeeping around the word. Out of line, so that the
 * private paths below stay small leaf functions.
 */
__attribute__((noinline)) static int acquire_shared(tdm_lock *l, int64_t timeout) {
  /* A shared lock taken by a thread whose death the kernel would not report is not robust. */
  if (!tdm__robust_usable()) return -ENOTSUP;
  uint32_t tid = (uint32_t)tdm__tid();
  tdm__robust_pending(&l->robust_next_);
  uint32_t zero = 0;
  int r = 0;
  if (!__atomic_compare_exchange_n(&l->word_, &zero, tid, false, __ATOMIC_ACQUIRE,
                                   __ATOMIC_RELAXED))
    r = acquire_slow(l, tid, timeout);
  if (r == 0 || r == -EOWNERDEAD) tdm__robust_link(&l->robust_next_);
  tdm__robust_pending(NULL);
  return r;
}

/* The holder's robust list is usable: acquire_shared() refused the lock otherwise. */
__attribute__((noinline)) static void release_shared(tdm_lock *l) {
  tdm__robust_pending(&l->robust_next_);
  tdm__robust_unlink(&l->robust_next_);
  uint32_t v = __atomic_exchange_n(&l->word_, 0, __ATOMIC_RELEASE);
  if (v & WAITERS) tdm__futex_wake(&l->word_, 1, true);
  tdm__robust_pending(NULL);
}

/* Inlined into every entry point: a private lock costs one atomic operation when free. */
static inline int acquire(tdm_lock *l, int64_t timeout) {
  if (tdm__is_shared(l->flags_)) return acquire_shared(l, timeout);
  uint32_t tid = (uint32_t)tdm__tid();
  uint32_t zero = 0;
  if (__builtin_expect(__atomic_compare_exchange_n(&l->word_, &zero, tid, false, __ATOMIC_ACQUIRE,
                                                   __ATOMIC_RELAXED),
                       1))
    return 0;
  return acquire_slow(l, tid, timeout);
}

static inline void release(tdm_lock *l) {
  if (tdm__is_shared(l->flags_)) {
    release_shared(l);
    return;
  }
  uint32_t v = __atomic_exchange_n(&l->word_, 0, __ATOMIC_RELEASE);
  if (__builtin_expect(v & WAITERS, 0)) tdm__futex_wake(&l->word_, 1, false);
}

int tdm__lock_acquire(tdm_lock *l, int64_t timeout) {
  return acquire(l, timeout);
}

void tdm__lock_release(tdm_lock *l) {
  release(l);
}

/* ---- Lock ---------------------------------------------------------------------------------- */

int tdm_lock_init(tdm_lock *l, int flags) {
  return tdm__lock_init_as(l, flags, TDM__LOCK_MAGIC);
}

/* Finalises a lock core of either kind; `what` names the public call for the messages. */
static void fini_core(tdm_lock *l, uint32_t magic, const char *what) {
  TDM__CHECK(l, magic, what);
  uint32_t v = __atomic_load_n(&l->word_, __ATOMIC_RELAXED);
  TDM__REQUIRE((v & TID_MASK) == 0, "%s: lock %p is held (by thread %u)", what, (void *)l,
               v & TID_MASK);
  __atomic_store_n(&l->magic_, 0, __ATOMIC_RELAXED);
}

void tdm_lock_fini(tdm_lock *l) {
  fini_core(l, TDM__LOCK_MAGIC, "tdm_lock_fini");
}

int tdm_lock_acquire(tdm_lock *l, int64_t timeout) {
  TDM__CHECK(l, TDM__LOCK_MAGIC, "tdm_lock_acquire");
  return acquire(l, timeout);
}

void tdm_lock_release(tdm_lock *l) {
  TDM__CHECK(l, TDM__LOCK_MAGIC, "tdm_lock_release");
  TDM__REQUIRE(tdm__lock_held(l), "tdm_lock_release: lock %p is not held by this thread",
               (void *)l);
  release(l);
}

bool tdm_lock_locked(const tdm_lock *l) {
  TDM__CHECK(l, TDM__LOCK_MAGIC, "tdm_lock_locked");
  return (__atomic_load_n(&l->word_, __ATOMIC_RELAXED) & TID_MASK) != 0;
}

bool tdm_lock_held(const tdm_lock *l) {
  TDM__CHECK(l, TDM__LOCK_MAGIC, "tdm_lock_held");
  return tdm__lock_held(l);
}

/* ---- RLock ----------------------------------------------------------------------------------
 *
 * A lock core plus a level count. The count is read and written only by the thread that holds
 * the core, so it needs no atomics: the core's acquire and release order it between owners.
 */

int tdm_rlock_init(tdm_rlock *l, int flags) {
  int r = tdm__lock_init_as(&l->lock_, flags, TDM__RLOCK_MAGIC);
  if (r == 0) {
    l->count_ = 0;
    memset(l->spare_, 0, sizeof l->spare_);
  }
  return r;
}

void tdm_rlock_fini(tdm_rlock *l) {
  fini_core(&l->lock_, TDM__RLOCK_MAGIC, "tdm_rlock_fini");
}

__attribute__((noinline)) static int rlock_acquire_full(tdm_rlock *l, int64_t timeout) {
  if (tdm__lock_held(&l->lock_)) {
    if (l->count_ == UINT32_MAX) return -EAGAIN;
    l->count_++;
    return 0;
  }
  int r = acquire(&l->lock_, timeout);
  if (r == 0 || r == -EOWNERDEAD) l->count_ = 1;
  return r;
}

__attribute__((noinline)) static void rlock_release_full(tdm_rlock *l) {
  TDM__REQUIRE(tdm__lock_held(&l->lock_),
               "tdm_rlock_release: recursive lock %p is not held by this thread", (void *)l);
  if (--l->count_ == 0) release(&l->lock_);
}

/*
 * The common cases stay small leaf functions: another level of a lock the caller holds, a free
 * private lock, and the release of a level or of a private lock without waiters.
 */
int tdm_rlock_acquire(tdm_rlock *l, int64_t timeout) {
  TDM__CHECK(&l->lock_, TDM__RLOCK_MAGIC, "tdm_rlock_acquire");
  uint32_t tid = (uint32_t)tdm__tid();
  uint32_t w = __atomic_load_n(&l->lock_.word_, __ATOMIC_RELAXED);
  if ((w & TID_MASK) == tid) {
    if (l->count_ != UINT32_MAX) {
      l->count_++;
      return 0;
    }
  } else if (w == 0 && !tdm__is_shared(l->lock_.flags_) &&
             __atomic_compare_exchange_n(&l->lock_.word_, &w, tid, false, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED)) {
    l->count_ = 1;
    return 0;
  }
  return rlock_acquire_full(l, timeout);
}

void tdm_rlock_release(tdm_rlock *l) {
  TDM__CHECK(&l->lock_, TDM__RLOCK_MAGIC, "tdm_rlock_release");
  uint32_t owner = __atomic_load_n(&l->lock_.word_, __ATOMIC_RELAXED) & TID_MASK;
  if (owner == (uint32_t)tdm__tid()) {
    if (l->count_ > 1) {
      l->count_--;
      return;
    }
    if (!tdm__is_shared(l->lock_.flags_)) {
      l->count_ = 0;
      release(&l->lock_);
      return;
    }
  }
  rlock_release_full(l);
}

bool tdm_rlock_held(const tdm_rlock *l) {
  TDM__CHECK(&l->lock_, TDM__RLOCK_MAGIC, "tdm_rlock_held");
  return tdm__lock_held(&l->lock_);
}

uint32_t tdm_rlock_level(const tdm_rlock *l) {
  TDM__CHECK(&l->lock_, TDM__RLOCK_MAGIC, "tdm_rlock_level");
  return tdm__lock_held(&l->lock_) ? l->count_ : 0;
}
