/*
 * arena_test.c: shared cells and arrays (types, layout, ranges, locking, atomic adds, owner
 * death) and the shared arena (allocation patterns, alignment, exhaustion and coalescing, a
 * shadow-model stress, threads and processes sharing one arena, and processes killed at random
 * points while they allocate and free). Public API only: the arena's consistency is judged by
 * what its users can see: blocks that never overlap (every block carries a pattern that is
 * checked), exact accounting, and an arena that can be filled to the last byte.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "runner.h"

/* ---- Helpers --------------------------------------------------------------------------------- */

/* A pattern that depends on the key and on the position, so that blocks differ from each other. */
static uint64_t pattern_word(uint64_t *x) {
  *x = *x * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
  return *x ^ (*x >> 29);
}

static void fill(void *p, size_t n, uint64_t key) {
  unsigned char *b = p;
  uint64_t x = key * UINT64_C(0x9e3779b97f4a7c15) + n;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t w = pattern_word(&x);
    memcpy(b + i, &w, n - i < 8 ? n - i : 8);
  }
}

static bool intact(const void *p, size_t n, uint64_t key) {
  const unsigned char *b = p;
  uint64_t x = key * UINT64_C(0x9e3779b97f4a7c15) + n;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t w = pattern_word(&x);
    if (memcmp(b + i, &w, n - i < 8 ? n - i : 8) != 0) return false;
  }
  return true;
}

static tdm_arena *arena_new(size_t size) {
  tdm_arena *a = tdm_test_shared(size);
  CHECK_OK(tdm_arena_init(a, size));
  return a;
}

/* ---- Arrays: layout and single-process behaviour --------------------------------------------- */

static const tdm_type all_types[] = { TDM_TYPE_I8,  TDM_TYPE_U8,  TDM_TYPE_I16, TDM_TYPE_U16,
                                      TDM_TYPE_I32, TDM_TYPE_U32, TDM_TYPE_I64, TDM_TYPE_U64,
                                      TDM_TYPE_F32, TDM_TYPE_F64 };
#define NTYPES (sizeof all_types / sizeof all_types[0])

TEST(array_type_sizes_and_footprint) {
  static const size_t sizes[] = { 1, 1, 2, 2, 4, 4, 8, 8, 4, 8 };
  for (size_t t = 0; t < NTYPES; t++)
    CHECK_EQ(tdm_type_size(all_types[t]), sizes[t]);
  CHECK_EQ(tdm_type_size((tdm_type)0), 0);
  CHECK_EQ(tdm_type_size((tdm_type)11), 0);

  /* Header 64 bytes, lock 64 more, elements after, rounded up to 16. */
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_I64, 1, 0), 80);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_I64, 1, TDM_ARRAY_LOCK), 144);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_U8, 3, 0), 80);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_F64, 10, 0), 144);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_I16, 8, TDM_ARRAY_LOCK), 144);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_I16, 9, TDM_ARRAY_LOCK), 160);
  for (size_t t = 0; t < NTYPES; t++)
    CHECK(tdm_array_footprint(all_types[t], 1000, 0) >= 64 + 1000 * tdm_type_size(all_types[t]));

  CHECK_EQ(tdm_array_footprint((tdm_type)0, 1, 0), 0);
  CHECK_EQ(tdm_array_footprint((tdm_type)11, 1, 0), 0);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_I8, 1, 0x2), 0);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_I64, SIZE_MAX / 8, 0), 0);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_U8, SIZE_MAX - 100, TDM_ARRAY_LOCK), 0);
  CHECK_EQ(tdm_array_footprint(TDM_TYPE_U8, SIZE_MAX, 0), 0);
}

TEST(array_init_errors_and_check) {
  unsigned char *mem = tdm_test_shared(4096);
  tdm_array *a = (tdm_array *)(void *)mem;
  CHECK_ERR(tdm_array_init(a, (tdm_type)0, 4, 0), -EINVAL);
  CHECK_ERR(tdm_array_init(a, (tdm_type)11, 4, 0), -EINVAL);
  CHECK_ERR(tdm_array_init(a, TDM_TYPE_I32, 4, 0x2), -EINVAL);
  CHECK_ERR(tdm_array_init(a, TDM_TYPE_I32, 0, 0), -EINVAL);
  CHECK_ERR(tdm_array_init(a, TDM_TYPE_I32, SIZE_MAX / 2, 0), -EINVAL);
  CHECK_ERR(tdm_array_init((tdm_array *)(void *)(mem + 8), TDM_TYPE_I32, 4, 0), -EINVAL);
  /* None of those wrote a header. */
  CHECK(tdm_array_check(mem, 0) == NULL);
  CHECK(tdm_array_check(NULL, 0) == NULL);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_I32, 4, TDM_ARRAY_LOCK));
  CHECK(tdm_array_check(mem, 0) == a);
  CHECK(tdm_array_check(mem, TDM_TYPE_I32) == a);
  CHECK(tdm_array_check(mem, TDM_TYPE_U32) == NULL);
  CHECK(tdm_array_check(mem, (tdm_type)11) == NULL);
  CHECK(tdm_array_check(mem + 16, 0) == NULL);
  CHECK_EQ(tdm_array_type(a), TDM_TYPE_I32);
  CHECK_EQ(tdm_array_len(a), 4);
  CHECK(tdm_array_lock(a) != NULL);
  CHECK(!tdm_rlock_held(tdm_array_lock(a)));

  /* An array placed right after the first, at its footprint, is aligned and independent. */
  tdm_array *b = (tdm_array *)(void *)(mem + tdm_array_footprint(TDM_TYPE_I32, 4, TDM_ARRAY_LOCK));
  CHECK_OK(tdm_array_init(b, TDM_TYPE_U8, 3, 0));
  CHECK(tdm_array_lock(b) == NULL);
  CHECK(tdm_array_check(mem, TDM_TYPE_I32) == a);
  CHECK(tdm_array_check(b, TDM_TYPE_U8) == b);
}

