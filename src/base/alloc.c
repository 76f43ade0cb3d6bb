/*
 * alloc.c: every heap allocation of the library goes through here, so a program (or a test)
 * can supply its own allocator, Lua-style, and make any allocation fail.
 */
#include <stdlib.h>
#include <string.h>

#include "base/internal.h"

static void *libc_alloc(void *ud, void *ptr, size_t size) {
  (void)ud;
  if (size == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, size);
}

static tdm_allocator allocator = { libc_alloc, NULL };

void tdm_allocator_set(const tdm_allocator *a) {
  if (a == NULL || a->alloc == NULL) {
    allocator.alloc = libc_alloc;
    allocator.ud = NULL;
  } else {
    allocator = *a;
  }
}

void *tdm__alloc(size_t size) {
  return allocator.alloc(allocator.ud, NULL, size == 0 ? 1 : size);
}

void *tdm__calloc(size_t n, size_t size) {
  if (size != 0 && n > SIZE_MAX / size) return NULL;
  void *p = tdm__alloc(n * size);
  if (p != NULL) memset(p, 0, n * size);
  return p;
}

void *tdm__realloc(void *ptr, size_t size) {
  return allocator.alloc(allocator.ud, ptr, size == 0 ? 1 : size);
}

void tdm__free(void *ptr) {
  if (ptr != NULL) allocator.alloc(allocator.ud, ptr, 0);
}

char *tdm__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = tdm__alloc(n);
  if (p != NULL) memcpy(p, s, n);
  return p;
}

const char *tdm_version(void) {
  return TDM_VERSION_STRING;
}

void tdm_free(void *ptr) {
  tdm__free(ptr);
}
