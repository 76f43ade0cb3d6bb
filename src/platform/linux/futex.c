/*
 * futex.c: futex waits and wakes, and the robust-list chaining that makes tandem's shared locks
 * survive their owner's death.
 *
 * Waits use FUTEX_WAIT_BITSET, whose timeout is an absolute CLOCK_MONOTONIC time: the caller's
 * deadline is passed through unchanged, so a wait restarted after a signal or a spurious return
 * never waits longer than the caller asked.
 *
 * Robust lists. The kernel allows one robust-list head per thread and the C library registers
 * its own at thread start. Replacing it would break robust pthread mutexes, so tandem adds its
 * nodes to that list instead. This needs the C library's node format, which the build checks
 * (HAVE_ROBUST_LIST_CHAIN: glibc on a 64-bit system, where a node is a {prev, next} pair of
 * pointers whose `next` slot is the entry, `prev` points at the previous node's entry, and the
 * head's own `prev` slot sits just before the head), and which each thread checks once at run
 * time by reading its head's futex_offset. Since the formats are identical, glibc's insertions
 * and removals and ours keep one consistent doubly linked list, and the kernel treats every node
 * alike at thread exit. Linking and unlinking run on every shared-lock operation, so they are
 * inline functions in platform.h; this file only looks the head up, once per thread.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "platform/platform.h"

int tdm__futex_wait(uint32_t *word, uint32_t expected, int64_t deadline, bool shared) {
  int op = FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG);
  struct timespec ts, *tsp = NULL;
  if (deadline != TDM__NEVER) {
    if (deadline < 0) deadline = 0;
    ts.tv_sec = (time_t)(deadline / 1000000000);
    ts.tv_nsec = (long)(deadline % 1000000000);
    tsp = &ts;
  }
  long r = syscall(SYS_futex, word, op, expected, tsp, NULL, FUTEX_BITSET_MATCH_ANY);
  if (r == -1 && errno == ETIMEDOUT) return -ETIMEDOUT;
  /* 0, EAGAIN (the word changed), EINTR: the caller re-checks and waits again if needed. */
  return 0;
}

int tdm__futex_wake(uint32_t *word, int n, bool shared) {
  int op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
  long r = syscall(SYS_futex, word, op, n, NULL, NULL, 0);
  return r < 0 ? 0 : (int)r;
}

__thread struct tdm__robust_head *tdm__robust_head_tls TDM__TLS_IE;
__thread int tdm__robust_state_tls TDM__TLS_IE;

bool tdm__robust_lookup(void) {
#ifdef HAVE_ROBUST_LIST_CHAIN
  struct tdm__robust_head *h = NULL;
  size_t len = 0;
  long r = syscall(SYS_get_robust_list, 0, &h, &len);
  if (r == 0 && h != NULL && len == sizeof(struct tdm__robust_head) &&
      h->futex_offset == TDM__ROBUST_FUTEX_OFFSET) {
    tdm__robust_head_tls = h;
    tdm__robust_state_tls = 1;
    return true;
  }
#endif
  tdm__robust_state_tls = -1;
  return false;
}
