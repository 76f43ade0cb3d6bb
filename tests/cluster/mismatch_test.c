/*
 * mismatch_test.c: a job whose ranks run different builds. This file is built twice, the
 * second time with TDM_VARIANT=1, which adds a function: the two programs differ, and so do
 * their build-ids. Run as `mpirun -np 1 A : -np 2 B` (tests/cluster/expect.sh checks the
 * output): rank 0 (A) finds that ranks 1 and 2 run another build, so tdm_cluster_status() and
 * every cluster pool fail with TDM_EMISMATCH, rank 0 says which rank differs on stderr, and the
 * job still ends normally when rank 0 returns.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"
#include "tandem/cluster.h"

#ifndef TDM_VARIANT
#define TDM_VARIANT 0
#endif

#if TDM_VARIANT
/* Only in the variant: code that A does not have. Worker ranks never reach main(), but the
 * function is in the program all the same (and so is its effect on the build-id). */
int variant_only(int x);
int variant_only(int x) {
  return x * 31 + 7;
}
#endif

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

int main(int argc, char **argv) {
  (void)argc;
  (void)argv;
#if TDM_VARIANT
  /* In main() only if the variant were rank 0, which it must not be here. */
  fprintf(stderr, "mismatch_test: the variant runs main() on rank %d (%d)\n", tdm_cluster_rank(),
          variant_only(1));
  return 1;
#else
  CHECK(tdm_cluster_rank() == 0);
  CHECK(tdm_cluster_size() == 3);
  int st = tdm_cluster_status();
  if (st != TDM_EMISMATCH) {
    fprintf(stderr, "tdm_cluster_status() = %d (%s), expected TDM_EMISMATCH\n", st,
            tdm_err_name(st));
    return 1;
  }
  tdm_pool_options o;
  memset(&o, 0, sizeof o);
  o.backend = TDM_POOL_CLUSTER;
  tdm_pool *sentinel = (tdm_pool *)(uintptr_t)0x5a5a, *p = sentinel;
  int rc = tdm_pool_open(&p, &o);
  if (rc != TDM_EMISMATCH) {
    fprintf(stderr, "tdm_pool_open(cluster) = %d (%s), expected TDM_EMISMATCH\n", rc,
            tdm_err_name(rc));
    return 1;
  }
  CHECK(p == sentinel);
  o.rank_workers = 2;
  CHECK(tdm_pool_open(&p, &o) == TDM_EMISMATCH);
  /* Other backends are not concerned. */
  o.backend = TDM_POOL_THREADS;
  o.rank_workers = 0;
  o.workers = 2;
  CHECK(tdm_pool_open(&p, &o) == 0);
  CHECK(tdm_pool_close(p) == 0);
  printf("ok mismatch: %s\n", tdm_strerror(st));
  return 0;
#endif
}
