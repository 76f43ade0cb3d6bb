/*
 * shm_segment: a parent creates a named shared memory segment, a spawned child (a fresh exec
 * of the program) attaches it by name and writes into it, and the parent reads what the child
 * wrote. The parent owns the segment, so closing it removes the name from /dev/shm; the child
 * only attached, so its close removes nothing.
 *
 * The Python it corresponds to (module multiprocessing.shared_memory):
 *
 *   shm = SharedMemory(name="tandem-example", create=True, size=4096)
 *   def child(): s = SharedMemory(name="tandem-example"); s.buf[:5] = b"hello"; s.close()
 *   p = Process(target=child); p.start(); p.join()
 *   print(bytes(shm.buf[:5])); shm.close(); shm.unlink()
 *
 * (In Python the child's resource tracker may remove the segment when the child exits, the
 * problem of gh-82300; a tandem attacher never removes anything.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"

static void check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s\n", what, tdm_strerror(rc));
    exit(1);
  }
}

/* The child, a fresh exec of this program (spawn): attach by name, write, close. */
static int child(void *arg, size_t size) {
  (void)size;
  const char *name = arg;
  tdm_shm *s;
  int rc = tdm_shm_attach(&s, name, 0, NULL);
  if (rc < 0) {
    fprintf(stderr, "child: attach %s: %s\n", name, tdm_strerror(rc));
    return 1;
  }
  snprintf(tdm_shm_addr(s), tdm_shm_size(s), "hello from process %d", (int)getpid());
  printf("child %d: attached %s (%zu bytes, owner: %s), wrote a greeting\n", (int)getpid(),
         tdm_shm_name(s), tdm_shm_size(s), tdm_shm_owned(s) ? "yes" : "no");
  rc = tdm_shm_close(s);
  return rc == 0 ? 0 : 1;
}

int main(void) {
  char name[64];
  snprintf(name, sizeof name, "/tandem-example-%d", (int)getpid());

  tdm_shm *s;
  check(tdm_shm_create(&s, name, 4096, NULL), "create");
  printf("parent %d: created %s (%zu bytes, owner: %s)\n", (int)getpid(), tdm_shm_name(s),
         tdm_shm_size(s), tdm_shm_owned(s) ? "yes" : "no");

  tdm_process *p;
  tdm_process_options opt = { .start = TDM_START_SPAWN };
  check(tdm_process_start(&p, child, name, strlen(name) + 1, &opt), "start");
  int code = -1;
  check(tdm_process_join(p, TDM_FOREVER), "join");
  check(tdm_process_exitcode(p, &code), "exitcode");
  tdm_process_close(p);
  if (code != 0) {
    fprintf(stderr, "parent: the child failed\n");
    tdm_shm_close(s);
    return 1;
  }

  char path[96];
  snprintf(path, sizeof path, "/dev/shm%s", name);
  printf("parent: the child is done; %s %s\n", path,
         access(path, F_OK) == 0 ? "is still there" : "is gone (unexpected)");
  printf("parent: the segment holds \"%s\"\n", (char *)tdm_shm_addr(s));
  bool ok = strncmp(tdm_shm_addr(s), "hello from process ", 19) == 0;

  check(tdm_shm_close(s), "close");
  bool gone = access(path, F_OK) != 0;
  printf("parent: closed it; %s %s\n", path, gone ? "is gone" : "is still there (unexpected)");
  return ok && gone ? 0 : 1;
}
