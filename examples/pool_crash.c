/*
 * pool_crash: a pool of processes that survives its tasks. Some tasks segfault, abort or call
 * _exit() in the middle of their work; each of those fails alone, with the way its worker
 * died, the pool replaces the worker, and every other task succeeds.
 *
 * The Python it improves on:
 *
 *   import ctypes, os
 *   from multiprocessing import Pool
 *   from concurrent.futures import ProcessPoolExecutor
 *
 *   def task(n):
 *       if n == 1: ctypes.string_at(0)         # a segfault
 *       if n == 3: os.abort()
 *       return n * n
 *
 *   with Pool(2) as p:
 *       r = p.apply_async(task, (1,))
 *       r.get()          # waits for ever: Pool replaces the dead worker but loses the task
 *                        # (gh-66587)
 *   with ProcessPoolExecutor(2) as ex:
 *       fs = [ex.submit(task, n) for n in range(8)]
 *       [f.exception() for f in fs]   # BrokenProcessPool for every task not yet finished:
 *                                     # one crash breaks the whole executor
 *
 * A tandem process worker records which task it runs, so when it dies the pool knows which
 * task was lost, fails that task alone (TDM_EWORKER, with the signal or the exit status in
 * tdm_task_error.status), starts a new worker and goes on. (Set
 * tdm_pool_options.break_on_worker_death to get ProcessPoolExecutor's behaviour instead, or
 * retries to run a lost task again.) On a pool of threads none of this is possible: a thread
 * that segfaults takes the whole program down, which is what processes are for.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1 /* the sanitizer's own SIGSEGV handler reports the fault and exits */
#else
#define SANITIZED 0
#endif

enum what { WORK, SEGFAULT, ABORT, EXIT, FAIL };

struct job {
  int n;
  enum what what;
};

static int *volatile nowhere; /* NULL; volatile, so the compiler cannot drop the bad write */

/* Runs in a worker process on its own copy of the job. */
static int task(tdm_task *t, const void *arg, size_t size) {
  struct job j;
  if (size != sizeof j) return 1;
  memcpy(&j, arg, sizeof j);
  switch (j.what) {
  case SEGFAULT:
    *nowhere = j.n; /* SIGSEGV: the worker dies */
    break;
  case ABORT:
    abort(); /* SIGABRT, as a failed assert() would */
  case EXIT:
    _exit(3); /* a library that gives up and ends the process */
  case FAIL:
    return 2; /* a failure the task reports itself: TDM_ETASK, status 2; the worker lives */
  case WORK:
    break;
  }
  long square = (long)j.n * j.n;
  return tdm_task_set_result(t, &square, sizeof square);
}

/* What tdm_future_result() says about one task, as a line of text. Returns 1 when it matches
 * what the task was meant to do. */
static int report(int i, const struct job *j, tdm_future *f) {
  const void *data;
  size_t size;
  int rc = tdm_future_result(f, TDM_FOREVER, &data, &size);
  if (rc == 0) {
    long square;
    memcpy(&square, data, sizeof square); /* the bytes belong to the future */
    printf("task %d: %ld\n", i, square);
    return j->what == WORK && size == sizeof square && square == (long)j->n * j->n;
  }
  tdm_task_error e;
  tdm_future_error(f, &e);
  if (e.code == TDM_EWORKER && e.status < 0) /* -N: the worker was killed by signal N */
    printf("task %d: failed: its worker was killed by signal %d (%s)\n", i, -e.status,
           strsignal(-e.status));
  else if (e.code == TDM_EWORKER)
    printf("task %d: failed: its worker exited with status %d\n", i, e.status);
  else if (e.code == TDM_ETASK)
    printf("task %d: failed: the task returned %d\n", i, e.status);
  else
    printf("task %d: failed: %s\n", i, tdm_strerror(e.code));
  switch (j->what) {
  case SEGFAULT:
    return e.code == TDM_EWORKER && (e.status == -SIGSEGV || (SANITIZED && e.status > 0));
  case ABORT:
    return e.code == TDM_EWORKER && e.status == -SIGABRT;
  case EXIT:
    return e.code == TDM_EWORKER && e.status == 3;
  case FAIL:
    return e.code == TDM_ETASK && e.status == 2;
  case WORK:
    break;
  }
  return 0;
}

int main(void) {
  enum { N = 8 };
  const struct job jobs[N] = {
    { 0, WORK }, { 1, SEGFAULT }, { 2, WORK }, { 3, ABORT },
    { 4, WORK }, { 5, EXIT },     { 6, WORK }, { 7, FAIL },
  };
  /* retries = 0: a task whose worker dies fails at once (the default). */
  tdm_pool_options opt = { .backend = TDM_POOL_PROCESSES, .workers = 2, .retries = 0 };
  tdm_pool *pool;
  int rc = tdm_pool_open(&pool, &opt);
  if (rc != 0) {
    fprintf(stderr, "pool_crash: open: %s\n", tdm_strerror(rc));
    return 1;
  }

  tdm_future *f[N];
  for (int i = 0; i < N; i++) {
    rc = tdm_pool_submit(pool, task, &jobs[i], sizeof jobs[i], NULL, &f[i]);
    if (rc != 0) {
      fprintf(stderr, "pool_crash: submit: %s\n", tdm_strerror(rc));
      return 1; /* the pool's workers are daemons: they die with this process */
    }
  }

  /* Results in submission order, so the output does not depend on which task ends first. */
  int right = 0, succeeded = 0;
  for (int i = 0; i < N; i++) {
    right += report(i, &jobs[i], f[i]);
    succeeded += tdm_future_state_get(f[i]) == TDM_FUTURE_DONE;
    tdm_future_free(f[i]);
  }

  /* The pool goes on with new workers in place of the three that died. */
  const struct job after = { 10, WORK };
  tdm_future *g;
  rc = tdm_pool_submit(pool, task, &after, sizeof after, NULL, &g);
  if (rc != 0) {
    fprintf(stderr, "pool_crash: submit: %s\n", tdm_strerror(rc));
    return 1;
  }
  printf("after the crashes, ");
  right += report(N, &after, g);
  tdm_future_free(g);
  tdm_pool_close(pool);

  printf("%d of %d tasks succeeded; the other %d failed alone\n", succeeded, N, N - succeeded);
  return right == N + 1 && succeeded == 4 ? 0 : 1;
}
