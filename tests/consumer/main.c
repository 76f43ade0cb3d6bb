/* The consumer of an installed tandem: a thread, a lock and a version check. */
#include <stdio.h>
#include <string.h>

#include <tandem.h>

static tdm_lock lock;
static int counter;

static void work(void *arg) {
  (void)arg;
  for (int i = 0; i < 1000; i++) {
    tdm_lock_acquire(&lock, TDM_FOREVER);
    counter++;
    tdm_lock_release(&lock);
  }
}

int main(void) {
  if (strcmp(tdm_version(), TDM_VERSION_STRING) != 0) return 1;
  if (tdm_lock_init(&lock, TDM_SYNC_PRIVATE) != 0) return 2;
  tdm_thread *t;
  if (tdm_thread_start(&t, work, NULL, NULL) != 0) return 3;
  work(NULL);
  if (tdm_thread_join(t, TDM_FOREVER) != 0) return 4;
  printf("consumer: tandem %s, counter %d, %d CPUs\n", tdm_version(), counter, tdm_cpu_count());
  return counter == 2000 ? 0 : 5;
}
