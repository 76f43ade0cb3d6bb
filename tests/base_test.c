/*
 * base_test.c: errors, clocks and deadlines, the CPU count (with fake and real cgroup trees),
 * and the allocator hook (fault injection).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cpu.h"
#include "runner.h"

/* ---- Errors ---------------------------------------------------------------------------------- */

TEST(error_table_codes_have_messages_and_names) {
  static const int codes[] = {
#define CODE(name, value, message) TDM_##name,
    TDM_ERROR_MAP(CODE)
#undef CODE
  };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    CHECK(codes[i] <= -1000 && codes[i] >= -1999);
    CHECK(strcmp(tdm_strerror(codes[i]), "unknown error") != 0);
    CHECK(strncmp(tdm_err_name(codes[i]), "TDM_E", 5) == 0);
  }
  CHECK(strcmp(tdm_err_name(TDM_EBROKEN), "TDM_EBROKEN") == 0);
  CHECK(strstr(tdm_strerror(TDM_EOVERRELEASE), "semaphore") != NULL);
}

TEST(error_errno_values) {
  CHECK(strcmp(tdm_err_name(-ETIMEDOUT), "ETIMEDOUT") == 0);
  CHECK(strcmp(tdm_err_name(ETIMEDOUT), "ETIMEDOUT") == 0);
  CHECK(strstr(tdm_strerror(-ETIMEDOUT), "timed out") != NULL);
  CHECK(strcmp(tdm_err_name(-EOWNERDEAD), "EOWNERDEAD") == 0);
  CHECK(strcmp(tdm_strerror(0), "success") == 0);
  CHECK(strcmp(tdm_err_name(0), "OK") == 0);
  CHECK(strcmp(tdm_strerror(-1500), "unknown error") == 0);
  CHECK(strcmp(tdm_err_name(-1500), "UNKNOWN") == 0);
  CHECK(strcmp(tdm_strerror(-100000), "unknown error") == 0);
}

TEST(version_matches_headers) {
  CHECK(strcmp(tdm_version(), TDM_VERSION_STRING) == 0);
}

/* ---- Clock ----------------------------------------------------------------------------------- */

TEST(clock_is_monotonic) {
  int64_t last = tdm_clock_now();
  for (int i = 0; i < 100000; i++) {
    int64_t now = tdm_clock_now();
    CHECK(now >= last);
    last = now;
  }
}

TEST(deadline_arithmetic) {
  CHECK_EQ(tdm_deadline_after(TDM_FOREVER).at, INT64_MAX);
  CHECK_EQ(tdm_deadline_after(-12345).at, INT64_MAX);
  CHECK_EQ(tdm_deadline_after(INT64_MAX).at, INT64_MAX); /* saturates instead of overflowing */
  CHECK_EQ(tdm_deadline_left(tdm_deadline_after(TDM_FOREVER)), TDM_FOREVER);
  CHECK(!tdm_deadline_passed(tdm_deadline_after(TDM_FOREVER)));

  tdm_deadline now = tdm_deadline_after(0);
  CHECK(tdm_deadline_passed(now));
  CHECK_EQ(tdm_deadline_left(now), 0);

  tdm_deadline soon = tdm_deadline_after(TDM_S(100));
  CHECK(!tdm_deadline_passed(soon));
  int64_t left = tdm_deadline_left(soon);
  CHECK(left > TDM_S(99) && left <= TDM_S(100));

  CHECK_EQ(TDM_MS(3), 3000000);
  CHECK_EQ(TDM_US(3), 3000);
  CHECK_EQ(TDM_S(2), 2000000000);
}

