/*
 * queue_test.c: message queues across real threads and processes: order and sizes (0 bytes to
 * 64 MiB), inline and arena messages, buffers too small, timeouts, capacity and back-pressure,
 * shutdown, JoinableQueue, queues reached by fork, by name and by descriptor under spawn and
 * forkserver, many producers and consumers (threads and processes mixed) with every message
 * checked exactly once and in order per producer, producers and consumers SIGKILLed at random
 * points, the process table filling up, joining a producer that still has data in the queue,
 * failed allocations and bad input.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner.h"

/* ---- Helpers --------------------------------------------------------------------------------- */

static tdm_queue *open_q(size_t capacity, size_t max_message, unsigned flags) {
  tdm_queue_options o = { .flags = flags, .capacity = capacity, .max_message = max_message };
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_open(&q, &o));
  CHECK(q != NULL);
  return q;
}

/* A message that says who made it and checks itself: producer, sequence, length, then bytes
 * derived from the three, so any torn, mixed or misdelivered message is caught. */
struct msg_head {
  uint32_t producer;
  uint32_t seq;
  uint64_t len;
  uint64_t sum;
};

static uint8_t fill_byte(uint32_t producer, uint32_t seq, size_t i) {
  return (uint8_t)(producer * 131u + seq * 7u + i * 13u + (i >> 8));
}

/* Builds message (producer, seq) of `len` bytes (at least sizeof(struct msg_head)) in buf. */
static void make_msg(uint8_t *buf, size_t len, uint32_t producer, uint32_t seq) {
  struct msg_head h = { producer, seq, len, 0 };
  for (size_t i = sizeof h; i < len; i++) {
    buf[i] = fill_byte(producer, seq, i);
    h.sum += buf[i];
  }
  memcpy(buf, &h, sizeof h);
}

/* Checks a message made by make_msg() and returns its head. */
static struct msg_head check_msg(const uint8_t *buf, size_t len) {
  struct msg_head h;
  CHECK(len >= sizeof h);
  memcpy(&h, buf, sizeof h);
  CHECK_EQ(h.len, len);
  uint64_t sum = 0;
  for (size_t i = sizeof h; i < len; i++) {
    if (buf[i] != fill_byte(h.producer, h.seq, i))
      tdm_test_fail(__FILE__, __LINE__, "message %u/%u corrupt at byte %zu", h.producer, h.seq, i);
    sum += buf[i];
  }
  CHECK_EQ(sum, h.sum);
  return h;
}

static void put_msg(tdm_queue *q, size_t len, uint32_t producer, uint32_t seq) {
  uint8_t *buf = malloc(len);
  CHECK(buf != NULL);
  make_msg(buf, len, producer, seq);
  CHECK_OK(tdm_queue_put(q, buf, len, TDM_FOREVER));
  free(buf);
}

static struct msg_head get_msg(tdm_queue *q) {
  void *m = NULL;
  size_t n = 0;
  CHECK_OK(tdm_queue_get(q, &m, &n, TDM_S(30)));
  struct msg_head h = check_msg(m, n);
  tdm_free(m);
  return h;
}

static void wait_ok(tdm_process *p) {
  CHECK_OK(tdm_process_join(p, TDM_S(60)));
  int code = -1;
  CHECK_OK(tdm_process_exitcode(p, &code));
  CHECK_EQ(code, 0);
  CHECK_OK(tdm_process_close(p));
}

/* ---- Basics ---------------------------------------------------------------------------------- */

TEST(order_and_sizes_within_a_process) {
  tdm_queue *q = open_q(64, 300000, 0);
  static const size_t sizes[] = { 0, 1, 24, 95, 96, 97, 128, 4096, 65537, 300000 };
  size_t n = sizeof sizes / sizeof sizes[0];
  uint8_t *buf = malloc(300000);
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < sizes[i]; j++)
      buf[j] = (uint8_t)(i + j);
    CHECK_OK(tdm_queue_put(q, buf, sizes[i], 0));
  }
  CHECK_EQ(tdm_queue_size(q), n);
  CHECK(!tdm_queue_empty(q));
  for (size_t i = 0; i < n; i++) {
    void *m = NULL;
    size_t len = 99;
    CHECK_OK(tdm_queue_get(q, &m, &len, 0));
    CHECK(m != NULL);
    CHECK_EQ(len, sizes[i]);
    for (size_t j = 0; j < len; j++)
      CHECK_EQ(((uint8_t *)m)[j], (uint8_t)(i + j));
    tdm_free(m);
  }
  CHECK(tdm_queue_empty(q));
  tdm_queue_stats st;
  tdm_queue_stats_get(q, &st);
  CHECK_EQ(st.puts, n);
  CHECK_EQ(st.gets, n);
  CHECK_EQ(st.lost, 0);
  CHECK_EQ(st.bytes, 0); /* every arena block went back */
  free(buf);
  CHECK_OK(tdm_queue_close(q));
}

