/*
 * pipeline: a producer/consumer pipeline between processes over two queues. The parent feeds
 * numbers into a task queue; worker processes take them, compute, and put results into a
 * result queue; the parent collects the results. Shutting the task queue down tells every
 * worker that the work is over; a JoinableQueue tells the parent when every task was handled.
 *
 * The Python it re-creates:
 *
 *   import multiprocessing as mp
 *
 *   def worker(tasks, results):
 *       while (n := tasks.get()) is not None:
 *           results.put((n, sum(i * i for i in range(n))))
 *           tasks.task_done()
 *       tasks.task_done()
 *
 *   tasks, results = mp.JoinableQueue(), mp.Queue()
 *   workers = [mp.Process(target=worker, args=(tasks, results)) for _ in range(3)]
 *   for w in workers: w.start()
 *   for n in range(1, 101): tasks.put(n)
 *   tasks.join()                             # every task handled
 *   for _ in workers: tasks.put(None)        # one poison pill per worker
 *   total = sum(results.get()[1] for _ in range(100))
 *   for w in workers: w.join()
 *
 * Here tdm_queue_shutdown() replaces the poison pills: each worker's get returns TDM_EEOF once
 * the queue is empty.
 */
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "tandem.h"

#define WORKERS 3
#define TASKS   100

struct queues {
  tdm_queue *tasks, *results;
};

struct result {
  uint32_t n;
  uint32_t worker;
  uint64_t sum_of_squares;
};

static int worker(void *arg, size_t size) {
  (void)size;
  struct queues *qs = arg; /* fork children: the parent's handles are valid here */
  uint32_t n;
  size_t len;
  int r;
  while ((r = tdm_queue_recv(qs->tasks, &n, sizeof n, &len, TDM_FOREVER)) == 0) {
    struct result res = { n, (uint32_t)getpid(), 0 };
    for (uint64_t i = 0; i < n; i++)
      res.sum_of_squares += i * i;
    if (tdm_queue_put(qs->results, &res, sizeof res, TDM_FOREVER) != 0) return 1;
    if (tdm_queue_task_done(qs->tasks) != 0) return 1;
  }
  return r == TDM_EEOF ? 0 : 1; /* the end of the task queue is the normal way out */
}

static int fail(const char *what, int r) {
  fprintf(stderr, "pipeline: %s: %s\n", what, tdm_strerror(r));
  return 1;
}

int main(void) {
  struct queues qs;
  tdm_queue_options task_opts = { .flags = TDM_QUEUE_JOINABLE, .capacity = 16 };
  tdm_queue_options result_opts = { .capacity = 16, .max_message = sizeof(struct result) };
  int r = tdm_queue_open(&qs.tasks, &task_opts);
  if (r == 0) r = tdm_queue_open(&qs.results, &result_opts);
  if (r != 0) return fail("open", r);

  tdm_process *w[WORKERS];
  tdm_process_options o = { .start = TDM_START_FORK };
  for (int i = 0; i < WORKERS; i++)
    if ((r = tdm_process_start(&w[i], worker, &qs, sizeof qs, &o)) != 0) return fail("start", r);

  /* Feed and collect at once: both queues hold 16, so feeding everything first could fill
   * the result queue while the workers wait to put, and the parent waits to put a task. */
  uint64_t total = 0;
  uint32_t fed = 0, got = 0, per_worker[WORKERS] = { 0 };
  while (got < TASKS) {
    if (fed < TASKS) {
      uint32_t n = fed + 1;
      r = tdm_queue_put(qs.tasks, &n, sizeof n, 0);
      if (r == 0)
        fed++;
      else if (r != -ETIMEDOUT)
        return fail("put", r);
    }
    struct result res;
    size_t len;
    r = tdm_queue_recv(qs.results, &res, sizeof res, &len, fed < TASKS ? 0 : TDM_S(10));
    if (r == 0) {
      got++;
      total += res.sum_of_squares;
      for (int i = 0; i < WORKERS; i++)
        if (tdm_process_pid(w[i]) == (pid_t)res.worker) per_worker[i]++;
    } else if (r != -ETIMEDOUT) {
      return fail("recv", r);
    }
  }
  if ((r = tdm_queue_join(qs.tasks, TDM_S(10))) != 0) return fail("join", r);
  printf("  %u tasks done by %d worker processes (%u, %u and %u of them), total %" PRIu64 "\n", got,
         WORKERS, per_worker[0], per_worker[1], per_worker[2], total);

  tdm_queue_shutdown(qs.tasks); /* no poison pills: every worker's get ends with TDM_EEOF */
  for (int i = 0; i < WORKERS; i++) {
    int code = -1;
    r = tdm_process_join(w[i], TDM_S(10));
    if (r == 0) r = tdm_process_exitcode(w[i], &code);
    if (r != 0 || code != 0) return fail("worker", r ? r : -ECHILD);
    tdm_process_close(w[i]);
  }
  uint64_t expect = 0; /* sum over n of sum_{i<n} i^2 */
  for (uint64_t n = 1; n <= TASKS; n++)
    for (uint64_t i = 0; i < n; i++)
      expect += i * i;
  printf("  expected %" PRIu64 ": %s\n", expect, total == expect ? "match" : "MISMATCH");
  tdm_queue_close(qs.results);
  tdm_queue_close(qs.tasks);
  return total == expect ? 0 : 1;
}