TEST(array_layout_and_zeroing) {
  for (unsigned flags = 0; flags <= TDM_ARRAY_LOCK; flags++) {
    for (size_t t = 0; t < NTYPES; t++) {
      size_t len = 7, es = tdm_type_size(all_types[t]);
      size_t fp = tdm_array_footprint(all_types[t], len, flags);
      unsigned char *mem = tdm_test_shared(fp + 64);
      memset(mem, 0xab, fp + 64);
      tdm_array *a = (tdm_array *)(void *)mem;
      CHECK_OK(tdm_array_init(a, all_types[t], len, flags));
      unsigned char *data = tdm_array_data(a);
      CHECK((uintptr_t)data % 16 == 0);
      CHECK(data >= mem + 64 + (flags ? 64 : 0));
      CHECK(data + len * es <= mem + fp);
      for (size_t i = 0; i < len * es; i++)
        CHECK_EQ(data[i], 0);
      CHECK_EQ(mem[fp + 10], 0xab); /* nothing written past the footprint */
      if (flags) CHECK((unsigned char *)tdm_array_lock(a) < data);
      tdm_test_unshare(mem, fp + 64);
    }
  }
}

TEST(array_get_set_read_write_every_type) {
  for (unsigned flags = 0; flags <= TDM_ARRAY_LOCK; flags++) {
    for (size_t t = 0; t < NTYPES; t++) {
      tdm_type type = all_types[t];
      size_t len = 9, es = tdm_type_size(type);
      unsigned char *mem = tdm_test_shared(4096);
      tdm_array *a = (tdm_array *)(void *)mem;
      CHECK_OK(tdm_array_init(a, type, len, flags));

      unsigned char in[8], out[8];
      for (size_t i = 0; i < len; i++) {
        for (size_t k = 0; k < es; k++)
          in[k] = (unsigned char)(0x11 * (i + 1) + k);
        CHECK_OK(tdm_array_set(a, i, in));
      }
      for (size_t i = 0; i < len; i++) {
        memset(out, 0, sizeof out);
        CHECK_OK(tdm_array_get(a, i, out));
        for (size_t k = 0; k < es; k++)
          CHECK_EQ(out[k], (unsigned char)(0x11 * (i + 1) + k));
        /* The elements are contiguous in tdm_array_data(). */
        CHECK(memcmp((unsigned char *)tdm_array_data(a) + i * es, out, es) == 0);
      }

      unsigned char buf[9 * 8], back[9 * 8];
      for (size_t k = 0; k < sizeof buf; k++)
        buf[k] = (unsigned char)(200 - k);
      CHECK_OK(tdm_array_write(a, 2, 5, buf));
      memset(back, 0, sizeof back);
      CHECK_OK(tdm_array_read(a, 0, len, back));
      CHECK_EQ(back[0], 0x11);                           /* element 0 untouched */
      CHECK(memcmp(back + 2 * es, buf, 5 * es) == 0);    /* elements 2..6 written */
      CHECK_EQ(back[7 * es], (unsigned char)(0x11 * 8)); /* element 7 untouched */
      CHECK_OK(tdm_array_read(a, len, 0, back));         /* an empty range at the end is fine */
      CHECK_OK(tdm_array_write(a, 0, 0, buf));

      /* Out of range: errors, and the output untouched. */
      memset(out, 0x5a, sizeof out);
      CHECK_ERR(tdm_array_get(a, len, out), -ERANGE);
      CHECK_ERR(tdm_array_get(a, SIZE_MAX, out), -ERANGE);
      CHECK_EQ(out[0], 0x5a);
      CHECK_ERR(tdm_array_set(a, len, in), -ERANGE);
      CHECK_ERR(tdm_array_read(a, len, 1, back), -ERANGE);
      CHECK_ERR(tdm_array_read(a, 1, len, back), -ERANGE);
      CHECK_ERR(tdm_array_read(a, 2, SIZE_MAX, back), -ERANGE); /* start + n overflows */
      CHECK_ERR(tdm_array_read(a, SIZE_MAX, 2, back), -ERANGE);
      CHECK_ERR(tdm_array_write(a, len + 1, 0, buf), -ERANGE);
      CHECK_ERR(tdm_array_write(a, 3, SIZE_MAX - 1, buf), -ERANGE);
      CHECK_ERR(tdm_array_write(a, 8, 2, buf), -ERANGE);
      CHECK_OK(tdm_array_read(a, 0, len, back));
      CHECK(memcmp(back + 2 * es, buf, 5 * es) == 0);       /* the refused write wrote nothing */
      if (flags) CHECK(!tdm_rlock_held(tdm_array_lock(a))); /* no level left behind */
      tdm_test_unshare(mem, 4096);
    }
  }
}

TEST(array_calls_inside_the_lock) {
  tdm_array *a = tdm_test_shared(4096);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 2, TDM_ARRAY_LOCK));
  tdm_rlock *l = tdm_array_lock(a);
  CHECK_OK(tdm_rlock_acquire(l, TDM_FOREVER));
  int64_t v = 0;
  CHECK_OK(tdm_array_get(a, 0, &v));
  v += 5;
  CHECK_OK(tdm_array_set(a, 0, &v));
  CHECK_EQ(tdm_rlock_level(l), 1); /* the calls took and gave back their own level */
  tdm_rlock_release(l);
  CHECK(!tdm_rlock_held(l));
  CHECK_OK(tdm_array_get(a, 0, &v));
  CHECK_EQ(v, 5);
}