TEST(recv_into_a_small_buffer_reports_the_size_and_loses_nothing) {
  tdm_queue *q = open_q(8, 10000, 0);
  uint8_t big[5000], out[5000];
  memset(big, 0x5a, sizeof big);
  CHECK_OK(tdm_queue_put(q, big, 5000, 0));
  CHECK_OK(tdm_queue_put(q, "abc", 3, 0));
  size_t len = 0;
  CHECK_ERR(tdm_queue_recv(q, out, 10, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 5000);
  CHECK_ERR(tdm_queue_recv(q, NULL, 0, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 5000);
  CHECK_EQ(tdm_queue_size(q), 2);
  CHECK_OK(tdm_queue_recv(q, out, sizeof out, &len, 0));
  CHECK_EQ(len, 5000);
  CHECK(memcmp(out, big, 5000) == 0);
  CHECK_ERR(tdm_queue_recv(q, out, 2, &len, 0), -EMSGSIZE);
  CHECK_EQ(len, 3);
  CHECK_OK(tdm_queue_recv(q, out, 3, &len, 0));
  CHECK(memcmp(out, "abc", 3) == 0);
  CHECK_OK(tdm_queue_put(q, NULL, 0, 0));
  CHECK_OK(tdm_queue_recv(q, NULL, 0, &len, 0));
  CHECK_EQ(len, 0);
  CHECK_OK(tdm_queue_close(q));
}

TEST(capacity_timeouts_and_back_pressure) {
  tdm_queue *q = open_q(5, 64, 0); /* rounded up to 8 */
  CHECK_EQ(tdm_queue_capacity(q), 8);
  CHECK_EQ(tdm_queue_max_message(q), 64);
  uint8_t buf[65] = { 0 };
  CHECK_ERR(tdm_queue_put(q, buf, 65, 0), -EMSGSIZE);
  for (int i = 0; i < 8; i++)
    CHECK_OK(tdm_queue_put(q, &i, sizeof i, 0));
  CHECK(tdm_queue_full(q));
  CHECK_ERR(tdm_queue_put(q, buf, 1, 0), -ETIMEDOUT);
  int64_t t0 = tdm_clock_now();
  CHECK_ERR(tdm_queue_put(q, buf, 1, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  int v = 0;
  size_t len = 0;
  CHECK_OK(tdm_queue_recv(q, &v, sizeof v, &len, 0));
  CHECK_EQ(v, 0);
  CHECK_OK(tdm_queue_put(q, buf, 1, 0)); /* room again */
  for (int i = 1; i < 8; i++) {
    CHECK_OK(tdm_queue_recv(q, &v, sizeof v, &len, 0));
    CHECK_EQ(v, i);
  }
  CHECK_OK(tdm_queue_recv(q, buf, sizeof buf, &len, 0));
  CHECK_ERR(tdm_queue_recv(q, buf, sizeof buf, &len, 0), -ETIMEDOUT);
  t0 = tdm_clock_now();
  CHECK_ERR(tdm_queue_recv(q, buf, sizeof buf, &len, TDM_MS(30)), -ETIMEDOUT);
  CHECK(tdm_clock_now() - t0 >= TDM_MS(30));
  CHECK_ERR(tdm_queue_wait_ready(q, 0), -ETIMEDOUT);
  CHECK_ERR(tdm_queue_wait_ready(q, TDM_MS(10)), -ETIMEDOUT);
  CHECK_OK(tdm_queue_close(q));
}

static void blocked_putter(void *arg) {
  tdm_queue *q = arg;
  for (int i = 0; i < 100; i++)
    CHECK_OK(tdm_queue_put(q, &i, sizeof i, TDM_FOREVER));
}

TEST(a_full_queue_makes_a_putter_wait_until_a_get) {
  tdm_queue *q = open_q(2, 16, 0);
  tdm_thread *t = tdm_test_thread(blocked_putter, q);
  for (int i = 0; i < 100; i++) {
    int v = -1;
    size_t len = 0;
    CHECK_OK(tdm_queue_recv(q, &v, sizeof v, &len, TDM_S(20)));
    CHECK_EQ(v, i);
    if (i % 10 == 0) tdm_clock_sleep(TDM_MS(2)); /* let the putter find the ring full */
  }
  CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  CHECK_OK(tdm_queue_close(q));
}

TEST(large_messages_wait_for_arena_space) {
  /* Room in the arena for one 100 kB message at a time. */
  tdm_queue_options o = { .capacity = 16, .max_message = 100000, .max_bytes = 150000 };
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_open(&q, &o));
  uint8_t *a = malloc(100000);
  make_msg(a, 100000, 1, 0);
  CHECK_OK(tdm_queue_put(q, a, 100000, 0));
  CHECK_ERR(tdm_queue_put(q, a, 100000, 0), -ETIMEDOUT);
  CHECK_ERR(tdm_queue_put(q, a, 100000, TDM_MS(20)), -ETIMEDOUT);
  tdm_queue_stats st;
  tdm_queue_stats_get(q, &st);
  CHECK(st.bytes >= 100000 && st.bytes < 150000); /* the failed puts left nothing behind */
  CHECK_OK(tdm_queue_put(q, "small", 5, 0));      /* inline messages still pass */
  char small[8];
  size_t len = 0;
  get_msg(q);
  CHECK_OK(tdm_queue_recv(q, small, sizeof small, &len, 0));
  CHECK_EQ(len, 5);
  CHECK_OK(tdm_queue_put(q, a, 100000, 0));
  free(a);
  get_msg(q);
  CHECK_OK(tdm_queue_close(q));
}

TEST(bad_options_and_bad_segments) {
  tdm_queue *q = NULL;
  tdm_queue_options o = { .flags = 0x80 };
  CHECK_ERR(tdm_queue_open(&q, &o), -EINVAL);
  o = (tdm_queue_options){ .max_message = 1000000, .max_bytes = 1000 };
  CHECK_ERR(tdm_queue_open(&q, &o), -EINVAL);
  o = (tdm_queue_options){ .max_processes = 4096 };
  CHECK_ERR(tdm_queue_open(&q, &o), -EINVAL);
  o = (tdm_queue_options){ .name = "a/b" };
  CHECK_ERR(tdm_queue_open(&q, &o), -EINVAL);
  CHECK(q == NULL);
  /* A segment that holds no queue. */
  char name[64];
  snprintf(name, sizeof name, "/tdm-test-%d-notq", (int)getpid());
  tdm_shm *s = NULL;
  CHECK_OK(tdm_shm_create(&s, name, 65536, NULL));
  CHECK_ERR(tdm_queue_attach(&q, name), -EINVAL);
  CHECK_ERR(tdm_queue_attach_fd(&q, tdm_shm_fd(s)), -EINVAL);
  CHECK_OK(tdm_shm_close(s));
  CHECK_ERR(tdm_queue_attach(&q, name), -ENOENT);
  CHECK_ERR(tdm_queue_attach_fd(&q, 999), -EBADF);
  CHECK(q == NULL);
  CHECK_OK(tdm_queue_close(NULL));
}

static void put_on_null(void *arg) {
  (void)arg;
  tdm_queue_put(NULL, "x", 1, 0);
}

TEST(misuse_aborts) {
  EXPECT_ABORT(put_on_null, NULL, "tdm_queue_put");
}

TEST(open_and_close_leave_no_descriptor) {
  int before = tdm_test_count_fds();
  for (int i = 0; i < 200; i++) {
    tdm_queue *q = open_q(16, 4096, TDM_QUEUE_JOINABLE);
    CHECK_OK(tdm_queue_put(q, "x", 1, 0));
    tdm_queue *q2 = NULL;
    CHECK_OK(tdm_queue_attach_fd(&q2, tdm_queue_fd(q)));
    CHECK_EQ(tdm_queue_size(q2), 1);
    CHECK_OK(tdm_queue_close(q2));
    CHECK_OK(tdm_queue_close(q));
  }
  CHECK_EQ(tdm_test_count_fds(), before);
}

/* Fails allocations after the first `budget` (for the -ENOMEM case). */
static int alloc_budget;
static void *failing_alloc(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  if (alloc_budget-- <= 0) return NULL;
  return realloc(ptr, size);
}

TEST(a_failed_allocation_leaves_the_message_in_the_queue) {
  tdm_queue *q = open_q(8, 8192, 0);
  uint8_t big[8000];
  make_msg(big, sizeof big, 3, 4);
  CHECK_OK(tdm_queue_put(q, big, sizeof big, 0));
  tdm_allocator a = { failing_alloc, NULL };
  tdm_allocator_set(&a);
  void *m = NULL;
  size_t len = 0;
  alloc_budget = 0; /* not even the first buffer */
  CHECK_ERR(tdm_queue_get(q, &m, &len, 0), -ENOMEM);
  alloc_budget = 1; /* the first (small) buffer, not the one the message needs */
  CHECK_ERR(tdm_queue_get(q, &m, &len, 0), -ENOMEM);
  CHECK_EQ(tdm_queue_size(q), 1);
  tdm_allocator_set(NULL);
  struct msg_head h = get_msg(q);
  CHECK_EQ(h.producer, 3);
  CHECK_EQ(h.seq, 4);
  CHECK_OK(tdm_queue_close(q));
}

/* ---- Shutdown ----------------------------------------------------------------------------------
 */

static int got_total; /* messages the threads of a case took */

static void getter_until_eof(void *arg) {
  tdm_queue *q = arg;
  uint8_t buf[64];
  size_t len;
  int r;
  while ((r = tdm_queue_recv(q, buf, sizeof buf, &len, TDM_FOREVER)) == 0)
    __atomic_fetch_add(&got_total, 1, __ATOMIC_RELAXED);
  CHECK_ERR(r, TDM_EEOF);
}

TEST(shutdown_drains_then_ends_and_wakes_everyone) {
  tdm_queue *q = open_q(4, 64, 0);
  tdm_thread *getters[3];
  for (int i = 0; i < 3; i++)
    getters[i] = tdm_test_thread(getter_until_eof, q);
  for (int i = 0; i < 10; i++)
    CHECK_OK(tdm_queue_put(q, &i, sizeof i, TDM_FOREVER));
  tdm_clock_sleep(TDM_MS(20)); /* the getters are asleep on an empty queue */
  CHECK_OK(tdm_queue_shutdown(q));
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_thread_join(getters[i], TDM_S(20)));
  CHECK_EQ(got_total, 10);
  CHECK_ERR(tdm_queue_put(q, "x", 1, 0), -EPIPE);
  CHECK_OK(tdm_queue_shutdown(q)); /* twice is harmless */
  CHECK(tdm_queue_ready(q));       /* a get would not block: it would end */
  CHECK_OK(tdm_queue_wait_ready(q, 0));
  CHECK_OK(tdm_queue_close(q));
}

TEST(messages_put_before_shutdown_are_still_delivered) {
  tdm_queue *q = open_q(8, 1000, 0);
  uint8_t big[500];
  make_msg(big, sizeof big, 1, 1);
  CHECK_OK(tdm_queue_put(q, big, sizeof big, 0));
  CHECK_OK(tdm_queue_put(q, "ab", 2, 0));
  CHECK_OK(tdm_queue_shutdown(q));
  get_msg(q);
  char buf[8];
  size_t len;
  CHECK_OK(tdm_queue_recv(q, buf, sizeof buf, &len, 0));
  CHECK_EQ(len, 2);
  CHECK_ERR(tdm_queue_recv(q, buf, sizeof buf, &len, 0), TDM_EEOF);
  CHECK_ERR(tdm_queue_recv(q, buf, sizeof buf, &len, TDM_FOREVER), TDM_EEOF);
  CHECK_OK(tdm_queue_close(q));
}

static void putter_until_pipe(void *arg) {
  tdm_queue *q = arg;
  int r;
  intptr_t n = 0;
  while ((r = tdm_queue_put(q, &n, sizeof n, TDM_FOREVER)) == 0)
    n++;
  CHECK_ERR(r, -EPIPE);
  got_total = (int)n;
}

TEST(shutdown_wakes_a_putter_blocked_on_a_full_queue) {
  tdm_queue *q = open_q(4, 64, 0);
  tdm_thread *t = tdm_test_thread(putter_until_pipe, q);
  WAIT_UNTIL(tdm_queue_full(q));
  tdm_clock_sleep(TDM_MS(20));
  CHECK_OK(tdm_queue_shutdown(q));
  CHECK_OK(tdm_thread_join(t, TDM_S(20)));
  CHECK_EQ(got_total, 4);
  for (int i = 0; i < 4; i++) {
    intptr_t v;
    size_t len;
    CHECK_OK(tdm_queue_recv(q, &v, sizeof v, &len, 0));
    CHECK_EQ(v, i);
  }
  CHECK_OK(tdm_queue_close(q));
}

/* ---- JoinableQueue ------------------------------------------------------------------------------
 */

static void worker_task_done(void *arg) {
  tdm_queue *q = arg;
  int v;
  size_t len;
  while (tdm_queue_recv(q, &v, sizeof v, &len, TDM_FOREVER) == 0) {
    tdm_clock_sleep(TDM_US(200));
    CHECK_OK(tdm_queue_task_done(q));
  }
}

TEST(joinable_queue_join_task_done_and_over_release) {
  tdm_queue *q = open_q(16, 64, TDM_QUEUE_JOINABLE);
  CHECK_OK(tdm_queue_join(q, 0)); /* nothing put: done at once */
  CHECK_ERR(tdm_queue_task_done(q), TDM_EOVERRELEASE);
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_queue_put(q, &i, sizeof i, 0));
  CHECK_EQ(tdm_queue_unfinished(q), 3);
  CHECK_ERR(tdm_queue_join(q, 0), -ETIMEDOUT);
  CHECK_ERR(tdm_queue_join(q, TDM_MS(20)), -ETIMEDOUT);
  int v;
  size_t len;
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_queue_recv(q, &v, sizeof v, &len, 0));
  CHECK_EQ(tdm_queue_unfinished(q), 3); /* taken is not done */
  for (int i = 0; i < 3; i++)
    CHECK_OK(tdm_queue_task_done(q));
  CHECK_ERR(tdm_queue_task_done(q), TDM_EOVERRELEASE);
  CHECK_OK(tdm_queue_join(q, 0));

  tdm_thread *w[2] = { tdm_test_thread(worker_task_done, q), tdm_test_thread(worker_task_done, q) };
  for (int i = 0; i < 200; i++)
    CHECK_OK(tdm_queue_put(q, &i, sizeof i, TDM_FOREVER));
  CHECK_OK(tdm_queue_join(q, TDM_S(30)));
  CHECK_EQ(tdm_queue_unfinished(q), 0);
  CHECK_OK(tdm_queue_shutdown(q));
  for (int i = 0; i < 2; i++)
    CHECK_OK(tdm_thread_join(w[i], TDM_S(20)));
  CHECK_OK(tdm_queue_close(q));

  tdm_queue *plain = open_q(4, 64, 0);
  CHECK_ERR(tdm_queue_task_done(plain), -EINVAL);
  CHECK_ERR(tdm_queue_join(plain, 0), -EINVAL);
  CHECK_EQ(tdm_queue_unfinished(plain), 0);
  CHECK_OK(tdm_queue_close(plain));
}

