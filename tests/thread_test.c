/*
 * thread_test.c: threads (start, names, identity, join with timeouts, detach, the registry of
 * live threads, foreign threads, fork), thread-local storage and timers.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runner.h"

static tdm_thread *spawn_named(tdm_thread_fn fn, void *arg, const char *name) {
  tdm_thread *t = NULL;
  tdm_thread_options o = { .name = name };
  CHECK_OK(tdm_thread_start(&t, fn, arg, name != NULL ? &o : NULL));
  CHECK(t != NULL);
  return t;
}

static void join(tdm_thread *t) {
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
}

/* ---- Start and join -------------------------------------------------------------------------- */

struct seen {
  tdm_thread *self;
  int32_t tid;
  uint64_t ident;
  char comm[64];
  int value;
};

static void record(void *arg) {
  struct seen *s = arg;
  s->self = tdm_thread_self();
  s->tid = tdm_test_gettid();
  s->ident = tdm_thread_ident(s->self);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)s->tid);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  CHECK(fgets(s->comm, sizeof s->comm, f) != NULL);
  fclose(f);
  s->comm[strcspn(s->comm, "\n")] = '\0';
  s->value++;
}

TEST(thread_runs_its_function_with_its_argument) {
  struct seen s = { 0 };
  tdm_thread *t = spawn_named(record, &s, NULL);
  int32_t native = tdm_thread_native_id(t);
  uint64_t ident = tdm_thread_ident(t);
  join(t);
  CHECK_EQ(s.value, 1);
  CHECK(s.self == t);
  CHECK_EQ(s.tid, native); /* known as soon as start returned */
  CHECK_EQ(s.ident, ident);
}

TEST(thread_start_arguments) {
  tdm_thread *t = (tdm_thread *)0x1;
  struct seen s = { 0 };
  CHECK_ERR(tdm_thread_start(NULL, record, &s, NULL), -EINVAL);
  CHECK_ERR(tdm_thread_start(&t, NULL, &s, NULL), -EINVAL);
  tdm_thread_options tiny = { .stack_size = 1 };
  CHECK_ERR(tdm_thread_start(&t, record, &s, &tiny), -EINVAL);
  CHECK(t == (tdm_thread *)0x1); /* untouched on failure */
  tdm_thread_options big = { .stack_size = 8 << 20 };
  CHECK_OK(tdm_thread_start(&t, record, &s, &big));
  join(t);
  CHECK_EQ(s.value, 1);
}

static long alloc_calls, free_calls;

static void *counting(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    if (ptr != NULL) free_calls++;
    free(ptr);
    return NULL;
  }
  if (ptr == NULL) alloc_calls++;
  return realloc(ptr, size);
}

TEST(thread_start_failure_leaks_nothing) {
  tdm_allocator a = { counting, NULL };
  tdm_allocator_set(&a);
  /* A stack the system cannot map: pthread_create fails with EAGAIN. */
  tdm_thread *t = NULL;
  tdm_thread_options huge = { .name = "huge", .stack_size = (size_t)1 << 46 };
  struct seen s = { 0 };
  int r = tdm_thread_start(&t, record, &s, &huge);
  CHECK(r == -EAGAIN || r == -ENOMEM);
  CHECK(t == NULL);
  CHECK_EQ(s.value, 0);
  tdm_allocator_set(NULL);
  CHECK(alloc_calls > 0);
  CHECK_EQ(alloc_calls, free_calls);
}

