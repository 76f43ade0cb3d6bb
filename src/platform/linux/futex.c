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
 * alike at thread exit.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "platform/platform.h"

#define TLS_IE __attribute__((tls_model("initial-exec")))

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

#ifdef HAVE_ROBUST_LIST_CHAIN

/* The kernel's struct robust_list_head, seen through plain pointers. */
struct robust_head {
  void *next;
  long futex_offset;
  void *pending;
};

/* 0: not looked up yet; 1: usable; -1: not usable in this thread. */
static __thread int robust_state TLS_IE;
static __thread struct robust_head *robust_head TLS_IE;

bool tdm__robust_usable(void) {
  if (robust_state == 0) {
    struct robust_head *h = NULL;
    size_t len = 0;
    long r = syscall(SYS_get_robust_list, 0, &h, &len);
    if (r == 0 && h != NULL && len == sizeof(struct robust_head) &&
        h->futex_offset == TDM__ROBUST_FUTEX_OFFSET) {
      robust_head = h;
      robust_state = 1;
    } else {
      robust_state = -1;
    }
  }
  return robust_state == 1;
}

/* The `prev` slot of the node whose entry is `entry` (the head's entry is the head itself). */
static void **prev_slot(void *entry) {
  return (void **)((uintptr_t)entry & ~(uintptr_t)1) - 1;
}

void tdm__robust_pending(uint64_t *entry) {
  robust_head->pending = entry;
}

void tdm__robust_link(uint64_t *entry) {
  void **e = (void **)entry;
  void *first = robust_head->next;
  *prev_slot(first) = e;
  e[0] = first;
  e[-1] = robust_head;
  /* The node must be complete before the kernel can reach it from the head. */
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  robust_head->next = e;
}

void tdm__robust_unlink(uint64_t *entry) {
  void **e = (void **)entry;
  void *next = e[0];
  void *prev = e[-1];
  *prev_slot(next) = prev;
  *(void **)((uintptr_t)prev & ~(uintptr_t)1) = next;
  /* Out of the list before the node's own slots change: the kernel may walk it at any time. */
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  e[-1] = NULL;
  e[0] = NULL;
}

#else /* !HAVE_ROBUST_LIST_CHAIN */

bool tdm__robust_usable(void) {
  return false;
}

void tdm__robust_pending(uint64_t *entry) {
  (void)entry;
}

void tdm__robust_link(uint64_t *entry) {
  (void)entry;
}

void tdm__robust_unlink(uint64_t *entry) {
  (void)entry;
}

#endif /* HAVE_ROBUST_LIST_CHAIN */
