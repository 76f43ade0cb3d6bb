/*
 * sentinels: wait for whichever of several children ends first, with poll() on their
 * sentinels; and a daemon child, which cannot outlive its parent.
 *
 * The Python it re-creates:
 *
 *   from multiprocessing import Process, connection
 *   import time
 *
 *   def nap(seconds): time.sleep(seconds)
 *
 *   procs = [Process(target=nap, args=(s,)) for s in (0.3, 0.1, 0.2)]
 *   for p in procs: p.start()
 *   left = {p.sentinel: p for p in procs}
 *   while left:
 *       for s in connection.wait(list(left)):
 *           p = left.pop(s); p.join(); print(p.name, "ended")
 *
 * tdm_process_sentinel() is a pidfd: it goes into poll, epoll or select beside sockets and
 * pipes, so a program's event loop can supervise children with no SIGCHLD handler.
 */
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "tandem.h"

static int nap(void *arg, size_t size) {
  int ms;
  memcpy(&ms, arg, size);
  tdm_clock_sleep(TDM_MS(ms));
  return 0;
}

int main(void) {
  enum { N = 3 };
  const int naps[N] = { 300, 100, 200 };
  tdm_process *p[N];
  struct pollfd pf[N];
  for (int i = 0; i < N; i++) {
    int r = tdm_process_start(&p[i], nap, &naps[i], sizeof naps[i], NULL);
    if (r != 0) {
      fprintf(stderr, "start: %s\n", tdm_strerror(r));
      return 1;
    }
    pf[i] = (struct pollfd){ .fd = tdm_process_sentinel(p[i]), .events = POLLIN };
    printf("%s naps %d ms\n", tdm_process_name(p[i]), naps[i]);
  }
  int order = 0, expected[N] = { 1, 2, 0 };
  for (int left = N; left > 0;) {
    if (poll(pf, N, -1) <= 0) continue;
    for (int i = 0; i < N; i++) {
      if (pf[i].fd < 0 || !(pf[i].revents & POLLIN)) continue;
      int code = -1;
      if (tdm_process_join(p[i], TDM_FOREVER) != 0 || tdm_process_exitcode(p[i], &code) != 0)
        return 1;
      printf("%s ended, exit code %d\n", tdm_process_name(p[i]), code);
      if (code != 0 || expected[order++] != i) return 1;
      if (tdm_process_close(p[i]) != 0) return 1;
      pf[i].fd = -1;
      left--;
    }
  }
  tdm_process *out[4];
  size_t active = tdm_process_active_children(out, 4);
  printf("active children now: %zu\n", active);
  if (active != 0) return 1;

  /* A daemon child: it runs in a group of its own, and the group is killed when we end. */
  tdm_process_options daemon = { .name = "daemon", .daemon = true };
  int forever = 1000 * 1000;
  tdm_process *d;
  if (tdm_process_start(&d, nap, &forever, sizeof forever, &daemon) != 0) return 1;
  printf("daemon %d started; it would nap for 1000 s, but it ends when this program does\n",
         (int)tdm_process_pid(d));
  return 0;
}