TEST(array_add_wraps_and_extends) {
  unsigned char *mem = tdm_test_shared(8192);
  tdm_array *a = (tdm_array *)(void *)mem;
  int64_t old = 0;

  CHECK_OK(tdm_array_init(a, TDM_TYPE_I8, 2, 0));
  int8_t i8 = 127;
  CHECK_OK(tdm_array_set(a, 1, &i8));
  CHECK_OK(tdm_array_add(a, 1, 1, &old));
  CHECK_EQ(old, 127);
  CHECK_OK(tdm_array_get(a, 1, &i8));
  CHECK_EQ(i8, -128);
  CHECK_OK(tdm_array_add(a, 1, 0, &old));
  CHECK_EQ(old, -128); /* sign-extended */
  CHECK_OK(tdm_array_add(a, 1, 256 + 3, NULL));
  CHECK_OK(tdm_array_get(a, 1, &i8));
  CHECK_EQ(i8, -125);
  CHECK_OK(tdm_array_get(a, 0, &i8));
  CHECK_EQ(i8, 0); /* the neighbour untouched */

  CHECK_OK(tdm_array_init(a, TDM_TYPE_U8, 1, TDM_ARRAY_LOCK));
  CHECK_OK(tdm_array_add(a, 0, -1, &old));
  CHECK_EQ(old, 0);
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, 255); /* zero-extended */
  CHECK_OK(tdm_array_add(a, 0, 2, &old));
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, 1);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_I16, 3, 0));
  CHECK_OK(tdm_array_add(a, 2, 32767, NULL));
  CHECK_OK(tdm_array_add(a, 2, 1, &old));
  CHECK_EQ(old, 32767);
  CHECK_OK(tdm_array_add(a, 2, 0, &old));
  CHECK_EQ(old, -32768);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_U16, 3, 0));
  CHECK_OK(tdm_array_add(a, 0, -2, NULL));
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, 65534);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_I32, 1, 0));
  CHECK_OK(tdm_array_add(a, 0, INT32_MAX, NULL));
  CHECK_OK(tdm_array_add(a, 0, 1, &old));
  CHECK_EQ(old, INT32_MAX);
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, INT32_MIN);
  CHECK_OK(tdm_array_add(a, 0, (int64_t)1 << 32, &old)); /* only the low 32 bits count */
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, INT32_MIN);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_U32, 1, 0));
  CHECK_OK(tdm_array_add(a, 0, -1, NULL));
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, UINT32_MAX);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 1, 0));
  CHECK_OK(tdm_array_add(a, 0, INT64_MAX, NULL));
  CHECK_OK(tdm_array_add(a, 0, 1, &old));
  CHECK_EQ(old, INT64_MAX);
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK(old == INT64_MIN);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_U64, 1, 0));
  CHECK_OK(tdm_array_add(a, 0, -1, NULL));
  uint64_t u64 = 0;
  CHECK_OK(tdm_array_get(a, 0, &u64));
  CHECK(u64 == UINT64_MAX);
  CHECK_OK(tdm_array_add(a, 0, 0, &old));
  CHECK_EQ(old, -1); /* UINT64_MAX's bits */
  CHECK_OK(tdm_array_add(a, 0, 2, &old));
  CHECK_OK(tdm_array_get(a, 0, &u64));
  CHECK(u64 == 1);

  CHECK_ERR(tdm_array_add(a, 1, 1, &old), -ERANGE);
  CHECK_ERR(tdm_array_add(a, SIZE_MAX, 1, &old), -ERANGE);

  CHECK_OK(tdm_array_init(a, TDM_TYPE_F64, 2, 0));
  old = 77;
  CHECK_ERR(tdm_array_add(a, 0, 1, &old), -EINVAL);
  CHECK_EQ(old, 77);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_F32, 2, TDM_ARRAY_LOCK));
  CHECK_ERR(tdm_array_add(a, 0, 1, &old), -EINVAL);
  float f = 0;
  CHECK_OK(tdm_array_get(a, 0, &f));
  CHECK(f == 0.0f);
}

/* ---- Arrays between processes and threads ---------------------------------------------------- */

#define COUNT_PROCS 4
#define COUNT_N     20000

static void count_under_lock(void *arg) {
  tdm_array *a = tdm_array_check(arg, TDM_TYPE_I64);
  CHECK(a != NULL);
  tdm_rlock *l = tdm_array_lock(a);
  for (int i = 0; i < COUNT_N; i++) {
    /* `with v.get_lock(): v.value += 1` */
    CHECK_OK(tdm_rlock_acquire(l, TDM_FOREVER));
    int64_t v;
    CHECK_OK(tdm_array_get(a, 0, &v));
    v++;
    CHECK_OK(tdm_array_set(a, 0, &v));
    tdm_rlock_release(l);
  }
}

TEST(array_counter_under_lock_across_processes) {
  tdm_array *a = tdm_test_shared(4096);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 1, TDM_ARRAY_LOCK));
  pid_t p[COUNT_PROCS];
  for (int i = 0; i < COUNT_PROCS; i++)
    p[i] = tdm_test_fork(count_under_lock, a);
  for (int i = 0; i < COUNT_PROCS; i++)
    tdm_test_wait_ok(p[i]);
  int64_t v = 0;
  CHECK_OK(tdm_array_get(a, 0, &v));
  CHECK_EQ(v, COUNT_PROCS * COUNT_N);
}

/* Several counters of different widths side by side, added to without the lock. */
static void count_with_add(void *arg) {
  tdm_array *a = arg;
  tdm_array *b = (tdm_array *)(void *)((char *)arg + 1024);
  for (int i = 0; i < COUNT_N; i++) {
    CHECK_OK(tdm_array_add(a, 0, 1, NULL));
    CHECK_OK(tdm_array_add(a, 1, -3, NULL));
    CHECK_OK(tdm_array_add(b, 0, 1, NULL));
    CHECK_OK(tdm_array_add(b, 1, 1, NULL));
  }
}

static void check_add_totals(tdm_array *a, tdm_array *b, int parties) {
  int64_t v = 0;
  CHECK_OK(tdm_array_get(a, 0, &v));
  CHECK_EQ(v, (int64_t)parties * COUNT_N);
  CHECK_OK(tdm_array_get(a, 1, &v));
  CHECK_EQ(v, -3 * (int64_t)parties * COUNT_N);
  uint8_t u8 = 0, u8b = 0;
  CHECK_OK(tdm_array_get(b, 0, &u8));
  CHECK_OK(tdm_array_get(b, 1, &u8b));
  CHECK_EQ(u8, ((unsigned)parties * COUNT_N) % 256); /* wrapped, nothing lost */
  CHECK_EQ(u8b, u8);                                 /* a neighbouring byte: no torn adds */
}

TEST(array_add_across_processes) {
  char *mem = tdm_test_shared(4096);
  tdm_array *a = (tdm_array *)(void *)mem, *b = (tdm_array *)(void *)(mem + 1024);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 2, TDM_ARRAY_LOCK));
  CHECK_OK(tdm_array_init(b, TDM_TYPE_U8, 2, 0));
  pid_t p[COUNT_PROCS];
  for (int i = 0; i < COUNT_PROCS; i++)
    p[i] = tdm_test_fork(count_with_add, mem);
  for (int i = 0; i < COUNT_PROCS; i++)
    tdm_test_wait_ok(p[i]);
  check_add_totals(a, b, COUNT_PROCS);
}

