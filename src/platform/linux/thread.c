/*
 * thread.c: thread identity, OS thread names and the affinity mask.
 *
 * The kernel thread id is needed on every lock acquisition (it is the lock word), and gettid()
 * is a system call, so it is cached in an initial-exec TLS slot. fork() gives the child a new
 * id for the same TLS memory, so a pthread_atfork child handler clears the cache, after noting
 * the old id in a short history (private locks the thread held when it forked carry that id);
 * the handler is registered by a constructor with the highest priority of the library, so it
 * runs before any other child handler of tandem's that might take a lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "platform/platform.h"

__thread int32_t tdm__tid_tls TDM__TLS_IE;

int32_t tdm__tid_lookup(void) {
  tdm__tid_tls = (int32_t)syscall(SYS_gettid);
  return tdm__tid_tls;
}

int tdm__sched_open(int32_t tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", (int)tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  return fd >= 0 ? fd : -errno;
}

int64_t tdm__sched_wait_ns(int fd) {
  /* "<time on a CPU> <time waiting for one> <time slices>", in ns (Documentation/scheduler/
   * sched-stats.rst). */
  char buf[96];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n < 0) return -errno;
  buf[n] = '\0';
  unsigned long long run, wait;
  if (sscanf(buf, "%llu %llu", &run, &wait) != 2) return -EINVAL;
  return (int64_t)wait;
}

bool tdm__is_main_thread(void) {
  return tdm__tid() == (int32_t)getpid();
}

#define HISTORY 8
static __thread int32_t tid_history[HISTORY];

bool tdm__tid_was_mine(int32_t tid) {
  if (tid == 0) return false; /* the history's empty slots */
  for (int i = 0; i < HISTORY; i++)
    if (tid_history[i] == tid) return true;
  return false;
}

/* In the child of fork(): remember the id the thread had, then look the new one up. */
static void forget_tid(void) {
  memmove(&tid_history[1], &tid_history[0], sizeof tid_history - sizeof tid_history[0]);
  tid_history[0] = tdm__tid_tls;
  tdm__tid_tls = 0;
}

__attribute__((constructor(101))) static void platform_init(void) {
  pthread_atfork(NULL, NULL, forget_tid);
}

void tdm__set_os_thread_name(const char *name) {
  char buf[16];
  size_t n = strlen(name);
  if (n > sizeof buf - 1) {
    n = sizeof buf - 1;
    /* Back off to the first byte of a UTF-8 sequence, so no character is cut in two. */
    while (n > 0 && ((unsigned char)name[n] & 0xC0) == 0x80)
      n--;
  }
  memcpy(buf, name, n);
  buf[n] = '\0';
  (void)pthread_setname_np(pthread_self(), buf);
}

int tdm__affinity_cpus(void) {
  /* Grow the mask until the kernel accepts it, for machines with more than CPU_SETSIZE CPUs. */
  for (size_t ncpu = 1024; ncpu <= (size_t)1 << 20; ncpu *= 2) {
    size_t size = CPU_ALLOC_SIZE(ncpu);
    cpu_set_t *set = CPU_ALLOC(ncpu);
    if (set == NULL) return 1;
    int r = sched_getaffinity(0, size, set);
    if (r == 0) {
      int n = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return n > 0 ? n : 1;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}
