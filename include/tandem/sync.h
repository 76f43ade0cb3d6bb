/*
 * tandem/sync.h: Lock, RLock, Condition, Semaphore (and BoundedSemaphore), Event and Barrier,
 * Python's threading/multiprocessing primitives, as one type each.
 *
 * Every object here is a fixed-size struct that the caller places and initialises in place
 * (`_init`/`_fini`); none of them allocates. Initialised with TDM_SYNC_PRIVATE, an object
 * synchronises the threads of one process. Initialised with TDM_SYNC_SHARED and placed in
 * memory that several processes map (a MAP_SHARED mapping, a tandem shared segment), the same
 * object synchronises threads of different processes. A shared object holds no pointers of its
 * own making, so processes may map it at different addresses; initialise it once, in one
 * process, before any other process uses it.
 *
 * Waiting spins briefly, then parks the thread on a futex (private futexes for private objects,
 * shared ones otherwise). Blocking calls take a timeout (see tandem/clock.h): TDM_FOREVER, 0 for
 * "try once", or a number of nanoseconds; a wait that ends without success returns -ETIMEDOUT.
 *
 * Process death. A shared Lock or RLock is robust: when the thread that holds it dies (its
 * process was killed, crashed, exited or exec'd, or the thread itself ended), the kernel marks
 * the lock, and the next acquirer gets it with the code -EOWNERDEAD: the lock is now held by
 * that caller and works as before, but the data it protects may be half-updated. Semaphore,
 * Event and Condition are lock-free words, so a participant killed at any point cannot wedge
 * the others (a semaphore count that a dead process had taken stays taken, as in Python). A
 * Barrier that waits for a party that died waits until its timeout (which breaks the barrier
 * for everyone) or until another process aborts or resets it.
 *
 * Fork. The state of every object is in its memory, so after fork() a child sees what the
 * parent's memory held. A private object copied into the child is the child's own: a private
 * Lock or RLock that the forking thread held is still held by that thread in the child (which
 * may release it, as with pthreads), one that another thread held stays held forever. A shared
 * object in MAP_SHARED memory is the same object in both: a shared lock held by a thread of the
 * parent remains the parent's.
 *
 * Misuse aborts with a message: releasing a lock that the calling thread does not hold,
 * finalising a held lock, waiting on a condition without holding its lock, waiting on a
 * condition with a lock of the other kind (private with shared), using an object that was never
 * initialised or was finalised. Not detected: using a private object from several processes.
 */
#ifndef TANDEM_SYNC_H
#define TANDEM_SYNC_H

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Flags for every `_init` below. */
#define TDM_SYNC_PRIVATE 0 /* between the threads of one process */
#define TDM_SYNC_SHARED  1 /* between processes, when placed in shared memory */

/*
 * The layouts below are for tandem's use only; they are public so that objects can be placed
 * in shared memory and embedded in other structs. Each starts with a magic number and a layout
 * version, and its size is fixed (checked at compile time).
 */

/* A non-recursive lock (Python's threading.Lock / multiprocessing.Lock). 48 bytes. */
typedef struct tdm_lock {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint32_t word_; /* owner thread id | waiters bit | owner-died bit */
  uint32_t spare_[5];
  uint64_t robust_prev_; /* node of the owner thread's kernel robust list; addresses are the */
  uint64_t robust_next_; /* owner's own and are meaningful only while it holds the lock */
} tdm_lock;

/* A recursive lock (Python's RLock). 64 bytes. */
typedef struct tdm_rlock {
  tdm_lock lock_;
  uint32_t count_;
  uint32_t spare_[3];
} tdm_rlock;

/* A condition variable used with a tdm_lock or tdm_rlock (Python's Condition). 32 bytes. */
typedef struct tdm_cond {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint32_t seq_;
  uint32_t waiters_;  /* registered waiters (changed with the user's lock held) */
  uint32_t sleepers_; /* waiters asleep in the kernel */
  uint32_t spare_[3];
} tdm_cond;