static int joinable_child(void *arg, size_t size) {
  (void)size;
  tdm_queue *q = *(tdm_queue **)arg;
  int v;
  size_t len;
  while (tdm_queue_recv(q, &v, sizeof v, &len, TDM_FOREVER) == 0)
    CHECK_OK(tdm_queue_task_done(q));
  return 0;
}

TEST(joinable_queue_across_processes) {
  tdm_queue *q = open_q(8, 64, TDM_QUEUE_JOINABLE);
  tdm_process_options o = { .start = TDM_START_FORK };
  tdm_process *p[2];
  for (int i = 0; i < 2; i++)
    CHECK_OK(tdm_process_start(&p[i], joinable_child, &q, sizeof q, &o));
  for (int i = 0; i < 500; i++)
    CHECK_OK(tdm_queue_put(q, &i, sizeof i, TDM_FOREVER));
  CHECK_OK(tdm_queue_join(q, TDM_S(30)));
  CHECK_OK(tdm_queue_shutdown(q));
  for (int i = 0; i < 2; i++)
    wait_ok(p[i]);
  CHECK_OK(tdm_queue_close(q));
}

/* A getter child: says it waits (1), takes one message into a 64 MiB buffer, says it has it (2). */
struct lost_getter {
  tdm_queue *q;
  uint32_t state;
  uint8_t *buf;
};

