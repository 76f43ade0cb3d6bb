/*
 * quickstart: four processes add to one counter in shared memory, under one shared lock.
 *
 * The Python it re-creates:
 *
 *   from multiprocessing import Process, Lock, Value
 *
 *   def work(lock, counter):
 *       for _ in range(100_000):
 *           with lock:
 *               counter.value += 1
 *
 *   lock, counter = Lock(), Value("l", 0, lock=False)
 *   procs = [Process(target=work, args=(lock, counter)) for _ in range(4)]
 *   for p in procs: p.start()
 *   for p in procs: p.join()
 *   print(counter.value)  # 400000
 */
#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tandem.h"

enum { NPROCS = 4, NINCS = 100000 };

struct shared {
  tdm_lock lock; /* a tandem lock works between processes when it lives in shared memory */
  long counter;
};

static int work(struct shared *s) {
  for (int i = 0; i < NINCS; i++) {
    int rc = tdm_lock_acquire(&s->lock, TDM_FOREVER);
    if (rc != 0) {
      fprintf(stderr, "tdm_lock_acquire: %s\n", tdm_strerror(rc));
      return 1;
    }
    s->counter++;
    tdm_lock_release(&s->lock);
  }
  return 0;
}

int main(void) {
  struct shared *s =
      mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int rc = s == MAP_FAILED ? -errno : tdm_lock_init(&s->lock, TDM_SYNC_SHARED);
  if (rc != 0) {
    fprintf(stderr, "setup: %s\n", tdm_strerror(rc)); /* also describes -errno values */
    return 1;
  }
  int children = 0, failed = 0;
  for (; children < NPROCS; children++) {
    pid_t pid = fork();
    if (pid == 0) _exit(work(s)); /* the child counts, then leaves */
    if (pid < 0) {
      perror("fork");
      failed = 1;
      break;
    }
  }
  while (children-- > 0) { /* reap every child that was started */
    int status;
    if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed = 1;
  }
  printf("%d processes x %d increments: counter = %ld\n", NPROCS, NINCS, s->counter);
  return failed || s->counter != (long)NPROCS * NINCS;
}
