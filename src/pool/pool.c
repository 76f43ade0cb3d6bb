/*
 * pool.c: the pool's front end. It checks every call, resolves the options, makes futures,
 * keeps the counters, and hands the work to the backend's table (pool.h), which alone knows
 * whether workers are threads or processes.
 *
 * Closing against submitting. A submit that has checked `closed` must finish handing its task
 * to the backend before the backend is told to shut down, or the task could land in a queue
 * nobody drains any more. So every call that hands work over counts itself in `entering` while
 * it does, and shutdown sets `closed` and then waits for `entering` to drain (a few
 * instructions' worth) before it calls the backend. Both sides are sequentially consistent:
 * either the submit sees `closed`, or shutdown sees it entering.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool/pool.h"
#include "pool/spi.h"
#include "process/process.h"
#include "tandem/process.h"

#define POOL_MAGIC TDM__MAGIC('p', 'o', 'o', 'l')

/* The most workers a pool may have (a process pool's results queue serves at most 4095
 * processes: its workers and the parent). */
#define MAX_WORKERS 4094u

/* processes: the default largest argument or result. */
#define DEFAULT_MAX_RESULT ((size_t)64 << 20)

int64_t tdm__thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void tdm__pool_break(tdm_pool *p, int code, int status) {
  /* The first break wins, code and status together; `broken` follows, so whoever sees it
   * also sees the status. */
  uint64_t none = 0, why = (uint64_t)(uint32_t)code | (uint64_t)(uint32_t)status << 32;
  if (atomic_compare_exchange_strong(&p->broken_why, &none, why)) atomic_store(&p->broken, code);
}

int tdm__pool_broken_status(tdm_pool *p) {
  return (int)(uint32_t)(atomic_load(&p->broken_why) >> 32);
}

/* The cluster backend, once libtandem-mpi has registered it. */
static const struct tdm__backend *_Atomic cluster_backend;

static int register_cluster(const struct tdm__backend *be) {
  if (be != NULL && (be->open == NULL || be->submit == NULL || be->map == NULL)) return -EINVAL;
  atomic_store(&cluster_backend, be);
  return 0;
}

const struct tdm__pool_spi *tdm__pool_spi(unsigned version) {
  static const struct tdm__pool_spi spi = {
    .version = TDM__POOL_SPI_VERSION,
    .size = sizeof spi,
    .register_cluster = register_cluster,
    .future_start = tdm__future_start,
    .future_finish = tdm__future_finish,
    .future_cancel_pending = tdm__future_cancel_pending,
    .future_unref = tdm__future_unref,
    .fn_locate = tdm__fn_locate,
    .fn_resolve = tdm__fn_resolve,
    .alloc = tdm__alloc,
    .calloc = tdm__calloc,
    .free = tdm__free,
    .thread_cpu_ns = tdm__thread_cpu_ns,
  };
  return version == TDM__POOL_SPI_VERSION ? &spi : NULL;
}

const char *tdm_pool_backend_name(tdm_pool_backend b) {
  switch (b) {
  case TDM_POOL_THREADS:
    return "threads";
  case TDM_POOL_PROCESSES:
    return "processes";
  case TDM_POOL_AUTO:
    return "auto";
  case TDM_POOL_CLUSTER:
    return "cluster";
  }
  return NULL;
}

tdm_pool_backend tdm_pool_backend_get(const tdm_pool *p) {
  return p->opt.backend;
}

static bool valid_timeout(int64_t t) {
  return t >= 0 || t == TDM_FOREVER;
}

static int64_t resolve_timeout(int64_t t) {
  return t == 0 || t < 0 ? TDM_FOREVER : t;
}

static void pool_free(tdm_pool *p) {
  tdm__free(p->init_copy);
  tdm__free(p->name_copy);
  p->magic = 0;
  tdm__free(p);
}

