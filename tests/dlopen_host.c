/*
 * dlopen_host.c: a program that does not link libtandem but loads it with dlopen(), as a
 * Python extension or a plugin host would, and starts a task under spawn and forkserver. The
 * spawned copy of this program would run main() again if libtandem's constructor did not take
 * over first; tandem preloads the library into the child for that. Exits 0 when every child ran
 * its task (and only its task) and returned its value.
 *
 *   dlopen_host PATH-OF-LIBTANDEM
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*task_fn)(void *arg, size_t size);
typedef struct {
  const char *name;
  int start;
  int daemon, new_group;
  const int *pass_fds;
  size_t n_pass_fds;
} options; /* tdm_process_options, whose header this program does not include */

static int task(void *arg, size_t size) {
  int v;
  if (size != sizeof v) return 1;
  memcpy(&v, arg, sizeof v);
  return v + 1;
}

int main(int argc, char **argv) {
  if (getenv("TDM_DLOPEN_HOST_CHILD") != NULL) {
    fprintf(stderr, "dlopen_host: main() ran in a child\n");
    return 99;
  }
  setenv("TDM_DLOPEN_HOST_CHILD", "1", 1); /* a child that reached main() would see it */
  if (argc != 2) return 2;
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (lib == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  int (*start)(void **, task_fn, const void *, size_t, const options *);
  int (*join)(void *, long long);
  int (*exitcode)(void *, int *);
  int (*close_)(void *);
  *(void **)&start = dlsym(lib, "tdm_process_start");
  *(void **)&join = dlsym(lib, "tdm_process_join");
  *(void **)&exitcode = dlsym(lib, "tdm_process_exitcode");
  *(void **)&close_ = dlsym(lib, "tdm_process_close");
  if (!start || !join || !exitcode || !close_) return 2;
  for (int method = 2; method <= 3; method++) { /* TDM_START_SPAWN, TDM_START_FORKSERVER */
    options o = { .start = method };
    void *p;
    int v = 41, code = -1;
    int r = start(&p, task, &v, sizeof v, &o);
    if (r != 0) {
      fprintf(stderr, "dlopen_host: start (method %d): %d\n", method, r);
      return 1;
    }
    if (join(p, -1) != 0 || exitcode(p, &code) != 0 || close_(p) != 0 || code != 42) {
      fprintf(stderr, "dlopen_host: method %d: exit code %d\n", method, code);
      return 1;
    }
  }
  puts("dlopen_host: spawn and forkserver children ran their task");
  return 0;
}
