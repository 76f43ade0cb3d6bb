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

/* Spin iterations before a waiter parks on its futex. */
#define TDM__SPIN 100

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

/* True when the calling thread holds the lock core. */
static inline bool tdm__lock_held(const tdm_lock *l) {
  uint32_t w = __atomic_load_n(&l->word_, __ATOMIC_RELAXED);
  return (w & TDM__FUTEX_TID_MASK) == (uint32_t)tdm__tid();
}

/*
 * Waits on `c` with the core `l` released, against an absolute deadline, and re-acquires `l`.
 * The caller holds `l` and has released any recursion levels. Returns 0, -ETIMEDOUT or
 * -EOWNERDEAD.
 */
int tdm__cond_wait_core(tdm_cond *c, tdm_lock *l, int64_t deadline);

#endif /* TDM_SYNC_INTERNAL_H */
