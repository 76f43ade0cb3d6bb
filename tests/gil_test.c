/*
 * gil_test.c: the CPython-style GIL: mutual exclusion, forced switching (every waiter gets its
 * turn), blocking with the GIL released, and misuse.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runner.h"

TEST(gil_basic) {
  tdm_gil g;
  CHECK_ERR(tdm_gil_init(&g, -1), -EINVAL);
  CHECK_OK(tdm_gil_init(&g, 0));
  CHECK_EQ(tdm_gil_interval(&g), TDM_GIL_DEFAULT_INTERVAL);
  CHECK(!tdm_gil_held(&g));
  tdm_gil_acquire(&g);
  CHECK(tdm_gil_held(&g));
  tdm_gil_checkpoint(&g); /* nobody asked: keeps it */
  CHECK(tdm_gil_held(&g));
  tdm_gil_release(&g);
  CHECK(!tdm_gil_held(&g));
  CHECK_EQ(tdm_gil_switches(&g), 1);
  CHECK_EQ(tdm_gil_forced_switches(&g), 0);
  tdm_gil_fini(&g);
}

struct counted {
  tdm_gil *gil;
  long counter; /* plain: the GIL is the only protection */
  int inside;
  long per_thread;
};

static void count_with_checkpoints(void *arg) {
  struct counted *c = arg;
  tdm_gil_acquire(c->gil);
  for (long i = 0; i < c->per_thread; i++) {
    CHECK(c->inside == 0);
    c->inside = 1;
    c->counter++;
    c->inside = 0;
    tdm_gil_checkpoint(c->gil);
  }
  tdm_gil_release(c->gil);
}

TEST(gil_excludes) {
  tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, TDM_US(200)));
  struct counted c = { &g, 0, 0, 300000 };
  tdm_thread *t[4];
  for (int i = 0; i < 4; i++)
    t[i] = tdm_test_thread(count_with_checkpoints, &c);
  for (int i = 0; i < 4; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  CHECK_EQ(c.counter, 4 * 300000);  /* no update lost: one holder at a time */
  CHECK(tdm_gil_switches(&g) >= 4); /* every thread got it (forced switching: the next case) */
  tdm_gil_fini(&g);
}

struct spinner {
  tdm_gil *gil;
  int *stop;
  long turns; /* how many separate holds this thread got */
  long work;
};

static void spin_under_gil(void *arg) {
  struct spinner *s = arg;
  tdm_gil_acquire(s->gil);
  uint64_t last = tdm_gil_switches(s->gil);
  while (!__atomic_load_n(s->stop, __ATOMIC_SEQ_CST)) {
    s->work++;
    tdm_gil_checkpoint(s->gil);
    uint64_t now = tdm_gil_switches(s->gil);
    if (now != last) __atomic_fetch_add(&s->turns, 1, __ATOMIC_RELAXED);
    last = now;
  }
  tdm_gil_release(s->gil);
}

TEST(gil_forced_switching_gives_every_thread_turns) {
  tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, TDM_MS(1)));
  int stop = 0;
  struct spinner s[3];
  tdm_thread *t[3];
  for (int i = 0; i < 3; i++) {
    s[i] = (struct spinner){ &g, &stop, 0, 0 };
    t[i] = tdm_test_thread(spin_under_gil, &s[i]);
  }
  /* Without forced switching one spinner could keep the GIL for ever. */
  WAIT_UNTIL(__atomic_load_n(&s[0].turns, __ATOMIC_RELAXED) >= 3 &&
             __atomic_load_n(&s[1].turns, __ATOMIC_RELAXED) >= 3 &&
             __atomic_load_n(&s[2].turns, __ATOMIC_RELAXED) >= 3);
  __atomic_store_n(&stop, 1, __ATOMIC_SEQ_CST);
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  CHECK(tdm_gil_forced_switches(&g) > 0);
  tdm_gil_fini(&g);
}

struct sleeper {
  tdm_gil *gil;
  int phase;      /* 1: about to sleep, 2: back from sleep */
  int seen_phase; /* what the other thread saw while it held the GIL */
  int32_t waiter_tid;
  int waiter_ready;
};

static void gil_waiter(void *arg) {
  struct sleeper *s = arg;
  __atomic_store_n(&s->waiter_tid, tdm_test_gettid(), __ATOMIC_SEQ_CST);
  __atomic_store_n(&s->waiter_ready, 1, __ATOMIC_SEQ_CST);
  tdm_gil_acquire(s->gil);
  s->seen_phase = __atomic_load_n(&s->phase, __ATOMIC_SEQ_CST);
  tdm_gil_release(s->gil);
}

