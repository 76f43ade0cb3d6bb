/*
 * shared_array: four processes add to a shared counter and a shared array of doubles, the way
 * Python's multiprocessing.Value and multiprocessing.Array are used. The counter and the array
 * are allocated from an arena inside one anonymous shared segment; the children, made by the
 * forkserver, map the segment from its descriptor and find them by their offsets in the arena.
 *
 * The Python it corresponds to:
 *
 *   counter = Value('q', 0)       # with a lock
 *   hits    = RawValue('q', 0)    # no lock
 *   sums    = Array('d', 4)       # with a lock
 *   def work(k):
 *       for _ in range(N):
 *           with counter.get_lock():
 *               counter.value += 1
 *           hits.value += 1       # Python: racy; here an atomic add, so exact
 *       with sums.get_lock():
 *           for j in range(4):
 *               sums[j] += (k + 1) * 0.5
 *   ps = [Process(target=work, args=(k,)) for k in range(4)]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

#define WORKERS 4
#define N       100000
#define SUMS    4
#define REGION  (64 * 1024)

/* Where the shared objects are: offsets in the arena, the same in every process. */
struct where {
  uint64_t counter, hits, sums;
};

static void check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s\n", what, tdm_strerror(rc));
    exit(1);
  }
}

/* Allocates an array of `len` elements of `type` in the arena and returns its offset. */
static uint64_t new_array(tdm_arena *arena, tdm_type type, size_t len, unsigned flags) {
  uint64_t off;
  check(tdm_arena_alloc(arena, tdm_array_footprint(type, len, flags), &off), "tdm_arena_alloc");
  check(tdm_array_init(tdm_arena_ptr(arena, off), type, len, flags), "tdm_array_init");
  return off;
}

static int work(tdm_arena *arena, const struct where *w, int k) {
  tdm_array *counter = tdm_array_check(tdm_arena_ptr(arena, w->counter), TDM_TYPE_I64);
  tdm_array *hits = tdm_array_check(tdm_arena_ptr(arena, w->hits), TDM_TYPE_I64);
  tdm_array *sums = tdm_array_check(tdm_arena_ptr(arena, w->sums), TDM_TYPE_F64);
  if (!counter || !hits || !sums) return 1;

  for (int i = 0; i < N; i++) {
    /* `with counter.get_lock(): counter.value += 1`: get and set in one step under the lock. */
    tdm_rlock *lock = tdm_array_lock(counter);
    if (tdm_rlock_acquire(lock, TDM_FOREVER) != 0) return 1;
    int64_t v;
    tdm_array_get(counter, 0, &v); /* the lock is recursive: get and set may take it again */
    v++;
    tdm_array_set(counter, 0, &v);
    tdm_rlock_release(lock);

    /* The same count without a lock: one atomic add. */
    if (tdm_array_add(hits, 0, 1, NULL) != 0) return 1;
  }

  tdm_rlock *lock = tdm_array_lock(sums);
  if (tdm_rlock_acquire(lock, TDM_FOREVER) != 0) return 1;
  double s[SUMS];
  tdm_array_read(sums, 0, SUMS, s);
  for (int j = 0; j < SUMS; j++)
    s[j] += (k + 1) * 0.5 * (j + 1);
  tdm_array_write(sums, 0, SUMS, s);
  tdm_rlock_release(lock);
  return 0;
}

/* What each worker gets: the segment's descriptor (passed at the same number), the offsets of
 * the arrays in its arena, and the worker's number. */
struct job {
  int fd;
  struct where w;
  int k;
};

/* A worker process: maps the anonymous segment from its descriptor and works in its arena. */
static int worker(void *arg, size_t size) {
  struct job job;
  if (size != sizeof job) return 1;
  memcpy(&job, arg, sizeof job);
  tdm_shm *seg;
  check(tdm_shm_attach_fd(&seg, job.fd, REGION), "tdm_shm_attach_fd");
  tdm_arena *arena = tdm_arena_check(tdm_shm_addr(seg));
  int rc = arena != NULL ? work(arena, &job.w, job.k) : 1;
  tdm_shm_close(seg);
  return rc;
}

int main(void) {
  /* An anonymous segment (a memfd): children reach it through its descriptor, under every
   * start method; here they are made by the forkserver, so nothing is inherited by fork. */
  tdm_shm *seg;
  check(tdm_shm_create(&seg, NULL, REGION, NULL), "tdm_shm_create");
  check(tdm_arena_init(tdm_shm_addr(seg), REGION), "tdm_arena_init");
  tdm_arena *arena = tdm_shm_addr(seg);

  struct where w;
  w.counter = new_array(arena, TDM_TYPE_I64, 1, TDM_ARRAY_LOCK);
  w.hits = new_array(arena, TDM_TYPE_I64, 1, 0);
  w.sums = new_array(arena, TDM_TYPE_F64, SUMS, TDM_ARRAY_LOCK);
  printf("arena of %d bytes: %zu bytes in use for a counter, a raw counter and %d doubles\n",
         REGION, tdm_arena_used(arena), SUMS);

  int fd = tdm_shm_fd(seg);
  tdm_process *procs[WORKERS];
  for (int k = 0; k < WORKERS; k++) {
    struct job job = { fd, w, k };
    tdm_process_options opt = { .start = TDM_START_FORKSERVER, .pass_fds = &fd, .n_pass_fds = 1 };
    check(tdm_process_start(&procs[k], worker, &job, sizeof job, &opt), "tdm_process_start");
  }
  bool ok = true;
  for (int k = 0; k < WORKERS; k++) {
    int code = -1;
    check(tdm_process_join(procs[k], TDM_FOREVER), "tdm_process_join");
    check(tdm_process_exitcode(procs[k], &code), "tdm_process_exitcode");
    tdm_process_close(procs[k]);
    ok = ok && code == 0;
  }

  int64_t counter = 0, hits = 0;
  double sums[SUMS];
  check(tdm_array_get(tdm_arena_ptr(arena, w.counter), 0, &counter), "tdm_array_get");
  check(tdm_array_get(tdm_arena_ptr(arena, w.hits), 0, &hits), "tdm_array_get");
  check(tdm_array_read(tdm_arena_ptr(arena, w.sums), 0, SUMS, sums), "tdm_array_read");
  printf("%d processes x %d increments: counter (under its lock) = %lld, hits (atomic add) = "
         "%lld\n",
         WORKERS, N, (long long)counter, (long long)hits);
  ok = ok && counter == (int64_t)WORKERS * N && hits == (int64_t)WORKERS * N;
  printf("sums:");
  for (int j = 0; j < SUMS; j++) {
    /* Each worker k added (k + 1) * 0.5 * (j + 1): exact in binary floating point. */
    double want = 0.5 * (j + 1) * (WORKERS * (WORKERS + 1) / 2);
    printf(" %g", sums[j]);
    ok = ok && sums[j] == want;
  }
  printf("\n");

  tdm_arena_free(arena, w.counter);
  tdm_arena_free(arena, w.hits);
  tdm_arena_free(arena, w.sums);
  printf("after freeing: %zu bytes in use\n", tdm_arena_used(arena));
  ok = ok && tdm_arena_used(arena) == 0;
  tdm_shm_close(seg);
  puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
