/*
 * tandem/queue.h: message queues between threads and processes (Python's
 * multiprocessing.Queue, SimpleQueue and JoinableQueue, and queue.Queue).
 *
 * A queue carries messages: byte strings of any length from 0 to the maximum chosen when it is
 * opened, delivered whole and in order (first in, first out) to exactly one getter. The same
 * queue works between the threads of one process and between processes: it lives in a shared
 * memory segment of its own (shm.h), which a fork child inherits with the handle, and which
 * other processes attach by name or by descriptor (tdm_process_options.pass_fds), under every
 * start method.
 *
 * Inside, a ring of fixed-size slots with a sequence number each (multi-producer,
 * multi-consumer): a message that fits in a slot is copied into it; a larger one is copied into
 * an arena in the same segment and passes by offset. There is no feeder thread: tdm_queue_put()
 * has finished with the message when it returns, so a process that put data can always be
 * joined (Python's "joining processes that use queues" pitfall does not exist here). Waiting
 * spins briefly and then sleeps on a shared futex; when the other side is awake, neither put
 * nor get makes a system call.
 *
 * Capacity. A queue holds at most `capacity` messages, and its large messages share `max_bytes`
 * of arena. A put that finds no room waits (back-pressure) until a get makes some, or until its
 * timeout.
 *
 * Dead processes. A process killed at any point inside a put or a get (SIGKILL included) never
 * wedges the queue: a slot left half-written or half-read by a process that no longer exists is
 * recovered by the next process that needs it, so at most the one message that the dead process
 * had in flight is lost. tdm_queue_stats() counts lost messages and recoveries. Processes are
 * told apart by pid and start time, so a reused pid is never taken for the dead process.
 *
 * Shutdown (Python has no counterpart; Go's close(ch) is the model). After tdm_queue_shutdown(),
 * puts fail with -EPIPE; getters receive what is left and then TDM_EEOF.
 *
 * Thread safety. Every function may be called from any thread of any process on the same queue
 * at once, except that closing a handle while another thread of the process uses it is a bug.
 * Fork: a fork child may go on using its copy of the handle; handles are process-local (pass
 * the name or the descriptor, never the handle, to a process that did not fork from this one).
 */
#ifndef TANDEM_QUEUE_H
#define TANDEM_QUEUE_H

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_queue tdm_queue;

/* Flags for tdm_queue_options.flags. */
#define TDM_QUEUE_JOINABLE 0x1u /* count unfinished tasks: tdm_queue_task_done(), _join() */

/* Options for tdm_queue_open(); NULL means all defaults. */
typedef struct tdm_queue_options {
  unsigned flags;         /* TDM_QUEUE_* above */
  size_t capacity;        /* messages the queue holds at most (Python's maxsize), rounded up
                             to a power of two; 0: 1024 */
  size_t max_message;     /* the longest message in bytes; 0: 1 MiB */
  size_t max_bytes;       /* arena bytes for messages too large for a slot, held at once; at
                             least max_message plus 64 bytes of overhead; 0: twice that.
                             The whole segment is reserved at open. */
  size_t slot_payload;    /* bytes a message may have to travel inside a slot (no arena); a
                             slot is this plus 32 bytes, rounded up to 64; 0: 96 */
  unsigned max_processes; /* processes that may use the queue at once; 0: 256, at most 4095 */
  const char *name;       /* NULL: an anonymous queue (a memfd); otherwise the name of its
                             segment, as tdm_shm_create() takes it; the opener owns it */
  unsigned mode;          /* permission bits of a named queue's segment; 0: 0600 */
} tdm_queue_options;

/*
 * Opens a new, empty queue in a segment of its own and returns its handle in *out. A named
 * queue's segment is owned by the calling process (removed when it closes the queue or dies;
 * see tdm_shm_create()). Thread-safe.
 * Returns 0; -EINVAL for unknown flags, a max_bytes below max_message plus 64, a
 * max_processes above 4095, sizes that overflow, or a bad name; -EEXIST; -ENOMEM; -ENOSPC;
 * -EMFILE; and the other errors of tdm_shm_create(). On failure nothing is left behind.
 */
TDM_API int tdm_queue_open(tdm_queue **out, const tdm_queue_options *opt);

/*
 * Attaches the named queue `name` (made by tdm_queue_open() in any process) without owning
 * it. Returns 0; -ENOENT; -EINVAL when the segment does not hold a queue (or one of another
 * layout version); -EUSERS when max_processes processes use the queue already; and the errors
 * of tdm_shm_attach().
 */
TDM_API int tdm_queue_attach(tdm_queue **out, const char *name);

/*
 * Attaches the queue behind the descriptor `fd` (tdm_queue_fd() in another process, passed in
 * tdm_process_options.pass_fds or over a connection). The descriptor is duplicated: the caller
 * keeps `fd`. Returns 0; -EBADF; -EINVAL as tdm_queue_attach(); -EUSERS; -ENOMEM; -EMFILE.
 */
TDM_API int tdm_queue_attach_fd(tdm_queue **out, int fd);

/*
 * Closes the handle: the calling process stops using the queue (messages in the queue stay
 * for the others) and, if it owns a named queue, its segment is removed (processes that have it
 * attached keep using it). Returns 0, or the error of tdm_shm_close(); NULL is a no-op.
 */
TDM_API int tdm_queue_close(tdm_queue *q);

/* The queue's segment descriptor, owned by the handle (pass it to tdm_queue_attach_fd()). */
TDM_API int tdm_queue_fd(const tdm_queue *q);