static void lost_getter(void *arg) {
  struct lost_getter *g = arg;
  size_t len;
  __atomic_store_n(&g->state, 1, __ATOMIC_RELEASE);
  CHECK_OK(tdm_queue_recv(g->q, g->buf, (size_t)64 << 20, &len, TDM_FOREVER));
  __atomic_store_n(&g->state, 2, __ATOMIC_RELEASE);
  pause();
}

TEST_T(joinable_message_lost_with_a_killed_getter_counts_as_done, 120) {
  /* A getter is killed while it copies a 64 MiB message out (that takes milliseconds): the
   * message is lost, and join must not wait for it. Where the kill lands is up to the
   * scheduler, so the case tries again until one landed inside the copy. */
  size_t big = (size_t)64 << 20;
  tdm_queue_options o = { .flags = TDM_QUEUE_JOINABLE, .capacity = 4, .max_message = big };
  struct lost_getter *g = tdm_test_shared(sizeof *g);
  CHECK_OK(tdm_queue_open(&g->q, &o));
  uint8_t *msg = malloc(big);
  g->buf = malloc(big);
  CHECK(msg != NULL && g->buf != NULL);
  memset(msg, 0x3c, big);
  memset(g->buf, 0, big); /* touched, so that the child's copy is only the copy */
  bool lost = false;
  for (int round = 0; round < 40 && !lost; round++) {
    g->state = 0;
    pid_t child = tdm_test_fork(lost_getter, g);
    WAIT_UNTIL(__atomic_load_n(&g->state, __ATOMIC_ACQUIRE) == 1);
    tdm_clock_sleep(TDM_MS(1)); /* the child is asleep in its get */
    CHECK_OK(tdm_queue_put(g->q, msg, big, TDM_S(10)));
    CHECK_EQ(tdm_queue_unfinished(g->q), 1);
    tdm_clock_sleep(TDM_US(500 + 250 * (round % 8)));
    tdm_test_kill_and_reap(child);
    CHECK(tdm_queue_recover(g->q) >= 0);
    tdm_queue_stats st;
    tdm_queue_stats_get(g->q, &st);
    if (st.lost == 1) {
      lost = true; /* killed inside the get: the message is gone and counts as done */
      CHECK(tdm_queue_empty(g->q));
      CHECK_EQ(tdm_queue_unfinished(g->q), 0);
      CHECK_OK(tdm_queue_join(g->q, 0));
      CHECK_ERR(tdm_queue_task_done(g->q), TDM_EOVERRELEASE);
      CHECK_EQ(st.bytes, 0);
    } else if (__atomic_load_n(&g->state, __ATOMIC_ACQUIRE) == 2) {
      CHECK_OK(tdm_queue_task_done(g->q)); /* the child had it whole: done on its behalf */
    } else {
      size_t len; /* killed before it took the message: take it here */
      CHECK_OK(tdm_queue_recv(g->q, g->buf, big, &len, 0));
      CHECK_EQ(len, big);
      CHECK_OK(tdm_queue_task_done(g->q));
    }
    CHECK_OK(tdm_queue_join(g->q, 0));
  }
  CHECK(lost);
  free(msg);
  free(g->buf);
  CHECK_OK(tdm_queue_close(g->q));
}