TEST(array_add_across_threads) {
  char *mem = tdm_test_shared(4096);
  tdm_array *a = (tdm_array *)(void *)mem, *b = (tdm_array *)(void *)(mem + 1024);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 2, 0));
  CHECK_OK(tdm_array_init(b, TDM_TYPE_U8, 2, 0));
  tdm_thread *t[COUNT_PROCS];
  for (int i = 0; i < COUNT_PROCS; i++)
    t[i] = tdm_test_thread(count_with_add, mem);
  for (int i = 0; i < COUNT_PROCS; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  check_add_totals(a, b, COUNT_PROCS);
}

TEST(array_counter_under_lock_across_threads) {
  tdm_array *a = tdm_test_shared(4096);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 1, TDM_ARRAY_LOCK));
  tdm_thread *t[COUNT_PROCS];
  for (int i = 0; i < COUNT_PROCS; i++)
    t[i] = tdm_test_thread(count_under_lock, a);
  for (int i = 0; i < COUNT_PROCS; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  int64_t v = 0;
  CHECK_OK(tdm_array_get(a, 0, &v));
  CHECK_EQ(v, COUNT_PROCS * COUNT_N);
}

/* Takes the array's lock, half-updates the array, and dies holding the lock. */
static void update_and_die(void *arg) {
  tdm_array *a = arg;
  CHECK_OK(tdm_rlock_acquire(tdm_array_lock(a), TDM_FOREVER));
  int64_t half[2] = { 42, 0 };
  CHECK_OK(tdm_array_write(a, 0, 1, half));
  kill(getpid(), SIGKILL);
}

TEST(array_owner_died_is_reported) {
  tdm_array *a = tdm_test_shared(4096);
  CHECK_OK(tdm_array_init(a, TDM_TYPE_I64, 2, TDM_ARRAY_LOCK));

  /* get: the element is copied, and the death reported once. */
  int status = tdm_test_wait(tdm_test_fork(update_and_die, a));
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  int64_t v = 0;
  CHECK_ERR(tdm_array_get(a, 0, &v), -EOWNERDEAD);
  CHECK_EQ(v, 42);
  CHECK(!tdm_rlock_held(tdm_array_lock(a)));
  CHECK_OK(tdm_array_get(a, 0, &v));

  /* set, read and write report it too, after doing their work. */
  tdm_test_wait(tdm_test_fork(update_and_die, a));
  v = 7;
  CHECK_ERR(tdm_array_set(a, 1, &v), -EOWNERDEAD);
  int64_t both[2] = { 0, 0 };
  CHECK_OK(tdm_array_read(a, 0, 2, both));
  CHECK(both[0] == 42 && both[1] == 7);
  tdm_test_wait(tdm_test_fork(update_and_die, a));
  CHECK_ERR(tdm_array_read(a, 0, 2, both), -EOWNERDEAD);
  CHECK(both[0] == 42 && both[1] == 7);
  tdm_test_wait(tdm_test_fork(update_and_die, a));
  int64_t fix[2] = { 1, 2 };
  CHECK_ERR(tdm_array_write(a, 0, 2, fix), -EOWNERDEAD);
  CHECK_OK(tdm_array_read(a, 0, 2, both));
  CHECK(both[0] == 1 && both[1] == 2);

  /* The lock itself, taken directly, reports it as well; the array goes on working. */
  tdm_test_wait(tdm_test_fork(update_and_die, a));
  CHECK_ERR(tdm_rlock_acquire(tdm_array_lock(a), TDM_FOREVER), -EOWNERDEAD);
  tdm_rlock_release(tdm_array_lock(a));
  pid_t p = tdm_test_fork(count_under_lock, a);
  tdm_test_wait_ok(p);
  CHECK_OK(tdm_array_get(a, 0, &v));
  CHECK_EQ(v, 42 + COUNT_N);
}

static void array_null(void *arg) {
  (void)arg;
  tdm_array_len(NULL);
}

static void array_uninitialised(void *arg) {
  int64_t v;
  tdm_array_get(arg, 0, &v);
}

static void array_add_uninitialised(void *arg) {
  tdm_array_add(arg, 0, 1, NULL);
}

TEST(array_misuse_aborts) {
  void *mem = tdm_test_shared(4096);
  EXPECT_ABORT(array_null, NULL, "tdm_array_len");
  EXPECT_ABORT(array_uninitialised, mem, "tdm_array_get");
  EXPECT_ABORT(array_uninitialised, mem, "not an initialised array");
  EXPECT_ABORT(array_add_uninitialised, mem, "tdm_array_add");
}

/* ---- Arena: single process ------------------------------------------------------------------- */

#define SMALL_ARENA (64 * 1024)

TEST(arena_init_errors_and_check) {
  unsigned char *mem = tdm_test_shared(SMALL_ARENA);
  CHECK_ERR(tdm_arena_init((tdm_arena *)(void *)(mem + 8), SMALL_ARENA - 16), -EINVAL);
  CHECK_ERR(tdm_arena_init((tdm_arena *)(void *)mem, TDM_ARENA_MIN - 1), -EINVAL);
  CHECK_ERR(tdm_arena_init((tdm_arena *)(void *)mem, 0), -EINVAL);
  CHECK(tdm_arena_check(mem) == NULL);
  CHECK(tdm_arena_check(NULL) == NULL);
  CHECK_OK(tdm_arena_init((tdm_arena *)(void *)mem, SMALL_ARENA));
  tdm_arena *a = tdm_arena_check(mem);
  CHECK(a == (tdm_arena *)(void *)mem);
  CHECK(tdm_arena_check(mem + 16) == NULL);
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_repairs(a), 0);
  size_t largest = tdm_arena_largest(a);
  /* Nearly all of the region is one free block. */
  CHECK(largest < SMALL_ARENA - sizeof(tdm_arena));
  CHECK(largest > SMALL_ARENA - 4096);
}

TEST(arena_smallest_region_works) {
  tdm_arena *a = arena_new(TDM_ARENA_MIN);
  size_t largest = tdm_arena_largest(a);
  CHECK(largest >= TDM_ARENA_MIN / 2);
  uint64_t off;
  CHECK_OK(tdm_arena_alloc(a, largest, &off));
  fill(tdm_arena_ptr(a, off), largest, 1);
  CHECK_ERR(tdm_arena_alloc(a, 1, &off), -ENOMEM);
  CHECK(tdm_arena_check(a) == a); /* the block did not spill over the header */
  tdm_arena_free(a, off);
  CHECK_EQ(tdm_arena_largest(a), largest);
}

