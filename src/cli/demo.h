/*
 * demo.h: the parts of `tandem demo`: the workloads and the way each method runs them
 * (demo_run.c), the experiments that are not a race between methods (demo_more.c), and the
 * report (demo.c).
 *
 * A speed experiment is a batch of tasks of one kind, run by each method in turn:
 * sequentially in the calling thread, on a thread per task, on a thread per task under the GIL
 * model, on a process per task, and on the automatic pool. Every run is timed from before the
 * workers start to after they are gone, as a user's program would pay for them, and every
 * task's result is checked against the value it must have.
 */
#ifndef TDM_CLI_DEMO_H
#define TDM_CLI_DEMO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tandem.h"

typedef enum demo_method {
  M_SEQ,
  M_THREADS,
  M_GIL,
  M_PROCS,
  M_AUTO,
  M_COUNT,
  M_DEFAULT_PROCS = M_COUNT, /* not a column: a process pool of the default size (claims) */
} demo_method;

/* "sequential", "threads", ... as the table shows them. */
const char *demo_method_name(demo_method m);

typedef enum demo_kind {
  K_SLEEP, /* wait `ns` */
  K_FILE,  /* read the file `path` and sum its bytes */
  K_HTTP,  /* GET `bytes` bytes from the loopback server, which answers after `ns` */
  K_SUM,   /* the sum of 0..n-1, computed */
  K_BURN,  /* compute until the thread has used `ns` of CPU time */
} demo_kind;

/* One task: what it does and with what. Copied to workers, so it holds no pointers. */
typedef struct demo_task {
  demo_kind kind;
  bool gil;       /* hold the GIL model's lock while running, as a CPython thread would */
  uint32_t index; /* its place in the batch; the HTTP body and the file depend on it */
  int64_t ns;
  uint64_t n;
  uint64_t bytes;
  uint16_t port;
  char path[200];
} demo_task;

/* The value a task of this kind and index returns when it ran right. */
uint64_t demo_expected(const demo_task *t);

/* The byte at offset `off` of the body of file or download `index`. */
static inline uint8_t demo_byte(uint32_t index, uint64_t off) {
  return (uint8_t)(index * 131u + off * 7u + (off >> 12));
}

/* One method's measurement of a batch. */
typedef struct demo_result {
  int error;             /* 0, or why it failed (a tandem or errno code) */
  char what[96];         /* the call or check that failed */
  int runs;              /* timed runs that succeeded; wall_s is their median */
  double wall_s;         /* seconds, from before the workers start to after they are gone */
  double cpu_s;          /* CPU seconds of the process and its reaped children in that run */
  bool auto_cpu;         /* M_AUTO: its verdict, CPU-bound */
  unsigned auto_n;       /* M_AUTO: the workers it aimed for */
  uint64_t gil_switches; /* M_GIL: how often the GIL changed hands */
} demo_result;

/* The GIL model's lock, shared by the threads of one run (initialised by demo_run_init()). */
extern tdm_gil demo_gil;

/* Sets up what the runs need (the GIL). Returns 0 or a negative code. */
int demo_run_init(void);
void demo_run_fini(void);

/*
 * Runs the batch tasks[0..n-1] once with method `m` and fills *r. Each task's value must be
 * expected[i] (demo_expected()), or the run fails with -EPROTO. First `before` (if not NULL)
 * is called, outside the timing (dropping the files from the page cache). Returns 0, or the
 * first error (also in r->error).
 */
int demo_run(demo_method m, const demo_task *tasks, const uint64_t *expected, size_t n,
             void (*before)(void), demo_result *r);

/* ---- The loopback HTTP server and the files ------------------------------------------------ */

/*
 * Starts the HTTP server in a daemon child process listening on 127.0.0.1 (port in *port).
 * Each GET /<index>?bytes=B&delay_ms=D is answered after D ms with B bytes of body
 * demo_byte(index, 0..B-1), then the connection is closed. Returns 0 or a negative code.
 */
int demo_http_start(uint16_t *port);

/* Stops the server, if it runs. */
void demo_http_stop(void);

/*
 * Creates n files of `bytes` bytes each (file i holds demo_byte(i, ...)) in a new directory
 * under $TMPDIR, else /var/tmp, else /tmp, flushed to the disk. Their paths are written to
 * tasks[i].path. Returns 0 or a negative errno.
 */
int demo_files_create(demo_task *tasks, size_t n, uint64_t bytes);

/* Drops the files from the page cache, so that the next reads go to the disk. */
void demo_files_drop(void);

/* The share of the files' pages still cached after demo_files_drop(), 0..1; -1 if unknown. */
double demo_files_cached(void);

/* The directory of the files ("" before they exist). */
const char *demo_files_dir(void);

/* Removes the files and their directory (async-signal-safe: also called from a handler). */
void demo_files_remove(void);

/* ---- The experiments that are not races (demo_more.c) -------------------------------------- */

typedef struct demo_memory_row {
  const char *how;   /* "a thread appends to a global array" */
  const char *model; /* "threads", "processes", ... */
  long seen;         /* items the parent saw afterwards; -1 when not run */
  long appended;     /* items the worker appended */
  int error;
  const char *note; /* why it was not run */
} demo_memory_row;

enum { DEMO_MEMORY_ROWS = 5 };

/* Runs the memory experiment: `items` appends per worker. Returns 0 or the first error. */
int demo_memory(long items, demo_memory_row rows[DEMO_MEMORY_ROWS]);

typedef struct demo_ipc {
  char hello[96];      /* what the child's message said */
  double hello_us;     /* one way, put in the child to get in the parent: the median */
  double queue_rtt_us; /* round trip through two queues: the median */
  double pipe_rtt_us;  /* round trip through a duplex pipe: the median */
  int rounds;
  int error;
  char what[96];
} demo_ipc;

/* Runs the IPC experiment with `rounds` round trips each. Returns 0 or the first error. */
int demo_ipc_run(int rounds, demo_ipc *out);

/* The claim "four threads that each sleep S take 4 S because of the GIL". */
typedef struct demo_claims {
  double seconds;        /* S, the length of a task */
  double gil_sleep_s;    /* measured: four GIL-model threads that each sleep S */
  int cpus;              /* tdm_cpu_count() */
  unsigned pool_workers; /* a default process pool's workers */
  double pool_sleep_s;   /* measured: four S-second sleeps on a default process pool */
  double pool_cpu_s;     /* measured: four S-second computations on it */
  double predict_sleep_s, predict_cpu_s;
  int error;
  char what[96];
} demo_claims;

/* Measures what the claims need (claim 2 uses the CPU experiment). */
int demo_claims_run(double seconds, demo_claims *out);

/* Copies a child's or a task's argument bytes into `out` when there are exactly `want` of them
 * (they are copied rather than cast: nothing promises their alignment). */
static inline bool demo_unpack(void *out, size_t want, const void *arg, size_t size) {
  if (size != want) return false;
  memcpy(out, arg, want);
  return true;
}

/* Monotonic seconds. */
double demo_now(void);

/*
 * Records the first failure of a measurement: when *error is 0 and `rc` is not, stores `rc` in
 * *error and `text` in what[0..cap-1] (cut to fit). Returns rc.
 */
int demo_failed(int *error, char *what, size_t cap, int rc, const char *text);

#endif /* TDM_CLI_DEMO_H */