TEST(gil_sleep_releases_the_gil) {
  tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, 0));
  struct sleeper s = { &g, 0, 0, 0, 0 };
  tdm_gil_acquire(&g);
  tdm_thread *t = tdm_test_thread(gil_waiter, &s);
  WAIT_UNTIL(__atomic_load_n(&s.waiter_ready, __ATOMIC_SEQ_CST) &&
             tdm_test_thread_sleeping(__atomic_load_n(&s.waiter_tid, __ATOMIC_SEQ_CST)));
  __atomic_store_n(&s.phase, 1, __ATOMIC_SEQ_CST);
  CHECK_ERR(tdm_gil_sleep(&g, -1), -EINVAL);
  CHECK(tdm_gil_held(&g));
  CHECK_OK(tdm_gil_sleep(&g, TDM_MS(200)));
  __atomic_store_n(&s.phase, 2, __ATOMIC_SEQ_CST);
  CHECK(tdm_gil_held(&g));
  tdm_gil_release(&g);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  /* The waiter held the GIL while this thread was inside tdm_gil_sleep(). */
  CHECK_EQ(s.seen_phase, 1);
  tdm_gil_fini(&g);
}

struct mixed {
  tdm_gil *gil;
  long counter;
};

static void mixed_worker(void *arg) {
  struct mixed *m = arg;
  tdm_gil_acquire(m->gil);
  for (int round = 0; round < 20; round++) {
    for (int i = 0; i < 20000; i++) {
      m->counter++;
      tdm_gil_checkpoint(m->gil);
    }
    CHECK_OK(tdm_gil_sleep(m->gil, TDM_US(100)));
  }
  tdm_gil_release(m->gil);
}

TEST(gil_stress_compute_and_sleep) {
  tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, TDM_US(100)));
  struct mixed m = { &g, 0 };
  tdm_thread *t[8];
  for (int i = 0; i < 8; i++)
    t[i] = tdm_test_thread(mixed_worker, &m);
  for (int i = 0; i < 8; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  CHECK_EQ(m.counter, 8L * 20 * 20000);
  tdm_gil_fini(&g);
}

static void child_releases_gil(void *arg) {
  tdm_gil *g = arg;
  CHECK(tdm_gil_held(g)); /* the forking thread's GIL is its own in the child */
  uint64_t switches = tdm_gil_switches(g);
  tdm_gil_release(g);
  tdm_gil_acquire(g);
  CHECK_EQ(tdm_gil_switches(g), switches); /* the same thread, under a new id: no switch */
  tdm_gil_checkpoint(g);
  tdm_gil_release(g);
  tdm_gil_acquire(g);
  tdm_gil_release(g);
  tdm_gil_fini(g);
}

TEST(gil_held_across_fork_stays_the_forking_threads) {
  static tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, 0));
  tdm_gil_acquire(&g);
  tdm_test_wait_ok(tdm_test_fork(child_releases_gil, &g));
  CHECK(tdm_gil_held(&g));
  tdm_gil_release(&g);
  tdm_gil_fini(&g);
}

static void release_unheld(void *arg) {
  (void)arg;
  static tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, 0));
  tdm_gil_release(&g);
}

static void acquire_twice(void *arg) {
  (void)arg;
  static tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, 0));
  tdm_gil_acquire(&g);
  tdm_gil_acquire(&g);
}

static void sleep_unheld(void *arg) {
  (void)arg;
  static tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, 0));
  tdm_gil_sleep(&g, -1); /* the missing GIL is reported before the bad duration */
}

static void fini_held(void *arg) {
  (void)arg;
  static tdm_gil g;
  CHECK_OK(tdm_gil_init(&g, 0));
  tdm_gil_acquire(&g);
  tdm_gil_fini(&g);
}

TEST(gil_misuse_aborts) {
  EXPECT_ABORT(release_unheld, NULL, "tdm_gil_release: GIL");
  EXPECT_ABORT(acquire_twice, NULL, "already holds GIL");
  EXPECT_ABORT(fini_held, NULL, "tdm_gil_fini: GIL");
  EXPECT_ABORT(sleep_unheld, NULL, "tdm_gil_sleep: GIL");
}