TEST(arena_alloc_free_basics) {
  tdm_arena *a = arena_new(SMALL_ARENA);
  size_t whole = tdm_arena_largest(a);
  uint64_t off = 12345, off2;
  CHECK_ERR(tdm_arena_alloc(a, 0, &off), -EINVAL);
  CHECK_ERR(tdm_arena_alloc(a, SIZE_MAX, &off), -ENOMEM);
  CHECK_ERR(tdm_arena_alloc(a, SIZE_MAX - 8, &off), -ENOMEM);
  CHECK_ERR(tdm_arena_alloc(a, whole + 1, &off), -ENOMEM);
  CHECK_EQ(off, 12345); /* untouched on failure */

  CHECK_OK(tdm_arena_alloc(a, 1, &off));
  CHECK(off % TDM_ARENA_ALIGN == 0);
  CHECK(off >= sizeof(tdm_arena));
  unsigned char *p = tdm_arena_ptr(a, off);
  CHECK((uintptr_t)p % TDM_ARENA_ALIGN == 0);
  CHECK(p == (unsigned char *)a + off);
  CHECK_EQ(tdm_arena_off(a, p), off);
  CHECK(tdm_arena_block_size(a, off) >= 1);
  size_t used1 = tdm_arena_used(a);
  CHECK(used1 >= tdm_arena_block_size(a, off)); /* the header counts too */
  CHECK(used1 <= 64);

  CHECK_OK(tdm_arena_alloc(a, 1000, &off2));
  CHECK(off2 != off);
  CHECK(tdm_arena_block_size(a, off2) >= 1000);
  CHECK(tdm_arena_block_size(a, off2) < 1000 + 64);
  fill(tdm_arena_ptr(a, off2), 1000, 2);
  fill(p, 1, 1);
  CHECK(intact(tdm_arena_ptr(a, off2), 1000, 2));
  CHECK(tdm_arena_used(a) > used1 + 1000);
  tdm_arena_free(a, off);
  CHECK(intact(tdm_arena_ptr(a, off2), 1000, 2));
  tdm_arena_free(a, off2);
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_largest(a), whole);

  /* The whole arena in one block, and nothing more. */
  CHECK_OK(tdm_arena_alloc(a, whole, &off));
  CHECK_EQ(tdm_arena_block_size(a, off), whole);
  CHECK_EQ(tdm_arena_largest(a), 0);
  CHECK_ERR(tdm_arena_alloc(a, 1, &off2), -ENOMEM);
  fill(tdm_arena_ptr(a, off), whole, 3);
  CHECK(tdm_arena_check(a) == a);
  tdm_arena_free(a, off);
  CHECK_EQ(tdm_arena_largest(a), whole);
}

TEST(arena_every_size_is_aligned_and_disjoint) {
  tdm_arena *a = arena_new(1 << 20);
  enum { N = 700 };
  static uint64_t offs[N];
  for (size_t i = 0; i < N; i++) {
    size_t size = 1 + i;
    CHECK_OK(tdm_arena_alloc(a, size, &offs[i]));
    CHECK(offs[i] % TDM_ARENA_ALIGN == 0);
    size_t bs = tdm_arena_block_size(a, offs[i]);
    CHECK(bs >= size && bs < size + 48);
    fill(tdm_arena_ptr(a, offs[i]), bs, offs[i]);
  }
  for (size_t i = 0; i < N; i++)
    CHECK(intact(tdm_arena_ptr(a, offs[i]), tdm_arena_block_size(a, offs[i]), offs[i]));
  for (size_t i = 0; i < N; i += 2)
    tdm_arena_free(a, offs[i]);
  for (size_t i = 1; i < N; i += 2)
    CHECK(intact(tdm_arena_ptr(a, offs[i]), tdm_arena_block_size(a, offs[i]), offs[i]));
  for (size_t i = 1; i < N; i += 2)
    tdm_arena_free(a, offs[i]);
  CHECK_EQ(tdm_arena_used(a), 0);
}

/*
 * Fills the arena with `size`-byte blocks until it is full, then frees them in the order
 * `order` picks, and proves the free space came back whole: the largest block is the whole
 * arena again, and an allocation of all of it succeeds.
 */
static void fill_free_whole(tdm_arena *a, size_t size, int order) {
  size_t whole = tdm_arena_largest(a);
  enum { MAXB = 16384 };
  static uint64_t offs[MAXB];
  size_t n = 0;
  int r;
  while ((r = tdm_arena_alloc(a, size, &offs[n])) == 0) {
    fill(tdm_arena_ptr(a, offs[n]), size, offs[n]);
    CHECK(++n < MAXB);
  }
  CHECK_ERR(r, -ENOMEM);
  CHECK(n > 0);
  /* Full: what is left is smaller than the request, and the accounting adds up. */
  CHECK(tdm_arena_largest(a) < size);
  CHECK(tdm_arena_used(a) >= n * (size + 16));
  CHECK(tdm_arena_used(a) <= whole + 16);
  for (size_t i = 0; i < n; i++)
    CHECK(intact(tdm_arena_ptr(a, offs[i]), size, offs[i]));

  uint64_t seed = 99;
  if (order == 1) { /* backwards */
    for (size_t i = 0; i < n / 2; i++) {
      uint64_t t = offs[i];
      offs[i] = offs[n - 1 - i];
      offs[n - 1 - i] = t;
    }
  } else if (order == 2) { /* odd positions first, then even: merges on both sides */
    size_t k = 0;
    static uint64_t tmp[MAXB];
    for (size_t i = 1; i < n; i += 2)
      tmp[k++] = offs[i];
    for (size_t i = 0; i < n; i += 2)
      tmp[k++] = offs[i];
    memcpy(offs, tmp, n * sizeof offs[0]);
  } else if (order == 3) { /* random */
    for (size_t i = n; i > 1; i--) {
      size_t j = (size_t)(tdm_test_rand(&seed) % i);
      uint64_t t = offs[i - 1];
      offs[i - 1] = offs[j];
      offs[j] = t;
    }
  }
  for (size_t i = 0; i < n; i++)
    tdm_arena_free(a, offs[i]);
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_largest(a), whole);
  uint64_t off;
  CHECK_OK(tdm_arena_alloc(a, whole, &off));
  tdm_arena_free(a, off);
}

TEST(arena_enomem_then_coalesces_whole) {
  tdm_arena *a = arena_new(256 * 1024);
  static const size_t sizes[] = { 1, 16, 17, 100, 1000, 4000, 30000 };
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
    for (int order = 0; order < 4; order++)
      fill_free_whole(a, sizes[s], order);
}

