/*
 * tandem/future.h: futures, the results of tasks run by a pool (Python's
 * concurrent.futures.Future, wait() and as_completed()).
 *
 * tdm_pool_submit() (pool.h) returns a future: a process-local handle on one task. The task
 * moves through these states, each once and in this order:
 *
 *   PENDING -> RUNNING -> DONE | FAILED | CANCELLED       (or PENDING -> CANCELLED, or -> FAILED)
 *
 * DONE: the function returned 0; its result (bytes, possibly none) is held by the future.
 * FAILED: tdm_future_error() tells why (see tdm_task_error): the function returned non-zero
 * (TDM_ETASK), the worker running it died (TDM_EWORKER), it ran past its timeout
 * (TDM_ETASKTIMEOUT), the pool could not run it (TDM_EINIT, TDM_EBROKEN, -ENOMEM).
 * CANCELLED: tdm_future_cancel() stopped it, or the pool did (tdm_pool_terminate(), or
 * tdm_pool_shutdown() with cancel_pending); tdm_future_result() then returns -ECANCELED.
 *
 * Ownership. The caller owns the future returned by submit and releases it with
 * tdm_future_free(), at any time: the pool holds its own reference until the task has ended,
 * so freeing a pending future does not cancel it (as in Python, where dropping a future does
 * not). The result bytes belong to the future.
 *
 * Thread safety. Every function may be called from any thread at once on the same future,
 * except tdm_future_free(), after which the handle is gone. Futures are process-local: a fork
 * child must not use its parent's futures.
 */
#ifndef TANDEM_FUTURE_H
#define TANDEM_FUTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_future tdm_future;

/* The context of a running task, given to its function (pool.h, tdm_task_fn). */
typedef struct tdm_task tdm_task;

/* The states of a future (see above). */
typedef enum tdm_future_state {
  TDM_FUTURE_PENDING = 0, /* submitted, not started (or started on a worker that died, and
                             waiting to run again under the retry policy) */
  TDM_FUTURE_RUNNING,     /* a worker runs it */
  TDM_FUTURE_DONE,        /* the function returned 0 */
  TDM_FUTURE_FAILED,      /* see tdm_future_error() */
  TDM_FUTURE_CANCELLED    /* tdm_future_cancel() stopped it */
} tdm_future_state;

/* Why a task failed, and how often it was started (tdm_future_error()). */
typedef struct tdm_task_error {
  int code;          /* 0 (DONE or not ended), -ECANCELED (CANCELLED), or why it FAILED:
                        TDM_ETASK, TDM_EWORKER, TDM_ETASKTIMEOUT, TDM_EINIT, TDM_EBROKEN,
                        TDM_ECHILDINIT, -ENOMEM (see the top of this file) */
  int status;        /* TDM_ETASK: the function's return value; TDM_EWORKER: how the worker
                        ended, as tdm_process_exitcode() gives it (-signal, or the exit
                        status); TDM_EINIT: the initializer's return value; otherwise 0 */
  unsigned attempts; /* times the task was started; more than 1 only under the retry policy
                        (tdm_pool_options.retries), each restart after a lost worker */
} tdm_task_error;

/* ---- Inside a task --------------------------------------------------------------------------- */

/*
 * Sets the running task's result: `size` bytes copied from `data` (NULL with size 0 for an
 * empty result). Call it from the task's function, any number of times: the last call wins.
 * The result is delivered only if the function then returns 0. Returns 0; -ENOMEM; -EMSGSIZE
 * when size is over the pool's max_result (process pools; tdm_pool_options).
 */
TDM_API int tdm_task_set_result(tdm_task *task, const void *data, size_t size);

/*
 * True once the task was asked to stop: tdm_future_cancel() on a task running on a thread, its
 * timeout passed on a thread, or the pool was terminated. A thread cannot be stopped from
 * outside; a long task should poll this and return when it turns true (its result is then
 * discarded). A task on a process worker is stopped by killing the worker instead, so there
 * this stays false.
 */
TDM_API bool tdm_task_cancelled(const tdm_task *task);

/* ---- Futures --------------------------------------------------------------------------------- */

/* The current state. */
TDM_API tdm_future_state tdm_future_state_get(const tdm_future *f);

/* True once the future is DONE, FAILED or CANCELLED (Python's done()). */
TDM_API bool tdm_future_done(const tdm_future *f);

/*
 * Waits until the future is DONE, FAILED or CANCELLED, for at most `timeout` (TDM_FOREVER, or
 * 0 not to wait). Returns 0 once it is; -ETIMEDOUT when it still is not.
 */