/* ---- Across processes
 * ---------------------------------------------------------------------------- */

/* What a child gets to find the queue: the descriptor number (pass_fds keeps it) or a name. */
struct where {
  int fd;
  int reply_fd; /* a second queue, reached by descriptor */
  char name[64];
  uint32_t producer;
  uint32_t count;
  size_t len;
};

static tdm_queue *reach(const struct where *w) {
  tdm_queue *q = NULL;
  if (w->name[0] != '\0')
    CHECK_OK(tdm_queue_attach(&q, w->name));
  else
    CHECK_OK(tdm_queue_attach_fd(&q, w->fd));
  return q;
}

static int child_producer(void *arg, size_t size) {
  CHECK_EQ(size, sizeof(struct where));
  const struct where *w = arg;
  tdm_queue *q = reach(w);
  for (uint32_t i = 0; i < w->count; i++)
    put_msg(q, w->len, w->producer, i);
  CHECK_OK(tdm_queue_close(q));
  return 0;
}

static int child_consumer_echo(void *arg, size_t size) {
  (void)size;
  const struct where *w = arg;
  tdm_queue *q = reach(w), *reply = NULL;
  CHECK_OK(tdm_queue_attach_fd(&reply, w->reply_fd));
  /* Takes `count` messages and answers each, checked, as producer + 1000. */
  for (uint32_t i = 0; i < w->count; i++) {
    struct msg_head h = get_msg(q);
    CHECK_EQ(h.seq, i);
    put_msg(reply, 40, h.producer + 1000, h.seq);
  }
  CHECK_OK(tdm_queue_close(reply));
  CHECK_OK(tdm_queue_close(q));
  return 0;
}

static void across_method(tdm_start_method m, bool named) {
  tdm_queue_options o = { .capacity = 8, .max_message = 70000 };
  char name[64] = "";
  if (named) {
    snprintf(name, sizeof name, "/tdm-test-%d-q-%d", (int)getpid(), (int)m);
    o.name = name;
  }
  tdm_queue *q = NULL, *reply = open_q(4, 64, 0);
  CHECK_OK(tdm_queue_open(&q, &o));
  CHECK(named ? tdm_queue_name(q) != NULL : tdm_queue_name(q) == NULL);
  struct where w = {
    .fd = tdm_queue_fd(q), .reply_fd = tdm_queue_fd(reply), .producer = 7, .count = 30, .len = 60000
  };
  snprintf(w.name, sizeof w.name, "%s", name);
  int fds[2] = { w.reply_fd, w.fd };
  tdm_process_options po = { .start = m, .pass_fds = fds, .n_pass_fds = named ? 1 : 2 };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, child_producer, &w, sizeof w, &po));
  for (uint32_t i = 0; i < w.count; i++) {
    struct msg_head h = get_msg(q);
    CHECK_EQ(h.producer, 7);
    CHECK_EQ(h.seq, i);
  }
  wait_ok(p);
  /* And the other way round: the child takes and answers. */
  CHECK_OK(tdm_process_start(&p, child_consumer_echo, &w, sizeof w, &po));
  for (uint32_t i = 0; i < w.count; i++) {
    put_msg(q, i % 2 ? 500 : 50000, 3, i);
    struct msg_head h = get_msg(reply);
    CHECK_EQ(h.producer, 1003);
    CHECK_EQ(h.seq, i);
  }
  wait_ok(p);
  CHECK_OK(tdm_queue_close(reply));
  CHECK_OK(tdm_queue_close(q));
}

