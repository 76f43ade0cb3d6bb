/*
 * gil: the classic GIL experiment, measured in C. CPU-bound work (the sum of i for i < N, in
 * four parts) runs in one thread, then on four threads, then on four threads that hold one
 * tdm_gil and pass its check-point in their loop, as CPython's threads do; last, four threads
 * that each wait 100 ms with tdm_gil_sleep(), which releases the GIL while it waits.
 *
 * The Python it corresponds to (the experiment as usually run on CPython):
 *
 *   def count(lo, hi):
 *       s = 0
 *       for i in range(lo, hi): s += i
 *   parts = [(k * N // 4, (k + 1) * N // 4) for k in range(4)]
 *   for p in parts: count(*p)                          # then: one Thread per part
 *   threads = [Thread(target=time.sleep, args=(0.1,)) for _ in range(4)]
 *
 * It prints what it measures; what the numbers show depends on the machine.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tandem.h"

#define N        UINT64_C(200000000)
#define NTHREADS 4

struct job {
  uint64_t lo, hi, sum;
  tdm_gil *gil; /* NULL: run without a GIL */
};

static void check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s\n", what, tdm_strerror(rc));
    exit(1);
  }
}

static void count(void *arg) {
  struct job *j = arg;
  if (j->gil != NULL) tdm_gil_acquire(j->gil);
  volatile uint64_t s = 0; /* volatile: the compiler must not turn the loop into a formula */
  for (uint64_t i = j->lo; i < j->hi; i++) {
    s += i;
    /* CPython checks for a drop request between bytecodes; once per 1024 additions here. */
    if (j->gil != NULL && (i & 1023) == 0) tdm_gil_checkpoint(j->gil);
  }
  j->sum = s;
  if (j->gil != NULL) tdm_gil_release(j->gil);
}

static void wait_100ms(void *arg) {
  struct job *j = arg;
  tdm_gil_acquire(j->gil);
  check(tdm_gil_sleep(j->gil, TDM_MS(100)),
        "tdm_gil_sleep"); /* releases the GIL, as time.sleep() */
  tdm_gil_release(j->gil);
}

/* Runs fn on the four jobs, on four threads or one after another; returns the wall time (s). */
static double run(const char *label, tdm_thread_fn fn, struct job *jobs, bool threads) {
  int64_t t0 = tdm_clock_now(), cpu0 = tdm_clock_process_cpu();
  tdm_thread *t[NTHREADS];
  for (int k = 0; k < NTHREADS; k++) {
    if (threads)
      check(tdm_thread_start(&t[k], fn, &jobs[k], NULL), "tdm_thread_start");
    else
      fn(&jobs[k]);
  }
  for (int k = 0; threads && k < NTHREADS; k++)
    check(tdm_thread_join(t[k], TDM_FOREVER), "tdm_thread_join");
  double wall = (double)(tdm_clock_now() - t0) / 1e9;
  double cpu = (double)(tdm_clock_process_cpu() - cpu0) / 1e9;
  printf("  %-28s %6.2f s wall  %6.2f s CPU", label, wall, cpu);
  uint64_t sum = 0;
  for (int k = 0; k < NTHREADS; k++)
    sum += jobs[k].sum;
  if (fn == count && sum != N * (N - 1) / 2) {
    fprintf(stderr, "wrong sum: %llu\n", (unsigned long long)sum);
    exit(1);
  }
  return wall;
}

int main(void) {
  tdm_gil gil;
  check(tdm_gil_init(&gil, 0), "tdm_gil_init");
  struct job plain[NTHREADS], locked[NTHREADS];
  for (int k = 0; k < NTHREADS; k++) {
    plain[k] = (struct job){ .lo = k * N / NTHREADS, .hi = (k + 1) * N / NTHREADS };
    locked[k] = plain[k];
    locked[k].gil = &gil;
  }
  int cpus = tdm_cpu_count();
  printf("sum of i for i < %llu in %d parts; %d usable CPU(s):\n", (unsigned long long)N, NTHREADS,
         cpus);
  double seq = run("sequential, one thread", count, plain, false);
  printf("\n");
  double par = run("4 threads", count, plain, true);
  printf("  speedup %.2fx on %d usable CPU(s)\n", seq / par, cpus);
  double gil_wall = run("4 threads holding one GIL", count, locked, true);
  printf("  speedup %.2fx on %d usable CPU(s)\n", seq / gil_wall, cpus);
  printf("  the GIL changed hands %llu times, %llu of them forced (switch interval %.0f ms)\n",
         (unsigned long long)tdm_gil_switches(&gil),
         (unsigned long long)tdm_gil_forced_switches(&gil), (double)tdm_gil_interval(&gil) / 1e6);
  printf("4 threads holding one GIL, each waiting 100 ms in tdm_gil_sleep():\n");
  double waited = run("4 x 100 ms of waiting", wait_100ms, locked, true);
  printf("  %.1fx shorter than 4 waits in a row\n", 0.4 / waited);
  tdm_gil_fini(&gil);
  return 0;
}
