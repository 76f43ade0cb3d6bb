/*
 * tandem/thread.h: threads (Python's threading.Thread, current_thread, main_thread,
 * active_count, enumerate), thread-local storage (threading.local) and timers (threading.Timer).
 *
 * A thread runs a C function with one pointer argument. tdm_thread_start() returns once the new
 * thread runs (as Python's Thread.start() does), so its identity is known at once; it sets the
 * OS thread name (visible in ps, top, gdb) to the thread's name, truncated to the kernel's 15
 * bytes at a character boundary, as Python 3.14 does.
 *
 * A handle returned by tdm_thread_start() is owned by the caller until a successful
 * tdm_thread_join() or a tdm_thread_detach() consumes it; exactly one of them must happen once.
 * Handles obtained from tdm_thread_self(), tdm_thread_main() or tdm_thread_foreach() are
 * borrowed: the one of a tandem thread stays valid until it is joined or, if detached, until it
 * ends; the one of any other thread stays valid while that thread runs.
 *
 * The main thread, and any thread not started by tandem that calls tdm_thread_self(), are
 * counted and listed as Python counts its main and "dummy" threads.
 *
 * Fork. In a child made by fork(), only the thread that forked exists: it becomes the child's
 * main thread, every other thread is reported dead (not alive, listed nowhere), and joining or
 * detaching their handles in the child returns at once and frees the child's copy. When the
 * forking thread was a tandem thread, its function keeps running in the child, and when it
 * returns the child's last thread ends, so the child exits with status 0 (running its atexit
 * handlers), as with pthreads.
 */
#ifndef TANDEM_THREAD_H
#define TANDEM_THREAD_H

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_thread tdm_thread;

/* The function a thread runs. */
typedef void (*tdm_thread_fn)(void *arg);

/* Options for tdm_thread_start() and tdm_timer_start(); NULL means all defaults. */
typedef struct tdm_thread_options {
  const char *name;  /* copied; NULL: "Thread-N" (threads) or "Timer-N" (timers) */
  size_t stack_size; /* bytes; 0: the C library's default */
} tdm_thread_options;

/*
 * Starts a thread that runs fn(arg), and returns once it is running. On success *out is a new
 * handle owned by the caller (see above). Returns 0; -EINVAL when fn is NULL or the stack size
 * is refused; -EAGAIN when the system cannot make another thread; -ENOMEM. On failure no thread
 * was started and *out is untouched.
 */
TDM_API int tdm_thread_start(tdm_thread **out, tdm_thread_fn fn, void *arg,
                             const tdm_thread_options *opt);

/*
 * Waits at most `timeout` for the thread to end, its thread-local destructors included.
 * Returns 0 when it has ended: the handle is consumed (freed). Returns -ETIMEDOUT when it still
 * runs (the handle stays the caller's), -EDEADLK when a thread tries to join itself, -EINVAL for
 * a handle that was not returned by tdm_thread_start(). Only one thread may join a given handle;
 * joining a handle that was already joined or detached is a bug that tandem cannot always detect
 * (the handle may be freed memory by then).
 */
TDM_API int tdm_thread_join(tdm_thread *t, int64_t timeout);

/*
 * Gives up the handle: the thread runs on and its resources are freed when it ends. Aborts for a
 * handle that was not returned by tdm_thread_start(), and for one already detached while its
 * thread still runs (after that, the handle may be freed memory: detaching twice is a bug that
 * tandem cannot always detect).
 */
TDM_API void tdm_thread_detach(tdm_thread *t);

/*
 * Returns true from the moment tdm_thread_start() returns until the thread's function returns
 * (its thread-local destructors may still be running; tdm_thread_join() waits for those too).
 */
TDM_API bool tdm_thread_is_alive(const tdm_thread *t);

/* Returns the thread's identifier: unique in this process for its whole life, never reused. */
TDM_API uint64_t tdm_thread_ident(const tdm_thread *t);

