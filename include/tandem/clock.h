/*
 * tandem/clock.h: time, timeouts and deadlines.
 *
 * Every blocking call in tandem takes a relative timeout in nanoseconds (int64_t), with
 * TDM_FOREVER (or any negative value) for no limit and 0 for "do not block". A call turns its
 * timeout into an absolute deadline on CLOCK_MONOTONIC once, on entry, and waits against that
 * deadline; wake-ups by signals (EINTR) or spurious futex returns re-wait for what is left, so
 * they never extend the wait, and changes to the wall clock do not affect it. A wait that ends
 * without success returns -ETIMEDOUT, also when the timeout was 0.
 *
 * A duration is not a timeout: a sleep or a timer's delay says how long, so a negative one is
 * an error (-EINVAL), not "forever".
 *
 * The helpers below are what the library itself uses; they are public so that code built on
 * tandem can keep the same discipline across several calls (one deadline, many waits).
 * Nothing here has state: safe in any thread and after fork().
 */
#ifndef TANDEM_CLOCK_H
#define TANDEM_CLOCK_H

#include "tandem/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* No time limit: wait until the call can succeed. Every negative timeout means the same. */
#define TDM_FOREVER ((int64_t)-1)

/* Durations in tandem's unit, the nanosecond. */
#define TDM_NS(n) ((int64_t)(n))
#define TDM_US(n) ((int64_t)(n)*INT64_C(1000))
#define TDM_MS(n) ((int64_t)(n)*INT64_C(1000000))
#define TDM_S(n)  ((int64_t)(n)*INT64_C(1000000000))

/* An absolute point on CLOCK_MONOTONIC, in nanoseconds; INT64_MAX means never. */
typedef struct tdm_deadline {
  int64_t at;
} tdm_deadline;

/* Returns CLOCK_MONOTONIC in nanoseconds. Thread-safe, async-signal-safe. */
TDM_API int64_t tdm_clock_now(void);

/*
 * Returns CPU time consumed by the calling thread (CLOCK_THREAD_CPUTIME_ID), in nanoseconds.
 * Used to tell waiting from computing. Thread-safe.
 */
TDM_API int64_t tdm_clock_thread_cpu(void);

/*
 * Returns CPU time consumed by the whole process (all its threads, CLOCK_PROCESS_CPUTIME_ID),
 * in nanoseconds. Thread-safe.
 */
TDM_API int64_t tdm_clock_process_cpu(void);

/*
 * Sleeps for `duration` nanoseconds on CLOCK_MONOTONIC, against an absolute deadline, so that
 * signal handlers that interrupt it do not make it shorter or longer. Returns 0, or -EINVAL for
 * a negative duration. Thread-safe.
 */
TDM_API int tdm_clock_sleep(int64_t duration);

/*
 * Returns the deadline `timeout` nanoseconds from now: never for a negative timeout (FOREVER),
 * now for 0, and never again when now + timeout would overflow.
 */
TDM_API tdm_deadline tdm_deadline_after(int64_t timeout);

/*
 * Returns the time left before `d`: 0 when it has passed, TDM_FOREVER when `d` is never.
 * Pass the result as the timeout of the next blocking call to keep one overall deadline.
 */
TDM_API int64_t tdm_deadline_left(tdm_deadline d);

/* Returns true when `d` has passed (never for a deadline that is never). */
TDM_API bool tdm_deadline_passed(tdm_deadline d);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_CLOCK_H */