TEST(sleep_lasts_at_least_its_duration) {
  int64_t t0 = tdm_clock_now();
  CHECK_OK(tdm_clock_sleep(TDM_MS(20)));
  CHECK(tdm_clock_now() - t0 >= TDM_MS(20));
  CHECK_OK(tdm_clock_sleep(0));
  CHECK_ERR(tdm_clock_sleep(-1), -EINVAL);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

TEST(sleep_is_not_shortened_by_signals) {
  struct sigaction sa = { 0 };
  sa.sa_handler = on_alarm; /* no SA_RESTART: every signal interrupts the sleep */
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = { { 0, 1000 }, { 0, 1000 } };
  setitimer(ITIMER_REAL, &it, NULL);
  int64_t t0 = tdm_clock_now();
  CHECK_OK(tdm_clock_sleep(TDM_MS(50)));
  int64_t elapsed = tdm_clock_now() - t0;
  struct itimerval off = { { 0, 0 }, { 0, 0 } };
  setitimer(ITIMER_REAL, &off, NULL);
  CHECK(alarms > 0);
  CHECK(elapsed >= TDM_MS(50));
}

TEST(cpu_clocks_count_work_not_waiting) {
  int64_t t0 = tdm_clock_thread_cpu();
  CHECK_OK(tdm_clock_sleep(TDM_MS(30)));
  int64_t slept = tdm_clock_thread_cpu() - t0;
  volatile uint64_t x = 0;
  int64_t w0 = tdm_clock_thread_cpu();
  while (tdm_clock_thread_cpu() - w0 < TDM_MS(20))
    x++;
  CHECK(tdm_clock_thread_cpu() - w0 >= TDM_MS(20));
  CHECK(slept < TDM_MS(30)); /* a sleeping thread uses (much) less CPU than wall time */
  int64_t thread_cpu = tdm_clock_thread_cpu();
  CHECK(tdm_clock_process_cpu() >= thread_cpu);
}

/* ---- CPU count ------------------------------------------------------------------------------- */

static int affinity_count(void) {
  cpu_set_t set;
  CHECK_OK(sched_getaffinity(0, sizeof set, &set));
  return CPU_COUNT(&set);
}

TEST(cpu_count_is_bounded_by_affinity) {
  unsetenv("TDM_CPU_COUNT");
  int n = tdm_cpu_count();
  CHECK(n >= 1);
  CHECK(n <= affinity_count());
}

TEST(cpu_count_environment_override) {
  setenv("TDM_CPU_COUNT", "7", 1);
  CHECK_EQ(tdm_cpu_count(), 7);
  setenv("TDM_CPU_COUNT", "1000", 1);
  CHECK_EQ(tdm_cpu_count(), 1000);
  unsetenv("TDM_CPU_COUNT");
  int real = tdm_cpu_count();
  static const char *bad[] = { "0", "-3", "abc", "5x", "", " 4", "99999999999999999999" };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    setenv("TDM_CPU_COUNT", bad[i], 1);
    CHECK_EQ(tdm_cpu_count(), real);
  }
}

static void one_cpu_child(void *arg) {
  (void)arg;
  unsetenv("TDM_CPU_COUNT");
  cpu_set_t set;
  CHECK_OK(sched_getaffinity(0, sizeof set, &set));
  int first = -1;
  for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
    if (CPU_ISSET(i, &set)) first = i;
  CPU_ZERO(&set);
  CPU_SET(first, &set);
  CHECK_OK(sched_setaffinity(0, sizeof set, &set));
  CHECK_EQ(tdm_cpu_count(), 1);
}

TEST(cpu_count_follows_affinity_changes) {
  tdm_test_wait_ok(tdm_test_fork(one_cpu_child, NULL));
}

/* A fake root for tdm__cgroup_cpu_limit(): files under a temporary directory. */
static char fake_root[PATH_MAX];

static void make_root(void) {
  snprintf(fake_root, sizeof fake_root, "/tmp/tdm-cgroup-XXXXXX");
  CHECK(mkdtemp(fake_root) != NULL);
}

