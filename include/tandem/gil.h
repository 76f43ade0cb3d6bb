/*
 * tandem/gil.h: a global interpreter lock with CPython's rules, for showing what CPython does
 * and for guarding code that is not thread-safe.
 *
 * C has no GIL: tandem's threads run C code in parallel. tdm_gil re-creates the lock that
 * CPython 3.2+ puts around its interpreter, with the same hand-off rules:
 *
 *  - one thread holds it at a time; threads that run "Python-like" code hold it and call
 *    tdm_gil_checkpoint() often (CPython checks between bytecodes);
 *  - a thread that wants it waits one switch interval (5 ms by default, CPython's
 *    sys.getswitchinterval()); if no switch happened meanwhile, it asks the holder to drop it;
 *  - the holder drops it at its next checkpoint and, forced switching, does not take it back
 *    until another thread has taken it, so a waiter is guaranteed its turn;
 *  - blocking work (sleep, I/O) is done with the GIL released: tdm_gil_release() before and
 *    tdm_gil_acquire() after, as CPython's Py_BEGIN_ALLOW_THREADS, or tdm_gil_sleep().
 *
 * So CPU-bound threads under one tdm_gil take turns and run no faster than one thread, while
 * threads that mostly wait still overlap: the classic CPython results, measured in C.
 *
 * A tdm_gil synchronises the threads of one process. Fork: a GIL the forking thread held is
 * still held by it in the child; a child must not use a GIL that another thread held at the
 * time of the fork.
 */
#ifndef TANDEM_GIL_H
#define TANDEM_GIL_H

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/sync.h"

#ifdef __cplusplus
extern "C" {
#endif

/* CPython's default switch interval. */
#define TDM_GIL_DEFAULT_INTERVAL TDM_MS(5)

/* The GIL's state; for tandem's use only. 192 bytes. */
typedef struct tdm_gil {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags_;
  uint32_t locked_;
  uint32_t drop_request_;
  int32_t holder_;      /* native id of the holder, 0 when free */
  int32_t last_holder_; /* native id of the last thread that took it */
  int64_t interval_;
  uint64_t switches_;
  uint64_t forced_;
  tdm_lock mutex_;
  tdm_cond cond_;
  tdm_cond switch_cond_;
  uint64_t spare_[4];
} tdm_gil;

/*
 * Initialises a free GIL with the given switch interval in ns (0: 5 ms). Returns 0, or -EINVAL
 * for a negative interval.
 */
TDM_API int tdm_gil_init(tdm_gil *g, int64_t interval);

/* Finalises a GIL that nobody holds or waits for. Aborts if held. */
TDM_API void tdm_gil_fini(tdm_gil *g);

/* Takes the GIL, waiting as CPython's take_gil() does. Aborts if the caller already holds it. */
TDM_API void tdm_gil_acquire(tdm_gil *g);

/*
 * Releases the GIL, which the caller must hold (aborts otherwise). When another thread has
 * asked for the GIL, waits until that thread has taken it before returning (forced switching,
 * as CPython's drop_gil() does), so it may block briefly.
 */
TDM_API void tdm_gil_release(tdm_gil *g);

/*
 * The holder's check-point: when another thread has asked for the GIL, drops it, waits until
 * that thread has taken it (forced switching) and takes it back. Otherwise costs one load.
 */
TDM_API void tdm_gil_checkpoint(tdm_gil *g);

/*
 * Sleeps for `duration` ns with the GIL released, then takes it back, as time.sleep() does.
 * Returns 0, or -EINVAL for a negative duration (then nothing happens). The caller must hold the
 * GIL (aborts otherwise). Like tdm_gil_release(), it may first wait for a waiting thread to take
 * the GIL (forced switching).
 */
TDM_API int tdm_gil_sleep(tdm_gil *g, int64_t duration);

/* Returns the switch interval, in ns. */
TDM_API int64_t tdm_gil_interval(const tdm_gil *g);

/* Returns true when the calling thread holds the GIL. */
TDM_API bool tdm_gil_held(tdm_gil *g);

/*
 * Returns how many times the GIL changed hands (the first acquisition counts as one, as in
 * CPython's switch number), and how many drops a waiter's request forced.
 */
TDM_API uint64_t tdm_gil_switches(tdm_gil *g);
TDM_API uint64_t tdm_gil_forced_switches(tdm_gil *g);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_GIL_H */
