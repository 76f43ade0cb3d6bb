/*
 * pool_work.c: the pool workloads' work, one copy for the tandem command (pool_bench.c,
 * cluster_suite.c) and for tandem-cluster-bench (cluster_bench.c), which is linked apart
 * because it links libtandem-mpi.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool_peers.h"

__attribute__((noinline)) uint64_t bench_sum_to(uint64_t n) {
  volatile uint64_t s = 0; /* volatile: the compiler must not turn the loop into a formula */
  for (uint64_t i = 0; i < n; i++)
    s += i;
  return s;
}

int bench_map_item_fn(const void *in, void *out, const void *arg) {
  (void)arg;
  int64_t x;
  memcpy(&x, in, sizeof x);
  x = bench_map_item(x);
  memcpy(out, &x, sizeof x);
  return 0;
}

int bench_cpu_task(tdm_task *task, const void *arg, size_t size) {
  uint64_t n;
  if (size != sizeof n) return 1;
  memcpy(&n, arg, sizeof n);
  uint64_t s = bench_sum_to(n);
  return tdm_task_set_result(task, &s, sizeof s);
}

int bench_map_arrays(size_t n, int64_t **in, int64_t **out) {
  if (*in != NULL) return 0;
  *in = malloc(n * sizeof **in);
  *out = malloc(n * sizeof **out);
  if (*in == NULL || *out == NULL) {
    bench_map_arrays_free(in, out);
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++)
    (*in)[i] = (int64_t)i;
  return 0;
}

void bench_map_arrays_free(int64_t **in, int64_t **out) {
  free(*in);
  free(*out);
  *in = *out = NULL;
}

int bench_submit_and_wait(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size, size_t tasks,
                          tdm_future **fs, uint64_t *results, const char **what) {
  size_t submitted = 0;
  int r = 0;
  for (; submitted < tasks; submitted++) {
    if ((r = tdm_pool_submit(p, fn, arg, size, NULL, &fs[submitted])) != 0) {
      *what = "tdm_pool_submit";
      break;
    }
  }
  for (size_t i = 0; i < submitted; i++) {
    const void *data;
    size_t len;
    int e = tdm_future_result(fs[i], TDM_FOREVER, &data, &len);
    if (e == 0 && results != NULL) {
      if (len == sizeof *results)
        memcpy(&results[i], data, sizeof *results);
      else
        e = -EPROTO;
    }
    if (e != 0 && r == 0) {
      r = e;
      *what = "a task's outcome (tdm_future_result)";
    }
    tdm_future_free(fs[i]);
  }
  return r;
}
