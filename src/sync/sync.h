/*
 * sync.h (private): what the primitives in src/sync/ share: magic numbers, the checks every
 * public entry point makes, and lock operations without those checks for use inside tandem.
 */
#ifndef TDM_SYNC_INTERNAL_H
#define TDM_SYNC_INTERNAL_H

#include "base/internal.h"
#include "platform/platform.h"
#include "tandem/sync.h"

#define TDM__LOCK_MAGIC    TDM__MAGIC('T', 'L', 'C', 'K')
#define TDM__RLOCK_MAGIC   TDM__MAGIC('T', 'R', 'L', 'K')
#define TDM__COND_MAGIC    TDM__MAGIC('T', 'C', 'N', 'D')
#define TDM__SEM_MAGIC     TDM__MAGIC('T', 'S', 'E', 'M')
#define TDM__EVENT_MAGIC   TDM__MAGIC('T', 'E', 'V', 'T')
#define TDM__BARRIER_MAGIC TDM__MAGIC('T', 'B', 'A', 'R')
#define TDM__GIL_MAGIC     TDM__MAGIC('T', 'G', 'I', 'L')

/*
 * How long a waiter spins before it parks on its futex, in wall time (a pause costs 6 ns on one
 * x86 and 40 ns on another, so counting pauses would spin for very different times).
 *
 * A lock spins briefly: a longer spin makes the waiter steal the lock back and forth with its
 * owner, moving the cache line on every operation (`tandem bench`'s contended rows fell below
 * pthreads with 600 ns of spinning). A wait for a hand-off (a semaphore permit, a notify, a set
 * event) spins for about what a sleep and a wake-up cost, the classic competitive bound: it
 * never wastes more than it could save, and catches a partner that answers within microseconds,
 * which makes tandem's ping-pong and hand-off an order of magnitude faster than sleeping at once.
 */
#define TDM__LOCK_SPIN_NS 200
#define TDM__WAIT_SPIN_NS 4000

/*
 * Spins (pause, re-check) while `cond` holds, for at most `ns` nanoseconds and never past the
 * absolute `deadline`. The clock is read every 8 pauses, only once the spin is under way.
 */
#define TDM__SPIN_WHILE(cond, ns, deadline)                                        \
  do {                                                                             \
    int64_t end_ = 0;                                                              \
    for (unsigned i_ = 1; (cond); i_++) {                                          \
      tdm__cpu_relax();                                                            \
      if ((i_ & 7) == 0) {                                                         \
        int64_t now_ = tdm_clock_now();                                            \
        if (end_ == 0) end_ = now_ + (ns) < (deadline) ? now_ + (ns) : (deadline); \
        if (now_ >= end_) break;                                                   \
      }                                                                            \
    }                                                                              \
  } while (0)

/*
 * Aborts unless `obj` (any tandem sync struct: they all start with magic, version and flags)
 * was initialised as `magic` with the current layout. `what` names the calling function.
 */
#define TDM__CHECK(obj, magic, what)                                                              \
  TDM__REQUIRE(__atomic_load_n(&(obj)->magic_, __ATOMIC_RELAXED) == (magic) &&                    \
                   (obj)->version_ == TDM__SYNC_LAYOUT,                                           \
               "%s: %p is not an initialised object of this type (never initialised, finalised, " \
               "overwritten, or from another layout version)",                                    \
               (what), (const void *)(obj))

static inline bool tdm__is_shared(uint16_t flags) {
  return (flags & TDM_SYNC_SHARED) != 0;
}

/* Stamps the common header; the magic is written last, with release ordering. */
static inline void tdm__stamp(uint32_t *magic, uint16_t *version, uint16_t *flags_field,
                              uint32_t value, int flags) {
  *version = TDM__SYNC_LAYOUT;
  *flags_field = (uint16_t)flags;
  __atomic_store_n(magic, value, __ATOMIC_RELEASE);
}

/* tdm_lock_acquire() and tdm_lock_release() for a lock already checked (or an RLock's core). */
int tdm__lock_acquire(tdm_lock *l, int64_t timeout);
void tdm__lock_release(tdm_lock *l);

/* Initialises a lock core with a given magic (plain locks, RLocks and internal locks). */
int tdm__lock_init_as(tdm_lock *l, int flags, uint32_t magic);

/*
 * True when `owner` (a thread id recorded in an object's word, 0 for none) is the calling
 * thread. For a private object that includes the ids the thread had before a fork made it a
 * child's thread (the object is the child's copy); for a shared one it does not (the object is
 * still the parent's).
 */
static inline bool tdm__owner_is_me(uint32_t owner, bool shared) {
  if (owner == (uint32_t)tdm__tid()) return true;
  return !shared && owner != 0 && tdm__tid_was_mine((int32_t)owner);
}

/* True when the calling thread holds the lock core. */
static inline bool tdm__lock_held(const tdm_lock *l) {
  uint32_t owner = __atomic_load_n(&l->word_, __ATOMIC_RELAXED) & TDM__FUTEX_TID_MASK;
  return tdm__owner_is_me(owner, tdm__is_shared(l->flags_));
}

/*
 * Waits on `c` with the core `l` released, against an absolute deadline, and re-acquires `l`.
 * The caller holds `l` and has released any recursion levels. Returns 0, -ETIMEDOUT or
 * -EOWNERDEAD.
 */
int tdm__cond_wait_core(tdm_cond *c, tdm_lock *l, int64_t deadline);

#endif /* TDM_SYNC_INTERNAL_H */