TEST(fork_child_uses_the_inherited_handle) {
  tdm_queue *q = open_q(16, 4096, 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    for (uint32_t i = 0; i < 100; i++)
      put_msg(q, 100 + i * 30, 1, i);
    _exit(0);
  }
  for (uint32_t i = 0; i < 100; i++)
    CHECK_EQ(get_msg(q).seq, i);
  tdm_test_wait_ok(pid);
  CHECK_OK(tdm_queue_close(q));
}

TEST_T(children_reach_the_queue_under_every_method, 120) {
  across_method(TDM_START_FORK, false);
  across_method(TDM_START_SPAWN, false);
  across_method(TDM_START_FORKSERVER, false);
  across_method(TDM_START_SPAWN, true);
}

static int child_put_and_exit(void *arg, size_t size) {
  (void)size;
  tdm_queue *q = reach(arg);
  for (uint32_t i = 0; i < 50; i++)
    put_msg(q, i == 25 ? 200000 : 64, 9, i);
  /* No close: the process ends with its messages in the queue. */
  return 0;
}

TEST(joining_a_producer_that_left_data_in_the_queue_never_deadlocks) {
  /* Python's documented pitfall: a process that put items cannot be joined until they are
   * taken, because a feeder thread still holds them. Here a put is finished when it returns. */
  tdm_queue_options o = { .capacity = 64, .max_message = 200000 };
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_open(&q, &o));
  struct where w = { .fd = tdm_queue_fd(q) };
  int fd = w.fd;
  tdm_process_options po = { .start = TDM_START_SPAWN, .pass_fds = &fd, .n_pass_fds = 1 };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, child_put_and_exit, &w, sizeof w, &po));
  wait_ok(p); /* before a single get */
  CHECK_EQ(tdm_queue_size(q), 50);
  for (uint32_t i = 0; i < 50; i++)
    CHECK_EQ(get_msg(q).seq, i);
  CHECK_OK(tdm_queue_close(q));
}

TEST_T(sixty_four_mib_messages_between_processes, 120) {
  size_t big = (size_t)64 << 20;
  tdm_queue_options o = { .capacity = 4, .max_message = big };
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_open(&q, &o));
  struct where w = { .fd = tdm_queue_fd(q), .producer = 5, .count = 3, .len = big };
  int fd = w.fd;
  tdm_process_options po = { .start = TDM_START_FORK, .pass_fds = &fd, .n_pass_fds = 1 };
  tdm_process *p;
  CHECK_OK(tdm_process_start(&p, child_producer, &w, sizeof w, &po));
  for (uint32_t i = 0; i < 3; i++) {
    struct msg_head h = get_msg(q);
    CHECK_EQ(h.seq, i);
  }
  wait_ok(p);
  tdm_queue_stats st;
  tdm_queue_stats_get(q, &st);
  CHECK_EQ(st.bytes, 0);
  CHECK_OK(tdm_queue_close(q));
}

/* ---- Many producers and consumers ---------------------------------------------------------------
 */

#define MIX_PRODUCERS 6 /* 3 processes, 3 threads */
#define MIX_PER       3000
#define MIX_CONSUMERS 4 /* 2 processes, 2 threads */

/* Shared by every process of the case: a mark per message and the last sequence each consumer
 * saw from each producer (for the order check). */
struct mix {
  tdm_queue *q;
  uint8_t seen[MIX_PRODUCERS][MIX_PER];
  uint64_t taken;
  uint64_t bytes_sum;
};

static size_t mix_len(uint32_t producer, uint32_t seq) {
  /* Mostly small (inline), some larger (arena). */
  return seq % 97 == 0 ? 5000 + producer * 100 : 32 + (seq * 7 + producer) % 80;
}

static void mix_produce(struct mix *m, uint32_t producer) {
  for (uint32_t i = 0; i < MIX_PER; i++)
    put_msg(m->q, mix_len(producer, i), producer, i);
}

static void mix_consume(struct mix *m) {
  int64_t last[MIX_PRODUCERS];
  for (int i = 0; i < MIX_PRODUCERS; i++)
    last[i] = -1;
  uint8_t *buf = malloc(8192);
  size_t len;
  int r;
  while ((r = tdm_queue_recv(m->q, buf, 8192, &len, TDM_S(60))) == 0) {
    struct msg_head h = check_msg(buf, len);
    CHECK(h.producer < MIX_PRODUCERS && h.seq < MIX_PER);
    CHECK_EQ(len, mix_len(h.producer, h.seq));
    /* FIFO: one consumer sees each producer's messages in the order they were put. */
    CHECK((int64_t)h.seq > last[h.producer]);
    last[h.producer] = h.seq;
    uint8_t was = __atomic_exchange_n(&m->seen[h.producer][h.seq], 1, __ATOMIC_ACQ_REL);
    if (was != 0)
      tdm_test_fail(__FILE__, __LINE__, "message %u/%u delivered twice", h.producer, h.seq);
    __atomic_fetch_add(&m->taken, 1, __ATOMIC_RELAXED);
  }
  CHECK_ERR(r, TDM_EEOF);
  free(buf);
}

