/*
 * Build probe: exits 0 when the C library's robust list uses the node format that
 * src/platform/linux/futex.c links tandem's locks into: a {prev, next} pair whose `next` slot is
 * the list entry, the futex word 32 bytes before the entry, and the head's own `prev` slot just
 * before the head. It checks this on a real robust mutex.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
  struct robust_list_head *head = NULL;
  size_t len = 0;
  if (sizeof(void *) != 8) return 1;
  if (syscall(SYS_get_robust_list, 0, &head, &len) != 0 || head == NULL) return 2;
  if (len != sizeof *head || head->futex_offset != -32) return 3;
  pthread_mutexattr_t a;
  pthread_mutex_t m;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (pthread_mutex_init(&m, &a) != 0 || pthread_mutex_lock(&m) != 0) return 4;
  char *word = (char *)&m;
  void **entry = (void **)head->list.next;
  int ok = (char *)entry + head->futex_offset == word /* futex word 32 bytes before */
           && entry[-1] == (void *)head               /* prev of the first is the head */
           && *((void **)head - 1) == (void *)entry;  /* the head's prev slot */
  pthread_mutex_unlock(&m);
  ok = ok && head->list.next == &head->list; /* unlinked again */
  return ok ? 0 : 5;
}