/* A counting semaphore, optionally bounded (Python's Semaphore and BoundedSemaphore). 32 bytes. */
typedef struct tdm_sem {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint32_t value_;
  uint32_t waiters_;
  uint32_t max_;
  uint32_t spare_[3];
} tdm_sem;

/* A flag that threads can wait for (Python's Event). 32 bytes. */
typedef struct tdm_event {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint32_t word_; /* generation << 1 | flag */
  uint32_t waiters_;
  uint32_t spare_[4];
} tdm_event;

/* A barrier for a fixed number of parties (Python's Barrier). 128 bytes. */
typedef struct tdm_barrier {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint32_t parties_;
  uint32_t count_;
  uint32_t gen_;
  uint32_t broken_;
  uint64_t broken_gens_; /* bit g % 64 set: generation g ended broken */
  tdm_lock lock_;
  tdm_cond cond_;
  uint64_t spare_[2];
} tdm_barrier;

/* ---- Lock ---------------------------------------------------------------------------------- */

/*
 * Initialises `l` as an unlocked lock; flags is TDM_SYNC_PRIVATE or TDM_SYNC_SHARED.
 * Returns 0; -EINVAL for unknown flags; -ENOTSUP when TDM_SYNC_SHARED is asked for and this
 * C library gives tandem no way to make the lock robust (tandem needs glibc's robust-list
 * layout on a 64-bit system; see docs/sync.md). Do not initialise a lock that is in use.
 */
TDM_API int tdm_lock_init(tdm_lock *l, int flags);

/* Finalises an unlocked lock; it must be initialised again before further use. Aborts if held. */
TDM_API void tdm_lock_fini(tdm_lock *l);

/*
 * Acquires the lock, waiting at most `timeout` ns. Returns:
 *   0             the caller holds the lock;
 *   -EOWNERDEAD   the caller holds the lock, whose previous owner died holding it (shared
 *                 locks only; see the top of this file);
 *   -ETIMEDOUT    the lock was not acquired in time (timeout 0: it was held);
 *   -EDEADLK      the calling thread already holds this lock (nothing taken; with an RLock
 *                 this would be legal);
 *   -ENOTSUP      a shared lock, and the calling thread has no robust list tandem can use (a
 *                 thread not made by the C library's pthread_create; never on glibc threads).
 */
TDM_API int tdm_lock_acquire(tdm_lock *l, int64_t timeout);

/* Releases the lock; the calling thread must hold it (aborts otherwise). Never blocks. */
TDM_API void tdm_lock_release(tdm_lock *l);

/* Returns true when some thread (of any process) holds the lock: Python's Lock.locked(). */
TDM_API bool tdm_lock_locked(const tdm_lock *l);

/* Returns true when the calling thread holds the lock. */
TDM_API bool tdm_lock_held(const tdm_lock *l);

/* ---- RLock ----------------------------------------------------------------------------------- */

/* Initialises a recursive lock; flags and errors as tdm_lock_init(). */
TDM_API int tdm_rlock_init(tdm_rlock *l, int flags);

/* Finalises an unlocked recursive lock. Aborts if held. */
TDM_API void tdm_rlock_fini(tdm_rlock *l);

/*
 * Acquires the lock, or adds one level when the calling thread already holds it. Returns 0,
 * -EOWNERDEAD (held at level 1, previous owner died), -ETIMEDOUT, -EAGAIN when the level would
 * pass UINT32_MAX (nothing taken), or -ENOTSUP as tdm_lock_acquire().
 */
TDM_API int tdm_rlock_acquire(tdm_rlock *l, int64_t timeout);

/* Removes one level; the lock is released when the level reaches 0. Aborts if not held. */
TDM_API void tdm_rlock_release(tdm_rlock *l);

/* Returns true when the calling thread holds the lock. */
TDM_API bool tdm_rlock_held(const tdm_rlock *l);

/* Returns how many levels the calling thread holds (0 when it does not hold the lock). */
TDM_API uint32_t tdm_rlock_level(const tdm_rlock *l);

/* ---- Condition ----------------------------------------------------------------------------- */

/* Predicate for the wait_for calls: returns true when the awaited state holds. */
typedef bool (*tdm_predicate)(void *arg);