/*
 * Allocates 1-byte blocks (the smallest kind) until the arena is full. Every free block can
 * hold one, so afterwards no free space is left at all and every byte of the heap is in a used
 * block: tdm_arena_used() must equal the whole heap. Then frees them again.
 */
static size_t fill_to_the_last_byte(tdm_arena *a, size_t heap_bytes, uint64_t key) {
  size_t cap = heap_bytes / 32 + 1, n = 0;
  uint64_t *offs = malloc(cap * sizeof *offs);
  CHECK(offs != NULL);
  while (tdm_arena_alloc(a, 1, &offs[n]) == 0) {
    fill(tdm_arena_ptr(a, offs[n]), 16, key + n);
    CHECK(++n <= cap);
  }
  CHECK_EQ(tdm_arena_largest(a), 0);
  CHECK_EQ(tdm_arena_used(a), heap_bytes);
  for (size_t i = 0; i < n; i++)
    CHECK(intact(tdm_arena_ptr(a, offs[i]), 16, key + i));
  for (size_t i = 0; i < n; i++)
    tdm_arena_free(a, offs[i]);
  free(offs);
  return n;
}

TEST(arena_fills_to_the_last_byte) {
  tdm_arena *a = arena_new(256 * 1024);
  size_t heap_bytes = tdm_arena_largest(a) + 16;
  size_t n = fill_to_the_last_byte(a, heap_bytes, 1);
  CHECK(n >= heap_bytes / 48);
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_largest(a) + 16, heap_bytes);
}

/* ---- Arena: a random stress against a shadow model ------------------------------------------- */

struct live {
  uint64_t off, key;
  size_t size, block;
};

static size_t random_size(uint64_t *seed) {
  uint64_t r = tdm_test_rand(seed) % 100;
  if (r < 70) return 1 + (size_t)(tdm_test_rand(seed) % 128);
  if (r < 95) return 129 + (size_t)(tdm_test_rand(seed) % 2000);
  return 2129 + (size_t)(tdm_test_rand(seed) % 30000);
}

static bool overlaps(const struct live *x, const struct live *y) {
  /* Blocks with their 16-byte headers. */
  uint64_t x0 = x->off - 16, x1 = x->off + x->block, y0 = y->off - 16, y1 = y->off + y->block;
  return x0 < y1 && y0 < x1;
}

TEST_T(arena_random_stress_against_a_shadow_model, 180) {
  enum { SLOTS = 256, OPS = 150000 };
  tdm_arena *a = arena_new(256 * 1024);
  size_t whole = tdm_arena_largest(a);
  static struct live shadow[SLOTS];
  size_t used = 0, enomem = 0;
  uint64_t seed = 12345, key = 1;
  for (int op = 0; op < OPS; op++) {
    size_t k = (size_t)(tdm_test_rand(&seed) % SLOTS);
    struct live *s = &shadow[k];
    if (s->off != 0) {
      CHECK(intact(tdm_arena_ptr(a, s->off), s->size, s->key));
      CHECK_EQ(tdm_arena_block_size(a, s->off), s->block);
      tdm_arena_free(a, s->off);
      used -= s->block + 16;
      s->off = 0;
    } else {
      size_t size = random_size(&seed);
      int r = tdm_arena_alloc(a, size, &s->off);
      if (r == -ENOMEM) {
        /* Only when no free block was large enough. */
        CHECK(tdm_arena_largest(a) < size);
        s->off = 0;
        enomem++;
        continue;
      }
      CHECK_OK(r);
      CHECK(s->off % TDM_ARENA_ALIGN == 0);
      s->size = size;
      s->key = key++;
      s->block = tdm_arena_block_size(a, s->off);
      CHECK(s->block >= size);
      for (size_t j = 0; j < SLOTS; j++)
        if (j != k && shadow[j].off != 0) CHECK(!overlaps(s, &shadow[j]));
      fill(tdm_arena_ptr(a, s->off), size, s->key);
      used += s->block + 16;
    }
    CHECK_EQ(tdm_arena_used(a), used);
    if (op % 1000 == 0) {
      CHECK(tdm_arena_largest(a) + 16 <= whole + 16 - used);
      for (size_t j = 0; j < SLOTS; j++)
        if (shadow[j].off != 0)
          CHECK(intact(tdm_arena_ptr(a, shadow[j].off), shadow[j].size, shadow[j].key));
    }
  }
  for (size_t j = 0; j < SLOTS; j++)
    if (shadow[j].off != 0) {
      CHECK(intact(tdm_arena_ptr(a, shadow[j].off), shadow[j].size, shadow[j].key));
      tdm_arena_free(a, shadow[j].off);
    }
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_largest(a), whole);
  printf("%d operations, %zu refused for lack of space\n", OPS, enomem);
}

/* ---- Arena: several threads and processes ---------------------------------------------------- */

#define CHURN_SLOTS 48

/*
 * What a user of the arena in another process or thread keeps: its live blocks, with their
 * sizes and pattern keys. The offset is published last, with release ordering, so whoever reads
 * a non-zero offset (the parent, after this process was killed) finds its size and key written.
 */
struct churner {
  tdm_arena *arena;
  uint64_t seed;
  uint64_t id;
  long ops;                  /* 0: forever */
  long done;                 /* operations completed */
  uint64_t off[CHURN_SLOTS]; /* 0: empty */
  uint64_t key[CHURN_SLOTS];
  size_t size[CHURN_SLOTS];
  size_t max_size;
};

static void churn_one(struct churner *c, uint64_t *seed, uint64_t *key) {
  tdm_arena *a = c->arena;
  size_t k = (size_t)(tdm_test_rand(seed) % CHURN_SLOTS);
  uint64_t off = __atomic_load_n(&c->off[k], __ATOMIC_RELAXED);
  if (off != 0) {
    CHECK(intact(tdm_arena_ptr(a, off), c->size[k], c->key[k]));
    /* Forget the block first: a death between the two leaks it, never frees it twice. */
    __atomic_store_n(&c->off[k], 0, __ATOMIC_RELEASE);
    tdm_arena_free(a, off);
  } else {
    size_t size = 1 + (size_t)(tdm_test_rand(seed) % c->max_size);
    int r = tdm_arena_alloc(a, size, &off);
    if (r == -ENOMEM) return;
    CHECK_OK(r);
    CHECK(tdm_arena_block_size(a, off) >= size);
    fill(tdm_arena_ptr(a, off), size, *key);
    c->size[k] = size;
    c->key[k] = (*key)++;
    __atomic_store_n(&c->off[k], off, __ATOMIC_RELEASE);
  }
}

