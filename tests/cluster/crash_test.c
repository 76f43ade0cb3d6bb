/*
 * crash_test.c: a task that crashes its rank ends the whole job (Open MPI cannot survive a
 * rank's death), and the output says what happened. Run with 3 ranks by
 * tests/cluster/crash.sh, which checks that the job ends with a failure status, that the dying
 * rank named the task it ran, and that rank 0 listed what the ranks were running.
 *
 * Rank 0 submits the crashing task first, then tasks that sleep (so that other ranks are busy
 * when the job ends), and waits for the crashing one: it never ends, the job does.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tandem.h"
#include "tandem/cluster.h"

static int task_crash(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  (void)arg;
  (void)size;
  raise(SIGSEGV);
  return 1;
}

static int task_sleep(tdm_task *t, const void *arg, size_t size) {
  (void)t;
  (void)arg;
  (void)size;
  struct timespec ts = { 30, 0 };
  nanosleep(&ts, NULL);
  return 0;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (tdm_cluster_status() != 0 || tdm_cluster_size() != 3) {
    fprintf(stderr, "crash_test: needs mpirun -np 3 (status %s, size %d)\n",
            tdm_err_name(tdm_cluster_status()), tdm_cluster_size());
    return 2;
  }
  tdm_pool_options o;
  memset(&o, 0, sizeof o);
  o.backend = TDM_POOL_CLUSTER;
  tdm_pool *p = NULL;
  int rc = tdm_pool_open(&p, &o);
  if (rc != 0) {
    fprintf(stderr, "crash_test: tdm_pool_open: %s\n", tdm_strerror(rc));
    return 2;
  }
  tdm_future *crash = NULL, *sleepers[4] = { NULL };
  if (tdm_pool_submit(p, task_crash, NULL, 0, NULL, &crash) != 0) return 2;
  for (int i = 0; i < 4; i++)
    if (tdm_pool_submit(p, task_sleep, NULL, 0, NULL, &sleepers[i]) != 0) return 2;
  printf("crash_test: submitted; waiting for the job to end\n");
  rc = tdm_future_wait(crash, TDM_FOREVER);
  tdm_task_error e;
  tdm_future_error(crash, &e);
  /* Not reached when the job ends as it should. */
  fprintf(stderr, "crash_test: the crashing task ended (%s, status %d) and the job goes on\n",
          tdm_err_name(e.code), e.status);
  return 3;
}
