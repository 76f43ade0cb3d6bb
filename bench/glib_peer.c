/*
 * glib_peer.c: GLib's thread pool (GThreadPool), a peer of the pool workloads (pool_peers.h).
 *
 * A GThreadPool runs one function on each pointer pushed to it and gives no futures and no
 * results, so a program that needs to know when its work is done counts it: every job here
 * carries a `group`, a counter of jobs left with a mutex and a condition variable; the job that
 * takes the counter to zero signals, and the caller waits on the condition. That is the fair
 * way to wait for a batch while keeping the pool, as tandem's pool is kept; the other way,
 * g_thread_pool_free(pool, FALSE, TRUE), waits for the queue to drain and then ends and joins
 * every thread, so it would add a pool's teardown to every batch.
 *
 * The map pushes chunks of items (n / (4 x threads) each, CPython's Pool.map rule), the
 * CPU-bound workload one job per task, submit-and-wait one job per empty task (the same
 * pointer, pushed n times). Those pools are exclusive (their threads start when the pool is
 * made and stay), made at the first run (the harness's untimed warm-up) and kept until the
 * workload is over. The wait workload makes an exclusive pool of 64 threads for each run and
 * frees it after, both outside the timed part, as tandem's pool is opened with 64 workers
 * outside it.
 *
 * Built when CMake finds glib-2.0 (TDM_BENCH_HAVE_GLIB); otherwise every function returns
 * -ENOTSUP and bench_glib_missing says why.
 */
#include <errno.h>
#include <stdlib.h>

#include "pool_peers.h"

#ifdef TDM_BENCH_HAVE_GLIB

#include <glib.h>

const char *const bench_glib_missing = NULL;

/* Jobs left in a batch, and the caller's wait for them. */
typedef struct group {
  gint left;
  gboolean done;
  GMutex mu;
  GCond cv;
} group;

static void group_init(group *g, size_t jobs) {
  g->left = (gint)jobs;
  g->done = FALSE;
  g_mutex_init(&g->mu);
  g_cond_init(&g->cv);
}

static void group_job_done(group *g) {
  if (!g_atomic_int_dec_and_test(&g->left)) return;
  g_mutex_lock(&g->mu);
  g->done = TRUE;
  g_cond_signal(&g->cv);
  g_mutex_unlock(&g->mu);
}

static void group_wait(group *g) {
  g_mutex_lock(&g->mu);
  while (!g->done)
    g_cond_wait(&g->cv, &g->mu);
  g_mutex_unlock(&g->mu);
  g_mutex_clear(&g->mu);
  g_cond_clear(&g->cv);
}

enum job_kind { JOB_EMPTY, JOB_MAP, JOB_CPU, JOB_WAIT };

typedef struct job {
  enum job_kind kind;
  group *g;
  const int64_t *in; /* JOB_MAP: the chunk */
  int64_t *out;
  size_t n;
  uint64_t count; /* JOB_CPU */
  uint64_t *sum;
} job;

static void run_job(gpointer data, gpointer user) {
  job *j = data;
  (void)user;
  switch (j->kind) {
  case JOB_MAP:
    for (size_t i = 0; i < j->n; i++)
      j->out[i] = bench_map_item(j->in[i]);
    break;
  case JOB_CPU:
    *j->sum = bench_sum_to(j->count);
    break;
  case JOB_WAIT:
    bench_wait_50ms();
    break;
  case JOB_EMPTY:
    break;
  }
  group_job_done(j->g);
}

static GThreadPool *kept;
static unsigned kept_threads;

static GThreadPool *pool_new(unsigned threads) {
  GError *err = NULL;
  GThreadPool *p = g_thread_pool_new(run_job, NULL, (gint)threads, TRUE, &err);
  if (p == NULL) g_clear_error(&err);
  return p;
}

static int kept_pool(unsigned threads, GThreadPool **out) {
  if (kept != NULL && kept_threads != threads) bench_glib_release();
  if (kept == NULL) {
    kept = pool_new(threads);
    if (kept == NULL) return -EAGAIN;
    kept_threads = threads;
  }
  *out = kept;
  return 0;
}

void bench_glib_release(void) {
  if (kept != NULL) g_thread_pool_free(kept, FALSE, TRUE);
  kept = NULL;
}

/* Pushes jobs[0..n-1] (or the same job n times, with `same`). On a failed push, the jobs not
 * pushed are counted as done so that the wait still ends; returns -EAGAIN then. */
static int push_all(GThreadPool *p, group *g, job *jobs, size_t n, bool same) {
  for (size_t i = 0; i < n; i++) {
    if (!g_thread_pool_push(p, same ? jobs : &jobs[i], NULL)) {
      for (size_t k = i; k < n; k++)
        group_job_done(g);
      return -EAGAIN;
    }
  }
  return 0;
}

