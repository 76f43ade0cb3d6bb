/*
 * producer_consumer: a bounded buffer shared by producer and consumer threads, built from one
 * lock and two conditions, not_full and not_empty, waited on with tdm_cond_wait_for().
 *
 * The Python it corresponds to (module threading):
 *
 *   lock = Lock(); not_full = Condition(lock); not_empty = Condition(lock)
 *   def put(x):
 *       with not_full:
 *           not_full.wait_for(lambda: len(buf) < CAPACITY); buf.append(x); not_empty.notify()
 *   def get():
 *       with not_empty:
 *           not_empty.wait_for(lambda: len(buf) > 0); not_full.notify(); return buf.popleft()
 *
 * Two producers put 1..N each; when both are done, main puts one STOP per consumer. Each of the
 * two consumers sums what it gets; the sums must add up to 2 * N(N+1)/2.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tandem.h"

enum { CAPACITY = 8, N = 20000, NPRODUCERS = 2, NCONSUMERS = 2, STOP = -1 };

static struct {
  tdm_lock lock; /* guards everything below; both conditions use it */
  tdm_cond not_full, not_empty;
  long items[CAPACITY];
  int head, count;
} buf;

static void check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s\n", what, tdm_strerror(rc));
    exit(1);
  }
}

static bool has_room(void *arg) {
  (void)arg;
  return buf.count < CAPACITY;
}

static bool has_items(void *arg) {
  (void)arg;
  return buf.count > 0;
}

static void put(long x) {
  check(tdm_lock_acquire(&buf.lock, TDM_FOREVER), "tdm_lock_acquire");
  /* Releases the lock while it waits; the lock is held again on return, whatever the result. */
  check(tdm_cond_wait_for(&buf.not_full, &buf.lock, has_room, NULL, TDM_S(10)), "wait not_full");
  buf.items[(buf.head + buf.count++) % CAPACITY] = x;
  tdm_cond_notify(&buf.not_empty, 1);
  tdm_lock_release(&buf.lock);
}

static long get(void) {
  check(tdm_lock_acquire(&buf.lock, TDM_FOREVER), "tdm_lock_acquire");
  check(tdm_cond_wait_for(&buf.not_empty, &buf.lock, has_items, NULL, TDM_S(10)), "wait not_empty");
  long x = buf.items[buf.head];
  buf.head = (buf.head + 1) % CAPACITY;
  buf.count--;
  tdm_cond_notify(&buf.not_full, 1);
  tdm_lock_release(&buf.lock);
  return x;
}

static void producer(void *arg) {
  (void)arg;
  for (long i = 1; i <= N; i++)
    put(i);
}

static void consumer(void *arg) {
  long *sum = arg;
  for (long x; (x = get()) != STOP;)
    *sum += x;
}

int main(void) {
  check(tdm_lock_init(&buf.lock, TDM_SYNC_PRIVATE), "tdm_lock_init");
  check(tdm_cond_init(&buf.not_full, TDM_SYNC_PRIVATE), "tdm_cond_init");
  check(tdm_cond_init(&buf.not_empty, TDM_SYNC_PRIVATE), "tdm_cond_init");
  tdm_thread *producers[NPRODUCERS], *consumers[NCONSUMERS];
  long sums[NCONSUMERS] = { 0 };
  for (int i = 0; i < NCONSUMERS; i++)
    check(tdm_thread_start(&consumers[i], consumer, &sums[i], NULL), "tdm_thread_start");
  for (int i = 0; i < NPRODUCERS; i++)
    check(tdm_thread_start(&producers[i], producer, NULL, NULL), "tdm_thread_start");

  for (int i = 0; i < NPRODUCERS; i++)
    check(tdm_thread_join(producers[i], TDM_FOREVER), "tdm_thread_join");
  for (int i = 0; i < NCONSUMERS; i++)
    put(STOP); /* one per consumer: each stops at the first it gets */
  long total = 0;
  for (int i = 0; i < NCONSUMERS; i++) {
    check(tdm_thread_join(consumers[i], TDM_FOREVER), "tdm_thread_join");
    printf("consumer %d got items summing to %ld\n", i + 1, sums[i]);
    total += sums[i];
  }
  long expected = (long)NPRODUCERS * N * (N + 1) / 2;
  printf("%d producers x %d items through %d slots: total %ld, expected %ld: %s\n", NPRODUCERS, N,
         CAPACITY, total, expected, total == expected ? "ok" : "WRONG");
  tdm_cond_fini(&buf.not_empty);
  tdm_cond_fini(&buf.not_full);
  tdm_lock_fini(&buf.lock);
  return total == expected ? 0 : 1;
}