struct mix_arg {
  struct mix *m;
  uint32_t id;
};

static void mix_proc(void *arg) {
  struct mix_arg *a = arg;
  if (a->id == UINT32_MAX)
    mix_consume(a->m);
  else
    mix_produce(a->m, a->id);
}

TEST_T(many_producers_and_consumers_threads_and_processes_exactly_once_in_order, 180) {
  struct mix *m = tdm_test_shared(sizeof *m);
  m->q = open_q(64, 8192, 0);
  struct mix_arg args[MIX_PRODUCERS + MIX_CONSUMERS];
  pid_t pids[8];
  int np = 0;
  tdm_thread *threads[8];
  int nt = 0;
  /* Every process is forked before the first thread starts: a fork while other threads run
   * could copy an allocator lock one of them holds (ASan's is not fork-safe). */
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t i = 0; i < MIX_CONSUMERS; i++) {
      args[i] = (struct mix_arg){ m, UINT32_MAX };
      if (i % 2 == 0 && pass == 0)
        pids[np++] = tdm_test_fork(mix_proc, &args[i]);
      else if (i % 2 == 1 && pass == 1)
        threads[nt++] = tdm_test_thread(mix_proc, &args[i]);
    }
    for (uint32_t p = 0; p < MIX_PRODUCERS; p++) {
      struct mix_arg *a = &args[MIX_CONSUMERS + p];
      *a = (struct mix_arg){ m, p };
      if (p % 2 == 0 && pass == 0)
        pids[np++] = tdm_test_fork(mix_proc, a);
      else if (p % 2 == 1 && pass == 1)
        threads[nt++] = tdm_test_thread(mix_proc, a);
    }
  }
  /* Producers first (they are the last in each list), then shut down, then the consumers. */
  for (int i = nt - 1; i >= 0; i--)
    if (i >= MIX_CONSUMERS / 2) CHECK_OK(tdm_thread_join(threads[i], TDM_S(120)));
  for (int i = np - 1; i >= MIX_CONSUMERS / 2; i--)
    tdm_test_wait_ok(pids[i]);
  CHECK_OK(tdm_queue_shutdown(m->q));
  for (int i = 0; i < MIX_CONSUMERS / 2; i++) {
    CHECK_OK(tdm_thread_join(threads[i], TDM_S(60)));
    tdm_test_wait_ok(pids[i]);
  }
  CHECK_EQ(m->taken, MIX_PRODUCERS * MIX_PER);
  for (int p = 0; p < MIX_PRODUCERS; p++)
    for (int i = 0; i < MIX_PER; i++)
      if (!m->seen[p][i]) tdm_test_fail(__FILE__, __LINE__, "message %d/%d never arrived", p, i);
  tdm_queue_stats st;
  tdm_queue_stats_get(m->q, &st);
  CHECK_EQ(st.puts, MIX_PRODUCERS * MIX_PER);
  CHECK_EQ(st.lost, 0);
  CHECK_EQ(st.bytes, 0);
  CHECK_OK(tdm_queue_close(m->q));
}

/* ---- Processes killed inside put and get --------------------------------------------------------
 */

#define KILL_ROUNDS_MIN 40  /* rounds at least */
#define KILL_ROUNDS_MAX 400 /* and at most, until recoveries have been seen */
#define KILL_PER        300 /* distinct messages a producer cycles through */

/*
 * The messages are made once, before any fork, so that the children spend their time inside
 * put and get (where the kills must land), not building and checking messages: a message is
 * a head (round, sequence) and a body that memcmp() checks against the table.
 */
struct killbox {
  tdm_queue *q;
  uint32_t round;
  uint64_t taken;
  uint8_t *bodies[KILL_PER];
};

struct kill_head {
  uint32_t round, seq;
};

static size_t kill_len(uint32_t seq) {
  /* A third go through the arena; the others are copied inside their slot. */
  return seq % 3 == 0 ? 20000 + seq : 100 + (seq * 37) % 1900;
}

static void kill_check(struct killbox *k, const uint8_t *buf, size_t len) {
  struct kill_head h;
  CHECK(len >= sizeof h);
  memcpy(&h, buf, sizeof h);
  CHECK(h.round <= k->round && h.seq < KILL_PER);
  CHECK_EQ(len, kill_len(h.seq));
  if (memcmp(buf + sizeof h, k->bodies[h.seq] + sizeof h, len - sizeof h) != 0)
    tdm_test_fail(__FILE__, __LINE__, "message %u/%u corrupt", h.round, h.seq);
}

static void kill_producer(void *arg) {
  struct killbox *k = arg;
  for (uint32_t i = 0;; i = (i + 1) % KILL_PER) {
    struct kill_head h = { k->round, i };
    memcpy(k->bodies[i], &h, sizeof h); /* this process's copy of the table */
    CHECK_OK(tdm_queue_put(k->q, k->bodies[i], kill_len(i), TDM_FOREVER));
  }
}

static void kill_consumer(void *arg) {
  struct killbox *k = arg;
  uint8_t *buf = malloc(32768);
  size_t len;
  for (;;) {
    CHECK_OK(tdm_queue_recv(k->q, buf, 32768, &len, TDM_FOREVER));
    kill_check(k, buf, len);
    __atomic_fetch_add(&k->taken, 1, __ATOMIC_RELAXED);
  }
}