static void put(const char *path, const char *text) {
  char full[PATH_MAX * 2];
  snprintf(full, sizeof full, "%s%s", fake_root, path);
  for (char *p = full + strlen(fake_root) + 1; *p != '\0'; p++) {
    if (*p == '/') {
      *p = '\0';
      mkdir(full, 0755);
      *p = '/';
    }
  }
  FILE *f = fopen(full, "w");
  CHECK(f != NULL);
  fputs(text, f);
  fclose(f);
}

static void remove_root(void) {
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", fake_root);
  CHECK_EQ(system(cmd), 0);
}

static const char *V2_MOUNT =
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate\n";

TEST(cgroup_v2_quota_is_the_smallest_on_the_path) {
  make_root();
  put("/proc/self/mountinfo", V2_MOUNT);
  put("/proc/self/cgroup", "0::/a/b\n");
  put("/sys/fs/cgroup/a/b/cpu.max", "max 100000\n");
  put("/sys/fs/cgroup/a/cpu.max", "150000 100000\n"); /* 1.5 CPUs: rounds up to 2 */
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 2);
  put("/sys/fs/cgroup/a/b/cpu.max", "50000 100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 1);
  put("/sys/fs/cgroup/a/b/cpu.max", "400000 100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 2); /* the parent's quota still caps it */
  put("/sys/fs/cgroup/a/cpu.max", "max 100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 4);
  put("/sys/fs/cgroup/a/b/cpu.max", "max\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 0); /* no quota anywhere */
  remove_root();
}

TEST(cgroup_v1_cpu_controller) {
  make_root();
  put("/proc/self/mountinfo",
      "31 23 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
      "32 23 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n");
  put("/proc/self/cgroup", "5:memory:/x\n4:cpu,cpuacct:/docker/x\n");
  put("/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us", "-1\n");
  put("/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n");
  put("/sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us", "300000\n");
  put("/sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 3);
  remove_root();
}

TEST(cgroup_mount_showing_a_subtree) {
  /* Inside a container without a cgroup namespace the mount root is the container's cgroup. */
  make_root();
  put("/proc/self/mountinfo",
      "30 23 0:26 /docker/abc /sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw\n");
  put("/proc/self/cgroup", "0::/docker/abc/worker\n");
  put("/sys/fs/cgroup/worker/cpu.max", "200000 100000\n");
  put("/sys/fs/cgroup/cpu.max", "100000 100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 1);
  /* A process outside the mounted sub-tree: nothing applies. */
  put("/proc/self/cgroup", "0::/elsewhere\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 0);
  remove_root();
}

TEST(cgroup_v1_and_v2_take_the_smaller_and_escapes_decode) {
  make_root();
  put("/proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup/uni\\040fied rw - cgroup2 cgroup2 rw\n"
                              "31 23 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
  put("/proc/self/cgroup", "1:cpu:/\n0::/\n");
  put("/sys/fs/cgroup/uni fied/cpu.max", "300000 100000\n");
  put("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "200000\n");
  put("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 2);
  remove_root();
}

TEST(cgroup_missing_or_malformed_files) {
  make_root();
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 0); /* no /proc at all */
  put("/proc/self/mountinfo", "garbage\n\n- - -\n");
  put("/proc/self/cgroup", "nonsense\n0::\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 0);
  put("/proc/self/mountinfo", V2_MOUNT);
  put("/proc/self/cgroup", "0::/\n");
  put("/sys/fs/cgroup/cpu.max", "lots of cpus\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 0);
  put("/sys/fs/cgroup/cpu.max", "0 100000\n");
  CHECK_EQ(tdm__cgroup_cpu_limit(fake_root), 0);
  remove_root();
}

static char real_cgroup[PATH_MAX];

static void cgroup_child(void *arg) {
  (void)arg;
  unsetenv("TDM_CPU_COUNT");
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/cgroup.procs", real_cgroup);
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  fprintf(f, "%d\n", (int)getpid());
  CHECK_EQ(fclose(f), 0);
  CHECK_EQ(tdm_cpu_count(), 1);
}

TEST(cpu_count_honours_a_real_cgroup_quota) {
  if (affinity_count() < 2) tdm_test_skip("needs at least 2 CPUs to see a quota of 1");
  const char *bases[] = { "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct" };
  const char *base = NULL;
  for (size_t i = 0; i < 2 && base == NULL; i++) {
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/cpu.cfs_quota_us", bases[i]);
    if (access(probe, F_OK) == 0 && access(bases[i], W_OK) == 0) base = bases[i];
  }
  if (base == NULL) tdm_test_skip("no writable cgroup v1 cpu controller (needs root)");
  snprintf(real_cgroup, sizeof real_cgroup, "%s/tdm-test-%d", base, (int)getpid());
  if (mkdir(real_cgroup, 0755) != 0) tdm_test_skip("cannot create a cgroup: %s", strerror(errno));
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/cpu.cfs_period_us", real_cgroup);
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  fputs("100000\n", f);
  fclose(f);
  snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", real_cgroup);
  f = fopen(path, "w");
  CHECK(f != NULL);
  fputs("100000\n", f);
  CHECK_EQ(fclose(f), 0);
  int status = tdm_test_wait(tdm_test_fork(cgroup_child, NULL));
  /* Remove the cgroup before judging, so that a failure leaves nothing behind. */
  CHECK_EQ(rmdir(real_cgroup), 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- Allocator ------------------------------------------------------------------------------- */

static struct {
  long allocs, frees, fail_at; /* fail the fail_at-th allocation (1-based); 0: never */
  long calls;
} alloc_stats;

static void *counting_alloc(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    if (ptr != NULL) alloc_stats.frees++;
    free(ptr);
    return NULL;
  }
  alloc_stats.calls++;
  if (alloc_stats.fail_at != 0 && alloc_stats.calls == alloc_stats.fail_at) return NULL;
  void *p = realloc(ptr, size);
  if (p != NULL && ptr == NULL) alloc_stats.allocs++;
  return p;
}

static void nothing(void *arg) {
  (void)arg;
}

static int named_start_join(void) {
  tdm_thread *t = NULL;
  tdm_thread_options o = { .name = "counted" };
  int r = tdm_thread_start(&t, nothing, NULL, &o);
  if (r == 0)
    CHECK_OK(tdm_thread_join(t, TDM_FOREVER));
  else
    CHECK(t == NULL);
  return r;
}

static int timer_start_join(void) {
  tdm_timer *t = NULL;
  int r = tdm_timer_start(&t, 0, nothing, NULL, NULL);
  if (r == 0)
    CHECK_OK(tdm_timer_join(t, TDM_FOREVER));
  else
    CHECK(t == NULL);
  return r;
}

TEST(allocator_sees_every_allocation) {
  tdm_allocator a = { counting_alloc, NULL };
  tdm_allocator_set(&a);
  CHECK_OK(named_start_join());
  CHECK_OK(timer_start_join());
  tdm_allocator_set(NULL);
  CHECK(alloc_stats.allocs > 0);
  CHECK_EQ(alloc_stats.allocs, alloc_stats.frees);
}

TEST(allocation_failures_are_reported_and_leak_nothing) {
  tdm_allocator a = { counting_alloc, NULL };
  tdm_allocator_set(&a);
  int (*calls[])(void) = { named_start_join, timer_start_join };
  for (size_t c = 0; c < 2; c++) {
    int failures = 0;
    for (long n = 1;; n++) {
      memset(&alloc_stats, 0, sizeof alloc_stats);
      alloc_stats.fail_at = n;
      int r = calls[c]();
      CHECK(r == 0 || r == -ENOMEM);
      CHECK_EQ(alloc_stats.allocs, alloc_stats.frees);
      if (r == 0) break; /* the n-th allocation no longer happens: every one was tried */
      failures++;
    }
    CHECK(failures > 0);
  }
  tdm_allocator_set(NULL);
}