int tdm_pool_open(tdm_pool **out, const tdm_pool_options *opt) {
  static const tdm_pool_options defaults;
  if (opt == NULL) opt = &defaults;
  if (out == NULL || tdm_pool_backend_name(opt->backend) == NULL ||
      tdm_start_method_name(opt->start) == NULL || opt->workers > MAX_WORKERS ||
      !valid_timeout(opt->task_timeout) || (opt->init_arg == NULL && opt->init_size > 0) ||
      (opt->name != NULL && (opt->name[0] == '\0' || strlen(opt->name) > 200)))
    return -EINVAL;
  if (opt->backend == TDM_POOL_PROCESSES && tdm_process_is_daemon()) return TDM_EDAEMON;
  const struct tdm__backend *cluster = atomic_load(&cluster_backend);
  if (opt->backend == TDM_POOL_CLUSTER) {
    if (cluster == NULL) return TDM_ECLUSTER;
    if (opt->rank_workers > 0 &&
        (opt->rank_backend == TDM_POOL_CLUSTER || tdm_pool_backend_name(opt->rank_backend) == NULL))
      return -EINVAL;
  }

  tdm_pool *p = tdm__calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->magic = POOL_MAGIC;
  p->opt = *opt;
  unsigned cpus = (unsigned)tdm_cpu_count();
  if (p->opt.workers == 0) {
    switch (opt->backend) {
    case TDM_POOL_PROCESSES:
      p->opt.workers = cpus;
      break;
    case TDM_POOL_THREADS:
      p->opt.workers = cpus + 4 < 32 ? cpus + 4 : 32;
      break;
    case TDM_POOL_AUTO:
      p->opt.workers = 8 * cpus > 64 ? 8 * cpus : 64;
      break;
    case TDM_POOL_CLUSTER:
      break; /* the backend counts the ranks */
    }
    if (p->opt.workers > MAX_WORKERS) p->opt.workers = MAX_WORKERS;
  }
  p->opt.task_timeout = resolve_timeout(opt->task_timeout);
  if (p->opt.max_result == 0) p->opt.max_result = DEFAULT_MAX_RESULT;
  p->name_copy = tdm__strdup(opt->name != NULL ? opt->name : "PoolWorker");
  if (opt->init_size > 0 && (p->init_copy = tdm__alloc(opt->init_size)) != NULL)
    memcpy(p->init_copy, opt->init_arg, opt->init_size);
  if (p->name_copy == NULL || (opt->init_size > 0 && p->init_copy == NULL)) {
    pool_free(p);
    return -ENOMEM;
  }
  p->opt.name = p->name_copy;
  p->opt.init_arg = p->init_copy;
  p->opened_ns = tdm_clock_now();
  p->be = opt->backend == TDM_POOL_PROCESSES ? &tdm__backend_processes
          : opt->backend == TDM_POOL_CLUSTER ? cluster
                                             : &tdm__backend_threads;
  int r = p->be->open(p);
  if (r != 0) {
    pool_free(p);
    return r;
  }
  *out = p;
  return 0;
}

/* ---- Handing work over ----------------------------------------------------------------------- */

/* Counts the caller in `entering`; 0, or the code that refuses new work. */
static int enter(tdm_pool *p) {
  atomic_fetch_add(&p->entering, 1);
  int r = atomic_load(&p->closed) ? -EPIPE : atomic_load(&p->broken);
  if (r != 0) atomic_fetch_sub(&p->entering, 1);
  return r;
}

static void leave(tdm_pool *p) {
  atomic_fetch_sub(&p->entering, 1);
}

/* Refuses new work and waits out the callers still handing some over. */
static void close_door(tdm_pool *p) {
  atomic_store(&p->closed, true);
  while (atomic_load(&p->entering) > 0)
    sched_yield();
}

int tdm__pool_submit_internal(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size,
                              int64_t timeout, bool internal, tdm_future **out) {
  if (tdm__pool_remote(p) && size > p->opt.max_result) return -EMSGSIZE;
  int r = enter(p);
  if (r != 0) return r;
  struct tdm_future *f = tdm__future_new(p, fn, arg, size, timeout);
  if (f == NULL) {
    leave(p);
    return -ENOMEM;
  }
  f->internal = internal;
  if (!internal) atomic_fetch_add_explicit(&p->c.submitted, 1, memory_order_relaxed);
  r = p->be->submit(p, f);
  leave(p);
  if (r != 0) {
    tdm__future_finish(f, TDM_FUTURE_FAILED, r, 0, NULL, 0);
    tdm__future_unref(f);
    tdm__future_unref(f);
    return r;
  }
  *out = f;
  return 0;
}

int tdm_pool_submit(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size,
                    const tdm_task_options *opt, tdm_future **out) {
  if (p == NULL || fn == NULL || out == NULL || (arg == NULL && size > 0)) return -EINVAL;
  int64_t timeout = p->opt.task_timeout;
  if (opt != NULL && opt->timeout != 0) {
    if (!valid_timeout(opt->timeout)) return -EINVAL;
    timeout = opt->timeout;
  }
  return tdm__pool_submit_internal(p, fn, arg, size, timeout, false, out);
}

/* n items of `size` bytes at `a`: false when a is NULL with bytes to hold, or n x size
 * overflows. */
static bool valid_array(const void *a, size_t size, size_t n) {
  size_t total;
  return !(a == NULL && size > 0 && n > 0) && !__builtin_mul_overflow(n, size, &total);
}

