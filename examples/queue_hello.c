/*
 * queue_hello: the seeds' first queue example, a "hello" from a child process through a queue,
 * under each start method.
 *
 * The Python it re-creates:
 *
 *   import multiprocessing as mp
 *
 *   def greet(q, method):
 *       q.put(f"hello from a {method} child")
 *
 *   for method in ("fork", "spawn", "forkserver"):
 *       q = mp.get_context(method).Queue()
 *       p = mp.get_context(method).Process(target=greet, args=(q, method))
 *       p.start(); print(q.get()); p.join()
 *
 * A fork child uses the parent's handle; spawn and forkserver children get the queue's
 * descriptor (pass_fds) and attach it. A put is finished when it returns (there is no feeder
 * thread), so the child could even be joined before the parent reads.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"

struct hello_args {
  tdm_queue *q; /* valid in a fork child only */
  int fd;       /* the queue's descriptor, at the same number in every child */
  char method[16];
};

static int greet(void *arg, size_t size) {
  (void)size;
  struct hello_args *a = arg;
  tdm_queue *q = a->q;
  if (strcmp(a->method, "fork") != 0 && tdm_queue_attach_fd(&q, a->fd) != 0) return 1;
  char msg[128];
  int n = snprintf(msg, sizeof msg, "hello from a %s child (pid %d)", a->method, (int)getpid());
  int r = tdm_queue_put(q, msg, (size_t)n, TDM_FOREVER);
  if (q != a->q) tdm_queue_close(q);
  return r == 0 ? 0 : 1;
}

int main(void) {
  static const tdm_start_method methods[] = { TDM_START_FORK, TDM_START_SPAWN,
                                              TDM_START_FORKSERVER };
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    tdm_queue *q;
    int r = tdm_queue_open(&q, NULL);
    if (r != 0) {
      fprintf(stderr, "queue_hello: %s\n", tdm_strerror(r));
      return 1;
    }
    struct hello_args a = { .q = q, .fd = tdm_queue_fd(q) };
    snprintf(a.method, sizeof a.method, "%s", tdm_start_method_name(methods[i]));
    tdm_process_options o = { .start = methods[i], .pass_fds = &a.fd, .n_pass_fds = 1 };
    tdm_process *p;
    r = tdm_process_start(&p, greet, &a, sizeof a, &o);
    char buf[128];
    size_t len = 0;
    if (r == 0) r = tdm_queue_recv(q, buf, sizeof buf - 1, &len, TDM_S(10));
    if (r == 0) {
      buf[len] = '\0';
      printf("  parent got: \"%s\"\n", buf);
    }
    int code = -1;
    if (r == 0) r = tdm_process_join(p, TDM_S(10));
    if (r == 0) r = tdm_process_exitcode(p, &code);
    if (r != 0 || code != 0) {
      fprintf(stderr, "queue_hello: %s: %s (exit code %d)\n", a.method, tdm_strerror(r), code);
      return 1;
    }
    tdm_process_close(p);
    tdm_queue_close(q);
  }
  return 0;
}
