/* The consumer of an installed tandem: a thread, a lock, an authenticated connection (which
 * needs libcrypto at link time with the static library) and a version check. */
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

static void client(void *address) {
  tdm_conn_options o = { .authkey = "consumer", .authkey_len = 8 };
  tdm_conn *c;
  if (tdm_client_connect(&c, address, &o) != 0) return;
  tdm_conn_send(c, "hi", 2, TDM_FOREVER);
  tdm_conn_close(c);
}

/* Returns 0 when a client authenticated and its message arrived. */
static int connection(void) {
  tdm_conn_options o = { .authkey = "consumer", .authkey_len = 8 };
  tdm_listener *l;
  if (tdm_listener_open(&l, NULL, &o) != 0) return 1;
  tdm_thread *t;
  if (tdm_thread_start(&t, client, (void *)tdm_listener_address(l), NULL) != 0) return 2;
  tdm_conn *c;
  char buf[8];
  size_t len = 0;
  int rc = tdm_listener_accept(l, &c, TDM_S(30));
  if (rc == 0) {
    rc = tdm_conn_recv_into(c, buf, sizeof buf, &len, TDM_S(30));
    tdm_conn_close(c);
  }
  tdm_thread_join(t, TDM_FOREVER);
  tdm_listener_close(l);
  return rc == 0 && len == 2 && memcmp(buf, "hi", 2) == 0 ? 0 : 3;
}

int main(void) {
  if (strcmp(tdm_version(), TDM_VERSION_STRING) != 0) return 1;
  if (tdm_lock_init(&lock, TDM_SYNC_PRIVATE) != 0) return 2;
  tdm_thread *t;
  if (tdm_thread_start(&t, work, NULL, NULL) != 0) return 3;
  work(NULL);
  if (tdm_thread_join(t, TDM_FOREVER) != 0) return 4;
  if (connection() != 0) return 6;
  printf("consumer: tandem %s, counter %d, %d CPUs\n", tdm_version(), counter, tdm_cpu_count());
  return counter == 2000 ? 0 : 5;
}
