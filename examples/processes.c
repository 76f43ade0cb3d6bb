/*
 * processes: one task started under each start method, exit codes with Python's meaning, a join
 * that times out, and terminate.
 *
 * The Python it re-creates:
 *
 *   import multiprocessing as mp, os, signal
 *
 *   def work(n): os._exit(n * 2)          # the exit status is the result
 *   def crash(): os.abort()
 *   def hang(): signal.pause()
 *
 *   for method in ("fork", "spawn", "forkserver"):
 *       p = mp.get_context(method).Process(target=work, args=(21,), name=f"work-{method}")
 *       p.start(); p.join(); print(method, p.pid, p.exitcode)            # 42
 *   p = mp.Process(target=crash); p.start(); p.join(); print(p.exitcode) # -6
 *   p = mp.Process(target=hang); p.start(); p.join(timeout=0.1)
 *   print(p.is_alive()); p.terminate(); p.join(); print(p.exitcode)       # True, -15
 *
 * No `if __name__ == "__main__":` guard is needed: a spawn or forkserver child runs its task
 * before main() and exits.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tandem.h"

static int work(void *arg, size_t size) {
  int n;
  memcpy(&n, arg, size);
  printf("  %s (pid %d) runs work(%d)\n", tdm_process_current_name(), (int)getpid(), n);
  return n * 2;
}

static int crash(void *arg, size_t size) {
  (void)arg;
  (void)size;
  abort();
  return 0;
}

static int hang(void *arg, size_t size) {
  (void)arg;
  (void)size;
  for (;;)
    pause();
  return 0;
}

/* Joins p, prints its exit code and frees it. */
static int finish(tdm_process *p) {
  int code = 0, r = tdm_process_join(p, TDM_FOREVER);
  if (r == 0) r = tdm_process_exitcode(p, &code);
  if (r == 0) r = tdm_process_close(p);
  if (r != 0) {
    fprintf(stderr, "processes: %s\n", tdm_strerror(r));
    return -1000;
  }
  return code;
}

int main(void) {
  const tdm_start_method methods[] = { TDM_START_FORK, TDM_START_SPAWN, TDM_START_FORKSERVER };
  printf("default start method here: %s (one thread)\n",
         tdm_start_method_name(tdm_process_start_method()));
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "work-%s", tdm_start_method_name(methods[i]));
    tdm_process_options opt = { .name = name, .start = methods[i] };
    int n = 21;
    tdm_process *p;
    int r = tdm_process_start(&p, work, &n, sizeof n, &opt);
    if (r != 0) {
      fprintf(stderr, "start: %s\n", tdm_strerror(r));
      return 1;
    }
    pid_t pid = tdm_process_pid(p);
    int code = finish(p);
    printf("%-10s pid %d exit code %d\n", tdm_start_method_name(methods[i]), (int)pid, code);
    if (code != 42) return 1;
  }

  tdm_process *p;
  if (tdm_process_start(&p, crash, NULL, 0, NULL) != 0) return 1;
  int code = finish(p);
  printf("crash: exit code %d (killed by signal %d, SIGABRT)\n", code, -code);
  if (code != -SIGABRT) return 1;

  if (tdm_process_start(&p, hang, NULL, 0, NULL) != 0) return 1;
  int r = tdm_process_join(p, TDM_MS(100));
  bool alive = tdm_process_is_alive(p);
  printf("hang: join(100 ms) says %s, alive: %s\n", tdm_err_name(r), alive ? "yes" : "no");
  if (r != -ETIMEDOUT || !alive) return 1;
  tdm_process_terminate(p);
  code = finish(p);
  printf("hang: after terminate, exit code %d (SIGTERM)\n", code);
  return code == -SIGTERM ? 0 : 1;
}
