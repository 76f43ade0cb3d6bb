/*
 * tasklib.c: a shared library that process_test dlopen()s, to start a task that lives in a
 * library the program did not link (the child must load it to find the function). With
 * TDM_TASKLIB_DIE in the environment, loading it kills the process: a child that dies while it
 * looks for its function.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tdm_tasklib_add_forty(void *arg, size_t size);

int tdm_tasklib_add_forty(void *arg, size_t size) {
  int v = 0;
  if (size == sizeof v) memcpy(&v, arg, sizeof v);
  return v + 40;
}

__attribute__((constructor)) static void die_if_asked(void) {
  if (getenv("TDM_TASKLIB_DIE") != NULL) _exit(3);
}