static void churn(void *arg) {
  struct churner *c = arg;
  uint64_t seed = c->seed, key = c->id << 40;
  for (long i = 0; c->ops == 0 || i < c->ops; i++) {
    churn_one(c, &seed, &key);
    __atomic_store_n(&c->done, i + 1, __ATOMIC_RELAXED);
  }
  if (c->ops == 0) return;
  for (size_t k = 0; k < CHURN_SLOTS; k++)
    if (c->off[k] != 0) {
      CHECK(intact(tdm_arena_ptr(c->arena, c->off[k]), c->size[k], c->key[k]));
      tdm_arena_free(c->arena, c->off[k]);
      c->off[k] = 0;
    }
}

#define PARTIES 4

static struct churner *churners_new(tdm_arena *a, long ops, size_t max_size) {
  struct churner *c = tdm_test_shared(PARTIES * sizeof *c);
  for (int i = 0; i < PARTIES; i++) {
    c[i].arena = a;
    c[i].seed = UINT64_C(0x9e3779b97f4a7c15) * (uint64_t)(i + 1);
    c[i].id = (uint64_t)i + 1;
    c[i].ops = ops;
    c[i].max_size = max_size;
  }
  return c;
}

TEST_T(arena_stress_across_processes, 180) {
  tdm_arena *a = arena_new(1 << 20);
  size_t whole = tdm_arena_largest(a);
  struct churner *c = churners_new(a, 40000, 3000);
  pid_t p[PARTIES];
  for (int i = 0; i < PARTIES; i++)
    p[i] = tdm_test_fork(churn, &c[i]);
  for (int i = 0; i < PARTIES; i++)
    tdm_test_wait_ok(p[i]);
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_largest(a), whole);
  CHECK_EQ(tdm_arena_repairs(a), 0);
}

TEST_T(arena_stress_across_threads, 180) {
  tdm_arena *a = arena_new(1 << 20);
  size_t whole = tdm_arena_largest(a);
  struct churner *c = churners_new(a, 40000, 3000);
  tdm_thread *t[PARTIES];
  for (int i = 0; i < PARTIES; i++)
    t[i] = tdm_test_thread(churn, &c[i]);
  for (int i = 0; i < PARTIES; i++)
    CHECK_OK(tdm_thread_join(t[i], TDM_FOREVER));
  CHECK_EQ(tdm_arena_used(a), 0);
  CHECK_EQ(tdm_arena_largest(a), whole);
}

/*
 * Offsets do not depend on where the arena is mapped: the same memory mapped twice, at two
 * addresses, shows the same block at the same offset.
 */
TEST(arena_offsets_work_at_any_address) {
  size_t size = 64 * 1024;
  int fd = memfd_create("tandem-arena-test", MFD_CLOEXEC);
  CHECK(fd >= 0);
  CHECK(ftruncate(fd, (off_t)size) == 0);
  void *m1 = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  void *m2 = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  CHECK(m1 != MAP_FAILED && m2 != MAP_FAILED && m1 != m2);
  CHECK_OK(tdm_arena_init(m1, size));
  tdm_arena *a2 = tdm_arena_check(m2);
  CHECK(a2 != NULL);
  uint64_t off;
  CHECK_OK(tdm_arena_alloc(m1, 100, &off));
  fill(tdm_arena_ptr(m1, off), 100, 5);
  CHECK(intact(tdm_arena_ptr(a2, off), 100, 5));
  /* A cell inside an arena block, seen through the other mapping. */
  uint64_t cell;
  CHECK_OK(tdm_arena_alloc(a2, tdm_array_footprint(TDM_TYPE_I64, 1, TDM_ARRAY_LOCK), &cell));
  CHECK_OK(tdm_array_init(tdm_arena_ptr(a2, cell), TDM_TYPE_I64, 1, TDM_ARRAY_LOCK));
  tdm_array *v = tdm_array_check(tdm_arena_ptr(m1, cell), TDM_TYPE_I64);
  CHECK(v != NULL);
  CHECK_OK(tdm_array_add(v, 0, 9, NULL));
  int64_t x = 0;
  CHECK_OK(tdm_array_get(tdm_arena_ptr(a2, cell), 0, &x));
  CHECK_EQ(x, 9);
  tdm_arena_free(a2, off);
  tdm_arena_free(m1, cell);
  CHECK_EQ(tdm_arena_used(m1), 0);
  munmap(m1, size);
  munmap(m2, size);
  close(fd);
}

/* ---- Arena: processes killed while they allocate and free ------------------------------------ */

/*
 * Each round forks a child that allocates and frees in a tight loop (recording its blocks in
 * shared memory), kills it at a random moment, and then checks what the survivors can see:
 * - the blocks the child recorded still carry their patterns, and free cleanly;
 * - the blocks the parent holds across rounds still carry theirs (nothing was handed out twice);
 * - the death leaked at most the one block the child was allocating or freeing;
 * - the arena was repaired at most once per death, and (over all rounds) at least once;
 * - every so often, and at the end, the arena can be filled to its last byte, with used bytes
 *   equal to the whole heap, then emptied back: every block is whole and accounted for.
 */