/* Initialises a condition; flags and errors as tdm_lock_init() (no -ENOTSUP). */
TDM_API int tdm_cond_init(tdm_cond *c, int flags);

/* Finalises a condition that nobody waits on. */
TDM_API void tdm_cond_fini(tdm_cond *c);

/*
 * Releases `l` (which the caller must hold), waits until notified or until `timeout`, and
 * acquires `l` again before returning, whatever the result. Returns 0 (notified), -ETIMEDOUT,
 * or -EOWNERDEAD (notified or not, the lock was re-acquired from an owner that died). As with
 * pthread_cond_wait, a return of 0 does not prove that the awaited state holds: another thread
 * may have changed it first, and more than n waiters may return for a notify(n) (see
 * tdm_cond_notify()). Loop on the predicate, or use tdm_cond_wait_for().
 * The lock and the condition must both be private or both shared.
 */
TDM_API int tdm_cond_wait(tdm_cond *c, tdm_lock *l, int64_t timeout);

/* tdm_cond_wait() with a recursive lock: every level is released while waiting and restored. */
TDM_API int tdm_cond_wait_rlock(tdm_cond *c, tdm_rlock *l, int64_t timeout);

/*
 * Waits until pred(arg) is true, evaluating it with `l` held, within one overall deadline
 * (Python's Condition.wait_for). Returns 0 when the predicate is true, -ETIMEDOUT when the time
 * ran out with the predicate still false, or -EOWNERDEAD as tdm_cond_wait() (the predicate is
 * not evaluated again). The lock is held on return in every case.
 */
TDM_API int tdm_cond_wait_for(tdm_cond *c, tdm_lock *l, tdm_predicate pred, void *arg,
                              int64_t timeout);

/* tdm_cond_wait_for() with a recursive lock. */
TDM_API int tdm_cond_wait_for_rlock(tdm_cond *c, tdm_rlock *l, tdm_predicate pred, void *arg,
                                    int64_t timeout);

/*
 * Wakes up to n threads asleep on the condition (n <= 0 wakes none). A wait spins for a few
 * microseconds before it goes to sleep; every waiter still in that phase also returns, so more
 * than n waits may end (Python's Condition ends exactly n). Call it with the lock held, as
 * Python requires: otherwise a waiter that is about to wait can miss the notification. Never
 * blocks; no system call unless a waiter sleeps.
 */
TDM_API void tdm_cond_notify(tdm_cond *c, int n);

/* Wakes every thread waiting on the condition. */
TDM_API void tdm_cond_notify_all(tdm_cond *c);

/* ---- Semaphore ----------------------------------------------------------------------------- */

/*
 * Initialises a semaphore with `value` permits. `max` > 0 makes it bounded (Python's
 * BoundedSemaphore: pass max = value): a release that would raise the count above max fails.
 * max = 0 means unbounded (up to UINT32_MAX). Returns 0, or -EINVAL for unknown flags or
 * value > max.
 */
TDM_API int tdm_sem_init(tdm_sem *s, uint32_t value, uint32_t max, int flags);

/* Finalises a semaphore that nobody waits on. */
TDM_API void tdm_sem_fini(tdm_sem *s);

/* Takes one permit, waiting at most `timeout`. Returns 0 or -ETIMEDOUT. */
TDM_API int tdm_sem_acquire(tdm_sem *s, int64_t timeout);

/*
 * Returns n permits and wakes up to n waiters. Returns 0; TDM_EOVERRELEASE when the semaphore
 * is bounded and the count would pass its bound, -EOVERFLOW when it would pass UINT32_MAX
 * (in both cases nothing is released); -EINVAL when n is 0.
 */
TDM_API int tdm_sem_release(tdm_sem *s, uint32_t n);

/* Returns the number of permits available now (a snapshot). */
TDM_API uint32_t tdm_sem_value(const tdm_sem *s);

/* ---- Event --------------------------------------------------------------------------------- */

/* Initialises an event, initially clear; flags and errors as tdm_cond_init(). */
TDM_API int tdm_event_init(tdm_event *e, int flags);