int tdm__map_check(tdm_map_fn fn, const void *in, size_t in_size, size_t n,
                   const tdm_map_options *opt) {
  if (fn == NULL || !valid_array(in, in_size, n)) return -EINVAL;
  if (opt != NULL && opt->arg == NULL && opt->arg_size > 0) return -EINVAL;
  return 0;
}

int tdm_pool_map(tdm_pool *p, tdm_map_fn fn, const void *in, size_t in_size, void *out,
                 size_t out_size, size_t n, const tdm_map_options *opt) {
  static const tdm_map_options defaults;
  if (opt == NULL) opt = &defaults;
  if (p == NULL) return -EINVAL;
  int r = tdm__map_check(fn, in, in_size, n, opt);
  if (r != 0) return r;
  if (!valid_array(out, out_size, n)) return -EINVAL;
  if (tdm__pool_remote(p) && opt->arg_size > p->opt.max_result) return -EMSGSIZE;
  if ((r = enter(p)) != 0) return r;
  struct tdm__map m = { .fn = fn,
                        .arg = opt->arg,
                        .arg_size = opt->arg_size,
                        .in = in,
                        .in_size = in_size,
                        .out = out,
                        .out_size = out_size,
                        .n = n,
                        .chunk = opt->chunk,
                        .errors = opt->errors };
  atomic_init(&m.failed, 0);
  r = n > 0 ? p->be->map(p, &m) : 0;
  leave(p);
  if (r != 0) return r;
  return atomic_load(&m.failed) > 0 ? TDM_ETASK : 0;
}

/* ---- Ending ---------------------------------------------------------------------------------- */

int tdm_pool_shutdown(tdm_pool *p, bool wait, bool cancel_pending) {
  close_door(p);
  p->be->shutdown(p, wait, cancel_pending);
  return 0;
}

int tdm_pool_terminate(tdm_pool *p) {
  /* Ask first, without waiting: a map in progress counts in `entering` until it ends, and the
   * request is what makes it end now. */
  atomic_store(&p->closed, true);
  p->be->interrupt(p);
  close_door(p);
  p->be->terminate(p);
  return 0;
}

int tdm_pool_interrupt(tdm_pool *p) {
  /* Async-signal-safe: a lock-free store and the backend's own signal-safe poke. The door is
   * shut properly by the terminate that the supervisor then runs. */
  atomic_store(&p->closed, true);
  p->be->interrupt(p);
  return 0;
}

int tdm_pool_close(tdm_pool *p) {
  if (p == NULL) return 0;
  TDM__REQUIRE(p->magic == POOL_MAGIC, "tdm_pool_close: not an open pool");
  tdm_pool_shutdown(p, true, false);
  p->be->close(p);
  pool_free(p);
  return 0;
}

/* ---- Information ----------------------------------------------------------------------------- */

void tdm_pool_stats_get(tdm_pool *p, tdm_pool_stats *s) {
  const struct tdm__pool_counters *c = &p->c;
  memset(s, 0, sizeof *s);
  s->submitted = atomic_load(&c->submitted);
  s->done = atomic_load(&c->done);
  s->failed = atomic_load(&c->failed);
  s->cancelled = atomic_load(&c->cancelled);
  s->retried = atomic_load(&c->retried);
  s->timed_out = atomic_load(&c->timed_out);
  s->items = atomic_load(&c->items);
  s->workers_started = atomic_load(&c->workers_started);
  s->workers_replaced = atomic_load(&c->workers_replaced);
  s->workers_lost = atomic_load(&c->workers_lost);
  s->busy_ns = atomic_load(&c->busy_ns);
  s->cpu_ns = atomic_load(&c->cpu_ns);
  s->workers = (unsigned)p->be->worker_stats(p, NULL, 0);
  s->uptime_ns = tdm_clock_now() - p->opened_ns;
}

size_t tdm_pool_worker_stats_get(tdm_pool *p, tdm_pool_worker_stats *out, size_t cap) {
  return p->be->worker_stats(p, out, out != NULL ? cap : 0);
}

bool tdm__pool_fixed_cpu_bound(tdm_pool *p, unsigned *target) {
  if (target != NULL) *target = p->opt.workers;
  uint64_t busy = atomic_load(&p->c.busy_ns), cpu = atomic_load(&p->c.cpu_ns);
  return busy > 0 && 2 * cpu >= busy;
}

bool tdm_pool_cpu_bound(tdm_pool *p, unsigned *target) {
  return p->be->cpu_bound != NULL ? p->be->cpu_bound(p, target)
                                  : tdm__pool_fixed_cpu_bound(p, target);
}