TEST_T(arena_survives_kills_at_random_points, 300) {
  enum { ROUNDS = 200, MINE = 24, MAX_SIZE = 256 };
  tdm_arena *a = arena_new(256 * 1024);
  size_t heap_bytes = tdm_arena_largest(a) + 16;
  struct churner *c = churners_new(a, 0, MAX_SIZE);
  uint64_t seed = 777, key = UINT64_C(1) << 50;
  struct live mine[MINE];
  size_t mine_bytes = 0;
  memset(mine, 0, sizeof mine);
  uint64_t repairs = 0;
  size_t leaked = 0, leaks = 0;

  for (int round = 0; round < ROUNDS; round++) {
    c->seed = tdm_test_rand(&seed) | 1;
    c->id = (uint64_t)round + 1;
    c->done = 0;
    pid_t p = tdm_test_fork(churn, c);
    WAIT_UNTIL(__atomic_load_n(&c->done, __ATOMIC_RELAXED) > 20);
    tdm_clock_sleep((int64_t)(tdm_test_rand(&seed) % TDM_US(300)));
    tdm_test_kill_and_reap(p);

    /* The child's recorded blocks are whole; free them (a repair, if due, happens first). */
    for (size_t k = 0; k < CHURN_SLOTS; k++) {
      uint64_t off = __atomic_load_n(&c->off[k], __ATOMIC_ACQUIRE);
      if (off == 0) continue;
      CHECK(intact(tdm_arena_ptr(a, off), c->size[k], c->key[k]));
      tdm_arena_free(a, off);
      c->off[k] = 0;
    }
    uint64_t now = tdm_arena_repairs(a);
    CHECK(now == repairs || now == repairs + 1);
    repairs = now;

    /* What is used now: the parent's blocks, earlier leaks, and at most one new block. */
    size_t used = tdm_arena_used(a);
    CHECK(used >= mine_bytes + leaked);
    size_t leak = used - mine_bytes - leaked;
    CHECK(leak == 0 || (leak >= 32 && leak <= MAX_SIZE + 32));
    leaked += leak;
    leaks += leak != 0;

    /* The parent's blocks are intact; it replaces some of them. */
    for (size_t j = 0; j < MINE; j++) {
      struct live *m = &mine[j];
      if (m->off != 0) {
        CHECK(intact(tdm_arena_ptr(a, m->off), m->size, m->key));
        if (tdm_test_rand(&seed) % 2 == 0) continue;
        tdm_arena_free(a, m->off);
        mine_bytes -= m->block + 16;
        m->off = 0;
      }
      m->size = 1 + (size_t)(tdm_test_rand(&seed) % 2000);
      CHECK_OK(tdm_arena_alloc(a, m->size, &m->off));
      m->key = key++;
      m->block = tdm_arena_block_size(a, m->off);
      fill(tdm_arena_ptr(a, m->off), m->size, m->key);
      mine_bytes += m->block + 16;
    }
    CHECK_EQ(tdm_arena_used(a), mine_bytes + leaked);

    if (round % 20 == 19 || round == ROUNDS - 1) {
      fill_to_the_last_byte(a, heap_bytes, key);
      key += heap_bytes;
      CHECK_EQ(tdm_arena_used(a), mine_bytes + leaked);
      for (size_t j = 0; j < MINE; j++)
        CHECK(intact(tdm_arena_ptr(a, mine[j].off), mine[j].size, mine[j].key));
    }
  }
  for (size_t j = 0; j < MINE; j++)
    tdm_arena_free(a, mine[j].off);
  CHECK_EQ(tdm_arena_used(a), leaked);
  if (leaked == 0) CHECK_EQ(tdm_arena_largest(a) + 16, heap_bytes);
  printf("%d rounds: %llu repairs, %zu blocks (%zu bytes) leaked\n", ROUNDS,
         (unsigned long long)repairs, leaks, leaked);
  CHECK(repairs > 0);
}

/* ---- Arena misuse ---------------------------------------------------------------------------- */

/* The offset of a block that was allocated and freed (a used block after it keeps it apart). */
static uint64_t freed_block(tdm_arena *a) {
  uint64_t x, y;
  CHECK_OK(tdm_arena_alloc(a, 100, &x));
  CHECK_OK(tdm_arena_alloc(a, 100, &y));
  tdm_arena_free(a, x);
  return x;
}

static void double_free(void *arg) {
  tdm_arena_free(arg, freed_block(arg));
}

/* The second free of a block that was merged into its free neighbour. */
static void double_free_merged(void *arg) {
  tdm_arena *a = arg;
  uint64_t x, y, z;
  CHECK_OK(tdm_arena_alloc(a, 100, &x));
  CHECK_OK(tdm_arena_alloc(a, 100, &y));
  CHECK_OK(tdm_arena_alloc(a, 100, &z));
  tdm_arena_free(a, x);
  tdm_arena_free(a, y);
  tdm_arena_free(a, y);
}

static void free_inside_a_block(void *arg) {
  tdm_arena *a = arg;
  uint64_t x;
  CHECK_OK(tdm_arena_alloc(a, 256, &x));
  memset(tdm_arena_ptr(a, x), 0, 256);
  tdm_arena_free(a, x + 64);
}

static void free_misaligned(void *arg) {
  tdm_arena *a = arg;
  uint64_t x;
  CHECK_OK(tdm_arena_alloc(a, 256, &x));
  tdm_arena_free(a, x + 8);
}

static void free_zero(void *arg) {
  tdm_arena_free(arg, 0);
}

static void free_past_the_end(void *arg) {
  tdm_arena_free(arg, UINT64_C(1) << 40);
}

static void block_size_of_freed(void *arg) {
  tdm_arena_block_size(arg, freed_block(arg));
}

static void arena_uninitialised(void *arg) {
  uint64_t off;
  tdm_arena_alloc(arg, 10, &off);
}

static void ptr_outside(void *arg) {
  tdm_arena_ptr(arg, UINT64_C(1) << 40);
}

static void off_outside(void *arg) {
  tdm_arena_off(arg, arg); /* the header, not the heap */
}

TEST(arena_misuse_aborts) {
  tdm_arena *a = arena_new(SMALL_ARENA);
  EXPECT_ABORT(double_free, a, "tdm_arena_free");
  EXPECT_ABORT(double_free, a, "freed already");
  EXPECT_ABORT(double_free_merged, a, "freed already");
  EXPECT_ABORT(free_inside_a_block, a, "is not an allocated block");
  EXPECT_ABORT(free_misaligned, a, "misaligned");
  EXPECT_ABORT(free_zero, a, "is not an allocated block");
  EXPECT_ABORT(free_past_the_end, a, "outside the heap");
  EXPECT_ABORT(block_size_of_freed, a, "tdm_arena_block_size");
  EXPECT_ABORT(block_size_of_freed, a, "freed already");
  EXPECT_ABORT(ptr_outside, a, "tdm_arena_ptr");
  EXPECT_ABORT(off_outside, a, "tdm_arena_off");
  void *zero = tdm_test_shared(SMALL_ARENA);
  EXPECT_ABORT(arena_uninitialised, zero, "not an initialised arena");
  /* The children aborted without holding the arena's lock: no repair was needed. */
  CHECK_EQ(tdm_arena_repairs(a), 0);
}