TEST_T(producers_and_consumers_killed_at_random_points_never_wedge_the_queue, 300) {
  struct killbox *k = tdm_test_shared(sizeof *k);
  for (uint32_t i = 0; i < KILL_PER; i++) {
    k->bodies[i] = malloc(kill_len(i));
    for (size_t j = 0; j < kill_len(i); j++)
      k->bodies[i][j] = (uint8_t)(i * 7 + j * 13 + (j >> 8));
  }
  tdm_queue_options o = {
    .capacity = 16, .slot_payload = 2048, .max_message = 32768, .max_bytes = 200000
  };
  CHECK_OK(tdm_queue_open(&k->q, &o));
  uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15u;
  int kills = 0;
  uint32_t round = 0;
  tdm_queue_stats st;
  uint8_t *buf = malloc(32768);
  for (;; round++) {
    tdm_queue_stats_get(k->q, &st);
    if (round >= KILL_ROUNDS_MAX || (round >= KILL_ROUNDS_MIN && st.recoveries >= 3)) break;
    k->round = round;
    pid_t prod = tdm_test_fork(kill_producer, k);
    pid_t cons = tdm_test_fork(kill_consumer, k);
    /* Let them run for a random while (0.1 - 10 ms), then kill one or both. */
    tdm_clock_sleep(TDM_US(100 + tdm_test_rand(&seed) % 10000));
    unsigned which = (unsigned)(tdm_test_rand(&seed) % 3);
    if (which != 1) {
      tdm_test_kill_and_reap(prod);
      kills++;
    }
    if (which != 0) {
      tdm_test_kill_and_reap(cons);
      kills++;
    }
    /* The other one stops cleanly, as the case itself could: a kill is then the only trouble. */
    if (which == 0) tdm_test_kill_and_reap(cons);
    if (which == 1) tdm_test_kill_and_reap(prod);
    size_t len;
    while (tdm_queue_size(k->q) > 0) {
      /* What is left may be only a message lost with the producer: then the get finds it
       * recovered, passes over it and waits in vain. */
      int r = tdm_queue_recv(k->q, buf, 32768, &len, TDM_S(2));
      if (r == -ETIMEDOUT) break;
      CHECK_OK(r);
      kill_check(k, buf, len);
    }
    CHECK(tdm_queue_empty(k->q));
    /* A large message and a small one from here go through: ring and arena are free again. */
    CHECK_OK(tdm_queue_put(k->q, k->bodies[0], kill_len(0), TDM_S(10)));
    CHECK_OK(tdm_queue_put(k->q, k->bodies[1], kill_len(1), TDM_S(10)));
    CHECK_OK(tdm_queue_recv(k->q, buf, 32768, &len, TDM_S(10)));
    CHECK_EQ(len, kill_len(0));
    CHECK_OK(tdm_queue_recv(k->q, buf, 32768, &len, TDM_S(10)));
    CHECK_EQ(len, kill_len(1));
  }
  /* Blocks that killed producers were filling are freed by the first sweep after their death:
   * waiters sweep after 10 ms; this one sweeps now. */
  int dead = tdm_queue_recover(k->q);
  CHECK(dead >= 0);
  tdm_queue_stats_get(k->q, &st);
  printf("    %u rounds, %d kills, %llu messages taken, %llu lost, %llu recoveries\n", round, kills,
         (unsigned long long)k->taken, (unsigned long long)st.lost,
         (unsigned long long)st.recoveries);
  /* The case must have killed processes inside put and get, not only around them. */
  CHECK(st.recoveries >= 1);
  /* At most the one message in flight in each killed process was lost. */
  CHECK(st.lost <= (uint64_t)kills);
  CHECK(st.recoveries >= st.lost);
  CHECK_EQ(st.bytes, 0); /* and no arena block leaked */
  free(buf);
  for (uint32_t i = 0; i < KILL_PER; i++)
    free(k->bodies[i]);
  CHECK_OK(tdm_queue_close(k->q));
}

/* ---- The process table -------------------------------------------------------------------------
 */

static void attach_and_sleep(void *arg) {
  int fd = *(int *)arg;
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_attach_fd(&q, fd));
  CHECK_OK(tdm_queue_put(q, "in", 2, 0));
  pause();
}

static void attach_fails(void *arg) {
  tdm_queue *q = NULL;
  CHECK_ERR(tdm_queue_attach_fd(&q, *(int *)arg), -EUSERS);
}

static void attach_ok(void *arg) {
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_attach_fd(&q, *(int *)arg));
  CHECK_OK(tdm_queue_put(q, "ok", 2, 0));
  CHECK_OK(tdm_queue_close(q));
}

TEST(a_full_process_table_is_eusers_until_a_user_dies) {
  tdm_queue_options o = { .max_processes = 2 };
  tdm_queue *q = NULL;
  CHECK_OK(tdm_queue_open(&q, &o));
  int fd = tdm_queue_fd(q);
  pid_t sleeper = tdm_test_fork(attach_and_sleep, &fd);
  WAIT_UNTIL(tdm_queue_size(q) == 1);
  tdm_test_wait_ok(tdm_test_fork(attach_fails, &fd));
  tdm_test_kill_and_reap(sleeper);
  tdm_test_wait_ok(tdm_test_fork(attach_ok, &fd)); /* the dead one's entry was reclaimed */
  tdm_test_wait_ok(tdm_test_fork(attach_ok, &fd)); /* and the closed one's */
  CHECK_EQ(tdm_queue_size(q), 3);
  CHECK_OK(tdm_queue_close(q));
}
