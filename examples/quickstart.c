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
 *
 * Run it as `quickstart fork`, `quickstart spawn` or `quickstart forkserver` to pick the start
 * method: the children attach the segment by name, so the same code works with each.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"

enum { NPROCS = 4, NINCS = 100000 };

struct shared {
  tdm_lock lock; /* a tandem lock works between processes when it lives in shared memory */
  long counter;
};

/* Runs in each child: the argument is the segment's name. */
static int work(void *name, size_t size) {
  (void)size;
  tdm_shm *seg;
  int rc = tdm_shm_attach(&seg, name, sizeof(struct shared), NULL);
  if (rc != 0) {
    fprintf(stderr, "tdm_shm_attach: %s\n", tdm_strerror(rc));
    return 1;
  }
  struct shared *s = tdm_shm_addr(seg);
  for (int i = 0; i < NINCS && rc == 0; i++) {
    rc = tdm_lock_acquire(&s->lock, TDM_FOREVER); /* 0, or -EOWNERDEAD after a crash */
    if (rc != 0) {
      fprintf(stderr, "tdm_lock_acquire: %s\n", tdm_strerror(rc));
      break;
    }
    s->counter++;
    tdm_lock_release(&s->lock);
  }
  tdm_shm_close(seg);
  return rc != 0;
}

int main(int argc, char **argv) {
  tdm_start_method method = TDM_START_DEFAULT;
  for (int m = TDM_START_FORK; argc > 1 && m <= TDM_START_FORKSERVER; m++)
    if (strcmp(argv[1], tdm_start_method_name((tdm_start_method)m)) == 0)
      method = (tdm_start_method)m;

  char name[64];
  snprintf(name, sizeof name, "/tandem-quickstart-%d", (int)getpid());
  tdm_shm *seg; /* we create it, so we own it: it is removed when we close it or die */
  int rc = tdm_shm_create(&seg, name, sizeof(struct shared), NULL);
  struct shared *s = rc == 0 ? tdm_shm_addr(seg) : NULL;
  if (rc == 0) rc = tdm_lock_init(&s->lock, TDM_SYNC_SHARED);
  if (rc != 0) {
    fprintf(stderr, "setup: %s\n", tdm_strerror(rc));
    return 1;
  }

  tdm_process *procs[NPROCS];
  tdm_process_options opt = { .start = method };
  int started = 0, failed = 0;
  for (; started < NPROCS; started++) {
    rc = tdm_process_start(&procs[started], work, name, strlen(name) + 1, &opt);
    if (rc != 0) {
      fprintf(stderr, "tdm_process_start: %s\n", tdm_strerror(rc));
      failed = 1;
      break;
    }
  }
  for (int i = 0; i < started; i++) { /* join every child that was started */
    int code = -1;
    tdm_process_join(procs[i], TDM_FOREVER);
    if (tdm_process_exitcode(procs[i], &code) != 0 || code != 0) failed = 1;
    tdm_process_close(procs[i]);
  }
  printf("%d processes (%s) x %d increments: counter = %ld\n", NPROCS,
         tdm_start_method_name(method == TDM_START_DEFAULT ? tdm_process_start_method() : method),
         NINCS, s->counter);
  failed = failed || s->counter != (long)NPROCS * NINCS;
  tdm_shm_close(seg);
  return failed;
}
