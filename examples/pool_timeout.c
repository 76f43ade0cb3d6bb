/*
 * pool_timeout: per-task timeouts. On a pool of processes a task that hangs is stopped at its
 * timeout by killing its worker, which the pool replaces; the other tasks finish. On a pool of
 * threads a task cannot be killed: at its timeout it is asked to stop, and must look.
 *
 * Python has no per-task timeout: `future.result(timeout=1)` and `AsyncResult.get(timeout=1)`
 * only stop *waiting*; the task goes on holding its worker for ever, and
 * `shutdown(wait=True)`, `Pool.join()` or the end of the program waits for it:
 *
 *   import time
 *   from concurrent.futures import ProcessPoolExecutor, TimeoutError
 *
 *   def task(n):
 *       if n == 2: time.sleep(10**9)      # hangs
 *       return n * n
 *
 *   with ProcessPoolExecutor(2) as ex:
 *       fs = [ex.submit(task, n) for n in range(6)]
 *       try: fs[2].result(timeout=0.5)
 *       except TimeoutError: print("gave up waiting; the task still runs")
 *   # ...and leaving the `with` block waits for it for ever
 *
 * A timeout counts from the moment the task starts running, not from its submission: tasks
 * that wait their turn in the queue are not penalised.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"

enum { HANG = 2, SLOW = 4, N = 6 };

/* Task n returns n * n; task HANG never returns; task SLOW takes 800 ms. */
static int task(tdm_task *t, const void *arg, size_t size) {
  int n;
  if (size != sizeof n) return 1;
  memcpy(&n, arg, sizeof n);
  if (n == HANG)
    for (;;)
      pause(); /* a deadlock, an endless loop, a read from a peer that never answers... */
  if (n == SLOW) tdm_clock_sleep(TDM_MS(800));
  int square = n * n;
  return tdm_task_set_result(t, &square, sizeof square);
}

static int processes(void) {
  /* Every task of this pool gets 500 ms unless it asks for something else. */
  tdm_pool_options opt = { .backend = TDM_POOL_PROCESSES,
                           .workers = 2,
                           .task_timeout = TDM_MS(500) };
  tdm_pool *pool;
  int rc = tdm_pool_open(&pool, &opt);
  if (rc != 0) {
    fprintf(stderr, "pool_timeout: open: %s\n", tdm_strerror(rc));
    return 1;
  }
  tdm_future *f[N];
  for (int n = 0; n < N; n++) {
    /* The slow task is known to need more: it gets a timeout of its own. */
    tdm_task_options slow = { .timeout = TDM_S(10) };
    rc = tdm_pool_submit(pool, task, &n, sizeof n, n == SLOW ? &slow : NULL, &f[n]);
    if (rc != 0) {
      fprintf(stderr, "pool_timeout: submit: %s\n", tdm_strerror(rc));
      return 1;
    }
  }
  int right = 0;
  for (int n = 0; n < N; n++) {
    const void *data;
    int square = -1;
    rc = tdm_future_result(f[n], TDM_FOREVER, &data, NULL);
    if (rc == 0) {
      memcpy(&square, data, sizeof square);
      printf("task %d: %d\n", n, square);
      right += n != HANG && square == n * n;
    } else {
      printf("task %d: %s (%s)\n", n, tdm_err_name(rc), tdm_strerror(rc));
      right += n == HANG && rc == TDM_ETASKTIMEOUT;
    }
    tdm_future_free(f[n]);
  }
  /* The hung task's worker was killed and replaced: the pool is whole. */
  tdm_pool_shutdown(pool, true, false);
  tdm_pool_stats s;
  tdm_pool_stats_get(pool, &s);
  printf("processes: %llu done, %llu timed out\n", (unsigned long long)s.done,
         (unsigned long long)s.timed_out);
  tdm_pool_close(pool);
  return right == N && s.done == N - 1 && s.timed_out == 1 ? 0 : 1;
}

static atomic_bool stopped; /* threads share the caller's memory: main() can look */

/* A long task written for threads: it polls tdm_task_cancelled() and returns when asked. */
static int polite(tdm_task *t, const void *arg, size_t size) {
  (void)arg;
  (void)size;
  while (!tdm_task_cancelled(t))
    tdm_clock_sleep(TDM_MS(1)); /* a slice of the work */
  atomic_store(&stopped, true);
  return 0; /* too late: the result of a task past its timeout is dropped */
}

static int threads(void) {
  tdm_pool_options opt = { .backend = TDM_POOL_THREADS, .workers = 2, .task_timeout = TDM_MS(200) };
  tdm_pool *pool;
  int rc = tdm_pool_open(&pool, &opt);
  if (rc != 0) {
    fprintf(stderr, "pool_timeout: open: %s\n", tdm_strerror(rc));
    return 1;
  }
  tdm_future *f;
  rc = tdm_pool_submit(pool, polite, NULL, 0, NULL, &f);
  if (rc != 0) {
    fprintf(stderr, "pool_timeout: submit: %s\n", tdm_strerror(rc));
    return 1;
  }
  rc = tdm_future_result(f, TDM_FOREVER, NULL, NULL);
  printf("thread task: %s (%s)\n", tdm_err_name(rc), tdm_strerror(rc));
  tdm_future_free(f);
  tdm_pool_close(pool); /* every worker thread has returned */
  printf("the thread saw tdm_task_cancelled() and returned: %s\n",
         atomic_load(&stopped) ? "yes" : "no");
  return rc == TDM_ETASKTIMEOUT && atomic_load(&stopped) ? 0 : 1;
}

int main(void) {
  int failed = processes();
  failed |= threads();
  return failed;
}