int bench_glib_map(const int64_t *in, int64_t *out, size_t n, size_t chunk, unsigned threads,
                   int64_t *elapsed) {
  GThreadPool *p;
  int r = kept_pool(threads, &p);
  if (r != 0) return r;
  if (chunk == 0) chunk = 1;
  size_t chunks = (n + chunk - 1) / chunk;
  job *jobs = calloc(chunks ? chunks : 1, sizeof *jobs);
  if (jobs == NULL) return -ENOMEM;
  group g;
  int64_t t0 = tdm_clock_now();
  group_init(&g, chunks);
  for (size_t c = 0; c < chunks; c++) {
    size_t first = c * chunk;
    jobs[c] = (job){ .kind = JOB_MAP,
                     .g = &g,
                     .in = in + first,
                     .out = out + first,
                     .n = n - first < chunk ? n - first : chunk };
  }
  r = push_all(p, &g, jobs, chunks, false);
  if (chunks > 0) group_wait(&g);
  *elapsed = tdm_clock_now() - t0;
  free(jobs);
  return r;
}

int bench_glib_cpu(uint64_t *sums, size_t tasks, uint64_t count, unsigned threads,
                   int64_t *elapsed) {
  GThreadPool *p;
  int r = kept_pool(threads, &p);
  if (r != 0) return r;
  job *jobs = calloc(tasks ? tasks : 1, sizeof *jobs);
  if (jobs == NULL) return -ENOMEM;
  group g;
  int64_t t0 = tdm_clock_now();
  group_init(&g, tasks);
  for (size_t i = 0; i < tasks; i++)
    jobs[i] = (job){ .kind = JOB_CPU, .g = &g, .count = count, .sum = &sums[i] };
  r = push_all(p, &g, jobs, tasks, false);
  if (tasks > 0) group_wait(&g);
  *elapsed = tdm_clock_now() - t0;
  free(jobs);
  return r;
}

int bench_glib_wait(int64_t batches, int64_t *elapsed) {
  GThreadPool *p = pool_new(BENCH_WAITERS);
  if (p == NULL) return -EAGAIN;
  g_usleep(20000); /* its threads are started: let them reach their first wait */
  job jobs[BENCH_WAITERS];
  int r = 0;
  int64_t t0 = tdm_clock_now();
  for (int64_t b = 0; b < batches && r == 0; b++) {
    group g;
    group_init(&g, BENCH_WAITERS);
    for (int i = 0; i < BENCH_WAITERS; i++)
      jobs[i] = (job){ .kind = JOB_WAIT, .g = &g };
    r = push_all(p, &g, jobs, BENCH_WAITERS, false);
    group_wait(&g);
  }
  *elapsed = tdm_clock_now() - t0;
  g_thread_pool_free(p, FALSE, TRUE);
  return r;
}

int bench_glib_submit(size_t n, unsigned threads, int64_t *elapsed) {
  GThreadPool *p;
  int r = kept_pool(threads, &p);
  if (r != 0) return r;
  group g;
  job empty = { .kind = JOB_EMPTY, .g = &g };
  int64_t t0 = tdm_clock_now();
  group_init(&g, n);
  r = push_all(p, &g, &empty, n, true);
  if (n > 0) group_wait(&g);
  *elapsed = tdm_clock_now() - t0;
  return r;
}

#else /* !TDM_BENCH_HAVE_GLIB */

#ifndef TDM_BENCH_GLIB_MISSING
#define TDM_BENCH_GLIB_MISSING "not built: glib-2.0 not found by pkg-config"
#endif

const char *const bench_glib_missing = TDM_BENCH_GLIB_MISSING;

int bench_glib_map(const int64_t *in, int64_t *out, size_t n, size_t chunk, unsigned threads,
                   int64_t *elapsed) {
  (void)in, (void)out, (void)n, (void)chunk, (void)threads, (void)elapsed;
  return -ENOTSUP;
}

int bench_glib_cpu(uint64_t *sums, size_t tasks, uint64_t count, unsigned threads,
                   int64_t *elapsed) {
  (void)sums, (void)tasks, (void)count, (void)threads, (void)elapsed;
  return -ENOTSUP;
}

int bench_glib_wait(int64_t batches, int64_t *elapsed) {
  (void)batches, (void)elapsed;
  return -ENOTSUP;
}

int bench_glib_submit(size_t n, unsigned threads, int64_t *elapsed) {
  (void)n, (void)threads, (void)elapsed;
  return -ENOTSUP;
}

void bench_glib_release(void) {}

#endif
