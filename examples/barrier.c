/*
 * barrier: four processes run three rounds separated by a shared barrier, whose action (run by
 * the last process to arrive, before the others go on) totals the round. A semaphore lets at
 * most two of them do the "slow step" at once; an event starts them all together.
 *
 * The Python it corresponds to (module multiprocessing):
 *
 *   go, slots, barrier = Event(), BoundedSemaphore(2), Barrier(4, action=total_round)
 *   def work(i):
 *       go.wait()
 *       for r in range(3):
 *           with slots: time.sleep(0.02)       # the slow step, two at a time
 *           results[i] = (i + 1) * (r + 1)
 *           barrier.wait()                     # the last to arrive runs total_round()
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tandem.h"

enum { NPROCS = 4, ROUNDS = 3, SLOTS = 2 };

struct shared { /* one MAP_SHARED mapping, inherited by every child */
  tdm_barrier barrier;
  tdm_sem slots;
  tdm_event go;
  atomic_int in_slow, max_in_slow;
  int round;            /* advanced by the barrier action */
  long results[NPROCS]; /* each process's result for the current round */
  long totals[ROUNDS];
};

static int me; /* this process's index, set in each child after fork */

/* The barrier action: runs in the last process to arrive, while the others still wait. */
static int total_round(void *arg) {
  struct shared *s = arg;
  for (int i = 0; i < NPROCS; i++)
    s->totals[s->round] += s->results[i];
  printf("round %d: process %d arrived last, total %ld\n", s->round + 1, me, s->totals[s->round]);
  fflush(stdout); /* children leave through _exit(), which does not flush */
  s->round++;
  return 0;
}

static int slow_step(struct shared *s) {
  int rc = tdm_sem_acquire(&s->slots, TDM_S(10));
  if (rc < 0) return rc;
  int now = atomic_fetch_add(&s->in_slow, 1) + 1, max = atomic_load(&s->max_in_slow);
  while (now > max && !atomic_compare_exchange_weak(&s->max_in_slow, &max, now)) {
  }
  rc = tdm_clock_sleep(TDM_MS(20));
  atomic_fetch_sub(&s->in_slow, 1);
  int released = tdm_sem_release(&s->slots, 1);
  return rc < 0 ? rc : released;
}

static int child(struct shared *s) {
  int rc = tdm_event_wait(&s->go, TDM_S(10)); /* finite waits: no child outlives a failure */
  for (int r = 0; rc >= 0 && r < ROUNDS; r++) {
    rc = slow_step(s);
    s->results[me] = (long)(me + 1) * (r + 1);
    if (rc >= 0) rc = tdm_barrier_wait_action(&s->barrier, total_round, s, TDM_S(10));
  }
  if (rc < 0) fprintf(stderr, "process %d: %s\n", me, tdm_strerror(rc));
  return rc < 0;
}

int main(void) {
  struct shared *s =
      mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int rc = s == MAP_FAILED ? -errno : tdm_barrier_init(&s->barrier, NPROCS, TDM_SYNC_SHARED);
  if (rc == 0) rc = tdm_sem_init(&s->slots, SLOTS, SLOTS, TDM_SYNC_SHARED); /* bounded */
  if (rc == 0) rc = tdm_event_init(&s->go, TDM_SYNC_SHARED);
  if (rc != 0) {
    fprintf(stderr, "setup: %s\n", tdm_strerror(rc));
    return 1;
  }
  int children = 0, failed = 0;
  for (; children < NPROCS; children++) {
    pid_t pid = fork();
    if (pid == 0) {
      me = children;
      _exit(child(s));
    }
    if (pid < 0) {
      perror("fork");
      tdm_barrier_abort(&s->barrier); /* the children started so far get TDM_EBROKEN and end */
      failed = 1;
      break;
    }
  }
  printf("%d processes started, %d rounds; go!\n", children, ROUNDS);
  fflush(stdout);
  tdm_event_set(&s->go);
  for (; children > 0; children--) {
    int status;
    if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
  }
  for (int r = 0; r < ROUNDS; r++) /* round r's total is (r + 1) * (1 + 2 + ... + NPROCS) */
    failed |= s->totals[r] != (long)(r + 1) * NPROCS * (NPROCS + 1) / 2;
  int max = atomic_load(&s->max_in_slow);
  printf("at most %d processes were in the slow step at once (limit %d); totals %s\n", max, SLOTS,
         failed ? "WRONG" : "ok");
  tdm_event_fini(&s->go);
  tdm_sem_fini(&s->slots);
  tdm_barrier_fini(&s->barrier);
  return failed || max > SLOTS;
}