TDM_API int tdm_future_wait(tdm_future *f, int64_t timeout);

/*
 * Waits as tdm_future_wait() does, then gives the outcome: 0 when the task is DONE, with its
 * result in *data and *size (either may be NULL; the bytes belong to the future and stay valid
 * until tdm_future_free(); *data is NULL for an empty result); -ETIMEDOUT when the wait timed
 * out; -ECANCELED when it was cancelled; otherwise the failure's code (tdm_task_error.code).
 * On any return but 0, *data and *size are left alone.
 */
TDM_API int tdm_future_result(tdm_future *f, int64_t timeout, const void **data, size_t *size);

/*
 * Fills *err with why the future failed (code 0 unless it is FAILED or CANCELLED) and how many
 * times its task was started. Does not wait. Returns the code.
 */
TDM_API int tdm_future_error(const tdm_future *f, tdm_task_error *err);

/*
 * Cancels the task.
 * - PENDING: it is removed from the pool and will not run; the future is CANCELLED. Returns 0.
 * - RUNNING on a process worker: the worker is killed (SIGKILL) and replaced; the future is
 *   CANCELLED. Returns 0.
 * - RUNNING on a thread: a thread cannot be stopped, so the task is asked to stop
 *   (tdm_task_cancelled() turns true) and the future becomes CANCELLED when its function
 *   returns, whatever it returns. Returns -EINPROGRESS; wait for the future.
 * - already DONE, FAILED or CANCELLED: nothing changes; returns -EALREADY.
 */
TDM_API int tdm_future_cancel(tdm_future *f);

/*
 * Adds a callback run once when the future ends (DONE, FAILED or CANCELLED), with the future
 * and `arg`. It runs in the thread that ends the future (a worker thread of a thread pool, the
 * supervisor thread of a process pool, or the caller of tdm_future_cancel()), or at once in the
 * calling thread when the future has already ended. Callbacks run in the order they were added.
 * A callback must not block for long and must not free the future; it may read it and call
 * tdm_pool_submit(). Returns 0; -ENOMEM (the callback was not added).
 */
TDM_API int tdm_future_on_done(tdm_future *f, void (*fn)(tdm_future *f, void *arg), void *arg);

/*
 * Releases the caller's reference: the handle is gone. The task is not cancelled: a pending or
 * running task still runs, and its result is dropped. NULL is a no-op.
 */
TDM_API void tdm_future_free(tdm_future *f);

/* ---- Waiting on many ------------------------------------------------------------------------- */

/* What tdm_wait() waits for (Python's FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED). */
typedef enum tdm_wait_mode {
  TDM_WAIT_ALL = 0,    /* every future has ended */
  TDM_WAIT_FIRST,      /* at least one future has ended */
  TDM_WAIT_FIRST_ERROR /* one has FAILED or was CANCELLED, or else every one has ended */
} tdm_wait_mode;

/*
 * Waits until the `n` futures in `fs` meet `mode`, for at most `timeout`. *n_done (if not
 * NULL) receives how many had ended when the call returned; tdm_future_done() tells which.
 * The futures may belong to different pools; NULL entries are not allowed, repeats are.
 * Returns 0 when the condition holds (at once for n == 0); -ETIMEDOUT when it does not;
 * -ENOMEM.
 */
TDM_API int tdm_wait(tdm_future *const *fs, size_t n, tdm_wait_mode mode, int64_t timeout,
                     size_t *n_done);

/* An iterator over futures in the order they end (Python's as_completed()). */
typedef struct tdm_as_completed tdm_as_completed;

/*
 * Opens an iterator over the `n` futures in `fs` (copied; the futures must stay alive until
 * the iterator is closed). Returns 0; -EINVAL for a NULL entry; -ENOMEM.
 */
TDM_API int tdm_as_completed_open(tdm_as_completed **out, tdm_future *const *fs, size_t n);

/*
 * Gives the next future to end in *f, each future once: those that had already ended when the
 * iterator was opened come first. Waits for at most `timeout`. Returns 0; TDM_EEOF when every
 * future has been given; -ETIMEDOUT. Use one iterator from one thread at a time.
 */
TDM_API int tdm_as_completed_next(tdm_as_completed *it, int64_t timeout, tdm_future **f);

/* Closes the iterator (not the futures). NULL is a no-op. */
TDM_API void tdm_as_completed_close(tdm_as_completed *it);

#ifdef __cplusplus
}
#endif

#endif
