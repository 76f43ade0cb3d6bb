/*
 * internal.h: what every tandem source file shares. Library-internal names start with tdm__;
 * nothing here is exported.
 */
#ifndef TDM_BASE_INTERNAL_H
#define TDM_BASE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"

/* ---- Misuse ---------------------------------------------------------------------------------- */

/* Prints "tandem: <message>" on stderr and aborts. For bugs in the caller, never for results. */
_Noreturn void tdm__misuse(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Aborts through tdm__misuse() unless `cond` holds. Always on, whatever NDEBUG says. */
#define TDM__REQUIRE(cond, ...)                                 \
  do {                                                          \
    if (__builtin_expect(!(cond), 0)) tdm__misuse(__VA_ARGS__); \
  } while (0)

/* ---- Allocation (through the allocator set by tdm_allocator_set) ----------------------------- */

void *tdm__alloc(size_t size);              /* NULL when out of memory */
void *tdm__calloc(size_t n, size_t size);   /* zeroed; NULL on overflow or out of memory */
void *tdm__realloc(void *ptr, size_t size); /* NULL (ptr untouched) when out of memory */
void tdm__free(void *ptr);                  /* NULL is fine */
char *tdm__strdup(const char *s);           /* NULL when out of memory */

/* ---- Deadlines --------------------------------------------------------------------------------
 *
 * The internal form of a deadline is an absolute CLOCK_MONOTONIC time in ns, INT64_MAX for never,
 * which is exactly what tdm__futex_wait() takes.
 */
static inline int64_t tdm__deadline(int64_t timeout) {
  return tdm_deadline_after(timeout).at;
}

/* ---- Shared-object headers ------------------------------------------------------------------- */

/* Layout version of the objects in tandem/sync.h and tandem/gil.h. */
#define TDM__SYNC_LAYOUT 1

/* Magic numbers: four ASCII letters, so that a memory dump shows what an object is. */
#define TDM__MAGIC(a, b, c, d) \
  ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)

/* Atomic helpers for words that other threads or processes touch. */
#define tdm__load(p)         __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define tdm__load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define tdm__store(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ---- ThreadSanitizer ------------------------------------------------------------------------
 *
 * ThreadSanitizer sees the threads of one process. When memory shared with other processes
 * passes from a thread here to a thread here through another process (written by thread A, taken
 * over and handed on by a process it cannot see, then read by thread B), it finds no
 * happens-before between A and B and reports a race that is not one. Objects shared between
 * processes mark their hand-off points on one address of the object: tdm__tsan_release() where
 * a thread hands memory on, tdm__tsan_acquire() where a thread takes it over.
 */
#if defined(__SANITIZE_THREAD__)
#define TDM__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TDM__TSAN 1
#endif
#endif
#ifdef TDM__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define tdm__tsan_acquire(p) __tsan_acquire((void *)(p))
#define tdm__tsan_release(p) __tsan_release((void *)(p))
#else
#define tdm__tsan_acquire(p) ((void)(p))
#define tdm__tsan_release(p) ((void)(p))
#endif

#endif /* TDM_BASE_INTERNAL_H */