/* The name of a named queue's segment ("/name"), or NULL for an anonymous queue. */
TDM_API const char *tdm_queue_name(const tdm_queue *q);

/*
 * Puts a copy of the `len` bytes at `msg` at the end of the queue, waiting up to `timeout` for
 * room (TDM_FOREVER, or 0 not to wait). When it returns 0 the message is in the queue; the
 * caller keeps `msg`. Returns 0; -EMSGSIZE when len > max_message; -EPIPE after
 * tdm_queue_shutdown(); -ETIMEDOUT (also with a timeout of 0) when the queue stayed full; -EUSERS
 * when max_processes other processes use the queue already.
 */
TDM_API int tdm_queue_put(tdm_queue *q, const void *msg, size_t len, int64_t timeout);

/*
 * Takes the first message, waiting up to `timeout` for one, and returns it in *msg (allocated
 * with tandem's allocator: free it with tdm_free(); a 0-byte message is a valid pointer too)
 * and its length in *len. Returns 0; TDM_EEOF when the queue was shut down and is empty;
 * -ETIMEDOUT (also with a timeout of 0) when it stayed empty; -ENOMEM when the message cannot be
 * allocated (it stays in the queue); -EUSERS as tdm_queue_put().
 */
TDM_API int tdm_queue_get(tdm_queue *q, void **msg, size_t *len, int64_t timeout);

/*
 * Takes the first message into the caller's buffer `buf` of `cap` bytes, as tdm_queue_get()
 * does, and stores its length in *len. When the first message is longer than cap, returns
 * -EMSGSIZE with its length in *len and leaves it in the queue (another getter may take it
 * before the caller tries again with a larger buffer). Other results as tdm_queue_get().
 */
TDM_API int tdm_queue_recv(tdm_queue *q, void *buf, size_t cap, size_t *len, int64_t timeout);

/*
 * Shuts the queue down for every process: puts fail with -EPIPE from now on, and getters get
 * the messages still in it and then TDM_EEOF. Waiting putters and getters wake up. A put that
 * returned 0 before is never lost. Shutting down twice is harmless. Returns 0.
 */
TDM_API int tdm_queue_shutdown(tdm_queue *q);

/*
 * The number of messages in the queue (Python's qsize()): put and not yet taken. With other
 * threads or processes at work it is out of date as soon as it returns.
 */
TDM_API size_t tdm_queue_size(tdm_queue *q);

/* True when the queue holds no message (same caveat as tdm_queue_size()). */
TDM_API bool tdm_queue_empty(tdm_queue *q);

/* True when the queue holds `capacity` messages (a put would wait for room). */
TDM_API bool tdm_queue_full(tdm_queue *q);

/* The capacity in messages (after rounding) and the longest message, as opened. */
TDM_API size_t tdm_queue_capacity(const tdm_queue *q);
TDM_API size_t tdm_queue_max_message(const tdm_queue *q);

/*
 * True when a get would not wait: a message is there, or the queue was shut down and drained
 * (a get would return TDM_EEOF). tdm_conn_wait() uses it.
 */
TDM_API bool tdm_queue_ready(tdm_queue *q);

/*
 * Waits up to `timeout` until tdm_queue_ready() would be true, without taking anything.
 * Returns 0; -ETIMEDOUT (also with a timeout of 0).
 */
TDM_API int tdm_queue_wait_ready(tdm_queue *q, int64_t timeout);

/*
 * JoinableQueue: marks one message taken with get or recv as processed (Python's task_done()).
 * Returns 0; TDM_EOVERRELEASE when it was called more times than messages were put; -EINVAL
 * for a queue opened without TDM_QUEUE_JOINABLE.
 */
TDM_API int tdm_queue_task_done(tdm_queue *q);

/*
 * JoinableQueue: waits up to `timeout` until every message put has been marked done with
 * tdm_queue_task_done() (or was lost with a process that died holding it). Returns 0;
 * -ETIMEDOUT (also with a timeout of 0); -EINVAL without TDM_QUEUE_JOINABLE.
 */
TDM_API int tdm_queue_join(tdm_queue *q, int64_t timeout);

/*
 * JoinableQueue: messages put and not yet marked done (0 for other queues).
 */
TDM_API size_t tdm_queue_unfinished(tdm_queue *q);

/* Counters of a queue, shared by every process that uses it. */
typedef struct tdm_queue_stats {
  uint64_t puts;       /* messages put */
  uint64_t gets;       /* messages taken */
  uint64_t lost;       /* messages lost with a process that died inside put or get */
  uint64_t recoveries; /* slots recovered from dead processes (each lost message is one) */
  uint64_t bytes;      /* arena bytes held now by large messages and the puts filling them */
} tdm_queue_stats;

/*
 * Recovers now what processes that died while using the queue left behind: slots they held
 * half-written or half-read, arena blocks they were filling, and their places in the process
 * table. Waiters do the same on their own after they have waited about 10 ms, so a queue in
 * use never needs this call; it is for a caller that wants the counters below to be final (or
 * the arena empty) at a given moment. Returns the number of dead processes recovered from, or
 * -ENOTSUP as tdm_lock_acquire() (a thread without a usable robust list).
 */
TDM_API int tdm_queue_recover(tdm_queue *q);

/* Fills *out with the queue's counters. */
TDM_API void tdm_queue_stats_get(tdm_queue *q, tdm_queue_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_QUEUE_H */
