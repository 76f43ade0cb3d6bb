/*
 * tasklib.c: a shared library that process_test dlopen()s, to start a task that lives in a
 * library the program did not link (the child must load it to find the function).
 */
#include <stddef.h>
#include <string.h>

int tdm_tasklib_add_forty(void *arg, size_t size);

int tdm_tasklib_add_forty(void *arg, size_t size) {
  int v = 0;
  if (size == sizeof v) memcpy(&v, arg, sizeof v);
  return v + 40;
}