/* Finalises an event that nobody waits on. */
TDM_API void tdm_event_fini(tdm_event *e);

/* Sets the flag and wakes every waiter. Never blocks. */
TDM_API void tdm_event_set(tdm_event *e);

/* Clears the flag. Waiters released by an earlier set() still return 0. */
TDM_API void tdm_event_clear(tdm_event *e);

/* Returns the flag. */
TDM_API bool tdm_event_is_set(const tdm_event *e);

/*
 * Waits until the flag is set, at most `timeout`. Returns 0 when it is set or was set while
 * the caller waited (even if cleared again since, as in Python), -ETIMEDOUT otherwise.
 */
TDM_API int tdm_event_wait(tdm_event *e, int64_t timeout);

/* ---- Barrier ------------------------------------------------------------------------------- */

/*
 * An action run by the last party to arrive, before the others are released. Returns 0, or
 * non-zero to break the barrier (a negative code is passed on to the caller that ran the action;
 * a positive value is reported to it as TDM_EBROKEN).
 */
typedef int (*tdm_barrier_action)(void *arg);

/*
 * Initialises a barrier for `parties` parties (1 to 2^31 - 1). Returns 0, -EINVAL for a bad
 * count or flags, or -ENOTSUP as tdm_lock_init() for a shared barrier.
 */
TDM_API int tdm_barrier_init(tdm_barrier *b, uint32_t parties, int flags);

/* Finalises a barrier that nobody waits on. */
TDM_API void tdm_barrier_fini(tdm_barrier *b);

/*
 * Waits until `parties` callers have called wait, then releases them all and starts the next
 * round. Returns the caller's arrival index in this round (0 for the first to arrive, parties-1
 * for the last), or:
 *   -ETIMEDOUT   this caller's timeout ran out; the barrier is now broken for everyone;
 *   TDM_EBROKEN  the barrier is broken: another party timed out, it was aborted, it was reset
 *                while this caller waited, its action failed, or a party died while it held the
 *                barrier's internal lock (in a shared barrier; the others notice when they next
 *                take that lock: at their own timeout, or their next barrier call). It stays
 *                broken until tdm_barrier_reset();
 *   -ENOTSUP     as tdm_lock_acquire(), for a shared barrier (the other barrier calls abort).
 * A timeout of 0 means what it means in Python: unless the caller is the last to arrive, the
 * barrier breaks.
 */
TDM_API int tdm_barrier_wait(tdm_barrier *b, int64_t timeout);

/*
 * tdm_barrier_wait() where the last party to arrive runs action(arg) before releasing the
 * others, so that what the action does is visible to every party after the barrier (Python's
 * Barrier(action=...)). Each party passes its own action pointer, so this works between
 * processes whatever their address layout; pass the same action from every party. When the
 * action fails (see tdm_barrier_action), the barrier breaks: its caller gets the action's
 * negative code (or TDM_EBROKEN), the others TDM_EBROKEN. The action runs with the barrier's
 * internal lock held: calling the barrier's own functions from it aborts.
 */
TDM_API int tdm_barrier_wait_action(tdm_barrier *b, tdm_barrier_action action, void *arg,
                                    int64_t timeout);

/* Breaks the barrier: current and future waiters get TDM_EBROKEN until it is reset. */
TDM_API void tdm_barrier_abort(tdm_barrier *b);

/*
 * Returns the barrier to its empty, unbroken state. Parties waiting in the current round get
 * TDM_EBROKEN (as in Python). Parties that died inside the barrier are forgotten.
 */
TDM_API void tdm_barrier_reset(tdm_barrier *b);

/* Returns the number of parties the barrier was made for. */
TDM_API uint32_t tdm_barrier_parties(const tdm_barrier *b);

/* Returns the number of parties waiting in the current round (0 when broken). */
TDM_API uint32_t tdm_barrier_n_waiting(tdm_barrier *b);

/* Returns true when the barrier is broken. */
TDM_API bool tdm_barrier_broken(tdm_barrier *b);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_SYNC_H */