/* Returns the kernel's thread id (gettid), Python's native_id. */
TDM_API int32_t tdm_thread_native_id(const tdm_thread *t);

/* Returns the thread's name; the string lives as long as the handle. */
TDM_API const char *tdm_thread_name(const tdm_thread *t);

/*
 * Returns the calling thread's handle (Python's current_thread()); borrowed, never NULL. For a
 * thread that tandem did not start, the first call registers it as a "Dummy-N" thread, or as
 * "MainThread" for the process's main thread, without allocating.
 */
TDM_API tdm_thread *tdm_thread_self(void);

/* Returns the main thread's handle (Python's main_thread()); borrowed. */
TDM_API tdm_thread *tdm_thread_main(void);

/* Returns the number of live threads: tandem's, the main thread and registered others. */
TDM_API size_t tdm_thread_count(void);

/*
 * Calls cb(t, arg) for each live thread (Python's enumerate()), stopping early when cb returns
 * non-zero, and returns that value (0 when every call returned 0). The handles are valid during
 * the call. cb runs with the thread registry locked: it may read the handle it is given, but a
 * call that needs the registry (start, join, detach, count, foreach, or the first
 * tdm_thread_self() of a thread that tandem did not start) aborts with a message.
 */
TDM_API int tdm_thread_foreach(int (*cb)(tdm_thread *t, void *arg), void *arg);

/* ---- Thread-local storage -------------------------------------------------------------------- */

/* A thread-local slot (Python's threading.local): one pointer per thread. */
typedef struct tdm_tls {
  uint32_t magic_;
  uint32_t key_;
} tdm_tls;

/*
 * Initialises a slot whose value is NULL in every thread. When a thread that set a non-NULL
 * value ends, dtor(value) runs in that thread (dtor may be NULL). The process's main thread
 * ending through exit() runs no destructors (as with pthreads). Returns 0, or -EAGAIN when the
 * process has no slots left, or -ENOMEM.
 */
TDM_API int tdm_tls_init(tdm_tls *k, void (*dtor)(void *value));

/* Finalises a slot. Values still set are not destroyed; the caller owns them. */
TDM_API void tdm_tls_fini(tdm_tls *k);

/* Returns the calling thread's value (NULL until set). */
TDM_API void *tdm_tls_get(const tdm_tls *k);

/* Sets the calling thread's value. Returns 0, or -ENOMEM. */
TDM_API int tdm_tls_set(tdm_tls *k, void *value);

/* ---- Timer --------------------------------------------------------------------------------- */

typedef struct tdm_timer tdm_timer;

/*
 * Starts a timer that runs fn(arg) in a thread of its own once `delay` ns have passed, unless it
 * is cancelled first (Python's Timer(interval, function).start()). On success *out is owned by
 * the caller until tdm_timer_join() succeeds or tdm_timer_detach(). Errors as
 * tdm_thread_start(), and -EINVAL for a negative delay.
 */
TDM_API int tdm_timer_start(tdm_timer **out, int64_t delay, tdm_thread_fn fn, void *arg,
                            const tdm_thread_options *opt);

/*
 * Cancels the timer. Returns 0 when fn will not run, or -EALREADY when fn has already started
 * (or finished). Thread-safe; may be called several times.
 */
TDM_API int tdm_timer_cancel(tdm_timer *t);

/*
 * Waits at most `timeout` for the timer's thread to end. Returns 0 when fn ran (and returned),
 * -ECANCELED when the timer was cancelled before fn started; in both cases the timer is freed.
 * Returns -ETIMEDOUT when the thread still runs (fn is running, or the delay has not passed):
 * the timer stays the caller's.
 */
TDM_API int tdm_timer_join(tdm_timer *t, int64_t timeout);

/* Gives up the timer handle; it still fires unless it was cancelled. */
TDM_API void tdm_timer_detach(tdm_timer *t);

/* Returns true when fn has run to completion (a snapshot; tdm_timer_join() gives the outcome). */
TDM_API bool tdm_timer_fired(const tdm_timer *t);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_THREAD_H */
