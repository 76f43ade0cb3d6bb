/*
 * cluster/cluster.h (private to libtandem-mpi): what the two halves of the cluster backend
 * share. rank.c starts MPI before main() on every rank, checks that the ranks run one build,
 * and runs the worker ranks' loop; dispatch.c is the backend table that rank 0's pools use.
 *
 * Messages (on a duplicate of MPI_COMM_WORLD, MPI_BYTE, one message per unit). Every message
 * starts with a fixed struct declared here; what follows it is bytes whose sizes that struct
 * gives. Workers only talk to rank 0.
 *
 *   0 -> worker  OPEN   struct tdm__cl_open, the initializer's object path, the finalizer's,
 *                       the initializer's argument
 *   worker -> 0  READY  struct tdm__cl_ready
 *   0 -> worker  TASK   struct tdm__cl_unit, the function's object path, the argument
 *   0 -> worker  CHUNK  struct tdm__cl_unit, the item function's object path, the map's
 *                       argument, n x in_size input bytes
 *   worker -> 0  RESULT struct tdm__cl_result, then a task's result bytes, or a chunk's
 *                       n x out_size output bytes and n_failed struct tdm__cl_failure
 *   0 -> worker  CLOSE  (empty) run the finalizer, close the rank's own pool
 *   worker -> 0  CLOSED (empty)
 *   0 -> worker  EXIT   (empty) rank 0 is ending: finalize MPI and exit
 *
 * Rank 0 never blocks in MPI while a pool is open (it sends with MPI_Isend and polls), so a
 * worker may send its result with a blocking MPI_Send whatever its size.
 */
#ifndef TDM_CLUSTER_CLUSTER_H
#define TDM_CLUSTER_CLUSTER_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "pool/spi.h"

enum {
  TDM__CL_OPEN = 1,
  TDM__CL_READY,
  TDM__CL_TASK,
  TDM__CL_CHUNK,
  TDM__CL_RESULT,
  TDM__CL_CLOSE,
  TDM__CL_CLOSED,
  TDM__CL_EXIT
};

/* Units (tasks and chunks) in flight per rank at most: the one it runs and the next, waiting in
 * MPI's queue, so that the rank does not wait for rank 0 between two units. No more: a unit
 * sent cannot be taken back, and one stuck behind a long task would wait for it (Python's
 * ProcessPoolExecutor queues one call more than it has workers, for the same reason). A hybrid
 * rank gets this many more than its own workers. */
#define TDM__CL_WINDOW 2

/* The largest message: MPI counts are ints. */
#define TDM__CL_MAX_MSG ((size_t)1 << 30)

#define TDM__CL_OPEN_INIT 0x1u /* an initializer is named */
#define TDM__CL_OPEN_FINI 0x2u /* a finalizer is named */

struct tdm__cl_open {
  uint32_t flags;
  uint32_t init_len, fini_len;
  uint32_t rank_workers; /* 0: run units in the rank's process; n: a pool of its own */
  uint64_t init_off, fini_off;
  uint64_t init_size;
  uint64_t max_result;
  /* The rank's own pool (rank_workers > 0). */
  uint32_t rank_backend, start;
  uint32_t retries;
  uint32_t break_on_worker_death;
  int64_t task_timeout;
  uint64_t max_tasks_per_worker;
};

struct tdm__cl_ready {
  int32_t code; /* 0; the initializer's return value (inline); the rank's pool open error */
  int32_t pid;
};

struct tdm__cl_unit {
  uint64_t id;
  uint64_t fn_off;
  uint32_t obj_len;
  uint32_t pad_;
  uint64_t arg_size;             /* TASK: its argument; CHUNK: the map's argument */
  uint64_t n, in_size, out_size; /* CHUNK */
  int64_t timeout;               /* TASK, for a hybrid rank's pool: ns, or TDM_FOREVER */
};

#define TDM__CL_RES_ERROR 0x1u /* not run as asked: code and status are the future's */

struct tdm__cl_result {
  uint64_t id;
  int32_t code; /* TASK: the function's return value, or (RES_ERROR) the failure's code */
  int32_t status;
  uint32_t flags;
  uint32_t pad_;
  uint64_t size;     /* TASK: result bytes that follow */
  uint64_t n_failed; /* CHUNK: struct tdm__cl_failure entries after the outputs */
  uint64_t wall_ns, cpu_ns;
  /* A hybrid rank: its own pool's counts so far (rank 0 adds what is new to the pool's). */
  uint64_t lost, replaced, retried;
};

/* A chunk's item whose outcome is not 0. */
struct tdm__cl_failure {
  uint32_t index; /* in the chunk */
  int32_t rc;
};

/* ---- The job (rank.c) ------------------------------------------------------------------------ */

struct tdm__cl_job {
  int rank, size; /* -1 and 1 when the program was not started by mpirun */
  int status;     /* tdm_cluster_status() */
  MPI_Comm comm;
  const struct tdm__pool_spi *spi;
  char **hosts; /* rank 0: each rank's host */
  int32_t *pids;
  pid_t pid; /* the process that started MPI (a fork child must not end it) */
};

extern struct tdm__cl_job tdm__cl;

/* The backend table (dispatch.c) and, for rank 0's exit, what stops an open pool. */
extern const struct tdm__backend tdm__backend_cluster;
void tdm__cl_dispatch_atexit(void);

/* Waiting for a message: polls with sched_yield() for TDM__CL_SPIN_NS after the last one (a
 * reply is usually on its way, and the yield leaves the core to any rank that wants it), then
 * sleeps, 20 us doubling to 1 ms, so that an idle rank costs nothing. */
#define TDM__CL_SPIN_NS 1000000
struct tdm__cl_backoff {
  int64_t since; /* when the wait began; 0: not waiting */
  int64_t sleep_ns;
};
void tdm__cl_idle(struct tdm__cl_backoff *b);

/* Receives the next message from `source` (MPI_ANY_SOURCE for any) into *buf (grown with
 * realloc as needed, *cap its size), waiting with tdm__cl_idle().
 * Gives the tag and source. 0, or -EIO when MPI fails. A message too large to allocate room for
 * ends the job (MPI_Abort, after a line on stderr): a matched message cannot be left. */
int tdm__cl_recv(int source, void **buf, size_t *cap, int *len, int *tag, int *from);

/* Polls once: like tdm__cl_recv() but returns -EAGAIN at once when nothing is there. */
int tdm__cl_try_recv(int source, void **buf, size_t *cap, int *len, int *tag, int *from);

/* For the reports that signal handlers write (async-signal-safe): append a string, or an
 * unsigned decimal, at buf[at], writing no further than buf[cap - 1]; return the new end. */
size_t tdm__cl_put(char *buf, size_t at, size_t cap, const char *s);
size_t tdm__cl_put_u(char *buf, size_t at, size_t cap, uint64_t v);

#endif /* TDM_CLUSTER_CLUSTER_H */