TEST(thread_names_default_custom_and_os) {
  struct seen s = { 0 };
  tdm_thread *t = spawn_named(record, &s, NULL);
  char name[32];
  snprintf(name, sizeof name, "%s", tdm_thread_name(t));
  join(t);
  CHECK(strncmp(name, "Thread-", 7) == 0);
  CHECK(strcmp(name, s.comm) == 0);

  t = spawn_named(record, &s, "worker-7");
  CHECK(strcmp(tdm_thread_name(t), "worker-7") == 0);
  join(t);
  CHECK(strcmp(s.comm, "worker-7") == 0);

  const char *longname = "a-rather-long-thread-name-indeed";
  t = spawn_named(record, &s, longname);
  CHECK(strcmp(tdm_thread_name(t), longname) == 0); /* the full name is kept */
  join(t);
  CHECK(strcmp(s.comm, "a-rather-long-t") == 0); /* the kernel's 15 bytes */

  /* "é" is two bytes in UTF-8: 15 bytes would cut the eighth in half, so 14 are kept. */
  t = spawn_named(record, &s, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
  join(t);
  CHECK_EQ(strlen(s.comm), 14);
}

TEST(thread_identity_of_main_and_others) {
  tdm_thread *m = tdm_thread_main();
  CHECK(m != NULL);
  CHECK(tdm_thread_self() == m);
  CHECK(strcmp(tdm_thread_name(m), "MainThread") == 0);
  CHECK_EQ(tdm_thread_native_id(m), getpid());
  CHECK(tdm_thread_is_alive(m));
  struct seen a = { 0 }, b = { 0 };
  tdm_thread *ta = spawn_named(record, &a, NULL), *tb = spawn_named(record, &b, NULL);
  uint64_t ia = tdm_thread_ident(ta), ib = tdm_thread_ident(tb);
  CHECK(ia != ib && ia != tdm_thread_ident(m) && ib != tdm_thread_ident(m));
  CHECK(tdm_thread_native_id(ta) != tdm_thread_native_id(tb));
  join(ta);
  join(tb);
  /* Identifiers are never reused. */
  struct seen c = { 0 };
  tdm_thread *tc = spawn_named(record, &c, NULL);
  CHECK(tdm_thread_ident(tc) != ia && tdm_thread_ident(tc) != ib);
  join(tc);
}

static void wait_event(void *arg) {
  CHECK_OK(tdm_event_wait(arg, TDM_FOREVER));
}

TEST(thread_join_with_timeout) {
  tdm_event go;
  CHECK_OK(tdm_event_init(&go, 0));
  tdm_thread *t = spawn_named(wait_event, &go, NULL);
  CHECK(tdm_thread_is_alive(t));
  CHECK_ERR(tdm_thread_join(t, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_thread_join(t, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  CHECK(tdm_thread_is_alive(t)); /* the handle is still ours */
  tdm_event_set(&go);
  WAIT_UNTIL(!tdm_thread_is_alive(t));
  CHECK_OK(tdm_thread_join(t, 0));
}

static void join_myself(void *arg) {
  int *r = arg;
  *r = tdm_thread_join(tdm_thread_self(), TDM_FOREVER);
}

TEST(thread_join_errors) {
  int r = 0;
  tdm_thread *t = spawn_named(join_myself, &r, NULL);
  join(t);
  CHECK_ERR(r, -EDEADLK);
  CHECK_ERR(tdm_thread_join(tdm_thread_main(), 0), -EINVAL);
  CHECK_ERR(tdm_thread_join(NULL, 0), -EINVAL);
}

struct detached {
  tdm_event started, go, finished;
};

static void detached_body(void *arg) {
  struct detached *d = arg;
  tdm_event_set(&d->started);
  CHECK_OK(tdm_event_wait(&d->go, TDM_FOREVER));
  tdm_event_set(&d->finished);
}

TEST(thread_detach_lets_it_finish_on_its_own) {
  static struct detached d;
  CHECK_OK(tdm_event_init(&d.started, 0));
  CHECK_OK(tdm_event_init(&d.go, 0));
  CHECK_OK(tdm_event_init(&d.finished, 0));
  size_t before = tdm_thread_count();
  tdm_thread *t = spawn_named(detached_body, &d, NULL);
  CHECK_OK(tdm_event_wait(&d.started, TDM_FOREVER));
  tdm_thread_detach(t); /* still running */
  CHECK_EQ(tdm_thread_count(), before + 1);
  tdm_event_set(&d.go);
  CHECK_OK(tdm_event_wait(&d.finished, TDM_FOREVER));
  WAIT_UNTIL(tdm_thread_count() == before);
  /* And one that has already finished when it is detached. */
  struct seen s = { 0 };
  t = spawn_named(record, &s, NULL);
  WAIT_UNTIL(!tdm_thread_is_alive(t));
  tdm_thread_detach(t);
  CHECK_EQ(s.value, 1);
}

struct listing {
  const char *names[16];
  int n;
  int stop_after;
};

static int collect(tdm_thread *t, void *arg) {
  struct listing *l = arg;
  if (l->n < 16) l->names[l->n] = tdm_thread_name(t);
  l->n++;
  return l->n == l->stop_after ? 7 : 0;
}

static bool listed(struct listing *l, const char *name) {
  for (int i = 0; i < l->n && i < 16; i++)
    if (strcmp(l->names[i], name) == 0) return true;
  return false;
}

TEST(thread_count_and_enumeration) {
  size_t base = tdm_thread_count();
  CHECK(base >= 1);
  tdm_event go;
  CHECK_OK(tdm_event_init(&go, 0));
  const char *names[] = { "w0", "w1", "w2", "w3", "w4" };
  tdm_thread *t[5];
  for (int i = 0; i < 5; i++)
    t[i] = spawn_named(wait_event, &go, names[i]);
  CHECK_EQ(tdm_thread_count(), base + 5); /* counted as soon as start returns */
  struct listing l = { .stop_after = -1 };
  CHECK_EQ(tdm_thread_foreach(collect, &l), 0);
  CHECK_EQ(l.n, (int)base + 5);
  CHECK(listed(&l, "MainThread"));
  for (int i = 0; i < 5; i++)
    CHECK(listed(&l, names[i]));
  struct listing early = { .stop_after = 2 };
  CHECK_EQ(tdm_thread_foreach(collect, &early), 7);
  CHECK_EQ(early.n, 2);
  tdm_event_set(&go);
  for (int i = 0; i < 5; i++)
    join(t[i]);
  CHECK_EQ(tdm_thread_count(), base);
}

struct foreign {
  tdm_thread *self;
  char name[32];
  int32_t native, tid;
  size_t count_inside;
};

static void *foreign_body(void *arg) {
  struct foreign *f = arg;
  f->self = tdm_thread_self();
  CHECK(tdm_thread_self() == f->self); /* registered once */
  snprintf(f->name, sizeof f->name, "%s", tdm_thread_name(f->self));
  f->native = tdm_thread_native_id(f->self);
  f->tid = tdm_test_gettid();
  f->count_inside = tdm_thread_count();
  CHECK(tdm_thread_is_alive(f->self));
  return NULL;
}

TEST(foreign_threads_are_registered_while_they_live) {
  size_t base = tdm_thread_count();
  struct foreign f = { 0 };
  pthread_t p;
  CHECK_OK(pthread_create(&p, NULL, foreign_body, &f));
  CHECK_OK(pthread_join(p, NULL));
  CHECK(strncmp(f.name, "Dummy-", 6) == 0);
  CHECK_EQ(f.native, f.tid);
  CHECK_EQ(f.count_inside, base + 1);
  CHECK_EQ(tdm_thread_count(), base); /* gone with its thread */
}

/* ---- Fork ------------------------------------------------------------------------------------ */

struct forked {
  tdm_thread *workers[3];
};

static void child_after_fork(void *arg) {
  struct forked *f = arg;
  CHECK_EQ(tdm_thread_count(), 1);
  CHECK(tdm_thread_main() == tdm_thread_self());
  CHECK_EQ(tdm_thread_native_id(tdm_thread_self()), getpid());
  for (int i = 0; i < 3; i++)
    CHECK(!tdm_thread_is_alive(f->workers[i]));
  CHECK_OK(tdm_thread_join(f->workers[0], TDM_FOREVER)); /* returns at once */
  tdm_thread_detach(f->workers[1]);
  CHECK_OK(tdm_thread_join(f->workers[2], 0));
#ifndef __SANITIZE_THREAD__
  /* Threads can be started in the child. (ThreadSanitizer cannot follow a multithreaded
   * process's child that starts threads, so that build checks everything else.) */
  struct seen s = { 0 };
  join(spawn_named(record, &s, NULL));
  CHECK_EQ(s.value, 1);
#endif
}

TEST(fork_keeps_only_the_forking_thread) {
  tdm_event go;
  CHECK_OK(tdm_event_init(&go, 0));
  struct forked f;
  for (int i = 0; i < 3; i++)
    f.workers[i] = spawn_named(wait_event, &go, NULL);
  tdm_test_wait_ok(tdm_test_fork(child_after_fork, &f));
  CHECK_EQ(tdm_thread_count(), 4); /* the parent is unaffected */
  tdm_event_set(&go);
  for (int i = 0; i < 3; i++)
    join(f.workers[i]);
}

static void grandchild(void *arg) {
  tdm_thread *forker = arg;
  CHECK(tdm_thread_self() == forker);
  CHECK(tdm_thread_main() == forker);
  CHECK_EQ(tdm_thread_native_id(forker), getpid());
  CHECK_EQ(tdm_thread_count(), 1);
}

static void fork_from_thread(void *arg) {
  (void)arg;
  tdm_test_wait_ok(tdm_test_fork(grandchild, tdm_thread_self()));
}

TEST(fork_from_a_tandem_thread_makes_it_the_main_thread) {
  join(spawn_named(fork_from_thread, NULL, "forker"));
  CHECK(strcmp(tdm_thread_name(tdm_thread_main()), "MainThread") == 0);
}

/* ---- Misuse ---------------------------------------------------------------------------------- */

static void detach_twice(void *arg) {
  (void)arg;
  static tdm_event go;
  CHECK_OK(tdm_event_init(&go, 0));
  tdm_thread *t = spawn_named(wait_event, &go, NULL);
  tdm_thread_detach(t);
  tdm_thread_detach(t); /* still running, so the handle is still there to say so */
}

static void detach_main(void *arg) {
  (void)arg;
  tdm_thread_detach(tdm_thread_main());
}

static int count_inside(tdm_thread *t, void *arg) {
  (void)t;
  (void)arg;
  return (int)tdm_thread_count();
}

static void registry_from_foreach(void *arg) {
  (void)arg;
  tdm_thread_foreach(count_inside, NULL);
}

TEST(thread_misuse_aborts) {
  EXPECT_ABORT(detach_main, NULL, "is not a handle returned by tdm_thread_start");
  EXPECT_ABORT(registry_from_foreach, NULL, "a tdm_thread_foreach() callback called");
  EXPECT_ABORT(detach_twice, NULL, "was already joined or detached");
}

/* ---- Stress ---------------------------------------------------------------------------------- */

static void churn(void *arg) {
  int *total = arg;
  for (int i = 0; i < 150; i++) {
    struct seen s = { 0 };
    tdm_thread *t = spawn_named(record, &s, (i & 1) ? "odd" : NULL);
    if (i % 3 == 0) {
      WAIT_UNTIL(!tdm_thread_is_alive(t));
      tdm_thread_detach(t);
    } else {
      join(t);
      CHECK_EQ(s.value, 1);
    }
    __atomic_fetch_add(total, 1, __ATOMIC_SEQ_CST);
  }
}

static void watch_registry(void *arg) {
  int *stop = arg;
  while (!__atomic_load_n(stop, __ATOMIC_SEQ_CST)) {
    struct listing l = { .stop_after = -1 };
    tdm_thread_foreach(collect, &l);
    CHECK(l.n >= 1);
    CHECK(tdm_thread_count() >= 1);
  }
}

TEST(thread_stress_start_join_detach_while_enumerating) {
  size_t base = tdm_thread_count();
  int total = 0, stop = 0;
  tdm_thread *watcher = spawn_named(watch_registry, &stop, "watcher");
  tdm_thread *t[4];
  for (int i = 0; i < 4; i++)
    t[i] = spawn_named(churn, &total, NULL);
  for (int i = 0; i < 4; i++)
    join(t[i]);
  __atomic_store_n(&stop, 1, __ATOMIC_SEQ_CST);
  join(watcher);
  CHECK_EQ(total, 600);
  WAIT_UNTIL(tdm_thread_count() == base);
}

/* ---- Thread-local storage -------------------------------------------------------------------- */

static tdm_tls slot;
static int destroyed[8];
static int32_t destroyed_by[8];

static void destroy(void *value) {
  int i = *(int *)value;
  destroyed[i]++;
  destroyed_by[i] = tdm_test_gettid();
}

struct tls_arg {
  int index;
  int32_t tid;
  int seen_before;
};

static void use_slot(void *arg) {
  struct tls_arg *a = arg;
  a->tid = tdm_test_gettid();
  a->seen_before = tdm_tls_get(&slot) != NULL;
  static int values[8];
  values[a->index] = a->index;
  if (a->index != 0) CHECK_OK(tdm_tls_set(&slot, &values[a->index])); /* thread 0 sets none */
  CHECK(tdm_tls_get(&slot) == (a->index != 0 ? &values[a->index] : NULL));
}

TEST(tls_values_are_per_thread_and_destroyed_in_their_thread) {
  CHECK_OK(tdm_tls_init(&slot, destroy));
  static int mine = 0;
  CHECK_OK(tdm_tls_set(&slot, &mine));
  struct tls_arg a[4];
  tdm_thread *t[4];
  for (int i = 0; i < 4; i++) {
    a[i] = (struct tls_arg){ .index = i };
    t[i] = spawn_named(use_slot, &a[i], NULL);
  }
  for (int i = 0; i < 4; i++)
    join(t[i]);
  CHECK(tdm_tls_get(&slot) == &mine);
  CHECK_EQ(destroyed[0], 0); /* NULL values are not destroyed */
  for (int i = 1; i < 4; i++) {
    CHECK_EQ(a[i].seen_before, 0);
    CHECK_EQ(destroyed[i], 1);
    CHECK_EQ(destroyed_by[i], a[i].tid);
  }
  tdm_tls_fini(&slot);
}

static tdm_tls slow_slot;

static void slow_destructor(void *value) {
  CHECK_OK(tdm_event_wait(value, TDM_FOREVER)); /* the thread's exit waits on the test */
}

static void set_slow_value(void *arg) {
  CHECK_OK(tdm_tls_set(&slow_slot, arg));
}

TEST(join_timeout_covers_thread_local_destructors) {
  tdm_event release;
  CHECK_OK(tdm_event_init(&release, 0));
  CHECK_OK(tdm_tls_init(&slow_slot, slow_destructor));
  tdm_thread *t = spawn_named(set_slow_value, &release, NULL);
  WAIT_UNTIL(!tdm_thread_is_alive(t)); /* its function returned; its destructor runs */
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_thread_join(t, TDM_MS(20)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(20));
  CHECK_ERR(tdm_thread_join(t, 0), -ETIMEDOUT);
  tdm_event_set(&release);
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  tdm_tls_fini(&slow_slot);
}

TEST(tls_slots_run_out_with_eagain) {
  enum { MAX = 4096 };
  static tdm_tls slots[MAX];
  int n = 0, r = 0;
  while (n < MAX && (r = tdm_tls_init(&slots[n], NULL)) == 0)
    n++;
  CHECK_ERR(r, -EAGAIN); /* the C library has a fixed number of keys (1024 in glibc) */
  CHECK(n > 0);
  for (int i = 0; i < n; i++)
    tdm_tls_fini(&slots[i]);
  CHECK_OK(tdm_tls_init(&slots[0], NULL)); /* and they come back */
  tdm_tls_fini(&slots[0]);
}

/* ---- Timers ---------------------------------------------------------------------------------- */

static void bump(void *arg) {
  __atomic_fetch_add((int *)arg, 1, __ATOMIC_SEQ_CST);
}

TEST(timer_fires_after_its_delay) {
  int fired = 0;
  tdm_timer *t;
  int64_t t0 = tdm_clock_now();
  CHECK_OK(tdm_timer_start(&t, TDM_MS(30), bump, &fired, NULL));
  CHECK(!tdm_timer_fired(t));
  CHECK_OK(tdm_timer_join(t, TDM_FOREVER));
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  CHECK_EQ(fired, 1);
}

TEST(timer_cancel_before_it_fires) {
  int fired = 0;
  tdm_timer *t;
  CHECK_OK(tdm_timer_start(&t, TDM_S(60), bump, &fired, NULL));
  CHECK_OK(tdm_timer_cancel(t));
  CHECK_OK(tdm_timer_cancel(t));
  CHECK(!tdm_timer_fired(t));
  CHECK_ERR(tdm_timer_join(t, TDM_S(20)), -ECANCELED); /* ends at once, not after a minute */
  CHECK_EQ(fired, 0);
}

TEST(timer_cancel_after_it_fired) {
  int fired = 0;
  tdm_timer *t;
  CHECK_OK(tdm_timer_start(&t, 0, bump, &fired, NULL));
  WAIT_UNTIL(tdm_timer_fired(t));
  CHECK_ERR(tdm_timer_cancel(t), -EALREADY);
  CHECK_OK(tdm_timer_join(t, TDM_FOREVER));
  CHECK_EQ(fired, 1);
}

struct slow {
  tdm_event running, go;
};

static void slow_fn(void *arg) {
  struct slow *s = arg;
  tdm_event_set(&s->running);
  CHECK_OK(tdm_event_wait(&s->go, TDM_FOREVER));
}

TEST(timer_cancel_while_it_runs_and_join_timeout) {
  struct slow s;
  CHECK_OK(tdm_event_init(&s.running, 0));
  CHECK_OK(tdm_event_init(&s.go, 0));
  tdm_timer *t;
  tdm_thread_options o = { .name = "my-timer" };
  CHECK_OK(tdm_timer_start(&t, 0, slow_fn, &s, &o));
  CHECK_OK(tdm_event_wait(&s.running, TDM_FOREVER));
  CHECK_ERR(tdm_timer_cancel(t), -EALREADY);
  CHECK_ERR(tdm_timer_join(t, TDM_MS(10)), -ETIMEDOUT);
  CHECK(!tdm_timer_fired(t));
  tdm_event_set(&s.go);
  CHECK_OK(tdm_timer_join(t, TDM_FOREVER));
}

TEST(timer_detached_still_fires_and_arguments) {
  static int fired = 0;
  tdm_timer *t;
  CHECK_OK(tdm_timer_start(&t, TDM_MS(5), bump, &fired, NULL));
  tdm_timer_detach(t);
  WAIT_UNTIL(__atomic_load_n(&fired, __ATOMIC_SEQ_CST) == 1);
  CHECK_ERR(tdm_timer_start(&t, -1, bump, &fired, NULL), -EINVAL);
  CHECK_ERR(tdm_timer_start(&t, 0, NULL, &fired, NULL), -EINVAL);
  CHECK_ERR(tdm_timer_start(NULL, 0, bump, &fired, NULL), -EINVAL);
}
